//! `POST /v1/agent/session`: authenticates the agent, then runs the session
//! loop that reads the agent's frames and writes the gateway's, over an
//! HTTP/2 stream or over an HTTP/1.1 connection upgraded to bare frames.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use keygate_auth::{AuthError, Scope};
use keygate_protocol::{
    Frame, FrameDecoder, FrameError, GoAwayReason, TaskOutcome, MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
};
use tokio::io::ReadHalf;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn, Instrument};

use super::stream::{self, StreamError, WriteEnd, UPGRADE_PROTOCOL};
use super::{Hello, SessionHandle, TaskReply};
use crate::http::body::{full_body, ChannelBody, Response};
use crate::http::problem::ApiError;
use crate::http::{authenticate, ConnInfo};
use crate::relay::TaskStatus;
use crate::state::SharedState;

/// Time an agent has to send Hello after the session opens.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound on the concurrency an agent may declare.
const MAX_CAPACITY: u32 = 10_000;
/// Frames buffered towards one agent before senders wait.
const OUTBOUND_FRAMES: usize = 64;
/// Missed heartbeat intervals before a session counts as dead.
const MISSED_HEARTBEATS: u32 = 3;

/// Authenticates an agent session request and starts its loop.
pub async fn open_session(
    state: SharedState,
    conn: &ConnInfo,
    mut req: http::Request<Incoming>,
) -> Result<Response, ApiError> {
    if state.is_draining() {
        return Err(ApiError::shutting_down());
    }
    let transport = transport(&req)?;
    let principal = authenticate(&state, conn, req.headers()).await?;
    if !principal.has_scope(Scope::AgentSession) {
        return Err(ApiError::insufficient_scope(Scope::AgentSession));
    }
    if principal.certificate_thumbprint.is_none() {
        let error = AuthError::CertificateBindingRequired;
        state
            .metrics
            .auth_failures
            .with_label_values(&[error.reason()])
            .inc();
        return Err(ApiError::unauthorized(&error));
    }
    let cert_name = conn.client.as_ref().and_then(|c| c.common_name.as_deref());
    if cert_name != Some(principal.subject.as_str()) {
        return Err(ApiError::forbidden(format!(
            "the client certificate names {:?}, not agent {}",
            cert_name.unwrap_or(""),
            principal.subject
        )));
    }
    let agent = match state.agents.get(&principal.subject) {
        Ok(Some(agent)) if agent.account == principal.account && !agent.disabled => {
            if !agent.accepts_token_issued_at(principal.issued_at) {
                let error = AuthError::Revoked;
                state
                    .metrics
                    .auth_failures
                    .with_label_values(&[error.reason()])
                    .inc();
                return Err(ApiError::unauthorized(&error));
            }
            agent
        }
        Ok(_) => {
            return Err(ApiError::forbidden(format!(
                "agent {} is unknown or disabled",
                principal.subject
            )))
        }
        Err(e) => return Err(ApiError::internal(format!("agent lookup failed: {e}"))),
    };

    let (body_tx, body_rx) = mpsc::channel::<Bytes>(OUTBOUND_FRAMES);
    let session_id = format!("ses_{}", crate::directory::random_hex(8));
    let span = tracing::info_span!("session", agent.id = %agent.id, session.id = %session_id, client.addr = %conn.peer);
    let info = SessionInfo {
        agent_id: agent.id,
        account: agent.account,
        session_id,
        certificate_thumbprint: principal.certificate_thumbprint.clone().unwrap_or_default(),
        token_expires_at: principal.expires_at,
    };

    if transport == Transport::Upgrade {
        let upgrade = hyper::upgrade::on(&mut req);
        let write_timeout = Duration::from_millis(state.config.gateway.write_timeout_ms);
        tokio::spawn(
            async move {
                let upgraded = match upgrade.await {
                    Ok(upgraded) => upgraded,
                    Err(error) => {
                        debug!(%error, "the session upgrade did not complete");
                        return;
                    }
                };
                let (reader, writer) = tokio::io::split(TokioIo::new(upgraded));
                let (ended_tx, writer_end) = oneshot::channel();
                // Shutdown waits up to RELEASE_WAIT (5 s) for the last
                // reference to the state, so this clone gives a final GoAway
                // that long to reach the agent before the process exits.
                let hold = state.clone();
                tokio::spawn(
                    async move {
                        let mut frames = body_rx;
                        let end = stream::write_frames(writer, &mut frames, write_timeout).await;
                        let _ = ended_tx.send(end);
                        drop((frames, hold));
                    }
                    .in_current_span(),
                );
                let inbound = Inbound::Upgraded { reader, writer_end };
                run_session(state, info, inbound, body_tx).await;
            }
            .instrument(span),
        );
        let mut response = http::Response::new(full_body(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
        headers.insert(
            http::header::UPGRADE,
            HeaderValue::from_static(UPGRADE_PROTOCOL),
        );
        return Ok(response);
    }

    tokio::spawn(
        run_session(state, info, Inbound::Stream(req.into_body()), body_tx).instrument(span),
    );
    let mut response = http::Response::new(ChannelBody::new(body_rx).boxed());
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.keygate.session"),
    );
    Ok(response)
}

/// Carrier of a session's frames.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// The request and response bodies of one HTTP/2 stream.
    Http2Stream,
    /// The TLS connection itself, after an HTTP/1.1 upgrade. It has no
    /// HTTP/2 buffers, so an idle session costs the gateway less memory.
    Upgrade,
}

