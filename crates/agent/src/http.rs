//! An instance that serves HTTP: a container image's server (the Knative and Cloud Run
//! contract). The process listens on `$PORT` inside its own network namespace; the agent
//! reaches it through sockets made in that namespace ([`ignite_sandbox::Netns::tcp_socket`]),
//! so nothing listens on the host. Ready means the port accepts a connection. Each request is
//! forwarded as HTTP/1.1 over a kept-alive connection (one per request in flight), with the
//! execution's headers added, driven by the request's own task; the response comes back as it
//! is. Everything the process writes to stdout and stderr is the logs of the requests in
//! flight.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use ignite_invocation::{Invocation, Logs, Outcome, Reply};
use ignite_sandbox::{Limits, Netns, Prepared, Process};
use tokio::sync::Mutex as AsyncMutex;

use crate::instance::{STARTUP, SpawnError, describe};
use crate::logs::LogPipe;

/// The most response body bytes forwarded (Lambda's limit for a synchronous response).
pub const MAX_RESPONSE_BYTES: usize = 6 << 20;

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1): never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// How to start one HTTP instance.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// The program, as a path inside the instance's root.
    pub program: PathBuf,
    /// The argument vector, `argv[0]` first.
    pub args: Vec<String>,
    /// The complete environment (the image's, the app's, `PORT`).
    pub env: Vec<(String, String)>,
    /// The port the process listens on, inside its namespace.
    pub port: u16,
    /// How long the process may take to accept a connection on its port.
    pub init_timeout: Duration,
    /// The most log bytes kept per request.
    pub log_limit: usize,
}

/// One kept-alive connection to the container.
///
/// Its I/O (hyper's `Connection` future, `driver`) runs in the task of the request using it,
/// not in a task of its own: the container's answer wakes that task directly. With a task of
/// its own every request crossed between tasks twice more (the request handed to it, the
/// answer handed back), each hop a wake-up that may land on another thread. Between requests
/// nothing polls it; a connection the container closed meanwhile is found closed at its next
/// use, before the request has gone out, and the request goes on a new one.
struct Connection {
    sender: SendRequest<Full<Bytes>>,
    /// `None` once it has finished (the connection is closed): dropping it is what tells
    /// `sender`, whose waits would otherwise never end.
    driver: Option<Driver>,
    /// Taken from the idle list (it served a request before): the container may have closed
    /// it meanwhile.
    reused: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("ended", &self.driver.is_none())
            .field("reused", &self.reused)
            .finish_non_exhaustive()
    }
}

impl Connection {
    fn is_usable(&self) -> bool {
        self.driver.is_some() && !self.sender.is_closed()
    }
}

/// hyper's half of a connection that does its I/O.
type Driver = std::pin::Pin<Box<http1::Connection<TokioIo<QuickAck>, Full<Bytes>>>>;

/// Runs `work`, one step of a request on a connection, while driving the connection (`driver`)
/// in the same task. If the connection ends first, it is dropped and `work` runs to its end:
/// what the connection delivered before it closed is there, and anything else fails.
async fn drive<F: std::future::Future>(
    driver: &mut Option<Driver>,
    pid: u32,
    work: F,
) -> F::Output {
    let mut work = std::pin::pin!(work);
    let Some(running) = driver.as_mut() else {
        return work.await;
    };
    tokio::select! {
        biased;
        out = &mut work => out,
        closed = running.as_mut() => {
            *driver = None;
            if let Err(e) = closed {
                tracing::debug!(pid, "connection to the container ended: {e}");
            }
            work.await
        }
    }
}

/// The connection's stream, acknowledging what arrives at once rather than on the
/// delayed-ACK timer: re-armed after every read and write (the kernel leaves quick-ack mode on
/// its own, and enters delayed-ACK "ping-pong" mode when a send follows a receive). Without it a
/// server that writes its answer's head and body in two writes with Nagle's algorithm on —
/// Python's `http.server`, and many more — waits ~40 ms for the first one's ACK before it sends
/// the second.
struct QuickAck(tokio::net::TcpStream);

