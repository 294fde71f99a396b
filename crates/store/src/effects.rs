//! The outbox: effects that must follow a committed change, recorded in the change's own
//! transaction (`pending_effects`) so that a crash between the change and its effect
//! loses nothing, and carried out afterwards by whichever server process claims them.

use gantry_domain::{RunId, Timestamp};

use crate::StoreError;
use crate::sql_rows::{Columns, corrupt};
use crate::store::Result;

/// Work that follows a committed change. Carrying one out twice must do what carrying it
/// out once does: a claim can run out while its holder still works on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Effect {
    /// The run ended: the stacks that depend on its stack react (a finished tracked run
    /// triggers them, a failed or stopped one skips their waiting runs).
    RunEnded { run_id: RunId },
    /// Nothing names this blob any more: delete it from the blob store.
    DeleteBlob { key: String },
}

const RUN_ENDED: &str = "run-ended";
const DELETE_BLOB: &str = "delete-blob";

impl Effect {
    /// What identifies the effect: recording it again while it is pending changes nothing.
    pub fn key(&self) -> String {
        format!("{}:{}", self.kind(), self.subject())
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::RunEnded { .. } => RUN_ENDED,
            Self::DeleteBlob { .. } => DELETE_BLOB,
        }
    }

    pub(crate) fn subject(&self) -> String {
        match self {
            Self::RunEnded { run_id } => run_id.to_string(),
            Self::DeleteBlob { key } => key.clone(),
        }
    }

    fn from_columns(kind: &str, subject: &str) -> Result<Self> {
        match kind {
            RUN_ENDED => Ok(Self::RunEnded {
                run_id: subject
                    .parse()
                    .map_err(|error| corrupt("pending_effects.subject", error))?,
            }),
            DELETE_BLOB => Ok(Self::DeleteBlob { key: subject.to_owned() }),
            other => Err(StoreError::Corrupt(format!(
                "column pending_effects.kind: {other:?} is no kind of effect this server knows"
            ))),
        }
    }
}

impl std::fmt::Display for Effect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::RunEnded { run_id } => write!(f, "the end of run {run_id}"),
            Self::DeleteBlob { key } => write!(f, "the deletion of blob {key}"),
        }
    }
}

/// An effect not carried out yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEffectRecord {
    pub effect: Effect,
    pub created_at: Timestamp,
    /// Not tried again before this.
    pub due_at: Timestamp,
    /// Tries started so far (a claim counts as one).
    pub attempts: u32,
    /// Why the last try failed.
    pub last_error: Option<String>,
}

/// Now, for effects recorded by a write that is given no time (`prune_state_versions`):
/// when an effect was recorded only orders the queue and dates a stuck effect's warning.
pub(crate) fn wall_clock() -> Timestamp {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    Timestamp::from_unix_millis(i64::try_from(since_epoch).unwrap_or(i64::MAX))
}

pub(crate) const PENDING_EFFECT_COLUMNS: &str =
    "kind, subject, created_at, due_at, attempts, last_error";

pub(crate) fn pending_effect_from_row(row: &impl Columns) -> Result<PendingEffectRecord> {
    Ok(PendingEffectRecord {
        effect: Effect::from_columns(&row.text("kind")?, &row.text("subject")?)?,
        created_at: Timestamp::from_unix_millis(row.integer("created_at")?),
        due_at: Timestamp::from_unix_millis(row.integer("due_at")?),
        attempts: u32::try_from(row.integer("attempts")?).unwrap_or(u32::MAX),
        last_error: row.optional_text("last_error")?,
    })
}

