//! `--rust-target wasm`: the same handlers as wasm32-wasip2 components under Wasmtime, through
//! the real server, the real builder (cargo in the jail) and the real CLI.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::platform::*;

fn execution(server: &Server, cwd: &Path, id: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..100 {
        last = json(&ok(server, cwd, &["execution", "get", id, "-o", "json"]));
        if last["status"] != "running" {
            return last;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("execution {id} still running: {last}");
}

#[test]
fn the_seed_handler_runs_as_a_component_through_invoke_and_the_public_url() {
    let dir = scratch("wasm-seed");
    let server = start_server(&dir);
    let tiny = dir.join("tiny");
    copy_tiny(&tiny);
    let logs = deploy_wasm(&server, &tiny, "acme-corp:tiny");
    assert!(logs.contains("wasm32-wasip2"), "{logs}");
    assert!(logs.contains("precompiled the component"), "{logs}");

    let app = json(&ok(
        &server,
        &tiny,
        &["app", "get", "acme-corp:tiny", "-o", "json"],
    ));
    assert_eq!(app["artifact"]["target"], "wasm32-wasip2", "{app}");
    let shown = ok(&server, &tiny, &["app", "get", "acme-corp:tiny"]);
    assert!(
        shown.contains("artifact       wasm32-wasip2 (sha256:"),
        "{shown}"
    );
    assert!(app["artifact"]["size"].as_u64().unwrap() > 0, "{app}");

    let out = ok(
        &server,
        &tiny,
        &[
            "invoke",
            "acme-corp:tiny",
            "-p",
            r#"{"message": "hi there"}"#,
        ],
    );
    let answer = json(
        out.lines()
            .take_while(|l| !l.starts_with("execution:"))
            .collect::<String>()
            .as_str(),
    );
    assert_eq!(answer["message"], "hi there", "{out}");
    assert_eq!(answer["function_id"], "acme-corp/tiny", "{out}");
    let id = answer["execution_id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 26, "a ULID: {id}");
    let record = execution(&server, &tiny, &id);
    assert_eq!(record["status"], "succeeded", "{record}");
    assert!(
        record["metrics"]["cold_start_ms"].as_f64().unwrap() > 0.0,
        "every request instantiates: {record}"
    );

    let (status, body) = http(&server.gateway, "tiny-acme-corp.ignite.localhost", "{}");
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["message"], "Hello from Rust!");

    // Versions mix targets: a native version 2, then a rollback to the component.
    save_native(&server, &tiny, "acme-corp:tiny", "./");
    ok(&server, &tiny, &["draft", "compile", "acme-corp:tiny"]);
    ok(&server, &tiny, &["draft", "compile-logs", "acme-corp:tiny"]);
    ok(&server, &tiny, &["draft", "publish", "acme-corp:tiny"]);
    let target = |server: &Server| {
        json(&ok(
            server,
            &tiny,
            &["app", "get", "acme-corp:tiny", "-o", "json"],
        ))["artifact"]["target"]
            .clone()
    };
    assert_eq!(target(&server), "x86_64-unknown-linux-musl");
    let (status, body) = http(&server.gateway, "tiny-acme-corp.ignite.localhost", "{}");
    assert_eq!(status, 200, "{body}");
    ok(
        &server,
        &tiny,
        &["version", "rollback", "acme-corp:tiny", "1"],
    );
    assert_eq!(target(&server), "wasm32-wasip2");
    let (status, body) = http(
        &server.gateway,
        "tiny-acme-corp.ignite.localhost",
        r#"{"message": "back"}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("back"), "{body}");
}

const GUEST: &str = r#"
use ignite::prelude::*;
use std::sync::atomic::{AtomicU32, Ordering};

static CALLS: AtomicU32 = AtomicU32::new(0);

#[ignite::main]
async fn handler(req: Request, ctx: Context) -> Result<impl IntoResponse> {
    let what: String = req.field("do")?;
    let out = match what.as_str() {
        "state" => {
            let calls = CALLS.fetch_add(1, Ordering::SeqCst) + 1;
            format!("calls {calls}")
        }
        "nap" => {
            std::thread::sleep(std::time::Duration::from_millis(1500));
            "napped".to_string()
        }
        "spin" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "grow" => {
            let mut keep: Vec<Vec<u8>> = Vec::new();
            loop {
                keep.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&keep);
            }
        }
        "files" => {
            let read = std::fs::read_to_string("/etc/passwd").map(|_| "READ".to_string());
            let write = std::fs::write("/tmp/x", b"x").map(|_| "WROTE".to_string());
            let dir = std::fs::read_dir("/").map(|_| "LISTED".to_string());
            format!("read {read:?}\nwrite {write:?}\ndir {dir:?}")
        }
        "socket" => {
            let tcp = std::net::TcpStream::connect("93.184.216.34:80").map(|_| "CONNECTED");
            let udp = std::net::UdpSocket::bind("0.0.0.0:0").map(|_| "BOUND");
            format!("tcp {tcp:?}\nudp {udp:?}")
        }
        "env" => {
            let mut vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
            vars.sort();
            format!("{}|{}", vars.join(","), ctx.env().get("GREETING").cloned().unwrap_or_default())
        }
        "log" => {
            eprintln!("to stderr {}", ctx.execution_id());
            println!("to stdout");
            "logged".to_string()
        }
        "fail" => return Err(Error::new(404, "no such thing")),
        "panic" => panic!("on purpose"),
        other => format!("unknown {other}"),
    };
    Ok(out)
}
"#;

#[test]
fn a_guest_is_contained_and_each_request_gets_a_fresh_instance() {
    let dir = scratch("wasm-guest");
    let server = start_server(&dir);
    let guest = project(&dir, "guest", GUEST);
    deploy_wasm(&server, &guest, "acme-corp:guest");
    ok(
        &server,
        &guest,
        &[
            "app",
            "scale",
            "acme-corp:guest",
            "--timeout",
            "2",
            "--memory",
            "64",
        ],
    );
    ok(
        &server,
        &guest,
        &["app", "set-env", "acme-corp:guest", "GREETING=hi"],
    );
    ok(&server, &guest, &["draft", "publish", "acme-corp:guest"]);
    let call = |what: &str| {
        let (status, headers, body) = http_full(
            &server.gateway,
            "guest-acme-corp.ignite.localhost",
            "POST",
            "/",
            &format!(r#"{{"do": "{what}"}}"#),
        );
        let id = header(&headers, "x-ignite-execution-id")
            .unwrap_or_else(|| panic!("no execution id ({status}): {body}"))
            .to_string();
        (status, body, execution(&server, &guest, &id))
    };

    // No state crosses requests: a fresh instance each time.
    for _ in 0..3 {
        let (status, body, _) = call("state");
        assert_eq!((status, body.as_str()), (200, "calls 1"));
    }

    // A tight loop is stopped at its deadline; the next request is served.
    let (status, body, record) = call("spin");
    assert_eq!(status, 504, "{body}");
    assert_eq!(record["status"], "timeout", "{record}");
    assert_eq!(call("state").0, 200, "served after the timeout");

    // Memory past the app's limit is refused: oom.
    let (status, body, record) = call("grow");
    assert_eq!(status, 502, "{body}");
    assert_eq!(record["status"], "oom", "{record}");
    assert!(body.contains("64 MiB"), "{body}");
    assert_eq!(call("state").0, 200, "served after the oom");

    // No filesystem, no sockets.
    let (status, body, _) = call("files");
    assert_eq!(status, 200, "{body}");
    for line in body.lines() {
        assert!(line.contains("Err("), "{body}");
    }
    let (status, body, _) = call("socket");
    assert_eq!(status, 200, "{body}");
    for line in body.lines() {
        assert!(line.contains("Err("), "{body}");
    }

    // Exactly the declared environment.
    let (_, body, _) = call("env");
    assert_eq!(body, "GREETING=hi|hi");

    // Logs, errors and panics are recorded like a native handler's.
    let (_, _, record) = call("log");
    let logs = record["logs"].to_string();
    assert!(logs.contains("to stderr"), "{record}");
    assert!(logs.contains("to stdout"), "{record}");
    let (status, body, record) = call("fail");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no such thing"), "{body}");
    assert_eq!(record["status"], "failed", "{record}");
    let (status, body, record) = call("panic");
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("on purpose"), "{body}");
    assert_eq!(record["status"], "failed", "{record}");

    // max_instances and queue_depth apply: one running, one waiting, the next refused at once.
    ok(
        &server,
        &guest,
        &[
            "app",
            "scale",
            "acme-corp:guest",
            "--max-instances",
            "1",
            "--queue-depth",
            "1",
        ],
    );
    let spin = || {
        let gateway = server.gateway.clone();
        std::thread::spawn(move || {
            http_full(
                &gateway,
                "guest-acme-corp.ignite.localhost",
                "POST",
                "/",
                r#"{"do": "spin"}"#,
            )
            .0
        })
    };
    let running = spin();
    std::thread::sleep(Duration::from_millis(300));
    let queued = spin();
    std::thread::sleep(Duration::from_millis(300));
    let (status, headers, body) = http_full(
        &server.gateway,
        "guest-acme-corp.ignite.localhost",
        "POST",
        "/",
        r#"{"do": "state"}"#,
    );
    assert_eq!(status, 429, "{body}");
    assert_eq!(header(&headers, "retry-after"), Some("1"));
    assert!(body.contains("max_instances (1)"), "{body}");
    assert_eq!(running.join().unwrap(), 504);
    assert_eq!(
        queued.join().unwrap(),
        504,
        "the queued one ran out of deadline"
    );
}

/// Saves `p` as `--rust-target wasm` and compiles it; the compile log, which must say it failed.
/// `n` requests at once that each sleep 1.5 s: the statuses they got, sorted.
fn naps(server: &Server, host: &str, n: usize) -> Vec<u16> {
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let gateway = server.gateway.clone();
            let host = host.to_string();
            std::thread::spawn(move || {
                http_full(&gateway, &host, "POST", "/", r#"{"do": "nap"}"#).0
            })
        })
        .collect();
    let mut got: Vec<u16> = calls.into_iter().map(|c| c.join().unwrap()).collect();
    got.sort();
    got
}

#[test]
fn a_wasm_app_deleted_and_created_again_gets_its_new_limits() {
    let dir = scratch("wasm-recreated");
    let server = start_server(&dir);
    let guest = project(&dir, "again", GUEST);
    let host = "again-acme-corp.ignite.localhost";
    deploy_wasm(&server, &guest, "acme-corp:again");
    ok(
        &server,
        &guest,
        &[
            "app",
            "scale",
            "acme-corp:again",
            "--max-instances",
            "1",
            "--queue-depth",
            "0",
        ],
    );
    // One runs; with no queue, the others are refused.
    assert_eq!(naps(&server, host, 3), [200, 429, 429]);
    // The app again, from scratch: the defaults (10 instances, a queue of 100), not the old
    // app's limits.
    ok(&server, &guest, &["app", "delete", "acme-corp:again"]);
    deploy_wasm(&server, &guest, "acme-corp:again");
    assert_eq!(naps(&server, host, 3), [200, 200, 200]);
}

fn failed_wasm_compile(server: &Server, p: &Path, name: &str) -> String {
    let id = format!("acme-corp:{name}");
    compile_wasm(server, p, &id);
    let logs = dodil(server, p, &["draft", "compile-logs", &id]);
    assert!(!logs.status.success(), "the compile of {id} succeeded");
    format!(
        "{}{}",
        String::from_utf8_lossy(&logs.stdout),
        String::from_utf8_lossy(&logs.stderr)
    )
}

#[test]
fn a_component_that_cannot_serve_is_refused_at_compile_with_the_reason() {
    let dir = scratch("wasm-refused");
    let server = start_server(&dir);
    // A library without #[ignite::main]: a component that exports no wasi:http handler.
    let bare = project(&dir, "bare", "pub fn nothing_here() {}\n");
    let text = failed_wasm_compile(&server, &bare, "bare");
    assert!(
        text.contains("does not export wasi:http/incoming-handler"),
        "{text}"
    );
    assert!(text.contains("#[ignite::main]"), "{text}");
    let err = fails(&server, &bare, &["draft", "publish", "acme-corp:bare"]);
    assert!(!err.is_empty());

    // A handler in src/main.rs: a component is a library.
    let bin = dir.join("bin");
    std::fs::create_dir_all(bin.join("src")).unwrap();
    std::fs::write(
        bin.join("Cargo.toml"),
        "[package]\nname = \"bin\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\nignite = \"*\"\n",
    )
    .unwrap();
    std::fs::write(bin.join("src/main.rs"), "fn main() {}\n").unwrap();
    let text = failed_wasm_compile(&server, &bin, "bin");
    assert!(
        text.contains("put the #[ignite::main] handler in src/lib.rs"),
        "{text}"
    );
}

#[test]
fn dodil_run_builds_and_calls_a_project_locally_on_both_targets() {
    let dir = scratch("wasm-local-run");
    let tiny = dir.join("tiny");
    copy_tiny(&tiny);
    for target in ["wasm", "native"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dodil"))
            .args(["ignite", "run"])
            .arg(&tiny)
            .args(["--rust-target", target, "-p", r#"{"message": "local"}"#])
            .env("CARGO_TARGET_DIR", support::target_dir())
            .env("XDG_CACHE_HOME", dir.join("cache"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{target}: {stderr}");
        let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(answer["message"], "local", "{target}");
        assert_eq!(answer["function_id"], "local/tiny", "{target}");
        assert!(stderr.contains("cold start"), "{target}: {stderr}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dodil"))
        .args(["ignite", "run"])
        .arg(&tiny)
        .args(["--rust-target", "riscv"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pass native or wasm"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const FETCHER: &str = r#"
use ignite::prelude::*;
use wasi::http::outgoing_handler;
use wasi::http::types::{Fields, OutgoingRequest, RequestOptions, Scheme};

fn fetch(authority: &str) -> std::result::Result<String, String> {
    let request = OutgoingRequest::new(Fields::new());
    request.set_scheme(Some(&Scheme::Http)).map_err(|()| "scheme")?;
    request.set_authority(Some(authority)).map_err(|()| "authority")?;
    request.set_path_with_query(Some("/")).map_err(|()| "path")?;
    let options = RequestOptions::new();
    options.set_connect_timeout(Some(1_000_000_000)).map_err(|()| "timeout")?;
    let pending = outgoing_handler::handle(request, Some(options)).map_err(|e| format!("{e:?}"))?;
    pending.subscribe().block();
    let response = pending
        .get()
        .ok_or("no response")?
        .map_err(|()| "taken")?
        .map_err(|e| format!("{e:?}"))?;
    let body = response.consume().map_err(|()| "body")?;
    let stream = body.stream().map_err(|()| "stream")?;
    let mut out = Vec::new();
    while let Ok(chunk) = stream.blocking_read(4096) {
        out.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[ignite::main]
async fn handler(req: Request, _ctx: Context) -> Result<impl IntoResponse> {
    let targets: Vec<String> = req.field("targets")?;
    Ok(targets
        .iter()
        .map(|t| format!("{t} => {:?}\n", fetch(t)))
        .collect::<String>())
}
"#;

#[path = "../crates/sandbox/tests/support/internet.rs"]
mod internet;

#[test]
fn a_component_reaches_the_internet_only_with_egress_and_never_private_addresses() {
    let internet = internet::Internet::shared();
    assert!(internet.reachable_from_host(), "the stand-in is up");
    let dir = scratch("wasm-egress");
    let server = start_server(&dir);
    let fetcher = dir.join("fetcher");
    std::fs::create_dir_all(fetcher.join("src")).unwrap();
    std::fs::write(
        fetcher.join("Cargo.toml"),
        "[package]\nname = \"fetcher\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
         [dependencies]\nignite = \"*\"\nwasi = \"0.14\"\n",
    )
    .unwrap();
    std::fs::write(fetcher.join("src/lib.rs"), FETCHER).unwrap();
    deploy_wasm(&server, &fetcher, "acme-corp:fetcher");
    ok(
        &server,
        &fetcher,
        &["app", "scale", "acme-corp:fetcher", "--timeout", "15"],
    );
    let host_service = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let host_service = format!(
        "{}:{}",
        internet::HOST_SIDE,
        host_service.local_addr().unwrap().port()
    );
    let targets = [
        internet.public.to_string(),
        internet.private.to_string(),
        host_service.clone(),
    ];
    let fetch = || {
        let (status, body) = http(
            &server.gateway,
            "fetcher-acme-corp.ignite.localhost",
            &serde_json::json!({ "targets": targets }).to_string(),
        );
        assert_eq!(status, 200, "{body}");
        let line = |t: &str| {
            body.lines()
                .find(|l| l.starts_with(t))
                .unwrap_or_default()
                .to_string()
        };
        (line(&targets[0]), line(&targets[1]), line(&targets[2]))
    };

    // Off by default: every request refused.
    let (public, _, _) = fetch();
    assert!(public.contains("HttpRequestDenied"), "{public}");

    // On: the public service answers; the private address and the node do not.
    ok(
        &server,
        &fetcher,
        &["app", "network", "acme-corp:fetcher", "--egress", "on"],
    );
    let (public, private, node) = fetch();
    assert!(public.contains(internet::GREETING), "{public}");
    assert!(public.contains("Ok("), "{public}");
    assert!(private.contains("Err("), "{private}");
    assert!(node.contains("Err("), "{node}");
}
