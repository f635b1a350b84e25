//! Images in the platform's OCI layout: storing checked blobs, loading an image by manifest
//! digest, and importing one from another layout directory.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use ignite_builder::oci::OciLayout;
use rustix::fs::{Mode, OFlags, ResolveFlags};
use sha2::{Digest as _, Sha256};

use crate::manifest::{
    self, Descriptor, MAX_DOCUMENT, Parsed, check_digest, parse_config, parse_manifest, verify,
};
use crate::{Image, ImageError};

/// A temporary name in the layout's blob directory for a blob being written.
pub(crate) fn partial_blob_path(layout: &OciLayout, digest: &str) -> PathBuf {
    layout
        .blob_path(digest)
        .with_extension(format!("partial-{}", ulid::Ulid::new()))
}

/// Moves a blob written at `tmp` to its name, or removes it when `result` is an error.
pub(crate) fn commit_blob(
    result: Result<(), ImageError>,
    tmp: &Path,
    dest: &Path,
) -> Result<(), ImageError> {
    match result {
        Ok(()) => std::fs::rename(tmp, dest)
            .map_err(|e| ImageError::io("could not store the blob at", dest, e)),
        Err(e) => {
            let _ = std::fs::remove_file(tmp);
            Err(e)
        }
    }
}

/// Fails unless a blob's `actual` size and `hash` are those `descriptor` says.
pub(crate) fn check_blob(
    what: &str,
    descriptor: (&str, u64),
    actual: u64,
    hash: Sha256,
) -> Result<(), ImageError> {
    let (digest, size) = descriptor;
    if actual != size {
        return Err(ImageError::SizeMismatch {
            what: what.into(),
            digest: digest.into(),
            expected: size,
            actual,
        });
    }
    let actual = format!("sha256:{:x}", hash.finalize());
    if actual != digest {
        return Err(ImageError::DigestMismatch {
            what: what.into(),
            expected: digest.into(),
            actual,
        });
    }
    Ok(())
}

/// Copies a blob of `digest` and `size` from `reader` into the layout, reading at most one byte
/// more than `size`, and keeps it only if it hashes to `digest`.
fn store_blob(
    layout: &OciLayout,
    what: &str,
    digest: &str,
    size: u64,
    reader: impl Read,
) -> Result<(), ImageError> {
    let dest = layout.blob_path(digest);
    let tmp = partial_blob_path(layout, digest);
    let write = || -> Result<(), ImageError> {
        let io_err = |e| ImageError::io(format!("could not write the {what} to"), &tmp, e);
        let mut file = std::fs::File::create(&tmp).map_err(io_err)?;
        let mut hash = Sha256::new();
        let mut written = 0u64;
        let mut reader = reader.take(size.saturating_add(1));
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(e)),
            };
            hash.update(&buf[..n]);
            written += n as u64;
            file.write_all(&buf[..n]).map_err(io_err)?;
        }
        check_blob(what, (digest, size), written, hash)?;
        file.sync_all().map_err(io_err)
    };
    commit_blob(write(), &tmp, &dest)
}

/// Reads a small document blob (manifest, config) from the layout, checked against its digest.
pub(crate) fn read_document(
    layout: &OciLayout,
    digest: &str,
    image: &str,
) -> Result<Vec<u8>, ImageError> {
    let path = layout.blob_path(digest);
    let bytes = read_bounded(std::fs::File::open(&path), &path, image, digest)?;
    verify(&bytes, digest, "blob")?;
    Ok(bytes)
}

fn read_bounded(
    file: io::Result<std::fs::File>,
    path: &Path,
    image: &str,
    digest: &str,
) -> Result<Vec<u8>, ImageError> {
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ImageError::NotStored {
                digest: image.into(),
                missing: digest.into(),
            });
        }
        Err(e) => return Err(ImageError::io("could not read", path, e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_DOCUMENT + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ImageError::io("could not read", path, e))?;
    if bytes.len() as u64 > MAX_DOCUMENT {
        return Err(ImageError::invalid(
            "manifest",
            format!("{digest} is larger than {MAX_DOCUMENT} bytes"),
        ));
    }
    Ok(bytes)
}

