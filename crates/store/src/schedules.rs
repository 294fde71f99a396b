//! Stacks' schedules: cron expressions that trigger tracked runs, tasks and drift checks,
//! each with the instant it fires next. Advancing that instant is compare-and-set, so one
//! firing is taken by one server process however many share the store. And the stacks a
//! drift check found drifted.

use gantry_domain::{RunId, ScheduleKind, StackId, Timestamp};

use crate::sql_rows::{Columns, flag, optional_text, optional_timestamp, parsed, text, timestamp};
use crate::store::Result;

/// One schedule of a stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRecord {
    /// A ULID.
    pub id: String,
    pub stack_id: StackId,
    pub kind: ScheduleKind,
    /// Five-field cron expression, as the user gave it.
    pub cron: String,
    /// IANA time zone the expression's wall-clock times are in.
    pub time_zone: String,
    /// A task's command; `None` for the other kinds.
    pub command: Option<String>,
    /// A drift check that finds drift triggers a tracked run to reconcile it.
    pub reconcile: bool,
    /// When it fires next (a firing missed while no server ran is this instant, past).
    pub next_fire_at: Timestamp,
    /// The last firing taken, and what came of it.
    pub last_fired_at: Option<Timestamp>,
    pub last_outcome: Option<String>,
    pub created_by: String,
    pub created_at: Timestamp,
}

/// A stack whose infrastructure drifted from its state, as a drift check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriftRecord {
    pub stack_id: StackId,
    /// The drift check that found it last.
    pub run_id: RunId,
    /// When it was first found (since the last tracked run that finished).
    pub detected_at: Timestamp,
}

pub(crate) const SCHEDULE_COLUMNS: &str = "id, stack_id, kind, cron, time_zone, command, reconcile, next_fire_at, last_fired_at, last_outcome, created_by, created_at";

pub(crate) fn drift_from_row(row: &impl Columns) -> Result<DriftRecord> {
    Ok(DriftRecord {
        stack_id: parsed(row, "stack_id")?,
        run_id: parsed(row, "run_id")?,
        detected_at: timestamp(row, "detected_at")?,
    })
}

pub(crate) fn schedule_from_row(row: &impl Columns) -> Result<ScheduleRecord> {
    Ok(ScheduleRecord {
        id: text(row, "id")?,
        stack_id: parsed(row, "stack_id")?,
        kind: parsed(row, "kind")?,
        cron: text(row, "cron")?,
        time_zone: text(row, "time_zone")?,
        command: optional_text(row, "command")?,
        reconcile: flag(row, "reconcile")?,
        next_fire_at: timestamp(row, "next_fire_at")?,
        last_fired_at: optional_timestamp(row, "last_fired_at")?,
        last_outcome: optional_text(row, "last_outcome")?,
        created_by: text(row, "created_by")?,
        created_at: timestamp(row, "created_at")?,
    })
}

/// The schedule statements for an adapter of `sql_store!`, as inherent methods its `Store`
/// implementation calls.
macro_rules! sql_schedules {
    ($store:ty) => {
        impl $store {
            async fn write_schedule(&self, schedule: &$crate::ScheduleRecord) -> Result<()> {
                sqlx::query(
                    "INSERT INTO schedules (id, stack_id, kind, cron, time_zone, command, reconcile, next_fire_at, last_fired_at, last_outcome, created_by, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                )
                .bind(&schedule.id)
                .bind(schedule.stack_id.to_string())
                .bind(schedule.kind.as_str())
                .bind(&schedule.cron)
                .bind(&schedule.time_zone)
                .bind(&schedule.command)
                .bind(i64::from(schedule.reconcile))
                .bind(schedule.next_fire_at.unix_millis())
                .bind(schedule.last_fired_at.map(Timestamp::unix_millis))
                .bind(&schedule.last_outcome)
                .bind(&schedule.created_by)
                .bind(schedule.created_at.unix_millis())
                .execute(&self.writer)
                .await
                .map_err(|e| already_exists("schedule", &schedule.id, e))?;
                self.durable().await
            }

            async fn read_schedules(
                &self,
                stack_id: Option<StackId>,
            ) -> Result<Vec<$crate::ScheduleRecord>> {
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {columns} FROM schedules WHERE $1 IS NULL OR stack_id = $1
                     ORDER BY created_at, id",
                    columns = $crate::schedules::SCHEDULE_COLUMNS,
                )))
                .bind(stack_id.map(|id| id.to_string()))
                .fetch_all(&self.reader)
                .await?;
                rows.iter().map($crate::schedules::schedule_from_row).collect()
            }

            async fn read_due_schedules(
                &self,
                now: Timestamp,
                limit: u32,
            ) -> Result<Vec<$crate::ScheduleRecord>> {
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {columns} FROM schedules WHERE next_fire_at <= $1
                     ORDER BY next_fire_at, id LIMIT $2",
                    columns = $crate::schedules::SCHEDULE_COLUMNS,
                )))
                .bind(now.unix_millis())
                .bind(i64::from(limit))
                .fetch_all(&self.reader)
                .await?;
                rows.iter().map($crate::schedules::schedule_from_row).collect()
            }

            async fn move_schedule_on(
                &self,
                id: &str,
                fired_at: Timestamp,
                next_fire_at: Timestamp,
                outcome: &str,
            ) -> Result<bool> {
                let moved = sqlx::query(
                    "UPDATE schedules SET next_fire_at = $3, last_fired_at = $2, last_outcome = $4
                     WHERE id = $1 AND next_fire_at = $2",
                )
                .bind(id)
                .bind(fired_at.unix_millis())
                .bind(next_fire_at.unix_millis())
                .bind(outcome)
                .execute(&self.writer)
                .await?
                .rows_affected();
                self.durable().await?;
                Ok(moved > 0)
            }

            async fn write_drift(&self, drift: &$crate::DriftRecord) -> Result<()> {
                // Drifted since the first check that found it; named after the latest.
                sqlx::query(
                    "INSERT INTO stack_drift (stack_id, run_id, detected_at) VALUES ($1, $2, $3)
                     ON CONFLICT (stack_id) DO UPDATE SET run_id = excluded.run_id",
                )
                .bind(drift.stack_id.to_string())
                .bind(drift.run_id.to_string())
                .bind(drift.detected_at.unix_millis())
                .execute(&self.writer)
                .await?;
                self.durable().await
            }

            async fn remove_drift(&self, stack_id: StackId) -> Result<bool> {
                let removed = sqlx::query("DELETE FROM stack_drift WHERE stack_id = $1")
                    .bind(stack_id.to_string())
                    .execute(&self.writer)
                    .await?
                    .rows_affected();
                self.durable().await?;
                Ok(removed > 0)
            }

            async fn read_drift(&self) -> Result<Vec<$crate::DriftRecord>> {
                let rows = sqlx::query(
                    "SELECT stack_id, run_id, detected_at FROM stack_drift ORDER BY detected_at, stack_id",
                )
                .fetch_all(&self.reader)
                .await?;
                rows.iter().map($crate::schedules::drift_from_row).collect()
            }

            async fn remove_schedule(&self, id: &str) -> Result<bool> {
                let removed = sqlx::query("DELETE FROM schedules WHERE id = $1")
                    .bind(id)
                    .execute(&self.writer)
                    .await?
                    .rows_affected();
                self.durable().await?;
                Ok(removed > 0)
            }
        }
    };
}

pub(crate) use sql_schedules;
