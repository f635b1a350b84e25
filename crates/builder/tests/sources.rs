//! The check over every manifest of an upload, and the removal of its `.cargo` directories:
//! each way a manifest can name a path outside the project, or a source other than crates.io,
//! is refused with the manifest, the key and the path.

use std::path::Path;

use ignite_builder::{BuildError, check_sources, remove_cargo_configs};

fn write(root: &Path, files: &[(&str, &str)]) {
    for (path, text) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

const ROOT: &str = "[package]\nname = \"victim\"\nversion = \"0.1.0\"\n";

/// A root manifest with `extra` appended.
fn root(extra: &str) -> String {
    format!("{ROOT}{extra}")
}

fn check(files: &[(&str, &str)]) -> Result<(), BuildError> {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), files);
    check_sources(dir.path())
}

#[test]
fn every_path_that_leaves_the_project_is_refused_with_its_manifest_and_key() {
    let cases: &[(&str, &str, &str, &str)] = &[
        // (extra manifest text, manifest, key, path)
        (
            "[dependencies]\nx = { path = \"/srv/x\" }\n",
            "Cargo.toml",
            "dependencies.x.path",
            "/srv/x",
        ),
        (
            "[dev-dependencies]\nx = { path = \"../x\" }\n",
            "Cargo.toml",
            "dev-dependencies.x.path",
            "../x",
        ),
        (
            "[build-dependencies.x]\npath = \"a/../../x\"\n",
            "Cargo.toml",
            "build-dependencies.x.path",
            "a/../../x",
        ),
        (
            "[target.'cfg(unix)'.dependencies]\nx = { path = \"../x\" }\n",
            "Cargo.toml",
            "target.\"cfg(unix)\".dependencies.x.path",
            "../x",
        ),
        (
            "[dependencies]\nx = { workspace = true }\n[workspace.dependencies]\nx = { path = \"/outside\" }\n",
            "Cargo.toml",
            "workspace.dependencies.x.path",
            "/outside",
        ),
        (
            "[patch.crates-io]\nserde = { path = \"../serde\" }\n",
            "Cargo.toml",
            "patch.crates-io.serde.path",
            "../serde",
        ),
        (
            "[patch.'https://github.com/x/y']\ny = { path = \"../y\" }\n",
            "Cargo.toml",
            "patch.\"https://github.com/x/y\".y.path",
            "../y",
        ),
        (
            "[replace]\n\"foo:0.1.0\" = { path = \"../foo\" }\n",
            "Cargo.toml",
            "replace.\"foo:0.1.0\".path",
            "../foo",
        ),
        (
            "workspace = \"../..\"\n",
            "Cargo.toml",
            "package.workspace",
            "../..",
        ),
        (
            "build = \"../../x.rs\"\n",
            "Cargo.toml",
            "package.build",
            "../../x.rs",
        ),
        (
            "readme = \"/etc/passwd\"\n",
            "Cargo.toml",
            "package.readme",
            "/etc/passwd",
        ),
        (
            "[lib]\npath = \"../../x.rs\"\n",
            "Cargo.toml",
            "lib.path",
            "../../x.rs",
        ),
        (
            "[[bin]]\nname = \"a\"\npath = \"src/main.rs\"\n[[bin]]\nname = \"b\"\npath = \"/x.rs\"\n",
            "Cargo.toml",
            "bin[1].path",
            "/x.rs",
        ),
        (
            "[[example]]\nname = \"e\"\npath = \"../e.rs\"\n",
            "Cargo.toml",
            "example[0].path",
            "../e.rs",
        ),
        (
            "[[test]]\nname = \"t\"\npath = \"../t.rs\"\n",
            "Cargo.toml",
            "test[0].path",
            "../t.rs",
        ),
        (
            "[[bench]]\nname = \"b\"\npath = \"../b.rs\"\n",
            "Cargo.toml",
            "bench[0].path",
            "../b.rs",
        ),
        (
            "[workspace]\nmembers = [\"crates/*\", \"../*\"]\n",
            "Cargo.toml",
            "workspace.members",
            "../*",
        ),
        (
            "[workspace]\nexclude = [\"*/../..\"]\n",
            "Cargo.toml",
            "workspace.exclude",
            "*/../..",
        ),
        (
            "[workspace.package]\nlicense-file = \"../LICENSE\"\n",
            "Cargo.toml",
            "workspace.package.license-file",
            "../LICENSE",
        ),
    ];
    for (extra, manifest, key, path) in cases {
        let err = check(&[("Cargo.toml", &root(extra))]).expect_err(extra);
        match &err {
            BuildError::PathOutside {
                manifest: m,
                key: k,
                path: p,
            } => {
                assert_eq!(
                    (m.as_str(), k.as_str(), p.as_str()),
                    (*manifest, *key, *path)
                );
            }
            other => panic!("{extra}: {other}"),
        }
        let message = err.to_string();
        assert!(message.contains("outside the project"), "{message}");
        assert!(
            message.contains("copy the crate into the project"),
            "{message}"
        );
    }
}

