//! Percentiles of latency samples, and the fleet benchmark's Markdown report.

use std::fmt::Write as _;
use std::time::Duration;

use super::database::{DatabaseStats, FleetDatabase};

/// Nearest-rank percentiles of a set of latencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencySummary {
    pub samples: usize,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl LatencySummary {
    /// `None` for no samples: there is no percentile of nothing.
    pub fn of(mut samples: Vec<Duration>) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        Some(Self {
            samples: samples.len(),
            p50: nearest_rank(&samples, 50),
            p90: nearest_rank(&samples, 90),
            p99: nearest_rank(&samples, 99),
            max: samples[samples.len() - 1],
        })
    }
}

/// The smallest sample with at least `percent`% of the samples at or below it (the
/// nearest-rank definition: never interpolated, always a latency that was observed).
/// `sorted` is not empty.
fn nearest_rank(sorted: &[Duration], percent: usize) -> Duration {
    let rank = (percent * sorted.len()).div_ceil(100).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Where a phase's time went: the clock, and the CPU time of each process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseCpu {
    pub wall: Duration,
    /// Each server replica's, in replica order.
    pub servers: Vec<Duration>,
    /// The PostgreSQL postmaster and all its backends; none on SQLite.
    pub database: Option<Duration>,
    pub load_generator: Duration,
}

impl PhaseCpu {
    /// Cores kept busy on average.
    fn cores(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() / self.wall.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// All replicas together.
    pub fn server_total(&self) -> Duration {
        self.servers.iter().sum()
    }

    /// "server 1.20 cores (4.1 ms CPU per run), PostgreSQL 0.40 cores (1.0 ms per run),
    /// load generator 0.60 cores (2.0 ms per run)"; with several replicas the server
    /// part reads "servers 0.60 + 0.58 = 1.18 cores (…)".
    fn describe(&self, runs: usize) -> String {
        let per_run = |cpu: Duration| cpu.as_secs_f64() * 1000.0 / runs.max(1) as f64;
        let total = self.server_total();
        let mut text = match self.servers.len() {
            1 => format!("server {:.2} cores", self.cores(total)),
            _ => format!(
                "servers {} = {:.2} cores",
                self.servers
                    .iter()
                    .map(|cpu| format!("{:.2}", self.cores(*cpu)))
                    .collect::<Vec<_>>()
                    .join(" + "),
                self.cores(total)
            ),
        };
        let _ = write!(text, " ({:.1} ms CPU per run)", per_run(total));
        if let Some(database) = self.database {
            let _ = write!(
                text,
                ", PostgreSQL {:.2} cores ({:.1} ms per run)",
                self.cores(database),
                per_run(database)
            );
        }
        let _ = write!(
            text,
            ", load generator {:.2} cores ({:.1} ms per run)",
            self.cores(self.load_generator),
            per_run(self.load_generator)
        );
        text
    }
}

/// With several replicas, the latencies of the runs dispatched by the long-poll of the
/// replica they were triggered on, and of those that crossed to another replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaPaths {
    pub same_replica: Option<LatencySummary>,
    pub cross_replica: Option<LatencySummary>,
}

