//! Compile jobs: one per `draft compile` (or publish of a runtime that builds on publish), a
//! row in the store's `builds` that one replica claims and runs in the background — the one
//! that accepted it at once, or any other when that one stopped under it (its lease ran out).
//! The log is kept in memory while the build runs (for `compile-logs --follow` here) and
//! stored every half second (for the same through another replica) and at the end.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ignite_builder::{BuildError, BuildOptions, JailOptions, Sdk, Target};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::State;
use crate::store::{self, Built, Version};

/// Upload cap for unpacked source.
pub const SOURCE_CAP: u64 = 64 * 1024 * 1024;

#[derive(Default)]
pub struct Builds {
    live: Mutex<HashMap<String, Arc<LiveBuild>>>,
}

#[derive(Default)]
pub struct LiveBuild {
    pub lines: Mutex<Vec<String>>,
    /// `(status, error)` once finished.
    pub done: Mutex<Option<(String, Option<String>)>>,
    pub changed: Notify,
}

impl LiveBuild {
    pub(crate) fn push(&self, line: String) {
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(line);
        self.changed.notify_waiters();
    }
}

impl Builds {
    pub fn live(&self, id: &str) -> Option<Arc<LiveBuild>> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }
}

/// Waits for build `id` to end (at once if it is not running). A build another replica runs is
/// followed in the store.
pub async fn wait(state: &State, id: &str) {
    let Some(live) = state.builds.live(id) else {
        loop {
            match store::get_build(&state.db, id).await {
                Ok(Some(build)) if build.status == "running" => {}
                Ok(_) => return,
                Err(e) => tracing::warn!("reading build {id}: {e}"),
            }
            tokio::time::sleep(STORE_POLL).await;
        }
    };
    loop {
        let notified = live.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if live
            .done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            return;
        }
        notified.await;
    }
}

/// How often a build another replica runs is read from the store (by `wait` and by
/// `compile-logs --follow` through a replica that does not run it).
pub const STORE_POLL: Duration = Duration::from_millis(250);
/// How often a replica looks for builds whose replica stopped under them.
const ORPHAN_POLL: Duration = Duration::from_secs(1);

/// Starts compiling the draft; returns the build id. The build is a job in the store, claimed
/// by this replica as it is made, and started here at once.
pub async fn start(
    state: Arc<State>,
    org: &str,
    app: &str,
    draft: &Version,
) -> sqlx::Result<String> {
    let id = ulid::Ulid::new().to_string();
    let claim = store::insert_build(&state.db, &id, org, app, draft, &state.replica).await?;
    run_claimed(state, claim, None);
    Ok(id)
}

/// Claims, every [`ORPHAN_POLL`], a build whose lease ran out (its replica stopped), and runs
/// it again here; until `shutdown`.
pub fn poll_orphans(state: Arc<State>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(ORPHAN_POLL) => {}
            }
            match store::claim_orphan_build(&state.db, &state.replica).await {
                Ok(Some(claim)) => {
                    let note = format!(
                        "attempt {}: the server that ran this build stopped during it; \
                         building again on replica {}",
                        claim.attempt, state.replica
                    );
                    tracing::info!("build {}: {note}", claim.id);
                    run_claimed(state.clone(), claim, Some(note));
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("looking for interrupted builds: {e}"),
            }
        }
    });
}

