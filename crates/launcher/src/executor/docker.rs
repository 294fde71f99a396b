//! The `docker` executor: each run's worker in a fresh container of the stack's runner
//! image (or `GANTRY_DEFAULT_RUNNER_IMAGE`), running as UID 1983 with the worker binary
//! mounted read-only, the run's workspace and local API socket mounted at the paths the
//! launcher knows them by, and labels naming the run, worker and pool. The container is
//! removed when the run ends. A container an earlier launcher with the same work
//! directory left behind is found by its labels: a run being recovered is waited for
//! (its worker stops on its lease) and then removed; any other is removed at start.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateImageOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures_util::StreamExt;
use gantry_domain::options::{self, Env, OptionError};
use gantry_domain::{PoolId, RunId, RunType};
use gantry_proto::local::{CAPABILITY_ENV, SOCKET_ENV};
use tokio::sync::mpsc;

use super::{Executor, ExecutorError, RunningWorker, WorkerExit, WorkerHandle, WorkerLaunch};

pub const DEFAULT_RUNNER_IMAGE: &str = "GANTRY_DEFAULT_RUNNER_IMAGE";
pub const WORKER_NETWORK: &str = "GANTRY_WORKER_NETWORK";
pub const WORKER_RUNTIME: &str = "GANTRY_WORKER_RUNTIME";
pub const WORKER_EXTRA_MOUNTS: &str = "GANTRY_WORKER_EXTRA_MOUNTS";
pub const WORKER_RO_EXTRA_MOUNTS: &str = "GANTRY_WORKER_RO_EXTRA_MOUNTS";
pub const WORKER_WO_EXTRA_MOUNTS: &str = "GANTRY_WORKER_WO_EXTRA_MOUNTS";

/// The image for stacks that name none, unless `GANTRY_DEFAULT_RUNNER_IMAGE` says
/// otherwise: built from `deploy/docker/runner.Dockerfile` by `scripts/runner-image.sh`.
pub const DEFAULT_IMAGE: &str = concat!("gantry-runner:", env!("CARGO_PKG_VERSION"));

/// The user runs execute as, as in the reference's runner images.
pub const RUN_UID: u32 = 1983;

/// Where the worker binary appears inside the container.
const WORKER_PATH: &str = "/opt/gantry/bin/gantry-worker";

const LABEL_RUN: &str = "dev.gantry.run";
const LABEL_WORKER: &str = "dev.gantry.worker";
const LABEL_POOL: &str = "dev.gantry.pool";
/// The launcher's work directory: a launcher started again with the same one removes
/// what its earlier instance left behind.
const LABEL_WORK_DIR: &str = "dev.gantry.work-dir";

/// A host path mounted into run containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraMount {
    pub host: PathBuf,
    pub container: PathBuf,
}

/// The docker executor's settings, from the launcher's environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerSettings {
    /// For stacks that name no runner image.
    pub default_image: Option<String>,
    /// The network run containers join (`bridge` when unset).
    pub network: Option<String>,
    /// The container runtime (`runc` when unset).
    pub runtime: Option<String>,
    /// Mounted into every run's container.
    pub mounts: Vec<ExtraMount>,
    /// Mounted into read-only (proposed) runs only.
    pub read_only_mounts: Vec<ExtraMount>,
    /// Mounted into write runs (tracked runs and tasks) only.
    pub write_mounts: Vec<ExtraMount>,
    /// Credentials for pulling runner images (`GANTRY_DOCKER_CONFIG_DIR`).
    pub registry_auth: super::registry_auth::RegistryAuth,
}

impl DockerSettings {
    pub fn from_env(env: &Env) -> Result<Self, OptionError> {
        Ok(Self {
            default_image: Some(
                options::get(env, DEFAULT_RUNNER_IMAGE).unwrap_or(DEFAULT_IMAGE).to_owned(),
            ),
            network: options::get(env, WORKER_NETWORK).map(str::to_owned),
            runtime: options::get(env, WORKER_RUNTIME).map(str::to_owned),
            mounts: mounts(env, WORKER_EXTRA_MOUNTS)?,
            read_only_mounts: mounts(env, WORKER_RO_EXTRA_MOUNTS)?,
            write_mounts: mounts(env, WORKER_WO_EXTRA_MOUNTS)?,
            registry_auth: super::registry_auth::RegistryAuth::default(),
        })
    }

