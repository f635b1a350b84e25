//! Deno instances: one `deno` process per instance, started fresh (V8 cannot fork), in the
//! sandbox by `ignite-agent` like a native handler, serving up to `concurrency` requests at once
//! as promises in one isolate. The record's `start` says `exec`.
//!
//! The sandbox root holds exactly: the Deno binary and the shared libraries it loads
//! (read-only, at their host paths); the app's built tree at `/app` (its `.ignite/sdk`, its
//! `.deno` cache of dependencies, transpiled modules and V8's code cache, all made at build
//! time); the instance's own `/tmp`, `/proc` and `/dev` nodes. That is the first wall. Deno's
//! permissions are the second: the command line ([`ignite_builder::deno::run_args`]) lets the
//! app read `/app` and nothing else, read only the environment variables the app declares,
//! reach the network only with egress on, and never run programs, write files, load native
//! code or read system information. `--cached-only`: nothing is fetched at start.
//!
//! Memory: the instance's cgroup, and V8's heap limit below it (`--max-heap-size`), so a
//! runaway heap ends as V8's "out of memory" rather than a kill mid-write. V8 reserves tens of
//! GiB of address space at start, so the instance runs without the sandbox's RLIMIT_AS
//! backstop (`SpawnConfig::reserves_address_space`): the cgroup holds it.
//!
//! Without the sandbox (`--no-sandbox`) the same command runs unconfined on the unpacked tree.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ignite_agent::{SpawnConfig, SpawnError};
use ignite_builder::deno::{APP_DIR, ENTRY, RunOptions, run_args, run_env};
use ignite_sandbox::{Bind, Prepared, Sandbox};

use super::{
    BoxFuture, ColdStart, Instance, Launcher, StartError, StartKind, StartSettings, Started,
};

/// The node's Deno: the binary and the files it needs, found once at start.
#[derive(Debug, Clone)]
pub struct DenoRuntime {
    /// The binary, on the host (its real path).
    pub binary: PathBuf,
    /// `2.9.6`.
    pub version: String,
    /// The binary and its shared libraries, read-only in the sandbox at their host paths.
    pub binds: Vec<Bind>,
    /// The SDK's directory (`sdks/deno`), which builds copy into each app.
    pub sdk_dir: PathBuf,
}

impl DenoRuntime {
    /// Finds the binary (`binary`, else where `.ci/run` installs it), asks its version, and
    /// which shared libraries it loads.
    pub async fn detect(binary: Option<&Path>, sdk_dir: &Path) -> anyhow::Result<DenoRuntime> {
        let install = "install it with `npm install --prefix /opt/ignite-deno deno` (the npm \
                       registry's deno package ships the official Linux binary), or point \
                       --deno at a deno binary";
        let chosen = match binary {
            Some(b) => b.to_path_buf(),
            None => ignite_builder::deno::default_binary().ok_or_else(|| {
                anyhow::anyhow!(
                    "no Deno binary in {}; {install}",
                    ignite_builder::deno::DEFAULT_BINARIES.join(", ")
                )
            })?,
        };
        let real = std::fs::canonicalize(&chosen).map_err(|e| {
            anyhow::anyhow!(
                "the Deno binary {} cannot be used: {e}; {install}",
                chosen.display()
            )
        })?;
        let version = ignite_builder::deno::version(&real)
            .await
            .map_err(|e| anyhow::anyhow!("{e}; {install}"))?;
        if !sdk_dir.join("mod.ts").is_file() {
            anyhow::bail!("the Deno SDK is not at {}", sdk_dir.display());
        }
        let mut binds = vec![Bind {
            source: real.clone(),
            target: real.clone(),
        }];
        for (path, source) in shared_libraries(&real) {
            if !binds.iter().any(|b| b.target == path) {
                binds.push(Bind {
                    source,
                    target: path,
                });
            }
        }
        Ok(DenoRuntime {
            binary: real,
            version,
            binds,
            sdk_dir: sdk_dir.to_path_buf(),
        })
    }
}

