//! Short-circuit reads of blocks held by a worker on this host: the block
//! file's descriptor comes over the worker's Unix socket once, then every
//! read is a `pread` from the page cache into the caller's buffer (one
//! copy), checksummed like a TCP read.
//!
//! Anything that goes wrong (no socket, a socket that is not the worker's,
//! a refused uid, a block not there yet, a worker that does not answer
//! within the client's timeout, a block file that cannot be read) makes the
//! caller read over TCP; a worker whose socket failed is not asked again
//! for a while.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use curvine_common::proto::BlockLocation;
use curvine_common::tier::TierKind;
use curvine_common::{Error, ErrorKind, Result};
use curvine_fabric::crc::crc32c;
use curvine_fabric::frame::CHUNK;
use curvine_fabric::local::LocalConn;
use curvine_fabric::ReadSource;
use parking_lot::Mutex;

/// Open block descriptors kept per client at most (each is one fd; fewer
/// when the open-file limit is low). A DataLoader worker cycling through a
/// few thousand small files keeps them all, instead of asking the worker for
/// three in four of them again every epoch.
const MAX_OPEN_BLOCKS: usize = 8192;
/// Idle socket connections kept per worker.
const MAX_IDLE: usize = 8;
/// MEM-tier blocks smaller than this are read with `pread`, larger ones
/// mapped (disk-tier blocks are never mapped: see `Mapping::new`).
const MAP_MIN: u64 = 4 << 20;
/// Bytes read per `pread` before their checksums are checked.
const PIECE: usize = 16 * CHUNK as usize;
/// How long a worker whose socket failed is read over TCP only.
const BACKOFF: Duration = Duration::from_secs(30);
/// Slowest copy rate a join is given time for, on top of the client's
/// timeout: a join copies the whole file (tmpfs to tmpfs, crc-checked, so
/// in practice several times faster), and a multi-GiB file must not be cut
/// off by a timeout meant for one round trip.
const JOIN_MIN_RATE: u64 = 64 << 20;

/// A block file mapped read-only. Sealed block files are never written or
/// truncated (eviction unlinks them; the mapping stays valid), so the bytes
/// under the mapping cannot change or vanish.
struct Mapping {
    ptr: *const u8,
    len: usize,
}

// SAFETY: a read-only shared mapping of an immutable file.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(src: &ReadSource) -> Option<Mapping> {
        // Small blocks: pread is cheaper than mmap + page faults + munmap.
        // Disk tiers: a media error under a mapping is a SIGBUS that kills
        // the process, where `pread` returns EIO and the read goes over TCP.
        if src.len < MAP_MIN || src.tier != TierKind::Mem {
            return None;
        }
        Self::any(src)
    }

    /// Maps a block of any (non-zero) size, from its base in its file.
    fn any(src: &ReadSource) -> Option<Mapping> {
        use std::os::fd::AsRawFd;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
        if src.len == 0 || !src.base.is_multiple_of(page) {
            return None; // pread then
        }
        let (fd, len, at) = (src.file.as_raw_fd(), src.len as usize, src.base as libc::off_t);
        // SAFETY: a fresh read-only mapping of `len` bytes of an open file.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, fd, at) };
        if p == libc::MAP_FAILED {
            return None; // pread then
        }
        Some(Mapping { ptr: p as *const u8, len })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping lives as long as self and is never written.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len came from mmap and are unmapped once.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// A block of a local worker: its file, checksums and (for large MEM-tier
/// blocks) a mapping.
struct LocalBlock {
    src: ReadSource,
    map: Option<Mapping>,
    /// Chunks already checked (through the mapping or `pread`), one bit each. Only
    /// used for MEM-tier blocks: their pages are the tmpfs file itself and
    /// are never re-read from a device, so a chunk that passed once cannot
    /// change under the mapping. Disk-tier chunks are checked on every read.
    checked: Box<[AtomicU64]>,
    /// A mapping made on first `view` of a block too small to be mapped
    /// for reads (shared by every view of it).
    lazy: std::sync::OnceLock<Option<Mapping>>,
}

impl LocalBlock {
    fn new(src: ReadSource) -> LocalBlock {
        let map = Mapping::new(&src);
        let words = if src.tier == TierKind::Mem { src.len.div_ceil(CHUNK).div_ceil(64) as usize } else { 0 };
        LocalBlock { src, map, checked: (0..words).map(|_| AtomicU64::new(0)).collect(), lazy: Default::default() }
    }

    /// The block's mapping, made now if reads did not map it.
    fn mapping(&self) -> Option<&Mapping> {
        self.map.as_ref().or_else(|| self.lazy.get_or_init(|| Mapping::any(&self.src)).as_ref())
    }

    fn is_checked(&self, idx: u64) -> bool {
        self.checked.get((idx / 64) as usize).is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (idx % 64)) != 0)
    }

    fn mark_checked(&self, idx: u64) {
        if let Some(w) = self.checked.get((idx / 64) as usize) {
            w.fetch_or(1 << (idx % 64), Ordering::Relaxed);
        }
    }
}

