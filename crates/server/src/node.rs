//! The node agent inside the server: warm instances per (app, version), spawned on demand.
//! (Scale to zero, reserved capacity and pools with limits come with the scaling work.)

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use ignite_agent::{Instance, Invocation, Reply, SpawnConfig, SpawnError};

type Key = (String, String, i64);

#[derive(Default)]
pub struct Node {
    idle: Mutex<HashMap<Key, Vec<Instance>>>,
}

/// How the request was served.
pub struct Served {
    pub reply: Result<Reply, SpawnError>,
    /// Spawn → ready, when no warm instance was there.
    pub init: Option<Duration>,
}

impl Node {
    pub async fn invoke(&self, key: Key, config: SpawnConfig, inv: Invocation) -> Served {
        let warm = self
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&key)
            .and_then(Vec::pop);
        let (mut instance, init) = match warm {
            Some(instance) => (instance, None),
            None => match Instance::spawn(&config).await {
                Ok(instance) => {
                    let init = instance.init_duration();
                    (instance, Some(init))
                }
                Err(e) => {
                    return Served {
                        reply: Err(e),
                        init: None,
                    };
                }
            },
        };
        let reply = instance.invoke(inv).await;
        if instance.is_alive() {
            self.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(key)
                .or_default()
                .push(instance);
        }
        Served {
            reply: Ok(reply),
            init,
        }
    }

    /// Stops every instance of an app (it was deleted).
    pub async fn evict_app(&self, org: &str, app: &str) {
        let gone: Vec<Instance> = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let keys: Vec<Key> = idle
                .keys()
                .filter(|(o, a, _)| o == org && a == app)
                .cloned()
                .collect();
            keys.iter()
                .filter_map(|k| idle.remove(k))
                .flatten()
                .collect()
        };
        for instance in gone {
            instance.shutdown(Duration::from_millis(500)).await;
        }
    }

    pub async fn shutdown(&self) {
        let all: Vec<Instance> = self
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .flat_map(|(_, v)| v)
            .collect();
        for instance in all {
            instance.shutdown(Duration::from_millis(500)).await;
        }
    }
}
