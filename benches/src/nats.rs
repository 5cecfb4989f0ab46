//! The nats-server baseline of the relay benchmark: a minimal NATS client
//! over TLS that sends requests and waits for each reply, and the responder
//! process that replies to them. Only the parts of the NATS client protocol
//! these two use are spoken: INFO, CONNECT, SUB, PUB, MSG, PING and PONG.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rustls_pki_types::ServerName;
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf,
};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::load::Report;

/// Maximum length of a protocol line; INFO lines, the longest, stay well below it.
const MAX_LINE_BYTES: usize = 64 * 1024;
/// Time a request waits for its reply before it counts as an error.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

type Reader = BufReader<ReadHalf<TlsStream<TcpStream>>>;
type Writer = WriteHalf<TlsStream<TcpStream>>;

/// Opens a client connection: reads the server's INFO in plain text,
/// upgrades to TLS as the server requires, sends CONNECT, `setup` (such as
/// SUB lines) and PING, and returns once the PONG shows the server took them.
async fn connect(addr: SocketAddr, ca: &Path, setup: &[u8]) -> Result<(Reader, Writer), String> {
    let mut config =
        keygate_gateway::tls::client_config(ca, None, false).map_err(|e| e.to_string())?;
    config.alpn_protocols.clear();
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to nats-server at {addr}: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;

    let mut plain = BufReader::new(tcp);
    let info = read_line(&mut plain).await?;
    if !info.starts_with("INFO ") {
        return Err(format!("expected INFO from nats-server, got {info:?}"));
    }
    if !plain.buffer().is_empty() {
        return Err("nats-server sent more than INFO before the TLS handshake".into());
    }
    let stream = TlsConnector::from(Arc::new(config))
        .connect(
            ServerName::try_from("localhost").expect("valid name"),
            plain.into_inner(),
        )
        .await
        .map_err(|e| format!("TLS handshake with nats-server at {addr} failed: {e}"))?;

    let (read, mut write) = tokio::io::split(stream);
    let mut reader = BufReader::new(read);
    let mut hello = BytesMut::new();
    hello.extend_from_slice(
        b"CONNECT {\"verbose\":false,\"pedantic\":false,\"tls_required\":true,\"name\":\"keygate-bench\",\"lang\":\"rust\",\"version\":\"0\",\"protocol\":1}\r\n",
    );
    hello.extend_from_slice(setup);
    hello.extend_from_slice(b"PING\r\n");
    write.write_all(&hello).await.map_err(|e| e.to_string())?;
    write.flush().await.map_err(|e| e.to_string())?;
    loop {
        let line = read_line(&mut reader).await?;
        match line.as_str() {
            "PONG" => return Ok((reader, write)),
            "+OK" => {}
            _ if line.starts_with("INFO ") => {}
            _ => return Err(format!("nats-server rejected the connection: {line}")),
        }
    }
}

/// Reads one CRLF-terminated protocol line, without the line end.
async fn read_line<R: AsyncRead + Unpin>(reader: &mut BufReader<R>) -> Result<String, String> {
    let mut line = Vec::new();
    let read = (&mut *reader)
        .take(MAX_LINE_BYTES as u64)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| format!("reading from nats-server failed: {e}"))?;
    if read == 0 {
        return Err("nats-server closed the connection".into());
    }
    if !line.ends_with(b"\r\n") {
        return Err(format!(
            "a protocol line from nats-server is longer than {MAX_LINE_BYTES} bytes or cut off"
        ));
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).map_err(|_| "nats-server sent a line that is not UTF-8".into())
}

/// A message delivered by the server.
struct Msg {
    sid: u64,
    reply: Option<String>,
    payload: Bytes,
}

/// Reads until the next MSG, counting in `pings` the PINGs read on the way,
/// so the caller can send as many PONGs.
async fn next_msg<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    pings: &mut usize,
) -> Result<Msg, String> {
    loop {
        let line = read_line(reader).await?;
        if line == "PING" {
            *pings += 1;
            continue;
        }
        if line == "PONG" || line == "+OK" || line.starts_with("INFO ") {
            continue;
        }
        let Some(rest) = line.strip_prefix("MSG ") else {
            return Err(format!("unexpected line from nats-server: {line}"));
        };
        // MSG <subject> <sid> [reply-to] <#bytes>
        let fields: Vec<&str> = rest.split(' ').collect();
        let (sid, reply, length) = match fields.as_slice() {
            [_, sid, length] => (*sid, None, *length),
            [_, sid, reply, length] => (*sid, Some((*reply).to_owned()), *length),
            _ => return Err(format!("invalid MSG line from nats-server: {line}")),
        };
        let sid = sid
            .parse()
            .map_err(|_| format!("invalid sid in MSG line: {line}"))?;
        let length: usize = length
            .parse()
            .map_err(|_| format!("invalid length in MSG line: {line}"))?;
        let mut payload = vec![0u8; length + 2];
        reader
            .read_exact(&mut payload)
            .await
            .map_err(|e| format!("reading a MSG payload failed: {e}"))?;
        payload.truncate(length);
        return Ok(Msg {
            sid,
            reply,
            payload: Bytes::from(payload),
        });
    }
}

fn publish(buf: &mut BytesMut, subject: &str, reply: Option<&str>, payload: &[u8]) {
    buf.extend_from_slice(b"PUB ");
    buf.extend_from_slice(subject.as_bytes());
    if let Some(reply) = reply {
        buf.extend_from_slice(b" ");
        buf.extend_from_slice(reply.as_bytes());
    }
    buf.extend_from_slice(format!(" {}\r\n", payload.len()).as_bytes());
    buf.extend_from_slice(payload);
    buf.extend_from_slice(b"\r\n");
}

