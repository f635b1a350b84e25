//! The control plane's API as types: every request and response body of `/v1`, with their
//! OpenAPI schemas. The server answers with these types and the CLI reads them, so the two (and
//! the checked-in `openapi.json`) cannot drift apart.
//!
//! This crate holds data only: no I/O, no behaviour.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Every error: `{"error": {"code": "...", "message": "..."}}`. The message says how to fix it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// `invalid_argument`, `not_found`, `already_exists`, `failed_precondition`,
    /// `unauthenticated`, `payload_too_large`, `handler_error`, `handler_crashed`, …
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateApp {
    /// 1–63 lowercase letters, digits and `-`.
    pub name: String,
    /// `rust`.
    pub runtime: String,
    #[serde(default)]
    pub description: String,
}

/// An app: `app get -o json`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct App {
    /// `<org>:<name>`.
    pub id: String,
    pub org: String,
    pub name: String,
    pub runtime: String,
    pub description: String,
    /// The version that serves traffic; none before the first publish.
    pub active_version: Option<i64>,
    /// `http://<name>-<org>.ignite.<domain>` once published.
    pub public_urls: Vec<String>,
    /// The environment the next published version will carry.
    pub env: BTreeMap<String, String>,
    /// The draft (version 0), when one was saved.
    pub draft: Option<Version>,
    /// The active version's artifact.
    pub artifact: Option<Artifact>,
    pub scaling: ScalingConfig,
    #[serde(default)]
    pub network: NetworkConfig,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AppList {
    pub apps: Vec<App>,
}

/// A built handler binary, stored content-addressed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Artifact {
    /// `sha256:<hex>`.
    pub digest: Option<String>,
    pub size: Option<i64>,
    /// e.g. `x86_64-unknown-linux-musl`.
    pub target: Option<String>,
}