#[test]
fn nested_manifests_are_checked_against_their_own_directory() {
    let sub = "[package]\nname = \"sub\"\nversion = \"0.1.0\"\n[dependencies]\nx = { path = \"../../outside\" }\n";
    let err = check(&[
        (
            "Cargo.toml",
            &root("[dependencies]\nsub = { path = \"sub\" }\n"),
        ),
        ("sub/Cargo.toml", sub),
    ])
    .unwrap_err();
    assert!(
        matches!(&err, BuildError::PathOutside { manifest, key, path }
            if manifest == "sub/Cargo.toml" && key == "dependencies.x.path" && path == "../../outside"),
        "{err}"
    );
    // A manifest nobody depends on is checked too: cargo may reach it by a route the check
    // does not model (a glob, a default member).
    let err = check(&[
        ("Cargo.toml", ROOT),
        (
            "deep/er/Cargo.toml",
            "[package]\nname = \"d\"\nworkspace = \"../../..\"\n",
        ),
    ])
    .unwrap_err();
    assert!(
        matches!(&err, BuildError::PathOutside { manifest, .. } if manifest == "deep/er/Cargo.toml"),
        "{err}"
    );
    // One level down, `..` is still inside.
    check(&[
        ("Cargo.toml", ROOT),
        (
            "sub/Cargo.toml",
            "[package]\nname = \"sub\"\nworkspace = \"..\"\n[dependencies]\nsib = { path = \"../sib\" }\n",
        ),
    ])
    .unwrap();
}

#[test]
fn git_and_other_registries_are_refused_in_every_manifest() {
    let sub = |deps: &str| format!("[package]\nname = \"sub\"\nversion = \"0.1.0\"\n{deps}");
    let err = check(&[
        ("Cargo.toml", ROOT),
        (
            "sub/Cargo.toml",
            &sub("[dependencies]\nevil = { git = \"http://169.254.169.254/evil.git\" }\n"),
        ),
    ])
    .unwrap_err();
    assert!(
        matches!(&err, BuildError::GitDependency { manifest, key }
            if manifest == "sub/Cargo.toml" && key == "dependencies.evil"),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("git dependencies are not supported")
    );
    let err = check(&[(
        "Cargo.toml",
        &root("[workspace.dependencies]\nevil = { version = \"1\", registry = \"evil\" }\n"),
    )])
    .unwrap_err();
    assert!(
        matches!(&err, BuildError::OtherRegistry { key, .. } if key == "workspace.dependencies.evil"),
        "{err}"
    );
    assert!(err.to_string().contains("names another registry"));
    let err = check(&[(
        "Cargo.toml",
        &root("[patch.crates-io]\nserde = { git = \"http://169.254.169.254/serde.git\" }\n"),
    )])
    .unwrap_err();
    assert!(
        matches!(&err, BuildError::GitDependency { key, .. } if key == "patch.crates-io.serde"),
        "{err}"
    );
}

#[test]
fn unstable_features_links_and_broken_manifests_are_refused() {
    let err = check(&[(
        "Cargo.toml",
        &format!("cargo-features = [\"path-bases\"]\n{ROOT}"),
    )])
    .unwrap_err();
    assert!(
        matches!(&err, BuildError::UnstableFeatures(m) if m == "Cargo.toml"),
        "{err}"
    );
    assert!(err.to_string().contains("remove the `cargo-features` line"));

    let err = check(&[("Cargo.toml", ROOT), ("sub/Cargo.toml", "not = = toml")]).unwrap_err();
    assert!(
        matches!(&err, BuildError::InvalidManifest { manifest, .. } if manifest == "sub/Cargo.toml"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &[("Cargo.toml", ROOT)]);
    std::os::unix::fs::symlink("/etc", dir.path().join("vendor")).unwrap();
    let err = check_sources(dir.path()).unwrap_err();
    assert!(
        matches!(&err, BuildError::Symlink(p) if p == "vendor"),
        "{err}"
    );
}

#[test]
fn paths_inside_the_project_pass() {
    check(&[
        (
            "Cargo.toml",
            &root(
                "build = \"tools/build.rs\"\nreadme = true\n\
                 [dependencies]\na = { path = \"crates/a\" }\nb = { path = \"./crates/x/../b/\" }\nserde = \"1\"\n\
                 c = { version = \"1\", features = [\"x\"] }\n\
                 [workspace]\nmembers = [\"crates/*\"]\nexclude = [\"crates/skip\"]\n\
                 [workspace.dependencies]\nd = { path = \"crates/d\" }\n\
                 [patch.crates-io]\nignite = { path = \"vendor/ignite\" }\n\
                 [lib]\npath = \"src/lib.rs\"\n[[bin]]\nname = \"x\"\npath = \"src/bin/x.rs\"\n",
            ),
        ),
        (
            "crates/a/Cargo.toml",
            "[package]\nname = \"a\"\nworkspace = \"../..\"\n[dependencies]\nb = { path = \"../b\" }\n",
        ),
    ])
    .unwrap();
}

#[test]
fn every_cargo_config_in_the_tree_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[build]\nrustc-wrapper = \"./evil.sh\"\n";
    write(
        dir.path(),
        &[
            ("Cargo.toml", ROOT),
            (".cargo/config.toml", config),
            ("sub/.cargo/config", config),
            ("a/b/c/.cargo/config.toml", config),
            ("file/.cargo", "a file named .cargo"),
            ("sub/.cargo/vendored/Cargo.toml", "not looked at"),
            ("src/cargo.rs", "// kept"),
        ],
    );
    std::os::unix::fs::symlink("/etc", dir.path().join(".cargo/etc")).unwrap();
    let mut removed = remove_cargo_configs(dir.path()).unwrap();
    removed.sort();
    assert_eq!(
        removed,
        [".cargo", "a/b/c/.cargo", "file/.cargo", "sub/.cargo"]
    );
    for gone in [".cargo", "sub/.cargo", "a/b/c/.cargo", "file/.cargo"] {
        assert!(!dir.path().join(gone).exists(), "{gone}");
    }
    assert!(dir.path().join("src/cargo.rs").exists());
    // What was inside is gone before the check, which finds nothing to refuse.
    check_sources(dir.path()).unwrap();
    assert!(remove_cargo_configs(dir.path()).unwrap().is_empty());
}
