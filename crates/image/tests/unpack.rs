//! Unpacking hostile layers: each rule with a layer crafted to break it, the filesystem checked
//! afterwards — inside the root, and the sentinel directory beside it untouched.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::{E, gzip, listing, runs_app, store, tar, zstd};
use ignite_builder::oci::OciLayout;
use ignite_image::{ImageError, UnpackLimits, UnpackReport, unpack};

struct Fixture {
    _tmp: tempfile::TempDir,
    layout: OciLayout,
    root: PathBuf,
    sentinel: PathBuf,
    before: Vec<String>,
}

impl Fixture {
    fn new() -> Fixture {
        // Not under /tmp: an absolute host path must be a path in the root, and the root's tmp is
        // emptied.
        let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        let layout = OciLayout::open(&tmp.path().join("layout")).expect("layout");
        let sentinel = tmp.path().join("sentinel");
        std::fs::create_dir(&sentinel).expect("sentinel");
        std::fs::write(sentinel.join("file"), "host").expect("sentinel file");
        std::fs::write(sentinel.join("passwd"), "hostuser:x:4242:4242::/:/bin/sh\n")
            .expect("sentinel passwd");
        let before = listing(&sentinel);
        Fixture {
            root: tmp.path().join("root"),
            layout,
            sentinel,
            before,
            _tmp: tmp,
        }
    }

    fn unpack(&self, layers: &[Vec<u8>]) -> UnpackReport {
        self.try_unpack(layers, &UnpackLimits::default())
            .expect("unpack")
    }

