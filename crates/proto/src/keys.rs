//! The REST API's API keys (`/api/v1/keys`): creating one (its secret is in the answer,
//! the only time it exists in clear), listing and revoking them.

use gantry_domain::Timestamp;
use gantry_domain::access::Role;
use serde::{Deserialize, Serialize};
use serde_with::{DisplayFromStr, serde_as};

use crate::Rfc3339;

/// `POST /api/v1/keys`
#[serde_as]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub name: String,
    #[serde_as(as = "DisplayFromStr")]
    pub role: Role,
    /// `pool:NAME`, `pool-label:LABEL`, `stack:NAME`, `stack-label:LABEL`; none reaches
    /// everything.
    #[serde(default)]
    pub scope: Vec<String>,
    /// When the key stops working; never when absent.
    #[serde_as(as = "Option<Rfc3339>")]
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
}

/// The answer to key creation: the only time the secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyCreated {
    pub key: ApiKey,
    pub secret: String,
}

/// An API key as the API shows it: never its secret or the secret's hash.
#[serde_as]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiKey {
    /// A prefix of the secret's hash: names the key, reveals nothing.
    pub id: String,
    pub name: String,
    #[serde_as(as = "DisplayFromStr")]
    pub role: Role,
    pub scope: Vec<String>,
    /// The key that created it, or `gantry server` / `gantry up` for keys they made.
    pub created_by: String,
    #[serde_as(as = "Rfc3339")]
    pub created_at: Timestamp,
    #[serde_as(as = "Option<Rfc3339>")]
    pub expires_at: Option<Timestamp>,
    /// Kept to about a minute.
    #[serde_as(as = "Option<Rfc3339>")]
    pub last_used_at: Option<Timestamp>,
    #[serde_as(as = "Option<Rfc3339>")]
    pub revoked_at: Option<Timestamp>,
}

/// `GET /api/v1/keys`: every key, revoked ones included, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyList {
    pub keys: Vec<ApiKey>,
}
