//! Launcher options from `GANTRY_*` environment variables: parsed from a snapshot of the
//! environment (a plain map), so that every rule is testable without touching the
//! process environment. Values of secret variables never appear in errors.

use std::collections::BTreeMap;
use std::time::Duration;

/// A snapshot of environment variables.
pub type Env = BTreeMap<String, String>;

pub const TOKEN: &str = "GANTRY_TOKEN";
pub const POOL_PRIVATE_KEY: &str = "GANTRY_POOL_PRIVATE_KEY";
pub const POOL_PRIVATE_KEY_FILE: &str = "GANTRY_POOL_PRIVATE_KEY_FILE";
pub const RUN_TIMEOUT: &str = "GANTRY_LAUNCHER_RUN_TIMEOUT";
pub const LOGS_TIMEOUT: &str = "GANTRY_LAUNCHER_LOGS_TIMEOUT";
pub const WORKER_SLOTS: &str = "GANTRY_LAUNCHER_WORKER_SLOTS";
pub const WORK_DIR: &str = "GANTRY_LAUNCHER_WORK_DIR";
pub const WORKER_BINARY: &str = "GANTRY_WORKER_BINARY";
pub const DEBUG: &str = "GANTRY_DEBUG";
pub const WORKSPACE_MAX_SIZE: &str = "GANTRY_LAUNCHER_WORKSPACE_MAX_SIZE";
pub const WORKSPACE_MAX_FILES: &str = "GANTRY_LAUNCHER_WORKSPACE_MAX_FILES";
pub const STATE_MAX_SIZE: &str = "GANTRY_LAUNCHER_STATE_MAX_SIZE";
pub const METADATA_PREFIX: &str = "GANTRY_METADATA_";

/// The reference model's default maximum run time.
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(70 * 60);
/// The reference model's default time a run may print nothing before it is killed.
pub const DEFAULT_LOGS_TIMEOUT: Duration = Duration::from_secs(7 * 60);
/// The most bytes of files an unpacked run workspace may hold: room for many provider
/// binaries, yet a bound on what a hostile archive can make a launcher write.
pub const DEFAULT_WORKSPACE_MAX_SIZE: u64 = 10 * GIB;
/// The most entries (files, directories, links) an unpacked run workspace may hold.
pub const DEFAULT_WORKSPACE_MAX_FILES: u32 = 1_000_000;
/// The largest Terraform state a run may store: far above real states (a few MiB for
/// thousands of resources), yet a bound on what a hostile run can make a launcher seal.
pub const DEFAULT_STATE_MAX_SIZE: u64 = 512 * MIB;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// An option was missing or its value did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("{variable} is not set: {expected}")]
    Missing { variable: String, expected: &'static str },
    #[error("{variable}={value:?}: expected {expected}")]
    Invalid { variable: String, value: String, expected: &'static str },
    /// For secrets: the error names the variable, never the value.
    #[error("{variable} (value hidden): expected {expected}")]
    InvalidSecret { variable: String, expected: String },
}

impl OptionError {
    pub fn invalid(variable: &str, value: &str, expected: &'static str) -> Self {
        Self::Invalid { variable: variable.to_owned(), value: value.to_owned(), expected }
    }

    pub fn invalid_secret(variable: &str, expected: impl Into<String>) -> Self {
        Self::InvalidSecret { variable: variable.to_owned(), expected: expected.into() }
    }
}

/// An environment of these pairs (tests, and programs that embed a launcher).
pub fn env_of(pairs: &[(&str, &str)]) -> Env {
    pairs.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect()
}

/// The value of `variable`, treating an empty value as unset.
pub fn get<'a>(env: &'a Env, variable: &str) -> Option<&'a str> {
    env.get(variable).map(|value| value.trim()).filter(|value| !value.is_empty())
}

/// A duration in human form: `70m`, `4200s`, `1h 10m`. A bare number is refused because
/// users disagree on its unit.
pub fn duration(env: &Env, variable: &str, default: Duration) -> Result<Duration, OptionError> {
    let Some(value) = get(env, variable) else {
        return Ok(default);
    };
    const EXPECTED: &str = "a duration like 70m or 4200s";
    match humantime::parse_duration(value) {
        Ok(parsed) if !parsed.is_zero() => Ok(parsed),
        _ => Err(OptionError::invalid(variable, value, EXPECTED)),
    }
}

