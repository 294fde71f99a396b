//! CPU time spent by the server and by this load generator: on a shared machine with
//! two cores, whether a phase was bound by CPU (and whose) is half the explanation.

use std::time::Duration;

use anyhow::Context as _;
use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::time::TimeValLike;

/// `/proc/<pid>/stat` counts in `USER_HZ` ticks, which Linux fixes at 100 per second on
/// every architecture it exposes to user space.
const TICKS_PER_SECOND: u64 = 100;

/// What the benchmark reads of a `/proc/<pid>/stat` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    parent: i32,
    /// `utime + stime`: the process's own threads.
    own_ticks: u64,
    /// `cutime + cstime`: its children that exited and were waited for.
    reaped_children_ticks: u64,
}

fn ticks(ticks: u64) -> Duration {
    Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND)
}

fn read_stat(pid: i32) -> anyhow::Result<Stat> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_stat(&stat).with_context(|| format!("{path} does not have the expected fields"))
}

/// User plus system time of process `pid`, all its threads.
pub(crate) fn process_cpu_time(pid: i32) -> anyhow::Result<Duration> {
    Ok(ticks(read_stat(pid)?.own_ticks))
}

/// User plus system time of process `pid` and of all its children, those still running
/// and those gone: PostgreSQL does its work in one child process per connection, and
/// the children that exit between two readings are counted in their parent's
/// `cutime`, so the difference of two readings misses none.
pub(crate) fn process_tree_cpu_time(pid: i32) -> anyhow::Result<Duration> {
    let parent = read_stat(pid)?;
    let mut total = parent.own_ticks + parent.reaped_children_ticks;
    for entry in std::fs::read_dir("/proc").context("cannot list /proc")? {
        let Some(child) = entry?.file_name().to_str().and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        // A process may exit between the listing and the reading: it is then counted
        // in its parent's `cutime` instead, or in the next reading.
        if let Ok(stat) = read_stat(child)
            && stat.parent == pid
        {
            total += stat.own_ticks + stat.reaped_children_ticks;
        }
    }
    Ok(ticks(total))
}

/// User plus system time of this process.
pub(crate) fn own_cpu_time() -> anyhow::Result<Duration> {
    let usage = getrusage(UsageWho::RUSAGE_SELF).context("cannot read this process's usage")?;
    let micros = usage.user_time().num_microseconds() + usage.system_time().num_microseconds();
    Ok(Duration::from_micros(u64::try_from(micros).unwrap_or(0)))
}

/// The parent (field 4), `utime + stime` (fields 14 and 15) and `cutime + cstime`
/// (16 and 17) of a `stat` line. The command name (field 2) is in parentheses and may
/// hold spaces, so fields are counted after its closing one.
fn parse_stat(stat: &str) -> Option<Stat> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Field 3 (the state) is the first after the name.
    let field = |number: usize| fields.get(number - 3).copied();
    let count = |number: usize| field(number)?.parse::<u64>().ok();
    Some(Stat {
        parent: field(4)?.parse().ok()?,
        own_ticks: count(14)? + count(15)?,
        reaped_children_ticks: count(16)? + count(17)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_name() {
        let stat = "4242 (tokio rt) S 1 4242 4242 0 -1 4194560 1500 0 0 0 730 215 12 30 20 0 \
                    13 0 1234 834692 12483 18446744073709551615";
        let expected = Stat { parent: 1, own_ticks: 945, reaped_children_ticks: 42 };
        assert_eq!(parse_stat(stat), Some(expected));
        assert_eq!(parse_stat("4242 (gantry) S 1"), None);
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        let spent = own_cpu_time().unwrap();
        assert!(spent < Duration::from_secs(3600));
        let pid = i32::try_from(std::process::id()).unwrap();
        // The process's own time first: it only grows, so the tree's, read after, holds it.
        let own = process_cpu_time(pid).unwrap();
        assert!(process_tree_cpu_time(pid).unwrap() >= own);
    }
}
