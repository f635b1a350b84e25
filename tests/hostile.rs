//! Hostile tenants against the real server, the real sandbox and real handler processes.
//!
//! One compiled "attacker" app takes the attack to run from its request; a neighbouring app is
//! called throughout and must keep answering. Canaries with random markers sit where an
//! attacker would look: another app's artifact and environment (in the store), the server's
//! data directory, `/root`, the server's own environment. Every test fails if a marker shows up
//! in an answer or a log, if an attack is not refused or contained, or if a process is left.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;
use support::platform::*;

const ATTACKER: &str = r#"
use ignite::prelude::*;
use std::io::Write;

fn outcome<T>(r: std::io::Result<T>, ok: &str) -> String {
    match r {
        Ok(_) => ok.to_string(),
        Err(e) => format!("refused: {e}"),
    }
}

fn read_all(path: &str) -> String {
    match std::fs::read(path) {
        Ok(b) => format!("READ {}", String::from_utf8_lossy(&b)),
        Err(e) => format!("refused: {e}"),
    }
}

#[ignite::main]
async fn handler(req: Request, _ctx: Context) -> Result<impl IntoResponse> {
    let attack: String = req.field("attack")?;
    let out: String = match attack.as_str() {
        "read" => {
            let paths: Vec<String> = req.field("paths")?;
            paths.iter().map(|p| format!("{p} => {}\n", read_all(p))).collect()
        }
        "look_around" => {
            let mut out = String::new();
            for (k, v) in std::env::vars() {
                out.push_str(&format!("env {k}={v}\n"));
            }
            let pids: Vec<String> = std::fs::read_dir("/proc")
                .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<u32>().is_ok()).collect())
                .unwrap_or_default();
            for pid in &pids {
                out.push_str(&format!("pid {pid} environ {}\n", read_all(&format!("/proc/{pid}/environ"))));
                out.push_str(&format!("pid {pid} cmdline {}\n", read_all(&format!("/proc/{pid}/cmdline"))));
            }
            out.push_str(&format!("pids {}\n", pids.join(",")));
            let root: Vec<String> = std::fs::read_dir("/")
                .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            out.push_str(&format!("root {}\n", root.join(",")));
            out
        }
        "ptrace" => {
            let pid: i32 = req.field("pid")?;
            // SAFETY: PTRACE_ATTACH takes no pointers.
            let rc = unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid, 0, 0) };
            outcome(if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }, "ATTACHED")
        }
        "raw_socket" => {
            // SAFETY: socket takes no pointers.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
            outcome(if fd < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }, "OPENED")
        }
        "connect" => {
            let addrs: Vec<String> = req.field("addrs")?;
            addrs.iter().map(|a| {
                let r = a.parse().map_err(std::io::Error::other).and_then(|a| {
                    std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(1))
                });
                format!("{a} => {}\n", outcome(r, "CONNECTED"))
            }).collect()
        }
        "resolve" => {
            let name: String = req.field("name")?;
            match std::net::ToSocketAddrs::to_socket_addrs(&(name.as_str(), 443)) {
                Ok(addrs) => format!("RESOLVED {}", addrs.map(|a| a.ip().to_string()).collect::<Vec<_>>().join(",")),
                Err(e) => e.to_string(),
            }
        }
        "fork_bomb" => {
            let mut forked = 0;
            let mut error = String::new();
            for _ in 0..100_000 {
                // SAFETY: the child only sleeps, then exits without unwinding.
                match unsafe { libc::fork() } {
                    0 => unsafe {
                        libc::sleep(600);
                        libc::_exit(0)
                    },
                    pid if pid > 0 => forked += 1,
                    _ => {
                        error = std::io::Error::last_os_error().to_string();
                        break;
                    }
                }
            }
            format!("forked {forked}; then: {error}")
        }
        "alloc" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![7u8; 1 << 20]);
                if hoard.len() % 1024 == 0 {
                    eprintln!("holding {} MiB", hoard.len());
                }
            }
        }
        "write_outside" => {
            ["/evil", "/etc/evil", "/proc/evil", "/dev/evil"]
                .iter()
                .map(|p| format!("{p} => {}\n", outcome(std::fs::write(p, b"x"), "WRITTEN")))
                .collect()
        }
        "fill_tmp" => {
            let mut file = std::fs::File::create("/tmp/fill")?;
            let chunk = vec![1u8; 1 << 20];
            let mut mib = 0;
            let error = loop {
                match file.write_all(&chunk) {
                    Ok(()) => mib += 1,
                    Err(e) => break e.to_string(),
                }
                if mib > 4096 {
                    break "no limit".to_string();
                }
            };
            format!("wrote {mib} MiB; then: {error}")
        }
        "spin" => loop {
            std::hint::spin_loop();
        },
        "close_channel" => {
            // Close every descriptor (the runtime channel among them), then live on.
            for fd in 0..1024 {
                // SAFETY: closing descriptors this process owns; nothing uses them after.
                unsafe { libc::close(fd) };
            }
            std::thread::sleep(std::time::Duration::from_secs(600));
            "still here".to_string()
        }
        "flood_stderr" => {
            let line = "x".repeat(1023);
            for _ in 0..20 * 1024 {
                eprintln!("{line}");
            }
            "flooded".to_string()
        }
        other => format!("no attack {other}"),
    };
    Ok(out)
}
"#;

const NEIGHBOUR: &str = r#"
use ignite::prelude::*;

#[ignite::main]
async fn handler(_req: Request, _ctx: Context) -> Result<impl IntoResponse> {
    Ok("still here".to_string())
}
"#;

/// A random marker, different in every test run.
fn marker(what: &str) -> String {
    format!(
        "CANARY-{what}-{}",
        ulid::Ulid::new().to_string().to_lowercase()
    )
}

struct Arena {
    server: Server,
    dir: PathBuf,
    markers: Vec<String>,
    /// The neighbour's artifact, which holds a marker.
    neighbour_exe: PathBuf,
    root_canary: PathBuf,
    calls: Arc<AtomicU32>,
    failures: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    caller: Option<std::thread::JoinHandle<()>>,
}

