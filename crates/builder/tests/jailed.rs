//! Hostile project trees against the real builder: real cargo, the real build jail, real
//! projects written to temporary directories.
//!
//! This test binary is its own jail helper: the builder runs `<helper> ignite __jail <spec>`,
//! and `main` below answers that exactly as `dodil` does, so no other binary is needed. That is
//! why the file has no libtest harness (a harness would take the jail's arguments for its own);
//! a filter argument still selects tests by name. Runs as root (the jail needs it); elsewhere
//! it says so and passes vacuously.

mod harness;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ignite_builder::{BuildError, BuildOptions, JailOptions, RegistryProxy, Sdk, Target};

/// An unprivileged uid with no account, as the server's build uid.
const BUILD_UID: u32 = 1_899_999_998;

use harness::Test;

const TESTS: &[Test] = &[
    (
        "workspace_dependencies_cannot_lead_outside",
        workspace_dependencies_cannot_lead_outside,
    ),
    (
        "a_nested_manifest_cannot_lead_outside",
        a_nested_manifest_cannot_lead_outside,
    ),
    (
        "a_package_workspace_outside_is_refused",
        a_package_workspace_outside_is_refused,
    ),
    ("a_patch_outside_is_refused", a_patch_outside_is_refused),
    (
        "a_project_cargo_config_takes_no_effect_in_the_jail",
        a_project_cargo_config_takes_no_effect_in_the_jail,
    ),
    (
        "a_project_cargo_config_takes_no_effect_unconfined",
        a_project_cargo_config_takes_no_effect_unconfined,
    ),
    (
        "path_dependencies_inside_the_project_build",
        path_dependencies_inside_the_project_build,
    ),
    (
        "the_fetch_sees_nothing_outside_the_project",
        the_fetch_sees_nothing_outside_the_project,
    ),
    (
        "the_fetch_through_the_proxy_sees_nothing_outside_the_project",
        the_fetch_through_the_proxy_sees_nothing_outside_the_project,
    ),
    (
        "the_confined_fetch_downloads_from_crates_io_through_the_proxy",
        the_confined_fetch_downloads_from_crates_io_through_the_proxy,
    ),
    (
        "an_index_entry_rewritten_meanwhile_does_not_fail_the_compile",
        an_index_entry_rewritten_meanwhile_does_not_fail_the_compile,
    ),
    (
        "an_index_entry_left_half_written_is_fetched_again",
        an_index_entry_left_half_written_is_fetched_again,
    ),
];

fn main() {
    harness::main(TESTS, "jailed build tests", |_| true, || {});
}

