//! Deno builds against the real thing: the `deno` binary of the npm registry's `deno` package
//! (what `.ci/run` installs), the npm registry through the registry proxy, the real build jail,
//! the SDK (`sdks/deno`), and the built tree run as an instance runs it: read-only at `/app`,
//! offline, `--cached-only`.
//!
//! Like `jailed.rs`, this test binary is its own jail helper (`<helper> ignite __jail <spec>`),
//! hence no libtest harness; a filter argument selects tests by name. The jailed tests run as
//! root (the jail needs it); elsewhere they say so and pass vacuously, and so does everything
//! when no Deno binary is installed. `an_npm_import_…` needs registry.npmjs.org reachable.
//! jsr.io is not reachable from the machine these tests were written on, so no test fetches a
//! `jsr:` import (the proxy allows it, [`ignite_builder::DENO`]).

mod harness;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ignite_builder::deno::{APP_DIR, DenoArtifact, DenoBuild, RunOptions, run_args, run_env};
use ignite_builder::{BuildError, BuildOptions, JailOptions, RegistryProxy, Sdk};
use ignite_sandbox::jail::{JailBind, JailNetwork, JailSpec};

/// An unprivileged uid with no account, as the server's build uid.
const BUILD_UID: u32 = 1_899_999_996;

use harness::Test;

const TESTS: &[Test] = &[
    ("the_sdk_unit_tests_pass", the_sdk_unit_tests_pass),
    (
        "the_seed_builds_and_runs_offline_from_a_read_only_tree_with_warm_caches",
        the_seed_builds_and_runs_offline_from_a_read_only_tree_with_warm_caches,
    ),
    (
        "a_local_module_and_the_users_deno_json_imports_work",
        a_local_module_and_the_users_deno_json_imports_work,
    ),
    (
        "a_type_error_fails_with_denos_message",
        a_type_error_fails_with_denos_message,
    ),
    (
        "a_syntax_error_fails_with_denos_message",
        a_syntax_error_fails_with_denos_message,
    ),
    (
        "a_default_export_that_is_not_a_handler_fails_the_check",
        a_default_export_that_is_not_a_handler_fails_the_check,
    ),
    (
        "an_import_that_throws_fails_with_its_error",
        an_import_that_throws_fails_with_its_error,
    ),
    ("no_main_is_refused", no_main_is_refused),
    (
        "an_npm_import_is_fetched_through_the_proxy_and_runs_cached_only",
        an_npm_import_is_fetched_through_the_proxy_and_runs_cached_only,
    ),
    (
        "a_host_off_the_allow_list_is_refused_by_the_proxy",
        a_host_off_the_allow_list_is_refused_by_the_proxy,
    ),
    (
        "an_unconfined_build_runs_where_it_is",
        an_unconfined_build_runs_where_it_is,
    ),
];

fn main() {
    let prerequisite = |chosen: usize| {
        let Some(deno) = deno() else {
            println!(
                "skipping {chosen} Deno build tests: no Deno binary (install it with `npm \
                 install --prefix /opt/ignite-deno deno`, or set IGNITE_DENO)"
            );
            return false;
        };
        println!("Deno: {}", deno.display());
        true
    };
    harness::main(TESTS, "jailed Deno build tests", prerequisite, || {});
}

/// The Deno binary: `IGNITE_DENO`, else where `.ci/run` installs it.
fn deno() -> Option<PathBuf> {
    let candidates = std::env::var_os("IGNITE_DENO")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            ignite_builder::deno::DEFAULT_BINARIES
                .iter()
                .map(PathBuf::from),
        );
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .and_then(|p| std::fs::canonicalize(p).ok())
}

/// The repository's Deno SDK.
fn sdk_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdks/deno");
    std::fs::canonicalize(&dir).unwrap_or(dir)
}

/// The seed, word for word.
const SEED: &str = r#"import { main } from "ignite";

export default main(async (req, ctx) => {
  const message = req.field<string>("message") ?? "Hello from Deno!";
  return { message, execution_id: ctx.executionId, function_id: ctx.functionId };
});
"#;

