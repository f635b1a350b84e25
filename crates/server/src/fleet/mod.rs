//! The fleet: the same server split by role across hosts. `--role all` (the default) is one
//! process doing everything, exactly as on a single machine. `--role control` serves the API,
//! builds and the gateway, and runs no instance of its own: every request goes to a node.
//! `--role node` runs instances only: it registers with the control plane by heartbeat (with the
//! fleet's node token, never an org token), and serves the gateway's requests on its node
//! listener over HTTP/2.
//!
//! Who knows what:
//! - The store (PostgreSQL, shared by the control replicas) holds the nodes' registrations and
//!   their last reports (`store::nodes`); a replica's view of the fleet is what the store said
//!   at its last refresh ([`REFRESH`]), so every replica places and assigns alike.
//! - A node holds no store of the platform: each request it is sent carries the app and version
//!   it runs ([`wire::Dispatch`]), and each heartbeat's answer says what its pools should be
//!   (the active versions of the apps it holds, its share of reserved capacity).
//! - Execution records are written by the control replica that ends the request, once, whatever
//!   the node did: a node lost mid-request cannot write a second record when it comes back.

pub(crate) mod control;
pub(crate) mod node;
pub(crate) mod wire;

use std::net::SocketAddr;
use std::time::Duration;

/// How often a node reports to the control plane.
pub const HEARTBEAT: Duration = Duration::from_millis(250);
/// A node not heard from for this long is lost: its requests in flight answer 502 `node_lost`,
/// new ones go elsewhere, and its reserved capacity is placed on the others.
/// Six missed heartbeats: a node (or a control replica) loaded to its limit on a small machine
/// still answers within it, and a partition is routed around within 2 s (this, and a refresh).
pub const LOST_AFTER: Duration = Duration::from_millis(1500);
/// How often a control replica reads the fleet's registrations from the store.
pub const REFRESH: Duration = Duration::from_millis(200);

/// What this process is in the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Everything in one process (the single-machine default).
    #[default]
    All,
    /// API, builds and gateway; instances run on nodes.
    Control,
    /// Instances only, for the control plane's gateway.
    Node,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "all" => Ok(Role::All),
            "control" => Ok(Role::Control),
            "node" => Ok(Role::Node),
            other => Err(format!(
                "--role {other:?} is not a role; use `all` (one process, the default), `control` \
                 (API, builds, gateway) or `node` (instances)"
            )),
        }
    }
}

/// How this process takes part in a fleet.
#[derive(Debug, Clone, Default)]
pub struct FleetSettings {
    pub role: Role,
    /// The secret nodes register with and the control plane calls nodes with.
    pub node_token: Option<String>,
    /// A node: the control plane's API, tried in turn.
    pub control_urls: Vec<String>,
    /// A node: where the gateway's requests arrive.
    pub node_listen: Option<SocketAddr>,
    /// A node: the address the control plane dials (default: the listen address).
    pub advertise: Option<String>,
    /// A node: its name in the fleet (default: the host's name).
    pub node_id: Option<String>,
}

impl FleetSettings {
    /// Whether the settings make sense for the role, with what to fix if not.
    pub fn check(&self) -> Result<(), String> {
        let token_ok = self.node_token.as_deref().is_some_and(|t| t.len() >= 16);
        match self.role {
            Role::All => Ok(()),
            Role::Control if !token_ok => Err(
                "--role control needs --node-token (or IGNITE_NODE_TOKEN), a secret of at least \
                 16 characters that the nodes are given too"
                    .into(),
            ),
            Role::Node if !token_ok => Err(
                "--role node needs --node-token (or IGNITE_NODE_TOKEN), the secret the control \
                 plane was given (at least 16 characters)"
                    .into(),
            ),
            Role::Node if self.control_urls.is_empty() => Err(
                "--role node needs --control-url http://<control plane API>, where it registers"
                    .into(),
            ),
            Role::Node => {
                for url in &self.control_urls {
                    if !url.starts_with("http://") && !url.starts_with("https://") {
                        return Err(format!(
                            "--control-url {url:?} is not an http:// or https:// URL"
                        ));
                    }
                }
                Ok(())
            }
            Role::Control => Ok(()),
        }
    }

    /// The node's name: `--node-id`, else the host's name.
    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "node".into())
        })
    }
}

/// Whether `header` (an `Authorization` value) carries the fleet's node token. Compared in
/// constant time over digests, so neither the token nor its length leaks through timing.
pub fn authorized(header: Option<&str>, token: &str) -> bool {
    use sha2::Digest;
    use subtle::ConstantTimeEq;
    let Some(given) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    let (a, b) = (sha2::Sha256::digest(given), sha2::Sha256::digest(token));
    a.ct_eq(&b).into()
}
