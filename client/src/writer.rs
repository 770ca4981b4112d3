//! `FileWriter`: streams a new file to workers block by block. Bytes are
//! staged in one chunk-sized buffer only when the caller's writes are
//! smaller than a chunk; large writes go from the caller's slice to the
//! socket. A file with replication N sends every chunk to the N workers
//! meta placed the block on, at the same time; a replica that fails is
//! dropped (the block commits on the others) and meta re-replicates later.
//! A block no placed worker can open is placed again elsewhere.

use std::sync::Arc;

use curvine_common::proto::{self, BlockLocation, CommittedBlock, FileStatus, LocatedBlock};
use curvine_common::{Error, ErrorKind, Result};
use curvine_fabric::frame::CHUNK;

use crate::fs::FileSystem;
use crate::local::LocalWrite;
use crate::pool::{ConnPool, Pooled};

/// Placements tried per block: when no worker meta placed a block on can
/// open it, meta is asked again with those workers excluded.
const OPEN_ATTEMPTS: usize = 3;

struct OpenBlock {
    block: LocatedBlock,
    /// One connection per replica still being written: (worker id, conn).
    replicas: Vec<(u64, Pooled)>,
    /// Or, for one replica on a worker on this host: a direct write into
    /// its tier file (worker id, write).
    local: Option<(u64, LocalWrite)>,
    /// Bytes sent to the workers so far (always CHUNK-aligned until commit).
    sent: u64,
}

impl OpenBlock {
    /// Sends `bytes` at the block's end to every replica left (or into the
    /// local tier file).
    async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        if let Some((_, w)) = &mut self.local {
            w.append(bytes)?;
            self.sent += bytes.len() as u64;
            return Ok(());
        }
        let (id, off) = (self.block.id, self.sent);
        let results = if self.replicas.len() == 1 {
            vec![self.replicas[0].1.write_data(id, off, bytes).await]
        } else {
            futures::future::join_all(self.replicas.iter_mut().map(|(_, c)| c.write_data(id, off, bytes))).await
        };
        self.survivors(results, "write")?;
        self.sent += bytes.len() as u64;
        Ok(())
    }

    /// Keeps the replicas whose result is `Ok`; fails (with the first error)
    /// only when none is left.
    fn survivors<T>(&mut self, results: Vec<Result<T>>, what: &str) -> Result<Vec<T>> {
        let mut first_err = None;
        let mut oks = Vec::new();
        let mut kept = Vec::new();
        for ((worker, conn), r) in std::mem::take(&mut self.replicas).into_iter().zip(results) {
            match r {
                Ok(v) => {
                    oks.push(v);
                    kept.push((worker, conn));
                }
                Err(e) => {
                    tracing::debug!(block = self.block.id, worker, error = %e, "{what} failed on a replica; dropping it");
                    conn.discard();
                    first_err.get_or_insert(e);
                }
            }
        }
        self.replicas = kept;
        match first_err {
            Some(e) if self.replicas.is_empty() => Err(e),
            Some(e) => {
                tracing::warn!(block = self.block.id, left = self.replicas.len(), error = %e, "{what} failed on a replica; going on with the others");
                Ok(oks)
            }
            None => Ok(oks),
        }
    }
}

pub struct FileWriter {
    fs: FileSystem,
    status: FileStatus,
    block_size: u64,
    chunk: usize,
    cur: Option<OpenBlock>,
    staged: Vec<u8>,
    committed: Vec<CommittedBlock>,
    len: u64,
    /// Closed or aborted: nothing more to do, also on drop.
    done: bool,
    /// A `write` is running. Still set at the next call means that write's
    /// future was dropped mid-way (a cancelled task, a `select!`): what
    /// reached the workers is unknown, so the writer is poisoned.
    busy: bool,
}

impl FileWriter {
    pub(crate) fn new(fs: FileSystem, status: FileStatus) -> FileWriter {
        let block_size = status.block_size.max(CHUNK);
        let chunk = (fs.conf().chunk_size.0.min(block_size) / CHUNK * CHUNK).max(CHUNK) as usize;
        FileWriter {
            fs,
            status,
            block_size,
            chunk,
            cur: None,
            staged: Vec::new(),
            committed: Vec::new(),
            len: 0,
            done: false,
            busy: false,
        }
    }

    /// The new file as meta created it (incomplete, length 0).
    pub fn status(&self) -> &FileStatus {
        &self.status
    }