impl Arena {
    /// A server with the attacker and its neighbour deployed, canaries planted, and a thread
    /// calling the neighbour until [`Arena::finish`].
    fn new(name: &str) -> Arena {
        let dir = scratch(&format!("hostile-{name}"));
        let env_marker = marker("server-env");
        let server = start_server_env(&dir, &[], &[("IGNITE_TEST_SECRET", &env_marker)]);
        let data_marker = marker("data-dir");
        std::fs::write(server.dir.join("data/canary"), &data_marker).unwrap();
        let root_marker = marker("root");
        let root_canary = PathBuf::from(format!("/root/ignite-canary-{}", ulid::Ulid::new()));
        std::fs::write(&root_canary, &root_marker).unwrap();

        let artifact_marker = marker("artifact");
        let store_marker = marker("store");
        let neighbour = project(
            &dir,
            "neighbour",
            &format!("{NEIGHBOUR}\n#[used]\nstatic SECRET: &str = \"{artifact_marker}\";\n"),
        );
        deploy(&server, &neighbour, "acme-corp:neighbour", "./");
        ok(
            &server,
            &neighbour,
            &[
                "app",
                "set-env",
                "acme-corp:neighbour",
                &format!("SECRET={store_marker}"),
            ],
        );
        let neighbour_exe = artifact_of(&server, &neighbour, "acme-corp:neighbour");
        let attacker = project(&dir, "attacker", ATTACKER);
        let manifest = attacker.join("Cargo.toml");
        let mut toml = std::fs::read_to_string(&manifest).unwrap();
        toml.push_str("libc = \"0.2\"\n");
        std::fs::write(&manifest, toml).unwrap();
        deploy(&server, &attacker, "acme-corp:attacker", "./");
        ok(
            &server,
            &attacker,
            &[
                "app",
                "scale",
                "acme-corp:attacker",
                "--timeout",
                "3",
                "--memory",
                "128",
            ],
        );

        let calls = Arc::new(AtomicU32::new(0));
        let failures = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let caller = {
            let (gateway, calls, failures, stop) = (
                server.gateway.clone(),
                calls.clone(),
                failures.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let (status, body) =
                        http(&gateway, "neighbour-acme-corp.ignite.localhost", "{}");
                    calls.fetch_add(1, Ordering::Relaxed);
                    if status != 200 || body != "still here" {
                        eprintln!("the neighbour answered {status}: {body}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        Arena {
            server,
            dir,
            markers: vec![
                env_marker,
                data_marker,
                root_marker,
                artifact_marker,
                store_marker,
            ],
            neighbour_exe,
            root_canary,
            calls,
            failures,
            stop,
            caller: Some(caller),
        }
    }

    /// Runs an attack through the public URL: (status, body, execution record).
    fn attack(&self, request: Value) -> (u16, String, Value) {
        let (status, headers, body) = http_full(
            &self.server.gateway,
            "attacker-acme-corp.ignite.localhost",
            "POST",
            "/",
            &request.to_string(),
        );
        let id = header(&headers, "x-ignite-execution-id")
            .unwrap_or_else(|| panic!("no execution id ({status}): {body}"))
            .to_string();
        let record = self.record(&id);
        self.assert_no_leak(&body);
        self.assert_no_leak(&record.to_string());
        (status, body, record)
    }

    fn record(&self, id: &str) -> Value {
        let mut last = Value::Null;
        for _ in 0..100 {
            last = json(&ok(
                &self.server,
                &self.dir,
                &["execution", "get", id, "-o", "json"],
            ));
            if last["status"] != "running" {
                return last;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("execution {id} still running: {last}");
    }

    fn assert_no_leak(&self, text: &str) {
        for m in &self.markers {
            assert!(!text.contains(m.as_str()), "leaked {m}: {text}");
        }
    }

    fn attacker_processes(&self) -> Vec<u32> {
        let exe = artifact_of(
            &self.server,
            &self.dir.join("attacker"),
            "acme-corp:attacker",
        );
        all_pids_running(&exe)
    }

    /// Stops the neighbour's caller and checks it was served throughout.
    fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(caller) = self.caller.take() {
            caller.join().unwrap();
        }
        let calls = self.calls.load(Ordering::Relaxed);
        assert!(calls > 0, "the neighbour was never called");
        assert_eq!(
            self.failures.load(Ordering::Relaxed),
            0,
            "the neighbour failed some of {calls} calls"
        );
        // The attacker leaves nothing behind once its app is gone.
        let exe = artifact_of(
            &self.server,
            &self.dir.join("attacker"),
            "acme-corp:attacker",
        );
        ok(
            &self.server,
            &self.dir,
            &["app", "delete", "acme-corp:attacker"],
        );
        wait_until(
            Duration::from_secs(10),
            "the attacker's processes to go",
            || all_pids_running(&exe).is_empty(),
        );
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.root_canary);
    }
}

/// Every process running `exe`, not only the instances' roots.
fn all_pids_running(exe: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == exe))
        .filter(|pid| support::process_alive(*pid))
        .collect()
}

fn refused(text: &str) -> bool {
    text.contains("refused:")
}

#[test]
fn the_host_and_other_tenants_are_out_of_sight() {
    let arena = Arena::new("sight");
    let data = arena.server.dir.join("data");
    let paths = vec![
        data.join("canary").display().to_string(),
        data.join("ignite.db").display().to_string(),
        arena.neighbour_exe.display().to_string(),
        arena.root_canary.display().to_string(),
        format!("/proc/{}/environ", arena.server.pid()),
        "/etc/passwd".to_string(),
        "/etc/hostname".to_string(),
    ];
    let (status, body, _) = arena.attack(serde_json::json!({"attack": "read", "paths": paths}));
    assert_eq!(status, 200, "{body}");
    for p in &paths {
        let line = body
            .lines()
            .find(|l| l.starts_with(p.as_str()))
            .unwrap_or_default();
        assert!(refused(line), "{p} was readable: {line}");
    }
    let (status, body, _) = arena.attack(serde_json::json!({"attack": "look_around"}));
    assert_eq!(status, 200, "{body}");
    // Only its own processes (the instance's init and the handler), no host ones.
    let pids = body
        .lines()
        .find_map(|l| l.strip_prefix("pids "))
        .unwrap_or_default();
    assert!(
        pids.split(',')
            .all(|p| p.parse::<u32>().is_ok_and(|p| p <= 2)),
        "sees other processes: {pids}"
    );
    let root = body
        .lines()
        .find_map(|l| l.strip_prefix("root "))
        .unwrap_or_default();
    let mut entries: Vec<&str> = root.split(',').collect();
    entries.sort();
    assert_eq!(entries, ["dev", "proc", "tmp"], "{body}");
    assert!(!body.contains("env IGNITE_TEST_SECRET"), "{body}");
    arena.finish();
}

#[test]
fn no_debugging_raw_sockets_or_network() {
    let arena = Arena::new("net");
    let neighbour_pid = all_pids_running(&arena.neighbour_exe)
        .first()
        .copied()
        .unwrap_or(arena.server.pid());
    for pid in [neighbour_pid, arena.server.pid(), 1, 2] {
        let (status, body, _) = arena.attack(serde_json::json!({"attack": "ptrace", "pid": pid}));
        assert_eq!(status, 200, "{body}");
        assert!(refused(&body), "ptrace {pid}: {body}");
    }
    let (_, body, _) = arena.attack(serde_json::json!({"attack": "raw_socket"}));
    assert!(refused(&body), "{body}");
    let addrs = vec![
        arena.server.api.clone(),
        arena.server.gateway.clone(),
        "10.0.0.1:80".to_string(),
        "169.254.169.254:80".to_string(),
        "1.1.1.1:443".to_string(),
    ];
    let (status, body, _) = arena.attack(serde_json::json!({"attack": "connect", "addrs": addrs}));
    assert_eq!(status, 200, "{body}");
    for a in &addrs {
        let line = body
            .lines()
            .find(|l| l.starts_with(a.as_str()))
            .unwrap_or_default();
        assert!(refused(line), "{a} reachable: {line}");
    }
    arena.finish();
}

#[path = "../crates/sandbox/tests/support/internet.rs"]
mod internet;

#[test]
fn internet_access_is_an_app_setting_off_by_default_that_never_reaches_private_addresses() {
    let internet = internet::Internet::shared();
    assert!(internet.reachable_from_host(), "the stand-in is up");
    let arena = Arena::new("egress");
    let host_service = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let host_service = format!(
        "{}:{}",
        internet::HOST_SIDE,
        host_service.local_addr().unwrap().port()
    );
    let public = internet.public.to_string();
    let private = internet.private.to_string();
    let addrs = vec![
        public.clone(),
        private.clone(),
        host_service.clone(),
        arena.server.api.clone(),
        "169.254.169.254:80".to_string(),
    ];
    let connect = |arena: &Arena| {
        let (status, body, _) =
            arena.attack(serde_json::json!({"attack": "connect", "addrs": addrs}));
        assert_eq!(status, 200, "{body}");
        addrs
            .iter()
            .map(|a| {
                let line = body.lines().find(|l| l.starts_with(a.as_str()));
                (a.clone(), line.unwrap_or_default().to_string())
            })
            .collect::<std::collections::HashMap<_, _>>()
    };
    let app = |field: &str| {
        json(&ok(
            &arena.server,
            &arena.dir,
            &["app", "get", "acme-corp:attacker", "-o", "json"],
        ))["network"][field]
            .clone()
    };

    // Off by default: not even the public address.
    assert_eq!(app("egress"), false);
    let seen = connect(&arena);
    assert!(refused(&seen[&public]), "{seen:?}");

    // On: the public address answers; nothing private, local or on the node does (dropped, so
    // each of those waits out its 1 s connect timeout: the deadline makes room).
    ok(
        &arena.server,
        &arena.dir,
        &["app", "scale", "acme-corp:attacker", "--timeout", "15"],
    );
    let out = ok(
        &arena.server,
        &arena.dir,
        &["app", "network", "acme-corp:attacker", "--egress", "on"],
    );
    assert!(out.contains("egress on"), "{out}");
    assert_eq!(app("egress"), true);
    let seen = connect(&arena);
    assert!(seen[&public].ends_with("CONNECTED"), "{seen:?}");
    for blocked in [
        &private,
        &host_service,
        &arena.server.api,
        "169.254.169.254:80",
    ] {
        assert!(refused(&seen[blocked]), "{blocked} reachable: {seen:?}");
    }
    let (_, resolv, _) =
        arena.attack(serde_json::json!({"attack": "read", "paths": ["/etc/resolv.conf"]}));
    assert!(resolv.contains("nameserver"), "{resolv}");
    // Names resolve through the node's resolvers wherever the node itself can resolve them.
    if std::net::ToSocketAddrs::to_socket_addrs(&("index.crates.io", 443)).is_ok() {
        let (_, body, _) =
            arena.attack(serde_json::json!({"attack": "resolve", "name": "index.crates.io"}));
        assert!(body.starts_with("RESOLVED"), "{body}");
    }

    // Off again: takes effect for the next request, at once.
    let out = ok(
        &arena.server,
        &arena.dir,
        &["app", "network", "acme-corp:attacker", "--egress", "off"],
    );
    assert!(out.contains("no network"), "{out}");
    let seen = connect(&arena);
    assert!(refused(&seen[&public]), "{seen:?}");

    // A switch that is neither on nor off is refused with the choices.
    let err = fails(
        &arena.server,
        &arena.dir,
        &["app", "network", "acme-corp:attacker", "--egress", "maybe"],
    );
    assert!(err.contains("neither on nor off"), "{err}");
    arena.finish();
}

#[test]
fn the_dependency_fetch_reaches_the_registry_and_nothing_else() {
    // The server's fetch runs as `dodil ignite __fetch --proxy <socket> -- cargo fetch …`; here
    // the same wrapper runs a shell that tries every way out, with the stand-in internet's
    // public service as "the registry".
    let internet = internet::Internet::shared();
    let dir = scratch("fetch-network");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let registry = internet.public.to_string();
    let proxy = runtime
        .block_on(async {
            ignite_builder::RegistryProxy::start(&dir.join("proxy.sock"), &[registry.as_str()])
        })
        .unwrap();
    let node = format!("{}:22", internet::HOST_SIDE);
    let script = format!(
        r#"port=${{CARGO_HTTP_PROXY##*:}}
tunnel() {{
  exec 3<>/dev/tcp/127.0.0.1/$port || {{ echo "$1 => no proxy"; return; }}
  printf 'CONNECT %s HTTP/1.1\r\n\r\n' "$2" >&3
  echo "$1 => $(head -c 300 <&3 | tr -d '\r' | tr '\n' ' ')"
  exec 3<&-
}}
tunnel registry {registry}
tunnel private {private}
tunnel node {node}
(echo > /dev/tcp/{host}/{port}) 2>/dev/null && echo "direct => CONNECTED" || echo "direct => refused"
"#,
        private = internet.private,
        host = internet.public.ip(),
        port = internet.public.port(),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dodil"))
        .args(["ignite", "__fetch", "--proxy"])
        .arg(proxy.path())
        .args(["--", "bash", "-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name} =>")))
            .unwrap_or_else(|| panic!("no {name} line: {stdout}"))
            .to_string()
    };
    let through = line("registry");
    assert!(through.contains("HTTP/1.1 200"), "{stdout}");
    assert!(through.contains(internet::GREETING), "{stdout}");
    for refused in ["private", "node"] {
        let l = line(refused);
        assert!(l.contains("HTTP/1.1 403"), "{stdout}");
        assert!(l.contains("may only reach the registry"), "{stdout}");
    }
    assert_eq!(line("direct"), "direct => refused", "{stdout}");
    drop(proxy);
}

