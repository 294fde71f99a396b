//! Where run logs live: in the database while the run is live (chunks arrive in order
//! and followers read the newest), then, shortly after the run ended, as one object in
//! the blob store (`runs/<id>/log-<token>`, JSON lines of `{seq, text, at}`), recorded as
//! the run's `log` blob and removed from the database. The database then holds only live
//! logs, however many runs the server has seen.
//!
//! A log over the per-run limit (`GANTRY_SERVER_MAX_RUN_LOG_SIZE`) keeps its head and its
//! tail in the store; readers and the archive see one line saying what was cut between.
//!
//! The move is crash-safe in any order of failure: the log is sealed (appends are refused
//! from then on, so the archive is the whole log), the object is written under a key of
//! its own, recorded unless the run has an archive already (which is never replaced),
//! then the chunks are deleted; a process that dies in between leaves chunks that the
//! next pass archives again. The archive is streamed page by page from the database into
//! the blob store, so a pass holds one page in memory whatever a log's size, and a run
//! whose archive fails waits (with backoff) without holding the others back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use futures_util::TryStreamExt;
use gantry_domain::{RunId, Timestamp};
use gantry_store::{BlobRecord, LogChunkRecord, LogCutRecord, Store};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::state::{AppState, now};

/// The run's blob purpose for its archived log.
const LOG: &str = "log";
/// How often the archiver looks for ended runs, cluster-wide.
const INTERVAL: Duration = Duration::from_secs(5);
/// Runs archived per pass: a backlog drains over several passes.
const BATCH: u32 = 100;
/// The largest archive written (a run's log is far smaller: it is capped per run).
const MAX_ARCHIVE: u64 = 1024 * 1024 * 1024;
/// Chunks read from the database at a time while archiving: launchers send chunks of at
/// most 64 KiB, so a page is a few MiB at most.
const PAGE: u32 = 64;
/// The longest a run whose archive keeps failing waits before the next try.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(600);

#[derive(Serialize, Deserialize)]
struct ArchivedChunk {
    seq: u64,
    text: String,
    at: i64,
}

/// A fresh key for one archive of the run: an archive already written is never written
/// over, even by two passes archiving the same run at once.
fn key(run_id: RunId) -> String {
    let token = crate::agent::blobs::fresh_token();
    format!("runs/{}/log-{token}", run_id.to_string().to_ascii_lowercase())
}

/// The line standing for the chunks the per-run limit cut, as the chunk numbered like the
/// first of them. It starts a line of its own after a head that ends mid-line.
fn cut_chunk(
    cut: &LogCutRecord,
    limit: u64,
    after_line_end: bool,
    at: Timestamp,
) -> LogChunkRecord {
    let newline = if after_line_end { "" } else { "\n" };
    LogChunkRecord {
        seq: cut.at_seq,
        text: format!(
            "{newline}[gantry] {} bytes ({} chunks) of this log were cut here: a run keeps at most {limit} bytes of log (GANTRY_SERVER_MAX_RUN_LOG_SIZE), its beginning and its end\n",
            cut.bytes, cut.chunks
        ),
        at,
    }
}

/// The run's log chunks from `from_seq`, at most `limit`, wherever they are now.
pub(crate) async fn read(
    state: &AppState,
    run_id: RunId,
    from_seq: u64,
    limit: u32,
) -> Result<Vec<LogChunkRecord>, ApiError> {
    let mut live = state.store.read_logs(run_id, from_seq, limit).await?;
    if !live.is_empty() {
        if let Some(cut) = state.store.log_cut(run_id).await? {
            insert_cut(state, run_id, &mut live, from_seq, &cut).await?;
            live.truncate(limit as usize);
        }
        return Ok(live);
    }
    // Nothing here: the log is empty, read to its end, or archived.
    let Some(blob) = state.store.run_blob(run_id, LOG).await? else { return Ok(live) };
    let chunks = read_archive(state, &blob).await?;
    Ok(chunks.into_iter().filter(|chunk| chunk.seq >= from_seq).take(limit as usize).collect())
}

/// Puts the cut line into a page of live chunks, where the kept tail begins.
async fn insert_cut(
    state: &AppState,
    run_id: RunId,
    page: &mut Vec<LogChunkRecord>,
    from_seq: u64,
    cut: &LogCutRecord,
) -> Result<(), ApiError> {
    if from_seq > cut.at_seq {
        return Ok(());
    }
    // A page of head chunks only does not reach the cut: the tail keeps the newest chunk.
    let Some(position) = page.iter().position(|chunk| chunk.seq > cut.at_seq) else {
        return Ok(());
    };
    let (after_line_end, at) = match position.checked_sub(1).map(|before| &page[before]) {
        Some(previous) => (previous.text.ends_with('\n'), previous.at),
        None if cut.at_seq == 0 => (true, page[0].at),
        None => {
            let previous = state.store.read_logs(run_id, cut.at_seq - 1, 1).await?;
            previous
                .first()
                .map_or((true, page[0].at), |chunk| (chunk.text.ends_with('\n'), chunk.at))
        }
    };
    page.insert(position, cut_chunk(cut, state.max_run_log_size, after_line_end, at));
    Ok(())
}

