//! The sandbox seen from inside: a static probe program started in it reports what it can see
//! and do. Runs as root (the sandbox needs it); elsewhere the tests say so and pass vacuously
//! only for the part that needs root.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command as Std;
use std::sync::OnceLock;

use ignite_sandbox::{
    Bind, Command, Limits, Prepared, Sandbox, SandboxConfig, spawn, spawn_prepared,
};

fn probe() -> &'static Path {
    static PROBE: OnceLock<PathBuf> = OnceLock::new();
    PROBE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sandbox-probe");
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("probe");
        let status = Std::new("rustc")
            .args([
                "--edition",
                "2021",
                "-O",
                "--target",
                "x86_64-unknown-linux-musl",
                "-o",
            ])
            .arg(&out)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/probe.rs"))
            .status()
            .unwrap();
        assert!(status.success(), "building the probe failed");
        out
    })
}

fn sandbox() -> Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX
        .get_or_init(|| {
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sandbox-state");
            let mut config = SandboxConfig::new(dir);
            config.tmp_mb = 4;
            Sandbox::new(config).expect("the sandbox needs root and namespaces on this machine")
        })
        .clone()
}

/// Runs the probe and parses its report; also returns how it exited.
fn run(env: &[(&str, &str)], sandboxed: bool, memory_mb: u64) -> (HashMap<String, String>, String) {
    let limits = Limits {
        memory_mb,
        egress: false,
    };
    run_with(env, sandboxed.then_some(limits))
}

fn run_with(env: &[(&str, &str)], limits: Option<Limits>) -> (HashMap<String, String>, String) {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let sandbox = sandbox();
    let spawned = spawn(
        &Command {
            program: probe(),
            argv: &[],
            binds: &[],
            reserves_address_space: false,
            env: &env,
        },
        limits.as_ref().map(|limits| (&sandbox, limits)),
    )
    .unwrap_or_else(|e| panic!("spawn failed: {e}"));
    let mut process = spawned.process;
    drop(spawned.stdin);
    let mut out = String::new();
    std::fs::File::from(spawned.stdout)
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    std::fs::File::from(spawned.stderr)
        .read_to_string(&mut err)
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = rt.block_on(process.wait()).unwrap();
    let exit = format!("{status:?} oom={} stderr={err}", process.oom_killed());
    let report = out
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (report, exit)
}

#[test]
fn inside_the_sandbox_the_handler_sees_nothing_of_the_host_and_holds_no_privilege() {
    let (r, exit) = run(&[("APP_SETTING", "1")], true, 64);
    assert!(
        exit.starts_with("ExitStatus(unix_wait_status(0))"),
        "{exit}"
    );
    assert_eq!(r["uid"], "1000", "runs as the mapped unprivileged user");
    assert_eq!(r["pid"], "1", "pid 1 of its own pid namespace");
    assert_eq!(r["proc_pids"], "1", "sees no other process");
    assert_eq!(r["root"], "dev,proc,tmp", "the root holds nothing else");
    assert_eq!(r["dev"], "null,random,urandom,zero");
    assert_eq!(r["hostname"], "ignite");
    assert_eq!(r["CapEff"], "0000000000000000");
    assert_eq!(r["CapBnd"], "0000000000000000");
    assert_eq!(r["NoNewPrivs"], "1");
    assert_eq!(r["Seccomp"], "2");
    assert_eq!(r["env"], "APP_SETTING", "only the declared environment");
    assert!(r["write_root"].contains("Read-only"), "{}", r["write_root"]);
    assert_eq!(r["write_tmp"], "written");
    for refused in ["ptrace", "raw_socket", "unshare"] {
        assert!(
            r[refused].contains("Operation not permitted"),
            "{refused}: {}",
            r[refused]
        );
    }
}

