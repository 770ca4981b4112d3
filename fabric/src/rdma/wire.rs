//! What the RDMA transport adds to the frame protocol, carried in frame
//! heads on the TCP control connection. Pure encoding, compiled without the
//! `rdma` feature too, so both sides and their tests share it.
//!
//! - `Op::RdmaConnect`: head = the client's `Endpoint`; answer head = the
//!   worker's `Endpoint` (or an error saying why the worker has no RDMA).
//! - `Op::Read` with `FLAG_RDMA`: head = `ReadReq` + `RemoteBuf`; the worker
//!   RDMA-WRITEs the bytes into the client's buffer, waits for the write to
//!   complete, then answers with an `RdmaReadResp` head and no payload.
//! - `Op::WriteData` with `FLAG_RDMA`: head = `RemoteBuf` + the `WriteData`
//!   head; the worker RDMA-READs the bytes from the client's buffer and
//!   answers (empty head) once it has them, so the client may reuse it.

use curvine_common::{Error, Result};

use crate::frame::HeadReader;
use crate::msg::ReadResp;

/// Frame flag: the payload moves by RDMA, not on the control connection.
pub const FLAG_RDMA: u16 = 1;

const ENDPOINT_VERSION: u8 = 1;

/// One side's reliable-connected queue pair, as the peer needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub qpn: u32,
    pub psn: u32,
    /// 0 on RoCE; the port's LID on InfiniBand.
    pub lid: u16,
    pub gid: [u8; 16],
    /// `ibv_mtu` of the port (1 = 256 B … 5 = 4096 B).
    pub mtu: u8,
}

impl Endpoint {
    pub const LEN: usize = 28;
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(ENDPOINT_VERSION);
        out.extend_from_slice(&self.qpn.to_le_bytes());
        out.extend_from_slice(&self.psn.to_le_bytes());
        out.extend_from_slice(&self.lid.to_le_bytes());
        out.extend_from_slice(&self.gid);
        out.push(self.mtu);
    }
    pub fn decode(b: &[u8]) -> Result<Endpoint> {
        let mut r = HeadReader::new(b);
        let v = r.u8()?;
        if v != ENDPOINT_VERSION {
            return Err(Error::protocol(format!("rdma endpoint version {v} (this side speaks {ENDPOINT_VERSION})")));
        }
        let qpn = r.u32()?;
        let psn = r.u32()?;
        let lid = u16::from(r.u8()?) | (u16::from(r.u8()?) << 8);
        let mut gid = [0u8; 16];
        for g in &mut gid {
            *g = r.u8()?;
        }
        let mtu = r.u8()?;
        if !(1..=5).contains(&mtu) {
            return Err(Error::protocol(format!("rdma endpoint with invalid mtu code {mtu}")));
        }
        if qpn == 0 || qpn > 0xff_ffff || psn > 0xff_ffff {
            return Err(Error::protocol(format!("rdma endpoint with invalid queue pair {qpn} / psn {psn}")));
        }
        Ok(Endpoint { qpn, psn, lid, gid, mtu })
    }
}

/// A range of the peer's registered memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteBuf {
    pub addr: u64,
    pub rkey: u32,
    pub len: u32,
}

impl RemoteBuf {
    pub const LEN: usize = 16;
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.addr.to_le_bytes());
        out.extend_from_slice(&self.rkey.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
    }
    pub fn decode(r: &mut HeadReader<'_>) -> Result<RemoteBuf> {
        Ok(RemoteBuf { addr: r.u64()?, rkey: r.u32()?, len: r.u32()? })
    }
}

/// Answer to an RDMA read: `len` bytes were written to the client's buffer;
/// `resp` describes their checksums exactly as a TCP read response would.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RdmaReadResp {
    pub len: u32,
    pub resp: ReadResp,
}

impl RdmaReadResp {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.len.to_le_bytes());
        self.resp.encode(out);
    }
    pub fn decode(b: &[u8]) -> Result<RdmaReadResp> {
        let len = HeadReader::new(b).u32()?;
        let resp = ReadResp::decode(&b[4..], len)?;
        Ok(RdmaReadResp { len, resp })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep() -> Endpoint {
        Endpoint { qpn: 0x11, psn: 0xabcdef, lid: 7, gid: [9; 16], mtu: 3 }
    }

    #[test]
    fn endpoint_round_trip_and_rejects() {
        let mut b = Vec::new();
        ep().encode(&mut b);
        assert_eq!(b.len(), Endpoint::LEN);
        assert_eq!(Endpoint::decode(&b).unwrap(), ep());
        assert!(Endpoint::decode(&b[..10]).is_err(), "truncated");
        let mut v = b.clone();
        v[0] = 9;
        assert!(Endpoint::decode(&v).unwrap_err().message().contains("version"));
        let mut m = b.clone();
        m[Endpoint::LEN - 1] = 0;
        assert!(Endpoint::decode(&m).unwrap_err().message().contains("mtu"));
        let mut q = Vec::new();
        Endpoint { qpn: 0, ..ep() }.encode(&mut q);
        assert!(Endpoint::decode(&q).is_err(), "queue pair 0 does not exist");
    }

    #[test]
    fn read_response_round_trip() {
        let r = RdmaReadResp { len: 70_000, resp: ReadResp { body_start: 0, body_end: 65_536, crcs: vec![5] } };
        let mut b = Vec::new();
        r.encode(&mut b);
        assert_eq!(RdmaReadResp::decode(&b).unwrap(), r);
        assert!(RdmaReadResp::decode(&b[..3]).is_err());
        let mut rb = Vec::new();
        RemoteBuf { addr: 1 << 40, rkey: 77, len: 4 << 20 }.encode(&mut rb);
        assert_eq!(RemoteBuf::decode(&mut HeadReader::new(&rb)).unwrap(), RemoteBuf { addr: 1 << 40, rkey: 77, len: 4 << 20 });
    }
}
