//! `cargo bench --bench platform`: the whole platform, end to end through the public gateway on
//! loopback, for the recipe's handler (examples/tiny):
//!
//! - cold start with the app scaled to zero before every request (client-observed p50/p99, and
//!   the recorded `cold_start_ms` phases);
//! - warm requests at 1, 16 and 64 clients (p50, p99, req/s) beside its peers in the same run,
//!   every row driven by the same `wrk`: nginx proxying to a second nginx process (keep-alive
//!   upstream) and a bare in-process hyper server, with the ratio against nginx → nginx;
//! - the wasm target beside `wasmtime serve`, when one is installed;
//! - 100 simultaneous cold starts of 100 different apps;
//! - memory per idle warm instance, and how many the node holds.
//!
//! It starts the real `dodil ignite server` and deploys with the real CLI, with the same helpers
//! as the end-to-end tests.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use common::peers;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Client, env_usize, fmt, latencies, ms_pct, pct, pss_kib};
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use support::platform::{
    artifact_of, copy_tiny, deploy, deploy_wasm, ok, pids_running, scratch, start_server,
    start_server_with,
};

async fn hello(_req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(
        br#"{"message":"hi there","execution_id":"01JBENCH0000000000000000000","function_id":"acme-corp/tiny"}"#,
    ))))
}

/// A bare hyper server answering a fixed body, on its own 2-thread runtime like the platform's.
fn start_hello() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                stream.set_nodelay(true).unwrap();
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), hyper::service::service_fn(hello))
                        .await;
                });
            }
        });
    });
    rx.recv().unwrap()
}

/// `wasmtime serve` on `component`, if a `wasmtime` binary is there (install `wasmtime-cli` 48
/// from crates.io and point `IGNITE_BENCH_WASMTIME` at it); stopped when dropped.
fn start_wasmtime_serve(wasmtime: &str, component: &Path) -> Option<(SocketAddr, KillOnDrop)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().ok()?;
    let child = std::process::Command::new(wasmtime)
        .args(["serve", "-Scli", "--addr", &addr.to_string()])
        .arg(component)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let guard = KillOnDrop(child);
    for _ in 0..200 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Some((addr, guard));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Requests one at a time, 10 ms apart, like apps waking from zero rather than a spawn storm
/// (the 100-app row measures a storm), with the app's idle timeout at `idle_timeout` seconds:
/// "0" makes every request cold (the instance stops after each, and the sandbox prepares the
/// next meanwhile); a long one keeps the instance warm, which measures what the pacing alone
/// costs (an idle vCPU takes longer to wake than a busy one).
fn paced_requests(
    rt: &tokio::runtime::Runtime,
    server: &support::platform::Server,
    project: &Path,
    gateway: SocketAddr,
    host: &str,
    n: usize,
    idle_timeout: &str,
) -> Vec<Duration> {
    scale_tiny(server, project, &["--idle-timeout", idle_timeout]);
    std::thread::sleep(Duration::from_millis(600));
    let warmup = usize::from(idle_timeout != "0");
    rt.block_on(common::paced(gateway, host, warmup, n, PAUSE))
}

/// The pause between paced requests.
const PAUSE: Duration = Duration::from_millis(10);

/// `dodil ignite app scale acme-corp:tiny <flags>`.
fn scale_tiny(server: &support::platform::Server, project: &Path, flags: &[&str]) {
    ok(
        server,
        project,
        &[&["app", "scale", "acme-corp:tiny"], flags].concat(),
    );
}