#[test]
fn a_prepared_sandbox_runs_the_command_it_was_made_for_and_refuses_others() {
    let sandbox = sandbox();
    let limits = Limits {
        memory_mb: 64,
        egress: false,
    };
    let data = Path::new(env!("CARGO_TARGET_TMPDIR")).join("prepared-bind");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("file"), b"x").unwrap();
    let binds = [Bind {
        source: data.clone(),
        target: "/data".into(),
    }];
    let command = |binds| Command {
        program: probe(),
        argv: &[],
        env: &[],
        binds,
        reserves_address_space: false,
    };
    // Another command's binds, or another network, do not fit.
    let prepared = Prepared::new(&sandbox, &binds, false).unwrap();
    assert!(!prepared.fits(&command(&[]), &limits));
    assert!(!prepared.fits(
        &command(&binds),
        &Limits {
            egress: true,
            ..limits
        }
    ));
    let refused = spawn_prepared(prepared, &command(&[]), &limits).unwrap_err();
    assert!(refused.to_string().contains("other binds"), "{refused}");
    // Its own: the probe sees the bind in its root, the rest as ever.
    let prepared = Prepared::new(&sandbox, &binds, false).unwrap();
    let spawned = spawn_prepared(prepared, &command(&binds), &limits).unwrap();
    let mut process = spawned.process;
    drop(spawned.stdin);
    let mut out = String::new();
    std::fs::File::from(spawned.stdout)
        .read_to_string(&mut out)
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert!(rt.block_on(process.wait()).unwrap().success(), "{out}");
    let report: HashMap<&str, &str> = out.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(report["root"], "data,dev,proc,tmp", "{out}");
    assert_eq!(report["uid"], "1000", "{out}");
}

#[test]
fn only_unix_and_ip_sockets_can_be_created() {
    let (r, exit) = run(&[], true, 64);
    assert!(
        exit.starts_with("ExitStatus(unix_wait_status(0))"),
        "{exit}"
    );
    for allowed in [
        "socket unix",
        "socket inet",
        "socket inet6",
        "socketpair unix",
    ] {
        assert_eq!(r[allowed], "opened", "{allowed}: {r:?}");
    }
    // vsock is not confined by the network namespace; netlink (any protocol), AF_ALG and
    // packet sockets are not needed. All look like families this kernel was built without.
    for refused in [
        "socket vsock",
        "socket netlink",
        "socket netlink_uevent",
        "socket alg",
        "socket packet_dgram",
        "packet_socket",
        "socketpair vsock",
        "socketpair netlink",
    ] {
        assert!(
            r[refused].contains("Address family not supported"),
            "{refused}: {}",
            r[refused]
        );
    }
    // Raw sockets of an allowed family stay refused as before.
    assert!(r["raw_socket"].contains("Operation not permitted"), "{r:?}");
}

#[test]
fn without_the_sandbox_the_same_probe_sees_the_host() {
    // The control for the test above: proves the probe's checks can fail.
    let (r, exit) = run(&[], false, 64);
    assert!(
        exit.starts_with("ExitStatus(unix_wait_status(0))"),
        "{exit}"
    );
    assert_ne!(r["pid"], "1");
    assert_ne!(r["proc_pids"], "1");
    assert!(r["root"].contains("etc"));
    assert_eq!(r["Seccomp"], "0");
}

#[test]
fn the_network_has_nothing_in_it() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let key = format!("connect {addr}");
    let (r, _) = run(&[("PROBE_CONNECT", &addr)], true, 64);
    assert!(r[&key].contains("unreachable"), "{}", r[&key]);
    let (r, _) = run(&[("PROBE_CONNECT", &addr)], false, 64);
    assert_eq!(r[&key], "connected", "the control reaches the listener");
}

