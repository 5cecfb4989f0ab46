//! Agent sessions: one long-lived HTTP/2 stream per connected agent, and the
//! registry that finds an agent's session when a task arrives.

mod handler;

pub(crate) use handler::encode_frame;
pub use handler::open_session;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use keygate_protocol::{GoAwayReason, TaskOutcome};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

/// Outcome of a task sent on a session.
#[derive(Debug)]
pub enum TaskReply {
    Done {
        outcome: TaskOutcome,
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
    pub capacity: u32,
    /// Encoded frames to send to the agent, forwarded by the session's loop.
    outbound: mpsc::Sender<Bytes>,
    pending: Mutex<HashMap<String, oneshot::Sender<TaskReply>>>,
    /// One permit per task the agent may run at once.
    pub slots: Arc<Semaphore>,
    /// Tasks waiting for a slot.
    pub queued: AtomicUsize,
    close: watch::Sender<Option<GoAwayReason>>,
}

impl SessionHandle {
    fn new(
        session_id: String,
        agent_id: String,
        account: String,
        capacity: u32,
        outbound: mpsc::Sender<Bytes>,
    ) -> SessionHandle {
        SessionHandle {
            session_id,
            agent_id,
            account,
            capacity,
            outbound,
            pending: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(capacity as usize)),
            queued: AtomicUsize::new(0),
            close: watch::channel(None).0,
        }
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

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

/// The sessions of this node, one per agent.
#[derive(Default)]
pub struct SessionRegistry {
    sessions: Mutex<HashMap<String, Arc<SessionHandle>>>,
}

impl SessionRegistry {
    pub fn get(&self, agent_id: &str) -> Option<Arc<SessionHandle>> {
        self.sessions
            .lock()
            .expect("registry lock")
            .get(agent_id)
            .cloned()
    }

    /// Adds a session, returning the one it replaces for the same agent.
    fn insert(&self, session: Arc<SessionHandle>) -> Option<Arc<SessionHandle>> {
        self.sessions
            .lock()
            .expect("registry lock")
            .insert(session.agent_id.clone(), session)
    }

    /// Removes the agent's entry only if it is still this session.
    fn remove(&self, session: &SessionHandle) {
        let mut sessions = self.sessions.lock().expect("registry lock");
        if sessions
            .get(&session.agent_id)
            .is_some_and(|s| s.session_id == session.session_id)
        {
            sessions.remove(&session.agent_id);
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.lock().expect("registry lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends GoAway to every session, for shutdown.
    pub fn close_all(&self, reason: GoAwayReason) {
        let sessions: Vec<_> = self
            .sessions
            .lock()
            .expect("registry lock")
            .values()
            .cloned()
            .collect();
        for session in sessions {
            session.close(reason);
        }
    }
}
