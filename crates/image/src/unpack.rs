//! Applies an image's layers, in order, to a fresh directory — with every layer treated as
//! hostile. What is refused is skipped and counted ([`UnpackReport`]), never written
//! elsewhere: a path is normalized inside the root (a `..` above it is refused), every parent
//! is resolved inside the root and every final component is created by name with no symlink
//! followed, hard links must name a regular file inside the root, device nodes, fifos and
//! sockets are never made, setuid and setgid bits are dropped, modes are made world-readable
//! (the instance runs as an unmapped uid) and nothing is chowned (all is the unpacker's, root).
//! Whiteouts (`.wh.<name>`, `.wh..wh..opq`) remove lower layers' content and never appear.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use ignite_builder::oci::OciLayout;
use rustix::fs::{FileType, Mode, OFlags};
use sha2::{Digest as _, Sha256};
use tar::EntryType;

use crate::inroot::{self, InRoot, is_dir, join, lstat, open_dir_at, remove};
use crate::{Image, ImageError};

/// The deepest entry path unpacked (components); deeper ones are refused.
const MAX_DEPTH: usize = 128;

/// Caps on what one image may unpack to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// The most bytes of file content, all layers together (a decompression bomb stops here).
    pub max_bytes: u64,
    /// The most tar entries, all layers together.
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_bytes: 8 << 30,
            max_entries: 500_000,
        }
    }
}

/// What an unpack did, and what it refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackReport {
    pub layers: usize,
    /// Tar entries read, all layers together.
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Whiteouts applied.
    pub whiteouts: u64,
    /// Entries whose path climbs above the root, is too deep, or whose parent is not a
    /// directory inside the root.
    pub refused_paths: u64,
    /// Device nodes, fifos and sockets.
    pub refused_special: u64,
    /// Hard links whose target is not a regular file inside the root.
    pub refused_links: u64,
    /// Entries of a type that is not unpacked (e.g. a tape volume header).
    pub refused_other: u64,
    /// Files and directories whose setuid or setgid bit was dropped.
    pub setid_cleared: u64,
}

impl UnpackReport {
    /// Entries refused, for any reason.
    pub fn refused(&self) -> u64 {
        self.refused_paths + self.refused_special + self.refused_links + self.refused_other
    }
}

/// The normalized components of an entry's path inside the root: `/etc/x` is `etc/x`, `a/../b`
/// is `b`; `None` if a `..` climbs above the root.
pub(crate) fn normalize(path: &Path) -> Option<Vec<OsString>> {
    let mut out: Vec<OsString> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::ParentDir => {
                out.pop()?;
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Some(out)
}

/// A mode as the instance may use it: the owner's bits kept (but no setuid, setgid or sticky
/// bit), group and others given the owner's read and execute bits and never a write bit.
fn normalize_mode(mode: u32) -> u32 {
    let owner = mode & 0o700;
    let r = if owner & 0o400 != 0 { 0o044 } else { 0 };
    let x = if owner & 0o100 != 0 { 0o011 } else { 0 };
    owner | r | x
}

/// Applies `image`'s layers from `layout`, in order, into `dest` (created if missing; it should
/// be empty), then makes the mount points the sandbox needs: `proc`, `dev`, `tmp` as empty
/// directories, `etc/hosts` and `etc/resolv.conf` as empty regular files (none of them, nor
/// `etc`, a symlink), and the image's WORKDIR.
pub fn unpack(
    layout: &OciLayout,
    image: &Image,
    dest: &Path,
    limits: &UnpackLimits,
) -> Result<UnpackReport, ImageError> {
    std::fs::create_dir_all(dest)
        .map_err(|e| ImageError::io("could not create the root at", dest, e))?;
    let root =
        InRoot::open(dest).map_err(|e| ImageError::io("could not open the root", dest, e))?;
    let mut report = UnpackReport::default();
    for layer in &image.layers {
        let path = layout.blob_path(&layer.digest);
        let file = std::fs::File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                ImageError::NotStored {
                    digest: image.manifest_digest.clone(),
                    missing: layer.digest.clone(),
                }
            } else {
                ImageError::io("could not read the layer", &path, e)
            }
        })?;
        let mut hashing = Hashing {
            inner: file,
            hash: Sha256::new(),
        };
        apply_layer(&root, &mut hashing, &layer.digest, limits, &mut report)?;
        // The tar may end before its blob does: hash the rest too.
        io::copy(&mut hashing, &mut io::sink())
            .map_err(|e| ImageError::io("could not read the layer", &path, e))?;
        let actual = format!("sha256:{:x}", hashing.hash.finalize());
        if actual != layer.digest {
            return Err(ImageError::DigestMismatch {
                what: "stored layer".into(),
                expected: layer.digest.clone(),
                actual,
            });
        }
        report.layers += 1;
    }
    finish_root(&root)
        .map_err(|e| ImageError::io("could not make the mount points in", dest, e))?;
    if let Some(workdir) = image.config.working_dir.as_deref() {
        let rel = normalize(Path::new(workdir)).unwrap_or_default();
        if root.dir(&rel, true).is_err() {
            return Err(ImageError::BadWorkdir {
                workdir: workdir.into(),
            });
        }
    }
    if report.refused() > 0 || report.setid_cleared > 0 {
        tracing::warn!(
            image = %image.manifest_digest,
            refused_paths = report.refused_paths,
            refused_special = report.refused_special,
            refused_links = report.refused_links,
            refused_other = report.refused_other,
            setid_cleared = report.setid_cleared,
            "the image's layers held entries that were refused"
        );
    }
    Ok(report)
}

