//! The launcher's Prometheus metrics: runs started here and how each left (finished,
//! failed, stopped, or planned and waiting for confirmation), the runs in progress
//! against the worker slots, and how long each phase of a run took.

use std::sync::Mutex;
use std::time::Instant;

use gantry_domain::Phase;
use gantry_proto::agent::{Directive, RunReport};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// What a run went through on this launcher, for the phase histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Checking out the commit, or restoring the planned workspace, before the worker.
    Preparing,
    Phase(Phase),
}

impl Stage {
    fn label(self) -> &'static str {
        match self {
            Self::Preparing => "preparing",
            Self::Phase(Phase::Initializing) => "initializing",
            Self::Phase(Phase::Planning) => "planning",
            Self::Phase(Phase::Applying) => "applying",
            Self::Phase(Phase::Performing) => "performing",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    phase: &'static str,
}

type StageHistograms = Family<StageLabel, Histogram, fn() -> Histogram>;

fn stage_histogram() -> Histogram {
    // 50 ms to about 1.8 h.
    Histogram::new(exponential_buckets(0.05, 2.0, 18))
}

/// The launcher's metrics; cheap to share, recorded from every run.
pub(crate) struct LauncherMetrics {
    registry: Registry,
    started: Counter,
    finished: Counter,
    failed: Counter,
    stopped: Counter,
    awaiting_confirmation: Counter,
    in_progress: Gauge,
    stage_seconds: StageHistograms,
}

impl std::fmt::Debug for LauncherMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LauncherMetrics").finish_non_exhaustive()
    }
}

impl LauncherMetrics {
    pub(crate) fn new(worker_slots: u32) -> Self {
        let mut registry = Registry::default();
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let counter = Counter::default();
            registry.register(name, help, counter.clone());
            counter
        };
        let started =
            counter(&mut registry, "gantry_launcher_runs_started", "Runs this launcher started");
        let finished = counter(
            &mut registry,
            "gantry_launcher_runs_finished",
            "Runs that finished on this launcher",
        );
        let failed = counter(
            &mut registry,
            "gantry_launcher_runs_failed",
            "Runs that failed on this launcher",
        );
        let stopped = counter(
            &mut registry,
            "gantry_launcher_runs_stopped",
            "Runs stopped on this launcher by a user or a shutdown",
        );
        let awaiting_confirmation = counter(
            &mut registry,
            "gantry_launcher_plans_awaiting_confirmation",
            "Plans this launcher stored, encrypted, for an apply after a confirmation",
        );
        let in_progress = Gauge::default();
        registry.register(
            "gantry_launcher_runs_in_progress",
            "Runs executing on this launcher now",
            in_progress.clone(),
        );
        let slots = Gauge::<i64>::default();
        slots.set(i64::from(worker_slots));
        registry.register(
            "gantry_launcher_worker_slots",
            "Runs this launcher can execute at once (GANTRY_LAUNCHER_WORKER_SLOTS)",
            slots,
        );
        let stage_seconds = StageHistograms::new_with_constructor(stage_histogram);
        registry.register_with_unit(
            "gantry_launcher_phase_duration",
            "How long each phase of a run took on this launcher",
            Unit::Seconds,
            stage_seconds.clone(),
        );
        Self {
            registry,
            started,
            finished,
            failed,
            stopped,
            awaiting_confirmation,
            in_progress,
            stage_seconds,
        }
    }

    pub(crate) fn render(&self) -> String {
        gantry_metrics::encode(&self.registry)
    }

    /// A run started here; the guard counts it in progress until dropped.
    pub(crate) fn run_started(&self) -> InProgress {
        self.started.inc();
        self.in_progress.inc();
        InProgress(self.in_progress.clone())
    }

    /// The server accepted `report` (answering `directive`, when the worker sent it).
    pub(crate) fn relayed(&self, report: &RunReport, directive: Option<Directive>) {
        match (report, directive) {
            (RunReport::Failed { .. }, _) => self.failed.inc(),
            (RunReport::Stopped, _) => self.stopped.inc(),
            (RunReport::Applied | RunReport::Performed, _)
            | (RunReport::Planned { .. }, Some(Directive::Finish)) => self.finished.inc(),
            (RunReport::WorkspaceStored { .. }, _) => self.awaiting_confirmation.inc(),
            _ => return,
        };
    }

    pub(crate) fn stage_took(&self, stage: Stage, started: Instant) {
        self.stage_seconds
            .get_or_create(&StageLabel { phase: stage.label() })
            .observe(started.elapsed().as_secs_f64());
    }
}

