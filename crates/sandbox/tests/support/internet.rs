//! A stand-in for the internet, for tests of instances' egress: a network namespace of its own
//! behind a veth pair, routed from the host, with one TCP service listening on a public
//! (documentation-range) address and, on the same socket, a private one. The same service on
//! both addresses means only the egress filter can tell them apart.
//!
//! Shared by the sandbox's tests and the platform's (`#[path]`-included); needs root and `ip`.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::process::Command;

/// The host's address on the link to the stand-in.
pub const HOST_SIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);
const PUBLIC: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const PRIVATE: Ipv4Addr = Ipv4Addr::new(10, 254, 77, 1);
const PORT: u16 = 8080;
/// What the service answers.
pub const GREETING: &str = "hello from the internet";

pub struct Internet {
    /// The service at a public address: reachable with egress.
    pub public: SocketAddr,
    /// The same service at a private address: never reachable from an instance.
    pub private: SocketAddr,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Internet {
    /// The test binary's one stand-in (its addresses are fixed, so tests running in parallel
    /// share it). It lives as long as the process; the next binary's start removes it.
    pub fn shared() -> &'static Internet {
        static SHARED: std::sync::OnceLock<Internet> = std::sync::OnceLock::new();
        SHARED.get_or_init(Internet::start)
    }

    /// Sets it up, removing any left by an earlier test binary.
    fn start() -> Internet {
        let pid = std::process::id();
        let namespace = format!("ignite-inet-{pid}");
        let link = format!("tinet{pid:x}");
        if let Ok(names) = std::fs::read_dir("/run/netns") {
            for name in names.flatten() {
                let name = name.file_name().to_string_lossy().into_owned();
                if name.starts_with("ignite-inet-") {
                    let _ = Command::new("ip").args(["netns", "del", &name]).status();
                }
            }
        }
        if let Ok(links) = std::fs::read_dir("/sys/class/net") {
            for name in links.flatten() {
                let name = name.file_name().to_string_lossy().into_owned();
                if name.starts_with("tinet") {
                    let _ = Command::new("ip").args(["link", "del", &name]).status();
                }
            }
        }
        ip(&["netns", "add", &namespace]);
        ip(&[
            "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &namespace,
        ]);
        ip(&["addr", "add", &format!("{HOST_SIDE}/24"), "dev", &link]);
        ip(&["link", "set", &link, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["-n", namespace.as_str()];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["addr", "add", &format!("{PUBLIC}/24"), "dev", "eth0"]);
        inside(&["addr", "add", &format!("{PRIVATE}/32"), "dev", "eth0"]);
        inside(&["link", "set", "eth0", "up"]);
        inside(&["link", "set", "lo", "up"]);
        inside(&["route", "add", "default", "via", &HOST_SIDE.to_string()]);
        ip(&["route", "replace", &format!("{PRIVATE}/32"), "dev", &link]);

        let handle = std::fs::File::open(format!("/run/netns/{namespace}")).expect("netns");
        let (bound, listening) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // SAFETY: setns on this thread only, with a namespace descriptor it holds.
            let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "joining the stand-in's namespace");
            let listener = TcpListener::bind(("0.0.0.0", PORT)).expect("binding the service");
            bound.send(()).expect("test gone");
            for mut stream in listener.incoming().flatten() {
                // An HTTP answer, after the request head if one comes (raw clients that send
                // nothing get it after a moment).
                let _ = stream.set_read_timeout(Some(std::time::Duration::from_millis(200)));
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
                    match std::io::Read::read(&mut stream, &mut buf) {
                        Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => break,
                    }
                }
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{GREETING}",
                    GREETING.len()
                );
            }
        });
        listening.recv().expect("the service thread failed");
        Internet {
            public: (PUBLIC, PORT).into(),
            private: (PRIVATE, PORT).into(),
        }
    }

    /// Whether the host itself can reach the stand-in (the control for "an instance cannot").
    pub fn reachable_from_host(&self) -> bool {
        std::net::TcpStream::connect_timeout(&self.public, std::time::Duration::from_secs(1))
            .is_ok()
    }
}