    pub fn path(&self) -> &str {
        &self.status.path
    }

    /// Bytes accepted so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `data`. On error the file is aborted: nothing partial is ever
    /// reported as complete. Not cancel-safe: a write whose future is
    /// dropped before it finishes poisons the writer (every later call
    /// fails and the file is aborted).
    #[tracing::instrument(level = "debug", skip_all, fields(path = %self.status.path, len = data.len()))]
    pub async fn write(&mut self, data: &[u8]) -> Result<()> {
        if self.done {
            return Err(Error::invalid(format!("{}: write after the file was closed or aborted", self.status.path)));
        }
        if self.busy {
            self.abort().await;
            return Err(self.poisoned());
        }
        self.busy = true;
        let res = self.write_inner(data).await;
        self.busy = false;
        if res.is_err() {
            self.abort().await;
        }
        res
    }

    /// The error of a writer whose earlier write was cancelled mid-way.
    fn poisoned(&self) -> Error {
        Error::new(
            ErrorKind::Io,
            format!("{}: an earlier write was cancelled before it finished; the file was aborted", self.status.path),
        )
    }

    async fn write_inner(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            if self.cur.is_none() {
                self.open_block().await?;
            }
            let in_block = self.cur.as_ref().map_or(0, |b| b.sent) + self.staged.len() as u64;
            let room = (self.block_size - in_block) as usize;
            let now = &data[..data.len().min(room)];
            let consumed = if self.staged.is_empty() && now.len() >= self.chunk {
                // Whole chunks go straight from the caller's buffer.
                let direct = now.len() / self.chunk * self.chunk;
                self.send(&now[..direct]).await?;
                direct
            } else {
                let fill = now.len().min(self.chunk - self.staged.len());
                self.staged.extend_from_slice(&now[..fill]);
                if self.staged.len() == self.chunk {
                    self.flush_staged().await?;
                }
                fill
            };
            self.len += consumed as u64;
            data = &data[consumed..];
            if in_block + consumed as u64 == self.block_size {
                self.finish_block().await?;
            }
        }
        Ok(())
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.cur.as_mut().ok_or_else(|| Error::internal("no open block"))?.send(bytes).await
    }

    /// Sends the staged bytes straight from `staged`, which is emptied
    /// only once they are sent: a future dropped mid-send leaves them in
    /// place (the writer is poisoned then, see `busy`).
    async fn flush_staged(&mut self) -> Result<()> {
        if self.staged.is_empty() {
            return Ok(());
        }
        let b = self.cur.as_mut().ok_or_else(|| Error::internal("no open block"))?;
        b.send(&self.staged).await?;
        self.staged.clear();
        Ok(())
    }

    /// Opens the file's next block. When no worker meta placed it on can
    /// open it (dead, full, restarted), meta places a new block with those
    /// workers excluded, up to `OPEN_ATTEMPTS` placements in all; the
    /// blocks given up on stay unused and meta frees them at `complete`
    /// (blocks it is not told about) or `abort`.
    async fn open_block(&mut self) -> Result<()> {
        let mut exclude = Vec::new();
        let mut last = None;
        for _ in 0..OPEN_ATTEMPTS {
            let block = match self.add_block(&exclude).await {
                Ok(b) => b,
                Err(e) => {
                    // Meta has no other worker ("no live workers" once every
                    // one is excluded): why the placed ones failed is the news.
                    let Some(open_err) = last else { return Err(e) };
                    tracing::debug!(path = %self.status.path, error = %e, "no other placement");
                    return Err(open_err);
                }
            };
            let id = block.id;
            match self.open_on(block).await {
                Ok(b) => {
                    self.cur = Some(b);
                    return Ok(());
                }
                Err((e, failed)) if !failed.is_empty() && worth_another_worker(&e) => {
                    tracing::warn!(path = %self.status.path, block = id, ?failed, error = %e, "no placed worker could open the block");
                    exclude.extend(failed);
                    last = Some(e);
                }
                Err((e, _)) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::internal("no block placement was tried")))
    }

    /// A new block of this file from meta, on workers other than `exclude`.
    /// (This and the other async helpers take `&mut self`, not `&self`, so
    /// their futures stay `Send`: a shared `&FileWriter` would need the
    /// writer's connections to be `Sync`, which they are not.)
    async fn add_block(&mut self, exclude: &[u64]) -> Result<LocatedBlock> {
        let (file_id, path, prev) = (self.status.id, self.status.path.clone(), self.len);
        let host = self.fs.inner.hostname.clone();
        let r = self
            .fs
            .inner
            .meta
            .call(|mut c| {
                let req = proto::AddBlockRequest {
                    file_id,
                    path: path.clone(),
                    previous_len: prev,
                    client_host: host.clone(),
                    exclude_workers: exclude.to_vec(),
                };
                async move { c.add_block(req).await }
            })
            .await?;
        let block = r.block.ok_or_else(|| Error::internal("add_block: empty response"))?;
        if block.locations.is_empty() {
            return Err(Error::unavailable(format!("{path}: meta returned no worker for block {}", block.id)));
        }
        Ok(block)
    }

    /// Opens `block` for writing on the workers meta placed it on: directly
    /// into the tier file of a single replica on this host when its worker
    /// offers that, else over the data plane, going on with the replicas
    /// that opened. When none did: the first error and the workers tried.
    async fn open_on(&mut self, block: LocatedBlock) -> std::result::Result<OpenBlock, (Error, Vec<u64>)> {
        let inner = &self.fs.inner;
        // A worker that holds the file's previous block may store this one
        // right after it (one file for the kernel to read from).
        let after = |worker: u64| match self.committed.last() {
            Some(c) if c.worker_ids.contains(&worker) => c.id,
            _ => 0,
        };
        if let [loc] = &block.locations[..] {
            if inner.conf.short_circuit && loc.hostname == inner.hostname {
                if let Some(w) = inner.local.open_write(loc, block.id, self.block_size, after(loc.worker_id)).await {
                    let worker = loc.worker_id;
                    return Ok(OpenBlock { block, replicas: Vec::new(), local: Some((worker, w)), sent: 0 });
                }
            }
        }
        let opens = block
            .locations
            .iter()
            .map(|loc| open_replica(&inner.pool, loc, block.id, self.block_size, after(loc.worker_id)));
        let results = futures::future::join_all(opens).await;
        let mut replicas = Vec::with_capacity(results.len());
        let mut failed = Vec::new();
        let mut first_err = None;
        for (loc, r) in block.locations.iter().zip(results) {
            match r {
                Ok(conn) => replicas.push((loc.worker_id, conn)),
                Err(e) => {
                    tracing::warn!(block = block.id, worker = loc.worker_id, error = %e, "replica cannot open the block; skipping it");
                    failed.push(loc.worker_id);
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) if replicas.is_empty() => Err((e.context(&self.status.path), failed)),
            _ => Ok(OpenBlock { block, replicas, local: None, sent: 0 }),
        }
    }

    async fn finish_block(&mut self) -> Result<()> {
        self.flush_staged().await?;
        if let Some(mut b) = self.cur.take() {
            let (id, len) = (b.block.id, b.sent);
            if let Some((worker, w)) = b.local.take() {
                self.fs.inner.local.commit_write(w).await?;
                self.committed.push(CommittedBlock { id, len, worker_ids: vec![worker] });
                return Ok(());
            }
            let results = futures::future::join_all(b.replicas.iter_mut().map(|(_, c)| c.write_commit(id, len))).await;
            b.survivors(results, "commit")?;
            let worker_ids = b.replicas.iter().map(|(w, _)| *w).collect();
            self.committed.push(CommittedBlock { id, len, worker_ids });
        }
        Ok(())
    }

    /// Seals the last block and completes the file; returns its status. On
    /// error the file is aborted. A close whose future is dropped leaves
    /// the abort to `Drop`.
    #[tracing::instrument(level = "debug", skip_all, fields(path = %self.status.path))]
    pub async fn close(mut self) -> Result<FileStatus> {
        if self.done {
            return Err(Error::invalid(format!("{}: already closed or aborted", self.status.path)));
        }
        if self.busy {
            self.abort().await;
            return Err(self.poisoned());
        }
        if let Err(e) = self.finish_block().await {
            self.abort().await;
            return Err(e);
        }
        if self.status.complete && self.committed.is_empty() && self.len == 0 {
            // Meta created the file complete and empty (it does unless the
            // file belongs in a UFS), and no block was ever asked for: it is
            // what it should be, and a close costs no meta write.
            self.done = true;
            return Ok(self.status.clone());
        }
        let path = self.status.path.clone();
        let r = match self.complete().await {
            Ok(r) => r,
            Err(e) => {
                // The complete may have been applied with its answer lost;
                // meta then refuses the abort (a complete file is never
                // aborted), so aborting is right either way.
                self.abort().await;
                return Err(e);
            }
        };
        self.done = true;
        let mut status = r.status.ok_or_else(|| Error::internal("complete: empty response"))?;
        if r.persist_now {
            // Write-through: close returns once the UFS has the file. A
            // failed upload stays queued in meta and is retried.
            let s = self.fs.sync(&path).await?;
            if s.failed > 0 {
                return Err(Error::unavailable(format!(
                    "{path}: written to the cache, but the upload to the UFS failed (meta retries it): {}",
                    s.errors.join("; ")
                )));
            }
            status.ufs_state = "persisted".into();
        }
        Ok(status)
    }

    /// Asks meta to complete the file with the blocks committed so far
    /// (meta frees the file's other blocks).
    async fn complete(&mut self) -> Result<proto::CompleteResponse> {
        let (file_id, path, len) = (self.status.id, self.status.path.clone(), self.len);
        let blocks = &self.committed;
        self.fs
            .inner
            .meta
            .call(|mut c| {
                let req = proto::CompleteRequest { file_id, path: path.clone(), blocks: blocks.clone(), len };
                async move { c.complete(req).await }
            })
            .await
    }

    /// Drops the unfinished file and its blocks. `done` is set only at the
    /// end, so an abort whose future is dropped is finished by `Drop`.
    pub async fn abort(&mut self) {
        if self.done {
            return;
        }
        if let Some(mut b) = self.cur.take() {
            let id = b.block.id;
            if let Some((_, w)) = b.local.take() {
                self.fs.inner.local.abort_write(w).await;
            }
            futures::future::join_all(b.replicas.iter_mut().map(|(_, c)| c.write_abort(id))).await;
        }
        abort_file(self.fs.clone(), self.status.id, self.status.path.clone()).await;
        self.done = true;
    }
}

