//! The caller's org's registry credentials (`dodil ignite registry login`): checked against the
//! registry, sealed at rest (`secrets.rs`), used for the org's pulls, never shown again.

use axum::Json;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use ignite_api as api;

use super::S;
use crate::auth::org_of;
use crate::error::extract::{JsonBody, Path};
use crate::error::{ApiError, ApiResult};
use crate::store;

/// A registry host as the API takes it: `host` or `host:port`, lowercased.
fn registry_host(host: &str) -> ApiResult<String> {
    let host = host.trim().to_ascii_lowercase();
    let plain = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b':')
        && !host.starts_with(['-', '.', ':']);
    if !plain {
        return Err(ApiError::bad_request(format!(
            "{host:?} is not a registry host; write it as in an image reference, like ghcr.io \
             or registry.example.com:5000"
        )));
    }
    Ok(host)
}

/// Log in to a registry: the credentials are checked against it, then kept for the org.
#[utoipa::path(put, path = "/v1/registries/{host}", tag = "registries", security(("token" = [])),
    params(("host" = String, Path)), request_body = api::RegistryLogin,
    responses((status = 200, body = api::Registry), (status = 400, body = api::ErrorBody),
        (status = 401, body = api::ErrorBody, description = "the registry refused the credentials")))]
pub(super) async fn login(
    AxState(state): S,
    headers: HeaderMap,
    Path(host): Path<String>,
    JsonBody(body): JsonBody<api::RegistryLogin>,
) -> ApiResult<Json<api::Registry>> {
    let org = org_of(&state.db, &headers).await?;
    let host = registry_host(&host)?;
    state
        .config
        .images
        .check_registry(&host)
        .map_err(ApiError::bad_request)?;
    if body.username.is_empty() || body.password.is_empty() {
        return Err(ApiError::bad_request(
            "both a username and a password (or token) are needed: `dodil ignite registry login \
             <host> --username <user> --password-stdin`",
        ));
    }
    let credentials = ignite_image::Credentials {
        username: body.username.clone(),
        password: body.password,
    };
    let access = ignite_image::RegistryAccess {
        insecure: state.config.images.insecure.clone(),
        proxy: Some(state.image_proxy.url()),
        ..Default::default()
    };
    if let Err(e) = ignite_image::check_login(&host, &credentials, &access).await {
        return Err(match e {
            ignite_image::ImageError::CredentialsRefused { .. } => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "credentials_refused",
                format!(
                    "{host} refused the username and password; check them (a token needs read \
                     access to the repositories) and log in again"
                ),
            ),
            other => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "registry_unreachable",
                format!("could not check the credentials with {host}: {other}"),
            ),
        });
    }
    let sealed = crate::images::seal_password(&state, &org, &host, &credentials.password)
        .map_err(|e| ApiError::internal(format!("could not seal the password: {e}")))?;
    store::put_registry_credential(&state.db, &org, &host, &credentials.username, &sealed).await?;
    let saved = store::registry_credentials(&state.db, &org)
        .await?
        .into_iter()
        .find(|c| c.host == host)
        .ok_or_else(|| ApiError::internal("the credentials were not kept"))?;
    Ok(Json(api::Registry {
        host,
        username: saved.username,
        created_at: saved.created_at,
    }))
}

/// The registries the org has credentials for (never the passwords).
#[utoipa::path(get, path = "/v1/registries", tag = "registries", security(("token" = [])),
    responses((status = 200, body = api::RegistryList)))]
pub(super) async fn list(
    AxState(state): S,
    headers: HeaderMap,
) -> ApiResult<Json<api::RegistryList>> {
    let org = org_of(&state.db, &headers).await?;
    let registries = store::registry_credentials(&state.db, &org)
        .await?
        .into_iter()
        .map(|c| api::Registry {
            host: c.host,
            username: c.username,
            created_at: c.created_at,
        })
        .collect();
    Ok(Json(api::RegistryList { registries }))
}

/// Forget the org's credentials for a registry.
#[utoipa::path(delete, path = "/v1/registries/{host}", tag = "registries",
    security(("token" = [])), params(("host" = String, Path)),
    responses((status = 204), (status = 404, body = api::ErrorBody)))]
pub(super) async fn logout(
    AxState(state): S,
    headers: HeaderMap,
    Path(host): Path<String>,
) -> ApiResult<StatusCode> {
    let org = org_of(&state.db, &headers).await?;
    let host = registry_host(&host)?;
    if store::delete_registry_credential(&state.db, &org, &host).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "there are no credentials for {host}; `dodil ignite registry list` shows the ones kept"
        )))
    }
}
