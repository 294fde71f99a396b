//! Examples of every syntax form, every refusal, month ends, leap years and daylight-saving
//! changes, read as UTC instants so the expected values can be checked by hand.

use chrono::{DateTime, SecondsFormat};
use gantry_domain::Timestamp;
use gantry_schedule::{Schedule, ScheduleError};

fn instant(rfc3339: &str) -> Timestamp {
    let parsed = DateTime::parse_from_rfc3339(rfc3339).expect("test instants are RFC 3339");
    Timestamp::from_unix_millis(parsed.timestamp_millis())
}

fn rfc3339(timestamp: Timestamp) -> String {
    DateTime::from_timestamp_millis(timestamp.unix_millis())
        .expect("firings are in chrono's range")
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The next `count` firings after `after`, each as UTC RFC 3339 with milliseconds.
fn firings(cron: &str, time_zone: &str, after: &str, count: usize) -> Vec<String> {
    let schedule = Schedule::parse(cron, time_zone).expect("the example schedule is valid");
    let mut after = instant(after);
    let mut found = Vec::new();
    for _ in 0..count {
        after = schedule.next_after(after).expect("the example schedule fires");
        found.push(rfc3339(after));
    }
    found
}

fn refusal(cron: &str, time_zone: &str) -> (ScheduleError, String) {
    let error = Schedule::parse(cron, time_zone).expect_err("the example is refused");
    let message = error.to_string();
    (error, message)
}

#[test]
fn accessors_return_the_trimmed_expression_and_the_zone_name() {
    let schedule = Schedule::parse("  0 3 * * *\t", " Europe/Berlin ").unwrap();
    assert_eq!(schedule.cron(), "0 3 * * *");
    assert_eq!(schedule.time_zone(), "Europe/Berlin");
    assert_eq!(Schedule::parse("@daily", "US/Eastern").unwrap().time_zone(), "US/Eastern");
    assert_eq!(Schedule::parse("@daily", "UTC").unwrap().cron(), "@daily");
}

#[test]
fn firings_are_minute_starts_strictly_after_the_given_instant() {
    let every_minute = |after| firings("* * * * *", "UTC", after, 1);
    assert_eq!(every_minute("2024-01-01T10:00:00Z"), ["2024-01-01T10:01:00.000Z"]);
    assert_eq!(every_minute("2024-01-01T10:00:59.999Z"), ["2024-01-01T10:01:00.000Z"]);
    assert_eq!(every_minute("2024-12-31T23:59:30Z"), ["2025-01-01T00:00:00.000Z"]);
    assert_eq!(
        firings("0 3 * * *", "UTC", "2024-01-01T03:00:00Z", 2),
        ["2024-01-02T03:00:00.000Z", "2024-01-03T03:00:00.000Z"]
    );
    assert_eq!(
        firings("0 3 * * *", "UTC", "2024-01-01T02:59:59.999Z", 1),
        ["2024-01-01T03:00:00.000Z"]
    );
}

#[test]
fn every_syntax_form_fires_where_expected() {
    let at = "2024-01-01T10:16:00Z";
    let minutes = |cron, count| {
        firings(cron, "UTC", at, count).iter().map(|s| s[11..16].to_owned()).collect::<Vec<_>>()
    };
    assert_eq!(minutes("*/15 * * * *", 3), ["10:30", "10:45", "11:00"]);
    assert_eq!(minutes("10-40/15 * * * *", 4), ["10:25", "10:40", "11:10", "11:25"]);
    assert_eq!(minutes("50/5 * * * *", 3), ["10:50", "10:55", "11:50"]);
    assert_eq!(minutes("5,17-18,*/20 * * * *", 5), ["10:17", "10:18", "10:20", "10:40", "11:00"]);
    assert_eq!(minutes("0 9-11 * * *", 3), ["11:00", "09:00", "10:00"]);
    assert_eq!(minutes("0 */8 * * *", 3), ["16:00", "00:00", "08:00"]);
    assert_eq!(
        firings("0 0 1 jan,Jul *", "UTC", at, 3),
        ["2024-07-01T00:00:00.000Z", "2025-01-01T00:00:00.000Z", "2025-07-01T00:00:00.000Z"]
    );
    assert_eq!(
        firings("0 0 1 FEB-dec/5 *", "UTC", at, 3),
        ["2024-02-01T00:00:00.000Z", "2024-07-01T00:00:00.000Z", "2024-12-01T00:00:00.000Z"]
    );
    // 2024-01-01 is a Monday.
    assert_eq!(
        firings("0 12 * * mon-WED", "UTC", at, 4),
        [
            "2024-01-01T12:00:00.000Z",
            "2024-01-02T12:00:00.000Z",
            "2024-01-03T12:00:00.000Z",
            "2024-01-08T12:00:00.000Z"
        ]
    );
}

#[test]
fn day_of_week_zero_and_seven_are_both_sunday() {
    let sundays = firings("0 0 * * 0", "UTC", "2024-01-01T00:00:00Z", 2);
    assert_eq!(sundays, ["2024-01-07T00:00:00.000Z", "2024-01-14T00:00:00.000Z"]);
    assert_eq!(firings("0 0 * * 7", "UTC", "2024-01-01T00:00:00Z", 2), sundays);
    assert_eq!(firings("0 0 * * SUN", "UTC", "2024-01-01T00:00:00Z", 2), sundays);
    assert_eq!(
        firings("0 0 * * 6-7", "UTC", "2024-01-01T00:00:00Z", 3),
        ["2024-01-06T00:00:00.000Z", "2024-01-07T00:00:00.000Z", "2024-01-13T00:00:00.000Z"]
    );
}

#[test]
fn restricted_day_fields_match_either_and_a_star_field_makes_both_required() {
    // The 13th, and every Friday.
    assert_eq!(
        firings("0 0 13 * FRI", "UTC", "2024-01-01T00:00:00Z", 4),
        [
            "2024-01-05T00:00:00.000Z",
            "2024-01-12T00:00:00.000Z",
            "2024-01-13T00:00:00.000Z",
            "2024-01-19T00:00:00.000Z"
        ]
    );
    // Odd days that are Fridays: `*/2` starts with `*`, so both fields must match.
    assert_eq!(
        firings("0 0 */2 * FRI", "UTC", "2024-01-01T00:00:00Z", 5),
        [
            "2024-01-05T00:00:00.000Z",
            "2024-01-19T00:00:00.000Z",
            "2024-02-09T00:00:00.000Z",
            "2024-02-23T00:00:00.000Z",
            "2024-03-01T00:00:00.000Z"
        ]
    );
    assert_eq!(
        firings("0 0 * * FRI", "UTC", "2024-01-01T00:00:00Z", 2),
        ["2024-01-05T00:00:00.000Z", "2024-01-12T00:00:00.000Z"]
    );
}

#[test]
fn shortcuts_fire_like_their_expansions() {
    let after = "2024-05-17T13:45:00Z";
    for (shortcut, expansion) in [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
    ] {
        assert_eq!(
            firings(shortcut, "Europe/Berlin", after, 3),
            firings(expansion, "Europe/Berlin", after, 3),
            "{shortcut}"
        );
    }
    assert_eq!(
        firings("@hourly", "UTC", after, 2),
        ["2024-05-17T14:00:00.000Z", "2024-05-17T15:00:00.000Z"]
    );
    assert_eq!(firings("@weekly", "UTC", after, 1), ["2024-05-19T00:00:00.000Z"]);
    assert_eq!(firings("@monthly", "UTC", after, 1), ["2024-06-01T00:00:00.000Z"]);
    assert_eq!(firings("@yearly", "UTC", after, 1), ["2025-01-01T00:00:00.000Z"]);
}

#[test]
fn month_ends_skip_months_that_are_too_short() {
    assert_eq!(
        firings("0 0 31 * *", "UTC", "2024-01-31T00:00:00Z", 3),
        ["2024-03-31T00:00:00.000Z", "2024-05-31T00:00:00.000Z", "2024-07-31T00:00:00.000Z"]
    );
    assert_eq!(
        firings("0 0 30 * *", "UTC", "2023-01-30T00:00:00Z", 2),
        ["2023-03-30T00:00:00.000Z", "2023-04-30T00:00:00.000Z"]
    );
    assert_eq!(
        firings("59 23 28-31 2 *", "UTC", "2023-02-28T23:59:00Z", 2),
        ["2024-02-28T23:59:00.000Z", "2024-02-29T23:59:00.000Z"]
    );
}

#[test]
fn february_29th_fires_in_leap_years_only() {
    assert_eq!(
        firings("0 0 29 2 *", "UTC", "2024-03-01T00:00:00Z", 2),
        ["2028-02-29T00:00:00.000Z", "2032-02-29T00:00:00.000Z"]
    );
    // 2100 is not a leap year; 2000 was.
    assert_eq!(
        firings("0 0 29 2 *", "UTC", "2096-03-01T00:00:00Z", 1),
        ["2104-02-29T00:00:00.000Z"]
    );
    assert_eq!(
        firings("0 0 29 2 *", "UTC", "1999-03-01T00:00:00Z", 1),
        ["2000-02-29T00:00:00.000Z"]
    );
}

#[test]
fn rare_schedules_are_found_quickly_and_the_search_ends_near_year_9000() {
    let leap_days = Schedule::parse("0 0 29 2 *", "America/New_York").unwrap();
    let mut after = instant("2000-01-01T00:00:00Z");
    for _ in 0..1_000 {
        after = leap_days.next_after(after).unwrap();
    }
    assert_eq!(rfc3339(after), "6120-02-29T05:00:00.000Z");
    // 9000 is not a leap year, and the search stops there.
    assert_eq!(leap_days.next_after(instant("8996-03-01T00:00:00Z")), None);
    assert_eq!(leap_days.next_after(Timestamp::from_unix_millis(i64::MAX)), None);
    let friday_13th = Schedule::parse("0 0 13 * FRI", "Europe/Berlin").unwrap();
    assert!(friday_13th.next_after(instant("2024-01-01T00:00:00Z")).is_some());
}

#[test]
fn spring_forward_skips_local_times_in_the_gap() {
    // Europe/Berlin, 2024-03-31: 02:00 CET jumps to 03:00 CEST.
    assert_eq!(
        firings("30 2 * * *", "Europe/Berlin", "2024-03-30T00:00:00Z", 2),
        ["2024-03-30T01:30:00.000Z", "2024-04-01T00:30:00.000Z"]
    );
    assert_eq!(
        firings("*/30 * * * *", "Europe/Berlin", "2024-03-31T00:15:00Z", 3),
        ["2024-03-31T00:30:00.000Z", "2024-03-31T01:00:00.000Z", "2024-03-31T01:30:00.000Z"]
    );
    // America/New_York, 2024-03-10: 02:00 EST jumps to 03:00 EDT.
    assert_eq!(
        firings("30 2 * * *", "America/New_York", "2024-03-10T00:00:00Z", 1),
        ["2024-03-11T06:30:00.000Z"]
    );
    assert_eq!(
        firings("0 * * * *", "America/New_York", "2024-03-10T06:30:00Z", 2),
        ["2024-03-10T07:00:00.000Z", "2024-03-10T08:00:00.000Z"]
    );
}

#[test]
fn fall_back_fires_a_repeated_local_time_once_at_the_earlier_instant() {
    // Europe/Berlin, 2024-10-27: 03:00 CEST falls back to 02:00 CET.
    assert_eq!(
        firings("30 2 * * *", "Europe/Berlin", "2024-10-26T12:00:00Z", 2),
        ["2024-10-27T00:30:00.000Z", "2024-10-28T01:30:00.000Z"]
    );
    // Hourly: the second 02:00 (01:00Z) is the repeat, so the next firing is 03:00 CET.
    assert_eq!(
        firings("0 * * * *", "Europe/Berlin", "2024-10-26T23:30:00Z", 2),
        ["2024-10-27T00:00:00.000Z", "2024-10-27T02:00:00.000Z"]
    );
    // Asked during the repeat itself, after the earlier 02:30 has passed.
    assert_eq!(
        firings("30 2 * * *", "Europe/Berlin", "2024-10-27T01:10:00Z", 1),
        ["2024-10-28T01:30:00.000Z"]
    );
    assert_eq!(
        firings("45 2 * * *", "Europe/Berlin", "2024-10-27T00:50:00Z", 1),
        ["2024-10-28T01:45:00.000Z"]
    );
    // America/New_York, 2024-11-03: 02:00 EDT falls back to 01:00 EST.
    assert_eq!(
        firings("30 1 * * *", "America/New_York", "2024-11-02T12:00:00Z", 2),
        ["2024-11-03T05:30:00.000Z", "2024-11-04T06:30:00.000Z"]
    );
    assert_eq!(
        firings("*/20 1 * * *", "America/New_York", "2024-11-03T05:30:00Z", 3),
        ["2024-11-03T05:40:00.000Z", "2024-11-04T06:00:00.000Z", "2024-11-04T06:20:00.000Z"]
    );
}

#[test]
fn empty_and_overlong_expressions_are_refused() {
    for empty in ["", "  \t "] {
        let (error, message) = refusal(empty, "UTC");
        assert_eq!(error, ScheduleError::Empty);
        assert!(message.contains("\"0 3 * * *\""), "{message}");
    }
    let longest = format!("0 0 * * 00{}", ",1".repeat(123));
    assert_eq!(longest.len(), 256);
    assert!(Schedule::parse(&format!(" {longest} "), "UTC").is_ok());
    let (error, message) = refusal(&format!("0 0 * * 000{}", ",1".repeat(123)), "UTC");
    assert_eq!(error, ScheduleError::TooLong { length: 257, max: 256 });
    assert!(message.contains("257") && message.contains("at most 256"), "{message}");
}

#[test]
fn a_wrong_number_of_fields_is_refused() {
    for (cron, found) in [("0 3 * *", 4), ("0 0 3 * * *", 6), ("daily", 1)] {
        let (error, message) = refusal(cron, "UTC");
        assert_eq!(error, ScheduleError::WrongFieldCount { expression: cron.to_owned(), found });
        assert!(message.contains(&format!("has {found} field")), "{message}");
        assert!(message.contains("expected five") && message.contains("\"0 3 * * *\""));
    }
    let (error, message) = refusal("@reboot", "UTC");
    assert_eq!(error, ScheduleError::UnknownShortcut { shortcut: "@reboot".to_owned() });
    assert!(message.contains("@reboot") && message.contains("@hourly"), "{message}");
}

#[test]
fn values_out_of_range_name_the_field_and_its_range() {
    for (cron, field, value, range) in [
        ("60 * * * *", "minute", "60", "0-59"),
        ("* 24 * * *", "hour", "24", "0-23"),
        ("* * 0 * *", "day-of-month", "0", "1-31"),
        ("* * 32 * *", "day-of-month", "32", "1-31"),
        ("* * * 0 *", "month", "0", "1-12"),
        ("* * * 1-13 *", "month", "13", "1-12"),
        ("* * * * 8", "day-of-week", "8", "0-7"),
        ("99999999999 * * * *", "minute", "99999999999", "0-59"),
    ] {
        let (error, message) = refusal(cron, "UTC");
        assert!(matches!(error, ScheduleError::OutOfRange { field: f, .. } if f == field));
        assert!(message.starts_with(&format!("{field} value {value} is out of range")));
        assert!(message.contains(range), "{message}");
    }
}

#[test]
fn malformed_values_steps_and_ranges_are_refused() {
    let (error, message) = refusal("*/0 * * * *", "UTC");
    assert_eq!(error, ScheduleError::ZeroStep { field: "minute", part: "*/0".to_owned() });
    assert!(message.contains("\"*/0\" is 0"), "{message}");
    assert!(matches!(refusal("* * * JAN-DEC/0 *", "UTC").0, ScheduleError::ZeroStep { .. }));
    for bad_step in ["*/x * * * *", "*/ * * * *", "1/2/3 * * * *", "*/-1 * * * *"] {
        assert!(matches!(refusal(bad_step, "UTC").0, ScheduleError::InvalidStep { .. }));
    }

    let (error, message) = refusal("30-10 * * * *", "UTC");
    assert_eq!(error, ScheduleError::ReversedRange { field: "minute", range: "30-10".to_owned() });
    assert!(message.contains("minute range \"30-10\" is reversed"), "{message}");
    assert!(matches!(refusal("* * * * FRI-MON", "UTC").0, ScheduleError::ReversedRange { .. }));

    let (error, message) = refusal("* * * FOO *", "UTC");
    assert!(matches!(error, ScheduleError::UnknownName { field: "month", .. }));
    assert!(message.contains("\"FOO\"") && message.contains("JAN"), "{message}");
    let (_, message) = refusal("* * * * Funday", "UTC");
    assert!(message.contains("day-of-week name \"Funday\"") && message.contains("SUN"));

    for (cron, field, value) in [
        ("JAN * * * *", "minute", "JAN"),
        ("1,,2 * * * *", "minute", "1,,2"),
        ("* -5 * * *", "hour", "-5"),
        ("* * 1.5 * *", "day-of-month", "1.5"),
        ("* * * * M0N", "day-of-week", "M0N"),
        ("? * * * *", "minute", "?"),
    ] {
        let (error, message) = refusal(cron, "UTC");
        assert!(matches!(error, ScheduleError::InvalidValue { field: f, .. } if f == field));
        assert!(message.contains(&format!("invalid {field} value \"{value}\"")), "{message}");
    }
}

#[test]
fn unknown_time_zones_are_refused() {
    for time_zone in ["Mars/Olympus_Mons", "", "CEST+2"] {
        let (error, message) = refusal("0 3 * * *", time_zone);
        assert_eq!(error, ScheduleError::UnknownTimeZone { time_zone: time_zone.to_owned() });
        assert!(message.contains("IANA name such as UTC or Europe/Berlin"), "{message}");
    }
}

#[test]
fn expressions_that_never_fire_are_refused() {
    for cron in ["0 0 30 2 *", "0 0 31 4 *", "0 0 31 2,4,6,9,11 *", "0 0 30-31 FEB *"] {
        let (error, message) = refusal(cron, "Europe/Berlin");
        assert!(matches!(error, ScheduleError::NeverFires { .. }), "{cron}");
        assert!(message.contains(cron) && message.contains("never fires"), "{message}");
    }
    // Either day field may match, so the Mondays of February keep this one alive.
    assert!(Schedule::parse("0 0 30 2 MON", "UTC").is_ok());
    assert!(Schedule::parse("0 0 29 2 *", "Pacific/Auckland").is_ok());
}
