//! The platform registry end to end: a real server started with `--registry` pointing at a
//! real registry on loopback (Debian's `docker-registry`) publishes a draft's source at save
//! and a build's artifact at compile, each tagged by digest; a server that lost the artifact
//! from its data directory pulls it back at the next cold start, and the record's `fetch_ms`
//! says so — a native binary (back executable), a Python app's tree (unpacked again) and an
//! image (its manifest, config and layers, from `<prefix>/images`).

mod support;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use support::images::{Registry, echo_config, echo_layer};
use support::platform::*;

const HANDLER: &str = r#"
use ignite::prelude::*;

#[ignite::main]
async fn handler(req: Request, _ctx: Context) -> Result<impl IntoResponse> {
    let name: String = req.field("name").unwrap_or_else(|_| "fleet".into());
    Ok(serde_json::json!({ "hello": name }))
}
"#;

/// The status of a `HEAD` of `path` on the registry (with `accept`, for a manifest).
fn head(addr: &str, path: &str, accept: &str) -> u16 {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the registry");
    write!(
        s,
        "HEAD {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read");
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"))
}

/// Whether the registry holds the blob `digest` in `<prefix>/blobs`, with the manifest tagged
/// by its digest that keeps it through garbage collection.
fn registry_holds(registry: &Registry, digest: &str) -> bool {
    let blob = head(
        &registry.addr,
        &format!("/v2/ignite/blobs/blobs/{digest}"),
        "*/*",
    );
    let tag = digest.replacen(':', "-", 1);
    let manifest = head(
        &registry.addr,
        &format!("/v2/ignite/blobs/manifests/{tag}"),
        "application/vnd.oci.image.manifest.v1+json",
    );
    blob == 200 && manifest == 200
}

fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    let text = String::from_utf8_lossy(&out.stdout);
    format!("sha256:{}", text.split_whitespace().next().unwrap_or(""))
}

