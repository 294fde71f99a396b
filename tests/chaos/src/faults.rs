//! The faults the suite injects, which of them a run enables, and the seeded random
//! source every choice (what to trigger, which fault, when, on what) is drawn from.

use std::fmt;

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// `kill -9` of a server replica (the only server, with SQLite), started again later.
    KillReplica,
    /// PostgreSQL stopped at once (`pg_ctl -m immediate`), started again later.
    RestartPostgres,
    /// `kill -9` of a launcher, started again later on the same work directory.
    KillLauncher,
    /// `kill -9` of a process executor's `gantry-worker`.
    KillWorker,
    /// `docker kill` of a run's container (its worker is the container's process 1).
    KillContainer,
    /// Every agent-plane connection cut, and new ones refused, for a while.
    DropAgentConnections,
    /// Every agent-plane connection stalled (bytes held, not forwarded) for a while.
    StallAgentConnections,
}

impl FaultKind {
    pub const ALL: [FaultKind; 7] = [
        FaultKind::KillReplica,
        FaultKind::RestartPostgres,
        FaultKind::KillLauncher,
        FaultKind::KillWorker,
        FaultKind::KillContainer,
        FaultKind::DropAgentConnections,
        FaultKind::StallAgentConnections,
    ];

    /// The name used in `GANTRY_CHAOS_FAULTS` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillReplica => "kill-replica",
            FaultKind::RestartPostgres => "restart-postgres",
            FaultKind::KillLauncher => "kill-launcher",
            FaultKind::KillWorker => "kill-worker",
            FaultKind::KillContainer => "kill-container",
            FaultKind::DropAgentConnections => "drop-agent-connections",
            FaultKind::StallAgentConnections => "stall-agent-connections",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The fault kinds `setting` (the value of `GANTRY_CHAOS_FAULTS`) enables: `all`, `none`,
/// or names separated by commas; unset, `default`.
pub fn enabled_kinds(
    setting: Option<&str>,
    default: &[FaultKind],
) -> Result<Vec<FaultKind>, String> {
    let Some(setting) = setting.map(str::trim) else { return Ok(default.to_vec()) };
    match setting {
        "all" => return Ok(FaultKind::ALL.to_vec()),
        "none" | "" => return Ok(Vec::new()),
        _ => {}
    }
    let mut kinds = Vec::new();
    for name in setting.split(',').map(str::trim) {
        let kind = FaultKind::ALL.into_iter().find(|kind| kind.name() == name).ok_or_else(|| {
            let names: Vec<&str> = FaultKind::ALL.iter().map(|kind| kind.name()).collect();
            format!(
                "GANTRY_CHAOS_FAULTS={setting:?}: {name:?} is not a fault kind; expected all, none or some of {}",
                names.join(", ")
            )
        })?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    Ok(kinds)
}

/// SplitMix64: a seeded, portable source of choices. Not for secrets: it only has to
/// give the same sequence for the same seed on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    /// A number in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }

    /// One of `items` (not empty).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// A new source for another thread, determined by this one.
    pub fn fork(&mut self) -> Self {
        Self(self.next_u64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setting_names_kinds_and_refuses_unknown_ones() {
        let default = [FaultKind::KillLauncher];
        assert_eq!(enabled_kinds(None, &default).unwrap(), default);
        assert_eq!(enabled_kinds(Some("all"), &default).unwrap(), FaultKind::ALL);
        assert_eq!(enabled_kinds(Some("none"), &default).unwrap(), vec![]);
        assert_eq!(
            enabled_kinds(Some("kill-worker, restart-postgres,kill-worker"), &default).unwrap(),
            vec![FaultKind::KillWorker, FaultKind::RestartPostgres]
        );
        let error = enabled_kinds(Some("kill-everything"), &default).unwrap_err();
        assert!(error.contains("\"kill-everything\" is not a fault kind"), "{error}");
        assert!(error.contains("kill-replica, restart-postgres"), "{error}");
    }

    #[test]
    fn one_seed_gives_one_sequence() {
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..5).map(|_| rng.between(3, 9)).collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
        assert!(draw(7).iter().all(|n| (3..=9).contains(n)));
    }
}
