//! The build jail: runs one compile (cargo, and the build scripts and proc macros it runs) in
//! fresh mount, pid, ipc, uts, cgroup and network namespaces, as an unprivileged uid, seeing only
//! the paths it is given (read-only or writable), a size-capped `/tmp`, `/dev/{null,zero,random,
//! urandom}` and its own `/proc`; with rlimits, no network, and `no_new_privs`.
//!
//! It runs as a separate process (`dodil ignite __jail …`, see [`JailSpec::to_args`]), single
//! threaded, so the set-up is ordinary code: the agent spawns it, it sets the jail up and execs
//! the command. Unlike an instance, a build is rare and long, so this favours simplicity over
//! microseconds (pivot_root, a network namespace made on the spot).
//!
//! The dependency fetch runs in the same kind of jail (its own mount view: the project, the
//! toolchain, the SDK and the registry cache, nothing else), with [`JailNetwork::Proxy`] as its
//! network and the caller's uid stripped of every capability, since it writes the registry
//! cache the compile then reads.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What the jail's network is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum JailNetwork {
    /// A network namespace of its own with nothing in it, not even loopback up: the compile.
    #[default]
    None,
    /// A network namespace of its own whose only way out is this Unix socket, an HTTP
    /// `CONNECT` proxy of the server's (`ignite_builder::RegistryProxy`): a forwarder, outside
    /// the jail's mount view but in its network namespace, listens on loopback, and
    /// `CARGO_HTTP_PROXY` (added to the environment) points cargo at it. The dependency fetch.
    Proxy(PathBuf),
    /// The host's network: a fetch on a server that runs no registry proxy.
    Host,
}

/// One compile's (or one dependency fetch's) jail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JailSpec {
    /// An empty directory of the agent's, the mount point of the jail's root.
    pub root: PathBuf,
    /// Host paths visible read-only, at the same path.
    pub read_only: Vec<PathBuf>,
    /// Host paths visible and writable, at the same path.
    pub writable: Vec<PathBuf>,
    /// A writable, size-capped tmpfs at each of these paths (`/tmp` is always one), mounted
    /// before the binds, which may sit inside them.
    pub scratch: Vec<PathBuf>,
    pub tmp_mb: u64,
    /// The host uid (and gid) the command runs as: an unprivileged one for a compile. Whatever
    /// it is, the command runs without any capability (uid 0 included: it then has only what
    /// file permissions give root's files' owner).
    pub uid: u32,
    /// `cgroup.procs` files to join before anything else.
    pub cgroups: Vec<PathBuf>,
    /// Largest file the command may write (RLIMIT_FSIZE), in bytes.
    pub max_file_bytes: u64,
    /// Processes of the build uid (RLIMIT_NPROC), 0 to keep the inherited limit (for a uid
    /// shared with the host's own processes, which the limit counts).
    pub max_processes: u64,
    /// Address space per process (RLIMIT_AS), 0 for none: a backstop for hosts whose memory
    /// controller the server cannot use.
    pub max_address_space: u64,
    pub cwd: PathBuf,
    /// The complete environment.
    pub env: Vec<(OsString, OsString)>,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub network: JailNetwork,
}

