//! Image mode's control-plane side: which registries and git hosts the operator allows, the
//! org's registry credentials, and the build of an image draft — a pull (`--image-ref`), a
//! Dockerfile build (`--dockerfile-path`, the context uploaded) or a clone and build
//! (`--git-url`) — into the platform's OCI layout, where the version records the image's
//! manifest digest. Running it is `runtime/image.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ignite_builder::{BuildError, BuildOptions, Sdk};
use ignite_image::{Credentials, Image, RegistryAccess};
use serde::{Deserialize, Serialize};

use crate::State;
use crate::builds::{LiveBuild, fresh_dir};
use crate::store::{self, Version};

/// The registries a platform allows when the operator names none: the public ones.
pub const DEFAULT_REGISTRIES: &[&str] = &[
    "docker.io",
    "ghcr.io",
    "quay.io",
    "gcr.io",
    "registry.gitlab.com",
    "public.ecr.aws",
];

/// The git hosts a platform allows when the operator names none.
pub const DEFAULT_GIT_HOSTS: &[&str] =
    &["github.com", "gitlab.com", "bitbucket.org", "codeberg.org"];

/// The operator's image-mode settings.
#[derive(Debug, Clone)]
pub struct ImageSettings {
    /// `host[:port]` of the registries images may come from (pulls, logins, a build's `FROM`).
    pub registries: Vec<String>,
    /// Registries that speak plain HTTP (a registry on the operator's own network); allowed too.
    pub insecure: Vec<String>,
    /// `host[:port]` of the git servers `--git-url` may clone from.
    pub git_hosts: Vec<String>,
    /// The disk the node's unpacked image roots may take together, in MiB.
    pub cache_mb: u64,
    pub buildah: PathBuf,
    pub git: PathBuf,
}

impl Default for ImageSettings {
    fn default() -> ImageSettings {
        ImageSettings {
            registries: DEFAULT_REGISTRIES.iter().map(|s| s.to_string()).collect(),
            insecure: Vec::new(),
            git_hosts: DEFAULT_GIT_HOSTS.iter().map(|s| s.to_string()).collect(),
            cache_mb: 10240,
            buildah: "/usr/bin/buildah".into(),
            git: "/usr/bin/git".into(),
        }
    }
}

impl ImageSettings {
    /// Every registry allowed, the plain-HTTP ones included.
    pub fn allowed(&self) -> Vec<String> {
        let mut all = self.registries.clone();
        for insecure in &self.insecure {
            if !all.iter().any(|a| a.eq_ignore_ascii_case(insecure)) {
                all.push(insecure.clone());
            }
        }
        all
    }

    /// Refuses a registry the operator did not allow, saying which are.
    pub fn check_registry(&self, host: &str) -> Result<(), String> {
        if self.allowed().iter().any(|a| a.eq_ignore_ascii_case(host)) {
            return Ok(());
        }
        Err(format!(
            "images may come only from the registries this platform allows ({}), not from \
             {host}; use one of them, or ask the operator to add it with `--image-registry {host}`",
            self.allowed().join(", ")
        ))
    }

    /// `host:port` of everything a pull (a build's, or the server's own) reaches through the
    /// proxy: each registry (and, for the public ones whose blobs live elsewhere, those hosts).
    pub fn proxy_allow_list(&self) -> Vec<String> {
        let mut list = Vec::new();
        for registry in self
            .registries
            .iter()
            .filter(|r| !self.insecure.contains(r))
        {
            list.push(with_port(registry, 443));
            list.extend(
                match registry.as_str() {
                    "docker.io" => &[
                        "registry-1.docker.io:443",
                        "auth.docker.io:443",
                        "production.cloudflare.docker.com:443",
                    ][..],
                    "ghcr.io" => &["pkg-containers.githubusercontent.com:443"][..],
                    "quay.io" => &["cdn.quay.io:443", "cdn01.quay.io:443", "cdn02.quay.io:443"][..],
                    _ => &[][..],
                }
                .iter()
                .map(|s| s.to_string()),
            );
        }
        list.extend(self.insecure.iter().map(|r| with_port(r, 80)));
        list
    }
}

