//! The HTTP+JSON API (`/v1/...`). Every route but `/healthz` needs a bearer token, and every
//! object is looked up within the token's org.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ignite_agent::{Invocation, Outcome, Reply};
use ignite_api as api;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::State;
use crate::auth::org_of;
use crate::builds;
use crate::error::extract::{JsonBody, Path, Query};
use crate::error::{ApiError, ApiResult};
use crate::metrics::app_label;
use crate::node::{AcquireError, Route};
use crate::store::{self, App, Execution};

type S = AxState<Arc<State>>;

/// Largest upload (`draft save`) and invoke payload.
const UPLOAD_LIMIT: usize = 32 * 1024 * 1024;
const PAYLOAD_LIMIT: usize = 6 * 1024 * 1024;
/// What to do about an invocation payload over the limit.
pub const PAYLOAD_HINT: &str =
    "as for a synchronous Lambda invocation; pass large data by reference (a URL) instead";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Ignite control plane",
        description = "Apps, drafts, compiles, versions, invocations, executions and tokens. \
                       Every route needs `Authorization: Bearer <token>`."
    ),
    modifiers(&BearerToken),
    tags(
        (name = "apps"), (name = "drafts"), (name = "versions"), (name = "invoke"),
        (name = "executions"), (name = "tokens")
    )
)]
struct ApiDoc;

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "token",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

fn api_router() -> OpenApiRouter<Arc<State>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(create_app, list_apps))
        .routes(routes!(get_app, delete_app))
        .routes(routes!(set_env))
        .routes(routes!(set_scaling))
        .routes(routes!(set_network))
        .routes(routes!(save_draft))
        .routes(routes!(compile))
        .routes(routes!(compile_logs))
        .routes(routes!(publish))
        .routes(routes!(list_versions))
        .routes(routes!(rollback))
        .routes(routes!(invoke))
        .routes(routes!(list_executions))
        .routes(routes!(get_execution))
        .routes(routes!(create_token, list_tokens))
        .routes(routes!(revoke_token))
}

/// The OpenAPI document of the API, generated from the handlers' annotations.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_router().into_openapi()
}

pub fn router(state: Arc<State>) -> Router {
    let (router, doc) = api_router().split_for_parts();
    let doc = Arc::new(doc);
    router
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route(
            "/v1/openapi.json",
            get(move || async move { Json((*doc).clone()) }),
        )
        .layer(DefaultBodyLimit::max(UPLOAD_LIMIT))
        .with_state(state)
}

/// Prometheus text exposition of the node's metrics (no token: scrape it from the operator's
/// network).
async fn metrics(AxState(state): S) -> Response {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.node.metrics.render(),
    )
        .into_response()
}

pub fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn app_not_found(org: &str, app: &str) -> ApiError {
    ApiError::not_found(format!(
        "app {org}:{app} not found; create it with `dodil ignite app create {app} --runtime rust`"
    ))
}

/// The app, if the caller's org owns it; a foreign org's app answers exactly like a missing one.
async fn owned_app(state: &State, headers: &HeaderMap, org: &str, app: &str) -> ApiResult<App> {
    let caller = org_of(&state.db, headers).await?;
    if caller != org {
        return Err(app_not_found(org, app));
    }
    store::get_app(&state.db, org, app)
        .await?
        .ok_or_else(|| app_not_found(org, app))
}

fn env_map(env: &[(String, String)]) -> BTreeMap<String, String> {
    env.iter().cloned().collect()
}

fn app_view(
    state: &State,
    app: &App,
    draft: Option<&store::Version>,
    active: Option<&store::Version>,
) -> api::App {
    api::App {
        id: format!("{}:{}", app.org, app.name),
        org: app.org.clone(),
        name: app.name.clone(),
        runtime: app.runtime.clone(),
        description: app.description.clone(),
        active_version: app.active_version,
        public_urls: if app.active_version.is_some() {
            vec![state.public_url(&app.org, &app.name)]
        } else {
            vec![]
        },
        env: env_map(&app.env),
        draft: draft.cloned(),
        artifact: active.map(|v| api::Artifact {
            digest: v.artifact_digest.clone(),
            size: v.artifact_size,
            target: v.artifact_target.clone(),
        }),
        scaling: app.scaling.clone(),
        network: app.network.clone(),
        created_at: app.created_at,
    }
}

/// Create an app in the caller's org.
#[utoipa::path(post, path = "/v1/apps", tag = "apps", security(("token" = [])),
    request_body = api::CreateApp,
    responses(
        (status = 201, body = api::App),
        (status = 400, body = api::ErrorBody, description = "invalid name or runtime"),
        (status = 409, body = api::ErrorBody, description = "the app exists"),
    ))]
async fn create_app(
    AxState(state): S,
    headers: HeaderMap,
    JsonBody(body): JsonBody<api::CreateApp>,
) -> ApiResult<(StatusCode, Json<api::App>)> {
    let org = org_of(&state.db, &headers).await?;
    if !valid_name(&body.name) {
        return Err(ApiError::bad_request(format!(
            "invalid app name {:?}: use 1–63 lowercase letters, digits and '-'",
            body.name
        )));
    }
    if body.runtime != "rust" {
        return Err(ApiError::bad_request(format!(
            "unsupported runtime {:?}: this platform runs `--runtime rust`",
            body.runtime
        )));
    }
    match store::create_app(
        &state.db,
        &org,
        &body.name,
        &body.runtime,
        &body.description,
    )
    .await?
    {
        store::CreateApp::Created => {
            // The defaults, within what this node lets one app have.
            let defaults = api::ScalingConfig::default();
            let fitted = state.node.limits.clamp(defaults.clone());
            if fitted != defaults {
                store::set_scaling(&state.db, &org, &body.name, &fitted).await?;
            }
        }
        store::CreateApp::Exists => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "already_exists",
                format!("app {org}:{} already exists", body.name),
            ));
        }
        store::CreateApp::HostnameTaken => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "already_exists",
                format!(
                    "the public hostname of {org}:{} would be {}, which another app already \
                     has (app and org names both may contain '-'); choose another app name",
                    body.name,
                    state.public_host(&org, &body.name)
                ),
            ));
        }
    }
    let app = store::get_app(&state.db, &org, &body.name)
        .await?
        .ok_or_else(|| ApiError::internal("the app vanished after creation"))?;
    Ok((
        StatusCode::CREATED,
        Json(app_view(&state, &app, None, None)),
    ))
}

