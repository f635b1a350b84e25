//! What the sandbox prepares for a sandboxed child, which reads it between `clone` and exec:
//! its namespace and cgroup descriptors, the paths of its root, what of `/proc` it masks, its
//! limits and its user's maps.

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub(crate) struct Isolation {
    pub netns: RawFd,
    pub cgroup_procs: Vec<RawFd>,
    pub paths: *const RootPaths,
    /// Instances with internet access get `/etc/resolv.conf` (and `/etc/hosts`).
    pub resolv_conf: Option<CString>,
    pub tmp_options: CString,
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64)>,
    pub uid_map: String,
    pub gid_map: String,
    pub filter: libc::sock_fprog,
    /// Host paths mounted read-only in the root (an interpreter's files), in order.
    pub binds: Vec<BindMount>,
    /// The user and group the process runs as inside its user namespace (mapped to the slot's
    /// host uid and gid): 1000, or an image's `USER`.
    pub uid: u32,
    pub gid: u32,
    /// Where the process starts, inside its root: `/`, or an image's `WORKDIR`.
    pub workdir: CString,
    /// An image's unpacked root as the instance's root, instead of the empty tmpfs.
    pub image: Option<ImageMounts>,
}

/// A container image's unpacked root, to run a process in (see [`Prepared::image`]).
///
/// [`Prepared::image`]: super::Prepared::image
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRoot {
    /// The unpacked root on the host. It must hold the directories `proc`, `dev` and `tmp` and
    /// the files `etc/hosts` and `etc/resolv.conf` (mount points; the unpacker makes them); it
    /// is mounted read-only and shared by every instance of the image.
    pub rootfs: std::path::PathBuf,
    /// The directory the process starts in, inside the root.
    pub workdir: std::path::PathBuf,
    /// The user and group inside (the image's `USER`), mapped to the instance's host uid.
    pub uid: u32,
    pub gid: u32,
}

/// What the child mounts for an [`ImageRoot`].
pub(crate) struct ImageMounts {
    pub rootfs: CString,
    pub dev_options: CString,
    /// Host files bound read-only over the image's `etc/hosts` and, with internet access,
    /// `etc/resolv.conf`: (source, target).
    pub files: Vec<(CString, CString)>,
    /// Symlinks made in its `/dev` (`stdout` → `/proc/self/fd/1`, …: images log to them):
    /// (target, link).
    pub links: Vec<(CString, CString)>,
}

impl ImageMounts {
    pub(crate) fn prepare(
        image: &ImageRoot,
        root: &Path,
        etc: &Path,
        egress: bool,
    ) -> io::Result<ImageMounts> {
        for dir in ["proc", "dev", "tmp"] {
            if !std::fs::symlink_metadata(image.rootfs.join(dir)).is_ok_and(|m| m.is_dir()) {
                return Err(io::Error::other(format!(
                    "the image root {} has no /{dir} directory to mount on",
                    image.rootfs.display()
                )));
            }
        }
        let mut files = vec![(
            c_path(&etc.join("hosts"))?,
            c_path(&root.join("etc/hosts"))?,
        )];
        if egress {
            files.push((
                c_path(&etc.join("resolv.conf"))?,
                c_path(&root.join("etc/resolv.conf"))?,
            ));
        }
        for (_, target) in &files {
            let inside = image.rootfs.join(
                Path::new(std::ffi::OsStr::from_bytes(target.as_bytes()))
                    .strip_prefix(root)
                    .map_err(io::Error::other)?,
            );
            if !std::fs::symlink_metadata(&inside).is_ok_and(|m| m.is_file()) {
                return Err(io::Error::other(format!(
                    "the image root has no regular file {} to mount on",
                    inside.display()
                )));
            }
        }
        let dev = root.join("dev");
        let links = [
            ("/proc/self/fd", "fd"),
            ("/proc/self/fd/0", "stdin"),
            ("/proc/self/fd/1", "stdout"),
            ("/proc/self/fd/2", "stderr"),
        ]
        .into_iter()
        .map(|(target, name)| Ok((c_path(Path::new(target))?, c_path(&dev.join(name))?)))
        .collect::<io::Result<_>>()?;
        Ok(ImageMounts {
            links,
            rootfs: c_path(&image.rootfs)?,
            dev_options: CString::new("size=64k,nr_inodes=16,mode=755")
                .map_err(io::Error::other)?,
            files,
        })
    }
}

/// One read-only bind mount in an instance's root, prepared for the child.
pub(crate) struct BindMount {
    /// Directories to create under the root first, parents before children.
    pub dirs: Vec<CString>,
    /// For a file: the empty file to create as the mount point.
    pub file: Option<CString>,
    pub source: CString,
    pub target: CString,
}

/// A host path visible read-only inside a sandboxed process, at `target`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Bind {
    pub source: std::path::PathBuf,
    pub target: std::path::PathBuf,
}

