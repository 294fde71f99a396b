//! The REST API's audit log (`/api/v1/audit`): the recorded changes, oldest first, and the
//! check of their hash chain.

use gantry_domain::Timestamp;
use serde::{Deserialize, Serialize};
use serde_with::serde_as;

use crate::Rfc3339;

/// `GET /api/v1/audit?since=RFC3339&actor=NAME`
#[serde_as]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    #[serde_as(as = "Option<Rfc3339>")]
    #[serde(default)]
    pub since: Option<Timestamp>,
    #[serde(default)]
    pub actor: Option<String>,
}

/// One recorded change.
#[serde_as]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Its place in the chain, from 1.
    pub seq: u64,
    #[serde_as(as = "Rfc3339")]
    pub at: Timestamp,
    /// `key:NAME` for API keys, `unauthenticated` for a refused credential, or the
    /// agent plane's party (`launcher:ID`).
    pub actor: String,
    /// `METHOD /route/{template}` (`ui:` first for the web UI) or a named event.
    pub action: String,
    /// The route's parameters (`pool=blue`) or the event's subject.
    pub target: String,
    /// The address the change came from; empty for the server's own events.
    pub source: String,
    /// `ok`, `denied`, `failed` or `error`, then the HTTP status for requests.
    pub outcome: String,
    pub prev_hash: String,
    pub hash: String,
}

/// `GET /api/v1/audit`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditList {
    pub entries: Vec<AuditEntry>,
}

/// `GET /api/v1/audit/verify`: whether every entry matches its hash and names the one
/// before; if not, the first that does not.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditVerified {
    /// The entries checked (all of them when the chain holds).
    pub entries: u64,
    pub first_broken: Option<u64>,
    pub reason: Option<String>,
}
