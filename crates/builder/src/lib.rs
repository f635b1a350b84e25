//! The builder: the only crate that runs `cargo`.
//!
//! [`prepare`] turns a user's saved source (a `Cargo.toml` with `src/lib.rs` or `src/main.rs`)
//! into a project cargo can build on its own: it becomes its own workspace, and a library crate
//! gets a binary entry that calls the hidden `__ignite_main` the `#[ignite::main]` macro emits.
//! [`build`] then runs `cargo build --release` for a static, stripped musl binary, with the
//! user's `ignite = "*"` patched to the platform's own SDK, streaming cargo's output line by line
//! to the caller under a time budget.
//!
//! The user's source is edited only in the copy the builder was handed; this crate never writes
//! anywhere but that directory and the target directory it is given.

pub mod archive;
pub mod oci;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use toml_edit::{ArrayOfTables, DocumentMut, Item, Table, value};

/// The target every native handler is built for: a static musl binary starts faster than a
/// static glibc one (no CPUID-heavy start-up) and is smaller.
pub const NATIVE_TARGET: &str = "x86_64-unknown-linux-musl";

/// The file, inside the project, that holds the binary entry of a library crate.
const ENTRY_FILE: &str = ".ignite/main.rs";

/// Why a build could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(
        "no Cargo.toml in the saved source; point --code at the directory that holds Cargo.toml \
         and src/"
    )]
    NoManifest,
    #[error("Cargo.toml is not valid TOML: {0}")]
    BadManifest(String),
    #[error("Cargo.toml has no [package] name; add `[package] name = \"…\"`")]
    NoPackageName,
    #[error(
        "the source has neither src/lib.rs nor src/main.rs; put the #[ignite::main] handler in \
         src/lib.rs"
    )]
    NoEntry,
    #[error("could not run cargo: {0}")]
    Spawn(std::io::Error),
    #[error("I/O error in the build directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the compile failed (cargo {status}); the compile logs show rustc's messages")]
    Failed { status: String },
    #[error(
        "the compile timed out: it ran past its {0:?} budget and was stopped; trim dependencies and \
         check the compile logs for where it stalled"
    )]
    TimedOut(Duration),
    #[error("cargo finished but produced no binary for package `{0}`")]
    NoBinary(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A user's project, made ready for [`build`].
#[derive(Debug, Clone)]
pub struct Project {
    pub dir: PathBuf,
    /// The `[package] name`.
    pub package: String,
    /// The name of the binary cargo will produce.
    pub bin: String,
}

/// Where the platform's SDK crates live on disk (`ignite`, `ignite-macros`, `ignite-protocol`).
#[derive(Debug, Clone)]
pub struct Sdk {
    /// The directory that holds `sdk/`, `sdk-macros/` and `protocol/`.
    pub crates_dir: PathBuf,
}

impl Sdk {
    /// The SDK sources of the tree this binary was built from.
    pub fn bundled() -> Sdk {
        Sdk {
            crates_dir: Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        }
    }
}

impl Sdk {
    /// A digest of the SDK's sources: part of the build cache key, so that a changed SDK never
    /// serves a binary built with the old one.
    pub fn fingerprint(&self) -> std::io::Result<String> {
        fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
            for entry in std::fs::read_dir(dir)? {
                let path = entry?.path();
                if path.is_dir() {
                    walk(&path, files)?;
                } else {
                    files.push(path);
                }
            }
            Ok(())
        }
        let mut files = Vec::new();
        for krate in ["sdk", "sdk-macros", "protocol"] {
            let root = self.crates_dir.join(krate);
            files.push(root.join("Cargo.toml"));
            walk(&root.join("src"), &mut files)?;
        }
        files.sort();
        let mut hash = Sha256::new();
        for file in files {
            hash.update(
                file.strip_prefix(&self.crates_dir)
                    .unwrap_or(&file)
                    .to_string_lossy()
                    .as_bytes(),
            );
            hash.update(std::fs::read(&file)?);
        }
        Ok(format!("{:x}", hash.finalize()))
    }
}

/// How to run a build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub sdk: Sdk,
    /// Cargo's target directory; kept between builds so a rebuild compiles only what changed.
    pub target_dir: PathBuf,
    /// A rustup toolchain (`cargo +<toolchain>`); `None` for the default one.
    pub toolchain: Option<String>,
    /// The build's time budget.
    pub timeout: Duration,
}

/// A built handler binary.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub path: PathBuf,
    pub size: u64,
    /// `sha256:<hex>`.
    pub digest: String,
    pub target: String,
}

