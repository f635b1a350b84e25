//! The Python SDK (`sdks/python`) served by the real agent: `Instance::spawn` starts
//! `/usr/bin/python3 -I -S sdks/python/ignite_boot.py serve` on a temporary app, and every
//! request goes through the real frames, pipes and log attribution.
//!
//! `python_unit_tests` and `template_mode` run the SDK's own Python tests (the codec, the API,
//! the boot script's modes, the fork server), so `cargo test` covers them too. Each test is
//! skipped, with a note, on a machine without `/usr/bin/python3`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ignite_agent::{HttpRequest, Instance, Invocation, Outcome, Reply, SpawnConfig, SpawnError};

const PYTHON: &str = "/usr/bin/python3";

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../sdks/python")
        .canonicalize()
        .expect("sdks/python")
}

fn have_python() -> bool {
    let found = Path::new(PYTHON).exists();
    if !found {
        eprintln!("skipped: no {PYTHON} on this machine");
    }
    found
}

/// A temporary app directory holding this `main.py`.
fn app(main_py: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("main.py"), main_py).unwrap();
    dir
}

fn config(app: &Path) -> SpawnConfig {
    let boot = sdk_dir().join("ignite_boot.py");
    let mut config = SpawnConfig::new(PYTHON);
    config.args = [PYTHON, "-I", "-S", boot.to_str().unwrap(), "serve"]
        .map(String::from)
        .to_vec();
    config.env = vec![("IGNITE_APP_DIR".into(), app.to_str().unwrap().to_string())];
    config
}

async fn spawn(app: &Path) -> Instance {
    match Instance::spawn(&config(app)).await {
        Ok(instance) => instance,
        Err(e) => panic!("{e}\nlogs: {:?}", e.logs()),
    }
}

fn invocation(body: &str) -> Invocation {
    Invocation {
        execution_id: "01JPYTHONSDK00000000000000".into(),
        function_id: "acme-corp/tiny".into(),
        deadline: Some(Instant::now() + Duration::from_secs(10)),
        request: HttpRequest::json_post(body.as_bytes().to_vec()),
        ..Invocation::default()
    }
}

/// The status, headers and body text of a response; panics (with the logs) on anything else.
fn response(reply: &Reply) -> (u16, &[(String, String)], String) {
    match &reply.outcome {
        Outcome::Response {
            status,
            headers,
            body,
        } => (*status, headers, String::from_utf8_lossy(body).into_owned()),
        other => panic!("expected a response, got {other:?}\nlogs: {:?}", reply.logs),
    }
}

const SEED: &str = r#"
import ignite

@ignite.main
async def handler(req: ignite.Request, ctx: ignite.Context):
    message = req.field("message", default="Hello from Python!")
    return {"message": message, "execution_id": ctx.execution_id, "function_id": ctx.function_id}
"#;