/// Picks the transport from the request's HTTP version and its `Upgrade`
/// and `Connection` headers. An upgrade request must be HTTP/1.1 and have no
/// body: the agent's frames follow the 101 response.
fn transport(req: &http::Request<Incoming>) -> Result<Transport, ApiError> {
    match req.version() {
        http::Version::HTTP_2 => return Ok(Transport::Http2Stream),
        http::Version::HTTP_11 => {}
        other => {
            return Err(ApiError::upgrade_required(format!(
                "an agent session needs HTTP/1.1 with `Upgrade: {UPGRADE_PROTOCOL}`, or HTTP/2; the request used {other:?}"
            )))
        }
    }
    let has_body = req.headers().contains_key(http::header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() != b"0");
    if has_body && req.headers().contains_key(http::header::UPGRADE) {
        return Err(ApiError::bad_request(
            "invalid-upgrade",
            "an upgrade request for a session has no body: send the hello frame after the 101 response",
        ));
    }
    let header_has = |name: http::header::HeaderName, token: &str| {
        req.headers().get_all(name).iter().any(|value| {
            value
                .to_str()
                .unwrap_or_default()
                .split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    };
    let requested = req
        .headers()
        .get(http::header::UPGRADE)
        .map(|value| value.to_str().unwrap_or("(not text)"));
    match requested {
        Some(_) if header_has(http::header::UPGRADE, UPGRADE_PROTOCOL) => {
            if header_has(http::header::CONNECTION, "upgrade") {
                Ok(Transport::Upgrade)
            } else {
                Err(ApiError::upgrade_required(format!(
                    "an upgrade to {UPGRADE_PROTOCOL} needs `Connection: upgrade` as well"
                )))
            }
        }
        Some(protocols) => Err(ApiError::bad_request("invalid-upgrade", format!(
            "cannot upgrade a session to {protocols:?}: this gateway upgrades only to {UPGRADE_PROTOCOL:?}"
        ))),
        None => Err(ApiError::upgrade_required(format!(
            "an agent session over HTTP/1.1 needs the headers `Connection: upgrade` and `Upgrade: {UPGRADE_PROTOCOL}`, or HTTP/2 instead"
        ))),
    }
}

/// Facts the session loop keeps about its agent and the token that opened it.
struct SessionInfo {
    agent_id: String,
    account: String,
    session_id: String,
    certificate_thumbprint: String,
    /// `exp` of the session's current token, in Unix seconds.
    token_expires_at: u64,
}

/// Reason a session loop ended, for the log.
enum End {
    AgentClosed,
    /// The agent took no frame within the write timeout.
    SlowConsumer,
    GoAway(GoAwayReason),
    BodyError(String),
    Protocol(FrameError),
}

async fn run_session(
    state: SharedState,
    mut info: SessionInfo,
    mut body: Inbound,
    body_tx: mpsc::Sender<Bytes>,
) {
    let max_frame = state.config.gateway.max_frame_bytes;
    let mut decoder = FrameDecoder::new(max_frame);

    let Some(hello) = read_hello(&mut body, &mut decoder, &body_tx).await else {
        return;
    };
    let (version, capacity) = (hello.protocol_version, hello.capacity);

    let heartbeat = Duration::from_millis(state.config.gateway.heartbeat_interval_ms);
    let write_timeout = Duration::from_millis(state.config.gateway.write_timeout_ms);
    let welcome = Frame::Welcome {
        protocol_version: version,
        session_id: info.session_id.clone(),
        heartbeat_interval_ms: heartbeat.as_millis() as u32,
    };
    if body_tx.send(encode_frame(&welcome)).await.is_err() {
        return;
    }

    let (task_tx, mut task_rx) = mpsc::channel::<Bytes>(OUTBOUND_FRAMES);
    let session = Arc::new(SessionHandle::new(
        info.session_id.clone(),
        info.agent_id.clone(),
        info.account.clone(),
        &hello,
        task_tx,
    ));
    let mut close_rx = session.close.subscribe();
    if let Some(old) = state.sessions.insert(session.clone()) {
        info!(old.session.id = %old.session_id, agent.instance = %hello.instance_id, "new session of the instance replaces the previous one");
        old.close(GoAwayReason::Replaced);
    }
    // Shutdown closes the sessions it finds registered. One that registers
    // later, because its hello came in during the shutdown, closes itself.
    if state.is_draining() {
        session.close(GoAwayReason::ShuttingDown);
    }
    state.metrics.agent_sessions.inc();
    info!(capacity, agent.instance = %hello.instance_id, agent.version = %hello.agent_version, transport = body.name(), "agent session open");
    record_first_connection(&state, &info.agent_id);

    let mut results = PartialResults::new(state.config.gateway.max_result_bytes);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    let mut last_heard = Instant::now();
    let mut ping_nonce = 0u64;
    let token_expiry = tokio::time::sleep_until(deadline(info.token_expires_at));
    tokio::pin!(token_expiry);

    let end = loop {
        tokio::select! {
            frame = read_frame(&mut body, &mut decoder) => {
                last_heard = Instant::now();
                session.heard();
                match frame {
                    Ok(Some(Frame::TaskResultChunk { task_id, payload })) if version >= 4 => {
                        results.add_chunk(&session, &task_id, &payload);
                    }
                    Ok(Some(Frame::TaskResult { task_id, outcome, traceparent, payload })) => {
                        let reply = match results.finish(&task_id, payload) {
                            Ok(payload) => TaskReply::Done { outcome, traceparent, payload },
                            Err(message) => TaskReply::Done {
                                outcome: TaskOutcome::Failed,
                                traceparent,
                                payload: Bytes::from(message),
                            },
                        };
                        if !session.complete(&task_id, reply) {
                            debug!(task.id = %task_id, "result for a task that no caller is waiting for");
                        }
                    }
                    Ok(Some(Frame::TaskAccepted { task_id })) if version >= 3 => {
                        mark_running(&state, &session, &task_id);
                    }
                    Ok(Some(Frame::Ping { nonce })) => {
                        if let Err(end) = send_within(&body_tx, encode_frame(&Frame::Pong { nonce }), write_timeout).await {
                            break end;
                        }
                    }
                    Ok(Some(Frame::Pong { .. })) => {}
                    Ok(Some(Frame::TokenRefresh { access_token })) if version >= 2 => {
                        match check_refresh(&state, &info, &access_token) {
                            Ok(expires_at) => {
                                info.token_expires_at = expires_at;
                                token_expiry.as_mut().reset(deadline(expires_at));
                                let expires_in_ms = expires_at.saturating_sub(keygate_auth::unix_now()) * 1000;
                                debug!(expires_in_ms, "session token refreshed");
                                if let Err(end) = send_within(&body_tx, encode_frame(&Frame::TokenAccepted { expires_in_ms }), write_timeout).await {
                                    break end;
                                }
                            }
                            Err(error) => {
                                state.metrics.auth_failures.with_label_values(&[error.reason()]).inc();
                                warn!(reason = error.reason(), "token refresh rejected");
                                let message = format!("the refreshed token was rejected: {error}");
                                send_go_away(&body_tx, GoAwayReason::Unauthorized, &message).await;
                                break End::GoAway(GoAwayReason::Unauthorized);
                            }
                        }
                    }
                    Ok(Some(other)) => {
                        let message = format!("unexpected {} frame from an agent", other.name());
                        warn!("{message}");
                        send_go_away(&body_tx, GoAwayReason::ProtocolError, &message).await;
                        break End::GoAway(GoAwayReason::ProtocolError);
                    }
                    Ok(None) => break End::AgentClosed,
                    Err(ReadError::Body(e)) => break End::BodyError(e),
                    Err(ReadError::Frame(e)) => {
                        send_go_away(&body_tx, GoAwayReason::ProtocolError, &e.to_string()).await;
                        break End::Protocol(e);
                    }
                }
            }
            Some(frame) = task_rx.recv() => {
                if let Err(end) = send_within(&body_tx, frame, write_timeout).await {
                    break end;
                }
            }
            _ = ticker.tick() => {
                if last_heard.elapsed() > heartbeat * MISSED_HEARTBEATS {
                    send_go_away(&body_tx, GoAwayReason::HeartbeatTimeout, "no frame received within three heartbeat intervals").await;
                    break End::GoAway(GoAwayReason::HeartbeatTimeout);
                }
                ping_nonce += 1;
                if let Err(end) = send_within(&body_tx, encode_frame(&Frame::Ping { nonce: ping_nonce }), write_timeout).await {
                    break end;
                }
            }
            () = &mut token_expiry => {
                // Version 1 agents do not know the TokenExpired reason.
                let reason = if version >= 2 { GoAwayReason::TokenExpired } else { GoAwayReason::Unauthorized };
                let message = "token expired: the session's access token expired before the agent refreshed it; log in again";
                send_go_away(&body_tx, reason, message).await;
                break End::GoAway(reason);
            }
            _ = close_rx.changed() => {
                let reason = close_rx.borrow().unwrap_or(GoAwayReason::ShuttingDown);
                let message = match reason {
                    GoAwayReason::ShuttingDown if state.is_draining() => "the gateway is shutting down; reconnect",
                    GoAwayReason::ShuttingDown if session.is_draining() => "an administrator restarted the agent; reconnect",
                    GoAwayReason::Replaced => "a newer session of this agent replaced this one",
                    GoAwayReason::ShuttingDown => "the gateway is shutting down; reconnect",
                    GoAwayReason::Unauthorized => "the agent's credentials were revoked or rotated; log in again",
                    _ => "the gateway closed the session",
                };
                send_go_away(&body_tx, reason, message).await;
                break End::GoAway(reason);
            }
        }
    };

    let end = body.explain(end);
    state.sessions.remove(&session);
    state.metrics.agent_sessions.dec();
    let failed = session.fail_pending();
    match end {
        End::AgentClosed => info!(failed_tasks = failed, "agent session closed by the agent"),
        End::SlowConsumer => {
            state.metrics.slow_consumers.inc();
            warn!(
                failed_tasks = failed,
                write_timeout_ms = write_timeout.as_millis() as u64,
                "agent session closed: the agent stopped reading its frames"
            )
        }
        End::GoAway(reason) => {
            info!(failed_tasks = failed, reason = ?reason, "agent session closed by the gateway")
        }
        End::BodyError(e) => {
            info!(failed_tasks = failed, error = %e, "agent connection lost")
        }
        End::Protocol(e) => {
            warn!(failed_tasks = failed, error = %e, "agent session closed after a protocol error")
        }
    }
}

/// Results arriving in `TaskResultChunk` frames, joined per task until
/// the `TaskResult` with the last part arrives.
struct PartialResults {
    parts: HashMap<String, BytesMut>,
    max_bytes: usize,
}

impl PartialResults {
    fn new(max_bytes: usize) -> PartialResults {
        PartialResults {
            parts: HashMap::new(),
            max_bytes,
        }
    }

    /// Appends a part of a task's result. Parts of tasks that no caller
    /// waits for are dropped, so a timed-out or cancelled task keeps no
    /// memory. A result that grows past the limit fails its task at once.
    fn add_chunk(&mut self, session: &SessionHandle, task_id: &str, chunk: &[u8]) {
        if !session.is_waiting(task_id) {
            self.parts.remove(task_id);
            debug!(task.id = %task_id, "result chunk for a task that no caller is waiting for");
            return;
        }
        let joined = self.parts.entry(task_id.to_owned()).or_default();
        if joined.len() + chunk.len() <= self.max_bytes {
            joined.extend_from_slice(chunk);
            return;
        }
        self.parts.remove(task_id);
        warn!(task.id = %task_id, max_result_bytes = self.max_bytes, "the agent's result exceeds the limit; the task fails");
        let reply = TaskReply::Done {
            outcome: TaskOutcome::Failed,
            traceparent: None,
            payload: Bytes::from(self.too_large()),
        };
        session.complete(task_id, reply);
    }

    /// Returns the whole result whose last part is `last`, or the error
    /// message when it exceeds the limit.
    fn finish(&mut self, task_id: &str, last: Bytes) -> Result<Bytes, String> {
        let joined = self.parts.remove(task_id);
        let total = joined.as_ref().map_or(0, BytesMut::len) + last.len();
        if total > self.max_bytes {
            return Err(self.too_large());
        }
        match joined {
            None => Ok(last),
            Some(mut joined) => {
                joined.extend_from_slice(&last);
                Ok(joined.freeze())
            }
        }
    }

    fn too_large(&self) -> String {
        format!(
            "the agent's result exceeds gateway.max_result_bytes ({} bytes); return less data or raise the limit",
            self.max_bytes
        )
    }
}

/// Records the agent's confirmation that it received a task. A confirmation
/// for a task of another agent, or for one not sent, changes nothing.
fn mark_running(state: &SharedState, session: &SessionHandle, task_id: &str) {
    let mut confirmed = false;
    state.tasks.update(task_id, |view| {
        if view.agent_id == session.agent_id && view.status == TaskStatus::Dispatched {
            view.status = TaskStatus::Running;
            view.started_at_ms = Some(crate::now_ms());
            confirmed = true;
        }
    });
    if !confirmed {
        debug!(task.id = %task_id, "receipt confirmed for a task not waiting for one");
    }
}

/// Stores that the agent has connected at least once, the first time only,
/// so its status reads `stopped` rather than `pending` once it leaves.
fn record_first_connection(state: &SharedState, agent_id: &str) {
    let known = state
        .agents
        .get(agent_id)
        .ok()
        .flatten()
        .is_some_and(|agent| agent.first_connected_at_ms.is_some());
    if known {
        return;
    }
    if let Err(error) = state.agents.set_first_connected(agent_id, crate::now_ms()) {
        warn!(%error, "cannot store the agent's first connection");
    }
}

/// Waits for the agent's `Hello`; returns what it declared, with the
/// capacity clamped, or None after sending GoAway for a bad or missing hello.
async fn read_hello(
    body: &mut Inbound,
    decoder: &mut FrameDecoder,
    body_tx: &mpsc::Sender<Bytes>,
) -> Option<Hello> {
    let hello = tokio::time::timeout(HELLO_TIMEOUT, read_frame(body, decoder)).await;
    match hello {
        Ok(Ok(Some(Frame::Hello {
            protocol_version,
            max_concurrent_tasks,
            agent_version,
            instance_id,
        }))) => {
            if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&protocol_version) {
                let message = format!(
                    "agent speaks protocol version {protocol_version}, this gateway speaks {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}"
                );
                warn!(agent.version = %agent_version, "{message}");
                send_go_away(body_tx, GoAwayReason::ProtocolError, &message).await;
                return None;
            }
            debug!(agent.version = %agent_version, agent.instance = %instance_id, capacity = max_concurrent_tasks, "hello received");
            Some(Hello {
                protocol_version,
                capacity: max_concurrent_tasks.clamp(1, MAX_CAPACITY),
                agent_version,
                instance_id,
            })
        }
        Ok(Ok(Some(other))) => {
            let message = format!("the first frame must be hello, got {}", other.name());
            warn!("{message}");
            send_go_away(body_tx, GoAwayReason::ProtocolError, &message).await;
            None
        }
        Ok(Ok(None)) => {
            debug!("agent closed the session before hello");
            None
        }
        Ok(Err(e)) => {
            warn!(error = %e, "session failed before hello");
            None
        }
        Err(_) => {
            warn!(
                timeout_ms = HELLO_TIMEOUT.as_millis() as u64,
                "no hello received in time"
            );
            send_go_away(
                body_tx,
                GoAwayReason::ProtocolError,
                "no hello frame received in time",
            )
            .await;
            None
        }
    }
}

/// Checks a token sent in `TokenRefresh`: valid, bound to this connection's
/// certificate, for this agent, and not revoked. Returns its `exp`.
fn check_refresh(state: &SharedState, info: &SessionInfo, token: &str) -> Result<u64, AuthError> {
    let principal = state
        .verifier
        .verify(token, Some(&info.certificate_thumbprint))?;
    if principal.certificate_thumbprint.is_none() {
        return Err(AuthError::CertificateBindingRequired);
    }
    let same_agent = principal.subject == info.agent_id && principal.account == info.account;
    if !same_agent || !principal.has_scope(Scope::AgentSession) {
        return Err(AuthError::InvalidClient {
            client_id: principal.subject,
        });
    }
    match state.agents.get(&info.agent_id) {
        Ok(Some(agent)) if agent.accepts_token_issued_at(principal.issued_at) => {
            Ok(principal.expires_at)
        }
        Ok(_) => Err(AuthError::Revoked),
        Err(e) => {
            warn!(error = %e, "agent lookup failed during a token refresh");
            Err(AuthError::Revoked)
        }
    }
}

/// Converts a Unix time in seconds to a runtime instant (now, if it has passed).
fn deadline(unix_secs: u64) -> tokio::time::Instant {
    let remaining = unix_secs.saturating_sub(keygate_auth::unix_now());
    tokio::time::Instant::now() + Duration::from_secs(remaining)
}

enum ReadError {
    Body(String),
    Frame(FrameError),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Body(e) => write!(f, "reading the session stream failed: {e}"),
            ReadError::Frame(e) => write!(f, "invalid frame: {e}"),
        }
    }
}

