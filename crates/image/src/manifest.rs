//! The JSON documents of an image — index, manifest, config — in both their OCI and Docker
//! spellings, read leniently (unknown fields ignored) but checked where a value becomes a path
//! or a size.

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::{ImageConfig, ImageError, Layer};

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// What a pull accepts for a reference.
pub(crate) const MANIFEST_TYPES: &[&str] = &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// The largest manifest, index or config document read (real ones are a few KiB).
pub(crate) const MAX_DOCUMENT: u64 = 4 << 20;
/// The most layers an image may have (Docker's own limit is 127).
const MAX_LAYERS: usize = 256;

/// How a layer's tar is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

/// The compression of a layer media type this crate unpacks, `None` for any other type.
pub(crate) fn layer_compression(media_type: &str) -> Option<Compression> {
    Some(match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Compression::None,
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Compression::Gzip,
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Compression::Zstd,
        _ => return None,
    })
}

/// Checks that `digest` is `sha256:` and 64 lowercase hex digits: it becomes a file name.
pub(crate) fn check_digest(digest: &str, what: &str) -> Result<(), ImageError> {
    let hex = digest.strip_prefix("sha256:").ok_or_else(|| {
        ImageError::invalid(
            what,
            format!("digest `{digest}` is not a sha256 digest (only sha256 is supported)"),
        )
    })?;
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ImageError::invalid(
            what,
            format!("digest `{digest}` is not sha256: and 64 lowercase hex digits"),
        ));
    }
    Ok(())
}

pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// Fails unless `bytes` hash to `expected`.
pub(crate) fn verify(bytes: &[u8], expected: &str, what: &str) -> Result<(), ImageError> {
    let actual = sha256_digest(bytes);
    if actual != expected {
        return Err(ImageError::DigestMismatch {
            what: what.into(),
            expected: expected.into(),
            actual,
        });
    }
    Ok(())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// An index or an image manifest: which one is told by `mediaType`, or by which of `manifests`
/// and `layers` is present.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnyManifest {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

pub(crate) enum Parsed {
    Index(Vec<Descriptor>),
    Manifest(ImageManifest),
}

pub(crate) struct ImageManifest {
    pub config: Descriptor,
    pub layers: Vec<Layer>,
}

/// Parses an index or an image manifest, checking every digest and layer media type in it.
pub(crate) fn parse_manifest(bytes: &[u8]) -> Result<Parsed, ImageError> {
    let doc: AnyManifest =
        serde_json::from_slice(bytes).map_err(|e| ImageError::invalid("manifest", e))?;
    let is_index = match doc.media_type.as_deref() {
        Some(OCI_INDEX | DOCKER_LIST) => true,
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
        Some(other) if doc.manifests.is_none() && doc.layers.is_none() => {
            return Err(ImageError::invalid(
                "manifest",
                format!("media type `{other}` is neither an image manifest nor an index"),
            ));
        }
        _ => doc.manifests.is_some(),
    };
    if is_index {
        let manifests = doc.manifests.unwrap_or_default();
        for m in &manifests {
            check_digest(&m.digest, "index")?;
        }
        return Ok(Parsed::Index(manifests));
    }
    let config = doc
        .config
        .ok_or_else(|| ImageError::invalid("manifest", "it has no config"))?;
    check_digest(&config.digest, "manifest's config")?;
    if config.size > MAX_DOCUMENT {
        return Err(ImageError::invalid(
            "manifest",
            format!(
                "its config is {} bytes (at most {MAX_DOCUMENT})",
                config.size
            ),
        ));
    }
    let descriptors = doc.layers.unwrap_or_default();
    if descriptors.len() > MAX_LAYERS {
        return Err(ImageError::invalid(
            "manifest",
            format!("it has {} layers (at most {MAX_LAYERS})", descriptors.len()),
        ));
    }
    let mut layers = Vec::with_capacity(descriptors.len());
    for d in descriptors {
        check_digest(&d.digest, "manifest's layer")?;
        if layer_compression(&d.media_type).is_none() {
            return Err(ImageError::UnsupportedLayer {
                digest: d.digest,
                media_type: d.media_type,
            });
        }
        layers.push(Layer {
            digest: d.digest,
            media_type: d.media_type,
            size: d.size,
        });
    }
    Ok(Parsed::Manifest(ImageManifest { config, layers }))
}

/// The linux/amd64 entry of an index (an entry without a platform counts as one when it is the
/// only entry), skipping attestation manifests.
pub(crate) fn pick_platform(manifests: &[Descriptor]) -> Option<&Descriptor> {
    let images: Vec<&Descriptor> = manifests
        .iter()
        .filter(|m| m.media_type.is_empty() || MANIFEST_TYPES.contains(&m.media_type.as_str()))
        .collect();
    images
        .iter()
        .find(|m| {
            m.platform.as_ref().is_some_and(|p| {
                p.os == "linux"
                    && p.architecture == "amd64"
                    && p.variant
                        .as_deref()
                        .is_none_or(|v| v == "v1" || v.is_empty())
            })
        })
        .or_else(|| {
            images.iter().find(|m| {
                m.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
            })
        })
        .or_else(|| match images.as_slice() {
            [only] if only.platform.is_none() => Some(only),
            _ => None,
        })
        .copied()
}

#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    config: Option<ContainerConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    exposed_ports: Option<std::collections::BTreeMap<String, serde_json::Value>>,
}

