//! Per-instance cgroups: memory, pids and CPU, on whichever hierarchy (v1 or v2) offers each
//! controller. A host may mix both — this one mounts v1 controllers beside an empty v2 tree.
//!
//! Each instance slot gets its cgroups when the slot is created, ahead of need; a slot holds no
//! descriptor while idle. Preparing a zygote opens its slot's `cgroup.procs` files, the child
//! joins by writing `0` to them, and they are closed as soon as it is cloned. Starting an
//! instance only writes its memory limit when it changed.
//!
//! The server's cgroups live under `ignite-<pid>-<n>` (one per hierarchy and [`crate::Sandbox`]),
//! marked with the owner's pid and start time; [`Cgroups::remove_all`] kills what is left in them
//! and removes them at shutdown, and the next start does the same for those of a server that is
//! no longer running.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const WANTED: &[&str] = &["memory", "pids", "cpu"];

#[derive(Debug)]
struct Hierarchy {
    v2: bool,
    /// `<mount>/<our cgroup>/ignite-<pid>-<n>`.
    base: PathBuf,
    controllers: Vec<&'static str>,
}

#[derive(Debug)]
pub(crate) struct Cgroups {
    hierarchies: Vec<Hierarchy>,
}

/// Per-instance limits that live in cgroups.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CgroupLimits {
    pub pids: u64,
    pub cpu_millis: u64,
}

#[derive(Debug)]
pub(crate) struct SlotCgroups {
    dirs: Vec<PathBuf>,
    memory: Option<(PathBuf, bool)>,
    memory_limit: u64,
    oom_kills: u64,
}

