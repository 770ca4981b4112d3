//! Client side of the RDMA transport: a TCP control connection (the frame
//! protocol) plus a queue pair; payloads land in or leave from slots of a
//! registered pool shared by all of the client's connections.

#[cfg(feature = "rdma")]
mod imp {
    use std::sync::Arc;

    use curvine_common::tier::TierKind;
    use curvine_common::{Error, Result};

    use crate::frame::{Op, CHUNK};
    use crate::msg::{self, ReadReq, WriteData};
    use crate::rdma::pool::{Pool, Slot};
    use crate::rdma::verbs::{Device, QueuePair};
    use crate::rdma::wire::{Endpoint, RdmaReadResp, RemoteBuf, FLAG_RDMA};
    use crate::rdma::RdmaOptions;
    use crate::tcp::{TcpConn, TcpOptions};
    use crate::transport::{Capabilities, DataConn, Transport};

    pub struct RdmaTransport {
        dev: Arc<Device>,
        pool: Arc<Pool>,
        tcp: TcpOptions,
        verify: bool,
    }

    impl RdmaTransport {
        pub fn open(opts: &RdmaOptions, tcp: TcpOptions) -> Result<RdmaTransport> {
            let dev = Device::open(opts.device.as_deref(), opts.port, opts.gid_index)?;
            // Slots are whole chunks, so a write piece never splits a chunk.
            let slot = (opts.slot_size / CHUNK as usize).max(1) * CHUNK as usize;
            let pool = Pool::new(&dev, slot, opts.slots)?;
            Ok(RdmaTransport { dev, pool, tcp, verify: tcp.verify })
        }
    }

