//! The launcher's secrets out of reach of what runs beside it: the real `gantry-launcher`
//! takes its pool key and token out of its environment block (it re-executes itself
//! without them) and is non-dumpable, so that another process of its user can read
//! neither its environment nor its memory; and it refuses to pass its own variables to
//! runs.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use gantry_testkit::{KeyKind, OpensslKey};

use crate::harness::{Cluster, Launcher, base64_of};

/// Whether the tests run as root, who may read any process's environment and memory.
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").unwrap().uid() == 0
}

/// The user the launcher and its would-be reader run as: under root `nobody`, since
/// root reading a process proves nothing about what its own user can do; otherwise the
/// tests' own user (`None`: no change).
fn unprivileged_user() -> Option<u32> {
    running_as_root().then_some(65534)
}

/// Whether a process of `user` can open `/proc/<pid>/<file>`; the shell's complaint when
/// it cannot.
fn open_as(user: Option<u32>, pid: u32, file: &str) -> Result<(), String> {
    let mut reader = Command::new("sh");
    reader.args(["-c", &format!("exec 3< /proc/{pid}/{file}")]);
    if let Some(uid) = user {
        reader.uid(uid).gid(uid);
    }
    let output = reader.output().unwrap();
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

#[test]
fn the_launchers_user_cannot_read_its_environment_or_memory_and_neither_holds_the_key() {
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let key = OpensslKey::generate(work.path(), "pool", KeyKind::P256);
    let token = cluster.gantry.create_pool("p", &key);
    let key_base64 = base64_of(&key.key_pem);
    let user = unprivileged_user();
    let launcher_dir = work.path().join("launcher");
    std::fs::create_dir(&launcher_dir).unwrap();
    if let Some(uid) = user {
        std::os::unix::fs::chown(&launcher_dir, Some(uid), Some(uid)).unwrap();
    }
    let mut launcher =
        Launcher::spawn_adjusted(&token, &key_base64, &launcher_dir, &[], |command| {
            if let Some(uid) = user {
                command.uid(uid).gid(uid);
            }
        });
    // Connected: the key and token reached the re-executed launcher intact.
    launcher.wait_for_stderr("launcher connected", Duration::from_secs(30));
    let pid = launcher.pid();

    for file in ["environ", "mem"] {
        let refusal = open_as(user, pid, file).expect_err(file);
        assert!(refusal.contains("Permission denied"), "{file}: {refusal}");
    }
    // Under its own name, not the `exe` of the path it re-executed itself by.
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(name.trim(), "gantry-launcher");

    if running_as_root() {
        // Root reads a non-dumpable process's environment block all the same: it holds
        // the launcher's other settings, and neither the key nor the token.
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let environ = String::from_utf8_lossy(&environ);
        // Failures name the variables only: their values may be what leaked.
        let names: Vec<&str> =
            environ.split('\0').filter_map(|entry| entry.split('=').next()).collect();
        assert!(environ.contains("GANTRY_WORKER_BINARY="), "{names:?}");
        let pem_line = key.key_pem.lines().nth(1).unwrap();
        let token_middle = &token[token.len() / 2..][..40];
        for secret in
            [pem_line, &key_base64[..40], token_middle, "GANTRY_POOL_PRIVATE_KEY", "GANTRY_TOKEN"]
        {
            assert!(!environ.contains(secret), "a secret is in the environment: {names:?}");
        }
    }
}

#[test]
fn a_launcher_refuses_to_pass_its_own_variables_to_runs() {
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let pool = cluster.private_pool(work.path(), "p");
    for (option, list, named) in [
        ("GANTRY_WHITELIST_ENVS", "AWS_REGION,GANTRY_POOL_PRIVATE_KEY", "GANTRY_POOL_PRIVATE_KEY"),
        ("GANTRY_WHITELIST_ENVS", "ro_GANTRY_TOKEN", "GANTRY_TOKEN"),
        ("GANTRY_MASK_ENVS", "GANTRY_POOL_PRIVATE_KEY", "GANTRY_POOL_PRIVATE_KEY"),
    ] {
        let exited = Launcher::run_to_exit_with(
            &cluster,
            &pool.token,
            &pool.key,
            &[(option, list), ("AWS_REGION", "eu-west-1")],
        );
        assert_eq!(exited.status, Some(64), "{}", exited.stderr);
        assert_eq!(
            exited.stderr.trim(),
            format!(
                "gantry-launcher: {option}: names {named}: variables named GANTRY_* are the \
                 launcher's own settings (its pool key and token among them) and are never \
                 passed to runs"
            )
        );
        assert!(!exited.stderr.contains(&pool.key[..40]));
    }
}
