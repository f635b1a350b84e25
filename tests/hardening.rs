//! What one tenant must not be able to do to the node or to other tenants, against the real
//! server: take the node's capacity with its scaling settings, claim another org's public
//! hostname, make the gateway leak the node's internals, hold the edge's connections. And what a
//! crash must not lose: the record of a request already answered.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::Value;
use support::platform::*;

/// Sleeps `ms` milliseconds (0 by default), then answers "ok".
const SLEEPY: &str = r#"
use ignite::prelude::*;

#[ignite::main]
async fn handler(req: Request, _ctx: Context) -> Result<impl IntoResponse> {
    let ms: u64 = req.field("ms").unwrap_or(0);
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    Ok("ok".to_string())
}
"#;

fn host(app: &str) -> String {
    format!("{app}-acme-corp.ignite.localhost")
}

/// `dodil ignite <args>` as the holder of `token`.
fn dodil_as(server: &Server, cwd: &Path, token: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dodil"))
        .arg("ignite")
        .args(args)
        .current_dir(cwd)
        .env("DODIL_CONFIG", server.dir.join("config.toml"))
        .env("DODIL_TOKEN", token)
        // The CLI config names the first start's port; this start may have another.
        .env("DODIL_API_ENDPOINT", &server.api)
        .output()
        .expect("run dodil")
}

