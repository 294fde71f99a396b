//! Benchmarks of Gantry through its real components. `dispatch` starts a server on
//! loopback and a launcher with the process or the docker executor (both in this
//! process, talking HTTPS), runs proposed runs one after another, and reads each run's latencies from the
//! server's own timestamps: when it was created, when a launcher acknowledged it, when
//! its first log chunk and the worker's first line arrived, when it finished.
//! `envelope` (in `envelope.rs`) measures sealing and opening run state. `fleet` (in
//! `fleet/`) measures dispatch with a thousand simulated idle workers against a server
//! process on SQLite, or against one or several replicas on PostgreSQL. `workers` (in
//! `workers.rs`) measures the operator's worker scale-out: identities and registration.
//! `pod` (in `pod.rs`) times building a run's Pod and Secret as the operator does.

mod envelope;
mod fleet;
mod pod;
mod workers;

pub use envelope::{EnvelopeMeasures, envelope, envelope_report};
pub use fleet::{
    DatabaseStats, FleetDatabase, FleetMeasures, FleetOptions, LatencySummary, PhaseCpu,
    ReplicaPaths, StatementStats, WalStats, fleet, fleet_report,
};
pub use pod::{PodSpecMeasures, pod_spec, pod_spec_report};
pub use workers::{ScaleOut, workers, workers_report};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use gantry_cli::client::ApiClient;
use gantry_crypto::{PoolToken, generate_pool_key};
use gantry_domain::{RunState, RunType};
use gantry_launcher::{
    DockerExecutor, DockerSettings, Executor, LauncherConfig, ProcessExecutor, Shutdown,
};
use gantry_proto::api::{CreatePool, CreateStack, Run, TriggerRun};
use gantry_server::{Server, ServerConfig};
use gantry_testkit::{GitRepository, NO_CHANGES_CONFIG};
use tokio_util::sync::CancellationToken;

/// One run's latencies, in milliseconds from its creation.
#[derive(Debug, Clone, Copy)]
pub struct RunLatencies {
    pub acknowledged: i64,
    pub first_log_line: i64,
    pub worker_first_line: i64,
    pub finished: i64,
}

/// Median, 90th percentile, minimum and maximum.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub median: i64,
    pub p90: i64,
    pub min: i64,
    pub max: i64,
}

pub fn summarize(mut values: Vec<i64>) -> Summary {
    values.sort_unstable();
    let at = |fraction: f64| values[((values.len() - 1) as f64 * fraction).round() as usize];
    Summary { median: at(0.5), p90: at(0.9), min: values[0], max: values[values.len() - 1] }
}

/// The worker binary next to this executable (a release build has one after
/// `cargo build --release --workspace --bins`).
fn worker_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let candidates = [
        exe.parent().map(|d| d.join("gantry-worker")),
        exe.parent().and_then(|d| d.parent()).map(|d| d.join("gantry-worker")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|path| path.is_file())
        .context("gantry-worker not found next to the benchmark: run cargo build --release --workspace --bins first")
}

/// Where the dispatch benchmark's launcher runs workers.
#[derive(Debug, Clone)]
pub enum DispatchExecutor {
    Process,
    /// In containers of `image`, or of the test runner image assembled here.
    Docker {
        image: Option<String>,
    },
}

