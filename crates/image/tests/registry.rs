//! Pulls from a real registry (Debian's `docker-registry`, the CNCF distribution registry) on
//! loopback: an image pushed with oci-client, pulled, loaded and unpacked; and a registry with
//! htpasswd auth, where only the right credentials pull.

mod common;

use std::collections::HashMap;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::registry::Registry;
use ignite_builder::oci::OciLayout;
use ignite_image::{Credentials, ImageError, RegistryAccess, RootCache};
use oci_client::secrets::RegistryAuth;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_pushed_to_a_registry_is_pulled_loaded_and_unpacked() {
    let registry = Registry::start(None);
    let reference = registry.push("acme/web:v1", RegistryAuth::Anonymous).await;
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let layout = OciLayout::open(&tmp.path().join("layout")).expect("layout");
    let access = registry.access(None);

    // An image heavier than the platform takes is refused before a layer is fetched.
    let small = RegistryAccess {
        max_bytes: Some(10),
        ..registry.access(None)
    };
    let refused = ignite_image::pull(&layout, &reference, &small)
        .await
        .expect_err("over the limit");
    assert!(
        matches!(refused, ImageError::PullTooLarge { limit: 10, .. }),
        "{refused}"
    );
    assert!(
        std::fs::read_dir(tmp.path().join("layout/blobs/sha256")).map_or(0, |d| d.count()) == 0
    );

    let image = ignite_image::pull(&layout, &reference, &access)
        .await
        .expect("pull");
    assert_eq!(image.config.entrypoint, ["/bin/app"]);
    assert_eq!(image.config.cmd, ["--port", "8080"]);
    assert_eq!(image.config.exposed_ports, [8080]);
    assert_eq!(image.layers.len(), 1);
    assert_eq!(image.size, image.layers[0].size);
    for digest in [
        &image.manifest_digest,
        &image.config_digest,
        &image.layers[0].digest,
    ] {
        assert!(layout.blob_path(digest).is_file(), "{digest} is stored");
    }
    assert_eq!(
        ignite_image::load(&layout, &image.manifest_digest).expect("load"),
        image
    );

    // By digest, the blobs already there are not fetched again.
    let layer_inode = layout
        .blob_path(&image.layers[0].digest)
        .metadata()
        .expect("layer")
        .ino();
    let by_digest = format!("{}/acme/web@{}", registry.addr, image.manifest_digest);
    let again = ignite_image::pull(&layout, &by_digest, &access)
        .await
        .expect("pull by digest");
    assert_eq!(again, image);
    let inode = layout
        .blob_path(&image.layers[0].digest)
        .metadata()
        .expect("layer")
        .ino();
    assert_eq!(inode, layer_inode, "the layer blob was not written again");

    let cache = RootCache::new(tmp.path().join("roots"), 1 << 20);
    let (root, unpacked) = cache.acquire(&layout, &image).expect("acquire");
    assert!(unpacked);
    assert_eq!(
        std::fs::read_to_string(root.path.join("srv/hello.txt")).expect("hello"),
        "hello from the registry"
    );
    assert_eq!(root.argv, ["/bin/app", "--port", "8080"]);
    assert_eq!(root.program, Path::new("/bin/app"));
    assert_eq!(root.workdir, Path::new("/srv"));

    let missing = format!("{}/acme/web:nope", registry.addr);
    let err = ignite_image::pull(&layout, &missing, &access)
        .await
        .expect_err("no such tag");
    assert!(matches!(err, ImageError::NotFound { .. }), "{err:?}");

    let wrong_digest = format!("{}/acme/web@sha256:{}", registry.addr, "0".repeat(64));
    let err = ignite_image::pull(&layout, &wrong_digest, &access)
        .await
        .expect_err("no such digest");
    assert!(matches!(err, ImageError::NotFound { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_with_htpasswd_auth_pulls_only_with_the_right_credentials() {
    let registry = Registry::start(Some(("alice", "s3cret")));
    let reference = registry
        .push(
            "private/app:v1",
            RegistryAuth::Basic("alice".into(), "s3cret".into()),
        )
        .await;
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let layout = OciLayout::open(&tmp.path().join("layout")).expect("layout");

    let err = ignite_image::pull(&layout, &reference, &registry.access(None))
        .await
        .expect_err("no credentials");
    assert!(
        matches!(err, ImageError::CredentialsRequired { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("dodil ignite registry login"),
        "{err}"
    );

    let wrong = registry.access(Some(("alice", "wrong")));
    let err = ignite_image::pull(&layout, &reference, &wrong)
        .await
        .expect_err("wrong credentials");
    assert!(
        matches!(err, ImageError::CredentialsRefused { .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("refused the credentials"), "{message}");
    assert!(
        message.contains(&format!("dodil ignite registry login {}", registry.addr)),
        "{message}"
    );

    let image = ignite_image::pull(
        &layout,
        &reference,
        &registry.access(Some(("alice", "s3cret"))),
    )
    .await
    .expect("pull with the right credentials");
    assert_eq!(image.layers.len(), 1);

    let access = registry.access(None);
    let right = Credentials {
        username: "alice".into(),
        password: "s3cret".into(),
    };
    ignite_image::check_login(&registry.addr, &right, &access)
        .await
        .expect("the right credentials are accepted");
    let bad = Credentials {
        password: "wrong".into(),
        ..right
    };
    let err = ignite_image::check_login(&registry.addr, &bad, &access)
        .await
        .expect_err("wrong credentials are refused");
    assert!(
        matches!(err, ImageError::CredentialsRefused { .. }),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_is_not_there_is_an_error_naming_it() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let layout = OciLayout::open(&tmp.path().join("layout")).expect("layout");
    let access = RegistryAccess {
        insecure: vec![addr.clone()],
        credentials: HashMap::new(),
        ..RegistryAccess::default()
    };
    let err = ignite_image::pull(&layout, &format!("{addr}/x/y:z"), &access)
        .await
        .expect_err("nothing listens");
    assert!(matches!(err, ImageError::Registry { .. }), "{err:?}");
    assert!(err.to_string().contains(&addr), "{err}");
    let err = ignite_image::pull(&layout, "UPPER/Case:tag!", &access)
        .await
        .expect_err("not a reference");
    assert!(matches!(err, ImageError::Reference { .. }), "{err:?}");
}

/// Every connection of a pull goes through the proxy it is given: a proxy that does not allow
/// the registry makes the pull fail (nothing bypasses it, loopback included); one that does
/// lets it through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_goes_only_where_its_proxy_allows() {
    let registry = Registry::start(None);
    let reference = registry
        .push("acme/proxied:v1", RegistryAuth::Anonymous)
        .await;
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let layout = OciLayout::open(&tmp.path().join("layout")).expect("layout");
    let elsewhere = ignite_builder::LoopbackProxy::start(&["registry.example:443".to_string()])
        .await
        .expect("proxy");
    let refused = RegistryAccess {
        proxy: Some(elsewhere.url()),
        ..registry.access(None)
    };
    let err = ignite_image::pull(&layout, &reference, &refused)
        .await
        .expect_err("the proxy allows only registry.example");
    assert!(err.to_string().contains(&registry.addr), "{err}");
    let through = ignite_builder::LoopbackProxy::start(std::slice::from_ref(&registry.addr))
        .await
        .expect("proxy");
    let allowed = RegistryAccess {
        proxy: Some(through.url()),
        ..registry.access(None)
    };
    let image = ignite_image::pull(&layout, &reference, &allowed)
        .await
        .expect("pulled through the proxy");
    assert_eq!(image.layers.len(), 1);
}
