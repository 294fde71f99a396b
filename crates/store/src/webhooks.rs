//! Webhooks: the repositories whose VCS sends events to this server, and the log of what
//! each delivery triggered or why it was ignored.

use gantry_domain::{RunId, Timestamp};

use crate::sql_rows::{Columns, corrupt, text, timestamp};
use crate::store::Result;

/// A repository whose VCS sends webhooks. Its secret is not stored: the server derives it
/// from a sealed secret of its own and `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRecord {
    /// A ULID.
    pub id: String,
    /// `github`, `gitlab`, `gitea` or `bitbucket`.
    pub provider: String,
    /// The address as the user gave it.
    pub repository: String,
    /// The address reduced to what its spellings share; unique per provider.
    pub repository_key: String,
    pub created_by: String,
    pub created_at: Timestamp,
}

/// One delivery as received, and what came of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    pub provider: String,
    /// What the delivery is known by: a digest of its body, which its signature covers.
    pub digest: String,
    /// The provider's id of the delivery, as sent (not signed: shown, never trusted).
    pub delivery_id: String,
    pub received_at: Timestamp,
    /// The provider's name of the event (`push`, `Merge Request Hook`, ...).
    pub event: String,
    /// The repository as the payload names it (empty when it could not be read).
    pub repository: String,
    /// The HTTP status the delivery was answered with.
    pub status: u16,
    /// What it triggered, or why it did nothing.
    pub outcome: String,
    pub runs: Vec<RunId>,
}

/// How long deliveries are kept in the log.
pub const DELIVERY_RETENTION: std::time::Duration =
    std::time::Duration::from_secs(30 * 24 * 60 * 60);

pub(crate) const WEBHOOK_COLUMNS: &str =
    "id, provider, repository, repository_key, created_by, created_at";
pub(crate) const DELIVERY_COLUMNS: &str =
    "provider, digest, delivery_id, received_at, event, repository, status, outcome, runs";

pub(crate) fn webhook_from_row(row: &impl Columns) -> Result<WebhookRecord> {
    Ok(WebhookRecord {
        id: text(row, "id")?,
        provider: text(row, "provider")?,
        repository: text(row, "repository")?,
        repository_key: text(row, "repository_key")?,
        created_by: text(row, "created_by")?,
        created_at: timestamp(row, "created_at")?,
    })
}

pub(crate) fn delivery_from_row(row: &impl Columns) -> Result<DeliveryRecord> {
    let runs = text(row, "runs")?;
    Ok(DeliveryRecord {
        provider: text(row, "provider")?,
        digest: text(row, "digest")?,
        delivery_id: text(row, "delivery_id")?,
        received_at: timestamp(row, "received_at")?,
        event: text(row, "event")?,
        repository: text(row, "repository")?,
        status: u16::try_from(row.integer("status")?)
            .map_err(|error| corrupt("webhook_deliveries.status", error))?,
        outcome: text(row, "outcome")?,
        runs: runs
            .split(',')
            .filter(|id| !id.is_empty())
            .map(|id| id.parse().map_err(|error| corrupt("webhook_deliveries.runs", error)))
            .collect::<Result<_>>()?,
    })
}

/// The webhook statements for an adapter of `sql_store!`, as inherent methods its `Store`
/// implementation calls.
macro_rules! sql_webhooks {
    ($store:ty) => {
        impl $store {
            async fn write_webhook(&self, webhook: &$crate::WebhookRecord) -> Result<()> {
                sqlx::query(
                    "INSERT INTO webhooks (id, provider, repository, repository_key, created_by, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&webhook.id)
                .bind(&webhook.provider)
                .bind(&webhook.repository)
                .bind(&webhook.repository_key)
                .bind(&webhook.created_by)
                .bind(webhook.created_at.unix_millis())
                .execute(&self.writer)
                .await
                .map_err(|e| already_exists("webhook", &webhook.repository, e))?;
                self.durable().await
            }

            async fn read_webhooks(&self) -> Result<Vec<$crate::WebhookRecord>> {
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {columns} FROM webhooks ORDER BY created_at, id",
                    columns = $crate::webhooks::WEBHOOK_COLUMNS,
                )))
                .fetch_all(&self.reader)
                .await?;
                rows.iter().map($crate::webhooks::webhook_from_row).collect()
            }

            async fn remove_webhook(&self, id: &str) -> Result<bool> {
                let removed = sqlx::query("DELETE FROM webhooks WHERE id = $1")
                    .bind(id)
                    .execute(&self.writer)
                    .await?
                    .rows_affected();
                self.durable().await?;
                Ok(removed > 0)
            }

            async fn write_delivery(&self, delivery: &$crate::DeliveryRecord) -> Result<bool> {
                let runs: Vec<String> = delivery.runs.iter().map(ToString::to_string).collect();
                let mut tx = self.begin().await?;
                let oldest_kept = delivery.received_at.unix_millis().saturating_sub(
                    i64::try_from($crate::webhooks::DELIVERY_RETENTION.as_millis())
                        .unwrap_or(i64::MAX),
                );
                sqlx::query("DELETE FROM webhook_deliveries WHERE received_at < $1")
                    .bind(oldest_kept)
                    .execute(&mut *tx)
                    .await?;
                let inserted = sqlx::query(
                    "INSERT INTO webhook_deliveries (provider, digest, delivery_id, received_at, event, repository, status, outcome, runs)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT (provider, digest) DO NOTHING",
                )
                .bind(&delivery.provider)
                .bind(&delivery.digest)
                .bind(&delivery.delivery_id)
                .bind(delivery.received_at.unix_millis())
                .bind(&delivery.event)
                .bind(&delivery.repository)
                .bind(i64::from(delivery.status))
                .bind(&delivery.outcome)
                .bind(runs.join(","))
                .execute(&mut *tx)
                .await?
                .rows_affected();
                self.commit(tx).await?;
                Ok(inserted > 0)
            }

            async fn read_delivery(
                &self,
                provider: &str,
                digest: &str,
            ) -> Result<Option<$crate::DeliveryRecord>> {
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {columns} FROM webhook_deliveries WHERE provider = $1 AND digest = $2",
                    columns = $crate::webhooks::DELIVERY_COLUMNS,
                )))
                .bind(provider)
                .bind(digest)
                .fetch_optional(&self.reader)
                .await?;
                row.as_ref().map($crate::webhooks::delivery_from_row).transpose()
            }

            async fn read_deliveries(&self, limit: u32) -> Result<Vec<$crate::DeliveryRecord>> {
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {columns} FROM webhook_deliveries
                     ORDER BY received_at DESC, digest DESC LIMIT $1",
                    columns = $crate::webhooks::DELIVERY_COLUMNS,
                )))
                .bind(i64::from(limit))
                .fetch_all(&self.reader)
                .await?;
                rows.iter().map($crate::webhooks::delivery_from_row).collect()
            }
        }
    };
}

pub(crate) use sql_webhooks;
