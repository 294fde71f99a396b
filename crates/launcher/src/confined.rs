//! Files inside a run's workspace, reached without ever following a link: a run's code
//! is hostile, and everything it leaves in its workspace (files, links, fifos, hard
//! links) may have been placed to make the launcher read or write elsewhere.
//!
//! A [`Confined`] directory is opened once, by the launcher, before any run code can
//! touch it; every path beneath it is then walked one component at a time with
//! `openat(O_NOFOLLOW)` from that descriptor. `..`, absolute paths and symbolic links at
//! any step are refused, so nothing outside the directory is ever reached, even when
//! the run swaps a directory for a link while the launcher works. Files read must be
//! regular with a single link (a hard link could be any file of the launcher's user);
//! files written replace what was there (unlink, then create exclusively).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, readlinkat};
use nix::sys::stat::{Mode, SFlag, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// Why a file in a workspace was refused or could not be used; `path` is shown relative
/// to the workspace, as the run's author knows it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FileRefusal {
    #[error("{path} is a symbolic link: Gantry never follows a link in a run's workspace")]
    Link { path: String },
    #[error("{path} is a {kind}, not a regular file")]
    NotRegular { path: String, kind: &'static str },
    #[error(
        "{path} has {links} hard links: a hard-linked file may be any file on the launcher's machine, so it is refused"
    )]
    HardLinked { path: String, links: u64 },
    #[error("{path} is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error("{path} does not name a place inside the workspace")]
    Outside { path: String },
    #[error("cannot {action} {path}: {source}")]
    Io { action: &'static str, path: String, source: io::Error },
}

/// What is at a path, as seen without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryKind {
    Directory,
    File,
    Link,
    Other(&'static str),
}

/// A directory opened by the launcher, beneath which paths are resolved safely.
#[derive(Debug)]
pub(crate) struct Confined {
    directory: OwnedFd,
}

const DIRECTORY_FLAGS: OFlag =
    OFlag::O_RDONLY.union(OFlag::O_DIRECTORY).union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC);

impl Confined {
    /// Opens `path` itself, refusing a link in its last component: its parents are the
    /// launcher's own directories.
    pub(crate) fn open(path: &Path) -> Result<Self, FileRefusal> {
        let shown = path.display().to_string();
        let directory = nix::fcntl::open(path, DIRECTORY_FLAGS, Mode::empty()).map_err(
            |errno| match errno {
                Errno::ELOOP | Errno::ENOTDIR
                    if std::fs::symlink_metadata(path).is_ok_and(|meta| meta.is_symlink()) =>
                {
                    FileRefusal::Link { path: shown.clone() }
                }
                Errno::ENOTDIR => FileRefusal::NotRegular {
                    path: shown.clone(),
                    kind: "file where a directory was expected",
                },
                errno => FileRefusal::Io {
                    action: "open",
                    path: shown.clone(),
                    source: io::Error::from(errno),
                },
            },
        )?;
        Ok(Self { directory })
    }

    /// The directory's own metadata, through its descriptor.
    pub(crate) fn metadata(&self) -> io::Result<std::fs::Metadata> {
        File::from(self.directory.try_clone()?).metadata()
    }

    /// A directory beneath this one, itself confined.
    pub(crate) fn subdirectory(&self, relative: &Path) -> Result<Self, FileRefusal> {
        let directory = match self.locate(relative)? {
            None => self.directory.try_clone().map_err(|source| FileRefusal::Io {
                action: "open",
                path: shown(relative),
                source,
            })?,
            Some((parent, last)) => open_directory(self.at(&parent), last, relative)?,
        };
        Ok(Self { directory })
    }

