//! Worker membership and block locations: soft state, rebuilt from worker
//! registrations and heartbeats after a meta restart. Placement is a plain
//! function of this state.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use curvine_common::proto::{BlockLocation, CacheStats, ReplicateTask, TierInfo, WorkerInfo};
use curvine_common::size::human;
use curvine_common::{Error, ErrorKind, Result};
use parking_lot::Mutex;

struct Worker {
    info: WorkerInfo,
    last_seen: Instant,
}

impl Worker {
    fn free(&self) -> u64 {
        self.info.tiers.iter().map(|t| t.capacity.saturating_sub(t.used).saturating_sub(t.reserved)).sum()
    }
}

#[derive(Default)]
struct Inner {
    workers: BTreeMap<u64, Worker>,
    /// block id -> (worker id -> tier)
    locations: HashMap<u64, BTreeMap<u64, String>>,
    /// worker id -> blocks it should delete (sent with the next heartbeat)
    pending_delete: HashMap<u64, Vec<u64>>,
    /// block id -> when this meta first saw a cached copy (for mount TTLs)
    cached_since: HashMap<u64, Instant>,
    /// worker id -> block copies it should make (sent with the next heartbeat)
    pending_replicate: HashMap<u64, Vec<ReplicateTask>>,
    /// Dead workers whose copies were already forgotten and re-replicated.
    dead_handled: std::collections::HashSet<u64>,
    /// Blocks with copies scheduled: block -> (when, replication, length).
    /// Checked again after the worker timeout; rescheduled if still short.
    replicating: HashMap<u64, (Instant, u32, u64)>,
}

impl Inner {
    /// `cached_since` holds only blocks with a known copy: pruned wherever
    /// copies are forgotten, or it would grow by every block ever written
    /// (it was pruned only when a mount had a TTL).
    fn prune_cached_since(&mut self) {
        let Inner { locations, cached_since, .. } = self;
        cached_since.retain(|b, _| locations.contains_key(b));
    }
}

/// Registered workers, block locations and pending deletions.
pub struct Workers {
    timeout: Duration,
    inner: Mutex<Inner>,
    /// When this node (again) became leader and forgot its workers: until
    /// `timeout` has passed, live workers may not have registered yet.
    reset_at: Mutex<Option<Instant>>,
}

/// A block a worker reported holding.
pub struct Reported {
    pub id: u64,
    pub tier: String,
    /// Whether the namespace knows the block; unknown blocks are deleted.
    pub known: bool,
}

impl Workers {
    pub fn new(timeout: Duration) -> Workers {
        Workers { timeout, inner: Mutex::new(Inner::default()), reset_at: Mutex::new(None) }
    }

    /// Forgets every worker: a node that (again) becomes leader knows
    /// nothing current about them; their next heartbeat is told to register
    /// with a full block report.
    pub fn reset(&self) {
        *self.inner.lock() = Inner::default();
        *self.reset_at.lock() = Some(Instant::now());
    }

    /// After a leader change, an error for "no worker" while workers may
    /// still be registering: temporary, so clients retry.
    pub fn settling(&self) -> Option<Error> {
        let at = (*self.reset_at.lock())?;
        (at.elapsed() < self.timeout).then(|| {
            Error::unavailable("the meta leader changed moments ago and workers are still registering with it; retry")
        })
    }

    fn alive(&self, w: &Worker, now: Instant) -> bool {
        now.duration_since(w.last_seen) <= self.timeout
    }

    /// Registers (or re-registers) a worker with its full block report.
    pub fn register(&self, info: WorkerInfo, blocks: Vec<Reported>) -> Result<()> {
        if info.id == 0 {
            return Err(Error::invalid("worker id 0 is reserved"));
        }
        let id = info.id;
        let mut g = self.inner.lock();
        for locs in g.locations.values_mut() {
            locs.remove(&id);
        }
        g.locations.retain(|_, l| !l.is_empty());
        g.prune_cached_since();
        g.dead_handled.remove(&id);
        g.workers.insert(id, Worker { info, last_seen: Instant::now() });
        Self::add_reported(&mut g, id, blocks);
        Ok(())
    }

    fn add_reported(g: &mut Inner, worker: u64, blocks: Vec<Reported>) {
        for b in blocks {
            if b.known {
                g.locations.entry(b.id).or_default().insert(worker, b.tier);
                g.cached_since.entry(b.id).or_insert_with(Instant::now);
            } else {
                g.pending_delete.entry(worker).or_default().push(b.id);
            }
        }
    }

