//! The Go build: turns an upload (a module: `go.mod` and the `package main` files at its top,
//! optionally a `vendor/` tree) into one static, stripped binary that the node runs exactly like
//! a native Rust handler.
//!
//! [`build`] runs, under the build's time budget, each step's output streamed to the caller:
//!
//! 1. admission: `go.mod` must be at the top, and a top-level `.go` file must be
//!    `package main`; the source is copied into `<out>/src` (links that stay inside are
//!    replaced by copies of what they point to, links leading outside are refused), and a
//!    `replace` in `go.mod` may point only at a directory inside the upload;
//! 2. the SDK is injected as cargo's `[patch]` injects the Rust one: `go mod edit
//!    -require=ignite.dev/sdk@v0.0.0 -replace=ignite.dev/sdk=<sdk_dir>`, so the user's
//!    `import "ignite.dev/sdk/ignite"` resolves to the platform's own copy and the user never
//!    vendors it. With a `vendor/` directory the vendor tree is kept consistent, as `go mod
//!    vendor` would have written it: the SDK's packages are copied to `vendor/ignite.dev/sdk`
//!    and `vendor/modules.txt` gains `# ignite.dev/sdk v0.0.0 => <sdk_dir>`, `## explicit; go
//!    <the SDK's go version>` (without it Go 1.19 compiles the SDK as Go 1.16, without
//!    generics), the package line, and the wildcard line `# ignite.dev/sdk => <sdk_dir>`;
//! 3. without `vendor/`, when `go.mod` requires modules that are neither replaced by a
//!    directory of the upload nor already in the module cache: `go mod download`, in the build
//!    jail with the registry proxy (the Go module proxy's hosts, [`crate::GO_PROXY`]) as its
//!    only network;
//! 4. `go build -trimpath -buildvcs=false -ldflags="-s -w -buildid=" -o <out>/handler .`
//!    with `CGO_ENABLED=0 GOOS=linux GOARCH=amd64`, in the build jail without network
//!    (`GOFLAGS=-mod=vendor`, or `-mod=mod` with `GOPROXY=off`), compiler errors streamed to
//!    the log and the first of them in the error;
//! 5. the binary must be a static ELF (no `PT_INTERP`, no dynamic section); its size and
//!    digest are reported.
//!
//! The Go environment is the platform's alone: every `GO*` variable is set explicitly
//! (`GOENV=off`, `GOWORK=off`, `GOTOOLCHAIN=local`, `GOFLAGS`, `GOPROXY`, …) and none of the
//! host's leaks in. The caches live under [`BuildOptions::target_dir`] (as cargo's target
//! directory does for Rust): `build/` (`GOCACHE`, so a rebuild compiles only what changed),
//! `mod/` (`GOMODCACHE`) and `tmp/` (`GOTMPDIR`). A cache is written by the builds that use it:
//! give each app its own.
//!
//! The `go mod edit` runs (reading and editing `go.mod`) and the toolchain probe run outside
//! the jail: they parse a text file and run nothing of the user's. Without a jail
//! ([`BuildOptions::jail`] `None`) every step runs unconfined: trusted code only.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use ignite_sandbox::jail::{JailNetwork, JailSpec};
use sha2::{Digest, Sha256};
use tokio::process::Command;

use crate::python::copy_tree;
use crate::{
    BuildError, BuildOptions, DiskWatch, Finished, JailOptions, LogCap, caller_uid, chown_tree,
    io_err, run_logged,
};

/// The SDK's module path: users `import "ignite.dev/sdk/ignite"`.
pub const SDK_MODULE: &str = "ignite.dev/sdk";
/// The version the SDK is required at (the `replace` gives the code).
pub const SDK_VERSION: &str = "v0.0.0";
/// The binary's name in the output directory.
pub const BINARY: &str = "handler";
/// Where, in the output directory, the upload is copied and built.
pub const WORK_DIR: &str = "src";

/// One Go build's inputs.
#[derive(Debug, Clone, Copy)]
pub struct GoBuild<'a> {
    /// The unpacked upload (`go.mod` and `*.go`); only read.
    pub source: &'a Path,
    /// An empty (or missing) directory: the binary is written there as [`BINARY`]; the upload
    /// is copied to its [`WORK_DIR`] for the build (and removed once the build succeeds).
    pub out: &'a Path,
    /// The `go` binary, e.g. `/usr/bin/go`.
    pub go: &'a Path,
    /// The platform's Go SDK (`sdks/go` of the repository): the module `ignite.dev/sdk`.
    pub sdk_dir: &'a Path,
}

