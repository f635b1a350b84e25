//! Shared by the end-to-end tests: compiles real handler projects with real cargo, through the
//! builder, into one cargo target directory so that tokio and serde are compiled once per run.

#![allow(dead_code)]

pub mod fleet;
pub mod images;
pub mod platform;
pub mod postgres;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ignite_agent::{Instance, Invocation, Reply, SpawnConfig};
use ignite_builder::{BuildOptions, Sdk};

/// The `[dependencies]` every SDK test handler shares (one feature set: one build of each crate).
pub const HANDLER_DEPS: &str = r#"
ignite = "*"
serde = { version = "1", features = ["derive"] }
serde_json = "1.0"
tokio = { version = "1.0", features = ["rt-multi-thread", "macros", "time"] }
"#;

/// Where every test's handler builds go.
pub fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("handlers")
}

pub fn workspace_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Writes a project (`files` relative to its root) into a fresh directory and returns it.
pub fn write_project(name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("projects")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    for (path, text) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
    }
    dir
}

/// A handler library crate named `name` with the shared dependencies and this `src/lib.rs`.
pub fn sdk_project(name: &str, lib_rs: &str) -> PathBuf {
    let manifest = format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]{HANDLER_DEPS}"
    );
    write_project(name, &[("Cargo.toml", &manifest), ("src/lib.rs", lib_rs)])
}

/// A plain binary crate (no SDK) with this `src/main.rs`.
pub fn plain_project(name: &str, main_rs: &str) -> PathBuf {
    let manifest =
        format!("[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n");
    write_project(name, &[("Cargo.toml", &manifest), ("src/main.rs", main_rs)])
}

/// Builds a project; on failure prints cargo's log and panics.
pub async fn build(
    dir: &Path,
) -> Result<ignite_builder::Artifact, (ignite_builder::BuildError, Vec<String>)> {
    let project =
        ignite_builder::prepare(dir, ignite_builder::Target::Native).map_err(|e| (e, vec![]))?;
    let options = BuildOptions::new(Sdk::bundled(), target_dir(), Duration::from_secs(1200));
    let mut log = Vec::new();
    match ignite_builder::build(&project, &options, |line| log.push(line.to_string())).await {
        Ok(artifact) => Ok(artifact),
        Err(e) => Err((e, log)),
    }
}

pub async fn build_ok(dir: &Path) -> PathBuf {
    match build(dir).await {
        Ok(artifact) => artifact.path,
        Err((e, log)) => panic!("building {} failed: {e}\n{}", dir.display(), log.join("\n")),
    }
}

pub async fn spawn(binary: &Path) -> Instance {
    match Instance::spawn(&SpawnConfig::new(binary)).await {
        Ok(instance) => instance,
        Err(e) => panic!("{} did not start: {e}", binary.display()),
    }
}

/// A POST of `body` to `/` with a 20-second deadline.
pub fn invocation(body: &str) -> Invocation {
    Invocation {
        execution_id: ulid::Ulid::new().to_string(),
        function_id: "acme-corp/test".into(),
        deadline: Some(Instant::now() + Duration::from_secs(20)),
        request: ignite_agent::HttpRequest::json_post(body.as_bytes().to_vec()),
        ..Invocation::default()
    }
}

/// The response body of a reply as JSON; panics with the whole reply otherwise.
pub fn json_body(reply: &Reply) -> serde_json::Value {
    match &reply.outcome {
        ignite_agent::Outcome::Response {
            status: 200, body, ..
        } => serde_json::from_slice(body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body))),
        other => panic!(
            "expected a 200 response, got {other:?}; logs: {:?}",
            reply.logs
        ),
    }
}

/// Whether a process with this pid still exists (and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}
