//! Importing an image from an OCI layout directory, as `buildah push oci:<dir>` writes one.

mod common;

use std::path::Path;

use common::{E, config_json, gzip, manifest_json, tar};
use ignite_builder::oci::OciLayout;
use ignite_image::{ImageConfig, ImageError, RootCache, import_layout};
use sha2::Digest;

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

fn put(dir: &Path, bytes: &[u8]) -> String {
    let d = digest(bytes);
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("blobs");
    std::fs::write(blobs.join(d.trim_start_matches("sha256:")), bytes).expect("blob");
    d
}

/// Writes a layout directory holding one image; returns its manifest digest and layer digest.
fn write_layout(dir: &Path, platform: bool) -> (String, String) {
    let layer = gzip(&tar(&[
        E::File("bin/app", b"#!", 0o755),
        E::File("etc/motd", b"built here", 0o644),
    ]));
    let config = config_json(&ImageConfig {
        cmd: vec!["app".into()],
        ..ImageConfig::default()
    });
    let layer_digest = put(dir, &layer);
    put(dir, &config);
    let manifest = manifest_json(&config, &[layer]);
    let manifest_digest = put(dir, &manifest);
    let mut entry = serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest,
        "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": "latest"},
    });
    let mut manifests = vec![];
    if platform {
        entry["platform"] = serde_json::json!({"os": "linux", "architecture": "amd64"});
        // An arm64 image beside it, which must not be picked.
        manifests.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", "1".repeat(64)),
            "size": 10,
            "platform": {"os": "linux", "architecture": "arm64"},
        }));
    }
    manifests.push(entry);
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": manifests}))
            .expect("json"),
    )
    .expect("index");
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("marker");
    (manifest_digest, layer_digest)
}

struct Fixture {
    tmp: tempfile::TempDir,
    layout: OciLayout,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let layout = OciLayout::open(&tmp.path().join("layout")).expect("layout");
    Fixture { tmp, layout }
}

#[test]
fn an_image_is_imported_from_a_layout_directory_and_unpacked() {
    let f = fixture();
    let source = f.tmp.path().join("built");
    let (manifest, layer) = write_layout(&source, false);
    let image = import_layout(&f.layout, &source).expect("import");
    assert_eq!(image.manifest_digest, manifest);
    assert_eq!(image.layers[0].digest, layer);
    assert_eq!(image.config.cmd, ["app"]);
    assert_eq!(
        ignite_image::load(&f.layout, &manifest).expect("load"),
        image
    );
    let again = import_layout(&f.layout, &source).expect("import again");
    assert_eq!(again, image);
    let cache = RootCache::new(f.tmp.path().join("roots"), 1 << 20);
    let (root, _) = cache.acquire(&f.layout, &image).expect("acquire");
    assert_eq!(
        std::fs::read_to_string(root.path.join("etc/motd")).expect("motd"),
        "built here"
    );
    assert_eq!(root.program, Path::new("/bin/app"));
}

#[test]
fn the_linux_amd64_image_of_a_multi_platform_layout_is_picked() {
    let f = fixture();
    let source = f.tmp.path().join("built");
    let (manifest, _) = write_layout(&source, true);
    let image = import_layout(&f.layout, &source).expect("import");
    assert_eq!(image.manifest_digest, manifest);
}

#[test]
fn a_tampered_blob_is_refused_and_not_stored() {
    let f = fixture();
    let source = f.tmp.path().join("built");
    let (_, layer) = write_layout(&source, false);
    let path = source
        .join("blobs/sha256")
        .join(layer.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&path).expect("layer");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, bytes).expect("tamper");
    let err = import_layout(&f.layout, &source).expect_err("tampered");
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err:?}");
    assert!(!f.layout.blob_path(&layer).exists());
    let leftovers: Vec<_> = std::fs::read_dir(f.tmp.path().join("layout/blobs/sha256"))
        .expect("blobs")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_symlinked_blob_is_not_followed() {
    let f = fixture();
    let source = f.tmp.path().join("built");
    let (_, layer) = write_layout(&source, false);
    let path = source
        .join("blobs/sha256")
        .join(layer.trim_start_matches("sha256:"));
    let real = f.tmp.path().join("elsewhere");
    std::fs::rename(&path, &real).expect("move");
    std::os::unix::fs::symlink(&real, &path).expect("symlink");
    let err = import_layout(&f.layout, &source).expect_err("symlink");
    assert!(matches!(err, ImageError::Io { .. }), "{err:?}");
}

#[test]
fn a_digest_that_is_a_path_is_refused() {
    let f = fixture();
    let source = f.tmp.path().join("built");
    std::fs::create_dir_all(&source).expect("dir");
    std::fs::write(
        source.join("index.json"),
        br#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:../../../../etc/passwd","size":1}]}"#,
    )
    .expect("index");
    let err = import_layout(&f.layout, &source).expect_err("bad digest");
    assert!(matches!(err, ImageError::Invalid { .. }), "{err:?}");
}
