//! Image builds against the real thing: Debian's buildah in the real build jail, a real
//! registry (Debian's `docker-registry`) on loopback reached through the registry proxy, git
//! over smart HTTP (`git http-backend` behind Python's CGI server) through the same proxy.
//!
//! Like `python.rs`, this test binary is its own jail helper, hence no libtest harness; a
//! filter argument selects tests by name. Runs as root (the jail needs it); elsewhere it says
//! so and passes vacuously. Needs buildah, skopeo, docker-registry, git and busybox-static.

mod harness;

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ignite_builder::git::{GitCheckout, GitClone};
use ignite_builder::image::{ImageArtifact, ImageBuild};
use ignite_builder::{BuildError, BuildOptions, JailOptions, RegistryProxy, Sdk};

/// The first of the build's [`ignite_builder::image::IMAGE_IDS`] host ids, none with an
/// account.
const BUILD_UID: u32 = 1_800_000_000;
const BUILDAH: &str = "/usr/bin/buildah";
const GIT: &str = "/usr/bin/git";
const BUSYBOX: &str = "/bin/busybox";

use harness::Test;

const TESTS: &[Test] = &[
    (
        "a_scratch_image_carries_its_entrypoint_env_and_workdir",
        a_scratch_image_carries_its_entrypoint_env_and_workdir,
    ),
    ("dockerignore_is_honoured", dockerignore_is_honoured),
    (
        "a_base_from_a_loopback_registry_builds_and_runs_a_step",
        a_base_from_a_loopback_registry_builds_and_runs_a_step,
    ),
    (
        "a_failing_run_step_says_what_failed",
        a_failing_run_step_says_what_failed,
    ),
    (
        "a_clone_at_a_tag_a_branch_and_a_commit_goes_through_the_proxy",
        a_clone_at_a_tag_a_branch_and_a_commit_goes_through_the_proxy,
    ),
    (
        "file_and_option_like_git_urls_are_refused",
        file_and_option_like_git_urls_are_refused,
    ),
    (
        "a_dockerfile_outside_the_context_is_refused",
        a_dockerfile_outside_the_context_is_refused,
    ),
];

fn main() {
    harness::main(
        TESTS,
        "jailed image build tests",
        |_| {
            let missing: Vec<&str> = [BUILDAH, GIT, BUSYBOX, "/usr/bin/skopeo", REGISTRY]
                .into_iter()
                .filter(|p| !Path::new(p).exists())
                .collect();
            assert!(missing.is_empty(), "missing: {missing:?}");
            true
        },
        || {},
    );
}

/// A scratch directory: `ctx/` (the context), `out/`, `work/` and whatever a test adds.
struct Scene {
    base: tempfile::TempDir,
}

impl Scene {
    fn new(name: &str, files: &[(&str, &str)]) -> Scene {
        let base = tempfile::Builder::new()
            .prefix(&format!("image-{name}-"))
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let scene = Scene { base };
        let ctx = scene.path("ctx");
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::copy(BUSYBOX, ctx.join("busybox")).unwrap();
        for (path, text) in files {
            let path = ctx.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
        }
        scene
    }

    fn path(&self, name: &str) -> PathBuf {
        self.base.path().join(name)
    }

