//! Hosts for fleet tests: network namespaces joined by a bridge (in a namespace of its own),
//! with the test process on the bridge too, through one veth pair. Every address is on a
//! private /24 that exists only inside these namespaces; nothing reaches another network.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A bridge and the hosts on it.
pub struct Net {
    prefix: String,
    /// `10.<a>.<b>`: the hosts are `.1`, `.2`, …; the test process is `.254`.
    pub subnet: String,
    pub hosts: Vec<Host>,
    client_link: String,
}

pub struct Host {
    pub name: String,
    pub ns: String,
    pub ip: String,
    /// The bridge's end of the host's link: down is a partition.
    port: String,
    prefix: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Host {
    /// The namespace's file, for `setns`.
    pub fn netns(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.ns)
    }

    /// Cuts the host off the bridge (its processes keep running, their packets go nowhere).
    pub fn partition(&self) {
        ip(&["-n", &self.switch(), "link", "set", &self.port, "down"]);
    }

    pub fn heal(&self) {
        ip(&["-n", &self.switch(), "link", "set", &self.port, "up"]);
    }

    fn switch(&self) -> String {
        format!("{}sw", self.prefix)
    }
}

impl Net {
    /// A bridge with one host per name.
    pub fn new(names: &[&str]) -> Net {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = (std::process::id() * 8 + n) % 60000;
        let prefix = format!("igf{id}");
        let subnet = format!("10.{}.{}", 100 + id / 250 % 100, id % 250);
        // Whatever an earlier run with this id left.
        let _ = Command::new("ip")
            .args(["link", "del", &format!("{prefix}c")])
            .output();
        let switch = format!("{prefix}sw");
        let _ = Command::new("ip").args(["netns", "del", &switch]).output();
        ip(&["netns", "add", &switch]);
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch, "link", "set", "br0", "up"]);
        let mut hosts = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let ns = format!("{prefix}h{i}");
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
            ip(&["netns", "add", &ns]);
            let port = format!("p{i}");
            ip(&[
                "-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            ip(&["-n", &switch, "link", "set", &port, "master", "br0", "up"]);
            let addr = format!("{subnet}.{}", i + 1);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            hosts.push(Host {
                name: name.to_string(),
                ns,
                ip: addr,
                port,
                prefix: prefix.clone(),
            });
        }
        let client_link = format!("{prefix}c");
        ip(&[
            "link",
            "add",
            &client_link,
            "type",
            "veth",
            "peer",
            "name",
            "client",
            "netns",
            &switch,
        ]);
        ip(&[
            "-n", &switch, "link", "set", "client", "master", "br0", "up",
        ]);
        ip(&[
            "addr",
            "add",
            &format!("{subnet}.254/24"),
            "dev",
            &client_link,
        ]);
        ip(&["link", "set", &client_link, "up"]);
        Net {
            prefix,
            subnet,
            hosts,
            client_link,
        }
    }

    /// The test process's own address on the bridge.
    pub fn client_ip(&self) -> String {
        format!("{}.254", self.subnet)
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.client_link])
            .output();
        for host in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", &host.ns]).output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &format!("{}sw", self.prefix)])
            .output();
    }
}
