//! Run workspaces packed into a gzip-compressed tar stream between plan and apply, and
//! unpacked from one that came back through the control plane.
//!
//! The launcher that planned packs the workspace (sources, plan file, lock file,
//! `.terraform/`); it is encrypted, stored by the server and later unpacked by any
//! launcher of the pool. Because the stream comes back from outside the pool, unpacking
//! treats it as hostile. It walks the entries itself instead of calling
//! `tar::Archive::unpack`, whose protections cannot be audited or limited from here, and
//! keeps these invariants:
//!
//! * nothing is written outside the destination: entry paths must be relative, without
//!   `..`; nothing is ever written through a symbolic link, and links are created last,
//!   only when their target, followed through the archive's other links as the kernel
//!   would, stays inside the workspace;
//! * only regular files, directories and symbolic links are created; owners are
//!   ignored and setuid, setgid and sticky bits are dropped;
//! * the bytes actually written and the number of entries are bounded by
//!   [`ArchiveLimits`]; what the tar parser may read for headers, the length of paths,
//!   the work of checking links and what is remembered until the end have fixed bounds;
//! * on any failure the destination is removed: the caller never sees a half-unpacked
//!   workspace.
//!
//! Both directions stream with a fixed-size buffer: memory stays bounded whatever the
//! size of the files. Unpacking remembers only the symbolic links and the directories
//! with restrictive modes until the end (at most 64 MiB of their paths).

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::ops::Bound::{Excluded, Unbounded};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use flate2::Compression;
use flate2::bufread::GzDecoder;
use flate2::write::GzEncoder;
use gantry_domain::options::{self, Env, OptionError};
use nix::libc;
use tar::{EntryType, Header};

use crate::confined::{Confined, EntryKind, FileRefusal};

/// The permission bits kept: never setuid, setgid or sticky.
const PERMISSION_BITS: u32 = 0o777;
/// The mode of directories when they are created (their archived mode comes after).
const DIRECTORY_MODE: u32 = 0o755;
/// Links a path may go through before the kernel gives up with ELOOP (Linux's
/// MAXSYMLINKS); a link that needs more is refused rather than half-checked.
const MAX_LINK_HOPS: usize = 40;
/// What the tar parser may read between two entries: headers, GNU long names, pax
/// records, padding. Real ones take a few KiB; without a bound a hostile long-name record
/// would be read into memory whole.
const MAX_HEADER_BYTES: u64 = 1 << 20;
/// What may follow the end-of-archive marker inside the gzip stream (tar tools pad to a
/// record of up to a few KiB).
const MAX_TRAILER_BYTES: u64 = 1 << 20;
/// The longest entry path and link target accepted: Linux's PATH_MAX. Longer ones could
/// not be created anyway, and the bound keeps the per-entry checks cheap.
const MAX_PATH_BYTES: usize = 4096;
/// Component steps all link checks of one archive may take together (a real link takes
/// a handful).
const MAX_LINK_STEPS: u64 = 1 << 20;
/// What unpacking keeps in memory until the end: link paths and targets, and paths of
/// directories whose mode is set last. A real workspace needs a few KiB.
const MAX_REMEMBERED_BYTES: usize = 64 << 20;
/// The copy buffer, for packing and unpacking alike.
const COPY_BUFFER_BYTES: usize = 64 * 1024;

/// Limits on what unpacking accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ArchiveLimits {
    /// `GANTRY_LAUNCHER_WORKSPACE_MAX_SIZE`: the most bytes of file contents written.
    pub(crate) max_total_bytes: u64,
    /// `GANTRY_LAUNCHER_WORKSPACE_MAX_FILES`: the most entries (files, directories, links).
    pub(crate) max_entries: u64,
    /// `GANTRY_LAUNCHER_STATE_MAX_SIZE`: the largest managed state a run may store.
    pub(crate) max_state_bytes: u64,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        Self {
            max_total_bytes: options::DEFAULT_WORKSPACE_MAX_SIZE,
            max_entries: u64::from(options::DEFAULT_WORKSPACE_MAX_FILES),
            max_state_bytes: options::DEFAULT_STATE_MAX_SIZE,
        }
    }
}

impl ArchiveLimits {
    pub(crate) fn from_env(env: &Env) -> Result<Self, OptionError> {
        Ok(Self {
            max_total_bytes: options::size(
                env,
                options::WORKSPACE_MAX_SIZE,
                options::DEFAULT_WORKSPACE_MAX_SIZE,
            )?,
            max_entries: u64::from(options::count(
                env,
                options::WORKSPACE_MAX_FILES,
                options::DEFAULT_WORKSPACE_MAX_FILES,
                1,
                u32::MAX,
                "a number of files and directories like 1000000",
            )?),
            max_state_bytes: options::size(
                env,
                options::STATE_MAX_SIZE,
                options::DEFAULT_STATE_MAX_SIZE,
            )?,
        })
    }
}

/// What was packed or unpacked: files, directories and links, and the bytes of the files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ArchiveStats {
    pub(crate) entries: u64,
    pub(crate) bytes: u64,
}

