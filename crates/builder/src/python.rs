//! The Python build: turns an upload (`main.py` at its top, an optional `requirements.txt`)
//! into an app tree and packs it as one deterministic tar, the layer the node unpacks and runs.
//!
//! [`build`] runs, under the build's time budget, each step's output streamed to the caller:
//!
//! 1. admission: `main.py` must be at the top; the source is copied into the app tree (links
//!    that stay inside are replaced by copies of what they point to, links leading outside
//!    are refused, and so are files over [`MAX_FILE_BYTES`]); the upload's `__pycache__`
//!    directories and a top-level `.packages` are left out (the build makes both);
//! 2. `pip install --target <app>/.packages -r requirements.txt`, when there is one: in the
//!    build jail with the registry proxy (PyPI's hosts, [`crate::PYPI`]) as its only network,
//!    since it runs code of the user's and of their dependencies (`setup.py`, build backends);
//! 3. `python -m compileall` on the whole tree (hash-based `.pyc`, so the tree does not depend
//!    on file times), jailed without network;
//! 4. the import check: the SDK's `ignite_boot.py check` imports `main.py` and verifies that it
//!    registers a handler, jailed without network and with the tree read-only;
//! 5. the tree is packed into `<app>.tar` (sorted entries, times and owners zeroed), digested;
//!    the node unpacks it with [`crate::oci::unpack_app`].
//!
//! Without a jail ([`BuildOptions::jail`] `None`) the steps run unconfined: trusted code only.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ignite_sandbox::jail::{JailNetwork, JailSpec};
use sha2::{Digest, Sha256};
use tokio::process::Command;

use crate::{
    BuildError, BuildOptions, DiskWatch, JailOptions, LogCap, caller_uid, chown_tree, io_err,
    run_logged,
};

/// The largest file an upload may hold.
pub const MAX_FILE_BYTES: u64 = 64 << 20;
/// The most an upload's files may hold together (what `requirements.txt` installs aside).
pub const MAX_SOURCE_BYTES: u64 = 256 << 20;
/// Where `requirements.txt` is installed, inside the app tree.
pub const PACKAGES_DIR: &str = ".packages";
/// The SDK's entry script, in the SDK directory.
pub const BOOT_SCRIPT: &str = "ignite_boot.py";

/// One Python build's inputs.
#[derive(Debug, Clone, Copy)]
pub struct PythonBuild<'a> {
    /// The unpacked upload; only read.
    pub source: &'a Path,
    /// The app tree to produce: an empty (or missing) directory. The tar is written next to it,
    /// as `<out>.tar`.
    pub out: &'a Path,
    /// The interpreter that installs, compiles and checks the app (the node runs the same
    /// version), e.g. `/usr/bin/python3`.
    pub interpreter: &'a Path,
    /// The platform's Python SDK (`sdks/python` of the repository): `ignite_boot.py` and the
    /// `ignite` package.
    pub sdk_dir: &'a Path,
}

/// A built Python app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonArtifact {
    /// The app tree, packed (see [`crate::oci::unpack_app`]).
    pub tar: PathBuf,
    pub size: u64,
    /// `sha256:<hex>` of the tar.
    pub digest: String,
    /// The interpreter's `major.minor` (`3.11`): the `.pyc` files and any binary wheels are
    /// for that version.
    pub python_version: String,
}

/// Builds a Python app (see the module's documentation), sending each step's output to `log`
/// line by line (capped at [`BuildOptions::max_log_bytes`]), the whole under
/// [`BuildOptions::timeout`].
pub async fn build(
    b: &PythonBuild<'_>,
    options: &BuildOptions,
    log: impl FnMut(&str),
) -> Result<PythonArtifact, BuildError> {
    let deadline = tokio::time::Instant::now() + options.timeout;
    let mut log = LogCap::new(options.max_log_bytes, log);
    let result = build_with(b, options, deadline, &mut log).await;
    log.finish();
    result
}

