//! Moving a sealed block between tiers (demotion and promotion).
//!
//! To ensure correctness: the copy goes to `tmp/<id>.mv` in the target tier
//! (not a sink's `tmp/<id>`: the block may be deleted and written there
//! again meanwhile) under a reservation, every chunk is checked against
//! its crc32c on the way (a block that fails is dropped, never moved or
//! served), and it is renamed into `blocks/` (crc file first) before the
//! index switches tiers. A failed move drops only its own files, and
//! releases or drops the block only if it is still the one it copied. Only
//! then is the source unlinked; readers that opened it keep their handle,
//! and `open_read` follows a block that moved under it. A crash leaves at
//! most a duplicate, which the next start removes. A block moved out of an
//! extent leaves its bytes there until the extent empties (see `mod.rs`).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use curvine_common::tier::TierKind;
use curvine_common::{Error, ErrorKind, Result};
use curvine_fabric::frame::CHUNK;

use super::{load_crcs, TieredStore};

/// Paces copies to `rate` bytes per second.
pub struct Pace {
    rate: u64,
    start: Instant,
    bytes: u64,
}

impl Pace {
    pub fn new(rate: u64) -> Pace {
        Pace { rate: rate.max(1), start: Instant::now(), bytes: 0 }
    }

    /// Accounts `n` bytes just copied; blocks until the average is back
    /// under the rate.
    fn take(&mut self, n: u64) {
        self.bytes += n;
        let due = Duration::from_secs_f64(self.bytes as f64 / self.rate as f64);
        let elapsed = self.start.elapsed();
        if due > elapsed {
            std::thread::sleep(due - elapsed);
        }
    }
}

/// Bytes copied per read/write while moving (a multiple of `CHUNK`).
const COPY_BUF: usize = 16 * CHUNK as usize;

/// One block's bytes to copy, checked chunk by chunk against its crcs.
pub(super) struct CheckedCopy<'a> {
    pub id: u64,
    pub len: u64,
    pub crcs: &'a [u32],
}

impl CheckedCopy<'_> {
    /// Copies the block from `input` at its offset to `out` at its offset,
    /// `COPY_BUF` at a time; a chunk that fails its crc stops the copy as
    /// `Corrupt` before it is written. `io` names a failed "read"/"write".
    pub(super) fn copy(
        &self,
        worker: u64,
        (input, from): (&File, u64),
        (out, to): (&File, u64),
        mut pace: Option<&mut Pace>,
        io: &dyn Fn(std::io::Error, &str) -> Error,
    ) -> Result<()> {
        let mut buf = vec![0u8; COPY_BUF.min(self.len as usize)];
        let mut off = 0u64;
        while off < self.len {
            let n = ((self.len - off) as usize).min(COPY_BUF);
            input.read_exact_at(&mut buf[..n], from + off).map_err(|e| io(e, "read"))?;
            for (i, chunk) in buf[..n].chunks(CHUNK as usize).enumerate() {
                let idx = (off / CHUNK) as usize + i;
                if self.crcs.get(idx) != Some(&curvine_fabric::crc::crc32c(chunk)) {
                    return Err(Error::new(
                        ErrorKind::Corrupt,
                        format!("block {} on worker {worker}: chunk {idx} fails its crc32c", self.id),
                    ));
                }
            }
            out.write_all_at(&buf[..n], to + off).map_err(|e| io(e, "write"))?;
            off += n as u64;
            if let Some(p) = pace.as_deref_mut() {
                p.take(n as u64);
            }
        }
        Ok(())
    }
}

