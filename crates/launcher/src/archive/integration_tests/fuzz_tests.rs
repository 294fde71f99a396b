//! Fuzz tests of unpacking: the archive comes back through the control plane, so any
//! bytes may arrive. Arbitrary bytes, arbitrary bytes gzip'd, and archives of hostile
//! entries (absolute paths, `..`, links out of the workspace, hard links, devices, huge
//! claimed sizes, long names, pax records) with their bytes mutated before or after
//! compression: unpacking fails and leaves nothing, or creates regular files,
//! directories and links only inside the destination, within the limits. It never
//! panics, never hangs, and never touches the sentinel next to the destination.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use gantry_testkit::fuzz::{self, within_hang_limit};
use proptest::prelude::*;
use tar::EntryType;

use super::{ArchiveLimits, Crafted, Scene, gzip, listing, tar_bytes, unpack};

/// Names a hostile archive uses: ordinary ones (so that entries meet each other), ones
/// that leave the workspace, ones the kernel would resolve through a link, and ones at
/// the limits of length.
fn entry_name() -> impl Strategy<Value = Vec<u8>> {
    let named = prop::sample::select(vec![
        "a",
        "b",
        "a/b",
        "a/b/c",
        "l",
        "l/x",
        "a/l",
        "a/l/x",
        "./a",
        "a/./b",
        "a//b",
        "a/",
        "..",
        "../outside",
        "../outside/sentinel",
        "a/../../outside",
        "./../x",
        "/",
        "/etc/x",
        "/tmp",
        ".",
        "",
        "C:x",
        "\\\\server\\share",
        "outside",
        "workspace",
        "é/ü",
        "a\\..\\x",
    ])
    .prop_map(|name| name.as_bytes().to_vec());
    prop_oneof![
        6 => named,
        1 => (1usize..400).prop_map(|len| vec![b'n'; len]),
        1 => (1usize..1100).prop_map(|depth| b"d/".repeat(depth)),
        1 => prop::collection::vec(any::<u8>(), 0..40),
    ]
}

/// Where a hostile link points: inside, out of the workspace, at itself or another link.
fn link_target() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "a", "b", "a/b", "l", "a/l", ".", "..", "../..", "../outside", "../outside/sentinel",
            "a/../..", "l/../..", "/", "/etc/passwd", "", "./l", "b/../../outside",
        ])
        .prop_map(|name| name.as_bytes().to_vec()),
        1 => (1usize..2100).prop_map(|depth| b"../".repeat(depth)),
        1 => entry_name(),
    ]
}

fn dir_mode() -> impl Strategy<Value = u32> {
    prop::sample::select(vec![0o755, 0o700, 0o555, 0o500, 0o1777, 0o4755, 0o2750, 0o000, 0o7777])
}

/// A record that announces the long name or link target of the entry after it.
#[derive(Debug, Clone)]
enum Announcement {
    GnuLongName(Vec<u8>),
    GnuLongLink(Vec<u8>),
    PaxPath(Vec<u8>),
    PaxLinkPath(Vec<u8>),
}

/// One hostile entry, possibly announced by a GNU long-name or pax record.
#[derive(Debug, Clone)]
struct Hostile {
    announcement: Option<Announcement>,
    kind: EntryType,
    path: Vec<u8>,
    link: Vec<u8>,
    mode: u32,
    data: Vec<u8>,
}

impl Hostile {
    fn crafted(self) -> Vec<Crafted> {
        let announcement = self.announcement.map(|announcement| match announcement {
            Announcement::GnuLongName(name) => super::gnu_long_name(&name),
            Announcement::GnuLongLink(target) => super::gnu_long_link(&target),
            Announcement::PaxPath(name) => super::pax(&[("path", &name)]),
            Announcement::PaxLinkPath(target) => super::pax(&[("linkpath", &target)]),
        });
        let Self { kind, path, link, mode, data, .. } = self;
        announcement.into_iter().chain([Crafted { kind, path, link, mode, data }]).collect()
    }
}

fn hostile() -> impl Strategy<Value = Hostile> {
    let kind = prop::sample::select(vec![
        EntryType::Regular,
        EntryType::Directory,
        EntryType::Symlink,
        EntryType::Link,
        EntryType::Fifo,
        EntryType::Char,
        EntryType::Block,
        EntryType::Continuous,
        EntryType::GNUSparse,
        EntryType::new(b'Z'),
    ]);
    let data = prop::collection::vec(any::<u8>(), 0..300);
    let announcement = prop_oneof![
        6 => Just(None),
        1 => entry_name().prop_map(|name| Some(Announcement::GnuLongName(name))),
        1 => link_target().prop_map(|target| Some(Announcement::GnuLongLink(target))),
        1 => entry_name().prop_map(|name| Some(Announcement::PaxPath(name))),
        1 => link_target().prop_map(|target| Some(Announcement::PaxLinkPath(target))),
    ];
    (announcement, kind, entry_name(), link_target(), dir_mode(), data).prop_map(
        |(announcement, kind, path, link, mode, data)| Hostile {
            announcement,
            kind,
            path,
            link,
            mode,
            data,
        },
    )
}

