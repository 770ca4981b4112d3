//! Data-plane connections kept per worker and handed out exclusively.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use curvine_common::Result;
use curvine_fabric::{DataConn, Transport};
use parking_lot::Mutex;

const MAX_IDLE_PER_WORKER: usize = 32;

pub struct ConnPool {
    transport: Arc<dyn Transport>,
    idle: Mutex<HashMap<String, Vec<Box<dyn DataConn>>>>,
}

impl ConnPool {
    pub fn new(transport: Arc<dyn Transport>) -> Arc<ConnPool> {
        Arc::new(ConnPool { transport, idle: Mutex::new(HashMap::new()) })
    }

    pub async fn get(self: &Arc<Self>, addr: &str) -> Result<Pooled> {
        let idle = self.idle.lock().get_mut(addr).and_then(Vec::pop);
        let conn = match idle {
            Some(c) => c,
            None => self.transport.connect(addr).await?,
        };
        Ok(Pooled { pool: self.clone(), addr: addr.to_string(), conn: Some(conn) })
    }

    /// Forgets idle connections to `addr` (after it failed).
    pub fn evict(&self, addr: &str) {
        self.idle.lock().remove(addr);
    }
}

/// A connection on loan; goes back to the pool on drop unless broken.
pub struct Pooled {
    pool: Arc<ConnPool>,
    addr: String,
    conn: Option<Box<dyn DataConn>>,
}

impl Deref for Pooled {
    type Target = Box<dyn DataConn>;
    fn deref(&self) -> &Self::Target {
        self.conn.as_ref().expect("connection present until drop")
    }
}

impl DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.conn.as_mut().expect("connection present until drop")
    }
}

impl Pooled {
    /// Closes the connection instead of returning it to the pool (the worker
    /// then drops whatever the connection had open, e.g. a half-written
    /// block and its reservation).
    pub fn discard(mut self) {
        self.conn.take();
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            if !c.is_broken() {
                let mut idle = self.pool.idle.lock();
                let v = idle.entry(std::mem::take(&mut self.addr)).or_default();
                if v.len() < MAX_IDLE_PER_WORKER {
                    v.push(c);
                }
            }
        }
    }
}
