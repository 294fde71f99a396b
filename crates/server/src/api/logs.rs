//! Run logs: pages for scripts, and a server-sent event stream that follows a run live
//! (`log` chunks, `state` changes, then `end`). A client that reconnects with `from=` the
//! next sequence number misses nothing and sees nothing twice.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use gantry_domain::{RunId, RunState};
use gantry_proto::api::{LogChunk, LogPage, StreamEnd};
use gantry_store::{LogChunkRecord, RunRecord};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::{ApiError, ApiResult, Json, PathParam, QueryParams};
use crate::state::AppState;
use crate::{log_archive, lookup, views};

const PAGE: u32 = 500;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PageQuery {
    #[serde(default)]
    from: u64,
    limit: Option<u32>,
}

fn chunk(record: LogChunkRecord) -> LogChunk {
    LogChunk { seq: record.seq, text: record.text, at: record.at }
}

pub(super) async fn page(
    State(state): State<AppState>,
    PathParam(key): PathParam<String>,
    QueryParams(query): QueryParams<PageQuery>,
) -> ApiResult<Json<LogPage>> {
    let run = lookup::run(&state, &key).await?;
    let limit = query.limit.unwrap_or(PAGE).clamp(1, 5000);
    let records = log_archive::read(&state, run.id, query.from, limit).await?;
    let next_seq = records.last().map_or(query.from, |last| last.seq + 1);
    let complete = run.state.is_terminal() && (records.len() as u32) < limit;
    Ok(Json(LogPage { chunks: records.into_iter().map(chunk).collect(), next_seq, complete }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StreamQuery {
    #[serde(default)]
    from: u64,
}

pub(super) async fn stream(
    State(state): State<AppState>,
    PathParam(key): PathParam<String>,
    QueryParams(query): QueryParams<StreamQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let run = lookup::run(&state, &key).await?;
    Ok(follow_run(state, run.id, query.from, JsonEvents { last_state: None }))
}

/// What a follower of a run sends: the API's JSON events, or the UI's HTML.
pub(crate) trait RunEvents: Send + 'static {
    /// The event for one log chunk; `None` ends the stream.
    fn chunk(&mut self, record: LogChunkRecord) -> Option<Event>;

    /// The event, if any, for the run as it is now (after a change, and once at start).
    fn run(
        &mut self,
        state: &AppState,
        run: &RunRecord,
    ) -> impl Future<Output = Result<Option<Event>, ApiError>> + Send;

    /// The last event, once the run ended and its whole log was sent.
    fn end(&mut self, run: &RunRecord) -> Option<Event>;
}

/// The API's stream: `log` chunks as JSON, `state` when the state changes, then `end`.
struct JsonEvents {
    last_state: Option<RunState>,
}

impl RunEvents for JsonEvents {
    fn chunk(&mut self, record: LogChunkRecord) -> Option<Event> {
        Event::default().event("log").json_data(chunk(record)).ok()
    }

    async fn run(&mut self, state: &AppState, run: &RunRecord) -> Result<Option<Event>, ApiError> {
        if self.last_state == Some(run.state) {
            return Ok(None);
        }
        self.last_state = Some(run.state);
        let view = views::run(state, run).await?;
        Ok(Event::default().event("state").json_data(view).ok())
    }

    fn end(&mut self, run: &RunRecord) -> Option<Event> {
        Event::default().event("end").json_data(StreamEnd { state: run.state }).ok()
    }
}

/// A server-sent event stream following one run from log sequence `from`.
pub(crate) fn follow_run(
    state: AppState,
    run_id: RunId,
    from: u64,
    events: impl RunEvents,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(follow(state, run_id, from, events, sender));
    let events = ReceiverStream::new(receiver);
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// Feeds one follower until the run ended and every chunk was sent, the client went
/// away, or the server shuts down.
async fn follow(
    state: AppState,
    run_id: RunId,
    mut next: u64,
    mut events: impl RunEvents,
    sender: mpsc::Sender<Result<Event, Infallible>>,
) {
    // Subscribe before reading, so that a change between a read and the wait is seen.
    let mut changes = state.events.subscribe_runs();
    loop {
        let Ok(records) = log_archive::read(&state, run_id, next, PAGE).await else { return };
        let drained = (records.len() as u32) < PAGE;
        for record in records {
            next = record.seq + 1;
            let Some(event) = events.chunk(record) else { return };
            if sender.send(Ok(event)).await.is_err() {
                return;
            }
        }
        if !drained {
            continue;
        }
        let Ok(Some(run)) = state.store.get_run(run_id).await else { return };
        match events.run(&state, &run).await {
            Ok(Some(event)) => {
                if sender.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            Ok(None) => {}
            Err(_) => return,
        }
        if run.state.is_terminal() {
            // Launchers upload every log chunk before reporting the end, so the log is
            // complete once the run has ended and the read above drained it.
            if let Some(event) = events.end(&run) {
                let _ = sender.send(Ok(event)).await;
            }
            return;
        }
        loop {
            tokio::select! {
                received = changes.recv() => match received {
                    Ok(changed) if changed != run_id => continue,
                    Ok(_) | Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => return,
                },
                () = sender.closed() => return,
                () = state.shutdown.cancelled() => return,
            }
        }
    }
}
