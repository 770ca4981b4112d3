//! The same-host socket (`local`) as a `Transport`, so the short-circuit
//! protocol and its server run the conformance suite like TCP and RDMA.
//! Reads copy straight from the block file's pages (received descriptor)
//! into the caller's buffer; writes go into the block file the worker hands
//! over. The client proper (`curvine-client`'s `LocalReads`) speaks the same
//! protocol with mappings and descriptor caches on top.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

use curvine_common::tier::TierKind;
use curvine_common::{Error, ErrorKind, Result};

use crate::frame::CHUNK;
use crate::local::LocalConn;
use crate::msg;
use crate::range::RangePlan;
use crate::transport::{Capabilities, DataConn, Transport};

/// Connects to the socket path given as the address; trusts it only when
/// the worker behind it is `worker_id` with `token` (both from meta).
pub struct ShmTransport {
    worker_id: u64,
    token: u64,
    verify: bool,
}

impl ShmTransport {
    pub fn new(worker_id: u64, token: u64, verify: bool) -> ShmTransport {
        ShmTransport { worker_id, token, verify }
    }
}

#[async_trait::async_trait]
impl Transport for ShmTransport {
    fn name(&self) -> &'static str {
        "shm"
    }
    fn capabilities(&self) -> Capabilities {
        // One copy out of the page cache; requests are answered in order.
        Capabilities { zero_copy_read: false, pipelined: false }
    }
    async fn connect(&self, addr: &str) -> Result<Box<dyn DataConn>> {
        let conn = LocalConn::connect(addr, self.worker_id, self.token).await?;
        Ok(Box::new(ShmConn { conn, writes: HashMap::new(), verify: self.verify, busy: false }))
    }
}

struct OpenWrite {
    file: File,
    /// Where the block starts in `file`.
    base: u64,
    crcs: Vec<u32>,
    next: u64,
}

pub struct ShmConn {
    conn: LocalConn,
    writes: HashMap<u64, OpenWrite>,
    verify: bool,
    /// A request to the worker is under way (still set if its future was
    /// dropped midway: the socket may hold an unread answer).
    busy: bool,
}

#[async_trait::async_trait]
impl DataConn for ShmConn {
    async fn read_into(&mut self, block_id: u64, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.busy = true;
        let src = self.conn.open(block_id).await;
        self.busy = false;
        let src = src?;
        if offset > src.len {
            return Err(Error::invalid(format!("block {block_id}: offset {offset} beyond its {} bytes", src.len)));
        }
        let end = (offset + buf.len() as u64).min(src.len);
        let n = (end - offset) as usize;
        // Edges verified as the worker would; the body is copied from the
        // page cache and verified here.
        let plan = RangePlan::new(&src, block_id, offset, end)?;
        let (bs, be) = (plan.resp.body_start as usize, plan.resp.body_end as usize);
        buf[..bs].copy_from_slice(&plan.head_edge);
        src.read_exact_at(&mut buf[bs..be], plan.lo)
            .map_err(|e| Error::from(e).context(format!("block {block_id}")))?;
        buf[be..n].copy_from_slice(&plan.tail_edge);
        if self.verify {
            plan.resp.verify(&buf[..n], block_id, offset)?;
        }
        Ok(n)
    }

    async fn write_open(&mut self, block_id: u64, len_hint: u64, after: u64) -> Result<TierKind> {
        if self.writes.contains_key(&block_id) {
            return Err(Error::new(ErrorKind::AlreadyExists, format!("block {block_id} is already being written")));
        }
        let (file, base, tier) = self.conn.write_open(block_id, len_hint, after).await?;
        self.writes.insert(block_id, OpenWrite { file, base, crcs: Vec::new(), next: 0 });
        Ok(tier)
    }

    async fn write_data(&mut self, block_id: u64, offset: u64, data: &[u8]) -> Result<()> {
        let w = self
            .writes
            .get_mut(&block_id)
            .ok_or_else(|| Error::invalid(format!("data for block {block_id} without an open write")))?;
        if offset != w.next || w.next % CHUNK != 0 {
            return Err(Error::invalid(format!(
                "block {block_id}: write at offset {offset} but {} bytes written so far",
                w.next
            )));
        }
        w.file.write_all_at(data, w.base + offset).map_err(|e| Error::from(e).context(format!("block {block_id}")))?;
        w.crcs.extend(msg::chunk_crcs(data));
        w.next += data.len() as u64;
        Ok(())
    }

    async fn write_commit(&mut self, block_id: u64, len: u64) -> Result<TierKind> {
        let w = self
            .writes
            .remove(&block_id)
            .ok_or_else(|| Error::invalid(format!("block {block_id} has no open write")))?;
        if len != w.next {
            self.conn.write_abort(block_id).await?;
            return Err(Error::invalid(format!("block {block_id}: commit of {len} bytes but {} were written", w.next)));
        }
        self.conn.write_commit(block_id, len, &w.crcs).await
    }

    async fn write_abort(&mut self, block_id: u64) -> Result<()> {
        self.writes.remove(&block_id);
        self.conn.write_abort(block_id).await
    }

    async fn ping(&mut self) -> Result<()> {
        self.conn.open_many(&[]).await.map(|_| ())
    }

    async fn load(&mut self, block_id: u64) -> Result<bool> {
        match self.conn.open(block_id).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                Err(e.context("the same-host socket cannot load blocks from the UFS; ask over TCP"))
            }
            Err(e) => Err(e),
        }
    }

    async fn verify(&mut self, block_id: u64) -> Result<bool> {
        Err(Error::invalid(format!("block {block_id}: verification is asked for over TCP, not the same-host socket")))
    }

    async fn persist(&mut self, file_id: u64) -> Result<()> {
        Err(Error::invalid(format!("file {file_id}: uploads are asked for over TCP, not the same-host socket")))
    }

    fn is_broken(&self) -> bool {
        self.conn.is_broken() || self.busy
    }
}
