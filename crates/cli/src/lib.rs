//! The `dodil ignite …` command line: a clap derive tree with one function per command. Human
//! output by default, `-o json` for machines; errors on stderr with what to do, and a non-zero
//! exit (1: the platform refused or failed, 2: usage, 3: the server could not be reached).
//!
//! It must never print a token except the one `token create` just made.

mod client;
mod config;
mod local;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};

use client::Client;
use ignite_api as api;

#[derive(Parser)]
#[command(name = "dodil", version, about = "The dodil command line")]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand)]
enum Top {
    /// Ignite: serverless Rust handlers compiled to tiny static binaries.
    Ignite(IgniteArgs),
}

#[derive(Args)]
struct IgniteArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// API token (overrides DODIL_TOKEN and the config file).
    #[arg(long, global = true)]
    token: Option<String>,
    /// API endpoint, host:port (overrides DODIL_API_ENDPOINT and the config file).
    #[arg(long = "api-endpoint", global = true)]
    api_endpoint: Option<String>,
    #[command(subcommand)]
    command: Ignite,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

/// The hidden subcommand that runs one compile in the build jail.
pub const JAIL: &str = "__jail";
/// The hidden subcommand that runs the dependency fetch with the registry as its only network:
/// `dodil ignite __fetch --proxy <socket> -- <program> <args>…`.
pub const FETCH: &str = "__fetch";

#[derive(Subcommand)]
enum Ignite {
    /// Start the platform (API, builder, node agent, gateway) on embedded defaults.
    Server(Box<ServerArgs>),
    /// CLI settings.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Apps.
    #[command(subcommand)]
    App(AppCmd),
    /// The mutable draft (version 0) of an app.
    #[command(subcommand)]
    Draft(DraftCmd),
    /// Call an app's active version.
    Invoke {
        id: String,
        /// The JSON payload.
        #[arg(short = 'p', long = "payload", default_value = "")]
        payload: String,
    },
    /// Executions.
    #[command(subcommand)]
    Execution(ExecutionCmd),
    /// Published versions.
    #[command(subcommand)]
    Version(VersionCmd),
    /// API tokens of your org.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Credentials your org's image drafts pull with (private registries).
    #[command(subcommand)]
    Registry(RegistryCmd),
    /// Compile a handler project and invoke it locally, once (no server needed).
    Run(local::RunArgs),
}