#[test]
fn a_fork_bomb_is_contained_and_leaves_nothing() {
    let arena = Arena::new("fork");
    let (status, body, record) = arena.attack(serde_json::json!({"attack": "fork_bomb"}));
    assert_eq!(status, 200, "{body}");
    let forked: u32 = body
        .strip_prefix("forked ")
        .and_then(|r| r.split(';').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{body}"));
    assert!(forked < 64, "{body}");
    assert_eq!(record["status"], "succeeded");
    assert!(!arena.attacker_processes().is_empty());
    // Scale to zero: the instance and everything it forked are gone.
    ok(
        &arena.server,
        &arena.dir,
        &["app", "scale", "acme-corp:attacker", "--idle-timeout", "1"],
    );
    wait_until(
        Duration::from_secs(15),
        "the attacker's processes to go",
        || arena.attacker_processes().is_empty(),
    );
    arena.finish();
}

#[test]
fn memory_without_bound_is_killed_and_recorded_as_oom() {
    let arena = Arena::new("oom");
    let (status, body, record) = arena.attack(serde_json::json!({"attack": "alloc"}));
    assert_eq!(status, 502, "{body}");
    assert_eq!(record["status"], "oom", "{record}");
    assert!(
        body.contains("128 MiB") && body.contains("app scale"),
        "{body}"
    );
    // The next request gets a fresh instance.
    let (status, body, _) = arena.attack(serde_json::json!({"attack": "none"}));
    assert_eq!((status, body.as_str()), (200, "no attack none"));
    arena.finish();
}

#[test]
fn the_filesystem_is_read_only_but_tmp_and_tmp_is_capped() {
    let arena = Arena::new("fs");
    let (status, body, _) = arena.attack(serde_json::json!({"attack": "write_outside"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.lines().filter(|l| refused(l)).count(), 4, "{body}");
    let (status, body, _) = arena.attack(serde_json::json!({"attack": "fill_tmp"}));
    assert_eq!(status, 200, "{body}");
    let mib: u32 = body
        .strip_prefix("wrote ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{body}"));
    // /tmp is a 64 MiB tmpfs, and its pages count against the app's memory.
    assert!(mib <= 64 && body.contains("No space left"), "{body}");
    arena.finish();
}

#[test]
fn a_spinning_handler_is_stopped_and_one_that_cuts_its_channel_is_reaped() {
    let arena = Arena::new("spin");
    let (status, body, record) = arena.attack(serde_json::json!({"attack": "spin"}));
    assert_eq!(status, 504, "{body}");
    assert_eq!(record["status"], "timeout");
    let (status, body, record) = arena.attack(serde_json::json!({"attack": "close_channel"}));
    assert_eq!(status, 502, "{body}");
    assert_eq!(record["status"], "crashed", "{record}");
    // Neither leaves a process.
    wait_until(
        Duration::from_secs(10),
        "the attacker's processes to go",
        || arena.attacker_processes().is_empty(),
    );
    let (status, body, _) = arena.attack(serde_json::json!({"attack": "none"}));
    assert_eq!((status, body.as_str()), (200, "no attack none"));
    arena.finish();
}

#[test]
fn a_stderr_flood_is_truncated_and_counted() {
    let arena = Arena::new("flood");
    let (status, body, record) = arena.attack(serde_json::json!({"attack": "flood_stderr"}));
    assert_eq!((status, body.as_str()), (200, "flooded"));
    let logs = record["logs"].as_array().unwrap();
    let kept: usize = logs.iter().map(|l| l.as_str().unwrap_or("").len()).sum();
    assert!(kept <= 300 * 1024, "kept {kept} bytes of log");
    let last = logs.last().and_then(|l| l.as_str()).unwrap_or("");
    assert!(last.contains("bytes of log dropped"), "{last}");
    arena.finish();
}

/// Sends a request that declares `declared` body bytes but sends only a few: a server that
/// waited for the whole body would not answer.
fn declare_huge(addr: &str, head: &str, declared: u64) -> (u16, String) {
    send_raw(
        addr,
        &format!("{head}Content-Length: {declared}\r\nConnection: close\r\n\r\n{{\"x\": \""),
    )
}

#[test]
fn bad_input_is_refused_early_with_a_reason() {
    let dir = scratch("hostile-input");
    let server = start_server(&dir);
    let p = project(&dir, "calm", NEIGHBOUR);
    deploy(&server, &p, "acme-corp:calm", "./");
    let auth = format!("Authorization: Bearer {}\r\n", token(&server));

    // Oversized bodies: 413 from the declared length, without waiting for the bytes.
    let (status, body) = declare_huge(
        &server.gateway,
        "POST / HTTP/1.1\r\nHost: calm-acme-corp.ignite.localhost\r\n",
        100 << 20,
    );
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("limit"), "{body}");
    let (status, body) = declare_huge(
        &server.api,
        &format!("POST /v1/apps/acme-corp/calm/invoke HTTP/1.1\r\nHost: x\r\n{auth}"),
        100 << 20,
    );
    assert_eq!(status, 413, "{body}");
    let (status, body) = declare_huge(
        &server.api,
        &format!(
            "PUT /v1/apps/acme-corp/calm/draft?runtime=rust&rust_target=native HTTP/1.1\r\nHost: x\r\n{auth}"
        ),
        1 << 30,
    );
    assert_eq!(status, 413, "{body}");
    // Just under the invoke limit still goes through.
    let (status, body) = http(
        &server.gateway,
        "calm-acme-corp.ignite.localhost",
        &"x".repeat(5 << 20),
    );
    assert_eq!((status, body.as_str()), (200, "still here"));

    // Malformed ids, names and JSON: 4xx naming the problem.
    let out = fails(&server, &p, &["execution", "get", "not-an-id"]);
    assert!(
        out.contains("not an execution id") && out.contains("ULID"),
        "{out}"
    );
    let out = fails(
        &server,
        &p,
        &["app", "create", "Bad_Name!", "--runtime", "rust"],
    );
    assert!(out.contains("invalid app name"), "{out}");
    let out = fails(&server, &p, &["app", "get", "no-colon-here"]);
    assert!(out.contains("org:name"), "{out}");
    let payload = "{\"name\": 42";
    let (status, body) = send_raw(
        &server.api,
        &format!(
            "POST /v1/apps HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
            payload.len()
        ),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not the JSON this endpoint takes"), "{body}");
}

/// Creates app `name`, saves `p` as its native draft, compiles it and follows the compile to
/// its end: the output of `draft compile-logs`.
fn compile_and_follow(server: &Server, p: &Path, name: &str) -> std::process::Output {
    ok(server, p, &["app", "create", name, "--runtime", "rust"]);
    let id = format!("acme-corp:{name}");
    save_native(server, p, &id, "./");
    ok(server, p, &["draft", "compile", &id]);
    dodil(server, p, &["draft", "compile-logs", &id])
}

/// A project whose build script is `build_rs`; returns the draft after `compile` finished,
/// the compile log, and the server (for more checks).
fn hostile_build(
    name: &str,
    flags: &[&str],
    env: &[(&str, &str)],
    build_rs: &str,
) -> (Value, String, Server, PathBuf) {
    let dir = scratch(&format!("hostile-build-{name}"));
    let server = start_server_env(&dir, flags, env);
    let p = project(&dir, name, NEIGHBOUR);
    std::fs::write(p.join("build.rs"), build_rs).unwrap();
    let out = compile_and_follow(&server, &p, name);
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let versions = json(&ok(
        &server,
        &p,
        &[
            "version",
            "list",
            &format!("acme-corp:{name}"),
            "-o",
            "json",
        ],
    ));
    let draft = versions["versions"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["version"] == 0))
        .cloned()
        .unwrap_or_else(|| panic!("no draft in {versions}"));
    (draft, log, server, p)
}

#[test]
fn a_build_script_cannot_read_the_host_or_smuggle_it_out() {
    let env_marker = marker("server-env");
    let root_marker = marker("root");
    let root_canary = PathBuf::from(format!("/root/ignite-canary-{}", ulid::Ulid::new()));
    std::fs::write(&root_canary, &root_marker).unwrap();
    let dir = scratch("hostile-build-peek");
    let data_marker = marker("data-dir");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(dir.join("data/canary"), &data_marker).unwrap();
    let paths = [
        dir.join("data/canary"),
        dir.join("data/ignite.db"),
        root_canary.clone(),
        PathBuf::from("/proc/1/environ"),
        PathBuf::from("/etc/passwd"),
    ];
    let build_rs = format!(
        r#"
fn main() {{
    let mut found = String::new();
    for p in {paths:?} {{
        let r = std::fs::read(p).map(|b| String::from_utf8_lossy(&b).into_owned());
        println!("cargo::warning=read {{p}}: {{}}", match &r {{ Ok(t) => t.clone(), Err(e) => e.to_string() }});
        if let Ok(t) = r {{ found.push_str(&t); }}
    }}
    for (k, v) in std::env::vars() {{
        println!("cargo::warning=env {{k}}={{v}}");
        found.push_str(&v);
    }}
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("found.txt");
    std::fs::write(out, found).unwrap();
}}
"#
    );
    let (draft, log, server, _) = hostile_build(
        "peek",
        &[],
        &[("IGNITE_TEST_SECRET", &env_marker)],
        &build_rs,
    );
    let _ = std::fs::remove_file(&root_canary);
    // Reading failed, and the build itself went through.
    assert_eq!(draft["compile_status"], "compiled", "{log}");
    assert!(log.contains("read /etc/passwd: No such file"), "{log}");
    for m in [&env_marker, &root_marker, &data_marker] {
        assert!(!log.contains(m.as_str()), "the log leaked {m}: {log}");
    }
    // Nor did anything reach the artifact or the build's outputs.
    let digest = draft["artifact_digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    let binary = std::fs::read(server.dir.join("data/blobs/sha256").join(digest)).unwrap();
    let found = walk_contents(&support::target_dir());
    for m in [&env_marker, &root_marker, &data_marker] {
        assert!(
            !binary.windows(m.len()).any(|w| w == m.as_bytes()),
            "the artifact holds {m}"
        );
        assert!(!found.contains(m.as_str()), "a build output holds {m}");
    }
}

/// Every `found.txt` a build script wrote under `dir`.
fn walk_contents(dir: &Path) -> String {
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            out.push_str(&walk_contents(&path));
        } else if path.file_name().is_some_and(|n| n == "found.txt") {
            out.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
        }
    }
    out
}

