//! The Deno runtime's cold and warm numbers, through the public gateway on loopback: the seed
//! handler built and published, then
//!
//! - warm requests, one client;
//! - cold requests (scaled to zero before each), with the caches the build made;
//! - the same cold requests with the node's copy of the tree stripped of Deno's transpile and
//!   V8 code caches: a fresh `deno` start that compiles the app and the SDK every time (what an
//!   instance would pay without the build's warm-up; the tree is read-only in the sandbox, so
//!   nothing it compiles is kept);
//! - the recorded phases of each (fetch, spawn, init).
//!
//! `cargo bench --bench deno` (root; needs Deno: `npm install --prefix /opt/ignite-deno deno`).
//! `IGNITE_BENCH_COLD` (default 100) and `IGNITE_BENCH_WARM` (default 2000) set the counts.

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use support::platform::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SEED: &str = r#"import { main } from "ignite";

export default main(async (req, ctx) => {
  const message = req.field<string>("message") ?? "Hello from Deno!";
  return { message, execution_id: ctx.executionId, function_id: ctx.functionId };
});
"#;

const HOST: &str = "tiny-deno-acme-corp.ignite.localhost";

fn env_usize(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One keep-alive HTTP/1.1 connection to the gateway.
struct Client {
    stream: tokio::net::TcpStream,
    request: Vec<u8>,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let body = r#"{"message":"bench"}"#;
        let request = format!(
            "POST / HTTP/1.1\r\nHost: {HOST}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes();
        Client {
            stream,
            request,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Sends the request, reads the whole answer; returns its status.
    async fn call(&mut self) -> u16 {
        self.stream.write_all(&self.request).await.unwrap();
        self.buf.clear();
        loop {
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the gateway closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&self.buf);
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if self.buf.len() >= end + 4 + length {
                    return text[9..12].parse().unwrap_or(0);
                }
            }
        }
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn ms_pct(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    values[((values.len() as f64 - 1.0) * p).round() as usize]
}

fn scale(server: &Server, cwd: &Path, flags: &[&str]) {
    ok(
        server,
        cwd,
        &[&["app", "scale", "acme-corp:tiny-deno"], flags].concat(),
    );
}

/// Cold requests, one at a time, the app scaled to zero before each.
fn cold_requests(rt: &tokio::runtime::Runtime, gateway: SocketAddr, n: usize) -> Vec<Duration> {
    rt.block_on(async {
        let mut c = Client::connect(gateway).await;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            assert_eq!(c.call().await, 200);
            v.push(t.elapsed());
            // Let the stopped instance go before the next.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        v.sort();
        v
    })
}

/// The recorded cold-start phases of the last `n` executions: `(name, p50, p99)`.
fn phases(server: &Server, cwd: &Path, n: usize) -> Vec<(&'static str, f64, f64)> {
    let listed = json(&ok(
        server,
        cwd,
        &[
            "execution",
            "list",
            "--app",
            "acme-corp:tiny-deno",
            "--limit",
            &n.to_string(),
            "-o",
            "json",
        ],
    ));
    let mut out = Vec::new();
    for name in [
        "cold_start_ms",
        "fetch_ms",
        "spawn_ms",
        "init_ms",
        "duration_ms",
    ] {
        let mut v: Vec<f64> = listed["executions"]
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
            .collect();
        out.push((name, ms_pct(&mut v, 0.5), ms_pct(&mut v, 0.99)));
    }
    out
}

fn main() {
    if ignite_builder::deno::default_binary().is_none() {
        eprintln!("no Deno binary: `npm install --prefix /opt/ignite-deno deno` first");
        return;
    }
    let work = scratch("bench-deno");
    let server = start_server(&work);
    let project = work.join("tiny-deno");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(project.join("main.ts"), SEED).unwrap();
    ok(
        &server,
        &project,
        &["app", "create", "tiny-deno", "--runtime", "deno"],
    );
    ok(
        &server,
        &project,
        &[
            "draft",
            "save",
            "acme-corp:tiny-deno",
            "--code",
            "./",
            "--runtime",
            "deno",
        ],
    );
    let t = Instant::now();
    ok(
        &server,
        &project,
        &["draft", "publish", "acme-corp:tiny-deno"],
    );
    let build_time = t.elapsed();
    let gateway: SocketAddr = server.gateway.parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let warm_n = env_usize("IGNITE_BENCH_WARM", 2000);
    let cold_n = env_usize("IGNITE_BENCH_COLD", 100);
    let warm = rt.block_on(async {
        let mut c = Client::connect(gateway).await;
        for _ in 0..200 {
            assert_eq!(c.call().await, 200);
        }
        let mut v = Vec::with_capacity(warm_n);
        for _ in 0..warm_n {
            let t = Instant::now();
            assert_eq!(c.call().await, 200);
            v.push(t.elapsed());
        }
        v.sort();
        v
    });

    scale(&server, &project, &["--idle-timeout", "0"]);
    std::thread::sleep(Duration::from_millis(600));
    let cold = cold_requests(&rt, gateway, cold_n);
    let cold_phases = phases(&server, &project, cold_n);

    // The same with the node's copy of the tree stripped of the transpile and code caches.
    let apps = work.join("data/apps");
    let mut stripped = 0;
    for tree in std::fs::read_dir(&apps).unwrap().flatten() {
        let cache = tree.path().join(".deno");
        let _ = std::fs::remove_dir_all(cache.join("gen"));
        for db in [
            "v8_code_cache_v2",
            "v8_code_cache_v2-wal",
            "v8_code_cache_v2-shm",
        ] {
            if std::fs::remove_file(cache.join(db)).is_ok() {
                stripped += 1;
            }
        }
    }
    assert!(stripped > 0, "no unpacked Deno tree in {}", apps.display());
    std::thread::sleep(Duration::from_millis(600));
    let fresh = cold_requests(&rt, gateway, cold_n);
    let fresh_phases = phases(&server, &project, cold_n);

    println!();
    let deno = ignite_builder::deno::default_binary().unwrap();
    let version = std::process::Command::new(&deno)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    println!("{version} — the seed handler through the public gateway on loopback");
    println!("build and publish: {:.1} s", build_time.as_secs_f64());
    println!("| measurement                                   | p50        | p99        |");
    println!("|-----------------------------------------------|------------|------------|");
    for (name, v) in [
        ("warm request, 1 client", &warm),
        ("cold request, caches made at build", &cold),
        ("cold request, fresh deno (no caches)", &fresh),
    ] {
        println!(
            "| {name:<45} | {:>10} | {:>10} |",
            ms(pct(v, 0.5)),
            ms(pct(v, 0.99))
        );
    }
    for (title, phases) in [
        ("caches made at build", &cold_phases),
        ("fresh deno", &fresh_phases),
    ] {
        println!();
        println!("recorded phases of the {cold_n} cold requests, {title} (ms):");
        println!("| phase          | p50     | p99     |");
        println!("|----------------|---------|---------|");
        for (name, p50, p99) in phases.iter() {
            println!("| {name:<14} | {p50:>7.2} | {p99:>7.2} |");
        }
    }
    drop(server);
}
