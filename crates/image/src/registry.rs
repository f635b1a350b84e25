//! Pulls from a registry and checks logins, through `oci-client` (the distribution protocol,
//! its bearer-token and basic auth). Nothing a registry says is trusted: every manifest and
//! blob is hashed here and compared with the digest that named it.

use std::sync::Once;
use std::time::Duration;

use ignite_builder::oci::OciLayout;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::manifest::{self, MANIFEST_TYPES, Parsed, check_digest, parse_manifest, sha256_digest};
use crate::store::{check_blob, commit_blob, finish, partial_blob_path};
use crate::{Credentials, Image, ImageError, RegistryAccess};

/// reqwest is built without a TLS provider of its own; ring is the process's (it fails only
/// when another one was installed first, which serves as well).
pub(crate) fn install_tls_provider() {
    static PROVIDER: Once = Once::new();
    PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn client(access: &RegistryAccess) -> Client {
    install_tls_provider();
    Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(access.insecure.clone()),
        platform_resolver: None,
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(60)),
        http_proxy: access.proxy.clone(),
        https_proxy: access.proxy.clone(),
        ..ClientConfig::default()
    })
}

fn parse_reference(reference: &str) -> Result<Reference, ImageError> {
    let parsed: Reference = reference.parse().map_err(|e| ImageError::Reference {
        reference: reference.into(),
        reason: format!("{e}"),
    })?;
    if let Some(digest) = parsed.digest() {
        check_digest(digest, "reference").map_err(|e| ImageError::Reference {
            reference: reference.into(),
            reason: e.to_string(),
        })?;
    }
    Ok(parsed)
}

/// The credentials for the registry `reference` names, by its name as written or as resolved.
fn credentials<'a>(access: &'a RegistryAccess, reference: &Reference) -> Option<&'a Credentials> {
    access
        .credentials
        .get(reference.registry())
        .or_else(|| access.credentials.get(reference.resolve_registry()))
}

fn auth_for(credentials: Option<&Credentials>) -> RegistryAuth {
    match credentials {
        Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
        None => RegistryAuth::Anonymous,
    }
}

/// Translates a client error into what the user should do about it.
pub(crate) fn registry_error(
    e: OciDistributionError,
    reference: &Reference,
    had_credentials: bool,
) -> ImageError {
    let host = reference.registry().to_string();
    let denied = || {
        if had_credentials {
            ImageError::CredentialsRefused { host: host.clone() }
        } else {
            ImageError::CredentialsRequired {
                host: host.clone(),
                reference: reference.whole(),
            }
        }
    };
    let not_found = || ImageError::NotFound {
        reference: reference.whole(),
    };
    match &e {
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. } => denied(),
        OciDistributionError::ServerError { code: 401, .. } => denied(),
        OciDistributionError::ServerError { code: 403, .. } => denied(),
        OciDistributionError::ServerError { code: 404, .. }
        | OciDistributionError::ImageManifestNotFoundError(_) => not_found(),
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                denied()
            } else if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                        | OciErrorCode::BlobUnknown
                )
            }) {
                not_found()
            } else {
                ImageError::Registry { host, source: e }
            }
        }
        _ => ImageError::Registry { host, source: e },
    }
}

/// Pulls `reference` (e.g. `"127.0.0.1:5000/acme/web:v1"` or `"…@sha256:…"`) into `layout`:
/// the manifest (the linux/amd64 one of an index), the config and the layers stored as blobs,
/// each checked against its digest, blobs already present skipped. The manifest is stored as a
/// blob too, so that [`crate::load`] finds the image again by its manifest digest.
pub async fn pull(
    layout: &OciLayout,
    reference: &str,
    access: &RegistryAccess,
) -> Result<Image, ImageError> {
    let reference = parse_reference(reference)?;
    let creds = credentials(access, &reference);
    let auth = auth_for(creds);
    let client = client(access);
    let fail = |e| registry_error(e, &reference, creds.is_some());
    client
        .auth(&reference, &auth, RegistryOperation::Pull)
        .await
        .map_err(fail)?;

    let (mut bytes, mut digest) = pull_manifest(&client, &reference, &auth, reference.digest())
        .await
        .map_err(|e| e.into_image_error(&reference, creds.is_some()))?;
    let mut parsed = parse_manifest(&bytes)?;
    if let Parsed::Index(entries) = &parsed {
        let picked = manifest::pick_platform(entries).ok_or_else(|| ImageError::NoPlatform {
            reference: reference.whole(),
        })?;
        let by_digest = reference.clone_with_digest(picked.digest.clone());
        (bytes, digest) = pull_manifest(&client, &by_digest, &auth, Some(&picked.digest))
            .await
            .map_err(|e| e.into_image_error(&reference, creds.is_some()))?;
        parsed = parse_manifest(&bytes)?;
    }
    let manifest = match parsed {
        Parsed::Manifest(m) => m,
        Parsed::Index(_) => {
            return Err(ImageError::invalid(
                "index",
                "its linux/amd64 entry is an index again",
            ));
        }
    };
    let total: u64 = manifest.layers.iter().map(|l| l.size).sum();
    if let Some(max) = access.max_bytes
        && total > max
    {
        return Err(ImageError::PullTooLarge {
            what: format!(
                "{} (its layers: {total} bytes compressed)",
                reference.whole()
            ),
            limit: max,
        });
    }
    let config = (
        manifest.config.digest.as_str(),
        manifest.config.size,
        "config",
    );
    let layers = manifest
        .layers
        .iter()
        .map(|l| (l.digest.as_str(), l.size, "layer"));
    for (blob, size, what) in std::iter::once(config).chain(layers) {
        if layout.blob_path(blob).is_file() {
            continue;
        }
        pull_blob(&client, layout, &reference, (blob, size), what, false)
            .await
            .map_err(|e| e.into_image_error(&reference, creds.is_some()))?;
    }
    finish(layout, &bytes, &digest)
}

