//! The run pod benchmark: how long the operator takes to turn an assignment into the run's
//! Pod and Secret (`gantry_operator::pod::build_run_pod`), and into the JSON bodies it
//! sends to the Kubernetes API, for a minimal WorkerPool and one using every `spec.pod`
//! option (the operator's test fixtures). One thread; batches of builds are timed and each
//! batch's mean kept, so the clock's resolution does not count.

use std::time::Instant;

use anyhow::Context as _;
use gantry_operator::crd::WorkerPool;
use gantry_operator::pod::{RunPod, RunPodRequest, RunPodSettings, build_run_pod};
use gantry_proto::agent::Assignment;

use crate::{Summary, summarize};

const MINIMAL: &str = include_str!("../../operator/tests/fixtures/workerpool-minimal.yaml");
const EVERY_OPTION: &str =
    include_str!("../../operator/tests/fixtures/workerpool-every-option.yaml");
const ASSIGNMENT: &str = include_str!("../../operator/tests/fixtures/assignment.json");

/// One WorkerPool's timings, per pod, in nanoseconds.
#[derive(Debug, Clone)]
pub struct PodSpecMeasures {
    pub pool: &'static str,
    /// `build_run_pod`: the Pod and the Secret.
    pub build: Summary,
    /// `build_run_pod`, then both objects serialized to JSON as the API client does.
    pub build_and_serialize: Summary,
    /// The Pod's JSON body, in bytes.
    pub pod_json_bytes: usize,
}

/// Times `batches` batches of `batch_size` builds for each fixture pool.
pub fn pod_spec(batches: usize, batch_size: usize) -> anyhow::Result<Vec<PodSpecMeasures>> {
    let assignment: Assignment =
        serde_json::from_str(ASSIGNMENT).context("the assignment fixture")?;
    let settings = RunPodSettings {
        launcher_image: "ghcr.io/gantry-dev/gantry-operator:0.1.0".to_owned(),
        default_runner_image: Some("ghcr.io/gantry-dev/runner:latest".to_owned()),
        run_timeout: gantry_domain::options::DEFAULT_RUN_TIMEOUT,
    };
    let mut measures = Vec::new();
    for (name, yaml) in [("minimal", MINIMAL), ("every spec.pod option", EVERY_OPTION)] {
        let pool: WorkerPool = yaml_serde::from_str(yaml).context("a WorkerPool fixture")?;
        let request = RunPodRequest {
            pool: &pool,
            worker_name: "production-01jd8z6x4m2q7r9s3t5v6w8y0a",
            assignment: &assignment,
            launcher_id: "01JD8Z5N3K1P6Q8R2S4T6V8W0Y",
            capability: "a-capability-of-43-characters-like-the-real",
        };
        let build = || build_run_pod(&settings, &request).map_err(anyhow::Error::from);
        let serialize = |built: &RunPod| -> anyhow::Result<usize> {
            Ok(serde_json::to_vec(&built.pod)?.len() + serde_json::to_vec(&built.secret)?.len())
        };
        let pod_json_bytes = serde_json::to_vec(&build()?.pod)?.len();
        measures.push(PodSpecMeasures {
            pool: name,
            build: time_batches(batches, batch_size, || build().map(drop))?,
            build_and_serialize: time_batches(batches, batch_size, || {
                serialize(&build()?).map(drop)
            })?,
            pod_json_bytes,
        });
    }
    Ok(measures)
}

fn time_batches(
    batches: usize,
    batch_size: usize,
    mut work: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Summary> {
    // A first batch warms the allocator and the caches.
    for _ in 0..batch_size {
        work()?;
    }
    let mut means = Vec::with_capacity(batches);
    for _ in 0..batches {
        let started = Instant::now();
        for _ in 0..batch_size {
            work()?;
        }
        means.push(i64::try_from(started.elapsed().as_nanos() / batch_size as u128)?);
    }
    Ok(summarize(means))
}

/// The benchmark's report as a Markdown table.
pub fn pod_spec_report(batches: usize, batch_size: usize, measures: &[PodSpecMeasures]) -> String {
    let micros = |nanoseconds: i64| format!("{:.1}", nanoseconds as f64 / 1000.0);
    let mut text = format!(
        "{batches} batches of {batch_size} pods, microseconds per pod (each batch's mean)\n\n\
         | WorkerPool | measure | median | p90 | min | pod JSON |\n|---|---|---|---|---|---|\n"
    );
    for measure in measures {
        for (name, summary) in [
            ("build Pod + Secret", measure.build),
            ("build + serialize to JSON", measure.build_and_serialize),
        ] {
            text.push_str(&format!(
                "| {} | {name} | {} | {} | {} | {} B |\n",
                measure.pool,
                micros(summary.median),
                micros(summary.p90),
                micros(summary.min),
                measure.pod_json_bytes
            ));
        }
    }
    text
}
