//! What an uploaded tree may hold before cargo sees it.
//!
//! [`check_sources`] reads every `Cargo.toml` in the tree (not only the root's: a nested one
//! is read by cargo as soon as the root depends on it) and refuses each path that, resolved
//! against its manifest's directory, leaves the project, and each dependency from anywhere but
//! crates.io. [`remove_cargo_configs`] removes every `.cargo` directory in the tree (before the
//! check, which then has nothing of theirs to judge): the platform alone configures cargo.
//!
//! The check is for good error messages and for the unconfined mode; in the jail the fetch and
//! the compile see nothing outside the project anyway (see `JailSpec`), so a route this misses
//! ends in "not found", not in a read.

use std::path::{Component, Path, PathBuf};

use toml_edit::{DocumentMut, Item};

use crate::{BuildError, io_err};

/// Where cargo takes dependency specs from, in a manifest or a `[target.<cfg>]` table.
const DEPENDENCY_TABLES: &[&str] = &[
    "dependencies",
    "dev-dependencies",
    "dev_dependencies",
    "build-dependencies",
    "build_dependencies",
];

/// Target tables whose entries have a `path`.
const TARGET_ARRAYS: &[&str] = &["bin", "example", "test", "bench"];

/// Every file of the tree, depth first, refusing symbolic links (an upload never has one: the
/// unpacker refuses them; a link would make a path that looks inside lead out). `visit` gets
/// each path and whether it is a directory, and says whether to go into it.
fn walk(
    root: &Path,
    dir: &Path,
    visit: &mut dyn FnMut(&Path, bool) -> bool,
) -> Result<(), BuildError> {
    let mut entries = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_err(dir))?;
    entries.sort();
    for path in entries {
        let meta = std::fs::symlink_metadata(&path).map_err(io_err(&path))?;
        if meta.file_type().is_symlink() {
            return Err(BuildError::Symlink(relative(root, &path)));
        }
        if visit(&path, meta.is_dir()) && meta.is_dir() {
            walk(root, &path, visit)?;
        }
    }
    Ok(())
}

/// `path` relative to the project, for messages.
fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// Removes every `.cargo` (directory or file) in the project, without looking inside: cargo reads `.cargo/config.toml`
/// from the directory it runs in and each parent, and a project's could name a rustc wrapper,
/// a linker, a runner, rustflags, `[env]`, a source replacement or another registry. Returns
/// what was removed, relative to the project.
pub fn remove_cargo_configs(root: &Path) -> Result<Vec<String>, BuildError> {
    let mut found = Vec::new();
    walk(root, root, &mut |path, _| {
        if path.file_name().is_some_and(|n| n == ".cargo") {
            found.push(path.to_path_buf());
            return false;
        }
        true
    })?;
    // Removing during the walk would leave it reading a directory that is gone.
    let mut removed = Vec::new();
    for path in found {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&path)(e)),
        };
        if meta.is_dir() {
            std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
        } else {
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
        removed.push(relative(root, &path));
    }
    Ok(removed)
}

/// Checks every `Cargo.toml` under `root` (see the module's documentation).
pub fn check_sources(root: &Path) -> Result<(), BuildError> {
    let mut manifests: Vec<PathBuf> = Vec::new();
    walk(root, root, &mut |path, is_dir| {
        if !is_dir && path.file_name().is_some_and(|n| n == "Cargo.toml") {
            manifests.push(path.to_path_buf());
        }
        true
    })?;
    for path in manifests {
        let name = relative(root, &path);
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        let doc: DocumentMut =
            text.parse()
                .map_err(|e: toml_edit::TomlError| BuildError::InvalidManifest {
                    manifest: name.clone(),
                    reason: e.to_string(),
                })?;
        // Components of the manifest's directory below the project root.
        let depth = Path::new(&name)
            .parent()
            .map_or(0, |p| p.components().count());
        Manifest { name: &name, depth }.check(&doc)?;
    }
    Ok(())
}

/// One manifest being checked.
struct Manifest<'a> {
    /// Relative to the project.
    name: &'a str,
    /// How deep its directory is below the project root.
    depth: usize,
}