fn with_port(host: &str, port: u16) -> String {
    if host
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        host.to_ascii_lowercase()
    } else {
        format!("{}:{port}", host.to_ascii_lowercase())
    }
}

/// The registry host of an image reference, as Docker reads one: the first path component
/// when it looks like a host (a dot, a port or `localhost`), else Docker Hub.
pub fn registry_of(reference: &str) -> String {
    match reference.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first.to_ascii_lowercase()
        }
        _ => "docker.io".into(),
    }
}

/// Where an image draft's image comes from: what `draft save` stored as the draft's source (a
/// small JSON blob; the context of a Dockerfile build is a blob of its own).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ImageSource {
    Pull {
        image_ref: String,
    },
    Dockerfile {
        context: String,
        dockerfile: String,
    },
    Git {
        url: String,
        reference: Option<String>,
    },
}

impl ImageSource {
    /// The `source_kind` a draft of this source records.
    pub fn kind(&self) -> &'static str {
        match self {
            ImageSource::Pull { .. } => "image_ref",
            ImageSource::Dockerfile { .. } => "dockerfile",
            ImageSource::Git { .. } => "git",
        }
    }
}

/// The source kinds of image drafts.
pub const SOURCE_KINDS: &[&str] = &["image_ref", "dockerfile", "git"];

/// The context a value sealed for an org's registry credentials is bound to.
fn sealed_for(org: &str, host: &str) -> Vec<u8> {
    format!("registry\0{org}\0{host}").into_bytes()
}

/// Seals `password` for `org`'s credentials at `host`.
pub(crate) fn seal_password(
    state: &State,
    org: &str,
    host: &str,
    password: &str,
) -> std::io::Result<Vec<u8>> {
    state
        .secrets
        .seal(password.as_bytes(), &sealed_for(org, host))
}

/// How `org`'s pulls reach registries: the operator's plain-HTTP ones, and the org's
/// credentials (a credential that no longer opens — another server key — is left out, with a
/// warning).
pub(crate) async fn access_for(state: &State, org: &str) -> sqlx::Result<RegistryAccess> {
    let mut access = RegistryAccess {
        insecure: state.config.images.insecure.clone(),
        // An image bigger than the node's whole root budget could never run here.
        max_bytes: Some(state.config.images.cache_mb << 20),
        proxy: Some(state.image_proxy.url()),
        ..RegistryAccess::default()
    };
    for credential in store::registry_credentials(&state.db, org).await? {
        match state
            .secrets
            .open_sealed(&credential.secret, &sealed_for(org, &credential.host))
        {
            Some(password) => {
                access.credentials.insert(
                    credential.host.clone(),
                    Credentials {
                        username: credential.username,
                        password: String::from_utf8_lossy(&password).into_owned(),
                    },
                );
            }
            None => tracing::warn!(
                org,
                host = credential.host,
                "stored registry credentials do not open with this server's key; log in again"
            ),
        }
    }
    Ok(access)
}

fn image_error(e: impl std::fmt::Display) -> BuildError {
    BuildError::Image(e.to_string())
}

/// A `--git-url` spec checked against the operator's git hosts: the URL, the reference after
/// `#`, and the `host:port` the clone reaches. Credentials in the URL are refused: they would
/// be kept with the draft in the clear.
pub fn check_git(
    settings: &ImageSettings,
    spec: &str,
) -> Result<(String, Option<String>, String), String> {
    let (url, reference) = ignite_builder::git::split_reference(spec);
    let host = ignite_builder::git::check_url(url).map_err(|e| e.to_string())?;
    if ignite_builder::git::redact_url(url) != url {
        return Err(
            "a --git-url with credentials in it would be stored with the draft; clone a \
             repository this platform can read without them"
                .into(),
        );
    }
    if let Some(reference) = reference
        && (reference.is_empty()
            || reference.starts_with('-')
            || reference.len() > 256
            || reference
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == ':'))
    {
        return Err(format!(
            "the git reference {reference:?} after # is not a branch, tag or commit"
        ));
    }
    let bare = host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h);
    let allowed = settings.git_hosts.iter().any(|a| {
        let a = a.to_ascii_lowercase();
        a == host || (a == bare && (host.ends_with(":443") || host.ends_with(":80")))
    });
    if !allowed {
        return Err(format!(
            "this platform clones only from {}, not from {host}; push the repository there, \
             or ask the operator to add the host with `--git-host {bare}`",
            settings.git_hosts.join(", ")
        ));
    }
    Ok((url.to_string(), reference.map(str::to_string), host))
}