/// A version: 0 is the mutable draft, 1, 2, 3, … are immutable.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Version {
    pub version: i64,
    pub runtime: String,
    /// `native` or `wasm`.
    pub rust_target: Option<String>,
    pub toolchain: Option<String>,
    pub source_digest: Option<String>,
    /// `archive` or `file`.
    pub source_kind: Option<String>,
    /// `not_compiled`, `compiling`, `compiled`, `failed`, `timed_out`, `oom` (the compile passed
    /// its memory limit), `disk_full` (it wrote past its disk budget).
    pub compile_status: String,
    pub compile_error: Option<String>,
    pub build_id: Option<String>,
    pub artifact_digest: Option<String>,
    pub artifact_size: Option<i64>,
    pub artifact_target: Option<String>,
    pub env: BTreeMap<String, String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VersionList {
    pub active_version: Option<i64>,
    pub versions: Vec<Version>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SetEnv {
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnvSet {
    pub env: BTreeMap<String, String>,
    pub note: String,
}

/// `draft save`: the body is the source (a `.tar.gz` or `.zip` of the project, or one file).
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SaveDraftParams {
    /// Defaults to the app's runtime.
    pub runtime: Option<String>,
    /// `native` or `wasm`; required for Rust.
    pub rust_target: Option<String>,
    /// An installed rustup toolchain.
    pub toolchain: Option<String>,
    /// `archive` (default) or `file`.
    pub kind: Option<String>,
    /// Image mode: pull this image (`<registry>/<repository>:<tag>` or `…@sha256:<hex>`); no
    /// body.
    pub image_ref: Option<String>,
    /// Image mode: clone this repository (`https://…[#<branch, tag or commit>]`) and build its
    /// `Dockerfile`; no body.
    pub git_url: Option<String>,
    /// Image mode: the body is the build context (an archive) and this is its Dockerfile's
    /// path inside it.
    pub dockerfile: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DraftSaved {
    pub id: String,
    pub version: i64,
    pub draft: Option<Version>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CompileStarted {
    pub id: String,
    pub build_id: String,
    pub status: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsParams {
    /// Keep the stream open until the compile ends.
    pub follow: Option<bool>,
}

/// One line of `compile-logs` (newline-delimited JSON): a log line, or, last, the outcome.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct LogEvent {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<String>,
    /// `running` (not following), `succeeded`, `failed`, `timed_out`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Published {
    pub id: String,
    pub version: i64,
    pub active_version: i64,
    pub public_urls: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Rollback {
    pub version: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RolledBack {
    pub id: String,
    pub active_version: i64,
}

/// What one execution cost.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Metrics {
    /// Wake-from-zero wait: spawn to ready when no warm instance was there; 0 when warm.
    pub cold_start_ms: Option<f64>,
    /// Spawn to ready, when the call was cold.
    pub init_ms: Option<f64>,
    /// The handler's run time.
    pub duration_ms: Option<f64>,
    /// Duration plus init when cold, rounded up to a whole millisecond.
    pub billed_duration_ms: Option<i64>,
    /// Where a cold start's time went (absent on a warm call).
    pub cold_start_phases: Option<ColdStartPhases>,
    /// Time spent waiting for a free instance (all were busy).
    pub queue_ms: Option<f64>,
}

/// The parts of a cold start, in the order they happen.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ColdStartPhases {
    /// Locating the artifact on the node (an image: pulling what the node lacks).
    pub fetch_ms: f64,
    /// Unpacking an image's root first, when the node had not yet; 0 otherwise.
    #[serde(default)]
    pub unpack_ms: f64,
    /// Starting the version's template first (Python: the interpreter and the app's imports),
    /// when it was not running on the node; 0 otherwise.
    #[serde(default)]
    pub template_ms: f64,
    /// Creating the process: an exec (native), a fork of the template (Python), a wasm
    /// instance (wasm); `start` says which.
    pub spawn_ms: f64,
    /// From the process existing to the SDK's ready handshake (an image: to its port accepting a
    /// connection).
    pub init_ms: f64,
    /// `exec`, `fork` or `component`.
    #[serde(default)]
    pub start: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Execution {
    /// A ULID.
    pub id: String,
    pub app_id: String,
    pub function_id: String,
    pub version: i64,
    /// `running`, `succeeded`, `failed`, `timeout`, `crashed`.
    pub status: String,
    /// `api` or `http`.
    pub trigger: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub response_status: Option<i64>,
    pub error: Option<String>,
    pub metrics: Metrics,
    /// The handler's stderr (and `ctx.log`) lines.
    pub logs: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecutionList {
    pub executions: Vec<Execution>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListExecutionsParams {
    /// `org:name` or `name`.
    pub app: Option<String>,
    /// Only executions with this status.
    pub status: Option<String>,
    /// Only executions started at or after this time (ms since the Unix epoch).
    pub since: Option<i64>,
    /// At most this many (1–1000, default 50), newest first.
    pub limit: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateToken {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    pub id: String,
    pub name: String,
    /// Shown once.
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Token {
    pub id: String,
    pub name: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    pub tokens: Vec<Token>,
}

/// `registry login`: credentials for one registry, kept for the caller's org (encrypted at
/// rest, never shown again).
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct RegistryLogin {
    pub username: String,
    pub password: String,
}

/// Never the password, in a log or a panic message.
impl std::fmt::Debug for RegistryLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryLogin")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A registry the org has credentials for (never the password).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Registry {
    pub host: String,
    pub username: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RegistryList {
    pub registries: Vec<Registry>,
}

/// The most requests one instance may serve at once.
pub const MAX_CONCURRENCY: u32 = 1000;

/// How an app scales. Every field has a default; `PUT …/scaling` changes only the fields given.
///
/// Note for Lambda users: `reserved_capacity` keeps instances *warm* (Lambda's "provisioned
/// concurrency"); it is not a cap like Lambda's "reserved concurrency". The cap is
/// `max_instances`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct ScalingConfig {
    /// Instances kept running at all times, exempt from idle teardown, started at publish and
    /// rollback and replaced when they die. The first call is then warm.
    pub reserved_capacity: u32,
    /// The most instances of the app that run at once; past it requests queue.
    pub max_instances: u32,
    /// Requests one instance serves at once: 1 (the default, like Lambda) gives each request a
    /// process of its own; more lets an async handler overlap its waits (its `.await`s) in one
    /// process, as Cloud Run does. `max_instances × concurrency` requests run at once, the rest
    /// queue. With more than 1, a line a handler writes to stderr appears in the logs of every
    /// request in flight at that moment (`Context::log` attributes a line to its own request),
    /// and a request past its deadline stops its instance once the others in flight have ended.
    pub concurrency: u32,
    /// An idle instance is stopped after this many seconds (scale to zero); 0 stops it as soon as
    /// its request ends.
    pub idle_timeout_s: u32,
    /// The per-request deadline, in seconds: past it the request answers 504 and its instance is
    /// stopped (SIGTERM, then SIGKILL).
    pub timeout_s: u32,
    /// The memory limit of one instance, in MiB.
    pub memory_mb: u32,
    /// Requests that may wait for an instance when all are busy; past it the answer is 429.
    pub queue_depth: u32,
}

impl ScalingConfig {
    /// A new app's settings: the defaults, except that an image app's server takes 80 requests
    /// at once (Cloud Run's default: an image is a web server, built to serve many) in 512 MiB
    /// (an interpreter and its server).
    pub fn for_runtime(runtime: &str) -> ScalingConfig {
        match runtime {
            "image" => ScalingConfig {
                concurrency: 80,
                memory_mb: 512,
                ..ScalingConfig::default()
            },
            _ => ScalingConfig::default(),
        }
    }
}

impl Default for ScalingConfig {
    fn default() -> Self {
        ScalingConfig {
            reserved_capacity: 0,
            max_instances: 10,
            concurrency: 1,
            idle_timeout_s: 300,
            timeout_s: 30,
            memory_mb: 128,
            queue_depth: 100,
        }
    }
}

/// What an app's instances may reach on the network. `PUT …/network`; takes effect at once
/// (running instances finish their requests and are replaced).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct NetworkConfig {
    /// Outbound connections to the public internet; off by default, when an instance has no
    /// network at all. Even with it on, an instance cannot reach the node itself, other
    /// instances, or loopback, private, shared (100.64.0.0/10), link-local (cloud metadata) and
    /// multicast addresses, and has no IPv6; names resolve through the node's resolvers.
    pub egress: bool,
}

/// A partial update of [`ScalingConfig`]: the fields given replace the app's.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ScalingUpdate {
    pub reserved_capacity: Option<u32>,
    pub max_instances: Option<u32>,
    pub concurrency: Option<u32>,
    pub idle_timeout_s: Option<u32>,
    pub timeout_s: Option<u32>,
    pub memory_mb: Option<u32>,
    pub queue_depth: Option<u32>,
}

impl ScalingUpdate {
    /// `base` with these fields replaced.
    pub fn apply(&self, base: &ScalingConfig) -> ScalingConfig {
        ScalingConfig {
            reserved_capacity: self.reserved_capacity.unwrap_or(base.reserved_capacity),
            max_instances: self.max_instances.unwrap_or(base.max_instances),
            concurrency: self.concurrency.unwrap_or(base.concurrency),
            idle_timeout_s: self.idle_timeout_s.unwrap_or(base.idle_timeout_s),
            timeout_s: self.timeout_s.unwrap_or(base.timeout_s),
            memory_mb: self.memory_mb.unwrap_or(base.memory_mb),
            queue_depth: self.queue_depth.unwrap_or(base.queue_depth),
        }
    }
}

impl ScalingConfig {
    /// Why this configuration cannot be used, if it cannot.
    pub fn problem(&self) -> Option<String> {
        if self.max_instances == 0 {
            return Some("max_instances must be at least 1".into());
        }
        if self.reserved_capacity > self.max_instances {
            return Some(format!(
                "reserved_capacity ({}) cannot exceed max_instances ({}); raise --max-instances",
                self.reserved_capacity, self.max_instances
            ));
        }
        if self.concurrency == 0 || self.concurrency > MAX_CONCURRENCY {
            return Some(format!(
                "concurrency must be between 1 and {MAX_CONCURRENCY} requests per instance"
            ));
        }
        if self.timeout_s == 0 || self.timeout_s > 900 {
            return Some("timeout_s must be between 1 and 900 seconds".into());
        }
        if self.memory_mb < 16 {
            return Some("memory_mb must be at least 16".into());
        }
        None
    }
}
