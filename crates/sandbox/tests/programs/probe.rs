//! A static program that looks around from inside the sandbox and prints what it sees, one
//! `key=value` line per check. Built by `tests/sandbox.rs` with plain `rustc` for musl (no
//! crates), so the sandbox can be tested without the rest of the platform.

use std::io::Write;

extern "C" {
    fn getuid() -> u32;
    fn ptrace(request: i32, pid: i32, addr: usize, data: usize) -> i64;
    fn socket(domain: i32, ty: i32, protocol: i32) -> i32;
    fn socketpair(domain: i32, ty: i32, protocol: i32, fds: *mut i32) -> i32;
    fn close(fd: i32) -> i32;
    fn unshare(flags: i32) -> i32;
    fn fork() -> i32;
    fn pause() -> i32;
}

fn errno() -> String {
    std::io::Error::last_os_error().to_string()
}

fn main() {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k}={v}\n"));
    // SAFETY: plain system calls.
    unsafe {
        line("uid", getuid().to_string());
        line("pid", std::process::id().to_string());
        let r = ptrace(16 /* PTRACE_ATTACH */, 1, 0, 0);
        line("ptrace", if r < 0 { errno() } else { "attached".into() });
        let r = socket(2, 3 /* SOCK_RAW */, 1);
        line("raw_socket", if r < 0 { errno() } else { "opened".into() });
        let r = socket(17 /* AF_PACKET */, 2, 0);
        line("packet_socket", if r < 0 { errno() } else { "opened".into() });
        // Address families (each `socket <family>` / `socketpair <family>`).
        for (name, family, ty, protocol) in [
            ("unix", 1, 1 /* SOCK_STREAM */, 0),
            ("inet", 2, 2 /* SOCK_DGRAM */, 0),
            ("inet6", 10, 2, 0),
            ("vsock", 40, 1, 0),
            ("netlink", 16, 2, 0 /* NETLINK_ROUTE */),
            ("netlink_uevent", 16, 2, 15 /* NETLINK_KOBJECT_UEVENT */),
            ("alg", 38, 5 /* SOCK_SEQPACKET */, 0),
            ("packet_dgram", 17, 2, 0),
        ] {
            let r = socket(family, ty | 0o2000000 /* SOCK_CLOEXEC */, protocol);
            line(&format!("socket {name}"), if r < 0 { errno() } else { close(r); "opened".into() });
        }
        for (name, family) in [("unix", 1), ("vsock", 40), ("netlink", 16)] {
            let mut fds = [-1i32; 2];
            let r = socketpair(family, 1, 0, fds.as_mut_ptr());
            line(
                &format!("socketpair {name}"),
                if r < 0 {
                    errno()
                } else {
                    close(fds[0]);
                    close(fds[1]);
                    "opened".into()
                },
            );
        }
        let r = unshare(0x10000000 /* CLONE_NEWUSER */);
        line("unshare", if r < 0 { errno() } else { "done".into() });
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    for key in ["CapEff", "CapBnd", "NoNewPrivs", "Seccomp"] {
        let v = status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}:")))
            .unwrap_or("?")
            .trim();
        line(key, v.to_string());
    }
    let names = |dir: &str| {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v.join(",")
    };
    line("root", names("/"));
    line("dev", names("/dev"));
    let procs: Vec<String> = names("/proc")
        .split(',')
        .filter(|n| n.parse::<u32>().is_ok())
        .map(String::from)
        .collect();
    line("proc_pids", procs.join(","));
    line("hostname", std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().into());
    line(
        "write_root",
        match std::fs::write("/escape", b"x") {
            Ok(()) => "written".into(),
            Err(e) => e.to_string(),
        },
    );
    line(
        "write_tmp",
        match std::fs::write("/tmp/ok", b"x") {
            Ok(()) => "written".into(),
            Err(e) => e.to_string(),
        },
    );
    line("env", std::env::vars().map(|(k, _)| k).collect::<Vec<_>>().join(","));
    if let Ok(targets) = std::env::var("PROBE_CONNECT") {
        for target in targets.split(',') {
            let r = std::net::TcpStream::connect_timeout(
                &target.parse().expect("PROBE_CONNECT is a list of addresses"),
                std::time::Duration::from_secs(1),
            );
            line(&format!("connect {target}"), match r {
                Ok(_) => "connected".into(),
                Err(e) => e.to_string(),
            });
        }
    }
    if let Ok(name) = std::env::var("PROBE_RESOLVE") {
        line("resolve", match std::net::ToSocketAddrs::to_socket_addrs(&(name.as_str(), 443)) {
            Ok(mut addrs) => match addrs.next() {
                Some(a) => format!("resolved {}", a.ip()),
                None => "no address".into(),
            },
            Err(e) => e.to_string(),
        });
    }
    if let Ok(paths) = std::env::var("PROBE_READ") {
        for path in paths.split(':') {
            line(
                &format!("read {path}"),
                match std::fs::read_to_string(path) {
                    Ok(text) => format!("READ {text}"),
                    Err(e) => e.to_string(),
                },
            );
        }
    }
    if let Ok(dirs) = std::env::var("PROBE_LIST") {
        for dir in dirs.split(':') {
            line(&format!("list {dir}"), match std::fs::read_dir(dir) {
                Ok(d) => {
                    let mut v: Vec<String> =
                        d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
                    v.sort();
                    format!("LISTED {}", v.join(","))
                }
                Err(e) => e.to_string(),
            });
        }
    }
    // Each mount point with its per-mount options: `mount /proc/sys=ro,nosuid,…`.
    for l in std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default().lines() {
        let fields: Vec<&str> = l.split(' ').collect();
        if fields.len() > 5 {
            line(&format!("mount {}", fields[4]), fields[5].to_string());
        }
    }
    if std::env::var("PROBE_FORK").is_ok() {
        let mut n = 0;
        // SAFETY: the children only pause.
        unsafe {
            for _ in 0..1000 {
                match fork() {
                    0 => {
                        pause();
                    }
                    pid if pid > 0 => n += 1,
                    _ => break,
                }
            }
        }
        line("forked", n.to_string());
    }
    if let Ok(mb) = std::env::var("PROBE_ALLOC_MB") {
        let mb: usize = mb.parse().expect("PROBE_ALLOC_MB is a number");
        let mut keep = Vec::new();
        for _ in 0..mb {
            keep.push(vec![1u8; 1 << 20]);
        }
        line("allocated", keep.len().to_string());
    }
    std::io::stdout().write_all(out.as_bytes()).expect("stdout");
    if std::env::var("PROBE_LINGER").is_ok() {
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}
