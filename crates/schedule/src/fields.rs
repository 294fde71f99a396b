//! The five cron fields, parsed into sets of allowed values.

use crate::ScheduleError;

/// The allowed values of one field: bit `n` is set when value `n` is allowed. Every field's
/// values fit below 64, and a bit set answers "what is the next allowed value" in one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ValueSet(u64);

impl ValueSet {
    pub(crate) fn contains(self, value: u32) -> bool {
        value < 64 && self.0 & (1 << value) != 0
    }

    /// The smallest allowed value that is at least `value`.
    pub(crate) fn first_at_or_after(self, value: u32) -> Option<u32> {
        if value >= 64 {
            return None;
        }
        let remaining = self.0 & (u64::MAX << value);
        (remaining != 0).then(|| remaining.trailing_zeros())
    }
}

/// A parsed five-field expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CronFields {
    pub(crate) minutes: ValueSet,
    pub(crate) hours: ValueSet,
    pub(crate) days_of_month: ValueSet,
    pub(crate) months: ValueSet,
    /// 0 is Sunday; a 7 in the expression is folded into 0.
    pub(crate) days_of_week: ValueSet,
    /// Standard cron: when both day fields are restricted a day matches when either does
    /// ("the 13th, and every Friday"); otherwise both must.
    pub(crate) days_match_either: bool,
}

struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    /// Names accepted instead of numbers, the first standing for `first_name_value`.
    names: &'static [&'static str],
    first_name_value: u32,
    expected: &'static str,
    expected_name: &'static str,
}

const MINUTE: FieldSpec = FieldSpec {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
    first_name_value: 0,
    expected: "a number 0-59",
    expected_name: "",
};
const HOUR: FieldSpec = FieldSpec {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
    first_name_value: 0,
    expected: "a number 0-23",
    expected_name: "",
};
const DAY_OF_MONTH: FieldSpec = FieldSpec {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
    first_name_value: 0,
    expected: "a number 1-31",
    expected_name: "",
};
const MONTH: FieldSpec = FieldSpec {
    name: "month",
    min: 1,
    max: 12,
    names: &["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"],
    first_name_value: 1,
    expected: "a number 1-12 or a name JAN-DEC",
    expected_name: "a month name JAN, FEB, ..., DEC",
};
const DAY_OF_WEEK: FieldSpec = FieldSpec {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
    first_name_value: 0,
    expected: "a number 0-7 (0 and 7 are Sunday) or a name SUN-SAT",
    expected_name: "a day name SUN, MON, TUE, WED, THU, FRI or SAT",
};

/// Parses a trimmed, non-empty expression: a shortcut or five whitespace-separated fields.
pub(crate) fn parse_fields(expression: &str) -> Result<CronFields, ScheduleError> {
    let fields: Vec<&str> = match expression.strip_prefix('@') {
        Some(shortcut) => expand_shortcut(shortcut)
            .ok_or_else(|| ScheduleError::UnknownShortcut { shortcut: expression.to_owned() })?
            .split(' ')
            .collect(),
        None => expression.split_whitespace().collect(),
    };
    let [minute, hour, day_of_month, month, day_of_week] = fields[..] else {
        return Err(ScheduleError::WrongFieldCount {
            expression: expression.to_owned(),
            found: fields.len(),
        });
    };
    let mut days_of_week = parse_field(&DAY_OF_WEEK, day_of_week)?;
    if days_of_week.contains(7) {
        days_of_week = ValueSet((days_of_week.0 & !(1 << 7)) | 1);
    }
    Ok(CronFields {
        minutes: parse_field(&MINUTE, minute)?,
        hours: parse_field(&HOUR, hour)?,
        days_of_month: parse_field(&DAY_OF_MONTH, day_of_month)?,
        months: parse_field(&MONTH, month)?,
        days_of_week,
        days_match_either: !day_of_month.starts_with('*') && !day_of_week.starts_with('*'),
    })
}

fn expand_shortcut(shortcut: &str) -> Option<&'static str> {
    Some(match shortcut.to_ascii_lowercase().as_str() {
        "yearly" | "annually" => "0 0 1 1 *",
        "monthly" => "0 0 1 * *",
        "weekly" => "0 0 * * 0",
        "daily" | "midnight" => "0 0 * * *",
        "hourly" => "0 * * * *",
        _ => return None,
    })
}

