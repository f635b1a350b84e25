//! Image mode against the real server: images the tests build themselves (`FROM scratch` and
//! the static test server of `tests/images/echo`), served by a real registry on loopback
//! (Debian's `docker-registry`), pulled, unpacked and run in the real sandbox; Dockerfile
//! builds with real buildah in the build jail; a clone from a git server on loopback.

mod support;

use std::time::Duration;

use support::images::*;
use support::platform::*;

/// A server that may pull from `registry` (plain HTTP, on loopback).
fn server_for(dir: &std::path::Path, registry: &Registry, extra: &[&str]) -> Server {
    let mut args = vec![
        "--image-registry",
        registry.addr.as_str(),
        "--insecure-registry",
        registry.addr.as_str(),
    ];
    args.extend_from_slice(extra);
    start_server_with(dir, &args)
}

fn create_image_app(server: &Server, p: &std::path::Path, name: &str) {
    let created = ok(
        server,
        p,
        &[
            "app",
            "create",
            name,
            "--runtime",
            "image",
            "--description",
            "a container",
        ],
    );
    assert!(created.contains(&format!("acme-corp:{name}")), "{created}");
}

#[test]
fn an_image_is_pulled_and_served_through_invoke_and_the_public_url() {
    let dir = scratch("image-pull");
    let registry = Registry::start(&dir.join("registry"), None);
    let v1 = registry.push(
        "acme/echo:v1",
        vec![echo_layer()],
        echo_config("hello"),
        None,
    );
    let server = server_for(&dir.join("server"), &registry, &[]);
    let p = dir.clone();
    create_image_app(&server, &p, "web");
    ok(
        &server,
        &p,
        &["app", "set-env", "acme-corp:web", "FROM_APP=yes"],
    );

    // --code with an image flag is refused, as the seed says.
    let refused = fails(
        &server,
        &p,
        &[
            "draft",
            "save",
            "acme-corp:web",
            "--code",
            "./",
            "--image-ref",
            &v1,
        ],
    );
    assert!(refused.contains("--image-ref"), "{refused}");
    // A registry the operator did not allow is refused at save, naming the allowed ones.
    let refused = fails(
        &server,
        &p,
        &[
            "draft",
            "save",
            "acme-corp:web",
            "--image-ref",
            "10.1.2.3:5000/acme/echo:v1",
        ],
    );
    assert!(
        refused.contains("10.1.2.3:5000") && refused.contains(&registry.addr),
        "{refused}"
    );

    let saved = ok(
        &server,
        &p,
        &["draft", "save", "acme-corp:web", "--image-ref", &v1],
    );
    assert!(saved.contains("draft publish"), "{saved}");
    let published = json(&ok(
        &server,
        &p,
        &["draft", "publish", "acme-corp:web", "-o", "json"],
    ));
    assert_eq!(published["active_version"], 1, "{published}");
    let logs = ok(&server, &p, &["draft", "compile-logs", "acme-corp:web"]);
    assert!(
        logs.contains("pulling") && logs.contains("unpacked"),
        "{logs}"
    );

    // invoke: the container gets the request as HTTP, with the execution's headers, its
    // image's settings and the app's environment.
    let out = ok(
        &server,
        &p,
        &["invoke", "acme-corp:web", "-p", r#"{"message":"hi"}"#],
    );
    let v = json(&out);
    assert_eq!(v["method"], "POST", "{out}");
    assert_eq!(v["body"], r#"{"message":"hi"}"#, "{out}");
    assert!(
        v["headers"]["x-ignite-execution-id"]
            .as_str()
            .is_some_and(|s| s.len() == 26),
        "{out}"
    );
    assert_eq!(
        v["headers"]["x-ignite-function-id"], "acme-corp/web",
        "{out}"
    );
    assert_eq!(v["env"]["GREETING"], "hello", "the image's ENV: {out}");
    assert_eq!(v["env"]["FROM_APP"], "yes", "the app's env: {out}");
    assert_eq!(v["env"]["PORT"], "8080", "{out}");
    assert_eq!(v["env"]["K_SERVICE"], "web", "{out}");
    assert_eq!(v["uid"], "1234", "the image's USER (app): {out}");
    assert_eq!(v["cwd"], "/data", "the image's WORKDIR: {out}");
    assert_eq!(v["args"], "--greeting hello", "ENTRYPOINT + CMD: {out}");

    // The public URL: method, path, query and headers forwarded, the response as is.
    let (status, headers, body) = http_full(
        &server.gateway,
        "web-acme-corp.ignite.localhost",
        "GET",
        "/some/path?x=1&y=two",
        "",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "x-echo"), Some("yes"), "{headers:?}");
    let v = json(&body);
    assert_eq!(v["method"], "GET", "{body}");
    assert_eq!(v["path"], "/some/path", "{body}");
    assert_eq!(v["query"], "x=1&y=two", "{body}");
    let (status, _, body) = http_full(
        &server.gateway,
        "web-acme-corp.ignite.localhost",
        "GET",
        "/status?code=418",
        "",
    );
    assert_eq!(status, 418, "the container's status as is: {body}");
    // The container closes its kept-alive connections after a while (its idle timeout): the
    // next requests go on new ones, and nothing fails.
    for ms in [0, 100] {
        for round in 0..3 {
            let (status, _, body) = http_full(
                &server.gateway,
                "web-acme-corp.ignite.localhost",
                "GET",
                &format!("/hangup?ms={ms}"),
                "",
            );
            assert_eq!(status, 200, "hangup after {ms} ms, round {round}: {body}");
            std::thread::sleep(Duration::from_millis(2 * ms));
            let (status, _, body) = http_full(
                &server.gateway,
                "web-acme-corp.ignite.localhost",
                "GET",
                "/after-hangup",
                "",
            );
            assert_eq!(
                status, 200,
                "after a hangup after {ms} ms, round {round}: {body}"
            );
            assert_eq!(json(&body)["path"], "/after-hangup", "{body}");
        }
    }

    // Stdout and stderr are the execution's logs.
    let (status, headers, body) = http_full(
        &server.gateway,
        "web-acme-corp.ignite.localhost",
        "GET",
        "/log?say=marker42",
        "",
    );
    assert_eq!(status, 200, "{body}");
    let record = execution_of(&server, &p, &headers);
    let logs = record["logs"].to_string();
    assert!(
        logs.contains("to stdout: marker42") && logs.contains("to stderr: marker42"),
        "{record}"
    );

    // The first call was a cold start with its phases.
    let list = json(&ok(
        &server,
        &p,
        &["execution", "list", "--app", "acme-corp:web", "-o", "json"],
    ));
    let first = list["executions"]
        .as_array()
        .and_then(|l| l.last())
        .cloned()
        .unwrap_or_default();
    let phases = &first["metrics"]["cold_start_phases"];
    assert!(
        phases["init_ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "{first}"
    );
    assert_eq!(first["status"], "succeeded", "{first}");
    drop(registry);
    server.stop();
}

#[test]
fn a_private_registry_needs_the_orgs_credentials_and_refuses_wrong_ones() {
    let dir = scratch("image-private");
    let registry = Registry::start(&dir.join("registry"), Some(("puller", "s3cret-pw")));
    let image = registry.push(
        "acme/private:v1",
        vec![echo_layer()],
        echo_config("private"),
        Some(("puller", "s3cret-pw")),
    );
    let server = server_for(&dir.join("server"), &registry, &[]);
    let p = dir.clone();
    create_image_app(&server, &p, "private");
    ok(
        &server,
        &p,
        &["draft", "save", "acme-corp:private", "--image-ref", &image],
    );
    // Without credentials the publish fails, saying how to log in.
    let refused = fails(&server, &p, &["draft", "publish", "acme-corp:private"]);
    assert!(refused.contains("registry login"), "{refused}");

    // Wrong credentials are refused by the registry, and nothing is kept.
    let wrong = dodil_with_stdin(
        &server,
        &p,
        &[
            "registry",
            "login",
            &registry.addr,
            "--username",
            "puller",
            "--password-stdin",
        ],
        "not-the-password\n",
    );
    assert!(!wrong.status.success());
    let said = String::from_utf8_lossy(&wrong.stderr);
    assert!(said.contains("refused"), "{said}");
    let list = json(&ok(&server, &p, &["registry", "list", "-o", "json"]));
    assert_eq!(
        list["registries"].as_array().map(Vec::len),
        Some(0),
        "{list}"
    );
    // The password never comes from the command line.
    let refused = fails(
        &server,
        &p,
        &["registry", "login", &registry.addr, "--username", "puller"],
    );
    assert!(refused.contains("--password-stdin"), "{refused}");

    let right = dodil_with_stdin(
        &server,
        &p,
        &[
            "registry",
            "login",
            &registry.addr,
            "--username",
            "puller",
            "--password-stdin",
        ],
        "s3cret-pw\n",
    );
    assert!(
        right.status.success(),
        "{}",
        String::from_utf8_lossy(&right.stderr)
    );
    let list = ok(&server, &p, &["registry", "list", "-o", "json"]);
    assert!(
        list.contains("puller") && !list.contains("s3cret-pw"),
        "{list}"
    );
    // Kept sealed: the password is nowhere in the store.
    if support::postgres::requested() {
        let found = support::postgres::cluster().psql(
            &support::postgres::database_name(&server.dir.join("data")),
            "SELECT count(*), count(*) FILTER (WHERE position('s3cret-pw'::bytea IN secret) > 0 \
             OR username LIKE '%s3cret-pw%') FROM registry_credentials",
        );
        assert_eq!(found.trim(), "1|0", "the password is stored in clear");
    } else {
        let db = std::fs::read(server.dir.join("data").join("ignite.db")).expect("the store");
        assert!(
            !db.windows(9).any(|w| w == b"s3cret-pw"),
            "the password is stored in clear"
        );
    }

    // Now the publish pulls with them, and the app answers.
    ok(&server, &p, &["draft", "compile", "acme-corp:private"]);
    let published = json(&ok(
        &server,
        &p,
        &["draft", "publish", "acme-corp:private", "-o", "json"],
    ));
    assert_eq!(published["active_version"], 1, "{published}");
    let v = json(&ok(
        &server,
        &p,
        &["invoke", "acme-corp:private", "-p", "{}"],
    ));
    assert_eq!(v["env"]["GREETING"], "private", "{v}");

    // Another org does not get this org's credentials.
    ok(&server, &p, &["registry", "logout", &registry.addr]);
    let list = json(&ok(&server, &p, &["registry", "list", "-o", "json"]));
    assert_eq!(
        list["registries"].as_array().map(Vec::len),
        Some(0),
        "{list}"
    );
    server.stop();
}

/// Publishes `image` as app `name` with `scale` settings first.
fn publish_image(server: &Server, p: &std::path::Path, name: &str, image: &str, scale: &[&str]) {
    create_image_app(server, p, name);
    let id = format!("acme-corp:{name}");
    if !scale.is_empty() {
        let mut args = vec!["app", "scale", id.as_str()];
        args.extend_from_slice(scale);
        ok(server, p, &args);
    }
    ok(server, p, &["draft", "save", &id, "--image-ref", image]);
    ok(server, p, &["draft", "publish", &id]);
}

fn get(server: &Server, app: &str, path: &str) -> (u16, Vec<(String, String)>, String) {
    http_full(
        &server.gateway,
        &format!("{app}-acme-corp.ignite.localhost"),
        "GET",
        path,
        "",
    )
}

#[test]
fn containers_that_fail_are_told_and_leave_records() {
    let dir = scratch("image-failures");
    let registry = Registry::start(&dir.join("registry"), None);
    let mut exits = echo_config("exits");
    exits["Env"] = serde_json::json!(["MODE=exit"]);
    let exits = registry.push("acme/exits:v1", vec![echo_layer()], exits, None);
    let mut silent = echo_config("silent");
    silent["Env"] = serde_json::json!(["MODE=silent"]);
    let silent = registry.push("acme/silent:v1", vec![echo_layer()], silent, None);
    let echo = registry.push("acme/echo:v1", vec![echo_layer()], echo_config("ok"), None);
    let server = server_for(&dir.join("server"), &registry, &[]);
    let p = dir.clone();

    // One that exits at start: the cold start fails with its last log line.
    publish_image(&server, &p, "exits", &exits, &[]);
    let (status, headers, body) = get(&server, "exits", "/");
    assert_eq!(status, 502, "{body}");
    let record = execution_of(&server, &p, &headers);
    let said = record.to_string();
    assert!(said.contains("exited") && said.contains("boom"), "{record}");

    // One that never listens: the cold start fails at the app's deadline, saying $PORT.
    publish_image(&server, &p, "silent", &silent, &["--timeout", "2"]);
    let (status, headers, body) = get(&server, "silent", "/");
    assert!(status == 502 || status == 504, "{status} {body}");
    let record = execution_of(&server, &p, &headers);
    assert_ne!(record["status"], "succeeded", "{record}");
    assert!(record.to_string().contains("PORT"), "{record}");

    // One that crashes mid-request, one past its deadline, one past its memory cap.
    publish_image(
        &server,
        &p,
        "echo",
        &echo,
        &["--timeout", "2", "--memory", "64"],
    );
    let (status, _, body) = get(&server, "echo", "/");
    assert_eq!(status, 200, "{body}");
    let (status, headers, body) = get(&server, "echo", "/crash");
    assert_eq!(status, 502, "{body}");
    let record = execution_of(&server, &p, &headers);
    assert_eq!(record["status"], "crashed", "{record}");
    let (status, headers, body) = get(&server, "echo", "/sleep?ms=10000");
    assert_eq!(status, 504, "{body}");
    let record = execution_of(&server, &p, &headers);
    assert_eq!(record["status"], "timeout", "{record}");
    let (status, headers, body) = get(&server, "echo", "/alloc");
    assert_eq!(status, 502, "{body}");
    let record = execution_of(&server, &p, &headers);
    assert_eq!(record["status"], "oom", "{record}");
    // And the app still answers after each (a fresh instance).
    let (status, _, body) = get(&server, "echo", "/");
    assert_eq!(status, 200, "{body}");

    // One instance, one request at a time, no queue: a second request at once is told 429.
    ok(
        &server,
        &p,
        &[
            "app",
            "scale",
            "acme-corp:echo",
            "--concurrency",
            "1",
            "--max-instances",
            "1",
            "--queue-depth",
            "0",
        ],
    );
    let (slow, second) = std::thread::scope(|s| {
        let slow = s.spawn(|| get(&server, "echo", "/sleep?ms=1500"));
        std::thread::sleep(Duration::from_millis(400));
        let second = get(&server, "echo", "/");
        (slow.join().expect("slow"), second)
    });
    assert_eq!(slow.0, 200, "{}", slow.2);
    assert_eq!(second.0, 429, "{}", second.2);
    server.stop();
}

#[test]
fn a_hostile_image_is_unpacked_without_escaping_and_its_process_sees_nothing_of_the_host() {
    let dir = scratch("image-hostile");
    let registry = Registry::start(&dir.join("registry"), None);
    // A file on the host that the image names from every side.
    let sentinel = dir.join("host-secret.txt");
    std::fs::write(&sentinel, "host secret").expect("sentinel");
    let sentinel_path = sentinel.display().to_string();
    let outside = format!("../../../../../../..{sentinel_path}");
    let hostile = layer(&[
        E::File("../../escaped.txt", b"climbed", 0o644),
        E::File("/abs.txt", b"absolute", 0o644),
        E::Symlink("escape", &sentinel_path),
        E::Symlink("up", "../../../../../../../.."),
        E::File(
            "up/ignite-escaped-through-symlink.txt",
            b"through a symlink",
            0o644,
        ),
        E::File("setuid", b"#!/server\n", 0o4755),
        E::Char("dev-null-copy", 1, 3),
        E::Char("kmem", 1, 2),
        E::Link("hardlink", &outside),
    ]);
    let image = registry.push(
        "acme/hostile:v1",
        vec![echo_layer(), hostile],
        echo_config("hostile"),
        None,
    );
    let server = server_for(&dir.join("server"), &registry, &[]);
    let p = dir.clone();
    publish_image(&server, &p, "hostile", &image, &["--concurrency", "1"]);

    // Nothing was written outside the root.
    assert!(!dir.join("escaped.txt").exists());
    assert!(!std::path::Path::new("/ignite-escaped-through-symlink.txt").exists());
    assert!(!std::path::Path::new("/abs.txt").exists());
    let file = |path: &str| {
        let (status, _, body) = get(&server, "hostile", &format!("/file?path={path}"));
        assert_eq!(status, 200, "{body}");
        json(&body)["file"].clone()
    };
    // Inside, the entries landed in the root; the symlink resolves inside it, not on the host.
    assert_eq!(file("/abs.txt")["read"], "absolute");
    // A path climbing above the root is refused, not written anywhere.
    assert_eq!(file("/escaped.txt")["read"], "");
    assert_eq!(
        file("/escape")["read"],
        "",
        "the host's file through a symlink"
    );
    assert_eq!(file(&sentinel_path)["read"], "");
    // The setuid bit is gone; the device nodes were never made.
    let mode = file("/setuid")["mode"].as_u64().unwrap_or(0);
    assert_eq!(mode & 0o6000, 0, "mode {mode:o}");
    assert!(
        file("/kmem")["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
    );
    assert!(
        file("/dev-null-copy")["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
    );
    assert!(
        file("/hardlink")["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
    );
    // No host file, no host process; the root is read-only.
    assert_eq!(file("/etc/hostname")["read"], "");
    assert!(
        file("/etc/passwd")["read"]
            .as_str()
            .is_some_and(|s| s.contains("app:x:1234"))
    );
    let (_, _, body) = get(&server, "hostile", "/");
    let pids = json(&body)["pids"].as_u64().unwrap_or(0);
    assert!(pids <= 2, "the container sees {pids} processes");
    let (_, _, body) = get(&server, "hostile", "/write?path=/data/new.txt");
    assert!(
        json(&body)["write"]
            .as_str()
            .is_some_and(|e| e.contains("Read-only")),
        "{body}"
    );
    let (_, _, body) = get(&server, "hostile", "/write?path=/tmp/scratch.txt");
    assert_eq!(json(&body)["write"], "ok", "/tmp is writable: {body}");

    // Two instances at once share the one unpacked root, read-only.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| get(&server, "hostile", "/sleep?ms=1500"));
        std::thread::sleep(Duration::from_millis(200));
        let b = s.spawn(|| get(&server, "hostile", "/write?path=/server"));
        (a.join().expect("a"), b.join().expect("b"))
    });
    assert_eq!(a.0, 200, "{}", a.2);
    assert!(
        json(&b.2)["write"]
            .as_str()
            .is_some_and(|e| e.contains("Read-only")),
        "{}",
        b.2
    );
    let roots: Vec<_> = std::fs::read_dir(server.dir.join("data").join("images"))
        .expect("the unpacked roots")
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    assert_eq!(roots.len(), 1, "one root per image: {roots:?}");
    server.stop();
}

#[test]
fn a_publish_during_traffic_drains_rollback_goes_back_and_reserved_capacity_stays_warm() {
    let dir = scratch("image-drain");
    let registry = Registry::start(&dir.join("registry"), None);
    let v1 = registry.push("acme/echo:v1", vec![echo_layer()], echo_config("one"), None);
    let v2 = registry.push("acme/echo:v2", vec![echo_layer()], echo_config("two"), None);
    let server = server_for(&dir.join("server"), &registry, &[]);
    let p = dir.clone();
    publish_image(&server, &p, "live", &v1, &[]);
    let greeting = || {
        let (status, _, body) = get(&server, "live", "/sleep?ms=50");
        assert_eq!(status, 200, "{body}");
        json(&body)["env"]["GREETING"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(greeting(), "one");
    // Traffic throughout the publish of v2: every request answers, from one version or the
    // other, and once the publish is done only v2 answers.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let seen = std::thread::scope(|s| {
        let callers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut seen = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        seen.push(greeting());
                    }
                    seen
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        ok(
            &server,
            &p,
            &["draft", "save", "acme-corp:live", "--image-ref", &v2],
        );
        ok(&server, &p, &["draft", "publish", "acme-corp:live"]);
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        callers
            .into_iter()
            .flat_map(|c| c.join().expect("caller"))
            .collect::<Vec<_>>()
    });
    assert!(seen.iter().all(|g| g == "one" || g == "two"), "{seen:?}");
    assert_eq!(greeting(), "two");
    ok(&server, &p, &["version", "rollback", "acme-corp:live", "1"]);
    assert_eq!(greeting(), "one");
    let v = json(&ok(&server, &p, &["invoke", "acme-corp:live", "-p", "{}"]));
    assert_eq!(v["env"]["K_REVISION"], "live-v1", "{v}");

    // Reserved capacity keeps a container warm through an idle timeout of 0: the next request
    // is not a cold start. (Without it, the same settings make every request cold.)
    let cold_after = |reserved: &str| {
        ok(
            &server,
            &p,
            &[
                "app",
                "scale",
                "acme-corp:live",
                "--idle-timeout",
                "0",
                "--reserved-capacity",
                reserved,
            ],
        );
        std::thread::sleep(Duration::from_millis(2500));
        let (status, headers, body) = get(&server, "live", "/");
        assert_eq!(status, 200, "{body}");
        let record = execution_of(&server, &p, &headers);
        record["metrics"]["cold_start_ms"].as_f64().unwrap_or(-1.0)
    };
    assert!(cold_after("0") > 0.0, "idle timeout 0 scales to zero");
    assert_eq!(cold_after("1"), 0.0, "a reserved instance answers warm");
    server.stop();
}

#[test]
fn a_dockerfile_and_a_git_repository_at_a_tag_are_built_with_buildah_and_served() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("image-build");
    // nobody (the git CGI scripts' user) reads the repositories.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let registry = Registry::start(&dir.join("registry"), None);

    // A repository: a tagged commit, then a later one on its branch.
    let work = dir.join("work");
    echo_context(&work, "tagged");
    git(&work, &["init", "-q"]);
    git(&work, &["add", "."]);
    git(&work, &["commit", "-qm", "one"]);
    git(&work, &["tag", "v1"]);
    echo_context(&work, "later");
    git(&work, &["commit", "-qam", "two"]);
    let repos = dir.join("repos");
    std::fs::create_dir_all(&repos).expect("repos");
    git(
        &dir,
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap_or_default(),
            "repos/app.git",
        ],
    );
    let git_server = GitServer::start(&repos, &dir.join("www"));
    let server = server_for(
        &dir.join("server"),
        &registry,
        &["--git-host", &git_server.addr],
    );
    let p = dir.clone();

    // --dockerfile-path: the Dockerfile's directory is the context, .dockerignore honoured.
    let context = dir.join("ctx");
    echo_context(&context, "built");
    create_image_app(&server, &p, "built");
    ok(
        &server,
        &p,
        &[
            "draft",
            "save",
            "acme-corp:built",
            "--dockerfile-path",
            "./ctx/Dockerfile",
        ],
    );
    let published = json(&ok(
        &server,
        &p,
        &["draft", "publish", "acme-corp:built", "-o", "json"],
    ));
    assert_eq!(published["active_version"], 1, "{published}");
    let logs = ok(&server, &p, &["draft", "compile-logs", "acme-corp:built"]);
    assert!(
        logs.contains("buildah") && logs.contains("COPY server"),
        "{logs}"
    );
    let v = json(&ok(&server, &p, &["invoke", "acme-corp:built", "-p", "{}"]));
    assert_eq!(v["env"]["GREETING"], "built", "{v}");
    assert_eq!(v["uid"], "0", "no USER: root of its own namespace: {v}");
    // Root of an empty namespace, with no capability and no way to gain one.
    let (_, _, body) = get(&server, "built", "/file?path=/proc/self/status");
    let status = json(&body)["file"]["read"]
        .as_str()
        .unwrap_or("")
        .to_string();
    for line in [
        "CapPrm:\t0000000000000000",
        "CapEff:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "NoNewPrivs:\t1",
    ] {
        assert!(status.contains(line), "{line} in {status}");
    }
    // /dev/fd (and stdout, stderr) are there for images that log to them.
    let (_, _, body) = get(&server, "built", "/file?path=/dev/fd");
    assert!(
        json(&body)["file"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("directory")),
        "{body}"
    );
    let (_, _, body) = get(&server, "built", "/file?path=/secret.txt");
    assert_eq!(json(&body)["file"]["read"], "", ".dockerignore'd: {body}");
    let (_, _, body) = get(&server, "built", "/file?path=/server");
    assert!(
        json(&body)["file"]["mode"]
            .as_u64()
            .is_some_and(|m| m & 0o111 != 0),
        "{body}"
    );

    // A Dockerfile outside the context is refused at save.
    let refused = fails(
        &server,
        &p,
        &[
            "draft",
            "save",
            "acme-corp:built",
            "--dockerfile-path",
            "./nowhere/Dockerfile",
        ],
    );
    assert!(refused.contains("Dockerfile"), "{refused}");

    // --git-url at a tag: the tagged commit is what runs, not the branch's later one.
    create_image_app(&server, &p, "cloned");
    let url = format!("http://{}/cgi-bin/git/app.git#v1", git_server.addr);
    ok(
        &server,
        &p,
        &["draft", "save", "acme-corp:cloned", "--git-url", &url],
    );
    ok(&server, &p, &["draft", "publish", "acme-corp:cloned"]);
    let logs = ok(&server, &p, &["draft", "compile-logs", "acme-corp:cloned"]);
    assert!(
        logs.contains("cloning") && logs.contains("checked out"),
        "{logs}"
    );
    let v = json(&ok(
        &server,
        &p,
        &["invoke", "acme-corp:cloned", "-p", "{}"],
    ));
    assert_eq!(v["env"]["GREETING"], "tagged", "{v}");
    // A git host the operator did not allow, and a file:// URL, are refused at save.
    let refused = fails(
        &server,
        &p,
        &[
            "draft",
            "save",
            "acme-corp:cloned",
            "--git-url",
            "https://git.example.com/a/b.git",
        ],
    );
    assert!(refused.contains("git.example.com"), "{refused}");
    let refused = fails(
        &server,
        &p,
        &[
            "draft",
            "save",
            "acme-corp:cloned",
            "--git-url",
            "file:///etc",
        ],
    );
    assert!(refused.contains("file"), "{refused}");
    server.stop();
}