/// Runs a build this replica claimed: its live log here, its lease renewed and its log stored
/// every [`store::LEASE_RENEW_MS`], its end recorded only if the claim is still this
/// replica's. A lost claim (this replica was too slow to renew, and another took the build)
/// stops the build.
fn run_claimed(state: Arc<State>, claim: store::BuildClaim, note: Option<String>) {
    let live = Arc::new(LiveBuild::default());
    if let Some(note) = note {
        live.push(note);
    }
    state
        .builds
        .live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(claim.id.clone(), live.clone());
    tokio::spawn(async move {
        let (org, app, build_id) = (&claim.org, &claim.app, &claim.id);
        let compiled = compile(&state, org, app, &claim.draft, build_id, &live);
        let lease = keep_lease(&state, &claim, &live);
        let result = tokio::select! {
            result = compiled => Some(result),
            () = lease => None,
        };
        let Some(result) = result else {
            tracing::warn!("build {build_id}: another replica claimed it; stopped here");
            forget(&state, build_id, &live, "running", None);
            return;
        };
        let (status, error) = match &result {
            Ok(_) => ("succeeded", None),
            Err(BuildError::TimedOut(_)) => {
                ("timed_out", result.as_ref().err().map(|e| e.to_string()))
            }
            Err(BuildError::OutOfMemory { .. }) => {
                ("oom", result.as_ref().err().map(|e| e.to_string()))
            }
            Err(BuildError::DiskFull { .. }) => {
                ("disk_full", result.as_ref().err().map(|e| e.to_string()))
            }
            Err(e) => ("failed", Some(e.to_string())),
        };
        if let Some(error) = &error {
            live.push(format!("error: {error}"));
        }
        let log = live
            .lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n");
        let built = result.as_ref().ok().map(|a| Built {
            digest: &a.digest,
            size: a.size as i64,
            target: &a.target,
        });
        let recorded = store::finish_build(
            &state.db,
            &claim,
            &state.replica,
            status,
            error.as_deref(),
            &log,
            built,
        )
        .await;
        match recorded {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                "build {build_id}: another replica claimed it before it ended here; its result \
                 here is dropped"
            ),
            Err(e) => tracing::error!("recording build {build_id}: {e}"),
        }
        forget(&state, build_id, &live, status, error);
    });
}

/// Renews the claim's lease (storing the log when it grew) until the claim is lost; never
/// returns while it holds. A failed write is retried: the lease outlasts a few.
async fn keep_lease(state: &State, claim: &store::BuildClaim, live: &LiveBuild) {
    let mut stored = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(store::LEASE_RENEW_MS)).await;
        let (count, log) = {
            let lines = live.lines.lock().unwrap_or_else(|p| p.into_inner());
            (
                lines.len(),
                (lines.len() != stored).then(|| lines.join("\n")),
            )
        };
        match store::renew_build(&state.db, claim, &state.replica, log.as_deref()).await {
            Ok(true) => stored = count,
            Ok(false) => return,
            Err(e) => tracing::warn!("renewing the lease of build {}: {e}", claim.id),
        }
    }
}

/// The build ended here (or stopped): whoever follows its live log is told, and it is no
/// longer live.
fn forget(state: &State, build_id: &str, live: &LiveBuild, status: &str, error: Option<String>) {
    *live.done.lock().unwrap_or_else(|p| p.into_inner()) = Some((status.to_string(), error));
    live.changed.notify_waiters();
    state
        .builds
        .live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(build_id);
}