#[derive(Default)]
struct Blocks {
    map: HashMap<u64, Arc<LocalBlock>>,
    order: VecDeque<u64>,
}

/// Counters, for tests and `cv bench`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LocalStats {
    /// Reads served from a local block file.
    pub reads: u64,
    /// Reads that tried the short-circuit and went over TCP instead.
    pub fallbacks: u64,
    /// Block descriptors fetched ahead in batches (`prepare_local`).
    pub prefetched: u64,
    /// Block descriptors fetched one at a time, at a first read.
    pub opened: u64,
    /// Block descriptors taken over from the process this one was forked
    /// from (`FileSystem::adopt_local_blocks`).
    pub adopted: u64,
    /// Blocks written straight into a local worker's tier file.
    pub writes: u64,
    /// Bytes cuFile read from local block files straight into device
    /// memory (`read_to_device_direct`; the rest went through staging).
    pub gpudirect_bytes: u64,
}

/// A block being written straight into a same-host worker's tier file.
pub(crate) struct LocalWrite {
    worker: u64,
    block: u64,
    conn: LocalConn,
    file: std::fs::File,
    /// Where the block starts in `file` (after the file's previous block,
    /// when the worker stores them together).
    base: u64,
    crcs: Vec<u32>,
    len: u64,
}

impl LocalWrite {
    /// Writes `data` at the end of the block. Every call but the last must
    /// be a whole number of chunks (as over TCP), so crcs stay per chunk.
    pub fn append(&mut self, data: &[u8]) -> Result<()> {
        if !self.len.is_multiple_of(CHUNK) {
            return Err(Error::internal("direct write after a partial chunk"));
        }
        self.file.write_all_at(data, self.base + self.len).map_err(|e| {
            let kind = if e.raw_os_error() == Some(libc::ENOSPC) { ErrorKind::NoSpace } else { ErrorKind::Io };
            Error::new(kind, format!("block {}: direct write into worker {}'s tier: {e}", self.block, self.worker))
        })?;
        self.crcs.extend(data.chunks(CHUNK as usize).map(crc32c));
        self.len += data.len() as u64;
        Ok(())
    }
}

/// Bytes of a MEM-tier block, in place: a window onto the block file this
/// client mapped, every chunk of it checked against its crc. tmpfs pages
/// are the file itself and sealed blocks never change, so the bytes stay
/// right for as long as the window lives (it keeps the mapping alive).
pub struct MappedRange {
    block: Arc<LocalBlock>,
    start: usize,
    len: usize,
}

impl MappedRange {
    pub fn bytes(&self) -> &[u8] {
        match self.block.mapping() {
            Some(m) => &m.bytes()[self.start..self.start + self.len],
            None => &[],
        }
    }
}

pub(crate) struct LocalReads {
    /// Bound on one exchange with a worker's socket (the client's
    /// `timeout`): a worker that stops answering (SIGSTOPped, stuck) is
    /// then read over TCP instead of hanging every reader on this host.
    timeout: Duration,
    idle: Mutex<HashMap<u64, Vec<LocalConn>>>,
    refused: Mutex<HashMap<u64, Instant>>,
    blocks: Mutex<Blocks>,
    reads: AtomicU64,
    fallbacks: AtomicU64,
    prefetched: AtomicU64,
    opened: AtomicU64,
    adopted: AtomicU64,
    writes: AtomicU64,
    /// Counted by `gpu.rs`.
    pub(crate) gpudirect_bytes: AtomicU64,
    cap: std::sync::OnceLock<usize>,
}

impl LocalReads {
    pub fn new(timeout: Duration) -> LocalReads {
        LocalReads {
            timeout,
            idle: Default::default(),
            refused: Default::default(),
            blocks: Default::default(),
            reads: Default::default(),
            fallbacks: Default::default(),
            prefetched: Default::default(),
            opened: Default::default(),
            adopted: Default::default(),
            writes: Default::default(),
            gpudirect_bytes: Default::default(),
            cap: Default::default(),
        }
    }

