//! A node's side of the fleet: the listener the gateway's requests arrive on (HTTP/2, each
//! request authenticated with the node token; `GET /healthz` over HTTP/1.1 too, for probes), the heartbeat that registers the node and
//! tells it what its pools should be, and that desired state, which the node's reconcile loop
//! works from instead of a store.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::wire::{Dispatch, HEARTBEAT_PATH, Heartbeat, HeartbeatAnswer, INVOKE_PATH, Ran};
use super::{HEARTBEAT, authorized};
use crate::State;
use crate::node::{AppKey, Route};

/// The most a dispatch may be: a 6 MiB request body and what describes it.
const MAX_DISPATCH: usize = 8 << 20;

/// This process as a node of a fleet.
pub struct NodeRole {
    pub id: String,
    /// Where the control plane reaches it.
    pub address: String,
    incarnation: String,
    token: String,
    controls: Vec<String>,
    client: Client<HttpConnector, Full<Bytes>>,
    /// What the pools should be: the app (with this node's shares) and its active version,
    /// from the last dispatch or heartbeat answer that named it.
    desired: Mutex<HashMap<AppKey, Arc<Route>>>,
}

impl NodeRole {
    pub fn new(id: String, address: String, token: String, controls: Vec<String>) -> NodeRole {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_millis(500)));
        NodeRole {
            id,
            address,
            incarnation: ulid::Ulid::new().to_string(),
            token,
            controls,
            client: Client::builder(TokioExecutor::new()).build(connector),
            desired: Mutex::default(),
        }
    }

    /// What the node's reconcile loop keeps: app → (active version, route).
    pub fn wanted(&self) -> HashMap<AppKey, (i64, Arc<Route>)> {
        self.desired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(|(k, r)| Some((k.clone(), (r.version.as_ref()?.version, r.clone()))))
            .collect()
    }

    fn want(&self, route: Arc<Route>) {
        let key = (route.app.org.clone(), route.app.name.clone());
        self.desired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, route);
    }

    /// One heartbeat, to the first control URL that answers.
    async fn beat(
        &self,
        state: &State,
        running: u32,
        pools: Vec<super::wire::PoolReport>,
    ) -> Result<HeartbeatAnswer, String> {
        let beat = Heartbeat {
            node_id: self.id.clone(),
            address: self.address.clone(),
            incarnation: self.incarnation.clone(),
            capacity: state.node.limits.node_instances,
            running,
            pools,
        };
        let body = serde_json::to_vec(&beat).map_err(|e| e.to_string())?;
        let mut errors = Vec::new();
        for control in &self.controls {
            let url = format!("{}{HEARTBEAT_PATH}", control.trim_end_matches('/'));
            let request = hyper::Request::post(&url)
                .header(
                    hyper::header::AUTHORIZATION,
                    format!("Bearer {}", self.token),
                )
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body.clone())))
                .map_err(|e| e.to_string())?;
            let answer = async {
                let response = self
                    .client
                    .request(request)
                    .await
                    .map_err(|e| e.to_string())?;
                let status = response.status();
                let bytes = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes();
                if !status.is_success() {
                    return Err(format!(
                        "{status}: {}",
                        String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
                    ));
                }
                serde_json::from_slice::<HeartbeatAnswer>(&bytes).map_err(|e| e.to_string())
            };
            match tokio::time::timeout(HEARTBEAT * 4, answer).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(e)) => errors.push(format!("{url}: {e}")),
                Err(_) => errors.push(format!("{url}: no answer")),
            }
        }
        Err(errors.join("; "))
    }

    /// What a heartbeat's answer says the pools should be.
    fn apply(&self, reported: &[AppKey], answer: HeartbeatAnswer) {
        let mut desired = self.desired.lock().unwrap_or_else(|p| p.into_inner());
        if answer.rejoined {
            // Counted lost meanwhile: its requests were answered `node_lost` elsewhere. What
            // runs here is stale; every pool drains and the next request starts afresh.
            tracing::warn!("rejoined the fleet after being counted lost: draining every pool");
            // The next reconcile finds no pool wanted and drains them all.
            desired.clear();
            return;
        }
        let named: std::collections::HashSet<AppKey> = answer
            .routes
            .iter()
            .map(|(a, _)| (a.org.clone(), a.name.clone()))
            .collect();
        for key in reported {
            if !named.contains(key) {
                desired.remove(key);
            }
        }
        for (app, version) in answer.routes {
            let key = (app.org.clone(), app.name.clone());
            desired.insert(
                key,
                Arc::new(Route {
                    app,
                    version: Some(version),
                }),
            );
        }
    }

    /// Heartbeats every [`HEARTBEAT`] until the token is cancelled.
    pub async fn heartbeat(&self, state: &State, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing_since: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            // One look at the pools: what the heartbeat reports is what its answer is applied to.
            let (running, pools) = state.node.report();
            let reported: Vec<AppKey> = pools
                .iter()
                .map(|p| (p.org.clone(), p.app.clone()))
                .collect();
            let began = Instant::now();
            let beat = self.beat(state, running, pools).await;
            let took = began.elapsed();
            if took > super::LOST_AFTER / 2 {
                tracing::warn!(
                    "a heartbeat took {} ms (the control plane counts a node lost after {} ms)",
                    took.as_millis(),
                    super::LOST_AFTER.as_millis()
                );
            }
            match beat {
                Ok(answer) => {
                    if failing_since.take().is_some() {
                        tracing::info!("the control plane answers heartbeats again");
                    }
                    self.apply(&reported, answer);
                }
                Err(e) => {
                    if failing_since.is_none() {
                        tracing::warn!("heartbeat failed: {e}");
                        failing_since = Some(Instant::now());
                    }
                }
            }
        }
    }
}

