//! The Gantry control plane: the REST API, the agent plane launchers connect to, the
//! scheduling loop, liveness, and the certificate authority that issues pool
//! certificates. `main` lives in the `gantry` CLI (`gantry server`, `gantry up`); tests
//! drive `router()` directly or a started `Server`.

mod access;
mod agent;
mod api;
mod audit;
mod auth;
mod bootstrap;
mod cascade;
mod cluster;
pub mod config;
mod database_watch;
mod drift;
mod effects;
mod error;
mod events;
mod http_limits;
mod lifecycle;
mod liveness;
mod log_archive;
mod lookup;
mod master_key;
mod metrics;
mod pki;
mod reconcile;
mod schedules;
mod scheduling;
mod server;
mod session_cache;
mod shared_pool;
mod stack_secrets;
mod state;
#[cfg(test)]
mod test_routes;
mod ui;
mod views;
mod webhooks;

pub use access::Actor;
pub use bootstrap::API_KEY_PREFIX;
pub use config::{AgentTimings, ServerConfig, TlsSource};
pub use master_key::{DEFAULT_MASTER_KEY_FILE, MasterKeySource, Rotation, rotate_master_key};
pub use server::{CA_FILE, Server, StartError, router};