/// The caller's org's apps.
#[utoipa::path(get, path = "/v1/apps", tag = "apps", security(("token" = [])),
    responses((status = 200, body = api::AppList)))]
async fn list_apps(AxState(state): S, headers: HeaderMap) -> ApiResult<Json<api::AppList>> {
    let org = org_of(&state.db, &headers).await?;
    let apps = store::list_apps(&state.db, &org).await?;
    Ok(Json(api::AppList {
        apps: apps
            .iter()
            .map(|a| app_view(&state, a, None, None))
            .collect(),
    }))
}

/// One app, with its draft and the active version's artifact.
#[utoipa::path(get, path = "/v1/apps/{org}/{app}", tag = "apps", security(("token" = [])),
    params(("org" = String, Path), ("app" = String, Path)),
    responses((status = 200, body = api::App), (status = 404, body = api::ErrorBody)))]
async fn get_app(
    AxState(state): S,
    headers: HeaderMap,
    Path((org, name)): Path<(String, String)>,
) -> ApiResult<Json<api::App>> {
    let app = owned_app(&state, &headers, &org, &name).await?;
    let draft = store::get_version(&state.db, &org, &name, 0).await?;
    let active = match app.active_version {
        Some(v) => store::get_version(&state.db, &org, &name, v).await?,
        None => None,
    };
    Ok(Json(app_view(
        &state,
        &app,
        draft.as_ref(),
        active.as_ref(),
    )))
}

/// Delete an app, its versions and its running instances.
#[utoipa::path(delete, path = "/v1/apps/{org}/{app}", tag = "apps", security(("token" = [])),
    params(("org" = String, Path), ("app" = String, Path)),
    responses((status = 204), (status = 404, body = api::ErrorBody)))]
async fn delete_app(
    AxState(state): S,
    headers: HeaderMap,
    Path((org, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    owned_app(&state, &headers, &org, &name).await?;
    store::delete_app(&state.db, &org, &name).await?;
    state.node.invalidate(&org, &name);
    // Its pools are no longer wanted: the reconciler stops their instances.
    state.node.reconcile(&state).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Set the app's environment; it travels with the next published version.
#[utoipa::path(put, path = "/v1/apps/{org}/{app}/env", tag = "apps", security(("token" = [])),
    params(("org" = String, Path), ("app" = String, Path)),
    request_body = api::SetEnv,
    responses((status = 200, body = api::EnvSet), (status = 400, body = api::ErrorBody)))]
async fn set_env(
    AxState(state): S,
    headers: HeaderMap,
    Path((org, name)): Path<(String, String)>,
    JsonBody(body): JsonBody<api::SetEnv>,
) -> ApiResult<Json<api::EnvSet>> {
    owned_app(&state, &headers, &org, &name).await?;
    if let Some(problem) = env_problem(&body.env) {
        return Err(ApiError::bad_request(problem));
    }
    let env: Vec<(String, String)> = body.env.clone().into_iter().collect();
    store::set_env(&state.db, &org, &name, &env).await?;
    state.node.invalidate(&org, &name);
    Ok(Json(api::EnvSet {
        env: body.env,
        note: "environment changes take effect at the next draft publish".into(),
    }))
}

/// Limits of an app's environment: names as a shell takes them, values that an `execve`
/// environment can carry (no NUL), and a size that fits any instance's start.
pub const ENV_MAX_VARS: usize = 256;
pub const ENV_MAX_NAME: usize = 128;
pub const ENV_MAX_VALUE: usize = 32 * 1024;
pub const ENV_MAX_TOTAL: usize = 64 * 1024;

/// What is wrong with an environment, if anything, and how to fix it.
pub fn env_problem(env: &BTreeMap<String, String>) -> Option<String> {
    if env.len() > ENV_MAX_VARS {
        return Some(format!(
            "{} environment variables is too many: at most {ENV_MAX_VARS}; pass a structured \
             value (JSON) in one variable instead",
            env.len()
        ));
    }
    let mut total = 0;
    for (key, value) in env {
        let shown: String = key.chars().take(64).collect();
        let valid_name = key
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid_name {
            return Some(format!(
                "invalid environment variable name {shown:?}: use letters, digits and '_', \
                 starting with a letter or '_' (for example GREETING or DATABASE_URL)"
            ));
        }
        if key.len() > ENV_MAX_NAME {
            return Some(format!(
                "environment variable name {shown:?}… is over {ENV_MAX_NAME} bytes"
            ));
        }
        if value.contains('\0') {
            return Some(format!(
                "the value of environment variable {key} contains a NUL byte, which no process \
                 environment can carry; encode binary data (base64, say)"
            ));
        }
        if value.len() > ENV_MAX_VALUE {
            return Some(format!(
                "the value of environment variable {key} is {} bytes; the limit is \
                 {ENV_MAX_VALUE} bytes — pass large data by reference (a URL) instead",
                value.len()
            ));
        }
        total += key.len() + value.len() + 2;
    }
    if total > ENV_MAX_TOTAL {
        return Some(format!(
            "the environment is {total} bytes in all; the limit is {ENV_MAX_TOTAL} bytes"
        ));
    }
    None
}

/// Change how the app scales (only the fields given); takes effect at once.
#[utoipa::path(put, path = "/v1/apps/{org}/{app}/scaling", tag = "apps", security(("token" = [])),
    params(("org" = String, Path), ("app" = String, Path)),
    request_body = api::ScalingUpdate,
    responses((status = 200, body = api::ScalingConfig), (status = 400, body = api::ErrorBody)))]
async fn set_scaling(
    AxState(state): S,
    headers: HeaderMap,
    Path((org, name)): Path<(String, String)>,
    JsonBody(body): JsonBody<api::ScalingUpdate>,
) -> ApiResult<Json<api::ScalingConfig>> {
    let app = owned_app(&state, &headers, &org, &name).await?;
    let scaling = body.apply(&app.scaling);
    let limits = state.node.limits;
    if let Some(problem) = scaling
        .problem()
        .or_else(|| limits.problem(&scaling, &app.scaling))
    {
        return Err(ApiError::bad_request(problem));
    }
    if scaling.reserved_capacity > app.scaling.reserved_capacity {
        let others = store::reserved_elsewhere(&state.db, &org, &name).await?;
        if let Some(problem) = limits.reserve_problem(scaling.reserved_capacity, others) {
            return Err(ApiError::bad_request(problem));
        }
    }
    store::set_scaling(&state.db, &org, &name, &scaling).await?;
    state
        .wasm_slots
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&(org.clone(), name.clone()));
    state.node.invalidate(&org, &name);
    state.node.reconcile(&state).await;
    Ok(Json(scaling))
}

