//! The run log relay: text appended in order is masked (`GANTRY_MASK_ENVS`, secret stack
//! variables, sensitive inputs once opened), gets consecutive sequence numbers and is
//! uploaded in batches by one task. A failed upload is retried with the same numbers, so
//! the server (which skips chunks it has) ends up with every chunk exactly once. Reports
//! that follow the log are masked with the same values.
//!
//! Batches are bounded by bytes as well as chunks, well under the server's body limit; a
//! batch the server still finds too large (413) is halved and sent again. The relay
//! never gives up on a log while its run lives: only a server saying the log is sealed
//! (the run ended and its log was archived) or the run is gone stops it. What waits for
//! the server waits in the run's `backlog`, on disk beyond a few MiB, within the
//! launcher's log buffer; and in its `tail` on disk until the server has it, for the
//! launcher that recovers the run if this one dies.

mod backlog;
mod tail;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use gantry_domain::RunId;
use gantry_proto::agent::{LogUpload, RunReport};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, shown};
use crate::client::{AgentClient, ClientError};
use crate::mask::Masker;
use backlog::Backlog;
pub(crate) use backlog::{DEFAULT_LOG_BUFFER_SIZE, LOG_BUFFER_SIZE, LogBufferBudget};
pub(crate) use tail::read_left as undelivered_tail;

/// Chunks larger than this are split: keeps each request well under the server's limit.
const MAX_CHUNK_BYTES: usize = 64 * 1024;
const MAX_BATCH_CHUNKS: usize = 256;
/// The most text one upload carries. JSON escaping at most sextuples text (`\u001b`), so
/// a batch stays under the server's 8 MiB body limit whatever the tool prints.
const MAX_BATCH_BYTES: usize = 1024 * 1024;

#[derive(Debug)]
struct Buffer {
    masker: Masker,
    /// Also print each chunk on standard output (`GANTRY_RUN_LOGS_ON_STANDARD_OUTPUT_ENABLED`).
    echo: Option<RunId>,
    backlog: Backlog,
    last_activity: Instant,
}

#[derive(Debug)]
struct Shared {
    buffer: Mutex<Buffer>,
    wake: Notify,
    /// The first sequence number the server does not have yet.
    uploaded: watch::Sender<u64>,
    /// Set when uploading cannot go on (the run is gone): flushes stop waiting.
    abandoned: CancellationToken,
}

/// Appends to one run's log. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct LogRelay {
    shared: Arc<Shared>,
}

impl LogRelay {
    /// Starts relaying a run's log whose next chunk is `first_seq`; nothing `masker`
    /// masks is uploaded (or printed, with `echo`). What the server cannot take yet is
    /// kept in `spool_dir` beyond a few MiB, within `budget`, and written ahead there
    /// until the server has it.
    pub(crate) fn start(
        client: Arc<AgentClient>,
        run_id: RunId,
        first_seq: u64,
        masker: Masker,
        echo: bool,
        spool_dir: &Path,
        budget: Arc<LogBufferBudget>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let shared = Arc::new(Shared {
            buffer: Mutex::new(Buffer {
                masker,
                echo: echo.then_some(run_id),
                backlog: Backlog::new(first_seq, spool_dir, run_id, budget),
                last_activity: Instant::now(),
            }),
            wake: Notify::new(),
            uploaded: watch::channel(first_seq).0,
            // The launcher leaving for good ends the uploads with its other deliveries.
            abandoned: client.deliveries_abandoned().child_token(),
        });
        let task = tokio::spawn(upload(client, run_id, Arc::clone(&shared)));
        (Self { shared }, task)
    }

    fn buffer(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.shared.buffer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds text to the log; it is uploaded as soon as the uploader is free.
    pub(crate) fn append(&self, text: &str) {
        if text.is_empty() {
            return;
        }
        let mut buffer = self.buffer();
        buffer.last_activity = Instant::now();
        buffer.append(text);
        drop(buffer);
        self.shared.wake.notify_one();
    }

    /// Masks `values` too in what is appended from now on, and in reports: values the
    /// launcher opened for the run (sensitive inputs), before the worker prints anything.
    pub(crate) fn mask_also<'a>(&self, values: impl IntoIterator<Item = &'a str>) {
        self.buffer().mask_also(values);
        self.shared.wake.notify_one();
    }

