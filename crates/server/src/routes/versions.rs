//! Published versions and rollback.

use axum::Json;
use axum::extract::State as AxState;
use axum::http::HeaderMap;
use ignite_api as api;

use super::{S, owned_app};
use crate::error::extract::{JsonBody, Path};
use crate::error::{ApiError, ApiResult};
use crate::store::{self};

/// The draft and every published version.
#[utoipa::path(get, path = "/v1/apps/{org}/{app}/versions", tag = "versions",
    security(("token" = [])),
    params(("org" = String, Path), ("app" = String, Path)),
    responses((status = 200, body = api::VersionList), (status = 404, body = api::ErrorBody)))]
pub(super) async fn list_versions(
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
pub(super) async fn rollback(
    AxState(state): S,
    headers: HeaderMap,
    Path((org, name)): Path<(String, String)>,
    JsonBody(body): JsonBody<api::Rollback>,
) -> ApiResult<Json<api::RolledBack>> {
    owned_app(&state, &headers, &org, &name).await?;
    roll_back(&state, &org, &name, body).await
}

/// Makes a published version of an app the caller owns active (the API's and the console's).
pub(crate) async fn roll_back(
    state: &crate::State,
    org: &str,
    name: &str,
    body: api::Rollback,
) -> ApiResult<Json<api::RolledBack>> {
    if body.version < 1 {
        return Err(ApiError::bad_request(
            "version 0 is the draft and cannot be made active; roll back to a published version (1, 2, …)",
        ));
    }
    if store::get_version(&state.db, org, name, body.version)
        .await?
        .is_none()
    {
        let versions = store::list_versions(&state.db, org, name).await?;
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
    store::set_active(&state.db, org, name, body.version).await?;
    state.app_changed(org, name).await;
    state.node.reconcile(state).await;
    Ok(Json(api::RolledBack {
        id: format!("{org}:{name}"),
        active_version: body.version,
    }))
}