/// Change what the app's instances may reach on the network; takes effect at once (instances
/// started before finish their requests, then stop, as after a publish).
#[utoipa::path(put, path = "/v1/apps/{org}/{app}/network", tag = "apps", security(("token" = [])),
    params(("org" = String, Path), ("app" = String, Path)),
    request_body = api::NetworkConfig,
    responses(
        (status = 200, body = api::NetworkConfig),
        (status = 409, body = api::ErrorBody, description = "this node cannot give instances internet access"),
    ))]
async fn set_network(
    AxState(state): S,
    headers: HeaderMap,
    Path((org, name)): Path<(String, String)>,
    JsonBody(body): JsonBody<api::NetworkConfig>,
) -> ApiResult<Json<api::NetworkConfig>> {
    owned_app(&state, &headers, &org, &name).await?;
    if body.egress
        && let Some(sandbox) = state.sandbox.clone()
    {
        // Installs the node's rules the first time; a node that cannot says why now, not at
        // the app's next cold start.
        tokio::task::spawn_blocking(move || sandbox.enable_egress())
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| {
                ApiError::conflict(format!(
                    "this server cannot give instances internet access: {e}"
                ))
            })?;
    }
    store::set_network(&state.db, &org, &name, &body).await?;
    state.node.invalidate(&org, &name);
    state.node.reconcile(&state).await;
    Ok(Json(body))
}

/// Upload source into the draft slot (version 0), replacing what was there.
#[utoipa::path(put, path = "/v1/apps/{org}/{app}/draft", tag = "drafts", security(("token" = [])),
    params(("org" = String, Path), ("app" = String, Path), api::SaveDraftParams),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "a .tar.gz or .zip of the project (Cargo.toml and src/), or one source file"),
    responses((status = 200, body = api::DraftSaved), (status = 400, body = api::ErrorBody),
        (status = 413, body = api::ErrorBody)))]
async fn save_draft(
    AxState(state): S,
    headers: HeaderMap,
    Path((org, name)): Path<(String, String)>,
    Query(q): Query<api::SaveDraftParams>,
    body: axum::body::Body,
) -> ApiResult<Json<api::DraftSaved>> {
    let app = owned_app(&state, &headers, &org, &name).await?;
    let body = read_payload(
        &headers,
        body,
        UPLOAD_LIMIT,
        "upload the project without its target/ directory (`dodil ignite draft save` leaves it out)",
    )
    .await?;
    let runtime = q.runtime.unwrap_or_else(|| app.runtime.clone());
    if runtime != "rust" {
        return Err(ApiError::bad_request(format!(
            "unsupported runtime {runtime:?}: use --runtime rust"
        )));
    }
    let rust_target = match q.rust_target.as_deref() {
        Some(t @ ("native" | "wasm")) => t.to_string(),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid --rust-target {other:?}: pass --rust-target native (or wasm)"
            )));
        }
        None => {
            return Err(ApiError::bad_request(
                "--rust-target is required for Rust: pass --rust-target native (or wasm)",
            ));
        }
    };
    if let Some(toolchain) = q.toolchain.as_deref() {
        check_toolchain(toolchain).await?;
    }
    let kind = q.kind.unwrap_or_else(|| "archive".into());
    if kind != "archive" && kind != "file" {
        return Err(ApiError::bad_request(format!(
            "invalid source kind {kind:?}: archive or file"
        )));
    }
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the uploaded source is empty; point --code at your project",
        ));
    }
    if kind == "archive" {
        // Refuse a hostile or broken archive now, not at compile time.
        let probe = tempdir_in(&state.config.data_dir.join("builds"))
            .map_err(|e| ApiError::internal(format!("could not make a scratch directory: {e}")))?;
        let checked = ignite_builder::archive::unpack(&body, &probe, builds::SOURCE_CAP);
        let _ = std::fs::remove_dir_all(&probe);
        checked.map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    let digest = state
        .oci
        .put_blob(&body)
        .map_err(|e| ApiError::internal(format!("could not store the source: {e}")))?;
    store::save_draft(
        &state.db,
        &org,
        &name,
        store::DraftSource {
            runtime: &runtime,
            rust_target: &rust_target,
            toolchain: q.toolchain.as_deref(),
            source_digest: &digest,
            source_kind: &kind,
        },
    )
    .await?;
    let draft = store::get_version(&state.db, &org, &name, 0).await?;
    Ok(Json(api::DraftSaved {
        id: format!("{org}:{name}"),
        version: 0,
        draft,
    }))
}

fn tempdir_in(parent: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    let dir = parent.join(format!("upload-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn check_toolchain(toolchain: &str) -> ApiResult<()> {
    let out = tokio::process::Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .await
        .map_err(|e| ApiError::internal(format!("could not list toolchains: {e}")))?;
    let list = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let matches = installed
        .iter()
        .any(|t| *t == toolchain || t.starts_with(&format!("{toolchain}-")));
    if matches {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "toolchain {toolchain:?} is not installed on this platform; installed: {}",
            installed.join(", ")
        )))
    }
}

fn no_source(org: &str, name: &str) -> ApiError {
    ApiError::conflict(format!(
        "the draft of {org}:{name} has no source; run `dodil ignite draft save {org}:{name} --code ./ --runtime rust --rust-target native` first"
    ))
}

/// Compile the Rust draft in the background; follow it with `compile-logs`.
#[utoipa::path(post, path = "/v1/apps/{org}/{app}/draft/compile", tag = "drafts",
    security(("token" = [])),
    params(("org" = String, Path), ("app" = String, Path)),
    responses((status = 202, body = api::CompileStarted), (status = 409, body = api::ErrorBody),
        (status = 501, body = api::ErrorBody, description = "--rust-target wasm on a server without Wasmtime")))]
async fn compile(
    AxState(state): S,
    headers: HeaderMap,
    Path((org, name)): Path<(String, String)>,
) -> ApiResult<(StatusCode, Json<api::CompileStarted>)> {
    owned_app(&state, &headers, &org, &name).await?;
    let draft = store::get_version(&state.db, &org, &name, 0)
        .await?
        .ok_or_else(|| no_source(&org, &name))?;
    if draft.rust_target.as_deref() == Some("wasm") && state.wasm.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "unimplemented",
            "this server could not start Wasmtime (see its log), so --rust-target wasm cannot \
             run here; save the draft with --rust-target native",
        ));
    }
    if draft.compile_status == "compiling" {
        return Err(ApiError::conflict(format!(
            "a compile of {org}:{name} is already running; follow it with `dodil ignite draft compile-logs {org}:{name}`"
        )));
    }
    let build_id = builds::start(state.clone(), &org, &name, &draft).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(api::CompileStarted {
            id: format!("{org}:{name}"),
            build_id,
            status: "compiling".into(),
        }),
    ))
}

