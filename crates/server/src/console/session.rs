//! Sign-in and sign-out. A session is server-side: the cookie holds a random 32-byte id, the
//! store only its sha256 (`console_sessions`), with the org, the token it was opened with (a
//! revoked token ends its sessions), the session's CSRF token and an expiry. The sign-in form
//! itself is protected by a double-submitted cookie (no session exists yet to hold a token).

use std::sync::Arc;

use axum::extract::{FromRequestParts, State as AxState};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;

use super::{Post, cookie, csrf_matches, csrf_refused, html, layout, over_tls, see_other};
use crate::State;
use crate::auth::{check_token, hash_secret, random_token};
use crate::error::ApiError;
use crate::store;

/// The session cookie.
pub const COOKIE: &str = "ignite_console";
/// The sign-in form's double-submitted CSRF cookie.
const PRE_COOKIE: &str = "ignite_console_signin";
/// How long a session lasts.
const SESSION_S: i64 = 12 * 3600;

/// The signed-in org of a console request, with the session's CSRF token (for its forms).
#[derive(Debug, Clone)]
pub struct Signed {
    pub org: String,
    pub csrf: String,
    id_hash: String,
}

impl FromRequestParts<Arc<State>> for Signed {
    type Rejection = Response;

    /// No live session: a page goes to the sign-in form; anything else answers 401.
    async fn from_request_parts(parts: &mut Parts, state: &Arc<State>) -> Result<Self, Response> {
        let id_hash = cookie(&parts.headers, COOKIE).map(hash_secret);
        let session = match &id_hash {
            Some(h) => store::session(&state.db, h)
                .await
                .map_err(|e| super::error_page(None, &ApiError::from(e)))?,
            None => None,
        };
        match (session, id_hash) {
            (Some(s), Some(id_hash)) => Ok(Signed {
                org: s.org,
                csrf: s.csrf,
                id_hash,
            }),
            _ if parts.method == axum::http::Method::GET => Err(see_other("/console/sign-in")),
            _ => Err(super::error_page(
                None,
                &ApiError::unauthorized(
                    "you are not signed in to the console (or the session expired); sign in \
                     at /console/sign-in and submit again",
                ),
            )),
        }
    }
}

fn cookie_header(name: &str, value: &str, max_age: i64, tls: bool) -> String {
    format!(
        "{name}={value}; HttpOnly; SameSite=Strict; Path=/console; Max-Age={max_age}{}",
        if tls { "; Secure" } else { "" }
    )
}

/// The sign-in form, with a fresh double-submit token in its cookie and in the form.
pub async fn sign_in_page(headers: HeaderMap) -> Response {
    sign_in_form(&headers, StatusCode::OK, None)
}

fn sign_in_form(headers: &HeaderMap, status: StatusCode, problem: Option<&str>) -> Response {
    let pre = match random_token(16) {
        Ok(t) => t,
        Err(e) => return super::error_page(None, &e),
    };
    let mut page = html(status, layout::sign_in(&pre, problem));
    if let Ok(v) = cookie_header(PRE_COOKIE, &pre, 3600, over_tls(headers)).parse() {
        page.headers_mut().append(header::SET_COOKIE, v);
    }
    page
}

/// Exchanges an org token (from the form, never a URL) for a session.
pub async fn sign_in(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<std::collections::HashMap<String, String>>,
) -> Response {
    let pre = cookie(&headers, PRE_COOKIE).unwrap_or_default();
    if pre.is_empty() || !csrf_matches(form.get("csrf"), pre) {
        return csrf_refused(None);
    }
    let token = form.get("token").map_or("", |t| t.trim());
    let checked = match check_token(&state.db, token).await {
        Ok(c) => c,
        Err(e) => return super::error_page(None, &e),
    };
    let Some((org, token_id)) = checked else {
        return sign_in_form(
            &headers,
            StatusCode::UNAUTHORIZED,
            Some(
                "that is not a valid token: paste an org token (ign_…) as `dodil ignite token \
                 create` prints it, or the admin token the server printed at its first start",
            ),
        );
    };
    let opened = async {
        let id = random_token(32)?;
        let csrf = random_token(32)?;
        let expires = store::now_ms() + SESSION_S * 1000;
        store::insert_session(
            &state.db,
            &hash_secret(&id),
            &org,
            &token_id,
            &csrf,
            expires,
        )
        .await?;
        Ok::<_, ApiError>(id)
    };
    match opened.await {
        Ok(id) => {
            let tls = over_tls(&headers);
            let mut answer = see_other("/console/apps");
            for c in [
                cookie_header(COOKIE, &id, SESSION_S, tls),
                cookie_header(PRE_COOKIE, "", 0, tls),
            ] {
                if let Ok(v) = c.parse() {
                    answer.headers_mut().append(header::SET_COOKIE, v);
                }
            }
            answer
        }
        Err(e) => super::error_page(None, &e),
    }
}

/// Ends the session here and in the store.
pub async fn sign_out(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    post: Post,
) -> Response {
    if let Err(e) = store::delete_session(&state.db, &post.signed.id_hash).await {
        return super::error_page(Some(&post.signed), &ApiError::from(e));
    }
    let mut answer = see_other("/console/sign-in");
    if let Ok(v) = cookie_header(COOKIE, "", 0, over_tls(&headers)).parse() {
        answer.headers_mut().append(header::SET_COOKIE, v);
    }
    answer
}
