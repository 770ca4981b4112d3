//! Op-specific heads carried after the frame header. Each has a fixed
//! layout; `decode` rejects short or inconsistent input.

use curvine_common::tier::TierKind;
use curvine_common::{Error, Result};

use crate::frame::{HeadReader, CHUNK, MAX_PAYLOAD};

/// Read `len` bytes of a block from `offset` (a response may be shorter
/// when the block ends first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadReq {
    pub block_id: u64,
    pub offset: u64,
    pub len: u64,
}

impl ReadReq {
    pub const LEN: usize = 24;
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.block_id.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
    }
    pub fn decode(b: &[u8]) -> Result<ReadReq> {
        let mut r = HeadReader::new(b);
        let req = ReadReq { block_id: r.u64()?, offset: r.u64()?, len: r.u64()? };
        if req.len > MAX_PAYLOAD as u64 {
            return Err(Error::protocol(format!("read of {} bytes exceeds the {MAX_PAYLOAD}-byte frame limit", req.len)));
        }
        // Servers compute the range's end as offset + len.
        if req.offset.checked_add(req.len).is_none() {
            return Err(Error::protocol(format!("read of {} bytes at offset {} overflows", req.len, req.offset)));
        }
        Ok(req)
    }
}

/// Read response head: the payload bytes in `body_start..body_end` are
/// covered by `crcs`, one per `CHUNK` bytes (the last may be shorter), for
/// the receiver to verify. Bytes outside the body were verified by the
/// sender before sending.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ReadResp {
    pub body_start: u32,
    pub body_end: u32,
    pub crcs: Vec<u32>,
}

impl ReadResp {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.body_start.to_le_bytes());
        out.extend_from_slice(&self.body_end.to_le_bytes());
        out.extend_from_slice(&(self.crcs.len() as u32).to_le_bytes());
        for c in &self.crcs {
            out.extend_from_slice(&c.to_le_bytes());
        }
    }

    /// Decodes and checks the head against the payload length it describes.
    pub fn decode(b: &[u8], payload_len: u32) -> Result<ReadResp> {
        let mut r = HeadReader::new(b);
        let body_start = r.u32()?;
        let body_end = r.u32()?;
        let n = r.u32()? as usize;
        if body_start > body_end || body_end > payload_len {
            return Err(Error::protocol("read response body lies outside its payload"));
        }
        let expect = (body_end - body_start).div_ceil(CHUNK as u32) as usize;
        if n != expect || r.remaining() != n * 4 {
            return Err(Error::protocol(format!("read response has {n} checksums, expected {expect}")));
        }
        let mut crcs = Vec::with_capacity(n);
        for _ in 0..n {
            crcs.push(r.u32()?);
        }
        Ok(ReadResp { body_start, body_end, crcs })
    }

    /// Verifies `payload` against the checksums; names the failing chunk.
    pub fn verify(&self, payload: &[u8], block_id: u64, offset: u64) -> Result<()> {
        let body = &payload[self.body_start as usize..self.body_end as usize];
        self.verify_body(0, body, block_id, offset)
    }

    /// Verifies `piece`, which starts `at` bytes into the body (a multiple
    /// of CHUNK), so a receiver can check data while it is still in cache.
    pub fn verify_body(&self, at: usize, piece: &[u8], block_id: u64, offset: u64) -> Result<()> {
        let first = at / CHUNK as usize;
        let crcs = self.crcs.get(first..).unwrap_or(&[]);
        for (i, (chunk, want)) in piece.chunks(CHUNK as usize).zip(crcs).enumerate() {
            let got = crate::crc::crc32c(chunk);
            if got != *want {
                let at = offset + self.body_start as u64 + at as u64 + i as u64 * CHUNK;
                return Err(Error::new(
                    curvine_common::ErrorKind::Corrupt,
                    format!("block {block_id}: checksum mismatch at offset {at} ({got:#010x} != {want:#010x})"),
                ));
            }
        }
        Ok(())
    }
}

