//! Go builds against the real thing: Debian's `go` (`apt-get install golang-go`), the real
//! build jail, the repository's Go SDK (`sdks/go`).
//!
//! Like `jailed.rs`, this test binary is its own jail helper (`<helper> ignite __jail <spec>`),
//! hence no libtest harness; a filter argument selects tests by name. Runs as root (the jail
//! needs it); elsewhere it says so and passes vacuously. No Go module proxy is reachable from
//! the test machines: the third-party module here is a small fake one (`example.com/greet`),
//! vendored; a module that would need a download is expected to fail, cleanly.
//!
//! Every build shares one cache directory (`BuildOptions::target_dir`), so the standard library
//! is compiled once for the whole run.

mod harness;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ignite_builder::go::{GoArtifact, GoBuild};
use ignite_builder::{BuildError, BuildOptions, JailOptions, RegistryProxy, Sdk};

/// An unprivileged uid with no account, as the server's build uid.
const BUILD_UID: u32 = 1_899_999_996;
/// Debian's toolchain.
const GO: &str = "/usr/bin/go";

use harness::Test;

const TESTS: &[Test] = &[
    (
        "the_seed_handler_builds_into_a_static_binary",
        the_seed_handler_builds_into_a_static_binary,
    ),
    (
        "an_unconfined_build_ignores_the_hosts_go_environment",
        an_unconfined_build_ignores_the_hosts_go_environment,
    ),
    (
        "a_compile_error_fails_with_the_compilers_message",
        a_compile_error_fails_with_the_compilers_message,
    ),
    ("a_vendored_module_builds", a_vendored_module_builds),
    (
        "a_vendored_copy_of_the_sdk_is_replaced_by_the_platforms",
        a_vendored_copy_of_the_sdk_is_replaced_by_the_platforms,
    ),
    (
        "a_module_inside_the_upload_builds_through_its_replace",
        a_module_inside_the_upload_builds_through_its_replace,
    ),
    (
        "a_module_needing_a_download_fails_cleanly",
        a_module_needing_a_download_fails_cleanly,
    ),
    ("no_go_mod_is_refused", no_go_mod_is_refused),
    (
        "a_module_that_is_not_package_main_is_refused",
        a_module_that_is_not_package_main_is_refused,
    ),
    (
        "replacements_and_links_outside_are_refused",
        replacements_and_links_outside_are_refused,
    ),
    ("a_rebuild_reuses_the_cache", a_rebuild_reuses_the_cache),
];

/// What an unconfined build would pick up from the host, were the host's `GO*` variables
/// passed on: every one of them would break the build (a Windows binary is not a static ELF).
const HOSTILE_ENV: &[(&str, &str)] = &[
    ("GOOS", "windows"),
    ("GOFLAGS", "-tags=ignite_hostile -mod=readonly"),
    ("GOPROXY", "http://127.0.0.1:9"),
    ("CGO_ENABLED", "1"),
    ("GOENV", "/nonexistent/go/env"),
];

fn main() {
    harness::main(
        TESTS,
        "jailed Go build tests",
        |_| true,
        || {
            if !Path::new(GO).exists() {
                panic!("{GO} is missing: apt-get install golang-go");
            }
            for (k, v) in HOSTILE_ENV {
                // SAFETY: nothing but this thread runs yet (no runtime, no test has started).
                unsafe { std::env::set_var(k, v) };
            }
        },
    );
}

/// The repository's Go SDK.
fn sdk_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdks/go");
    std::fs::canonicalize(&dir).unwrap_or(dir)
}

/// The issue's handler, word for word.
const SEED: &str = r#"package main

import "ignite.dev/sdk/ignite"

func handler(req *ignite.Request, ctx *ignite.Context) (any, error) {
	message, err := ignite.Field[string](req, "message")
	if err != nil {
		message = "Hello from Go!"
	}
	return map[string]any{"message": message, "execution_id": ctx.ExecutionID(), "function_id": ctx.FunctionID()}, nil
}