async fn compile(
    state: &Arc<State>,
    org: &str,
    app: &str,
    draft: &Version,
    build_id: &str,
    live: &LiveBuild,
) -> Result<ignite_builder::Artifact, BuildError> {
    let io = |path: &PathBuf| {
        let path = path.clone();
        move |source| BuildError::Io { path, source }
    };
    let app_dir = state.config.data_dir.join("builds").join(org).join(app);
    if draft.runtime == "image" {
        std::fs::create_dir_all(&app_dir).map_err(io(&app_dir))?;
        return crate::images::compile(state, org, draft, build_id, live, &app_dir).await;
    }
    let src = app_dir.join("src");
    fresh_dir(&src).map_err(io(&src))?;
    let digest = draft.source_digest.clone().unwrap_or_default();
    // Another replica may have taken the save.
    let source = state.blobs.ensure(&digest).await.map_err(blobs_error)?;
    let bytes = std::fs::read(&source).map_err(io(&src))?;
    if draft.source_kind.as_deref() == Some("file") {
        for (name, content) in single_file_project(&draft.runtime, app, &bytes) {
            let path = src.join(name);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io(&src))?;
            }
            std::fs::write(&path, content).map_err(io(&src))?;
        }
    } else {
        ignite_builder::archive::unpack(&bytes, &src, SOURCE_CAP).map_err(|e| BuildError::Io {
            path: src.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
    }
    match draft.runtime.as_str() {
        "python" => {
            return compile_python(state, org, app, draft, build_id, live, &app_dir, &src).await;
        }
        "go" => return compile_go(state, org, app, draft, build_id, live, &app_dir, &src).await,
        "deno" => {
            return compile_deno(state, org, app, draft, build_id, live, &app_dir, &src).await;
        }
        _ => {}
    }
    // An identical earlier build (same source, target, toolchain, app name and SDK) made the
    // very same binary: reuse it instead of running cargo.
    let key = cache_key(state, app, draft);
    if let Some(key) = &key
        && let Ok(Some((digest, size, target))) = store::cached_build(&state.db, key).await
        && let Some(blob) = cached_blob(state, &digest).await
    {
        live.push(format!(
            "reusing {digest} from an identical earlier build (same source, target, toolchain and SDK)"
        ));
        state
            .blobs
            .layout()
            .add_handler(&blob, &target, &format!("{org}/{app}:{build_id}"))
            .map_err(io(&blob))?;
        state
            .blobs
            .publish_artifact(&digest, &target)
            .await
            .map_err(blobs_error)?;
        return Ok(ignite_builder::Artifact {
            path: blob,
            size: size as u64,
            digest,
            target,
        });
    }
    let target = match draft.rust_target.as_deref() {
        Some("wasm") => Target::Wasm,
        _ => Target::Native,
    };
    live.push(format!("compiling {org}:{app} for {}", target.triple()));
    let project = ignite_builder::prepare(&src, target)?;
    // The operator's shared target directory is shared within an org, never across orgs: the
    // jail mounts only the org's part of it, so a build script sees no other tenant's output.
    let target_dir = match &state.config.shared_target_dir {
        Some(shared) => {
            live.push(format!(
                "note: this build shares its target directory with {org}'s other apps (the \
                 server's --build-target-dir)"
            ));
            shared.join(org)
        }
        None => app_dir.join("target"),
    };
    let mut options = BuildOptions::new(Sdk::bundled(), target_dir, state.config.build_timeout);
    options.toolchain = draft.toolchain.clone();
    let (jail, mut cgroup) = jail(state, build_id, state.registry_proxy.as_ref())?;
    options.jail = jail;
    let built = ignite_builder::build(&project, &options, |line| live.push(line.to_string())).await;
    let artifact = match built {
        Ok(a) => a,
        Err(e) => {
            let allocation_failed = || {
                live.lines
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .any(|l| l.contains("memory allocation of") && l.contains("failed"))
            };
            if cgroup.as_mut().is_some_and(|c| c.oom_killed())
                || (matches!(e, BuildError::Failed { .. }) && allocation_failed())
            {
                return Err(BuildError::OutOfMemory {
                    limit_mb: state.config.build_memory_mb,
                });
            }
            return Err(e);
        }
    };
    drop(cgroup);
    if target == Target::Wasm {
        precompile(state, &artifact, live).await?;
    }
    // Store the binary as an OCI artifact; the version records the binary's digest.
    let reference = format!("{org}/{app}:{build_id}");
    let stored = state
        .blobs
        .layout()
        .add_handler(&artifact.path, &artifact.target, &reference)
        .map_err(io(&artifact.path))?;
    let blob = state.blobs.layout().blob_path(&stored.binary.digest);
    // Every node runs it: a build succeeds once the registry has it.
    state
        .blobs
        .publish(&stored.binary.digest, &stored.binary.media_type)
        .await
        .map_err(blobs_error)?;
    live.push(format!(
        "built {} ({} bytes, {}); artifact manifest {}",
        artifact.digest, artifact.size, artifact.target, stored.manifest.digest
    ));
    remember(
        state,
        key.as_deref(),
        &artifact.digest,
        artifact.size,
        &artifact.target,
    )
    .await;
    Ok(ignite_builder::Artifact {
        path: blob,
        ..artifact
    })
}

/// The build jail for build `id` (with the sandbox): its options, and the cgroup that holds
/// its memory limit (removed when dropped). `proxy` is the fetch's only way out.
pub(crate) fn jail(
    state: &State,
    id: &str,
    proxy: Option<&ignite_builder::RegistryProxy>,
) -> Result<(Option<JailOptions>, Option<ignite_sandbox::BuildCgroup>), BuildError> {
    let Some(sandbox) = &state.sandbox else {
        return Ok((None, None));
    };
    let jail_error = |source| BuildError::Io {
        path: state.config.data_dir.join("sandbox"),
        source,
    };
    let cgroup = sandbox
        .build_cgroup(id, state.config.build_memory_mb)
        .map_err(jail_error)?;
    let options = JailOptions {
        helper: std::env::current_exe().map_err(jail_error)?,
        root: sandbox.build_root().map_err(jail_error)?,
        uid: sandbox.build_uid(),
        cgroups: cgroup.as_ref().map_or_else(Vec::new, |c| c.procs()),
        tmp_mb: 1024,
        max_disk_bytes: state.config.build_disk_mb << 20,
        // Without a memory cgroup, an address-space limit per process is the backstop
        // (virtual, so looser than the memory limit: rustc reserves more than it touches).
        max_address_space: if cgroup.is_some() {
            0
        } else {
            (state.config.build_memory_mb << 20).max(4 << 30)
        },
        fetch_proxy: proxy.map(|p| p.path().to_path_buf()),
    };
    Ok((Some(options), cgroup))
}

/// Builds a Python draft (unpacked in `src`): its requirements installed with pip (in the
/// jail, the package index its only network), byte-compiled, its import checked, and the tree
/// stored as an OCI artifact. An identical earlier build is reused.
#[allow(clippy::too_many_arguments)]
async fn compile_python(
    state: &Arc<State>,
    org: &str,
    app: &str,
    draft: &Version,
    build_id: &str,
    live: &LiveBuild,
    app_dir: &std::path::Path,
    src: &std::path::Path,
) -> Result<ignite_builder::Artifact, BuildError> {
    let Some(python) = &state.python else {
        return Err(BuildError::Io {
            path: state.config.python.clone(),
            source: std::io::Error::other(format!(
                "this server cannot build Python apps: {}",
                state.python_problem.as_deref().unwrap_or("no interpreter")
            )),
        });
    };
    let io = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| BuildError::Io { path, source }
    };
    let key = cache_key(state, app, draft).map(|k| format!("{k}:python{}", python.version));
    if let Some(artifact) = reuse(
        state,
        key.as_deref(),
        live,
        "same source, interpreter and SDK",
    )
    .await
    {
        return Ok(artifact);
    }
    live.push(format!(
        "building {org}:{app} for Python {} ({})",
        python.version,
        python.interpreter.display()
    ));
    let out = app_dir.join("python");
    fresh_dir(&out).map_err(io(&out))?;
    let mut options = BuildOptions::new(
        Sdk::bundled(),
        app_dir.join("target"),
        state.config.build_timeout,
    );
    let (jail, mut cgroup) = jail(state, build_id, state.python_proxy.as_ref())?;
    options.jail = jail;
    let build = ignite_builder::python::PythonBuild {
        source: src,
        out: &out,
        interpreter: &python.interpreter,
        sdk_dir: &python.sdk_dir,
    };
    let built =
        ignite_builder::python::build(&build, &options, |line| live.push(line.to_string())).await;
    let built = built.map_err(|e| out_of_memory_or(state, cgroup.as_mut(), e))?;
    drop(cgroup);
    let target = format!("python{}", built.python_version);
    let reference = format!("{org}/{app}:{build_id}");
    let stored = state
        .blobs
        .layout()
        .add_python_app(&built.tar, &built.python_version, &reference)
        .map_err(io(&built.tar))?;
    let manifest = stored.manifest.digest;
    finish(
        state,
        key.as_deref(),
        live,
        &out,
        built.digest,
        built.size,
        target,
        None,
        &manifest,
    )
    .await
}

