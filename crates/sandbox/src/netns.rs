//! Network namespaces made ahead of need.
//!
//! Creating one costs ~0.5 ms with multi-millisecond tails; joining an existing one ~0.04 ms. A
//! background thread keeps a few fresh, empty namespaces (a loopback device that is down, no
//! other interface) ready, and each instance joins one of its own, so instances cannot reach the
//! host, the API or each other, not even over loopback.
//!
//! [`Netns`] and [`spawn_in_netns`] place a thread of the node's own in one of them: the sockets
//! it (and every thread it starts) opens are the namespace's, under the same filter as the
//! instances'.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A network namespace, held open by its descriptor (see `Sandbox::egress_netns`).
#[derive(Debug)]
pub struct Netns(OwnedFd);

impl Netns {
    /// Starts a thread named `name` inside this namespace (see [`spawn_in_netns`]).
    pub fn spawn<F>(self, name: impl Into<String>, f: F) -> io::Result<thread::JoinHandle<()>>
    where
        F: FnOnce() + Send + 'static,
    {
        spawn_in_netns(self.0, name, f)
    }

    /// A TCP socket (IPv4, non-blocking, close-on-exec, not yet connected) in this namespace:
    /// connecting it reaches what listens inside (an image instance's `$PORT` on its
    /// loopback), while nothing listens on the host. Made by the node's one socket thread,
    /// which steps into the namespace and back (a few microseconds); no thread of a runtime
    /// ever moves.
    pub fn tcp_socket(&self) -> io::Result<OwnedFd> {
        inside(&self.0, Op::TcpSocket)?
            .ok_or_else(|| io::Error::other("the socket thread made no socket"))
    }

    /// Brings the namespace's loopback device up (a new namespace's is down), so that a
    /// process inside can listen on 127.0.0.1 and be reached through [`Netns::tcp_socket`].
    pub fn loopback_up(&self) -> io::Result<()> {
        inside(&self.0, Op::LoopbackUp).map(drop)
    }
}

/// What the socket thread does inside a namespace.
#[derive(Debug, Clone, Copy)]
enum Op {
    TcpSocket,
    LoopbackUp,
}

type Job = (
    OwnedFd,
    Op,
    std::sync::mpsc::SyncSender<io::Result<Option<OwnedFd>>>,
);

/// The socket thread's queue; replaced if the thread ever ends (it ends when it cannot step
/// back into the host's namespace, rather than make sockets in the wrong one).
static SOCKET_THREAD: Mutex<Option<std::sync::mpsc::Sender<Job>>> = Mutex::new(None);