/// The tar bytes of up to ten hostile entries.
fn hostile_tar() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(hostile(), 0..10).prop_map(|entries| {
        let crafted: Vec<Crafted> = entries.into_iter().flat_map(Hostile::crafted).collect();
        tar_bytes(&crafted)
    })
}

/// The bytes that reach `unpack`.
fn archive() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..2048),
        1 => prop::collection::vec(any::<u8>(), 0..4096).prop_map(|bytes| gzip(&bytes)),
        3 => hostile_tar().prop_map(|tar| gzip(&tar)),
        3 => (hostile_tar(), fuzz::mutations())
            .prop_map(|(tar, mutations)| gzip(&fuzz::apply(&tar, &mutations))),
        1 => (hostile_tar(), fuzz::mutations())
            .prop_map(|(tar, mutations)| fuzz::apply(&gzip(&tar), &mutations)),
    ]
}

/// Small limits half of the time, so that the limits are reached too.
fn limits() -> impl Strategy<Value = ArchiveLimits> {
    prop_oneof![
        Just(ArchiveLimits::default()),
        (0u64..2000, 1u64..8).prop_map(|(max_total_bytes, max_entries)| ArchiveLimits {
            max_total_bytes,
            max_entries,
            ..ArchiveLimits::default()
        }),
    ]
}

/// `path` with `.` and `..` applied lexically, without looking at the disk.
fn normalized(path: &Path) -> PathBuf {
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                normal.pop();
            }
            Component::CurDir => {}
            other => normal.push(other),
        }
    }
    normal
}

/// Walks what was unpacked, checking each node and opening up directories whose archived
/// mode would stop the walk (and the removal of the temporary directory). Returns the
/// number of entries and the bytes of the files. A loop, not recursion: an archive's
/// tree may be as deep as paths go.
fn check_tree(root: &Path) -> Result<(u64, u64), TestCaseError> {
    let real_root = fs::canonicalize(root).unwrap();
    let (mut entries, mut bytes) = (0, 0);
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for child in fs::read_dir(dir).unwrap() {
            let path = child.unwrap().path();
            let metadata = fs::symlink_metadata(&path).unwrap();
            let file_type = metadata.file_type();
            prop_assert_eq!(
                metadata.mode() & 0o7000,
                0,
                "{:?} keeps a setuid, setgid or sticky bit",
                path
            );
            entries += 1;
            if file_type.is_symlink() {
                // Followed as the kernel would, a link ends inside the workspace; a dangling
                // one points inside it by its very text.
                let end = fs::canonicalize(&path).unwrap_or_else(|_| {
                    normalized(&path.parent().unwrap().join(fs::read_link(&path).unwrap()))
                });
                prop_assert!(
                    end.starts_with(&real_root) || end.starts_with(root),
                    "{:?} leads to {:?}",
                    path,
                    end
                );
            } else if file_type.is_dir() {
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
                pending.push(path);
            } else {
                prop_assert!(
                    file_type.is_file(),
                    "{:?} is neither a file, a directory nor a link",
                    path
                );
                prop_assert_eq!(metadata.nlink(), 1, "{:?} is hard-linked", path);
                bytes += metadata.len();
            }
        }
    }
    Ok((entries, bytes))
}

proptest! {
    #![proptest_config(fuzz::config(256))]

    #[test]
    fn any_archive_unpacks_inside_the_destination_or_not_at_all(
        archive in archive(),
        limits in limits(),
    ) {
        within_hang_limit(move || {
            let scene = Scene::new();
            let destination = scene.destination();
            let result = unpack(archive.as_slice(), &destination, &limits);
            let Ok(stats) = result else {
                scene.assert_untouched();
                return Ok(());
            };
            fs::set_permissions(&destination, fs::Permissions::from_mode(0o755)).unwrap();
            let (entries, bytes) = check_tree(&destination)?;
            // Parents made on the way are not counted; what was written is.
            prop_assert!(stats.entries <= limits.max_entries);
            prop_assert!(entries >= stats.entries);
            prop_assert_eq!(bytes, stats.bytes);
            prop_assert!(bytes <= limits.max_total_bytes);
            let mut beside = listing(scene.root.path());
            beside.retain(|path| !path.starts_with("workspace"));
            prop_assert_eq!(beside, ["outside", "outside/sentinel"]);
            let sentinel = fs::read_to_string(scene.outside().join("sentinel")).unwrap();
            prop_assert_eq!(sentinel, "untouched");
            Ok(())
        })?;
    }
}
