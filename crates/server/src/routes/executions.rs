//! Invoking an app through the API, and reading executions back.

use axum::Json;
use axum::extract::State as AxState;
use axum::http::HeaderMap;
use axum::response::Response;
use ignite_api as api;

use super::{PAYLOAD_HINT, PAYLOAD_LIMIT, S, app_not_found, owned_app, read_payload};
use crate::auth::org_of;
use crate::error::extract::{Path, Query};
use crate::error::{ApiError, ApiResult};
use crate::invoke::{HttpRequest, execute};
use crate::store::{self, Execution};

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
pub(super) async fn invoke(
    AxState(state): S,
    headers: HeaderMap,
    Path((org, name)): Path<(String, String)>,
    body: axum::body::Body,
) -> ApiResult<Response> {
    owned_app(&state, &headers, &org, &name).await?;
    let body = read_payload(&headers, body, PAYLOAD_LIMIT, PAYLOAD_HINT).await?;
    invoke_app(state, &org, &name, body.to_vec()).await
}

/// Invokes the active version of an app the caller owns with a JSON payload (the API's and
/// the console's invoke: trigger `api`).
pub(crate) async fn invoke_app(
    state: std::sync::Arc<crate::State>,
    org: &str,
    name: &str,
    payload: Vec<u8>,
) -> ApiResult<Response> {
    let route = state
        .node
        .route(&state.db, org, name)
        .await?
        .ok_or_else(|| app_not_found(org, name))?;
    let req = HttpRequest::json_post(payload);
    Ok(execute(state, route, req, "api").await)
}

/// One execution: status, metrics and logs.
#[utoipa::path(get, path = "/v1/executions/{id}", tag = "executions", security(("token" = [])),
    params(("id" = String, Path, description = "the execution's ULID")),
    responses((status = 200, body = api::Execution), (status = 400, body = api::ErrorBody),
        (status = 404, body = api::ErrorBody)))]
pub(super) async fn get_execution(
    AxState(state): S,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<api::Execution>> {
    let org = org_of(&state.db, &headers).await?;
    Ok(Json(execution_view(
        &find_execution(&state, &org, &id).await?,
    )))
}

/// One execution of `org` (the caller's), still on its way to the store or stored.
pub(crate) async fn find_execution(
    state: &crate::State,
    org: &str,
    id: &str,
) -> ApiResult<Execution> {
    check_execution_id(id)?;
    let pending = state.recorder.get(org, id);
    let stored = match pending {
        Some(e) => Some(e),
        None => store::get_execution(&state.db, org, id).await?,
    };
    stored.ok_or_else(|| {
        ApiError::not_found(format!(
            "execution {id} not found; list recent ones with `dodil ignite execution list`"
        ))
    })
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
                    template_ms: e.template_ms.unwrap_or(0.0),
                    unpack_ms: e.unpack_ms.unwrap_or(0.0),
                    spawn_ms,
                    init_ms,
                    start: e.start_kind.clone().unwrap_or_else(|| "exec".into()),
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
pub(super) async fn list_executions(
    AxState(state): S,
    headers: HeaderMap,
    Query(q): Query<api::ListExecutionsParams>,
) -> ApiResult<Json<api::ExecutionList>> {
    let org = org_of(&state.db, &headers).await?;
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let list = recent_executions(&state, &org, &q, limit).await?;
    Ok(Json(api::ExecutionList {
        executions: list.iter().map(execution_view).collect(),
    }))
}

/// `org`'s executions (the caller's), newest first: those still on their way to the store and
/// the stored ones, filtered by `q`'s app, status and start time, at most `limit`.
pub(crate) async fn recent_executions(
    state: &crate::State,
    org: &str,
    q: &api::ListExecutionsParams,
    limit: i64,
) -> ApiResult<Vec<Execution>> {
    let app = q.app.as_deref().map(|a| a.rsplit(':').next().unwrap_or(a));
    // Records still on their way to the store are listed too. The snapshot is taken *before*
    // the store is read: the writer drops a record from memory only after committing it, so
    // every record is in the snapshot or in what the store returns.
    let pending = state
        .recorder
        .pending(org, |e| app.is_none_or(|a| e.app == a));
    let stored = store::list_executions(
        &state.db,
        org,
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
    Ok(list)
}
