//! Instance pools against the real server and real handler processes: scale to zero, reserved
//! capacity, limits with a queue and 429, deadlines, publish under traffic, bursts.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::platform::*;

/// Answers its instance's identity (a token drawn when the process started: inside the sandbox
/// every handler's pid is the same) and a version tag; sleeps `sleep_ms` first when asked.
fn handler(tag: &str) -> String {
    format!(
        r#"
use ignite::prelude::*;

#[ignite::main]
async fn handler(req: Request, _ctx: Context) -> Result<impl IntoResponse> {{
    let sleep_ms: u64 = req.field("sleep_ms").unwrap_or(0);
    if sleep_ms > 0 {{
        tokio::time::sleep(std::time::Duration::from_millis(sleep_ms)).await;
    }}
    static INSTANCE: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    let instance = INSTANCE.get_or_init(|| {{
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    }});
    Ok(serde_json::json!({{ "instance": instance.to_string(), "tag": "{tag}" }}))
}}
"#
    )
}

fn instance(body: &str) -> String {
    json(body)["instance"]
        .as_str()
        .unwrap_or_else(|| panic!("no instance in {body}"))
        .to_string()
}

fn host(app: &str) -> String {
    format!("{app}-acme-corp.ignite.localhost")
}

/// Status, headers and body of an answer.
type Answer = (u16, Vec<(String, String)>, String);

fn call(server: &Server, app: &str, body: &str) -> Answer {
    http_full(&server.gateway, &host(app), "POST", "/", body)
}

fn execution(server: &Server, cwd: &Path, headers: &[(String, String)]) -> serde_json::Value {
    let id = header(headers, "x-ignite-execution-id").expect("an execution id header");
    json(&ok(server, cwd, &["execution", "get", id, "-o", "json"]))
}

