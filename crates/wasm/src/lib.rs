//! Runs `--rust-target wasm` handlers: wasm32-wasip2 components exporting the standard
//! `wasi:http/incoming-handler` (the `wasi:http/proxy` world), under Wasmtime. The only crate
//! that links Wasmtime.
//!
//! - **Precompiled once.** [`WasmHost::precompile`] validates a component at compile time
//!   (a component, not a core module; exporting the proxy world's handler; importing nothing
//!   the host does not provide) and stores its machine code (`.cwasm`) by artifact digest and
//!   the engine's compatibility hash, so a cold start deserializes instead of compiling.
//! - **A fresh instance per request** (Fastly's and Spin's model) from Wasmtime's pooling
//!   allocator: nothing survives from one request to the next.
//! - **Deadlines by epoch interruption**: a ticker thread advances the engine's epoch every
//!   [`TICK`]; a guest past its deadline traps even in a tight loop (`timeout`).
//! - **Memory** is capped per instance by a resource limiter at the app's `memory_mb`; a guest
//!   that asks for more is refused, traps, and is recorded as `oom`.
//! - **No ambient authority**: no preopened directories (no filesystem), TCP, UDP and name
//!   lookups refused, and exactly the app's declared environment. Outgoing HTTP
//!   (`wasi:http/outgoing-handler`) is refused unless the app has internet access (`app
//!   network --egress on`); then it runs on a runtime whose thread lives in one of the
//!   sandbox's egress network namespaces, so its sockets (and name lookups) pass the same
//!   kernel filter as a native instance's: the public internet only. stdout and stderr are
//!   captured (capped) as the execution's logs.
//!
//! Requests and outcomes are the shared [`ignite_invocation`] types a native instance speaks
//! too, so the server records a wasm execution exactly like a native one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use ignite_invocation::{Invocation, Logs, Outcome, Reply};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store,
};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// How often the engine's epoch advances: the granularity of deadlines.
pub const TICK: Duration = Duration::from_millis(10);
/// Header the platform passes the execution id in (the SDK reads it into `Context`).
pub const EXECUTION_ID_HEADER: &str = "x-ignite-execution-id";
/// Header the platform passes the function id in.
pub const FUNCTION_ID_HEADER: &str = "x-ignite-function-id";
/// Set by the SDK on the answer to a handler's `Err`.
pub const ERROR_HEADER: &str = "x-ignite-error";
/// The SDK's line for a panic (see `ignite::wasm::PANIC_PREFIX`).
const PANIC_PREFIX: &str = "ignite-panic: ";
/// Components kept loaded in memory at once.
const MAX_LOADED: usize = 256;
/// A request's captured stdout+stderr beyond this is dropped and counted.
const LOG_CAP: usize = 64 << 10;

/// Node-wide settings.
#[derive(Debug, Clone)]
pub struct WasmConfig {
    /// Where precompiled components are kept.
    pub cache_dir: PathBuf,
    /// Instances that may run at once on this node (the pooling allocator's slots).
    pub max_instances: u32,
    /// The largest linear memory any instance may have (the pool reserves address space for it).
    pub max_memory_mb: u64,
}

impl WasmConfig {
    pub fn new(cache_dir: impl Into<PathBuf>) -> WasmConfig {
        WasmConfig {
            cache_dir: cache_dir.into(),
            max_instances: 1000,
            max_memory_mb: 4096,
        }
    }
}

/// Why a component cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    #[error("the Wasmtime engine could not be set up: {0}")]
    Engine(String),
    #[error("{0}")]
    Invalid(String),
    #[error("cannot use the component cache {path}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What one request of an app may use.
#[derive(Debug, Clone, Copy)]
pub struct WasmLimits {
    pub memory_mb: u64,
    pub timeout: Duration,
    /// Outgoing HTTP to the internet (see [`WasmHost::enable_egress`]).
    pub egress: bool,
}

/// Where a request's cold start went.
#[derive(Debug, Clone, Copy, Default)]
pub struct WasmStart {
    /// Loading the precompiled component (only the first request of a version on this node).
    pub load: Duration,
    /// Instantiating it (every request: each gets a fresh instance).
    pub instantiate: Duration,
}

/// The node's Wasmtime: one engine, and the components it has loaded.
pub struct WasmHost {
    engine: Engine,
    linker: Linker<Guest>,
    cache_dir: PathBuf,
    loaded: Mutex<HashMap<String, ProxyPre<Guest>>>,
    /// Where outgoing HTTP runs once an app has internet access.
    egress: Mutex<Option<Egress>>,
}

