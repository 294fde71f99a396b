//! The run Pod's settings, on top of the launcher's own: which launcher the Pod acts as,
//! the assignment the operator received, the volumes' directories and, for the sidecar,
//! the worker's capability. All checked before anything connects, like the rest.

use std::path::{Path, PathBuf};

use gantry_domain::options::{self, Env, OptionError};
use gantry_proto::agent::Assignment;
use gantry_proto::local::CAPABILITY_ENV;
use gantry_proto::pod::{
    ASSIGNMENT_FILE_ENV, BINARIES_DIR_ENV, LAUNCHER_ID_ENV, RUNNER_IMAGE_ENV,
    RUNNER_TOOL_VERSION_ENV, SCRATCH_DIR_ENV, SOCKET_DIR_ENV, SOCKET_FILE, WORKSPACE_DIR_ENV,
};

use gantry_domain::LauncherId;

use crate::config::{ConfigError, LauncherConfig};

/// Unix socket paths hold at most 107 bytes.
const MAX_SOCKET_PATH: usize = 107;

/// What both Pod modes read.
#[derive(Debug, Clone)]
pub struct PodConfig {
    /// The operator's launcher id for the pool: the Pod acts as that launcher.
    pub launcher_id: LauncherId,
    /// The assignment, exactly as the operator's poll received it.
    pub assignment: Assignment,
    /// The workspace volume.
    pub workspace_dir: PathBuf,
    /// The scratch volume, where sealed blobs are written and read back: mounted in init
    /// and the sidecar only, out of reach of the run's code.
    pub scratch_dir: PathBuf,
    /// The operator's notes on the Pod, beside the assignment file.
    pub notes_path: PathBuf,
}

/// `gantry-launcher init`.
#[derive(Debug, Clone)]
pub struct InitConfig {
    pub pod: PodConfig,
    /// The binaries volume, where the worker binary goes.
    pub binaries_dir: PathBuf,
    /// The worker container, as the run initialization policy is told of it.
    pub runner: PodRunner,
}

/// The Pod's worker container as the operator made it: init judges the run on this, not
/// on what its own image or a Docker daemon would say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRunner {
    pub image: Option<String>,
    /// Declared by the pool for that image; unknown otherwise.
    pub tool_version: Option<String>,
}

impl PodRunner {
    fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let image = options::get(env, RUNNER_IMAGE_ENV).map(str::to_owned);
        let tool_version = options::get(env, RUNNER_TOOL_VERSION_ENV)
            .map(|version| {
                gantry_domain::validation::validate_tool_version(version).map_err(|error| {
                    OptionError::invalid(RUNNER_TOOL_VERSION_ENV, version, error.expected)
                })?;
                Ok::<_, OptionError>(version.to_owned())
            })
            .transpose()?;
        Ok(Self { image, tool_version })
    }
}

/// `gantry-launcher sidecar`.
#[derive(Clone)]
pub struct SidecarConfig {
    pub pod: PodConfig,
    /// The worker's local API socket, in the socket volume.
    pub socket_path: PathBuf,
    /// The capability the worker presents: the operator gives both containers the same.
    pub(crate) capability: String,
}

impl std::fmt::Debug for SidecarConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SidecarConfig")
            .field("pod", &self.pod)
            .field("socket_path", &self.socket_path)
            .finish_non_exhaustive()
    }
}

impl InitConfig {
    /// Reads the init container's settings.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let pod = PodConfig::from_env(env)?;
        let binaries_dir = directory(env, BINARIES_DIR_ENV, "the binaries volume's directory")?;
        let runner = PodRunner::from_env(env)?;
        Ok(Self { pod, binaries_dir, runner })
    }
}

