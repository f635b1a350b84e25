//! Inside the jail: pid 1 of its namespaces mounts the jail's view, drops to its user and every
//! capability, and executes the command.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{JailSpec, Never, bind, bind_at, check, cstr, inside, mount, wait_for};

pub(super) fn init(spec: &JailSpec) -> io::Result<Never> {
    let root = &spec.root;
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?;
    mount(
        Some(Path::new("ignite-build")),
        root,
        Some("tmpfs"),
        libc::MS_NOSUID,
        Some("size=16m,mode=755"),
    )?;
    // The host's system directories (compiler, linker, C libraries), read-only; merged-/usr
    // symlinks stay symlinks. Of /etc only what the tools resolve through: Debian's
    // alternatives (cc → gcc) and the loader's cache.
    for dir in [
        "/usr",
        "/bin",
        "/sbin",
        "/lib",
        "/lib64",
        "/lib32",
        "/etc/alternatives",
        "/etc/ld.so.cache",
    ] {
        let path = Path::new(dir);
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => {
                std::os::unix::fs::symlink(std::fs::read_link(path)?, inside(root, path))?
            }
            Ok(_) => bind(root, path, false)?,
            Err(_) => {}
        }
    }
    let tmp_options = format!("size={}m,mode=1777", spec.tmp_mb);
    for p in std::iter::once(Path::new("/tmp")).chain(spec.scratch.iter().map(PathBuf::as_path)) {
        let target = inside(root, p);
        std::fs::create_dir_all(&target)?;
        mount(
            Some(Path::new("tmp")),
            &target,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some(&tmp_options),
        )?;
        let c = cstr(&target)?;
        check(
            // SAFETY: chown on a valid path.
            unsafe { libc::chown(c.as_ptr(), spec.uid, spec.uid) },
            "handing a scratch directory to the build user",
        )?;
    }
    // After the scratch mounts: a bind may sit inside one (the registry in CARGO_HOME).
    for p in &spec.read_only {
        bind(root, p, false)?;
    }
    for p in &spec.writable {
        bind(root, p, true)?;
    }
    for m in &spec.mapped {
        bind_at(root, &m.source, &m.target, m.writable)?;
    }
    let dev = inside(root, Path::new("/dev"));
    std::fs::create_dir_all(&dev)?;
    for (name, minor) in [("null", 3), ("zero", 5), ("random", 8), ("urandom", 9)] {
        let c = cstr(&dev.join(name))?;
        check(
            // SAFETY: mknod on a valid path; the root tmpfs allows devices.
            unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, minor)) },
            "creating device nodes",
        )?;
        // The mode went through the umask: every user may read and write these (a user
        // namespace's root, whose uid is not the nodes' owner, included).
        check(
            // SAFETY: chmod on a valid path.
            unsafe { libc::chmod(c.as_ptr(), 0o666) },
            "creating device nodes",
        )?;
    }
    let proc_ = inside(root, Path::new("/proc"));
    std::fs::create_dir_all(&proc_)?;
    mount(
        Some(Path::new("proc")),
        &proc_,
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )?;
    let root_c = cstr(root)?;
    // SAFETY: system calls on valid C strings.
    unsafe {
        check(libc::chdir(root_c.as_ptr()), "entering the jail")?;
        check(
            libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int,
            "pivot_root",
        )?;
        check(
            libc::umount2(c".".as_ptr(), libc::MNT_DETACH),
            "detaching the host",
        )?;
        check(libc::chdir(c"/".as_ptr()), "entering the jail")?;
    }
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID,
        None,
    )?;
    check(
        // SAFETY: valid pointer and length.
        unsafe { libc::sethostname(c"ignite-build".as_ptr(), 12) },
        "setting the hostname",
    )?;
    // No process limit (0) leaves the inherited one: raising it may need CAP_SYS_RESOURCE.
    let processes = (spec.max_processes > 0).then_some((libc::RLIMIT_NPROC, spec.max_processes));
    for (resource, value) in [
        (libc::RLIMIT_FSIZE, spec.max_file_bytes),
        (libc::RLIMIT_CORE, 0),
        (
            libc::RLIMIT_AS,
            match spec.max_address_space {
                0 => libc::RLIM_INFINITY,
                n => n,
            },
        ),
    ]
    .into_iter()
    .chain(processes)
    {
        let limit = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        check(
            // SAFETY: setrlimit reads the limit struct.
            unsafe { libc::setrlimit(resource, &limit) },
            "setting limits",
        )?;
    }
    drop_bounding_set()?;
    let Some(ids) = spec.user_namespace else {
        drop_privileges(spec.uid)?;
        // The command runs as pid 2 under this init, which reaps whatever the build orphans.
        // SAFETY: single-threaded; the child only execs (or reports and exits).
        return match unsafe { libc::fork() } {
            -1 => Err(io::Error::last_os_error()),
            0 => command(spec),
            child => end_with(child),
        };
    };
    // A user namespace of the command's: the child enters it as the build user, and this init,
    // still root, writes the namespace's id maps (a range of host ids, which only a process
    // with CAP_SETUID in the parent namespace may map), then drops its own privileges.
    let (ready_r, ready_w) = pipe()?;
    let (mapped_r, mapped_w) = pipe()?;
    // SAFETY: single-threaded; the child makes system calls, then execs (or reports and exits).
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            close(ready_r);
            close(mapped_w);
            let entered = drop_privileges(spec.uid).and_then(|()| {
                check(
                    // SAFETY: unshare has no memory-safety preconditions; single-threaded.
                    unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) },
                    "creating the build's user namespace",
                )?;
                signal(ready_w)?;
                wait_signal(mapped_r)?;
                // SAFETY: plain system calls; uid and gid 0 are mapped now.
                unsafe {
                    check(libc::setgroups(0, std::ptr::null()), "dropping groups")?;
                    check(libc::setresgid(0, 0, 0), "becoming the namespace's root")?;
                    check(libc::setresuid(0, 0, 0), "becoming the namespace's root")?;
                }
                Ok(())
            });
            match entered {
                Ok(()) => command(spec),
                Err(e) => {
                    eprintln!("ignite build jail: {e}");
                    // SAFETY: ends the child.
                    unsafe { libc::_exit(126) }
                }
            }
        }
        child => {
            close(ready_w);
            close(mapped_r);
            wait_signal(ready_r)?;
            let map = format!("0 {} {ids}\n", spec.uid);
            for file in ["uid_map", "gid_map"] {
                let path = format!("/proc/{child}/{file}");
                std::fs::write(&path, &map)
                    .map_err(|e| io::Error::new(e.kind(), format!("writing {path}: {e}")))?;
            }
            signal(mapped_w)?;
            drop_privileges(spec.uid)?;
            end_with(child)
        }
    }
}