fn ok_as(server: &Server, cwd: &Path, token: &str, args: &[&str]) -> String {
    let out = dodil_as(server, cwd, token, args);
    assert!(
        out.status.success(),
        "dodil ignite {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// `app create`, `draft save --code ./ --rust-target native` and `draft compile` of `id` (its
/// compile started, not waited for) as the holder of `token`.
fn save_and_compile_as(server: &Server, p: &Path, token: &str, id: &str) {
    let name = id.split(':').nth(1).unwrap();
    ok_as(
        server,
        p,
        token,
        &["app", "create", name, "--runtime", "rust"],
    );
    ok_as(
        server,
        p,
        token,
        &[
            "draft",
            "save",
            id,
            "--code",
            "./",
            "--runtime",
            "rust",
            "--rust-target",
            "native",
        ],
    );
    ok_as(server, p, token, &["draft", "compile", id]);
}

/// [`save_and_compile_as`], then the compile followed to its end and the draft published.
fn deploy_as(server: &Server, p: &Path, token: &str, id: &str) {
    save_and_compile_as(server, p, token, id);
    ok_as(server, p, token, &["draft", "compile-logs", id]);
    ok_as(server, p, token, &["draft", "publish", id]);
}

/// A JSON request to the API as the admin: `(status, body)`.
fn api(server: &Server, method: &str, path: &str, body: &str) -> (u16, String) {
    send_raw(
        &server.api,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            token(server),
            body.len()
        ),
    )
}

#[test]
fn one_app_cannot_take_the_node_and_a_full_node_refuses_only_the_app_that_asks() {
    let dir = scratch("hardening-limits");
    let server = start_server_with(
        &dir,
        &[
            "--node-instances",
            "4",
            "--app-instances",
            "2",
            "--reserved-instances",
            "2",
            "--instance-memory-mb",
            "512",
        ],
    );
    let p = project(&dir, "sleepy", SLEEPY);
    // One compile; the others reuse its binary (same source).
    for app in ["hog", "third", "calm", "extra"] {
        deploy(&server, &p, &format!("acme-corp:{app}"), "./");
    }
    let exe = artifact_of(&server, &p, "acme-corp:hog");

    // The report's request: refused, naming the operator's limit.
    let out = fails(
        &server,
        &p,
        &[
            "app",
            "scale",
            "acme-corp:hog",
            "--reserved-capacity",
            "4000",
            "--max-instances",
            "4000",
        ],
    );
    assert!(
        out.contains("max_instances 4000") && out.contains("--app-instances"),
        "{out}"
    );
    let out = fails(
        &server,
        &p,
        &["app", "scale", "acme-corp:hog", "--memory", "4000000"],
    );
    assert!(out.contains("--instance-memory-mb"), "{out}");
    let (status, body) = api(
        &server,
        "PUT",
        "/v1/apps/acme-corp/hog/scaling",
        r#"{"queue_depth": 4000000000}"#,
    );
    assert_eq!(status, 400, "{body}");
    // Warm instances are a node-wide reserve: one app's reserve leaves none for another.
    ok(
        &server,
        &p,
        &[
            "app",
            "scale",
            "acme-corp:hog",
            "--max-instances",
            "2",
            "--reserved-capacity",
            "2",
        ],
    );
    let out = fails(
        &server,
        &p,
        &["app", "scale", "acme-corp:calm", "--reserved-capacity", "1"],
    );
    assert!(out.contains("--reserved-instances"), "{out}");
    ok(
        &server,
        &p,
        &["app", "scale", "acme-corp:hog", "--reserved-capacity", "0"],
    );
    wait_until(Duration::from_secs(20), "hog's two warm instances", || {
        pids_running(&exe).len() == 2
    });

    // The hog at its limit, with a request queued: a neighbour keeps answering.
    let long = |app: &'static str| {
        let gateway = server.gateway.clone();
        std::thread::spawn(move || http(&gateway, &host(app), r#"{"ms": 8000}"#))
    };
    let mut busy: Vec<_> = (0..3).map(|_| long("hog")).collect();
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..5 {
        assert_eq!(
            http(&server.gateway, &host("calm"), "{}"),
            (200, "ok".into())
        );
    }
    // A second app fills the node (4 instances: the hog's 2 and its 2); the idle instance of
    // `calm` is stopped to make room for the second.
    busy.push(long("third"));
    busy.push(long("third"));
    wait_until(
        Duration::from_secs(6),
        "four busy instances, calm's stopped",
        || pids_running(&exe).len() == 4,
    );
    // Every instance on the node is busy: the app that asks for one more gets 503.
    let (status, headers, body) = http_full(&server.gateway, &host("extra"), "POST", "/", r#"{}"#);
    assert_eq!(status, 503, "{body}");
    assert_eq!(header(&headers, "retry-after"), Some("1"));
    assert!(body.contains("busy"), "{body}");
    // And no one else's request failed for it.
    for call in busy {
        assert_eq!(call.join().unwrap(), (200, "ok".into()));
    }
    // With instances idle again, a cold start takes the place of the least recently used.
    assert_eq!(
        http(&server.gateway, &host("extra"), "{}"),
        (200, "ok".into())
    );
    wait_until(Duration::from_secs(6), "at most four instances", || {
        pids_running(&exe).len() <= 4
    });
}

#[test]
fn public_hostnames_are_unique_across_orgs_whatever_the_order() {
    let dir = scratch("hardening-hostnames");
    let p = dir.join("tiny");
    copy_tiny(&p);
    // Org acme-corp, first start.
    let server = start_server(&dir);
    let acme = token(&server);
    deploy(&server, &p, "acme-corp:tiny", "./");
    server.stop();
    // The same node, a second org.
    let server = start_server_with(&dir, &["--org", "corp"]);
    let corp = server
        .admin_token
        .clone()
        .expect("the corp org's admin token");
    deploy_as(&server, &p, &corp, "corp:api-acme");
    let shared = "api-acme-corp.ignite.localhost";
    let (status, body) = http(&server.gateway, shared, r#"{"message": "corp"}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["function_id"], "corp/api-acme");
    // acme-corp's `api` would have the same hostname: refused, naming it.
    let out = dodil_as(
        &server,
        &p,
        &acme,
        &["app", "create", "api", "--runtime", "rust"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(shared) && err.contains("another app"), "{err}");
    // corp's app still answers, and acme-corp's other apps too.
    let (status, body) = http(&server.gateway, shared, "{}");
    assert_eq!(
        (status, json(&body)["function_id"].clone()),
        (200, "corp/api-acme".into())
    );
    let (status, _) = http(&server.gateway, "tiny-acme-corp.ignite.localhost", "{}");
    assert_eq!(status, 200);
}

/// Reads one HTTP/1.1 response with a Content-Length from a keep-alive connection: its status
/// and `x-ignite-execution-id`.
fn read_response(s: &mut TcpStream) -> std::io::Result<(u16, Option<String>)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let field = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let length: usize = field("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    s.read_exact(&mut body)?;
    Ok((status, field("x-ignite-execution-id")))
}

#[test]
fn a_crash_loses_no_record_of_an_answered_request() {
    let dir = scratch("hardening-crash");
    let p = dir.join("tiny");
    copy_tiny(&p);
    let server = start_server(&dir);
    deploy(&server, &p, "acme-corp:tiny", "./");
    ok(
        &server,
        &p,
        &["app", "scale", "acme-corp:tiny", "--reserved-capacity", "4"],
    );
    // Eight clients on keep-alive connections, each noting the execution id of every answer.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let gateway = server.gateway.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut answered = Vec::new();
                let Ok(mut s) = TcpStream::connect(&gateway) else {
                    return answered;
                };
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = s.set_nodelay(true);
                let request = format!(
                    "POST / HTTP/1.1\r\nHost: {}\r\nContent-Length: 2\r\n\r\n{{}}",
                    host("tiny")
                );
                while !stop.load(Ordering::Relaxed) {
                    if s.write_all(request.as_bytes()).is_err() {
                        break;
                    }
                    match read_response(&mut s) {
                        Ok((200, Some(id))) => answered.push(id),
                        _ => break,
                    }
                }
                answered
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    // The crash, mid-load.
    let status = Command::new("kill")
        .args(["-KILL", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    stop.store(true, Ordering::Relaxed);
    let answered: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert!(answered.len() > 100, "only {} answers", answered.len());
    drop(server);

    let server = start_server(&dir);
    let auth = format!("Bearer {}", token(&server));
    let mut s = TcpStream::connect(&server.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    let mut missing = Vec::new();
    for id in &answered {
        let request =
            format!("GET /v1/executions/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n");
        s.write_all(request.as_bytes()).unwrap();
        let (status, _) = read_response(&mut s).unwrap();
        if status != 200 {
            missing.push(id.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} answered requests have no record after the crash: {:?}",
        missing.len(),
        answered.len(),
        &missing[..missing.len().min(5)]
    );
    // And they are what they were: succeeded.
    let admin = token(&server);
    let e = json(&ok_as(
        &server,
        &p,
        &admin,
        &["execution", "get", &answered[0], "-o", "json"],
    ));
    assert_eq!(e["status"], "succeeded");
}

#[test]
fn environment_values_are_checked_and_the_gateway_names_no_internals() {
    let dir = scratch("hardening-env");
    let server = start_server(&dir);
    // A source of its own, so that its binary is no other test's.
    let p = project(
        &dir,
        "lonely",
        &SLEEPY.replace("\"ok\"", &format!("\"{}\"", ulid::Ulid::new())),
    );
    deploy(&server, &p, "acme-corp:lonely", "./");
    for (env, says) in [
        (r#"{"env": {"X": "a\u0000b"}}"#, "NUL"),
        (
            r#"{"env": {"A=B": "1"}}"#,
            "invalid environment variable name",
        ),
        (r#"{"env": {"": "1"}}"#, "invalid environment variable name"),
        (
            r#"{"env": {"1X": "1"}}"#,
            "invalid environment variable name",
        ),
    ] {
        let (status, body) = api(&server, "PUT", "/v1/apps/acme-corp/lonely/env", env);
        assert_eq!(status, 400, "{env}: {body}");
        assert!(body.contains(says), "{env}: {body}");
    }
    let big = format!(r#"{{"env": {{"X": "{}"}}}}"#, "v".repeat(40 * 1024));
    let (status, body) = api(&server, "PUT", "/v1/apps/acme-corp/lonely/env", &big);
    assert_eq!(status, 400, "{body}");
    let (status, body) = api(
        &server,
        "PUT",
        "/v1/apps/acme-corp/lonely/env",
        r#"{"env": {"GREETING": "hej", "_X1": ""}}"#,
    );
    assert_eq!(status, 200, "{body}");

    // A platform failure (the artifact gone from the node's disk) as a public caller sees it:
    // a status, a short reason, the execution id; no host path, no OS error.
    let exe = artifact_of(&server, &p, "acme-corp:lonely");
    std::fs::remove_file(&exe).unwrap();
    let (status, headers, body) = http_full(&server.gateway, &host("lonely"), "POST", "/", "{}");
    assert_eq!(status, 502, "{body}");
    let data_dir = server.dir.join("data").display().to_string();
    for internal in [
        data_dir.as_str(),
        "blobs",
        "sha256",
        "No such file",
        "os error",
    ] {
        assert!(
            !body.contains(internal),
            "the gateway said {internal:?}: {body}"
        );
    }
    let id = header(&headers, "x-ignite-execution-id").expect("an execution id");
    assert!(body.contains(id), "{body}");
    // The owner sees why.
    let e = json(&ok(&server, &p, &["execution", "get", id, "-o", "json"]));
    assert_eq!(e["status"], "crashed");
    assert!(
        e["error"].as_str().unwrap().contains("did not start"),
        "{e}"
    );
}

#[test]
fn the_edge_bounds_connections_slow_clients_and_odd_hosts() {
    let dir = scratch("hardening-edge");
    let server = start_server_with(
        &dir,
        &[
            "--connections-per-client",
            "6",
            "--header-read-timeout",
            "1",
            "--idle-connection-timeout",
            "2",
        ],
    );
    let p = dir.join("tiny");
    copy_tiny(&p);
    deploy(&server, &p, "acme-corp:tiny", "./");
    // A fully qualified host (trailing dot) is the same host.
    let (status, body) = http(&server.gateway, "tiny-acme-corp.ignite.localhost.", "{}");
    assert_eq!(status, 200, "{body}");
    let (status, _) = http(&server.gateway, "TINY-acme-corp.ignite.localhost.:80", "{}");
    assert_eq!(status, 200);
    // A JSON body over the limit is 413, not 400.
    let (status, body) = send_raw(
        &server.api,
        &format!(
            "PUT /v1/apps/acme-corp/tiny/env HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{{\"env\": {{",
            token(&server),
            40u64 << 20
        ),
    );
    assert_eq!(status, 413, "{body}");

    // Headers that never finish: the connection is closed.
    for addr in [&server.gateway, &server.api] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: tiny-acme-corp.ignite.localhost\r\n")
            .unwrap();
        let started = Instant::now();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(
            started.elapsed() < Duration::from_secs(14),
            "a half-sent request held {addr} open"
        );
    }
    // A body that never arrives: 408 after the body deadline, not a connection held for ever.
    let mut s = TcpStream::connect(&server.gateway).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: tiny-acme-corp.ignite.localhost\r\nContent-Length: 100\r\n\r\n{",
    )
    .unwrap();
    let (status, _) = read_response(&mut s).unwrap();
    assert_eq!(status, 408);
    // An idle keep-alive connection is closed after its request.
    let mut s = TcpStream::connect(&server.gateway).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: {}\r\nContent-Length: 2\r\n\r\n{{}}",
        host("tiny")
    )
    .unwrap();
    assert_eq!(read_response(&mut s).unwrap().0, 200);
    let started = Instant::now();
    let mut byte = [0u8; 1];
    assert_eq!(s.read(&mut byte).unwrap_or(0), 0, "the connection closes");
    assert!(started.elapsed() < Duration::from_secs(19));

    // One client holds at most 6 connections; the next is told so, and a freed one is reused.
    let held: Vec<TcpStream> = (0..6)
        .map(|_| TcpStream::connect(&server.gateway).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let (status, body) = http(&server.gateway, &host("tiny"), "{}");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("too many connections"), "{body}");
    drop(held);
    wait_until(Duration::from_secs(5), "a connection again", || {
        http(&server.gateway, &host("tiny"), "{}").0 == 200
    });
}

/// Any JSON value, including the odd ones: NUL and control characters, huge and negative
/// numbers, deep nesting.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "(?s).{0,40}".prop_map(Value::String),
        Just(Value::String("\u{0}".into())),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    "[a-z_]{1,16}",
                    Just("env".to_string()),
                    Just("name".to_string()),
                    Just("runtime".to_string()),
                    Just("max_instances".to_string()),
                    Just("reserved_capacity".to_string()),
                    Just("memory_mb".to_string()),
                    Just("egress".to_string()),
                    Just("version".to_string()),
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn fuzzed_api_bodies_and_hosts_get_a_4xx_never_a_5xx() {
    let dir = scratch("hardening-fuzz");
    let server = start_server(&dir);
    let (status, body) = api(
        &server,
        "POST",
        "/v1/apps",
        r#"{"name": "fuzzed", "runtime": "rust"}"#,
    );
    assert_eq!(status, 201, "{body}");
    let routes = [
        ("POST", "/v1/apps"),
        ("PUT", "/v1/apps/acme-corp/fuzzed/env"),
        ("PUT", "/v1/apps/acme-corp/fuzzed/scaling"),
        ("PUT", "/v1/apps/acme-corp/fuzzed/network"),
        ("POST", "/v1/apps/acme-corp/fuzzed/rollback"),
        ("POST", "/v1/tokens"),
    ];
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 300,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        0..routes.len(),
        prop_oneof![
            any_json().prop_map(|v| v.to_string().into_bytes()),
            prop::collection::vec(any::<u8>(), 0..64),
        ],
        "(?s).{0,80}",
    );
    runner
        .run(&strategy, |(route, body, host)| {
            let (method, path) = routes[route];
            let mut request = format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                token(&server),
                body.len()
            )
            .into_bytes();
            request.extend_from_slice(&body);
            let (status, answer) = send_bytes(&server.api, &request);
            prop_assert!(status != 0 && status < 500, "{method} {path} {body:?}: {status} {answer}");
            if status >= 400 {
                let v: Value = serde_json::from_str(&answer)
                    .map_err(|e| TestCaseError::fail(format!("{e}: {answer}")))?;
                prop_assert!(v["error"]["message"].is_string(), "{answer}");
            }
            // The gateway, with whatever Host a caller sends (header-safe bytes only).
            let host: String = host.chars().filter(|c| !c.is_control()).collect();
            let (status, _) = send_bytes(
                &server.gateway,
                format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
            );
            prop_assert!(status == 400 || status == 404, "Host {host:?}: {status}");
            Ok(())
        })
        .unwrap();
    // Whatever was created along the way, the server still serves.
    let (status, _) = api(&server, "GET", "/v1/apps", "");
    assert_eq!(status, 200);
}

/// The cgroup directories a server with this pid made (`ignite-<pid>-<n>`, in every hierarchy).
fn cgroups_of(pid: u32) -> Vec<std::path::PathBuf> {
    fn walk(dir: &Path, prefix: &str, depth: u32, found: &mut Vec<std::path::PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if entry.file_name().to_string_lossy().starts_with(prefix) {
                found.push(path);
            } else if depth > 0 {
                walk(&path, prefix, depth - 1, found);
            }
        }
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut found = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if !right.starts_with("cgroup") {
            continue;
        }
        if let Some(mount) = left.split(' ').nth(4) {
            walk(Path::new(mount), &format!("ignite-{pid}-"), 6, &mut found);
        }
    }
    found
}

/// Pids of live processes whose command line mentions every one of `words`.
fn processes_with(words: &[&str]) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                words.iter().all(|w| c.contains(w))
            })
        })
        .collect()
}

#[test]
fn a_stopped_or_crashed_server_leaves_no_cgroups_and_no_compile_behind() {
    let dir = scratch("hardening-leftovers");
    let p = dir.join("tiny");
    copy_tiny(&p);
    // A clean stop removes what the sandbox made.
    let server = start_server(&dir);
    let pid = server.pid();
    deploy(&server, &p, "acme-corp:tiny", "./");
    assert_eq!(http(&server.gateway, &host("tiny"), "{}").0, 200);
    assert!(!cgroups_of(pid).is_empty(), "the sandbox made no cgroups?");
    server.stop();
    assert_eq!(cgroups_of(pid), Vec::<std::path::PathBuf>::new());
    assert!(!dir.join("data/sandbox/registry-proxy.sock").exists());

    // A crash during a compile whose build script never ends.
    let server = start_server(&dir);
    let crashed = server.pid();
    let sleeper = project(&dir, "sleeper", SLEEPY);
    std::fs::write(
        sleeper.join("build.rs"),
        "fn main() { std::thread::sleep(std::time::Duration::from_secs(3600)); }\n",
    )
    .unwrap();
    let admin = token(&server);
    save_and_compile_as(&server, &sleeper, &admin, "acme-corp:sleeper");
    let script = ["sleeper-", "build-script-build"];
    wait_until(Duration::from_secs(300), "the build script to run", || {
        !processes_with(&script).is_empty()
    });
    let status = Command::new("kill")
        .args(["-KILL", &crashed.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Nothing of the compile outlives the server (its process group is left alone: only the
    // server itself was killed).
    wait_until(
        Duration::from_secs(10),
        "the compile to end with the server",
        || processes_with(&script).is_empty(),
    );
    // The next start clears the crashed server's cgroups, marks the compile failed, and the
    // next compile sharing its target directory is not blocked.
    let after = start_server_with(&dir, &["--build-timeout", "300"]);
    wait_until(
        Duration::from_secs(10),
        "the crashed server's cgroups to go",
        || cgroups_of(crashed).is_empty(),
    );
    let app = json(&ok_as(
        &after,
        &sleeper,
        &admin,
        &["app", "get", "acme-corp:sleeper", "-o", "json"],
    ));
    assert_eq!(app["draft"]["compile_status"], "failed", "{app}");
    let other = dir.join("other");
    copy_tiny(&other);
    std::fs::write(
        other.join("src/lib.rs"),
        std::fs::read_to_string(other.join("src/lib.rs"))
            .unwrap()
            .replace("Hello from Rust!", "Hello after the crash"),
    )
    .unwrap();
    deploy_as(&after, &other, &admin, "acme-corp:other");
    let (status, body) = http(&after.gateway, &host("other"), "{}");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Hello after the crash"), "{body}");
    drop(server);
}

#[test]
fn a_shared_target_directory_is_never_shared_across_orgs() {
    let dir = scratch("hardening-shared-target");
    let p = dir.join("tiny");
    copy_tiny(&p);
    let server = start_server(&dir);
    deploy(&server, &p, "acme-corp:tiny", "./");
    server.stop();
    // Where acme-corp's compiled crates are, in the operator's shared target directory.
    let shared = support::target_dir();
    let deps = [
        shared.join("acme-corp/x86_64-unknown-linux-musl/release/deps"),
        shared.join("x86_64-unknown-linux-musl/release/deps"),
    ]
    .into_iter()
    .find(|d| {
        std::fs::read_dir(d).is_ok_and(|mut e| {
            e.any(|f| f.is_ok_and(|f| f.file_name().to_string_lossy().starts_with("libtiny-")))
        })
    })
    .expect("acme-corp's build output in the shared target directory");
    let planted = deps.join("planted-by-corp");

    // Another org's build script goes looking for it.
    let server = start_server_with(&dir, &["--org", "corp"]);
    let corp = server.admin_token.clone().expect("corp's admin token");
    let snoop = dir.join("snoop");
    std::fs::create_dir_all(snoop.join("src")).unwrap();
    std::fs::write(
        snoop.join("Cargo.toml"),
        "[package]\nname = \"snoop\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\nignite = \"*\"\n",
    )
    .unwrap();
    std::fs::write(snoop.join("src/lib.rs"), SLEEPY).unwrap();
    std::fs::write(
        snoop.join("build.rs"),
        format!(
            r#"fn main() {{
    let deps = std::path::Path::new({deps:?});
    let read = match std::fs::read_dir(deps) {{
        Ok(e) => format!("listed {{}} entries", e.count()),
        Err(e) => format!("refused ({{}})", e.kind()),
    }};
    let write = match std::fs::write({planted:?}, "x") {{
        Ok(()) => "written".to_string(),
        Err(e) => format!("refused ({{}})", e.kind()),
    }};
    println!("cargo:warning=SNOOP read={{read}} write={{write}}");
    panic!("stopping here");
}}
"#
        ),
    )
    .unwrap();
    save_and_compile_as(&server, &snoop, &corp, "corp:snoop");
    let out = dodil_as(
        &server,
        &snoop,
        &corp,
        &["draft", "compile-logs", "corp:snoop"],
    );
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(log.contains("SNOOP read=refused"), "{log}");
    assert!(log.contains("write=refused"), "{log}");
    assert!(
        !planted.exists(),
        "another org's build wrote into acme-corp's outputs"
    );
}

/// The threads of `pid` named `name`.
fn threads_named(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the server's threads")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

/// `--serve-threads`: the server serves on that many threads, one per CPU when it is not
/// given, and refuses 0 saying what to give instead.
#[test]
fn the_server_serves_on_the_threads_it_is_given() {
    let dir = scratch("hardening-serve-threads");
    let p = dir.join("tiny");
    copy_tiny(&p);
    let server = start_server_with(&dir, &["--serve-threads", "3"]);
    assert_eq!(threads_named(server.pid(), "ignite-serve"), 3);
    deploy(&server, &p, "acme-corp:tiny", "./");
    assert_eq!(http(&server.gateway, &host("tiny"), "{}").0, 200);
    server.stop();

    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let server = start_server(&dir);
    assert_eq!(threads_named(server.pid(), "ignite-serve"), cpus);
    assert_eq!(http(&server.gateway, &host("tiny"), "{}").0, 200);
    server.stop();

    let refused = Command::new(env!("CARGO_BIN_EXE_dodil"))
        .args(["ignite", "server", "--serve-threads", "0", "--data-dir"])
        .arg(dir.join("refused"))
        .env("DODIL_CONFIG", dir.join("refused.toml"))
        .output()
        .expect("dodil ignite server");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("--serve-threads 0") && stderr.contains("1 or more"),
        "{stderr}"
    );
}
