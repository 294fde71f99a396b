//! The run state machine: every state the reference model names, and the one function
//! that decides which event may move a run from one state to the next.

use std::fmt;
use std::str::FromStr;

/// What a run is allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunType {
    /// May apply; holds the stack lock from start to end.
    Tracked,
    /// Plans only; takes no lock.
    Proposed,
    /// Runs one command; holds the stack lock.
    Task,
}

impl RunType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tracked => "TRACKED",
            Self::Proposed => "PROPOSED",
            Self::Task => "TASK",
        }
    }

    /// Tracked runs and tasks change infrastructure, so only one of them may be active
    /// on a stack at a time.
    pub fn takes_stack_lock(self) -> bool {
        matches!(self, Self::Tracked | Self::Task)
    }
}

impl fmt::Display for RunType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was not a run type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a run type: expected TRACKED, PROPOSED or TASK")]
pub struct UnknownRunType(String);

impl FromStr for RunType {
    type Err = UnknownRunType;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.to_ascii_uppercase().as_str() {
            "TRACKED" => Ok(Self::Tracked),
            "PROPOSED" => Ok(Self::Proposed),
            "TASK" => Ok(Self::Task),
            _ => Err(UnknownRunType(value.to_owned())),
        }
    }
}

/// Every state of a run, named as the reference model names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunState {
    Queued,
    Ready,
    Preparing,
    Initializing,
    Planning,
    Unconfirmed,
    Confirmed,
    Applying,
    Performing,
    Destroying,
    Finished,
    Failed,
    Stopped,
    Discarded,
    Canceled,
    Skipped,
}

impl RunState {
    pub const ALL: [RunState; 16] = [
        Self::Queued,
        Self::Ready,
        Self::Preparing,
        Self::Initializing,
        Self::Planning,
        Self::Unconfirmed,
        Self::Confirmed,
        Self::Applying,
        Self::Performing,
        Self::Destroying,
        Self::Finished,
        Self::Failed,
        Self::Stopped,
        Self::Discarded,
        Self::Canceled,
        Self::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "QUEUED",
            Self::Ready => "READY",
            Self::Preparing => "PREPARING",
            Self::Initializing => "INITIALIZING",
            Self::Planning => "PLANNING",
            Self::Unconfirmed => "UNCONFIRMED",
            Self::Confirmed => "CONFIRMED",
            Self::Applying => "APPLYING",
            Self::Performing => "PERFORMING",
            Self::Destroying => "DESTROYING",
            Self::Finished => "FINISHED",
            Self::Failed => "FAILED",
            Self::Stopped => "STOPPED",
            Self::Discarded => "DISCARDED",
            Self::Canceled => "CANCELED",
            Self::Skipped => "SKIPPED",
        }
    }

    /// A terminal run never changes again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Finished
                | Self::Failed
                | Self::Stopped
                | Self::Discarded
                | Self::Canceled
                | Self::Skipped
        )
    }

    /// A run in this state is executing on a worker (it occupies the worker slot).
    pub fn occupies_worker(self) -> bool {
        matches!(
            self,
            Self::Preparing
                | Self::Initializing
                | Self::Planning
                | Self::Applying
                | Self::Performing
                | Self::Destroying
        )
    }

    /// A run in this state waits for a worker to pick it up.
    pub fn wants_worker(self) -> bool {
        matches!(self, Self::Ready | Self::Confirmed)
    }

    /// A lock-taking run holds its stack's lock in every state after it left the queue
    /// and before it ended, `UNCONFIRMED` included.
    pub fn holds_stack_lock(self) -> bool {
        !self.is_terminal() && self != Self::Queued
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was not a run state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a run state")]
pub struct UnknownRunState(String);

impl FromStr for RunState {
    type Err = UnknownRunState;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let upper = value.to_ascii_uppercase();
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == upper)
            .ok_or_else(|| UnknownRunState(value.to_owned()))
    }
}

/// A phase the worker reports when it starts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Initializing,
    Planning,
    Applying,
    Performing,
}

impl Phase {
    pub fn state(self) -> RunState {
        match self {
            Self::Initializing => RunState::Initializing,
            Self::Planning => RunState::Planning,
            Self::Applying => RunState::Applying,
            Self::Performing => RunState::Performing,
        }
    }
}

/// Something that happened to a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEvent {
    /// The scheduler found the stack lock and dependencies free.
    Promote,
    /// A launcher acknowledged the assignment and started working on it.
    Acknowledge,
    /// The worker started a phase.
    PhaseStarted(Phase),
    /// The plan finished.
    Planned { has_changes: bool },
    /// The planned workspace was encrypted and stored: the plan can be confirmed.
    WorkspaceStored,
    /// A user confirmed the plan.
    Confirm,
    /// The apply finished.
    Applied,
    /// A task's command finished.
    Performed,
    /// A user stopped the run before it started on a worker.
    Cancel,
    /// A stack this one depends on failed: the run will not start.
    Skip,
    /// A user discarded the run before it executed or while it waited for confirmation.
    Discard,
    /// The run could not go on.
    Fail,
    /// A user stopped the run while it executed.
    Stop,
}