/// A marker that shows up in cargo's output only if cargo read the file it is in.
fn marker(what: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "canary_{what}_{}_{nanos}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A scratch directory holding `project/` (the upload) and, beside it, `outside/`: a
/// manifest that is not TOML and holds `canary`, so cargo's parse error would quote it if
/// anything made cargo read it.
struct Scene {
    _base: tempfile::TempDir,
    project: PathBuf,
    outside: PathBuf,
    canary: String,
}

impl Scene {
    fn new(name: &str, files: &[(&str, &str)]) -> Scene {
        let base = tempfile::Builder::new()
            .prefix(&format!("jailed-{name}-"))
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let project = base.path().join("project");
        let outside = base.path().join("outside");
        let canary = marker(name);
        std::fs::create_dir_all(outside.join("src")).unwrap();
        std::fs::write(
            outside.join("Cargo.toml"),
            format!("this is not a manifest {canary}\n"),
        )
        .unwrap();
        std::fs::write(outside.join("src/lib.rs"), "").unwrap();
        for (path, text) in files {
            let text = text.replace("@OUTSIDE@", &outside.to_string_lossy());
            let path = project.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
        }
        Scene {
            _base: base,
            project,
            outside,
            canary,
        }
    }

    /// Builds the project (jailed, or not) and returns the result and the compile log.
    fn build(&self, jailed: bool) -> (Result<ignite_builder::Artifact, BuildError>, String) {
        let project = match ignite_builder::prepare(&self.project, Target::Native) {
            Ok(p) => p,
            Err(e) => return (Err(e), String::new()),
        };
        let options = options(jailed);
        let mut log = String::new();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let result = runtime.block_on(ignite_builder::build(&project, &options, |line| {
            log.push_str(line);
            log.push('\n');
        }));
        (result, log)
    }

    /// The fetch step alone (no check of the sources first), jailed or not, through a
    /// registry proxy or not.
    fn fetch(&self, jailed: bool, proxied: bool) -> (Result<(), BuildError>, String) {
        let project = ignite_builder::prepare(&self.project, Target::Native).unwrap();
        let mut options = options(jailed);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let proxy = proxied.then(|| {
            runtime.block_on(async {
                RegistryProxy::start(
                    &self.project.with_file_name("proxy.sock"),
                    ignite_builder::CRATES_IO,
                )
                .unwrap()
            })
        });
        if let (Some(jail), Some(proxy)) = (&mut options.jail, &proxy) {
            jail.fetch_proxy = Some(proxy.path().to_path_buf());
        }
        let mut log = String::new();
        let result = runtime.block_on(ignite_builder::fetch(&project, &options, |line| {
            log.push_str(line);
            log.push('\n');
        }));
        drop(proxy);
        (result, log)
    }

    /// Refused before cargo ran: the error says so and cargo never read the outside file.
    fn assert_refused(&self, result: &Result<ignite_builder::Artifact, BuildError>, log: &str) {
        let err = match result {
            Ok(a) => panic!("built {a:?} from a project that leads outside\n{log}"),
            Err(e) => e.to_string(),
        };
        assert!(
            !log.contains(&self.canary) && !err.contains(&self.canary),
            "cargo read {} (outside the project):\n{err}\n{log}",
            self.outside.display()
        );
        assert!(err.contains("outside the project"), "{err}\n{log}");
        assert!(err.contains("copy the crate into the project"), "{err}");
    }
}

fn options(jailed: bool) -> BuildOptions {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let mut options = BuildOptions::new(
        Sdk::bundled(),
        tmp.join(if jailed {
            "jailed-target"
        } else {
            "unconfined-target"
        }),
        Duration::from_secs(600),
    );
    if jailed {
        let root = tmp.join("jailed-root");
        std::fs::create_dir_all(&root).unwrap();
        options.jail = Some(JailOptions {
            helper: std::env::current_exe().unwrap(),
            root,
            uid: BUILD_UID,
            cgroups: Vec::new(),
            tmp_mb: 256,
            max_disk_bytes: 4 << 30,
            max_address_space: 0,
            fetch_proxy: None,
        });
    }
    options
}

const MAIN: &str = "fn main() { println!(\"hello\"); }\n";

fn package(name: &str, extra: &str) -> String {
    format!("[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n{extra}")
}

fn workspace_dependencies_cannot_lead_outside() {
    let manifest = package(
        "victim",
        "\n[dependencies]\nx = { workspace = true }\n\n\
         [workspace.dependencies]\nx = { path = \"@OUTSIDE@\" }\n",
    );
    let scene = Scene::new(
        "wsdeps",
        &[("Cargo.toml", &manifest), ("src/main.rs", MAIN)],
    );
    let (result, log) = scene.build(true);
    scene.assert_refused(&result, &log);
    let err = result.unwrap_err().to_string();
    assert!(err.contains("workspace.dependencies.x.path"), "{err}");
}

fn a_nested_manifest_cannot_lead_outside() {
    let root = package("victim", "\n[dependencies]\nsub = { path = \"sub\" }\n");
    let sub = package(
        "sub",
        "\n[dependencies]\nx = { path = \"../../outside\" }\n",
    );
    let scene = Scene::new(
        "nested",
        &[
            ("Cargo.toml", &root),
            ("src/main.rs", MAIN),
            ("sub/Cargo.toml", &sub),
            ("sub/src/lib.rs", ""),
        ],
    );
    let (result, log) = scene.build(true);
    scene.assert_refused(&result, &log);
    let err = result.unwrap_err().to_string();
    assert!(err.contains("sub/Cargo.toml"), "{err}");
    assert!(err.contains("../../outside"), "{err}");
}

fn a_package_workspace_outside_is_refused() {
    let root = package("victim", "\n[dependencies]\nsub = { path = \"sub\" }\n");
    let sub = package("sub", "workspace = \"../../outside\"\n");
    let scene = Scene::new(
        "pkgws",
        &[
            ("Cargo.toml", &root),
            ("src/main.rs", MAIN),
            ("sub/Cargo.toml", &sub),
            ("sub/src/lib.rs", ""),
        ],
    );
    let (result, log) = scene.build(true);
    scene.assert_refused(&result, &log);
    let err = result.unwrap_err().to_string();
    assert!(err.contains("package.workspace"), "{err}");
}

fn a_patch_outside_is_refused() {
    let root = package(
        "victim",
        "\n[patch.crates-io]\nanything = { path = \"@OUTSIDE@\" }\n",
    );
    let scene = Scene::new("patch", &[("Cargo.toml", &root), ("src/main.rs", MAIN)]);
    let (result, log) = scene.build(true);
    scene.assert_refused(&result, &log);
    let err = result.unwrap_err().to_string();
    assert!(err.contains("patch.crates-io.anything.path"), "{err}");
}

/// A `.cargo/config.toml` (at the root and nested) that would run a wrapper of the project's,
/// set a cfg, an environment variable, a linker and a runner: none of it may take effect.
fn hostile_config_scene(name: &str) -> Scene {
    let config = "[build]\nrustc-wrapper = \"./wrap.sh\"\nrustflags = [\"--cfg\", \"evil_flag\"]\n\
                  target-dir = \"evil-target\"\n\n[env]\nEVIL_ENV = \"1\"\n\n\
                  [target.x86_64-unknown-linux-musl]\nlinker = \"./wrap.sh\"\nrunner = \"./wrap.sh\"\n\
                  rustflags = [\"--cfg\", \"evil_flag\"]\n\n[alias]\nb = \"build\"\n";
    let main = "#[cfg(evil_flag)]\ncompile_error!(\"the project's rustflags took effect\");\n\
                const _: () = assert!(option_env!(\"EVIL_ENV\").is_none(), \"the project's [env] took effect\");\n\
                fn main() { println!(\"hello\"); }\n";
    let wrap = "#!/bin/sh\ntouch \"$(dirname \"$0\")/WRAPPER_RAN\"\nexec \"$@\"\n";
    let root = package("victim", "\n[dependencies]\nsub = { path = \"sub\" }\n");
    let scene = Scene::new(
        name,
        &[
            ("Cargo.toml", &root),
            ("src/main.rs", main),
            (".cargo/config.toml", config),
            ("wrap.sh", wrap),
            ("sub/Cargo.toml", &package("sub", "")),
            ("sub/src/lib.rs", ""),
            ("sub/.cargo/config.toml", config),
            ("sub/wrap.sh", wrap),
        ],
    );
    for script in ["wrap.sh", "sub/wrap.sh"] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            scene.project.join(script),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
    }
    scene
}

