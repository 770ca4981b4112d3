//! `RaftStateMachine` on the RocksDB state store: applies each entry in one
//! `WriteBatch` with `last_applied`, builds and installs checkpoint snapshots.

use std::path::PathBuf;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, StorageIOError, StoredMembership};

use crate::namespace::{self, MetaCommand, MetaResult, Outcome};
use crate::raft::types::{Entry, NodeId, StorageError, TypeConfig};
use crate::store::snapshot::{self, Meta};
use crate::store::{decode, encode, get, StateStore, Txn, CF_SYS, KEY_LAST_APPLIED, KEY_MEMBERSHIP};

type Membership = StoredMembership<NodeId, openraft::BasicNode>;

fn sm_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_state_machine(AnyError::error(e.to_string())).into()
}

fn snap_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_snapshot(None, AnyError::error(e.to_string())).into()
}

/// The Raft state machine: the store plus where snapshots live.
#[derive(Clone)]
pub struct StateMachine {
    pub store: Arc<StateStore>,
    pub snapshot_dir: PathBuf,
}

impl StateMachine {
    fn read_applied(&self) -> Result<(Option<LogId<NodeId>>, Membership), StorageError> {
        let db = self.store.db();
        let applied: Option<LogId<NodeId>> = get(&db, CF_SYS, KEY_LAST_APPLIED)
            .map_err(sm_err)?
            .map(|v| decode::<Option<LogId<NodeId>>>(&v))
            .transpose()
            .map_err(sm_err)?
            .flatten();
        let membership =
            get(&db, CF_SYS, KEY_MEMBERSHIP).map_err(sm_err)?.map(|v| decode(&v)).transpose().map_err(sm_err)?;
        Ok((applied, membership.unwrap_or_default()))
    }

