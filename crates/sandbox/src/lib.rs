//! Starting handler processes, and the sandbox they run in.
//!
//! This crate owns every namespace, cgroup, rlimit and seccomp detail (and the `unsafe` that
//! comes with them). [`spawn`] starts a process sharing the agent's memory until exec, either
//! plain (tests, or an operator who turned the sandbox off) or inside a [`Sandbox`], through a
//! *zygote* prepared ahead of need (see `spawn/mod.rs`):
//!
//! - new user, mount, pid, ipc, uts and cgroup namespaces, and a network namespace of its own
//!   (made ahead of need, see `netns.rs`) with nothing in it;
//! - a read-only tmpfs root holding `/proc` (of its own pid namespace, with what it tells of the
//!   host's kernel masked or read-only, see `spawn/isolation.rs`), a size-capped `/tmp`
//!   and `/dev/{null,zero,random,urandom}`; the binary is executed from a descriptor, so not even
//!   it is in the tree;
//! - a per-instance host uid (mapped to 1000 inside), no capabilities, `no_new_privs`;
//! - cgroups (memory, pids, CPU) prepared per instance slot ahead of need, rlimits always;
//! - a seccomp filter (see `seccomp.rs`).
//!
//! The handler starts as pid 1 of its namespace (the SDK then forks, like `tini`): when pid 1
//! exits, the kernel kills whatever the instance started. [`jail`] is the compile's sandbox.

mod cgroup;
mod cpu;
mod egress;
mod failure;
pub mod jail;
mod netns;
mod pool;
mod process;
mod seccomp;
mod spawn;
mod template;

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub use cpu::{current_cpu, kill_process_group, pin_to_cpu, raise_nofile_limit};
pub use egress::{BLOCKED as EGRESS_BLOCKED, EGRESS_NET};
pub use failure::SpawnError;
pub use netns::{Netns, SpawnThread, spawn_in_netns};
pub(crate) use pool::{SETTLE, Slot, run_when_idle};
use pool::{SlotPool, SlotState, ZygotePool, refill_zygotes};
pub use process::Process;
pub use seccomp::denied_syscalls;
use spawn::Zygote;
pub use spawn::{Bind, Command, ImageRoot, Prepared, Spawned, spawn, spawn_async, spawn_prepared};
pub use template::{Template, TemplateError, TemplateSpec};

/// An instance's `/etc/hosts`.
pub(crate) const HOSTS: &str = "127.0.0.1 localhost\n::1 localhost\n";

/// Node-wide sandbox settings.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// A directory of the agent's own; instances mount their root on `<state_dir>/root`.
    pub state_dir: PathBuf,
    /// Instance slot `n` runs as host uid and gid `first_uid + n`.
    pub first_uid: u32,
    /// Processes (and threads) per instance.
    pub pids: u64,
    /// Open files per process.
    pub open_files: u64,
    /// Size of each instance's `/tmp`.
    pub tmp_mb: u64,
    /// CPU per instance, in thousandths of a CPU.
    pub cpu_millis: u64,
    /// Network namespaces kept ready.
    pub spare_netns: usize,
    /// Network namespaces with internet access kept ready, once an app has asked for it.
    pub spare_egress: usize,
    /// Sandboxed processes kept ready to exec a handler (each holds an instance slot, a
    /// network namespace and a parked process).
    pub spare_zygotes: usize,
    /// Instance slots (uid + cgroups) made at start, beyond the zygotes' own.
    pub spare_slots: usize,
}

impl SandboxConfig {
    pub fn new(state_dir: impl Into<PathBuf>) -> SandboxConfig {
        SandboxConfig {
            state_dir: state_dir.into(),
            first_uid: 1_900_000_000,
            pids: 64,
            open_files: 1024,
            tmp_mb: 64,
            cpu_millis: 1000,
            spare_netns: 64,
            spare_egress: 8,
            spare_zygotes: 32,
            spare_slots: 128,
        }
    }
}

/// What one instance gets that depends on its app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_mb: u64,
    /// Internet access (see `egress.rs`); needs [`Sandbox::enable_egress`] first.
    pub egress: bool,
}

