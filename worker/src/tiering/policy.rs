//! Which blocks move between tiers and which leave the cache: pure
//! functions over tier usage and per-block access statistics, so every
//! decision is unit-tested without IO. `super::Mover` carries them out.

use curvine_common::{Error, ErrorKind, Result};

/// What the worker knows about how a block has been read.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AccessStats {
    /// When the block was last read (or written), ms on the worker's clock.
    pub last_ms: u64,
    /// Reads, decayed: halves every `half_life_ms` without reads.
    pub freq: f64,
    /// Reads since the block entered its current tier (promotion trigger).
    pub hits_in_tier: f64,
}

impl AccessStats {
    pub fn new(now_ms: u64) -> AccessStats {
        AccessStats { last_ms: now_ms, freq: 0.0, hits_in_tier: 0.0 }
    }

    /// Records a read of `weight` blocks' worth at `now_ms`: reading a whole
    /// block once counts 1 however many requests it takes, a 64 KiB read of
    /// a 64 MiB block 1/1024.
    pub fn touch(&mut self, now_ms: u64, half_life_ms: u64, weight: f64) {
        self.freq = decayed(self.freq, self.last_ms, now_ms, half_life_ms) + weight;
        self.last_ms = self.last_ms.max(now_ms);
        self.hits_in_tier += weight;
    }
}

fn decayed(freq: f64, last_ms: u64, now_ms: u64, half_life_ms: u64) -> f64 {
    if half_life_ms == 0 {
        return freq;
    }
    let age = now_ms.saturating_sub(last_ms) as f64;
    freq * (0.5f64).powf(age / half_life_ms as f64)
}

/// Ranks blocks: the lower a block's `hotness`, the sooner it is demoted
/// or evicted. Implementations are pure and cheap (called per block per
/// planning round).
pub trait EvictionPolicy: Send + Sync {
    fn name(&self) -> &'static str;
    fn hotness(&self, s: &AccessStats, now_ms: u64) -> f64;
}

/// Least recently used first.
pub struct Lru;

impl EvictionPolicy for Lru {
    fn name(&self) -> &'static str {
        "lru"
    }
    fn hotness(&self, s: &AccessStats, _now_ms: u64) -> f64 {
        s.last_ms as f64
    }
}

/// Least frequently used first, with counts decaying (halving every
/// `half_life_ms`) so that a block hot yesterday does not stay forever.
/// Ties (e.g. never-read blocks) go to the least recent.
pub struct Lfu {
    pub half_life_ms: u64,
}

impl EvictionPolicy for Lfu {
    fn name(&self) -> &'static str {
        "lfu"
    }
    fn hotness(&self, s: &AccessStats, now_ms: u64) -> f64 {
        // The recency term is below one read's worth, so it only breaks ties.
        let recency = s.last_ms as f64 / (now_ms.max(1) as f64 * 4.0);
        decayed(s.freq, s.last_ms, now_ms, self.half_life_ms) + recency
    }
}

/// The policy named in `worker.eviction`.
pub fn by_name(name: &str, half_life_ms: u64) -> Result<Box<dyn EvictionPolicy>> {
    match name {
        "lru" => Ok(Box::new(Lru)),
        "lfu" => Ok(Box::new(Lfu { half_life_ms })),
        other => Err(Error::new(ErrorKind::Config, format!("worker.eviction: '{other}' is not one of lru, lfu"))),
    }
}

/// A tier as the planner sees it.
#[derive(Clone, Copy, Debug)]
pub struct TierView {
    pub capacity: u64,
    /// Sealed bytes plus reservations.
    pub used: u64,
}

/// A sealed block as the planner sees it.
#[derive(Clone, Copy, Debug)]
pub struct BlockView {
    pub id: u64,
    pub len: u64,
    /// Bytes its tier gets back when it leaves: `len`, but for a block in
    /// an extent the extent's whole size if it is the last block left in
    /// it, else nothing (an extent's memory goes with its last block).
    /// The planner credits at least `len` (see `credit`).
    pub frees: u64,
    pub tier: usize,
    pub stats: AccessStats,
    /// Meta confirmed recently that the UFS holds it and it is not pinned.
    pub evictable: bool,
    /// Meta said recently that it may not leave (not asked about again).
    pub refused: bool,
    /// Being moved or otherwise not to be touched now.
    pub busy: bool,
}

