//! Prometheus metrics of the meta service.

use std::sync::Weak;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::store::{StateStore, KEY_DIRS, KEY_FILES};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub op: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: &'static str,
}

/// Handles to every meta metric; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    pub rpc_total: Family<RpcLabels, Counter>,
    pub rpc_seconds: Family<OpLabel, Histogram>,
    pub workers_alive: Gauge,
    /// Entries or listings re-read from a UFS.
    pub ufs_syncs: Counter,
    /// Cluster cache counters, as last summed from worker heartbeats.
    pub cache_hits: Gauge,
    pub cache_misses: Gauge,
    /// Cached block copies clients found failing their checksum.
    pub corrupt_reports: Counter,
    /// Lock sessions whose locks were freed because their client went silent.
    pub locks_expired: Counter,
}

impl Metrics {
    /// Registers the meta metrics; the namespace's size is read from
    /// `store` at each scrape.
    pub fn new(registry: &mut Registry, store: Weak<StateStore>) -> Metrics {
        let m = Metrics {
            rpc_total: Family::default(),
            rpc_seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 16))),
            workers_alive: Gauge::default(),
            ufs_syncs: Counter::default(),
            cache_hits: Gauge::default(),
            cache_misses: Gauge::default(),
            corrupt_reports: Counter::default(),
            locks_expired: Counter::default(),
        };
        registry.register("curvine_meta_rpc", "Meta RPCs by operation and result", m.rpc_total.clone());
        registry.register("curvine_meta_rpc_seconds", "Meta RPC latency", m.rpc_seconds.clone());
        registry.register_collector(Box::new(Inodes(store)));
        registry.register("curvine_meta_workers_alive", "Workers heard from within the timeout", m.workers_alive.clone());
        registry.register("curvine_meta_ufs_syncs", "UFS entries and listings merged into the namespace", m.ufs_syncs.clone());
        registry.register("curvine_meta_cache_hits", "Cluster-wide reads served from cache (from heartbeats)", m.cache_hits.clone());
        registry.register("curvine_meta_cache_misses", "Cluster-wide reads that loaded from the UFS (from heartbeats)", m.cache_misses.clone());
        registry.register("curvine_meta_corrupt_blocks", "Cached block copies reported corrupt by clients", m.corrupt_reports.clone());
        registry.register(
            "curvine_meta_lock_sessions_expired",
            "Clients whose cluster-wide locks were freed after a lease of silence",
            m.locks_expired.clone(),
        );
        m
    }

    pub fn record<T>(&self, op: &'static str, start: std::time::Instant, res: &Result<T, tonic::Status>) {
        let result = if res.is_ok() { "ok" } else { "error" };
        self.rpc_total.get_or_create(&RpcLabels { op, result }).inc();
        self.rpc_seconds.get_or_create(&OpLabel { op }).observe(start.elapsed().as_secs_f64());
    }
}

/// `curvine_meta_inodes`: read from this member's own state machine when
/// scraped (two counters), so every member reports it, and writes do not
/// pay for keeping a gauge current. Holds the store weakly: metrics must not
/// keep a stopped node's database open.
#[derive(Debug)]
struct Inodes(Weak<StateStore>);

impl Collector for Inodes {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(store) = self.0.upgrade() else { return Ok(()) };
        let r = crate::store::Reader { db: store.db() };
        let (Ok(files), Ok(dirs)) = (r.sys_u64(KEY_FILES), r.sys_u64(KEY_DIRS)) else { return Ok(()) };
        let g = ConstGauge::new((files + dirs) as i64);
        let m = encoder.encode_descriptor("curvine_meta_inodes", "Files and directories in the namespace", None, g.metric_type())?;
        g.encode(m)
    }
}
