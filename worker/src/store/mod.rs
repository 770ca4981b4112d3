//! The tiered block store: blocks as files in tier directories (fastest
//! first), capacity accounting per tier, and the block index rebuilt from
//! disk on start.
//!
//! Layout of every tier directory:
//! - `blocks/<id>`: a sealed block's bytes;
//! - `blocks/<id>.crc`: one little-endian crc32c per `CHUNK` of the block;
//! - `blocks/x<n>`: extent `n` (below), the bytes of several blocks;
//! - `blocks/<id>.at`: for a block in an extent, `n base len`: its bytes
//!   are `blocks/x<n>` from `base` on;
//! - `tmp/<id>`: a block being written, `tmp/<id>.mv`: one being moved
//!   here (`moves.rs`); `tmp/` is purged on start.
//!
//! Extents (MEM tier only, `extent.rs`): a block written with `after` = the
//! block just before it in the same file, which is the last block of its
//! extent here, is appended to that extent's file instead of getting a
//! file of its own, so the consecutive blocks of a file written through
//! this worker are one tmpfs file at their file offsets — what the
//! kernel's FUSE passthrough needs to serve a multi-block file without the
//! daemon. An extent starts as the first block's file, renamed to
//! `blocks/x<n>` (extent numbers are the worker's own, so a block id that
//! comes back — reloaded, promoted — never lands on an extent's name), and
//! only ever grows at its end; a block that leaves (deleted, evicted,
//! moved) keeps its bytes there (counted as used) until the extent's last
//! block leaves, because readers may hold mappings of the file: no hole is
//! punched under them.
//!
//! To ensure correctness: a block is visible (indexed, reported to meta)
//! only after its `.crc` and then its data file (or, in an extent, its
//! `.at`) were renamed into `blocks/`; a data file without a `.crc` of the
//! right length is an interrupted commit and is deleted on start, as is an
//! extent no valid `.at` names; bytes past an extent's last block (an
//! append a crash cut short, or blocks that left) stay as dead bytes, since
//! readers may map them, and no block is appended after them. A valid
//! `.at` wins over a data file of the same block (left by a crash
//! mid-rename); an invalid one is dropped and the block judged by its own
//! files.

mod extent;
pub(crate) mod moves;
mod scan;
mod sink;
#[cfg(test)]
mod extent_stress;
#[cfg(test)]
mod extent_tests;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use curvine_common::config::TierConf;
use curvine_common::size::human;
use curvine_common::tier::TierKind;
use curvine_common::{Error, ErrorKind, Result};
use curvine_fabric::frame::CHUNK;
use curvine_fabric::service::{BlockService, BlockSink, ReadSource};
use parking_lot::Mutex;

use crate::metrics::WorkerMetrics;
use crate::tiering::policy::{self, AccessStats, BlockView, EvictionPolicy, TierView};
use extent::{write_at_marker, Extent, EXTENT_ALIGN};
use sink::TierSink;

/// One configured tier: where it lives and how much it may hold.
#[derive(Clone, Debug)]
pub struct Tier {
    pub kind: TierKind,
    pub dir: PathBuf,
    pub capacity: u64,
}

impl Tier {
    fn block_path(&self, id: u64) -> PathBuf {
        self.dir.join("blocks").join(id.to_string())
    }
    fn crc_path(&self, id: u64) -> PathBuf {
        self.dir.join("blocks").join(format!("{id}.crc"))
    }
    fn tmp_path(&self, id: u64) -> PathBuf {
        self.dir.join("tmp").join(id.to_string())
    }
    fn tmp_crc_path(&self, id: u64) -> PathBuf {
        self.dir.join("tmp").join(format!("{id}.crc"))
    }
    /// A move's copy, named apart from a sink's `tmp/<id>`: the block may be
    /// deleted and written into this tier again while it is being moved.
    fn move_tmp_path(&self, id: u64) -> PathBuf {
        self.dir.join("tmp").join(format!("{id}.mv"))
    }
    fn move_tmp_crc_path(&self, id: u64) -> PathBuf {
        self.dir.join("tmp").join(format!("{id}.mv.crc"))
    }
    fn extent_path(&self, n: u64) -> PathBuf {
        self.dir.join("blocks").join(format!("x{n}"))
    }
    fn at_path(&self, id: u64) -> PathBuf {
        self.dir.join("blocks").join(format!("{id}.at"))
    }
    fn tmp_at_path(&self, id: u64) -> PathBuf {
        self.dir.join("tmp").join(format!("{id}.at"))
    }
}

