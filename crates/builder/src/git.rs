//! The `--git-url <url>[#<ref>]` mode's clone: one commit of a repository into a directory, the
//! build context of an image build ([`crate::image`]).
//!
//! git runs in the build jail as the build user, with the registry proxy (its allow-list the
//! operator's git hosts) as its only network and none of the host's configuration
//! (`GIT_CONFIG_NOSYSTEM`, an empty global config, `HOME` in the jail's scratch): only `https`
//! and `http` as protocols, no hooks, no submodules, no redirects, no prompts. A branch or a
//! tag is fetched shallow (`--depth 1`); a commit id is fetched by itself when the server
//! allows it (`uploadpack.allowReachableSHA1InWant`), else the whole history is fetched and the
//! commit checked out. The clone's `.git` is removed afterwards: the context is the tree alone.
//! Credentials in a URL (`https://user:token@host/…`) never reach the log or an error.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use ignite_sandbox::jail::{JailNetwork, JailSpec};
use tokio::process::Command;

use crate::python::blocking;
use crate::{
    BuildError, BuildOptions, DiskWatch, LogCap, caller_uid, chown_tree, io_err, run_logged,
};

/// One clone's inputs.
#[derive(Debug, Clone, Copy)]
pub struct GitClone<'a> {
    /// `https://` or `http://` only.
    pub url: &'a str,
    /// A branch, a tag or a commit id; `None` for the remote's `HEAD`.
    pub reference: Option<&'a str>,
    /// An empty (or missing) directory: the checkout.
    pub dest: &'a Path,
    /// The git binary (`/usr/bin/git`).
    pub git: &'a Path,
    /// `host:port` the clone may reach (port 443 for `https`, 80 for `http` when the URL
    /// writes none); the proxy in [`crate::JailOptions::fetch_proxy`] must allow exactly these.
    pub allowed_hosts: &'a [String],
}

/// A checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitCheckout {
    pub dir: PathBuf,
    /// The commit checked out (40 hex digits).
    pub commit: String,
}

/// Splits `--git-url`'s `<url>[#<ref>]`.
pub fn split_reference(spec: &str) -> (&str, Option<&str>) {
    match spec.split_once('#') {
        Some((url, reference)) if !reference.is_empty() => (url, Some(reference)),
        Some((url, _)) => (url, None),
        None => (spec, None),
    }
}

