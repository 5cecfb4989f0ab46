//! Idle agent sessions held open against a running gateway: the gateway's
//! resident memory per session, then a reconnect storm in which every
//! session drops at once and reconnects, and the time until all are back.
//!
//! Every session belongs to one agent and names its own instance, so each is
//! a separate session on the gateway with its own TLS connection. The
//! sessions reply to the gateway's pings, so none is closed as silent.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use keygate_gateway::http::body::ChannelBody;
use keygate_protocol::{Frame, FrameDecoder, PROTOCOL_VERSION};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::TlsConnector;

/// First retry delay after a refused or failed connection; doubles up to
/// [`MAX_BACKOFF`], and each wait is a random time below it (full jitter).
/// The same bounds as the reference agent's.
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Time limit of a whole phase (opening, or the storm).
const PHASE_LIMIT: Duration = Duration::from_secs(300);

pub struct SessionsPlan {
    pub agent: SocketAddr,
    pub creds_dir: PathBuf,
    pub client_id: String,
    pub client_secret: String,
    pub count: usize,
    /// Sessions opened at once while filling up.
    pub open_concurrency: usize,
    /// Process id of the gateway, whose resident memory is read from /proc.
    pub server_pid: u32,
    pub settle: Duration,
    pub storm: bool,
    pub transport: Transport,
}

/// Carrier of a session's frames.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// An HTTP/1.1 connection upgraded to bare frames.
    Upgrade,
    /// The request and response bodies of an HTTP/2 stream.
    Http2,
}

struct Shared {
    /// Offers HTTP/2 only.
    tls: Arc<ClientConfig>,
    /// The same, offering HTTP/1.1 only, for upgraded sessions.
    http1_tls: Arc<ClientConfig>,
    agent: SocketAddr,
    token: String,
    transport: Transport,
    /// Connection attempts that failed and were retried.
    retries: AtomicUsize,
}

/// An open session; dropping it closes the connection.
enum OpenSession {
    Http2 {
        _frames: mpsc::Sender<Bytes>,
        reader: tokio::task::JoinHandle<()>,
    },
    Upgraded(tokio::task::JoinHandle<()>),
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        match self {
            OpenSession::Http2 { reader, .. } => reader.abort(),
            OpenSession::Upgraded(task) => task.abort(),
        }
    }
}

pub async fn run(plan: SessionsPlan) -> Result<(), String> {
    let tls = Arc::new(
        keygate_gateway::tls::client_config(
            &plan.creds_dir.join("ca.pem"),
            Some((
                &plan.creds_dir.join("client.pem"),
                &plan.creds_dir.join("client-key.pem"),
            )),
            true,
        )
        .map_err(|e| e.to_string())?,
    );
    let token = login(&tls, plan.agent, &plan.client_id, &plan.client_secret).await?;
    let mut http1_tls = ClientConfig::clone(&tls);
    http1_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let shared = Arc::new(Shared {
        tls,
        http1_tls: Arc::new(http1_tls),
        agent: plan.agent,
        token,
        transport: plan.transport,
        retries: AtomicUsize::new(0),
    });

    let before = rss_kib(plan.server_pid)?;
    let started = Instant::now();
    let mut held = open_all(&shared, plan.count, plan.open_concurrency).await?;
    let opened_in = started.elapsed();
    tokio::time::sleep(plan.settle).await;
    let after = rss_kib(plan.server_pid)?;
    let per_session = (after.saturating_sub(before)) as f64 / plan.count as f64;
    println!(
        "sessions: {} open in {:.1} s ({} retried connections); gateway RSS {} KiB before, {} KiB after: {:.1} KiB per session",
        held.len(),
        opened_in.as_secs_f64(),
        shared.retries.swap(0, Ordering::Relaxed),
        before,
        after,
        per_session
    );

    if plan.storm {
        held.clear();
        // Every agent reconnects at the same moment, as after a gateway
        // restart or a network cut.
        let started = Instant::now();
        let back = open_all(&shared, plan.count, plan.count).await?;
        println!(
            "storm: {} sessions back {:.1} s after all dropped at once ({} retried connections)",
            back.len(),
            started.elapsed().as_secs_f64(),
            shared.retries.load(Ordering::Relaxed)
        );
    }
    Ok(())
}

