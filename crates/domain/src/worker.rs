//! The status users see for a worker slot.

use std::fmt;

/// A worker is `Drained` when it accepts no new run, whatever it is doing now; otherwise
/// `Busy` while it holds a run and `Idle` when it does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerStatus {
    Idle,
    Busy,
    Drained,
}

impl WorkerStatus {
    pub fn of(drained: bool, busy: bool) -> Self {
        match (drained, busy) {
            (true, _) => Self::Drained,
            (false, true) => Self::Busy,
            (false, false) => Self::Idle,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "IDLE",
            Self::Busy => "BUSY",
            Self::Drained => "DRAINED",
        }
    }
}

impl fmt::Display for WorkerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was not a worker status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a worker status: expected IDLE, BUSY or DRAINED")]
pub struct UnknownWorkerStatus(String);

impl std::str::FromStr for WorkerStatus {
    type Err = UnknownWorkerStatus;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.to_ascii_uppercase().as_str() {
            "IDLE" => Ok(Self::Idle),
            "BUSY" => Ok(Self::Busy),
            "DRAINED" => Ok(Self::Drained),
            _ => Err(UnknownWorkerStatus(value.to_owned())),
        }
    }
}