/// A size in bytes with its unit: `10GiB`, `500MB`, `2048KiB`, `64 B`. Binary units
/// (KiB, MiB, GiB, TiB) count in 1024s, decimal ones (KB, MB, GB, TB) in 1000s; units are
/// case-insensitive. A bare number is refused, like a bare duration: a reader cannot
/// tell bytes from megabytes. Zero is refused too: no workspace fits in it.
pub fn size(env: &Env, variable: &str, default: u64) -> Result<u64, OptionError> {
    let Some(value) = get(env, variable) else {
        return Ok(default);
    };
    match parse_size(value) {
        Some(parsed) if parsed > 0 => Ok(parsed),
        _ => Err(OptionError::invalid(variable, value, "a size like 10GiB or 500MB")),
    }
}

fn parse_size(text: &str) -> Option<u64> {
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let number: u64 = number.parse().ok()?;
    let multiplier = match unit.trim_start().to_ascii_lowercase().as_str() {
        "b" => 1,
        "kb" => 1000,
        "mb" => 1000 * 1000,
        "gb" => 1000 * 1000 * 1000,
        "tb" => 1000 * 1000 * 1000 * 1000,
        "kib" => KIB,
        "mib" => MIB,
        "gib" => GIB,
        "tib" => TIB,
        _ => return None,
    };
    number.checked_mul(multiplier)
}

/// `true`/`false` (also `1`/`0`, `yes`/`no`, any case).
pub fn boolean(env: &Env, variable: &str, default: bool) -> Result<bool, OptionError> {
    let Some(value) = get(env, variable) else {
        return Ok(default);
    };
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(OptionError::invalid(variable, value, "true or false")),
    }
}

/// A whole number between `min` and `max`.
pub fn count(
    env: &Env,
    variable: &str,
    default: u32,
    min: u32,
    max: u32,
    expected: &'static str,
) -> Result<u32, OptionError> {
    let Some(value) = get(env, variable) else {
        return Ok(default);
    };
    match value.parse::<u32>() {
        Ok(parsed) if (min..=max).contains(&parsed) => Ok(parsed),
        _ => Err(OptionError::invalid(variable, value, expected)),
    }
}

/// Worker tags from `GANTRY_METADATA_<key>=<value>`: the key as written after the prefix.
pub fn metadata(env: &Env) -> BTreeMap<String, String> {
    env.iter()
        .filter_map(|(name, value)| {
            let key = name.strip_prefix(METADATA_PREFIX)?;
            (!key.is_empty()).then(|| (key.to_owned(), value.clone()))
        })
        .collect()
}

/// The options every launcher has, whatever executor it uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunLimits {
    /// `GANTRY_LAUNCHER_RUN_TIMEOUT`: a run that lasts longer fails.
    pub run_timeout: Duration,
    /// `GANTRY_LAUNCHER_LOGS_TIMEOUT`: a run that prints nothing for this long fails.
    pub logs_timeout: Duration,
}

impl RunLimits {
    pub fn from_env(env: &Env) -> Result<Self, OptionError> {
        Ok(Self {
            run_timeout: duration(env, RUN_TIMEOUT, DEFAULT_RUN_TIMEOUT)?,
            logs_timeout: duration(env, LOGS_TIMEOUT, DEFAULT_LOGS_TIMEOUT)?,
        })
    }
}

