//! UFS mounts in the meta service: the mount RPCs, and the lazy metadata
//! sync that makes `stat`/`list`/`open` under a mount show the UFS.
//!
//! The UFS is asked here, outside the state machine, and what it said is
//! proposed as a command (see `namespace::ufs`), so every replica merges the
//! same answer. Metadata is trusted for the mount's sync interval; within it
//! no request reaches the UFS, and a listed directory answers "not found"
//! for names the listing did not have.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use curvine_common::path::{join, normalize};
use curvine_common::proto::*;
use curvine_common::{now_ms, Error, ErrorKind, Result};
use curvine_ufs::Ufs;
use parking_lot::Mutex;

use crate::namespace::{MetaCommand, Outcome};
use crate::service::MetaServiceImpl;
use crate::store::{Mount, StateStore, WriteMode};

/// UFS listings are merged in pages of this many entries (one Raft entry each).
const SYNC_PAGE: usize = 1000;
/// Metadata lifetime when `cv mount` does not give one.
pub const DEFAULT_SYNC_INTERVAL_MS: i64 = 60_000;
/// Files in a UFS's staging directory older than this are leftovers of
/// writes that never finished (their process died): uploads take minutes.
pub const STAGING_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Sweeps `ufs`'s staging directory (`Ufs::sweep_staging`) in the
/// background, so a slow or unreachable store delays nothing.
pub fn sweep_staging_later(ufs: Ufs, mount: String) {
    tokio::spawn(async move {
        match ufs.sweep_staging(STAGING_MAX_AGE).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(mount = %mount, files = n, "removed leftovers of unfinished writes from the UFS staging directory"),
            Err(e) => tracing::warn!(mount = %mount, error = %e, "cannot sweep the UFS staging directory"),
        }
    });
}

/// The mount table cached by generation, the UFS clients by mount, and
/// per-path locks so concurrent requests sync a path once.
#[derive(Default)]
pub struct Mounts {
    table: Mutex<(u64, Arc<Vec<Mount>>)>,
    clients: Mutex<HashMap<u64, (Mount, Ufs)>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Mounts {
    pub fn table(&self, store: &StateStore) -> Result<Arc<Vec<Mount>>> {
        // Read the generation first: a change applied while we read the
        // table makes the next call read it again.
        let gen = store.mounts_gen.load(Ordering::Acquire);
        {
            let t = self.table.lock();
            if t.0 == gen {
                return Ok(t.1.clone());
            }
        }
        let v = Arc::new(crate::store::Reader { db: store.db() }.mounts()?);
        *self.table.lock() = (gen, v.clone());
        Ok(v)
    }

    /// The mount holding `path` (mounts never nest, so at most one).
    pub fn of(&self, store: &StateStore, path: &str) -> Result<Option<Mount>> {
        Ok(self.table(store)?.iter().find(|m| m.rel(path).is_some()).cloned())
    }

    /// Mount `id`; the error names `of` (what needed it).
    pub fn by_id(&self, store: &StateStore, id: u64, of: &str) -> Result<Mount> {
        self.table(store)?
            .iter()
            .find(|m| m.id == id)
            .cloned()
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("the mount of {of} is gone")))
    }

    /// The UFS client of `m`, built once per mount definition.
    pub fn client(&self, m: &Mount) -> Result<Ufs> {
        let mut c = self.clients.lock();
        if let Some((cm, u)) = c.get(&m.id) {
            if cm == m {
                return Ok(u.clone());
            }
        }
        let u = Ufs::new(&m.uri, &m.options)?;
        c.insert(m.id, (m.clone(), u.clone()));
        Ok(u)
    }

    async fn lock(&self, path: &str) -> PathGuard<'_> {
        let l = self.locks.lock().entry(path.to_string()).or_default().clone();
        let g = l.clone().lock_owned().await;
        PathGuard { mounts: self, path: path.to_string(), lock: l, _g: g }
    }
}

struct PathGuard<'a> {
    mounts: &'a Mounts,
    path: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    _g: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for PathGuard<'_> {
    fn drop(&mut self) {
        let mut m = self.mounts.locks.lock();
        // Ours, the map's and the guard's: nobody else waits, drop the entry.
        if Arc::strong_count(&self.lock) <= 3 {
            m.remove(&self.path);
        }
    }
}

pub fn mount_info(m: &Mount, with_secrets: bool) -> MountInfo {
    MountInfo {
        id: m.id,
        path: m.path.clone(),
        uri: m.uri.clone(),
        options: if with_secrets { m.options.clone().into_iter().collect() } else { redacted(&m.options) },
        write_mode: m.write_mode.as_str().to_string(),
        ttl_ms: m.ttl_ms,
        sync_interval_ms: m.sync_interval_ms,
        block_size: m.block_size,
        upload_delay_ms: m.upload_delay_ms,
    }
}

fn redacted(o: &BTreeMap<String, String>) -> std::collections::HashMap<String, String> {
    curvine_ufs::redact(o).into_iter().collect()
}

/// Counts of one resync.
#[derive(Default, Debug)]
pub struct SyncCounts {
    pub entries: u64,
    pub changed: u64,
    pub removed: u64,
}

