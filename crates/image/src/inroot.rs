//! File operations confined to one directory tree, the root being unpacked: every path is
//! resolved by the kernel as if that directory were `/` (`openat2(RESOLVE_IN_ROOT)`: a `..` or
//! an absolute symlink stops at the root), and every final component is acted on by name in
//! its already-resolved parent, never following a symlink there.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};

/// The most symlinks followed resolving one path (the kernel's own limit).
const MAX_LINKS: usize = 40;

fn in_root() -> ResolveFlags {
    ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS
}

/// A directory tree whose paths are resolved inside it.
pub(crate) struct InRoot {
    root: OwnedFd,
}

impl InRoot {
    /// Opens the tree at `path` (a host path the platform chose, trusted).
    pub fn open(path: &Path) -> io::Result<InRoot> {
        let root = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(InRoot { root })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Opens the directory at `rel` (components of a path relative to the root), resolving
    /// symlinks inside the root; with `create`, missing directories are made (mode 0755).
    pub fn dir(&self, rel: &[OsString], create: bool) -> io::Result<OwnedFd> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        if rel.is_empty() {
            return rustix::fs::openat(&self.root, ".", flags, Mode::empty()).map_err(Into::into);
        }
        match rustix::fs::openat2(&self.root, join(rel), flags, Mode::empty(), in_root()) {
            Ok(fd) => return Ok(fd),
            Err(rustix::io::Errno::NOENT) if create => {}
            Err(e) => return Err(e.into()),
        }
        // Make the missing ones, each resolved from the root again (so that a symlink among
        // them is resolved as the instance will see it), each made by name in its parent.
        let mut current = rustix::fs::openat(&self.root, ".", flags, Mode::empty())?;
        for i in 0..rel.len() {
            let prefix = join(&rel[..=i]);
            match rustix::fs::openat2(&self.root, &prefix, flags, Mode::empty(), in_root()) {
                Ok(fd) => current = fd,
                Err(rustix::io::Errno::NOENT) => {
                    match rustix::fs::mkdirat(&current, rel[i].as_os_str(), Mode::from(0o755)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    current =
                        rustix::fs::openat2(&self.root, &prefix, flags, Mode::empty(), in_root())?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(current)
    }

    /// Opens the file at `rel` for reading, resolving symlinks inside the root.
    pub fn open_read(&self, rel: &Path) -> io::Result<std::fs::File> {
        let fd = rustix::fs::openat2(
            &self.root,
            rel,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
            in_root(),
        )?;
        Ok(std::fs::File::from(fd))
    }

    /// `path` (absolute or relative to the root) with every symlink resolved inside the root:
    /// an absolute path in the root whose components are all real (the last may be missing,
    /// which is `NotFound`).
    pub fn resolve(&self, path: &Path) -> io::Result<PathBuf> {
        let mut resolved: Vec<OsString> = Vec::new();
        let mut pending: Vec<OsString> = components_rev(path);
        let mut links = 0;
        while let Some(name) = pending.pop() {
            if name == ".." {
                resolved.pop();
                continue;
            }
            resolved.push(name);
            match lstat(self.fd(), &join(&resolved))? {
                None => return Err(io::ErrorKind::NotFound.into()),
                Some(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(rustix::io::Errno::LOOP.into());
                    }
                    let target = rustix::fs::readlinkat(self.fd(), join(&resolved), Vec::new())?;
                    resolved.pop();
                    let target = PathBuf::from(OsStr::from_bytes(target.as_bytes()));
                    if target.is_absolute() {
                        resolved.clear();
                    }
                    pending.extend(components_rev(&target));
                }
                Some(st) => {
                    if !pending.is_empty()
                        && FileType::from_raw_mode(st.st_mode) != FileType::Directory
                    {
                        return Err(rustix::io::Errno::NOTDIR.into());
                    }
                }
            }
        }
        let mut out = PathBuf::from("/");
        out.extend(resolved);
        Ok(out)
    }
}

/// The normal components of `path` in reverse order, `..` kept (as `..`), `.` and `/` dropped.
fn components_rev(path: &Path) -> Vec<OsString> {
    let mut out: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    out.reverse();
    out
}

/// Components joined into a relative path (`.` when there are none).
pub(crate) fn join(rel: &[OsString]) -> PathBuf {
    if rel.is_empty() {
        return PathBuf::from(".");
    }
    rel.iter().collect()
}

/// The entry `name` in `dir`, not following it if it is a symlink; `None` if there is none.
pub(crate) fn lstat(dir: BorrowedFd<'_>, name: &Path) -> io::Result<Option<Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn is_dir(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::Directory
}

/// Opens the directory `name` in `dir`; fails on a symlink.
pub(crate) fn open_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(Into::into)
}

/// The names in a directory, without `.` and `..`.
pub(crate) fn list(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    Ok(names)
}

/// Removes `name` from `dir` whatever it is (a directory with everything in it), never
/// following a symlink; nothing if there is none.
pub(crate) fn remove(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match lstat(dir, Path::new(name))? {
        None => Ok(()),
        Some(st) if is_dir(&st) => {
            let sub = open_dir_at(dir, name)?;
            for child in list(sub.as_fd())? {
                remove(sub.as_fd(), &child)?;
            }
            rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(Into::into)
        }
        Some(_) => rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(Into::into),
    }
}