/// Deploys `apps` copies of the app (the build cache makes all but the first a copy) and starts
/// one of each at the same instant, every app scaled to zero: the latencies, sorted, and how
/// many did not answer 200.
fn burst(
    rt: &tokio::runtime::Runtime,
    server: &support::platform::Server,
    project: &Path,
    gateway: SocketAddr,
    apps: usize,
) -> (Vec<Duration>, usize) {
    eprintln!("deploying {apps} apps …");
    for i in 0..apps {
        deploy(server, project, &format!("acme-corp:many-{i}"), "./");
    }
    rt.block_on(async {
        let mut tasks = Vec::new();
        let start = Arc::new(tokio::sync::Barrier::new(apps));
        for i in 0..apps {
            let start = start.clone();
            tasks.push(tokio::spawn(async move {
                let host = format!("many-{i}-acme-corp.ignite.localhost");
                let mut c = Client::connect(gateway, &host).await;
                start.wait().await;
                let t = Instant::now();
                let status = c.call().await;
                (t.elapsed(), status)
            }));
        }
        let mut v = Vec::new();
        let mut errors = 0;
        for t in tasks {
            let (d, status) = t.await.unwrap();
            if status != 200 {
                errors += 1;
            }
            v.push(d);
        }
        v.sort();
        (v, errors)
    })
}

/// The client counts every warm row is measured at.
const CLIENTS: [usize; 3] = [1, 16, 64];

/// The reverse-proxy peer's row name.
const NGINX: &str = "nginx → nginx";

/// The handler's answer, as the peers send it.
const HELLO: &str = r#"{"message":"hi there","execution_id":"01JBENCH0000000000000000000","function_id":"acme-corp/tiny"}"#;

/// One table of `wrk` rows, each with its ratio against `peer`'s row at the same clients
/// (req/s: ours / theirs; p50: theirs / ours, so above 1 is faster either way).
fn print_loads(rows: &[(&str, usize, peers::Load)], peer: &str) {
    println!(
        "| server                   | clients | p50        | p99        | req/s     | req/s ratio | p50 ratio | errors |"
    );
    println!(
        "|--------------------------|---------|------------|------------|-----------|-------------|-----------|--------|"
    );
    for (name, clients, load) in rows {
        let theirs = rows
            .iter()
            .find(|(n, c, _)| *n == peer && c == clients)
            .map(|r| r.2);
        let (rps_ratio, p50_ratio) = match theirs {
            Some(t) if *name != peer => (
                format!("{:.2}×", load.rps / t.rps.max(1.0)),
                format!(
                    "{:.2}×",
                    t.p50.as_secs_f64() / load.p50.as_secs_f64().max(1e-9)
                ),
            ),
            _ => ("-".into(), "-".into()),
        };
        println!(
            "| {name:<24} | {clients:>7} | {:>10} | {:>10} | {:>9.0} | {rps_ratio:>11} | {p50_ratio:>9} | {:>6} |",
            fmt(load.p50),
            fmt(load.p99),
            load.rps,
            load.errors
        );
    }
}

