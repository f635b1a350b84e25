//! The Ignite handler SDK: what a user's handler links against.
//!
//! ```no_run
//! use ignite::prelude::*;
//! use serde_json::json;
//!
//! #[ignite::main]
//! async fn handler(req: Request, ctx: Context) -> Result<impl IntoResponse> {
//!     let message: String = req
//!         .field("message")
//!         .unwrap_or_else(|_| "Hello from Rust!".to_string());
//!     Ok(json!({
//!         "message": message,
//!         "execution_id": ctx.execution_id(),
//!         "function_id": ctx.function_id(),
//!     }))
//! }
//! ```
//!
//! The SDK owns the process: it takes the runtime's framing channel off stdin/stdout before any
//! user code runs (so a stray `println!` becomes a log line instead of corrupting a response),
//! answers the agent's handshake, and runs each request on a current-thread tokio runtime.
//! A handler's `Err` becomes an error response with its message and status; a panic becomes a
//! failed execution, and the process takes the next request.
//!
//! It must never let user code reach the framing descriptors, and never write anything but
//! frames to them.
//!
//! Built for `wasm32` (`--rust-target wasm`), the same handler becomes a `wasi:http/proxy`
//! component instead (see `wasm.rs`): no code of the user's changes.

mod error;
mod request;
mod response;
#[cfg(not(target_arch = "wasm32"))]
mod runtime;
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod wasm;

pub use error::{Error, ErrorKind, Result};
pub use ignite_macros::main;
pub use request::{Context, Request};
pub use response::{IntoResponse, Json, Response};

/// `use ignite::prelude::*;` brings in everything a handler signature names.
pub mod prelude {
    pub use crate::{Context, Error, IntoResponse, Json, Request, Response, Result};
}

/// Used by the code `#[ignite::main]` generates. Not a public API.
#[doc(hidden)]
pub mod __private {
    #[cfg(not(target_arch = "wasm32"))]
    pub use crate::runtime::run;
    #[cfg(target_arch = "wasm32")]
    pub use {crate::wasm, wasi};
}
