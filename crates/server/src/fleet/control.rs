//! The control plane's side of the fleet: the nodes' heartbeats, the replica's view of which
//! nodes are alive and what they hold, placement, and the dispatch of one request to a node.
//!
//! Placement: a request goes to a node that already runs an instance of the app's active
//! version (warm affinity); else to the first node in the app's own order of preference
//! (rendezvous hashing of the app over the live nodes, so every replica prefers the same node
//! and an app's instances gather instead of spreading) that has room. `max_instances` holds
//! across the fleet: a node is sent the app's limit less what the other nodes already run, as
//! their last reports tell. `reserved_capacity` is spread over the nodes in the same order.
//!
//! Faults: a node that cannot be connected to is skipped (nothing was sent, so the request
//! goes to the next one); a node whose connection breaks while it holds a request, or that
//! stops heartbeating, costs that request a 502 `node_lost`, recorded by this replica.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio_util::sync::CancellationToken;

use super::wire::{Dispatch, Heartbeat, HeartbeatAnswer, INVOKE_PATH, PoolReport, Ran};
use super::{LOST_AFTER, REFRESH};
use crate::State;
use crate::node::Route;
use crate::store::{self, App, Version};

/// A node unreachable a moment ago is not tried again for this long.
const DOWN_FOR: Duration = Duration::from_secs(1);
/// How long past the app's deadline a node may take to answer (it stops the handler at the
/// deadline itself) before it counts as lost.
const ANSWER_SLACK: Duration = Duration::from_secs(2);
/// The most a node's answer may be: a 6 MiB response, its logs and the framing.
const MAX_ANSWER: usize = 16 << 20;

/// A live node as this replica last saw it.
pub struct Member {
    pub id: String,
    pub address: String,
    incarnation: String,
    capacity: u32,
    running: u32,
    pools: Vec<PoolReport>,
    /// Cancelled when the node is counted lost: the requests it holds end as `node_lost`.
    lost: CancellationToken,
}

impl Member {
    /// Instances of `version` of `org/app` it runs, by its last report.
    fn instances_of(&self, org: &str, app: &str, version: i64) -> u32 {
        self.pools
            .iter()
            .filter(|p| p.org == org && p.app == app && p.version == version)
            .map(|p| p.instances)
            .sum()
    }
}

/// Why a request could not be run on any node.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// No node is alive (or every one is unreachable): nothing ran.
    #[error("no node of the fleet is available")]
    NoNode,
    /// The node holding the request was lost before it answered.
    #[error("node {node} was lost while it ran this request ({why}); retry it")]
    Lost { node: String, why: String },
}

pub struct Fleet {
    token: String,
    /// Nodes this replica counted lost (id → incarnation): a heartbeat of the same start is a
    /// node back from a partition.
    counted_lost: Mutex<HashMap<String, String>>,
    /// The apps with reserved capacity, as of the last refresh.
    reserved: RwLock<Vec<(String, String)>>,
    client: Client<HttpConnector, Full<Bytes>>,
    view: RwLock<Arc<Vec<Arc<Member>>>>,
    /// Nodes that refused a connection, and when.
    down: Mutex<HashMap<String, Instant>>,
}

