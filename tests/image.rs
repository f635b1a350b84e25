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
