//! Wake-ups: the scheduler when something may have become schedulable, a launcher's
//! long-poll when one of its workers got an assignment, and log and state followers when
//! a run changed. No polling interval sits on the dispatch path. When several server
//! processes share the store, launcher and run wake-ups (and session invalidations) are
//! also handed to the cluster channel (`crate::cluster`), which replays them in the other
//! processes; scheduling requests stay local: the process that saw the change runs the
//! pass, and assignment is atomic in the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Instant;

use gantry_domain::{LauncherId, PoolId, RunId};
use tokio::sync::{Notify, broadcast, mpsc};

/// What the other server processes sharing the store must hear.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClusterSignal {
    /// Wake this launcher's long-poll, wherever it waits.
    Launcher(LauncherId),
    /// The run changed: its followers look again.
    Run(RunId),
    /// The pool's sessions changed (reset, cycle): cached ones are stale.
    PoolSessions(PoolId),
    /// This session ended (by its token's hash).
    Session(String),
    /// The pool's workers changed (joined, drained, removed): its pages look again.
    PoolWorkers(PoolId),
}

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
    pools: broadcast::Sender<PoolId>,
    /// A change recorded effects for the effects loop (`crate::effects`).
    effects: Notify,
    /// Where signals for the other processes go; unset while this process is alone.
    cluster: OnceLock<mpsc::UnboundedSender<ClusterSignal>>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            scheduling: Notify::new(),
            scheduling_requested_at: Mutex::new(None),
            launchers: Mutex::new(HashMap::new()),
            runs: broadcast::channel(1024).0,
            pools: broadcast::channel(256).0,
            effects: Notify::new(),
            cluster: OnceLock::new(),
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

    /// Wakes the effects loop: a change recorded effects. Wake-ups while it works
    /// coalesce into one more round.
    pub fn wake_effects(&self) {
        self.effects.notify_one();
    }

    pub async fn effects_recorded(&self) {
        self.effects.notified().await;
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

    /// Wakes the launcher's long-poll, in whichever process it waits.
    pub fn wake_launcher(&self, launcher_id: LauncherId) {
        self.wake_launcher_here(launcher_id);
        self.tell_cluster(ClusterSignal::Launcher(launcher_id));
    }

    pub(crate) fn wake_launcher_here(&self, launcher_id: LauncherId) {
        let launchers = self.launchers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(notify) = launchers.get(&launcher_id) {
            notify.notify_waiters();
        }
    }

    /// Wakes every long-poll of this process: after the cluster channel lost messages,
    /// each launcher asks again for what it may have missed.
    pub(crate) fn wake_all_launchers_here(&self) {
        let launchers = self.launchers.lock().unwrap_or_else(PoisonError::into_inner);
        for notify in launchers.values() {
            notify.notify_waiters();
        }
    }

    /// Forgets signals nobody waits on.
    pub fn forget_idle_launchers(&self) {
        let mut launchers = self.launchers.lock().unwrap_or_else(PoisonError::into_inner);
        launchers.retain(|_, notify| Arc::strong_count(notify) > 1);
    }

    /// Tells the run's followers, in every process, that it changed.
    pub fn run_changed(&self, run_id: RunId) {
        self.run_changed_here(run_id);
        self.tell_cluster(ClusterSignal::Run(run_id));
    }

    pub(crate) fn run_changed_here(&self, run_id: RunId) {
        // No receiver is fine: nobody follows that run.
        let _ = self.runs.send(run_id);
    }

    /// Tells whoever watches the pool's workers, in every process, that they changed.
    /// A worker turning busy or idle is a run's change, told by `run_changed`.
    pub fn pool_workers_changed(&self, pool_id: PoolId) {
        self.pool_workers_changed_here(pool_id);
        self.tell_cluster(ClusterSignal::PoolWorkers(pool_id));
    }

    pub(crate) fn pool_workers_changed_here(&self, pool_id: PoolId) {
        // No receiver is fine: nobody watches that pool.
        let _ = self.pools.send(pool_id);
    }

    pub fn subscribe_pool_workers(&self) -> broadcast::Receiver<PoolId> {
        self.pools.subscribe()
    }

    /// Hands `signal` to the other processes sharing the store, if there are any.
    pub fn tell_cluster(&self, signal: ClusterSignal) {
        if let Some(cluster) = self.cluster.get() {
            // Closed only at shutdown, when nobody needs the signal any more.
            let _ = cluster.send(signal);
        }
    }

    /// From now on, signals for the other processes go to `cluster`.
    pub(crate) fn connect_cluster(&self, cluster: mpsc::UnboundedSender<ClusterSignal>) {
        let _ = self.cluster.set(cluster);
    }

    pub fn subscribe_runs(&self) -> broadcast::Receiver<RunId> {
        self.runs.subscribe()
    }
}