    /// What is at `relative`, without following it; `None` when nothing is.
    pub(crate) fn kind(&self, relative: &Path) -> Result<Option<EntryKind>, FileRefusal> {
        let Some((parent, last)) = self.locate(relative)? else {
            return Ok(Some(EntryKind::Directory));
        };
        let at = self.at(&parent);
        match fstatat(at, last, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(kind_of_mode(stat.st_mode))),
            Err(Errno::ENOENT) => Ok(None),
            Err(errno) => Err(io_refusal("inspect", relative, errno)),
        }
    }

    /// Opens a regular, singly linked file for reading; `None` when it does not exist.
    /// A fifo is never waited on; a file over `max_bytes` is refused.
    pub(crate) fn read(
        &self,
        relative: &Path,
        max_bytes: u64,
    ) -> Result<Option<File>, FileRefusal> {
        let Some((parent, last)) = self.locate(relative)? else {
            return Err(not_a_file(relative));
        };
        let at = self.at(&parent);
        let flags = OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC;
        let file = match openat(at, last, flags, Mode::empty()) {
            Ok(fd) => File::from(fd),
            Err(Errno::ENOENT) => return Ok(None),
            Err(errno) => return Err(refusal_at(at, last, relative, errno, "read")),
        };
        let metadata = file.metadata().map_err(|source| FileRefusal::Io {
            action: "read",
            path: shown(relative),
            source,
        })?;
        if !metadata.is_file() {
            return Err(FileRefusal::NotRegular {
                path: shown(relative),
                kind: kind_of_file_type(metadata.file_type()),
            });
        }
        if metadata.nlink() != 1 {
            return Err(FileRefusal::HardLinked { path: shown(relative), links: metadata.nlink() });
        }
        if metadata.len() > max_bytes {
            return Err(FileRefusal::TooLarge {
                path: shown(relative),
                size: metadata.len(),
                limit: max_bytes,
            });
        }
        Ok(Some(file))
    }

    /// Creates `relative` anew for writing, replacing whatever file or link was there
    /// (never writing through it); a directory in its place is refused.
    pub(crate) fn replace(&self, relative: &Path, mode: u32) -> Result<File, FileRefusal> {
        let Some((parent, last)) = self.locate(relative)? else {
            return Err(not_a_file(relative));
        };
        let at = self.at(&parent);
        match unlinkat(at, last, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(Errno::EISDIR) => {
                return Err(not_a_file(relative));
            }
            Err(errno) => return Err(io_refusal("replace", relative, errno)),
        }
        let flags = OFlag::O_WRONLY
            | OFlag::O_CREAT
            | OFlag::O_EXCL
            | OFlag::O_NOFOLLOW
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC;
        let fd = openat(at, last, flags, Mode::from_bits_truncate(mode))
            .map_err(|errno| io_refusal("create", relative, errno))?;
        Ok(File::from(fd))
    }

    /// Creates the directory `relative` unless there is one: a link or a file in its place
    /// is refused, never followed.
    pub(crate) fn create_directory(&self, relative: &Path, mode: u32) -> Result<(), FileRefusal> {
        let Some((parent, last)) = self.locate(relative)? else { return Ok(()) };
        let at = self.at(&parent);
        match mkdirat(at, last, Mode::from_bits_truncate(mode)) {
            Ok(()) => Ok(()),
            Err(Errno::EEXIST) => open_directory(at, last, relative).map(drop),
            Err(errno) => Err(io_refusal("create", relative, errno)),
        }
    }

    /// Removes the file or link at `relative`, if there is one.
    pub(crate) fn remove(&self, relative: &Path) -> Result<(), FileRefusal> {
        let Some((parent, last)) = self.locate(relative)? else {
            return Err(not_a_file(relative));
        };
        let at = self.at(&parent);
        match unlinkat(at, last, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(errno) => Err(io_refusal("remove", relative, errno)),
        }
    }

    /// The target of the link at `relative`, as written (never resolved).
    pub(crate) fn read_link(&self, relative: &Path) -> Result<PathBuf, FileRefusal> {
        let Some((parent, last)) = self.locate(relative)? else {
            return Err(FileRefusal::Outside { path: shown(relative) });
        };
        let at = self.at(&parent);
        readlinkat(at, last)
            .map(PathBuf::from)
            .map_err(|errno| io_refusal("read the link", relative, errno))
    }

    /// The names in the directory at `relative` (`.` and `..` left out), unsorted.
    pub(crate) fn list(&self, relative: &Path) -> Result<Vec<OsString>, FileRefusal> {
        let directory = self.subdirectory(relative)?.directory;
        let mut listing = nix::dir::Dir::from_fd(directory)
            .map_err(|errno| io_refusal("list", relative, errno))?;
        let mut names = Vec::new();
        for entry in listing.iter() {
            let entry = entry.map_err(|errno| io_refusal("list", relative, errno))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(OsStr::from_bytes(name).to_owned());
            }
        }
        Ok(names)
    }

    /// The directory holding `relative`'s last component, opened (`None`: this one), and
    /// that component; `None` when `relative` names this directory itself.
    fn locate<'p>(
        &self,
        relative: &'p Path,
    ) -> Result<Option<(Option<OwnedFd>, &'p OsStr)>, FileRefusal> {
        let names = names(relative)?;
        let Some((last, parents)) = names.split_last() else { return Ok(None) };
        Ok(Some((self.walk(parents, relative)?, last)))
    }

    fn at<'s>(&'s self, parent: &'s Option<OwnedFd>) -> BorrowedFd<'s> {
        parent.as_ref().map_or(self.directory.as_fd(), AsFd::as_fd)
    }

    /// Opens each of `parents` in turn, as directories, never through a link. `None`:
    /// there were none, the directory itself is the parent.
    fn walk(&self, parents: &[&OsStr], relative: &Path) -> Result<Option<OwnedFd>, FileRefusal> {
        let mut opened: Option<OwnedFd> = None;
        for name in parents {
            let next = {
                let at = opened.as_ref().map_or(self.directory.as_fd(), AsFd::as_fd);
                open_directory(at, name, relative)?
            };
            opened = Some(next);
        }
        Ok(opened)
    }
}

