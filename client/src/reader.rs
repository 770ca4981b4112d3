//! `FileReader`: positional and sequential reads of a complete file, straight
//! into the caller's buffer.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use curvine_common::proto::{BlockLocation as LocatedBlockLocation, FileStatus, LocatedBlock};
use curvine_common::tier::TierKind;
use curvine_common::{Error, ErrorKind, Result};

use crate::ahead::{Ahead, Window};
use crate::fs::FileSystem;
use futures::StreamExt;

/// 0 = same host, 1 = same rack, 2 = elsewhere.
pub(crate) fn nearness(l: &LocatedBlockLocation, host: &str, rack: &str) -> u8 {
    if l.hostname == host {
        0
    } else if !rack.is_empty() && l.rack == rack {
        1
    } else {
        2
    }
}

/// Sequential reads smaller than this use the read-ahead window.
const SMALL_READ: u64 = 256 << 10;

/// Blocks of one read fetched at the same time.
const PARALLEL_BLOCKS: usize = 4;

pub struct FileReader {
    fs: FileSystem,
    status: FileStatus,
    blocks: Arc<[LocatedBlock]>,
    pos: u64,
    /// Where the last read ended: a read starting there is sequential.
    last_end: AtomicU64,
    /// Blocks below this index have had their UFS load asked for ahead.
    ahead: AtomicUsize,
    /// Windows read ahead for a sequential reader of remote blocks.
    window: Mutex<Ahead>,
}

impl FileReader {
    pub(crate) fn new(fs: FileSystem, status: FileStatus, blocks: Vec<LocatedBlock>) -> FileReader {
        Self::with_blocks(fs, status, blocks.into())
    }

    fn with_blocks(fs: FileSystem, status: FileStatus, blocks: Arc<[LocatedBlock]>) -> FileReader {
        FileReader {
            fs,
            status,
            blocks,
            pos: 0,
            last_end: AtomicU64::new(0),
            ahead: AtomicUsize::new(0),
            window: Mutex::new(Ahead::default()),
        }
    }

    #[cfg(feature = "gpu")]
    pub(crate) fn fs(&self) -> &FileSystem {
        &self.fs
    }

    pub fn status(&self) -> &FileStatus {
        &self.status
    }

    pub fn len(&self) -> u64 {
        self.status.len
    }

    pub fn is_empty(&self) -> bool {
        self.status.len == 0
    }

    pub fn blocks(&self) -> &[LocatedBlock] {
        &self.blocks
    }

