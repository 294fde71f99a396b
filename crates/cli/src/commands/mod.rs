//! One file per command group; `context` holds what every command shares (the output
//! format, the connection settings) and the outcome and error types they return.

pub mod audit;
mod context;
pub mod key;
pub mod keygen;
pub mod pool;
pub mod release;
pub mod run;
pub mod server;
mod signals;
pub mod stack;
pub mod stack_schedule;
pub mod stack_secrets;
pub mod stack_state;
pub mod up;
pub mod webhook;
pub mod worker;

pub use context::{Context, Outcome, UsageError};
