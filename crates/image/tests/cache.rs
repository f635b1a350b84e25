//! The root cache: process settings read from the unpacked root (USER, WORKDIR, argv, the
//! program on PATH), LRU eviction within the budget that skips leased roots, and concurrent
//! acquires that unpack once.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};

use common::{E, gzip, store, tar};
use ignite_builder::oci::OciLayout;
use ignite_image::{Image, ImageConfig, ImageError, RootCache};

struct Fixture {
    tmp: tempfile::TempDir,
    layout: OciLayout,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        let layout = OciLayout::open(&tmp.path().join("layout")).expect("layout");
        Fixture { tmp, layout }
    }

    fn cache(&self, budget: u64) -> RootCache {
        RootCache::new(self.tmp.path().join("roots"), budget)
    }

    fn image(&self, layers: &[Vec<u8>], config: ImageConfig) -> Image {
        store(&self.layout, layers, &config)
    }

    /// An image whose one layer holds an executable `/bin/app` of `size` bytes (and `tag`, to
    /// make its digest its own).
    fn app_image(&self, tag: &str, size: usize) -> Image {
        let body = vec![b'x'; size - tag.len()];
        let layer = tar(&[E::File("bin/app", &[tag.as_bytes(), &body].concat(), 0o755)]);
        self.image(&[gzip(&layer)], config(&["/bin/app"], &[]))
    }
}

fn config(cmd: &[&str], env: &[(&str, &str)]) -> ImageConfig {
    ImageConfig {
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..ImageConfig::default()
    }
}

fn passwd_layer() -> Vec<u8> {
    tar(&[
        E::File(
            "etc/passwd",
            b"root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
            0o644,
        ),
        E::File("etc/group", b"root:x:0:\nstaff:x:50:app\n", 0o644),
        E::File("bin/busybox", b"#!", 0o755),
        E::Symlink("bin/sh", "busybox"),
        E::Symlink("usr/local/bin/tool", "/bin/../bin/sh"),
        E::File("bin/data", b"not executable", 0o644),
    ])
}

#[test]
fn settings_come_from_the_config_and_the_root() {
    let f = Fixture::new();
    let cache = f.cache(1 << 30);
    let mut c = config(
        &["-c", "echo hi"],
        &[("PATH", "/usr/local/bin:/bin"), ("A", "b")],
    );
    c.entrypoint = vec!["sh".into()];
    c.working_dir = Some("/srv/app".into());
    c.user = Some("app".into());
    let image = f.image(&[passwd_layer()], c);
    let (root, unpacked) = cache.acquire(&f.layout, &image).expect("acquire");
    assert!(unpacked);
    assert_eq!(root.argv, ["sh", "-c", "echo hi"]);
    assert_eq!(
        root.program,
        Path::new("/bin/busybox"),
        "symlinks followed inside the root"
    );
    assert_eq!((root.uid, root.gid), (1000, 1001));
    assert_eq!(root.workdir, Path::new("/srv/app"));
    assert!(root.path.join("srv/app").is_dir(), "WORKDIR is made");
    assert_eq!(root.env[1], ("A".to_string(), "b".to_string()));
    assert!(root.path.join("bin/busybox").is_file());
}

