//! Per-agent gates of the relay: the pause switch that keeps an agent's
//! queued tasks from being sent, and the count of its tasks waiting to be sent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

struct Gate {
    paused: watch::Sender<bool>,
    queued: Arc<AtomicUsize>,
}

impl Gate {
    fn new(paused: bool) -> Gate {
        Gate {
            paused: watch::channel(paused).0,
            queued: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// The part of an agent's gate that the relay keeps while a task waits.
pub struct AgentGate {
    /// True while the agent is paused.
    pub paused: watch::Receiver<bool>,
    /// Tasks of the agent accepted but not yet sent, on this node.
    pub queued: Arc<AtomicUsize>,
}

/// The gates of every agent that had a task or a pause on this node.
#[derive(Default)]
pub struct AgentGates {
    gates: Mutex<HashMap<String, Gate>>,
}

impl AgentGates {
    /// Returns the agent's gate. The first call for an agent sets its pause
    /// switch to `stored`, the agent record's value.
    pub fn gate(&self, agent_id: &str, stored: bool) -> AgentGate {
        let mut gates = self.gates.lock().expect("agent gates lock");
        let gate = gates
            .entry(agent_id.to_owned())
            .or_insert_with(|| Gate::new(stored));
        AgentGate {
            paused: gate.paused.subscribe(),
            queued: gate.queued.clone(),
        }
    }

    /// Pauses or resumes the agent's task delivery on this node.
    pub fn set_paused(&self, agent_id: &str, paused: bool) {
        let mut gates = self.gates.lock().expect("agent gates lock");
        match gates.get(agent_id) {
            Some(gate) => {
                gate.paused.send_replace(paused);
            }
            None => {
                gates.insert(agent_id.to_owned(), Gate::new(paused));
            }
        }
    }

    /// Tasks of the agent accepted but not yet sent.
    pub fn queued(&self, agent_id: &str) -> usize {
        self.gates
            .lock()
            .expect("agent gates lock")
            .get(agent_id)
            .map_or(0, |g| g.queued.load(Ordering::Relaxed))
    }
}

/// Counts one task as queued until dropped.
pub(super) struct QueuedGuard(Option<Arc<AtomicUsize>>);

impl QueuedGuard {
    pub(super) fn new(queued: &Arc<AtomicUsize>) -> QueuedGuard {
        queued.fetch_add(1, Ordering::Relaxed);
        QueuedGuard(Some(queued.clone()))
    }

    /// Stops counting the task, once it is sent.
    pub(super) fn release(&mut self) {
        if let Some(queued) = self.0.take() {
            queued.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for QueuedGuard {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_value_applies_until_set() {
        let gates = AgentGates::default();
        let gate = gates.gate("agt_1", true);
        assert!(*gate.paused.borrow());
        // Later calls keep the live value, not the stored one they pass.
        assert!(*gates.gate("agt_1", false).paused.borrow());
        gates.set_paused("agt_1", false);
        assert!(!*gate.paused.borrow());
        gates.set_paused("agt_2", true);
        assert!(*gates.gate("agt_2", false).paused.borrow());
    }

    #[test]
    fn queued_counts_until_released_or_dropped() {
        let gates = AgentGates::default();
        let gate = gates.gate("agt_1", false);
        let mut first = QueuedGuard::new(&gate.queued);
        let second = QueuedGuard::new(&gate.queued);
        assert_eq!(gates.queued("agt_1"), 2);
        first.release();
        first.release();
        assert_eq!(gates.queued("agt_1"), 1);
        drop(second);
        drop(first);
        assert_eq!(gates.queued("agt_1"), 0);
        assert_eq!(gates.queued("agt_unknown"), 0);
    }
}
