//! Starting a process: `clone` sharing the agent's memory, then, in the child, the sandbox
//! set-up and `execveat` of the handler binary.
//!
//! The child shares the agent's memory until it execs (`CLONE_VM`, what `posix_spawn` does), so
//! starting an instance costs no page-table copy of the agent. The price is that the child may
//! only make system calls on data prepared before `clone`: no allocation, no locks, no glibc
//! wrapper that talks to other threads (glibc's `setresuid` signals every thread of the *agent*,
//! so credentials change through raw `syscall`s).
//!
//! A plain child execs at once (`CLONE_VFORK`: the agent thread waits for it). A sandboxed one is
//! a *zygote*: made ahead of need by a background thread, it sets up its namespaces, root,
//! cgroups, user and seccomp filter, then parks in `recvmsg` on its control socket. Starting an
//! instance hands it the binary's descriptor and environment; all it has left to do is exec.

use std::ffi::{CString, c_char, c_int, c_void};
use std::fs::File;
use std::io;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use crate::process::Process;
use crate::{Limits, Sandbox, Slot};

/// What to start.
#[derive(Debug, Clone)]
pub struct Command<'a> {
    pub program: &'a Path,
    /// The complete environment: nothing is inherited.
    pub env: &'a [(String, String)],
}

/// A started process and the agent's ends of its three standard streams.
#[derive(Debug)]
pub struct Spawned {
    pub process: Process,
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// A step of starting a process failed.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}{}", hint(step, source))]
pub struct SpawnError {
    pub step: &'static str,
    #[source]
    pub source: io::Error,
}

fn hint(step: &str, source: &io::Error) -> &'static str {
    match (step, source.raw_os_error()) {
        (STEP_EXEC, Some(libc::ENOENT)) => {
            " (the sandbox holds no loader or libraries: the handler must be a static binary, \
             which `dodil ignite draft compile` produces)"
        }
        (STEP_EXEC, Some(libc::ENOEXEC)) => " (it is not a Linux executable for this machine)",
        _ => "",
    }
}

const STEP_EXEC: &str = "executing the handler binary";
const STEP_EXEC_INDEX: usize = 21;

/// The steps the child reports a failure of, by index.
const STEPS: &[&str] = &[
    "no failure",
    "setting up the standard streams",
    "joining the instance's network namespace",
    "joining the instance's cgroups",
    "creating the cgroup namespace",
    "making the mount namespace private",
    "mounting the instance's root",
    "creating the root's directories",
    "mounting /proc",
    "mounting /tmp",
    "creating the device nodes",
    "entering the instance's root",
    "making the root read-only",
    "setting the hostname",
    "setting resource limits",
    "dropping to the instance's user",
    "creating the user namespace",
    "mapping the instance's user",
    "dropping capabilities",
    "closing inherited descriptors",
    "installing the seccomp filter",
    STEP_EXEC,
    "writing the instance's /etc",
    "masking the host's kernel information in /proc",
];
const _: () = assert!(STEP_EXEC_INDEX < STEPS.len());

/// Written by the child before it exits on a failure; read once the child is gone.
#[derive(Default)]
struct Failure {
    step: AtomicUsize,
    errno: AtomicI32,
}

/// Everything the child reads, prepared by the parent.
struct ChildArgs {
    stdio: [RawFd; 3],
    exe: RawFd,
    argv: *const *const c_char,
    envp: *const *const c_char,
    sigmask: libc::sigset_t,
    isolation: *const Isolation,
    launch: *const Launch,
    failure: *const Failure,
    /// Sandboxed only: the child's end of the control socket (see [`Zygote`]).
    handshake: RawFd,
    /// Sandboxed only: the agent's end, which the child inherited and closes first thing, so
    /// that an agent that dies mid-handshake leaves it reading end-of-file, not waiting for
    /// itself.
    agent_end: RawFd,
}

/// What a zygote is told when it is launched; set by the parent before it sends the binary.
#[derive(Default)]
struct Launch {
    envp: AtomicPtr<*const c_char>,
    address_space: AtomicU64,
}

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

