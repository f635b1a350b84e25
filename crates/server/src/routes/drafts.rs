//! The draft (version 0): save its source, compile it, follow the compile's log, publish it.

use std::time::Duration;

use axum::body::{Body, Bytes};

use axum::Json;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ignite_api as api;

use super::{S, UPLOAD_LIMIT, owned_app, read_payload};
use crate::builds;
use crate::error::extract::{Path, Query};
use crate::error::{ApiError, ApiResult};
use crate::store::{self};

/// Upload source into the draft slot (version 0), replacing what was there.
#[utoipa::path(put, path = "/v1/apps/{org}/{app}/draft", tag = "drafts", security(("token" = [])),
    params(("org" = String, Path), ("app" = String, Path), api::SaveDraftParams),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "a .tar.gz or .zip of the project (Cargo.toml and src/), or one source file"),
    responses((status = 200, body = api::DraftSaved), (status = 400, body = api::ErrorBody),
        (status = 413, body = api::ErrorBody)))]
pub(super) async fn save_draft(
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
    let image_flags = [
        q.image_ref.is_some(),
        q.git_url.is_some(),
        q.dockerfile.is_some(),
    ]
    .into_iter()
    .filter(|given| *given)
    .count();
    if image_flags > 1 {
        return Err(ApiError::bad_request(
            "pass one of --image-ref, --git-url and --dockerfile-path: each names the whole \
             source of an image draft",
        ));
    }
    let runtime = q.runtime.clone().unwrap_or_else(|| {
        if image_flags > 0 {
            "image".into()
        } else {
            app.runtime.clone()
        }
    });
    if image_flags > 0 && runtime != "image" {
        return Err(ApiError::bad_request(format!(
            "--image-ref, --git-url and --dockerfile-path make an image draft, not a {runtime} \
             one; drop --runtime {runtime}, or save {runtime} source with --code"
        )));
    }
    if !crate::runtime::RUNTIMES.contains(&runtime.as_str()) {
        return Err(ApiError::bad_request(format!(
            "unsupported runtime {runtime:?}: use {}",
            crate::runtime::runtimes_list()
        )));
    }
    if runtime != app.runtime {
        return Err(ApiError::bad_request(format!(
            "{org}:{name} is a {} app, so its drafts are {}: save with --runtime {}, or create \
             another app with `dodil ignite app create <name> --runtime {runtime}`",
            app.runtime, app.runtime, app.runtime
        )));
    }
    if runtime != "rust" {
        for (flag, given) in [
            ("--rust-target", q.rust_target.is_some()),
            ("--toolchain", q.toolchain.is_some()),
        ] {
            if given {
                return Err(ApiError::bad_request(format!(
                    "{flag} is for Rust drafts; a {runtime} draft takes --code alone \
                     (`dodil ignite draft save {org}:{name} --code ./ --runtime {runtime}`)"
                )));
            }
        }
    }
    if runtime == "image" {
        return save_image_draft(&state, &org, &name, &q, body).await;
    }
    let rust_target = match q.rust_target.as_deref() {
        _ if runtime != "rust" => String::new(),
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
    if runtime == "rust" {
        check_target(q.toolchain.as_deref(), &rust_target).await?;
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
        probe_archive(&state, &body, |_| Ok(()))?;
    }
    let digest = stored(&state, &body).await?;
    store::save_draft(
        &state.db,
        &org,
        &name,
        store::DraftSource {
            runtime: &runtime,
            rust_target: (!rust_target.is_empty()).then_some(rust_target.as_str()),
            toolchain: q.toolchain.as_deref(),
            source_digest: &digest,
            source_kind: &kind,
        },
    )
    .await?;
    saved(&state, &org, &name).await
}

/// Stores a draft's source as a blob, published (in the platform registry, when there is one)
/// before the save is acknowledged, since another replica may build it; its digest.
async fn stored(state: &crate::State, source: &[u8]) -> ApiResult<String> {
    let digest = state
        .blobs
        .layout()
        .put_blob(source)
        .map_err(|e| ApiError::internal(format!("could not store the source: {e}")))?;
    state
        .blobs
        .publish(&digest, crate::blobs::SOURCE_MEDIA_TYPE)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("the draft was not saved: {e}; save it again once the registry answers"),
            )
        })?;
    Ok(digest)
}

