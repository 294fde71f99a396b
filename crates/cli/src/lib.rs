//! The `gantry` command-line client: admin commands over the REST API. [`client`] is a
//! typed client of that API that `gantry up` and end-to-end tests use too.

mod app;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod exit;
pub mod output;

pub use app::{dispatch, main};
