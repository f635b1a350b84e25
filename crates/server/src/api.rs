//! The HTTP+JSON API (`/v1/...`). Every route but `/healthz` needs a bearer token, and every
//! object is looked up within the token's org.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use ignite_agent::{Invocation, Outcome, SpawnConfig};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::State;
use crate::auth::org_of;
use crate::builds::{self, blob_path};
use crate::error::{ApiError, ApiResult};
use crate::store::{self, App, Execution};

type S = AxState<Arc<State>>;

/// Largest upload (`draft save`) and invoke payload.
const UPLOAD_LIMIT: usize = 32 * 1024 * 1024;
const PAYLOAD_LIMIT: usize = 6 * 1024 * 1024;
/// Per-request deadline until apps carry their own.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/apps", post(create_app).get(list_apps))
        .route("/v1/apps/{org}/{app}", get(get_app).delete(delete_app))
        .route("/v1/apps/{org}/{app}/env", put(set_env))
        .route(
            "/v1/apps/{org}/{app}/draft",
            put(save_draft).layer(DefaultBodyLimit::max(UPLOAD_LIMIT)),
        )
        .route("/v1/apps/{org}/{app}/draft/compile", post(compile))
        .route("/v1/apps/{org}/{app}/draft/compile-logs", get(compile_logs))
        .route("/v1/apps/{org}/{app}/draft/publish", post(publish))
        .route("/v1/apps/{org}/{app}/versions", get(list_versions))
        .route("/v1/apps/{org}/{app}/rollback", post(rollback))
        .route(
            "/v1/apps/{org}/{app}/invoke",
            post(invoke).layer(DefaultBodyLimit::max(PAYLOAD_LIMIT)),
        )
        .route("/v1/executions", get(list_executions))
        .route("/v1/executions/{id}", get(get_execution))
        .route("/v1/tokens", post(create_token).get(list_tokens))
        .route("/v1/tokens/{id}", axum::routing::delete(revoke_token))
        .with_state(state)
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

fn app_view(
    state: &State,
    app: &App,
    draft: Option<&store::Version>,
    active: Option<&store::Version>,
) -> Value {
    let public_urls: Vec<String> = if app.active_version.is_some() {
        vec![state.public_url(&app.org, &app.name)]
    } else {
        vec![]
    };
    json!({
        "id": format!("{}:{}", app.org, app.name),
        "org": app.org,
        "name": app.name,
        "runtime": app.runtime,
        "description": app.description,
        "active_version": app.active_version,
        "public_urls": public_urls,
        "env": app.env.iter().cloned().collect::<std::collections::BTreeMap<String, String>>(),
        "draft": draft,
        "artifact": active.map(|v| json!({
            "digest": v.artifact_digest, "size": v.artifact_size, "target": v.artifact_target,
        })),
        "created_at": app.created_at,
    })
}

#[derive(Deserialize)]
struct CreateApp {
    name: String,
    runtime: String,
    #[serde(default)]
    description: String,
}

async fn create_app(
    AxState(state): S,
    headers: HeaderMap,
    Json(body): Json<CreateApp>,
) -> ApiResult<Response> {
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
    if !store::create_app(
        &state.db,
        &org,
        &body.name,
        &body.runtime,
        &body.description,
    )
    .await?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_exists",
            format!("app {org}:{} already exists", body.name),
        ));
    }
    let app = store::get_app(&state.db, &org, &body.name)
        .await?
        .ok_or_else(|| ApiError::internal("the app vanished after creation"))?;
    Ok((
        StatusCode::CREATED,
        Json(app_view(&state, &app, None, None)),
    )
        .into_response())
}

async fn list_apps(AxState(state): S, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let org = org_of(&state.db, &headers).await?;
    let apps = store::list_apps(&state.db, &org).await?;
    Ok(Json(json!({
        "apps": apps.iter().map(|a| app_view(&state, a, None, None)).collect::<Vec<_>>()
    })))
}