/// Runs `runs` proposed runs one after another through a fresh server and launcher.
pub async fn dispatch(
    runs: usize,
    executor: &DispatchExecutor,
) -> anyhow::Result<Vec<RunLatencies>> {
    gantry_testkit::install_crypto_provider();
    let dir = tempfile::tempdir()?;
    let env = [
        ("GANTRY_SERVER_DATA_DIR".to_owned(), dir.path().join("server").display().to_string()),
        ("GANTRY_SERVER_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
    ]
    .into_iter()
    .collect();
    let mut server = Server::start(ServerConfig::resolve(None, &env)?).await?;
    let key = server.take_initial_admin_key().context("a fresh server has an admin key")?;
    let url = server.public_url().to_owned();
    let ca = server.ca_certificate_pem().to_owned();
    let stop = CancellationToken::new();
    let served = tokio::spawn(server.serve(stop.clone().cancelled_owned()));

    let client = ApiClient::builder(url.clone()).api_key(key).trust_ca_pem(ca.clone()).build()?;
    let generated = generate_pool_key("bench")?;
    let created = client
        .create_pool(&CreatePool {
            name: "bench".into(),
            csr: generated.csr_pem,
            description: String::new(),
            labels: vec![],
        })
        .await?;
    let token = PoolToken::decode(&created.token)?;
    let launcher_env = [
        ("GANTRY_TOKEN", PoolToken::new(url, Some(ca), token.pool_id, token.certificate).encode()),
        ("GANTRY_POOL_PRIVATE_KEY", generated.private_key_pem),
        ("GANTRY_WORKER_BINARY", worker_binary()?.display().to_string()),
        ("GANTRY_LAUNCHER_WORK_DIR", dir.path().join("launcher").display().to_string()),
        ("PATH", std::env::var("PATH").unwrap_or_default()),
        ("HOME", std::env::var("HOME").unwrap_or_default()),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect();
    let config = LauncherConfig::from_env(&launcher_env)?;
    let executor: Arc<dyn Executor> = match executor {
        DispatchExecutor::Process => Arc::new(ProcessExecutor::new(config.passthrough_env.clone())),
        DispatchExecutor::Docker { image } => {
            let image = match image {
                Some(image) => image.clone(),
                None => gantry_testkit::runner_image(&worker_binary()?).to_owned(),
            };
            let settings =
                DockerSettings { default_image: Some(image), ..DockerSettings::default() };
            Arc::new(DockerExecutor::connect(settings, config.pool_id, &config.work_dir).await?)
        }
    };
    let shutdown = Shutdown::default();
    let launcher = tokio::spawn(gantry_launcher::run(config, executor, shutdown.clone()));

    let repository =
        GitRepository::create(&dir.path().join("repo"), &[("main.tf", NO_CHANGES_CONFIG)]);
    client
        .create_stack(&CreateStack {
            name: "bench".into(),
            repository: repository.url(),
            branch: "main".into(),
            project_root: String::new(),
            pool: Some("bench".into()),
            tool: None,
            runner_image: None,
            autodeploy: false,
            managed_state: false,
            share_sensitive_outputs: false,
            environment: vec![],
            description: String::new(),
            labels: vec![],
            trigger_paths: vec![],
        })
        .await?;
    wait_for_worker(&client).await?;

    let mut latencies = Vec::with_capacity(runs);
    for index in 0..runs {
        let run = client
            .trigger_run(
                "bench",
                &TriggerRun { run_type: RunType::Proposed, commit: None, command: None },
            )
            .await?;
        let run = wait_until_ended(&client, run.id).await?;
        anyhow::ensure!(
            run.state == RunState::Finished,
            "run {index} ended {}: {:?}",
            run.state,
            run.failure
        );
        latencies.push(measure(&client, &run).await?);
    }

    shutdown.graceful.cancel();
    let _ = launcher.await;
    stop.cancel();
    let _ = served.await;
    Ok(latencies)
}

async fn wait_for_worker(client: &ApiClient) -> anyhow::Result<()> {
    for _ in 0..300 {
        if client.list_workers().await?.workers.iter().any(|worker| !worker.busy) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("the launcher's worker never registered")
}

async fn wait_until_ended(client: &ApiClient, run: gantry_domain::RunId) -> anyhow::Result<Run> {
    for _ in 0..3000 {
        let current = client.get_run(run).await?;
        if current.state.is_terminal() {
            return Ok(current);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("run {run} did not end within 30 s")
}

async fn measure(client: &ApiClient, run: &Run) -> anyhow::Result<RunLatencies> {
    let created = run.created_at.unix_millis();
    let state_at = |state: RunState| {
        run.history
            .iter()
            .find(|change| change.state == state)
            .map(|change| change.at.unix_millis() - created)
    };
    let log = client.run_logs(run.id, 0, Some(1000)).await?;
    let first = log.chunks.first().context("the run has a log")?;
    let worker_first = log
        .chunks
        .iter()
        .find(|chunk| chunk.text.contains('▶'))
        .context("the worker logged its first phase")?;
    Ok(RunLatencies {
        acknowledged: state_at(RunState::Preparing).context("the run was acknowledged")?,
        first_log_line: first.at.unix_millis() - created,
        worker_first_line: worker_first.at.unix_millis() - created,
        finished: state_at(RunState::Finished).context("the run finished")?,
    })
}

/// The benchmark's report as a Markdown table.
pub fn report(latencies: &[RunLatencies]) -> String {
    let rows = [
        (
            "trigger → acknowledged by the launcher (dispatch)",
            latencies.iter().map(|l| l.acknowledged).collect::<Vec<_>>(),
        ),
        (
            "trigger → first log line (launcher: checkout starts)",
            latencies.iter().map(|l| l.first_log_line).collect(),
        ),
        (
            "trigger → the worker's first log line",
            latencies.iter().map(|l| l.worker_first_line).collect(),
        ),
        (
            "trigger → FINISHED (proposed run, terraform init + plan)",
            latencies.iter().map(|l| l.finished).collect(),
        ),
    ];
    let mut text = format!(
        "{} runs, milliseconds\n\n| measure | median | p90 | min | max |\n|---|---|---|---|---|\n",
        latencies.len()
    );
    for (name, values) in rows {
        let summary = summarize(values);
        text.push_str(&format!(
            "| {name} | {} | {} | {} | {} |\n",
            summary.median, summary.p90, summary.min, summary.max
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_pick_the_right_ranks() {
        let summary = summarize((1..=20).rev().collect());
        assert_eq!((summary.min, summary.median, summary.p90, summary.max), (1, 11, 18, 20));
    }
}
