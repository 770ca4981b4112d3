//! Read-ahead for sequential readers whose blocks come over the network:
//! while the caller consumes one window, the next is fetched in the
//! background, so a reader taking small pieces (a Python `read(8192)` loop,
//! a tar extractor) waits on memory instead of on a round trip per piece.
//! Same-host blocks are read from their files directly and skip this.

use curvine_common::Result;
use tokio::task::JoinHandle;

/// One window: bytes `[offset, offset + data.len())` of the file.
pub(crate) struct Window {
    pub offset: u64,
    pub data: Vec<u8>,
}

#[derive(Default)]
pub(crate) struct Ahead {
    pub ready: Option<Window>,
    /// A window being fetched, by its offset.
    pub pending: Option<(u64, JoinHandle<Result<Window>>)>,
}

impl Ahead {
    /// Copies what the ready window holds of `[offset, ..)` into `buf`.
    pub fn take_from_ready(&mut self, offset: u64, buf: &mut [u8]) -> usize {
        let Some(w) = &self.ready else { return 0 };
        if offset < w.offset || offset >= w.offset + w.data.len() as u64 {
            return 0;
        }
        let at = (offset - w.offset) as usize;
        let n = buf.len().min(w.data.len() - at);
        buf[..n].copy_from_slice(&w.data[at..at + n]);
        n
    }
}

impl Drop for Ahead {
    fn drop(&mut self) {
        if let Some((_, t)) = self.pending.take() {
            t.abort();
        }
    }
}
