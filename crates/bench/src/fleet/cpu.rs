//! CPU time spent by the server and by this load generator: on a shared machine with
//! two cores, whether a phase was bound by CPU (and whose) is half the explanation.

use std::time::Duration;

use anyhow::Context as _;
use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::time::TimeValLike;

/// `/proc/<pid>/stat` counts in `USER_HZ` ticks, which Linux fixes at 100 per second on
/// every architecture it exposes to user space.
const TICKS_PER_SECOND: u64 = 100;

/// User plus system time of process `pid`, all its threads.
pub(crate) fn process_cpu_time(pid: i32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_cpu_ticks(&stat)
        .map(|ticks| Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND))
        .with_context(|| format!("{path} does not have the expected fields"))
}

/// User plus system time of this process.
pub(crate) fn own_cpu_time() -> anyhow::Result<Duration> {
    let usage = getrusage(UsageWho::RUSAGE_SELF).context("cannot read this process's usage")?;
    let micros = usage.user_time().num_microseconds() + usage.system_time().num_microseconds();
    Ok(Duration::from_micros(u64::try_from(micros).unwrap_or(0)))
}

/// `utime + stime` (fields 14 and 15) of a `stat` line. The command name (field 2) is in
/// parentheses and may hold spaces, so fields are counted after its closing one.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Field 3 (the state) is the first after the name.
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_user_plus_system() {
        let stat = "4242 (tokio rt) S 1 4242 4242 0 -1 4194560 1500 0 0 0 730 215 0 0 20 0 \
                    13 0 1234 834692 12483 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(945));
        assert_eq!(parse_cpu_ticks("4242 (gantry) S 1"), None);
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        let spent = own_cpu_time().unwrap();
        assert!(spent < Duration::from_secs(3600));
    }
}