/// A tier's accounting, as reported in heartbeats and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierUsage {
    pub kind: TierKind,
    pub dir: PathBuf,
    pub capacity: u64,
    /// Bytes of sealed blocks.
    pub used: u64,
    /// Bytes promised to blocks being written.
    pub reserved: u64,
    pub blocks: u64,
}

impl TierUsage {
    pub fn free(&self) -> u64 {
        self.capacity.saturating_sub(self.used + self.reserved)
    }
}

/// A sealed block as reported to meta.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBlock {
    pub id: u64,
    pub len: u64,
    pub tier: TierKind,
}

/// Block changes not yet acknowledged by meta. An id is in at most one list,
/// which holds its latest state.
#[derive(Default, Debug)]
pub struct Deltas {
    pub added: Vec<StoredBlock>,
    pub removed: Vec<u64>,
}

struct Entry {
    tier: usize,
    len: u64,
    /// Loaded on first read.
    crcs: Option<Arc<[u32]>>,
    stats: AccessStats,
    /// When meta last confirmed the block may leave the cache (its file is
    /// in the UFS and not pinned); 0 = never. Trusted for `CLEARED_FOR`.
    cleared_ms: u64,
    /// When meta last said it may not (cache-only or pinned): not asked
    /// about again for `CLEARED_FOR_MS`.
    refused_ms: u64,
    /// Being copied to another tier.
    moving: bool,
    /// In an extent: its number and where this block starts in it.
    at: Option<(u64, u64)>,
}

impl Entry {
    fn new(tier: usize, len: u64, crcs: Option<Arc<[u32]>>, now_ms: u64) -> Entry {
        Entry { tier, len, crcs, stats: AccessStats::new(now_ms), cleared_ms: 0, refused_ms: 0, moving: false, at: None }
    }

    /// The block's file (its own, or its extent's) and where it starts.
    fn file(&self, tiers: &[Tier], id: u64) -> (PathBuf, u64) {
        match self.at {
            Some((n, base)) => (tiers[self.tier].extent_path(n), base),
            None => (tiers[self.tier].block_path(id), 0),
        }
    }
}

/// How long meta's word that a block may be evicted is trusted: a file
/// pinned since then is safe once this has passed.
const CLEARED_FOR_MS: u64 = 30_000;

struct State {
    index: HashMap<u64, Entry>,
    /// Blocks with an open sink; their ids may not be written again.
    writing: HashSet<u64>,
    usage: Vec<TierUsage>,
    deltas: Deltas,
    /// Blocks the tiering planner wants to evict, to ask meta about.
    asks: Vec<u64>,
    /// Extents by number.
    extents: HashMap<u64, Extent>,
    /// The number the next extent gets.
    next_extent: u64,
}

pub(crate) struct Inner {
    worker_id: u64,
    tiers: Vec<Tier>,
    sync_on_commit: bool,
    state: Mutex<State>,
    metrics: WorkerMetrics,
    policy: Box<dyn EvictionPolicy>,
    half_life_ms: u64,
    /// The store's clock (access statistics are in ms since this).
    epoch: std::time::Instant,
    /// Wakes the heartbeat when there are eviction candidates to ask about.
    asked: tokio::sync::Notify,
    /// Wakes writers waiting for meta's answer (`request_room`).
    cleared: tokio::sync::Notify,
    /// A block in a slower tier was read since the last tiering round (it
    /// may have earned a promotion).
    read_below: std::sync::atomic::AtomicBool,
}

/// The worker's block store; implements the data plane's `BlockService`.
pub struct TieredStore {
    inner: Arc<Inner>,
}

/// Number of crc entries a block of `len` bytes has.
pub(crate) fn crc_count(len: u64) -> u64 {
    len.div_ceil(CHUNK)
}

