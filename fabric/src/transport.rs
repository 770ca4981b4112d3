//! The transport trait: how a client moves block bytes to and from a worker.
//! TCP is the default; same-host shared memory and RDMA slot in behind the
//! same trait.

use curvine_common::tier::TierKind;
use curvine_common::Result;

/// What a transport can do, declared up front instead of failing later.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Payload bytes reach the caller's buffer without an intermediate copy.
    pub zero_copy_read: bool,
    /// Several requests may be in flight on one connection.
    pub pipelined: bool,
}

/// One connection to one worker. Not shared between tasks: a pool hands
/// connections out exclusively.
///
/// To ensure correctness:
/// - `read_into` fills `buf` with the block's bytes from `offset`, verifying
///   every chunk's crc32c, and returns how many it filled (fewer only at the
///   end of the block);
/// - a write is `write_open`, `write_data` calls at increasing offsets that
///   are multiples of `frame::CHUNK` (only the last may end mid-chunk), then
///   `write_commit` with the total length; the block is readable only after
///   the commit succeeds;
/// - after any error other than one the worker reported for a single
///   request, `is_broken` is true and the connection must be dropped.
#[async_trait::async_trait]
pub trait DataConn: Send {
    async fn read_into(&mut self, block_id: u64, offset: u64, buf: &mut [u8]) -> Result<usize>;
    /// `after`: the file's block written before this one on the same
    /// worker (0: none), which the worker may store this one next to.
    async fn write_open(&mut self, block_id: u64, len_hint: u64, after: u64) -> Result<TierKind>;
    async fn write_data(&mut self, block_id: u64, offset: u64, data: &[u8]) -> Result<()>;
    async fn write_commit(&mut self, block_id: u64, len: u64) -> Result<TierKind>;
    async fn write_abort(&mut self, block_id: u64) -> Result<()>;
    async fn ping(&mut self) -> Result<()>;
    /// Asks the worker to make `block_id` readable (loading it from the UFS
    /// when it is not cached); `true` when it was cached already.
    async fn load(&mut self, block_id: u64) -> Result<bool>;
    /// Asks the worker to check `block_id` against its checksums (it drops
    /// the block if it fails); `true` when intact.
    async fn verify(&mut self, block_id: u64) -> Result<bool>;
    /// Asks the worker to upload file `file_id` to its UFS and waits.
    async fn persist(&mut self, file_id: u64) -> Result<()>;
    fn is_broken(&self) -> bool;
}

#[async_trait::async_trait]
pub trait Transport: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn capabilities(&self) -> Capabilities;
    async fn connect(&self, addr: &str) -> Result<Box<dyn DataConn>>;
}
