//! `cargo bench --bench images`: image mode beside the Rust handler, in one run on one machine,
//! through the public gateway on loopback:
//!
//! - warm request, one client (p50/p99): the Rust seed handler, a static-binary HTTP server
//!   image (`tests/images/echo`), a Python `http.server` image assembled from this machine's
//!   Debian Python;
//! - cold request with the app scaled to zero before each, its root cached on the node;
//! - a node's first start of an image after a restart (its root unpacked first);
//! - pull + unpack of the Python image at publish;
//! - the peer: a fresh `python3 -c 'import http.server'` (Python's own boot).
//!
//! Images come from a real registry (Debian's `docker-registry`) on loopback.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Client, cold, env_usize, fmt, latencies, pct, phases};
use support::images::{Registry, echo_config, echo_layer};
use support::platform::{Server, copy_tiny, deploy, ok, scratch, start_server_with};

const PY_SERVER: &str = r#"import http.server, os

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = b'{"message":"Hello from http.server"}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8080"))), Handler).serve_forever()
"#;

/// The recorded phases shown for images.
const PHASES: &[&str] = &["fetch_ms", "unpack_ms", "spawn_ms", "init_ms"];

fn host(app: &str) -> String {
    format!("{app}-acme-corp.ignite.localhost")
}

/// The shared libraries `ldd` names for `files`.
fn libraries(files: &[PathBuf]) -> Vec<PathBuf> {
    let mut found = std::collections::BTreeSet::new();
    for file in files {
        let Ok(out) = std::process::Command::new("ldd").arg(file).output() else {
            continue;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            if let Some(path) = path.filter(|p| p.starts_with('/')) {
                found.insert(PathBuf::from(path));
            }
        }
    }
    found.into_iter().collect()
}

/// A layer of this machine's Python: the interpreter, its standard library (without its test
/// suite) and the libraries they load, plus the server script at /app/server.py.
fn python_layer() -> Vec<u8> {
    let interpreter = std::fs::canonicalize("/usr/bin/python3").expect("python3");
    let stdlib = Path::new("/usr/lib/python3.11");
    let mut extensions: Vec<PathBuf> = std::fs::read_dir(stdlib.join("lib-dynload"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    extensions.push(interpreter.clone());
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(true);
    let add = |tar: &mut tar::Builder<Vec<u8>>, path: &Path| {
        let inside = path.strip_prefix("/").expect("absolute");
        let _ = tar.append_path_with_name(path, inside);
    };
    add(&mut tar, &interpreter);
    tar.append_path_with_name(&interpreter, "usr/bin/python3")
        .expect("python3");
    for lib in libraries(&extensions) {
        add(&mut tar, &lib);
    }
    for entry in walk(stdlib) {
        let skip = entry
            .components()
            .any(|c| matches!(c.as_os_str().to_str(), Some("test" | "idlelib" | "tkinter")));
        if !skip && entry.is_file() {
            add(&mut tar, &entry);
        }
    }
    let mut header = tar::Header::new_gnu();
    header.set_size(PY_SERVER.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "app/server.py", PY_SERVER.as_bytes())
        .expect("server.py");
    let raw = tar.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &raw).expect("gzip");
    gz.finish().expect("gzip")
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => out.push(p),
                _ => {}
            }
        }
    }
    out
}

fn deploy_image(server: &Server, cwd: &Path, app: &str, image: &str) -> Duration {
    let id = format!("acme-corp:{app}");
    ok(server, cwd, &["app", "create", app, "--runtime", "image"]);
    ok(server, cwd, &["draft", "save", &id, "--image-ref", image]);
    let t = Instant::now();
    ok(server, cwd, &["draft", "publish", &id]);
    t.elapsed()
}

