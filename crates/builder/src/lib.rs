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
pub mod deno;
pub mod git;
pub mod go;
pub mod image;
pub mod oci;
mod proxy;
pub mod python;
mod sources;

pub use proxy::{CRATES_IO, DENO, GO_PROXY, LoopbackProxy, PYPI, RegistryProxy};
pub use sources::{check_sources, remove_cargo_configs};

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ignite_sandbox::jail::{JailBind, JailNetwork, JailSpec};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use toml_edit::{ArrayOfTables, DocumentMut, Item, Table, value};

/// The target every native handler is built for: a static musl binary starts faster than a
/// static glibc one (no CPUID-heavy start-up) and is smaller.
pub const NATIVE_TARGET: &str = "x86_64-unknown-linux-musl";
/// The target of `--rust-target wasm`: a `wasi:http/proxy` component.
pub const WASM_TARGET: &str = "wasm32-wasip2";

/// What a draft is compiled into (`--rust-target`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A static musl binary the agent runs as a process.
    Native,
    /// A wasm32-wasip2 component exporting `wasi:http/incoming-handler`, run under Wasmtime.
    Wasm,
}

impl Target {
    /// From the draft's `--rust-target` (`native` or `wasm`).
    pub fn from_flag(flag: &str) -> Option<Target> {
        match flag {
            "native" => Some(Target::Native),
            "wasm" => Some(Target::Wasm),
            _ => None,
        }
    }

    /// The rustc target triple.
    pub fn triple(self) -> &'static str {
        match self {
            Target::Native => NATIVE_TARGET,
            Target::Wasm => WASM_TARGET,
        }
    }
}

/// Whether `toolchain` (the default one when `None`) has the standard library of `target`; a
/// compile for a target without it fails deep in rustc ("can't find crate for `std`"), so the
/// server says so at start and at `draft save` instead.
pub async fn has_target(toolchain: Option<&str>, target: Target) -> Result<bool, BuildError> {
    Ok(missing_targets(toolchain, &[target]).await?.is_empty())
}

/// Which of `targets` `toolchain` (the default one when `None`) lacks, resolving it once.
pub async fn missing_targets(
    toolchain: Option<&str>,
    targets: &[Target],
) -> Result<Vec<Target>, BuildError> {
    let tools = Toolchain::resolve(toolchain).await?;
    Ok(targets
        .iter()
        .copied()
        .filter(|t| !sysroot_has(&tools.dir, *t))
        .collect())
}

fn sysroot_has(sysroot: &Path, target: Target) -> bool {
    sysroot
        .join("lib/rustlib")
        .join(target.triple())
        .join("lib")
        .is_dir()
}

