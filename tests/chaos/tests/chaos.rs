//! The chaos suite (issue 17): runs on real servers, launchers, workers and containers,
//! under seeded random faults, then the invariant checker over the host journals and the
//! server's records. See docs/reliability.md.
//!
//! Settings (environment):
//! * `GANTRY_CHAOS_SEED`: the seed (printed by every run; a failing run prints how to
//!   replay it), or `random` for one drawn from the clock. Unset, [`DEFAULT_SEED`].
//! * `GANTRY_CHAOS_RUNS`: runs triggered in all, split between the scenarios (default
//!   200; the soak uses 2000 or more). Dependencies trigger more.
//! * `GANTRY_CHAOS_FAULTS`: `all`, `none`, or fault kinds separated by commas (see
//!   `gantry_chaos::faults::FaultKind::name`). Unset, [`DEFAULT_FAULTS`].

mod harness;

use gantry_chaos::faults::{FaultKind, enabled_kinds};
use harness::scenario::{Database, Settings, run};

/// The fault kinds a plain `cargo nextest run` injects: all of them. PostgreSQL restarts
/// joined the others once outages failed nothing (issue 17 item 3): a launcher keeps a
/// run's reports, state and log until the server takes them, and the liveness sweep
/// waits a worker timeout after its database is back (docs/reliability.md).
const DEFAULT_FAULTS: [FaultKind; 7] = FaultKind::ALL;

/// The seed a plain `cargo nextest run` uses, so that the test command's run is the same
/// schedule of faults every time; `GANTRY_CHAOS_SEED=random` draws one from the clock.
/// A clock-drawn run found duplicated log lines in failed runs (seed
/// 1796241426455565075, docs/reliability.md): an open issue-17 bug, not yet understood.
const DEFAULT_SEED: u64 = 99;

fn settings(scenarios: usize) -> Settings {
    let seed = match std::env::var("GANTRY_CHAOS_SEED").as_deref().map(str::trim) {
        Ok("random") => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos() as u64)
            .unwrap_or(17),
        Ok(seed) => seed.parse().unwrap_or_else(|_| {
            panic!("GANTRY_CHAOS_SEED={seed:?}: expected an unsigned integer or \"random\"")
        }),
        Err(_) => DEFAULT_SEED,
    };
    let runs = match std::env::var("GANTRY_CHAOS_RUNS") {
        Ok(runs) => {
            runs.trim().parse::<usize>().ok().filter(|runs| *runs > 0).unwrap_or_else(|| {
                panic!("GANTRY_CHAOS_RUNS={runs:?}: expected a number of runs above 0")
            })
        }
        Err(_) => 200,
    };
    let faults =
        enabled_kinds(std::env::var("GANTRY_CHAOS_FAULTS").ok().as_deref(), &DEFAULT_FAULTS)
            .unwrap_or_else(|error| panic!("{error}"));
    Settings { seed, runs: runs.div_ceil(scenarios), faults }
}

fn assert_held(name: &str, settings: &Settings, report: &harness::scenario::Report) {
    assert!(
        report.violations.is_empty(),
        "chaos {name}: {} invariant violation(s) with seed {} (the report above says which and how to replay)",
        report.violations.len(),
        settings.seed
    );
}

#[test]
fn chaos_sqlite_server_with_process_and_docker_launchers() {
    let settings = settings(2);
    let report = run("chaos_sqlite", Database::Sqlite, &settings);
    assert_held("chaos_sqlite", &settings, &report);
}

/// Whether the PostgreSQL server programs can be run; outside CI their absence skips the
/// PostgreSQL scenario with the reason, as the other PostgreSQL tests do.
fn postgres_available() -> bool {
    let found = std::process::Command::new("sh")
        .args(["-c", "command -v initdb && command -v pg_ctl"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !found {
        assert!(
            std::env::var("CI").map_or(true, |ci| ci != "true"),
            "initdb and pg_ctl are not on PATH: under CI the PostgreSQL chaos scenario must run (scripts/test.sh puts them there)"
        );
        eprintln!("skipped: initdb and pg_ctl are not on PATH (scripts/test.sh puts them there)");
    }
    found
}

#[test]
fn chaos_two_replicas_on_postgres_with_process_and_docker_launchers() {
    if !postgres_available() {
        return;
    }
    let settings = settings(2);
    let report = run("chaos_postgres", Database::Postgres, &settings);
    assert_held("chaos_postgres", &settings, &report);
}
