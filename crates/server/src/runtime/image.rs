//! Container images (image mode): an instance is the image's entrypoint started on the image's
//! unpacked root (read-only, shared by every instance of the image on this node), in the same
//! sandbox as every other instance — its own user (the image's `USER`, mapped to an
//! unprivileged host uid), pid, mount and network namespaces, cgroups, seccomp — serving HTTP
//! on `$PORT` inside its network namespace, where the agent's [`ignite_agent::HttpInstance`]
//! reaches it. The launcher keeps one sandbox with the root mounted ready for the next start.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ignite_agent::{HttpConfig, HttpInstance, Invocation};
use ignite_image::RootLease;
use ignite_sandbox::{ImageRoot, Prepared, Sandbox};

use super::{
    BoxFuture, ColdStart, Instance, Invoked, Launcher, Spare, StartError, StartKind, StartSettings,
    Started,
};

/// The port a container listens on unless the app's environment sets `PORT` (Knative's and
/// Cloud Run's default).
pub const DEFAULT_PORT: u16 = 8080;

/// Starts instances of one image version.
pub struct ImageLauncher {
    /// The image's manifest digest.
    pub digest: String,
    pub app: String,
    pub version: i64,
    /// The platform's blobs: the image is in their layout, or fetched into it.
    pub blobs: Arc<crate::blobs::Blobs>,
    pub roots: ignite_image::RootCache,
    /// The app's environment (over the image's `ENV`).
    pub env: Vec<(String, String)>,
    pub sandbox: Option<Sandbox>,
    /// The next instance's sandbox, with a lease on the root it has mounted (so that the root
    /// is not evicted under it).
    pub spare: Spare<(Prepared, RootLease)>,
}

/// A running container and the lease that keeps its root on the node.
struct ImageInstance {
    http: HttpInstance,
    _root: RootLease,
}

impl Instance for ImageInstance {
    fn invoke(&self, invocation: Invocation) -> BoxFuture<'_, Invoked> {
        Box::pin(async move {
            Invoked {
                reply: self.http.invoke(invocation).await,
                start: None,
            }
        })
    }

    fn is_alive(&self) -> bool {
        self.http.is_alive()
    }

    fn has_exited(&self) -> bool {
        self.http.has_exited()
    }

    fn shutdown(&self, grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(self.http.shutdown(grace))
    }
}

fn failed(message: impl std::fmt::Display) -> StartError {
    StartError {
        message: message.to_string(),
        logs: Vec::new(),
    }
}

impl ImageLauncher {
    /// The image's root on this node (unpacking it first if the node has not yet), and how
    /// long finding the image and unpacking took.
    async fn root(&self) -> Result<(RootLease, Duration, Duration), StartError> {
        let t0 = Instant::now();
        // Finding the image on this node, or pulling it from the platform registry.
        self.blobs
            .ensure_image(&self.digest)
            .await
            .map_err(failed)?;
        let pulled = t0.elapsed();
        let (blobs, digest, roots) = (self.blobs.clone(), self.digest.clone(), self.roots.clone());
        let (lease, fetch, unpack) =
            tokio::task::spawn_blocking(move || root_of(blobs.layout(), &digest, &roots))
                .await
                .map_err(|e| failed(format!("finding the image: {e}")))??;
        Ok((lease, pulled + fetch, unpack))
    }

    /// Makes the next instance's sandbox in the background: a lease on the root, then the
    /// sandbox prepared on it.
    fn refill(&self, sandbox: &Sandbox, egress: bool) {
        let (blobs, digest, roots) = (self.blobs.clone(), self.digest.clone(), self.roots.clone());
        let sandbox = sandbox.clone();
        // The image is on the node already: the start that refills ensured it.
        self.spare.refill(move || {
            let (lease, _, _) = root_of(blobs.layout(), &digest, &roots).map_err(|e| {
                ignite_sandbox::SpawnError {
                    step: "preparing the image's root",
                    source: std::io::Error::other(e.message),
                }
            })?;
            Prepared::image(&sandbox, &image_root(&lease), egress).map(|p| (p, lease))
        });
    }