/// The command that adds `target` to `toolchain` (the default one when `None`).
pub fn add_target_command(toolchain: Option<&str>, target: Target) -> String {
    match toolchain {
        Some(t) => format!("rustup target add {} --toolchain {t}", target.triple()),
        None => format!("rustup target add {}", target.triple()),
    }
}

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
    #[error(
        "--rust-target wasm builds a library: put the #[ignite::main] handler in src/lib.rs \
         (a component exports the handler; it has no main)"
    )]
    WasmNeedsLib,
    #[error("could not run cargo: {0}")]
    Spawn(std::io::Error),
    /// The component was built but cannot run on this platform (checked after the compile).
    #[error("the compiled component cannot run: {0}")]
    Component(String),
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
    #[error(
        "the compile was stopped: it wrote more than its {limit_mb} MiB disk budget (a build \
         script or proc macro writing without end?)"
    )]
    DiskFull { limit_mb: u64 },
    #[error(
        "{manifest}: `{key}` is a git dependency: git dependencies are not supported (the \
         compile has no network); depend on a crates.io release, or copy the crate into the \
         project and use a path dependency"
    )]
    GitDependency { manifest: String, key: String },
    #[error(
        "{manifest}: dependency `{key}` names another registry: only crates.io dependencies \
         (and path dependencies inside the project) are fetched; depend on the crates.io \
         release, or copy the crate into the project and use a path dependency"
    )]
    OtherRegistry { manifest: String, key: String },
    #[error(
        "{manifest}: `{key}` is {path:?}, outside the project: every path in a manifest must \
         be relative and stay inside the uploaded directory (no `..` past its top); copy the \
         crate into the project (say, to vendor/<crate>) and point the path there"
    )]
    PathOutside {
        /// The manifest, relative to the project.
        manifest: String,
        /// The dotted key that holds the path (`workspace.dependencies.x.path`).
        key: String,
        path: String,
    },
    #[error(
        "{0} uses `cargo-features` (unstable Cargo features): they are not supported; remove \
         the `cargo-features` line"
    )]
    UnstableFeatures(String),
    #[error("{manifest} is not valid TOML: {reason}; fix it, or leave it out of the upload")]
    InvalidManifest { manifest: String, reason: String },
    #[error(
        "{0} is a symbolic link: the source may hold only files and directories; replace the \
         link with a copy of what it points to"
    )]
    Symlink(String),
    #[error("cannot find the toolchain: {0}")]
    Toolchain(String),
    #[error(
        "the compile ran out of memory: it was killed at its {limit_mb} MiB limit; trim \
         dependencies or features (the operator sets the limit with --build-memory-mb)"
    )]
    OutOfMemory { limit_mb: u64 },
    #[error(
        "a Python app needs main.py at the top of --code (a directory with main.py and an \
         optional requirements.txt, or a single .py file)"
    )]
    NoPythonMain,
    #[error(
        "{path} is a symbolic link to {target}, outside the app: every file of the upload must \
         be inside it; replace the link with a copy of what it points to (and leave virtual \
         environments such as .venv out of the upload: requirements.txt is installed by the \
         platform)"
    )]
    LinkOutside { path: String, target: String },
    #[error("{0} is a symbolic link to a directory that holds it (a loop); remove the link")]
    LinkLoop(String),
    #[error("{path} is larger than {limit_mb} MiB, the most a file of the upload may be")]
    FileTooLarge { path: String, limit_mb: u64 },
    #[error(
        "the app's source is larger than {limit_mb} MiB; trim the upload (dependencies belong in \
         requirements.txt, not in the upload)"
    )]
    SourceTooLarge { limit_mb: u64 },
    #[error("cannot use the Python interpreter: {0}")]
    Interpreter(String),
    #[error("the platform's Python SDK is missing: {0} is not there")]
    PythonSdk(PathBuf),
    #[error(
        "installing requirements.txt failed (pip {status}){}; the build logs show pip's \
         messages",
        last.as_deref().map(|l| format!(": {l}")).unwrap_or_default()
    )]
    PipFailed {
        status: String,
        /// pip's last line on stderr (its `ERROR: …`).
        last: Option<String>,
    },
    #[error("importing main.py failed: {0}; the build log has the whole of its output")]
    ImportFailed(String),
    #[error(
        "{0}: an app may hold only files and directories, and the install left something else \
         there (a link, a socket or a pipe)"
    )]
    AppTree(String),
    #[error("a Go app needs go.mod at the top of --code: run `go mod init example.com/app` in it")]
    NoGoMod,
    #[error(
        "a Go app needs its main package at the top of --code, next to go.mod: there is no .go \
         file there (put main.go, with `package main` and func main() {{ ignite.Main(handler) }}, \
         beside go.mod)"
    )]
    NoGoFiles,
    #[error(
        "the .go files at the top of --code are package {0}, not package main: a Go app is a \
         main package whose func main() calls ignite.Main(handler)"
    )]
    NotMainPackage(String),
    #[error("cannot use the Go toolchain: {0}")]
    GoToolchain(String),
    #[error("the platform's Go SDK is missing: {0} is not there")]
    GoSdk(PathBuf),
    #[error("go.mod cannot be used: {0}")]
    GoMod(String),
    #[error(
        "go.mod replaces {module} with {path}, a directory outside the app: the build sees only \
         the upload; copy the module into it (and point the replace at ./that/dir), or vendor it \
         (`go mod vendor`)"
    )]
    GoReplaceOutside { module: String, path: String },
    #[error(
        "{path} is a symbolic link to {target}, outside the app: every file of the upload must \
         be inside it; replace the link with a copy of what it points to (a module of your own \
         elsewhere: vendor it with `go mod vendor`)"
    )]
    GoLinkOutside { path: String, target: String },
    #[error(
        "downloading the modules go.mod requires failed (go mod download {status}){}; vendor \
         them (`go mod vendor`, and upload vendor/) or see the build log",
        last.as_deref().map(|l| format!(": {l}")).unwrap_or_default()
    )]
    GoFetchFailed {
        status: String,
        /// go's last line on stderr.
        last: Option<String>,
    },
    #[error(
        "the Go build failed (go build {status}){}; the build log has the compiler's messages",
        first.as_deref().map(|l| format!(": {l}")).unwrap_or_default()
    )]
    GoBuildFailed {
        status: String,
        /// The first error go build reported (`./main.go:8:2: undefined: x`).
        first: Option<String>,
    },
    #[error("the Go build made a binary that is not static: {0}")]
    NotStatic(String),
    #[error(
        "a Deno app needs main.ts (or main.js) at the top of --code, with \
         `export default main(async (req, ctx) => ...)` (a directory with main.ts and an \
         optional deno.json, or a single .ts file)"
    )]
    NoDenoMain,
    #[error("the platform's Deno SDK is missing: {0} is not there")]
    DenoSdk(PathBuf),
    #[error("cannot use the Deno binary: {0}")]
    Deno(String),
    /// An image could not be pulled, imported or unpacked (the message says why and what to
    /// do).
    #[error("{0}")]
    Image(String),
    /// A blob could not be fetched from or published to the platform registry (the message
    /// says which blob, which registry and why).
    #[error("{0}")]
    Blobs(String),
    #[error("the app's Deno config: {0}")]
    DenoConfig(String),
    #[error("{step} failed: {message}\n(the build log has Deno's whole output)")]
    DenoFailed { step: String, message: String },
    #[error(
        "the Dockerfile {0} is outside the build context: --dockerfile-path's directory is the \
         context, and the Dockerfile must be inside it (no `..`, no link leading out)"
    )]
    DockerfileOutside(String),
    #[error("there is no Dockerfile at {0} in the build context")]
    NoDockerfile(String),
    #[error(
        "the build context is larger than {limit_mb} MiB; leave what the image does not need \
         out with a .dockerignore, or trim the directory"
    )]
    ContextTooLarge { limit_mb: u64 },
    #[error(
        "`FROM {image}` names no registry: write the registry's host (say, \
         `FROM registry.example.com/{image}`); the build may pull base images only from \
         {allowed}"
    )]
    BareImageName { image: String, allowed: String },
    #[error(
        "the build may pull base images only from {allowed}; {image} is from another registry \
         (the operator chooses the registries a build may pull from)"
    )]
    RegistryNotAllowed { image: String, allowed: String },
    #[error("the image build failed ({step} {status}); buildah's last lines:\n{last}")]
    ImageFailed {
        step: String,
        status: String,
        /// buildah's last lines (the failing RUN's output, say).
        last: String,
    },
    #[error("{0}")]
    GitUrl(String),
    #[error(
        "the git reference {0:?} is not a branch, tag or commit name (no leading `-`, no \
         spaces or `:`, `..`, `^`, `~`, `?`, `*`, `[`, `\\`)"
    )]
    GitRef(String),
    #[error(
        "the build may clone only from {allowed}; {host} is not among them (the operator \
         allows git hosts)"
    )]
    GitHostNotAllowed { host: String, allowed: String },
    #[error("{step} failed (git {status}){}", last.as_deref().map(|l| format!(": {l}")).unwrap_or_default())]
    GitFailed {
        step: String,
        status: String,
        /// git's last line on stderr, credentials redacted.
        last: Option<String>,
    },
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
    /// The name of the cargo target that becomes the artifact (the binary, or the library for
    /// wasm).
    pub bin: String,
    pub target: Target,
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
    /// Run the compile in the build jail; `None` runs cargo unconfined (trusted code only).
    pub jail: Option<JailOptions>,
    /// The most compile-log bytes passed on; the rest is counted in a closing line.
    pub max_log_bytes: usize,
}

