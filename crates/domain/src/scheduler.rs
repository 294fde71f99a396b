//! The scheduler: a pure function from the runs, stack locks and workers of the world to
//! the promotions and assignments to make now, and the reason every other run waits.
//!
//! Invariants (property-tested below): a worker never receives a run while it holds one
//! or is drained; a run is assigned at most once; lock-taking runs of one stack never
//! overlap; and no run waits while an idle, undrained worker that may take it is left
//! unassigned.

use std::collections::{HashMap, HashSet};

use crate::{PoolId, RunId, RunState, RunType, StackId, Timestamp, WorkerId};

/// What the scheduler needs to know about a run that has not ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSnapshot {
    pub id: RunId,
    pub stack_id: StackId,
    pub pool_id: PoolId,
    pub run_type: RunType,
    pub state: RunState,
    /// The worker the run was handed to, if any (it may not have acknowledged yet).
    pub worker_id: Option<WorkerId>,
    /// A user moved the run to the front of its pool's queue.
    pub prioritized: bool,
    pub queued_at: Timestamp,
}

/// What the scheduler needs to know about a worker slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSnapshot {
    pub id: WorkerId,
    pub pool_id: PoolId,
    pub drained: bool,
    /// The worker holds a run.
    pub busy: bool,
}

/// A run handed to a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assignment {
    pub run_id: RunId,
    pub worker_id: WorkerId,
}

/// Why a run that has not started is still waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitReason {
    /// Another tracked run or task of the stack holds its lock.
    StackLocked { holder: RunId },
    /// Every worker of the pool that could take the run is busy.
    NoIdleWorker,
    /// The pool has workers, but every one of them is drained.
    AllWorkersDrained,
    /// No worker of the pool is connected.
    NoWorkers,
}

/// A run left waiting, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    pub run_id: RunId,
    pub reason: WaitReason,
}

/// The scheduler's decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Runs that leave `QUEUED` for `READY`.
    pub promotions: Vec<RunId>,
    pub assignments: Vec<Assignment>,
    /// Every run that has not started and was not assigned, in queue order.
    pub waiting: Vec<Waiting>,
}

/// The order in which runs of one pool get workers: manually prioritized runs first,
/// then runs that block their stack, then proposed runs; first in, first out within a
/// class.
pub fn queue_order_key(run: &RunSnapshot) -> (bool, u8, Timestamp, RunId) {
    let class = if run.run_type.takes_stack_lock() { 0 } else { 1 };
    (!run.prioritized, class, run.queued_at, run.id)
}

/// Decides what to do now. `runs` holds every run that has not ended; `workers` every
/// connected worker. Pure and deterministic: the same input gives the same decision.
pub fn schedule(runs: &[RunSnapshot], workers: &[WorkerSnapshot]) -> Decision {
    let mut decision = Decision::default();

    let mut lock_holders: HashMap<StackId, RunId> = runs
        .iter()
        .filter(|run| run.run_type.takes_stack_lock() && run.state.holds_stack_lock())
        .map(|run| (run.stack_id, run.id))
        .collect();

    let mut queued: Vec<&RunSnapshot> =
        runs.iter().filter(|run| run.state == RunState::Queued).collect();
    queued.sort_by_key(|run| (run.queued_at, run.id));
    let mut promoted = HashSet::new();
    let mut lock_waits = Vec::new();
    for run in queued {
        if run.run_type.takes_stack_lock() {
            if let Some(holder) = lock_holders.get(&run.stack_id) {
                lock_waits.push((run, WaitReason::StackLocked { holder: *holder }));
                continue;
            }
            lock_holders.insert(run.stack_id, run.id);
        }
        promoted.insert(run.id);
        decision.promotions.push(run.id);
    }

    let mut candidates: Vec<&RunSnapshot> = runs
        .iter()
        .filter(|run| run.worker_id.is_none())
        .filter(|run| run.state.wants_worker() || promoted.contains(&run.id))
        .collect();
    candidates.sort_by_key(|run| queue_order_key(run));

    let mut idle: Vec<&WorkerSnapshot> =
        workers.iter().filter(|worker| !worker.busy && !worker.drained).collect();
    let mut waits = Vec::new();
    for run in candidates {
        match idle.iter().position(|worker| worker.pool_id == run.pool_id) {
            Some(index) => {
                let worker = idle.remove(index);
                decision.assignments.push(Assignment { run_id: run.id, worker_id: worker.id });
            }
            None => waits.push((run, worker_shortage(run, workers))),
        }
    }

    waits.sort_by_key(|(run, _)| queue_order_key(run));
    lock_waits.sort_by_key(|(run, _)| queue_order_key(run));
    decision.waiting = waits
        .into_iter()
        .chain(lock_waits)
        .map(|(run, reason)| Waiting { run_id: run.id, reason })
        .collect();
    decision
}