    /// Records a heartbeat. `None` when the worker is unknown (it must register again);
    /// otherwise the blocks it should delete and the copies it should make.
    pub fn heartbeat(
        &self,
        id: u64,
        tiers: Vec<TierInfo>,
        cache: Option<CacheStats>,
        added: Vec<Reported>,
        removed: &[u64],
    ) -> Option<(Vec<u64>, Vec<ReplicateTask>)> {
        let mut g = self.inner.lock();
        // A worker declared dead (its copies forgotten) must re-register
        // with a full report before its blocks count again.
        if g.dead_handled.contains(&id) {
            return None;
        }
        let w = g.workers.get_mut(&id)?;
        w.last_seen = Instant::now();
        w.info.tiers = tiers;
        if cache.is_some() {
            w.info.cache = cache;
        }
        Self::add_reported(&mut g, id, added);
        for b in removed {
            if let Some(l) = g.locations.get_mut(b) {
                l.remove(&id);
                if l.is_empty() {
                    g.locations.remove(b);
                    g.cached_since.remove(b);
                }
            }
        }
        let delete = g.pending_delete.remove(&id).unwrap_or_default();
        Some((delete, g.pending_replicate.remove(&id).unwrap_or_default()))
    }

    /// Forgets the copies of workers that died since the last call and
    /// schedules new copies of their blocks: for each block still held by a
    /// live worker but by fewer than `want(block)` (its file's replication),
    /// live workers without it copy it from a survivor. `want` gives a
    /// block's (replication, length). Returns (blocks scheduled, blocks left
    /// with no live copy).
    pub fn re_replicate(&self, want: impl Fn(u64) -> (u32, u64)) -> (Vec<u64>, Vec<u64>) {
        let mut g = self.inner.lock();
        let now = Instant::now();
        let dead: Vec<u64> = g
            .workers
            .values()
            .filter(|w| !self.alive(w, now) && !g.dead_handled.contains(&w.info.id))
            .map(|w| w.info.id)
            .collect();
        // Copies scheduled a timeout ago are checked again: a copy that
        // failed, or whose target died, is scheduled anew.
        let mut affected: Vec<(u64, Option<(u32, u64)>)> = g
            .replicating
            .iter()
            .filter(|(_, (at, _, _))| now.duration_since(*at) > self.timeout)
            .map(|(b, (_, r, len))| (*b, Some((*r, *len))))
            .collect();
        if dead.is_empty() && affected.is_empty() {
            return (vec![], vec![]);
        }
        for (block, locs) in g.locations.iter_mut() {
            if dead.iter().any(|d| locs.remove(d).is_some()) {
                affected.push((*block, None));
            }
        }
        g.locations.retain(|_, l| !l.is_empty());
        g.prune_cached_since();
        for d in &dead {
            g.dead_handled.insert(*d);
            g.pending_delete.remove(d);
            g.pending_replicate.remove(d);
            tracing::warn!(worker = d, "worker dead: its cached copies are forgotten");
        }
        let (mut scheduled, mut lost) = (Vec::new(), Vec::new());
        for (block, known) in affected {
            // Live holders only: a scheduled target may have died since.
            let holders: Vec<u64> = g
                .locations
                .get(&block)
                .map(|l| l.keys().copied().filter(|h| g.workers.get(h).is_some_and(|w| self.alive(w, now))).collect())
                .unwrap_or_default();
            let Some(source) = holders.first().and_then(|h| g.workers.get(h)).map(|w| w.info.addr.clone()) else {
                g.replicating.remove(&block);
                lost.push(block);
                continue;
            };
            let (replication, len) = known.unwrap_or_else(|| want(block));
            let missing = (replication as usize).saturating_sub(holders.len());
            if missing == 0 {
                g.replicating.remove(&block);
                continue;
            }
            g.replicating.insert(block, (now, replication, len));
            let targets: Vec<u64> = g
                .workers
                .values()
                .filter(|w| self.alive(w, now) && !holders.contains(&w.info.id))
                .filter(|w| w.free() >= len)
                .map(|w| w.info.id)
                .take(missing)
                .collect();
            for t in targets {
                g.pending_replicate.entry(t).or_default().push(ReplicateTask { block_id: block, len, source: source.clone() });
                scheduled.push(block);
            }
        }
        (scheduled, lost)
    }

