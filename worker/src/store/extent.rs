//! Extents: a file's consecutive MEM blocks in one tier file (see the
//! module comment of `store`).

use curvine_common::tier::TierKind;

use super::{Inner, State, Tier};

/// Where a block's bytes start in its extent's file, which must be
/// page-aligned: same-host readers map blocks one by one.
pub(super) const EXTENT_ALIGN: u64 = 4096;

/// Several consecutive blocks of one file in one MEM-tier file,
/// `blocks/<root>`.
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
/// `blocks/<root>` from `base`. Extents are MEM-only: nothing to sync.
pub(super) fn write_at_marker(t: &Tier, id: u64, root: u64, base: u64, len: u64) -> std::io::Result<()> {
    let tmp = t.tmp_at_path(id);
    std::fs::write(&tmp, format!("{root} {base} {len}\n"))?;
    std::fs::rename(&tmp, t.at_path(id))
}

impl Inner {
    /// The extent `after` ends, if block `id` may be appended to it: `after`
    /// is a MEM-tier block here, the last of its extent (or of a file of its
    /// own, which then becomes an extent), nothing else is being appended,
    /// it ends page-aligned and its tier has room. Marks the append and
    /// returns (tier, root, base).
    pub(super) fn extent_for(&self, st: &mut State, id: u64, after: u64, len_hint: u64) -> Option<(usize, u64, u64)> {
        if after == 0 {
            return None;
        }
        let e = st.index.get(&after)?;
        let tier = e.tier;
        if e.moving || self.tiers[tier].kind != TierKind::Mem || st.usage[tier].free() < len_hint.max(1) {
            return None;
        }
        let root = match e.at {
            Some((root, _)) => root,
            None => {
                if e.len == 0 || !e.len.is_multiple_of(EXTENT_ALIGN) {
                    return None;
                }
                // The first block's marker goes first: a restart must not
                // take the grown file for that block alone.
                if let Err(err) = write_at_marker(&self.tiers[tier], after, after, 0, e.len) {
                    tracing::warn!(block = after, error = %err, "cannot start an extent; the block gets a file of its own");
                    return None;
                }
                let len = e.len;
                st.extents.insert(after, Extent { tier, members: vec![after], end: len, appending: None, dead: 0 });
                st.index.get_mut(&after).expect("looked up above").at = Some((after, 0));
                after
            }
        };
        let x = st.extents.get_mut(&root)?;
        if x.appending.is_some() || x.members.last() != Some(&after) || !x.end.is_multiple_of(EXTENT_ALIGN) {
            return None;
        }
        x.appending = Some(id);
        Some((tier, root, x.end))
    }

    /// Drops extent `root` when no block is left in it or being appended:
    /// its file goes and its bytes stop counting.
    pub(super) fn free_extent_if_empty(&self, st: &mut State, root: u64) {
        let Some(x) = st.extents.get(&root) else { return };
        if !x.members.is_empty() || x.appending.is_some() {
            return;
        }
        let x = st.extents.remove(&root).expect("looked up above");
        let u = &mut st.usage[x.tier];
        u.used = u.used.saturating_sub(x.dead);
        let p = self.tiers[x.tier].block_path(root);
        if let Err(e) = std::fs::remove_file(&p) {
            tracing::warn!(path = %p.display(), error = %e, "cannot unlink an emptied extent file");
        }
        tracing::debug!(root, tier = %self.tiers[x.tier].kind, bytes = x.dead, "extent freed");
    }

    /// Block `id` (`len` bytes) leaves extent `root`: its marker and crcs
    /// go, its bytes stay held until the extent is empty.
    pub(super) fn leave_extent(&self, st: &mut State, root: u64, id: u64, len: u64) {
        if let Some(x) = st.extents.get_mut(&root) {
            x.members.retain(|&m| m != id);
            x.dead += len;
            let t = &self.tiers[x.tier];
            for p in [t.at_path(id), t.crc_path(id)] {
                if let Err(e) = std::fs::remove_file(&p) {
                    tracing::warn!(path = %p.display(), error = %e, "cannot unlink a departed block's marker");
                }
            }
        }
        self.free_extent_if_empty(st, root);
    }

    /// A sealed append joins its extent.
    pub(super) fn join_extent(&self, st: &mut State, root: u64, id: u64, end: u64) {
        if let Some(x) = st.extents.get_mut(&root) {
            x.appending = None;
            x.members.push(id);
            x.end = end;
        }
    }

    /// An append that did not commit (its sink cut the file back).
    pub(super) fn end_append(&self, st: &mut State, root: u64) {
        if let Some(x) = st.extents.get_mut(&root) {
            x.appending = None;
        }
        self.free_extent_if_empty(st, root);
    }
}
