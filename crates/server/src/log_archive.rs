//! Where run logs live: in the database while the run is live (chunks arrive in order
//! and followers read the newest), then, shortly after the run ended, as one object in
//! the blob store (`runs/<id>/log`, JSON lines of `{seq, text, at}`), recorded as the
//! run's `log` blob and removed from the database. The database then holds only live
//! logs, however many runs the server has seen.
//!
//! The move is crash-safe in any order of failure: the object is written, then recorded,
//! then the chunks are deleted; a process that dies in between leaves chunks that the next
//! pass archives again (over the same key).

use std::time::Duration;

use axum::body::Bytes;
use futures_util::TryStreamExt;
use gantry_domain::{RunId, Timestamp};
use gantry_store::{BlobRecord, LogChunkRecord};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::state::{AppState, now};

/// The run's blob purpose for its archived log.
const LOG: &str = "log";
/// How often the archiver looks for ended runs, cluster-wide.
const INTERVAL: Duration = Duration::from_secs(5);
/// Runs archived per pass: a backlog drains over several passes.
const BATCH: u32 = 100;
/// The largest archive written (a run's log is far smaller).
const MAX_ARCHIVE: u64 = 1024 * 1024 * 1024;

#[derive(Serialize, Deserialize)]
struct ArchivedChunk {
    seq: u64,
    text: String,
    at: i64,
}

fn key(run_id: RunId) -> String {
    format!("runs/{}/log", run_id.to_string().to_ascii_lowercase())
}

/// The run's log chunks from `from_seq`, at most `limit`, wherever they are now.
pub(crate) async fn read(
    state: &AppState,
    run_id: RunId,
    from_seq: u64,
    limit: u32,
) -> Result<Vec<LogChunkRecord>, ApiError> {
    let live = state.store.read_logs(run_id, from_seq, limit).await?;
    if !live.is_empty() {
        return Ok(live);
    }
    // Nothing here: the log is empty, read to its end, or archived.
    let Some(blob) = state.store.run_blob(run_id, LOG).await? else { return Ok(live) };
    let chunks = read_archive(state, &blob).await?;
    Ok(chunks.into_iter().filter(|chunk| chunk.seq >= from_seq).take(limit as usize).collect())
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

/// Moves the logs of runs that ended a while ago to the blob store, once per interval
/// across every server process sharing the store.
pub(crate) async fn run_archiver(state: AppState) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(INTERVAL) => {}
            () = state.shutdown.cancelled() => return,
        }
        if let Err(error) = archive_once(&state).await {
            tracing::warn!(%error, "archiving run logs failed; retrying on the next interval");
        }
    }
}

/// One pass; returns how many runs' logs moved.
pub(crate) async fn archive_once(state: &AppState) -> Result<usize, ApiError> {
    let now = now();
    if !state.store.claim_periodic("log-archive", INTERVAL.mul_f64(0.9), now).await? {
        return Ok(0);
    }
    // Launchers upload every chunk before reporting the end: the wait is a margin, and
    // followers reading the end of a log just finished find it where they left it.
    let after = i64::try_from(state.timings.log_archive_after.as_millis()).unwrap_or(i64::MAX);
    let ended_before = Timestamp::from_unix_millis(now.unix_millis().saturating_sub(after));
    let runs = state.store.runs_with_logs_to_archive(ended_before, BATCH).await?;
    for run_id in &runs {
        archive(state, *run_id).await?;
    }
    if !runs.is_empty() {
        tracing::info!(runs = runs.len(), "run logs moved to the blob store");
    }
    Ok(runs.len())
}

async fn archive(state: &AppState, run_id: RunId) -> Result<(), ApiError> {
    let mut lines = Vec::new();
    let mut next = 0;
    loop {
        let page = state.store.read_logs(run_id, next, 5000).await?;
        let Some(last) = page.last() else { break };
        next = last.seq + 1;
        for chunk in page {
            let archived =
                ArchivedChunk { seq: chunk.seq, text: chunk.text, at: chunk.at.unix_millis() };
            let mut line = serde_json::to_vec(&archived).map_err(|error| {
                ApiError::Internal(format!("cannot encode a log chunk: {error}"))
            })?;
            line.push(b'\n');
            lines.push(Bytes::from(line));
        }
    }
    let key = key(run_id);
    let body: gantry_store::BlobStream =
        Box::pin(futures_util::stream::iter(lines.into_iter().map(Ok)));
    let written = state.blobs.put(&key, body, MAX_ARCHIVE).await?;
    let blob = BlobRecord { key, sha256: written.sha256, size: written.size, created_at: now() };
    state.store.put_run_blob(run_id, LOG, &blob).await?;
    state.store.delete_logs(run_id).await?;
    Ok(())
}