    /// Of `blocks` reported by `worker`, those that now have more live
    /// copies than `want(block)` (their file's replication): `worker`'s copy
    /// is forgotten and queued for deletion there (a worker that was
    /// declared dead and came back, after its blocks were copied elsewhere).
    /// Returns the blocks trimmed.
    pub fn trim_extra_copies(&self, worker: u64, blocks: &[u64], want: impl Fn(u64) -> u32) -> Vec<u64> {
        let now = Instant::now();
        let crowded: Vec<(u64, usize)> = {
            let g = self.inner.lock();
            blocks
                .iter()
                .filter_map(|b| {
                    let locs = g.locations.get(b)?;
                    let live = locs.keys().filter(|w| g.workers.get(w).is_some_and(|w| self.alive(w, now))).count();
                    (live > 1 && locs.contains_key(&worker)).then_some((*b, live))
                })
                .collect()
        };
        // The namespace lookups happen without the lock.
        let extra: Vec<u64> = crowded.into_iter().filter(|(b, live)| *live > want(*b).max(1) as usize).map(|(b, _)| b).collect();
        let mut g = self.inner.lock();
        for b in &extra {
            if let Some(l) = g.locations.get_mut(b) {
                l.remove(&worker);
            }
            g.pending_delete.entry(worker).or_default().push(*b);
        }
        extra
    }

    /// Records that `workers` hold `block` (a client committed it there).
    pub fn add_locations(&self, block: u64, workers: &[u64]) {
        let mut g = self.inner.lock();
        for w in workers {
            if let Some(p) = g.pending_delete.get_mut(w) {
                p.retain(|b| *b != block);
            }
            let tier = g.workers.get(w).and_then(|w| w.info.tiers.first()).map(|t| t.kind.clone()).unwrap_or_default();
            g.locations.entry(block).or_default().insert(*w, tier);
            g.cached_since.entry(block).or_insert_with(Instant::now);
        }
    }

    /// Forgets freed blocks and queues their deletion on the workers holding them.
    pub fn free_blocks(&self, blocks: &[u64]) {
        let mut g = self.inner.lock();
        for b in blocks {
            g.cached_since.remove(b);
            if let Some(locs) = g.locations.remove(b) {
                for w in locs.into_keys() {
                    g.pending_delete.entry(w).or_default().push(*b);
                }
            }
        }
    }

    /// Drops every cached copy of `blocks` (the namespace keeps them: they
    /// can be loaded again); returns how many copies were dropped.
    pub fn drop_cached(&self, blocks: &[u64]) -> usize {
        let mut g = self.inner.lock();
        let mut n = 0;
        for b in blocks {
            g.cached_since.remove(b);
            if let Some(locs) = g.locations.remove(b) {
                for w in locs.into_keys() {
                    g.pending_delete.entry(w).or_default().push(*b);
                    n += 1;
                }
            }
        }
        n
    }

    /// Forgets `worker`'s copy of `block` (the client that found it corrupt
    /// has the worker verify and drop it; a delete queued here could hit a
    /// fresh copy loaded since). False when meta did not know of that copy.
    pub fn drop_copy(&self, block: u64, worker: u64) -> bool {
        let mut g = self.inner.lock();
        let Some(locs) = g.locations.get_mut(&block) else { return false };
        if locs.remove(&worker).is_none() {
            return false;
        }
        if locs.is_empty() {
            g.locations.remove(&block);
            g.cached_since.remove(&block);
        }
        true
    }

    /// Cached blocks whose first copy appeared more than `age` ago.
    pub fn cached_longer_than(&self, age: Duration) -> Vec<u64> {
        let mut g = self.inner.lock();
        let Inner { locations, cached_since, .. } = &mut *g;
        cached_since.retain(|b, _| locations.contains_key(b));
        let now = Instant::now();
        cached_since.iter().filter(|(_, t)| now.duration_since(**t) > age).map(|(b, _)| *b).collect()
    }

    pub fn cached_longer_than_one(&self, block: u64, age: Duration) -> bool {
        self.inner.lock().cached_since.get(&block).map(|t| t.elapsed() > age).unwrap_or(false)
    }

    fn location(w: &Worker, tier: String) -> BlockLocation {
        BlockLocation {
            worker_id: w.info.id,
            addr: w.info.addr.clone(),
            hostname: w.info.hostname.clone(),
            tier,
            local_socket: w.info.local_socket.clone(),
            local_token: w.info.local_token,
            rack: w.info.rack.clone(),
        }
    }

    /// Locations of `block` on live workers.
    pub fn locations(&self, block: u64) -> Vec<BlockLocation> {
        let g = self.inner.lock();
        let now = Instant::now();
        let Some(locs) = g.locations.get(&block) else { return vec![] };
        locs.iter()
            .filter_map(|(id, tier)| g.workers.get(id).filter(|w| self.alive(w, now)).map(|w| Self::location(w, tier.clone())))
            .collect()
    }