impl BuildOptions {
    pub fn new(sdk: Sdk, target_dir: PathBuf, timeout: Duration) -> BuildOptions {
        BuildOptions {
            sdk,
            target_dir,
            toolchain: None,
            timeout,
            jail: None,
            max_log_bytes: 4 << 20,
        }
    }
}

/// The build jail (see `ignite_sandbox::jail`): dependencies are fetched first, in a jail of
/// their own (the project, the toolchain, the SDK and the registry cache in sight, the registry
/// as the only network through `fetch_proxy`) and without running any of the user's code; then
/// cargo runs offline in the jail, as `uid`, seeing its source, its target directory, the
/// toolchain, the SDK and a read-only registry cache. Both run as `<helper> ignite __jail`.
#[derive(Debug, Clone)]
pub struct JailOptions {
    /// The program that runs a jail spec: invoked as `<helper> ignite __jail <spec>`.
    pub helper: PathBuf,
    /// An empty directory to mount the jail's root on.
    pub root: PathBuf,
    pub uid: u32,
    /// `cgroup.procs` files the compile joins (its memory limit lives there).
    pub cgroups: Vec<PathBuf>,
    pub tmp_mb: u64,
    /// How much the target directory may grow during one compile (and the largest file).
    pub max_disk_bytes: u64,
    /// RLIMIT_AS per process, 0 for none (where no memory cgroup holds the compile).
    pub max_address_space: u64,
    /// The [`RegistryProxy`]'s socket: the dependency fetch then runs in a network namespace
    /// whose only way out is that proxy. `None` fetches with the server's network.
    pub fetch_proxy: Option<PathBuf>,
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

/// Makes `dir` buildable on its own: its own workspace, and a binary entry for a library crate
/// (or, for wasm, a library built as a component).
pub fn prepare(dir: &Path, target: Target) -> Result<Project, BuildError> {
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
    if target == Target::Wasm {
        if !has_lib {
            return Err(if has_main {
                BuildError::WasmNeedsLib
            } else {
                BuildError::NoEntry
            });
        }
        let lib_name = lib_name(&doc, &package);
        let lib = doc
            .entry("lib")
            .or_insert(Item::Table(Table::new()))
            .as_table_like_mut()
            .ok_or_else(|| BuildError::BadManifest("[lib] is not a table".into()))?;
        let mut types = toml_edit::Array::new();
        types.push("cdylib");
        lib.insert("crate-type", value(types));
        std::fs::write(&manifest_path, doc.to_string()).map_err(io_err(&manifest_path))?;
        return Ok(Project {
            dir: dir.to_path_buf(),
            bin: lib_name,
            package,
            target,
        });
    }
    if !has_main && has_lib {
        let lib_name = lib_name(&doc, &package);
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
        target,
    })
}

/// The library's crate name: `[lib] name`, else the package's with `-` as `_`.
fn lib_name(doc: &DocumentMut, package: &str) -> String {
    doc.get("lib")
        .and_then(|l| l.get("name"))
        .and_then(Item::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| package.replace('-', "_"))
}

/// Compiles a prepared project, sending cargo's output to `log` line by line.
pub async fn build(
    project: &Project,
    options: &BuildOptions,
    log: impl FnMut(&str),
) -> Result<Artifact, BuildError> {
    let deadline = tokio::time::Instant::now() + options.timeout;
    let mut log = LogCap::new(options.max_log_bytes, log);
    let result = match admit(project, &mut log) {
        Err(e) => Err(e),
        Ok(()) => match &options.jail {
            None => build_unconfined(project, options, deadline, &mut log).await,
            Some(jail) => build_jailed(project, options, jail, deadline, &mut log).await,
        },
    };
    log.finish();
    let path = result?.ok_or_else(|| BuildError::NoBinary(project.package.clone()))?;
    let bytes = tokio::fs::read(&path).await.map_err(io_err(&path))?;
    Ok(Artifact {
        size: bytes.len() as u64,
        digest: format!("sha256:{:x}", Sha256::digest(&bytes)),
        path,
        target: project.target.triple().to_string(),
    })
}

/// What runs before cargo, jailed or not: the tree's `.cargo` directories are removed (the
/// platform alone configures cargo; see [`remove_cargo_configs`]) and its manifests checked
/// (see [`check_sources`]).
fn admit(project: &Project, log: &mut LogCap<impl FnMut(&str)>) -> Result<(), BuildError> {
    for removed in remove_cargo_configs(&project.dir)? {
        log.line(&format!(
            "note: removed the project's {removed} (cargo's configuration comes from the \
             platform; settings there, such as a rustc wrapper, rustflags or [env], are not used)"
        ));
    }
    check_sources(&project.dir)
}

/// Passes log lines on until `limit` bytes, then counts what it drops.
struct LogCap<F: FnMut(&str)> {
    sink: F,
    limit: usize,
    passed: usize,
    dropped: u64,
}