    /// `report` with the values this log masks masked in its texts too (a failure's
    /// message, outputs), for the server.
    pub(crate) fn masked_report(&self, report: RunReport) -> RunReport {
        self.buffer().masker.masked_report(report)
    }

    /// The sequence number of the next chunk: after a flush, the first one the server
    /// does not have, from which another process may go on with the log.
    pub(crate) fn next_seq(&self) -> u64 {
        self.buffer().backlog.next_seq()
    }

    /// When the run last produced output.
    pub(crate) fn last_activity(&self) -> Instant {
        self.buffer().last_activity
    }

    /// Waits until everything appended so far is on the server. Text held back in case
    /// it begins a masked value goes too: a report or the end of the run comes next, and
    /// no value spans those.
    pub(crate) async fn flush(&self) {
        let target = {
            let mut buffer = self.buffer();
            let held = buffer.masker.finish();
            buffer.enqueue(&held);
            buffer.say_what_was_dropped();
            buffer.backlog.next_seq()
        };
        self.shared.wake.notify_one();
        let mut uploaded = self.shared.uploaded.subscribe();
        // Lower than `target` once the backlog lost chunks and numbered on from them.
        let target = || target.min(self.buffer().backlog.next_seq());
        tokio::select! {
            _ = uploaded.wait_for(|&next| next >= target()) => {}
            () = self.shared.abandoned.cancelled() => {}
        }
    }

    /// Flushes, then stops the uploader.
    pub(crate) async fn finish(self, task: tokio::task::JoinHandle<()>) {
        self.flush().await;
        self.shared.abandoned.cancel();
        let _ = task.await;
    }
}

impl Buffer {
    fn append(&mut self, text: &str) {
        let masked = self.masker.push(text);
        self.enqueue(&masked);
    }

    fn mask_also<'a>(&mut self, values: impl IntoIterator<Item = &'a str>) {
        let released = self.masker.add(values);
        self.enqueue(&released);
    }

    fn enqueue(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        let echo = self.echo;
        for piece in split_at_char_boundaries(text, MAX_CHUNK_BYTES) {
            self.backlog.push(piece, |seq, text| echo_chunk(echo, seq, text));
        }
    }

    /// The line about output dropped while the log buffer was full, if any is owed.
    fn say_what_was_dropped(&mut self) {
        let echo = self.echo;
        self.backlog.say_what_was_dropped(&mut |seq, text| echo_chunk(echo, seq, text));
    }
}

fn echo_chunk(echo: Option<RunId>, seq: u64, text: &str) {
    if let Some(run_id) = echo {
        print_chunk(run_id, seq, text);
    }
}

/// One log chunk as a JSON line on standard output, for log collectors on the host.
fn print_chunk(run_id: RunId, seq: u64, text: &str) {
    use std::io::Write;
    let line = serde_json::json!({ "run_id": run_id.to_string(), "seq": seq, "text": text });
    let mut stdout = std::io::stdout().lock();
    // A closed standard output must not stop the run.
    let _ = writeln!(stdout, "{line}");
}

/// How many chunks the next upload may carry: halved when the server finds a batch too
/// large, grown back as uploads succeed.
#[derive(Debug)]
struct BatchLimit {
    chunks: usize,
}

impl BatchLimit {
    fn new() -> Self {
        Self { chunks: MAX_BATCH_CHUNKS }
    }

    /// The next batch: the oldest pending chunks, at most `chunks` of them and
    /// `MAX_BATCH_BYTES` of text, and at least one.
    fn take(&self, pending: &VecDeque<LogUpload>) -> Vec<LogUpload> {
        let mut bytes = 0;
        let mut batch = Vec::new();
        for chunk in pending.iter().take(self.chunks) {
            bytes += chunk.text.len();
            if bytes > MAX_BATCH_BYTES && !batch.is_empty() {
                break;
            }
            batch.push(chunk.clone());
        }
        batch
    }

