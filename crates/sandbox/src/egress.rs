//! Internet access for the instances of apps that ask for it (off by default).
//!
//! An instance with egress gets a network namespace of its own like every other, wired to the
//! host by a veth pair: inside, `eth0` holds one /32 address from [`EGRESS_NET`] and a default
//! route via 169.254.1.1, which the host end (`igx…`) answers by proxy ARP; the host routes that
//! address to its end and masquerades what leaves through any other interface. One nftables
//! table (`inet ignite_egress`) keeps the instance to the public internet: it drops everything
//! it sends to the host itself, to loopback, private, shared (CGNAT, which holds every other
//! instance), link-local (cloud metadata), multicast and reserved IPv4 ranges and all its IPv6,
//! except DNS to the host's resolvers; nothing may open a connection towards an instance.
//!
//! Namespaces are wired ahead of need by their own thread (netlink through `rtnetlink`, ~1 ms
//! each), so a cold start only joins one. The table and `net.ipv4.ip_forward=1` are set the first
//! time an app asks for egress: a node whose apps never do has no rule and no forwarding.

use std::fs::File;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::process::{Command, Stdio};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// The instances' addresses: 100.88.0.0/16, inside the shared (CGNAT) range that the filter
/// already keeps instances from reaching, so no instance can reach another.
pub const EGRESS_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(100, 88, 0, 0), 16);
/// The next hop every instance routes through; answered by the host end's proxy ARP.
const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// Host ends of the pairs are named `igx` + 12 hex digits (15 bytes, the kernel's limit).
const HOST_PREFIX: &str = "igx";
const TABLE: &str = "ignite_egress";

/// Ranges an instance may not reach even with egress on (besides the host's own addresses,
/// which the input hook refuses whatever they are).
pub const BLOCKED: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/3",
];

/// What the host provides to egress-enabled instances.
#[derive(Debug, Clone)]
pub(crate) struct HostNetwork {
    /// IPv4 resolvers instances may send DNS queries to.
    pub resolvers: Vec<Ipv4Addr>,
    /// The instances' `/etc/resolv.conf`.
    pub resolv_conf: String,
}

impl HostNetwork {
    /// Reads the host's resolvers; loopback ones (a local stub such as systemd-resolved's
    /// 127.0.0.53) are unreachable from an instance, so its upstream file is read instead.
    pub(crate) fn detect() -> HostNetwork {
        let mut found = HostNetwork {
            resolvers: Vec::new(),
            resolv_conf: String::new(),
        };
        for path in ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"] {
            if let Ok(text) = std::fs::read_to_string(path) {
                found = parse_resolv_conf(&text);
                if !found.resolvers.is_empty() {
                    break;
                }
            }
        }
        found
    }
}

fn parse_resolv_conf(text: &str) -> HostNetwork {
    let mut resolvers = Vec::new();
    let mut out = String::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(ip) = words.next().and_then(|w| w.parse::<Ipv4Addr>().ok())
                    && !ip.is_loopback()
                    && !ip.is_unspecified()
                {
                    out.push_str(&format!("nameserver {ip}\n"));
                    resolvers.push(ip);
                }
            }
            Some("search" | "options") => {
                out.push_str(line.trim());
                out.push('\n');
            }
            _ => {}
        }
    }
    HostNetwork {
        resolvers,
        resolv_conf: out,
    }
}

/// The nftables ruleset (replaces any earlier copy atomically: `nft -f` runs it as one
/// transaction).
pub(crate) fn ruleset(host: &HostNetwork) -> String {
    let (net, prefix) = EGRESS_NET;
    let dns = if host.resolvers.is_empty() {
        String::new()
    } else {
        let set = host
            .resolvers
            .iter()
            .map(Ipv4Addr::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "        iifname \"{HOST_PREFIX}*\" ip daddr {{ {set} }} udp dport 53 accept\n        \
             iifname \"{HOST_PREFIX}*\" ip daddr {{ {set} }} tcp dport 53 accept\n"
        )
    };
    format!(
        "table inet {TABLE}\n\
         delete table inet {TABLE}\n\
         table inet {TABLE} {{\n    \
             chain forward {{\n        \
                 type filter hook forward priority -10; policy accept;\n\
         {dns}        \
                 iifname \"{HOST_PREFIX}*\" ip daddr {{ {blocked} }} drop\n        \
                 iifname \"{HOST_PREFIX}*\" meta nfproto ipv6 drop\n        \
                 oifname \"{HOST_PREFIX}*\" ct state established,related accept\n        \
                 oifname \"{HOST_PREFIX}*\" drop\n    \
             }}\n    \
             chain input {{\n        \
                 type filter hook input priority -10; policy accept;\n        \
                 iifname \"{HOST_PREFIX}*\" drop\n    \
             }}\n    \
             chain postrouting {{\n        \
                 type nat hook postrouting priority srcnat; policy accept;\n        \
                 ip saddr {net}/{prefix} oifname != \"{HOST_PREFIX}*\" masquerade\n    \
             }}\n\
         }}\n",
        blocked = BLOCKED.join(", "),
    )
}