    /// This reader's open result (status and block locations), encoded:
    /// `FileSystem::reader_from` makes the same reader later without asking
    /// meta. Block ids are never reused, so a kept result can go stale
    /// (reads then fail with `NotFound`) but never reads another file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        use prost::Message;
        curvine_common::proto::OpenResponse { status: Some(self.status.clone()), blocks: self.blocks.to_vec() }
            .encode_to_vec()
    }

    /// Reads at the current position and advances it; 0 at end of file.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        let n = self.read_at(self.pos, buf).await?;
        self.pos += n as u64;
        Ok(n)
    }

    pub fn seek(&mut self, pos: u64) {
        self.pos = pos;
    }

    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Fills `buf` from file offset `offset`; returns the bytes read (fewer
    /// than `buf.len()` only at end of file).
    #[tracing::instrument(level = "debug", skip_all, fields(path = %self.status.path, offset, len = buf.len()))]
    pub async fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let end = offset.saturating_add(buf.len() as u64).min(self.status.len);
        if offset >= end {
            return Ok(0);
        }
        let sequential = self.last_end.swap(end, Ordering::Relaxed) == offset;
        if sequential {
            // Past the middle of a block: time to fetch the next one.
            let cur = self.blocks.partition_point(|b| b.offset + b.len < end);
            if self.blocks.get(cur).is_some_and(|b| end - b.offset >= b.len / 2) {
                self.load_ahead(cur + 1);
            }
            let window = self.fs.inner.conf.read_ahead.0;
            // Larger reads already keep a pipeline of requests busy; the
            // window would only add a copy (measured: no gain from 256 KiB up).
            if window > 0 && (end - offset) < (window / 4).min(SMALL_READ) && !self.is_local(offset) {
                return self.read_windowed(offset, &mut buf[..(end - offset) as usize], window).await;
            }
        }
        self.read_range(offset, &mut buf[..(end - offset) as usize]).await
    }

    /// Whether the block at `offset` is read from this host's worker files
    /// (fast enough that reading ahead would only add a copy).
    fn is_local(&self, offset: u64) -> bool {
        let inner = &self.fs.inner;
        let i = self.blocks.partition_point(|b| b.offset + b.len <= offset);
        inner.conf.short_circuit
            && self.blocks.get(i).is_some_and(|b| !b.from_ufs && b.locations.iter().any(|l| l.hostname == inner.hostname))
    }

    /// A sequential read served from the window read ahead (waiting for it
    /// if it is still arriving); what it does not hold is read directly.
    /// Then the next window is started, so it arrives while this one is
    /// consumed.
    async fn read_windowed(&self, offset: u64, buf: &mut [u8], window: u64) -> Result<usize> {
        let mut done = self.window.lock().take_from_ready(offset, buf);
        let mut served = done;
        if done < buf.len() {
            let pending = self.window.lock().take_pending(offset + done as u64);
            if let Some(task) = pending {
                match task.await {
                    Ok(Ok(w)) => {
                        let mut a = self.window.lock();
                        a.ready = Some(w);
                        let n = a.take_from_ready(offset + done as u64, &mut buf[done..]);
                        done += n;
                        served += n;
                    }
                    // The direct read below reports the error, if it persists.
                    Ok(Err(e)) => tracing::debug!(error = %e, "read-ahead failed"),
                    Err(e) => tracing::debug!(error = %e, "read-ahead task ended"),
                }
            }
        }
        self.fs.inner.ahead_served.fetch_add(served as u64, Ordering::Relaxed);
        if done < buf.len() {
            done += self.read_range(offset + done as u64, &mut buf[done..]).await?;
        }
        let pos = offset + done as u64;
        let mut a = self.window.lock();
        if a.pending.is_none() {
            let start = a.next_start(pos);
            if start < self.status.len {
                let n = window.min(self.status.len - start) as usize;
                let r = FileReader::with_blocks(self.fs.clone(), self.status.clone(), self.blocks.clone());
                let task = tokio::spawn(async move {
                    let mut data = vec![0u8; n];
                    let got = r.read_range(start, &mut data).await?;
                    data.truncate(got);
                    Ok(Window { offset: start, data })
                });
                a.pending = Some((start, task));
            }
        }
        Ok(done)
    }

    /// Reads `buf.len()` bytes at `offset` (all inside the file). Blocks
    /// that do not cover the range without a gap (a file whose recorded
    /// blocks and length disagree) make it fail as `Corrupt`, before any
    /// byte is read: a short count would look like the end of the file.
    async fn read_range(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let want = buf.len();
        let end = offset.saturating_add(want as u64);
        let mut done = 0usize;
        // Blocks are sorted by offset: find the first one holding `offset`.
        let first = self.blocks.partition_point(|b| b.offset + b.len <= offset);
        // One piece of `buf` per block; pieces of different blocks are read
        // at once (up to PARALLEL_BLOCKS), so a large read draws on several
        // workers, or several connections to one, in parallel.
        let mut reads = Vec::new();
        let mut rest = buf;
        for b in &self.blocks[first..] {
            let pos = offset + done as u64;
            if pos >= end {
                break;
            }
            let Some(in_block) = pos.checked_sub(b.offset) else {
                return Err(self.gap(pos));
            };
            let n = b.len.saturating_sub(in_block).min(end - pos) as usize;
            if n == 0 {
                continue; // an empty block
            }
            let (piece, tail) = std::mem::take(&mut rest).split_at_mut(n);
            rest = tail;
            reads.push(self.read_piece(b, in_block, piece));
            done += n;
        }
        if done < want {
            return Err(self.gap(offset + done as u64));
        }
        let mut reads = futures::stream::iter(reads).buffer_unordered(PARALLEL_BLOCKS);
        while let Some(r) = reads.next().await {
            r?;
        }
        Ok(done)
    }

    /// The error for a file offset no block holds though the file's
    /// length says it exists.
    fn gap(&self, pos: u64) -> Error {
        Error::new(
            ErrorKind::Corrupt,
            format!("{}: no block holds offset {pos} of a file of {} bytes", self.status.path, self.status.len),
        )
    }

    /// A sequential reader about to need block `next`: when it is still in
    /// the UFS only, its worker starts loading it now, so the load overlaps
    /// the reading of the blocks before it.
    fn load_ahead(&self, next: usize) {
        let Some(b) = self.blocks.get(next) else { return };
        if !b.from_ufs || self.ahead.fetch_max(next + 1, Ordering::Relaxed) > next {
            return;
        }
        let Some(loc) = b.locations.first() else { return };
        let (pool, addr, id) = (self.fs.inner.pool.clone(), loc.addr.clone(), b.id);
        tokio::spawn(async move {
            // Best effort: a failed load shows up again on the real read.
            match pool.get(&addr).await {
                Ok(mut c) => {
                    if let Err(e) = c.load(id).await {
                        tracing::debug!(block = id, error = %e, "read-ahead load failed");
                    }
                }
                Err(e) => tracing::debug!(block = id, error = %e, "read-ahead: worker unreachable"),
            }
        });
    }

    /// The bytes `[offset, offset+len)` in place, without a copy, when they
    /// lie in one block of a MEM-tier worker on this host that this client
    /// can map (checked against their crcs); `None` otherwise (read into a
    /// buffer then). The window keeps the mapping alive.
    pub async fn view(&self, offset: u64, len: u64) -> Result<Option<crate::local::MappedRange>> {
        let inner = &self.fs.inner;
        let Some(end) = offset.checked_add(len).filter(|e| *e <= self.status.len) else {
            return Ok(None);
        };
        if !inner.conf.short_circuit || len == 0 {
            return Ok(None);
        }
        let i = self.blocks.partition_point(|b| b.offset + b.len <= offset);
        let Some(b) = self.blocks.get(i).filter(|b| end <= b.offset + b.len && !b.from_ufs) else {
            return Ok(None);
        };
        for loc in b.locations.iter().filter(|l| l.hostname == inner.hostname) {
            match inner.local.view(loc, b.id, offset - b.offset, len).await {
                Some(Ok(v)) => return Ok(Some(v)),
                Some(Err(e)) => tracing::debug!(block = b.id, error = %e, "local view refused; reading instead"),
                None => {}
            }
        }
        Ok(None)
    }

    /// The one file holding this whole file at its offsets, for a reader
    /// that hands the file to the kernel (FUSE passthrough): a one-block
    /// file's block file, or the extent file a worker on this host keeps a
    /// file's consecutive MEM blocks in, exactly as long as the file. A
    /// file whose blocks are all in MEM on one worker here but not in one
    /// file (loaded from a UFS, say) is joined by that worker first (one
    /// copy). Only after every chunk passed its crc (as `view` checks
    /// them). `None` otherwise.
    pub async fn whole_local_file(&self) -> Result<Option<Arc<std::fs::File>>> {
        match self.one_local_file().await? {
            Whole::File(f) => return Ok(Some(f)),
            Whole::No => return Ok(None),
            Whole::Scattered(loc) => {
                let ids: Vec<u64> = self.blocks.iter().map(|b| b.id).collect();
                if let Err(e) = self.fs.inner.local.join(&loc, &ids, self.status.len).await {
                    tracing::debug!(path = %self.status.path, error = %e, "worker did not join the file's blocks");
                    return Ok(None);
                }
            }
        }
        Ok(match self.one_local_file().await? {
            Whole::File(f) => Some(f),
            _ => None,
        })
    }

    async fn one_local_file(&self) -> Result<Whole> {
        use std::os::unix::fs::MetadataExt;
        if self.status.len == 0 || self.blocks.is_empty() {
            return Ok(Whole::No);
        }
        let inner = &self.fs.inner;
        let mut whole: Option<(Arc<std::fs::File>, (u64, u64))> = None;
        // The worker holding every block in MEM, and whether they are all
        // in one file at their offsets.
        let mut worker: Option<LocatedBlockLocation> = None;
        let mut one = true;
        let mut next = 0;
        for b in self.blocks.iter() {
            if b.from_ufs || b.offset != next || b.len == 0 {
                return Ok(Whole::No);
            }
            next += b.len;
            // Checks all chunks (once per client) and proves the block is a
            // MEM one this client can map.
            if self.view(b.offset, b.len).await?.is_none() {
                return Ok(Whole::No);
            }
            let mut found = false;
            for loc in b.locations.iter().filter(|l| l.hostname == inner.hostname) {
                if worker.as_ref().is_some_and(|w| w.worker_id != loc.worker_id) {
                    continue;
                }
                let Some(f) = inner.local.block_file(loc, b.id).await else { continue };
                if f.tier != TierKind::Mem || f.len != b.len {
                    continue;
                }
                worker = Some(loc.clone());
                found = true;
                let same = match (&whole, f.file.metadata()) {
                    (_, Err(_)) => false,
                    (None, Ok(m)) => {
                        whole = Some((f.file.clone(), (m.dev(), m.ino())));
                        true
                    }
                    (Some((_, id)), Ok(m)) => *id == (m.dev(), m.ino()),
                };
                one &= same && f.base == b.offset;
                break;
            }
            if !found {
                return Ok(Whole::No);
            }
        }
        if next != self.status.len {
            return Ok(Whole::No); // blocks and length disagree: read the checked way
        }
        // The kernel reads the backing file up to its own end.
        match whole {
            Some((f, _)) if one && f.metadata().is_ok_and(|m| m.len() == next) => Ok(Whole::File(f)),
            _ => Ok(worker.map_or(Whole::No, Whole::Scattered)),
        }
    }

    /// Fills `piece` from block `b` at `in_block`; a short block is corrupt.
    async fn read_piece(&self, b: &LocatedBlock, in_block: u64, piece: &mut [u8]) -> Result<()> {
        let want = piece.len();
        let got = self.read_block(b, in_block, piece).await?;
        if got < want {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!("{}: block {} holds {} bytes fewer than recorded", self.status.path, b.id, want - got),
            ));
        }
        Ok(())
    }

    /// Reads from one block. Copies that fail their checksum are reported
    /// to meta, which drops them; the block is then read wherever meta now
    /// places it (another copy, or a fresh load from the UFS), so corrupt
    /// bytes are never returned.
    async fn read_block(&self, b: &LocatedBlock, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let mut dropped = false;
        match self.read_located(b, offset, buf, &mut dropped).await {
            Err(e) if e.kind() == ErrorKind::Corrupt && dropped => {
                let fresh = self.relocate(b).await.map_err(|_| e)?;
                self.read_located(&fresh, offset, buf, &mut dropped).await
            }
            other => other,
        }
    }

    /// The block as meta places it now.
    async fn relocate(&self, b: &LocatedBlock) -> Result<LocatedBlock> {
        let path = self.status.path.clone();
        let r = self
            .fs
            .inner
            .meta
            .call(|mut c| {
                let req = curvine_common::proto::OpenRequest { path: path.clone() };
                async move { c.open(req).await }
            })
            .await?;
        r.blocks
            .into_iter()
            .find(|x| x.id == b.id && !x.locations.is_empty())
            .ok_or_else(|| Error::unavailable(format!("{path}: block {} has no other copy", b.id)))
    }

    /// Tells meta that `worker`'s copy of `block` failed its checksum; true
    /// when meta dropped the copy (the block can be had elsewhere).
    async fn report_corrupt(&self, block: u64, worker: u64) -> bool {
        let path = self.status.path.clone();
        let res = self
            .fs
            .inner
            .meta
            .call(|mut c| {
                let req = curvine_common::proto::ReportCorruptRequest { block_id: block, worker_id: worker, path: path.clone() };
                async move { c.report_corrupt(req).await }
            })
            .await;
        match res {
            Ok(r) => r.dropped,
            Err(e) => {
                tracing::warn!(block, worker, error = %e, "cannot report a corrupt block copy");
                false
            }
        }
    }

    /// Reads from one block, trying each location; a worker that is down is
    /// skipped, and a broken pooled connection is retried once on a new one.
    /// `dropped` is set when a corrupt copy was dropped (the block can be
    /// read again from wherever meta places it now).
    async fn read_located(&self, b: &LocatedBlock, offset: u64, buf: &mut [u8], dropped: &mut bool) -> Result<usize> {
        let inner = &self.fs.inner;
        let mut last = None;
        let mut corrupt = None;
        let mut locs: Vec<_> = b.locations.iter().collect();
        // Nearest first: same host (read from its block files where the
        // worker allows it), then same rack, then the rest in meta's order.
        locs.sort_by_key(|l| nearness(l, &inner.hostname, &inner.conf.rack));
        for loc in locs {
            if inner.conf.short_circuit && loc.hostname == inner.hostname && !b.from_ufs {
                // Any local failure falls through to TCP on the same worker
                // (which checks the block itself) and then the other copies.
                if let Some(n) = inner.local.read(loc, b.id, offset, buf, inner.conf.verify_checksums).await {
                    return Ok(n);
                }
            }
            for _ in 0..2 {
                let mut conn = match inner.pool.get(&loc.addr).await {
                    Ok(c) => c,
                    Err(e) => {
                        last = Some(e);
                        break;
                    }
                };
                match conn.read_into(b.id, offset, buf).await {
                    Ok(n) => return Ok(n),
                    Err(e) if conn.is_broken() && e.is_temporary() => {
                        // Possibly a stale pooled connection: retry on a fresh one.
                        inner.pool.evict(&loc.addr);
                        last = Some(e);
                    }
                    Err(e) if e.kind() == ErrorKind::NotFound || e.is_temporary() => {
                        last = Some(e);
                        break;
                    }
                    Err(e) if e.kind() == ErrorKind::Corrupt => {
                        tracing::debug!(block = b.id, worker = loc.worker_id, error = %e, "cached copy fails its checksum");
                        // Meta forgets the copy when the block can be had
                        // elsewhere (another copy, the UFS); the worker then
                        // checks it and drops it if bad. Intact on the worker
                        // means damage in transit: read again. The only copy
                        // of a cache-only block is kept (its other chunks
                        // still read) and the read fails.
                        if self.report_corrupt(b.id, loc.worker_id).await {
                            *dropped = true;
                            match conn.verify(b.id).await {
                                Ok(true) => {
                                    last = Some(e);
                                    continue;
                                }
                                Ok(false) => {}
                                Err(v) => tracing::warn!(block = b.id, error = %v, "worker could not verify the block"),
                            }
                        }
                        corrupt = Some(e);
                        break;
                    }
                    Err(e) => return Err(e.context(&self.status.path)),
                }
            }
        }
        if let Some(e) = corrupt {
            return Err(e.context(&self.status.path));
        }
        Err(last
            .map(|e| e.context(&self.status.path))
            .unwrap_or_else(|| Error::unavailable(format!("{}: block {} has no live worker", self.status.path, b.id))))
    }
}