    fn mounts_for(&self, run_type: RunType) -> impl Iterator<Item = &ExtraMount> {
        let scoped = match run_type {
            RunType::Proposed => &self.read_only_mounts,
            RunType::Tracked | RunType::Task => &self.write_mounts,
        };
        self.mounts.iter().chain(scoped)
    }
}

/// `/host/path:/container/path,…`: both absolute, the host path existing.
fn mounts(env: &Env, variable: &str) -> Result<Vec<ExtraMount>, OptionError> {
    const EXPECTED: &str =
        "comma-separated mounts /host/path:/container/path, both absolute, the host path existing";
    let Some(value) = options::get(env, variable) else {
        return Ok(Vec::new());
    };
    value
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let (host, container) = entry
                .split_once(':')
                .ok_or_else(|| OptionError::invalid(variable, value, EXPECTED))?;
            let (host, container) = (Path::new(host), Path::new(container));
            if !host.is_absolute() || !container.is_absolute() || !host.exists() {
                return Err(OptionError::invalid(variable, value, EXPECTED));
            }
            Ok(ExtraMount { host: host.to_path_buf(), container: container.to_path_buf() })
        })
        .collect()
}

/// Starts workers in containers.
#[derive(Debug)]
pub struct DockerExecutor {
    docker: Docker,
    settings: DockerSettings,
    pool_id: PoolId,
    work_dir: String,
}