/// A scratch directory holding `source/` (the upload) and, once built, `app/` and `app.tar`.
struct Scene {
    base: tempfile::TempDir,
    source: PathBuf,
}

impl Scene {
    fn new(name: &str, files: &[(&str, &str)]) -> Scene {
        let base = tempfile::Builder::new()
            .prefix(&format!("deno-{name}-"))
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let source = base.path().join("source");
        std::fs::create_dir_all(&source).unwrap();
        for (path, text) in files {
            let path = source.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
        }
        Scene { base, source }
    }

    fn out(&self, name: &str) -> PathBuf {
        self.base.path().join(name)
    }

    /// Builds the source into `app`, jailed with the npm registry through the proxy (or
    /// unconfined); returns the result and the build log.
    fn build(&self, jailed: bool) -> (Result<DenoArtifact, BuildError>, String) {
        self.build_with(jailed, ignite_builder::DENO)
    }

    fn build_with(
        &self,
        jailed: bool,
        allowed: &[&str],
    ) -> (Result<DenoArtifact, BuildError>, String) {
        let out = self.out("app");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let proxy = runtime
            .block_on(async { RegistryProxy::start(&self.base.path().join("proxy.sock"), allowed) })
            .unwrap();
        let mut options = options(jailed);
        if let Some(jail) = &mut options.jail {
            jail.fetch_proxy = Some(proxy.path().to_path_buf());
        }
        let (deno, sdk) = (deno().unwrap(), sdk_dir());
        let build = DenoBuild {
            source: &self.source,
            out: &out,
            deno: &deno,
            sdk_dir: &sdk,
        };
        let mut log = String::new();
        let start = Instant::now();
        let result = runtime.block_on(ignite_builder::deno::build(&build, &options, |line| {
            log.push_str(line);
            log.push('\n');
        }));
        println!(
            "  built {} ({}) in {:.1?}: {}",
            out.display(),
            if jailed { "jailed" } else { "unconfined" },
            start.elapsed(),
            match &result {
                Ok(a) => format!("{} bytes, {}", a.size, a.digest),
                Err(e) => format!("error: {e}"),
            }
        );
        drop(proxy);
        (result, log)
    }
}

fn options(jailed: bool) -> BuildOptions {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let mut options = BuildOptions::new(
        Sdk::bundled(),
        tmp.join("deno-unused-target"),
        Duration::from_secs(300),
    );
    if jailed {
        let root = tmp.join("deno-jail-root");
        std::fs::create_dir_all(&root).unwrap();
        options.jail = Some(JailOptions {
            helper: std::env::current_exe().unwrap(),
            root,
            uid: BUILD_UID,
            cgroups: Vec::new(),
            tmp_mb: 256,
            max_disk_bytes: 1 << 30,
            max_address_space: 0,
            fetch_proxy: None,
        });
    }
    options
}

fn built(result: Result<DenoArtifact, BuildError>, log: &str) -> DenoArtifact {
    result.unwrap_or_else(|e| panic!("{e}\n--- log ---\n{log}"))
}

fn refused(result: Result<DenoArtifact, BuildError>, log: &str) -> String {
    match result {
        Ok(a) => panic!("built {a:?}\n--- log ---\n{log}"),
        Err(e) => e.to_string(),
    }
}

