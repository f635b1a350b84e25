//! Apps: create, list, get, delete, and their settings (environment, scaling, network).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use ignite_api as api;

use super::{S, owned_app, valid_name};
use crate::State;
use crate::auth::org_of;
use crate::error::extract::{JsonBody, Path};
use crate::error::{ApiError, ApiResult};
use crate::store::{self, App};

fn env_map(env: &[(String, String)]) -> BTreeMap<String, String> {
    env.iter().cloned().collect()
}

pub(crate) fn app_view(
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
pub(super) async fn create_app(
    AxState(state): S,
    headers: HeaderMap,
    JsonBody(body): JsonBody<api::CreateApp>,
) -> ApiResult<(StatusCode, Json<api::App>)> {
    let org = org_of(&state.db, &headers).await?;
    let app = create(&state, &org, &body).await?;
    Ok((StatusCode::CREATED, Json(app)))
}

/// Creates an app in `org` (the caller's): the API's and the console's one way to.
pub(crate) async fn create(state: &State, org: &str, body: &api::CreateApp) -> ApiResult<api::App> {
    if !valid_name(&body.name) {
        return Err(ApiError::bad_request(format!(
            "invalid app name {:?}: use 1–63 lowercase letters, digits and '-'",
            body.name
        )));
    }
    if !crate::runtime::RUNTIMES.contains(&body.runtime.as_str()) {
        return Err(ApiError::bad_request(format!(
            "unsupported runtime {:?}: this platform runs {}",
            body.runtime,
            crate::runtime::runtimes_list()
        )));
    }
    match store::create_app(&state.db, org, &body.name, &body.runtime, &body.description).await? {
        store::CreateApp::Created => {
            // The defaults, within what this node lets one app have.
            let fitted = state
                .node
                .limits
                .clamp(api::ScalingConfig::for_runtime(&body.runtime));
            if fitted != api::ScalingConfig::default() {
                store::set_scaling(&state.db, org, &body.name, &fitted).await?;
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
                    state.public_host(org, &body.name)
                ),
            ));
        }
    }
    let app = store::get_app(&state.db, org, &body.name)
        .await?
        .ok_or_else(|| ApiError::internal("the app vanished after creation"))?;
    Ok(app_view(state, &app, None, None))
}

/// The caller's org's apps.
#[utoipa::path(get, path = "/v1/apps", tag = "apps", security(("token" = [])),
    responses((status = 200, body = api::AppList)))]
pub(super) async fn list_apps(
    AxState(state): S,
    headers: HeaderMap,
) -> ApiResult<Json<api::AppList>> {
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
pub(super) async fn get_app(
    AxState(state): S,
    headers: HeaderMap,
    Path((org, name)): Path<(String, String)>,
) -> ApiResult<Json<api::App>> {
    let app = owned_app(&state, &headers, &org, &name).await?;
    Ok(Json(view(&state, &app).await?))
}

/// `app get`: the app with its draft and its active version's artifact.
pub(crate) async fn view(state: &State, app: &App) -> ApiResult<api::App> {
    let (org, name) = (&app.org, &app.name);
    let draft = store::get_version(&state.db, org, name, 0).await?;
    let active = match app.active_version {
        Some(v) => store::get_version(&state.db, org, name, v).await?,
        None => None,
    };
    Ok(app_view(state, app, draft.as_ref(), active.as_ref()))
}

/// Delete an app, its versions and its running instances.
#[utoipa::path(delete, path = "/v1/apps/{org}/{app}", tag = "apps", security(("token" = [])),
    params(("org" = String, Path), ("app" = String, Path)),
    responses((status = 204), (status = 404, body = api::ErrorBody)))]
