//! The recipe (`shared/seed/compile-for-fast-cold-starts.txt`) word for word: the real server,
//! the real `dodil` binary, real cargo builds; only the endpoint differs.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use support::platform::*;

#[test]
fn the_recipe_word_for_word() {
    let dir = scratch("word-for-word");
    let server = start_server(&dir);
    let project = dir.join("tiny");
    copy_tiny(&project);
    let p = project.as_path();

    // 2. Create the app.
    let out = ok(
        &server,
        p,
        &[
            "app",
            "create",
            "tiny",
            "--runtime",
            "rust",
            "--description",
            "Tiny compiled Rust handler",
        ],
    );
    assert!(out.contains("acme-corp:tiny"), "{out}");

    // 3. Save the source.
    ok(
        &server,
        p,
        &[
            "draft",
            "save",
            "acme-corp:tiny",
            "--code",
            "./",
            "--runtime",
            "rust",
            "--rust-target",
            "native",
        ],
    );

    // 4. Compile, and follow the logs.
    ok(&server, p, &["draft", "compile", "acme-corp:tiny"]);
    let logs = ok(&server, p, &["draft", "compile-logs", "acme-corp:tiny"]);
    assert!(logs.contains("Compiling tiny"), "{logs}");
    assert!(logs.contains("compile succeeded"), "{logs}");

    // 5. Publish, and the app gets its public URL.
    ok(&server, p, &["draft", "publish", "acme-corp:tiny"]);
    let app = json(&ok(
        &server,
        p,
        &["app", "get", "acme-corp:tiny", "-o", "json"],
    ));
    assert_eq!(app["active_version"], 1);
    let url = app["public_urls"][0].as_str().unwrap().to_string();
    assert!(
        url.starts_with("http://tiny-acme-corp.ignite.localhost"),
        "{url}"
    );
    assert_eq!(app["artifact"]["target"], "x86_64-unknown-linux-musl");
    // The artifact is stored content-addressed in the data directory's OCI image layout.
    let digest = app["artifact"]["digest"].as_str().unwrap().to_string();
    let data = server.dir.join("data");
    let blob = std::fs::read(
        data.join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )
    .unwrap();
    assert_eq!(blob.len() as i64, app["artifact"]["size"].as_i64().unwrap());
    assert_eq!(&blob[..4], b"\x7fELF");
    let index = json(&std::fs::read_to_string(data.join("index.json")).unwrap());
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .is_some_and(|r| r.starts_with("acme-corp/tiny:"))
        })
        .unwrap_or_else(|| panic!("no manifest for acme-corp/tiny in {index}"));
    assert_eq!(
        entry["artifactType"],
        "application/vnd.ignite.handler.native.v1"
    );
    let manifest_blob = data.join("blobs/sha256").join(
        entry["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:"),
    );
    let manifest = json(&std::fs::read_to_string(manifest_blob).unwrap());
    assert_eq!(manifest["layers"][0]["digest"], digest.as_str());

    // 6. Invoke.
    let out = dodil(
        &server,
        p,
        &[
            "invoke",
            "acme-corp:tiny",
            "-p",
            r#"{"message": "hi there"}"#,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    // The keys come out in the order the handler wrote them, as the recipe shows.
    let at = |k: &str| printed.find(&format!("\"{k}\"")).unwrap_or(usize::MAX);
    assert!(
        at("message") < at("execution_id") && at("execution_id") < at("function_id"),
        "{printed}"
    );
    let answer = json(&printed);
    assert_eq!(answer["message"], "hi there");
    assert_eq!(answer["function_id"], "acme-corp/tiny");
    let first = answer["execution_id"].as_str().unwrap().to_string();
    assert!(first.starts_with("01"), "{first}");

    // 7. The first call was cold, the next one warm.
    let answer = json(&ok(&server, p, &["invoke", "acme-corp:tiny", "-p", "{}"]));
    assert_eq!(answer["message"], "Hello from Rust!");
    let second = answer["execution_id"].as_str().unwrap().to_string();
    let cold = json(&ok(&server, p, &["execution", "get", &first, "-o", "json"]));
    let warm = json(&ok(
        &server,
        p,
        &["execution", "get", &second, "-o", "json"],
    ));
    assert_eq!(cold["status"], "succeeded");
    assert!(
        cold["metrics"]["cold_start_ms"].as_f64().unwrap() > 0.0,
        "{cold}"
    );
    assert_eq!(
        warm["metrics"]["cold_start_ms"].as_f64(),
        Some(0.0),
        "{warm}"
    );
    assert!(
        warm["metrics"]["billed_duration_ms"].as_i64().unwrap() >= 1,
        "{warm}"
    );

    // The public URL answers too, with the request's path reaching the handler.
    let host = url
        .trim_start_matches("http://")
        .split(':')
        .next()
        .unwrap()
        .to_string();
    let (status, body) = http(&server.gateway, &host, r#"{"message": "via the URL"}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["message"], "via the URL");
    let (status, body) = http(&server.gateway, "nope-acme-corp.ignite.localhost", "{}");
    assert_eq!(status, 404);
    assert!(body.contains("no app answers"), "{body}");

    // Iterating: edit, save, compile, publish → version 2; roll back → version 1 again.
    let lib = std::fs::read_to_string(p.join("src/lib.rs")).unwrap();
    std::fs::write(
        p.join("src/lib.rs"),
        lib.replace("Hello from Rust!", "Hello again!"),
    )
    .unwrap();
    save_native(&server, p, "acme-corp:tiny", "./");
    ok(&server, p, &["draft", "compile", "acme-corp:tiny"]);
    ok(&server, p, &["draft", "compile-logs", "acme-corp:tiny"]);
    ok(&server, p, &["draft", "publish", "acme-corp:tiny"]);
    let app = json(&ok(
        &server,
        p,
        &["app", "get", "acme-corp:tiny", "-o", "json"],
    ));
    assert_eq!(app["active_version"], 2);
    assert_eq!(
        json(&ok(&server, p, &["invoke", "acme-corp:tiny", "-p", "{}"]))["message"],
        "Hello again!"
    );
    ok(&server, p, &["version", "rollback", "acme-corp:tiny", "1"]);
    assert_eq!(
        json(&ok(&server, p, &["invoke", "acme-corp:tiny", "-p", "{}"]))["message"],
        "Hello from Rust!"
    );
    let err = fails(&server, p, &["version", "rollback", "acme-corp:tiny", "7"]);
    assert!(
        err.contains("has no version 7") && err.contains("1, 2"),
        "{err}"
    );

    // Compiling the very same source again reuses the earlier binary instead of running cargo.
    save_native(&server, p, "acme-corp:tiny", "./");
    ok(&server, p, &["draft", "compile", "acme-corp:tiny"]);
    let logs = ok(&server, p, &["draft", "compile-logs", "acme-corp:tiny"]);
    assert!(
        logs.contains("reusing sha256:") && !logs.contains("Compiling"),
        "{logs}"
    );
    let draft = json(&ok(
        &server,
        p,
        &["app", "get", "acme-corp:tiny", "-o", "json"],
    ))["draft"]
        .clone();
    assert_eq!(draft["compile_status"], "compiled");
}

#[test]
fn a_compile_error_shows_rustcs_message_and_blocks_publish() {
    let dir = scratch("compile-error");
    let server = start_server(&dir);
    let project = dir.join("broken");
    copy_tiny(&project);
    std::fs::write(
        project.join("Cargo.toml"),
        std::fs::read_to_string(project.join("Cargo.toml"))
            .unwrap()
            .replace("\"tiny\"", "\"broken\""),
    )
    .unwrap();
    std::fs::write(project.join("src/lib.rs"), "use ignite::prelude::*;\n#[ignite::main]\nasync fn handler(req: Request, ctx: Context) -> Result<impl IntoResponse> { Ok(undefined_thing) }\n").unwrap();
    let p = project.as_path();
    ok(
        &server,
        p,
        &["app", "create", "broken", "--runtime", "rust"],
    );
    save_native(&server, p, "acme-corp:broken", "./");
    ok(&server, p, &["draft", "compile", "acme-corp:broken"]);
    let out = dodil(&server, p, &["draft", "compile-logs", "acme-corp:broken"]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("cannot find value `undefined_thing`"),
        "{stdout}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the compile failed"), "{err}");
    let err = fails(&server, p, &["draft", "publish", "acme-corp:broken"]);
    assert!(
        err.contains("isn't compiled") && err.contains("failed"),
        "{err}"
    );
}

#[test]
fn orgs_cannot_see_each_other_and_tokens_are_required() {
    let dir = scratch("isolation");
    let a = start_server(&dir);
    let p = dir.as_path();
    ok(&a, p, &["app", "create", "secret", "--runtime", "rust"]);
    // No token: refused with how to fix it.
    let out = Command::new(env!("CARGO_BIN_EXE_dodil"))
        .args(["ignite", "app", "list", "--api-endpoint", &a.api])
        .env("DODIL_CONFIG", dir.join("none.toml"))
        .env_remove("DODIL_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("config set token"));
    // A wrong token is refused the same way.
    let out = Command::new(env!("CARGO_BIN_EXE_dodil"))
        .args(["ignite", "app", "list", "--api-endpoint", &a.api])
        .env("DODIL_CONFIG", dir.join("none.toml"))
        .env("DODIL_TOKEN", "ign_000000000000_0000")
        .output()
        .unwrap();
    assert!(!out.status.success());
    // Another org's id answers as if the app did not exist.
    let err = fails(&a, p, &["app", "get", "other-org:secret"]);
    assert!(err.contains("app other-org:secret not found"), "{err}");
    // A malformed body gets the same error shape as everything else, saying what is wrong.
    let config = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    let token = config
        .lines()
        .find_map(|l| l.strip_prefix("token = "))
        .unwrap()
        .trim_matches('"')
        .to_string();
    let mut sock = TcpStream::connect(&a.api).unwrap();
    let body = "{not json";
    write!(sock, "POST /v1/apps HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut raw = String::new();
    sock.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    let answer = json(raw.split_once("\r\n\r\n").unwrap().1);
    assert_eq!(answer["error"]["code"], "invalid_argument", "{raw}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not the JSON this endpoint takes"),
        "{raw}"
    );

    // A revoked token stops working.
    let created = json(&ok(&a, p, &["token", "create", "ci", "-o", "json"]));
    let token = created["token"].as_str().unwrap().to_string();
    let with = |t: &str| {
        Command::new(env!("CARGO_BIN_EXE_dodil"))
            .args(["ignite", "app", "list", "--api-endpoint", &a.api])
            .env("DODIL_CONFIG", dir.join("none.toml"))
            .env("DODIL_TOKEN", t)
            .output()
            .unwrap()
    };
    assert!(with(&token).status.success());
    ok(&a, p, &["token", "revoke", created["id"].as_str().unwrap()]);
    assert!(!with(&token).status.success());
}

#[test]
fn crashes_and_deadlines_answer_502_and_504_and_are_recorded() {
    let dir = scratch("failures");
    let server = start_server(&dir);
    let p = project(
        &dir,
        "flaky",
        r#"
use ignite::prelude::*;

#[ignite::main]
async fn handler(req: Request, _ctx: Context) -> Result<impl IntoResponse> {
    if req.field::<bool>("crash").unwrap_or(false) {
        std::process::abort()
    }
    match req.path() {
        "/crash" => { eprintln!("going down"); std::process::abort() }
        "/slow" => { tokio::time::sleep(std::time::Duration::from_secs(60)).await; Ok("late".to_string()) }
        "/fail" => Err(Error::new(422, "that will not do")),
        "/echo" => Ok(format!(
            "{} {} {} {} {}",
            req.method(),
            req.path(),
            req.query(),
            req.header("x-custom").unwrap_or("-"),
            String::from_utf8_lossy(req.raw())
        )),
        _ => Ok("fine".to_string()),
    }
}
"#,
    );
    deploy(&server, &p, "acme-corp:flaky", "./");
    ok(
        &server,
        &p,
        &["app", "scale", "acme-corp:flaky", "--timeout", "2"],
    );
    let host = "flaky-acme-corp.ignite.localhost";
    let (status, body) = http_path(&server.gateway, host, "/crash", "{}");
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("crashed") && body.contains("SIGABRT"),
        "{body}"
    );
    let (status, body) = http_path(&server.gateway, host, "/slow", "{}");
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("deadline"), "{body}");
    let (status, body) = http_path(&server.gateway, host, "/fail", "{}");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("that will not do"), "{body}");
    // The app recovers: a fresh instance answers.
    let (status, body) = http_path(&server.gateway, host, "/", "{}");
    assert_eq!((status, body.as_str()), (200, "fine"));

    // Every request left one record, with its status, filterable.
    let list = |status: &str| {
        json(&ok(
            &server,
            &p,
            &[
                "execution",
                "list",
                "--app",
                "acme-corp:flaky",
                "--status",
                status,
                "--since",
                "1h",
                "-o",
                "json",
            ],
        ))
    };
    let crashed = list("crashed");
    assert_eq!(
        crashed["executions"].as_array().unwrap().len(),
        1,
        "{crashed}"
    );
    let crash = &crashed["executions"][0];
    assert_eq!(crash["response_status"], 502);
    assert!(
        crash["logs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l == "going down"),
        "{crash}"
    );
    assert_eq!(list("timeout")["executions"].as_array().unwrap().len(), 1);
    assert_eq!(list("failed")["executions"].as_array().unwrap().len(), 1);
    assert_eq!(list("succeeded")["executions"].as_array().unwrap().len(), 1);
    let all = json(&ok(
        &server,
        &p,
        &[
            "execution",
            "list",
            "--app",
            "acme-corp:flaky",
            "-o",
            "json",
        ],
    ));
    assert_eq!(all["executions"].as_array().unwrap().len(), 4);
    assert!(
        all["executions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["status"] != "running")
    );

    // Method, path, query, headers and body reach the handler through the public URL.
    let mut sock = TcpStream::connect(&server.gateway).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(sock, "PUT /echo?a=1&b=two HTTP/1.1\r\nHost: {host}\r\nX-Custom: yes\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody").unwrap();
    let mut raw = String::new();
    sock.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.ends_with("PUT /echo a=1&b=two yes body"), "{raw}");

    // Through the CLI, a crash is a clear non-zero exit naming the execution.
    let err = fails(
        &server,
        &p,
        &["invoke", "acme-corp:flaky", "-p", r#"{"crash": true}"#],
    );
    assert!(
        err.contains("crashed") && err.contains("execution 01"),
        "{err}"
    );

    // A deleted app is gone from the API and the public URL.
    ok(&server, &p, &["app", "delete", "acme-corp:flaky"]);
    let err = fails(&server, &p, &["app", "get", "acme-corp:flaky"]);
    assert!(err.contains("not found"), "{err}");
    let (status, _) = http_path(&server.gateway, host, "/", "{}");
    assert_eq!(status, 404);
}

#[test]
fn one_source_file_is_enough() {
    let dir = scratch("single");
    let server = start_server(&dir);
    std::fs::write(
        dir.join("handler.rs"),
        "use ignite::prelude::*;\n#[ignite::main]\nasync fn handler(req: Request, _c: Context) -> Result<impl IntoResponse> {\n    let n: u64 = req.field(\"n\")?;\n    Ok(serde_json::json!({ \"double\": n * 2 }))\n}\n",
    )
    .unwrap();
    deploy(&server, &dir, "acme-corp:single", "./handler.rs");
    let out = ok(
        &server,
        &dir,
        &["invoke", "acme-corp:single", "-p", r#"{"n": 21}"#],
    );
    assert_eq!(json(&out)["double"], 42);
    // A request error from the handler is a 400 that names the field.
    let err = fails(&server, &dir, &["invoke", "acme-corp:single", "-p", "{}"]);
    assert!(err.contains("missing field `n`"), "{err}");
}

#[test]
fn a_compile_past_its_budget_is_stopped_and_says_so() {
    let dir = scratch("budget");
    let server = start_server_with(&dir, &["--build-timeout", "3"]);
    let p = project(
        &dir,
        "slowbuild",
        "use ignite::prelude::*;\n#[ignite::main]\nasync fn handler(_r: Request, _c: Context) -> Result<impl IntoResponse> { Ok(\"x\") }\n",
    );
    std::fs::write(
        p.join("build.rs"),
        "fn main() { std::thread::sleep(std::time::Duration::from_secs(120)); }\n",
    )
    .unwrap();
    ok(
        &server,
        &p,
        &["app", "create", "slowbuild", "--runtime", "rust"],
    );
    save_native(&server, &p, "acme-corp:slowbuild", "./");
    ok(&server, &p, &["draft", "compile", "acme-corp:slowbuild"]);
    let out = dodil(
        &server,
        &p,
        &["draft", "compile-logs", "acme-corp:slowbuild"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("timed out") && err.contains("budget"), "{err}");
    let err = fails(&server, &p, &["draft", "publish", "acme-corp:slowbuild"]);
    assert!(err.contains("timed out"), "{err}");
    // The sleeping build script was killed with the compile.
    std::thread::sleep(Duration::from_millis(500));
    let left = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read_to_string(e.path().join("cmdline"))
                .is_ok_and(|c| c.contains("slowbuild") && c.contains("build-script-build"))
        })
        .count();
    assert_eq!(left, 0, "the build script outlived its compile");
}

#[test]
fn a_zip_archive_env_vars_println_and_toolchains() {
    let dir = scratch("zip");
    let server = start_server(&dir);
    let p = project(
        &dir,
        "zipped",
        r#"
use ignite::prelude::*;

#[ignite::main]
async fn handler(_req: Request, ctx: Context) -> Result<impl IntoResponse> {
    println!("a stray println in the handler");
    Ok(format!("zipped {} {}", ctx.function_id(), ctx.env().get("GREETING").map_or("-", |s| s.as_str())))
}
"#,
    );
    let zip_path = dir.join("zipped.zip");
    {
        let file = std::fs::File::create(&zip_path).unwrap();
        let mut zip = zip::ZipWriter::new(file);
        let opts = zip::write::SimpleFileOptions::default();
        for rel in ["Cargo.toml", "src/lib.rs"] {
            zip.start_file(rel, opts).unwrap();
            zip.write_all(&std::fs::read(p.join(rel)).unwrap()).unwrap();
        }
        zip.finish().unwrap();
    }
    let zip_arg = zip_path.to_str().unwrap();
    // An unknown toolchain is refused, naming the installed ones.
    ok(
        &server,
        &dir,
        &["app", "create", "zipped", "--runtime", "rust"],
    );
    let err = fails(
        &server,
        &dir,
        &[
            "draft",
            "save",
            "acme-corp:zipped",
            "--code",
            zip_arg,
            "--runtime",
            "rust",
            "--rust-target",
            "native",
            "--toolchain",
            "0.0.1",
        ],
    );
    assert!(
        err.contains("toolchain \"0.0.1\" is not installed") && err.contains("installed: "),
        "{err}"
    );
    // The image-build flags are not combined with --code.
    let err = fails(
        &server,
        &dir,
        &[
            "draft",
            "save",
            "acme-corp:zipped",
            "--code",
            zip_arg,
            "--rust-target",
            "native",
            "--image-ref",
            "x",
        ],
    );
    assert!(err.contains("--image-ref"), "{err}");

    save_native(&server, &dir, "acme-corp:zipped", zip_arg);
    ok(&server, &dir, &["draft", "compile", "acme-corp:zipped"]);
    ok(
        &server,
        &dir,
        &["draft", "compile-logs", "acme-corp:zipped"],
    );
    ok(&server, &dir, &["draft", "publish", "acme-corp:zipped"]);
    let out = ok(&server, &dir, &["invoke", "acme-corp:zipped", "-p", "{}"]);
    assert_eq!(out.trim(), "zipped acme-corp/zipped -");

    // Env vars travel with the next published version; the running one keeps its own.
    ok(
        &server,
        &dir,
        &["app", "set-env", "acme-corp:zipped", "GREETING=hej"],
    );
    assert_eq!(
        ok(&server, &dir, &["invoke", "acme-corp:zipped", "-p", "{}"]).trim(),
        "zipped acme-corp/zipped -"
    );
    ok(&server, &dir, &["draft", "publish", "acme-corp:zipped"]);
    let out = dodil(&server, &dir, &["invoke", "acme-corp:zipped", "-p", "{}"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "zipped acme-corp/zipped hej"
    );
    // The println became a log line of that execution; the response stayed intact.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let exec = stderr.split_whitespace().last().unwrap().to_string();
    let e = json(&ok(
        &server,
        &dir,
        &["execution", "get", &exec, "-o", "json"],
    ));
    assert!(
        e["logs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l == "a stray println in the handler"),
        "{e}"
    );
}

#[test]
fn the_recipes_gotchas_and_a_hostile_archive() {
    let dir = scratch("gotchas");
    let server = start_server(&dir);
    let project = dir.join("tiny");
    copy_tiny(&project);
    let p = project.as_path();
    ok(&server, p, &["app", "create", "tiny", "--runtime", "rust"]);

    // Gotcha: --rust-target is required for Rust.
    let err = fails(
        &server,
        p,
        &[
            "draft",
            "save",
            "acme-corp:tiny",
            "--code",
            "./",
            "--runtime",
            "rust",
        ],
    );
    assert!(err.contains("--rust-target is required for Rust"), "{err}");
    assert!(err.contains("--rust-target native"), "{err}");

    save_native(&server, p, "acme-corp:tiny", "./");
    // Gotcha: publishing an uncompiled Rust draft.
    let err = fails(&server, p, &["draft", "publish", "acme-corp:tiny"]);
    assert!(err.contains("isn't compiled"), "{err}");
    assert!(
        err.contains("dodil ignite draft compile acme-corp:tiny"),
        "{err}"
    );

    // An archive that climbs out of its directory is refused before anything is stored.
    let evil = dir.join("evil.tar.gz");
    {
        let mut header = tar::Header::new_old();
        let name = b"../../outside.rs";
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_size(2);
        header.set_mode(0o644);
        header.set_cksum();
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        b.append(&header, &b"x\n"[..]).unwrap();
        std::fs::write(&evil, b.into_inner().unwrap().finish().unwrap()).unwrap();
    }
    let err = fails(
        &server,
        p,
        &[
            "draft",
            "save",
            "acme-corp:tiny",
            "--code",
            evil.to_str().unwrap(),
            "--runtime",
            "rust",
            "--rust-target",
            "native",
        ],
    );
    assert!(err.contains("climbs out of the project"), "{err}");
    assert!(!dir.join("data/outside.rs").exists() && !dir.join("outside.rs").exists());
}

#[test]
fn nothing_is_lost_on_restart() {
    let dir = scratch("restart");
    let server = start_server(&dir);
    let p = project(
        &dir,
        "keeper",
        "use ignite::prelude::*;\n#[ignite::main]\nasync fn handler(req: Request, _c: Context) -> Result<impl IntoResponse> { Ok(req.field::<String>(\"say\").unwrap_or_default()) }\n",
    );
    deploy(&server, &p, "acme-corp:keeper", "./");
    let out = dodil(
        &server,
        &p,
        &["invoke", "acme-corp:keeper", "-p", r#"{"say": "before"}"#],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "before");
    let exec = String::from_utf8_lossy(&out.stderr)
        .split_whitespace()
        .last()
        .unwrap()
        .to_string();
    let token = json(&ok(&server, &p, &["token", "create", "kept", "-o", "json"]))["token"]
        .as_str()
        .unwrap()
        .to_string();

    server.stop();
    let server = start_server(&dir);
    // Port 0 gave the restarted server a new port; the token in the config still holds.
    ok(
        &server,
        &p,
        &["config", "set", "api_endpoint", &server.api.clone()],
    );
    let app = json(&ok(
        &server,
        &p,
        &["app", "get", "acme-corp:keeper", "-o", "json"],
    ));
    assert_eq!(app["active_version"], 1);
    let versions = json(&ok(
        &server,
        &p,
        &["version", "list", "acme-corp:keeper", "-o", "json"],
    ));
    assert_eq!(
        versions["versions"].as_array().unwrap().len(),
        2,
        "{versions}"
    );
    let e = json(&ok(&server, &p, &["execution", "get", &exec, "-o", "json"]));
    assert_eq!(e["status"], "succeeded");
    let out = Command::new(env!("CARGO_BIN_EXE_dodil"))
        .args(["ignite", "app", "list", "--api-endpoint", &server.api])
        .env("DODIL_CONFIG", dir.join("none.toml"))
        .env("DODIL_TOKEN", &token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "a token minted before the restart was refused"
    );
    // The artifact is still on disk and the app answers (cold, from the stored binary).
    assert_eq!(
        ok(
            &server,
            &p,
            &["invoke", "acme-corp:keeper", "-p", r#"{"say": "after"}"#]
        )
        .trim(),
        "after"
    );
}