/// Starts a thread, named by the first argument, running the second: where [`WasmHost`] runs
/// outgoing HTTP once an app has internet access (see [`WasmHost::enable_egress`]). The caller
/// decides where that thread's sockets are: the server wires in `ignite_sandbox`'s, whose
/// `Netns` converts into this, so this crate needs no sandbox (nor any namespace call) of its
/// own.
pub type SpawnThread =
    Box<dyn FnOnce(String, Box<dyn FnOnce() + Send>) -> std::io::Result<()> + Send>;

/// Where a component's outgoing HTTP goes.
#[derive(Clone)]
enum Egress {
    /// The server's own network (no sandbox: as a native instance with `--no-sandbox`).
    Direct,
    /// A runtime on a thread the caller placed (in an egress network namespace): its sockets
    /// are there.
    Confined(tokio::runtime::Handle),
}

impl std::fmt::Debug for WasmHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmHost")
            .field("cache_dir", &self.cache_dir)
            .finish_non_exhaustive()
    }
}

impl WasmHost {
    pub fn new(config: &WasmConfig) -> Result<WasmHost, WasmError> {
        let engine_error = |e: wasmtime::Error| WasmError::Engine(format!("{e:#}"));
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(config.max_instances)
            .total_memories(config.max_instances)
            .total_tables(config.max_instances.saturating_mul(4))
            .total_core_instances(config.max_instances.saturating_mul(4))
            .max_memory_size(usize::try_from(config.max_memory_mb << 20).unwrap_or(usize::MAX));
        let mut wasm = Config::new();
        wasm.epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm).map_err(engine_error)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(engine_error)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(engine_error)?;
        std::fs::create_dir_all(&config.cache_dir).map_err(|source| WasmError::Cache {
            path: config.cache_dir.clone(),
            source,
        })?;
        // Deadlines: every store's deadline is counted in ticks of this thread. It holds only a
        // weak handle, so it ends with the engine.
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("ignite-wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            })
            .map_err(|e| WasmError::Engine(e.to_string()))?;
        Ok(WasmHost {
            engine,
            linker,
            cache_dir: config.cache_dir.clone(),
            loaded: Mutex::default(),
            egress: Mutex::default(),
        })
    }

    /// Whether [`WasmHost::enable_egress`] has been done.
    pub fn egress_enabled(&self) -> bool {
        self.egress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Lets apps with internet access send outgoing HTTP: from a thread that `network` starts
    /// (one inside a namespace with the instances' egress filter: pass the
    /// `ignite_sandbox::Netns` of `Sandbox::egress_netns`, which converts into a
    /// [`SpawnThread`]), or, with `None`, from the server's own network. Idempotent.
    pub fn enable_egress(&self, network: Option<impl Into<SpawnThread>>) -> std::io::Result<()> {
        let mut egress = self.egress.lock().unwrap_or_else(|p| p.into_inner());
        if egress.is_some() {
            return Ok(());
        }
        let Some(network) = network else {
            *egress = Some(Egress::Direct);
            return Ok(());
        };
        let spawn: SpawnThread = network.into();
        let (tx, rx) = std::sync::mpsc::channel();
        // Every socket this thread (and the threads it starts: the runtime's blocking pool,
        // which resolves names) creates is where `network` put it.
        spawn(
            "ignite-wasm-egress".into(),
            Box::new(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _ = tx.send(Ok(runtime.handle().clone()));
                runtime.block_on(std::future::pending::<()>());
            }),
        )?;
        let handle = rx
            .recv()
            .map_err(|_| std::io::Error::other("the egress thread ended at start"))??;
        *egress = Some(Egress::Confined(handle));
        Ok(())
    }

