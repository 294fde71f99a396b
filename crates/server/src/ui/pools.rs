//! Worker pools: the list, and a pool's page with its tabs (workers, queue, the stacks
//! that use it) and actions (drain, undrain, prioritize). The panels are rendered here
//! for the page and for its live updates alike.

use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use gantry_domain::PoolKind;
use gantry_proto::api;
use gantry_store::PoolRecord;
use maud::{Markup, html};

use super::layout::{UiResult, badge, header_row, labels, page, time};
use super::session::{CheckedForm, UiSession, token_field};
use crate::access::visible;
use crate::api::{pools as pool_ops, runs as run_ops, workers as worker_ops};
use crate::error::PathParam;
use crate::state::AppState;
use crate::{lookup, views};

/// The tabs of a pool's page, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tab {
    Workers,
    Queue,
    Stacks,
}

impl Tab {
    const ALL: [Tab; 3] = [Tab::Workers, Tab::Queue, Tab::Stacks];

    pub(super) fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|tab| tab.slug() == text)
    }

    fn slug(self) -> &'static str {
        match self {
            Self::Workers => "workers",
            Self::Queue => "queue",
            Self::Stacks => "stacks",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::Workers => "Workers",
            Self::Queue => "Queue",
            Self::Stacks => "Used by",
        }
    }

    fn path(self, pool: &PoolRecord) -> String {
        match self {
            Self::Workers => format!("/ui/pools/{}", pool.id),
            other => format!("/ui/pools/{}/{}", pool.id, other.slug()),
        }
    }
}

pub(super) async fn list(State(state): State<AppState>, session: UiSession) -> UiResult {
    let reach = session.actor.reach(&state).await?;
    let pools = visible(pool_ops::all_pools(&state).await?, reach.as_ref(), |reach, pool| {
        reach.pool(pool.id)
    });
    let body = html! {
        div.heading {
            h1 { "Worker pools" }
            a.button #new-pool-link href="/ui/pools/new" { "New pool" }
        }
        div.table-scroll {
            table {
                caption.visually-hidden { "Worker pools" }
                thead { (header_row(&["Name", "Kind", "Workers busy / total", "Pending runs", "Labels"])) }
                tbody {
                    @for pool in &pools {
                        tr {
                            th scope="row" { a href={ "/ui/pools/" (pool.id) } { (pool.name) } }
                            td { (kind_word(pool.kind)) }
                            td.number {
                                @if pool.kind == api::PoolKind::Shared { "—" }
                                @else { (pool.busy_workers) " / " (pool.workers) }
                                @if pool.drained_workers > 0 {
                                    " (" (pool.drained_workers) " drained)"
                                }
                            }
                            td.number { (pool.pending_runs) }
                            td { (labels(&pool.labels)) }
                        }
                    }
                }
            }
        }
    };
    Ok(page("Worker pools", Some(&session), body).into_response())
}

fn kind_word(kind: api::PoolKind) -> &'static str {
    match kind {
        api::PoolKind::Private => "private",
        api::PoolKind::Shared => "shared",
    }
}

pub(super) async fn workers_tab(
    state: State<AppState>,
    session: UiSession,
    key: PathParam<String>,
) -> UiResult {
    pool_page(state, session, key, Tab::Workers).await
}

pub(super) async fn queue_tab(
    state: State<AppState>,
    session: UiSession,
    key: PathParam<String>,
) -> UiResult {
    pool_page(state, session, key, Tab::Queue).await
}

pub(super) async fn stacks_tab(
    state: State<AppState>,
    session: UiSession,
    key: PathParam<String>,
) -> UiResult {
    pool_page(state, session, key, Tab::Stacks).await
}

