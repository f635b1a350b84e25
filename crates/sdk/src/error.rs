use std::error::Error as StdError;
use std::fmt;

/// `Result<T, ignite::Error>`: what a handler returns.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, for code that wants to react to a particular failure.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// `req.field(key)`: the JSON body has no such key (or is not a JSON object).
    MissingField { key: String },
    /// `req.field(key)`: the key is there but does not deserialize into the requested type.
    InvalidField { key: String },
    /// `req.body()`: the body is empty or is not the JSON the handler asked for.
    InvalidBody,
    /// An error raised by the handler itself (`?` on any error, or [`Error::new`]).
    Handler,
}

/// A handler error: a message, the HTTP status it answers with, and what caused it.
///
/// Any `std::error::Error + Send + Sync` converts into it, so `?` works on the errors of any
/// library. Errors about the request (a missing field, a body that is not the expected JSON)
/// answer 400; everything else 500 unless the handler picks a status with
/// [`Error::with_status`].
pub struct Error {
    kind: ErrorKind,
    status: u16,
    message: String,
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

impl Error {
    /// A handler error with this status and message.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::Handler,
            status,
            message: message.into(),
            source: None,
        }
    }

    /// A handler error answering 500 with this message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Error::new(500, message.to_string())
    }

    pub(crate) fn request(kind: ErrorKind, message: String) -> Self {
        Error {
            kind,
            status: 400,
            message,
            source: None,
        }
    }

    pub(crate) fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The same error answering with another HTTP status.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The error this one was made from, if any.
    pub fn source(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        self.source.as_deref()
    }
}

impl<E: StdError + Send + Sync + 'static> From<E> for Error {
    fn from(e: E) -> Self {
        let mut message = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            message.push_str(": ");
            message.push_str(&c.to_string());
            cause = c.source();
        }
        Error::new(500, message).with_source(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("status", &self.status)
            .field("message", &self.message)
            .finish()
    }
}