impl Fleet {
    pub fn new(token: String) -> Fleet {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_millis(500)));
        // One HTTP/2 connection per node, every request a stream on it; windows large enough
        // that a 6 MiB body is not held back by flow control.
        let client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .http2_initial_stream_window_size(4 << 20)
            .http2_initial_connection_window_size(16 << 20)
            .build(connector);
        Fleet {
            token,
            counted_lost: Mutex::default(),
            reserved: RwLock::default(),
            client,
            view: RwLock::default(),
            down: Mutex::default(),
        }
    }

    /// The live nodes, as of the last refresh.
    pub fn members(&self) -> Arc<Vec<Arc<Member>>> {
        self.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the registrations from the store: nodes heard from within [`LOST_AFTER`] are
    /// live; one that no longer is (or restarted) has its requests in flight ended.
    pub async fn refresh(&self, db: &store::Db) {
        let rows = match store::nodes(db).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!("fleet: cannot read the nodes: {e}");
                return;
            }
        };
        let now = store::now_ms();
        let old = self.members();
        let mut live = Vec::new();
        for row in rows {
            if now - row.last_seen > LOST_AFTER.as_millis() as i64 {
                continue;
            }
            let pools: Vec<PoolReport> = serde_json::from_str(&row.pools).unwrap_or_default();
            let lost = old
                .iter()
                .find(|m| m.id == row.id && m.incarnation == row.incarnation)
                .map_or_else(CancellationToken::new, |m| m.lost.clone());
            live.push(Arc::new(Member {
                id: row.id,
                address: row.address,
                incarnation: row.incarnation,
                capacity: u32::try_from(row.capacity).unwrap_or(0),
                running: u32::try_from(row.running).unwrap_or(0),
                pools,
                lost,
            }));
        }
        for gone in old.iter().filter(|m| {
            !live
                .iter()
                .any(|l| l.id == m.id && l.incarnation == m.incarnation)
        }) {
            tracing::warn!("fleet: node {} ({}) is lost", gone.id, gone.address);
            gone.lost.cancel();
            self.counted_lost
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(gone.id.clone(), gone.incarnation.clone());
        }
        match store::reserved_apps(db).await {
            Ok(apps) => *self.reserved.write().unwrap_or_else(|p| p.into_inner()) = apps,
            Err(e) => tracing::warn!("fleet: cannot read the apps' reserved capacity: {e}"),
        }
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(live);
    }

    /// Refreshes the view every [`REFRESH`] until the token is cancelled.
    pub async fn watch(&self, db: &store::Db, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.refresh(db).await,
            }
        }
    }

    /// A node's heartbeat: its registration is renewed, and it is told what its pools should
    /// be.
    pub async fn heartbeat(&self, state: &State, beat: Heartbeat) -> sqlx::Result<HeartbeatAnswer> {
        let now = store::now_ms();
        let pools = serde_json::to_string(&beat.pools).unwrap_or_else(|_| "[]".into());
        store::upsert_node(
            &state.db,
            &store::NodeRow {
                id: beat.node_id.clone(),
                address: beat.address.clone(),
                incarnation: beat.incarnation.clone(),
                capacity: i64::from(beat.capacity),
                running: i64::from(beat.running),
                pools,
                last_seen: now,
            },
        )
        .await?;
        // This replica counted it lost (no heartbeat for a while) and it is back, the same
        // start: what it runs is stale.
        let rejoined = {
            let mut lost = self.counted_lost.lock().unwrap_or_else(|p| p.into_inner());
            match lost.remove(&beat.node_id) {
                Some(incarnation) => incarnation == beat.incarnation,
                None => false,
            }
        };
        let mut ids: Vec<String> = self.members().iter().map(|m| m.id.clone()).collect();
        if !ids.contains(&beat.node_id) {
            ids.push(beat.node_id.clone());
        }
        let mut routes = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut add = |route: &Route| {
            let key = (route.app.org.clone(), route.app.name.clone());
            if let Some(version) = &route.version
                && seen.insert(key)
            {
                let mut app = route.app.clone();
                app.scaling.reserved_capacity = share(&app, &ids, &beat.node_id);
                routes.push((app, version.clone()));
            }
        };
        for pool in &beat.pools {
            if let Some(route) = state.node.route(&state.db, &pool.org, &pool.app).await? {
                add(&route);
            }
        }
        let reserved = self
            .reserved
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (org, app) in reserved {
            if let Some(route) = state.node.route(&state.db, &org, &app).await?
                && share(&route.app, &ids, &beat.node_id) > 0
            {
                add(&route);
            }
        }
        Ok(HeartbeatAnswer { rejoined, routes })
    }

    /// The nodes to try for a request of `app`'s `version`, best first, each with the app as
    /// that node is to see it (its share of `max_instances` and `reserved_capacity`).
    fn place(&self, app: &App, version: i64) -> Vec<(Arc<Member>, App)> {
        let members = self.members();
        let down = self.down.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let ids: Vec<String> = members.iter().map(|m| m.id.clone()).collect();
        // Each node's instances of this version, by its last report: counted once.
        let counted: Vec<(u32, &Arc<Member>)> = members
            .iter()
            .map(|m| (m.instances_of(&app.org, &app.name, version), m))
            .collect();
        let total: u32 = counted.iter().map(|(here, _)| here).sum();
        let mut ranked: Vec<(bool, bool, u64, u32, Arc<Member>)> = counted
            .into_iter()
            .filter(|(_, m)| down.get(&m.id).is_none_or(|t| t.elapsed() >= DOWN_FOR))
            .map(|(here, m)| {
                let room = m.running < m.capacity;
                (here > 0, room, score(app, &m.id), here, m.clone())
            })
            .collect();
        // Warm first, then with room, then by the app's preference.
        ranked.sort_by_key(|r| std::cmp::Reverse((r.0, r.1, r.2)));
        ranked
            .into_iter()
            .filter_map(|(warm, _, _, here, m)| {
                let elsewhere = total - here;
                let mut seen = app.clone();
                seen.scaling.max_instances = app.scaling.max_instances.saturating_sub(elsewhere);
                seen.scaling.reserved_capacity = share(app, &ids, &m.id);
                // A node that may start none and runs none could only queue for ever.
                (warm || seen.scaling.max_instances > 0).then_some((m, seen))
            })
            .collect()
    }

    /// Runs one request on a node of the fleet.
    pub async fn dispatch(
        &self,
        route: &Route,
        version: &Version,
        execution_id: &str,
        deadline: Instant,
        request: ignite_invocation::HttpRequest,
    ) -> Result<Ran, DispatchError> {
        let mut candidates = self.place(&route.app, version.version);
        if candidates.is_empty() {
            return Err(DispatchError::NoNode);
        }
        let mut dispatch = Dispatch {
            execution_id: execution_id.to_string(),
            app: route.app.clone(),
            version: version.clone(),
            deadline: deadline.saturating_duration_since(Instant::now()),
            request,
        };
        let last = candidates.len() - 1;
        let mut full = None;
        for (i, (member, app)) in candidates.drain(..).enumerate() {
            dispatch.app = app;
            dispatch.deadline = deadline.saturating_duration_since(Instant::now());
            match self.send(&member, &dispatch, deadline).await {
                Ok(Ran::NodeFull { instances }) if i < last => {
                    full = Some(instances);
                    continue;
                }
                Ok(ran) => return Ok(ran),
                Err(Attempt::Unreachable) => {
                    self.mark_down(&member.id);
                    continue;
                }
                Err(Attempt::Broken(why)) => {
                    // Its connection broke under this request (a killed process): the next
                    // requests go elsewhere at once rather than after its heartbeats stop.
                    self.mark_down(&member.id);
                    return Err(DispatchError::Lost {
                        node: member.id.clone(),
                        why,
                    });
                }
                Err(Attempt::Lost(why)) => {
                    return Err(DispatchError::Lost {
                        node: member.id.clone(),
                        why,
                    });
                }
            }
        }
        match full {
            Some(instances) => Ok(Ran::NodeFull { instances }),
            None => Err(DispatchError::NoNode),
        }
    }

    fn mark_down(&self, id: &str) {
        self.down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), Instant::now());
    }

    /// One try of a dispatch on one node.
    async fn send(
        &self,
        member: &Member,
        dispatch: &Dispatch,
        deadline: Instant,
    ) -> Result<Ran, Attempt> {
        let body = postcard::to_stdvec(dispatch)
            .map_err(|e| Attempt::Lost(format!("the request could not be encoded: {e}")))?;
        let request = hyper::Request::post(format!("http://{}{INVOKE_PATH}", member.address))
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .header(hyper::header::CONTENT_TYPE, "application/x-postcard")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Attempt::Lost(format!("the request could not be made: {e}")))?;
        let exchange = async {
            let response = match self.client.request(request).await {
                Ok(r) => r,
                Err(e) if e.is_connect() => return Err(Attempt::Unreachable),
                Err(e) => return Err(Attempt::Broken(format!("its connection failed: {e}"))),
            };
            let status = response.status();
            let bytes = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| Attempt::Broken(format!("its answer was cut off: {e}")))?
                .to_bytes();
            if !status.is_success() {
                return Err(Attempt::Lost(format!(
                    "it refused the request with {status}: {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                )));
            }
            postcard::from_bytes::<Ran>(&bytes)
                .map_err(|e| Attempt::Lost(format!("its answer could not be read: {e}")))
        };
        tokio::select! {
            answer = exchange => answer,
            _ = member.lost.cancelled() => Err(Attempt::Lost(format!(
                "no heartbeat for {} ms", LOST_AFTER.as_millis()
            ))),
            _ = tokio::time::sleep_until((deadline + ANSWER_SLACK).into()) => Err(Attempt::Lost(
                "it did not answer by the app's deadline".into(),
            )),
        }
    }
}

