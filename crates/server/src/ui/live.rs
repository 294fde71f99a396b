//! Live panels over server-sent events (a pool's workers or queue, a stack's runs): the
//! panel is rendered again whenever its pool's workers or any run change (in this process or, through `cluster`, in another one),
//! and sent only when the HTML differs from what the browser has. A slow tick refreshes
//! what changes without an event (a worker's last heartbeat).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream;
use gantry_domain::PoolId;
use gantry_store::{PoolRecord, StackRecord};
use maud::Markup;
use tokio::sync::broadcast::{self, error::TryRecvError};

use super::layout::UiResult;
use super::pools::{Tab, panel};
use super::session::UiSession;
use super::stacks::history_panel;
use crate::error::{ApiError, PathParam};
use crate::events::Events;
use crate::lookup;
use crate::state::AppState;

const REFRESH: Duration = Duration::from_secs(15);

pub(super) async fn pool_panel(
    State(state): State<AppState>,
    session: UiSession,
    PathParam((key, tab)): PathParam<(String, String)>,
) -> UiResult {
    let tab = Tab::parse(&tab)
        .filter(|tab| *tab != Tab::Stacks)
        .ok_or_else(|| ApiError::not_found("live panel", tab))?;
    let pool = lookup::pool(&state, &key).await?;
    Ok(follow(state, session, Subject::Pool(pool, tab)))
}

pub(super) async fn stack_panel(
    State(state): State<AppState>,
    session: UiSession,
    PathParam(key): PathParam<String>,
) -> UiResult {
    let stack = lookup::stack(&state, &key).await?;
    Ok(follow(state, session, Subject::Stack(stack)))
}

fn follow(state: AppState, session: UiSession, subject: Subject) -> axum::response::Response {
    let watch = Watch::new(&state.events, subject.pool_id());
    let stream =
        stream::unfold(Follower { state, subject, session, watch, sent: None }, Follower::next);
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

/// What a live panel shows.
enum Subject {
    Pool(PoolRecord, Tab),
    /// A stack's run history.
    Stack(StackRecord),
}

impl Subject {
    fn pool_id(&self) -> PoolId {
        match self {
            Self::Pool(pool, _) => pool.id,
            Self::Stack(stack) => stack.pool_id,
        }
    }

    async fn render(&self, state: &AppState, session: &UiSession) -> UiResult<Markup> {
        match self {
            Self::Pool(pool, tab) => panel(state, pool, *tab, session).await,
            Self::Stack(stack) => history_panel(state, stack).await,
        }
    }
}

/// What wakes a panel: its pool's workers changing, or any run changing (a worker turns
/// busy or idle when a run is assigned or ends).
struct Watch {
    pool_id: PoolId,
    pools: broadcast::Receiver<PoolId>,
    runs: broadcast::Receiver<gantry_domain::RunId>,
}

impl Watch {
    fn new(events: &Events, pool_id: PoolId) -> Self {
        Self { pool_id, pools: events.subscribe_pool_workers(), runs: events.subscribe_runs() }
    }

    /// Waits for a change that may concern the panel, then takes every wake-up already
    /// queued, so a burst of changes costs one render.
    async fn changed(&mut self) {
        loop {
            let relevant = tokio::select! {
                pool = self.pools.recv() => match pool {
                    Ok(pool) => pool == self.pool_id,
                    Err(_) => true,
                },
                _ = self.runs.recv() => true,
                () = tokio::time::sleep(REFRESH) => true,
            };
            if relevant {
                break;
            }
        }
        while !matches!(self.pools.try_recv(), Err(TryRecvError::Empty | TryRecvError::Closed)) {}
        while !matches!(self.runs.try_recv(), Err(TryRecvError::Empty | TryRecvError::Closed)) {}
    }
}

struct Follower {
    state: AppState,
    subject: Subject,
    session: UiSession,
    watch: Watch,
    /// The HTML last sent; `None` before the first event.
    sent: Option<String>,
}

impl Follower {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            if self.sent.is_some() {
                tokio::select! {
                    () = self.watch.changed() => {}
                    () = self.state.shutdown.cancelled() => return None,
                }
            }
            // A failed render (the pool was deleted, the store is away) ends the stream;
            // the browser reconnects and gets the page's own answer.
            let html = self.subject.render(&self.state, &self.session).await.ok()?;
            let html = html.into_string();
            if self.sent.as_deref() != Some(html.as_str()) {
                let event = Event::default().event("panel").data(&html);
                self.sent = Some(html);
                return Some((Ok(event), self));
            }
        }
    }
}
