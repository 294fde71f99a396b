//! The webhook resources of the REST API: registering a repository's webhook, its
//! deliveries as the server logged them, and the answer a VCS gets to a delivery.

use gantry_domain::{RunId, Timestamp};
use serde::{Deserialize, Serialize};
use serde_with::{DisplayFromStr, serde_as};

use crate::Rfc3339;

/// `POST /api/v1/webhooks`: a repository whose VCS will send webhooks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// `github`, `gitlab`, `gitea` or `bitbucket`.
    pub provider: String,
    /// The repository's address, as stacks name it (any spelling of it: https, ssh).
    pub repository: String,
}

/// A registered webhook. Its secret is shown when it is created, and to administrators
/// on request (`GET /api/v1/webhooks/{id}/secret`).
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    pub id: String,
    pub provider: String,
    pub repository: String,
    /// Where the VCS sends its deliveries (the payload URL).
    pub url: String,
    pub created_by: String,
    #[serde_as(as = "Rfc3339")]
    pub created_at: Timestamp,
}

/// `201 Created`: the webhook and the secret to configure in the VCS.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedWebhook {
    pub webhook: Webhook,
    pub secret: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookSecret {
    pub secret: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookList {
    pub webhooks: Vec<Webhook>,
}

/// One delivery, as received, and what came of it.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub provider: String,
    pub delivery_id: String,
    #[serde_as(as = "Rfc3339")]
    pub received_at: Timestamp,
    pub event: String,
    pub repository: String,
    pub status: u16,
    pub outcome: String,
    #[serde_as(as = "Vec<DisplayFromStr>")]
    pub runs: Vec<RunId>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryList {
    pub deliveries: Vec<Delivery>,
}

/// What the server answers a delivery: what it triggered or why it did nothing. A
/// delivery id received before gets its first answer again, with `duplicate` set.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryAnswer {
    pub delivery_id: String,
    pub outcome: String,
    #[serde_as(as = "Vec<DisplayFromStr>")]
    pub runs: Vec<RunId>,
    pub duplicate: bool,
}