/// Becomes `uid` (and its gid) with no capability, no supplementary group and
/// `no_new_privs`, set to die with its parent.
fn drop_privileges(uid: u32) -> io::Result<()> {
    // SAFETY: single-threaded: the glibc wrappers are fine; they drop every privilege (the
    // change from uid 0 clears the capability sets).
    unsafe {
        check(libc::setgroups(0, std::ptr::null()), "dropping groups")?;
        check(libc::setresgid(uid, uid, uid), "dropping to the build user")?;
        check(libc::setresuid(uid, uid, uid), "dropping to the build user")?;
    }
    // A uid that stays 0 (the fetch) keeps its capabilities through setresuid: clear them.
    clear_capabilities()?;
    check(
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) },
        "setting no_new_privs",
    )?;
    // Changing the user cleared the parent-death signal: set it again.
    super::die_with_parent()
}

/// The command's process: execs it, or reports why not and exits.
fn command(spec: &JailSpec) -> io::Result<Never> {
    let e = exec_command(spec);
    eprintln!(
        "ignite build jail: cannot run {}: {e}",
        spec.program.display()
    );
    // SAFETY: ends the child.
    unsafe { libc::_exit(127) }
}

/// Init's end: waits for the command, then exits with its status.
fn end_with(child: libc::pid_t) -> io::Result<Never> {
    let code = wait_for(child);
    // SAFETY: ends init; the kernel kills what is left in the namespace.
    unsafe { libc::_exit(code) }
}

fn pipe() -> io::Result<(libc::c_int, libc::c_int)> {
    let mut fds = [0; 2];
    check(
        // SAFETY: pipe2 writes two fds into the array it is given.
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) },
        "making a pipe",
    )?;
    Ok((fds[0], fds[1]))
}

fn close(fd: libc::c_int) {
    // SAFETY: closes an fd of ours that nothing else uses.
    unsafe { libc::close(fd) };
}

/// Writes one byte to `fd` and closes it.
fn signal(fd: libc::c_int) -> io::Result<()> {
    // SAFETY: writes one byte from a live buffer.
    let n = unsafe { libc::write(fd, [1u8].as_ptr().cast(), 1) };
    close(fd);
    check(
        n as libc::c_int,
        "signalling across the user namespace's set-up",
    )
}

/// Reads one byte from `fd` (an end of file is an error: the other side died) and closes it.
fn wait_signal(fd: libc::c_int) -> io::Result<()> {
    let mut byte = [0u8; 1];
    // SAFETY: reads at most one byte into a live buffer.
    let n = unsafe { libc::read(fd, byte.as_mut_ptr().cast(), 1) };
    close(fd);
    match n {
        1 => Ok(()),
        _ => Err(io::Error::other(
            "the other side of the user namespace's set-up went away",
        )),
    }
}

/// Empties the capability bounding set, so that no exec (of a root-owned or a file-capability
/// binary) can give a capability back. Needs CAP_SETPCAP: before the uid changes.
fn drop_bounding_set() -> io::Result<()> {
    for cap in 0..=63 {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } < 0 {
            match io::Error::last_os_error() {
                // Past the kernel's last capability.
                e if e.raw_os_error() == Some(libc::EINVAL) => break,
                e => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("dropping capability {cap}: {e}"),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Clears the ambient, permitted, effective and inheritable capabilities.
fn clear_capabilities() -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: prctl with integer arguments only; capset reads one header and the two data
    // structs that version 3 takes, all alive for the call.
    unsafe {
        check(
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            ),
            "clearing ambient capabilities",
        )?;
        check(
            libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) as libc::c_int,
            "clearing capabilities",
        )
    }
}

fn exec_command(spec: &JailSpec) -> io::Error {
    let prepare = || -> io::Result<(CString, Vec<CString>, Vec<CString>, CString)> {
        let program = cstr(&spec.program)?;
        let mut argv = vec![program.clone()];
        for a in &spec.args {
            argv.push(CString::new(a.as_bytes()).map_err(io::Error::other)?);
        }
        let env = spec
            .env
            .iter()
            .map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                CString::new(kv).map_err(io::Error::other)
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok((program, argv, env, cstr(&spec.cwd)?))
    };
    let (program, argv, env, cwd) = match prepare() {
        Ok(p) => p,
        Err(e) => return e,
    };
    let argv_p: Vec<*const libc::c_char> = argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let env_p: Vec<*const libc::c_char> = env
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    // SAFETY: null-terminated arrays of valid C strings, alive for the calls.
    unsafe {
        if libc::chdir(cwd.as_ptr()) < 0 {
            return io::Error::last_os_error();
        }
        libc::execve(program.as_ptr(), argv_p.as_ptr(), env_p.as_ptr());
    }
    io::Error::last_os_error()
}
