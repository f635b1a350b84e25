//! The invoke box: a JSON payload through the API's own invoke (trigger `api`, one execution
//! record), answered with the handler's status, headers and body and a link to the execution.
//! The result is a page of its own; the script swaps its `#invoke-result` into the app page.

use std::sync::Arc;

use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use axum::response::Response;
use maud::html;

use super::{Post, error_page, html, layout};
use crate::State;
use crate::routes::{PAYLOAD_LIMIT, app_of_caller, executions};

/// What of a response body the page shows.
const SHOWN: usize = 64 * 1024;

pub async fn invoke(
    AxState(state): AxState<Arc<State>>,
    Path((org, name)): Path<(String, String)>,
    post: Post,
) -> Response {
    let signed = &post.signed;
    let payload = post.form.get("payload").map_or("", |p| p.trim());
    let payload = if payload.is_empty() { "{}" } else { payload };
    if payload.len() > PAYLOAD_LIMIT {
        return error_page(
            Some(signed),
            &crate::error::ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "the payload is {} bytes; the limit is {PAYLOAD_LIMIT}: {}",
                    payload.len(),
                    crate::routes::PAYLOAD_HINT
                ),
            ),
        );
    }
    let answer = async {
        app_of_caller(&state, &signed.org, &org, &name).await?;
        executions::invoke_app(state.clone(), &org, &name, payload.as_bytes().to_vec()).await
    };
    let response = match answer.await {
        Ok(r) => r,
        Err(e) => axum::response::IntoResponse::into_response(e),
    };
    let status = response.status();
    let headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    let execution = response
        .headers()
        .get("x-ignite-execution-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = axum::body::to_bytes(response.into_body(), PAYLOAD_LIMIT)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body[..body.len().min(SHOWN)]).to_string();
    let pretty = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(text);
    let result = html! {
        section #invoke-result aria-live="polite" {
            h3 { "Response " (layout::status_code(status.as_u16())) }
            @if let Some(id) = &execution {
                p { "Execution " a #execution-link href={"/console/executions/" (id)} { (id) } }
            }
            pre #invoke-body tabindex="0" { (pretty) }
            @if body.len() > SHOWN { p.hint { "(the first " (SHOWN) " bytes of " (body.len()) ")" } }
            details { summary { "Headers" }
                table.headers { tbody { @for (k, v) in &headers { tr { th scope="row" { (k) } td { (v) } } } } }
            }
        }
    };
    let page = layout::page(
        Some(signed),
        &format!("Invoke {org}:{name}"),
        html! {
            h1 { "Invoke " a href={"/console/apps/" (org) "/" (name)} { (org) ":" (name) } }
            (result)
        },
    );
    html(StatusCode::OK, page)
}
