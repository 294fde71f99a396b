//! A run log's write-ahead tail: every numbered chunk is written to a file in the
//! launcher's scratch directory before the worker's post that carried it is answered,
//! and leaves it once the server acknowledged it. A launcher killed with `kill -9` thus
//! leaves on disk exactly what it had taken from the worker but not delivered, and the
//! launcher that recovers the run sends it (`recovery`), instead of saying it is lost.
//!
//! The tail is a series of segment files (`<run>.log-tail-<first seq>`), each closed
//! at `SEGMENT_BYTES`; a segment goes once every chunk in it was acknowledged, so the
//! disk holds what the server has not taken plus at most one segment. Writes are not
//! synced: the tail outlives the launcher's process, not its machine's power.
//!
//! The tail only helps when it is whole: a write that fails (a full disk) gives the
//! tail up for the run, rather than leaving one with a hole that would be sent as if it
//! were the log.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use gantry_domain::RunId;
use gantry_proto::agent::LogUpload;

/// A segment is closed, and a new one started, once it holds this many bytes.
const SEGMENT_BYTES: u64 = 1024 * 1024;
/// Bytes of a record's header: the sequence number and the text's length.
pub(super) const RECORD_HEADER: usize = 12;

/// One chunk as it is written to a tail segment or a backlog's spool file.
pub(super) fn encode_record(chunk: &LogUpload) -> std::io::Result<Vec<u8>> {
    let length = u32::try_from(chunk.text.len()).map_err(std::io::Error::other)?;
    let mut record = Vec::with_capacity(RECORD_HEADER + chunk.text.len());
    record.extend_from_slice(&chunk.seq.to_le_bytes());
    record.extend_from_slice(&length.to_le_bytes());
    record.extend_from_slice(chunk.text.as_bytes());
    Ok(record)
}

/// A record's sequence number and text length.
pub(super) fn decode_header(header: &[u8; RECORD_HEADER]) -> (u64, usize) {
    let (seq, length) = header.split_at(8);
    let seq = u64::from_le_bytes(seq.try_into().unwrap_or_default());
    let length = u32::from_le_bytes(length.try_into().unwrap_or_default());
    (seq, length as usize)
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    last_seq: u64,
}

/// The segments of one run's tail, oldest first; the last one is written to.
#[derive(Debug)]
pub(crate) struct LogTail {
    prefix: PathBuf,
    segments: VecDeque<Segment>,
    /// The segment being written, and its size.
    open: Option<(File, u64)>,
    given_up: bool,
}

fn prefix(dir: &Path, run_id: RunId) -> PathBuf {
    dir.join(format!("{run_id}.log-tail-"))
}

impl LogTail {
    /// The tail of `run_id`'s log in `dir`; files a dead launcher left there for the run
    /// are removed first (a recovery read them already).
    pub(crate) fn new(dir: &Path, run_id: RunId) -> Self {
        remove_left(dir, run_id);
        Self { prefix: prefix(dir, run_id), segments: VecDeque::new(), open: None, given_up: false }
    }

    /// Writes `chunk` at the end of the tail.
    pub(crate) fn record(&mut self, chunk: &LogUpload) {
        if self.given_up {
            return;
        }
        if let Err(error) = self.write(chunk) {
            tracing::warn!(%error, "cannot write the run log's tail to disk: a launcher recovering this run after a crash would not have its undelivered output");
            self.given_up = true;
            self.discard();
        }
    }

    fn write(&mut self, chunk: &LogUpload) -> std::io::Result<()> {
        let record = encode_record(chunk)?;
        if self.open.as_ref().is_none_or(|(_, size)| *size >= SEGMENT_BYTES) {
            let path = PathBuf::from(format!("{}{:020}", self.prefix.display(), chunk.seq));
            let file = super::backlog::create_private(&path)?;
            self.segments.push_back(Segment { path, last_seq: chunk.seq });
            self.open = Some((file, 0));
        }
        let (file, size) = self.open.as_mut().ok_or_else(|| std::io::Error::other("no segment"))?;
        file.write_all_at(&record, *size)?;
        *size += record.len() as u64;
        if let Some(segment) = self.segments.back_mut() {
            segment.last_seq = chunk.seq;
        }
        Ok(())
    }

    /// The server has every chunk before `next_seq`: segments holding only those go.
    pub(crate) fn acknowledged(&mut self, next_seq: u64) {
        while self.segments.front().is_some_and(|segment| segment.last_seq < next_seq) {
            if let Some(segment) = self.segments.pop_front() {
                let _ = std::fs::remove_file(&segment.path);
            }
            if self.segments.is_empty() {
                self.open = None;
            }
        }
    }

    /// Removes every segment: the server takes no more of the log.
    pub(crate) fn discard(&mut self) {
        self.open = None;
        for segment in self.segments.drain(..) {
            let _ = std::fs::remove_file(&segment.path);
        }
    }
}

/// The chunks a dead launcher's tail of `run_id` holds in `dir`, in order of their
/// numbers. A record cut short (the process died mid-write) ends what is read; a number
/// seen again (the backlog numbered on from lost chunks) replaces what followed it.
pub(crate) fn read_left(dir: &Path, run_id: RunId) -> std::io::Result<Vec<LogUpload>> {
    let mut chunks: Vec<LogUpload> = Vec::new();
    'segments: for path in segments_left(dir, run_id)? {
        let bytes = read_segment(&path)?;
        let mut rest = bytes.as_slice();
        while let Some(header) = rest.first_chunk::<RECORD_HEADER>() {
            let (seq, length) = decode_header(header);
            let Some(text) = rest.get(RECORD_HEADER..RECORD_HEADER + length) else {
                break 'segments;
            };
            let text = String::from_utf8(text.to_vec())
                .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, error))?;
            while chunks.last().is_some_and(|last| last.seq >= seq) {
                chunks.pop();
            }
            chunks.push(LogUpload { seq, text });
            rest = &rest[RECORD_HEADER + length..];
        }
        if !rest.is_empty() {
            break;
        }
    }
    Ok(chunks)
}

