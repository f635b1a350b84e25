//! The Ignite control plane in one process: the HTTP+JSON API, the store, the builder's job
//! queue, a node agent and the public gateway.
//!
//! [`run`] binds the API and gateway listeners, reports the addresses it bound, and serves until
//! the shutdown token fires. It must never let one org see another's objects: every query is
//! scoped by the org of the caller's token, and a foreign object answers as a missing one.

mod auth;
pub mod blobs;
mod builds;
mod console;
mod error;
pub mod fleet;
mod gateway;
pub mod images;
mod invoke;
mod journal;
pub mod limits;
mod metrics;
mod node;
mod recorder;
mod routes;
mod runtime;
mod secrets;
mod serve;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use auth::{hash_secret, mint_token};
pub use routes::openapi;

/// How to run the server.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// The store: `postgres://…` (several control replicas may share it) or `sqlite://<path>`;
    /// `None` is SQLite at `<data-dir>/ignite.db`.
    pub database_url: Option<String>,
    /// This replica's name among those sharing a store (`None`: the one kept in
    /// `<data-dir>/replica-id`, made at first start). What a replica leaves unfinished when it
    /// stops — executions it was running, builds it held — is told apart by it.
    pub replica_id: Option<String>,
    /// The org created on first start.
    pub org: String,
    pub api_addr: SocketAddr,
    pub gateway_addr: SocketAddr,
    /// Public URLs are `http://<app>-<org>.ignite.<domain>[:port]`.
    pub domain: String,
    /// The port shown in public URLs (the gateway's own when `None`).
    pub public_port: Option<u16>,
    /// The compile budget.
    pub build_timeout: Duration,
    /// A cargo target directory shared by each org's apps (`<dir>/<org>`) instead of one per
    /// app (tests share one); never shared across orgs.
    pub shared_target_dir: Option<PathBuf>,
    /// Run every instance in the sandbox and every compile in the build jail (see
    /// `ignite-sandbox`). Off only by explicit choice.
    pub sandbox: bool,
    /// Sandboxed instances kept prepared ahead of need (a burst of cold starts beyond it
    /// prepares the rest on the spot, ~1 ms each).
    pub sandbox_spare: usize,
    /// A compile's memory limit.
    pub build_memory_mb: u64,
    /// How much a compile may write.
    pub build_disk_mb: u64,
    /// The interpreter of Python apps.
    pub python: PathBuf,
    /// The toolchain of Go apps.
    pub go: PathBuf,
    /// The Deno binary of Deno apps (`None`: where `.ci/run` installs it, see
    /// `ignite_builder::deno::DEFAULT_BINARIES`).
    pub deno: Option<PathBuf>,
    /// What the Python templates may hold together (derived from the machine when `None`).
    pub template_memory_mb: Option<u64>,
    /// The node's instance budget and the most one app may ask for (derived from the machine
    /// where not set).
    pub limits: limits::LimitSettings,
    /// Image mode: allowed registries and git hosts, the unpacked roots' disk budget.
    pub images: images::ImageSettings,
    /// The role in a fleet (everything, by default) and what it needs.
    pub fleet: fleet::FleetSettings,
    /// The platform registry every replica and node shares blobs through (`--registry`);
    /// `None`: this machine's layout alone, no network.
    pub registry: Option<blobs::RegistrySettings>,
}

/// What the server tells its caller once it is listening.
#[derive(Debug, Clone)]
pub struct Started {
    pub api_addr: SocketAddr,
    pub gateway_addr: SocketAddr,
    /// The admin token, when this start created the org (shown once).
    pub admin_token: Option<String>,
    /// What confines the instances.
    pub sandbox: String,
    /// The node's budgets, as resolved.
    pub limits: limits::Limits,
    /// What the operator should know before the first compile (a missing target, say).
    pub warnings: Vec<String>,
    /// A fleet's node: where the gateway's requests arrive (`api_addr` and `gateway_addr`
    /// are then this too: a node serves neither).
    pub node_addr: Option<SocketAddr>,
}