fn worker_shortage(run: &RunSnapshot, workers: &[WorkerSnapshot]) -> WaitReason {
    let mut pool_workers = workers.iter().filter(|worker| worker.pool_id == run.pool_id).peekable();
    if pool_workers.peek().is_none() {
        WaitReason::NoWorkers
    } else if pool_workers.all(|worker| worker.drained) {
        WaitReason::AllWorkersDrained
    } else {
        WaitReason::NoIdleWorker
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const POOL: PoolId = PoolId::from_u128(1);
    const OTHER_POOL: PoolId = PoolId::from_u128(2);

    fn run(id: u128, stack: u128, run_type: RunType, state: RunState) -> RunSnapshot {
        RunSnapshot {
            id: RunId::from_u128(id),
            stack_id: StackId::from_u128(stack),
            pool_id: POOL,
            run_type,
            state,
            worker_id: None,
            prioritized: false,
            queued_at: Timestamp::from_unix_millis(id as i64),
        }
    }

    fn worker(id: u128) -> WorkerSnapshot {
        WorkerSnapshot { id: WorkerId::from_u128(id), pool_id: POOL, drained: false, busy: false }
    }

    fn assigned(decision: &Decision) -> Vec<(u128, u128)> {
        decision.assignments.iter().map(|a| (a.run_id.to_u128(), a.worker_id.to_u128())).collect()
    }

    #[test]
    fn a_queued_tracked_run_is_promoted_and_assigned_in_one_pass() {
        let decision = schedule(&[run(1, 1, RunType::Tracked, RunState::Queued)], &[worker(9)]);
        assert_eq!(decision.promotions, [RunId::from_u128(1)]);
        assert_eq!(assigned(&decision), [(1, 9)]);
        assert!(decision.waiting.is_empty());
    }

    #[test]
    fn a_second_tracked_run_waits_for_the_lock_holder_even_through_unconfirmed() {
        let runs = [
            run(1, 1, RunType::Tracked, RunState::Unconfirmed),
            run(2, 1, RunType::Tracked, RunState::Queued),
            run(3, 1, RunType::Proposed, RunState::Queued),
        ];
        let decision = schedule(&runs, &[worker(9)]);
        assert_eq!(decision.promotions, [RunId::from_u128(3)]);
        assert_eq!(assigned(&decision), [(3, 9)]);
        assert_eq!(
            decision.waiting,
            [Waiting {
                run_id: RunId::from_u128(2),
                reason: WaitReason::StackLocked { holder: RunId::from_u128(1) }
            }]
        );
    }

    #[test]
    fn blocking_runs_go_before_proposed_runs_and_prioritized_runs_before_all() {
        let mut prioritized = run(4, 4, RunType::Proposed, RunState::Ready);
        prioritized.prioritized = true;
        let runs = [
            run(1, 1, RunType::Proposed, RunState::Ready),
            run(2, 2, RunType::Tracked, RunState::Ready),
            run(3, 3, RunType::Tracked, RunState::Ready),
            prioritized,
        ];
        let decision = schedule(&runs, &[worker(8), worker(9)]);
        assert_eq!(assigned(&decision), [(4, 8), (2, 9)]);
        let waiting: Vec<_> = decision.waiting.iter().map(|w| w.run_id).collect();
        assert_eq!(waiting, [RunId::from_u128(3), RunId::from_u128(1)]);
        assert!(decision.waiting.iter().all(|w| w.reason == WaitReason::NoIdleWorker));
    }

    #[test]
    fn every_waiting_run_says_why() {
        let mut drained = worker(9);
        drained.drained = true;
        let decision = schedule(&[run(1, 1, RunType::Tracked, RunState::Ready)], &[drained]);
        assert_eq!(decision.waiting[0].reason, WaitReason::AllWorkersDrained);

        let decision = schedule(&[run(1, 1, RunType::Tracked, RunState::Ready)], &[]);
        assert_eq!(decision.waiting[0].reason, WaitReason::NoWorkers);

        let mut elsewhere = worker(9);
        elsewhere.pool_id = OTHER_POOL;
        let decision = schedule(&[run(1, 1, RunType::Tracked, RunState::Ready)], &[elsewhere]);
        assert_eq!(decision.waiting[0].reason, WaitReason::NoWorkers);
    }

    #[test]
    fn assigned_and_executing_runs_are_neither_reassigned_nor_reported_waiting() {
        let mut executing = run(1, 1, RunType::Tracked, RunState::Planning);
        executing.worker_id = Some(WorkerId::from_u128(9));
        let mut handed = run(2, 2, RunType::Proposed, RunState::Ready);
        handed.worker_id = Some(WorkerId::from_u128(8));
        let mut busy = worker(9);
        busy.busy = true;
        let mut busy_too = worker(8);
        busy_too.busy = true;
        let decision = schedule(&[executing, handed], &[busy, busy_too]);
        assert_eq!(decision, Decision::default());
    }

    fn arb_world() -> impl Strategy<Value = (Vec<RunSnapshot>, Vec<WorkerSnapshot>)> {
        let states = prop::sample::select(vec![
            RunState::Queued,
            RunState::Ready,
            RunState::Preparing,
            RunState::Planning,
            RunState::Unconfirmed,
            RunState::Confirmed,
            RunState::Applying,
        ]);
        let types = prop::sample::select(vec![RunType::Tracked, RunType::Proposed, RunType::Task]);
        let run = (0u128..4, 0u128..2, types, states, any::<bool>());
        let worker = (0u128..2, any::<bool>());
        (prop::collection::vec(run, 0..14), prop::collection::vec(worker, 0..6)).prop_map(
            |(runs, workers)| {
                let mut workers: Vec<WorkerSnapshot> = workers
                    .into_iter()
                    .enumerate()
                    .map(|(i, (pool, drained))| WorkerSnapshot {
                        id: WorkerId::from_u128(100 + i as u128),
                        pool_id: PoolId::from_u128(pool),
                        drained,
                        busy: false,
                    })
                    .collect();
                let mut lock_taken = HashSet::new();
                let mut snapshots = Vec::new();
                for (i, (stack, pool, run_type, mut state, prioritized)) in
                    runs.into_iter().enumerate()
                {
                    // A consistent world: one lock holder per stack, executing runs on
                    // a busy worker of their pool.
                    if run_type.takes_stack_lock()
                        && state.holds_stack_lock()
                        && !lock_taken.insert(stack)
                    {
                        state = RunState::Queued;
                    }
                    if run_type == RunType::Task && state == RunState::Unconfirmed {
                        state = RunState::Performing;
                    }
                    let mut worker_id = None;
                    if state.occupies_worker() {
                        match workers
                            .iter_mut()
                            .find(|w| !w.busy && w.pool_id == PoolId::from_u128(pool))
                        {
                            Some(worker) => {
                                worker.busy = true;
                                worker_id = Some(worker.id);
                            }
                            None => continue,
                        }
                    }
                    snapshots.push(RunSnapshot {
                        id: RunId::from_u128(i as u128 + 1),
                        stack_id: StackId::from_u128(stack),
                        pool_id: PoolId::from_u128(pool),
                        run_type,
                        state,
                        worker_id,
                        prioritized,
                        queued_at: Timestamp::from_unix_millis(i as i64),
                    });
                }
                (snapshots, workers)
            },
        )
    }

    proptest! {
        #[test]
        fn scheduler_invariants_hold((runs, workers) in arb_world()) {
            let decision = schedule(&runs, &workers);
            let by_id: HashMap<RunId, &RunSnapshot> = runs.iter().map(|r| (r.id, r)).collect();
            let worker_by_id: HashMap<WorkerId, &WorkerSnapshot> =
                workers.iter().map(|w| (w.id, w)).collect();

            // A worker never holds two runs; a run is never handed out twice.
            let mut used_workers = HashSet::new();
            let mut used_runs = HashSet::new();
            for assignment in &decision.assignments {
                let worker = worker_by_id[&assignment.worker_id];
                let run = by_id[&assignment.run_id];
                prop_assert!(used_workers.insert(worker.id));
                prop_assert!(used_runs.insert(run.id));
                prop_assert!(!worker.busy && !worker.drained);
                prop_assert_eq!(worker.pool_id, run.pool_id);
                prop_assert!(run.worker_id.is_none());
            }

            // Lock-taking runs of one stack never overlap after the decision.
            let promoted: HashSet<RunId> = decision.promotions.iter().copied().collect();
            let mut holders = HashSet::new();
            for run in &runs {
                let active = run.state.holds_stack_lock() || promoted.contains(&run.id);
                if run.run_type.takes_stack_lock() && active {
                    prop_assert!(holders.insert(run.stack_id), "two lock holders on one stack");
                }
            }

            // Every run that has not started and was not assigned says why it waits.
            let waiting: HashSet<RunId> = decision.waiting.iter().map(|w| w.run_id).collect();
            for run in &runs {
                let unstarted = run.worker_id.is_none()
                    && (run.state == RunState::Queued || run.state.wants_worker());
                let placed = used_runs.contains(&run.id);
                prop_assert_eq!(unstarted && !placed, waiting.contains(&run.id), "run {}", run.id);
            }

            // No run waits for a worker while one that may take it stays idle.
            for wait in &decision.waiting {
                if matches!(wait.reason, WaitReason::StackLocked { .. }) {
                    continue;
                }
                let run = by_id[&wait.run_id];
                let free = workers.iter().any(|w| {
                    !w.busy && !w.drained && !used_workers.contains(&w.id)
                        && w.pool_id == run.pool_id
                });
                prop_assert!(!free, "run {} waits beside an idle worker", run.id);
            }
        }
    }
}
