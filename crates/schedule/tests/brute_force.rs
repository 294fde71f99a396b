//! `next_after` against a minute-by-minute scan over a few days. The scan knows the
//! allowed values of each generated field directly, so it shares no parsing or searching
//! code with the crate, and it settles repeated local times by remembering which ones it has
//! already seen rather than by asking chrono which instant is earlier.

use std::collections::HashSet;

use chrono::{DateTime, Datelike, NaiveDateTime, Timelike, Utc};
use chrono_tz::Tz;
use gantry_domain::Timestamp;
use gantry_schedule::Schedule;
use proptest::prelude::*;

const MINUTE_MILLIS: i64 = 60_000;
const SCANNED_DAYS: i64 = 4;
/// Longer than any daylight-saving shift, so a local time repeated just before `after` is
/// already remembered when the scan reaches `after`.
const LOOK_BEHIND_MILLIS: i64 = 3 * 60 * MINUTE_MILLIS;

/// One field's text and the values it allows.
#[derive(Debug, Clone)]
struct Field {
    text: &'static str,
    allowed: Vec<u32>,
}

fn field(choices: Vec<(&'static str, Vec<u32>)>) -> impl Strategy<Value = Field> {
    proptest::sample::select(choices).prop_map(|(text, allowed)| Field { text, allowed })
}

fn every(first: u32, last: u32, step: usize) -> Vec<u32> {
    (first..=last).step_by(step).collect()
}

#[derive(Debug, Clone)]
struct Expression {
    minute: Field,
    hour: Field,
    day_of_month: Field,
    month: Field,
    day_of_week: Field,
}

impl Expression {
    fn text(&self) -> String {
        [&self.minute, &self.hour, &self.day_of_month, &self.month, &self.day_of_week]
            .map(|field| field.text)
            .join(" ")
    }

    fn matches(&self, local: NaiveDateTime) -> bool {
        let day_of_month = self.day_of_month.allowed.contains(&local.day());
        let weekday = local.weekday().num_days_from_sunday();
        let day_of_week = self.day_of_week.allowed.iter().any(|&day| day % 7 == weekday);
        let either =
            !self.day_of_month.text.starts_with('*') && !self.day_of_week.text.starts_with('*');
        let day = if either { day_of_month || day_of_week } else { day_of_month && day_of_week };
        day && self.minute.allowed.contains(&local.minute())
            && self.hour.allowed.contains(&local.hour())
            && self.month.allowed.contains(&local.month())
    }
}

fn expressions() -> impl Strategy<Value = Expression> {
    let minute = field(vec![
        ("*", every(0, 59, 1)),
        ("0", vec![0]),
        ("*/15", every(0, 59, 15)),
        ("5,35", vec![5, 35]),
        ("10-20/5", vec![10, 15, 20]),
        ("7/20", vec![7, 27, 47]),
        ("59", vec![59]),
        ("30", vec![30]),
    ]);
    let hour = field(vec![
        ("*", every(0, 23, 1)),
        ("2", vec![2]),
        ("1-3", vec![1, 2, 3]),
        ("*/6", every(0, 23, 6)),
        ("0,12", vec![0, 12]),
        ("2/10", vec![2, 12, 22]),
        ("23", vec![23]),
    ]);
    let day_of_month = field(vec![
        ("*", every(1, 31, 1)),
        ("*", every(1, 31, 1)),
        ("1", vec![1]),
        ("13", vec![13]),
        ("28-31", every(28, 31, 1)),
        ("*/10", every(1, 31, 10)),
        ("31", vec![31]),
    ]);
    let month = field(vec![
        ("*", every(1, 12, 1)),
        ("*", every(1, 12, 1)),
        ("*", every(1, 12, 1)),
        ("*/2", every(1, 12, 2)),
        ("3,10,11", vec![3, 10, 11]),
        ("apr-SEP", every(4, 9, 1)),
    ]);
    let day_of_week = field(vec![
        ("*", every(0, 7, 1)),
        ("*", every(0, 7, 1)),
        ("0", vec![0]),
        ("7", vec![7]),
        ("1-5", every(1, 5, 1)),
        ("SAT,sun", vec![6, 0]),
        ("*/3", every(0, 7, 3)),
        ("FRI", vec![5]),
    ]);
    (minute, hour, day_of_month, month, day_of_week).prop_map(
        |(minute, hour, day_of_month, month, day_of_week)| Expression {
            minute,
            hour,
            day_of_month,
            month,
            day_of_week,
        },
    )
}

fn millis(rfc3339: &str) -> i64 {
    DateTime::parse_from_rfc3339(rfc3339).unwrap().timestamp_millis()
}

fn uniform_instants() -> impl Strategy<Value = i64> {
    millis("2020-01-01T00:00:00Z")..millis("2031-01-01T00:00:00Z")
}

/// A zone, and an instant uniform over 2020-2030 or close to one of that zone's
/// daylight-saving changes, where the interesting cases are.
fn zones_and_instants() -> impl Strategy<Value = (Tz, i64)> {
    let changes = vec![
        (Tz::Europe__Berlin, "2024-03-31T01:00:00Z"),
        (Tz::Europe__Berlin, "2024-10-27T01:00:00Z"),
        (Tz::America__New_York, "2024-03-10T07:00:00Z"),
        (Tz::America__New_York, "2024-11-03T06:00:00Z"),
        // Lord Howe Island shifts by half an hour.
        (Tz::Australia__Lord_Howe, "2024-04-06T15:00:00Z"),
        (Tz::Australia__Lord_Howe, "2024-10-05T15:30:00Z"),
    ];
    let hour = 60 * MINUTE_MILLIS;
    let near = (
        proptest::sample::select(changes),
        prop_oneof![-3 * hour..3 * hour, -48 * hour..48 * hour],
    )
        .prop_map(|((time_zone, change), offset)| (time_zone, millis(change) + offset));
    let zones = [Tz::Europe__Berlin, Tz::America__New_York, Tz::Australia__Lord_Howe];
    let anywhere = (proptest::sample::select(zones.to_vec()), uniform_instants());
    prop_oneof![1 => anywhere, 3 => near]
}

/// The first firing strictly after `after` within the scanned days, by trying every minute.
fn scan(expression: &Expression, time_zone: Tz, after: i64) -> Option<i64> {
    let first = (after - LOOK_BEHIND_MILLIS).div_euclid(MINUTE_MILLIS) * MINUTE_MILLIS;
    let last = after + SCANNED_DAYS * 24 * 60 * MINUTE_MILLIS;
    let mut seen_local_times = HashSet::new();
    for instant in (first..=last).step_by(MINUTE_MILLIS as usize) {
        let utc = DateTime::<Utc>::from_timestamp_millis(instant).unwrap();
        let local = utc.with_timezone(&time_zone).naive_local();
        let first_occurrence = seen_local_times.insert(local);
        if instant > after && first_occurrence && expression.matches(local) {
            return Some(instant);
        }
    }
    None
}

fn check(expression: &Expression, time_zone: Tz, after: i64) -> Result<(), TestCaseError> {
    let schedule = Schedule::parse(&expression.text(), time_zone.name())
        .map_err(|error| TestCaseError::fail(error.to_string()))?;
    let next = schedule.next_after(Timestamp::from_unix_millis(after)).map(|t| t.unix_millis());
    match scan(expression, time_zone, after) {
        Some(expected) => prop_assert_eq!(next, Some(expected)),
        None => {
            let scanned_until = after + SCANNED_DAYS * 24 * 60 * MINUTE_MILLIS;
            prop_assert!(next.is_some_and(|next| next > scanned_until), "{next:?}");
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn next_after_agrees_with_a_scan_in_utc(expression in expressions(), after in uniform_instants()) {
        check(&expression, Tz::UTC, after)?;
    }

    #[test]
    fn next_after_agrees_with_a_scan_across_daylight_saving(
        expression in expressions(),
        (time_zone, after) in zones_and_instants(),
    ) {
        check(&expression, time_zone, after)?;
    }
}