/// A built Go handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoArtifact {
    /// The static binary.
    pub path: PathBuf,
    pub size: u64,
    /// `sha256:<hex>`.
    pub digest: String,
    /// The toolchain's `go version` (`go1.19.8`).
    pub go_version: String,
}

/// Builds a Go app (see the module's documentation), sending each step's output to `log` line
/// by line (capped at [`BuildOptions::max_log_bytes`]), the whole under
/// [`BuildOptions::timeout`].
pub async fn build(
    b: &GoBuild<'_>,
    options: &BuildOptions,
    log: impl FnMut(&str),
) -> Result<GoArtifact, BuildError> {
    let deadline = tokio::time::Instant::now() + options.timeout;
    let mut log = LogCap::new(options.max_log_bytes, log);
    let result = build_with(b, options, deadline, &mut log).await;
    log.finish();
    result
}

/// The cache directories under [`BuildOptions::target_dir`].
struct Caches {
    build: PathBuf,
    module: PathBuf,
    tmp: PathBuf,
    gopath: PathBuf,
}

impl Caches {
    fn new(root: &Path) -> Caches {
        Caches {
            build: root.join("build"),
            module: root.join("mod"),
            tmp: root.join("tmp"),
            gopath: root.join("gopath"),
        }
    }
}

async fn build_with(
    b: &GoBuild<'_>,
    options: &BuildOptions,
    deadline: tokio::time::Instant,
    log: &mut LogCap<impl FnMut(&str)>,
) -> Result<GoArtifact, BuildError> {
    // 1. Admission.
    if !b.source.join("go.mod").is_file() {
        return Err(BuildError::NoGoMod);
    }
    let sdk_mod = b.sdk_dir.join("go.mod");
    if !sdk_mod.is_file() {
        return Err(BuildError::GoSdk(sdk_mod));
    }
    let sdk_dir = std::fs::canonicalize(b.sdk_dir).map_err(io_err(b.sdk_dir))?;
    let caches = Caches::new(&options.target_dir);
    for dir in [&caches.build, &caches.module, &caches.tmp] {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let go = Toolchain::probe(b.go, &caches, options, deadline).await?;
    log.line(&format!(
        "toolchain: {} (GOROOT {})",
        go.version,
        go.goroot.display()
    ));
    let work = b.out.join(WORK_DIR);
    // What an earlier, failed build into the same directory left.
    let _ = tokio::fs::remove_dir_all(&work).await;
    let (source, copy) = (b.source.to_path_buf(), work.clone());
    let notes = blocking(move || {
        copy_tree(&source, &copy, &|_| None).map_err(|e| match e {
            BuildError::LinkOutside { path, target } => BuildError::GoLinkOutside { path, target },
            other => other,
        })
    })
    .await?;
    for note in notes {
        log.line(&note);
    }
    check_main_package(&work)?;
    let steps = Steps {
        b,
        go: &go,
        sdk_dir: &sdk_dir,
        work: &work,
        caches: &caches,
        options,
        deadline,
    };
    // 2. The SDK.
    let module = steps.read_go_mod().await?;
    check_replacements(&module, &work)?;
    steps.inject_sdk(&module, log).await?;
    let vendored = work.join("vendor").is_dir();
    if vendored {
        let (work, sdk) = (work.clone(), sdk_dir.clone());
        blocking(move || vendor_sdk(&work, &sdk)).await?;
        log.line(&format!(
            "vendor/ is there: building with -mod=vendor (the SDK added to vendor/{SDK_MODULE})"
        ));
    }
    if let Some(jail) = &options.jail {
        let (dirs, uid) = ([b.out.to_path_buf(), options.target_dir.clone()], jail.uid);
        blocking(move || {
            for dir in &dirs {
                chown_tree(dir, uid)?;
            }
            Ok(())
        })
        .await?;
    }
    let result = steps.fetch_and_build(&module, vendored, log).await;
    if options.jail.is_some() {
        // The output goes back to the server: the build user keeps nothing of it.
        let (out, uid) = (b.out.to_path_buf(), caller_uid());
        blocking(move || chown_tree(&out, uid)).await?;
    }
    result?;
    // 5. The binary.
    let path = b.out.join(BINARY);
    let bytes = tokio::fs::read(&path).await.map_err(io_err(&path))?;
    check_static(&bytes).map_err(BuildError::NotStatic)?;
    let size = bytes.len() as u64;
    let digest = format!("sha256:{:x}", Sha256::digest(&bytes));
    log.line(&format!(
        "built a static binary: {BINARY} ({:.1} MiB, {digest})",
        size as f64 / f64::from(1 << 20)
    ));
    let _ = tokio::fs::remove_dir_all(&work).await;
    Ok(GoArtifact {
        path,
        size,
        digest,
        go_version: go.version,
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BuildError> + Send + 'static,
) -> Result<T, BuildError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BuildError::Spawn(std::io::Error::other(e)))?
}

/// What the build knows of its toolchain, asked of it (outside the jail: it is the
/// platform's, and runs nothing of the user's here).
struct Toolchain {
    /// `$GOROOT/bin/go`.
    go: PathBuf,
    goroot: PathBuf,
    /// `go1.19.8`.
    version: String,
    /// The directories the toolchain needs (`GOROOT`, and where its links lead: Debian's
    /// `src` is in `/usr/share/go-1.19`), none inside another.
    dirs: Vec<PathBuf>,
}

impl Toolchain {
    async fn probe(
        go: &Path,
        caches: &Caches,
        options: &BuildOptions,
        deadline: tokio::time::Instant,
    ) -> Result<Toolchain, BuildError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "UPPERCASE")]
        struct Probe {
            goroot: PathBuf,
            goversion: String,
        }
        let what =
            |e: &dyn std::fmt::Display| BuildError::GoToolchain(format!("{}: {e}", go.display()));
        let mut cmd = Command::new(go);
        cmd.args(["env", "-json", "GOROOT", "GOVERSION"])
            .env_clear()
            .envs(fixed_env(caches, None))
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .current_dir("/")
            .kill_on_drop(true);
        let out = match tokio::time::timeout_at(deadline, cmd.output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => return Err(what(&e)),
            Err(_) => return Err(BuildError::TimedOut(options.timeout)),
        };
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(what(&format!("{} ({})", out.status, stderr.trim())));
        }
        let probe: Probe = serde_json::from_slice(&out.stdout).map_err(|e| what(&e))?;
        let goroot = std::fs::canonicalize(&probe.goroot)
            .map_err(|e| what(&format!("GOROOT {}: {e}", probe.goroot.display())))?;
        let binary = goroot.join("bin/go");
        if !binary.is_file() {
            return Err(what(&format!("{} is missing", binary.display())));
        }
        // GOROOT, and the targets of the links at its top and in its pkg/ that lead out of it.
        let mut dirs = vec![goroot.clone()];
        for dir in [goroot.clone(), goroot.join("pkg")] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.symlink_metadata().is_ok_and(|m| m.is_symlink())
                    && let Ok(real) = std::fs::canonicalize(&path)
                    && !real.starts_with(&goroot)
                {
                    dirs.push(real);
                }
            }
        }
        dirs.sort();
        dirs.dedup();
        let mut outer: Vec<PathBuf> = Vec::new();
        for dir in dirs {
            if !outer.iter().any(|o| dir.starts_with(o)) {
                outer.push(dir);
            }
        }
        Ok(Toolchain {
            go: binary,
            goroot,
            version: probe.goversion,
            dirs: outer,
        })
    }
}