/// Opens a write session for a new block, reserving `len_hint` bytes;
/// `after` is the file's previous block (0: none), which the worker may
/// store this one next to (an older client's head ends before it: 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteOpen {
    pub block_id: u64,
    pub len_hint: u64,
    pub after: u64,
}

impl WriteOpen {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.block_id.to_le_bytes());
        out.extend_from_slice(&self.len_hint.to_le_bytes());
        out.extend_from_slice(&self.after.to_le_bytes());
    }
    pub fn decode(b: &[u8]) -> Result<WriteOpen> {
        let mut r = HeadReader::new(b);
        let (block_id, len_hint) = (r.u64()?, r.u64()?);
        let after = if r.remaining() >= 8 { r.u64()? } else { 0 };
        Ok(WriteOpen { block_id, len_hint, after })
    }
}

/// Block data at `offset`: the payload holds whole `CHUNK`s except in the
/// last frame of a block, one crc32c per chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteData {
    pub block_id: u64,
    pub offset: u64,
    pub crcs: Vec<u32>,
}

impl WriteData {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.block_id.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&(self.crcs.len() as u32).to_le_bytes());
        for c in &self.crcs {
            out.extend_from_slice(&c.to_le_bytes());
        }
    }
    pub fn decode(b: &[u8], payload_len: u32) -> Result<WriteData> {
        let mut r = HeadReader::new(b);
        let block_id = r.u64()?;
        let offset = r.u64()?;
        let n = r.u32()? as usize;
        let expect = payload_len.div_ceil(CHUNK as u32) as usize;
        if n != expect || r.remaining() != n * 4 {
            return Err(Error::protocol(format!("write frame has {n} checksums, expected {expect}")));
        }
        if offset % CHUNK != 0 {
            return Err(Error::protocol(format!("write offset {offset} is not {CHUNK}-aligned")));
        }
        let mut crcs = Vec::with_capacity(n);
        for _ in 0..n {
            crcs.push(r.u32()?);
        }
        Ok(WriteData { block_id, offset, crcs })
    }
}

/// Seals a block at `len` bytes (also the head of WriteAbort, len ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteCommit {
    pub block_id: u64,
    pub len: u64,
}

impl WriteCommit {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.block_id.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
    }
    pub fn decode(b: &[u8]) -> Result<WriteCommit> {
        let mut r = HeadReader::new(b);
        Ok(WriteCommit { block_id: r.u64()?, len: r.u64()? })
    }
}

/// Where a block landed (response head of WriteOpen / WriteCommit).
pub fn encode_tier(tier: TierKind, out: &mut Vec<u8>) {
    out.push(match tier {
        TierKind::Mem => 0,
        TierKind::Ssd => 1,
        TierKind::Hdd => 2,
    });
}

pub fn decode_tier(b: &[u8]) -> Result<TierKind> {
    match HeadReader::new(b).u8()? {
        0 => Ok(TierKind::Mem),
        1 => Ok(TierKind::Ssd),
        2 => Ok(TierKind::Hdd),
        t => Err(Error::protocol(format!("unknown tier {t}"))),
    }
}

/// crc32c of each `CHUNK` of `data`.
pub fn chunk_crcs(data: &[u8]) -> Vec<u32> {
    data.chunks(CHUNK as usize).map(crate::crc::crc32c).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use curvine_common::ErrorKind;

    #[test]
    fn read_request_whose_end_overflows_is_refused() {
        let mut b = Vec::new();
        ReadReq { block_id: 7, offset: u64::MAX - 10, len: 100 }.encode(&mut b);
        assert_eq!(ReadReq::decode(&b).unwrap_err().kind(), ErrorKind::Protocol);
        b.clear();
        ReadReq { block_id: 7, offset: u64::MAX - 100, len: 100 }.encode(&mut b);
        assert_eq!(ReadReq::decode(&b).unwrap().offset, u64::MAX - 100);
    }
}
