use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ignite_invocation::{Invocation, Logs, Outcome, Reply};
use ignite_protocol::{ErrorKind, Frame, FrameError};
use ignite_sandbox::{Limits, Process, Sandbox, pin_to_cpu};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::{Mutex as AsyncMutex, oneshot};

use crate::logs::LogPipe;

/// How to start one handler instance.
#[derive(Debug, Clone)]
pub struct SpawnConfig {
    /// The handler binary.
    pub program: PathBuf,
    /// The argument vector, `argv[0]` first; empty for a bare `handler`.
    pub args: Vec<String>,
    /// Host paths visible read-only in the sandbox (an interpreter's files).
    pub binds: Vec<ignite_sandbox::Bind>,
    /// The program reserves far more address space than it uses (V8): no RLIMIT_AS backstop
    /// in the sandbox, the memory cgroup alone holds it.
    pub reserves_address_space: bool,
    /// The process environment: exactly these variables, nothing inherited from the agent.
    pub env: Vec<(String, String)>,
    /// How long the handler may take to send its `Hello`.
    pub init_timeout: Duration,
    /// The most log bytes kept per request; the rest is counted in [`Logs::dropped_bytes`].
    pub log_limit: usize,
    /// Pin the instance to this CPU. On a VM, waking a process on another, idle vCPU costs tens
    /// of microseconds per hop; an instance on the CPU of the agent thread that serves it
    /// answers a warm request in a fraction of that (see the runner benchmark).
    pub cpu: Option<usize>,
    /// Run the instance in this sandbox, with these limits; `None` starts it unconfined.
    pub sandbox: Option<(Sandbox, Limits)>,
}

impl SpawnConfig {
    pub fn new(program: impl Into<PathBuf>) -> Self {
        SpawnConfig {
            program: program.into(),
            args: Vec::new(),
            binds: Vec::new(),
            reserves_address_space: false,
            env: Vec::new(),
            init_timeout: Duration::from_secs(10),
            log_limit: 256 * 1024,
            cpu: None,
            sandbox: None,
        }
    }
}

/// Why an instance did not become ready.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("could not start the handler binary {program}: {source}")]
    Exec {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not start the handler binary {program}: {source}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: ignite_sandbox::SpawnError,
    },
    #[error("the handler exited before it was ready ({status}){}", tail(logs))]
    ExitedBeforeReady { status: String, logs: Logs },
    #[error(
        "the handler did not become ready within {after:?}; make sure main does not block before \
         the #[ignite::main] handler starts{}",
        tail(logs)
    )]
    InitTimeout { after: Duration, logs: Logs },
    #[error("{source}")]
    Framing {
        #[source]
        source: FrameError,
        logs: Logs,
    },
    #[error(
        "the handler speaks protocol version {found}, this agent {expected}; rebuild it with \
         `dodil ignite draft compile`"
    )]
    ProtocolMismatch { found: u32, expected: u32 },
    #[error(
        "the container exited ({status}) before it listened on port {port}; the server must \
         listen on $PORT{}",
        tail(logs)
    )]
    ContainerExited {
        status: String,
        port: u16,
        logs: Logs,
    },
    #[error(
        "the container did not listen on port {port} within {after:?}; make its server listen \
         on 0.0.0.0:$PORT (the platform sets PORT={port}), or raise the init timeout{}",
        tail(logs)
    )]
    NotListening {
        port: u16,
        after: Duration,
        logs: Logs,
    },
}

impl SpawnError {
    /// What the handler logged before it failed to start.
    pub fn logs(&self) -> Option<&Logs> {
        match self {
            SpawnError::ExitedBeforeReady { logs, .. }
            | SpawnError::InitTimeout { logs, .. }
            | SpawnError::Framing { logs, .. }
            | SpawnError::ContainerExited { logs, .. }
            | SpawnError::NotListening { logs, .. } => Some(logs),
            _ => None,
        }
    }
}

fn tail(logs: &Logs) -> String {
    match logs.lines.last() {
        Some(last) => format!("; its last log line: {last}"),
        None => String::new(),
    }
}