/// Serves the node listener until `shutdown`, then waits for the requests in flight.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(INVOKE_PATH, post(invoke))
        .with_state(state);
    let tracker = TaskTracker::new();
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("node listener: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            // HTTP/2 for the gateway (prior knowledge), HTTP/1.1 for a probe's `GET /healthz`.
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http2()
                .initial_stream_window_size(4 << 20)
                .initial_connection_window_size(16 << 20)
                .max_concurrent_streams(4096);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// `POST /v1/node/invoke`: one request from the gateway, run on this node's instances.
async fn invoke(AxState(state): AxState<Arc<State>>, headers: HeaderMap, body: Body) -> Response {
    let Some(role) = state.fleet_node.clone() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let auth = headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    if !authorized(auth, &role.token) {
        return (
            StatusCode::UNAUTHORIZED,
            "this node takes requests only with the fleet's node token",
        )
            .into_response();
    }
    let bytes = match http_body_util::Limited::new(body, MAX_DISPATCH)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return (StatusCode::PAYLOAD_TOO_LARGE, format!("the dispatch: {e}")).into_response();
        }
    };
    let dispatch: Dispatch = match postcard::from_bytes(&bytes) {
        Ok(d) => d,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("the dispatch could not be read: {e}"),
            )
                .into_response();
        }
    };
    // In a task of its own: a control replica that goes away mid-request (its stream reset
    // drops this handler) must not leak the instance the request holds.
    let task = tokio::spawn(async move {
        let deadline = Instant::now() + dispatch.deadline;
        let route = Arc::new(Route {
            app: dispatch.app,
            version: Some(dispatch.version),
        });
        role.want(route.clone());
        let Some(version) = route.version.as_ref() else {
            return Ran::Stopping;
        };
        let invocation = crate::invoke::invocation(
            &dispatch.execution_id,
            &route.app,
            version,
            deadline,
            dispatch.request,
        );
        crate::invoke::run_here(&state, &route, version, invocation, deadline, |_, _| {}).await
    });
    let ran = match task.await {
        Ok(ran) => ran,
        Err(e) => Ran::StartFailed {
            message: format!("the request failed inside the node: {e}"),
            logs: vec![],
        },
    };
    match postcard::to_stdvec(&ran) {
        Ok(bytes) => Response::new(Body::from(bytes)),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the answer could not be encoded: {e}"),
        )
            .into_response(),
    }
}

/// Where the node listens, resolved.
pub fn listen_address(settings: &super::FleetSettings) -> SocketAddr {
    settings
        .node_listen
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 7070)))
}