impl Default for RunLimits {
    fn default() -> Self {
        Self { run_timeout: DEFAULT_RUN_TIMEOUT, logs_timeout: DEFAULT_LOGS_TIMEOUT }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn durations_default_to_the_reference_values() {
        assert_eq!(RunLimits::from_env(&env(&[])), Ok(RunLimits::default()));
        assert_eq!(RunLimits::default().run_timeout, Duration::from_secs(4200));
        assert_eq!(RunLimits::default().logs_timeout, Duration::from_secs(420));
    }

    #[test]
    fn durations_parse_in_human_form() {
        let cases = [("120m", 7200), ("1000s", 1000), ("1h 10m", 4200), ("  5m ", 300)];
        for (text, seconds) in cases {
            let parsed = duration(&env(&[(RUN_TIMEOUT, text)]), RUN_TIMEOUT, DEFAULT_RUN_TIMEOUT);
            assert_eq!(parsed, Ok(Duration::from_secs(seconds)), "{text}");
        }
    }

    #[test]
    fn a_bad_duration_names_the_variable_the_value_and_the_form_expected() {
        for bad in ["70x", "70", "0s", "-5m"] {
            let error = RunLimits::from_env(&env(&[(RUN_TIMEOUT, bad)])).unwrap_err();
            assert_eq!(
                error.to_string(),
                format!(
                    "GANTRY_LAUNCHER_RUN_TIMEOUT={bad:?}: expected a duration like 70m or 4200s"
                )
            );
        }
    }

    #[test]
    fn booleans_and_counts() {
        assert_eq!(boolean(&env(&[(DEBUG, "TRUE")]), DEBUG, false), Ok(true));
        assert_eq!(boolean(&env(&[(DEBUG, "")]), DEBUG, true), Ok(true));
        assert!(boolean(&env(&[(DEBUG, "maybe")]), DEBUG, false).is_err());
        assert_eq!(count(&env(&[(WORKER_SLOTS, "4")]), WORKER_SLOTS, 1, 1, 64, "1 to 64"), Ok(4));
        assert!(count(&env(&[(WORKER_SLOTS, "0")]), WORKER_SLOTS, 1, 1, 64, "1 to 64").is_err());
    }

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        let cases = [
            ("10GiB", 10 * GIB),
            ("500MB", 500_000_000),
            ("2048KiB", 2 * MIB),
            ("64 B", 64),
            (" 1tib ", TIB),
            ("3 gb", 3_000_000_000),
            ("7kB", 7000),
            ("1MiB", MIB),
            ("2TB", 2_000_000_000_000),
        ];
        for (text, bytes) in cases {
            let parsed = size(&env(&[(WORKSPACE_MAX_SIZE, text)]), WORKSPACE_MAX_SIZE, 1);
            assert_eq!(parsed, Ok(bytes), "{text}");
        }
        assert_eq!(size(&env(&[]), WORKSPACE_MAX_SIZE, 42), Ok(42));
        assert_eq!(size(&env(&[(WORKSPACE_MAX_SIZE, "")]), WORKSPACE_MAX_SIZE, 42), Ok(42));
        assert_eq!(DEFAULT_WORKSPACE_MAX_SIZE, 10_737_418_240);
    }

    #[test]
    fn a_bad_size_names_the_variable_the_value_and_the_form_expected() {
        let bad_sizes = [
            "10",
            "0GiB",
            "GiB",
            "-5MB",
            "1.5GiB",
            "10 GiBs",
            "10 G",
            "ten MB",
            "99999999999TiB",
            "18446744073709551616B",
        ];
        for bad in bad_sizes {
            let error =
                size(&env(&[(WORKSPACE_MAX_SIZE, bad)]), WORKSPACE_MAX_SIZE, 1).unwrap_err();
            assert_eq!(
                error.to_string(),
                format!(
                    "GANTRY_LAUNCHER_WORKSPACE_MAX_SIZE={bad:?}: expected a size like 10GiB or 500MB"
                )
            );
        }
    }

    #[test]
    fn metadata_tags_come_from_the_prefix() {
        let tags = metadata(&env(&[
            ("GANTRY_METADATA_zone", "eu-1"),
            ("GANTRY_METADATA_", "ignored"),
            ("GANTRY_TOKEN", "x"),
        ]));
        assert_eq!(tags, env(&[("zone", "eu-1")]));
    }

    #[test]
    fn secret_errors_hide_the_value() {
        let error = OptionError::invalid_secret(TOKEN, "a Gantry pool token");
        assert_eq!(error.to_string(), "GANTRY_TOKEN (value hidden): expected a Gantry pool token");
    }
}
