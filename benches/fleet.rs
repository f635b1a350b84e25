//! `cargo bench --bench fleet`: the fleet beside the single process, in one run on one machine.
//!
//! - warm request, one client, and a cold request (the app scaled to zero before each): through
//!   a single `dodil ignite server`, and through a control replica to a node in another
//!   network namespace (the hop is HTTP/2 over a veth pair and a bridge);
//! - throughput with 64 clients: the single process, and the fleet with three nodes (three
//!   apps, placed by the fleet);
//! - failover: a sequential client's first answer after the node serving it is killed
//!   (`kill -9`: its connection breaks) and after it is cut off the bridge (a partition: only
//!   missed heartbeats tell);
//! - 10 000 requests from 16 clients with the serving node killed halfway: every answer is
//!   200 or 502 `node_lost`, and the store holds exactly one record per answer, with the
//!   status it was answered with.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Client, cold, env_usize, fmt, latencies, pct, throughput};
use support::fleet::Fleet;
use support::platform::{Server, copy_tiny, deploy, ok, scratch, start_server_with};

fn host(app: &str) -> String {
    format!("{app}-acme-corp.ignite.localhost")
}

/// From the kill (or the cut) to the first 200 answered to a request sent after it.
fn failover(
    rt: &tokio::runtime::Runtime,
    gateway: SocketAddr,
    app: &str,
    fault: impl FnOnce(),
) -> Duration {
    rt.block_on(async {
        let mut client = Client::connect(gateway, &host(app)).await;
        for _ in 0..50 {
            assert_eq!(client.call().await, 200);
        }
        fault();
        let at = Instant::now();
        loop {
            if client.call().await == 200 {
                return at.elapsed();
            }
            // A broken keep-alive connection (the gateway closes after a 502): a new one.
            client = Client::connect(gateway, &host(app)).await;
            assert!(at.elapsed() < Duration::from_secs(10), "no failover");
        }
    })
}

/// The store's records of `app`: (status, count).
fn records(control: &Server, app: &str) -> Vec<(String, u64)> {
    let db = control.dir.join("data/ignite.db");
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3; c = sqlite3.connect('file:{}?mode=ro', uri=True)\n\
             for s, n in c.execute(\"SELECT status, COUNT(*) FROM executions WHERE app = '{app}' \
             GROUP BY status\"): print(s, n)",
            db.display()
        ))
        .output()
        .expect("python3 reads the store");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (s, n) = l.split_once(' ')?;
            Some((s.to_string(), n.parse().ok()?))
        })
        .collect()
}