#[test]
fn with_egress_an_instance_reaches_the_internet_and_nothing_private() {
    let internet = internet();
    assert!(internet.reachable_from_host(), "the stand-in is up");
    let host_service = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let host_service = std::net::SocketAddr::from((
        internet::HOST_SIDE,
        host_service.local_addr().unwrap().port(),
    ));
    let targets = format!("{},{},{host_service}", internet.public, internet.private);
    let env = [("PROBE_CONNECT", targets.as_str())];
    sandbox()
        .enable_egress()
        .expect("egress needs nftables here");
    let (r, exit) = run_with(&env, Some(EGRESS));
    let public = &r[&format!("connect {}", internet.public)];
    assert_eq!(public, "connected", "{r:?} {exit}");
    let private = &r[&format!("connect {}", internet.private)];
    assert_ne!(private, "connected", "a private address is refused: {r:?}");
    let host = &r[&format!("connect {host_service}")];
    assert_ne!(
        host, "connected",
        "the host's own services are refused: {r:?}"
    );
    assert_eq!(r["root"], "dev,etc,proc,tmp", "{r:?}");
    assert_eq!(r["uid"], "1000", "still sandboxed");

    // Off by default: the same probe without egress reaches nothing.
    let (r, _) = run(&env, true, 64);
    let public = &r[&format!("connect {}", internet.public)];
    assert!(public.contains("unreachable"), "{public}");
    // And the control: unconfined, the private address answers, so only the filter refused it.
    let (r, _) = run_with(&env, None);
    assert_eq!(r[&format!("connect {}", internet.private)], "connected");
}

#[test]
fn an_egress_instance_resolves_names_through_the_hosts_resolvers() {
    sandbox()
        .enable_egress()
        .expect("egress needs nftables here");
    let (r, _) = run_with(
        &[
            ("PROBE_READ", "/etc/resolv.conf"),
            ("PROBE_RESOLVE", "localhost"),
        ],
        Some(EGRESS),
    );
    let resolv = &r["read /etc/resolv.conf"];
    assert!(resolv.starts_with("READ "), "{resolv}");
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    for server in host.lines().filter_map(|l| l.strip_prefix("nameserver ")) {
        if !server.trim().starts_with("127.") && server.trim().parse::<std::net::Ipv4Addr>().is_ok()
        {
            assert!(resolv.contains(server.trim()), "{resolv} lacks {server}");
        }
    }
    assert!(
        ["resolved 127.0.0.1", "resolved ::1"].contains(&r["resolve"].as_str()),
        "/etc/hosts names localhost: {}",
        r["resolve"]
    );
}

const EGRESS: Limits = Limits {
    memory_mb: 64,
    egress: true,
};

#[path = "support/internet.rs"]
mod internet;

fn internet() -> &'static internet::Internet {
    internet::Internet::shared()
}

#[test]
fn host_files_are_out_of_reach() {
    let canary = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sandbox-canary");
    let marker = format!("canary-{}", std::process::id());
    std::fs::write(&canary, &marker).unwrap();
    let paths = format!("{}:/etc/hostname:/proc/1/environ", canary.display());
    let (r, _) = run(&[("PROBE_READ", &paths)], true, 64);
    let text = format!("{r:?}");
    assert!(!text.contains(&marker), "{text}");
    assert!(
        r[&format!("read {}", canary.display())].contains("No such file"),
        "{text}"
    );
}