    /// The process's environment: the image's `ENV`, the app's over it, then `PORT` and
    /// Knative's `K_SERVICE`/`K_REVISION`.
    fn environment(&self, root: &ignite_image::Root) -> (Vec<(String, String)>, u16) {
        let mut env: Vec<(String, String)> = root.env.clone();
        for (k, v) in &self.env {
            env.retain(|(key, _)| key != k);
            env.push((k.clone(), v.clone()));
        }
        let port = env
            .iter()
            .find(|(k, _)| k == "PORT")
            .and_then(|(_, v)| v.parse::<u16>().ok())
            .filter(|p| *p != 0)
            .unwrap_or(DEFAULT_PORT);
        env.retain(|(k, _)| k != "PORT" && k != "K_SERVICE" && k != "K_REVISION");
        env.push(("PORT".into(), port.to_string()));
        env.push(("K_SERVICE".into(), self.app.clone()));
        env.push((
            "K_REVISION".into(),
            format!("{}-v{}", self.app, self.version),
        ));
        (env, port)
    }
}

/// The image's root on this node (the image in `layout`), unpacking it first if the node has
/// not, and how long finding the image and unpacking took. Blocking.
fn root_of(
    layout: &ignite_builder::oci::OciLayout,
    digest: &str,
    roots: &ignite_image::RootCache,
) -> Result<(RootLease, Duration, Duration), StartError> {
    let t0 = Instant::now();
    let image = ignite_image::load(layout, digest).map_err(failed)?;
    let fetch = t0.elapsed();
    let t1 = Instant::now();
    let (lease, unpacked) = roots.acquire(layout, &image).map_err(failed)?;
    let unpack = if unpacked {
        t1.elapsed()
    } else {
        Duration::ZERO
    };
    Ok((lease, fetch, unpack))
}

fn image_root(root: &ignite_image::Root) -> ImageRoot {
    ImageRoot {
        rootfs: root.path.clone(),
        workdir: root.workdir.clone(),
        uid: root.uid,
        gid: root.gid,
    }
}

impl Launcher for ImageLauncher {
    fn prepare(&self, settings: StartSettings) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            match self.root().await {
                Ok(_) => {
                    if let Some(sandbox) = &self.sandbox {
                        self.refill(sandbox, settings.egress);
                    }
                }
                Err(e) => tracing::warn!(digest = self.digest, "could not prepare the image: {e}"),
            }
        })
    }

    fn start(&self, settings: StartSettings) -> BoxFuture<'_, Started> {
        Box::pin(async move {
            let Some(sandbox) = &self.sandbox else {
                return Err(failed(
                    "image mode runs containers only in the sandbox, which this server runs \
                     without (--no-sandbox); start it without --no-sandbox",
                ));
            };
            let (lease, fetch, unpack) = self.root().await?;
            let root = image_root(&lease);
            let limits = settings.limits();
            let prepared =
                match self.spare.take().filter(|(p, _)| {
                    p.image_root() == Some(&root) && p.fits(&empty_command(), &limits)
                }) {
                    Some((prepared, _its_lease)) => prepared,
                    None => {
                        let (sandbox, root) = (sandbox.clone(), root.clone());
                        tokio::task::spawn_blocking(move || {
                            Prepared::image(&sandbox, &root, limits.egress)
                        })
                        .await
                        .map_err(|e| failed(format!("preparing the sandbox: {e}")))?
                        .map_err(|e| failed(format!("could not start the container: {e}")))?
                    }
                };
            let (env, port) = self.environment(&lease);
            let config = HttpConfig {
                program: lease.program.clone(),
                args: lease.argv.clone(),
                env,
                port,
                init_timeout: settings.deadline,
                log_limit: 256 * 1024,
            };
            let started = HttpInstance::start(prepared, &config, &limits).await;
            // The next instance's sandbox, once this one is up (or has failed), with a lease
            // of its own on the root.
            self.refill(sandbox, settings.egress);
            let http = started?;
            let cold = ColdStart {
                fetch,
                unpack,
                spawn: http.spawn_duration(),
                init: http.init_duration(),
                kind: StartKind::Exec,
                ..ColdStart::default()
            };
            Ok((
                Arc::new(ImageInstance { http, _root: lease }) as Arc<dyn Instance>,
                cold,
            ))
        })
    }
}

/// What [`Prepared::fits`] compares for an image's sandbox: no binds.
fn empty_command() -> ignite_sandbox::Command<'static> {
    ignite_sandbox::Command {
        program: std::path::Path::new("/"),
        argv: &[],
        env: &[],
        binds: &[],
        reserves_address_space: false,
    }
}