/// The Go environment every step starts from: explicit, so nothing of the host's (or a
/// `go env -w` file) configures the build. `fetch` is the proxy for a download step (else
/// the module lookup is off).
fn fixed_env(caches: &Caches, fetch: Option<&str>) -> Vec<(OsString, OsString)> {
    let (proxy, sumdb) = match fetch {
        Some(proxy) => (proxy, "sum.golang.org"),
        None => ("off", "off"),
    };
    [
        ("GOENV", "off"),
        ("GOWORK", "off"),
        ("GOTOOLCHAIN", "local"),
        ("GO111MODULE", "on"),
        ("GOPROXY", proxy),
        ("GOSUMDB", sumdb),
        ("GONOSUMDB", ""),
        ("GONOPROXY", ""),
        ("GOPRIVATE", ""),
        ("GOINSECURE", ""),
        ("GOVCS", "*:off"),
        ("GOFLAGS", "-mod=mod -modcacherw"),
        ("CGO_ENABLED", "0"),
        ("GOOS", "linux"),
        ("GOARCH", "amd64"),
        ("GOAMD64", "v1"),
        ("GOTELEMETRY", "off"),
        ("LANG", "C.UTF-8"),
    ]
    .into_iter()
    .map(|(k, v)| (k.into(), v.into()))
    .chain([
        ("GOCACHE".into(), caches.build.clone().into()),
        ("GOMODCACHE".into(), caches.module.clone().into()),
        ("GOPATH".into(), caches.gopath.clone().into()),
        ("GOTMPDIR".into(), caches.tmp.clone().into()),
    ])
    .collect()
}

