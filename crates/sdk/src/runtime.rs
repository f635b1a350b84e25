//! The handler process's main loop.

use std::any::Any;
use std::cell::RefCell;
use std::fs::File;
use std::future::Future;
use std::io::{self, IsTerminal, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use ignite_protocol::{ErrorFrame, ErrorKind, Frame, FrameError, Hello, Response as ResponseFrame};
use tokio::net::unix::pipe;

use crate::{Context, Error, IntoResponse, Request, Response};

/// Exit status when the framing channel breaks (the agent reports the process as crashed).
const EXIT_CHANNEL: i32 = 70;
/// Exit status when the binary is started by hand on a terminal.
const EXIT_USAGE: i32 = 64;

/// Serves requests with `handler` until the agent closes the channel, then exits the process.
pub fn run<H, Fut, R, E>(handler: H) -> !
where
    H: Fn(Request, Context) -> Fut + 'static,
    Fut: Future<Output = Result<R, E>> + 'static,
    R: IntoResponse,
    E: Into<Error>,
{
    if io::stdin().is_terminal() {
        eprintln!(
            "this is an Ignite handler: it speaks the runtime protocol on stdin/stdout and is \
             started by the platform. Deploy it with `dodil ignite draft save/compile/publish`, \
             or try it locally with `dodil ignite run <dir> -p '{{...}}'`."
        );
        std::process::exit(EXIT_USAGE);
    }
    become_init_if_pid_1();
    let code = match serve(handler) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ignite: {e}");
            EXIT_CHANNEL
        }
    };
    std::process::exit(code)
}

/// In the sandbox the handler starts as pid 1 of its own pid namespace, where signals without
/// a handler are ignored (`abort()` would not abort) and orphans are ours to reap. Like `tini`
/// in a container, pid 1 then forks: the child runs the handler with ordinary signal semantics,
/// and pid 1 stays behind as init — it forwards SIGTERM, reaps, and exits with the handler's
/// status (`128 + n` for a handler killed by signal `n`, which the agent reads back as the
/// signal). When it exits, the kernel ends everything left in the namespace.
fn become_init_if_pid_1() {
    if std::process::id() != 1 {
        return;
    }
    // SAFETY: nothing but this thread exists yet (this runs first thing in main, before any
    // runtime or thread), so fork is safe; the child simply carries on.
    let handler = unsafe { libc::fork() };
    if handler > 0 {
        init(handler)
    }
    // fork failed (-1): serve as pid 1 anyway; 0: we are the handler.
}

static HANDLER_PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

fn init(handler: libc::pid_t) -> ! {
    extern "C" fn forward(signal: libc::c_int) {
        let pid = HANDLER_PID.load(std::sync::atomic::Ordering::Relaxed);
        // SAFETY: kill is async-signal-safe.
        unsafe {
            libc::kill(pid, signal);
        }
    }
    HANDLER_PID.store(handler, std::sync::atomic::Ordering::Relaxed);
    // SAFETY: installs an async-signal-safe handler; sigaction is zero-initialised plain data.
    // Closing 0..=2 leaves the channel and the log pipe to the handler alone, so the agent sees
    // them close the moment the handler dies.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = forward as extern "C" fn(libc::c_int) as libc::sighandler_t;
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
        libc::close(0);
        libc::close(1);
        libc::close(2);
    }
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only `status`.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid == handler {
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
            // SAFETY: _exit ends the process; nothing of ours needs flushing.
            unsafe { libc::_exit(code) }
        }
        if pid < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            // SAFETY: as above.
            unsafe { libc::_exit(EXIT_CHANNEL) }
        }
    }
}

struct Channel {
    input: pipe::Receiver,
    output: Arc<Mutex<File>>,
}

/// Moves the framing channel off fds 0 and 1 before any user code runs: the channel goes to
/// private close-on-exec descriptors, fd 1 becomes a second stderr (so `println!` is a log line,
/// never a corrupt frame) and fd 0 an empty pipe. Must run inside the runtime (the input is
/// read through its reactor).
fn take_stdio() -> io::Result<Channel> {
    let input = io::stdin().as_fd().try_clone_to_owned()?;
    let output = io::stdout().as_fd().try_clone_to_owned()?;
    // SAFETY: dup2 only replaces fd 1 with a duplicate of fd 2; both are open descriptors of this
    // process, and no Rust object owns fd 1 exclusively (std's `Stdout` writes to whatever fd 1 is).
    if unsafe { libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let (empty, writer) = io::pipe()?;
    drop(writer);
    // SAFETY: as above, for fd 0, with `empty` alive for the duration of the call.
    if unsafe { libc::dup2(empty.as_raw_fd(), libc::STDIN_FILENO) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Channel {
        input: pipe::Receiver::from_owned_fd(input)?,
        output: Arc::new(Mutex::new(File::from(output))),
    })
}

fn send(output: &Mutex<File>, frame: &Frame, buf: &mut Vec<u8>) -> Result<(), FrameError> {
    let mut out = output.lock().unwrap_or_else(|p| p.into_inner());
    ignite_protocol::write_frame(&mut *out, frame, buf)
}

fn serve<H, Fut, R, E>(handler: H) -> Result<(), FrameError>
where
    H: Fn(Request, Context) -> Fut + 'static,
    Fut: Future<Output = Result<R, E>> + 'static,
    R: IntoResponse,
    E: Into<Error>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let channel = rt.block_on(async { take_stdio() })?;
    tokio::task::LocalSet::new().block_on(&rt, serve_channel(handler, channel))
}

