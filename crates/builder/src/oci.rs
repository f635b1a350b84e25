//! The artifact store: an OCI image layout directory (`oci-layout`, `index.json`,
//! `blobs/sha256/<hex>`). Each built handler is an OCI artifact: a manifest whose one layer is the
//! static binary (or the component, or a Python or Deno app's tree as a tar), named in `index.json` by
//! `<org>/<app>:<build id>`. Blobs are content-addressed and written atomically, so a
//! half-written file is never visible under its digest.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The artifact type of a native handler manifest.
pub const NATIVE_ARTIFACT_TYPE: &str = "application/vnd.ignite.handler.native.v1";
/// The media type of the handler binary layer.
pub const BINARY_MEDIA_TYPE: &str = "application/vnd.ignite.handler.binary.v1";
/// A wasm32-wasip2 component's layer.
pub const WASM_MEDIA_TYPE: &str = "application/wasm";
const WASM_ARTIFACT_TYPE: &str = "application/vnd.wasm.component.v1+wasm";
/// The artifact type of a Python app manifest.
pub const PYTHON_ARTIFACT_TYPE: &str = "application/vnd.ignite.handler.python.v1";
/// The media type of a Python app's layer: the app tree as one tar (see
/// [`unpack_app`]).
pub const PYTHON_MEDIA_TYPE: &str = "application/vnd.ignite.python.app.v1.tar";
/// The artifact type of a Deno app manifest.
pub const DENO_ARTIFACT_TYPE: &str = "application/vnd.ignite.handler.deno.v1";
/// The media type of a Deno app's layer: the app tree, its dependencies and Deno's caches, as
/// one tar (see [`unpack_app`]).
pub const DENO_MEDIA_TYPE: &str = "application/vnd.ignite.deno.app.v1.tar";
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    media_type: String,
    artifact_type: String,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

/// What [`OciLayout::add_handler`] (or [`OciLayout::add_python_app`]) stored.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The one layer: the binary the agent executes (or a Python app's tar).
    pub binary: Descriptor,
    /// The artifact's manifest, listed in `index.json`.
    pub manifest: Descriptor,
}

/// An OCI image layout on disk.
#[derive(Debug)]
pub struct OciLayout {
    root: PathBuf,
    index: Mutex<()>,
}

fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

