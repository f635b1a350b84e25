//! The handler as a `wasi:http/proxy` component (`--rust-target wasm`).
//!
//! `#[ignite::main]` on `wasm32` exports the standard `wasi:http/incoming-handler`, so the
//! component runs on any wasi:http host (`wasmtime serve`, Spin, …) as well as on Ignite. Each
//! request gets a fresh instance: nothing survives from one request to the next. The platform
//! passes the execution and function ids as `x-ignite-execution-id` / `x-ignite-function-id`
//! request headers (taken off the headers the handler sees) and the app's environment as the
//! component's WASI environment. A handler's `Err` is answered with its status and a JSON error
//! body, marked with `x-ignite-error: handler` so the platform records the execution as failed.

use std::future::Future;
use std::pin::pin;
use std::task::{Context as TaskContext, Poll, Waker};

use wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

use crate::{Context, Error, IntoResponse, Request};

/// The header that carries the execution id to the handler.
pub const EXECUTION_ID_HEADER: &str = "x-ignite-execution-id";
/// The header that carries the function id (`<org>/<name>`) to the handler.
pub const FUNCTION_ID_HEADER: &str = "x-ignite-function-id";
/// Set on the answer to a handler's `Err` (value `handler`).
pub const ERROR_HEADER: &str = "x-ignite-error";

/// The line a panic leaves on stderr before the instance traps (panics abort on wasm); the
/// platform reads the message back from it.
pub const PANIC_PREFIX: &str = "ignite-panic: ";

/// Serves one `wasi:http` request with `handler`.
pub fn handle<H, Fut, R, E>(handler: H, request: IncomingRequest, out: ResponseOutparam)
where
    H: Fn(Request, Context) -> Fut,
    Fut: Future<Output = Result<R, E>>,
    R: IntoResponse,
    E: Into<Error>,
{
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(a panic payload that is not a string)".into());
        let at = info
            .location()
            .map(|l| format!(" (at {}:{})", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("{PANIC_PREFIX}{}{at}", message.replace('\n', " "));
    }));
    let method = match request.method() {
        Method::Get => "GET".to_string(),
        Method::Head => "HEAD".to_string(),
        Method::Post => "POST".to_string(),
        Method::Put => "PUT".to_string(),
        Method::Delete => "DELETE".to_string(),
        Method::Connect => "CONNECT".to_string(),
        Method::Options => "OPTIONS".to_string(),
        Method::Trace => "TRACE".to_string(),
        Method::Patch => "PATCH".to_string(),
        Method::Other(other) => other,
    };
    let target = request.path_with_query().unwrap_or_else(|| "/".to_string());
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target, String::new()),
    };
    let (mut execution_id, mut function_id) = (String::new(), String::new());
    let mut headers = Vec::new();
    for (name, value) in request.headers().entries() {
        let value = String::from_utf8_lossy(&value).into_owned();
        match name.as_str() {
            EXECUTION_ID_HEADER => execution_id = value,
            FUNCTION_ID_HEADER => function_id = value,
            _ => headers.push((name, value)),
        }
    }
    let body = read_body(&request);
    drop(request);
    let mut req = Request::new(method, path, body);
    req = req.with_query(query);
    for (name, value) in headers {
        req = req.with_header(name, value);
    }
    let ctx = Context::new(execution_id, function_id).with_env(std::env::vars().collect());
    let (status, headers, body) = match block_on(handler(req, ctx)) {
        Ok(r) => r.into_response().into_parts(),
        Err(e) => {
            let e: Error = e.into();
            let body =
                serde_json::json!({"error": {"code": "handler_error", "message": e.message()}});
            (
                e.status(),
                vec![
                    ("content-type".to_string(), "application/json".to_string()),
                    (ERROR_HEADER.to_string(), "handler".to_string()),
                ],
                body.to_string().into_bytes(),
            )
        }
    };
    respond(out, status, headers, &body);
}

fn read_body(request: &IncomingRequest) -> Vec<u8> {
    let mut body = Vec::new();
    let Ok(incoming) = request.consume() else {
        return body;
    };
    if let Ok(stream) = incoming.stream() {
        // Ends with a closed-stream error once the body is read.
        while let Ok(chunk) = stream.blocking_read(64 * 1024) {
            body.extend_from_slice(&chunk);
        }
    }
    drop(IncomingBody::finish(incoming));
    body
}

fn respond(out: ResponseOutparam, status: u16, headers: Vec<(String, String)>, body: &[u8]) {
    let fields = Fields::new();
    for (name, value) in headers {
        // A header wasi:http refuses (a forbidden or malformed one) is left out.
        let _ = fields.append(&name.to_ascii_lowercase(), value.as_bytes());
    }
    let response = OutgoingResponse::new(fields);
    let _ = response.set_status_code(status);
    let Ok(outgoing) = response.body() else {
        return;
    };
    ResponseOutparam::set(out, Ok(response));
    if let Ok(stream) = outgoing.write() {
        // blocking_write_and_flush takes at most 4096 bytes at a time.
        for chunk in body.chunks(4096) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                break;
            }
        }
    }
    let _ = OutgoingBody::finish(outgoing, None);
}

/// Runs a future to completion on this (only) thread. A handler's futures make progress by
/// being polled (there is no reactor inside a component; WASI calls block), so polling until
/// ready is all an executor has to do here.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = TaskContext::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

/// `#[ignite::main]`'s expansion on `wasm32`: exports `handler` as the component's
/// `wasi:http/incoming-handler`.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_wasm {
    ($handler:ident) => {
        #[doc(hidden)]
        pub struct __IgniteComponent;
        impl $crate::__private::wasi::exports::http::incoming_handler::Guest for __IgniteComponent {
            fn handle(
                request: $crate::__private::wasi::http::types::IncomingRequest,
                out: $crate::__private::wasi::http::types::ResponseOutparam,
            ) {
                $crate::__private::wasm::handle($handler, request, out)
            }
        }
        $crate::__private::wasi::http::proxy::export!(__IgniteComponent);
    };
}
