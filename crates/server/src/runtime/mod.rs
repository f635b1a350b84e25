//! The seam every runtime plugs into: an [`Instance`] serves requests, a [`Launcher`] starts
//! instances of one version. The node's pools admit, start, lease, drain and stop instances
//! through these two traits and never learn which kind they hold; adding a runtime (an
//! interpreter's template process that forks instances, a container answering HTTP in its
//! network namespace) adds an implementation here and nothing to admission.
//!
//! - [`native`]: a static binary in the sandbox, one process serving `concurrency` requests.
//! - [`wasm`]: a `wasi:http` component; an instance is the app's component made ready to run,
//!   and each request runs in a fresh wasm instance of it (nothing survives between requests).
//! - [`python`]: a fork of the version's template (an interpreter with the app imported), one
//!   process serving `concurrency` requests as asyncio tasks.
//! - [`deno`]: a fresh `deno` process on the version's built tree (its caches made at build
//!   time), one process serving `concurrency` requests as promises.
//! - [`image`]: a container image's entrypoint on its unpacked root, serving HTTP on `$PORT`
//!   inside its network namespace; requests are forwarded to it.

pub mod deno;
pub mod image;
pub mod native;
pub mod python;
pub mod wasm;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ignite_agent::{Invocation, Reply};

use native::NativeLauncher;
use wasm::WasmLauncher;

/// The runtimes an app may have.
pub const RUNTIMES: &[&str] = &["rust", "python", "go", "deno", "image"];

/// `--runtime rust`, `--runtime python` or ….
pub fn runtimes_list() -> String {
    RUNTIMES
        .iter()
        .map(|r| format!("`--runtime {r}`"))
        .collect::<Vec<_>>()
        .join(" or ")
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How an instance came to be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StartKind {
    /// A new process exec'd the handler (a native binary; an unconfined interpreter).
    #[default]
    Exec,
    /// A template forked it (Python): `spawn` is the fork.
    Fork,
    /// A wasm instance of the component.
    Component,
}

impl StartKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StartKind::Exec => "exec",
            StartKind::Fork => "fork",
            StartKind::Component => "component",
        }
    }
}

/// Where a cold start's time went.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct ColdStart {
    /// Finding the artifact on the node, or pulling it from the platform registry first.
    pub fetch: Duration,
    /// Starting the version's template first, when it was not running (Python); else zero.
    pub template: Duration,
    /// Unpacking the image's root first, when the node had not (image mode); else zero.
    pub unpack: Duration,
    /// Creating the process (a fork of the template, or the wasm instance).
    pub spawn: Duration,
    /// From spawn to ready (the SDK's `Hello`).
    pub init: Duration,
    pub kind: StartKind,
}

impl ColdStart {
    pub fn total(&self) -> Duration {
        self.fetch + self.template + self.unpack + self.spawn.max(self.init)
    }
}

/// How one request on an instance ended.
pub struct Invoked {
    pub reply: Reply,
    /// A start that this request paid for itself: runtimes that make a fresh instance per
    /// request (wasm) report it here; `None` for a request served by a running instance.
    pub start: Option<ColdStart>,
}

/// A running instance of some runtime, shared by the requests in flight on it.
pub trait Instance: Send + Sync + 'static {
    /// Runs one request (the instance may be serving others, up to the app's concurrency).
    fn invoke(&self, invocation: Invocation) -> BoxFuture<'_, Invoked>;
    /// Whether it can take another request, as far as the requests it served tell.
    fn is_alive(&self) -> bool;
    /// Whether it has ended, asking the kernel: for an instance that sat idle a while.
    fn has_exited(&self) -> bool;
    /// Stops it: at once when nothing is in flight, else after `grace` at most.
    fn shutdown(&self, grace: Duration) -> BoxFuture<'_, ()>;
}

/// What the current settings ask of an instance about to start.
#[derive(Debug, Clone, Copy)]
pub struct StartSettings {
    pub memory_mb: u32,
    /// Internet access (the pool was made for one value; a change makes a new pool).
    pub egress: bool,
    /// The app's deadline (`timeout_s`): an image's server that does not listen within it
    /// fails its start (the request waiting for it would time out anyway).
    pub deadline: Duration,
}

impl StartSettings {
    /// What the sandbox is asked for an instance started with these settings.
    pub fn limits(&self) -> ignite_sandbox::Limits {
        ignite_sandbox::Limits {
            memory_mb: u64::from(self.memory_mb),
            egress: self.egress,
        }
    }
}