/// The draft's latest compile log as newline-delimited JSON: a `{"line"}` per log line, then
/// `{"status", "error"}`. With `follow=true` the stream stays open until the compile ends.
#[utoipa::path(get, path = "/v1/apps/{org}/{app}/draft/compile-logs", tag = "drafts",
    security(("token" = [])),
    params(("org" = String, Path), ("app" = String, Path), api::LogsParams),
    responses((status = 200, content_type = "application/x-ndjson", body = api::LogEvent),
        (status = 404, body = api::ErrorBody)))]
async fn compile_logs(
    AxState(state): S,
    headers: HeaderMap,
    Path((org, name)): Path<(String, String)>,
    Query(q): Query<api::LogsParams>,
) -> ApiResult<Response> {
    owned_app(&state, &headers, &org, &name).await?;
    let draft = store::get_version(&state.db, &org, &name, 0).await?;
    let Some(build_id) = draft.and_then(|d| d.build_id) else {
        return Err(ApiError::not_found(format!(
            "{org}:{name} has not been compiled yet; run `dodil ignite draft compile {org}:{name}`"
        )));
    };
    let follow = q.follow.unwrap_or(false);
    let line = |l: String| api::LogEvent {
        line: Some(l),
        ..Default::default()
    };
    if let Some(live) = state.builds.live(&build_id) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
        tokio::spawn(async move {
            let mut sent = 0;
            loop {
                let notified = live.changed.notified();
                let (lines, done) = {
                    let lines = live.lines.lock().unwrap_or_else(|p| p.into_inner());
                    let done = live.done.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    (lines[sent..].to_vec(), done)
                };
                sent += lines.len();
                for l in lines {
                    if tx.send(Ok(ndjson(&line(l)))).await.is_err() {
                        return;
                    }
                }
                let end = match done {
                    Some((status, error)) => api::LogEvent {
                        status: Some(status),
                        error,
                        ..Default::default()
                    },
                    None if !follow => api::LogEvent {
                        status: Some("running".into()),
                        ..Default::default()
                    },
                    None => {
                        let _ = tokio::time::timeout(Duration::from_millis(500), notified).await;
                        continue;
                    }
                };
                let _ = tx.send(Ok(ndjson(&end))).await;
                return;
            }
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        return Ok((
            [("content-type", "application/x-ndjson")],
            Body::from_stream(stream),
        )
            .into_response());
    }
    let (status, error, log) = store::get_build(&state.db, &build_id)
        .await?
        .ok_or_else(|| ApiError::internal("the build record is missing"))?;
    let mut out = Vec::new();
    for l in log.lines() {
        out.extend_from_slice(&ndjson(&line(l.to_string())));
    }
    out.extend_from_slice(&ndjson(&api::LogEvent {
        status: Some(status),
        error,
        ..Default::default()
    }));
    Ok(([("content-type", "application/x-ndjson")], out).into_response())
}

fn ndjson(v: &impl serde::Serialize) -> Bytes {
    let mut line = serde_json::to_vec(v).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// Cut a new immutable version from the compiled draft and make it active.
#[utoipa::path(post, path = "/v1/apps/{org}/{app}/draft/publish", tag = "drafts",
    security(("token" = [])),
    params(("org" = String, Path), ("app" = String, Path)),
    responses((status = 200, body = api::Published),
        (status = 409, body = api::ErrorBody, description = "the draft isn't compiled")))]
async fn publish(
    AxState(state): S,
    headers: HeaderMap,
    Path((org, name)): Path<(String, String)>,
) -> ApiResult<Json<api::Published>> {
    let app = owned_app(&state, &headers, &org, &name).await?;
    let draft = store::get_version(&state.db, &org, &name, 0)
        .await?
        .ok_or_else(|| no_source(&org, &name))?;
    match draft.compile_status.as_str() {
        "compiled" => {}
        "compiling" => {
            return Err(ApiError::conflict(format!(
                "the draft of {org}:{name} is still compiling; wait for `dodil ignite draft compile-logs {org}:{name}` to finish, then publish"
            )));
        }
        "failed" | "timed_out" => {
            return Err(ApiError::conflict(format!(
                "the draft of {org}:{name} isn't compiled: its last compile {} ({}); fix it, then run `dodil ignite draft compile {org}:{name}`",
                if draft.compile_status == "failed" {
                    "failed"
                } else {
                    "timed out"
                },
                draft.compile_error.unwrap_or_default()
            )));
        }
        _ => {
            return Err(ApiError::conflict(format!(
                "the draft of {org}:{name} isn't compiled: Rust drafts need an explicit compile step; run `dodil ignite draft compile {org}:{name}` before publishing"
            )));
        }
    }
    let version = store::publish(&state.db, &org, &name, &app.env).await?;
    state.node.invalidate(&org, &name);
    // New requests go to the new version now; the old one drains; reserved capacity starts.
    state.node.reconcile(&state).await;
    Ok(Json(api::Published {
        id: format!("{org}:{name}"),
        version,
        active_version: version,
        public_urls: vec![state.public_url(&org, &name)],
    }))
}

/// The draft and every published version.
#[utoipa::path(get, path = "/v1/apps/{org}/{app}/versions", tag = "versions",
    security(("token" = [])),
    params(("org" = String, Path), ("app" = String, Path)),
    responses((status = 200, body = api::VersionList), (status = 404, body = api::ErrorBody)))]
async fn list_versions(
    AxState(state): S,
    headers: HeaderMap,
    Path((org, name)): Path<(String, String)>,
) -> ApiResult<Json<api::VersionList>> {
    let app = owned_app(&state, &headers, &org, &name).await?;
    let versions = store::list_versions(&state.db, &org, &name).await?;
    Ok(Json(api::VersionList {
        active_version: app.active_version,
        versions,
    }))
}

