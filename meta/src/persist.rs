//! Getting files written under write-through and write-back mounts into
//! their UFS.
//!
//! `Complete` queues such a file (`CF_PERSIST`, in the same Raft entry, so
//! an acknowledged file is never forgotten by a meta restart). A background
//! loop on the meta node picks due entries and asks a worker holding the
//! file's first block to upload it (fabric `Persist`); the worker streams the
//! blocks into the UFS and reports the new object with `PersistDone`. A
//! failure is recorded and retried with backoff. `Sync` uploads everything
//! pending under a path now and waits; write-through clients call it
//! before `close` returns. Meta never touches file bytes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use curvine_common::path::{is_within, normalize};
use curvine_common::proto::*;
use curvine_common::{now_ms, Error, ErrorKind, Result};
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::stream::{self, StreamExt};
use parking_lot::Mutex;

use crate::namespace::MetaCommand;
use crate::service::MetaServiceImpl;
use crate::store::{Inode, Mount, Persist, Reader, WriteMode};

const SCAN_EVERY: Duration = Duration::from_millis(500);
const TTL_SWEEP_EVERY: Duration = Duration::from_secs(2);
/// How often the leader sweeps the UFS staging directories.
const STAGING_SWEEP_EVERY: Duration = Duration::from_secs(3600);
const PARALLEL: usize = 8;
const PAGE: usize = 256;
/// Longest wait between two attempts of one upload.
const MAX_BACKOFF_MS: i64 = 60_000;

type Upload = Shared<BoxFuture<'static, std::result::Result<(), Error>>>;

/// Uploads in flight, by file id: the loop, `Sync` and a write-through
/// close asking for the same file share one upload.
#[derive(Default)]
pub struct Persister {
    inflight: Mutex<HashMap<u64, Upload>>,
}

impl MetaServiceImpl {
    /// Whether `Complete` of `f` must upload before the client's close returns.
    pub(crate) fn write_through(&self, f: &Inode) -> Result<bool> {
        let Some(u) = f.ufs.as_ref().filter(|u| u.persist == Persist::Pending) else { return Ok(false) };
        Ok(self.mounts.table(&self.store)?.iter().any(|m| m.id == u.mount_id && m.write_mode == WriteMode::WriteThrough))
    }

    /// Deletes `path` in its UFS first when its mount writes there.
    pub(crate) async fn delete_in_ufs(&self, path: &str, recursive: bool) -> Result<()> {
        let Some(m) = self.mounts.of(&self.store, path)? else { return Ok(()) };
        if m.write_mode == WriteMode::CacheOnly || m.path == path {
            return Ok(()); // cache-only: the namespace refuses; mount point: umount
        }
        let Ok(node) = self.reader().resolve(path) else { return Ok(()) };
        let Some(u) = node.ufs.as_ref() else { return Ok(()) };
        if node.is_dir() && !recursive && self.reader().count_children(node.id)? > 0 {
            return Ok(()); // the namespace answers "not empty"
        }
        let ufs = self.mounts.client(&m)?;
        if node.is_dir() {
            ufs.delete_all(&u.rel).await.map_err(Error::permanent)
        } else if u.persist == Persist::Persisted {
            ufs.delete(&u.rel).await.map_err(Error::permanent)
        } else {
            Ok(()) // not uploaded yet; dequeued with the inode
        }
    }

