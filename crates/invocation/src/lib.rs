//! The request path's shared vocabulary: what a runtime is handed ([`Invocation`]) and what it
//! hands back ([`Reply`]: an [`Outcome`], the [`Logs`] attributed to it, and how long it took).
//!
//! Every runtime speaks these types — the agent's native instances and the wasm host alike — so
//! the server records an execution the same way whatever ran it. Plain data on `std` alone (serde derives behind the `serde` feature, for the hop from a
//! gateway to a remote node): no
//! runtime, sandbox or protocol detail belongs here.

use std::time::{Duration, Instant};

/// The HTTP request as the handler sees it: what the gateway (or the API's `invoke`) read, carried
/// unchanged to the runtime. The one request type from the edge to the instance.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, Default)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// `POST /` with a JSON body (what `dodil ignite invoke` sends).
    pub fn json_post(body: Vec<u8>) -> HttpRequest {
        HttpRequest {
            method: "POST".into(),
            path: "/".into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body,
            ..HttpRequest::default()
        }
    }
}

/// One request for a handler: the HTTP request and the execution it belongs to.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    pub execution_id: String,
    pub function_id: String,
    /// The app's environment, handed to `Context::env`.
    pub env: Vec<(String, String)>,
    /// When to give up; `None` waits for ever.
    pub deadline: Option<Instant>,
    pub request: HttpRequest,
}

/// How an invocation ended.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The handler answered.
    Response {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// The handler returned `Err`; the instance stays warm.
    HandlerError { status: u16, message: String },
    /// The handler panicked; the SDK caught it and the instance stays warm.
    Panicked { message: String },
    /// The deadline passed; the instance was killed.
    TimedOut { after: Duration },
    /// The process died before answering.
    Crashed { exit: String },
    /// The kernel killed the process at its memory limit.
    OutOfMemory { exit: String },
    /// The process wrote bytes that are not frames; the instance was killed.
    FramingError { message: String },
}

impl Outcome {
    /// Whether the instance that produced this outcome can take another request.
    pub fn keeps_instance(&self) -> bool {
        matches!(
            self,
            Outcome::Response { .. } | Outcome::HandlerError { .. } | Outcome::Panicked { .. }
        )
    }
}

/// An invocation's outcome, with the logs attributed to it and how long it took.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone)]
pub struct Reply {
    pub outcome: Outcome,
    pub logs: Logs,
    /// From sending the request to its outcome.
    pub duration: Duration,
}

/// The logs gathered for one request.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Logs {
    pub lines: Vec<String>,
    /// Bytes that were dropped because the request passed its log limit.
    pub dropped_bytes: u64,
}
