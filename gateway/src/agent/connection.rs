//! One agent connection: TLS, login at the token endpoint, then the HTTP/1.1
//! upgrade that turns the connection into the session's frame stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use keygate_protocol::{Frame, FrameDecoder, TaskOutcome, PROTOCOL_VERSION, RESULT_CHUNK_BYTES};
use rustls::{AlertDescription, ClientConfig};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio_rustls::TlsConnector;
use tracing::{debug, info, warn, Instrument};

use super::tls_rejection::{rejected_certificate_alert, FirstRead, FirstReadWatch};
use super::{AgentOptions, TaskHandler, TaskHandlers};
use crate::session::encode_frame;
use crate::session::stream::{self, StreamError, UPGRADE_PROTOCOL};
use crate::telemetry::TraceContext;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for running tasks to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for the gateway to end the session after the agent ended its side.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Delay before retrying a failed token refresh.
const REFRESH_RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("the gateway rejected the agent's credentials: {0}")]
    Unauthorized(String),
    #[error("unexpected answer from the gateway: {0}")]
    Protocol(String),
    #[error("the session stream failed: {0}")]
    Stream(String),
}

pub enum SessionEnd {
    Shutdown,
    GoAway { reconnect_after: Duration },
    Closed,
}

type RequestBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// Minimum free buffer space for each read of the agent's session.
const MIN_READ_SPACE: usize = 8 * 1024;