/// Everything one fleet measurement found.
#[derive(Debug, Clone)]
pub struct FleetMeasures {
    pub database: FleetDatabase,
    pub replicas: usize,
    pub launchers: usize,
    pub slots: usize,
    pub stacks: usize,
    pub triggering_tasks: usize,
    /// Trigger sent → assignment received, one run at a time, the fleet otherwise idle.
    pub idle_latency: LatencySummary,
    /// The same while the throughput phase keeps the server busy.
    pub loaded_latency: LatencySummary,
    pub idle_paths: ReplicaPaths,
    pub loaded_paths: ReplicaPaths,
    pub throughput_runs: usize,
    /// First trigger sent → last run's `finish` received.
    pub throughput_elapsed: Duration,
    /// First trigger sent → last trigger answered.
    pub triggering_elapsed: Duration,
    pub latency_cpu: PhaseCpu,
    pub throughput_cpu: PhaseCpu,
    /// Each replica's resident memory (VmRSS) before the fleet connected, once it idled
    /// in long-poll, and at the end.
    pub rss_before_kib: Vec<u64>,
    pub rss_idle_fleet_kib: Vec<u64>,
    pub rss_end_kib: Vec<u64>,
    /// Poll answers over the whole benchmark, and those that carried assignments.
    pub polls: u64,
    pub polls_with_assignments: u64,
    /// Assignments answered again while their launcher was executing them (its ack had
    /// not landed yet).
    pub repeated_deliveries: u64,
    /// Assignments answered after their run had ended: the ack is refused.
    pub stale_deliveries: u64,
    pub heartbeats: u64,
    /// Every run the benchmark triggered, warm-up included.
    pub total_runs: usize,
    /// What PostgreSQL did in each phase; none on SQLite.
    pub latency_database: Option<DatabaseStats>,
    pub throughput_database: Option<DatabaseStats>,
}

impl FleetMeasures {
    pub fn workers(&self) -> usize {
        self.launchers * self.slots
    }

    pub fn runs_per_second(&self) -> f64 {
        self.throughput_runs as f64 / self.throughput_elapsed.as_secs_f64()
    }

    /// Growth of the servers' resident memory (all replicas) from before the fleet
    /// connected to when it idled in long-poll, per worker.
    pub fn kib_per_worker(&self) -> f64 {
        let growth: u64 = self
            .rss_idle_fleet_kib
            .iter()
            .zip(&self.rss_before_kib)
            .map(|(idle, before)| idle.saturating_sub(*before))
            .sum();
        growth as f64 / self.workers() as f64
    }