/// Why a workspace could not be packed or unpacked. Refusals name the entry as the
/// archive spells it and the rule it breaks.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ArchiveError {
    #[error("refused archive entry {path:?}: its name is empty")]
    EmptyPath { path: String },
    #[error("refused archive entry {path:?}: its name contains a NUL byte")]
    NulInPath { path: String },
    #[error("refused archive entry {path:?}: its path is longer than 4096 bytes")]
    PathTooLong { path: String },
    #[error("refused archive entry {path:?}: its path is absolute")]
    AbsolutePath { path: String },
    #[error("refused archive entry {path:?}: its path starts with a Windows drive or UNC prefix")]
    WindowsPrefix { path: String },
    #[error("refused archive entry {path:?}: its path leaves the workspace")]
    PathLeavesWorkspace { path: String },
    #[error(
        "refused archive entry {path:?}: it is a {kind}; only regular files, directories and symbolic links are unpacked"
    )]
    Unsupported { path: String, kind: String },
    #[error("refused archive entry {path:?}: its symbolic link target {target:?} is absolute")]
    AbsoluteLinkTarget { path: String, target: String },
    #[error(
        "refused archive entry {path:?}: its symbolic link target {target:?} leads outside the workspace"
    )]
    LinkLeavesWorkspace { path: String, target: String },
    #[error(
        "refused archive entry {path:?}: its symbolic link target {target:?} goes through more than 40 links or a path longer than 4096 bytes"
    )]
    LinkTooComplex { path: String, target: String },
    #[error("refused archive: checking its symbolic links takes more than {limit} steps")]
    LinksTooComplex { limit: u64 },
    #[error(
        "refused archive entry {path:?}: its symbolic link target {target:?} is empty, longer than 4095 bytes or contains a NUL byte"
    )]
    InvalidLinkTarget { path: String, target: String },
    #[error(
        "refused archive entry {path:?}: it would be written through the symbolic link {link:?}"
    )]
    ThroughSymlink { path: String, link: String },
    #[error("refused archive entry {path:?}: its parent {parent:?} is not a directory")]
    ParentNotDirectory { path: String, parent: String },
    #[error("refused archive entry {path:?}: another entry already uses this path")]
    Duplicate { path: String },
    #[error(
        "refused archive entry {path:?}: the workspace's files exceed the limit of {limit} bytes (GANTRY_LAUNCHER_WORKSPACE_MAX_SIZE)"
    )]
    TooLarge { path: String, limit: u64 },
    #[error(
        "refused archive: it holds more than the limit of {limit} entries (GANTRY_LAUNCHER_WORKSPACE_MAX_FILES)"
    )]
    TooManyEntries { limit: u64 },
    #[error(
        "refused archive: more than {limit} bytes of headers or unused data between two entries"
    )]
    OversizedHeader { limit: u64 },
    #[error(
        "refused archive: its symbolic links and restricted directories need more than {limit} bytes of memory"
    )]
    TooMuchToRemember { limit: usize },
    #[error("refused archive: data follows the end of the archive")]
    TrailingData,
    #[error("cannot read the archive (not a complete gzip-compressed tar stream): {source}")]
    Corrupt { source: io::Error },
    #[error("cannot unpack into {path}: it already exists")]
    DestinationExists { path: String },
    #[error(
        "cannot pack {path:?}: it is a {kind}; a workspace may hold only regular files, directories and symbolic links"
    )]
    CannotPack { path: String, kind: &'static str },
    #[error(
        "cannot pack {path:?}: its symbolic link target {target:?} is {rule}, which unpacking refuses (a workspace must be self-contained)"
    )]
    UnpackableLink { path: String, target: String, rule: &'static str },
    #[error("cannot pack {path:?}: the file shrank or went away while it was being packed")]
    FileChanged { path: String },
    #[error("cannot pack the workspace: {0}")]
    Refused(FileRefusal),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> ArchiveError {
    let context = context.into();
    move |source| ArchiveError::Io { context, source }
}

fn corrupt(source: io::Error) -> ArchiveError {
    ArchiveError::Corrupt { source }
}

fn lossy(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

// ---------------------------------------------------------------------------------------
// Packing

/// Packs the contents of `dir` (relative paths, regular files with their permission bits,
/// directories, symlinks as links — never followed) as a gzip-compressed tar stream into
/// `output`. Entries come in sorted order, each directory before its contents, so the
/// same tree always packs the same way. Owners are not kept; file modification times are.
/// Sockets, fifos and devices are an error, and so are links that unpacking would refuse:
/// better to fail at plan time than to store a workspace no apply can use.
pub(crate) fn pack(dir: &Path, output: impl Write) -> Result<ArchiveStats, ArchiveError> {
    // The run that wrote the tree may still be changing it (a process left behind):
    // every step goes through the directory as opened here, never through a link.
    let root = Confined::open(dir).map_err(refused_for_packing)?;
    let mut builder = tar::Builder::new(GzEncoder::new(output, Compression::fast()));
    let mut stats = ArchiveStats::default();
    let mut links = BTreeMap::new();
    // Depth first, so that a stack of pending paths stays as small as the tree is deep
    // times its widest directory; children are pushed in reverse to pop in order.
    let mut pending = sorted_children(&root, Path::new(""))?;
    while let Some(relative) = pending.pop() {
        let mut header = Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        match root.kind(&relative).map_err(refused_for_packing)? {
            Some(EntryKind::Directory) => {
                let directory = root.subdirectory(&relative).map_err(refused_for_packing)?;
                let metadata = directory_metadata(&directory, &relative)?;
                header.set_mode(metadata.mode() & PERMISSION_BITS);
                header.set_mtime(u64::try_from(metadata.mtime()).unwrap_or(0));
                header.set_entry_type(EntryType::Directory);
                header.set_size(0);
                builder.append_data(&mut header, &relative, io::empty()).map_err(write_error)?;
                pending.extend(sorted_children(&root, &relative)?);
            }
            Some(EntryKind::File) => {
                stats.bytes += append_file(&mut builder, &mut header, &root, &relative)?;
            }
            Some(EntryKind::Link) => {
                let target = root.read_link(&relative).map_err(refused_for_packing)?;
                check_link_lexically(&relative, &target)
                    .map_err(|problem| problem.packing_refusal(&relative, &target))?;
                header.set_mode(0o777);
                header.set_entry_type(EntryType::Symlink);
                header.set_size(0);
                builder.append_link(&mut header, &relative, &target).map_err(write_error)?;
                links.insert(relative, target);
            }
            Some(EntryKind::Other(kind)) => {
                return Err(ArchiveError::CannotPack { path: lossy(&relative), kind });
            }
            // Gone since its directory was listed: nothing to pack.
            None => continue,
        }
        stats.entries += 1;
    }
    // A chain of links can leave even when each one alone stays inside (`a -> .` and
    // `b -> a/..`): check them all together, as unpacking will.
    let mut steps_left = MAX_LINK_STEPS;
    for (path, target) in &links {
        check_link_target(path, target, &links, &mut steps_left)
            .map_err(|problem| problem.packing_refusal(path, target))?;
    }
    let encoder = builder.into_inner().map_err(write_error)?;
    let mut output = encoder.finish().map_err(write_error)?;
    output.flush().map_err(write_error)?;
    Ok(stats)
}

fn refused_for_packing(refusal: FileRefusal) -> ArchiveError {
    ArchiveError::Refused(refusal)
}

/// The metadata of the directory as opened, not of whatever its path holds now.
fn directory_metadata(directory: &Confined, relative: &Path) -> Result<fs::Metadata, ArchiveError> {
    directory.metadata().map_err(io_error(format!("cannot read {}", relative.display())))
}

fn write_error(source: io::Error) -> ArchiveError {
    ArchiveError::Io { context: "cannot write the archive".to_owned(), source }
}

/// The entries of `relative` in the workspace, as paths relative to it, sorted in reverse.
fn sorted_children(root: &Confined, relative: &Path) -> Result<Vec<PathBuf>, ArchiveError> {
    let mut names = root.list(relative).map_err(refused_for_packing)?;
    names.sort_unstable_by(|a, b| b.cmp(a));
    Ok(names.into_iter().map(|name| relative.join(name)).collect())
}

/// Appends one regular file; returns its size.
fn append_file<W: Write>(
    builder: &mut tar::Builder<W>,
    header: &mut Header,
    root: &Confined,
    relative: &Path,
) -> Result<u64, ArchiveError> {
    let context = || format!("cannot read {}", relative.display());
    // The path was a regular file a moment ago. If it has become a link, a fifo or a hard
    // link since, fail rather than pack what it points to or wait for a writer.
    let file = root
        .read(relative, u64::MAX)
        .map_err(refused_for_packing)?
        .ok_or_else(|| ArchiveError::FileChanged { path: lossy(relative) })?;
    let metadata = file.metadata().map_err(io_error(context()))?;
    let size = metadata.len();
    header.set_mode(metadata.mode() & PERMISSION_BITS);
    header.set_mtime(u64::try_from(metadata.mtime()).unwrap_or(0));
    header.set_entry_type(EntryType::Regular);
    header.set_size(size);
    let mut reader = ExactReader { file, remaining: size, failure: None };
    match builder.append_data(header, relative, &mut reader) {
        Ok(()) => Ok(size),
        Err(error) => Err(match reader.failure.take() {
            Some(ReadFailure::Shrunk) => ArchiveError::FileChanged { path: lossy(relative) },
            Some(ReadFailure::Io(source)) => ArchiveError::Io { context: context(), source },
            None => write_error(error),
        }),
    }
}

enum ReadFailure {
    Shrunk,
    Io(io::Error),
}

/// Yields exactly the size written in the entry's header: the tar format has no way to
/// correct it afterwards, so a file that shrinks meanwhile must fail the packing (one
/// that grows is cut at its recorded size). Keeps its own failure apart from the
/// archive's write errors, which come back through the same call.
struct ExactReader {
    file: File,
    remaining: u64,
    failure: Option<ReadFailure>,
}

impl Read for ExactReader {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buffer.is_empty() {
            return Ok(0);
        }
        let wanted = usize::try_from(self.remaining).unwrap_or(usize::MAX).min(buffer.len());
        match self.file.read(&mut buffer[..wanted]) {
            Ok(0) => {
                self.failure = Some(ReadFailure::Shrunk);
                Err(io::Error::other("the file shrank"))
            }
            Ok(read) => {
                self.remaining -= read as u64;
                Ok(read)
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => Err(error),
            Err(error) => {
                self.failure = Some(ReadFailure::Io(error));
                Err(io::Error::other("cannot read the file"))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Unpacking

/// Unpacks a stream made by `pack` into `dir`, which must not exist yet (it is created,
/// and its missing parents), refusing anything unsafe. The input is read to its end, so
/// that a decrypting reader beneath sees and authenticates all of it.
pub(crate) fn unpack(
    input: impl Read,
    dir: &Path,
    limits: &ArchiveLimits,
) -> Result<ArchiveStats, ArchiveError> {
    create_destination(dir)?;
    let result = unpack_into(input, dir, limits);
    if result.is_err() {
        remove_partial(dir);
    }
    result
}

fn create_destination(dir: &Path) -> Result<(), ArchiveError> {
    if let Some(parent) = dir.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        fs::create_dir_all(parent)
            .map_err(io_error(format!("cannot create {}", parent.display())))?;
    }
    match DirBuilder::new().mode(DIRECTORY_MODE).create(dir) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            Err(ArchiveError::DestinationExists { path: dir.display().to_string() })
        }
        Err(error) => Err(io_error(format!("cannot create {}", dir.display()))(error)),
    }
}

/// Removes what a failed unpacking left. Directories whose archived mode lacks owner
/// write or search stop the removal for anyone but root: open them up and try again.
fn remove_partial(dir: &Path) {
    if fs::remove_dir_all(dir).is_ok() {
        return;
    }
    make_directories_writable(dir);
    if let Err(error) = fs::remove_dir_all(dir)
        && error.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %dir.display(), %error, "cannot remove a partly unpacked workspace");
    }
}

fn make_directories_writable(dir: &Path) {
    // Best effort: whatever still fails is reported by the removal that follows. By path,
    // since a directory without the read bit cannot be opened; only real directories get
    // here (the walk does not follow links). A loop, not recursion: the archive chose the
    // tree's depth, and a thread's stack must not be what bounds it.
    let mut pending = vec![dir.to_path_buf()];
    while let Some(directory) = pending.pop() {
        let _ = fs::set_permissions(&directory, Permissions::from_mode(0o700));
        let Ok(children) = fs::read_dir(&directory) else { continue };
        for child in children.flatten() {
            // `DirEntry::file_type` does not follow links: only real directories are visited.
            if child.file_type().is_ok_and(|file_type| file_type.is_dir()) {
                pending.push(child.path());
            }
        }
    }
}

/// Sets a directory's mode without following a link in its place.
fn set_directory_mode(path: &Path, mode: u32) -> io::Result<()> {
    let directory = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
        .open(path)?;
    directory.set_permissions(Permissions::from_mode(mode))
}

fn unpack_into(
    input: impl Read,
    root: &Path,
    limits: &ArchiveLimits,
) -> Result<ArchiveStats, ArchiveError> {
    let budget = Rc::new(ReadBudget::default());
    let reader =
        BudgetedReader { inner: GzDecoder::new(BufReader::new(input)), budget: Rc::clone(&budget) };
    let mut archive = tar::Archive::new(reader);
    let mut unpacker = Unpacker::new(root, limits);
    let mut entries = archive.entries().map_err(corrupt)?;
    loop {
        // The parser reads headers, extension records and the padding of the previous
        // entry under a small budget; entry data is bounded by the size limit instead.
        budget.allow(MAX_HEADER_BYTES);
        let next = entries.next();
        budget.allow_all();
        match next {
            None => break,
            Some(Err(error)) => {
                return Err(budget
                    .refusal(error, || ArchiveError::OversizedHeader { limit: MAX_HEADER_BYTES }));
            }
            Some(Ok(mut entry)) => unpacker.entry(&mut entry)?,
        }
    }

    // Read on past the end-of-archive marker to the end of the gzip stream, whose
    // checksum is verified there, and then to the end of the input.
    budget.allow(MAX_TRAILER_BYTES);
    let mut reader = archive.into_inner();
    io::copy(&mut reader, &mut io::sink())
        .map_err(|error| budget.refusal(error, || ArchiveError::TrailingData))?;
    let mut rest = reader.inner.into_inner();
    if !rest.fill_buf().map_err(corrupt)?.is_empty() {
        return Err(ArchiveError::TrailingData);
    }
    unpacker.finish()
}

/// How far the tar parser may read, shared between the reader it owns and the loop that
/// asks it for entries.
#[derive(Default)]
struct ReadBudget {
    position: Cell<u64>,
    limit: Cell<u64>,
    exceeded: Cell<bool>,
}

impl ReadBudget {
    fn allow(&self, bytes: u64) {
        self.limit.set(self.position.get().saturating_add(bytes));
    }

    fn allow_all(&self) {
        self.limit.set(u64::MAX);
    }

    /// The error for a failed read: `exceeded` when the budget was the cause.
    fn refusal(&self, error: io::Error, exceeded: impl FnOnce() -> ArchiveError) -> ArchiveError {
        if self.exceeded.get() { exceeded() } else { corrupt(error) }
    }
}

struct BudgetedReader<R> {
    inner: R,
    budget: Rc<ReadBudget>,
}

impl<R: Read> Read for BudgetedReader<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if buffer.is_empty() {
            return Ok(0);
        }
        let allowed = self.budget.limit.get().saturating_sub(self.budget.position.get());
        if allowed == 0 {
            // Exactly at the limit is fine if the stream ends there.
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            self.budget.exceeded.set(true);
            return Err(io::Error::new(io::ErrorKind::InvalidData, "archive read budget exceeded"));
        }
        let wanted = usize::try_from(allowed).unwrap_or(usize::MAX).min(buffer.len());
        let read = self.inner.read(&mut buffer[..wanted])?;
        self.budget.position.set(self.budget.position.get() + read as u64);
        Ok(read)
    }
}

