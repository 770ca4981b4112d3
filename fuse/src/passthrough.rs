//! FUSE passthrough (`cv fuse --passthrough`, Linux 6.9 and later): a file
//! opened read-only whose bytes are one MEM block of a worker on this host
//! is handed to the kernel with the block file as its backing file. Reads
//! and mmap then go from the worker's tmpfs pages to the reader without a
//! request to this daemon.
//!
//! The kernel's rules shape this. While an inode has a backing file, every
//! open of it must be a passthrough open with that same backing (another
//! kind of open fails with EIO), and an inode open in the normal (cached)
//! mode cannot take a backing. So a file is handed over only when nothing
//! else has it open through this mount; later read opens share its backing
//! (and read the version first opened, until all of them are closed), and
//! opens for writing meanwhile get ETXTBSY. Every chunk of the block passed
//! its crc before the handover (MEM chunks are checked once, as for mapped
//! reads).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fuser::BackingId;
use parking_lot::Mutex;

#[derive(Default)]
pub struct Passthrough {
    /// Asked for with `--passthrough` and agreed by the kernel at init.
    enabled: AtomicBool,
    /// Per inode: its backing file's id and the handles using it.
    backings: Mutex<HashMap<u64, (Arc<BackingId>, usize)>>,
}

impl Passthrough {
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// Whether `ino` is open in passthrough mode now.
    pub fn has_backing(&self, ino: u64) -> bool {
        self.backings.lock().contains_key(&ino)
    }

    /// One more handle on `ino`'s existing backing, if it has one.
    pub fn share(&self, ino: u64) -> Option<Arc<BackingId>> {
        let mut g = self.backings.lock();
        let (id, n) = g.get_mut(&ino)?;
        *n += 1;
        Some(id.clone())
    }

    /// Registers the first handle of `ino` with `make()`'s backing, unless
    /// `busy()` says the inode is open some other way (then `Ok(None)`).
    /// A backing registered meanwhile by another open is shared instead.
    /// Both closures run under this table's lock, so a normal open that
    /// checks `has_backing` cannot slip in between.
    pub fn register(
        &self,
        ino: u64,
        busy: impl FnOnce() -> bool,
        make: impl FnOnce() -> std::io::Result<BackingId>,
    ) -> std::io::Result<Option<Arc<BackingId>>> {
        let mut g = self.backings.lock();
        if let Some((id, n)) = g.get_mut(&ino) {
            *n += 1;
            return Ok(Some(id.clone()));
        }
        if busy() {
            return Ok(None);
        }
        let id = Arc::new(make()?);
        g.insert(ino, (id.clone(), 1));
        Ok(Some(id))
    }

    /// A passthrough handle of `ino` closed; the backing is released with
    /// the last one.
    pub fn release(&self, ino: u64) {
        let mut g = self.backings.lock();
        if let Some((_, n)) = g.get_mut(&ino) {
            *n -= 1;
            if *n == 0 {
                g.remove(&ino);
            }
        }
    }
}