/// Hashes what is read through it.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

fn apply_layer(
    root: &InRoot,
    blob: &mut impl Read,
    digest: &str,
    limits: &UnpackLimits,
    report: &mut UnpackReport,
) -> Result<(), ImageError> {
    let bad = |source: io::Error| ImageError::BadLayer {
        digest: digest.into(),
        source,
    };
    let mut reader = BufReader::with_capacity(64 << 10, blob);
    // The bytes say how a layer is compressed (registries mislabel layers).
    let magic = reader.fill_buf().map_err(bad)?;
    let decoded: Box<dyn Read + '_> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(reader))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(reader).map_err(bad)?)
    } else {
        Box::new(reader)
    };
    let mut archive = tar::Archive::new(decoded);
    // Paths this layer made: a whiteout in it applies to lower layers only.
    let mut made: HashSet<PathBuf> = HashSet::new();
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            continue;
        }
        report.entries += 1;
        if report.entries > limits.max_entries {
            return Err(ImageError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
        let raw = entry.path_bytes().into_owned();
        let Some(rel) = normalize(Path::new(OsStr::from_bytes(&raw))) else {
            report.refused_paths += 1;
            continue;
        };
        let Some((name, parent)) = rel.split_last() else {
            // The root itself: its mode is the platform's.
            if !kind.is_dir() {
                report.refused_paths += 1;
            }
            continue;
        };
        if rel.len() > MAX_DEPTH {
            report.refused_paths += 1;
            continue;
        }
        let name_bytes = name.as_bytes();
        if let Some(target) = name_bytes.strip_prefix(b".wh.") {
            apply_whiteout(root, parent, target, &made).map_err(bad)?;
            report.whiteouts += 1;
            continue;
        }
        let dir = match root.dir(parent, true) {
            Ok(fd) => fd,
            Err(e) if refuses_path(&e) => {
                report.refused_paths += 1;
                continue;
            }
            Err(e) => return Err(bad(e)),
        };
        let mode = entry.header().mode().unwrap_or(0o644);
        let mtime = entry.header().mtime().unwrap_or(0);
        if mode & 0o6000 != 0 && (kind.is_file() || kind.is_dir()) {
            report.setid_cleared += 1;
        }
        let dir = dir.as_fd();
        match kind {
            EntryType::Directory => make_dir(dir, name, mode).map_err(bad)?,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let budget = limits.max_bytes.saturating_sub(report.bytes);
                let written =
                    write_file(dir, name, mode, mtime, &mut entry, budget).map_err(bad)?;
                report.bytes += written;
                if report.bytes > limits.max_bytes {
                    return Err(ImageError::TooLarge {
                        limit: limits.max_bytes,
                    });
                }
            }
            EntryType::Symlink => {
                let Some(target) = entry.link_name_bytes().filter(|t| !t.is_empty()) else {
                    report.refused_links += 1;
                    continue;
                };
                remove(dir, name).map_err(bad)?;
                rustix::fs::symlinkat(OsStr::from_bytes(&target), dir, name.as_os_str())
                    .map_err(|e| bad(e.into()))?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .and_then(|t| normalize(Path::new(OsStr::from_bytes(&t))));
                match target {
                    Some(target) if hard_link(root, &target, dir, name).map_err(bad)? => {}
                    _ => {
                        report.refused_links += 1;
                        continue;
                    }
                }
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                report.refused_special += 1;
                continue;
            }
            _ => {
                report.refused_other += 1;
                continue;
            }
        }
        // Its parents hold this layer's content too (an opaque whiteout later keeps them).
        for depth in 1..=rel.len() {
            made.insert(join(&rel[..depth]));
        }
    }
    Ok(())
}