#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    pub high: f64,
    pub low: f64,
    /// Whole-block reads in a slower tier that earn a promotion; 0 = never.
    pub promote_after: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Move {
    /// Copy to a slower tier (it is cold, and there is room below).
    Demote { id: u64, from: usize, to: usize },
    /// Copy to a faster tier (it was read `promote_after` times down here).
    Promote { id: u64, from: usize, to: usize },
    /// Drop from the cache (the UFS holds it; meta said so).
    Evict { id: u64, tier: usize },
}

#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub moves: Vec<Move>,
    /// Cold blocks that would be evicted if meta confirms they may be:
    /// asked in the next heartbeat.
    pub ask: Vec<u64>,
}

/// Bytes the planner counts as freed when `b` leaves its tier: its `len`
/// even inside an extent whose memory only comes back with its last block
/// (a file's blocks usually leave together, in the same rounds); crediting
/// only `frees` would never reach the low watermark in a MEM tier full of
/// extents and plan every block in it. A last member gets the extent's
/// whole size, dead bytes included.
fn credit(b: &BlockView) -> u64 {
    b.len.max(b.frees)
}

/// Brings every tier above its high watermark down to its low watermark
/// (coldest first: demote where a slower tier stays under its high
/// watermark, else evict if allowed, else ask meta), then promotes blocks
/// read `promote_after` times in a slower tier into the fastest tier that
/// stays under its high watermark, hottest first. Busy blocks are left alone.
pub fn plan(tiers: &[TierView], blocks: &[BlockView], policy: &dyn EvictionPolicy, th: Thresholds, now_ms: u64) -> Plan {
    let mut used: Vec<u64> = tiers.iter().map(|t| t.used).collect();
    let high = |t: usize| (tiers[t].capacity as f64 * th.high) as u64;
    let low = |t: usize| (tiers[t].capacity as f64 * th.low) as u64;
    let mut by_tier: Vec<Vec<(f64, &BlockView)>> = vec![Vec::new(); tiers.len()];
    for b in blocks.iter().filter(|b| !b.busy && b.tier < tiers.len()) {
        by_tier[b.tier].push((policy.hotness(&b.stats, now_ms), b));
    }
    for v in &mut by_tier {
        v.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.id.cmp(&b.1.id)));
    }
    let mut out = Plan::default();
    let mut moved = std::collections::HashSet::new();
    for t in 0..tiers.len() {
        if used[t] <= high(t) {
            continue;
        }
        // Bytes asked about: they count towards the target only for
        // deciding whether to ask about more.
        let mut asked = 0;
        for &(_, b) in &by_tier[t] {
            if used[t] <= low(t) {
                break;
            }
            if let Some(to) = (t + 1..tiers.len()).find(|&to| used[to] + b.len <= high(to)) {
                out.moves.push(Move::Demote { id: b.id, from: t, to });
                used[to] += b.len;
            } else if b.evictable {
                out.moves.push(Move::Evict { id: b.id, tier: t });
            } else {
                if !b.refused && used[t].saturating_sub(asked) > low(t) {
                    out.ask.push(b.id);
                    asked += credit(b);
                }
                continue;
            }
            used[t] = used[t].saturating_sub(credit(b));
            moved.insert(b.id);
        }
    }
    if th.promote_after > 0.0 {
        let mut hot: Vec<(f64, &BlockView)> = by_tier
            .iter()
            .skip(1)
            .flatten()
            .filter(|(_, b)| b.stats.hits_in_tier >= th.promote_after && !moved.contains(&b.id))
            .copied()
            .collect();
        hot.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.id.cmp(&b.1.id)));
        for (_, b) in hot {
            if let Some(to) = (0..b.tier).find(|&to| used[to] + b.len <= high(to)) {
                out.moves.push(Move::Promote { id: b.id, from: b.tier, to });
                used[to] += b.len;
                used[b.tier] = used[b.tier].saturating_sub(credit(b));
            }
        }
    }
    out
}