/// The Go module proxy the download step uses.
const PROXY_URL: &str = "https://proxy.golang.org";

/// `go.mod` as `go mod edit -json` reads it (the parts the build looks at).
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GoMod {
    #[serde(default)]
    require: Option<Vec<ModuleVersion>>,
    #[serde(default)]
    replace: Option<Vec<Replace>>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ModuleVersion {
    path: String,
    #[serde(default)]
    version: String,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Replace {
    old: ModuleVersion,
    new: ModuleVersion,
}

impl GoMod {
    fn requires(&self) -> &[ModuleVersion] {
        self.require.as_deref().unwrap_or_default()
    }

    fn replaces(&self) -> &[Replace] {
        self.replace.as_deref().unwrap_or_default()
    }

    /// The modules to download: what is required, as replaced, except the SDK and what a
    /// directory replaces.
    fn downloads(&self) -> Vec<ModuleVersion> {
        self.requires()
            .iter()
            .filter(|r| r.path != SDK_MODULE)
            .filter_map(|r| {
                let replace = self
                    .replaces()
                    .iter()
                    .filter(|p| p.old.path == r.path)
                    // A replacement of this very version wins over one of every version.
                    .max_by_key(|p| p.old.version == r.version);
                match replace {
                    Some(p) if p.old.version.is_empty() || p.old.version == r.version => {
                        // A directory has no version.
                        (!p.new.version.is_empty()).then(|| p.new.clone())
                    }
                    _ => Some(r.clone()),
                }
            })
            .collect()
    }
}

/// The `replace` directives of `go.mod` may point only at directories inside the upload (the
/// build sees nothing else; the SDK's own replacement is the builder's to make).
fn check_replacements(module: &GoMod, work: &Path) -> Result<(), BuildError> {
    for r in module.replaces() {
        if !r.new.version.is_empty() || r.old.path == SDK_MODULE {
            continue;
        }
        let outside = || BuildError::GoReplaceOutside {
            module: r.old.path.clone(),
            path: r.new.path.clone(),
        };
        let path = Path::new(&r.new.path);
        if path.is_absolute() {
            return Err(outside());
        }
        let mut depth = 0usize;
        for c in path.components() {
            match c {
                Component::Normal(_) => depth += 1,
                Component::ParentDir => depth = depth.checked_sub(1).ok_or_else(outside)?,
                Component::CurDir => {}
                _ => return Err(outside()),
            }
        }
        if !work.join(path).join("go.mod").is_file() {
            return Err(BuildError::GoMod(format!(
                "go.mod replaces {} with {}, which has no go.mod in the upload",
                r.old.path, r.new.path
            )));
        }
    }
    Ok(())
}

/// A module's directory in the module cache's download area (`!` before what was uppercase).
fn escape_module_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c.is_ascii_uppercase() {
            out.push('!');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn in_module_cache(cache: &Path, m: &ModuleVersion) -> bool {
    cache
        .join("cache/download")
        .join(escape_module_path(&m.path))
        .join("@v")
        .join(format!("{}.zip", escape_module_path(&m.version)))
        .is_file()
}

/// The top-level `.go` files (tests aside) must hold `package main`.
fn check_main_package(work: &Path) -> Result<(), BuildError> {
    let mut names = std::fs::read_dir(work)
        .map_err(io_err(work))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "go")
                && !p.to_string_lossy().ends_with("_test.go")
                && p.is_file()
        })
        .collect::<Vec<_>>();
    names.sort();
    let mut other = None;
    for path in &names {
        let text = std::fs::read(path).map_err(io_err(path))?;
        match package_clause(&String::from_utf8_lossy(&text)) {
            Some("main") => return Ok(()),
            Some(name) if other.is_none() => other = Some(name.to_string()),
            _ => {}
        }
    }
    match other {
        Some(package) => Err(BuildError::NotMainPackage(package)),
        None => Err(BuildError::NoGoFiles),
    }
}