/// Reads requests and runs each as a task of its own, so one process serves as many at once as
/// the agent sends (the app's `concurrency`: one by default). Each task writes its own answer.
async fn serve_channel<H, Fut, R, E>(handler: H, channel: Channel) -> Result<(), FrameError>
where
    H: Fn(Request, Context) -> Fut + 'static,
    Fut: Future<Output = Result<R, E>> + 'static,
    R: IntoResponse,
    E: Into<Error>,
{
    let Channel { mut input, output } = channel;
    let handler = Rc::new(handler);
    let wbuf = Rc::new(RefCell::new(Vec::with_capacity(16 * 1024)));
    let mut rbuf = Vec::with_capacity(64 * 1024);
    // The previous answer is dropped only once the next one exists. musl's allocator unmaps a
    // slab as soon as its last slot is freed; freeing each answer right after sending it cost
    // an mmap/munmap pair (with a TLB shootdown) on every request.
    let previous: Rc<RefCell<Option<Frame>>> = Rc::default();
    let mut previous_task = None;
    let hello = Frame::Hello(Hello {
        protocol_version: ignite_protocol::PROTOCOL_VERSION,
        sdk_version: env!("CARGO_PKG_VERSION").to_string(),
    });
    send(&output, &hello, &mut wbuf.borrow_mut())?;

    loop {
        let mut invoke = match ignite_protocol::read_frame_async(&mut input, &mut rbuf).await? {
            Some(Frame::Invoke(invoke)) => invoke,
            None | Some(Frame::Shutdown) => return Ok(()),
            Some(other) => {
                return Err(FrameError::Io(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the agent sent a frame a handler does not expect: {other:?}"),
                )))
            }
        };
        let id = invoke.id;
        let ctx = Context::from_invoke(&mut invoke, output.clone());
        let req = Request::from_invoke(invoke);
        let (handler, output, wbuf, previous) = (
            handler.clone(),
            output.clone(),
            wbuf.clone(),
            previous.clone(),
        );
        let task = tokio::task::spawn_local(async move {
            let outcome = catch_panic(async move {
                match handler(req, ctx).await {
                    Ok(r) => Ok(r.into_response()),
                    Err(e) => Err(e.into()),
                }
            })
            .await;
            let reply = reply(id, outcome);
            // What the handler left in std's stdout buffer (a `print!` without a newline)
            // belongs to this request: it must reach the log pipe before the answer does.
            let _ = io::stdout().flush();
            if let Err(e) = send(&output, &reply, &mut wbuf.borrow_mut()) {
                // The agent is gone: nobody is left to answer.
                eprintln!("ignite: {e}");
                std::process::exit(EXIT_CHANNEL);
            }
            drop(previous.replace(Some(reply)));
        });
        // Likewise the previous task's memory: its handle keeps it until the next task exists.
        drop(previous_task.replace(task));
    }
}

/// The frame that answers request `id`.
fn reply(id: u64, outcome: Result<Result<Response, Error>, Box<dyn Any + Send>>) -> Frame {
    match outcome {
        Ok(Ok(response)) => {
            let (status, headers, body) = response.into_parts();
            Frame::Response(ResponseFrame {
                id,
                status,
                headers,
                body,
            })
        }
        Ok(Err(error)) => Frame::Error(ErrorFrame {
            id,
            kind: ErrorKind::Handler,
            status: error.status(),
            message: error.message().to_string(),
        }),
        Err(panic) => Frame::Error(ErrorFrame {
            id,
            kind: ErrorKind::Panic,
            status: 500,
            message: format!("the handler panicked: {}", panic_message(&*panic)),
        }),
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(a panic payload that is not a string)"
    }
}

/// Runs a future, turning a panic inside it into `Err(payload)`. The future stays where the
/// task put it (no box of its own).
async fn catch_panic<F: Future>(fut: F) -> Result<F::Output, Box<dyn Any + Send>> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(
        move |cx| match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(panic) => Poll::Ready(Err(panic)),
        },
    )
    .await
}
