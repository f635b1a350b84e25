use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
#[cfg(not(target_arch = "wasm32"))]
use std::time::UNIX_EPOCH;
use std::time::{Duration, SystemTime};

use ignite_protocol::{Frame, Log};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};

/// The request a handler is answering: the HTTP method, path, query and headers it arrived with,
/// and its body, with typed access to a JSON body.
#[derive(Debug)]
pub struct Request {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    json: OnceLock<std::result::Result<Value, String>>,
}

impl Request {
    /// A request, for unit-testing a handler without the platform.
    pub fn new(
        method: impl Into<String>,
        path: impl Into<String>,
        body: impl Into<Vec<u8>>,
    ) -> Self {
        Request {
            method: method.into(),
            path: path.into(),
            query: String::new(),
            headers: Vec::new(),
            body: body.into(),
            json: OnceLock::new(),
        }
    }

    /// The same request with this query string (without `?`).
    pub fn with_query(mut self, query: impl Into<String>) -> Self {
        self.query = query.into();
        self
    }

    /// The same request with one more header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// One field of a JSON-object body, deserialized into `T`.
    ///
    /// Fails with [`ErrorKind::MissingField`] when the key is absent (an empty body has no
    /// fields), and [`ErrorKind::InvalidField`] when it does not fit `T`; both name the key.
    pub fn field<T: DeserializeOwned>(&self, key: &str) -> Result<T> {
        let value = match self.json() {
            Ok(Value::Object(map)) => map.get(key),
            Ok(_) | Err(_) if self.body.is_empty() => None,
            Ok(other) => {
                return Err(Error::request(
                    ErrorKind::MissingField { key: key.into() },
                    format!(
                        "missing field `{key}`: the request body is JSON {} , not an object",
                        json_kind(other)
                    ),
                ))
            }
            Err(e) => {
                return Err(Error::request(
                    ErrorKind::MissingField { key: key.into() },
                    format!("missing field `{key}`: the request body is not JSON ({e})"),
                ))
            }
        };
        let Some(value) = value else {
            return Err(Error::request(
                ErrorKind::MissingField { key: key.into() },
                format!("missing field `{key}` in the request body"),
            ));
        };
        T::deserialize(value).map_err(|e| {
            Error::request(
                ErrorKind::InvalidField { key: key.into() },
                format!("invalid field `{key}` in the request body: {e}"),
            )
            .with_source(e)
        })
    }

    /// The whole JSON body, deserialized into `T`.
    pub fn body<T: DeserializeOwned>(&self) -> Result<T> {
        if self.body.is_empty() {
            return Err(Error::request(
                ErrorKind::InvalidBody,
                "the request body is empty; send a JSON body (e.g. invoke -p '{...}')".into(),
            ));
        }
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::request(
                ErrorKind::InvalidBody,
                format!("the request body does not match what the handler expects: {e}"),
            )
            .with_source(e)
        })
    }

    /// The body's bytes, exactly as sent.
    pub fn raw(&self) -> &[u8] {
        &self.body
    }

    /// `GET`, `POST`, … (`POST` for an API invoke).
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The request path, starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The raw query string, without `?` (empty when there is none).
    pub fn query(&self) -> &str {
        &self.query
    }

    /// All headers, in arrival order, names lowercase.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The first value of a header, matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> &std::result::Result<Value, String> {
        self.json
            .get_or_init(|| serde_json::from_slice(&self.body).map_err(|e| e.to_string()))
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// What the platform knows about the execution a request belongs to.
#[derive(Debug, Clone)]
pub struct Context {
    id: u64,
    execution_id: String,
    function_id: String,
    deadline: Option<SystemTime>,
    env: HashMap<String, String>,
    channel: Option<Arc<Mutex<File>>>,
}

impl Context {
    /// A context, for unit-testing a handler without the platform.
    pub fn new(execution_id: impl Into<String>, function_id: impl Into<String>) -> Self {
        Context {
            id: 0,
            execution_id: execution_id.into(),
            function_id: function_id.into(),
            deadline: None,
            env: HashMap::new(),
            channel: None,
        }
    }

    /// The same context with these environment variables.
    pub fn with_env(mut self, env: HashMap<String, String>) -> Self {
        self.env = env;
        self
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn from_invoke(
        inv: &mut ignite_protocol::Invoke,
        channel: Arc<Mutex<File>>,
    ) -> Self {
        Context {
            id: inv.id,
            execution_id: std::mem::take(&mut inv.execution_id),
            function_id: std::mem::take(&mut inv.function_id),
            deadline: (inv.deadline_unix_ms != 0)
                .then(|| UNIX_EPOCH + Duration::from_millis(inv.deadline_unix_ms)),
            env: std::mem::take(&mut inv.env).into_iter().collect(),
            channel: Some(channel),
        }
    }

    /// The execution's id (a ULID), as `dodil ignite execution get` shows it.
    pub fn execution_id(&self) -> &str {
        &self.execution_id
    }

    /// The function being run, `<org>/<name>`.
    pub fn function_id(&self) -> &str {
        &self.function_id
    }

    /// The app's environment variables, as set for the version being run.
    pub fn env(&self) -> &HashMap<String, String> {
        &self.env
    }

    /// When the platform gives up on this request, if it has a deadline.
    pub fn deadline(&self) -> Option<SystemTime> {
        self.deadline
    }

    /// Time left before the deadline (zero once it has passed).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.duration_since(SystemTime::now()).unwrap_or_default())
    }

    /// Logs a line attributed to this execution, even when the instance serves several requests
    /// at once. (Lines written to stderr with `eprintln!` are logs too.)
    pub fn log(&self, line: impl Into<String>) {
        let line = line.into();
        match &self.channel {
            Some(channel) => {
                let frame = Frame::Log(Log { id: self.id, line });
                if let Ok(bytes) = ignite_protocol::encode(&frame) {
                    let mut out = channel.lock().unwrap_or_else(|p| p.into_inner());
                    // A failed write means the agent is gone; the request's own answer will
                    // fail the same way and end the process.
                    let _ = out.write_all(&bytes);
                }
            }
            None => eprintln!("{line}"),
        }
    }
}

impl Request {
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn from_invoke(inv: ignite_protocol::Invoke) -> Self {
        Request {
            method: inv.method,
            path: inv.path,
            query: inv.query,
            headers: inv.headers,
            body: inv.body,
            json: OnceLock::new(),
        }
    }
}
