//! Templates: a sandboxed interpreter with an app's code already imported, which forks
//! instances on request (Android's zygote; the SOCK paper's import cache). A cold start from a
//! template pays a `fork()`, not an interpreter start and the app's imports.
//!
//! A template is an ordinary sandboxed process (a zygote launched with an interpreter, the
//! interpreter's files and the app's tree bound read-only into its root), pid 1 of its own pid
//! namespace. Its fd 3 is a `SOCK_SEQPACKET` socket to the platform, over which it speaks:
//!
//! - template → platform `r`: imported, ready to fork.
//! - platform → template `f` + three descriptors (SCM_RIGHTS): fork an instance whose stdin,
//!   stdout and stderr are these.
//! - child → platform `p` + its pid (u32 LE) *in the template's namespace*: sent by the new child
//!   itself, so the kernel attaches its credentials, whose pid is translated into the
//!   platform's namespace (`SO_PASSCRED`). That is how the platform learns a pid it can open a
//!   pidfd on and move into the instance's own cgroup.
//! - spare → platform `s` + its pid in the template's namespace: the template keeps one child
//!   forked ahead of need, parked until a fork request hands it its descriptors; it announces
//!   itself (its credentials again carrying its pid here), so the platform moves it into its
//!   instance's cgroup ahead of need as well — a cgroup migration costs milliseconds (an RCU
//!   grace period), the largest part of a fork's cold start when it is on the request's path.
//! - template → platform `e` + a message: the fork failed.
//! - template → platform `x` + pid (u32 LE) + wait status (i32 LE): a child exited. The
//!   template is each instance's parent and reaps it, so the exit status comes from it; the
//!   platform still watches each instance through a pidfd and kills it through that.
//!
//! An instance shares its template's namespaces and uid (one tenant's version), but runs in a
//! cgroup of its own with the app's memory limit. Killing the template ends every instance it
//! made (the kernel ends a pid namespace with its init), which is how the platform stops them
//! all; it stops a template only once it has no instances (see the server's template registry).

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use crate::failure::SpawnError;
use crate::process::{Forked, Process};
use crate::spawn::{Bind, BindMount, Spawned, Zygote, send_fds};
use crate::{Limits, Sandbox};

/// What a template runs.
#[derive(Debug, Clone)]
pub struct TemplateSpec<'a> {
    /// The interpreter, on the host.
    pub program: &'a Path,
    /// Its argument vector, `argv[0]` (its path inside the sandbox) first.
    pub argv: &'a [String],
    pub env: &'a [(String, String)],
    /// What the interpreter and the app need, read-only.
    pub binds: &'a [Bind],
}

/// Why a template did not become ready, with what it wrote meanwhile.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TemplateError {
    pub message: String,
    pub logs: Vec<String>,
}

impl From<SpawnError> for TemplateError {
    fn from(e: SpawnError) -> TemplateError {
        TemplateError {
            message: e.to_string(),
            logs: Vec::new(),
        }
    }
}

/// The most template log bytes kept (its start-up output, for the error of a failed start).
const LOG_CAP: usize = 64 * 1024;

/// What the template's reader and the instances' processes share.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    state: Mutex<State>,
    changed: Notify,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct State {
    ready: bool,
    /// The template's channel ended: it exited (and every instance with it).
    closed: bool,
    /// The last fork's child: (pid here, pid in the template's namespace).
    forked: Option<(u32, u32)>,
    /// A spare that announced itself and is not yet prepared: (pid here, pid there).
    announced: Option<(u32, u32)>,
    fork_error: Option<String>,
    /// Instances alive, by their pid in the template's namespace.
    live: HashSet<u32>,
    /// Exit statuses reported and not yet collected.
    exits: HashMap<u32, i32>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self) {
        self.changed.notify_waiters();
        self.cv.notify_all();
    }

    /// Waits for `check` to return something, or for the channel to close (`None`).
    async fn until<T>(&self, mut check: impl FnMut(&mut State) -> Option<T>) -> Option<T> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                if let Some(v) = check(&mut state) {
                    return Some(v);
                }
                if state.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// The exit status of instance `ns_pid`, once reported; `None` if the template is gone
    /// (then the kernel killed the instance with it).
    pub(crate) async fn exit_of(&self, ns_pid: u32) -> Option<i32> {
        self.until(|s| s.exits.remove(&ns_pid)).await
    }

    /// [`Shared::exit_of`], blocking up to `timeout`.
    pub(crate) fn exit_of_blocking(&self, ns_pid: u32, timeout: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if let Some(raw) = state.exits.remove(&ns_pid) {
                return Some(raw);
            }
            let now = std::time::Instant::now();
            if state.closed || now >= deadline {
                return None;
            }
            state = self
                .cv
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// An instance's process has been reaped (by whatever means).
    pub(crate) fn forget(&self, ns_pid: u32) {
        let mut state = self.lock();
        state.live.remove(&ns_pid);
        state.exits.remove(&ns_pid);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }
}

