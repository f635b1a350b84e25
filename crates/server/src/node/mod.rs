//! The node: one pool of instances per (app, version, network access), whatever their
//! runtime — a pool holds [`crate::runtime::Instance`]s and starts them through its
//! [`crate::runtime::Launcher`], and this is the only admission there is.
//!
//! A request takes a warm idle instance, or starts one (cold) while the pool is under
//! `max_instances`, or waits in a bounded queue (its deadline still counts); a full queue is a
//! 429. Instances return to the pool after their request and are stopped once idle for
//! `idle_timeout_s` — except `reserved_capacity` of them, which are started ahead of traffic and
//! replaced when they die. A pool whose version is no longer active drains: its busy instances
//! finish their requests, then everything stops.
//!
//! The maintenance loop reconciles what runs with what the store says should run, every
//! [`TICK`]; it is idempotent, and publish, rollback and scaling changes also trigger it at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::State;
use crate::limits::Limits;
use crate::metrics::{Metrics, app_label};
use crate::runtime::StartError;
use crate::store::{self, App, Version};

mod pool;

pub use pool::Lease;
use pool::{Grant, Member, Pool, PoolState, RECHECK_IDLE_AFTER, stop_later};

/// How often the maintenance loop runs.
pub const TICK: Duration = Duration::from_millis(250);
/// How long a stopping instance may take to exit before SIGKILL.
pub const GRACE: Duration = Duration::from_secs(2);

pub type AppKey = (String, String);
/// (org, app, version, internet access): changing an app's network access, like publishing,
/// starts a new pool and drains the old one.
type PoolKey = (String, String, i64, bool);

/// What a request needs to know about the app it calls: cached, invalidated on every change.
#[derive(Debug, Clone)]
pub struct Route {
    pub app: App,
    /// The active version, when one is published.
    pub version: Option<Version>,
}

/// Why no instance could be had.
#[derive(Debug)]
pub enum AcquireError {
    /// The pool is at `max_instances` and its queue is full.
    QueueFull { depth: u32 },
    /// The deadline passed while waiting for an instance.
    Deadline { waited: Duration },
    /// A new instance did not start.
    Start(StartError),
    /// The node's instance budget is spent and every instance is busy.
    NodeFull { instances: u32 },
    /// The server is stopping: no instance starts any more.
    Stopping,
}

pub struct Node {
    pools: Mutex<HashMap<PoolKey, Arc<Pool>>>,
    routes: Mutex<HashMap<AppKey, Arc<Route>>>,
    /// The node's instance budget: a permit per instance running or starting, over all pools.
    budget: Arc<Semaphore>,
    pub limits: Limits,
    /// Bumped by every invalidation: a store read that began before one is not cached.
    generation: std::sync::atomic::AtomicU64,
    /// Whether the node is stopping: no new instance starts.
    stopping: std::sync::atomic::AtomicBool,
    /// Public hostname labels (`<app>-<org>`) seen by the gateway, and the app each names.
    hosts: Mutex<HashMap<String, AppKey>>,
    pub metrics: Metrics,
}

impl Node {
    pub fn new(limits: Limits) -> Node {
        Node {
            budget: Arc::new(Semaphore::new(limits.node_instances as usize)),
            limits,
            pools: Mutex::default(),
            routes: Mutex::default(),
            hosts: Mutex::default(),
            generation: Default::default(),
            stopping: Default::default(),
            metrics: Metrics::default(),
        }
    }

