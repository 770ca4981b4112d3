//! Cluster configuration: a TOML file, overridden by environment and flags.
//! Unknown keys are rejected with the key named, so a typo never silently
//! falls back to a default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::size::ByteSize;

pub const DEFAULT_META_PORT: u16 = 8995;
pub const DEFAULT_WORKER_PORT: u16 = 8997;
pub const DEFAULT_WEB_PORT: u16 = 9001;
pub const DEFAULT_BLOCK_SIZE: u64 = 64 << 20;
pub const DEFAULT_META_ADDR: &str = "127.0.0.1:8995";

#[derive(Clone, Debug, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub cluster: ClusterConf,
    pub meta: MetaConf,
    pub worker: WorkerConf,
    pub web: WebConf,
    pub client: ClientConf,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConf {
    /// Default block size of new files.
    pub block_size: ByteSize,
    /// Default replication factor of new files.
    pub replication: u32,
}

impl Default for ClusterConf {
    fn default() -> Self {
        ClusterConf { block_size: ByteSize(DEFAULT_BLOCK_SIZE), replication: 1 }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetaConf {
    /// Raft node id of this member.
    pub id: u64,
    pub host: String,
    pub port: u16,
    /// RocksDB state (raft log, state machine, snapshots).
    pub dir: PathBuf,
    /// fsync the raft log on every append: what is acknowledged survives
    /// power loss, not only a process crash.
    pub log_sync: bool,
    /// A worker silent for this long is considered dead.
    #[serde(with = "humantime_serde_compat")]
    pub worker_timeout: Duration,
    /// Raft log entries between snapshots.
    pub snapshot_logs: u64,
    /// The members of a new group, `ID=HOST:PORT` each, this node among
    /// them; every member is started with the same list and the group forms
    /// on first start. Empty: a one-member group.
    pub peers: Vec<String>,
    /// Start as a new member waiting to be added to a running group
    /// (`cv meta members add`), instead of forming one.
    pub join: bool,
    /// A write not committed within this long fails with "no quorum".
    #[serde(with = "humantime_serde_compat")]
    pub write_timeout: Duration,
    /// Serve stat/list/open on a follower when the client asks for
    /// follower reads (not linearizable: see docs/architecture.md).
    pub follower_reads: bool,
    /// A client (FUSE mount) holding cluster-wide locks that has not
    /// renewed its session for this long loses them (a dead mount's locks
    /// are freed).
    #[serde(with = "humantime_serde_compat")]
    pub lock_lease: Duration,
}

impl MetaConf {
    /// `peers` as (id, address), checked: ids unique, this node included.
    pub fn peer_map(&self) -> Result<std::collections::BTreeMap<u64, String>> {
        let mut m = std::collections::BTreeMap::new();
        for p in &self.peers {
            let bad = |why: &str| Error::new(ErrorKind::Config, format!("meta.peers: '{p}': {why} (expected ID=HOST:PORT)"));
            let (id, addr) = p.split_once('=').ok_or_else(|| bad("no '='"))?;
            let id: u64 = id.trim().parse().map_err(|_| bad("the id is not a number"))?;
            let addr = addr.trim();
            if id == 0 || !addr.contains(':') || addr.ends_with(':') {
                return Err(bad("bad id or address"));
            }
            if m.insert(id, addr.to_string()).is_some() {
                return Err(bad("id listed twice"));
            }
        }
        if !m.is_empty() && !m.contains_key(&self.id) {
            return Err(Error::new(ErrorKind::Config, format!("meta.peers does not list this node's id {}", self.id)));
        }
        Ok(m)
    }
}

impl Default for MetaConf {
    fn default() -> Self {
        MetaConf {
            id: 1,
            host: "127.0.0.1".into(),
            port: DEFAULT_META_PORT,
            dir: PathBuf::from("meta"),
            log_sync: true,
            worker_timeout: Duration::from_secs(10),
            snapshot_logs: 100_000,
            peers: Vec::new(),
            join: false,
            write_timeout: Duration::from_secs(10),
            follower_reads: false,
            lock_lease: Duration::from_secs(30),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TierConf {
    /// MEM, SSD or HDD: the order of tiers is the order of this list.
    pub kind: String,
    pub dir: PathBuf,
    pub capacity: ByteSize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConf {
    pub host: String,
    pub port: u16,
    /// Worker state (its id).
    pub dir: PathBuf,
    /// Meta addresses (host:port) this worker reports to.
    pub meta: Vec<String>,
    #[serde(with = "humantime_serde_compat")]
    pub heartbeat_interval: Duration,
    /// fsync block files on commit (disk tiers only).
    pub sync_on_commit: bool,
    /// Hand block files to clients on this host over a Unix socket
    /// (`<dir>/data.sock`) instead of streaming them over TCP.
    pub short_circuit: bool,
    /// Rack (or zone) label: readers prefer a copy on their own host, then
    /// one in their own rack, then any.
    pub rack: String,
    /// RDMA for clients that ask (builds with the `rdma` feature only).
    pub rdma: RdmaConf,
    pub tiers: Vec<TierConf>,
    /// How blocks are ranked for demotion and eviction: `lru` (least
    /// recently read first) or `lfu` (least frequently read, with counts
    /// that halve every `lfu_half_life`).
    pub eviction: String,
    #[serde(with = "humantime_serde_compat")]
    pub lfu_half_life: Duration,
    /// A tier filled above `high_watermark` (a fraction of its capacity)
    /// sheds its coldest blocks until it is down to `low_watermark`: into a
    /// slower tier that has room, else (only blocks the UFS holds and that
    /// are not pinned) out of the cache.
    pub high_watermark: f64,
    pub low_watermark: f64,
    /// Reads of a block in a slower tier that move it up to a faster one
    /// with room (0 = never promote).
    pub promote_after: u32,
    /// Bytes per second that demotion and promotion may copy between tiers.
    pub move_bandwidth: ByteSize,
    /// How often the tiers are checked against their watermarks.
    #[serde(with = "humantime_serde_compat")]
    pub tiering_interval: Duration,
}

impl Default for WorkerConf {
    fn default() -> Self {
        WorkerConf {
            host: "127.0.0.1".into(),
            port: DEFAULT_WORKER_PORT,
            dir: PathBuf::from("worker"),
            meta: vec![DEFAULT_META_ADDR.into()],
            heartbeat_interval: Duration::from_secs(1),
            sync_on_commit: false,
            short_circuit: true,
            rack: String::new(),
            rdma: RdmaConf::default(),
            tiers: Vec::new(),
            eviction: "lru".into(),
            lfu_half_life: Duration::from_secs(600),
            high_watermark: 0.95,
            low_watermark: 0.85,
            promote_after: 2,
            move_bandwidth: ByteSize(512 << 20),
            tiering_interval: Duration::from_secs(1),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConf {
    pub host: String,
    pub port: u16,
}

impl Default for WebConf {
    fn default() -> Self {
        WebConf { host: "127.0.0.1".into(), port: DEFAULT_WEB_PORT }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConf {
    pub meta: Vec<String>,
    /// Block size for files this client creates (0 = cluster default).
    pub block_size: ByteSize,
    /// Bytes per data-plane request; several are kept in flight.
    pub chunk_size: ByteSize,
    /// Data-plane requests in flight per connection.
    pub pipeline_depth: usize,
    pub retries: u32,
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
    /// Verify the crc32c of every chunk read (end to end, on the client).
    pub verify_checksums: bool,
    /// Read blocks of a worker on this host straight from its block files
    /// (descriptors passed over its Unix socket); TCP otherwise.
    pub short_circuit: bool,
    /// This client's rack label (see `worker.rack`); "" = none.
    pub rack: String,
    /// Bytes a sequential reader of remote blocks has fetched ahead of it
    /// in the background (for reads smaller than 256 KiB and than a quarter
    /// of this); 0 = off.
    pub read_ahead: ByteSize,
    /// RDMA to workers that offer it (builds with the `rdma` feature only);
    /// TCP to the others.
    pub rdma: RdmaConf,
    /// How long a meta call keeps retrying while the meta group has no
    /// reachable leader (elections take one to two seconds).
    #[serde(with = "humantime_serde_compat")]
    pub failover: Duration,
    /// Let any meta member answer stat/list/open (followers enabled with
    /// `meta.follower_reads`): spreads reads, may be slightly stale.
    pub follower_reads: bool,
}

impl Default for ClientConf {
    fn default() -> Self {
        ClientConf {
            meta: vec![DEFAULT_META_ADDR.into()],
            block_size: ByteSize(0),
            chunk_size: ByteSize(2 << 20),
            pipeline_depth: 8,
            retries: 3,
            timeout: Duration::from_secs(30),
            verify_checksums: true,
            short_circuit: true,
            rack: String::new(),
            read_ahead: ByteSize(8 << 20),
            rdma: RdmaConf::default(),
            failover: Duration::from_secs(20),
            follower_reads: false,
        }
    }
}

/// Which RDMA device a worker or client uses. Used only when the binary
/// was built with the `rdma` feature and the host has a device; otherwise
/// everything goes over TCP.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RdmaConf {
    pub enabled: bool,
    /// Device name (`mlx5_0`, `rxe0`); "" = the first one.
    pub device: String,
    /// Port on the device (ports count from 1).
    pub port: u8,
    /// GID table index of the address to use (RoCE).
    pub gid_index: u8,
}

impl Default for RdmaConf {
    fn default() -> Self {
        RdmaConf { enabled: true, device: String::new(), port: 1, gid_index: 0 }
    }
}

impl Config {
    /// Parses TOML text. Errors name the offending key.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config> {
        let conf: Config = toml::from_str(text)
            .map_err(|e| Error::new(ErrorKind::Config, format!("{origin}: {}", e.to_string().trim_end())))?;
        conf.validate(origin)?;
        Ok(conf)
    }

    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::new(ErrorKind::Config, format!("{}: cannot read config: {e}", path.display())))?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Checks values serde cannot; errors name the key.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let bad = |key: &str, why: String| Err(Error::new(ErrorKind::Config, format!("{origin}: {key}: {why}")));
        for (key, r) in [("worker.rdma", &self.worker.rdma), ("client.rdma", &self.client.rdma)] {
            if r.port == 0 {
                return bad(&format!("{key}.port"), "ports count from 1".into());
            }
        }
        self.meta.peer_map().map_err(|e| Error::new(ErrorKind::Config, format!("{origin}: {}", e.message())))?;
        if self.meta.join && !self.meta.peers.is_empty() {
            return bad("meta.join", "a joining member takes no peers list (the group it joins has one)".into());
        }
        if self.meta.id == 0 {
            return bad("meta.id", "ids count from 1".into());
        }
        let bs = self.cluster.block_size.0;
        if bs < 64 << 10 || bs > 4 << 30 || bs % (64 << 10) != 0 {
            return bad("cluster.block_size", format!("{bs} must be a multiple of 64KiB between 64KiB and 4GiB"));
        }
        if self.cluster.replication == 0 {
            return bad("cluster.replication", "must be at least 1".into());
        }
        for (i, t) in self.worker.tiers.iter().enumerate() {
            if crate::tier::TierKind::parse(&t.kind).is_none() {
                return bad(&format!("worker.tiers[{i}].kind"), format!("'{}' is not one of MEM, SSD, HDD", t.kind));
            }
            if t.capacity.0 == 0 {
                return bad(&format!("worker.tiers[{i}].capacity"), "must be more than 0".into());
            }
        }
        let w = &self.worker;
        if !matches!(w.eviction.as_str(), "lru" | "lfu") {
            return bad("worker.eviction", format!("'{}' is not one of lru, lfu", w.eviction));
        }
        if !(w.low_watermark > 0.0 && w.low_watermark < w.high_watermark && w.high_watermark <= 1.0) {
            return bad(
                "worker.low_watermark/high_watermark",
                format!("need 0 < low ({}) < high ({}) <= 1", w.low_watermark, w.high_watermark),
            );
        }
        if w.move_bandwidth.0 < 1 << 20 {
            return bad("worker.move_bandwidth", "must be at least 1MiB (bytes per second)".into());
        }
        if w.tiering_interval.is_zero() {
            return bad("worker.tiering_interval", "must be more than 0".into());
        }
        if self.client.chunk_size.0 < 64 << 10 || self.client.chunk_size.0 > 64 << 20 {
            return bad("client.chunk_size", "must be between 64KiB and 64MiB".into());
        }
        if self.client.pipeline_depth == 0 || self.client.pipeline_depth > 64 {
            return bad("client.pipeline_depth", "must be between 1 and 64".into());
        }
        Ok(())
    }
}

/// Durations as `"10s"`, `"500ms"` strings (humantime) or integer seconds.
mod humantime_serde_compat {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a duration such as \"10s\" or \"500ms\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
                Ok(Duration::from_secs(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
                u64::try_from(v).map(Duration::from_secs).map_err(|_| E::custom("duration must not be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
                humantime::parse_duration(v).map_err(|e| E::custom(format!("'{v}': {e}")))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named() {
        let e = Config::from_toml("[worker]\nprot = 1\n", "c.toml").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.message().contains("prot"), "{e}");
    }

    #[test]
    fn bad_value_is_named() {
        let e = Config::from_toml("[cluster]\nblock_size = \"12 parsecs\"\n", "c.toml").unwrap_err();
        assert!(e.message().contains("block_size"), "{e}");
        let e = Config::from_toml("[[worker.tiers]]\nkind = \"TAPE\"\ndir = \"/x\"\ncapacity = \"1G\"\n", "c.toml")
            .unwrap_err();
        assert!(e.message().contains("worker.tiers[0].kind"), "{e}");
    }

    #[test]
    fn sizes_and_durations_parse() {
        let c = Config::from_toml(
            "[cluster]\nblock_size = \"1MiB\"\n[worker]\nheartbeat_interval = \"250ms\"\n",
            "c.toml",
        )
        .unwrap();
        assert_eq!(c.cluster.block_size.0, 1 << 20);
        assert_eq!(c.worker.heartbeat_interval, Duration::from_millis(250));
    }

    #[test]
    fn tiering_settings_are_checked() {
        let c = Config::from_toml("[worker]
eviction = \"lfu\"\nlow_watermark = 0.5\n", "c.toml").unwrap();
        assert_eq!(c.worker.eviction, "lfu");
        for (toml, key) in [
            ("[worker]\neviction = \"fifo\"\n", "worker.eviction"),
            ("[worker]\nlow_watermark = 0.97\n", "low_watermark"),
            ("[worker]\nhigh_watermark = 1.5\n", "high_watermark"),
            ("[worker]\nmove_bandwidth = \"1KiB\"\n", "worker.move_bandwidth"),
        ] {
            let e = Config::from_toml(toml, "c.toml").unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config, "{toml}");
            assert!(e.message().contains(key), "{toml}: {e}");
        }
    }
}
