//! The Gantry Kubernetes operator: keeps `WorkerPool`s' workers registered with the
//! server and runs each assignment in a Pod of three containers (`init`,
//! `launcher-sidecar`, `worker`).

pub mod crd;
