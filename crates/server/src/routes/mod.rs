//! The HTTP+JSON API (`/v1/...`), one module per resource. Every route but `/healthz` and
//! `/metrics` needs a bearer token, and every object is looked up within the token's org: another
//! org's object answers exactly as a missing one. Routes hold no invocation logic: `invoke`
//! hands the request to [`crate::invoke`].

pub(crate) mod apps;
pub(crate) mod drafts;
pub(crate) mod executions;
mod registries;
mod tokens;
pub(crate) mod versions;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::State;
use crate::auth::org_of;
use crate::error::{ApiError, ApiResult};
use crate::store::{self, App};

type S = AxState<Arc<State>>;

/// Largest upload (`draft save`) and invoke payload.
const UPLOAD_LIMIT: usize = 32 * 1024 * 1024;
pub(crate) const PAYLOAD_LIMIT: usize = 6 * 1024 * 1024;
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
        (name = "executions"), (name = "tokens"), (name = "registries")
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
        .routes(routes!(apps::create_app, apps::list_apps))
        .routes(routes!(apps::get_app, apps::delete_app))
        .routes(routes!(apps::set_env))
        .routes(routes!(apps::set_scaling))
        .routes(routes!(apps::set_network))
        .routes(routes!(drafts::save_draft))
        .routes(routes!(drafts::compile))
        .routes(routes!(drafts::compile_logs))
        .routes(routes!(drafts::publish))
        .routes(routes!(versions::list_versions))
        .routes(routes!(versions::rollback))
        .routes(routes!(executions::invoke))
        .routes(routes!(executions::list_executions))
        .routes(routes!(executions::get_execution))
        .routes(routes!(tokens::create_token, tokens::list_tokens))
        .routes(routes!(tokens::revoke_token))
        .routes(routes!(registries::login, registries::logout))
        .routes(routes!(registries::list))
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
        // The fleet's nodes, with the node token (not an org token; not in the API document).
        .route(
            crate::fleet::wire::HEARTBEAT_PATH,
            axum::routing::post(crate::fleet::control::heartbeat_route),
        )
        .route("/v1/fleet/nodes", get(crate::fleet::control::nodes_route))
        .route(
            "/v1/openapi.json",
            get(move || async move { Json((*doc).clone()) }),
        )
        .merge(crate::console::router())
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

pub(crate) fn app_not_found(org: &str, app: &str) -> ApiError {
    ApiError::not_found(format!(
        "app {org}:{app} not found; create it with `dodil ignite app create {app} --runtime rust`"
    ))
}

/// The app, if the caller's org owns it; a foreign org's app answers exactly like a missing one.
async fn owned_app(state: &State, headers: &HeaderMap, org: &str, app: &str) -> ApiResult<App> {
    let caller = org_of(&state.db, headers).await?;
    app_of_caller(state, &caller, org, app).await
}

/// The app, if `caller` (an org already authenticated, by a token or a console session) owns
/// it; a foreign org's app answers exactly like a missing one.
pub(crate) async fn app_of_caller(
    state: &State,
    caller: &str,
    org: &str,
    app: &str,
) -> ApiResult<App> {
    if caller != org {
        return Err(app_not_found(org, app));
    }
    store::get_app(&state.db, org, app)
        .await?
        .ok_or_else(|| app_not_found(org, app))
}

/// How long a request body may take to arrive: a client that declares a body and sends it
/// slowly, or not at all, holds its connection no longer.
pub const BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// 408: the body did not arrive in time.
pub fn body_too_slow() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        format!(
            "the request body did not arrive within {} s; send it at once, or a smaller one",
            BODY_DEADLINE.as_secs()
        ),
    )
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
    // A minute, or 256 KiB/s for a large upload.
    let deadline = BODY_DEADLINE.max(std::time::Duration::from_secs((limit as u64) >> 18));
    match tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await {
        Ok(read) => read.map_err(|_| too_large("over the limit".into())),
        Err(_) => Err(body_too_slow()),
    }
}