impl JailSpec {
    /// The spec as command-line arguments for `dodil ignite __jail`.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut flag = |name: &str, value: &OsStr| {
            a.push(format!("--{name}").into());
            a.push(value.to_owned());
        };
        flag("root", self.root.as_os_str());
        for p in &self.read_only {
            flag("ro", p.as_os_str());
        }
        for p in &self.writable {
            flag("rw", p.as_os_str());
        }
        for p in &self.scratch {
            flag("scratch", p.as_os_str());
        }
        flag("tmp-mb", OsStr::new(&self.tmp_mb.to_string()));
        flag("uid", OsStr::new(&self.uid.to_string()));
        for p in &self.cgroups {
            flag("cgroup", p.as_os_str());
        }
        flag(
            "max-file-bytes",
            OsStr::new(&self.max_file_bytes.to_string()),
        );
        flag("max-processes", OsStr::new(&self.max_processes.to_string()));
        flag(
            "max-address-space",
            OsStr::new(&self.max_address_space.to_string()),
        );
        flag("cwd", self.cwd.as_os_str());
        match &self.network {
            JailNetwork::None => {}
            JailNetwork::Proxy(socket) => flag("network-proxy", socket.as_os_str()),
            JailNetwork::Host => flag("network", OsStr::new("host")),
        }
        for (k, v) in &self.env {
            let mut kv = k.clone();
            kv.push("=");
            kv.push(v);
            flag("env", &kv);
        }
        a.push("--".into());
        a.push(self.program.clone().into());
        a.extend(self.args.iter().cloned());
        a
    }

    /// Parses what [`JailSpec::to_args`] wrote.
    pub fn from_args(args: &[OsString]) -> io::Result<JailSpec> {
        let bad = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
        let mut spec = JailSpec::default();
        let mut it = args.iter();
        let number = |v: &OsString| -> io::Result<u64> {
            v.to_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad(format!("{v:?} is not a number")))
        };
        while let Some(arg) = it.next() {
            if arg == "--" {
                let program = it.next().ok_or_else(|| bad("no program after --".into()))?;
                spec.program = PathBuf::from(program);
                spec.args = it.cloned().collect();
                return Ok(spec);
            }
            let value = it
                .next()
                .ok_or_else(|| bad(format!("{arg:?} needs a value")))?;
            match arg.to_str().unwrap_or("") {
                "--root" => spec.root = value.into(),
                "--ro" => spec.read_only.push(value.into()),
                "--rw" => spec.writable.push(value.into()),
                "--scratch" => spec.scratch.push(value.into()),
                "--tmp-mb" => spec.tmp_mb = number(value)?,
                "--uid" => {
                    spec.uid = u32::try_from(number(value)?).map_err(|e| bad(e.to_string()))?
                }
                "--cgroup" => spec.cgroups.push(value.into()),
                "--max-file-bytes" => spec.max_file_bytes = number(value)?,
                "--max-processes" => spec.max_processes = number(value)?,
                "--max-address-space" => spec.max_address_space = number(value)?,
                "--cwd" => spec.cwd = value.into(),
                "--network-proxy" => spec.network = JailNetwork::Proxy(value.into()),
                "--network" => {
                    spec.network = match value.to_str() {
                        Some("host") => JailNetwork::Host,
                        Some("none") => JailNetwork::None,
                        _ => {
                            return Err(bad(format!(
                                "--network {value:?} is neither host nor none"
                            )));
                        }
                    }
                }
                "--env" => {
                    let bytes = value.as_bytes();
                    let eq = bytes
                        .iter()
                        .position(|&b| b == b'=')
                        .ok_or_else(|| bad(format!("--env {value:?} is not K=V")))?;
                    spec.env.push((
                        OsStr::from_bytes(&bytes[..eq]).to_owned(),
                        OsStr::from_bytes(&bytes[eq + 1..]).to_owned(),
                    ));
                }
                other => return Err(bad(format!("unknown jail flag {other:?}"))),
            }
        }
        Err(bad("no -- before the program".into()))
    }
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(rc: libc::c_int, what: &str) -> io::Result<()> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = source.map(cstr).transpose()?;
    let target_c = cstr(target)?;
    let fstype = fstype
        .map(CString::new)
        .transpose()
        .map_err(io::Error::other)?;
    let data = data
        .map(CString::new)
        .transpose()
        .map_err(io::Error::other)?;
    // SAFETY: all pointers are valid C strings or null, alive for the call.
    let rc = unsafe {
        libc::mount(
            source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target_c.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr().cast()),
        )
    };
    check(rc, &format!("mounting {}", target.display()))
}

/// `root` joined with an absolute `path`.
fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn bind(root: &Path, path: &Path, writable: bool) -> io::Result<()> {
    let target = inside(root, path);
    let meta = std::fs::metadata(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    if meta.is_dir() {
        std::fs::create_dir_all(&target)?;
    } else {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, b"")?;
    }
    mount(
        Some(path),
        &target,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )?;
    let mut flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID | libc::MS_NODEV;
    if !writable {
        flags |= libc::MS_RDONLY;
    }
    mount(None, &target, None, flags, None)
}

