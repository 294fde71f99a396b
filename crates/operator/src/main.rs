//! `gantry-operator`: reads its configuration from `GANTRY_*` variables, then reconciles
//! WorkerPools (in one namespace or all) until SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;

use futures_util::StreamExt;
use gantry_operator::config::OperatorConfig;
use gantry_operator::crd::{LABEL_WORKER_POOL, Worker, WorkerPool};
use gantry_operator::reconcile::{Context, ReconcileError, reconcile};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client};

/// Exit code for a configuration that cannot work.
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    if std::env::args().nth(1).is_some_and(|arg| arg == "--help" || arg == "-h") {
        println!("{HELP}");
        return ExitCode::SUCCESS;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GANTRY_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let env = std::env::vars().collect();
    let config = match OperatorConfig::from_env(&env) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("gantry-operator: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("gantry-operator: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let client = match Client::try_default().await {
            Ok(client) => client,
            Err(error) => {
                eprintln!("gantry-operator: cannot reach the Kubernetes API (in-cluster config or KUBECONFIG): {error}");
                return ExitCode::from(EXIT_USAGE);
            }
        };
        run(client, config).await;
        ExitCode::SUCCESS
    })
}

async fn run(client: Client, config: OperatorConfig) {
    let (pools, workers, pods) = match &config.watch_namespace {
        Some(namespace) => (
            Api::<WorkerPool>::namespaced(client.clone(), namespace),
            Api::<Worker>::namespaced(client.clone(), namespace),
            Api::<Pod>::namespaced(client.clone(), namespace),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone()), Api::all(client.clone())),
    };
    tracing::info!(namespace = ?config.watch_namespace, "gantry-operator started");
    let metrics_listen = config.metrics_listen;
    let ours = watcher::Config::default().labels(LABEL_WORKER_POOL);
    let context = Arc::new(Context::new(client, config, true));
    let metrics_stop = tokio_util::sync::CancellationToken::new();
    let _stop_metrics = metrics_stop.clone().drop_guard();
    if let Some(address) = metrics_listen {
        match gantry_metrics::MetricsListener::bind(address).await {
            Ok(listener) => {
                tracing::info!(address = %listener.local_addr(), "metrics served at /metrics");
                let metrics = Arc::clone(&context.metrics);
                let render = move || {
                    let text = metrics.render();
                    async move { Ok(text) }
                };
                tokio::spawn(listener.serve(render, metrics_stop));
            }
            Err(error) => {
                eprintln!("gantry-operator: cannot listen for metrics on {address}: {error}");
                std::process::exit(i32::from(EXIT_USAGE));
            }
        }
    }
    Controller::new(pools, watcher::Config::default())
        .owns(workers, ours.clone())
        .owns(pods, ours)
        .shutdown_on_signal()
        .run(reconcile, error_policy, context)
        .for_each(|outcome| async move {
            if let Err(error) = outcome {
                tracing::warn!(%error, "reconciliation failed");
            }
        })
        .await;
}

fn error_policy(_pool: Arc<WorkerPool>, error: &ReconcileError, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "retrying the WorkerPool in 15 s");
    Action::requeue(std::time::Duration::from_secs(15))
}

const HELP: &str = "gantry-operator: runs Gantry WorkerPools on Kubernetes.

Keeps spec.poolSize workers of each WorkerPool registered with the Gantry server and runs
each run in a Pod of its own (init, launcher-sidecar, worker). Configuration, all from the
environment:
  GANTRY_OPERATOR_LAUNCHER_IMAGE   image of the run pods' init and launcher-sidecar (required)
  GANTRY_DEFAULT_RUNNER_IMAGE      worker image for stacks that name none
  GANTRY_LAUNCHER_RUN_TIMEOUT      run timeout (70m); the pods' deadline follows it
  GANTRY_OPERATOR_WATCH_NAMESPACE  watch this namespace only (default: all)
  GANTRY_OPERATOR_METRICS_LISTEN   serve Prometheus /metrics here, like 0.0.0.0:9466
  GANTRY_LOG                       log filter (info)
The Kubernetes API is found in-cluster, or through KUBECONFIG.";