fn open_directory(
    at: BorrowedFd<'_>,
    name: &OsStr,
    relative: &Path,
) -> Result<OwnedFd, FileRefusal> {
    openat(at, name, DIRECTORY_FLAGS, Mode::empty())
        .map_err(|errno| refusal_at(at, name, relative, errno, "open"))
}

/// The normal components of `relative`; anything that could lead out is refused.
fn names(relative: &Path) -> Result<Vec<&OsStr>, FileRefusal> {
    let mut names = Vec::new();
    for component in relative.components() {
        match component {
            Component::Normal(name) => names.push(name),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(FileRefusal::Outside { path: shown(relative) });
            }
        }
    }
    Ok(names)
}

/// Names what made opening `name` fail: a link (or a non-directory where a directory was
/// needed) is a refusal, anything else an I/O error.
fn refusal_at(
    at: BorrowedFd<'_>,
    name: &OsStr,
    relative: &Path,
    errno: Errno,
    action: &'static str,
) -> FileRefusal {
    match fstatat(at, name, AtFlags::AT_SYMLINK_NOFOLLOW).map(|stat| kind_of_mode(stat.st_mode)) {
        Ok(EntryKind::Link) => FileRefusal::Link { path: shown(relative) },
        Ok(EntryKind::Other(kind)) if errno == Errno::ENOTDIR => {
            FileRefusal::NotRegular { path: shown(relative), kind }
        }
        Ok(EntryKind::File) if errno == Errno::ENOTDIR => FileRefusal::NotRegular {
            path: shown(relative),
            kind: "file where a directory was expected",
        },
        _ => io_refusal(action, relative, errno),
    }
}

fn not_a_file(relative: &Path) -> FileRefusal {
    FileRefusal::NotRegular { path: shown(relative), kind: "directory" }
}

fn io_refusal(action: &'static str, relative: &Path, errno: Errno) -> FileRefusal {
    FileRefusal::Io { action, path: shown(relative), source: io::Error::from(errno) }
}

fn shown(relative: &Path) -> String {
    relative.to_string_lossy().into_owned()
}

