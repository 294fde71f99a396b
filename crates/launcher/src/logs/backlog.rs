//! A run log's backlog: the numbered chunks the server has not taken yet, oldest first.
//! The first few MiB wait in memory for the uploader; the rest waits in a file of the
//! run's own in the launcher's scratch directory, so that an outage of the server costs
//! disk, not memory, and the log is sent in order once the server is back. All runs of a
//! launcher share one bound (`GANTRY_LAUNCHER_LOG_BUFFER_SIZE`): output that finds it
//! full is not numbered, only counted, and once there is room again one line in the log
//! says how many bytes were dropped there and why. What is kept is therefore the head
//! (up to the bound) and everything from the moment the server took the backlog again.
//!
//! The file is a spool for outages, not a journal: it is not synced, and it is removed
//! with the backlog. What must outlive the launcher's process is in the run's `tail`.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gantry_domain::RunId;
use gantry_proto::agent::LogUpload;

use super::tail::{LogTail, RECORD_HEADER, decode_header, encode_record};

/// The variable that bounds the backlog of every run of a launcher together.
pub(crate) const LOG_BUFFER_SIZE: &str = "GANTRY_LAUNCHER_LOG_BUFFER_SIZE";
/// 256 MiB: a few hours of a chatty apply's output, or minutes of a runaway one.
pub(crate) const DEFAULT_LOG_BUFFER_SIZE: u64 = 256 * 1024 * 1024;
/// The most of a run's backlog kept in memory; what comes after it goes to the file.
const MEMORY_BYTES: usize = 4 * 1024 * 1024;

/// The room all runs of one launcher share for log text the server has not taken.
#[derive(Debug)]
pub(crate) struct LogBufferBudget {
    limit: u64,
    used: AtomicU64,
}

impl LogBufferBudget {
    pub(crate) fn new(limit: u64) -> Self {
        Self { limit, used: AtomicU64::new(0) }
    }

    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    /// Takes `bytes` of room if there is that much left.
    fn try_take(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    /// Takes `bytes` whatever is left: for the one line that says what was dropped.
    fn take(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::SeqCst);
    }

    fn give_back(&self, bytes: u64) {
        let _ = self.used.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
            Some(used.saturating_sub(bytes))
        });
    }

    #[cfg(test)]
    fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }
}

/// Output dropped since the backlog was last able to take it.
#[derive(Debug)]
struct Dropped {
    bytes: u64,
    why: String,
}

/// One run's chunks not yet on the server, and the numbering of the next ones.
#[derive(Debug)]
pub(crate) struct Backlog {
    next_seq: u64,
    memory: VecDeque<LogUpload>,
    memory_bytes: usize,
    spool: Spool,
    /// Every chunk not yet acknowledged, on disk for a launcher recovering the run.
    tail: LogTail,
    budget: Arc<LogBufferBudget>,
    /// Room taken from the budget for the chunks in memory and in the spool.
    held: u64,
    dropped: Option<Dropped>,
}

impl Backlog {
    /// An empty backlog of `run_id`'s log numbering from `next_seq`, spooling in `dir`
    /// if needed and writing every chunk ahead to its tail there.
    pub(crate) fn new(
        next_seq: u64,
        dir: &Path,
        run_id: RunId,
        budget: Arc<LogBufferBudget>,
    ) -> Self {
        Self {
            next_seq,
            memory: VecDeque::new(),
            memory_bytes: 0,
            spool: Spool::new(dir.join(format!("{run_id}.log-backlog"))),
            tail: LogTail::new(dir, run_id),
            budget,
            held: 0,
            dropped: None,
        }
    }

    /// The number the next chunk will get.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The oldest chunks, in order: what the uploader sends next.
    pub(crate) fn front(&self) -> &VecDeque<LogUpload> {
        &self.memory
    }

    /// Numbers `text` as the next chunk and keeps it, unless the launcher's log buffer
    /// is full; `queued` sees every chunk kept, with its number.
    pub(crate) fn push(&mut self, text: &str, mut queued: impl FnMut(u64, &str)) {
        let size = text.len() as u64;
        if !self.budget.try_take(size) {
            let limit = self.budget.limit();
            self.drop_text(size, || {
                format!(
                    "the server could not take the log for a while and the launcher's log buffer ({LOG_BUFFER_SIZE}, {limit} bytes) was full"
                )
            });
            return;
        }
        self.say_what_was_dropped(&mut queued);
        if let Err(error) = self.queue(text, size, &mut queued) {
            self.budget.give_back(size);
            self.drop_text(size, || format!("the launcher could not buffer it on disk ({error})"));
        }
    }