/// The state of one unpacking: what it has created, what it must still do at the end.
struct Unpacker<'a> {
    root: &'a Path,
    limits: &'a ArchiveLimits,
    stats: ArchiveStats,
    /// Entries seen, including those that create nothing (pax global headers).
    seen_entries: u64,
    /// Symbolic links to create once every file and directory is written, so that no
    /// entry is ever written through one. Never holds a link below another.
    links: BTreeMap<PathBuf, PathBuf>,
    /// Directories whose archived mode would stop us from writing into them (no owner
    /// write or search bit): set last, deepest first.
    deferred_modes: Vec<(PathBuf, u32)>,
    /// Bytes of paths and targets held in `links` and `deferred_modes`.
    remembered_bytes: usize,
    /// The parent directory of the previous entry, known to be a real directory.
    checked_parent: Option<PathBuf>,
    buffer: Vec<u8>,
}

impl<'a> Unpacker<'a> {
    fn new(root: &'a Path, limits: &'a ArchiveLimits) -> Self {
        Self {
            root,
            limits,
            stats: ArchiveStats::default(),
            seen_entries: 0,
            links: BTreeMap::new(),
            deferred_modes: Vec::new(),
            remembered_bytes: 0,
            checked_parent: None,
            buffer: vec![0; COPY_BUFFER_BYTES],
        }
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ArchiveError> {
        self.seen_entries += 1;
        if self.seen_entries > self.limits.max_entries {
            return Err(ArchiveError::TooManyEntries { limit: self.limits.max_entries });
        }
        let entry_type = entry.header().entry_type();
        // A pax global header holds defaults for the entries after it (`git archive`
        // writes the commit id there); the tar crate does not apply them, nor do we.
        if entry_type.is_pax_global_extensions() {
            return Ok(());
        }
        let raw_path = entry.path_bytes().into_owned();
        let shown = shown(&raw_path);
        let kind = match entry_type {
            EntryType::Regular | EntryType::Directory | EntryType::Symlink => None,
            EntryType::Link => Some("hard link".to_owned()),
            EntryType::Char => Some("character device".to_owned()),
            EntryType::Block => Some("block device".to_owned()),
            EntryType::Fifo => Some("fifo".to_owned()),
            EntryType::Continuous => Some("contiguous file".to_owned()),
            EntryType::GNUSparse => Some("sparse file".to_owned()),
            EntryType::GNULongName | EntryType::GNULongLink | EntryType::XHeader => {
                Some("stray extension header".to_owned())
            }
            other => Some(format!("entry of unknown type {:?}", char::from(other.as_byte()))),
        };
        if let Some(kind) = kind {
            return Err(ArchiveError::Unsupported { path: shown, kind });
        }
        let relative = entry_path(&raw_path, &shown)?;
        let mode = entry.header().mode().map_err(corrupt)? & PERMISSION_BITS;
        match entry_type {
            EntryType::Directory => self.make_directory(relative, &shown, mode),
            EntryType::Symlink => self.declare_link(entry, relative, shown),
            _ => self.write_file(entry, &relative, &shown, mode),
        }
    }

    /// Refuses an entry at the path of a declared link, or beneath one.
    fn check_not_on_a_link(&self, relative: &Path, shown: &str) -> Result<(), ArchiveError> {
        if self.links.contains_key(relative) {
            return Err(ArchiveError::Duplicate { path: shown.to_owned() });
        }
        if let Some(link) = link_above(relative, &self.links) {
            return Err(ArchiveError::ThroughSymlink { path: shown.to_owned(), link: lossy(link) });
        }
        Ok(())
    }

    fn remember(&mut self, bytes: usize) -> Result<(), ArchiveError> {
        self.remembered_bytes += bytes;
        if self.remembered_bytes > MAX_REMEMBERED_BYTES {
            return Err(ArchiveError::TooMuchToRemember { limit: MAX_REMEMBERED_BYTES });
        }
        Ok(())
    }

    /// Makes sure the parent of `relative` is a real directory, creating it and its
    /// missing ancestors: an archive need not list them. Only the nearest existing
    /// ancestor needs a look: until `finish` the tree holds no link at all (links are
    /// created last), and `finish` never creates one above another entry.
    fn prepare_parent(&mut self, relative: &Path, shown: &str) -> Result<(), ArchiveError> {
        let Some(parent) = relative.parent().filter(|parent| !parent.as_os_str().is_empty()) else {
            return Ok(());
        };
        if self.checked_parent.as_deref() == Some(parent) {
            return Ok(());
        }
        let mut missing = Vec::new();
        for ancestor in parent.ancestors().take_while(|a| !a.as_os_str().is_empty()) {
            match fs::symlink_metadata(self.root.join(ancestor)) {
                Ok(metadata) if metadata.is_dir() => break,
                Ok(metadata) if metadata.file_type().is_symlink() => {
                    let link = lossy(ancestor);
                    return Err(ArchiveError::ThroughSymlink { path: shown.to_owned(), link });
                }
                Ok(_) => {
                    let parent = lossy(ancestor);
                    return Err(ArchiveError::ParentNotDirectory {
                        path: shown.to_owned(),
                        parent,
                    });
                }
                // Missing, or below a file (`NotADirectory`): a higher ancestor says which.
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                    ) =>
                {
                    missing.push(ancestor);
                }
                Err(error) => {
                    return Err(io_error(format!("cannot inspect the parent of {shown:?}"))(error));
                }
            }
        }
        for ancestor in missing.into_iter().rev() {
            DirBuilder::new()
                .mode(DIRECTORY_MODE)
                .create(self.root.join(ancestor))
                .map_err(io_error(format!("cannot create the parent of {shown:?}")))?;
        }
        self.checked_parent = Some(parent.to_path_buf());
        Ok(())
    }