/// Runs the built `tree` the way an instance does — read-only at `/app`, no network, the
/// instance's command line in `check` mode, `-L debug` to see the cache hits — in a jail of
/// its own. Returns (success, stderr).
fn run_built(tree: &Path, extra_env: &[(&str, &str)]) -> (bool, String) {
    let deno = deno().unwrap();
    let mut argv = run_args(
        &deno,
        &RunOptions {
            app: Path::new(APP_DIR),
            allow_env: &[],
            allow_net: false,
            heap_mb: Some(96),
            check: true,
        },
    );
    argv.remove(0);
    argv.insert(1, "--log-level=debug".into());
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deno-run-root");
    std::fs::create_dir_all(&root).unwrap();
    let mut env: Vec<(OsString, OsString)> = run_env(Path::new(APP_DIR))
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    env.extend(extra_env.iter().map(|(k, v)| (k.into(), v.into())));
    let spec = JailSpec {
        root,
        read_only: vec![deno.clone()],
        writable: Vec::new(),
        mapped: vec![JailBind {
            source: tree.to_path_buf(),
            target: APP_DIR.into(),
            writable: false,
        }],
        scratch: Vec::new(),
        tmp_mb: 64,
        uid: BUILD_UID,
        cgroups: Vec::new(),
        max_file_bytes: 1 << 20,
        max_processes: 0,
        max_address_space: 0,
        cwd: "/".into(),
        env,
        program: deno,
        args: argv.into_iter().map(OsString::from).collect(),
        network: JailNetwork::None,
        user_namespace: None,
        loopback_tunnels: Vec::new(),
    };
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("ignite")
        .arg("__jail")
        .args(spec.to_args())
        .env_clear()
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

/// The modules of the app's own tree that a run found in V8's code cache, and those it had
/// to compile.
fn cache_hits(run: &str) -> (Vec<String>, Vec<String>) {
    let pick = |what: &str| -> Vec<String> {
        run.lines()
            .filter_map(|l| l.split_once(what).map(|(_, m)| m))
            .map(|m| m.split(',').next().unwrap_or(m).trim().to_string())
            .filter(|m| m.starts_with("file:///app/"))
            .collect()
    };
    (
        pick("V8 code cache hit for ES module: "),
        pick("Updating V8 code cache for ES module: "),
    )
}

fn the_sdk_unit_tests_pass() {
    let deno = deno().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(&deno)
        .args([
            "test",
            "--quiet",
            "--allow-read",
            "--allow-run",
            "--allow-env",
            "tests/",
        ])
        .current_dir(sdk_dir())
        .env("DENO_DIR", cache.path())
        .env("NO_COLOR", "1")
        .env("DENO_NO_UPDATE_CHECK", "1")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    println!("{}", text.lines().last().unwrap_or(""));
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("passed") && text.contains("0 failed"),
        "{text}"
    );
}

fn the_seed_builds_and_runs_offline_from_a_read_only_tree_with_warm_caches() {
    let scene = Scene::new(
        "seed",
        &[
            ("main.ts", SEED),
            ("static/index.html", "<p>hi</p>\n"),
            (".deno/stale", "the upload's own cache is left out"),
            ("node_modules/x/index.js", "left out"),
        ],
    );
    let (result, log) = scene.build(true);
    let artifact = built(result, &log);
    let app = scene.out("app");
    assert_eq!(artifact.main, "main.ts");
    assert!(!artifact.uses_node, "{artifact:?}");
    assert!(artifact.deno_version.starts_with('2'), "{artifact:?}");
    assert!(artifact.digest.starts_with("sha256:"), "{artifact:?}");
    assert_eq!(artifact.tar, scene.out("app.tar"));
    assert!(
        log.contains("the handler is the default export of main.ts"),
        "{log}"
    );
    for file in [
        "main.ts",
        "deno.json",
        ".ignite/main.ts",
        ".ignite/sdk/mod.ts",
        ".ignite/sdk/prelude.ts",
        ".deno/v8_code_cache_v2",
        ".deno/v8_code_cache_v2-wal",
        ".deno/v8_code_cache_v2-shm",
        "static/index.html",
    ] {
        assert!(app.join(file).is_file(), "{file} is missing\n{log}");
    }
    assert!(!app.join(".deno/stale").exists());
    assert!(!app.join("node_modules").exists());
    assert!(!app.join(".ignite/sdk/tests").exists());
    assert!(
        !app.join(".deno/check_cache_v2").exists(),
        "the type-check cache stays behind"
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(app.join("deno.json")).unwrap()).unwrap();
    assert_eq!(config["imports"]["ignite"], "./.ignite/sdk/mod.ts");
    let entry = std::fs::read_to_string(app.join(".ignite/main.ts")).unwrap();
    assert!(
        entry.find("prelude.ts") < entry.find("../main.ts"),
        "the prelude comes first: {entry}"
    );
    // The tar unpacks to the same tree, which runs read-only and offline, every module of it
    // from V8's code cache (nothing compiled at start).
    let unpacked = scene.out("unpacked");
    ignite_builder::oci::unpack_app(&artifact.tar, &unpacked).unwrap();
    let (ok, run) = run_built(&unpacked, &[]);
    assert!(ok, "{run}");
    assert!(
        run.contains("the handler is the default export of main.ts"),
        "{run}"
    );
    let (hits, misses) = cache_hits(&run);
    for module in [
        "file:///app/.ignite/main.ts",
        "file:///app/main.ts",
        "file:///app/.ignite/sdk/mod.ts",
        "file:///app/.ignite/sdk/boot.ts",
    ] {
        assert!(hits.iter().any(|h| h == module), "{module} missed: {run}");
    }
    assert!(misses.is_empty(), "compiled at start: {misses:?}\n{run}");
    assert!(!run.contains("Failed to open cache"), "{run}");
}