pub async fn run_session(
    options: &AgentOptions,
    tls: Arc<ClientConfig>,
    handlers: &TaskHandlers,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<SessionEnd, AgentError> {
    let mut connection = GatewayConnection::open(options, tls.clone()).await?;
    let (token, expires_in) = login(&mut connection, options).await?;

    let request = http::Request::post("/v1/agent/session")
        .header(http::header::HOST, options.gateway.as_str())
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(http::header::CONNECTION, "upgrade")
        .header(http::header::UPGRADE, UPGRADE_PROTOCOL)
        .body(http_body_util::Empty::new().boxed())
        .expect("a valid request");
    let response = connection.send(request, "session request").await?;
    let status = response.status();
    if status != http::StatusCode::SWITCHING_PROTOCOLS {
        // Bounded in time and size: a server that does not know the upgrade
        // may respond with a session stream that does not end.
        let body = http_body_util::Limited::new(response.into_body(), 64 * 1024);
        let body = tokio::time::timeout(REQUEST_TIMEOUT, body.collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let detail = problem_detail(&body);
        return Err(
            if status == http::StatusCode::UNAUTHORIZED || status == http::StatusCode::FORBIDDEN {
                AgentError::Unauthorized(format!(
                    "session request rejected with {status}: {detail}"
                ))
            } else {
                AgentError::Protocol(format!("session request rejected with {status}: {detail}"))
            },
        );
    }
    let upgraded = hyper::upgrade::on(response)
        .await
        .map_err(|e| AgentError::Stream(format!("the session upgrade failed: {e}")))?;
    drop(connection);
    let (mut reader, writer) = tokio::io::split(TokioIo::new(upgraded));
    let (frames_tx, frames_rx) = mpsc::channel::<Bytes>(256);
    // Aborted when the session ends, so a connection the session gave up on
    // closes at once instead of when the last running task lets go of its sender.
    let mut writer = AbortOnDrop(tokio::spawn(async move {
        let mut frames = frames_rx;
        stream::write_frames(writer, &mut frames, REQUEST_TIMEOUT).await
    }));
    let hello = Frame::Hello {
        protocol_version: PROTOCOL_VERSION,
        max_concurrent_tasks: options.capacity,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        instance_id: options.instance_id.clone(),
    };
    frames_tx
        .send(encode_frame(&hello))
        .await
        .map_err(|_| AgentError::Stream("session closed".into()))?;

    let mut decoder = FrameDecoder::new(keygate_protocol::DEFAULT_MAX_FRAME_BYTES);
    let slots = Arc::new(Semaphore::new(options.capacity.max(1) as usize));
    let mut silence_limit = Duration::from_secs(60);
    let mut last_heard = Instant::now();
    let mut watchdog = tokio::time::interval(Duration::from_secs(1));
    // Refreshing needs protocol version 2 on both sides; Welcome carries the session's version.
    let mut refresh_at: Option<tokio::time::Instant> = None;
    // A login in progress. The session's connection carries only frames, so
    // the new token comes over a connection of its own, while the loop goes
    // on reading frames and replying to pings.
    let mut refreshing: Option<Refresh<'_>> = None;
    // The version agreed in Welcome; 0 until it arrives.
    let mut session_version = 0u16;

    let running = RunningTasks::default();
    let end = loop {
        let frame = tokio::select! {
            frame = next_frame(&mut reader, &mut decoder) => frame?,
            _ = sleep_until_some(refresh_at), if refreshing.is_none() => {
                refresh_at = None;
                refreshing = Some(Box::pin(refresh_token(options, tls.clone())));
                continue;
            }
            refreshed = async { refreshing.as_mut().expect("checked by the guard").await }, if refreshing.is_some() => {
                refreshing = None;
                refresh_at = match refreshed {
                    Ok((token, _)) => {
                        debug!("sending a refreshed token");
                        let _ = frames_tx.send(encode_frame(&Frame::TokenRefresh { access_token: token })).await;
                        None
                    }
                    Err(e) => {
                        warn!(error = %e, retry_in_s = REFRESH_RETRY.as_secs(), "token refresh failed");
                        Some(tokio::time::Instant::now() + REFRESH_RETRY)
                    }
                };
                continue;
            }
            _ = watchdog.tick() => {
                if last_heard.elapsed() > silence_limit {
                    break Err(AgentError::Stream(format!("no frame from the gateway for {} ms", silence_limit.as_millis())));
                }
                continue;
            }
            ended = &mut writer.0 => {
                let reason = match ended {
                    Ok(stream::WriteEnd::TimedOut) => format!(
                        "the gateway took no frame within {} s",
                        REQUEST_TIMEOUT.as_secs()
                    ),
                    Ok(stream::WriteEnd::Failed(error)) => format!("sending frames to the gateway failed: {error}"),
                    Ok(stream::WriteEnd::Closed) | Err(_) => "the frame writer stopped".to_owned(),
                };
                break Err(AgentError::Stream(reason));
            }
            _ = crate::stopped(shutdown) => break Ok(SessionEnd::Shutdown),
        };
        last_heard = Instant::now();
        match frame {
            None => break Ok(SessionEnd::Closed),
            Some(Frame::Welcome {
                session_id,
                heartbeat_interval_ms,
                protocol_version,
            }) => {
                silence_limit = Duration::from_millis(heartbeat_interval_ms as u64 * 3)
                    .max(Duration::from_secs(1));
                session_version = protocol_version;
                if protocol_version >= 2 {
                    refresh_at = Some(refresh_time(expires_in));
                }
                info!(session.id = %session_id, heartbeat_interval_ms, protocol_version, "session established");
            }
            Some(Frame::TokenAccepted { expires_in_ms }) => {
                refresh_at = Some(refresh_time(Duration::from_millis(expires_in_ms)));
                debug!(expires_in_ms, "the gateway accepted the refreshed token");
            }
            Some(Frame::Task {
                task_id,
                kind,
                timeout_ms,
                traceparent,
                payload,
            }) => {
                let permit = slots
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                let receipt = (session_version >= 3).then(|| {
                    encode_frame(&Frame::TaskAccepted {
                        task_id: task_id.clone(),
                    })
                });
                let handler = handlers.get(&kind);
                let tx = frames_tx.clone();
                let trace = task_trace(traceparent.as_deref());
                let span = tracing::info_span!(
                    "task",
                    task.id = %task_id,
                    trace.id = %trace.as_ref().map(TraceContext::trace_id_hex).unwrap_or_default()
                );
                let (cancel_tx, cancel_rx) = oneshot::channel();
                running.insert(task_id.clone(), cancel_tx);
                let running = running.clone();
                let version = session_version;
                tokio::spawn(
                    async move {
                        let _permit = permit;
                        // Sent from the task, not the read loop: when the
                        // gateway is slow to read, only this task waits, and
                        // the loop keeps reading frames, which is what lets
                        // the gateway's writes, and then its reads, go on.
                        if let Some(receipt) = receipt {
                            let _ = tx.send(receipt).await;
                        }
                        let id = task_id.clone();
                        tokio::select! {
                            run = execute(handler, task_id, kind, timeout_ms, payload, trace.map(|t| t.to_header())) => {
                                running.remove(&id);
                                send_result(&tx, version, run).await;
                            }
                            Ok(reason) = cancel_rx => {
                                info!(%reason, "task cancelled by the gateway");
                            }
                        }
                    }
                    .instrument(span),
                );
            }
            Some(Frame::CancelTask { task_id, reason }) => {
                if !running.cancel(&task_id, reason) {
                    debug!(task.id = %task_id, "cancel for a task that is not running");
                }
            }
            Some(Frame::Ping { nonce }) => {
                // A full queue means frames are on their way anyway; the
                // gateway only needs to hear something within three pings.
                let _ = frames_tx.try_send(encode_frame(&Frame::Pong { nonce }));
            }
            Some(Frame::Pong { .. }) => {}
            Some(Frame::GoAway {
                reason,
                reconnect_after_ms,
                message,
            }) => {
                info!(reason = ?reason, %message, "the gateway ended the session");
                break Ok(SessionEnd::GoAway {
                    reconnect_after: Duration::from_millis(reconnect_after_ms as u64),
                });
            }
            Some(other) => {
                warn!(frame = other.name(), "unexpected frame from the gateway");
            }
        }
    };

    if matches!(end, Ok(SessionEnd::Shutdown)) {
        let capacity = options.capacity.max(1);
        if tokio::time::timeout(DRAIN_TIMEOUT, slots.acquire_many(capacity))
            .await
            .is_err()
        {
            warn!(
                timeout_ms = DRAIN_TIMEOUT.as_millis() as u64,
                "running tasks did not finish before shutdown"
            );
        }
        // Ending the request stream lets the gateway close the session as a
        // normal close instead of seeing the connection drop.
        drop(frames_tx);
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            while let Ok(Some(_)) = next_frame(&mut reader, &mut decoder).await {}
        })
        .await;
    }
    end
}

