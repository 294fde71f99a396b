//! The effects loop: carries out what committed changes left in the store's outbox (a
//! run's end reaching the stacks that depend on its stack and its stack's drift, blobs
//! nothing names any more),
//! in every server process. The change and its effect are recorded in one transaction
//! (`RunChange::effects`), so a crash between the change and its effect delays the effect
//! and loses nothing: the next process to claim it carries it out. Each effect is claimed
//! by one process at a time (`Store::claim_effects`), tried again with backoff after a
//! failure, and deleted once done; carrying one out twice does what once does.

use std::time::Duration;

use gantry_domain::dependencies::DependencyGraph;
use gantry_domain::scheduler::{Decision, WaitReason, Waiting};
use gantry_domain::{RunId, RunState, StackId, Timestamp};
use gantry_store::{Effect, PendingEffectRecord, RunChange, RunRecord};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::error::ApiError;
use crate::state::{AppState, now};

/// How often the loop looks for effects without a wake-up: what another process recorded
/// and could not carry out (it crashed), and retries that fell due.
const POLL_INTERVAL: Duration = Duration::from_secs(5);
/// How long a claim holds: far longer than an effect takes; a process that dies holding
/// one delays it by this much at most.
const LEASE: Duration = Duration::from_secs(60);
/// Effects claimed at a time.
const BATCH: u32 = 32;
/// The first retry's delay, doubled with each failure in a row up to `MAX_RETRY_DELAY`.
const FIRST_RETRY_DELAY: Duration = Duration::from_secs(2);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(600);
/// From this many failed tries on, an effect is reported as stuck.
const STUCK_AFTER: u32 = 5;

pub(crate) async fn run_effects_loop(state: AppState) {
    loop {
        // First thing at start: what a crash left pending is carried out before new work.
        if let Err(error) = carry_out_due(&state).await {
            tracing::warn!(%error, "carrying out pending effects failed; retrying on the next interval");
        }
        tokio::select! {
            () = state.events.effects_recorded() => {}
            () = tokio::time::sleep(POLL_INTERVAL) => {}
            () = state.shutdown.cancelled() => return,
        }
    }
}

/// Claims and carries out every effect due now; returns how many were carried out.
pub(crate) async fn carry_out_due(state: &AppState) -> Result<usize, ApiError> {
    let mut done = 0;
    loop {
        let claimed = state.store.claim_effects(now(), LEASE, BATCH).await?;
        if claimed.is_empty() {
            return Ok(done);
        }
        for pending in claimed {
            if carry_out_claimed(state, &pending).await? {
                done += 1;
            }
        }
    }
}

/// Carries out one claimed effect; returns whether it was done, or postpones it.
async fn carry_out_claimed(
    state: &AppState,
    pending: &PendingEffectRecord,
) -> Result<bool, ApiError> {
    let effect = &pending.effect;
    match carry_out(state, effect).await {
        Ok(()) => {
            state.store.complete_effect(effect).await?;
            if pending.attempts > 1 {
                tracing::info!(%effect, attempts = pending.attempts, "a postponed effect was carried out");
            }
            if matches!(effect, Effect::RunEnded { .. }) {
                // The runs the scheduler held back for it may start (or were skipped).
                state.events.request_scheduling();
            }
            Ok(true)
        }
        Err(error) => {
            let delay = retry_delay(pending.attempts);
            let due = now().plus(delay);
            state.store.postpone_effect(effect, due, &error.to_string()).await?;
            let retry_in = humantime::format_duration(delay).to_string();
            if pending.attempts >= STUCK_AFTER {
                tracing::error!(
                    %effect,
                    %error,
                    attempts = pending.attempts,
                    pending_for = %crate::lifecycle::ago(pending.created_at),
                    retry_in,
                    "an effect is stuck: it keeps failing (gantry_pending_effects_failing counts such effects)"
                );
            } else {
                tracing::warn!(%effect, %error, attempts = pending.attempts, retry_in, "an effect failed; it will be tried again");
            }
            Ok(false)
        }
    }
}

/// The delay after the `attempts`-th failed try in a row.
fn retry_delay(attempts: u32) -> Duration {
    FIRST_RETRY_DELAY.saturating_mul(1 << attempts.saturating_sub(1).min(16)).min(MAX_RETRY_DELAY)
}

async fn carry_out(state: &AppState, effect: &Effect) -> Result<(), ApiError> {
    match effect {
        Effect::RunEnded { run_id } => match state.store.get_run(*run_id).await? {
            Some(run) => {
                crate::cascade::after_run_ended(state, &run).await?;
                crate::drift::after_run_ended(state, &run).await
            }
            None => Ok(()),
        },
        Effect::DeleteBlob { key } => Ok(state.blobs.delete(key).await?),
    }
}