impl SidecarConfig {
    /// Reads the sidecar's settings.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let pod = PodConfig::from_env(env)?;
        let socket_dir = directory(env, SOCKET_DIR_ENV, "the socket volume's directory")?;
        outside_of(&pod.scratch_dir, SOCKET_DIR_ENV, &socket_dir)?;
        let socket_path = socket_dir.join(SOCKET_FILE);
        if socket_path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(ConfigError::File {
                variable: SOCKET_DIR_ENV,
                path: socket_dir.display().to_string(),
                problem: format!(
                    "the socket path {} is longer than the {MAX_SOCKET_PATH} bytes a unix socket allows",
                    socket_path.display()
                ),
            });
        }
        let capability = options::get(env, CAPABILITY_ENV).ok_or_else(|| OptionError::Missing {
            variable: CAPABILITY_ENV.to_owned(),
            expected: "the run's capability, the value the worker container gets too",
        })?;
        Ok(Self { pod, socket_path, capability: capability.to_owned() })
    }
}

impl PodConfig {
    fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let id = options::get(env, LAUNCHER_ID_ENV).ok_or_else(|| OptionError::Missing {
            variable: LAUNCHER_ID_ENV.to_owned(),
            expected: "the operator's launcher id for this pool (a ULID)",
        })?;
        let launcher_id = id.parse().map_err(|_| {
            OptionError::invalid(
                LAUNCHER_ID_ENV,
                id,
                "a launcher id: 26 characters of Crockford base32 (a ULID)",
            )
        })?;
        let workspace_dir = directory(env, WORKSPACE_DIR_ENV, "the workspace volume's directory")?;
        let scratch_dir = directory(env, SCRATCH_DIR_ENV, "the scratch volume's directory")?;
        outside_of(&scratch_dir, WORKSPACE_DIR_ENV, &workspace_dir)?;
        let assignment = read_assignment(env)?;
        let notes_path = options::get(env, ASSIGNMENT_FILE_ENV)
            .and_then(|file| std::path::Path::new(file).parent())
            .unwrap_or(std::path::Path::new("."))
            .join(gantry_proto::pod::NOTES_FILE);
        Ok(Self { launcher_id, assignment, workspace_dir, scratch_dir, notes_path })
    }

    /// The launcher's configuration as this Pod uses it: the operator's launcher id, and
    /// the workspace volume as its work directory (where an apply's state that cannot be
    /// uploaded is kept, sealed).
    pub(crate) fn adopt(&self, mut launcher: LauncherConfig) -> LauncherConfig {
        launcher.launcher_id = self.launcher_id;
        launcher.work_dir.clone_from(&self.workspace_dir);
        launcher
    }
}

fn read_assignment(env: &Env) -> Result<Assignment, ConfigError> {
    let path = options::get(env, ASSIGNMENT_FILE_ENV).ok_or_else(|| OptionError::Missing {
        variable: ASSIGNMENT_FILE_ENV.to_owned(),
        expected: "the path of the assignment file the operator mounts from the run's Secret",
    })?;
    let problem = |problem: String| ConfigError::File {
        variable: ASSIGNMENT_FILE_ENV,
        path: path.to_owned(),
        problem,
    };
    let text = std::fs::read(path).map_err(|e| problem(format!("cannot read it: {e}")))?;
    // Only the position: serde's message may quote a value, and the stack's secret
    // variables are in this file.
    serde_json::from_slice(&text).map_err(|e| {
        problem(format!(
            "not an assignment as the agent plane's poll returns it (JSON error at line {}, column {})",
            e.line(),
            e.column()
        ))
    })
}

/// Refuses a scratch directory inside `volume` (a volume the worker container mounts
/// writable): the run's code could swap its files for links while they are in use.
fn outside_of(
    scratch_dir: &Path,
    volume_variable: &'static str,
    volume: &Path,
) -> Result<(), ConfigError> {
    let resolved = |path: &Path| path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    if !resolved(scratch_dir).starts_with(resolved(volume)) {
        return Ok(());
    }
    Err(ConfigError::File {
        variable: SCRATCH_DIR_ENV,
        path: scratch_dir.display().to_string(),
        problem: format!(
            "inside {volume_variable}={}, which the worker container can write: expected a volume only init and the sidecar mount",
            volume.display()
        ),
    })
}

