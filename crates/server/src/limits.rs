//! What one node may hold and what one app may ask for: the operator's budgets, with defaults
//! derived from the machine. Scaling requests past an app limit are refused (400 naming it);
//! a cold start that finds the node's instance budget spent first stops the least recently
//! used idle instance of any app, and only when every instance is busy answers the requesting
//! app 503 with `Retry-After` — never another app's request.

use ignite_api::ScalingConfig;

/// Descriptors the server holds per running instance (its pipes, pidfd, zygote socket, cgroup
/// files), with room to spare.
pub const FDS_PER_INSTANCE: u64 = 8;
/// Descriptors kept back for the store, builds, zygotes and the rest of the server (a quarter of
/// them when the limit is small).
pub const FDS_RESERVED: u64 = 4096;
/// Processes counted per instance: the SDK's pid 1 and the handler, and room for a few more.
pub const PIDS_PER_INSTANCE: u64 = 4;
/// The longest queue one app may set.
pub const MAX_QUEUE_DEPTH: u32 = 10_000;

/// The operator's budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Instances running on the node at once, all apps together.
    pub node_instances: u32,
    /// The most `max_instances` one app may set.
    pub app_instances: u32,
    /// Instances kept warm (`reserved_capacity`) over all apps together.
    pub reserved_instances: u32,
    /// The most `memory_mb` one instance may have.
    pub instance_memory_mb: u32,
    /// Connections each listener (API, gateway) holds at once; a quarter of them, at most
    /// 256, from one client address.
    pub connections: u32,
}

/// The operator's settings; each one not given is derived from the machine.
#[derive(Debug, Clone, Copy, Default)]
pub struct LimitSettings {
    pub node_instances: Option<u32>,
    pub app_instances: Option<u32>,
    pub reserved_instances: Option<u32>,
    pub instance_memory_mb: Option<u32>,
    /// Connections one client address may hold on each listener.
    pub connections_per_client: Option<u32>,
    /// Seconds a request's headers may take to arrive.
    pub header_timeout_s: Option<u64>,
    /// Seconds a connection may sit without traffic.
    pub idle_connection_s: Option<u64>,
}

/// What the machine offers, read once at start.
#[derive(Debug, Clone, Copy)]
pub struct Machine {
    /// The soft `RLIMIT_NOFILE` after raising it to the hard limit.
    pub open_files: u64,
    /// The kernel's process (task) limit: the smaller of `pid_max` and `threads-max`.
    pub processes: u64,
    /// Physical memory, in MiB.
    pub memory_mb: u64,
}

impl Machine {
    /// Reads this machine (unknown figures count as plenty, leaving the others to decide).
    pub fn read(open_files: u64) -> Machine {
        let number = |path: &str| {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
        };
        let processes = match (
            number("/proc/sys/kernel/pid_max"),
            number("/proc/sys/kernel/threads-max"),
        ) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(u64::MAX),
        };
        let memory_mb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            })
            .map_or(u64::MAX, |kib| kib / 1024);
        Machine {
            open_files,
            processes,
            memory_mb,
        }
    }
}

impl Limits {
    /// The defaults for a machine: the instance budget is what its descriptors (four fifths of
    /// those past the reserve; the last fifth is for connections), processes and
    /// memory (8 MiB per idle instance) each allow, whichever is least, at most 4096; one app
    /// may use a quarter of it, and warm (reserved) instances half of it; an instance may have
    /// a quarter of the memory, at most 10 GiB (Lambda's largest).
    pub fn for_machine(m: Machine) -> Limits {
        // A fifth of the descriptors past the reserve go to connections, the rest to instances.
        // A small descriptor limit keeps a quarter back instead of the full reserve.
        let spare_fds = m
            .open_files
            .saturating_sub(FDS_RESERVED.min(m.open_files / 4));
        let connections = (spare_fds / 5 / 2).clamp(64, 65_536) as u32;
        let by_fds = (spare_fds - spare_fds / 5) / FDS_PER_INSTANCE;
        let by_pids = m.processes.saturating_sub(2048) / PIDS_PER_INSTANCE;
        let by_memory = m.memory_mb / 8;
        let node = by_fds.min(by_pids).min(by_memory).clamp(4, 4096) as u32;
        Limits {
            node_instances: node,
            app_instances: (node / 4).max(1),
            reserved_instances: (node / 2).max(1),
            instance_memory_mb: (m.memory_mb / 4).clamp(128, 10240) as u32,
            connections,
        }
    }

    /// `scaling` brought within these limits (an app's defaults on a small node).
    pub fn clamp(&self, mut scaling: ScalingConfig) -> ScalingConfig {
        scaling.max_instances = scaling.max_instances.min(self.app_instances);
        scaling.reserved_capacity = scaling.reserved_capacity.min(scaling.max_instances);
        scaling.memory_mb = scaling.memory_mb.min(self.instance_memory_mb);
        scaling
    }

