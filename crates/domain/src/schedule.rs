//! What a stack's schedule starts when it fires: a tracked run, a task, or a drift check.

use std::fmt;
use std::str::FromStr;

use crate::RunType;

/// The kind of run a schedule triggers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScheduleKind {
    /// A tracked run of the stack's branch: plans and, as the stack's autodeploy says,
    /// applies.
    Tracked,
    /// A task: the schedule's command, with the stack's lock.
    Task,
    /// A proposed run in the drift class: finds changes made outside Gantry.
    Drift,
}

impl ScheduleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tracked => "tracked",
            Self::Task => "task",
            Self::Drift => "drift",
        }
    }

    /// The type of the runs it triggers.
    pub fn run_type(self) -> RunType {
        match self {
            Self::Tracked => RunType::Tracked,
            Self::Task => RunType::Task,
            Self::Drift => RunType::Proposed,
        }
    }
}

impl fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was not a schedule kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a schedule kind: expected tracked, task or drift")]
pub struct UnknownScheduleKind(String);

impl FromStr for ScheduleKind {
    type Err = UnknownScheduleKind;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.to_ascii_lowercase().as_str() {
            "tracked" => Ok(Self::Tracked),
            "task" => Ok(Self::Task),
            "drift" => Ok(Self::Drift),
            _ => Err(UnknownScheduleKind(value.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_read_back_as_written_and_name_their_run_type() {
        for kind in [ScheduleKind::Tracked, ScheduleKind::Task, ScheduleKind::Drift] {
            assert_eq!(kind.as_str().parse::<ScheduleKind>(), Ok(kind));
            assert_eq!(kind.as_str().to_uppercase().parse::<ScheduleKind>(), Ok(kind));
        }
        assert_eq!(ScheduleKind::Drift.run_type(), RunType::Proposed);
        let refused = "nightly".parse::<ScheduleKind>().unwrap_err();
        assert_eq!(
            refused.to_string(),
            "\"nightly\" is not a schedule kind: expected tracked, task or drift"
        );
    }
}