fn main() {
    let work = scratch("bench-platform");
    // `IGNITE_BENCH_SPARE=<n>`: the server keeps n sandboxed instances prepared
    // (`--sandbox-spare`, default 32), as an operator expecting bursts of cold starts would.
    let server = match std::env::var("IGNITE_BENCH_SPARE") {
        Ok(spare) => start_server_with(&work, &["--sandbox-spare", &spare]),
        Err(_) => start_server(&work),
    };
    let project = work.join("tiny");
    copy_tiny(&project);
    eprintln!("deploying examples/tiny …");
    deploy(&server, &project, "acme-corp:tiny", "./");
    scale_tiny(
        &server,
        &project,
        &["--max-instances", "4", "--queue-depth", "10000"],
    );
    let host = "tiny-acme-corp.ignite.localhost";
    let gateway: SocketAddr = server.gateway.parse().expect("the gateway address");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rows: Vec<(String, String, String)> = Vec::new();

    // `IGNITE_BENCH_LOAD=<concurrency>`: only hold `IGNITE_BENCH_CLIENTS` (64) wrk clients on
    // the app for `IGNITE_BENCH_SECS` (20) s, with that concurrency per instance (to profile
    // the server under load, e.g. with `perf record -a`).
    if let Ok(concurrency) = std::env::var("IGNITE_BENCH_LOAD") {
        scale_tiny(&server, &project, &["--concurrency", &concurrency]);
        let clients = env_usize("IGNITE_BENCH_CLIENTS", 64);
        let secs = env_usize("IGNITE_BENCH_SECS", 20) as u32;
        eprintln!("load: {clients} wrk clients for {secs} s");
        let load = peers::wrk(&work, gateway, host, clients, secs);
        println!(
            "{:.0} req/s, p50 {}, p99 {}, {} errors",
            load.rps,
            fmt(load.p50),
            fmt(load.p99),
            load.errors
        );
        return;
    }

    // `IGNITE_BENCH_COLD_ONLY=1`: only the cold requests (`IGNITE_BENCH_COLD` of them), to
    // profile the cold path (the server's pid is printed first, for `perf` or `strace -p`).
    if std::env::var_os("IGNITE_BENCH_COLD_ONLY").is_some() {
        eprintln!("server pid {}", server.pid());
        let n = env_usize("IGNITE_BENCH_COLD", 300);
        let cold = paced_requests(&rt, &server, &project, gateway, host, n, "0");
        let paced = paced_requests(&rt, &server, &project, gateway, host, n, "300");
        println!(
            "cold: p50 {}, p99 {}; warm, paced alike: p50 {}, p99 {}",
            fmt(pct(&cold, 0.5)),
            fmt(pct(&cold, 0.99)),
            fmt(pct(&paced, 0.5)),
            fmt(pct(&paced, 0.99))
        );
        return;
    }

    // `IGNITE_BENCH_BURST_ONLY=1`: only the simultaneous cold starts (`IGNITE_BENCH_APPS`).
    if std::env::var_os("IGNITE_BENCH_BURST_ONLY").is_some() {
        let apps = env_usize("IGNITE_BENCH_APPS", 100);
        let (many, errors) = burst(&rt, &server, &project, gateway, apps);
        println!(
            "{apps} simultaneous cold starts: p50 {}, p99 {}, {errors} errors",
            fmt(pct(&many, 0.5)),
            fmt(pct(&many, 0.99))
        );
        return;
    }

    // Warm: the platform beside its peers, every row driven by the same `wrk`, in this run.
    let secs = env_usize("IGNITE_BENCH_SECS", 5) as u32;
    assert!(
        peers::have_wrk(),
        "the platform bench drives every row with wrk: apt-get install wrk"
    );
    let hello_addr = start_hello();
    let nginx = peers::Nginx::installed().then(|| peers::Nginx::proxy_pair(&work, HELLO));
    if nginx.is_none() {
        eprintln!("no nginx (apt-get install nginx): the nginx → nginx rows are left out");
    }
    // Warm the instances (and the connections' paths) before measuring.
    rt.block_on(latencies(gateway, host, 500, 100));
    // One table row: `name` at `addr` with `clients` wrk clients.
    let row = |name, addr, host: &str, clients| {
        (name, clients, peers::wrk(&work, addr, host, clients, secs))
    };
    let mut warm: Vec<(&str, usize, peers::Load)> = Vec::new();
    for clients in CLIENTS {
        warm.push(row("ignite", gateway, host, clients));
    }
    // The same app with `concurrency` 16: one instance overlaps requests, one wake-up of the
    // handler serves every request its channel holds.
    scale_tiny(&server, &project, &["--concurrency", "16"]);
    rt.block_on(latencies(gateway, host, 200, 10));
    for clients in CLIENTS {
        warm.push(row("ignite, concurrency 16", gateway, host, clients));
    }
    scale_tiny(&server, &project, &["--concurrency", "1"]);
    for clients in CLIENTS {
        warm.push(row("bare hyper (in-process)", hello_addr, host, clients));
        if let Some(nginx) = &nginx {
            warm.push(row(NGINX, nginx.addr, host, clients));
        }
    }
    // The peers paced like the cold requests below (10 ms apart): what an idle machine adds.
    let paced_n = env_usize("IGNITE_BENCH_COLD", 300);
    let mut paced_peers = vec![(
        "bare hyper",
        rt.block_on(common::paced(hello_addr, host, 1, paced_n, PAUSE)),
    )];
    if let Some(nginx) = &nginx {
        paced_peers.push((
            NGINX,
            rt.block_on(common::paced(nginx.addr, host, 1, paced_n, PAUSE)),
        ));
    }
    drop(nginx);

    // The same handler as a wasm component (every request a fresh instance), beside the bare
    // hyper server and, when one is installed, `wasmtime serve` on the same component.
    let wasm_project = work.join("tinyw");
    copy_tiny(&wasm_project);
    eprintln!("deploying examples/tiny with --rust-target wasm …");
    deploy_wasm(&server, &wasm_project, "acme-corp:tinyw");
    ok(
        &server,
        &wasm_project,
        &["app", "scale", "acme-corp:tinyw", "--max-instances", "256"],
    );
    let wasm_host = "tinyw-acme-corp.ignite.localhost";
    rt.block_on(latencies(gateway, wasm_host, 200, 10));
    let component = artifact_of(&server, &wasm_project, "acme-corp:tinyw");
    let wasmtime = std::env::var("IGNITE_BENCH_WASMTIME").unwrap_or_else(|_| "wasmtime".into());
    let serve = start_wasmtime_serve(&wasmtime, &component);
    let mut wasm: Vec<(&str, usize, peers::Load)> = Vec::new();
    for clients in CLIENTS {
        wasm.push(row("ignite wasm", gateway, wasm_host, clients));
        if let Some((addr, _)) = &serve {
            wasm.push(row("wasmtime serve", *addr, "localhost", clients));
        }
    }
    drop(serve);

    // Cold: scaled to zero before every request.
    let cold_n = env_usize("IGNITE_BENCH_COLD", 300);
    let cold = paced_requests(&rt, &server, &project, gateway, host, cold_n, "0");
    rows.push((
        "cold request (scaled to zero)".into(),
        fmt(pct(&cold, 0.5)),
        fmt(pct(&cold, 0.99)),
    ));
    // The same with the sandbox off: what the sandbox costs a cold start.
    {
        let bare_work = scratch("bench-platform-bare");
        let bare = start_server_with(&bare_work, &["--no-sandbox"]);
        let bare_project = bare_work.join("tiny");
        copy_tiny(&bare_project);
        deploy(&bare, &bare_project, "acme-corp:tiny", "./");
        let bare_gateway: SocketAddr = bare.gateway.parse().expect("the gateway address");
        let cold_bare = paced_requests(&rt, &bare, &bare_project, bare_gateway, host, cold_n, "0");
        rows.push((
            "cold request, --no-sandbox".into(),
            fmt(pct(&cold_bare, 0.5)),
            fmt(pct(&cold_bare, 0.99)),
        ));
        rows.push((
            "  sandbox cost at p50".into(),
            fmt(pct(&cold, 0.5).saturating_sub(pct(&cold_bare, 0.5))),
            String::new(),
        ));
    }
    let listed: serde_json::Value = serde_json::from_str(&ok(
        &server,
        &project,
        &[
            "execution",
            "list",
            "--app",
            "acme-corp:tiny",
            "--limit",
            &cold_n.to_string(),
            "-o",
            "json",
        ],
    ))
    .unwrap();
    let phase = |name: &str| -> Vec<f64> {
        listed["executions"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| {
                let m = &e["metrics"];
                match name {
                    "cold_start_ms" | "duration_ms" => m[name].as_f64(),
                    _ => m["cold_start_phases"][name].as_f64(),
                }
            })
            .collect()
    };
    let mut phases = Vec::new();
    for name in [
        "cold_start_ms",
        "fetch_ms",
        "spawn_ms",
        "init_ms",
        "duration_ms",
    ] {
        let mut v = phase(name);
        phases.push((name, ms_pct(&mut v, 0.5), ms_pct(&mut v, 0.99)));
    }
    // The same pacing on a warm instance (after the cold records are read): what an idle
    // machine adds to any request.
    let paced = paced_requests(&rt, &server, &project, gateway, host, cold_n, "300");
    rows.insert(
        1,
        (
            "warm request, paced like the cold".into(),
            fmt(pct(&paced, 0.5)),
            fmt(pct(&paced, 0.99)),
        ),
    );
    for (i, (name, v)) in paced_peers.iter().enumerate() {
        rows.insert(
            2 + i,
            (
                format!("  {name}, paced alike"),
                fmt(pct(v, 0.5)),
                fmt(pct(v, 0.99)),
            ),
        );
    }

    // 100 simultaneous cold starts of 100 different apps (one build, then the build cache).
    let apps = env_usize("IGNITE_BENCH_APPS", 100);
    let (many, many_errors) = burst(&rt, &server, &project, gateway, apps);
    rows.push((
        format!("{apps} simultaneous cold starts"),
        fmt(pct(&many, 0.5)),
        fmt(pct(&many, 0.99)),
    ));

    // Memory of idle warm instances.
    let hold = env_usize("IGNITE_BENCH_HOLD", 200);
    ok(
        &server,
        &project,
        &[
            "app",
            "scale",
            "acme-corp:tiny",
            "--max-instances",
            &hold.to_string(),
            "--reserved-capacity",
            &hold.to_string(),
        ],
    );
    let exe = artifact_of(&server, &project, "acme-corp:tiny");
    let started = Instant::now();
    let pids = loop {
        let pids = pids_running(&exe);
        if pids.len() >= hold || started.elapsed() > Duration::from_secs(60) {
            break pids;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    std::thread::sleep(Duration::from_millis(500));
    let mem: Vec<(u64, u64)> = pids.iter().filter_map(|p| pss_kib(*p)).collect();
    let rss = mem.iter().map(|m| m.0).sum::<u64>() as f64 / mem.len().max(1) as f64;
    let pss = mem.iter().map(|m| m.1).sum::<u64>() as f64 / mem.len().max(1) as f64;
    let available_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0);

    println!();
    println!("ignite platform benchmark — examples/tiny through the public gateway on loopback");
    println!("| measurement                         | p50        | p99        |");
    println!("|-------------------------------------|------------|------------|");
    for (name, p50, p99) in &rows {
        println!("| {name:<35} | {p50:>10} | {p99:>10} |");
    }
    println!("({many_errors} errors among the {apps} simultaneous cold starts)");
    println!();
    println!("recorded phases of the {cold_n} cold requests (ms):");
    println!("| phase          | p50     | p99     |");
    println!("|----------------|---------|---------|");
    for (name, p50, p99) in &phases {
        println!("| {name:<14} | {p50:>7.3} | {p99:>7.3} |");
    }
    println!();
    println!(
        "warm requests, every row driven by the same wrk ({secs} s each) in this run; ratio against {NGINX} at the same clients:"
    );
    print_loads(&warm, NGINX);
    println!();
    println!(
        "--rust-target wasm (the same handler; every request a fresh instance); ratio against wasmtime serve:"
    );
    if !wasm.iter().any(|r| r.0 == "wasmtime serve") {
        println!(
            "(wasmtime serve not installed: `cargo install wasmtime-cli@48`, or IGNITE_BENCH_WASMTIME)"
        );
    }
    print_loads(&wasm, "wasmtime serve");
    println!();
    println!(
        "idle warm instances held: {} · RSS {:.0} KiB each · PSS {:.0} KiB each · at that PSS the {:.1} GiB available would hold ≈{:.0}",
        mem.len(),
        rss,
        pss,
        available_kib / 1048576.0,
        available_kib / pss.max(1.0)
    );
    drop(server);
}