fn kind_of_mode(mode: nix::libc::mode_t) -> EntryKind {
    match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFDIR => EntryKind::Directory,
        SFlag::S_IFREG => EntryKind::File,
        SFlag::S_IFLNK => EntryKind::Link,
        SFlag::S_IFIFO => EntryKind::Other("fifo"),
        SFlag::S_IFSOCK => EntryKind::Other("socket"),
        SFlag::S_IFCHR => EntryKind::Other("character device"),
        SFlag::S_IFBLK => EntryKind::Other("block device"),
        _ => EntryKind::Other("file of an unknown type"),
    }
}

pub(crate) fn kind_of_file_type(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "directory"
    } else if file_type.is_symlink() {
        "symbolic link"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_fifo() {
        "fifo"
    } else if file_type.is_char_device() {
        "character device"
    } else if file_type.is_block_device() {
        "block device"
    } else {
        "file of an unknown type"
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::fs::symlink;

    use super::*;

    /// A workspace inside a temporary directory, and a secret file beside it that no
    /// operation may read or change.
    struct Fixture {
        _root: tempfile::TempDir,
        workspace: PathBuf,
        secret: PathBuf,
    }

    fn fixture() -> Fixture {
        let root = tempfile::tempdir().unwrap();
        let workspace = root.path().join("workspace");
        std::fs::create_dir_all(workspace.join("infra")).unwrap();
        let secret = root.path().join("pool.key");
        std::fs::write(&secret, "-----BEGIN PRIVATE KEY-----\nsecret\n").unwrap();
        Fixture { _root: root, workspace, secret }
    }

    fn read_all(confined: &Confined, relative: &str) -> Result<Option<String>, String> {
        match confined.read(Path::new(relative), 1 << 20) {
            Ok(Some(mut file)) => {
                let mut text = String::new();
                file.read_to_string(&mut text).unwrap();
                Ok(Some(text))
            }
            Ok(None) => Ok(None),
            Err(refusal) => Err(refusal.to_string()),
        }
    }

    #[test]
    fn regular_files_are_read_and_missing_ones_are_none() {
        let fixture = fixture();
        std::fs::write(fixture.workspace.join("infra/gantry.tfstate"), "{}").unwrap();
        let confined = Confined::open(&fixture.workspace).unwrap();
        assert_eq!(read_all(&confined, "infra/gantry.tfstate"), Ok(Some("{}".to_owned())));
        assert_eq!(read_all(&confined, "infra/missing"), Ok(None));
    }

    #[test]
    fn links_are_refused_at_every_step_and_in_both_directions() {
        let fixture = fixture();
        symlink(&fixture.secret, fixture.workspace.join("infra/gantry.tfstate")).unwrap();
        symlink(fixture.secret.parent().unwrap(), fixture.workspace.join("up")).unwrap();
        symlink("/proc/self/environ", fixture.workspace.join("environ")).unwrap();
        let confined = Confined::open(&fixture.workspace).unwrap();
        for path in ["infra/gantry.tfstate", "up/pool.key", "environ"] {
            let error = read_all(&confined, path).unwrap_err();
            assert!(error.contains("is a symbolic link"), "{path}: {error}");
        }
        // Writing replaces the link itself: the file it pointed to is untouched.
        let mut file = confined.replace(Path::new("infra/gantry.tfstate"), 0o644).unwrap();
        file.write_all(b"new").unwrap();
        assert_eq!(
            std::fs::read_to_string(&fixture.secret).unwrap(),
            "-----BEGIN PRIVATE KEY-----\nsecret\n"
        );
        assert_eq!(read_all(&confined, "infra/gantry.tfstate"), Ok(Some("new".to_owned())));
        // No write through a linked directory either.
        let error = confined.replace(Path::new("up/pool.key"), 0o644).unwrap_err().to_string();
        assert!(error.contains("up/pool.key is a symbolic link"), "{error}");
    }

    #[test]
    fn a_directory_swapped_for_a_link_after_opening_is_still_refused() {
        let fixture = fixture();
        let confined = Confined::open(&fixture.workspace).unwrap();
        std::fs::remove_dir(fixture.workspace.join("infra")).unwrap();
        symlink(fixture.secret.parent().unwrap(), fixture.workspace.join("infra")).unwrap();
        let error = read_all(&confined, "infra/pool.key").unwrap_err();
        assert!(error.contains("symbolic link"), "{error}");
    }

    #[test]
    fn paths_that_lead_out_are_refused_before_any_lookup() {
        let fixture = fixture();
        let confined = Confined::open(&fixture.workspace).unwrap();
        for path in ["../pool.key", "/etc/passwd", "infra/../../pool.key"] {
            let error = read_all(&confined, path).unwrap_err();
            assert!(error.contains("does not name a place inside the workspace"), "{error}");
        }
    }

    #[test]
    fn hard_links_fifos_and_oversized_files_are_refused() {
        let fixture = fixture();
        std::fs::hard_link(&fixture.secret, fixture.workspace.join("hard")).unwrap();
        nix::unistd::mkfifo(&fixture.workspace.join("fifo"), Mode::from_bits_truncate(0o600))
            .unwrap();
        std::fs::write(fixture.workspace.join("big"), vec![b'x'; 2048]).unwrap();
        let confined = Confined::open(&fixture.workspace).unwrap();
        let error = read_all(&confined, "hard").unwrap_err();
        assert!(error.contains("has 2 hard links"), "{error}");
        // Opening the fifo must not wait for a writer.
        let error = read_all(&confined, "fifo").unwrap_err();
        assert_eq!(error, "fifo is a fifo, not a regular file");
        let error = confined.read(Path::new("big"), 1024).unwrap_err().to_string();
        assert_eq!(error, "big is 2048 bytes, over the limit of 1024 bytes");
        let error = confined.replace(Path::new("infra"), 0o644).unwrap_err().to_string();
        assert_eq!(error, "infra is a directory, not a regular file");
    }

    #[test]
    fn listing_and_link_reading_stay_inside() {
        let fixture = fixture();
        symlink("../outside", fixture.workspace.join("infra/link")).unwrap();
        std::fs::write(fixture.workspace.join("infra/main.tf"), "").unwrap();
        let confined = Confined::open(&fixture.workspace).unwrap();
        let mut names = confined.list(Path::new("infra")).unwrap();
        names.sort();
        assert_eq!(names, [OsString::from("link"), OsString::from("main.tf")]);
        assert_eq!(confined.read_link(Path::new("infra/link")).unwrap(), Path::new("../outside"));
        assert_eq!(confined.kind(Path::new("infra/link")).unwrap(), Some(EntryKind::Link));
        assert_eq!(confined.kind(Path::new("infra")).unwrap(), Some(EntryKind::Directory));
        assert_eq!(confined.kind(Path::new("nothing")).unwrap(), None);
        let error = confined.list(Path::new("infra/link")).unwrap_err().to_string();
        assert!(error.contains("symbolic link"), "{error}");
    }

    #[test]
    fn the_directory_itself_must_not_be_a_link() {
        let fixture = fixture();
        let link = fixture.workspace.parent().unwrap().join("link");
        symlink(&fixture.workspace, &link).unwrap();
        let error = Confined::open(&link).unwrap_err().to_string();
        assert!(error.contains("is a symbolic link"), "{error}");
    }

    #[test]
    fn a_directory_is_created_once_and_never_through_a_link() {
        let fixture = fixture();
        let confined = Confined::open(&fixture.workspace).unwrap();
        for _ in 0..2 {
            confined.create_directory(Path::new("kept"), 0o700).unwrap();
        }
        assert!(fixture.workspace.join("kept").is_dir());
        let outside = fixture.secret.parent().unwrap().join("elsewhere");
        std::fs::create_dir(&outside).unwrap();
        symlink(&outside, fixture.workspace.join("linked")).unwrap();
        let error = confined.create_directory(Path::new("linked"), 0o700).unwrap_err();
        assert!(error.to_string().contains("is a symbolic link"), "{error}");
        let error = confined.create_directory(Path::new("linked/below"), 0o700).unwrap_err();
        assert!(error.to_string().contains("is a symbolic link"), "{error}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }
}