/// Sets the jail up and execs the command; returns only on failure. Must run single-threaded
/// and as root (it is the whole of `dodil ignite __jail`).
pub fn exec(spec: &JailSpec) -> io::Error {
    match run(spec) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

enum Never {}

/// Has the kernel SIGKILL this process when its parent dies: a compile must not outlive the
/// server that started it (what a crash leaves in the build cgroups is also killed at the next
/// start). Each process of the chain sets it for itself: the outer jail (its parent is the
/// server), the one that enters the namespaces, and the namespace's init (once it has become
/// the build user: a change of user clears the setting), whose death ends everything in the
/// build's pid namespace.
fn die_with_parent() -> io::Result<()> {
    check(
        // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag of the calling process.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) },
        "asking to end with the server",
    )
}

fn run(spec: &JailSpec) -> io::Result<Never> {
    die_with_parent()?;
    for procs in &spec.cgroups {
        std::fs::write(procs, "0")
            .map_err(|e| io::Error::new(e.kind(), format!("joining {}: {e}", procs.display())))?;
    }
    let namespaces = libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWCGROUP;
    match &spec.network {
        JailNetwork::None => enter(spec, namespaces | libc::CLONE_NEWNET),
        JailNetwork::Host => enter(spec, namespaces),
        JailNetwork::Proxy(proxy) => {
            let (listener, port) = proxied_network()?;
            let mut inner = spec.clone();
            inner.env.push((
                "CARGO_HTTP_PROXY".into(),
                format!("http://127.0.0.1:{port}").into(),
            ));
            // The jail is a child: this process stays in the host's mount namespace, where
            // the proxy's socket is, and forwards.
            // SAFETY: single-threaded (the forwarder's threads start after the fork, in the
            // parent); the child goes on with this program's single-threaded set-up.
            match unsafe { libc::fork() } {
                -1 => Err(io::Error::last_os_error()),
                0 => {
                    drop(listener);
                    let e = match enter(&inner, namespaces) {
                        Ok(never) => match never {},
                        Err(e) => e,
                    };
                    eprintln!("ignite build jail: {e}");
                    // SAFETY: ends the child without running the parent's destructors twice.
                    unsafe { libc::_exit(126) }
                }
                child => {
                    forward_all(listener, proxy.clone());
                    let code = wait_for(child);
                    std::process::exit(code)
                }
            }
        }
    }
}

/// Creates the jail's namespaces (`namespaces`, the `CLONE_NEW*` flags) and its init.
fn enter(spec: &JailSpec, namespaces: libc::c_int) -> io::Result<Never> {
    die_with_parent()?;
    check(
        // SAFETY: unshare has no memory-safety preconditions; this process is single-threaded.
        unsafe { libc::unshare(namespaces) },
        "creating the build's namespaces",
    )?;
    // The next child is pid 1 of the new pid namespace: it reaps, and when it exits the kernel
    // ends everything the build left running.
    // SAFETY: single-threaded, so fork is safe; both sides only make system calls and exit.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => match init(spec) {
            Ok(never) => match never {},
            Err(e) => {
                eprintln!("ignite build jail: {e}");
                // SAFETY: ends the child without running the parent's destructors twice.
                unsafe { libc::_exit(126) }
            }
        },
        child => {
            let code = wait_for(child);
            // SAFETY: as above.
            unsafe { libc::_exit(code) }
        }
    }
}

/// Waits for `pid`, reaping any other child meanwhile; the shell's exit code for it.
fn wait_for(pid: libc::pid_t) -> i32 {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only `status`.
        let got = unsafe { libc::waitpid(-1, &mut status, 0) };
        if got == pid {
            return if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
        }
        if got < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return 125;
        }
    }
}

fn init(spec: &JailSpec) -> io::Result<Never> {
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
    let dev = inside(root, Path::new("/dev"));
    std::fs::create_dir_all(&dev)?;
    for (name, minor) in [("null", 3), ("zero", 5), ("random", 8), ("urandom", 9)] {
        let c = cstr(&dev.join(name))?;
        check(
            // SAFETY: mknod on a valid path; the root tmpfs allows devices.
            unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, minor)) },
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
    // SAFETY: single-threaded: the glibc wrappers are fine; they drop every privilege (the
    // change from uid 0 clears the capability sets).
    unsafe {
        check(libc::setgroups(0, std::ptr::null()), "dropping groups")?;
        check(
            libc::setresgid(spec.uid, spec.uid, spec.uid),
            "dropping to the build user",
        )?;
        check(
            libc::setresuid(spec.uid, spec.uid, spec.uid),
            "dropping to the build user",
        )?;
    }
    // A uid that stays 0 (the fetch) keeps its capabilities through setresuid: clear them.
    clear_capabilities()?;
    check(
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) },
        "setting no_new_privs",
    )?;
    // Changing the user cleared the parent-death signal: set it again.
    die_with_parent()?;
    // The command runs as pid 2 under this init, which reaps whatever the build orphans.
    // SAFETY: single-threaded; the child only execs (or reports and exits).
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            let e = exec_command(spec);
            eprintln!(
                "ignite build jail: cannot run {}: {e}",
                spec.program.display()
            );
            // SAFETY: ends the child.
            unsafe { libc::_exit(127) }
        }
        child => {
            let code = wait_for(child);
            // SAFETY: ends init; the kernel kills what is left in the namespace.
            unsafe { libc::_exit(code) }
        }
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