    /// "one `gantry server` (SQLite)", "2 `gantry server` replicas on one PostgreSQL
    /// database"…
    fn deployment(&self) -> String {
        match (self.database, self.replicas) {
            (FleetDatabase::Sqlite, _) => "one `gantry server` (SQLite)".to_owned(),
            (FleetDatabase::Postgres, 1) => {
                "one `gantry server` on PostgreSQL (a durable cluster on this machine)".to_owned()
            }
            (FleetDatabase::Postgres, replicas) => format!(
                "{replicas} `gantry server` replicas on one PostgreSQL database (a durable \
                 cluster on this machine) and one blob directory; launcher i polls replica \
                 i mod {replicas}, triggers alternate over the replicas"
            ),
        }
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// Goals of the fleet benchmark (docs/benchmarks.md).
const GOAL_P50: Duration = Duration::from_millis(5);
const GOAL_P99: Duration = Duration::from_millis(25);
const GOAL_RUNS_PER_SECOND: f64 = 500.0;
const GOAL_KIB_PER_WORKER: f64 = 100.0;

fn millis(duration: Duration) -> String {
    format!("{:.1}", duration.as_secs_f64() * 1000.0)
}

fn met(ok: bool) -> &'static str {
    if ok { "yes" } else { "**no**" }
}

/// The report as Markdown: goals first, then the latency distributions and counters.
pub fn fleet_report(measures: &FleetMeasures) -> String {
    let idle = &measures.idle_latency;
    let loaded = &measures.loaded_latency;
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        text,
        "{} launchers × {} slots = {} idle workers in long-poll, {}, on loopback\n",
        measures.launchers,
        measures.slots,
        measures.workers(),
        measures.deployment()
    );
    let _ = writeln!(text, "| measure | result | goal | met |\n|---|---|---|---|");
    let _ = writeln!(
        text,
        "| dispatch p50, trigger → assignment received ({} runs one at a time) | {} ms | ≤ 5 ms | {} |",
        idle.samples,
        millis(idle.p50),
        met(idle.p50 <= GOAL_P50)
    );
    let _ = writeln!(
        text,
        "| dispatch p99 | {} ms | ≤ 25 ms | {} |",
        millis(idle.p99),
        met(idle.p99 <= GOAL_P99)
    );
    let _ = writeln!(
        text,
        "| throughput, no-op proposed runs ({} runs, {} stacks, {} triggering tasks) | {:.0} runs/s | ≥ 500 runs/s | {} |",
        measures.throughput_runs,
        measures.stacks,
        measures.triggering_tasks,
        measures.runs_per_second(),
        met(measures.runs_per_second() >= GOAL_RUNS_PER_SECOND)
    );
    let _ = writeln!(
        text,
        "| server memory per idle worker (VmRSS{} {} → {} MiB) | {:.1} KiB | ≤ 100 KiB | {} |",
        match measures.replicas {
            1 => String::new(),
            replicas => format!(" of {replicas} replicas together"),
        },
        mib(measures.rss_before_kib.iter().sum()),
        mib(measures.rss_idle_fleet_kib.iter().sum()),
        measures.kib_per_worker(),
        met(measures.kib_per_worker() <= GOAL_KIB_PER_WORKER)
    );
    let _ = writeln!(
        text,
        "\nTrigger sent → assignment received at the simulated launcher, milliseconds\n\n\
         | fleet | runs | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|"
    );
    let mut rows = vec![("idle, one run at a time", Some(*idle))];
    if measures.replicas > 1 {
        rows.push((
            "— launcher on the replica the run was triggered on",
            measures.idle_paths.same_replica,
        ));
        rows.push(("— launcher on another replica", measures.idle_paths.cross_replica));
    }
    rows.push(("during the throughput phase", Some(*loaded)));
    if measures.replicas > 1 {
        rows.push((
            "— launcher on the replica the run was triggered on",
            measures.loaded_paths.same_replica,
        ));
        rows.push(("— launcher on another replica", measures.loaded_paths.cross_replica));
    }
    for (name, summary) in rows {
        let Some(summary) = summary else {
            let _ = writeln!(text, "| {name} | 0 | | | | |");
            continue;
        };
        let _ = writeln!(
            text,
            "| {name} | {} | {} | {} | {} | {} |",
            summary.samples,
            millis(summary.p50),
            millis(summary.p90),
            millis(summary.p99),
            millis(summary.max)
        );
    }
    let _ = writeln!(
        text,
        "\nCPU (the machine's cores shared by everything): latency phase {}; throughput \
         phase {}.",
        measures.latency_cpu.describe(idle.samples),
        measures.throughput_cpu.describe(measures.throughput_runs)
    );
    write_processes(&mut text, measures);
    let _ = writeln!(
        text,
        "\nThroughput phase: {} runs triggered in {:.2} s ({:.0} triggers/s), all FINISHED after \
         {:.2} s. Over all {} runs: {} poll answers ({:.1} per run), {} with assignments; \
         assignments answered again before their ack: {}, after their run ended (ack \
         refused, dropped): {}. Heartbeats: {}. Server VmRSS at the end: {:.1} MiB.",
        measures.throughput_runs,
        measures.triggering_elapsed.as_secs_f64(),
        measures.throughput_runs as f64 / measures.triggering_elapsed.as_secs_f64(),
        measures.throughput_elapsed.as_secs_f64(),
        measures.total_runs,
        measures.polls,
        measures.polls as f64 / measures.total_runs.max(1) as f64,
        measures.polls_with_assignments,
        measures.repeated_deliveries,
        measures.stale_deliveries,
        measures.heartbeats,
        measures.rss_end_kib.iter().sum::<u64>() as f64 / 1024.0,
    );
    for (phase, stats, runs) in [
        ("latency", &measures.latency_database, idle.samples),
        ("throughput", &measures.throughput_database, measures.throughput_runs),
    ] {
        if let Some(stats) = stats {
            write_database_stats(&mut text, phase, stats, runs);
        }
    }
    text
}

