//! Image builds: a Dockerfile and its context into an OCI image layout, with `buildah`
//! (daemonless), in the build jail; and the `--git-url` mode's clone, jailed too.
//!
//! [`build`] runs, under the build's time budget, each step's output streamed to the log:
//!
//! 1. admission: the Dockerfile must be inside the context (no `..`, no link out), the context
//!    at most [`MAX_CONTEXT_BYTES`]; every `FROM` must name an allowed registry (a bare
//!    `FROM python` is refused: write the registry's host);
//! 2. `buildah bud` in the jail: a user namespace of the build's own maps its ids `0..`
//!    [`IMAGE_IDS`] to the host's `uid..uid + IMAGE_IDS` (base images hold files of many
//!    owners), `RUN` steps run with `--isolation chroot`, storage (`--root`, `--runroot`,
//!    vfs) and configuration (`registries.conf` with the allowed registries only and no
//!    short-name search, a signature policy, `containers.conf`) in the build's work
//!    directory, never the host's; base images come through the registry proxy (its
//!    allow-list is the configured registries), a registry on the server's loopback through a
//!    tunnel of the jail's to the same proxy (Go's HTTP client never proxies loopback);
//! 3. `buildah push … oci:<out>`, the same jail: the result as an OCI image layout.
//!
//! [`clone_git`] fetches one commit of a repository (shallow at a branch or tag; a commit id
//! by itself when the server allows it, else the whole history) into a directory, git jailed
//! with the proxy as its only network and none of the host's configuration.
//!
//! Without a jail ([`BuildOptions::jail`] `None`) the steps run unconfined: trusted input
//! only.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use ignite_sandbox::jail::{JailBind, JailNetwork, JailSpec};
use tokio::process::Command;

use crate::python::blocking;
use crate::{
    BuildError, BuildOptions, DiskWatch, JailOptions, LogCap, caller_uid, chown_tree, io_err,
    run_logged,
};

/// The most a build context may hold (what a `.dockerignore` leaves out counts too).
pub const MAX_CONTEXT_BYTES: u64 = 1 << 30;
/// How many ids the image build's user namespace maps (from the jail's uid on): the usual
/// subordinate range, enough for every owner a base image's files have.
pub const IMAGE_IDS: u32 = 65536;
/// How many of buildah's last output lines a failure carries.
const LAST_LINES: usize = 8;
/// The name the image has in the build's own storage.
const LOCAL_NAME: &str = "localhost/ignite-build:latest";

/// One image build's inputs.
#[derive(Debug, Clone, Copy)]
pub struct ImageBuild<'a> {
    /// The build context, a directory the builder may read; only read.
    pub context: &'a Path,
    /// The Dockerfile, relative to `context` (`Dockerfile`).
    pub dockerfile: &'a Path,
    /// An empty directory: the result goes there as an OCI image layout (what `buildah push
    /// <id> oci:<out>` writes).
    pub out: &'a Path,
    /// An empty directory of the build's: buildah's storage and configuration. Its files end up
    /// owned by the build's id range; the caller removes it.
    pub work: &'a Path,
    /// The buildah binary (`/usr/bin/buildah`).
    pub buildah: &'a Path,
    /// `host:port` (or `host`) of the registries the build may pull base images from; the
    /// proxy in [`crate::JailOptions::fetch_proxy`] must allow exactly these (port 443 for a
    /// registry written without one, 80 for an insecure one).
    pub registries: &'a [String],
    /// Of `registries`, those that speak plain HTTP.
    pub insecure: &'a [String],
}

/// A built image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageArtifact {
    /// The OCI image layout (`index.json`, `oci-layout`, `blobs/`): [`ImageBuild::out`].
    pub layout: PathBuf,
    /// `sha256:<hex>` of the image's manifest.
    pub digest: String,
}