    #[async_trait::async_trait]
    impl Transport for RdmaTransport {
        fn name(&self) -> &'static str {
            "rdma"
        }
        fn capabilities(&self) -> Capabilities {
            // Bytes land in a registered slot and are copied out once.
            Capabilities { zero_copy_read: false, pipelined: false }
        }
        async fn connect(&self, addr: &str) -> Result<Box<dyn DataConn>> {
            let mut ctrl = TcpConn::connect(addr, self.tcp).await?;
            let mut qp = QueuePair::new(&self.dev)?;
            let mut head = Vec::with_capacity(Endpoint::LEN);
            qp.endpoint().encode(&mut head);
            let answer = ctrl.call(Op::RdmaConnect, 0, &head).await?;
            let worker = Endpoint::decode(&answer)?;
            // The worker's queue pair is ready to receive; ours becomes
            // ready before we send the first request that uses it.
            qp.connect(&worker)?;
            Ok(Box::new(RdmaConn { qp, slot: None, ctrl, pool: self.pool.clone(), verify: self.verify }))
        }
    }

    pub struct RdmaConn {
        // Field order is drop order: the queue pair goes first, so nothing
        // can reach `slot` over RDMA once it returns to the pool.
        qp: QueuePair,
        /// The slot of the request in flight; still here at the next call
        /// only if that request's future was dropped midway.
        slot: Option<Slot>,
        ctrl: TcpConn,
        pool: Arc<Pool>,
        verify: bool,
    }

    impl RdmaConn {
        async fn slot(&mut self) -> Result<()> {
            if self.slot.is_some() {
                return Err(Error::internal("rdma connection reused after an abandoned request"));
            }
            self.slot = Some(self.pool.take().await);
            Ok(())
        }
    }

    #[async_trait::async_trait]
    impl DataConn for RdmaConn {
        async fn read_into(&mut self, block_id: u64, offset: u64, buf: &mut [u8]) -> Result<usize> {
            let piece = self.pool.slot_size();
            let mut filled = 0;
            while filled < buf.len() {
                let want = piece.min(buf.len() - filled);
                self.slot().await?;
                let slot = self.slot.as_mut().expect("taken above");
                let mut head = Vec::with_capacity(ReadReq::LEN + RemoteBuf::LEN);
                ReadReq { block_id, offset: offset + filled as u64, len: want as u64 }.encode(&mut head);
                RemoteBuf { addr: slot.addr(), rkey: slot.rkey(), len: want as u32 }.encode(&mut head);
                let answer = self.ctrl.call(Op::Read, FLAG_RDMA, &head).await;
                if self.ctrl.is_broken() {
                    // No answer: the worker may still be writing into the
                    // slot, which stays with this (now broken) connection
                    // until its queue pair is destroyed.
                    return Err(answer.err().unwrap_or_else(|| Error::internal("broken control connection")));
                }
                // The worker answers only after its write completed or
                // failed: the slot is ours again either way.
                let mut slot = self.slot.take().expect("held during the request");
                let r = RdmaReadResp::decode(&answer?)?;
                let n = r.len as usize;
                if n > want {
                    return Err(Error::protocol(format!("rdma read answered {n} bytes for {want} requested")));
                }
                let bytes = &slot.bytes()[..n];
                if self.verify {
                    r.resp.verify(bytes, block_id, offset + filled as u64)?;
                }
                buf[filled..filled + n].copy_from_slice(bytes);
                filled += n;
                if n < want {
                    break;
                }
            }
            Ok(filled)
        }

        async fn write_open(&mut self, block_id: u64, len_hint: u64, after: u64) -> Result<TierKind> {
            self.ctrl.write_open(block_id, len_hint, after).await
        }

        async fn write_data(&mut self, block_id: u64, offset: u64, data: &[u8]) -> Result<()> {
            for (i, piece) in data.chunks(self.pool.slot_size()).enumerate() {
                self.slot().await?;
                let slot = self.slot.as_mut().expect("taken above");
                slot.bytes()[..piece.len()].copy_from_slice(piece);
                let mut head = Vec::new();
                RemoteBuf { addr: slot.addr(), rkey: slot.rkey(), len: piece.len() as u32 }.encode(&mut head);
                let off = offset + (i * self.pool.slot_size()) as u64;
                WriteData { block_id, offset: off, crcs: msg::chunk_crcs(piece) }.encode(&mut head);
                let answer = self.ctrl.call(Op::WriteData, FLAG_RDMA, &head).await;
                if !self.ctrl.is_broken() {
                    // Answered: the worker is done reading the slot.
                    self.slot = None;
                }
                answer?;
            }
            Ok(())
        }

        async fn write_commit(&mut self, block_id: u64, len: u64) -> Result<TierKind> {
            self.ctrl.write_commit(block_id, len).await
        }
        async fn write_abort(&mut self, block_id: u64) -> Result<()> {
            self.ctrl.write_abort(block_id).await
        }
        async fn ping(&mut self) -> Result<()> {
            self.ctrl.ping().await
        }
        async fn load(&mut self, block_id: u64) -> Result<bool> {
            self.ctrl.load(block_id).await
        }
        async fn verify(&mut self, block_id: u64) -> Result<bool> {
            self.ctrl.verify(block_id).await
        }
        async fn persist(&mut self, file_id: u64) -> Result<()> {
            self.ctrl.persist(file_id).await
        }
        fn is_broken(&self) -> bool {
            self.ctrl.is_broken() || self.slot.is_some() || !self.qp.usable()
        }
    }
}

#[cfg(not(feature = "rdma"))]
mod imp {
    use curvine_common::Result;

    use crate::rdma::RdmaOptions;
    use crate::tcp::TcpOptions;
    use crate::transport::{Capabilities, DataConn, Transport};

    /// Without the `rdma` feature there is no RDMA transport to open.
    pub enum RdmaTransport {}

    impl RdmaTransport {
        pub fn open(_opts: &RdmaOptions, _tcp: TcpOptions) -> Result<RdmaTransport> {
            Err(crate::rdma::not_built())
        }
    }

    #[async_trait::async_trait]
    impl Transport for RdmaTransport {
        fn name(&self) -> &'static str {
            match *self {}
        }
        fn capabilities(&self) -> Capabilities {
            match *self {}
        }
        async fn connect(&self, _addr: &str) -> Result<Box<dyn DataConn>> {
            match *self {}
        }
    }
}

pub use imp::RdmaTransport;