    pub fn stats(&self) -> LocalStats {
        LocalStats {
            reads: self.reads.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
            prefetched: self.prefetched.load(Ordering::Relaxed),
            opened: self.opened.load(Ordering::Relaxed),
            adopted: self.adopted.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            gpudirect_bytes: self.gpudirect_bytes.load(Ordering::Relaxed),
        }
    }

    /// Reads exactly `buf.len()` bytes of `block` at `offset` from `loc`'s
    /// block file and returns that count; `None` when the caller should use
    /// TCP (or another copy) instead.
    pub async fn read(&self, loc: &BlockLocation, block: u64, offset: u64, buf: &mut [u8], verify: bool) -> Option<usize> {
        if loc.local_socket.is_empty() || self.backing_off(loc.worker_id) {
            return None;
        }
        let src = match self.source(loc, block).await {
            Ok(s) => s,
            Err(e) => {
                self.fallbacks.fetch_add(1, Ordering::Relaxed);
                if e.kind() != ErrorKind::NotFound {
                    tracing::debug!(worker = loc.worker_id, error = %e, "short-circuit unavailable; reading over TCP");
                    self.back_off(loc.worker_id);
                }
                return None;
            }
        };
        let res = match &src.map {
            Some(m) => copy_verified(&src, m.bytes(), block, offset, buf, verify),
            None => read_verified(&src, block, offset, buf, verify),
        };
        match res {
            Ok(n) if n == buf.len() => {
                self.reads.fetch_add(1, Ordering::Relaxed);
                Some(n)
            }
            // A block file that fails its checksum, cannot be read (EIO) or
            // is shorter than meta says is never served: the descriptor is
            // dropped and the worker is asked over TCP, where it checks the
            // block again, or another copy serves it.
            Ok(n) => {
                tracing::debug!(block, offset, got = n, want = buf.len(), "local block file too short; reading over TCP");
                self.fall_back(block);
                None
            }
            Err(e) => {
                tracing::debug!(block, error = %e, "local block read failed; reading over TCP");
                self.fall_back(block);
                None
            }
        }
    }