impl BindMount {
    /// The mounts for `binds` under the instance root `root`. A target must be absolute and
    /// plain (no `..`); a source must exist.
    pub(crate) fn prepare(root: &Path, binds: &[Bind]) -> io::Result<Vec<BindMount>> {
        let mut made = std::collections::HashSet::new();
        binds
            .iter()
            .map(|bind| {
                let meta = std::fs::metadata(&bind.source).map_err(|e| {
                    io::Error::new(e.kind(), format!("{}: {e}", bind.source.display()))
                })?;
                let relative = bind
                    .target
                    .strip_prefix("/")
                    .map_err(|_| io::Error::other("a bind target must be absolute"))?;
                let mut dirs = Vec::new();
                let mut at = root.to_path_buf();
                let parts: Vec<_> = relative.components().collect();
                for (i, part) in parts.iter().enumerate() {
                    let std::path::Component::Normal(name) = part else {
                        return Err(io::Error::other("a bind target must be a plain path"));
                    };
                    at.push(name);
                    let last = i + 1 == parts.len();
                    if (!last || meta.is_dir()) && made.insert(at.clone()) {
                        dirs.push(c_path(&at)?);
                    }
                }
                Ok(BindMount {
                    dirs,
                    file: (!meta.is_dir()).then(|| c_path(&at)).transpose()?,
                    source: c_path(&bind.source)?,
                    target: c_path(&at)?,
                })
            })
            .collect()
    }
}

/// Paths under the directory on which each instance mounts its root.
pub(crate) struct RootPaths {
    pub root: CString,
    pub root_options: CString,
    pub proc_: CString,
    pub tmp: CString,
    pub dev: CString,
    pub devices: Vec<(CString, libc::dev_t)>,
    pub etc: CString,
    pub resolv_conf: CString,
    pub hosts: CString,
    /// What of the instance's `/proc` is masked or made read-only (see [`ProcMasks`]).
    pub masks: ProcMasks,
}

/// Files of `/proc` that tell of the host's kernel rather than of the instance: container
/// runtimes' default `maskedPaths` (runc, Docker) plus `kallsyms`, `key-users`,
/// `sysrq-trigger` and `interrupts`. `/dev/null` is bound over each (reads find nothing, writes
/// go nowhere).
const MASKED_FILES: &[&str] = &[
    "kallsyms",
    "kcore",
    "keys",
    "key-users",
    "sched_debug",
    "timer_list",
    "timer_stats",
    "latency_stats",
    "sysrq-trigger",
    "interrupts",
];

/// Directories of `/proc` about the host's hardware: an empty read-only tmpfs over each.
const MASKED_DIRS: &[&str] = &["acpi", "asound", "scsi"];

/// Kernel settings and hardware state, readable but made read-only (runtimes'
/// `readonlyPaths`): a bind of the path onto itself, remounted read-only.
const READ_ONLY: &[&str] = &["sys", "bus", "fs", "irq"];

/// The mount points under the instance's `/proc`, for the ones this kernel has (the same for
/// every instance: it is the host's kernel, so it is looked up once, in the host's `/proc`).
/// The root has no `/sys`, so runtimes' `/sys/firmware` mask has nothing to cover here.
pub(crate) struct ProcMasks {
    pub null: CString,
    pub files: Vec<CString>,
    pub dirs: Vec<CString>,
    pub read_only: Vec<CString>,
    pub dir_options: CString,
}

impl ProcMasks {
    fn new(proc_: &Path, null: CString) -> io::Result<ProcMasks> {
        let present = |names: &[&str], dir: bool| -> io::Result<Vec<CString>> {
            names
                .iter()
                .filter(|n| {
                    std::fs::symlink_metadata(Path::new("/proc").join(n))
                        .is_ok_and(|m| m.is_dir() == dir)
                })
                .map(|n| c_path(&proc_.join(n)))
                .collect()
        };
        Ok(ProcMasks {
            null,
            files: present(MASKED_FILES, false)?,
            dirs: present(MASKED_DIRS, true)?,
            read_only: present(READ_ONLY, true)?,
            dir_options: CString::new("size=4k,nr_inodes=8,mode=555").map_err(io::Error::other)?,
        })
    }
}

pub(crate) fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

impl RootPaths {
    pub(crate) fn new(root: &Path) -> io::Result<RootPaths> {
        let c = c_path;
        let dev = root.join("dev");
        Ok(RootPaths {
            masks: ProcMasks::new(&root.join("proc"), c(&dev.join("null"))?)?,
            root: c(root)?,
            root_options: CString::new("size=64k,nr_inodes=64,mode=755")
                .map_err(io::Error::other)?,
            proc_: c(&root.join("proc"))?,
            tmp: c(&root.join("tmp"))?,
            devices: [("null", 3), ("zero", 5), ("random", 8), ("urandom", 9)]
                .into_iter()
                .map(|(name, minor)| Ok((c(&dev.join(name))?, libc::makedev(1, minor))))
                .collect::<io::Result<_>>()?,
            dev: c(&dev)?,
            etc: c(&root.join("etc"))?,
            resolv_conf: c(&root.join("etc/resolv.conf"))?,
            hosts: c(&root.join("etc/hosts"))?,
        })
    }
}