/// Source of the agent's frames.
enum Inbound {
    /// The request body of an HTTP/2 stream.
    Stream(Incoming),
    /// The read half of an upgraded HTTP/1.1 connection, and how its
    /// writer ended, which is known before the frame queue closes.
    Upgraded {
        reader: ReadHalf<TokioIo<Upgraded>>,
        writer_end: oneshot::Receiver<WriteEnd>,
    },
}

impl Inbound {
    /// Returns the transport's name for logs: `upgrade` or `http2`.
    fn name(&self) -> &'static str {
        match self {
            Inbound::Stream(_) => "http2",
            Inbound::Upgraded { .. } => "upgrade",
        }
    }

    /// Refines why frames could not be queued. On an upgraded session a
    /// closed queue means the writer ended, and the writer's outcome shows
    /// whether the agent stopped reading or the connection failed.
    fn explain(&mut self, end: End) -> End {
        let Inbound::Upgraded { writer_end, .. } = self else {
            return end;
        };
        match (end, writer_end.try_recv()) {
            (End::AgentClosed, Ok(WriteEnd::TimedOut)) => End::SlowConsumer,
            (End::AgentClosed, Ok(WriteEnd::Failed(error))) => End::BodyError(error.to_string()),
            (end, _) => end,
        }
    }
}

