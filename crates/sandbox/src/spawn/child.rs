//! The child: from `clone` to `execveat`, on the parent's memory. Only system calls on data the
//! parent prepared (see the module documentation of `spawn`).

use std::ffi::{CString, c_char, c_int, c_void};
use std::os::fd::RawFd;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use super::errno;
use super::isolation::Isolation;
use crate::failure::{Failure, STEP_EXEC_INDEX};

/// Everything the child reads, prepared by the parent.
pub(super) struct ChildArgs {
    pub(super) stdio: [RawFd; 3],
    pub(super) exe: RawFd,
    pub(super) argv: *const *const c_char,
    pub(super) envp: *const *const c_char,
    pub(super) sigmask: libc::sigset_t,
    pub(super) isolation: *const Isolation,
    pub(super) launch: *const Launch,
    pub(super) failure: *const Failure,
    /// Sandboxed only: the child's end of the control socket (see [`Zygote`]).
    pub(super) handshake: RawFd,
    /// Sandboxed only: the agent's end, which the child inherited and closes first thing, so
    /// that an agent that dies mid-handshake leaves it reading end-of-file, not waiting for
    /// itself.
    pub(super) agent_end: RawFd,
}

/// What a zygote is told when it is launched; set by the parent before it sends the binary.
#[derive(Default)]
pub(super) struct Launch {
    pub(super) argv: AtomicPtr<*const c_char>,
    pub(super) envp: AtomicPtr<*const c_char>,
    pub(super) address_space: AtomicU64,
    /// Set for an image's program: executed by this path inside the root instead of from the
    /// descriptor.
    pub(super) path: AtomicPtr<c_char>,
}

