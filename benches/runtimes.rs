//! `cargo bench --bench runtimes`: every runtime's seed handler through the public gateway on
//! loopback, in one run on one machine, so the rows compare:
//!
//! - warm request, one client (p50/p99), each runtime beside the Rust handler;
//! - cold request with the app scaled to zero before each (client-observed p50/p99), and the
//!   recorded phases — for Python, `spawn_ms` is the fork of the running template;
//! - Python's first start on a node (its template not running: the interpreter starts and
//!   imports the app, then forks), forced by a template budget that holds none;
//! - the peers a Python cold start replaces: a fresh interpreter with `json` and `asyncio`
//!   imported, and the SDK's own start (`ignite_boot.py check`);
//! - memory of idle Python instances (forks share the template's pages) and of a template.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{cold, env_usize, fmt, latencies, pct, phases, pss_kib};
use support::platform::{Server, copy_tiny, deploy, ok, scratch, start_server, start_server_with};

const PYTHON_SEED: &str = include_str!("../examples/tiny-py/main.py");
const GO_SEED: &str = include_str!("../examples/tiny-go/main.go");
const GO_MOD: &str = include_str!("../examples/tiny-go/go.mod");

/// The recorded phases shown for Python.
const PHASES: &[&str] = &[
    "cold_start_ms",
    "fetch_ms",
    "template_ms",
    "spawn_ms",
    "init_ms",
];

fn host(app: &str) -> String {
    format!("{app}-acme-corp.ignite.localhost")
}

fn scale(server: &Server, cwd: &Path, app: &str, flags: &[&str]) {
    let id = format!("acme-corp:{app}");
    ok(
        server,
        cwd,
        &[&["app", "scale", id.as_str()], flags].concat(),
    );
}

fn deploy_python(server: &Server, work: &Path, app: &str) -> std::path::PathBuf {
    let p = work.join(app);
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join("main.py"), PYTHON_SEED).unwrap();
    let id = format!("acme-corp:{app}");
    ok(server, &p, &["app", "create", app, "--runtime", "python"]);
    ok(
        server,
        &p,
        &["draft", "save", &id, "--code", "./", "--runtime", "python"],
    );
    ok(server, &p, &["draft", "publish", &id]);
    p
}

fn deploy_go(server: &Server, work: &Path, app: &str) -> std::path::PathBuf {
    let p = work.join(app);
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join("main.go"), GO_SEED).unwrap();
    std::fs::write(p.join("go.mod"), GO_MOD).unwrap();
    let id = format!("acme-corp:{app}");
    ok(server, &p, &["app", "create", app, "--runtime", "go"]);
    ok(
        server,
        &p,
        &["draft", "save", &id, "--code", "./", "--runtime", "go"],
    );
    ok(server, &p, &["draft", "publish", &id]);
    p
}

/// Wall time of `n` runs of a command, sorted.
fn runs(n: usize, mut command: impl FnMut() -> std::process::Command) -> Vec<Duration> {
    let mut v: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            let status = command().status().expect("run the peer");
            assert!(status.success());
            t.elapsed()
        })
        .collect();
    v.sort();
    v
}

/// Children of `parent` (by /proc/<pid>/stat).
fn children(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit(')')
                        .next()?
                        .split_whitespace()
                        .nth(1)?
                        .parse::<u32>()
                        .ok()
                })
                == Some(parent)
        })
        .collect()
}

fn is_template(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("ignite_boot.py\0template"))
}