/// The answer to a save: the draft slot as it now is.
async fn saved(state: &crate::State, org: &str, name: &str) -> ApiResult<Json<api::DraftSaved>> {
    let draft = store::get_version(&state.db, org, name, 0).await?;
    Ok(Json(api::DraftSaved {
        id: format!("{org}:{name}"),
        version: 0,
        draft,
    }))
}

/// An image draft: where its image comes from, checked now (the registry or git host allowed,
/// the context an archive that holds its Dockerfile), stored as the draft's source.
async fn save_image_draft(
    state: &crate::State,
    org: &str,
    name: &str,
    q: &api::SaveDraftParams,
    body: Bytes,
) -> ApiResult<Json<api::DraftSaved>> {
    use crate::images::ImageSource;
    let settings = &state.config.images;
    let source = if let Some(image_ref) = &q.image_ref {
        let image_ref = image_ref.trim();
        if image_ref.is_empty()
            || image_ref.len() > 512
            || image_ref
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ApiError::bad_request(format!(
                "--image-ref {image_ref:?} is not an image reference; write \
                 <registry>/<repository>:<tag> or <registry>/<repository>@sha256:<digest>"
            )));
        }
        settings
            .check_registry(&crate::images::registry_of(image_ref))
            .map_err(ApiError::bad_request)?;
        ImageSource::Pull {
            image_ref: image_ref.to_string(),
        }
    } else if let Some(spec) = &q.git_url {
        let (url, reference, _) =
            crate::images::check_git(settings, spec).map_err(ApiError::bad_request)?;
        ImageSource::Git { url, reference }
    } else if let Some(dockerfile) = &q.dockerfile {
        let path = std::path::Path::new(dockerfile);
        if dockerfile.is_empty()
            || path.is_absolute()
            || path
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(ApiError::bad_request(format!(
                "the Dockerfile path {dockerfile:?} must be a plain path inside the context (the \
                 Dockerfile's directory), like Dockerfile"
            )));
        }
        if body.is_empty() {
            return Err(ApiError::bad_request(
                "the uploaded build context is empty; --dockerfile-path uploads the Dockerfile's \
                 directory",
            ));
        }
        probe_archive(state, &body, |probe| {
            if std::fs::symlink_metadata(probe.join(path)).is_ok_and(|m| m.is_file()) {
                Ok(())
            } else {
                Err(ApiError::bad_request(format!(
                    "the build context has no file {dockerfile}; point --dockerfile-path at the \
                     Dockerfile"
                )))
            }
        })?;
        let context = stored(state, &body).await?;
        ImageSource::Dockerfile {
            context,
            dockerfile: dockerfile.clone(),
        }
    } else {
        return Err(ApiError::bad_request(format!(
            "an image draft takes its image from --image-ref <registry>/<repository>:<tag>, \
             --dockerfile-path ./Dockerfile or --git-url <url>[#<ref>] (`dodil ignite draft save \
             {org}:{name} --image-ref …`)"
        )));
    };
    let descriptor = serde_json::to_vec(&source)
        .map_err(|e| ApiError::internal(format!("could not describe the source: {e}")))?;
    let digest = stored(state, &descriptor).await?;
    store::save_draft(
        &state.db,
        org,
        name,
        store::DraftSource {
            runtime: "image",
            rust_target: None,
            toolchain: None,
            source_digest: &digest,
            source_kind: source.kind(),
        },
    )
    .await?;
    saved(state, org, name).await
}

/// Refuses a hostile or broken archive now, not at build time: it is unpacked into a scratch
/// directory (removed after), which `check` may look at.
fn probe_archive(
    state: &crate::State,
    body: &[u8],
    check: impl FnOnce(&std::path::Path) -> ApiResult<()>,
) -> ApiResult<()> {
    let probe = tempdir_in(&state.config.data_dir.join("builds"))
        .map_err(|e| ApiError::internal(format!("could not make a scratch directory: {e}")))?;
    let checked = ignite_builder::archive::unpack(body, &probe, builds::SOURCE_CAP)
        .map_err(|e| ApiError::bad_request(e.to_string()))
        .and_then(|_| check(&probe));
    let _ = std::fs::remove_dir_all(&probe);
    checked
}