pub(crate) struct State {
    pub db: store::Db,
    /// This replica's id (see `Config::replica_id`).
    pub replica: String,
    /// Sources, artifacts and images: the data directory's OCI layout, and the platform
    /// registry behind it when there is one.
    pub blobs: Arc<blobs::Blobs>,
    pub config: Config,
    pub gateway_port: u16,
    pub builds: builds::Builds,
    pub node: node::Node,
    pub recorder: recorder::Recorder,
    /// Instances and compiles run in it, unless the operator turned it off.
    pub sandbox: Option<ignite_sandbox::Sandbox>,
    /// The dependency fetch's only way out (with the sandbox).
    pub registry_proxy: Option<ignite_builder::RegistryProxy>,
    /// Runs `--rust-target wasm` handlers; `None` if Wasmtime could not start on this host.
    pub wasm: Option<Arc<ignite_wasm::WasmHost>>,
    /// The SDK's source digest, for the build cache (none if the sources cannot be read).
    pub sdk_fingerprint: Option<String>,
    /// The node's Python; `None` when the interpreter could not be used (Python apps then
    /// refuse to build, saying why).
    pub python: Option<Arc<runtime::python::PythonRuntime>>,
    /// Why `python` is `None`.
    pub python_problem: Option<String>,
    pub templates: Arc<runtime::python::Templates>,
    /// `pip`'s only way out (with the sandbox): the package index, nothing else.
    pub python_proxy: Option<ignite_builder::RegistryProxy>,
    /// Go's module downloads' only way out (with the sandbox): the Go module proxy.
    pub go_proxy: Option<ignite_builder::RegistryProxy>,
    /// The node's Deno; `None` when there is none (Deno apps then refuse to build, saying why).
    pub deno: Option<Arc<runtime::deno::DenoRuntime>>,
    /// Why `deno` is `None`.
    pub deno_problem: Option<String>,
    /// `deno install`'s only way out (with the sandbox): JSR, npm and deno.land.
    pub deno_proxy: Option<ignite_builder::RegistryProxy>,
    /// The node's unpacked image roots, within the operator's disk budget.
    pub roots: ignite_image::RootCache,
    /// The server's own pulls' only way out: the allowed registries (and their blob stores),
    /// whatever a registry redirects to.
    pub image_proxy: ignite_builder::LoopbackProxy,
    /// Seals what the server must read back (registry passwords).
    pub secrets: secrets::SecretBox,
    /// A control replica's fleet: its nodes, placement and dispatch (`--role control`).
    pub fleet: Option<Arc<fleet::control::Fleet>>,
    /// This process as a fleet's node (`--role node`).
    pub fleet_node: Option<Arc<fleet::node::NodeRole>>,
}

impl State {
    /// `<app>-<org>.ignite.<domain>`.
    pub fn public_host(&self, org: &str, app: &str) -> String {
        format!(
            "{}.ignite.{}",
            store::hostname_label(org, app),
            self.config.domain
        )
    }

    /// What a control replica's maintenance is: long-running requests' records written every
    /// tick (its instances run on nodes).
    async fn recorder_loop(&self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(node::TICK);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.recorder.flush_running(Some(store::now_ms() - 500)),
            }
        }
    }

    pub fn public_url(&self, org: &str, app: &str) -> String {
        let port = self.config.public_port.unwrap_or(self.gateway_port);
        let host = self.public_host(org, app);
        if port == 80 {
            format!("http://{host}")
        } else {
            format!("http://{host}:{port}")
        }
    }
}

/// The soft open-files limit, raised to the hard limit first: every instance holds a few of
/// the server's descriptors.
fn open_files_limit() -> u64 {
    match ignite_sandbox::raise_nofile_limit() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!("could not raise the open-files limit: {e}");
            1024
        }
    }
}