fn c_path(p: &Path) -> io::Result<CString> {
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

fn cstring(what: &str, s: &str) -> Result<CString, SpawnError> {
    CString::new(s).map_err(|_| SpawnError {
        step: "preparing the environment",
        source: io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} contains a NUL byte"),
        ),
    })
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given, which has room for two.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created by pipe2 and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Starts `command`, inside `sandbox` with `limits` when one is given.
pub fn spawn(
    command: &Command<'_>,
    sandbox: Option<(&Sandbox, &Limits)>,
) -> Result<Spawned, SpawnError> {
    let exe = File::open(command.program).map_err(prep("opening the handler binary"))?;
    let env = environment(command.env)?;
    match sandbox {
        None => spawn_plain(exe, env),
        Some((sandbox, limits)) => sandbox.take_zygote(limits)?.launch(exe, env, limits),
    }
}

/// [`spawn`] for async callers: a sandboxed start that finds the zygote pool empty makes its
/// zygote on tokio's blocking pool instead of holding up the caller's worker thread.
pub async fn spawn_async(
    command: &Command<'_>,
    sandbox: Option<(&Sandbox, &Limits)>,
) -> Result<Spawned, SpawnError> {
    let Some((sandbox, limits)) = sandbox else {
        return spawn(command, None);
    };
    let exe = File::open(command.program).map_err(prep("opening the handler binary"))?;
    let env = environment(command.env)?;
    let zygote = match sandbox.pooled_zygote(limits) {
        Some(zygote) => zygote,
        None => {
            let sandbox = sandbox.clone();
            let egress = limits.egress;
            tokio::task::spawn_blocking(move || Zygote::create(&sandbox, egress))
                .await
                .map_err(|e| SpawnError {
                    step: "starting the sandbox",
                    source: io::Error::other(e),
                })??
        }
    };
    zygote.launch(exe, env, limits)
}

fn prep(step: &'static str) -> impl Fn(io::Error) -> SpawnError {
    move |source| SpawnError { step, source }
}

fn environment(env: &[(String, String)]) -> Result<Vec<CString>, SpawnError> {
    env.iter()
        .map(|(k, v)| {
            if k.is_empty() || k.contains('=') {
                return Err(SpawnError {
                    step: "preparing the environment",
                    source: io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{k:?} is not a valid environment variable name"),
                    ),
                });
            }
            cstring(&format!("environment variable {k}"), &format!("{k}={v}"))
        })
        .collect()
}

fn pointers(strings: &[CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(ptr::null()))
        .collect()
}

/// Blocks every signal on this thread (the child starts with this mask, so no handler of the
/// agent's runs in it before it resets them); returns the previous mask.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigfillset initialises it.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above; pthread_sigmask fills `previous`.
    let mut previous: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both sets are valid, writable sigset_t values.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous);
    }
    previous
}

fn restore_signals(previous: &libc::sigset_t) {
    // SAFETY: restores a mask saved by block_signals.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, previous, ptr::null_mut());
    }
}

