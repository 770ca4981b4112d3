//! Registered buffers, registered once: one region cut into equal slots,
//! each lent to one request at a time. Registration pins pages and costs
//! far more than a copy of a few MiB, so it never happens per request.

use std::sync::Arc;

use curvine_common::Result;
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::verbs::{Device, Region};

pub struct Pool {
    region: Region,
    slot_size: usize,
    free: Mutex<Vec<usize>>,
    permits: Arc<Semaphore>,
}

impl Pool {
    pub fn new(dev: &Arc<Device>, slot_size: usize, slots: usize) -> Result<Arc<Pool>> {
        let slots = slots.max(1);
        let region = Region::new(dev, slot_size * slots)?;
        Ok(Arc::new(Pool {
            region,
            slot_size,
            free: Mutex::new((0..slots).collect()),
            permits: Arc::new(Semaphore::new(slots)),
        }))
    }

    pub fn slot_size(&self) -> usize {
        self.slot_size
    }

    /// Waits for a free slot.
    pub async fn take(self: &Arc<Self>) -> Slot {
        // The semaphore is never closed, so acquire cannot fail.
        let permit = self.permits.clone().acquire_owned().await.expect("pool semaphore is never closed");
        let index = self.free.lock().pop().expect("a permit guarantees a free slot");
        Slot { pool: self.clone(), index, _permit: permit }
    }
}

/// One slot on loan; returns to the pool on drop.
pub struct Slot {
    pool: Arc<Pool>,
    index: usize,
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    pub fn region(&self) -> &Region {
        &self.pool.region
    }
    pub fn offset(&self) -> usize {
        self.index * self.pool.slot_size
    }
    pub fn len(&self) -> usize {
        self.pool.slot_size
    }
    pub fn is_empty(&self) -> bool {
        self.pool.slot_size == 0
    }
    pub fn addr(&self) -> u64 {
        self.pool.region.addr(self.offset())
    }
    pub fn rkey(&self) -> u32 {
        self.pool.region.rkey()
    }
    /// The slot's bytes. Callers use them only between RDMA operations on
    /// the slot (each operation is awaited to completion).
    pub fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: this slot's range belongs to this loan alone, and `&mut
        // self` keeps a second view of it from existing.
        unsafe { self.pool.region.slice(self.offset(), self.pool.slot_size) }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.pool.free.lock().push(self.index);
    }
}