/// Installs the ruleset and turns on forwarding. Idempotent; several agents on one host share
/// the one table.
pub(crate) fn install(host: &HostNetwork) -> io::Result<()> {
    let mut nft = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot run nft ({e}): internet access for instances needs nftables; install \
                     it (apt-get install nftables)"
                ),
            )
        })?;
    if let Some(mut stdin) = nft.stdin.take() {
        stdin.write_all(ruleset(host).as_bytes())?;
    }
    let out = nft.wait_with_output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "nft refused the egress rules: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot turn on IPv4 forwarding (/proc/sys/net/ipv4/ip_forward): {e}"),
        )
    })
}

/// Makes wired namespaces; lives on the pool's own thread (its netlink sockets are tied to the
/// namespaces they were opened in).
pub(crate) struct Wirer {
    runtime: tokio::runtime::Runtime,
    host: Handle,
    host_ns: OwnedFd,
    names: u64,
    next_addr: u32,
}

impl Wirer {
    /// Must be called on the thread that will call [`Wirer::make`], while it is in the host's
    /// network namespace.
    pub(crate) fn new() -> io::Result<Wirer> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let host_ns = File::open("/proc/thread-self/ns/net")?.into();
        let host = runtime.block_on(async {
            let (connection, handle, _) = rtnetlink::new_connection()?;
            tokio::spawn(connection);
            io::Result::Ok(handle)
        })?;
        let pid = std::process::id();
        Ok(Wirer {
            runtime,
            host,
            host_ns,
            names: u64::from(pid) << 24,
            // Spread agents on one host over the range; collisions are probed past anyway.
            next_addr: pid.wrapping_mul(2_654_435_761),
        })
    }

    /// A new network namespace with a working route to the internet.
    pub(crate) fn make(&mut self) -> io::Result<OwnedFd> {
        // The namespace, and a netlink socket inside it; then back to the host's.
        // SAFETY: unshare affects only this thread, which does nothing but make namespaces.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let made = (|| -> io::Result<(OwnedFd, Handle)> {
            let ns: OwnedFd = File::open("/proc/thread-self/ns/net")?.into();
            let inside = self.runtime.block_on(async {
                let (connection, handle, _) = rtnetlink::new_connection()?;
                tokio::spawn(connection);
                io::Result::Ok(handle)
            })?;
            Ok((ns, inside))
        })();
        // SAFETY: host_ns is a namespace descriptor this thread opened; setns affects only it.
        if unsafe { libc::setns(self.host_ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let (ns, inside) = made?;
        self.names = self.names.wrapping_add(1);
        let name = format!("{HOST_PREFIX}{:012x}", self.names & 0xffff_ffff_ffff);
        let wired = self.wire(&name, ns.as_raw_fd(), &inside);
        // The connection task ends with its last handle.
        drop(inside);
        wired.map(|()| ns)
    }

    fn wire(&mut self, name: &str, ns: RawFd, inside: &Handle) -> io::Result<()> {
        let host = self.host.clone();
        let runtime = &self.runtime;
        // The pair, its peer created straight inside the namespace as eth0.
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name("eth0")
            .setns_by_fd(ns)
            .build();
        let pair = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(name.to_string())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .up()
            .build();
        let index = runtime
            .block_on(async {
                host.link().add(pair).execute().await?;
                link_index(&host, name).await
            })
            .map_err(netlink("creating the veth pair"))?;
        // Proxy ARP answers the instance's 169.254.1.1, at once (by default a proxy answer to a
        // broadcast request waits up to 0.8 s).
        std::fs::write(format!("/proc/sys/net/ipv4/conf/{name}/proxy_arp"), "1")?;
        std::fs::write(format!("/proc/sys/net/ipv4/neigh/{name}/proxy_delay"), "0")?;
        // The host route claims an address: one already routed (another agent's instance) is
        // skipped.
        let (net, prefix) = EGRESS_NET;
        let size = 1u32 << (32 - prefix);
        let mut addr = None;
        for _ in 0..256 {
            self.next_addr = self.next_addr.wrapping_add(1);
            let offset = self.next_addr % size;
            if offset == 0 || offset == size - 1 {
                continue;
            }
            let candidate = Ipv4Addr::from(u32::from(net) + offset);
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(candidate, 32)
                .output_interface(index)
                .scope(RouteScope::Link)
                .build();
            match runtime.block_on(host.route().add(route).execute()) {
                Ok(()) => {
                    addr = Some(candidate);
                    break;
                }
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
                Err(e) => return Err(netlink("routing the instance's address")(e)),
            }
        }
        let addr = addr.ok_or_else(|| io::Error::other("no free instance address"))?;
        let inside = inside.clone();
        runtime
            .block_on(async move {
                let lo = link_index(&inside, "lo").await?;
                let eth0 = link_index(&inside, "eth0").await?;
                for index in [lo, eth0] {
                    inside
                        .link()
                        .set(LinkUnspec::new_with_index(index).up().build())
                        .execute()
                        .await?;
                }
                inside
                    .address()
                    .add(eth0, addr.into(), 32)
                    .execute()
                    .await?;
                let gateway = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(GATEWAY, 32)
                    .output_interface(eth0)
                    .scope(RouteScope::Link)
                    .build();
                inside.route().add(gateway).execute().await?;
                let default = RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(GATEWAY)
                    .output_interface(eth0)
                    .build();
                inside.route().add(default).execute().await?;
                // A link that came up only carries packets once the kernel's link watcher has
                // seen it (batched, up to a second later): wait for both ends here, ahead of
                // need, rather than lose an instance's first packets.
                let deadline = tokio::time::Instant::now() + LINK_WAIT;
                loop {
                    let host_up =
                        std::fs::read_to_string(format!("/sys/class/net/{name}/operstate"))
                            .is_ok_and(|s| s.trim() == "up");
                    if host_up && oper_up(&inside, "eth0").await? {
                        return Ok(());
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(rtnetlink::Error::NamespaceError(format!(
                            "the link did not come up within {LINK_WAIT:?}"
                        )));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            })
            .map_err(netlink("configuring the instance's interface"))
    }
}

/// How long a freshly wired link may take to carry packets.
const LINK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

async fn oper_up(handle: &Handle, name: &str) -> Result<bool, rtnetlink::Error> {
    use rtnetlink::packet_route::link::{LinkAttribute, State};
    let link = handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await?;
    Ok(link.is_some_and(|l| {
        l.attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::OperState(State::Up)))
    }))
}