#[test]
fn a_build_script_has_no_network() {
    let (draft, log, server, _) = hostile_build(
        "dialer",
        &[],
        &[],
        r#"
fn main() {
    for addr in ["127.0.0.1:1", "1.1.1.1:443", "169.254.169.254:80"] {
        match std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), std::time::Duration::from_secs(2)) {
            Ok(_) => println!("cargo::warning=CONNECTED to {addr}"),
            Err(e) => panic!("no network to {addr}: {e}"),
        }
    }
}
"#,
    );
    let _ = server;
    assert_eq!(draft["compile_status"], "failed", "{log}");
    assert!(log.contains("no network to 127.0.0.1:1"), "{log}");
    assert!(!log.contains("CONNECTED"), "{log}");
}

#[test]
fn a_build_that_writes_without_end_is_stopped_for_disk() {
    let (draft, log, _server, _) = hostile_build(
        "writer",
        &["--build-disk-mb", "64"],
        &[],
        r#"
use std::io::Write;
fn main() {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let chunk = vec![7u8; 1 << 20];
    for i in 0..10_240 {
        let mut f = std::fs::File::create(out.join(format!("junk-{}", i % 1000))).unwrap();
        for _ in 0..8 { f.write_all(&chunk).unwrap(); }
    }
}
"#,
    );
    assert_eq!(draft["compile_status"], "disk_full", "{log}");
    assert!(
        draft["compile_error"]
            .as_str()
            .unwrap_or("")
            .contains("64 MiB disk budget"),
        "{draft}"
    );
}