async fn build_with(
    b: &PythonBuild<'_>,
    options: &BuildOptions,
    deadline: tokio::time::Instant,
    log: &mut LogCap<impl FnMut(&str)>,
) -> Result<PythonArtifact, BuildError> {
    // 1. Admission.
    if !b.source.join("main.py").is_file() {
        return Err(BuildError::NoPythonMain);
    }
    let boot = b.sdk_dir.join(BOOT_SCRIPT);
    if !boot.is_file() {
        return Err(BuildError::PythonSdk(boot));
    }
    let python = Interpreter::probe(b.interpreter, options, deadline).await?;
    let (source, out) = (b.source.to_path_buf(), b.out.to_path_buf());
    let notes = blocking(move || copy_source(&source, &out)).await?;
    for note in notes {
        log.line(&note);
    }
    let steps = Steps {
        b,
        python: &python,
        options,
        deadline,
    };
    if let Some(jail) = &options.jail {
        let (out, uid) = (b.out.to_path_buf(), jail.uid);
        blocking(move || chown_tree(&out, uid)).await?;
    }
    let result = steps.run(log).await;
    if options.jail.is_some() {
        // The tree goes back to the server: the build user keeps nothing.
        let (out, uid) = (b.out.to_path_buf(), caller_uid());
        blocking(move || chown_tree(&out, uid)).await?;
    }
    result?;
    // 5. The tar.
    let tar = tar_path(b.out);
    let (out, dest) = (b.out.to_path_buf(), tar.clone());
    let (size, digest) = blocking(move || pack(&out, &dest)).await?;
    log.line(&format!(
        "packed the app: {} ({:.1} MiB, {digest})",
        tar.file_name().unwrap_or_default().to_string_lossy(),
        size as f64 / f64::from(1 << 20)
    ));
    Ok(PythonArtifact {
        tar,
        size,
        digest,
        python_version: python.version,
    })
}

/// Where the tar of the app tree `out` goes: beside it, `<out>.tar`.
pub fn tar_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".tar");
    out.with_file_name(name)
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BuildError> + Send + 'static,
) -> Result<T, BuildError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BuildError::Spawn(io::Error::other(e)))?
}

/// What the build knows of its interpreter, asked of it (outside the jail: it is the
/// platform's, and runs nothing of the user's here).
struct Interpreter {
    /// `sys.executable`.
    executable: PathBuf,
    /// `major.minor`.
    version: String,
    /// The directories the interpreter needs, and nothing inside another: its binary's, its
    /// standard library, its site directories (Debian's pip is in `/usr/lib/python3/
    /// dist-packages`), its shared libraries.
    dirs: Vec<PathBuf>,
    has_pip: bool,
}

const PROBE: &str = r#"
import importlib.util, json, os, sys, sysconfig
paths = [sys.executable, os.path.realpath(sys.executable)]
paths = [os.path.dirname(p) for p in paths]
paths += [v for k, v in sysconfig.get_paths().items() if k in ("stdlib", "platstdlib", "purelib", "platlib")]
paths += [p for p in sys.path if p]
paths.append(sysconfig.get_config_var("LIBDIR") or "")
print(json.dumps({
    "executable": sys.executable,
    "version": "%d.%d" % sys.version_info[:2],
    "paths": paths,
    "pip": importlib.util.find_spec("pip") is not None,
}))
"#;

impl Interpreter {
    async fn probe(
        interpreter: &Path,
        options: &BuildOptions,
        deadline: tokio::time::Instant,
    ) -> Result<Interpreter, BuildError> {
        #[derive(serde::Deserialize)]
        struct Probe {
            executable: PathBuf,
            version: String,
            paths: Vec<PathBuf>,
            pip: bool,
        }
        let what = |e: &dyn std::fmt::Display| {
            BuildError::Interpreter(format!("{}: {e}", interpreter.display()))
        };
        let mut cmd = Command::new(interpreter);
        cmd.args(["-I", "-B", "-c", PROBE])
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LANG", "C.UTF-8")
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
        if probe.executable.as_os_str().is_empty() {
            return Err(what(&"it does not know its own path (sys.executable)"));
        }
        let mut dirs: Vec<PathBuf> = probe
            .paths
            .iter()
            .filter_map(|p| std::fs::canonicalize(p).ok())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        dirs.dedup();
        // Sorted, a directory comes before what it holds.
        let mut outer: Vec<PathBuf> = Vec::new();
        for dir in dirs {
            if !outer.iter().any(|o| dir.starts_with(o)) {
                outer.push(dir);
            }
        }
        Ok(Interpreter {
            executable: probe.executable,
            version: probe.version,
            dirs: outer,
            has_pip: probe.pip,
        })
    }
}

/// Steps 2 to 4, each a run of the interpreter, jailed or not.
struct Steps<'a, 'b> {
    b: &'a PythonBuild<'b>,
    python: &'a Interpreter,
    options: &'a BuildOptions,
    deadline: tokio::time::Instant,
}

/// What one run of the interpreter may reach.
struct Run {
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    /// The app tree writable (else read-only).
    writable: bool,
    read_only: Vec<PathBuf>,
    /// The registry (through the proxy, or the host's network without one); else none.
    network: bool,
    /// Whether the disk budget applies to the app tree's growth.
    watch: bool,
}