/// Builds an image (see the module's documentation), sending buildah's output to `log` line by
/// line (capped at [`BuildOptions::max_log_bytes`]), the whole under [`BuildOptions::timeout`].
pub async fn build(
    b: &ImageBuild<'_>,
    options: &BuildOptions,
    log: impl FnMut(&str),
) -> Result<ImageArtifact, BuildError> {
    let deadline = tokio::time::Instant::now() + options.timeout;
    let mut log = LogCap::new(options.max_log_bytes, log);
    let result = build_with(b, options, deadline, &mut log).await;
    log.finish();
    result
}

async fn build_with(
    b: &ImageBuild<'_>,
    options: &BuildOptions,
    deadline: tokio::time::Instant,
    log: &mut LogCap<impl FnMut(&str)>,
) -> Result<ImageArtifact, BuildError> {
    // 1. Admission.
    let (context, dockerfile) = admit(b.context, b.dockerfile)?;
    let text = std::fs::read_to_string(&dockerfile).map_err(io_err(&dockerfile))?;
    check_bases(&text, b.registries)?;
    let ctx = context.clone();
    let size = blocking(move || context_size(&ctx)).await?;
    if size > MAX_CONTEXT_BYTES {
        return Err(BuildError::ContextTooLarge {
            limit_mb: MAX_CONTEXT_BYTES >> 20,
        });
    }
    let work = Work::write(b)?;
    let out = b.out.to_path_buf();
    std::fs::create_dir_all(&out).map_err(io_err(&out))?;
    if let Some(jail) = &options.jail {
        let (dirs, uid) = ([work.root.clone(), out.clone()], jail.uid);
        blocking(move || dirs.iter().try_for_each(|d| chown_tree(d, uid))).await?;
    }
    let run = Buildah {
        b,
        options,
        deadline,
        work: &work,
        context: &context,
    };
    let result = run.steps(&dockerfile, log).await;
    if options.jail.is_some() {
        // The layout goes back to the server; the storage is the caller's to remove.
        let (out, uid) = (out.clone(), caller_uid());
        blocking(move || chown_tree(&out, uid)).await?;
    }
    let digest = result?;
    log.line(&format!("wrote the image's OCI layout: {digest}"));
    Ok(ImageArtifact {
        layout: out,
        digest,
    })
}

/// The canonical context and Dockerfile, once the Dockerfile is known to be a file inside it.
fn admit(context: &Path, dockerfile: &Path) -> Result<(PathBuf, PathBuf), BuildError> {
    let outside = || BuildError::DockerfileOutside(dockerfile.display().to_string());
    if !dockerfile
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(outside());
    }
    let context = std::fs::canonicalize(context).map_err(io_err(context))?;
    let path = context.join(dockerfile);
    let real = match std::fs::canonicalize(&path) {
        Ok(real) => real,
        Err(_) => return Err(BuildError::NoDockerfile(dockerfile.display().to_string())),
    };
    if !real.starts_with(&context) {
        return Err(outside());
    }
    if !real.is_file() {
        return Err(BuildError::NoDockerfile(dockerfile.display().to_string()));
    }
    Ok((context, real))
}

/// Bytes of the regular files under `dir` (links not followed).
fn context_size(dir: &Path) -> Result<u64, BuildError> {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let meta = entry.metadata().map_err(io_err(&entry.path()))?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
                if total > MAX_CONTEXT_BYTES {
                    return Ok(total);
                }
            }
        }
    }
    Ok(total)
}