    /// Why `scaling`, changed from `before`, is over one of these limits, naming it and how to
    /// get under it. A setting left as it was is not refused (the operator may have lowered a
    /// limit since; admission applies the limit anyway).
    pub fn problem(&self, scaling: &ScalingConfig, before: &ScalingConfig) -> Option<String> {
        if scaling.max_instances > self.app_instances
            && scaling.max_instances != before.max_instances
        {
            return Some(format!(
                "max_instances {} is over this node's limit of {} instances per app (the \
                 operator's --app-instances); ask for at most {}",
                scaling.max_instances, self.app_instances, self.app_instances
            ));
        }
        if scaling.memory_mb > self.instance_memory_mb && scaling.memory_mb != before.memory_mb {
            return Some(format!(
                "memory_mb {} is over this node's limit of {} MiB per instance (the operator's \
                 --instance-memory-mb)",
                scaling.memory_mb, self.instance_memory_mb
            ));
        }
        if scaling.queue_depth > MAX_QUEUE_DEPTH && scaling.queue_depth != before.queue_depth {
            return Some(format!(
                "queue_depth {} is over the limit of {MAX_QUEUE_DEPTH} waiting requests; a \
                 longer queue only makes callers wait past their deadline — raise \
                 --max-instances instead",
                scaling.queue_depth
            ));
        }
        None
    }

    /// Why `wanted` warm instances for one app, with `others` kept warm for the other apps,
    /// is over the node's reserve.
    pub fn reserve_problem(&self, wanted: u32, others: u64) -> Option<String> {
        let total = others + u64::from(wanted);
        (total > u64::from(self.reserved_instances)).then(|| {
            format!(
                "reserved_capacity {wanted} would keep {total} instances warm on this node, over \
                 its limit of {} (the operator's --reserved-instances; {others} are already \
                 reserved by other apps); ask for at most {}",
                self.reserved_instances,
                u64::from(self.reserved_instances).saturating_sub(others)
            )
        })
    }

    /// These limits with the operator's settings applied; an app may have at most the node's
    /// budget, and so may the reserve.
    pub fn with(mut self, settings: &LimitSettings) -> Limits {
        if let Some(n) = settings.node_instances {
            self.node_instances = n.max(1);
            self.app_instances = self.app_instances.min(self.node_instances);
            self.reserved_instances = self.reserved_instances.min(self.node_instances);
        }
        if let Some(n) = settings.app_instances {
            self.app_instances = n.clamp(1, self.node_instances);
        }
        if let Some(n) = settings.reserved_instances {
            self.reserved_instances = n.min(self.node_instances);
        }
        if let Some(n) = settings.instance_memory_mb {
            self.instance_memory_mb = n.max(16);
        }
        self
    }

    /// One line for the server's start-up output.
    pub fn describe(&self) -> String {
        format!(
            "up to {} instances on this node, {} per app, {} kept warm, {} MiB each",
            self.node_instances,
            self.app_instances,
            self.reserved_instances,
            self.instance_memory_mb
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smallest_resource_sets_the_budget() {
        let m = Machine {
            open_files: 20_000,
            processes: 32_768,
            memory_mb: 24_000,
        };
        let l = Limits::for_machine(m);
        // Descriptors are the tightest here: (20000 - 4096) * 4/5 / 8.
        assert_eq!(l.node_instances, 1590);
        assert_eq!(l.app_instances, 397);
        assert_eq!(l.reserved_instances, 795);
        assert_eq!(l.connections, 1590);
        assert_eq!(l.instance_memory_mb, 6000);
        // A hard limit of 4,096 descriptors still leaves room for instances.
        let tight = Limits::for_machine(Machine {
            open_files: 4096,
            processes: 32_768,
            memory_mb: 24_000,
        });
        assert_eq!(tight.node_instances, 307);
        assert_eq!(tight.app_instances, 76);
        let small = Limits::for_machine(Machine {
            open_files: 1 << 20,
            processes: 1 << 22,
            memory_mb: 1024,
        });
        assert_eq!(small.node_instances, 128);
        assert_eq!(small.instance_memory_mb, 256);
    }

    #[test]
    fn scaling_past_a_limit_names_it() {
        let l = Limits::for_machine(Machine {
            open_files: 20_000,
            processes: 32_768,
            memory_mb: 24_000,
        });
        let before = ScalingConfig::default();
        let mut s = ScalingConfig {
            max_instances: 4000,
            ..ScalingConfig::default()
        };
        assert!(
            l.problem(&s, &before)
                .is_some_and(|p| p.contains("--app-instances"))
        );
        // Left as it was: not this request's doing.
        assert_eq!(l.problem(&s, &s.clone()), None);
        s.max_instances = 10;
        s.memory_mb = 4_000_000;
        assert!(
            l.problem(&s, &before)
                .is_some_and(|p| p.contains("--instance-memory-mb"))
        );
        s.memory_mb = 128;
        assert_eq!(l.problem(&s, &before), None);
        let small = Limits {
            app_instances: 2,
            ..l
        };
        assert_eq!(small.clamp(ScalingConfig::default()).max_instances, 2);
        assert!(l.reserve_problem(795, 0).is_none());
        assert!(
            l.reserve_problem(10, 790)
                .is_some_and(|p| p.contains("at most 5"))
        );
    }
}