/// A running handler process. Shared (`&self`): with `concurrency` above 1 several requests are
/// in flight on one instance at once, each matched to its answer by frame id.
///
/// Whoever waits for an answer takes turns reading the channel: the request holding the reader
/// hands every frame it reads to the request it belongs to, and gives the reader up once its
/// own answer is in. One request at a time (the default) thus reads its own answer, with no
/// task in between.
#[derive(Debug)]
pub struct Instance {
    pid: u32,
    spawn: Duration,
    init: Duration,
    /// Sandboxed handlers report a death by signal `n` through their init as exit code 128+n.
    sandboxed: bool,
    child: AsyncMutex<Process>,
    writer: AsyncMutex<Writer>,
    reader: AsyncMutex<Reader>,
    flight: Mutex<Flight>,
    logs: Arc<LogPipe>,
    /// Whether the instance may take another request.
    alive: AtomicBool,
}

#[derive(Debug)]
struct Writer {
    input: pipe::Sender,
    buf: Vec<u8>,
}

#[derive(Debug)]
struct Reader {
    output: pipe::Receiver,
    buf: Vec<u8>,
}

/// The requests in flight.
#[derive(Debug, Default)]
struct Flight {
    next_id: u64,
    pending: HashMap<u64, oneshot::Sender<Outcome>>,
    /// How the channel ended, once it has: every request in flight then, and any later one,
    /// gets this.
    ended: Option<Outcome>,
    /// A request passed its deadline: the instance takes no more and is stopped once the last
    /// request in flight has ended (at once when it is the only one).
    draining: bool,
}

impl Instance {
    /// Starts the handler and waits for it to be ready.
    pub async fn spawn(config: &SpawnConfig) -> Result<Instance, SpawnError> {
        let started = Instant::now();
        // The child borrows the agent's memory until it execs (no page-table copy); sandboxed,
        // it is a zygote prepared ahead of need that only has to exec.
        let spawned = ignite_sandbox::spawn_async(
            &ignite_sandbox::Command {
                program: &config.program,
                argv: &config.args,
                env: &config.env,
                binds: &config.binds,
                reserves_address_space: config.reserves_address_space,
            },
            config.sandbox.as_ref().map(|(s, l)| (s, l)),
        )
        .await
        .map_err(|source| SpawnError::Spawn {
            program: config.program.clone(),
            source,
        })?;
        Instance::adopt(spawned, started, config).await
    }