fn assert_config_ignored(scene: &Scene, jailed: bool) {
    let (result, log) = scene.build(jailed);
    let artifact = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    for dir in ["", "sub/"] {
        assert!(
            !scene.project.join(format!("{dir}WRAPPER_RAN")).exists(),
            "the project's rustc-wrapper ran\n{log}"
        );
        assert!(
            !scene.project.join(format!("{dir}.cargo")).exists(),
            "{dir}.cargo is still there"
        );
    }
    assert!(!scene.project.join("evil-target").exists(), "{log}");
    assert!(
        artifact.path.starts_with(env!("CARGO_TARGET_TMPDIR")),
        "{artifact:?}"
    );
    assert!(
        log.contains(".cargo"),
        "the log says nothing of .cargo: {log}"
    );
}

fn a_project_cargo_config_takes_no_effect_in_the_jail() {
    let scene = hostile_config_scene("config-jail");
    assert_config_ignored(&scene, true);
}

fn a_project_cargo_config_takes_no_effect_unconfined() {
    let scene = hostile_config_scene("config-unconfined");
    assert_config_ignored(&scene, false);
}

fn path_dependencies_inside_the_project_build() {
    // What the check must let through: path dependencies and members inside the project,
    // however spelled, a build script and targets with their own paths.
    let root = package(
        "victim",
        "build = \"tools/build.rs\"\n\n[[bin]]\nname = \"victim\"\npath = \"src/./main.rs\"\n\n\
         [dependencies]\nsub = { workspace = true }\nother = { path = \"crates/../crates/other\" }\n\n\
         [workspace]\nmembers = [\"crates/*\"]\n\n[workspace.dependencies]\nsub = { path = \"crates/sub\" }\n",
    );
    let scene = Scene::new(
        "inside",
        &[
            ("Cargo.toml", &root),
            ("src/main.rs", "fn main() { sub::hi(); other::hi(); }\n"),
            ("tools/build.rs", "fn main() {}\n"),
            (
                "crates/sub/Cargo.toml",
                &package("sub", "\n[lib]\npath = \"lib/sub.rs\"\n"),
            ),
            ("crates/sub/lib/sub.rs", "pub fn hi() {}\n"),
            (
                "crates/other/Cargo.toml",
                &package("other", "\n[dependencies]\nsub = { path = \"../sub\" }\n"),
            ),
            ("crates/other/src/lib.rs", "pub fn hi() { sub::hi() }\n"),
        ],
    );
    let (result, log) = scene.build(true);
    result.unwrap_or_else(|e| panic!("{e}\n{log}"));
}

