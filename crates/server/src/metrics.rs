//! The server's Prometheus metrics: per pool, the runs pending and the workers (all,
//! busy, drained), read from the store at scrape time; and the dispatch latency, from a
//! run becoming schedulable to its assignment reaching its launcher.
//!
//! "Schedulable" is the moment of the request that led to the scheduling pass which
//! assigned the run: the trigger, the worker becoming free, the lock being released.
//! A run that waited for a worker is counted from when one became free, so the
//! histogram measures Gantry's own delay, not the queue.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use gantry_domain::{RunId, RunState};
use gantry_store::{PoolRecord, RunRecord, WorkerCountsRecord};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::error::ApiError;
use crate::state::AppState;

/// Assignments not delivered after this long are forgotten: their launcher vanished.
const UNDELIVERED_AFTER: Duration = Duration::from_secs(600);

/// Dispatch latency: assignments made and not yet delivered, and the histogram.
pub struct DispatchMetrics {
    latency: Histogram,
    undelivered: Mutex<HashMap<RunId, Instant>>,
}

impl Default for DispatchMetrics {
    fn default() -> Self {
        // 0.5 ms to about 16 s.
        Self {
            latency: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            undelivered: Mutex::new(HashMap::new()),
        }
    }
}

impl DispatchMetrics {
    /// The run is being assigned by a pass that served requests made since
    /// `schedulable_since`.
    pub(crate) fn assigned(&self, run: RunId, schedulable_since: Instant) {
        let mut undelivered = self.undelivered.lock().unwrap_or_else(PoisonError::into_inner);
        undelivered.retain(|_, since| since.elapsed() < UNDELIVERED_AFTER);
        undelivered.insert(run, schedulable_since);
    }

    /// The pass that was about to assign the run did not.
    pub(crate) fn not_assigned(&self, run: RunId) {
        self.undelivered.lock().unwrap_or_else(PoisonError::into_inner).remove(&run);
    }

    /// A long-poll answer carried the run's assignment; only the first delivery counts.
    pub(crate) fn delivered(&self, run: RunId) {
        let since = self.undelivered.lock().unwrap_or_else(PoisonError::into_inner).remove(&run);
        if let Some(since) = since {
            self.latency.observe(since.elapsed().as_secs_f64());
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabel {
    pool: String,
}

/// The metrics text, as of now.
pub(crate) async fn render(state: &AppState) -> Result<String, ApiError> {
    let pools = state.store.list_pools().await?;
    let workers = state.store.worker_counts().await?;
    let runs = state.store.active_runs().await?;
    let mut registry = Registry::default();
    for (name, help, family) in pool_gauges(&pools, &workers, &runs) {
        registry.register(name, help, family);
    }
    registry.register_with_unit(
        "gantry_dispatch_latency",
        "From a run becoming schedulable to its assignment reaching the launcher",
        Unit::Seconds,
        state.dispatch_metrics.latency.clone(),
    );
    let drifted = prometheus_client::metrics::gauge::Gauge::<i64>::default();
    drifted.set(i64::try_from(state.store.drifted_stacks().await?.len()).unwrap_or(i64::MAX));
    registry.register(
        "gantry_stacks_drifted",
        "Stacks whose last drift check found changes made outside Gantry, until a tracked run finishes",
        drifted,
    );
    let pending_effects = state.store.pending_effects().await?;
    crate::effects::register_metrics(&mut registry, &pending_effects, crate::state::now());
    Ok(gantry_metrics::encode(&registry))
}

type Gauges = Family<PoolLabel, Gauge>;

fn pool_gauges(
    pools: &[PoolRecord],
    workers: &[WorkerCountsRecord],
    runs: &[RunRecord],
) -> [(&'static str, &'static str, Gauges); 4] {
    let [pending, all, busy, drained] = std::array::from_fn(|_| Gauges::default());
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    for pool in pools {
        let label = PoolLabel { pool: pool.name.clone() };
        let pending_runs = runs.iter().filter(|run| run.pool_id == pool.id && is_pending(run));
        pending.get_or_create(&label).set(count(pending_runs.count() as u64));
        let counts = workers.iter().find(|counts| counts.pool_id == pool.id);
        let of = |field: fn(&WorkerCountsRecord) -> u64| count(counts.map_or(0, field));
        all.get_or_create(&label).set(of(|c| c.connected));
        busy.get_or_create(&label).set(of(|c| c.busy));
        drained.get_or_create(&label).set(of(|c| c.drained));
    }
    [
        ("gantry_pool_runs_pending", "Runs waiting to be handed to a worker of the pool", pending),
        ("gantry_pool_workers", "Workers connected to the pool", all),
        ("gantry_pool_workers_busy", "Workers of the pool holding a run", busy),
        ("gantry_pool_workers_drained", "Workers of the pool that take no new run", drained),
    ]
}

/// Waiting for a worker, or for its stack's lock or dependencies to allow it.
fn is_pending(run: &RunRecord) -> bool {
    run.worker_id.is_none()
        && matches!(run.state, RunState::Queued | RunState::Ready | RunState::Confirmed)
}
