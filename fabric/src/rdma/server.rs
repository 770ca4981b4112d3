//! Worker side of the RDMA transport. A `Hub` per data server opens the
//! device and registers its buffer pool at the first RDMA connection (a
//! worker that is never asked for RDMA never touches the device); each
//! control connection that asks gets its own queue pair, a `Link`.

use super::wire::{Endpoint, RemoteBuf};
use super::RdmaOptions;

/// Bytes of one read the worker has assembled for RDMA: the verified edges
/// and the body (whole chunks, read from the block file at `body_at`).
pub struct Outgoing<'a> {
    pub head_edge: &'a [u8],
    pub file: &'a std::fs::File,
    pub body_at: u64,
    pub body_len: usize,
    pub tail_edge: &'a [u8],
}

impl Outgoing<'_> {
    pub fn len(&self) -> usize {
        self.head_edge.len() + self.body_len + self.tail_edge.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(feature = "rdma")]
mod imp {
    use std::os::unix::fs::FileExt;
    use std::sync::{Arc, OnceLock};

    use curvine_common::{Error, ErrorKind, Result};

    use super::{Endpoint, Outgoing, RdmaOptions, RemoteBuf};
    use crate::rdma::pool::Pool;
    use crate::rdma::verbs::{Device, QueuePair};

    /// The opened device and its pool, or why they could not be opened.
    type Opened = std::result::Result<(Arc<Device>, Arc<Pool>), String>;

    pub struct Hub {
        opts: Option<RdmaOptions>,
        state: OnceLock<Opened>,
    }

    impl Hub {
        pub fn new(opts: Option<RdmaOptions>) -> Hub {
            Hub { opts, state: OnceLock::new() }
        }

        fn get(&self) -> Result<(Arc<Device>, Arc<Pool>)> {
            let state = self.state.get_or_init(|| {
                let o = self.opts.as_ref().ok_or("rdma is turned off on this worker (worker.rdma.enabled)")?;
                let dev = Device::open(o.device.as_deref(), o.port, o.gid_index).map_err(|e| e.message().to_string())?;
                let pool = Pool::new(&dev, o.slot_size, o.slots).map_err(|e| e.message().to_string())?;
                tracing::info!(device = %dev.name, port = o.port, "rdma ready");
                Ok((dev, pool))
            });
            state.clone().map_err(|m| Error::new(ErrorKind::Unavailable, format!("worker: {m}")))
        }

        /// A queue pair connected to the client's, and the endpoint the
        /// client connects its own to.
        pub fn accept(&self, client: &Endpoint) -> Result<(Link, Endpoint)> {
            let (dev, pool) = self.get()?;
            let mut qp = QueuePair::new(&dev)?;
            qp.connect(client)?;
            let ep = qp.endpoint();
            Ok((Link { qp, pool }, ep))
        }
    }

    pub struct Link {
        qp: QueuePair,
        pool: Arc<Pool>,
    }

    impl Link {
        pub fn usable(&self) -> bool {
            self.qp.usable()
        }

        /// Writes `out` into the client's buffer `to`; returns once the
        /// client's NIC has acknowledged every byte.
        pub async fn send(&mut self, out: &Outgoing<'_>, to: RemoteBuf) -> Result<()> {
            let n = out.len();
            check_len(n, to.len as usize, self.pool.slot_size())?;
            let mut slot = self.pool.take().await;
            let b = slot.bytes();
            let (h, t) = (out.head_edge.len(), out.tail_edge.len());
            b[..h].copy_from_slice(out.head_edge);
            out.file
                .read_exact_at(&mut b[h..h + out.body_len], out.body_at)
                .map_err(|e| Error::from(e).context("rdma read of a block file"))?;
            b[h + out.body_len..h + out.body_len + t].copy_from_slice(out.tail_edge);
            self.qp.write(slot.region(), slot.offset(), n, to.addr, to.rkey).await
        }

        /// Reads the client's buffer `from` into `into` (cleared first).
        pub async fn fetch(&mut self, from: RemoteBuf, into: &mut Vec<u8>) -> Result<()> {
            let n = from.len as usize;
            check_len(n, n, self.pool.slot_size())?;
            let mut slot = self.pool.take().await;
            self.qp.read(slot.region(), slot.offset(), n, from.addr, from.rkey).await?;
            into.clear();
            into.extend_from_slice(&slot.bytes()[..n]);
            Ok(())
        }
    }

    fn check_len(n: usize, room: usize, slot: usize) -> Result<()> {
        if n > room {
            return Err(Error::invalid(format!("rdma: {n} bytes do not fit the client's {room}-byte buffer")));
        }
        if n > slot {
            return Err(Error::invalid(format!("rdma: {n} bytes exceed the worker's {slot}-byte buffers")));
        }
        Ok(())
    }
}

#[cfg(not(feature = "rdma"))]
mod imp {
    use curvine_common::Result;

    use super::{Endpoint, Outgoing, RdmaOptions, RemoteBuf};

    /// Without the `rdma` feature every RDMA request gets an answer that
    /// says so, and the client falls back to TCP.
    pub struct Hub {
        enabled: bool,
    }

    impl Hub {
        pub fn new(opts: Option<RdmaOptions>) -> Hub {
            Hub { enabled: opts.is_some() }
        }
        pub fn accept(&self, _client: &Endpoint) -> Result<(Link, Endpoint)> {
            if !self.enabled {
                let m = "worker: rdma is turned off on this worker (worker.rdma.enabled)";
                return Err(curvine_common::Error::new(curvine_common::ErrorKind::Unavailable, m));
            }
            Err(crate::rdma::not_built().context("worker"))
        }
    }

    /// Never constructed without the feature.
    pub enum Link {}

    impl Link {
        pub fn usable(&self) -> bool {
            match *self {}
        }
        pub async fn send(&mut self, _out: &Outgoing<'_>, _to: RemoteBuf) -> Result<()> {
            match *self {}
        }
        pub async fn fetch(&mut self, _from: RemoteBuf, _into: &mut Vec<u8>) -> Result<()> {
            match *self {}
        }
    }
}

pub use imp::{Hub, Link};
