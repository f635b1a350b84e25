//! A pool of instances of one version: its members, the requests waiting, and how a share of an
//! instance is handed out and given back. The policy (which pool, when to start or stop) is the
//! node's; this is the bookkeeping it runs on.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ignite_api::ScalingConfig;
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use super::{GRACE, PoolKey};
use crate::runtime::{ColdStart, Instance, Launcher, StartSettings};

/// A share of an instance checked out of a pool for one request; dropping it gives the share
/// back (to the next waiter, or the instance goes idle, or stops if it is no longer wanted).
pub struct Lease {
    pub instance: Arc<dyn Instance>,
    pub cold: Option<ColdStart>,
    pub queued: Duration,
    pub(super) pool: Arc<Pool>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.release(&self.instance);
    }
}

/// An instance idle for less than this is handed out without asking the kernel whether it still
/// runs (a `wait4` per request); older ones are checked, and the reconcile loop sweeps the rest.
pub(super) const RECHECK_IDLE_AFTER: Duration = Duration::from_millis(50);

pub(super) enum Grant {
    /// A share of an instance (already counted in its `busy`), and whether it must be checked
    /// for having died while it sat idle.
    Warm(Arc<dyn Instance>, bool),
    /// A slot was freed for the waiter (already counted in `starting`): it starts an instance.
    Spawn,
}

/// A running instance of the pool.
pub(super) struct Member {
    pub(super) instance: Arc<dyn Instance>,
    /// Requests it is serving: at most the app's `concurrency`.
    pub(super) busy: u32,
    /// When it last became idle.
    pub(super) since: Instant,
    /// Its share of the node's instance budget, given back when it leaves the pool.
    pub(super) _budget: OwnedSemaphorePermit,
}

#[derive(Default)]
pub(super) struct PoolState {
    pub(super) members: Vec<Member>,
    /// Instances being started.
    pub(super) starting: u32,
    pub(super) waiters: VecDeque<oneshot::Sender<Grant>>,
    pub(super) retired: bool,
}

impl PoolState {
    /// Instances alive or starting.
    pub(super) fn total(&self) -> u32 {
        self.members.len() as u32 + self.starting
    }

    /// The instance the next request should share: alive and under `concurrency`; the busiest
    /// first (so that the others go idle and can scale down), then the most recently used.
    pub(super) fn pick(&self, concurrency: u32) -> Option<usize> {
        self.members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.busy < concurrency && m.instance.is_alive())
            .max_by_key(|(_, m)| (m.busy, m.since))
            .map(|(i, _)| i)
    }

    pub(super) fn find(&self, instance: &Arc<dyn Instance>) -> Option<usize> {
        self.members
            .iter()
            .position(|m| Arc::ptr_eq(&m.instance, instance))
    }

    /// A started instance joins the pool with `busy` requests already on it; its spare capacity
    /// goes to the requests waiting.
    pub(super) fn admit(
        &mut self,
        instance: Arc<dyn Instance>,
        busy: u32,
        concurrency: u32,
        budget: OwnedSemaphorePermit,
    ) {
        self.members.push(Member {
            instance,
            busy,
            since: Instant::now(),
            _budget: budget,
        });
        self.hand_out(self.members.len() - 1, concurrency);
    }

    /// Gives member `i`'s spare capacity to the requests waiting.
    pub(super) fn hand_out(&mut self, i: usize, concurrency: u32) {
        while self.members[i].busy < concurrency
            && let Some(waiter) = self.waiters.pop_front()
        {
            self.members[i].busy += 1;
            if waiter
                .send(Grant::Warm(self.members[i].instance.clone(), false))
                .is_err()
            {
                // It stopped waiting (its deadline, or its caller left).
                self.members[i].busy -= 1;
            }
        }
    }

    /// An instance slot became free (its instance died or never started): the first waiter
    /// still waiting gets to start one.
    pub(super) fn free_slot(&mut self) {
        while let Some(waiter) = self.waiters.pop_front() {
            self.starting += 1;
            if waiter.send(Grant::Spawn).is_ok() {
                return;
            }
            self.starting -= 1;
        }
    }
}

pub(super) struct Pool {
    pub(super) key: PoolKey,
    pub(super) launcher: Box<dyn Launcher>,
    pub(super) scaling: Mutex<ScalingConfig>,
    pub(super) state: Mutex<PoolState>,
}

impl Pool {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn scaling(&self) -> ScalingConfig {
        self.scaling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Gives back a request's share of an instance: the instance serves a waiter, goes idle, or,
    /// dead or no longer wanted, stops once its last request is done.
    pub(super) fn release(&self, instance: &Arc<dyn Instance>) {
        let scaling = self.scaling();
        let mut st = self.lock();
        let Some(i) = st.find(instance) else {
            return;
        };
        st.members[i].busy -= 1;
        // A request's outcome tells whether its instance survived; no need to ask the kernel.
        if instance.is_alive() {
            // Queued requests first, even of a retired pool: they were accepted for this version.
            st.hand_out(i, scaling.concurrency);
        }
        if st.members[i].busy > 0 {
            return;
        }
        st.members[i].since = Instant::now();
        let unwanted = !instance.is_alive()
            || st.retired
            || (scaling.idle_timeout_s == 0 && st.total() > scaling.reserved_capacity);
        if unwanted {
            let gone = st.members.swap_remove(i);
            if !gone.instance.is_alive() {
                st.free_slot();
            }
            drop(st);
            stop_later(vec![gone.instance]);
        }
    }

    /// What an instance starting now gets: the app's current memory limit, and the network
    /// access the pool was made for.
    pub(super) fn settings(&self) -> StartSettings {
        StartSettings {
            memory_mb: self.scaling().memory_mb,
            egress: self.key.3,
            deadline: std::time::Duration::from_secs(u64::from(self.scaling().timeout_s.max(1))),
        }
    }
}

/// Stops instances in the background (each within [`GRACE`]).
pub(super) fn stop_later(instances: Vec<Arc<dyn Instance>>) {
    for instance in instances {
        tokio::spawn(async move { instance.shutdown(GRACE).await });
    }
}
