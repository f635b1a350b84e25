//! Python builds against the real thing: Debian's interpreter and its pip, PyPI through the
//! registry proxy, the real build jail, the SDK's `ignite_boot.py` (`sdks/python`).
//!
//! Like `jailed.rs`, this test binary is its own jail helper (`<helper> ignite __jail <spec>`),
//! hence no libtest harness; a filter argument selects tests by name. Runs as root (the jail
//! needs it); elsewhere it says so and passes vacuously. It needs PyPI (pypi.org and
//! files.pythonhosted.org) reachable.

mod harness;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ignite_builder::python::{PythonArtifact, PythonBuild};
use ignite_builder::{BuildError, BuildOptions, JailOptions, RegistryProxy, Sdk};

/// An unprivileged uid with no account, as the server's build uid.
const BUILD_UID: u32 = 1_899_999_997;
/// Debian's interpreter, whose pip installs requirements.txt.
const INTERPRETER: &str = "/usr/bin/python3";

use harness::Test;

const TESTS: &[Test] = &[
    (
        "an_app_without_requirements_builds_and_unpacks",
        an_app_without_requirements_builds_and_unpacks,
    ),
    (
        "a_pure_python_dependency_builds",
        a_pure_python_dependency_builds,
    ),
    (
        "a_binary_wheel_builds_and_its_extension_imports",
        a_binary_wheel_builds_and_its_extension_imports,
    ),
    (
        "a_syntax_error_fails_with_the_traceback",
        a_syntax_error_fails_with_the_traceback,
    ),
    (
        "a_missing_module_fails_with_the_traceback",
        a_missing_module_fails_with_the_traceback,
    ),
    (
        "a_main_without_a_handler_fails_the_check",
        a_main_without_a_handler_fails_the_check,
    ),
    ("no_main_py_is_refused", no_main_py_is_refused),
    (
        "links_inside_are_copied_and_links_outside_refused",
        links_inside_are_copied_and_links_outside_refused,
    ),
    (
        "an_install_script_reaches_no_network",
        an_install_script_reaches_no_network,
    ),
    (
        "a_failed_install_says_what_pip_said",
        a_failed_install_says_what_pip_said,
    ),
    (
        "a_requirement_off_pypi_is_refused_by_the_proxy",
        a_requirement_off_pypi_is_refused_by_the_proxy,
    ),
    (
        "a_build_past_its_budget_is_stopped",
        a_build_past_its_budget_is_stopped,
    ),
    (
        "a_file_over_the_cap_is_refused",
        a_file_over_the_cap_is_refused,
    ),
    ("a_rebuild_gives_the_same_tar", a_rebuild_gives_the_same_tar),
    (
        "unpacking_refuses_entries_that_escape",
        unpacking_refuses_entries_that_escape,
    ),
];

fn main() {
    harness::main(TESTS, "jailed Python build tests", |_| true, || {});
}

/// The repository's Python SDK.
fn sdk_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdks/python");
    std::fs::canonicalize(&dir).unwrap_or(dir)
}

/// A scratch directory holding `source/` (the upload) and, once built, `app/` and `app.tar`.
struct Scene {
    base: tempfile::TempDir,
    source: PathBuf,
}

/// A handler as the SDK has it.
const HANDLER: &str =
    "import ignite\n\n\n@ignite.main\nasync def handler(req, ctx):\n    return \"hi\"\n";

