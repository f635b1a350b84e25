//! The platform registry: where a fleet's replicas and nodes find the content-addressed blobs
//! another process made — a draft's source, a build's artifact, an image-mode image — through
//! an OCI distribution registry the operator runs (`--registry`), spoken to with `oci-client`.
//!
//! Two repositories under the operator's prefix:
//!
//! - `<prefix>/blobs`: every blob that is not part of an image, each with an OCI artifact
//!   manifest of its own (`artifactType` [`BLOB_ARTIFACT_TYPE`], the empty config of the OCI 1.1
//!   guidance, the blob its one layer) tagged `sha256-<hex>` by the blob's digest. One repository
//!   for every kind because a node asks for a blob by digest alone; the kind is the layer's
//!   media type. The tag is what keeps the blob through the registry's garbage collection, which
//!   removes blobs no tagged manifest references.
//! - `<prefix>/images`: image mode's images as they are (manifest, config, layers), each tagged
//!   by its manifest digest the same way, so any OCI client can pull one by digest.
//!
//! Nothing a registry says is trusted: a pull checks the size budget against the manifest
//! before fetching, streams at most the announced size, and stores a blob (under its digest in
//! the local layout) only once its bytes hash to the digest that was asked for.

use std::path::PathBuf;
use std::time::Duration;

use ignite_builder::oci::OciLayout;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use serde::{Deserialize, Serialize};

use crate::manifest::{self, MAX_DOCUMENT, OCI_MANIFEST, check_digest, sha256_digest};
use crate::registry::{self, StepError};
use crate::{Credentials, Image, ImageError, RegistryAccess};

/// The `artifactType` of a blob's manifest in `<prefix>/blobs`.
pub const BLOB_ARTIFACT_TYPE: &str = "application/vnd.ignite.blob.v1";
/// The empty config of an artifact manifest (OCI image spec 1.1, "guidelines for artifact
/// usage"): the two bytes `{}`.
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
const EMPTY: &[u8] = b"{}";
const EMPTY_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
/// The media type of a handler binary's layer, which the agent executes in place: a pulled one
/// is stored executable, as [`OciLayout::add_handler`] stores a built one.
const EXECUTABLE_MEDIA_TYPE: &str = ignite_builder::oci::BINARY_MEDIA_TYPE;
/// Uploads go in one request per blob, streamed from the file (a chunked upload would send a
/// request per few MiB of a large app tree).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// A blob's manifest in `<prefix>/blobs`, written (and so hashed) always the same way for the
/// same blob: pushing it twice is pushing the same manifest.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlobManifest {
    schema_version: u32,
    media_type: String,
    artifact_type: String,
    config: BlobDescriptor,
    layers: Vec<BlobDescriptor>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlobDescriptor {
    media_type: String,
    digest: String,
    size: u64,
}

/// The operator's registry for the platform's own content (`--registry`), parsed and ready to
/// use; it connects only when asked to push or pull.
#[derive(Clone)]
pub struct PlatformRegistry {
    /// As the operator wrote it (no credentials can be in it), for messages.
    url: String,
    /// `host[:port]`.
    host: String,
    /// The repository prefix, without slashes around it.
    prefix: String,
    plain_http: bool,
    credentials: Option<Credentials>,
    client: Client,
}

impl std::fmt::Debug for PlatformRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlatformRegistry")
            .field("url", &self.url)
            .field("credentials", &self.credentials)
            .finish()
    }
}

fn bad_url(url: &str, reason: impl Into<String>) -> ImageError {
    ImageError::RegistryUrl {
        url: redacted(url),
        reason: reason.into(),
    }
}

/// `url` with whatever stands before an `@` in its authority (credentials) replaced, for
/// messages: a refused URL is repeated back to the operator, never its password.
fn redacted(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((_, host)) if scheme.is_empty() => format!("<credentials>@{host}{path}"),
        Some((_, host)) => format!("{scheme}://<credentials>@{host}{path}"),
        None => url.to_string(),
    }
}