/// Each process's CPU in each phase, and each replica's memory.
fn write_processes(text: &mut String, measures: &FleetMeasures) {
    let (latency, throughput) = (&measures.latency_cpu, &measures.throughput_cpu);
    let _ = writeln!(
        text,
        "\n| process | CPU, latency phase | CPU, throughput phase | VmRSS before fleet → idle \
         fleet → end, MiB |\n|---|---|---|---|"
    );
    for replica in 0..measures.replicas {
        let cpu =
            |phase: &PhaseCpu| phase.servers.get(replica).map_or(0.0, |cpu| phase.cores(*cpu));
        let rss = |list: &[u64]| list.get(replica).map_or_else(|| "?".to_owned(), |kib| mib(*kib));
        let _ = writeln!(
            text,
            "| server replica {replica} | {:.2} cores | {:.2} cores | {} → {} → {} |",
            cpu(latency),
            cpu(throughput),
            rss(&measures.rss_before_kib),
            rss(&measures.rss_idle_fleet_kib),
            rss(&measures.rss_end_kib)
        );
    }
    if let (Some(in_latency), Some(in_throughput)) = (latency.database, throughput.database) {
        let _ = writeln!(
            text,
            "| PostgreSQL (postmaster and backends) | {:.2} cores | {:.2} cores | |",
            latency.cores(in_latency),
            throughput.cores(in_throughput)
        );
    }
    let _ = writeln!(
        text,
        "| load generator (this process) | {:.2} cores | {:.2} cores | |",
        latency.cores(latency.load_generator),
        throughput.cores(throughput.load_generator)
    );
}

