//! Agent sessions: one long-lived HTTP/2 stream or upgraded HTTP/1.1
//! connection per connected agent, and the registry that finds an agent's
//! session when a task arrives.

mod handler;
pub mod stream;

pub(crate) use handler::encode_frame;
pub use handler::open_session;
pub use stream::UPGRADE_PROTOCOL;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use keygate_protocol::{Frame, GoAwayReason, TaskOutcome};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

/// The fields an agent declared in `Hello`.
pub struct Hello {
    pub protocol_version: u16,
    pub capacity: u32,
    pub agent_version: String,
    pub instance_id: String,
}

/// Outcome of a task sent on a session.
#[derive(Debug)]
pub enum TaskReply {
    Done {
        outcome: TaskOutcome,
        /// The agent's trace context for the run, on protocol version 3 and later.
        traceparent: Option<String>,
        payload: Bytes,
    },
    /// The session ended before the result arrived.
    SessionClosed,
}

/// A connected agent session, as the relay uses it.
pub struct SessionHandle {
    pub session_id: String,
    pub agent_id: String,
    pub account: String,
    /// The agent instance (`Hello.instance_id`); a new session of the same
    /// instance replaces this one.
    pub instance_id: String,
    /// The agent software version from `Hello`.
    pub agent_version: String,
    pub opened_at_ms: u64,
    /// When the last frame from the agent arrived, in Unix milliseconds.
    pub last_heard_ms: std::sync::atomic::AtomicU64,
    pub capacity: u32,
    /// Protocol version agreed in `Welcome`.
    pub protocol_version: u16,
    /// Encoded frames to send to the agent, forwarded by the session's loop.
    outbound: mpsc::Sender<Bytes>,
    pending: Mutex<HashMap<String, oneshot::Sender<TaskReply>>>,
    /// One permit per task the agent may run at once.
    pub slots: Arc<Semaphore>,
    close: watch::Sender<Option<GoAwayReason>>,
    /// Set when an administrator restarts the agent: no new task is sent, and
    /// the session ends once the running ones finish.
    draining: AtomicBool,
    /// False once the session is draining, closing or closed; queued tasks
    /// then wait for the agent's next session.
    accepting: watch::Sender<bool>,
}

impl SessionHandle {
    fn new(
        session_id: String,
        agent_id: String,
        account: String,
        hello: &Hello,
        outbound: mpsc::Sender<Bytes>,
    ) -> SessionHandle {
        let now = crate::now_ms();
        SessionHandle {
            session_id,
            agent_id,
            account,
            instance_id: hello.instance_id.clone(),
            agent_version: hello.agent_version.clone(),
            opened_at_ms: now,
            last_heard_ms: std::sync::atomic::AtomicU64::new(now),
            capacity: hello.capacity,
            protocol_version: hello.protocol_version,
            outbound,
            pending: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(hello.capacity as usize)),
            close: watch::channel(None).0,
            draining: AtomicBool::new(false),
            accepting: watch::channel(true).0,
        }
    }

    /// Returns whether the relay may send new tasks on this session.
    pub fn is_accepting(&self) -> bool {
        *self.accepting.borrow()
    }

    /// Resolves once the session stops taking new tasks.
    pub async fn stopped_accepting(&self) {
        let mut rx = self.accepting.subscribe();
        let _ = rx.wait_for(|accepting| !accepting).await;
    }

    fn stop_accepting(&self) {
        self.accepting
            .send_if_modified(|accepting| std::mem::replace(accepting, false));
    }

    /// Stops sending new tasks on this session; the caller closes it once the
    /// running tasks have finished.
    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.stop_accepting();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Sends `CancelTask` for a task on sessions of protocol version 3 or
    /// later, and returns whether it was sent. Older agents run the task to
    /// its end, and their result is dropped.
    pub async fn cancel_on_agent(&self, task_id: &str, reason: &str) -> bool {
        self.abandon(task_id);
        if self.protocol_version < 3 {
            return false;
        }
        let frame = Frame::CancelTask {
            task_id: task_id.to_owned(),
            reason: reason.chars().take(1000).collect(),
        };
        self.send(encode_frame(&frame)).await
    }

    /// Registers a task as awaiting its result and returns where the result arrives.
    pub fn expect_result(&self, task_id: &str) -> oneshot::Receiver<TaskReply> {
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .expect("pending lock")
            .insert(task_id.to_owned(), tx);
        rx
    }

    /// Returns whether a task sent on this session still waits for its result.
    pub fn is_waiting(&self, task_id: &str) -> bool {
        self.pending
            .lock()
            .expect("pending lock")
            .contains_key(task_id)
    }

    /// Forgets a task whose caller stopped waiting.
    pub fn abandon(&self, task_id: &str) {
        self.pending.lock().expect("pending lock").remove(task_id);
    }

    /// Queues an encoded frame for the agent; false if the session has ended.
    pub async fn send(&self, frame: Bytes) -> bool {
        self.outbound.send(frame).await.is_ok()
    }

    /// Delivers a result; false if no task with that id was waiting.
    fn complete(&self, task_id: &str, reply: TaskReply) -> bool {
        let waiter = self.pending.lock().expect("pending lock").remove(task_id);
        match waiter {
            Some(tx) => {
                let _ = tx.send(reply);
                true
            }
            None => false,
        }
    }

    fn fail_pending(&self) -> usize {
        let waiters: Vec<_> = self.pending.lock().expect("pending lock").drain().collect();
        let count = waiters.len();
        for (_, tx) in waiters {
            let _ = tx.send(TaskReply::SessionClosed);
        }
        count
    }

    /// Asks the session to send GoAway with `reason` and end.
    pub fn close(&self, reason: GoAwayReason) {
        self.stop_accepting();
        self.close.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(reason);
                true
            } else {
                false
            }
        });
    }

    pub fn in_flight(&self) -> usize {
        self.capacity as usize - self.slots.available_permits()
    }

    /// Notes that a frame arrived from the agent.
    pub fn heard(&self) {
        self.last_heard_ms.store(crate::now_ms(), Ordering::Relaxed);
    }
}