impl Manifest<'_> {
    fn check(&self, doc: &DocumentMut) -> Result<(), BuildError> {
        if doc.contains_key("cargo-features") {
            return Err(BuildError::UnstableFeatures(self.name.to_string()));
        }
        // `project` is the old name of `package`, still read.
        for table in ["package", "project"] {
            if let Some(package) = doc.get(table) {
                for key in ["workspace", "build", "readme", "license-file"] {
                    self.paths(package.get(key), &format!("{table}.{key}"))?;
                }
            }
        }
        if let Some(workspace) = doc.get("workspace") {
            for key in ["members", "exclude", "default-members"] {
                self.paths(workspace.get(key), &format!("workspace.{key}"))?;
            }
            if let Some(package) = workspace.get("package") {
                for key in ["readme", "license-file"] {
                    self.paths(package.get(key), &format!("workspace.package.{key}"))?;
                }
            }
            self.dependencies(workspace.get("dependencies"), "workspace.dependencies")?;
        }
        if let Some(lib) = doc.get("lib") {
            self.paths(lib.get("path"), "lib.path")?;
        }
        for kind in TARGET_ARRAYS {
            if let Some(targets) = doc.get(kind).and_then(Item::as_array_of_tables) {
                for (i, target) in targets.iter().enumerate() {
                    self.paths(target.get("path"), &format!("{kind}[{i}].path"))?;
                }
            }
        }
        for key in DEPENDENCY_TABLES {
            self.dependencies(doc.get(key), key)?;
        }
        if let Some(targets) = doc.get("target").and_then(Item::as_table_like) {
            for (cfg, table) in targets.iter() {
                for key in DEPENDENCY_TABLES {
                    self.dependencies(table.get(key), &format!("target.{}.{key}", quoted(cfg)))?;
                }
            }
        }
        // [patch.<source>] and [replace] hold dependency specs too.
        if let Some(patch) = doc.get("patch").and_then(Item::as_table_like) {
            for (source, table) in patch.iter() {
                self.dependencies(Some(table), &format!("patch.{}", quoted(source)))?;
            }
        }
        self.dependencies(doc.get("replace"), "replace")
    }

    /// A table of dependency specs (`name = "1"` or `name = { … }`).
    fn dependencies(&self, table: Option<&Item>, key: &str) -> Result<(), BuildError> {
        let Some(deps) = table.and_then(Item::as_table_like) else {
            return Ok(());
        };
        for (name, spec) in deps.iter() {
            let key = format!("{key}.{}", quoted(name));
            if spec.get("git").is_some() {
                return Err(BuildError::GitDependency {
                    manifest: self.name.to_string(),
                    key,
                });
            }
            if spec.get("registry").is_some() || spec.get("registry-index").is_some() {
                return Err(BuildError::OtherRegistry {
                    manifest: self.name.to_string(),
                    key,
                });
            }
            self.paths(spec.get("path"), &format!("{key}.path"))?;
        }
        Ok(())
    }

    /// A path, or an array of them (globs included: `workspace.members`), each of which must
    /// stay inside the project. Anything else (`build = false`, `readme = true`) has none.
    fn paths(&self, item: Option<&Item>, key: &str) -> Result<(), BuildError> {
        let Some(item) = item else {
            return Ok(());
        };
        let strings: Vec<&str> = match item.as_array() {
            Some(array) => array.iter().filter_map(|v| v.as_str()).collect(),
            None => item.as_str().into_iter().collect(),
        };
        for path in strings {
            if leaves(self.depth, path) {
                return Err(BuildError::PathOutside {
                    manifest: self.name.to_string(),
                    key: key.to_string(),
                    path: path.to_string(),
                });
            }
        }
        Ok(())
    }
}

/// Whether `path`, resolved against a directory `depth` levels below the project root and
/// normalized, leaves the project. Absolute paths always do (an upload cannot know where it
/// is unpacked). Lexical: the tree has no symbolic links (see [`walk`]).
fn leaves(depth: usize, path: &str) -> bool {
    let mut depth = depth;
    for component in Path::new(path).components() {
        match component {
            Component::RootDir | Component::Prefix(_) => return true,
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return true,
            },
            Component::Normal(_) => depth += 1,
        }
    }
    false
}

/// A TOML key as written in a dotted key: bare if it can be, else quoted.
fn quoted(key: &str) -> String {
    if !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        key.to_string()
    } else {
        toml_edit::Value::from(key).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_resolved_against_their_manifest() {
        assert!(!leaves(0, "sub"));
        assert!(!leaves(0, "./sub/../other/"));
        assert!(!leaves(1, ".."));
        assert!(!leaves(2, "../../x"));
        assert!(!leaves(0, "crates/*"));
        assert!(leaves(0, ".."));
        assert!(leaves(0, "sub/../.."));
        assert!(leaves(1, "../../x"));
        assert!(leaves(0, "*/../../x"));
        assert!(leaves(3, "/etc"));
        assert!(leaves(0, "/"));
    }

    #[test]
    fn keys_are_quoted_only_when_they_must_be() {
        assert_eq!(quoted("crates-io"), "crates-io");
        assert_eq!(quoted("cfg(unix)"), "\"cfg(unix)\"");
    }
}