fn a_local_module_and_the_users_deno_json_imports_work() {
    let scene = Scene::new(
        "local",
        &[
            (
                "main.ts",
                "import { main } from \"ignite\";\nimport { greet } from \"./greet.ts\";\nimport { shout } from \"@lib/shout.ts\";\n\nexport default main((req) => ({ text: shout(greet(req.field<string>(\"name\") ?? \"you\")) }));\n",
            ),
            (
                "greet.ts",
                "export function greet(name: string): string {\n  return `hello ${name}`;\n}\n",
            ),
            (
                "lib/shout.ts",
                "export const shout = (s: string): string => s.toUpperCase();\n",
            ),
            (
                "deno.jsonc",
                "{\n  // the user's own config, with a comment\n  \"imports\": { \"@lib/\": \"./lib/\", },\n  \"compilerOptions\": { \"strict\": true },\n}\n",
            ),
        ],
    );
    let (result, log) = scene.build(true);
    built(result, &log);
    let app = scene.out("app");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(app.join("deno.json")).unwrap()).unwrap();
    assert_eq!(config["imports"]["@lib/"], "./lib/", "{config}");
    assert_eq!(
        config["imports"]["ignite"], "./.ignite/sdk/mod.ts",
        "{config}"
    );
    assert_eq!(config["compilerOptions"]["strict"], true, "{config}");
    assert!(!app.join("deno.jsonc").exists());
    assert!(
        log.contains("deno.jsonc becomes the app's deno.json"),
        "{log}"
    );
    let (ok, run) = run_built(&app, &[]);
    assert!(ok, "{run}");
    let (hits, misses) = cache_hits(&run);
    assert!(
        hits.iter().any(|h| h == "file:///app/greet.ts")
            && hits.iter().any(|h| h == "file:///app/lib/shout.ts"),
        "{run}"
    );
    assert!(misses.is_empty(), "{misses:?}");
}

fn a_type_error_fails_with_denos_message() {
    let scene = Scene::new(
        "types",
        &[(
            "main.ts",
            "import { main } from \"ignite\";\n\nconst count: number = \"three\";\n\nexport default main(() => ({ count }));\n",
        )],
    );
    let (result, log) = scene.build(true);
    let error = refused(result, &log);
    assert!(error.contains("type-checking the app failed"), "{error}");
    assert!(error.contains("TS2322"), "{error}\n{log}");
    assert!(
        error.contains("Type 'string' is not assignable to type 'number'"),
        "{error}"
    );
    assert!(error.contains("main.ts:3"), "the place: {error}");
    assert!(log.contains("TS2322"), "{log}");
}

fn a_syntax_error_fails_with_denos_message() {
    let scene = Scene::new(
        "syntax",
        &[(
            "main.ts",
            "import { main } from \"ignite\";\n\nexport default main((req) => {\n  return { ok: true ;\n});\n",
        )],
    );
    let (result, log) = scene.build(true);
    let error = refused(result, &log);
    assert!(
        error.contains("loading the app's modules failed"),
        "{error}"
    );
    assert!(error.contains("main.ts:4"), "the place: {error}\n{log}");
}

