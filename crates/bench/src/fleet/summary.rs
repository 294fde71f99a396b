//! Percentiles of latency samples, and the fleet benchmark's Markdown report.

use std::fmt::Write as _;
use std::time::Duration;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhaseCpu {
    pub wall: Duration,
    pub server: Duration,
    pub load_generator: Duration,
}

impl PhaseCpu {
    /// Cores kept busy on average.
    fn cores(cpu: Duration, wall: Duration) -> f64 {
        cpu.as_secs_f64() / wall.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// "server 1.2 cores (4.1 ms/run), load generator 0.6 cores (2.0 ms/run)"
    fn describe(&self, runs: usize) -> String {
        let per_run = |cpu: Duration| cpu.as_secs_f64() * 1000.0 / runs.max(1) as f64;
        format!(
            "server {:.2} cores ({:.1} ms CPU per run), load generator {:.2} cores ({:.1} ms per run)",
            Self::cores(self.server, self.wall),
            per_run(self.server),
            Self::cores(self.load_generator, self.wall),
            per_run(self.load_generator),
        )
    }
}

/// Everything one fleet measurement found.
#[derive(Debug, Clone)]
pub struct FleetMeasures {
    pub launchers: usize,
    pub slots: usize,
    pub stacks: usize,
    pub triggering_tasks: usize,
    /// Trigger sent → assignment received, one run at a time, the fleet otherwise idle.
    pub idle_latency: LatencySummary,
    /// The same while the throughput phase keeps the server busy.
    pub loaded_latency: LatencySummary,
    pub throughput_runs: usize,
    /// First trigger sent → last run's `finish` received.
    pub throughput_elapsed: Duration,
    /// First trigger sent → last trigger answered.
    pub triggering_elapsed: Duration,
    pub latency_cpu: PhaseCpu,
    pub throughput_cpu: PhaseCpu,
    pub rss_before_kib: u64,
    pub rss_idle_fleet_kib: u64,
    pub rss_end_kib: u64,
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
}

impl FleetMeasures {
    pub fn workers(&self) -> usize {
        self.launchers * self.slots
    }

    pub fn runs_per_second(&self) -> f64 {
        self.throughput_runs as f64 / self.throughput_elapsed.as_secs_f64()
    }

    /// Growth of the server's resident memory from before the fleet connected to when it
    /// idled in long-poll, per worker.
    pub fn kib_per_worker(&self) -> f64 {
        self.rss_idle_fleet_kib.saturating_sub(self.rss_before_kib) as f64 / self.workers() as f64
    }
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
        "{} launchers × {} slots = {} idle workers in long-poll, one `gantry server` (SQLite) \
         on loopback\n",
        measures.launchers,
        measures.slots,
        measures.workers()
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
        "| server memory per idle worker (VmRSS {:.1} → {:.1} MiB) | {:.1} KiB | ≤ 100 KiB | {} |",
        measures.rss_before_kib as f64 / 1024.0,
        measures.rss_idle_fleet_kib as f64 / 1024.0,
        measures.kib_per_worker(),
        met(measures.kib_per_worker() <= GOAL_KIB_PER_WORKER)
    );
    let _ = writeln!(
        text,
        "\nTrigger sent → assignment received at the simulated launcher, milliseconds\n\n\
         | fleet | runs | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|"
    );
    for (name, summary) in
        [("idle, one run at a time", idle), ("during the throughput phase", loaded)]
    {
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
        "\nCPU (2 cores shared by server and load generator): latency phase {}; throughput \
         phase {}.",
        measures.latency_cpu.describe(idle.samples),
        measures.throughput_cpu.describe(measures.throughput_runs)
    );
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
        measures.rss_end_kib as f64 / 1024.0,
    );
    text
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
            server: Duration::from_secs(3),
            load_generator: Duration::from_secs(1),
        };
        let measures = FleetMeasures {
            launchers: 100,
            slots: 10,
            stacks: 10,
            triggering_tasks: 8,
            idle_latency: summary,
            loaded_latency: summary,
            throughput_runs: 1000,
            throughput_elapsed: Duration::from_secs(2),
            triggering_elapsed: Duration::from_secs(1),
            latency_cpu: cpu,
            throughput_cpu: cpu,
            rss_before_kib: 20_000,
            rss_idle_fleet_kib: 70_000,
            rss_end_kib: 90_000,
            polls: 0,
            polls_with_assignments: 0,
            repeated_deliveries: 0,
            stale_deliveries: 0,
            heartbeats: 0,
            total_runs: 1000,
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
    }
}