async fn read_archive(
    state: &AppState,
    blob: &BlobRecord,
) -> Result<Vec<LogChunkRecord>, ApiError> {
    let missing = || ApiError::Internal(format!("the archived log {} is missing", blob.key));
    let (_, body) = state.blobs.get(&blob.key).await?.ok_or_else(missing)?;
    let bytes: Vec<u8> = body
        .try_fold(Vec::new(), |mut all, part| async move {
            all.extend_from_slice(&part);
            Ok(all)
        })
        .await
        .map_err(|error| ApiError::Internal(format!("cannot read {}: {error}", blob.key)))?;
    if gantry_crypto::sha256_hex(&bytes) != blob.sha256 {
        return Err(ApiError::Internal(format!(
            "the archived log {} does not match its recorded digest",
            blob.key
        )));
    }
    String::from_utf8_lossy(&bytes)
        .lines()
        .map(|line| {
            let chunk: ArchivedChunk = serde_json::from_str(line).map_err(|error| {
                ApiError::Internal(format!("the archived log {} does not parse: {error}", blob.key))
            })?;
            Ok(LogChunkRecord {
                seq: chunk.seq,
                text: chunk.text,
                at: Timestamp::from_unix_millis(chunk.at),
            })
        })
        .collect()
}

/// Runs whose archive failed, and when each may be tried again.
#[derive(Debug, Default)]
pub(crate) struct Retries {
    failing: HashMap<RunId, Retry>,
}

#[derive(Debug)]
struct Retry {
    failures: u32,
    next: Instant,
}

impl Retries {
    /// The runs still waiting for their next try.
    fn waiting(&mut self, now: Instant) -> Vec<RunId> {
        self.failing.iter().filter(|(_, retry)| retry.next > now).map(|(id, _)| *id).collect()
    }

    /// Records a failure; returns how long the run waits: the interval, doubled with each
    /// failure in a row, up to `MAX_RETRY_DELAY`.
    fn failed(&mut self, run_id: RunId, now: Instant) -> Duration {
        let retry = self.failing.entry(run_id).or_insert(Retry { failures: 0, next: now });
        retry.failures = retry.failures.saturating_add(1);
        let delay = INTERVAL
            .saturating_mul(1 << retry.failures.saturating_sub(1).min(16))
            .min(MAX_RETRY_DELAY);
        retry.next = now + delay;
        delay
    }

    fn succeeded(&mut self, run_id: RunId) {
        self.failing.remove(&run_id);
    }
}

/// Moves the logs of runs that ended a while ago to the blob store, once per interval
/// across every server process sharing the store.
pub(crate) async fn run_archiver(state: AppState) {
    let mut retries = Retries::default();
    loop {
        tokio::select! {
            () = tokio::time::sleep(INTERVAL) => {}
            () = state.shutdown.cancelled() => return,
        }
        if let Err(error) = archive_once(&state, &mut retries).await {
            tracing::warn!(%error, "archiving run logs failed; retrying on the next interval");
        }
    }
}

/// One pass; returns how many runs' logs moved. A run whose archive fails is logged and
/// left out of the passes until its retry is due; the others go on.
pub(crate) async fn archive_once(
    state: &AppState,
    retries: &mut Retries,
) -> Result<usize, ApiError> {
    let now = now();
    if !state.store.claim_periodic("log-archive", INTERVAL.mul_f64(0.9), now).await? {
        return Ok(0);
    }
    // Launchers upload every chunk before reporting the end: the wait is a margin, and
    // followers reading the end of a log just finished find it where they left it.
    let after = i64::try_from(state.timings.log_archive_after.as_millis()).unwrap_or(i64::MAX);
    let ended_before = Timestamp::from_unix_millis(now.unix_millis().saturating_sub(after));
    let skip = retries.waiting(Instant::now());
    let runs = state.store.runs_with_logs_to_archive(ended_before, &skip, BATCH).await?;
    let mut moved = 0;
    for run_id in &runs {
        match archive(state, *run_id).await {
            Ok(()) => {
                retries.succeeded(*run_id);
                moved += 1;
            }
            Err(error) => {
                let delay = retries.failed(*run_id, Instant::now());
                tracing::warn!(
                    run = %run_id,
                    %error,
                    "archiving the run's log failed; trying it again in {}",
                    humantime::format_duration(delay)
                );
            }
        }
    }
    if moved > 0 {
        tracing::info!(runs = moved, "run logs sealed and moved to the blob store");
    }
    Ok(moved)
}