impl Cgroups {
    /// Finds the controllers this process may delegate, and creates its base cgroups.
    pub(crate) fn detect() -> Option<Cgroups> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
        let own = fs::read_to_string("/proc/self/cgroup").ok()?;
        let mut hierarchies = Vec::new();
        let mut found: Vec<&'static str> = Vec::new();
        // v1 first: its controllers are usable without delegation rules.
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            if left.len() < 5 || right.len() < 3 || right[0] != "cgroup" {
                continue;
            }
            let (root, mount) = (left[3], left[4]);
            let options: Vec<&str> = right[2].split(',').collect();
            let controllers: Vec<&'static str> = WANTED
                .iter()
                .copied()
                .filter(|c| options.contains(c) && !found.contains(c))
                .collect();
            if controllers.is_empty() {
                continue;
            }
            let Some(path) = own.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
                list.split(',')
                    .any(|c| controllers.contains(&c))
                    .then_some(path)
            }) else {
                continue;
            };
            let dir = Path::new(mount).join(relative(path, root));
            if let Some(h) = Hierarchy::create(false, &dir, controllers.clone()) {
                found.extend(controllers);
                hierarchies.push(h);
            }
        }
        // Then v2, for what v1 did not offer.
        if let Some(line) = mountinfo.lines().find(|l| {
            l.split_once(" - ")
                .is_some_and(|(_, r)| r.starts_with("cgroup2 "))
        }) && let Some((left, _)) = line.split_once(" - ")
        {
            let left: Vec<&str> = left.split(' ').collect();
            if left.len() >= 5
                && let Some(path) = own.lines().find_map(|l| l.strip_prefix("0::"))
            {
                let dir = Path::new(left[4]).join(relative(path, left[3]));
                let available =
                    fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
                let controllers: Vec<&'static str> = WANTED
                    .iter()
                    .copied()
                    .filter(|c| !found.contains(c) && available.split_whitespace().any(|a| a == *c))
                    .collect();
                if !controllers.is_empty() {
                    let enable: String = controllers.iter().map(|c| format!("+{c} ")).collect();
                    // A v2 cgroup that delegates controllers may hold no process itself; this
                    // works when the operator started us in a cgroup of our own (systemd's
                    // Delegate=yes).
                    match fs::write(dir.join("cgroup.subtree_control"), enable.trim()) {
                        Ok(()) => {
                            if let Some(h) = Hierarchy::create(true, &dir, controllers.clone()) {
                                let _ =
                                    fs::write(h.base.join("cgroup.subtree_control"), enable.trim());
                                hierarchies.push(h);
                            }
                        }
                        Err(e) => tracing::warn!(
                            "cgroup v2 controllers {controllers:?} are not delegated to the server \
                             ({e}); those limits fall back to rlimits"
                        ),
                    }
                }
            }
        }
        (!hierarchies.is_empty()).then_some(Cgroups { hierarchies })
    }

    /// "v1 memory,pids,cpu" — for the start-up banner.
    pub(crate) fn describe(&self) -> String {
        self.hierarchies
            .iter()
            .map(|h| {
                format!(
                    "{} {}",
                    if h.v2 { "v2" } else { "v1" },
                    h.controllers.join(",")
                )
            })
            .collect::<Vec<_>>()
            .join(" + ")
    }

    pub(crate) fn create_slot(&self, index: u32, limits: CgroupLimits) -> io::Result<SlotCgroups> {
        self.create(&format!("slot-{index}"), limits)
    }

    /// A cgroup (in every hierarchy) named `name` under the server's own; a `cpu_millis` of 0
    /// leaves the CPU unlimited.
    pub(crate) fn create(&self, name: &str, limits: CgroupLimits) -> io::Result<SlotCgroups> {
        let mut slot = SlotCgroups {
            dirs: Vec::new(),
            memory: None,
            memory_limit: 0,
            oom_kills: 0,
        };
        for h in &self.hierarchies {
            let dir = h.base.join(name);
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            for c in &h.controllers {
                match (*c, h.v2) {
                    ("pids", _) => fs::write(dir.join("pids.max"), limits.pids.to_string())?,
                    ("cpu", _) if limits.cpu_millis == 0 => {}
                    ("cpu", false) => {
                        fs::write(dir.join("cpu.cfs_period_us"), "100000")?;
                        fs::write(
                            dir.join("cpu.cfs_quota_us"),
                            (limits.cpu_millis * 100).to_string(),
                        )?;
                    }
                    ("cpu", true) => fs::write(
                        dir.join("cpu.max"),
                        format!("{} 100000", limits.cpu_millis * 100),
                    )?,
                    ("memory", v2) => slot.memory = Some((dir.clone(), v2)),
                    _ => {}
                }
            }
            slot.dirs.push(dir);
        }
        slot.oom_kills = slot.read_oom_kills();
        Ok(slot)
    }
}

impl Cgroups {
    /// Kills every process left in the server's cgroups (instances, zygotes, compiles) and
    /// removes them. Idempotent.
    pub(crate) fn remove_all(&self) {
        for h in &self.hierarchies {
            match kill_and_remove(&h.base, h.v2) {
                Ok(0) => {}
                Ok(killed) => tracing::info!(
                    "killed {killed} sandboxed processes left in {}",
                    h.base.display()
                ),
                Err(e) => tracing::warn!(
                    "cannot remove the sandbox's cgroup {}: {e}; remove it (rmdir, deepest \
                     directories first) once the processes in it are gone",
                    h.base.display()
                ),
            }
        }
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        self.remove_all();
    }
}

/// The extended attribute on a server's base cgroups naming their owner: `<pid> <start time>`
/// (the start time in clock ticks after boot, as `/proc/<pid>/stat` has it), so that a process
/// that reused a dead server's pid is not taken for it.
const OWNER_XATTR: &str = "trusted.ignite.owner";

impl Hierarchy {
    fn create(v2: bool, own: &Path, controllers: Vec<&'static str>) -> Option<Hierarchy> {
        clean_stale(own, v2);
        // One base per Sandbox: two in one process (tests) must not remove each other's.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = own.join(format!("ignite-{}-{n}", std::process::id()));
        match fs::create_dir(&base) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                tracing::warn!("cannot create cgroup {}: {e}", base.display());
                return None;
            }
        }
        if let Some(start) = start_time("self") {
            let owner = format!("{} {start}", std::process::id());
            if let Err(e) = set_xattr(&base, OWNER_XATTR, owner.as_bytes()) {
                tracing::debug!("cannot mark cgroup {} as ours: {e}", base.display());
            }
        }
        Some(Hierarchy {
            v2,
            base,
            controllers,
        })
    }
}