fn main() {
    let work = scratch("bench-fleet");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let warm_n = env_usize("IGNITE_BENCH_WARM", 3000);
    let cold_n = env_usize("IGNITE_BENCH_COLD", 100);
    let secs = env_usize("IGNITE_BENCH_SECS", 5) as f64;
    let total = env_usize("IGNITE_BENCH_REQUESTS", 10_000);
    let tiny = work.join("tiny");
    copy_tiny(&tiny);

    eprintln!("the single process …");
    let single = start_server_with(&work.join("single"), &[]);
    deploy(&single, &tiny, "acme-corp:tiny", "./");
    let single_gw: SocketAddr = single.gateway.parse().unwrap();
    let single_warm = rt.block_on(latencies(single_gw, &host("tiny"), 300, warm_n));
    let (single_rps, single_bad) = rt.block_on(throughput(single_gw, &host("tiny"), 64, secs));
    let single_cold = cold(&rt, &single, &tiny, &["tiny"], cold_n);
    drop(single);

    eprintln!("the fleet: one control replica, three nodes …");
    let mut fleet = Fleet::start("bench-fleet-hosts", 1, 3, &[]);
    let control = &fleet.controls[0];
    let gw: SocketAddr = control.gateway.parse().unwrap();
    // One app per node, as the fleet places them: apps are deployed (the build cache makes
    // each after the first a copy) until each node holds one.
    let mut spread: Vec<(String, usize)> = Vec::new();
    for i in 0..24 {
        let app = if i == 0 {
            "tiny".to_string()
        } else {
            format!("t{i}")
        };
        deploy(control, &tiny, &format!("acme-corp:{app}"), "./");
        rt.block_on(async {
            let mut client = Client::connect(gw, &host(&app)).await;
            assert_eq!(client.call().await, 200);
        });
        let node = fleet.serving(&app);
        if !spread.iter().any(|(_, n)| *n == node) {
            spread.push((app, node));
        }
        if spread.len() == 3 {
            break;
        }
    }
    assert_eq!(spread.len(), 3, "three apps on three nodes: {spread:?}");
    let (a1, a2) = (spread[1].0.clone(), spread[2].0.clone());
    let (a0, _) = spread[0].clone();
    let fleet_warm = rt.block_on(latencies(gw, &host("tiny"), 300, warm_n));
    eprintln!("warm through the fleet: p50 {}", fmt(pct(&fleet_warm, 0.5)));
    let fleet_rps = rt.block_on(async {
        let per = secs;
        let (h0, h1, h2) = (host(&a0), host(&a1), host(&a2));
        let (a, b, c) = tokio::join!(
            throughput(gw, &h0, 22, per),
            throughput(gw, &h1, 21, per),
            throughput(gw, &h2, 21, per),
        );
        (a.0 + b.0 + c.0, a.1 + b.1 + c.1)
    });
    eprintln!("fleet throughput: {fleet_rps:?}");
    let placed: Vec<usize> = [&a0, &a1, &a2].iter().map(|a| fleet.serving(a)).collect();
    let fleet_cold = cold(&rt, &fleet.controls[0], &tiny, &["tiny"], cold_n);
    ok(
        &fleet.controls[0],
        &tiny,
        &["app", "scale", "acme-corp:tiny", "--idle-timeout", "300"],
    );

    // Failover, twice: a kill, then a partition.
    let victim = fleet.serving(&a1);
    let killed = {
        let fleet_ref = &mut fleet;
        let node = fleet_ref.nodes[victim].take().expect("the node");
        failover(&rt, gw, &a1, move || {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &node.pid().to_string()])
                .status();
            drop(node);
        })
    };
    // The next app may have been on the killed node: served again first, wherever the fleet
    // puts it.
    rt.block_on(async {
        let mut client = Client::connect(gw, &host(&a2)).await;
        for _ in 0..20 {
            client.call().await;
        }
    });
    let victim = fleet.serving(&a2);
    let cut = {
        let host = &fleet.net.hosts[victim];
        failover(&rt, gw, &a2, || host.partition())
    };
    fleet.net.hosts[victim].heal();

    // 10 000 requests, the serving node killed halfway.
    eprintln!("{total} requests with a node killed halfway …");
    let dead = fleet
        .nodes
        .iter()
        .position(Option::is_none)
        .expect("the node killed above");
    fleet.nodes[dead] = Some(fleet.start_node(dead));
    fleet.wait_for_nodes(3);
    let control = &fleet.controls[0];
    ok(
        control,
        &tiny,
        &["app", "create", "exact", "--runtime", "rust"],
    );
    support::platform::save_native(control, &tiny, "acme-corp:exact", "./");
    ok(control, &tiny, &["draft", "compile", "acme-corp:exact"]);
    ok(
        control,
        &tiny,
        &["draft", "compile-logs", "acme-corp:exact"],
    );
    ok(control, &tiny, &["draft", "publish", "acme-corp:exact"]);
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let answers = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let sent = sent.clone();
            tasks.push(tokio::spawn(async move {
                let mut client = Client::connect(gw, &host("exact")).await;
                let mut got = Vec::new();
                while sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                    let (status, id) = client.call_id().await;
                    if status != 200 {
                        client = Client::connect(gw, &host("exact")).await;
                    }
                    got.push((status, id));
                }
                got
            }));
        }
        let kill_at = total / 2;
        while sent.load(std::sync::atomic::Ordering::Relaxed) < kill_at {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let victim = fleet.serving("exact");
        let node = fleet.nodes[victim].take().expect("the node");
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &node.pid().to_string()])
            .status();
        drop(node);
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    // Every record written (the writer is behind by a few milliseconds).
    std::thread::sleep(Duration::from_millis(500));
    let control = &fleet.controls[0];
    let answered = |code: u16| answers.iter().filter(|(s, _)| *s == code).count() as u64;
    let (ok200, lost502) = (answered(200), answered(502));
    let other = answers.len() as u64 - ok200 - lost502;
    let stored = records(control, "exact");
    let count = |s: &str| stored.iter().find(|(k, _)| k == s).map_or(0, |(_, n)| *n);
    let stored_total: u64 = stored.iter().map(|(_, n)| n).sum();
    let ids: std::collections::HashSet<&String> =
        answers.iter().filter_map(|(_, id)| id.as_ref()).collect();

    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!();
    println!("| measurement | single process | fleet (control → node) | difference |");
    println!("|---|---|---|---|");
    for (name, s, f) in [
        (
            "warm, 1 client, p50",
            pct(&single_warm, 0.5),
            pct(&fleet_warm, 0.5),
        ),
        (
            "warm, 1 client, p99",
            pct(&single_warm, 0.99),
            pct(&fleet_warm, 0.99),
        ),
        ("cold, p50", pct(&single_cold, 0.5), pct(&fleet_cold, 0.5)),
        ("cold, p99", pct(&single_cold, 0.99), pct(&fleet_cold, 0.99)),
    ] {
        println!(
            "| {name} | {} | {} | +{} ({:.2}×) |",
            fmt(s),
            fmt(f),
            fmt(f.saturating_sub(s)),
            ratio(f, s)
        );
    }
    println!(
        "| throughput, 64 clients | {single_rps:.0} req/s ({single_bad} errors) | {:.0} req/s \
         over nodes {placed:?} ({} errors) | {:.2}× |",
        fleet_rps.0,
        fleet_rps.1,
        fleet_rps.0 / single_rps
    );
    println!();
    println!(
        "failover after kill -9 of the serving node: {}",
        fmt(killed)
    );
    println!(
        "failover after a partition of the serving node: {}",
        fmt(cut)
    );
    println!(
        "{} requests, serving node killed halfway: {ok200} answered 200, {lost502} answered 502 \
         node_lost, {other} other; the store holds {stored_total} records ({} succeeded, {} \
         node_lost; {} distinct execution ids answered) — {} missing or extra",
        answers.len(),
        count("succeeded"),
        count("node_lost"),
        ids.len(),
        (stored_total as i64 - (ok200 + lost502) as i64).abs()
    );
}