    /// The app and its active version, from the cache or the store.
    pub async fn route(
        &self,
        db: &store::Db,
        org: &str,
        app: &str,
    ) -> sqlx::Result<Option<Arc<Route>>> {
        let key = (org.to_string(), app.to_string());
        if let Some(route) = self
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(Some(route.clone()));
        }
        // What the store says now is cached only if no change was made meanwhile: a read that
        // began before a publish must not overwrite what the publish invalidated.
        let generation = self.generation.load(std::sync::atomic::Ordering::Acquire);
        let Some(found) = store::get_app(db, org, app).await? else {
            return Ok(None);
        };
        let version = match found.active_version {
            Some(v) => store::get_version(db, org, app, v).await?,
            None => None,
        };
        let route = Arc::new(Route {
            app: found,
            version,
        });
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        if self.generation.load(std::sync::atomic::Ordering::Acquire) == generation {
            routes.insert(key, route.clone());
        }
        Ok(Some(route))
    }

    /// The app whose public hostname label (`<app>-<org>`) is `label`, from the cache or the
    /// store. Labels are unique across orgs (the store refuses a second), so exactly one app or
    /// none answers, whatever the order they were created in.
    pub async fn route_by_host(
        &self,
        db: &store::Db,
        label: &str,
    ) -> sqlx::Result<Option<Arc<Route>>> {
        let cached = self
            .hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(label)
            .cloned();
        let (org, app) = match cached {
            Some(key) => key,
            None => {
                let generation = self.generation.load(std::sync::atomic::Ordering::Acquire);
                match store::app_by_hostname(db, label).await? {
                    Some(key) => {
                        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
                        if self.generation.load(std::sync::atomic::Ordering::Acquire) == generation
                        {
                            hosts.insert(label.to_string(), key.clone());
                        }
                        key
                    }
                    None => return Ok(None),
                }
            }
        };
        self.route(db, &org, &app).await
    }

    /// Forgets every cached route and hostname (the replicas' change notifications were
    /// interrupted, so any of them may be stale).
    pub fn invalidate_all(&self) {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        routes.clear();
        drop(routes);
        self.hosts.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Forgets what is cached about an app; the next request reads the store.
    pub fn invalidate(&self, org: &str, app: &str) {
        let key = (org.to_string(), app.to_string());
        // Under the cache's lock, so that a read racing this one sees either the new generation
        // or the entry it would have overwritten already gone.
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        routes.remove(&key);
        drop(routes);
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        self.hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, k| *k != key);
    }

    fn pool(&self, state: &State, route: &Route, version: &Version) -> Arc<Pool> {
        let key = (
            route.app.org.clone(),
            route.app.name.clone(),
            version.version,
            route.app.network.egress,
        );
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let pool = pools.entry(key.clone()).or_insert_with(|| {
            Arc::new(Pool {
                key,
                launcher: crate::runtime::launcher(state, &route.app.org, &route.app.name, version),
                scaling: Mutex::new(self.limits.clamp(route.app.scaling.clone())),
                state: Mutex::new(PoolState::default()),
            })
        });
        *pool.scaling.lock().unwrap_or_else(|p| p.into_inner()) =
            self.limits.clamp(route.app.scaling.clone());
        pool.clone()
    }

    /// Checks out a share of an instance of the route's active version for one request.
    pub async fn acquire(
        &self,
        state: &State,
        route: &Route,
        version: &Version,
        deadline: Instant,
    ) -> Result<Lease, AcquireError> {
        let pool = self.pool(state, route, version);
        let scaling = pool.scaling();
        // The operator's per-app cap holds even for settings stored before it was lowered.
        let max_instances = scaling.max_instances.min(self.limits.app_instances);
        let started = Instant::now();
        loop {
            enum Next {
                Have(Grant),
                Wait(oneshot::Receiver<Grant>),
            }
            let next = {
                let mut st = pool.lock();
                if let Some(i) = st.pick(scaling.concurrency) {
                    let member = &mut st.members[i];
                    let stale = member.busy == 0 && member.since.elapsed() >= RECHECK_IDLE_AFTER;
                    member.busy += 1;
                    Next::Have(Grant::Warm(member.instance.clone(), stale))
                } else if st.total() < max_instances {
                    st.starting += 1;
                    Next::Have(Grant::Spawn)
                } else if st.waiters.len() < scaling.queue_depth as usize {
                    let (tx, rx) = oneshot::channel();
                    st.waiters.push_back(tx);
                    Next::Wait(rx)
                } else {
                    return Err(AcquireError::QueueFull {
                        depth: scaling.queue_depth,
                    });
                }
            };
            let grant = match next {
                Next::Have(grant) => grant,
                Next::Wait(mut rx) => {
                    tokio::select! {
                        grant = &mut rx => match grant {
                            Ok(grant) => grant,
                            // The pool went away (server stopping): try again, it will answer.
                            Err(_) => continue,
                        },
                        _ = tokio::time::sleep_until(deadline.into()) => {
                            // A grant sent just as the deadline passed is not lost: it goes
                            // back (a share to the next waiter, a slot freed).
                            rx.close();
                            if let Ok(grant) = rx.try_recv() {
                                self.give_back(&pool, grant);
                            }
                            return Err(AcquireError::Deadline {
                                waited: started.elapsed(),
                            });
                        }
                    }
                }
            };
            let queued = started.elapsed();
            match grant {
                Grant::Warm(instance, stale) => {
                    if stale && instance.has_exited() {
                        // It died while idle (killed from outside): drop it and retry.
                        self.give_back(&pool, Grant::Warm(instance, stale));
                        continue;
                    }
                    return Ok(Lease {
                        instance,
                        cold: None,
                        queued,
                        pool,
                    });
                }
                Grant::Spawn => {
                    if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
                        let mut st = pool.lock();
                        st.starting -= 1;
                        return Err(AcquireError::Stopping);
                    }
                    let Some(budget) = self.take_budget() else {
                        let mut st = pool.lock();
                        st.starting -= 1;
                        st.free_slot();
                        return Err(AcquireError::NodeFull {
                            instances: self.limits.node_instances,
                        });
                    };
                    let started = pool.launcher.start(pool.settings()).await;
                    let mut st = pool.lock();
                    st.starting -= 1;
                    return match started {
                        Ok((instance, cold)) => {
                            st.admit(instance.clone(), 1, scaling.concurrency, budget);
                            drop(st);
                            Ok(Lease {
                                instance,
                                cold: Some(cold),
                                queued,
                                pool,
                            })
                        }
                        Err(e) => {
                            st.free_slot();
                            Err(AcquireError::Start(e))
                        }
                    };
                }
            }
        }
    }

    /// The pools as they are now (the map's lock is not held while they are worked on).
    fn pools(&self) -> Vec<Arc<Pool>> {
        self.pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// A share of the node's instance budget for one more instance: a free one, or the one the
    /// least recently used idle instance (of any app, beyond its reserved capacity) held, which
    /// is stopped for it. `None` when every instance on the node is busy or reserved. Must be
    /// called holding no pool's lock.
    fn take_budget(&self) -> Option<OwnedSemaphorePermit> {
        loop {
            if let Ok(permit) = self.budget.clone().try_acquire_owned() {
                return Some(permit);
            }
            let pools = self.pools();
            // The oldest idle instance that no reserve keeps.
            let mut oldest: Option<(Instant, Arc<Pool>)> = None;
            for pool in &pools {
                let reserved = pool.scaling().reserved_capacity as usize;
                let st = pool.lock();
                let keep = if st.retired { 0 } else { reserved };
                let idle = st.members.iter().filter(|m| m.busy == 0).count();
                if st.members.len() <= keep || idle == 0 {
                    continue;
                }
                if let Some(since) = st
                    .members
                    .iter()
                    .filter(|m| m.busy == 0)
                    .map(|m| m.since)
                    .min()
                    && oldest.as_ref().is_none_or(|(t, _)| since < *t)
                {
                    oldest = Some((since, pool.clone()));
                }
            }
            let (_, pool) = oldest?;
            let evicted = {
                let mut st = pool.lock();
                let i = st
                    .members
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| m.busy == 0)
                    .min_by_key(|(_, m)| m.since)
                    .map(|(i, _)| i);
                i.map(|i| st.members.swap_remove(i))
            };
            match evicted {
                // Its budget permit is free again; the process stops in the background.
                Some(member) => {
                    tracing::debug!(
                        "node budget spent: stopping an idle instance of {:?}",
                        pool.key
                    );
                    stop_later(vec![member.instance.clone()]);
                }
                // Taken meanwhile: look again.
                None => continue,
            }
        }
    }

    /// Returns a grant its waiter could not use.
    fn give_back(&self, pool: &Arc<Pool>, grant: Grant) {
        match grant {
            Grant::Warm(instance, _) => pool.release(&instance),
            Grant::Spawn => {
                let mut st = pool.lock();
                st.starting -= 1;
                st.free_slot();
            }
        }
    }

    /// One pass of reconciliation: drop dead idle instances, stop idle ones past their timeout,
    /// drain retired versions, start reserved capacity. Idempotent.
    pub async fn reconcile(&self, state: &State) {
        // A control replica runs no instance: its nodes reconcile their own pools.
        if state.fleet.is_some() {
            return;
        }
        // Which (app → active version, scaling) the store wants — or, on a fleet's node, what
        // the control plane last said.
        let mut wanted: HashMap<AppKey, (i64, Arc<Route>)> = HashMap::new();
        if let Some(role) = &state.fleet_node {
            wanted = role.wanted();
        } else {
            match store::live_apps(&state.db).await {
                Ok(apps) => {
                    for (org, app) in apps {
                        if let Ok(Some(route)) = self.route(&state.db, &org, &app).await
                            && let Some(v) = &route.version
                        {
                            wanted.insert((org, app), (v.version, route.clone()));
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!("reconcile: cannot read the apps: {e}");
                    return;
                }
            }
        }
        // Make sure a pool exists for every app that wants reserved capacity.
        for (_, route) in wanted.values() {
            if route.app.scaling.reserved_capacity > 0
                && let Some(version) = &route.version
            {
                self.pool(state, route, version);
            }
        }
        let pools = self.pools();
        for pool in pools {
            let (org, app, version, egress) = pool.key.clone();
            let want = wanted.get(&(org.clone(), app.clone()));
            let active =
                want.is_some_and(|(v, route)| *v == version && route.app.network.egress == egress);
            if let Some((_, route)) = want.filter(|_| active) {
                *pool.scaling.lock().unwrap_or_else(|p| p.into_inner()) =
                    self.limits.clamp(route.app.scaling.clone());
            }
            let scaling = pool.scaling();
            let mut to_stop = Vec::new();
            let missing;
            let (idle_now, busy_now, queued_now);
            {
                let mut st = pool.lock();
                // Instances that died while idle.
                let mut i = 0;
                while i < st.members.len() {
                    if st.members[i].busy == 0 && st.members[i].instance.has_exited() {
                        to_stop.push(st.members.swap_remove(i).instance);
                        st.free_slot();
                    } else {
                        i += 1;
                    }
                }
                if !active {
                    st.retired = true;
                    let (idle, busy) = std::mem::take(&mut st.members)
                        .into_iter()
                        .partition(|m| m.busy == 0);
                    st.members = busy;
                    to_stop.extend(idle.into_iter().map(|m: Member| m.instance));
                    missing = 0;
                } else {
                    // Idle past the timeout, oldest first, keeping the reserved ones.
                    let timeout = Duration::from_secs(u64::from(scaling.idle_timeout_s));
                    st.members.sort_by_key(|m| std::cmp::Reverse(m.since));
                    while st.total() > scaling.reserved_capacity {
                        let Some(oldest) = st
                            .members
                            .iter()
                            .rposition(|m| m.busy == 0 && m.since.elapsed() >= timeout)
                        else {
                            break;
                        };
                        to_stop.push(st.members.remove(oldest).instance);
                    }
                    missing = scaling.reserved_capacity.saturating_sub(st.total());
                }
                idle_now = st.members.iter().filter(|m| m.busy == 0).count() as i64;
                busy_now = i64::from(st.total()) - idle_now;
                queued_now = st.waiters.len() as i64;
            }
            stop_later(to_stop);
            if !active {
                state
                    .templates
                    .retire(&format!("{org}/{app}/{version}"), egress)
                    .await;
            }
            let label = app_label(&org, &app);
            self.metrics
                .queue_depth
                .get_or_create(&label)
                .set(queued_now);
            let mut idle_label = label.clone();
            idle_label.push(("state".into(), "idle".into()));
            let mut busy_label = label.clone();
            busy_label.push(("state".into(), "busy".into()));
            if active {
                self.metrics
                    .instances
                    .get_or_create(&idle_label)
                    .set(idle_now);
                self.metrics
                    .instances
                    .get_or_create(&busy_label)
                    .set(busy_now);
            }
            // Reserved instances take their budget first (stopping idle ones of other apps if
            // they must); what cannot be had now is tried again at the next pass.
            let mut budgets = Vec::new();
            while budgets.len() < missing as usize {
                match self.take_budget() {
                    Some(b) => budgets.push(b),
                    None => break,
                }
            }
            {
                let mut st = pool.lock();
                let still_missing = scaling.reserved_capacity.saturating_sub(st.total()) as usize;
                budgets.truncate(still_missing);
                st.starting += budgets.len() as u32;
            }
            for budget in budgets {
                let pool = pool.clone();
                tokio::spawn(async move {
                    let started = pool.launcher.start(pool.settings()).await;
                    let mut st = pool.lock();
                    st.starting -= 1;
                    match started {
                        Ok((instance, _)) => {
                            st.admit(instance, 0, pool.scaling().concurrency, budget)
                        }
                        Err(e) => {
                            tracing::warn!(
                                "a reserved instance of {:?} did not start: {e}",
                                pool.key
                            );
                            st.free_slot();
                        }
                    }
                });
            }
            // A drained pool with nothing left is forgotten.
            if !active && pool.lock().total() == 0 {
                self.pools
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&pool.key);
                self.metrics.instances.remove(&idle_label);
                self.metrics.instances.remove(&busy_label);
            }
        }
    }

    /// Runs [`Node::reconcile`] (and writes long-running execution records) every [`TICK`] until
    /// the token is cancelled.
    pub async fn maintain(&self, state: &State, shutdown: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    self.reconcile(state).await;
                    state.recorder.flush_running(Some(store::now_ms() - 500));
                }
            }
        }
    }

    /// What the node holds, for a heartbeat: instances running or starting over all pools,
    /// and each pool's.
    pub fn report(&self) -> (u32, Vec<crate::fleet::wire::PoolReport>) {
        let mut running = 0;
        let mut pools = Vec::new();
        for pool in self.pools() {
            let st = pool.lock();
            let (org, app, version, egress) = pool.key.clone();
            running += st.total();
            pools.push(crate::fleet::wire::PoolReport {
                org,
                app,
                version,
                egress,
                instances: st.total(),
                idle: st.members.iter().filter(|m| m.busy == 0).count() as u32,
            });
        }
        (running, pools)
    }

    /// Stops every instance (the server is stopping).
    pub async fn shutdown(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Release);
        let pools: Vec<Arc<Pool>> = self
            .pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, p)| p)
            .collect();
        let mut stopping = Vec::new();
        for pool in pools {
            let mut st = pool.lock();
            st.retired = true;
            st.waiters.clear();
            let idle = st.members.iter().filter(|m| m.busy == 0);
            stopping.extend(idle.map(|m| m.instance.clone()));
        }
        for instance in stopping {
            instance.shutdown(GRACE).await;
        }
    }
}
