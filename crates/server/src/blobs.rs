//! The one seam between the platform's content-addressed blobs and where they live: the local
//! OCI layout (the data directory) always, and the operator's platform registry (`--registry`)
//! when the platform runs past one machine.
//!
//! Every blob a replica or a node may need that another process made goes through here: a
//! draft's source (saved by one replica, built by another), a build's artifact (built by one,
//! run by every node), an image-mode image. Whoever writes one into the layout **publishes** it,
//! and the write is acknowledged only once it is in the registry; whoever needs one **ensures**
//! it, which pulls it into the layout first if this machine lacks it. Without a registry both are
//! local and cost nothing: no network, the single-machine platform exactly as it was.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ignite_builder::oci::{self, OciLayout};
use ignite_image::{Image, ImageError, PlatformRegistry};

/// The media type of a draft's source blob in the registry (a project archive, one source
/// file, an image draft's description or build context).
pub const SOURCE_MEDIA_TYPE: &str = "application/vnd.ignite.source.v1";

/// The operator's `--registry` as given (checked and connected to at the server's start).
#[derive(Clone)]
pub struct RegistrySettings {
    /// `http://host:port/<prefix>` or `https://host[:port]/<prefix>`.
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for RegistrySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrySettings")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl RegistrySettings {
    /// The registry, parsed (no connection yet): a URL that is not one, carries credentials or
    /// has another scheme is refused, saying how to write it.
    pub fn registry(&self) -> Result<PlatformRegistry, String> {
        let credentials = match (&self.username, &self.password) {
            (Some(username), Some(password)) => Some(ignite_image::Credentials {
                username: username.clone(),
                password: password.clone(),
            }),
            (None, None) => None,
            _ => {
                return Err(
                    "set both IGNITE_REGISTRY_USERNAME and IGNITE_REGISTRY_PASSWORD for the \
                     platform registry, or neither"
                        .into(),
                );
            }
        };
        PlatformRegistry::new(&self.url, credentials).map_err(|e| e.to_string())
    }
}

/// Why a blob could not be published or found.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error(
        "the blob {digest} is not on this machine ({}) and the server has no platform \
         registry to fetch it from; save and publish the draft again",
        path.display()
    )]
    Missing { digest: String, path: PathBuf },
    #[error("could not publish {digest} to the platform registry {registry}: {source}")]
    Publish {
        digest: String,
        registry: String,
        #[source]
        source: Box<ImageError>,
    },
    #[error("could not fetch {digest} from the platform registry {registry}: {source}")]
    Fetch {
        digest: String,
        registry: String,
        #[source]
        source: Box<ImageError>,
    },
    #[error("the image {digest} is not usable on this machine: {source}")]
    Image {
        digest: String,
        #[source]
        source: Box<ImageError>,
    },
}

/// The platform's blobs: the local layout, and the registry behind it when there is one.
pub struct Blobs {
    layout: OciLayout,
    registry: Option<PlatformRegistry>,
    /// The most a fetched blob may weigh (an artifact is at most what a compile may write).
    max_blob_bytes: u64,
    /// The most a fetched image's layers may weigh together (as for any image pull).
    max_image_bytes: u64,
    /// One lock per digest being fetched: concurrent ensures of one digest fetch it once.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Blobs {
    pub fn new(
        layout: OciLayout,
        registry: Option<PlatformRegistry>,
        max_blob_bytes: u64,
        max_image_bytes: u64,
    ) -> Blobs {
        Blobs {
            layout,
            registry,
            max_blob_bytes,
            max_image_bytes,
            fetching: Mutex::default(),
        }
    }

    /// The local layout: where blobs are written (then [`Blobs::publish`]ed) and read from
    /// (once [`Blobs::ensure`]d).
    pub fn layout(&self) -> &OciLayout {
        &self.layout
    }

    /// Where the blob `digest` lives on this machine (whether or not it is there yet).
    pub fn path(&self, digest: &str) -> PathBuf {
        self.layout.blob_path(digest)
    }

    /// The platform registry, when the operator configured one.
    pub fn registry(&self) -> Option<&PlatformRegistry> {
        self.registry.as_ref()
    }