fn a_default_export_that_is_not_a_handler_fails_the_check() {
    for (name, code, says) in [
        (
            "plain",
            "export default async function handler() { return {}; }\n",
            "plain function, not a handler from main()",
        ),
        (
            "none",
            "import { main } from \"ignite\";\nexport const handler = main(() => 1);\n",
            "main.ts has no default export",
        ),
    ] {
        let scene = Scene::new(name, &[("main.ts", code)]);
        let (result, log) = scene.build(true);
        let error = refused(result, &log);
        assert!(error.contains("starting the app failed"), "{error}");
        assert!(error.contains(says), "{name}: {error}\n{log}");
    }
}

fn an_import_that_throws_fails_with_its_error() {
    let scene = Scene::new(
        "throws",
        &[(
            "main.ts",
            "import { main } from \"ignite\";\n\nthrow new Error(\"not configured\");\n\nexport default main(() => 1);\n",
        )],
    );
    let (result, log) = scene.build(true);
    let error = refused(result, &log);
    assert!(error.contains("not configured"), "{error}\n{log}");
}

fn no_main_is_refused() {
    let scene = Scene::new("nomain", &[("handler.ts", "export default 1;\n")]);
    let (result, log) = scene.build(true);
    let error = refused(result, &log);
    assert!(error.contains("main.ts (or main.js)"), "{error}");
}

fn an_npm_import_is_fetched_through_the_proxy_and_runs_cached_only() {
    let scene = Scene::new(
        "npm",
        &[(
            "main.ts",
            "import { main } from \"ignite\";\nimport ms from \"npm:ms@2.1.3\";\n\nexport default main(() => ({ minute: ms(60_000) }));\n",
        )],
    );
    let (result, log) = scene.build(true);
    let artifact = built(result, &log);
    assert!(artifact.uses_node, "{artifact:?}");
    assert!(log.contains("registry.npmjs.org/ms"), "the download: {log}");
    let app = scene.out("app");
    assert!(
        app.join(".deno/npm/registry.npmjs.org/ms/2.1.3/package.json")
            .is_file(),
        "{log}"
    );
    assert!(app.join("deno.lock").is_file());
    let entry = std::fs::read_to_string(app.join(".ignite/main.ts")).unwrap();
    assert!(entry.contains("./sdk/node.ts"), "{entry}");
    // Offline, read-only, --cached-only: the package comes from the tree.
    let (ok, run) = run_built(&app, &[]);
    assert!(ok, "{run}");
    let (hits, misses) = cache_hits(&run);
    assert!(
        hits.iter().any(|h| h.ends_with("/ms/2.1.3/index.js")),
        "{hits:?}\n{run}"
    );
    assert!(misses.is_empty(), "{misses:?}");
}

fn a_host_off_the_allow_list_is_refused_by_the_proxy() {
    let scene = Scene::new(
        "offlist",
        &[(
            "main.ts",
            "import { main } from \"ignite\";\nimport x from \"https://example.com/x.ts\";\n\nexport default main(() => x);\n",
        )],
    );
    let (result, log) = scene.build(true);
    let error = refused(result, &log);
    assert!(
        error.contains("loading the app's modules failed"),
        "{error}"
    );
    assert!(error.contains("example.com"), "{error}\n{log}");
    assert!(
        error.contains("reaches only jsr.io, registry.npmjs.org and deno.land"),
        "{error}"
    );
}

fn an_unconfined_build_runs_where_it_is() {
    let scene = Scene::new("unconfined", &[("main.js", &SEED.replace("<string>", ""))]);
    let (result, log) = scene.build(false);
    let artifact = built(result, &log);
    assert_eq!(artifact.main, "main.js");
    let entry = std::fs::read_to_string(scene.out("app/.ignite/main.ts")).unwrap();
    assert!(entry.contains("../main.js"), "{entry}");
}
