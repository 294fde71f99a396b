//! Run logs that are never dropped: a burst of output far over every request's limit
//! arrives whole through the worker, the launcher and the server; a log over the per-run
//! limit keeps its head and tail with the cut said between; one run whose archive fails
//! holds no other back; and an archived log takes no more appends.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gantry_domain::RunId;
use gantry_launcher::{AgentClient, ClientError, LauncherConfig};
use gantry_proto::agent::LogUpload;
use gantry_testkit::GitRepository;
use serde_json::Value;

use crate::harness::{Cluster, Gantry, Launcher, PoolAccess, bin, id};

/// Lines of the burst: `burst-line-0000000001` to `burst-line-0001000000`, 22 bytes
/// each with the newline, about 21 MiB.
const BURST_LINES: u64 = 1_000_000;
const BURST: &str = "seq -f 'burst-line-%010.0f' 1 1000000";

fn burst_line(n: u64) -> String {
    format!("burst-line-{n:010}")
}

/// The burst's line numbers in the log, in order; fragments of lines left out.
fn burst_numbers(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|line| line.strip_prefix("burst-line-"))
        .filter(|digits| digits.len() == 10)
        .filter_map(|digits| digits.parse().ok())
        .collect()
}

struct Setup {
    cluster: Cluster,
    pool: PoolAccess,
    _launcher: Launcher,
    _work: tempfile::TempDir,
}

/// A server with `settings`, a pool with one launcher, and the stack `logs` on it.
fn setup(settings: &[(&str, &str)]) -> Setup {
    let cluster = Cluster::start_with(settings);
    let work = tempfile::tempdir().unwrap();
    let pool = cluster.private_pool(work.path(), "p");
    let launcher = Launcher::of(&cluster, &pool, &[]);
    let repository = GitRepository::create(
        &work.path().join("repo"),
        &[("infra/main.tf", "terraform {\n  backend \"local\" {}\n}\n")],
    );
    cluster.gantry.create_stack("logs", &repository, "p", &work.path().join("state"), &[]);
    Setup { cluster, pool, _launcher: launcher, _work: work }
}

fn task(gantry: &Gantry, command: &str) -> Value {
    let run = gantry.json(&["run", "task", "logs", "--", command]);
    let run = gantry.wait_for_state_within(&run, &["FINISHED", "FAILED"], Duration::from_secs(600));
    assert_eq!(run["state"], "FINISHED", "{run}");
    run
}

/// The run's log as chunks, checked to be numbered from 0 without gaps or repeats but
/// for `cut` (the chunk numbers a cut line stands for).
fn chunks(gantry: &Gantry, run: &Value) -> Vec<(u64, String)> {
    let chunks: Vec<(u64, String)> = gantry
        .ok(&["run", "logs", id(run), "--output", "json"])
        .lines()
        .map(|line| {
            let chunk: Value = serde_json::from_str(line).unwrap();
            (chunk["seq"].as_u64().unwrap(), chunk["text"].as_str().unwrap().to_owned())
        })
        .collect();
    assert!(chunks.windows(2).all(|pair| pair[0].0 < pair[1].0), "chunks in order, once");
    chunks
}

fn text(chunks: &[(u64, String)]) -> String {
    chunks.iter().map(|(_, text)| text.as_str()).collect()
}

/// Where the server keeps runs' blobs.
fn run_blobs(cluster: &Cluster, run: &Value) -> PathBuf {
    cluster.server.data_dir.join("blobs/runs").join(id(run).to_ascii_lowercase())
}

/// Whether the run's log was moved to the blob store.
fn archived(cluster: &Cluster, run: &Value) -> bool {
    std::fs::read_dir(run_blobs(cluster, run)).is_ok_and(|entries| {
        entries.flatten().any(|entry| entry.file_name().to_string_lossy().starts_with("log-"))
    })
}

fn wait_until_archived(cluster: &Cluster, run: &Value) {
    cluster.gantry.wait_for(Duration::from_secs(120), || archived(cluster, run).then_some(()));
}

#[test]
fn a_20_mib_burst_of_output_arrives_whole_in_order_and_once() {
    let setup = setup(&[("GANTRY_SERVER_LOG_ARCHIVE_AFTER", "1s")]);
    let gantry = &setup.cluster.gantry;
    let run = task(gantry, BURST);
    let live = chunks(gantry, &run);
    let seqs: Vec<u64> = live.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>(), "no gaps");
    let log = text(&live);
    assert!(log.len() > 20 << 20, "{} bytes only", log.len());
    assert_eq!(burst_numbers(&log), (1..=BURST_LINES).collect::<Vec<_>>(), "every line, once");
    assert!(!log.contains("were cut here"), "nothing is cut under the limit");

    // Archived as a stream, it reads back the same from the blob store.
    wait_until_archived(&setup.cluster, &run);
    assert_eq!(chunks(gantry, &run), live, "the archive holds the whole log");
}