impl QuickAck {
    fn rearm(&self) {
        let on: libc::c_int = 1;
        // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live local; the descriptor
        // is the stream's own, open while `self` is.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&self.0),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

impl tokio::io::AsyncRead for QuickAck {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let polled = std::pin::Pin::new(&mut self.0).poll_read(cx, buf);
        if polled.is_ready() {
            self.rearm();
        }
        polled
    }
}

impl tokio::io::AsyncWrite for QuickAck {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.0).poll_write(cx, buf);
        if polled.is_ready() {
            self.rearm();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.0).poll_write_vectored(cx, bufs);
        if polled.is_ready() {
            self.rearm();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A running HTTP server process in the sandbox, shared by the requests in flight on it.
#[derive(Debug)]
pub struct HttpInstance {
    pid: u32,
    spawn: Duration,
    init: Duration,
    port: u16,
    netns: Netns,
    child: AsyncMutex<Process>,
    /// Connections between requests, ready for the next one.
    idle: Mutex<Vec<Connection>>,
    stdout: Arc<LogPipe>,
    stderr: Arc<LogPipe>,
    next_id: AtomicU64,
    in_flight: AtomicUsize,
    alive: AtomicBool,
    /// A request passed its deadline: the process is killed once nothing else is in flight.
    draining: AtomicBool,
}

impl HttpInstance {
    /// Starts `config` in `prepared` (an image's sandbox, see [`Prepared::image`]) and waits
    /// until its port accepts a connection.
    pub async fn start(
        prepared: Prepared,
        config: &HttpConfig,
        limits: &Limits,
    ) -> Result<HttpInstance, SpawnError> {
        let started = Instant::now();
        // A container may be anything: V8, the JVM and Go reserve far more address space than
        // they use, so where a memory cgroup holds the instance, RLIMIT_AS is not set.
        let reserves_address_space = prepared.has_memory_cgroup();
        let spawned = ignite_sandbox::spawn_prepared(
            prepared,
            &ignite_sandbox::Command {
                program: &config.program,
                argv: &config.args,
                env: &config.env,
                binds: &[],
                reserves_address_space,
            },
            limits,
        )
        .map_err(|source| SpawnError::Spawn {
            program: config.program.clone(),
            source,
        })?;
        let spawn = started.elapsed();
        let exec = |source| SpawnError::Exec {
            program: config.program.clone(),
            source,
        };
        let Some(netns) = spawned.netns else {
            return Err(exec(std::io::Error::other(
                "the sandbox kept no network namespace for the instance",
            )));
        };
        let pid = spawned.process.id();
        // The container has no use for its stdin: it reads end of file.
        drop(spawned.stdin);
        let stdout =
            LogPipe::new(File::from(spawned.stdout), config.log_limit, pid).map_err(exec)?;
        let stderr =
            LogPipe::new(File::from(spawned.stderr), config.log_limit, pid).map_err(exec)?;
        for pipe in [&stdout, &stderr] {
            tokio::spawn(pipe.clone().pump());
            pipe.begin(STARTUP);
        }
        let mut instance = HttpInstance {
            pid,
            spawn,
            init: Duration::ZERO,
            port: config.port,
            netns,
            child: AsyncMutex::new(spawned.process),
            idle: Mutex::new(Vec::new()),
            stdout,
            stderr,
            next_id: AtomicU64::new(STARTUP + 1),
            in_flight: AtomicUsize::new(0),
            alive: AtomicBool::new(true),
            draining: AtomicBool::new(false),
        };
        let deadline = started + config.init_timeout;
        let mut pause = Duration::from_micros(50);
        loop {
            let attempt = tokio::time::timeout_at(deadline.into(), instance.connect()).await;
            match attempt.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())) {
                Ok(sender) => {
                    instance.init = started.elapsed();
                    instance.idle_push(sender);
                    for line in instance.logs(STARTUP).lines {
                        tracing::debug!(pid, "container start-up: {line}");
                    }
                    return Ok(instance);
                }
                Err(e) => tracing::trace!(pid, "port {} not ready: {e}", config.port),
            }
            let exited = instance.child.get_mut().try_wait();
            if let Ok(Some(status)) = exited {
                instance.alive.store(false, Ordering::Relaxed);
                if let Some(source) = instance.child.get_mut().launch_failure() {
                    return Err(SpawnError::Spawn {
                        program: config.program.clone(),
                        source,
                    });
                }
                return Err(SpawnError::ContainerExited {
                    status: describe(status, true),
                    port: config.port,
                    logs: instance.logs(STARTUP),
                });
            }
            if Instant::now() >= deadline {
                instance.kill().await;
                return Err(SpawnError::NotListening {
                    port: config.port,
                    after: config.init_timeout,
                    logs: instance.logs(STARTUP),
                });
            }
            let wait = pause.min(deadline.saturating_duration_since(Instant::now()));
            if wait < Duration::from_millis(1) {
                // tokio's timers tick in milliseconds: a static server is up in a fraction of
                // one, so the first waits sleep a blocking-pool thread instead.
                let _ = tokio::task::spawn_blocking(move || std::thread::sleep(wait)).await;
            } else {
                tokio::time::sleep(wait).await;
            }
            pause = (pause * 3 / 2).min(Duration::from_millis(5));
        }
    }

