//! Tokens of the caller's org.

use axum::Json;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use ignite_api as api;

use super::S;
use crate::auth::org_of;
use crate::error::extract::{JsonBody, Path};
use crate::error::{ApiError, ApiResult};
use crate::store::{self};

/// Mint a token for the caller's org (shown once).
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", security(("token" = [])),
    request_body = api::CreateToken,
    responses((status = 201, body = api::TokenCreated)))]
pub(super) async fn create_token(
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
pub(super) async fn list_tokens(
    AxState(state): S,
    headers: HeaderMap,
) -> ApiResult<Json<api::TokenList>> {
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
pub(super) async fn revoke_token(
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
