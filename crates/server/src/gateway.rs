//! Public HTTP, routed by Host: `<app>-<org>.ignite.<domain>` reaches the app's active version.
//! The gateway never needs a token; it answers 404 for a host that names no app.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State as AxState};
use axum::response::{IntoResponse, Response};

use crate::State;
use crate::api::{HttpRequest, execute};
use crate::error::ApiError;

const BODY_LIMIT: usize = 6 * 1024 * 1024;

pub fn router(state: Arc<State>) -> Router {
    Router::new().fallback(serve).with_state(state)
}

async fn serve(AxState(state): AxState<Arc<State>>, req: Request) -> Response {
    let host = req
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let host = host.split(':').next().unwrap_or("").to_string();
    let suffix = format!(".ignite.{}", state.config.domain);
    let not_found = || {
        ApiError::not_found(format!(
            "no app answers at {host:?}; public URLs look like <app>-<org>{suffix}"
        ))
        .into_response()
    };
    let Some(label) = host.strip_suffix(&suffix) else {
        return not_found();
    };
    // `<app>-<org>`: both may contain '-', so try each split against the store.
    let mut found = None;
    for (i, _) in label.match_indices('-') {
        let (app, org) = (&label[..i], &label[i + 1..]);
        match state.node.route(&state.db, org, app).await {
            Ok(Some(route)) => {
                found = Some(route);
                break;
            }
            Ok(None) => {}
            Err(e) => return ApiError::from(e).into_response(),
        }
    }
    let Some(route) = found.filter(|r| r.version.is_some()) else {
        return not_found();
    };
    let (parts, body) = req.into_parts();
    let body =
        match crate::api::read_payload(&parts.headers, body, BODY_LIMIT, crate::api::PAYLOAD_HINT)
            .await
        {
            Ok(b) => b,
            Err(e) => return e.into_response(),
        };
    let headers = parts
        .headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let http = HttpRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers,
        body: body.to_vec(),
    };
    execute(state, route, http, "http").await
}