/// Tier directories belong to one worker identity (`TIER/worker.id`). Blocks
/// left by another worker (a node re-created with a new id over an old
/// `/dev/shm` directory) are unknown to the cluster and their ids may be
/// handed out again, so they are dropped instead of indexed.
fn claim_tier(dir: &std::path::Path, worker_id: u64) -> Result<()> {
    let marker = dir.join("worker.id");
    let io = |e: std::io::Error, what: &str| Error::new(ErrorKind::Io, format!("{what} {}: {e}", marker.display()));
    match std::fs::read_to_string(&marker) {
        Ok(s) if s.trim().parse::<u64>().ok() == Some(worker_id) => return Ok(()),
        Ok(s) => {
            tracing::warn!(dir = %dir.display(), owner = s.trim(), worker = worker_id, "tier held another worker's blocks: dropping them");
            for sub in ["blocks", "tmp"] {
                let d = dir.join(sub);
                std::fs::remove_dir_all(&d).map_err(|e| io(e, "clear"))?;
                std::fs::create_dir_all(&d).map_err(|e| io(e, "recreate"))?;
            }
        }
        // Unmarked: a new directory, or one from before markers existed
        // (same worker then: keep its blocks).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e, "read")),
    }
    std::fs::write(&marker, format!("{worker_id}\n")).map_err(|e| io(e, "write"))
}

impl TieredStore {
    /// Opens (creating if needed) the tiers in `confs`, fastest first,
    /// purges unfinished writes and rebuilds the index from `blocks/`.
    /// Errors name the offending `worker.tiers[i]` key.
    pub fn open(worker_id: u64, confs: &[TierConf], sync_on_commit: bool) -> Result<TieredStore> {
        Self::open_with(worker_id, confs, sync_on_commit, Box::new(policy::Lru), 0)
    }

    /// `open` with an eviction policy (`half_life_ms`: how fast read counts decay).
    pub fn open_with(
        worker_id: u64,
        confs: &[TierConf],
        sync_on_commit: bool,
        policy: Box<dyn EvictionPolicy>,
        half_life_ms: u64,
    ) -> Result<TieredStore> {
        if confs.is_empty() {
            return Err(Error::new(ErrorKind::Config, "worker.tiers: at least one tier (MEM, SSD or HDD) is required"));
        }
        let mut tiers = Vec::with_capacity(confs.len());
        for (i, c) in confs.iter().enumerate() {
            let kind = TierKind::parse(&c.kind).ok_or_else(|| {
                Error::new(
                    ErrorKind::Config,
                    format!("worker.tiers[{i}].kind: '{}' is not one of MEM, SSD, HDD", c.kind),
                )
            })?;
            if c.capacity.0 == 0 {
                return Err(Error::new(ErrorKind::Config, format!("worker.tiers[{i}].capacity: must be more than 0")));
            }
            for sub in ["blocks", "tmp"] {
                std::fs::create_dir_all(c.dir.join(sub)).map_err(|e| {
                    Error::new(
                        ErrorKind::Config,
                        format!("worker.tiers[{i}].dir: cannot create {}: {e}", c.dir.join(sub).display()),
                    )
                })?;
            }
            claim_tier(&c.dir, worker_id).map_err(|e| e.context(format!("worker.tiers[{i}].dir")))?;
            tiers.push(Tier { kind, dir: c.dir.clone(), capacity: c.capacity.0 });
        }
        let mut index = HashMap::new();
        let mut extents: HashMap<u64, Extent> = HashMap::new();
        let mut next_extent = 1;
        let mut usage = Vec::with_capacity(tiers.len());
        for (i, t) in tiers.iter().enumerate() {
            let found = scan::scan_tier(t)?;
            next_extent = next_extent.max(found.next_extent);
            let mut u =
                TierUsage { kind: t.kind, dir: t.dir.clone(), capacity: t.capacity, used: 0, reserved: 0, blocks: 0 };
            let mut blocks = found.blocks;
            blocks.sort_by_key(|b| b.at); // file order within each extent
            for b in blocks {
                if index.contains_key(&b.id) {
                    tracing::warn!(block = b.id, tier = %t.kind, dir = %t.dir.display(), "duplicate block copy removed");
                    // In an extent only its marker goes: the file holds others.
                    let _ = std::fs::remove_file(if b.at.is_some() { t.at_path(b.id) } else { t.block_path(b.id) });
                    let _ = std::fs::remove_file(t.crc_path(b.id));
                    continue;
                }
                u.blocks += 1;
                let mut e = Entry::new(i, b.len, None, 1);
                match b.at {
                    None => u.used += b.len,
                    Some((ext, _)) => {
                        e.at = b.at;
                        let end = found.extent_len.get(&ext).copied().unwrap_or(0);
                        let x = extents.entry(ext).or_insert_with(|| Extent {
                            tier: i,
                            members: Vec::new(),
                            end,
                            appending: None,
                            dead: 0,
                        });
                        x.members.push(b.id);
                    }
                }
                index.insert(b.id, e);
            }
            // An extent whose every block was a duplicate (a crash mid-move
            // left a copy in a faster tier, indexed above) holds nothing.
            for &ext in found.extent_len.keys() {
                if !extents.contains_key(&ext) {
                    tracing::warn!(extent = ext, tier = %t.kind, dir = %t.dir.display(), "removing an extent of duplicate blocks only");
                    let _ = std::fs::remove_file(t.extent_path(ext));
                }
            }
            // An extent holds its whole file: what left it is still there.
            extents.retain(|&ext, x| {
                if x.tier != i {
                    return true;
                }
                if x.members.is_empty() {
                    let _ = std::fs::remove_file(t.extent_path(ext));
                    return false;
                }
                let live: u64 = x.members.iter().filter_map(|id| index.get(id)).map(|e: &Entry| e.len).sum();
                x.dead = x.end.saturating_sub(live);
                u.used += x.end;
                true
            });
            tracing::info!(tier = %t.kind, dir = %t.dir.display(), blocks = u.blocks, used = u.used, "tier opened");
            usage.push(u);
        }
        let inner = Inner {
            worker_id,
            tiers,
            sync_on_commit,
            state: Mutex::new(State {
                index,
                writing: HashSet::new(),
                usage,
                deltas: Deltas::default(),
                asks: Vec::new(),
                extents,
                next_extent,
            }),
            asked: tokio::sync::Notify::new(),
            cleared: tokio::sync::Notify::new(),
            read_below: std::sync::atomic::AtomicBool::new(false),
            metrics: WorkerMetrics::default(),
            policy,
            half_life_ms,
            epoch: std::time::Instant::now(),
        };
        inner.refresh_gauges(&inner.state.lock());
        Ok(TieredStore { inner: Arc::new(inner) })
    }