    fn make_directory(
        &mut self,
        relative: PathBuf,
        shown: &str,
        mode: u32,
    ) -> Result<(), ArchiveError> {
        self.check_not_on_a_link(&relative, shown)?;
        self.prepare_parent(&relative, shown)?;
        let destination = self.root.join(&relative);
        match DirBuilder::new().mode(DIRECTORY_MODE).create(&destination) {
            Ok(()) => {}
            // Listed twice, or created earlier as the parent of another entry.
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                let existing = fs::symlink_metadata(&destination)
                    .map_err(io_error(format!("cannot inspect {shown:?}")))?;
                if !existing.is_dir() {
                    return Err(ArchiveError::Duplicate { path: shown.to_owned() });
                }
            }
            Err(error) => return Err(io_error(format!("cannot create {shown:?}"))(error)),
        }
        if mode & 0o700 == 0o700 {
            set_directory_mode(&destination, mode)
                .map_err(io_error(format!("cannot set the mode of {shown:?}")))?;
        } else {
            self.remember(relative.as_os_str().len())?;
            self.deferred_modes.push((relative, mode));
        }
        self.stats.entries += 1;
        Ok(())
    }

    fn write_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        relative: &Path,
        shown: &str,
        mode: u32,
    ) -> Result<(), ArchiveError> {
        self.check_not_on_a_link(relative, shown)?;
        self.prepare_parent(relative, shown)?;
        // `create_new` refuses any existing path, a dangling link included, and
        // O_NOFOLLOW says so twice. Private until written; the archived mode comes after.
        let mut file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.root.join(relative))
        {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                return Err(ArchiveError::Duplicate { path: shown.to_owned() });
            }
            Err(error) => return Err(io_error(format!("cannot create {shown:?}"))(error)),
        };
        let mut written = 0u64;
        loop {
            let read = match entry.read(&mut self.buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(corrupt(error)),
            };
            // Counted before writing: the limit is never passed on disk, whatever the
            // header claimed.
            self.stats.bytes += read as u64;
            if self.stats.bytes > self.limits.max_total_bytes {
                return Err(ArchiveError::TooLarge {
                    path: shown.to_owned(),
                    limit: self.limits.max_total_bytes,
                });
            }
            file.write_all(&self.buffer[..read])
                .map_err(io_error(format!("cannot write {shown:?}")))?;
            written += read as u64;
        }
        if written != entry.size() {
            return Err(corrupt(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the archive ends inside {shown:?}"),
            )));
        }
        file.set_permissions(Permissions::from_mode(mode))
            .map_err(io_error(format!("cannot set the mode of {shown:?}")))?;
        let modified =
            entry.header().mtime().ok().and_then(|seconds| {
                SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(seconds))
            });
        if let Some(modified) = modified {
            file.set_modified(modified)
                .map_err(io_error(format!("cannot set the modification time of {shown:?}")))?;
        }
        self.stats.entries += 1;
        Ok(())
    }

    fn declare_link<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        relative: PathBuf,
        shown: String,
    ) -> Result<(), ArchiveError> {
        self.check_not_on_a_link(&relative, &shown)?;
        // A link declared above an earlier one: the earlier one would be created
        // through it. Links sort by components, so one below `relative` comes next.
        let next = self.links.range::<Path, _>((Excluded(relative.as_path()), Unbounded)).next();
        if let Some((below, _)) = next.filter(|(below, _)| below.starts_with(&relative)) {
            return Err(ArchiveError::ThroughSymlink { path: lossy(below), link: shown });
        }
        let target = entry.link_name_bytes().map(|bytes| bytes.into_owned()).unwrap_or_default();
        if target.is_empty() || target.len() >= MAX_PATH_BYTES || target.contains(&0) {
            return Err(ArchiveError::InvalidLinkTarget {
                path: shown,
                target: self::shown(&target),
            });
        }
        let target = PathBuf::from(OsString::from_vec(target));
        // The archive's other links are not all known yet: this is the lexical check,
        // which refuses most escapes at once; `finish` repeats it with all of them.
        check_link_lexically(&relative, &target)
            .map_err(|problem| problem.unpacking_refusal(shown, &target))?;
        self.remember(relative.as_os_str().len() + target.as_os_str().len())?;
        self.links.insert(relative, target);
        Ok(())
    }

    /// Creates the links, then sets the restrictive directory modes.
    fn finish(mut self) -> Result<ArchiveStats, ArchiveError> {
        let mut steps_left = MAX_LINK_STEPS;
        for (path, target) in &self.links {
            check_link_target(path, target, &self.links, &mut steps_left)
                .map_err(|problem| problem.unpacking_refusal(lossy(path), target))?;
        }
        let links = std::mem::take(&mut self.links);
        for (path, target) in &links {
            let shown = lossy(path);
            self.prepare_parent(path, &shown)?;
            match std::os::unix::fs::symlink(target, self.root.join(path)) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(ArchiveError::Duplicate { path: shown });
                }
                Err(error) => {
                    return Err(io_error(format!("cannot create the link {shown:?}"))(error));
                }
            }
            self.stats.entries += 1;
        }
        // Children before parents: a parent without the search bit would hide them.
        self.deferred_modes.sort_by_key(|(path, _)| Reverse(path.components().count()));
        for (path, mode) in &self.deferred_modes {
            set_directory_mode(&self.root.join(path), *mode)
                .map_err(io_error(format!("cannot set the mode of {:?}", lossy(path))))?;
        }
        Ok(self.stats)
    }
}