    /// Where `digest`'s machine code for this engine lives.
    fn cwasm_path(&self, digest: &str) -> PathBuf {
        let mut hasher = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&self.engine.precompile_compatibility_hash(), &mut hasher);
        let engine = std::hash::Hasher::finish(&hasher);
        let name = digest.replace(':', "-");
        self.cache_dir.join(format!("{name}-{engine:016x}.cwasm"))
    }

    /// Validates a freshly built component and stores its machine code. The error says what is
    /// wrong in the user's terms.
    pub fn precompile(&self, digest: &str, wasm: &[u8]) -> Result<PathBuf, WasmError> {
        if is_core_module(wasm) {
            return Err(WasmError::Invalid(
                "the artifact is a core WebAssembly module, not a component: build for \
                 wasm32-wasip2 (what `--rust-target wasm` does) so the handler is a \
                 wasi:http component"
                    .into(),
            ));
        }
        let component = Component::new(&self.engine, wasm).map_err(|e| {
            WasmError::Invalid(format!("the artifact is not a valid component: {e:#}"))
        })?;
        self.proxy_pre(&component)?;
        let code = self
            .engine
            .precompile_component(wasm)
            .map_err(|e| WasmError::Invalid(format!("cannot compile the component: {e:#}")))?;
        let path = self.cwasm_path(digest);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, &code)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|source| WasmError::Cache {
                path: path.clone(),
                source,
            })?;
        Ok(path)
    }

    fn proxy_pre(&self, component: &Component) -> Result<ProxyPre<Guest>, WasmError> {
        let pre = self.linker.instantiate_pre(component).map_err(|e| {
            WasmError::Invalid(format!(
                "the component needs imports this platform does not provide: {e:#}"
            ))
        })?;
        ProxyPre::new(pre).map_err(|e| {
            WasmError::Invalid(format!(
                "the component does not export wasi:http/incoming-handler (the wasi:http/proxy \
                 world); mark the handler with #[ignite::main] in src/lib.rs ({e:#})"
            ))
        })
    }

    /// The loaded component for `digest`: from memory, the precompiled cache, or compiled from
    /// `wasm_path` (then cached). Returns how long loading took, zero when it was in memory.
    fn load(
        &self,
        digest: &str,
        wasm_path: &Path,
    ) -> Result<(ProxyPre<Guest>, Duration), WasmError> {
        if let Some(pre) = self.lock().get(digest) {
            return Ok((pre.clone(), Duration::ZERO));
        }
        let started = Instant::now();
        let cached = self.cwasm_path(digest);
        // SAFETY: wasmtime's contract for deserialize_file holds: the file was written by
        // `precompile` with this engine's configuration (its name carries the engine's
        // compatibility hash) into the server's own data directory, which nothing else writes.
        let component = match unsafe { Component::deserialize_file(&self.engine, &cached) } {
            Ok(c) => c,
            Err(_) => {
                let bytes = std::fs::read(wasm_path).map_err(|source| WasmError::Cache {
                    path: wasm_path.to_path_buf(),
                    source,
                })?;
                let _ = self.precompile(digest, &bytes)?;
                Component::new(&self.engine, &bytes)
                    .map_err(|e| WasmError::Invalid(format!("{e:#}")))?
            }
        };
        let pre = self.proxy_pre(&component)?;
        let mut loaded = self.lock();
        // Loaded components hold their machine code; versions come and go, so the map is
        // bounded (one evicted is deserialized again, ~ms, on its next request).
        if loaded.len() >= MAX_LOADED
            && let Some(old) = loaded.keys().next().cloned()
        {
            loaded.remove(&old);
        }
        loaded.insert(digest.to_string(), pre.clone());
        drop(loaded);
        Ok((pre, started.elapsed()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ProxyPre<Guest>>> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs one request in a fresh instance of the component. Never fails: every way a request
    /// can end is an [`Outcome`].
    pub async fn invoke(
        &self,
        digest: &str,
        wasm_path: &Path,
        limits: WasmLimits,
        invocation: Invocation,
    ) -> (Reply, WasmStart) {
        let started = Instant::now();
        let log = CappedLog::default();
        let mut start = WasmStart::default();
        let outcome = match self.load(digest, wasm_path) {
            Err(e) => Outcome::Crashed {
                exit: format!("the component could not be loaded: {e}"),
            },
            Ok((pre, load)) => {
                start.load = load;
                self.run(pre, limits, invocation, &log, &mut start, started)
                    .await
            }
        };
        let (lines, dropped_bytes) = log.take();
        let outcome = match outcome {
            // A trap after the SDK's panic line: the handler panicked (panics abort on wasm).
            Outcome::Crashed { .. }
                if let Some(message) = lines.iter().find_map(|l| l.strip_prefix(PANIC_PREFIX)) =>
            {
                Outcome::Panicked {
                    message: format!("the handler panicked: {message}"),
                }
            }
            other => other,
        };
        let reply = Reply {
            outcome,
            logs: Logs {
                lines,
                dropped_bytes,
            },
            duration: started
                .elapsed()
                .saturating_sub(start.load + start.instantiate),
        };
        (reply, start)
    }

    async fn run(
        &self,
        pre: ProxyPre<Guest>,
        limits: WasmLimits,
        inv: Invocation,
        log: &CappedLog,
        start: &mut WasmStart,
        started: Instant,
    ) -> Outcome {
        let mut wasi = WasiCtx::builder();
        wasi.envs(&inv.env)
            .stdout(log.clone())
            .stderr(log.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let memory_limit = usize::try_from(limits.memory_mb << 20).unwrap_or(usize::MAX);
        let guest = Guest {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: Outgoing(if limits.egress {
                self.egress
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
            } else {
                None
            }),
            memory: MemoryCap {
                limit: memory_limit,
                refused: None,
            },
        };
        let mut store = Store::new(&self.engine, guest);
        store.limiter(|g| &mut g.memory);
        let ticks = limits.timeout.as_millis() / TICK.as_millis().max(1);
        store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX).max(1));
        store.epoch_deadline_trap();

        let request = match http_request(&inv) {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Crashed {
                    exit: format!("the request could not be handed to the component: {e}"),
                };
            }
        };
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let handles = (|| -> wasmtime::Result<_> {
            let req = store
                .data_mut()
                .http()
                .new_incoming_request(Scheme::Http, request)?;
            let out = store.data_mut().http().new_response_outparam(sender)?;
            Ok((req, out))
        })();
        let (req, out) = match handles {
            Ok(h) => h,
            Err(e) => {
                return Outcome::Crashed {
                    exit: format!("{e:#}"),
                };
            }
        };
        let instantiated = Instant::now();
        let proxy = match pre.instantiate_async(&mut store).await {
            Ok(p) => p,
            Err(e) => {
                return Outcome::Crashed {
                    exit: format!("the component could not be instantiated: {e:#}"),
                };
            }
        };
        start.instantiate = instantiated.elapsed();
        let task = tokio::spawn(async move {
            let result = proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, req, out)
                .await;
            let refused = store.data().memory.refused;
            (result, refused)
        });
        let deadline = tokio::time::Instant::from_std(started + limits.timeout);
        let answer = tokio::time::timeout_at(deadline, async {
            let response = receiver.await;
            match response {
                Ok(Ok(resp)) => {
                    let (parts, body) = resp.into_parts();
                    match body.collect().await {
                        Ok(b) => Some(Ok((parts, b.to_bytes()))),
                        Err(e) => Some(Err(format!("{e:?}"))),
                    }
                }
                Ok(Err(code)) => Some(Err(format!("{code:?}"))),
                Err(_) => None,
            }
        })
        .await;
        let timed_out = || Outcome::TimedOut {
            after: started.elapsed(),
        };
        let answer = match answer {
            Ok(a) => a,
            Err(_) => {
                task.abort();
                return timed_out();
            }
        };
        let finished = tokio::time::timeout_at(deadline, task).await;
        let (result, refused) = match finished {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                return Outcome::Crashed {
                    exit: format!("the instance's task failed: {e}"),
                };
            }
            Err(_) => return timed_out(),
        };
        if let Err(trap) = &result {
            if let Some(asked) = refused {
                return Outcome::OutOfMemory {
                    exit: format!(
                        "memory growth to {} MiB refused at the {} MiB limit",
                        asked >> 20,
                        limits.memory_mb
                    ),
                };
            }
            if matches!(
                trap.downcast_ref::<wasmtime::Trap>(),
                Some(wasmtime::Trap::Interrupt)
            ) {
                return timed_out();
            }
            if answer.is_none() {
                return Outcome::Crashed {
                    exit: format!("the component trapped: {}", trap_summary(trap)),
                };
            }
        }
        match answer {
            Some(Ok((parts, body))) => response_outcome(parts, body),
            Some(Err(e)) => Outcome::Crashed {
                exit: format!("the component's answer failed: {e}"),
            },
            None => Outcome::Crashed {
                exit: "the component returned without answering the request".into(),
            },
        }
    }
}