impl DockerExecutor {
    /// Connects to the daemon (`DOCKER_HOST`, or the local socket).
    pub async fn connect(
        settings: DockerSettings,
        pool_id: PoolId,
        work_dir: &Path,
    ) -> Result<Self, ExecutorError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|error| docker_error("cannot reach the Docker daemon", &error))?
            .negotiate_version()
            .await
            .map_err(|error| docker_error("cannot reach the Docker daemon", &error))?;
        Ok(Self { docker, settings, pool_id, work_dir: work_dir.display().to_string() })
    }

    /// The containers of this pool and work directory, running or not, with their run
    /// (of `run_id` only, when given).
    async fn left_behind(
        &self,
        run_id: Option<RunId>,
    ) -> Result<Vec<(String, Option<String>)>, ExecutorError> {
        let mut labels = vec![
            format!("{LABEL_POOL}={}", self.pool_id),
            format!("{LABEL_WORK_DIR}={}", self.work_dir),
        ];
        labels.extend(run_id.map(|run_id| format!("{LABEL_RUN}={run_id}")));
        let filters = HashMap::from([("label".to_owned(), labels)]);
        let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let listed = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|error| docker_error("cannot list run containers", &error))?;
        Ok(listed
            .into_iter()
            .filter_map(|container| {
                let run =
                    container.labels.as_ref().and_then(|labels| labels.get(LABEL_RUN)).cloned();
                Some((container.id?, run))
            })
            .collect())
    }

    async fn create(&self, launch: &WorkerLaunch, image: &str) -> Result<String, DockerError> {
        let workspace = launch.workspace.display().to_string();
        let socket = launch.socket_path.display().to_string();
        let mut binds = vec![
            format!("{}:{WORKER_PATH}:ro", launch.worker_binary.display()),
            format!("{workspace}:{workspace}"),
            format!("{socket}:{socket}"),
        ];
        binds.extend(
            self.settings
                .mounts_for(launch.run_type)
                .map(|mount| format!("{}:{}", mount.host.display(), mount.container.display())),
        );
        let labels = HashMap::from([
            (LABEL_RUN.to_owned(), launch.run_id.to_string()),
            (LABEL_WORKER.to_owned(), launch.worker_id.to_string()),
            (LABEL_POOL.to_owned(), self.pool_id.to_string()),
            (LABEL_WORK_DIR.to_owned(), self.work_dir.clone()),
        ]);
        let body = ContainerCreateBody {
            image: Some(image.to_owned()),
            entrypoint: Some(vec![WORKER_PATH.to_owned()]),
            cmd: Some(Vec::new()),
            user: Some(format!("{RUN_UID}:{RUN_UID}")),
            working_dir: Some(workspace),
            env: Some(vec![
                format!("{SOCKET_ENV}={socket}"),
                format!("{CAPABILITY_ENV}={}", launch.capability),
                "HOME=/tmp".to_owned(),
            ]),
            labels: Some(labels),
            host_config: Some(HostConfig {
                binds: Some(binds),
                network_mode: self.settings.network.clone(),
                runtime: self.settings.runtime.clone(),
                // A writable /tmp whatever the image holds: HOME for the tools.
                tmpfs: Some(HashMap::from([("/tmp".to_owned(), "mode=1777".to_owned())])),
                // No init process: Docker's keeps the container's environment, the
                // capability among it, readable by the tool in /proc/1/environ. The worker
                // is process 1 instead, and takes the capability out of its own.
                init: Some(false),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        };
        let created = self.docker.create_container(None, body).await?;
        Ok(created.id)
    }

    /// Pulls `image`: it is not on this machine.
    async fn pull(
        &self,
        image: &str,
        output: &mpsc::UnboundedSender<String>,
    ) -> Result<(), DockerError> {
        let _ = output.send(format!("Pulling the runner image {image}\n"));
        let options = CreateImageOptionsBuilder::default().from_image(image).build();
        let credentials = self.settings.registry_auth.for_image(image);
        let mut progress = self.docker.create_image(Some(options), None, credentials);
        while let Some(step) = progress.next().await {
            step?;
        }
        Ok(())
    }
}

#[async_trait]
impl Executor for DockerExecutor {
    async fn start(
        &self,
        launch: &WorkerLaunch,
        output: mpsc::UnboundedSender<String>,
    ) -> Result<Box<dyn RunningWorker>, ExecutorError> {
        let image = launch
            .runner_image
            .clone()
            .or_else(|| self.settings.default_image.clone())
            .ok_or_else(|| {
                ExecutorError::Docker(format!(
                    "the stack names no runner image and {DEFAULT_RUNNER_IMAGE} is not set"
                ))
            })?;
        let (workspace, socket) = (launch.workspace.clone(), launch.socket_path.clone());
        tokio::task::spawn_blocking(move || super::give_to_run_user(&workspace, &socket, RUN_UID))
            .await
            .map_err(|error| {
                ExecutorError::Docker(format!("cannot prepare the workspace: {error}"))
            })?
            .map_err(|error| {
                ExecutorError::Docker(format!(
                    "cannot give the workspace to UID {RUN_UID}: {error}"
                ))
            })?;
        let id = match self.create(launch, &image).await {
            Ok(id) => id,
            Err(error) if is_missing_image(&error) => {
                self.pull(&image, &output).await.map_err(|error| {
                    let hint = match image.as_str() {
                        DEFAULT_IMAGE => " (the default runner image: build it on this machine with scripts/runner-image.sh, or set GANTRY_DEFAULT_RUNNER_IMAGE)",
                        _ => "",
                    };
                    docker_error(&format!("cannot pull the runner image {image}{hint}"), &error)
                })?;
                self.create(launch, &image).await.map_err(|error| {
                    docker_error(&format!("cannot create a container of {image}"), &error)
                })?
            }
            Err(error) => {
                return Err(docker_error(&format!("cannot create a container of {image}"), &error));
            }
        };
        if let Err(error) = self.docker.start_container(&id, None).await {
            remove(&self.docker, &id).await;
            return Err(docker_error(
                &format!("the runner image {image} cannot run the worker as UID {RUN_UID}"),
                &error,
            ));
        }
        tokio::spawn(forward_output(self.docker.clone(), id.clone(), output));
        Ok(Box::new(ContainerWorker::new(self.docker.clone(), id)))
    }

    /// Found by its labels: the journal may have been written before the container was.
    async fn reclaim(
        &self,
        run_id: RunId,
        _handle: Option<&WorkerHandle>,
        patience: Duration,
        output: mpsc::UnboundedSender<String>,
    ) -> Result<Option<WorkerExit>, ExecutorError> {
        let mut exit = None;
        for (id, _) in self.left_behind(Some(run_id)).await? {
            // Ends once the container stops: everything it printed is read by then.
            let forwarding =
                tokio::spawn(forward_output(self.docker.clone(), id.clone(), output.clone()));
            let mut worker = ContainerWorker::new(self.docker.clone(), id);
            let ended = match tokio::time::timeout(patience, worker.wait_for_exit_keeping()).await {
                Ok(ended) => ended,
                Err(_) => {
                    let _ = output.send(format!(
                        "gantry-launcher: the worker was still running {} after the launcher came back: stopping it\n",
                        humantime::format_duration(patience)
                    ));
                    worker.stop(super::TERMINATE_GRACE).await;
                    worker.wait_for_exit_keeping().await
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), forwarding).await;
            remove(&self.docker, &worker.id).await;
            exit = Some(ended?);
        }
        Ok(exit)
    }

    async fn remove_leftovers(&self, keep: &[RunId]) -> Result<(), ExecutorError> {
        let kept: Vec<String> = keep.iter().map(ToString::to_string).collect();
        for (id, run) in self.left_behind(None).await? {
            if run.as_ref().is_some_and(|run| kept.contains(run)) {
                continue;
            }
            tracing::warn!(container = %id, run = run.as_deref().unwrap_or("?"), "removing a run container an earlier launcher left behind");
            remove(&self.docker, &id).await;
        }
        Ok(())
    }
}

/// What the container prints on its own (a crash, a missing library), line by line.
async fn forward_output(docker: Docker, id: String, output: mpsc::UnboundedSender<String>) {
    let options = LogsOptionsBuilder::default().follow(true).stdout(true).stderr(true).build();
    let mut logs = docker.logs(&id, Some(options));
    let mut pending = String::new();
    while let Some(Ok(chunk)) = logs.next().await {
        pending.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            if output.send(line).is_err() {
                return;
            }
        }
    }
    if !pending.is_empty() {
        let _ = output.send(format!("{pending}\n"));
    }
}