/// `GET /v1/fleet/nodes`: the live nodes as this replica sees them (with the node token: the
/// operator's view, not an org's).
pub async fn nodes_route(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let fleet = match fleet_of(&state, &headers) {
        Ok(f) => f,
        Err(refused) => return refused,
    };
    let nodes: Vec<serde_json::Value> = fleet
        .members()
        .iter()
        .map(|m| {
            serde_json::json!({
                "id": m.id,
                "address": m.address,
                "capacity": m.capacity,
                "running": m.running,
                "pools": m.pools,
            })
        })
        .collect();
    axum::Json(serde_json::json!({ "nodes": nodes })).into_response()
}

/// The fleet, for a caller with the node token; else the answer to give.
#[allow(clippy::result_large_err)]
fn fleet_of(
    state: &State,
    headers: &axum::http::HeaderMap,
) -> Result<Arc<Fleet>, axum::response::Response> {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let Some(fleet) = state.fleet.clone() else {
        return Err(crate::error::ApiError::not_found(
            "this server is not a fleet's control plane (start it with --role control)",
        )
        .into_response());
    };
    let auth = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    if !super::authorized(auth, &fleet.token) {
        return Err(crate::error::ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "the fleet's endpoints need its node token (--node-token), not an org token",
        )
        .into_response());
    }
    Ok(fleet)
}