    /// Chooses up to `n` live workers for a new block of `block_size` bytes:
    /// most free space first, a worker on `client_host` before all others.
    pub fn place(&self, block_size: u64, client_host: &str, exclude: &[u64], n: usize) -> Result<Vec<BlockLocation>> {
        let g = self.inner.lock();
        let now = Instant::now();
        let live: Vec<&Worker> =
            g.workers.values().filter(|w| self.alive(w, now) && !exclude.contains(&w.info.id)).collect();
        if live.is_empty() {
            if let Some(e) = self.settling() {
                return Err(e);
            }
            return Err(Error::new(ErrorKind::NoSpace, "no space: no live workers"));
        }
        let mut fit: Vec<&Worker> = live.iter().copied().filter(|w| w.free() >= block_size).collect();
        if fit.is_empty() {
            let list: Vec<String> =
                live.iter().map(|w| format!("worker {}: {} free", w.info.id, human(w.free()))).collect();
            return Err(Error::new(
                ErrorKind::NoSpace,
                format!("no space: no worker has {} free ({})", human(block_size), list.join(", ")),
            ));
        }
        fit.sort_by_key(|w| (w.info.hostname != client_host || client_host.is_empty(), std::cmp::Reverse(w.free())));
        Ok(fit
            .into_iter()
            .take(n.max(1))
            .map(|w| Self::location(w, w.info.tiers.first().map(|t| t.kind.clone()).unwrap_or_default()))
            .collect())
    }

    /// The live worker that loads `block` from the UFS on a miss: a pure
    /// function of the block id and the live set, so every client sends its
    /// miss of one block to the same worker, which fetches it once.
    pub fn loader_for(&self, block: u64) -> Option<BlockLocation> {
        let g = self.inner.lock();
        let now = Instant::now();
        let live: Vec<&Worker> = g.workers.values().filter(|w| self.alive(w, now)).collect();
        if live.is_empty() {
            return None;
        }
        // Fibonacci hashing spreads consecutive block ids over the workers.
        let h = block.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        let w = live[(h % live.len() as u64) as usize];
        Some(Self::location(w, String::new()))
    }

    /// Cache counters summed over all registered workers.
    pub fn cache_totals(&self) -> CacheStats {
        let g = self.inner.lock();
        let mut t = CacheStats::default();
        for c in g.workers.values().filter_map(|w| w.info.cache.as_ref()) {
            t.hits += c.hits;
            t.misses += c.misses;
            t.bytes_from_cache += c.bytes_from_cache;
            t.bytes_from_ufs += c.bytes_from_ufs;
            t.loads += c.loads;
            t.load_errors += c.load_errors;
        }
        t
    }

    /// All workers with `alive` and `last_heartbeat_ms` (ms since the last heartbeat) filled in.
    pub fn list(&self) -> Vec<WorkerInfo> {
        let g = self.inner.lock();
        let now = Instant::now();
        g.workers
            .values()
            .map(|w| {
                let mut info = w.info.clone();
                info.alive = self.alive(w, now);
                info.last_heartbeat_ms = now.duration_since(w.last_seen).as_millis() as i64;
                info
            })
            .collect()
    }

