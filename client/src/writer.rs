//! `FileWriter`: streams a new file to workers block by block. Bytes are
//! staged in one chunk-sized buffer only when the caller's writes are
//! smaller than a chunk; large writes go from the caller's slice to the
//! socket. A file with replication N sends every chunk to the N workers
//! meta placed the block on, at the same time; a replica that fails is
//! dropped (the block commits on the others) and meta re-replicates later.

use curvine_common::proto::{self, CommittedBlock, FileStatus, LocatedBlock};
use curvine_common::{Error, Result};
use curvine_fabric::frame::CHUNK;

use crate::fs::FileSystem;
use crate::local::LocalWrite;
use crate::pool::Pooled;

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
    done: bool,
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
    /// reported as complete.
    #[tracing::instrument(level = "debug", skip_all, fields(path = %self.status.path, len = data.len()))]
    pub async fn write(&mut self, data: &[u8]) -> Result<()> {
        if self.done {
            return Err(Error::invalid(format!("{}: write after close", self.status.path)));
        }
        match self.write_inner(data).await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.abort().await;
                Err(e)
            }
        }
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
        let b = self.cur.as_mut().ok_or_else(|| Error::internal("no open block"))?;
        if let Some((_, w)) = &mut b.local {
            w.append(bytes)?;
            b.sent += bytes.len() as u64;
            return Ok(());
        }
        let (id, off) = (b.block.id, b.sent);
        let results = if b.replicas.len() == 1 {
            vec![b.replicas[0].1.write_data(id, off, bytes).await]
        } else {
            futures::future::join_all(b.replicas.iter_mut().map(|(_, c)| c.write_data(id, off, bytes))).await
        };
        b.survivors(results, "write")?;
        b.sent += bytes.len() as u64;
        Ok(())
    }

    async fn flush_staged(&mut self) -> Result<()> {
        if self.staged.is_empty() {
            return Ok(());
        }
        let staged = std::mem::take(&mut self.staged);
        let r = self.send(&staged).await;
        self.staged = staged;
        self.staged.clear();
        r
    }

    async fn open_block(&mut self) -> Result<()> {
        let inner = &self.fs.inner;
        let (file_id, path, prev) = (self.status.id, self.status.path.clone(), self.len);
        let host = inner.hostname.clone();
        let r = inner
            .meta
            .call(|mut c| {
                let req = proto::AddBlockRequest {
                    file_id,
                    path: path.clone(),
                    previous_len: prev,
                    client_host: host.clone(),
                    exclude_workers: vec![],
                };
                async move { c.add_block(req).await }
            })
            .await?;
        let block = r.block.ok_or_else(|| Error::internal("add_block: empty response"))?;
        if block.locations.is_empty() {
            return Err(Error::unavailable(format!("{}: meta returned no worker for block {}", path, block.id)));
        }
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
                    self.cur = Some(OpenBlock { block, replicas: Vec::new(), local: Some((worker, w)), sent: 0 });
                    return Ok(());
                }
            }
        }
        let mut replicas = Vec::with_capacity(block.locations.len());
        let mut results = Vec::with_capacity(block.locations.len());
        for loc in &block.locations {
            match inner.pool.get(&loc.addr).await {
                Ok(mut conn) => {
                    let r = conn.write_open(block.id, self.block_size, after(loc.worker_id)).await;
                    replicas.push((loc.worker_id, conn));
                    results.push(r.map(|_| ()));
                }
                Err(e) => tracing::warn!(block = block.id, worker = loc.worker_id, error = %e, "replica unreachable; skipping it"),
            }
        }
        if replicas.is_empty() {
            return Err(Error::unavailable(format!("{path}: no worker placed for block {} is reachable", block.id)));
        }
        let mut b = OpenBlock { block, replicas, local: None, sent: 0 };
        b.survivors(results, "open")?;
        self.cur = Some(b);
        Ok(())
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

    /// Seals the last block and completes the file; returns its status.
    #[tracing::instrument(level = "debug", skip_all, fields(path = %self.status.path))]
    pub async fn close(mut self) -> Result<FileStatus> {
        if self.done {
            return Err(Error::invalid(format!("{}: already closed", self.status.path)));
        }
        if let Err(e) = self.finish_block().await {
            self.abort().await;
            return Err(e);
        }
        self.done = true;
        let inner = &self.fs.inner;
        let (file_id, path, len) = (self.status.id, self.status.path.clone(), self.len);
        let blocks = std::mem::take(&mut self.committed);
        let r = inner
            .meta
            .call(|mut c| {
                let req = proto::CompleteRequest { file_id, path: path.clone(), blocks: blocks.clone(), len };
                async move { c.complete(req).await }
            })
            .await?;
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

    /// Drops the unfinished file and its blocks.
    pub async fn abort(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        if let Some(mut b) = self.cur.take() {
            let id = b.block.id;
            if let Some((_, w)) = b.local.take() {
                w.abort().await;
            }
            futures::future::join_all(b.replicas.iter_mut().map(|(_, c)| c.write_abort(id))).await;
        }
        abort_file(self.fs.clone(), self.status.id, self.status.path.clone()).await;
    }
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
