//! Prometheus metrics of one worker. Held by the store (which updates them
//! as blocks come and go) and registered into the registry passed to
//! `start`, so two workers in one process never share counters.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::store::TierUsage;

type TierLabels = Vec<(String, String)>;

#[derive(Clone, Default)]
pub struct WorkerMetrics {
    pub tier_capacity: Family<TierLabels, Gauge>,
    pub tier_used: Family<TierLabels, Gauge>,
    pub blocks: Family<TierLabels, Gauge>,
    pub read_bytes: Counter,
    pub write_bytes: Counter,
    pub blocks_written: Counter,
}

impl WorkerMetrics {
    /// Registers every metric; counters get the `_total` suffix from the
    /// encoder.
    pub fn register(&self, registry: &mut Registry) {
        registry.register("curvine_worker_tier_capacity_bytes", "Capacity of each tier", self.tier_capacity.clone());
        registry.register("curvine_worker_tier_used_bytes", "Bytes of sealed blocks per tier", self.tier_used.clone());
        registry.register("curvine_worker_blocks", "Sealed blocks per tier", self.blocks.clone());
        registry.register("curvine_worker_read_bytes", "Block bytes served to readers", self.read_bytes.clone());
        registry.register("curvine_worker_write_bytes", "Block bytes written", self.write_bytes.clone());
        registry.register("curvine_worker_blocks_written", "Blocks committed", self.blocks_written.clone());
    }

    /// Sets the per-tier gauges; tiers of the same kind are summed.
    pub(crate) fn set_tiers(&self, usage: &[TierUsage]) {
        let mut kinds: Vec<_> = usage.iter().map(|u| u.kind).collect();
        kinds.dedup();
        for kind in kinds {
            let labels = vec![("tier".to_string(), kind.as_str().to_string())];
            let of_kind = usage.iter().filter(|u| u.kind == kind);
            let (cap, used, blocks) =
                of_kind.fold((0u64, 0u64, 0u64), |(c, u, b), t| (c + t.capacity, u + t.used, b + t.blocks));
            self.tier_capacity.get_or_create(&labels).set(cap as i64);
            self.tier_used.get_or_create(&labels).set(used as i64);
            self.blocks.get_or_create(&labels).set(blocks as i64);
        }
    }
}
