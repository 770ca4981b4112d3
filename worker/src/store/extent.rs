//! Extents: a file's consecutive MEM blocks in one tier file (see the
//! module comment of `store`).

use std::fs::File;
use std::path::PathBuf;

use curvine_common::tier::TierKind;
use curvine_common::{Error, ErrorKind, Result};

use super::moves::CheckedCopy;
use super::{load_crcs, Inner, State, Tier, TieredStore};

/// Where a block's bytes start in its extent's file, which must be
/// page-aligned: same-host readers map blocks one by one.
pub(super) const EXTENT_ALIGN: u64 = 4096;

/// Several consecutive blocks of one file in one MEM-tier file,
/// `blocks/x<n>`.
pub(super) struct Extent {
    pub tier: usize,
    /// Indexed blocks in it, in file order.
    pub members: Vec<u64>,
    /// Where the last block ends: the next one starts here.
    pub end: u64,
    /// The block being appended, if any (one at a time).
    pub appending: Option<u64>,
    /// Bytes of blocks that left but are still held.
    pub dead: u64,
}

/// Writes `blocks/<id>.at` (through `tmp/`): block `id` is `len` bytes of
/// `blocks/x<n>` from `base`. Extents are MEM-only: nothing to sync.
pub(super) fn write_at_marker(t: &Tier, id: u64, n: u64, base: u64, len: u64) -> std::io::Result<()> {
    let tmp = t.tmp_at_path(id);
    std::fs::write(&tmp, format!("{n} {base} {len}\n"))?;
    std::fs::rename(&tmp, t.at_path(id))
}

impl Inner {
    /// The extent `after` ends, if block `id` may be appended to it: `after`
    /// is a MEM-tier block here, the last of its extent (or of a file of its
    /// own, which then becomes an extent), nothing else is being appended,
    /// it ends page-aligned and its tier has room. Marks the append and
    /// returns (tier, extent number, base).
    pub(super) fn extent_for(&self, st: &mut State, id: u64, after: u64, len_hint: u64) -> Option<(usize, u64, u64)> {
        if after == 0 {
            return None;
        }
        let e = st.index.get(&after)?;
        let tier = e.tier;
        if e.moving || self.tiers[tier].kind != TierKind::Mem || st.usage[tier].free() < len_hint.max(1) {
            return None;
        }
        let ext = match e.at {
            Some((ext, _)) => ext,
            None => {
                if e.len == 0 || !e.len.is_multiple_of(EXTENT_ALIGN) {
                    return None;
                }
                // The block's file becomes the extent: marker first, then
                // the rename (a crash between leaves a marker naming no
                // file, dropped at start; the block keeps its own file).
                let (t, n, len) = (&self.tiers[tier], st.next_extent, e.len);
                let made = write_at_marker(t, after, n, 0, len).and_then(|()| {
                    std::fs::rename(t.block_path(after), t.extent_path(n)).inspect_err(|_| {
                        let _ = std::fs::remove_file(t.at_path(after));
                    })
                });
                if let Err(err) = made {
                    tracing::warn!(block = after, error = %err, "cannot start an extent; the block keeps a file of its own");
                    return None;
                }
                st.next_extent += 1;
                st.extents.insert(n, Extent { tier, members: vec![after], end: len, appending: None, dead: 0 });
                st.index.get_mut(&after).expect("looked up above").at = Some((n, 0));
                n
            }
        };
        // Markers whose end overflows are dropped at start; checked anyway.
        let tail_end = st.index[&after].at.map_or(0, |(_, base)| base).checked_add(st.index[&after].len)?;
        let x = st.extents.get_mut(&ext)?;
        // Bytes past the last block (an append a crash cut short) would put
        // the next block off its file offset.
        if x.appending.is_some() || x.members.last() != Some(&after) || x.end != tail_end || !x.end.is_multiple_of(EXTENT_ALIGN) {
            return None;
        }
        x.appending = Some(id);
        Some((tier, ext, x.end))
    }

    /// Drops extent `ext` when no block is left in it or being appended:
    /// its file goes and its bytes stop counting.
    pub(super) fn free_extent_if_empty(&self, st: &mut State, ext: u64) {
        let Some(x) = st.extents.get(&ext) else { return };
        if !x.members.is_empty() || x.appending.is_some() {
            return;
        }
        let x = st.extents.remove(&ext).expect("looked up above");
        let u = &mut st.usage[x.tier];
        u.used = u.used.saturating_sub(x.dead);
        let p = self.tiers[x.tier].extent_path(ext);
        if let Err(e) = std::fs::remove_file(&p) {
            tracing::warn!(path = %p.display(), error = %e, "cannot unlink an emptied extent file");
        }
        tracing::debug!(ext, tier = %self.tiers[x.tier].kind, bytes = x.dead, "extent freed");
    }