/// An entry's name for messages: lossy, and cut when absurdly long.
fn shown(raw: &[u8]) -> String {
    const SHOWN_BYTES: usize = 512;
    let text = String::from_utf8_lossy(raw);
    if text.len() <= SHOWN_BYTES {
        return text.into_owned();
    }
    let mut end = SHOWN_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// The path of an entry, relative to the workspace, or the rule it breaks. `.`
/// components are dropped; any `..` is refused, even one that would stay inside.
fn entry_path(raw: &[u8], shown: &str) -> Result<PathBuf, ArchiveError> {
    let path = || shown.to_owned();
    if raw.is_empty() {
        return Err(ArchiveError::EmptyPath { path: path() });
    }
    if raw.len() > MAX_PATH_BYTES {
        return Err(ArchiveError::PathTooLong { path: path() });
    }
    if raw.contains(&0) {
        return Err(ArchiveError::NulInPath { path: path() });
    }
    if raw.starts_with(b"/") {
        return Err(ArchiveError::AbsolutePath { path: path() });
    }
    // Harmless names on Linux, but an archive carrying them was not made by `pack` on a
    // launcher, and the workspace may be read by tools on other systems.
    let drive = raw.len() >= 2 && raw[0].is_ascii_alphabetic() && raw[1] == b':';
    if drive || raw.starts_with(b"\\") {
        return Err(ArchiveError::WindowsPrefix { path: path() });
    }
    let mut relative = PathBuf::new();
    for component in Path::new(OsStr::from_bytes(raw)).components() {
        match component {
            Component::Normal(name) => relative.push(name),
            Component::CurDir => {}
            Component::ParentDir => return Err(ArchiveError::PathLeavesWorkspace { path: path() }),
            Component::RootDir | Component::Prefix(_) => {
                return Err(ArchiveError::AbsolutePath { path: path() });
            }
        }
    }
    if relative.as_os_str().is_empty() {
        return Err(ArchiveError::EmptyPath { path: path() });
    }
    Ok(relative)
}

/// The link among `links` that is a proper ancestor of `path`, if any. `links` never
/// holds a link below another, and sorted by components a directory's subtree directly
/// follows it: so the only candidate is the last link before `path`. One lookup instead
/// of one per ancestor, which matters for deep hostile paths.
fn link_above<'m>(path: &Path, links: &'m BTreeMap<PathBuf, PathBuf>) -> Option<&'m Path> {
    let (candidate, _) = links.range::<Path, _>((Unbounded, Excluded(path))).next_back()?;
    (path.starts_with(candidate) && candidate != path).then_some(candidate.as_path())
}

