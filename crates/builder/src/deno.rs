//! The Deno build: turns an upload (`main.ts` or `main.js` at its top, an optional `deno.json`)
//! into an app tree that runs offline, and packs it as one tar, the layer the node unpacks and
//! runs.
//!
//! The tree is built where it will run: every jailed step sees it at [`APP_DIR`] (`/app`), the
//! path the instance's sandbox binds it at, because Deno keys its caches (the transpiled
//! TypeScript, V8's code cache) by module URL. It holds:
//!
//! - the upload (a top-level `.deno`, `.ignite` or `node_modules` left out);
//! - `deno.json`: the upload's (`deno.json` or `deno.jsonc`, comments allowed; an `importMap`
//!   it names is folded into `imports`), with `"ignite"` mapped to `./.ignite/sdk/mod.ts`;
//! - `.ignite/sdk/`: the platform's SDK (`sdks/deno`), copied in, so a version keeps the SDK it
//!   was built with;
//! - `.ignite/main.ts`: the entry, which imports the SDK's prelude first (the channel is the
//!   SDK's and stdout goes to stderr before any code of the app runs), then the app, then boots;
//! - `.deno/`: the `DENO_DIR` — remote modules and npm packages, Deno's transpile cache and V8's
//!   code cache of every module.
//!
//! [`build`] runs, under the build's time budget, each step's output streamed to the caller:
//!
//! 1. admission and the tree above (the copy follows the Python build's rules: links inside are
//!    copied, links outside refused, files capped);
//! 2. `deno install --entrypoint` — every `jsr:`, `npm:` and `https:` import fetched into
//!    `.deno`, the lockfile written — in the build jail, the registry proxy ([`crate::DENO`])
//!    its only network; no code of the app runs;
//! 3. `deno info --json`, offline: does the app use Node's APIs (`node:`/`npm:`)? Then the entry
//!    also redirects `node:process`'s stdout;
//! 4. `deno check`, offline: a type error fails the build with Deno's message;
//! 5. the instance's own command line ([`run_args`]) in `check` mode, offline: the app's module
//!    graph is evaluated, its default export checked to be a handler from `main(...)`, and Deno
//!    writes its transpile and V8 code caches, so an instance's cold start compiles nothing;
//! 6. the caches sealed so that an instance can read them from a read-only tree: SQLite's
//!    write-ahead logs checkpointed into the databases (`sdks/deno/tools/seal_cache.ts`),
//!    empty `-wal`/`-shm` files left beside each (SQLite opens a WAL database on a read-only
//!    file system only if they exist), the type-check caches removed;
//! 7. the tree packed into `<app>.tar` (sorted entries, times and owners zeroed), digested.
//!
//! Without a jail ([`BuildOptions::jail`] `None`) the steps run unconfined, on the tree where it
//! is: trusted code only, and the caches are keyed by that path (an unconfined node runs the
//! tree elsewhere, so its first start compiles).

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use ignite_sandbox::jail::{JailBind, JailNetwork, JailSpec};
use serde_json::{Map, Value};
use tokio::process::Command;

use crate::python::{blocking, copy_file, copy_tree, pack, tar_path};
use crate::{
    BuildError, BuildOptions, DiskWatch, JailOptions, LogCap, caller_uid, chown_tree, io_err,
    run_logged,
};

/// Where the app's tree is, in the build's jail and in an instance's sandbox.
pub const APP_DIR: &str = "/app";
/// The app's own entry modules, in the order looked for.
pub const MAINS: &[&str] = &["main.ts", "main.js"];
/// The build's own files in the tree.
pub const IGNITE_DIR: &str = ".ignite";
/// The entry every instance runs, in the tree.
pub const ENTRY: &str = ".ignite/main.ts";
/// Where the SDK is copied, in the tree.
pub const SDK_IN_APP: &str = ".ignite/sdk";
/// The `DENO_DIR`, in the tree.
pub const CACHE_DIR: &str = ".deno";
/// The config every step and instance runs with, in the tree.
pub const CONFIG: &str = "deno.json";
/// The SDK's modules copied into an app (the rest of `sdks/deno` is its tests and tools).
pub const SDK_MODULES: &[&str] = &["mod.ts", "frames.ts", "prelude.ts", "boot.ts", "node.ts"];
/// The build's cache-sealing script, in the SDK directory.
pub const SEAL_SCRIPT: &str = "tools/seal_cache.ts";
/// Where a node looks for Deno when the operator names none: the `deno` npm package as
/// `.ci/run` installs it (`npm install --prefix /opt/ignite-deno deno`: the binary is its
/// optional dependency `@deno/linux-x64-glibc`), then the usual places.
pub const DEFAULT_BINARIES: &[&str] = &[
    "/opt/ignite-deno/node_modules/@deno/linux-x64-glibc/deno",
    "/opt/ignite-deno/node_modules/deno/deno",
    "/usr/local/bin/deno",
    "/usr/bin/deno",
];