/// Make a published version active again.
#[utoipa::path(post, path = "/v1/apps/{org}/{app}/rollback", tag = "versions",
    security(("token" = [])),
    params(("org" = String, Path), ("app" = String, Path)),
    request_body = api::Rollback,
    responses((status = 200, body = api::RolledBack), (status = 400, body = api::ErrorBody),
        (status = 404, body = api::ErrorBody)))]
async fn rollback(
    AxState(state): S,
    headers: HeaderMap,
    Path((org, name)): Path<(String, String)>,
    JsonBody(body): JsonBody<api::Rollback>,
) -> ApiResult<Json<api::RolledBack>> {
    owned_app(&state, &headers, &org, &name).await?;
    if body.version < 1 {
        return Err(ApiError::bad_request(
            "version 0 is the draft and cannot be made active; roll back to a published version (1, 2, …)",
        ));
    }
    if store::get_version(&state.db, &org, &name, body.version)
        .await?
        .is_none()
    {
        let versions = store::list_versions(&state.db, &org, &name).await?;
        let published: Vec<String> = versions
            .iter()
            .filter(|v| v.version > 0)
            .map(|v| v.version.to_string())
            .collect();
        return Err(ApiError::not_found(format!(
            "{org}:{name} has no version {}; published versions: {}",
            body.version,
            if published.is_empty() {
                "none".to_string()
            } else {
                published.join(", ")
            }
        )));
    }
    store::set_active(&state.db, &org, &name, body.version).await?;
    state.node.invalidate(&org, &name);
    state.node.reconcile(&state).await;
    Ok(Json(api::RolledBack {
        id: format!("{org}:{name}"),
        active_version: body.version,
    }))
}

/// The request as the handler will see it.
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Runs one request on the app's active version and records its execution. The response is the
/// handler's, or an error response that says what happened.
///
/// The work runs in a task of its own: a caller that goes away mid-request (a closed connection
/// drops the HTTP handler's future) must neither leak the instance it holds nor leave its
/// execution `running`.
pub async fn execute(
    state: Arc<State>,
    route: Arc<Route>,
    req: HttpRequest,
    trigger: &'static str,
) -> Response {
    let task = tokio::spawn(async move { run_execution(&state, &route, req, trigger).await });
    match task.await {
        Ok(response) => response,
        Err(e) => {
            tracing::error!("an invocation task failed: {e}");
            ApiError::internal("the invocation failed inside the platform; retry it")
                .into_response()
        }
    }
}

async fn run_execution(state: &State, route: &Route, req: HttpRequest, trigger: &str) -> Response {
    let app = &route.app;
    let (org, name) = (app.org.as_str(), app.name.as_str());
    let Some(version) = route.version.as_ref() else {
        return ApiError::conflict(format!(
            "{org}:{name} has no published version yet; run `dodil ignite draft publish {org}:{name}`"
        ))
        .into_response();
    };
    let label = app_label(org, name);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(u64::from(app.scaling.timeout_s));
    let id = ulid::Ulid::new().to_string();
    let mut record = Execution {
        id: id.clone(),
        org: org.into(),
        app: name.into(),
        version: version.version,
        status: "running".into(),
        trigger: trigger.into(),
        started_at: store::now_ms(),
        finished_at: None,
        cold_start_ms: None,
        init_ms: None,
        queue_ms: None,
        fetch_ms: None,
        spawn_ms: None,
        duration_ms: None,
        billed_duration_ms: None,
        response_status: None,
        error: None,
        logs: vec![],
    };
    if version.artifact_target.as_deref() == Some(ignite_builder::WASM_TARGET) {
        return run_wasm(state, route, version, req, record, started, deadline).await;
    }
    let lease = match state.node.acquire(state, route, version, deadline).await {
        Ok(lease) => lease,
        Err(AcquireError::QueueFull { depth }) => return throttled(state, app, &label, depth),
        Err(AcquireError::Deadline { waited }) => {
            return queue_timeout(state, app, record, started, waited);
        }
        Err(AcquireError::NodeFull { instances }) => return node_full(app, instances),
        Err(AcquireError::Spawn(e)) => {
            record.logs = e.logs().map(|l| l.lines.clone()).unwrap_or_default();
            let message = format!("the instance did not start: {e}");
            let failure = Failure::platform(
                "crashed",
                StatusCode::BAD_GATEWAY,
                "handler_crashed",
                message,
            );
            return finish(state, record, started, None, Err(failure));
        }
    };
    record.queue_ms = Some(lease.queued.as_secs_f64() * 1e3);
    if let Some(cold) = &lease.cold {
        count_cold_start(state, &label, cold.total());
        record.fetch_ms = Some(cold.fetch.as_secs_f64() * 1e3);
        record.spawn_ms = Some(cold.spawn.as_secs_f64() * 1e3);
        record.init_ms = Some(cold.init.as_secs_f64() * 1e3);
    }
    record.cold_start_ms = Some(lease.cold.map_or(0.0, |c| c.total().as_secs_f64() * 1e3));
    // The running record is visible at once and written only if the request runs long; the
    // final one is written behind the answer.
    state.recorder.begin(&record);
    let reply = lease
        .instance
        .invoke(invocation(&id, app, version, deadline, req))
        .await;
    state.node.release(lease);
    conclude(state, app, &label, record, started, reply)
}

/// What the handler is asked to run (native or wasm): the request, the version's environment,
/// the deadline.
fn invocation(
    execution_id: &str,
    app: &App,
    version: &store::Version,
    deadline: Instant,
    req: HttpRequest,
) -> Invocation {
    Invocation {
        execution_id: execution_id.to_string(),
        function_id: format!("{}/{}", app.org, app.name),
        env: version
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        deadline: Some(deadline),
        method: req.method,
        path: req.path,
        query: req.query,
        headers: req.headers,
        body: req.body,
    }
}

