//! What the control plane and its nodes say to each other. Dispatches and their outcomes are
//! postcard over HTTP/2 (a request body is up to 6 MiB of bytes; JSON would spell each as a
//! number); heartbeats are JSON over HTTP/1.1 to the control plane's API.

use std::time::Duration;

use ignite_invocation::{HttpRequest, Reply};
use serde::{Deserialize, Serialize};

use crate::runtime::ColdStart;
use crate::store::{App, Version};

/// The node's endpoint for a dispatch (`POST`, postcard [`Dispatch`] in, [`Ran`] out).
pub const INVOKE_PATH: &str = "/v1/node/invoke";
/// The control plane's endpoint for heartbeats (`POST`, JSON [`Heartbeat`] in,
/// [`HeartbeatAnswer`] out).
pub const HEARTBEAT_PATH: &str = "/v1/fleet/heartbeat";

/// One request for a node to run: the app as the control plane sees it (with this node's
/// share of `max_instances` and `reserved_capacity` in its scaling), the active version, and
/// what is left of the deadline.
#[derive(Debug, Serialize, Deserialize)]
pub struct Dispatch {
    pub execution_id: String,
    pub app: App,
    pub version: Version,
    pub deadline: Duration,
    pub request: HttpRequest,
}

/// How a dispatch ended on the node.
#[derive(Debug, Serialize, Deserialize)]
pub enum Ran {
    /// An instance ran it.
    Done {
        reply: Reply,
        /// The cold start this request waited for, if it did.
        cold: Option<ColdStart>,
        queued: Duration,
    },
    QueueFull {
        depth: u32,
    },
    Deadline {
        waited: Duration,
    },
    /// The node's instance budget is spent: the control plane tries another node.
    NodeFull {
        instances: u32,
    },
    Stopping,
    StartFailed {
        message: String,
        logs: Vec<String>,
    },
}

/// One pool on a node, as its heartbeat reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PoolReport {
    pub org: String,
    pub app: String,
    pub version: i64,
    pub egress: bool,
    /// Instances running or starting.
    pub instances: u32,
    pub idle: u32,
}

/// A node's heartbeat: who it is, where to reach it, what it holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node_id: String,
    pub address: String,
    /// Changes with every start of the node process.
    pub incarnation: String,
    /// The node's instance budget.
    pub capacity: u32,
    /// Instances running or starting, all pools together.
    pub running: u32,
    pub pools: Vec<PoolReport>,
}

/// What the control plane answers a heartbeat with: what the node's pools should be.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct HeartbeatAnswer {
    /// The control plane had counted the node lost (its requests answered `node_lost`): what
    /// it still runs is stale, and is drained.
    pub rejoined: bool,
    /// For every app the node reported and every app it holds reserved capacity for: the app
    /// (its scaling carrying this node's share) and its active version. A reported app that is
    /// not here has no active version any more.
    pub routes: Vec<(App, Version)>,
}