fn trap_summary(e: &wasmtime::Error) -> String {
    let text = format!("{e:#}");
    text.lines().next().unwrap_or_default().to_string()
}

/// The guest's answer as an outcome; an answer the SDK marked as a handler's `Err` is one.
fn response_outcome(parts: http::response::Parts, body: Bytes) -> Outcome {
    let status = parts.status.as_u16();
    if parts.headers.contains_key(ERROR_HEADER) {
        let message = serde_json_message(&body)
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        return Outcome::HandlerError { status, message };
    }
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    Outcome::Response {
        status,
        headers,
        body: body.to_vec(),
    }
}

/// `error.message` of the SDK's error body.
fn serde_json_message(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("error")?.get("message")?.as_str().map(str::to_string)
}

fn http_request(
    inv: &Invocation,
) -> Result<hyper::Request<http_body_util::combinators::BoxBody<Bytes, ErrorCode>>, String> {
    let target = if inv.request.query.is_empty() {
        inv.request.path.clone()
    } else {
        format!("{}?{}", inv.request.path, inv.request.query)
    };
    let mut builder = hyper::Request::builder()
        .method(inv.request.method.as_str())
        .uri(format!("http://localhost{target}"));
    for (k, v) in &inv.request.headers {
        // The ids come from the platform alone.
        if k.eq_ignore_ascii_case(EXECUTION_ID_HEADER) || k.eq_ignore_ascii_case(FUNCTION_ID_HEADER)
        {
            continue;
        }
        builder = builder.header(k, v);
    }
    builder = builder
        .header(EXECUTION_ID_HEADER, &inv.execution_id)
        .header(FUNCTION_ID_HEADER, &inv.function_id);
    let body = Full::new(Bytes::from(inv.request.body.clone()))
        .map_err(|never| match never {})
        .boxed();
    builder.body(body).map_err(|e| e.to_string())
}

