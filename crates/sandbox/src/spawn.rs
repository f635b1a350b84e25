//! Starting a process: `clone` with vfork semantics, then, in the child, the sandbox set-up and
//! `execveat` of the handler binary.
//!
//! The child shares the agent's memory until it execs (`CLONE_VM | CLONE_VFORK`, what
//! `posix_spawn` does), so starting an instance costs no page-table copy of the agent. The price
//! is that the child may only make system calls on data prepared before `clone`: no allocation,
//! no locks, no glibc wrapper that talks to other threads (glibc's `setresuid` signals every
//! thread of the *agent*, so credentials change through raw `syscall`s).

use std::ffi::{CString, c_char, c_int, c_void};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::ptr;

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
    "switching to the instance's root",
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
];

struct Failure {
    step: usize,
    errno: i32,
}

/// Everything the child reads, prepared by the parent.
struct ChildArgs {
    stdio: [RawFd; 3],
    exe: RawFd,
    argv: *const *const c_char,
    envp: *const *const c_char,
    sigmask: libc::sigset_t,
    isolation: *const Isolation,
    failure: *mut Failure,
}

pub(crate) struct Isolation {
    pub netns: RawFd,
    pub cgroup_procs: Vec<RawFd>,
    pub paths: *const RootPaths,
    pub tmp_options: CString,
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64)>,
    pub uid: u32,
    pub gid: u32,
    pub uid_map: CString,
    pub gid_map: CString,
    pub filters: Vec<libc::sock_fprog>,
}

/// Paths under the directory on which each instance mounts its root.
pub(crate) struct RootPaths {
    pub root: CString,
    pub root_options: CString,
    pub proc_: CString,
    pub tmp: CString,
    pub dev: CString,
    pub devices: Vec<(CString, libc::dev_t)>,
}

impl RootPaths {
    pub(crate) fn new(root: &Path) -> io::Result<RootPaths> {
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte")
            })
        };
        let dev = root.join("dev");
        Ok(RootPaths {
            root: c(root)?,
            root_options: CString::new("size=64k,nr_inodes=32,mode=755")
                .map_err(io::Error::other)?,
            proc_: c(&root.join("proc"))?,
            tmp: c(&root.join("tmp"))?,
            devices: [("null", 3), ("zero", 5), ("random", 8), ("urandom", 9)]
                .into_iter()
                .map(|(name, minor)| Ok((c(&dev.join(name))?, libc::makedev(1, minor))))
                .collect::<io::Result<_>>()?,
            dev: c(&dev)?,
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
    let prep = |step: &'static str| move |source: io::Error| SpawnError { step, source };
    let exe = File::open(command.program).map_err(prep("opening the handler binary"))?;
    let argv0 = cstring("the program name", "handler")?;
    let argv = [argv0.as_ptr(), ptr::null()];
    let env = command
        .env
        .iter()
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
        .collect::<Result<Vec<_>, _>>()?;
    let mut envp: Vec<*const c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(ptr::null());

    let streams = prep("creating the standard stream pipes");
    let (stdin_child, stdin) = pipe().map_err(streams)?;
    let (stdout, stdout_child) = pipe().map_err(streams)?;
    let (stderr, stderr_child) = pipe().map_err(streams)?;

    let mut slot: Option<Slot> = None;
    let mut netns: Option<OwnedFd> = None;
    let isolation = match sandbox {
        Some((sandbox, limits)) => {
            let s = sandbox
                .take_slot(limits)
                .map_err(prep("preparing the instance's cgroups"))?;
            let ns = sandbox
                .take_netns()
                .map_err(prep("preparing the instance's network namespace"))?;
            let iso = sandbox.isolation(&s, ns.as_raw_fd(), limits);
            slot = Some(s);
            netns = Some(ns);
            Some(iso.map_err(prep("preparing the sandbox"))?)
        }
        None => None,
    };

    let mut failure = Failure { step: 0, errno: 0 };
    // SAFETY: sigset_t is plain data; sigfillset initialises it.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above; pthread_sigmask fills `previous`.
    let mut previous: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both sets are valid, writable sigset_t values.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous);
    }
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
        isolation: isolation.as_ref().map_or(ptr::null(), |i| i as *const _),
        failure: &mut failure,
    };
    let mut flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD;
    if isolation.is_some() {
        flags |= libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    }
    let mut stack = vec![0u8; 128 * 1024];
    let mut pidfd: c_int = -1;
    // SAFETY: the stack is a live allocation that outlives the child's use of it: with
    // CLONE_VFORK this thread is suspended until the child has exec'd or exited, and the stack
    // grows down from its (16-byte aligned) top. `args` and everything it points to stay alive
    // and unmoved for the same reason. CLONE_PIDFD makes the kernel store the pidfd in `pidfd`.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(stack.len());
        let top = top.sub(top as usize % 16);
        libc::clone(
            child_main,
            top.cast::<c_void>(),
            flags,
            (&args as *const ChildArgs).cast_mut().cast::<c_void>(),
            &mut pidfd as *mut c_int,
        )
    };
    let clone_error = io::Error::last_os_error();
    // SAFETY: restores the mask saved above.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, ptr::null_mut());
    }
    drop(stack);
    if pid < 0 {
        return Err(SpawnError {
            step: "creating the process",
            source: clone_error,
        });
    }
    // SAFETY: with CLONE_PIDFD the kernel returned a new descriptor that nobody else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    drop((stdin_child, stdout_child, stderr_child, netns, exe));
    let mut process =
        Process::new(pid as u32, pidfd, slot).map_err(prep("watching the process"))?;
    if failure.step != 0 {
        process.reap_now();
        return Err(SpawnError {
            step: STEPS
                .get(failure.step)
                .copied()
                .unwrap_or("starting the handler"),
            source: io::Error::from_raw_os_error(failure.errno),
        });
    }
    Ok(Spawned {
        process,
        stdin,
        stdout,
        stderr,
    })
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The child: runs on the parent's memory until `execveat`. Only system calls from here on.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the ChildArgs the parent keeps alive and unmoved until this child execs
    // or exits (CLONE_VFORK).
    let args = unsafe { &*(arg as *const ChildArgs) };
    let step = match unsafe { child_steps(args) } {
        Ok(never) => match never {},
        Err(step) => step,
    };
    // SAFETY: `failure` points at the parent's Failure, alive for the same reason as `args`;
    // the parent reads it only after this process has exited.
    unsafe {
        *args.failure = Failure {
            step,
            errno: errno(),
        };
        libc::_exit(127)
    }
}

