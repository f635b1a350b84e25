//! The frames spoken between the node agent and a handler process: the one definition that both
//! sides compile, so they cannot drift.
//!
//! A handler process gets two pipes: the agent writes frames to the handler's fd 0 and reads
//! frames from its fd 1 (the SDK moves both to private descriptors at start-up, see the `ignite`
//! crate). stderr is a plain byte stream of log lines.
//!
//! On the wire every frame is
//!
//! ```text
//! +------+------+----------------+---------------------------+
//! | 'I'  | 'G'  | length: u32 LE | payload: postcard(Frame)  |
//! +------+------+----------------+---------------------------+
//! ```
//!
//! The two magic bytes make stray output (a `println!` in a binary that bypassed the SDK, or a
//! binary that is not a handler at all) a clear [`FrameError::NotAFrame`] instead of a
//! misread length. The length is checked against [`MAX_FRAME_LEN`] *before* anything is
//! allocated for the payload.
//!
//! This crate must never depend on an async runtime: it offers the header/payload codec, blocking
//! helpers for `std::io` and, with the `tokio` feature, one async reader over tokio's `AsyncRead`
//! trait (no runtime), which both the agent and the SDK read frames with.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// Bumped on any incompatible change to [`Frame`]. The agent refuses a handler whose
/// [`Hello::protocol_version`] differs.
pub const PROTOCOL_VERSION: u32 = 1;

/// The two bytes every frame starts with.
pub const MAGIC: [u8; 2] = *b"IG";

/// Bytes in a frame header: magic plus the payload length.
pub const HEADER_LEN: usize = 6;

/// The largest payload accepted on either side (16 MiB). Request and response bodies are capped
/// below this by the platform.
pub const MAX_FRAME_LEN: u32 = 16 * 1024 * 1024;

/// One message on the framing channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// handler → agent, once, as soon as the handler can take requests. The time from spawn to
    /// this frame is the instance's init time.
    Hello(Hello),
    /// agent → handler: run the handler for one request.
    Invoke(Invoke),
    /// handler → agent: the handler's answer to [`Invoke`] `id`.
    Response(Response),
    /// handler → agent: the handler failed on [`Invoke`] `id` (returned `Err` or panicked).
    Error(ErrorFrame),
    /// handler → agent: a log line the handler attributed to [`Invoke`] `id` itself
    /// (`Context::log`). Plain stderr lines are attributed by the agent.
    Log(Log),
    /// agent → handler: finish and exit.
    Shutdown,
}

/// The handshake a handler sends when it is ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u32,
    /// The `ignite` SDK version the handler was built with.
    pub sdk_version: String,
}

/// One request for the handler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoke {
    /// Correlates the answer with this request on this channel.
    pub id: u64,
    /// The execution's ULID, as the user sees it in `execution get`.
    pub execution_id: String,
    /// `<org>/<name>`.
    pub function_id: String,
    /// Milliseconds since the Unix epoch after which the agent gives up on this request;
    /// 0 when there is no deadline.
    pub deadline_unix_ms: u64,
    /// The app's environment variables, as configured for the version being run.
    pub env: Vec<(String, String)>,
    pub method: String,
    pub path: String,
    /// The raw query string, without `?`.
    pub query: String,
    pub headers: Vec<(String, String)>,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// The handler's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub id: u64,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// Why a handler could not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The handler returned `Err`.
    Handler,
    /// The handler panicked; the process survives and takes the next request.
    Panic,
}

/// A handler failure, with the HTTP status the SDK chose for it and its message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    pub id: u64,
    pub kind: ErrorKind,
    pub status: u16,
    pub message: String,
}

/// A log line attributed by the handler to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Log {
    pub id: u64,
    pub line: String,
}

/// What can go wrong reading or writing frames.
/// (`Display` and `Error` are implemented by hand: this crate is linked into every handler, and
/// one small impl is cheaper than another proc-macro in every user build.)
#[derive(Debug)]
pub enum FrameError {
    /// The bytes on the channel do not start with [`MAGIC`].
    NotAFrame {
        preview: Vec<u8>,
    },
    /// The header announces a payload over [`MAX_FRAME_LEN`].
    TooLarge {
        len: u32,
    },
    /// The payload is not a valid [`Frame`].
    Malformed(postcard::Error),
    /// The channel closed in the middle of a frame.
    Truncated,
    Io(io::Error),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::NotAFrame { preview } => write!(
                f,
                "framing error: the handler wrote bytes that are not a runtime frame \
                 (they start with {:?}); stdout is reserved for the runtime framing, so log \
                 with eprintln!() instead of println!() and build the handler with the ignite SDK",
                String::from_utf8_lossy(preview)
            ),
            FrameError::TooLarge { len } => write!(
                f,
                "framing error: a frame of {len} bytes exceeds the {MAX_FRAME_LEN}-byte limit"
            ),
            FrameError::Malformed(e) => write!(f, "framing error: malformed frame payload: {e}"),
            FrameError::Truncated => write!(f, "framing error: the channel closed mid-frame"),
            FrameError::Io(e) => write!(f, "framing channel I/O error: {e}"),
        }
    }
}