func main() { ignite.Main(handler) }
"#;

fn go_mod(module: &str) -> String {
    format!("module {module}\n\ngo 1.19\n")
}

/// The fake third-party module: `example.com/greet` v0.1.0.
const GREET: &str = "package greet\n\n// Hello greets.\nfunc Hello(name string) string { return \"Hello, \" + name + \"!\" }\n";

const GREETER: &str = r#"package main

import (
	"example.com/greet"
	"ignite.dev/sdk/ignite"
)

func handler(req *ignite.Request, ctx *ignite.Context) (any, error) {
	return greet.Hello(ignite.FieldOr(req, "name", "world")), nil
}

func main() { ignite.Main(handler) }
"#;

/// An app using `example.com/greet`, vendored as `go mod vendor` writes it.
fn vendored_greeter() -> Vec<(&'static str, String)> {
    vec![
        (
            "go.mod",
            "module example.com/greeter\n\ngo 1.19\n\nrequire example.com/greet v0.1.0\n".into(),
        ),
        ("main.go", GREETER.into()),
        ("vendor/example.com/greet/greet.go", GREET.into()),
        (
            "vendor/modules.txt",
            "# example.com/greet v0.1.0\n## explicit; go 1.18\nexample.com/greet\n".into(),
        ),
    ]
}

/// A scratch directory holding `source/` (the upload) and the build outputs.
struct Scene {
    base: tempfile::TempDir,
    source: PathBuf,
}

