//! Unpacking treated as hostile, tested with archives crafted header by header, and packing
//! tested by round trips of real trees on disk — one of them a real Terraform workspace
//! between `terraform plan` and `terraform apply`, one of them random (property test).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use flate2::Compression;
use flate2::write::GzEncoder;
use proptest::prelude::*;
use tar::{EntryType, Header};
use tempfile::TempDir;

use super::{ArchiveError, ArchiveLimits, ArchiveStats, pack, unpack};

// Beside these tests, to craft its archives with the same helpers.
mod fuzz_tests;

// ---------------------------------------------------------------------------------------
// Crafted archives

/// One entry of a crafted archive. Names are written as raw header bytes, so that nothing
/// in the tar crate's builder can refuse or clean them.
struct Crafted {
    kind: EntryType,
    path: Vec<u8>,
    link: Vec<u8>,
    mode: u32,
    data: Vec<u8>,
}

fn file(path: &str, data: &[u8]) -> Crafted {
    Crafted {
        kind: EntryType::Regular,
        path: path.into(),
        link: Vec::new(),
        mode: 0o644,
        data: data.to_vec(),
    }
}

fn dir(path: &str) -> Crafted {
    Crafted { kind: EntryType::Directory, mode: 0o755, ..file(path, b"") }
}

fn link(path: &str, target: &str) -> Crafted {
    Crafted { kind: EntryType::Symlink, link: target.into(), mode: 0o777, ..file(path, b"") }
}

fn special(kind: EntryType, path: &str) -> Crafted {
    Crafted { kind, ..file(path, b"") }
}

impl Crafted {
    fn mode(self, mode: u32) -> Self {
        Self { mode, ..self }
    }
}

/// A GNU long-name record for the entry that follows it.
fn gnu_long_name(name: &[u8]) -> Crafted {
    let mut data = name.to_vec();
    data.push(0);
    Crafted { kind: EntryType::GNULongName, path: b"././@LongLink".to_vec(), data, ..file("", b"") }
}

/// A GNU long-link record for the entry that follows it.
fn gnu_long_link(target: &[u8]) -> Crafted {
    Crafted { kind: EntryType::GNULongLink, ..gnu_long_name(target) }
}

/// A pax extended header for the entry that follows it.
fn pax(records: &[(&str, &[u8])]) -> Crafted {
    let mut data = Vec::new();
    for (key, value) in records {
        // "<length> <key>=<value>\n", the length counting its own digits.
        let rest = key.len() + value.len() + 3;
        let mut length = rest + 1;
        while length != rest + length.to_string().len() {
            length = rest + length.to_string().len();
        }
        data.extend_from_slice(format!("{length} {key}=").as_bytes());
        data.extend_from_slice(value);
        data.push(b'\n');
    }
    Crafted { kind: EntryType::XHeader, path: b"PaxHeader".to_vec(), data, ..file("", b"") }
}

fn set_raw(field: &mut [u8], bytes: &[u8]) {
    let length = bytes.len().min(field.len());
    field.fill(0);
    field[..length].copy_from_slice(&bytes[..length]);
}

fn raw_header(entry: &Crafted) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(entry.kind);
    header.set_mode(entry.mode);
    header.set_size(entry.data.len() as u64);
    header.set_mtime(1_700_000_000);
    header.set_uid(0);
    header.set_gid(0);
    set_raw(&mut header.as_old_mut().name, &entry.path);
    set_raw(&mut header.as_old_mut().linkname, &entry.link);
    header.set_cksum();
    header
}

fn tar_bytes(entries: &[Crafted]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        builder.append(&raw_header(entry), entry.data.as_slice()).unwrap();
    }
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn crafted(entries: &[Crafted]) -> Vec<u8> {
    gzip(&tar_bytes(entries))
}

/// A temporary directory holding the destination `workspace` (not created) and a
/// directory `outside` with one file, to see that nothing escapes.
struct Scene {
    root: TempDir,
}

impl Scene {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("outside")).unwrap();
        fs::write(root.path().join("outside/sentinel"), "untouched").unwrap();
        Self { root }
    }

    fn destination(&self) -> PathBuf {
        self.root.path().join("workspace")
    }

    fn outside(&self) -> PathBuf {
        self.root.path().join("outside")
    }

    fn unpack(&self, archive: &[u8], limits: &ArchiveLimits) -> Result<ArchiveStats, ArchiveError> {
        unpack(archive, &self.destination(), limits)
    }

    /// Nothing but `outside/sentinel` exists: the destination was removed and nothing
    /// was written next to it or into `outside`.
    fn assert_untouched(&self) {
        assert_eq!(listing(self.root.path()), ["outside", "outside/sentinel"]);
        assert_eq!(fs::read_to_string(self.outside().join("sentinel")).unwrap(), "untouched");
    }
}