/// Removes the cgroups of servers that are no longer running, killing what is still in them
/// first (instances outlive a crashed server: they clear their parent-death signal at exec; so
/// do compiles). Only `ignite-<pid>-<n>` directories under our own cgroup, and only when that
/// pid is not running, or is running but is not the process that made them (a reused pid).
fn clean_stale(own: &Path, v2: bool) {
    let Ok(entries) = fs::read_dir(own) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(owner_pid) else {
            continue;
        };
        let dir = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) || owner_alive(pid, &dir) {
            continue;
        }
        match kill_and_remove(&dir, v2) {
            Ok(0) => tracing::debug!("removed stale cgroup {}", dir.display()),
            Ok(killed) => tracing::warn!(
                "killed {killed} processes left by a server (pid {pid}) that is no longer \
                 running, and removed its cgroup {}",
                dir.display()
            ),
            Err(e) => tracing::warn!(
                "cannot remove the cgroup {} of a server (pid {pid}) that is no longer running: \
                 {e}; remove it (rmdir, deepest directories first) once the processes in it are \
                 gone",
                dir.display()
            ),
        }
    }
}

/// The pid in a base cgroup's name, `ignite-<pid>-<n>`; `None` for any other name.
fn owner_pid(name: &str) -> Option<u32> {
    let (pid, n) = name.strip_prefix("ignite-")?.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(n) {
        return None;
    }
    pid.parse().ok()
}

/// Whether the server that made `dir` still runs: its pid is alive and, where the cgroup
/// carries our owner mark, that process started when the mark says (else the pid was reused).
/// Unmarked cgroups (a server of an older version) count as alive while the pid is.
fn owner_alive(pid: u32, dir: &Path) -> bool {
    let Some(now) = start_time(&pid.to_string()) else {
        return false;
    };
    let Ok(mark) = get_xattr(dir, OWNER_XATTR) else {
        return true;
    };
    let mark = String::from_utf8_lossy(&mark);
    let mut parts = mark.split_whitespace();
    let (Some(marked_pid), Some(marked_start)) = (parts.next(), parts.next()) else {
        return true;
    };
    marked_pid != pid.to_string() || marked_start == now.to_string()
}

/// A process's start time (clock ticks after boot, field 22 of `/proc/<pid>/stat`); `None` if
/// it is not running (gone, or a zombie its parent has not reaped yet: dead all the same).
fn start_time(pid: &str) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    if matches!(fields.next(), Some("Z" | "X")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let (path, name) = (c_path(path)?, CString::new(name).map_err(io::Error::other)?);
    // SAFETY: setxattr reads two NUL-terminated strings and `value.len()` bytes of `value`,
    // all alive for the call.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn get_xattr(path: &Path, name: &str) -> io::Result<Vec<u8>> {
    let (path, name) = (c_path(path)?, CString::new(name).map_err(io::Error::other)?);
    let mut value = vec![0u8; 64];
    // SAFETY: getxattr reads two NUL-terminated strings and writes at most `value.len()` bytes
    // into `value`, all alive for the call.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    value.truncate(n);
    Ok(value)
}

/// How long killed processes get to leave their cgroups before removal gives up.
const REMOVE_WAIT: Duration = Duration::from_secs(5);