/// Opens `block` for writing on `loc` over a pooled connection. A pooled
/// connection that turns out dead (the worker restarted on the same
/// address) is replaced by a fresh one once; any connection that failed is
/// closed, so the worker drops whatever it opened on it.
async fn open_replica(pool: &Arc<ConnPool>, loc: &BlockLocation, block: u64, len_hint: u64, after: u64) -> Result<Pooled> {
    let mut fresh = false;
    loop {
        let mut conn = pool.get(&loc.addr).await?;
        let res = conn.write_open(block, len_hint, after).await;
        let broken = conn.is_broken();
        match res {
            Ok(_) => return Ok(conn),
            Err(e) if broken && e.is_temporary() && !fresh => {
                tracing::debug!(block, worker = loc.worker_id, error = %e, "pooled connection dead; opening on a new one");
                conn.discard();
                pool.evict(&loc.addr);
                fresh = true;
            }
            Err(e) => {
                conn.discard();
                return Err(e);
            }
        }
    }
}

/// Whether a block that failed to open on a worker may open on another:
/// the worker is down, slow, full or failing its disk, none of which says
/// anything about the others.
fn worth_another_worker(e: &Error) -> bool {
    e.is_temporary() || matches!(e.kind(), ErrorKind::NoSpace | ErrorKind::Io)
}

