//! The platform registry against a real one (Debian's `docker-registry` on loopback) and a
//! hostile one (a tiny HTTP server answering the distribution API with the wrong bytes): blobs
//! and images pushed from one layout and pulled into a fresh one, digests and budgets checked
//! before anything is stored, pushes idempotent, every refusal saying what was wrong.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::registry::Registry;
use common::{E, gzip, tar};
use ignite_builder::oci::{BINARY_MEDIA_TYPE, OciLayout};
use ignite_image::{ImageError, PlatformRegistry};
use sha2::Digest as _;

fn layout(dir: &Path, name: &str) -> OciLayout {
    OciLayout::open(&dir.join(name)).expect("layout")
}

fn platform(addr: &str) -> PlatformRegistry {
    PlatformRegistry::new(&format!("http://{addr}/ignite"), None).expect("registry URL")
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir")
}

/// The files of a layout's blob directory (to tell that nothing, not even a partial file, was
/// left there).
fn blob_files(layout_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(layout_dir.join("blobs/sha256"))
        .expect("blobs")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_round_trips_and_pushing_twice_is_idempotent() {
    let registry = Registry::start(None);
    let dir = tmp();
    let (here, there) = (layout(dir.path(), "here"), layout(dir.path(), "there"));
    let bytes: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
    let digest = here.put_blob(&bytes).expect("blob");
    let platform = platform(&registry.addr);
    platform.check().await.expect("the registry answers");

    platform
        .push_blob(&here, &digest, BINARY_MEDIA_TYPE)
        .await
        .unwrap_or_else(|e| panic!("push: {e}\n{}", registry.log()));
    // Again: what the registry has is not sent again, and nothing fails.
    platform
        .push_blob(&here, &digest, BINARY_MEDIA_TYPE)
        .await
        .expect("second push");

    let path = platform
        .pull_blob(&there, &digest, 8 << 20)
        .await
        .unwrap_or_else(|e| panic!("pull: {e}\n{}", registry.log()));
    assert_eq!(path, there.blob_path(&digest));
    let pulled = std::fs::read(&path).expect("pulled blob");
    assert_eq!(
        format!("sha256:{:x}", sha2::Sha256::digest(&pulled)),
        digest
    );
    assert_eq!(pulled, bytes);
    // A handler binary is executed in place: it arrives executable.
    let mode = std::fs::metadata(&path).expect("mode").permissions().mode();
    assert_eq!(mode & 0o111, 0o111, "mode {mode:o}");

    // The manifest that keeps it through garbage collection is tagged by its digest.
    let tag = digest.replacen(':', "-", 1);
    let answer = head_request(
        &registry.addr,
        &format!("/v2/ignite/blobs/manifests/{tag}"),
        "application/vnd.oci.image.manifest.v1+json",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Another blob of another kind: a plain (not executable) one.
    let source = here.put_blob(b"fn main() {}").expect("source");
    platform
        .push_blob(&here, &source, "application/vnd.ignite.source.v1")
        .await
        .expect("push source");
    let path = platform
        .pull_blob(&there, &source, 1 << 20)
        .await
        .expect("pull source");
    let mode = std::fs::metadata(&path).expect("mode").permissions().mode();
    assert_eq!(mode & 0o111, 0, "mode {mode:o}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_image_is_pulled_into_a_fresh_layout() {
    let registry = Registry::start(None);
    let dir = tmp();
    let (here, there) = (layout(dir.path(), "here"), layout(dir.path(), "there"));
    let layers = vec![
        gzip(&tar(&[E::File("bin/app", b"#!/bin/app\n", 0o755)])),
        gzip(&tar(&[E::File("srv/hello.txt", b"hello", 0o644)])),
    ];
    let image = common::store(&here, &layers, &common::runs_app());
    let platform = platform(&registry.addr);
    platform
        .push_image(&here, &image.manifest_digest)
        .await
        .unwrap_or_else(|e| panic!("push: {e}\n{}", registry.log()));
    platform
        .push_image(&here, &image.manifest_digest)
        .await
        .expect("second push");

    // Over the budget: refused before a layer is fetched.
    let refused = platform
        .pull_image(&there, &image.manifest_digest, 10)
        .await
        .expect_err("over the budget");
    assert!(
        matches!(refused, ImageError::PullTooLarge { limit: 10, .. }),
        "{refused}"
    );
    for layer in &image.layers {
        assert!(!there.blob_path(&layer.digest).exists());
    }

    let pulled = platform
        .pull_image(&there, &image.manifest_digest, 1 << 20)
        .await
        .unwrap_or_else(|e| panic!("pull: {e}\n{}", registry.log()));
    assert_eq!(pulled, image);
    assert_eq!(
        ignite_image::load(&there, &image.manifest_digest).expect("load"),
        image
    );

    let unknown = format!("sha256:{}", "1".repeat(64));
    let missing = platform
        .pull_image(&there, &unknown, 1 << 20)
        .await
        .expect_err("unknown image");
    assert!(
        matches!(missing, ImageError::NotInPlatformRegistry { ref digest, .. } if *digest == unknown),
        "{missing}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_over_the_budget_or_unknown_is_refused_and_nothing_is_stored() {
    let registry = Registry::start(None);
    let dir = tmp();
    let (here, there) = (layout(dir.path(), "here"), layout(dir.path(), "there"));
    let digest = here.put_blob(&[7u8; 4096]).expect("blob");
    let platform = platform(&registry.addr);
    platform
        .push_blob(&here, &digest, "application/octet-stream")
        .await
        .expect("push");
    let before = blob_files(&dir.path().join("there"));

    let refused = platform
        .pull_blob(&there, &digest, 1000)
        .await
        .expect_err("over the budget");
    assert!(
        matches!(
            refused,
            ImageError::BlobTooLarge {
                size: 4096,
                limit: 1000,
                ..
            }
        ),
        "{refused}"
    );
    assert!(refused.to_string().contains(&digest), "{refused}");

    let unknown = format!("sha256:{}", "2".repeat(64));
    let missing = platform
        .pull_blob(&there, &unknown, 1 << 20)
        .await
        .expect_err("unknown");
    assert!(
        matches!(missing, ImageError::NotInPlatformRegistry { .. }),
        "{missing}"
    );
    let message = missing.to_string();
    assert!(
        message.contains(&unknown) && message.contains(&registry.addr),
        "{message}"
    );

    let not_a_digest = platform
        .pull_blob(&there, "sha256:../../etc", 1 << 20)
        .await
        .expect_err("not a digest");
    assert!(
        matches!(not_a_digest, ImageError::Invalid { .. }),
        "{not_a_digest}"
    );
    assert_eq!(blob_files(&dir.path().join("there")), before);
}

/// A registry (or a proxy in front of one) that answers the distribution API for `digest` with
/// a well-formed manifest and `served` as the blob's bytes. Serves until the test ends.
fn hostile_registry(digest: &str, size: usize, served: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.ignite.blob.v1",
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
            "size": 2
        },
        "layers": [{"mediaType": "application/octet-stream", "digest": digest, "size": size}],
    }))
    .expect("json");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).map_or(true, |n| n == 0) || line == "\r\n" {
                    break;
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
            let (content_type, body): (&str, &[u8]) = if path.contains("/manifests/") {
                ("application/vnd.oci.image.manifest.v1+json", &manifest)
            } else if path.contains("/blobs/sha256:") {
                ("application/octet-stream", &served)
            } else {
                ("application/json", b"{}")
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
                 Docker-Distribution-API-Version: registry/2.0\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            if !request.starts_with("HEAD") {
                let _ = stream.write_all(body);
            }
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_serving_the_wrong_bytes_is_refused_and_nothing_is_stored() {
    let dir = tmp();
    let there = layout(dir.path(), "there");
    let wanted = b"the artifact the build made".to_vec();
    let digest = format!("sha256:{:x}", sha2::Sha256::digest(&wanted));
    let before = blob_files(&dir.path().join("there"));

    // The same length, other bytes.
    let mut tampered = wanted.clone();
    tampered[0] ^= 0xff;
    let addr = hostile_registry(&digest, wanted.len(), tampered);
    let refused = platform(&addr)
        .pull_blob(&there, &digest, 1 << 20)
        .await
        .expect_err("wrong bytes");
    assert!(
        matches!(refused, ImageError::DigestMismatch { ref expected, .. } if *expected == digest),
        "{refused}"
    );
    assert!(!there.blob_path(&digest).exists());
    assert_eq!(blob_files(&dir.path().join("there")), before);

    // More bytes than the manifest said: at most the announced size is read, then refused.
    let mut longer = wanted.clone();
    longer.extend_from_slice(&[0u8; 1 << 16]);
    let addr = hostile_registry(&digest, wanted.len(), longer);
    let refused = platform(&addr)
        .pull_blob(&there, &digest, 1 << 20)
        .await
        .expect_err("too long");
    assert!(
        matches!(
            refused,
            ImageError::SizeMismatch { .. } | ImageError::DigestMismatch { .. }
        ),
        "{refused}"
    );
    assert_eq!(blob_files(&dir.path().join("there")), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_does_not_answer_fails_the_check_clearly() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port();
    // Nothing listens there any more.
    let platform = platform(&format!("127.0.0.1:{port}"));
    let err = platform.check().await.expect_err("no registry");
    let message = err.to_string();
    assert!(
        matches!(err, ImageError::PlatformRegistry { .. }),
        "{message}"
    );
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
}

#[test]
fn registry_urls_are_checked() {
    for good in [
        "http://127.0.0.1:5000/ignite",
        "https://registry.example.com/ignite/prod/",
        "https://registry.example.com:8443/a.b/c-d/e_f",
    ] {
        PlatformRegistry::new(good, None).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    for (bad, says) in [
        ("not a url", "not a URL"),
        ("registry.example.com/ignite", "not a URL"),
        ("ftp://registry.example.com/ignite", "scheme `ftp`"),
        (
            "http://user:secret@10.0.0.5:5000/ignite",
            "IGNITE_REGISTRY_USERNAME",
        ),
        ("http://10.0.0.5:5000", "no repository prefix"),
        ("http://10.0.0.5:99999/ignite", "not a port"),
        ("http://10.0.0.5:5000/Ignite", "not a repository name"),
        ("http://10.0.0.5:5000/ignite?x=1", "query"),
        ("http://bad_host!/ignite", "not a host"),
    ] {
        let err = PlatformRegistry::new(bad, None).expect_err(bad);
        let message = err.to_string();
        assert!(
            matches!(err, ImageError::RegistryUrl { .. }) && message.contains(says),
            "{bad}: {message}"
        );
        assert!(!message.contains("secret"), "{message}");
    }
}

/// A HEAD request with `accept`, written by hand: the status line and headers.
fn head_request(addr: &str, path: &str, accept: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "HEAD {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read");
    answer
}