async fn archive(state: &AppState, run_id: RunId) -> Result<(), ApiError> {
    // Sealed first: an append that raced this is in the chunks read below, or refused.
    state.store.seal_log(run_id, now()).await?;
    let archived = state.store.run_blob(run_id, LOG).await?.is_some();
    let has_chunks = !state.store.read_logs(run_id, 0, 1).await?.is_empty();
    if !archived && has_chunks {
        let cut = state.store.log_cut(run_id).await?;
        let key = key(run_id);
        let body = archive_stream(Arc::clone(&state.store), run_id, cut, state.max_run_log_size);
        let written = state.blobs.put(&key, body, MAX_ARCHIVE).await?;
        let blob =
            BlobRecord { key, sha256: written.sha256, size: written.size, created_at: now() };
        if !state.store.put_run_blob_once(run_id, LOG, &blob).await? {
            // Another pass archived the run meanwhile: its archive stays, this copy goes.
            crate::agent::blobs::forget_blob(state, blob.key).await?;
        }
    }
    // Archived now (or before a crash left its chunks): they are all in the archive.
    state.store.delete_logs(run_id).await?;
    Ok(())
}

/// The archive's bytes, read from the store a page at a time as the blob store takes them.
fn archive_stream(
    store: Arc<dyn Store>,
    run_id: RunId,
    cut: Option<LogCutRecord>,
    limit: u64,
) -> gantry_store::BlobStream {
    struct Cursor {
        store: Arc<dyn Store>,
        next: u64,
        cut: Option<LogCutRecord>,
        after_line_end: bool,
        last_at: Option<Timestamp>,
    }
    let cursor = Cursor { store, next: 0, cut, after_line_end: true, last_at: None };
    Box::pin(futures_util::stream::try_unfold(cursor, move |mut cursor| async move {
        let page = cursor.store.read_logs(run_id, cursor.next, PAGE).await.map_err(|error| {
            std::io::Error::other(format!("cannot read run {run_id}'s log: {error}"))
        })?;
        let Some(last) = page.last() else { return Ok(None) };
        cursor.next = last.seq + 1;
        let mut bytes = Vec::new();
        for chunk in page {
            if let Some(cut) = cursor.cut.filter(|cut| chunk.seq > cut.at_seq) {
                let at = cursor.last_at.unwrap_or(chunk.at);
                encode(&mut bytes, cut_chunk(&cut, limit, cursor.after_line_end, at))?;
                cursor.cut = None;
            }
            cursor.after_line_end = chunk.text.ends_with('\n');
            cursor.last_at = Some(chunk.at);
            encode(&mut bytes, chunk)?;
        }
        Ok(Some((Bytes::from(bytes), cursor)))
    }))
}

fn encode(into: &mut Vec<u8>, chunk: LogChunkRecord) -> std::io::Result<()> {
    let archived = ArchivedChunk { seq: chunk.seq, text: chunk.text, at: chunk.at.unix_millis() };
    serde_json::to_writer(&mut *into, &archived)
        .map_err(|error| std::io::Error::other(format!("cannot encode a log chunk: {error}")))?;
    into.push(b'\n');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_runs_back_off_and_others_are_not_held() {
        let mut retries = Retries::default();
        let (failing, other) = (RunId::generate(), RunId::generate());
        let start = Instant::now();
        assert_eq!(retries.failed(failing, start), INTERVAL);
        assert_eq!(retries.waiting(start), [failing]);
        assert_eq!(retries.failed(failing, start), INTERVAL * 2, "doubles");
        for _ in 0..20 {
            retries.failed(failing, start);
        }
        assert_eq!(retries.failed(failing, start), MAX_RETRY_DELAY, "bounded");
        assert!(retries.waiting(start + MAX_RETRY_DELAY).is_empty(), "due again");
        retries.succeeded(failing);
        retries.failed(other, start);
        assert_eq!(retries.waiting(start), [other]);
    }

    #[test]
    fn the_cut_line_starts_a_line_of_its_own() {
        let cut = LogCutRecord { at_seq: 3, chunks: 2, bytes: 1024 };
        let at = Timestamp::from_unix_millis(5);
        let after_line = cut_chunk(&cut, 4096, true, at);
        assert_eq!(after_line.seq, 3);
        assert!(
            after_line.text.starts_with("[gantry] 1024 bytes (2 chunks)"),
            "{}",
            after_line.text
        );
        assert!(after_line.text.ends_with('\n'));
        assert!(cut_chunk(&cut, 4096, false, at).text.starts_with("\n[gantry]"));
    }
}