    /// Forgets a block whose local read failed and counts the fallback.
    fn fall_back(&self, block: u64) {
        self.forget(block);
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads worker `worker` over TCP only for a while.
    fn back_off(&self, worker: u64) {
        self.refused.lock().insert(worker, Instant::now() + BACKOFF);
    }

    /// `fut`, one exchange with worker `worker`'s socket, bounded by
    /// `limit`. Past it the worker is backed off and the result is a
    /// `Timeout` error: the caller must then drop the connection `fut` was
    /// using (it may be mid-answer), which `reuse` does.
    async fn bounded<T>(&self, worker: u64, limit: Duration, what: &str, fut: impl Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(limit, fut).await {
            Ok(res) => res,
            Err(_) => {
                tracing::debug!(worker, "short-circuit {what}: no answer in {limit:?}; using TCP for {BACKOFF:?}");
                self.back_off(worker);
                Err(Error::new(ErrorKind::Timeout, format!("short-circuit {what} on worker {worker}: no answer in {limit:?}")))
            }
        }
    }

    /// Returns `conn` to the pool after an exchange that ended with `err`,
    /// unless the exchange timed out (the stream may hold a late answer) or
    /// broke it.
    fn reuse(&self, worker: u64, conn: LocalConn, err: Option<&Error>) {
        if err.is_none_or(|e| e.kind() != ErrorKind::Timeout) {
            self.put_back(worker, conn);
        }
    }

    fn backing_off(&self, worker: u64) -> bool {
        let mut g = self.refused.lock();
        match g.get(&worker) {
            Some(until) if Instant::now() < *until => true,
            Some(_) => {
                g.remove(&worker);
                false
            }
            None => false,
        }
    }

    fn forget(&self, block: u64) {
        let mut g = self.blocks.lock();
        g.map.remove(&block);
        g.order.retain(|b| *b != block);
    }

    /// Opens, in one round trip per worker and 200 blocks, the descriptors
    /// of `blocks` (location, block id) not held yet: a batch of small
    /// files then costs no round trip per file. Best effort; failures leave
    /// the reads to find their own way.
    pub async fn prefetch(&self, blocks: &[(&BlockLocation, u64)]) {
        let mut by_worker: HashMap<u64, (&BlockLocation, Vec<u64>)> = HashMap::new();
        {
            let g = self.blocks.lock();
            for (loc, id) in blocks {
                if loc.local_socket.is_empty() || g.map.contains_key(id) {
                    continue;
                }
                by_worker.entry(loc.worker_id).or_insert_with(|| (loc, Vec::new())).1.push(*id);
            }
        }
        for (worker, (loc, mut ids)) in by_worker {
            if self.backing_off(worker) {
                continue;
            }
            ids.truncate(self.capacity());
            for group in ids.chunks(curvine_fabric::local::MAX_BATCH) {
                let res = async {
                    let mut conn = self.conn(loc).await?;
                    let res = self.bounded(worker, self.timeout, "batch open", conn.open_many(group)).await;
                    self.reuse(worker, conn, res.as_ref().err());
                    res
                }
                .await;
                match res {
                    Ok(srcs) => {
                        for (id, src) in group.iter().zip(srcs) {
                            if let Some(src) = src {
                                self.prefetched.fetch_add(1, Ordering::Relaxed);
                                self.remember(*id, Arc::new(LocalBlock::new(src)));
                            }
                        }
                    }
                    Err(e) => {
                        // This worker's other batches would fail the same
                        // way; the other workers' may still succeed.
                        tracing::debug!(worker, error = %e, "short-circuit batch open failed; reading over TCP");
                        self.back_off(worker);
                        break;
                    }
                }
            }
        }
    }

    /// Descriptors kept: a quarter of the process's open-file limit, at
    /// most `MAX_OPEN_BLOCKS`, so a reader never runs the process out of fds.
    fn capacity(&self) -> usize {
        *self.cap.get_or_init(|| {
            let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            // SAFETY: getrlimit fills the struct it is given.
            let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 { lim.rlim_cur as usize } else { 1024 };
            (soft / 4).clamp(16, MAX_OPEN_BLOCKS)
        })
    }

    /// A checked, in-place window onto `[offset, offset+len)` of a local
    /// MEM-tier block this client can map; `None` when it cannot (remote,
    /// disk tier, small block, not there): read into a buffer instead.
    pub async fn view(&self, loc: &BlockLocation, block: u64, offset: u64, len: u64) -> Option<Result<MappedRange>> {
        if loc.local_socket.is_empty() || self.backing_off(loc.worker_id) {
            return None;
        }
        let lb = self.source(loc, block).await.ok()?;
        let end = offset.checked_add(len)?;
        if lb.src.tier != TierKind::Mem || end > lb.src.len {
            return None;
        }
        let map = lb.mapping()?;
        let (lo, hi) = (offset / CHUNK, end.div_ceil(CHUNK));
        for idx in lo..hi {
            if lb.is_checked(idx) {
                continue;
            }
            let (a, b) = (idx * CHUNK, ((idx + 1) * CHUNK).min(lb.src.len));
            if lb.src.crcs.get(idx as usize).copied() != Some(crc32c(&map.bytes()[a as usize..b as usize])) {
                self.forget(block);
                return Some(Err(Error::new(ErrorKind::Corrupt, format!("block {block}: checksum mismatch in chunk {idx} (local view)"))));
            }
            lb.mark_checked(idx);
        }
        self.reads.fetch_add(1, Ordering::Relaxed);
        Some(Ok(MappedRange { block: lb.clone(), start: offset as usize, len: len as usize }))
    }

    /// Starts a direct write of `block` into a worker on this host: the
    /// block's file comes over the worker's socket and the writer fills it
    /// itself (no TCP, no worker CPU per byte); `after`: the file's previous
    /// block on that worker (0: none). `None` (write over TCP) when the
    /// worker does not offer it.
    pub async fn open_write(&self, loc: &BlockLocation, block: u64, len_hint: u64, after: u64) -> Option<LocalWrite> {
        if loc.local_socket.is_empty() || self.backing_off(loc.worker_id) {
            return None;
        }
        let worker = loc.worker_id;
        let mut conn = match self.conn(loc).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(worker, error = %e, "short-circuit unavailable; writing over TCP");
                self.back_off(worker);
                return None;
            }
        };
        let res = self.bounded(worker, self.timeout, "write open", conn.write_open(block, len_hint, after)).await;
        match res {
            Ok((file, base, _tier)) => Some(LocalWrite { worker, block, conn, file, base, crcs: Vec::new(), len: 0 }),
            Err(e) => {
                tracing::debug!(worker, block, error = %e, "direct write refused; writing over TCP");
                if e.kind() != ErrorKind::NoSpace {
                    self.back_off(worker);
                }
                None
            }
        }
    }

    /// Asks worker `loc` (this host) to store `ids`, one file's blocks in
    /// file order, `bytes` in all, as one file at their file offsets; the
    /// descriptors held for them are dropped so the next open sees the new
    /// place.
    pub async fn join(&self, loc: &BlockLocation, ids: &[u64], bytes: u64) -> Result<()> {
        let mut conn = self.conn(loc).await?;
        // The worker copies every byte before it answers.
        let limit = self.timeout + Duration::from_secs(bytes / JOIN_MIN_RATE);
        let res = self.bounded(loc.worker_id, limit, "join", conn.join(ids)).await;
        self.reuse(loc.worker_id, conn, res.as_ref().err());
        for id in ids {
            self.forget(*id);
        }
        res
    }

    /// Seals a direct write and keeps its connection for reuse. After a
    /// failure (or a timeout) the connection is closed, which makes the
    /// worker drop the write.
    pub async fn commit_write(&self, mut w: LocalWrite) -> Result<TierKind> {
        let tier = self.bounded(w.worker, self.timeout, "write commit", w.conn.write_commit(w.block, w.len, &w.crcs)).await?;
        self.put_back(w.worker, w.conn);
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(tier)
    }

    /// Drops a direct write; the worker removes the file and its
    /// reservation (also when the connection closes, so a worker that does
    /// not answer in time loses the write anyway).
    pub async fn abort_write(&self, mut w: LocalWrite) {
        match self.bounded(w.worker, self.timeout, "write abort", w.conn.write_abort(w.block)).await {
            Ok(()) => self.put_back(w.worker, w.conn),
            Err(e) => tracing::debug!(worker = w.worker, block = w.block, error = %e, "direct write abort failed"),
        }
    }

    /// A pooled connection to `loc`'s socket, or a new one (its greeting
    /// bounded by the timeout: a stopped worker's kernel still accepts).
    async fn conn(&self, loc: &BlockLocation) -> Result<LocalConn> {
        let idle = self.idle.lock().get_mut(&loc.worker_id).and_then(Vec::pop);
        match idle {
            Some(c) => Ok(c),
            None => {
                let connect = LocalConn::connect(&loc.local_socket, loc.worker_id, loc.local_token);
                self.bounded(loc.worker_id, self.timeout, "connect", connect).await
            }
        }
    }

    fn put_back(&self, worker: u64, conn: LocalConn) {
        if !conn.is_broken() {
            let mut g = self.idle.lock();
            let v = g.entry(worker).or_default();
            if v.len() < MAX_IDLE {
                v.push(conn);
            }
        }
    }

    /// Takes `other`'s table of open blocks (see
    /// `FileSystem::adopt_local_blocks`), newest last, up to this client's
    /// capacity. Skipped when the table was locked when the process forked:
    /// its lock would never be released here.
    pub(crate) fn adopt(&self, other: &LocalReads) {
        let Some(theirs) = other.blocks.try_lock() else { return };
        let skip = theirs.order.len().saturating_sub(self.capacity());
        let mut g = self.blocks.lock();
        for id in theirs.order.iter().skip(skip) {
            if let Some(lb) = theirs.map.get(id) {
                // A fresh block around the inherited descriptor: the
                // parent's lazy mapping may have been mid-initialization at
                // the fork (it would never finish here), and its checked
                // bits are the parent's. Large blocks are mapped again
                // (cheap: no page is touched).
                let src = lb.src.share();
                if g.map.insert(*id, Arc::new(LocalBlock::new(src))).is_none() {
                    g.order.push_back(*id);
                    self.adopted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn remember(&self, block: u64, lb: Arc<LocalBlock>) {
        let cap = self.capacity();
        let mut g = self.blocks.lock();
        if g.map.insert(block, lb).is_none() {
            g.order.push_back(block);
        }
        while g.order.len() > cap {
            if let Some(old) = g.order.pop_front() {
                g.map.remove(&old);
            }
        }
    }

    /// The block file of `block` on worker `loc` (this host), with where
    /// the block starts in it, its tier and length: for readers that hand
    /// the file to another engine (cuFile, the kernel's FUSE passthrough).
    pub async fn block_file(&self, loc: &BlockLocation, block: u64) -> Option<ReadSource> {
        if loc.local_socket.is_empty() || self.backing_off(loc.worker_id) {
            return None;
        }
        Some(self.source(loc, block).await.ok()?.src.share())
    }

    async fn source(&self, loc: &BlockLocation, block: u64) -> Result<Arc<LocalBlock>> {
        if let Some(s) = self.blocks.lock().map.get(&block) {
            return Ok(s.clone());
        }
        let mut conn = self.conn(loc).await?;
        let res = self.bounded(loc.worker_id, self.timeout, "open", conn.open(block)).await;
        self.reuse(loc.worker_id, conn, res.as_ref().err());
        let src = Arc::new(LocalBlock::new(res?));
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.remember(block, src.clone());
        Ok(src)
    }
}

/// Copies `[offset, offset+buf.len())` (clipped to the block) out of the
/// block's mapping into `buf`: one copy. Each whole chunk's crc is checked
/// on the copy right after it is made (still in cache); edge chunks are
/// checked on the mapping before their part is copied.
fn copy_verified(lb: &LocalBlock, map: &[u8], block: u64, offset: u64, buf: &mut [u8], verify: bool) -> Result<usize> {
    let src = &lb.src;
    if offset > src.len {
        return Err(Error::invalid(format!("block {block}: offset {offset} beyond its {} bytes", src.len)));
    }
    let end = (offset + buf.len() as u64).min(src.len);
    let n = (end - offset) as usize;
    if !verify {
        buf[..n].copy_from_slice(&map[offset as usize..end as usize]);
        return Ok(n);
    }
    let mut pos = offset;
    while pos < end {
        let idx = pos / CHUNK;
        let (c_lo, c_hi) = (idx * CHUNK, ((idx + 1) * CHUNK).min(src.len));
        // Unchecked chunks one by one; a run of checked ones in one copy.
        if lb.is_checked(idx) {
            let mut to = c_hi.min(end);
            while to < end && lb.is_checked(to / CHUNK) {
                to = (to + CHUNK).min(src.len).min(end);
            }
            buf[(pos - offset) as usize..(to - offset) as usize].copy_from_slice(&map[pos as usize..to as usize]);
            pos = to;
            continue;
        }
        let to = c_hi.min(end);
        let want = src.crcs.get(idx as usize).copied();
        let dst = &mut buf[(pos - offset) as usize..(to - offset) as usize];
        let ok = if pos == c_lo && to == c_hi {
            dst.copy_from_slice(&map[c_lo as usize..c_hi as usize]);
            want == Some(crc32c(dst))
        } else {
            let ok = want == Some(crc32c(&map[c_lo as usize..c_hi as usize]));
            dst.copy_from_slice(&map[pos as usize..to as usize]);
            ok
        };
        if !ok {
            return Err(Error::new(ErrorKind::Corrupt, format!("block {block}: checksum mismatch in chunk {idx} (local read)")));
        }
        lb.mark_checked(idx);
        pos = to;
    }
    Ok(n)
}

/// `copy_verified` with `pread` where the block could not be mapped.
fn read_verified(lb: &LocalBlock, block: u64, offset: u64, buf: &mut [u8], verify: bool) -> Result<usize> {
    let src = &lb.src;
    if offset > src.len {
        return Err(Error::invalid(format!("block {block}: offset {offset} beyond its {} bytes", src.len)));
    }
    let end = (offset + buf.len() as u64).min(src.len);
    let n = (end - offset) as usize;
    let io = |e: std::io::Error| Error::from(e).context(format!("local block {block}"));
    if !verify {
        src.read_exact_at(&mut buf[..n], offset).map_err(io)?;
        return Ok(n);
    }
    // Whole chunks go straight into `buf`; partial ones at either edge are
    // read whole into a scratch buffer so their crc can be checked.
    let lo = offset.div_ceil(CHUNK) * CHUNK;
    let hi = if end == src.len { end } else { end / CHUNK * CHUNK };
    // MEM-tier chunks are checked once per descriptor, as through a
    // mapping: `pread` copies from the same tmpfs pages every time.
    let check = |idx: u64, data: &[u8]| -> Result<()> {
        if lb.is_checked(idx) {
            Ok(())
        } else if src.crcs.get(idx as usize) == Some(&crc32c(data)) {
            lb.mark_checked(idx);
            Ok(())
        } else {
            Err(Error::new(ErrorKind::Corrupt, format!("block {block}: checksum mismatch in chunk {idx} (local read)")))
        }
    };
    let edge = |from: u64, to: u64, buf: &mut [u8]| -> Result<()> {
        if from >= to {
            return Ok(());
        }
        let c_lo = from / CHUNK * CHUNK;
        let c_hi = (c_lo + CHUNK).min(src.len);
        let mut tmp = vec![0u8; (c_hi - c_lo) as usize];
        src.read_exact_at(&mut tmp, c_lo).map_err(io)?;
        check(c_lo / CHUNK, &tmp)?;
        let at = (from - offset) as usize;
        buf[at..at + (to - from) as usize].copy_from_slice(&tmp[(from - c_lo) as usize..(to - c_lo) as usize]);
        Ok(())
    };
    if lo >= hi {
        // Inside one chunk (or two partial ones).
        let mid = (offset / CHUNK + 1) * CHUNK;
        edge(offset, end.min(mid), buf)?;
        edge(mid.min(end), end, buf)?;
        return Ok(n);
    }
    edge(offset, lo, buf)?;
    // Piece by piece, so each piece is checked while it is still in cache.
    let body = &mut buf[(lo - offset) as usize..(hi - offset) as usize];
    for (p, piece) in body.chunks_mut(PIECE).enumerate() {
        let at = lo + (p * PIECE) as u64;
        src.read_exact_at(piece, at).map_err(io)?;
        for (i, chunk) in piece.chunks(CHUNK as usize).enumerate() {
            check(at / CHUNK + i as u64, chunk)?;
        }
    }
    edge(hi, end, buf)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::UnixListener;

    const WORKER: u64 = 7;
    const TOKEN: u64 = 99;
    const LIMIT: Duration = Duration::from_millis(300);

    /// A fresh path for a socket or file of this test.
    fn temp_path(name: &str) -> std::path::PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        std::env::temp_dir().join(format!("cv-client-local-{}-{n}-{name}", std::process::id()))
    }

    fn location(socket: &std::path::Path) -> BlockLocation {
        BlockLocation {
            worker_id: WORKER,
            local_socket: socket.to_string_lossy().into_owned(),
            local_token: TOKEN,
            ..Default::default()
        }
    }

    /// A worker socket that accepts (as the kernel does for a stopped
    /// process) and then never answers; with `greet`, it first sends the
    /// worker's greeting, so the stall is in an exchange, not the connect.
    fn stalled_worker(greet: bool) -> (std::path::PathBuf, tokio::task::JoinHandle<()>) {
        let path = temp_path("sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut s, _)) = listener.accept().await {
                if greet {
                    let mut hello = Vec::new();
                    hello.extend_from_slice(&0x4356_5343u32.to_le_bytes());
                    hello.extend_from_slice(&2u32.to_le_bytes());
                    hello.extend_from_slice(&WORKER.to_le_bytes());
                    hello.extend_from_slice(&TOKEN.to_le_bytes());
                    let _ = s.write_all(&hello).await;
                }
                held.push(s);
            }
        });
        (path, task)
    }

    /// Every same-host exchange with a stalled worker ends within the
    /// timeout, backs the worker off and pools no connection.
    async fn check_gives_up(greet: bool) {
        let (path, server) = stalled_worker(greet);
        let loc = location(&path);
        let local = LocalReads::new(LIMIT);
        let mut buf = [0u8; 16];
        let t = Instant::now();
        let read = tokio::time::timeout(LIMIT * 10, local.read(&loc, 1, 0, &mut buf, true)).await;
        assert_eq!(read.expect("read must not hang"), None, "falls back to TCP");
        assert!(t.elapsed() >= LIMIT, "waited for the timeout");
        assert_eq!(local.stats().fallbacks, 1);
        assert!(local.backing_off(WORKER), "the worker is read over TCP for a while");
        assert!(local.idle.lock().get(&WORKER).is_none_or(Vec::is_empty), "a timed-out connection is not pooled");
        // Backed off: no waiting at all now.
        let t = Instant::now();
        assert!(local.open_write(&loc, 2, 1 << 20, 0).await.is_none());
        assert!(local.view(&loc, 1, 0, 1).await.is_none());
        assert!(t.elapsed() < LIMIT);
        // Join (not gated by the back-off) is bounded too, with the
        // timeout as its floor.
        let join = tokio::time::timeout(LIMIT * 10, local.join(&loc, &[1, 2], 1 << 20)).await.expect("join must not hang");
        assert_eq!(join.expect_err("no answer").kind(), ErrorKind::Timeout);
        assert!(local.idle.lock().get(&WORKER).is_none_or(Vec::is_empty));
        server.abort();
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn a_worker_that_accepts_but_never_greets_is_given_up_on() {
        check_gives_up(false).await;
    }

    #[tokio::test]
    async fn a_worker_that_greets_but_never_answers_is_given_up_on() {
        check_gives_up(true).await;
    }

    #[tokio::test]
    async fn a_stalled_worker_does_not_stop_prefetching_from_the_others() {
        let (stalled, server) = stalled_worker(true);
        let local = LocalReads::new(LIMIT);
        let first = location(&stalled);
        let mut second = location(&temp_path("absent-sock"));
        second.worker_id = WORKER + 1;
        let blocks = [(&first, 1), (&second, 2)];
        tokio::time::timeout(LIMIT * 10, local.prefetch(&blocks)).await.expect("prefetch must not hang");
        // Both workers were tried, whichever came first: each failure backs
        // off its own worker only, and neither ends the prefetch.
        assert!(local.backing_off(WORKER));
        assert!(local.backing_off(WORKER + 1));
        server.abort();
        let _ = std::fs::remove_file(&stalled);
    }

    /// A block held as if its descriptor had come from a worker: `file_len`
    /// bytes on disk, `len` according to the worker.
    fn held_block(local: &LocalReads, id: u64, tier: TierKind, file_len: u64, len: u64) -> std::path::PathBuf {
        let path = temp_path("block");
        let data: Vec<u8> = (0..file_len).map(|i| i as u8).collect();
        std::fs::write(&path, &data).expect("write block file");
        let crcs: Arc<[u32]> = (0..len.div_ceil(CHUNK))
            .map(|i| {
                let (lo, hi) = ((i * CHUNK) as usize, (((i + 1) * CHUNK).min(file_len)) as usize);
                crc32c(data.get(lo..hi).unwrap_or(&[]))
            })
            .collect();
        let file = Arc::new(std::fs::File::open(&path).expect("open block file"));
        let src = ReadSource { file, base: 0, len, crcs, tier };
        local.remember(id, Arc::new(LocalBlock::new(src)));
        path
    }

    #[tokio::test]
    async fn a_local_block_that_cannot_be_read_in_full_falls_back_to_tcp() {
        let local = LocalReads::new(LIMIT);
        // The socket is never reached: the blocks are held already.
        let loc = location(std::path::Path::new("/nonexistent/data.sock"));
        let good = held_block(&local, 1, TierKind::Ssd, 1000, 1000);
        let mut buf = vec![0u8; 100];
        assert_eq!(local.read(&loc, 1, 10, &mut buf, true).await, Some(100));
        assert_eq!(buf[0], 10);
        for verify in [true, false] {
            // The file is shorter than the worker said (a short pread).
            let short = held_block(&local, 2, TierKind::Ssd, 100, 1000);
            assert_eq!(local.read(&loc, 2, 0, &mut [0u8; 500], verify).await, None);
            assert!(!local.blocks.lock().map.contains_key(&2), "the descriptor is dropped");
            // A block shorter than the read asked for.
            let small = held_block(&local, 3, TierKind::Mem, 100, 100);
            assert_eq!(local.read(&loc, 3, 50, &mut [0u8; 100], verify).await, None);
            // A read past the block's end.
            let tiny = held_block(&local, 4, TierKind::Ssd, 100, 100);
            assert_eq!(local.read(&loc, 4, 200, &mut [0u8; 10], verify).await, None);
            for p in [short, small, tiny] {
                let _ = std::fs::remove_file(p);
            }
        }
        assert_eq!(local.stats().fallbacks, 6);
        assert_eq!(local.stats().reads, 1);
        let _ = std::fs::remove_file(good);
    }

    #[test]
    fn only_mem_tier_blocks_are_mapped() {
        let path = temp_path("big");
        let f = std::fs::File::create(&path).expect("create");
        f.set_len(MAP_MIN).expect("set_len");
        let src = |tier| ReadSource {
            file: Arc::new(std::fs::File::open(&path).expect("open")),
            base: 0,
            len: MAP_MIN,
            crcs: vec![0; MAP_MIN.div_ceil(CHUNK) as usize].into(),
            tier,
        };
        assert!(LocalBlock::new(src(TierKind::Mem)).map.is_some());
        assert!(LocalBlock::new(src(TierKind::Ssd)).map.is_none(), "a media error must be EIO, not SIGBUS");
        assert!(LocalBlock::new(src(TierKind::Hdd)).map.is_none());
        let _ = std::fs::remove_file(&path);
    }
}