/// Kills every process in the cgroup tree at `dir` (`cgroup.kill` on v2, a SIGKILL to each pid
/// of every `cgroup.procs` on v1, again until none is left), then removes the tree, children
/// first. Returns how many processes it signalled; a tree that is already gone is `Ok(0)`.
fn kill_and_remove(dir: &Path, v2: bool) -> io::Result<usize> {
    let deadline = Instant::now() + REMOVE_WAIT;
    let mut killed = 0;
    loop {
        killed += kill_tree(dir, v2);
        match remove_tree(dir) {
            Ok(()) => return Ok(killed),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(killed),
            Err(e) if Instant::now() >= deadline => return Err(e),
            // EBUSY: a killed process has not exited yet.
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// One round of [`kill_and_remove`]'s killing: how many processes it signalled.
fn kill_tree(dir: &Path, v2: bool) -> usize {
    let mut pids = Vec::new();
    procs_of_tree(dir, &mut pids);
    if pids.is_empty() {
        return 0;
    }
    // cgroup.kill (v2, Linux 5.14) kills the whole subtree at once, forks in flight included.
    if v2 && fs::write(dir.join("cgroup.kill"), "1").is_ok() {
        return pids.len();
    }
    let me = std::process::id() as libc::pid_t;
    for &pid in &pids {
        if pid > 1 && pid != me {
            // SAFETY: kill(2) has no memory-safety preconditions. The pid was read from the
            // cgroup a moment ago; a dead server's processes are no children of ours, so the
            // window for its reuse is the kernel's whole pid space going round.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    pids.len()
}

fn procs_of_tree(dir: &Path, pids: &mut Vec<libc::pid_t>) {
    if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(
            text.lines()
                .filter_map(|l| l.trim().parse::<libc::pid_t>().ok()),
        );
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                procs_of_tree(&entry.path(), pids);
            }
        }
    }
}

/// cgroup directories are removed with rmdir, children first; a cgroup still holding a process
/// stays, and the first such error is returned.
fn remove_tree(dir: &Path) -> io::Result<()> {
    let mut result = Ok(());
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir())
                && let Err(e) = remove_tree(&entry.path())
                && e.kind() != io::ErrorKind::NotFound
                && result.is_ok()
            {
                result = Err(e);
            }
        }
    }
    match fs::remove_dir(dir) {
        Err(e) if result.is_ok() => Err(e),
        _ => result,
    }
}

fn relative<'a>(path: &'a str, root: &str) -> &'a str {
    let rest = if root == "/" {
        path
    } else {
        path.strip_prefix(root).unwrap_or(path)
    };
    rest.trim_start_matches('/')
}

impl SlotCgroups {
    pub(crate) fn has_memory(&self) -> bool {
        self.memory.is_some()
    }

    pub(crate) fn procs_paths(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Removes the cgroups (they must hold no process any more).
    pub(crate) fn remove(&self) {
        for dir in &self.dirs {
            let _ = fs::remove_dir(dir);
        }
    }

    /// Opens the `cgroup.procs` files a process joins by writing `0`; held only while a zygote
    /// is being made, so that idle slots hold no descriptor.
    pub(crate) fn open_procs(&self) -> io::Result<Vec<OwnedFd>> {
        self.dirs
            .iter()
            .map(|dir| {
                let path = dir.join("cgroup.procs");
                fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map(OwnedFd::from)
                    .map_err(|e| {
                        io::Error::new(e.kind(), format!("opening {}: {e}", path.display()))
                    })
            })
            .collect()
    }

    /// Sets the memory limit, if the host has a memory controller and it changed.
    pub(crate) fn set_memory(&mut self, bytes: u64) -> io::Result<()> {
        if let Some((dir, v2)) = &self.memory
            && self.memory_limit != bytes
        {
            let file = if *v2 {
                "memory.max"
            } else {
                "memory.limit_in_bytes"
            };
            fs::write(dir.join(file), bytes.to_string())?;
            if !*v2 {
                // Without this, a v1 cgroup that reaches its limit swaps instead of failing.
                let _ = fs::write(dir.join("memory.swappiness"), "0");
            }
            self.memory_limit = bytes;
        }
        Ok(())
    }

    fn read_oom_kills(&self) -> u64 {
        let Some((dir, v2)) = &self.memory else {
            return 0;
        };
        let file = if *v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|n| n.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Whether the memory controller killed a process since the last call.
    pub(crate) fn take_oom_kill(&mut self) -> bool {
        let now = self.read_oom_kills();
        let killed = now > self.oom_kills;
        self.oom_kills = now;
        killed
    }
}
