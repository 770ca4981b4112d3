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

    /// The pending window's task if it starts at `at`. A pending window
    /// that starts elsewhere (the reader seeked) is aborted and cleared,
    /// so a window at the new place can start.
    pub fn take_pending(&mut self, at: u64) -> Option<JoinHandle<Result<Window>>> {
        match self.pending.take() {
            Some((start, task)) if start == at => Some(task),
            Some((_, stale)) => {
                stale.abort();
                None
            }
            None => None,
        }
    }

    /// Where the next window of a reader now at `pos` starts: after the
    /// ready window when that holds `pos` (its bytes are here already),
    /// else at `pos` (a ready window elsewhere is stale).
    pub fn next_start(&self, pos: u64) -> u64 {
        match &self.ready {
            Some(w) if w.offset <= pos && pos < w.offset + w.data.len() as u64 => w.offset + w.data.len() as u64,
            _ => pos,
        }
    }
}

impl Drop for Ahead {
    fn drop(&mut self) {
        if let Some((_, t)) = self.pending.take() {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(offset: u64, len: usize) -> Window {
        Window { offset, data: vec![7; len] }
    }

    #[tokio::test]
    async fn a_stale_pending_window_is_aborted_so_a_new_one_can_start() {
        let mut a = Ahead::default();
        let task = tokio::spawn(std::future::pending::<Result<Window>>());
        a.pending = Some((100, task));
        assert!(a.take_pending(5_000).is_none(), "a window elsewhere is not waited for");
        assert!(a.pending.is_none(), "and is cleared");
        let task = tokio::spawn(async { Ok(window(200, 10)) });
        a.pending = Some((200, task));
        let got = a.take_pending(200).expect("the matching window is handed over");
        assert_eq!(got.await.expect("task ran").expect("window").offset, 200);
        assert!(a.pending.is_none());
    }

    #[test]
    fn the_next_window_follows_the_ready_one_only_when_it_holds_the_position() {
        let mut a = Ahead::default();
        assert_eq!(a.next_start(50), 50);
        a.ready = Some(window(100, 100));
        assert_eq!(a.next_start(150), 200, "inside the ready window: after it");
        assert_eq!(a.next_start(40), 40, "before it (seeked back): at the position");
        assert_eq!(a.next_start(500), 500, "after it: at the position");
        assert_eq!(a.next_start(200), 200);
    }
}
