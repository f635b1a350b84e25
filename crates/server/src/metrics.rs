//! The server's Prometheus metrics, served at `/metrics` on the API listener.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub(crate) type Labels = Vec<(String, String)>;

fn latency_histogram() -> Histogram {
    // 50 µs … ~3.3 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 17))
}

pub struct Metrics {
    registry: Registry,
    pub invocations: Family<Labels, Counter>,
    pub cold_starts: Family<Labels, Counter>,
    pub throttled: Family<Labels, Counter>,
    pub duration: Family<Labels, Histogram, fn() -> Histogram>,
    pub cold_start: Family<Labels, Histogram, fn() -> Histogram>,
    pub instances: Family<Labels, Gauge>,
    pub queue_depth: Family<Labels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ignite");
        let invocations = Family::<Labels, Counter>::default();
        let cold_starts = Family::<Labels, Counter>::default();
        let throttled = Family::<Labels, Counter>::default();
        let duration = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let cold_start = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let instances = Family::<Labels, Gauge>::default();
        let queue_depth = Family::<Labels, Gauge>::default();
        registry.register(
            "invocations",
            "Invocations by app and final status",
            invocations.clone(),
        );
        registry.register(
            "cold_starts",
            "Invocations that started an instance",
            cold_starts.clone(),
        );
        registry.register(
            "throttled",
            "Requests refused with 429 (queue full)",
            throttled.clone(),
        );
        registry.register(
            "invocation_duration_seconds",
            "Handler run time",
            duration.clone(),
        );
        registry.register(
            "cold_start_seconds",
            "Spawn to ready, for cold invocations",
            cold_start.clone(),
        );
        registry.register(
            "instances",
            "Running instances by app and state",
            instances.clone(),
        );
        registry.register(
            "queue_depth",
            "Requests waiting for an instance",
            queue_depth.clone(),
        );
        Metrics {
            registry,
            invocations,
            cold_starts,
            throttled,
            duration,
            cold_start,
            instances,
            queue_depth,
        }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

pub fn app_label(org: &str, app: &str) -> Labels {
    vec![("app".into(), format!("{org}:{app}"))]
}