fn parse_field(spec: &FieldSpec, field: &str) -> Result<ValueSet, ScheduleError> {
    let mut allowed = 0u64;
    for part in field.split(',') {
        if part.is_empty() {
            return Err(ScheduleError::InvalidValue {
                field: spec.name,
                value: field.to_owned(),
                expected: spec.expected,
            });
        }
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => (range, Some(parse_step(spec, part, step)?)),
            None => (part, None),
        };
        let (first, last) = match range.split_once('-') {
            _ if range == "*" => (spec.min, spec.max),
            Some((first, last)) => {
                let (first, last) =
                    (parse_value(spec, part, first)?, parse_value(spec, part, last)?);
                if first > last {
                    return Err(ScheduleError::ReversedRange {
                        field: spec.name,
                        range: range.to_owned(),
                    });
                }
                (first, last)
            }
            // A lone start with a step runs to the field's end, as in Vixie cron.
            None if step.is_some() => (parse_value(spec, part, range)?, spec.max),
            None => {
                let value = parse_value(spec, part, range)?;
                (value, value)
            }
        };
        for value in (first..=last).step_by(step.unwrap_or(1)) {
            allowed |= 1 << value;
        }
    }
    Ok(ValueSet(allowed))
}

fn parse_step(spec: &FieldSpec, part: &str, step: &str) -> Result<usize, ScheduleError> {
    let invalid = || ScheduleError::InvalidStep { field: spec.name, part: part.to_owned() };
    if step.is_empty() || !step.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(invalid());
    }
    // Any step past the field's width allows only the start, so huge steps need not fit.
    match step.parse::<usize>().unwrap_or(usize::MAX) {
        0 => Err(ScheduleError::ZeroStep { field: spec.name, part: part.to_owned() }),
        step => Ok(step),
    }
}

/// Parses one number or name of `part`; an empty one (as in `-5`) is reported as the
/// whole part, which is what the reader can find in the expression.
fn parse_value(spec: &FieldSpec, part: &str, text: &str) -> Result<u32, ScheduleError> {
    if !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()) {
        return match text.parse::<u32>() {
            Ok(value) if (spec.min..=spec.max).contains(&value) => Ok(value),
            _ => Err(ScheduleError::OutOfRange {
                field: spec.name,
                value: text.to_owned(),
                expected: spec.expected,
            }),
        };
    }
    if !spec.names.is_empty() && !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphabetic()) {
        return match spec.names.iter().position(|name| name.eq_ignore_ascii_case(text)) {
            Some(index) => Ok(spec.first_name_value + index as u32),
            None => Err(ScheduleError::UnknownName {
                field: spec.name,
                name: text.to_owned(),
                expected: spec.expected_name,
            }),
        };
    }
    Err(ScheduleError::InvalidValue {
        field: spec.name,
        value: if text.is_empty() { part } else { text }.to_owned(),
        expected: spec.expected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(set: ValueSet) -> Vec<u32> {
        (0..64).filter(|&value| set.contains(value)).collect()
    }

    #[test]
    fn value_set_finds_the_next_allowed_value() {
        let set = ValueSet((1 << 5) | (1 << 20) | (1 << 63));
        assert_eq!(set.first_at_or_after(0), Some(5));
        assert_eq!(set.first_at_or_after(5), Some(5));
        assert_eq!(set.first_at_or_after(6), Some(20));
        assert_eq!(set.first_at_or_after(21), Some(63));
        assert_eq!(ValueSet(1 << 5).first_at_or_after(6), None);
        assert_eq!(set.first_at_or_after(64), None);
        assert!(!set.contains(64));
    }

    #[test]
    fn every_syntax_form_yields_its_values() {
        let minutes = |field| parse_field(&MINUTE, field).map(values);
        assert_eq!(minutes("7"), Ok(vec![7]));
        assert_eq!(minutes("*").unwrap().len(), 60);
        assert_eq!(minutes("3-6"), Ok(vec![3, 4, 5, 6]));
        assert_eq!(minutes("*/20"), Ok(vec![0, 20, 40]));
        assert_eq!(minutes("10-40/15"), Ok(vec![10, 25, 40]));
        assert_eq!(minutes("50/4"), Ok(vec![50, 54, 58]));
        assert_eq!(minutes("1,5-6,*/30"), Ok(vec![0, 1, 5, 6, 30]));
        assert_eq!(minutes("0/99999999999999999999999"), Ok(vec![0]));
        assert_eq!(parse_field(&DAY_OF_MONTH, "*/10").map(values), Ok(vec![1, 11, 21, 31]));
        assert_eq!(parse_field(&MONTH, "jan,Mar-may/2,DEC").map(values), Ok(vec![1, 3, 5, 12]));
        assert_eq!(parse_field(&DAY_OF_WEEK, "sun,Fri-SAT").map(values), Ok(vec![0, 5, 6]));
    }

    #[test]
    fn day_of_week_seven_is_sunday_and_star_fields_are_unrestricted() {
        let fields = parse_fields("0 0 1 * 5-7").unwrap();
        assert_eq!(values(fields.days_of_week), vec![0, 5, 6]);
        assert!(fields.days_match_either);
        assert!(!parse_fields("0 0 */2 * MON").unwrap().days_match_either);
        assert!(!parse_fields("0 0 1 * *").unwrap().days_match_either);
        assert_eq!(parse_fields("@weekly"), parse_fields("0 0 * * 7"));
        assert_eq!(parse_fields("@DAILY"), parse_fields("0 0 * * *"));
    }
}
