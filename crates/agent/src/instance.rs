use std::fs::File;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ignite_protocol::{ErrorKind, Frame, FrameError};
use ignite_sandbox::{Limits, Process, Sandbox, pin_to_cpu};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

use crate::logs::{LogPipe, Logs};

/// How to start one handler instance.
#[derive(Debug, Clone)]
pub struct SpawnConfig {
    /// The handler binary.
    pub program: PathBuf,
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
}

impl SpawnError {
    /// What the handler logged before it failed to start.
    pub fn logs(&self) -> Option<&Logs> {
        match self {
            SpawnError::ExitedBeforeReady { logs, .. }
            | SpawnError::InitTimeout { logs, .. }
            | SpawnError::Framing { logs, .. } => Some(logs),
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

/// One request for a handler.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    pub execution_id: String,
    pub function_id: String,
    /// The app's environment, handed to `Context::env`.
    pub env: Vec<(String, String)>,
    /// When to give up; `None` waits for ever.
    pub deadline: Option<Instant>,
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// How an invocation ended.
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
#[derive(Debug, Clone)]
pub struct Reply {
    pub outcome: Outcome,
    pub logs: Logs,
    /// From sending the request to its outcome.
    pub duration: Duration,
}

/// A running handler process.
#[derive(Debug)]
pub struct Instance {
    child: Process,
    pid: u32,
    input: pipe::Sender,
    output: pipe::Receiver,
    logs: Arc<LogPipe>,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    next_id: u64,
    spawn: Duration,
    init: Duration,
    alive: bool,
    /// Sandboxed handlers report a death by signal `n` through their init as exit code 128+n.
    sandboxed: bool,
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
                env: &config.env,
            },
            config.sandbox.as_ref().map(|(s, l)| (s, l)),
        )
        .await
        .map_err(|source| SpawnError::Spawn {
            program: config.program.clone(),
            source,
        })?;
        let spawned_in = started.elapsed();
        let exec = |source| SpawnError::Exec {
            program: config.program.clone(),
            source,
        };
        let child = spawned.process;
        let input = pipe::Sender::from_owned_fd(spawned.stdin).map_err(exec)?;
        let output = pipe::Receiver::from_owned_fd(spawned.stdout).map_err(exec)?;
        let stderr = spawned.stderr;
        let pid = child.id();
        if let Some(cpu) = config.cpu
            && let Err(e) = pin_to_cpu(pid, cpu)
        {
            tracing::warn!(pid, cpu, "could not pin the instance: {e}");
        }
        let stderr = LogPipe::new(File::from(stderr), config.log_limit).map_err(exec)?;
        tokio::spawn(stderr.clone().pump());

        let mut instance = Instance {
            child,
            pid,
            input,
            output,
            logs: stderr,
            rbuf: Vec::with_capacity(16 * 1024),
            wbuf: Vec::with_capacity(16 * 1024),
            next_id: 1,
            spawn: spawned_in,
            sandboxed: config.sandbox.is_some(),
            init: Duration::ZERO,
            alive: true,
        };
        let hello = tokio::time::timeout(config.init_timeout, instance.read_frame()).await;
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
                let startup = instance.logs.take(true);
                for line in startup.lines {
                    tracing::debug!(pid, "handler start-up: {line}");
                }
                return Ok(instance);
            }
            // The channel closed before the handshake, cleanly or mid-frame: the process
            // exited (or, sandboxed, never got to exec the handler).
            Ok(Ok(None)) | Ok(Err(FrameError::Truncated)) => {
                let status = instance.reap().await;
                if let Some(source) = instance.child.launch_failure() {
                    return Err(SpawnError::Spawn {
                        program: config.program.clone(),
                        source,
                    });
                }
                return Err(SpawnError::ExitedBeforeReady {
                    status,
                    logs: instance.logs.take(true),
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
                    logs: instance.logs.take(true),
                });
            }
        };
        instance.kill().await;
        Err(SpawnError::Framing {
            source: failure,
            logs: instance.logs.take(true),
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
    pub fn has_exited(&mut self) -> bool {
        if self.alive && matches!(self.child.try_wait(), Ok(Some(_))) {
            self.alive = false;
        }
        !self.alive
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the process can take another request.
    pub fn is_alive(&self) -> bool {
        self.alive
    }

    /// Runs one request. A dead instance answers `Crashed` at once.
    pub async fn invoke(&mut self, inv: Invocation) -> Reply {
        let started = Instant::now();
        if !self.alive {
            return Reply {
                outcome: Outcome::Crashed {
                    exit: "the instance had already stopped".into(),
                },
                logs: Logs::default(),
                duration: Duration::ZERO,
            };
        }
        // Lines logged between requests belong to no request.
        let stale = self.logs.take(false);
        for line in stale.lines {
            tracing::debug!(pid = self.pid, "handler (between requests): {line}");
        }
        let deadline = inv.deadline;
        let exchange = self.exchange(inv);
        let result = match deadline {
            Some(at) => tokio::time::timeout_at(at.into(), exchange).await,
            None => Ok(exchange.await),
        };
        let outcome = match result {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(FrameError::Truncated)) | Ok(Err(FrameError::Io(_))) => {
                // The process closed its end: it exited or was killed.
                let exit = self.reap().await;
                if self.child.oom_killed() {
                    Outcome::OutOfMemory { exit }
                } else {
                    Outcome::Crashed { exit }
                }
            }
            Ok(Err(e)) => {
                self.kill().await;
                Outcome::FramingError {
                    message: e.to_string(),
                }
            }
            Err(_) => {
                // SIGTERM now; `shutdown` gives the process its grace period and then SIGKILL.
                self.alive = false;
                self.signal(libc::SIGTERM);
                Outcome::TimedOut {
                    after: started.elapsed(),
                }
            }
        };
        if !outcome.keeps_instance() {
            self.alive = false;
        }
        let logs = self.logs.take(true);
        // Where no memory cgroup kills it, a handler meets its limit as a failed allocation
        // (RLIMIT_AS), which Rust reports on stderr before aborting: the same event.
        let outcome = match outcome {
            Outcome::Crashed { exit }
                if logs
                    .lines
                    .iter()
                    .any(|l| l.starts_with("memory allocation of") && l.ends_with("failed")) =>
            {
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
    pub async fn shutdown(mut self, grace: Duration) {
        if self.alive {
            self.wbuf.clear();
            if ignite_protocol::encode_into(&Frame::Shutdown, &mut self.wbuf).is_ok() {
                let _ = self.input.write_all(&self.wbuf).await;
            }
        }
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            self.kill().await;
        }
    }

    async fn exchange(&mut self, inv: Invocation) -> Result<Outcome, FrameError> {
        let id = self.next_id;
        self.next_id += 1;
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
            method: inv.method,
            path: inv.path,
            query: inv.query,
            headers: inv.headers,
            body: inv.body,
        });
        self.wbuf.clear();
        ignite_protocol::encode_into(&frame, &mut self.wbuf)?;
        self.input.write_all(&self.wbuf).await?;
        loop {
            let frame = self.read_frame().await?.ok_or(FrameError::Truncated)?;
            match frame {
                Frame::Response(r) if r.id == id => {
                    return Ok(Outcome::Response {
                        status: r.status,
                        headers: r.headers,
                        body: r.body,
                    });
                }
                Frame::Error(e) if e.id == id => {
                    return Ok(match e.kind {
                        ErrorKind::Handler => Outcome::HandlerError {
                            status: e.status,
                            message: e.message,
                        },
                        ErrorKind::Panic => Outcome::Panicked { message: e.message },
                    });
                }
                Frame::Log(log) if log.id == id => self.logs.push(&log.line),
                other => {
                    return Err(FrameError::Io(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "the handler sent {} while request {id} was in flight",
                            frame_name(&other)
                        ),
                    )));
                }
            }
        }
    }

    /// Reads one frame; `Ok(None)` when the handler closed the channel between frames.
    async fn read_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            if let Some((frame, used)) = ignite_protocol::decode(&self.rbuf)? {
                self.rbuf.drain(..used);
                return Ok(Some(frame));
            }
            if self.rbuf.capacity() - self.rbuf.len() < 4096 {
                self.rbuf.reserve(16 * 1024);
            }
            if self.output.read_buf(&mut self.rbuf).await? == 0 {
                return if self.rbuf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
        }
    }

    /// Waits for the exited process and describes how it ended.
    async fn reap(&mut self) -> String {
        self.alive = false;
        // The framing channel closed; a process that closed it but lives on is killed.
        match tokio::time::timeout(Duration::from_secs(1), self.child.wait()).await {
            Ok(Ok(status)) => describe(status, self.sandboxed),
            Ok(Err(e)) => format!("its exit status could not be read: {e}"),
            Err(_) => {
                self.kill().await;
                "it closed the runtime channel and was killed".into()
            }
        }
    }

    fn signal(&self, signal: i32) {
        if let Err(e) = self.child.signal(signal) {
            tracing::warn!(pid = self.pid, "could not signal the instance: {e}");
        }
    }

    async fn kill(&mut self) {
        self.alive = false;
        let _ = self.child.kill().await;
    }
}

fn describe(status: ExitStatus, sandboxed: bool) -> String {
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
