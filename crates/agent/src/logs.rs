//! Collects a handler's stderr as log lines for the requests in flight.

use std::fs::File;
use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use ignite_invocation::Logs;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// The logs of one request in flight, and how many bytes of them are kept.
#[derive(Debug, Default)]
struct Bucket {
    logs: Logs,
    kept_bytes: usize,
}

#[derive(Debug)]
struct State {
    partial: Vec<u8>,
    /// The requests in flight, by frame id: each gets every line written while it runs.
    open: Vec<(u64, Bucket)>,
    limit: usize,
    eof: bool,
}

/// The handler's stderr pipe, read both by a background task (so the handler never blocks on a
/// full pipe) and, synchronously, when an answer arrives: the handler wrote its log lines before
/// it wrote its answer, so at that moment every line of the request is already in the pipe.
/// All reads happen under one lock, so lines stay in order.
///
/// A line belongs to every request in flight when it was written: with one request at a time
/// (the default) that is exactly its own; of an instance serving several at once, a byte stream
/// cannot tell which wrote it (`Context::log` attributes a line exactly). A line written while
/// nothing is in flight belongs to the instance and goes to the agent's own log.
#[derive(Debug)]
pub(crate) struct LogPipe {
    fd: AsyncFd<File>,
    pid: u32,
    state: Mutex<State>,
}

impl LogPipe {
    pub(crate) fn new(fd: File, limit: usize, pid: u32) -> io::Result<Arc<Self>> {
        set_nonblocking(&fd)?;
        // SAFETY: `fd` is a `File`, which owns its descriptor: it stays open and refers to the
        // same pipe until the `AsyncFd` (and with it the `File`) is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        Ok(Arc::new(LogPipe {
            fd,
            pid,
            state: Mutex::new(State {
                partial: Vec::new(),
                open: Vec::new(),
                limit,
                eof: false,
            }),
        }))
    }

    /// Reads the pipe until the handler closes it (it exits).
    pub(crate) async fn pump(self: Arc<Self>) {
        loop {
            let Ok(mut guard) = self.fd.readable().await else {
                return;
            };
            let mut state = self.lock();
            match self.drain(guard.get_inner(), &mut state) {
                Ok(()) if state.eof => return,
                Ok(()) => guard.clear_ready(),
                Err(_) => return,
            }
        }
    }

    /// Request `id` starts: lines from now on are (also) its.
    pub(crate) fn begin(&self, id: u64) {
        self.lock().open.push((id, Bucket::default()));
    }

    /// Request `id` ends: takes its lines, including a last line without a newline. With `sync`,
    /// first reads what the pipe holds right now (the caller knows the handler has written all
    /// it is going to for the request); without, takes what the background reader has collected.
    pub(crate) fn end(&self, id: u64, sync: bool) -> Logs {
        let mut state = self.lock();
        if sync {
            // An error here means the pipe is gone; what was read already is still returned.
            let _ = self.drain(self.fd.get_ref(), &mut state);
        }
        if !state.partial.is_empty() {
            let partial = std::mem::take(&mut state.partial);
            self.push_line(&mut state, None, &partial);
        }
        match state.open.iter().position(|(open, _)| *open == id) {
            Some(i) => state.open.swap_remove(i).1.logs,
            None => Logs::default(),
        }
    }

    /// Appends a line the handler attributed to request `id` itself.
    pub(crate) fn push(&self, id: u64, line: &str) {
        self.push_line(&mut self.lock(), Some(id), line.as_bytes());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads what the pipe holds now, without waiting. `Ok` at `WouldBlock` or end of file.
    fn drain(&self, mut fd: &File, state: &mut State) -> io::Result<()> {
        let mut buf = [0u8; 8192];
        loop {
            match fd.read(&mut buf) {
                Ok(0) => {
                    state.eof = true;
                    return Ok(());
                }
                Ok(n) => self.split_lines(state, &buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn split_lines(&self, state: &mut State, mut bytes: &[u8]) {
        while let Some(nl) = bytes.iter().position(|&b| b == b'\n') {
            let (line, rest) = bytes.split_at(nl);
            if state.partial.is_empty() {
                self.push_line(state, None, line);
            } else {
                let mut whole = std::mem::take(&mut state.partial);
                whole.extend_from_slice(line);
                self.push_line(state, None, &whole);
            }
            bytes = &rest[1..];
        }
        // Keep at most one log line's worth of an unfinished line.
        let room = state.limit.saturating_sub(state.partial.len());
        let keep = bytes.len().min(room);
        state.partial.extend_from_slice(&bytes[..keep]);
        for (_, bucket) in &mut state.open {
            bucket.logs.dropped_bytes += (bytes.len() - keep) as u64;
        }
    }

    /// Adds a line to request `to`, or to every request in flight.
    fn push_line(&self, state: &mut State, to: Option<u64>, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if state.open.is_empty() {
            tracing::debug!(
                pid = self.pid,
                "handler (no request in flight): {}",
                String::from_utf8_lossy(line)
            );
            return;
        }
        let limit = state.limit;
        for (id, bucket) in &mut state.open {
            if to.is_some_and(|to| to != *id) {
                continue;
            }
            if bucket.kept_bytes + line.len() > limit {
                bucket.logs.dropped_bytes += line.len() as u64 + 1;
                continue;
            }
            bucket.kept_bytes += line.len() + 1;
            bucket
                .logs
                .lines
                .push(String::from_utf8_lossy(line).into_owned());
        }
    }
}

/// The synchronous drain in [`LogPipe::end`] must never wait, so the pipe must not block.
fn set_nonblocking(fd: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl on a descriptor owned by the borrowed `File`; F_GETFL/F_SETFL touch only the
    // file status flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