    /// Makes the blob `digest`, already written to the layout, available to every replica and
    /// node: pushed (as a layer of `media_type`) to the registry, when there is one. Returns
    /// once the registry has it; without a registry at once.
    pub async fn publish(&self, digest: &str, media_type: &str) -> Result<(), BlobError> {
        let Some(registry) = &self.registry else {
            return Ok(());
        };
        registry
            .push_blob(&self.layout, digest, media_type)
            .await
            .map_err(|source| BlobError::Publish {
                digest: digest.into(),
                registry: registry.url().into(),
                source: Box::new(source),
            })
    }

    /// [`Blobs::publish`] for a build's artifact of `target` (its layer's media type follows
    /// from the target, so that a pulled handler binary is stored executable).
    pub async fn publish_artifact(&self, digest: &str, target: &str) -> Result<(), BlobError> {
        self.publish(digest, artifact_media_type(target)).await
    }

    /// The local path of the blob `digest`, fetched from the registry first if this machine
    /// lacks it (checked against its digest and the size budget before it is stored).
    /// Concurrent ensures of one digest fetch it once.
    pub async fn ensure(&self, digest: &str) -> Result<PathBuf, BlobError> {
        let path = self.layout.blob_path(digest);
        if path.is_file() {
            return Ok(path);
        }
        let Some(registry) = &self.registry else {
            return Err(BlobError::Missing {
                digest: digest.into(),
                path,
            });
        };
        let lock = self.lock(digest);
        let _fetching = lock.lock().await;
        let fetched = registry
            .pull_blob(&self.layout, digest, self.max_blob_bytes)
            .await
            .map_err(|source| BlobError::Fetch {
                digest: digest.into(),
                registry: registry.url().into(),
                source: Box::new(source),
            });
        self.unlock(digest, &lock);
        fetched
    }

    /// Makes the image `manifest_digest` (its manifest, config and layers in the layout)
    /// available to every node: pushed to the registry, when there is one.
    pub async fn publish_image(&self, manifest_digest: &str) -> Result<(), BlobError> {
        let Some(registry) = &self.registry else {
            return Ok(());
        };
        registry
            .push_image(&self.layout, manifest_digest)
            .await
            .map_err(|source| BlobError::Publish {
                digest: manifest_digest.into(),
                registry: registry.url().into(),
                source: Box::new(source),
            })
    }

    /// The image `manifest_digest` from the layout, fetched from the registry first if this
    /// machine lacks any of its blobs. Concurrent ensures of one image fetch it once.
    pub async fn ensure_image(&self, manifest_digest: &str) -> Result<Image, BlobError> {
        let local = || {
            ignite_image::load(&self.layout, manifest_digest).map_err(|source| BlobError::Image {
                digest: manifest_digest.into(),
                source: Box::new(source),
            })
        };
        let Some(registry) = &self.registry else {
            return local();
        };
        if let Ok(image) = local() {
            return Ok(image);
        }
        let lock = self.lock(manifest_digest);
        let _fetching = lock.lock().await;
        let fetched = registry
            .pull_image(&self.layout, manifest_digest, self.max_image_bytes)
            .await
            .map_err(|source| BlobError::Fetch {
                digest: manifest_digest.into(),
                registry: registry.url().into(),
                source: Box::new(source),
            });
        self.unlock(manifest_digest, &lock);
        fetched
    }

    fn lock(&self, digest: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.fetching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(digest.to_string())
            .or_default()
            .clone()
    }

    /// Forgets a digest's lock once no other ensure waits on it (one that comes later finds
    /// the blob stored, or takes a fresh lock: either way it fetches at most once more).
    fn unlock(&self, digest: &str, lock: &Arc<tokio::sync::Mutex<()>>) {
        let mut fetching = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
        // The map's and ours.
        if Arc::strong_count(lock) <= 2 {
            fetching.remove(digest);
        }
    }
}

/// The media type of an artifact's layer for a build of `target` (as the layout's
/// `add_handler`, `add_python_app` and `add_deno_app` write it).
pub fn artifact_media_type(target: &str) -> &'static str {
    if target == ignite_builder::WASM_TARGET {
        oci::WASM_MEDIA_TYPE
    } else if target.starts_with("python") {
        oci::PYTHON_MEDIA_TYPE
    } else if target.starts_with("deno") {
        oci::DENO_MEDIA_TYPE
    } else {
        oci::BINARY_MEDIA_TYPE
    }
}

/// The budget of a fetched blob: the larger of what a compile may write (an artifact) and
/// what an upload may be (a source).
pub fn max_blob_bytes(build_disk_mb: u64) -> u64 {
    (build_disk_mb << 20).max(64 << 20)
}