/// Replies to every request on `subject` with its own payload, on one
/// connection, for `duration`. Replies are written in batches: the writer
/// flushes whenever no further request is already buffered.
pub async fn respond(
    addr: SocketAddr,
    ca: &Path,
    subject: &str,
    duration: Duration,
) -> Result<(), String> {
    let setup = format!("SUB {subject} responders 1\r\n");
    let (mut reader, mut writer) = connect(addr, ca, setup.as_bytes()).await?;
    // benches/run.sh waits for this line before it sends requests.
    println!("nats-responder: subscribed to {subject}");
    let mut out = BytesMut::new();
    let mut answered = 0u64;
    let serve = async {
        loop {
            let mut pings = 0;
            let msg = next_msg(&mut reader, &mut pings).await?;
            for _ in 0..pings {
                out.extend_from_slice(b"PONG\r\n");
            }
            if let Some(reply) = &msg.reply {
                publish(&mut out, reply, None, &msg.payload);
                answered += 1;
            }
            if reader.buffer().is_empty() {
                writer.write_all(&out).await.map_err(|e| e.to_string())?;
                writer.flush().await.map_err(|e| e.to_string())?;
                out.clear();
            }
        }
    };
    let ended: Result<(), String> = match tokio::time::timeout(duration, serve).await {
        Ok(result) => result,
        Err(_) => Ok(()),
    };
    println!("nats-responder: answered {answered} requests");
    ended
}

/// Parameters of a `request` run besides the server's address.
pub struct RequestPlan {
    pub subject: String,
    pub payload: Bytes,
    pub concurrency: usize,
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// Runs `concurrency` workers, each with one request in flight, over
/// `connections` TLS connections, and reports replies per second and latency.
pub async fn request(addr: SocketAddr, ca: &Path, plan: RequestPlan) -> Result<Report, String> {
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let stop_at = measure_from + plan.duration;
    let plan = Arc::new(plan);
    let mut workers = Vec::new();
    for connection in 0..plan.connections {
        // Worker i uses connection i % connections, sid i + 1 and its own inbox.
        let mine: Vec<usize> = (0..plan.concurrency)
            .filter(|i| i % plan.connections == connection)
            .collect();
        let mut setup = String::new();
        for i in &mine {
            setup.push_str(&format!("SUB _INBOX.bench.{i} {}\r\n", i + 1));
        }
        let (reader, writer) = connect(addr, ca, setup.as_bytes()).await?;
        let (out_tx, out_rx) = mpsc::channel::<Bytes>(plan.concurrency * 2 + 16);
        tokio::spawn(write_batches(writer, out_rx));
        let mut replies = vec![None; plan.concurrency + 1];
        let mut receivers = Vec::new();
        for i in &mine {
            let (tx, rx) = mpsc::channel::<()>(4);
            replies[i + 1] = Some(tx);
            receivers.push((*i, rx));
        }
        tokio::spawn(route_replies(reader, replies, out_tx.clone()));
        for (i, rx) in receivers {
            let out = out_tx.clone();
            let plan = plan.clone();
            workers.push(tokio::spawn(async move {
                worker(i, out, rx, &plan, measure_from, stop_at).await
            }));
        }
    }
    let mut report = Report::empty(plan.duration);
    for worker in workers {
        report.merge(worker.await.expect("worker task"));
    }
    report.finish();
    Ok(report)
}

async fn write_batches(mut writer: Writer, mut rx: mpsc::Receiver<Bytes>) {
    let mut batch = BytesMut::new();
    while let Some(first) = rx.recv().await {
        batch.extend_from_slice(&first);
        while let Ok(more) = rx.try_recv() {
            batch.extend_from_slice(&more);
        }
        if writer.write_all(&batch).await.is_err() || writer.flush().await.is_err() {
            return;
        }
        batch.clear();
    }
}

/// Hands each reply to the worker whose inbox it came to.
async fn route_replies(
    mut reader: Reader,
    replies: Vec<Option<mpsc::Sender<()>>>,
    out: mpsc::Sender<Bytes>,
) {
    loop {
        let mut pings = 0;
        let Ok(msg) = next_msg(&mut reader, &mut pings).await else {
            return;
        };
        for _ in 0..pings {
            let _ = out.try_send(Bytes::from_static(b"PONG\r\n"));
        }
        let target = usize::try_from(msg.sid)
            .ok()
            .and_then(|sid| replies.get(sid));
        if let Some(Some(tx)) = target {
            let _ = tx.try_send(());
        }
    }
}

async fn worker(
    index: usize,
    out: mpsc::Sender<Bytes>,
    mut replies: mpsc::Receiver<()>,
    plan: &RequestPlan,
    measure_from: Instant,
    stop_at: Instant,
) -> Report {
    let inbox = format!("_INBOX.bench.{index}");
    let mut frame = BytesMut::new();
    publish(&mut frame, &plan.subject, Some(&inbox), &plan.payload);
    let frame = frame.freeze();
    let mut report = Report::empty(plan.duration);
    loop {
        let started = Instant::now();
        if started >= stop_at {
            return report;
        }
        let outcome = async {
            out.send(frame.clone())
                .await
                .map_err(|_| "the connection to nats-server is closed".to_owned())?;
            match tokio::time::timeout(REPLY_TIMEOUT, replies.recv()).await {
                Ok(Some(())) => Ok(()),
                Ok(None) => Err("the connection to nats-server is closed".to_owned()),
                Err(_) => Err(format!("no reply within {} s", REPLY_TIMEOUT.as_secs())),
            }
        }
        .await;
        let measured = started >= measure_from && Instant::now() <= stop_at;
        report.record(outcome, started, measured);
        if report.failed_last() {
            // A failed connection fails at once; pause so an error loop stays bounded.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
