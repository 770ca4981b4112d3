//! Curvine metadata service: the namespace, file → block lists and worker
//! membership, replicated with openraft (a one-member group or three) and
//! stored in RocksDB.
//!
//! Layout under `conf.meta.dir`: `raft/` (the Raft log), `state/` (the state
//! machine database), `snapshots/` (the newest checkpoint).

pub mod contact;
pub mod jobs;
pub mod leader;
mod listen;
mod locks;
pub mod members;
pub mod metrics;
pub mod mounts;
pub mod namespace;
pub mod persist;
pub mod propose;
pub mod raft;
pub mod service;
pub mod store;
pub mod workers;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use curvine_common::config::Config;
use curvine_common::proto::meta_service_server::MetaServiceServer;
use curvine_common::proto::raft_service_server::RaftServiceServer;
use curvine_common::{Error, ErrorKind, Result};
use openraft::error::{InitializeError, RaftError};
use openraft::{BasicNode, SnapshotPolicy};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::raft::log_store::LogStore;
use crate::raft::network::{Network, RaftServer};
use crate::raft::types::Raft;
use crate::service::MetaServiceImpl;
use crate::store::state_machine::StateMachine;
use crate::store::StateStore;

/// How long `start` waits for this node to become leader (one-member
/// group) or for any leader (several members; without one it serves
/// anyway, answering "no leader" until a quorum is up).
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
const GROUP_LEADER_WAIT: Duration = Duration::from_secs(10);
/// How long `shutdown` waits for the last users of the state store.
const RELEASE_WAIT: Duration = Duration::from_secs(10);

/// A running meta node: Raft member plus gRPC server.
pub struct MetaNode {
    addr: SocketAddr,
    raft: Raft,
    store: Arc<StateStore>,
    log: LogStore,
    shutdown_tx: watch::Sender<bool>,
    server: JoinHandle<std::result::Result<(), tonic::transport::Error>>,
    /// Accepts connections; serves the frame ones (`listen.rs`).
    acceptor: JoinHandle<()>,
}

