//! Hostile uploads are refused before anything lands outside the unpack directory.

use ignite_builder::archive::{ArchiveError, unpack_tar_gz};

/// A .tar.gz with one entry whose name is written raw (the tar crate refuses to build bad ones).
fn archive_with(name: &str, kind: tar::EntryType, link: Option<&str>, data: &[u8]) -> Vec<u8> {
    let mut header = tar::Header::new_old();
    let raw = &mut header.as_old_mut().name;
    raw[..name.len()].copy_from_slice(name.as_bytes());
    header.set_entry_type(kind);
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    if let Some(link) = link {
        header.set_link_name(link).unwrap();
    }
    header.set_cksum();
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    b.append(&header, data).unwrap();
    b.into_inner().unwrap().finish().unwrap()
}

#[test]
fn hostile_archives_are_refused() {
    let cases: Vec<(&str, Vec<u8>, fn(&ArchiveError) -> bool)> = vec![
        (
            "dot-dot",
            archive_with("../escape.rs", tar::EntryType::Regular, None, b"x"),
            |e| matches!(e, ArchiveError::ParentDir(_)),
        ),
        (
            "absolute",
            archive_with("/tmp/abs.rs", tar::EntryType::Regular, None, b"x"),
            |e| matches!(e, ArchiveError::Absolute(_)),
        ),
        (
            "symlink",
            archive_with(
                "src/lib.rs",
                tar::EntryType::Symlink,
                Some("/etc/passwd"),
                b"",
            ),
            |e| matches!(e, ArchiveError::Link(_)),
        ),
        (
            "hard link",
            archive_with("src/lib.rs", tar::EntryType::Link, Some("../../x"), b""),
            |e| matches!(e, ArchiveError::Link(_)),
        ),
        (
            "over the cap",
            archive_with("big.rs", tar::EntryType::Regular, None, &[b'a'; 4096]),
            |e| matches!(e, ArchiveError::TooLarge(_)),
        ),
        ("not an archive", b"definitely not gzip".to_vec(), |e| {
            matches!(e, ArchiveError::Corrupt(_))
        }),
    ];
    for (name, bytes, expected) in cases {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("src");
        std::fs::create_dir(&dest).unwrap();
        match unpack_tar_gz(&bytes, &dest, 1024) {
            Err(e) => {
                assert!(expected(&e), "{name}: unexpected error {e}");
                assert!(!e.to_string().is_empty());
            }
            Ok(()) => panic!("{name}: a hostile archive was accepted"),
        }
        assert!(
            !root.path().join("escape.rs").exists(),
            "{name}: wrote outside the tree"
        );
    }
}

#[test]
fn a_plain_project_unpacks() {
    let bytes = archive_with("Cargo.toml", tar::EntryType::Regular, None, b"[package]\n");
    let dir = tempfile::tempdir().unwrap();
    unpack_tar_gz(&bytes, dir.path(), 1024).unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("Cargo.toml")).unwrap(),
        b"[package]\n"
    );
}