/// A token refresh in progress: the new token and its lifetime.
type Refresh<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(String, Duration), AgentError>> + Send + 'a>,
>;

/// Ends a spawned task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An HTTP/1.1 connection to the gateway's agent listener.
struct GatewayConnection {
    sender: http1::SendRequest<RequestBody>,
    /// The outcome of the first read, which distinguishes a rejected client
    /// certificate from other failures.
    first_read: oneshot::Receiver<FirstRead>,
    gateway: String,
}

impl GatewayConnection {
    async fn open(
        options: &AgentOptions,
        tls: Arc<ClientConfig>,
    ) -> Result<GatewayConnection, AgentError> {
        let connect_err = |reason: String| AgentError::Connect {
            addr: options.gateway.clone(),
            reason,
        };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&options.gateway))
            .await
            .map_err(|_| connect_err("timed out".into()))?
            .map_err(|e| connect_err(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let server_name = ServerName::try_from(options.server_name.clone()).map_err(|e| {
            connect_err(format!(
                "invalid server name {:?}: {e}",
                options.server_name
            ))
        })?;
        let stream = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TlsConnector::from(tls).connect(server_name, tcp),
        )
        .await
        .map_err(|_| connect_err("the TLS handshake timed out".into()))?
        .map_err(|e| match rejected_certificate_alert(&e) {
            Some(alert) => rejected(&options.gateway, alert),
            None => connect_err(format!("TLS handshake failed: {e}")),
        })?;

        let (stream, first_read) = FirstReadWatch::new(stream);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| connect_err(format!("HTTP/1.1 handshake failed: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                debug!(error = %e, "gateway connection ended");
            }
        });
        Ok(GatewayConnection {
            sender,
            first_read,
            gateway: options.gateway.clone(),
        })
    }

    /// Sends one request and returns the response head. `request_name`
    /// names the request in errors.
    async fn send(
        &mut self,
        request: http::Request<RequestBody>,
        request_name: &str,
    ) -> Result<http::Response<hyper::body::Incoming>, AgentError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.sender.send_request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => {
                // With TLS 1.3 a rejected client certificate shows only
                // here: the gateway's alert arrives where its response would.
                if let Ok(FirstRead::Failed {
                    rejected: Some(alert),
                    ..
                }) = self.first_read.try_recv()
                {
                    return Err(rejected(&self.gateway, alert));
                }
                Err(AgentError::Stream(format!(
                    "the {request_name} failed: {error}"
                )))
            }
            Err(_) => Err(AgentError::Stream(format!(
                "the {request_name} got no response within {} s",
                REQUEST_TIMEOUT.as_secs()
            ))),
        }
    }
}