/// A wasm handler's request: a fresh instance of the version's component (see `ignite-wasm`).
/// `max_instances` caps the instances of the app that run at once; a request waits for one
/// under its deadline.
async fn run_wasm(
    state: &State,
    route: &Route,
    version: &store::Version,
    req: HttpRequest,
    mut record: Execution,
    started: Instant,
    deadline: Instant,
) -> Response {
    let app = &route.app;
    let (org, name) = (app.org.as_str(), app.name.as_str());
    let label = app_label(org, name);
    let (Some(host), Some(digest)) = (&state.wasm, version.artifact_digest.as_deref()) else {
        let failure = Failure::platform(
            "crashed",
            StatusCode::BAD_GATEWAY,
            "handler_crashed",
            "this server cannot run wasm handlers (Wasmtime did not start; see its log)".into(),
        );
        return finish(state, record, started, None, Err(failure));
    };
    let slots = state
        .wasm_slots
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry((org.to_string(), name.to_string()))
        .or_insert_with(|| Arc::new(crate::WasmSlots::new(app.scaling.max_instances)))
        .clone();
    let permit = match slots.running.clone().try_acquire_owned() {
        Ok(permit) => Some(permit),
        // All busy: wait in the app's bounded queue, as a native request does.
        Err(_) => {
            let depth = app.scaling.queue_depth;
            let ahead = slots
                .waiting
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            let waited = if ahead >= depth as usize {
                None
            } else {
                let wait = slots.running.clone().acquire_owned();
                Some(tokio::time::timeout_at(deadline.into(), wait).await)
            };
            slots
                .waiting
                .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            match waited {
                None => return throttled(state, app, &label, depth),
                Some(Ok(Ok(permit))) => Some(permit),
                Some(_) => None,
            }
        }
    };
    let Some(permit) = permit else {
        return queue_timeout(state, app, record, started, started.elapsed());
    };
    record.queue_ms = Some(started.elapsed().as_secs_f64() * 1e3);
    state.recorder.begin(&record);
    let egress = app.network.egress;
    if egress
        && !host.egress_enabled()
        && let Err(e) = enable_wasm_egress(state).await
    {
        let failure = Failure::platform(
            "crashed",
            StatusCode::BAD_GATEWAY,
            "handler_crashed",
            format!("internet access for {org}:{name} could not be prepared: {e}"),
        );
        return finish(state, record, started, None, Err(failure));
    }
    let limits = ignite_wasm::WasmLimits {
        memory_mb: u64::from(app.scaling.memory_mb),
        timeout: deadline.saturating_duration_since(Instant::now()),
        egress,
    };
    let invocation = invocation(&record.id, app, version, deadline, req);
    let blob = state.oci.blob_path(digest);
    let (reply, start) = host.invoke(digest, &blob, limits, invocation).await;
    drop(permit);
    // Every request is a fresh instance: its cold start is loading (first request of a version
    // on this node) plus instantiating.
    let cold = start.load + start.instantiate;
    count_cold_start(state, &label, cold);
    record.fetch_ms = Some(start.load.as_secs_f64() * 1e3);
    record.spawn_ms = Some(start.instantiate.as_secs_f64() * 1e3);
    record.init_ms = Some(0.0);
    record.cold_start_ms = Some(cold.as_secs_f64() * 1e3);
    conclude(state, app, &label, record, started, reply)
}

/// A request whose deadline passed while it waited for an instance (native or wasm): 504,
/// recorded as `timeout` with its wait.
fn queue_timeout(
    state: &State,
    app: &App,
    mut record: Execution,
    started: Instant,
    waited: Duration,
) -> Response {
    record.queue_ms = Some(waited.as_secs_f64() * 1e3);
    let message = format!(
        "no instance of {}:{} became free within the {}s deadline (waited {:.0} ms; all {} \
         instances were busy)",
        app.org,
        app.name,
        app.scaling.timeout_s,
        waited.as_secs_f64() * 1e3,
        app.scaling.max_instances
    );
    let failure = Failure::new(
        "timeout",
        StatusCode::GATEWAY_TIMEOUT,
        "deadline_exceeded",
        message,
    );
    finish(state, record, started, None, Err(failure))
}

/// A request refused because the app's instances are busy and its queue is full: 429 with
/// `Retry-After`, not an execution (like a Lambda throttle).
fn throttled(state: &State, app: &App, label: &crate::metrics::Labels, depth: u32) -> Response {
    state.node.metrics.throttled.get_or_create(label).inc();
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "resource_exhausted",
        format!(
            "{}:{} is at max_instances ({}) and {depth} requests are already waiting; retry \
             shortly, or raise its limits with `dodil ignite app scale`",
            app.org, app.name, app.scaling.max_instances
        ),
    )
    .into_response();
    response
        .headers_mut()
        .insert("retry-after", axum::http::HeaderValue::from_static("1"));
    response
}

/// A cold start the node has no room for: every one of its instances is busy. 503 with
/// `Retry-After` to the app that asked, not an execution (as a throttle).
fn node_full(app: &App, instances: u32) -> Response {
    let mut response = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        format!(
            "{}:{} needs one more instance, but all {instances} instances this node holds are \
             busy; retry shortly",
            app.org, app.name
        ),
    )
    .into_response();
    response
        .headers_mut()
        .insert("retry-after", axum::http::HeaderValue::from_static("1"));
    response
}

/// Gives wasm components outgoing HTTP: from one of the sandbox's egress namespaces (the
/// instances' filter), or the server's own network without the sandbox.
async fn enable_wasm_egress(state: &State) -> std::io::Result<()> {
    let sandbox = state.sandbox.clone();
    let netns = tokio::task::spawn_blocking(move || sandbox.map(|s| s.egress_netns()).transpose())
        .await
        .map_err(std::io::Error::other)??;
    match &state.wasm {
        Some(host) => host.enable_egress(netns),
        None => Ok(()),
    }
}

fn count_cold_start(state: &State, label: &crate::metrics::Labels, total: Duration) {
    state.node.metrics.cold_starts.get_or_create(label).inc();
    state
        .node
        .metrics
        .cold_start
        .get_or_create(label)
        .observe(total.as_secs_f64());
}

/// Ends an execution from its reply (native or wasm): its logs, the duration metric, the
/// caller's answer and the record.
fn conclude(
    state: &State,
    app: &App,
    label: &crate::metrics::Labels,
    mut record: Execution,
    started: Instant,
    reply: Reply,
) -> Response {
    record.logs = reply.logs.lines;
    if reply.logs.dropped_bytes > 0 {
        record.logs.push(format!(
            "[{} bytes of log dropped: over the per-execution limit]",
            reply.logs.dropped_bytes
        ));
    }
    state
        .node
        .metrics
        .duration
        .get_or_create(label)
        .observe(reply.duration.as_secs_f64());
    let answer = answer_of(app, reply.outcome);
    finish(state, record, started, Some(reply.duration), answer)
}