fn tempdir_in(parent: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    let dir = parent.join(format!("upload-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A compile for a target the toolchain lacks would fail deep in rustc ("can't find crate for
/// `std`"): say so now, with the command that adds it.
async fn check_target(toolchain: Option<&str>, flag: &str) -> ApiResult<()> {
    let Some(target) = ignite_builder::Target::from_flag(flag) else {
        return Ok(());
    };
    match ignite_builder::has_target(toolchain, target).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(ApiError::conflict(format!(
            "this server's Rust toolchain{} has no {} target, so --rust-target {flag} cannot \
             compile here; the operator adds it with `{}`",
            toolchain.map(|t| format!(" {t}")).unwrap_or_default(),
            target.triple(),
            ignite_builder::add_target_command(toolchain, target)
        ))),
        // The toolchain itself is the problem; the compile will say so in its log.
        Err(e) => {
            tracing::warn!("cannot check the toolchain's targets: {e}");
            Ok(())
        }
    }
}

pub(super) async fn check_toolchain(toolchain: &str) -> ApiResult<()> {
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
pub(super) async fn compile(
    AxState(state): S,
    headers: HeaderMap,
    Path((org, name)): Path<(String, String)>,
) -> ApiResult<(StatusCode, Json<api::CompileStarted>)> {
    owned_app(&state, &headers, &org, &name).await?;
    start_compile(state, org, name).await
}

/// Starts compiling the draft of an app the caller owns (the API's and the console's).
pub(crate) async fn start_compile(
    state: std::sync::Arc<crate::State>,
    org: String,
    name: String,
) -> ApiResult<(StatusCode, Json<api::CompileStarted>)> {
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
pub(super) async fn compile_logs(
    AxState(state): S,
    headers: HeaderMap,
    Path((org, name)): Path<(String, String)>,
    Query(q): Query<api::LogsParams>,
) -> ApiResult<Response> {
    owned_app(&state, &headers, &org, &name).await?;
    compile_log_stream(state, org, name, q).await
}

/// The NDJSON compile log of an app the caller owns (the API's and the console's).
pub(crate) async fn compile_log_stream(
    state: std::sync::Arc<crate::State>,
    org: String,
    name: String,
    q: api::LogsParams,
) -> ApiResult<Response> {
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
    let build = store::get_build(&state.db, &build_id)
        .await?
        .ok_or_else(|| ApiError::internal("the build record is missing"))?;
    if build.status == "running" && follow {
        return Ok(follow_stored_log(state, build_id));
    }
    let mut out = Vec::new();
    for l in build.log.lines() {
        out.extend_from_slice(&ndjson(&line(l.to_string())));
    }
    out.extend_from_slice(&ndjson(&api::LogEvent {
        status: Some(build.status),
        error: build.error,
        ..Default::default()
    }));
    Ok(([("content-type", "application/x-ndjson")], out).into_response())
}

/// Follows the log of a build another replica runs, as it stores it (every half second): the
/// lines that are new since the last read, until the build ends. A build claimed again after
/// its replica stopped starts its log anew; its lines are sent from there.
fn follow_stored_log(state: std::sync::Arc<crate::State>, build_id: String) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        let (mut sent, mut attempt) = (0, None);
        loop {
            let build = match store::get_build(&state.db, &build_id).await {
                Ok(Some(build)) => build,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!("reading build {build_id}: {e}");
                    tokio::time::sleep(crate::builds::STORE_POLL).await;
                    continue;
                }
            };
            if attempt != Some(build.attempt) {
                attempt = Some(build.attempt);
                sent = 0;
            }
            // The log is stored whole lines at a time.
            let lines: Vec<&str> = build.log.lines().collect();
            let complete = lines.len();
            for l in lines.iter().skip(sent) {
                let event = api::LogEvent {
                    line: Some(l.to_string()),
                    ..Default::default()
                };
                if tx.send(Ok(ndjson(&event))).await.is_err() {
                    return;
                }
            }
            sent = sent.max(complete);
            if build.status != "running" {
                let end = api::LogEvent {
                    status: Some(build.status),
                    error: build.error,
                    ..Default::default()
                };
                let _ = tx.send(Ok(ndjson(&end))).await;
                return;
            }
            tokio::time::sleep(crate::builds::STORE_POLL).await;
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (
        [("content-type", "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
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
pub(super) async fn publish(
    AxState(state): S,
    headers: HeaderMap,
    Path((org, name)): Path<(String, String)>,
) -> ApiResult<Json<api::Published>> {
    let app = owned_app(&state, &headers, &org, &name).await?;
    publish_draft(state, app, org, name).await
}

/// Publishes the draft of an app the caller owns (the API's and the console's).
pub(crate) async fn publish_draft(
    state: std::sync::Arc<crate::State>,
    app: store::App,
    org: String,
    name: String,
) -> ApiResult<Json<api::Published>> {
    let mut draft = store::get_version(&state.db, &org, &name, 0)
        .await?
        .ok_or_else(|| no_source(&org, &name))?;
    if draft.runtime != "rust" {
        // Other runtimes build as part of the publish (or ahead of it, with `draft compile`).
        draft = build_for_publish(&state, &org, &name, draft).await?;
    }
    match draft.compile_status.as_str() {
        "compiled" => {}
        "compiling" => {
            return Err(ApiError::conflict(format!(
                "the draft of {org}:{name} is still compiling; wait for `dodil ignite draft compile-logs {org}:{name}` to finish, then publish"
            )));
        }
        "failed" | "timed_out" | "oom" | "disk_full" if draft.runtime != "rust" => {
            return Err(ApiError::conflict(format!(
                "the draft of {org}:{name} did not build, so it was not published: {}; the \
                 whole log is in `dodil ignite draft compile-logs {org}:{name}`; fix the code and \
                 save the draft again (or rebuild it as it is with `dodil ignite draft compile \
                 {org}:{name}`)",
                draft.compile_error.unwrap_or_default()
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
    state.app_changed(&org, &name).await;
    // New requests go to the new version now; the old one drains; reserved capacity starts.
    state.node.reconcile(&state).await;
    // What the first start needs (a Python template) is made now, not by the first request
    // (on this process's node; a fleet's nodes make it at their first start).
    if state.fleet.is_none()
        && let Some(published) = store::get_version(&state.db, &org, &name, version).await?
    {
        let (state, org, name) = (state.clone(), org.clone(), name.clone());
        let scaling = state.node.limits.clamp(app.scaling.clone());
        let settings = crate::runtime::StartSettings {
            memory_mb: scaling.memory_mb,
            egress: app.network.egress,
            deadline: Duration::from_secs(u64::from(scaling.timeout_s.max(1))),
        };
        tokio::spawn(async move {
            crate::runtime::launcher(&state, &org, &name, &published)
                .prepare(settings)
                .await;
        });
    }
    Ok(Json(api::Published {
        id: format!("{org}:{name}"),
        version,
        active_version: version,
        public_urls: vec![state.public_url(&org, &name)],
    }))
}

/// A draft of a runtime that builds on publish, built: the running build waited for, or a new
/// one started when the draft is not built (or its last build failed, which a publish retries
/// only if the source changed since: it did not, so the failure stands).
async fn build_for_publish(
    state: &std::sync::Arc<crate::State>,
    org: &str,
    name: &str,
    draft: store::Version,
) -> ApiResult<store::Version> {
    let build_id = match draft.compile_status.as_str() {
        "compiled" | "failed" | "timed_out" | "oom" | "disk_full" => return Ok(draft),
        "compiling" => draft.build_id.clone(),
        _ => Some(builds::start(state.clone(), org, name, &draft).await?),
    };
    if let Some(id) = build_id {
        builds::wait(state, &id).await;
    }
    store::get_version(&state.db, org, name, 0)
        .await?
        .ok_or_else(|| no_source(org, name))
}
