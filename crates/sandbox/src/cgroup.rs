//! Per-instance cgroups: memory, pids and CPU, on whichever hierarchy (v1 or v2) offers each
//! controller. A host may mix both — this one mounts v1 controllers beside an empty v2 tree.
//!
//! Each instance slot gets its cgroups when the slot is created, ahead of need; starting an
//! instance only writes its memory limit when it changed and has the child join by writing `0`
//! to descriptors opened in advance.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

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
    procs: Vec<OwnedFd>,
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
            procs: Vec::new(),
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
            let procs = fs::OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))?;
            slot.procs.push(procs.into());
            slot.dirs.push(dir);
        }
        slot.oom_kills = slot.read_oom_kills();
        Ok(slot)
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for h in &self.hierarchies {
            remove_tree(&h.base);
        }
    }
}

impl Hierarchy {
    fn create(v2: bool, own: &Path, controllers: Vec<&'static str>) -> Option<Hierarchy> {
        clean_stale(own);
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
        Some(Hierarchy {
            v2,
            base,
            controllers,
        })
    }
}

/// Removes the cgroups of servers that are no longer running.
fn clean_stale(own: &Path) {
    let Ok(entries) = fs::read_dir(own) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("ignite-"))
            .and_then(|n| n.split('-').next())
        else {
            continue;
        };
        if pid
            .parse::<u32>()
            .is_ok_and(|p| !Path::new(&format!("/proc/{p}")).exists())
        {
            remove_tree(&entry.path());
        }
    }
}

/// cgroup directories are removed with rmdir, children first; a cgroup still holding a process
/// stays.
fn remove_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
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

    pub(crate) fn procs(&self) -> Vec<RawFd> {
        self.procs.iter().map(|f| f.as_raw_fd()).collect()
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