impl<F: FnMut(&str)> LogCap<F> {
    fn new(limit: usize, sink: F) -> Self {
        LogCap {
            sink,
            limit,
            passed: 0,
            dropped: 0,
        }
    }

    fn line(&mut self, line: &str) {
        if self.passed + line.len() < self.limit {
            self.passed += line.len() + 1;
            (self.sink)(line);
        } else {
            self.dropped += line.len() as u64 + 1;
        }
    }

    fn finish(&mut self) {
        if self.dropped > 0 {
            let note = format!(
                "[compile log truncated: {} more bytes dropped past the {} MiB limit]",
                self.dropped,
                self.limit >> 20
            );
            (self.sink)(&note);
        }
    }
}

/// The `--config` value that makes the user's `ignite = "*"` resolve to our SDK.
fn sdk_patch(sdk: &Sdk) -> String {
    format!(
        "patch.crates-io.ignite.path={}",
        toml_string(&sdk.crates_dir.join("sdk").to_string_lossy())
    )
}

/// cargo's arguments for the build itself.
fn build_args(project: &Project, sdk: &Sdk) -> Vec<String> {
    let (kind, panic) = match project.target {
        Target::Native => ("--bin", "unwind"),
        // A component has no unwinder: a panic traps, and the instance is per request anyway.
        Target::Wasm => ("--lib", "abort"),
    };
    let mut args: Vec<String> = vec![
        "build".into(),
        "--release".into(),
        "--target".into(),
        project.target.triple().into(),
        "--manifest-path".into(),
        project
            .dir
            .join("Cargo.toml")
            .to_string_lossy()
            .into_owned(),
        kind.into(),
    ];
    if project.target == Target::Native {
        args.push(project.bin.clone());
    }
    args.extend([
        "--message-format".into(),
        "json-render-diagnostics".into(),
        "--color".into(),
        "never".into(),
        "--config".into(),
        sdk_patch(sdk),
        // Small, fast-starting binaries; native panics unwind so the SDK can turn one into a
        // failed execution instead of a dead process.
        "--config".into(),
        "profile.release.strip=true".into(),
        "--config".into(),
        format!("profile.release.panic=\"{panic}\""),
        "--config".into(),
        "profile.release.debug=false".into(),
    ]);
    if project.target == Target::Wasm {
        // tokio's documented switch for its WASI support, so a handler's tokio dependency
        // (`rt-multi-thread`, say, as in the recipe) builds unchanged; only the handler's
        // crates get it, not build scripts.
        args.extend([
            "--config".into(),
            "target.wasm32-wasip2.rustflags=[\"--cfg\", \"tokio_unstable\"]".into(),
        ]);
    }
    args
}