    /// Says in the log how much was dropped, if anything was: called before the output
    /// that comes after the gap, and when the log is flushed (the run ends).
    pub(crate) fn say_what_was_dropped(&mut self, queued: &mut impl FnMut(u64, &str)) {
        let Some(dropped) = self.dropped.take() else { return };
        let line = format!(
            "\n[gantry-launcher: {} bytes of this run's output were dropped here: {}]\n",
            dropped.bytes, dropped.why
        );
        tracing::warn!(bytes = dropped.bytes, "run output was dropped: {}", dropped.why);
        let size = line.len() as u64;
        self.budget.take(size);
        if self.queue(&line, size, queued).is_err() {
            self.budget.give_back(size);
            // Not even one line fits anywhere: the next output tries again.
            self.dropped = Some(dropped);
        }
    }

    fn drop_text(&mut self, size: u64, why: impl FnOnce() -> String) {
        match &mut self.dropped {
            Some(dropped) => dropped.bytes += size,
            None => {
                let why = why();
                tracing::warn!("dropping run output until the server takes the log again: {why}");
                self.dropped = Some(Dropped { bytes: size, why });
            }
        }
    }

    /// Keeps one chunk whose room is taken: in memory while the file is empty and memory
    /// has room, in the file otherwise, so that the order holds.
    fn queue(
        &mut self,
        text: &str,
        size: u64,
        queued: &mut impl FnMut(u64, &str),
    ) -> std::io::Result<()> {
        let chunk = LogUpload { seq: self.next_seq, text: text.to_owned() };
        self.tail.record(&chunk);
        if self.spool.is_empty() && self.memory_bytes + text.len() <= MEMORY_BYTES {
            self.memory_bytes += text.len();
            self.memory.push_back(chunk);
        } else {
            self.spool.push(&chunk)?;
        }
        queued(self.next_seq, text);
        self.next_seq += 1;
        self.held += size;
        Ok(())
    }

    /// The server has every chunk before `next_seq`: they leave the backlog, and memory
    /// is filled again from the file.
    pub(crate) fn acknowledged(&mut self, next_seq: u64) {
        self.tail.acknowledged(next_seq);
        while self.memory.front().is_some_and(|chunk| chunk.seq < next_seq) {
            if let Some(chunk) = self.memory.pop_front() {
                self.release(chunk.text.len());
            }
        }
        if self.memory_bytes >= MEMORY_BYTES / 2 {
            return;
        }
        while self.memory_bytes < MEMORY_BYTES {
            match self.spool.pop() {
                Ok(Some(chunk)) => {
                    self.memory_bytes += chunk.text.len();
                    self.memory.push_back(chunk);
                }
                Ok(None) => break,
                Err(error) => {
                    self.lose_spool(&error);
                    break;
                }
            }
        }
    }

    /// The server takes no more of the log: nothing of it is left for a recovery.
    pub(crate) fn discard_tail(&mut self) {
        self.tail.discard();
    }

    fn release(&mut self, size: usize) {
        self.memory_bytes -= size;
        self.held -= size as u64;
        self.budget.give_back(size as u64);
    }

    /// The file cannot be read back: what it held is dropped and numbered again from
    /// its first chunk, so that the server sees no gap, only the line that says so.
    fn lose_spool(&mut self, error: &std::io::Error) {
        let (first_seq, bytes) = self.spool.discard();
        self.held -= bytes;
        self.budget.give_back(bytes);
        if let Some(first_seq) = first_seq {
            self.next_seq = first_seq;
        }
        let why = format!("the launcher could not read back its buffer file ({error})");
        match &mut self.dropped {
            // Output dropped after the spooled text: both are gone, one line says so.
            Some(dropped) => dropped.bytes += bytes,
            None => self.dropped = Some(Dropped { bytes, why }),
        }
        // Said at once: a flush waiting for the lost chunks' numbers gets them.
        self.say_what_was_dropped(&mut |_, _| {});
    }
}

impl Drop for Backlog {
    fn drop(&mut self) {
        self.budget.give_back(self.held);
    }
}

/// The chunks after those in memory, in a file read from the front and appended to at
/// the end; emptied (truncated) whenever it has been read to its end.
#[derive(Debug)]
struct Spool {
    path: PathBuf,
    file: Option<File>,
    read_at: u64,
    write_at: u64,
    /// The number of the next chunk to read, while the file holds any.
    first_seq: Option<u64>,
    /// Bytes of text in the file.
    bytes: u64,
}