/// Minimum free buffer space for each read on an upgraded session.
const MIN_READ_SPACE: usize = 1024;

/// Reads the next whole frame; `Ok(None)` when the agent ended its stream.
async fn read_frame(
    body: &mut Inbound,
    decoder: &mut FrameDecoder,
) -> Result<Option<Frame>, ReadError> {
    let body = match body {
        Inbound::Stream(body) => body,
        Inbound::Upgraded { reader, .. } => {
            return stream::read_frame(reader, decoder, MIN_READ_SPACE)
                .await
                .map_err(|error| match error {
                    StreamError::Frame(e) => ReadError::Frame(e),
                    StreamError::Io(e) => ReadError::Body(e.to_string()),
                    truncated @ StreamError::Truncated { .. } => {
                        ReadError::Body(truncated.to_string())
                    }
                })
        }
    };
    loop {
        if let Some(frame) = decoder.next_frame().map_err(ReadError::Frame)? {
            return Ok(Some(frame));
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    decoder.extend(&data);
                }
            }
            Some(Err(e)) => return Err(ReadError::Body(e.to_string())),
            None => return Ok(None),
        }
    }
}

/// Queues a frame for the agent, waiting at most `timeout` for room. The
/// queue is bounded, so it stays full only while the agent reads nothing.
async fn send_within(
    body_tx: &mpsc::Sender<Bytes>,
    frame: Bytes,
    timeout: Duration,
) -> Result<(), End> {
    match tokio::time::timeout(timeout, body_tx.send(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::AgentClosed),
        Err(_) => Err(End::SlowConsumer),
    }
}

pub(crate) fn encode_frame(frame: &Frame) -> Bytes {
    let mut buf = BytesMut::with_capacity(frame.encoded_len());
    frame.encode(&mut buf);
    buf.freeze()
}

async fn send_go_away(body_tx: &mpsc::Sender<Bytes>, reason: GoAwayReason, message: &str) {
    let frame = Frame::GoAway {
        reason,
        reconnect_after_ms: 1000,
        message: message.chars().take(1000).collect(),
    };
    let _ = body_tx.send(encode_frame(&frame)).await;
}