/// Builds a Deno draft (unpacked in `src`): its imports fetched with `deno install` (in the
/// jail, JSR, npm and deno.land its only network), type-checked, its default export checked and
/// Deno's caches warmed by the instance's own command line, and the tree stored as an OCI
/// artifact. An identical earlier build is reused.
#[allow(clippy::too_many_arguments)]
async fn compile_deno(
    state: &Arc<State>,
    org: &str,
    app: &str,
    draft: &Version,
    build_id: &str,
    live: &LiveBuild,
    app_dir: &std::path::Path,
    src: &std::path::Path,
) -> Result<ignite_builder::Artifact, BuildError> {
    let Some(deno) = &state.deno else {
        return Err(BuildError::Deno(format!(
            "this server cannot build Deno apps: {}",
            state.deno_problem.as_deref().unwrap_or("no Deno binary")
        )));
    };
    let io = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| BuildError::Io { path, source }
    };
    // The SDK is copied into the tree: its sources are part of the key.
    let sdk = ignite_builder::deno::sdk_fingerprint(&deno.sdk_dir).unwrap_or_default();
    let key = cache_key(state, app, draft).map(|k| format!("{k}:deno{}:{sdk}", deno.version));
    if let Some(artifact) = reuse(state, key.as_deref(), live, "same source, Deno and SDK").await {
        return Ok(artifact);
    }
    live.push(format!("building {org}:{app} for Deno {}", deno.version));
    let out = app_dir.join("deno");
    fresh_dir(&out).map_err(io(&out))?;
    let mut options = BuildOptions::new(
        Sdk::bundled(),
        app_dir.join("target"),
        state.config.build_timeout,
    );
    let (jail, mut cgroup) = jail(state, build_id, state.deno_proxy.as_ref())?;
    options.jail = jail;
    let build = ignite_builder::deno::DenoBuild {
        source: src,
        out: &out,
        deno: &deno.binary,
        sdk_dir: &deno.sdk_dir,
    };
    let built =
        ignite_builder::deno::build(&build, &options, |line| live.push(line.to_string())).await;
    let built = built.map_err(|e| out_of_memory_or(state, cgroup.as_mut(), e))?;
    drop(cgroup);
    let target = format!("deno{}", built.deno_version);
    let reference = format!("{org}/{app}:{build_id}");
    let stored = state
        .blobs
        .layout()
        .add_deno_app(&built.tar, &built.deno_version, &reference)
        .map_err(io(&built.tar))?;
    let manifest = stored.manifest.digest;
    finish(
        state,
        key.as_deref(),
        live,
        &out,
        built.digest,
        built.size,
        target,
        None,
        &manifest,
    )
    .await
}

