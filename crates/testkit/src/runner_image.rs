//! Runner images for tests, assembled here since no registry can be reached: busybox
//! for a shell and its tools, the host's `terraform`, and the C libraries the worker
//! binary links (none for a static one), imported into the local Docker daemon.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// The image for a dynamically linked worker: with the host's C library.
pub const RUNNER_IMAGE: &str = "gantry-test-runner:glibc";
/// The image for a static worker: busybox and terraform, no C library at all.
pub const BUSYBOX_RUNNER_IMAGE: &str = "gantry-test-runner:busybox";

/// Imports (once per process) an image able to run `worker_binary`, and returns its
/// name: [`BUSYBOX_RUNNER_IMAGE`] for a static binary, [`RUNNER_IMAGE`] otherwise.
/// Panics with what is missing (Docker, busybox, terraform).
pub fn runner_image(worker_binary: &Path) -> &'static str {
    static BUILT: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let libraries = shared_libraries(worker_binary);
    let image = if libraries.is_empty() { BUSYBOX_RUNNER_IMAGE } else { RUNNER_IMAGE };
    let mut built = BUILT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if built.get_or_insert_with(HashSet::new).insert(image) {
        build(image, &libraries);
    }
    image
}

fn build(image: &str, libraries: &[PathBuf]) {
    let rootfs = tempfile::tempdir().expect("a temporary directory");
    let root = rootfs.path();
    for dir in ["bin", "usr/local/bin", "etc"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    let busybox = on_path("busybox");
    std::fs::copy(&busybox, root.join("bin/busybox")).unwrap();
    let applets = output(Command::new(&busybox).arg("--list"));
    for applet in applets.lines().map(str::trim).filter(|applet| !applet.is_empty()) {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::copy(on_path("terraform"), root.join("usr/local/bin/terraform")).unwrap();
    for library in libraries {
        let target = root.join(library.strip_prefix("/").unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(library, &target).unwrap();
    }
    // A user database for tools that look themselves up; the run user has no entry, as
    // in an image made without it.
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();

    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(root)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .expect("tar runs");
    // Labelled as scripts/runner-image.sh labels the real image, for the run
    // initialization policy's `terraform_version`.
    let version = output(Command::new("terraform").args(["version", "-json"]));
    let version: serde_json::Value = serde_json::from_str(&version).expect("terraform's JSON");
    let label = format!(
        "LABEL dev.gantry.terraform-version={}",
        version["terraform_version"].as_str().expect("terraform says its version")
    );
    let imported = Command::new("docker")
        .args(["import", "-c", "ENV PATH=/usr/local/bin:/bin", "-c", &label, "-", image])
        .stdin(tar.stdout.take().unwrap())
        .output()
        .expect("docker runs: these tests need a Docker daemon");
    assert!(tar.wait().unwrap().success(), "tar failed");
    assert!(
        imported.status.success(),
        "docker import failed: {}",
        String::from_utf8_lossy(&imported.stderr)
    );
}

/// The libraries `binary` loads, as `ldd` resolves them (none for a static binary).
fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    let listed = Command::new("ldd").arg(binary).output().expect("ldd runs");
    String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().find(|word| word.starts_with('/')))
        .map(PathBuf::from)
        .collect()
}

fn on_path(program: &str) -> PathBuf {
    let found = output(Command::new("sh").args(["-c", &format!("command -v {program}")]));
    let path = found.trim();
    assert!(!path.is_empty(), "{program} is not on PATH: the Docker tests need it");
    std::fs::canonicalize(path).unwrap()
}

fn output(command: &mut Command) -> String {
    let done = command.output().expect("the command runs");
    assert!(done.status.success(), "{command:?} failed: {}", String::from_utf8_lossy(&done.stderr));
    String::from_utf8(done.stdout).unwrap()
}