    pub fn worker_id(&self) -> u64 {
        self.inner.worker_id
    }

    pub fn tiers(&self) -> &[Tier] {
        &self.inner.tiers
    }

    pub fn metrics(&self) -> &WorkerMetrics {
        &self.inner.metrics
    }

    /// Capacity accounting of every tier, in configured order.
    pub fn usage(&self) -> Vec<TierUsage> {
        self.inner.state.lock().usage.clone()
    }

    /// Every sealed block; also clears the pending deltas, since a full
    /// report supersedes them.
    pub fn full_report(&self) -> Vec<StoredBlock> {
        let mut st = self.inner.state.lock();
        st.deltas = Deltas::default();
        st.index.iter().map(|(&id, e)| StoredBlock { id, len: e.len, tier: self.inner.tiers[e.tier].kind }).collect()
    }

    /// Takes the changes since the last call (or full report).
    pub fn take_deltas(&self) -> Deltas {
        std::mem::take(&mut self.inner.state.lock().deltas)
    }

    /// Puts back deltas that meta did not acknowledge. Changes recorded
    /// since they were taken are newer and win.
    pub fn restore_deltas(&self, old: Deltas) {
        let mut st = self.inner.state.lock();
        let d = &mut st.deltas;
        let known: HashSet<u64> = d.added.iter().map(|b| b.id).chain(d.removed.iter().copied()).collect();
        d.added.extend(old.added.into_iter().filter(|b| !known.contains(&b.id)));
        d.removed.extend(old.removed.into_iter().filter(|id| !known.contains(id)));
    }

    pub fn contains(&self, block_id: u64) -> bool {
        self.inner.state.lock().index.contains_key(&block_id)
    }

    /// Unlinks a sealed block and releases its space. Open readers keep
    /// their handle.
    #[tracing::instrument(skip(self), fields(worker = self.inner.worker_id))]
    pub fn delete_block(&self, block_id: u64) -> Result<()> {
        let mut st = self.inner.state.lock();
        if self.inner.unindex(&mut st, block_id) {
            Ok(())
        } else {
            Err(self.inner.not_found(block_id))
        }
    }