/// `(path the binary asks for, the real file)` of each shared object `ldd` lists for `binary`,
/// the dynamic loader included.
fn shared_libraries(binary: &Path) -> Vec<(PathBuf, PathBuf)> {
    let Ok(out) = std::process::Command::new("ldd").arg(binary).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)`, or the loader:
            // `/lib64/ld-linux-x86-64.so.2 (0x…)`.
            let path = match line.split_once(" => ") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            let path = PathBuf::from(path)
                .canonicalize()
                .ok()
                .map(|real| (PathBuf::from(path), real));
            path.filter(|(p, _)| p.is_absolute())
        })
        .collect()
}

/// V8's heap limit for an instance of `memory_mb`: what is left once Deno's own footprint (its
/// code, threads and buffers, ~40 MiB) is set aside, and at least half.
pub fn heap_mb(memory_mb: u32) -> u64 {
    let memory = u64::from(memory_mb);
    memory.saturating_sub(48).max(memory / 2).max(16)
}

/// Starts instances of one Deno version.
pub struct DenoLauncher {
    pub runtime: Arc<DenoRuntime>,
    /// `org/app/version`, for the logs.
    pub version: String,
    /// The built tree, unpacked on this node (see [`DenoLauncher::tree`]).
    pub tree: PathBuf,
    /// The artifact (the tree as a tar): its digest, and where it is (or is fetched from).
    pub blobs: Arc<crate::blobs::Blobs>,
    pub digest: String,
    pub env: Vec<(String, String)>,
    pub sandbox: Option<Sandbox>,
    /// A sandbox made ahead of need for this version's next instance (see [`Spare`]).
    pub spare: super::Spare,
}

impl DenoLauncher {
    /// The unpacked tree, unpacking the artifact first if this node has not yet.
    async fn tree(&self) -> Result<PathBuf, StartError> {
        super::unpacked(&self.blobs, &self.digest, &self.tree, ENTRY).await
    }

    /// The instance's command line, environment and binds, for the tree seen at `app`.
    fn config(&self, app: &Path, settings: &StartSettings) -> SpawnConfig {
        let names: Vec<String> = self.env.iter().map(|(k, _)| k.clone()).collect();
        let mut config = SpawnConfig::new(&self.runtime.binary);
        config.args = run_args(
            &self.runtime.binary,
            &RunOptions {
                app,
                allow_env: &names,
                allow_net: settings.egress,
                heap_mb: Some(heap_mb(settings.memory_mb)),
                check: false,
            },
        );
        config.env = self.env.clone();
        config
            .env
            .retain(|(k, _)| !run_env(app).iter().any(|(n, _)| n == k));
        config.env.extend(run_env(app));
        config.reserves_address_space = true;
        config
    }
}

impl Launcher for DenoLauncher {
    fn prepare(&self, _settings: StartSettings) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(e) = self.tree().await {
                tracing::warn!(version = self.version, "could not prepare the app: {e}");
            }
        })
    }

    fn start(&self, settings: StartSettings) -> BoxFuture<'_, Started> {
        Box::pin(async move {
            let t0 = Instant::now();
            let tree = self.tree().await?;
            let fetch = t0.elapsed();
            let Some(sandbox) = &self.sandbox else {
                let instance =
                    ignite_agent::Instance::spawn(&self.config(&tree, &settings)).await?;
                return Ok(started(instance, fetch));
            };
            let mut config = self.config(Path::new(APP_DIR), &settings);
            config.binds = self.runtime.binds.clone();
            config.binds.push(Bind {
                source: tree.clone(),
                target: APP_DIR.into(),
            });
            let limits = settings.limits();
            config.sandbox = Some((sandbox.clone(), limits));
            let command = ignite_sandbox::Command {
                program: &config.program,
                argv: &config.args,
                env: &config.env,
                binds: &config.binds,
                reserves_address_space: config.reserves_address_space,
            };
            let instance = match self.spare.take().filter(|p| p.fits(&command, &limits)) {
                Some(prepared) => {
                    let begun = Instant::now();
                    match ignite_sandbox::spawn_prepared(prepared, &command, &limits) {
                        Ok(spawned) => ignite_agent::Instance::adopt(spawned, begun, &config).await,
                        Err(source) => Err(SpawnError::Spawn {
                            program: config.program.clone(),
                            source,
                        }),
                    }
                }
                None => ignite_agent::Instance::spawn(&config).await,
            };
            // Once this instance is ready (or has failed), the next one's sandbox.
            let (sandbox, binds, egress) = (sandbox.clone(), config.binds.clone(), settings.egress);
            self.spare
                .refill(move || Prepared::new(&sandbox, &binds, egress));
            Ok(started(instance?, fetch))
        })
    }
}

/// The instance and its cold start's phases.
fn started(
    instance: ignite_agent::Instance,
    fetch: std::time::Duration,
) -> (Arc<dyn Instance>, ColdStart) {
    let cold = ColdStart {
        fetch,
        spawn: instance.spawn_duration(),
        init: instance.init_duration(),
        kind: StartKind::Exec,
        ..ColdStart::default()
    };
    (Arc::new(instance) as Arc<dyn Instance>, cold)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heap_limit_leaves_room_for_deno_itself() {
        assert_eq!(heap_mb(128), 80);
        assert_eq!(heap_mb(256), 208);
        assert_eq!(heap_mb(64), 32);
        assert_eq!(heap_mb(2048), 2000);
    }
}
