//! The node agent's side of a handler process: the instance runner.
//!
//! An [`Instance`] is one running handler binary. [`Instance::spawn`] starts it with a clean
//! environment and three pipes, and waits for the SDK's `Hello` frame (that wait is the
//! instance's init time). [`Instance::invoke`] sends one request and waits for its answer under
//! the request's deadline; the process stays warm for the next request. Everything the handler
//! writes to stderr is attributed, line by line, to the request in flight.
//!
//! Every way an invocation can end is a distinct [`Outcome`]: an answer, a handler error, a
//! panic (the process survives), a deadline (the process is killed), a crash (the process
//! died), or a framing error (the process wrote bytes that are not frames; it is killed).
//! None of them is an `Err`: the caller always gets a [`Reply`] to record.
//!
//! An [`HttpInstance`] is a container image's server: it listens on `$PORT` in its own network
//! namespace, and each request is forwarded to it as HTTP/1.1 (see `http.rs`).
//!
//! This crate must never trust the handler: every byte read from it goes through the protocol
//! crate's bounded decoder, every wait on it has a deadline, and its logs are capped.

mod http;
mod instance;
mod logs;

pub use http::{HttpConfig, HttpInstance, MAX_RESPONSE_BYTES};
pub use ignite_invocation::{HttpRequest, Invocation, Logs, Outcome, Reply};
pub use ignite_sandbox::{current_cpu, pin_to_cpu};
pub use instance::{Instance, SpawnConfig, SpawnError};
