//! `--runtime go` against the real server, the node's real `go` toolchain (Debian's golang-go)
//! and the real sandbox: the seed recipe ported to Go word for word, a compile error, a
//! vendored module, the SDK's behaviour, limits, and what a handler can see. A Go handler is a
//! static binary started exactly like a native Rust one (the same zygotes, the same records).

mod support;

use std::path::Path;

use support::platform::*;

const SEED: &str = r#"package main

import "ignite.dev/sdk/ignite"

func handler(req *ignite.Request, ctx *ignite.Context) (any, error) {
	message, err := ignite.Field[string](req, "message")
	if err != nil {
		message = "Hello from Go!"
	}
	return map[string]any{"message": message, "execution_id": ctx.ExecutionID(), "function_id": ctx.FunctionID()}, nil
}

func main() { ignite.Main(handler) }
"#;

const GO_MOD: &str = "module example.com/tiny\n\ngo 1.19\n";

fn save(server: &Server, p: &Path, app: &str) {
    ok(server, p, &["app", "create", app, "--runtime", "go"]);
    ok(
        server,
        p,
        &[
            "draft",
            "save",
            &format!("acme-corp:{app}"),
            "--code",
            "./",
            "--runtime",
            "go",
        ],
    );
}

#[test]
fn the_go_recipe_word_for_word_a_compile_error_and_a_vendored_module() {
    let dir = scratch("go-recipe");
    let server = start_server(&dir);
    let p = files_project(&dir, "tiny-go", &[("go.mod", GO_MOD), ("main.go", SEED)]);
    save(&server, &p, "tiny-go");
    for (flag, value) in [("--rust-target", "native"), ("--toolchain", "stable")] {
        let refused = fails(
            &server,
            &p,
            &[
                "draft",
                "save",
                "acme-corp:tiny-go",
                "--code",
                "./",
                "--runtime",
                "go",
                flag,
                value,
            ],
        );
        assert!(refused.contains(flag), "{refused}");
    }
    ok(&server, &p, &["draft", "publish", "acme-corp:tiny-go"]);
    let logs = ok(&server, &p, &["draft", "compile-logs", "acme-corp:tiny-go"]);
    assert!(logs.contains("go"), "{logs}");
    let v = json(&ok(
        &server,
        &p,
        &[
            "invoke",
            "acme-corp:tiny-go",
            "-p",
            r#"{"message": "hi there"}"#,
        ],
    ));
    assert_eq!(v["message"], "hi there", "{v}");
    assert!(
        v["execution_id"].as_str().is_some_and(|s| s.len() == 26),
        "{v}"
    );
    assert_eq!(v["function_id"], "acme-corp/tiny-go", "{v}");
    let v = json(&ok(
        &server,
        &p,
        &["invoke", "acme-corp:tiny-go", "-p", "{}"],
    ));
    assert_eq!(v["message"], "Hello from Go!", "{v}");
    let (status, headers, body) = call_app(&server, "tiny-go", r#"{"message": "public"}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["message"], "public");
    assert_eq!(execution_of(&server, &p, &headers)["status"], "succeeded");
    let app = json(&ok(
        &server,
        &p,
        &["app", "get", "acme-corp:tiny-go", "-o", "json"],
    ));
    assert!(app["artifact"]["size"].as_u64().unwrap_or(0) > 0, "{app}");
    assert!(
        app["artifact"]["target"]
            .as_str()
            .is_some_and(|t| t.contains("go")),
        "{app}"
    );

    // A compile error refuses the publish, with the compiler's message.
    let broken = files_project(
        &dir,
        "broken-go",
        &[
            ("go.mod", GO_MOD),
            (
                "main.go",
                "package main\n\nimport \"ignite.dev/sdk/ignite\"\n\nfunc main() { ignite.Main(undefinedHandler) }\n",
            ),
        ],
    );
    save(&server, &broken, "broken-go");
    let refused = fails(
        &server,
        &broken,
        &["draft", "publish", "acme-corp:broken-go"],
    );
    assert!(refused.contains("undefined"), "{refused}");
    let logs = dodil(
        &server,
        &broken,
        &["draft", "compile-logs", "acme-corp:broken-go"],
    );
    assert!(
        String::from_utf8_lossy(&logs.stdout).contains("undefinedHandler"),
        "{}",
        String::from_utf8_lossy(&logs.stdout)
    );

    // A third-party module, vendored (no module proxy is reachable from here).
    let greeter = files_project(
        &dir,
        "greet-go",
        &[
            (
                "go.mod",
                "module example.com/greeter\n\ngo 1.19\n\nrequire example.com/greet v0.1.0\n",
            ),
            (
                "main.go",
                "package main\n\nimport (\n\t\"example.com/greet\"\n\t\"ignite.dev/sdk/ignite\"\n)\n\nfunc handler(req *ignite.Request, ctx *ignite.Context) (any, error) {\n\treturn map[string]any{\"greeting\": greet.Hello(ignite.FieldOr(req, \"name\", \"world\"))}, nil\n}\n\nfunc main() { ignite.Main(handler) }\n",
            ),
            (
                "vendor/example.com/greet/greet.go",
                "package greet\n\nfunc Hello(name string) string { return \"Hello, \" + name + \"!\" }\n",
            ),
            (
                "vendor/modules.txt",
                "# example.com/greet v0.1.0\n## explicit; go 1.18\nexample.com/greet\n",
            ),
        ],
    );
    save(&server, &greeter, "greet-go");
    ok(
        &server,
        &greeter,
        &["draft", "publish", "acme-corp:greet-go"],
    );
    let v = json(&ok(
        &server,
        &greeter,
        &["invoke", "acme-corp:greet-go", "-p", r#"{"name": "Go"}"#],
    ));
    assert_eq!(v["greeting"], "Hello, Go!", "{v}");
}

const BEHAVIOUR: &str = r#"package main

import (
	"fmt"
	"os"
	"time"

	"ignite.dev/sdk/ignite"
)

var hold [][]byte

func handler(req *ignite.Request, ctx *ignite.Context) (any, error) {
	switch ignite.FieldOr(req, "what", "echo") {
	case "print":
		fmt.Println("a line from fmt.Println")
		fmt.Fprintln(os.Stderr, "to stderr")
		return map[string]any{"printed": true}, nil
	case "env":
		return map[string]any{"greeting": ctx.Env()["GREETING"], "os": os.Getenv("GREETING")}, nil
	case "error":
		return nil, ignite.Error(418, "I am a teapot")
	case "panic":
		panic("boom")
	case "sleep":
		time.Sleep(30 * time.Second)
		return nil, nil
	case "spin":
		for {
		}
	case "hog":
		for i := 0; i < 64; i++ {
			b := make([]byte, 16<<20)
			for j := range b {
				b[j] = 1
			}
			hold = append(hold, b)
		}
		return map[string]any{"held": len(hold)}, nil
	case "overlap":
		start := float64(time.Now().UnixNano()) / 1e9
		time.Sleep(500 * time.Millisecond)
		return map[string]any{"start": start, "end": float64(time.Now().UnixNano()) / 1e9, "pid": os.Getpid()}, nil
	case "read":
		found := map[string]any{}
		for _, path := range []string{"/etc/shadow", "/etc/passwd", ignite.FieldOr(req, "data", "")} {
			b, err := os.ReadFile(path)
			if err != nil {
				found[path] = nil
			} else {
				found[path] = string(b)
			}
		}
		return found, nil
	}
	return map[string]any{"echo": string(req.Raw())}, nil
}

func main() { ignite.Main(handler) }
"#;

#[test]
fn the_go_sdk_behaves_as_the_rust_one_does_errors_limits_and_concurrency() {
    let dir = scratch("go-behaviour");
    let server = start_server(&dir);
    let p = files_project(
        &dir,
        "beh-go",
        &[("go.mod", GO_MOD), ("main.go", BEHAVIOUR)],
    );
    save(&server, &p, "beh-go");
    ok(
        &server,
        &p,
        &["app", "set-env", "acme-corp:beh-go", "GREETING=hello"],
    );
    ok(
        &server,
        &p,
        &[
            "app",
            "scale",
            "acme-corp:beh-go",
            "--timeout",
            "2",
            "--memory",
            "128",
        ],
    );
    ok(&server, &p, &["draft", "publish", "acme-corp:beh-go"]);

    let (status, headers, body) = call_app(&server, "beh-go", r#"{"what": "print"}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["printed"], true, "{body}");
    let logs = execution_of(&server, &p, &headers)["logs"].to_string();
    assert!(logs.contains("a line from fmt.Println"), "{logs}");
    assert!(logs.contains("to stderr"), "{logs}");

    let (_, _, body) = call_app(&server, "beh-go", r#"{"what": "env"}"#);
    assert_eq!(json(&body)["greeting"], "hello", "{body}");
    assert_eq!(json(&body)["os"], "hello", "{body}");

    let (status, _, body) = call_app(&server, "beh-go", r#"{"what": "error"}"#);
    assert_eq!(status, 418, "{body}");
    assert!(body.contains("I am a teapot"), "{body}");

    let (status, headers, body) = call_app(&server, "beh-go", r#"{"what": "panic"}"#);
    assert_eq!(status, 500, "{body}");
    let record = execution_of(&server, &p, &headers);
    assert!(record.to_string().contains("boom"), "{record}");
    let (status, _, body) = call_app(&server, "beh-go", r#"{"what": "echo"}"#);
    assert_eq!(status, 200, "the instance survived the panic: {body}");

    for what in ["sleep", "spin"] {
        let (status, headers, body) =
            call_app(&server, "beh-go", &format!(r#"{{"what": "{what}"}}"#));
        assert_eq!(status, 504, "{what}: {body}");
        assert_eq!(
            execution_of(&server, &p, &headers)["status"],
            "timeout",
            "{what}"
        );
    }

    let (status, headers, body) = call_app(&server, "beh-go", r#"{"what": "hog"}"#);
    assert!(status >= 500, "1 GiB under a 128 MiB cap: {body}");
    assert_eq!(
        execution_of(&server, &p, &headers)["status"],
        "oom",
        "{body}"
    );

    let data = dir.join("data").join("ignite.db");
    let body = serde_json::json!({"what": "read", "data": data}).to_string();
    let (status, _, answer) = call_app(&server, "beh-go", &body);
    assert_eq!(status, 200, "{answer}");
    let v = json(&answer);
    for path in ["/etc/shadow", "/etc/passwd", data.to_str().unwrap()] {
        assert!(v[path].is_null(), "{path} was readable: {v}");
    }

    ok(
        &server,
        &p,
        &[
            "app",
            "scale",
            "acme-corp:beh-go",
            "--concurrency",
            "4",
            "--max-instances",
            "1",
        ],
    );
    let answers: Vec<serde_json::Value> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..4)
            .map(|_| s.spawn(|| call_app(&server, "beh-go", r#"{"what": "overlap"}"#)))
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
        "all four overlapped: {answers:?}"
    );
}