/// The child: runs on the parent's memory until `execveat`. Only system calls from here on.
pub(super) extern "C" fn child_main(arg: *mut c_void) -> c_int {
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

/// Bind-mounts `source` on `target`, then remounts the bind read-only with `flags` besides
/// (`MS_NOSUID`, `MS_NODEV`, …): a bind cannot be made read-only in one call. The first failing
/// call's result.
///
/// # Safety
/// Child-side only: plain system calls on C strings the parent prepared.
unsafe fn bind_read_only(
    source: *const c_char,
    target: *const c_char,
    flags: libc::c_ulong,
) -> c_int {
    // SAFETY: mount reads the two C strings, alive for the call; the other arguments are null.
    unsafe {
        let rc = libc::mount(source, target, ptr::null(), libc::MS_BIND, ptr::null());
        if rc < 0 {
            return rc;
        }
        libc::mount(
            ptr::null(),
            target,
            ptr::null(),
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | flags,
            ptr::null(),
        )
    }
}

/// `SECBIT_NOROOT`, `SECBIT_NO_SETUID_FIXUP` and `SECBIT_NO_CAP_AMBIENT_RAISE`, each with its
/// lock, and `SECBIT_KEEP_CAPS_LOCKED` (off and locked) — `<linux/securebits.h>`.
const SECURE_BITS: u32 = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80;

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
            if let Some(image) = &iso.image {
                // The image's root, read-only from the start: its mount points exist (the
                // unpacker made them), and nothing is ever written to the shared tree.
                ok(
                    bind_read_only(
                        image.rootfs.as_ptr(),
                        paths.root.as_ptr(),
                        libc::MS_NOSUID | libc::MS_NODEV,
                    ),
                    25,
                )?;
                ok(
                    libc::mount(
                        c"dev".as_ptr(),
                        paths.dev.as_ptr(),
                        c"tmpfs".as_ptr(),
                        libc::MS_NOSUID | libc::MS_NOEXEC,
                        image.dev_options.as_ptr().cast(),
                    ),
                    25,
                )?;
            } else {
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
            }
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
            if let Some(image) = &iso.image {
                for (target, link) in &image.links {
                    ok(libc::symlink(target.as_ptr(), link.as_ptr()), 10)?;
                }
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
                    bind_read_only(
                        dir.as_ptr(),
                        dir.as_ptr(),
                        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    ),
                    23,
                )?;
            }
            for bind in &iso.binds {
                for dir in &bind.dirs {
                    if libc::mkdir(dir.as_ptr(), 0o755) < 0 && errno() != libc::EEXIST {
                        return Err(24);
                    }
                }
                if let Some(file) = &bind.file {
                    let fd = libc::open(
                        file.as_ptr(),
                        libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
                        0o444,
                    );
                    ok(fd, 24)?;
                    libc::close(fd);
                }
                ok(
                    bind_read_only(
                        bind.source.as_ptr(),
                        bind.target.as_ptr(),
                        libc::MS_NOSUID | libc::MS_NODEV,
                    ),
                    24,
                )?;
            }
            if let Some(image) = &iso.image {
                for (source, target) in &image.files {
                    ok(
                        bind_read_only(
                            source.as_ptr(),
                            target.as_ptr(),
                            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                        ),
                        22,
                    )?;
                }
            } else if let Some(resolv_conf) = &iso.resolv_conf {
                ok(libc::mkdir(paths.etc.as_ptr(), 0o755), 22)?;
                write_file(&paths.resolv_conf, resolv_conf.as_bytes()).map_err(|()| 22usize)?;
                write_file(&paths.hosts, crate::HOSTS.as_bytes()).map_err(|()| 22usize)?;
            }
            ok(
                libc::mount(
                    ptr::null(),
                    paths.root.as_ptr(),
                    ptr::null(),
                    libc::MS_REMOUNT
                        | libc::MS_BIND
                        | libc::MS_RDONLY
                        | libc::MS_NOSUID
                        // An image's root keeps the MS_NODEV it was mounted with (its /dev is
                        // a mount of its own); the empty tmpfs root holds the device nodes.
                        | if iso.image.is_some() { libc::MS_NODEV } else { 0 },
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
            // The agent maps the instance's uid and gid here (1000, or an image's user) to the
            // instance's host uid and gid.
            let mut byte = b'r';
            okl(
                libc::write(args.handshake, (&byte as *const u8).cast(), 1) as libc::c_long,
                17,
            )?;
            if libc::read(args.handshake, (&mut byte as *mut u8).cast(), 1) != 1 {
                return Err(17);
            }
            okl(
                libc::syscall(libc::SYS_setresgid, iso.gid, iso.gid, iso.gid),
                15,
            )?;
            okl(
                libc::syscall(libc::SYS_setresuid, iso.uid, iso.uid, iso.uid),
                15,
            )?;
            // chroot rather than pivot_root: detaching the old root costs a synchronize_rcu
            // (~0.3 ms) per instance. The host's mounts stay in the namespace but out of reach:
            // leaving a chroot takes CAP_SYS_CHROOT or a descriptor outside, and the process
            // keeps neither (capabilities dropped below, seccomp refuses chroot, descriptors
            // close on exec). unshare(CLONE_NEWUSER) had to come first: it is refused inside a
            // chroot. chroot itself takes CAP_SYS_CHROOT in the new user namespace, which the
            // process still holds.
            ok(libc::fchdir(root), 11)?;
            ok(libc::chroot(c".".as_ptr()), 11)?;
            libc::close(root);
            ok(libc::chdir(iso.workdir.as_ptr()), 26)?;
            // An image may run as uid 0 of its namespace: root gets no capability at exec, nor
            // does a change of uid fix any up, and the process cannot undo that (the bits are
            // locked; setting them takes CAP_SETPCAP, which goes below).
            ok(
                libc::prctl(
                    libc::PR_SET_SECUREBITS,
                    SECURE_BITS as libc::c_ulong,
                    0,
                    0,
                    0,
                ),
                18,
            )?;
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
        let path = launch.path.load(Ordering::Acquire);
        if !path.is_null() {
            libc::execve(
                path,
                launch.argv.load(Ordering::Acquire).cast(),
                launch.envp.load(Ordering::Acquire).cast(),
            );
            return Err(27);
        }
        libc::execveat(
            exe,
            c"".as_ptr(),
            launch.argv.load(Ordering::Acquire).cast(),
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