/// Where PostgreSQL's time went in a phase: WAL flushes, and statement by statement
/// when they were tracked.
fn write_database_stats(text: &mut String, phase: &str, stats: &DatabaseStats, runs: usize) {
    let wal = &stats.wal;
    let per_run = |count: i64| count as f64 / runs.max(1) as f64;
    let _ = write!(
        text,
        "\nPostgreSQL, {phase} phase: {} WAL records ({:.1} per run), {:.1} KiB of WAL ({:.1} \
         per run), {} WAL flushes ({:.2} per run)",
        wal.records,
        per_run(wal.records),
        wal.bytes as f64 / 1024.0,
        per_run(wal.bytes) / 1024.0,
        wal.syncs,
        per_run(wal.syncs),
    );
    match wal.sync_time {
        Some(time) => {
            let _ = writeln!(
                text,
                " taking {:.0} ms in all, {:.2} ms each.",
                time.as_secs_f64() * 1000.0,
                time.as_secs_f64() * 1000.0 / wal.syncs.max(1) as f64
            );
        }
        None => text.push_str(".\n"),
    }
    if stats.statements.is_empty() {
        return;
    }
    let _ = writeln!(
        text,
        "\nStatements of the {phase} phase by execution time (pg_stat_statements; a \
         commit's WAL flush is not in it)\n\n| total ms | calls | mean µs | rows | statement \
         |\n|---|---|---|---|---|"
    );
    for statement in &stats.statements {
        let query: String = statement.query.chars().take(200).collect();
        let _ = writeln!(
            text,
            "| {:.0} | {} | {:.0} | {} | `{}` |",
            statement.total.as_secs_f64() * 1000.0,
            statement.calls,
            statement.total.as_secs_f64() * 1e6 / statement.calls.max(1) as f64,
            statement.rows,
            query.replace('|', "\\|").replace('`', "'")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(samples_ms: &[u64], expected_ms: (u64, u64, u64, u64)) {
        let samples = samples_ms.iter().map(|ms| Duration::from_millis(*ms)).collect();
        let summary = LatencySummary::of(samples).unwrap();
        let got = (summary.p50, summary.p90, summary.p99, summary.max);
        let (p50, p90, p99, max) = expected_ms;
        let expected = (
            Duration::from_millis(p50),
            Duration::from_millis(p90),
            Duration::from_millis(p99),
            Duration::from_millis(max),
        );
        assert_eq!(got, expected, "samples {samples_ms:?}");
        assert_eq!(summary.samples, samples_ms.len());
    }

    #[test]
    fn percentiles_are_nearest_ranks() {
        check(&[7], (7, 7, 7, 7));
        check(&[2, 1], (1, 2, 2, 2));
        // 1..=10 in any order: rank ceil(0.5 * 10) = 5, ceil(9) = 9, ceil(9.9) = 10.
        check(&[10, 3, 1, 4, 2, 5, 9, 8, 6, 7], (5, 9, 10, 10));
        // 1..=100: each percentile is its own rank.
        check(&(1..=100).rev().collect::<Vec<_>>(), (50, 90, 99, 100));
        // 1..=1000: p99 is the 990th sample, max the outlier.
        let mut thousand: Vec<u64> = (1..=999).collect();
        thousand.push(100_000);
        check(&thousand, (500, 900, 990, 100_000));
    }

    #[test]
    fn no_samples_have_no_summary() {
        assert_eq!(LatencySummary::of(Vec::new()), None);
    }

    #[test]
    fn memory_per_worker_is_the_growth_divided_by_the_workers() {
        let summary = LatencySummary::of(vec![Duration::from_millis(1)]).unwrap();
        let cpu = PhaseCpu {
            wall: Duration::from_secs(2),
            servers: vec![Duration::from_secs(3)],
            database: None,
            load_generator: Duration::from_secs(1),
        };
        let paths = ReplicaPaths { same_replica: None, cross_replica: None };
        let measures = FleetMeasures {
            database: FleetDatabase::Sqlite,
            replicas: 1,
            launchers: 100,
            slots: 10,
            stacks: 10,
            triggering_tasks: 8,
            idle_latency: summary,
            loaded_latency: summary,
            idle_paths: paths,
            loaded_paths: paths,
            throughput_runs: 1000,
            throughput_elapsed: Duration::from_secs(2),
            triggering_elapsed: Duration::from_secs(1),
            latency_cpu: cpu.clone(),
            throughput_cpu: cpu,
            rss_before_kib: vec![20_000],
            rss_idle_fleet_kib: vec![70_000],
            rss_end_kib: vec![90_000],
            polls: 0,
            polls_with_assignments: 0,
            repeated_deliveries: 0,
            stale_deliveries: 0,
            heartbeats: 0,
            total_runs: 1000,
            latency_database: None,
            throughput_database: None,
        };
        assert_eq!(measures.kib_per_worker(), 50.0);
        assert_eq!(measures.runs_per_second(), 500.0);
        let report = fleet_report(&measures);
        assert!(report.contains("| 50.0 KiB | ≤ 100 KiB | yes |"), "{report}");
        assert!(report.contains("| 500 runs/s | ≥ 500 runs/s | yes |"), "{report}");
        assert!(
            report.contains("throughput phase server 1.50 cores (3.0 ms CPU per run)"),
            "{report}"
        );
        assert!(report.contains("| server replica 0 | 1.50 cores | 1.50 cores |"), "{report}");
        assert!(!report.contains("PostgreSQL"), "{report}");
    }

    #[test]
    fn replicas_are_reported_each_and_together() {
        let cpu = PhaseCpu {
            wall: Duration::from_secs(2),
            servers: vec![Duration::from_secs(1), Duration::from_millis(1400)],
            database: Some(Duration::from_millis(600)),
            load_generator: Duration::from_secs(1),
        };
        assert_eq!(
            cpu.describe(1000),
            "servers 0.50 + 0.70 = 1.20 cores (2.4 ms CPU per run), PostgreSQL 0.30 cores \
             (0.6 ms per run), load generator 0.50 cores (1.0 ms per run)"
        );
    }
}