/// The package name a Go source file declares, after its leading comments.
fn package_clause(text: &str) -> Option<&str> {
    let mut s = text.strip_prefix('\u{feff}').unwrap_or(text);
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix("//") {
            s = rest.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(rest) = s.strip_prefix("/*") {
            s = rest.split_once("*/")?.1;
        } else {
            break;
        }
    }
    let rest = s.strip_prefix("package")?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let rest = rest.trim_start();
    let end = rest
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

/// Adds the SDK to a vendor tree as `go mod vendor` would have (see the module's
/// documentation): its packages under `vendor/ignite.dev/sdk`, its lines in
/// `vendor/modules.txt` (replacing any the upload had).
fn vendor_sdk(work: &Path, sdk: &Path) -> Result<(), BuildError> {
    let vendor = work.join("vendor");
    let dest = vendor.join(SDK_MODULE);
    if dest.symlink_metadata().is_ok() {
        std::fs::remove_dir_all(&dest).map_err(io_err(&dest))?;
    }
    let mut packages = Vec::new();
    copy_packages(sdk, &dest, Path::new(""), &mut packages)?;
    packages.sort();
    let go_version = std::fs::read_to_string(sdk.join("go.mod"))
        .map_err(io_err(&sdk.join("go.mod")))?
        .lines()
        .find_map(|l| l.trim().strip_prefix("go ").map(|v| v.trim().to_string()))
        .unwrap_or_else(|| "1.18".into());
    let modules_txt = vendor.join("modules.txt");
    let existing = match std::fs::read_to_string(&modules_txt) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_err(&modules_txt)(e)),
    };
    let mut text = String::new();
    let mut skipping = false;
    for line in existing.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            skipping = rest.split_whitespace().next() == Some(SDK_MODULE);
        }
        if !skipping {
            text.push_str(line);
            text.push('\n');
        }
    }
    let sdk_path = sdk.to_string_lossy();
    text.push_str(&format!(
        "# {SDK_MODULE} {SDK_VERSION} => {sdk_path}\n## explicit; go {go_version}\n"
    ));
    for package in &packages {
        text.push_str(package);
        text.push('\n');
    }
    text.push_str(&format!("# {SDK_MODULE} => {sdk_path}\n"));
    std::fs::write(&modules_txt, text).map_err(io_err(&modules_txt))
}

/// Copies the Go packages of the SDK (each directory's non-test `.go` files) to `dest`,
/// listing their import paths.
fn copy_packages(
    dir: &Path,
    dest: &Path,
    rel: &Path,
    packages: &mut Vec<String>,
) -> Result<(), BuildError> {
    let mut has_go = false;
    let mut entries = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_err(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        let path = entry.path();
        let meta = std::fs::metadata(&path).map_err(io_err(&path))?;
        if meta.is_dir() {
            if name_str.starts_with(['.', '_']) || name_str == "testdata" || name_str == "vendor" {
                continue;
            }
            copy_packages(&path, &dest.join(&name), &rel.join(&name), packages)?;
        } else if name_str.ends_with(".go") && !name_str.ends_with("_test.go") {
            std::fs::create_dir_all(dest).map_err(io_err(dest))?;
            crate::python::copy_file(
                &path,
                &dest.join(&name),
                0o644,
                crate::python::MAX_FILE_BYTES,
            )?;
            has_go = true;
        }
    }
    if has_go {
        let rel = rel.to_string_lossy();
        packages.push(if rel.is_empty() {
            SDK_MODULE.to_string()
        } else {
            format!("{SDK_MODULE}/{rel}")
        });
    }
    Ok(())
}

/// Checks that `bytes` is a static x86-64 ELF executable: no interpreter, no dynamic section.
fn check_static(bytes: &[u8]) -> Result<(), String> {
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;
    const EM_X86_64: u16 = 62;
    if bytes.len() < 64 || bytes[..4] != *b"\x7fELF" {
        return Err("it is not an ELF file".into());
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        return Err("it is not a 64-bit little-endian ELF file".into());
    }
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let machine = u16_at(18).unwrap_or(0);
    if machine != EM_X86_64 {
        return Err(format!("it is built for machine {machine}, not x86-64"));
    }
    let bad = || "its program headers are cut short".to_string();
    let phoff = usize::try_from(u64_at(32).ok_or_else(bad)?).map_err(|_| bad())?;
    let phentsize = usize::from(u16_at(54).ok_or_else(bad)?);
    let phnum = usize::from(u16_at(56).ok_or_else(bad)?);
    for i in 0..phnum {
        let off = phentsize
            .checked_mul(i)
            .and_then(|o| o.checked_add(phoff))
            .ok_or_else(bad)?;
        match u32_at(off).ok_or_else(bad)? {
            PT_INTERP => return Err("it asks for a dynamic loader (PT_INTERP)".into()),
            PT_DYNAMIC => return Err("it has a dynamic section (PT_DYNAMIC)".into()),
            _ => {}
        }
    }
    Ok(())
}

/// Whether a line of `go build`'s output reports an error (rather than naming a package
/// being compiled, `# pkg` headers, or progress).
fn is_error_line(line: &str) -> bool {
    !line.starts_with('#')
        && line.contains(": ")
        && !["go: finding ", "go: downloading ", "go: extracting "]
            .iter()
            .any(|p| line.starts_with(p))
}