/// Builds a Go draft (unpacked in `src`) into one static binary, run like a native Rust
/// handler: the SDK injected by a `replace` directive, module downloads (if any) jailed with
/// the Go module proxy as their only network, `go build` jailed offline. An identical earlier
/// build is reused.
#[allow(clippy::too_many_arguments)]
async fn compile_go(
    state: &Arc<State>,
    org: &str,
    app: &str,
    draft: &Version,
    build_id: &str,
    live: &LiveBuild,
    app_dir: &std::path::Path,
    src: &std::path::Path,
) -> Result<ignite_builder::Artifact, BuildError> {
    let io = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| BuildError::Io { path, source }
    };
    let go = state.config.go.clone();
    let key = cache_key(state, app, draft).map(|k| format!("{k}:go:{}", go.display()));
    if let Some(artifact) = reuse(
        state,
        key.as_deref(),
        live,
        "same source, toolchain and SDK",
    )
    .await
    {
        return Ok(artifact);
    }
    live.push(format!("building {org}:{app} with {}", go.display()));
    let out = app_dir.join("go");
    fresh_dir(&out).map_err(io(&out))?;
    // Go's build and module caches, like cargo's target directory: per org when the operator
    // shares one, else per app.
    let cache = match &state.config.shared_target_dir {
        Some(shared) => shared.join(org).join("go"),
        None => app_dir.join("go-cache"),
    };
    let mut options = BuildOptions::new(Sdk::bundled(), cache, state.config.build_timeout);
    let (jail, mut cgroup) = jail(state, build_id, state.go_proxy.as_ref())?;
    options.jail = jail;
    let sdk = crate::go_sdk_dir();
    let build = ignite_builder::go::GoBuild {
        source: src,
        out: &out,
        go: &go,
        sdk_dir: &sdk,
    };
    let built =
        ignite_builder::go::build(&build, &options, |line| live.push(line.to_string())).await;
    let built = built.map_err(|e| out_of_memory_or(state, cgroup.as_mut(), e))?;
    drop(cgroup);
    let target = format!("linux-amd64-{}", built.go_version);
    let reference = format!("{org}/{app}:{build_id}");
    let stored = state
        .blobs
        .layout()
        .add_handler(&built.path, &target, &reference)
        .map_err(io(&built.path))?;
    let manifest = stored.manifest.digest;
    finish(
        state,
        key.as_deref(),
        live,
        &out,
        built.digest,
        built.size,
        target,
        Some("static"),
        &manifest,
    )
    .await
}