/// Opens `count` sessions, at most `concurrency` at a time, each retrying
/// with full-jitter backoff until it is in.
async fn open_all(
    shared: &Arc<Shared>,
    count: usize,
    concurrency: usize,
) -> Result<Vec<OpenSession>, String> {
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(count);
    for index in 0..count {
        let shared = shared.clone();
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _slot = gate.acquire_owned().await.expect("never closed");
            open_with_retry(&shared, index).await
        }));
    }
    let mut held = Vec::with_capacity(count);
    let deadline = Instant::now() + PHASE_LIMIT;
    for task in tasks {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, task).await {
            Ok(Ok(Ok(session))) => held.push(session),
            Ok(Ok(Err(e))) => return Err(e),
            Ok(Err(e)) => return Err(format!("a session task failed: {e}")),
            Err(_) => {
                return Err(format!(
                    "only {} of {count} sessions opened within {} s",
                    held.len(),
                    PHASE_LIMIT.as_secs()
                ))
            }
        }
    }
    Ok(held)
}

async fn open_with_retry(shared: &Shared, index: usize) -> Result<OpenSession, String> {
    let mut ceiling = MIN_BACKOFF;
    let deadline = Instant::now() + PHASE_LIMIT;
    loop {
        match open_session(shared, index).await {
            Ok(held) => return Ok(held),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => {
                shared.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(jitter(ceiling)).await;
                ceiling = (ceiling * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Returns a random duration below `ceiling`.
fn jitter(ceiling: Duration) -> Duration {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    let fraction = u64::from_le_bytes(bytes) as f64 / u64::MAX as f64;
    ceiling.mul_f64(fraction)
}

fn hello(index: usize) -> Bytes {
    encode(&Frame::Hello {
        protocol_version: PROTOCOL_VERSION,
        max_concurrent_tasks: 1,
        agent_version: "keygate-bench".into(),
        instance_id: format!("bench-{index}"),
    })
}

async fn open_session(shared: &Shared, index: usize) -> Result<OpenSession, String> {
    let tcp = tokio::net::TcpStream::connect(shared.agent)
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let tls = match shared.transport {
        Transport::Upgrade => shared.http1_tls.clone(),
        Transport::Http2 => shared.tls.clone(),
    };
    let stream = TlsConnector::from(tls)
        .connect(ServerName::try_from("localhost").expect("valid name"), tcp)
        .await
        .map_err(|e| e.to_string())?;
    if shared.transport == Transport::Upgrade {
        return open_upgraded(shared, index, stream).await;
    }
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    let connection = tokio::spawn(connection);
    let (frames, frames_rx) = mpsc::channel::<Bytes>(4);
    let request = http::Request::post("https://localhost/v1/agent/session")
        .header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", shared.token),
        )
        .body(ChannelBody::new(frames_rx))
        .map_err(|e| e.to_string())?;
    frames.send(hello(index)).await.map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("session refused with {}", response.status()));
    }
    let mut body = response.into_body();
    let mut decoder = FrameDecoder::new(keygate_protocol::DEFAULT_MAX_FRAME_BYTES);
    match next_frame(&mut body, &mut decoder).await {
        Some(Frame::Welcome { .. }) => {}
        other => return Err(format!("expected Welcome, got {other:?}")),
    }
    let pongs = frames.clone();
    let reader = tokio::spawn(async move {
        let _connection = connection;
        while let Some(frame) = next_frame(&mut body, &mut decoder).await {
            if let Frame::Ping { nonce } = frame {
                if pongs.send(encode(&Frame::Pong { nonce })).await.is_err() {
                    break;
                }
            }
        }
    });
    Ok(OpenSession::Http2 {
        _frames: frames,
        reader,
    })
}

/// Opens a session by upgrading an HTTP/1.1 connection, then replies to the
/// gateway's pings on it from one task.
async fn open_upgraded<S>(shared: &Shared, index: usize, stream: S) -> Result<OpenSession, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tokio::io::AsyncWriteExt;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection.with_upgrades());
    let request = http::Request::post("/v1/agent/session")
        .header(http::header::HOST, "localhost")
        .header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", shared.token),
        )
        .header(http::header::CONNECTION, "upgrade")
        .header(http::header::UPGRADE, "keygate-session")
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        return Err(format!("session refused with {}", response.status()));
    }
    let mut io = TokioIo::new(
        hyper::upgrade::on(response)
            .await
            .map_err(|e| e.to_string())?,
    );
    io.write_all(&hello(index))
        .await
        .map_err(|e| e.to_string())?;
    let mut decoder = FrameDecoder::new(keygate_protocol::DEFAULT_MAX_FRAME_BYTES);
    match read_upgraded(&mut io, &mut decoder).await {
        Some(Frame::Welcome { .. }) => {}
        other => return Err(format!("expected Welcome, got {other:?}")),
    }
    let task = tokio::spawn(async move {
        while let Some(frame) = read_upgraded(&mut io, &mut decoder).await {
            if let Frame::Ping { nonce } = frame {
                if io.write_all(&encode(&Frame::Pong { nonce })).await.is_err() {
                    break;
                }
            }
        }
    });
    Ok(OpenSession::Upgraded(task))
}

