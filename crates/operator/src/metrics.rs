//! The operator's Prometheus metrics: per WorkerPool the desired, registered and busy
//! workers as of the last reconciliation, and counts of run Pods created, run Pods that
//! died without their sidecar reporting, and runs failed because their Pod never started.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    pub namespace: String,
    pub workerpool: String,
}

/// Recorded from every reconciliation and run; rendered at scrape time.
#[derive(Debug)]
pub struct OperatorMetrics {
    registry: Registry,
    desired: Family<PoolLabel, Gauge>,
    registered: Family<PoolLabel, Gauge>,
    busy: Family<PoolLabel, Gauge>,
    pods_created: Family<PoolLabel, Counter>,
    pods_died: Family<PoolLabel, Counter>,
    pods_never_started: Family<PoolLabel, Counter>,
}

impl Default for OperatorMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("gantry_operator");
        let metrics = Self {
            desired: Family::default(),
            registered: Family::default(),
            busy: Family::default(),
            pods_created: Family::default(),
            pods_died: Family::default(),
            pods_never_started: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "workers_desired",
            "spec.poolSize of the WorkerPool",
            metrics.desired.clone(),
        );
        registry.register(
            "workers_registered",
            "Workers of the WorkerPool registered with the server",
            metrics.registered.clone(),
        );
        registry.register("workers_busy", "Workers executing a run in a Pod", metrics.busy.clone());
        registry.register("run_pods_created", "Run Pods created", metrics.pods_created.clone());
        registry.register(
            "run_pods_died",
            "Run Pods that failed; the operator reported the run failed unless its sidecar had",
            metrics.pods_died.clone(),
        );
        registry.register(
            "run_pods_never_started",
            "Runs failed because their Pod did not start within the pending timeout",
            metrics.pods_never_started.clone(),
        );
        Self { registry, ..metrics }
    }
}

impl OperatorMetrics {
    pub fn pool_sizes(&self, pool: &PoolLabel, desired: i32, registered: i32, busy: i32) {
        self.desired.get_or_create(pool).set(i64::from(desired));
        self.registered.get_or_create(pool).set(i64::from(registered));
        self.busy.get_or_create(pool).set(i64::from(busy));
    }

    pub fn pod_created(&self, pool: &PoolLabel) {
        self.pods_created.get_or_create(pool).inc();
    }

    pub fn pod_died(&self, pool: &PoolLabel) {
        self.pods_died.get_or_create(pool).inc();
    }

    pub fn pod_never_started(&self, pool: &PoolLabel) {
        self.pods_never_started.get_or_create(pool).inc();
    }

    pub fn render(&self) -> String {
        gantry_metrics::encode(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_sizes_and_pod_counts_are_rendered_per_pool() {
        let metrics = OperatorMetrics::default();
        let pool = PoolLabel { namespace: "runners".into(), workerpool: "wp".into() };
        metrics.pool_sizes(&pool, 3, 2, 1);
        metrics.pod_created(&pool);
        metrics.pod_created(&pool);
        metrics.pod_died(&pool);
        let text = metrics.render();
        for line in [
            r#"gantry_operator_workers_desired{namespace="runners",workerpool="wp"} 3"#,
            r#"gantry_operator_workers_registered{namespace="runners",workerpool="wp"} 2"#,
            r#"gantry_operator_workers_busy{namespace="runners",workerpool="wp"} 1"#,
            r#"gantry_operator_run_pods_created_total{namespace="runners",workerpool="wp"} 2"#,
            r#"gantry_operator_run_pods_died_total{namespace="runners",workerpool="wp"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