impl Steps<'_, '_> {
    async fn run(&self, log: &mut LogCap<impl FnMut(&str)>) -> Result<(), BuildError> {
        let out = self.b.out;
        // 2. requirements.txt.
        if out.join("requirements.txt").is_file() {
            if !self.python.has_pip {
                return Err(BuildError::Interpreter(format!(
                    "{} has no pip, which installs requirements.txt",
                    self.python.executable.display()
                )));
            }
            log.line("installing requirements.txt (pip)");
            let packages = out.join(PACKAGES_DIR);
            let mut args = os_args(&["-I", "-B", "-m", "pip", "install"]);
            args.extend(os_args(&[
                "--no-input",
                "--disable-pip-version-check",
                "--no-cache-dir",
                "--no-warn-script-location",
                "--no-color",
                "--progress-bar",
                "off",
                // Step 3 compiles everything, hash-based.
                "--no-compile",
                "--target",
            ]));
            args.push(packages.into());
            args.extend(os_args(&["-r", "requirements.txt"]));
            let mut read_only: Vec<PathBuf> = [
                "/etc/ssl",
                "/etc/pki",
                "/etc/ca-certificates",
                "/usr/share/ca-certificates",
            ]
            .into_iter()
            .map(PathBuf::from)
            .collect();
            if self
                .options
                .jail
                .as_ref()
                .is_some_and(|j| j.fetch_proxy.is_none())
            {
                // The host's network: its resolver's files too.
                read_only.extend(
                    [
                        "/etc/resolv.conf",
                        "/etc/hosts",
                        "/etc/nsswitch.conf",
                        "/etc/host.conf",
                        "/etc/gai.conf",
                    ]
                    .into_iter()
                    .map(PathBuf::from),
                );
            }
            let run = Run {
                args,
                env: Vec::new(),
                writable: true,
                read_only,
                network: true,
                watch: true,
            };
            let finished = self.spawn(run, log).await?;
            if !finished.status.success() {
                return Err(BuildError::PipFailed {
                    status: finished.status.to_string(),
                    last: finished.last_stderr,
                });
            }
        }
        // 3. Byte-compile, hash-based (the tar zeroes file times) and unchecked (the tree does
        // not change once built), with paths relative to the tree in the code objects.
        log.line("byte-compiling the app");
        let mut args = os_args(&[
            "-I",
            "-m",
            "compileall",
            "-q",
            "-f",
            "--invalidation-mode",
            "unchecked-hash",
            "-s",
        ]);
        args.push(out.into());
        args.push(out.into());
        let run = Run {
            args,
            env: Vec::new(),
            writable: true,
            read_only: Vec::new(),
            network: false,
            watch: true,
        };
        let finished = self.spawn(run, log).await?;
        if !finished.status.success() {
            // A file that does not compile stays source: the import check judges main.py and
            // what it imports; a dependency's unused file may well not compile.
            log.line(&format!(
                "note: some files did not byte-compile (compileall {}); they stay source only",
                finished.status
            ));
        }
        // 4. The import check.
        log.line("checking that main.py imports and registers a handler");
        let mut args = os_args(&["-I", "-S", "-B"]);
        args.push(self.b.sdk_dir.join(BOOT_SCRIPT).into());
        args.push("check".into());
        let run = Run {
            args,
            env: vec![
                ("IGNITE_APP_DIR".into(), out.into()),
                ("IGNITE_SDK_DIR".into(), self.b.sdk_dir.into()),
            ],
            writable: false,
            read_only: vec![self.b.sdk_dir.to_path_buf()],
            network: false,
            watch: false,
        };
        let finished = self.spawn(run, log).await?;
        if !finished.status.success() {
            return Err(BuildError::ImportFailed(
                finished
                    .last_stderr
                    .unwrap_or_else(|| format!("the check exited with {}", finished.status)),
            ));
        }
        Ok(())
    }