impl Scene {
    fn new<S: AsRef<str>>(name: &str, files: &[(&str, S)]) -> Scene {
        let base = tempfile::Builder::new()
            .prefix(&format!("go-{name}-"))
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let source = base.path().join("source");
        std::fs::create_dir_all(&source).unwrap();
        for (path, text) in files {
            let path = source.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text.as_ref()).unwrap();
        }
        Scene { base, source }
    }

    fn out(&self, name: &str) -> PathBuf {
        self.base.path().join(name)
    }

    fn build(&self, jailed: bool) -> (Result<GoArtifact, BuildError>, String) {
        self.build_into("out", jailed)
    }

    /// Builds the source into `name` (jailed, with the Go proxy's hosts through the registry
    /// proxy, or unconfined); returns the result and the build log.
    fn build_into(&self, name: &str, jailed: bool) -> (Result<GoArtifact, BuildError>, String) {
        let out = self.out(name);
        let mut options = options(jailed);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let proxy = runtime.block_on(async {
            RegistryProxy::start(
                &self.base.path().join("proxy.sock"),
                ignite_builder::GO_PROXY,
            )
            .unwrap()
        });
        if let Some(jail) = &mut options.jail {
            jail.fetch_proxy = Some(proxy.path().to_path_buf());
        }
        let sdk = sdk_dir();
        let build = GoBuild {
            source: &self.source,
            out: &out,
            go: Path::new(GO),
            sdk_dir: &sdk,
        };
        let mut log = String::new();
        let start = Instant::now();
        let result = runtime.block_on(ignite_builder::go::build(&build, &options, |line| {
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

/// The cache every build of this run shares.
fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-cache")
}

fn options(jailed: bool) -> BuildOptions {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let mut options = BuildOptions::new(Sdk::bundled(), cache_dir(), Duration::from_secs(600));
    if jailed {
        let root = tmp.join("go-jail-root");
        std::fs::create_dir_all(&root).unwrap();
        options.jail = Some(JailOptions {
            helper: std::env::current_exe().unwrap(),
            root,
            uid: BUILD_UID,
            cgroups: Vec::new(),
            tmp_mb: 256,
            max_disk_bytes: 2 << 30,
            max_address_space: 0,
            fetch_proxy: None,
        });
    }
    options
}

fn built(result: Result<GoArtifact, BuildError>, log: &str) -> GoArtifact {
    result.unwrap_or_else(|e| panic!("{e}\n--- log ---\n{log}"))
}

fn refused(result: Result<GoArtifact, BuildError>, log: &str) -> BuildError {
    match result {
        Ok(a) => panic!("built {a:?}\n--- log ---\n{log}"),
        Err(e) => e,
    }
}

/// The program header types of an ELF64 file.
fn program_headers(bytes: &[u8]) -> Vec<u32> {
    assert_eq!(&bytes[..4], b"\x7fELF");
    let phoff = u64::from_le_bytes(bytes[32..40].try_into().unwrap()) as usize;
    let size = u16::from_le_bytes([bytes[54], bytes[55]]) as usize;
    let count = u16::from_le_bytes([bytes[56], bytes[57]]) as usize;
    (0..count)
        .map(|i| {
            let o = phoff + i * size;
            u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap())
        })
        .collect()
}

/// Runs a built handler with its stdin closed: it must say Hello on stdout and exit 0 at the
/// end of its input. Returns its stderr.
fn says_hello(binary: &Path) -> String {
    let out = std::process::Command::new(binary)
        .stdin(std::process::Stdio::null())
        .env_clear()
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{}: {stderr}", out.status);
    // "IG", the length, Hello (variant 0), protocol version 1, "0.1.0".
    assert_eq!(&out.stdout[..2], b"IG", "{:?}", out.stdout);
    assert_eq!(&out.stdout[6..8], &[0, 1], "{:?}", out.stdout);
    assert!(out.stdout.ends_with(b"\x050.1.0"), "{:?}", out.stdout);
    stderr
}

fn the_seed_handler_builds_into_a_static_binary() {
    let scene = Scene::new(
        "seed",
        &[
            ("go.mod", go_mod("example.com/app").as_str()),
            ("main.go", SEED),
        ],
    );
    let (result, log) = scene.build(true);
    let artifact = built(result, &log);
    let out = scene.out("out");
    assert_eq!(artifact.path, out.join("handler"));
    assert!(artifact.go_version.starts_with("go1."), "{artifact:?}");
    let bytes = std::fs::read(&artifact.path).unwrap();
    assert_eq!(artifact.size, bytes.len() as u64);
    assert!(artifact.digest.starts_with("sha256:"), "{artifact:?}");
    let headers = program_headers(&bytes);
    assert!(!headers.contains(&3), "a PT_INTERP: {headers:?}");
    assert!(!headers.contains(&2), "a PT_DYNAMIC: {headers:?}");
    // Stripped (-s -w): no symbol table, no DWARF; small.
    assert!(artifact.size < 4 << 20, "{} bytes", artifact.size);
    println!("  the seed handler's binary: {} bytes", artifact.size);
    assert!(log.contains("built a static binary: handler"), "{log}");
    // The build's copy of the upload is gone; the output is the server's again.
    assert!(!out.join("src").exists());
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&artifact.path).unwrap().uid(), 0);
    says_hello(&artifact.path);
    // The upload was only read: its go.mod does not name the SDK.
    assert_eq!(
        std::fs::read_to_string(scene.source.join("go.mod")).unwrap(),
        go_mod("example.com/app")
    );
}

fn an_unconfined_build_ignores_the_hosts_go_environment() {
    // main() set HOSTILE_ENV in this process: none of it may reach the go command.
    for (k, v) in HOSTILE_ENV {
        assert_eq!(std::env::var(k).as_deref(), Ok(*v));
    }
    let scene = Scene::new(
        "unconfined",
        &[
            ("go.mod", go_mod("example.com/app").as_str()),
            ("main.go", SEED),
        ],
    );
    let (result, log) = scene.build(false);
    let artifact = built(result, &log);
    says_hello(&artifact.path);
}