/// A failure of a pull step: the registry's or ours.
pub(crate) enum StepError {
    Client(OciDistributionError),
    Image(ImageError),
}

impl StepError {
    pub(crate) fn into_image_error(
        self,
        reference: &Reference,
        had_credentials: bool,
    ) -> ImageError {
        match self {
            StepError::Client(e) => registry_error(e, reference, had_credentials),
            StepError::Image(e) => e,
        }
    }
}

impl From<OciDistributionError> for StepError {
    fn from(e: OciDistributionError) -> Self {
        StepError::Client(e)
    }
}

impl From<ImageError> for StepError {
    fn from(e: ImageError) -> Self {
        StepError::Image(e)
    }
}

/// Pulls a manifest; its digest is the hash of the bytes received, which must be `expected`
/// when the manifest was asked for by digest.
async fn pull_manifest(
    client: &Client,
    reference: &Reference,
    auth: &RegistryAuth,
    expected: Option<&str>,
) -> Result<(Vec<u8>, String), StepError> {
    let (bytes, _claimed) = client
        .pull_manifest_raw(reference, auth, MANIFEST_TYPES)
        .await?;
    if bytes.len() as u64 > manifest::MAX_DOCUMENT {
        return Err(ImageError::invalid(
            "manifest",
            format!("it is larger than {} bytes", manifest::MAX_DOCUMENT),
        )
        .into());
    }
    let digest = sha256_digest(&bytes);
    if let Some(expected) = expected
        && expected != digest
    {
        return Err(ImageError::DigestMismatch {
            what: "manifest".into(),
            expected: expected.into(),
            actual: digest,
        }
        .into());
    }
    Ok((bytes.to_vec(), digest))
}

/// Streams one blob into the layout, at most its descriptor's size, kept only if it hashes to
/// its digest (and made executable first when `executable`: it appears under its name whole).
pub(crate) async fn pull_blob(
    client: &Client,
    layout: &OciLayout,
    reference: &Reference,
    (digest, size): (&str, u64),
    what: &str,
    executable: bool,
) -> Result<(), StepError> {
    let descriptor = OciDescriptor {
        digest: digest.into(),
        size: i64::try_from(size).unwrap_or(i64::MAX),
        ..OciDescriptor::default()
    };
    let dest = layout.blob_path(digest);
    let tmp = partial_blob_path(layout, digest);
    let write = async {
        let mut stream = client.pull_blob_stream(reference, &descriptor).await?;
        let io_err = |e| ImageError::io(format!("could not write the {what} to"), &tmp, e);
        let mut file = tokio::fs::File::create(&tmp).await.map_err(io_err)?;
        let mut hash = Sha256::new();
        let mut written = 0u64;
        while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                // oci-client checks the digest too, and tells a mismatch as an I/O error at the
                // end of the stream: our own check says which digest and what arrived.
                Err(e) if written == size => {
                    check_blob(what, (digest, size), written, hash.clone())?;
                    return Err(OciDistributionError::from(e).into());
                }
                Err(e) => return Err(OciDistributionError::from(e).into()),
            };
            written += chunk.len() as u64;
            if written > size {
                break;
            }
            hash.update(&chunk);
            file.write_all(&chunk).await.map_err(io_err)?;
        }
        check_blob(what, (digest, size), written, hash)?;
        if executable {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::Permissions::from_mode(0o755);
            file.set_permissions(mode).await.map_err(io_err)?;
        }
        file.sync_all().await.map_err(io_err)?;
        Ok::<(), StepError>(())
    };
    match write.await {
        Ok(()) => commit_blob(Ok(()), &tmp, &dest).map_err(StepError::from),
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            Err(e)
        }
    }
}

/// Checks credentials against a registry (for `registry login`): `Ok` if the registry accepts
/// them, [`ImageError::CredentialsRefused`] if it does not.
pub async fn check_login(
    host: &str,
    credentials: &Credentials,
    access: &RegistryAccess,
) -> Result<(), ImageError> {
    // Any repository serves: a token service checks the credentials when it issues a token,
    // and a registry with basic auth answers a manifest request with 401 for wrong ones and
    // 404 for right ones.
    let probe = format!("{host}/ignite-login-check/probe:latest");
    let reference = parse_reference(&probe)?;
    let auth = auth_for(Some(credentials));
    let client = client(access);
    let refused = || ImageError::CredentialsRefused { host: host.into() };
    match client
        .auth(&reference, &auth, RegistryOperation::Pull)
        .await
    {
        Ok(Some(_token)) => return Ok(()),
        Ok(None) => {}
        Err(e) => {
            return Err(match registry_error(e, &reference, true) {
                ImageError::NotFound { .. } => refused(),
                other => other,
            });
        }
    }
    match client.fetch_manifest_digest(&reference, &auth).await {
        Ok(_) => Ok(()),
        Err(e) => match registry_error(e, &reference, true) {
            ImageError::NotFound { .. } => Ok(()),
            other => Err(other),
        },
    }
}