/// `POST /v1/fleet/heartbeat`: a node's heartbeat, with the fleet's node token.
pub async fn heartbeat_route(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let fleet = match fleet_of(&state, &headers) {
        Ok(f) => f,
        Err(refused) => return refused,
    };
    let beat: Heartbeat = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return crate::error::ApiError::bad_request(format!("the heartbeat is not valid: {e}"))
                .into_response();
        }
    };
    if beat.node_id.is_empty() || beat.node_id.len() > 253 || beat.address.len() > 300 {
        return crate::error::ApiError::bad_request(
            "a heartbeat names its node (1 to 253 characters) and its address",
        )
        .into_response();
    }
    match fleet.heartbeat(&state, beat).await {
        Ok(answer) => axum::Json(answer).into_response(),
        Err(e) => {
            tracing::error!("fleet: recording a heartbeat failed: {e}");
            crate::error::ApiError::internal("the heartbeat could not be recorded; retry")
                .into_response()
        }
    }
}

enum Attempt {
    /// Nothing was sent: another node may take it.
    Unreachable,
    /// The connection broke while the node had it.
    Broken(String),
    /// The node had it and did not answer.
    Lost(String),
}

/// The app's preference for a node (rendezvous hashing): the same on every replica.
fn score(app: &App, node: &str) -> u64 {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(app.org.as_bytes())
        .chain_update([0])
        .chain_update(app.name.as_bytes())
        .chain_update([0])
        .chain_update(node.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The part of `app`'s reserved capacity that `node` holds: spread over `nodes` in the app's
/// order of preference, the first ones taking one more when it does not divide evenly.
fn share(app: &App, nodes: &[String], node: &str) -> u32 {
    let reserved = app.scaling.reserved_capacity;
    if reserved == 0 || nodes.is_empty() {
        return 0;
    }
    let mut ranked: Vec<(u64, &String)> = nodes.iter().map(|n| (score(app, n), n)).collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    let Some(place) = ranked.iter().position(|(_, n)| n.as_str() == node) else {
        return 0;
    };
    let n = ranked.len() as u32;
    reserved / n + u32::from((place as u32) < reserved % n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(reserved: u32) -> App {
        App {
            org: "acme".into(),
            name: "api".into(),
            runtime: "rust".into(),
            description: String::new(),
            env: vec![],
            active_version: Some(1),
            scaling: ignite_api::ScalingConfig {
                reserved_capacity: reserved,
                ..ignite_api::ScalingConfig::default()
            },
            network: ignite_api::NetworkConfig::default(),
            created_at: 0,
        }
    }

    #[test]
    fn reserved_capacity_is_spread_over_the_nodes_and_adds_up() {
        let nodes: Vec<String> = ["n1", "n2", "n3"].iter().map(|s| s.to_string()).collect();
        for reserved in 0..10 {
            let a = app(reserved);
            let shares: Vec<u32> = nodes.iter().map(|n| share(&a, &nodes, n)).collect();
            assert_eq!(shares.iter().sum::<u32>(), reserved, "{shares:?}");
            let (min, max) = (shares.iter().min(), shares.iter().max());
            assert!(max.zip(min).is_some_and(|(a, b)| a - b <= 1), "{shares:?}");
        }
        assert_eq!(share(&app(3), &nodes, "elsewhere"), 0);
    }
}