/// Builds an image draft: its image pulled or built, imported into the layout, its root
/// unpacked on this node (so that a missing program is a failed build, not a failed request),
/// all within the compile budget; the build's scratch directories removed however it ends.
pub(crate) async fn compile(
    state: &Arc<State>,
    org: &str,
    draft: &Version,
    build_id: &str,
    live: &LiveBuild,
    app_dir: &Path,
) -> Result<ignite_builder::Artifact, BuildError> {
    let budget = state.config.build_timeout;
    let result = tokio::time::timeout(
        budget,
        compile_within(state, org, draft, build_id, live, app_dir),
    )
    .await
    .unwrap_or(Err(BuildError::TimedOut(budget)));
    for scratch in ["context", "checkout", "image-work", "image-out"] {
        let _ = std::fs::remove_dir_all(app_dir.join(scratch));
    }
    result
}

async fn compile_within(
    state: &Arc<State>,
    org: &str,
    draft: &Version,
    build_id: &str,
    live: &LiveBuild,
    app_dir: &Path,
) -> Result<ignite_builder::Artifact, BuildError> {
    let digest = draft.source_digest.clone().unwrap_or_default();
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BuildError::Io { path, source }
    };
    // Another replica may have taken the save.
    let blob = state
        .blobs
        .ensure(&digest)
        .await
        .map_err(crate::builds::blobs_error)?;
    let bytes = std::fs::read(&blob).map_err(io(&blob))?;
    let source: ImageSource = serde_json::from_slice(&bytes)
        .map_err(|e| image_error(format!("the draft's image source is unreadable: {e}")))?;
    let settings = &state.config.images;
    let image = match &source {
        ImageSource::Pull { image_ref } => {
            let host = registry_of(image_ref);
            settings.check_registry(&host).map_err(BuildError::Image)?;
            live.push(format!("pulling {image_ref} from {host}"));
            let access = access_for(state, org).await.map_err(image_error)?;
            ignite_image::pull(state.blobs.layout(), image_ref, &access)
                .await
                .map_err(image_error)?
        }
        ImageSource::Dockerfile {
            context,
            dockerfile,
        } => {
            let dir = app_dir.join("context");
            fresh_dir(&dir).map_err(io(&dir))?;
            let archive = state
                .blobs
                .ensure(context)
                .await
                .map_err(crate::builds::blobs_error)?;
            let bytes = std::fs::read(&archive).map_err(io(&archive))?;
            ignite_builder::archive::unpack(&bytes, &dir, crate::builds::SOURCE_CAP)
                .map_err(image_error)?;
            build_dockerfile(state, build_id, live, app_dir, &dir, Path::new(dockerfile)).await?
        }
        ImageSource::Git { url, reference } => {
            let dir = app_dir.join("checkout");
            let _ = std::fs::remove_dir_all(&dir);
            // Checked again: the operator's hosts may have changed since the save.
            let spec = match reference {
                Some(r) => format!("{url}#{r}"),
                None => url.clone(),
            };
            let (_, _, host) = check_git(settings, &spec).map_err(BuildError::Image)?;
            let allowed = vec![host];
            let proxy = start_proxy(state, app_dir, "git", &allowed)?;
            let mut options = options(state);
            let (jail, _cgroup) = crate::builds::jail(state, build_id, proxy.as_ref())?;
            options.jail = jail;
            live.push(format!(
                "cloning {}{}",
                ignite_builder::git::redact_url(url),
                reference
                    .as_deref()
                    .map(|r| format!(" at {r}"))
                    .unwrap_or_default()
            ));
            let checkout = ignite_builder::git::clone_git(
                &ignite_builder::git::GitClone {
                    url,
                    reference: reference.as_deref(),
                    dest: &dir,
                    git: &settings.git,
                    allowed_hosts: &allowed,
                },
                &options,
                |line| live.push(line.to_string()),
            )
            .await?;
            live.push(format!("checked out {}", checkout.commit));
            build_dockerfile(
                state,
                build_id,
                live,
                app_dir,
                &checkout.dir,
                Path::new("Dockerfile"),
            )
            .await?
        }
    };
    live.push(format!(
        "image {} ({} layers, {} bytes compressed)",
        image.manifest_digest,
        image.layers.len(),
        image.size
    ));
    let (roots, layout_image) = (state.roots.clone(), image.clone());
    let state2 = state.clone();
    let unpacked = tokio::task::spawn_blocking(move || {
        roots
            .acquire(state2.blobs.layout(), &layout_image)
            .map(|(lease, _)| (lease.argv.clone(), lease.uid, lease.workdir.clone()))
    })
    .await
    .map_err(image_error)?
    .map_err(image_error)?;
    live.push(format!(
        "unpacked its root: runs {:?} as uid {} in {}",
        unpacked.0,
        unpacked.1,
        unpacked.2.display()
    ));
    // Every node runs it: a build succeeds once the registry has it.
    if let Some(registry) = state.blobs.registry() {
        live.push(format!(
            "publishing the image to the platform registry {}",
            registry.url()
        ));
    }
    state
        .blobs
        .publish_image(&image.manifest_digest)
        .await
        .map_err(crate::builds::blobs_error)?;
    Ok(ignite_builder::Artifact {
        path: state.blobs.layout().blob_path(&image.manifest_digest),
        size: image.size,
        digest: image.manifest_digest,
        target: IMAGE_TARGET.into(),
    })
}

