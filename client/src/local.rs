//! Short-circuit reads of blocks held by a worker on this host: the block
//! file's descriptor comes over the worker's Unix socket once, then every
//! read is a `pread` from the page cache into the caller's buffer (one
//! copy), checksummed like a TCP read.
//!
//! Anything that goes wrong (no socket, a socket that is not the worker's,
//! a refused uid, a block not there yet) makes the caller read over TCP; a
//! worker whose socket failed is not asked again for a while.

use std::collections::{HashMap, VecDeque};
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
/// Blocks smaller than this are read with `pread`, larger ones mapped.
const MAP_MIN: u64 = 4 << 20;
/// Bytes read per `pread` before their checksums are checked.
const PIECE: usize = 16 * CHUNK as usize;
/// How long a worker whose socket failed is read over TCP only.
const BACKOFF: Duration = Duration::from_secs(30);

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
        if src.len < MAP_MIN {
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

/// A block of a local worker: its file, checksums and (usually) a mapping.
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

    /// Drops the write; the worker removes the file and its reservation.
    pub async fn abort(mut self) {
        let _ = self.conn.write_abort(self.block).await;
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

#[derive(Default)]
pub(crate) struct LocalReads {
    idle: Mutex<HashMap<u64, Vec<LocalConn>>>,
    refused: Mutex<HashMap<u64, Instant>>,
    blocks: Mutex<Blocks>,
    reads: AtomicU64,
    fallbacks: AtomicU64,
    prefetched: AtomicU64,
    opened: AtomicU64,
    adopted: AtomicU64,
    writes: AtomicU64,
    cap: std::sync::OnceLock<usize>,
}

impl LocalReads {
    pub fn stats(&self) -> LocalStats {
        LocalStats {
            reads: self.reads.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
            prefetched: self.prefetched.load(Ordering::Relaxed),
            opened: self.opened.load(Ordering::Relaxed),
            adopted: self.adopted.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
        }
    }

    /// Reads `buf.len()` bytes (or up to the block's end) of `block` at
    /// `offset` from `loc`'s block file; `None` when the caller should use
    /// TCP instead.
    pub async fn read(&self, loc: &BlockLocation, block: u64, offset: u64, buf: &mut [u8], verify: bool) -> Option<Result<usize>> {
        if loc.local_socket.is_empty() || self.backing_off(loc.worker_id) {
            return None;
        }
        let src = match self.source(loc, block).await {
            Ok(s) => s,
            Err(e) => {
                self.fallbacks.fetch_add(1, Ordering::Relaxed);
                if e.kind() != ErrorKind::NotFound {
                    tracing::debug!(worker = loc.worker_id, error = %e, "short-circuit unavailable; reading over TCP");
                    self.refused.lock().insert(loc.worker_id, Instant::now() + BACKOFF);
                }
                return None;
            }
        };
        let res = match &src.map {
            Some(m) => copy_verified(&src, m.bytes(), block, offset, buf, verify),
            None => read_verified(&src, block, offset, buf, verify),
        };
        match res {
            Ok(n) => {
                self.reads.fetch_add(1, Ordering::Relaxed);
                Some(Ok(n))
            }
            Err(e) if e.kind() == ErrorKind::Corrupt => {
                // Never serve it; the worker checks it again when asked over TCP.
                tracing::debug!(block, error = %e, "local block file failed its checksum; reading over TCP");
                self.forget(block);
                self.fallbacks.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(e) => Some(Err(e)),
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
                    let res = conn.open_many(group).await;
                    self.put_back(worker, conn);
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
                        tracing::debug!(worker, error = %e, "short-circuit batch open failed; reading over TCP");
                        self.refused.lock().insert(worker, Instant::now() + BACKOFF);
                        return;
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
        if lb.src.tier != TierKind::Mem || offset + len > lb.src.len {
            return None;
        }
        let map = lb.mapping()?;
        let (lo, hi) = (offset / CHUNK, (offset + len).div_ceil(CHUNK));
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
        let mut conn = match self.conn(loc).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(worker = loc.worker_id, error = %e, "short-circuit unavailable; writing over TCP");
                self.refused.lock().insert(loc.worker_id, Instant::now() + BACKOFF);
                return None;
            }
        };
        match conn.write_open(block, len_hint, after).await {
            Ok((file, base, _tier)) => {
                Some(LocalWrite { worker: loc.worker_id, block, conn, file, base, crcs: Vec::new(), len: 0 })
            }
            Err(e) => {
                tracing::debug!(worker = loc.worker_id, block, error = %e, "direct write refused; writing over TCP");
                if e.kind() != ErrorKind::NoSpace {
                    self.refused.lock().insert(loc.worker_id, Instant::now() + BACKOFF);
                }
                None
            }
        }
    }

    /// Asks worker `loc` (this host) to store `ids`, one file's blocks in
    /// file order, as one file at their file offsets; the descriptors held
    /// for them are dropped so the next open sees the new place.
    pub async fn join(&self, loc: &BlockLocation, ids: &[u64]) -> Result<()> {
        let mut conn = self.conn(loc).await?;
        let res = conn.join(ids).await;
        self.put_back(loc.worker_id, conn);
        for id in ids {
            self.forget(*id);
        }
        res
    }

    /// Seals a direct write and keeps its connection for reuse.
    pub async fn commit_write(&self, mut w: LocalWrite) -> Result<TierKind> {
        let tier = w.conn.write_commit(w.block, w.len, &w.crcs).await?;
        self.put_back(w.worker, w.conn);
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(tier)
    }

    async fn conn(&self, loc: &BlockLocation) -> Result<LocalConn> {
        let idle = self.idle.lock().get_mut(&loc.worker_id).and_then(Vec::pop);
        match idle {
            Some(c) => Ok(c),
            None => LocalConn::connect(&loc.local_socket, loc.worker_id, loc.local_token).await,
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
        let res = conn.open(block).await;
        self.put_back(loc.worker_id, conn);
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