fn rejected(gateway: &str, alert: AlertDescription) -> AgentError {
    AgentError::Unauthorized(format!(
        "the gateway at {gateway} rejected the client certificate with TLS alert {alert:?}; \
         check that it is from the gateway's client CA, valid now, not revoked and issued for client authentication"
    ))
}

/// Logs in over a new connection, which closes afterwards.
async fn refresh_token(
    options: &AgentOptions,
    tls: Arc<ClientConfig>,
) -> Result<(String, Duration), AgentError> {
    let mut connection = GatewayConnection::open(options, tls).await?;
    login(&mut connection, options).await
}

/// Client-credentials login; returns the access token and its lifetime.
async fn login(
    connection: &mut GatewayConnection,
    options: &AgentOptions,
) -> Result<(String, Duration), AgentError> {
    let encode_part = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let credentials = zeroize::Zeroizing::new(format!(
        "{}:{}",
        encode_part(&options.client_id),
        encode_part(&options.client_secret)
    ));
    let basic =
        zeroize::Zeroizing::new(format!("Basic {}", STANDARD.encode(credentials.as_bytes())));
    let request = http::Request::post("/oauth/token")
        .header(http::header::HOST, options.gateway.as_str())
        .header(http::header::AUTHORIZATION, basic.as_str())
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(Full::new(Bytes::from_static(b"grant_type=client_credentials")).boxed())
        .expect("a valid request");
    let response = connection.send(request, "token request").await?;
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), 64 * 1024);
    let body = tokio::time::timeout(REQUEST_TIMEOUT, body.collect())
        .await
        .map_err(|_| {
            AgentError::Stream(format!(
                "the token response did not end within {} s",
                REQUEST_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| AgentError::Stream(format!("reading the token response failed: {e}")))?
        .to_bytes();
    if status == http::StatusCode::UNAUTHORIZED || status == http::StatusCode::BAD_REQUEST {
        return Err(AgentError::Unauthorized(format!(
            "login failed with {status}: {}",
            problem_detail(&body)
        )));
    }
    if !status.is_success() {
        return Err(AgentError::Protocol(format!(
            "login failed with {status}: {}",
            problem_detail(&body)
        )));
    }
    let parsed: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| AgentError::Protocol(format!("the token response is not JSON: {e}")))?;
    let token = parsed["access_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| AgentError::Protocol("the token response has no access_token".into()))?;
    let expires_in = parsed["expires_in"]
        .as_u64()
        .ok_or_else(|| AgentError::Protocol("the token response has no expires_in".into()))?;
    Ok((token, Duration::from_secs(expires_in)))
}

/// When to refresh a token that expires in `expires_in`: after 80% of its lifetime.
fn refresh_time(expires_in: Duration) -> tokio::time::Instant {
    tokio::time::Instant::now() + expires_in.mul_f64(0.8)
}

/// Sleeps until `at`, or forever when there is no refresh to do.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn next_frame<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut R,
    decoder: &mut FrameDecoder,
) -> Result<Option<Frame>, AgentError> {
    stream::read_frame(reader, decoder, MIN_READ_SPACE)
        .await
        .map_err(|error| match error {
            StreamError::Frame(e) => AgentError::Protocol(e.to_string()),
            StreamError::Io(e) => AgentError::Stream(e.to_string()),
            truncated @ StreamError::Truncated { .. } => AgentError::Stream(truncated.to_string()),
        })
}

/// Tasks this session runs, with the switch that stops each one.
#[derive(Clone, Default)]
struct RunningTasks {
    cancels: Arc<std::sync::Mutex<std::collections::HashMap<String, oneshot::Sender<String>>>>,
}

impl RunningTasks {
    fn insert(&self, task_id: String, cancel: oneshot::Sender<String>) {
        self.cancels
            .lock()
            .expect("running tasks lock")
            .insert(task_id, cancel);
    }

    fn remove(&self, task_id: &str) {
        self.cancels
            .lock()
            .expect("running tasks lock")
            .remove(task_id);
    }

    /// Stops a running task; false if no task with that id runs.
    fn cancel(&self, task_id: &str, reason: String) -> bool {
        let cancel = self
            .cancels
            .lock()
            .expect("running tasks lock")
            .remove(task_id);
        cancel.is_some_and(|tx| tx.send(reason).is_ok())
    }
}

/// Returns the agent's span for a task, a child of the gateway's span. A
/// task without trace context (protocol version 2 and older), or with one
/// the agent cannot parse, runs without a span.
fn task_trace(traceparent: Option<&str>) -> Option<TraceContext> {
    let header = traceparent?;
    match TraceContext::parse(header) {
        Ok(parent) => Some(parent.child()),
        Err(error) => {
            warn!(%error, "the gateway sent a task with an invalid traceparent");
            None
        }
    }
}

fn problem_detail(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["detail"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned())
}

/// A finished run of a task, to send to the gateway.
struct TaskRun {
    task_id: String,
    outcome: TaskOutcome,
    traceparent: Option<String>,
    payload: Bytes,
}

/// Runs one task and returns its outcome and result.
async fn execute(
    handler: Option<Arc<dyn TaskHandler>>,
    task_id: String,
    kind: String,
    timeout_ms: u32,
    payload: Bytes,
    traceparent: Option<String>,
) -> TaskRun {
    let (outcome, result) = match handler {
        None => (
            TaskOutcome::Failed,
            Bytes::from(format!("this agent has no handler for task kind {kind:?}")),
        ),
        Some(handler) => {
            // The gateway's timer decides when a task has timed out. The agent
            // stops the task a little later, so the two never race.
            let limit =
                Duration::from_millis(timeout_ms as u64 + (timeout_ms as u64 / 10).max(1000));
            match tokio::time::timeout(limit, handler.run(payload)).await {
                Ok(Ok(bytes)) => (TaskOutcome::Succeeded, bytes),
                Ok(Err(message)) => (TaskOutcome::Failed, Bytes::from(message)),
                Err(_) => (
                    TaskOutcome::Failed,
                    Bytes::from(format!(
                        "the agent stopped the task after {} ms",
                        limit.as_millis()
                    )),
                ),
            }
        }
    };
    match outcome {
        TaskOutcome::Succeeded => debug!(task.id = %task_id, "task finished"),
        TaskOutcome::Failed => info!(task.id = %task_id, kind = %kind, "task failed"),
    }
    TaskRun {
        task_id,
        outcome,
        traceparent,
        payload: result,
    }
}

/// Sends a task's result. On protocol version 4 and later a result longer
/// than `RESULT_CHUNK_BYTES` goes in chunks, each queued on its own, so
/// pongs and other tasks' frames go out between them. On older versions a
/// result too large for one frame is reported as a failure, because an
/// oversized frame would end the session.
async fn send_result(tx: &mpsc::Sender<Bytes>, version: u16, run: TaskRun) {
    let TaskRun {
        task_id,
        outcome,
        traceparent,
        mut payload,
    } = run;
    if version >= 4 {
        while payload.len() > RESULT_CHUNK_BYTES {
            let chunk = Frame::TaskResultChunk {
                task_id: task_id.clone(),
                payload: payload.split_to(RESULT_CHUNK_BYTES),
            };
            if tx.send(encode_frame(&chunk)).await.is_err() {
                return;
            }
        }
    }
    let frame = Frame::TaskResult {
        task_id: task_id.clone(),
        outcome,
        traceparent: traceparent.clone(),
        payload,
    };
    let frame = match frame.validate(keygate_protocol::DEFAULT_MAX_FRAME_BYTES) {
        Ok(()) => frame,
        Err(e) => Frame::TaskResult {
            task_id,
            outcome: TaskOutcome::Failed,
            traceparent,
            payload: Bytes::from(format!("the task result cannot be sent: {e}")),
        },
    };
    let _ = tx.send(encode_frame(&frame)).await;
}