/// Blocks to evict right now, coldest first, so that `need` more bytes fit
/// in tier `tier`: only evictable, non-busy blocks of that tier. `None`
/// when even all of them would not make room.
pub fn make_room(
    tier: &TierView,
    tier_idx: usize,
    blocks: &[BlockView],
    need: u64,
    policy: &dyn EvictionPolicy,
    now_ms: u64,
) -> Option<Vec<u64>> {
    let free = tier.capacity.saturating_sub(tier.used);
    if free >= need {
        return Some(Vec::new());
    }
    let mut cand: Vec<(f64, &BlockView)> = blocks
        .iter()
        .filter(|b| b.tier == tier_idx && b.evictable && !b.busy)
        .map(|b| (policy.hotness(&b.stats, now_ms), b))
        .collect();
    cand.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.id.cmp(&b.1.id)));
    let mut freed = 0;
    let mut out = Vec::new();
    for (_, b) in cand {
        if free + freed >= need {
            break;
        }
        freed += credit(b);
        out.push(b.id);
    }
    (free + freed >= need).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;
    const TH: Thresholds = Thresholds { high: 0.9, low: 0.7, promote_after: 2.0 };

    fn block(id: u64, tier: usize, last_ms: u64) -> BlockView {
        BlockView {
            id,
            len: 10 * MB,
            frees: 10 * MB,
            tier,
            stats: AccessStats { last_ms, freq: 0.0, hits_in_tier: 0.0 },
            evictable: false,
            refused: false,
            busy: false,
        }
    }

    fn tiers(used: &[u64]) -> Vec<TierView> {
        used.iter().map(|&u| TierView { capacity: 100 * MB, used: u * MB }).collect()
    }

    #[test]
    fn lru_ranks_by_last_read_and_lfu_by_decayed_count() {
        let mut a = AccessStats::new(0);
        let mut b = AccessStats::new(0);
        for t in [10, 20, 30] {
            a.touch(t, 1000, 1.0);
        }
        b.touch(40, 1000, 1.0);
        assert!(Lru.hotness(&b, 50) > Lru.hotness(&a, 50), "b was read last");
        let lfu = Lfu { half_life_ms: 1000 };
        assert!(lfu.hotness(&a, 50) > lfu.hotness(&b, 50), "a was read three times");
        // Ten half-lives later a's three reads weigh less than one fresh read.
        let mut c = AccessStats::new(0);
        c.touch(10_040, 1000, 1.0);
        assert!(lfu.hotness(&c, 10_050) > lfu.hotness(&a, 10_050));
        assert_eq!(a.hits_in_tier, 3.0);
        let mut d = AccessStats::new(0);
        for _ in 0..16 {
            d.touch(5, 1000, 1.0 / 16.0); // one block read in 16 requests
        }
        assert_eq!(d.hits_in_tier, 1.0);
        assert!(by_name("fifo", 1).is_err());
    }

    #[test]
    fn under_the_high_watermark_nothing_moves() {
        let blocks: Vec<_> = (0..9).map(|i| block(i, 0, i)).collect();
        let p = plan(&tiers(&[90, 0]), &blocks, &Lru, TH, 100);
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn cold_blocks_sink_to_the_lower_tier_down_to_the_low_watermark() {
        let blocks: Vec<_> = (0..10).map(|i| block(i, 0, 100 - i)).collect(); // 9 is the coldest
        let p = plan(&tiers(&[100, 0]), &blocks, &Lru, TH, 200);
        assert_eq!(
            p.moves,
            vec![
                Move::Demote { id: 9, from: 0, to: 1 },
                Move::Demote { id: 8, from: 0, to: 1 },
                Move::Demote { id: 7, from: 0, to: 1 },
            ]
        );
        assert!(p.ask.is_empty());
    }

    #[test]
    fn without_room_below_only_evictable_blocks_leave_and_the_rest_are_asked_about() {
        let mut blocks: Vec<_> = (0..10).map(|i| block(i, 1, i)).collect(); // 0 is the coldest
        blocks[1].evictable = true;
        blocks[3].evictable = true;
        blocks[0].busy = true;
        blocks[2].refused = true;
        let p = plan(&tiers(&[0, 100]), &blocks, &Lru, TH, 200);
        assert_eq!(p.moves, vec![Move::Evict { id: 1, tier: 1 }, Move::Evict { id: 3, tier: 1 }]);
        assert_eq!(p.ask, vec![4], "neither the busy block nor one meta refused is asked about");
    }

    #[test]
    fn a_full_lower_tier_gets_no_demotions() {
        let blocks: Vec<_> = (0..10).map(|i| block(i, 0, i)).chain((10..19).map(|i| block(i, 1, i))).collect();
        let p = plan(&tiers(&[100, 90]), &blocks, &Lru, TH, 200);
        assert!(p.moves.is_empty(), "{p:?}");
        assert_eq!(p.ask, vec![0, 1, 2], "asks for the coldest until the low watermark");
    }

    #[test]
    fn blocks_read_often_below_climb_when_there_is_room() {
        let mut blocks = vec![block(1, 1, 5), block(2, 1, 6), block(3, 2, 7), block(4, 0, 1)];
        blocks[0].stats.hits_in_tier = 2.0;
        blocks[1].stats.hits_in_tier = 1.5; // not yet
        blocks[2].stats.hits_in_tier = 5.0;
        let p = plan(&tiers(&[80, 20, 10]), &blocks, &Lru, TH, 10);
        // Only one fits under the fastest tier's high watermark (90): the
        // hottest (block 3); block 1 goes as far as the middle tier... which
        // it is already in, so it stays.
        assert_eq!(p.moves, vec![Move::Promote { id: 3, from: 2, to: 0 }]);
        let p = plan(&tiers(&[60, 20, 10]), &blocks, &Lru, TH, 10);
        assert_eq!(p.moves, vec![Move::Promote { id: 3, from: 2, to: 0 }, Move::Promote { id: 1, from: 1, to: 0 }]);
        let never = Thresholds { promote_after: 0.0, ..TH };
        assert!(plan(&tiers(&[60, 20, 10]), &blocks, &Lru, never, 10).moves.is_empty());
    }

    #[test]
    fn demoted_blocks_are_not_promoted_back_in_the_same_round() {
        let mut blocks: Vec<_> = (0..10).map(|i| block(i, 0, 100 - i)).collect();
        blocks[9].stats.hits_in_tier = 9.0; // in tier 0: not a promotion candidate anyway
        let p = plan(&tiers(&[100, 0]), &blocks, &Lru, TH, 200);
        assert!(p.moves.iter().all(|m| matches!(m, Move::Demote { .. })), "{p:?}");
    }

    #[test]
    fn room_is_made_from_evictable_blocks_only() {
        let mut blocks: Vec<_> = (0..10).map(|i| block(i, 0, i)).collect();
        let t = TierView { capacity: 100 * MB, used: 100 * MB };
        assert_eq!(make_room(&t, 0, &blocks, 15 * MB, &Lru, 50), None);
        blocks[5].evictable = true;
        blocks[2].evictable = true;
        blocks[7].evictable = true;
        assert_eq!(make_room(&t, 0, &blocks, 15 * MB, &Lru, 50), Some(vec![2, 5]));
        assert_eq!(make_room(&t, 1, &blocks, 15 * MB, &Lru, 50), None, "other tiers' blocks do not count");
        let roomy = TierView { capacity: 100 * MB, used: 0 };
        assert_eq!(make_room(&roomy, 0, &blocks, 15 * MB, &Lru, 50), Some(vec![]));
    }

    #[test]
    fn blocks_inside_extents_count_their_len_towards_the_low_watermark() {
        // A MEM tier full of extents of several blocks each: none frees
        // anything by itself, yet each counts its len.
        let mut blocks: Vec<_> = (0..10).map(|i| block(i, 0, 100 - i)).collect(); // 9 is the coldest
        for b in &mut blocks {
            b.frees = 0;
        }
        let three = vec![
            Move::Demote { id: 9, from: 0, to: 1 },
            Move::Demote { id: 8, from: 0, to: 1 },
            Move::Demote { id: 7, from: 0, to: 1 },
        ];
        assert_eq!(plan(&tiers(&[100, 0]), &blocks, &Lru, TH, 200).moves, three, "stops at the low watermark");
        // Nowhere to go and none cleared: asks only down to the watermark.
        assert_eq!(plan(&tiers(&[100, 100]), &blocks, &Lru, TH, 200).ask, vec![9, 8, 7]);
        for b in &mut blocks {
            b.evictable = true;
        }
        let p = plan(&tiers(&[100, 100]), &blocks, &Lru, TH, 200);
        assert_eq!(p.moves, (7..10).rev().map(|id| Move::Evict { id, tier: 0 }).collect::<Vec<_>>());
        let t = TierView { capacity: 100 * MB, used: 100 * MB };
        assert_eq!(make_room(&t, 0, &blocks, 15 * MB, &Lru, 50), Some(vec![9, 8]), "not every block in the tier");
        // The last block of an extent with 20 MB of dead bytes frees them too.
        blocks[9].frees = 30 * MB;
        assert_eq!(plan(&tiers(&[100, 0]), &blocks, &Lru, TH, 200).moves, three[..1]);
    }
}
