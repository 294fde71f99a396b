//! Gantry's domain model: identifiers, the run and worker state machines, the pure
//! scheduler and option parsing. It knows nothing about HTTP, SQL, Docker or Kubernetes,
//! and performs no I/O: callers pass the clock and the world in as plain data.

pub mod access;
pub mod dependencies;
mod ids;
mod names;
pub mod options;
mod run;
mod schedule;
pub mod scheduler;
mod stack;
mod time;
pub mod validation;
mod worker;

pub use ids::{IdParseError, LauncherId, PoolId, RunId, StackId, WorkerId};
pub use names::{NameError, validate_name};
pub use run::{
    InvalidTransition, Phase, RunContext, RunEvent, RunState, RunType, UnknownRunState,
    UnknownRunType, transition,
};
pub use schedule::{ScheduleKind, UnknownScheduleKind};
pub use stack::{EnvironmentVariable, PoolKind, Tool, UnknownTool};
pub use time::Timestamp;
pub use worker::{UnknownWorkerStatus, WorkerStatus};