#[test]
fn a_server_that_lost_an_artifact_pulls_it_back_from_the_platform_registry() {
    let dir = scratch("platform-registry");
    let registry = Registry::start(&dir.join("registry"), None);
    let url = format!("http://{}/ignite", registry.addr);
    let server = start_server_with(&dir.join("server"), &["--registry", &url]);
    let p = project(&dir, "fleet", HANDLER);
    let id = "acme-corp:fleet";
    ok(
        &server,
        &p,
        &["app", "create", "fleet", "--runtime", "rust"],
    );
    let saved = json(&ok(
        &server,
        &p,
        &[
            "draft",
            "save",
            id,
            "--code",
            "./",
            "--runtime",
            "rust",
            "--rust-target",
            "native",
            "-o",
            "json",
        ],
    ));
    let source = saved["draft"]["source_digest"]
        .as_str()
        .unwrap_or_else(|| panic!("no source digest in {saved}"))
        .to_string();
    // The save is acknowledged once the registry has the source: another replica may build it.
    assert!(registry_holds(&registry, &source), "source {source}");

    ok(&server, &p, &["draft", "compile", id]);
    let logs = ok(&server, &p, &["draft", "compile-logs", id]);
    ok(&server, &p, &["draft", "publish", id]);
    let app = json(&ok(&server, &p, &["app", "get", id, "-o", "json"]));
    let artifact = app["artifact"]["digest"]
        .as_str()
        .unwrap_or_else(|| panic!("no artifact in {app}\n{logs}"))
        .to_string();
    assert!(registry_holds(&registry, &artifact), "artifact {artifact}");
    let (status, _, body) = call_app(&server, "fleet", r#"{"name": "one"}"#);
    assert_eq!(status, 200, "{body}");
    let data = server.dir.clone();
    server.stop();

    // The node loses its copy (a new machine, a cleaned disk): the next start pulls it back.
    let blob = data
        .join("data/blobs/sha256")
        .join(artifact.trim_start_matches("sha256:"));
    std::fs::remove_file(&blob).expect("remove the artifact");
    let server = start_server_with(&dir.join("server"), &["--registry", &url]);
    // The CLI's config keeps the first start's (port 0) address.
    let api = server.api.clone();
    ok(&server, &p, &["config", "set", "api_endpoint", &api]);
    let (status, headers, body) = call_app(&server, "fleet", r#"{"name": "two"}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["hello"], "two", "{body}");
    let record = execution_of(&server, &p, &headers);
    let phases = &record["metrics"]["cold_start_phases"];
    assert!(phases["fetch_ms"].as_f64() > Some(0.0), "{record}");
    assert_eq!(sha256_of(&blob), artifact);
    // Executed in place, so stored executable.
    let mode = std::fs::metadata(&blob).expect("blob").permissions().mode();
    assert_eq!(mode & 0o111, 0o111, "mode {mode:o}");
    server.stop();

    // The registry gone: a start with it refuses, saying which one and what to do.
    drop(registry);
    let out = Command::new(env!("CARGO_BIN_EXE_dodil"))
        .args(["ignite", "server", "--registry", &url, "--data-dir"])
        .arg(dir.join("server/data"))
        .args([
            "--api-listen",
            "127.0.0.1:0",
            "--gateway-listen",
            "127.0.0.1:0",
        ])
        .env("DODIL_CONFIG", dir.join("server/config.toml"))
        .output()
        .expect("dodil ignite server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("does not answer") && stderr.contains(&url),
        "{stderr}"
    );
}

#[test]
fn a_python_app_tree_is_published_and_pulled_back_and_unpacked_again() {
    let dir = scratch("platform-registry-python");
    let registry = Registry::start(&dir.join("registry"), None);
    let url = format!("http://{}/ignite", registry.addr);
    let server = start_server_env(&dir.join("server"), &[], &[("IGNITE_REGISTRY", &url)]);
    let p = deploy_files(
        &server,
        &dir,
        "fleet-py",
        "python",
        &[(
            "main.py",
            "import ignite\n\n@ignite.main\nasync def handler(req, ctx):\n    return {\"hello\": req.field(\"name\", default=\"py\")}\n",
        )],
    );
    let id = "acme-corp:fleet-py";
    let app = json(&ok(&server, &p, &["app", "get", id, "-o", "json"]));
    let artifact = app["artifact"]["digest"]
        .as_str()
        .unwrap_or_else(|| panic!("no artifact in {app}"))
        .to_string();
    assert!(registry_holds(&registry, &artifact), "artifact {artifact}");
    let data = server.dir.join("data");
    server.stop();

    // The tree's tar and its unpacked copy both gone.
    let hex = artifact.trim_start_matches("sha256:");
    let blob = data.join("blobs/sha256").join(hex);
    std::fs::remove_file(&blob).expect("remove the artifact");
    let _ = std::fs::remove_dir_all(data.join("apps").join(hex));
    let server = start_server_env(&dir.join("server"), &[], &[("IGNITE_REGISTRY", &url)]);
    let api = server.api.clone();
    ok(&server, &p, &["config", "set", "api_endpoint", &api]);
    let (status, headers, body) = call_app(&server, "fleet-py", r#"{"name": "again"}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["hello"], "again", "{body}");
    let record = execution_of(&server, &p, &headers);
    assert!(
        record["metrics"]["cold_start_phases"]["fetch_ms"].as_f64() > Some(0.0),
        "{record}"
    );
    assert_eq!(sha256_of(&blob), artifact);
    assert!(data.join("apps").join(hex).join("main.py").is_file());
    server.stop();
}

#[test]
fn an_image_is_published_by_digest_and_pulled_back_by_a_node_that_lost_it() {
    let dir = scratch("platform-registry-image");
    // One registry plays both parts: where the user's image comes from, and the platform's.
    let registry = Registry::start(&dir.join("registry"), None);
    let v1 = registry.push(
        "acme/echo:v1",
        vec![echo_layer()],
        echo_config("hello"),
        None,
    );
    let url = format!("http://{}/ignite", registry.addr);
    let args = [
        "--image-registry",
        registry.addr.as_str(),
        "--insecure-registry",
        registry.addr.as_str(),
        "--registry",
        url.as_str(),
    ];
    let server = start_server_with(&dir.join("server"), &args);
    let p = dir.clone();
    let id = "acme-corp:web";
    ok(&server, &p, &["app", "create", "web", "--runtime", "image"]);
    ok(&server, &p, &["draft", "save", id, "--image-ref", &v1]);
    ok(&server, &p, &["draft", "publish", id]);
    let app = json(&ok(&server, &p, &["app", "get", id, "-o", "json"]));
    let manifest = app["artifact"]["digest"]
        .as_str()
        .unwrap_or_else(|| panic!("no image in {app}"))
        .to_string();
    let tag = manifest.replacen(':', "-", 1);
    assert_eq!(
        head(
            &registry.addr,
            &format!("/v2/ignite/images/manifests/{tag}"),
            "application/vnd.oci.image.manifest.v1+json",
        ),
        200,
        "image {manifest}"
    );
    let data = server.dir.join("data");
    server.stop();

    // Every blob of the image gone from the node: the manifest, its config, its layers.
    let blobs = data.join("blobs/sha256");
    let blob = |digest: &str| blobs.join(digest.trim_start_matches("sha256:"));
    let document = json(&std::fs::read_to_string(blob(&manifest)).expect("the manifest"));
    let mut digests = vec![manifest.clone()];
    digests.push(
        document["config"]["digest"]
            .as_str()
            .expect("config")
            .into(),
    );
    for layer in document["layers"].as_array().expect("layers") {
        digests.push(layer["digest"].as_str().expect("layer").into());
    }
    for digest in &digests {
        std::fs::remove_file(blob(digest)).expect("remove a blob of the image");
    }
    let server = start_server_with(&dir.join("server"), &args);
    let api = server.api.clone();
    ok(&server, &p, &["config", "set", "api_endpoint", &api]);
    let (status, headers, body) = call_app(&server, "web", r#"{"message": "back"}"#);
    assert_eq!(status, 200, "{body}");
    let record = execution_of(&server, &p, &headers);
    assert!(
        record["metrics"]["cold_start_phases"]["fetch_ms"].as_f64() > Some(0.0),
        "{record}"
    );
    for digest in &digests {
        assert_eq!(sha256_of(&blob(digest)), *digest);
    }
    server.stop();
}