    /// Block `id` (`len` bytes) leaves extent `ext`: its marker and crcs
    /// go, its bytes stay held until the extent is empty.
    pub(super) fn leave_extent(&self, st: &mut State, ext: u64, id: u64, len: u64) {
        if let Some(x) = st.extents.get(&ext) {
            let t = &self.tiers[x.tier];
            for p in [t.at_path(id), t.crc_path(id)] {
                if let Err(e) = std::fs::remove_file(&p) {
                    tracing::warn!(path = %p.display(), error = %e, "cannot unlink a departed block's marker");
                }
            }
        }
        self.move_out(st, ext, id, len);
    }

    /// `leave_extent` without touching the block's files (it moves to
    /// another extent, whose marker replaced its old one).
    fn move_out(&self, st: &mut State, ext: u64, id: u64, len: u64) {
        if let Some(x) = st.extents.get_mut(&ext) {
            x.members.retain(|&m| m != id);
            x.dead += len;
        }
        self.free_extent_if_empty(st, ext);
    }

    /// A sealed append joins its extent.
    pub(super) fn join_extent(&self, st: &mut State, ext: u64, id: u64, end: u64) {
        if let Some(x) = st.extents.get_mut(&ext) {
            x.appending = None;
            x.members.push(id);
            x.end = end;
        }
    }

    /// An append that did not commit (its sink cut the file back).
    pub(super) fn end_append(&self, st: &mut State, ext: u64) {
        if let Some(x) = st.extents.get_mut(&ext) {
            x.appending = None;
        }
        self.free_extent_if_empty(st, ext);
    }
}

use curvine_fabric::local::MAX_JOIN;

/// One block to copy into a new extent.
struct Part {
    id: u64,
    from: (PathBuf, u64),
    base: u64,
    len: u64,
    crcs: Option<std::sync::Arc<[u32]>>,
}