    /// The tiers and sealed blocks as the tiering planner sees them, or
    /// `None` when there is nothing to plan: no tier above `high` (a
    /// fraction of its capacity) and no read of a block in a slower tier
    /// since the last call. Spares a walk over every block each round.
    pub fn views_if_needed(&self, high: f64) -> Option<(Vec<TierView>, Vec<BlockView>, u64)> {
        let st = self.inner.state.lock();
        let tiers = self.inner.tier_views(&st);
        let full = tiers.iter().any(|t| t.used as f64 > t.capacity as f64 * high);
        let read_below = self.inner.read_below.swap(false, std::sync::atomic::Ordering::Relaxed);
        if !full && !read_below {
            return None;
        }
        let now = self.inner.now_ms();
        Some((tiers, self.inner.block_views(&st, now), now))
    }

    pub fn policy(&self) -> &dyn EvictionPolicy {
        &*self.inner.policy
    }

    /// Meta answered a heartbeat's eviction candidates `asked`: `cleared`
    /// may leave the cache, the others may not. Wakes writers waiting in
    /// `request_room`.
    pub fn mark_evictable(&self, asked: &[u64], cleared: &[u64]) {
        let now = self.inner.now_ms();
        let mut st = self.inner.state.lock();
        for id in asked {
            if let Some(e) = st.index.get_mut(id) {
                e.refused_ms = now;
            }
        }
        for id in cleared {
            if let Some(e) = st.index.get_mut(id) {
                e.cleared_ms = now;
                e.refused_ms = 0;
            }
        }
        drop(st);
        self.inner.cleared.notify_waiters();
    }

    /// For a writer that found every tier full: asks meta right away about
    /// the coldest blocks that would make room for `need` bytes, and waits
    /// (at most `timeout`) for the answer. The writer then tries again.
    pub async fn request_room(&self, need: u64, timeout: std::time::Duration) {
        let answered = self.inner.cleared.notified();
        tokio::pin!(answered);
        answered.as_mut().enable();
        {
            let mut st = self.inner.state.lock();
            let now = self.inner.now_ms();
            let mut cold: Vec<(f64, BlockView)> = self
                .inner
                .block_views(&st, now)
                .into_iter()
                .filter(|b| !b.busy && !b.evictable && !b.refused)
                .map(|b| (self.inner.policy.hotness(&b.stats, now), b))
                .collect();
            cold.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.id.cmp(&b.1.id)));
            // Ask about more than is needed: some may be pinned or cache-only.
            let (mut sum, mut n) = (0, 0);
            for (_, b) in cold {
                if sum >= need.max(1) * 4 && n >= 8 {
                    break;
                }
                n += 1;
                if !st.asks.contains(&b.id) {
                    st.asks.push(b.id);
                }
                sum += b.len;
            }
        }
        self.inner.asked.notify_one();
        let _ = tokio::time::timeout(timeout, answered).await;
    }

    /// Queues eviction candidates for meta and wakes the heartbeat.
    pub fn ask_evictable(&self, blocks: Vec<u64>) {
        if blocks.is_empty() {
            return;
        }
        {
            let mut st = self.inner.state.lock();
            let known: HashSet<u64> = st.asks.iter().copied().collect();
            st.asks.extend(blocks.into_iter().filter(|b| !known.contains(b)));
        }
        self.inner.asked.notify_one();
    }

    pub fn take_asks(&self) -> Vec<u64> {
        std::mem::take(&mut self.inner.state.lock().asks)
    }

    /// Resolves when `ask_evictable` queued candidates.
    pub async fn asks_queued(&self) {
        self.inner.asked.notified().await
    }

    /// Drops a block from the cache (counted as an eviction).
    pub fn evict(&self, block_id: u64) -> bool {
        let mut st = self.inner.state.lock();
        // A block being copied (moved, joined) is left alone this round.
        if st.index.get(&block_id).is_some_and(|e| e.moving) {
            return false;
        }
        let done = self.inner.unindex(&mut st, block_id);
        if done {
            self.inner.metrics.blocks_evicted.inc();
            tracing::debug!(block = block_id, "block evicted");
        }
        done
    }

    /// The tier a block is in, if it is here.
    pub fn tier_of(&self, block_id: u64) -> Option<TierKind> {
        self.inner.state.lock().index.get(&block_id).map(|e| self.inner.tiers[e.tier].kind)
    }

    /// Reads a sealed block and checks every chunk against its crc32c.
    /// `Corrupt` names the first bad chunk.
    pub fn verify_block(&self, block_id: u64) -> Result<()> {
        let src = self.open_read(block_id)?;
        let mut buf = vec![0u8; CHUNK as usize];
        for (i, &want) in src.crcs.iter().enumerate() {
            let off = i as u64 * CHUNK;
            let n = (src.len - off).min(CHUNK) as usize;
            src.read_exact_at(&mut buf[..n], off)?;
            if curvine_fabric::crc::crc32c(&buf[..n]) != want {
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    format!("block {block_id} on worker {}: chunk {i} fails its crc32c", self.inner.worker_id),
                ));
            }
        }
        Ok(())
    }
}

