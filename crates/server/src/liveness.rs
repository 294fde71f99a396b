//! Liveness: workers whose launcher stopped heart-beating are removed and their runs
//! failed ("worker lost") or handed back to the queue, so no worker stays BUSY forever;
//! expired sessions are deleted. Once per interval across every server process sharing
//! the store. A worker whose run holds its stack's lock is kept, with its run, until
//! the lock fence (worker lease + grace, `gantry_proto::lease`) has passed too.

use gantry_domain::{Timestamp, WorkerId};

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
    let mut fenced = Vec::new();
    for worker in &stale {
        let Some(run_id) = worker.current_run_id else { continue };
        let Some(run) = state.store.get_run(run_id).await? else { continue };
        if run.worker_id != Some(worker.id) || run.state.is_terminal() {
            continue;
        }
        // Fencing: the run holds its stack's lock until its worker has surely stopped
        // (lease + grace after the launcher's last heartbeat): failing it sooner would
        // let the next lock-taking run apply while this one still may.
        if !run.state.wants_worker()
            && run.run_type.takes_stack_lock()
            && now.since(worker.last_seen_at) <= state.timings.lock_fence()
        {
            fenced.push(worker.id);
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
            lifecycle::fail(state, &run, &reason).await
        };
        if let Err(error) = outcome
            && !lifecycle::lost_race(&error)
        {
            return Err(error);
        }
    }
    let stale: Vec<_> = stale.into_iter().filter(|worker| !fenced.contains(&worker.id)).collect();
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
        let pools: std::collections::HashSet<_> =
            stale.iter().filter(|w| removed.contains(&w.id)).map(|w| w.pool_id).collect();
        for pool_id in pools {
            state.events.pool_workers_changed(pool_id);
        }
    }

    state.store.delete_expired_sessions(now).await?;
    state.events.forget_idle_launchers();
    Ok(())
}
