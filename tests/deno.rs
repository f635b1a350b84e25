//! `--runtime deno` against the real server, the real Deno binary (the npm registry's `deno`
//! package, as `.ci/run` installs it), in the real sandbox: the seed recipe ported to Deno word
//! for word, build failures with Deno's messages, the SDK's behaviour (`console.log` never in a
//! response), limits, crashes, concurrency, and what a handler can see.
//!
//! Without a Deno binary on the machine these tests say so and pass vacuously.

mod support;

use std::time::Duration;

use support::platform::*;

#[path = "../crates/sandbox/tests/support/internet.rs"]
mod internet;

const SEED: &str = r#"import { main } from "ignite";

export default main(async (req, ctx) => {
  const message = req.field<string>("message") ?? "Hello from Deno!";
  return { message, execution_id: ctx.executionId, function_id: ctx.functionId };
});
"#;

/// Whether the machine has Deno; says so when it does not.
fn have_deno() -> bool {
    let found = ignite_builder::deno::default_binary().is_some();
    if !found {
        eprintln!(
            "skipping: no Deno binary (install it with `npm install --prefix /opt/ignite-deno deno`)"
        );
    }
    found
}

#[test]
fn the_deno_recipe_word_for_word_with_cold_starts_that_exec_deno() {
    if !have_deno() {
        return;
    }
    let dir = scratch("deno-recipe");
    let server = start_server(&dir);
    let p = files_project(&dir, "tiny-deno", &[("main.ts", SEED)]);
    let created = ok(
        &server,
        &p,
        &[
            "app",
            "create",
            "tiny-deno",
            "--runtime",
            "deno",
            "--description",
            "Minimal Deno function",
        ],
    );
    assert!(created.contains("acme-corp:tiny-deno"), "{created}");
    // Rust-only flags on a Deno draft are refused, naming the flag.
    for (flag, value) in [("--rust-target", "native"), ("--toolchain", "stable")] {
        let refused = fails(
            &server,
            &p,
            &[
                "draft",
                "save",
                "acme-corp:tiny-deno",
                "--code",
                "./",
                "--runtime",
                "deno",
                flag,
                value,
            ],
        );
        assert!(
            refused.contains(flag) && refused.contains("Rust"),
            "{refused}"
        );
    }
    let saved = ok(
        &server,
        &p,
        &[
            "draft",
            "save",
            "acme-corp:tiny-deno",
            "--code",
            "./",
            "--runtime",
            "deno",
        ],
    );
    assert!(saved.contains("draft publish"), "{saved}");
    let published = json(&ok(
        &server,
        &p,
        &["draft", "publish", "acme-corp:tiny-deno", "-o", "json"],
    ));
    assert_eq!(published["active_version"], 1, "{published}");
    let logs = ok(
        &server,
        &p,
        &["draft", "compile-logs", "acme-corp:tiny-deno"],
    );
    assert!(logs.contains("Deno"), "the build's log: {logs}");
    assert!(logs.contains("type-checking main.ts"), "{logs}");

    let out = ok(
        &server,
        &p,
        &[
            "invoke",
            "acme-corp:tiny-deno",
            "-p",
            r#"{"message": "hi there"}"#,
        ],
    );
    let v = json(&out);
    assert_eq!(v["message"], "hi there", "{out}");
    assert!(
        v["execution_id"].as_str().is_some_and(|s| s.len() == 26),
        "{out}"
    );
    assert_eq!(v["function_id"], "acme-corp/tiny-deno", "{out}");
    let v = json(&ok(
        &server,
        &p,
        &["invoke", "acme-corp:tiny-deno", "-p", "{}"],
    ));
    assert_eq!(v["message"], "Hello from Deno!", "{v}");

    // The public URL answers the same.
    let (status, headers, body) = call_app(&server, "tiny-deno", r#"{"message": "public"}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["message"], "public");
    let record = execution_of(&server, &p, &headers);
    assert_eq!(record["status"], "succeeded", "{record}");
    let (status, _, body) = call_app(&server, "tiny-deno", "{}");
    assert_eq!(
        (status, json(&body)["message"].clone()),
        (200, "Hello from Deno!".into())
    );

    // The first call started an instance: a fresh deno process (`exec`).
    let list = json(&ok(
        &server,
        &p,
        &[
            "execution",
            "list",
            "--app",
            "acme-corp:tiny-deno",
            "-o",
            "json",
        ],
    ));
    let first = list["executions"]
        .as_array()
        .and_then(|l| l.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        first["metrics"]["cold_start_phases"]["start"], "exec",
        "{first}"
    );
    assert!(
        first["metrics"]["cold_start_ms"].as_f64() > Some(0.0),
        "{first}"
    );

    // Scale to zero; the next call is a cold start again, another exec.
    ok(
        &server,
        &p,
        &["app", "scale", "acme-corp:tiny-deno", "--idle-timeout", "1"],
    );
    let mut record = serde_json::Value::Null;
    for _ in 0..10 {
        std::thread::sleep(Duration::from_secs(3));
        let (status, headers, body) = call_app(&server, "tiny-deno", r#"{"message": "again"}"#);
        assert_eq!(status, 200, "{body}");
        record = execution_of(&server, &p, &headers);
        if record["metrics"]["cold_start_ms"].as_f64() > Some(0.0) {
            break;
        }
    }
    assert_eq!(
        record["metrics"]["cold_start_phases"]["start"], "exec",
        "{record}"
    );
    assert!(
        record["metrics"]["cold_start_ms"].as_f64().unwrap() > 0.0,
        "{record}"
    );
    // The same source again reuses the build.
    ok(
        &server,
        &p,
        &[
            "draft",
            "save",
            "acme-corp:tiny-deno",
            "--code",
            "./",
            "--runtime",
            "deno",
        ],
    );
    ok(&server, &p, &["draft", "publish", "acme-corp:tiny-deno"]);
    let logs = ok(
        &server,
        &p,
        &["draft", "compile-logs", "acme-corp:tiny-deno"],
    );
    assert!(logs.contains("reusing"), "{logs}");
}

#[test]
fn a_compile_error_refuses_the_publish_with_denos_message() {
    if !have_deno() {
        return;
    }
    let dir = scratch("deno-broken");
    let server = start_server(&dir);
    for (app, code, expect) in [
        (
            "types-deno",
            "import { main } from \"ignite\";\n\nexport default main((req) => {\n  const n: number = req.field<string>(\"x\") ?? \"none\";\n  return { n };\n});\n",
            "TS2322",
        ),
        (
            "syntax-deno",
            "import { main } from \"ignite\";\n\nexport default main((req) => {\n  return { ok: true ;\n});\n",
            "Expected ',', got ';'",
        ),
        (
            "missing-deno",
            "import { main } from \"ignite\";\nimport { nothing } from \"./nowhere.ts\";\n\nexport default main(() => nothing);\n",
            "nowhere.ts",
        ),
        (
            "nohandler-deno",
            "export default async function handler() {\n  return {};\n}\n",
            "not a handler from main()",
        ),
    ] {
        let p = files_project(&dir, app, &[("main.ts", code)]);
        let id = format!("acme-corp:{app}");
        ok(&server, &p, &["app", "create", app, "--runtime", "deno"]);
        ok(
            &server,
            &p,
            &["draft", "save", &id, "--code", "./", "--runtime", "deno"],
        );
        let refused = fails(&server, &p, &["draft", "publish", &id]);
        assert!(refused.contains(expect), "{app}: {refused}");
        assert!(refused.contains("compile-logs"), "{app}: {refused}");
        let logs = dodil(&server, &p, &["draft", "compile-logs", &id]);
        let text = String::from_utf8_lossy(&logs.stdout).into_owned()
            + &String::from_utf8_lossy(&logs.stderr);
        assert!(text.contains(expect), "{app}'s log: {text}");
        let app_json = json(&ok(&server, &p, &["app", "get", &id, "-o", "json"]));
        assert!(app_json["active_version"].is_null(), "{app_json}");
    }
    // A project with no main.ts says what a Deno app needs.
    let p = files_project(&dir, "empty-deno", &[("handler.ts", "export default 1;\n")]);
    ok(
        &server,
        &p,
        &["app", "create", "empty-deno", "--runtime", "deno"],
    );
    let refused = fails(
        &server,
        &p,
        &[
            "draft",
            "save",
            "acme-corp:empty-deno",
            "--code",
            "./",
            "--runtime",
            "deno",
        ],
    );
    assert!(refused.contains("main.ts"), "{refused}");
}

const BEHAVIOUR: &str = r#"import { IgniteError, main } from "ignite";
import { greet } from "./greet.ts";

const INSTANCE = crypto.randomUUID();
console.log("a line from the app's top level");

export default main(async (req, ctx) => {
  const what = req.field<string>("what") ?? "echo";
  if (what === "print") {
    console.log("a line from console.log");
    console.info("a line from console.info");
    console.debug("a line from console.debug");
    console.error("to stderr");
    Deno.stdout.writeSync(new TextEncoder().encode("a line from Deno.stdout\n"));
    ctx.log("a line from ctx.log");
    return { printed: true };
  }
  if (what === "env") {
    let denoDir: string | null = null;
    try {
      denoDir = Deno.env.get("DENO_DIR") ?? "unset";
    } catch (e) {
      denoDir = `refused: ${(e as Error).name}`;
    }
    return { greeting: ctx.env.GREETING, deno: Deno.env.get("GREETING"), denoDir };
  }
  if (what === "error") throw new IgniteError(418, "I am a teapot");
  if (what === "require") return { x: req.require<number>("x") };
  if (what === "raise") throw new Error("boom");
  if (what === "sleep") {
    await new Promise((r) => setTimeout(r, req.require<number>("s") * 1000));
    return { slept: true };
  }
  if (what === "spin") {
    for (;;) {}
  }
  if (what === "hog") {
    const kept: number[][] = [];
    for (;;) kept.push(new Array(1 << 20).fill(1.5));
  }
  if (what === "buffer") {
    const block = new Uint8Array(512 * 1024 * 1024).fill(1);
    return { len: block.length };
  }
  if (what === "exit") Deno.exit(3);
  if (what === "overlap") {
    const start = Date.now();
    await new Promise((r) => setTimeout(r, 500));
    return { start, end: Date.now(), instance: INSTANCE };
  }
  if (what === "greet") return greet(req.require<string>("name"));
  if (what === "response") {
    return new Response("made by hand", { status: 201, headers: { "x-made": "yes" } });
  }
  if (what === "fetch") {
    try {
      const answer = await fetch(req.field<string>("url") ?? "https://example.com/", {
        signal: AbortSignal.timeout(3000),
      });
      return { fetched: true, text: await answer.text() };
    } catch (e) {
      return { fetched: false, error: `${(e as Error).name}: ${(e as Error).message}` };
    }
  }
  if (what === "read") {
    const found: Record<string, string | null> = {};
    const errors: Record<string, string> = {};
    for (const path of req.require<string[]>("paths")) {
      try {
        found[path] = (await Deno.readTextFile(path)).slice(0, 64);
      } catch (e) {
        found[path] = null;
        errors[path] = (e as Error).name;
      }
    }
    const listing: Record<string, string[] | null> = {};
    for (const d of ["/", "/etc", "/root", "/home", "/app"]) {
      try {
        listing[d] = [...Deno.readDirSync(d)].map((e) => e.name).sort();
      } catch {
        listing[d] = null;
      }
    }
    const own = await Deno.readTextFile("./greet.ts");
    return { found, errors, listing, own: own.length > 0 };
  }
  return { echo: req.body() };
});
"#;

const GREET: &str = "export function greet(name: string): string {\n  return `hello ${name}`;\n}\n";

#[test]
fn the_sdk_behaves_as_the_rust_one_does_errors_limits_crashes_and_concurrency() {
    if !have_deno() {
        return;
    }
    let dir = scratch("deno-behaviour");
    let server = start_server(&dir);
    let p = files_project(
        &dir,
        "beh-deno",
        &[("main.ts", BEHAVIOUR), ("greet.ts", GREET)],
    );
    ok(
        &server,
        &p,
        &["app", "create", "beh-deno", "--runtime", "deno"],
    );
    ok(
        &server,
        &p,
        &["app", "set-env", "acme-corp:beh-deno", "GREETING=hello"],
    );
    ok(
        &server,
        &p,
        &[
            "app",
            "scale",
            "acme-corp:beh-deno",
            "--timeout",
            "2",
            "--memory",
            "128",
        ],
    );
    ok(
        &server,
        &p,
        &[
            "draft",
            "save",
            "acme-corp:beh-deno",
            "--code",
            "./",
            "--runtime",
            "deno",
        ],
    );
    ok(&server, &p, &["draft", "publish", "acme-corp:beh-deno"]);

    // console.log goes to the execution's logs, never into the response.
    let (status, headers, body) = call_app(&server, "beh-deno", r#"{"what": "print"}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body), serde_json::json!({"printed": true}), "{body}");
    let record = execution_of(&server, &p, &headers);
    let logs = record["logs"].to_string();
    for line in [
        "a line from console.log",
        "a line from console.info",
        "a line from console.debug",
        "to stderr",
        "a line from Deno.stdout",
        "a line from ctx.log",
    ] {
        assert!(logs.contains(line), "{line}: {record}");
    }
    assert!(
        !logs.contains("top level"),
        "start-up logs are the instance's: {record}"
    );

    // The app's environment, through ctx.env and through Deno.env (which may read the app's
    // own variables only).
    let (_, _, body) = call_app(&server, "beh-deno", r#"{"what": "env"}"#);
    let v = json(&body);
    assert_eq!(v["greeting"], "hello", "{body}");
    assert_eq!(v["deno"], "hello", "{body}");
    assert_eq!(v["denoDir"], "refused: NotCapable", "{body}");

    let (status, headers, body) = call_app(&server, "beh-deno", r#"{"what": "error"}"#);
    assert_eq!(status, 418, "{body}");
    assert!(body.contains("I am a teapot"), "{body}");
    assert_eq!(execution_of(&server, &p, &headers)["status"], "failed");

    let (status, _, body) = call_app(&server, "beh-deno", r#"{"what": "require"}"#);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("missing field `x`"), "{body}");

    let (status, headers, body) = call_app(&server, "beh-deno", r#"{"what": "raise"}"#);
    assert_eq!(status, 500, "{body}");
    let record = execution_of(&server, &p, &headers);
    let logs = record["logs"].to_string();
    assert!(logs.contains("Error: boom"), "{record}");
    assert!(logs.contains("main.ts:"), "the stack: {record}");

    // The instance survives a thrown exception.
    let (status, _, body) = call_app(&server, "beh-deno", r#"{"x": 1}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["echo"]["x"], 1, "{body}");
    let (_, _, body) = call_app(&server, "beh-deno", r#"{"what": "greet", "name": "Ada"}"#);
    assert_eq!(body, "hello Ada", "a local module");
    let (status, headers, body) = call_app(&server, "beh-deno", r#"{"what": "response"}"#);
    assert_eq!((status, body.as_str()), (201, "made by hand"));
    assert_eq!(header(&headers, "x-made"), Some("yes"), "{headers:?}");
    // No --allow-net without egress.
    let (_, _, body) = call_app(&server, "beh-deno", r#"{"what": "fetch"}"#);
    let v = json(&body);
    assert_eq!(v["fetched"], false, "{body}");
    assert!(v["error"].to_string().contains("NotCapable"), "{body}");

    for what in ["sleep", "spin"] {
        let (status, headers, body) = call_app(
            &server,
            "beh-deno",
            &format!(r#"{{"what": "{what}", "s": 30}}"#),
        );
        assert_eq!(status, 504, "{what}: {body}");
        assert_eq!(
            execution_of(&server, &p, &headers)["status"],
            "timeout",
            "{what}"
        );
    }

    // Past the V8 heap limit, and past the cgroup with memory outside the heap.
    for what in ["hog", "buffer"] {
        let (status, headers, body) =
            call_app(&server, "beh-deno", &format!(r#"{{"what": "{what}"}}"#));
        assert!(status >= 500, "{what}: {body}");
        let record = execution_of(&server, &p, &headers);
        assert!(
            record["status"] == "oom" || record["error"].to_string().contains("memory"),
            "{what}: past 128 MiB: {record}"
        );
    }

    let (status, headers, body) = call_app(&server, "beh-deno", r#"{"what": "exit"}"#);
    assert_eq!(status, 502, "{body}");
    let record = execution_of(&server, &p, &headers);
    assert_eq!(record["status"], "crashed", "{record}");

    // And after all that, the app still answers (a new instance).
    let (status, _, body) = call_app(&server, "beh-deno", r#"{"what": "echo"}"#);
    assert_eq!(status, 200, "{body}");

    // concurrency 4: four requests on one instance overlap (promises in one isolate).
    ok(
        &server,
        &p,
        &[
            "app",
            "scale",
            "acme-corp:beh-deno",
            "--concurrency",
            "4",
            "--max-instances",
            "1",
        ],
    );
    let answers: Vec<serde_json::Value> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..4)
            .map(|_| s.spawn(|| call_app(&server, "beh-deno", r#"{"what": "overlap"}"#)))
            .collect();
        calls
            .into_iter()
            .map(|c| {
                let (status, _, body) = c.join().unwrap();
                assert_eq!(status, 200, "{body}");
                json(&body)
            })
            .collect()
    });
    let instances: std::collections::HashSet<String> =
        answers.iter().map(|a| a["instance"].to_string()).collect();
    assert_eq!(
        instances.len(),
        1,
        "one instance served all four: {answers:?}"
    );
    let latest_start = answers
        .iter()
        .map(|a| a["start"].as_f64().unwrap())
        .fold(0.0, f64::max);
    let earliest_end = answers
        .iter()
        .map(|a| a["end"].as_f64().unwrap())
        .fold(f64::MAX, f64::min);
    assert!(
        latest_start < earliest_end,
        "all four were running at once: {answers:?}"
    );
}

#[test]
fn a_handler_sees_only_its_own_tree() {
    if !have_deno() {
        return;
    }
    let dir = scratch("deno-isolation");
    let server = start_server(&dir);
    let p = deploy_files(
        &server,
        &dir,
        "iso-deno",
        "deno",
        &[("main.ts", BEHAVIOUR), ("greet.ts", GREET)],
    );
    // A second app, whose tree the first must not see.
    deploy_files(
        &server,
        &dir,
        "other-deno",
        "deno",
        &[(
            "main.ts",
            "import { main } from \"ignite\";\n\nexport const SECRET = \"other-app-secret\";\n\nexport default main(() => ({}));\n",
        )],
    );
    let _ = call_app(&server, "other-deno", "{}");
    let data = dir.join("data");
    let other_tree = std::fs::read_dir(data.join("apps"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|d| {
            std::fs::read_to_string(d.join("main.ts")).is_ok_and(|t| t.contains("other-app-secret"))
        })
        .expect("the other app's unpacked tree");
    let paths = [
        "/etc/shadow".to_string(),
        "/etc/passwd".to_string(),
        data.join("ignite.db").display().to_string(),
        other_tree.join("main.ts").display().to_string(),
        "/root/.bashrc".to_string(),
        "/proc/1/environ".to_string(),
        "/app/../etc/passwd".to_string(),
    ];
    let body = serde_json::json!({ "what": "read", "paths": paths }).to_string();
    let (status, _, answer) = call_app(&server, "iso-deno", &body);
    assert_eq!(status, 200, "{answer}");
    let v = json(&answer);
    for path in &paths {
        assert!(v["found"][path].is_null(), "{path} was readable: {v}");
    }
    // Deno's permissions refuse them (the second wall); the sandbox has none of them anyway.
    assert_eq!(v["errors"]["/etc/passwd"], "NotCapable", "{v}");
    assert!(!answer.contains("other-app-secret"), "{answer}");
    for d in ["/", "/etc", "/root", "/home"] {
        assert!(v["listing"][d].is_null(), "{d} was listed: {v}");
    }
    let app_files = v["listing"]["/app"].to_string();
    assert!(app_files.contains("main.ts"), "its own tree: {v}");
    assert_eq!(
        v["own"], true,
        "relative paths are the app's own files: {v}"
    );
    let _ = p;
}

#[test]
fn an_npm_import_is_fetched_at_build_and_a_single_file_is_an_app() {
    if !have_deno() {
        return;
    }
    let dir = scratch("deno-npm");
    let server = start_server(&dir);
    let p = deploy_files(
        &server,
        &dir,
        "npm-deno",
        "deno",
        &[(
            "main.ts",
            "import { main } from \"ignite\";\nimport ms from \"npm:ms@2.1.3\";\nimport process from \"node:process\";\n\nexport default main(() => {\n  process.stdout.write(\"a line from process.stdout\\n\");\n  return { minute: ms(60_000) };\n});\n",
        )],
    );
    let (status, headers, body) = call_app(&server, "npm-deno", "{}");
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["minute"], "1m", "{body}");
    let record = execution_of(&server, &p, &headers);
    assert!(
        record["logs"]
            .to_string()
            .contains("a line from process.stdout"),
        "{record}"
    );
    let logs = ok(
        &server,
        &p,
        &["draft", "compile-logs", "acme-corp:npm-deno"],
    );
    assert!(logs.contains("registry.npmjs.org/ms"), "{logs}");

    // One .ts file is an app's main.ts.
    let file = dir.join("hello.ts");
    std::fs::write(&file, SEED).unwrap();
    ok(
        &server,
        &dir,
        &["app", "create", "single-deno", "--runtime", "deno"],
    );
    ok(
        &server,
        &dir,
        &[
            "draft",
            "save",
            "acme-corp:single-deno",
            "--code",
            file.to_str().unwrap(),
            "--runtime",
            "deno",
        ],
    );
    ok(
        &server,
        &dir,
        &["draft", "publish", "acme-corp:single-deno"],
    );
    let v = json(&ok(
        &server,
        &dir,
        &[
            "invoke",
            "acme-corp:single-deno",
            "-p",
            r#"{"message": "one file"}"#,
        ],
    ));
    assert_eq!(v["message"], "one file", "{v}");

    // `dodil ignite run --runtime deno` runs a project locally, without a server.
    let p = files_project(&dir, "local-deno", &[("main.ts", SEED)]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dodil"))
        .args(["ignite", "run", "--runtime", "deno", "."])
        .args(["-p", r#"{"message": "local"}"#])
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .current_dir(&p)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json(&stdout)["message"], "local", "{stdout}");
}

#[test]
fn deno_reaches_the_network_only_with_the_apps_egress_setting_and_never_a_private_address() {
    if !have_deno() {
        return;
    }
    let internet = internet::Internet::shared();
    assert!(internet.reachable_from_host(), "the stand-in is up");
    let dir = scratch("deno-egress");
    let server = start_server(&dir);
    let p = deploy_files(
        &server,
        &dir,
        "net-deno",
        "deno",
        &[("main.ts", BEHAVIOUR), ("greet.ts", GREET)],
    );
    let fetch = |url: &str| {
        let body = serde_json::json!({"what": "fetch", "url": url}).to_string();
        let (status, _, answer) = call_app(&server, "net-deno", &body);
        assert_eq!(status, 200, "{answer}");
        json(&answer)
    };
    let public = format!("http://{}/", internet.public);
    let private = format!("http://{}/", internet.private);
    // Off by default: Deno's own permission refuses (no --allow-net).
    let v = fetch(&public);
    assert_eq!(v["fetched"], false, "{v}");
    assert!(v["error"].to_string().contains("NotCapable"), "{v}");
    // On: Deno's fetch goes through the sandbox's egress, which reaches the public address and
    // nothing private.
    ok(
        &server,
        &p,
        &["app", "network", "acme-corp:net-deno", "--egress", "on"],
    );
    let v = fetch(&public);
    assert_eq!(v["fetched"], true, "{v}");
    assert_eq!(v["text"], internet::GREETING, "{v}");
    let v = fetch(&private);
    assert_eq!(v["fetched"], false, "{v}");
    assert!(
        !v["error"].to_string().contains("NotCapable"),
        "the sandbox refused it: {v}"
    );
}
