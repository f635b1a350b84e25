//! What image mode's end-to-end tests need: a real registry (Debian's `docker-registry`) on a
//! loopback port, the test images' server (`tests/images/echo`, built static), image layers
//! (hostile ones included, written with raw tar headers) and a push over the distribution API.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;

const REGISTRY: &str = "/usr/bin/docker-registry";

/// A `docker-registry` on a loopback port of its own, stopped on drop.
pub struct Registry {
    child: Child,
    pub addr: String,
    dir: PathBuf,
}

impl Registry {
    /// Starts one; with `user`, it asks for those credentials (htpasswd).
    pub fn start(dir: &Path, user: Option<(&str, &str)>) -> Registry {
        Registry::start_on(dir, "127.0.0.1", user)
    }

    /// [`Registry::start`] listening on `ip` (an address of this namespace).
    pub fn start_on(dir: &Path, ip: &str, user: Option<(&str, &str)>) -> Registry {
        assert!(
            Path::new(REGISTRY).exists(),
            "{REGISTRY} is missing: apt-get install -y docker-registry"
        );
        std::fs::create_dir_all(dir).expect("registry dir");
        let auth = match user {
            Some((name, password)) => {
                let hash = bcrypt::hash(password, 4).expect("bcrypt");
                let htpasswd = dir.join("htpasswd");
                std::fs::write(&htpasswd, format!("{name}:{hash}\n")).expect("htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: ignite-test\n    path: {}\n",
                    htpasswd.display()
                )
            }
            None => String::new(),
        };
        for _ in 0..5 {
            let port = TcpListener::bind(format!("{ip}:0"))
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let addr = format!("{ip}:{port}");
            let config = dir.join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n\
                     http:\n  addr: {addr}\n{auth}",
                    dir.join("storage").display()
                ),
            )
            .expect("config");
            let log = std::fs::File::create(dir.join("registry.log")).expect("log");
            let child = Command::new(REGISTRY)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("spawn docker-registry");
            let mut registry = Registry {
                child,
                addr,
                dir: dir.to_path_buf(),
            };
            if registry.wait_ready() {
                return registry;
            }
        }
        panic!("docker-registry did not start");
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(mut s) = TcpStream::connect(&self.addr) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let request = format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr);
                let mut answer = [0u8; 12];
                if s.write_all(request.as_bytes()).is_ok()
                    && s.read_exact(&mut answer).is_ok()
                    && answer.starts_with(b"HTTP/1.")
                {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "docker-registry did not answer in 10 s:\n{}",
            std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
        );
    }

    /// Pushes an image of `layers` (each a gzip'd tar) and `config` (the image config's
    /// `config` object: Entrypoint, Cmd, Env, WorkingDir, User) as `<addr>/<name>`; returns the
    /// whole reference.
    pub fn push(
        &self,
        name: &str,
        layers: Vec<Vec<u8>>,
        config: serde_json::Value,
        auth: Option<(&str, &str)>,
    ) -> String {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let reference: oci_client::Reference =
            format!("{}/{name}", self.addr).parse().expect("reference");
        let diff_ids: Vec<String> = layers
            .iter()
            .map(|l| {
                let mut raw = Vec::new();
                flate2::read::GzDecoder::new(&l[..])
                    .read_to_end(&mut raw)
                    .expect("gunzip");
                format!("sha256:{}", sha256_hex(&raw))
            })
            .collect();
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let auth = match auth {
            Some((u, p)) => RegistryAuth::Basic(u.into(), p.into()),
            None => RegistryAuth::Anonymous,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let client = oci_client::Client::new(ClientConfig {
                protocol: ClientProtocol::Http,
                ..ClientConfig::default()
            });
            let layers: Vec<ImageLayer> = layers
                .into_iter()
                .map(|l| ImageLayer::oci_v1_gzip(l, None))
                .collect();
            client
                .push(
                    &reference,
                    &layers,
                    Config::oci_v1(serde_json::to_vec(&config).expect("config"), None),
                    &auth,
                    None,
                )
                .await
                .unwrap_or_else(|e| panic!("pushing {name}: {e}"));
        });
        reference.whole()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    // The digest of a layer's uncompressed tar (its diff id), by the system's sha256sum: the
    // tests need no hashing crate of their own.
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(bytes)
        .expect("write");
    let out = child.wait_with_output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The test images' server, built once (static, musl) into the shared target directory.
pub fn echo_server() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let manifest =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/images/echo/Cargo.toml");
            let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("images-target");
            let out = Command::new("cargo")
                .args([
                    "build",
                    "--release",
                    "--target",
                    "x86_64-unknown-linux-musl",
                ])
                .arg("--manifest-path")
                .arg(&manifest)
                .env("CARGO_TARGET_DIR", &target)
                .output()
                .expect("cargo");
            assert!(
                out.status.success(),
                "building the echo server failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            target.join("x86_64-unknown-linux-musl/release/ignite-test-echo")
        })
        .clone()
}

/// One tar entry, its path (and link target) written into the header as is (`..` and absolute
/// paths included).
pub enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    Link(&'a str, &'a str),
    Char(&'a str, u32, u32),
}

