//! Keeps meta informed: register with a full block report, then heartbeat
//! with tier usage and block deltas; delete the blocks meta asks to delete.
//!
//! A dead or unreachable meta never stops the worker: every failure is
//! logged and retried with backoff until shutdown.

use std::sync::Arc;
use std::time::Duration;

use curvine_common::proto::meta_service_client::MetaServiceClient;
use curvine_common::proto::{HeartbeatRequest, RegisterWorkerRequest, ReportedBlock, TierInfo, WorkerInfo};
use curvine_common::{Error, ErrorKind, Result};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use crate::store::{StoredBlock, TieredStore};

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const RPC_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct Heartbeat {
    pub store: Arc<TieredStore>,
    pub meta: Vec<String>,
    pub addr: String,
    pub hostname: String,
    pub interval: Duration,
    /// Short-circuit socket and token ("" / 0: none).
    pub local_socket: String,
    pub local_token: u64,
    pub rack: String,
}

/// Resolves when shutdown has been requested (or the sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

impl Heartbeat {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let client = tokio::select! {
                _ = stopped(&mut shutdown) => return,
                c = self.register() => c,
            };
            let mut client = match client {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot register with meta");
                    tokio::select! {
                        _ = stopped(&mut shutdown) => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            backoff = MIN_BACKOFF;
            // Heartbeat until meta asks for a new registration or fails;
            // either way, go back to registering (possibly with another meta).
            loop {
                tokio::select! {
                    _ = stopped(&mut shutdown) => return,
                    _ = tokio::time::sleep(self.interval) => {}
                    // Eviction candidates should not wait a whole interval.
                    _ = self.store.asks_queued() => {}
                }
                match self.beat(&mut client).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::info!("meta asked for a new registration");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "heartbeat failed");
                        break;
                    }
                }
            }
        }
    }

    /// Registers with the first meta address that accepts, sending a full
    /// block report.
    async fn register(&self) -> Result<MetaServiceClient<Channel>> {
        let mut last = Error::new(ErrorKind::Config, "worker.meta: no meta address configured");
        for addr in &self.meta {
            match self.register_at(addr).await {
                Ok(c) => return Ok(c),
                Err(e) => last = e.context(format!("meta {addr}")),
            }
        }
        Err(last)
    }

    async fn register_at(&self, addr: &str) -> Result<MetaServiceClient<Channel>> {
        let url = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
        let endpoint = Endpoint::from_shared(url)
            .map_err(|e| Error::new(ErrorKind::Config, format!("worker.meta: bad address '{addr}': {e}")))?
            .connect_timeout(RPC_TIMEOUT)
            .timeout(RPC_TIMEOUT);
        // connect_timeout covers TCP only: bound the HTTP/2 handshake too
        // (a meta member that is paused accepts but never answers).
        let channel = match tokio::time::timeout(RPC_TIMEOUT, endpoint.connect()).await {
            Ok(r) => r.map_err(|e| Error::unavailable(format!("cannot connect: {e}")))?,
            Err(_) => return Err(Error::unavailable(format!("no answer within {RPC_TIMEOUT:?}"))),
        };
        let mut client = MetaServiceClient::new(channel);
        let blocks = self.store.full_report();
        let n = blocks.len();
        let req = RegisterWorkerRequest {
            worker: Some(WorkerInfo {
                id: self.store.worker_id(),
                addr: self.addr.clone(),
                hostname: self.hostname.clone(),
                tiers: self.tiers(),
                local_socket: self.local_socket.clone(),
                local_token: self.local_token,
                rack: self.rack.clone(),
                ..Default::default()
            }),
            blocks: blocks.into_iter().map(reported).collect(),
        };
        client.register_worker(req).await.map_err(Error::from)?;
        tracing::info!(meta = addr, worker = self.store.worker_id(), blocks = n, "registered with meta");
        Ok(client)
    }

    /// One heartbeat. `Ok(false)` when meta wants a new registration.
    async fn beat(&self, client: &mut MetaServiceClient<Channel>) -> Result<bool> {
        let deltas = self.store.take_deltas();
        let asks = self.store.take_asks();
        let asked = asks.clone();
        let req = HeartbeatRequest {
            worker_id: self.store.worker_id(),
            tiers: self.tiers(),
            added: deltas.added.iter().cloned().map(reported).collect(),
            removed: deltas.removed.clone(),
            cache: Some(self.store.metrics().cache_stats()),
            evict_candidates: asks,
        };
        let resp = match client.heartbeat(req).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                // Meta did not see them: send them again next time.
                self.store.restore_deltas(deltas);
                return Err(Error::from(s));
            }
        };
        if !asked.is_empty() {
            self.store.mark_evictable(&asked, &resp.evictable);
        }
        for t in resp.replicate {
            let store = self.store.clone();
            tokio::spawn(async move {
                if let Err(e) = crate::replicate::pull(store, t.block_id, t.len, t.source.clone()).await {
                    tracing::warn!(block = t.block_id, source = %t.source, error = %e, "cannot copy replica");
                }
            });
        }
        for id in resp.delete_blocks {
            match self.store.delete_block(id) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(block = id, error = %e, "cannot delete block meta asked to delete"),
            }
        }
        Ok(!resp.reregister)
    }

    fn tiers(&self) -> Vec<TierInfo> {
        self.store
            .usage()
            .into_iter()
            .map(|u| TierInfo {
                kind: u.kind.as_str().to_string(),
                dir: u.dir.display().to_string(),
                capacity: u.capacity,
                used: u.used,
                reserved: u.reserved,
                blocks: u.blocks,
            })
            .collect()
    }
}

fn reported(b: StoredBlock) -> ReportedBlock {
    ReportedBlock { id: b.id, len: b.len, tier: b.tier.as_str().to_string() }
}

/// This machine's name: `/etc/hostname`, else `gethostname(2)`, else `fallback`.
pub(crate) fn hostname(fallback: &str) -> String {
    if let Ok(s) = std::fs::read_to_string("/etc/hostname") {
        let s = s.trim();
        if !s.is_empty() {
            return s.to_string();
        }
    }
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length, and the result is
    // read only up to the first NUL within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        if let Ok(s) = std::str::from_utf8(&buf[..end]) {
            if !s.is_empty() {
                return s.to_string();
            }
        }
    }
    fallback.to_string()
}
