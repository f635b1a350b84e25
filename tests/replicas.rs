//! Two control replicas on one PostgreSQL database (always PostgreSQL: a throwaway cluster of
//! this test binary's own): what one changes the other serves at once (the caches agree by
//! `NOTIFY`), a build whose replica is killed is claimed again by the other and finished
//! exactly once, and what the API acknowledged survives a `kill -9` on either store.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::platform::*;
use support::postgres;

/// Starts a replica in `dir` on `url`; a replica that did not create the org gets the first
/// one's token (and its own API endpoint) in its CLI config.
fn replica(dir: &Path, url: &str, id: &str, first: Option<&Server>) -> Server {
    let server = start_server_with(dir, &["--database-url", url, "--replica-id", id]);
    if let Some(first) = first {
        std::fs::write(
            dir.join("config.toml"),
            format!(
                "token = \"{}\"\napi_endpoint = \"{}\"\n",
                token(first),
                server.api
            ),
        )
        .unwrap();
    }
    server
}

fn kill_9(server: &Server) {
    let status = Command::new("kill")
        .args(["-KILL", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Until the app answers `want` through `gateway` (a replica's cache may lag its
/// notification by a moment, never longer).
fn answers(gateway: &str, host: &str, body: &str, want: &str) {
    let mut last = String::new();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let (status, text) = http(gateway, host, body);
        if status == 200 && text.contains(want) {
            return;
        }
        last = format!("{status} {text}");
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{host} through {gateway} still answers {last:?}, not {want:?}, after 5 s");
}

#[test]
fn what_one_replica_changes_the_other_serves() {
    let cluster = postgres::cluster();
    let url = cluster.database("replicas_caches");
    let (da, db) = (scratch("replicas-a"), scratch("replicas-b"));
    let a = replica(&da, &url, "a", None);
    let b = replica(&db, &url, "b", Some(&a));
    let p = project(
        &da,
        "shared",
        r#"
use ignite::prelude::*;

#[ignite::main]
async fn handler(req: Request, ctx: Context) -> Result<impl IntoResponse> {
    if let Ok(ms) = req.field::<u64>("sleep_ms") {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    Ok(format!("greeting {}", ctx.env().get("GREETING").map_or("-", |s| s.as_str())))
}
"#,
    );
    let id = "acme-corp:shared";
    let host = "shared-acme-corp.ignite.localhost";
    ok(&a, &p, &["app", "create", "shared", "--runtime", "rust"]);
    ok(&a, &p, &["app", "set-env", id, "GREETING=one"]);
    save_native(&a, &p, id, "./");
    ok(&a, &p, &["draft", "compile", id]);
    ok(&a, &p, &["draft", "compile-logs", id]);
    ok(&a, &p, &["draft", "publish", id]);
    // The artifact is a blob of A's data directory; B is given a copy (the platform registry
    // will serve it instead).
    copy_blobs(&da, &db);
    // B has the app from the store; it caches its route now.
    answers(&b.gateway, host, "{}", "greeting one");
    // Version 2 published through A: B's next requests go to it, not to what B cached.
    ok(&a, &p, &["app", "set-env", id, "GREETING=two"]);
    ok(&a, &p, &["draft", "publish", id]);
    answers(&b.gateway, host, "{}", "greeting two");
    // A rollback through A, the same.
    ok(&a, &p, &["version", "rollback", id, "1"]);
    answers(&b.gateway, host, "{}", "greeting one");
    // A's new deadline holds on B (whose cache had the old one), and so does the next.
    ok(&a, &p, &["app", "scale", id, "--timeout", "1"]);
    let start = std::time::Instant::now();
    loop {
        let (status, body) = http(&b.gateway, host, r#"{"sleep_ms": 2500}"#);
        if status == 504 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "B still lets a 2.5 s request finish after A set a 1 s deadline: {status} {body}"
        );
    }
    ok(&a, &p, &["app", "scale", id, "--timeout", "30"]);
    answers(&b.gateway, host, r#"{"sleep_ms": 1500}"#, "greeting one");
    // A deleted app is gone from B too.
    ok(&a, &p, &["app", "delete", id]);
    let start = std::time::Instant::now();
    loop {
        let (status, _) = http(&b.gateway, host, "{}");
        if status == 404 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "B still serves a deleted app"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Copies every blob of `from`'s data directory into `to`'s (the platform registry will make
/// this unnecessary: a replica will fetch what it does not have).
fn copy_blobs(from: &Path, to: &Path) {
    let (from, to) = (from.join("data/blobs/sha256"), to.join("data/blobs/sha256"));
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(&from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if !target.exists() {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn a_build_whose_replica_is_killed_is_finished_once_by_another() {
    let cluster = postgres::cluster();
    let url = cluster.database("replicas_builds");
    let (da, db) = (scratch("builds-a"), scratch("builds-b"));
    let a = replica(&da, &url, "builds-a", None);
    let b = replica(&db, &url, "builds-b", Some(&a));
    let p = project(
        &da,
        "slowjob",
        "use ignite::prelude::*;\n#[ignite::main]\nasync fn handler(_r: Request, _c: Context) -> Result<impl IntoResponse> { Ok(\"built once\") }\n",
    );
    // A build that takes a while: long enough to kill its replica in the middle.
    std::fs::write(
        p.join("build.rs"),
        "fn main() { eprintln!(\"slow build script\"); std::thread::sleep(std::time::Duration::from_secs(6)); }\n",
    )
    .unwrap();
    let id = "acme-corp:slowjob";
    ok(&a, &p, &["app", "create", "slowjob", "--runtime", "rust"]);
    save_native(&a, &p, id, "./");
    // The source blob is in A's data directory; B is given a copy (the platform registry will
    // serve it instead).
    copy_blobs(&da, &db);
    ok(&a, &p, &["draft", "compile", id]);
    let builds = |sql: &str| cluster.psql("replicas_builds", sql);
    wait_until(Duration::from_secs(30), "A to claim the build", || {
        builds("SELECT claimed_by FROM builds WHERE status = 'running'").trim() == "builds-a"
    });
    // The build runs on A (its log reaches the store); then A dies without a word.
    wait_until(
        Duration::from_secs(60),
        "A's build log in the store",
        || {
            !builds("SELECT log FROM builds WHERE status = 'running'")
                .trim()
                .is_empty()
        },
    );
    kill_9(&a);
    // B claims it once A's lease runs out, builds it again and finishes it; its log, followed
    // through B, says so.
    let followed = String::from_utf8_lossy(&dodil_follow(&b, &p, id).stdout).to_string();
    let row = builds("SELECT status, claimed_by, attempt FROM builds");
    assert_eq!(
        row.trim(),
        "succeeded|builds-b|2",
        "{}\n{followed}",
        builds("SELECT * FROM builds")
    );
    assert!(
        followed.contains("attempt 2") && followed.contains("building again on replica builds-b"),
        "{followed}"
    );
    assert_eq!(followed.matches("attempt 2").count(), 1, "{followed}");
    // The draft is compiled (by B), and publishes and serves through B.
    ok(&b, &p, &["draft", "publish", id]);
    let (status, body) = http(&b.gateway, "slowjob-acme-corp.ignite.localhost", "{}");
    assert_eq!((status, body.as_str()), (200, "built once"));
    // A, started again, finds nothing of its own to redo: the build stays finished, once.
    drop(a);
    let a = start_server_with(&da, &["--database-url", &url, "--replica-id", "builds-a"]);
    std::thread::sleep(Duration::from_secs(2));
    let row = builds("SELECT status, claimed_by, attempt FROM builds");
    assert_eq!(row.trim(), "succeeded|builds-b|2", "{row}");
    drop(a);
}

/// `draft compile-logs` (which follows the build until it ends) through `server`.
fn dodil_follow(server: &Server, cwd: &Path, id: &str) -> std::process::Output {
    let out = dodil(server, cwd, &["draft", "compile-logs", id]);
    assert!(
        out.status.success(),
        "compile-logs failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// What the API acknowledged is in the store after a `kill -9` of the server, on SQLite and on
/// PostgreSQL alike: an app, its settings, a saved draft, a publish, a token.
#[test]
fn acknowledged_writes_survive_a_kill_9_on_either_store() {
    let cluster = postgres::cluster();
    let pg = cluster.database("durability");
    for name in ["sqlite", "postgres"] {
        let dir = scratch(&format!("durability-{name}"));
        let url = match name {
            "sqlite" => format!("sqlite://{}", dir.join("ignite.db").display()),
            _ => pg.clone(),
        };
        let args = ["--database-url", url.as_str()];
        let server = start_server_with(&dir, &args);
        let p = project(
            &dir,
            "durable",
            "use ignite::prelude::*;\n#[ignite::main]\nasync fn handler(_r: Request, _c: Context) -> Result<impl IntoResponse> { Ok(\"still here\") }\n",
        );
        let id = "acme-corp:durable";
        deploy(&server, &p, id, "./");
        ok(&server, &p, &["app", "set-env", id, "KEPT=yes"]);
        ok(&server, &p, &["app", "scale", id, "--timeout", "7"]);
        let created = json(&ok(&server, &p, &["token", "create", "ci", "-o", "json"]));
        let secret = created["token"].as_str().unwrap().to_string();
        kill_9(&server);
        let admin = token(&server);
        drop(server);
        let server = start_server_with(&dir, &args);
        // The CLI config names the first start's port.
        std::fs::write(
            dir.join("config.toml"),
            format!("token = \"{admin}\"\napi_endpoint = \"{}\"\n", server.api),
        )
        .unwrap();
        let app = json(&ok(&server, &p, &["app", "get", id, "-o", "json"]));
        assert_eq!(app["active_version"], 1, "{name}: {app}");
        assert_eq!(app["env"]["KEPT"], "yes", "{name}: {app}");
        assert_eq!(app["scaling"]["timeout_s"], 7, "{name}: {app}");
        let listed = Command::new(env!("CARGO_BIN_EXE_dodil"))
            .args(["ignite", "app", "list", "--api-endpoint", &server.api])
            .env("DODIL_CONFIG", dir.join("none.toml"))
            .env("DODIL_TOKEN", &secret)
            .output()
            .unwrap();
        assert!(
            listed.status.success(),
            "{name}: the token made before kill -9 is gone"
        );
        let (status, body) = http(&server.gateway, "durable-acme-corp.ignite.localhost", "{}");
        assert_eq!((status, body.as_str()), (200, "still here"), "{name}");
    }
}

/// Execution records on PostgreSQL, the way the recorder writes them: a record just begun (no
/// measurements) and then the same record finished (with them), one-row batches on the same
/// connection, then mixed batches. A statement cached from the first shape once refused the
/// second ("incorrect binary data format in bind parameter 10": sqlx typed the missing `f64`
/// as `real`).
#[test]
fn records_with_and_without_measurements_are_written_in_any_order() {
    use ignite_server::store::{self, Execution};
    let url = postgres::cluster().database("replicas_records");
    let dir = scratch("replicas-records");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let db = store::open(&dir, Some(&url)).await.unwrap();
        store::create_org(&db, "acme-corp").await.unwrap();
        let finished = |mut e: Execution, i: i64| {
            e.status = "succeeded".into();
            e.finished_at = Some(e.started_at + 1);
            e.cold_start_ms = Some(0.5 + i as f64);
            e.init_ms = Some(0.25);
            e.queue_ms = Some(0.01);
            e.fetch_ms = Some(0.02);
            e.spawn_ms = Some(0.03);
            e.duration_ms = Some(1.5);
            e.billed_duration_ms = Some(2);
            e.response_status = Some(200);
            e
        };
        let mut ids = Vec::new();
        for i in 0..4 {
            let id = format!("one-{i}");
            let begun = Execution::begun(id.clone(), "acme-corp", "tiny", 1, "http");
            store::upsert_executions(&db, "r1", std::slice::from_ref(&begun))
                .await
                .unwrap_or_else(|e| panic!("writing begun record {id}: {e}"));
            store::upsert_executions(&db, "r1", &[finished(begun, i)])
                .await
                .unwrap_or_else(|e| panic!("writing finished record {id}: {e}"));
            ids.push((id, i));
        }
        // Two rows: the first begun, the second finished, then the other way round.
        for order in 0..2i64 {
            let a = Execution::begun(format!("two-{order}-a"), "acme-corp", "tiny", 1, "http");
            let b = Execution::begun(format!("two-{order}-b"), "acme-corp", "tiny", 1, "http");
            let batch = if order == 0 {
                vec![a.clone(), finished(b.clone(), 9)]
            } else {
                vec![finished(a.clone(), 9), b.clone()]
            };
            store::upsert_executions(&db, "r1", &batch)
                .await
                .unwrap_or_else(|e| panic!("writing a mixed batch: {e}"));
            store::upsert_executions(&db, "r1", &[finished(a, 9), finished(b, 9)])
                .await
                .unwrap_or_else(|e| panic!("finishing a mixed batch: {e}"));
        }
        for (id, i) in ids {
            let e = store::get_execution(&db, "acme-corp", &id)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{id} was not written"));
            assert_eq!(e.status, "succeeded", "{id}");
            assert_eq!(e.cold_start_ms, Some(0.5 + i as f64), "{id}");
            assert_eq!(e.init_ms, Some(0.25), "{id}");
            assert_eq!(e.billed_duration_ms, Some(2), "{id}");
        }
        for id in ["two-0-a", "two-0-b", "two-1-a", "two-1-b"] {
            let e = store::get_execution(&db, "acme-corp", id)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{id} was not written"));
            assert_eq!(
                (e.status.as_str(), e.init_ms),
                ("succeeded", Some(0.25)),
                "{id}"
            );
        }
    });
}