/// What an image version's `artifact_target` says.
pub const IMAGE_TARGET: &str = "oci-image";

fn options(state: &State) -> BuildOptions {
    BuildOptions::new(
        Sdk::bundled(),
        state.config.data_dir.join("builds").join("image-target"),
        state.config.build_timeout,
    )
}

fn start_proxy(
    state: &State,
    app_dir: &Path,
    name: &str,
    allowed: &[String],
) -> Result<Option<ignite_builder::RegistryProxy>, BuildError> {
    if state.sandbox.is_none() {
        return Ok(None);
    }
    let path = app_dir.join(format!("{name}-proxy.sock"));
    let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
    ignite_builder::RegistryProxy::start(&path, &allowed)
        .map(Some)
        .map_err(|source| BuildError::Io { path, source })
}

/// Builds `dockerfile` in `context` with buildah in the build jail (its own range of ids, the
/// allowed registries through the proxy its only network) and imports the result.
async fn build_dockerfile(
    state: &Arc<State>,
    build_id: &str,
    live: &LiveBuild,
    app_dir: &Path,
    context: &Path,
    dockerfile: &Path,
) -> Result<Image, BuildError> {
    let settings = &state.config.images;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BuildError::Io { path, source }
    };
    let (work, out) = (app_dir.join("image-work"), app_dir.join("image-out"));
    fresh_dir(&work).map_err(io(&work))?;
    fresh_dir(&out).map_err(io(&out))?;
    let proxy = start_proxy(state, app_dir, "registry", &settings.proxy_allow_list())?;
    let mut options = options(state);
    let (mut jail, mut cgroup) = crate::builds::jail(state, build_id, proxy.as_ref())?;
    if let (Some(jail), Some(sandbox)) = (jail.as_mut(), &state.sandbox) {
        jail.uid = sandbox.image_build_uids(ignite_builder::image::IMAGE_IDS);
    }
    options.jail = jail;
    live.push(format!("building {} with buildah", dockerfile.display()));
    let allowed = settings.allowed();
    let built = ignite_builder::image::build(
        &ignite_builder::image::ImageBuild {
            context,
            dockerfile,
            out: &out,
            work: &work,
            buildah: &settings.buildah,
            registries: &allowed,
            insecure: &settings.insecure,
        },
        &options,
        |line| live.push(line.to_string()),
    )
    .await;
    let built = built.map_err(|e| crate::builds::out_of_memory_or(state, cgroup.as_mut(), e))?;
    drop(cgroup);
    let layout = state.clone();
    let image = tokio::task::spawn_blocking(move || {
        ignite_image::import_layout(layout.blobs.layout(), &built.layout)
    })
    .await
    .map_err(image_error)?
    .map_err(image_error)?;
    Ok(image)
}