/// The steps that run the go command.
struct Steps<'a, 'b> {
    b: &'a GoBuild<'b>,
    go: &'a Toolchain,
    sdk_dir: &'a Path,
    work: &'a Path,
    caches: &'a Caches,
    options: &'a BuildOptions,
    deadline: tokio::time::Instant,
}

/// One jailed (or unconfined) run of the go command.
struct Run {
    args: Vec<OsString>,
    /// `GOFLAGS`.
    flags: &'static str,
    /// The download step: the registry's network, the module cache writable.
    fetch: bool,
}

impl Steps<'_, '_> {
    /// `go mod edit` outside the jail, with the fixed environment; its stdout on success.
    async fn mod_edit(&self, args: &[OsString]) -> Result<Vec<u8>, BuildError> {
        let mut cmd = Command::new(&self.go.go);
        cmd.arg("mod")
            .arg("edit")
            .args(args)
            .env_clear()
            .envs(fixed_env(self.caches, None))
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("GOROOT", &self.go.goroot)
            .env("HOME", "/tmp")
            .current_dir(self.work)
            .kill_on_drop(true);
        let out = match tokio::time::timeout_at(self.deadline, cmd.output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => return Err(BuildError::Spawn(e)),
            Err(_) => return Err(BuildError::TimedOut(self.options.timeout)),
        };
        if !out.status.success() {
            // Go's lines, joined, with the build's own paths left out.
            let stderr = String::from_utf8_lossy(&out.stderr);
            let prefix = format!("{}/", self.work.display());
            let mut text = String::new();
            for line in stderr.lines().map(str::trim).filter(|l| !l.is_empty()) {
                if !text.is_empty() {
                    text.push_str(if text.ends_with(':') { " " } else { "; " });
                }
                text.push_str(&line.replace(&prefix, ""));
            }
            if text.is_empty() {
                text = format!("go mod edit {}", out.status);
            }
            return Err(BuildError::GoMod(text));
        }
        Ok(out.stdout)
    }

    async fn read_go_mod(&self) -> Result<GoMod, BuildError> {
        let json = self.mod_edit(&["-json".into()]).await?;
        serde_json::from_slice(&json)
            .map_err(|e| BuildError::GoMod(format!("go mod edit -json gave {e}")))
    }

    /// `go mod edit -require=ignite.dev/sdk@v0.0.0 -replace=ignite.dev/sdk=<sdk>`, dropping
    /// any replacement of the SDK the upload had.
    async fn inject_sdk(
        &self,
        module: &GoMod,
        log: &mut LogCap<impl FnMut(&str)>,
    ) -> Result<(), BuildError> {
        let mut args: Vec<OsString> = Vec::new();
        for r in module
            .replaces()
            .iter()
            .filter(|r| r.old.path == SDK_MODULE)
        {
            let old = if r.old.version.is_empty() {
                r.old.path.clone()
            } else {
                format!("{}@{}", r.old.path, r.old.version)
            };
            args.push(format!("-dropreplace={old}").into());
        }
        args.push(format!("-require={SDK_MODULE}@{SDK_VERSION}").into());
        let mut replace = OsString::from(format!("-replace={SDK_MODULE}="));
        replace.push(self.sdk_dir);
        args.push(replace);
        self.mod_edit(&args).await?;
        log.line(&format!(
            "the SDK: go.mod requires {SDK_MODULE} {SDK_VERSION}, replaced by the platform's \
             ({}) (go mod edit)",
            self.sdk_dir.display()
        ));
        Ok(())
    }

