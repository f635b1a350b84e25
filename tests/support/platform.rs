//! Starting the real server and driving the real `dodil` binary against it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

pub struct Server {
    child: Child,
    pub dir: PathBuf,
    pub api: String,
    pub gateway: String,
    /// The admin token of the org this start created, if it created one.
    pub admin_token: Option<String>,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the server the way an operator does (SIGTERM) and waits for it to exit: in-flight
    /// requests finish and every execution record is written.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(
                    status.success(),
                    "the server exited with {status} on SIGTERM"
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the server did not stop within 20 s of SIGTERM");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The server and every handler instance it started share a process group: stop them all.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("recipe")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts `dodil ignite server` on port 0 and reads back the addresses it bound.
pub fn start_server(dir: &Path) -> Server {
    start_server_with(dir, &[])
}

pub fn start_server_with(dir: &Path, extra: &[&str]) -> Server {
    start_server_env(dir, extra, &[])
}

/// Also sets variables in the server's environment.
pub fn start_server_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
    start_server_on(dir, "127.0.0.1", None, extra, env)
}

/// A server listening on `ip` (port 0), started inside the network namespace `netns` (a file
/// under `/run/netns`) when one is given. A node (`--role node`) reports its node listener as
/// both addresses.
pub fn start_server_on(
    dir: &Path,
    ip: &str,
    netns: Option<&Path>,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Server {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dodil"));
    let netns = netns.map(|p| std::fs::File::open(p).expect("open the network namespace"));
    let netns_fd = netns.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
    // A test that fails while other threads still hold its server must not leave the server
    // running: it stops with the test's thread.
    // SAFETY: prctl and setns are async-signal-safe and touch only the calling (child)
    // process; the namespace's descriptor stays open in the parent until spawn returns.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(fd) = netns_fd
                && libc::setns(fd, libc::CLONE_NEWNET) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let listen = format!("{ip}:0");
    let mut child = command
        .args([
            "ignite",
            "server",
            "--api-listen",
            &listen,
            "--gateway-listen",
            &listen,
        ])
        .args(extra)
        .args(database_args(dir, extra))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--build-target-dir")
        .arg(super::target_dir())
        .env("DODIL_CONFIG", dir.join("config.toml"))
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .expect("start dodil ignite server");
    drop(netns);
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut api, mut gateway, mut admin_token) = (None, None, None);
    while api.is_none() || gateway.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server did not report its addresses within 30 s");
        if let Some(a) = line.strip_prefix("api listening on http://") {
            api = Some(a.to_string());
        }
        if let Some(g) = line.strip_prefix("gateway listening on http://") {
            gateway = Some(g.to_string());
        }
        if let Some(n) = line.strip_prefix("node listening on http://") {
            (api, gateway) = (Some(n.to_string()), Some(n.to_string()));
        }
        if let Some((_, t)) = line.split_once("admin token (shown once): ") {
            admin_token = Some(t.trim().to_string());
        }
    }
    Server {
        child,
        dir: dir.to_path_buf(),
        api: api.unwrap(),
        gateway: gateway.unwrap(),
        admin_token,
    }
}

/// `--database-url` of a database of this server's own when the suite runs against PostgreSQL
/// (`IGNITE_TEST_POSTGRES=1`) and the test did not choose one.
fn database_args(dir: &Path, extra: &[&str]) -> Vec<String> {
    if !super::postgres::requested() || extra.contains(&"--database-url") {
        return vec![];
    }
    vec![
        "--database-url".into(),
        super::postgres::database_for(&dir.join("data")),
    ]
}

/// Runs `dodil ignite <args>` in `cwd` against `server`.
pub fn dodil(server: &Server, cwd: &Path, args: &[&str]) -> Output {
    dodil_command(server, cwd, args)
        .output()
        .expect("run dodil")
}

