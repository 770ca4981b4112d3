//! The data-plane frame: a fixed 24-byte header, an op-specific head of at
//! most `MAX_HEAD` bytes, and a raw payload of at most `MAX_PAYLOAD` bytes.
//!
//! ```text
//! 0      2   3   4        6       8             16         20            24
//! | magic | v | op | status | flags | request id | head len | payload len |
//! ```
//! All integers are little-endian. A decoder checks magic, version, op and
//! both lengths before it allocates or reads anything else.

use curvine_common::{Error, ErrorKind, Result};

pub const MAGIC: u16 = 0xC71E;
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 24;
/// Largest op-specific head (a read response carries one crc per 64 KiB).
pub const MAX_HEAD: u32 = 64 << 10;
/// Largest payload of one frame.
pub const MAX_PAYLOAD: u32 = 64 << 20;
/// Bytes covered by one stored crc32c.
pub const CHUNK: u64 = 64 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Read = 1,
    WriteOpen = 2,
    WriteData = 3,
    WriteCommit = 4,
    WriteAbort = 5,
    Ping = 6,
    /// Make a block readable on this worker (load it from the UFS if the
    /// worker can); answered once it is. Head: block id.
    Load = 7,
    /// Upload a file whose blocks this worker can read to its UFS; answered
    /// once the UFS has it. Head: file id.
    Persist = 8,
    /// Check a block against its checksums; one that fails is dropped.
    /// Head: block id. Answer head: [1] intact, [0] failed and dropped.
    Verify = 9,
    /// Set up an RDMA queue pair beside this connection. Head: the client's
    /// `rdma::wire::Endpoint`; answer head: the worker's.
    RdmaConnect = 10,
}

impl Op {
    pub fn from_u8(v: u8) -> Option<Op> {
        Some(match v {
            1 => Op::Read,
            2 => Op::WriteOpen,
            3 => Op::WriteData,
            4 => Op::WriteCommit,
            5 => Op::WriteAbort,
            6 => Op::Ping,
            7 => Op::Load,
            8 => Op::Persist,
            9 => Op::Verify,
            10 => Op::RdmaConnect,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub op: Op,
    /// 0 = ok; otherwise an `ErrorKind` code and the payload is the message.
    pub status: u16,
    pub flags: u16,
    pub req_id: u64,
    pub head_len: u32,
    pub payload_len: u32,
}

impl Header {
    pub fn request(op: Op, req_id: u64, head_len: usize, payload_len: usize) -> Header {
        Header { op, status: 0, flags: 0, req_id, head_len: head_len as u32, payload_len: payload_len as u32 }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..2].copy_from_slice(&MAGIC.to_le_bytes());
        b[2] = VERSION;
        b[3] = self.op as u8;
        b[4..6].copy_from_slice(&self.status.to_le_bytes());
        b[6..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..16].copy_from_slice(&self.req_id.to_le_bytes());
        b[16..20].copy_from_slice(&self.head_len.to_le_bytes());
        b[20..24].copy_from_slice(&self.payload_len.to_le_bytes());
        b
    }

    /// Decodes and bounds-checks a header. Never allocates.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header> {
        let magic = u16::from_le_bytes([b[0], b[1]]);
        if magic != MAGIC {
            return Err(Error::protocol(format!("bad frame magic {magic:#06x}")));
        }
        if b[2] != VERSION {
            return Err(Error::protocol(format!("unsupported frame version {} (this side speaks {VERSION})", b[2])));
        }
        let op = Op::from_u8(b[3]).ok_or_else(|| Error::protocol(format!("unknown frame op {}", b[3])))?;
        let head_len = u32::from_le_bytes([b[16], b[17], b[18], b[19]]);
        let payload_len = u32::from_le_bytes([b[20], b[21], b[22], b[23]]);
        if head_len > MAX_HEAD {
            return Err(Error::protocol(format!("frame head of {head_len} bytes exceeds {MAX_HEAD}")));
        }
        if payload_len > MAX_PAYLOAD {
            return Err(Error::protocol(format!("frame payload of {payload_len} bytes exceeds {MAX_PAYLOAD}")));
        }
        Ok(Header {
            op,
            status: u16::from_le_bytes([b[4], b[5]]),
            flags: u16::from_le_bytes([b[6], b[7]]),
            req_id: u64::from_le_bytes(b[8..16].try_into().unwrap_or_default()),
            head_len,
            payload_len,
        })
    }

    pub fn error(&self) -> Option<ErrorKind> {
        (self.status != 0).then(|| ErrorKind::from_code(self.status))
    }
}

/// A little-endian cursor over an op head that fails cleanly on short input.
pub struct HeadReader<'a> {
    buf: &'a [u8],
}

impl<'a> HeadReader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        HeadReader { buf }
    }
    fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
        if self.buf.len() < N {
            return Err(Error::protocol("frame head is truncated"));
        }
        let (a, b) = self.buf.split_at(N);
        self.buf = b;
        let mut out = [0u8; N];
        out.copy_from_slice(a);
        Ok(out)
    }
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take::<1>()?[0])
    }
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take()?))
    }
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = Header::request(Op::Read, 42, 24, 1 << 20);
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn rejects_bad_headers_without_allocating() {
        let good = Header::request(Op::Read, 1, 0, 0).encode();
        let mut b = good;
        b[0] = 0;
        assert_eq!(Header::decode(&b).unwrap_err().kind(), ErrorKind::Protocol);
        let mut b = good;
        b[2] = 99;
        assert!(Header::decode(&b).unwrap_err().message().contains("version"));
        let mut b = good;
        b[3] = 200;
        assert!(Header::decode(&b).is_err());
        let mut b = good;
        b[16..20].copy_from_slice(&(MAX_HEAD + 1).to_le_bytes());
        assert!(Header::decode(&b).is_err());
        let mut b = good;
        b[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Header::decode(&b).unwrap_err().message().contains("payload"));
    }

    #[test]
    fn head_reader_fails_on_short_input() {
        let mut r = HeadReader::new(&[1, 2, 3]);
        assert!(r.u64().is_err());
    }
}