    /// Steps 3 and 4.
    async fn fetch_and_build(
        &self,
        module: &GoMod,
        vendored: bool,
        log: &mut LogCap<impl FnMut(&str)>,
    ) -> Result<(), BuildError> {
        // 3. Downloads.
        let missing: Vec<ModuleVersion> = if vendored {
            Vec::new()
        } else {
            module
                .downloads()
                .into_iter()
                .filter(|m| !in_module_cache(&self.caches.module, m))
                .collect()
        };
        if !missing.is_empty() {
            let names: Vec<String> = missing
                .iter()
                .map(|m| format!("{}@{}", m.path, m.version))
                .collect();
            log.line(&format!(
                "downloading the modules go.mod requires (go mod download): {}",
                names.join(", ")
            ));
            let run = Run {
                args: vec!["mod".into(), "download".into()],
                flags: "-mod=mod -modcacherw",
                fetch: true,
            };
            let (finished, _) = self.spawn(run, log).await?;
            if !finished.status.success() {
                return Err(BuildError::GoFetchFailed {
                    status: finished.status.to_string(),
                    last: finished.last_stderr,
                });
            }
        }
        // 4. The compile.
        log.line(&format!(
            "compiling (go build, {}, CGO_ENABLED=0, {})",
            self.go.version,
            if vendored {
                "-mod=vendor"
            } else {
                "-mod=mod, GOPROXY=off"
            }
        ));
        let mut output = OsString::from("-o=");
        output.push(self.b.out.join(BINARY));
        let run = Run {
            args: vec![
                "build".into(),
                "-v".into(),
                "-trimpath".into(),
                "-buildvcs=false".into(),
                "-ldflags=-s -w -buildid=".into(),
                output,
                ".".into(),
            ],
            flags: if vendored { "-mod=vendor" } else { "-mod=mod" },
            fetch: false,
        };
        let (finished, first_error) = self.spawn(run, log).await?;
        if !finished.status.success() {
            return Err(BuildError::GoBuildFailed {
                status: finished.status.to_string(),
                first: first_error.or(finished.last_stderr),
            });
        }
        Ok(())
    }

    /// The environment of a run: the fixed one, with this run's flags and the jail's paths.
    fn env(&self, run: &Run) -> Vec<(OsString, OsString)> {
        let mut env = fixed_env(self.caches, run.fetch.then_some(PROXY_URL));
        for (k, v) in &mut env {
            if k == "GOFLAGS" {
                *v = run.flags.into();
            }
        }
        env.push(("GOROOT".into(), self.go.goroot.clone().into()));
        env
    }

    /// Runs the go command, jailed or not; returns how it ended and the first error line it
    /// wrote.
    async fn spawn(
        &self,
        run: Run,
        log: &mut LogCap<impl FnMut(&str)>,
    ) -> Result<(Finished, Option<String>), BuildError> {
        let (cmd, watch) = match &self.options.jail {
            None => {
                let mut cmd = Command::new(&self.go.go);
                // The host's environment (its proxy settings, say) minus what configures Go.
                for (k, _) in std::env::vars_os() {
                    let name = k.to_string_lossy();
                    if name.starts_with("GO") || name.starts_with("CGO_") {
                        cmd.env_remove(&k);
                    }
                }
                cmd.envs(self.env(&run))
                    .args(&run.args)
                    .current_dir(self.work);
                (cmd, None)
            }
            Some(jail) => {
                let spec = self.spec(jail, &run);
                let mut cmd = Command::new(&jail.helper);
                cmd.arg("ignite")
                    .arg("__jail")
                    .args(spec.to_args())
                    .env_clear()
                    .current_dir("/");
                let watch = DiskWatch {
                    dir: self.options.target_dir.clone(),
                    limit: jail.max_disk_bytes,
                };
                (cmd, Some(watch))
            }
        };
        let mut first_error = None;
        let finished = {
            let mut lines = LogCap::new(usize::MAX, |line: &str| {
                if !run.fetch && first_error.is_none() && is_error_line(line) {
                    first_error = Some(line.to_string());
                }
                log.line(line);
            });
            run_logged(
                cmd,
                self.options.timeout,
                self.deadline,
                watch,
                &mut lines,
                |_| true,
            )
            .await?
        };
        Ok((finished, first_error))
    }