/// Why a link target is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkProblem {
    Absolute,
    LeavesWorkspace,
    /// More than 40 links, or a path longer than PATH_MAX, on the way.
    TooComplex,
    /// The budget of steps for all the archive's links is spent.
    BudgetSpent,
}

impl LinkProblem {
    fn unpacking_refusal(self, path: String, target: &Path) -> ArchiveError {
        let target = lossy(target);
        match self {
            Self::Absolute => ArchiveError::AbsoluteLinkTarget { path, target },
            Self::LeavesWorkspace => ArchiveError::LinkLeavesWorkspace { path, target },
            Self::TooComplex => ArchiveError::LinkTooComplex { path, target },
            Self::BudgetSpent => ArchiveError::LinksTooComplex { limit: MAX_LINK_STEPS },
        }
    }

    fn packing_refusal(self, path: &Path, target: &Path) -> ArchiveError {
        let rule = match self {
            Self::Absolute => "absolute",
            Self::LeavesWorkspace => "outside the workspace",
            Self::TooComplex => "reached through more than 40 links or a too long path",
            Self::BudgetSpent => "part of link chains too long to check",
        };
        ArchiveError::UnpackableLink { path: lossy(path), target: lossy(target), rule }
    }
}

/// The lexical check: the target followed from the link's own directory, no other link
/// considered. Its cost is bounded by the target's length alone.
fn check_link_lexically(link: &Path, target: &Path) -> Result<(), LinkProblem> {
    let mut steps_left = u64::MAX;
    check_link_target(link, target, &BTreeMap::new(), &mut steps_left)
}