impl RunEvent {
    fn describe(&self) -> &'static str {
        match self {
            Self::Promote => "move to READY (only QUEUED runs can)",
            Self::Acknowledge => "start on a worker (only READY and CONFIRMED runs can)",
            Self::PhaseStarted(_) => "start this phase now",
            Self::Planned { .. } => "finish planning (only PLANNING runs can)",
            Self::WorkspaceStored => "wait for confirmation (only tracked PLANNING runs can)",
            Self::Confirm => "confirm (only UNCONFIRMED runs can be confirmed)",
            Self::Applied => "finish applying (only APPLYING runs can)",
            Self::Performed => "finish its command (only PERFORMING tasks can)",
            Self::Cancel => "cancel (only runs that have not started can be canceled)",
            Self::Skip => "skip (only QUEUED runs can be skipped)",
            Self::Discard => "discard (only QUEUED, READY and UNCONFIRMED runs can be discarded)",
            Self::Fail => "fail (the run has already ended)",
            Self::Stop => "stop (only executing runs can be stopped)",
        }
    }
}

/// What the state machine needs to know about the run besides its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunContext {
    pub run_type: RunType,
    /// The stack applies plans with changes without waiting for a confirmation.
    pub autodeploy: bool,
}

/// The event is not allowed in the run's current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the run is {from}: cannot {action}")]
pub struct InvalidTransition {
    pub from: RunState,
    action: &'static str,
}

/// The state a run moves to when `event` happens in state `from`.
pub fn transition(
    from: RunState,
    context: RunContext,
    event: &RunEvent,
) -> Result<RunState, InvalidTransition> {
    use RunState as S;
    let refuse = || InvalidTransition { from, action: event.describe() };
    let to = match (event, from) {
        (RunEvent::Promote, S::Queued) => S::Ready,
        (RunEvent::Acknowledge, S::Ready) => S::Preparing,
        (RunEvent::Acknowledge, S::Confirmed) => S::Applying,
        (RunEvent::PhaseStarted(phase), _) => {
            phase_transition(from, context.run_type, *phase).ok_or_else(refuse)?
        }
        (RunEvent::Planned { has_changes }, S::Planning) => match context.run_type {
            RunType::Task => return Err(refuse()),
            RunType::Proposed => S::Finished,
            RunType::Tracked if !has_changes => S::Finished,
            RunType::Tracked if context.autodeploy => S::Applying,
            // The plan waits for confirmation once its workspace is stored.
            RunType::Tracked => S::Planning,
        },
        (RunEvent::WorkspaceStored, S::Planning) if context.run_type == RunType::Tracked => {
            S::Unconfirmed
        }
        (RunEvent::Confirm, S::Unconfirmed) => S::Confirmed,
        (RunEvent::Applied, S::Applying) => S::Finished,
        (RunEvent::Performed, S::Performing) => S::Finished,
        (RunEvent::Cancel, S::Queued | S::Ready | S::Confirmed) => S::Canceled,
        (RunEvent::Skip, S::Queued) => S::Skipped,
        (RunEvent::Discard, S::Queued | S::Ready | S::Unconfirmed) => S::Discarded,
        (RunEvent::Fail, state) if !state.is_terminal() => S::Failed,
        (RunEvent::Stop, state) if state.occupies_worker() || state == S::Ready => S::Stopped,
        _ => return Err(refuse()),
    };
    Ok(to)
}

