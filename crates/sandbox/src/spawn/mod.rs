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
//!
//! - this file: the parent side — the public entry points, a plain start, and the `clone`;
//! - `zygote.rs`: making a zygote, and launching one;
//! - `isolation.rs`: what the sandbox prepares for a sandboxed child (paths, maps, limits);
//! - `child.rs`: the child itself, from `clone` to `execveat`.
//!
//! Why a start failed ([`SpawnError`], and the step the child reports) is in `failure.rs`, which
//! [`Process`] uses as well.

mod child;
mod isolation;
mod zygote;

use std::ffi::{CString, c_char, c_int, c_void};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::ptr;

use crate::failure::{Failure, SpawnError, failure_of};
use crate::process::Process;
use crate::{Limits, Sandbox};
use child::{ChildArgs, child_main};
pub use isolation::{Bind, ImageRoot};
pub(crate) use isolation::{BindMount, ImageMounts, Isolation, RootPaths, c_path};
pub(crate) use zygote::Zygote;
pub(crate) use zygote::send_fds;

/// What to start.
#[derive(Debug, Clone)]
pub struct Command<'a> {
    pub program: &'a Path,
    /// The argument vector, `argv[0]` first (an interpreter finds its files from it); empty
    /// for a bare `handler`.
    pub argv: &'a [String],
    /// The complete environment: nothing is inherited.
    pub env: &'a [(String, String)],
    /// Host paths visible read-only in the sandbox root (an interpreter's files); the root is
    /// empty without them. Ignored unsandboxed.
    pub binds: &'a [Bind],
    /// The program reserves far more address space than it uses (V8): it runs without the
    /// RLIMIT_AS backstop, its memory cgroup being its limit (refused where there is none).
    pub reserves_address_space: bool,
}

/// A started process and the agent's ends of its three standard streams.
#[derive(Debug)]
pub struct Spawned {
    pub process: Process,
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// The process's network namespace, for an image's instance (the agent connects to the
    /// container's port inside it); `None` otherwise.
    pub netns: Option<crate::Netns>,
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

pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
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
    let argv = arguments(command.argv)?;
    match sandbox {
        None => spawn_plain(exe, argv, env),
        Some((sandbox, limits)) if !command.binds.is_empty() => {
            let binds = BindMount::prepare(&sandbox.root_dir(), command.binds)
                .map_err(prep("preparing the runtime's files"))?;
            Zygote::create_with(sandbox, limits.egress, binds, None)?
                .reserving_address_space(command.reserves_address_space)
                .launch(exe, argv, env, limits)
        }
        Some((sandbox, limits)) => sandbox
            .take_zygote(limits)?
            .reserving_address_space(command.reserves_address_space)
            .launch(exe, argv, env, limits),
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
    let argv = arguments(command.argv)?;
    let binds = BindMount::prepare(&sandbox.root_dir(), command.binds)
        .map_err(prep("preparing the runtime's files"))?;
    // A zygote with binds is made for its command (the pool's have an empty root).
    let pooled = match binds.is_empty() {
        true => sandbox.pooled_zygote(limits),
        false => None,
    };
    let zygote = match pooled {
        Some(zygote) => zygote,
        None => {
            let sandbox = sandbox.clone();
            let egress = limits.egress;
            tokio::task::spawn_blocking(move || Zygote::create_with(&sandbox, egress, binds, None))
                .await
                .map_err(|e| SpawnError {
                    step: "starting the sandbox",
                    source: io::Error::other(e),
                })??
        }
    };
    zygote
        .reserving_address_space(command.reserves_address_space)
        .launch(exe, argv, env, limits)
}

/// A sandboxed process made ahead of need for one kind of command — its binds mounted, its
/// namespaces, cgroups, user and seccomp filter set up — parked until it is handed its program
/// by [`spawn_prepared`]. Making one takes from a millisecond to tens of them (joining a cgroup
/// waits for the kernel's RCU grace period, longer on a busy machine), which a start with one
/// does not pay: the pool's zygotes do this for commands without binds; a runtime whose
/// instances bind an interpreter keeps its own. Dropping it kills the parked process.
pub struct Prepared {
    zygote: Zygote,
    binds: Vec<Bind>,
    egress: bool,
    /// Made by [`Prepared::image`]: the command's program is a path inside this root.
    image: Option<ImageRoot>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("binds", &self.binds)
            .field("egress", &self.egress)
            .field("image", &self.image)
            .finish()
    }
}

