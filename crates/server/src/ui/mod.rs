//! The web UI under `/ui`: server-rendered pages in maud (templates are Rust checked by
//! the compiler and compiled into the binary, escaped by default, with no template files
//! to ship or parse at run time), a hand-written stylesheet and script, and live panels
//! fed by server-sent events.

mod ansi;
mod assets;
mod layout;
mod live;
mod pool_form;
mod pools;
mod runs;
mod session;
mod stacks;

use axum::Router;
use axum::middleware::from_fn;
use axum::response::Redirect;
use axum::routing::{get, post};

use crate::state::AppState;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/pools") }))
        .route("/sign-in", get(session::sign_in_page).post(session::sign_in))
        .route("/sign-out", post(session::sign_out))
        .route("/assets/gantry.css", get(assets::stylesheet))
        .route("/assets/gantry.js", get(assets::script))
        .route("/pools", get(pools::list).post(pool_form::create))
        .route("/pools/new", get(pool_form::new_pool))
        .route("/pools/{pool}", get(pools::workers_tab))
        .route("/pools/{pool}/queue", get(pools::queue_tab))
        .route("/pools/{pool}/stacks", get(pools::stacks_tab))
        .route("/pools/{pool}/live/{tab}", get(live::pool_panel))
        .route("/pools/{pool}/drain", post(pools::drain_all))
        .route("/pools/{pool}/undrain", post(pools::undrain_all))
        .route("/workers/{worker}/drain", post(pools::drain_worker))
        .route("/workers/{worker}/undrain", post(pools::undrain_worker))
        .route("/runs/{run}/prioritize", post(pools::prioritize))
        .route("/stacks", get(stacks::list))
        .route("/stacks/{stack}", get(stacks::show))
        .route("/stacks/{stack}/live", get(live::stack_panel))
        .route("/stacks/{stack}/runs", post(stacks::trigger))
        .route("/stacks/{stack}/state/rollback", post(stacks::rollback_state))
        .route("/runs/{run}", get(runs::show))
        .route("/runs/{run}/live", get(runs::live))
        .route("/runs/{run}/confirm", post(runs::confirm))
        .route("/runs/{run}/discard", post(runs::discard))
        .route("/runs/{run}/stop", post(runs::stop))
        .layer(from_fn(assets::security_headers))
}