/// A running template (see the module documentation).
#[derive(Debug)]
pub struct Template {
    sandbox: Sandbox,
    process: Mutex<Option<Process>>,
    control: Arc<AsyncFd<OwnedFd>>,
    shared: Arc<Shared>,
    logs: Arc<Mutex<Vec<String>>>,
    /// One fork at a time: a child's `p` answers the request in flight.
    turn: tokio::sync::Mutex<()>,
    /// The spare, moved into its instance's cgroups ahead of need (held while preparing one).
    prepared: Arc<tokio::sync::Mutex<Option<Prepared>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Sandbox {
    /// Starts a template and waits (up to `ready_within`) for it to say it is ready.
    pub async fn start_template(
        &self,
        spec: &TemplateSpec<'_>,
        limits: &Limits,
        ready_within: Duration,
    ) -> Result<Template, TemplateError> {
        let prep = |step: &'static str| move |source| SpawnError { step, source };
        let exe = File::open(spec.program).map_err(prep("opening the interpreter"))?;
        let argv = spec
            .argv
            .iter()
            .map(|a| CString::new(a.as_str()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| prep("preparing the arguments")(io::Error::other(e)))?;
        let env = crate::spawn::environment(spec.env)?;
        let binds = BindMount::prepare(&self.root_dir(), spec.binds)
            .map_err(prep("preparing the runtime's files"))?;
        let sandbox = self.clone();
        let egress = limits.egress;
        let zygote =
            tokio::task::spawn_blocking(move || Zygote::create_with(&sandbox, egress, binds, None))
                .await
                .map_err(|e| prep("starting the sandbox")(io::Error::other(e)))??;
        let (spawned, control) = zygote.launch_keeping_control(exe, argv, env, limits)?;
        let Spawned {
            process,
            stdin,
            stdout,
            stderr,
            ..
        } = spawned;
        drop(stdin);
        let channel = prep("setting up the template's channel");
        set_passcred(&control).map_err(channel)?;
        set_nonblocking(control.as_raw_fd()).map_err(channel)?;
        // SAFETY: the OwnedFd is an open socket that the AsyncFd owns from here on, so it stays
        // open and the same for the AsyncFd's whole life.
        let control =
            unsafe { AsyncFd::register_with_interest(control, tokio::io::Interest::READABLE) }
                .map_err(|e| channel(e.into_parts().1))?;
        let control = Arc::new(control);
        let shared = Arc::new(Shared::default());
        let logs = Arc::new(Mutex::new(Vec::new()));
        let prepared = Arc::new(tokio::sync::Mutex::new(None));
        let tasks = vec![
            tokio::spawn(read_channel(control.clone(), shared.clone())),
            tokio::spawn(prepare_spares(
                self.clone(),
                shared.clone(),
                prepared.clone(),
                limits.memory_mb,
            )),
            tokio::spawn(pump_log(stdout, logs.clone())),
            tokio::spawn(pump_log(stderr, logs.clone())),
        ];
        let template = Template {
            sandbox: self.clone(),
            process: Mutex::new(Some(process)),
            control,
            shared,
            logs,
            turn: tokio::sync::Mutex::new(()),
            prepared,
            tasks,
        };
        let ready = tokio::time::timeout(
            ready_within,
            template.shared.until(|s| s.ready.then_some(())),
        )
        .await;
        match ready {
            Ok(Some(())) => Ok(template),
            Ok(None) => {
                let status = template.reap().await;
                Err(TemplateError {
                    message: format!("the template exited before it was ready ({status})"),
                    logs: template.take_logs().await,
                })
            }
            Err(_) => {
                template.reap().await;
                Err(TemplateError {
                    message: format!(
                        "the template was not ready within {} s (importing the app took too long)",
                        ready_within.as_secs()
                    ),
                    logs: template.take_logs().await,
                })
            }
        }
    }
}

impl Template {
    /// Forks an instance: its own cgroup with `limits`' memory, its own three streams.
    pub async fn fork(&self, limits: &Limits) -> Result<Spawned, SpawnError> {
        let prep = |step: &'static str| move |source| SpawnError { step, source };
        let _turn = self.turn.lock().await;
        let streams = prep("creating the standard stream pipes");
        let (stdin_child, stdin) = crate::spawn::pipe().map_err(&streams)?;
        let (stdout, stdout_child) = crate::spawn::pipe().map_err(&streams)?;
        let (stderr, stderr_child) = crate::spawn::pipe().map_err(&streams)?;
        {
            let mut state = self.shared.lock();
            state.forked = None;
            state.fork_error = None;
        }
        send_fds(
            self.control.get_ref().as_raw_fd(),
            b'f',
            &[
                stdin_child.as_raw_fd(),
                stdout_child.as_raw_fd(),
                stderr_child.as_raw_fd(),
            ],
        )
        .map_err(prep("asking the template to fork"))?;
        drop((stdin_child, stdout_child, stderr_child));
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            self.shared.until(|s| {
                if let Some(e) = s.fork_error.take() {
                    return Some(Err(e));
                }
                s.forked.take().map(Ok)
            }),
        )
        .await;
        let (pid, ns_pid) = match answer {
            Ok(Some(Ok(pids))) => pids,
            Ok(Some(Err(message))) => {
                return Err(prep("forking the template")(io::Error::other(message)));
            }
            Ok(None) => {
                return Err(prep("forking the template")(io::Error::other(
                    "the template has exited",
                )));
            }
            Err(_) => {
                return Err(prep("forking the template")(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the template did not fork within 10 s",
                )));
            }
        };
        self.shared.lock().live.insert(ns_pid);
        // The spare it handed the request to was most likely made ready already (or is being:
        // wait for that rather than move it twice).
        let spare = {
            let mut prepared = self.prepared.lock().await;
            match prepared.take() {
                Some(p) if p.ns_pid == ns_pid => Some(p),
                // A spare that is not this child (it died, say): let it go.
                _ => None,
            }
        };
        let ready = match spare {
            Some(spare) => spare,
            None => match make_ready(&self.sandbox, pid, ns_pid, limits.memory_mb) {
                Ok(ready) => ready,
                Err(e) => {
                    self.shared.forget(ns_pid);
                    return Err(e);
                }
            },
        };
        let mut process = Process::forked(
            pid,
            ready.pidfd,
            None,
            Forked {
                ns_pid,
                shared: self.shared.clone(),
            },
        );
        process.set_slot(ready.slot);
        Ok(Spawned {
            process,
            stdin,
            stdout,
            stderr,
            netns: None,
        })
    }