/// The caller's answer (or the failure to record) for how an invocation ended; the same for
/// native and wasm handlers.
fn answer_of(app: &App, outcome: Outcome) -> Result<(StatusCode, Response), Failure> {
    match outcome {
        Outcome::Response {
            status,
            headers,
            body,
        } => {
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let mut resp = Response::builder().status(code);
            for (k, v) in headers {
                resp = resp.header(k, v);
            }
            let resp = resp
                .body(Body::from(body))
                .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response());
            Ok((code, resp))
        }
        Outcome::HandlerError { status, message } => {
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Err(Failure::new("failed", code, "handler_error", message))
        }
        Outcome::Panicked { message } => Err(Failure::new(
            "failed",
            StatusCode::INTERNAL_SERVER_ERROR,
            "handler_panicked",
            message,
        )),
        Outcome::TimedOut { after } => Err(Failure::new(
            "timeout",
            StatusCode::GATEWAY_TIMEOUT,
            "deadline_exceeded",
            format!(
                "the handler did not answer within its {}s deadline and was stopped (after {:.0} ms)",
                app.scaling.timeout_s,
                after.as_secs_f64() * 1e3
            ),
        )),
        Outcome::Crashed { exit } => Err(Failure::new(
            "crashed",
            StatusCode::BAD_GATEWAY,
            "handler_crashed",
            format!("the handler crashed ({exit})"),
        )),
        Outcome::OutOfMemory { exit } => Err(Failure::new(
            "oom",
            StatusCode::BAD_GATEWAY,
            "out_of_memory",
            format!(
                "the handler ran out of memory: it was killed at its {} MiB limit ({exit}); raise \
                 it with `dodil ignite app scale {}:{} --memory <MiB>`",
                app.scaling.memory_mb, app.org, app.name
            ),
        )),
        Outcome::FramingError { message } => Err(Failure::new(
            "crashed",
            StatusCode::BAD_GATEWAY,
            "framing_error",
            message,
        )),
    }
}

/// How an execution failed: its recorded status, and the error response the caller gets.
struct Failure {
    status: &'static str,
    code: StatusCode,
    kind: &'static str,
    message: String,
    /// The message tells of the platform's insides (host paths, OS errors): the record keeps
    /// it for the owner; a public (gateway) caller gets a short reason and the execution id.
    internal: bool,
}

impl Failure {
    /// A failure the handler caused and may know about (its own error, a panic, a deadline).
    fn new(status: &'static str, code: StatusCode, kind: &'static str, message: String) -> Self {
        Failure {
            status,
            code,
            kind,
            message,
            internal: false,
        }
    }

    /// A failure whose details are the platform's own.
    fn platform(
        status: &'static str,
        code: StatusCode,
        kind: &'static str,
        message: String,
    ) -> Self {
        Failure {
            internal: true,
            ..Failure::new(status, code, kind, message)
        }
    }

    /// What a caller of `trigger` is told.
    fn answer(&self, trigger: &str, execution_id: &str) -> String {
        if self.internal && trigger == "http" {
            format!(
                "the app could not serve this request (a platform failure); its owner can see \
                 why with `dodil ignite execution get {execution_id}`"
            )
        } else {
            self.message.clone()
        }
    }
}

/// Completes an execution record from its answer (or failure), hands it to the recorder and
/// stamps the response with the execution id.
fn finish(
    state: &State,
    mut record: Execution,
    started: Instant,
    duration: Option<Duration>,
    answer: Result<(StatusCode, Response), Failure>,
) -> Response {
    let (status, mut response) = match answer {
        Ok((code, response)) => {
            record.status = "succeeded".into();
            (code, response)
        }
        Err(f) => {
            record.status = f.status.into();
            let answer = f.answer(&record.trigger, &record.id);
            let response = ApiError::new(f.code, f.kind, answer).into_response();
            record.error = Some(f.message);
            (f.code, response)
        }
    };
    let label = app_label(&record.org, &record.app);
    let duration_ms = duration.map_or(0.0, |d| d.as_secs_f64() * 1e3);
    record.duration_ms = Some(duration_ms);
    record.finished_at = Some(store::now_ms());
    record.response_status = Some(i64::from(status.as_u16()));
    let billed = duration_ms + record.init_ms.unwrap_or(0.0);
    record.billed_duration_ms = Some(billed.ceil().max(1.0) as i64);
    let mut status_label = label;
    status_label.push(("status".into(), record.status.clone()));
    state
        .node
        .metrics
        .invocations
        .get_or_create(&status_label)
        .inc();
    state.recorder.record(&record);
    tracing::debug!(id = %record.id, total_ms = started.elapsed().as_secs_f64() * 1e3, "executed");
    if let Ok(v) = record.id.parse() {
        response.headers_mut().insert("x-ignite-execution-id", v);
    }
    response
}

/// Call the app's active version with a JSON payload. The answer is the handler's own (status,
/// headers, body) with `x-ignite-execution-id`; 502 when it crashed, 504 past its deadline.
#[utoipa::path(post, path = "/v1/apps/{org}/{app}/invoke", tag = "invoke",
    security(("token" = [])),
    params(("org" = String, Path), ("app" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/json", description = "the payload"),
    responses(
        (status = 200, description = "the handler's response"),
        (status = 404, body = api::ErrorBody),
        (status = 409, body = api::ErrorBody, description = "nothing published yet"),
        (status = 413, body = api::ErrorBody),
        (status = 502, body = api::ErrorBody, description = "the handler crashed"),
        (status = 504, body = api::ErrorBody, description = "the handler passed its deadline"),
    ))]
async fn invoke(
    AxState(state): S,
    headers: HeaderMap,
    Path((org, name)): Path<(String, String)>,
    body: axum::body::Body,
) -> ApiResult<Response> {
    owned_app(&state, &headers, &org, &name).await?;
    let route = state
        .node
        .route(&state.db, &org, &name)
        .await?
        .ok_or_else(|| app_not_found(&org, &name))?;
    let body = read_payload(&headers, body, PAYLOAD_LIMIT, PAYLOAD_HINT).await?;
    let req = HttpRequest {
        method: "POST".into(),
        path: "/".into(),
        query: String::new(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.to_vec(),
    };
    Ok(execute(state, route, req, "api").await)
}

/// One execution: status, metrics and logs.
#[utoipa::path(get, path = "/v1/executions/{id}", tag = "executions", security(("token" = [])),
    params(("id" = String, Path, description = "the execution's ULID")),
    responses((status = 200, body = api::Execution), (status = 400, body = api::ErrorBody),
        (status = 404, body = api::ErrorBody)))]