    /// Builds `ctx/Dockerfile` into `<out>` (jailed), the proxy allowing `proxied`; returns the
    /// result and the log.
    fn build(
        &self,
        out: &str,
        registries: &[String],
        proxied: &[String],
    ) -> (Result<ImageArtifact, BuildError>, String) {
        let (ctx, out, work) = (
            self.path("ctx"),
            self.path(out),
            self.path(&format!("{out}.work")),
        );
        let allowed: Vec<&str> = proxied.iter().map(String::as_str).collect();
        let runtime = runtime();
        let proxy = runtime
            .block_on(async { RegistryProxy::start(&self.path("proxy.sock"), &allowed) })
            .unwrap();
        let options = options(Some(proxy.path()));
        let build = ImageBuild {
            context: &ctx,
            dockerfile: Path::new("Dockerfile"),
            out: &out,
            work: &work,
            buildah: Path::new(BUILDAH),
            registries,
            insecure: registries,
        };
        let mut log = String::new();
        let start = Instant::now();
        let result = runtime.block_on(ignite_builder::image::build(&build, &options, |line| {
            log.push_str(line);
            log.push('\n');
        }));
        println!(
            "  built {} in {:.1?}: {}",
            out.display(),
            start.elapsed(),
            match &result {
                Ok(a) => a.digest.clone(),
                Err(e) => format!("error: {e}"),
            }
        );
        drop(proxy);
        (result, log)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn options(proxy: Option<&Path>) -> BuildOptions {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let mut options = BuildOptions::new(
        Sdk::bundled(),
        tmp.join("image-unused-target"),
        Duration::from_secs(300),
    );
    let root = tmp.join("image-jail-root");
    std::fs::create_dir_all(&root).unwrap();
    options.jail = Some(JailOptions {
        helper: std::env::current_exe().unwrap(),
        root,
        uid: BUILD_UID,
        cgroups: Vec::new(),
        tmp_mb: 256,
        max_disk_bytes: 1 << 30,
        max_address_space: 0,
        fetch_proxy: proxy.map(Path::to_path_buf),
    });
    options
}

fn built(result: Result<ImageArtifact, BuildError>, log: &str) -> ImageArtifact {
    result.unwrap_or_else(|e| panic!("{e}\n--- log ---\n{log}"))
}

/// An OCI layout read back: the manifest's config and each layer's file names.
struct Layout {
    config: serde_json::Value,
    layers: Vec<Vec<String>>,
}

fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap()
}

fn read_layout(layout: &Path) -> Layout {
    let oci: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("oci-layout")).unwrap()).unwrap();
    assert_eq!(oci["imageLayoutVersion"], "1.0.0");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "{index}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&blob(layout, manifests[0]["digest"].as_str().unwrap())).unwrap();
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let config: serde_json::Value = serde_json::from_slice(&blob(
        layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ))
    .unwrap();
    let layers = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let bytes = blob(layout, l["digest"].as_str().unwrap());
            let reader: Box<dyn Read> = if l["mediaType"].as_str().unwrap().ends_with("gzip") {
                Box::new(flate2::read::GzDecoder::new(&bytes[..]))
            } else {
                Box::new(&bytes[..])
            };
            let mut archive = tar::Archive::new(reader);
            archive
                .entries()
                .unwrap()
                .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
                .collect()
        })
        .collect();
    Layout { config, layers }
}

fn has(layers: &[Vec<String>], name: &str) -> bool {
    layers
        .iter()
        .flatten()
        .any(|n| n.trim_start_matches("./").trim_end_matches('/') == name)
}

const SCRATCH: &str = "FROM scratch\nCOPY busybox /bin/busybox\nENV GREETING=hello PORT=8080\n\
                       WORKDIR /srv\nENTRYPOINT [\"/bin/busybox\", \"httpd\", \"-f\"]\n";

fn a_scratch_image_carries_its_entrypoint_env_and_workdir() {
    let scene = Scene::new("scratch", &[("Dockerfile", SCRATCH)]);
    let (result, log) = scene.build("out", &[], &[]);
    let artifact = built(result, &log);
    assert!(artifact.digest.starts_with("sha256:"), "{artifact:?}");
    assert!(log.contains("STEP"), "{log}");
    let layout = read_layout(&artifact.layout);
    let config = &layout.config["config"];
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/bin/busybox", "httpd", "-f"])
    );
    let env: Vec<&str> = config["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(env.contains(&"GREETING=hello"), "{env:?}");
    assert!(env.contains(&"PORT=8080"), "{env:?}");
    assert_eq!(config["WorkingDir"], "/srv");
    assert!(has(&layout.layers, "bin/busybox"), "{:?}", layout.layers);
}