async fn link_index(handle: &Handle, name: &str) -> Result<u32, rtnetlink::Error> {
    handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await?
        .map(|link| link.header.index)
        .ok_or(rtnetlink::Error::RequestFailed)
}

fn netlink(step: &'static str) -> impl Fn(rtnetlink::Error) -> io::Error {
    move |e| match e {
        rtnetlink::Error::NetlinkError(m) => {
            let io = m.to_io();
            io::Error::new(io.kind(), format!("{step}: {io}"))
        }
        other => io::Error::other(format!("{step}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_resolvers_are_left_out_and_search_lines_kept() {
        let host = parse_resolv_conf(
            "# comment\nnameserver 127.0.0.53\nnameserver 10.255.255.53\nnameserver ::1\n\
             search example.internal\noptions edns0\n",
        );
        assert_eq!(host.resolvers, vec![Ipv4Addr::new(10, 255, 255, 53)]);
        assert_eq!(
            host.resolv_conf,
            "nameserver 10.255.255.53\nsearch example.internal\noptions edns0\n"
        );
    }

    #[test]
    fn the_ruleset_lets_dns_through_before_the_private_ranges_are_dropped() {
        let host = parse_resolv_conf("nameserver 10.1.2.3\n");
        let rules = ruleset(&host);
        let dns = rules
            .find("10.1.2.3 } udp dport 53 accept")
            .expect("dns rule");
        let private = rules.find("10.0.0.0/8").expect("private rule");
        assert!(dns < private, "{rules}");
        assert!(rules.contains("ip saddr 100.88.0.0/16 oifname != \"igx*\" masquerade"));
    }
}
