//! The Go SDK (`sdks/go`) against the real agent: handlers built by the builder's Go build
//! (unconfined: trusted test code) with Debian's `go`, run by `Instance::spawn` as the server
//! runs a native handler, unsandboxed and in the instance sandbox (root only; elsewhere those
//! tests say so and pass).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ignite_agent::{HttpRequest, Instance, Invocation, Outcome, Reply, SpawnConfig};
use ignite_builder::go::GoBuild;
use ignite_builder::{BuildOptions, Sdk};

const GO: &str = "/usr/bin/go";

/// The issue's handler, word for word.
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

/// One handler, a behaviour per path.
const BEHAVIOUR: &str = r#"package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"ignite.dev/sdk/ignite"
)

type echo struct {
	Method string      `json:"method"`
	Path   string      `json:"path"`
	Query  string      `json:"query"`
	Thing  string      `json:"thing"`
	Raw    string      `json:"raw"`
	Count  int         `json:"count"`
	Pairs  [][2]string `json:"headers"`
}

func handler(req *ignite.Request, ctx *ignite.Context) (any, error) {
	switch req.Path() {
	case "/print":
		fmt.Println("printed to stdout")
		fmt.Println("IG\x10\x00\x00\x00 looks like a frame header")
		os.Stdout.WriteString("written to os.Stdout\n")
		fmt.Fprintln(os.Stderr, "printed to stderr")
		ctx.Log("through ctx.Log")
		return map[string]any{"ok": true}, nil
	case "/env":
		return map[string]string{"ctx": ctx.Env()["GREETING"], "os": os.Getenv("GREETING")}, nil
	case "/teapot":
		return nil, ignite.Error(418, "I'm a teapot")
	case "/wrapped":
		return nil, fmt.Errorf("loading user 7: %w", ignite.Error(404, "no such user"))
	case "/plain-error":
		return nil, errors.New("something broke")
	case "/panic":
		var m map[string]int
		m["boom"] = 1
		return nil, nil
	case "/sleep":
		start := time.Now()
		time.Sleep(300 * time.Millisecond)
		return map[string]int64{"start_ns": start.UnixNano(), "end_ns": time.Now().UnixNano()}, nil
	case "/forever":
		time.Sleep(time.Hour)
		return nil, nil
	case "/field":
		n, err := ignite.Field[int](req, "n")
		if err != nil {
			return nil, err
		}
		return map[string]int{"n": n}, nil
	case "/body":
		type in struct {
			Name string `json:"name"`
		}
		v, err := ignite.Body[in](req)
		if err != nil {
			return nil, err
		}
		return ignite.Text("hello " + v.Name), nil
	case "/respond":
		return ignite.Respond(201, map[string]string{"Location": "/things/1"}, []byte("made")), nil
	case "/bytes":
		return []byte{0, 1, 2, 255}, nil
	case "/empty":
		return nil, nil
	case "/request":
		return echo{req.Method(), req.Path(), req.Query(), req.Header("X-Thing"), string(req.Raw()), len(req.Headers()), req.Headers()}, nil
	case "/deadline":
		d, ok := ctx.Deadline()
		return map[string]any{"has": ok, "left_ms": time.Until(d).Milliseconds()}, nil
	case "/exit":
		os.Exit(3)
	}
	return nil, ignite.Error(404, "no route "+req.Path())
}

func main() { ignite.Main(handler) }
"#;

/// The fake third-party module, vendored.
const GREETER: &str = r#"package main

import (
	"example.com/greet"
	"ignite.dev/sdk/ignite"
)

func handler(req *ignite.Request, ctx *ignite.Context) (any, error) {
	return greet.Hello(ignite.FieldOr(req, "name", "world")), nil
}

func main() { ignite.Main(handler) }
"#;

struct Binaries {
    seed: PathBuf,
    seed_size: u64,
    behaviour: PathBuf,
    greeter: PathBuf,
}

/// Builds the handlers once for the whole test binary (on a thread of its own: the tests
/// already run in a runtime).
fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        std::thread::spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let (seed, seed_size) = build("seed", &[("main.go", SEED)]).await;
                let (behaviour, _) = build("behaviour", &[("main.go", BEHAVIOUR)]).await;
                let (greeter, _) = build(
                    "greeter",
                    &[
                        ("go.mod", "module example.com/greeter\n\ngo 1.19\n\nrequire example.com/greet v0.1.0\n"),
                        ("main.go", GREETER),
                        (
                            "vendor/example.com/greet/greet.go",
                            "package greet\n\nfunc Hello(name string) string { return \"Hello, \" + name + \"!\" }\n",
                        ),
                        (
                            "vendor/modules.txt",
                            "# example.com/greet v0.1.0\n## explicit; go 1.18\nexample.com/greet\n",
                        ),
                    ],
                )
                .await;
                Binaries {
                    seed,
                    seed_size,
                    behaviour,
                    greeter,
                }
            })
        })
        .join()
        .unwrap()
    })
}

