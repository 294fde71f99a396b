//! Cron schedules in a time zone: [`Schedule::parse`] reads a five-field cron expression
//! (or a shortcut such as `@daily`) with an IANA time-zone name, and
//! [`Schedule::next_after`] finds the next firing after an instant the caller passes in.
//! Pure logic: nothing here reads a clock, a file or the system's time-zone database (the
//! IANA data is compiled in through chrono-tz).
//!
//! # Syntax
//!
//! `minute hour day-of-month month day-of-week`, each field `*`, a number, a range `a-b`, a
//! step `*/n`, `a-b/n` or `a/n` (from `a` to the field's end), or a comma list of these.
//! Months may be named `JAN`-`DEC` and days `SUN`-`SAT`, in any case; day-of-week 0 and 7
//! are both Sunday. When both day fields are restricted (neither starts with `*`), a day
//! matches when either does, as in every standard cron; otherwise both must. Shortcuts:
//! `@yearly`/`@annually` (`0 0 1 1 *`), `@monthly` (`0 0 1 * *`), `@weekly` (`0 0 * * 0`),
//! `@daily`/`@midnight` (`0 0 * * *`) and `@hourly` (`0 * * * *`).
//!
//! # Time zones and daylight saving
//!
//! Fields match the zone's local wall-clock time. When clocks spring forward, local times in
//! the gap never happen, so a schedule matching only them skips that day (`30 2 * * *` in
//! Europe/Berlin does not fire on the last Sunday of March). When clocks fall back, a local
//! time that happens twice fires once, at the earlier instant. A firing is the start of the
//! matching local minute (second 0), returned in UTC milliseconds.

mod error;
mod fields;
mod next;

use chrono::{DateTime, LocalResult, NaiveDate, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use gantry_domain::Timestamp;

pub use error::ScheduleError;
use fields::{CronFields, parse_fields};

/// Longer expressions are refused: no sensible schedule needs more, and a bound keeps
/// stored schedules and error messages small.
const MAX_EXPRESSION_CHARS: usize = 256;

/// The search gives up after this local year, far beyond any schedule's useful life but
/// well inside chrono's calendar.
const LAST_SEARCHED_YEAR: i32 = 9000;

/// Every valid schedule fires within this many years of any instant: the rarest, February
/// 29th, can wait eight years across a century that is not a leap year (2096 to 2104).
const YEARS_WITHIN_WHICH_A_SCHEDULE_FIRES: i32 = 9;

/// A parsed cron expression bound to a time zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    cron: String,
    time_zone: Tz,
    fields: CronFields,
}

impl Schedule {
    /// Parses a five-field cron expression in an IANA time zone.
    pub fn parse(cron: &str, time_zone: &str) -> Result<Schedule, ScheduleError> {
        let cron = cron.trim();
        if cron.is_empty() {
            return Err(ScheduleError::Empty);
        }
        let length = cron.chars().count();
        if length > MAX_EXPRESSION_CHARS {
            return Err(ScheduleError::TooLong { length, max: MAX_EXPRESSION_CHARS });
        }
        let fields = parse_fields(cron)?;
        let time_zone: Tz = time_zone
            .trim()
            .parse()
            .map_err(|_| ScheduleError::UnknownTimeZone { time_zone: time_zone.to_owned() })?;
        let schedule = Schedule { cron: cron.to_owned(), time_zone, fields };
        schedule.check_that_it_fires()?;
        Ok(schedule)
    }

    /// The expression as given, trimmed.
    pub fn cron(&self) -> &str {
        &self.cron
    }

    /// The time zone's IANA name, as chrono-tz spells it.
    pub fn time_zone(&self) -> &str {
        self.time_zone.name()
    }

    /// The first firing strictly after `after`: the start (second 0, millisecond 0) of a
    /// matching minute, in UTC milliseconds. None only past year 9000 or so.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let after = DateTime::from_timestamp_millis(after.unix_millis())?;
        let firing = self.next_firing(after, LAST_SEARCHED_YEAR)?;
        Some(Timestamp::from_unix_millis(firing.timestamp_millis()))
    }

    /// Refuses expressions whose days never occur, such as February 30th, which would
    /// otherwise be accepted and silently never run.
    fn check_that_it_fires(&self) -> Result<(), ScheduleError> {
        let reference = NaiveDate::from_ymd_opt(2000, 1, 1)
            .and_then(|date| date.and_hms_opt(0, 0, 0))
            .map(|naive| naive.and_utc());
        let last_year = 2000 + YEARS_WITHIN_WHICH_A_SCHEDULE_FIRES;
        match reference.and_then(|reference| self.next_firing(reference, last_year)) {
            Some(_) => Ok(()),
            None => Err(ScheduleError::NeverFires {
                expression: self.cron.clone(),
                time_zone: self.time_zone.name().to_owned(),
            }),
        }
    }

    fn next_firing(&self, after: DateTime<Utc>, last_year: i32) -> Option<DateTime<Utc>> {
        let local_after = after.with_timezone(&self.time_zone).naive_local();
        // A firing strictly after `after` is in a later local minute: the repeated local
        // times after a fall-back fire at their earlier instant, which is not later.
        let mut candidate = local_after
            .with_second(0)?
            .with_nanosecond(0)?
            .checked_add_signed(TimeDelta::minutes(1))?;
        loop {
            let local_match = self.fields.first_match_from(candidate, last_year)?;
            let instant = match self.time_zone.from_local_datetime(&local_match) {
                LocalResult::Single(instant) => Some(instant),
                LocalResult::Ambiguous(earlier, _later) => Some(earlier),
                LocalResult::None => None,
            };
            if let Some(instant) = instant.map(|instant| instant.with_timezone(&Utc))
                && instant > after
            {
                return Some(instant);
            }
            candidate = local_match.checked_add_signed(TimeDelta::minutes(1))?;
        }
    }
}