/// The sandbox could not be set up on this host.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "the sandbox needs root (it creates namespaces, cgroups and per-instance users); run the \
         server as root, or pass --no-sandbox to run handlers unconfined"
    )]
    NotRoot,
    #[error("cannot prepare the sandbox's directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot compile the seccomp filter: {0}")]
    Seccomp(#[from] seccompiler::BackendError),
    #[error("cannot start the network namespace pool: {0}")]
    Netns(#[source] io::Error),
    #[error("cannot start the sandbox's zygote thread: {0}")]
    Thread(#[source] io::Error),
    #[error(
        "the sandbox cannot start a process on this host ({0}); check that user namespaces are \
         enabled (sysctl user.max_user_namespaces) and mounts are allowed, or pass --no-sandbox \
         to run handlers unconfined"
    )]
    Probe(#[source] SpawnError),
}

/// The node's sandbox: prepared resources shared by every instance it starts. Cheap to clone.
///
/// [`Sandbox::shutdown`] (or dropping the last clone) stops its background threads, kills what
/// it prepared or started and removes its cgroups; the server calls it when it stops, since a
/// process that exits runs no destructor of what its threads and tasks still hold.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    config: SandboxConfig,
    paths: spawn::RootPaths,
    filter: seccompiler::BpfProgram,
    cgroups: Option<cgroup::Cgroups>,
    slots: Arc<SlotPool>,
    netns: netns::Pool,
    /// Shared with the `ignite-zygotes` thread, which holds no strong reference to `Inner`
    /// while it waits (it would keep the sandbox alive).
    zygotes: Arc<ZygotePool>,
    /// Set up the first time an app asks for internet access.
    egress: Mutex<Option<Arc<Egress>>>,
    /// Set when shutdown begins: nothing is prepared or started from then on.
    closing: AtomicBool,
    /// Held through a shutdown (a second caller waits for the first); true once it is done.
    shut_down: Mutex<bool>,
    /// The `ignite-zygotes` thread, joined at shutdown.
    refill: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Internet access for instances: the wired namespaces and what goes in their `/etc`.
struct Egress {
    netns: netns::Pool,
    resolv_conf: std::ffi::CString,
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Sandbox {
    pub fn new(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(SandboxError::NotRoot);
        }
        let root = config.state_dir.join("root");
        let state = |source| SandboxError::StateDir {
            path: root.clone(),
            source,
        };
        std::fs::create_dir_all(&root).map_err(state)?;
        let paths = spawn::RootPaths::new(&root).map_err(state)?;
        let etc = config.state_dir.join("etc");
        std::fs::create_dir_all(&etc)
            .and_then(|()| {
                std::fs::write(etc.join("hosts"), HOSTS)?;
                std::fs::write(etc.join("resolv.conf"), "")
            })
            .map_err(|source| SandboxError::StateDir {
                path: etc.clone(),
                source,
            })?;
        let filter = seccomp::program()?;
        let cgroups = cgroup::Cgroups::detect();
        let netns = netns::Pool::new(config.spare_netns).map_err(SandboxError::Netns)?;
        let zygotes = Arc::new(ZygotePool {
            spare: config.spare_zygotes,
            ..ZygotePool::default()
        });
        let sandbox = Sandbox {
            inner: Arc::new(Inner {
                config,
                paths,
                filter,
                cgroups,
                slots: Arc::new(SlotPool::default()),
                netns,
                zygotes,
                egress: Mutex::new(None),
                closing: AtomicBool::new(false),
                shut_down: Mutex::new(false),
                refill: Mutex::new(None),
            }),
        };
        // One zygote now: a host that cannot make one (no user namespaces, a refused mount, …)
        // fails the server's start with the reason, not every invocation later.
        let first = Zygote::create(&sandbox, false).map_err(SandboxError::Probe)?;
        sandbox.inner.zygotes.lock().ready.push(first);
        let weak = Arc::downgrade(&sandbox.inner);
        let pool = sandbox.inner.zygotes.clone();
        let refill = std::thread::Builder::new()
            .name("ignite-zygotes".into())
            .spawn(move || refill_zygotes(&weak, &pool))
            .map_err(SandboxError::Thread)?;
        *lock(&sandbox.inner.refill) = Some(refill);
        Ok(sandbox)
    }

    /// Stops the sandbox: ends its background threads (zygotes, network namespaces), kills the
    /// parked zygotes, releases the prepared network namespaces and kills every process still in
    /// its cgroups (instances, compiles) before removing those cgroups. Idempotent, and safe to
    /// call from any thread while other clones are in use: from then on, starting an instance
    /// or a compile fails, saying the sandbox is shut down. Dropping the last clone does the
    /// same. Blocks for as long as the threads take to notice (a few milliseconds) and the
    /// killed processes take to exit (at most a few seconds): from async code, call it through
    /// `tokio::task::spawn_blocking`.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }

    /// Whether [`Sandbox::shutdown`] has begun.
    pub fn is_shut_down(&self) -> bool {
        self.inner.closing.load(Ordering::Acquire)
    }

    fn check_open(&self) -> io::Result<()> {
        if self.is_shut_down() {
            return Err(io::Error::other(
                "the sandbox is shut down (the server is stopping); start the server again to \
                 run instances",
            ));
        }
        Ok(())
    }

    /// One line for the server's start-up banner.
    pub fn describe(&self) -> String {
        let cgroups = match &self.inner.cgroups {
            Some(c) => format!("cgroups {}", c.describe()),
            None => "no cgroups (rlimits only)".into(),
        };
        let families: Vec<&str> = seccomp::SOCKET_FAMILIES.iter().map(|f| f.1).collect();
        format!(
            "user, mount, pid, ipc, uts, cgroup and network namespaces; {cgroups}; seccomp \
             ({} syscalls refused, sockets of {} only); read-only root, masked /proc, {} MiB /tmp",
            denied_syscalls().count() + 2,
            families.join(", "),
            self.inner.config.tmp_mb
        )
    }

    /// A free instance slot (its memory limit is set when an app's instance launches in it).
    fn take_slot(&self) -> io::Result<Slot> {
        let pool = &self.inner.slots;
        let reused = pool.lock().free.pop();
        let state = match reused {
            Some(state) => state,
            None => {
                let index = {
                    let mut guard = pool.lock();
                    let index = guard.next;
                    guard.next += 1;
                    index
                };
                let cgroups = match &self.inner.cgroups {
                    Some(c) => Some(c.create_slot(
                        index,
                        cgroup::CgroupLimits {
                            pids: self.inner.config.pids,
                            cpu_millis: self.inner.config.cpu_millis,
                        },
                    )?),
                    None => None,
                };
                SlotState { index, cgroups }
            }
        };
        Ok(Slot {
            state: Some(state),
            pool: pool.clone(),
        })
    }

    /// Makes internet access available to instances (idempotent): installs the host's rules
    /// and starts wiring namespaces ahead of need. Fails, naming what is missing, on a host that
    /// cannot (no nftables, say); call it when an app turns egress on, so the user hears why.
    pub fn enable_egress(&self) -> io::Result<()> {
        self.egress().map(drop)
    }

    /// A network namespace with internet access (the instances' kind: same filter, same
    /// address range), for the node's own connections made on a tenant's behalf — a wasm
    /// component's outgoing HTTP ([`Netns::spawn`] starts a thread inside it). Needs
    /// [`Sandbox::enable_egress`]'s set-up, which it does.
    pub fn egress_netns(&self) -> io::Result<Netns> {
        self.egress()?.netns.take().map(Netns::from)
    }

    fn egress(&self) -> io::Result<Arc<Egress>> {
        self.check_open()?;
        let mut slot = lock(&self.inner.egress);
        if let Some(egress) = &*slot {
            return Ok(egress.clone());
        }
        let host = egress::HostNetwork::detect();
        egress::install(&host)?;
        std::fs::write(self.etc_dir().join("resolv.conf"), &host.resolv_conf)?;
        let egress = Arc::new(Egress {
            netns: netns::Pool::egress(self.inner.config.spare_egress)?,
            resolv_conf: std::ffi::CString::new(host.resolv_conf).map_err(io::Error::other)?,
        });
        *slot = Some(egress.clone());
        Ok(egress)
    }

    fn take_netns(&self, egress: bool) -> io::Result<std::os::fd::OwnedFd> {
        if egress {
            self.egress()?.netns.take()
        } else {
            self.inner.netns.take()
        }
    }

    /// What a zygote is made with. `cgroup_procs` are the slot's `cgroup.procs` files, opened
    /// by [`Slot::open_cgroup_procs`] and closed once the zygote is cloned.
    fn isolation(
        &self,
        slot: &Slot,
        netns: RawFd,
        cgroup_procs: &[OwnedFd],
        egress: bool,
        image: Option<&ImageRoot>,
    ) -> io::Result<spawn::Isolation> {
        let state = slot
            .state
            .as_ref()
            .ok_or_else(|| io::Error::other("instance slot already released"))?;
        let config = &self.inner.config;
        let uid = config.first_uid.saturating_add(state.index);
        let c = |s: String| std::ffi::CString::new(s).map_err(io::Error::other);
        let (inside_uid, inside_gid) = image.map_or((1000, 1000), |i| (i.uid, i.gid));
        Ok(spawn::Isolation {
            netns,
            cgroup_procs: cgroup_procs.iter().map(|f| f.as_raw_fd()).collect(),
            paths: &self.inner.paths,
            resolv_conf: if egress {
                Some(self.egress()?.resolv_conf.clone())
            } else {
                None
            },
            tmp_options: c(format!("size={}m,nr_inodes=16384,mode=1777", config.tmp_mb))?,
            // RLIMIT_AS depends on the app's memory limit: set at launch.
            rlimits: vec![
                (libc::RLIMIT_NOFILE, config.open_files),
                (libc::RLIMIT_NPROC, config.pids),
                (libc::RLIMIT_CORE, 0),
            ],
            uid_map: format!("{inside_uid} {uid} 1"),
            gid_map: format!("{inside_gid} {uid} 1"),
            filter: libc::sock_fprog {
                len: u16::try_from(self.inner.filter.len()).map_err(io::Error::other)?,
                filter: self
                    .inner
                    .filter
                    .as_ptr()
                    .cast_mut()
                    .cast::<libc::sock_filter>(),
            },
            binds: Vec::new(),
            uid: inside_uid,
            gid: inside_gid,
            workdir: match image {
                Some(image) => spawn::c_path(&image.workdir)?,
                None => c("/".into())?,
            },
            image: image
                .map(|image| {
                    spawn::ImageMounts::prepare(image, &self.root_dir(), &self.etc_dir(), egress)
                })
                .transpose()?,
        })
    }

    /// The host files bound over an image's `/etc/hosts` and `/etc/resolv.conf`.
    fn etc_dir(&self) -> PathBuf {
        self.inner.config.state_dir.join("etc")
    }

    /// The cgroups of one compile (memory and processes), made now, removed when dropped.
    pub fn build_cgroup(&self, name: &str, memory_mb: u64) -> io::Result<Option<BuildCgroup>> {
        self.check_open()?;
        let Some(cgroups) = &self.inner.cgroups else {
            return Ok(None);
        };
        let mut group = cgroups.create(
            &format!("build-{name}"),
            cgroup::CgroupLimits {
                pids: 4096,
                cpu_millis: 0,
            },
        )?;
        group.set_memory(memory_mb.saturating_mul(1 << 20))?;
        Ok(Some(BuildCgroup { group }))
    }

    /// The first of `count` host uids an image build maps its user namespace to (below the
    /// compiles' uid, so apart from every instance's and compile's).
    pub fn image_build_uids(&self, count: u32) -> u32 {
        self.build_uid().saturating_sub(count)
    }

    /// The host uid compiles run as (just below the instances' range).
    pub fn build_uid(&self) -> u32 {
        self.inner.config.first_uid.saturating_sub(1)
    }

    /// The directory compiles mount their jail's root on.
    pub fn build_root(&self) -> io::Result<PathBuf> {
        let dir = self.inner.config.state_dir.join("build-root");
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// A zygote ready to launch: from the pool, or made on the spot if the pool is empty (or
    /// the instance has internet access: those are made at start, in a namespace wired ahead).
    /// The directory each instance mounts its root on.
    pub(crate) fn root_dir(&self) -> PathBuf {
        self.inner.config.state_dir.join("root")
    }

    fn take_zygote(&self, limits: &Limits) -> Result<Zygote, SpawnError> {
        self.pooled_zygote(limits)
            .map_or_else(|| Zygote::create(self, limits.egress), Ok)
    }

    fn pooled_zygote(&self, limits: &Limits) -> Option<Zygote> {
        if limits.egress {
            return None;
        }
        self.inner.zygotes.take()
    }
}

impl Inner {
    fn shutdown(&self) {
        let mut done = lock(&self.shut_down);
        if *done {
            return;
        }
        self.closing.store(true, Ordering::Release);
        // The zygote thread first: once it has ended, nothing new is made in the background.
        let ready = {
            let mut state = self.zygotes.lock();
            state.closed = true;
            std::mem::take(&mut state.ready)
        };
        self.zygotes.wake.notify_all();
        if let Some(refill) = lock(&self.refill).take() {
            // The last clone may be dropped on that thread itself: it cannot wait for itself,
            // and ends on its own once this returns.
            if refill.thread().id() != std::thread::current().id() && refill.join().is_err() {
                tracing::warn!("the sandbox's zygote thread panicked");
            }
        }
        // Kills and reaps each parked zygote; their slots go back to the pool.
        drop(ready);
        self.netns.close();
        if let Some(egress) = lock(&self.egress).take() {
            egress.netns.close();
        }
        // Whatever is still running in the sandbox's cgroups (instances, compiles, a zygote
        // made on the spot meanwhile) is killed before they are removed.
        if let Some(cgroups) = &self.cgroups {
            cgroups.remove_all();
        }
        *done = true;
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A compile's cgroups.
#[derive(Debug)]
pub struct BuildCgroup {
    group: cgroup::SlotCgroups,
}

impl BuildCgroup {
    /// The `cgroup.procs` files the compile joins.
    pub fn procs(&self) -> Vec<PathBuf> {
        self.group.procs_paths()
    }

    /// Whether the memory controller killed a process of the compile.
    pub fn oom_killed(&mut self) -> bool {
        self.group.take_oom_kill()
    }
}

impl Drop for BuildCgroup {
    fn drop(&mut self) {
        self.group.remove();
    }
}