/// The dependency fetch's network: runs `program` in a network namespace of its own whose only
/// way out is `proxy`, a Unix socket the server answers on (see `ignite_builder::RegistryProxy`,
/// which lets through the registry's hosts and nothing else). Inside, a forwarder listens on
/// loopback and `CARGO_HTTP_PROXY` points cargo at it; the program has no other route. It keeps
/// the caller's files and user. The builder's fetch no longer runs this way but in a jail with
/// [`JailNetwork::Proxy`], the same network plus a mount view of the project alone.
///
/// The whole of `dodil ignite __fetch`; returns only on failure, else exits with the program's
/// status. Must run as root (it creates the namespace).
pub fn fetch_exec(proxy: &Path, program: &OsStr, args: &[OsString]) -> io::Error {
    match fetch_run(proxy, program, args) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn fetch_run(proxy: &Path, program: &OsStr, args: &[OsString]) -> io::Result<Never> {
    let (listener, port) = proxied_network()?;
    let mut child = std::process::Command::new(program)
        .args(args)
        .env("CARGO_HTTP_PROXY", format!("http://127.0.0.1:{port}"))
        .spawn()?;
    forward_all(listener, proxy.to_path_buf());
    let status = child.wait()?;
    let code = {
        use std::os::unix::process::ExitStatusExt;
        status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
    };
    std::process::exit(code)
}

/// Moves this process into a network namespace of its own with loopback up, and listens there
/// for the forwarder. Call while single-threaded.
fn proxied_network() -> io::Result<(std::net::TcpListener, u16)> {
    check(
        // SAFETY: unshare has no memory-safety preconditions; no thread exists yet.
        unsafe { libc::unshare(libc::CLONE_NEWNET) },
        "creating the fetch's network namespace",
    )?;
    loopback_up()?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    Ok((listener, port))
}

/// Carries every connection made to `listener` to `proxy`, on threads of their own.
fn forward_all(listener: std::net::TcpListener, proxy: PathBuf) {
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let proxy = proxy.clone();
            std::thread::spawn(move || forward(client, &proxy));
        }
    });
}

/// Brings the namespace's loopback up (it starts down).
fn loopback_up() -> io::Result<()> {
    // SAFETY: a plain datagram socket; closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(fd, "opening a socket to configure loopback")?;
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq they are given; the union's
    // flags member is the one these requests use.
    let result = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) < 0 {
            Err(io::Error::last_os_error())
        } else {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        }
    };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    result.map_err(|e| io::Error::new(e.kind(), format!("bringing loopback up: {e}")))
}

/// Carries one connection of the program's to the server's proxy and back.
fn forward(client: std::net::TcpStream, proxy: &Path) {
    let Ok(upstream) = std::os::unix::net::UnixStream::connect(proxy) else {
        return;
    };
    let (Ok(mut client_r), Ok(mut upstream_w)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = io::copy(&mut client_r, &mut upstream_w);
        let _ = upstream_w.shutdown(std::net::Shutdown::Write);
    });
    let (mut upstream_r, mut client_w) = (upstream, client);
    let _ = io::copy(&mut upstream_r, &mut client_w);
    let _ = client_w.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_survives_the_command_line() {
        let spec = JailSpec {
            root: "/data/jail".into(),
            read_only: vec!["/opt/toolchain".into(), "/srv/registry".into()],
            writable: vec!["/data/builds/acme/app/src".into()],
            scratch: vec!["/cargo-home".into()],
            tmp_mb: 512,
            uid: 1_899_999_999,
            cgroups: vec!["/sys/fs/cgroup/memory/x/cgroup.procs".into()],
            max_file_bytes: 1 << 30,
            max_processes: 256,
            max_address_space: 8 << 30,
            cwd: "/data/builds/acme/app/src".into(),
            env: vec![
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("A".into(), "b=c".into()),
            ],
            program: "/opt/toolchain/bin/cargo".into(),
            args: vec!["build".into(), "--release".into(), "--".into()],
            network: JailNetwork::None,
        };
        assert_eq!(JailSpec::from_args(&spec.to_args()).unwrap(), spec);
        for network in [
            JailNetwork::Host,
            JailNetwork::Proxy("/data/sandbox/registry.sock".into()),
        ] {
            let spec = JailSpec {
                network,
                ..spec.clone()
            };
            assert_eq!(JailSpec::from_args(&spec.to_args()).unwrap(), spec);
        }
    }
}
