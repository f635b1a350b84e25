//! Public HTTP, routed by Host: `<app>-<org>.ignite.<domain>` reaches the app's active version.
//! The gateway never needs a token; it answers 404 for a host that names no app. Its callers are
//! anyone: no answer of its own names a host path, a store error or an OS error.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::State;
use crate::error::ApiError;
use crate::invoke::{HttpRequest, execute};

const BODY_LIMIT: usize = 6 * 1024 * 1024;

pub fn router(state: Arc<State>) -> Router {
    Router::new().fallback(serve).with_state(state)
}

/// The hostname label (`<app>-<org>`) a `Host` header names under `.ignite.<domain>`: case
/// folded, the port and one trailing dot (a fully qualified name) taken off. `None` for a host
/// outside the domain or a label that cannot name an app.
pub fn host_label(host: &str, domain: &str) -> Option<String> {
    let host = host.trim();
    // `name:port`; a bracketed IPv6 literal never names an app.
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        Some(_) => return None,
        None => host,
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let domain = domain
        .strip_suffix('.')
        .unwrap_or(domain)
        .to_ascii_lowercase();
    let label = name.strip_suffix(&format!(".ignite.{domain}"))?;
    let valid = (3..=127).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && label.contains('-');
    valid.then(|| label.to_string())
}

async fn serve(AxState(state): AxState<Arc<State>>, req: Request) -> Response {
    let host = req
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let suffix = format!(".ignite.{}", state.config.domain);
    let not_found = || {
        ApiError::not_found(format!(
            "no app answers at {:?}; public URLs look like <app>-<org>{suffix}",
            host.chars().take(255).collect::<String>()
        ))
        .into_response()
    };
    let Some(label) = host_label(host, &state.config.domain) else {
        return not_found();
    };
    let route = match state.node.route_by_host(&state.db, &label).await {
        Ok(route) => route,
        Err(e) => {
            tracing::error!("gateway: looking up {label:?} failed: {e}");
            return unavailable();
        }
    };
    let Some(route) = route.filter(|r| r.version.is_some()) else {
        return not_found();
    };
    let (parts, body) = req.into_parts();
    let body = match crate::routes::read_payload(
        &parts.headers,
        body,
        BODY_LIMIT,
        crate::routes::PAYLOAD_HINT,
    )
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

/// The platform itself failed (its store, say): a short reason, no internals.
fn unavailable() -> Response {
    let mut response = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the platform could not serve this request just now; retry shortly",
    )
    .into_response();
    response
        .headers_mut()
        .insert("retry-after", axum::http::HeaderValue::from_static("1"));
    response
}

#[cfg(test)]
mod tests {
    use super::host_label;
    use proptest::prelude::*;

    #[test]
    fn hosts_and_their_labels() {
        let cases = [
            ("tiny-acme-corp.ignite.localhost", Some("tiny-acme-corp")),
            (
                "tiny-acme-corp.ignite.localhost:8081",
                Some("tiny-acme-corp"),
            ),
            ("tiny-acme-corp.ignite.localhost.", Some("tiny-acme-corp")),
            (
                "tiny-acme-corp.ignite.localhost.:80",
                Some("tiny-acme-corp"),
            ),
            ("TINY-Acme-Corp.IGNITE.LocalHost", Some("tiny-acme-corp")),
            ("tiny.ignite.localhost", None),
            ("tiny-acme-corp.ignite.example.com", None),
            ("ignite.localhost", None),
            (".ignite.localhost", None),
            ("a_b-c.ignite.localhost", None),
            ("tiny-acme-corp.ignite.localhost:x", None),
            ("[::1]:8081", None),
            ("", None),
        ];
        for (host, want) in cases {
            assert_eq!(host_label(host, "localhost").as_deref(), want, "{host:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any Host header at all: no panic, and a label is always a valid app-org label.
        #[test]
        fn any_host_header_parses_safely(host in ".{0,300}") {
            if let Some(label) = host_label(&host, "localhost") {
                prop_assert!(label.contains('-'));
                prop_assert!(label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
            }
        }

        /// Every app-org pair is found again from its public hostname, in any case, with or
        /// without a port and a trailing dot.
        #[test]
        fn every_public_host_finds_its_label(
            app in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?",
            org in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?",
            upper in any::<bool>(), dot in any::<bool>(), port in proptest::option::of(1u16..),
        ) {
            let label = format!("{app}-{org}");
            let mut host = format!("{label}.ignite.localhost{}", if dot { "." } else { "" });
            if upper { host = host.to_ascii_uppercase(); }
            if let Some(p) = port { host = format!("{host}:{p}"); }
            prop_assert_eq!(host_label(&host, "localhost"), Some(label));
        }
    }
}