/// The sessions of this node: one per agent instance.
pub struct SessionRegistry {
    /// Sessions by agent id; each agent has one per connected instance.
    sessions: Mutex<HashMap<String, Vec<Arc<SessionHandle>>>>,
    /// Agents restarted by an administrator, with the time until which their
    /// next session is expected; tasks for them queue meanwhile.
    returning: Mutex<HashMap<String, std::time::Instant>>,
    /// Counts session registrations, so queued tasks can wait for an agent's next session.
    registered: watch::Sender<u64>,
}

impl Default for SessionRegistry {
    fn default() -> SessionRegistry {
        SessionRegistry {
            sessions: Mutex::default(),
            returning: Mutex::default(),
            registered: watch::channel(0).0,
        }
    }
}

impl SessionRegistry {
    /// Returns the agent's sessions that take new tasks, most free slots
    /// first; waits for a new session while there is none. Returns None only
    /// when `deadline` passes first.
    pub async fn accepting(
        &self,
        agent_id: &str,
        deadline: tokio::time::Instant,
    ) -> Option<Vec<Arc<SessionHandle>>> {
        let mut registered = self.registered.subscribe();
        loop {
            let mut sessions: Vec<_> = self
                .sessions_of(agent_id)
                .into_iter()
                .filter(|s| s.is_accepting())
                .collect();
            if !sessions.is_empty() {
                sessions.sort_by_key(|s| std::cmp::Reverse(s.slots.available_permits()));
                return Some(sessions);
            }
            match tokio::time::timeout_at(deadline, registered.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }

    /// Resolves when a session registers after this call.
    pub fn registrations(&self) -> watch::Receiver<u64> {
        self.registered.subscribe()
    }

    /// Records that the agent got GoAway and should reconnect within `within`.
    pub fn expect_return(&self, agent_id: &str, within: std::time::Duration) {
        let mut returning = self.returning.lock().expect("returning lock");
        let now = std::time::Instant::now();
        returning.retain(|_, until| *until > now);
        returning.insert(agent_id.to_owned(), now + within);
    }

    /// Returns whether the agent has a session, or is expected back after a restart.
    pub fn is_available(&self, agent_id: &str) -> bool {
        if self.get(agent_id).is_some() {
            return true;
        }
        self.returning
            .lock()
            .expect("returning lock")
            .get(agent_id)
            .is_some_and(|until| *until > std::time::Instant::now())
    }

    /// Returns one of the agent's sessions, the oldest.
    pub fn get(&self, agent_id: &str) -> Option<Arc<SessionHandle>> {
        self.sessions
            .lock()
            .expect("registry lock")
            .get(agent_id)
            .and_then(|sessions| sessions.first().cloned())
    }

    /// Returns every session of the agent, oldest first.
    pub fn sessions_of(&self, agent_id: &str) -> Vec<Arc<SessionHandle>> {
        self.sessions
            .lock()
            .expect("registry lock")
            .get(agent_id)
            .cloned()
            .unwrap_or_default()
    }

    /// Adds a session; returns the session of the same agent instance it replaces.
    fn insert(&self, session: Arc<SessionHandle>) -> Option<Arc<SessionHandle>> {
        self.returning
            .lock()
            .expect("returning lock")
            .remove(&session.agent_id);
        let old = {
            let mut all = self.sessions.lock().expect("registry lock");
            let sessions = all.entry(session.agent_id.clone()).or_default();
            let old = sessions
                .iter()
                .position(|s| s.instance_id == session.instance_id)
                .map(|index| sessions.remove(index));
            sessions.push(session);
            old
        };
        self.registered.send_modify(|count| *count += 1);
        old
    }

    /// Removes the session, if it is still registered.
    fn remove(&self, session: &SessionHandle) {
        session.stop_accepting();
        let mut all = self.sessions.lock().expect("registry lock");
        if let Some(sessions) = all.get_mut(&session.agent_id) {
            sessions.retain(|s| s.session_id != session.session_id);
            if sessions.is_empty() {
                all.remove(&session.agent_id);
            }
        }
    }

    /// Returns the number of open sessions.
    pub fn len(&self) -> usize {
        self.sessions
            .lock()
            .expect("registry lock")
            .values()
            .map(Vec::len)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns every open session.
    pub fn all(&self) -> Vec<Arc<SessionHandle>> {
        self.sessions
            .lock()
            .expect("registry lock")
            .values()
            .flatten()
            .cloned()
            .collect()
    }

    /// Sends GoAway to every session, for shutdown.
    pub fn close_all(&self, reason: GoAwayReason) {
        for session in self.all() {
            session.close(reason);
        }
    }
}
