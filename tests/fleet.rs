//! The fleet on one machine: nodes' "hosts" are network namespaces on a bridge, each running a
//! real `dodil ignite server --role node`; the control replicas (real `--role control`
//! processes) listen on the test process's own end of the bridge, and the tests drive them with
//! the real CLI and plain HTTP.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::fleet::{Fleet, TOKEN};
use support::platform::*;

/// Answers which instance it is (a token drawn at its start) after sleeping `sleep_ms`.
const SLEEPY: &str = r#"
use ignite::prelude::*;

#[ignite::main]
async fn handler(req: Request, _ctx: Context) -> Result<impl IntoResponse> {
    let sleep_ms: u64 = req.field("sleep_ms").unwrap_or(0);
    if sleep_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(sleep_ms)).await;
    }
    static INSTANCE: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    let instance = INSTANCE.get_or_init(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    });
    Ok(serde_json::json!({ "instance": instance.to_string() }))
}
"#;

fn host(app: &str) -> String {
    format!("{app}-acme-corp.ignite.localhost")
}

fn call(server: &Server, app: &str, body: &str) -> (u16, Vec<(String, String)>, String) {
    http_full(&server.gateway, &host(app), "POST", "/", body)
}

fn deploy_sleepy(server: &Server, cwd: &Path, app: &str) {
    let code = project(cwd, app, SLEEPY);
    deploy(
        server,
        cwd,
        &format!("acme-corp:{app}"),
        code.to_str().unwrap(),
    );
}