#[test]
fn the_hosts_kernel_information_in_proc_is_masked() {
    let files = [
        "kallsyms",
        "kcore",
        "keys",
        "key-users",
        "sched_debug",
        "timer_list",
        "timer_stats",
        "latency_stats",
        "sysrq-trigger",
        "interrupts",
    ];
    let dirs = ["acpi", "asound", "scsi"];
    let on_host = |names: &[&str]| -> Vec<String> {
        names
            .iter()
            .map(|n| format!("/proc/{n}"))
            .filter(|p| Path::new(p).exists())
            .collect()
    };
    let (files, dirs) = (on_host(&files), on_host(&dirs));
    assert!(
        files.iter().any(|f| f == "/proc/kallsyms"),
        "this kernel has /proc/kallsyms"
    );
    let env = [
        ("PROBE_READ", files.join(":")),
        ("PROBE_LIST", dirs.join(":")),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (r, exit) = run(&env, true, 64);
    assert!(
        exit.starts_with("ExitStatus(unix_wait_status(0))"),
        "{exit}"
    );
    for file in &files {
        let read = &r[&format!("read {file}")];
        // Empty (/dev/null), or refused where the file is root's only.
        assert!(
            read == "READ " || read.contains("Permission denied"),
            "{file}: {read}"
        );
    }
    for dir in &dirs {
        assert_eq!(r[&format!("list {dir}")], "LISTED ", "{dir}");
    }
    for read_only in ["/proc/sys", "/proc/bus", "/proc/fs", "/proc/irq"] {
        if Path::new(read_only).exists() {
            let options = &r[&format!("mount {read_only}")];
            assert!(options.starts_with("ro,"), "{read_only}: {options}");
        }
    }
    // What an instance may read of /proc still reads.
    assert_eq!(r["hostname"], "ignite");
    assert_eq!(r["proc_pids"], "1");

    // The control: unconfined, kallsyms has something in it.
    let (r, _) = run(&[("PROBE_READ", "/proc/kallsyms")], false, 64);
    assert!(r["read /proc/kallsyms"].len() > "READ ".len());
}

#[test]
fn a_fork_bomb_hits_the_process_limit_and_dies_with_its_parent() {
    let (r, exit) = run(&[("PROBE_FORK", "1")], true, 64);
    let forked: u32 = r["forked"].parse().unwrap();
    assert!(forked < 64, "forked {forked}");
    assert!(
        exit.starts_with("ExitStatus(unix_wait_status(0))"),
        "{exit}"
    );
    // pid 1 exited: the kernel killed the paused children with it.
}

#[test]
fn unbounded_allocation_is_killed_at_the_memory_limit() {
    let (r, exit) = run(&[("PROBE_ALLOC_MB", "512")], true, 32);
    assert!(!r.contains_key("allocated"), "{r:?}");
    assert!(
        exit.contains("oom=true") || exit.contains("memory allocation"),
        "{exit}"
    );
}

#[test]
fn a_dynamically_linked_binary_is_refused_with_a_reason() {
    let sandbox = sandbox();
    let spawned = spawn(
        &Command {
            program: Path::new("/bin/true"),
            argv: &[],
            binds: &[],
            reserves_address_space: false,
            env: &[],
        },
        Some((
            &sandbox,
            &Limits {
                memory_mb: 64,
                egress: false,
            },
        )),
    )
    .expect("the zygote takes the binary");
    let mut process = spawned.process;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = rt.block_on(process.wait()).unwrap();
    assert_eq!(status.code(), Some(127));
    let failure = process
        .launch_failure()
        .expect("a launch failure")
        .to_string();
    assert!(failure.contains("static binary"), "{failure}");
}

/// Run by `prepared_processes_do_not_outlive_their_agent` in a child process: makes a sandbox
/// (which parks zygotes) and exits without tearing it down.
#[test]
fn helper_agent_that_exits_abruptly() {
    if std::env::var_os("IGNITE_TEST_ABRUPT_AGENT").is_none() {
        return;
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sandbox-abrupt");
    let mut config = SandboxConfig::new(dir);
    config.first_uid = ABRUPT_UID;
    let sandbox = Sandbox::new(config).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    std::mem::forget(sandbox);
    std::process::exit(0);
}

const ABRUPT_UID: u32 = 1_800_000_000;

fn processes_of_uids(range: std::ops::Range<u32>) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|l| l.split_whitespace().next()?.parse::<u32>().ok())
                    .is_some_and(|uid| range.contains(&uid))
            })
        })
        .collect()
}