    /// Whether it can still fork.
    pub fn is_alive(&self) -> bool {
        !self.shared.is_closed()
    }

    /// How many instances it made are still running.
    pub fn instances(&self) -> usize {
        self.shared.lock().live.len()
    }

    /// Its resident memory (what keeping it costs), in bytes.
    pub fn resident_bytes(&self) -> Option<u64> {
        let pid = self
            .process
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()?
            .id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }

    /// What it has written so far (its start-up output).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Kills it, and with it every instance it made.
    pub async fn stop(&self) {
        self.reap().await;
    }

    async fn reap(&self) -> String {
        let process = self
            .process
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(mut process) = process else {
            return "stopped".into();
        };
        let _ = process.signal(libc::SIGKILL);
        let status = match process.wait().await {
            Ok(status) => describe(status),
            Err(e) => format!("its exit status could not be read: {e}"),
        };
        if let Some(failure) = process.launch_failure() {
            return failure.to_string();
        }
        status
    }

    async fn take_logs(&self) -> Vec<String> {
        // What the process wrote before it exited reaches the pumps a moment later.
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.logs()
    }
}

impl Drop for Template {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        // Dropping the process kills it (and so its instances) and reaps it.
        drop(
            self.process
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
    }
}

/// A spare moved into its instance's cgroups ahead of need.
#[derive(Debug)]
struct Prepared {
    ns_pid: u32,
    pidfd: OwnedFd,
    slot: crate::Slot,
}

/// Writes `pid` into the slot's `cgroup.procs` files.
fn move_into(slot: &crate::Slot, pid: u32) -> io::Result<()> {
    for procs in slot.open_cgroup_procs()? {
        File::from(procs).write_all(pid.to_string().as_bytes())?;
    }
    Ok(())
}

/// Makes a forked child ready to be an instance: a slot with the memory limit, a pidfd, and
/// the move into the slot's cgroups — before it runs anything of the user's (it does not until
/// its first request, which needs its Hello first). The child is killed if the move fails.
fn make_ready(
    sandbox: &Sandbox,
    pid: u32,
    ns_pid: u32,
    memory_mb: u64,
) -> Result<Prepared, SpawnError> {
    let prep = |step: &'static str| move |source| SpawnError { step, source };
    let mut slot = sandbox
        .take_slot()
        .map_err(prep("preparing the instance's cgroups"))?;
    slot.set_memory(memory_mb)
        .map_err(prep("setting the instance's memory limit"))?;
    let pidfd = pidfd_open(pid).map_err(prep("watching the instance"))?;
    if let Err(e) = move_into(&slot, pid) {
        // SAFETY: pidfd_send_signal reads only its integer arguments; a null siginfo is allowed.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
        }
        return Err(prep("moving the instance into its cgroup")(e));
    }
    Ok(Prepared {
        ns_pid,
        pidfd,
        slot,
    })
}

