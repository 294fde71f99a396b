//! The audit log's entries and their hash chain: each entry carries the hash of the one
//! before, so an entry altered or removed in the database shows when the chain is checked.

use gantry_domain::Timestamp;
use serde::Serialize;

use crate::StoreError;
use crate::sql_rows::{Columns, count, text, timestamp};

/// The `prev_hash` of the first entry.
pub const AUDIT_GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One change as it is appended: who did what to what, from where, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub at: Timestamp,
    /// The key's name (`key:NAME`), or the agent plane's party (`launcher:ID`, `server`).
    pub actor: String,
    /// `METHOD /route/{template}` for requests, or a named event (`worker.drained`).
    pub action: String,
    /// The route's parameters or the event's subject, never a secret.
    pub target: String,
    /// The peer address the change came from, or empty for the server's own events.
    pub source: String,
    /// `ok`, `denied`, `failed` or `error`, with the HTTP status for requests.
    pub outcome: String,
}

/// A stored entry: its place in the chain and its hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub seq: u64,
    pub entry: AuditEntry,
    pub prev_hash: String,
    pub hash: String,
}

/// Which entries a listing returns, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub since: Option<Timestamp>,
    pub actor: Option<String>,
}

/// Where a chain check found the first entry that does not match.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit entry {seq} does not match the chain: {reason}")]
pub struct AuditBreak {
    pub seq: u64,
    pub reason: String,
}

/// The hash an entry at `seq` after `prev_hash` carries: SHA-256 over the previous hash
/// and the entry's canonical JSON (fields in declaration order, the time in milliseconds).
pub fn audit_hash(seq: u64, prev_hash: &str, entry: &AuditEntry) -> String {
    #[derive(Serialize)]
    struct Canonical<'a> {
        seq: u64,
        at: i64,
        actor: &'a str,
        action: &'a str,
        target: &'a str,
        source: &'a str,
        outcome: &'a str,
    }
    let canonical = serde_json::to_vec(&Canonical {
        seq,
        at: entry.at.unix_millis(),
        actor: &entry.actor,
        action: &entry.action,
        target: &entry.target,
        source: &entry.source,
        outcome: &entry.outcome,
    })
    .expect("plain data serializes");
    let mut input = Vec::with_capacity(prev_hash.len() + 1 + canonical.len());
    input.extend_from_slice(prev_hash.as_bytes());
    input.push(b'\n');
    input.extend_from_slice(&canonical);
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &input))
}

/// Checks a whole log, oldest first: numbered 1, 2, … with no gap, each entry naming the
/// previous one's hash and carrying its own. Returns how many entries were checked.
pub fn verify_audit_chain(records: &[AuditRecord]) -> Result<u64, AuditBreak> {
    let mut prev_hash = AUDIT_GENESIS;
    for (index, record) in records.iter().enumerate() {
        let expected_seq = index as u64 + 1;
        let broken = |reason: String| AuditBreak { seq: record.seq, reason };
        if record.seq != expected_seq {
            return Err(broken(format!(
                "expected entry {expected_seq} here (an entry is missing)"
            )));
        }
        if record.prev_hash != prev_hash {
            return Err(broken("it does not name the previous entry's hash".to_owned()));
        }
        if record.hash != audit_hash(record.seq, &record.prev_hash, &record.entry) {
            return Err(broken("its content does not match its hash (altered)".to_owned()));
        }
        prev_hash = &record.hash;
    }
    Ok(records.len() as u64)
}

pub(crate) const AUDIT_COLUMNS: &str =
    "seq, at, actor, action, target, source, outcome, prev_hash, hash";

pub(crate) fn audit_from_row(row: &impl Columns) -> Result<AuditRecord, StoreError> {
    Ok(AuditRecord {
        seq: count(row, "seq")?,
        entry: AuditEntry {
            at: timestamp(row, "at")?,
            actor: text(row, "actor")?,
            action: text(row, "action")?,
            target: text(row, "target")?,
            source: text(row, "source")?,
            outcome: text(row, "outcome")?,
        },
        prev_hash: text(row, "prev_hash")?,
        hash: text(row, "hash")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(entries: usize) -> Vec<AuditRecord> {
        let mut records = Vec::new();
        let mut prev_hash = AUDIT_GENESIS.to_owned();
        for index in 0..entries {
            let seq = index as u64 + 1;
            let entry = AuditEntry {
                at: Timestamp::from_unix_millis(1_000 + index as i64),
                actor: "key:ops".to_owned(),
                action: "POST /api/v1/pools".to_owned(),
                target: String::new(),
                source: "127.0.0.1".to_owned(),
                outcome: "ok 201".to_owned(),
            };
            let hash = audit_hash(seq, &prev_hash, &entry);
            records.push(AuditRecord { seq, entry, prev_hash, hash: hash.clone() });
            prev_hash = hash;
        }
        records
    }

    #[test]
    fn an_intact_chain_verifies_and_an_altered_entry_is_named() {
        let mut records = chain(3);
        assert_eq!(verify_audit_chain(&records), Ok(3));
        records[1].entry.outcome = "ok 200".to_owned();
        assert_eq!(verify_audit_chain(&records).unwrap_err().seq, 2);
    }

    #[test]
    fn a_removed_entry_breaks_the_chain_at_the_next_one() {
        let mut records = chain(3);
        records.remove(1);
        assert_eq!(verify_audit_chain(&records).unwrap_err().seq, 3);
    }
}