/// The first of [`DEFAULT_BINARIES`] that exists.
pub fn default_binary() -> Option<PathBuf> {
    DEFAULT_BINARIES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// What `"ignite"` resolves to, relative to the tree.
const SDK_SPECIFIER: &str = "./.ignite/sdk/mod.ts";

/// One Deno build's inputs.
#[derive(Debug, Clone, Copy)]
pub struct DenoBuild<'a> {
    /// The unpacked upload; only read.
    pub source: &'a Path,
    /// The app tree to produce: an empty (or missing) directory. The tar is written next to it,
    /// as `<out>.tar`.
    pub out: &'a Path,
    /// The Deno binary that fetches, checks and warms the app (the node runs the same one).
    pub deno: &'a Path,
    /// The platform's Deno SDK (`sdks/deno` of the repository).
    pub sdk_dir: &'a Path,
}

/// A built Deno app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenoArtifact {
    /// The app tree, packed (see [`crate::oci::unpack_app`]).
    pub tar: PathBuf,
    pub size: u64,
    /// `sha256:<hex>` of the tar.
    pub digest: String,
    /// `2.9.6`: the caches in the tree are that Deno's.
    pub deno_version: String,
    /// The app's entry module (`main.ts` or `main.js`).
    pub main: String,
    /// Whether the app uses Node's APIs (a `node:` or `npm:` import).
    pub uses_node: bool,
}

/// How an instance (or the build's check) runs the app.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions<'a> {
    /// Where the tree is ([`APP_DIR`] in the sandbox).
    pub app: &'a Path,
    /// The app's environment variable names: the only ones the app may read.
    pub allow_env: &'a [String],
    /// Internet access (the app's egress setting).
    pub allow_net: bool,
    /// V8's heap limit, in MiB.
    pub heap_mb: Option<u64>,
    /// The build's `check` rather than serving.
    pub check: bool,
}

/// The argument vector of an instance, `argv[0]` (the binary) first:
///
/// `deno run --cached-only --no-prompt --frozen --config=<app>/deno.json --allow-read=<app>
/// [--allow-env=<names>] [--allow-net] [--v8-flags=--max-heap-size=<MiB>] <app>/.ignite/main.ts`
///
/// Deno's permissions are the instance's second wall (the sandbox is the first): it may read its
/// own tree and nothing else, read the app's declared variables only, reach the network only
/// with egress on, and run, write, load native code or read system information never.
pub fn run_args(deno: &Path, o: &RunOptions<'_>) -> Vec<String> {
    let app = o.app.display();
    let mut args = vec![
        deno.to_string_lossy().into_owned(),
        "run".into(),
        "--cached-only".into(),
        "--no-prompt".into(),
        "--frozen".into(),
        format!("--config={app}/{CONFIG}"),
        format!("--allow-read={app}"),
    ];
    let names: Vec<&str> = o
        .allow_env
        .iter()
        .map(String::as_str)
        .filter(|n| !n.is_empty() && !n.contains(','))
        .collect();
    if !names.is_empty() {
        args.push(format!("--allow-env={}", names.join(",")));
    }
    if o.allow_net {
        args.push("--allow-net".into());
    }
    if let Some(mb) = o.heap_mb {
        args.push(format!("--v8-flags=--max-heap-size={mb}"));
    }
    args.push(format!("{app}/{ENTRY}"));
    if o.check {
        args.push("check".into());
    }
    args
}

/// The environment of every Deno run on the tree at `app` (set after the app's own variables,
/// so an app's `DENO_DIR` cannot point Deno elsewhere).
pub fn run_env(app: &Path) -> Vec<(String, String)> {
    vec![
        (
            "DENO_DIR".into(),
            app.join(CACHE_DIR).to_string_lossy().into_owned(),
        ),
        ("DENO_NO_UPDATE_CHECK".into(), "1".into()),
        ("DENO_NO_PACKAGE_JSON".into(), "1".into()),
        ("NO_COLOR".into(), "1".into()),
    ]
}

/// A digest of the SDK's modules and build tools in `sdk_dir`: part of a build cache key, since
/// every build copies the SDK into the app.
pub fn sdk_fingerprint(sdk_dir: &Path) -> io::Result<String> {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    for name in SDK_MODULES.iter().chain([SEAL_SCRIPT].iter()) {
        hash.update(name.as_bytes());
        hash.update([0]);
        hash.update(std::fs::read(sdk_dir.join(name))?);
    }
    Ok(format!("{:x}", hash.finalize()))
}