    /// The jail of one run: the toolchain and the SDK read-only; the output directory (the
    /// work copy and the binary) and the build cache writable (the download step: the module
    /// cache instead); HOME and TMPDIR in the jail's `/tmp`.
    fn spec(&self, jail: &JailOptions, run: &Run) -> JailSpec {
        let mut read_only = self.go.dirs.clone();
        read_only.push(self.sdk_dir.to_path_buf());
        let mut writable = vec![self.b.out.to_path_buf()];
        let network = if run.fetch {
            writable.push(self.caches.module.clone());
            let mut etc = vec![
                "/etc/ssl",
                "/etc/pki",
                "/etc/ca-certificates",
                "/usr/share/ca-certificates",
            ];
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
            read_only.extend(etc.into_iter().map(PathBuf::from).filter(|p| p.exists()));
            network
        } else {
            writable.push(self.caches.build.clone());
            writable.push(self.caches.tmp.clone());
            read_only.push(self.caches.module.clone());
            JailNetwork::None
        };
        let mut env = self.env(run);
        env.extend([
            (
                "PATH".into(),
                format!(
                    "{}/bin:/usr/local/bin:/usr/bin:/bin",
                    self.go.goroot.display()
                )
                .into(),
            ),
            ("HOME".into(), "/tmp".into()),
            ("TMPDIR".into(), "/tmp".into()),
        ]);
        JailSpec {
            root: jail.root.clone(),
            read_only,
            writable,
            mapped: Vec::new(),
            scratch: Vec::new(),
            tmp_mb: jail.tmp_mb,
            uid: jail.uid,
            cgroups: jail.cgroups.clone(),
            max_file_bytes: jail.max_disk_bytes,
            max_processes: 512,
            max_address_space: jail.max_address_space,
            cwd: self.work.to_path_buf(),
            env,
            program: self.go.go.clone(),
            args: run.args.clone(),
            network,
            user_namespace: None,
            loopback_tunnels: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_package_clause_is_found_after_comments() {
        assert_eq!(package_clause("package main\n"), Some("main"));
        assert_eq!(
            package_clause("\u{feff}// Copyright\n//go:build linux\n\n/* x */ package  app_2 // y"),
            Some("app_2")
        );
        assert_eq!(package_clause("packagemain"), None);
        assert_eq!(package_clause("/* never closed"), None);
        assert_eq!(package_clause("func main() {}"), None);
    }

    #[test]
    fn downloads_leave_out_the_sdk_and_directories() {
        let module: GoMod = serde_json::from_str(
            r#"{"Require": [
                {"Path": "ignite.dev/sdk", "Version": "v0.0.0"},
                {"Path": "example.com/local", "Version": "v1.0.0"},
                {"Path": "example.com/pinned", "Version": "v1.2.0"},
                {"Path": "example.com/moved", "Version": "v1.0.0"},
                {"Path": "example.com/plain", "Version": "v0.3.0"}
            ], "Replace": [
                {"Old": {"Path": "example.com/local"}, "New": {"Path": "./third_party/local"}},
                {"Old": {"Path": "example.com/pinned", "Version": "v1.0.0"}, "New": {"Path": "./old"}},
                {"Old": {"Path": "example.com/moved"}, "New": {"Path": "example.org/fork", "Version": "v1.1.0"}}
            ]}"#,
        )
        .unwrap();
        let names: Vec<String> = module
            .downloads()
            .iter()
            .map(|m| format!("{}@{}", m.path, m.version))
            .collect();
        assert_eq!(
            names,
            [
                "example.com/pinned@v1.2.0",
                "example.org/fork@v1.1.0",
                "example.com/plain@v0.3.0"
            ]
        );
        assert_eq!(
            escape_module_path("github.com/BurntSushi/toml"),
            "github.com/!burnt!sushi/toml"
        );
    }

    #[test]
    fn replacements_must_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("third_party/x")).unwrap();
        std::fs::write(dir.path().join("third_party/x/go.mod"), "module x\n").unwrap();
        let module = |new: &str| -> GoMod {
            serde_json::from_value(serde_json::json!({
                "Replace": [{"Old": {"Path": "example.com/x"}, "New": {"Path": new}}]
            }))
            .unwrap()
        };
        assert!(check_replacements(&module("./third_party/x"), dir.path()).is_ok());
        assert!(check_replacements(&module("third_party/../third_party/x"), dir.path()).is_ok());
        for outside in ["../x", "/etc", "./a/../../x"] {
            assert!(
                matches!(
                    check_replacements(&module(outside), dir.path()),
                    Err(BuildError::GoReplaceOutside { .. })
                ),
                "{outside}"
            );
        }
        assert!(matches!(
            check_replacements(&module("./nothing"), dir.path()),
            Err(BuildError::GoMod(_))
        ));
    }

    #[test]
    fn only_a_static_elf_passes() {
        assert!(check_static(b"#!/bin/sh\n").is_err());
        let mut elf = vec![0u8; 64 + 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[18] = 62;
        elf[32] = 64; // e_phoff
        elf[54] = 56; // e_phentsize
        elf[56] = 1; // e_phnum
        elf[64] = 1; // PT_LOAD
        assert_eq!(check_static(&elf), Ok(()));
        elf[64] = 3; // PT_INTERP
        assert!(check_static(&elf).unwrap_err().contains("PT_INTERP"));
        elf[56] = 2; // a second header past the end of the file
        elf[64] = 1;
        assert!(check_static(&elf).is_err());
    }

    #[test]
    fn the_first_error_line_is_the_compilers() {
        assert!(!is_error_line("# example.com/app"));
        assert!(!is_error_line("ignite.dev/sdk/ignite"));
        assert!(!is_error_line(
            "go: finding module for package example.com/x"
        ));
        assert!(is_error_line("./main.go:8:2: undefined: nope"));
        assert!(is_error_line(
            "go: inconsistent vendoring in /work/app/src:"
        ));
    }
}
