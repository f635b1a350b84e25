//! What the sandbox prepares ahead of need: instance slots (a uid and cgroups each, reused from
//! one instance to the next) and the zygotes the `ignite-zygotes` thread keeps ready.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex};

use crate::cgroup::SlotCgroups;
use crate::spawn::Zygote;
use crate::{Inner, Sandbox};

/// Zygotes made ahead of need by the `ignite-zygotes` thread.
#[derive(Default)]
pub(crate) struct ZygotePool {
    pub(crate) state: Mutex<ZygoteState>,
    pub(crate) wake: Condvar,
    /// How many the thread keeps ready.
    pub(crate) spare: usize,
}

#[derive(Default)]
pub(crate) struct ZygoteState {
    pub(crate) ready: Vec<Zygote>,
    pub(crate) closed: bool,
}

impl ZygotePool {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, ZygoteState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn take(&self) -> Option<Zygote> {
        let zygote = self.lock().ready.pop();
        self.wake.notify_one();
        zygote
    }
}

/// How long background preparation waits after the pool is drawn on.
pub(crate) const SETTLE: std::time::Duration = std::time::Duration::from_millis(5);

/// Background work that should yield to the instances being started: nice 10 (not SCHED_IDLE,
/// which starves under sustained load and leaves every start to make its own). Zygotes reset
/// their own niceness first thing.
pub(crate) fn run_when_idle() {
    // SAFETY: gettid and setpriority on the calling thread only.
    let rc = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10)
    };
    if rc != 0 {
        tracing::debug!(
            "could not lower the sandbox's background priority: {}",
            io::Error::last_os_error()
        );
    }
}

/// The `ignite-zygotes` thread. It upgrades `inner` only while it makes something, so that
/// dropping the last [`Sandbox`] clone shuts the sandbox down; it ends when the pool closes.
pub(crate) fn refill_zygotes(inner: &std::sync::Weak<Inner>, pool: &ZygotePool) {
    run_when_idle();
    // Instance slots (a uid and cgroups in every hierarchy, ~0.3 ms each to make) ahead of the
    // first burst; they are reused from then on.
    if let Some(strong) = inner.upgrade() {
        let sandbox = Sandbox { inner: strong };
        let mut made: Vec<Slot> = Vec::new();
        for _ in 0..sandbox.inner.config.spare_slots {
            if pool.lock().closed {
                break;
            }
            if let Ok(slot) = sandbox.take_slot() {
                made.push(slot);
            }
        }
        drop(made);
        drop(sandbox);
    }
    loop {
        {
            let mut state = pool.lock();
            while !state.closed && state.ready.len() >= pool.spare {
                state = pool.wake.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            if state.closed {
                return;
            }
        }
        // Let the start that took a zygote finish first: making the next one right away
        // contends with it for the kernel's namespace and cgroup locks (it doubled the cold
        // start here). A burst that empties the pool makes its own meanwhile.
        std::thread::sleep(SETTLE);
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let sandbox = Sandbox { inner: strong };
        let made = Zygote::create(&sandbox, false);
        // Dropping this clone may shut the sandbox down (if it was the last): not under the
        // pool's lock, which the shutdown takes.
        drop(sandbox);
        match made {
            Ok(zygote) => {
                let mut state = pool.lock();
                if state.closed {
                    drop(state);
                    return;
                }
                state.ready.push(zygote);
            }
            Err(e) => {
                if pool.lock().closed {
                    return;
                }
                tracing::warn!("cannot prepare a sandboxed instance ahead of need: {e}");
                let state = pool.lock();
                let _ =
                    pool.wake
                        .wait_timeout_while(state, std::time::Duration::from_secs(1), |s| {
                            !s.closed
                        });
            }
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct SlotPool {
    state: Mutex<SlotPoolState>,
}

#[derive(Debug, Default)]
pub(crate) struct SlotPoolState {
    pub(crate) free: Vec<SlotState>,
    pub(crate) next: u32,
}

impl SlotPool {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, SlotPoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Debug)]
pub(crate) struct SlotState {
    pub(crate) index: u32,
    pub(crate) cgroups: Option<SlotCgroups>,
}

/// An instance's uid and cgroups, returned to the pool when its process has been reaped (its
/// pid namespace, and so every process it started, is gone by then).
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) state: Option<SlotState>,
    pub(crate) pool: Arc<SlotPool>,
}

impl Slot {
    pub(crate) fn set_memory(&mut self, memory_mb: u64) -> io::Result<()> {
        match self.state.as_mut().and_then(|s| s.cgroups.as_mut()) {
            Some(c) => c.set_memory(memory_mb.saturating_mul(1 << 20)),
            None => Ok(()),
        }
    }

    /// The slot's `cgroup.procs` files, opened for a zygote to join (see
    /// [`SlotCgroups::open_procs`]).
    pub(crate) fn open_cgroup_procs(&self) -> io::Result<Vec<OwnedFd>> {
        match self.state.as_ref().and_then(|s| s.cgroups.as_ref()) {
            Some(c) => c.open_procs(),
            None => Ok(Vec::new()),
        }
    }

    pub(crate) fn has_memory_cgroup(&self) -> bool {
        self.state
            .as_ref()
            .and_then(|s| s.cgroups.as_ref())
            .is_some_and(|c| c.has_memory())
    }

    /// Returns the slot; says whether its memory controller killed a process meanwhile.
    pub(crate) fn release(mut self) -> bool {
        let Some(mut state) = self.state.take() else {
            return false;
        };
        let oom = state.cgroups.as_mut().is_some_and(|c| c.take_oom_kill());
        self.pool.lock().free.push(state);
        oom
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(mut state) = self.state.take() {
            if let Some(c) = &mut state.cgroups {
                c.take_oom_kill();
            }
            self.pool.lock().free.push(state);
        }
    }
}