    /// Serves requests on a process started elsewhere (a template's fork), `started` being
    /// when its start began; waits for it to be ready as [`Instance::spawn`] does.
    pub async fn adopt(
        spawned: ignite_sandbox::Spawned,
        started: Instant,
        config: &SpawnConfig,
    ) -> Result<Instance, SpawnError> {
        let spawned_in = started.elapsed();
        let exec = |source| SpawnError::Exec {
            program: config.program.clone(),
            source,
        };
        let child = spawned.process;
        let input = pipe::Sender::from_owned_fd(spawned.stdin).map_err(exec)?;
        let output = pipe::Receiver::from_owned_fd(spawned.stdout).map_err(exec)?;
        let pid = child.id();
        if let Some(cpu) = config.cpu
            && let Err(e) = pin_to_cpu(pid, cpu)
        {
            tracing::warn!(pid, cpu, "could not pin the instance: {e}");
        }
        let logs = LogPipe::new(File::from(spawned.stderr), config.log_limit, pid).map_err(exec)?;
        tokio::spawn(logs.clone().pump());
        // Start-up logs gather under id 0 (requests count from 1).
        logs.begin(STARTUP);

        let mut instance = Instance {
            pid,
            spawn: spawned_in,
            init: Duration::ZERO,
            sandboxed: config.sandbox.is_some(),
            child: AsyncMutex::new(child),
            writer: AsyncMutex::new(Writer {
                input,
                buf: Vec::with_capacity(16 * 1024),
            }),
            reader: AsyncMutex::new(Reader {
                output,
                buf: Vec::with_capacity(16 * 1024),
            }),
            flight: Mutex::new(Flight {
                next_id: STARTUP + 1,
                ..Flight::default()
            }),
            logs,
            alive: AtomicBool::new(true),
        };
        let hello =
            tokio::time::timeout(config.init_timeout, read_frame(instance.reader.get_mut())).await;
        let failure = match hello {
            Ok(Ok(Some(Frame::Hello(hello)))) => {
                if hello.protocol_version != ignite_protocol::PROTOCOL_VERSION {
                    instance.kill().await;
                    return Err(SpawnError::ProtocolMismatch {
                        found: hello.protocol_version,
                        expected: ignite_protocol::PROTOCOL_VERSION,
                    });
                }
                instance.init = started.elapsed();
                // Anything logged during start-up is the instance's, not the first request's.
                for line in instance.logs.end(STARTUP, true).lines {
                    tracing::debug!(pid, "handler start-up: {line}");
                }
                return Ok(instance);
            }
            // The channel closed before the handshake, cleanly or mid-frame: the process
            // exited (or, sandboxed, never got to exec the handler).
            Ok(Ok(None)) | Ok(Err(FrameError::Truncated)) => {
                let status = instance.reap().await;
                if let Some(source) = instance.child.get_mut().launch_failure() {
                    return Err(SpawnError::Spawn {
                        program: config.program.clone(),
                        source,
                    });
                }
                return Err(SpawnError::ExitedBeforeReady {
                    status,
                    logs: instance.logs.end(STARTUP, true),
                });
            }
            Ok(Ok(Some(other))) => FrameError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "expected the handler's Hello frame, got {}",
                    frame_name(&other)
                ),
            )),
            Ok(Err(e)) => e,
            Err(_) => {
                instance.kill().await;
                return Err(SpawnError::InitTimeout {
                    after: config.init_timeout,
                    logs: instance.logs.end(STARTUP, true),
                });
            }
        };
        instance.kill().await;
        Err(SpawnError::Framing {
            source: failure,
            logs: instance.logs.end(STARTUP, true),
        })
    }

    /// How long the handler took from spawn to ready.
    pub fn init_duration(&self) -> Duration {
        self.init
    }

    /// How much of [`Instance::init_duration`] creating the process took (the rest is the
    /// handler's own start-up until its handshake).
    pub fn spawn_duration(&self) -> Duration {
        self.spawn
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

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the process can take another request.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    /// How many requests are in flight on this instance.
    pub fn in_flight(&self) -> usize {
        self.lock_flight().pending.len()
    }

    fn lock_flight(&self) -> std::sync::MutexGuard<'_, Flight> {
        self.flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs one request. A dead instance answers `Crashed` at once.
    pub async fn invoke(&self, inv: Invocation) -> Reply {
        let started = Instant::now();
        let (id, answer) = {
            let mut flight = self.lock_flight();
            if let Some(ended) = &flight.ended {
                return Reply {
                    outcome: ended.clone(),
                    logs: Logs::default(),
                    duration: Duration::ZERO,
                };
            }
            if !self.is_alive() {
                return Reply {
                    outcome: Outcome::Crashed {
                        exit: "the instance had already stopped".into(),
                    },
                    logs: Logs::default(),
                    duration: Duration::ZERO,
                };
            }
            let id = flight.next_id;
            flight.next_id += 1;
            let (tx, rx) = oneshot::channel();
            flight.pending.insert(id, tx);
            (id, rx)
        };
        self.logs.begin(id);
        let deadline = inv.deadline;
        let exchange = self.exchange(id, inv, answer);
        let result = match deadline {
            Some(at) => tokio::time::timeout_at(at.into(), exchange).await,
            None => Ok(exchange.await),
        };
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(_) => {
                self.lock_flight().pending.remove(&id);
                Outcome::TimedOut {
                    after: started.elapsed(),
                }
            }
        };
        if !outcome.keeps_instance() {
            self.alive.store(false, Ordering::Relaxed);
        }
        let stop_now = {
            let mut flight = self.lock_flight();
            if matches!(outcome, Outcome::TimedOut { .. }) {
                flight.draining = true;
            }
            flight.draining && flight.pending.is_empty() && flight.ended.is_none()
        };
        if stop_now {
            // SIGTERM now; `shutdown` gives the process its grace period and then SIGKILL.
            self.signal(libc::SIGTERM).await;
        }
        let logs = self.logs.end(id, true);
        // Where no memory cgroup kills it, a handler meets its limit as a failed allocation
        // (RLIMIT_AS), which Rust reports on stderr before aborting: the same event. So is V8
        // stopping at its heap limit (a Deno instance's `--max-heap-size`).
        let outcome = match outcome {
            Outcome::Crashed { exit } if logs.lines.iter().any(|l| is_out_of_memory(l)) => {
                Outcome::OutOfMemory { exit }
            }
            other => other,
        };
        Reply {
            outcome,
            logs,
            duration: started.elapsed(),
        }
    }

    /// Asks the handler to exit (a `Shutdown` frame, or the SIGTERM a timed-out instance already
    /// got), waits up to `grace`, then kills it; the process is reaped either way.
    pub async fn shutdown(&self, grace: Duration) {
        let stopping = async {
            if self.alive.swap(false, Ordering::Relaxed) {
                let mut writer = self.writer.lock().await;
                let Writer { input, buf } = &mut *writer;
                buf.clear();
                if ignite_protocol::encode_into(&Frame::Shutdown, buf).is_ok() {
                    let _ = input.write_all(buf).await;
                }
            }
            let _ = self.child.lock().await.wait().await;
        };
        if tokio::time::timeout(grace, stopping).await.is_err() {
            self.kill().await;
        }
    }

    /// Sends request `id` and waits for its answer, reading the channel in turn with the other
    /// requests in flight.
    async fn exchange(
        &self,
        id: u64,
        inv: Invocation,
        mut answer: oneshot::Receiver<Outcome>,
    ) -> Outcome {
        let deadline_unix_ms = inv.deadline.map_or(0, |at| {
            let left = at.saturating_duration_since(Instant::now());
            (SystemTime::now() + left)
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        });
        let frame = Frame::Invoke(ignite_protocol::Invoke {
            id,
            execution_id: inv.execution_id,
            function_id: inv.function_id,
            deadline_unix_ms,
            env: inv.env,
            method: inv.request.method,
            path: inv.request.path,
            query: inv.request.query,
            headers: inv.request.headers,
            body: inv.request.body,
        });
        {
            let mut writer = self.writer.lock().await;
            let Writer { input, buf } = &mut *writer;
            buf.clear();
            if let Err(e) = ignite_protocol::encode_into(&frame, buf) {
                drop(writer);
                self.lock_flight().pending.remove(&id);
                return Outcome::FramingError {
                    message: e.to_string(),
                };
            }
            // A failed write means the process closed its end; whoever reads the channel next
            // finds it closed and tells every request in flight, this one included.
            if let Err(e) = input.write_all(buf).await {
                tracing::debug!(pid = self.pid, "writing a request failed: {e}");
            }
        }
        let mut reader = tokio::select! {
            biased;
            outcome = &mut answer => return outcome.unwrap_or_else(|_| gone()),
            reader = self.reader.lock() => reader,
        };
        // This request reads now, until its own answer is in.
        loop {
            match answer.try_recv() {
                Ok(outcome) => return outcome,
                Err(oneshot::error::TryRecvError::Closed) => return gone(),
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let result = match read_frame(&mut reader).await {
                Ok(Some(frame)) => self.deliver(frame),
                Ok(None) => Err(FrameError::Truncated),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                self.end_channel(e).await;
            }
        }
    }

    /// Hands a frame from the handler to the request it answers.
    fn deliver(&self, frame: Frame) -> Result<(), FrameError> {
        let (id, outcome) = match frame {
            Frame::Response(r) => (
                r.id,
                Outcome::Response {
                    status: r.status,
                    headers: r.headers,
                    body: r.body,
                },
            ),
            Frame::Error(e) => (
                e.id,
                match e.kind {
                    ErrorKind::Handler => Outcome::HandlerError {
                        status: e.status,
                        message: e.message,
                    },
                    ErrorKind::Panic => Outcome::Panicked { message: e.message },
                },
            ),
            Frame::Log(log) => {
                self.logs.push(log.id, &log.line);
                return Ok(());
            }
            other => {
                return Err(FrameError::Io(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the handler sent {} where answers were expected",
                        frame_name(&other)
                    ),
                )));
            }
        };
        match self.lock_flight().pending.remove(&id) {
            // The requester may have given up (its deadline) a moment ago: nothing to do.
            Some(tx) => drop(tx.send(outcome)),
            // An answer to a request that already ended at its deadline.
            None => tracing::debug!(pid = self.pid, id, "a late answer was dropped"),
        }
        Ok(())
    }

    /// The channel broke (`e`): works out how the process ended and tells every request in
    /// flight. Called by the reader, so once.
    async fn end_channel(&self, e: FrameError) {
        let outcome = match e {
            FrameError::Truncated | FrameError::Io(_) => {
                // The process closed its end: it exited or was killed.
                let exit = self.reap().await;
                if self.child.lock().await.oom_killed() {
                    Outcome::OutOfMemory { exit }
                } else {
                    Outcome::Crashed { exit }
                }
            }
            e => {
                self.kill().await;
                Outcome::FramingError {
                    message: e.to_string(),
                }
            }
        };
        self.alive.store(false, Ordering::Relaxed);
        let pending = {
            let mut flight = self.lock_flight();
            flight.ended = Some(outcome.clone());
            std::mem::take(&mut flight.pending)
        };
        for (_, tx) in pending {
            let _ = tx.send(outcome.clone());
        }
    }

    /// Waits for the exited process and describes how it ended.
    async fn reap(&self) -> String {
        self.alive.store(false, Ordering::Relaxed);
        // The framing channel closed; a process that closed it but lives on is killed.
        let mut child = self.child.lock().await;
        match tokio::time::timeout(Duration::from_secs(1), child.wait()).await {
            Ok(Ok(status)) => describe(status, self.sandboxed),
            Ok(Err(e)) => format!("its exit status could not be read: {e}"),
            Err(_) => {
                let _ = child.kill().await;
                "it closed the runtime channel and was killed".into()
            }
        }
    }

    async fn signal(&self, signal: i32) {
        if let Err(e) = self.child.lock().await.signal(signal) {
            tracing::warn!(pid = self.pid, "could not signal the instance: {e}");
        }
    }

    async fn kill(&self) {
        self.alive.store(false, Ordering::Relaxed);
        let _ = self.child.lock().await.kill().await;
    }
}

