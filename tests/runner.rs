//! The SDK, the protocol and the instance runner together: real handler sources compiled by real
//! cargo into static musl binaries, driven through `ignite_agent::Instance`.

mod support;

use std::time::{Duration, Instant};

use ignite_agent::{Instance, Outcome, SpawnConfig, SpawnError};
use serde_json::json;
use support::*;

#[tokio::test]
async fn the_seed_handler_answers_the_seed_json_and_stays_warm() {
    // examples/tiny is the recipe's Cargo.toml and src/lib.rs, verbatim.
    let dir = write_project(
        "seed-tiny",
        &[
            (
                "Cargo.toml",
                &std::fs::read_to_string(workspace_dir().join("examples/tiny/Cargo.toml")).unwrap(),
            ),
            (
                "src/lib.rs",
                &std::fs::read_to_string(workspace_dir().join("examples/tiny/src/lib.rs")).unwrap(),
            ),
        ],
    );
    let artifact = match build(&dir).await {
        Ok(a) => a,
        Err((e, log)) => panic!("{e}\n{}", log.join("\n")),
    };
    assert!(artifact.digest.starts_with("sha256:"));
    assert_eq!(artifact.target, "x86_64-unknown-linux-musl");
    // A static binary: no program interpreter, so no dynamic loader at start-up.
    let elf = std::fs::read(&artifact.path).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF");
    assert!(
        !elf.windows(b"ld-linux".len()).any(|w| w == b"ld-linux"),
        "the handler binary is dynamically linked"
    );

    let instance = spawn(&artifact.path).await;
    let pid = instance.pid();
    let inv = invocation(r#"{"message": "hi there"}"#);
    let execution_id = inv.execution_id.clone();
    let reply = instance.invoke(inv).await;
    assert_eq!(
        json_body(&reply),
        json!({"message": "hi there", "execution_id": execution_id, "function_id": "acme-corp/test"})
    );

    let reply = instance.invoke(invocation("{}")).await;
    assert_eq!(json_body(&reply)["message"], "Hello from Rust!");
    // An empty body has no fields either.
    let reply = instance.invoke(invocation("")).await;
    assert_eq!(json_body(&reply)["message"], "Hello from Rust!");
    assert_eq!(instance.pid(), pid, "the warm process served every request");
    assert!(instance.is_alive());
    instance.shutdown(Duration::from_secs(5)).await;
    assert!(!process_alive(pid), "shutdown left the handler running");
}

#[tokio::test]
async fn text_responses_carry_status_and_headers() {
    let bin = build_ok(&sdk_project(
        "h-text",
        r#"
use ignite::prelude::*;

#[ignite::main]
async fn handler(_req: Request, _ctx: Context) -> Result<impl IntoResponse> {
    Ok(Response::text("plain words").with_status(201).with_header("X-Answer", "42"))
}
"#,
    ))
    .await;
    let instance = spawn(&bin).await;
    let reply = instance.invoke(invocation("")).await;
    let Outcome::Response {
        status,
        headers,
        body,
    } = reply.outcome
    else {
        panic!("{:?}", reply.outcome)
    };
    assert_eq!(status, 201);
    assert_eq!(body, b"plain words");
    assert!(
        headers.contains(&("x-answer".into(), "42".into())),
        "{headers:?}"
    );
    assert!(
        headers.contains(&("content-type".into(), "text/plain; charset=utf-8".into())),
        "{headers:?}"
    );
}

#[tokio::test]
async fn typed_body_and_typed_errors() {
    let bin = build_ok(&sdk_project(
        "h-body",
        r#"
use ignite::prelude::*;
use serde::Deserialize;

#[derive(Deserialize)]
struct Order { item: String, quantity: u32 }

#[ignite::main]
async fn handler(req: Request, _ctx: Context) -> Result<impl IntoResponse> {
    if req.path() == "/field" {
        let n: u32 = req.field("count")?;
        return Ok(Json(serde_json::json!({ "count": n })));
    }
    let order: Order = req.body()?;
    Ok(Json(serde_json::json!({ "item": order.item, "total": order.quantity * 3 })))
}
"#,
    ))
    .await;
    let instance = spawn(&bin).await;
    let reply = instance
        .invoke(invocation(r#"{"item": "apple", "quantity": 4}"#))
        .await;
    assert_eq!(json_body(&reply), json!({"item": "apple", "total": 12}));

    // A body that does not match the struct: 400 that says what is wrong.
    let reply = instance.invoke(invocation(r#"{"item": "apple"}"#)).await;
    match reply.outcome {
        Outcome::HandlerError {
            status: 400,
            message,
        } => {
            assert!(message.contains("quantity"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // A missing field names the key; a mistyped one too.
    let mut inv = invocation(r#"{"other": 1}"#);
    inv.request.path = "/field".into();
    match instance.invoke(inv).await.outcome {
        Outcome::HandlerError {
            status: 400,
            message,
        } => {
            assert_eq!(message, "missing field `count` in the request body")
        }
        other => panic!("{other:?}"),
    }
    let mut inv = invocation(r#"{"count": "three"}"#);
    inv.request.path = "/field".into();
    match instance.invoke(inv).await.outcome {
        Outcome::HandlerError {
            status: 400,
            message,
        } => {
            assert!(message.starts_with("invalid field `count`"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn raw_body_and_request_metadata_reach_the_handler() {
    let bin = build_ok(&sdk_project(
        "h-raw",
        r#"
use ignite::prelude::*;

#[ignite::main]
async fn handler(req: Request, _ctx: Context) -> Result<impl IntoResponse> {
    Ok(Json(serde_json::json!({
        "len": req.raw().len(),
        "raw": String::from_utf8_lossy(req.raw()),
        "method": req.method(),
        "path": req.path(),
        "query": req.query(),
        "agent": req.header("User-Agent"),
    })))
}
"#,
    ))
    .await;
    let instance = spawn(&bin).await;
    let mut inv = invocation("not json at all \u{1F680}");
    inv.request.method = "PUT".into();
    inv.request.path = "/a/b".into();
    inv.request.query = "x=1&y=2".into();
    inv.request
        .headers
        .push(("user-agent".into(), "curl/8".into()));
    let reply = instance.invoke(inv).await;
    assert_eq!(
        json_body(&reply),
        json!({"len": 20, "raw": "not json at all \u{1F680}", "method": "PUT", "path": "/a/b",
               "query": "x=1&y=2", "agent": "curl/8"})
    );
}

#[tokio::test]
async fn context_env_and_process_env() {
    let bin = build_ok(&sdk_project(
        "h-env",
        r#"
use ignite::prelude::*;

#[ignite::main]
async fn handler(_req: Request, ctx: Context) -> Result<impl IntoResponse> {
    Ok(Json(serde_json::json!({
        "greeting": ctx.env().get("GREETING"),
        "process": std::env::var("GREETING").ok(),
        "home": std::env::var("HOME").ok(),
        "has_deadline": ctx.remaining().is_some(),
    })))
}
"#,
    ))
    .await;
    let mut config = SpawnConfig::new(&bin);
    config.env = vec![("GREETING".into(), "bonjour".into())];
    let instance = Instance::spawn(&config).await.unwrap();
    let mut inv = invocation("{}");
    inv.env = vec![("GREETING".into(), "bonjour".into())];
    let reply = instance.invoke(inv).await;
    // Only the app's variables: nothing leaks from the agent's own environment.
    assert_eq!(
        json_body(&reply),
        json!({"greeting": "bonjour", "process": "bonjour", "home": null, "has_deadline": true})
    );
}

#[tokio::test]
async fn an_err_becomes_an_error_response_and_a_panic_a_failed_execution() {
    let bin = build_ok(&sdk_project(
        "h-fail",
        r#"
use ignite::prelude::*;

#[derive(Debug)]
struct Upstream;
impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("upstream refused") }
}
impl std::error::Error for Upstream {}

fn call_upstream() -> std::result::Result<(), Upstream> { Err(Upstream) }

#[ignite::main]
async fn handler(req: Request, _ctx: Context) -> Result<impl IntoResponse> {
    match req.path() {
        "/err" => Err(Error::new(418, "the handler declined")),
        "/question" => { call_upstream()?; Ok(Response::text("unreachable")) }
        "/panic" => panic!("something went badly wrong"),
        _ => Ok(Response::text("fine")),
    }
}
"#,
    ))
    .await;
    let instance = spawn(&bin).await;
    let pid = instance.pid();
    let at = |path: &str| {
        let mut inv = invocation("{}");
        inv.request.path = path.into();
        inv
    };
    assert_eq!(
        instance.invoke(at("/err")).await.outcome,
        Outcome::HandlerError {
            status: 418,
            message: "the handler declined".into()
        }
    );
    assert_eq!(
        instance.invoke(at("/question")).await.outcome,
        Outcome::HandlerError {
            status: 500,
            message: "upstream refused".into()
        }
    );
    let reply = instance.invoke(at("/panic")).await;
    match &reply.outcome {
        Outcome::Panicked { message } => {
            assert!(message.contains("something went badly wrong"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(
        reply.logs.lines.iter().any(|l| l.contains("panicked")),
        "the panic message is in the execution's logs: {:?}",
        reply.logs
    );
    // The process survived and serves the next request.
    let reply = instance.invoke(at("/")).await;
    assert!(matches!(
        reply.outcome,
        Outcome::Response { status: 200, .. }
    ));
    assert_eq!(instance.pid(), pid);
}

#[tokio::test]
async fn println_cannot_corrupt_the_response_and_logs_are_attributed() {
    let bin = build_ok(&sdk_project(
        "h-println",
        r#"
use ignite::prelude::*;

#[ignite::main]
async fn handler(req: Request, ctx: Context) -> Result<impl IntoResponse> {
    let n: u32 = req.field("n")?;
    println!("stdout line for request {n}");
    print!("IG\x00\x01 raw bytes that look like a frame header ");
    eprintln!("stderr line for request {n}");
    ctx.log(format!("context line for request {n}"));
    Ok(Json(serde_json::json!({ "n": n })))
}
"#,
    ))
    .await;
    let instance = spawn(&bin).await;
    for n in 1..=3 {
        let reply = instance
            .invoke(invocation(&format!(r#"{{"n": {n}}}"#)))
            .await;
        assert_eq!(json_body(&reply), json!({ "n": n }));
        let lines = &reply.logs.lines;
        assert!(
            lines.contains(&format!("stdout line for request {n}")),
            "{lines:?}"
        );
        assert!(
            lines.contains(&format!("stderr line for request {n}")),
            "{lines:?}"
        );
        assert!(
            lines.contains(&format!("context line for request {n}")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .all(|l| !l.contains(&format!("request {}", n - 1))),
            "a previous request's lines leaked into this one: {lines:?}"
        );
    }
}

#[tokio::test]
async fn a_handler_in_main_rs_works_too() {
    let manifest = format!(
        "[package]\nname = \"h-main\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]{HANDLER_DEPS}"
    );
    let dir = write_project(
        "h-main",
        &[
            ("Cargo.toml", &manifest),
            (
                "src/main.rs",
                r#"
use ignite::prelude::*;

#[ignite::main]
async fn handler(_req: Request, ctx: Context) -> Result<impl IntoResponse> {
    Ok(format!("from main.rs, {}", ctx.function_id()))
}
"#,
            ),
        ],
    );
    let bin = build_ok(&dir).await;
    let instance = spawn(&bin).await;
    match instance.invoke(invocation("")).await.outcome {
        Outcome::Response {
            status: 200, body, ..
        } => {
            assert_eq!(body, b"from main.rs, acme-corp/test")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_sync_handler_is_refused_at_compile_time_with_the_expected_shape() {
    let dir = sdk_project(
        "h-sync",
        r#"
use ignite::prelude::*;

#[ignite::main]
fn handler(_req: Request, _ctx: Context) -> Result<Response> {
    Ok(Response::text("sync"))
}
"#,
    );
    match build(&dir).await {
        Ok(_) => panic!("a non-async handler compiled"),
        Err((e, log)) => {
            assert!(
                matches!(e, ignite_builder::BuildError::Failed { .. }),
                "{e}"
            );
            let log = log.join("\n");
            assert!(log.contains("#[ignite::main] needs an async fn"), "{log}");
        }
    }
}

#[tokio::test]
async fn a_binary_that_exits_at_start_reports_its_exit_and_last_words() {
    let bin = build_ok(&plain_project(
        "h-exit",
        r#"fn main() { eprintln!("config missing, giving up"); std::process::exit(3); }"#,
    ))
    .await;
    match Instance::spawn(&SpawnConfig::new(&bin)).await {
        Err(e @ SpawnError::ExitedBeforeReady { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("exit code 3"), "{msg}");
            assert!(msg.contains("config missing, giving up"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_binary_that_never_becomes_ready_is_killed_at_the_init_timeout() {
    let bin = build_ok(&plain_project(
        "h-hang",
        r#"fn main() { eprintln!("waiting for ever"); loop { std::thread::sleep(std::time::Duration::from_secs(60)); } }"#,
    ))
    .await;
    let mut config = SpawnConfig::new(&bin);
    config.init_timeout = Duration::from_millis(500);
    let started = Instant::now();
    match Instance::spawn(&config).await {
        Err(e @ SpawnError::InitTimeout { .. }) => {
            assert!(e.to_string().contains("did not become ready"), "{e}");
            assert!(
                e.logs()
                    .unwrap()
                    .lines
                    .contains(&"waiting for ever".to_string())
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the timeout was not enforced"
    );
    // No process of that binary is left.
    let name = bin.file_name().unwrap().to_string_lossy().to_string();
    let left: Vec<_> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .filter(|e| process_alive(e.file_name().to_string_lossy().parse().unwrap_or(0)))
        .collect();
    assert!(left.is_empty(), "the hung handler is still running");
}

#[tokio::test]
async fn a_binary_that_writes_garbage_gets_a_framing_error_naming_println() {
    let bin = build_ok(&plain_project(
        "h-garbage",
        r#"fn main() { println!("hello, I am not a handler"); std::thread::sleep(std::time::Duration::from_secs(60)); }"#,
    ))
    .await;
    let started = Instant::now();
    match Instance::spawn(&SpawnConfig::new(&bin)).await {
        Err(e @ SpawnError::Framing { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("framing error"), "{msg}");
            assert!(msg.contains("eprintln!()"), "{msg}");
            assert!(msg.contains("println!()"), "{msg}");
            assert!(msg.contains("hello"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "garbage was not refused at once (waited {:?})",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_request_past_its_deadline_is_killed_and_a_crash_is_reported() {
    let bin = build_ok(&sdk_project(
        "h-slow",
        r#"
use ignite::prelude::*;

#[ignite::main]
async fn handler(req: Request, _ctx: Context) -> Result<impl IntoResponse> {
    match req.path() {
        "/sleep" => { tokio::time::sleep(std::time::Duration::from_secs(60)).await; Ok("late") }
        "/spin" => loop { std::hint::spin_loop() },
        "/abort" => { eprintln!("about to abort"); std::process::abort() }
        "/exit" => std::process::exit(9),
        "/no-memory" => std::alloc::handle_alloc_error(std::alloc::Layout::new::<[u8; 4096]>()),
        _ => Ok("quick"),
    }
}
"#,
    ))
    .await;
    let at = |path: &str, deadline_ms: u64| {
        let mut inv = invocation("{}");
        inv.request.path = path.into();
        inv.deadline = Some(Instant::now() + Duration::from_millis(deadline_ms));
        inv
    };
    for path in ["/sleep", "/spin"] {
        let instance = spawn(&bin).await;
        let pid = instance.pid();
        let reply = instance.invoke(at(path, 300)).await;
        assert!(
            matches!(reply.outcome, Outcome::TimedOut { .. }),
            "{path}: {:?}",
            reply.outcome
        );
        assert!(!instance.is_alive());
        // The dead instance does not pretend to serve.
        assert!(matches!(
            instance.invoke(at("/", 1000)).await.outcome,
            Outcome::Crashed { .. }
        ));
        // It got SIGTERM at the deadline; stopping it reaps it (SIGKILL after the grace).
        instance.shutdown(Duration::from_secs(1)).await;
        assert!(
            !process_alive(pid),
            "{path}: the timed-out handler is still running"
        );
    }

    let instance = spawn(&bin).await;
    assert!(matches!(
        instance.invoke(at("/", 5000)).await.outcome,
        Outcome::Response { status: 200, .. }
    ));
    let reply = instance.invoke(at("/abort", 5000)).await;
    assert_eq!(
        reply.outcome,
        Outcome::Crashed {
            exit: "killed by signal 6 (SIGABRT)".into()
        }
    );
    assert!(
        reply.logs.lines.contains(&"about to abort".to_string()),
        "{:?}",
        reply.logs
    );

    let instance = spawn(&bin).await;
    assert_eq!(
        instance.invoke(at("/exit", 5000)).await.outcome,
        Outcome::Crashed {
            exit: "exit code 9".into()
        }
    );

    // A failed allocation (how a handler meets RLIMIT_AS) is reported as running out of memory.
    let instance = spawn(&bin).await;
    assert_eq!(
        instance.invoke(at("/no-memory", 5000)).await.outcome,
        Outcome::OutOfMemory {
            exit: "killed by signal 6 (SIGABRT)".into()
        }
    );
}

/// Several requests in flight on one process: each gets its own answer (matched by frame id,
/// whatever order they finish in), lines logged through `Context::log` reach exactly their own
/// request, and a crash while several are in flight ends every one of them as crashed.
#[tokio::test]
async fn one_instance_serves_requests_concurrently_and_a_crash_ends_them_all() {
    let bin = build_ok(&sdk_project(
        "h-concurrent",
        r#"
use ignite::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

#[ignite::main]
async fn handler(req: Request, ctx: Context) -> Result<impl IntoResponse> {
    let n: u64 = req.field("n")?;
    let now = IN_FLIGHT.fetch_add(1, Ordering::SeqCst) + 1;
    PEAK.fetch_max(now, Ordering::SeqCst);
    ctx.log(format!("request {n} started"));
    if n == 99 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        std::process::abort();
    }
    // The first request sleeps longest: answers come back in the reverse order.
    tokio::time::sleep(std::time::Duration::from_millis(600 - 150 * n)).await;
    IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    ctx.log(format!("request {n} done"));
    Ok(Json(serde_json::json!({ "n": n, "peak": PEAK.load(Ordering::SeqCst) })))
}
"#,
    ))
    .await;
    let instance = spawn(&bin).await;
    let call = |n: u64| instance.invoke(invocation(&format!(r#"{{"n": {n}}}"#)));
    let (a, b, c) = tokio::join!(call(0), call(1), call(2));
    for (n, reply) in [a, b, c].iter().enumerate() {
        let body = json_body(reply);
        assert_eq!(body["n"], n, "{body}");
        assert_eq!(
            reply.logs.lines,
            vec![format!("request {n} started"), format!("request {n} done")],
            "Context::log lines belong to their own request only"
        );
    }
    // All three overlapped in the one process.
    assert_eq!(json_body(&call(3).await)["peak"], 3);
    assert_eq!(instance.in_flight(), 0);

    // A crash with three requests in flight: each ends, none waits for ever.
    let (a, b, c) = tokio::join!(call(1), call(2), call(99));
    for reply in [a, b, c] {
        match reply.outcome {
            Outcome::Crashed { exit } => assert!(exit.contains("SIGABRT"), "{exit}"),
            other => panic!("expected a crash, got {other:?}"),
        }
    }
    assert!(!instance.is_alive());
}

/// A request whose deadline passes while its frame is still being written (the handler is busy
/// and the channel full) leaves a frame cut off mid-way, so nothing may be written after it: a
/// timed-out instance takes no new request. The request already in flight on it still gets its
/// answer, and the instance stops after it.
#[tokio::test]
async fn a_request_cut_off_mid_write_stops_its_instance_after_the_others() {
    let bin = build_ok(&sdk_project(
        "h-busy",
        r#"
use ignite::prelude::*;

#[ignite::main]
async fn handler(req: Request, _ctx: Context) -> Result<impl IntoResponse> {
    // Holds the process's only thread, so the channel is not read meanwhile.
    if req.path() == "/busy" {
        let until = std::time::Instant::now() + std::time::Duration::from_millis(1500);
        while std::time::Instant::now() < until {
            std::hint::spin_loop();
        }
    }
    Ok(Response::text("done"))
}
"#,
    ))
    .await;
    let instance = spawn(&bin).await;
    let pid = instance.pid();
    let busy = {
        let mut inv = invocation("{}");
        inv.request.path = "/busy".into();
        inv
    };
    // Larger than a pipe holds, with a short deadline.
    let big = {
        let mut inv = invocation(&"x".repeat(1 << 20));
        inv.deadline = Some(Instant::now() + Duration::from_millis(400));
        inv
    };
    let (busy, big, after) = tokio::join!(
        instance.invoke(busy),
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            instance.invoke(big).await
        },
        async {
            tokio::time::sleep(Duration::from_millis(700)).await;
            instance.invoke(invocation("{}")).await
        }
    );
    assert!(
        matches!(busy.outcome, Outcome::Response { status: 200, .. }),
        "the request in flight is spared: {:?}",
        busy.outcome
    );
    assert!(
        matches!(big.outcome, Outcome::TimedOut { .. }),
        "{:?}",
        big.outcome
    );
    match after.outcome {
        Outcome::Crashed { exit } => assert!(exit.contains("already stopped"), "{exit}"),
        other => panic!("a request after the cut-off frame must not be written: {other:?}"),
    }
    // Once the last request in flight ended, the instance was told to stop.
    let stopped = Instant::now();
    while process_alive(pid) && stopped.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !process_alive(pid),
        "the instance stops once its requests have ended"
    );
}