/// Makes each spare the template announces ready to be an instance: a slot with the memory
/// limit, a pidfd, the move into the slot's cgroups — on the blocking pool, off any request's
/// path.
async fn prepare_spares(
    sandbox: Sandbox,
    shared: Arc<Shared>,
    prepared: Arc<tokio::sync::Mutex<Option<Prepared>>>,
    memory_mb: u64,
) {
    while let Some((pid, ns_pid)) = shared.until(|s| s.announced.take()).await {
        let mut slot_guard = prepared.lock().await;
        let sandbox = sandbox.clone();
        let made =
            tokio::task::spawn_blocking(move || make_ready(&sandbox, pid, ns_pid, memory_mb)).await;
        match made {
            Ok(Ok(spare)) => *slot_guard = Some(spare),
            // The next fork moves its child itself.
            Ok(Err(e)) => tracing::debug!("could not prepare the template's spare: {e}"),
            Err(e) => tracing::debug!("could not prepare the template's spare: {e}"),
        }
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

/// Reads the template's channel until it closes, recording what it says.
async fn read_channel(control: Arc<AsyncFd<OwnedFd>>, shared: Arc<Shared>) {
    loop {
        let message = match control.readable().await {
            Ok(mut guard) => match guard.try_io(|fd| receive(fd.get_ref().as_raw_fd())) {
                Ok(result) => result,
                Err(_would_block) => continue,
            },
            Err(e) => Err(e),
        };
        let mut state = shared.lock();
        match message {
            Ok(Some((bytes, sender))) => match bytes.split_first() {
                Some((b'r', _)) => state.ready = true,
                Some((b'p', rest)) => {
                    if let (Some(pid), Some(ns_pid)) = (sender, u32_at(rest, 0)) {
                        state.forked = Some((pid, ns_pid));
                    } else {
                        state.fork_error = Some("the child sent no credentials".into());
                    }
                }
                Some((b's', rest)) => {
                    if let (Some(pid), Some(ns_pid)) = (sender, u32_at(rest, 0)) {
                        state.announced = Some((pid, ns_pid));
                    }
                }
                Some((b'e', rest)) => {
                    state.fork_error = Some(String::from_utf8_lossy(rest).into_owned());
                }
                Some((b'x', rest)) => {
                    if let (Some(ns_pid), Some(raw)) = (u32_at(rest, 0), u32_at(rest, 4))
                        && state.live.contains(&ns_pid)
                    {
                        state.exits.insert(ns_pid, raw as i32);
                    }
                }
                _ => tracing::debug!("ignoring a template message {bytes:?}"),
            },
            // End of file (or a broken channel): the template is gone.
            Ok(None) | Err(_) => {
                state.closed = true;
                drop(state);
                shared.changed();
                return;
            }
        }
        drop(state);
        shared.changed();
    }
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// One message and its sender's pid (from SCM_CREDENTIALS); `None` at end of file.
fn receive(socket: RawFd) -> io::Result<Option<(Vec<u8>, Option<u32>)>> {
    let mut data = [0u8; 512];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    let mut control = [0u64; 16];
    // SAFETY: msghdr is plain data over local buffers that outlive recvmsg; the cmsg pointers
    // come from the kernel-filled control buffer and are checked before use.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control);
        let n = libc::recvmsg(
            socket,
            &mut msg,
            libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT,
        );
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Ok(None);
        }
        let mut pid = None;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let (level, kind) = ((*cmsg).cmsg_level, (*cmsg).cmsg_type);
            if level == libc::SOL_SOCKET && kind == libc::SCM_CREDENTIALS {
                let cred = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::ucred>());
                pid = u32::try_from(cred.pid).ok().filter(|&p| p > 0);
            } else if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
                // Nothing is expected here: close whatever was sent.
                let len = (*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize;
                for i in 0..len / size_of::<libc::c_int>() {
                    let fd = std::ptr::read_unaligned(
                        libc::CMSG_DATA(cmsg).cast::<libc::c_int>().add(i),
                    );
                    drop(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        Ok(Some((data[..n as usize].to_vec(), pid)))
    }
}

fn set_passcred(socket: &OwnedFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads an int from a local that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, with integer arguments.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes integers and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Copies what the template writes into `logs` (capped) and the server's debug log.
async fn pump_log(fd: OwnedFd, logs: Arc<Mutex<Vec<String>>>) {
    use tokio::io::AsyncBufReadExt;
    let Ok(pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let mut lines = tokio::io::BufReader::new(pipe).lines();
    let mut kept = 0;
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::debug!("template: {line}");
        if kept + line.len() <= LOG_CAP {
            kept += line.len() + 1;
            logs.lock().unwrap_or_else(|p| p.into_inner()).push(line);
        }
    }
}