/// Runs the platform until `shutdown` is cancelled. `started` hears the bound addresses.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    started: impl FnOnce(Started),
) -> anyhow::Result<()> {
    config.fleet.check().map_err(|e| anyhow::anyhow!(e))?;
    let role = config.fleet.role;
    std::fs::create_dir_all(config.data_dir.join("builds"))?;
    // A platform registry that is misspelt or down fails the start, not the first save.
    let registry = match &config.registry {
        Some(settings) => {
            let registry = settings.registry().map_err(anyhow::Error::msg)?;
            registry.check().await.map_err(|e| {
                anyhow::anyhow!(
                    "the platform registry {} does not answer: {e}; start it, or fix \
                     --registry (IGNITE_REGISTRY)",
                    registry.url()
                )
            })?;
            Some(registry)
        }
        None => None,
    };
    // Finding the interpreter's files runs ldd over its extension modules (~0.3 s): beside the
    // rest of the start, not before it.
    let python_found = {
        let (python, sdk) = (config.python.clone(), python_sdk_dir());
        tokio::task::spawn_blocking(move || runtime::python::PythonRuntime::detect(&python, &sdk))
    };
    // Before the sandbox's threads and zygotes start: they inherit it.
    let open_files = open_files_limit();
    let sandbox = if config.sandbox {
        let mut sandbox_config =
            ignite_sandbox::SandboxConfig::new(config.data_dir.join("sandbox"));
        sandbox_config.spare_zygotes = config.sandbox_spare;
        sandbox_config.spare_netns = config.sandbox_spare * 2;
        let sandbox = ignite_sandbox::Sandbox::new(sandbox_config)?;
        Some(sandbox)
    } else {
        None
    };
    // With the sandbox, the dependency fetch reaches crates.io through this proxy and nothing
    // else; the socket is only for the server's own fetches.
    let registry_proxy = match &sandbox {
        Some(_) => Some(ignite_builder::RegistryProxy::start(
            &config.data_dir.join("sandbox/registry-proxy.sock"),
            ignite_builder::CRATES_IO,
        )?),
        None => None,
    };
    let python_proxy = match &sandbox {
        Some(_) => Some(ignite_builder::RegistryProxy::start(
            &config.data_dir.join("sandbox/python-proxy.sock"),
            ignite_builder::PYPI,
        )?),
        None => None,
    };
    let go_proxy = match &sandbox {
        Some(_) => Some(ignite_builder::RegistryProxy::start(
            &config.data_dir.join("sandbox/go-proxy.sock"),
            ignite_builder::GO_PROXY,
        )?),
        None => None,
    };
    let deno_proxy = match &sandbox {
        Some(_) => Some(ignite_builder::RegistryProxy::start(
            &config.data_dir.join("sandbox/deno-proxy.sock"),
            ignite_builder::DENO,
        )?),
        None => None,
    };
    let (deno, deno_problem) =
        match runtime::deno::DenoRuntime::detect(config.deno.as_deref(), &deno_sdk_dir()).await {
            Ok(d) => (Some(Arc::new(d)), None),
            Err(e) => {
                tracing::warn!("Deno apps are unavailable: {e}");
                (None, Some(e.to_string()))
            }
        };
    let template_budget = config
        .template_memory_mb
        .unwrap_or_else(|| (limits::Machine::read(open_files).memory_mb / 8).min(4096));
    let wasm = match ignite_wasm::WasmHost::new(&ignite_wasm::WasmConfig::new(
        config.data_dir.join("wasm-cache"),
    )) {
        Ok(host) => Some(Arc::new(host)),
        Err(e) => {
            tracing::warn!("wasm handlers are unavailable: {e}");
            None
        }
    };
    let limits =
        limits::Limits::for_machine(limits::Machine::read(open_files)).with(&config.limits);
    let sandbox_line = match &sandbox {
        Some(s) => s.describe(),
        None => "OFF (--no-sandbox): handlers run unconfined, with the server's privileges".into(),
    };
    // The data directory is itself an OCI image layout: sources and artifacts are its blobs.
    let oci = ignite_builder::oci::OciLayout::open(&config.data_dir)?;
    let blobs = Arc::new(blobs::Blobs::new(
        oci,
        registry,
        blobs::max_blob_bytes(config.build_disk_mb),
        config.images.cache_mb << 20,
    ));
    let db = store::open(&config.data_dir, config.database_url.as_deref()).await?;
    let replica = replica_id(&config)?;
    // Subscribed before anything is served: a change another replica makes from here on is
    // heard.
    let app_changes = store::AppChanges::listen(&db)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for app changes on PostgreSQL: {e}"))?;
    let secrets = secrets::SecretBox::open(&config.data_dir)?;
    let image_proxy = ignite_builder::LoopbackProxy::start(&config.images.proxy_allow_list())
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the image pulls' registry proxy: {e}"))?;
    let roots =
        ignite_image::RootCache::new(config.data_dir.join("images"), config.images.cache_mb << 20);
    store::fail_interrupted_builds(&db, &replica).await?;
    // Records an earlier run answered (or began) but had not written yet: a crash keeps them
    // in the journal; the store gets them before anything else happens.
    let journal_dir = config.data_dir.join("journal");
    let left = journal::replay(&journal_dir)?;
    if !left.is_empty() {
        tracing::info!("writing {} execution records from the journal", left.len());
        for chunk in left.chunks(1024) {
            store::upsert_executions(&db, &replica, chunk).await?;
        }
    }
    let journal = journal::Journal::open(&journal_dir)?;
    store::fail_interrupted_executions(&db, &replica).await?;
    // A node keeps no platform state: its store holds nothing (the control plane's does).
    let admin_token = if role == fleet::Role::Node
        || store::org_exists(&db, &config.org).await?
        || !store::create_org(&db, &config.org).await?
    {
        None
    } else {
        let (id, secret, token) =
            mint_token().map_err(|e| anyhow::anyhow!("cannot mint the admin token: {e}"))?;
        store::insert_token(&db, &id, &config.org, "admin", &hash_secret(&secret)).await?;
        Some(token)
    };

    // A node serves the gateway's requests on its node listener and nothing else; the rest
    // serve the API and the gateway.
    let (listeners, node_listener) = match role {
        fleet::Role::Node => {
            let at = fleet::node::listen_address(&config.fleet);
            let listener = TcpListener::bind(at)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on --node-listen {at}: {e}"))?;
            (None, Some(listener))
        }
        _ => (
            Some((
                TcpListener::bind(config.api_addr).await?,
                TcpListener::bind(config.gateway_addr).await?,
            )),
            None,
        ),
    };
    let node_addr = node_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let (api_addr, gateway_addr) = match (&listeners, node_addr) {
        (Some((api, gateway)), _) => (api.local_addr()?, gateway.local_addr()?),
        (None, Some(node)) => (node, node),
        (None, None) => unreachable!("a role serves one listener or the other"),
    };
    let fleet_node = match (role, node_addr) {
        (fleet::Role::Node, Some(at)) => Some(Arc::new(fleet::node::NodeRole::new(
            config.fleet.node_id(),
            config
                .fleet
                .advertise
                .clone()
                .unwrap_or_else(|| at.to_string()),
            config.fleet.node_token.clone().unwrap_or_default(),
            config.fleet.control_urls.clone(),
        ))),
        _ => None,
    };
    let fleet = (role == fleet::Role::Control).then(|| {
        Arc::new(fleet::control::Fleet::new(
            config.fleet.node_token.clone().unwrap_or_default(),
        ))
    });
    let (recorder, records) = recorder::Recorder::new(journal);
    let sdk_fingerprint = ignite_builder::Sdk::bundled()
        .fingerprint()
        .inspect_err(|e| tracing::warn!("the build cache is off: cannot read the SDK sources: {e}"))
        .ok();
    let (python, python_problem) = match python_found
        .await
        .map_err(anyhow::Error::from)
        .and_then(|found| found)
    {
        Ok(p) => (Some(Arc::new(p)), None),
        Err(e) => {
            tracing::warn!("Python apps are unavailable: {e}");
            (None, Some(e.to_string()))
        }
    };
    let state = Arc::new(State {
        db,
        replica,
        blobs,
        recorder,
        sdk_fingerprint,
        gateway_port: gateway_addr.port(),
        builds: builds::Builds::default(),
        node: node::Node::new(limits),
        sandbox,
        registry_proxy,
        wasm,
        python,
        python_problem,
        templates: Arc::new(runtime::python::Templates::new(template_budget << 20)),
        python_proxy,
        go_proxy,
        deno,
        deno_problem,
        deno_proxy,
        roots,
        secrets,
        image_proxy,
        fleet,
        fleet_node,
        config,
    });
    let mut warnings = Vec::new();
    let targets = [ignite_builder::Target::Native, ignite_builder::Target::Wasm];
    for target in ignite_builder::missing_targets(None, &targets)
        .await
        .unwrap_or_default()
    {
        warnings.push(format!(
            "the Rust toolchain has no {} target: compiles with --rust-target {} will be \
             refused until it is added with `{}`",
            target.triple(),
            match target {
                ignite_builder::Target::Native => "native",
                ignite_builder::Target::Wasm => "wasm",
            },
            ignite_builder::add_target_command(None, target)
        ));
    }
    if let Some(problem) = &state.deno_problem {
        warnings.push(format!(
            "Deno apps are unavailable: {problem}; a --runtime deno draft will not build"
        ));
    }
    started(Started {
        api_addr,
        gateway_addr,
        admin_token,
        sandbox: sandbox_line,
        limits,
        warnings,
        node_addr,
    });

    let writer = {
        let state = state.clone();
        tokio::spawn(async move {
            state
                .recorder
                .run(state.db.clone(), &state.replica, records)
                .await
        })
    };
    if let Some(mut changes) = app_changes {
        let state = state.clone();
        tokio::spawn(async move {
            loop {
                match changes.next().await {
                    store::AppChange::App(org, app) => state.node.invalidate(&org, &app),
                    store::AppChange::Lost => state.node.invalidate_all(),
                }
            }
        });
    }
    // Builds whose replica stopped under them and did not come back are claimed again here;
    // those this replica accepts start at once, without the poll.
    if role != fleet::Role::Node {
        builds::poll_orphans(state.clone(), shutdown.clone());
    }
    // A node reconciles its pools with what the control plane says; a control replica runs
    // no instance (only long requests' records to flush) and watches its fleet; a single
    // server reconciles with its store.
    let maintenance = {
        let state = state.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            match role {
                fleet::Role::Control => state.recorder_loop(shutdown).await,
                _ => state.node.maintain(&state, shutdown).await,
            }
        })
    };
    let fleet_tasks = {
        let state = state.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if let Some(fleet) = &state.fleet {
                fleet.watch(&state.db, shutdown).await;
            } else if let Some(role) = &state.fleet_node {
                role.heartbeat(&state, shutdown).await;
            }
        })
    };
    let connections =
        serve::ConnectionLimits::new(limits.connections as usize, &state.config.limits);
    let (a, g) = match (listeners, node_listener) {
        (Some((api_listener, gateway_listener)), _) => {
            let api = serve::serve(
                api_listener,
                routes::router(state.clone()),
                connections,
                shutdown.clone(),
            );
            let gateway = serve::serve(
                gateway_listener,
                gateway::router(state.clone()),
                connections,
                shutdown.clone(),
            );
            tokio::join!(api, gateway)
        }
        (None, Some(listener)) => (
            fleet::node::serve(listener, state.clone(), shutdown.clone()).await,
            Ok(()),
        ),
        (None, None) => (Ok(()), Ok(())),
    };
    let _ = fleet_tasks.await;
    let _ = maintenance.await;
    state.node.shutdown().await;
    state.templates.stop_all().await;
    // Zygotes, prepared namespaces, cgroups and anything still in them (a compile) go with
    // the server.
    if let Some(sandbox) = state.sandbox.clone() {
        let _ = tokio::task::spawn_blocking(move || sandbox.shutdown()).await;
    }
    // Every execution answered so far is written before the process ends.
    state.recorder.flush_running(None);
    let flushed = async {
        while !state.recorder.is_flushed() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), flushed)
        .await
        .is_err()
    {
        tracing::error!("some execution records could not be written before stopping");
    }
    writer.abort();
    a?;
    g?;
    Ok(())
}