/// Why an instance did not start, with what it logged meanwhile.
#[derive(Debug)]
pub struct StartError {
    pub message: String,
    pub logs: Vec<String>,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A started instance and where its start's time went.
pub type Started = Result<(Arc<dyn Instance>, ColdStart), StartError>;

/// Starts instances of one version of one app.
pub trait Launcher: Send + Sync + 'static {
    fn start(&self, settings: StartSettings) -> BoxFuture<'_, Started>;
    /// Makes ahead of need what a first start would otherwise make (Python: the template), so
    /// that the first request after a publish pays only a fork. Nothing by default.
    fn prepare(&self, _settings: StartSettings) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// One sandbox kept ready for a launcher's next instance (Deno's: its binds — the binary, its
/// libraries, the tree — mounted; an image's: its root) and its cgroups joined: making one on the spot costs ~1–10 ms (a cgroup
/// join waits for an RCU grace period), handing one its program ~0.05 ms. Made after each start,
/// once that instance is ready, and dropped (the parked process killed) with the launcher.
/// (`T`: the prepared sandbox, with whatever must live as long as it — an image's root lease.)
pub struct Spare<T = ignite_sandbox::Prepared> {
    ready: Arc<Mutex<Option<T>>>,
    making: Arc<std::sync::atomic::AtomicBool>,
}

impl<T> Default for Spare<T> {
    fn default() -> Spare<T> {
        Spare {
            ready: Arc::new(Mutex::new(None)),
            making: Arc::default(),
        }
    }
}

impl<T: Send + 'static> Spare<T> {
    pub(crate) fn take(&self) -> Option<T> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Makes the next one in the background with `make`, unless one is there or being made.
    pub(crate) fn refill(
        &self,
        make: impl FnOnce() -> Result<T, ignite_sandbox::SpawnError> + Send + 'static,
    ) {
        use std::sync::atomic::Ordering;
        if self
            .ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
            || self.making.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let (ready, making) = (self.ready.clone(), self.making.clone());
        tokio::task::spawn_blocking(move || {
            match make() {
                Ok(p) => *ready.lock().unwrap_or_else(|p| p.into_inner()) = Some(p),
                Err(e) => tracing::debug!("could not prepare an instance's sandbox: {e}"),
            }
            making.store(false, Ordering::Release);
        });
    }
}

/// How instances of `version` start: its artifact's runtime decides.
pub fn launcher(
    state: &crate::State,
    org: &str,
    app: &str,
    version: &crate::store::Version,
) -> Box<dyn Launcher> {
    let digest = version.artifact_digest.clone().unwrap_or_default();
    let blobs = state.blobs.clone();
    let env = || {
        version
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    if version.runtime == "python"
        && let Some(python) = &state.python
    {
        return Box::new(python::PythonLauncher {
            runtime: python.clone(),
            templates: state.templates.clone(),
            version: format!("{org}/{app}/{}", version.version),
            tree: state
                .config
                .data_dir
                .join("apps")
                .join(digest.trim_start_matches("sha256:")),
            blobs,
            digest,
            env: env(),
            sandbox: state.sandbox.clone(),
        });
    }
    if version.runtime == "deno"
        && let Some(deno) = &state.deno
    {
        return Box::new(deno::DenoLauncher {
            runtime: deno.clone(),
            version: format!("{org}/{app}/{}", version.version),
            tree: state
                .config
                .data_dir
                .join("apps")
                .join(digest.trim_start_matches("sha256:")),
            blobs,
            digest,
            env: env(),
            sandbox: state.sandbox.clone(),
            spare: Spare::default(),
        });
    }
    if version.runtime == "image" {
        return Box::new(image::ImageLauncher {
            digest,
            app: app.to_string(),
            version: version.version,
            blobs,
            roots: state.roots.clone(),
            env: env(),
            sandbox: state.sandbox.clone(),
            spare: Spare::default(),
        });
    }
    if version.artifact_target.as_deref() == Some(ignite_builder::WASM_TARGET) {
        Box::new(WasmLauncher {
            host: state.wasm.clone(),
            digest,
            blobs,
            sandbox: state.sandbox.clone(),
        })
    } else {
        let mut env: Vec<(String, String)> = env();
        // Go's runtime on one processor, like the Rust SDK's single-threaded runtime (faster
        // warm round trips, and the SDK skips setting it at start), unless the app says.
        if version.runtime == "go" && !env.iter().any(|(k, _)| k == "GOMAXPROCS") {
            env.push(("GOMAXPROCS".into(), "1".into()));
        }
        Box::new(NativeLauncher {
            blobs,
            digest,
            env,
            sandbox: state.sandbox.clone(),
        })
    }
}

/// The artifact `digest` on this node (fetched from the platform registry first if the node
/// lacks it): the fetch phase of every launcher's start.
pub(crate) async fn fetched(
    blobs: &crate::blobs::Blobs,
    digest: &str,
) -> Result<std::path::PathBuf, StartError> {
    blobs.ensure(digest).await.map_err(|e| StartError {
        message: e.to_string(),
        logs: Vec::new(),
    })
}

/// An app tree's artifact (`digest`, a tar) unpacked at `tree` on this node, fetching and
/// unpacking it first if it is not (`marker`, a file of the tree, says it is); concurrent
/// starts unpack once.
pub(crate) async fn unpacked(
    blobs: &crate::blobs::Blobs,
    digest: &str,
    tree: &std::path::Path,
    marker: &str,
) -> Result<std::path::PathBuf, StartError> {
    if tree.join(marker).exists() {
        return Ok(tree.to_path_buf());
    }
    let blob = fetched(blobs, digest).await?;
    let (tree, marker) = (tree.to_path_buf(), marker.to_string());
    let what = blob.display().to_string();
    let unpacked = tree.clone();
    tokio::task::spawn_blocking(move || {
        let partial = tree.with_extension(format!("partial-{}", ulid::Ulid::new()));
        ignite_builder::oci::unpack_app(&blob, &partial)?;
        match std::fs::rename(&partial, &tree) {
            Ok(()) => Ok(()),
            // Another start unpacked it meanwhile.
            Err(_) if tree.join(&marker).exists() => {
                let _ = std::fs::remove_dir_all(&partial);
                Ok(())
            }
            Err(e) => Err(e),
        }
    })
    .await
    .map_err(|e| StartError {
        message: format!("unpacking the app: {e}"),
        logs: Vec::new(),
    })?
    .map_err(|e| StartError {
        message: format!("unpacking the app {what}: {e}"),
        logs: Vec::new(),
    })?;
    Ok(unpacked)
}