/// Builds a Deno app (see the module's documentation), sending each step's output to `log`
/// line by line (capped at [`BuildOptions::max_log_bytes`]), the whole under
/// [`BuildOptions::timeout`].
pub async fn build(
    b: &DenoBuild<'_>,
    options: &BuildOptions,
    log: impl FnMut(&str),
) -> Result<DenoArtifact, BuildError> {
    let deadline = tokio::time::Instant::now() + options.timeout;
    let mut log = LogCap::new(options.max_log_bytes, log);
    let result = build_with(b, options, deadline, &mut log).await;
    log.finish();
    result
}

/// The version of a Deno binary (`2.9.6`), asked of it.
pub async fn version(deno: &Path) -> Result<String, BuildError> {
    let what = |e: &dyn std::fmt::Display| BuildError::Deno(format!("{}: {e}", deno.display()));
    let out = Command::new(deno)
        .arg("--version")
        .env_clear()
        .env("NO_COLOR", "1")
        .env("DENO_NO_UPDATE_CHECK", "1")
        .current_dir("/")
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(std::time::Duration::from_secs(30), out).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(what(&e)),
        Err(_) => return Err(what(&"`deno --version` did not answer within 30 s")),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    match text.lines().next().and_then(|l| l.strip_prefix("deno ")) {
        Some(rest) if out.status.success() => {
            Ok(rest.split_whitespace().next().unwrap_or("").to_string())
        }
        _ => Err(what(&format!(
            "`deno --version` said {:?} ({})",
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

async fn build_with(
    b: &DenoBuild<'_>,
    options: &BuildOptions,
    deadline: tokio::time::Instant,
    log: &mut LogCap<impl FnMut(&str)>,
) -> Result<DenoArtifact, BuildError> {
    // 1. Admission and the tree.
    let Some(main) = MAINS.iter().find(|m| b.source.join(m).is_file()) else {
        return Err(BuildError::NoDenoMain);
    };
    for module in SDK_MODULES {
        let path = b.sdk_dir.join(module);
        if !path.is_file() {
            return Err(BuildError::DenoSdk(path));
        }
    }
    let deno = std::fs::canonicalize(b.deno)
        .map_err(|e| BuildError::Deno(format!("{}: {e}", b.deno.display())))?;
    let deno_version = version(&deno).await?;
    log.line(&format!(
        "building with Deno {deno_version} ({})",
        deno.display()
    ));
    let (source, out, sdk) = (
        b.source.to_path_buf(),
        b.out.to_path_buf(),
        b.sdk_dir.to_path_buf(),
    );
    let main_name = main.to_string();
    let notes = blocking(move || make_tree(&source, &out, &sdk, &main_name, false)).await?;
    for note in notes {
        log.line(&note);
    }
    let steps = Steps {
        out: b.out,
        deno: &deno,
        sdk_dir: b.sdk_dir,
        options,
        deadline,
    };
    if let Some(jail) = &options.jail {
        let (out, uid) = (b.out.to_path_buf(), jail.uid);
        blocking(move || chown_tree(&out, uid)).await?;
    }
    let result = steps.run(main, log).await;
    if options.jail.is_some() {
        // The tree goes back to the server: the build user keeps nothing.
        let (out, uid) = (b.out.to_path_buf(), caller_uid());
        blocking(move || chown_tree(&out, uid)).await?;
    }
    let uses_node = result?;
    // 7. The tar.
    let tar = tar_path(b.out);
    let (out, dest) = (b.out.to_path_buf(), tar.clone());
    let (size, digest) = blocking(move || pack(&out, &dest)).await?;
    log.line(&format!(
        "packed the app: {} ({:.1} MiB, {digest})",
        tar.file_name().unwrap_or_default().to_string_lossy(),
        size as f64 / f64::from(1 << 20)
    ));
    Ok(DenoArtifact {
        tar,
        size,
        digest,
        deno_version,
        main: main.to_string(),
        uses_node,
    })
}

/// Makes the tree (step 1): the upload, the merged config, the SDK and the entry (which also
/// imports the SDK's `node.ts` when `node` is set). Returns notes for the log.
fn make_tree(
    source: &Path,
    out: &Path,
    sdk_dir: &Path,
    main: &str,
    node: bool,
) -> Result<Vec<String>, BuildError> {
    let mut notes = copy_tree(source, out, &|rel| {
        let top = rel.components().count() == 1;
        let name = rel.to_string_lossy();
        match name.as_ref() {
            CACHE_DIR | IGNITE_DIR if top => Some(Some(format!(
                "note: left out the upload's {name}: the build makes it"
            ))),
            "node_modules" if top => Some(Some(
                "note: left out the upload's node_modules: npm: imports are fetched at build \
                 time into the app's Deno cache"
                    .to_string(),
            )),
            _ => None,
        }
    })?;
    notes.extend(write_config(source, out)?);
    let sdk = out.join(SDK_IN_APP);
    std::fs::create_dir_all(&sdk).map_err(io_err(&sdk))?;
    for module in SDK_MODULES {
        copy_file(
            &sdk_dir.join(module),
            &sdk.join(module),
            0o644,
            crate::python::MAX_FILE_BYTES,
        )?;
    }
    write_entry(out, main, node)?;
    Ok(notes)
}

/// The entry module (see the SDK's `boot.ts`).
fn write_entry(out: &Path, main: &str, node: bool) -> Result<(), BuildError> {
    let entry = out.join(ENTRY);
    let node = if node {
        "// The app uses Node's APIs: node:process's stdout goes to stderr too.\n\
         import \"./sdk/node.ts\";\n"
    } else {
        ""
    };
    let text = format!(
        "// Written by the Ignite build: the instance's entry point.\n\
         // First, before any code of the app: the channel is the SDK's, stdout goes to stderr.\n\
         import \"./sdk/prelude.ts\";\n\
         {node}\
         import * as app from \"../{main}\";\n\
         import {{ boot }} from \"./sdk/boot.ts\";\n\
         \n\
         await boot(app, {main:?});\n"
    );
    // Rewritten after the dependency step: replace, never append.
    let _ = std::fs::remove_file(&entry);
    std::fs::write(&entry, text).map_err(io_err(&entry))
}

/// Writes the tree's `deno.json`: the upload's config (`deno.json`, else `deno.jsonc`), its
/// `importMap` folded into `imports`, and `"ignite"` mapped to the SDK. Returns notes.
fn write_config(source: &Path, out: &Path) -> Result<Vec<String>, BuildError> {
    let mut notes = Vec::new();
    let (mut config, from) = match ["deno.json", "deno.jsonc"]
        .iter()
        .find(|n| source.join(n).is_file())
    {
        Some(name) => {
            let text = std::fs::read_to_string(out.join(name)).map_err(io_err(&out.join(name)))?;
            let value = parse_jsonc(&text)
                .map_err(|e| BuildError::DenoConfig(format!("{name} is not valid JSON: {e}")))?;
            let Value::Object(map) = value else {
                return Err(BuildError::DenoConfig(format!(
                    "{name} must hold a JSON object"
                )));
            };
            (map, Some(*name))
        }
        None => (Map::new(), None),
    };
    if from == Some("deno.jsonc") {
        let jsonc = out.join("deno.jsonc");
        std::fs::remove_file(&jsonc).map_err(io_err(&jsonc))?;
        notes.push("note: deno.jsonc becomes the app's deno.json (comments removed)".into());
    }
    if from == Some("deno.json") && source.join("deno.jsonc").is_file() {
        notes.push("note: deno.json is the app's config; deno.jsonc is not used".into());
    }
    for key in ["workspace", "links"] {
        if config.remove(key).is_some() {
            notes.push(format!(
                "note: the config's {key:?} is ignored: an app is one module tree"
            ));
        }
    }
    if let Some(map_file) = config.remove("importMap") {
        let name = map_file.as_str().unwrap_or_default().to_string();
        let path = inside(out, &name).ok_or_else(|| {
            BuildError::DenoConfig(format!(
                "the config's importMap {name:?} must be a file of the upload"
            ))
        })?;
        let text = std::fs::read_to_string(&path)
            .map_err(|e| BuildError::DenoConfig(format!("the import map {name}: {e}")))?;
        let Value::Object(mut map) = parse_jsonc(&text)
            .map_err(|e| BuildError::DenoConfig(format!("{name} is not valid JSON: {e}")))?
        else {
            return Err(BuildError::DenoConfig(format!(
                "{name} must hold a JSON object"
            )));
        };
        for key in ["imports", "scopes"] {
            if let Some(Value::Object(entries)) = map.remove(key) {
                let merged = config
                    .entry(key)
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(merged) = merged {
                    for (k, v) in entries {
                        merged.entry(k).or_insert(v);
                    }
                }
            }
        }
        notes.push(format!(
            "note: the import map {name} is folded into deno.json's imports"
        ));
    }
    let imports = config
        .entry("imports")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(imports) = imports else {
        return Err(BuildError::DenoConfig(
            "deno.json's \"imports\" must be an object".into(),
        ));
    };
    if let Some(previous) = imports.insert("ignite".into(), SDK_SPECIFIER.into())
        && previous != SDK_SPECIFIER
    {
        notes.push(format!(
            "note: \"ignite\" is the platform's SDK; the config's mapping to {previous} is replaced"
        ));
    }
    // No node_modules directory: npm packages live in the app's Deno cache (a node_modules
    // tree is made of links, which an app tree may not hold).
    match config.get("nodeModulesDir") {
        None => {
            config.insert("nodeModulesDir".into(), "none".into());
        }
        Some(Value::String(v)) if v == "none" => {}
        Some(other) => {
            notes.push(format!(
                "note: the config's nodeModulesDir {other} is replaced by \"none\": npm packages \
                 live in the app's Deno cache"
            ));
            config.insert("nodeModulesDir".into(), "none".into());
        }
    }
    let path = out.join(CONFIG);
    let text = serde_json::to_string_pretty(&Value::Object(config))
        .map_err(|e| BuildError::DenoConfig(e.to_string()))?;
    let _ = std::fs::remove_file(&path);
    std::fs::write(&path, text + "\n").map_err(io_err(&path))?;
    Ok(notes)
}

/// `rel` (a path in the upload) under `out`, if it stays inside.
fn inside(out: &Path, rel: &str) -> Option<PathBuf> {
    let rel = Path::new(rel.strip_prefix("./").unwrap_or(rel));
    rel.components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
        .then(|| out.join(rel))
        .filter(|p| p.is_file())
}

/// Parses JSON with comments (`//`, `/* */`) and trailing commas, as Deno reads its config.
pub fn parse_jsonc(text: &str) -> Result<Value, serde_json::Error> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // A string, escapes and all.
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i = (i + 1).min(bytes.len());
                out.extend_from_slice(&bytes[start..i]);
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i < bytes.len() && !(bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/')) {
                    i += 1;
                }
                i = (i + 2).min(bytes.len());
                out.push(b' ');
            }
            b',' => {
                // A trailing comma: the next significant byte closes the object or array.
                let mut j = i + 1;
                loop {
                    while j < bytes.len() && bytes[j].is_ascii_whitespace() {
                        j += 1;
                    }
                    if bytes[j..].starts_with(b"//") {
                        while j < bytes.len() && bytes[j] != b'\n' {
                            j += 1;
                        }
                    } else if bytes[j..].starts_with(b"/*") {
                        j += 2;
                        while j < bytes.len() && !bytes[j..].starts_with(b"*/") {
                            j += 1;
                        }
                        j = (j + 2).min(bytes.len());
                    } else {
                        break;
                    }
                }
                if !matches!(bytes.get(j), Some(b'}' | b']')) {
                    out.push(b',');
                }
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    serde_json::from_slice(&out)
}

/// Steps 2 to 6, each a run of Deno, jailed or not.
struct Steps<'a> {
    out: &'a Path,
    /// Canonical.
    deno: &'a Path,
    sdk_dir: &'a Path,
    options: &'a BuildOptions,
    deadline: tokio::time::Instant,
}

/// One run of Deno.
struct Run {
    /// After `deno`.
    args: Vec<String>,
    /// The registry through the proxy (or the host's network without one); else none.
    network: bool,
    /// Whether the tree is writable (else read-only).
    writable: bool,
    /// A `DENO_DIR` of its own in the jail's `/tmp` instead of the app's (the sealing script's
    /// own code must not land in the app's cache).
    scratch_cache: bool,
}

/// What a run of Deno left: how it ended and the lines worth quoting in an error.
struct Ran {
    status: std::process::ExitStatus,
    /// Deno's error lines (`error: …`, `TS2322 [ERROR]: …`) and the locations that follow.
    errors: Vec<String>,
    last: Option<String>,
}

impl Steps<'_> {
    /// The tree as the runs see it.
    fn app(&self) -> PathBuf {
        match self.options.jail {
            Some(_) => PathBuf::from(APP_DIR),
            None => self.out.to_path_buf(),
        }
    }

    async fn run(
        &self,
        main: &str,
        log: &mut LogCap<impl FnMut(&str)>,
    ) -> Result<bool, BuildError> {
        let app = self.app();
        let config = format!("--config={}/{CONFIG}", app.display());
        let entry = format!("{}/{ENTRY}", app.display());
        // 2. The dependencies.
        log.line("fetching the app's dependencies (deno install --entrypoint)");
        let ran = self
            .spawn(
                Run {
                    args: vec![
                        "install".into(),
                        config.clone(),
                        // Any host: the registry proxy decides (and says so when it refuses).
                        "--allow-import".into(),
                        "--entrypoint".into(),
                        entry.clone(),
                    ],
                    network: true,
                    writable: true,
                    scratch_cache: false,
                },
                log,
            )
            .await?;
        if !ran.status.success() {
            return Err(failed("loading the app's modules", ran));
        }
        // 3. Node's APIs?
        let ran_info = self.info(&config, &entry).await?;
        let uses_node = match ran_info {
            Some(graph) => graph_uses_node(&graph),
            None => {
                log.line("note: deno info gave no module graph; assuming Node's APIs are used");
                true
            }
        };
        if uses_node {
            log.line("the app uses Node's APIs (node: or npm: imports)");
            let (out, main) = (self.out.to_path_buf(), main.to_string());
            blocking(move || write_entry(&out, &main, true)).await?;
        }
        // 4. Types.
        log.line(&format!("type-checking {main} (deno check)"));
        let ran = self
            .spawn(
                Run {
                    args: vec!["check".into(), config.clone(), entry.clone()],
                    network: false,
                    writable: true,
                    scratch_cache: false,
                },
                log,
            )
            .await?;
        if !ran.status.success() {
            return Err(failed("type-checking the app", ran));
        }
        // 5. The instance's own start, in check mode: evaluates the app, warms the caches.
        log.line(
            "checking that the default export is a handler from main(...), warming the caches",
        );
        let mut args = run_args(
            self.deno,
            &RunOptions {
                app: &app,
                allow_env: &[],
                allow_net: false,
                heap_mb: None,
                check: true,
            },
        );
        args.remove(0);
        let ran = self
            .spawn(
                Run {
                    args,
                    network: false,
                    writable: true,
                    scratch_cache: false,
                },
                log,
            )
            .await?;
        if !ran.status.success() {
            return Err(failed("starting the app", ran));
        }
        // 6. Seal the caches.
        let cache = app.join(CACHE_DIR);
        let seal = self.sdk_dir.join(SEAL_SCRIPT);
        let ran = self
            .spawn(
                Run {
                    args: vec![
                        "run".into(),
                        "--no-config".into(),
                        "--no-lock".into(),
                        format!("--allow-read={}", cache.display()),
                        format!("--allow-write={}", cache.display()),
                        seal.to_string_lossy().into_owned(),
                        cache.to_string_lossy().into_owned(),
                    ],
                    network: false,
                    writable: true,
                    scratch_cache: true,
                },
                log,
            )
            .await?;
        if !ran.status.success() {
            return Err(failed("sealing the app's Deno cache", ran));
        }
        let dir = self.out.join(CACHE_DIR);
        blocking(move || finish_cache(&dir)).await?;
        Ok(uses_node)
    }

    /// `deno info --json` of the entry, offline: the module graph, or `None` if Deno gave none.
    async fn info(&self, config: &str, entry: &str) -> Result<Option<Value>, BuildError> {
        let mut json = String::new();
        let run = Run {
            args: vec!["info".into(), "--json".into(), config.into(), entry.into()],
            network: false,
            writable: false,
            scratch_cache: false,
        };
        let (cmd, _) = self.command(&run);
        let mut quiet = LogCap::new(1 << 20, |_: &str| {});
        let finished = run_logged(
            cmd,
            self.options.timeout,
            self.deadline,
            None,
            &mut quiet,
            |line| {
                json.push_str(line);
                json.push('\n');
                false
            },
        )
        .await?;
        Ok(finished
            .status
            .success()
            .then(|| serde_json::from_str(&json).ok())
            .flatten())
    }

    /// The fixed environment of every run.
    fn env(&self, run: &Run) -> Vec<(OsString, OsString)> {
        let app = self.app();
        let mut env: Vec<(OsString, OsString)> = run_env(&app)
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        if run.scratch_cache {
            env.retain(|(k, _)| k != "DENO_DIR");
            env.push(("DENO_DIR".into(), "/tmp/ignite-deno-tools".into()));
        }
        if run.network {
            // The host's trust store as well as Deno's own (a host whose egress re-signs TLS
            // trusts its own authority there).
            env.push(("DENO_TLS_CA_STORE".into(), "system,mozilla".into()));
        }
        for (k, v) in [
            ("PATH", "/usr/local/bin:/usr/bin:/bin"),
            ("HOME", "/tmp"),
            ("TMPDIR", "/tmp"),
            ("LANG", "C.UTF-8"),
        ] {
            env.push((k.into(), v.into()));
        }
        env
    }

    fn command(&self, run: &Run) -> (Command, Option<DiskWatch>) {
        match &self.options.jail {
            None => {
                let mut cmd = Command::new(self.deno);
                // The host's environment (its proxy settings, say) minus Deno's own settings.
                for (k, _) in std::env::vars_os() {
                    if k.to_string_lossy().starts_with("DENO_") {
                        cmd.env_remove(k);
                    }
                }
                for (k, v) in self.env(run) {
                    if run.scratch_cache && k == "DENO_DIR" {
                        let dir = std::env::temp_dir().join("ignite-deno-tools");
                        cmd.env(k, dir);
                    } else if k != "HOME" && k != "TMPDIR" && k != "PATH" {
                        cmd.env(k, v);
                    }
                }
                cmd.args(&run.args).current_dir(self.out);
                (cmd, None)
            }
            Some(jail) => {
                let spec = self.spec(jail, run);
                let mut cmd = Command::new(&jail.helper);
                cmd.arg("ignite")
                    .arg("__jail")
                    .args(spec.to_args())
                    .env_clear()
                    .current_dir("/");
                let watch = run.writable.then(|| DiskWatch {
                    dir: self.out.to_path_buf(),
                    limit: jail.max_disk_bytes,
                });
                (cmd, watch)
            }
        }
    }

    async fn spawn(&self, run: Run, log: &mut LogCap<impl FnMut(&str)>) -> Result<Ran, BuildError> {
        let (cmd, watch) = self.command(&run);
        let mut errors: Vec<String> = Vec::new();
        let mut quoting = 0usize;
        let mut lines = LogCap::new(usize::MAX, |line: &str| {
            log.line(line);
            let trimmed = line.trim();
            // An error, the source lines Deno quotes and the place (`at file:///app/…`).
            if trimmed.starts_with("error:")
                || trimmed.contains("[ERROR]")
                || trimmed.starts_with("Uncaught")
            {
                quoting = 8;
            }
            if quoting > 0 && !trimmed.is_empty() && errors.len() < 24 {
                errors.push(line.trim_end().to_string());
                quoting = if trimmed.starts_with("at ") {
                    0
                } else {
                    quoting - 1
                };
            }
        });
        let finished = run_logged(
            cmd,
            self.options.timeout,
            self.deadline,
            watch,
            &mut lines,
            |_| true,
        )
        .await?;
        Ok(Ran {
            status: finished.status,
            errors,
            last: finished.last_stderr,
        })
    }

    /// The jail of one run: the Deno binary and the SDK read-only at their paths, the tree at
    /// [`APP_DIR`], as the build user, a scratch `/tmp` for HOME and temporary files. No memory
    /// is capped by address space: V8 reserves tens of GiB up front (the build cgroup holds it).
    fn spec(&self, jail: &JailOptions, run: &Run) -> JailSpec {
        let network = match (&jail.fetch_proxy, run.network) {
            (_, false) => JailNetwork::None,
            (Some(proxy), true) => JailNetwork::Proxy(proxy.clone()),
            (None, true) => JailNetwork::Host,
        };
        let mut read_only = vec![self.deno.to_path_buf(), self.sdk_dir.to_path_buf()];
        if run.network {
            read_only.extend(
                ["/etc/ssl", "/etc/pki", "/etc/ca-certificates"]
                    .into_iter()
                    .map(PathBuf::from)
                    .filter(|p| p.exists()),
            );
        }
        if run.network && jail.fetch_proxy.is_none() {
            // The host's network: its resolver's files too.
            read_only.extend(
                ["/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf"]
                    .into_iter()
                    .map(PathBuf::from)
                    .filter(|p| p.exists()),
            );
        }
        JailSpec {
            root: jail.root.clone(),
            read_only,
            writable: Vec::new(),
            mapped: vec![JailBind {
                source: self.out.to_path_buf(),
                target: APP_DIR.into(),
                writable: run.writable,
            }],
            scratch: Vec::new(),
            tmp_mb: jail.tmp_mb,
            uid: jail.uid,
            cgroups: jail.cgroups.clone(),
            max_file_bytes: jail.max_disk_bytes,
            max_processes: 512,
            max_address_space: 0,
            cwd: APP_DIR.into(),
            env: self.env(run),
            program: self.deno.to_path_buf(),
            args: run.args.iter().map(OsString::from).collect(),
            network,
            user_namespace: None,
            loopback_tunnels: Vec::new(),
        }
    }
}

/// Whether a `deno info --json` graph has a `node:` or `npm:` module.
fn graph_uses_node(graph: &Value) -> bool {
    let npm = graph
        .get("npmPackages")
        .and_then(Value::as_object)
        .is_some_and(|p| !p.is_empty());
    let node = graph
        .get("modules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("specifier").and_then(Value::as_str))
        .any(|s| s.starts_with("node:") || s.starts_with("npm:"));
    let deps = graph
        .get("modules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("dependencies").and_then(Value::as_array))
        .flatten()
        .filter_map(|d| d.get("specifier").and_then(Value::as_str))
        .any(|s| s.starts_with("node:") || s.starts_with("npm:"));
    npm || node || deps
}

fn failed(step: &str, ran: Ran) -> BuildError {
    let message = if ran.errors.is_empty() {
        ran.last
            .unwrap_or_else(|| format!("deno exited with {}", ran.status))
    } else {
        ran.errors.join("\n")
    };
    let message = if message.contains("unsuccessful tunnel") {
        format!(
            "{message}\n(the build's network reaches only {}: import packages from JSR or npm, \
             or copy the module into the app)",
            hosts()
        )
    } else {
        message
    };
    BuildError::DenoFailed {
        step: step.to_string(),
        message,
    }
}

/// `jsr.io, registry.npmjs.org and deno.land`.
fn hosts() -> String {
    let names: Vec<&str> = crate::DENO
        .iter()
        .map(|h| h.trim_end_matches(":443"))
        .collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => names.join(""),
    }
}

/// Step 6's end, on the host: type-check caches removed, an empty `-wal` and `-shm` beside
/// every SQLite database left.
fn finish_cache(dir: &Path) -> Result<(), BuildError> {
    let entries = std::fs::read_dir(dir).map_err(io_err(dir))?;
    let mut databases = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.file_type().map_err(io_err(&path))?.is_file() {
            continue;
        }
        if name.starts_with("check_cache") || name.starts_with("fast_check_cache") {
            std::fs::remove_file(&path).map_err(io_err(&path))?;
            continue;
        }
        if name.ends_with("-wal") || name.ends_with("-shm") || name.ends_with("-journal") {
            continue;
        }
        let mut head = [0u8; 16];
        let is_db = std::fs::File::open(&path)
            .and_then(|mut f| io::Read::read_exact(&mut f, &mut head))
            .is_ok()
            && &head == b"SQLite format 3\0";
        if is_db {
            databases.push(path);
        }
    }
    for db in databases {
        for suffix in ["-wal", "-shm"] {
            let mut name = db.as_os_str().to_owned();
            name.push(suffix);
            let path = PathBuf::from(name);
            let _ = std::fs::remove_file(&path);
            std::fs::write(&path, b"").map_err(io_err(&path))?;
        }
    }
    // Left by the checkpoints of the sealing run, if any.
    for name in ["check_cache_v2-wal", "check_cache_v2-shm"] {
        let _ = std::fs::remove_file(dir.join(name));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonc_comments_and_trailing_commas_are_read() {
        let v = parse_jsonc(
            "{\n  // a comment\n  \"imports\": { \"a\": \"https://x/y//z\", /* b */ },\n  \"s\": \"/* not a comment */ \\\" //\",\n  \"list\": [1, 2, /* c */ ],\n}\n",
        )
        .unwrap();
        assert_eq!(v["imports"]["a"], "https://x/y//z");
        assert_eq!(v["s"], "/* not a comment */ \" //");
        assert_eq!(v["list"], serde_json::json!([1, 2]));
        assert!(parse_jsonc("{\"a\": }").is_err());
    }

    #[test]
    fn the_instance_command_line_has_only_the_permissions_it_needs() {
        let env = vec!["GREETING".to_string(), "API_KEY".to_string()];
        let args = run_args(
            Path::new("/opt/deno"),
            &RunOptions {
                app: Path::new(APP_DIR),
                allow_env: &env,
                allow_net: false,
                heap_mb: Some(96),
                check: false,
            },
        );
        assert_eq!(
            args.join(" "),
            "/opt/deno run --cached-only --no-prompt --frozen --config=/app/deno.json \
             --allow-read=/app --allow-env=GREETING,API_KEY --v8-flags=--max-heap-size=96 \
             /app/.ignite/main.ts"
        );
        let bare = run_args(
            Path::new("/opt/deno"),
            &RunOptions {
                app: Path::new(APP_DIR),
                allow_env: &[],
                allow_net: true,
                heap_mb: None,
                check: true,
            },
        );
        assert!(
            !bare.iter().any(|a| a.starts_with("--allow-env")),
            "{bare:?}"
        );
        assert!(bare.contains(&"--allow-net".to_string()));
        assert_eq!(bare.last().map(String::as_str), Some("check"));
    }

    #[test]
    fn a_graph_with_node_or_npm_modules_uses_node() {
        let plain = serde_json::json!({"modules": [{"specifier": "file:///app/main.ts"}]});
        assert!(!graph_uses_node(&plain));
        let npm = serde_json::json!({"modules": [], "npmPackages": {"ms@2.1.3": {}}});
        assert!(graph_uses_node(&npm));
        let node = serde_json::json!({"modules": [{"specifier": "file:///app/main.ts",
            "dependencies": [{"specifier": "node:fs"}]}]});
        assert!(graph_uses_node(&node));
    }
}