/// A project whose `[workspace.dependencies]` lead outside: the check refuses it, so the
/// fetch is called on its own here, as if a route had escaped the check.
fn escaping_scene(name: &str) -> Scene {
    let manifest = package(
        "victim",
        "\n[dependencies]\nx = { workspace = true }\n\n\
         [workspace.dependencies]\nx = { path = \"@OUTSIDE@\" }\n",
    );
    let scene = Scene::new(name, &[("Cargo.toml", &manifest), ("src/main.rs", MAIN)]);
    assert!(ignite_builder::check_sources(&scene.project).is_err());
    scene
}

/// The fetch failed for not finding the outside manifest, and never read it.
fn assert_not_seen(scene: &Scene, result: &Result<(), BuildError>, log: &str) {
    assert!(
        matches!(result, Err(BuildError::Failed { .. })),
        "{result:?}\n{log}"
    );
    assert!(
        !log.contains(&scene.canary),
        "the fetch read {}:\n{log}",
        scene.outside.display()
    );
    assert!(
        log.contains(&format!("{}/Cargo.toml", scene.outside.display()))
            && log.contains("No such file or directory"),
        "{log}"
    );
}

fn the_fetch_sees_nothing_outside_the_project() {
    // The control: unconfined, the same fetch reads the outside manifest (so the check below
    // can fail).
    let scene = escaping_scene("fetch-control");
    let (result, log) = scene.fetch(false, false);
    assert!(result.is_err(), "{log}");
    assert!(log.contains(&scene.canary), "{log}");

    let scene = escaping_scene("fetch-host");
    let (result, log) = scene.fetch(true, false);
    assert_not_seen(&scene, &result, &log);
}

fn the_fetch_through_the_proxy_sees_nothing_outside_the_project() {
    let scene = escaping_scene("fetch-proxy");
    let (result, log) = scene.fetch(true, true);
    assert_not_seen(&scene, &result, &log);
}

fn the_confined_fetch_downloads_from_crates_io_through_the_proxy() {
    // What the fetch needs in its mount view: the TLS roots, the registry cache (writable)
    // and its locks, the SDK, the toolchain.
    let manifest = package("victim", "\n[dependencies]\ncfg-if = \"1\"\n");
    let scene = Scene::new(
        "fetch-crates-io",
        &[("Cargo.toml", &manifest), ("src/main.rs", MAIN)],
    );
    let (result, log) = scene.fetch(true, true);
    result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    let lock = std::fs::read_to_string(scene.project.join("Cargo.lock")).unwrap();
    assert!(lock.contains("name = \"cfg-if\""), "{lock}");
    // And the compile, offline, finds what was fetched.
    let (result, log) = scene.build(true);
    result.unwrap_or_else(|e| panic!("{e}\n{log}"));
}