impl Inner {
    /// ms since the store opened, from 1 (0 means "never" in `Entry`).
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn not_found(&self, block_id: u64) -> Error {
        Error::new(ErrorKind::NotFound, format!("block {block_id} not on worker {}", self.worker_id))
    }

    /// `what` completes "no space for ...", e.g. "64.0 MiB block".
    fn no_space(&self, st: &State, what: &str) -> Error {
        let free: Vec<String> = st.usage.iter().map(|u| format!("{} {} free", u.kind, human(u.free()))).collect();
        Error::new(ErrorKind::NoSpace, format!("worker {}: no space for {what}: {}", self.worker_id, free.join(", ")))
    }

    /// Grows a sink's reservation in its tier by `extra` bytes.
    fn grow(&self, tier: usize, extra: u64) -> Result<()> {
        let mut st = self.state.lock();
        let u = &st.usage[tier];
        if u.free() < extra {
            let what = format!("{} more of a block in {}", human(extra), u.kind);
            return Err(self.no_space(&st, &what));
        }
        st.usage[tier].reserved += extra;
        Ok(())
    }

    /// Forgets a sink that did not commit; `at`: the extent it was being
    /// appended to (whose file the sink already cut back).
    fn release(&self, block_id: u64, tier: usize, reserved: u64, at: Option<(u64, u64)>) {
        let mut st = self.state.lock();
        st.writing.remove(&block_id);
        let u = &mut st.usage[tier];
        u.reserved = u.reserved.saturating_sub(reserved);
        if let Some((ext, _)) = at {
            self.end_append(&mut st, ext);
        }
    }

    /// Turns a sink's reservation into a sealed, indexed block (`at`: in an
    /// extent, its ext and base).
    fn seal(&self, block_id: u64, tier: usize, reserved: u64, len: u64, crcs: Arc<[u32]>, at: Option<(u64, u64)>) {
        let mut st = self.state.lock();
        st.writing.remove(&block_id);
        let u = &mut st.usage[tier];
        u.reserved = u.reserved.saturating_sub(reserved);
        u.used += len;
        u.blocks += 1;
        let now = self.now_ms();
        let mut e = Entry::new(tier, len, Some(crcs), now);
        if let Some((ext, base)) = at {
            e.at = at;
            self.join_extent(&mut st, ext, block_id, base + len);
        }
        st.index.insert(block_id, e);
        st.deltas.removed.retain(|&id| id != block_id);
        st.deltas.added.push(StoredBlock { id: block_id, len, tier: self.tiers[tier].kind });
        self.refresh_gauges(&st);
        self.metrics.blocks_written.inc();
    }

    /// Removes a sealed block from the index and unlinks its files (open
    /// readers keep their handles); false when it is not indexed.
    fn unindex(&self, st: &mut State, block_id: u64) -> bool {
        let Some(e) = st.index.remove(&block_id) else { return false };
        let u = &mut st.usage[e.tier];
        u.blocks = u.blocks.saturating_sub(1);
        st.deltas.added.retain(|b| b.id != block_id);
        st.deltas.removed.push(block_id);
        let t = &self.tiers[e.tier];
        if let Some((ext, _)) = e.at {
            // Its bytes stay counted until the extent empties.
            self.leave_extent(st, ext, block_id, e.len);
            self.refresh_gauges(st);
            tracing::debug!(block = block_id, ext, tier = %t.kind, "block deleted from its extent");
            return true;
        }
        let u = &mut st.usage[e.tier];
        u.used = u.used.saturating_sub(e.len);
        self.refresh_gauges(st);
        for p in [t.block_path(block_id), t.crc_path(block_id)] {
            if let Err(e) = std::fs::remove_file(&p) {
                tracing::warn!(path = %p.display(), error = %e, "cannot unlink deleted block file");
            }
        }
        tracing::debug!(block = block_id, tier = %t.kind, "block deleted");
        true
    }

