//! `dodil ignite run`: build a project and invoke it once, locally, without a server.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use ignite_agent::{Instance, Invocation, Outcome, SpawnConfig};
use ignite_builder::{BuildOptions, Sdk};

#[derive(Args)]
pub struct RunArgs {
    /// The project directory (Rust: Cargo.toml and src/; Python: main.py and an optional
    /// requirements.txt; Deno: main.ts or main.js and an optional deno.json).
    dir: PathBuf,
    /// rust, python or deno.
    #[arg(long, default_value = "rust", value_name = "rust|python|deno")]
    runtime: String,
    /// The interpreter a Python project runs with.
    #[arg(long, default_value = "/usr/bin/python3")]
    python: PathBuf,
    /// The Deno binary a Deno project runs with (default: where `.ci/run` installs it).
    #[arg(long)]
    deno: Option<PathBuf>,
    /// The JSON payload.
    #[arg(short = 'p', long = "payload", default_value = "")]
    payload: String,
    /// An environment variable for the handler, `KEY=VALUE` (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// native (a static binary) or wasm (a wasi:http component under Wasmtime).
    #[arg(
        long = "rust-target",
        default_value = "native",
        value_name = "native|wasm"
    )]
    rust_target: String,
}

async fn run_async(args: RunArgs) -> Result<()> {
    let env = args
        .env
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => bail!("--env {kv:?} is not KEY=VALUE"),
        })
        .collect::<Result<Vec<_>>>()?;
    match args.runtime.as_str() {
        "rust" => {}
        "python" => return run_python(&args, env).await,
        "deno" => return run_deno(&args, env).await,
        other => bail!("unsupported --runtime {other:?}: pass rust, python or deno"),
    }
    let target = ignite_builder::Target::from_flag(&args.rust_target).with_context(|| {
        format!(
            "invalid --rust-target {:?}: pass native or wasm",
            args.rust_target
        )
    })?;
    let cache = cache_dir().join("ignite");
    let work = cache.join("run").join(
        args.dir
            .canonicalize()
            .with_context(|| format!("{} does not exist", args.dir.display()))?
            .file_name()
            .unwrap_or_default(),
    );
    copy_source(&args.dir, &work)?;
    let project = ignite_builder::prepare(&work, target)?;
    // Builds share cargo's target directory when the user has one (CARGO_TARGET_DIR).
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache.join("target"));
    let options = BuildOptions::new(Sdk::bundled(), target_dir, Duration::from_secs(2400));
    eprintln!("compiling {} …", project.package);
    let artifact = ignite_builder::build(&project, &options, |line| eprintln!("  {line}")).await?;
    eprintln!(
        "built {} ({} KiB, {})",
        artifact.path.display(),
        artifact.size / 1024,
        artifact.digest
    );
    let invocation = Invocation {
        execution_id: ulid::Ulid::new().to_string(),
        function_id: format!("local/{}", project.package),
        env: env.clone(),
        deadline: Some(Instant::now() + Duration::from_secs(30)),
        request: ignite_agent::HttpRequest::json_post(args.payload.into_bytes()),
    };
    let reply = match target {
        ignite_builder::Target::Native => {
            let mut config = SpawnConfig::new(&artifact.path);
            config.env = env;
            run_instance(&config, invocation).await?
        }
        ignite_builder::Target::Wasm => run_wasm(&cache, &artifact, invocation).await?,
    };
    answer(reply)
}

/// Installs a Python project's requirements into a tree of its own (as the developer, with
/// the network: a local run is trusted code), checks its import, and runs it once.
async fn run_python(args: &RunArgs, env: Vec<(String, String)>) -> Result<()> {
    let source = args
        .dir
        .canonicalize()
        .with_context(|| format!("{} does not exist", args.dir.display()))?;
    let (source, single) = if source.is_file() {
        let dir = cache_dir().join("ignite/run-python-src");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(&source, dir.join("main.py"))?;
        (dir, true)
    } else {
        (source, false)
    };
    let out = cache_dir().join("ignite/run-python").join(if single {
        "main".into()
    } else {
        source.file_name().unwrap_or_default().to_owned()
    });
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    let sdk = ignite_server::python_sdk_dir();
    let options = BuildOptions::new(
        Sdk::bundled(),
        out.join(".target"),
        Duration::from_secs(2400),
    );
    eprintln!("building {} …", args.dir.display());
    let build = ignite_builder::python::PythonBuild {
        source: &source,
        out: &out,
        interpreter: &args.python,
        sdk_dir: &sdk,
    };
    ignite_builder::python::build(&build, &options, |line| eprintln!("  {line}")).await?;
    let mut config = SpawnConfig::new(&args.python);
    config.args = vec![
        args.python.to_string_lossy().into_owned(),
        "-I".into(),
        "-S".into(),
        sdk.join("ignite_boot.py").to_string_lossy().into_owned(),
        "serve".into(),
    ];
    config.env = env.clone();
    config
        .env
        .push(("IGNITE_APP_DIR".into(), out.to_string_lossy().into_owned()));
    config
        .env
        .push(("IGNITE_SDK_DIR".into(), sdk.to_string_lossy().into_owned()));
    let invocation = Invocation {
        execution_id: ulid::Ulid::new().to_string(),
        function_id: format!(
            "local/{}",
            source.file_name().unwrap_or_default().to_string_lossy()
        ),
        env,
        deadline: Some(Instant::now() + Duration::from_secs(30)),
        request: ignite_agent::HttpRequest::json_post(args.payload.clone().into_bytes()),
    };
    answer(run_instance(&config, invocation).await?)
}