/// Loads an image already in `layout` by manifest digest (a version stores only that digest).
pub fn load(layout: &OciLayout, manifest_digest: &str) -> Result<Image, ImageError> {
    check_digest(manifest_digest, "manifest")?;
    let bytes = read_document(layout, manifest_digest, manifest_digest)?;
    let manifest = match parse_manifest(&bytes)? {
        Parsed::Manifest(m) => m,
        Parsed::Index(_) => {
            return Err(ImageError::invalid(
                "manifest",
                format!("{manifest_digest} is an index, not an image manifest"),
            ));
        }
    };
    let config_bytes = read_document(layout, &manifest.config.digest, manifest_digest)?;
    let config = parse_config(&config_bytes)?;
    for layer in &manifest.layers {
        let path = layout.blob_path(&layer.digest);
        if !path.is_file() {
            return Err(ImageError::NotStored {
                digest: manifest_digest.into(),
                missing: layer.digest.clone(),
            });
        }
    }
    Ok(Image {
        manifest_digest: manifest_digest.into(),
        config_digest: manifest.config.digest,
        config,
        size: manifest.layers.iter().map(|l| l.size).sum(),
        layers: manifest.layers,
    })
}

/// Stores a checked image manifest (its config and layers already stored) and loads the image.
pub(crate) fn finish(
    layout: &OciLayout,
    manifest_bytes: &[u8],
    digest: &str,
) -> Result<Image, ImageError> {
    verify(manifest_bytes, digest, "manifest")?;
    let stored = layout.put_blob(manifest_bytes).map_err(|e| {
        ImageError::io(
            "could not store the manifest in",
            layout.blob_path(digest),
            e,
        )
    })?;
    debug_assert_eq!(stored, digest);
    load(layout, digest)
}

/// Opens a blob of another layout directory without following any symlink in it.
fn open_source_blob(dir: &Path, digest: &str) -> io::Result<std::fs::File> {
    let root = std::fs::File::open(dir)?;
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    let fd = rustix::fs::openat2(
        &root,
        format!("blobs/sha256/{hex}"),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )?;
    Ok(std::fs::File::from(fd))
}

/// Imports an image from another OCI image layout directory (what `buildah push oci:<dir>`
/// writes) into `layout`: the linux/amd64 image of its `index.json` (or its only one), every
/// blob checked against its digest, blobs already present skipped. The same result as
/// [`crate::pull`].
pub fn import_layout(layout: &OciLayout, dir: &Path) -> Result<Image, ImageError> {
    let index_path = dir.join("index.json");
    let index = read_bounded(
        std::fs::File::open(&index_path),
        &index_path,
        &dir.display().to_string(),
        "index.json",
    )?;
    let mut parsed = parse_manifest(&index)?;
    let source = dir.display().to_string();
    // An index.json may name an index in turn (a multi-platform build): follow it once.
    for _ in 0..2 {
        let entries = match parsed {
            Parsed::Index(entries) => entries,
            Parsed::Manifest(_) => {
                return Err(ImageError::invalid(
                    "layout",
                    format!("{} is not an index", index_path.display()),
                ));
            }
        };
        let picked: Descriptor =
            manifest::pick_platform(&entries)
                .cloned()
                .ok_or_else(|| ImageError::NoPlatform {
                    reference: source.clone(),
                })?;
        let bytes = read_source_document(dir, &picked)?;
        match parse_manifest(&bytes)? {
            Parsed::Manifest(m) => {
                let config = (&m.config.digest, m.config.size, "config");
                let layers = m.layers.iter().map(|l| (&l.digest, l.size, "layer"));
                for (digest, size, what) in std::iter::once(config).chain(layers) {
                    if layout.blob_path(digest).is_file() {
                        continue;
                    }
                    let file = open_source_blob(dir, digest).map_err(|e| {
                        ImageError::io(format!("could not read the {what} {digest} of"), dir, e)
                    })?;
                    store_blob(layout, what, digest, size, file)?;
                }
                return finish(layout, &bytes, &picked.digest);
            }
            index => parsed = index,
        }
    }
    Err(ImageError::invalid(
        "layout",
        format!("{} nests indexes more than twice", index_path.display()),
    ))
}

fn read_source_document(dir: &Path, descriptor: &Descriptor) -> Result<Vec<u8>, ImageError> {
    if descriptor.size > MAX_DOCUMENT {
        return Err(ImageError::invalid(
            "manifest",
            format!("{} is larger than {MAX_DOCUMENT} bytes", descriptor.digest),
        ));
    }
    let path = dir.join("blobs/sha256");
    let bytes = read_bounded(
        open_source_blob(dir, &descriptor.digest),
        &path,
        &dir.display().to_string(),
        &descriptor.digest,
    )?;
    verify(&bytes, &descriptor.digest, "manifest")?;
    Ok(bytes)
}
