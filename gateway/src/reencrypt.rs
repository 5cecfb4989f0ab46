//! The background runner of the vault's re-encryption job: one step at a
//! time on a blocking thread, resumed at start when a job was left unfinished.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::{info, warn};

use crate::state::SharedState;

/// Secret versions looked at per step. Each step holds the vault's write lock,
/// so small steps keep writes waiting for at most a few milliseconds.
const STEP_RECORDS: usize = 200;
/// Pause between steps, which leaves the write lock to writers.
const STEP_PAUSE: Duration = Duration::from_millis(2);
/// Steps between two progress log lines.
const STEPS_PER_LOG: u64 = 50;
/// Wait after a failed step before the next attempt.
const RETRY_PAUSE: Duration = Duration::from_secs(5);

/// Whether the runner is active, and the request to stop it at shutdown.
#[derive(Default)]
pub struct ReencryptJob {
    running: AtomicBool,
    stop: AtomicBool,
}

impl ReencryptJob {
    /// Starts the runner unless it is already running. It stops when the job
    /// is done or the server shuts down; the stored cursor lets a later start
    /// resume where it stopped.
    pub fn ensure_running(state: &SharedState) {
        if state.reencrypt.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let state = state.clone();
        tokio::task::spawn_blocking(move || {
            run(&state);
            state.reencrypt.running.store(false, Ordering::Release);
        });
    }

    /// Asks the runner to stop after its current step.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }
}

fn run(state: &SharedState) {
    // The job is started only once the vault is unsealed, and it never seals again.
    let Ok(vault) = state.vault.get() else {
        return;
    };
    let mut steps: u64 = 0;
    while !state.reencrypt.stop.load(Ordering::Acquire) {
        match vault.reencrypt_step(STEP_RECORDS) {
            Ok(None) => return,
            Ok(Some(progress)) if progress.done => {
                info!(
                    scanned = progress.scanned,
                    rewritten = progress.rewritten,
                    "re-encryption finished"
                );
                return;
            }
            Ok(Some(progress)) => {
                steps += 1;
                if steps == STEPS_PER_LOG {
                    steps = 0;
                    info!(
                        scanned = progress.scanned,
                        rewritten = progress.rewritten,
                        total = progress.total,
                        "re-encryption in progress"
                    );
                }
                std::thread::sleep(STEP_PAUSE);
            }
            Err(error) => {
                warn!(%error, "a re-encryption step failed; retrying");
                std::thread::sleep(RETRY_PAUSE);
            }
        }
    }
}