/// A segment's bytes, never read through a link left in its place.
fn read_segment(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file =
        std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NOFOLLOW).open(path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The files of `run_id`'s tail in `dir`, oldest first.
fn segments_left(dir: &Path, run_id: RunId) -> std::io::Result<Vec<PathBuf>> {
    let prefix = prefix(dir, run_id);
    let Some(name_prefix) = prefix.file_name().and_then(|name| name.to_str()) else {
        return Ok(Vec::new());
    };
    let mut found: Vec<(u64, PathBuf)> = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(first_seq) = name
            .to_str()
            .and_then(|name| name.strip_prefix(name_prefix))
            .and_then(|seq| seq.parse::<u64>().ok())
        else {
            continue;
        };
        if entry.file_type()?.is_file() {
            found.push((first_seq, entry.path()));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, path)| path).collect())
}

/// Removes what is left of `run_id`'s tail in `dir`.
fn remove_left(dir: &Path, run_id: RunId) {
    for path in segments_left(dir, run_id).unwrap_or_default() {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(seq: u64, text: &str) -> LogUpload {
        LogUpload { seq, text: text.to_owned() }
    }

    #[test]
    fn what_was_not_acknowledged_is_left_in_order_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunId::generate();
        let mut tail = LogTail::new(dir.path(), run);
        let big = "x".repeat(300 * 1024);
        for seq in 0..10 {
            tail.record(&chunk(seq, &format!("{seq}{big}")));
        }
        assert!(segments_left(dir.path(), run).unwrap().len() >= 3, "the tail rolls over");
        tail.acknowledged(6);
        let left = read_left(dir.path(), run).unwrap();
        let seqs: Vec<u64> = left.iter().map(|chunk| chunk.seq).collect();
        assert!(seqs.first().is_some_and(|first| *first <= 6), "{seqs:?}");
        assert_eq!(seqs.last(), Some(&9));
        assert!(seqs.windows(2).all(|pair| pair[1] == pair[0] + 1), "{seqs:?}");
        assert!(left.iter().all(|chunk| chunk.text.starts_with(&chunk.seq.to_string())));
        tail.acknowledged(10);
        assert!(segments_left(dir.path(), run).unwrap().is_empty(), "all delivered: no file");
        tail.record(&chunk(10, "after\n"));
        assert_eq!(read_left(dir.path(), run).unwrap(), vec![chunk(10, "after\n")]);
    }

    #[test]
    fn a_record_cut_by_the_launchers_death_ends_what_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunId::generate();
        let mut tail = LogTail::new(dir.path(), run);
        tail.record(&chunk(3, "whole\n"));
        tail.record(&chunk(4, "cut short\n"));
        let path = segments_left(dir.path(), run).unwrap().remove(0);
        let length = std::fs::metadata(&path).unwrap().len();
        File::options().write(true).open(&path).unwrap().set_len(length - 4).unwrap();
        assert_eq!(read_left(dir.path(), run).unwrap(), vec![chunk(3, "whole\n")]);
    }

    #[test]
    fn numbers_given_again_replace_what_followed_them() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunId::generate();
        let mut tail = LogTail::new(dir.path(), run);
        for (seq, text) in [(0, "a"), (1, "lost b"), (2, "lost c"), (1, "[dropped]"), (2, "d")] {
            tail.record(&chunk(seq, text));
        }
        assert_eq!(
            read_left(dir.path(), run).unwrap(),
            vec![chunk(0, "a"), chunk(1, "[dropped]"), chunk(2, "d")]
        );
    }

    #[test]
    fn a_new_tail_removes_what_a_dead_launcher_left_and_discard_removes_all() {
        let dir = tempfile::tempdir().unwrap();
        let (run, other) = (RunId::generate(), RunId::generate());
        LogTail::new(dir.path(), run).record(&chunk(0, "left\n"));
        LogTail::new(dir.path(), other).record(&chunk(0, "other run\n"));
        let mut tail = LogTail::new(dir.path(), run);
        assert!(read_left(dir.path(), run).unwrap().is_empty());
        tail.record(&chunk(0, "new\n"));
        tail.discard();
        assert!(read_left(dir.path(), run).unwrap().is_empty());
        assert_eq!(read_left(dir.path(), other).unwrap(), vec![chunk(0, "other run\n")]);
    }

    #[test]
    fn a_link_in_a_segments_place_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunId::generate();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, encode_record(&chunk(0, "not the tail\n")).unwrap()).unwrap();
        let segment = format!("{}{:020}", prefix(dir.path(), run).display(), 0);
        std::os::unix::fs::symlink(&elsewhere, &segment).unwrap();
        assert!(read_left(dir.path(), run).unwrap().is_empty());
        assert!(read_segment(Path::new(&segment)).is_err(), "opened without following it");
    }

    #[test]
    fn a_tail_that_cannot_be_written_gives_up_rather_than_keep_a_hole() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunId::generate();
        let gone = dir.path().join("gone");
        std::fs::create_dir(&gone).unwrap();
        let mut tail = LogTail::new(&gone, run);
        tail.record(&chunk(0, "kept\n"));
        std::fs::remove_dir_all(&gone).unwrap();
        tail.acknowledged(1);
        tail.record(&chunk(1, "cannot be written\n"));
        std::fs::create_dir(&gone).unwrap();
        tail.record(&chunk(2, "after a hole\n"));
        assert!(read_left(&gone, run).unwrap().is_empty(), "nothing is left with a hole");
    }
}
