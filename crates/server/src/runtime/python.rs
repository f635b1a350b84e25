//! Python instances: forks of a **template** — a sandboxed interpreter with the SDK and the
//! app's `main.py` (and everything it imports) already imported (`ignite_sandbox::Template`).
//! A cold start is then a `fork()` and the SDK's handshake, not an interpreter start and the
//! app's imports; the record's `start` says `fork`, and `template_ms` what starting the
//! template cost when this start had to (the first on a node, or after the template was let
//! go to stay within the operator's template memory budget).
//!
//! The sandbox root of a template (and so of its instances) holds exactly: the interpreter, its
//! standard library, the shared libraries it and binary wheels load (read-only, at their host
//! paths); the SDK at `/ignite`; the app's built tree at `/app`; the instance's own `/tmp`,
//! `/proc` and `/dev` nodes. No host `/etc`, home directories or server data.
//!
//! Without the sandbox (`--no-sandbox`) each instance is a fresh interpreter running the SDK's
//! `serve` mode, unconfined.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ignite_agent::SpawnConfig;
use ignite_sandbox::{Bind, Limits, Sandbox, Template, TemplateSpec};

use super::{
    BoxFuture, ColdStart, Instance, Launcher, StartError, StartKind, StartSettings, Started,
};

/// Where the app's tree and the SDK appear inside the sandbox.
const APP_DIR: &str = "/app";
const SDK_DIR: &str = "/ignite";

/// How long a template may take to import the app.
const TEMPLATE_READY: Duration = Duration::from_secs(60);

/// The node's Python: the interpreter and the files it needs, found once at start.
#[derive(Debug, Clone)]
pub struct PythonRuntime {
    /// The interpreter, on the host (its real path).
    pub interpreter: PathBuf,
    /// `3.11`.
    pub version: String,
    /// Its files, read-only in the sandbox at their host paths.
    pub binds: Vec<Bind>,
    /// The SDK's directory (`sdks/python`).
    pub sdk_dir: PathBuf,
}

impl PythonRuntime {
    /// Asks `interpreter` where its files are and which shared libraries it loads.
    pub fn detect(interpreter: &Path, sdk_dir: &Path) -> anyhow::Result<PythonRuntime> {
        let real = std::fs::canonicalize(interpreter).map_err(|e| {
            anyhow::anyhow!(
                "the Python interpreter {} cannot be used: {e}; install Debian's python3 or point \
                 --python at another",
                interpreter.display()
            )
        })?;
        let script = "import sys, sysconfig, glob\n\
            print('%d.%d' % sys.version_info[:2])\n\
            print(sysconfig.get_path('stdlib'))\n\
            print(sysconfig.get_path('platstdlib'))\n\
            print(sysconfig.get_config_var('LIBDIR') or '')\n\
            for f in glob.glob(sysconfig.get_path('platstdlib') + '/lib-dynload/*.so'): print(f)\n";
        let out = std::process::Command::new(&real)
            .args(["-I", "-S", "-c", script])
            .env_clear()
            .output()
            .map_err(|e| anyhow::anyhow!("running {}: {e}", real.display()))?;
        if !out.status.success() {
            anyhow::bail!(
                "{} does not run: {}",
                real.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = text.lines();
        let version = lines.next().unwrap_or_default().to_string();
        let stdlib = PathBuf::from(lines.next().unwrap_or_default());
        let platstdlib = PathBuf::from(lines.next().unwrap_or_default());
        let _libdir = lines.next();
        let extensions: Vec<PathBuf> = lines.map(PathBuf::from).collect();
        let mut paths: Vec<PathBuf> = vec![real.clone(), stdlib.clone(), platstdlib];
        // The shared libraries of the interpreter and of its extension modules: their
        // directories (which are where binary wheels' system libraries are too), and the
        // dynamic loader at the path the ELF files name.
        let mut objects = vec![real.clone()];
        objects.extend(extensions);
        for (name, resolved) in shared_libraries(&objects) {
            match resolved {
                Some(lib) => {
                    if let Some(dir) = std::fs::canonicalize(&lib)
                        .ok()
                        .and_then(|p| p.parent().map(Path::to_path_buf))
                    {
                        paths.push(dir);
                    }
                }
                // The loader: bound at the path the binaries ask for.
                None => paths.push(PathBuf::from(name)),
            }
        }
        let mut binds: Vec<Bind> = Vec::new();
        for path in paths {
            let Ok(source) = std::fs::canonicalize(&path) else {
                continue;
            };
            let target = if path.is_absolute() { path } else { continue };
            // A directory already bound covers what is below it.
            if binds
                .iter()
                .any(|b| target.starts_with(&b.target) && b.source.is_dir())
            {
                continue;
            }
            binds.retain(|b| !b.target.starts_with(&target));
            binds.push(Bind { source, target });
        }
        binds.sort_by(|a, b| a.target.cmp(&b.target));
        Ok(PythonRuntime {
            interpreter: real,
            version,
            binds,
            sdk_dir: sdk_dir.to_path_buf(),
        })
    }

    /// The interpreter's argument vector for an SDK `mode`, given where the SDK is.
    fn argv(&self, sdk: &Path, mode: &str) -> Vec<String> {
        vec![
            self.interpreter.to_string_lossy().into_owned(),
            "-I".into(),
            "-S".into(),
            sdk.join("ignite_boot.py").to_string_lossy().into_owned(),
            mode.into(),
        ]
    }
}

/// `(name, resolved path)` for each shared object `ldd` lists for `objects`; the dynamic loader
/// (which ldd prints without an arrow) has no resolved path.
fn shared_libraries(objects: &[PathBuf]) -> Vec<(String, Option<PathBuf>)> {
    let Ok(out) = std::process::Command::new("ldd").args(objects).output() else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let line = line.trim();
        if let Some((name, rest)) = line.split_once(" => ") {
            if let Some(path) = rest
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/'))
            {
                found.push((name.to_string(), Some(PathBuf::from(path))));
            }
        } else if let Some(path) = line
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
        {
            found.push((path.to_string(), None));
        }
    }
    found
}

/// Which template: one per version of an app, network access and memory limit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TemplateKey {
    pub version: String,
    pub egress: bool,
    pub memory_mb: u32,
}