/// Every path under `root`, relative, sorted; links are not followed.
fn listing(root: &Path) -> Vec<String> {
    snapshot(root).into_keys().map(|path| path.to_string_lossy().into_owned()).collect()
}

/// Unpacks a crafted archive and checks it is refused with exactly `expected`, leaving
/// nothing behind.
fn check_refused(entries: &[Crafted], expected: &str) {
    check_refused_bytes(&crafted(entries), &ArchiveLimits::default(), expected);
}

fn check_refused_bytes(archive: &[u8], limits: &ArchiveLimits, expected: &str) {
    let scene = Scene::new();
    let error = scene.unpack(archive, limits).unwrap_err();
    assert_eq!(error.to_string(), expected);
    scene.assert_untouched();
}

// ---------------------------------------------------------------------------------------
// Snapshots of trees on disk

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    File { mode: u32, contents: Vec<u8> },
    Dir { mode: u32 },
    Link { target: PathBuf },
}

/// Every node under `root` by its relative path; a loop, since a tree may be as deep as
/// paths go.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut nodes = BTreeMap::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(directory) = pending.pop() {
        for child in fs::read_dir(root.join(&directory)).unwrap() {
            let relative = directory.join(child.unwrap().file_name());
            let path = root.join(&relative);
            let metadata = fs::symlink_metadata(&path).unwrap();
            let mode = metadata.mode() & 0o7777;
            let node = if metadata.file_type().is_symlink() {
                Node::Link { target: fs::read_link(&path).unwrap() }
            } else if metadata.is_dir() {
                pending.push(relative.clone());
                Node::Dir { mode }
            } else {
                Node::File { mode, contents: fs::read(&path).unwrap() }
            };
            nodes.insert(relative, node);
        }
    }
    nodes
}