pub(super) async fn delete_app(
    AxState(state): S,
    headers: HeaderMap,
    Path((org, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    owned_app(&state, &headers, &org, &name).await?;
    store::delete_app(&state.db, &org, &name).await?;
    state.app_changed(&org, &name).await;
    // Its pools are no longer wanted: the reconciler stops their instances.
    state.node.reconcile(&state).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Set the app's environment; it travels with the next published version.
#[utoipa::path(put, path = "/v1/apps/{org}/{app}/env", tag = "apps", security(("token" = [])),
    params(("org" = String, Path), ("app" = String, Path)),
    request_body = api::SetEnv,
    responses((status = 200, body = api::EnvSet), (status = 400, body = api::ErrorBody)))]
pub(super) async fn set_env(
    AxState(state): S,
    headers: HeaderMap,
    Path((org, name)): Path<(String, String)>,
    JsonBody(body): JsonBody<api::SetEnv>,
) -> ApiResult<Json<api::EnvSet>> {
    let app = owned_app(&state, &headers, &org, &name).await?;
    Ok(Json(replace_env(&state, &app, body).await?))
}

/// Replaces the app's environment, once [`env_problem`] finds nothing wrong with it.
pub(crate) async fn replace_env(
    state: &State,
    app: &App,
    body: api::SetEnv,
) -> ApiResult<api::EnvSet> {
    let (org, name) = (&app.org, &app.name);
    if let Some(problem) = env_problem(&body.env) {
        return Err(ApiError::bad_request(problem));
    }
    let env: Vec<(String, String)> = body.env.clone().into_iter().collect();
    store::set_env(&state.db, org, name, &env).await?;
    state.app_changed(org, name).await;
    Ok(api::EnvSet {
        env: body.env,
        note: "environment changes take effect at the next draft publish".into(),
    })
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
pub(super) async fn set_scaling(
    AxState(state): S,
    headers: HeaderMap,
    Path((org, name)): Path<(String, String)>,
    JsonBody(body): JsonBody<api::ScalingUpdate>,
) -> ApiResult<Json<api::ScalingConfig>> {
    let app = owned_app(&state, &headers, &org, &name).await?;
    Ok(Json(update_scaling(&state, &app, &body).await?))
}

/// Applies a scaling update, once the configuration and this node's limits allow it.
pub(crate) async fn update_scaling(
    state: &State,
    app: &App,
    body: &api::ScalingUpdate,
) -> ApiResult<api::ScalingConfig> {
    let (org, name) = (&app.org, &app.name);
    let scaling = body.apply(&app.scaling);
    let limits = state.node.limits;
    if let Some(problem) = scaling
        .problem()
        .or_else(|| limits.problem(&scaling, &app.scaling))
    {
        return Err(ApiError::bad_request(problem));
    }
    if scaling.reserved_capacity > app.scaling.reserved_capacity {
        let others = store::reserved_elsewhere(&state.db, org, name).await?;
        if let Some(problem) = limits.reserve_problem(scaling.reserved_capacity, others) {
            return Err(ApiError::bad_request(problem));
        }
    }
    store::set_scaling(&state.db, org, name, &scaling).await?;
    state.app_changed(org, name).await;
    state.node.reconcile(state).await;
    Ok(scaling)
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
pub(super) async fn set_network(
    AxState(state): S,
    headers: HeaderMap,
    Path((org, name)): Path<(String, String)>,
    JsonBody(body): JsonBody<api::NetworkConfig>,
) -> ApiResult<Json<api::NetworkConfig>> {
    let app = owned_app(&state, &headers, &org, &name).await?;
    Ok(Json(update_network(&state, &app, body).await?))
}

/// Changes what the app's instances may reach; turning egress on first checks this node can.
pub(crate) async fn update_network(
    state: &State,
    app: &App,
    body: api::NetworkConfig,
) -> ApiResult<api::NetworkConfig> {
    let (org, name) = (&app.org, &app.name);
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
    store::set_network(&state.db, org, name, &body).await?;
    state.app_changed(org, name).await;
    state.node.reconcile(state).await;
    Ok(body)
}