impl Spool {
    fn new(path: PathBuf) -> Self {
        Self { path, file: None, read_at: 0, write_at: 0, first_seq: None, bytes: 0 }
    }

    fn is_empty(&self) -> bool {
        self.first_seq.is_none()
    }

    fn push(&mut self, chunk: &LogUpload) -> std::io::Result<()> {
        let file = match &self.file {
            Some(file) => file,
            None => self.file.insert(create_private(&self.path)?),
        };
        let record = encode_record(chunk)?;
        file.write_all_at(&record, self.write_at)?;
        self.write_at += record.len() as u64;
        self.bytes += chunk.text.len() as u64;
        self.first_seq.get_or_insert(chunk.seq);
        Ok(())
    }

    fn pop(&mut self) -> std::io::Result<Option<LogUpload>> {
        let (Some(file), Some(_)) = (&self.file, self.first_seq) else { return Ok(None) };
        let mut header = [0u8; RECORD_HEADER];
        file.read_exact_at(&mut header, self.read_at)?;
        let (seq, length) = decode_header(&header);
        let mut text = vec![0u8; length];
        file.read_exact_at(&mut text, self.read_at + RECORD_HEADER as u64)?;
        let text = String::from_utf8(text)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        self.read_at += (RECORD_HEADER + text.len()) as u64;
        self.bytes -= text.len() as u64;
        if self.read_at >= self.write_at {
            self.empty()?;
        } else {
            self.first_seq = Some(seq + 1);
        }
        Ok(Some(LogUpload { seq, text }))
    }

    /// Forgets everything in the file; returns the first chunk's number and the bytes of
    /// text it held.
    fn discard(&mut self) -> (Option<u64>, u64) {
        let lost = (self.first_seq, self.bytes);
        let _ = self.empty();
        self.bytes = 0;
        lost
    }

