//! The Curvine worker: a tiered block store (MEM → SSD → HDD directories),
//! served on the fabric data plane and reported to meta by heartbeats.
//!
//! `start` wires it all up and is called by both `cv worker` and tests.

mod heartbeat;
pub mod loader;
pub mod metrics;
mod replicate;
pub mod store;
pub mod tiering;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use curvine_common::config::Config;
use curvine_common::{Error, ErrorKind, Result};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use store::{StoredBlock, Tier, TierUsage, TieredStore};

/// A running worker. Dropping it stops serving; `shutdown` also waits for
/// the server and heartbeat tasks to finish.
pub struct Worker {
    id: u64,
    addr: SocketAddr,
    advertised: String,
    store: Arc<TieredStore>,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<Result<()>>,
    heartbeat: JoinHandle<()>,
}

/// Opens the store, serves the data plane on `listener` and starts
/// reporting to meta. Returns once the worker is serving; meta need not be
/// up (the worker keeps trying to register).
pub async fn start(
    conf: Config,
    listener: tokio::net::TcpListener,
    registry: &mut prometheus_client::registry::Registry,
) -> Result<Worker> {
    let wc = &conf.worker;
    for (i, t) in wc.tiers.iter().enumerate() {
        std::fs::create_dir_all(&t.dir).map_err(|e| {
            Error::new(ErrorKind::Config, format!("worker.tiers[{i}].dir: cannot create {}: {e}", t.dir.display()))
        })?;
    }
    std::fs::create_dir_all(&wc.dir)
        .map_err(|e| Error::new(ErrorKind::Config, format!("worker.dir: cannot create {}: {e}", wc.dir.display())))?;
    let id = load_or_create_id(&wc.dir)?;
    let half_life = wc.lfu_half_life.as_millis() as u64;
    let policy = tiering::policy::by_name(&wc.eviction, half_life)?;
    let store = Arc::new(TieredStore::open_with(id, &wc.tiers, wc.sync_on_commit, policy, half_life)?);
    store.metrics().register(registry);

    let addr = listener.local_addr()?;
    let advertised = format!("{}:{}", wc.host, addr.port());
    let (tx, rx) = watch::channel(false);

    let mut server_rx = rx.clone();
    let server_stop = async move {
        let _ = server_rx.wait_for(|v| *v).await;
    };
    let svc = Arc::new(loader::CachingService { store: store.clone(), loader: loader::Loader::new(store.clone(), wc.meta.clone())? });
    let serve_opts = curvine_fabric::tcp::ServeOptions {
        rdma: curvine_fabric::rdma::RdmaOptions::from_conf(&wc.rdma),
        ..Default::default()
    };
    let server = tokio::spawn(curvine_fabric::tcp::serve_with(listener, svc.clone(), server_stop, serve_opts));
    let (local_socket, local_token) = if wc.short_circuit { start_local(&wc.dir, id, svc, rx.clone()) } else { (String::new(), 0) };

    let hb = heartbeat::Heartbeat {
        store: store.clone(),
        meta: wc.meta.clone(),
        addr: advertised.clone(),
        hostname: heartbeat::hostname(&wc.host),
        interval: wc.heartbeat_interval,
        local_socket,
        local_token,
        rack: wc.rack.clone(),
    };
    let tiering = tiering::Tiering {
        store: store.clone(),
        thresholds: tiering::policy::Thresholds {
            high: wc.high_watermark,
            low: wc.low_watermark,
            promote_after: wc.promote_after as f64,
        },
        bandwidth: wc.move_bandwidth.0,
        interval: wc.tiering_interval,
    };
    tokio::spawn(tiering.run(rx.clone()));
    let heartbeat = tokio::spawn(hb.run(rx));
    tracing::info!(worker = id, %addr, advertised = %advertised, tiers = wc.tiers.len(), "worker started");
    Ok(Worker { id, addr, advertised, store, shutdown: tx, server, heartbeat })
}

impl Worker {
    /// The address the data server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The data address reported to meta (`worker.host:<port>`).
    pub fn advertised_addr(&self) -> &str {
        &self.advertised
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn store(&self) -> Arc<TieredStore> {
        self.store.clone()
    }

    /// Stops accepting connections and heartbeats, and waits for both.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        match self.server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "data server stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "data server task failed"),
        }
        if let Err(e) = self.heartbeat.await {
            tracing::warn!(error = %e, "heartbeat task failed");
        }
        tracing::info!(worker = self.id, "worker stopped");
    }
}

/// Serves same-host short-circuit reads on `dir/data.sock`; returns the
/// socket's absolute path and the token it greets with, or nothing (with a
/// warning: clients then read over TCP) when it cannot listen there.
fn start_local(
    dir: &Path,
    worker: u64,
    svc: Arc<loader::CachingService>,
    mut stop: watch::Receiver<bool>,
) -> (String, u64) {
    let path = match std::fs::canonicalize(dir) {
        Ok(d) => d.join("data.sock"),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "short-circuit disabled");
            return (String::new(), 0);
        }
    };
    // A socket left by a previous run of this worker (its dir is its own).
    let _ = std::fs::remove_file(&path);
    let listener = match tokio::net::UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "short-circuit disabled: cannot listen");
            return (String::new(), 0);
        }
    };
    let token = rand::random::<u64>().max(1);
    let stop = async move {
        let _ = stop.wait_for(|v| *v).await;
    };
    let shown = path.display().to_string();
    let remove = path.clone();
    tokio::spawn(async move {
        if let Err(e) = curvine_fabric::local::serve_local(listener, svc, worker, token, stop).await {
            tracing::warn!(error = %e, "short-circuit server stopped");
        }
        let _ = std::fs::remove_file(remove);
    });
    tracing::info!(socket = %shown, "short-circuit reads enabled");
    (shown, token)
}

/// The worker's persistent id in `dir/worker.id`, created (random, non-zero,
/// at most 53 bits so every JSON reader keeps it exact) on first start.
fn load_or_create_id(dir: &Path) -> Result<u64> {
    let path = dir.join("worker.id");
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            return s.trim().parse::<u64>().ok().filter(|&id| id != 0).ok_or_else(|| {
                Error::new(ErrorKind::Corrupt, format!("{}: '{}' is not a worker id", path.display(), s.trim()))
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::new(ErrorKind::Io, format!("{}: {e}", path.display()))),
    }
    let id = (rand::random::<u64>() >> 11).max(1);
    let tmp = dir.join("worker.id.tmp");
    std::fs::write(&tmp, format!("{id}\n"))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| Error::new(ErrorKind::Io, format!("{}: cannot write worker id: {e}", path.display())))?;
    Ok(id)
}

#[cfg(test)]
mod tests;