#[tokio::test]
async fn the_seed_handler_answers_json_and_stays_warm() {
    if !have_python() {
        return;
    }
    let app = app(SEED);
    let instance = spawn(app.path()).await;
    let reply = instance
        .invoke(invocation(r#"{"message": "hi there"}"#))
        .await;
    let (status, headers, body) = response(&reply);
    assert_eq!(status, 200);
    assert_eq!(
        headers,
        [("content-type".to_string(), "application/json".to_string())]
    );
    assert_eq!(
        body,
        r#"{"message":"hi there","execution_id":"01JPYTHONSDK00000000000000","function_id":"acme-corp/tiny"}"#
    );
    let pid = instance.pid();
    let reply = instance.invoke(invocation("{}")).await;
    assert!(
        response(&reply)
            .2
            .starts_with(r#"{"message":"Hello from Python!","#),
        "{reply:?}"
    );
    assert_eq!(instance.pid(), pid);
    assert!(instance.is_alive());
    instance.shutdown(Duration::from_secs(5)).await;
    assert!(instance.has_exited());
}

#[tokio::test]
async fn print_is_a_log_line_of_its_request_and_never_corrupts_a_frame() {
    if !have_python() {
        return;
    }
    let app = app(r#"
import os, sys, ignite
print("printed at import")

@ignite.main
async def handler(req, ctx):
    print("hello from print")
    print("a frame-looking line: IG\x05\x00\x00\x00")
    os.write(1, b"written to fd 1 directly\n")
    sys.stdout.write("no newline")
    ctx.log("through ctx.log")
    return "fine"
"#);
    let instance = spawn(app.path()).await;
    for _ in 0..3 {
        let reply = instance.invoke(invocation("{}")).await;
        let (status, headers, body) = response(&reply);
        assert_eq!((status, body.as_str()), (200, "fine"));
        assert_eq!(headers[0].1, "text/plain; charset=utf-8");
        let lines = &reply.logs.lines;
        for expected in [
            "hello from print",
            "written to fd 1 directly",
            "no newline",
            "through ctx.log",
        ] {
            assert!(
                lines.iter().any(|l| l == expected),
                "{expected:?} not in {lines:?}"
            );
        }
        assert!(lines.iter().any(|l| l.starts_with("a frame-looking line")));
        // What the app printed at import is the instance's start-up log, not a request's.
        assert!(!lines.iter().any(|l| l.contains("printed at import")));
    }
    instance.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn the_context_carries_the_env_and_the_deadline() {
    if !have_python() {
        return;
    }
    let app = app(r#"
import ignite

@ignite.main
async def handler(req, ctx):
    left = ctx.remaining()
    assert 0 < left <= 10, left
    assert ctx.deadline > 1.7e9
    return {"greeting": ctx.env.get("GREETING"), "keys": sorted(ctx.env)}
"#);
    let instance = spawn(app.path()).await;
    let mut inv = invocation("{}");
    inv.env = vec![
        ("GREETING".into(), "hi".into()),
        ("OTHER".into(), "x".into()),
    ];
    let reply = instance.invoke(inv).await;
    assert_eq!(
        response(&reply).2,
        r#"{"greeting":"hi","keys":["GREETING","OTHER"]}"#
    );
    instance.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn errors_answer_with_their_status_and_exceptions_are_caught_with_their_traceback() {
    if !have_python() {
        return;
    }
    let app = app(r#"
import ignite

def deep(what):
    raise ValueError(what)

@ignite.main
async def handler(req, ctx):
    kind = req.field("kind")
    if kind == "teapot":
        raise ignite.Error(418, "teapot")
    if kind == "boom":
        deep("boom")
    if kind == "not-a-response":
        return 42
    return "ok"
"#);
    let instance = spawn(app.path()).await;

    let reply = instance.invoke(invocation(r#"{"kind": "teapot"}"#)).await;
    assert_eq!(
        reply.outcome,
        Outcome::HandlerError {
            status: 418,
            message: "teapot".into()
        }
    );

    let reply = instance.invoke(invocation(r#"{"kind": "boom"}"#)).await;
    assert_eq!(
        reply.outcome,
        Outcome::Panicked {
            message: "the handler raised ValueError: boom".into()
        }
    );
    let logs = reply.logs.lines.join("\n");
    assert!(
        logs.contains("Traceback (most recent call last):"),
        "{logs}"
    );
    assert!(logs.contains("in deep"), "{logs}");
    assert!(logs.contains("ValueError: boom"), "{logs}");

    let reply = instance
        .invoke(invocation(r#"{"kind": "not-a-response"}"#))
        .await;
    match &reply.outcome {
        Outcome::Panicked { message } => assert!(
            message
                .starts_with("the handler returned a value of type int, which is not a response"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }

    // A field the body lacks, with no default: 400 with the Rust SDK's text.
    let reply = instance.invoke(invocation("{}")).await;
    assert_eq!(
        reply.outcome,
        Outcome::HandlerError {
            status: 400,
            message: "missing field `kind` in the request body".into()
        }
    );
    let reply = instance.invoke(invocation("[1, 2]")).await;
    assert_eq!(
        reply.outcome,
        Outcome::HandlerError {
            status: 400,
            message: "missing field `kind`: the request body is JSON an array , not an object"
                .into()
        }
    );

    // The instance survived all of it.
    let reply = instance.invoke(invocation(r#"{"kind": "fine"}"#)).await;
    assert_eq!(response(&reply).2, "ok");
    instance.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn the_raw_request_headers_and_a_chosen_status() {
    if !have_python() {
        return;
    }
    let app = app(r#"
import ignite

@ignite.main
async def handler(req, ctx):
    raw = req.raw()
    return ignite.Response(
        {
            "method": raw.method, "path": raw.path, "query": raw.query,
            "headers": raw.headers, "token": req.header("X-Token"),
            "missing": req.header("x-nope"), "body": raw.body.hex(),
        },
        status=201,
        headers={"X-Custom": "yes"},
    )
"#);
    let instance = spawn(app.path()).await;
    let mut inv = invocation("");
    inv.request = HttpRequest {
        method: "PUT".into(),
        path: "/items/3".into(),
        query: "a=1&b=2".into(),
        headers: vec![
            ("x-token".into(), "abc".into()),
            ("content-type".into(), "application/octet-stream".into()),
        ],
        body: vec![0x00, 0xff, b'h', b'i'],
    };
    let reply = instance.invoke(inv).await;
    let (status, headers, body) = response(&reply);
    assert_eq!(status, 201);
    assert_eq!(
        headers,
        [
            ("content-type".to_string(), "application/json".to_string()),
            ("x-custom".to_string(), "yes".to_string())
        ]
    );
    assert_eq!(
        body,
        r#"{"method":"PUT","path":"/items/3","query":"a=1&b=2","headers":[["x-token","abc"],["content-type","application/octet-stream"]],"token":"abc","missing":null,"body":"00ff6869"}"#
    );
    instance.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_sync_handler_runs_in_a_worker_thread() {
    if !have_python() {
        return;
    }
    let app = app(r#"
import threading, ignite

@ignite.main
def handler(req, ctx):
    return {"thread": threading.current_thread().name, "message": req.field("message")}
"#);
    let instance = spawn(app.path()).await;
    let reply = instance.invoke(invocation(r#"{"message": "sync"}"#)).await;
    let body = response(&reply).2;
    assert!(body.starts_with(r#"{"thread":"ignite"#), "{body}");
    assert!(body.ends_with(r#""message":"sync"}"#), "{body}");
    instance.shutdown(Duration::from_secs(5)).await;
}

/// Each handler run records its own start and end (monotonic seconds) in its answer.
fn span(reply: &Reply) -> (f64, f64) {
    let body = response(reply).2;
    let mut times = body.split(' ').map(|t| t.parse::<f64>().unwrap());
    (times.next().unwrap(), times.next().unwrap())
}

#[tokio::test]
async fn four_requests_in_flight_on_one_instance_overlap() {
    if !have_python() {
        return;
    }
    for (kind, main_py) in [
        (
            "async",
            r#"
import asyncio, time, ignite

@ignite.main
async def handler(req, ctx):
    start = time.monotonic()
    await asyncio.sleep(0.3)
    return f"{start} {time.monotonic()}"
"#,
        ),
        (
            "sync",
            r#"
import time, ignite

@ignite.main
def handler(req, ctx):
    start = time.monotonic()
    time.sleep(0.3)
    return f"{start} {time.monotonic()}"
"#,
        ),
    ] {
        let app = app(main_py);
        let instance = spawn(app.path()).await;
        let (a, b, c, d) = tokio::join!(
            instance.invoke(invocation("{}")),
            instance.invoke(invocation("{}")),
            instance.invoke(invocation("{}")),
            instance.invoke(invocation("{}")),
        );
        let spans: Vec<(f64, f64)> = [&a, &b, &c, &d].into_iter().map(span).collect();
        let last_start = spans.iter().map(|s| s.0).fold(f64::MIN, f64::max);
        let first_end = spans.iter().map(|s| s.1).fold(f64::MAX, f64::min);
        let first_start = spans.iter().map(|s| s.0).fold(f64::MAX, f64::min);
        let last_end = spans.iter().map(|s| s.1).fold(f64::MIN, f64::max);
        // Every run began before any ended: all four were in the handler at once.
        assert!(last_start < first_end, "{kind}: {spans:?}");
        assert!(last_end - first_start < 0.6, "{kind}: {spans:?}");
        instance.shutdown(Duration::from_secs(5)).await;
    }
}

#[tokio::test]
async fn a_main_py_that_fails_to_import_exits_before_ready_with_its_traceback() {
    if !have_python() {
        return;
    }
    let broken = app("import ignite\nraise RuntimeError('no database')\n");
    match Instance::spawn(&config(broken.path())).await {
        Err(SpawnError::ExitedBeforeReady { status, logs }) => {
            assert_eq!(status, "exit code 1");
            let logs = logs.lines.join("\n");
            assert!(logs.contains("RuntimeError: no database"), "{logs}");
            assert!(logs.contains("main.py"), "{logs}");
        }
        other => panic!("{:?}", other.map(|i| i.pid())),
    }
    let no_handler = app("import ignite\n");
    match Instance::spawn(&config(no_handler.path())).await {
        Err(SpawnError::ExitedBeforeReady { logs, .. }) => assert_eq!(
            logs.lines,
            ["main.py defines no handler: decorate your handler with @ignite.main"]
        ),
        other => panic!("{:?}", other.map(|i| i.pid())),
    }
}

fn run_python_tests(modules: &[&str]) {
    let output = Command::new(PYTHON)
        .args(["-E", "-s", "-S", "-m", "unittest", "-v"])
        .args(modules)
        .current_dir(sdk_dir().join("tests"))
        .output()
        .expect("run python3");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{}\n{stderr}",
        String::from_utf8_lossy(&output.stdout)
    );
    eprintln!("{stderr}");
}

/// The codec (with the vectors `crates/protocol/tests/python_vectors.rs` checks against the
/// Rust encoder), the handler API and the boot script's modes.
#[test]
fn python_unit_tests() {
    if !have_python() {
        return;
    }
    run_python_tests(&["test_frames", "test_api", "test_boot"]);
}

/// The fork server: readiness, forks with credentials, children serving on their own pipes
/// with their own random state, exit reports, and the end of the template with its socket.
#[test]
fn template_mode() {
    if !have_python() {
        return;
    }
    run_python_tests(&["test_template"]);
}

/// `cargo test --release -p ignite-agent --test python_sdk -- --ignored --nocapture round_trip`:
/// the warm round trip of the seed handler through the agent, as the runner benchmark measures
/// the Rust SDK's. With `IGNITE_BENCH_RUST_HANDLER=<binary>` (say examples/tiny built with
/// `cargo build --release`), that Rust handler is measured alongside, on the same machine at the
/// same moment.
#[tokio::test(flavor = "current_thread")]
#[ignore = "a measurement, not a check"]
async fn round_trip() {
    if !have_python() {
        return;
    }
    let app = app(SEED);
    let mut configs = vec![("python", config(app.path()))];
    if let Ok(rust) = std::env::var("IGNITE_BENCH_RUST_HANDLER") {
        configs.push(("rust", SpawnConfig::new(rust)));
    }
    for pinned in [false, true] {
        if pinned {
            ignite_agent::pin_to_cpu(0, 0).expect("pin the test thread");
        }
        for (sdk, config) in &configs {
            let mut config = config.clone();
            config.cpu = pinned.then_some(0);
            let instance = Instance::spawn(&config).await.unwrap();
            let body = r#"{"message": "hi there"}"#;
            for _ in 0..1000 {
                instance.invoke(invocation(body)).await;
            }
            let mut times = Vec::new();
            for _ in 0..20_000 {
                let started = Instant::now();
                let reply = instance.invoke(invocation(body)).await;
                times.push(started.elapsed());
                assert!(matches!(
                    reply.outcome,
                    Outcome::Response { status: 200, .. }
                ));
            }
            times.sort();
            let at = |p: f64| times[((times.len() - 1) as f64 * p) as usize];
            println!(
                "{sdk} warm round trip ({}): p50 {:?}, p99 {:?}; spawn → ready {:?}",
                if pinned {
                    "instance on the agent's CPU"
                } else {
                    "default placement"
                },
                at(0.5),
                at(0.99),
                instance.init_duration()
            );
            instance.shutdown(Duration::from_secs(5)).await;
        }
    }
}