impl std::error::Error for FrameError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FrameError::Malformed(e) => Some(e),
            FrameError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    }
}

/// Checks a frame header and returns the payload length it announces. Nothing is allocated.
pub fn decode_header(header: &[u8; HEADER_LEN]) -> Result<u32, FrameError> {
    if header[..2] != MAGIC {
        return Err(FrameError::NotAFrame {
            preview: header.to_vec(),
        });
    }
    let len = u32::from_le_bytes([header[2], header[3], header[4], header[5]]);
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len });
    }
    Ok(len)
}

/// Decodes a payload whose length [`decode_header`] accepted.
pub fn decode_payload(payload: &[u8]) -> Result<Frame, FrameError> {
    postcard::from_bytes(payload).map_err(FrameError::Malformed)
}

/// Decodes one whole frame (header and payload) from the front of `bytes`, returning it and the
/// number of bytes used, or `Ok(None)` when `bytes` holds only part of a frame.
pub fn decode(bytes: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
    let Some(header) = bytes.first_chunk::<HEADER_LEN>() else {
        // Refuse garbage from its first byte rather than wait for a header that never completes.
        let n = bytes.len().min(MAGIC.len());
        if bytes[..n] != MAGIC[..n] {
            return Err(FrameError::NotAFrame {
                preview: bytes.to_vec(),
            });
        }
        return Ok(None);
    };
    let len = decode_header(header)? as usize;
    let Some(payload) = bytes[HEADER_LEN..].get(..len) else {
        return Ok(None);
    };
    Ok(Some((decode_payload(payload)?, HEADER_LEN + len)))
}

/// Encodes `frame` (header and payload) onto the end of `out`.
pub fn encode_into(frame: &Frame, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[0; 4]);
    // postcard appends to an owned `Extend`; hand it the buffer and take it back.
    *out = postcard::to_extend(frame, std::mem::take(out)).map_err(FrameError::Malformed)?;
    let len = out.len() - start - HEADER_LEN;
    match u32::try_from(len) {
        Ok(len) if len <= MAX_FRAME_LEN => {
            out[start + 2..start + HEADER_LEN].copy_from_slice(&len.to_le_bytes());
            Ok(())
        }
        _ => {
            out.truncate(start);
            Err(FrameError::TooLarge {
                len: u32::try_from(len).unwrap_or(u32::MAX),
            })
        }
    }
}

/// Encodes `frame` into a new buffer.
pub fn encode(frame: &Frame) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    encode_into(frame, &mut out)?;
    Ok(out)
}

/// Reads one frame with blocking I/O. `Ok(None)` means the channel closed cleanly between frames.
pub fn read_frame(r: &mut impl Read, buf: &mut Vec<u8>) -> Result<Option<Frame>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        match r.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
        // Refuse garbage as soon as the magic bytes are in, rather than waiting for a header
        // that may never complete.
        let n = filled.min(MAGIC.len());
        if header[..n] != MAGIC[..n] {
            return Err(FrameError::NotAFrame {
                preview: header[..filled].to_vec(),
            });
        }
    }
    let len = decode_header(&header)? as usize;
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(buf)?;
    decode_payload(buf).map(Some)
}

/// Writes one frame with blocking I/O, in a single `write_all` so that the frame is contiguous.
pub fn write_frame(w: &mut impl Write, frame: &Frame, buf: &mut Vec<u8>) -> Result<(), FrameError> {
    buf.clear();
    encode_into(frame, buf)?;
    w.write_all(buf)?;
    Ok(())
}

/// Reads one frame from an async reader, keeping any bytes past it in `buf` for the next call.
/// `Ok(None)` means the channel closed cleanly between frames. Cancel-safe: what was read stays
/// in `buf`.
#[cfg(feature = "tokio")]
pub async fn read_frame_async<R>(r: &mut R, buf: &mut Vec<u8>) -> Result<Option<Frame>, FrameError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    loop {
        if let Some((frame, used)) = decode(buf)? {
            buf.drain(..used);
            return Ok(Some(frame));
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        if r.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
    }
}
