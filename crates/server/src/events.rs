//! In-process wake-ups: the scheduler when something may have become schedulable, a
//! launcher's long-poll when one of its workers got an assignment, and log and state
//! followers when a run changed. No polling interval sits on the dispatch path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use gantry_domain::{LauncherId, RunId};
use tokio::sync::{Notify, broadcast};

/// The server's wake-up signals.
#[derive(Debug)]
pub struct Events {
    scheduling: Notify,
    /// When the oldest request not yet served by a pass was made: the moment whatever
    /// the next pass assigns became schedulable.
    scheduling_requested_at: Mutex<Option<Instant>>,
    // A std mutex: held only to look up an entry, never across an await.
    launchers: Mutex<HashMap<LauncherId, Arc<Notify>>>,
    runs: broadcast::Sender<RunId>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            scheduling: Notify::new(),
            scheduling_requested_at: Mutex::new(None),
            launchers: Mutex::new(HashMap::new()),
            runs: broadcast::channel(1024).0,
        }
    }
}

impl Events {
    /// Asks for a scheduling pass. Requests made during a pass are kept, so the pass
    /// after it sees their effect; several requests coalesce into one pass.
    pub fn request_scheduling(&self) {
        self.scheduling_requested_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(Instant::now);
        self.scheduling.notify_one();
    }

    /// Starts serving the requests made so far: returns when the oldest was made, or now
    /// for a pass nobody asked for.
    pub fn take_scheduling_request(&self) -> Instant {
        self.scheduling_requested_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .unwrap_or_else(Instant::now)
    }

    pub async fn scheduling_requested(&self) {
        self.scheduling.notified().await;
    }

    /// The signal a launcher's long-poll waits on.
    pub fn launcher(&self, launcher_id: LauncherId) -> Arc<Notify> {
        let mut launchers = self.launchers.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(launchers.entry(launcher_id).or_default())
    }

    pub fn wake_launcher(&self, launcher_id: LauncherId) {
        let launchers = self.launchers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(notify) = launchers.get(&launcher_id) {
            notify.notify_waiters();
        }
    }

    /// Forgets signals nobody waits on.
    pub fn forget_idle_launchers(&self) {
        let mut launchers = self.launchers.lock().unwrap_or_else(PoisonError::into_inner);
        launchers.retain(|_, notify| Arc::strong_count(notify) > 1);
    }

    pub fn run_changed(&self, run_id: RunId) {
        // No receiver is fine: nobody follows that run.
        let _ = self.runs.send(run_id);
    }

    pub fn subscribe_runs(&self) -> broadcast::Receiver<RunId> {
        self.runs.subscribe()
    }
}