/// Whether `component` is a repository path component of the distribution spec:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    alnum(first)
        && alnum(last)
        && bytes
            .iter()
            .all(|b| alnum(b) || matches!(b, b'.' | b'_' | b'-'))
        && !component.contains("..")
        && !component.contains("___")
}

/// `host[:port]`: a DNS name or an IPv4 address (an IPv6 one in brackets), a port of digits.
fn check_host(url: &str, authority: &str) -> Result<(), ImageError> {
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, _)) if !h.ends_with(']') && h.contains(':') => (authority, None),
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    if let Some(port) = port
        && port.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(bad_url(
            url,
            format!("the port `{port}` is not a port number"),
        ));
    }
    let valid = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
    };
    if !valid {
        return Err(bad_url(
            url,
            format!("`{host}` is not a host name or address"),
        ));
    }
    Ok(())
}

impl PlatformRegistry {
    /// Parses the operator's `--registry` URL: `http://host:port/<prefix>` for a plain-HTTP
    /// registry on the operator's network, `https://host[:port]/<prefix>` otherwise. Credentials
    /// come apart (`IGNITE_REGISTRY_USERNAME`, `IGNITE_REGISTRY_PASSWORD`): a URL with them in it
    /// is refused, since a URL ends up in process listings and logs. Connects to nothing.
    pub fn new(
        url: &str,
        credentials: Option<Credentials>,
    ) -> Result<PlatformRegistry, ImageError> {
        let trimmed = url.trim();
        let (plain_http, rest) = if let Some(rest) = trimmed.strip_prefix("http://") {
            (true, rest)
        } else if let Some(rest) = trimmed.strip_prefix("https://") {
            (false, rest)
        } else if let Some((scheme, _)) = trimmed.split_once("://") {
            return Err(bad_url(
                url,
                format!("the scheme `{scheme}` is not supported (only http and https are)"),
            ));
        } else {
            return Err(bad_url(
                url,
                "it is not a URL (it has no http:// or https://)",
            ));
        };
        if rest.contains(['?', '#']) || rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad_url(
                url,
                "it has a query, a fragment or spaces, which a registry URL does not",
            ));
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.contains('@') {
            return Err(bad_url(
                url,
                "it has credentials in it; set IGNITE_REGISTRY_USERNAME and \
                 IGNITE_REGISTRY_PASSWORD instead (a URL shows in process listings and logs)",
            ));
        }
        check_host(url, authority)?;
        let prefix = path.trim_matches('/');
        if prefix.is_empty() {
            return Err(bad_url(
                url,
                "it names no repository prefix for the platform's repositories",
            ));
        }
        if let Some(bad) = prefix.split('/').find(|c| !is_path_component(c)) {
            return Err(bad_url(
                url,
                format!(
                    "`{bad}` is not a repository name (lowercase letters, digits, and `.`, `_` \
                     or `-` between them)"
                ),
            ));
        }
        registry::install_tls_provider();
        let client = Client::new(ClientConfig {
            protocol: if plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            platform_resolver: None,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            use_monolithic_push: true,
            ..ClientConfig::default()
        });
        Ok(PlatformRegistry {
            url: trimmed.trim_end_matches('/').to_string(),
            host: authority.to_ascii_lowercase(),
            prefix: prefix.to_string(),
            plain_http,
            credentials,
            client,
        })
    }

    /// The URL as the operator gave it (without a trailing slash).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `host[:port]`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The repository of blobs, `<prefix>/blobs`.
    pub fn blob_repository(&self) -> String {
        format!("{}/blobs", self.prefix)
    }

    /// The repository of images, `<prefix>/images`.
    pub fn image_repository(&self) -> String {
        format!("{}/images", self.prefix)
    }

    fn auth(&self) -> RegistryAuth {
        match &self.credentials {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            None => RegistryAuth::Anonymous,
        }
    }

    /// `<host>/<repository>:sha256-<hex>`: the tag a digest's manifest has.
    fn tagged(&self, repository: &str, digest: &str) -> Result<Reference, ImageError> {
        let tag = digest.replacen(':', "-", 1);
        let whole = format!("{}/{repository}:{tag}", self.host);
        whole.parse().map_err(|e| {
            bad_url(
                &self.url,
                format!("it does not make a valid reference ({whole}: {e})"),
            )
        })
    }

    /// What a failure of the registry means for an operator (this is their registry, not a
    /// user's: the advice is about `--registry` and its credentials).
    fn failed(&self, e: ImageError, digest: &str) -> ImageError {
        match e {
            ImageError::CredentialsRefused { .. } | ImageError::CredentialsRequired { .. } => {
                ImageError::PlatformDenied {
                    registry: self.url.clone(),
                }
            }
            ImageError::NotFound { .. } => ImageError::NotInPlatformRegistry {
                registry: self.url.clone(),
                digest: digest.into(),
            },
            ImageError::Registry { source, .. } => ImageError::PlatformRegistry {
                registry: self.url.clone(),
                source,
            },
            other => other,
        }
    }

    fn client_failed(
        &self,
        e: OciDistributionError,
        reference: &Reference,
        digest: &str,
    ) -> ImageError {
        self.failed(
            registry::registry_error(e, reference, self.credentials.is_some()),
            digest,
        )
    }

    fn step_failed(&self, e: StepError, reference: &Reference, digest: &str) -> ImageError {
        self.failed(
            e.into_image_error(reference, self.credentials.is_some()),
            digest,
        )
    }

    /// Checks that the registry answers the distribution API (`/v2/`) and takes the
    /// credentials: for the server's start, so that a wrong `--registry` fails there and not at
    /// the first save.
    pub async fn check(&self) -> Result<(), ImageError> {
        let reference = self.tagged(&self.blob_repository(), EMPTY_DIGEST)?;
        let auth = self.auth();
        let fail = |e| self.client_failed(e, &reference, EMPTY_DIGEST);
        self.client
            .auth(&reference, &auth, RegistryOperation::Pull)
            .await
            .map_err(fail)?;
        // A HEAD the registry answers 200 or 404 with the right credentials, 401 without.
        self.client
            .blob_exists(&reference, EMPTY_DIGEST)
            .await
            .map_err(fail)?;
        Ok(())
    }

    /// Pushes the blob `digest` of `layout` to `<prefix>/blobs` with a manifest of its own
    /// (its one layer of `media_type`) tagged `sha256-<hex>`; what the registry already has is
    /// not uploaded again, so a second push of the same blob sends a HEAD and nothing else.
    pub async fn push_blob(
        &self,
        layout: &OciLayout,
        digest: &str,
        media_type: &str,
    ) -> Result<(), ImageError> {
        check_digest(digest, "blob")?;
        let reference = self.tagged(&self.blob_repository(), digest)?;
        let path = layout.blob_path(digest);
        let size = std::fs::metadata(&path)
            .map_err(|e| ImageError::io(format!("could not read the blob {digest} at"), &path, e))?
            .len();
        let manifest = BlobManifest {
            schema_version: 2,
            media_type: OCI_MANIFEST.into(),
            artifact_type: BLOB_ARTIFACT_TYPE.into(),
            config: BlobDescriptor {
                media_type: EMPTY_MEDIA_TYPE.into(),
                digest: EMPTY_DIGEST.into(),
                size: EMPTY.len() as u64,
            },
            layers: vec![BlobDescriptor {
                media_type: media_type.into(),
                digest: digest.into(),
                size,
            }],
        };
        let bytes =
            serde_json::to_vec(&manifest).map_err(|e| ImageError::invalid("manifest", e))?;
        let manifest_digest = sha256_digest(&bytes);
        let auth = self.auth();
        let fail = |e| self.client_failed(e, &reference, digest);
        self.client
            .auth(&reference, &auth, RegistryOperation::Push)
            .await
            .map_err(fail)?;
        if self.has_manifest(&reference, &manifest_digest).await {
            return Ok(());
        }
        self.upload_bytes(&reference, EMPTY, EMPTY_DIGEST).await?;
        self.upload_file(layout, &reference, digest, size).await?;
        self.client
            .push_manifest_raw(&reference, bytes, header(OCI_MANIFEST))
            .await
            .map_err(fail)?;
        Ok(())
    }

    /// Whether `reference` already names the manifest `digest` (a HEAD; any failure says no,
    /// and the push that follows says what is wrong).
    async fn has_manifest(&self, reference: &Reference, digest: &str) -> bool {
        let auth = self.auth();
        matches!(
            self.client.fetch_manifest_digest(reference, &auth).await,
            Ok(found) if found == digest
        )
    }

    async fn upload_bytes(
        &self,
        reference: &Reference,
        bytes: &'static [u8],
        digest: &str,
    ) -> Result<(), ImageError> {
        let fail = |e| self.client_failed(e, reference, digest);
        if !self
            .client
            .blob_exists(reference, digest)
            .await
            .map_err(fail)?
        {
            self.client
                .push_blob(reference, bytes, digest)
                .await
                .map_err(fail)?;
        }
        Ok(())
    }

    /// Uploads a blob of the layout (unless the repository has it), streamed from its file.
    async fn upload_file(
        &self,
        layout: &OciLayout,
        reference: &Reference,
        digest: &str,
        size: u64,
    ) -> Result<(), ImageError> {
        let fail = |e| self.client_failed(e, reference, digest);
        if self
            .client
            .blob_exists(reference, digest)
            .await
            .map_err(fail)?
        {
            return Ok(());
        }
        let path = layout.blob_path(digest);
        let file = tokio::fs::File::open(&path).await.map_err(|e| {
            ImageError::io(format!("could not read the blob {digest} at"), &path, e)
        })?;
        self.client
            .push_blob_stream(reference, file_stream(file), digest, Some(size))
            .await
            .map_err(fail)?;
        Ok(())
    }

    /// Pulls the blob `digest` from `<prefix>/blobs` into `layout` and returns its path there:
    /// refused before anything is fetched when its manifest says it is over `max_bytes`, and
    /// stored only when what arrived is the size its manifest said and hashes to `digest`
    /// (streamed to a temporary file, never held in memory whole). A handler binary is stored
    /// executable. A blob the layout has already is not fetched.
    pub async fn pull_blob(
        &self,
        layout: &OciLayout,
        digest: &str,
        max_bytes: u64,
    ) -> Result<PathBuf, ImageError> {
        check_digest(digest, "blob")?;
        let path = layout.blob_path(digest);
        if path.is_file() {
            return Ok(path);
        }
        let reference = self.tagged(&self.blob_repository(), digest)?;
        let auth = self.auth();
        let fail = |e| self.client_failed(e, &reference, digest);
        self.client
            .auth(&reference, &auth, RegistryOperation::Pull)
            .await
            .map_err(fail)?;
        let (bytes, _) = self
            .client
            .pull_manifest_raw(&reference, &auth, &[OCI_MANIFEST])
            .await
            .map_err(fail)?;
        if bytes.len() as u64 > MAX_DOCUMENT {
            return Err(ImageError::invalid(
                "blob manifest",
                format!("the one tagged for {digest} is larger than {MAX_DOCUMENT} bytes"),
            ));
        }
        let manifest: BlobManifest = serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::invalid("blob manifest", format!("for {digest}: {e}")))?;
        let layer = match manifest.layers.as_slice() {
            [layer] if layer.digest == digest => layer,
            _ => {
                return Err(ImageError::invalid(
                    "blob manifest",
                    format!("the one tagged for {digest} does not have that blob as its one layer"),
                ));
            }
        };
        if layer.size > max_bytes {
            return Err(ImageError::BlobTooLarge {
                digest: digest.into(),
                size: layer.size,
                limit: max_bytes,
            });
        }
        let executable = layer.media_type == EXECUTABLE_MEDIA_TYPE;
        registry::pull_blob(
            &self.client,
            layout,
            &reference,
            (digest, layer.size),
            "blob",
            executable,
        )
        .await
        .map_err(|e| self.step_failed(e, &reference, digest))?;
        Ok(path)
    }

    /// Pushes the image `manifest_digest` of `layout` (its config and layers, then the manifest
    /// as it is, so its digest stays) to `<prefix>/images`, tagged `sha256-<hex>` by the
    /// manifest's digest; blobs the registry has are not uploaded again.
    pub async fn push_image(
        &self,
        layout: &OciLayout,
        manifest_digest: &str,
    ) -> Result<(), ImageError> {
        let image = crate::load(layout, manifest_digest)?;
        let reference = self.tagged(&self.image_repository(), manifest_digest)?;
        let auth = self.auth();
        let fail = |e| self.client_failed(e, &reference, manifest_digest);
        self.client
            .auth(&reference, &auth, RegistryOperation::Push)
            .await
            .map_err(fail)?;
        if self.has_manifest(&reference, manifest_digest).await {
            return Ok(());
        }
        let config = layout.blob_path(&image.config_digest);
        let config_size = std::fs::metadata(&config)
            .map_err(|e| ImageError::io("could not read the image's config at", &config, e))?
            .len();
        self.upload_file(layout, &reference, &image.config_digest, config_size)
            .await?;
        for layer in &image.layers {
            self.upload_file(layout, &reference, &layer.digest, layer.size)
                .await?;
        }
        let bytes = crate::store::read_document(layout, manifest_digest, manifest_digest)?;
        // The manifest goes up as its own media type (a Docker one stays Docker's): the bytes,
        // and so the digest, are those the version records.
        let media_type = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("mediaType")?.as_str().map(str::to_string))
            .unwrap_or_else(|| OCI_MANIFEST.to_string());
        if !matches!(
            media_type.as_str(),
            manifest::OCI_MANIFEST | manifest::DOCKER_MANIFEST
        ) {
            return Err(ImageError::invalid(
                "manifest",
                format!("{manifest_digest} has media type `{media_type}`, not an image manifest's"),
            ));
        }
        self.client
            .push_manifest_raw(&reference, bytes, header(&media_type))
            .await
            .map_err(fail)?;
        Ok(())
    }

    /// Pulls the image `manifest_digest` from `<prefix>/images` into `layout` (what the layout
    /// has already is not fetched), through the same digest-checked path as any pull: an image
    /// whose layers weigh more than `max_bytes` is refused before a layer is fetched.
    pub async fn pull_image(
        &self,
        layout: &OciLayout,
        manifest_digest: &str,
        max_bytes: u64,
    ) -> Result<Image, ImageError> {
        check_digest(manifest_digest, "manifest")?;
        if let Ok(image) = crate::load(layout, manifest_digest) {
            return Ok(image);
        }
        let reference = format!(
            "{}/{}@{manifest_digest}",
            self.host,
            self.image_repository()
        );
        let access = RegistryAccess {
            insecure: if self.plain_http {
                vec![self.host.clone()]
            } else {
                Vec::new()
            },
            credentials: self
                .credentials
                .iter()
                .map(|c| (self.host.clone(), c.clone()))
                .collect(),
            max_bytes: Some(max_bytes),
            proxy: None,
        };
        crate::pull(layout, &reference, &access)
            .await
            .map_err(|e| self.failed(e, manifest_digest))
    }
}

fn header(media_type: &str) -> http::HeaderValue {
    http::HeaderValue::from_str(media_type)
        .unwrap_or_else(|_| http::HeaderValue::from_static(OCI_MANIFEST))
}

/// A file as a stream of chunks for an upload.
fn file_stream(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, OciDistributionError>> + Send + 'static {
    futures_util::stream::try_unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 1 << 20];
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| OciDistributionError::GenericError(Some(e.to_string())))?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        Ok(Some((bytes::Bytes::from(buf), file)))
    })
}