/// Refuses a `FROM` that names no registry, or one not in `registries` (`scratch` and the
/// names of earlier stages are fine; an image written with a build argument is left to the
/// proxy).
fn check_bases(dockerfile: &str, registries: &[String]) -> Result<(), BuildError> {
    let allowed = || {
        if registries.is_empty() {
            "(none: the operator configured no registry)".to_string()
        } else {
            registries.join(", ")
        }
    };
    let mut stages: Vec<String> = Vec::new();
    for line in logical_lines(dockerfile) {
        let mut words = line.split_whitespace();
        if !words.next().is_some_and(|w| w.eq_ignore_ascii_case("FROM")) {
            continue;
        }
        let mut words = words.filter(|w| !w.starts_with("--"));
        let Some(image) = words.next() else { continue };
        if let (Some(as_), Some(name)) = (words.next(), words.next())
            && as_.eq_ignore_ascii_case("AS")
        {
            stages.push(name.to_ascii_lowercase());
        }
        let lower = image.to_ascii_lowercase();
        if lower == "scratch" || image.contains('$') || stages[..].contains(&lower) {
            continue;
        }
        let Some(host) = registry_of(image) else {
            return Err(BuildError::BareImageName {
                image: image.to_string(),
                allowed: allowed(),
            });
        };
        let host = host.to_ascii_lowercase();
        if !registries.iter().any(|r| r.eq_ignore_ascii_case(&host)) {
            return Err(BuildError::RegistryNotAllowed {
                image: image.to_string(),
                allowed: allowed(),
            });
        }
    }
    Ok(())
}

/// A Dockerfile's instructions, continuation lines joined, comments left out.
fn logical_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for raw in text.lines() {
        let trimmed = raw.trim();
        if current.is_empty() && (trimmed.starts_with('#') || trimmed.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                lines.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.is_empty() {
        lines.push(current);
    }
    lines
}

/// The registry host (`host[:port]`) an image reference names, if it names one: its first
/// component, when that has a `.` or a `:` or is `localhost` (the rule of Docker's references).
fn registry_of(image: &str) -> Option<&str> {
    let (first, _) = image.split_once('/')?;
    (first.contains('.') || first.contains(':') || first == "localhost").then_some(first)
}

/// Whether a registry's host is the server's loopback (reached through a tunnel of the jail's).
pub(crate) fn loopback(registry: &str) -> Option<String> {
    let (host, port) = match registry.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h, p.to_string()),
        _ => return None,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    (loopback && !host.contains(':')).then(|| format!("{host}:{port}"))
}

/// The build's work directory: storage, configuration, HOME and temporary files.
struct Work {
    root: PathBuf,
    storage: PathBuf,
    run: PathBuf,
    home: PathBuf,
    tmp: PathBuf,
    registries: PathBuf,
    policy: PathBuf,
    containers: PathBuf,
    storage_conf: PathBuf,
    digest: PathBuf,
    /// `passwd` and `group` naming the namespace's root, at `/etc/` in the jail (buildah looks
    /// its user up).
    etc: PathBuf,
    /// An empty directory, the jail's `/sys`: a `RUN` step's chroot binds `/sys` in, and the
    /// host's is none of the build's business.
    sys: PathBuf,
}

impl Work {
    fn write(b: &ImageBuild<'_>) -> Result<Work, BuildError> {
        let root = b.work.to_path_buf();
        let work = Work {
            storage: root.join("storage"),
            run: root.join("run"),
            home: root.join("home"),
            tmp: root.join("tmp"),
            registries: root.join("registries.conf"),
            policy: root.join("policy.json"),
            containers: root.join("containers.conf"),
            storage_conf: root.join("storage.conf"),
            digest: root.join("digest"),
            etc: root.join("etc"),
            sys: root.join("sys"),
            root,
        };
        for dir in [
            &work.storage,
            &work.run,
            &work.home,
            &work.tmp,
            &work.etc,
            &work.sys,
        ] {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let write = |path: &Path, text: String| std::fs::write(path, text).map_err(io_err(path));
        write(&work.registries, registries_conf(b.registries, b.insecure))?;
        write(
            &work.etc.join("passwd"),
            format!("root:x:0:0:root:{}:/bin/sh\n", work.home.display()),
        )?;
        write(&work.etc.join("group"), "root:x:0:\n".to_string())?;
        // No credentials: the allowed registries serve their images to anyone.
        write(&work.home.join("auth.json"), "{\"auths\":{}}\n".to_string())?;
        // Where a base image comes from is the allow-list's to judge, not signatures'.
        write(
            &work.policy,
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#.to_string() + "\n",
        )?;
        write(
            &work.containers,
            "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"none\"\n\
             [containers]\nnetns = \"host\"\n"
                .to_string(),
        )?;
        write(
            &work.storage_conf,
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = {}\nrunroot = {}\n",
                crate::toml_string(&work.storage.to_string_lossy()),
                crate::toml_string(&work.run.to_string_lossy()),
            ),
        )?;
        Ok(work)
    }
}