    pub fn alive_count(&self) -> usize {
        let g = self.inner.lock();
        let now = Instant::now();
        g.workers.values().filter(|w| self.alive(w, now)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(id: u64, host: &str, cap: u64, used: u64) -> WorkerInfo {
        WorkerInfo {
            id,
            addr: format!("{host}:{id}"),
            hostname: host.into(),
            tiers: vec![TierInfo { kind: "MEM".into(), capacity: cap, used, ..Default::default() }],
            ..Default::default()
        }
    }

    #[test]
    fn placement_prefers_local_then_free_space() {
        let w = Workers::new(Duration::from_secs(10));
        assert_eq!(w.place(1, "a", &[], 1).unwrap_err().kind(), ErrorKind::NoSpace);
        w.register(worker(1, "a", 100, 90), vec![]).unwrap();
        w.register(worker(2, "b", 100, 0), vec![]).unwrap();
        w.register(worker(3, "c", 100, 50), vec![]).unwrap();
        assert_eq!(w.place(5, "a", &[], 1).unwrap()[0].worker_id, 1);
        assert_eq!(w.place(5, "z", &[], 1).unwrap()[0].worker_id, 2);
        assert_eq!(w.place(20, "a", &[], 1).unwrap()[0].worker_id, 2);
        let e = w.place(200, "a", &[], 1).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NoSpace);
        assert!(e.message().contains("worker 1"), "{e}");
    }

    #[test]
    fn freed_and_orphan_blocks_are_sent_for_deletion() {
        let w = Workers::new(Duration::from_secs(10));
        w.register(
            worker(1, "a", 100, 0),
            vec![Reported { id: 7, tier: "MEM".into(), known: true }, Reported { id: 8, tier: "MEM".into(), known: false }],
        )
        .unwrap();
        assert_eq!(w.locations(7).len(), 1);
        w.free_blocks(&[7]);
        assert!(w.locations(7).is_empty());
        assert!(!w.inner.lock().cached_since.contains_key(&7), "a freed block's cache age is forgotten");
        w.add_locations(9, &[1]);
        assert!(w.drop_copy(9, 1));
        assert!(w.inner.lock().cached_since.is_empty(), "nor kept for a block without copies");
        let (mut del, _) = w.heartbeat(1, vec![], None, vec![], &[]).unwrap();
        del.sort();
        assert_eq!(del, vec![7, 8]);
        assert!(w.heartbeat(9, vec![], None, vec![], &[]).is_none());
    }

    #[test]
    fn a_dead_workers_blocks_are_copied_from_survivors() {
        let w = Workers::new(Duration::from_secs(1));
        let known = |id| Reported { id, tier: "MEM".into(), known: true };
        let tiers = |id: u64| worker(id, "x", 100, 0).tiers;
        w.register(worker(1, "a", 100, 0), vec![known(7), known(8), known(9)]).unwrap();
        w.register(worker(2, "b", 100, 0), vec![known(7), known(8)]).unwrap();
        w.register(worker(3, "c", 100, 0), vec![]).unwrap();
        assert_eq!(w.re_replicate(|_| (2, 10)), (vec![], vec![]), "nobody is dead");
        std::thread::sleep(Duration::from_millis(1200));
        // Workers 2 and 3 stay alive; 1 falls silent.
        w.heartbeat(2, worker(2, "b", 100, 0).tiers, None, vec![], &[]).unwrap();
        w.heartbeat(3, worker(3, "c", 100, 0).tiers, None, vec![], &[]).unwrap();
        let (mut scheduled, lost) = w.re_replicate(|b| (if b == 8 { 1 } else { 2 }, 10));
        scheduled.sort();
        assert_eq!(scheduled, vec![7], "8 wants one copy and has one; 9 has none left");
        assert_eq!(lost, vec![9]);
        assert!(w.locations(7).iter().all(|l| l.worker_id == 2));
        let (_, tasks) = w.heartbeat(3, worker(3, "c", 100, 0).tiers, None, vec![], &[]).unwrap();
        assert_eq!(tasks.len(), 1);
        assert_eq!((tasks[0].block_id, tasks[0].len, tasks[0].source.as_str()), (7, 10, "b:2"));
        assert_eq!(w.re_replicate(|_| (2, 10)), (vec![], vec![]), "handled once");
        assert!(w.heartbeat(1, vec![], None, vec![], &[]).is_none(), "the dead worker must register again");

        // The copy failed (never reported): a timeout later it is scheduled
        // again; once it lands, nothing more is scheduled.
        std::thread::sleep(Duration::from_millis(1200));
        w.heartbeat(2, tiers(2), None, vec![], &[]).unwrap();
        w.heartbeat(3, tiers(3), None, vec![], &[]).unwrap();
        assert_eq!(w.re_replicate(|_| (2, 10)), (vec![7], vec![]), "rescheduled");
        let (_, tasks) = w.heartbeat(3, tiers(3), None, vec![], &[]).unwrap();
        assert_eq!(tasks.len(), 1);

        // The copy lands on 3; then 1 comes back with its old blocks: 7 has
        // three copies for a factor of 2, and the returning copy goes.
        w.add_locations(7, &[3]);
        w.register(worker(1, "a", 100, 0), vec![known(7), known(8)]).unwrap();
        assert_eq!(w.trim_extra_copies(1, &[7, 8], |_| 2), vec![7]);
        assert!(w.locations(7).iter().all(|l| l.worker_id != 1) && w.locations(7).len() == 2);
        assert_eq!(w.locations(8).len(), 2, "8 has exactly its two copies");
        let (del, _) = w.heartbeat(1, vec![], None, vec![], &[]).unwrap();
        assert_eq!(del, vec![7]);
    }
}
