//! The Gantry Kubernetes operator: keeps `WorkerPool`s' workers registered with the
//! server and runs each assignment in a Pod of three containers (`init`,
//! `launcher-sidecar`, `worker`).

pub mod agent;
pub mod config;
pub mod crd;
pub mod credentials;
pub mod identity;
mod loops;
pub mod metrics;
pub mod pod;
pub mod reconcile;