#[test]
fn prepared_processes_do_not_outlive_their_agent() {
    let status = Std::new(std::env::current_exe().unwrap())
        .args(["--exact", "helper_agent_that_exits_abruptly", "--nocapture"])
        .env("IGNITE_TEST_ABRUPT_AGENT", "1")
        .status()
        .unwrap();
    assert!(status.success());
    let range = ABRUPT_UID..ABRUPT_UID + 10_000;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !processes_of_uids(range.clone()).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "zygotes outlived their agent: {:?}",
            processes_of_uids(range.clone())
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_host_that_cannot_run_the_sandbox_fails_at_start_naming_the_step() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sandbox-broken");
    let mut config = SandboxConfig::new(dir);
    // (uid_t)-1 is no uid: the probe zygote's user cannot be mapped.
    config.first_uid = u32::MAX;
    let err = Sandbox::new(config)
        .expect_err("a sandbox without a usable uid")
        .to_string();
    assert!(err.contains("mapping the instance's user"), "{err}");
    assert!(err.contains("--no-sandbox"), "{err}");
}

/// Runs one of the `helper_*` tests below in a child process of its own (so that the cgroups
/// named after its pid and the uids it uses are its sandbox's alone), with `var` set.
fn run_helper(name: &str, var: &str) {
    let out = Std::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(var, "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `ignite-<pid>-<n>` cgroups of process `pid`, in every hierarchy.
fn cgroups_of(pid: u32) -> Vec<PathBuf> {
    fn walk(dir: &Path, depth: usize, prefix: &str, found: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) {
                found.push(entry.path());
            } else if depth > 0 && !name.starts_with("ignite-") && !name.starts_with("slot-") {
                walk(&entry.path(), depth - 1, prefix, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(
        Path::new("/sys/fs/cgroup"),
        6,
        &format!("ignite-{pid}-"),
        &mut found,
    );
    found
}

/// The directories the sandbox makes its cgroups in (this process's own, per hierarchy).
fn own_cgroups() -> Vec<PathBuf> {
    sandbox();
    let mut owns: Vec<PathBuf> = cgroups_of(std::process::id())
        .iter()
        .filter_map(|d| d.parent().map(Path::to_path_buf))
        .collect();
    owns.sort();
    owns.dedup();
    assert!(!owns.is_empty(), "the sandbox has cgroups on this host");
    owns
}

/// How many of this process's descriptors are open on files of its sandboxes' cgroups.
fn cgroup_descriptors() -> usize {
    let ours = format!("/ignite-{}-", std::process::id());
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains(&ours)))
        .count()
}

fn small_config(name: &str, first_uid: u32) -> SandboxConfig {
    let mut config = SandboxConfig::new(Path::new(env!("CARGO_TARGET_TMPDIR")).join(name));
    config.first_uid = first_uid;
    config.spare_netns = 2;
    config.spare_zygotes = 2;
    config.spare_slots = 0;
    config.tmp_mb = 4;
    config
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn sleeper() -> std::process::Child {
    Std::new("sleep").arg("600").spawn().unwrap()
}

fn killed(child: &mut std::process::Child) -> bool {
    use std::os::unix::process::ExitStatusExt;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.signal() == Some(libc::SIGKILL);
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn helper_idle_slots() {
    if std::env::var_os("IGNITE_TEST_IDLE_SLOTS").is_none() {
        return;
    }
    let mut config = small_config("sandbox-idle-slots", 1_750_000_000);
    config.spare_slots = 40;
    let sandbox = Sandbox::new(config).unwrap();
    let slots = || {
        cgroups_of(std::process::id())
            .first()
            .and_then(|d| std::fs::read_dir(d).ok())
            .map_or(0, |d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("slot-"))
                    .count()
            })
    };
    // The first zygote's slot, the 40 spare ones (the second zygote reuses one of them).
    wait_for("40 spare slots", || slots() >= 41);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let held = cgroup_descriptors();
    assert_eq!(held, 0, "descriptors held on cgroup files by 41 slots");
    sandbox.shutdown();
}

#[test]
fn idle_instance_slots_hold_no_descriptors() {
    run_helper("helper_idle_slots", "IGNITE_TEST_IDLE_SLOTS");
}

#[test]
fn helper_nofile() {
    if std::env::var_os("IGNITE_TEST_NOFILE").is_none() {
        return;
    }
    let get = || {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit into `limit`.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        assert_eq!(rc, 0);
        limit
    };
    let hard = get().rlim_max;
    let low = libc::rlimit {
        rlim_cur: 256.min(hard),
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the initialised `low`.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) }, 0);
    let raised = ignite_sandbox::raise_nofile_limit().unwrap();
    assert_eq!(raised, hard);
    assert_eq!(get().rlim_cur, hard);
    assert_eq!(get().rlim_max, hard, "the hard limit is left as it was");
    // Idempotent.
    assert_eq!(ignite_sandbox::raise_nofile_limit().unwrap(), hard);
}