async fn read_upgraded<R: tokio::io::AsyncRead + Unpin>(
    io: &mut R,
    decoder: &mut FrameDecoder,
) -> Option<Frame> {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(frame) = decoder.next_frame().ok()? {
            return Some(frame);
        }
        if io.read_buf(decoder.read_buffer(1024)).await.ok()? == 0 {
            return None;
        }
    }
}

async fn next_frame(body: &mut hyper::body::Incoming, decoder: &mut FrameDecoder) -> Option<Frame> {
    loop {
        if let Some(frame) = decoder.next_frame().ok()? {
            return Some(frame);
        }
        let data = body.frame().await?.ok()?.into_data().ok()?;
        decoder.extend(&data);
    }
}

fn encode(frame: &Frame) -> Bytes {
    let mut buf = BytesMut::with_capacity(frame.encoded_len());
    frame.encode(&mut buf);
    buf.freeze()
}

/// Logs the agent in at the token endpoint once; all sessions share the token.
async fn login(
    tls: &Arc<ClientConfig>,
    agent: SocketAddr,
    client_id: &str,
    client_secret: &str,
) -> Result<String, String> {
    use base64::Engine;
    let tcp = tokio::net::TcpStream::connect(agent)
        .await
        .map_err(|e| format!("cannot connect to {agent}: {e}"))?;
    let stream = TlsConnector::from(tls.clone())
        .connect(ServerName::try_from("localhost").expect("valid name"), tcp)
        .await
        .map_err(|e| format!("TLS handshake with {agent} failed: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{client_id}:{client_secret}"));
    let request = http::Request::post("https://localhost/oauth/token")
        .header(http::header::AUTHORIZATION, format!("Basic {basic}"))
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(Full::new(Bytes::from_static(
            b"grant_type=client_credentials",
        )))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    match value["access_token"].as_str() {
        Some(token) if status.is_success() => Ok(token.to_owned()),
        _ => Err(format!(
            "login failed with {status}: {}",
            String::from_utf8_lossy(&body)
        )),
    }
}

/// Resident memory of a process, in KiB, from /proc/PID/status.
fn rss_kib(pid: u32) -> Result<u64, String> {
    let path = Path::new("/proc").join(pid.to_string()).join("status");
    let status = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS line in {}", path.display()))
}
