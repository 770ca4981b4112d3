//! Serving a byte range of a sealed block with its checksums: what every
//! transport's server side (and the same-host reader) needs to send or copy
//! a range so that each byte is verified exactly once, by someone.


use curvine_common::{Error, ErrorKind, Result};

use crate::frame::CHUNK;
use crate::msg::ReadResp;
use crate::service::ReadSource;

/// How a range `[off, end)` of a block goes out: the partial chunks at its
/// edges are read and verified by the worker; the whole chunks in between
/// (`lo..hi`) go straight from the file, with their crcs in `resp` for the
/// receiver to verify.
pub struct RangePlan {
    pub head_edge: Vec<u8>,
    pub lo: u64,
    pub hi: u64,
    pub tail_edge: Vec<u8>,
    pub resp: ReadResp,
}

impl RangePlan {
    pub fn new(src: &ReadSource, block_id: u64, off: u64, end: u64) -> Result<RangePlan> {
        let lo = off.div_ceil(CHUNK) * CHUNK;
        let hi = if end == src.len { end } else { end / CHUNK * CHUNK };
        if lo >= hi {
            let n = (end - off) as u32;
            let head_edge = verified_range(src, block_id, off, end)?;
            return Ok(RangePlan { head_edge, lo: end, hi: end, tail_edge: Vec::new(), resp: ReadResp { body_start: n, body_end: n, crcs: vec![] } });
        }
        let (first, last) = ((lo / CHUNK) as usize, hi.div_ceil(CHUNK) as usize);
        let crcs = src
            .crcs
            .get(first..last)
            .map(<[u32]>::to_vec)
            .ok_or_else(|| Error::new(ErrorKind::Corrupt, format!("block {block_id}: checksum file too short")))?;
        let resp = ReadResp { body_start: (lo - off) as u32, body_end: (hi - off) as u32, crcs };
        let head_edge = verified_range(src, block_id, off, lo)?;
        let tail_edge = verified_range(src, block_id, hi, end)?;
        Ok(RangePlan { head_edge, lo, hi, tail_edge, resp })
    }
}

/// Reads `[lo, hi)` of a block into memory, verifying every chunk it touches.
pub fn verified_range(src: &ReadSource, block_id: u64, lo: u64, hi: u64) -> Result<Vec<u8>> {
    if lo >= hi {
        return Ok(Vec::new());
    }
    let c_lo = lo / CHUNK * CHUNK;
    let c_hi = (hi.div_ceil(CHUNK) * CHUNK).min(src.len);
    let mut buf = vec![0u8; (c_hi - c_lo) as usize];
    src.read_exact_at(&mut buf, c_lo).map_err(|e| Error::from(e).context(format!("block {block_id}")))?;
    for (i, chunk) in buf.chunks(CHUNK as usize).enumerate() {
        let idx = (c_lo / CHUNK) as usize + i;
        let want = src.crcs.get(idx).copied();
        if want != Some(crate::crc::crc32c(chunk)) {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!("block {block_id}: checksum mismatch in chunk {idx} on the worker"),
            ));
        }
    }
    buf.drain(..(lo - c_lo) as usize);
    buf.truncate((hi - lo) as usize);
    Ok(buf)
}

