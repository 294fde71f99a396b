//! The classic cron next-time search on local wall-clock time: whole months, days and
//! hours that cannot match are skipped, so rare schedules cost a few hundred steps at most.

use chrono::{Datelike, NaiveDate, NaiveDateTime, NaiveTime, Timelike};

use crate::fields::CronFields;

impl CronFields {
    /// Whether the expression's day fields accept `date`.
    pub(crate) fn day_matches(&self, date: NaiveDate) -> bool {
        let day_of_month = self.days_of_month.contains(date.day());
        let day_of_week = self.days_of_week.contains(date.weekday().num_days_from_sunday());
        if self.days_match_either {
            day_of_month || day_of_week
        } else {
            day_of_month && day_of_week
        }
    }

    /// The first matching minute at or after `start` (taken to its minute), or None when
    /// there is none up to the end of `last_year`.
    pub(crate) fn first_match_from(
        &self,
        start: NaiveDateTime,
        last_year: i32,
    ) -> Option<NaiveDateTime> {
        let mut date = start.date();
        let (mut hour, mut minute) = (start.hour(), start.minute());
        while date.year() <= last_year {
            if !self.months.contains(date.month()) {
                date = self.first_day_of_next_allowed_month(date)?;
                (hour, minute) = (0, 0);
                continue;
            }
            if !self.day_matches(date) {
                date = date.succ_opt()?;
                (hour, minute) = (0, 0);
                continue;
            }
            let Some(allowed_hour) = self.hours.first_at_or_after(hour) else {
                date = date.succ_opt()?;
                (hour, minute) = (0, 0);
                continue;
            };
            if allowed_hour != hour {
                (hour, minute) = (allowed_hour, 0);
            }
            match self.minutes.first_at_or_after(minute) {
                Some(allowed_minute) => {
                    return NaiveTime::from_hms_opt(hour, allowed_minute, 0)
                        .map(|time| date.and_time(time));
                }
                None if hour < 23 => (hour, minute) = (hour + 1, 0),
                None => {
                    date = date.succ_opt()?;
                    (hour, minute) = (0, 0);
                }
            }
        }
        None
    }

    fn first_day_of_next_allowed_month(&self, date: NaiveDate) -> Option<NaiveDate> {
        match self.months.first_at_or_after(date.month() + 1) {
            Some(month) => NaiveDate::from_ymd_opt(date.year(), month, 1),
            None => NaiveDate::from_ymd_opt(date.year() + 1, self.months.first_at_or_after(1)?, 1),
        }
    }
}