/// A core module starts `\0asm` with version 1; a component has a different layer/version.
fn is_core_module(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [1, 0, 0, 0]
}

/// A store's state: WASI with nothing granted, wasi:http, and the memory cap.
struct Guest {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: Outgoing,
    memory: MemoryCap,
}

impl WasiView for Guest {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Guest {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Outgoing HTTP: refused without internet access (as a native instance has no network), else
/// sent from where [`Egress`] says.
struct Outgoing(Option<Egress>);

type IoFuture = Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>;
type SendResult =
    wasmtime_wasi_http::Result<(http::Response<wasmtime_wasi_http::WasiBody>, IoFuture)>;

/// How long an outgoing connection may take when the guest does not say (Wasmtime's own default
/// is 600 s, past any deadline here).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

async fn send(
    request: http::Request<wasmtime_wasi_http::WasiBody>,
    options: Option<wasmtime_wasi_http::RequestOptions>,
) -> SendResult {
    let mut options = options.unwrap_or_default();
    options.connect_timeout = Some(options.connect_timeout.unwrap_or(CONNECT_TIMEOUT));
    let (response, io) = wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
    Ok((
        response.map(BodyExt::boxed_unsync),
        Box::new(io) as IoFuture,
    ))
}

impl WasiHttpHooks for Outgoing {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: IoFuture,
    ) -> Box<dyn std::future::Future<Output = SendResult> + Send> {
        match self.0.clone() {
            None => Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) }),
            Some(Egress::Direct) => Box::new(send(request, options)),
            Some(Egress::Confined(runtime)) => Box::new(async move {
                let lost = |e: tokio::task::JoinError| {
                    wasmtime_wasi_http::Error::InternalError(Some(e.to_string()))
                };
                let (response, io) = runtime
                    .spawn(send(request, options))
                    .await
                    .map_err(lost)??;
                // The connection's sockets belong to that runtime: drive it there too.
                let io = runtime.spawn(Box::into_pin(io));
                Ok((
                    response,
                    Box::new(async move { io.await.map_err(lost)? }) as IoFuture,
                ))
            }),
        }
    }
}

/// Refuses memory growth past the app's limit, and remembers that it did.
struct MemoryCap {
    limit: usize,
    refused: Option<usize>,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.refused = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

/// The guest's stdout and stderr, kept up to [`LOG_CAP`] bytes; the rest is counted. Never
/// refuses a write (a guest's `eprintln!` panics if stderr fails).
#[derive(Clone, Default)]
struct CappedLog {
    inner: Arc<Mutex<(Vec<u8>, u64)>>,
}

impl CappedLog {
    fn push(&self, bytes: &[u8]) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let room = LOG_CAP.saturating_sub(inner.0.len());
        let keep = bytes.len().min(room);
        inner.0.extend_from_slice(&bytes[..keep]);
        inner.1 += (bytes.len() - keep) as u64;
    }

    fn take(&self) -> (Vec<String>, u64) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let text = String::from_utf8_lossy(&inner.0);
        (text.lines().map(str::to_string).collect(), inner.1)
    }
}

impl IsTerminal for CappedLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedLog {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for CappedLog {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