fn a_compile_error_fails_with_the_compilers_message() {
    let broken = SEED.replace("ctx.FunctionID()", "ctx.Nope()");
    let scene = Scene::new(
        "broken",
        &[
            ("go.mod", go_mod("example.com/broken").as_str()),
            ("main.go", broken.as_str()),
        ],
    );
    let (result, log) = scene.build(true);
    let err = refused(result, &log);
    assert!(
        matches!(&err, BuildError::GoBuildFailed { first: Some(_), .. }),
        "{err:?}\n{log}"
    );
    let message = err.to_string();
    let line =
        "./main.go:10:98: ctx.Nope undefined (type *ignite.Context has no field or method Nope)";
    assert!(
        message.starts_with("the Go build failed (go build exit status: ")
            && message.contains(&format!(
                "): {line}; the build log has the compiler's messages"
            )),
        "{message}"
    );
    assert!(log.contains(line), "{log}");
    assert!(log.contains("# example.com/broken"), "{log}");
    assert!(!scene.out("out/handler").exists());
}

fn a_vendored_module_builds() {
    let scene = Scene::new("vendored", &vendored_greeter());
    let (result, log) = scene.build(true);
    let artifact = built(result, &log);
    assert!(log.contains("-mod=vendor"), "{log}");
    says_hello(&artifact.path);
    let bytes = std::fs::read(&artifact.path).unwrap();
    assert!(
        bytes.windows(7).any(|w| w == b"Hello, "),
        "greet's code is not in the binary"
    );
    // The upload's vendor tree was left alone.
    assert!(!scene.source.join("vendor/ignite.dev").exists());
}

fn a_vendored_copy_of_the_sdk_is_replaced_by_the_platforms() {
    // An upload that vendored some other (broken) ignite.dev/sdk: the platform's wins.
    let mut files = vendored_greeter();
    files[0].1.push_str("require ignite.dev/sdk v1.2.3\n");
    files.push((
        "vendor/ignite.dev/sdk/ignite/ignite.go",
        "package ignite\n\nthis does not compile\n".into(),
    ));
    files[3]
        .1
        .push_str("# ignite.dev/sdk v1.2.3\n## explicit; go 1.18\nignite.dev/sdk/ignite\n");
    let scene = Scene::new("vendored-sdk", &files);
    let (result, log) = scene.build(true);
    let artifact = built(result, &log);
    says_hello(&artifact.path);
}

fn a_module_inside_the_upload_builds_through_its_replace() {
    let scene = Scene::new(
        "replaced",
        &[
            (
                "go.mod",
                "module example.com/greeter\n\ngo 1.19\n\nrequire example.com/greet v0.1.0\n\n\
                 replace example.com/greet => ./third_party/greet\n",
            ),
            ("main.go", GREETER),
            (
                "third_party/greet/go.mod",
                "module example.com/greet\n\ngo 1.18\n",
            ),
            ("third_party/greet/greet.go", GREET),
        ],
    );
    let (result, log) = scene.build(true);
    let artifact = built(result, &log);
    // Nothing to download: the fetch step did not run.
    assert!(!log.contains("go mod download"), "{log}");
    says_hello(&artifact.path);
}

fn a_module_needing_a_download_fails_cleanly() {
    let scene = Scene::new(
        "download",
        &[
            (
                "go.mod",
                "module example.com/greeter\n\ngo 1.19\n\nrequire example.com/greet v0.1.0\n",
            ),
            ("main.go", GREETER),
        ],
    );
    let start = Instant::now();
    let (result, log) = scene.build(true);
    let err = refused(result, &log);
    assert!(
        matches!(&err, BuildError::GoFetchFailed { last: Some(_), .. }),
        "{err:?}\n{log}"
    );
    let message = err.to_string();
    println!("  {message}");
    // Go's own words, naming the module, in the error and the log.
    assert!(message.contains("example.com/greet@v0.1.0"), "{message}");
    assert!(log.contains("example.com/greet@v0.1.0"), "{log}");
    assert!(log.contains("go mod download"), "{log}");
    assert!(message.contains("go mod vendor"), "{message}");
    // It went to the Go proxy (through the registry proxy, which cannot reach it from here).
    assert!(log.contains("proxy.golang.org"), "{log}");
    assert!(start.elapsed() < Duration::from_secs(120));
    assert!(!scene.out("out/handler").exists());
}

