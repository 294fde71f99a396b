//! The server's secrets under its master key, with the real `gantry server`: a copy of
//! its database opens nothing and starts no server without the key, works with it;
//! rotation leaves the old key useless; and an older database's clear secrets are
//! sealed at the first start that has a key.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use gantry_crypto::{MasterKey, is_sealed};
use gantry_store::Store;
use gantry_testkit::{GitRepository, KeyKind, OpensslKey};

use crate::harness::{
    Cluster, Gantry, Launcher, PoolAccess, ServerProcess, base64_of, bin, wait_with_timeout,
};

const CONFIG: &str = r#"
terraform {
  backend "local" {}
}

output "greeting" {
  value = "hello"
}
"#;

/// A stack on `pool` whose proposed runs need nothing but the worker and the server.
fn stack(gantry: &Gantry, work: &Path, pool: &str) {
    let repository = GitRepository::create(&work.join("repo"), &[("infra/main.tf", CONFIG)]);
    gantry.create_stack("app", &repository, pool, &work.join("state/app.tfstate"), &[]);
}

/// Triggers a proposed run of the stack and waits for it to finish.
fn run_finishes(gantry: &Gantry) {
    let run = gantry.trigger("app", &["--proposed"]);
    let run = gantry.wait_for_state(&run, &["FINISHED", "FAILED"]);
    assert_eq!(run["state"], "FINISHED", "{run}");
}

/// The address the server listens on, from its URL: a restart there keeps pool tokens
/// (which carry the URL) valid.
fn listen_of(server: &ServerProcess) -> String {
    server.url.trim_start_matches("https://").to_owned()
}