    /// The server refused a batch of `sent` chunks as too large: the next ones carry half
    /// as many. False when one chunk was refused, which no split can help.
    fn too_large(&mut self, sent: usize) -> bool {
        self.chunks = (sent / 2).max(1);
        sent > 1
    }

    fn accepted(&mut self) {
        self.chunks = (self.chunks * 2).min(MAX_BATCH_CHUNKS);
    }
}

/// What a refused upload means for the log.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// The body was over the server's limit: split the batch.
    TooLarge,
    /// Nothing more can be added: the log is sealed (the run ended and its log was
    /// archived) or the run is gone.
    Closed,
    /// Anything else: tried again, for as long as the run lives.
    Retry,
}

fn refusal(error: &ClientError) -> Refusal {
    match error.status() {
        Some(413) => Refusal::TooLarge,
        Some(404 | 410) => Refusal::Closed,
        _ => Refusal::Retry,
    }
}

async fn upload(client: Arc<AgentClient>, run_id: RunId, shared: Arc<Shared>) {
    let mut backoff = Backoff::new(Duration::from_secs(30));
    let mut limit = BatchLimit::new();
    loop {
        let notified = shared.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let batch: Vec<LogUpload> = {
            let buffer = shared.buffer.lock().unwrap_or_else(PoisonError::into_inner);
            limit.take(buffer.backlog.front())
        };
        if batch.is_empty() {
            tokio::select! {
                () = notified => continue,
                () = shared.abandoned.cancelled() => return,
            }
        }
        let sent = batch.len();
        let error = match client.upload_logs(run_id, batch).await {
            Ok(next_seq) => {
                backoff.reset();
                limit.accepted();
                let mut buffer = shared.buffer.lock().unwrap_or_else(PoisonError::into_inner);
                buffer.backlog.acknowledged(next_seq);
                drop(buffer);
                shared.uploaded.send_replace(next_seq);
                continue;
            }
            Err(error) => error,
        };
        match refusal(&error) {
            Refusal::TooLarge if limit.too_large(sent) => {
                tracing::warn!(run = %run_id, chunks = sent, "the server finds this log batch too large; sending it in halves");
                continue;
            }
            Refusal::Closed => {
                shared.buffer.lock().unwrap_or_else(PoisonError::into_inner).backlog.discard_tail();
                tracing::warn!(run = %run_id, %error, "the server takes no more of this run's log: it ended and its log is archived, or the run is gone");
                shared.abandoned.cancel();
                return;
            }
            Refusal::TooLarge | Refusal::Retry => {}
        }
        let delay = backoff.delay();
        if error.is_transient() {
            tracing::warn!(run = %run_id, %error, "log upload failed; retrying in {}", shown(delay));
        } else {
            tracing::error!(run = %run_id, %error, "the server refuses this run's log; retrying in {} for as long as the run lives", shown(delay));
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shared.abandoned.cancelled() => return,
        }
    }
}