#[test]
fn a_log_over_the_run_limit_keeps_its_head_and_tail_and_says_what_was_cut() {
    let setup = setup(&[
        ("GANTRY_SERVER_MAX_RUN_LOG_SIZE", "1MiB"),
        ("GANTRY_SERVER_LOG_ARCHIVE_AFTER", "1s"),
    ]);
    let gantry = &setup.cluster.gantry;
    let run = task(gantry, BURST);
    let live = chunks(gantry, &run);
    let log = text(&live);
    assert!(log.len() < (1 << 20) + 64 * 1024 * 2, "{} bytes kept", log.len());

    let cut_lines: Vec<&str> = log.lines().filter(|line| line.contains("were cut here")).collect();
    assert_eq!(cut_lines.len(), 1, "one cut line");
    let (head, tail) = log.split_once(cut_lines[0]).unwrap();
    let cut_bytes: usize = cut_lines[0]
        .strip_prefix("[gantry] ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|bytes| bytes.parse().ok())
        .unwrap_or_else(|| panic!("the cut line says how much: {}", cut_lines[0]));
    assert!(cut_bytes > 19 << 20, "about 20 MiB cut: {cut_bytes}");

    let head_numbers = burst_numbers(head);
    let tail_numbers = burst_numbers(tail);
    assert!(!head_numbers.is_empty() && !tail_numbers.is_empty());
    assert_eq!(head_numbers, (1..=head_numbers.len() as u64).collect::<Vec<_>>(), "head whole");
    let first_tail = tail_numbers[0];
    assert_eq!(tail_numbers, (first_tail..=BURST_LINES).collect::<Vec<_>>(), "tail whole");
    assert!(tail.contains(&burst_line(BURST_LINES)), "the last line is kept");
    let head_bytes = head.len();
    assert!(head_bytes <= 512 * 1024 + 64 * 1024, "the head is half the limit: {head_bytes}");

    wait_until_archived(&setup.cluster, &run);
    assert_eq!(text(&chunks(gantry, &run)), log, "the archive keeps the same head, cut and tail");
}

/// A client of the pool's agent plane, as a launcher of the pool is.
fn agent_client(pool: &PoolAccess, work: &Path) -> (tokio::runtime::Runtime, AgentClient) {
    gantry_testkit::install_crypto_provider();
    let env = gantry_domain::options::env_of(&[
        ("GANTRY_TOKEN", &pool.token),
        ("GANTRY_POOL_PRIVATE_KEY", &pool.key),
        ("GANTRY_WORKER_BINARY", bin("gantry-worker").to_str().unwrap()),
        ("GANTRY_LAUNCHER_WORK_DIR", work.to_str().unwrap()),
    ]);
    let config = LauncherConfig::from_env(&env).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let client = AgentClient::new(&config).unwrap();
    (runtime, client)
}

#[test]
fn an_archive_that_fails_holds_no_other_back_and_an_archived_log_takes_no_appends() {
    let setup = setup(&[("GANTRY_SERVER_LOG_ARCHIVE_AFTER", "1s")]);
    let (cluster, gantry) = (&setup.cluster, &setup.cluster.gantry);
    let blocked = gantry.json(&["run", "task", "logs", "--", "echo blocked-log; sleep 1"]);
    // A file where the run's blob directory goes: writing its archive fails until the
    // file is removed, whoever the server runs as.
    std::fs::create_dir_all(run_blobs(cluster, &blocked).parent().unwrap()).unwrap();
    std::fs::write(run_blobs(cluster, &blocked), "not a directory").unwrap();
    let blocked = gantry.wait_for_state(&blocked, &["FINISHED"]);
    let other = task(gantry, "echo other-log");

    // The blocked run ended first, so every pass meets it first; the other is archived.
    wait_until_archived(cluster, &other);
    assert!(!archived(cluster, &blocked));
    assert!(gantry.log(&blocked).contains("blocked-log"), "read from the database meanwhile");
    assert!(gantry.log(&other).contains("other-log"), "read from the blob store");

    std::fs::remove_file(run_blobs(cluster, &blocked)).unwrap();
    wait_until_archived(cluster, &blocked);
    assert!(gantry.log(&blocked).contains("blocked-log"), "archived on a later try");

    // The server refuses appends to the archived logs, saying so (410, log_sealed).
    let work = tempfile::tempdir().unwrap();
    let (runtime, client) = agent_client(&setup.pool, work.path());
    for run in [&blocked, &other] {
        let run_id: RunId = id(run).parse().unwrap();
        let late = LogUpload { seq: 0, text: "appended after the end\n".to_owned() };
        let refused = runtime.block_on(client.upload_logs(run_id, vec![late])).unwrap_err();
        assert!(
            matches!(&refused, ClientError::Rejected { status: 410, code, .. } if code == "log_sealed"),
            "{refused}"
        );
        assert!(refused.to_string().contains("sealed"), "{refused}");
        assert!(!gantry.log(run).contains("appended after the end"));
    }
}