#[test]
fn a_build_that_allocates_without_end_is_stopped_for_memory() {
    let (draft, log, _server, _) = hostile_build(
        "hoarder",
        &["--build-memory-mb", "256"],
        &[],
        r#"
fn main() {
    let mut hoard = Vec::new();
    loop { hoard.push(vec![3u8; 1 << 20]); }
}
"#,
    );
    assert_eq!(draft["compile_status"], "oom", "{log}");
    assert!(
        draft["compile_error"]
            .as_str()
            .unwrap_or("")
            .contains("256 MiB"),
        "{draft}"
    );
}

#[test]
fn a_build_that_never_ends_is_stopped_and_its_log_is_capped() {
    let (draft, log, _server, _) = hostile_build(
        "chatter",
        &["--build-timeout", "20"],
        &[],
        r#"
fn main() {
    let line = "y".repeat(200);
    for _ in 0..40_000 { println!("cargo::warning={line}"); }
    loop { std::thread::sleep(std::time::Duration::from_secs(1)); }
}
"#,
    );
    assert_eq!(draft["compile_status"], "timed_out", "{log}");
    let _ = log;
    let (draft, log, _server, _) = hostile_build(
        "chatter2",
        &[],
        &[],
        r#"
fn main() {
    let line = "z".repeat(200);
    for _ in 0..40_000 { println!("cargo::warning={line}"); }
}
"#,
    );
    assert_eq!(draft["compile_status"], "compiled", "{log}");
    assert!(log.len() < 5 << 20, "the log holds {} bytes", log.len());
    assert!(
        log.contains("[compile log truncated:"),
        "{}",
        &log[log.len().saturating_sub(500)..]
    );
}