/// Makes `dir` buildable on its own: its own workspace, and a binary entry for a library crate.
pub fn prepare(dir: &Path) -> Result<Project, BuildError> {
    let manifest_path = dir.join("Cargo.toml");
    let text = match std::fs::read_to_string(&manifest_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(BuildError::NoManifest),
        Err(e) => return Err(io_err(&manifest_path)(e)),
    };
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| BuildError::BadManifest(e.to_string()))?;
    let package = doc
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(Item::as_str)
        .ok_or(BuildError::NoPackageName)?
        .to_string();

    // The user's project is a workspace of its own, wherever the builder put it.
    if !doc.contains_key("workspace") {
        doc.insert("workspace", Item::Table(Table::new()));
    }

    let has_main = dir.join("src/main.rs").is_file();
    let has_lib = dir.join("src/lib.rs").is_file();
    if !has_main && has_lib {
        let lib_name = doc
            .get("lib")
            .and_then(|l| l.get("name"))
            .and_then(Item::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| package.replace('-', "_"));
        let entry = dir.join(ENTRY_FILE);
        if let Some(parent) = entry.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        std::fs::write(
            &entry,
            format!(
                "// Written by the Ignite builder: the process entry of a library handler.\n\
                 fn main() {{\n    {lib_name}::__ignite_main()\n}}\n"
            ),
        )
        .map_err(io_err(&entry))?;
        let mut bin = Table::new();
        bin.insert("name", value(package.as_str()));
        bin.insert("path", value(ENTRY_FILE));
        let mut bins = ArrayOfTables::new();
        bins.push(bin);
        doc.insert("bin", Item::ArrayOfTables(bins));
    } else if !has_main {
        return Err(BuildError::NoEntry);
    }
    std::fs::write(&manifest_path, doc.to_string()).map_err(io_err(&manifest_path))?;
    Ok(Project {
        dir: dir.to_path_buf(),
        bin: package.clone(),
        package,
    })
}

/// Compiles a prepared project, sending cargo's output to `log` line by line.
pub async fn build(
    project: &Project,
    options: &BuildOptions,
    mut log: impl FnMut(&str),
) -> Result<Artifact, BuildError> {
    let sdk_path = options.sdk.crates_dir.join("sdk");
    let mut cmd = Command::new("cargo");
    if let Some(toolchain) = &options.toolchain {
        cmd.arg(format!("+{toolchain}"));
    }
    cmd.arg("build")
        .arg("--release")
        .args(["--target", NATIVE_TARGET])
        .arg("--manifest-path")
        .arg(project.dir.join("Cargo.toml"))
        .args(["--bin", &project.bin])
        .args([
            "--message-format",
            "json-render-diagnostics",
            "--color",
            "never",
        ])
        .arg("--config")
        .arg(format!(
            "patch.crates-io.ignite.path={}",
            toml_string(&sdk_path.to_string_lossy())
        ))
        // Small, fast-starting binaries; panics unwind so the SDK can turn one into a failed
        // execution instead of a dead process.
        .args(["--config", "profile.release.strip=true"])
        .args(["--config", "profile.release.panic=\"unwind\""])
        .args(["--config", "profile.release.debug=false"])
        .env("CARGO_TARGET_DIR", &options.target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .current_dir(&project.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(BuildError::Spawn)?;
    let pid = child.id();
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        unreachable!("stdout and stderr were requested as pipes");
    };
    let mut stdout = BufReader::new(stdout).lines();
    let mut stderr = BufReader::new(stderr).lines();
    let mut executable = None;

    let run = async {
        let (mut out_open, mut err_open) = (true, true);
        while out_open || err_open {
            tokio::select! {
                line = stdout.next_line(), if out_open => match line {
                    Ok(Some(line)) => {
                        if let Some(path) = artifact_path(&line, &project.bin) {
                            executable = Some(path);
                        }
                    }
                    _ => out_open = false,
                },
                line = stderr.next_line(), if err_open => match line {
                    Ok(Some(line)) => log(&line),
                    _ => err_open = false,
                },
            }
        }
        child.wait().await
    };
    let status = match tokio::time::timeout(options.timeout, run).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => return Err(BuildError::Spawn(e)),
        Err(_) => {
            kill_group(pid);
            return Err(BuildError::TimedOut(options.timeout));
        }
    };
    if !status.success() {
        return Err(BuildError::Failed {
            status: status.to_string(),
        });
    }
    let path = executable.ok_or_else(|| BuildError::NoBinary(project.package.clone()))?;
    let bytes = tokio::fs::read(&path).await.map_err(io_err(&path))?;
    Ok(Artifact {
        size: bytes.len() as u64,
        digest: format!("sha256:{:x}", Sha256::digest(&bytes)),
        path,
        target: NATIVE_TARGET.to_string(),
    })
}

/// Kills cargo and every rustc, build script and linker it started (they share its group).
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) has no memory-safety preconditions; a negative pid names the process
        // group that cargo leads (it was spawned with process_group(0)).
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

/// The executable path from one line of cargo's JSON messages, if the line reports `bin`.
fn artifact_path(line: &str, bin: &str) -> Option<PathBuf> {
    #[derive(serde::Deserialize)]
    struct Message {
        reason: String,
        target: Option<Target>,
        executable: Option<PathBuf>,
    }
    #[derive(serde::Deserialize)]
    struct Target {
        name: String,
    }
    let msg: Message = serde_json::from_str(line).ok()?;
    (msg.reason == "compiler-artifact" && msg.target?.name == bin)
        .then_some(msg.executable)
        .flatten()
}

fn toml_string(s: &str) -> String {
    toml_edit::Value::from(s).to_string()
}