#[test]
fn an_idle_app_scales_to_zero_and_comes_back_cold() {
    let dir = scratch("scale-to-zero");
    let server = start_server(&dir);
    let p = project(&dir, "idler", &handler("v1"));
    deploy(&server, &p, "acme-corp:idler", "./");
    ok(
        &server,
        &p,
        &["app", "scale", "acme-corp:idler", "--idle-timeout", "1"],
    );
    let exe = artifact_of(&server, &p, "acme-corp:idler");

    let (status, headers, body) = call(&server, "idler", "{}");
    assert_eq!(status, 200, "{body}");
    let first = instance(&body);
    assert!(
        execution(&server, &p, &headers)["metrics"]["cold_start_ms"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let (_, headers, body) = call(&server, "idler", "{}");
    assert_eq!(instance(&body), first, "the warm instance served");
    assert_eq!(
        execution(&server, &p, &headers)["metrics"]["cold_start_ms"],
        0.0
    );
    assert_eq!(pids_running(&exe).len(), 1);

    // Idle past the timeout: no process of the app is left.
    wait_until(Duration::from_secs(10), "the idle instance to stop", || {
        pids_running(&exe).is_empty()
    });
    // The next call starts one again (cold), with a phase breakdown.
    let (status, headers, body) = call(&server, "idler", "{}");
    assert_eq!(status, 200);
    assert_ne!(instance(&body), first);
    let e = execution(&server, &p, &headers);
    let m = &e["metrics"];
    assert!(m["cold_start_ms"].as_f64().unwrap() > 0.0, "{e}");
    let phases = &m["cold_start_phases"];
    for phase in ["fetch_ms", "spawn_ms", "init_ms"] {
        assert!(phases[phase].as_f64().is_some(), "{phase} missing: {e}");
    }
    assert!(
        phases["spawn_ms"].as_f64() <= phases["init_ms"].as_f64(),
        "{e}"
    );
}

#[test]
fn reserved_capacity_is_warm_before_the_first_call_and_replaced_when_killed() {
    let dir = scratch("reserved");
    let server = start_server(&dir);
    let p = project(&dir, "steady", &handler("v1"));
    ok(
        &server,
        &p,
        &["app", "create", "steady", "--runtime", "rust"],
    );
    save_native(&server, &p, "acme-corp:steady", "./");
    ok(&server, &p, &["draft", "compile", "acme-corp:steady"]);
    ok(&server, &p, &["draft", "compile-logs", "acme-corp:steady"]);
    // Scaling is set before the first publish; --idle-timeout 1 shows reserved ones are exempt.
    let out = ok(
        &server,
        &p,
        &[
            "app",
            "scale",
            "acme-corp:steady",
            "--reserved-capacity",
            "1",
            "--idle-timeout",
            "1",
            "-o",
            "json",
        ],
    );
    assert_eq!(json(&out)["reserved_capacity"], 1);
    ok(&server, &p, &["draft", "publish", "acme-corp:steady"]);
    let exe = artifact_of(&server, &p, "acme-corp:steady");
    let idle = r#"ignite_instances{app="acme-corp:steady",state="idle"} 1"#;
    wait_until(Duration::from_secs(10), "the reserved instance", || {
        metrics(&server).contains(idle)
    });
    let reserved = pids_running(&exe);
    assert_eq!(reserved.len(), 1, "{reserved:?}");

    // The first call is warm.
    let (status, headers, body) = call(&server, "steady", "{}");
    assert_eq!(status, 200);
    let reserved_instance = instance(&body);
    assert_eq!(
        execution(&server, &p, &headers)["metrics"]["cold_start_ms"],
        0.0
    );

    // It outlives the idle timeout.
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(pids_running(&exe), reserved);

    // Killed from outside, it is replaced.
    let status = std::process::Command::new("kill")
        .args(["-9", &reserved[0].to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_until(Duration::from_secs(10), "a replacement instance", || {
        let now = pids_running(&exe);
        now.len() == 1 && now[0] != reserved[0]
    });
    // The gauge is refreshed by the reconcile loop (every 250 ms): let it pass once, so that an
    // "idle 1" read is the replacement's, not the killed instance's.
    std::thread::sleep(Duration::from_millis(600));
    wait_until(
        Duration::from_secs(10),
        "the replacement to be idle",
        || metrics(&server).contains(idle),
    );
    let (_, headers, body) = call(&server, "steady", "{}");
    assert_ne!(
        instance(&body),
        reserved_instance,
        "the replacement answered"
    );
    assert_eq!(
        execution(&server, &p, &headers)["metrics"]["cold_start_ms"],
        0.0
    );
}

#[test]
fn max_instances_queue_and_429() {
    let dir = scratch("limits");
    let server = Arc::new(start_server(&dir));
    let p = project(&dir, "narrow", &handler("v1"));
    deploy(&server, &p, "acme-corp:narrow", "./");
    ok(
        &server,
        &p,
        &[
            "app",
            "scale",
            "acme-corp:narrow",
            "--max-instances",
            "1",
            "--queue-depth",
            "1",
            "--timeout",
            "20",
        ],
    );

    // One request holds the only instance, a second waits, a third is refused.
    let spawn = |delay_ms: u64| {
        let server = server.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(delay_ms));
            call(&server, "narrow", r#"{"sleep_ms": 1500}"#)
        })
    };
    let first = spawn(0);
    let second = spawn(300);
    std::thread::sleep(Duration::from_millis(700));
    let (status, headers, body) = call(&server, "narrow", "{}");
    assert_eq!(status, 429, "{body}");
    assert_eq!(header(&headers, "retry-after"), Some("1"));
    assert!(
        body.contains("max_instances") && body.contains("app scale"),
        "{body}"
    );

    let (s1, h1, b1) = first.join().unwrap();
    let (s2, h2, b2) = second.join().unwrap();
    assert_eq!((s1, s2), (200, 200), "{b1} {b2}");
    // One instance served both, the second after waiting in the queue.
    assert_eq!(instance(&b1), instance(&b2));
    let queued = execution(&server, &p, &h2);
    assert!(
        queued["metrics"]["queue_ms"].as_f64().unwrap() > 500.0,
        "{queued}"
    );
    assert_eq!(
        execution(&server, &p, &h1)["metrics"]["queue_ms"]
            .as_f64()
            .map(|q| q < 100.0),
        Some(true)
    );
    // A throttled request is not an execution; it is counted.
    let listed = json(&ok(
        &server,
        &p,
        &[
            "execution",
            "list",
            "--app",
            "acme-corp:narrow",
            "-o",
            "json",
        ],
    ));
    assert_eq!(listed["executions"].as_array().unwrap().len(), 2);
    assert!(metrics(&server).contains(r#"ignite_throttled_total{app="acme-corp:narrow"} 1"#));
}

#[test]
fn a_deadline_hit_leaves_neighbours_alone() {
    let dir = scratch("deadline");
    let server = Arc::new(start_server(&dir));
    let p = project(&dir, "mixed", &handler("v1"));
    deploy(&server, &p, "acme-corp:mixed", "./");
    ok(
        &server,
        &p,
        &[
            "app",
            "scale",
            "acme-corp:mixed",
            "--timeout",
            "1",
            "--max-instances",
            "4",
        ],
    );

    let slow = {
        let server = server.clone();
        std::thread::spawn(move || call(&server, "mixed", r#"{"sleep_ms": 30000}"#))
    };
    let mut quick = Vec::new();
    for _ in 0..10 {
        let (status, _, body) = call(&server, "mixed", "{}");
        quick.push(status);
        assert_eq!(status, 200, "{body}");
    }
    let (status, headers, body) = slow.join().unwrap();
    assert_eq!(status, 504, "{body}");
    let e = execution(&server, &p, &headers);
    assert_eq!(e["status"], "timeout");
    // Its instance was stopped; the app keeps answering.
    let (status, _, _) = call(&server, "mixed", "{}");
    assert_eq!(status, 200);
    let list = json(&ok(
        &server,
        &p,
        &[
            "execution",
            "list",
            "--app",
            "acme-corp:mixed",
            "--status",
            "succeeded",
            "-o",
            "json",
        ],
    ));
    assert_eq!(list["executions"].as_array().unwrap().len(), 11);
}

#[test]
fn a_publish_during_traffic_fails_no_request_and_drains_the_old_version() {
    let dir = scratch("rolling");
    let server = Arc::new(start_server(&dir));
    let p = project(&dir, "rolling", &handler("v1"));
    deploy(&server, &p, "acme-corp:rolling", "./");
    let old_exe = artifact_of(&server, &p, "acme-corp:rolling");

    let stop = Arc::new(AtomicBool::new(false));
    // If an assertion below fails, the traffic thread must still stop (it holds the server).
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop_guard = StopOnDrop(stop.clone());
    let traffic = {
        let (server, stop) = (server.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let (status, _, body) = call(&server, "rolling", r#"{"sleep_ms": 20}"#);
                let tag = if status == 200 {
                    json(&body)["tag"].as_str().unwrap_or("?").to_string()
                } else {
                    format!("HTTP {status}: {body}")
                };
                seen.push(tag);
            }
            seen
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(p.join("src/lib.rs"), handler("v2")).unwrap();
    save_native(&server, &p, "acme-corp:rolling", "./");
    ok(&server, &p, &["draft", "compile", "acme-corp:rolling"]);
    ok(&server, &p, &["draft", "compile-logs", "acme-corp:rolling"]);
    ok(&server, &p, &["draft", "publish", "acme-corp:rolling"]);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let seen = traffic.join().unwrap();

    assert!(
        seen.iter().all(|t| t == "v1" || t == "v2"),
        "a request failed: {seen:?}"
    );
    let switch = seen
        .iter()
        .position(|t| t == "v2")
        .expect("v2 never answered");
    assert!(switch > 0, "v1 never answered");
    assert!(
        seen[switch..].iter().all(|t| t == "v2"),
        "v1 answered after v2: {seen:?}"
    );
    // The old version's instances stop once drained.
    wait_until(Duration::from_secs(10), "v1's instances to stop", || {
        pids_running(&old_exe).is_empty()
    });
}

#[test]
fn a_burst_ends_with_exactly_one_record_per_request() {
    let dir = scratch("burst");
    let server = Arc::new(start_server(&dir));
    let p = project(&dir, "bursty", &handler("v1"));
    deploy(&server, &p, "acme-corp:bursty", "./");
    ok(
        &server,
        &p,
        &["app", "scale", "acme-corp:bursty", "--max-instances", "4"],
    );

    let threads: Vec<_> = (0..40)
        .map(|i| {
            let server = server.clone();
            std::thread::spawn(move || {
                let body = if i % 10 == 0 {
                    r#"{"sleep_ms": 200}"#
                } else {
                    "{}"
                };
                call(&server, "bursty", body)
            })
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    let mut pids = std::collections::BTreeSet::new();
    for t in threads {
        let (status, headers, body) = t.join().unwrap();
        assert_eq!(status, 200, "{body}");
        ids.insert(
            header(&headers, "x-ignite-execution-id")
                .unwrap()
                .to_string(),
        );
        pids.insert(instance(&body));
    }
    assert_eq!(ids.len(), 40, "execution ids are unique");
    assert!(pids.len() <= 4, "more than max_instances ran: {pids:?}");
    let listed = json(&ok(
        &server,
        &p,
        &[
            "execution",
            "list",
            "--app",
            "acme-corp:bursty",
            "--limit",
            "1000",
            "-o",
            "json",
        ],
    ));
    let listed: std::collections::BTreeSet<String> = listed["executions"]
        .as_array()
        .unwrap()
        .iter()
        .inspect(|e| assert_eq!(e["status"], "succeeded", "{e}"))
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, ids);
    let m = metrics(&server);
    assert!(
        m.contains(r#"ignite_invocations_total{app="acme-corp:bursty",status="succeeded"} 40"#),
        "{m}"
    );
    assert!(m.contains("ignite_cold_starts_total"), "{m}");
}

#[test]
fn a_caller_that_hangs_up_leaks_no_instance_and_no_running_record() {
    let dir = scratch("hangup");
    let server = start_server(&dir);
    let p = project(&dir, "hangup", &handler("v1"));
    deploy(&server, &p, "acme-corp:hangup", "./");
    ok(
        &server,
        &p,
        &["app", "scale", "acme-corp:hangup", "--max-instances", "1"],
    );

    // A caller sends a slow request and hangs up at once.
    {
        use std::io::Write;
        let body = r#"{"sleep_ms": 800}"#;
        let mut s = std::net::TcpStream::connect(&server.gateway).unwrap();
        write!(
            s,
            "POST / HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n{body}",
            host("hangup"),
            body.len()
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    // The only instance comes back to the pool: the next caller is served.
    let (status, _, body) = call(&server, "hangup", "{}");
    assert_eq!(status, 200, "{body}");
    // And the abandoned request still ended with its record.
    wait_until(Duration::from_secs(10), "two finished executions", || {
        let list = json(&ok(
            &server,
            &p,
            &[
                "execution",
                "list",
                "--app",
                "acme-corp:hangup",
                "-o",
                "json",
            ],
        ));
        let all = list["executions"].as_array().unwrap();
        all.len() == 2 && all.iter().all(|e| e["status"] == "succeeded")
    });
}

/// Tracks how many requests its process serves at once; logs its own execution id through
/// `Context::log`.
const OVERLAPPING: &str = r#"
use ignite::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

#[ignite::main]
async fn handler(req: Request, ctx: Context) -> Result<impl IntoResponse> {
    let sleep_ms: u64 = req.field("sleep_ms").unwrap_or(0);
    let now = IN_FLIGHT.fetch_add(1, Ordering::SeqCst) + 1;
    PEAK.fetch_max(now, Ordering::SeqCst);
    ctx.log(format!("mine: {}", ctx.execution_id()));
    tokio::time::sleep(std::time::Duration::from_millis(sleep_ms)).await;
    IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    static INSTANCE: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    let instance = INSTANCE.get_or_init(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    });
    Ok(serde_json::json!({ "instance": instance.to_string(), "peak": PEAK.load(Ordering::SeqCst) }))
}
"#;

/// Sends `body` to `app` from a thread of its own after `delay_ms`.
fn call_later(
    server: &Arc<Server>,
    app: &'static str,
    delay_ms: u64,
    body: &'static str,
) -> std::thread::JoinHandle<Answer> {
    let server = server.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(delay_ms));
        call(&server, app, body)
    })
}

#[test]
fn concurrency_lets_one_instance_serve_several_requests_at_once() {
    let dir = scratch("concurrency");
    let server = Arc::new(start_server(&dir));
    let p = project(&dir, "overlap", OVERLAPPING);
    deploy(&server, &p, "acme-corp:overlap", "./");
    let refused = fails(
        &server,
        &p,
        &["app", "scale", "acme-corp:overlap", "--concurrency", "0"],
    );
    assert!(
        refused.contains("concurrency must be between 1 and 1000"),
        "{refused}"
    );
    ok(
        &server,
        &p,
        &[
            "app",
            "scale",
            "acme-corp:overlap",
            "--concurrency",
            "4",
            "--max-instances",
            "1",
            "--timeout",
            "20",
        ],
    );
    let app = json(&ok(
        &server,
        &p,
        &["app", "get", "acme-corp:overlap", "-o", "json"],
    ));
    assert_eq!(app["scaling"]["concurrency"], 4, "{app}");

    // Six at once on one instance of concurrency 4: four run together, two wait for a share.
    let calls: Vec<_> = (0..6)
        .map(|_| call_later(&server, "overlap", 0, r#"{"sleep_ms": 800}"#))
        .collect();
    let mut instances = std::collections::BTreeSet::new();
    let mut peak = 0;
    let mut queued = 0;
    for c in calls {
        let (status, headers, body) = c.join().unwrap();
        assert_eq!(status, 200, "{body}");
        instances.insert(instance(&body));
        peak = peak.max(json(&body)["peak"].as_u64().unwrap());
        let e = execution(&server, &p, &headers);
        if e["metrics"]["queue_ms"].as_f64().unwrap() > 400.0 {
            queued += 1;
        }
        // Its own Context::log line, and no other request's.
        let logs: Vec<&str> = e["logs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        assert_eq!(
            logs,
            vec![format!("mine: {}", e["id"].as_str().unwrap())],
            "{e}"
        );
    }
    assert_eq!(instances.len(), 1, "one instance served all six");
    assert_eq!(peak, 4, "it served exactly `concurrency` requests at once");
    assert_eq!(
        queued, 2,
        "the two past its concurrency waited in the queue"
    );
}

#[test]
fn a_deadline_with_concurrency_spares_the_requests_sharing_the_instance() {
    let dir = scratch("concurrency-deadline");
    let server = Arc::new(start_server(&dir));
    let p = project(&dir, "sharing", OVERLAPPING);
    deploy(&server, &p, "acme-corp:sharing", "./");
    ok(
        &server,
        &p,
        &[
            "app",
            "scale",
            "acme-corp:sharing",
            "--concurrency",
            "4",
            "--max-instances",
            "1",
            "--timeout",
            "4",
        ],
    );
    // A request that passes its deadline (at 4 s), a neighbour on the same instance that
    // outlives it (2 s → 5 s, within its own deadline), and a later request that arrives while
    // the timed-out instance drains (4.4 s).
    let slow = call_later(&server, "sharing", 0, r#"{"sleep_ms": 30000}"#);
    let neighbour = call_later(&server, "sharing", 2000, r#"{"sleep_ms": 3000}"#);
    let later = call_later(&server, "sharing", 4400, "{}");

    let (status, headers, body) = slow.join().unwrap();
    assert_eq!(status, 504, "{body}");
    assert_eq!(execution(&server, &p, &headers)["status"], "timeout");
    let (status, _, neighbour) = neighbour.join().unwrap();
    assert_eq!(
        status, 200,
        "the neighbour finished on the draining instance: {neighbour}"
    );
    let (status, headers, later) = later.join().unwrap();
    assert_eq!(status, 200, "{later}");
    assert_ne!(
        instance(&neighbour),
        instance(&later),
        "the draining instance takes no new request"
    );
    let e = execution(&server, &p, &headers);
    assert!(e["metrics"]["cold_start_ms"].as_f64().unwrap() > 0.0, "{e}");
    assert!(e["metrics"]["queue_ms"].as_f64().unwrap() > 200.0, "{e}");
}

#[test]
fn a_request_whose_deadline_passes_in_the_queue_answers_504_and_the_pool_keeps_serving() {
    let dir = scratch("queue-deadline");
    let server = Arc::new(start_server(&dir));
    let p = project(&dir, "queued", &handler("v1"));
    deploy(&server, &p, "acme-corp:queued", "./");
    let scale = |timeout: &str| {
        ok(
            &server,
            &p,
            &[
                "app",
                "scale",
                "acme-corp:queued",
                "--max-instances",
                "1",
                "--timeout",
                timeout,
            ],
        )
    };
    scale("30");
    // The only instance is busy for 3 s; a request with a 1 s deadline waits for it in vain.
    let busy = call_later(&server, "queued", 0, r#"{"sleep_ms": 3000}"#);
    std::thread::sleep(Duration::from_millis(300));
    scale("1");
    let (status, headers, body) = call(&server, "queued", "{}");
    assert_eq!(status, 504, "{body}");
    assert!(
        body.contains("no instance") && body.contains("1s deadline"),
        "{body}"
    );
    let e = execution(&server, &p, &headers);
    assert_eq!(e["status"], "timeout", "{e}");
    assert!(e["metrics"]["queue_ms"].as_f64().unwrap() >= 900.0, "{e}");

    // The busy request finishes under its own (30 s) deadline, and the pool serves on.
    let (status, _, first) = busy.join().unwrap();
    assert_eq!(status, 200, "{first}");
    let (status, _, next) = call(&server, "queued", "{}");
    assert_eq!(status, 200, "{next}");
    assert_eq!(
        instance(&first),
        instance(&next),
        "the instance went back to the pool"
    );
}
