//! The scheduler: a pure function from the runs, stack locks, stack dependencies and
//! workers of the world to the promotions and assignments to make now, and the reason
//! every other run waits.
//!
//! Invariants (property-tested below): a worker never receives a run while it holds one
//! or is drained; a run is assigned at most once; lock-taking runs of one stack never
//! overlap (nor start while the stack is fenced, `schedule_fenced`, unit-tested); a
//! lock-taking run never starts while a stack it depends on has one
//! unfinished; and no run waits while an idle, undrained worker that may take it is left
//! unassigned.

use std::collections::{HashMap, HashSet};

use crate::dependencies::DependencyGraph;
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
    /// A proposed run that drift detection triggered: the lowest class.
    pub drift: bool,
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

/// The workers one pool offers a scheduling pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolWorkers {
    /// Idle, undrained workers, in the order they receive runs. Listing as many as the
    /// pool's runs can use (see [`worker_demand`]) is enough.
    pub idle: Vec<WorkerId>,
    /// Every connected worker, busy and drained ones included.
    pub connected: usize,
    pub drained: usize,
}

/// The workers of every pool, as a scheduling pass sees them. Built from per-pool counts
/// and a bounded list of idle workers, so that a pass costs the same with ten workers or
/// ten thousand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerAvailability {
    pools: HashMap<PoolId, PoolWorkers>,
}

impl WorkerAvailability {
    /// The availability of a complete list of workers.
    pub fn of(workers: &[WorkerSnapshot]) -> Self {
        let mut availability = Self::default();
        for worker in workers {
            let pool = availability.pools.entry(worker.pool_id).or_default();
            pool.connected += 1;
            pool.drained += usize::from(worker.drained);
            if !worker.busy && !worker.drained {
                pool.idle.push(worker.id);
            }
        }
        availability
    }

    pub fn insert(&mut self, pool_id: PoolId, workers: PoolWorkers) {
        self.pools.insert(pool_id, workers);
    }

    pub fn pool(&self, pool_id: PoolId) -> Option<&PoolWorkers> {
        self.pools.get(&pool_id)
    }
}

/// How many runs of each pool may want a worker in the next pass: an upper bound on the
/// idle workers worth loading.
pub fn worker_demand(runs: &[RunSnapshot]) -> HashMap<PoolId, usize> {
    let mut demand = HashMap::new();
    for run in runs.iter().filter(|run| run.worker_id.is_none()) {
        if run.state == RunState::Queued || run.state.wants_worker() {
            *demand.entry(run.pool_id).or_default() += 1;
        }
    }
    demand
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
    /// The stack's last lock holder ended while its worker may still be executing it (its
    /// launcher was lost, or it was failed under it): the lock stays taken until `until`.
    StackFenced { run: RunId, until: Timestamp },
    /// A stack this one depends on has a tracked run or task that has not ended.
    Dependency { stack: StackId, run: RunId },
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
/// then runs that block their stack, then proposed runs, then drift detection; first in,
/// first out within a class.
pub fn queue_order_key(run: &RunSnapshot) -> (bool, u8, Timestamp, RunId) {
    let class = match (run.run_type.takes_stack_lock(), run.drift) {
        (true, _) => 0,
        (false, false) => 1,
        (false, true) => 2,
    };
    (!run.prioritized, class, run.queued_at, run.id)
}

/// Decides what to do now. `runs` holds every run that has not ended; `workers` the
/// connected workers of every pool. Pure and deterministic: the same input gives the same
/// decision.
pub fn schedule(
    runs: &[RunSnapshot],
    workers: &WorkerAvailability,
    dependencies: &DependencyGraph,
) -> Decision {
    schedule_fenced(runs, workers, dependencies, &HashMap::new())
}

/// A stack's lock kept taken after its holder ended: `run`'s worker may still be
/// executing it until `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockFence {
    pub run: RunId,
    pub until: Timestamp,
}