fn dockerignore_is_honoured() {
    let scene = Scene::new(
        "ignore",
        &[
            (
                "Dockerfile",
                "FROM scratch\nCOPY . /app/\nENTRYPOINT [\"/app/busybox\"]\n",
            ),
            (".dockerignore", "secret.txt\nlogs/\n"),
            ("secret.txt", "do not ship\n"),
            ("logs/a.log", "x\n"),
            ("kept.txt", "ship\n"),
        ],
    );
    let (result, log) = scene.build("out", &[], &[]);
    let layout = read_layout(&built(result, &log).layout);
    assert!(has(&layout.layers, "app/kept.txt"), "{:?}", layout.layers);
    assert!(has(&layout.layers, "app/busybox"), "{:?}", layout.layers);
    assert!(
        !has(&layout.layers, "app/secret.txt"),
        "{:?}",
        layout.layers
    );
    assert!(
        !has(&layout.layers, "app/logs/a.log"),
        "{:?}",
        layout.layers
    );
}

const REGISTRY: &str = "/usr/bin/docker-registry";

/// Debian's docker-registry on 127.0.0.1, storage in `dir`; stopped when dropped.
struct Registry {
    child: Child,
    address: String,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn wait_for_port(address: &str, what: &str) {
    let start = Instant::now();
    while std::net::TcpStream::connect(address).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what} did not listen on {address}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_registry(dir: &Path) -> Registry {
    let address = format!("127.0.0.1:{}", free_port());
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let config = dir.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {address}\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let child = Command::new(REGISTRY)
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let registry = Registry { child, address };
    wait_for_port(&registry.address, "docker-registry");
    registry
}

/// Pushes the OCI layout `layout` to `reference` (`127.0.0.1:PORT/name:tag`) with skopeo.
fn push(layout: &Path, reference: &str, scene: &Scene) {
    let policy = scene.path("policy.json");
    std::fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    let out = Command::new("/usr/bin/skopeo")
        .arg("--policy")
        .arg(&policy)
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}", layout.display()))
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A base image (busybox on scratch) in a registry on loopback.
fn registry_with_base(scene: &Scene) -> (Registry, String) {
    let registry = start_registry(&scene.path("registry"));
    let (result, log) = scene.build("base", &[], &[]);
    let base = built(result, &log);
    push(&base.layout, &format!("{}/base:1", registry.address), scene);
    let address = registry.address.clone();
    (registry, address)
}

fn a_base_from_a_loopback_registry_builds_and_runs_a_step() {
    let scene = Scene::new("registry", &[("Dockerfile", SCRATCH)]);
    let (_registry, address) = registry_with_base(&scene);
    let allowed = vec![address.clone()];
    std::fs::write(
        scene.path("ctx/Dockerfile"),
        format!(
            "FROM {address}/base:1\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo hi > /x\"]\n\
             ENV STAGE=two\n"
        ),
    )
    .unwrap();
    let (result, log) = scene.build("out", &allowed, &allowed);
    let layout = read_layout(&built(result, &log).layout);
    assert!(has(&layout.layers, "bin/busybox"), "{:?}", layout.layers);
    assert!(has(&layout.layers, "x"), "{:?}", layout.layers);
    let config = &layout.config["config"];
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/bin/busybox", "httpd", "-f"])
    );
    assert!(
        config["Env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "STAGE=two"),
        "{config}"
    );

    // A registry not configured: refused before buildah runs.
    let other = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        scene.path("ctx/Dockerfile"),
        format!("FROM {other}/base:1\n"),
    )
    .unwrap();
    let (result, _) = scene.build("refused", &allowed, &allowed);
    let message = result.unwrap_err().to_string();
    assert!(
        message.contains(&format!(
            "the build may pull base images only from {address}"
        )),
        "{message}"
    );
    // Configured, but not what the proxy lets through: the proxy refuses it.
    std::fs::write(
        scene.path("ctx/Dockerfile"),
        format!("FROM {address}/base:1\n"),
    )
    .unwrap();
    let (result, log) = scene.build("unproxied", &allowed, &[]);
    let e = result.unwrap_err();
    assert!(
        matches!(e, BuildError::RegistryNotAllowed { .. }),
        "{e}\n--- log ---\n{log}"
    );
}

