//! Secrets out of a process's environment, for the binaries that receive them as
//! variables (`gantry-launcher`: the pool key and token; `gantry-worker`: its run's
//! capability). See [`take_from_environment`].

mod handover;

pub use handover::{HANDOVER_FD_ENV, SecretEnvError, Secrets, take_from_environment};