/// Phases move forward only; reporting the current phase again is a harmless retry.
fn phase_transition(from: RunState, run_type: RunType, phase: Phase) -> Option<RunState> {
    use RunState as S;
    let to = phase.state();
    let allowed = match phase {
        Phase::Initializing => matches!(from, S::Preparing | S::Initializing),
        Phase::Planning => {
            run_type != RunType::Task
                && matches!(from, S::Preparing | S::Initializing | S::Planning)
        }
        Phase::Applying => run_type == RunType::Tracked && from == S::Applying,
        Phase::Performing => {
            run_type == RunType::Task
                && matches!(from, S::Preparing | S::Initializing | S::Performing)
        }
    };
    allowed.then_some(to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use RunState as S;

    const TRACKED: RunContext = RunContext { run_type: RunType::Tracked, autodeploy: false };
    const AUTODEPLOY: RunContext = RunContext { run_type: RunType::Tracked, autodeploy: true };
    const PROPOSED: RunContext = RunContext { run_type: RunType::Proposed, autodeploy: true };

    fn walk(context: RunContext, events: &[RunEvent]) -> Vec<RunState> {
        let mut state = S::Queued;
        let mut states = vec![state];
        for event in events {
            state = transition(state, context, event)
                .unwrap_or_else(|e| panic!("{event:?} from {state}: {e}"));
            states.push(state);
        }
        states
    }

    fn start_to_planning() -> Vec<RunEvent> {
        vec![
            RunEvent::Promote,
            RunEvent::Acknowledge,
            RunEvent::PhaseStarted(Phase::Initializing),
            RunEvent::PhaseStarted(Phase::Planning),
        ]
    }

    #[test]
    fn tracked_run_with_changes_waits_for_confirmation_then_applies() {
        let mut events = start_to_planning();
        events.extend([
            RunEvent::Planned { has_changes: true },
            RunEvent::WorkspaceStored,
            RunEvent::Confirm,
            RunEvent::Acknowledge,
            RunEvent::PhaseStarted(Phase::Applying),
            RunEvent::Applied,
        ]);
        assert_eq!(
            walk(TRACKED, &events),
            [
                S::Queued,
                S::Ready,
                S::Preparing,
                S::Initializing,
                S::Planning,
                S::Planning,
                S::Unconfirmed,
                S::Confirmed,
                S::Applying,
                S::Applying,
                S::Finished
            ]
        );
    }

    #[test]
    fn plans_without_changes_and_proposed_runs_finish_at_planning() {
        let mut events = start_to_planning();
        events.push(RunEvent::Planned { has_changes: false });
        assert_eq!(walk(TRACKED, &events).last(), Some(&S::Finished));

        let mut events = start_to_planning();
        events.push(RunEvent::Planned { has_changes: true });
        assert_eq!(walk(PROPOSED, &events).last(), Some(&S::Finished));
    }

    #[test]
    fn autodeploy_applies_without_confirmation() {
        let mut events = start_to_planning();
        events.push(RunEvent::Planned { has_changes: true });
        assert_eq!(walk(AUTODEPLOY, &events).last(), Some(&S::Applying));
    }

    #[test]
    fn a_task_initializes_then_performs_its_command() {
        let task = RunContext { run_type: RunType::Task, autodeploy: false };
        let events = [
            RunEvent::Promote,
            RunEvent::Acknowledge,
            RunEvent::PhaseStarted(Phase::Initializing),
            RunEvent::PhaseStarted(Phase::Performing),
            RunEvent::Performed,
        ];
        assert_eq!(walk(task, &events).last(), Some(&S::Finished));
        assert!(transition(S::Performing, task, &RunEvent::Applied).is_err());
    }

    #[test]
    fn runs_that_never_started_are_canceled_or_skipped_not_stopped() {
        assert_eq!(transition(S::Queued, TRACKED, &RunEvent::Cancel), Ok(S::Canceled));
        assert_eq!(transition(S::Ready, TRACKED, &RunEvent::Cancel), Ok(S::Canceled));
        assert_eq!(transition(S::Queued, TRACKED, &RunEvent::Skip), Ok(S::Skipped));
        assert!(transition(S::Planning, TRACKED, &RunEvent::Cancel).is_err());
        assert_eq!(transition(S::Applying, TRACKED, &RunEvent::Stop), Ok(S::Stopped));
        assert!(transition(S::Unconfirmed, TRACKED, &RunEvent::Stop).is_err());
    }

    #[test]
    fn only_a_tracked_plan_waits_for_its_workspace() {
        assert_eq!(transition(S::Planning, PROPOSED, &RunEvent::WorkspaceStored).ok(), None);
        assert_eq!(
            transition(S::Planning, AUTODEPLOY, &RunEvent::Planned { has_changes: true }),
            Ok(S::Applying)
        );
        assert_eq!(transition(S::Unconfirmed, TRACKED, &RunEvent::WorkspaceStored).ok(), None);
    }

    #[test]
    fn refusals_name_the_state_and_what_was_asked() {
        let error = transition(S::Finished, TRACKED, &RunEvent::Confirm).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the run is FINISHED: cannot confirm (only UNCONFIRMED runs can be confirmed)"
        );
        assert!(transition(S::Planning, TRACKED, &RunEvent::Discard).is_err());
        assert!(transition(S::Failed, TRACKED, &RunEvent::Fail).is_err());
        assert!(
            transition(S::Planning, TRACKED, &RunEvent::PhaseStarted(Phase::Initializing)).is_err()
        );
    }

    #[test]
    fn every_state_round_trips_and_exactly_six_are_terminal() {
        for state in RunState::ALL {
            assert_eq!(state.as_str().parse::<RunState>(), Ok(state));
        }
        assert_eq!(RunState::ALL.iter().filter(|s| s.is_terminal()).count(), 6);
    }

    #[test]
    fn terminal_states_accept_no_event() {
        let events = [
            RunEvent::Promote,
            RunEvent::Acknowledge,
            RunEvent::Planned { has_changes: true },
            RunEvent::WorkspaceStored,
            RunEvent::Confirm,
            RunEvent::Applied,
            RunEvent::Performed,
            RunEvent::Cancel,
            RunEvent::Skip,
            RunEvent::Discard,
            RunEvent::Fail,
            RunEvent::Stop,
            RunEvent::PhaseStarted(Phase::Planning),
        ];
        for state in RunState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for event in &events {
                assert!(transition(state, TRACKED, event).is_err(), "{event:?} from {state}");
            }
        }
    }
}
