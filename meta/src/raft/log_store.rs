//! The Raft log on RocksDB: cf `log` (index BE -> bincode entry) and cf
//! `raft_state` (vote, committed, last purged log id).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, LogId, LogState, RaftLogId, RaftLogReader, StorageIOError, Vote};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};

use crate::raft::types::{Entry, NodeId, StorageError, TypeConfig};

const CF_LOG: &str = "log";
const CF_STATE: &str = "raft_state";
const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"purged";

fn read_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::read_logs(AnyError::error(e.to_string())).into()
}

fn write_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_logs(AnyError::error(e.to_string())).into()
}

/// The Raft log store. Clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    sync: bool,
    /// Group commit: appends are written to the WAL at once and their
    /// completions queued here; one thread fsyncs the WAL for everything
    /// queued so far and then reports all of it flushed. Concurrent
    /// proposals thus share one fsync, while none is reported durable
    /// before it is.
    flusher: Option<std::sync::mpsc::Sender<LogFlushed<TypeConfig>>>,
}

impl LogStore {
    /// Opens the log under `dir`; with `sync`, no append is reported
    /// flushed before an fsync of the WAL that holds it.
    pub fn open(dir: &Path, sync: bool) -> curvine_common::Result<LogStore> {
        let db = Arc::new(crate::store::open_db(dir, &[CF_LOG, CF_STATE])?);
        let flusher = if sync { Some(spawn_flusher(Arc::downgrade(&db))?) } else { None };
        Ok(LogStore { db, sync, flusher })
    }

    pub fn flush(&self) -> curvine_common::Result<()> {
        self.db.flush().map_err(|e| crate::store::db_err(self.db.path(), e))?;
        self.db.flush_wal(true).map_err(|e| crate::store::db_err(self.db.path(), e))
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, StorageError> {
        self.db.cf_handle(name).ok_or_else(|| read_err(format!("column family {name} missing")))
    }

    fn get_state<T: for<'a> Deserialize<'a>>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        let v = self.db.get_cf(self.cf(CF_STATE)?, key).map_err(read_err)?;
        v.map(|v| bincode::deserialize(&v).map_err(read_err)).transpose()
    }

    fn put_state<T: Serialize>(&self, key: &[u8], v: &T) -> Result<(), StorageError> {
        let bytes = bincode::serialize(v).map_err(write_err)?;
        let mut wo = WriteOptions::default();
        wo.set_sync(self.sync);
        self.db.put_cf_opt(self.cf(CF_STATE)?, key, bytes, &wo).map_err(write_err)
    }

    fn last_entry(&self) -> Result<Option<Entry>, StorageError> {
        let mut it = self.db.iterator_cf(self.cf(CF_LOG)?, IteratorMode::End);
        match it.next() {
            Some(r) => {
                let (_, v) = r.map_err(read_err)?;
                Ok(Some(bincode::deserialize(&v).map_err(read_err)?))
            }
            None => Ok(None),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => *x + 1,
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        let key = start.to_be_bytes();
        for r in self.db.iterator_cf(self.cf(CF_LOG)?, IteratorMode::From(&key, Direction::Forward)) {
            let (k, v) = r.map_err(read_err)?;
            let idx = crate::store::decode_u64(&k).map_err(read_err)?;
            if !range.contains(&idx) {
                break;
            }
            out.push(bincode::deserialize(&v).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged = self.get_state::<Option<LogId<NodeId>>>(KEY_PURGED)?.flatten();
        let last = self.last_entry()?.map(|e| *e.get_log_id()).or(last_purged);
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let bytes = bincode::serialize(vote).map_err(write_err)?;
        let mut wo = WriteOptions::default();
        // A vote must never be forgotten, whatever log_sync says.
        wo.set_sync(true);
        self.db
            .put_cf_opt(self.cf(CF_STATE)?, KEY_VOTE, bytes, &wo)
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.get_state(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError> {
        // A hint for faster restarts, not needed for safety (the committed
        // index is recovered from a quorum): written, never fsynced, so it
        // does not cost every commit a second fsync in the Raft core.
        let bytes = bincode::serialize(&committed).map_err(write_err)?;
        self.db.put_cf(self.cf(CF_STATE)?, KEY_COMMITTED, bytes).map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError> {
        Ok(self.get_state::<Option<LogId<NodeId>>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where I: IntoIterator<Item = Entry> + Send, I::IntoIter: Send {
        let cf = self.cf(CF_LOG)?;
        let mut batch = WriteBatch::default();
        for e in entries {
            let v = bincode::serialize(&e).map_err(write_err)?;
            batch.put_cf(cf, e.get_log_id().index.to_be_bytes(), v);
        }
        // Written to the WAL now (readers see it), made durable by the
        // flusher's next fsync.
        let res = self.db.write(batch).map_err(|e| std::io::Error::other(e.to_string()));
        let ret = res.as_ref().map(|_| ()).map_err(write_err);
        match (&self.flusher, res) {
            (Some(f), Ok(())) => {
                if let Err(std::sync::mpsc::SendError(cb)) = f.send(callback) {
                    cb.log_io_completed(Err(std::io::Error::other("raft log flusher stopped")));
                }
            }
            (_, res) => callback.log_io_completed(res),
        }
        ret
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        let cf = self.cf(CF_LOG)?;
        let mut wo = WriteOptions::default();
        wo.set_sync(self.sync);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf, log_id.index.to_be_bytes(), u64::MAX.to_be_bytes());
        batch.delete_cf(cf, u64::MAX.to_be_bytes());
        self.db.write_opt(batch, &wo).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        self.put_state(KEY_PURGED, &Some(log_id))?;
        let cf = self.cf(CF_LOG)?;
        let mut batch = WriteBatch::default();
        let end = (log_id.index + 1).to_be_bytes();
        batch.delete_range_cf(cf, 0u64.to_be_bytes(), end);
        self.db.write(batch).map_err(write_err)?;
        // Give the space back now: a range delete only hides the entries
        // until a compaction reaches their files, which under a steady
        // create storm may be never (purges run once per snapshot).
        self.db.compact_range_cf(cf, None::<&[u8]>, Some(&end[..]));
        Ok(())
    }
}

/// The group-commit thread: waits for a queued append, takes every append
/// queued by then, fsyncs the WAL once and completes them all. It ends when
/// the last `LogStore` clone is gone; it holds the database weakly so a
/// closed store can be reopened.
fn spawn_flusher(db: std::sync::Weak<DB>) -> curvine_common::Result<std::sync::mpsc::Sender<LogFlushed<TypeConfig>>> {
    let (tx, rx) = std::sync::mpsc::channel::<LogFlushed<TypeConfig>>();
    std::thread::Builder::new()
        .name("raft-log-fsync".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                batch.extend(rx.try_iter());
                let res = match db.upgrade() {
                    Some(db) => db.flush_wal(true).map_err(|e| e.to_string()),
                    None => Err("raft log closed".to_string()),
                };
                if let Err(e) = &res {
                    tracing::error!(error = %e, "raft log fsync failed");
                }
                for cb in batch {
                    cb.log_io_completed(res.clone().map_err(std::io::Error::other));
                }
            }
        })
        .map_err(|e| curvine_common::Error::internal(format!("cannot start the raft log flusher: {e}")))?;
    Ok(tx)
}
