//! A run's page: its facts, its state timeline with durations, the actions valid now
//! (confirm, discard, stop), its outputs (sensitive values hidden) and its log with ANSI
//! colours. One server-sent event stream keeps it live: `log` events carry the next
//! pieces of the log as escaped HTML, `panel` events the run's panel rendered again.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Redirect, Response};
use gantry_proto::api;
use gantry_store::{LogChunkRecord, RunRecord};
use maud::{Markup, PreEscaped, html};

use super::ansi::AnsiHtml;
use super::layout::{UiResult, badge, clock, duration, error_page, page, time};
use super::session::{CheckedForm, UiSession, token_field};
use super::stacks::commit;
use crate::api::logs::{RunEvents, follow_run};
use crate::api::runs::{RunAction, act_on_run};
use crate::error::{ApiError, PathParam};
use crate::state::AppState;
use crate::{log_archive, lookup, views};

/// Log chunks read per store call when rendering the page.
const LOG_PAGE: u32 = 1000;

pub(super) async fn show(
    State(state): State<AppState>,
    session: UiSession,
    PathParam(key): PathParam<String>,
) -> UiResult {
    let record = lookup::run(&state, &key).await?;
    let run = views::run(&state, &record).await?;
    let (log, next_seq) = whole_log(&state, &record).await?;
    let panel = run_panel(&run, &session);
    let live = format!("/ui/runs/{}/live?from={next_seq}", run.id);
    let body = html! {
        h1 { "Run " code { (run.id) } }
        p.subtitle {
            (run.run_type.to_string()) " run of stack "
            a href={ "/ui/stacks/" (run.stack_id) } { (run.stack_name) }
        }
        div #run data-live=(live) {
            div #run-panel data-panel { (panel) }
            section.log aria-labelledby="log-heading" {
                h2 #log-heading { "Log" }
                pre #log role="log" tabindex="0" aria-label="Run log" data-log {
                    (PreEscaped(log))
                }
            }
        }
    };
    Ok(page(&format!("Run {}", run.id), Some(&session), body).into_response())
}

/// The log so far as HTML, and the sequence number of the chunk that comes next.
async fn whole_log(state: &AppState, run: &RunRecord) -> Result<(String, u64), ApiError> {
    let mut converter = AnsiHtml::new();
    log_until(state, run, &mut converter, u64::MAX).await
}

/// The log before chunk `until` through `converter`, as HTML, and the sequence number of
/// the chunk that comes next.
async fn log_until(
    state: &AppState,
    run: &RunRecord,
    converter: &mut AnsiHtml,
    until: u64,
) -> Result<(String, u64), ApiError> {
    let mut html = String::new();
    let mut next = 0;
    while next < until {
        let chunks = log_archive::read(state, run.id, next, LOG_PAGE).await?;
        let full = chunks.len() as u32 == LOG_PAGE;
        for chunk in chunks.into_iter().take_while(|chunk| chunk.seq < until) {
            next = chunk.seq + 1;
            html.push_str(&converter.push(&chunk.text));
        }
        if !full {
            break;
        }
    }
    Ok((html, next))
}

/// Everything about the run but its log: what the live stream replaces when it changes.
fn run_panel(run: &api::Run, session: &UiSession) -> Markup {
    html! {
        div.run-summary {
            p.state { "State " (badge(&run.state.to_string()))
                @if run.stop_requested { " " span.badge { "stop requested" } } }
            (actions(run, session))
        }
        @if let Some(failure) = &run.failure {
            p.error role="alert" { "Failed: " (failure) }
        }
        @if let Some(reason) = &run.waiting_reason {
            p.waiting { (reason) }
        }
        @if run.state == gantry_domain::RunState::Unconfirmed {
            p.notice { "The plan waits for a confirmation: confirm to apply it, or discard it." }
        }
        dl.facts {
            dt { "Commit" } dd { (commit(run)) }
            dt { "Triggered" } dd { (time(run.created_at)) " by " (run.triggered_by) }
            @if let Some(command) = &run.command { dt { "Command" } dd { code { (command) } } }
            dt { "Worker" } dd { @match run.worker_id {
                Some(worker) => code { (worker) },
                None => span.muted { "none" },
            } }
        }
        div.columns {
            section aria-labelledby="timeline-heading" {
                h2 #timeline-heading { "Timeline" }
                (timeline(run))
            }
            section aria-labelledby="outputs-heading" {
                h2 #outputs-heading { "Outputs" }
                (outputs(&run.outputs))
            }
        }
    }
}