/// Whether an error resolving an entry's parent means the entry leads nowhere inside the root
/// (its parent is a file, a dangling or looping symlink, a name too long), not a failure of
/// the unpacker.
fn refuses_path(e: &io::Error) -> bool {
    use rustix::io::Errno;
    let Some(code) = e.raw_os_error() else {
        return false;
    };
    [
        Errno::NOTDIR,
        Errno::LOOP,
        Errno::NOENT,
        Errno::XDEV,
        Errno::NAMETOOLONG,
        Errno::EXIST,
    ]
    .iter()
    .any(|errno| errno.raw_os_error() == code)
}

fn make_dir(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    let existing = lstat(dir, Path::new(name))?;
    if !existing.as_ref().is_some_and(is_dir) {
        remove(dir, name)?;
        rustix::fs::mkdirat(dir, name, Mode::from(0o700))?;
    }
    let fd = open_dir_at(dir, name)?;
    rustix::fs::fchmod(&fd, Mode::from(normalize_mode(mode)))?;
    Ok(())
}

/// Writes a regular file from a tar entry, at most `budget` bytes (one more to tell that it
/// was over); returns the bytes written.
fn write_file(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    mode: u32,
    mtime: u64,
    entry: &mut impl Read,
    budget: u64,
) -> io::Result<u64> {
    remove(dir, name)?;
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from(0o600),
    )?;
    let mut file = std::fs::File::from(fd);
    let written = io::copy(&mut entry.take(budget.saturating_add(1)), &mut file)?;
    file.flush()?;
    rustix::fs::fchmod(&file, Mode::from(normalize_mode(mode)))?;
    // The entry's modification time, kept: what checks a file against another by it (Python's
    // byte-code caches against their sources) finds the image as it was built.
    file.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime))?;
    Ok(written)
}

/// Links `name` in `dir` to the regular file at `target` (inside the root); `false` if
/// `target` is not a regular file there.
fn hard_link(
    root: &InRoot,
    target: &[OsString],
    dir: BorrowedFd<'_>,
    name: &OsStr,
) -> io::Result<bool> {
    let Some((target_name, target_parent)) = target.split_last() else {
        return Ok(false);
    };
    let target_dir = match root.dir(target_parent, false) {
        Ok(fd) => fd,
        Err(e) if refuses_path(&e) => return Ok(false),
        Err(e) => return Err(e),
    };
    let Some(st) = lstat(target_dir.as_fd(), Path::new(target_name))? else {
        return Ok(false);
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Ok(false);
    }
    if let Some(existing) = lstat(dir, Path::new(name))? {
        if existing.st_dev == st.st_dev && existing.st_ino == st.st_ino {
            return Ok(true);
        }
        remove(dir, name)?;
    }
    rustix::fs::linkat(
        target_dir.as_fd(),
        target_name.as_os_str(),
        dir,
        name,
        rustix::fs::AtFlags::empty(),
    )?;
    Ok(true)
}

