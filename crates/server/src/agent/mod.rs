//! The agent plane under `/agent/v1`: everything launchers call, outbound from their
//! network. Authentication is a proof of possession of the pool private key, exchanged
//! for a short-lived session token.

pub(crate) mod blobs;
mod heartbeat;
mod poll;
mod runs;
mod session;
mod worker_binary;
mod workers;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};

use crate::state::AppState;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/session/challenge", post(session::challenge))
        .route("/session", post(session::open))
        .route("/session/close", post(session::close))
        .route("/workers", post(workers::register))
        .route("/workers/leave", post(workers::leave))
        .route("/poll", post(poll::poll))
        .route("/heartbeat", post(heartbeat::heartbeat))
        .route("/runs/{run}/ack", post(runs::acknowledge))
        .route("/runs/{run}/reports", post(runs::report))
        .route("/runs/{run}/logs", post(runs::upload_logs))
        .route(
            "/runs/{run}/workspace",
            get(blobs::get_workspace).put(blobs::put_workspace).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/runs/{run}/state",
            get(blobs::get_state).put(blobs::put_state).layer(DefaultBodyLimit::disable()),
        )
        .route("/runs/{run}/sensitive-outputs", put(blobs::put_sensitive_outputs))
        .route("/runs/{run}/inputs/{upstream_run}", get(blobs::get_sealed_input))
        .route("/worker-binary", get(worker_binary::describe))
        .route("/worker-binary/content", get(worker_binary::content))
}

pub(crate) use blobs::{SENSITIVE_OUTPUTS, WORKSPACE};
pub(crate) use worker_binary::WorkerRelease;

#[cfg(test)]
mod fuzz_tests;