fn main() {
    let work = scratch("bench-runtimes");
    let server = start_server(&work);
    let gateway: SocketAddr = server.gateway.parse().expect("the gateway address");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rust = work.join("tiny");
    copy_tiny(&rust);
    eprintln!("deploying examples/tiny and examples/tiny-py …");
    deploy(&server, &rust, "acme-corp:tiny", "./");
    let py = deploy_python(&server, &work, "tiny-py");
    let go = deploy_go(&server, &work, "tiny-go");
    let artifact_size = |cwd: &Path, app: &str| {
        let v: serde_json::Value = serde_json::from_str(&ok(
            &server,
            cwd,
            &["app", "get", &format!("acme-corp:{app}"), "-o", "json"],
        ))
        .unwrap();
        v["artifact"]["size"].as_u64().unwrap_or(0)
    };
    let sizes = [
        ("rust", artifact_size(&rust, "tiny")),
        ("go", artifact_size(&go, "tiny-go")),
        ("python (tree, tar)", artifact_size(&py, "tiny-py")),
    ];

    let warm_n = env_usize("IGNITE_BENCH_WARM", 3000);
    let cold_n = env_usize("IGNITE_BENCH_COLD", 200);
    let mut rows: Vec<(String, Duration, Duration)> = Vec::new();
    let warm_rust = rt.block_on(latencies(gateway, &host("tiny"), 300, warm_n));
    let warm_py = rt.block_on(latencies(gateway, &host("tiny-py"), 300, warm_n));
    let warm_go = rt.block_on(latencies(gateway, &host("tiny-go"), 300, warm_n));
    rows.push((
        "rust: warm, 1 client".into(),
        pct(&warm_rust, 0.5),
        pct(&warm_rust, 0.99),
    ));
    rows.push((
        "python: warm, 1 client".into(),
        pct(&warm_py, 0.5),
        pct(&warm_py, 0.99),
    ));
    rows.push((
        "go: warm, 1 client".into(),
        pct(&warm_go, 0.5),
        pct(&warm_go, 0.99),
    ));
    let cold_rust = cold(&rt, &server, &rust, &["tiny"], cold_n);
    let cold_py = cold(&rt, &server, &py, &["tiny-py"], cold_n);
    let cold_go = cold(&rt, &server, &go, &["tiny-go"], cold_n);
    rows.push((
        "rust: cold (scaled to zero)".into(),
        pct(&cold_rust, 0.5),
        pct(&cold_rust, 0.99),
    ));
    rows.push((
        "go: cold (scaled to zero)".into(),
        pct(&cold_go, 0.5),
        pct(&cold_go, 0.99),
    ));
    rows.push((
        "python: cold, template running (fork)".into(),
        pct(&cold_py, 0.5),
        pct(&cold_py, 0.99),
    ));
    let py_phases = phases(&server, &py, "tiny-py", cold_n, PHASES);

    // Idle instances' memory: reserved ones, forks of one template.
    let hold = env_usize("IGNITE_BENCH_HOLD", 20);
    scale(
        &server,
        &py,
        "tiny-py",
        &[
            "--max-instances",
            &hold.to_string(),
            "--reserved-capacity",
            &hold.to_string(),
            "--idle-timeout",
            "600",
        ],
    );
    let started = Instant::now();
    let (template, instances) = loop {
        let templates: Vec<u32> = children(server.pid())
            .into_iter()
            .filter(|p| is_template(*p))
            .collect();
        let found = templates
            .iter()
            .map(|t| (*t, children(*t)))
            .max_by_key(|(_, c)| c.len());
        if let Some((t, c)) = &found
            && (c.len() >= hold || started.elapsed() > Duration::from_secs(60))
        {
            break (*t, c.clone());
        }
        if started.elapsed() > Duration::from_secs(60) {
            break (0, Vec::new());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    std::thread::sleep(Duration::from_millis(500));
    let mem: Vec<(u64, u64)> = instances.iter().filter_map(|p| pss_kib(*p)).collect();
    let avg =
        |f: fn(&(u64, u64)) -> u64| mem.iter().map(f).sum::<u64>() as f64 / mem.len().max(1) as f64;
    let (inst_rss, inst_pss) = (avg(|m| m.0), avg(|m| m.1));
    let template_mem = pss_kib(template).unwrap_or((0, 0));
    scale(&server, &py, "tiny-py", &["--reserved-capacity", "0"]);

    // First starts on a node: a second server whose template budget holds none, two apps
    // called in turn, so every call starts its app's template and forks it.
    let first_work = scratch("bench-runtimes-first");
    let first = start_server_with(&first_work, &["--template-memory-mb", "1"]);
    let p1 = deploy_python(&first, &first_work, "first-a");
    deploy_python(&first, &first_work, "first-b");
    let first_n = env_usize("IGNITE_BENCH_FIRST", 40);
    let first_py = cold(&rt, &first, &p1, &["first-a", "first-b"], first_n);
    rows.push((
        "python: first start (template cold)".into(),
        pct(&first_py, 0.5),
        pct(&first_py, 0.99),
    ));
    let first_phases = phases(&first, &p1, "first-a", first_n / 2, PHASES);
    drop(first);

    // The peers: what a cold start without a template would pay.
    let python = std::env::var("IGNITE_BENCH_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into());
    let fresh = runs(20, || {
        let mut c = std::process::Command::new(&python);
        c.args(["-c", "import json, asyncio"]);
        c
    });
    rows.push((
        "peer: python3 -c 'import json, asyncio'".into(),
        pct(&fresh, 0.5),
        pct(&fresh, 0.99),
    ));
    let sdk = support::workspace_dir().join("sdks/python");
    let check = runs(20, || {
        let mut c = std::process::Command::new(&python);
        c.args(["-I", "-S"])
            .arg(sdk.join("ignite_boot.py"))
            .arg("check")
            .env("IGNITE_APP_DIR", &py)
            .stdout(std::process::Stdio::null());
        c
    });
    rows.push((
        "peer: interpreter + SDK + main.py".into(),
        pct(&check, 0.5),
        pct(&check, 0.99),
    ));

    println!();
    println!("ignite runtimes benchmark — seed handlers through the public gateway on loopback");
    println!("| measurement                              | p50        | p99        |");
    println!("|------------------------------------------|------------|------------|");
    for (name, p50, p99) in &rows {
        println!("| {name:<40} | {:>10} | {:>10} |", fmt(*p50), fmt(*p99));
    }
    println!();
    println!(
        "python warm p50 − rust warm p50: {}",
        fmt(pct(&warm_py, 0.5).saturating_sub(pct(&warm_rust, 0.5)))
    );
    println!(
        "go cold p50 − rust cold p50: {}",
        fmt(pct(&cold_go, 0.5).saturating_sub(pct(&cold_rust, 0.5)))
    );
    for (runtime, size) in sizes {
        println!("artifact size, {runtime}: {} KiB", size / 1024);
    }
    for (title, phases) in [
        ("python cold starts, template running", &py_phases),
        ("python first starts, template cold", &first_phases),
    ] {
        println!();
        println!("recorded phases, {title} (ms; spawn_ms is the fork):");
        println!("| phase          | p50     | p99     |");
        println!("|----------------|---------|---------|");
        for (name, p50, p99) in phases.iter() {
            println!("| {name:<14} | {p50:>7.3} | {p99:>7.3} |");
        }
    }
    println!();
    println!(
        "idle python instances: {} forks of one template · RSS {inst_rss:.0} KiB · PSS {inst_pss:.0} KiB each · the template: RSS {} KiB, PSS {} KiB",
        mem.len(),
        template_mem.0,
        template_mem.1
    );
    drop(server);
}