    fn empty(&mut self) -> std::io::Result<()> {
        self.read_at = 0;
        self.write_at = 0;
        self.first_seq = None;
        match &self.file {
            Some(file) => file.set_len(0),
            None => Ok(()),
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Creates a spool or tail file anew, readable by the launcher's user only, never through a
/// link left in its place.
pub(super) fn create_private(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
        run_id: RunId,
        path: PathBuf,
        budget: Arc<LogBufferBudget>,
    }

    fn fixture(limit: u64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let run_id = RunId::generate();
        let path = dir.path().join(format!("{run_id}.log-backlog"));
        Fixture { dir, run_id, path, budget: Arc::new(LogBufferBudget::new(limit)) }
    }

    impl Fixture {
        fn backlog(&self, next_seq: u64) -> Backlog {
            Backlog::new(next_seq, self.dir.path(), self.run_id, Arc::clone(&self.budget))
        }
    }

    /// Uploads everything, a batch of `batch` chunks at a time as a server taking them
    /// would; returns the chunks in the order sent.
    fn drain(backlog: &mut Backlog, batch: usize) -> Vec<LogUpload> {
        let mut sent: Vec<LogUpload> = Vec::new();
        while !backlog.front().is_empty() {
            let taken: Vec<LogUpload> = backlog.front().iter().take(batch).cloned().collect();
            let next = taken.last().unwrap().seq + 1;
            sent.extend(taken);
            backlog.acknowledged(next);
        }
        sent
    }

    fn line(index: usize) -> String {
        format!("line {index:06} {}\n", "x".repeat(1000))
    }

    #[test]
    fn the_backlog_of_an_outage_goes_to_disk_and_comes_back_in_order_without_gaps() {
        let fixture = fixture(64 * 1024 * 1024);
        let mut backlog = fixture.backlog(5);
        let lines: Vec<String> = (0..12_000).map(line).collect();
        for text in &lines {
            backlog.push(text, |_, _| {});
        }
        let in_memory: usize = backlog.front().iter().map(|chunk| chunk.text.len()).sum();
        assert!(in_memory <= MEMORY_BYTES, "memory holds at most {MEMORY_BYTES}: {in_memory}");
        let on_disk = std::fs::metadata(&fixture.path).unwrap().len();
        assert!(on_disk > 7 * 1024 * 1024, "the rest is on disk: {on_disk} bytes");

        let sent = drain(&mut backlog, 256);
        let seqs: Vec<u64> = sent.iter().map(|chunk| chunk.seq).collect();
        assert_eq!(seqs, (5..5 + lines.len() as u64).collect::<Vec<_>>());
        assert_eq!(sent.iter().map(|chunk| chunk.text.as_str()).collect::<Vec<_>>(), lines);
        assert_eq!(std::fs::metadata(&fixture.path).unwrap().len(), 0, "emptied once read");
        assert_eq!(fixture.budget.used(), 0, "all room given back");
        assert_eq!(backlog.next_seq(), 5 + lines.len() as u64);

        // Output that comes after the backlog was taken goes on from there.
        backlog.push("after\n", |_, _| {});
        assert_eq!(drain(&mut backlog, 10)[0], LogUpload { seq: 12_005, text: "after\n".into() });
        drop(backlog);
        assert!(!fixture.path.exists(), "the file goes with the backlog");
    }

    #[test]
    fn a_full_buffer_keeps_the_head_and_says_what_it_dropped_once_there_is_room() {
        let fixture = fixture(10 * 1024);
        let mut backlog = fixture.backlog(0);
        let mut numbered = Vec::new();
        for index in 0..30 {
            backlog.push(&line(index), |seq, text| numbered.push((seq, text.to_owned())));
        }
        // 1013 bytes a line: ten fit in 10 KiB, the other twenty are dropped.
        assert_eq!(numbered.len(), 10);
        assert_eq!(fixture.budget.used(), 10 * 1013);
        let head = drain(&mut backlog, 4);
        assert_eq!(head.len(), 10);
        assert!(head[9].text.starts_with("line 000009"));
        assert_eq!(fixture.budget.used(), 0);

        // The server took the head: the next output comes after one line about the gap.
        backlog.push("the tail\n", |_, _| {});
        let rest = drain(&mut backlog, 4);
        assert_eq!(rest.len(), 2);
        assert_eq!(rest[0].seq, 10, "no gap in the numbering");
        assert_eq!(
            rest[0].text,
            format!(
                "\n[gantry-launcher: 20260 bytes of this run's output were dropped here: the server could not take the log for a while and the launcher's log buffer ({LOG_BUFFER_SIZE}, 10240 bytes) was full]\n"
            )
        );
        assert_eq!(rest[1], LogUpload { seq: 11, text: "the tail\n".into() });
    }

    #[test]
    fn output_dropped_at_the_end_is_said_when_the_log_is_flushed() {
        let fixture = fixture(2000);
        let mut backlog = fixture.backlog(0);
        backlog.push(&line(0), |_, _| {});
        backlog.push(&line(1), |_, _| {});
        backlog.say_what_was_dropped(&mut |_, _| {});
        let sent = drain(&mut backlog, 10);
        assert_eq!(sent.len(), 2);
        assert!(sent[1].text.contains("1013 bytes of this run's output were dropped"));
    }

    #[test]
    fn runs_share_the_bound_and_a_finished_run_gives_its_room_back() {
        let fixture = fixture(3100);
        let mut first = fixture.backlog(0);
        let mut second =
            Backlog::new(0, fixture.dir.path(), RunId::generate(), Arc::clone(&fixture.budget));
        first.push(&line(0), |_, _| {});
        first.push(&line(1), |_, _| {});
        let mut kept = 0;
        second.push(&line(2), |_, _| kept += 1);
        second.push(&line(3), |_, _| kept += 1);
        assert_eq!(kept, 1, "the second run finds room for one line only");
        drop(first);
        second.push(&line(4), |_, _| kept += 1);
        assert_eq!(kept, 3, "the line about the gap, then the output");
    }

    #[test]
    fn a_spool_that_cannot_be_read_back_is_numbered_again_after_one_line() {
        let fixture = fixture(64 * 1024 * 1024);
        let mut backlog = fixture.backlog(0);
        let lines = MEMORY_BYTES / 1013 + 100;
        for index in 0..lines {
            backlog.push(&line(index), |_, _| {});
        }
        let in_memory = backlog.front().len();
        assert!(in_memory < lines);
        // The file is damaged behind the launcher's back.
        std::fs::OpenOptions::new().write(true).open(&fixture.path).unwrap().set_len(5).unwrap();
        let sent = drain(&mut backlog, 10_000);
        assert_eq!(sent.len(), in_memory + 1, "the head, then the line about the loss");
        assert_eq!(sent[in_memory].seq, in_memory as u64, "numbering goes on after the head");
        assert!(sent[in_memory].text.contains("could not read back its buffer file"));
        backlog.push("next\n", |_, _| {});
        assert_eq!(
            drain(&mut backlog, 10),
            [LogUpload { seq: in_memory as u64 + 1, text: "next\n".into() }]
        );
        assert_eq!(fixture.budget.used(), 0);
    }
}
