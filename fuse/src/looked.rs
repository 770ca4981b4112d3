//! Readers found by lookups, kept briefly for the open that usually comes
//! right after (a path walk ends in a LOOKUP, then the OPEN): meta's stat
//! of a small file carries its blocks (`FileSystem::stat_for_read`), so
//! such an open asks meta nothing.
//!
//! How long an answer may serve an open (`cv fuse --open-after-lookup`,
//! 100 ms by default) is staleness the mount allows: never longer than the
//! attribute and entry timeouts (for which the kernel trusts the same
//! answer's size and existence anyway). With any of them 0 nothing is kept.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Entries kept before old ones are swept (lookups never followed by an
/// open: `ls -l`, `find`, stats).
const SWEEP_AT: usize = 4096;

pub struct Looked<T> {
    window: Duration,
    map: Mutex<HashMap<u64, (Instant, T)>>,
}

impl<T> Looked<T> {
    /// Keeps answers for `window`, at most the shorter of the two timeouts.
    pub fn new(window: Duration, attr_ttl: Duration, entry_ttl: Duration) -> Looked<T> {
        Looked { window: attr_ttl.min(entry_ttl).min(window), map: Mutex::default() }
    }

    pub fn enabled(&self) -> bool {
        !self.window.is_zero()
    }

    /// Keeps `v`, found by a lookup of `ino` just now.
    pub fn keep(&self, ino: u64, v: T) {
        let now = Instant::now();
        let mut m = self.map.lock();
        if m.len() >= SWEEP_AT {
            m.retain(|_, (t, _)| now.duration_since(*t) <= self.window);
            if m.len() >= SWEEP_AT {
                m.clear();
            }
        }
        m.insert(ino, (now, v));
    }

    /// What a lookup of `ino` found, if it was within the window.
    pub fn take(&self, ino: u64) -> Option<T> {
        let (t, v) = self.map.lock().remove(&ino)?;
        (t.elapsed() <= self.window).then_some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_serve_one_open_within_the_window_only() {
        let w = Duration::from_millis(100);
        let l = Looked::new(w, Duration::from_secs(1), Duration::from_secs(1));
        l.keep(7, "a");
        assert_eq!(l.take(7), Some("a"));
        assert_eq!(l.take(7), None, "one open per lookup");
        let short = Looked::new(w, Duration::from_millis(1), Duration::from_secs(1));
        short.keep(7, "a");
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(short.take(7), None, "older than the shorter timeout");
    }

    #[test]
    fn zero_timeouts_keep_nothing_and_the_table_stays_bounded() {
        let (w, s) = (Duration::from_millis(100), Duration::from_secs(1));
        assert!(!Looked::<u8>::new(w, Duration::ZERO, s).enabled());
        assert!(!Looked::<u8>::new(w, s, Duration::ZERO).enabled());
        assert!(!Looked::<u8>::new(Duration::ZERO, s, s).enabled());
        let l = Looked::new(w, s, s);
        for i in 0..(SWEEP_AT as u64 * 3) {
            l.keep(i, i);
        }
        assert!(l.map.lock().len() <= SWEEP_AT);
    }
}