    /// The snapshot in `dir`, its data the archive file (packed on first use).
    async fn snapshot_from(dir: &std::path::Path, meta: Meta) -> Result<Snapshot<TypeConfig>, StorageError> {
        let d = dir.to_path_buf();
        let pack = tokio::task::spawn_blocking(move || snapshot::archive(&d)).await.map_err(snap_err)?.map_err(snap_err)?;
        let f = tokio::fs::File::open(&pack).await.map_err(snap_err)?;
        Ok(Snapshot { meta, snapshot: Box::new(f) })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        std::fs::create_dir_all(&self.snapshot_dir).map_err(snap_err)?;
        // Under the apply lock the checkpoint and last_applied agree.
        let (meta, dir) = {
            let _g = self.store.apply_lock.lock();
            let (last_log_id, last_membership) = self.read_applied()?;
            let idx = last_log_id.map(|l| l.index).unwrap_or(0);
            let term = last_log_id.map(|l| l.leader_id.term).unwrap_or(0);
            let id = format!("{term}-{idx}-{}", curvine_common::now_ms());
            let dir = self.snapshot_dir.join(snapshot::dir_name(&id));
            let db = self.store.db();
            let cp = rocksdb::checkpoint::Checkpoint::new(&db).map_err(snap_err)?;
            cp.create_checkpoint(&dir).map_err(snap_err)?;
            (Meta { last_log_id, last_membership, snapshot_id: id }, dir)
        };
        snapshot::write_meta(&dir, &meta).map_err(snap_err)?;
        snapshot::remove_others(&self.snapshot_dir, &dir);
        tracing::info!(snapshot = %meta.snapshot_id, "built snapshot");
        // openraft 0.9 keeps only the meta of a snapshot it had built (its
        // sm worker drops the data), so the archive is not packed here but
        // when a member needs it (`get_current_snapshot`): a group that
        // never sends one never spends the disk on it. The data handed back
        // is the snapshot's meta file, opened read-only.
        let f = tokio::fs::File::open(dir.join(snapshot::META_FILE)).await.map_err(snap_err)?;
        Ok(Snapshot { meta, snapshot: Box::new(f) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, Membership), StorageError> {
        self.read_applied()
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<MetaResult>, StorageError>
    where I: IntoIterator<Item = Entry> + Send, I::IntoIter: Send {
        let _g = self.store.apply_lock.lock();
        let db = self.store.db();
        // The raft log is the durable record: after a crash openraft re-applies
        // from last_applied, so the state machine is written without fsync.
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(false);
        let mut out = Vec::new();
        for entry in entries {
            let mut txn = Txn::new(db.clone());
            let res = match &entry.payload {
                EntryPayload::Blank => Ok(Outcome::None),
                // A failed command leaves no writes in `txn` (see `apply`).
                EntryPayload::Normal(cmd) => {
                    let (res, expired) = namespace::apply_entry(&mut txn, cmd);
                    // An Io error is this member's store failing a read, not
                    // the command failing: answering it as the command's
                    // result (and moving on) would leave this member without
                    // a write the others applied. Stop instead; the entry is
                    // applied again after a restart.
                    let inner: Vec<&curvine_common::Error> = match &res {
                        Ok(Outcome::Batch(rs)) => rs.iter().filter_map(|r| r.0.as_ref().err()).collect(),
                        _ => vec![],
                    };
                    for e in [res.as_ref().err(), expired.as_ref().err()].into_iter().flatten().chain(inner) {
                        if e.kind() == curvine_common::ErrorKind::Io {
                            tracing::error!(error = %e, "state machine apply failed: the meta store cannot be read");
                            return Err(StorageIOError::apply(entry.log_id, AnyError::error(e.to_string())).into());
                        }
                    }
                    if let Err(e) = &res {
                        if e.kind() == curvine_common::ErrorKind::Corrupt {
                            tracing::error!(error = %e, "state machine apply failed");
                        }
                    }
                    res
                }
                EntryPayload::Membership(m) => {
                    let sm = Membership::new(Some(entry.log_id), m.clone());
                    txn.put(CF_SYS, KEY_MEMBERSHIP.to_vec(), encode(&sm).map_err(sm_err)?);
                    Ok(Outcome::None)
                }
            };
            txn.put(CF_SYS, KEY_LAST_APPLIED.to_vec(), encode(&Some(entry.log_id)).map_err(sm_err)?);
            let batch = txn.into_batch().map_err(sm_err)?;
            db.write_opt(batch, &wo).map_err(|e| StorageIOError::apply(entry.log_id, AnyError::new(&e)))?;
            if let EntryPayload::Normal(cmd) = &entry.payload {
                if cmd.any(&|c| matches!(c, MetaCommand::Mount { .. } | MetaCommand::Umount { .. })) {
                    self.store.mounts_gen.fetch_add(1, std::sync::atomic::Ordering::Release);
                }
            }
            out.push(MetaResult(res));
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        // Received chunks go to a file; an interrupted transfer leaves an
        // `incoming-*` file that the next snapshot clears away.
        std::fs::create_dir_all(&self.snapshot_dir).map_err(snap_err)?;
        let p = self.snapshot_dir.join(format!("incoming-{}", curvine_common::now_ms()));
        let f = tokio::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&p).await.map_err(snap_err)?;
        // Unlinked at once: the open handle keeps the bytes until install.
        let _ = std::fs::remove_file(&p);
        Ok(Box::new(f))
    }

    async fn install_snapshot(&mut self, meta: &Meta, snapshot: Box<tokio::fs::File>) -> Result<(), StorageError> {
        let name = snapshot::dir_name(&meta.snapshot_id);
        let dir = self.snapshot_dir.join(&name);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(dir.with_extension("pack"));
        let mut f = snapshot.into_std().await;
        let d = dir.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::Seek;
            f.seek(std::io::SeekFrom::Start(0))?;
            snapshot::unpack(f, &d).map_err(|e| std::io::Error::other(e.to_string()))
        })
        .await
        .map_err(snap_err)?
        .map_err(snap_err)?;
        snapshot::sync_dir(&dir).map_err(snap_err)?;
        snapshot::write_meta(&dir, meta).map_err(snap_err)?;
        snapshot::remove_others(&self.snapshot_dir, &dir);
        let sm_name = format!("sm-{name}-{}", curvine_common::now_ms());
        let sm_dir = self.store.dir().join(&sm_name);
        snapshot::copy_dir(&dir, &sm_dir).map_err(snap_err)?;
        snapshot::sync_dir(&sm_dir).map_err(snap_err)?;
        let _g = self.store.apply_lock.lock();
        self.store.swap(&sm_name).map_err(snap_err)?;
        self.store.mounts_gen.fetch_add(1, std::sync::atomic::Ordering::Release);
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        match snapshot::newest(&self.snapshot_dir).map_err(snap_err)? {
            Some((dir, meta)) => Ok(Some(Self::snapshot_from(&dir, meta).await?)),
            None => Ok(None),
        }
    }
}