fn a_failing_run_step_says_what_failed() {
    let scene = Scene::new("failing", &[("Dockerfile", SCRATCH)]);
    let (_registry, address) = registry_with_base(&scene);
    let allowed = vec![address.clone()];
    std::fs::write(
        scene.path("ctx/Dockerfile"),
        format!(
            "FROM {address}/base:1\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \
             \"echo the-step-said-this >&2; exit 3\"]\n"
        ),
    )
    .unwrap();
    let (result, log) = scene.build("out", &allowed, &allowed);
    let message = result.unwrap_err().to_string();
    assert!(message.contains("buildah bud"), "{message}");
    assert!(message.contains("the-step-said-this"), "{message}\n{log}");
    // A missing COPY source.
    std::fs::write(
        scene.path("ctx/Dockerfile"),
        "FROM scratch\nCOPY no-such-file /\n",
    )
    .unwrap();
    let (result, _) = scene.build("copy", &[], &[]);
    let message = result.unwrap_err().to_string();
    assert!(message.contains("no-such-file"), "{message}");
}

/// Python's CGI server in front of `git http-backend`, serving the repositories under `root`.
struct GitServer {
    child: Child,
    address: String,
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

fn start_git_server(root: &Path, www: &Path) -> GitServer {
    let bin = www.join("cgi-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("git");
    std::fs::write(
        &script,
        "#!/bin/sh\nexec /usr/lib/git-core/git-http-backend\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", CGI_SERVER])
        .arg(www)
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        // The CGI server runs scripts as nobody, which owns neither the repositories nor
        // their directories.
        .env("GIT_CONFIG_COUNT", "1")
        .env("GIT_CONFIG_KEY_0", "safe.directory")
        .env("GIT_CONFIG_VALUE_0", "*")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = format!("127.0.0.1:{}", line.trim());
    GitServer { child, address }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(GIT)
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
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn clone(
    scene: &Scene,
    dest: &str,
    url: &str,
    reference: Option<&str>,
    allowed: &[String],
) -> (Result<GitCheckout, BuildError>, String) {
    let proxied: Vec<&str> = allowed.iter().map(String::as_str).collect();
    let runtime = runtime();
    let proxy = runtime
        .block_on(async { RegistryProxy::start(&scene.path("git-proxy.sock"), &proxied) })
        .unwrap();
    let dest = scene.path(dest);
    let c = GitClone {
        url,
        reference,
        dest: &dest,
        git: Path::new(GIT),
        allowed_hosts: allowed,
    };
    let mut log = String::new();
    let result = runtime.block_on(ignite_builder::git::clone_git(
        &c,
        &options(Some(proxy.path())),
        |line| {
            log.push_str(line);
            log.push('\n');
        },
    ));
    drop(proxy);
    (result, log)
}

fn a_clone_at_a_tag_a_branch_and_a_commit_goes_through_the_proxy() {
    let scene = Scene::new("git", &[]);
    // nobody (the CGI scripts' user) reads the repositories.
    std::fs::set_permissions(
        scene.base.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let repos = scene.path("repos");
    let repo = repos.join("app.git");
    std::fs::create_dir_all(&repo).unwrap();
    let work = scene.path("checkout");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q"]);
    std::fs::write(work.join("Dockerfile"), "FROM scratch\nCOPY v /v\n").unwrap();
    std::fs::write(work.join("v"), "one\n").unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-qm", "one"]);
    git(&work, &["tag", "v1"]);
    let first = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["checkout", "-qb", "feature"]);
    std::fs::write(work.join("v"), "two\n").unwrap();
    git(&work, &["commit", "-qam", "two"]);
    git(
        &work,
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            repo.to_str().unwrap(),
        ],
    );
    let server = start_git_server(&repos, &scene.path("www"));
    let url = format!("http://{}/cgi-bin/git/app.git", server.address);
    let allowed = vec![server.address.clone()];

    let (result, log) = clone(&scene, "tag", &url, Some("v1"), &allowed);
    let checkout = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(checkout.commit, first);
    assert_eq!(
        std::fs::read_to_string(checkout.dir.join("v")).unwrap(),
        "one\n"
    );
    assert!(!checkout.dir.join(".git").exists());

    let (result, log) = clone(&scene, "branch", &url, Some("feature"), &allowed);
    let checkout = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(
        std::fs::read_to_string(checkout.dir.join("v")).unwrap(),
        "two\n"
    );

    // A commit id the server does not serve by itself: the whole history, then the commit.
    let (result, log) = clone(&scene, "commit", &url, Some(&first), &allowed);
    let checkout = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(checkout.commit, first);
    assert_eq!(
        std::fs::read_to_string(checkout.dir.join("v")).unwrap(),
        "one\n"
    );

    // Credentials in the URL stay out of the log and the error; a host the proxy refuses.
    let secret_url = format!("http://user:s3cr3t@{}/cgi-bin/git/app.git", server.address);
    let (result, log) = clone(&scene, "refused", &secret_url, None, &[]);
    let e = result.unwrap_err().to_string();
    assert!(e.contains("may clone only from"), "{e}");
    assert!(
        !e.contains("s3cr3t") && !log.contains("s3cr3t"),
        "{e}\n{log}"
    );
    // Allowed by the clone, refused by the proxy (its allow-list is another host's).
    let proxied_elsewhere = format!("127.0.0.1:{}", free_port());
    let runtime = runtime();
    let proxy = runtime
        .block_on(async {
            RegistryProxy::start(
                &scene.path("other-proxy.sock"),
                &[proxied_elsewhere.as_str()],
            )
        })
        .unwrap();
    let dest = scene.path("through-refusing-proxy");
    let c = GitClone {
        url: &secret_url,
        reference: None,
        dest: &dest,
        git: Path::new(GIT),
        allowed_hosts: &allowed,
    };
    let mut log = String::new();
    let result = runtime.block_on(ignite_builder::git::clone_git(
        &c,
        &options(Some(proxy.path())),
        |l| {
            log.push_str(l);
            log.push('\n');
        },
    ));
    let e = result.unwrap_err().to_string();
    assert!(e.contains("git fetch failed"), "{e}\n{log}");
    assert!(
        !e.contains("s3cr3t") && !log.contains("s3cr3t"),
        "{e}\n{log}"
    );
}

fn file_and_option_like_git_urls_are_refused() {
    let scene = Scene::new("git-refused", &[]);
    let allowed = vec!["127.0.0.1:1".to_string()];
    for url in [
        "file:///etc",
        "--upload-pack=touch /tmp/pwned",
        "ext::sh -c touch% /tmp/pwned",
    ] {
        let (result, _) = clone(&scene, "dest", url, None, &allowed);
        let e = result.unwrap_err();
        assert!(matches!(e, BuildError::GitUrl(_)), "{url}: {e}");
    }
    let (result, _) = clone(
        &scene,
        "dest",
        "http://127.0.0.1:1/r.git",
        Some("--upload-pack=x"),
        &allowed,
    );
    assert!(matches!(result, Err(BuildError::GitRef(_))), "{result:?}");
}

fn a_dockerfile_outside_the_context_is_refused() {
    let scene = Scene::new("outside", &[]);
    std::fs::write(scene.path("Dockerfile"), "FROM scratch\n").unwrap();
    std::os::unix::fs::symlink("../Dockerfile", scene.path("ctx/Dockerfile")).unwrap();
    let (result, _) = scene.build("out", &[], &[]);
    let e = result.unwrap_err();
    assert!(matches!(e, BuildError::DockerfileOutside(_)), "{e}");
}