/// The seed's recipe through the control plane, its instance on a node, and an app's requests
/// gathering on one node (warm affinity).
#[test]
fn the_recipe_runs_through_a_control_plane_on_nodes_and_requests_stay_on_the_warm_node() {
    let fleet = Fleet::start("fleet-recipe", 1, 3, &[]);
    let control = &fleet.controls[0];
    let cwd = fleet.dir.join("tiny");
    copy_tiny(&cwd);
    ok(
        control,
        &cwd,
        &[
            "app",
            "create",
            "tiny",
            "--runtime",
            "rust",
            "--description",
            "Tiny compiled Rust handler",
        ],
    );
    save_native(control, &cwd, "acme-corp:tiny", "./");
    ok(control, &cwd, &["draft", "compile", "acme-corp:tiny"]);
    ok(control, &cwd, &["draft", "compile-logs", "acme-corp:tiny"]);
    ok(control, &cwd, &["draft", "publish", "acme-corp:tiny"]);
    let out = ok(
        control,
        &cwd,
        &["invoke", "acme-corp:tiny", "--payload", r#"{"name":"Ada"}"#],
    );
    assert!(out.contains("Hello from Rust!"), "{out}");
    let placed = fleet.instances("tiny");
    wait_until(
        Duration::from_secs(5),
        "the node to report its instance",
        || fleet.instances("tiny").iter().map(|(_, n)| n).sum::<u64>() == 1,
    );
    // Sequential requests all land where the warm instance is.
    for _ in 0..30 {
        let (status, _, body) = call(control, "tiny", r#"{"name":"Grace"}"#);
        assert_eq!(status, 200, "{body}");
    }
    let after = fleet.instances("tiny");
    let holding: Vec<_> = after.iter().filter(|(_, n)| *n > 0).collect();
    assert_eq!(
        holding.len(),
        1,
        "one node holds the app: {after:?} (before: {placed:?})"
    );
    assert_eq!(
        holding[0].1, 1,
        "one warm instance served them all: {after:?}"
    );
}

/// `kill -9` of the node serving an app mid-traffic: the requests it held answer 502
/// `node_lost`, each with its record; the rest are served, by another node within 2 s.
#[test]
fn a_node_killed_mid_traffic_costs_only_its_requests_in_flight_and_every_record_is_exact() {
    let mut fleet = Fleet::start("fleet-kill", 1, 3, &[]);
    let cwd = fleet.dir.join("work");
    std::fs::create_dir_all(&cwd).unwrap();
    deploy_sleepy(&fleet.controls[0], &cwd, "sleepy");
    let (status, _, body) = call(&fleet.controls[0], "sleepy", "{}");
    assert_eq!(status, 200, "{body}");
    let victim = fleet.serving("sleepy");

    let gateway = fleet.controls[0].gateway.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let (gateway, stop, answers) = (gateway.clone(), stop.clone(), answers.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let answer = http_full(
                        &gateway,
                        &host("sleepy"),
                        "POST",
                        "/",
                        r#"{"sleep_ms":300}"#,
                    );
                    answers.lock().unwrap().push((sent, Instant::now(), answer));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let killed = Instant::now();
    fleet.kill_node(victim);
    std::thread::sleep(Duration::from_millis(3500));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let answers = answers.lock().unwrap();
    let mut lost = 0;
    let mut served_after = None;
    for (sent, done, (status, headers, body)) in answers.iter() {
        match status {
            200 => {
                if *sent > killed && served_after.is_none() {
                    served_after = Some(*done - killed);
                }
            }
            502 => {
                assert!(body.contains("node_lost"), "{body}");
                assert!(
                    *sent < killed + Duration::from_secs(2),
                    "lost long after the kill"
                );
                lost += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
        // Every answer has its record, with the status it was answered with.
        let id = header(headers, "x-ignite-execution-id").expect("an execution id");
        let record = json(&ok(
            &fleet.controls[0],
            &cwd,
            &["execution", "get", id, "-o", "json"],
        ));
        let want = if *status == 200 {
            "succeeded"
        } else {
            "node_lost"
        };
        assert_eq!(record["status"], want, "{record}");
    }
    assert!(
        lost >= 1,
        "the requests in flight on the killed node answered node_lost"
    );
    let served_after = served_after.expect("requests were served after the kill");
    assert!(
        served_after < Duration::from_secs(2) + Duration::from_millis(600),
        "served elsewhere {served_after:?} after the kill"
    );
    // Exactly one record per answer.
    let list = json(&ok(
        &fleet.controls[0],
        &cwd,
        &[
            "execution",
            "list",
            "--app",
            "acme-corp:sleepy",
            "--limit",
            "1000",
            "-o",
            "json",
        ],
    ));
    let records = list["executions"].as_array().map_or(0, Vec::len);
    assert_eq!(records, answers.len() + 1, "one record per request");
}

/// A node cut off the bridge mid-traffic and back: its requests in flight answer `node_lost`
/// (each recorded once), traffic moves to the others within 2 s, and when it comes back what
/// it ran is drained (stale) and no execution is recorded twice.
#[test]
fn a_partitioned_node_is_routed_around_and_drained_when_it_heals() {
    let fleet = Fleet::start("fleet-partition", 1, 3, &[]);
    let cwd = fleet.dir.join("work");
    std::fs::create_dir_all(&cwd).unwrap();
    deploy_sleepy(&fleet.controls[0], &cwd, "cut");
    let (status, _, body) = call(&fleet.controls[0], "cut", "{}");
    assert_eq!(status, 200, "{body}");
    let victim = fleet.serving("cut");
    let cut_off = &fleet.net.hosts[victim];

    // Two requests held by the node when it is cut off.
    let gateway = fleet.controls[0].gateway.clone();
    let held: Vec<_> = (0..2)
        .map(|_| {
            let gateway = gateway.clone();
            std::thread::spawn(move || {
                http_full(&gateway, &host("cut"), "POST", "/", r#"{"sleep_ms":3000}"#)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    cut_off.partition();
    let cut = Instant::now();
    for h in held {
        let (status, headers, body) = h.join().unwrap();
        assert_eq!(status, 502, "{body}");
        assert!(body.contains("node_lost"), "{body}");
        let id = header(&headers, "x-ignite-execution-id")
            .unwrap()
            .to_string();
        let record = json(&ok(
            &fleet.controls[0],
            &cwd,
            &["execution", "get", &id, "-o", "json"],
        ));
        assert_eq!(record["status"], "node_lost", "{record}");
    }
    assert!(
        cut.elapsed() < Duration::from_secs(2),
        "node_lost after {:?}",
        cut.elapsed()
    );
    // New requests go to another node.
    let (status, _, body) = call(&fleet.controls[0], "cut", "{}");
    assert_eq!(status, 200, "{body}");
    assert!(
        cut.elapsed() < Duration::from_secs(3),
        "served after {:?}",
        cut.elapsed()
    );
    wait_until(
        Duration::from_secs(5),
        "the fleet to count the node lost",
        || fleet.view(0).len() == 2,
    );

    // Back: it rejoins, and what it still ran for the app is drained.
    cut_off.heal();
    wait_until(Duration::from_secs(10), "the node to rejoin", || {
        fleet.view(0).len() == 3
    });
    wait_until(
        Duration::from_secs(10),
        "its stale instances to be drained",
        || {
            fleet
                .instances("cut")
                .iter()
                .any(|(id, n)| *id == cut_off.name && *n == 0)
        },
    );
    for _ in 0..10 {
        let (status, _, body) = call(&fleet.controls[0], "cut", "{}");
        assert_eq!(status, 200, "{body}");
    }
    // 1 + 2 lost + 1 + 10, each recorded once.
    let list = json(&ok(
        &fleet.controls[0],
        &cwd,
        &[
            "execution",
            "list",
            "--app",
            "acme-corp:cut",
            "--limit",
            "1000",
            "-o",
            "json",
        ],
    ));
    let ids: Vec<&str> = list["executions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(ids.len(), 14, "{list}");
    assert_eq!(unique.len(), ids.len(), "no record twice");
}

/// The fleet's endpoints take only the node token: an org token, no token or a wrong one is
/// refused, on the control plane and on a node alike, and nothing runs.
#[test]
fn the_fleets_endpoints_refuse_anything_but_the_node_token() {
    let fleet = Fleet::start("fleet-hostile", 1, 1, &[]);
    let control = &fleet.controls[0];
    let org_token = token(control);
    let beat = r#"{"node_id":"intruder","address":"10.0.0.1:7070","incarnation":"x","capacity":1,"running":0,"pools":[]}"#;
    for auth in [
        None,
        Some(org_token.as_str()),
        Some("fleet-test-node-token-WRONG"),
    ] {
        let mut request = ureq::post(&format!("http://{}/v1/fleet/heartbeat", control.api));
        if let Some(t) = auth {
            request = request.header("authorization", &format!("Bearer {t}"));
        }
        let answer = request
            .config()
            .http_status_as_error(false)
            .build()
            .content_type("application/json")
            .send(beat)
            .unwrap();
        assert_eq!(answer.status(), 401, "heartbeat with {auth:?}");
        let mut request = ureq::get(&format!("http://{}/v1/fleet/nodes", control.api));
        if let Some(t) = auth {
            request = request.header("authorization", &format!("Bearer {t}"));
        }
        let answer = request
            .config()
            .http_status_as_error(false)
            .build()
            .call()
            .unwrap();
        assert_eq!(answer.status(), 401, "nodes with {auth:?}");
    }
    assert_eq!(fleet.view(0).len(), 1, "no intruder registered");
    // A malformed heartbeat with the token: refused, said why.
    let answer = ureq::post(&format!("http://{}/v1/fleet/heartbeat", control.api))
        .header("authorization", &format!("Bearer {TOKEN}"))
        .config()
        .http_status_as_error(false)
        .build()
        .content_type("application/json")
        .send(r#"{"node_id":""}"#)
        .unwrap();
    assert_eq!(answer.status(), 400);

    // The node's listener takes dispatches only with the token, over HTTP/1.1 (where probes
    // come) as over HTTP/2: without it, nothing runs.
    let node = &fleet.net.hosts[0];
    let (status, _) = send_raw(
        &format!("{}:7070", node.ip),
        "POST /v1/node/invoke HTTP/1.1\r\nHost: n\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 401);
    for auth in [
        None,
        Some(org_token.as_str()),
        Some("fleet-test-node-token-WRONG"),
    ] {
        let (status, body) = h2_post(
            &format!("{}:7070", node.ip),
            "/v1/node/invoke",
            auth,
            b"junk",
        );
        assert_eq!(status, 401, "dispatch with {auth:?}: {body}");
    }
    // With the token, a dispatch that is not one is refused as such.
    let (status, body) = h2_post(
        &format!("{}:7070", node.ip),
        "/v1/node/invoke",
        Some(TOKEN),
        b"\xff\xff",
    );
    assert_eq!(status, 400, "{body}");
    // A role without what it needs does not start, and says what to add.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dodil"))
        .args(["ignite", "server", "--role", "node", "--data-dir"])
        .arg(fleet.dir.join("bad"))
        .env_remove("IGNITE_NODE_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--node-token"), "{stderr}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dodil"))
        .args(["ignite", "server", "--role", "primary", "--data-dir"])
        .arg(fleet.dir.join("bad"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`control`") && stderr.contains("`node`"),
        "{stderr}"
    );
}

/// One HTTP/2 (prior knowledge) POST: `(status, body)`.
fn h2_post(addr: &str, path: &str, token: Option<&str>, body: &'static [u8]) -> (u16, String) {
    use http_body_util::{BodyExt, Full};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        let mut request = hyper::Request::post(format!("http://{addr}{path}"));
        if let Some(t) = token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        let answer = sender
            .send_request(
                request
                    .body(Full::new(bytes::Bytes::from_static(body)))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = answer.status().as_u16();
        let body = answer.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).to_string())
    })
}

/// Reserved capacity is spread over the nodes, and placed again on the others when a node is
/// lost; `max_instances` holds across the fleet.
#[test]
fn reserved_capacity_is_spread_over_nodes_and_replaced_when_one_is_lost() {
    let mut fleet = Fleet::start("fleet-reserved", 1, 3, &[]);
    let control = &fleet.controls[0];
    let cwd = fleet.dir.join("work");
    std::fs::create_dir_all(&cwd).unwrap();
    deploy_sleepy(control, &cwd, "kept");
    ok(
        control,
        &cwd,
        &[
            "app",
            "scale",
            "acme-corp:kept",
            "--reserved-capacity",
            "3",
            "--max-instances",
            "4",
        ],
    );
    wait_until(
        Duration::from_secs(15),
        "one reserved instance on each node",
        || {
            let placed = fleet.instances("kept");
            placed.len() == 3 && placed.iter().all(|(_, n)| *n == 1)
        },
    );
    // Six requests at once, each holding its instance: the fleet starts one more (4 in all)
    // and queues the rest, never past max_instances.
    let gateway = fleet.controls[0].gateway.clone();
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let gateway = gateway.clone();
            std::thread::spawn(move || {
                http_full(&gateway, &host("kept"), "POST", "/", r#"{"sleep_ms":800}"#).0
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let total: u64 = fleet.instances("kept").iter().map(|(_, n)| n).sum();
    assert!(total <= 4, "max_instances 4 across the fleet: {total}");
    for c in calls {
        assert_eq!(c.join().unwrap(), 200);
    }
    fleet.kill_node(0);
    wait_until(
        Duration::from_secs(15),
        "the reserve placed on the other nodes",
        || {
            let placed = fleet.instances("kept");
            placed.len() == 2 && placed.iter().map(|(_, n)| n).sum::<u64>() >= 3
        },
    );
}

/// A build script that takes a while: the compile is still running when its replica is killed.
const SLOW_BUILD_RS: &str =
    "fn main() { std::thread::sleep(std::time::Duration::from_secs(6)); }\n";

/// Two control replicas on one PostgreSQL, three nodes: the recipe through replica A, its
/// requests through replica B on nodes that pull the artifact from the registry; A killed
/// (`kill -9`) during a build: the build finishes once, on B, and B keeps serving.
#[test]
fn two_replicas_share_the_fleet_and_a_build_outlives_its_replica() {
    let mut fleet = Fleet::start("fleet-replicas", 2, 3, &[]);
    let (a, b) = (&fleet.controls[0], &fleet.controls[1]);
    let cwd = fleet.dir.join("tiny");
    copy_tiny(&cwd);
    // B's CLI config: A's admin token, B's address.
    let token = token(a);
    std::fs::write(
        b.dir.join("config.toml"),
        format!("token = \"{token}\"\napi_endpoint = \"{}\"\n", b.api),
    )
    .unwrap();
    ok(a, &cwd, &["app", "create", "tiny", "--runtime", "rust"]);
    save_native(a, &cwd, "acme-corp:tiny", "./");
    ok(a, &cwd, &["draft", "compile", "acme-corp:tiny"]);
    ok(a, &cwd, &["draft", "compile-logs", "acme-corp:tiny"]);
    ok(a, &cwd, &["draft", "publish", "acme-corp:tiny"]);
    wait_until(
        Duration::from_secs(10),
        "B to serve what A published",
        || {
            dodil(b, &cwd, &["invoke", "acme-corp:tiny", "--payload", "{}"])
                .status
                .success()
        },
    );
    let out = ok(b, &cwd, &["invoke", "acme-corp:tiny", "--payload", "{}"]);
    assert!(out.contains("Hello from Rust!"), "{out}");
    // The node that ran it pulled the artifact from the registry: it built nothing.
    let digest = artifact_digest(b, &cwd, "acme-corp:tiny");
    let holder = &fleet.net.hosts[fleet.serving("tiny")].name;
    let pulled = fleet
        .dir
        .join(holder)
        .join("data/blobs/sha256")
        .join(&digest);
    assert!(pulled.exists(), "{} holds the artifact", pulled.display());

    // A build accepted by A, A killed while it runs: B claims it again and finishes it.
    let slow = project(&cwd, "slow", SLEEPY);
    std::fs::write(slow.join("build.rs"), SLOW_BUILD_RS).unwrap();
    ok(a, &cwd, &["app", "create", "slow", "--runtime", "rust"]);
    save_native(a, &cwd, "acme-corp:slow", slow.to_str().unwrap());
    ok(a, &cwd, &["draft", "compile", "acme-corp:slow"]);
    std::thread::sleep(Duration::from_millis(2500));
    let a = fleet.controls.remove(0);
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &a.pid().to_string()])
        .status();
    drop(a);
    let b = &fleet.controls[0];
    // B serves on while A is gone.
    let (status, _, body) = call(b, "tiny", "{}");
    assert_eq!(status, 200, "{body}");
    let rows = || {
        support::postgres::cluster().psql(
            "fleet_fleet_replicas",
            "SELECT status, claimed_by, attempt FROM builds WHERE app = 'slow'",
        )
    };
    wait_until(Duration::from_secs(120), "B to finish the build", || {
        rows().starts_with("succeeded")
    });
    let rows = rows();
    assert_eq!(
        rows.trim(),
        "succeeded|c1|2",
        "one build, finished once, by B"
    );
    ok(b, &cwd, &["draft", "publish", "acme-corp:slow"]);
    let (status, _, body) = call(b, "slow", "{}");
    assert_eq!(status, 200, "{body}");
}