fn write_file(path: &Path, contents: &[u8], mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Deterministic bytes that do not compress to nothing.
fn noise(length: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn packed(dir: &Path) -> Vec<u8> {
    let mut archive = Vec::new();
    pack(dir, &mut archive).unwrap();
    archive
}

// ---------------------------------------------------------------------------------------
// Round trips

#[test]
fn a_tree_round_trips_with_modes_links_long_names_and_times() {
    let scene = Scene::new();
    let source = scene.root.path().join("source");
    write_file(&source.join("main.tf"), b"# config\n", 0o644);
    write_file(&source.join("bin/tool"), b"#!/bin/sh\necho tool\n", 0o755);
    write_file(&source.join("secret.tfvars"), b"token = \"x\"\n", 0o600);
    write_file(&source.join("read-only"), b"r", 0o444);
    write_file(&source.join("empty"), b"", 0o644);
    write_file(&source.join("setuid"), b"s", 0o4755);
    write_file(&source.join(".terraform/providers/big"), &noise(1 << 20, 7), 0o755);
    let long_dir = format!("deep/{}", "d".repeat(120));
    write_file(&source.join(&long_dir).join("file-with-a-long-path.txt"), b"long", 0o640);
    let odd_name = OsStr::from_bytes(b"caf\xe9 \\ name");
    write_file(&source.join(odd_name), b"not utf-8", 0o644);
    fs::create_dir_all(source.join("empty-dir")).unwrap();
    fs::create_dir_all(source.join("sticky")).unwrap();
    fs::set_permissions(source.join("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    symlink("bin", source.join("current")).unwrap();
    symlink("bin/tool", source.join("tool")).unwrap();
    symlink("missing/file", source.join("dangling")).unwrap();
    symlink("..", source.join(&long_dir).join("up")).unwrap();
    let long_target = format!("{}/file-with-a-long-path.txt", "d".repeat(120));
    symlink(&long_target, source.join("deep/long-link")).unwrap();
    let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    File::options().write(true).open(source.join("main.tf")).unwrap().set_modified(time).unwrap();

    let archive = packed(&source);
    let destination = scene.destination();
    let unpacked = unpack(archive.as_slice(), &destination, &ArchiveLimits::default()).unwrap();

    let mut expected = snapshot(&source);
    // Setuid, setgid and sticky bits are not carried.
    expected.insert("setuid".into(), Node::File { mode: 0o755, contents: b"s".to_vec() });
    expected.insert("sticky".into(), Node::Dir { mode: 0o777 });
    assert_eq!(snapshot(&destination), expected);
    let files = expected.values().filter(|node| matches!(node, Node::File { .. }));
    let bytes = files.map(|node| match node {
        Node::File { contents, .. } => contents.len() as u64,
        _ => 0,
    });
    assert_eq!(unpacked, ArchiveStats { entries: expected.len() as u64, bytes: bytes.sum() });
    assert_eq!(fs::metadata(destination.join("main.tf")).unwrap().modified().unwrap(), time);
    assert_eq!(fs::read(destination.join("current/tool")).unwrap(), b"#!/bin/sh\necho tool\n");
    assert_eq!(fs::read(destination.join("deep/long-link")).unwrap(), b"long");
}

#[test]
fn packing_reports_what_it_packed_in_sorted_order() {
    let scene = Scene::new();
    let source = scene.root.path().join("source");
    write_file(&source.join("b/2"), b"22", 0o644);
    write_file(&source.join("b/1"), b"1", 0o644);
    write_file(&source.join("a"), b"333", 0o644);
    symlink("a", source.join("c")).unwrap();

    let mut archive = Vec::new();
    let stats = pack(&source, &mut archive).unwrap();

    assert_eq!(stats, ArchiveStats { entries: 5, bytes: 6 });
    let mut listed = tar::Archive::new(flate2::read::GzDecoder::new(archive.as_slice()));
    let names: Vec<(String, EntryType, u64, u64)> = listed
        .entries()
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let header = entry.header();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            (name, header.entry_type(), header.uid().unwrap(), header.gid().unwrap())
        })
        .collect();
    let expected = [
        ("a", EntryType::Regular),
        ("b", EntryType::Directory),
        ("b/1", EntryType::Regular),
        ("b/2", EntryType::Regular),
        ("c", EntryType::Symlink),
    ];
    let expected: Vec<_> =
        expected.iter().map(|(name, kind)| (name.to_string(), *kind, 0, 0)).collect();
    assert_eq!(names, expected);
    assert_eq!(packed(&source), archive, "the same tree packs to the same bytes");
}

#[test]
fn packing_refuses_sockets_and_fifos() {
    let scene = Scene::new();
    let source = scene.root.path().join("source");
    write_file(&source.join("main.tf"), b"", 0o644);
    nix::unistd::mkfifo(&source.join("pipe"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let error = pack(&source, io::sink()).unwrap_err();
    assert_eq!(
        error.to_string(),
        r#"cannot pack "pipe": it is a fifo; a workspace may hold only regular files, directories and symbolic links"#
    );

    fs::remove_file(source.join("pipe")).unwrap();
    fs::create_dir(source.join("sub")).unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(source.join("sub/run.sock")).unwrap();
    let error = pack(&source, io::sink()).unwrap_err();
    assert_eq!(
        error.to_string(),
        r#"cannot pack "sub/run.sock": it is a socket; a workspace may hold only regular files, directories and symbolic links"#
    );
}

#[test]
fn packing_refuses_links_that_unpacking_would_refuse() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("cache", "/root/.terraform.d/plugin-cache")],
            r#"cannot pack "cache": its symbolic link target "/root/.terraform.d/plugin-cache" is absolute, which unpacking refuses (a workspace must be self-contained)"#,
        ),
        (
            &[("d/up", "../../x")],
            r#"cannot pack "d/up": its symbolic link target "../../x" is outside the workspace, which unpacking refuses (a workspace must be self-contained)"#,
        ),
        (
            &[("a", "."), ("b", "a/..")],
            r#"cannot pack "b": its symbolic link target "a/.." is outside the workspace, which unpacking refuses (a workspace must be self-contained)"#,
        ),
    ];
    for (links, expected) in cases {
        let scene = Scene::new();
        let source = scene.root.path().join("source");
        fs::create_dir_all(source.join("d")).unwrap();
        for (path, target) in *links {
            symlink(target, source.join(path)).unwrap();
        }
        let error = pack(&source, io::sink()).unwrap_err();
        assert_eq!(error.to_string(), *expected);
    }
}

#[test]
fn a_missing_workspace_cannot_be_packed() {
    let scene = Scene::new();
    let error = pack(&scene.root.path().join("missing"), io::sink()).unwrap_err();
    assert!(error.to_string().starts_with("cannot pack the workspace: cannot open "), "{error}");
}