impl MetaNode {
    /// Opens state under `conf.meta.dir`, starts Raft (initializing a
    /// one-member group on first start), serves MetaService and RaftService
    /// on `listener`, and returns once this node is leader and serving.
    pub async fn start(
        conf: Config,
        listener: tokio::net::TcpListener,
        registry: &mut prometheus_client::registry::Registry,
    ) -> Result<MetaNode> {
        let dir = conf.meta.dir.clone();
        let id = conf.meta.id;
        let log = LogStore::open(&dir.join("raft"), conf.meta.log_sync)?;
        let store = StateStore::open(&dir.join("state"))?;
        let sm = StateMachine { store: store.clone(), snapshot_dir: dir.join("snapshots") };

        let raft_conf = openraft::Config {
            cluster_name: "curvine".into(),
            heartbeat_interval: 250,
            election_timeout_min: 1000,
            election_timeout_max: 2000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(conf.meta.snapshot_logs.max(1)),
            // Entries kept behind a snapshot for lagging members (openraft's
            // default, 1,000, or fewer with a small snapshot interval):
            // a member further behind is sent the snapshot.
            max_in_snapshot_log_to_keep: conf.meta.snapshot_logs.clamp(1, 1000),
            // Entries per append to a follower: with entries of up to
            // `propose::MAX_BATCH_BYTES`, an append stays well under
            // `RAFT_MESSAGE_MAX` (openraft's default is 300).
            max_payload_entries: 64,
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::new(ErrorKind::Config, format!("raft config: {e}")))?;
        let contact = Arc::new(contact::Contact::default());
        let raft = Raft::new(id, Arc::new(raft_conf), Network { contact: contact.clone() }, log.clone(), sm)
            .await
            .map_err(|e| Error::internal(format!("raft: {e}")))?;

        let addr = listener.local_addr()?;
        let advertise = format!("{}:{}", conf.meta.host, addr.port());
        let peers = conf.meta.peer_map()?;
        let initialized = raft.is_initialized().await.map_err(|e| Error::internal(format!("raft: {e}")))?;
        if !initialized && !conf.meta.join {
            let members: BTreeMap<u64, BasicNode> = if peers.is_empty() {
                tracing::info!(id, addr = %advertise, "initializing a one-member meta group");
                BTreeMap::from([(id, BasicNode { addr: advertise.clone() })])
            } else {
                // Every member does this with the same list: safe, and the
                // group forms whichever members come up first.
                tracing::info!(id, peers = ?peers, "initializing a meta group");
                peers.iter().map(|(i, a)| (*i, BasicNode { addr: a.clone() })).collect()
            };
            match raft.initialize(members).await {
                Ok(()) => {}
                // Another member's entries got here first: the group exists.
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(Error::internal(format!("raft initialize: {e}"))),
            }
        }

        let metrics = metrics::Metrics::new(registry, Arc::downgrade(&store));
        let conf = Arc::new(conf);
        let svc = MetaServiceImpl {
            raft: raft.clone(),
            id,
            proposer: propose::Proposer::start(raft.clone(), id, conf.meta.write_timeout, contact.clone()),
            barrier: Default::default(),
            contact: contact.clone(),
            mounts: Default::default(),
            jobs: Default::default(),
            persister: Default::default(),
            store: store.clone(),
            workers: Arc::new(workers::Workers::new(conf.meta.worker_timeout)),
            locks: Default::default(),
            conf: conf.clone(),
            metrics,
        };
        let svc = Arc::new(svc);
        svc.jobs.set_service(&svc);
        let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
        let (incoming, acceptor) = listen::split(listener, MetaServiceServer::from_arc(svc.clone()), shutdown_tx.subscribe());
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(MetaServiceServer::from_arc(svc.clone()))
                .add_service(
                    RaftServiceServer::new(RaftServer { raft: raft.clone(), contact })
                        .max_decoding_message_size(raft::network::RAFT_MESSAGE_MAX)
                        .max_encoding_message_size(raft::network::RAFT_MESSAGE_MAX),
                )
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = shutdown_rx.changed().await;
                }),
        );

        let node = MetaNode { addr, raft, store, log, shutdown_tx, server, acceptor };
        let alone = node.raft.metrics().borrow().membership_config.membership().voter_ids().collect::<Vec<_>>() == vec![id];
        if alone {
            if let Err(e) = node.raft.wait(Some(LEADER_TIMEOUT)).current_leader(id, "meta start").await {
                let _ = node.shutdown().await;
                return Err(Error::unavailable(format!("meta node {id} did not become leader: {e}")));
            }
        } else if !conf.meta.join {
            let waited = node.raft.wait(Some(GROUP_LEADER_WAIT)).metrics(|m| m.current_leader.is_some(), "a leader").await;
            if waited.is_err() {
                tracing::warn!(id, "no meta leader yet (too few members up for a quorum?); serving, answering \"no leader\" until one is elected");
            }
        }
        if let Err(e) = svc.start_persister() {
            tracing::warn!(error = %e, "cannot start the UFS uploader");
        }
        tokio::spawn(on_leadership(Arc::downgrade(&svc), node.raft.clone(), id));
        tracing::info!(id, addr = %addr, dir = %dir.display(), "meta node serving");
        Ok(node)
    }

    /// The address the gRPC server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the gRPC server and Raft, and flushes the databases.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.shutdown_tx.send(true);
        if let Err(e) = self.acceptor.await {
            tracing::warn!(error = %e, "meta acceptor task");
        }
        match self.server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "meta grpc server"),
            Err(e) => tracing::warn!(error = %e, "meta grpc server task"),
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        self.store.flush()?;
        self.log.flush()?;
        // Work still holding the state store (an upload scan between two
        // awaits, a snapshot being built) ends within moments; a restart in
        // this process must find the database closed, not locked.
        let deadline = std::time::Instant::now() + RELEASE_WAIT;
        while Arc::strong_count(&self.store) > 1 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if Arc::strong_count(&self.store) > 1 {
            tracing::warn!("meta state store still in use {RELEASE_WAIT:?} after shutdown");
        }
        Ok(())
    }
}

/// Work only the leader does, started each time this node becomes leader:
/// it forgets what it knew of workers (they register again with it, with a
/// full block report) and resumes interrupted load jobs; when it stops
/// leading, its load jobs stop and are left to the new leader.
async fn on_leadership(svc: std::sync::Weak<MetaServiceImpl>, raft: crate::raft::types::Raft, id: u64) {
    // Server metrics change only with the role, term, leader or membership:
    // the full metrics change with every entry (and every millisecond of
    // `millis_since_quorum_ack`), and waking on each cost the create storm
    // a task hand-off per entry.
    let mut metrics = raft.server_metrics();
    let mut was_leader = false;
    loop {
        let leader = {
            let m = metrics.borrow_and_update();
            m.state == openraft::ServerState::Leader && m.current_leader == Some(id)
        };
        if leader && !was_leader {
            let Some(svc) = svc.upgrade() else { return };
            tracing::info!(id, "this meta node leads the group now");
            svc.workers.reset();
            svc.start_lock_sweeper();
            if let Err(e) = svc.resume_jobs() {
                tracing::warn!(error = %e, "cannot resume load jobs");
            }
        }
        if was_leader && !leader {
            let Some(svc) = svc.upgrade() else { return };
            svc.hand_over_jobs();
        }
        was_leader = leader;
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