impl SyncCounts {
    fn add(&mut self, out: &Outcome) {
        if let Outcome::Freed { inodes, blocks, .. } = out {
            self.removed += inodes;
            self.changed += blocks.len() as u64;
        }
    }
}

impl MetaServiceImpl {
    /// Whether the namespace may answer for `path` without asking the UFS.
    fn entry_fresh(&self, m: &Mount, path: &str, now: i64) -> Result<bool> {
        let r = self.reader();
        match r.resolve(path) {
            Ok(i) => Ok(match &i.ufs {
                Some(u) => !m.stale(u.synced_ms, now),
                None => true, // the mount point, or an entry written here
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                // A fresh listing of the parent did not have it: trust that.
                let parent = curvine_common::path::split(path).map(|(p, _)| p).unwrap_or("/");
                Ok(match r.resolve(parent) {
                    Ok(d) => d.is_dir() && d.listed_ms > 0 && !m.stale(d.listed_ms, now),
                    Err(_) => false,
                })
            }
            Err(_) => Ok(true), // let the operation report it
        }
    }

    /// Brings `path` in line with the UFS when it lies under a mount and
    /// its metadata is older than the mount's sync interval.
    pub(crate) async fn ensure_entry(&self, path: &str, force: bool) -> Result<SyncCounts> {
        let mut counts = SyncCounts::default();
        let Some(m) = self.mounts.of(&self.store, path)? else { return Ok(counts) };
        let rel = m.rel(path).unwrap_or_default();
        if rel.is_empty() || (!force && self.entry_fresh(&m, path, now_ms())?) {
            return Ok(counts);
        }
        let _g = self.mounts.lock(path).await;
        if !force && self.entry_fresh(&m, path, now_ms())? {
            return Ok(counts);
        }
        let ufs = self.mounts.client(&m)?;
        let now = now_ms();
        let out = match ufs.stat(rel).await? {
            Some(e) => {
                counts.entries += 1;
                self.merge(MetaCommand::UfsUpsert { path: path.to_string(), mount_id: m.id, entry: e, now_ms: now })
                    .await?
            }
            None => self.merge(MetaCommand::UfsRemove { path: path.to_string(), now_ms: now }).await?,
        };
        counts.add(&out);
        self.metrics.ufs_syncs.inc();
        Ok(counts)
    }

    /// Merges the UFS listing of directory `path` when it is stale (or `force`).
    pub(crate) async fn ensure_listed(&self, path: &str, force: bool) -> Result<SyncCounts> {
        let mut counts = self.ensure_entry(path, force).await?;
        let Some(m) = self.mounts.of(&self.store, path)? else { return Ok(counts) };
        let fresh = |s: &Self| -> Result<bool> {
            let d = s.reader().resolve(path)?;
            let local = d.ufs.is_none() && d.mount_id == 0;
            Ok(!d.is_dir() || local || (d.listed_ms > 0 && !m.stale(d.listed_ms, now_ms())))
        };
        if !force && fresh(self)? {
            return Ok(counts);
        }
        let _g = self.mounts.lock(path).await;
        if !force && fresh(self)? {
            return Ok(counts);
        }
        let ufs = self.mounts.client(&m)?;
        let rel = m.rel(path).unwrap_or_default();
        let gen = now_ms();
        let mut lister = ufs.list(rel).await?;
        loop {
            let page = lister.next_page(SYNC_PAGE).await?;
            if page.is_empty() {
                break;
            }
            counts.entries += page.len() as u64;
            let entries = page;
            let out =
                self.merge(MetaCommand::UfsSyncPage { dir: path.to_string(), mount_id: m.id, entries, gen }).await?;
            counts.add(&out);
        }
        let out = self.merge(MetaCommand::UfsSyncEnd { dir: path.to_string(), gen }).await?;
        counts.add(&out);
        self.metrics.ufs_syncs.inc();
        Ok(counts)
    }

    #[tracing::instrument(skip(self, r), fields(path = %r.path, uri = %r.uri))]
    pub(crate) async fn do_mount(&self, r: MountRequest) -> Result<MountResponse> {
        let path = normalize(&r.path)?;
        let write_mode = WriteMode::parse(&r.write_mode).ok_or_else(|| {
            Error::invalid(format!(
                "write mode '{}' is not one of cache-only, write-through, write-back",
                r.write_mode
            ))
        })?;
        if r.upload_delay_ms != 0 && write_mode != WriteMode::WriteBack {
            return Err(Error::invalid("--upload-delay applies to write-back mounts only"));
        }
        if r.upload_delay_ms < 0 {
            return Err(Error::invalid(format!("upload delay {} ms must not be negative", r.upload_delay_ms)));
        }
        if r.ttl_ms < 0 {
            return Err(Error::invalid(format!("ttl {} ms must not be negative", r.ttl_ms)));
        }
        let options: BTreeMap<String, String> = r.options.into_iter().collect();
        // Build and reach the UFS before anything is recorded: a bad URI,
        // wrong credentials or an unreachable store fail the mount itself.
        // Permanent: a client retrying a refused mount would only wait longer.
        let ufs = Ufs::new(&r.uri, &options).map_err(Error::permanent)?;
        ufs.check().await.map_err(Error::permanent)?;
        let sync_interval_ms = if r.sync_interval_set { r.sync_interval_ms } else { DEFAULT_SYNC_INTERVAL_MS };
        let mount = Mount {
            id: 0,
            path: path.clone(),
            uri: r.uri.clone(),
            options,
            write_mode,
            ttl_ms: r.ttl_ms,
            sync_interval_ms,
            block_size: self.conf.cluster.block_size.0,
            upload_delay_ms: r.upload_delay_ms,
        };
        match self.write(MetaCommand::Mount { mount, now_ms: now_ms() }).await? {
            Outcome::Mount(m) => {
                tracing::info!(id = m.id, path = %m.path, uri = %m.uri, "mounted");
                sweep_staging_later(ufs, m.path.clone());
                Ok(MountResponse { mount: Some(mount_info(&m, false)) })
            }
            other => Err(Error::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    /// Starts a sweep of every mount's UFS staging directory.
    pub(crate) fn sweep_staging(&self) {
        let mounts = match self.mounts.table(&self.store) {
            Ok(m) => m,
            Err(e) => return tracing::warn!(error = %e, "cannot read the mount table to sweep staging directories"),
        };
        tracing::info!(mounts = mounts.len(), "sweeping the UFS staging directories");
        for m in mounts.iter() {
            match self.mounts.client(m) {
                Ok(ufs) => sweep_staging_later(ufs, m.path.clone()),
                Err(e) => tracing::warn!(mount = %m.path, error = %e, "cannot sweep the UFS staging directory"),
            }
        }
    }

    #[tracing::instrument(skip(self))]
    pub(crate) async fn do_umount(&self, r: UmountRequest) -> Result<UmountResponse> {
        let path = normalize(&r.path)?;
        let out = self.write(MetaCommand::Umount { path: path.clone(), force: r.force, now_ms: now_ms() }).await?;
        let freed = match out {
            Outcome::Freed { blocks, .. } => blocks.len() as u64,
            _ => 0,
        };
        tracing::info!(path = %path, freed, "unmounted");
        Ok(UmountResponse { freed_blocks: freed })
    }

    pub(crate) async fn do_list_mounts(&self, _r: ListMountsRequest) -> Result<ListMountsResponse> {
        let mounts = self.mounts.table(&self.store)?.iter().map(|m| mount_info(m, false)).collect();
        Ok(ListMountsResponse { mounts })
    }

    /// Re-reads `path` from the UFS now: the entry, and for a directory its
    /// listing and those of every directory below that was listed before.
    #[tracing::instrument(skip(self))]
    pub(crate) async fn do_resync(&self, r: ResyncRequest) -> Result<ResyncResponse> {
        let path = normalize(&r.path)?;
        if self.mounts.of(&self.store, &path)?.is_none() {
            return Err(Error::invalid(format!("{path} is not under a mount (see `cv mount`)")));
        }
        let mut total = SyncCounts::default();
        let mut dirs = vec![path];
        while let Some(d) = dirs.pop() {
            let c = self.ensure_listed(&d, true).await?;
            total.entries += c.entries;
            total.changed += c.changed;
            total.removed += c.removed;
            let reader = self.reader();
            let Ok(dir) = reader.resolve(&d) else { continue };
            if !dir.is_dir() {
                continue;
            }
            for (name, id) in reader.children(dir.id)? {
                if let Some(i) = reader.inode(id)? {
                    if i.is_dir() && i.listed_ms > 0 {
                        dirs.push(join(&d, &name));
                    }
                }
            }
        }
        Ok(ResyncResponse { entries: total.entries, changed: total.changed, removed: total.removed })
    }

    /// Where a worker finds an uncached block in the UFS.
    pub(crate) async fn do_block_source(&self, r: BlockSourceRequest) -> Result<BlockSourceResponse> {
        let reader = self.reader();
        let gone = || Error::new(ErrorKind::NotFound, format!("block {} is not in the namespace", r.block_id));
        let file = reader.block_file(r.block_id)?.ok_or_else(gone)?;
        let inode = reader.inode(file)?.ok_or_else(gone)?;
        let u = inode.ufs.as_ref().filter(|_| inode.is_ufs_persisted()).ok_or_else(|| {
            Error::new(ErrorKind::NotFound, format!("block {} is not backed by a UFS: no copy is cached", r.block_id))
        })?;
        let mut offset = 0;
        let mut len = None;
        for b in &inode.blocks {
            if b.id == r.block_id {
                len = Some(b.len);
                break;
            }
            offset += b.len;
        }
        let len = len.ok_or_else(gone)?;
        let m = self.mounts.by_id(&self.store, u.mount_id, &format!("block {}", r.block_id))?;
        Ok(BlockSourceResponse {
            mount: Some(mount_info(&m, true)),
            ufs_path: u.rel.clone(),
            offset,
            len,
            etag: u.etag.clone(),
            object_len: u.len,
            path: curvine_common::path::join(&m.path, &u.rel),
        })
    }
}