/// Runs terraform offline and returns its standard output.
fn terraform(directory: &Path, args: &[&str]) -> String {
    let output = Command::new("terraform")
        .args(args)
        .current_dir(directory)
        .env("TF_CLI_CONFIG_FILE", "/dev/null")
        .env("TF_IN_AUTOMATION", "1")
        .env("CHECKPOINT_DISABLE", "1")
        .output()
        .expect("terraform must be on PATH for this test");
    assert!(
        output.status.success(),
        "terraform {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn a_terraform_plan_applies_from_the_unpacked_workspace() {
    let scene = Scene::new();
    let planned = scene.root.path().join("planned");
    write_file(
        &planned.join("main.tf"),
        br#"
module "greeting" {
  source = "./modules/current"
}

resource "terraform_data" "top" {
  input = module.greeting.message
}

output "message" {
  value = terraform_data.top.output
}
"#,
        0o644,
    );
    write_file(
        &planned.join("modules/greeting/main.tf"),
        br#"
resource "terraform_data" "inner" {
  input = "hello from an unpacked workspace"
}

output "message" {
  value = terraform_data.inner.output
}
"#,
        0o644,
    );
    symlink("greeting", planned.join("modules/current")).unwrap();
    write_file(&planned.join("scripts/hook.sh"), b"#!/bin/sh\necho hooked\n", 0o755);
    terraform(&planned, &["init", "-input=false", "-no-color"]);
    terraform(&planned, &["plan", "-input=false", "-no-color", "-out=plan.tfplan"]);
    assert!(planned.join(".terraform/modules/modules.json").is_file());

    // Through a file, as the launcher streams it through encryption and upload.
    let archive = scene.root.path().join("workspace.tar.gz");
    let packed = pack(&planned, File::create(&archive).unwrap()).unwrap();
    let applying = scene.root.path().join("another-launcher/runs/workspace");
    let unpacked =
        unpack(File::open(&archive).unwrap(), &applying, &ArchiveLimits::default()).unwrap();

    assert_eq!(packed, unpacked);
    let before = snapshot(&planned);
    assert!(before.contains_key(Path::new("plan.tfplan")));
    assert_eq!(snapshot(&applying), before);
    assert_eq!(fs::read_link(applying.join("modules/current")).unwrap(), Path::new("greeting"));
    let hook = applying.join("scripts/hook.sh");
    assert_eq!(fs::metadata(&hook).unwrap().mode() & 0o777, 0o755);
    let hooked = Command::new("sh").arg(&hook).output().unwrap();
    assert_eq!(hooked.stdout, b"hooked\n");

    // Nothing in the copy may lead back to the original.
    fs::remove_dir_all(&planned).unwrap();
    terraform(&applying, &["apply", "-input=false", "-no-color", "plan.tfplan"]);
    let message = terraform(&applying, &["output", "-raw", "message"]);
    assert_eq!(message, "hello from an unpacked workspace");
}

#[derive(Debug, Clone)]
enum Planted {
    File { contents: Vec<u8>, mode: u32 },
    Dir { mode: u32 },
}

fn random_tree() -> impl Strategy<Value = Vec<(Vec<String>, Planted)>> {
    // Names never `.` or `..`: they start with a letter.
    let path = prop::collection::vec("[a-c][a-c.]{0,2}", 1..4);
    let planted = prop_oneof![
        3 => (
            prop::collection::vec(any::<u8>(), 0..3000),
            prop::sample::select(vec![0o644, 0o755, 0o600, 0o444, 0o700, 0o640]),
        )
            .prop_map(|(contents, mode)| Planted::File { contents, mode }),
        1 => prop::sample::select(vec![0o755, 0o700, 0o750, 0o777])
            .prop_map(|mode| Planted::Dir { mode }),
    ];
    prop::collection::vec((path, planted), 0..24)
}

/// Plants the generated entries that fit (not under a file, not twice), parents first.
fn plant(root: &Path, entries: Vec<(Vec<String>, Planted)>) -> BTreeMap<PathBuf, Node> {
    let mut tree: BTreeMap<PathBuf, Planted> = BTreeMap::new();
    for (components, planted) in entries {
        let path: PathBuf = components.iter().collect();
        let blocked = path.ancestors().any(|ancestor| {
            ancestor == path && tree.contains_key(ancestor)
                || matches!(tree.get(ancestor), Some(Planted::File { .. }))
        });
        if blocked {
            continue;
        }
        for ancestor in path.ancestors().skip(1).filter(|a| !a.as_os_str().is_empty()) {
            tree.entry(ancestor.to_path_buf()).or_insert(Planted::Dir { mode: 0o755 });
        }
        tree.insert(path, planted);
    }
    fs::create_dir(root).unwrap();
    let mut expected = BTreeMap::new();
    for (path, planted) in tree {
        let destination = root.join(&path);
        let node = match planted {
            Planted::File { contents, mode } => {
                fs::write(&destination, &contents).unwrap();
                Node::File { mode, contents }
            }
            Planted::Dir { mode } => {
                fs::create_dir(&destination).unwrap();
                Node::Dir { mode }
            }
        };
        let mode = match node {
            Node::File { mode, .. } | Node::Dir { mode } => mode,
            Node::Link { .. } => unreachable!(),
        };
        fs::set_permissions(&destination, fs::Permissions::from_mode(mode)).unwrap();
        expected.insert(path, node);
    }
    expected
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn random_trees_round_trip_byte_for_byte(entries in random_tree()) {
        let scene = Scene::new();
        let source = scene.root.path().join("source");
        let expected = plant(&source, entries);
        let mut archive = Vec::new();
        let packed = pack(&source, &mut archive).unwrap();
        let destination = scene.destination();
        let unpacked = unpack(archive.as_slice(), &destination, &ArchiveLimits::default()).unwrap();
        prop_assert_eq!(packed, unpacked);
        prop_assert_eq!(packed.entries, expected.len() as u64);
        prop_assert_eq!(snapshot(&destination), expected);
    }
}

// ---------------------------------------------------------------------------------------
// What unpacking accepts

#[test]
fn crafted_archives_with_implicit_parents_long_names_and_pax_paths_unpack() {
    let long_path = format!("a/{}/file", "p".repeat(200));
    let long_name = format!("b/{}", "n".repeat(150));
    let archive = crafted(&[
        file("x/y/z", b"implicit parents"),
        link("x/l", "y/z"),
        pax(&[("path", long_path.as_bytes()), ("mtime", b"1700000000.5")]),
        file("truncated-by-pax", b"pax"),
        gnu_long_name(long_name.as_bytes()),
        file("truncated-by-gnu", b"gnu"),
        Crafted { kind: EntryType::XGlobalHeader, ..pax(&[("comment", b"global")]) },
        dir("x").mode(0o700),
        dir("./x/y/"),
    ]);
    let scene = Scene::new();
    let stats = scene.unpack(&archive, &ArchiveLimits::default()).unwrap();

    let destination = scene.destination();
    assert_eq!(fs::read(destination.join("x/l")).unwrap(), b"implicit parents");
    assert_eq!(fs::read(destination.join(&long_path)).unwrap(), b"pax");
    assert_eq!(fs::read(destination.join(&long_name)).unwrap(), b"gnu");
    assert_eq!(fs::metadata(destination.join("x")).unwrap().mode() & 0o777, 0o700);
    // Files, directories and links listed; parents created on the way are not counted.
    assert_eq!(stats, ArchiveStats { entries: 6, bytes: 22 });
}

#[test]
fn modes_are_masked_and_owners_ignored() {
    let mut owned = raw_header(&file("owned", b"o"));
    owned.set_uid(4242);
    owned.set_gid(4242);
    owned.set_cksum();
    let mut tar = tar_bytes(&[
        file("setuid", b"s").mode(0o4755),
        file("setgid", b"g").mode(0o2640),
        dir("sticky").mode(0o1777),
        dir("locked").mode(0o555),
        file("locked/inside", b"written before the lock").mode(0o400),
    ]);
    // Append `owned` before the end-of-archive blocks.
    let end = tar.len() - 1024;
    let mut tail = owned.as_bytes().to_vec();
    tail.extend_from_slice(b"o");
    tail.resize(1024, 0);
    tar.splice(end..end, tail);

    let scene = Scene::new();
    scene.unpack(&gzip(&tar), &ArchiveLimits::default()).unwrap();

    let destination = scene.destination();
    let mode = |path: &str| fs::symlink_metadata(destination.join(path)).unwrap().mode() & 0o7777;
    assert_eq!(mode("setuid"), 0o755);
    assert_eq!(mode("setgid"), 0o640);
    assert_eq!(mode("sticky"), 0o777);
    assert_eq!(mode("locked"), 0o555);
    assert_eq!(mode("locked/inside"), 0o400);
    assert_eq!(fs::read(destination.join("locked/inside")).unwrap(), b"written before the lock");
    let owner = fs::metadata(destination.join("owned")).unwrap();
    assert_eq!(owner.uid(), nix::unistd::geteuid().as_raw());
    assert_eq!(owner.gid(), nix::unistd::getegid().as_raw());
    // Let the temporary directory be removed by a user other than root.
    fs::set_permissions(destination.join("locked"), fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn an_existing_destination_is_refused_and_left_alone() {
    let scene = Scene::new();
    let error =
        unpack(crafted(&[file("a", b"a")]).as_slice(), &scene.outside(), &Default::default())
            .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("cannot unpack into {}: it already exists", scene.outside().display())
    );
    scene.assert_untouched();
}

// ---------------------------------------------------------------------------------------
// What unpacking refuses

#[test]
fn paths_that_leave_the_workspace_are_refused() {
    for path in ["../x", "a/../../x", "a/../x", "../outside/sentinel"] {
        check_refused(
            &[dir("a"), file(path, b"escaped")],
            &format!("refused archive entry {path:?}: its path leaves the workspace"),
        );
    }
    check_refused(&[dir("../x")], r#"refused archive entry "../x": its path leaves the workspace"#);
    check_refused(
        &[link("../l", "x")],
        r#"refused archive entry "../l": its path leaves the workspace"#,
    );
}

#[test]
fn absolute_paths_are_refused() {
    let scene = Scene::new();
    let target = scene.outside().join("x");
    let target = target.to_str().unwrap();
    check_refused(
        &[file(target, b"escaped")],
        &format!("refused archive entry {target:?}: its path is absolute"),
    );
    check_refused(
        &[file("/tmp/x", b"escaped")],
        r#"refused archive entry "/tmp/x": its path is absolute"#,
    );
    assert!(!scene.outside().join("x").exists());
}

#[test]
fn windows_prefixes_empty_and_overlong_names_are_refused() {
    let long = "a/".repeat(2500);
    check_refused(
        &[gnu_long_name(long.as_bytes()), file("innocent", b"")],
        &format!(
            r#"refused archive entry "{}...": its path is longer than 4096 bytes"#,
            &long[..512]
        ),
    );
    let target = "t/".repeat(2048);
    check_refused(
        &[gnu_long_link(target.as_bytes()), link("l", "x")],
        &format!(
            r#"refused archive entry "l": its symbolic link target "{}..." is empty, longer than 4095 bytes or contains a NUL byte"#,
            &target[..512]
        ),
    );
    let windows = "its path starts with a Windows drive or UNC prefix";
    check_refused(&[file("C:\\x", b"")], &format!(r#"refused archive entry "C:\\x": {windows}"#));
    check_refused(
        &[file("\\\\server\\share\\x", b"")],
        &format!(r#"refused archive entry "\\\\server\\share\\x": {windows}"#),
    );
    check_refused(&[file("", b"")], r#"refused archive entry "": its name is empty"#);
    check_refused(&[dir("./")], r#"refused archive entry "./": its name is empty"#);
}

#[test]
fn traversal_hidden_in_long_names_and_pax_records_is_refused() {
    let long = format!("{}/../../../x", "a/".repeat(60));
    check_refused(
        &[gnu_long_name(long.as_bytes()), file("innocent", b"")],
        &format!("refused archive entry {long:?}: its path leaves the workspace"),
    );
    check_refused(
        &[pax(&[("path", b"../evil")]), file("innocent", b"")],
        r#"refused archive entry "../evil": its path leaves the workspace"#,
    );
    check_refused(
        &[pax(&[("linkpath", b"/etc")]), link("innocent", "target")],
        r#"refused archive entry "innocent": its symbolic link target "/etc" is absolute"#,
    );
}

#[test]
fn links_leading_outside_are_refused() {
    check_refused(
        &[link("l", "../../x")],
        r#"refused archive entry "l": its symbolic link target "../../x" leads outside the workspace"#,
    );
    check_refused(
        &[dir("d"), link("d/l", "../../outside/sentinel")],
        r#"refused archive entry "d/l": its symbolic link target "../../outside/sentinel" leads outside the workspace"#,
    );
    check_refused(
        &[link("l", "/etc")],
        r#"refused archive entry "l": its symbolic link target "/etc" is absolute"#,
    );
    // Each one alone stays inside; followed through `a`, `b` leaves.
    check_refused(
        &[link("b", "a/.."), link("a", ".")],
        r#"refused archive entry "b": its symbolic link target "a/.." leads outside the workspace"#,
    );
    check_refused(
        &[link("a", "b"), link("b", "a")],
        r#"refused archive entry "a": its symbolic link target "b" goes through more than 40 links or a path longer than 4096 bytes"#,
    );
    check_refused(
        &[link("l", "")],
        r#"refused archive entry "l": its symbolic link target "" is empty, longer than 4095 bytes or contains a NUL byte"#,
    );
}

#[test]
fn nothing_is_written_through_a_symbolic_link() {
    let scene = Scene::new();
    let outside = scene.outside();
    let outside = outside.to_str().unwrap();
    // The link is refused first, so the file after it is never reached.
    check_refused(
        &[link("a", outside), file("a/file", b"escaped")],
        &format!(r#"refused archive entry "a": its symbolic link target {outside:?} is absolute"#),
    );
    assert!(!scene.outside().join("file").exists());

    check_refused(
        &[dir("sub"), link("a", "sub"), file("a/file", b"through")],
        r#"refused archive entry "a/file": it would be written through the symbolic link "a""#,
    );
    check_refused(
        &[link("a", "."), dir("a/d")],
        r#"refused archive entry "a/d": it would be written through the symbolic link "a""#,
    );
    check_refused(
        &[link("a", "sub"), link("a/l", "x")],
        r#"refused archive entry "a/l": it would be written through the symbolic link "a""#,
    );
    // Declared in the other order, the link finds the path taken.
    check_refused(
        &[file("a/file", b"first"), link("a", "sub")],
        r#"refused archive entry "a": another entry already uses this path"#,
    );
    check_refused(
        &[link("a/l", "x"), link("a", ".")],
        r#"refused archive entry "a/l": it would be written through the symbolic link "a""#,
    );
}

#[test]
fn devices_fifos_hard_links_and_other_types_are_refused() {
    let only = "only regular files, directories and symbolic links are unpacked";
    let cases = [
        (special(EntryType::Char, "dev/null"), "character device"),
        (special(EntryType::Block, "dev/sda"), "block device"),
        (special(EntryType::Fifo, "pipe"), "fifo"),
        (special(EntryType::Continuous, "contiguous"), "contiguous file"),
        (special(EntryType::new(b'Z'), "odd"), "entry of unknown type 'Z'"),
    ];
    for (entry, kind) in cases {
        let path = String::from_utf8(entry.path.clone()).unwrap();
        check_refused(&[entry], &format!("refused archive entry {path:?}: it is a {kind}; {only}"));
    }
    let hard_link = Crafted { link: b"/etc/passwd".to_vec(), ..special(EntryType::Link, "passwd") };
    check_refused(
        &[file("f", b"f"), hard_link],
        &format!(r#"refused archive entry "passwd": it is a hard link; {only}"#),
    );
}

#[test]
fn paths_used_twice_are_refused() {
    let taken = |path: &str| {
        format!("refused archive entry {path:?}: another entry already uses this path")
    };
    check_refused(&[file("x", b"1"), file("x", b"2")], &taken("x"));
    check_refused(&[dir("x"), file("x", b"2")], &taken("x"));
    check_refused(&[file("x", b"1"), dir("x")], &taken("x"));
    check_refused(&[link("x", "y"), file("x", b"2")], &taken("x"));
    check_refused(&[file("x", b"1"), link("x", "y")], &taken("x"));
    check_refused(&[link("x", "y"), link("x", "z")], &taken("x"));
    check_refused(
        &[file("x", b"1"), file("x/y", b"2")],
        r#"refused archive entry "x/y": its parent "x" is not a directory"#,
    );
}

/// A tar stream made on the fly in another thread, through a pipe: its content is never
/// held in memory, on either side.
fn streamed(
    write: impl FnOnce(&mut tar::Builder<GzEncoder<io::PipeWriter>>) -> io::Result<()> + Send + 'static,
) -> (io::PipeReader, std::thread::JoinHandle<io::Result<()>>) {
    let (reader, writer) = io::pipe().unwrap();
    let producer = std::thread::spawn(move || {
        let mut builder = tar::Builder::new(GzEncoder::new(writer, Compression::fast()));
        write(&mut builder)?;
        builder.into_inner()?.finish()?;
        Ok(())
    });
    (reader, producer)
}

#[test]
fn a_huge_entry_stops_at_the_size_limit() {
    const CLAIMED: u64 = 64 << 30;
    let (reader, producer) = streamed(|builder| {
        let mut header = raw_header(&file("big.bin", b""));
        header.set_size(CLAIMED);
        header.set_cksum();
        builder.append(&header, io::repeat(0).take(CLAIMED))
    });
    let scene = Scene::new();
    let limits =
        ArchiveLimits { max_total_bytes: 4 << 20, max_entries: 10, ..ArchiveLimits::default() };
    let error = unpack(reader, &scene.destination(), &limits).unwrap_err();
    assert_eq!(
        error.to_string(),
        r#"refused archive entry "big.bin": the workspace's files exceed the limit of 4194304 bytes (GANTRY_LAUNCHER_WORKSPACE_MAX_SIZE)"#
    );
    scene.assert_untouched();
    // The producer stops when unpacking drops its end of the pipe.
    assert!(producer.join().unwrap().is_err());
}

#[test]
fn the_size_limit_counts_the_bytes_of_all_files() {
    let files: Vec<Crafted> = (0..11).map(|i| file(&format!("f{i:02}"), &[b'x'; 1000])).collect();
    let limits =
        ArchiveLimits { max_total_bytes: 10_000, max_entries: 100, ..ArchiveLimits::default() };
    check_refused_bytes(
        &crafted(&files),
        &limits,
        r#"refused archive entry "f10": the workspace's files exceed the limit of 10000 bytes (GANTRY_LAUNCHER_WORKSPACE_MAX_SIZE)"#,
    );
    let scene = Scene::new();
    let stats = scene.unpack(&crafted(&files[..10]), &limits).unwrap();
    assert_eq!(stats, ArchiveStats { entries: 10, bytes: 10_000 });
}

#[test]
fn the_entry_limit_counts_every_entry() {
    let entries = || vec![dir("d"), file("d/a", b""), link("l", "d"), dir("e"), file("b", b"")];
    let limits = ArchiveLimits { max_total_bytes: 100, max_entries: 5, ..ArchiveLimits::default() };
    let scene = Scene::new();
    assert_eq!(scene.unpack(&crafted(&entries()), &limits).unwrap().entries, 5);
    let mut six = entries();
    six.push(file("c", b""));
    check_refused_bytes(
        &crafted(&six),
        &limits,
        "refused archive: it holds more than the limit of 5 entries (GANTRY_LAUNCHER_WORKSPACE_MAX_FILES)",
    );
}

#[test]
fn an_endless_stream_of_entries_stops_at_the_entry_limit() {
    let (reader, producer) = streamed(|builder| {
        for i in 0u64.. {
            let header = raw_header(&file(&format!("f{i}"), b""));
            builder.append(&header, io::empty())?;
        }
        Ok(())
    });
    let scene = Scene::new();
    let limits =
        ArchiveLimits { max_total_bytes: 100, max_entries: 1000, ..ArchiveLimits::default() };
    let error = unpack(reader, &scene.destination(), &limits).unwrap_err();
    assert_eq!(
        error.to_string(),
        "refused archive: it holds more than the limit of 1000 entries (GANTRY_LAUNCHER_WORKSPACE_MAX_FILES)"
    );
    scene.assert_untouched();
    assert!(producer.join().unwrap().is_err());
}

#[test]
fn oversized_headers_and_unused_data_are_refused() {
    let expected =
        "refused archive: more than 1048576 bytes of headers or unused data between two entries";
    let long = "a/".repeat(1 << 20);
    check_refused(&[gnu_long_name(long.as_bytes()), file("x", b"")], expected);
    check_refused(&[pax(&[("comment", long.as_bytes())]), file("x", b"")], expected);
    let padded_directory = Crafted { data: vec![0; 2 << 20], ..dir("d") };
    check_refused(&[padded_directory, file("x", b"")], expected);
}

#[test]
fn corrupt_streams_are_refused_clearly() {
    let prefix = "cannot read the archive (not a complete gzip-compressed tar stream): ";
    let check = |archive: &[u8], cause: &str| {
        let scene = Scene::new();
        let error = scene.unpack(archive, &ArchiveLimits::default()).unwrap_err();
        assert!(matches!(error, ArchiveError::Corrupt { .. }), "{error}");
        let message = error.to_string();
        assert!(message.starts_with(prefix) && message.contains(cause), "{message}");
        scene.assert_untouched();
    };
    check(b"", "");
    check(b"this is not gzip at all", "invalid gzip header");
    check(&gzip(&[b'x'; 2048]), "cksum");

    let scene = Scene::new();
    let source = scene.root.path().join("source");
    write_file(&source.join("a/file"), &noise(200_000, 3), 0o644);
    write_file(&source.join("b"), b"b", 0o644);
    let archive = packed(&source);
    for cut in
        [1, 10, 100, archive.len() / 3, archive.len() / 2, archive.len() - 9, archive.len() - 1]
    {
        check(&archive[..cut], "");
    }
    let mut flipped = archive.clone();
    flipped[archive.len() / 2] ^= 0x55;
    check(&flipped, "");
    let mut bad_checksum = archive.clone();
    let crc = archive.len() - 8;
    bad_checksum[crc] ^= 1;
    check(&bad_checksum, "");

    // A tar stream cut inside a file, in a complete gzip stream.
    let tar = tar_bytes(&[file("cut", &[b'c'; 5000])]);
    check(&gzip(&tar[..3000]), "the archive ends inside \"cut\"");

    let mut trailing = archive.clone();
    trailing.extend_from_slice(b"appended");
    check_refused_bytes(
        &trailing,
        &ArchiveLimits::default(),
        "refused archive: data follows the end of the archive",
    );
    let mut long_trailer = tar_bytes(&[file("x", b"x")]);
    long_trailer.extend_from_slice(&[1; 2 << 20]);
    check_refused_bytes(
        &gzip(&long_trailer),
        &ArchiveLimits::default(),
        "refused archive: data follows the end of the archive",
    );
}
