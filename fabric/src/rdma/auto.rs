//! Transport selection: RDMA to workers that offer it when this host has a
//! device, TCP otherwise. A worker that refuses RDMA (no device, or a build
//! without it) is not asked again for a while; its connections use TCP.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use curvine_common::Result;
use parking_lot::Mutex;

use crate::tcp::{TcpOptions, TcpTransport};
use crate::transport::{Capabilities, DataConn, Transport};

/// How long a worker that refused RDMA is left on TCP before it is asked
/// again (it may have been restarted with a device).
const RETRY_RDMA_AFTER: Duration = Duration::from_secs(300);

pub struct AutoTransport {
    tcp: TcpTransport,
    /// Opened at the first connection, so a short-lived client that never
    /// moves block bytes registers no memory; `None` inside when this host
    /// or build has no RDMA.
    rdma: OnceLock<Option<Arc<dyn Transport>>>,
    opts: super::RdmaOptions,
    refused: Mutex<HashMap<String, Instant>>,
}

impl AutoTransport {
    /// Uses `rdma` to workers that accept it (`None`: TCP only).
    pub fn new(tcp: TcpOptions, rdma: Option<Arc<dyn Transport>>) -> AutoTransport {
        let t = AutoTransport::detect(tcp, &super::RdmaOptions::default());
        let _ = t.rdma.set(rdma);
        t
    }

    /// Opens RDMA with `opts` when first needed; when it cannot (no device,
    /// no feature), says why once in the log and uses TCP alone.
    pub fn detect(tcp: TcpOptions, opts: &super::RdmaOptions) -> AutoTransport {
        AutoTransport { tcp: TcpTransport::new(tcp), rdma: OnceLock::new(), opts: opts.clone(), refused: Mutex::new(HashMap::new()) }
    }

    fn rdma(&self) -> Option<&Arc<dyn Transport>> {
        self.rdma
            .get_or_init(|| match super::client::RdmaTransport::open(&self.opts, *self.tcp.options()) {
                Ok(t) => {
                    tracing::info!("rdma transport available");
                    Some(Arc::new(t) as Arc<dyn Transport>)
                }
                Err(e) => {
                    tracing::debug!(reason = %e, "rdma transport unavailable; using tcp");
                    None
                }
            })
            .as_ref()
    }

    /// Whether `addr` gets RDMA at the next connect.
    pub fn uses_rdma(&self, addr: &str) -> bool {
        self.rdma().is_some() && self.refused.lock().get(addr).is_none_or(|t| t.elapsed() >= RETRY_RDMA_AFTER)
    }
}

#[async_trait::async_trait]
impl Transport for AutoTransport {
    fn name(&self) -> &'static str {
        if self.rdma().is_some() { "rdma+tcp" } else { "tcp" }
    }
    fn capabilities(&self) -> Capabilities {
        self.tcp.capabilities()
    }
    async fn connect(&self, addr: &str) -> Result<Box<dyn DataConn>> {
        if let (true, Some(rdma)) = (self.uses_rdma(addr), self.rdma()) {
            match rdma.connect(addr).await {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(worker = addr, reason = %e, "rdma refused; using tcp to this worker");
                    self.refused.lock().insert(addr.to_string(), Instant::now());
                }
            }
        }
        self.tcp.connect(addr).await
    }
}