#[derive(Args)]
struct ServerArgs {
    /// Where state and artifacts live.
    #[arg(long, env = "IGNITE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The store: postgres://user:password@host/db (several servers may share it) or
    /// sqlite://<path>; SQLite in the data directory when not given.
    #[arg(long, env = "IGNITE_DATABASE_URL")]
    database_url: Option<String>,
    /// This server's name among those sharing one store (by default a ULID kept in the data
    /// directory, made at first start).
    #[arg(long, env = "IGNITE_REPLICA_ID")]
    replica_id: Option<String>,
    /// The org created on first start.
    #[arg(long, default_value = "acme-corp")]
    org: String,
    #[arg(long, default_value = "127.0.0.1:8080")]
    api_listen: String,
    #[arg(long, default_value = "127.0.0.1:8081")]
    gateway_listen: String,
    /// Public URLs are http://<app>-<org>.ignite.<domain>.
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// The port shown in public URLs (default: the gateway's).
    #[arg(long)]
    public_port: Option<u16>,
    /// The compile budget, in seconds.
    #[arg(long, default_value_t = 2400)]
    build_timeout: u64,
    /// A cargo target directory shared by the apps of each org, as `<dir>/<org>` (default: one
    /// per app). Never shared across orgs: a build sees only its own org's part.
    #[arg(long)]
    build_target_dir: Option<PathBuf>,
    /// Run handlers and compiles unconfined, with the server's own privileges, instead of in
    /// the sandbox and the build jail (which need root). Only for trusted code on a
    /// development machine.
    #[arg(long)]
    no_sandbox: bool,
    /// Sandboxed instances kept prepared ahead of need; a burst of cold starts beyond it
    /// prepares the rest on the spot (~1 ms each).
    #[arg(long, default_value_t = 32)]
    sandbox_spare: usize,
    /// Threads that serve requests (the gateway, the API, the instances' channels). Default:
    /// one per CPU. Fewer leave the instances CPUs of their own and hand work across CPUs less
    /// often, but a wasm guest occupies a serving thread while it runs: do not go below the
    /// wasm requests you expect at once.
    #[arg(long)]
    serve_threads: Option<usize>,
    /// A compile's memory limit, in MiB.
    #[arg(long, default_value_t = 4096)]
    build_memory_mb: u64,
    /// The interpreter Python apps build and run with (its standard library and shared
    /// libraries are what the sandbox shows them).
    #[arg(long, default_value = "/usr/bin/python3")]
    python: PathBuf,
    /// The Go toolchain Go apps build with.
    #[arg(long, default_value = "/usr/bin/go")]
    go: PathBuf,
    /// The Deno binary Deno apps build and run with (default: the npm registry's deno package
    /// as `.ci/run` installs it, `npm install --prefix /opt/ignite-deno deno`, else
    /// /usr/local/bin/deno or /usr/bin/deno).
    #[arg(long)]
    deno: Option<PathBuf>,
    /// Memory the node's Python templates (interpreters with an app imported, which cold
    /// starts fork) may hold together, in MiB (default: an eighth of the machine's memory, at
    /// most 4096). Past it, the least recently used idle template is stopped.
    #[arg(long)]
    template_memory_mb: Option<u64>,
    /// A registry image drafts may come from (pulls, logins, a Dockerfile's FROM), as
    /// host[:port]; repeat for several. Default: docker.io, ghcr.io, quay.io, gcr.io,
    /// registry.gitlab.com and public.ecr.aws.
    #[arg(long = "image-registry")]
    image_registries: Vec<String>,
    /// A registry on the operator's network that speaks plain HTTP (allowed too), host:port.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// A git server `--git-url` drafts may clone from, host[:port]; repeat for several.
    /// Default: github.com, gitlab.com, bitbucket.org and codeberg.org.
    #[arg(long = "git-host")]
    git_hosts: Vec<String>,
    /// The disk the node's unpacked image roots may take together, in MiB; past it the least
    /// recently used root no instance runs on is removed.
    #[arg(long, default_value_t = 10240)]
    image_cache_mb: u64,
    /// How much a compile may write (its target directory's growth, and any one file), in MiB.
    #[arg(long, default_value_t = 10240)]
    build_disk_mb: u64,
    /// Instances running on this node at once, all apps together (default: what the machine's
    /// descriptors, processes and memory allow). Past it, a cold start stops the least
    /// recently used idle instance; with none, the requesting app gets 503.
    #[arg(long)]
    node_instances: Option<u32>,
    /// The most `max_instances` one app may set (default: a quarter of --node-instances).
    #[arg(long)]
    app_instances: Option<u32>,
    /// Instances kept warm (`reserved_capacity`) over all apps together (default: half of
    /// --node-instances).
    #[arg(long)]
    reserved_instances: Option<u32>,
    /// The most `memory_mb` one instance may have (default: a quarter of the machine's
    /// memory, at most 10240).
    #[arg(long)]
    instance_memory_mb: Option<u32>,
    /// Connections one client address may hold on each listener (default: a quarter of what
    /// the descriptors allow, at most 256); past it, 503.
    #[arg(long)]
    connections_per_client: Option<u32>,
    /// Seconds a request's headers may take to arrive before the connection is closed.
    #[arg(long, value_name = "SECONDS")]
    header_read_timeout: Option<u64>,
    /// Seconds a client connection may sit without traffic before it is closed (a request in
    /// flight is answered first).
    #[arg(long, value_name = "SECONDS")]
    idle_connection_timeout: Option<u64>,
    /// What this process is in a fleet: `all` (everything in one process, the default),
    /// `control` (API, builds and gateway; instances run on nodes) or `node` (instances only,
    /// registered with the control plane).
    #[arg(long, env = "IGNITE_ROLE", default_value = "all")]
    role: String,
    /// The fleet's node secret (at least 16 characters): nodes register with it and the
    /// control plane calls nodes with it. Not an org token.
    #[arg(long, env = "IGNITE_NODE_TOKEN", hide_env_values = true)]
    node_token: Option<String>,
    /// A node: the control plane's API URL, where it registers (repeat, or separate with
    /// commas, for several).
    #[arg(
        long = "control-url",
        env = "IGNITE_CONTROL_URL",
        value_delimiter = ','
    )]
    control_urls: Vec<String>,
    /// A node: where the gateway's requests arrive (HTTP/2).
    #[arg(long, default_value = "0.0.0.0:7070")]
    node_listen: String,
    /// A node: the host:port the control plane dials (default: the listen address).
    #[arg(long, env = "IGNITE_ADVERTISE")]
    advertise: Option<String>,
    /// A node: its name in the fleet (default: the host's name).
    #[arg(long, env = "IGNITE_NODE_ID")]
    node_id: Option<String>,
    /// The platform registry every replica and node shares sources, artifacts and images
    /// through: http://host:port/<prefix> for a plain-HTTP registry on the operator's network,
    /// https://host[:port]/<prefix> otherwise. Credentials: IGNITE_REGISTRY_USERNAME and
    /// IGNITE_REGISTRY_PASSWORD. Default: this machine's data directory alone.
    #[arg(long, env = "IGNITE_REGISTRY", value_name = "URL")]
    registry: Option<String>,
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Set `token` or `api_endpoint`.
    Set { key: String, value: String },
}