async fn pool_page(
    State(state): State<AppState>,
    session: UiSession,
    PathParam(key): PathParam<String>,
    tab: Tab,
) -> UiResult {
    let record = lookup::pool(&state, &key).await?;
    let pool = pool_ops::one_pool(&state, &record).await?;
    let panel = panel(&state, &record, tab, &session).await?;
    let live = tab != Tab::Stacks;
    let body = html! {
        h1 { (pool.name) " " span.kind { (kind_word(pool.kind)) " pool" } }
        @if !pool.description.is_empty() { p { (pool.description) } }
        dl.facts {
            dt { "Labels" } dd { (labels(&pool.labels)) }
            @if let Some(algorithm) = &pool.key_algorithm { dt { "Key" } dd { (algorithm) } }
            dt { "Created" } dd { (time(pool.created_at)) }
        }
        nav.tabs aria-label="Pool" {
            ul {
                @for each in Tab::ALL {
                    li {
                        @if each == tab {
                            a href=(each.path(&record)) aria-current="page" { (each.title()) }
                        } @else {
                            a href=(each.path(&record)) { (each.title()) }
                        }
                    }
                }
            }
        }
        @if live {
            section #panel.panel aria-label=(tab.title())
                data-live={ "/ui/pools/" (record.id) "/live/" (tab.slug()) } { (panel) }
        } @else {
            section #panel.panel aria-label=(tab.title()) { (panel) }
        }
    };
    Ok(page(&format!("{} · {}", pool.name, tab.title()), Some(&session), body).into_response())
}

/// One tab's content, as the page shows it and as its live updates replace it.
pub(super) async fn panel(
    state: &AppState,
    pool: &PoolRecord,
    tab: Tab,
    session: &UiSession,
) -> UiResult<Markup> {
    Ok(match tab {
        Tab::Workers => {
            let workers = state.store.list_workers(Some(pool.id)).await?;
            workers_panel(pool, &views::visible_workers(pool, &workers), session)
        }
        Tab::Queue => queue_panel(&pool_ops::pool_queue(state, pool).await?, session),
        Tab::Stacks => {
            let pool = pool_ops::one_pool(state, pool).await?;
            html! {
                @if pool.used_by.is_empty() { p { "No stack runs on this pool." } }
                @else { ul.stacks { @for stack in &pool.used_by {
                    li { a href={ "/ui/stacks/" (stack) } { (stack) } }
                } } }
            }
        }
    })
}