fn raw_header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    let name = &mut h.as_old_mut().name;
    assert!(path.len() < name.len(), "test path too long");
    name[..path.len()].copy_from_slice(path.as_bytes());
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn set_link(h: &mut tar::Header, target: &str) {
    let link = &mut h.as_old_mut().linkname;
    assert!(target.len() < link.len(), "test link too long");
    link[..target.len()].copy_from_slice(target.as_bytes());
}

/// A gzip'd tar of `entries`.
pub fn layer(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let (mut h, data): (tar::Header, &[u8]) = match e {
            E::Dir(p, m) => (raw_header(p, tar::EntryType::Directory, *m, 0), &[]),
            E::File(p, d, m) => (
                raw_header(p, tar::EntryType::Regular, *m, d.len() as u64),
                d,
            ),
            E::Symlink(p, t) => {
                let mut h = raw_header(p, tar::EntryType::Symlink, 0o777, 0);
                set_link(&mut h, t);
                (h, &[])
            }
            E::Link(p, t) => {
                let mut h = raw_header(p, tar::EntryType::Link, 0o644, 0);
                set_link(&mut h, t);
                (h, &[])
            }
            E::Char(p, major, minor) => {
                let mut h = raw_header(p, tar::EntryType::Char, 0o666, 0);
                h.set_device_major(*major).expect("major");
                h.set_device_minor(*minor).expect("minor");
                (h, &[])
            }
        };
        h.set_cksum();
        b.append(&h, data).expect("append");
    }
    let tar = b.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).expect("gzip");
    gz.finish().expect("gzip")
}

/// The echo image's one layer: the server at /server, a user database with `app` (uid 1234),
/// and a data directory it starts in.
pub fn echo_layer() -> Vec<u8> {
    let server = std::fs::read(echo_server()).expect("echo server");
    layer(&[
        E::File("server", &server, 0o755),
        E::Dir("etc", 0o755),
        E::File(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1234:1234:app:/data:/server\n",
            0o644,
        ),
        E::File("etc/group", b"root:x:0:\napp:x:1234:\n", 0o644),
        E::Dir("data", 0o755),
        E::File("data/hello.txt", b"hello from the image", 0o644),
    ])
}

/// The echo image's config: runs as `app` in /data, with `GREETING` set.
pub fn echo_config(greeting: &str) -> serde_json::Value {
    serde_json::json!({
        "Entrypoint": ["/server"],
        "Cmd": ["--greeting", greeting],
        "Env": [format!("GREETING={greeting}"), "PATH=/usr/bin:/bin"],
        "WorkingDir": "/data",
        "User": "app",
        "ExposedPorts": {"8080/tcp": {}},
    })
}

/// `git http-backend` behind Python's CGI server on a loopback port, serving the bare
/// repositories under a root; stopped on drop.
pub struct GitServer {
    child: Child,
    pub addr: String,
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const CGI_SERVER: &str = r#"
import http.server, os, sys
os.chdir(sys.argv[1])
class Handler(http.server.CGIHTTPRequestHandler):
    cgi_directories = ["/cgi-bin"]
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

impl GitServer {
    /// Serves the bare repositories under `repos` at `http://<addr>/cgi-bin/git/<name>.git`.
    pub fn start(repos: &Path, www: &Path) -> GitServer {
        use std::io::BufRead;
        use std::os::unix::fs::PermissionsExt;
        let bin = www.join("cgi-bin");
        std::fs::create_dir_all(&bin).expect("cgi-bin");
        let script = bin.join("git");
        std::fs::write(
            &script,
            "#!/bin/sh\nexec /usr/lib/git-core/git-http-backend\n",
        )
        .expect("cgi script");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let mut child = Command::new("/usr/bin/python3")
            .args(["-c", CGI_SERVER])
            .arg(www)
            .env("GIT_PROJECT_ROOT", repos)
            .env("GIT_HTTP_EXPORT_ALL", "1")
            // The CGI server runs scripts as nobody, who owns none of the repositories.
            .env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", "safe.directory")
            .env("GIT_CONFIG_VALUE_0", "*")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the CGI server's port");
        GitServer {
            child,
            addr: format!("127.0.0.1:{}", line.trim()),
        }
    }
}

/// Runs git in `dir` as a test author would.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A build context for the echo server: a `FROM scratch` Dockerfile with `greeting` in its
/// `ENV`, the server, and a `.dockerignore`d secret.
pub fn echo_context(dir: &Path, greeting: &str) {
    std::fs::create_dir_all(dir).expect("context");
    std::fs::copy(echo_server(), dir.join("server")).expect("server");
    std::fs::write(
        dir.join("Dockerfile"),
        format!(
            "FROM scratch\nCOPY server /server\nENV GREETING={greeting}\nWORKDIR /\n\
             ENTRYPOINT [\"/server\"]\n"
        ),
    )
    .expect("Dockerfile");
    std::fs::write(dir.join("secret.txt"), "not for the image").expect("secret");
    std::fs::write(dir.join(".dockerignore"), "secret.txt\n").expect(".dockerignore");
}