fn no_go_mod_is_refused() {
    let scene = Scene::new("nogomod", &[("main.go", SEED)]);
    let (result, log) = scene.build(true);
    let err = refused(result, &log);
    assert!(matches!(err, BuildError::NoGoMod), "{err:?}");
    assert_eq!(
        err.to_string(),
        "a Go app needs go.mod at the top of --code: run `go mod init example.com/app` in it"
    );
    assert!(log.is_empty(), "{log}");
}

fn a_module_that_is_not_package_main_is_refused() {
    let scene = Scene::new(
        "notmain",
        &[
            ("go.mod", go_mod("example.com/lib")),
            (
                "lib.go",
                "// Package lib is a library.\npackage lib\n\nfunc X() {}\n".into(),
            ),
            ("main_test.go", "package main\n".into()),
        ],
    );
    let (result, log) = scene.build(true);
    let err = refused(result, &log);
    assert!(
        matches!(&err, BuildError::NotMainPackage(p) if p == "lib"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("package lib, not package main"),
        "{err}"
    );

    let scene = Scene::new(
        "nofiles",
        &[
            ("go.mod", go_mod("example.com/app")),
            ("cmd/app/main.go", SEED.into()),
        ],
    );
    let (result, log) = scene.build(true);
    assert!(
        matches!(refused(result, &log), BuildError::NoGoFiles),
        "{log}"
    );
}

fn replacements_and_links_outside_are_refused() {
    let scene = Scene::new(
        "outside",
        &[
            (
                "go.mod",
                "module example.com/app\n\ngo 1.19\n\nrequire example.com/x v1.0.0\n\n\
                 replace example.com/x => ../x\n",
            ),
            ("main.go", SEED),
        ],
    );
    let (result, log) = scene.build(true);
    let err = refused(result, &log);
    assert!(
        matches!(&err, BuildError::GoReplaceOutside { module, path } if module == "example.com/x" && path == "../x"),
        "{err:?}"
    );

    let scene = Scene::new(
        "link",
        &[
            ("go.mod", go_mod("example.com/app").as_str()),
            ("main.go", SEED),
        ],
    );
    std::os::unix::fs::symlink("/etc/passwd", scene.source.join("passwd")).unwrap();
    let (result, log) = scene.build(true);
    let err = refused(result, &log);
    assert!(
        matches!(&err, BuildError::GoLinkOutside { path, target } if path == "passwd" && target == "/etc/passwd"),
        "{err:?}"
    );

    // A go.mod Go cannot read: Go's message.
    let scene = Scene::new(
        "badmod",
        &[
            ("go.mod", "module example.com/app\n\nnonsense here\n"),
            ("main.go", SEED),
        ],
    );
    let (result, log) = scene.build(true);
    let err = refused(result, &log);
    assert!(matches!(err, BuildError::GoMod(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "go.mod cannot be used: go: errors parsing go.mod: go.mod:3: unknown directive: nonsense"
    );
}

fn a_rebuild_reuses_the_cache() {
    // A module path of this run's: the shared cache may hold earlier runs' builds.
    let module = format!(
        "example.com/cachetest{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let scene = Scene::new(
        "cache",
        &[("go.mod", go_mod(&module).as_str()), ("main.go", SEED)],
    );
    let (first, log1) = scene.build_into("one", true);
    let first = built(first, &log1);
    // Another output directory, fresh file times: the compile is cached all the same (-v
    // names each package it compiles; a cached one is not named).
    std::thread::sleep(Duration::from_millis(1100));
    let (second, log2) = scene.build_into("two", true);
    let second = built(second, &log2);
    let compiled = |log: &str| log.lines().any(|l| l == module);
    assert!(compiled(&log1), "{log1}");
    assert!(
        !compiled(&log2),
        "the rebuild compiled the app again:\n{log2}"
    );
    assert!(!log2.lines().any(|l| l == "runtime"), "{log2}");
    assert_eq!(first.digest, second.digest);
    assert!(
        std::fs::read_dir(cache_dir().join("build"))
            .unwrap()
            .next()
            .is_some()
    );
}