async fn build_unconfined(
    project: &Project,
    options: &BuildOptions,
    deadline: tokio::time::Instant,
    log: &mut LogCap<impl FnMut(&str)>,
) -> Result<Option<PathBuf>, BuildError> {
    let mut cmd = Command::new("cargo");
    if let Some(toolchain) = &options.toolchain {
        cmd.arg(format!("+{toolchain}"));
    }
    cmd.args(build_args(project, &options.sdk))
        .env("CARGO_TARGET_DIR", &options.target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .current_dir(&project.dir);
    run_cargo(cmd, project, options.timeout, deadline, None, log).await
}

/// The toolchain's own binaries (not rustup's proxies, which need rustup's state).
struct Toolchain {
    cargo: PathBuf,
    rustc: PathBuf,
    dir: PathBuf,
}

impl Toolchain {
    async fn resolve(name: Option<&str>) -> Result<Toolchain, BuildError> {
        let mut which = Command::new("rustup");
        which.args(["which", "cargo"]);
        if let Some(name) = name {
            which.args(["--toolchain", name]);
        }
        let out = which
            .output()
            .await
            .map_err(|e| BuildError::Toolchain(format!("rustup: {e}")))?;
        if !out.status.success() {
            return Err(BuildError::Toolchain(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        let cargo = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let bin = cargo
            .parent()
            .ok_or_else(|| BuildError::Toolchain(format!("odd cargo path {}", cargo.display())))?;
        let dir = bin.parent().unwrap_or(bin).to_path_buf();
        Ok(Toolchain {
            rustc: bin.join("rustc"),
            cargo,
            dir,
        })
    }
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

async fn build_jailed(
    project: &Project,
    options: &BuildOptions,
    jail: &JailOptions,
    deadline: tokio::time::Instant,
    log: &mut LogCap<impl FnMut(&str)>,
) -> Result<Option<PathBuf>, BuildError> {
    let tools = Toolchain::resolve(options.toolchain.as_deref()).await?;
    let home = cargo_home();
    // 1. Dependencies, with the registry as the only network, in a mount view of the project.
    fetch_with(project, options, &tools, deadline, log).await?;
    // 2. The compile, offline, in the jail, as the build user, on a copy of the index entries
    //    the fetch left (see `snapshot_index`).
    let snapshot = || {
        let (home, dir, timeout) = (home.clone(), project.dir.clone(), options.timeout);
        let until = deadline.into_std();
        async move {
            tokio::task::spawn_blocking(move || snapshot_index(&home, &dir, until, timeout))
                .await
                .map_err(|e| BuildError::Spawn(std::io::Error::other(e)))?
        }
    };
    let mut index = snapshot().await?;
    if !index.torn.is_empty() {
        // Left half-written by a cargo killed as it wrote them (another build's timeout, a
        // server killed mid-fetch): removed from the cache, they are fetched again whole.
        log.line(&format!(
            "note: the registry cache held half-written index entries ({}); fetching them again",
            index.torn.join(", ")
        ));
        fetch_with(project, options, &tools, deadline, log).await?;
        index = snapshot().await?;
    }
    std::fs::create_dir_all(&options.target_dir).map_err(io_err(&options.target_dir))?;
    let (dirs, uid) = ([project.dir.clone(), options.target_dir.clone()], jail.uid);
    tokio::task::spawn_blocking(move || {
        for dir in &dirs {
            chown_tree(dir, uid)?;
        }
        Ok::<_, BuildError>(())
    })
    .await
    .map_err(|e| BuildError::Spawn(std::io::Error::other(e)))??;
    let path_env = format!("{}/bin:/usr/local/bin:/usr/bin:/bin", tools.dir.display());
    let mut args = build_args(project, &options.sdk);
    args.push("--offline".into());
    let spec = JailSpec {
        root: jail.root.clone(),
        read_only: vec![
            tools.dir.clone(),
            home.join("registry"),
            options.sdk.crates_dir.clone(),
        ],
        writable: vec![project.dir.clone(), options.target_dir.clone()],
        mapped: vec![JailBind {
            source: index.dir.path().to_path_buf(),
            target: home.join("registry").join("index"),
            writable: false,
        }],
        scratch: vec![home.clone()],
        tmp_mb: jail.tmp_mb,
        uid: jail.uid,
        cgroups: jail.cgroups.clone(),
        max_file_bytes: jail.max_disk_bytes,
        max_processes: 512,
        max_address_space: jail.max_address_space,
        cwd: project.dir.clone(),
        env: [
            ("PATH", path_env.as_str()),
            ("HOME", "/tmp"),
            ("TMPDIR", "/tmp"),
            ("CARGO_NET_OFFLINE", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .chain([
            ("RUSTC".into(), tools.rustc.clone().into()),
            ("CARGO_HOME".into(), home.clone().into()),
            ("CARGO_TARGET_DIR".into(), options.target_dir.clone().into()),
        ])
        .collect(),
        program: tools.cargo.clone(),
        args: args.into_iter().map(Into::into).collect(),
        network: JailNetwork::None,
        user_namespace: None,
        loopback_tunnels: Vec::new(),
    };
    let mut cmd = Command::new(&jail.helper);
    cmd.arg("ignite")
        .arg("__jail")
        .args(spec.to_args())
        .env_clear()
        .current_dir("/");
    let watch = DiskWatch {
        dir: options.target_dir.clone(),
        limit: jail.max_disk_bytes,
    };
    let built = run_cargo(cmd, project, options.timeout, deadline, Some(watch), log).await;
    drop(index);
    built
}

/// A jailed compile's registry index: see [`snapshot_index`].
struct IndexSnapshot {
    dir: tempfile::TempDir,
    /// The packages whose entries were found half-written (and removed from the cache).
    torn: Vec<String>,
}

/// The registry index as a jailed compile reads it: the cache entries of the registry packages
/// the project's `Cargo.lock` names (and each index's `config.json`), copied out of
/// `home`'s shared registry into a directory of their own while holding cargo's package-cache
/// lock, the lock under which cargo writes them.
///
/// The compile cannot take that lock itself: in the jail the registry is read-only and the lock
/// file a private one, because a user's build script could otherwise hold the lock every
/// fetch on the machine waits for. Reading the shared entries unlocked, it raced other
/// builds' fetches: cargo rewrites an entry in place (truncates it, then writes it) when the
/// registry answers anew, and a compile that read one half-written failed with "no matching
/// package named `libc` found". A copy made under the lock is whole — unless the cargo that
/// wrote it was killed part-way (a build's timeout, a server killed during a fetch): such an
/// entry is not copied but removed from the cache, and named in `torn` for the caller to
/// fetch again.
fn snapshot_index(
    home: &Path,
    project: &Path,
    until: std::time::Instant,
    timeout: Duration,
) -> Result<IndexSnapshot, BuildError> {
    use std::os::unix::fs::PermissionsExt;
    let lock_path = project.join("Cargo.lock");
    let names: Vec<String> = match std::fs::read_to_string(&lock_path) {
        Ok(text) => registry_packages(&text),
        // No lock file: nothing to copy, and the compile says what it misses.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io_err(&lock_path)(e)),
    };
    let tmp = std::env::temp_dir();
    let dir = tempfile::Builder::new()
        .prefix("ignite-index-")
        .tempdir_in(&tmp)
        .map_err(io_err(&tmp))?;
    // The build user reads it, through the bind.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .map_err(io_err(dir.path()))?;
    let mut snapshot = IndexSnapshot {
        dir,
        torn: Vec::new(),
    };
    let index = home.join("registry").join("index");
    let indexes = match std::fs::read_dir(&index) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(snapshot),
        Err(e) => return Err(io_err(&index)(e)),
    };
    let lock_file = home.join(".package-cache");
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_file)
        .map_err(io_err(&lock_file))?;
    loop {
        match lock.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(std::fs::TryLockError::WouldBlock) => return Err(BuildError::TimedOut(timeout)),
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&lock_file)(e)),
        }
    }
    for entry in indexes {
        let entry = entry.map_err(io_err(&index))?;
        let (from, to) = (entry.path(), snapshot.dir.path().join(entry.file_name()));
        if !from.is_dir() {
            continue;
        }
        std::fs::create_dir_all(&to).map_err(io_err(&to))?;
        let config = from.join("config.json");
        if config.is_file() {
            std::fs::copy(&config, to.join("config.json")).map_err(io_err(&config))?;
        }
        for name in &names {
            let file = Path::new(".cache").join(index_path(name));
            let src = from.join(&file);
            let text = match std::fs::read(&src) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&src)(e)),
            };
            if !is_whole_cache_entry(&text) {
                // Holding the lock, as cargo does when it changes an entry.
                std::fs::remove_file(&src).map_err(io_err(&src))?;
                snapshot.torn.push(name.clone());
                continue;
            }
            let dst = to.join(&file);
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
            std::fs::write(&dst, &text).map_err(io_err(&dst))?;
        }
    }
    drop(lock);
    Ok(snapshot)
}