#[derive(Subcommand)]
enum AppCmd {
    Create {
        name: String,
        #[arg(long)]
        runtime: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    Get {
        id: String,
    },
    List,
    Delete {
        id: String,
    },
    /// Change how the app scales; only the flags given change. Takes effect at once.
    ///
    /// --reserved-capacity keeps instances warm (Lambda's provisioned concurrency), it is not a
    /// cap: the cap is --max-instances.
    Scale {
        id: String,
        /// Instances kept running at all times (exempt from idle teardown).
        #[arg(long)]
        reserved_capacity: Option<u32>,
        /// The most instances that run at once; past it requests queue.
        #[arg(long)]
        max_instances: Option<u32>,
        /// Requests one instance serves at once (default 1; raise it for an async handler that
        /// mostly waits on I/O).
        #[arg(long)]
        concurrency: Option<u32>,
        /// Seconds an idle instance lives before it is stopped (scale to zero).
        #[arg(long = "idle-timeout")]
        idle_timeout_s: Option<u32>,
        /// The per-request deadline, in seconds.
        #[arg(long = "timeout")]
        timeout_s: Option<u32>,
        /// Memory per instance, in MiB.
        #[arg(long = "memory")]
        memory_mb: Option<u32>,
        /// Requests that may wait when every instance is busy; past it, 429.
        #[arg(long)]
        queue_depth: Option<u32>,
    },
    /// Choose what the app's instances may reach on the network (takes effect at once).
    Network {
        id: String,
        /// Outbound connections to the public internet (off by default). Private, link-local
        /// and shared addresses, the node itself and other instances stay out of reach.
        #[arg(long, value_parser = on_off, action = clap::ArgAction::Set, required = true, value_name = "on|off")]
        egress: bool,
    },
    /// Set the app's environment variables (they travel with the next published version).
    SetEnv {
        id: String,
        /// KEY=VALUE, repeatable.
        #[arg(required = true)]
        vars: Vec<String>,
    },
}

#[derive(Subcommand)]
enum DraftCmd {
    /// Upload source into the draft slot (overwrites it).
    Save(SaveArgs),
    /// Compile a Rust draft into a static binary.
    Compile { id: String },
    /// The compile's log, following it while it runs.
    CompileLogs {
        id: String,
        /// Print what is there and return instead of following.
        #[arg(long)]
        no_follow: bool,
    },
    /// Cut a new immutable version from the compiled draft and make it active.
    Publish { id: String },
}

#[derive(Args)]
struct SaveArgs {
    id: String,
    /// A file (source) or a directory / .tar.gz archive (archive context: Cargo.toml + src/).
    #[arg(long, conflicts_with_all = ["dockerfile_path", "git_url", "image_ref"])]
    code: Option<PathBuf>,
    #[arg(long)]
    runtime: Option<String>,
    /// native or wasm; required for Rust.
    #[arg(long)]
    rust_target: Option<String>,
    /// A rustup toolchain to compile with.
    #[arg(long)]
    toolchain: Option<String>,
    #[arg(long)]
    dockerfile_path: Option<PathBuf>,
    #[arg(long)]
    git_url: Option<String>,
    #[arg(long)]
    image_ref: Option<String>,
}

#[derive(Subcommand)]
enum ExecutionCmd {
    Get {
        id: String,
    },
    List {
        /// Only this app's executions (`org:name`).
        #[arg(long)]
        app: Option<String>,
        /// Only executions with this status (succeeded, failed, timeout, crashed, running).
        #[arg(long)]
        status: Option<String>,
        /// Only executions started within this long, e.g. 30s, 15m, 2h, 1d.
        #[arg(long, value_parser = parse_age)]
        since: Option<Duration>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

#[derive(Subcommand)]
enum VersionCmd {
    List {
        id: String,
    },
    /// Make an older version active again.
    Rollback {
        id: String,
        version: i64,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    Create { name: String },
    List,
    Revoke { id: String },
}

#[derive(Subcommand)]
enum RegistryCmd {
    /// Keep credentials for a registry (checked against it first; the password is read from
    /// stdin and never shown again).
    Login {
        /// The registry, as in an image reference: ghcr.io, registry.example.com:5000.
        host: String,
        #[arg(long, short = 'u')]
        username: String,
        /// Read the password (or token) from stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// The registries your org has credentials for.
    List,
    /// Forget the credentials for a registry.
    Logout { host: String },
}

/// The process entry of `dodil`.
pub fn main() {
    // `dodil ignite __jail …`: the builder's jail (see ignite_sandbox::jail), run by the server
    // for each compile. Handled before anything else: it must stay single-threaded.
    let raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if raw.len() > 2 && raw[1] == "ignite" && raw[2] == JAIL {
        let error = match ignite_sandbox::jail::JailSpec::from_args(&raw[3..]) {
            Ok(spec) => ignite_sandbox::jail::exec(&spec),
            Err(e) => e,
        };
        eprintln!("ignite build jail: {error}");
        std::process::exit(126);
    }
    if raw.len() > 6
        && raw[1] == "ignite"
        && raw[2] == FETCH
        && raw[3] == "--proxy"
        && raw[5] == "--"
    {
        let error =
            ignite_sandbox::jail::fetch_exec(std::path::Path::new(&raw[4]), &raw[6], &raw[7..]);
        eprintln!("ignite dependency fetch: {error}");
        std::process::exit(126);
    }
    let cli = Cli::parse();
    let Top::Ignite(args) = cli.command;
    if let Err(e) = run(args) {
        let code = if e.downcast_ref::<client::Unreachable>().is_some() {
            3
        } else {
            1
        };
        eprintln!("error: {e:#}");
        std::process::exit(code);
    }
}

fn run(args: IgniteArgs) -> Result<()> {
    let out = args.output;
    let connect = || {
        let cfg = config::Config::load()?;
        Client::new(
            args.api_endpoint
                .clone()
                .or_else(|| std::env::var("DODIL_API_ENDPOINT").ok())
                .or(cfg.api_endpoint),
            args.token
                .clone()
                .or_else(|| std::env::var("DODIL_TOKEN").ok())
                .or(cfg.token),
        )
    };
    match args.command {
        Ignite::Server(s) => server(*s),
        Ignite::Run(r) => local::run(r),
        Ignite::Config(ConfigCmd::Set { key, value }) => {
            let mut cfg = config::Config::load()?;
            match key.as_str() {
                "token" => cfg.token = Some(value),
                "api_endpoint" => cfg.api_endpoint = Some(value),
                other => bail!("unknown setting {other:?}; settable: token, api_endpoint"),
            }
            let path = cfg.save()?;
            print(out, &json!({ "key": key, "saved_to": path }), || {
                format!("{key} saved to {}", path.display())
            });
            Ok(())
        }
        Ignite::App(cmd) => app(connect()?, out, cmd),
        Ignite::Draft(cmd) => draft(connect()?, out, cmd),
        Ignite::Invoke { id, payload } => {
            let (org, name) = split_id(&id)?;
            if !payload.is_empty() {
                serde_json::from_str::<Value>(&payload)
                    .with_context(|| format!("-p is not valid JSON: {payload}"))?;
            }
            let reply = connect()?.invoke(
                &format!("/v1/apps/{org}/{name}/invoke"),
                payload.into_bytes(),
            )?;
            if !reply.ok {
                bail!(
                    "{} (execution {})",
                    client::error_message(&reply.body),
                    reply.execution_id
                );
            }
            let text = String::from_utf8_lossy(&reply.body).to_string();
            match (out, serde_json::from_str::<Value>(&text)) {
                (_, Ok(v)) => println!("{}", serde_json::to_string_pretty(&v)?),
                (_, Err(_)) => println!("{text}"),
            }
            eprintln!("execution: {}", reply.execution_id);
            Ok(())
        }
        Ignite::Execution(ExecutionCmd::Get { id }) => {
            let e: api::Execution = connect()?.get_as(&format!("/v1/executions/{id}"))?;
            print(out, &e, || {
                let m = &e.metrics;
                let mut s = format!(
                    "execution {}\n  app        {} (version {})\n  status     {}\n  cold start {} ms\n  duration   {} ms\n  billed     {} ms",
                    e.id,
                    e.app_id,
                    e.version,
                    e.status,
                    fmt_ms(m.cold_start_ms),
                    fmt_ms(m.duration_ms),
                    m.billed_duration_ms.map_or("-".into(), |b| b.to_string()),
                );
                if let Some(err) = &e.error {
                    s.push_str(&format!("\n  error      {err}"));
                }
                for line in &e.logs {
                    s.push_str(&format!("\n  | {line}"));
                }
                s
            });
            Ok(())
        }
        Ignite::Execution(ExecutionCmd::List {
            app,
            status,
            since,
            limit,
        }) => {
            let mut path = format!("/v1/executions?limit={limit}");
            if let Some(app) = app {
                path.push_str(&format!("&app={}", urlencode(&app)));
            }
            if let Some(status) = status {
                path.push_str(&format!("&status={}", urlencode(&status)));
            }
            if let Some(since) = since {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                path.push_str(&format!("&since={}", now.saturating_sub(since).as_millis()));
            }
            let list: api::ExecutionList = connect()?.get_as(&path)?;
            print(out, &list, || {
                let mut s = format!(
                    "{:<28} {:<24} {:<4} {:<10} {:>10}",
                    "ID", "APP", "VER", "STATUS", "DURATION"
                );
                for e in &list.executions {
                    s.push_str(&format!(
                        "\n{:<28} {:<24} {:<4} {:<10} {:>7} ms",
                        e.id,
                        e.app_id,
                        e.version,
                        e.status,
                        fmt_ms(e.metrics.duration_ms)
                    ));
                }
                s
            });
            Ok(())
        }
        Ignite::Version(VersionCmd::List { id }) => {
            let (org, name) = split_id(&id)?;
            let v = connect()?.get(&format!("/v1/apps/{org}/{name}/versions"))?;
            print(out, &v, || {
                let active = v["active_version"].as_i64();
                let mut s = format!(
                    "{:<8} {:<10} {:<12} {}",
                    "VERSION", "ACTIVE", "STATUS", "ARTIFACT"
                );
                for ver in v["versions"].as_array().into_iter().flatten() {
                    let n = ver["version"].as_i64().unwrap_or(-1);
                    s.push_str(&format!(
                        "\n{:<8} {:<10} {:<12} {}",
                        if n == 0 {
                            "0 (draft)".to_string()
                        } else {
                            n.to_string()
                        },
                        if Some(n) == active { "*" } else { "" },
                        ver["compile_status"].as_str().unwrap_or(""),
                        ver["artifact_digest"].as_str().unwrap_or("-")
                    ));
                }
                s
            });
            Ok(())
        }
        Ignite::Version(VersionCmd::Rollback { id, version }) => {
            let (org, name) = split_id(&id)?;
            let v = connect()?.post_json(
                &format!("/v1/apps/{org}/{name}/rollback"),
                &json!({ "version": version }),
            )?;
            print(out, &v, || {
                format!("{org}:{name} now serves version {version}")
            });
            Ok(())
        }
        Ignite::Token(cmd) => token(connect()?, out, cmd),
        Ignite::Registry(cmd) => registry(connect()?, out, cmd),
    }
}

/// `30s`, `15m`, `2h`, `1d` (a bare number is seconds).
fn parse_age(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 15m, 2h or 1d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("{s:?} is not a duration like 30s, 15m, 2h or 1d")),
    };
    Ok(Duration::from_secs(secs))
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |f| format!("{f:.3}"))
}

fn print(out: Output, v: &impl serde::Serialize, human: impl FnOnce() -> String) {
    match out {
        Output::Json => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
        Output::Table => println!("{}", human()),
    }
}

/// `org:name` → `(org, name)`.
/// `on`/`off` (also `true`/`false`) for a switch flag.
fn on_off(s: &str) -> std::result::Result<bool, String> {
    match s {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        other => Err(format!("{other:?} is neither on nor off")),
    }
}

fn split_id(id: &str) -> Result<(String, String)> {
    match id.split_once(':') {
        Some((org, name)) if !org.is_empty() && !name.is_empty() => Ok((org.into(), name.into())),
        _ => bail!("invalid app id {id:?}: use the org:name form, e.g. acme-corp:tiny"),
    }
}

fn app(client: Client, out: Output, cmd: AppCmd) -> Result<()> {
    match cmd {
        AppCmd::Create {
            name,
            runtime,
            description,
        } => {
            let v = client.post_json(
                "/v1/apps",
                &json!({ "name": name, "runtime": runtime, "description": description }),
            )?;
            print(out, &v, || {
                format!("The app id is now {}.", v["id"].as_str().unwrap_or(""))
            });
        }
        AppCmd::Get { id } => {
            let (org, name) = split_id(&id)?;
            let app: api::App = client.get_as(&format!("/v1/apps/{org}/{name}"))?;
            print(out, &app, || {
                format!(
                    "app {}\n  runtime        {}\n  description    {}\n  active version {}\n  artifact       {}\n  public urls    {}\n  draft          {}\n  internet       {}",
                    app.id,
                    app.runtime,
                    app.description,
                    app.active_version
                        .map_or("none (publish the draft)".into(), |n| n.to_string()),
                    app.artifact.as_ref().map_or("-".into(), |a| format!(
                        "{} ({}, {} KiB)",
                        a.target.as_deref().unwrap_or("?"),
                        a.digest.as_deref().unwrap_or("?"),
                        a.size.unwrap_or(0) / 1024
                    )),
                    app.public_urls.join(", "),
                    app.draft
                        .as_ref()
                        .map_or("empty", |d| d.compile_status.as_str()),
                    if app.network.egress {
                        "egress on"
                    } else {
                        "off (dodil ignite app network <id> --egress on)"
                    },
                )
            });
        }
        AppCmd::List => {
            let v = client.get("/v1/apps")?;
            print(out, &v, || {
                let mut s = format!(
                    "{:<32} {:<8} {:<8} {}",
                    "ID", "RUNTIME", "ACTIVE", "DESCRIPTION"
                );
                for a in v["apps"].as_array().into_iter().flatten() {
                    s.push_str(&format!(
                        "\n{:<32} {:<8} {:<8} {}",
                        a["id"].as_str().unwrap_or(""),
                        a["runtime"].as_str().unwrap_or(""),
                        a["active_version"]
                            .as_i64()
                            .map_or("-".into(), |n| n.to_string()),
                        a["description"].as_str().unwrap_or("")
                    ));
                }
                s
            });
        }
        AppCmd::Delete { id } => {
            let (org, name) = split_id(&id)?;
            client.delete(&format!("/v1/apps/{org}/{name}"))?;
            print(out, &json!({ "deleted": id }), || format!("deleted {id}"));
        }
        AppCmd::Scale {
            id,
            reserved_capacity,
            max_instances,
            concurrency,
            idle_timeout_s,
            timeout_s,
            memory_mb,
            queue_depth,
        } => {
            let (org, name) = split_id(&id)?;
            let update = api::ScalingUpdate {
                reserved_capacity,
                max_instances,
                concurrency,
                idle_timeout_s,
                timeout_s,
                memory_mb,
                queue_depth,
            };
            let body = serde_json::to_value(&update)?;
            let v = client.put_json(&format!("/v1/apps/{org}/{name}/scaling"), &body)?;
            let s: api::ScalingConfig = serde_json::from_value(v)?;
            print(out, &s, || {
                format!(
                    "{id} scaling: reserved {} · max {} · concurrency {} · idle timeout {}s · timeout {}s · memory {} MiB · queue {}",
                    s.reserved_capacity,
                    s.max_instances,
                    s.concurrency,
                    s.idle_timeout_s,
                    s.timeout_s,
                    s.memory_mb,
                    s.queue_depth
                )
            });
        }
        AppCmd::Network { id, egress } => {
            let (org, name) = split_id(&id)?;
            let body = serde_json::to_value(api::NetworkConfig { egress })?;
            let v = client.put_json(&format!("/v1/apps/{org}/{name}/network"), &body)?;
            let n: api::NetworkConfig = serde_json::from_value(v)?;
            print(out, &n, || {
                if n.egress {
                    format!(
                        "{id} internet: egress on (public addresses only; new instances from now)"
                    )
                } else {
                    format!("{id} internet: off (instances have no network)")
                }
            });
        }
        AppCmd::SetEnv { id, vars } => {
            let (org, name) = split_id(&id)?;
            let mut env = serde_json::Map::new();
            for kv in &vars {
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("{kv:?} is not KEY=VALUE"))?;
                env.insert(k.into(), Value::String(v.into()));
            }
            let v = client.put_json(
                &format!("/v1/apps/{org}/{name}/env"),
                &json!({ "env": env }),
            )?;
            print(out, &v, || {
                format!("environment of {id} set; it takes effect at the next draft publish")
            });
        }
    }
    Ok(())
}

fn draft(client: Client, out: Output, cmd: DraftCmd) -> Result<()> {
    match cmd {
        DraftCmd::Save(a) => {
            let (org, name) = split_id(&a.id)?;
            let mut query = Vec::new();
            let bytes = if let Some(image_ref) = &a.image_ref {
                query.push(("image_ref", image_ref.clone()));
                Vec::new()
            } else if let Some(git_url) = &a.git_url {
                query.push(("git_url", git_url.clone()));
                Vec::new()
            } else if let Some(dockerfile) = &a.dockerfile_path {
                if !dockerfile.is_file() {
                    bail!(
                        "--dockerfile-path {}: no such file; point it at the Dockerfile (its \
                         directory is the build context)",
                        dockerfile.display()
                    );
                }
                let context = match dockerfile.parent() {
                    Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                let name = dockerfile
                    .file_name()
                    .context("--dockerfile-path names no file")?
                    .to_string_lossy()
                    .into_owned();
                query.push(("kind", "archive".to_string()));
                query.push(("dockerfile", name));
                pack_dir(&context)?
            } else {
                let code = a.code.context("--code is required: point it at the directory with Cargo.toml and src/ (or one source file); or give an image with --image-ref, --dockerfile-path or --git-url")?;
                let (kind, bytes) = package(&code)?;
                query.push(("kind", kind.to_string()));
                bytes
            };
            if let Some(r) = a.runtime {
                query.push(("runtime", r));
            }
            if let Some(t) = a.rust_target {
                query.push(("rust_target", t));
            }
            if let Some(t) = a.toolchain {
                query.push(("toolchain", t));
            }
            let qs: Vec<String> = query
                .iter()
                .map(|(k, v)| format!("{k}={}", urlencode(v)))
                .collect();
            let v = client.put_bytes(
                &format!("/v1/apps/{org}/{name}/draft?{}", qs.join("&")),
                bytes,
            )?;
            print(out, &v, || {
                if v["draft"]["runtime"].as_str().is_some_and(|r| r != "rust") {
                    format!(
                        "saved the draft of {org}:{name} (version 0); next: dodil ignite draft publish {org}:{name} (it builds as part of the publish)"
                    )
                } else {
                    format!(
                        "saved the draft of {org}:{name} (version 0); next: dodil ignite draft compile {org}:{name}"
                    )
                }
            });
        }
        DraftCmd::Compile { id } => {
            let (org, name) = split_id(&id)?;
            let v =
                client.post_json(&format!("/v1/apps/{org}/{name}/draft/compile"), &json!({}))?;
            print(out, &v, || {
                format!(
                    "compiling {org}:{name} (build {}); follow it with: dodil ignite draft compile-logs {org}:{name}",
                    v["build_id"].as_str().unwrap_or("")
                )
            });
        }
        DraftCmd::CompileLogs { id, no_follow } => {
            let (org, name) = split_id(&id)?;
            let follow = !no_follow;
            let mut last = api::LogEvent::default();
            client.stream_lines(
                &format!("/v1/apps/{org}/{name}/draft/compile-logs?follow={follow}"),
                |line| {
                    let event: api::LogEvent =
                        serde_json::from_str(line).unwrap_or_else(|_| api::LogEvent {
                            line: Some(line.to_string()),
                            ..Default::default()
                        });
                    match (out, &event.line) {
                        (Output::Json, _) => println!("{line}"),
                        (Output::Table, Some(l)) => println!("{l}"),
                        (Output::Table, None) => {}
                    }
                    if event.status.is_some() {
                        last = event;
                    }
                },
            )?;
            match last.status.as_deref() {
                Some("succeeded") => {
                    if out == Output::Table {
                        println!(
                            "compile succeeded; next: dodil ignite draft publish {org}:{name}"
                        );
                    }
                }
                Some("running") => {}
                Some(status) => match &last.error {
                    // The server's message already says what happened and what to do.
                    Some(error) => bail!("{error}"),
                    None if status == "timed_out" => {
                        bail!("the compile timed out; see the log above")
                    }
                    None => bail!("the compile failed; see the log above"),
                },
                None => {
                    bail!("the log stream ended before the compile did; run compile-logs again")
                }
            }
        }
        DraftCmd::Publish { id } => {
            let (org, name) = split_id(&id)?;
            let v =
                client.post_json(&format!("/v1/apps/{org}/{name}/draft/publish"), &json!({}))?;
            print(out, &v, || {
                format!(
                    "published {org}:{name} version {}; it answers at {}",
                    v["version"],
                    v["public_urls"][0].as_str().unwrap_or("")
                )
            });
        }
    }
    Ok(())
}

fn token(client: Client, out: Output, cmd: TokenCmd) -> Result<()> {
    match cmd {
        TokenCmd::Create { name } => {
            let v = client.post_json("/v1/tokens", &json!({ "name": name }))?;
            print(out, &v, || {
                format!(
                    "{}\n(shown once: store it now)",
                    v["token"].as_str().unwrap_or("")
                )
            });
        }
        TokenCmd::List => {
            let v = client.get("/v1/tokens")?;
            print(out, &v, || {
                let mut s = format!("{:<14} {:<20} {}", "ID", "NAME", "STATE");
                for t in v["tokens"].as_array().into_iter().flatten() {
                    s.push_str(&format!(
                        "\n{:<14} {:<20} {}",
                        t["id"].as_str().unwrap_or(""),
                        t["name"].as_str().unwrap_or(""),
                        if t["revoked_at"].is_null() {
                            "active"
                        } else {
                            "revoked"
                        }
                    ));
                }
                s
            });
        }
        TokenCmd::Revoke { id } => {
            client.delete(&format!("/v1/tokens/{id}"))?;
            print(out, &json!({ "revoked": id }), || {
                format!("revoked token {id}")
            });
        }
    }
    Ok(())
}

fn registry(client: Client, out: Output, cmd: RegistryCmd) -> Result<()> {
    match cmd {
        RegistryCmd::Login {
            host,
            username,
            password_stdin,
        } => {
            if !password_stdin {
                bail!(
                    "pass the password on stdin, so that it stays out of your shell's history: \
                     `echo \"$TOKEN\" | dodil ignite registry login {host} --username {username} \
                     --password-stdin`"
                );
            }
            let mut password = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut password)
                .context("reading the password from stdin")?;
            let password = password.trim_end_matches(['\n', '\r']).to_string();
            let v = client.put_json(
                &format!("/v1/registries/{}", urlencode(&host)),
                &json!({ "username": username, "password": password }),
            )?;
            print(out, &v, || {
                format!("logged in to {host} as {username}; image drafts of your org pull with it")
            });
        }
        RegistryCmd::List => {
            let v = client.get("/v1/registries")?;
            print(out, &v, || {
                let mut s = format!("{:<40} {}", "REGISTRY", "USERNAME");
                for r in v["registries"].as_array().into_iter().flatten() {
                    s.push_str(&format!(
                        "\n{:<40} {}",
                        r["host"].as_str().unwrap_or(""),
                        r["username"].as_str().unwrap_or("")
                    ));
                }
                s
            });
        }
        RegistryCmd::Logout { host } => {
            client.delete(&format!("/v1/registries/{}", urlencode(&host)))?;
            print(out, &json!({ "logged_out": host }), || {
                format!("forgot the credentials for {host}")
            });
        }
    }
    Ok(())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `--code`: a directory is packed as .tar.gz (without target/ and .git/); a .tar.gz or .zip is
/// sent as is; any other file is one source file.
fn package(code: &Path) -> Result<(&'static str, Vec<u8>)> {
    let meta = std::fs::metadata(code)
        .with_context(|| format!("--code {}: no such file or directory", code.display()))?;
    if meta.is_file() {
        let bytes = std::fs::read(code)?;
        let name = code.to_string_lossy();
        let archive = [".tar.gz", ".tgz", ".zip"]
            .iter()
            .any(|ext| name.ends_with(ext));
        return Ok(if archive {
            ("archive", bytes)
        } else {
            ("file", bytes)
        });
    }
    if !["Cargo.toml", "main.py", "go.mod", "main.ts", "main.js"]
        .iter()
        .any(|f| code.join(f).is_file())
    {
        bail!(
            "{} has no Cargo.toml, main.py, go.mod or main.ts; point --code at the directory that \
             holds Cargo.toml and src/ (Rust), main.py and an optional requirements.txt \
             (Python), go.mod and the .go files (Go), or main.ts (or main.js) and an optional \
             deno.json (Deno)",
            code.display()
        );
    }
    Ok(("archive", pack_dir(code)?))
}

/// A directory as a .tar.gz, without build output, VCS data and local environments.
fn pack_dir(code: &Path) -> Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    fn add(
        tar: &mut tar::Builder<flate2::write::GzEncoder<Vec<u8>>>,
        root: &Path,
        dir: &Path,
    ) -> Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let rel = path.strip_prefix(root)?;
            let name = entry.file_name();
            // Build output and local environments are not source.
            if [
                "target",
                ".git",
                "__pycache__",
                ".venv",
                "venv",
                "node_modules",
            ]
            .iter()
            .any(|skip| name == *skip)
            {
                continue;
            }
            let kind = entry.file_type()?;
            if kind.is_dir() {
                add(tar, root, &path)?;
            } else if kind.is_file() {
                tar.append_path_with_name(&path, rel)?;
            }
        }
        Ok(())
    }
    add(&mut tar, code, code)?;
    Ok(tar.into_inner()?.finish()?)
}

