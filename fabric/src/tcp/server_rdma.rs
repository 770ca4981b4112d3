//! The control-connection side of RDMA on the data server: queue-pair set
//! up, and reads and writes whose bytes move by RDMA (see `rdma::wire`).

use curvine_common::{Error, ErrorKind, Result};

use super::server::{open_source, Conn, Piece};
use crate::range::RangePlan;
use crate::frame::{HeadReader, Header, CHUNK};
use crate::msg::{ReadReq, WriteData};
use crate::rdma::server::Outgoing;
use crate::rdma::wire::{Endpoint, RdmaReadResp, RemoteBuf};

impl Conn {
    /// Answers with this worker's endpoint, or with the reason it has no
    /// RDMA (the client then stays on TCP); either way the connection
    /// stays up.
    pub(super) async fn rdma_connect(&mut self, h: &Header) -> Result<()> {
        self.drain_payload(h).await?;
        let client = Endpoint::decode(&self.head)?;
        match self.hub.accept(&client) {
            Ok((link, ep)) => {
                self.link = Some(link);
                let mut head = Vec::with_capacity(Endpoint::LEN);
                ep.encode(&mut head);
                self.respond(h, &head).await
            }
            Err(e) => self.send_error(h.op, h.req_id, &e).await,
        }
    }

    fn link_check(&self) -> Result<()> {
        match &self.link {
            None => Err(Error::protocol("RDMA request on a connection without a queue pair (send RdmaConnect first)")),
            Some(l) if !l.usable() => Err(Error::new(ErrorKind::Io, "this connection's RDMA queue pair has failed")),
            Some(_) => Ok(()),
        }
    }

    pub(super) async fn read_rdma(&mut self, h: &Header) -> Result<()> {
        self.drain_payload(h).await?;
        self.link_check()?;
        let req = ReadReq::decode(&self.head)?;
        let mut r = HeadReader::new(self.head.get(ReadReq::LEN..).unwrap_or(&[]));
        let to = RemoteBuf::decode(&mut r)?;
        let (src, loaded) = match open_source(self.svc.clone(), req).await {
            Ok(s) => s,
            Err(e) => return self.send_error(h.op, h.req_id, &e).await,
        };
        let end = (req.offset + req.len).min(src.len);
        let plan = match RangePlan::new(&src, req.block_id, req.offset, end) {
            Ok(p) => p,
            Err(e) => return self.send_error(h.op, h.req_id, &e).await,
        };
        let out = Outgoing {
            head_edge: &plan.head_edge,
            file: &src.file,
            body_at: src.base + plan.lo,
            body_len: (plan.hi - plan.lo) as usize,
            tail_edge: &plan.tail_edge,
        };
        let link = self.link.as_mut().ok_or_else(|| Error::internal("queue pair vanished"))?;
        match link.send(&out, to).await {
            Ok(()) => {}
            // A length the worker refuses leaves the queue pair healthy.
            Err(e) if e.kind() == ErrorKind::InvalidArgument => return self.send_error(h.op, h.req_id, &e).await,
            Err(e) => {
                let _ = self.send_error(h.op, h.req_id, &e).await;
                return Err(e);
            }
        }
        self.svc.on_read(req.block_id, end - req.offset, loaded);
        let mut head = Vec::new();
        RdmaReadResp { len: (end - req.offset) as u32, resp: plan.resp }.encode(&mut head);
        self.respond(h, &head).await
    }

    /// Like a TCP data frame, but the bytes are fetched from the client's
    /// buffer, and the answer (empty) tells the client it may reuse it.
    pub(super) async fn write_data_rdma(&mut self, h: &Header) -> Result<()> {
        self.drain_payload(h).await?;
        self.link_check()?;
        let mut r = HeadReader::new(&self.head);
        let from = RemoteBuf::decode(&mut r)?;
        let req = WriteData::decode(&self.head[RemoteBuf::LEN..], from.len)?;
        let mut data = self.session_at(&req)?.spare.take().unwrap_or_default();
        let link = self.link.as_mut().ok_or_else(|| Error::internal("queue pair vanished"))?;
        if let Err(e) = link.fetch(from, &mut data).await {
            let _ = self.send_error(h.op, h.req_id, &e).await;
            return Err(e);
        }
        let s = self.writes.get_mut(&req.block_id).ok_or_else(|| Error::internal("write session vanished"))?;
        s.next += data.len() as u64;
        s.ended = data.len() as u64 % CHUNK != 0;
        s.push(Piece { offset: req.offset, data, crcs: req.crcs }).await?;
        self.respond(h, &[]).await
    }
}