fn directory(
    env: &Env,
    variable: &'static str,
    what: &'static str,
) -> Result<PathBuf, ConfigError> {
    let path = options::get(env, variable)
        .ok_or_else(|| OptionError::Missing { variable: variable.to_owned(), expected: what })?;
    if !Path::new(path).is_dir() {
        return Err(ConfigError::File {
            variable,
            path: path.to_owned(),
            problem: format!("no directory there: expected {what}, mounted by the operator"),
        });
    }
    Ok(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use gantry_domain::{RunId, StackId, WorkerId};

    use super::*;

    /// A Pod's directories and assignment file, as the operator mounts them.
    struct Volumes {
        root: tempfile::TempDir,
    }

    impl Volumes {
        fn new(assignment: &str) -> Self {
            let root = tempfile::tempdir().unwrap();
            for dir in ["workspace", "bin", "socket", "scratch"] {
                std::fs::create_dir(root.path().join(dir)).unwrap();
            }
            std::fs::write(root.path().join("assignment.json"), assignment).unwrap();
            Self { root }
        }

        fn path(&self, name: &str) -> String {
            self.root.path().join(name).display().to_string()
        }

        /// Every variable both modes read, each replaced or removed by `changes`.
        fn env(&self, changes: &[(&str, Option<&str>)]) -> Env {
            let mut env = options::env_of(&[
                (LAUNCHER_ID_ENV, &gantry_domain::LauncherId::generate().to_string()),
                (ASSIGNMENT_FILE_ENV, &self.path("assignment.json")),
                (WORKSPACE_DIR_ENV, &self.path("workspace")),
                (BINARIES_DIR_ENV, &self.path("bin")),
                (SOCKET_DIR_ENV, &self.path("socket")),
                (SCRATCH_DIR_ENV, &self.path("scratch")),
                (CAPABILITY_ENV, "gwc_capability-for-tests"),
            ]);
            for (name, value) in changes {
                match value {
                    Some(value) => env.insert((*name).to_owned(), (*value).to_owned()),
                    None => env.remove(*name),
                };
            }
            env
        }
    }

    fn assignment_json(secret: &str) -> String {
        serde_json::json!({
            "run_id": RunId::generate().to_string(),
            "worker_id": WorkerId::generate().to_string(),
            "run_type": "TRACKED",
            "job": "plan",
            "stack": {
                "id": StackId::generate().to_string(),
                "name": "app",
                "repository": "https://git.example.com/app.git",
                "branch": "main",
                "project_root": "infra",
                "tool": "terraform",
                "runner_image": null,
                "environment": [{"name": "TOKEN", "value": secret, "secret": true}],
            },
            "commit": null,
        })
        .to_string()
    }

    /// Checks that both modes refuse `changes` with a message containing `expected`, or
    /// accept them when `expected` is empty.
    fn check(volumes: &Volumes, changes: &[(&str, Option<&str>)], expected: &str) {
        let env = volumes.env(changes);
        for result in
            [InitConfig::from_env(&env).map(|_| ()), SidecarConfig::from_env(&env).map(|_| ())]
        {
            match (result, expected) {
                (Ok(()), "") => {}
                (Ok(()), _) => panic!("{changes:?} was accepted; expected {expected:?}"),
                (Err(error), _) => {
                    let message = error.to_string();
                    assert!(!expected.is_empty(), "{changes:?} was refused: {message}");
                    assert!(message.contains(expected), "{message:?} lacks {expected:?}");
                }
            }
        }
    }

    #[test]
    fn every_setting_is_checked_and_named() {
        let volumes = Volumes::new(&assignment_json("s3cr3t-value"));
        let missing_dir = volumes.path("missing");
        for (changes, expected) in [
            (vec![], ""),
            (vec![(LAUNCHER_ID_ENV, None)], "GANTRY_LAUNCHER_ID is not set"),
            (
                vec![(LAUNCHER_ID_ENV, Some("launcher-1"))],
                "GANTRY_LAUNCHER_ID=\"launcher-1\": expected a launcher id",
            ),
            (vec![(ASSIGNMENT_FILE_ENV, None)], "GANTRY_ASSIGNMENT_FILE is not set"),
            (vec![(ASSIGNMENT_FILE_ENV, Some(missing_dir.as_str()))], "cannot read it"),
            (vec![(WORKSPACE_DIR_ENV, None)], "GANTRY_WORKSPACE_DIR is not set"),
            (vec![(WORKSPACE_DIR_ENV, Some(missing_dir.as_str()))], "no directory there"),
            (vec![(SCRATCH_DIR_ENV, None)], "GANTRY_SCRATCH_DIR is not set"),
            (vec![(SCRATCH_DIR_ENV, Some(missing_dir.as_str()))], "no directory there"),
            (
                vec![(SCRATCH_DIR_ENV, Some(volumes.path("workspace").as_str()))],
                "which the worker container can write",
            ),
        ] {
            check(&volumes, &changes, expected);
        }
        let env = volumes.env(&[(BINARIES_DIR_ENV, None)]);
        let error = InitConfig::from_env(&env).unwrap_err().to_string();
        assert!(error.contains("GANTRY_BINARIES_DIR is not set"), "{error}");
        let env = volumes.env(&[(CAPABILITY_ENV, None)]);
        let error = SidecarConfig::from_env(&env).unwrap_err().to_string();
        assert!(error.contains("GANTRY_WORKER_CAPABILITY is not set"), "{error}");
        let env = volumes.env(&[(SOCKET_DIR_ENV, Some(missing_dir.as_str()))]);
        let error = SidecarConfig::from_env(&env).unwrap_err().to_string();
        assert!(error.starts_with("GANTRY_SOCKET_DIR="), "{error}");
    }

    #[test]
    fn a_scratch_directory_the_worker_container_can_write_is_refused() {
        let volumes = Volumes::new(&assignment_json("x"));
        let in_workspace = volumes.root.path().join("workspace/.gantry-scratch");
        std::fs::create_dir(&in_workspace).unwrap();
        // Reached through a link, it is still inside.
        let link = volumes.root.path().join("scratch-link");
        std::os::unix::fs::symlink(&in_workspace, &link).unwrap();
        for scratch in [&in_workspace, &link] {
            let env = volumes.env(&[(SCRATCH_DIR_ENV, Some(scratch.to_str().unwrap()))]);
            let error = InitConfig::from_env(&env).unwrap_err().to_string();
            assert!(error.starts_with("GANTRY_SCRATCH_DIR="), "{error}");
            assert!(error.contains("inside GANTRY_WORKSPACE_DIR="), "{error}");
        }
        let env = volumes.env(&[(SCRATCH_DIR_ENV, Some(volumes.path("socket").as_str()))]);
        let error = SidecarConfig::from_env(&env).unwrap_err().to_string();
        assert!(error.contains("inside GANTRY_SOCKET_DIR="), "{error}");
        assert!(InitConfig::from_env(&env).is_ok(), "init serves no socket");
    }

    #[test]
    fn a_long_socket_directory_is_refused_before_binding() {
        let volumes = Volumes::new(&assignment_json("x"));
        let deep = volumes.root.path().join("d".repeat(100));
        std::fs::create_dir(&deep).unwrap();
        let env = volumes.env(&[(SOCKET_DIR_ENV, Some(deep.to_str().unwrap()))]);
        let error = SidecarConfig::from_env(&env).unwrap_err().to_string();
        assert!(error.contains("longer than the 107 bytes"), "{error}");
    }

    #[test]
    fn a_broken_assignment_is_located_without_quoting_its_secrets() {
        let broken = assignment_json("s3cr3t-value").replace("\"TRACKED\"", "17");
        let volumes = Volumes::new(&broken);
        let error = InitConfig::from_env(&volumes.env(&[])).unwrap_err().to_string();
        assert!(error.contains("JSON error at line 1, column"), "{error}");
        assert!(!error.contains("s3cr3t"), "{error}");
    }

    #[test]
    fn the_capability_stays_out_of_debug_output() {
        let volumes = Volumes::new(&assignment_json("s3cr3t-value"));
        let sidecar = SidecarConfig::from_env(&volumes.env(&[])).unwrap();
        let shown = format!("{sidecar:?}");
        assert!(!shown.contains("gwc_capability-for-tests"), "{shown}");
        assert!(shown.contains("worker.sock"), "{shown}");
    }
}