/// The node's templates, kept within a memory budget: when they hold more, the least recently
/// used one with no instances running is stopped (the next cold start of its version starts it
/// again).
pub struct Templates {
    budget_bytes: u64,
    entries: Mutex<HashMap<TemplateKey, Arc<Entry>>>,
}

#[derive(Default)]
struct Entry {
    template: tokio::sync::Mutex<Option<Arc<Template>>>,
    last_used: Mutex<Option<Instant>>,
}

impl Templates {
    pub fn new(budget_bytes: u64) -> Templates {
        Templates {
            budget_bytes,
            entries: Mutex::default(),
        }
    }

    fn entry(&self, key: &TemplateKey) -> Arc<Entry> {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone()
    }

    /// The running template for `key`, started with `start` if there is none; with the time
    /// starting it took (zero when it was running).
    pub async fn get<F, Fut>(
        &self,
        key: &TemplateKey,
        start: F,
    ) -> Result<(Arc<Template>, Duration), StartError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Template, StartError>>,
    {
        let entry = self.entry(key);
        *entry.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let mut slot = entry.template.lock().await;
        if let Some(template) = slot.as_ref().filter(|t| t.is_alive()) {
            return Ok((template.clone(), Duration::ZERO));
        }
        let t0 = Instant::now();
        let template = Arc::new(start().await?);
        *slot = Some(template.clone());
        drop(slot);
        self.keep_within_budget(key).await;
        Ok((template, t0.elapsed()))
    }

    /// Stops least recently used idle templates (never `keep`) while the total is over budget.
    async fn keep_within_budget(&self, keep: &TemplateKey) {
        loop {
            let entries: Vec<(TemplateKey, Arc<Entry>)> = self
                .entries
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect();
            let mut total = 0u64;
            let mut idle = Vec::new();
            for (key, entry) in entries {
                let Ok(slot) = entry.template.try_lock() else {
                    continue;
                };
                let Some(template) = slot.as_ref() else {
                    continue;
                };
                total += template.resident_bytes().unwrap_or(0);
                if key != *keep && template.instances() == 0 {
                    let used = *entry.last_used.lock().unwrap_or_else(|p| p.into_inner());
                    idle.push((used, key, entry.clone()));
                }
            }
            if total <= self.budget_bytes {
                return;
            }
            idle.sort_by_key(|(used, _, _)| *used);
            let Some((_, key, entry)) = idle.into_iter().next() else {
                return;
            };
            let template = entry.template.lock().await.take();
            if let Some(template) = template {
                tracing::info!(
                    version = key.version,
                    "stopping an idle Python template to stay within the template memory budget"
                );
                template.stop().await;
            }
        }
    }

    /// Stops the templates of a version's pool that is no longer active (a publish, a
    /// rollback, a change of network access), once they have no instances.
    pub async fn retire(&self, version: &str, egress: bool) {
        let entries: Vec<(TemplateKey, Arc<Entry>)> = self
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(k, _)| k.version == version && k.egress == egress)
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        for (key, entry) in entries {
            let mut slot = entry.template.lock().await;
            if slot.as_ref().is_some_and(|t| t.instances() == 0) {
                if let Some(t) = slot.take() {
                    t.stop().await;
                }
                self.entries
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&key);
            }
        }
    }

    /// Stops every template (the server is stopping).
    pub async fn stop_all(&self) {
        let entries: Vec<Arc<Entry>> = self
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, e)| e)
            .collect();
        for entry in entries {
            if let Some(t) = entry.template.lock().await.take() {
                t.stop().await;
            }
        }
    }
}