/// [`dodil`] with `stdin` as its standard input.
pub fn dodil_with_stdin(server: &Server, cwd: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = dodil_command(server, cwd, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run dodil");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("dodil")
}

/// `dodil ignite <args>` in `cwd`, configured for `server` alone.
fn dodil_command(server: &Server, cwd: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dodil"));
    command
        .arg("ignite")
        .args(args)
        .current_dir(cwd)
        .env("DODIL_CONFIG", server.dir.join("config.toml"))
        .env_remove("DODIL_TOKEN")
        .env_remove("DODIL_API_ENDPOINT");
    command
}

pub fn ok(server: &Server, cwd: &Path, args: &[&str]) -> String {
    let out = dodil(server, cwd, args);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "dodil ignite {} failed ({}):\nstdout: {stdout}\nstderr: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

pub fn fails(server: &Server, cwd: &Path, args: &[&str]) -> String {
    let out = dodil(server, cwd, args);
    assert!(
        !out.status.success(),
        "dodil ignite {} should have failed",
        args.join(" ")
    );
    String::from_utf8_lossy(&out.stderr).to_string()
}

pub fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A plain HTTP/1.1 request to the gateway with this Host header: `(status, body)`.
pub fn http(gateway: &str, host: &str, body: &str) -> (u16, String) {
    http_path(gateway, host, "/hello?x=1", body)
}

pub fn http_path(gateway: &str, host: &str, path: &str, body: &str) -> (u16, String) {
    send_raw(
        gateway,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// Writes `request` as is to `addr` and reads the answer until the server closes:
/// `(status, body)`, status 0 if none came within 30 s.
pub fn send_raw(addr: &str, request: &str) -> (u16, String) {
    send_bytes(addr, request.as_bytes())
}

/// [`send_raw`] for a request that need not be text.
pub fn send_bytes(addr: &str, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw);
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The admin token the server wrote into its CLI config.
pub fn token(server: &Server) -> String {
    let config = std::fs::read_to_string(server.dir.join("config.toml")).unwrap();
    config
        .lines()
        .find_map(|l| l.strip_prefix("token = \""))
        .and_then(|t| t.strip_suffix('"'))
        .unwrap()
        .to_string()
}

pub fn copy_tiny(to: &Path) {
    std::fs::create_dir_all(to.join("src")).unwrap();
    let from = super::workspace_dir().join("examples/tiny");
    std::fs::copy(from.join("Cargo.toml"), to.join("Cargo.toml")).unwrap();
    std::fs::copy(from.join("src/lib.rs"), to.join("src/lib.rs")).unwrap();
}

/// A project named `name` with the shared test dependencies and this `src/lib.rs`.
pub fn project(dir: &Path, name: &str, lib_rs: &str) -> PathBuf {
    let root = dir.join(name);
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::write(
        root.join("Cargo.toml"),
        format!(
            "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]{}",
            super::HANDLER_DEPS
        ),
    )
    .unwrap();
    std::fs::write(root.join("src/lib.rs"), lib_rs).unwrap();
    root
}

/// `draft save <id> --code <code> --runtime rust --rust-target native`.
pub fn save_native(server: &Server, cwd: &Path, id: &str, code: &str) {
    ok(
        server,
        cwd,
        &[
            "draft",
            "save",
            id,
            "--code",
            code,
            "--runtime",
            "rust",
            "--rust-target",
            "native",
        ],
    );
}

pub fn deploy(server: &Server, p: &Path, id: &str, code: &str) {
    let name = id.split(':').nth(1).unwrap();
    ok(server, p, &["app", "create", name, "--runtime", "rust"]);
    save_native(server, p, id, code);
    ok(server, p, &["draft", "compile", id]);
    ok(server, p, &["draft", "compile-logs", id]);
    ok(server, p, &["draft", "publish", id]);
}

/// Creates the app, saves `p` as its draft with `--rust-target wasm` and starts the compile.
pub fn compile_wasm(server: &Server, p: &Path, id: &str) {
    let name = id.split(':').nth(1).unwrap();
    ok(server, p, &["app", "create", name, "--runtime", "rust"]);
    ok(
        server,
        p,
        &[
            "draft",
            "save",
            id,
            "--code",
            "./",
            "--runtime",
            "rust",
            "--rust-target",
            "wasm",
        ],
    );
    ok(server, p, &["draft", "compile", id]);
}

/// Creates the app and deploys `p` with `--rust-target wasm`; returns the compile log.
pub fn deploy_wasm(server: &Server, p: &Path, id: &str) -> String {
    compile_wasm(server, p, id);
    let logs = ok(server, p, &["draft", "compile-logs", id]);
    ok(server, p, &["draft", "publish", id]);
    logs
}

/// An HTTP/1.1 request to `addr` with this Host header: `(status, headers, body)`.
pub fn http_full(
    addr: &str,
    host: &str,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Polls `check` every 50 ms until it holds; panics with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !check() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Pids of live processes running this executable.
pub fn pids_running(exe: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    let running: Vec<u32> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == exe))
        .filter(|pid| super::process_alive(*pid))
        .collect();
    // A sandboxed instance is two processes of the binary: its pid-1 init and, under it, the
    // handler. Count instances: the processes whose parent is not one of them.
    let parent = |pid: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()
    };
    running
        .iter()
        .copied()
        .filter(|pid| parent(*pid).is_none_or(|p| !running.contains(&p)))
        .collect()
}

/// The hex digest of an app's active artifact.
pub fn artifact_digest(server: &Server, cwd: &Path, id: &str) -> String {
    let app = json(&ok(server, cwd, &["app", "get", id, "-o", "json"]));
    let digest = app["artifact"]["digest"].as_str().unwrap();
    digest.trim_start_matches("sha256:").to_string()
}

/// The path of an app's active artifact on the server's disk.
pub fn artifact_of(server: &Server, cwd: &Path, id: &str) -> PathBuf {
    server
        .dir
        .join("data/blobs/sha256")
        .join(artifact_digest(server, cwd, id))
}

/// The server's Prometheus metrics text.
pub fn metrics(server: &Server) -> String {
    let (status, _, body) = http_full(&server.api, "localhost", "GET", "/metrics", "");
    assert_eq!(status, 200);
    body
}

/// `dir/name` holding exactly `files` (path, text), replacing what was there.
pub fn files_project(dir: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let p = dir.join(name);
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    for (file, text) in files {
        let path = p.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    p
}

/// Creates app `app` of `runtime`, saves `files` as its draft and publishes it (which builds
/// it, for the runtimes that build on publish); returns the project directory.
pub fn deploy_files(
    server: &Server,
    dir: &Path,
    app: &str,
    runtime: &str,
    files: &[(&str, &str)],
) -> PathBuf {
    let p = files_project(dir, app, files);
    ok(server, &p, &["app", "create", app, "--runtime", runtime]);
    let id = format!("acme-corp:{app}");
    ok(
        server,
        &p,
        &["draft", "save", &id, "--code", "./", "--runtime", runtime],
    );
    ok(server, &p, &["draft", "publish", &id]);
    p
}

/// `POST /` with `body` to acme-corp's `app` through the gateway.
pub fn call_app(server: &Server, app: &str, body: &str) -> (u16, Vec<(String, String)>, String) {
    http_full(
        &server.gateway,
        &format!("{app}-acme-corp.ignite.localhost"),
        "POST",
        "/",
        body,
    )
}

/// The execution record of the answer whose headers are `headers`.
pub fn execution_of(server: &Server, cwd: &Path, headers: &[(String, String)]) -> Value {
    let id = header(headers, "x-ignite-execution-id").expect("an execution id header");
    json(&ok(server, cwd, &["execution", "get", id, "-o", "json"]))
}