/// `registries.conf`: no short-name search, the allowed registries alone, the insecure ones
/// marked so.
fn registries_conf(registries: &[String], insecure: &[String]) -> String {
    let mut text =
        String::from("unqualified-search-registries = []\nshort-name-mode = \"enforcing\"\n");
    for r in registries {
        let plain = insecure.iter().any(|i| i.eq_ignore_ascii_case(r));
        text.push_str(&format!(
            "\n[[registry]]\nlocation = {}\ninsecure = {plain}\n",
            crate::toml_string(r)
        ));
    }
    text
}

/// Steps 2 and 3: the runs of buildah.
struct Buildah<'a, 'b> {
    b: &'a ImageBuild<'b>,
    options: &'a BuildOptions,
    deadline: tokio::time::Instant,
    work: &'a Work,
    context: &'a Path,
}

impl Buildah<'_, '_> {
    async fn steps(
        &self,
        dockerfile: &Path,
        log: &mut LogCap<impl FnMut(&str)>,
    ) -> Result<String, BuildError> {
        log.line(&format!(
            "building the image ({} in {})",
            self.b.dockerfile.display(),
            self.b.context.display()
        ));
        let mut args = self.global_args();
        args.extend(os(&[
            "bud",
            "--isolation",
            "chroot",
            "--format",
            "oci",
            "--pull",
            "--layers=false",
            "--no-cache",
            "--jobs",
            "1",
            "--signature-policy",
        ]));
        args.push(self.work.policy.clone().into());
        args.extend(os(&["-t", LOCAL_NAME, "-f"]));
        args.push(dockerfile.into());
        args.push(self.context.into());
        self.run("buildah bud", args, log).await?;
        log.line("writing the image as an OCI layout");
        let mut args = self.global_args();
        args.extend(os(&["push", "--signature-policy"]));
        args.push(self.work.policy.clone().into());
        args.push("--digestfile".into());
        args.push(self.work.digest.clone().into());
        args.push(LOCAL_NAME.into());
        let mut dest = OsString::from("oci:");
        dest.push(self.b.out);
        args.push(dest);
        self.run("buildah push", args, log).await?;
        let digest =
            std::fs::read_to_string(&self.work.digest).map_err(io_err(&self.work.digest))?;
        Ok(digest.trim().to_string())
    }