#[test]
fn dependencies_from_elsewhere_than_crates_io_are_refused_before_any_fetch() {
    let dir = scratch("hostile-build-sources");
    let server = start_server(&dir);
    for (name, extra, expect) in [
        (
            "gitdep",
            "evil = { git = \"http://169.254.169.254/evil.git\" }\n",
            "git dependencies are not supported",
        ),
        (
            "regdep",
            "evil = { version = \"1\", registry-index = \"http://169.254.169.254/index\" }\n",
            "names another registry",
        ),
        (
            "pathdep",
            "evil = { path = \"../../../../evil\" }\n",
            "outside the project",
        ),
        (
            "patchdep",
            "\n[patch.crates-io]\nserde = { git = \"http://169.254.169.254/serde.git\" }\n",
            "git dependencies are not supported",
        ),
    ] {
        let p = project(&dir, name, NEIGHBOUR);
        let manifest = p.join("Cargo.toml");
        let mut toml = std::fs::read_to_string(&manifest).unwrap();
        toml.push_str(extra);
        std::fs::write(&manifest, toml).unwrap();
        let out = compile_and_follow(&server, &p, name);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{name}: {err}");
        assert!(
            err.contains("evil") || err.contains("serde"),
            "{name}: {err}"
        );
    }
}

/// A manifest outside the project that cargo's parse error would quote, were it read.
fn plant_outside_manifest(at: &Path, canary: &str) {
    std::fs::create_dir_all(at.join("src")).unwrap();
    std::fs::write(at.join("Cargo.toml"), format!("not a manifest {canary}\n")).unwrap();
    std::fs::write(at.join("src/lib.rs"), "").unwrap();
}

#[test]
fn manifest_paths_that_leave_the_project_are_refused_before_cargo_reads_them() {
    let dir = scratch("hostile-build-escapes");
    let server = start_server(&dir);
    let canary = marker("outside-manifest");
    let outside = dir.join("outside");
    plant_outside_manifest(&outside, &canary);
    let outside = format!("{:?}", outside.display().to_string());
    let sub = |extra: &str| {
        format!("[package]\nname = \"evil-sub\"\nversion = \"0.1.0\"\nedition = \"2021\"\n{extra}")
    };
    let cases: Vec<(&str, String, Option<String>, &str)> = vec![
        (
            "wsdeps",
            format!(
                "evil = {{ workspace = true }}\n\n[workspace.dependencies]\nevil = {{ path = {outside} }}\n"
            ),
            None,
            "workspace.dependencies.evil.path",
        ),
        (
            "nested",
            "evil-sub = { path = \"sub\" }\n".into(),
            Some(sub(
                "\n[dependencies]\nevil = { path = \"../../outside\" }\n",
            )),
            "sub/Cargo.toml",
        ),
        (
            "pkgws",
            "evil-sub = { path = \"sub\" }\n".into(),
            Some(sub("workspace = \"../../outside\"\n")),
            "package.workspace",
        ),
        (
            "patchout",
            format!("\n[patch.crates-io]\nevil = {{ path = {outside} }}\n"),
            None,
            "patch.crates-io.evil.path",
        ),
    ];
    for (name, extra, sub_manifest, key) in cases {
        let p = project(&dir, name, NEIGHBOUR);
        let manifest = p.join("Cargo.toml");
        let mut toml = std::fs::read_to_string(&manifest).unwrap();
        toml.push_str(&extra);
        std::fs::write(&manifest, toml).unwrap();
        if let Some(sub_manifest) = sub_manifest {
            std::fs::create_dir_all(p.join("sub/src")).unwrap();
            std::fs::write(p.join("sub/Cargo.toml"), sub_manifest).unwrap();
            std::fs::write(p.join("sub/src/lib.rs"), "").unwrap();
        }
        // Where ../../outside leads from the unpacked source's sub/.
        plant_outside_manifest(
            &dir.join("data/builds/acme-corp").join(name).join("outside"),
            &canary,
        );
        let out = compile_and_follow(&server, &p, name);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let all = format!("{}{err}", String::from_utf8_lossy(&out.stdout));
        assert!(!out.status.success(), "{name}: {all}");
        assert!(err.contains("outside the project"), "{name}: {err}");
        assert!(err.contains(key), "{name}: {err}");
        assert!(
            err.contains("copy the crate into the project"),
            "{name}: {err}"
        );
        assert!(
            !all.contains(&canary),
            "{name}: cargo read the outside manifest: {all}"
        );
    }
}