/// Whether `text` is a whole entry of cargo's index cache: a version byte, the index format's
/// version (a little-endian u32), the registry's version of the entry ending in NUL, then pairs
/// of a crate version and its JSON line, each ending in NUL. A write cut short ends within a
/// pair.
fn is_whole_cache_entry(text: &[u8]) -> bool {
    let Some(rest) = text.get(5..) else {
        return false;
    };
    let Some(header) = rest.iter().position(|&b| b == 0) else {
        return false;
    };
    let pairs = &rest[header + 1..];
    pairs.last().is_none_or(|&b| b == 0) && pairs.iter().filter(|&&b| b == 0).count() % 2 == 0
}

/// The names of the registry packages a `Cargo.lock` holds (not path or git ones), lowercase.
fn registry_packages(lock: &str) -> Vec<String> {
    let Ok(doc) = lock.parse::<DocumentMut>() else {
        return Vec::new();
    };
    let Some(packages) = doc.get("package").and_then(Item::as_array_of_tables) else {
        return Vec::new();
    };
    let mut names: Vec<String> = packages
        .iter()
        .filter(|p| {
            p.get("source")
                .and_then(Item::as_str)
                .is_some_and(|s| s.starts_with("registry+") || s.starts_with("sparse+"))
        })
        .filter_map(|p| p.get("name").and_then(Item::as_str))
        .filter(|name| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
        .map(str::to_ascii_lowercase)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Where cargo keeps a package's index entry, under an index's `.cache` (the index's own
/// layout: `1/a`, `2/ab`, `3/a/abc`, `ab/cd/abcd…`).
fn index_path(name: &str) -> PathBuf {
    match name.len() {
        1 => Path::new("1").join(name),
        2 => Path::new("2").join(name),
        3 => Path::new("3").join(&name[..1]).join(name),
        _ => Path::new(&name[..2]).join(&name[2..4]).join(name),
    }
}

/// Step 1 of a jailed build on its own: resolves the project's dependencies and downloads them
/// into the registry cache, sending cargo's output to `log`. With a jail in `options`, cargo
/// runs in a mount view that holds only the project, the toolchain, the SDK (read-only) and the
/// registry cache (writable: the downloads go there), with the registry as its only network
/// (`fetch_proxy`), or the host's network when there is no proxy; its configuration is the
/// platform's alone (a `CARGO_HOME` with no `config.toml`, a fixed environment).
///
/// This does not check the sources: [`build`] runs [`check_sources`] first, for its messages;
/// this is the confinement that holds when a route escapes the check.
pub async fn fetch(
    project: &Project,
    options: &BuildOptions,
    log: impl FnMut(&str),
) -> Result<(), BuildError> {
    let deadline = tokio::time::Instant::now() + options.timeout;
    let mut log = LogCap::new(options.max_log_bytes, log);
    let result = async {
        let tools = Toolchain::resolve(options.toolchain.as_deref()).await?;
        fetch_with(project, options, &tools, deadline, &mut log).await
    }
    .await;
    log.finish();
    result
}

async fn fetch_with(
    project: &Project,
    options: &BuildOptions,
    tools: &Toolchain,
    deadline: tokio::time::Instant,
    log: &mut LogCap<impl FnMut(&str)>,
) -> Result<(), BuildError> {
    let home = cargo_home();
    let args = fetch_args(project, &options.sdk);
    let cmd = match &options.jail {
        None => {
            let mut c = Command::new(&tools.cargo);
            c.args(&args)
                .env("RUSTC", &tools.rustc)
                .env("CARGO_HOME", &home)
                .current_dir(&project.dir);
            c
        }
        Some(jail) => {
            let spec = fetch_spec(project, options, jail, tools, &home, args)?;
            let mut c = Command::new(&jail.helper);
            c.arg("ignite")
                .arg("__jail")
                .args(spec.to_args())
                .env_clear()
                .current_dir("/");
            c
        }
    };
    // No code of the user's runs here: fetch resolves and downloads, it does not build.
    run_cargo(cmd, project, options.timeout, deadline, None, log)
        .await
        .map(drop)
        .map_err(|e| match e {
            BuildError::Failed { status } => BuildError::Failed {
                status: format!("fetching dependencies: {status}"),
            },
            other => other,
        })
}

/// `cargo fetch`'s arguments.
fn fetch_args(project: &Project, sdk: &Sdk) -> Vec<OsString> {
    let mut args: Vec<OsString> = ["fetch", "--color", "never", "--target"]
        .into_iter()
        .map(Into::into)
        .collect();
    args.push(project.target.triple().into());
    args.push("--manifest-path".into());
    args.push(project.dir.join("Cargo.toml").into());
    args.push("--config".into());
    args.push(sdk_patch(sdk).into());
    args
}

/// The dependency fetch's jail: the compile's mount view without the target directory, and
/// with the registry cache writable (downloads, and the lock files cargo takes on the cache:
/// the very files concurrent fetches lock), the TLS roots and, on the host's network, the
/// resolver's files. It runs as the caller (the cache is the caller's) without any capability, and
/// with no process limit (the caller's uid has its own processes on the host).
fn fetch_spec(
    project: &Project,
    options: &BuildOptions,
    jail: &JailOptions,
    tools: &Toolchain,
    home: &Path,
    args: Vec<OsString>,
) -> Result<JailSpec, BuildError> {
    let registry = home.join("registry");
    std::fs::create_dir_all(&registry).map_err(io_err(&registry))?;
    let mut writable = vec![project.dir.clone(), registry];
    for lock in [".package-cache", ".package-cache-mutate"] {
        let path = home.join(lock);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        writable.push(path);
    }
    let mut etc = vec!["/etc/ssl", "/etc/pki", "/etc/ca-certificates"];
    let network = match &jail.fetch_proxy {
        Some(proxy) => JailNetwork::Proxy(proxy.clone()),
        None => {
            etc.extend([
                "/etc/resolv.conf",
                "/etc/hosts",
                "/etc/nsswitch.conf",
                "/etc/host.conf",
                "/etc/gai.conf",
            ]);
            JailNetwork::Host
        }
    };
    let mut read_only = vec![tools.dir.clone(), options.sdk.crates_dir.clone()];
    read_only.extend(etc.into_iter().map(PathBuf::from).filter(|p| p.exists()));
    let path_env = format!("{}/bin:/usr/local/bin:/usr/bin:/bin", tools.dir.display());
    Ok(JailSpec {
        root: jail.root.clone(),
        read_only,
        writable,
        mapped: Vec::new(),
        scratch: vec![home.to_path_buf()],
        tmp_mb: jail.tmp_mb,
        uid: caller_uid(),
        cgroups: jail.cgroups.clone(),
        max_file_bytes: jail.max_disk_bytes,
        max_processes: 0,
        max_address_space: jail.max_address_space,
        cwd: project.dir.clone(),
        env: vec![
            ("PATH".into(), path_env.into()),
            ("HOME".into(), "/tmp".into()),
            ("TMPDIR".into(), "/tmp".into()),
            ("RUSTC".into(), tools.rustc.clone().into()),
            ("CARGO_HOME".into(), home.into()),
        ],
        program: tools.cargo.clone(),
        args,
        network,
        user_namespace: None,
        loopback_tunnels: Vec::new(),
    })
}

fn caller_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Hands a tree to `uid` (only what is not already its). Another compile sharing the target
/// directory may remove files meanwhile (cargo's temporaries): what vanished needs nothing.
fn chown_tree(dir: &Path, uid: u32) -> Result<(), BuildError> {
    use std::os::unix::fs::MetadataExt;
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if gone(&e) => return Ok(()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    if meta.uid() != uid || meta.gid() != uid {
        match std::os::unix::fs::lchown(dir, Some(uid), Some(uid)) {
            Err(e) if !gone(&e) => return Err(io_err(dir)(e)),
            _ => {}
        }
    }
    if meta.is_dir() {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if gone(&e) => return Ok(()),
            Err(e) => return Err(io_err(dir)(e)),
        };
        for entry in entries {
            match entry {
                Ok(entry) => chown_tree(&entry.path(), uid)?,
                Err(e) if gone(&e) => {}
                Err(e) => return Err(io_err(dir)(e)),
            }
        }
    }
    Ok(())
}

/// Kills the compile when its target directory grows past a budget.
struct DiskWatch {
    dir: PathBuf,
    limit: u64,
}

fn tree_size(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => tree_size(&e.path()),
            // Allocated blocks, so sparse files count for what they hold.
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// Runs a cargo command (the fetch or the build): logs its stderr, finds the binary in its JSON
/// messages, enforces the deadline (and the disk budget, when watched). Returns the binary's
/// path, if the command built one.
async fn run_cargo(
    cmd: Command,
    project: &Project,
    budget: Duration,
    deadline: tokio::time::Instant,
    watch: Option<DiskWatch>,
    log: &mut LogCap<impl FnMut(&str)>,
) -> Result<Option<PathBuf>, BuildError> {
    let mut executable = None;
    let finished = run_logged(cmd, budget, deadline, watch, log, |line| {
        if let Some(path) = artifact_path(line, &project.bin) {
            executable = Some(path);
        }
        // cargo's stdout is its JSON messages; the rendered diagnostics come on stderr.
        false
    })
    .await?;
    if !finished.status.success() {
        return Err(BuildError::Failed {
            status: finished.status.to_string(),
        });
    }
    Ok(executable)
}

/// How a command run by [`run_logged`] ended.
struct Finished {
    status: std::process::ExitStatus,
    /// The last non-blank line it wrote on stderr (a traceback's last line, say).
    last_stderr: Option<String>,
}

/// Runs a build command (cargo, pip, python): passes its stderr, and each stdout line that
/// `stdout_line` says to keep, to `log`; enforces the deadline (and the disk budget, when
/// watched), killing the command's whole process group past either. A command that exits
/// unsuccessfully is not an error here (the caller says what failed), except when it wrote past
/// the watched budget (RLIMIT_FSIZE).
async fn run_logged(
    mut cmd: Command,
    budget: Duration,
    deadline: tokio::time::Instant,
    watch: Option<DiskWatch>,
    log: &mut LogCap<impl FnMut(&str)>,
    mut stdout_line: impl FnMut(&str) -> bool,
) -> Result<Finished, BuildError> {
    cmd.stdin(Stdio::null())
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
    let mut file_too_large = false;
    let mut last_stderr = None;
    let baseline = match &watch {
        Some(w) => {
            let dir = w.dir.clone();
            tokio::task::spawn_blocking(move || tree_size(&dir))
                .await
                .unwrap_or(0)
        }
        None => 0,
    };
    let over_disk = async {
        let Some(w) = &watch else {
            return std::future::pending::<u64>().await;
        };
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let dir = w.dir.clone();
            let size = tokio::task::spawn_blocking(move || tree_size(&dir))
                .await
                .unwrap_or(0);
            if size.saturating_sub(baseline) > w.limit {
                return w.limit;
            }
        }
    };
    let run = async {
        let (mut out_open, mut err_open) = (true, true);
        while out_open || err_open {
            tokio::select! {
                line = stdout.next_line(), if out_open => match line {
                    Ok(Some(line)) => {
                        if stdout_line(&line) {
                            log.line(&line);
                        }
                    }
                    _ => out_open = false,
                },
                line = stderr.next_line(), if err_open => match line {
                    Ok(Some(line)) => {
                        // A process of the command passed RLIMIT_FSIZE.
                        if line.contains("SIGXFSZ") {
                            file_too_large = true;
                        }
                        log.line(&line);
                        if !line.trim().is_empty() {
                            last_stderr = Some(line);
                        }
                    }
                    _ => err_open = false,
                },
            }
        }
        child.wait().await
    };
    let status = tokio::select! {
        finished = tokio::time::timeout_at(deadline, run) => match finished {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => return Err(BuildError::Spawn(e)),
            Err(_) => {
                kill_group(pid);
                return Err(BuildError::TimedOut(budget));
            }
        },
        limit = over_disk => {
            kill_group(pid);
            return Err(BuildError::DiskFull { limit_mb: limit >> 20 });
        }
    };
    if !status.success()
        && file_too_large
        && let Some(w) = &watch
    {
        return Err(BuildError::DiskFull {
            limit_mb: w.limit >> 20,
        });
    }
    Ok(Finished {
        status,
        last_stderr,
    })
}

/// Kills cargo and every rustc, build script and linker it started (they share its group).
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        ignite_sandbox::kill_process_group(pid);
    }
}

/// The executable path from one line of cargo's JSON messages, if the line reports `bin`.
fn artifact_path(line: &str, bin: &str) -> Option<PathBuf> {
    #[derive(serde::Deserialize)]
    struct Message {
        reason: String,
        target: Option<CargoTarget>,
        executable: Option<PathBuf>,
        #[serde(default)]
        filenames: Vec<PathBuf>,
    }
    #[derive(serde::Deserialize)]
    struct CargoTarget {
        name: String,
    }
    let msg: Message = serde_json::from_str(line).ok()?;
    if msg.reason != "compiler-artifact" || msg.target?.name != bin {
        return None;
    }
    // A binary names its executable; a component is the library's `.wasm`.
    msg.executable.or_else(|| {
        msg.filenames
            .into_iter()
            .find(|f| f.extension().is_some_and(|e| e == "wasm"))
    })
}

fn toml_string(s: &str) -> String {
    toml_edit::Value::from(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_entries_are_found_where_cargo_keeps_them() {
        assert_eq!(index_path("a"), Path::new("1/a"));
        assert_eq!(index_path("cc"), Path::new("2/cc"));
        assert_eq!(index_path("syn"), Path::new("3/s/syn"));
        assert_eq!(index_path("cfg-if"), Path::new("cf/g-/cfg-if"));
        let lock = "version = 4\n\n[[package]]\nname = \"Inflector\"\nversion = \"0.11.4\"\n\
                    source = \"registry+https://github.com/rust-lang/crates.io-index\"\n\n\
                    [[package]]\nname = \"app\"\nversion = \"0.1.0\"\n\n\
                    [[package]]\nname = \"ignite\"\nversion = \"0.1.0\"\n\
                    source = \"git+https://example.com/x\"\n\n\
                    [[package]]\nname = \"libc\"\nversion = \"0.2.1\"\n\
                    source = \"sparse+https://index.crates.io/\"\n";
        assert_eq!(registry_packages(lock), ["inflector", "libc"]);
        assert!(registry_packages("not toml [").is_empty());
    }

    #[test]
    fn a_cache_entry_cut_short_is_told_from_a_whole_one() {
        let whole =
            b"\x03\x02\0\0\0Unknown\x000.1.0\0{\"name\":\"x\"}\x000.2.0\0{\"name\":\"x\"}\0";
        assert!(is_whole_cache_entry(whole));
        assert!(is_whole_cache_entry(b"\x03\x02\0\0\0etag: \"1\"\0"));
        for cut in 0..whole.len() - 1 {
            // Only the cut after a whole pair still reads as whole (cargo's own reading of it
            // would be a shorter list of versions, not a broken one).
            let at_pair = cut == 13 || cut == 32;
            assert_eq!(is_whole_cache_entry(&whole[..cut]), at_pair, "cut at {cut}");
        }
    }

    #[tokio::test]
    async fn a_missing_target_is_told_with_the_command_that_adds_it() {
        // CI installs the musl target; a sysroot without it says so.
        assert!(has_target(None, Target::Native).await.unwrap());
        let empty = tempfile::tempdir().unwrap();
        assert!(!sysroot_has(empty.path(), Target::Wasm));
        std::fs::create_dir_all(empty.path().join("lib/rustlib/wasm32-wasip2/lib")).unwrap();
        assert!(sysroot_has(empty.path(), Target::Wasm));
        assert_eq!(
            add_target_command(Some("1.95"), Target::Wasm),
            "rustup target add wasm32-wasip2 --toolchain 1.95"
        );
        assert!(
            has_target(Some("no-such-toolchain-here"), Target::Native)
                .await
                .is_err()
        );
    }

    #[test]
    fn chowning_a_tree_that_vanished_is_not_an_error() {
        // Another compile sharing the target directory can remove a file between the listing
        // and the chown: nothing is left to hand over.
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("removed-meanwhile.o");
        assert!(chown_tree(&gone, 1_899_999_999).is_ok());
        std::fs::write(&gone, b"x").unwrap();
        // An existing file is handed over (as root) or refused with an I/O error naming it
        // (otherwise): never skipped.
        match chown_tree(&gone, 1_899_999_999) {
            Ok(()) => {
                use std::os::unix::fs::MetadataExt;
                assert_eq!(std::fs::metadata(&gone).unwrap().uid(), 1_899_999_999);
            }
            Err(e) => assert!(matches!(e, BuildError::Io { .. }), "{e}"),
        }
    }
}