/// Counts a run in progress while it lives.
#[derive(Debug)]
pub(crate) struct InProgress(Gauge);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Times the phases of one run from the reports its worker sends.
#[derive(Debug, Default)]
pub(crate) struct PhaseClock(Mutex<Option<(Phase, Instant)>>);

impl PhaseClock {
    /// A phase starts with its report and ends with the next phase or the run's outcome.
    pub(crate) fn observe(&self, metrics: &LauncherMetrics, report: &RunReport) {
        let ends_phase = matches!(
            report,
            RunReport::PhaseStarted { .. }
                | RunReport::Planned { .. }
                | RunReport::Applied
                | RunReport::Performed
                | RunReport::Failed { .. }
                | RunReport::Stopped
        );
        if ends_phase {
            self.end(metrics);
        }
        if let RunReport::PhaseStarted { phase } = report {
            *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some((*phase, Instant::now()));
        }
    }

    /// Ends the phase in progress, if any: the worker ended without saying more.
    pub(crate) fn end(&self, metrics: &LauncherMetrics) {
        let current = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some((phase, started)) = current {
            metrics.stage_took(Stage::Phase(phase), started);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_of<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|line| line.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix} in {text}"))
    }

    #[test]
    fn outcomes_are_counted_from_the_reports_the_server_accepted() {
        let metrics = LauncherMetrics::new(3);
        let mut in_progress: Vec<_> = (0..4).map(|_| metrics.run_started()).collect();
        metrics.relayed(&RunReport::Applied, Some(Directive::Finish));
        metrics.relayed(&RunReport::Planned { has_changes: false }, Some(Directive::Finish));
        metrics.relayed(&RunReport::Planned { has_changes: true }, Some(Directive::Apply));
        metrics.relayed(&RunReport::Failed { message: "boom".into() }, None);
        metrics.relayed(&RunReport::Stopped, None);
        metrics.relayed(&RunReport::WorkspaceStored { sha256: "ab".into(), size: 1 }, None);
        in_progress.truncate(1);

        let text = metrics.render();
        for (metric, value) in [
            ("gantry_launcher_runs_started_total", 4),
            ("gantry_launcher_runs_finished_total", 2),
            ("gantry_launcher_runs_failed_total", 1),
            ("gantry_launcher_runs_stopped_total", 1),
            ("gantry_launcher_plans_awaiting_confirmation_total", 1),
            ("gantry_launcher_runs_in_progress", 1),
            ("gantry_launcher_worker_slots", 3),
        ] {
            assert_eq!(line_of(&text, metric), format!("{metric} {value}"));
        }
    }

    #[test]
    fn each_phase_is_timed_until_the_next_report_that_ends_it() {
        let metrics = LauncherMetrics::new(1);
        let clock = PhaseClock::default();
        clock.observe(&metrics, &RunReport::PhaseStarted { phase: Phase::Initializing });
        clock.observe(&metrics, &RunReport::PhaseStarted { phase: Phase::Planning });
        clock.observe(&metrics, &RunReport::Outputs { outputs: Vec::new() });
        clock.observe(&metrics, &RunReport::Planned { has_changes: true });
        clock.observe(&metrics, &RunReport::PhaseStarted { phase: Phase::Applying });
        clock.end(&metrics);
        clock.end(&metrics);
        metrics.stage_took(Stage::Preparing, Instant::now());

        let text = metrics.render();
        for phase in ["preparing", "initializing", "planning", "applying"] {
            let count =
                format!("gantry_launcher_phase_duration_seconds_count{{phase=\"{phase}\"}} 1");
            assert!(text.contains(&count), "{count} in {text}");
        }
        assert!(!text.contains("phase=\"performing\""), "{text}");
    }
}