/// The buttons for what may be done to the run now, and only those.
fn actions(run: &api::Run, session: &UiSession) -> Markup {
    let offered: Vec<(RunAction, &str, &str)> = [
        (RunAction::Confirm, "confirm", "Confirm"),
        (RunAction::Discard, "discard", "Discard"),
        (RunAction::Stop, "stop", "Stop"),
    ]
    .into_iter()
    .filter(|(action, _, _)| action.allowed(run))
    .collect();
    html! {
        @if !offered.is_empty() {
            div.toolbar.run-actions {
                @for (_, slug, label) in offered {
                    form method="post" action={ "/ui/runs/" (run.id) "/" (slug) } data-enhance {
                        (token_field(session))
                        button id=(slug) type="submit" class=(slug) { (label) }
                    }
                }
            }
        }
    }
}

/// Every state the run went through, when, and for how long.
fn timeline(run: &api::Run) -> Markup {
    html! {
        ol.timeline {
            @for (index, change) in run.history.iter().enumerate() {
                li {
                    (badge(&change.state.to_string())) " "
                    (clock(change.at))
                    @match run.history.get(index + 1) {
                        Some(next) => { " " (duration(change.at, next.at)) }
                        None if change.state.is_terminal() => {}
                        None => { " " span.muted { "now" } }
                    }
                }
            }
        }
        @if let (Some(first), Some(last)) = (run.history.first(), run.history.last())
            && last.state.is_terminal() {
            p.total { "Took " (duration(first.at, last.at)) " in all." }
        }
    }
}

fn outputs(outputs: &[api::Output]) -> Markup {
    html! {
        @if outputs.is_empty() {
            p.muted { "None yet." }
        } @else {
            table #outputs {
                caption.visually-hidden { "Outputs" }
                tbody {
                    @for output in outputs {
                        tr {
                            th scope="row" { code { (output.name) } }
                            td { @match (&output.value, output.sensitive) {
                                (_, true) => span.muted { "sensitive, hidden" },
                                (Some(value), false) => code { (value.to_string()) },
                                (None, false) => span.muted { "null" },
                            } }
                        }
                    }
                }
            }
        }
    }
}

/// The run page's live stream. A browser reconnecting names the next chunk it needs in
/// `Last-Event-ID`, so the log never repeats or skips.
pub(super) async fn live(
    State(state): State<AppState>,
    session: UiSession,
    PathParam(key): PathParam<String>,
    axum::extract::Query(query): axum::extract::Query<LiveQuery>,
    headers: HeaderMap,
) -> UiResult {
    let run = lookup::run(&state, &key).await?;
    let resumed = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok());
    let from = resumed.unwrap_or(query.from);
    // The colours in effect where the browser's log ends: a style may run on across
    // the chunk the page (or the last connection) ended with.
    let mut converter = AnsiHtml::new();
    log_until(&state, &run, &mut converter, from).await?;
    let events = HtmlEvents { session, converter, sent: None };
    Ok(follow_run(state, run.id, from, events).into_response())
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct LiveQuery {
    #[serde(default)]
    from: u64,
}

struct HtmlEvents {
    session: UiSession,
    converter: AnsiHtml,
    /// The panel's HTML last sent, so that an unchanged panel is not sent again.
    sent: Option<String>,
}

impl RunEvents for HtmlEvents {
    fn chunk(&mut self, record: LogChunkRecord) -> Option<Event> {
        let html = self.converter.push(&record.text);
        Some(Event::default().event("log").id((record.seq + 1).to_string()).data(html))
    }

    async fn run(&mut self, state: &AppState, run: &RunRecord) -> Result<Option<Event>, ApiError> {
        let view = views::run(state, run).await?;
        let html = run_panel(&view, &self.session).into_string();
        if self.sent.as_deref() == Some(html.as_str()) {
            return Ok(None);
        }
        let event = Event::default().event("panel").data(&html);
        self.sent = Some(html);
        Ok(Some(event))
    }

    fn end(&mut self, _run: &RunRecord) -> Option<Event> {
        // Tells the script to close the stream: a browser would otherwise reconnect.
        Some(Event::default().event("end").data("ended"))
    }
}

pub(super) async fn confirm(
    state: State<AppState>,
    key: PathParam<String>,
    _: CheckedForm,
) -> Response {
    act(state, key, RunAction::Confirm).await
}

pub(super) async fn discard(
    state: State<AppState>,
    key: PathParam<String>,
    _: CheckedForm,
) -> Response {
    act(state, key, RunAction::Discard).await
}

pub(super) async fn stop(
    state: State<AppState>,
    key: PathParam<String>,
    _: CheckedForm,
) -> Response {
    act(state, key, RunAction::Stop).await
}

async fn act(
    State(state): State<AppState>,
    PathParam(key): PathParam<String>,
    action: RunAction,
) -> Response {
    match act_on_run(&state, &key, action).await {
        Ok(run) => Redirect::to(&format!("/ui/runs/{}", run.id)).into_response(),
        Err(error) => error_page(error),
    }
}
