//! The web UI under `/ui`: server-rendered pages in maud (templates are Rust checked by
//! the compiler and compiled into the binary, escaped by default, with no template files
//! to ship or parse at run time), a hand-written stylesheet and script, and live panels
//! fed by server-sent events.

mod ansi;
mod assets;
mod audit;
mod keys;
mod layout;
mod live;
mod pool_form;
mod pools;
mod runs;
mod session;
mod stacks;
mod webhooks;

use axum::Router;
use axum::http::Method;
use axum::middleware::from_fn;
use axum::response::{Redirect, Response};
use gantry_domain::access::Role;

use crate::access::routes::{self, Guarded, PUBLIC, Plane, Target, needs};
use crate::error::ApiError;
use crate::state::AppState;

pub(crate) use session::session_actor;

/// Every page and form of the UI with who may use it: the router is built from this
/// table, and the authorization matrix test reads it.
pub(crate) fn routes() -> Vec<Guarded> {
    use Method as M;
    use Role::{Admin, Operator, Reader, Writer};
    use Target::{Caller, Listed, NewPool, Pool, Run, Stack, Unscoped, Worker};
    vec![
        Guarded::new(M::GET, "/", PUBLIC, || async { Redirect::to("/ui/pools") }),
        Guarded::new(M::GET, "/sign-in", PUBLIC, session::sign_in_page),
        Guarded::new(M::POST, "/sign-in", PUBLIC, session::sign_in),
        Guarded::new(M::POST, "/sign-out", needs(Reader, Caller), session::sign_out),
        Guarded::new(M::GET, "/assets/gantry.css", PUBLIC, assets::stylesheet),
        Guarded::new(M::GET, "/assets/gantry.js", PUBLIC, assets::script),
        Guarded::new(M::GET, "/keys", needs(Admin, Unscoped), keys::list),
        Guarded::new(M::POST, "/keys", needs(Admin, Unscoped), keys::create),
        Guarded::new(M::POST, "/keys/{key}/revoke", needs(Admin, Unscoped), keys::revoke),
        Guarded::new(M::GET, "/audit", needs(Admin, Unscoped), audit::list),
        Guarded::new(M::GET, "/webhooks", needs(Admin, Unscoped), webhooks::list),
        Guarded::new(M::POST, "/webhooks", needs(Admin, Unscoped), webhooks::create),
        Guarded::new(
            M::POST,
            "/webhooks/{webhook}/delete",
            needs(Admin, Unscoped),
            webhooks::delete,
        ),
        Guarded::new(M::GET, "/pools", needs(Reader, Listed), pools::list),
        Guarded::new(M::POST, "/pools", needs(Operator, NewPool), pool_form::create),
        Guarded::new(M::GET, "/pools/new", needs(Operator, Caller), pool_form::new_pool),
        Guarded::new(M::GET, "/pools/{pool}", needs(Reader, Pool), pools::workers_tab),
        Guarded::new(M::GET, "/pools/{pool}/queue", needs(Reader, Pool), pools::queue_tab),
        Guarded::new(M::GET, "/pools/{pool}/stacks", needs(Reader, Pool), pools::stacks_tab),
        Guarded::new(M::GET, "/pools/{pool}/live/{tab}", needs(Reader, Pool), live::pool_panel),
        Guarded::new(M::POST, "/pools/{pool}/drain", needs(Operator, Pool), pools::drain_all),
        Guarded::new(M::POST, "/pools/{pool}/undrain", needs(Operator, Pool), pools::undrain_all),
        Guarded::new(
            M::POST,
            "/workers/{worker}/drain",
            needs(Operator, Worker),
            pools::drain_worker,
        ),
        Guarded::new(
            M::POST,
            "/workers/{worker}/undrain",
            needs(Operator, Worker),
            pools::undrain_worker,
        ),
        Guarded::new(M::POST, "/runs/{run}/prioritize", needs(Operator, Run), pools::prioritize),
        Guarded::new(M::GET, "/stacks", needs(Reader, Listed), stacks::list),
        Guarded::new(M::GET, "/stacks/{stack}", needs(Reader, Stack), stacks::show),
        Guarded::new(M::GET, "/stacks/{stack}/live", needs(Reader, Stack), live::stack_panel),
        Guarded::new(M::POST, "/stacks/{stack}/runs", needs(Writer, Stack), stacks::trigger),
        Guarded::new(
            M::POST,
            "/stacks/{stack}/state/rollback",
            needs(Operator, Stack),
            stacks::rollback_state,
        ),
        Guarded::new(
            M::POST,
            "/stacks/{stack}/state/adopt",
            needs(Operator, Stack),
            stacks::adopt_state,
        ),
        Guarded::new(M::GET, "/runs/{run}", needs(Reader, Run), runs::show),
        Guarded::new(M::GET, "/runs/{run}/live", needs(Reader, Run), runs::live),
        Guarded::new(M::POST, "/runs/{run}/confirm", needs(Writer, Run), runs::confirm),
        Guarded::new(M::POST, "/runs/{run}/discard", needs(Writer, Run), runs::discard),
        Guarded::new(M::POST, "/runs/{run}/stop", needs(Writer, Run), runs::stop),
    ]
}

pub(crate) fn router(state: &AppState) -> Router<AppState> {
    routes::router(state, Plane::Ui, routes()).layer(from_fn(assets::security_headers))
}

/// A request the route's decision refused, as a page.
pub(crate) fn refusal_page(error: ApiError) -> Response {
    layout::error_page(error)
}

/// The form token of a session cookie, for tests that post forms as a browser would.
#[cfg(test)]
pub(crate) fn csrf_token(cookie: &str) -> String {
    session::form_token("csrf", cookie)
}
