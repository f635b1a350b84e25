//! An unpacked root and the process settings the runtime takes from the image: who it runs as
//! (`USER`, names looked up in the root's own `etc/passwd` and `etc/group`), where (`WORKDIR`),
//! what (`ENTRYPOINT` ++ `CMD`, the program found on the image's `PATH` inside the root).

use std::io::Read;
use std::path::{Path, PathBuf};

use rustix::fs::FileType;

use crate::inroot::{InRoot, join, lstat};
use crate::unpack::normalize;
use crate::{ImageConfig, ImageError};

/// The `PATH` of an image that sets none (Docker's).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The most of `etc/passwd` or `etc/group` read.
const MAX_DB: u64 = 4 << 20;

/// An unpacked root for one image, and the process settings the runtime needs from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    /// The root directory on the host.
    pub path: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// Absolute, inside the root.
    pub workdir: PathBuf,
    /// `ENTRYPOINT` ++ `CMD` (or `CMD` alone).
    pub argv: Vec<String>,
    /// `argv[0]` resolved inside the root (through the image's `PATH` when it has no `/`),
    /// following symlinks within the root: an absolute path inside the root.
    pub program: PathBuf,
    /// The image's `ENV`.
    pub env: Vec<(String, String)>,
}

/// The settings of the root unpacked at `tree`, which will be found at `path`.
pub(crate) fn settings(
    tree: &Path,
    path: PathBuf,
    config: &ImageConfig,
) -> Result<Root, ImageError> {
    let root =
        InRoot::open(tree).map_err(|e| ImageError::io("could not open the root", tree, e))?;
    let workdir = workdir(config.working_dir.as_deref());
    let (uid, gid) = user(&root, config.user.as_deref())?;
    let argv = if config.entrypoint.is_empty() {
        config.cmd.clone()
    } else {
        config
            .entrypoint
            .iter()
            .chain(&config.cmd)
            .cloned()
            .collect()
    };
    let Some(argv0) = argv.first() else {
        return Err(ImageError::NoCommand);
    };
    let search = config
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    let program = program(&root, argv0, search, &workdir)?;
    Ok(Root {
        path,
        uid,
        gid,
        workdir,
        argv,
        program,
        env: config.env.clone(),
    })
}

/// `WORKDIR` as an absolute path inside the root (`/` by default; a `..` stops at the root).
fn workdir(dir: Option<&str>) -> PathBuf {
    let mut out = PathBuf::from("/");
    if let Some(dir) = dir {
        let mut parts = Vec::new();
        for c in Path::new(dir).components() {
            match c {
                std::path::Component::Normal(n) => parts.push(n),
                std::path::Component::ParentDir => {
                    parts.pop();
                }
                _ => {}
            }
        }
        out.extend(parts);
    }
    out
}

/// The uid and gid `USER` names: numeric `uid[:gid]`, or names looked up in the root's
/// `etc/passwd` and `etc/group`; 0:0 without one.
fn user(root: &InRoot, spec: Option<&str>) -> Result<(u32, u32), ImageError> {
    let Some(spec) = spec else {
        return Ok((0, 0));
    };
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read_db(root, "etc/passwd")?;
    // name:password:uid:gid:...
    let entry = passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        let (name, uid, gid) = (
            f.first()?,
            f.get(2)?.parse::<u32>().ok()?,
            f.get(3)?.parse::<u32>().ok()?,
        );
        let matches = match user.parse::<u32>() {
            Ok(n) => uid == n,
            Err(_) => *name == user,
        };
        matches.then_some((uid, gid))
    });
    let (uid, primary) = match (user.parse::<u32>(), entry) {
        (Ok(uid), entry) => (uid, entry.map_or(0, |(_, gid)| gid)),
        (Err(_), Some(entry)) => entry,
        (Err(_), None) => {
            return Err(ImageError::UnknownUser { name: user.into() });
        }
    };
    let gid = match group {
        None | Some("") => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let groups = read_db(root, "etc/group")?;
                groups
                    .lines()
                    .find_map(|line| {
                        let f: Vec<&str> = line.split(':').collect();
                        (f.first() == Some(&g)).then(|| f.get(2)?.parse::<u32>().ok())?
                    })
                    .ok_or_else(|| ImageError::UnknownGroup { name: g.into() })?
            }
        },
    };
    Ok((uid, gid))
}

/// A user or group database of the root (empty if the image has none), read through symlinks
/// resolved inside the root only.
fn read_db(root: &InRoot, rel: &str) -> Result<String, ImageError> {
    let file = match root.open_read(Path::new(rel)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(ImageError::io("could not read the image's", rel, e)),
    };
    let regular = file.metadata().map(|m| m.is_file()).unwrap_or(false);
    if !regular {
        return Ok(String::new());
    }
    let mut bytes = Vec::new();
    file.take(MAX_DB)
        .read_to_end(&mut bytes)
        .map_err(|e| ImageError::io("could not read the image's", rel, e))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// `argv0` found in the root: as a path if it has a `/` (relative to the workdir), else on
/// `search` (the image's `PATH`); it must be an executable regular file.
fn program(
    root: &InRoot,
    argv0: &str,
    search: &str,
    workdir: &Path,
) -> Result<PathBuf, ImageError> {
    let candidates: Vec<PathBuf> = if argv0.contains('/') {
        vec![workdir.join(argv0)]
    } else {
        search
            .split(':')
            .filter(|d| d.starts_with('/'))
            .map(|d| Path::new(d).join(argv0))
            .collect()
    };
    let mut not_executable = None;
    for candidate in &candidates {
        let Ok(resolved) = root.resolve(candidate) else {
            continue;
        };
        let rel = join(&normalize(&resolved).unwrap_or_default());
        let Ok(Some(st)) = lstat(root.fd(), &rel) else {
            continue;
        };
        if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile && st.st_mode & 0o111 != 0 {
            return Ok(resolved);
        }
        not_executable.get_or_insert(resolved);
    }
    match not_executable {
        Some(path) => Err(ImageError::NotExecutable {
            program: argv0.into(),
            path,
        }),
        None => Err(ImageError::ProgramNotFound {
            program: argv0.into(),
            searched: if argv0.contains('/') {
                workdir.display().to_string()
            } else {
                format!("PATH={search}")
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workdir_is_absolute_and_inside() {
        assert_eq!(workdir(None), PathBuf::from("/"));
        assert_eq!(workdir(Some("srv/app")), PathBuf::from("/srv/app"));
        assert_eq!(workdir(Some("/a/../../b")), PathBuf::from("/b"));
    }
}