/// A URL the clone may use: `http(s)://` (nothing else: no `file://`, `ext::`, ssh, or an
/// option-like `-u…`), no blank or control character. Returns its `host:port`.
pub fn check_url(url: &str) -> Result<String, BuildError> {
    let refuse = |why: &str| {
        BuildError::GitUrl(format!(
            "--git-url {}: {why}; give an https:// (or http://) URL of the repository",
            redact_url(url)
        ))
    };
    if url.starts_with('-') {
        return Err(refuse("a URL may not start with `-`"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(refuse("a URL may not hold blanks or control characters"));
    }
    let lower = url.to_ascii_lowercase();
    let (rest, port) = if lower.starts_with("https://") {
        (&url[8..], 443)
    } else if lower.starts_with("http://") {
        (&url[7..], 80)
    } else {
        return Err(refuse(
            "only https:// and http:// URLs are cloned (file://, ssh, git:// and ext:: are refused)",
        ));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host_port.is_empty() {
        return Err(refuse("it names no host"));
    }
    let host = match host_port.rsplit_once(':') {
        Some((h, p)) if !host_port.ends_with(']') => {
            if h.is_empty() || p.parse::<u16>().is_err() {
                return Err(refuse("its port is not a number"));
            }
            host_port.to_ascii_lowercase()
        }
        _ => format!("{}:{port}", host_port.to_ascii_lowercase()),
    };
    Ok(host)
}

/// A reference the clone may fetch: no leading `-`, nothing a refspec or a revision
/// expression would read.
fn check_reference(reference: &str) -> Result<(), BuildError> {
    let bad = reference.is_empty()
        || reference.starts_with('-')
        || reference.contains("..")
        || reference.contains("@{")
        || reference.ends_with('/')
        || reference.ends_with(".lock")
        || reference.chars().any(|c| {
            c.is_whitespace()
                || c.is_control()
                || matches!(c, ':' | '^' | '~' | '?' | '*' | '[' | '\\' | '+')
        });
    if bad {
        return Err(BuildError::GitRef(reference.to_string()));
    }
    Ok(())
}

/// The URL with its credentials (`user:password@`) replaced by `***@`.
pub fn redact_url(url: &str) -> String {
    match userinfo(url) {
        Some(info) => url.replacen(&format!("{info}@"), "***@", 1),
        None => url.to_string(),
    }
}

/// The `user[:password]` of a URL, if it has one.
fn userinfo(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority.rsplit_once('@').map(|(info, _)| info)
}

/// Clones `c.url` at `c.reference` into `c.dest` (see the module's documentation), git's
/// output going to `log` (capped at [`BuildOptions::max_log_bytes`]), under
/// [`BuildOptions::timeout`].
pub async fn clone_git(
    c: &GitClone<'_>,
    options: &BuildOptions,
    mut log: impl FnMut(&str),
) -> Result<GitCheckout, BuildError> {
    let deadline = tokio::time::Instant::now() + options.timeout;
    // Every line, git's included, loses the URL's credentials before the log sees it.
    let secrets: Vec<String> = userinfo(c.url)
        .map(|info| {
            let mut s = vec![info.to_string()];
            s.extend(info.split_once(':').map(|(_, p)| p.to_string()));
            s.retain(|s| !s.is_empty());
            s
        })
        .unwrap_or_default();
    let redact = move |line: &str| {
        secrets
            .iter()
            .fold(line.to_string(), |l, s| l.replace(s.as_str(), "***"))
    };
    let redact_log = redact.clone();
    let mut log = LogCap::new(options.max_log_bytes, |line: &str| log(&redact_log(line)));
    let result = clone_with(c, options, deadline, &mut log).await;
    log.finish();
    result.map_err(|e| match e {
        BuildError::GitFailed { step, status, last } => BuildError::GitFailed {
            step,
            status,
            last: last.map(|l| redact(&l)),
        },
        other => other,
    })
}

async fn clone_with(
    c: &GitClone<'_>,
    options: &BuildOptions,
    deadline: tokio::time::Instant,
    log: &mut LogCap<impl FnMut(&str)>,
) -> Result<GitCheckout, BuildError> {
    let host = check_url(c.url)?;
    if let Some(reference) = c.reference {
        check_reference(reference)?;
    }
    if !c
        .allowed_hosts
        .iter()
        .any(|h| h.eq_ignore_ascii_case(&host))
    {
        return Err(BuildError::GitHostNotAllowed {
            host,
            allowed: if c.allowed_hosts.is_empty() {
                "(none: the operator allows no git host)".into()
            } else {
                c.allowed_hosts.join(", ")
            },
        });
    }
    std::fs::create_dir_all(c.dest).map_err(io_err(c.dest))?;
    if let Some(jail) = &options.jail {
        let (dest, uid) = (c.dest.to_path_buf(), jail.uid);
        blocking(move || chown_tree(&dest, uid)).await?;
    }
    let git = Git {
        c,
        options,
        deadline,
        host,
    };
    let result = git.steps(log).await;
    let dest = c.dest.to_path_buf();
    blocking(move || {
        let dot_git = dest.join(".git");
        if dot_git.exists() {
            std::fs::remove_dir_all(&dot_git).map_err(io_err(&dot_git))?;
        }
        chown_tree(&dest, caller_uid())
    })
    .await?;
    let commit = result?;
    log.line(&format!("checked out {commit}"));
    Ok(GitCheckout {
        dir: c.dest.to_path_buf(),
        commit,
    })
}

struct Git<'a, 'b> {
    c: &'a GitClone<'b>,
    options: &'a BuildOptions,
    deadline: tokio::time::Instant,
    host: String,
}

impl Git<'_, '_> {
    async fn steps(&self, log: &mut LogCap<impl FnMut(&str)>) -> Result<String, BuildError> {
        let shown = redact_url(self.c.url);
        let at = self.c.reference.unwrap_or("HEAD");
        log.line(&format!("cloning {shown} at {at}"));
        let dest: OsString = self.c.dest.into();
        self.git(
            "git init",
            vec!["init".into(), "-q".into(), "--template=".into(), dest],
        )
        .await?;
        self.git(
            "git config",
            vec![
                "config".into(),
                "remote.origin.url".into(),
                self.c.url.into(),
            ],
        )
        .await?;
        let fetch = |extra: &[&str]| {
            let mut a: Vec<OsString> = vec!["fetch".into(), "--no-tags".into()];
            a.extend(extra.iter().map(Into::into));
            a
        };
        let shallow = self
            .run(log, fetch(&["--depth", "1", "origin", at]))
            .await?;
        let target = if shallow.0.success() {
            "FETCH_HEAD".to_string()
        } else if self.c.reference.is_some_and(is_commit_id) {
            log.line("the server does not serve that commit by itself: fetching the history");
            let all = fetch(&[
                "origin",
                "+refs/heads/*:refs/remotes/origin/*",
                "+refs/tags/*:refs/tags/*",
            ]);
            let (status, last) = self.run(log, all).await?;
            if !status.success() {
                return Err(failed("git fetch", status, last));
            }
            at.to_string()
        } else {
            return Err(failed("git fetch", shallow.0, shallow.1));
        };
        let checkout = vec![
            "checkout".into(),
            "-q".into(),
            "--detach".into(),
            format!("{target}^{{commit}}").into(),
        ];
        self.git("git checkout", checkout).await?;
        let mut commit = String::new();
        let (status, last) = self
            .run_capturing(log, vec!["rev-parse".into(), "HEAD".into()], &mut commit)
            .await?;
        if !status.success() {
            return Err(failed("git rev-parse", status, last));
        }
        Ok(commit.trim().to_string())
    }

    async fn git(&self, step: &str, args: Vec<OsString>) -> Result<(), BuildError> {
        let mut quiet = LogCap::new(usize::MAX, |_: &str| {});
        let (status, last) = self.run(&mut quiet, args).await?;
        if !status.success() {
            return Err(failed(step, status, last));
        }
        Ok(())
    }

    async fn run(
        &self,
        log: &mut LogCap<impl FnMut(&str)>,
        args: Vec<OsString>,
    ) -> Result<(std::process::ExitStatus, Option<String>), BuildError> {
        let mut ignored = String::new();
        self.run_capturing(log, args, &mut ignored).await
    }

    /// One run of git in the clone's directory; its stdout goes to `stdout`.
    async fn run_capturing(
        &self,
        log: &mut LogCap<impl FnMut(&str)>,
        args: Vec<OsString>,
        stdout: &mut String,
    ) -> Result<(std::process::ExitStatus, Option<String>), BuildError> {
        let mut full: Vec<OsString> = Vec::new();
        for c in [
            "protocol.allow=never",
            "protocol.https.allow=always",
            "protocol.http.allow=always",
            "core.hooksPath=/dev/null",
            "core.fsmonitor=false",
            "credential.helper=",
            "submodule.recurse=false",
            "fetch.recurseSubmodules=false",
            "http.followRedirects=false",
            "advice.detachedHead=false",
            "init.defaultBranch=main",
            "gc.auto=0",
            "safe.directory=*",
        ] {
            full.push("-c".into());
            full.push(c.into());
        }
        if args.first().is_none_or(|a| a != "init") {
            full.push("-C".into());
            full.push(self.c.dest.into());
        }
        full.extend(args);
        let env: Vec<(OsString, OsString)> = [
            ("PATH", "/usr/local/bin:/usr/bin:/bin"),
            ("HOME", "/tmp"),
            ("TMPDIR", "/tmp"),
            ("LANG", "C.UTF-8"),
            ("GIT_CONFIG_NOSYSTEM", "1"),
            ("GIT_CONFIG_GLOBAL", "/dev/null"),
            ("GIT_TERMINAL_PROMPT", "0"),
            ("GIT_ALLOW_PROTOCOL", "https:http"),
            ("GIT_PROTOCOL_FROM_USER", "0"),
            ("GIT_LFS_SKIP_SMUDGE", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
        let (cmd, watch) = match &self.options.jail {
            None => {
                let mut cmd = Command::new(self.c.git);
                cmd.env_clear().envs(env).args(full).current_dir("/");
                (cmd, None)
            }
            Some(jail) => {
                let mut read_only: Vec<PathBuf> = [
                    "/etc/ssl",
                    "/etc/pki",
                    "/etc/ca-certificates",
                    "/usr/share/ca-certificates",
                ]
                .into_iter()
                .map(PathBuf::from)
                .collect();
                let network = match &jail.fetch_proxy {
                    Some(proxy) => JailNetwork::Proxy(proxy.clone()),
                    None => {
                        read_only.extend(
                            [
                                "/etc/resolv.conf",
                                "/etc/hosts",
                                "/etc/nsswitch.conf",
                                "/etc/gai.conf",
                            ]
                            .into_iter()
                            .map(PathBuf::from),
                        );
                        JailNetwork::Host
                    }
                };
                read_only.retain(|p| p.exists());
                let loopback_tunnels = match (&network, crate::image::loopback(&self.host)) {
                    (JailNetwork::Proxy(_), Some(t)) => vec![t],
                    _ => Vec::new(),
                };
                let spec = JailSpec {
                    root: jail.root.clone(),
                    read_only,
                    writable: vec![self.c.dest.to_path_buf()],
                    mapped: Vec::new(),
                    scratch: Vec::new(),
                    tmp_mb: jail.tmp_mb,
                    uid: jail.uid,
                    cgroups: jail.cgroups.clone(),
                    max_file_bytes: jail.max_disk_bytes,
                    max_processes: 512,
                    max_address_space: jail.max_address_space,
                    cwd: self.c.dest.to_path_buf(),
                    env,
                    program: self.c.git.to_path_buf(),
                    args: full,
                    network,
                    user_namespace: None,
                    loopback_tunnels,
                };
                let mut cmd = Command::new(&jail.helper);
                cmd.arg("ignite")
                    .arg("__jail")
                    .args(spec.to_args())
                    .env_clear()
                    .current_dir("/");
                let watch = DiskWatch {
                    dir: self.c.dest.to_path_buf(),
                    limit: jail.max_disk_bytes,
                };
                (cmd, Some(watch))
            }
        };
        let finished = run_logged(
            cmd,
            self.options.timeout,
            self.deadline,
            watch,
            log,
            |line| {
                stdout.push_str(line);
                stdout.push('\n');
                false
            },
        )
        .await?;
        Ok((finished.status, finished.last_stderr))
    }
}

fn failed(step: &str, status: std::process::ExitStatus, last: Option<String>) -> BuildError {
    BuildError::GitFailed {
        step: step.to_string(),
        status: status.to_string(),
        last,
    }
}

/// A full commit id (what a server may serve by itself).
fn is_commit_id(reference: &str) -> bool {
    (7..=40).contains(&reference.len()) && reference.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_are_cloned() {
        assert_eq!(
            check_url("https://git.example/a/b.git").unwrap(),
            "git.example:443"
        );
        assert_eq!(
            check_url("http://127.0.0.1:8080/r").unwrap(),
            "127.0.0.1:8080"
        );
        assert_eq!(
            check_url("HTTPS://u:p@Git.Example:8443/r").unwrap(),
            "git.example:8443"
        );
        for bad in [
            "file:///etc",
            "ext::sh -c touch% /tmp/pwned",
            "--upload-pack=touch /tmp/x",
            "-uhttps://x",
            "git://git.example/r",
            "ssh://git@git.example/r",
            "git@git.example:r.git",
            "https://",
            "https://host/a b",
            "https://host:x/r",
        ] {
            assert!(
                matches!(check_url(bad), Err(BuildError::GitUrl(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn references_must_be_names() {
        for good in ["main", "v1.2.3", "feature/x", "0123abcd"] {
            check_reference(good).unwrap();
        }
        for bad in [
            "-u",
            "--upload-pack=x",
            "a:b",
            "a..b",
            "+x",
            "x y",
            "",
            "a^{}",
        ] {
            assert!(check_reference(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_are_redacted() {
        assert_eq!(
            redact_url("https://user:s3cret@git.example/r.git"),
            "https://***@git.example/r.git"
        );
        assert_eq!(redact_url("https://git.example/r"), "https://git.example/r");
        assert_eq!(
            split_reference("https://h/r#v1"),
            ("https://h/r", Some("v1"))
        );
        assert_eq!(split_reference("https://h/r"), ("https://h/r", None));
        let e = check_url("file://user:s3cret@h/r").unwrap_err().to_string();
        assert!(!e.contains("s3cret"), "{e}");
    }
}