    fn global_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--root".into(), self.work.storage.clone().into()];
        args.push("--runroot".into());
        args.push(self.work.run.clone().into());
        args.extend(os(&["--storage-driver", "vfs"]));
        args
    }

    fn env(&self) -> Vec<(OsString, OsString)> {
        let w = self.work;
        let path = |p: &Path| p.as_os_str().to_owned();
        vec![
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
            ("HOME".into(), path(&w.home)),
            ("TMPDIR".into(), path(&w.tmp)),
            ("XDG_RUNTIME_DIR".into(), path(&w.run)),
            ("LANG".into(), "C.UTF-8".into()),
            ("CONTAINERS_REGISTRIES_CONF".into(), path(&w.registries)),
            ("CONTAINERS_CONF".into(), path(&w.containers)),
            ("CONTAINERS_STORAGE_CONF".into(), path(&w.storage_conf)),
            ("REGISTRY_AUTH_FILE".into(), path(&w.home.join("auth.json"))),
            ("BUILDAH_ISOLATION".into(), "chroot".into()),
        ]
    }

    /// One run of buildah; its failure names `step` with buildah's last lines.
    async fn run(
        &self,
        step: &str,
        args: Vec<OsString>,
        log: &mut LogCap<impl FnMut(&str)>,
    ) -> Result<(), BuildError> {
        let (cmd, watch) = match &self.options.jail {
            None => {
                let mut cmd = Command::new(self.b.buildah);
                cmd.env_clear()
                    .envs(self.env())
                    .args(args)
                    .current_dir(self.context);
                (cmd, None)
            }
            Some(jail) => {
                let spec = self.spec(jail, args);
                let mut cmd = Command::new(&jail.helper);
                cmd.arg("ignite")
                    .arg("__jail")
                    .args(spec.to_args())
                    .env_clear()
                    .current_dir("/");
                let watch = DiskWatch {
                    dir: self.work.root.clone(),
                    limit: jail.max_disk_bytes,
                };
                (cmd, Some(watch))
            }
        };
        let mut last = Lines::default();
        let finished = {
            let mut tee = LogCap::new(usize::MAX, |line: &str| {
                log.line(line);
                last.push(line);
            });
            run_logged(
                cmd,
                self.options.timeout,
                self.deadline,
                watch,
                &mut tee,
                |_| true,
            )
            .await?
        };
        if finished.status.success() {
            return Ok(());
        }
        let last = last.0.join("\n");
        // The proxy's refusal, as Go's client reports it (a CONNECT refused, or a tunnel's
        // request answered by the proxy).
        if last.contains("403 Forbidden") || last.contains("403 (Forbidden)") {
            let registry = last
                .split("container registry ")
                .nth(1)
                .and_then(|rest| rest.split(": ").next())
                .map_or_else(|| "a base image".to_string(), |r| format!("registry {r}"));
            return Err(BuildError::RegistryNotAllowed {
                image: registry,
                allowed: self.b.registries.join(", "),
            });
        }
        Err(BuildError::ImageFailed {
            step: step.to_string(),
            status: finished.status.to_string(),
            last,
        })
    }

    /// The jail of one run of buildah: the context read-only, the work directory and the
    /// output writable, a user namespace with [`IMAGE_IDS`] ids, the registries through the
    /// proxy.
    fn spec(&self, jail: &JailOptions, args: Vec<OsString>) -> JailSpec {
        let mut read_only = vec![self.context.to_path_buf()];
        read_only.extend(
            [
                "/etc/ssl",
                "/etc/pki",
                "/etc/ca-certificates",
                "/usr/share/ca-certificates",
            ]
            .into_iter()
            .map(PathBuf::from)
            .filter(|p| p.exists()),
        );
        let network = match &jail.fetch_proxy {
            Some(proxy) => JailNetwork::Proxy(proxy.clone()),
            None => {
                read_only.extend(
                    [
                        "/etc/resolv.conf",
                        "/etc/hosts",
                        "/etc/nsswitch.conf",
                        "/etc/gai.conf",
                    ]
                    .into_iter()
                    .map(PathBuf::from)
                    .filter(|p| p.exists()),
                );
                JailNetwork::Host
            }
        };
        let loopback_tunnels = match network {
            JailNetwork::Proxy(_) => self
                .b
                .registries
                .iter()
                .filter_map(|r| loopback(r))
                .collect(),
            _ => Vec::new(),
        };
        JailSpec {
            root: jail.root.clone(),
            read_only,
            writable: vec![self.work.root.clone(), self.b.out.to_path_buf()],
            mapped: ["passwd", "group"]
                .into_iter()
                .map(|name| JailBind {
                    source: self.work.etc.join(name),
                    target: Path::new("/etc").join(name),
                    writable: false,
                })
                .chain(std::iter::once(JailBind {
                    source: self.work.sys.clone(),
                    target: "/sys".into(),
                    writable: false,
                }))
                .collect(),
            scratch: Vec::new(),
            tmp_mb: jail.tmp_mb,
            uid: jail.uid,
            cgroups: jail.cgroups.clone(),
            max_file_bytes: jail.max_disk_bytes,
            max_processes: 512,
            max_address_space: jail.max_address_space,
            cwd: self.context.to_path_buf(),
            env: self.env(),
            program: self.b.buildah.to_path_buf(),
            args,
            network,
            user_namespace: Some(IMAGE_IDS),
            loopback_tunnels,
        }
    }
}

