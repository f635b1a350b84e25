//! What the benchmarks share: a keep-alive HTTP/1.1 client, percentiles, latency and
//! throughput loops, and a process's memory.
#![allow(dead_code)]

pub mod peers;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub const PAYLOAD: &str = r#"{"message": "hi there"}"#;

pub fn env_usize(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One keep-alive HTTP/1.1 connection.
pub struct Client {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl Client {
    pub async fn connect(addr: SocketAddr, host: &str) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Client {
            send,
            host: host.to_string(),
        }
    }

    /// Sends one request; returns the status.
    pub async fn call(&mut self) -> u16 {
        self.call_id().await.0
    }

    /// Sends one request; returns the status and the execution id it was answered with.
    pub async fn call_id(&mut self) -> (u16, Option<String>) {
        if self.send.ready().await.is_err() {
            return (0, None);
        }
        let req = Request::post("/")
            .header("host", &self.host)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(PAYLOAD.as_bytes())))
            .unwrap();
        match self.send.send_request(req).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let id = resp
                    .headers()
                    .get("x-ignite-execution-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let _ = resp.into_body().collect().await;
                (status, id)
            }
            Err(e) => {
                if std::env::var_os("IGNITE_BENCH_DEBUG").is_some() {
                    eprintln!("request failed: {e:?}");
                }
                (0, None)
            }
        }
    }
}

pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub fn fmt(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.0} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    }
}

pub fn ms_pct(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    if values.is_empty() {
        return 0.0;
    }
    values[((values.len() as f64 - 1.0) * p).round() as usize]
}

/// `n` sequential request latencies on one connection after `warmup` requests, sorted.
pub async fn latencies(addr: SocketAddr, host: &str, warmup: usize, n: usize) -> Vec<Duration> {
    paced(addr, host, warmup, n, Duration::ZERO).await
}

/// As [`latencies`], with `pause` after each measured request (a machine left idle between
/// requests, as apps woken now and then leave it).
pub async fn paced(
    addr: SocketAddr,
    host: &str,
    warmup: usize,
    n: usize,
    pause: Duration,
) -> Vec<Duration> {
    let mut c = Client::connect(addr, host).await;
    for _ in 0..warmup {
        c.call().await;
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        assert_eq!(c.call().await, 200);
        v.push(t.elapsed());
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    v.sort();
    v
}

/// Requests per second with `clients` connections for `secs` seconds.
pub async fn throughput(addr: SocketAddr, host: &str, clients: usize, secs: f64) -> (f64, usize) {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let host = host.to_string();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr, &host).await;
            let (mut ok, mut bad) = (0usize, 0usize);
            while Instant::now() < end {
                if c.call().await == 200 {
                    ok += 1
                } else {
                    bad += 1
                }
            }
            (ok, bad)
        }));
    }
    let (mut ok, mut bad) = (0, 0);
    for t in tasks {
        let (o, b) = t.await.unwrap();
        ok += o;
        bad += b;
    }
    (ok as f64 / secs, bad)
}

pub fn pss_kib(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("Rss:")?, field("Pss:")?))
}

/// Cold requests one at a time through `server`'s gateway, the apps (`acme-corp:<app>`) scaled
/// to zero before each (idle timeout 0: the reconciler stops an instance within its tick);
/// sorted.
pub fn cold(
    rt: &tokio::runtime::Runtime,
    server: &crate::support::platform::Server,
    cwd: &std::path::Path,
    apps: &[&str],
    n: usize,
) -> Vec<Duration> {
    let gateway: SocketAddr = server.gateway.parse().expect("the gateway address");
    for app in apps {
        let id = format!("acme-corp:{app}");
        crate::support::platform::ok(server, cwd, &["app", "scale", &id, "--idle-timeout", "0"]);
    }
    std::thread::sleep(Duration::from_millis(600));
    rt.block_on(async {
        let mut clients = Vec::new();
        for app in apps {
            clients
                .push(Client::connect(gateway, &format!("{app}-acme-corp.ignite.localhost")).await);
        }
        let mut v = Vec::with_capacity(n);
        for i in 0..n {
            let c = &mut clients[i % apps.len()];
            let t = Instant::now();
            assert_eq!(c.call().await, 200);
            v.push(t.elapsed());
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        v.sort();
        v
    })
}

/// The recorded phases `names` (ms; `cold_start_ms` is the metric itself, the rest are
/// `cold_start_phases`) of an app's last `n` executions: (name, p50, p99).
pub fn phases(
    server: &crate::support::platform::Server,
    cwd: &std::path::Path,
    app: &str,
    n: usize,
    names: &[&'static str],
) -> Vec<(&'static str, f64, f64)> {
    let listed: serde_json::Value = serde_json::from_str(&crate::support::platform::ok(
        server,
        cwd,
        &[
            "execution",
            "list",
            "--app",
            &format!("acme-corp:{app}"),
            "--limit",
            &n.to_string(),
            "-o",
            "json",
        ],
    ))
    .expect("the executions as JSON");
    let executions = listed["executions"].as_array().cloned().unwrap_or_default();
    names
        .iter()
        .map(|&name| {
            let mut v: Vec<f64> = executions
                .iter()
                .filter_map(|e| match name {
                    "cold_start_ms" => e["metrics"][name].as_f64(),
                    _ => e["metrics"]["cold_start_phases"][name].as_f64(),
                })
                .collect();
            (name, ms_pct(&mut v, 0.5), ms_pct(&mut v, 0.99))
        })
        .collect()
}