/// Where a file's bytes are on this host (`whole_local_file`).
enum Whole {
    /// One file, every block at its file offset.
    File(Arc<std::fs::File>),
    /// All in MEM on this worker, but not in one such file.
    Scattered(LocatedBlockLocation),
    No,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_ranked_host_then_rack_then_any() {
        let at = |host: &str, rack: &str| LocatedBlockLocation { hostname: host.into(), rack: rack.into(), ..Default::default() };
        let mut locs = [at("b", "r2"), at("c", "r1"), at("a", "r9"), at("d", "")];
        locs.sort_by_key(|l| nearness(l, "a", "r1"));
        let order: Vec<&str> = locs.iter().map(|l| l.hostname.as_str()).collect();
        assert_eq!(order, ["a", "c", "b", "d"]);
        locs.sort_by_key(|l| nearness(l, "z", ""));
        assert_eq!(locs.iter().filter(|l| nearness(l, "z", "") == 2).count(), 4, "no rack: only the host counts");
    }

    /// A reader of a `len`-byte file with `blocks` (id, offset, len), on
    /// no worker: only what is decided before any IO can be checked.
    fn reader(len: u64, blocks: &[(u64, u64, u64)]) -> FileReader {
        let fs = FileSystem::connect_to("127.0.0.1:1").expect("client");
        let status = FileStatus { path: "/f".into(), len, ..Default::default() };
        let blocks = blocks.iter().map(|&(id, offset, len)| LocatedBlock { id, offset, len, ..Default::default() }).collect();
        FileReader::new(fs, status, blocks)
    }

    #[tokio::test]
    async fn blocks_that_do_not_cover_the_file_are_corrupt_not_a_short_read() {
        let mut buf = [0u8; 20];
        for (blocks, at) in [
            (&[][..], 0),
            (&[(1, 0, 10)][..], 5),              // the blocks end before the file
            (&[(1, 0, 10), (2, 20, 80)][..], 5), // a gap between two blocks
            (&[(2, 20, 80)][..], 5),             // a gap before the first block
        ] {
            let r = reader(100, blocks);
            let e = r.read_at(at, &mut buf).await.expect_err("no block holds these bytes");
            assert_eq!(e.kind(), ErrorKind::Corrupt, "{blocks:?} at {at}: {e}");
        }
    }

    #[tokio::test]
    async fn offsets_near_the_end_of_the_range_do_not_overflow() {
        let r = reader(100, &[(1, 0, 100)]);
        assert_eq!(r.read_at(u64::MAX - 3, &mut [0u8; 8]).await.expect("past the end"), 0);
        assert!(r.view(u64::MAX - 3, 8).await.expect("no view").is_none());
    }
}