/// This replica's id: the operator's, or the one kept in `<data-dir>/replica-id` (a ULID made
/// at first start). The data directory is the replica's own (journal, sandbox, blobs), so it
/// names the replica across restarts: what it left unfinished is its to clean up.
fn replica_id(config: &Config) -> anyhow::Result<String> {
    if let Some(id) = &config.replica_id {
        return Ok(id.clone());
    }
    let path = config.data_dir.join("replica-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        Ok(_) | Err(_) => {
            let id = ulid::Ulid::new().to_string();
            std::fs::write(&path, &id).map_err(|e| {
                anyhow::anyhow!(
                    "cannot write this replica's id to {}: {e}; make the data directory \
                     writable or pass --replica-id",
                    path.display()
                )
            })?;
            Ok(id)
        }
    }
}

impl State {
    /// An app's route or hostname changed (a publish, a rollback, new settings, a delete):
    /// this node's caches forget it, and so do the other replicas'.
    pub(crate) async fn app_changed(&self, org: &str, app: &str) {
        self.node.invalidate(org, app);
        if let Err(e) = store::notify_app_changed(&self.db, org, app).await {
            // The change is committed; the other replicas' caches may keep the old route until
            // their listener reconnects (which forgets everything).
            tracing::error!("telling the other replicas that {org}:{app} changed: {e}");
        }
    }
}

/// The Python SDK of the tree this binary was built from (`sdks/python`).
pub fn python_sdk_dir() -> PathBuf {
    ignite_builder::Sdk::bundled()
        .crates_dir
        .parent()
        .map(|p| p.join("sdks/python"))
        .unwrap_or_default()
}

/// The Go SDK of the tree this binary was built from (`sdks/go`).
pub fn go_sdk_dir() -> PathBuf {
    ignite_builder::Sdk::bundled()
        .crates_dir
        .parent()
        .map(|p| p.join("sdks/go"))
        .unwrap_or_default()
}

/// The Deno SDK of the tree this binary was built from (`sdks/deno`).
pub fn deno_sdk_dir() -> PathBuf {
    ignite_builder::Sdk::bundled()
        .crates_dir
        .parent()
        .map(|p| p.join("sdks/deno"))
        .unwrap_or_default()
}