/// The frame id start-up logs gather under.
pub(crate) const STARTUP: u64 = 0;

/// The outcome of a request whose answer can no longer come (the instance was torn down).
fn gone() -> Outcome {
    Outcome::Crashed {
        exit: "the instance stopped before answering".into(),
    }
}

/// Reads one frame; `Ok(None)` when the handler closed the channel between frames. Cancel-safe:
/// what was read stays in the buffer for the next reader.
async fn read_frame(reader: &mut Reader) -> Result<Option<Frame>, FrameError> {
    ignite_protocol::read_frame_async(&mut reader.output, &mut reader.buf).await
}

pub(crate) fn describe(status: ExitStatus, sandboxed: bool) -> String {
    let signal = match status.code() {
        Some(code) if sandboxed && (129..160).contains(&code) => Some(code - 128),
        Some(_) => None,
        None => status.signal(),
    };
    if let (Some(code), None) = (status.code(), signal) {
        format!("exit code {code}")
    } else if let Some(signal) = signal {
        let name = match signal {
            4 => " (SIGILL)",
            6 => " (SIGABRT)",
            7 => " (SIGBUS)",
            9 => " (SIGKILL)",
            11 => " (SIGSEGV)",
            15 => " (SIGTERM)",
            _ => "",
        };
        format!("killed by signal {signal}{name}")
    } else {
        status.to_string()
    }
}

/// Whether a line a handler wrote as it died says it ran out of memory: Rust's failed
/// allocation, or V8 at its heap limit.
fn is_out_of_memory(line: &str) -> bool {
    (line.starts_with("memory allocation of") && line.ends_with("failed"))
        || line.contains("Fatal JavaScript out of memory")
        || line.contains("Fatal process out of memory")
}

fn frame_name(frame: &Frame) -> &'static str {
    match frame {
        Frame::Hello(_) => "a Hello frame",
        Frame::Invoke(_) => "an Invoke frame",
        Frame::Response(_) => "a Response frame",
        Frame::Error(_) => "an Error frame",
        Frame::Log(_) => "a Log frame",
        Frame::Shutdown => "a Shutdown frame",
    }
}