/// A writer dropped without `close` or `abort` (a panic, a cancelled task)
/// must not leave a half-written block reserved on the worker or an
/// incomplete file in the namespace.
impl Drop for FileWriter {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Some(b) = self.cur.take() {
            for (_, c) in b.replicas {
                c.discard();
            }
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(path = %self.status.path, "writer dropped outside a runtime: file left incomplete");
            return;
        };
        rt.spawn(abort_file(self.fs.clone(), self.status.id, self.status.path.clone()));
    }
}

/// Asks meta to drop an unfinished file and its blocks; failures are logged
/// (the file stays visible as incomplete).
async fn abort_file(fs: FileSystem, file_id: u64, path: String) {
    let r = fs
        .inner
        .meta
        .call(|mut c| {
            let req = proto::AbortRequest { file_id, path: path.clone() };
            async move { c.abort(req).await }
        })
        .await;
    if let Err(e) = r {
        tracing::warn!(%path, error = %e, "abort of unfinished file failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compiles only while the writer's futures can move between threads
    /// (FUSE and the Python module spawn them).
    #[allow(dead_code)]
    fn futures_are_send(w: &mut FileWriter, owned: FileWriter) {
        fn send<T: Send>(_: T) {}
        send(w.write(&[]));
        send(w.abort());
        send(owned.close());
    }
}
