//! Liveness: workers whose launcher stopped heart-beating are removed and their runs
//! failed ("worker lost") or handed back to the queue, so no worker stays BUSY forever;
//! an executing run whose worker is gone is failed too; expired sessions are deleted.
//! Once per interval across every server process sharing the store.
//!
//! A lost run fails as soon as its launcher is found dead, but one that held its stack's
//! lock leaves the stack fenced (`RunChange::fence_stack_until`) until its worker has
//! surely stopped: lease + grace after the launcher's last heartbeat
//! (`gantry_proto::lease`). The run's failure and the stack's lock are thus separate:
//! the first is fast, the second waits for the fencing guarantee.

use std::collections::HashSet;

use gantry_domain::{Timestamp, WorkerId};
use gantry_store::RunRecord;

use crate::error::ApiError;
use crate::lifecycle;
use crate::state::{AppState, now};

pub(crate) async fn run_sweeper(state: AppState) {
    loop {
        // Heartbeats this process could not store while its database was away would
        // make live launchers look dead: judge only once it has answered for a full
        // worker timeout (after the start too).
        if has_had_its_database(&state).await
            && let Err(error) = sweep_once(&state).await
        {
            if let ApiError::Store(error) = &error {
                state.database.observe(error);
            }
            tracing::warn!(%error, "liveness sweep failed; retrying on the next interval");
        }
        tokio::select! {
            () = tokio::time::sleep(state.timings.sweep_interval) => {}
            () = state.shutdown.cancelled() => return,
        }
    }
}

/// Asks the database, and says whether it has answered without a break for a full
/// worker timeout (see `database_watch`).
async fn has_had_its_database(state: &AppState) -> bool {
    let asked_at = std::time::Instant::now();
    match tokio::time::timeout(state.timings.sweep_interval, state.store.ping()).await {
        Ok(Ok(())) => state.database.answered(asked_at),
        Ok(Err(error)) => state.database.observe(&error),
        Err(_) => state.database.failed(),
    }
    state.database.answered_for(state.timings.worker_timeout, std::time::Instant::now())
}

/// One sweep, unless another server process sharing the store swept this interval.
pub(crate) async fn sweep_once(state: &AppState) -> Result<(), ApiError> {
    let now = now();
    // Claimed a little short of the interval, so that timer drift never skips one.
    let every = state.timings.sweep_interval.mul_f64(0.9);
    if !state.store.claim_periodic("liveness-sweep", every, now).await? {
        state.events.forget_idle_launchers();
        return Ok(());
    }
    let workers = state.store.list_workers(None).await?;
    let stale: Vec<_> = workers
        .iter()
        .filter(|worker| now.since(worker.last_seen_at) > state.timings.worker_timeout)
        .collect();
    for worker in &stale {
        let Some(run_id) = worker.current_run_id else { continue };
        let Some(run) = state.store.get_run(run_id).await? else { continue };
        if run.worker_id != Some(worker.id) || run.state.is_terminal() {
            continue;
        }
        let outcome = if run.state.wants_worker() {
            lifecycle::unassign(state, &run).await
        } else {
            let reason = format!(
                "worker lost: the launcher on {} stopped sending heartbeats {} ago",
                worker.hostname,
                lifecycle::ago(worker.last_seen_at)
            );
            // Its worker was granted a lease from a heartbeat sent no later than the
            // server saw it: by this time it has stopped the tool.
            let fence = worker.last_seen_at.plus(state.timings.lock_fence());
            lifecycle::fail_fencing(state, &run, &reason, fence).await
        };
        if let Err(error) = outcome
            && !lifecycle::lost_race(&error)
        {
            return Err(error);
        }
    }
    let stale_ids: Vec<WorkerId> = stale.iter().map(|worker| worker.id).collect();
    // What was read above may be out of date: a worker that heart-beat or took a run
    // since is kept by the store, which checks both in the deleting statement.
    let seen_before = Timestamp::from_unix_millis(now.unix_millis().saturating_sub(
        i64::try_from(state.timings.worker_timeout.as_millis()).unwrap_or(i64::MAX),
    ));
    let removed = if stale_ids.is_empty() {
        Vec::new()
    } else {
        state.store.delete_dead_workers(&stale_ids, seen_before).await?
    };
    if !removed.is_empty() {
        tracing::warn!(
            workers = removed.len(),
            "removed workers whose launcher stopped heart-beating"
        );
        state.events.request_scheduling();
        let pools: HashSet<_> =
            stale.iter().filter(|w| removed.contains(&w.id)).map(|w| w.pool_id).collect();
        for pool_id in pools {
            state.events.pool_workers_changed(pool_id);
        }
    }
    let present: HashSet<WorkerId> =
        workers.iter().map(|worker| worker.id).filter(|id| !removed.contains(id)).collect();
    fail_runs_of_gone_workers(state, &present).await?;
    let launchers: HashSet<_> = workers
        .iter()
        .filter(|worker| present.contains(&worker.id))
        .map(|worker| worker.launcher_id)
        .collect();
    state.unlisted_runs.retain_launchers(|launcher_id| launchers.contains(&launcher_id));

    state.store.delete_expired_sessions(now).await?;
    state.events.forget_idle_launchers();
    Ok(())
}

/// Reconciles runs with workers: an executing run whose worker no longer exists (removed
/// by its launcher, or by an older server) fails, and one handed to such a worker goes
/// back to the queue. `present` are the workers known to exist; the others are looked up
/// again before anything is done, since one may have registered since.
async fn fail_runs_of_gone_workers(
    state: &AppState,
    present: &HashSet<WorkerId>,
) -> Result<(), ApiError> {
    let orphans: Vec<RunRecord> = state
        .store
        .active_runs()
        .await?
        .into_iter()
        .filter(|run| run.state.occupies_worker() || run.worker_id.is_some())
        .filter(|run| run.worker_id.is_none_or(|worker_id| !present.contains(&worker_id)))
        .collect();
    for run in orphans {
        if let Some(worker_id) = run.worker_id
            && state.store.get_worker(worker_id).await?.is_some()
        {
            continue;
        }
        let outcome = if run.state.wants_worker() {
            lifecycle::unassign(state, &run).await
        } else if run.state.occupies_worker() {
            // Nothing says when its worker last lived: fenced for a whole lease from now.
            let fence = now().plus(state.timings.lock_fence());
            let reason = "worker gone: the worker executing this run no longer exists";
            lifecycle::fail_fencing(state, &run, reason, fence).await
        } else {
            continue;
        };
        if let Err(error) = outcome
            && !lifecycle::lost_race(&error)
        {
            return Err(error);
        }
    }
    Ok(())
}