impl TieredStore {
    /// Makes `ids` — a file's blocks, in file order, all in MEM here — one
    /// extent with every block at its file offset, so a same-host reader
    /// can hand the whole file to the kernel (FUSE passthrough). For files
    /// whose blocks were not written after each other here (loaded from a
    /// UFS, promoted, written through several workers). Copies every block
    /// (checked against its crcs) into a new extent file under a
    /// reservation, then switches each block over with its marker; the old
    /// files go (an old extent once its last block left). Already one such
    /// extent: nothing to do. Blocking IO: call from a blocking thread.
    #[tracing::instrument(skip(self, ids), fields(worker = self.inner.worker_id, blocks = ids.len()))]
    pub fn join(&self, ids: &[u64]) -> Result<()> {
        let inner = &self.inner;
        if ids.len() > MAX_JOIN {
            return Err(Error::invalid(format!("{} blocks to join, at most {MAX_JOIN}", ids.len())));
        }
        let (tier, n, parts, total) = {
            let mut st = inner.state.lock();
            let mut parts = Vec::with_capacity(ids.len());
            let mut base = 0u64;
            let mut tier = None;
            for (i, id) in ids.iter().enumerate() {
                let e = st.index.get(id).ok_or_else(|| inner.not_found(*id))?;
                if inner.tiers[e.tier].kind != TierKind::Mem || tier.is_some_and(|t| t != e.tier) {
                    return Err(Error::invalid(format!("block {id} is not in this worker's MEM tier with the others")));
                }
                if e.moving || parts.iter().any(|p: &Part| p.id == *id) {
                    return Err(Error::new(ErrorKind::Unavailable, format!("block {id} is being moved (or named twice)")));
                }
                if i + 1 < ids.len() && !e.len.is_multiple_of(EXTENT_ALIGN) {
                    return Err(Error::invalid(format!("block {id} ({} bytes) is not the last and not page-aligned", e.len)));
                }
                tier = Some(e.tier);
                parts.push(Part { id: *id, from: e.file(&inner.tiers, *id), base, len: e.len, crcs: e.crcs.clone() });
                base += e.len;
            }
            let Some(tier) = tier else { return Ok(()) };
            // One extent with exactly these blocks at their offsets already?
            let one = match st.index[&ids[0]].at {
                Some((x, 0)) => st.extents.get(&x).is_some_and(|ext| ext.members == ids && ext.end == base)
                    && ids.iter().zip(&parts).all(|(id, p)| st.index[id].at == Some((x, p.base))),
                _ => ids.len() == 1,
            };
            if one {
                return Ok(());
            }
            if st.usage[tier].free() < base {
                return Err(inner.no_space(&st, &format!("joining {} blocks ({} bytes)", ids.len(), base)));
            }
            for id in ids {
                st.index.get_mut(id).expect("looked up above").moving = true;
            }
            st.usage[tier].reserved += base;
            let n = st.next_extent;
            st.next_extent += 1;
            (tier, n, parts, base)
        };
        let t = &inner.tiers[tier];
        let tmp = t.dir.join("tmp").join(format!("x{n}"));
        let copied = copy_parts(inner, t, &parts, &tmp).and_then(|()| {
            std::fs::rename(&tmp, t.extent_path(n)).map_err(|e| Error::from(e).context("seal a joined extent"))
        });
        let mut st = inner.state.lock();
        st.usage[tier].reserved = st.usage[tier].reserved.saturating_sub(total);
        // The block copied, not one deleted meanwhile and loaded again
        // (possibly being moved itself now).
        let same = |e: &super::Entry, p: &Part| e.moving && e.tier == tier && e.file(&inner.tiers, p.id) == p.from;
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&tmp);
            for p in &parts {
                if let Some(entry) = st.index.get_mut(&p.id).filter(|e| same(e, p)) {
                    entry.moving = false;
                }
            }
            return Err(e);
        }
        let mut x = Extent { tier, members: Vec::with_capacity(parts.len()), end: total, appending: None, dead: 0 };
        st.usage[tier].used += total;
        for p in &parts {
            // Deleted (or deleted and loaded again elsewhere) while it was
            // copied: its copy is dead weight.
            let Some(entry) = st.index.get_mut(&p.id).filter(|e| same(e, p)) else {
                x.dead += p.len;
                continue;
            };
            entry.moving = false;
            // The marker switches the block (and wins over its old file at
            // start); a block that cannot be switched stays where it is.
            if let Err(e) = write_at_marker(t, p.id, n, p.base, p.len) {
                tracing::warn!(block = p.id, error = %e, "cannot switch a block to its joined extent");
                x.dead += p.len;
                continue;
            }
            let old = entry.at.replace((n, p.base));
            x.members.push(p.id);
            match old {
                Some((m, _)) => inner.move_out(&mut st, m, p.id, p.len),
                None => {
                    let u = &mut st.usage[tier];
                    u.used = u.used.saturating_sub(p.len);
                    if let Err(e) = std::fs::remove_file(t.block_path(p.id)) {
                        tracing::warn!(block = p.id, error = %e, "cannot unlink a joined block's old file");
                    }
                }
            }
        }
        st.extents.insert(n, x);
        inner.free_extent_if_empty(&mut st, n);
        inner.refresh_gauges(&st);
        inner.metrics.bytes_moved.inc_by(total);
        tracing::debug!(extent = n, bytes = total, "blocks joined into one extent");
        Ok(())
    }
}

/// Copies every part's bytes, checked against its crcs, into a new file
/// `to` at the part's base.
fn copy_parts(inner: &Inner, t: &Tier, parts: &[Part], to: &std::path::Path) -> Result<()> {
    let out = File::create(to).map_err(|e| Error::from(e).context(format!("create {}", to.display())))?;
    for p in parts {
        let (path, from) = &p.from;
        let crcs = match &p.crcs {
            Some(c) => c.clone(),
            None => load_crcs(&t.crc_path(p.id), p.len)?,
        };
        let input = File::open(path).map_err(|e| Error::from(e).context(format!("block {}", p.id)))?;
        let io = |e: std::io::Error, what: &str| {
            let kind = if e.raw_os_error() == Some(libc::ENOSPC) { ErrorKind::NoSpace } else { ErrorKind::Io };
            Error::new(kind, format!("worker {}: joining block {}: {what}: {e}", inner.worker_id, p.id))
        };
        let block = CheckedCopy { id: p.id, len: p.len, crcs: &crcs };
        block.copy(inner.worker_id, (&input, *from), (&out, p.base), None, &io)?;
    }
    Ok(())
}