/// Holds back the promotions of lock-taking runs that depend, directly or through
/// others, on a stack whose ended run still has its cascade pending: that run's end may
/// skip them, and a crash must not let them start in the meantime. Pure: the caller reads
/// `pending_ends` (`pending_run_ends`).
fn hold_for_pending_ends(
    decision: &mut Decision,
    runs: &[RunRecord],
    dependencies: &DependencyGraph,
    pending_ends: &[(StackId, RunId)],
) {
    if pending_ends.is_empty() {
        return;
    }
    let mut held = Vec::new();
    decision.promotions.retain(|promoted| {
        let Some(run) = runs.iter().find(|run| run.id == *promoted) else { return true };
        if !run.run_type.takes_stack_lock() {
            return true;
        }
        let upstream = dependencies.all_upstream(run.stack_id);
        match pending_ends.iter().find(|(stack, _)| upstream.contains(stack)) {
            Some(&(stack, ended)) => {
                held.push(Waiting {
                    run_id: run.id,
                    reason: WaitReason::Dependency { stack, run: ended },
                });
                false
            }
            None => true,
        }
    });
    let is_held = |run_id: RunId| held.iter().any(|waiting| waiting.run_id == run_id);
    decision.assignments.retain(|assignment| !is_held(assignment.run_id));
    // A promoted run left without a worker waits for one; held, it waits for this.
    decision.waiting.retain(|waiting| !is_held(waiting.run_id));
    decision.waiting.extend(held);
}

/// `hold_for_pending_ends` over the effects pending now; reads nothing when no
/// lock-taking run waits in the queue.
pub(crate) async fn hold_back(
    state: &AppState,
    mut decision: Decision,
    runs: &[RunRecord],
    dependencies: &DependencyGraph,
) -> Result<Decision, ApiError> {
    let queued_lock_takers =
        runs.iter().any(|run| run.state == RunState::Queued && run.run_type.takes_stack_lock());
    if queued_lock_takers {
        let ends = pending_run_ends(state).await?;
        hold_for_pending_ends(&mut decision, runs, dependencies, &ends);
    }
    Ok(decision)
}

/// The ended runs whose cascade is still pending, with their stacks.
async fn pending_run_ends(state: &AppState) -> Result<Vec<(StackId, RunId)>, ApiError> {
    let mut ends = Vec::new();
    for pending in state.store.pending_effects().await? {
        if let Effect::RunEnded { run_id } = pending.effect
            && let Some(run) = state.store.get_run(run_id).await?
            && run.state.is_terminal()
            // A drift check's end holds nothing back.
            && run_end_cascades(&run, run.state)
        {
            ends.push((run.stack_id, run.id));
        }
    }
    Ok(ends)
}

/// Adds to the change that ends `run` (to `to`) what must follow it: the stacks that
/// depend on its stack react, and the workspace kept for its apply goes (ciphertext or
/// not) once no row names it.
pub(crate) fn record_end(run: &RunRecord, to: RunState, change: &mut RunChange) {
    if run_end_cascades(run, to) || crate::drift::run_end_tells(run, to) {
        change.effects.push(Effect::RunEnded { run_id: run.id });
    }
    change.release_blobs.push(crate::agent::WORKSPACE.to_owned());
}

/// Whether a change to `to` leaves an effect for the stacks that depend on the run's
/// stack: a finished tracked run triggers them, a failed or stopped lock-taking run skips
/// their waiting runs.
fn run_end_cascades(run: &RunRecord, to: RunState) -> bool {
    match to {
        RunState::Finished => run.run_type == gantry_domain::RunType::Tracked,
        RunState::Failed | RunState::Stopped => run.run_type.takes_stack_lock(),
        _ => false,
    }
}

/// Adds the outbox's gauges: how many effects wait, how many of them failed at least
/// once, and the age of the oldest.
pub(crate) fn register_metrics(
    registry: &mut Registry,
    pending: &[PendingEffectRecord],
    at: Timestamp,
) {
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let waiting = Gauge::<i64>::default();
    waiting.set(count(pending.len()));
    let failing = Gauge::<i64>::default();
    failing.set(count(pending.iter().filter(|p| p.last_error.is_some()).count()));
    let oldest = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    let oldest_at = pending.iter().map(|p| p.created_at).min();
    oldest.set(oldest_at.map_or(0.0, |created| at.since(created).as_secs_f64()));
    registry.register(
        "gantry_pending_effects",
        "Effects of committed changes (dependency cascades, blob deletions) not carried out yet",
        waiting,
    );
    registry.register(
        "gantry_pending_effects_failing",
        "Pending effects whose last try failed: they are tried again with backoff",
        failing,
    );
    registry.register_with_unit(
        "gantry_oldest_pending_effect_age",
        "How long the oldest pending effect has waited",
        Unit::Seconds,
        oldest,
    );
}

#[cfg(test)]
mod crash_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_a_ceiling() {
        assert_eq!(retry_delay(1), Duration::from_secs(2));
        assert_eq!(retry_delay(2), Duration::from_secs(4));
        assert_eq!(retry_delay(5), Duration::from_secs(32));
        assert_eq!(retry_delay(9), Duration::from_secs(512));
        assert_eq!(retry_delay(10), MAX_RETRY_DELAY);
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY_DELAY);
    }
}