impl Scene {
    fn new(name: &str, files: &[(&str, &str)]) -> Scene {
        let base = tempfile::Builder::new()
            .prefix(&format!("python-{name}-"))
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

    /// Builds the source into `app` (jailed, with PyPI through the proxy, or unconfined);
    /// returns the result and the build log.
    fn build(&self, jailed: bool) -> (Result<PythonArtifact, BuildError>, String) {
        self.build_into("app", jailed)
    }

    fn build_into(&self, name: &str, jailed: bool) -> (Result<PythonArtifact, BuildError>, String) {
        self.build_with(name, options(jailed))
    }

    fn build_with(
        &self,
        name: &str,
        mut options: BuildOptions,
    ) -> (Result<PythonArtifact, BuildError>, String) {
        let out = self.out(name);
        let jailed = options.jail.is_some();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let proxy = runtime.block_on(async {
            RegistryProxy::start(&self.base.path().join("proxy.sock"), ignite_builder::PYPI)
                .unwrap()
        });
        if let Some(jail) = &mut options.jail {
            jail.fetch_proxy = Some(proxy.path().to_path_buf());
        }
        let sdk = sdk_dir();
        let build = PythonBuild {
            source: &self.source,
            out: &out,
            interpreter: Path::new(INTERPRETER),
            sdk_dir: &sdk,
        };
        let mut log = String::new();
        let start = Instant::now();
        let result = runtime.block_on(ignite_builder::python::build(&build, &options, |line| {
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
        tmp.join("python-unused-target"),
        Duration::from_secs(300),
    );
    if jailed {
        let root = tmp.join("python-jail-root");
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

fn built(result: Result<PythonArtifact, BuildError>, log: &str) -> PythonArtifact {
    result.unwrap_or_else(|e| panic!("{e}\n--- log ---\n{log}"))
}

fn assert_file(path: &Path) {
    assert!(path.is_file(), "{} is missing", path.display());
}

/// The tar's entries, in order.
fn entries(tar: &Path) -> Vec<String> {
    let mut archive = tar::Archive::new(std::fs::File::open(tar).unwrap());
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            assert_eq!(h.mtime().unwrap(), 0);
            assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
            e.path().unwrap().to_string_lossy().into_owned()
        })
        .collect()
}

fn an_app_without_requirements_builds_and_unpacks() {
    let scene = Scene::new(
        "plain",
        &[
            ("main.py", &format!("import helper\n{HANDLER}")),
            ("helper.py", "X = 1\n"),
            ("static/index.html", "<p>hi</p>\n"),
            ("__pycache__/stale.cpython-311.pyc", "stale"),
        ],
    );
    let (result, log) = scene.build(true);
    let artifact = built(result, &log);
    let app = scene.out("app");
    assert_eq!(artifact.python_version, "3.11");
    assert_eq!(artifact.tar, scene.out("app.tar"));
    assert!(artifact.digest.starts_with("sha256:"), "{artifact:?}");
    assert_eq!(
        artifact.size,
        std::fs::metadata(&artifact.tar).unwrap().len()
    );
    assert_file(&app.join("__pycache__/main.cpython-311.pyc"));
    assert_file(&app.join("__pycache__/helper.cpython-311.pyc"));
    assert!(!app.join("__pycache__/stale.cpython-311.pyc").exists());
    assert!(!app.join(".packages").exists());
    assert!(log.contains("checking that main.py imports"), "{log}");

    let names = entries(&artifact.tar);
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert!(names.iter().any(|n| n == "main.py"), "{names:?}");

    let unpacked = scene.out("unpacked");
    ignite_builder::oci::unpack_app(&artifact.tar, &unpacked).unwrap();
    assert_eq!(
        std::fs::read(unpacked.join("static/index.html")).unwrap(),
        b"<p>hi</p>\n"
    );
    assert_eq!(
        std::fs::read(unpacked.join("__pycache__/main.cpython-311.pyc")).unwrap(),
        std::fs::read(app.join("__pycache__/main.cpython-311.pyc")).unwrap()
    );
    // The hash-based .pyc is used as is from the unpacked tree (its times are all 0).
    let run = std::process::Command::new(INTERPRETER)
        .args([
            "-I",
            "-B",
            "-v",
            "-c",
            "import sys; sys.path.insert(0, '.'); import helper",
        ])
        .current_dir(&unpacked)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains("matches") && stderr.contains("helper.cpython-311.pyc"),
        "{stderr}"
    );

    let layout = ignite_builder::oci::OciLayout::open(&scene.out("oci")).unwrap();
    let stored = layout
        .add_python_app(&artifact.tar, &artifact.python_version, "acme/app:1")
        .unwrap();
    assert_eq!(stored.binary.digest, artifact.digest);
    assert_eq!(stored.binary.size, artifact.size);
    assert_eq!(
        stored.binary.media_type,
        ignite_builder::oci::PYTHON_MEDIA_TYPE
    );
    assert_eq!(
        std::fs::read(layout.blob_path(&artifact.digest)).unwrap(),
        std::fs::read(&artifact.tar).unwrap()
    );
    let manifests = layout.manifests().unwrap();
    assert_eq!(manifests.len(), 1);
    assert_eq!(
        manifests[0].artifact_type.as_deref(),
        Some("application/vnd.ignite.handler.python.v1")
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.blob_path(&manifests[0].digest)).unwrap())
            .unwrap();
    assert_eq!(
        manifest["layers"][0]["annotations"]["dev.ignite.python.version"],
        "3.11"
    );
}

fn a_pure_python_dependency_builds() {
    let scene = Scene::new(
        "six",
        &[
            ("requirements.txt", "six==1.17.0\n"),
            ("main.py", &format!("import six\nassert six.PY3\n{HANDLER}")),
        ],
    );
    let (result, log) = scene.build(true);
    let artifact = built(result, &log);
    let app = scene.out("app");
    assert_file(&app.join(".packages/six.py"));
    assert_file(&app.join(".packages/__pycache__/six.cpython-311.pyc"));
    assert_file(&app.join("__pycache__/main.cpython-311.pyc"));
    assert!(log.contains("Successfully installed six-1.17.0"), "{log}");
    let names = entries(&artifact.tar);
    assert!(names.iter().any(|n| n == ".packages/six.py"), "{names:?}");
}

fn a_binary_wheel_builds_and_its_extension_imports() {
    let scene = Scene::new(
        "markupsafe",
        &[
            ("requirements.txt", "markupsafe\n"),
            (
                "main.py",
                &format!(
                    "import markupsafe._speedups\nfrom markupsafe import escape\n\
                     assert str(escape('<')) == '&lt;'\n{HANDLER}"
                ),
            ),
        ],
    );
    let (result, log) = scene.build(true);
    built(result, &log);
    let packages = scene.out("app/.packages/markupsafe");
    let extension = std::fs::read_dir(&packages).unwrap().flatten().any(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        name.starts_with("_speedups.cpython-311") && name.ends_with(".so")
    });
    assert!(extension, "no C extension in {}\n{log}", packages.display());
    assert_file(&packages.join("__pycache__/__init__.cpython-311.pyc"));
}

fn a_syntax_error_fails_with_the_traceback() {
    let scene = Scene::new(
        "syntax",
        &[(
            "main.py",
            "import ignite\n\ndef handler(request:\n    pass\n",
        )],
    );
    let (result, log) = scene.build(true);
    let err = match result {
        Ok(a) => panic!("built {a:?} from a syntax error\n{log}"),
        Err(e) => e,
    };
    assert!(matches!(err, BuildError::ImportFailed(_)), "{err:?}");
    let err = err.to_string();
    assert!(
        err.starts_with("importing main.py failed: SyntaxError"),
        "{err}"
    );
    assert!(log.contains("SyntaxError"), "{log}");
    assert!(log.contains("main.py\", line 3"), "{log}");
}

fn a_missing_module_fails_with_the_traceback() {
    let scene = Scene::new(
        "missing",
        &[("main.py", &format!("import nope_not_a_module\n{HANDLER}"))],
    );
    let (result, log) = scene.build(true);
    let err = match result {
        Ok(a) => panic!("built {a:?} importing a missing module\n{log}"),
        Err(e) => e.to_string(),
    };
    let line = "ModuleNotFoundError: No module named 'nope_not_a_module'";
    assert!(
        err.starts_with(&format!("importing main.py failed: {line}")),
        "{err}"
    );
    assert!(log.contains("Traceback (most recent call last)"), "{log}");
    assert!(log.contains(line), "{log}");
}

fn a_main_without_a_handler_fails_the_check() {
    let scene = Scene::new("nohandler", &[("main.py", "import ignite\nX = 1\n")]);
    let (result, log) = scene.build(true);
    let err = match result {
        Ok(a) => panic!("built {a:?} without a handler\n{log}"),
        Err(e) => e,
    };
    assert!(matches!(err, BuildError::ImportFailed(_)), "{err:?}\n{log}");
    assert!(err.to_string().contains("@ignite.main"), "{err}");
}

fn no_main_py_is_refused() {
    let scene = Scene::new(
        "nomain",
        &[("app.py", HANDLER), ("requirements.txt", "six\n")],
    );
    let (result, log) = scene.build(true);
    let err = match result {
        Ok(a) => panic!("built {a:?} without main.py\n{log}"),
        Err(e) => e,
    };
    assert!(matches!(err, BuildError::NoPythonMain), "{err:?}");
    assert_eq!(
        err.to_string(),
        "a Python app needs main.py at the top of --code (a directory with main.py and an \
         optional requirements.txt, or a single .py file)"
    );
    // Nothing ran.
    assert!(!scene.out("app.tar").exists());
    assert!(!log.contains("pip"), "{log}");
}

fn links_inside_are_copied_and_links_outside_refused() {
    let scene = Scene::new(
        "links",
        &[
            ("main.py", &format!("import lib.util\n{HANDLER}")),
            ("real/util.py", "X = 1\n"),
            ("real/__init__.py", ""),
        ],
    );
    std::os::unix::fs::symlink("real", scene.source.join("lib")).unwrap();
    std::os::unix::fs::symlink("real/util.py", scene.source.join("util.py")).unwrap();
    let (result, log) = scene.build(true);
    built(result, &log);
    let app = scene.out("app");
    for copied in ["lib", "lib/util.py", "util.py"] {
        let meta = std::fs::symlink_metadata(app.join(copied)).unwrap();
        assert!(!meta.file_type().is_symlink(), "{copied} is still a link");
    }
    assert_eq!(std::fs::read(app.join("lib/util.py")).unwrap(), b"X = 1\n");

    std::os::unix::fs::symlink("/etc/passwd", scene.source.join("passwd")).unwrap();
    let (result, log) = scene.build_into("app2", true);
    let err = match result {
        Ok(a) => panic!("built {a:?} with a link to /etc/passwd\n{log}"),
        Err(e) => e,
    };
    assert!(
        matches!(&err, BuildError::LinkOutside { path, target } if path == "passwd" && target == "/etc/passwd"),
        "{err:?}"
    );

    std::fs::remove_file(scene.source.join("passwd")).unwrap();
    std::os::unix::fs::symlink("..", scene.source.join("real/up")).unwrap();
    let (result, log) = scene.build_into("app3", true);
    let err = match result {
        Ok(a) => panic!("built {a:?} with a link loop\n{log}"),
        Err(e) => e,
    };
    assert!(matches!(err, BuildError::LinkLoop(_)), "{err:?}");
}

/// The host's address on its default route, if it has one (no packet is sent).
fn host_address() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// A local package whose `setup.py` tries, at install time, to connect to `port` on loopback
/// and on the host's address, and to private addresses, writing what happened to `REPORT`.
fn evil_scene(name: &str, port: u16) -> Scene {
    let mut targets = vec![
        format!("(\"127.0.0.1\", {port})"),
        "(\"10.255.255.1\", 80)".to_string(),
        "(\"192.168.255.1\", 80)".to_string(),
    ];
    if let Some(ip) = host_address() {
        targets.push(format!("(\"{ip}\", {port})"));
    }
    let setup = format!(
        "import os, socket\n\
         from setuptools import setup\n\
         here = os.path.dirname(os.path.abspath(__file__))\n\
         report = []\n\
         for target in [{}]:\n\
         \x20   try:\n\
         \x20       socket.create_connection(target, timeout=2).close()\n\
         \x20       report.append('%s:%d connected' % target)\n\
         \x20   except OSError as e:\n\
         \x20       report.append('%s:%d %s: %s' % (target + (type(e).__name__, e)))\n\
         with open(os.path.join(here, 'REPORT'), 'a') as f:\n\
         \x20   f.write('\\n'.join(report) + '\\n')\n\
         setup(name='evil', version='0.1', py_modules=['evil'])\n",
        targets.join(", ")
    );
    Scene::new(
        name,
        &[
            ("requirements.txt", "./evil\n"),
            ("evil/setup.py", &setup),
            ("evil/evil.py", "X = 1\n"),
            ("main.py", &format!("import evil\n{HANDLER}")),
        ],
    )
}

/// How many connections `listener` has waiting.
fn connections(listener: &std::net::TcpListener) -> usize {
    listener.set_nonblocking(true).unwrap();
    let mut n = 0;
    loop {
        match listener.accept() {
            Ok(_) => n += 1,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return n,
            Err(e) => panic!("accept: {e}"),
        }
    }
}

fn an_install_script_reaches_no_network() {
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();

    // The control: unconfined, the script reaches the listener (so the check below can fail).
    let scene = evil_scene("evil-control", port);
    let (result, log) = scene.build(false);
    let report = std::fs::read_to_string(scene.out("app/evil/REPORT")).unwrap_or_default();
    assert!(
        connections(&listener) > 0,
        "the unconfined control did not connect: {result:?}\n{report}\n{log}"
    );
    listener.set_nonblocking(false).unwrap();

    let scene = evil_scene("evil", port);
    let (result, log) = scene.build(true);
    let report = std::fs::read_to_string(scene.out("app/evil/REPORT")).unwrap_or_default();
    // Whatever the build's outcome: no connection.
    assert_eq!(
        connections(&listener),
        0,
        "the install script connected out of the jail:\n{report}\n{log}"
    );
    // The script did run (the test is not vacuous), and got nowhere.
    assert!(
        report.contains(&format!("127.0.0.1:{port} ")),
        "setup.py did not run: {result:?}\n{log}"
    );
    assert!(!report.contains("connected"), "{report}");
    println!("  what setup.py got in the jail:\n{report}");
    built(result, &log);
}

fn a_failed_install_says_what_pip_said() {
    let scene = Scene::new(
        "nosuch",
        &[
            ("requirements.txt", "ignite-no-such-package-here==0.0.1\n"),
            ("main.py", HANDLER),
        ],
    );
    let (result, log) = scene.build(true);
    let err = match result {
        Ok(a) => panic!("built {a:?} with a missing requirement\n{log}"),
        Err(e) => e,
    };
    assert!(
        matches!(err, BuildError::PipFailed { .. }),
        "{err:?}\n{log}"
    );
    let err = err.to_string();
    assert!(err.contains("ignite-no-such-package-here"), "{err}\n{log}");
}

fn a_requirement_off_pypi_is_refused_by_the_proxy() {
    let scene = Scene::new(
        "offpypi",
        &[
            (
                "requirements.txt",
                "https://github.com/benjaminp/six/archive/refs/tags/1.17.0.tar.gz\n",
            ),
            ("main.py", HANDLER),
        ],
    );
    let (result, log) = scene.build(true);
    assert!(
        matches!(result, Err(BuildError::PipFailed { .. })),
        "{result:?}\n{log}"
    );
    // The proxy said no (pip reports the tunnel's status).
    assert!(log.contains("403"), "{log}");
}

fn a_build_past_its_budget_is_stopped() {
    let scene = Scene::new(
        "budget",
        &[(
            "main.py",
            &format!("import time\nprint('sleeping', flush=True)\ntime.sleep(600)\n{HANDLER}"),
        )],
    );
    let mut options = options(true);
    options.timeout = Duration::from_secs(5);
    let start = Instant::now();
    let (result, log) = scene.build_with("app", options);
    assert!(
        matches!(result, Err(BuildError::TimedOut(_))),
        "{result:?}\n{log}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
    // The top-level code's output reached the log as it came.
    assert!(log.contains("sleeping"), "{log}");
}

fn a_file_over_the_cap_is_refused() {
    let scene = Scene::new("big", &[("main.py", HANDLER)]);
    let big = std::fs::File::create(scene.source.join("data.bin")).unwrap();
    // Sparse: nothing is written.
    big.set_len(ignite_builder::python::MAX_FILE_BYTES + 1)
        .unwrap();
    let (result, log) = scene.build(true);
    assert!(
        matches!(&result, Err(BuildError::FileTooLarge { path, .. }) if path == "data.bin"),
        "{result:?}\n{log}"
    );
}

fn a_rebuild_gives_the_same_tar() {
    let scene = Scene::new(
        "determinism",
        &[
            ("requirements.txt", "six==1.17.0\n"),
            ("main.py", &format!("import six, sub.mod\n{HANDLER}")),
            ("sub/__init__.py", ""),
            ("sub/mod.py", "Y = 2\n"),
        ],
    );
    let (first, log) = scene.build_into("one", true);
    let first = built(first, &log);
    // Other file times, another directory.
    std::thread::sleep(Duration::from_millis(1100));
    let file = std::fs::File::options()
        .append(true)
        .open(scene.source.join("sub/mod.py"))
        .unwrap();
    file.set_modified(std::time::SystemTime::now()).unwrap();
    let (second, log) = scene.build_into("two", true);
    let second = built(second, &log);
    assert_eq!(first.digest, second.digest);
    assert_eq!(
        std::fs::read(&first.tar).unwrap(),
        std::fs::read(&second.tar).unwrap()
    );
}

fn unpacking_refuses_entries_that_escape() {
    let base = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let write = |name: &str, build: &dyn Fn(&mut tar::Builder<std::fs::File>)| {
        let path = base.path().join(name);
        let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
        build(&mut b);
        b.finish().unwrap();
        path
    };
    let file = |b: &mut tar::Builder<std::fs::File>, path: &str| {
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // set_path refuses `..`: write the raw name.
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
    };
    let climbing = write("climbing.tar", &|b| file(b, "../escaped"));
    let absolute = write("absolute.tar", &|b| file(b, "/tmp/ignite-escaped"));
    let link = write("link.tar", &|b| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "etc", "/etc").unwrap();
    });
    for tar in [climbing, absolute, link] {
        let dest = base.path().join("dest");
        let err = ignite_builder::oci::unpack_app(&tar, &dest).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
        assert!(!base.path().join("escaped").exists());
        assert!(!dest.join("etc").exists());
    }
    assert!(!Path::new("/tmp/ignite-escaped").exists());
}