#[test]
fn the_open_file_limit_is_raised_to_the_hard_limit() {
    run_helper("helper_nofile", "IGNITE_TEST_NOFILE");
}

const SHUTDOWN_UID: u32 = 1_760_000_000;

fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix))
        })
        .count()
}

#[test]
fn helper_shutdown() {
    if std::env::var_os("IGNITE_TEST_SHUTDOWN").is_none() {
        return;
    }
    let uids = SHUTDOWN_UID..SHUTDOWN_UID + 10_000;
    let me = std::process::id();

    // Dropping the last clone shuts the sandbox down.
    let sandbox = Sandbox::new(small_config("sandbox-shutdown", SHUTDOWN_UID)).unwrap();
    wait_for("two parked zygotes", || {
        processes_of_uids(uids.clone()).len() >= 2
    });
    assert!(!cgroups_of(me).is_empty());
    drop(sandbox);
    assert!(cgroups_of(me).is_empty(), "{:?}", cgroups_of(me));
    assert!(processes_of_uids(uids.clone()).is_empty());
    wait_for("the threads to end", || {
        threads_named("ignite-zygotes") + threads_named("ignite-netns") == 0
    });

    // An explicit shutdown while an instance and a compile run, and clones live on.
    let sandbox = Sandbox::new(small_config("sandbox-shutdown", SHUTDOWN_UID)).unwrap();
    let clone = sandbox.clone();
    let limits = Limits {
        memory_mb: 64,
        egress: false,
    };
    let env = [("PROBE_LINGER".to_string(), "1".to_string())];
    let spawned = spawn(
        &Command {
            program: probe(),
            argv: &[],
            binds: &[],
            reserves_address_space: false,
            env: &env,
        },
        Some((&sandbox, &limits)),
    )
    .unwrap();
    let mut instance = spawned.process;
    let build = sandbox
        .build_cgroup("shutdown-test", 256)
        .unwrap()
        .expect("cgroups on this host");
    let mut compile = sleeper();
    for procs in build.procs() {
        std::fs::write(procs, compile.id().to_string()).unwrap();
    }
    wait_for("zygotes and the instance", || {
        processes_of_uids(uids.clone()).len() >= 3
    });
    sandbox.shutdown();
    sandbox.shutdown();
    clone.shutdown();
    assert!(sandbox.is_shut_down());
    assert!(cgroups_of(me).is_empty(), "{:?}", cgroups_of(me));
    assert!(killed(&mut compile), "the compile was killed");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = rt.block_on(instance.wait()).unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "the instance was killed"
    );
    assert!(processes_of_uids(uids.clone()).is_empty());
    assert_eq!(
        threads_named("ignite-zygotes") + threads_named("ignite-netns"),
        0
    );
    let err = spawn(
        &Command {
            program: probe(),
            argv: &[],
            binds: &[],
            reserves_address_space: false,
            env: &[],
        },
        Some((&clone, &limits)),
    )
    .expect_err("nothing starts after shutdown")
    .to_string();
    assert!(err.contains("shut down"), "{err}");
    let err = clone
        .build_cgroup("late", 256)
        .expect_err("no compile either");
    assert!(err.to_string().contains("shut down"), "{err}");
    drop((build, clone));
}

