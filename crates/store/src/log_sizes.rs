//! How a run's stored log splits under its per-run limit: the head (kept whole from chunk
//! 0 up to half the limit), the chunks cut, and the tail (the newest chunks, up to the
//! other half). Both SQL adapters keep these counters in `run_log_sizes` and decide here
//! which chunks a new append keeps and which it cuts.

use crate::LogCutRecord;
use crate::sql_rows::{Columns, corrupt};
use crate::store::Result;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LogSizes {
    pub(crate) head_bytes: u64,
    pub(crate) tail_bytes: u64,
    /// The first chunk after the head, once the head is full.
    pub(crate) head_end: Option<u64>,
    /// The first chunk kept of the tail.
    pub(crate) tail_start: Option<u64>,
    pub(crate) cut_bytes: u64,
    pub(crate) cut_chunks: u64,
}

pub(crate) const LOG_SIZE_COLUMNS: &str =
    "head_bytes, tail_bytes, head_end, tail_start, cut_bytes, cut_chunks";

fn unsigned(row: &impl Columns, column: &str) -> Result<u64> {
    u64::try_from(row.integer(column)?).map_err(|error| corrupt(column, error))
}

fn optional_unsigned(row: &impl Columns, column: &str) -> Result<Option<u64>> {
    row.optional_integer(column)?
        .map(|value| u64::try_from(value).map_err(|error| corrupt(column, error)))
        .transpose()
}

/// A stored size as the BIGINT both engines keep.
pub(crate) fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl LogSizes {
    pub(crate) fn from_row(row: &impl Columns) -> Result<Self> {
        Ok(Self {
            head_bytes: unsigned(row, "head_bytes")?,
            tail_bytes: unsigned(row, "tail_bytes")?,
            head_end: optional_unsigned(row, "head_end")?,
            tail_start: optional_unsigned(row, "tail_start")?,
            cut_bytes: unsigned(row, "cut_bytes")?,
            cut_chunks: unsigned(row, "cut_chunks")?,
        })
    }

    /// Counts a chunk appended after the others: into the head while it has room, into
    /// the tail from the first chunk that does not fit on.
    pub(crate) fn add(&mut self, seq: u64, bytes: u64, max_bytes: u64) {
        if self.head_end.is_none() && self.head_bytes.saturating_add(bytes) <= max_bytes / 2 {
            self.head_bytes += bytes;
        } else {
            self.head_end.get_or_insert(seq);
            self.tail_start.get_or_insert(seq);
            self.tail_bytes = self.tail_bytes.saturating_add(bytes);
        }
    }

    /// Whether the tail outgrew its share of `max_bytes` and its oldest chunks go.
    pub(crate) fn tail_over(&self, max_bytes: u64) -> bool {
        self.tail_bytes > max_bytes - max_bytes / 2
    }

    /// Cuts the tail's oldest chunk, `seq` of `bytes`.
    pub(crate) fn cut(&mut self, seq: u64, bytes: u64) {
        self.tail_bytes = self.tail_bytes.saturating_sub(bytes);
        self.cut_bytes = self.cut_bytes.saturating_add(bytes);
        self.cut_chunks += 1;
        self.tail_start = Some(seq + 1);
    }

    pub(crate) fn cut_record(&self) -> Option<LogCutRecord> {
        let at_seq = self.head_end?;
        (self.cut_chunks > 0).then_some(LogCutRecord {
            at_seq,
            chunks: self.cut_chunks,
            bytes: self.cut_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_fills_first_then_the_tail_rolls() {
        let mut sizes = LogSizes::default();
        for seq in 0..5 {
            sizes.add(seq, 10, 100);
        }
        assert_eq!((sizes.head_bytes, sizes.head_end), (50, None), "exactly half is head");
        sizes.add(5, 10, 100);
        assert_eq!((sizes.head_end, sizes.tail_start, sizes.tail_bytes), (Some(5), Some(5), 10));
        for seq in 6..11 {
            sizes.add(seq, 10, 100);
        }
        assert!(sizes.tail_over(100));
        sizes.cut(5, 10);
        assert!(!sizes.tail_over(100));
        assert_eq!(sizes.cut_record(), Some(LogCutRecord { at_seq: 5, chunks: 1, bytes: 10 }));
        assert_eq!(sizes.tail_start, Some(6));
    }

    #[test]
    fn a_chunk_larger_than_the_head_leaves_the_head_empty() {
        let mut sizes = LogSizes::default();
        sizes.add(0, 80, 100);
        assert_eq!((sizes.head_bytes, sizes.head_end, sizes.tail_bytes), (0, Some(0), 80));
        assert!(sizes.tail_over(100));
        assert_eq!(sizes.cut_record(), None, "nothing cut yet");
    }
}