    /// A new connection to the process's port, inside its namespace, ready for a request.
    async fn connect(&self) -> std::io::Result<Connection> {
        let socket: OwnedFd = self.netns.tcp_socket()?;
        let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let stream = socket.connect(address).await?;
        stream.set_nodelay(true)?;
        let (sender, driver) = http1::handshake(TokioIo::new(QuickAck(stream)))
            .await
            .map_err(std::io::Error::other)?;
        Ok(Connection {
            sender,
            driver: Some(Box::pin(driver)),
            reused: false,
        })
    }

    /// [`Self::connect`], its failure told as the request's outcome.
    async fn connect_or_refused(&self) -> Result<Connection, Outcome> {
        self.connect().await.map_err(|e| Outcome::Crashed {
            exit: format!("the container's port {} refused: {e}", self.port),
        })
    }

    fn idle_push(&self, sender: Connection) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(sender);
    }

    fn idle_pop(&self) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(mut conn) = idle.pop() {
            if conn.is_usable() {
                conn.reused = true;
                return Some(conn);
            }
        }
        None
    }

    /// The lines of request `id` from both streams, stdout's first.
    fn logs(&self, id: u64) -> Logs {
        let mut logs = self.stdout.end(id, true);
        let err = self.stderr.end(id, true);
        logs.lines.extend(err.lines);
        logs.dropped_bytes += err.dropped_bytes;
        logs
    }

    /// How long the process took from spawn to accepting a connection.
    pub fn init_duration(&self) -> Duration {
        self.init
    }

    /// How much of [`HttpInstance::init_duration`] creating the process took.
    pub fn spawn_duration(&self) -> Duration {
        self.spawn
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the process can take another request.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    /// Whether the process has exited (it is then reaped and the instance dead).
    pub fn has_exited(&self) -> bool {
        if self.is_alive()
            && let Ok(mut child) = self.child.try_lock()
            && matches!(child.try_wait(), Ok(Some(_)))
        {
            self.alive.store(false, Ordering::Relaxed);
        }
        !self.is_alive()
    }

    /// Forwards one request. A dead instance answers `Crashed` at once.
    pub async fn invoke(&self, inv: Invocation) -> Reply {
        let started = Instant::now();
        if !self.is_alive() {
            return Reply {
                outcome: Outcome::Crashed {
                    exit: "the instance had already stopped".into(),
                },
                logs: Logs::default(),
                duration: Duration::ZERO,
            };
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.stdout.begin(id);
        self.stderr.begin(id);
        let deadline = inv.deadline;
        let exchange = self.exchange(inv);
        let outcome = match deadline {
            Some(at) => match tokio::time::timeout_at(at.into(), exchange).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    self.draining.store(true, Ordering::Relaxed);
                    Outcome::TimedOut {
                        after: started.elapsed(),
                    }
                }
            },
            None => exchange.await,
        };
        let outcome = match outcome {
            Outcome::Crashed { exit } => self.ended(exit).await,
            other => other,
        };
        if !outcome.keeps_instance() {
            self.alive.store(false, Ordering::Relaxed);
        }
        let last = self.in_flight.fetch_sub(1, Ordering::Relaxed) == 1;
        if last && self.draining.load(Ordering::Relaxed) {
            self.kill().await;
        }
        Reply {
            outcome,
            logs: self.logs(id),
            duration: started.elapsed(),
        }
    }

    async fn exchange(&self, inv: Invocation) -> Outcome {
        let mut conn = match self.idle_pop() {
            Some(conn) => conn,
            None => match self.connect_or_refused().await {
                Ok(conn) => conn,
                Err(refused) => return refused,
            },
        };
        let request = match build_request(inv) {
            Ok(request) => request,
            Err(message) => {
                self.idle_push(conn);
                return Outcome::HandlerError {
                    status: 400,
                    message,
                };
            }
        };
        let mut request = request;
        let pid = self.pid;
        let response = loop {
            let Connection {
                sender,
                driver,
                reused,
            } = &mut conn;
            let ready = drive(driver, pid, sender.ready()).await;
            let sent = match ready {
                Ok(()) => drive(driver, pid, sender.try_send_request(request)).await,
                // A kept-alive connection the container closed while it was idle: the
                // request has not gone out, so it goes on a new connection.
                Err(_) if *reused => {
                    conn = match self.connect_or_refused().await {
                        Ok(fresh) => fresh,
                        Err(refused) => return refused,
                    };
                    continue;
                }
                Err(e) => {
                    return Outcome::Crashed {
                        exit: format!("the container closed its connection: {e}"),
                    };
                }
            };
            match sent {
                Ok(response) => break response,
                // A kept-alive connection the container closed as the request went out: the
                // request never reached it, so it goes once more, on a new connection.
                Err(mut e) if *reused && e.message().is_some() => {
                    let Some(again) = e.take_message() else {
                        return Outcome::Crashed {
                            exit: format!("the container's connection failed: {}", e.error()),
                        };
                    };
                    request = again;
                    conn = match self.connect_or_refused().await {
                        Ok(fresh) => fresh,
                        Err(refused) => return refused,
                    };
                }
                Err(e) => {
                    return Outcome::Crashed {
                        exit: format!("the container's connection failed: {}", e.error()),
                    };
                }
            }
        };
        let (parts, body) = response.into_parts();
        let collected = drive(
            &mut conn.driver,
            pid,
            Limited::new(body, MAX_RESPONSE_BYTES).collect(),
        )
        .await;
        let body = match collected {
            Ok(body) => body.to_bytes(),
            Err(e) => {
                let message = if e
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    format!(
                        "the container's response body is larger than {} MiB; stream large \
                         content from storage instead",
                        MAX_RESPONSE_BYTES >> 20
                    )
                } else {
                    return Outcome::Crashed {
                        exit: format!("the container's response ended early: {e}"),
                    };
                };
                return Outcome::HandlerError {
                    status: 502,
                    message,
                };
            }
        };
        if conn.is_usable() {
            self.idle_push(conn);
        }
        let headers = parts
            .headers
            .iter()
            .filter(|(name, _)| !HOP_BY_HOP.contains(&name.as_str()))
            .map(|(name, value)| {
                (
                    name.as_str().to_string(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect();
        Outcome::Response {
            status: parts.status.as_u16(),
            headers,
            body: body.to_vec(),
        }
    }

    /// A request failed on its connection: if the process has died, how (its memory limit, a
    /// crash); if it lives, the container dropped the connection, which is its error.
    async fn ended(&self, exit: String) -> Outcome {
        let mut child = self.child.lock().await;
        match tokio::time::timeout(Duration::from_millis(200), child.wait()).await {
            Ok(Ok(status)) => {
                self.alive.store(false, Ordering::Relaxed);
                let exit = describe(status, true);
                if child.oom_killed() {
                    Outcome::OutOfMemory { exit }
                } else {
                    Outcome::Crashed { exit }
                }
            }
            _ => Outcome::HandlerError {
                status: 502,
                message: format!("{exit}; the container is still running"),
            },
        }
    }

    /// Sends SIGTERM (what Knative and Cloud Run send), waits up to `grace`, then kills it.
    pub async fn shutdown(&self, grace: Duration) {
        self.alive.store(false, Ordering::Relaxed);
        let mut child = self.child.lock().await;
        if let Err(e) = child.signal(libc::SIGTERM) {
            tracing::debug!(pid = self.pid, "could not signal the container: {e}");
        }
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    }

    async fn kill(&self) {
        self.alive.store(false, Ordering::Relaxed);
        let _ = self.child.lock().await.kill().await;
    }
}

/// The request as the container receives it: the user's, with the execution's headers.
fn build_request(inv: Invocation) -> Result<hyper::Request<Full<Bytes>>, String> {
    let request = inv.request;
    let mut uri = if request.path.starts_with('/') {
        request.path.clone()
    } else {
        format!("/{}", request.path)
    };
    if !request.query.is_empty() {
        uri.push('?');
        uri.push_str(&request.query);
    }
    let mut builder = hyper::Request::builder()
        .method(request.method.as_str())
        .uri(uri);
    for (name, value) in &request.headers {
        let lower = name.to_ascii_lowercase();
        if HOP_BY_HOP.contains(&lower.as_str()) || lower.starts_with("x-ignite-") {
            continue;
        }
        builder = builder.header(name.as_str(), value.as_str());
    }
    if !request
        .headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("host"))
    {
        builder = builder.header("host", "localhost");
    }
    builder
        .header("x-ignite-execution-id", inv.execution_id.as_str())
        .header("x-ignite-function-id", inv.function_id.as_str())
        .body(Full::new(Bytes::from(request.body)))
        .map_err(|e| format!("the request cannot be forwarded as HTTP/1.1: {e}"))
}