/// clone(2) with `child_main` on `stack`.
///
/// # Safety
/// `args`, everything it points to and `stack` must stay alive and unmoved until the child has
/// exec'd or exited.
unsafe fn clone_child(
    args: *const ChildArgs,
    stack: &mut [u8],
    flags: c_int,
) -> Result<(c_int, OwnedFd), SpawnError> {
    let mut pidfd: c_int = -1;
    // SAFETY: the caller keeps `args` and `stack` alive; the stack grows down from its 16-byte
    // aligned top; CLONE_PIDFD makes the kernel store the pidfd in `pidfd`.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(stack.len());
        let top = top.sub(top as usize % 16);
        libc::clone(
            child_main,
            top.cast::<c_void>(),
            flags | libc::CLONE_VM | libc::CLONE_PIDFD | libc::SIGCHLD,
            args.cast_mut().cast::<c_void>(),
            &mut pidfd as *mut c_int,
        )
    };
    if pid < 0 {
        return Err(SpawnError {
            step: "creating the process",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: with CLONE_PIDFD the kernel returned a new descriptor that nobody else owns.
    Ok((pid, unsafe { OwnedFd::from_raw_fd(pidfd) }))
}

fn failure_of(failure: &Failure) -> Option<SpawnError> {
    let step = failure.step.load(Ordering::Acquire);
    (step != 0).then(|| SpawnError {
        step: STEPS.get(step).copied().unwrap_or("starting the handler"),
        source: io::Error::from_raw_os_error(failure.errno.load(Ordering::Acquire)),
    })
}

/// Unconfined: a vfork-style child that execs at once.
fn spawn_plain(exe: File, env: Vec<CString>) -> Result<Spawned, SpawnError> {
    let argv0 = cstring("the program name", "handler")?;
    let argv = [argv0.as_ptr(), ptr::null()];
    let envp = pointers(&env);
    let streams = prep("creating the standard stream pipes");
    let (stdin_child, stdin) = pipe().map_err(&streams)?;
    let (stdout, stdout_child) = pipe().map_err(&streams)?;
    let (stderr, stderr_child) = pipe().map_err(&streams)?;
    let failure = Failure::default();
    let previous = block_signals();
    let args = ChildArgs {
        stdio: [
            stdin_child.as_raw_fd(),
            stdout_child.as_raw_fd(),
            stderr_child.as_raw_fd(),
        ],
        exe: exe.as_raw_fd(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        sigmask: previous,
        isolation: ptr::null(),
        launch: ptr::null(),
        failure: &failure,
        handshake: -1,
        agent_end: -1,
    };
    let mut stack = vec![0u8; 64 * 1024];
    // SAFETY: with CLONE_VFORK this thread is suspended until the child has exec'd or exited,
    // so `args` and `stack` outlive its use of them.
    let cloned = unsafe { clone_child(&args, &mut stack, libc::CLONE_VFORK) };
    restore_signals(&previous);
    let (pid, pidfd) = cloned?;
    drop((stdin_child, stdout_child, stderr_child, exe));
    let mut process = Process::new(pid as u32, pidfd, None, None);
    if let Some(e) = failure_of(&failure) {
        process.reap_now();
        return Err(e);
    }
    Ok(Spawned {
        process,
        stdin,
        stdout,
        stderr,
    })
}

/// A zygote's memory: its stack and everything its code reads. Boxed, so that it does not move,
/// and kept until the zygote has exec'd or died.
pub(crate) struct ZygoteMemory {
    stack: Vec<u8>,
    args: ChildArgs,
    failure: Failure,
    launch: Launch,
    isolation: Isolation,
    argv0: CString,
    argv: [*const c_char; 2],
    env: Vec<CString>,
    envp: Vec<*const c_char>,
}

// SAFETY: the raw pointers in ZygoteMemory point into the same box (or at data the Sandbox
// keeps alive); the agent side only writes `env`/`envp` before publishing them through
// `launch` (Release) and reads `failure` (Acquire) after the zygote has exited.
unsafe impl Send for ZygoteMemory {}
// SAFETY: as above; shared access is read-only or through atomics.
unsafe impl Sync for ZygoteMemory {}

impl std::fmt::Debug for ZygoteMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ZygoteMemory")
    }
}

impl ZygoteMemory {
    /// Why the zygote exited instead of exec'ing the handler, if it did.
    pub(crate) fn failure(&self) -> Option<SpawnError> {
        failure_of(&self.failure)
    }
}

/// A sandboxed process parked before exec (see the module documentation).
pub(crate) struct Zygote {
    pid: c_int,
    pidfd: Option<OwnedFd>,
    control: OwnedFd,
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
    slot: Option<Slot>,
    memory: Option<Box<ZygoteMemory>>,
}

impl Zygote {
    /// Makes a zygote: everything of an instance but its binary. Takes a few hundred
    /// microseconds; runs on the sandbox's own thread, ahead of need.
    pub(crate) fn create(sandbox: &Sandbox, egress: bool) -> Result<Zygote, SpawnError> {
        sandbox.check_open().map_err(prep("starting the sandbox"))?;
        let slot = sandbox
            .take_slot()
            .map_err(prep("preparing the instance's cgroups"))?;
        // Open only until the child is cloned (it inherits copies): idle slots hold none.
        let cgroup_procs = slot
            .open_cgroup_procs()
            .map_err(prep("preparing the instance's cgroups"))?;
        let netns = sandbox.take_netns(egress).map_err(prep(if egress {
            "preparing the instance's internet access"
        } else {
            "preparing the instance's network namespace"
        }))?;
        let isolation = sandbox
            .isolation(&slot, netns.as_raw_fd(), &cgroup_procs, egress)
            .map_err(prep("preparing the sandbox"))?;
        let streams = prep("creating the standard stream pipes");
        let (stdin_child, stdin) = pipe().map_err(&streams)?;
        let (stdout, stdout_child) = pipe().map_err(&streams)?;
        let (stderr, stderr_child) = pipe().map_err(&streams)?;
        let (control, control_child) = socketpair().map_err(prep("creating the control socket"))?;
        let previous = block_signals();
        let mut memory = Box::new(ZygoteMemory {
            stack: vec![0u8; 64 * 1024],
            args: ChildArgs {
                stdio: [
                    stdin_child.as_raw_fd(),
                    stdout_child.as_raw_fd(),
                    stderr_child.as_raw_fd(),
                ],
                exe: -1,
                argv: ptr::null(),
                envp: ptr::null(),
                sigmask: previous,
                isolation: ptr::null(),
                launch: ptr::null(),
                failure: ptr::null(),
                handshake: control_child.as_raw_fd(),
                agent_end: control.as_raw_fd(),
            },
            failure: Failure::default(),
            launch: Launch::default(),
            isolation,
            argv0: cstring("the program name", "handler")?,
            argv: [ptr::null(); 2],
            env: Vec::new(),
            envp: Vec::new(),
        });
        memory.argv[0] = memory.argv0.as_ptr();
        memory.args.argv = memory.argv.as_ptr();
        memory.args.isolation = &memory.isolation;
        memory.args.launch = &memory.launch;
        memory.args.failure = &memory.failure;
        let args: *const ChildArgs = &memory.args;
        // SAFETY: the box stays alive and unmoved until the child has exec'd or exited: a Zygote
        // (and then the Process it becomes) owns it and frees it only after reaping the child.
        let cloned = unsafe {
            clone_child(
                args,
                &mut memory.stack,
                libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS,
            )
        };
        restore_signals(&previous);
        let (pid, pidfd) = cloned?;
        drop((
            stdin_child,
            stdout_child,
            stderr_child,
            control_child,
            netns,
            cgroup_procs,
        ));
        let mut zygote = Zygote {
            pid,
            pidfd: Some(pidfd),
            control,
            stdin,
            stdout,
            stderr,
            slot: Some(slot),
            memory: Some(memory),
        };
        // The child asks for its user namespace's maps ('r'), which only a process with
        // CAP_SETUID in the parent namespace may write for a uid other than its own, then
        // reports that it is parked ('k'). It closes its end if it fails.
        let result = (|| {
            if !zygote.expect(b'r')? {
                return Ok(false);
            }
            let proc_ = format!("/proc/{pid}");
            let iso = &zygote
                .memory
                .as_ref()
                .ok_or_else(|| io::Error::other("gone"))?
                .isolation;
            std::fs::write(format!("{proc_}/uid_map"), &iso.uid_map)?;
            std::fs::write(format!("{proc_}/setgroups"), "deny")?;
            std::fs::write(format!("{proc_}/gid_map"), &iso.gid_map)?;
            (&zygote.control_file()?).write_all(b"m")?;
            zygote.expect(b'k')
        })();
        match result {
            Ok(true) => Ok(zygote),
            Ok(false) => Err(zygote.kill_and_reap().unwrap_or_else(|| SpawnError {
                step: "starting the sandbox",
                source: io::Error::other("the sandboxed process exited during set-up"),
            })),
            Err(source) => {
                zygote.kill_and_reap();
                Err(SpawnError {
                    step: "mapping the instance's user",
                    source,
                })
            }
        }
    }

    fn control_file(&self) -> io::Result<File> {
        Ok(File::from(self.control.try_clone()?))
    }

    /// Reads one byte from the child: `Ok(false)` if it closed its end instead.
    fn expect(&self, want: u8) -> io::Result<bool> {
        let mut byte = [0u8; 1];
        if (&self.control_file()?).read(&mut byte)? == 0 {
            return Ok(false);
        }
        if byte[0] != want {
            return Err(io::Error::other(format!(
                "unexpected handshake byte {:?}",
                byte[0] as char
            )));
        }
        Ok(true)
    }

    /// Hands the zygote its binary and environment; it execs on its own from there.
    pub(crate) fn launch(
        mut self,
        exe: File,
        env: Vec<CString>,
        limits: &Limits,
    ) -> Result<Spawned, SpawnError> {
        let (Some(mut slot), Some(mut memory), Some(pidfd)) =
            (self.slot.take(), self.memory.take(), self.pidfd.take())
        else {
            return Err(SpawnError {
                step: "starting the sandbox",
                source: io::Error::other("the zygote was already used"),
            });
        };
        let fail = |slot: Slot, memory: Box<ZygoteMemory>, pidfd: OwnedFd, e: SpawnError| {
            // Reaped through a Process so the memory outlives the child.
            let mut p = Process::new(self.pid as u32, pidfd, Some(slot), Some(memory));
            let _ = p.signal(libc::SIGKILL);
            p.reap_now();
            Err(e)
        };
        if let Err(e) = slot.set_memory(limits.memory_mb) {
            return fail(
                slot,
                memory,
                pidfd,
                prep("setting the instance's memory limit")(e),
            );
        }
        memory.env = env;
        memory.envp = pointers(&memory.env);
        let memory_bytes = limits.memory_mb.saturating_mul(1 << 20);
        memory.launch.address_space.store(
            address_space_limit(memory_bytes, slot.has_memory_cgroup()),
            Ordering::Relaxed,
        );
        memory
            .launch
            .envp
            .store(memory.envp.as_ptr().cast_mut(), Ordering::Release);
        if let Err(e) = send_fd(&self.control, exe.as_raw_fd()) {
            return fail(
                slot,
                memory,
                pidfd,
                prep("handing the binary to the sandbox")(e),
            );
        }
        drop(exe);
        let process = Process::new(self.pid as u32, pidfd, Some(slot), Some(memory));
        let stdin = std::mem::replace(&mut self.stdin, placeholder()?);
        let stdout = std::mem::replace(&mut self.stdout, placeholder()?);
        let stderr = std::mem::replace(&mut self.stderr, placeholder()?);
        Ok(Spawned {
            process,
            stdin,
            stdout,
            stderr,
        })
    }

    /// Kills and reaps the child, then frees its memory; returns the failure it reported, if
    /// it exited on one.
    fn kill_and_reap(&mut self) -> Option<SpawnError> {
        if let Some(pidfd) = self.pidfd.take() {
            // SAFETY: signals and reaps our own child through its pidfd; siginfo out-param is
            // a local.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd.as_raw_fd(),
                    libc::SIGKILL,
                    ptr::null::<libc::siginfo_t>(),
                    0,
                );
                let mut info: libc::siginfo_t = std::mem::zeroed();
                while libc::waitid(
                    libc::P_PIDFD,
                    pidfd.as_raw_fd() as libc::id_t,
                    &mut info,
                    libc::WEXITED,
                ) < 0
                    && errno() == libc::EINTR
                {}
            }
        }
        // Only now that the child is gone may its stack be freed.
        self.memory.take().and_then(|m| m.failure())
    }
}