/// `.wh..wh..opq` in a directory hides all lower layers' content in it; `.wh.<name>` removes
/// `<name>` of lower layers. Neither is ever created.
fn apply_whiteout(
    root: &InRoot,
    parent: &[OsString],
    target: &[u8],
    made: &HashSet<PathBuf>,
) -> io::Result<()> {
    let dir = match root.dir(parent, false) {
        Ok(fd) => fd,
        Err(e) if refuses_path(&e) => return Ok(()),
        Err(e) => return Err(e),
    };
    if target == b".wh..opq" {
        return opaque(dir.as_fd(), &join(parent), made);
    }
    // Other `.wh..wh.` names are aufs bookkeeping; `.`, `..` and `` name nothing to remove.
    if target.starts_with(b".wh.") || matches!(target, b"" | b"." | b"..") || target.contains(&b'/')
    {
        return Ok(());
    }
    let target = OsStr::from_bytes(target);
    if made.contains(&join(parent).join(target)) {
        return Ok(());
    }
    remove(dir.as_fd(), target)
}

/// Removes from `dir` (at `rel`) everything this layer did not make, recursively.
fn opaque(dir: BorrowedFd<'_>, rel: &Path, made: &HashSet<PathBuf>) -> io::Result<()> {
    for name in inroot::list(dir)? {
        let path = if rel == Path::new(".") {
            PathBuf::from(&name)
        } else {
            rel.join(&name)
        };
        if !made.contains(&path) {
            remove(dir, &name)?;
        } else if lstat(dir, Path::new(&name))?.as_ref().is_some_and(is_dir) {
            let sub = open_dir_at(dir, &name)?;
            opaque(sub.as_fd(), &path, made)?;
        }
    }
    Ok(())
}

/// Makes what the sandbox mounts over: `proc`, `dev`, `tmp` empty directories, `etc` a
/// directory, `etc/hosts` and `etc/resolv.conf` empty regular files; the root 0755.
fn finish_root(root: &InRoot) -> io::Result<()> {
    let top = root.fd();
    for name in ["proc", "dev", "tmp"] {
        remove(top, OsStr::new(name))?;
        rustix::fs::mkdirat(top, name, Mode::from(0o755))?;
    }
    if !lstat(top, Path::new("etc"))?.as_ref().is_some_and(is_dir) {
        remove(top, OsStr::new("etc"))?;
        rustix::fs::mkdirat(top, "etc", Mode::from(0o755))?;
    }
    let etc = open_dir_at(top, OsStr::new("etc"))?;
    for name in ["hosts", "resolv.conf"] {
        remove(etc.as_fd(), OsStr::new(name))?;
        let fd = rustix::fs::openat(
            &etc,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from(0o644),
        )?;
        rustix::fs::fchmod(&fd, Mode::from(0o644))?;
    }
    rustix::fs::fchmod(top, Mode::from(0o755))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized_inside_the_root() {
        let n = |p: &str| normalize(Path::new(p)).map(|c| join(&c));
        assert_eq!(n("/etc/x"), Some(PathBuf::from("etc/x")));
        assert_eq!(n("./a/../b"), Some(PathBuf::from("b")));
        assert_eq!(n("a/b/../../c"), Some(PathBuf::from("c")));
        assert_eq!(n("../etc/passwd"), None);
        assert_eq!(n("a/../../x"), None);
        assert_eq!(n("/"), Some(PathBuf::from(".")));
    }

    #[test]
    fn modes_are_world_readable_and_never_world_writable() {
        assert_eq!(normalize_mode(0o4755), 0o755);
        assert_eq!(normalize_mode(0o2700), 0o755);
        assert_eq!(normalize_mode(0o600), 0o644);
        assert_eq!(normalize_mode(0o777), 0o755);
        assert_eq!(normalize_mode(0o1777), 0o755);
        assert_eq!(normalize_mode(0o200), 0o200);
        assert_eq!(normalize_mode(0o500), 0o555);
    }
}