    /// The environment every run starts from: fixed, and no pip configuration of the host's.
    fn base_env(&self) -> Vec<(OsString, OsString)> {
        let bin = self
            .python
            .executable
            .parent()
            .map(|p| format!("{}:", p.display()))
            .unwrap_or_default();
        [
            ("PATH", format!("{bin}/usr/local/bin:/usr/bin:/bin")),
            ("HOME", "/tmp".into()),
            ("TMPDIR", "/tmp".into()),
            ("LANG", "C.UTF-8".into()),
            ("PIP_CONFIG_FILE", "/dev/null".into()),
            // Unconfined, the server may be root; jailed, the build user never is.
            ("PIP_ROOT_USER_ACTION", "ignore".into()),
            // What reproducible builds of sdists go by (wheel's zip times, say).
            ("SOURCE_DATE_EPOCH", "315532800".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
    }

    async fn spawn(
        &self,
        run: Run,
        log: &mut LogCap<impl FnMut(&str)>,
    ) -> Result<crate::Finished, BuildError> {
        let out = self.b.out;
        let (cmd, watch) = match &self.options.jail {
            None => {
                let mut cmd = Command::new(&self.python.executable);
                // The host's environment (its proxy settings, say) minus what configures
                // Python or pip; HOME and TMPDIR stay the host's.
                for (k, _) in std::env::vars_os() {
                    let k = k.as_bytes();
                    if k.starts_with(b"PYTHON") || k.starts_with(b"PIP_") {
                        cmd.env_remove(std::ffi::OsStr::from_bytes(k));
                    }
                }
                for (k, v) in self.base_env() {
                    if k != "HOME" && k != "TMPDIR" && k != "PATH" {
                        cmd.env(k, v);
                    }
                }
                cmd.envs(run.env).args(run.args).current_dir(out);
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
                let watch = run.watch.then(|| DiskWatch {
                    dir: out.to_path_buf(),
                    limit: jail.max_disk_bytes,
                });
                (cmd, watch)
            }
        };
        run_logged(cmd, self.options.timeout, self.deadline, watch, log, |_| {
            true
        })
        .await
    }

    /// The jail of one run: the interpreter's directories, the SDK and the app tree, as the
    /// build user, a scratch `/tmp` for HOME and temporary files.
    fn spec(&self, jail: &JailOptions, run: &Run) -> JailSpec {
        let out = self.b.out.to_path_buf();
        let mut read_only = self.python.dirs.clone();
        read_only.extend(run.read_only.iter().filter(|p| p.exists()).cloned());
        let writable = if run.writable {
            vec![out.clone()]
        } else {
            read_only.push(out.clone());
            Vec::new()
        };
        let network = match (&jail.fetch_proxy, run.network) {
            (_, false) => JailNetwork::None,
            (Some(proxy), true) => JailNetwork::Proxy(proxy.clone()),
            (None, true) => JailNetwork::Host,
        };
        let mut full_env = self.base_env();
        full_env.extend(run.env.iter().cloned());
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
            cwd: out,
            env: full_env,
            program: self.python.executable.clone(),
            args: run.args.clone(),
            network,
            user_namespace: None,
            loopback_tunnels: Vec::new(),
        }
    }
}

fn os_args(args: &[&str]) -> Vec<OsString> {
    args.iter().map(Into::into).collect()
}

/// Copies the upload into `out` (see the module's documentation); returns notes for the log.
fn copy_source(source: &Path, out: &Path) -> Result<Vec<String>, BuildError> {
    copy_tree(source, out, &|rel| {
        if rel.file_name().is_some_and(|n| n == "__pycache__") {
            return Some(None);
        }
        (rel == Path::new(PACKAGES_DIR)).then(|| {
            Some(format!(
                "note: left out the upload's {PACKAGES_DIR}: the build installs \
                 requirements.txt there"
            ))
        })
    })
}

/// Copies an upload into `out`: links that stay inside are replaced by copies of what they
/// point to, links leading outside are refused, and so are files over [`MAX_FILE_BYTES`] and
/// uploads over [`MAX_SOURCE_BYTES`]. `leave_out` is asked of each path (relative to the
/// upload): `Some(note)` leaves it out (the note, if any, goes to the log). Returns the notes.
pub(crate) fn copy_tree(
    source: &Path,
    out: &Path,
    leave_out: &dyn Fn(&Path) -> Option<Option<String>>,
) -> Result<Vec<String>, BuildError> {
    let root = std::fs::canonicalize(source).map_err(io_err(source))?;
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let mut notes = Vec::new();
    let mut total = 0u64;
    // (the directory to read, its copy, its path in the upload, the real directories that
    // lead to it: a link to one of them is a loop)
    let mut stack = vec![(
        root.clone(),
        out.to_path_buf(),
        PathBuf::new(),
        vec![root.clone()],
    )];
    while let Some((dir, copy, rel, ancestors)) = stack.pop() {
        let mut names = std::fs::read_dir(&dir)
            .map_err(io_err(&dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(io_err(&dir))?;
        names.sort();
        for name in names {
            let (from, to, rel) = (dir.join(&name), copy.join(&name), rel.join(&name));
            let shown = rel.to_string_lossy().into_owned();
            if let Some(note) = leave_out(&rel) {
                notes.extend(note);
                continue;
            }
            let mut meta = std::fs::symlink_metadata(&from).map_err(io_err(&from))?;
            let mut real = from.clone();
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&from).map_err(io_err(&from))?;
                let outside = || BuildError::LinkOutside {
                    path: shown.clone(),
                    target: target.to_string_lossy().into_owned(),
                };
                real = std::fs::canonicalize(&from).map_err(|_| outside())?;
                if !real.starts_with(&root) {
                    return Err(outside());
                }
                meta = std::fs::metadata(&real).map_err(io_err(&real))?;
                if meta.is_dir() && ancestors.iter().any(|a| a.starts_with(&real)) {
                    return Err(BuildError::LinkLoop(shown));
                }
            }
            let mode = meta.permissions().mode() & 0o777;
            if meta.is_dir() {
                std::fs::create_dir(&to).map_err(io_err(&to))?;
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode | 0o700))
                    .map_err(io_err(&to))?;
                let mut ancestors = ancestors.clone();
                ancestors.push(real.clone());
                stack.push((real, to, rel, ancestors));
            } else if meta.is_file() {
                if meta.len() > MAX_FILE_BYTES {
                    return Err(BuildError::FileTooLarge {
                        path: shown,
                        limit_mb: MAX_FILE_BYTES >> 20,
                    });
                }
                total += meta.len();
                if total > MAX_SOURCE_BYTES {
                    return Err(BuildError::SourceTooLarge {
                        limit_mb: MAX_SOURCE_BYTES >> 20,
                    });
                }
                copy_file(&real, &to, mode, MAX_FILE_BYTES)?;
            } else {
                notes.push(format!(
                    "note: left out {shown}: neither a file nor a directory"
                ));
            }
        }
    }
    Ok(notes)
}

