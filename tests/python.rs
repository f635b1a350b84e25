//! `--runtime python` against the real server, the real interpreter (Debian's python3), real
//! pip from the package index, in the real sandbox: the seed recipe ported to Python word for
//! word, dependencies, build failures, the SDK's behaviour, limits, crashes, cold starts that
//! are forks of a template, and what a handler can see.

mod support;

use std::time::{Duration, Instant};

use support::platform::*;

const SEED: &str = r#"import ignite

@ignite.main
async def handler(req: ignite.Request, ctx: ignite.Context):
    message = req.field("message", default="Hello from Python!")
    return {"message": message, "execution_id": ctx.execution_id, "function_id": ctx.function_id}
"#;

#[test]
fn the_python_recipe_word_for_word_with_cold_starts_forked_from_a_template() {
    let dir = scratch("python-recipe");
    let server = start_server(&dir);
    let p = files_project(&dir, "tiny-py", &[("main.py", SEED)]);
    let created = ok(
        &server,
        &p,
        &[
            "app",
            "create",
            "tiny-py",
            "--runtime",
            "python",
            "--description",
            "Minimal Python function",
        ],
    );
    assert!(created.contains("acme-corp:tiny-py"), "{created}");
    // Rust-only flags on a Python draft are refused, naming the flag.
    for (flag, value) in [("--rust-target", "native"), ("--toolchain", "stable")] {
        let refused = fails(
            &server,
            &p,
            &[
                "draft",
                "save",
                "acme-corp:tiny-py",
                "--code",
                "./",
                "--runtime",
                "python",
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
            "acme-corp:tiny-py",
            "--code",
            "./",
            "--runtime",
            "python",
        ],
    );
    assert!(saved.contains("draft publish"), "{saved}");
    let published = json(&ok(
        &server,
        &p,
        &["draft", "publish", "acme-corp:tiny-py", "-o", "json"],
    ));
    assert_eq!(published["active_version"], 1, "{published}");
    let logs = ok(&server, &p, &["draft", "compile-logs", "acme-corp:tiny-py"]);
    assert!(logs.contains("Python"), "the build's log: {logs}");

    let out = ok(
        &server,
        &p,
        &[
            "invoke",
            "acme-corp:tiny-py",
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
    assert_eq!(v["function_id"], "acme-corp/tiny-py", "{out}");
    let v = json(&ok(
        &server,
        &p,
        &["invoke", "acme-corp:tiny-py", "-p", "{}"],
    ));
    assert_eq!(v["message"], "Hello from Python!", "{v}");

    // The public URL answers the same; the first call after the publish was a fork of the
    // template the publish made ahead of need.
    let (status, headers, body) = call_app(&server, "tiny-py", r#"{"message": "public"}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["message"], "public");
    let list = json(&ok(
        &server,
        &p,
        &[
            "execution",
            "list",
            "--app",
            "acme-corp:tiny-py",
            "-o",
            "json",
        ],
    ));
    let first = list["executions"]
        .as_array()
        .and_then(|l| l.last())
        .cloned()
        .unwrap_or_default();
    let phases = &first["metrics"]["cold_start_phases"];
    assert_eq!(
        phases["start"], "fork",
        "the first call was forked: {first}"
    );
    let record = execution_of(&server, &p, &headers);
    assert_eq!(record["status"], "succeeded", "{record}");

    // Scale to zero, then a cold start is a fork of the (still running) template: no template
    // start in its phases.
    ok(
        &server,
        &p,
        &["app", "scale", "acme-corp:tiny-py", "--idle-timeout", "1"],
    );
    // Idle past the timeout, the instance is stopped: the next call is a cold start again.
    let mut record = serde_json::Value::Null;
    for _ in 0..10 {
        std::thread::sleep(Duration::from_secs(3));
        let (status, headers, body) = call_app(&server, "tiny-py", r#"{"message": "again"}"#);
        assert_eq!(status, 200, "{body}");
        record = execution_of(&server, &p, &headers);
        if record["metrics"]["cold_start_ms"].as_f64() > Some(0.0) {
            break;
        }
    }
    let phases = &record["metrics"]["cold_start_phases"];
    assert_eq!(phases["start"], "fork", "{record}");
    assert_eq!(
        phases["template_ms"], 0.0,
        "the template was running: {record}"
    );
    assert!(
        record["metrics"]["cold_start_ms"].as_f64().unwrap() > 0.0,
        "{record}"
    );
}

#[test]
fn requirements_are_installed_at_build_time_pure_python_and_binary_wheels() {
    let dir = scratch("python-deps");
    let server = start_server(&dir);
    let p = deploy_files(
        &server,
        &dir,
        "deps-py",
        "python",
        &[
            (
                "main.py",
                r#"import ignite
import six
import markupsafe
from markupsafe import _speedups

@ignite.main
def handler(req, ctx):
    return {
        "six": six.__version__,
        "escaped": str(markupsafe.escape("<b>")),
        "speedups": _speedups.__file__.endswith(".so"),
    }
"#,
            ),
            ("requirements.txt", "six\nmarkupsafe\n"),
        ],
    );
    let v = json(&ok(
        &server,
        &p,
        &["invoke", "acme-corp:deps-py", "-p", "{}"],
    ));
    assert_eq!(v["escaped"], "&lt;b&gt;", "{v}");
    assert_eq!(
        v["speedups"], true,
        "the binary wheel's extension loaded: {v}"
    );
    assert!(v["six"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    // The same source again reuses the build.
    ok(
        &server,
        &p,
        &[
            "draft",
            "save",
            "acme-corp:deps-py",
            "--code",
            "./",
            "--runtime",
            "python",
        ],
    );
    ok(&server, &p, &["draft", "publish", "acme-corp:deps-py"]);
    let logs = ok(&server, &p, &["draft", "compile-logs", "acme-corp:deps-py"]);
    assert!(logs.contains("reusing"), "{logs}");
}

#[test]
fn a_syntax_error_or_a_failing_import_refuses_the_publish_with_the_traceback() {
    let dir = scratch("python-broken");
    let server = start_server(&dir);
    for (app, code, expect) in [
        (
            "syntax-py",
            "import ignite\n\n@ignite.main\ndef handler(req, ctx)\n    return {}\n",
            "SyntaxError",
        ),
        (
            "import-py",
            "import ignite\nimport no_such_module_here\n\n@ignite.main\ndef handler(req, ctx):\n    return {}\n",
            "No module named 'no_such_module_here'",
        ),
        (
            "nohandler-py",
            "import ignite\n\ndef handler(req, ctx):\n    return {}\n",
            "@ignite.main",
        ),
    ] {
        let p = files_project(&dir, app, &[("main.py", code)]);
        let id = format!("acme-corp:{app}");
        ok(&server, &p, &["app", "create", app, "--runtime", "python"]);
        ok(
            &server,
            &p,
            &["draft", "save", &id, "--code", "./", "--runtime", "python"],
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
    // A project with no main.py says what a Python app needs.
    let p = files_project(&dir, "empty-py", &[("handler.py", "print(1)\n")]);
    ok(
        &server,
        &p,
        &["app", "create", "empty-py", "--runtime", "python"],
    );
    let refused = fails(
        &server,
        &p,
        &[
            "draft",
            "save",
            "acme-corp:empty-py",
            "--code",
            "./",
            "--runtime",
            "python",
        ],
    );
    assert!(refused.contains("main.py"), "{refused}");
}

const BEHAVIOUR: &str = r#"import asyncio, os, random, sys, time
import ignite

@ignite.main
async def handler(req, ctx):
    what = req.field("what", default="echo")
    if what == "print":
        print("a line from print()")
        print("to stderr", file=sys.stderr)
        return {"printed": True}
    if what == "env":
        return {"greeting": ctx.env.get("GREETING"), "os": os.environ.get("GREETING")}
    if what == "error":
        raise ignite.Error(418, "I am a teapot")
    if what == "raise":
        raise ValueError("boom")
    if what == "sleep":
        await asyncio.sleep(req.field("s"))
        return {"slept": True}
    if what == "spin":
        while True:
            pass
    if what == "hog":
        block = bytearray(512 * 1024 * 1024)
        return {"len": len(block)}
    if what == "abort":
        os.abort()
    if what == "overlap":
        start = time.time()
        await asyncio.sleep(0.5)
        return {"start": start, "end": time.time(), "pid": os.getpid()}
    if what == "random":
        await asyncio.sleep(req.field("s", default=0))
        return {"random": random.random(), "pid": os.getpid()}
    if what == "read":
        found = {}
        for path in req.field("paths"):
            try:
                with open(path, "rb") as f:
                    found[path] = f.read(64).decode("latin-1")
            except Exception as e:
                found[path] = None
        listing = {}
        for d in ["/", "/etc", "/root", "/home", "/app"]:
            try:
                listing[d] = sorted(os.listdir(d))
            except Exception:
                listing[d] = None
        return {"found": found, "listing": listing}
    return {"echo": req.body()}
"#;

#[test]
fn the_sdk_behaves_as_the_rust_one_does_errors_limits_crashes_and_concurrency() {
    let dir = scratch("python-behaviour");
    let server = start_server(&dir);
    let p = files_project(&dir, "beh-py", &[("main.py", BEHAVIOUR)]);
    ok(
        &server,
        &p,
        &["app", "create", "beh-py", "--runtime", "python"],
    );
    ok(
        &server,
        &p,
        &["app", "set-env", "acme-corp:beh-py", "GREETING=hello"],
    );
    ok(
        &server,
        &p,
        &[
            "app",
            "scale",
            "acme-corp:beh-py",
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
            "acme-corp:beh-py",
            "--code",
            "./",
            "--runtime",
            "python",
        ],
    );
    ok(&server, &p, &["draft", "publish", "acme-corp:beh-py"]);

    // print() goes to the execution's logs, never into the response.
    let (status, headers, body) = call_app(&server, "beh-py", r#"{"what": "print"}"#);
    assert_eq!(
        (status, json(&body)["printed"].clone()),
        (200, true.into()),
        "{body}"
    );
    let record = execution_of(&server, &p, &headers);
    let logs = record["logs"].to_string();
    assert!(logs.contains("a line from print()"), "{record}");
    assert!(logs.contains("to stderr"), "{record}");

    let (_, _, body) = call_app(&server, "beh-py", r#"{"what": "env"}"#);
    assert_eq!(json(&body)["greeting"], "hello", "{body}");
    assert_eq!(json(&body)["os"], "hello", "{body}");

    let (status, headers, body) = call_app(&server, "beh-py", r#"{"what": "error"}"#);
    assert_eq!(status, 418, "{body}");
    assert!(body.contains("I am a teapot"), "{body}");
    assert_eq!(execution_of(&server, &p, &headers)["status"], "failed");

    let (status, headers, body) = call_app(&server, "beh-py", r#"{"what": "raise"}"#);
    assert_eq!(status, 500, "{body}");
    let record = execution_of(&server, &p, &headers);
    assert!(record["logs"].to_string().contains("Traceback"), "{record}");
    assert!(
        record["logs"].to_string().contains("ValueError: boom"),
        "{record}"
    );

    // The instance survives a raised exception.
    let (status, _, body) = call_app(&server, "beh-py", r#"{"x": 1}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["echo"]["x"], 1, "{body}");

    for what in ["sleep", "spin"] {
        let (status, headers, body) = call_app(
            &server,
            "beh-py",
            &format!(r#"{{"what": "{what}", "s": 30}}"#),
        );
        assert_eq!(status, 504, "{what}: {body}");
        assert_eq!(
            execution_of(&server, &p, &headers)["status"],
            "timeout",
            "{what}"
        );
    }

    let (status, headers, body) = call_app(&server, "beh-py", r#"{"what": "hog"}"#);
    assert!(status >= 500, "{body}");
    let record = execution_of(&server, &p, &headers);
    assert!(
        record["status"] == "oom" || record["error"].to_string().contains("memory"),
        "a 512 MiB allocation under a 128 MiB cap: {record}"
    );

    let (status, headers, body) = call_app(&server, "beh-py", r#"{"what": "abort"}"#);
    assert_eq!(status, 502, "{body}");
    let record = execution_of(&server, &p, &headers);
    assert_eq!(record["status"], "crashed", "{record}");
    assert!(record["error"].to_string().contains("SIGABRT"), "{record}");

    // And after all that, the app still answers (a new fork).
    let (status, _, body) = call_app(&server, "beh-py", r#"{"what": "echo"}"#);
    assert_eq!(status, 200, "{body}");

    // concurrency 4: four requests on one instance overlap (asyncio tasks in one process).
    ok(
        &server,
        &p,
        &[
            "app",
            "scale",
            "acme-corp:beh-py",
            "--concurrency",
            "4",
            "--max-instances",
            "1",
        ],
    );
    let answers: Vec<serde_json::Value> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..4)
            .map(|_| s.spawn(|| call_app(&server, "beh-py", r#"{"what": "overlap"}"#)))
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
    let pids: std::collections::HashSet<String> =
        answers.iter().map(|a| a["pid"].to_string()).collect();
    assert_eq!(pids.len(), 1, "one instance served all four: {answers:?}");
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
fn forks_get_their_own_random_state_and_a_handler_sees_only_its_own_tree() {
    let dir = scratch("python-isolation");
    let server = start_server(&dir);
    let p = files_project(&dir, "iso-py", &[("main.py", BEHAVIOUR)]);
    ok(
        &server,
        &p,
        &["app", "create", "iso-py", "--runtime", "python"],
    );
    ok(
        &server,
        &p,
        &[
            "draft",
            "save",
            "acme-corp:iso-py",
            "--code",
            "./",
            "--runtime",
            "python",
        ],
    );
    ok(&server, &p, &["draft", "publish", "acme-corp:iso-py"]);
    // A second app, whose tree the first must not see.
    let other = deploy_files(
        &server,
        &dir,
        "other-py",
        "python",
        &[(
            "main.py",
            "import ignite\n\nSECRET = 'other-app-secret'\n\n@ignite.main\ndef handler(req, ctx):\n    return {}\n",
        )],
    );
    let _ = call_app(&server, "other-py", "{}");

    // Two instances at once (concurrency 1): two forks of one template, different random
    // streams.
    let draws: Vec<serde_json::Value> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..2)
            .map(|_| s.spawn(|| call_app(&server, "iso-py", r#"{"what": "random", "s": 0.5}"#)))
            .collect();
        calls
            .into_iter()
            .map(|c| json(&c.join().unwrap().2))
            .collect()
    });
    assert_ne!(draws[0]["pid"], draws[1]["pid"], "two instances: {draws:?}");
    assert_ne!(
        draws[0]["random"], draws[1]["random"],
        "reseeded per fork: {draws:?}"
    );

    let data = dir.join("data");
    let other_tree = std::fs::read_dir(data.join("apps"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|d| {
            std::fs::read_to_string(d.join("main.py")).is_ok_and(|t| t.contains("other-app-secret"))
        })
        .expect("the other app's unpacked tree");
    let paths = [
        "/etc/shadow".to_string(),
        "/etc/passwd".to_string(),
        data.join("ignite.db").display().to_string(),
        other_tree.join("main.py").display().to_string(),
        "/root/.bashrc".to_string(),
        "/proc/1/environ".to_string(),
    ];
    let body = serde_json::json!({ "what": "read", "paths": paths }).to_string();
    let (status, _, answer) = call_app(&server, "iso-py", &body);
    assert_eq!(status, 200, "{answer}");
    let v = json(&answer);
    for path in &paths[..5] {
        assert!(v["found"][path].is_null(), "{path} was readable: {v}");
    }
    assert!(!answer.contains("other-app-secret"), "{answer}");
    assert!(v["listing"]["/etc"].is_null(), "no host /etc: {v}");
    assert!(v["listing"]["/root"].is_null(), "no /root: {v}");
    assert!(v["listing"]["/home"].is_null(), "no /home: {v}");
    let app_files = v["listing"]["/app"].to_string();
    assert!(app_files.contains("main.py"), "its own tree: {v}");
    let _ = other;
}

#[test]
fn a_single_py_file_is_an_app_and_runs_locally_too() {
    let dir = scratch("python-single");
    let server = start_server(&dir);
    let file = dir.join("hello.py");
    std::fs::write(&file, SEED).unwrap();
    ok(
        &server,
        &dir,
        &["app", "create", "single-py", "--runtime", "python"],
    );
    ok(
        &server,
        &dir,
        &[
            "draft",
            "save",
            "acme-corp:single-py",
            "--code",
            file.to_str().unwrap(),
            "--runtime",
            "python",
        ],
    );
    // `draft compile` builds ahead of the publish; the publish then has nothing to build.
    ok(&server, &dir, &["draft", "compile", "acme-corp:single-py"]);
    let logs = ok(
        &server,
        &dir,
        &["draft", "compile-logs", "acme-corp:single-py"],
    );
    assert!(logs.contains("Python"), "{logs}");
    ok(&server, &dir, &["draft", "publish", "acme-corp:single-py"]);
    let v = json(&ok(
        &server,
        &dir,
        &[
            "invoke",
            "acme-corp:single-py",
            "-p",
            r#"{"message": "one file"}"#,
        ],
    ));
    assert_eq!(v["message"], "one file", "{v}");

    // `dodil ignite run --runtime python` runs a project locally, without a server.
    let p = files_project(&dir, "local-py", &[("main.py", SEED)]);
    let started = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dodil"))
        .args(["ignite", "run", "--runtime", "python", "."])
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
    let _ = started;
}

/// The server's Python templates: its children running the SDK's template mode.
fn templates_of(server: &Server) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            ppid == Some(server.pid())
                && String::from_utf8_lossy(&cmdline).contains("ignite_boot.py\0template")
        })
        .collect()
}

#[test]
fn templates_stay_within_their_memory_budget_and_go_with_their_version() {
    let dir = scratch("python-templates");
    // 1 MiB holds no template: each start lets the idle others go.
    let server = start_server_with(&dir, &["--template-memory-mb", "1"]);
    let a = deploy_files(&server, &dir, "a-py", "python", &[("main.py", SEED)]);
    wait_until(Duration::from_secs(20), "a-py's template", || {
        templates_of(&server).len() == 1
    });
    deploy_files(&server, &dir, "b-py", "python", &[("main.py", SEED)]);
    // b-py's template started at its publish; a-py's, idle, was stopped for it.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        templates_of(&server).len(),
        1,
        "one template within the budget"
    );
    let (status, headers, body) = call_app(&server, "a-py", "{}");
    assert_eq!(status, 200, "{body}");
    let record = execution_of(&server, &a, &headers);
    let phases = &record["metrics"]["cold_start_phases"];
    assert_eq!(phases["start"], "fork", "{record}");
    assert!(
        phases["template_ms"].as_f64().unwrap() > 0.0,
        "a-py's template had to start again: {record}"
    );

    // A new version of a-py: the old version's template goes once its instance has drained.
    let before = templates_of(&server);
    ok(
        &server,
        &a,
        &[
            "draft",
            "save",
            "acme-corp:a-py",
            "--code",
            "./",
            "--runtime",
            "python",
        ],
    );
    ok(&server, &a, &["draft", "publish", "acme-corp:a-py"]);
    let (status, _, body) = call_app(&server, "a-py", r#"{"message": "v2"}"#);
    assert_eq!((status, json(&body)["message"].clone()), (200, "v2".into()));
    wait_until(
        Duration::from_secs(20),
        "the retired version's template to stop",
        || {
            let now = templates_of(&server);
            before.iter().all(|pid| !now.contains(pid))
        },
    );
}

#[test]
fn without_the_sandbox_each_instance_is_a_fresh_interpreter() {
    let dir = scratch("python-unconfined");
    let server = start_server_with(&dir, &["--no-sandbox"]);
    let p = deploy_files(&server, &dir, "bare-py", "python", &[("main.py", SEED)]);
    let v = json(&ok(
        &server,
        &p,
        &[
            "invoke",
            "acme-corp:bare-py",
            "-p",
            r#"{"message": "unconfined"}"#,
        ],
    ));
    assert_eq!(v["message"], "unconfined", "{v}");
    let (status, headers, body) = call_app(&server, "bare-py", "{}");
    assert_eq!(status, 200, "{body}");
    let record = execution_of(&server, &p, &headers);
    assert_eq!(record["status"], "succeeded", "{record}");
    let list = json(&ok(
        &server,
        &p,
        &[
            "execution",
            "list",
            "--app",
            "acme-corp:bare-py",
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
}

#[test]
fn internet_access_is_the_same_app_setting_for_python() {
    let dir = scratch("python-egress");
    let server = start_server(&dir);
    let p = deploy_files(
        &server,
        &dir,
        "net-py",
        "python",
        &[(
            "main.py",
            "import socket\nimport ignite\n\n@ignite.main\ndef handler(req, ctx):\n    try:\n        socket.create_connection(('127.0.0.1', int(req.field('port'))), timeout=1).close()\n        reached = True\n    except OSError:\n        reached = False\n    with open('/etc/resolv.conf') if req.field('resolv', default=False) else open('/dev/null') as f:\n        resolv = f.read()\n    return {'reached_node': reached, 'resolv': resolv}\n",
        )],
    );
    let port: u16 = server.api.rsplit(':').next().unwrap().parse().unwrap();
    let body = format!(r#"{{"port": {port}}}"#);
    let (status, _, answer) = call_app(&server, "net-py", &body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(json(&answer)["reached_node"], false, "{answer}");
    // On: a template of its own in an egress namespace, with a resolver; the node stays out
    // of reach.
    ok(
        &server,
        &p,
        &["app", "network", "acme-corp:net-py", "--egress", "on"],
    );
    let body = format!(r#"{{"port": {port}, "resolv": true}}"#);
    let (status, headers, answer) = call_app(&server, "net-py", &body);
    assert_eq!(status, 200, "{answer}");
    let v = json(&answer);
    assert_eq!(v["reached_node"], false, "{answer}");
    assert!(
        v["resolv"]
            .as_str()
            .is_some_and(|r| r.contains("nameserver")),
        "{answer}"
    );
    let record = execution_of(&server, &p, &headers);
    assert_eq!(
        record["metrics"]["cold_start_phases"]["start"], "fork",
        "{record}"
    );
}