/// A project that depends on `cfg-if` from crates.io, and the registry cache's `CARGO_HOME`.
fn cfg_if_scene(name: &str) -> (Scene, PathBuf) {
    let manifest = package("victim", "\n[dependencies]\ncfg-if = \"1\"\n");
    let main = "fn main() { cfg_if::cfg_if! { if #[cfg(unix)] { println!(\"unix\"); } } }\n";
    let scene = Scene::new(name, &[("Cargo.toml", &manifest), ("src/main.rs", main)]);
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap();
    (scene, home)
}

/// Cargo's package-cache lock file in `home`, open to be locked as cargo locks it.
fn package_cache_lock(home: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(home.join(".package-cache"))
        .unwrap()
}

/// Another build's fetch rewriting an index entry while this build compiles: cargo truncates
/// and rewrites the entry in place, holding its package-cache lock, whenever the registry
/// answers it anew. Here a thread does the same to `cfg-if`'s entry over and over, holding the
/// lock as cargo does, and keeping it empty most of the time; the compile, which reads the
/// index offline, must still find the package (it reads a copy taken under the lock).
fn an_index_entry_rewritten_meanwhile_does_not_fail_the_compile() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let (scene, home) = cfg_if_scene("index-rewritten");
    let stop = Arc::new(AtomicBool::new(false));
    let rewrites = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, rewrites, home) = (stop.clone(), rewrites.clone(), home.clone());
        std::thread::spawn(move || {
            let lock = package_cache_lock(&home);
            while !stop.load(Ordering::Relaxed) {
                lock.lock().unwrap();
                let entries = std::fs::read_dir(home.join("registry/index"))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|d| d.path().join(".cache/cf/g-/cfg-if"))
                    .filter(|p| p.is_file());
                let saved: Vec<(PathBuf, Vec<u8>)> = entries
                    .map(|p| {
                        let text = std::fs::read(&p).unwrap();
                        (p, text)
                    })
                    .collect();
                for (path, _) in &saved {
                    std::fs::write(path, b"").unwrap();
                }
                std::thread::sleep(Duration::from_millis(50));
                for (path, text) in &saved {
                    std::fs::write(path, text).unwrap();
                }
                if !saved.is_empty() {
                    rewrites.fetch_add(1, Ordering::Relaxed);
                }
                lock.unlock().unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let (result, log) = scene.build(true);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(
        rewrites.load(Ordering::Relaxed) > 0,
        "cfg-if's index entry was never there to rewrite\n{log}"
    );
    result.unwrap_or_else(|e| panic!("{e}\n{log}"));
}

/// A cargo killed while it rewrote an index entry (another build's timeout, a server killed
/// during a fetch) leaves it half-written, after this build's fetch read it whole. Here a
/// thread cuts `cfg-if`'s entry in half the moment this build's fetch lets go of the
/// package-cache lock; the compile still finds the package (the cut entry is fetched again).
fn an_index_entry_left_half_written_is_fetched_again() {
    let (scene, home) = cfg_if_scene("index-torn");
    let cutter = {
        let (home, lock_file) = (home.clone(), scene.project.join("Cargo.lock"));
        std::thread::spawn(move || {
            // The fetch writes the lock file as it resolves, holding the package-cache lock
            // until it is done; the cut comes as soon as it lets go.
            let start = std::time::Instant::now();
            while !lock_file.exists() {
                assert!(start.elapsed() < Duration::from_secs(300), "no fetch came");
                std::thread::sleep(Duration::from_millis(1));
            }
            let lock = package_cache_lock(&home);
            lock.lock().unwrap();
            let mut cut = 0;
            for dir in std::fs::read_dir(home.join("registry/index")).unwrap() {
                let path = dir.unwrap().path().join(".cache/cf/g-/cfg-if");
                if let Ok(text) = std::fs::read(&path) {
                    std::fs::write(&path, &text[..text.len() / 2]).unwrap();
                    cut += 1;
                }
            }
            lock.unlock().unwrap();
            cut
        })
    };
    let (result, log) = scene.build(true);
    let cut = cutter.join().unwrap();
    assert!(
        cut > 0,
        "cfg-if's index entry was never there to cut\n{log}"
    );
    let artifact = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert!(
        log.contains("half-written index entries (cfg-if)"),
        "the cut entry went unnoticed:\n{log}"
    );
    drop(artifact);
}