/// Copies one regular file (at most `cap` bytes of it), with permission bits `mode`.
pub(crate) fn copy_file(from: &Path, to: &Path, mode: u32, cap: u64) -> Result<(), BuildError> {
    let mut src = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(from)
        .map_err(io_err(from))?;
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode | 0o600)
        .open(to)
        .map_err(io_err(to))?;
    let copied = io::copy(&mut (&mut src).take(cap + 1), &mut dst).map_err(io_err(to))?;
    if copied > cap {
        return Err(BuildError::FileTooLarge {
            path: from.to_string_lossy().into_owned(),
            limit_mb: cap >> 20,
        });
    }
    // The creation mode went through the umask.
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode | 0o600)).map_err(io_err(to))
}

/// Writes through to `inner`, hashing and counting.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    size: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Packs the app tree `out` into `dest`: entries sorted by path, each with mtime 0, uid and
/// gid 0, no owner names, and its permission bits; only files and directories (anything else
/// is an [`BuildError::AppTree`]). Returns the tar's size and `sha256:` digest.
pub(crate) fn pack(out: &Path, dest: &Path) -> Result<(u64, String), BuildError> {
    let mut entries = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = out.join(&rel);
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let rel = rel.join(entry.file_name());
            let meta = std::fs::symlink_metadata(out.join(&rel)).map_err(io_err(&dir))?;
            if meta.is_dir() {
                stack.push(rel.clone());
            } else if !meta.is_file() {
                return Err(BuildError::AppTree(rel.to_string_lossy().into_owned()));
            }
            entries.push((rel, meta));
        }
    }
    entries.sort_by(|(a, _), (b, _)| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));

    let tmp = dest.with_extension("tar.partial");
    let file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    let mut tar = tar::Builder::new(Hashing {
        inner: io::BufWriter::new(file),
        hash: Sha256::new(),
        size: 0,
    });
    for (rel, meta) in &entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mode(meta.permissions().mode() & 0o777);
        let path = out.join(rel);
        if meta.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            tar.append_data(&mut header, rel, io::empty())
                .map_err(io_err(&tmp))?;
        } else {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(io_err(&path))?;
            let len = file.metadata().map_err(io_err(&path))?.len();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(len);
            tar.append_data(&mut header, rel, file.take(len))
                .map_err(io_err(&tmp))?;
        }
    }
    let mut hashing = tar.into_inner().map_err(io_err(&tmp))?;
    hashing.flush().map_err(io_err(&tmp))?;
    let (size, digest) = (
        hashing.size,
        format!("sha256:{:x}", hashing.hash.finalize()),
    );
    hashing
        .inner
        .into_inner()
        .map_err(|e| io_err(&tmp)(e.into_error()))?
        .sync_all()
        .map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, dest).map_err(io_err(dest))?;
    Ok((size, digest))
}