async fn build(name: &str, files: &[(&str, &str)]) -> (PathBuf, u64) {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-sdk");
    let source = base.join(format!("{name}-source"));
    let out = base.join(name);
    let _ = std::fs::remove_dir_all(&source);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(
        source.join("go.mod"),
        format!("module example.com/{name}\n\ngo 1.19\n"),
    )
    .unwrap();
    for (path, text) in files {
        let path = source.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdks/go");
    let options = BuildOptions::new(Sdk::bundled(), base.join("cache"), Duration::from_secs(600));
    let build = GoBuild {
        source: &source,
        out: &out,
        go: Path::new(GO),
        sdk_dir: &sdk,
    };
    let mut log = Vec::new();
    match ignite_builder::go::build(&build, &options, |l| log.push(l.to_string())).await {
        Ok(a) => (a.path, a.size),
        Err(e) => panic!("building {name} failed: {e}\n{}", log.join("\n")),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn sandbox() -> ignite_sandbox::Sandbox {
    static SANDBOX: OnceLock<ignite_sandbox::Sandbox> = OnceLock::new();
    SANDBOX
        .get_or_init(|| {
            let mut config = ignite_sandbox::SandboxConfig::new(
                Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-sdk-sandbox"),
            );
            config.first_uid = 1_741_000_000;
            config.spare_netns = 2;
            config.spare_zygotes = 2;
            config.spare_slots = 0;
            config.tmp_mb = 4;
            ignite_sandbox::Sandbox::new(config).expect("the sandbox (root, namespaces)")
        })
        .clone()
}

async fn spawn(binary: &Path, sandboxed: bool) -> Instance {
    spawn_with(binary, sandboxed, &[]).await
}

async fn spawn_with(binary: &Path, sandboxed: bool, env: &[(String, String)]) -> Instance {
    let mut config = SpawnConfig::new(binary);
    config.env = env.to_vec();
    if sandboxed {
        config.sandbox = Some((
            sandbox(),
            ignite_sandbox::Limits {
                memory_mb: 128,
                egress: false,
            },
        ));
    }
    Instance::spawn(&config)
        .await
        .unwrap_or_else(|e| panic!("spawning {}: {e}", binary.display()))
}

fn invocation(path: &str, body: &str) -> Invocation {
    Invocation {
        execution_id: "01JGOSDK00000000000000000A".into(),
        function_id: "acme-corp/tiny".into(),
        env: vec![("GREETING".into(), "hi from the app".into())],
        deadline: Some(Instant::now() + Duration::from_secs(10)),
        request: HttpRequest {
            path: path.into(),
            ..HttpRequest::json_post(body.as_bytes().to_vec())
        },
    }
}

fn response(reply: &Reply) -> (u16, &[(String, String)], &[u8]) {
    match &reply.outcome {
        Outcome::Response {
            status,
            headers,
            body,
        } => (*status, headers, body),
        other => panic!("not a response: {other:?} (logs {:?})", reply.logs),
    }
}

fn json(reply: &Reply) -> serde_json::Value {
    let (status, headers, body) = response(reply);
    assert_eq!(status, 200, "{reply:?}");
    assert_eq!(
        headers,
        [("content-type".to_string(), "application/json".to_string())]
    );
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("{e}: {reply:?}"))
}

async fn the_recipe(sandboxed: bool) {
    let instance = spawn(&binaries().seed, sandboxed).await;
    println!(
        "the seed handler ({} bytes) ready in {:?} (sandboxed: {sandboxed})",
        binaries().seed_size,
        instance.init_duration()
    );
    let reply = instance
        .invoke(invocation("/", r#"{"message": "hi there"}"#))
        .await;
    assert_eq!(
        json(&reply),
        serde_json::json!({
            "message": "hi there",
            "execution_id": "01JGOSDK00000000000000000A",
            "function_id": "acme-corp/tiny"
        })
    );
    let reply = instance.invoke(invocation("/", "{}")).await;
    assert_eq!(json(&reply)["message"], "Hello from Go!");
    let started = Instant::now();
    instance.shutdown(Duration::from_secs(5)).await;
    assert!(instance.has_exited());
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn the_recipe_answers_hi_there_and_the_default() {
    the_recipe(false).await;
}

#[tokio::test]
async fn the_recipe_answers_in_the_sandbox() {
    if !is_root() {
        println!("skipping: the sandbox needs root");
        return;
    }
    the_recipe(true).await;
}

#[tokio::test]
async fn stdout_printing_is_a_log_line_not_a_corrupt_response() {
    let instance = spawn(&binaries().behaviour, false).await;
    let reply = instance.invoke(invocation("/print", "{}")).await;
    assert_eq!(json(&reply), serde_json::json!({"ok": true}));
    for line in [
        "printed to stdout",
        "IG\x10\0\0\0 looks like a frame header",
        "written to os.Stdout",
        "printed to stderr",
        "through ctx.Log",
    ] {
        assert!(
            reply.logs.lines.iter().any(|l| l == line),
            "{line:?} not in {:?}",
            reply.logs.lines
        );
    }
    // The instance is fine: the next request too.
    let reply = instance.invoke(invocation("/print", "{}")).await;
    assert_eq!(json(&reply), serde_json::json!({"ok": true}));
    instance.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn the_apps_environment_is_in_ctx_env_and_os_getenv() {
    let instance = spawn(&binaries().behaviour, false).await;
    let reply = instance.invoke(invocation("/env", "")).await;
    assert_eq!(
        json(&reply),
        serde_json::json!({"ctx": "hi from the app", "os": "hi from the app"})
    );
    instance.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn errors_answer_with_their_status_and_message() {
    let instance = spawn(&binaries().behaviour, false).await;
    for (path, body, status, message) in [
        ("/teapot", "{}", 418, "I'm a teapot"),
        ("/wrapped", "{}", 404, "loading user 7: no such user"),
        ("/plain-error", "{}", 500, "something broke"),
        ("/field", "{}", 400, "missing field `n` in the request body"),
        ("/field", "", 400, "missing field `n` in the request body"),
        (
            "/field",
            r#"{"n": "three"}"#,
            400,
            "invalid field `n` in the request body: cannot unmarshal string into Go value of type int",
        ),
        (
            "/field",
            "[1]",
            400,
            "missing field `n`: the request body is JSON an array , not an object",
        ),
        (
            "/body",
            "",
            400,
            "the request body is empty; send a JSON body (e.g. invoke -p '{...}')",
        ),
    ] {
        let reply = instance.invoke(invocation(path, body)).await;
        assert_eq!(
            reply.outcome,
            Outcome::HandlerError {
                status,
                message: message.into()
            },
            "{path} {body}"
        );
    }
    assert_eq!(
        json(&instance.invoke(invocation("/field", r#"{"n": 3}"#)).await),
        serde_json::json!({"n": 3})
    );
    instance.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_panic_is_a_500_and_the_instance_serves_on() {
    let instance = spawn(&binaries().behaviour, false).await;
    let pid = instance.pid();
    let reply = instance.invoke(invocation("/panic", "{}")).await;
    assert_eq!(
        reply.outcome,
        Outcome::Panicked {
            message: "the handler panicked: assignment to entry in nil map".into()
        }
    );
    // The goroutine's stack went to stderr.
    let logs = reply.logs.lines.join("\n");
    assert!(
        logs.contains("panic: assignment to entry in nil map"),
        "{logs}"
    );
    assert!(logs.contains("main.handler("), "{logs}");
    let reply = instance
        .invoke(invocation("/", r#"{"message": "x"}"#))
        .await;
    assert_eq!(
        reply.outcome,
        Outcome::HandlerError {
            status: 404,
            message: "no route /".into()
        }
    );
    let reply = instance.invoke(invocation("/field", r#"{"n": 1}"#)).await;
    assert_eq!(json(&reply), serde_json::json!({"n": 1}));
    assert_eq!(instance.pid(), pid);
    assert!(instance.is_alive());
    instance.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn requests_overlap_with_concurrency() {
    let instance = spawn(&binaries().behaviour, false).await;
    let started = Instant::now();
    let replies = futures_join4(&instance).await;
    let elapsed = started.elapsed();
    let spans: Vec<(i64, i64)> = replies
        .iter()
        .map(|r| {
            let v = json(r);
            (
                v["start_ns"].as_i64().unwrap(),
                v["end_ns"].as_i64().unwrap(),
            )
        })
        .collect();
    let last_start = spans.iter().map(|s| s.0).max().unwrap();
    let first_end = spans.iter().map(|s| s.1).min().unwrap();
    // Every handler started before any finished: all four ran at once.
    assert!(last_start < first_end, "{spans:?}");
    assert!(elapsed < Duration::from_millis(1100), "{elapsed:?}");
    println!("four 300 ms requests at once took {elapsed:?}");
    instance.shutdown(Duration::from_secs(5)).await;
}

async fn futures_join4(instance: &Instance) -> [Reply; 4] {
    let (a, b, c, d) = tokio::join!(
        instance.invoke(invocation("/sleep", "{}")),
        instance.invoke(invocation("/sleep", "{}")),
        instance.invoke(invocation("/sleep", "{}")),
        instance.invoke(invocation("/sleep", "{}")),
    );
    [a, b, c, d]
}

#[tokio::test]
async fn responses_of_every_kind() {
    let instance = spawn(&binaries().behaviour, false).await;
    let reply = instance
        .invoke(invocation("/body", r#"{"name": "ada"}"#))
        .await;
    let (status, headers, body) = response(&reply);
    assert_eq!((status, body), (200, &b"hello ada"[..]));
    assert_eq!(
        headers,
        [(
            "content-type".to_string(),
            "text/plain; charset=utf-8".to_string()
        )]
    );
    let reply = instance.invoke(invocation("/respond", "")).await;
    let (status, headers, body) = response(&reply);
    assert_eq!((status, body), (201, &b"made"[..]));
    assert_eq!(headers, [("location".to_string(), "/things/1".to_string())]);
    let reply = instance.invoke(invocation("/bytes", "")).await;
    let (status, headers, body) = response(&reply);
    assert_eq!((status, body), (200, &[0u8, 1, 2, 255][..]));
    assert_eq!(headers[0].1, "application/octet-stream");
    let reply = instance.invoke(invocation("/empty", "")).await;
    assert_eq!(response(&reply), (204, &[][..], &[][..]));

    let mut inv = invocation("/request", "raw body");
    inv.request.method = "PUT".into();
    inv.request.query = "a=1&b=2".into();
    inv.request.headers.push(("x-thing".into(), "yes".into()));
    let v = json(&instance.invoke(inv).await);
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["path"], "/request");
    assert_eq!(v["query"], "a=1&b=2");
    assert_eq!(v["thing"], "yes");
    assert_eq!(v["raw"], "raw body");
    assert_eq!(v["count"], 2);

    let v = json(&instance.invoke(invocation("/deadline", "")).await);
    assert_eq!(v["has"], true);
    let left = v["left_ms"].as_i64().unwrap();
    assert!((8_000..=10_000).contains(&left), "{left}");
    instance.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_exit_is_a_crash_and_a_deadline_a_timeout() {
    let instance = spawn(&binaries().behaviour, false).await;
    let reply = instance.invoke(invocation("/exit", "")).await;
    assert_eq!(
        reply.outcome,
        Outcome::Crashed {
            exit: "exit code 3".into()
        }
    );
    let instance = spawn(&binaries().behaviour, false).await;
    let mut inv = invocation("/forever", "");
    inv.deadline = Some(Instant::now() + Duration::from_millis(200));
    let reply = instance.invoke(inv).await;
    assert!(
        matches!(reply.outcome, Outcome::TimedOut { .. }),
        "{reply:?}"
    );
    instance.shutdown(Duration::from_secs(5)).await;
    assert!(instance.has_exited());
}

#[tokio::test]
async fn in_the_sandbox_sigterm_ends_the_handler_with_status_0() {
    if !is_root() {
        println!("skipping: the sandbox needs root");
        return;
    }
    // As pid 1 of its namespace the handler gets no default action for a signal: Go's own
    // fallback would end it with status 2. The SDK exits 0 on SIGTERM (the agent sends one to
    // an instance whose request timed out).
    let limits = ignite_sandbox::Limits {
        memory_mb: 128,
        egress: false,
    };
    let sandbox = sandbox();
    let mut spawned = ignite_sandbox::spawn_async(
        &ignite_sandbox::Command {
            program: &binaries().behaviour,
            argv: &[],
            binds: &[],
            reserves_address_space: false,
            env: &[],
        },
        Some((&sandbox, &limits)),
    )
    .await
    .unwrap();
    // Hello first: by then the SDK has its signal handling in place.
    let mut stdout = std::fs::File::from(spawned.stdout);
    let mut hello = [0u8; 14];
    std::io::Read::read_exact(&mut stdout, &mut hello).unwrap();
    assert_eq!(&hello[..2], b"IG");
    spawned.process.signal(libc::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), spawned.process.wait())
        .await
        .expect("the handler outlived its SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
    drop(spawned.stdin);

    // Through the agent: a timed-out request's instance is gone at once.
    let instance = spawn(&binaries().behaviour, true).await;
    let mut inv = invocation("/forever", "");
    inv.deadline = Some(Instant::now() + Duration::from_millis(200));
    let reply = instance.invoke(inv).await;
    assert!(
        matches!(reply.outcome, Outcome::TimedOut { .. }),
        "{reply:?}"
    );
    let started = Instant::now();
    instance.shutdown(Duration::from_secs(10)).await;
    assert!(instance.has_exited());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_vendored_module_runs() {
    let instance = spawn(&binaries().greeter, false).await;
    let reply = instance
        .invoke(invocation("/", r#"{"name": "gopher"}"#))
        .await;
    let (status, _, body) = response(&reply);
    assert_eq!((status, body), (200, &b"Hello, gopher!"[..]));
    instance.shutdown(Duration::from_secs(5)).await;
}

#[test]
fn started_by_hand_on_a_terminal_it_explains_and_exits_64() {
    use std::os::fd::FromRawFd;
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes the two descriptors; the null pointers ask for no name, termios
    // or window size.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are fresh and owned here alone.
    let (master, slave) = unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(master),
            std::fs::File::from_raw_fd(slave),
        )
    };
    let out = std::process::Command::new(&binaries().seed)
        .stdin(slave)
        .output()
        .unwrap();
    drop(master);
    assert_eq!(out.status.code(), Some(64));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("this is an Ignite handler"), "{stderr}");
}

/// `cargo test --release -p ignite-agent --test go_sdk -- --ignored --nocapture`: cold start
/// and warm round trip of the seed handler and, when IGNITE_RUST_HANDLER names one, of a Rust
/// handler binary, interleaved (so both see the same machine), unsandboxed and, as root,
/// sandboxed; the handlers' environment from IGNITE_MEASURE_ENV (`K=V,K=V`).
#[tokio::test]
#[ignore]
async fn measure_cold_and_warm() {
    let env: Vec<(String, String)> = std::env::var("IGNITE_MEASURE_ENV")
        .unwrap_or_default()
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut handlers = vec![("go", binaries().seed.clone())];
    if let Some(rust) = std::env::var_os("IGNITE_RUST_HANDLER") {
        handlers.push(("rust", PathBuf::from(rust)));
    }
    let p = |v: &mut Vec<Duration>, q: f64| {
        v.sort();
        v[((v.len() - 1) as f64 * q) as usize]
    };
    for sandboxed in [false, true] {
        if sandboxed && !is_root() {
            continue;
        }
        let mut cold = vec![Vec::new(); handlers.len()];
        let mut init = vec![Vec::new(); handlers.len()];
        for _ in 0..300 {
            for (i, (_, binary)) in handlers.iter().enumerate() {
                let started = Instant::now();
                let instance = spawn_with(binary, sandboxed, &env).await;
                let reply = instance
                    .invoke(invocation("/", r#"{"message": "hi there"}"#))
                    .await;
                cold[i].push(started.elapsed());
                init[i].push(instance.init_duration());
                assert_eq!(response(&reply).0, 200);
                instance.shutdown(Duration::from_secs(1)).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let mut instances = Vec::new();
        for (_, binary) in &handlers {
            let instance = spawn_with(binary, sandboxed, &env).await;
            for _ in 0..1000 {
                instance.invoke(invocation("/", "{}")).await;
            }
            instances.push(instance);
        }
        let mut warm = vec![Vec::new(); handlers.len()];
        for _ in 0..20 {
            for (i, instance) in instances.iter().enumerate() {
                for _ in 0..500 {
                    let started = Instant::now();
                    let reply = instance
                        .invoke(invocation("/", r#"{"message": "hi there"}"#))
                        .await;
                    warm[i].push(started.elapsed());
                    assert_eq!(response(&reply).0, 200);
                }
            }
        }
        for instance in &instances {
            instance.shutdown(Duration::from_secs(1)).await;
        }
        for (i, (name, binary)) in handlers.iter().enumerate() {
            println!(
                "{name:>4} sandboxed={sandboxed:<5} cold p50 {:>9.3?} p99 {:>9.3?} (ready p50 {:>9.3?}) | warm p50 {:>7.1?} p99 {:>7.1?} | {} bytes",
                p(&mut cold[i], 0.5),
                p(&mut cold[i], 0.99),
                p(&mut init[i], 0.5),
                p(&mut warm[i], 0.5),
                p(&mut warm[i], 0.99),
                std::fs::metadata(binary).map_or(0, |m| m.len())
            );
        }
    }
}