    fn tier_views(&self, st: &State) -> Vec<TierView> {
        st.usage.iter().map(|u| TierView { capacity: u.capacity, used: u.used + u.reserved }).collect()
    }

    fn block_views(&self, st: &State, now: u64) -> Vec<BlockView> {
        st.index
            .iter()
            .map(|(&id, e)| BlockView {
                id,
                len: e.len,
                frees: match e.at {
                    None => e.len,
                    Some((n, _)) => st.extents.get(&n).filter(|x| x.members.len() == 1).map_or(0, |x| x.end),
                },
                tier: e.tier,
                stats: e.stats,
                evictable: e.cleared_ms > 0 && now.saturating_sub(e.cleared_ms) < CLEARED_FOR_MS,
                refused: e.refused_ms > 0 && now.saturating_sub(e.refused_ms) < CLEARED_FOR_MS,
                busy: e.moving,
            })
            .collect()
    }

    /// The first tier where evicting cleared blocks frees `need` bytes, and
    /// those blocks.
    fn room_by_eviction(&self, st: &State, need: u64) -> Option<(usize, Vec<u64>)> {
        let now = self.now_ms();
        let tiers = self.tier_views(st);
        let blocks = self.block_views(st, now);
        (0..tiers.len()).find_map(|t| {
            policy::make_room(&tiers[t], t, &blocks, need.max(1), &*self.policy, now).map(|v| (t, v))
        })
    }

    fn refresh_gauges(&self, st: &State) {
        self.metrics.set_tiers(&st.usage);
    }
}

/// The largest block meta creates (its `block_size` limit). A write's
/// length hint above it is refused: the hint is reserved up front (and may
/// evict cleared blocks), so one frame could otherwise claim a whole tier.
/// Appends grow a reservation on demand, so a hint never limits a write.
pub(crate) const MAX_BLOCK_LEN: u64 = 4 << 30;