#[test]
fn a_project_cargo_config_has_no_effect_on_its_build() {
    let dir = scratch("hostile-build-config");
    let server = start_server(&dir);
    let name = "cargoconfig";
    let lib = format!(
        "#[cfg(evil_flag)]\ncompile_error!(\"the project's rustflags took effect\");\n\
         const _: () = assert!(option_env!(\"EVIL_ENV\").is_none(), \"the project's [env] took effect\");\n\
         {NEIGHBOUR}"
    );
    let p = project(&dir, name, &lib);
    let config = "[build]\nrustc-wrapper = \"./wrap.sh\"\nrustflags = [\"--cfg\", \"evil_flag\"]\n\n\
                  [env]\nEVIL_ENV = \"1\"\n\n[target.x86_64-unknown-linux-musl]\n\
                  linker = \"./wrap.sh\"\nrustflags = [\"--cfg\", \"evil_flag\"]\n";
    for at in [".cargo", "src/.cargo"] {
        std::fs::create_dir_all(p.join(at)).unwrap();
        std::fs::write(p.join(at).join("config.toml"), config).unwrap();
    }
    let wrap = p.join("wrap.sh");
    std::fs::write(
        &wrap,
        "#!/bin/sh\ntouch \"$(dirname \"$0\")/WRAPPER_RAN\"\nexec \"$@\"\n",
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrap, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = compile_and_follow(&server, &p, name);
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{log}");
    assert!(log.contains("removed the project's .cargo"), "{log}");
    assert!(log.contains("removed the project's src/.cargo"), "{log}");
    let src = dir.join("data/builds/acme-corp").join(name).join("src");
    assert!(
        !src.join("WRAPPER_RAN").exists(),
        "the project's rustc-wrapper ran: {log}"
    );
    assert!(!src.join(".cargo").exists() && !src.join("src/.cargo").exists());
}

/// A Python tenant's attacks from inside a fork of its template.
const PY_ATTACKER: &str = r#"import ctypes, os, signal, socket, time
import ignite

@ignite.main
def handler(req, ctx):
    attack = req.field("attack")
    if attack == "signal_init":
        sent = {}
        for name in ["SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGQUIT", "SIGKILL", "SIGSTOP"]:
            try:
                os.kill(1, getattr(signal, name))
                sent[name] = "sent"
            except OSError as e:
                sent[name] = str(e)
        time.sleep(0.2)
        return {"sent": sent}
    if attack == "exit":
        os._exit(3)
    if attack == "garbage":
        for fd in range(3, 64):
            try:
                os.write(fd, b"GARBAGE-NOT-A-FRAME" * 8)
            except OSError:
                pass
        return {"wrote": True}
    if attack == "fork_bomb":
        forked, error = 0, None
        while forked < 10000:
            try:
                pid = os.fork()
            except OSError as e:
                error = str(e)
                break
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            forked += 1
        return {"forked": forked, "error": error}
    if attack == "network":
        out = {}
        for host, port in req.field("targets"):
            try:
                socket.create_connection((host, port), timeout=1).close()
                out[f"{host}:{port}"] = "connected"
            except OSError as e:
                out[f"{host}:{port}"] = "refused: " + str(e)
        return out
    if attack == "syscalls":
        libc = ctypes.CDLL(None, use_errno=True)
        out = {}
        for name, call in [
            ("unshare", lambda: libc.unshare(0x10000000)),
            ("mount", lambda: libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)),
            ("ptrace", lambda: libc.ptrace(16, 1, None, None)),
            ("chroot", lambda: libc.chroot(b"/tmp")),
        ]:
            out[name] = "refused" if call() != 0 else "allowed"
        return out
    if attack == "processes":
        return {"pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit())}
    return {"unknown": attack}
"#;

#[test]
fn a_python_tenant_cannot_stop_its_template_escape_its_fork_or_disturb_a_neighbour() {
    let dir = scratch("hostile-python");
    let server = start_server(&dir);
    let deploy_py = |app: &str, code: &str| {
        let p = dir.join(app);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("main.py"), code).unwrap();
        ok(&server, &p, &["app", "create", app, "--runtime", "python"]);
        let id = format!("acme-corp:{app}");
        ok(
            &server,
            &p,
            &["draft", "save", &id, "--code", "./", "--runtime", "python"],
        );
        ok(&server, &p, &["draft", "publish", &id]);
        p
    };
    let p = deploy_py("pyattack", PY_ATTACKER);
    deploy_py(
        "pyneighbour",
        "import ignite\n\n@ignite.main\nasync def handler(req, ctx):\n    return {\"ok\": True}\n",
    );
    let host = |app: &str| format!("{app}-acme-corp.ignite.localhost");
    let attack = |body: Value| {
        let (status, headers, answer) = http_full(
            &server.gateway,
            &host("pyattack"),
            "POST",
            "/",
            &body.to_string(),
        );
        let id = header(&headers, "x-ignite-execution-id")
            .unwrap_or_else(|| panic!("no execution id ({status}): {answer}"))
            .to_string();
        let record = json(&ok(&server, &p, &["execution", "get", &id, "-o", "json"]));
        (status, answer, record)
    };
    // The neighbour is called throughout and must always answer.
    let stop = Arc::new(AtomicBool::new(false));
    let (calls, failures) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let caller = {
        let (stop, calls, failures) = (stop.clone(), calls.clone(), failures.clone());
        let (gateway, host) = (server.gateway.clone(), host("pyneighbour"));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let (status, body) = http(&gateway, &host, "{}");
                calls.fetch_add(1, Ordering::Relaxed);
                if status != 200 || !body.contains("true") {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    // Signals to pid 1 (its template) from inside: none takes the template down. The instance
    // then exits; the next start is still a fork of the same running template.
    let (status, answer, _) = attack(serde_json::json!({"attack": "signal_init"}));
    assert_eq!(status, 200, "{answer}");
    let (status, _, record) = attack(serde_json::json!({"attack": "exit"}));
    assert_eq!(status, 502);
    assert_eq!(record["status"], "crashed", "{record}");
    let (status, answer, record) = attack(serde_json::json!({"attack": "processes"}));
    assert_eq!(status, 200, "{answer}");
    let phases = &record["metrics"]["cold_start_phases"];
    assert_eq!(phases["start"], "fork", "{record}");
    assert_eq!(
        phases["template_ms"], 0.0,
        "the template survived the signals: {record}"
    );
    // It sees its own namespace only: its template (1), itself, nothing of the host's.
    let pids = json(&answer)["pids"].as_array().unwrap().len();
    assert!(pids <= 3, "{answer}");

    // Garbage on every descriptor it has: a framing error for this request, then a new fork.
    let (status, answer, record) = attack(serde_json::json!({"attack": "garbage"}));
    assert_eq!(status, 502, "{answer}");
    assert!(
        record["error"].to_string().contains("framing") || record["status"] == "crashed",
        "{record}"
    );

    // A fork bomb meets the process limit; the request itself succeeds.
    let (status, answer, record) = attack(serde_json::json!({"attack": "fork_bomb"}));
    assert_eq!(status, 200, "{answer}");
    let forked = json(&answer)["forked"].as_u64().unwrap();
    assert!(forked < 10000, "{answer}");
    assert_eq!(record["status"], "succeeded");

    // No network at all: not the node's own API, not the gateway, not the outside.
    let api_port: u16 = server.api.rsplit(':').next().unwrap().parse().unwrap();
    let gw_port: u16 = server.gateway.rsplit(':').next().unwrap().parse().unwrap();
    let (status, answer, _) = attack(serde_json::json!({
        "attack": "network",
        "targets": [["127.0.0.1", api_port], ["127.0.0.1", gw_port], ["10.0.0.1", 80], ["1.1.1.1", 443]],
    }));
    assert_eq!(status, 200, "{answer}");
    assert!(!answer.contains("\"connected\""), "{answer}");

    // The sandbox's system-call filter holds under ctypes as under Rust.
    let (status, answer, _) = attack(serde_json::json!({"attack": "syscalls"}));
    assert_eq!(status, 200, "{answer}");
    assert!(!answer.contains("allowed"), "{answer}");

    stop.store(true, Ordering::Relaxed);
    caller.join().unwrap();
    assert!(calls.load(Ordering::Relaxed) > 0);
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "the neighbour failed some of its {} calls",
        calls.load(Ordering::Relaxed)
    );
}

#[test]
fn image_mode_input_is_refused_before_anything_is_fetched() {
    let dir = scratch("hostile-images");
    let server = start_server(&dir);
    let p = dir.clone();
    ok(&server, &p, &["app", "create", "img", "--runtime", "image"]);
    ok(
        &server,
        &p,
        &["app", "create", "rusty", "--runtime", "rust"],
    );
    // Image references that would make the server connect where it must not (loopback, the
    // metadata address, a private registry the operator did not allow), or are not references.
    for image in [
        "127.0.0.1:5432/x:1",
        "localhost/x:1",
        "169.254.169.254/latest/meta-data:1",
        "10.0.0.1:5000/acme/web:v1",
    ] {
        let out = fails(
            &server,
            &p,
            &["draft", "save", "acme-corp:img", "--image-ref", image],
        );
        assert!(
            out.contains("docker.io") && out.contains("--image-registry"),
            "{image}: {out}"
        );
    }
    for image in ["a b", "ghcr.io/x\n:1", ""] {
        let out = fails(
            &server,
            &p,
            &["draft", "save", "acme-corp:img", "--image-ref", image],
        );
        assert!(
            out.contains("image reference") || out.contains("registr"),
            "{image:?}: {out}"
        );
    }
    // Git URLs that are not plain https/http clones from an allowed host, and option-like
    // references.
    for url in [
        "file:///etc/passwd",
        "ext::sh -c id",
        "--upload-pack=touch /tmp/pwned",
        "http://127.0.0.1:22/x.git",
        "https://github.com/a/b.git#--upload-pack=touch",
        "ssh://git@github.com/a/b.git",
    ] {
        let out = fails(
            &server,
            &p,
            &["draft", "save", "acme-corp:img", "--git-url", url],
        );
        assert!(!out.is_empty() && !out.contains("saved"), "{url}: {out}");
    }
    assert!(!std::path::Path::new("/tmp/pwned").exists());
    // A Dockerfile path that climbs out of its context, straight at the API.
    let auth = format!("Authorization: Bearer {}\r\n", token(&server));
    for path in ["../../etc/passwd", "/etc/passwd", "a/../../b"] {
        let (status, body) = send_raw(
            &server.api,
            &format!(
                "PUT /v1/apps/acme-corp/img/draft?dockerfile={} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 4\r\nConnection: close\r\n\r\nxxxx",
                path.replace('/', "%2F")
            ),
        );
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("inside the context"), "{path}: {body}");
    }
    // Two image sources at once, and an image flag on a Rust app.
    let (status, body) = send_raw(
        &server.api,
        &format!(
            "PUT /v1/apps/acme-corp/img/draft?image_ref=ghcr.io%2Fa%2Fb:1&git_url=https%3A%2F%2Fgithub.com%2Fa%2Fb HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status, 400, "{body}");
    let out = fails(
        &server,
        &p,
        &[
            "draft",
            "save",
            "acme-corp:rusty",
            "--image-ref",
            "ghcr.io/a/b:1",
        ],
    );
    assert!(out.contains("--runtime image"), "{out}");
    // Registry logins only for allowed registries, hosts that are hosts.
    for host in ["127.0.0.1:5000", "evil.example/../x", "a b"] {
        let (status, body) = send_raw(
            &server.api,
            &format!(
                "PUT /v1/registries/{} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: 31\r\nConnection: close\r\n\r\n{{\"username\":\"u\",\"password\":\"p\"}}",
                host.replace('/', "%2F").replace(' ', "%20")
            ),
        );
        assert!(status == 400 || status == 404, "{host}: {status} {body}");
    }
    server.stop();
}

/// `dodil ignite server --registry <url>` (or `IGNITE_REGISTRY`) on a fresh data directory:
/// its stderr, once it has exited (it must, at once).
fn server_start_refused(dir: &std::path::Path, url: &str, by_env: bool) -> String {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_dodil"));
    command
        .args(["ignite", "server", "--data-dir"])
        .arg(dir.join("data"))
        .args([
            "--api-listen",
            "127.0.0.1:0",
            "--gateway-listen",
            "127.0.0.1:0",
        ])
        .env("DODIL_CONFIG", dir.join("config.toml"))
        .env_remove("IGNITE_REGISTRY")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    if by_env {
        command.env("IGNITE_REGISTRY", url);
    } else {
        command.args(["--registry", url]);
    }
    let mut child = command.spawn().expect("dodil ignite server");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server started with --registry {url:?} instead of refusing it");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert!(!status.success(), "--registry {url:?}: {stderr}");
    stderr
}

#[test]
fn a_platform_registry_url_that_is_not_usable_refuses_the_start() {
    let dir = scratch("hostile-registry-url");
    for (url, by_env, says) in [
        ("not a url", false, "not a URL"),
        ("registry.local:5000/ignite", true, "not a URL"),
        (
            "ftp://127.0.0.1:5000/ignite",
            false,
            "scheme `ftp` is not supported",
        ),
        (
            "file:///var/lib/registry",
            false,
            "scheme `file` is not supported",
        ),
        (
            "http://admin:hunter2@127.0.0.1:5000/ignite",
            false,
            "IGNITE_REGISTRY_USERNAME",
        ),
        ("http://127.0.0.1:5000", true, "no repository prefix"),
    ] {
        let stderr = server_start_refused(&dir, url, by_env);
        assert!(stderr.contains(says), "--registry {url:?}: {stderr}");
        assert!(stderr.contains("http://host:port/<prefix>"), "{stderr}");
        assert!(
            !stderr.contains("hunter2"),
            "the password was repeated: {stderr}"
        );
    }
    // Nothing listens there: the start fails, naming the registry.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port();
    let url = format!("http://127.0.0.1:{port}/ignite");
    let stderr = server_start_refused(&dir, &url, false);
    assert!(
        stderr.contains("does not answer") && stderr.contains(&url),
        "{stderr}"
    );
}
