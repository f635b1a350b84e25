//! Network namespaces made ahead of need.
//!
//! Creating one costs ~0.5 ms with multi-millisecond tails; joining an existing one ~0.04 ms. A
//! background thread keeps a few fresh, empty namespaces (a loopback device that is down, no
//! other interface) ready, and each instance joins one of its own, so instances cannot reach the
//! host, the API or each other, not even over loopback.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

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
