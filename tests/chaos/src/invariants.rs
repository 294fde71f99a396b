//! The invariant checker: what must hold after any mix of faults, judged from the host
//! journals (what executed, and when) and the server's records (how runs ended, their
//! logs, state versions, workers), and from what was left running on the machine.

use std::collections::BTreeMap;
use std::fmt;

use crate::journal::{JournalEntry, executions};
use crate::script::logged_executions;

/// States a run never leaves.
pub const TERMINAL_STATES: [&str; 6] =
    ["FINISHED", "FAILED", "STOPPED", "DISCARDED", "CANCELED", "SKIPPED"];

pub fn is_terminal(state: &str) -> bool {
    TERMINAL_STATES.contains(&state)
}

/// The kind of a run, as far as the checker cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// Takes the stack's lock; applies when its plan has changes.
    Tracked,
    /// Takes the stack's lock; executes its command.
    Task,
    /// Takes no lock and never executes the script.
    Proposed,
}

/// A run as the server recorded it, with its log as read back through the API.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub id: String,
    pub stack: String,
    pub kind: RunKind,
    pub state: String,
    /// Every state of its history, oldest first.
    pub history: Vec<String>,
    pub has_changes: Option<bool>,
    pub log: String,
}

/// One version of a stack's managed state, as `gantry stack state list` shows it
/// (orphaned versions included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateVersionRecord {
    pub version: u64,
    pub run_id: String,
    /// Stored by a run that no longer held the stack's lock: kept, not current.
    pub orphaned: bool,
}

/// A worker as the server lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRecord {
    pub id: String,
    pub busy: bool,
    pub current_run: Option<String>,
}

/// Everything observed once the faults stopped and the runs settled.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub runs: Vec<RunRecord>,
    /// Each stack's journal lines, in file order.
    pub journals: BTreeMap<String, Vec<JournalEntry>>,
    /// Stacks with managed state, and their versions.
    pub state_versions: BTreeMap<String, Vec<StateVersionRecord>>,
    pub workers: Vec<WorkerRecord>,
    /// Run containers still present after the launchers stopped.
    pub leftover_containers: Vec<String>,
    /// Run processes (workers, scripts) still alive after the launchers stopped.
    pub leftover_processes: Vec<String>,
}

/// The invariants, in the order they are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Invariant {
    EndedExactlyOnce,
    NoOverlappingLockHolders,
    LogsComplete,
    AppliedStateKept,
    NoBusyWorkerWithoutLiveRun,
    NothingLeftBehind,
}

impl Invariant {
    pub const ALL: [Invariant; 6] = [
        Invariant::EndedExactlyOnce,
        Invariant::NoOverlappingLockHolders,
        Invariant::LogsComplete,
        Invariant::AppliedStateKept,
        Invariant::NoBusyWorkerWithoutLiveRun,
        Invariant::NothingLeftBehind,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            Invariant::EndedExactlyOnce => "every run ended exactly once, executed at most once",
            Invariant::NoOverlappingLockHolders => {
                "no two lock-taking runs of one stack executed at overlapping times"
            }
            Invariant::LogsComplete => "every log complete, without gaps or duplicates",
            Invariant::AppliedStateKept => {
                "the state every FINISHED apply produced is one of the stack's versions"
            }
            Invariant::NoBusyWorkerWithoutLiveRun => "no BUSY worker without a live run",
            Invariant::NothingLeftBehind => "no container or process left behind",
        }
    }
}

/// One way an invariant did not hold, said precisely enough to find it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub invariant: Invariant,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.invariant, self.detail)
    }
}

/// What the checker counted besides violations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub runs: usize,
    pub runs_by_state: BTreeMap<String, usize>,
    pub executions_journaled: usize,
    /// Journaled executions whose nonce no run's log shows: a worker killed before it
    /// relayed the first line loses it, so these are counted, not judged.
    pub executions_unattributed: usize,
    pub numbered_log_lines: usize,
    pub state_versions: usize,
    pub orphaned_state_versions: usize,
}