/// Follows the target of the link at `link` the way the kernel would in the unpacked
/// tree: from the link's own directory, component by component, through any of `links`
/// met on the way. No entry lies below a link (`check_not_on_a_link`), so apart from
/// `links` every component is a real directory or does not exist yet, and this walk is
/// exact. With no `links` it is the plain lexical check. Each component walked spends
/// one of `steps_left`, shared by all the links of an archive: the kernel bounds one
/// resolution (40 links), not the work of checking a million of them.
fn check_link_target(
    link: &Path,
    target: &Path,
    links: &BTreeMap<PathBuf, PathBuf>,
    steps_left: &mut u64,
) -> Result<(), LinkProblem> {
    if target.has_root() {
        return Err(LinkProblem::Absolute);
    }
    let mut here = link.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut pending: Vec<Component<'_>> = target.components().rev().collect();
    // The kernel counts the link being followed itself.
    let mut hops = 1;
    while let Some(component) = pending.pop() {
        *steps_left = steps_left.checked_sub(1).ok_or(LinkProblem::BudgetSpent)?;
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !here.pop() {
                    return Err(LinkProblem::LeavesWorkspace);
                }
            }
            Component::Normal(name) => {
                here.push(name);
                if here.as_os_str().len() > MAX_PATH_BYTES {
                    return Err(LinkProblem::TooComplex);
                }
                if let Some(next) = links.get(&here) {
                    hops += 1;
                    if hops > MAX_LINK_HOPS {
                        return Err(LinkProblem::TooComplex);
                    }
                    if next.has_root() {
                        return Err(LinkProblem::Absolute);
                    }
                    // The link's own name is replaced by where it leads, from its directory.
                    here.pop();
                    pending.extend(next.components().rev());
                }
            }
            Component::RootDir | Component::Prefix(_) => return Err(LinkProblem::Absolute),
        }
    }
    Ok(())
}