async fn get_app(
    AxState(state): S,
    headers: HeaderMap,
    Path((org, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
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

async fn delete_app(
    AxState(state): S,
    headers: HeaderMap,
    Path((org, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    owned_app(&state, &headers, &org, &name).await?;
    store::delete_app(&state.db, &org, &name).await?;
    state.node.evict_app(&org, &name).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct SetEnv {
    env: std::collections::BTreeMap<String, String>,
}

async fn set_env(
    AxState(state): S,
    headers: HeaderMap,
    Path((org, name)): Path<(String, String)>,
    Json(body): Json<SetEnv>,
) -> ApiResult<Json<Value>> {
    owned_app(&state, &headers, &org, &name).await?;
    for key in body.env.keys() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(ApiError::bad_request(format!(
                "invalid environment variable name {key:?}: no '=' or NUL, not empty"
            )));
        }
    }
    let env: Vec<(String, String)> = body.env.into_iter().collect();
    store::set_env(&state.db, &org, &name, &env).await?;
    Ok(Json(
        json!({ "env": env.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
                    "note": "environment changes take effect at the next draft publish" }),
    ))
}

#[derive(Deserialize)]
struct SaveDraft {
    runtime: Option<String>,
    rust_target: Option<String>,
    toolchain: Option<String>,
    /// `archive` (a .tar.gz of the project) or `file` (one source file: src/lib.rs).
    kind: Option<String>,
}

async fn save_draft(
    AxState(state): S,
    headers: HeaderMap,
    Path((org, name)): Path<(String, String)>,
    Query(q): Query<SaveDraft>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let app = owned_app(&state, &headers, &org, &name).await?;
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
        let checked = ignite_builder::archive::unpack_tar_gz(&body, &probe, builds::SOURCE_CAP);
        let _ = std::fs::remove_dir_all(&probe);
        checked.map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    let digest = format!("sha256:{:x}", <sha2::Sha256 as sha2::Digest>::digest(&body));
    let blob = blob_path(&state, &digest);
    if !blob.exists() {
        let tmp = blob.with_extension(format!("{}.tmp", ulid::Ulid::new()));
        std::fs::write(&tmp, &body)
            .and_then(|()| std::fs::rename(&tmp, &blob))
            .map_err(|e| ApiError::internal(format!("could not store the source: {e}")))?;
    }
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
    Ok(Json(
        json!({ "id": format!("{org}:{name}"), "version": 0, "draft": draft }),
    ))
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

async fn compile(
    AxState(state): S,
    headers: HeaderMap,
    Path((org, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    owned_app(&state, &headers, &org, &name).await?;
    let draft = store::get_version(&state.db, &org, &name, 0)
        .await?
        .ok_or_else(|| {
            ApiError::conflict(format!(
                "the draft of {org}:{name} has no source; run `dodil ignite draft save {org}:{name} --code ./ --runtime rust --rust-target native` first"
            ))
        })?;
    if draft.rust_target.as_deref() == Some("wasm") {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "unimplemented",
            "--rust-target wasm is not supported yet on this platform; save the draft with --rust-target native",
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
        Json(json!({ "id": format!("{org}:{name}"), "build_id": build_id, "status": "compiling" })),
    )
        .into_response())
}

#[derive(Deserialize)]
struct LogsQuery {
    follow: Option<bool>,
}

/// Newline-delimited JSON: `{"line": "..."}` per log line, then `{"status": ..., "error": ...}`.
async fn compile_logs(
    AxState(state): S,
    headers: HeaderMap,
    Path((org, name)): Path<(String, String)>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<Response> {
    owned_app(&state, &headers, &org, &name).await?;
    let draft = store::get_version(&state.db, &org, &name, 0).await?;
    let Some(build_id) = draft.and_then(|d| d.build_id) else {
        return Err(ApiError::not_found(format!(
            "{org}:{name} has not been compiled yet; run `dodil ignite draft compile {org}:{name}`"
        )));
    };
    let follow = q.follow.unwrap_or(false);
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
                for line in lines {
                    if tx.send(Ok(ndjson(&json!({ "line": line })))).await.is_err() {
                        return;
                    }
                }
                match done {
                    Some((status, error)) => {
                        let _ = tx
                            .send(Ok(ndjson(&json!({ "status": status, "error": error }))))
                            .await;
                        return;
                    }
                    None if !follow => {
                        let _ = tx.send(Ok(ndjson(&json!({ "status": "running" })))).await;
                        return;
                    }
                    None => {
                        let _ = tokio::time::timeout(Duration::from_millis(500), notified).await;
                    }
                }
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
    for line in log.lines() {
        out.extend_from_slice(&ndjson(&json!({ "line": line })));
    }
    out.extend_from_slice(&ndjson(&json!({ "status": status, "error": error })));
    Ok(([("content-type", "application/x-ndjson")], out).into_response())
}

fn ndjson(v: &Value) -> Bytes {
    let mut line = serde_json::to_vec(v).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

async fn publish(
    AxState(state): S,
    headers: HeaderMap,
    Path((org, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let app = owned_app(&state, &headers, &org, &name).await?;
    let draft = store::get_version(&state.db, &org, &name, 0).await?.ok_or_else(|| {
        ApiError::conflict(format!(
            "the draft of {org}:{name} has no source; run `dodil ignite draft save {org}:{name} --code ./ --runtime rust --rust-target native` first"
        ))
    })?;
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
    Ok(Json(json!({
        "id": format!("{org}:{name}"),
        "version": version,
        "active_version": version,
        "public_urls": [state.public_url(&org, &name)],
    })))
}

async fn list_versions(
    AxState(state): S,
    headers: HeaderMap,
    Path((org, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let app = owned_app(&state, &headers, &org, &name).await?;
    let versions = store::list_versions(&state.db, &org, &name).await?;
    Ok(Json(
        json!({ "active_version": app.active_version, "versions": versions }),
    ))
}

#[derive(Deserialize)]
struct Rollback {
    version: i64,
}

async fn rollback(
    AxState(state): S,
    headers: HeaderMap,
    Path((org, name)): Path<(String, String)>,
    Json(body): Json<Rollback>,
) -> ApiResult<Json<Value>> {
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
    Ok(Json(
        json!({ "id": format!("{org}:{name}"), "active_version": body.version }),
    ))
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
pub async fn execute(state: &State, app: &App, req: HttpRequest, trigger: &str) -> Response {
    let (org, name) = (app.org.as_str(), app.name.as_str());
    let Some(version_no) = app.active_version else {
        return ApiError::conflict(format!(
            "{org}:{name} has no published version yet; run `dodil ignite draft publish {org}:{name}`"
        ))
        .into_response();
    };
    let version = match store::get_version(&state.db, org, name, version_no).await {
        Ok(Some(v)) => v,
        Ok(None) => return ApiError::internal("the active version is missing").into_response(),
        Err(e) => return ApiError::from(e).into_response(),
    };
    let id = ulid::Ulid::new().to_string();
    let mut record = Execution {
        id: id.clone(),
        org: org.into(),
        app: name.into(),
        version: version_no,
        status: "running".into(),
        trigger: trigger.into(),
        started_at: store::now_ms(),
        finished_at: None,
        cold_start_ms: None,
        init_ms: None,
        duration_ms: None,
        billed_duration_ms: None,
        response_status: None,
        error: None,
        logs: vec![],
    };
    if let Err(e) = store::insert_execution(&state.db, &record).await {
        return ApiError::from(e).into_response();
    }
    let digest = version.artifact_digest.clone().unwrap_or_default();
    let mut config = SpawnConfig::new(blob_path(state, &digest));
    config.env = version.env.clone();
    let started = Instant::now();
    let served = state
        .node
        .invoke(
            (org.into(), name.into(), version_no),
            config,
            Invocation {
                execution_id: id.clone(),
                function_id: format!("{org}/{name}"),
                env: version.env.clone(),
                deadline: Some(started + DEFAULT_TIMEOUT),
                method: req.method,
                path: req.path,
                query: req.query,
                headers: req.headers,
                body: req.body,
            },
        )
        .await;
    let total = started.elapsed();
    let init_ms = served.init.map(|d| d.as_secs_f64() * 1e3);
    record.cold_start_ms = Some(init_ms.unwrap_or(0.0));
    record.init_ms = init_ms;
    record.finished_at = Some(store::now_ms());
    let (status, response) = match served.reply {
        Err(e) => {
            record.status = "crashed".into();
            record.error = Some(format!("the instance did not start: {e}"));
            record.logs = e.logs().map(|l| l.lines.clone()).unwrap_or_default();
            record.duration_ms = Some(0.0);
            (
                StatusCode::BAD_GATEWAY,
                error_body(
                    StatusCode::BAD_GATEWAY,
                    "handler_crashed",
                    record.error.clone().unwrap_or_default(),
                ),
            )
        }
        Ok(reply) => {
            record.logs = reply.logs.lines.clone();
            if reply.logs.dropped_bytes > 0 {
                record.logs.push(format!(
                    "[{} bytes of log dropped: over the per-execution limit]",
                    reply.logs.dropped_bytes
                ));
            }
            let duration = reply.duration.as_secs_f64() * 1e3;
            record.duration_ms = Some(duration);
            match reply.outcome {
                Outcome::Response {
                    status,
                    headers,
                    body,
                } => {
                    record.status = "succeeded".into();
                    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                    let mut resp = Response::builder().status(code);
                    for (k, v) in headers {
                        resp = resp.header(k, v);
                    }
                    (
                        code,
                        resp.body(Body::from(body))
                            .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response()),
                    )
                }
                Outcome::HandlerError { status, message } => {
                    record.status = "failed".into();
                    record.error = Some(message.clone());
                    let code =
                        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    (code, error_body(code, "handler_error", message))
                }
                Outcome::Panicked { message } => {
                    record.status = "failed".into();
                    record.error = Some(message.clone());
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        error_body(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "handler_panicked",
                            message,
                        ),
                    )
                }
                Outcome::TimedOut { after } => {
                    let msg = format!(
                        "the handler did not answer within its {:?} deadline and was stopped",
                        after
                    );
                    record.status = "timeout".into();
                    record.error = Some(msg.clone());
                    (
                        StatusCode::GATEWAY_TIMEOUT,
                        error_body(StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded", msg),
                    )
                }
                Outcome::Crashed { exit } => {
                    let msg = format!("the handler crashed ({exit})");
                    record.status = "crashed".into();
                    record.error = Some(msg.clone());
                    (
                        StatusCode::BAD_GATEWAY,
                        error_body(StatusCode::BAD_GATEWAY, "handler_crashed", msg),
                    )
                }
                Outcome::FramingError { message } => {
                    record.status = "crashed".into();
                    record.error = Some(message.clone());
                    (
                        StatusCode::BAD_GATEWAY,
                        error_body(StatusCode::BAD_GATEWAY, "framing_error", message),
                    )
                }
            }
        }
    };
    let billed = record.duration_ms.unwrap_or(0.0) + init_ms.unwrap_or(0.0);
    record.billed_duration_ms = Some(billed.ceil().max(1.0) as i64);
    record.response_status = Some(i64::from(status.as_u16()));
    if let Err(e) = store::finish_execution(&state.db, &record).await {
        tracing::error!("recording execution {id}: {e}");
    }
    tracing::debug!(%id, total_ms = total.as_secs_f64() * 1e3, "executed");
    let mut response = response;
    if let Ok(v) = id.parse() {
        response.headers_mut().insert("x-ignite-execution-id", v);
    }
    response
}

fn error_body(status: StatusCode, code: &'static str, message: String) -> Response {
    ApiError::new(status, code, message).into_response()
}

async fn invoke(
    AxState(state): S,
    headers: HeaderMap,
    Path((org, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let app = owned_app(&state, &headers, &org, &name).await?;
    let req = HttpRequest {
        method: "POST".into(),
        path: "/".into(),
        query: String::new(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.to_vec(),
    };
    Ok(execute(&state, &app, req, "api").await)
}

async fn get_execution(
    AxState(state): S,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let org = org_of(&state.db, &headers).await?;
    let e = store::get_execution(&state.db, &org, &id)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "execution {id} not found; list recent ones with `dodil ignite execution list`"
            ))
        })?;
    Ok(Json(execution_view(&e)))
}

pub fn execution_view(e: &Execution) -> Value {
    json!({
        "id": e.id,
        "app_id": format!("{}:{}", e.org, e.app),
        "function_id": format!("{}/{}", e.org, e.app),
        "version": e.version,
        "status": e.status,
        "trigger": e.trigger,
        "started_at": e.started_at,
        "finished_at": e.finished_at,
        "response_status": e.response_status,
        "error": e.error,
        "metrics": {
            "cold_start_ms": e.cold_start_ms,
            "init_ms": e.init_ms,
            "duration_ms": e.duration_ms,
            "billed_duration_ms": e.billed_duration_ms,
        },
        "logs": e.logs,
    })
}

#[derive(Deserialize)]
struct ListExecutions {
    app: Option<String>,
    limit: Option<i64>,
}

async fn list_executions(
    AxState(state): S,
    headers: HeaderMap,
    Query(q): Query<ListExecutions>,
) -> ApiResult<Json<Value>> {
    let org = org_of(&state.db, &headers).await?;
    let app = q.app.as_deref().map(|a| a.rsplit(':').next().unwrap_or(a));
    let list =
        store::list_executions(&state.db, &org, app, q.limit.unwrap_or(50).clamp(1, 1000)).await?;
    Ok(Json(
        json!({ "executions": list.iter().map(execution_view).collect::<Vec<_>>() }),
    ))
}

#[derive(Deserialize)]
struct CreateToken {
    name: String,
}

async fn create_token(
    AxState(state): S,
    headers: HeaderMap,
    Json(body): Json<CreateToken>,
) -> ApiResult<Response> {
    let org = org_of(&state.db, &headers).await?;
    let (id, secret, token) = crate::auth::mint_token();
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
        Json(json!({ "id": id, "name": body.name, "token": token })),
    )
        .into_response())
}

async fn list_tokens(AxState(state): S, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let org = org_of(&state.db, &headers).await?;
    Ok(Json(
        json!({ "tokens": store::list_tokens(&state.db, &org).await? }),
    ))
}

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