fn main() {
    let work = scratch("bench-images");
    let registry = Registry::start(&work.join("registry"), None);
    eprintln!("pushing the test images …");
    let echo = registry.push(
        "bench/echo:v1",
        vec![echo_layer()],
        echo_config("bench"),
        None,
    );
    let python = registry.push(
        "bench/python:v1",
        vec![python_layer()],
        serde_json::json!({
            "Entrypoint": ["/usr/bin/python3", "-I", "/app/server.py"],
            "Env": ["PATH=/usr/bin:/bin"],
            "WorkingDir": "/app",
        }),
        None,
    );
    let flags = [
        "--image-registry",
        registry.addr.as_str(),
        "--insecure-registry",
        registry.addr.as_str(),
    ];
    let data = work.join("server");
    let server = start_server_with(&data, &flags);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let rust = work.join("tiny");
    copy_tiny(&rust);
    eprintln!("deploying examples/tiny and the images …");
    deploy(&server, &rust, "acme-corp:tiny", "./");
    deploy_image(&server, &work, "echo", &echo);
    let py_publish = deploy_image(&server, &work, "pyhttp", &python);
    let gateway: SocketAddr = server.gateway.parse().expect("gateway");

    let warm_n = env_usize("IGNITE_BENCH_WARM", 3000);
    let cold_n = env_usize("IGNITE_BENCH_COLD", 100);
    let mut rows: Vec<(String, Duration, Duration)> = Vec::new();
    let warm_rust = rt.block_on(latencies(gateway, &host("tiny"), 300, warm_n));
    let warm_echo = rt.block_on(latencies(gateway, &host("echo"), 300, warm_n));
    let warm_py = rt.block_on(latencies(gateway, &host("pyhttp"), 300, warm_n));
    for (name, v) in [
        ("rust handler: warm, 1 client", &warm_rust),
        ("static-binary image: warm, 1 client", &warm_echo),
        ("python http.server image: warm", &warm_py),
    ] {
        rows.push((name.into(), pct(v, 0.5), pct(v, 0.99)));
    }
    let cold_rust = cold(&rt, &server, &rust, &["tiny"], cold_n);
    let cold_echo = cold(&rt, &server, &work, &["echo"], cold_n);
    let cold_py = cold(&rt, &server, &work, &["pyhttp"], cold_n);
    for (name, v) in [
        ("rust handler: cold", &cold_rust),
        ("static-binary image: cold, root cached", &cold_echo),
        ("python http.server image: cold, cached", &cold_py),
    ] {
        rows.push((name.into(), pct(v, 0.5), pct(v, 0.99)));
    }
    let echo_phases = phases(&server, &work, "echo", cold_n, PHASES);
    let py_phases = phases(&server, &work, "pyhttp", cold_n, PHASES);
    drop(server);

    // A node's first start of an image: a restart clears its unpacked roots, so the first
    // call unpacks (the layers are in the node's store already; a pull is measured at publish).
    let restarts = env_usize("IGNITE_BENCH_RESTARTS", 5);
    let mut first_echo = Vec::new();
    let mut first_py = Vec::new();
    for _ in 0..restarts {
        let server = start_server_with(&data, &flags);
        let gateway: SocketAddr = server.gateway.parse().expect("gateway");
        rt.block_on(async {
            for (app, into) in [("echo", &mut first_echo), ("pyhttp", &mut first_py)] {
                let mut c = Client::connect(gateway, &host(app)).await;
                let t = Instant::now();
                assert_eq!(c.call().await, 200);
                into.push(t.elapsed());
            }
        });
        drop(server);
    }
    first_echo.sort();
    first_py.sort();
    rows.push((
        "static-binary image: first start (unpack)".into(),
        pct(&first_echo, 0.5),
        pct(&first_echo, 0.99),
    ));
    rows.push((
        "python image: first start (unpack)".into(),
        pct(&first_py, 0.5),
        pct(&first_py, 0.99),
    ));

    // The peer: Python's own boot, a fresh interpreter importing http.server.
    let mut boot: Vec<Duration> = (0..20)
        .map(|_| {
            let t = Instant::now();
            let status = std::process::Command::new("/usr/bin/python3")
                .args(["-I", "-c", "import http.server"])
                .status()
                .expect("python3");
            assert!(status.success());
            t.elapsed()
        })
        .collect();
    boot.sort();
    rows.push((
        "peer: python3 -c 'import http.server'".into(),
        pct(&boot, 0.5),
        pct(&boot, 0.99),
    ));

    println!();
    println!("ignite image-mode benchmark — through the public gateway on loopback");
    println!("| measurement                                  | p50        | p99        |");
    println!("|----------------------------------------------|------------|------------|");
    for (name, p50, p99) in &rows {
        println!("| {name:<44} | {:>10} | {:>10} |", fmt(*p50), fmt(*p99));
    }
    println!();
    println!(
        "static-binary image warm p50 − rust warm p50: {}",
        fmt(pct(&warm_echo, 0.5).saturating_sub(pct(&warm_rust, 0.5)))
    );
    println!(
        "python image cold p50 − python's own boot p50: {}",
        fmt(pct(&cold_py, 0.5).saturating_sub(pct(&boot, 0.5)))
    );
    println!("python image pull + unpack at publish: {}", fmt(py_publish));
    for (title, phases) in [
        ("static-binary image cold starts", &echo_phases),
        ("python image cold starts", &py_phases),
    ] {
        println!();
        println!("recorded phases, {title} (ms):");
        println!("| phase      | p50     | p99     |");
        println!("|------------|---------|---------|");
        for (name, p50, p99) in phases.iter() {
            println!("| {name:<10} | {p50:>7.3} | {p99:>7.3} |");
        }
    }
    drop(registry);
}