#[cfg(test)]
mod integration_tests;

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed unpacking's leftovers are as deep as the archive made them: opening them
    /// for removal walks them without a stack frame per level.
    #[test]
    fn a_partial_tree_as_deep_as_paths_go_is_opened_for_removal_on_a_small_stack() {
        let root = tempfile::tempdir().unwrap();
        let deepest = gantry_testkit::fuzz::deep_tree(root.path());
        let mut directory = deepest.clone();
        while directory != root.path() {
            fs::set_permissions(&directory, Permissions::from_mode(0o500)).unwrap();
            directory.pop();
        }
        let tree = root.path().join("d");
        gantry_testkit::fuzz::on_small_stack(move || make_directories_writable(&tree));
        for directory in [&deepest, &root.path().join("d")] {
            let mode = fs::metadata(directory).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", directory.display());
        }
    }

    fn check_path(raw: &str, expect: Result<&str, &str>) {
        let actual = entry_path(raw.as_bytes(), raw);
        match (actual, expect) {
            (Ok(path), Ok(expected)) => assert_eq!(path, Path::new(expected), "{raw:?}"),
            (Err(error), Err(expected)) => assert_eq!(
                error.to_string(),
                format!("refused archive entry {raw:?}: {expected}"),
                "{raw:?}"
            ),
            (actual, expected) => panic!("{raw:?}: got {actual:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn entry_paths_are_relative_and_stay_inside() {
        check_path("a", Ok("a"));
        check_path("a/b/c.tf", Ok("a/b/c.tf"));
        check_path("./a//b/", Ok("a/b"));
        check_path(".terraform/providers", Ok(".terraform/providers"));
        check_path("a..b/..c", Ok("a..b/..c"));
        check_path("a/b:c", Ok("a/b:c"));

        check_path("", Err("its name is empty"));
        check_path(".", Err("its name is empty"));
        check_path("./", Err("its name is empty"));
        check_path("a\\b", Ok("a\\b"));
        check_path("/tmp/x", Err("its path is absolute"));
        check_path("//server/x", Err("its path is absolute"));
        check_path("../x", Err("its path leaves the workspace"));
        check_path("a/../../x", Err("its path leaves the workspace"));
        check_path("a/../b", Err("its path leaves the workspace"));
        check_path("a/..", Err("its path leaves the workspace"));
        check_path("C:\\x", Err("its path starts with a Windows drive or UNC prefix"));
        check_path("c:x", Err("its path starts with a Windows drive or UNC prefix"));
        check_path(
            "\\\\server\\share\\x",
            Err("its path starts with a Windows drive or UNC prefix"),
        );
        check_path("a\0b", Err("its name contains a NUL byte"));
    }

    fn links(pairs: &[(&str, &str)]) -> BTreeMap<PathBuf, PathBuf> {
        pairs.iter().map(|(link, target)| (PathBuf::from(link), PathBuf::from(target))).collect()
    }

    fn check_link(
        link: &str,
        target: &str,
        others: &[(&str, &str)],
        expect: Result<(), LinkProblem>,
    ) {
        let mut all = links(others);
        all.insert(PathBuf::from(link), PathBuf::from(target));
        let mut steps_left = MAX_LINK_STEPS;
        assert_eq!(
            check_link_target(Path::new(link), Path::new(target), &all, &mut steps_left),
            expect,
            "{link} -> {target} with {others:?}"
        );
    }

    #[test]
    fn link_targets_are_followed_like_the_kernel_would() {
        use LinkProblem::*;
        check_link("l", "a", &[], Ok(()));
        check_link("l", ".", &[], Ok(()));
        check_link("l", "", &[], Ok(()));
        check_link("d/l", "../a", &[], Ok(()));
        check_link("d/e/l", "../../a/./b", &[], Ok(()));
        check_link("d/l", "../d/../x", &[], Ok(()));
        check_link("l", "/etc", &[], Err(Absolute));
        check_link("l", "..", &[], Err(LeavesWorkspace));
        check_link("l", "../../x", &[], Err(LeavesWorkspace));
        check_link("d/l", "../../x", &[], Err(LeavesWorkspace));
        check_link("d/l", "x/../../..", &[], Err(LeavesWorkspace));

        // Chains: each link alone stays inside, together they leave.
        check_link("b", "a/..", &[("a", ".")], Err(LeavesWorkspace));
        check_link("b", "a/../..", &[("a", "d/e")], Ok(()));
        check_link("b", "a/../../..", &[("a", "d/e")], Err(LeavesWorkspace));
        check_link("d/b", "../a/..", &[("a", "d")], Ok(()));
        check_link("d/b", "../a/../..", &[("a", "d")], Err(LeavesWorkspace));
        check_link("b", "a", &[("a", "c"), ("c", "..")], Err(LeavesWorkspace));
        check_link("b", "a/x", &[("a", "/etc")], Err(Absolute));
        check_link("a", "b", &[("b", "a")], Err(TooComplex));
        check_link("a", "a/x", &[], Err(TooComplex));
        let chain: Vec<(String, String)> =
            (0..MAX_LINK_HOPS).map(|i| (format!("l{i}"), format!("l{}", i + 1))).collect();
        let chain: Vec<(&str, &str)> =
            chain.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        check_link("start", "l0", &chain, Err(TooComplex));
        check_link("start", "l1", &chain, Ok(()));
        // Paths longer than the kernel would follow.
        let long = "x".repeat(250);
        let deep = format!("{long}/{long}/{long}/{long}");
        check_link("g", &format!("{deep}/{deep}/{deep}/{deep}/{deep}"), &[], Err(TooComplex));
        check_link("g", &format!("{deep}/../../../../a"), &[], Ok(()));
    }

    #[test]
    fn the_steps_of_all_link_checks_are_bounded() {
        let links = links(&[("a", "b/c/d"), ("e", "a/../../../..")]);
        let mut steps_left = 3;
        let result = check_link_target(Path::new("a"), Path::new("b/c/d"), &links, &mut steps_left);
        assert_eq!((result, steps_left), (Ok(()), 0));
        let mut steps_left = 100;
        let result =
            check_link_target(Path::new("e"), &links[Path::new("e")], &links, &mut steps_left);
        assert_eq!(result, Err(LinkProblem::LeavesWorkspace));
        let mut steps_left = 5;
        let result =
            check_link_target(Path::new("x"), Path::new("a/a/a/a/a/a"), &links, &mut steps_left);
        assert_eq!(result, Err(LinkProblem::BudgetSpent));
        assert_eq!(
            LinkProblem::BudgetSpent.unpacking_refusal("x".into(), Path::new("y")).to_string(),
            "refused archive: checking its symbolic links takes more than 1048576 steps"
        );
    }

    #[test]
    fn a_link_above_an_entry_is_found_with_one_lookup() {
        // "a!b" and "a.b" sort between "a" and "a/..." byte-wise, not by components.
        let declared =
            links(&[("a", "sub"), ("a!b", "s"), ("a.b", "s"), ("x/y", "z"), ("x/y0", "z")]);
        assert_eq!(link_above(Path::new("a/file"), &declared), Some(Path::new("a")));
        assert_eq!(link_above(Path::new("a/z/z/z"), &declared), Some(Path::new("a")));
        assert_eq!(link_above(Path::new("x/y/z/w"), &declared), Some(Path::new("x/y")));
        assert_eq!(link_above(Path::new("x/y0/w"), &declared), Some(Path::new("x/y0")));
        assert_eq!(link_above(Path::new("a"), &declared), None);
        assert_eq!(link_above(Path::new("ab/c"), &declared), None);
        assert_eq!(link_above(Path::new("a!/c"), &declared), None);
        assert_eq!(link_above(Path::new("x/file"), &declared), None);
        assert_eq!(link_above(Path::new("x/y1/file"), &declared), None);
        assert_eq!(link_above(Path::new("0"), &declared), None);
    }

    #[test]
    fn long_names_are_refused_and_cut_in_messages() {
        let long = "a/".repeat(2049);
        let error = entry_path(long.as_bytes(), &shown(long.as_bytes())).unwrap_err();
        let message = error.to_string();
        assert!(message.ends_with(r#"...": its path is longer than 4096 bytes"#), "{message}");
        assert!(message.len() < 600, "{message}");
        assert!(entry_path("a/".repeat(2048).as_bytes(), "fits").is_ok());
        assert_eq!(shown("é".repeat(300).as_bytes()), format!("{}...", "é".repeat(256)));
        assert_eq!(shown(b"caf\xe9"), "caf\u{fffd}");
    }

    #[test]
    fn limits_come_from_the_environment() {
        let env = |pairs: &[(&str, &str)]| -> Env {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        assert_eq!(
            ArchiveLimits::from_env(&env(&[])),
            Ok(ArchiveLimits {
                max_total_bytes: 10 << 30,
                max_entries: 1_000_000,
                ..ArchiveLimits::default()
            })
        );
        assert_eq!(ArchiveLimits::default(), ArchiveLimits::from_env(&env(&[])).unwrap());
        assert_eq!(
            ArchiveLimits::from_env(&env(&[
                (options::WORKSPACE_MAX_SIZE, "500MB"),
                (options::WORKSPACE_MAX_FILES, "2000"),
            ])),
            Ok(ArchiveLimits {
                max_total_bytes: 500_000_000,
                max_entries: 2000,
                ..ArchiveLimits::default()
            })
        );
        assert_eq!(ArchiveLimits::default().max_state_bytes, 512 << 20);
        assert_eq!(
            ArchiveLimits::from_env(&env(&[(options::STATE_MAX_SIZE, "1MiB")]))
                .map(|limits| limits.max_state_bytes),
            Ok(1 << 20)
        );
        let error =
            ArchiveLimits::from_env(&env(&[(options::WORKSPACE_MAX_SIZE, "10")])).unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"GANTRY_LAUNCHER_WORKSPACE_MAX_SIZE="10": expected a size like 10GiB or 500MB"#
        );
        let error =
            ArchiveLimits::from_env(&env(&[(options::WORKSPACE_MAX_FILES, "0")])).unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"GANTRY_LAUNCHER_WORKSPACE_MAX_FILES="0": expected a number of files and directories like 1000000"#
        );
    }

    #[test]
    fn what_is_remembered_until_the_end_is_bounded() {
        let limits = ArchiveLimits::default();
        let mut unpacker = Unpacker::new(Path::new("/nonexistent"), &limits);
        unpacker.remember(MAX_REMEMBERED_BYTES).unwrap();
        let error = unpacker.remember(1).unwrap_err();
        assert_eq!(
            error.to_string(),
            "refused archive: its symbolic links and restricted directories need more than 67108864 bytes of memory"
        );
    }

    #[test]
    fn the_read_budget_allows_exactly_its_bytes() {
        let budget = Rc::new(ReadBudget::default());
        let mut reader = BudgetedReader { inner: &[7u8; 10][..], budget: Rc::clone(&budget) };
        budget.allow(10);
        let mut all = Vec::new();
        reader.read_to_end(&mut all).unwrap();
        assert_eq!(all.len(), 10);
        assert!(!budget.exceeded.get());

        let mut reader = BudgetedReader { inner: &[7u8; 10][..], budget: Rc::clone(&budget) };
        budget.position.set(0);
        budget.allow(9);
        assert!(reader.read_to_end(&mut Vec::new()).is_err());
        assert!(budget.exceeded.get());
    }
}
