//! The schedule resources of the REST API: cron schedules that trigger a stack's tracked
//! runs, tasks and drift checks.

use gantry_domain::Timestamp;
use serde::{Deserialize, Serialize};
use serde_with::serde_as;

use crate::Rfc3339;

/// `POST /api/v1/stacks/{stack}/schedules`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSchedule {
    /// `tracked`, `task` or `drift`.
    pub kind: String,
    /// Five-field cron expression (`minute hour day-of-month month day-of-week`).
    pub cron: String,
    /// IANA time zone of the expression's times; UTC when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// The command of a `task` schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// For a `drift` schedule: a check that finds drift triggers a tracked run to undo it.
    #[serde(default)]
    pub reconcile: bool,
}

/// A schedule, when it fires next and what its last firing did.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub id: String,
    pub stack: String,
    pub kind: String,
    pub cron: String,
    pub time_zone: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default)]
    pub reconcile: bool,
    /// Absent when the expression will not fire again.
    #[serde_as(as = "Option<Rfc3339>")]
    #[serde(default)]
    pub next_fire_at: Option<Timestamp>,
    #[serde_as(as = "Option<Rfc3339>")]
    #[serde(default)]
    pub last_fired_at: Option<Timestamp>,
    #[serde(default)]
    pub last_outcome: Option<String>,
    pub created_by: String,
    #[serde_as(as = "Rfc3339")]
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScheduleList {
    pub schedules: Vec<Schedule>,
}
