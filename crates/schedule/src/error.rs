//! Why a cron expression or a time zone was refused, worded for the person who typed it.

/// A refused schedule. Each message names the offending input and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "the cron expression is empty: expected five fields such as \"0 3 * * *\" or a shortcut such as @daily"
    )]
    Empty,

    #[error("the cron expression is {length} characters long: expected at most {max}")]
    TooLong { length: usize, max: usize },

    #[error(
        "cron expression \"{expression}\" has {found} field(s): expected five (minute hour day-of-month month day-of-week), such as \"0 3 * * *\""
    )]
    WrongFieldCount { expression: String, found: usize },

    #[error(
        "unknown cron shortcut \"{shortcut}\": expected @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly"
    )]
    UnknownShortcut { shortcut: String },

    #[error("invalid {field} value \"{value}\": expected {expected}")]
    InvalidValue { field: &'static str, value: String, expected: &'static str },

    #[error("{field} value {value} is out of range: expected {expected}")]
    OutOfRange { field: &'static str, value: String, expected: &'static str },

    #[error("unknown {field} name \"{name}\": expected {expected}")]
    UnknownName { field: &'static str, name: String, expected: &'static str },

    #[error(
        "{field} range \"{range}\" is reversed: expected the start to be at most the end, such as 1-5"
    )]
    ReversedRange { field: &'static str, range: String },

    #[error("{field} step in \"{part}\" is 0: expected a step of at least 1, such as */5")]
    ZeroStep { field: &'static str, part: String },

    #[error("{field} step in \"{part}\" is not a whole number: expected a step such as */5")]
    InvalidStep { field: &'static str, part: String },

    #[error(
        "unknown time zone \"{time_zone}\": expected an IANA name such as UTC or Europe/Berlin"
    )]
    UnknownTimeZone { time_zone: String },

    #[error(
        "cron expression \"{expression}\" never fires in {time_zone}: expected a day that exists in the chosen months, unlike \"0 0 30 2 *\""
    )]
    NeverFires { expression: String, time_zone: String },
}
