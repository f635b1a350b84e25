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

/// A case: its name, the archive, and the error it must be refused with.
type Case = (&'static str, Vec<u8>, fn(&ArchiveError) -> bool);

#[test]
fn hostile_archives_are_refused() {
    let cases: Vec<Case> = vec![
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

#[test]
fn a_decompression_bomb_stops_at_the_cap() {
    // 128 MiB of zeros compress to a fraction of a megabyte.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    {
        let mut b = tar::Builder::new(&mut gz);
        let mut header = tar::Header::new_gnu();
        let size = 128u64 << 20;
        header.set_size(size);
        header.set_mode(0o644);
        header.set_cksum();
        b.append_data(&mut header, "src/zeros.rs", std::io::repeat(0).take(size))
            .unwrap();
        b.finish().unwrap();
    }
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    let dest = tempfile::tempdir().unwrap();
    let cap = 8 << 20;
    let err = unpack_tar_gz(&bomb, dest.path(), cap).unwrap_err();
    assert!(matches!(err, ArchiveError::TooLarge(_)), "{err}");
    let written = std::fs::metadata(dest.path().join("src/zeros.rs")).map_or(0, |m| m.len());
    assert!(written <= cap, "wrote {written} bytes past the cap");
}

use std::io::Read;

mod fuzz {
    //! Property tests: whatever the bytes, unpacking never panics, and nothing it writes lands
    //! outside the destination.

    use super::*;
    use proptest::prelude::*;

    /// Every path under `dir`, relative to it.
    fn tree(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let p = e.path();
                out.push(p.strip_prefix(dir).unwrap().to_path_buf());
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.extend(
                        tree(&p)
                            .into_iter()
                            .map(|c| p.strip_prefix(dir).unwrap().join(c)),
                    );
                }
            }
        }
        out
    }

    fn component() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("..".to_string()),
            Just(".".to_string()),
            Just("".to_string()),
            "[a-z]{1,6}",
            "[a-z]{1,3}\\.rs",
        ]
    }

    fn entry() -> impl Strategy<Value = (String, u8, String)> {
        (
            (any::<bool>(), prop::collection::vec(component(), 1..4)).prop_map(|(abs, parts)| {
                format!("{}{}", if abs { "/" } else { "" }, parts.join("/"))
            }),
            prop_oneof![Just(b'0'), Just(b'2'), Just(b'1'), Just(b'5')],
            "(\\.\\./)*[a-z/]{0,12}",
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
            let root = tempfile::tempdir().unwrap();
            let dest = root.path().join("dest");
            let _ = ignite_builder::archive::unpack(&bytes, &dest, 1 << 20);
            for p in tree(root.path()) {
                prop_assert!(p.starts_with("dest"), "{p:?} outside dest");
            }
        }

        #[test]
        fn hostile_entries_stay_inside(entries in prop::collection::vec(entry(), 1..6)) {
            let mut raw = Vec::new();
            {
                let gz = flate2::write::GzEncoder::new(&mut raw, flate2::Compression::fast());
                let mut b = tar::Builder::new(gz);
                for (name, kind, link) in &entries {
                    let mut header = tar::Header::new_old();
                    let bytes = name.as_bytes();
                    let n = bytes.len().min(99);
                    header.as_old_mut().name[..n].copy_from_slice(&bytes[..n]);
                    header.set_entry_type(tar::EntryType::new(*kind));
                    header.set_size(if *kind == b'0' { 3 } else { 0 });
                    header.set_mode(0o644);
                    let _ = header.set_link_name(link);
                    header.set_cksum();
                    let data: &[u8] = if *kind == b'0' { b"abc" } else { b"" };
                    b.append(&header, data).unwrap();
                }
                b.into_inner().unwrap().finish().unwrap();
            }
            let root = tempfile::tempdir().unwrap();
            let dest = root.path().join("dest");
            std::fs::create_dir_all(&dest).unwrap();
            let result = unpack_tar_gz(&raw, &dest, 1 << 20);
            for p in tree(root.path()) {
                prop_assert!(p.starts_with("dest"), "{p:?} outside dest ({result:?})");
            }
            // Nothing unpacked is a link.
            for p in tree(&dest) {
                let meta = std::fs::symlink_metadata(dest.join(&p)).unwrap();
                prop_assert!(!meta.file_type().is_symlink(), "{p:?} is a symlink");
            }
        }
    }
}