/// Starts instances of one Python version.
pub struct PythonLauncher {
    pub runtime: Arc<PythonRuntime>,
    pub templates: Arc<Templates>,
    /// `org/app/version`: the template's identity.
    pub version: String,
    /// The built tree, unpacked on this node (see [`PythonLauncher::tree`]).
    pub tree: PathBuf,
    /// The artifact (the tree as a tar): its digest, and where it is (or is fetched from).
    pub blobs: Arc<crate::blobs::Blobs>,
    pub digest: String,
    pub env: Vec<(String, String)>,
    pub sandbox: Option<Sandbox>,
}

impl PythonLauncher {
    /// The unpacked tree, fetching and unpacking the artifact first if this node has not yet.
    async fn tree(&self) -> Result<PathBuf, StartError> {
        super::unpacked(&self.blobs, &self.digest, &self.tree, "main.py").await
    }

    fn env(&self, app: &Path, sdk: &Path) -> Vec<(String, String)> {
        let mut env = self.env.clone();
        env.push(("IGNITE_APP_DIR".into(), app.to_string_lossy().into_owned()));
        env.push(("IGNITE_SDK_DIR".into(), sdk.to_string_lossy().into_owned()));
        env
    }

    /// The running template for these settings (started first if there is none), and what
    /// starting it took.
    async fn template(
        &self,
        sandbox: &Sandbox,
        tree: &Path,
        settings: StartSettings,
    ) -> Result<(Arc<Template>, Duration), StartError> {
        let key = TemplateKey {
            version: self.version.clone(),
            egress: settings.egress,
            memory_mb: settings.memory_mb,
        };
        let limits = settings.limits();
        self.templates
            .get(&key, || self.start_template(sandbox, tree, &limits))
            .await
    }

    async fn start_template(
        &self,
        sandbox: &Sandbox,
        tree: &Path,
        limits: &Limits,
    ) -> Result<Template, StartError> {
        let mut binds = self.runtime.binds.clone();
        binds.push(Bind {
            source: self.runtime.sdk_dir.clone(),
            target: SDK_DIR.into(),
        });
        binds.push(Bind {
            source: tree.to_path_buf(),
            target: APP_DIR.into(),
        });
        let argv = self.runtime.argv(Path::new(SDK_DIR), "template");
        let env = self.env(Path::new(APP_DIR), Path::new(SDK_DIR));
        let spec = TemplateSpec {
            program: &self.runtime.interpreter,
            argv: &argv,
            env: &env,
            binds: &binds,
        };
        sandbox
            .start_template(&spec, limits, TEMPLATE_READY)
            .await
            .map_err(|e| StartError {
                message: format!("the app's Python template did not start: {}", e.message),
                logs: e.logs,
            })
    }
}

impl Launcher for PythonLauncher {
    fn prepare(&self, settings: StartSettings) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let Some(sandbox) = &self.sandbox else {
                return;
            };
            let tree = match self.tree().await {
                Ok(tree) => tree,
                Err(e) => {
                    tracing::warn!(version = self.version, "could not prepare the app: {e}");
                    return;
                }
            };
            if let Err(e) = self.template(sandbox, &tree, settings).await {
                tracing::warn!(
                    version = self.version,
                    "could not start the app's template: {e}"
                );
            }
        })
    }

    fn start(&self, settings: StartSettings) -> BoxFuture<'_, Started> {
        Box::pin(async move {
            let t0 = Instant::now();
            let tree = self.tree().await?;
            let fetch = t0.elapsed();
            let Some(sandbox) = &self.sandbox else {
                // Unconfined: a fresh interpreter per instance.
                let mut config = SpawnConfig::new(&self.runtime.interpreter);
                config.args = self.runtime.argv(&self.runtime.sdk_dir, "serve");
                config.env = self.env(&tree, &self.runtime.sdk_dir);
                let instance = ignite_agent::Instance::spawn(&config).await?;
                let cold = ColdStart {
                    fetch,
                    spawn: instance.spawn_duration(),
                    init: instance.init_duration(),
                    template: Duration::ZERO,
                    kind: StartKind::Exec,
                    ..ColdStart::default()
                };
                return Ok((Arc::new(instance) as Arc<dyn Instance>, cold));
            };
            let (template, template_took) = self.template(sandbox, &tree, settings).await?;
            let limits = settings.limits();
            let forked_at = Instant::now();
            let spawned = template.fork(&limits).await.map_err(|e| StartError {
                message: format!("could not fork the app's Python template: {e}"),
                logs: template.logs(),
            })?;
            let config = SpawnConfig::new(&self.runtime.interpreter);
            let instance = ignite_agent::Instance::adopt(spawned, forked_at, &config).await?;
            let cold = ColdStart {
                fetch,
                template: template_took,
                spawn: instance.spawn_duration(),
                init: instance.init_duration(),
                kind: StartKind::Fork,
                ..ColdStart::default()
            };
            Ok((Arc::new(instance) as Arc<dyn Instance>, cold))
        })
    }
}