/// The project a single-file upload stands for: the file under the name its runtime looks
/// for, and the manifest the runtime needs beside it.
fn single_file_project(runtime: &str, app: &str, bytes: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    match runtime {
        "python" => vec![("main.py", bytes.to_vec())],
        "deno" => vec![("main.ts", bytes.to_vec())],
        "go" => vec![
            ("main.go", bytes.to_vec()),
            ("go.mod", format!("module {app}\n\ngo 1.19\n").into_bytes()),
        ],
        _ => vec![
            ("src/lib.rs", bytes.to_vec()),
            (
                "Cargo.toml",
                format!(
                    "[package]\nname = \"{app}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
                     [dependencies]\nignite = \"*\"\nserde = {{ version = \"1\", features = [\"derive\"] }}\n\
                     serde_json = \"1.0\"\ntokio = {{ version = \"1.0\", features = [\"rt-multi-thread\", \"macros\"] }}\n"
                )
                .into_bytes(),
            ),
        ],
    }
}

/// The end of a build whose artifact is stored in the layout (`manifest`, its manifest's
/// digest): said in the log (with what `kind` of artifact it is, if worth saying), recorded in
/// the build cache under `key`, and the build's scratch output (`out`, and a tar packed beside
/// it) removed.
#[allow(clippy::too_many_arguments)]
async fn finish(
    state: &State,
    key: Option<&str>,
    live: &LiveBuild,
    out: &std::path::Path,
    digest: String,
    size: u64,
    target: String,
    kind: Option<&str>,
    manifest: &str,
) -> Result<ignite_builder::Artifact, BuildError> {
    // Every node runs it: a build succeeds once the registry has it.
    state
        .blobs
        .publish_artifact(&digest, &target)
        .await
        .map_err(blobs_error)?;
    let kind = kind.map(|k| format!("{k}, ")).unwrap_or_default();
    live.push(format!(
        "built {digest} ({size} bytes, {kind}{target}); artifact manifest {manifest}"
    ));
    remember(state, key, &digest, size, &target).await;
    let _ = std::fs::remove_dir_all(out);
    let _ = std::fs::remove_file(ignite_builder::python::tar_path(out));
    Ok(ignite_builder::Artifact {
        path: state.blobs.layout().blob_path(&digest),
        size,
        digest,
        target,
    })
}

/// An identical earlier build's artifact (`key` found in the build cache, its blob still in
/// the layout), said in the log with `same` (what made it identical).
async fn reuse(
    state: &State,
    key: Option<&str>,
    live: &LiveBuild,
    same: &str,
) -> Option<ignite_builder::Artifact> {
    let (digest, size, target) = store::cached_build(&state.db, key?).await.ok()??;
    let path = cached_blob(state, &digest).await?;
    if let Err(e) = state.blobs.publish_artifact(&digest, &target).await {
        live.push(format!("not reusing {digest}: {e}"));
        return None;
    }
    live.push(format!(
        "reusing {digest} from an identical earlier build ({same})"
    ));
    Some(ignite_builder::Artifact {
        path,
        size: size as u64,
        digest,
        target,
    })
}

