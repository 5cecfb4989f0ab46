//! Frame types of the agent session protocol and their type bytes.

use bytes::Bytes;

use crate::error::FrameError;

pub(crate) const HELLO: u8 = 1;
pub(crate) const WELCOME: u8 = 2;
pub(crate) const TASK: u8 = 3;
pub(crate) const TASK_RESULT: u8 = 4;
pub(crate) const PING: u8 = 5;
pub(crate) const PONG: u8 = 6;
pub(crate) const GO_AWAY: u8 = 7;
pub(crate) const TOKEN_REFRESH: u8 = 8;
pub(crate) const TOKEN_ACCEPTED: u8 = 9;
pub(crate) const TRACED_TASK: u8 = 10;
pub(crate) const TRACED_TASK_RESULT: u8 = 11;
pub(crate) const CANCEL_TASK: u8 = 12;
pub(crate) const TASK_ACCEPTED: u8 = 13;
pub(crate) const TASK_RESULT_CHUNK: u8 = 14;

/// One message of an agent session, in either direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Agent to gateway, the first frame of a session (type 1).
    Hello {
        /// Protocol version the agent speaks.
        protocol_version: u16,
        /// Maximum number of tasks the agent runs at the same time.
        max_concurrent_tasks: u32,
        /// Agent software version, for logs.
        agent_version: String,
        /// Identifier of the agent instance, for logs and session bookkeeping.
        instance_id: String,
    },
    /// Gateway to agent, the reply to `Hello` (type 2).
    Welcome {
        /// Protocol version the gateway speaks on this session.
        protocol_version: u16,
        /// Session identifier assigned by the gateway, for logs on both sides.
        session_id: String,
        /// Heartbeat interval in milliseconds, chosen by the gateway.
        heartbeat_interval_ms: u32,
    },
    /// Gateway to agent: a task to run (type 3, or type 10 with a trace context).
    Task {
        task_id: String,
        /// Task kind, which selects the handler on the agent.
        kind: String,
        /// Time limit for the task, in milliseconds.
        timeout_ms: u32,
        /// W3C `traceparent` of the gateway's span for this task. Present only
        /// on protocol version 3 and later, where it makes the frame type 10.
        traceparent: Option<String>,
        payload: Bytes,
    },
    /// Agent to gateway: the result of a `Task` (type 4, or type 11 with a
    /// trace context).
    TaskResult {
        task_id: String,
        outcome: TaskOutcome,
        /// W3C `traceparent` of the agent's span that ran the task; version 3 and later.
        traceparent: Option<String>,
        payload: Bytes,
    },
    /// Liveness probe, either direction (type 5). The receiver returns a
    /// `Pong` with the same nonce.
    Ping { nonce: u64 },
    /// Reply to a `Ping`, either direction (type 6).
    Pong { nonce: u64 },
    /// Gateway to agent: the session ends, and the agent reconnects after
    /// `reconnect_after_ms` milliseconds (type 7).
    GoAway {
        reason: GoAwayReason,
        reconnect_after_ms: u32,
        /// Human-readable detail, for logs.
        message: String,
    },
    /// Agent to gateway, protocol version 2 and later: a newly issued access
    /// token that replaces the session's current one before it expires (type 8).
    TokenRefresh { access_token: String },
    /// Gateway to agent, protocol version 2 and later: the refreshed token is
    /// accepted and the session now lasts until it expires (type 9).
    TokenAccepted {
        /// Milliseconds until the new token expires.
        expires_in_ms: u64,
    },
    /// Gateway to agent, protocol version 3 and later: stop running the task;
    /// its result, if one still comes, is ignored (type 12).
    CancelTask {
        task_id: String,
        /// Human-readable detail, for logs.
        reason: String,
    },
    /// Agent to gateway, protocol version 3 and later: the agent received a
    /// `Task` and runs it (type 13).
    TaskAccepted { task_id: String },
    /// Agent to gateway, protocol version 4 and later: the next part of a
    /// result too large for one frame (type 14). The `TaskResult` that ends
    /// the task carries the last part and the outcome.
    TaskResultChunk { task_id: String, payload: Bytes },
}

impl Frame {
    /// Returns the type byte that precedes the body on the wire.
    pub fn frame_type(&self) -> u8 {
        match self {
            Frame::Hello { .. } => HELLO,
            Frame::Welcome { .. } => WELCOME,
            Frame::Task {
                traceparent: None, ..
            } => TASK,
            Frame::Task { .. } => TRACED_TASK,
            Frame::TaskResult {
                traceparent: None, ..
            } => TASK_RESULT,
            Frame::TaskResult { .. } => TRACED_TASK_RESULT,
            Frame::Ping { .. } => PING,
            Frame::Pong { .. } => PONG,
            Frame::GoAway { .. } => GO_AWAY,
            Frame::TokenRefresh { .. } => TOKEN_REFRESH,
            Frame::TokenAccepted { .. } => TOKEN_ACCEPTED,
            Frame::CancelTask { .. } => CANCEL_TASK,
            Frame::TaskAccepted { .. } => TASK_ACCEPTED,
            Frame::TaskResultChunk { .. } => TASK_RESULT_CHUNK,
        }
    }

    /// Returns a short static name for logs and metric labels.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "hello",
            Frame::Welcome { .. } => "welcome",
            Frame::Task { .. } => "task",
            Frame::TaskResult { .. } => "task_result",
            Frame::Ping { .. } => "ping",
            Frame::Pong { .. } => "pong",
            Frame::GoAway { .. } => "go_away",
            Frame::TokenRefresh { .. } => "token_refresh",
            Frame::TokenAccepted { .. } => "token_accepted",
            Frame::CancelTask { .. } => "cancel_task",
            Frame::TaskAccepted { .. } => "task_accepted",
            Frame::TaskResultChunk { .. } => "task_result_chunk",
        }
    }
}

/// Outcome of a task, sent as one byte in `TaskResult`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TaskOutcome {
    Succeeded = 0,
    Failed = 1,
}

impl TryFrom<u8> for TaskOutcome {
    type Error = FrameError;

    fn try_from(value: u8) -> Result<Self, FrameError> {
        match value {
            0 => Ok(TaskOutcome::Succeeded),
            1 => Ok(TaskOutcome::Failed),
            _ => Err(FrameError::InvalidOutcome { value }),
        }
    }
}

/// Reason a session ends, sent as one byte in `GoAway`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum GoAwayReason {
    /// The gateway is stopping.
    ShuttingDown = 0,
    /// A newer session of the same agent replaced this one.
    Replaced = 1,
    /// The agent sent an invalid frame or an unsupported protocol version.
    ProtocolError = 2,
    /// The agent missed its heartbeat.
    HeartbeatTimeout = 3,
    /// The agent's credentials are not, or are no longer, accepted.
    Unauthorized = 4,
    /// The session's token expired before the agent refreshed it; sent on
    /// protocol version 2 and later only.
    TokenExpired = 5,
}

impl TryFrom<u8> for GoAwayReason {
    type Error = FrameError;

    fn try_from(value: u8) -> Result<Self, FrameError> {
        match value {
            0 => Ok(GoAwayReason::ShuttingDown),
            1 => Ok(GoAwayReason::Replaced),
            2 => Ok(GoAwayReason::ProtocolError),
            3 => Ok(GoAwayReason::HeartbeatTimeout),
            4 => Ok(GoAwayReason::Unauthorized),
            5 => Ok(GoAwayReason::TokenExpired),
            _ => Err(FrameError::InvalidGoAwayReason { value }),
        }
    }
}
