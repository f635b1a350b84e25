//! The peers a speed figure is held against, and the one load generator that drives every row:
//! Debian's `wrk` (C, epoll, HdrHistogram latencies), so the platform and its peers pay the same
//! client cost on the same two vCPUs.
//!
//! - [`Nginx::proxy_pair`]: nginx proxying to a second nginx process over a keep-alive upstream,
//!   the second answering the handler's JSON body itself — the cheapest "front process hands the
//!   request to another process" there is.
//! - The bare hyper server is in the benchmark itself (`start_hello`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::PAYLOAD;

/// What one `wrk` run measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Load {
    pub rps: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// Non-2xx answers and socket errors.
    pub errors: u64,
}

/// Whether `wrk` is on the PATH (`apt-get install wrk`).
pub fn have_wrk() -> bool {
    Command::new("wrk")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// `wrk` with `clients` keep-alive connections for `secs` seconds, POSTing the benchmark payload
/// to `addr` with `Host: host`.
pub fn wrk(dir: &Path, addr: SocketAddr, host: &str, clients: usize, secs: u32) -> Load {
    let script = dir.join("post.lua");
    if !script.exists() {
        std::fs::write(
            &script,
            format!(
                "wrk.method = \"POST\"\nwrk.body = '{PAYLOAD}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"
            ),
        )
        .expect("writing the wrk script");
    }
    let out = Command::new("wrk")
        .args(["-t", &clients.clamp(1, 2).to_string()])
        .args(["-c", &clients.to_string()])
        .args(["-d", &format!("{secs}s")])
        .arg("--latency")
        .args(["-H", &format!("Host: {host}")])
        .arg("-s")
        .arg(&script)
        .arg(format!("http://{addr}/"))
        .output()
        .expect("running wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let load = parse_wrk(&text).unwrap_or_else(|| panic!("could not read wrk's output:\n{text}"));
    eprintln!(
        "  {addr} {host}, {clients} clients: {:.0} req/s, p50 {:?}, p99 {:?}, {} errors",
        load.rps, load.p50, load.p99, load.errors
    );
    load
}

fn parse_wrk(text: &str) -> Option<Load> {
    let mut load = Load::default();
    let mut seen = false;
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("50%"), Some(v)) => load.p50 = parse_duration(v)?,
            (Some("99%"), Some(v)) => load.p99 = parse_duration(v)?,
            (Some("Requests/sec:"), Some(v)) => {
                load.rps = v.parse().ok()?;
                seen = true;
            }
            (Some("Non-2xx"), _) => {
                load.errors += line.rsplit(' ').next()?.parse::<u64>().ok()?;
            }
            (Some("Socket"), Some("errors:")) => {
                // "Socket errors: connect 0, read 0, write 0, timeout 0"
                for part in line.trim_start_matches("Socket errors:").split(',') {
                    load.errors += part.split_whitespace().nth(1)?.parse::<u64>().ok()?;
                }
            }
            _ => {}
        }
    }
    seen.then_some(load)
}

/// `61.00us`, `1.20ms`, `2.00s`.
fn parse_duration(v: &str) -> Option<Duration> {
    let (number, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1.0)
    } else {
        return None;
    };
    Some(Duration::from_secs_f64(number.parse::<f64>().ok()? * scale))
}

/// Two nginx processes (each a master and its workers), stopped when dropped.
pub struct Nginx {
    children: Vec<Child>,
    /// The front nginx, which proxies to the second.
    pub addr: SocketAddr,
}

impl Nginx {
    /// Whether Debian's nginx is installed (`apt-get install nginx`).
    pub fn installed() -> bool {
        Path::new("/usr/sbin/nginx").exists()
    }

    /// nginx on a loopback port proxying every request, over a keep-alive upstream, to a second
    /// nginx that answers `body` as JSON.
    pub fn proxy_pair(dir: &Path, body: &str) -> Nginx {
        let free_port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port()
        };
        let (front, back) = (free_port(), free_port());
        let backend = format!(
            "server {{ listen 127.0.0.1:{back}; keepalive_requests 1000000; \
             location / {{ default_type application/json; return 200 '{body}'; }} }}"
        );
        let proxy = format!(
            "upstream backend {{ server 127.0.0.1:{back}; keepalive 128; keepalive_requests 1000000; }} \
             server {{ listen 127.0.0.1:{front}; keepalive_requests 1000000; \
             location / {{ proxy_pass http://backend; proxy_http_version 1.1; \
             proxy_set_header Connection \"\"; proxy_buffering on; }} }}"
        );
        let mut children = Vec::new();
        for (name, server) in [("back", backend), ("front", proxy)] {
            let prefix = dir.join(format!("nginx-{name}"));
            std::fs::create_dir_all(&prefix).expect("the nginx directory");
            let conf = write_conf(&prefix, &server);
            let child = Command::new("/usr/sbin/nginx")
                .arg("-p")
                .arg(&prefix)
                .arg("-c")
                .arg(&conf)
                .args(["-g", "daemon off;"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting nginx");
            children.push(child);
        }
        let addr: SocketAddr = format!("127.0.0.1:{front}").parse().expect("an address");
        for port in [back, front] {
            let mut up = false;
            for _ in 0..200 {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    up = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            assert!(up, "nginx did not listen on 127.0.0.1:{port}");
        }
        Nginx { children, addr }
    }
}

/// A whole nginx configuration for one `server` block, everything under `prefix`.
fn write_conf(prefix: &Path, server: &str) -> PathBuf {
    let p = prefix.display();
    let conf = format!(
        "worker_processes auto;\nuser root;\npid {p}/nginx.pid;\nerror_log {p}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n\
         fastcgi_temp_path {p}/fastcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n\
         {server}\n}}\n"
    );
    let path = prefix.join("nginx.conf");
    std::fs::write(&path, conf).expect("writing nginx.conf");
    path
}

impl Drop for Nginx {
    fn drop(&mut self) {
        for child in &mut self.children {
            // SIGTERM: the master stops its workers (a SIGKILL would orphan them).
            let _ = Command::new("kill").arg(child.id().to_string()).status();
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
    }
}