#[test]
fn users_are_numeric_or_looked_up_in_the_root() {
    let f = Fixture::new();
    let cache = f.cache(1 << 30);
    let cases: &[(Option<&str>, (u32, u32))] = &[
        (None, (0, 0)),
        (Some("app:staff"), (1000, 50)),
        (Some("7:8"), (7, 8)),
        (Some("1000"), (1000, 1001)),
        (Some("4242"), (4242, 0)),
        (Some("root:staff"), (0, 50)),
    ];
    for (user, want) in cases {
        let mut c = config(&["/bin/busybox"], &[]);
        c.user = user.map(String::from);
        let image = f.image(&[passwd_layer()], c);
        let (root, _) = cache.acquire(&f.layout, &image).expect("acquire");
        assert_eq!((root.uid, root.gid), *want, "USER {user:?}");
    }
    for (user, missing) in [("nobody", "nobody"), ("app:wheel", "wheel")] {
        let mut c = config(&["/bin/busybox"], &[]);
        c.user = Some(user.into());
        let image = f.image(&[passwd_layer()], c);
        let err = cache.acquire(&f.layout, &image).expect_err(user);
        assert!(
            matches!(
                err,
                ImageError::UnknownUser { .. } | ImageError::UnknownGroup { .. }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains(&format!("`{missing}`")), "{err}");
    }
}

#[test]
fn the_user_database_is_read_inside_the_root_only() {
    let f = Fixture::new();
    let host = f.tmp.path().join("host-passwd");
    std::fs::write(&host, "hostuser:x:4242:4242::/:/bin/sh\n").expect("host passwd");
    let layer = tar(&[
        E::File("bin/app", b"#!", 0o755),
        E::Symlink("etc/passwd", host.to_str().expect("utf-8")),
    ]);
    let mut c = config(&["/bin/app"], &[]);
    c.user = Some("hostuser".into());
    let image = f.image(&[layer], c);
    let err = f
        .cache(1 << 30)
        .acquire(&f.layout, &image)
        .expect_err("no user");
    assert!(matches!(err, ImageError::UnknownUser { .. }), "{err:?}");
}

#[test]
fn the_program_must_exist_and_be_executable() {
    let f = Fixture::new();
    let cache = f.cache(1 << 30);
    let run = |cmd: &[&str], env: &[(&str, &str)]| {
        let image = f.image(&[passwd_layer()], config(cmd, env));
        cache
            .acquire(&f.layout, &image)
            .map(|(root, _)| root.program.clone())
    };
    assert_eq!(
        run(&["sh"], &[]).expect("default PATH"),
        Path::new("/bin/busybox")
    );
    assert_eq!(
        run(&["tool"], &[("PATH", "/usr/local/bin")]).expect("tool"),
        PathBuf::from("/bin/busybox")
    );
    let err = run(&["missing"], &[]).expect_err("missing");
    assert!(matches!(err, ImageError::ProgramNotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("`missing`"), "{err}");
    let err = run(&["/bin/data"], &[]).expect_err("not executable");
    assert!(matches!(err, ImageError::NotExecutable { .. }), "{err:?}");
    let err = run(&[], &[]).expect_err("no command");
    assert_eq!(
        err.to_string(),
        "the image has neither ENTRYPOINT nor CMD; add one"
    );
}

#[test]
fn least_recently_used_unleased_roots_are_evicted_over_budget() {
    let f = Fixture::new();
    let cache = f.cache(2500);
    let (a, b, c) = (
        f.app_image("a", 1000),
        f.app_image("b", 1000),
        f.app_image("c", 1000),
    );
    let (lease_a, _) = cache.acquire(&f.layout, &a).expect("a");
    let path_a = lease_a.path.clone();
    drop(lease_a);
    let (lease_b, _) = cache.acquire(&f.layout, &b).expect("b");
    // a is used again after b: b is now the least recently used, but it is leased.
    drop(cache.acquire(&f.layout, &a).expect("a again"));
    let (lease_c, unpacked) = cache.acquire(&f.layout, &c).expect("c");
    assert!(unpacked);
    assert_eq!(cache.cached(), sorted(&[&b, &c]), "a went: b is leased");
    assert!(!path_a.exists(), "a's root is removed");
    assert!(lease_b.path.join("bin/app").is_file());
    assert_eq!(cache.usage(), 2000);
    // Over budget with everything leased: nothing goes until a lease is dropped.
    let (lease_a, unpacked) = cache.acquire(&f.layout, &a).expect("a unpacked again");
    assert!(unpacked);
    assert_eq!(cache.usage(), 3000);
    let path_b = lease_b.path.clone();
    drop(lease_b);
    assert_eq!(cache.cached(), sorted(&[&a, &c]));
    assert!(!path_b.exists());
    drop((lease_a, lease_c));
    let (_, unpacked) = cache.acquire(&f.layout, &c).expect("c cached");
    assert!(!unpacked);
}

fn sorted(images: &[&Image]) -> Vec<String> {
    let mut v: Vec<String> = images.iter().map(|i| i.manifest_digest.clone()).collect();
    v.sort();
    v
}

#[test]
fn an_image_larger_than_the_budget_is_refused() {
    let f = Fixture::new();
    let cache = f.cache(500);
    let err = cache
        .acquire(&f.layout, &f.app_image("big", 1000))
        .expect_err("too big");
    assert!(
        matches!(err, ImageError::TooLarge { limit: 500 }),
        "{err:?}"
    );
    let left: Vec<_> = std::fs::read_dir(f.tmp.path().join("roots"))
        .expect("roots")
        .collect();
    assert!(left.is_empty(), "the partial root is removed: {left:?}");
}

#[test]
fn concurrent_acquires_of_one_image_unpack_once() {
    let f = Arc::new(Fixture::new());
    let cache = f.cache(1 << 30);
    let image = Arc::new(f.app_image("shared", 64 << 10));
    let barrier = Arc::new(Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (f, cache, image, barrier) =
                (f.clone(), cache.clone(), image.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let (lease, unpacked) = cache.acquire(&f.layout, &image).expect("acquire");
                (lease.path.clone(), unpacked)
            })
        })
        .collect();
    let results: Vec<(PathBuf, bool)> = threads
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect();
    assert_eq!(results.iter().filter(|(_, u)| *u).count(), 1, "{results:?}");
    assert!(results.iter().all(|(p, _)| *p == results[0].0));
    let dirs: Vec<_> = std::fs::read_dir(f.tmp.path().join("roots"))
        .expect("roots")
        .collect();
    assert_eq!(dirs.len(), 1, "one root, no partial left");
}

#[test]
fn a_new_cache_clears_what_an_earlier_process_left() {
    let f = Fixture::new();
    let dir = f.tmp.path().join("roots");
    std::fs::create_dir_all(dir.join("stale.partial-x")).expect("stale");
    let cache = f.cache(1 << 20);
    assert_eq!(std::fs::read_dir(&dir).expect("roots").count(), 0);
    assert!(cache.cached().is_empty());
}
