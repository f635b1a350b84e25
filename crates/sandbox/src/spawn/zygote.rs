//! Zygotes: sandboxed processes made ahead of need, parked before exec (see the module
//! documentation of `spawn`), and their launch.

use std::ffi::{CString, c_char, c_int};
use std::fs::File;
use std::io;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::atomic::Ordering;

use super::child::{ChildArgs, Launch};
use super::isolation::{BindMount, ImageRoot, Isolation};
use super::{Spawned, block_signals, clone_child, errno, pipe, pointers, prep, restore_signals};
use crate::failure::{Failure, SpawnError, failure_of};
use crate::process::{ChildMemory, Process};
use crate::{Limits, Sandbox, Slot};

/// A zygote's memory: its stack and everything its code reads. Boxed, so that it does not move,
/// and kept until the zygote has exec'd or died.
pub(crate) struct ZygoteMemory {
    stack: Vec<u8>,
    args: ChildArgs,
    failure: Failure,
    launch: Launch,
    isolation: Isolation,
    argv: Vec<CString>,
    argvp: Vec<*const c_char>,
    env: Vec<CString>,
    envp: Vec<*const c_char>,
    /// An image's program, executed by its path inside the root.
    path: Option<CString>,
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

impl ChildMemory for ZygoteMemory {
    /// Why the zygote exited instead of exec'ing the handler, if it did.
    fn failure(&self) -> Option<SpawnError> {
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
    /// Launch without an address-space limit (see [`Zygote::reserving_address_space`]).
    reserves_address_space: bool,
    /// The zygote's network namespace, kept for an image's instance: the agent reaches the
    /// container's port through a socket made in it.
    netns: Option<OwnedFd>,
}

impl Zygote {
    /// For a program that reserves far more address space than it touches (V8 reserves tens
    /// of GiB at start): no RLIMIT_AS, the memory cgroup alone is its limit; a host without
    /// one cannot confine it, and the launch is refused.
    pub(crate) fn reserving_address_space(mut self, yes: bool) -> Zygote {
        self.reserves_address_space = yes;
        self
    }

    /// Whether its memory limit will be a memory cgroup's (else only RLIMIT_AS holds it).
    pub(crate) fn has_memory_cgroup(&self) -> bool {
        self.slot.as_ref().is_some_and(|s| s.has_memory_cgroup())
    }

    /// Makes a zygote: everything of an instance but its binary. Takes a few hundred
    /// microseconds; runs on the sandbox's own thread, ahead of need.
    pub(crate) fn create(sandbox: &Sandbox, egress: bool) -> Result<Zygote, SpawnError> {
        Zygote::create_with(sandbox, egress, Vec::new(), None)
    }

    /// [`Zygote::create`] with `binds` mounted read-only in its root (an interpreter's files).
    pub(crate) fn create_with(
        sandbox: &Sandbox,
        egress: bool,
        binds: Vec<BindMount>,
        image: Option<&ImageRoot>,
    ) -> Result<Zygote, SpawnError> {
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
        let mut isolation = sandbox
            .isolation(&slot, netns.as_raw_fd(), &cgroup_procs, egress, image)
            .map_err(prep(if image.is_some() {
                "preparing the image's root"
            } else {
                "preparing the sandbox"
            }))?;
        // An image's server listens on the namespace's loopback, where the agent reaches it.
        let kept_netns = match image {
            Some(_) => {
                let kept = netns
                    .try_clone()
                    .map_err(prep("preparing the instance's network namespace"))?;
                crate::Netns::from(
                    kept.try_clone()
                        .map_err(prep("preparing the instance's network namespace"))?,
                )
                .loopback_up()
                .map_err(prep("bringing up the instance's loopback"))?;
                Some(kept)
            }
            None => None,
        };
        isolation.binds = binds;
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
            argv: Vec::new(),
            argvp: Vec::new(),
            env: Vec::new(),
            envp: Vec::new(),
            path: None,
        });
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
            reserves_address_space: false,
            netns: kept_netns,
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
        argv: Vec<CString>,
        env: Vec<CString>,
        limits: &Limits,
    ) -> Result<Spawned, SpawnError> {
        self.exec(exe, None, argv, env, limits)
    }

    /// Launches the program at `path` inside the zygote's image root (executed by its path,
    /// so that a script's interpreter is found in the image).
    pub(crate) fn launch_path(
        mut self,
        path: CString,
        argv: Vec<CString>,
        env: Vec<CString>,
        limits: &Limits,
    ) -> Result<Spawned, SpawnError> {
        // The zygote waits for a descriptor: any will do.
        let placeholder = File::open("/dev/null").map_err(prep("opening /dev/null"))?;
        self.exec(placeholder, Some(path), argv, env, limits)
    }

    /// [`Zygote::launch`], keeping the control socket (the process's fd 3) for the caller: a
    /// template's channel to the platform.
    pub(crate) fn launch_keeping_control(
        mut self,
        exe: File,
        argv: Vec<CString>,
        env: Vec<CString>,
        limits: &Limits,
    ) -> Result<(Spawned, OwnedFd), SpawnError> {
        let spawned = self.exec(exe, None, argv, env, limits)?;
        let control = std::mem::replace(&mut self.control, placeholder()?);
        Ok((spawned, control))
    }

    fn exec(
        &mut self,
        exe: File,
        path: Option<CString>,
        argv: Vec<CString>,
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
        memory.argv = argv;
        memory.argvp = pointers(&memory.argv);
        memory.env = env;
        memory.envp = pointers(&memory.env);
        memory.path = path;
        if let Some(path) = &memory.path {
            memory
                .launch
                .path
                .store(path.as_ptr().cast_mut(), Ordering::Release);
        }
        let memory_bytes = limits.memory_mb.saturating_mul(1 << 20);
        let address_space = match (self.reserves_address_space, slot.has_memory_cgroup()) {
            (false, cgroup) => address_space_limit(memory_bytes, cgroup),
            (true, true) => libc::RLIM_INFINITY,
            (true, false) => {
                return fail(
                    slot,
                    memory,
                    pidfd,
                    prep("setting the instance's memory limit")(io::Error::other(
                        "this runtime reserves its address space up front (V8), so only a \
                         memory cgroup can hold its memory, and this host gives the sandbox \
                         none: enable the cgroup v2 memory controller",
                    )),
                );
            }
        };
        memory
            .launch
            .address_space
            .store(address_space, Ordering::Relaxed);
        memory
            .launch
            .argv
            .store(memory.argvp.as_ptr().cast_mut(), Ordering::Release);
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
            netns: self.netns.take().map(crate::Netns::from),
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
    send_fds(socket.as_raw_fd(), b'x', &[fd])
}

/// Sends the one-byte message `byte` carrying `fds` (SCM_RIGHTS, at most 8).
pub(crate) fn send_fds(socket: RawFd, byte: u8, fds: &[RawFd]) -> io::Result<()> {
    if fds.len() > 8 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors",
        ));
    }
    let mut byte = [byte];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // u64 words keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 8];
    let data = size_of_val(fds) as u32;
    // SAFETY: msghdr and cmsghdr are plain data built over local buffers that outlive sendmsg;
    // CMSG_SPACE of at most 8 descriptors (48 bytes) fits in the 64-byte control buffer.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(data) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(data) as usize;
        ptr::copy_nonoverlapping(
            fds.as_ptr().cast::<u8>(),
            libc::CMSG_DATA(cmsg),
            data as usize,
        );
        if libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL) != 1 {
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
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
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
