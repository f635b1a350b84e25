//! Container images for image mode: references, pulls from a registry (through `oci-client`,
//! which speaks the distribution protocol and its token and basic auth), imports of a locally
//! built OCI layout (what `buildah push oci:<dir>` writes), the image config, and the unpacking
//! of an image's layers into a root the sandbox mounts read-only, kept in a size-budgeted cache;
//! and the platform registry (`PlatformRegistry`), through which a fleet's replicas and nodes
//! share the blobs and images one of them made.
//!
//! Every byte of an image is hostile. This crate must never write outside the root it is
//! unpacking (no `..`, no absolute path, no symlink is ever followed out of the root while
//! writing — every parent is resolved inside the root by `openat2(RESOLVE_IN_ROOT)`, every final
//! component is opened `O_NOFOLLOW`), never create a device node, fifo or socket, never keep a
//! setuid or setgid bit, never chown to an image's uids, never store a blob whose digest it has
//! not checked, and never panic on what a registry or an image says.

mod cache;
mod error;
mod inroot;
mod manifest;
mod platform;
mod registry;
mod root;
mod store;
mod unpack;

use std::collections::HashMap;

pub use cache::{RootCache, RootLease};
pub use error::ImageError;
pub use platform::{BLOB_ARTIFACT_TYPE, PlatformRegistry};
pub use registry::{check_login, pull};
pub use root::Root;
pub use store::{import_layout, load};
pub use unpack::{UnpackLimits, UnpackReport, unpack};

/// A username and a password (or a token used as one) for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How to reach registries: hosts that speak plain HTTP (tests' loopback registry), and
/// credentials per host.
#[derive(Debug, Clone, Default)]
pub struct RegistryAccess {
    /// `host[:port]` of registries reached over plain HTTP, e.g. `"127.0.0.1:5000"`.
    pub insecure: Vec<String>,
    /// Credentials per `host[:port]`, as the reference names the registry.
    pub credentials: HashMap<String, Credentials>,
    /// The most an image's layers may weigh together (compressed, as its manifest says); a
    /// bigger one is refused before anything is fetched. `None`: no limit.
    pub max_bytes: Option<u64>,
    /// An HTTP proxy (`http://host:port`) every connection of a pull or login goes through —
    /// the manifest's, the blobs' (and the stores they redirect to), the token realm's.
    pub proxy: Option<String>,
}

/// What the runtime needs from an image's config (`ENTRYPOINT`, `CMD`, `ENV`, `WORKDIR`,
/// `USER`, `EXPOSE`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub exposed_ports: Vec<u16>,
}

/// An image stored in an [`ignite_builder::oci::OciLayout`]: its manifest, config and layers
/// are all blobs there, each checked against its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// `sha256:<hex>` of the image manifest (for an index, of the linux/amd64 manifest picked).
    pub manifest_digest: String,
    pub config_digest: String,
    pub config: ImageConfig,
    /// In the order they are applied.
    pub layers: Vec<Layer>,
    /// The sum of the compressed layer sizes.
    pub size: u64,
}

/// One layer of an [`Image`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
}
