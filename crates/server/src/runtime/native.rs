//! Native instances: the version's static binary, started in the sandbox (through a pre-made
//! zygote) by `ignite-agent`, one process serving up to `concurrency` requests at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ignite_agent::{Invocation, SpawnConfig, SpawnError};
use ignite_sandbox::Sandbox;

use super::{
    BoxFuture, ColdStart, Instance, Invoked, Launcher, StartError, StartSettings, Started,
};

impl Instance for ignite_agent::Instance {
    fn invoke(&self, invocation: Invocation) -> BoxFuture<'_, Invoked> {
        Box::pin(async move {
            Invoked {
                reply: ignite_agent::Instance::invoke(self, invocation).await,
                start: None,
            }
        })
    }

    fn is_alive(&self) -> bool {
        ignite_agent::Instance::is_alive(self)
    }

    fn has_exited(&self) -> bool {
        ignite_agent::Instance::has_exited(self)
    }

    fn shutdown(&self, grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(ignite_agent::Instance::shutdown(self, grace))
    }
}

/// Starts processes of one binary with the version's environment.
pub struct NativeLauncher {
    pub blobs: Arc<crate::blobs::Blobs>,
    /// The binary's digest.
    pub digest: String,
    pub env: Vec<(String, String)>,
    /// Where instances run; `None` when the operator turned the sandbox off.
    pub sandbox: Option<Sandbox>,
}

impl From<SpawnError> for StartError {
    fn from(e: SpawnError) -> StartError {
        StartError {
            logs: e.logs().map(|l| l.lines.clone()).unwrap_or_default(),
            message: e.to_string(),
        }
    }
}

impl Launcher for NativeLauncher {
    fn start(&self, settings: StartSettings) -> BoxFuture<'_, Started> {
        Box::pin(async move {
            let t0 = Instant::now();
            // Finding the binary on this node, or pulling it from the platform registry.
            let program = super::fetched(&self.blobs, &self.digest).await?;
            let fetch = t0.elapsed();
            let mut config = SpawnConfig::new(&program);
            config.env = self.env.clone();
            if let Some(sandbox) = &self.sandbox {
                config.sandbox = Some((sandbox.clone(), settings.limits()));
            }
            let instance = ignite_agent::Instance::spawn(&config).await?;
            let cold = ColdStart {
                fetch,
                spawn: instance.spawn_duration(),
                init: instance.init_duration(),
                ..ColdStart::default()
            };
            Ok((Arc::new(instance) as Arc<dyn Instance>, cold))
        })
    }
}
