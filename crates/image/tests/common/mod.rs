//! Helpers shared by the tests: hostile tars made with raw headers, and images stored in a
//! layout from them.
#![allow(dead_code)]

pub mod registry;

use std::io::Write;
use std::path::Path;

use ignite_builder::oci::OciLayout;
use ignite_image::{Image, ImageConfig};

/// One tar entry, its path (and link target) written into the header as is.
pub enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    Link(&'a str, &'a str),
    Fifo(&'a str),
    Char(&'a str),
    Block(&'a str),
}

fn raw_header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_old();
    let name = &mut h.as_old_mut().name;
    assert!(path.len() < name.len(), "test path too long");
    name[..path.len()].copy_from_slice(path.as_bytes());
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    // Owned by someone else: the unpacker must not chown to it.
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_mtime(0);
    h
}

fn set_link(h: &mut tar::Header, target: &str) {
    let link = &mut h.as_old_mut().linkname;
    assert!(target.len() < link.len(), "test link too long");
    link[..target.len()].copy_from_slice(target.as_bytes());
}

/// A tar of `entries`, paths as written (`..` and absolute paths included).
pub fn tar(entries: &[E]) -> Vec<u8> {
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
            E::Fifo(p) => (raw_header(p, tar::EntryType::Fifo, 0o644, 0), &[]),
            E::Char(p) => (raw_header(p, tar::EntryType::Char, 0o644, 0), &[]),
            E::Block(p) => (raw_header(p, tar::EntryType::Block, 0o644, 0), &[]),
        };
        h.set_cksum();
        b.append(&h, data).expect("append");
    }
    b.into_inner().expect("tar")
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip")
}

pub fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 1).expect("zstd")
}

/// The config JSON of an image with these settings.
pub fn config_json(config: &ImageConfig) -> Vec<u8> {
    let env: Vec<String> = config.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let ports: serde_json::Map<String, serde_json::Value> = config
        .exposed_ports
        .iter()
        .map(|p| (format!("{p}/tcp"), serde_json::json!({})))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": config.entrypoint,
            "Cmd": config.cmd,
            "Env": env,
            "WorkingDir": config.working_dir.clone().unwrap_or_default(),
            "User": config.user.clone().unwrap_or_default(),
            "ExposedPorts": ports,
        },
        "rootfs": {"type": "layers", "diff_ids": []},
    }))
    .expect("json")
}

fn media_type(layer: &[u8]) -> &'static str {
    if layer.starts_with(&[0x1f, 0x8b]) {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    } else if layer.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        "application/vnd.oci.image.layer.v1.tar+zstd"
    } else {
        "application/vnd.oci.image.layer.v1.tar"
    }
}

/// The manifest JSON of an image of this config blob and these layer blobs.
pub fn manifest_json(config: &[u8], layers: &[Vec<u8>]) -> Vec<u8> {
    let digest = |b: &[u8]| {
        use sha2::Digest;
        format!("sha256:{:x}", sha2::Sha256::digest(b))
    };
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| {
            serde_json::json!({"mediaType": media_type(l), "digest": digest(l), "size": l.len()})
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config), "size": config.len()},
        "layers": layers,
    }))
    .expect("json")
}

/// Stores an image of these layers and settings in `layout` and loads it back.
pub fn store(layout: &OciLayout, layers: &[Vec<u8>], config: &ImageConfig) -> Image {
    let config_bytes = config_json(config);
    layout.put_blob(&config_bytes).expect("config blob");
    for l in layers {
        layout.put_blob(l).expect("layer blob");
    }
    let manifest = manifest_json(&config_bytes, layers);
    let digest = layout.put_blob(&manifest).expect("manifest blob");
    ignite_image::load(layout, &digest).expect("load")
}

/// A config that runs `/bin/app`.
pub fn runs_app() -> ImageConfig {
    ImageConfig {
        cmd: vec!["/bin/app".into()],
        ..ImageConfig::default()
    }
}

/// Every path under `dir`, relative, sorted (to tell that nothing changed there).
pub fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).expect("prefix").display().to_string());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(base, &p, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}