async fn get_execution(
    AxState(state): S,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<api::Execution>> {
    let org = org_of(&state.db, &headers).await?;
    check_execution_id(&id)?;
    let pending = state.recorder.get(&org, &id);
    let stored = match pending {
        Some(e) => Some(e),
        None => store::get_execution(&state.db, &org, &id).await?,
    };
    let e = stored.ok_or_else(|| {
        ApiError::not_found(format!(
            "execution {id} not found; list recent ones with `dodil ignite execution list`"
        ))
    })?;
    Ok(Json(execution_view(&e)))
}

/// Reads a request body of at most `limit` bytes: a declared Content-Length over it is refused
/// before anything is read, a body that turns out longer as soon as it passes the limit.
pub async fn read_payload(
    headers: &HeaderMap,
    body: axum::body::Body,
    limit: usize,
    hint: &str,
) -> ApiResult<axum::body::Bytes> {
    let too_large = |size: String| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the request body is {size}; the limit is {limit} bytes ({} MiB): {hint}",
                limit >> 20
            ),
        )
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared
        && n > limit as u64
    {
        return Err(too_large(format!("{n} bytes")));
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large("over the limit".into()))
}

/// Execution ids are ULIDs; anything else is a mistake worth naming, not a missing record.
fn check_execution_id(id: &str) -> ApiResult<()> {
    if ulid::Ulid::from_string(id).is_err() {
        return Err(ApiError::bad_request(format!(
            "{id:?} is not an execution id: ids are 26-character ULIDs such as \
             01JD3X5W8N6QZ4V2K7M9P0RSTA, printed by `dodil ignite invoke` and \
             `dodil ignite execution list`"
        )));
    }
    Ok(())
}

pub fn execution_view(e: &Execution) -> api::Execution {
    api::Execution {
        id: e.id.clone(),
        app_id: format!("{}:{}", e.org, e.app),
        function_id: format!("{}/{}", e.org, e.app),
        version: e.version,
        status: e.status.clone(),
        trigger: e.trigger.clone(),
        started_at: e.started_at,
        finished_at: e.finished_at,
        response_status: e.response_status,
        error: e.error.clone(),
        metrics: api::Metrics {
            cold_start_ms: e.cold_start_ms,
            init_ms: e.init_ms,
            duration_ms: e.duration_ms,
            billed_duration_ms: e.billed_duration_ms,
            cold_start_phases: match (e.fetch_ms, e.spawn_ms, e.init_ms) {
                (Some(fetch_ms), Some(spawn_ms), Some(init_ms)) => Some(api::ColdStartPhases {
                    fetch_ms,
                    spawn_ms,
                    init_ms,
                }),
                _ => None,
            },
            queue_ms: e.queue_ms,
        },
        logs: e.logs.clone(),
    }
}

/// Recent executions, newest first, filtered by app, status and start time.
#[utoipa::path(get, path = "/v1/executions", tag = "executions", security(("token" = [])),
    params(api::ListExecutionsParams),
    responses((status = 200, body = api::ExecutionList)))]
async fn list_executions(
    AxState(state): S,
    headers: HeaderMap,
    Query(q): Query<api::ListExecutionsParams>,
) -> ApiResult<Json<api::ExecutionList>> {
    let org = org_of(&state.db, &headers).await?;
    let app = q.app.as_deref().map(|a| a.rsplit(':').next().unwrap_or(a));
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    // Records still on their way to the store are listed too. The snapshot is taken *before*
    // the store is read: the writer drops a record from memory only after committing it, so
    // every record is in the snapshot or in what the store returns.
    let pending = state
        .recorder
        .pending(&org, |e| app.is_none_or(|a| e.app == a));
    let stored = store::list_executions(
        &state.db,
        &org,
        store::ExecutionFilter {
            app,
            status: q.status.as_deref(),
            since: q.since,
            limit,
        },
    )
    .await?;
    let mut by_id: std::collections::HashMap<String, Execution> =
        stored.into_iter().map(|e| (e.id.clone(), e)).collect();
    for e in pending {
        // The in-memory copy is the newer one, unless it still says `running` and the store
        // already has how the execution ended (it finished after the snapshot).
        let store_has_the_end = by_id
            .get(&e.id)
            .is_some_and(|stored| stored.finished_at.is_some() && e.finished_at.is_none());
        if !store_has_the_end {
            by_id.insert(e.id.clone(), e);
        }
    }
    let mut list: Vec<Execution> = by_id
        .into_values()
        .filter(|e| {
            q.status.as_deref().is_none_or(|s| e.status == s)
                && q.since.is_none_or(|t| e.started_at >= t)
        })
        .collect();
    list.sort_by(|a, b| (b.started_at, &b.id).cmp(&(a.started_at, &a.id)));
    list.truncate(limit as usize);
    Ok(Json(api::ExecutionList {
        executions: list.iter().map(execution_view).collect(),
    }))
}

/// Mint a token for the caller's org (shown once).
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", security(("token" = [])),
    request_body = api::CreateToken,
    responses((status = 201, body = api::TokenCreated)))]
async fn create_token(
    AxState(state): S,
    headers: HeaderMap,
    JsonBody(body): JsonBody<api::CreateToken>,
) -> ApiResult<(StatusCode, Json<api::TokenCreated>)> {
    let org = org_of(&state.db, &headers).await?;
    let (id, secret, token) = crate::auth::mint_token().map_err(|e| {
        ApiError::internal(format!(
            "cannot mint a token: the OS random source failed: {e}"
        ))
    })?;
    store::insert_token(
        &state.db,
        &id,
        &org,
        &body.name,
        &crate::auth::hash_secret(&secret),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(api::TokenCreated {
            id,
            name: body.name,
            token,
        }),
    ))
}

/// The org's tokens (never their secrets).
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", security(("token" = [])),
    responses((status = 200, body = api::TokenList)))]
async fn list_tokens(AxState(state): S, headers: HeaderMap) -> ApiResult<Json<api::TokenList>> {
    let org = org_of(&state.db, &headers).await?;
    let tokens = store::list_tokens(&state.db, &org).await?;
    Ok(Json(api::TokenList {
        tokens: tokens
            .into_iter()
            .map(|t| api::Token {
                id: t.id,
                name: t.name,
                created_at: t.created_at,
                revoked_at: t.revoked_at,
            })
            .collect(),
    }))
}

/// Revoke a token of the caller's org.
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens", security(("token" = [])),
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = api::ErrorBody)))]
async fn revoke_token(
    AxState(state): S,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let org = org_of(&state.db, &headers).await?;
    if store::revoke_token(&state.db, &org, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "token {id} not found; see `dodil ignite token list`"
        )))
    }
}
