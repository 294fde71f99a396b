//! Gantry's wire types, and the only crate that decides how anything looks on the wire:
//! the REST API (`api`), the agent plane between launchers and the server (`agent`), the
//! local API between a launcher and the worker it started (`local`), and the files the
//! launcher's `init` and `sidecar` modes share in a Kubernetes run Pod (`pod`).
//!
//! Compatibility rule: a newer server serves an older launcher. Fields are only added,
//! always with a default, and unknown fields are ignored on the agent plane.

pub mod agent;
pub mod api;
pub mod audit;
pub mod keys;
pub mod lease;
pub mod local;
pub mod pod;
pub mod schedules;
mod text;
pub mod webhooks;

pub use text::{Rfc3339, format_timestamp};
