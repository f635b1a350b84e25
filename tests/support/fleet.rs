//! Hosts for fleet tests: network namespaces joined by a bridge (in a namespace of its own),
//! with the test process on the bridge too, through one veth pair. Every address is on a
//! private /24 that exists only inside these namespaces; nothing reaches another network.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;

use super::platform::{Server, scratch, start_server_on, wait_until};

/// The fleet's node secret in tests.
pub const TOKEN: &str = "fleet-test-node-token-0123456789";

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

/// Control replicas and nodes, each a real `dodil ignite server` with its role.
pub struct Fleet {
    /// The platform registry every replica and node shares blobs through, on the bridge.
    pub registry: super::images::Registry,
    /// `--registry` as the servers are given it.
    pub registry_url: String,
    pub controls: Vec<Server>,
    pub nodes: Vec<Option<Server>>,
    pub net: Net,
    pub dir: std::path::PathBuf,
}

impl Fleet {
    /// `controls` replicas on hosts `c0`, `c1`, …, and `nodes` nodes on `n0`, `n1`, ….
    pub fn start(name: &str, controls: usize, nodes: usize, extra: &[&str]) -> Fleet {
        let dir = scratch(name);
        let names: Vec<String> = (0..nodes).map(|i| format!("n{i}")).collect();
        let net = Net::new(&names.iter().map(String::as_str).collect::<Vec<_>>());
        let registry =
            super::images::Registry::start_on(&dir.join("registry"), &net.client_ip(), None);
        let registry_url = format!("http://{}/ignite", registry.addr);
        // Several replicas share one PostgreSQL database; one alone keeps the embedded store
        // (or the suite's PostgreSQL, when it runs against it).
        let database = (controls > 1).then(|| {
            super::postgres::cluster().database(&format!("fleet_{}", name.replace('-', "_")))
        });
        let mut started = Vec::new();
        // The control replicas run in the test's own namespace, on its address on the bridge:
        // compiles fetch from crates.io, which the hosts' namespaces cannot reach.
        for i in 0..controls {
            let at = dir.join(format!("c{i}"));
            std::fs::create_dir_all(&at).unwrap();
            let replica = format!("c{i}");
            let mut args = vec![
                "--role",
                "control",
                "--node-token",
                TOKEN,
                "--sandbox-spare",
                "1",
                "--registry",
                &registry_url,
                "--replica-id",
                &replica,
            ];
            if let Some(url) = &database {
                args.extend(["--database-url", url.as_str()]);
            }
            args.extend_from_slice(extra);
            started.push(start_server_on(&at, &net.client_ip(), None, &args, &[]));
        }
        let mut fleet = Fleet {
            registry,
            registry_url,
            controls: started,
            nodes: Vec::new(),
            net,
            dir,
        };
        for i in 0..nodes {
            let node = fleet.start_node(i);
            fleet.nodes.push(Some(node));
        }
        fleet.wait_for_nodes(nodes);
        fleet
    }

    pub fn start_node(&self, i: usize) -> Server {
        let host = self.net.host(&format!("n{i}"));
        let at = self.dir.join(&host.name);
        std::fs::create_dir_all(at.join("data")).unwrap();
        let controls: Vec<String> = self
            .controls
            .iter()
            .map(|c| format!("http://{}", c.api))
            .collect();
        let listen = format!("{}:7070", host.ip);
        let node_id = host.name.clone();
        start_server_on(
            &at,
            &host.ip,
            Some(&host.netns()),
            &[
                "--role",
                "node",
                "--node-token",
                TOKEN,
                "--control-url",
                &controls.join(","),
                "--node-listen",
                &listen,
                "--node-id",
                &node_id,
                "--sandbox-spare",
                "2",
                "--registry",
                &self.registry_url,
            ],
            &[],
        )
    }

    /// The live nodes as replica `i` sees them.
    pub fn view(&self, i: usize) -> Vec<Value> {
        let mut answer = ureq::get(&format!("http://{}/v1/fleet/nodes", self.controls[i].api))
            .header("authorization", &format!("Bearer {TOKEN}"))
            .call()
            .expect("GET /v1/fleet/nodes");
        let body: Value = answer.body_mut().read_json().expect("JSON");
        body["nodes"].as_array().cloned().unwrap_or_default()
    }

    pub fn wait_for_nodes(&self, n: usize) {
        for i in 0..self.controls.len() {
            wait_until(Duration::from_secs(30), "the nodes to register", || {
                self.view(i).len() == n
            });
        }
    }

    /// Instances of `app` per node id, as replica 0 sees them.
    pub fn instances(&self, app: &str) -> Vec<(String, u64)> {
        self.view(0)
            .iter()
            .map(|n| {
                let count = n["pools"]
                    .as_array()
                    .map(|pools| {
                        pools
                            .iter()
                            .filter(|p| p["app"] == app)
                            .map(|p| p["instances"].as_u64().unwrap_or(0))
                            .sum()
                    })
                    .unwrap_or(0);
                (n["id"].as_str().unwrap_or("").to_string(), count)
            })
            .collect()
    }

    /// The node (its index) that holds instances of `app`, once replica 0 hears of one (within
    /// 5 s).
    pub fn serving(&self, app: &str) -> usize {
        let at = std::time::Instant::now();
        loop {
            if let Some((id, _)) = self.instances(app).into_iter().find(|(_, n)| *n > 0) {
                return self.node_index(&id);
            }
            assert!(
                at.elapsed() < Duration::from_secs(5),
                "no node holds {app}: {:?}",
                self.view(0)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn node_index(&self, id: &str) -> usize {
        id.strip_prefix('n').and_then(|n| n.parse().ok()).unwrap()
    }

    pub fn kill_node(&mut self, i: usize) {
        let node = self.nodes[i].take().expect("a running node");
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &node.pid().to_string()])
            .status();
        drop(node);
    }
}
