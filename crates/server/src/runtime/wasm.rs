//! Wasm instances: a `wasi:http` component run by the node's Wasmtime (`ignite-wasm`).
//!
//! How the app's scaling maps: an instance in the pool is the app's component made ready to
//! run (its precompiled artifact found and, with internet access, the egress runtime
//! prepared); every request runs in a **fresh wasm instance** of it, so nothing survives
//! between requests and each request's own start (loading, the first time on this node, and
//! instantiating) is its cold start. `max_instances × concurrency` requests run at once and the
//! rest queue (`queue_depth`, 429 past it), as for native; `reserved_capacity` keeps instances
//! ready and `idle_timeout_s` lets them go, which costs nothing to keep either way.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ignite_agent::Invocation;
use ignite_sandbox::Sandbox;
use ignite_wasm::{WasmHost, WasmLimits};

use super::{
    BoxFuture, ColdStart, Instance, Invoked, Launcher, StartError, StartSettings, Started,
};

pub struct WasmInstance {
    host: Arc<WasmHost>,
    digest: String,
    blob: PathBuf,
    settings: StartSettings,
}

impl Instance for WasmInstance {
    fn invoke(&self, invocation: Invocation) -> BoxFuture<'_, Invoked> {
        Box::pin(async move {
            let timeout = invocation.deadline.map_or(Duration::from_secs(30), |d| {
                d.saturating_duration_since(Instant::now())
            });
            let limits = WasmLimits {
                memory_mb: u64::from(self.settings.memory_mb),
                timeout,
                egress: self.settings.egress,
            };
            let (reply, start) = self
                .host
                .invoke(&self.digest, &self.blob, limits, invocation)
                .await;
            Invoked {
                reply,
                start: Some(ColdStart {
                    fetch: start.load,
                    spawn: start.instantiate,
                    init: Duration::ZERO,
                    template: Duration::ZERO,
                    kind: super::StartKind::Component,
                    ..ColdStart::default()
                }),
            }
        })
    }

    fn is_alive(&self) -> bool {
        true
    }

    fn has_exited(&self) -> bool {
        false
    }

    fn shutdown(&self, _grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Makes one version's component ready to run.
pub struct WasmLauncher {
    /// `None` when Wasmtime could not start on this host.
    pub host: Option<Arc<WasmHost>>,
    pub digest: String,
    pub blobs: Arc<crate::blobs::Blobs>,
    pub sandbox: Option<Sandbox>,
}

impl Launcher for WasmLauncher {
    fn start(&self, settings: StartSettings) -> BoxFuture<'_, Started> {
        Box::pin(async move {
            let failed = |message: String| StartError {
                message,
                logs: Vec::new(),
            };
            let Some(host) = self.host.clone() else {
                return Err(failed(
                    "this server cannot run wasm handlers (Wasmtime did not start; see its log)"
                        .into(),
                ));
            };
            let t0 = Instant::now();
            // Finding the component on this node, or pulling it from the platform registry.
            let blob = super::fetched(&self.blobs, &self.digest).await?;
            if settings.egress && !host.egress_enabled() {
                enable_egress(&host, self.sandbox.clone())
                    .await
                    .map_err(|e| failed(format!("internet access could not be prepared: {e}")))?;
            }
            let instance = WasmInstance {
                host,
                digest: self.digest.clone(),
                blob,
                settings,
            };
            let cold = ColdStart {
                fetch: t0.elapsed(),
                kind: super::StartKind::Component,
                ..ColdStart::default()
            };
            Ok((Arc::new(instance) as Arc<dyn Instance>, cold))
        })
    }
}

/// Gives components outgoing HTTP: from one of the sandbox's egress namespaces (the instances'
/// filter), or the server's own network without the sandbox.
async fn enable_egress(host: &WasmHost, sandbox: Option<Sandbox>) -> std::io::Result<()> {
    let netns = tokio::task::spawn_blocking(move || sandbox.map(|s| s.egress_netns()).transpose())
        .await
        .map_err(std::io::Error::other)??;
    host.enable_egress(netns)
}