/// One serving thread per CPU this process may use. Fewer answered faster on a 2-vCPU VM
/// (README, "Performance → The platform"), but a wasm guest runs on a serving thread until it
/// yields or meets its deadline: with one thread, one tenant's spinning guest would hold every
/// other tenant's requests. Until guests run off the serving threads, fewer is the operator's
/// choice (`--serve-threads`).
fn default_serve_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn server(a: ServerArgs) -> Result<()> {
    // Warnings and errors by default (a lost node, a failed heartbeat, a record that could not
    // be written); `IGNITE_LOG=info` or a filter like `ignite_server=debug` says more.
    let filter = tracing_subscriber::EnvFilter::try_from_env("IGNITE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let data_dir = a.data_dir.unwrap_or_else(config::default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let config =
        ignite_server::Config {
            data_dir: data_dir.clone(),
            database_url: a.database_url.clone(),
            replica_id: a.replica_id.clone(),
            org: a.org.clone(),
            api_addr: a
                .api_listen
                .parse()
                .with_context(|| format!("--api-listen {:?} is not host:port", a.api_listen))?,
            gateway_addr: a.gateway_listen.parse().with_context(|| {
                format!("--gateway-listen {:?} is not host:port", a.gateway_listen)
            })?,
            domain: a.domain,
            public_port: a.public_port,
            build_timeout: Duration::from_secs(a.build_timeout),
            shared_target_dir: a.build_target_dir,
            sandbox: !a.no_sandbox,
            sandbox_spare: a.sandbox_spare,
            build_memory_mb: a.build_memory_mb,
            build_disk_mb: a.build_disk_mb,
            python: a.python,
            go: a.go,
            deno: a.deno,
            template_memory_mb: a.template_memory_mb,
            images: {
                let mut images = ignite_server::images::ImageSettings::default();
                if !a.image_registries.is_empty() {
                    images.registries = a.image_registries;
                }
                images.insecure = a.insecure_registries;
                if !a.git_hosts.is_empty() {
                    images.git_hosts = a.git_hosts;
                }
                images.cache_mb = a.image_cache_mb;
                images
            },
            // Credentials only from the environment: a flag's value shows in process listings.
            registry: a
                .registry
                .map(|url| ignite_server::blobs::RegistrySettings {
                    url,
                    username: std::env::var("IGNITE_REGISTRY_USERNAME").ok(),
                    password: std::env::var("IGNITE_REGISTRY_PASSWORD").ok(),
                }),
            limits: ignite_server::limits::LimitSettings {
                node_instances: a.node_instances,
                app_instances: a.app_instances,
                reserved_instances: a.reserved_instances,
                instance_memory_mb: a.instance_memory_mb,
                connections_per_client: a.connections_per_client,
                header_timeout_s: a.header_read_timeout,
                idle_connection_s: a.idle_connection_timeout,
            },
            fleet: ignite_server::fleet::FleetSettings {
                role: a.role.parse().map_err(|e: String| anyhow::anyhow!(e))?,
                node_token: a.node_token,
                control_urls: a.control_urls,
                node_listen: Some(a.node_listen.parse().with_context(|| {
                    format!("--node-listen {:?} is not host:port", a.node_listen)
                })?),
                advertise: a.advertise,
                node_id: a.node_id,
            },
        };
    let serve_threads = match a.serve_threads {
        Some(0) => bail!("--serve-threads 0 serves nothing; give it 1 or more"),
        Some(n) => n,
        None => default_serve_threads(),
    };
    // The serving threads are the runtime's first (its workers start as it is built); the
    // rest are its blocking pool. Named apart, an operator's `top -H` tells them apart.
    let started = std::sync::atomic::AtomicUsize::new(0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(serve_threads)
        .thread_name_fn(move || {
            if started.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < serve_threads {
                "ignite-serve".into()
            } else {
                "ignite-blocking".into()
            }
        })
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
            stop.cancel();
        });
        let org = a.org;
        ignite_server::run(config, shutdown, move |started| {
            // The CLI config is written before the addresses are announced, so that whoever
            // waits for them can use `dodil ignite …` at once.
            let mut notes = Vec::new();
            if let Some(token) = &started.admin_token {
                notes.push(format!("created org {org}; admin token (shown once): {token}"));
                match config::Config::load() {
                    Ok(cfg) if cfg.token.is_none() && cfg.api_endpoint.is_none() => {
                        let cfg = config::Config {
                            token: Some(token.clone()),
                            api_endpoint: Some(started.api_addr.to_string()),
                        };
                        match cfg.save() {
                            Ok(path) => notes.push(format!(
                                "wrote {} so that `dodil ignite …` uses this server",
                                path.display()
                            )),
                            Err(e) => eprintln!("could not write the CLI config: {e:#}"),
                        }
                    }
                    _ => notes.push(
                        "kept the existing CLI config; run `dodil ignite config set token <token>` \
                         to use this server"
                            .into(),
                    ),
                }
            }
            println!("data in {}", data_dir.display());
            println!("sandbox: {}", started.sandbox);
            println!("limits: {}", started.limits.describe());
            for warning in &started.warnings {
                println!("warning: {warning}");
            }
            for note in notes {
                println!("{note}");
            }
            match started.node_addr {
                Some(node) => println!("node listening on http://{node}"),
                None => {
                    println!("gateway listening on http://{}", started.gateway_addr);
                    println!("api listening on http://{}", started.api_addr);
                }
            }
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
        })
        .await
    })
}