impl Drop for Zygote {
    fn drop(&mut self) {
        let _ = self.kill_and_reap();
    }
}

/// A closed-on-drop descriptor to put in place of one handed out.
fn placeholder() -> Result<OwnedFd, SpawnError> {
    File::open("/dev/null")
        .map(OwnedFd::from)
        .map_err(prep("opening /dev/null"))
}

/// The address-space rlimit: a backstop where a memory cgroup enforces the real limit, the
/// limit itself (plus room for stacks and mappings) where none does.
fn address_space_limit(memory: u64, has_memory_cgroup: bool) -> u64 {
    if has_memory_cgroup {
        memory.saturating_mul(4).saturating_add(1 << 30)
    } else {
        memory.saturating_add(256 << 20)
    }
}

/// Sends one byte carrying `fd` (SCM_RIGHTS).
fn send_fd(socket: &OwnedFd, fd: RawFd) -> io::Result<()> {
    let mut byte = [b'x'];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // u64 words keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: msghdr and cmsghdr are plain data built over local buffers that outlive sendmsg;
    // CMSG_SPACE(size_of::<c_int>()) fits in the 64-byte control buffer.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(size_of::<c_int>() as u32) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<c_int>() as u32) as usize;
        ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<c_int>(), fd);
        if libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: socketpair writes two descriptors into the array, which has room for two.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The child: runs on the parent's memory until `execveat`. Only system calls from here on.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the ChildArgs the parent keeps alive and unmoved until this child execs
    // or exits (CLONE_VFORK for a plain child; a zygote's lives in its ZygoteMemory box).
    let args = unsafe { &*(arg as *const ChildArgs) };
    // SAFETY: this is that child, and `args` is as `spawn` prepared it.
    let step = match unsafe { child_steps(args) } {
        Ok(never) => match never {},
        Err(step) => step,
    };
    // SAFETY: `failure` points at the parent's Failure, alive for the same reason as `args`;
    // the parent reads it only after this process has exited.
    unsafe {
        let failure = &*args.failure;
        failure.errno.store(errno(), Ordering::Release);
        failure.step.store(step, Ordering::Release);
        libc::_exit(127)
    }
}