    /// Moves `src` to `dst` in the UFS first when they are in a mount that
    /// writes there, and says which command records the rename. Moves
    /// across mounts (or in or out of a writing mount) are refused: they
    /// would be a copy between stores.
    pub(crate) async fn rename_in_ufs(&self, src: &str, dst: &str, now: i64) -> Result<MetaCommand> {
        let plain = MetaCommand::Rename { src: src.to_string(), dst: dst.to_string(), now_ms: now };
        let (sm, dm) = (self.mounts.of(&self.store, src)?, self.mounts.of(&self.store, dst)?);
        let writes = |m: &Option<crate::store::Mount>| m.as_ref().is_some_and(|m| m.write_mode != WriteMode::CacheOnly);
        let same = sm.as_ref().map(|m| m.id) == dm.as_ref().map(|m| m.id);
        let Ok(node) = self.reader().resolve(src) else { return Ok(plain) }; // the namespace says "not found"
        if !same && (writes(&sm) || writes(&dm)) && sm.as_ref().is_none_or(|m| m.path != src) {
            let name = |m: &Option<crate::store::Mount>| m.as_ref().map(|m| m.uri.clone()).unwrap_or_else(|| "Curvine".into());
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "cannot move {src} to {dst}: they are stored in different places ({} and {}); copy the data and delete the source",
                    name(&sm),
                    name(&dm)
                ),
            ));
        }
        let Some(m) = sm.filter(|m| m.write_mode != WriteMode::CacheOnly && m.path != src) else { return Ok(plain) };
        let Some(u) = node.ufs.as_ref() else { return Ok(plain) };
        if !node.is_dir() && u.persist == Persist::Pending {
            return Ok(plain); // not uploaded yet: the upload follows the new key
        }
        // Refuse what the namespace would refuse before touching the UFS.
        let mut dry = crate::store::Txn::new(self.store.db());
        crate::namespace::apply(&mut dry, &plain)?;
        drop(dry);
        let ufs = self.mounts.client(&m)?;
        let to = m.rel(dst).unwrap_or_default().to_string();
        if node.is_dir() {
            let n = ufs.rename_all(&u.rel, &to).await.map_err(Error::permanent)?;
            tracing::info!(src, dst, files = n, "directory moved in the UFS");
            Ok(MetaCommand::RenameUfs { src: src.to_string(), dst: dst.to_string(), now_ms: now, entry: None })
        } else {
            let e = match ufs.rename(&u.rel, &to).await {
                Ok(e) => e,
                // A retry of a rename whose UFS move was done but whose
                // record never committed (the leader died in between): the
                // object is at `dst` already, and the namespace follows it.
                Err(err) if err.kind() == ErrorKind::NotFound => match ufs.stat(&to).await {
                    Ok(Some(e)) if !e.is_dir && ufs.stat(&u.rel).await.is_ok_and(|s| s.is_none()) => {
                        tracing::info!(src, dst, "the UFS object was moved by an earlier attempt");
                        e
                    }
                    _ => return Err(err.permanent()),
                },
                Err(err) => return Err(err.permanent()),
            };
            Ok(MetaCommand::RenameUfs { src: src.to_string(), dst: dst.to_string(), now_ms: now, entry: Some(e) })
        }
    }

    fn service_arc(&self) -> Result<Arc<MetaServiceImpl>> {
        self.jobs.service()
    }

    /// Starts the background upload loop (runs until the service is dropped).
    pub fn start_persister(&self) -> Result<()> {
        let weak = Arc::downgrade(&self.service_arc()?);
        tokio::spawn(async move {
            let mut last_sweep = std::time::Instant::now();
            let mut last_staging_sweep: Option<std::time::Instant> = None;
            loop {
                tokio::time::sleep(SCAN_EVERY).await;
                let Some(me) = weak.upgrade() else { return };
                // Only the leader uploads, re-replicates and expires: a
                // follower knows no workers (they register with the
                // leader), and its writes would only be refused.
                if !matches!(crate::leader::role(&me.raft, me.id), crate::leader::Role::Leader { .. }) {
                    last_staging_sweep = None;
                    continue;
                }
                // Leftovers of unfinished UFS writes: when this member starts
                // leading, and hourly.
                if last_staging_sweep.is_none_or(|t| t.elapsed() >= STAGING_SWEEP_EVERY) {
                    last_staging_sweep = Some(std::time::Instant::now());
                    me.sweep_staging();
                }
                if let Err(e) = me.persist_due().await {
                    tracing::warn!(error = %e, "persist scan failed");
                }
                me.re_replicate();
                // The TTL sweep visits every cached block: seconds apart, not every scan.
                if last_sweep.elapsed() >= TTL_SWEEP_EVERY {
                    last_sweep = std::time::Instant::now();
                    if let Err(e) = me.expire_cached() {
                        tracing::warn!(error = %e, "TTL sweep failed");
                    }
                }
            }
        });
        Ok(())
    }

    /// Mount TTLs: drops cached copies of UFS-backed blocks cached longer
    /// than their mount's `ttl`. The UFS keeps the data and the namespace
    /// the block ids (the next read loads them again); pinned files and files
    /// not in the UFS are never dropped.
    fn expire_cached(&self) -> Result<()> {
        let mounts = self.mounts.table(&self.store)?;
        let Some(min_ttl) = mounts.iter().filter(|m| m.ttl_ms > 0).map(|m| m.ttl_ms).min() else { return Ok(()) };
        let reader = self.reader();
        let mut drop = Vec::new();
        for block in self.workers.cached_longer_than(Duration::from_millis(min_ttl as u64)) {
            let Some(m) = droppable(&reader, &mounts, block)?.filter(|m| m.ttl_ms > 0) else { continue };
            if self.workers.cached_longer_than_one(block, Duration::from_millis(m.ttl_ms as u64)) {
                drop.push(block);
            }
        }
        if !drop.is_empty() {
            let n = self.workers.drop_cached(&drop);
            tracing::info!(blocks = drop.len(), copies = n, "TTL expired cached blocks");
        }
        Ok(())
    }

    /// When workers have died: copies of their blocks from survivors, up to
    /// each file's replication. Blocks with no live copy left load again
    /// from the UFS on the next read, or are lost if only the cache had them.
    fn re_replicate(&self) {
        let reader = self.reader();
        let file = |b: u64| reader.block_file(b).ok().flatten().and_then(|f| reader.inode(f).ok().flatten());
        let (scheduled, lost) = self.workers.re_replicate(|b| {
            file(b)
                .and_then(|f| f.blocks.iter().find(|x| x.id == b).map(|x| (f.replication, x.len)))
                .unwrap_or((1, 0))
        });
        if !scheduled.is_empty() {
            tracing::info!(copies = scheduled.len(), "re-replicating blocks of dead workers");
        }
        for b in lost {
            match file(b) {
                Some(f) if f.is_ufs_persisted() => tracing::info!(block = b, "no cached copy left; the UFS has it"),
                Some(f) => tracing::error!(block = b, file = f.id, "block lost: its only copies were on dead workers"),
                None => {}
            }
        }
    }

    /// Of the blocks a worker would evict, those that may go.
    pub(crate) fn evictable(&self, candidates: &[u64]) -> Result<Vec<u64>> {
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let mounts = self.mounts.table(&self.store)?;
        let reader = self.reader();
        let mut out = Vec::new();
        for &b in candidates {
            if droppable(&reader, &mounts, b)?.is_some() {
                out.push(b);
            }
        }
        Ok(out)
    }

    /// Uploads every queued file whose time has come, a few at a time.
    async fn persist_due(&self) -> Result<()> {
        let now = now_ms();
        let mut after = 0;
        loop {
            let page = self.reader().persist_page(after, PAGE)?;
            let Some(last) = page.last() else { return Ok(()) };
            after = last.file_id;
            let due: Vec<u64> = page.iter().filter(|i| i.due_ms <= now).map(|i| i.file_id).collect();
            stream::iter(due)
                .for_each_concurrent(PARALLEL, |id| async move {
                    let _ = self.persist_file(id).await;
                })
                .await;
        }
    }

    /// One upload of file `id` (shared with concurrent callers); a failure
    /// is recorded with the time of the next attempt.
    pub(crate) async fn persist_file(&self, id: u64) -> Result<()> {
        let fut = {
            let mut g = self.persister.inflight.lock();
            match g.get(&id) {
                Some(f) => f.clone(),
                None => {
                    let me = self.service_arc()?;
                    let f: Upload = async move {
                        let res = me.upload(id).await;
                        me.persister.inflight.lock().remove(&id);
                        if let Err(e) = &res {
                            let attempts = me.reader().persist_item(id).ok().flatten().map(|i| i.attempts).unwrap_or(0);
                            let backoff = (1000i64 << attempts.min(6)).min(MAX_BACKOFF_MS);
                            tracing::warn!(file = id, error = %e, retry_in_ms = backoff, "upload to the UFS failed");
                            let cmd = MetaCommand::PersistFailed { file_id: id, error: e.to_string(), retry_ms: now_ms() + backoff };
                            let _ = me.write(cmd).await;
                        }
                        res
                    }
                    .boxed()
                    .shared();
                    g.insert(id, f.clone());
                    f
                }
            }
        };
        fut.await
    }

    async fn upload(&self, id: u64) -> Result<()> {
        let Some(f) = self.reader().inode(id)? else { return Ok(()) };
        if !matches!(&f.ufs, Some(u) if u.persist == Persist::Pending) || !f.complete {
            return Ok(());
        }
        // The worker holding the first block uploads (reading it locally);
        // an empty file goes to any live worker.
        let loc = f
            .blocks
            .first()
            .and_then(|b| self.workers.locations(b.id).into_iter().next())
            .or_else(|| self.workers.loader_for(id))
            .ok_or_else(|| Error::unavailable(format!("file {id}: no live worker holds it to upload")))?;
        self.jobs.persist_at(&loc.addr, id).await.map_err(|e| e.context(format!("upload via worker {}", loc.addr)))
    }

    pub(crate) async fn do_persist_source(&self, r: PersistSourceRequest) -> Result<PersistSourceResponse> {
        let reader = self.reader();
        let item = reader.persist_item(r.file_id)?;
        let f = reader
            .inode(r.file_id)?
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("file {} is gone", r.file_id)))?;
        let u = f
            .ufs
            .as_ref()
            .filter(|u| u.persist == Persist::Pending)
            .ok_or_else(|| Error::invalid(format!("file {} is not waiting for an upload", r.file_id)))?;
        let m = self.mounts.by_id(&self.store, u.mount_id, &format!("file {}", r.file_id))?;
        let mut offset = 0;
        let blocks = f
            .blocks
            .iter()
            .map(|b| {
                let lb = LocatedBlock { id: b.id, offset, len: b.len, locations: self.workers.locations(b.id), from_ufs: false };
                offset += b.len;
                lb
            })
            .collect();
        Ok(PersistSourceResponse {
            mount: Some(crate::mounts::mount_info(&m, true)),
            ufs_path: u.rel.clone(),
            len: f.len,
            blocks,
            path: item.map(|i| i.path).unwrap_or_default(),
        })
    }

    pub(crate) async fn do_persist_done(&self, r: PersistDoneRequest) -> Result<PersistDoneResponse> {
        if let Some(moved) = self.moved_while_uploading(&r).await? {
            return Err(moved);
        }
        let cmd = MetaCommand::PersistDone { file_id: r.file_id, len: r.len, etag: r.etag, mtime_ms: r.mtime_ms, now_ms: now_ms() };
        self.write(cmd).await?;
        Ok(PersistDoneResponse {})
    }

    /// A file renamed while its upload ran went to its old key: that object
    /// is removed again and the upload fails, so the retry uses the new key.
    async fn moved_while_uploading(&self, r: &PersistDoneRequest) -> Result<Option<Error>> {
        let Some(f) = self.reader().inode(r.file_id)? else { return Ok(None) };
        let Some(u) = f.ufs.as_ref() else { return Ok(None) };
        if r.ufs_path.is_empty() || u.rel == r.ufs_path {
            return Ok(None);
        }
        if let Ok(m) = self.mounts.by_id(&self.store, u.mount_id, &r.ufs_path) {
            // Only if nothing else now lives at the old key in Curvine.
            let old = curvine_common::path::join(&m.path, &r.ufs_path);
            if self.reader().resolve(&old).is_err() {
                if let Err(e) = self.mounts.client(&m)?.delete(&r.ufs_path).await {
                    tracing::warn!(key = %r.ufs_path, error = %e, "cannot remove an upload to a moved file's old key");
                }
            }
        }
        Ok(Some(Error::unavailable(format!(
            "file {} moved to {} while it was uploaded to {}; uploading again",
            r.file_id, u.rel, r.ufs_path
        ))))
    }

    /// Uploads everything pending under `path` now (ignoring upload delays).
    #[tracing::instrument(skip(self))]
    pub(crate) async fn do_sync(&self, r: SyncRequest) -> Result<SyncResponse> {
        let path = normalize(&r.path)?;
        self.reader().resolve(&path)?;
        let mut out = SyncResponse::default();
        let mut after = 0;
        loop {
            let page = self.reader().persist_page(after, PAGE)?;
            let Some(last) = page.last() else { break };
            after = last.file_id;
            let ids: Vec<u64> = page.iter().filter(|i| is_within(&i.path, &path)).map(|i| i.file_id).collect();
            out.pending_before += ids.len() as u64;
            let results: Vec<(u64, Result<()>)> =
                stream::iter(ids).map(|id| async move { (id, self.persist_file(id).await) }).buffer_unordered(PARALLEL).collect().await;
            for (_, res) in results {
                match res {
                    Ok(()) => out.persisted += 1,
                    Err(e) => {
                        out.failed += 1;
                        if out.errors.len() < 20 {
                            out.errors.push(e.to_string());
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Whether cached copies of `block` may be dropped — its file's bytes are in
/// a mounted UFS (the next read loads them again), and neither the file nor
/// any directory above it is pinned — and then the mount it is under.
pub(crate) fn droppable<'m>(reader: &Reader, mounts: &'m [Mount], block: u64) -> Result<Option<&'m Mount>> {
    let Some(f) = reader.block_file(block)?.and_then(|id| reader.inode(id).ok().flatten()) else { return Ok(None) };
    let Some(u) = f.ufs.as_ref().filter(|_| f.is_ufs_persisted()) else { return Ok(None) };
    let Some(m) = mounts.iter().find(|m| m.id == u.mount_id) else { return Ok(None) };
    if f.pinned {
        return Ok(None);
    }
    let path = curvine_common::path::join(&m.path, &u.rel);
    let mut p = path.as_str();
    while let Some((parent, _)) = curvine_common::path::split(p) {
        if reader.resolve(parent).map(|i| i.pinned).unwrap_or(false) {
            return Ok(None);
        }
        p = parent;
    }
    Ok(Some(m))
}