/// Parses an image config into what the runtime needs; refuses one for another OS or CPU.
pub(crate) fn parse_config(bytes: &[u8]) -> Result<ImageConfig, ImageError> {
    let file: ConfigFile =
        serde_json::from_slice(bytes).map_err(|e| ImageError::invalid("config", e))?;
    if let Some(os) = file.os.as_deref().filter(|os| *os != "linux") {
        return Err(ImageError::invalid(
            "config",
            format!("it is built for OS `{os}`, not linux"),
        ));
    }
    if let Some(arch) = file.architecture.as_deref().filter(|a| *a != "amd64") {
        return Err(ImageError::invalid(
            "config",
            format!("it is built for `{arch}`, not amd64; build it for linux/amd64"),
        ));
    }
    let c = file.config.unwrap_or_default();
    let env = c
        .env
        .unwrap_or_default()
        .into_iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv, String::new()),
        })
        .collect();
    let mut exposed_ports: Vec<u16> = c
        .exposed_ports
        .unwrap_or_default()
        .keys()
        .filter_map(|p| p.split('/').next().and_then(|n| n.parse().ok()))
        .collect();
    exposed_ports.sort_unstable();
    exposed_ports.dedup();
    Ok(ImageConfig {
        entrypoint: c.entrypoint.unwrap_or_default(),
        cmd: c.cmd.unwrap_or_default(),
        env,
        working_dir: c.working_dir.filter(|w| !w.is_empty()),
        user: c.user.filter(|u| !u.is_empty()),
        exposed_ports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_that_are_not_plain_sha256_hex_are_refused() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert!(check_digest(&good, "x").is_ok());
        for bad in [
            "sha256:../../etc/passwd".to_string(),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha512:{}", "a".repeat(64)),
            format!("sha256:{}/", "a".repeat(63)),
            "a".repeat(64),
        ] {
            assert!(check_digest(&bad, "x").is_err(), "{bad}");
        }
    }

    #[test]
    fn config_fields_are_read() {
        let c = parse_config(
            br#"{"os":"linux","architecture":"amd64","config":{"Entrypoint":["/app"],"Cmd":["serve"],
                "Env":["PATH=/bin","EMPTY=","A=b=c"],"WorkingDir":"/srv","User":"app:app",
                "ExposedPorts":{"8080/tcp":{},"9090/udp":{}}}}"#,
        )
        .unwrap();
        assert_eq!(c.entrypoint, ["/app"]);
        assert_eq!(c.cmd, ["serve"]);
        assert_eq!(
            c.env,
            [
                ("PATH".into(), "/bin".into()),
                ("EMPTY".into(), String::new()),
                ("A".into(), "b=c".into())
            ]
        );
        assert_eq!(c.working_dir.as_deref(), Some("/srv"));
        assert_eq!(c.user.as_deref(), Some("app:app"));
        assert_eq!(c.exposed_ports, [8080, 9090]);
        assert!(parse_config(br#"{"os":"windows"}"#).is_err());
        assert!(parse_config(br#"{"architecture":"arm64"}"#).is_err());
        assert_eq!(parse_config(b"{}").unwrap(), ImageConfig::default());
    }

    #[test]
    fn the_linux_amd64_entry_of_an_index_is_picked() {
        let d = |digit: char, os: &str, arch: &str| Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: format!("sha256:{}", digit.to_string().repeat(64)),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: os.into(),
                variant: None,
            }),
        };
        let index = [d('1', "linux", "arm64"), d('2', "linux", "amd64")];
        assert!(
            pick_platform(&index)
                .unwrap()
                .digest
                .starts_with("sha256:2")
        );
        assert!(pick_platform(&index[..1]).is_none());
    }
}
