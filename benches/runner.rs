//! `cargo bench --bench runner`: cold start, warm round trip and artifact size of the recipe's
//! handler (examples/tiny), compiled by the builder and driven by the instance runner.
//!
//! Cold = spawn of the static binary → SDK handshake → first response. Warm = one request on a
//! ready instance; "sandboxed" is the default placement inside the instance sandbox. Printed as a table; set IGNITE_BENCH_COLD / IGNITE_BENCH_WARM for more or
//! fewer iterations.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ignite_agent::{Instance, Invocation, Outcome, SpawnConfig};
use ignite_builder::{BuildOptions, Sdk};

fn iterations(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn fmt(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.1} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.3} ms", d.as_secs_f64() * 1e3)
    }
}

fn invocation() -> Invocation {
    Invocation {
        execution_id: "01JBENCH000000000000000000".into(),
        function_id: "acme-corp/tiny".into(),
        deadline: Some(Instant::now() + Duration::from_secs(10)),
        request: ignite_agent::HttpRequest {
            method: "POST".into(),
            path: "/".into(),
            body: br#"{"message": "hi there"}"#.to_vec(),
            ..Default::default()
        },
        ..Invocation::default()
    }
}

fn copy_project(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to.join("src")).unwrap();
    std::fs::copy(from.join("Cargo.toml"), to.join("Cargo.toml")).unwrap();
    std::fs::copy(from.join("src/lib.rs"), to.join("src/lib.rs")).unwrap();
}

async fn build_seed() -> (PathBuf, u64) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = root.join("target/bench/tiny");
    copy_project(&root.join("examples/tiny"), &work);
    let project = ignite_builder::prepare(&work, ignite_builder::Target::Native)
        .expect("prepare examples/tiny");
    let options = BuildOptions::new(
        Sdk::bundled(),
        root.join("target/bench/target"),
        Duration::from_secs(1200),
    );
    let mut log = Vec::new();
    match ignite_builder::build(&project, &options, |l| log.push(l.to_string())).await {
        Ok(a) => (a.path, a.size),
        Err(e) => panic!("build failed: {e}\n{}", log.join("\n")),
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        eprintln!("building examples/tiny …");
        let (bin, size) = build_seed().await;
        let mut rows = Vec::new();
        let mut results = Vec::new();
        let unpinned = SpawnConfig::new(&bin);
        results.push(("default placement", measure(&unpinned).await));
        // The same, inside the sandbox the server runs every instance in (needs root).
        match ignite_sandbox::Sandbox::new(ignite_sandbox::SandboxConfig::new(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench/sandbox"),
        )) {
            Ok(sandbox) => {
                let mut sandboxed = SpawnConfig::new(&bin);
                sandboxed.sandbox = Some((sandbox, ignite_sandbox::Limits { memory_mb: 128, egress: false }));
                results.push(("sandboxed", measure(&sandboxed).await));
            }
            Err(e) => eprintln!("no sandboxed row: {e}"),
        }
        // The agent thread and the instance on one CPU: no cross-vCPU wake-up per hop.
        ignite_agent::pin_to_cpu(0, 0).expect("pin the benchmark thread");
        let mut pinned = SpawnConfig::new(&bin);
        pinned.cpu = Some(0);
        results.push(("instance on the agent's CPU", measure(&pinned).await));

        println!();
        println!("ignite runner benchmark — examples/tiny (the recipe's handler), static musl");
        println!("| placement                   | metric                         | p50        | p99        |");
        println!("|-----------------------------|--------------------------------|------------|------------|");
        for (placement, m) in &results {
            for (name, v) in [
                ("cold: spawn → first response", &m.cold),
                ("  of which spawn → ready", &m.init),
                ("warm: request round trip", &m.warm),
            ] {
                rows.push(format!(
                    "| {placement:<27} | {name:<30} | {:>10} | {:>10} |",
                    fmt(percentile(v, 0.5)),
                    fmt(percentile(v, 0.99))
                ));
            }
            rows.push(format!(
                "| {placement:<27} | {:<30} | {:>8.0}/s |            |",
                "warm throughput, 1 client", m.throughput
            ));
        }
        for row in rows {
            println!("{row}");
        }
        println!(
            "| {:<27} | {:<30} | {:>6} KiB |            |",
            "", "stripped binary size", size / 1024
        );
        let (cold_n, warm_n) = (results[0].1.cold.len(), results[0].1.warm.len());
        println!("({cold_n} cold starts, {warm_n} warm requests per placement)");
    });
}

struct Measured {
    cold: Vec<Duration>,
    init: Vec<Duration>,
    warm: Vec<Duration>,
    throughput: f64,
}

async fn measure(config: &SpawnConfig) -> Measured {
    let cold_n = iterations("IGNITE_BENCH_COLD", 300);
    let mut cold = Vec::with_capacity(cold_n);
    let mut init = Vec::with_capacity(cold_n);
    for _ in 0..cold_n {
        let started = Instant::now();
        let instance = Instance::spawn(config).await.expect("spawn");
        let reply = instance.invoke(invocation()).await;
        cold.push(started.elapsed());
        init.push(instance.init_duration());
        assert!(matches!(
            reply.outcome,
            Outcome::Response { status: 200, .. }
        ));
        instance.shutdown(Duration::from_secs(1)).await;
        // Paced like apps waking from zero, not a spawn storm: the sandbox prepares the next
        // instance's namespaces in the background meanwhile (a burst that outruns it pays
        // for them on the spot; the platform benchmark's 100-app row measures that).
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let warm_n = iterations("IGNITE_BENCH_WARM", 20_000);
    let instance = Instance::spawn(config).await.expect("spawn");
    for _ in 0..1000 {
        instance.invoke(invocation()).await;
    }
    let mut warm = Vec::with_capacity(warm_n);
    let all = Instant::now();
    for _ in 0..warm_n {
        let started = Instant::now();
        let reply = instance.invoke(invocation()).await;
        warm.push(started.elapsed());
        assert!(matches!(
            reply.outcome,
            Outcome::Response { status: 200, .. }
        ));
    }
    let throughput = warm_n as f64 / all.elapsed().as_secs_f64();
    instance.shutdown(Duration::from_secs(1)).await;
    for v in [&mut cold, &mut init, &mut warm] {
        v.sort();
    }
    Measured {
        cold,
        init,
        warm,
        throughput,
    }
}