/// [`schedule`], with the stacks whose lock is fenced now: no lock-taking run of theirs
/// starts, as if the fenced run still held the lock. Runs that take no lock are not
/// held back.
pub fn schedule_fenced(
    runs: &[RunSnapshot],
    workers: &WorkerAvailability,
    dependencies: &DependencyGraph,
    fences: &HashMap<StackId, LockFence>,
) -> Decision {
    let mut decision = Decision::default();

    // The oldest unfinished lock-taking run of each stack: what a downstream run waits for.
    let mut unfinished: HashMap<StackId, &RunSnapshot> = HashMap::new();
    for run in runs.iter().filter(|run| run.run_type.takes_stack_lock() && !run.state.is_terminal())
    {
        let entry = unfinished.entry(run.stack_id).or_insert(run);
        if (run.queued_at, run.id) < (entry.queued_at, entry.id) {
            *entry = run;
        }
    }

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
            if let Some(fence) = fences.get(&run.stack_id) {
                lock_waits
                    .push((run, WaitReason::StackFenced { run: fence.run, until: fence.until }));
                continue;
            }
            let blocking_upstream = dependencies
                .all_upstream(run.stack_id)
                .into_iter()
                .filter_map(|stack| unfinished.get(&stack))
                .min_by_key(|upstream| (upstream.queued_at, upstream.id));
            if let Some(upstream) = blocking_upstream {
                lock_waits.push((
                    run,
                    WaitReason::Dependency { stack: upstream.stack_id, run: upstream.id },
                ));
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

    // How many of each pool's idle workers this pass has handed out.
    let mut taken: HashMap<PoolId, usize> = HashMap::new();
    let mut waits = Vec::new();
    for run in candidates {
        let pool = workers.pool(run.pool_id);
        let next = taken.entry(run.pool_id).or_default();
        match pool.and_then(|pool| pool.idle.get(*next)) {
            Some(worker_id) => {
                *next += 1;
                decision.assignments.push(Assignment { run_id: run.id, worker_id: *worker_id });
            }
            None => waits.push((run, worker_shortage(pool))),
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

fn worker_shortage(pool: Option<&PoolWorkers>) -> WaitReason {
    match pool {
        None => WaitReason::NoWorkers,
        Some(pool) if pool.connected == 0 => WaitReason::NoWorkers,
        Some(pool) if pool.drained == pool.connected => WaitReason::AllWorkersDrained,
        Some(_) => WaitReason::NoIdleWorker,
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
            drift: false,
            queued_at: Timestamp::from_unix_millis(id as i64),
        }
    }

    /// The scheduler over a complete worker list (shadows the glob-imported one).
    fn schedule(
        runs: &[RunSnapshot],
        workers: &[WorkerSnapshot],
        dependencies: &DependencyGraph,
    ) -> Decision {
        super::schedule(runs, &WorkerAvailability::of(workers), dependencies)
    }

    fn no_dependencies() -> DependencyGraph {
        DependencyGraph::default()
    }

    fn worker(id: u128) -> WorkerSnapshot {
        WorkerSnapshot { id: WorkerId::from_u128(id), pool_id: POOL, drained: false, busy: false }
    }

    fn assigned(decision: &Decision) -> Vec<(u128, u128)> {
        decision.assignments.iter().map(|a| (a.run_id.to_u128(), a.worker_id.to_u128())).collect()
    }

    #[test]
    fn a_queued_tracked_run_is_promoted_and_assigned_in_one_pass() {
        let decision = schedule(
            &[run(1, 1, RunType::Tracked, RunState::Queued)],
            &[worker(9)],
            &no_dependencies(),
        );
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
        let decision = schedule(&runs, &[worker(9)], &no_dependencies());
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
    fn a_fenced_stacks_lock_takers_wait_for_the_fence_and_its_other_runs_do_not() {
        let runs = [
            run(2, 1, RunType::Tracked, RunState::Queued),
            run(3, 1, RunType::Proposed, RunState::Queued),
            run(4, 1, RunType::Task, RunState::Queued),
            run(5, 2, RunType::Tracked, RunState::Queued),
        ];
        let fence = LockFence { run: RunId::from_u128(1), until: Timestamp::from_unix_millis(60) };
        let fences = HashMap::from([(StackId::from_u128(1), fence)]);
        let workers = WorkerAvailability::of(&[worker(8), worker(9)]);
        let decision = schedule_fenced(&runs, &workers, &no_dependencies(), &fences);
        let promoted: Vec<_> = decision.promotions.iter().map(|id| id.to_u128()).collect();
        assert_eq!(promoted, [3, 5], "the proposed run and the other stack's run go on");
        assert_eq!(assigned(&decision), [(5, 8), (3, 9)]);
        let fenced = WaitReason::StackFenced { run: fence.run, until: fence.until };
        assert_eq!(
            decision.waiting,
            [
                Waiting { run_id: RunId::from_u128(2), reason: fenced },
                Waiting { run_id: RunId::from_u128(4), reason: fenced },
            ]
        );

        // Once the fence has passed (the caller no longer lists it), the oldest goes.
        let decision = schedule_fenced(&runs, &workers, &no_dependencies(), &HashMap::new());
        assert!(decision.promotions.contains(&RunId::from_u128(2)));
        assert!(!decision.promotions.contains(&RunId::from_u128(4)));
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
        let decision = schedule(&runs, &[worker(8), worker(9)], &no_dependencies());
        assert_eq!(assigned(&decision), [(4, 8), (2, 9)]);
        let waiting: Vec<_> = decision.waiting.iter().map(|w| w.run_id).collect();
        assert_eq!(waiting, [RunId::from_u128(3), RunId::from_u128(1)]);
        assert!(decision.waiting.iter().all(|w| w.reason == WaitReason::NoIdleWorker));
    }

    #[test]
    fn every_waiting_run_says_why() {
        let mut drained = worker(9);
        drained.drained = true;
        let decision = schedule(
            &[run(1, 1, RunType::Tracked, RunState::Ready)],
            &[drained],
            &no_dependencies(),
        );
        assert_eq!(decision.waiting[0].reason, WaitReason::AllWorkersDrained);

        let decision =
            schedule(&[run(1, 1, RunType::Tracked, RunState::Ready)], &[], &no_dependencies());
        assert_eq!(decision.waiting[0].reason, WaitReason::NoWorkers);

        let mut elsewhere = worker(9);
        elsewhere.pool_id = OTHER_POOL;
        let decision = schedule(
            &[run(1, 1, RunType::Tracked, RunState::Ready)],
            &[elsewhere],
            &no_dependencies(),
        );
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
        let decision = schedule(&[executing, handed], &[busy, busy_too], &no_dependencies());
        assert_eq!(decision, Decision::default());
    }

    #[test]
    fn a_downstream_run_waits_for_its_upstream_stacks_unfinished_run() {
        // Stack 2 depends on stack 1, stack 3 on stack 2.
        let graph = DependencyGraph::new([
            (StackId::from_u128(2), StackId::from_u128(1)),
            (StackId::from_u128(3), StackId::from_u128(2)),
        ]);
        let runs = [
            run(1, 1, RunType::Tracked, RunState::Planning),
            run(2, 3, RunType::Tracked, RunState::Queued),
            run(3, 2, RunType::Proposed, RunState::Queued),
        ];
        let mut busy = worker(8);
        busy.busy = true;
        let decision = schedule(&runs, &[busy, worker(9)], &graph);
        assert_eq!(assigned(&decision), [(3, 9)], "proposed runs do not wait on dependencies");
        assert_eq!(
            decision.waiting,
            [Waiting {
                run_id: RunId::from_u128(2),
                reason: WaitReason::Dependency {
                    stack: StackId::from_u128(1),
                    run: RunId::from_u128(1)
                }
            }]
        );
        let finished = [run(2, 3, RunType::Tracked, RunState::Queued)];
        assert_eq!(assigned(&schedule(&finished, &[worker(9)], &graph)), [(2, 9)]);
    }

    #[test]
    fn drift_detection_comes_after_proposed_runs() {
        let mut drift = run(1, 1, RunType::Proposed, RunState::Ready);
        drift.drift = true;
        let runs = [drift, run(2, 2, RunType::Proposed, RunState::Ready)];
        let decision = schedule(&runs, &[worker(9)], &no_dependencies());
        assert_eq!(assigned(&decision), [(2, 9)]);
    }

    fn arb_world() -> impl Strategy<Value = (Vec<RunSnapshot>, Vec<WorkerSnapshot>, DependencyGraph)>
    {
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
        let run = (0u128..4, 0u128..2, types, states, any::<bool>(), any::<bool>());
        let worker = (0u128..2, any::<bool>());
        // Edges from a higher stack to a lower one: always acyclic.
        let edge =
            (1u128..4, 0u128..3).prop_filter("downstream above upstream", |(down, up)| down > up);
        (
            prop::collection::vec(run, 0..14),
            prop::collection::vec(worker, 0..6),
            prop::collection::vec(edge, 0..4),
        )
            .prop_map(|(runs, workers, edges)| {
                let graph = DependencyGraph::new(
                    edges
                        .into_iter()
                        .map(|(down, up)| (StackId::from_u128(down), StackId::from_u128(up))),
                );
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
                for (i, (stack, pool, run_type, mut state, prioritized, drift)) in
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
                        drift: drift && run_type == RunType::Proposed,
                        queued_at: Timestamp::from_unix_millis(i as i64),
                    });
                }
                (snapshots, workers, graph)
            })
    }

    proptest! {
        #[test]
        fn scheduler_invariants_hold((runs, workers, graph) in arb_world()) {
            let decision = schedule(&runs, &workers, &graph);
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

            // A lock-taking run starts only when no stack it depends on has one unfinished.
            for promoted_run in runs.iter().filter(|r| promoted.contains(&r.id) && r.run_type.takes_stack_lock()) {
                let upstream = graph.all_upstream(promoted_run.stack_id);
                let blocked = runs.iter().any(|other| {
                    upstream.contains(&other.stack_id) && other.run_type.takes_stack_lock() && !other.state.is_terminal()
                });
                prop_assert!(!blocked, "run {} started before its upstream stack's run ended", promoted_run.id);
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
                if matches!(wait.reason, WaitReason::StackLocked { .. } | WaitReason::Dependency { .. }) {
                    continue;
                }
                let run = by_id[&wait.run_id];
                let free = workers.iter().any(|w| {
                    !w.busy && !w.drained && !used_workers.contains(&w.id)
                        && w.pool_id == run.pool_id
                });
                prop_assert!(!free, "run {} waits beside an idle worker", run.id);
            }

            // Workers go in queue order: prioritized runs, then blocking runs, proposed
            // runs, drift detection; first in, first out within each. No run of a pool
            // left waiting for a worker comes before one of that pool that got one.
            let short_of_workers: Vec<&RunSnapshot> = decision
                .waiting
                .iter()
                .filter(|w| !matches!(w.reason, WaitReason::StackLocked { .. } | WaitReason::Dependency { .. }))
                .map(|w| by_id[&w.run_id])
                .collect();
            for assignment in &decision.assignments {
                let placed = by_id[&assignment.run_id];
                for left in short_of_workers.iter().filter(|left| left.pool_id == placed.pool_id) {
                    prop_assert!(
                        queue_order_key(placed) < queue_order_key(left),
                        "run {} got a worker before run {}, which comes first", placed.id, left.id
                    );
                }
            }
            let keys: Vec<_> = short_of_workers.iter().map(|run| queue_order_key(run)).collect();
            prop_assert!(keys.windows(2).all(|pair| pair[0] <= pair[1]), "waiting runs out of queue order");
        }

        #[test]
        fn listing_only_as_many_idle_workers_as_the_demand_decides_the_same(
            (runs, workers, graph) in arb_world()
        ) {
            let complete = WorkerAvailability::of(&workers);
            let demand = worker_demand(&runs);
            let mut bounded = complete.clone();
            for (pool_id, pool) in &mut bounded.pools {
                pool.idle.truncate(demand.get(pool_id).copied().unwrap_or(0));
            }
            prop_assert_eq!(
                super::schedule(&runs, &complete, &graph),
                super::schedule(&runs, &bounded, &graph)
            );
        }
    }
}
