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

mod init;
mod network;

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use init::init;
pub use network::fetch_exec;
use network::{forward_all, loopback_tunnels, proxied_network, tunnel_all};

/// What the jail's network is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum JailNetwork {
    /// A network namespace of its own with nothing in it, not even loopback up: the compile.
    #[default]
    None,
    /// A network namespace of its own whose only way out is this Unix socket, an HTTP
    /// `CONNECT` proxy of the server's (`ignite_builder::RegistryProxy`): a forwarder, outside
    /// the jail's mount view but in its network namespace, listens on loopback, and
    /// `CARGO_HTTP_PROXY`, `HTTPS_PROXY`, `https_proxy`, `HTTP_PROXY` and `http_proxy` (added
    /// to the environment) point cargo, pip, git and buildah at it. The dependency fetch (cargo's, or pip's for a Python app).
    Proxy(PathBuf),
    /// The host's network: a fetch on a server that runs no registry proxy.
    Host,
}

/// A host path bound at another path inside the jail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailBind {
    pub source: PathBuf,
    /// Absolute, inside the jail.
    pub target: PathBuf,
    pub writable: bool,
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
    /// Host paths visible at another path (an app's tree at `/app`, where it will run), after
    /// the binds above.
    pub mapped: Vec<JailBind>,
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
    /// A user namespace of the command's own, mapping its ids `0..n` to the host's
    /// `uid..uid + n` (uids and gids alike): the command runs as uid 0 there, host `uid`,
    /// with the namespace's capabilities over a mount namespace of its own (a copy of the
    /// jail's view, every mount locked) and none over anything else. An image build (buildah:
    /// base images hold files of many owners, and its `RUN` steps chroot); `None` for the
    /// rest, which run as `uid` itself.
    pub user_namespace: Option<u32>,
    /// With [`JailNetwork::Proxy`]: `host:port` addresses on the host's loopback that the
    /// command reaches at the same address inside, each connection tunnelled through the
    /// proxy (a `CONNECT` it may refuse like any other). Clients connect to loopback
    /// directly, whatever their proxy settings say (Go's do), so a registry on the server's
    /// loopback is reached this way.
    pub loopback_tunnels: Vec<String>,
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
        for m in &self.mapped {
            // TARGET=SOURCE: the target is the platform's (no `=`), the source any host path.
            let mut value = m.target.as_os_str().to_owned();
            value.push("=");
            value.push(&m.source);
            flag(if m.writable { "rw-at" } else { "ro-at" }, &value);
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
        if let Some(n) = self.user_namespace {
            flag("user-namespace", OsStr::new(&n.to_string()));
        }
        for t in &self.loopback_tunnels {
            flag("loopback-tunnel", OsStr::new(t));
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
                "--ro-at" | "--rw-at" => {
                    let bytes = value.as_bytes();
                    let eq = bytes
                        .iter()
                        .position(|&b| b == b'=')
                        .ok_or_else(|| bad(format!("{arg:?} {value:?} is not TARGET=SOURCE")))?;
                    spec.mapped.push(JailBind {
                        target: PathBuf::from(OsStr::from_bytes(&bytes[..eq])),
                        source: PathBuf::from(OsStr::from_bytes(&bytes[eq + 1..])),
                        writable: arg == "--rw-at",
                    });
                }
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
                "--user-namespace" => {
                    spec.user_namespace =
                        Some(u32::try_from(number(value)?).map_err(|e| bad(e.to_string()))?)
                }
                "--loopback-tunnel" => spec.loopback_tunnels.push(
                    value
                        .to_str()
                        .ok_or_else(|| bad(format!("--loopback-tunnel {value:?}")))?
                        .to_string(),
                ),
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
    bind_at(root, path, path, writable)
}

/// Binds host `path` at `at` (absolute, inside the jail).
fn bind_at(root: &Path, path: &Path, at: &Path, writable: bool) -> io::Result<()> {
    if at
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: a bind target must be a plain path", at.display()),
        ));
    }
    let target = inside(root, at);
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
pub(super) fn die_with_parent() -> io::Result<()> {
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
            let tunnels = loopback_tunnels(&spec.loopback_tunnels)?;
            let mut inner = spec.clone();
            let url = format!("http://127.0.0.1:{port}");
            // cargo reads the first; pip (and most other HTTPS clients) the others.
            // (HTTP_PROXY: plain-HTTP requests go to the proxy too, which forwards those to
            // its allowed hosts and refuses the rest, rather than finding no route.)
            for name in [
                "CARGO_HTTP_PROXY",
                "HTTPS_PROXY",
                "https_proxy",
                "HTTP_PROXY",
                "http_proxy",
            ] {
                inner.env.push((name.into(), url.clone().into()));
            }
            // The jail is a child: this process stays in the host's mount namespace, where
            // the proxy's socket is, and forwards.
            // SAFETY: single-threaded (the forwarder's threads start after the fork, in the
            // parent); the child goes on with this program's single-threaded set-up.
            match unsafe { libc::fork() } {
                -1 => Err(io::Error::last_os_error()),
                0 => {
                    drop(listener);
                    drop(tunnels);
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
                    for (listener, target) in tunnels {
                        tunnel_all(listener, proxy.clone(), target);
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_survives_the_command_line() {
        let spec = JailSpec {
            root: "/data/jail".into(),
            read_only: vec!["/opt/toolchain".into(), "/srv/registry".into()],
            writable: vec!["/data/builds/acme/app/src".into()],
            mapped: vec![JailBind {
                source: "/data/builds/acme/app/deno=1".into(),
                target: "/app".into(),
                writable: true,
            }],
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
            user_namespace: Some(65536),
            loopback_tunnels: vec!["127.0.0.1:5000".into()],
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