impl Prepared {
    /// Makes one for commands with `binds`, with internet access or not. Blocking: call it off
    /// the async path (tokio's blocking pool).
    pub fn new(sandbox: &Sandbox, binds: &[Bind], egress: bool) -> Result<Prepared, SpawnError> {
        let mounts = BindMount::prepare(&sandbox.root_dir(), binds)
            .map_err(prep("preparing the runtime's files"))?;
        Ok(Prepared {
            zygote: Zygote::create_with(sandbox, egress, mounts, None)?,
            binds: binds.to_vec(),
            egress,
            image: None,
        })
    }

    /// Makes one whose root is a container image's unpacked root (read-only, with the
    /// sandbox's `/proc`, `/dev` and `/tmp` mounted over its own), whose process starts in the
    /// image's working directory as the image's user (mapped to the instance's host uid, with
    /// no capability). A command launched in it names its program by its path inside the root.
    /// Blocking, as [`Prepared::new`].
    pub fn image(
        sandbox: &Sandbox,
        image: &ImageRoot,
        egress: bool,
    ) -> Result<Prepared, SpawnError> {
        Ok(Prepared {
            zygote: Zygote::create_with(sandbox, egress, Vec::new(), Some(image))?,
            binds: Vec::new(),
            egress,
            image: Some(image.clone()),
        })
    }

    /// Whether a memory cgroup will hold its process's memory (a program that reserves far
    /// more address space than it uses can then run without RLIMIT_AS).
    pub fn has_memory_cgroup(&self) -> bool {
        self.zygote.has_memory_cgroup()
    }

    /// The image root it was made for, if it was.
    pub fn image_root(&self) -> Option<&ImageRoot> {
        self.image.as_ref()
    }

    /// Whether it was made for `command` under `limits` (the same binds and network access).
    pub fn fits(&self, command: &Command<'_>, limits: &Limits) -> bool {
        self.binds == command.binds && self.egress == limits.egress
    }
}

/// Starts `command` in `prepared`, with `limits` (the memory limit is set now); refused if it
/// was prepared for other binds or network access ([`Prepared::fits`]).
pub fn spawn_prepared(
    prepared: Prepared,
    command: &Command<'_>,
    limits: &Limits,
) -> Result<Spawned, SpawnError> {
    if !prepared.fits(command, limits) {
        return Err(SpawnError {
            step: "starting the sandbox",
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                "the prepared sandbox was made for other binds or network access",
            ),
        });
    }
    let env = environment(command.env)?;
    let argv = arguments(command.argv)?;
    let zygote = prepared
        .zygote
        .reserving_address_space(command.reserves_address_space);
    if prepared.image.is_some() {
        let path = c_path(command.program).map_err(prep("preparing the image's program"))?;
        return zygote.launch_path(path, argv, env, limits);
    }
    let exe = File::open(command.program).map_err(prep("opening the handler binary"))?;
    zygote.launch(exe, argv, env, limits)
}

fn prep(step: &'static str) -> impl Fn(io::Error) -> SpawnError {
    move |source| SpawnError { step, source }
}

pub(crate) fn environment(env: &[(String, String)]) -> Result<Vec<CString>, SpawnError> {
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

/// `argv` as C strings; `["handler"]` when it is empty.
fn arguments(argv: &[String]) -> Result<Vec<CString>, SpawnError> {
    if argv.is_empty() {
        return Ok(vec![cstring("the program name", "handler")?]);
    }
    argv.iter().map(|a| cstring("an argument", a)).collect()
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

/// Unconfined: a vfork-style child that execs at once.
fn spawn_plain(exe: File, argv: Vec<CString>, env: Vec<CString>) -> Result<Spawned, SpawnError> {
    let argv = pointers(&argv);
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
        netns: None,
    })
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}