struct ContainerWorker {
    docker: Docker,
    id: String,
    exit: Option<WorkerExit>,
    /// Known apart from `exit`: an exit can be known while the container is still there.
    removed: bool,
}

impl ContainerWorker {
    fn new(docker: Docker, id: String) -> Self {
        Self { docker, id, exit: None, removed: false }
    }

    /// Waits for the container to stop, and removes it. A call cancelled after the exit
    /// was learnt but before the removal finished (the run's select loop drops it for a
    /// line of output or a stop) leaves the container to the next call, whichever of
    /// `wait` or `terminate` that is.
    async fn wait_for_exit(&mut self) -> Result<WorkerExit, ExecutorError> {
        let exit = self.wait_for_exit_keeping().await?;
        if !self.removed {
            remove(&self.docker, &self.id).await;
            self.removed = true;
        }
        Ok(exit)
    }

    /// Waits for the container to stop, and leaves it in place.
    async fn wait_for_exit_keeping(&mut self) -> Result<WorkerExit, ExecutorError> {
        if let Some(exit) = self.exit {
            return Ok(exit);
        }
        let options = WaitContainerOptionsBuilder::default().condition("not-running").build();
        let mut waiting = self.docker.wait_container(&self.id, Some(options));
        let code = match waiting.next().await {
            Some(Ok(response)) => response.status_code,
            // A non-zero exit arrives as an error carrying the code.
            Some(Err(DockerError::DockerContainerWaitError { code, .. })) => code,
            Some(Err(error)) => {
                return Err(ExecutorError::Wait(std::io::Error::other(error.to_string())));
            }
            None => {
                return Err(ExecutorError::Wait(std::io::Error::other(
                    "the Docker daemon ended the wait without a status",
                )));
            }
        };
        let exit = WorkerExit { code: i32::try_from(code).ok(), signal: None };
        self.exit = Some(exit);
        Ok(exit)
    }

    /// The daemon sends SIGTERM, and SIGKILL after the grace period.
    async fn stop(&self, grace: Duration) {
        let seconds = i32::try_from(grace.as_secs().max(1)).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::default().t(seconds).build();
        if let Err(error) = self.docker.stop_container(&self.id, Some(options)).await {
            tracing::warn!(container = %self.id, %error, "cannot stop the run container");
        }
    }
}

