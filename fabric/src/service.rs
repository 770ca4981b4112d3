//! What a data-plane server serves: the worker's block store implements
//! `BlockService`; every transport's server side calls it.

use std::fs::File;
use std::sync::Arc;

use curvine_common::tier::TierKind;
use curvine_common::Result;

/// An open block for reading. The block's bytes are `file` from offset
/// `base` on (0 for a block in a file of its own; a worker stores a file's
/// consecutive MEM blocks back to back in one extent file, so the kernel
/// can serve the whole file from one backing file); `crcs[i]` covers
/// block bytes `i*CHUNK .. min((i+1)*CHUNK, len)`.
///
/// To ensure correctness: `len` and `crcs` describe a sealed block that is
/// never modified in place; eviction unlinks the file (or, for an extent,
/// only when its last block goes), which stays readable through this handle.
pub struct ReadSource {
    pub file: Arc<File>,
    /// Where byte 0 of the block is in `file` (page-aligned).
    pub base: u64,
    pub len: u64,
    pub crcs: Arc<[u32]>,
    pub tier: TierKind,
}

impl ReadSource {
    /// Reads `buf.len()` bytes of the block from block offset `off`.
    pub fn read_exact_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        // Never past the block into a neighbour's bytes in an extent file.
        if off.checked_add(buf.len() as u64).is_none_or(|end| end > self.len) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("read of {} bytes at {off} past the end of a block of {}", buf.len(), self.len),
            ));
        }
        self.file.read_exact_at(buf, self.base + off)
    }

    /// A second handle on the same bytes.
    pub fn share(&self) -> ReadSource {
        ReadSource { file: self.file.clone(), base: self.base, len: self.len, crcs: self.crcs.clone(), tier: self.tier }
    }
}

/// Receives the bytes of one new block, in order.
pub trait BlockSink: Send {
    /// Appends `data` at `offset` (== bytes appended so far). `crcs` are the
    /// already-verified crc32c of each `CHUNK` of `data`; `offset` is
    /// chunk-aligned, and only the final append may end mid-chunk.
    fn append(&mut self, offset: u64, data: &[u8], crcs: &[u32]) -> Result<()>;
    /// Seals the block at `len` bytes and makes it readable.
    fn commit(self: Box<Self>, len: u64) -> Result<TierKind>;
    /// Drops everything written and releases the reservation.
    fn abort(self: Box<Self>);
    fn tier(&self) -> TierKind;
    /// A read handle on the bytes appended so far (positional reads only),
    /// so a block can be served while it is still being written; `None`
    /// when the sink cannot offer one.
    fn partial(&self) -> Option<Arc<File>> {
        None
    }
    /// A read-write handle on the block's file for a same-host client to
    /// write the block into itself (positional writes from offset `base()`,
    /// then `adopt` and `commit`); `None` when the sink cannot offer one.
    fn direct(&self) -> Option<Arc<File>> {
        None
    }
    /// Where byte 0 of the block goes in the `partial`/`direct` file.
    fn base(&self) -> u64 {
        0
    }
    /// Takes `len` bytes a same-host client wrote through `direct`, with the
    /// crc32c of each `CHUNK` as the client computed them (reads check them
    /// end to end). Nothing may have been appended before.
    fn adopt(&mut self, _len: u64, _crcs: &[u32]) -> Result<()> {
        Err(curvine_common::Error::invalid("this block sink takes no direct writes"))
    }
}

pub trait BlockService: Send + Sync + 'static {
    fn open_read(&self, block_id: u64) -> Result<ReadSource>;
    /// Starts a new block, reserving `len_hint` bytes in the fastest tier
    /// with room; `NoSpace` when no tier has room.
    /// `after`: the file's block written just before this one (0: none or
    /// unknown), which a store may place this block next to.
    fn open_write(&self, block_id: u64, len_hint: u64, after: u64) -> Result<Box<dyn BlockSink>>;
    /// Stores `ids` — one file's blocks, in file order — as one file with
    /// every block at its file offset (a same-host reader then hands the
    /// whole file to the kernel). Blocking; a store may refuse.
    fn join(&self, ids: &[u64]) -> Result<()> {
        let _ = ids;
        Err(curvine_common::Error::invalid("this block store does not join blocks"))
    }
    /// Called when a read finds no such block: a future that makes it
    /// readable (a cache loading it from the UFS), or `None` when it cannot
    /// appear. Implementations coalesce concurrent loads of one block.
    fn load(&self, _block_id: u64) -> Option<futures::future::BoxFuture<'static, Result<()>>> {
        None
    }
    /// Like `load`, but resolves as soon as bytes `..end` of the block are
    /// readable, with a source that may cover only a prefix of the block
    /// (at least `..min(end, block length)`): a reader is served while the
    /// rest of the block is still arriving. The default waits for `load`.
    fn load_until(
        self: Arc<Self>,
        block_id: u64,
        _end: u64,
    ) -> Option<futures::future::BoxFuture<'static, Result<ReadSource>>> {
        let load = self.load(block_id)?;
        Some(Box::pin(async move {
            load.await?;
            self.open_read(block_id)
        }))
    }
    /// Uploads file `file_id` to its UFS (a cache that persists writes);
    /// `None` when this server cannot.
    fn persist(&self, _file_id: u64) -> Option<futures::future::BoxFuture<'static, Result<()>>> {
        None
    }
    /// Checks a block against its checksums, dropping it when it fails (a
    /// client saw it corrupt): `Ok(true)` intact, `Ok(false)` dropped.
    fn verify(&self, block_id: u64) -> Result<bool> {
        Err(curvine_common::Error::invalid(format!("block {block_id}: this server cannot verify blocks")))
    }
    /// Accounting hook: `bytes` were served from `block_id`; `loaded` when
    /// the read had to wait for `load` (a cache miss).
    fn on_read(&self, _block_id: u64, _bytes: u64, _loaded: bool) {}
}