/// `gantry server` on `data_dir` that must refuse to start: its exit code and stderr.
fn refused_start(data_dir: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = Command::new(bin("gantry"))
        .args(["server", "--data-dir"])
        .arg(data_dir)
        .args(["--listen", "127.0.0.1:0"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_with_timeout(&mut child, Duration::from_secs(30));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

/// Asserts a refusal is one clear error line naming `setting`, not a panic.
fn assert_refused(outcome: &(Option<i32>, String), setting: &str, says: &str) {
    let (status, stderr) = outcome;
    assert_ne!(*status, Some(0), "the server started: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|line| line.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains(setting) && errors[0].contains(says), "{stderr}");
}

/// Copies the regular files of `from` into `to` (no subdirectories: the blobs are not
/// needed for a proposed run), except `skip`.
fn copy_files(from: &Path, to: &Path, skip: &str) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() && entry.file_name() != skip {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// Every server secret of the SQLite database in `data_dir`.
fn stored_secrets(data_dir: &Path) -> Vec<(String, Vec<u8>)> {
    let database = data_dir.join("gantry.db");
    tokio::runtime::Runtime::new().unwrap().block_on(async move {
        let store = gantry_store::SqliteStore::open(&database).await.unwrap();
        store.list_secrets().await.unwrap()
    })
}

/// The database file's bytes (with its journal, if one was left).
fn database_bytes(data_dir: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(data_dir.join("gantry.db")).unwrap();
    for journal in ["gantry.db-wal", "gantry.db-shm"] {
        if let Ok(more) = std::fs::read(data_dir.join(journal)) {
            bytes.extend(more);
        }
    }
    bytes
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|window| window == needle)
}

/// Checks that every server secret is sealed with `key`, and that neither a private key
/// nor any secret's clear value (raw, base64 or hex) is anywhere in `dump`.
fn assert_dump_opens_nothing(dump: &[u8], secrets: &[(String, Vec<u8>)], key: &MasterKey) {
    let names: Vec<&str> = secrets.iter().map(|(name, _)| name.as_str()).collect();
    for expected in
        ["certificate-authority", "session-challenge-key", "shared-pool-key", "ui-session-key"]
    {
        assert!(names.contains(&expected), "{expected} is missing from {names:?}");
    }
    assert!(!contains(dump, b"PRIVATE KEY"), "the database holds a private key in clear");
    let engine = base64::engine::general_purpose::STANDARD;
    for (name, value) in secrets {
        assert!(is_sealed(value), "{name} is stored in clear");
        let clear = key.open(name, value).unwrap();
        if name == "initial-admin-key" {
            // The first admin key's hash, which its api_keys row holds too: not a secret.
            continue;
        }
        let encoded = base64::Engine::encode(&engine, clear.as_slice());
        let hex: String = clear.iter().map(|byte| format!("{byte:02x}")).collect();
        for (form, needle) in
            [("clear", clear.as_slice()), ("base64", encoded.as_bytes()), ("hex", hex.as_bytes())]
        {
            assert!(!contains(dump, needle), "{name}'s {form} value is in the database");
        }
    }
}

/// [`assert_dump_opens_nothing`] on the SQLite database of `data_dir`.
fn assert_database_opens_nothing(data_dir: &Path, key: &MasterKey) {
    assert_dump_opens_nothing(&database_bytes(data_dir), &stored_secrets(data_dir), key);
}

fn key_in(data_dir: &Path) -> MasterKey {
    MasterKey::from_base64(&std::fs::read_to_string(data_dir.join("master.key")).unwrap()).unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_database_copied_without_the_master_key_opens_nothing_and_starts_no_server() {
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let pool: PoolAccess = cluster.private_pool(work.path(), "p");
    let launcher = Launcher::connect(&pool, &[]);
    stack(&cluster.gantry, work.path(), "p");
    run_finishes(&cluster.gantry);

    // The first start generated the key into the data directory, which is the server
    // user's alone.
    let data_dir = cluster.server.data_dir.clone();
    assert_eq!(mode(&data_dir), 0o700);
    assert_eq!(mode(&data_dir.join("master.key")), 0o600);
    assert_eq!(mode(&data_dir.join("gantry.db")), 0o600);
    assert_eq!(mode(&data_dir.join("blobs")), 0o700);
    let listen = listen_of(&cluster.server);
    let Cluster { gantry, server, .. } = cluster;
    let admin_key = gantry.api_key.clone();
    // The launcher first, so that it signs its workers off and the copy assigns nothing
    // to them.
    drop(launcher);
    drop(server);
    let key = key_in(&data_dir);
    assert_database_opens_nothing(&data_dir, &key);

    // A second data directory with the database and without the key: no server, and no
    // new key made over the sealed secrets.
    let copy = work.path().join("copy");
    copy_files(&data_dir, &copy, "master.key");
    let refused = refused_start(&copy, &[]);
    assert_refused(&refused, "GANTRY_SERVER_MASTER_KEY_FILE", "no master key is set");
    assert!(!copy.join("master.key").exists(), "a key was generated over sealed secrets");
    // Another key is named as such.
    let other = work.path().join("other.key");
    std::fs::write(&other, format!("{}\n", MasterKey::generate().to_base64().as_str())).unwrap();
    let refused =
        refused_start(&copy, &[("GANTRY_SERVER_MASTER_KEY_FILE", other.to_str().unwrap())]);
    assert_refused(&refused, "GANTRY_SERVER_MASTER_KEY_FILE", &key.id());

    // With the key, the copy is the same server: same CA, same keys, and runs go on.
    let key_file = data_dir.join("master.key");
    let restored = ServerProcess::start_with(
        &copy,
        &listen,
        &[("GANTRY_SERVER_MASTER_KEY_FILE", key_file.to_str().unwrap())],
    );
    assert!(restored.admin_key.is_none(), "the copy kept the admin key");
    assert_eq!(
        std::fs::read(copy.join("server-ca.pem")).unwrap(),
        std::fs::read(data_dir.join("server-ca.pem")).unwrap()
    );
    let gantry = Gantry::for_server_with_key(&restored, &admin_key);
    let _launcher = Launcher::connect(&pool, &[]);
    run_finishes(&gantry);
}

#[test]
fn rotation_reseals_everything_and_the_old_key_opens_nothing() {
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let pool = cluster.private_pool(work.path(), "p");
    stack(&cluster.gantry, work.path(), "p");
    let data_dir = cluster.server.data_dir.clone();
    let listen = listen_of(&cluster.server);
    let Cluster { gantry, server, .. } = cluster;
    drop(server);
    let old = key_in(&data_dir);

    let output = Command::new(bin("gantry"))
        .args(["server", "rotate-master-key", "--data-dir"])
        .arg(&data_dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    let new = key_in(&data_dir);
    assert_ne!(new.id(), old.id());
    assert!(
        stdout.contains(&format!("with the master key {} (was {})", new.id(), old.id())),
        "{stdout}"
    );
    assert!(!stdout.contains(new.to_base64().as_str()), "the key itself was printed");
    assert_eq!(mode(&data_dir.join("master.key")), 0o600);
    assert!(!data_dir.join("master.key.new").exists());
    assert_database_opens_nothing(&data_dir, &new);
    for (name, value) in stored_secrets(&data_dir) {
        assert!(old.open(&name, &value).is_err(), "the old key still opens {name}");
    }

    // The old key starts nothing; the new one, everything.
    let old_base64 = old.to_base64();
    let refused = refused_start(&data_dir, &[("GANTRY_SERVER_MASTER_KEY", old_base64.as_str())]);
    assert_refused(&refused, "GANTRY_SERVER_MASTER_KEY", &new.id());
    let server = ServerProcess::start_in(&data_dir, &listen);
    let gantry = Gantry::for_server_with_key(&server, &gantry.api_key);
    let _launcher = Launcher::connect(&pool, &[]);
    run_finishes(&gantry);
}

#[test]
fn clear_secrets_of_an_older_database_are_sealed_at_the_next_start() {
    let cluster = Cluster::start();
    let data_dir = cluster.server.data_dir.clone();
    let listen = listen_of(&cluster.server);
    let Cluster { gantry, server, .. } = cluster;
    drop(server);
    // Put the database back as a version before sealing left it: every secret in
    // clear, and no key file.
    let key = key_in(&data_dir);
    let sealed = stored_secrets(&data_dir);
    let clear: Vec<(String, Vec<u8>)> = sealed
        .iter()
        .map(|(name, value)| (name.clone(), key.open(name, value).unwrap().to_vec()))
        .collect();
    let database = data_dir.join("gantry.db");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = gantry_store::SqliteStore::open(&database).await.unwrap();
        let replacements: Vec<(&str, &[u8], &[u8])> = sealed
            .iter()
            .zip(&clear)
            .map(|((name, old), (_, new))| (name.as_str(), old.as_slice(), new.as_slice()))
            .collect();
        store.replace_secrets(&replacements).await.unwrap();
    });
    std::fs::remove_file(data_dir.join("master.key")).unwrap();
    std::fs::set_permissions(&database, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(contains(&database_bytes(&data_dir), b"PRIVATE KEY"), "the setup left no clear key");

    let server = ServerProcess::start_in(&data_dir, &listen);
    server.wait_for_stderr("generated the server's master key", Duration::from_secs(5));
    let gantry = Gantry::for_server_with_key(&server, &gantry.api_key);
    gantry.ok(&["pool", "list"]);
    drop(server);
    let key = key_in(&data_dir);
    assert_database_opens_nothing(&data_dir, &key);
    assert_eq!(mode(&data_dir.join("gantry.db")), 0o600);
    for ((name, value), (_, before)) in stored_secrets(&data_dir).iter().zip(&clear) {
        assert_eq!(key.open(name, value).unwrap().as_slice(), before.as_slice(), "{name} changed");
    }
}

#[test]
fn a_postgres_dump_after_a_run_holds_no_private_key_and_no_server_secret() {
    let Some(database) =
        tokio::runtime::Runtime::new().unwrap().block_on(gantry_test_postgres::fresh_database())
    else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let key_base64 = key.to_base64();
    let server = ServerProcess::start_with(
        &work.path().join("server"),
        "127.0.0.1:0",
        &[
            ("GANTRY_SERVER_DATABASE", database.as_str()),
            ("GANTRY_SERVER_MASTER_KEY", key_base64.as_str()),
        ],
    );
    assert!(!work.path().join("server/master.key").exists(), "a key was made beside the one set");
    let gantry = Gantry::for_server(&server);
    let pool_key = OpensslKey::generate(work.path(), "p", KeyKind::P256);
    let pool =
        PoolAccess { token: gantry.create_pool("p", &pool_key), key: base64_of(&pool_key.key_pem) };
    let _launcher = Launcher::connect(&pool, &[]);
    stack(&gantry, work.path(), "p");
    run_finishes(&gantry);
    drop(server);

    // Every table's rows, as pg_dump writes them (bytea as hex).
    let dump = Command::new("pg_dump")
        .args(["--data-only", "--inserts", "--no-owner", "--dbname", &database])
        .output()
        .unwrap();
    assert!(dump.status.success(), "pg_dump: {}", String::from_utf8_lossy(&dump.stderr));
    assert!(contains(&dump.stdout, b"INSERT INTO public.server_secrets"), "an empty dump");
    let url = database.clone();
    let secrets = tokio::runtime::Runtime::new().unwrap().block_on(async move {
        let store = gantry_store::PostgresStore::connect(&url).await.unwrap();
        store.list_secrets().await.unwrap()
    });
    assert_dump_opens_nothing(&dump.stdout, &secrets, &key);
}