/// The blob of a cached build, fetched from the platform registry if another replica built
/// it; `None` (and so a rebuild) when it is nowhere to be had.
async fn cached_blob(state: &State, digest: &str) -> Option<PathBuf> {
    match state.blobs.ensure(digest).await {
        Ok(path) => Some(path),
        Err(e) => {
            tracing::debug!("the build cache's {digest} is gone, rebuilding: {e}");
            None
        }
    }
}

pub(crate) fn blobs_error(e: crate::blobs::BlobError) -> BuildError {
    BuildError::Blobs(e.to_string())
}

/// Records a build in the build cache under `key` (a failure only costs a rebuild later).
async fn remember(state: &State, key: Option<&str>, digest: &str, size: u64, target: &str) {
    let Some(key) = key else {
        return;
    };
    let record = Built {
        digest,
        size: size as i64,
        target,
    };
    if let Err(e) = store::cache_build(&state.db, key, &record).await {
        tracing::warn!("could not record the build in the cache: {e}");
    }
}

/// A failed build is out of memory when its cgroup's memory controller killed part of it.
pub(crate) fn out_of_memory_or(
    state: &State,
    cgroup: Option<&mut ignite_sandbox::BuildCgroup>,
    e: BuildError,
) -> BuildError {
    if cgroup.is_some_and(|c| c.oom_killed()) {
        tracing::debug!("the build failed after an oom kill: {e}");
        return BuildError::OutOfMemory {
            limit_mb: state.config.build_memory_mb,
        };
    }
    e
}

/// An empty directory at `path` (whatever was there is removed).
pub(crate) fn fresh_dir(path: &std::path::Path) -> std::io::Result<()> {
    let _ = std::fs::remove_dir_all(path);
    std::fs::create_dir_all(path)
}

/// Checks a built component against the host (a component, exporting the wasi:http handler,
/// importing only what the host provides) and stores its machine code, so the first request
/// deserializes instead of compiling.
async fn precompile(
    state: &Arc<State>,
    artifact: &ignite_builder::Artifact,
    live: &LiveBuild,
) -> Result<(), BuildError> {
    let Some(_) = &state.wasm else {
        return Err(BuildError::Component(
            "this server could not start Wasmtime (see its log)".into(),
        ));
    };
    let bytes = tokio::fs::read(&artifact.path)
        .await
        .map_err(|source| BuildError::Io {
            path: artifact.path.clone(),
            source,
        })?;
    let (state2, digest) = (state.clone(), artifact.digest.clone());
    let started = std::time::Instant::now();
    tokio::task::spawn_blocking(move || {
        state2
            .wasm
            .as_ref()
            .map(|host| host.precompile(&digest, &bytes))
    })
    .await
    .map_err(|e| BuildError::Component(e.to_string()))?
    .transpose()
    .map_err(|e| BuildError::Component(e.to_string()))?;
    live.push(format!(
        "precompiled the component for this node's Wasmtime in {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    ));
    Ok(())
}

/// The build cache key of a draft, when the SDK's fingerprint is known.
fn cache_key(state: &State, app: &str, draft: &Version) -> Option<String> {
    let sdk = state.sdk_fingerprint.as_deref()?;
    let parts = [
        draft.source_digest.as_deref().unwrap_or(""),
        draft.source_kind.as_deref().unwrap_or(""),
        draft.rust_target.as_deref().unwrap_or(""),
        draft.toolchain.as_deref().unwrap_or("default"),
        // A single file gets a Cargo.toml named after the app.
        if draft.source_kind.as_deref() == Some("file") {
            app
        } else {
            ""
        },
        sdk,
    ];
    Some(format!(
        "{:x}",
        <sha2::Sha256 as sha2::Digest>::digest(parts.join("\n"))
    ))
}