#[async_trait]
impl RunningWorker for ContainerWorker {
    async fn wait(&mut self) -> Result<WorkerExit, ExecutorError> {
        self.wait_for_exit().await
    }

    async fn terminate(&mut self, grace: Duration) -> Result<WorkerExit, ExecutorError> {
        if self.exit.is_none() {
            self.stop(grace).await;
        }
        self.wait_for_exit().await
    }

    fn handle(&self) -> Option<WorkerHandle> {
        Some(WorkerHandle::Container { id: self.id.clone() })
    }
}

async fn remove(docker: &Docker, id: &str) {
    let options = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
    match docker.remove_container(id, Some(options)).await {
        // Removed already, by a removal whose caller stopped waiting for its answer.
        Ok(()) | Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => {}
        Err(error) => tracing::warn!(container = %id, %error, "cannot remove the run container"),
    }
}

fn is_missing_image(error: &DockerError) -> bool {
    matches!(error, DockerError::DockerResponseServerError { status_code: 404, .. })
}

fn docker_error(what: &str, error: &DockerError) -> ExecutorError {
    let detail = match error {
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    };
    ExecutorError::Docker(format!("{what}: {detail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    use gantry_domain::options::env_of as env;

    /// The state a cancelled `wait` leaves when the run's select loop drops it between
    /// learning the exit and removing the container (an output line, or the server's
    /// stop in the heartbeat answer, arriving then): the next `wait` or `terminate`
    /// must still remove the container.
    #[tokio::test]
    async fn a_container_whose_exit_is_known_is_removed_by_the_next_wait_or_terminate() {
        let image = gantry_testkit::runner_image(&std::env::current_exe().unwrap());
        let docker = Docker::connect_with_local_defaults().unwrap();
        for terminate in [false, true] {
            let body = ContainerCreateBody {
                image: Some(image.to_owned()),
                entrypoint: Some(vec!["true".to_owned()]),
                ..ContainerCreateBody::default()
            };
            let id = docker.create_container(None, body).await.unwrap().id;
            docker.start_container(&id, None).await.unwrap();
            let mut worker = ContainerWorker::new(docker.clone(), id.clone());
            let exit = worker.wait_for_exit_keeping().await.unwrap();
            assert!(exit.success(), "{exit}");
            assert!(docker.inspect_container(&id, None).await.is_ok(), "kept until removed");

            let again = if terminate {
                worker.terminate(Duration::from_secs(1)).await
            } else {
                worker.wait().await
            };
            assert_eq!(again.unwrap(), exit);
            let inspected = docker.inspect_container(&id, None).await;
            assert!(
                matches!(
                    inspected,
                    Err(DockerError::DockerResponseServerError { status_code: 404, .. })
                ),
                "the exited container {id} is still there (terminate: {terminate}): {inspected:?}"
            );
        }
    }

    #[test]
    fn mounts_are_checked_and_scoped_to_run_types() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().display().to_string();
        let settings = DockerSettings::from_env(&env(&[
            (WORKER_EXTRA_MOUNTS, &format!("{host}:/all")),
            (WORKER_RO_EXTRA_MOUNTS, &format!("{host}:/reader, {host}:/reader2")),
            (WORKER_WO_EXTRA_MOUNTS, &format!("{host}:/writer")),
        ]))
        .unwrap();
        let targets = |run_type| -> Vec<String> {
            settings.mounts_for(run_type).map(|m| m.container.display().to_string()).collect()
        };
        assert_eq!(targets(RunType::Proposed), ["/all", "/reader", "/reader2"]);
        assert_eq!(targets(RunType::Tracked), ["/all", "/writer"]);
        assert_eq!(targets(RunType::Task), ["/all", "/writer"]);

        for bad in ["relative:/x", "/nowhere/at/all:/x", &format!("{host}:relative"), &host] {
            let error = DockerSettings::from_env(&env(&[(WORKER_EXTRA_MOUNTS, bad)])).unwrap_err();
            assert!(error.to_string().starts_with("GANTRY_WORKER_EXTRA_MOUNTS="), "{error}");
        }
    }
}