/// Checks every invariant; returns the violations (none when all hold) and the tally.
pub fn check(observed: &Observed) -> (Vec<Violation>, Tally) {
    let mut violations = Vec::new();
    let mut tally = Tally { runs: observed.runs.len(), ..Tally::default() };
    let mut run_of_nonce: BTreeMap<String, &str> = BTreeMap::new();
    let violation = |invariant, detail: String| Violation { invariant, detail };

    for run in &observed.runs {
        *tally.runs_by_state.entry(run.state.clone()).or_default() += 1;
        let ended = run.history.iter().filter(|state| is_terminal(state)).count();
        if !is_terminal(&run.state) {
            violations.push(violation(
                Invariant::EndedExactlyOnce,
                format!("run {} of stack {} never ended: it is {}", run.id, run.stack, run.state),
            ));
        } else if ended != 1 || run.history.last().is_none_or(|last| !is_terminal(last)) {
            violations.push(violation(
                Invariant::EndedExactlyOnce,
                format!(
                    "run {} of stack {} ended {ended} times: history {}",
                    run.id,
                    run.stack,
                    run.history.join(" → ")
                ),
            ));
        }

        let logged = logged_executions(&run.log);
        if logged.len() > 1 {
            let nonces: Vec<&str> = logged.iter().map(|e| e.nonce.as_str()).collect();
            violations.push(violation(
                Invariant::EndedExactlyOnce,
                format!(
                    "run {} of stack {} executed {} times (executions {})",
                    run.id,
                    run.stack,
                    logged.len(),
                    nonces.join(", ")
                ),
            ));
        }
        for execution in &logged {
            if let Some(other) = run_of_nonce.insert(execution.nonce.clone(), &run.id) {
                violations.push(violation(
                    Invariant::EndedExactlyOnce,
                    format!(
                        "execution {} is in the logs of two runs, {other} and {}",
                        execution.nonce, run.id
                    ),
                ));
            }
            tally.numbered_log_lines += execution.numbers.len();
            let contiguous =
                execution.numbers.iter().enumerate().all(|(at, number)| *number as usize == at + 1);
            if !contiguous {
                violations.push(violation(
                    Invariant::LogsComplete,
                    format!(
                        "run {} ({}): the log of execution {} has gaps or duplicates: lines {}",
                        run.id,
                        run.state,
                        execution.nonce,
                        compact(&execution.numbers)
                    ),
                ));
            } else if run.state == "FINISHED" {
                let announced = execution.announced_lines;
                if announced != Some(execution.numbers.len() as u32) || !execution.ended {
                    violations.push(violation(
                        Invariant::LogsComplete,
                        format!(
                            "run {} FINISHED but the log of execution {} is cut: begin {}, {} of {} lines, end {}",
                            run.id,
                            execution.nonce,
                            if announced.is_some() { "present" } else { "missing" },
                            execution.numbers.len(),
                            announced.map_or("?".into(), |lines| lines.to_string()),
                            if execution.ended { "present" } else { "missing" },
                        ),
                    ));
                }
            }
        }
        let must_have_executed = run.state == "FINISHED"
            && match run.kind {
                RunKind::Task => true,
                RunKind::Tracked => run.has_changes == Some(true),
                RunKind::Proposed => false,
            };
        if must_have_executed && logged.is_empty() {
            violations.push(violation(
                Invariant::LogsComplete,
                format!(
                    "run {} of stack {} FINISHED but its log shows none of the script's output",
                    run.id, run.stack
                ),
            ));
        }

        if run.kind == RunKind::Tracked
            && run.state == "FINISHED"
            && run.has_changes == Some(true)
            && let Some(versions) = observed.state_versions.get(&run.stack)
            && !versions.iter().any(|version| version.run_id == run.id)
        {
            violations.push(violation(
                Invariant::AppliedStateKept,
                format!(
                    "run {} of stack {} FINISHED its apply, but no state version of the stack is its own (versions: {})",
                    run.id,
                    run.stack,
                    versions
                        .iter()
                        .map(|version| format!("{} by {}", version.version, version.run_id))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }

    for versions in observed.state_versions.values() {
        tally.state_versions += versions.len();
        tally.orphaned_state_versions += versions.iter().filter(|v| v.orphaned).count();
    }

    for (stack, entries) in &observed.journals {
        let mut journaled = executions(entries);
        tally.executions_journaled += journaled.len();
        tally.executions_unattributed +=
            journaled.iter().filter(|e| !run_of_nonce.contains_key(&e.nonce)).count();
        journaled.sort_by_key(|execution| execution.first);
        let name = |nonce: &str| {
            run_of_nonce.get(nonce).map_or_else(
                || format!("execution {nonce} (in no run's log)"),
                |run| format!("run {run} (execution {nonce})"),
            )
        };
        for (at, earlier) in journaled.iter().enumerate() {
            for later in &journaled[at + 1..] {
                if later.first < earlier.last {
                    violations.push(violation(
                        Invariant::NoOverlappingLockHolders,
                        format!(
                            "stack {stack}: {} started at uptime {} while {} still executed (until uptime {}{})",
                            name(&later.nonce),
                            seconds(later.first_uptime_centis),
                            name(&earlier.nonce),
                            seconds(earlier.last_uptime_centis),
                            if earlier.ended { "" } else { ", never ended" },
                        ),
                    ));
                }
            }
        }
    }

    let state_of: BTreeMap<&str, &str> =
        observed.runs.iter().map(|run| (run.id.as_str(), run.state.as_str())).collect();
    for worker in observed.workers.iter().filter(|worker| worker.busy) {
        let live = worker
            .current_run
            .as_deref()
            .and_then(|run| state_of.get(run))
            .is_some_and(|state| !is_terminal(state));
        if !live {
            violations.push(violation(
                Invariant::NoBusyWorkerWithoutLiveRun,
                format!(
                    "worker {} is BUSY with {}",
                    worker.id,
                    worker.current_run.as_deref().map_or_else(
                        || "no run".to_owned(),
                        |run| format!(
                            "run {run}, which is {}",
                            state_of.get(run).copied().unwrap_or("unknown")
                        )
                    )
                ),
            ));
        }
    }

    for container in &observed.leftover_containers {
        violations
            .push(violation(Invariant::NothingLeftBehind, format!("container left: {container}")));
    }
    for process in &observed.leftover_processes {
        violations
            .push(violation(Invariant::NothingLeftBehind, format!("process left: {process}")));
    }
    violations.sort_by_key(|violation| violation.invariant);
    (violations, tally)
}

fn seconds(centis: u64) -> String {
    format!("{}.{:02}s", centis / 100, centis % 100)
}

/// `1-5,7,7,9` for a list of line numbers.
fn compact(numbers: &[u32]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut at = 0;
    while at < numbers.len() {
        let mut end = at;
        while end + 1 < numbers.len() && numbers[end + 1] == numbers[end] + 1 {
            end += 1;
        }
        parts.push(if end == at {
            numbers[at].to_string()
        } else {
            format!("{}-{}", numbers[at], numbers[end])
        });
        at = end + 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::parse_journal;

    fn log(nonce: &str, lines: u32, printed: &[u32], ended: bool) -> String {
        let mut text = format!("Initializing...\nchaos-begin {nonce} {lines}\n");
        for number in printed {
            text.push_str(&format!(
                "terraform_data.chaos (local-exec): chaos-line {nonce} {number}\n"
            ));
        }
        if ended {
            text.push_str(&format!("chaos-end {nonce}\n"));
        }
        text
    }

    fn run(id: &str, kind: RunKind, history: &[&str], log: String) -> RunRecord {
        RunRecord {
            id: id.into(),
            stack: "app".into(),
            kind,
            state: history.last().unwrap().to_string(),
            history: history.iter().map(|state| state.to_string()).collect(),
            has_changes: (kind == RunKind::Tracked).then_some(true),
            log,
        }
    }

    const DONE: [&str; 4] = ["QUEUED", "READY", "APPLYING", "FINISHED"];

    fn healthy() -> Observed {
        let journal = "aaaaaaaa start 1\naaaaaaaa tick 1.1\naaaaaaaa tick 1.2\naaaaaaaa end 1.3\n\
                       bbbbbbbb start 2\nbbbbbbbb tick 2.1\nbbbbbbbb tick 2.2\nbbbbbbbb end 2.3\n";
        Observed {
            runs: vec![
                run("R1", RunKind::Tracked, &DONE, log("aaaaaaaa", 2, &[1, 2], true)),
                run(
                    "R2",
                    RunKind::Task,
                    &["QUEUED", "PERFORMING", "FINISHED"],
                    log("bbbbbbbb", 2, &[1, 2], true),
                ),
            ],
            journals: BTreeMap::from([("app".into(), parse_journal(journal).unwrap())]),
            state_versions: BTreeMap::from([(
                "app".into(),
                vec![StateVersionRecord { version: 1, run_id: "R1".into(), orphaned: false }],
            )]),
            workers: vec![WorkerRecord { id: "W1".into(), busy: false, current_run: None }],
            leftover_containers: vec![],
            leftover_processes: vec![],
        }
    }

    fn violated(observed: &Observed) -> Vec<Invariant> {
        check(observed).0.into_iter().map(|violation| violation.invariant).collect()
    }

    #[test]
    fn a_healthy_history_holds_every_invariant() {
        let (violations, tally) = check(&healthy());
        assert_eq!(violations, vec![]);
        assert_eq!(tally.executions_journaled, 2);
        assert_eq!(tally.executions_unattributed, 0);
        assert_eq!(tally.numbered_log_lines, 4);
    }

    #[test]
    fn a_run_that_never_ended_or_ended_twice_is_caught() {
        let mut observed = healthy();
        observed.runs[0].state = "APPLYING".into();
        observed.runs[0].history.pop();
        assert_eq!(violated(&observed), vec![Invariant::EndedExactlyOnce]);

        let mut observed = healthy();
        observed.runs[1].history = ["QUEUED", "FAILED", "FINISHED"].map(String::from).to_vec();
        let (violations, _) = check(&observed);
        assert_eq!(violations.len(), 1);
        assert!(violations[0].detail.contains("ended 2 times"), "{}", violations[0]);
    }

    #[test]
    fn a_run_executed_twice_is_caught() {
        let mut observed = healthy();
        observed.runs[1].log =
            format!("{}{}", log("bbbbbbbb", 2, &[1, 2], true), log("cccccccc", 2, &[1, 2], true));
        assert_eq!(violated(&observed), vec![Invariant::EndedExactlyOnce]);
    }

    #[test]
    fn overlapping_executions_of_one_stack_are_caught_even_without_an_end() {
        let mut observed = healthy();
        // The first execution's worker was lost, but its script kept ticking after the
        // second one started: the orphan apply of issue 17.
        let journal = "aaaaaaaa start 1\naaaaaaaa tick 1.1\nbbbbbbbb start 2\naaaaaaaa tick 2.05\n\
                       bbbbbbbb tick 2.1\nbbbbbbbb tick 2.2\nbbbbbbbb end 2.3\n";
        observed.journals.insert("app".into(), parse_journal(journal).unwrap());
        observed.runs[0].state = "FAILED".into();
        *observed.runs[0].history.last_mut().unwrap() = "FAILED".into();
        observed.runs[0].log = log("aaaaaaaa", 2, &[1], false);
        let (violations, _) = check(&observed);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].invariant, Invariant::NoOverlappingLockHolders);
        assert!(
            violations[0].detail.contains("run R2 (execution bbbbbbbb) started at uptime 2.00s")
        );
        assert!(violations[0].detail.contains(
            "run R1 (execution aaaaaaaa) still executed (until uptime 2.05s, never ended)"
        ));
    }

    #[test]
    fn executions_of_different_stacks_may_overlap() {
        let mut observed = healthy();
        let other = "cccccccc start 1.05\ncccccccc end 2.5\n";
        observed.journals.insert("other".into(), parse_journal(other).unwrap());
        let (violations, tally) = check(&observed);
        assert_eq!(violations, vec![]);
        assert_eq!(tally.executions_unattributed, 1);
    }

    #[test]
    fn gaps_duplicates_and_cut_logs_are_caught() {
        let mut observed = healthy();
        observed.runs[1].log = log("bbbbbbbb", 3, &[1, 3], true);
        assert_eq!(violated(&observed), vec![Invariant::LogsComplete]);

        observed.runs[1].log = log("bbbbbbbb", 3, &[1, 2, 2, 3], true);
        assert_eq!(violated(&observed), vec![Invariant::LogsComplete]);

        // A FINISHED run's log must hold every line and the end.
        observed.runs[1].log = log("bbbbbbbb", 3, &[1, 2], false);
        assert_eq!(violated(&observed), vec![Invariant::LogsComplete]);

        // A FAILED run's log may stop early, but without gaps.
        observed.runs[1].state = "FAILED".into();
        *observed.runs[1].history.last_mut().unwrap() = "FAILED".into();
        assert_eq!(violated(&observed), vec![]);

        // A FINISHED task whose log lost everything.
        let mut observed = healthy();
        observed.runs[1].log = "Initializing...\n".into();
        assert_eq!(violated(&observed), vec![Invariant::LogsComplete]);
    }

    #[test]
    fn a_finished_apply_whose_state_is_not_a_version_is_caught() {
        let mut observed = healthy();
        observed.state_versions.get_mut("app").unwrap()[0].run_id = "R0".into();
        assert_eq!(violated(&observed), vec![Invariant::AppliedStateKept]);
        // A plan without changes applies nothing.
        observed.runs[0].has_changes = Some(false);
        observed.runs[0].log = "No changes.\n".into();
        assert_eq!(violated(&observed), vec![]);
    }

    #[test]
    fn a_busy_worker_without_a_live_run_is_caught() {
        let mut observed = healthy();
        observed.workers.push(WorkerRecord {
            id: "W2".into(),
            busy: true,
            current_run: Some("R1".into()),
        });
        observed.workers.push(WorkerRecord { id: "W3".into(), busy: true, current_run: None });
        let (violations, _) = check(&observed);
        assert_eq!(
            violations.iter().map(|v| v.detail.as_str()).collect::<Vec<_>>(),
            vec![
                "worker W2 is BUSY with run R1, which is FINISHED",
                "worker W3 is BUSY with no run"
            ]
        );
        // Busy with a run that is still executing is fine (checked mid-flight).
        let mut observed = healthy();
        observed.runs.push(run("R3", RunKind::Task, &["QUEUED", "PERFORMING"], String::new()));
        observed.workers[0] =
            WorkerRecord { id: "W1".into(), busy: true, current_run: Some("R3".into()) };
        assert_eq!(violated(&observed), vec![Invariant::EndedExactlyOnce]);
    }

    #[test]
    fn leftovers_are_caught() {
        let mut observed = healthy();
        observed.leftover_containers.push("c0ffee run 01J".into());
        observed.leftover_processes.push("4242 gantry-worker".into());
        assert_eq!(
            violated(&observed),
            vec![Invariant::NothingLeftBehind, Invariant::NothingLeftBehind]
        );
    }

    #[test]
    fn line_numbers_compact() {
        assert_eq!(compact(&[1, 2, 3, 5, 5, 6, 9]), "1-3,5,5-6,9");
    }
}
