//! The web console at `/console`: server-rendered HTML (maud templates, checked at compile
//! time) over the same application functions as the JSON API (`crate::routes`), one CSS and
//! one small script embedded in the binary — no build step, no CDN, works offline.
//!
//! Sign-in exchanges an org token for a server-side session ([`session`]); every page is
//! rendered for the session's org and every object is looked up within it, through the API's
//! own lookups, so another org's object answers as a missing one. Every POST carries the
//! session's CSRF token (checked here, before the handler runs) and the cookie is
//! `SameSite=Strict`. A token never appears in a page, a URL or a log.

mod app;
mod apps;
mod charts;
mod executions;
mod invoke;
mod layout;
mod session;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use subtle::ConstantTimeEq;

use crate::State;
use crate::error::ApiError;

pub use session::Signed;

/// The console's routes, merged into the API's router (same listener, same state).
pub fn router() -> Router<Arc<State>> {
    Router::new()
        .route("/console", get(|| async { Redirect::to("/console/apps") }))
        .route("/console/", get(|| async { Redirect::to("/console/apps") }))
        .route(
            "/console/sign-in",
            get(session::sign_in_page).post(session::sign_in),
        )
        .route("/console/sign-out", post(session::sign_out))
        .route("/console/assets/console.css", get(css))
        .route("/console/assets/console.js", get(js))
        .route("/console/apps", get(apps::list).post(apps::create))
        .route("/console/apps/{org}/{app}", get(app::page))
        .route(
            "/console/apps/{org}/{app}/compile-logs",
            get(app::compile_logs),
        )
        .route("/console/apps/{org}/{app}/compile", post(app::compile))
        .route(
            "/console/apps/{org}/{app}/publish",
            get(app::confirm_publish).post(app::publish),
        )
        .route(
            "/console/apps/{org}/{app}/rollback",
            get(app::confirm_rollback).post(app::rollback),
        )
        .route("/console/apps/{org}/{app}/scaling", post(app::scaling))
        .route("/console/apps/{org}/{app}/env", post(app::env))
        .route("/console/apps/{org}/{app}/network", post(app::network))
        .route("/console/apps/{org}/{app}/invoke", post(invoke::invoke))
        .route("/console/executions", get(executions::list))
        .route("/console/executions/{id}", get(executions::page))
}

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// A page: HTML that no cache keeps (it shows the org's data) and no frame embeds.
pub(crate) fn html(status: StatusCode, markup: maud::Markup) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; style-src 'self'; style-src-attr 'unsafe-inline'; script-src 'self'; img-src 'self' data:; \
                 frame-ancestors 'none'; form-action 'self'",
            ),
            (header::REFERRER_POLICY, "same-origin"),
        ],
        markup.into_string(),
    )
        .into_response()
}

/// An error of the API's as a page: the same status and the same message.
pub(crate) fn error_page(signed: Option<&Signed>, e: &ApiError) -> Response {
    html(e.status, layout::error(signed, e.status, &e.message))
}

/// A signed-in POST: the session, and the form, whose `csrf` field matched the session's.
/// Anything else is refused before the handler runs: no session → 401 (sign in again), a
/// missing or wrong CSRF token → 403.
pub struct Post {
    pub signed: Signed,
    pub form: HashMap<String, String>,
}

impl FromRequest<Arc<State>> for Post {
    type Rejection = Response;

    async fn from_request(req: Request, state: &Arc<State>) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let signed = Signed::from_request_parts(&mut parts, state).await?;
        let req = Request::from_parts(parts, body);
        let form = match axum::Form::<HashMap<String, String>>::from_request(req, state).await {
            Ok(axum::Form(form)) => form,
            Err(_) => HashMap::new(),
        };
        if !csrf_matches(form.get("csrf"), &signed.csrf) {
            return Err(csrf_refused(Some(&signed)));
        }
        Ok(Post { signed, form })
    }
}

pub(crate) fn csrf_matches(given: Option<&String>, expected: &str) -> bool {
    given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(expected.as_bytes())))
}

pub(crate) fn csrf_refused(signed: Option<&Signed>) -> Response {
    error_page(
        signed,
        &ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_denied",
            "this form did not carry the console's CSRF token (or carried a stale one), so \
             nothing was changed; reload the page and submit the form again",
        ),
    )
}

/// The value of cookie `name` in the request.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether the request came over TLS (to a proxy that terminated it and says so): the
/// session cookie is then `Secure`.
pub(crate) fn over_tls(parts: &HeaderMap) -> bool {
    let forwarded_https = |name: &str| {
        parts
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("https"))
    };
    forwarded_https("x-forwarded-proto") || forwarded_https("forwarded")
}

/// A field of a form, trimmed; empty when absent.
pub(crate) fn field<'a>(form: &'a HashMap<String, String>, name: &str) -> &'a str {
    form.get(name).map_or("", |v| v.trim())
}

/// Where to go after a change: back to `to`, with what was done said there.
pub(crate) fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}