/// Builds a Deno project into a tree of its own (unconfined, with the network: a local run is
/// trusted code) and runs it once with the instance's command line.
async fn run_deno(args: &RunArgs, env: Vec<(String, String)>) -> Result<()> {
    let deno = match &args.deno {
        Some(d) => d.clone(),
        None => ignite_builder::deno::default_binary().context(
            "no Deno binary: install it with `npm install --prefix /opt/ignite-deno deno`, or \
             pass --deno",
        )?,
    };
    let source = args
        .dir
        .canonicalize()
        .with_context(|| format!("{} does not exist", args.dir.display()))?;
    let (source, name) = if source.is_file() {
        let dir = cache_dir().join("ignite/run-deno-src");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(&source, dir.join("main.ts"))?;
        (dir, "main".into())
    } else {
        let name = source.file_name().unwrap_or_default().to_owned();
        (source, name)
    };
    let out = cache_dir().join("ignite/run-deno").join(&name);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    let sdk = ignite_server::deno_sdk_dir();
    let options = BuildOptions::new(
        Sdk::bundled(),
        out.join(".target"),
        Duration::from_secs(600),
    );
    eprintln!("building {} …", args.dir.display());
    let build = ignite_builder::deno::DenoBuild {
        source: &source,
        out: &out,
        deno: &deno,
        sdk_dir: &sdk,
    };
    ignite_builder::deno::build(&build, &options, |line| eprintln!("  {line}")).await?;
    let names: Vec<String> = env.iter().map(|(k, _)| k.clone()).collect();
    let mut config = SpawnConfig::new(&deno);
    config.args = ignite_builder::deno::run_args(
        &deno,
        &ignite_builder::deno::RunOptions {
            app: &out,
            allow_env: &names,
            allow_net: true,
            heap_mb: None,
            check: false,
        },
    );
    config.env = env.clone();
    config.env.extend(ignite_builder::deno::run_env(&out));
    let invocation = Invocation {
        execution_id: ulid::Ulid::new().to_string(),
        function_id: format!("local/{}", name.to_string_lossy()),
        env,
        deadline: Some(Instant::now() + Duration::from_secs(30)),
        request: ignite_agent::HttpRequest::json_post(args.payload.clone().into_bytes()),
    };
    answer(run_instance(&config, invocation).await?)
}

/// Prints the handler's answer (or fails with why there is none).
fn answer(reply: ignite_agent::Reply) -> Result<()> {
    for line in &reply.logs.lines {
        eprintln!("log: {line}");
    }
    match reply.outcome {
        Outcome::Response { body, .. } => {
            println!("{}", String::from_utf8_lossy(&body));
            Ok(())
        }
        Outcome::HandlerError { status, message } => {
            bail!("the handler failed ({status}): {message}")
        }
        Outcome::Panicked { message } => bail!("{message}"),
        Outcome::TimedOut { after } => bail!("the handler timed out after {after:?}"),
        Outcome::Crashed { exit } => bail!("the handler crashed: {exit}"),
        Outcome::OutOfMemory { exit } => bail!("the handler ran out of memory: {exit}"),
        Outcome::FramingError { message } => bail!("{message}"),
    }
}

/// Runs one instance for one request (unconfined, as the developer).
async fn run_instance(config: &SpawnConfig, invocation: Invocation) -> Result<ignite_agent::Reply> {
    let started = Instant::now();
    let instance = Instance::spawn(config).await?;
    let reply = instance.invoke(invocation).await;
    eprintln!(
        "cold start: init {:.3} ms, first response {:.3} ms",
        instance.init_duration().as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64() * 1e3
    );
    instance.shutdown(Duration::from_secs(1)).await;
    Ok(reply)
}

/// Validates and precompiles the component, then runs the request in a fresh instance with the
/// platform's defaults (128 MiB, the invocation's deadline).
async fn run_wasm(
    cache: &Path,
    artifact: &ignite_builder::Artifact,
    invocation: Invocation,
) -> Result<ignite_agent::Reply> {
    let mut config = ignite_wasm::WasmConfig::new(cache.join("wasm"));
    config.max_instances = 1;
    config.max_memory_mb = 128;
    let host = ignite_wasm::WasmHost::new(&config)?;
    let bytes = std::fs::read(&artifact.path)
        .with_context(|| format!("could not read {}", artifact.path.display()))?;
    host.precompile(&artifact.digest, &bytes)?;
    let limits = ignite_wasm::WasmLimits {
        memory_mb: 128,
        timeout: Duration::from_secs(30),
        egress: false,
    };
    let (reply, start) = host
        .invoke(&artifact.digest, &artifact.path, limits, invocation)
        .await;
    eprintln!(
        "cold start: load {:.3} ms, instantiate {:.3} ms",
        start.load.as_secs_f64() * 1e3,
        start.instantiate.as_secs_f64() * 1e3
    );
    Ok(reply)
}

fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
}

/// Copies a project's source (not its `target/` or `.git/`) into `to`, replacing what was there.
fn copy_source(from: &Path, to: &Path) -> Result<()> {
    fn walk(from: &Path, to: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            let name = entry.file_name();
            if name == "target" || name == ".git" {
                continue;
            }
            let kind = entry.file_type()?;
            if kind.is_dir() {
                walk(&entry.path(), &to.join(&name))?;
            } else if kind.is_file() {
                std::fs::copy(entry.path(), to.join(&name))?;
            }
        }
        Ok(())
    }
    let _ = std::fs::remove_dir_all(to.join("src"));
    walk(from, to).with_context(|| format!("could not copy {} to {}", from.display(), to.display()))
}

pub fn run(args: RunArgs) -> Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?
        .block_on(run_async(args))
}
