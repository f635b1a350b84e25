//! What can go wrong with an image, each message saying what was wrong and what to do.

use std::io;
use std::path::PathBuf;

use oci_client::errors::OciDistributionError;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "`{reference}` is not an image reference ({reason}); write it as host[:port]/repository[:tag] or host[:port]/repository@sha256:<hex>"
    )]
    Reference { reference: String, reason: String },

    #[error(
        "the registry {host} refused the credentials; run `dodil ignite registry login {host}` with a valid username and password"
    )]
    CredentialsRefused { host: String },

    #[error(
        "the registry {host} requires credentials for {reference}; run `dodil ignite registry login {host}` first"
    )]
    CredentialsRequired { host: String, reference: String },

    #[error("the image {reference} was not found; check the repository and the tag or digest")]
    NotFound { reference: String },

    #[error(
        "the registry {host} failed ({source}); check the address, that the registry is up, and that it speaks HTTPS (or is listed as insecure)"
    )]
    Registry {
        host: String,
        #[source]
        source: OciDistributionError,
    },

    #[error(
        "the {what} {expected} does not match its digest (its content hashes to {actual}); the registry or the layout is corrupt or tampered with: push the image again"
    )]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },

    #[error(
        "the {what} {digest} is {actual} bytes where its descriptor says {expected}; the registry or the layout is corrupt: push the image again"
    )]
    SizeMismatch {
        what: String,
        digest: String,
        expected: u64,
        actual: u64,
    },

    #[error("the image's {what} is not valid: {reason}; rebuild or push the image again")]
    Invalid { what: String, reason: String },

    #[error(
        "the image index {reference} has no linux/amd64 image; build the image for linux/amd64 (e.g. `--platform linux/amd64`)"
    )]
    NoPlatform { reference: String },

    #[error(
        "layer {digest} has media type `{media_type}`, which cannot be unpacked (a tar, gzip or zstd layer is needed); rebuild the image with a standard builder"
    )]
    UnsupportedLayer { digest: String, media_type: String },

    #[error(
        "the image {digest} is not in the store (missing blob {missing}); pull or import it again"
    )]
    NotStored { digest: String, missing: String },

    #[error("{what} {}: {source}", path.display())]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "the image unpacks to more than {limit} bytes; make the image smaller or raise the operator's image cache budget"
    )]
    TooLarge { limit: u64 },

    #[error(
        "{what} is larger than the {limit} bytes this platform takes for an image; make the \
         image smaller (a slimmer base, fewer layers) or ask the operator to raise --image-cache-mb"
    )]
    PullTooLarge { what: String, limit: u64 },

    #[error(
        "the image has more than {limit} entries in its layers; make the image smaller (fewer files)"
    )]
    TooManyEntries { limit: u64 },

    #[error("layer {digest} is not a readable tar ({source}); rebuild or push the image again")]
    BadLayer {
        digest: String,
        #[source]
        source: io::Error,
    },

    #[error(
        "the image's USER names user `{name}`, which its /etc/passwd does not list; use a numeric uid or add the user in the image"
    )]
    UnknownUser { name: String },

    #[error(
        "the image's USER names group `{name}`, which its /etc/group does not list; use a numeric gid or add the group in the image"
    )]
    UnknownGroup { name: String },

    #[error("the image has neither ENTRYPOINT nor CMD; add one")]
    NoCommand,

    #[error(
        "the image's program `{program}` is not found in the image (searched {searched}); fix ENTRYPOINT/CMD or the image's PATH"
    )]
    ProgramNotFound { program: String, searched: String },

    #[error(
        "the image's program `{program}` ({}) is not an executable file; fix ENTRYPOINT/CMD or make it executable in the image", path.display()
    )]
    NotExecutable { program: String, path: PathBuf },

    #[error("the image's WORKDIR `{workdir}` is not a directory in the image; fix WORKDIR")]
    BadWorkdir { workdir: String },

    #[error(
        "--registry {url:?} is not usable: {reason}; write it as http://host:port/<prefix> (a \
         plain-HTTP registry on the operator's network) or https://host[:port]/<prefix>, e.g. \
         http://10.0.0.5:5000/ignite"
    )]
    RegistryUrl { url: String, reason: String },

    #[error(
        "the platform registry {registry} refused the server's credentials; set \
         IGNITE_REGISTRY_USERNAME and IGNITE_REGISTRY_PASSWORD to an account that may push and \
         pull under its prefix"
    )]
    PlatformDenied { registry: String },

    #[error(
        "the platform registry {registry} failed ({source}); check that it is up and that \
         --registry names it (http:// only for a registry that speaks plain HTTP)"
    )]
    PlatformRegistry {
        registry: String,
        #[source]
        source: OciDistributionError,
    },

    #[error(
        "the platform registry {registry} has no {digest}: it was never published there, or was \
         deleted since; save and publish the app's draft again"
    )]
    NotInPlatformRegistry { registry: String, digest: String },

    #[error(
        "the blob {digest} is {size} bytes, more than the {limit} this node takes; it was not \
         fetched (raise the budget, or make the app smaller)"
    )]
    BlobTooLarge {
        digest: String,
        size: u64,
        limit: u64,
    },
}

impl ImageError {
    pub(crate) fn io(what: impl Into<String>, path: impl Into<PathBuf>, source: io::Error) -> Self {
        ImageError::Io {
            what: what.into(),
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        ImageError::Invalid {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}