impl TieredStore {
    /// Copies block `id` into tier `to` and switches the index over.
    /// Blocking IO: call from a blocking thread.
    #[tracing::instrument(skip(self, pace), fields(worker = self.inner.worker_id))]
    pub fn move_block(&self, id: u64, to: usize, pace: &mut Pace) -> Result<()> {
        let inner = &self.inner;
        let (from, len, crcs, (path, base), at) = {
            let mut st = inner.state.lock();
            let free = st.usage.get(to).map(|u| u.free()).ok_or_else(|| Error::invalid(format!("no tier {to}")))?;
            let e = st.index.get_mut(&id).ok_or_else(|| inner.not_found(id))?;
            if e.moving {
                return Err(Error::new(ErrorKind::AlreadyExists, format!("block {id} is already moving")));
            }
            if e.tier == to {
                return Ok(());
            }
            if free < e.len {
                let what = format!("moving block {id} into {}", inner.tiers[to].kind);
                return Err(inner.no_space(&st, &what));
            }
            e.moving = true;
            let out = (e.tier, e.len, e.crcs.clone(), e.file(&inner.tiers, id), e.at);
            st.usage[to].reserved += out.1;
            out
        };
        let result = self.copy_block(id, from, to, len, crcs, (&path, base), pace);
        let mut st = inner.state.lock();
        st.usage[to].reserved = st.usage[to].reserved.saturating_sub(len);
        let (src, dst) = (&inner.tiers[from], &inner.tiers[to]);
        // The block copied, not one deleted meanwhile and loaded again.
        let same = |e: &super::Entry| e.moving && e.tier == from && e.file(&inner.tiers, id) == (path.clone(), base);
        // What the copy sealed in the target tier is this move's to drop
        // unless the block came back into that tier meanwhile, or is being
        // written again (a reload of the same bytes, whose files these are
        // or are about to be).
        let drop_copy = |st: &super::State| {
            if !st.index.get(&id).is_some_and(|e| e.tier == to) && !st.writing.contains(&id) {
                for p in [dst.block_path(id), dst.crc_path(id)] {
                    let _ = std::fs::remove_file(p);
                }
            }
        };
        if let Err(e) = result {
            for p in [dst.move_tmp_path(id), dst.move_tmp_crc_path(id)] {
                let _ = std::fs::remove_file(p);
            }
            drop_copy(&st);
            // A block deleted meanwhile and loaded again is not this move's
            // to release or drop.
            let Some(entry) = st.index.get_mut(&id).filter(|e| same(e)) else { return Err(e) };
            entry.moving = false;
            if e.kind() == ErrorKind::Corrupt {
                inner.metrics.blocks_corrupt.inc();
                tracing::error!(block = id, tier = %src.kind, error = %e, "corrupt block dropped");
                inner.unindex(&mut st, id);
            }
            return Err(e);
        }
        let Some(entry) = st.index.get_mut(&id).filter(|e| same(e)) else {
            // Deleted while it was being copied: drop the copy too.
            drop_copy(&st);
            return Err(inner.not_found(id));
        };
        entry.tier = to;
        entry.moving = false;
        entry.at = None;
        entry.stats.hits_in_tier = 0.0;
        for (t, sign) in [(from, -1i64), (to, 1)] {
            let u = &mut st.usage[t];
            // Bytes in an extent stay counted where they are until it empties.
            if sign > 0 || at.is_none() {
                u.used = (u.used as i64 + sign * len as i64) as u64;
            }
            u.blocks = (u.blocks as i64 + sign) as u64;
        }
        st.deltas.added.retain(|b| b.id != id);
        st.deltas.added.push(super::StoredBlock { id, len, tier: dst.kind });
        if let Some((ext, _)) = at {
            inner.leave_extent(&mut st, ext, id, len);
        }
        inner.refresh_gauges(&st);
        drop(st);
        if at.is_none() {
            for p in [src.block_path(id), src.crc_path(id)] {
                if let Err(e) = std::fs::remove_file(&p) {
                    tracing::warn!(path = %p.display(), error = %e, "cannot unlink moved block's old file");
                }
            }
        }
        inner.metrics.bytes_moved.inc_by(len);
        if to < from {
            inner.metrics.blocks_promoted.inc();
        } else {
            inner.metrics.blocks_demoted.inc();
        }
        tracing::debug!(block = id, from = %src.kind, to = %dst.kind, len, "block moved");
        Ok(())
    }

    fn copy_block(
        &self,
        id: u64,
        from: usize,
        to: usize,
        len: u64,
        crcs: Option<std::sync::Arc<[u32]>>,
        (path, base): (&std::path::Path, u64),
        pace: &mut Pace,
    ) -> Result<()> {
        let inner = &self.inner;
        let (src, dst) = (&inner.tiers[from], &inner.tiers[to]);
        let crcs = match crcs {
            Some(c) => c,
            None => load_crcs(&src.crc_path(id), len)?,
        };
        let io = |e: std::io::Error, what: &str, dir: &std::path::Path| {
            let kind = if e.raw_os_error() == Some(libc::ENOSPC) { ErrorKind::NoSpace } else { ErrorKind::Io };
            Error::new(kind, format!("worker {}: {what} block {id} in {}: {e}", inner.worker_id, dir.display()))
        };
        let input = File::open(path).map_err(|e| io(e, "open", &src.dir))?;
        let out = File::create(dst.move_tmp_path(id)).map_err(|e| io(e, "create", &dst.dir))?;
        let block = CheckedCopy { id, len, crcs: &crcs };
        block.copy(inner.worker_id, (&input, base), (&out, 0), Some(pace), &|e, what| {
            io(e, what, if what == "read" { &src.dir } else { &dst.dir })
        })?;
        let raw: Vec<u8> = crcs.iter().flat_map(|c| c.to_le_bytes()).collect();
        std::fs::write(dst.move_tmp_crc_path(id), raw).map_err(|e| io(e, "write crc of", &dst.dir))?;
        if inner.sync_on_commit && dst.kind != TierKind::Mem {
            out.sync_all().map_err(|e| io(e, "sync", &dst.dir))?;
            File::open(dst.move_tmp_crc_path(id))
                .and_then(|f| f.sync_all())
                .map_err(|e| io(e, "sync crc of", &dst.dir))?;
        }
        std::fs::rename(dst.move_tmp_crc_path(id), dst.crc_path(id)).map_err(|e| io(e, "seal", &dst.dir))?;
        std::fs::rename(dst.move_tmp_path(id), dst.block_path(id)).map_err(|e| io(e, "seal", &dst.dir))?;
        Ok(())
    }
}