/// Pieces of at most `max` bytes, never splitting a character.
fn split_at_char_boundaries(text: &str, max: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let mut end = max;
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        pieces.push(&rest[..end]);
        rest = &rest[end..];
    }
    pieces.push(rest);
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(masked: &[&str], spool_dir: &Path) -> Buffer {
        let budget = Arc::new(LogBufferBudget::new(DEFAULT_LOG_BUFFER_SIZE));
        Buffer {
            masker: Masker::new(masked.iter().copied()),
            echo: None,
            backlog: Backlog::new(7, spool_dir, RunId::generate(), budget),
            last_activity: Instant::now(),
        }
    }

    fn uploaded(buffer: &mut Buffer) -> String {
        let held = buffer.masker.finish();
        buffer.enqueue(&held);
        buffer.backlog.front().iter().map(|chunk| chunk.text.as_str()).collect()
    }

    #[test]
    fn values_opened_during_the_run_are_masked_in_the_output_that_follows() {
        let spool_dir = tempfile::tempdir().unwrap();
        let mut buffer = buffer(&["stack-secret"], spool_dir.path());
        buffer.append("Opened 1 sensitive input(s)\nstack-sec");
        buffer.mask_also(["upstream-password"]);
        buffer.append("ret upstream-password\n");
        buffer.append(&format!("{}\n", serde_json::to_string("upstream-password").unwrap()));
        let text = uploaded(&mut buffer);
        assert_eq!(text, "Opened 1 sensitive input(s)\n*** ***\n\"***\"\n");
        let seqs: Vec<u64> = buffer.backlog.front().iter().map(|chunk| chunk.seq).collect();
        assert_eq!(seqs, (7..7 + seqs.len() as u64).collect::<Vec<_>>(), "consecutive");
        let report = buffer.masker.masked_report(RunReport::Failed {
            message: "terraform printed upstream-password".to_owned(),
        });
        assert!(
            matches!(&report, RunReport::Failed { message } if message == "terraform printed ***"),
            "{report:?}"
        );
    }

    fn pending(sizes: &[usize]) -> VecDeque<LogUpload> {
        sizes
            .iter()
            .enumerate()
            .map(|(seq, size)| LogUpload { seq: seq as u64, text: "x".repeat(*size) })
            .collect()
    }

    #[test]
    fn batches_are_bounded_by_bytes_and_chunks() {
        let limit = BatchLimit::new();
        let many = pending(&[10; 1000]);
        assert_eq!(limit.take(&many).len(), MAX_BATCH_CHUNKS);
        let large = pending(&[MAX_CHUNK_BYTES; 100]);
        let batch = limit.take(&large);
        assert_eq!(batch.len(), MAX_BATCH_BYTES / MAX_CHUNK_BYTES);
        assert!(batch.iter().map(|chunk| chunk.text.len()).sum::<usize>() <= MAX_BATCH_BYTES);
        let huge = pending(&[MAX_BATCH_BYTES + 1, 10]);
        assert_eq!(limit.take(&huge).len(), 1, "one chunk goes whatever its size");
        assert!(limit.take(&VecDeque::new()).is_empty());
    }

    #[test]
    fn a_batch_too_large_is_halved_until_one_chunk_then_grows_back() {
        let mut limit = BatchLimit::new();
        let chunks = pending(&[10; 300]);
        let first = limit.take(&chunks);
        assert!(limit.too_large(first.len()));
        assert_eq!(limit.take(&chunks).len(), MAX_BATCH_CHUNKS / 2);
        let mut sent = limit.take(&chunks).len();
        while sent > 1 {
            assert!(limit.too_large(sent));
            sent = limit.take(&chunks).len();
        }
        assert!(!limit.too_large(1), "one chunk cannot be split");
        assert_eq!(limit.take(&chunks).len(), 1);
        limit.accepted();
        limit.accepted();
        assert_eq!(limit.take(&chunks).len(), 4, "grows back as uploads succeed");
    }

    #[test]
    fn only_a_sealed_log_or_a_gone_run_stops_the_uploads() {
        let rejected = |status: u16| ClientError::Rejected {
            status,
            code: "x".to_owned(),
            message: "m".to_owned(),
        };
        assert_eq!(refusal(&rejected(413)), Refusal::TooLarge);
        assert_eq!(refusal(&rejected(410)), Refusal::Closed);
        assert_eq!(refusal(&rejected(404)), Refusal::Closed);
        for status in [400, 401, 409, 500, 503] {
            assert_eq!(refusal(&rejected(status)), Refusal::Retry, "{status}");
        }
        let unreachable =
            ClientError::Unreachable { url: "https://x".to_owned(), cause: "refused".to_owned() };
        assert_eq!(refusal(&unreachable), Refusal::Retry);
    }

    #[test]
    fn long_text_is_split_without_breaking_characters() {
        let text = "é".repeat(10);
        let pieces = split_at_char_boundaries(&text, 5);
        assert_eq!(pieces.concat(), text);
        assert!(pieces.iter().all(|piece| piece.len() <= 5));
        assert_eq!(split_at_char_boundaries("short", 64), vec!["short"]);
    }
}