/// The last [`LAST_LINES`] non-blank lines seen.
#[derive(Default)]
struct Lines(Vec<String>);

impl Lines {
    fn push(&mut self, line: &str) {
        if line.trim().is_empty() {
            return;
        }
        if self.0.len() == LAST_LINES {
            self.0.remove(0);
        }
        self.0.push(line.to_string());
    }
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(Into::into).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_must_name_an_allowed_registry() {
        let allowed = ["127.0.0.1:5000".to_string(), "ghcr.io".to_string()];
        let ok = "# syntax\nFROM 127.0.0.1:5000/base:1 AS build\nFROM scratch\n\
                  COPY --from=build /x /x\nFROM build\nFROM --platform=linux/amd64 \\\n  ghcr.io/a/b:1\n";
        check_bases(ok, &allowed).unwrap();
        let bare = check_bases("FROM python:3.12\n", &allowed).unwrap_err();
        assert!(matches!(bare, BuildError::BareImageName { .. }), "{bare}");
        assert!(bare.to_string().contains("registry"), "{bare}");
        let other = check_bases("from docker.io/library/python\n", &allowed).unwrap_err();
        let message = other.to_string();
        assert!(
            message.contains("the build may pull base images only from 127.0.0.1:5000, ghcr.io"),
            "{message}"
        );
    }

    #[test]
    fn a_dockerfile_must_stay_in_the_context() {
        let dir = tempfile::tempdir().unwrap();
        let context = dir.path().join("ctx");
        std::fs::create_dir_all(context.join("sub")).unwrap();
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(context.join("sub/Dockerfile"), "FROM scratch\n").unwrap();
        std::os::unix::fs::symlink("../Dockerfile", context.join("out")).unwrap();
        admit(&context, Path::new("sub/Dockerfile")).unwrap();
        for bad in [
            "../Dockerfile",
            "/etc/passwd",
            "out",
            "sub/../../Dockerfile",
        ] {
            let e = admit(&context, Path::new(bad)).unwrap_err();
            assert!(matches!(e, BuildError::DockerfileOutside(_)), "{bad}: {e}");
        }
        let e = admit(&context, Path::new("missing")).unwrap_err();
        assert!(matches!(e, BuildError::NoDockerfile(_)), "{e}");
    }

    #[test]
    fn registries_conf_lists_the_allowed_only() {
        let conf = registries_conf(
            &["127.0.0.1:5000".into(), "ghcr.io".into()],
            &["127.0.0.1:5000".into()],
        );
        assert!(
            conf.starts_with("unqualified-search-registries = []\n"),
            "{conf}"
        );
        assert!(
            conf.contains("location = \"127.0.0.1:5000\"\ninsecure = true"),
            "{conf}"
        );
        assert!(
            conf.contains("location = \"ghcr.io\"\ninsecure = false"),
            "{conf}"
        );
        assert_eq!(
            loopback("127.0.0.1:5000").as_deref(),
            Some("127.0.0.1:5000")
        );
        assert_eq!(loopback("localhost:80").as_deref(), Some("localhost:80"));
        assert_eq!(loopback("ghcr.io"), None);
        assert_eq!(loopback("10.0.0.1:5000"), None);
    }
}