enum Never {}

/// Each failure returns the index of its step in [`STEPS`]; errno is still the call's.
///
/// # Safety
/// Must run only in the child created by [`spawn`], with `args` as prepared there.
unsafe fn child_steps(args: &ChildArgs) -> Result<Never, usize> {
    let ok = |rc: c_int, step: usize| if rc < 0 { Err(step) } else { Ok(()) };
    let okl = |rc: libc::c_long, step: usize| if rc < 0 { Err(step) } else { Ok(()) };
    // SAFETY (whole function): every call below is a system call on descriptors, C strings and
    // structures that the parent prepared and keeps alive; none allocates or takes a lock.
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
            ok(libc::chdir(paths.root.as_ptr()), 11)?;
            okl(
                libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()),
                11,
            )?;
            ok(libc::umount2(c".".as_ptr(), libc::MNT_DETACH), 11)?;
            ok(libc::chdir(c"/".as_ptr()), 11)?;
            ok(
                libc::mount(
                    ptr::null(),
                    c"/".as_ptr(),
                    ptr::null(),
                    libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID,
                    ptr::null(),
                ),
                12,
            )?;
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
            okl(
                libc::syscall(libc::SYS_setresgid, iso.gid, iso.gid, iso.gid),
                15,
            )?;
            okl(
                libc::syscall(libc::SYS_setresuid, iso.uid, iso.uid, iso.uid),
                15,
            )?;
            // Changing credentials made the process non-dumpable, which hands /proc/self to
            // root; make it ours again to write the user namespace's maps.
            ok(libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0), 16)?;
            ok(libc::unshare(libc::CLONE_NEWUSER), 16)?;
            write_file(c"/proc/self/uid_map", &iso.uid_map, 17)?;
            write_file(c"/proc/self/setgroups", c"deny", 17)?;
            write_file(c"/proc/self/gid_map", &iso.gid_map, 17)?;
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

        // Nothing of the agent's crosses exec but the three streams (and the binary's own
        // descriptor, closed by the exec itself).
        ok(
            libc::close_range(3, c_int::MAX as u32, libc::CLOSE_RANGE_CLOEXEC as c_int),
            19,
        )?;
        if let Some(iso) = args.isolation.as_ref() {
            for filter in &iso.filters {
                ok(
                    libc::prctl(
                        libc::PR_SET_SECCOMP,
                        libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                        filter as *const libc::sock_fprog,
                    ),
                    20,
                )?;
            }
        }
        libc::execveat(
            args.exe,
            c"".as_ptr(),
            args.argv.cast_mut().cast(),
            args.envp.cast_mut().cast(),
            libc::AT_EMPTY_PATH,
        );
        Err(21)
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

/// # Safety
/// Child-side only: `path` and `content` are valid C strings.
unsafe fn write_file(
    path: &std::ffi::CStr,
    content: &std::ffi::CStr,
    step: usize,
) -> Result<(), usize> {
    // SAFETY: plain system calls on valid C strings and a descriptor opened here.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(step);
        }
        let bytes = content.to_bytes();
        let written = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        libc::close(fd);
        if written != bytes.len() as isize {
            return Err(step);
        }
    }
    Ok(())
}