fn workers_panel(pool: &PoolRecord, workers: &[api::Worker], session: &UiSession) -> Markup {
    if pool.kind == PoolKind::Shared {
        return html! {
            p { "The shared pool's workers are run by the server itself and are not listed." }
        };
    }
    let busy = workers.iter().filter(|worker| worker.busy).count();
    html! {
        div.toolbar {
            p.summary { (busy) " of " (workers.len()) " workers busy" }
            form method="post" action={ "/ui/pools/" (pool.id) "/drain" } data-enhance {
                (token_field(session))
                button #drain-all type="submit" { "Drain all" }
            }
            form method="post" action={ "/ui/pools/" (pool.id) "/undrain" } data-enhance {
                (token_field(session))
                button #undrain-all type="submit" { "Undrain all" }
            }
        }
        @if workers.is_empty() {
            p { "No worker is connected. Start a launcher with this pool's token and key." }
        } @else {
            div.table-scroll {
                table #workers {
                    caption.visually-hidden { "Workers" }
                    thead { (header_row(&["Worker", "Status", "Current run", "Metadata", "Host and version", "Last seen", "Action"])) }
                    tbody {
                        @for worker in workers {
                            tr data-worker=(worker.id) {
                                th scope="row" { code { (worker.id) } }
                                td.status { (badge(&worker.status.to_string())) }
                                td { @match worker.current_run_id {
                                    Some(run) => a href={ "/ui/runs/" (run) } { code { (run) } },
                                    None => span.muted { "none" },
                                } }
                                td { @if worker.metadata.is_empty() { span.muted { "none" } }
                                    @else { ul.labels {
                                        @for (name, value) in &worker.metadata {
                                            li { (name) "=" (value) }
                                        }
                                    } }
                                }
                                td { (worker.hostname) br; span.muted { (worker.launcher_version) } }
                                td { (time(worker.last_seen_at)) }
                                td { (drain_form(worker, session)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn drain_form(worker: &api::Worker, session: &UiSession) -> Markup {
    let (verb, label) = if worker.drained { ("undrain", "Undrain") } else { ("drain", "Drain") };
    html! {
        form method="post" action={ "/ui/workers/" (worker.id) "/" (verb) } data-enhance {
            (token_field(session))
            button id={ (verb) "-" (worker.id) } type="submit"
                aria-label={ (label) " worker " (worker.id) } { (label) }
        }
    }
}

fn queue_panel(queue: &api::Queue, session: &UiSession) -> Markup {
    html! {
        @if queue.entries.is_empty() {
            p { "No run is in progress or waiting on this pool." }
        } @else {
            div.table-scroll {
                table #queue {
                    caption.visually-hidden { "Runs in progress, then waiting runs in order" }
                    thead { (header_row(&["#", "Run", "Stack", "Type", "State", "Why it waits", "Action"])) }
                    tbody {
                        @for (position, entry) in queue.entries.iter().enumerate() {
                            @let run = &entry.run;
                            tr {
                                td.number { (position + 1) }
                                th scope="row" { a href={ "/ui/runs/" (run.id) } { code { (run.id) } } }
                                td { a href={ "/ui/stacks/" (run.stack_id) } { (run.stack_name) } }
                                td { (run.run_type.to_string()) }
                                td { (badge(&run.state.to_string()))
                                    @if run.prioritized { " " span.badge { "prioritized" } } }
                                td { @if entry.in_progress { span.muted { "in progress" } }
                                    @else if let Some(reason) = &run.waiting_reason { (reason) }
                                    @else { span.muted { "about to be scheduled" } } }
                                td { @if !entry.in_progress && !run.prioritized {
                                    form method="post" action={ "/ui/runs/" (run.id) "/prioritize" }
                                        data-enhance {
                                        (token_field(session))
                                        button id={ "prioritize-" (run.id) } type="submit"
                                            aria-label={ "Prioritize run " (run.id) } { "Prioritize" }
                                    }
                                } }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub(super) async fn drain_all(
    State(state): State<AppState>,
    PathParam(key): PathParam<String>,
    _: CheckedForm,
) -> UiResult {
    let pool = lookup::pool(&state, &key).await?;
    pool_ops::set_drained(&state, &pool.id.to_string(), true).await?;
    Ok(Redirect::to(&format!("/ui/pools/{}", pool.id)).into_response())
}

pub(super) async fn undrain_all(
    State(state): State<AppState>,
    PathParam(key): PathParam<String>,
    _: CheckedForm,
) -> UiResult {
    let pool = lookup::pool(&state, &key).await?;
    pool_ops::set_drained(&state, &pool.id.to_string(), false).await?;
    Ok(Redirect::to(&format!("/ui/pools/{}", pool.id)).into_response())
}

pub(super) async fn drain_worker(
    State(state): State<AppState>,
    PathParam(key): PathParam<String>,
    _: CheckedForm,
) -> UiResult {
    back_to_pool(worker_ops::set_drained(&state, &key, true).await?)
}

pub(super) async fn undrain_worker(
    State(state): State<AppState>,
    PathParam(key): PathParam<String>,
    _: CheckedForm,
) -> UiResult {
    back_to_pool(worker_ops::set_drained(&state, &key, false).await?)
}

fn back_to_pool(drained: api::Drained) -> UiResult {
    let to = drained
        .workers
        .first()
        .map_or_else(|| "/ui/pools".to_owned(), |worker| format!("/ui/pools/{}", worker.pool_id));
    Ok(Redirect::to(&to).into_response())
}

pub(super) async fn prioritize(
    State(state): State<AppState>,
    PathParam(key): PathParam<String>,
    _: CheckedForm,
) -> Response {
    match run_ops::prioritize_run(&state, &key).await {
        Ok(run) => Redirect::to(&format!("/ui/pools/{}/queue", run.pool_id)).into_response(),
        Err(error) => super::layout::error_page(error),
    }
}