    fn try_unpack(
        &self,
        layers: &[Vec<u8>],
        limits: &UnpackLimits,
    ) -> Result<UnpackReport, ImageError> {
        let image = store(&self.layout, layers, &runs_app());
        unpack(&self.layout, &image, &self.root, limits)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    fn exists(&self, rel: &str) -> bool {
        self.path(rel).symlink_metadata().is_ok()
    }

    /// The sentinel beside the root is as it was.
    fn check_sentinel(&self) {
        assert_eq!(listing(&self.sentinel), self.before, "the sentinel changed");
        assert_eq!(
            std::fs::read_to_string(self.sentinel.join("file")).expect("sentinel"),
            "host"
        );
    }

    fn sentinel(&self) -> &str {
        self.sentinel.to_str().expect("utf-8 temp path")
    }
}

fn mode(path: &Path) -> u32 {
    path.symlink_metadata()
        .expect("metadata")
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn files_directories_and_symlinks_are_unpacked_from_plain_gzip_and_zstd_layers() {
    let f = Fixture::new();
    let report = f.unpack(&[
        tar(&[E::Dir("etc/", 0o755), E::File("etc/plain", b"1", 0o644)]),
        gzip(&tar(&[E::File("etc/gzip", b"2", 0o644)])),
        zstd(&tar(&[
            E::File("etc/zstd", b"3", 0o644),
            E::Symlink("etc/link", "/etc/zstd"),
        ])),
    ]);
    assert_eq!(f.read("etc/plain"), "1");
    assert_eq!(f.read("etc/gzip"), "2");
    assert_eq!(f.read("etc/zstd"), "3");
    assert_eq!(
        std::fs::read_link(f.path("etc/link")).expect("link"),
        Path::new("/etc/zstd"),
        "a symlink is made as is: it is resolved in the instance's root"
    );
    assert_eq!(report.layers, 3);
    assert_eq!(report.refused(), 0);
    assert_eq!(report.bytes, 3);
    // A file keeps its entry's modification time (here the epoch): Python checks its byte-code
    // caches against their sources by it.
    let modified = f
        .path("etc/gzip")
        .metadata()
        .and_then(|m| m.modified())
        .expect("mtime");
    assert_eq!(modified, std::time::UNIX_EPOCH);
}

#[test]
fn absolute_and_dotdot_paths_stay_inside_and_climbing_above_is_refused() {
    let f = Fixture::new();
    let up = "../sentinel/pwned";
    let deep_up = "a/../../sentinel/pwned";
    let absolute_host = format!("{}/pwned", f.sentinel());
    let report = f.unpack(&[tar(&[
        E::File("/etc/abs", b"abs", 0o644),
        E::File("./x/../etc/dot", b"dot", 0o644),
        E::File(up, b"no", 0o644),
        E::File(deep_up, b"no", 0o644),
        E::File(&absolute_host, b"inside", 0o644),
    ])]);
    assert_eq!(f.read("etc/abs"), "abs");
    assert_eq!(f.read("etc/dot"), "dot");
    assert_eq!(report.refused_paths, 2);
    // An absolute host path is a path inside the root.
    let inside = absolute_host.trim_start_matches('/');
    assert_eq!(f.read(inside), "inside");
    f.check_sentinel();
}

#[test]
fn a_symlinked_parent_is_resolved_inside_the_root_never_on_the_host() {
    let f = Fixture::new();
    let report = f.unpack(&[
        tar(&[
            E::Symlink("etc", "/"),
            E::Symlink("lib", "../../../.."),
            E::Symlink("evil", f.sentinel()),
            E::Dir("usr/", 0o755),
            E::Symlink("usr/up", "../../../../../"),
        ]),
        tar(&[
            E::File("etc/passwd", b"root-passwd", 0o644),
            E::File("lib/sentinel/pwned", b"in-root", 0o644),
            E::File("evil/pwned", b"no", 0o644),
            E::File("usr/up/sentinel/pwned2", b"in-root", 0o644),
        ]),
    ]);
    // `etc -> /` is the root itself: etc/passwd lands at the root's /passwd.
    assert_eq!(f.read("passwd"), "root-passwd");
    assert_eq!(f.read("sentinel/pwned"), "in-root");
    assert_eq!(f.read("sentinel/pwned2"), "in-root");
    // `evil` leads to a directory the root does not have: refused, not made on the host.
    assert_eq!(report.refused_paths, 1);
    f.check_sentinel();
}

#[test]
fn a_final_symlink_is_replaced_never_written_through() {
    let f = Fixture::new();
    let host_file = format!("{}/file", f.sentinel());
    f.unpack(&[
        tar(&[E::Dir("etc/", 0o755), E::Symlink("etc/shadow", &host_file)]),
        tar(&[E::File("etc/shadow", b"image", 0o600)]),
    ]);
    assert_eq!(f.read("etc/shadow"), "image");
    assert!(
        f.path("etc/shadow")
            .symlink_metadata()
            .expect("shadow")
            .is_file()
    );
    f.check_sentinel();
}

#[test]
fn a_directory_entry_replaces_a_symlink_instead_of_following_it() {
    let f = Fixture::new();
    f.unpack(&[
        tar(&[E::Symlink("data", f.sentinel())]),
        tar(&[
            E::Dir("data/", 0o755),
            E::File("data/file", b"image", 0o644),
        ]),
    ]);
    assert!(f.path("data").symlink_metadata().expect("data").is_dir());
    assert_eq!(f.read("data/file"), "image");
    f.check_sentinel();
}

#[test]
fn hard_links_must_name_a_regular_file_inside_the_root() {
    let f = Fixture::new();
    let host_file = format!("{}/file", f.sentinel());
    let report = f.unpack(&[tar(&[
        E::File("bin/real", b"real", 0o755),
        E::Link("bin/hard", "bin/real"),
        E::Link("bin/abs", "/bin/real"),
        E::Link("bin/up", "../sentinel/file"),
        E::Link("bin/host", &host_file),
        E::Symlink("bin/sym", "real"),
        E::Link("bin/to-symlink", "bin/sym"),
        E::Link("bin/to-dir", "bin"),
        E::Link("bin/missing", "bin/nothing"),
        E::Symlink("evil", f.sentinel()),
        E::Link("bin/through-symlink", "evil/file"),
    ])]);
    let real = f.path("bin/real").metadata().expect("real");
    for linked in ["bin/hard", "bin/abs"] {
        let m = f.path(linked).metadata().expect(linked);
        assert_eq!(m.ino(), real.ino(), "{linked} is a hard link of bin/real");
    }
    for refused in [
        "bin/up",
        "bin/host",
        "bin/to-symlink",
        "bin/to-dir",
        "bin/missing",
        "bin/through-symlink",
    ] {
        assert!(!f.exists(refused), "{refused} should be refused");
    }
    assert_eq!(report.refused_links, 6);
    assert_eq!(f.sentinel_nlink(), 1);
    f.check_sentinel();
}

impl Fixture {
    fn sentinel_nlink(&self) -> u64 {
        self.sentinel.join("file").metadata().expect("file").nlink()
    }
}

#[test]
fn whiteouts_remove_lower_content_and_never_appear() {
    let f = Fixture::new();
    let report = f.unpack(&[
        tar(&[
            E::File("a/keep", b"k", 0o644),
            E::File("a/gone", b"g", 0o644),
            E::File("a/dir/deep", b"d", 0o644),
            E::File("d/x", b"x", 0o644),
            E::File("d/sub/y", b"y", 0o644),
        ]),
        tar(&[
            E::File("a/.wh.gone", b"", 0o644),
            E::File("a/.wh.dir", b"", 0o644),
            E::File("a/new", b"n", 0o644),
            E::File("a/.wh.new", b"", 0o644),
            E::Dir("d/", 0o755),
            E::File("d/.wh..wh..opq", b"", 0o644),
            E::File("d/z", b"z", 0o644),
            E::File("nothere/.wh.x", b"", 0o644),
        ]),
    ]);
    assert_eq!(f.read("a/keep"), "k");
    assert!(!f.exists("a/gone"));
    assert!(!f.exists("a/dir"));
    assert_eq!(
        f.read("a/new"),
        "n",
        "a whiteout hides lower layers only, not its own layer's entries"
    );
    assert!(!f.exists("d/x"));
    assert!(!f.exists("d/sub"));
    assert_eq!(f.read("d/z"), "z");
    let all = listing(&f.root);
    assert!(
        all.iter().all(|p| !p.contains(".wh.")),
        "no whiteout file appears: {all:?}"
    );
    assert_eq!(report.whiteouts, 5);
}

#[test]
fn an_opaque_directory_keeps_what_its_own_layer_put_before_the_marker() {
    let f = Fixture::new();
    f.unpack(&[
        tar(&[
            E::File("d/old", b"o", 0o644),
            E::File("d/sub/old", b"o", 0o644),
        ]),
        tar(&[
            E::File("d/sub/new", b"n", 0o644),
            E::File("d/.wh..wh..opq", b"", 0o644),
        ]),
    ]);
    assert!(!f.exists("d/old"));
    assert!(!f.exists("d/sub/old"));
    assert_eq!(f.read("d/sub/new"), "n");
}

#[test]
fn setid_bits_are_dropped_modes_normalized_and_nothing_chowned() {
    let f = Fixture::new();
    let report = f.unpack(&[tar(&[
        E::Dir("bin/", 0o700),
        E::File("bin/su", b"su", 0o4755),
        E::File("bin/sg", b"sg", 0o2711),
        E::File("etc/secret", b"s", 0o600),
        E::File("etc/writable", b"w", 0o666),
        E::Dir("tmp2/", 0o1777),
    ])]);
    assert_eq!(mode(&f.path("bin")), 0o755);
    assert_eq!(mode(&f.path("bin/su")), 0o755);
    assert_eq!(mode(&f.path("bin/sg")), 0o755);
    assert_eq!(mode(&f.path("etc/secret")), 0o644);
    assert_eq!(mode(&f.path("etc/writable")), 0o644);
    assert_eq!(mode(&f.path("tmp2")), 0o755);
    assert_eq!(report.setid_cleared, 2);
    let me = f.root.metadata().expect("root").uid();
    for p in ["bin", "bin/su", "etc/secret"] {
        let m = f.path(p).metadata().expect(p);
        assert_eq!(
            (m.uid(), m.gid()),
            (me, f.root.metadata().expect("root").gid()),
            "{p} is the unpacker's, not uid 1000's"
        );
    }
}

#[test]
fn device_nodes_and_fifos_are_refused() {
    let f = Fixture::new();
    let report = f.unpack(&[tar(&[
        E::Fifo("fifo"),
        E::Char("dev/zero2"),
        E::Block("sda"),
        E::File("ok", b"ok", 0o644),
    ])]);
    assert!(!f.exists("fifo"));
    assert!(!f.exists("sda"));
    assert!(!f.exists("dev/zero2"));
    assert_eq!(f.read("ok"), "ok");
    assert_eq!(report.refused_special, 3);
}

#[test]
fn a_decompression_bomb_is_refused_at_the_byte_budget() {
    let f = Fixture::new();
    let zeros = vec![0u8; 4 << 20];
    let bomb = gzip(&tar(&[E::File("bomb", &zeros, 0o644)]));
    assert!(bomb.len() < 64 << 10, "the bomb is small compressed");
    let limits = UnpackLimits {
        max_bytes: 1 << 20,
        ..UnpackLimits::default()
    };
    match f.try_unpack(&[bomb], &limits) {
        Err(e @ ImageError::TooLarge { .. }) => {
            assert!(e.to_string().contains("more than 1048576 bytes"), "{e}")
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let written = f.path("bomb").metadata().map(|m| m.len()).unwrap_or(0);
    assert!(written <= (1 << 20) + 1, "wrote {written} bytes");
}

#[test]
fn too_many_entries_are_refused() {
    let f = Fixture::new();
    let names: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
    let entries: Vec<E> = names.iter().map(|n| E::File(n, b"", 0o644)).collect();
    let limits = UnpackLimits {
        max_entries: 10,
        ..UnpackLimits::default()
    };
    assert!(matches!(
        f.try_unpack(&[tar(&entries)], &limits),
        Err(ImageError::TooManyEntries { limit: 10 })
    ));
}

#[test]
fn mount_points_are_made_whatever_the_image_put_there() {
    let f = Fixture::new();
    let host_file = format!("{}/file", f.sentinel());
    f.unpack(&[tar(&[
        E::File("proc", b"not a dir", 0o644),
        E::Symlink("dev", "/dev"),
        E::File("tmp/leftover", b"x", 0o644),
        E::Dir("etc/", 0o755),
        E::Symlink("etc/hosts", &host_file),
        E::Dir("etc/resolv.conf/", 0o755),
        E::File("etc/resolv.conf/x", b"x", 0o644),
    ])]);
    for dir in ["proc", "dev", "tmp"] {
        let m = f.path(dir).symlink_metadata().expect(dir);
        assert!(m.is_dir(), "{dir} is a directory");
        assert_eq!(std::fs::read_dir(f.path(dir)).expect(dir).count(), 0);
    }
    for file in ["etc/hosts", "etc/resolv.conf"] {
        let m = f.path(file).symlink_metadata().expect(file);
        assert!(m.is_file(), "{file} is a regular file");
        assert_eq!(m.len(), 0);
    }
    f.check_sentinel();
}

#[test]
fn a_symlinked_etc_is_replaced_by_a_directory() {
    let f = Fixture::new();
    f.unpack(&[tar(&[E::Symlink("etc", f.sentinel())])]);
    assert!(f.path("etc").symlink_metadata().expect("etc").is_dir());
    assert!(
        f.path("etc/hosts")
            .symlink_metadata()
            .expect("hosts")
            .is_file()
    );
    f.check_sentinel();
}

#[test]
fn a_corrupt_stored_layer_is_refused() {
    let f = Fixture::new();
    let layer = tar(&[E::File("x", b"x", 0o644)]);
    let image = store(&f.layout, std::slice::from_ref(&layer), &runs_app());
    let blob = f.layout.blob_path(&image.layers[0].digest);
    let mut bytes = layer.clone();
    bytes[600] ^= 1;
    std::fs::write(&blob, bytes).expect("corrupt");
    let err = unpack(&f.layout, &image, &f.root, &UnpackLimits::default()).expect_err("corrupt");
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err:?}");
}