/// The outbox's statements for an adapter of `sql_store!` (they need its `Tx`, `IDS` and
/// `SKIP_LOCKED`), as inherent methods its `Store` implementation calls.
macro_rules! sql_effects {
    ($store:ty) => {
        impl $store {
            /// Records `effects` in `tx`; one already pending stays as it is.
            async fn record_effects(
                tx: &mut Tx,
                effects: &[$crate::Effect],
                at: Timestamp,
            ) -> Result<()> {
                for effect in effects {
                    sqlx::query(
                        "INSERT INTO pending_effects (key, kind, subject, created_at, due_at)
                         VALUES ($1, $2, $3, $4, $4) ON CONFLICT (key) DO NOTHING",
                    )
                    .bind(effect.key())
                    .bind(effect.kind())
                    .bind(effect.subject())
                    .bind(at.unix_millis())
                    .execute(&mut **tx)
                    .await?;
                }
                Ok(())
            }

            /// Forgets the run's blobs of `purposes` in `tx` and records their deletion:
            /// the blob goes only once no row names it.
            async fn release_run_blobs(
                tx: &mut Tx,
                run_id: RunId,
                purposes: &[String],
                at: Timestamp,
            ) -> Result<()> {
                if purposes.is_empty() {
                    return Ok(());
                }
                // `IDS` is one of two literals, never input; it reads `$1`.
                let released: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM run_blobs WHERE run_id = $2 AND purpose IN ({ids}) RETURNING blob_key",
                    ids = Self::IDS
                )))
                .bind(to_json(&purposes))
                .bind(run_id.to_string())
                .fetch_all(&mut **tx)
                .await?;
                let effects: Vec<$crate::Effect> =
                    released.into_iter().map(|key| $crate::Effect::DeleteBlob { key }).collect();
                Self::record_effects(tx, &effects, at).await
            }

            async fn claim_due_effects(
                &self,
                now: Timestamp,
                lease: std::time::Duration,
                limit: u32,
            ) -> Result<Vec<$crate::PendingEffectRecord>> {
                let lease = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
                // The rows are picked and claimed in one statement; on PostgreSQL the
                // pick skips rows another replica is claiming, and the outer condition is
                // checked again on rows that changed meanwhile. SQLite's one writer runs
                // the statement alone. `SKIP_LOCKED` is one of two literals, never input.
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE pending_effects SET claimed_until = $1 + $2, attempts = attempts + 1
                     WHERE key IN (
                         SELECT key FROM pending_effects
                         WHERE due_at <= $1 AND (claimed_until IS NULL OR claimed_until <= $1)
                         ORDER BY due_at, key LIMIT $3{skip_locked}
                     )
                       AND due_at <= $1 AND (claimed_until IS NULL OR claimed_until <= $1)
                     RETURNING {columns}",
                    skip_locked = Self::SKIP_LOCKED,
                    columns = $crate::effects::PENDING_EFFECT_COLUMNS,
                )))
                .bind(now.unix_millis())
                .bind(lease)
                .bind(i64::from(limit))
                .fetch_all(&self.writer)
                .await?;
                let mut claimed: Vec<$crate::PendingEffectRecord> = rows
                    .iter()
                    .map($crate::effects::pending_effect_from_row)
                    .collect::<Result<_>>()?;
                claimed.sort_by_key(|pending| (pending.due_at, pending.effect.key()));
                Ok(claimed)
            }

            async fn delete_effect(&self, effect: &$crate::Effect) -> Result<()> {
                sqlx::query("DELETE FROM pending_effects WHERE key = $1")
                    .bind(effect.key())
                    .execute(&self.writer)
                    .await?;
                Ok(())
            }

            async fn postpone_pending_effect(
                &self,
                effect: &$crate::Effect,
                due_at: Timestamp,
                error: &str,
            ) -> Result<()> {
                sqlx::query(
                    "UPDATE pending_effects SET due_at = $2, claimed_until = NULL, last_error = $3
                     WHERE key = $1",
                )
                .bind(effect.key())
                .bind(due_at.unix_millis())
                .bind(error)
                .execute(&self.writer)
                .await?;
                Ok(())
            }

            async fn read_pending_effects(&self) -> Result<Vec<$crate::PendingEffectRecord>> {
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {columns} FROM pending_effects ORDER BY created_at, key",
                    columns = $crate::effects::PENDING_EFFECT_COLUMNS,
                )))
                .fetch_all(&self.reader)
                .await?;
                rows.iter().map($crate::effects::pending_effect_from_row).collect()
            }

            async fn insert_effects(&self, effects: &[$crate::Effect], at: Timestamp) -> Result<()> {
                let mut tx = self.begin().await?;
                Self::record_effects(&mut tx, effects, at).await?;
                self.commit(tx).await
            }
        }
    };
}

pub(crate) use sql_effects;