fn inside(netns: &OwnedFd, op: Op) -> io::Result<Option<OwnedFd>> {
    let (reply, answer) = std::sync::mpsc::sync_channel(1);
    let mut job = Some((netns.try_clone()?, op, reply));
    for _ in 0..2 {
        let sender = {
            let mut slot = SOCKET_THREAD.lock().unwrap_or_else(|p| p.into_inner());
            match &*slot {
                Some(sender) => sender.clone(),
                None => {
                    let (sender, jobs) = std::sync::mpsc::channel::<Job>();
                    thread::Builder::new()
                        .name("ignite-netns-sockets".into())
                        .spawn(move || socket_thread(jobs))?;
                    *slot = Some(sender.clone());
                    sender
                }
            }
        };
        match sender.send(job.take().ok_or_else(|| io::Error::other("no job"))?) {
            Ok(()) => {
                return answer
                    .recv()
                    .map_err(|_| io::Error::other("the socket thread ended"))?;
            }
            Err(std::sync::mpsc::SendError(back)) => {
                job = Some(back);
                *SOCKET_THREAD.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
        }
    }
    Err(io::Error::other("the socket thread could not be started"))
}

fn socket_thread(jobs: std::sync::mpsc::Receiver<Job>) {
    let Ok(host) = File::open("/proc/thread-self/ns/net") else {
        return;
    };
    while let Ok((netns, op, reply)) = jobs.recv() {
        let result = enter_on_this_thread(netns.as_fd()).and_then(|()| {
            let made = run(op);
            enter_on_this_thread(host.as_fd()).map(|()| made)
        });
        match result {
            Ok(made) => {
                let _ = reply.send(made);
            }
            Err(e) => {
                // Could not step back (or in): end rather than serve from the wrong place.
                let _ = reply.send(Err(e));
                return;
            }
        }
    }
}

fn run(op: Op) -> io::Result<Option<OwnedFd>> {
    match op {
        Op::TcpSocket => {
            let kind = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
            // SAFETY: socket takes integer arguments only and returns a new descriptor or -1.
            let fd = unsafe { libc::socket(libc::AF_INET, kind, 0) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: the descriptor was just created and is owned by nobody else.
            Ok(Some(unsafe {
                <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
            }))
        }
        Op::LoopbackUp => loopback_up_here().map(|()| None),
    }
}

/// Brings the calling thread's network namespace's loopback up (a new one's is down): the build
/// jail's, and an image instance's through the socket thread.
pub(crate) fn loopback_up_here() -> io::Result<()> {
    // SAFETY: a plain datagram socket; closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
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

impl From<OwnedFd> for Netns {
    fn from(fd: OwnedFd) -> Netns {
        Netns(fd)
    }
}

impl From<Netns> for OwnedFd {
    fn from(netns: Netns) -> OwnedFd {
        netns.0
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Starts a thread, named `name`, with its sockets in a namespace: what a runtime that opens
/// connections on a tenant's behalf takes (`ignite-wasm`'s egress thread) from whoever wires it
/// to the sandbox, so that it needs no dependency on this crate. A `std`-only shape: `name`,
/// then the thread's body.
pub type SpawnThread = Box<dyn FnOnce(String, Box<dyn FnOnce() + Send>) -> io::Result<()> + Send>;

/// The namespace as a [`SpawnThread`]: its thread starts inside it.
impl From<Netns> for SpawnThread {
    fn from(netns: Netns) -> SpawnThread {
        Box::new(move |name, body| netns.spawn(name, body).map(drop))
    }
}

/// Starts a thread named `name` that joins the network namespace `netns`, then runs `f`. Every
/// socket the thread creates — and the threads it starts (a runtime's blocking pool, which
/// resolves names) — is in that namespace. The descriptor is closed once the thread has joined
/// (the thread keeps the namespace alive). Returns once the thread is in the namespace, or with
/// why it could not join (`f` does not run then).
pub fn spawn_in_netns<F>(
    netns: OwnedFd,
    name: impl Into<String>,
    f: F,
) -> io::Result<thread::JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    let (report, entered) = std::sync::mpsc::channel();
    let handle = thread::Builder::new().name(name.into()).spawn(move || {
        let joined = enter_on_this_thread(netns.as_fd());
        drop(netns);
        let ok = joined.is_ok();
        let _ = report.send(joined);
        if ok {
            f();
        }
    })?;
    match entered.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(_) => Err(io::Error::other(
            "the thread ended before joining the network namespace",
        )),
    }
}

/// Moves the calling thread into the network namespace `netns`. Private: only a thread made
/// for it (see [`spawn_in_netns`]) may move, never one of a runtime's workers.
fn enter_on_this_thread(netns: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: setns reads only its integer arguments; the descriptor is borrowed, so open for
    // the call. It affects the calling thread alone (the kernel refuses a non-namespace
    // descriptor with EINVAL).
    if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[derive(Debug)]
struct Shared {
    ready: Mutex<State>,
    /// Wakes the refill thread.
    wake: Condvar,
    /// Wakes starts waiting for a namespace.
    ready_cv: Condvar,
}

#[derive(Debug, Default)]
struct State {
    namespaces: Vec<OwnedFd>,
    closed: bool,
}

#[derive(Debug)]
pub(crate) struct Pool {
    shared: Arc<Shared>,
    spare: usize,
    egress: bool,
    /// The refill thread, joined by [`Pool::close`].
    thread: Mutex<Option<thread::JoinHandle<()>>>,
}

/// How long a start waits for a namespace with internet access when none is ready.
const EGRESS_WAIT: Duration = Duration::from_secs(10);

impl Pool {
    /// Empty namespaces.
    pub(crate) fn new(spare: usize) -> io::Result<Pool> {
        Pool::start(spare, false, "ignite-netns", || Ok(create))
    }

    /// Namespaces wired to the internet (see `egress.rs`).
    pub(crate) fn egress(spare: usize) -> io::Result<Pool> {
        Pool::start(spare, true, "ignite-egress", || {
            let mut wirer = crate::egress::Wirer::new()?;
            Ok(move || wirer.make())
        })
    }

    fn start<M>(
        spare: usize,
        egress: bool,
        name: &str,
        maker: impl FnOnce() -> io::Result<M> + Send + 'static,
    ) -> io::Result<Pool>
    where
        M: FnMut() -> io::Result<OwnedFd>,
    {
        let shared = Arc::new(Shared {
            ready: Mutex::new(State::default()),
            wake: Condvar::new(),
            ready_cv: Condvar::new(),
        });
        let refill = shared.clone();
        let (started, ready) = std::sync::mpsc::channel();
        let handle = thread::Builder::new()
            .name(name.into())
            .spawn(move || match maker() {
                Ok(make) => {
                    let _ = started.send(Ok(()));
                    refill_loop(&refill, spare, make);
                }
                Err(e) => {
                    let _ = started.send(Err(e));
                }
            })?;
        ready
            .recv()
            .map_err(|_| io::Error::other("the namespace thread ended at start"))??;
        Ok(Pool {
            shared,
            spare,
            egress,
            thread: Mutex::new(Some(handle)),
        })
    }

    /// Stops the refill thread (waiting for it) and releases the namespaces made ahead of need
    /// (with egress, their veth pairs go with them). Idempotent; `take` fails from then on.
    pub(crate) fn close(&self) {
        let ready = {
            let mut state = lock(&self.shared);
            state.closed = true;
            std::mem::take(&mut state.namespaces)
        };
        self.shared.wake.notify_all();
        self.shared.ready_cv.notify_all();
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle
            && handle.thread().id() != thread::current().id()
            && handle.join().is_err()
        {
            tracing::warn!("a network namespace thread panicked");
        }
        drop(ready);
    }

    /// A fresh namespace. An empty one is made on the spot (on a short-lived thread) if none is
    /// ready; one with internet access is waited for (its netlink sockets live on the pool's
    /// thread).
    pub(crate) fn take(&self) -> io::Result<OwnedFd> {
        let deadline = Instant::now() + EGRESS_WAIT;
        let taken = {
            let mut state = lock(&self.shared);
            loop {
                if state.closed {
                    return Err(io::Error::other(
                        "the sandbox is shut down (the server is stopping): no network namespace",
                    ));
                }
                let fd = state.namespaces.pop();
                if state.namespaces.len() < self.spare {
                    self.shared.wake.notify_all();
                }
                let now = Instant::now();
                if fd.is_some() || !self.egress || now >= deadline {
                    break fd;
                }
                state = self
                    .shared
                    .ready_cv
                    .wait_timeout(state, deadline - now)
                    .map(|(s, _)| s)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
        };
        match taken {
            Some(fd) => Ok(fd),
            None if self.egress => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no network namespace with internet access became ready",
            )),
            None => thread::scope(|s| {
                s.spawn(create).join().unwrap_or_else(|_| {
                    Err(io::Error::other("creating a network namespace panicked"))
                })
            }),
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.close();
    }
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, State> {
    shared
        .ready
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Moves the calling thread into a new network namespace and returns a handle on it. Only ever
/// called on threads of this module, which do nothing else.
fn create() -> io::Result<OwnedFd> {
    // SAFETY: unshare has no memory-safety preconditions; it affects only this thread.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(File::open("/proc/thread-self/ns/net")?.into())
}

fn refill_loop(shared: &Shared, spare: usize, mut make: impl FnMut() -> io::Result<OwnedFd>) {
    crate::run_when_idle();
    loop {
        {
            let mut state = lock(shared);
            while !state.closed && state.namespaces.len() >= spare {
                state = shared
                    .wake
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            if state.closed {
                return;
            }
        }
        thread::sleep(crate::SETTLE);
        match make() {
            Ok(fd) => {
                let mut state = lock(shared);
                if state.closed {
                    return;
                }
                state.namespaces.push(fd);
                shared.ready_cv.notify_one();
            }
            Err(e) => {
                tracing::warn!("cannot create a network namespace: {e}");
                let state = lock(shared);
                let _ = shared
                    .wake
                    .wait_timeout_while(state, Duration::from_secs(1), |s| !s.closed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn net_inode() -> u64 {
        std::fs::metadata("/proc/thread-self/ns/net")
            .expect("own namespace")
            .ino()
    }

    /// Needs root, like the rest of the sandbox's tests.
    #[test]
    fn spawn_in_netns_starts_the_thread_inside() {
        let fd = thread::spawn(create)
            .join()
            .expect("thread")
            .expect("a new network namespace");
        let want = File::from(fd.try_clone().expect("dup"))
            .metadata()
            .expect("stat")
            .ino();
        assert_ne!(want, net_inode(), "the test thread is outside");
        let (tx, rx) = std::sync::mpsc::channel();
        Netns::from(fd)
            .spawn("netns-test", move || {
                tx.send(net_inode()).expect("test gone")
            })
            .expect("spawned inside")
            .join()
            .expect("thread");
        assert_eq!(rx.recv().expect("an inode"), want);
    }

    #[test]
    fn spawn_in_netns_refuses_what_is_not_a_namespace() {
        let not_ns: OwnedFd = File::open("/dev/null").expect("/dev/null").into();
        let ran = Arc::new(Mutex::new(false));
        let flag = ran.clone();
        let err = spawn_in_netns(not_ns, "netns-test", move || *flag.lock().unwrap() = true)
            .expect_err("not a namespace");
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
        assert!(!*ran.lock().unwrap(), "the body does not run");
    }
}
