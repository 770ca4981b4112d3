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
    /// Reads served from a block already cached.
    pub cache_hits: Counter,
    /// Reads that waited for a load from the UFS.
    pub cache_misses: Counter,
    pub bytes_from_cache: Counter,
    pub bytes_from_ufs: Counter,
    pub ufs_loads: Counter,
    /// Reads served from a block while it was still arriving from the UFS.
    pub reads_while_loading: Counter,
    pub ufs_load_errors: Counter,
    /// Files uploaded to a UFS (write-through / write-back).
    pub ufs_uploads: Counter,
    pub bytes_to_ufs: Counter,
    /// Blocks moved to a slower tier / a faster tier / out of the cache.
    pub blocks_demoted: Counter,
    pub blocks_promoted: Counter,
    pub blocks_evicted: Counter,
    pub bytes_moved: Counter,
    /// Blocks dropped because a chunk failed its crc32c.
    pub blocks_corrupt: Counter,
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
        registry.register("curvine_worker_cache_hits", "Reads served from cached blocks", self.cache_hits.clone());
        registry.register("curvine_worker_cache_misses", "Reads that waited for a UFS load", self.cache_misses.clone());
        registry.register("curvine_worker_bytes_from_cache", "Bytes served from cached blocks", self.bytes_from_cache.clone());
        registry.register("curvine_worker_bytes_from_ufs", "Bytes loaded from the UFS", self.bytes_from_ufs.clone());
        registry.register("curvine_worker_ufs_loads", "Blocks loaded from the UFS", self.ufs_loads.clone());
        registry.register(
            "curvine_worker_reads_while_loading",
            "Reads served from a block still arriving from the UFS",
            self.reads_while_loading.clone(),
        );
        registry.register("curvine_worker_ufs_uploads", "Files uploaded to a UFS", self.ufs_uploads.clone());
        registry.register("curvine_worker_bytes_to_ufs", "Bytes uploaded to a UFS", self.bytes_to_ufs.clone());
        registry.register("curvine_worker_blocks_demoted", "Blocks moved to a slower tier", self.blocks_demoted.clone());
        registry.register("curvine_worker_blocks_promoted", "Blocks moved to a faster tier", self.blocks_promoted.clone());
        registry.register("curvine_worker_blocks_evicted", "Blocks dropped from the cache", self.blocks_evicted.clone());
        registry.register("curvine_worker_tier_moved_bytes", "Bytes copied between tiers", self.bytes_moved.clone());
        registry.register("curvine_worker_blocks_corrupt", "Blocks dropped for a failed crc32c", self.blocks_corrupt.clone());
        registry.register("curvine_worker_ufs_load_errors", "Block loads from the UFS that failed", self.ufs_load_errors.clone());
    }

    /// The cache counters as sent to meta with each heartbeat.
    pub fn cache_stats(&self) -> curvine_common::proto::CacheStats {
        curvine_common::proto::CacheStats {
            hits: self.cache_hits.get(),
            misses: self.cache_misses.get(),
            bytes_from_cache: self.bytes_from_cache.get(),
            bytes_from_ufs: self.bytes_from_ufs.get(),
            loads: self.ufs_loads.get(),
            load_errors: self.ufs_load_errors.get(),
        }
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