#[test]
fn shutdown_stops_the_sandbox_and_removes_its_cgroups() {
    run_helper("helper_shutdown", "IGNITE_TEST_SHUTDOWN");
}

/// A pid that no process has (a child that has been reaped).
fn dead_pid() -> u32 {
    let mut child = Std::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    pid
}

/// Makes a stand-in for a server's cgroups, `ignite-<pid>-0` with a slot and a compile in it,
/// in every hierarchy, with `process` in the slot; returns the base directories.
fn fake_server_cgroups(pid: u32, process: u32, owner: Option<&str>) -> Vec<PathBuf> {
    own_cgroups()
        .iter()
        .map(|own| {
            let base = own.join(format!("ignite-{pid}-0"));
            std::fs::create_dir_all(base.join("slot-0")).unwrap();
            std::fs::create_dir_all(base.join("build-fake")).unwrap();
            std::fs::write(base.join("slot-0/cgroup.procs"), process.to_string()).unwrap();
            if let Some(owner) = owner {
                let path = std::ffi::CString::new(base.to_str().unwrap()).unwrap();
                // SAFETY: setxattr reads two C strings and `owner.len()` bytes of `owner`.
                let rc = unsafe {
                    libc::setxattr(
                        path.as_ptr(),
                        c"trusted.ignite.owner".as_ptr(),
                        owner.as_ptr().cast(),
                        owner.len(),
                        0,
                    )
                };
                assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
            }
            base
        })
        .collect()
}

#[test]
fn a_dead_servers_cgroups_are_emptied_and_removed_at_start() {
    // Left by a server that crashed, with an instance (or a compile) still running in them.
    let mut orphan = sleeper();
    let dead = fake_server_cgroups(dead_pid(), orphan.id(), None);
    // A running process's pid, reused: its start time is not the one the owner mark records.
    let mut reused_orphan = sleeper();
    let reuser = sleeper();
    let reused = fake_server_cgroups(
        reuser.id(),
        reused_orphan.id(),
        Some(&format!("{} 1", reuser.id())),
    );
    let sandbox = Sandbox::new(small_config("sandbox-stale", 1_770_000_000)).unwrap();
    assert!(killed(&mut orphan), "the dead server's process was killed");
    assert!(
        killed(&mut reused_orphan),
        "so was the one under a reused pid"
    );
    for base in dead.iter().chain(&reused) {
        assert!(!base.exists(), "{} was removed", base.display());
    }
    sandbox.shutdown();
    let mut reuser = reuser;
    let _ = reuser.kill();
    let _ = reuser.wait();
}

#[test]
fn a_running_servers_cgroups_are_left_alone() {
    let mut server = sleeper();
    let mut instance = sleeper();
    let live = fake_server_cgroups(server.id(), instance.id(), None);
    // And one marked by a process that is running.
    let mut marked_server = sleeper();
    let mut marked_instance = sleeper();
    let start = std::fs::read_to_string(format!("/proc/{}/stat", marked_server.id())).unwrap();
    let start = start[start.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(19)
        .unwrap()
        .to_string();
    let marked = fake_server_cgroups(
        marked_server.id(),
        marked_instance.id(),
        Some(&format!("{} {start}", marked_server.id())),
    );
    let sandbox = Sandbox::new(small_config("sandbox-live", 1_780_000_000)).unwrap();
    for base in live.iter().chain(&marked) {
        assert!(base.join("slot-0").exists(), "{} was left", base.display());
    }
    assert!(
        instance.try_wait().unwrap().is_none(),
        "its instance runs on"
    );
    assert!(marked_instance.try_wait().unwrap().is_none());
    sandbox.shutdown();
    for child in [
        &mut server,
        &mut instance,
        &mut marked_server,
        &mut marked_instance,
    ] {
        let _ = child.kill();
        let _ = child.wait();
    }
    for base in live.iter().chain(&marked) {
        for dir in ["slot-0", "build-fake", ""] {
            let _ = std::fs::remove_dir(base.join(dir));
        }
    }
}