enum Never {}

/// Creates `path` (read-only to all) holding `contents`; for the child, so system calls only.
///
/// # Safety
/// Only in the child, with `path` prepared by the parent.
unsafe fn write_file(path: &CString, contents: &[u8]) -> Result<(), ()> {
    // SAFETY: open/write/close on a C string and a slice the parent keeps alive.
    unsafe {
        let fd = libc::open(
            path.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
            0o444,
        );
        if fd < 0 {
            return Err(());
        }
        let written = libc::write(fd, contents.as_ptr().cast(), contents.len());
        libc::close(fd);
        if written != contents.len() as isize {
            return Err(());
        }
    }
    Ok(())
}

/// Each failure returns the index of its step in [`STEPS`]; errno is still the call's.
///
/// # Safety
/// Must run only in the child created by [`spawn`], with `args` as prepared there.
unsafe fn child_steps(args: &ChildArgs) -> Result<Never, usize> {
    let ok = |rc: c_int, step: usize| if rc < 0 { Err(step) } else { Ok(()) };
    let okl = |rc: libc::c_long, step: usize| if rc < 0 { Err(step) } else { Ok(()) };
    // SAFETY: (the whole function) every call below is a system call on descriptors, C strings
    // and structures that the parent prepared and keeps alive; none allocates or takes a lock.
    unsafe {
        // Handlers the agent installed must not run in (or be inherited by) the child; std's
        // SIG_IGN for SIGPIPE must not be inherited either.
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::sigaction(sig, &dfl, ptr::null_mut());
            }
        }
        ok(
            libc::pthread_sigmask(libc::SIG_SETMASK, &args.sigmask, ptr::null_mut()),
            1,
        )?;
        for (target, &fd) in args.stdio.iter().enumerate() {
            ok(libc::dup2(fd, target as c_int), 1)?;
        }

        if let Some(iso) = args.isolation.as_ref() {
            let paths = &*iso.paths;
            libc::close(args.agent_end);
            // A parked zygote dies with the thread that made it (the sandbox's own, or the one
            // that launches it at once); cleared before exec.
            ok(
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0),
                1,
            )?;
            // Made by a niced background thread: the instance runs at the normal priority.
            libc::setpriority(libc::PRIO_PROCESS, 0, 0);
            ok(libc::setns(iso.netns, libc::CLONE_NEWNET), 2)?;
            for &fd in &iso.cgroup_procs {
                okl(libc::write(fd, b"0".as_ptr().cast(), 1) as libc::c_long, 3)?;
            }
            ok(libc::unshare(libc::CLONE_NEWCGROUP), 4)?;
            ok(
                libc::mount(
                    ptr::null(),
                    c"/".as_ptr(),
                    ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    ptr::null(),
                ),
                5,
            )?;
            ok(
                libc::mount(
                    c"ignite".as_ptr(),
                    paths.root.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID,
                    paths.root_options.as_ptr().cast(),
                ),
                6,
            )?;
            ok(libc::mkdir(paths.proc_.as_ptr(), 0o555), 7)?;
            ok(libc::mkdir(paths.tmp.as_ptr(), 0o1777), 7)?;
            ok(libc::mkdir(paths.dev.as_ptr(), 0o755), 7)?;
            ok(
                libc::mount(
                    c"proc".as_ptr(),
                    paths.proc_.as_ptr(),
                    c"proc".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    ptr::null(),
                ),
                8,
            )?;
            ok(
                libc::mount(
                    c"tmp".as_ptr(),
                    paths.tmp.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    iso.tmp_options.as_ptr().cast(),
                ),
                9,
            )?;
            for (path, dev) in &paths.devices {
                ok(libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, *dev), 10)?;
            }
            // Done here, as root of the host's user namespace (the instance's comes later), so
            // no rule about mounts in a user namespace applies, and the instance, which never
            // holds a capability over this mount namespace, cannot undo any of it (seccomp
            // refuses umount2 and mount besides).
            let masks = &paths.masks;
            for file in &masks.files {
                ok(
                    libc::mount(
                        masks.null.as_ptr(),
                        file.as_ptr(),
                        ptr::null(),
                        libc::MS_BIND,
                        ptr::null(),
                    ),
                    23,
                )?;
            }
            for dir in &masks.dirs {
                ok(
                    libc::mount(
                        c"masked".as_ptr(),
                        dir.as_ptr(),
                        c"tmpfs".as_ptr(),
                        libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                        masks.dir_options.as_ptr().cast(),
                    ),
                    23,
                )?;
            }
            for dir in &masks.read_only {
                ok(
                    libc::mount(
                        dir.as_ptr(),
                        dir.as_ptr(),
                        ptr::null(),
                        libc::MS_BIND,
                        ptr::null(),
                    ),
                    23,
                )?;
                ok(
                    libc::mount(
                        ptr::null(),
                        dir.as_ptr(),
                        ptr::null(),
                        libc::MS_REMOUNT
                            | libc::MS_BIND
                            | libc::MS_RDONLY
                            | libc::MS_NOSUID
                            | libc::MS_NODEV
                            | libc::MS_NOEXEC,
                        ptr::null(),
                    ),
                    23,
                )?;
            }
            if let Some(resolv_conf) = &iso.resolv_conf {
                ok(libc::mkdir(paths.etc.as_ptr(), 0o755), 22)?;
                write_file(&paths.resolv_conf, resolv_conf.as_bytes()).map_err(|()| 22usize)?;
                write_file(&paths.hosts, b"127.0.0.1 localhost\n::1 localhost\n")
                    .map_err(|()| 22usize)?;
            }
            ok(
                libc::mount(
                    ptr::null(),
                    paths.root.as_ptr(),
                    ptr::null(),
                    libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID,
                    ptr::null(),
                ),
                12,
            )?;
            // Held to enter the root later: by then the process is an unprivileged user, who may
            // not be able to walk the host path down to it.
            let root = libc::open(
                paths.root.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            );
            ok(root, 11)?;
            ok(libc::sethostname(c"ignite".as_ptr(), 6), 13)?;
            for &(resource, value) in &iso.rlimits {
                let limit = libc::rlimit64 {
                    rlim_cur: value,
                    rlim_max: value,
                };
                ok(libc::setrlimit64(resource, &limit), 14)?;
            }
            okl(
                libc::syscall(libc::SYS_setgroups, 0, ptr::null::<u32>()),
                15,
            )?;
            ok(libc::unshare(libc::CLONE_NEWUSER), 16)?;
            // The agent maps uid and gid 1000 here to the instance's host uid and gid.
            let mut byte = b'r';
            okl(
                libc::write(args.handshake, (&byte as *const u8).cast(), 1) as libc::c_long,
                17,
            )?;
            if libc::read(args.handshake, (&mut byte as *mut u8).cast(), 1) != 1 {
                return Err(17);
            }
            okl(libc::syscall(libc::SYS_setresgid, 1000, 1000, 1000), 15)?;
            okl(libc::syscall(libc::SYS_setresuid, 1000, 1000, 1000), 15)?;
            // chroot rather than pivot_root: detaching the old root costs a synchronize_rcu
            // (~0.3 ms) per instance. The host's mounts stay in the namespace but out of reach:
            // leaving a chroot takes CAP_SYS_CHROOT or a descriptor outside, and the process
            // keeps neither (capabilities dropped below, seccomp refuses chroot, descriptors
            // close on exec). unshare(CLONE_NEWUSER) had to come first: it is refused inside a
            // chroot. chroot itself takes CAP_SYS_CHROOT in the new user namespace, which the
            // process still holds.
            ok(libc::fchdir(root), 11)?;
            ok(libc::chroot(c".".as_ptr()), 11)?;
            ok(libc::chdir(c"/".as_ptr()), 11)?;
            libc::close(root);
            // Full capabilities in the new (empty) user namespace: drop them all, bounding set
            // included, so nothing regains them through exec.
            for cap in 0..64 {
                libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
            }
            let mut header = CapHeader {
                version: 0x2008_0522,
                pid: 0,
            };
            let data = [CapData::default(); 2];
            okl(
                libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()),
                18,
            )?;
            ok(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 18)?;
        }

        let Some(iso) = args.isolation.as_ref() else {
            // Nothing of the agent's crosses exec but the three streams (and the binary's own
            // descriptor, closed by the exec itself).
            ok(
                libc::close_range(3, c_int::MAX as u32, libc::CLOSE_RANGE_CLOEXEC as c_int),
                19,
            )?;
            libc::execveat(
                args.exe,
                c"".as_ptr(),
                args.argv.cast_mut().cast(),
                args.envp.cast_mut().cast(),
                libc::AT_EMPTY_PATH,
            );
            return Err(STEP_EXEC_INDEX);
        };
        ok(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                &iso.filter as *const libc::sock_fprog,
            ),
            20,
        )?;
        // A zygote keeps nothing of the agent's: the control socket moves to fd 3 and every
        // other descriptor inherited with the agent's table is closed (not merely marked
        // close-on-exec: the descriptor it will receive needs a free number under its
        // RLIMIT_NOFILE).
        let control: c_int = 3;
        ok(libc::dup2(args.handshake, control), 19)?;
        ok(libc::close_range(4, c_int::MAX as u32, 0), 19)?;
        // Parked: wait for the binary (a descriptor passed over the control socket).
        let parked = b'k';
        okl(
            libc::write(control, (&parked as *const u8).cast(), 1) as libc::c_long,
            17,
        )?;
        let exe = receive_fd(control);
        if exe == -2 {
            // The agent let this zygote go.
            libc::_exit(0);
        }
        ok(exe, 21)?;
        let launch = &*args.launch;
        ok(libc::prctl(libc::PR_SET_PDEATHSIG, 0, 0, 0, 0), 21)?;
        let limit = libc::rlimit64 {
            rlim_cur: launch.address_space.load(Ordering::Relaxed),
            rlim_max: launch.address_space.load(Ordering::Relaxed),
        };
        ok(libc::setrlimit64(libc::RLIMIT_AS, &limit), 14)?;
        libc::execveat(
            exe,
            c"".as_ptr(),
            args.argv.cast_mut().cast(),
            launch.envp.load(Ordering::Acquire).cast(),
            libc::AT_EMPTY_PATH,
        );
        Err(STEP_EXEC_INDEX)
    }
}

/// Child side of [`send_fd`]: the received descriptor (close-on-exec), -2 if the peer closed
/// the socket, -1 on an error (errno set).
///
/// # Safety
/// Child-side only; plain system calls on local buffers.
unsafe fn receive_fd(socket: RawFd) -> c_int {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data over local buffers that outlive recvmsg; the cmsg pointers
    // come from the kernel-filled control buffer and are checked before use.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control);
        let n = loop {
            let n = libc::recvmsg(socket, &mut msg, libc::MSG_CMSG_CLOEXEC);
            if n >= 0 || errno() != libc::EINTR {
                break n;
            }
        };
        if n == 0 {
            return -2;
        }
        if n < 0 {
            return -1;
        }
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
        {
            *libc::__errno_location() = libc::EBADMSG;
            return -1;
        }
        ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<c_int>())
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}