/// Reads a `.crc` file that must hold exactly `crc_count(len)` entries.
fn load_crcs(path: &Path, len: u64) -> Result<Arc<[u32]>> {
    let raw = std::fs::read(path)?;
    if raw.len() as u64 != crc_count(len) * 4 {
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!("{}: {} bytes of checksums for a {len}-byte block", path.display(), raw.len()),
        ));
    }
    Ok(raw.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

impl BlockService for TieredStore {
    #[tracing::instrument(level = "debug", skip(self), fields(worker = self.inner.worker_id))]
    fn open_read(&self, block_id: u64) -> Result<ReadSource> {
        let lookup = || {
            let st = self.inner.state.lock();
            let e = st.index.get(&block_id).ok_or_else(|| self.inner.not_found(block_id))?;
            Ok::<_, Error>((e.tier, e.len, e.crcs.clone(), e.file(&self.inner.tiers, block_id)))
        };
        let (mut tier, mut len, mut cached, (mut path, mut base)) = lookup()?;
        // The block may be deleted, moved to another tier or into an
        // extent between the lookup and the open (of the data file or of
        // its `.crc`): a move is followed once.
        let mut moved = false;
        loop {
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let now = lookup()?;
                    if moved || (now.3 .0 == path && now.3 .1 == base) {
                        return Err(self.inner.not_found(block_id));
                    }
                    (tier, len, cached, (path, base)) = now;
                    moved = true;
                    continue;
                }
                Err(e) => return Err(Error::from(e).context(format!("block {block_id}"))),
            };
            let t = &self.inner.tiers[tier];
            let crcs = match cached {
                Some(ref c) => c.clone(),
                None => match load_crcs(&t.crc_path(block_id), len) {
                    Ok(c) => {
                        if let Some(e) = self.inner.state.lock().index.get_mut(&block_id) {
                            e.crcs = Some(c.clone());
                        }
                        c
                    }
                    // The data file was opened, then the block moved on
                    // (its old `.crc` is gone): look it up again.
                    Err(e) if e.kind() == ErrorKind::NotFound && !moved => {
                        let now = lookup()?;
                        (tier, len, cached, (path, base)) = now;
                        moved = true;
                        continue;
                    }
                    Err(e) if e.kind() == ErrorKind::NotFound => return Err(self.inner.not_found(block_id)),
                    Err(e) => return Err(e),
                },
            };
            return Ok(ReadSource { file: Arc::new(file), base, len, crcs, tier: t.kind });
        }
    }

    #[tracing::instrument(skip(self), fields(worker = self.inner.worker_id))]
    fn open_write(&self, block_id: u64, len_hint: u64, after: u64) -> Result<Box<dyn BlockSink>> {
        if len_hint > MAX_BLOCK_LEN {
            return Err(Error::invalid(format!(
                "block {block_id}: length hint {len_hint} exceeds the largest block size ({})",
                human(MAX_BLOCK_LEN)
            )));
        }
        let tier = {
            let mut st = self.inner.state.lock();
            if st.index.contains_key(&block_id) || st.writing.contains(&block_id) {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!("block {block_id} already exists on worker {}", self.inner.worker_id),
                ));
            }
            // Right after the file's previous block when it can go there.
            if let Some((tier, ext, base)) = self.inner.extent_for(&mut st, block_id, after, len_hint) {
                st.usage[tier].reserved += len_hint;
                st.writing.insert(block_id);
                drop(st);
                let sink = TierSink::create(self.inner.clone(), block_id, tier, len_hint, Some((ext, base)))?;
                tracing::debug!(block = block_id, ext, base, len_hint, "block opened for write in an extent");
                return Ok(Box::new(sink));
            }
            // An unknown length (hint 0) still goes where some room is left;
            // an empty block may land in a full tier.
            let mut tier = st.usage.iter().position(|u| u.free() >= len_hint.max(1)).or((len_hint == 0).then_some(0));
            if tier.is_none() {
                // Every tier is full: make room by evicting blocks meta
                // cleared (cold first) rather than failing the write.
                if let Some((t, victims)) = self.inner.room_by_eviction(&st, len_hint) {
                    for id in victims {
                        self.inner.unindex(&mut st, id);
                        self.inner.metrics.blocks_evicted.inc();
                    }
                    // Blocks of an extent give their memory back only with
                    // its last block.
                    tier = (st.usage[t].free() >= len_hint.max(1) || len_hint == 0).then_some(t);
                }
            }
            let Some(tier) = tier else {
                return Err(self.inner.no_space(&st, &format!("{} block", human(len_hint))));
            };
            st.usage[tier].reserved += len_hint;
            st.writing.insert(block_id);
            tier
        };
        // From here on the sink's Drop releases the reservation.
        let sink = TierSink::create(self.inner.clone(), block_id, tier, len_hint, None)?;
        tracing::debug!(block = block_id, tier = %self.inner.tiers[tier].kind, len_hint, "block opened for write");
        Ok(Box::new(sink))
    }

    fn join(&self, ids: &[u64]) -> Result<()> {
        TieredStore::join(self, ids)
    }

    fn verify(&self, block_id: u64) -> Result<bool> {
        match self.verify_block(block_id) {
            Ok(()) => {
                // Damaged in transit: meta forgot this copy; announce it again.
                let mut st = self.inner.state.lock();
                if let Some(e) = st.index.get(&block_id) {
                    let b = StoredBlock { id: block_id, len: e.len, tier: self.inner.tiers[e.tier].kind };
                    st.deltas.added.retain(|x| x.id != block_id);
                    st.deltas.added.push(b);
                }
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::Corrupt => {
                tracing::error!(block = block_id, error = %e, "corrupt block dropped");
                self.inner.metrics.blocks_corrupt.inc();
                let mut st = self.inner.state.lock();
                self.inner.unindex(&mut st, block_id);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn on_read(&self, block_id: u64, bytes: u64, _loaded: bool) {
        self.inner.metrics.read_bytes.inc_by(bytes);
        let now = self.inner.now_ms();
        if let Some(e) = self.inner.state.lock().index.get_mut(&block_id) {
            let weight = if e.len == 0 { 1.0 } else { (bytes as f64 / e.len as f64).min(1.0) };
            e.stats.touch(now, self.inner.half_life_ms, weight);
            if e.tier > 0 {
                self.inner.read_below.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}