impl OciLayout {
    /// Opens (creating if needed) the layout at `root`.
    pub fn open(root: &Path) -> io::Result<OciLayout> {
        std::fs::create_dir_all(root.join("blobs/sha256"))?;
        let marker = root.join("oci-layout");
        if !marker.exists() {
            write_atomic(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let index = root.join("index.json");
        if !index.exists() {
            write_atomic(&index, br#"{"schemaVersion":2,"manifests":[]}"#)?;
        }
        Ok(OciLayout {
            root: root.to_path_buf(),
            index: Mutex::new(()),
        })
    }

    /// Where the blob with this digest lives (whether or not it exists).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.root.join("blobs/sha256").join(hex)
    }

    /// Stores bytes as a blob; returns its digest.
    pub fn put_blob(&self, bytes: &[u8]) -> io::Result<String> {
        let digest = digest_of(bytes);
        let path = self.blob_path(&digest);
        if !path.exists() {
            write_atomic(&path, bytes)?;
        }
        Ok(digest)
    }

    /// Stores a file as a blob, streaming (a Python app's tar may be large); returns its digest
    /// and size.
    pub fn put_blob_file(&self, file: &Path) -> io::Result<(String, u64)> {
        let mut hash = Sha256::new();
        let mut size = 0u64;
        let mut reader = std::fs::File::open(file)?;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = io::Read::read(&mut reader, &mut buf)?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            size += n as u64;
        }
        let digest = format!("sha256:{:x}", hash.finalize());
        let path = self.blob_path(&digest);
        if !path.exists() {
            let tmp = tmp_path(&path);
            std::fs::copy(file, &tmp)?;
            std::fs::rename(&tmp, &path)?;
        }
        Ok((digest, size))
    }

    /// Stores a handler binary as an artifact named `reference` and lists it in `index.json`.
    pub fn add_handler(&self, binary: &Path, target: &str, reference: &str) -> io::Result<Stored> {
        let bytes = std::fs::read(binary)?;
        let digest = self.put_blob(&bytes)?;
        // The executable bit matters: the agent runs the blob directly.
        set_executable(&self.blob_path(&digest))?;
        let mut annotations = std::collections::BTreeMap::new();
        annotations.insert("dev.ignite.target".to_string(), target.to_string());
        // A component is stored as the Wasm OCI artifact convention has it (`application/wasm`
        // layer), so OCI tooling that knows wasm recognises it.
        let (layer_type, artifact_type) = if target == crate::WASM_TARGET {
            (WASM_MEDIA_TYPE, WASM_ARTIFACT_TYPE)
        } else {
            (BINARY_MEDIA_TYPE, NATIVE_ARTIFACT_TYPE)
        };
        let layer = Descriptor {
            media_type: layer_type.into(),
            digest,
            size: bytes.len() as u64,
            artifact_type: None,
            annotations,
        };
        self.add_artifact(layer, artifact_type, reference)
    }

    /// Stores a Python app's tar (as [`crate::python::build`] packed it) as an artifact named
    /// `reference`, its layer annotated with the interpreter version it was built for, and
    /// lists it in `index.json`.
    pub fn add_python_app(
        &self,
        tar: &Path,
        python_version: &str,
        reference: &str,
    ) -> io::Result<Stored> {
        self.add_app_tree(
            tar,
            PYTHON_MEDIA_TYPE,
            PYTHON_ARTIFACT_TYPE,
            &[("dev.ignite.python.version", python_version)],
            reference,
        )
    }

    /// Stores a Deno app's tar (as [`crate::deno::build`] packed it) as an artifact named
    /// `reference`, its layer annotated with the Deno version it was built (and its caches
    /// made) for, and lists it in `index.json`.
    pub fn add_deno_app(
        &self,
        tar: &Path,
        deno_version: &str,
        reference: &str,
    ) -> io::Result<Stored> {
        self.add_app_tree(
            tar,
            DENO_MEDIA_TYPE,
            DENO_ARTIFACT_TYPE,
            &[("dev.ignite.deno.version", deno_version)],
            reference,
        )
    }

    /// Stores an app tree's tar (streamed) as the one layer of an artifact of `artifact_type`
    /// named `reference`, its layer of `media_type` with `annotations`, and lists it in
    /// `index.json`. The node unpacks it with [`unpack_app`].
    pub fn add_app_tree(
        &self,
        tar: &Path,
        media_type: &str,
        artifact_type: &str,
        annotations: &[(&str, &str)],
        reference: &str,
    ) -> io::Result<Stored> {
        let (digest, size) = self.put_blob_file(tar)?;
        let layer = Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            artifact_type: None,
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        self.add_artifact(layer, artifact_type, reference)
    }

    /// Writes the manifest of a one-layer artifact (its layer blob already stored) and lists it
    /// in `index.json` as `reference`.
    fn add_artifact(
        &self,
        layer: Descriptor,
        artifact_type: &str,
        reference: &str,
    ) -> io::Result<Stored> {
        let empty = self.put_blob(b"{}")?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: MANIFEST_MEDIA_TYPE.into(),
            artifact_type: artifact_type.into(),
            config: Descriptor {
                media_type: EMPTY_MEDIA_TYPE.into(),
                digest: empty,
                size: 2,
                artifact_type: None,
                annotations: Default::default(),
            },
            layers: vec![layer.clone()],
        };
        let manifest_bytes = serde_json::to_vec(&manifest).map_err(io::Error::other)?;
        let manifest_digest = self.put_blob(&manifest_bytes)?;
        let mut annotations = std::collections::BTreeMap::new();
        annotations.insert(
            "org.opencontainers.image.ref.name".to_string(),
            reference.to_string(),
        );
        let descriptor = Descriptor {
            media_type: MANIFEST_MEDIA_TYPE.into(),
            digest: manifest_digest,
            size: manifest_bytes.len() as u64,
            artifact_type: Some(artifact_type.into()),
            annotations,
        };
        let _guard = self.index.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.root.join("index.json");
        let mut index: Index = serde_json::from_slice(&std::fs::read(&path)?)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        index.manifests.push(descriptor.clone());
        write_atomic(
            &path,
            &serde_json::to_vec_pretty(&index).map_err(io::Error::other)?,
        )?;
        Ok(Stored {
            binary: layer,
            manifest: descriptor,
        })
    }

    /// The manifests listed in `index.json`.
    pub fn manifests(&self) -> io::Result<Vec<Descriptor>> {
        let index: Index = serde_json::from_slice(&std::fs::read(self.root.join("index.json"))?)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(index.manifests)
    }
}

/// Unpacks an app tree's tar (as [`crate::python::build`] or [`crate::deno::build`] packed it) into `dest` (created if
/// missing): only files and directories, every path relative and inside `dest`; anything else
/// is refused with [`io::ErrorKind::InvalidData`] (what was unpacked before it stays).
pub fn unpack_app(tar: &Path, dest: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dest)?;
    let file = std::fs::File::open(tar)?;
    let mut archive = tar::Archive::new(io::BufReader::new(file));
    archive.set_preserve_permissions(false);
    archive.set_overwrite(false);
    use std::path::Component;
    let refuse = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        if path
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(refuse(format!(
                "the app's entry {} leads outside it",
                path.display()
            )));
        }
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            return Err(refuse(format!(
                "the app's entry {} is neither a file nor a directory ({kind:?})",
                path.display()
            )));
        }
        if !entry.unpack_in(dest)? {
            return Err(refuse(format!(
                "the app's entry {} leads outside it",
                path.display()
            )));
        }
    }
    Ok(())
}

/// A temporary name beside `path`, unique in this process.
fn tmp_path(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    path.with_extension(format!("tmp-{}-{n}", std::process::id()))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = tmp_path(path);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

fn set_executable(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}
