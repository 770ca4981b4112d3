//! Read-through caching: a read of a block this worker does not hold asks
//! meta where the block lives in the UFS, loads that range into the top
//! tier with checksums, and then serves it like any cached block.
//!
//! Loads run as their own tasks (a reader that hangs up does not cancel a
//! load other readers wait for) and are coalesced: concurrent misses of one
//! block share one fetch. Readers do not wait for the whole block: the bytes
//! appended so far (checksummed, in the tier's tmp file) are served as soon
//! as they cover the requested range.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;
use std::time::Duration;

use curvine_common::meta_client::MetaClient;
use curvine_common::proto::{
    BlockSourceRequest, BlockSourceResponse, LocatedBlock, MountInfo, PersistDoneRequest, PersistSourceRequest,
    PersistSourceResponse, ResyncRequest,
};
use curvine_common::tier::TierKind;
use curvine_common::{Error, ErrorKind, Result};
use curvine_fabric::frame::CHUNK;
use curvine_fabric::msg::chunk_crcs;
use curvine_fabric::service::{BlockService, BlockSink, ReadSource};
use tokio::sync::watch;
use curvine_ufs::Ufs;
use futures::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;

use crate::store::TieredStore;

/// Bytes gathered before one upload write.
const APPEND: usize = 4 << 20;
/// Bytes gathered before one append to a loading block (whole chunks):
/// also how far ahead of a waiting reader the load must be.
const LOAD_APPEND: usize = 1 << 20;
const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a load waits for meta to clear cold blocks when every tier is full.
const ROOM_WAIT: Duration = Duration::from_secs(5);

type LoadFuture = Shared<BoxFuture<'static, std::result::Result<(), Error>>>;

/// What a block being loaded offers readers before it is sealed.
#[derive(Default)]
struct Partial {
    file: Option<(Arc<File>, u64, TierKind)>,
    /// The block's length, once meta has said where it comes from.
    len: Option<u64>,
    /// Bytes appended: whole chunks, or `len`.
    done: u64,
    crcs: Vec<u32>,
    /// The load ended (sealed or failed); readers go to the store.
    finished: bool,
}

struct LoadState {
    partial: Mutex<Partial>,
    /// Bumped on every change of `partial`.
    signal: watch::Sender<()>,
}

impl LoadState {
    fn update(&self, f: impl FnOnce(&mut Partial)) {
        f(&mut self.partial.lock());
        self.signal.send_replace(());
    }
}

/// Marks a load finished however its task ends (even by a panic).
struct Finish(Arc<LoadState>);

impl Drop for Finish {
    fn drop(&mut self) {
        self.0.update(|p| p.finished = true);
    }
}

pub struct Loader {
    store: Arc<TieredStore>,
    /// Meta, following its leader.
    meta: MetaClient,
    ufs: Mutex<HashMap<u64, (MountInfo, Ufs)>>,
    inflight: Mutex<HashMap<u64, (LoadFuture, Arc<LoadState>)>>,
}

impl Loader {
    pub fn new(store: Arc<TieredStore>, meta: Vec<String>) -> Result<Arc<Loader>> {
        let meta = MetaClient::with_options(meta, 3, RPC_TIMEOUT, std::time::Duration::from_secs(20), false)?;
        Ok(Arc::new(Loader { store, meta, ufs: Default::default(), inflight: Default::default() }))
    }

    /// Resolves once `block` is cached here (or the load failed).
    pub fn load(self: &Arc<Self>, block: u64) -> BoxFuture<'static, Result<()>> {
        self.start(block).0.boxed()
    }

    /// Resolves once bytes `..end` of `block` can be read: from the block
    /// being loaded while it is still arriving, or from the store.
    pub fn load_until(self: &Arc<Self>, block: u64, end: u64) -> BoxFuture<'static, Result<ReadSource>> {
        let (load, state) = self.start(block);
        let store = self.store.clone();
        async move {
            // Subscribed before looking, so no change is missed.
            let mut rx = state.signal.subscribe();
            loop {
                {
                    let p = state.partial.lock();
                    if p.finished {
                        break;
                    }
                    if let (Some(len), Some((file, base, tier))) = (p.len, &p.file) {
                        // A complete block is about to be sealed: wait for that.
                        if p.done >= end.min(len) && p.done < len {
                            store.metrics().reads_while_loading.inc();
                            let (file, base, len, tier) = (file.clone(), *base, p.done, *tier);
                            return Ok(ReadSource { file, base, len, crcs: p.crcs.clone().into(), tier });
                        }
                    }
                }
                if rx.changed().await.is_err() {
                    break;
                }
            }
            load.await?;
            store.open_read(block)
        }
        .boxed()
    }

    fn start(self: &Arc<Self>, block: u64) -> (LoadFuture, Arc<LoadState>) {
        let mut g = self.inflight.lock();
        if let Some((f, st)) = g.get(&block) {
            return (f.clone(), st.clone());
        }
        let state = Arc::new(LoadState { partial: Default::default(), signal: watch::channel(()).0 });
        let me = self.clone();
        let st = state.clone();
        let task = tokio::spawn(async move {
            let _finish = Finish(st.clone());
            let res = me.fetch(block, &st).await;
            me.inflight.lock().remove(&block);
            let m = me.store.metrics();
            match &res {
                Ok(_) => {
                    m.ufs_loads.inc();
                }
                Err(e) => {
                    m.ufs_load_errors.inc();
                    tracing::warn!(block, error = %e, "UFS load failed");
                }
            }
            res
        });
        let fut: LoadFuture = async move {
            task.await.unwrap_or_else(|e| Err(Error::internal(format!("block {block}: load task failed: {e}"))))
        }
        .boxed()
        .shared();
        g.insert(block, (fut.clone(), state.clone()));
        (fut, state)
    }

    async fn source(&self, block: u64) -> Result<BlockSourceResponse> {
        self.meta.call(|mut c| async move { c.block_source(BlockSourceRequest { block_id: block }).await }).await
    }

    async fn persist_source(&self, file: u64) -> Result<PersistSourceResponse> {
        self.meta.call(|mut c| async move { c.persist_source(PersistSourceRequest { file_id: file }).await }).await
    }

    /// Uploads file `file` to its UFS: blocks held here are read from the
    /// store (checksums verified), others fetched from their workers; then
    /// meta learns the object's new version.
    pub async fn persist(&self, file: u64) -> Result<()> {
        let src = self.persist_source(file).await?;
        let mount = src.mount.as_ref().ok_or_else(|| Error::protocol(format!("file {file}: meta sent no mount")))?;
        let ufs = self.ufs_for(mount)?;
        let mut w = ufs.writer(&src.ufs_path).await?;
        let mut sent = 0u64;
        for b in &src.blocks {
            let res = if self.store.contains(b.id) { self.send_local(b.id, b.len, &mut w).await } else { self.send_remote(b, &mut w).await };
            if let Err(e) = res {
                let _ = w.abort().await;
                return Err(e.context(format!("{} (file {file})", src.path)));
            }
            sent += b.len;
        }
        if sent != src.len {
            let _ = w.abort().await;
            return Err(Error::new(ErrorKind::Corrupt, format!("{}: blocks hold {sent} bytes, file is {}", src.path, src.len)));
        }
        let e = w.close().await?;
        let done =
            PersistDoneRequest { file_id: file, len: src.len, etag: e.etag, mtime_ms: e.mtime_ms, ufs_path: src.ufs_path.clone() };
        self.meta
            .call(|mut c| {
                let done = done.clone();
                async move { c.persist_done(done).await }
            })
            .await?;
        self.store.metrics().ufs_uploads.inc();
        self.store.metrics().bytes_to_ufs.inc_by(src.len);
        tracing::debug!(file, path = %src.path, len = src.len, "uploaded to the UFS");
        Ok(())
    }

    async fn send_local(&self, block: u64, len: u64, w: &mut curvine_ufs::UfsWriter) -> Result<()> {
        let src = self.store.open_read(block)?;
        if src.len != len {
            return Err(Error::new(ErrorKind::Corrupt, format!("block {block}: {} bytes here, {len} recorded", src.len)));
        }
        let mut off = 0u64;
        while off < len {
            let n = (len - off).min(APPEND as u64) as usize;
            let mut buf = vec![0u8; n];
            src.read_exact_at(&mut buf, off)?;
            let first = (off / CHUNK) as usize;
            for (i, chunk) in buf.chunks(CHUNK as usize).enumerate() {
                if src.crcs.get(first + i) != Some(&curvine_fabric::crc::crc32c(chunk)) {
                    return Err(Error::new(
                        ErrorKind::Corrupt,
                        format!("block {block}: checksum mismatch at offset {}", off + (i as u64) * CHUNK),
                    ));
                }
            }
            w.write(bytes::Bytes::from(buf)).await?;
            off += n as u64;
        }
        Ok(())
    }

    async fn send_remote(&self, b: &LocatedBlock, w: &mut curvine_ufs::UfsWriter) -> Result<()> {
        use curvine_fabric::Transport;
        let mut last = Error::unavailable(format!("block {}: no worker holds it", b.id));
        for loc in &b.locations {
            let t = curvine_fabric::tcp::TcpTransport::new(Default::default());
            let mut conn = match t.connect(&loc.addr).await {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let mut off = 0u64;
            let res: Result<()> = async {
                while off < b.len {
                    let n = (b.len - off).min(APPEND as u64) as usize;
                    let mut buf = vec![0u8; n];
                    let got = conn.read_into(b.id, off, &mut buf).await?;
                    if got != n {
                        return Err(Error::new(ErrorKind::Corrupt, format!("block {}: short read at {off}", b.id)));
                    }
                    w.write(bytes::Bytes::from(buf)).await?;
                    off += n as u64;
                }
                Ok(())
            }
            .await;
            match res {
                Ok(()) => return Ok(()),
                // Bytes already went to the writer: cannot switch replicas midway.
                Err(e) if off > 0 => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn ufs_for(&self, m: &MountInfo) -> Result<Ufs> {
        let mut g = self.ufs.lock();
        if let Some((known, u)) = g.get(&m.id) {
            if known == m {
                return Ok(u.clone());
            }
        }
        let options = m.options.clone().into_iter().collect();
        let u = Ufs::new(&m.uri, &options)?;
        g.insert(m.id, (m.clone(), u.clone()));
        Ok(u)
    }

    async fn fetch(&self, block: u64, state: &LoadState) -> Result<()> {
        if self.store.contains(block) {
            return Ok(()); // a load finished between the miss and now
        }
        let src = self.source(block).await?;
        let mount = src.mount.as_ref().ok_or_else(|| Error::protocol(format!("block {block}: meta sent no mount")))?;
        let ufs = self.ufs_for(mount)?;
        let what = format!("block {block} ({}/{} @{})", mount.uri.trim_end_matches('/'), src.ufs_path, src.offset);
        // A cache full of blocks meta has not cleared for eviction yet: ask
        // about the coldest and try again, until ROOM_WAIT has passed.
        let deadline = tokio::time::Instant::now() + ROOM_WAIT;
        let sink = loop {
            match self.store.open_write(block, src.len, 0) {
                Err(e) if e.kind() == ErrorKind::NoSpace && tokio::time::Instant::now() < deadline => {
                    self.store.request_room(src.len, deadline - tokio::time::Instant::now()).await;
                }
                other => break other?,
            }
        };
        state.update(|p| {
            p.file = sink.partial().map(|f| (f, sink.base(), sink.tier()));
            p.len = Some(src.len);
        });
        match self.copy(&ufs, &src, sink, state).await {
            Ok(()) => {
                tracing::debug!(block, len = src.len, "loaded from UFS");
                Ok(())
            }
            Err(e) => {
                self.resync_if_changed(&ufs, &src).await;
                Err(e.context(what))
            }
        }
    }

    /// After a failed load: if the object is no longer the version meta
    /// holds, ask meta to re-read it now, so the next open sees the new
    /// version instead of failing until the sync interval ends.
    async fn resync_if_changed(&self, ufs: &Ufs, src: &BlockSourceResponse) {
        let now = match ufs.stat(&src.ufs_path).await {
            Ok(e) => e,
            Err(_) => return, // the UFS is unwell, not changed: nothing to tell
        };
        let changed = match &now {
            None => true,
            Some(e) => e.len != src.object_len || (!src.etag.is_empty() && e.etag != src.etag),
        };
        if !changed || src.path.is_empty() {
            return;
        }
        let path = src.path.clone();
        let asked = self.meta.call(|mut c| {
            let path = path.clone();
            async move { c.resync(ResyncRequest { path }).await }
        });
        match asked.await {
            Ok(_) => tracing::info!(path = %src.path, "object changed in the UFS: asked meta to resync it"),
            Err(e) => tracing::warn!(path = %src.path, error = %e, "cannot ask meta to resync a changed object"),
        }
    }

    async fn copy(
        &self,
        ufs: &Ufs,
        src: &BlockSourceResponse,
        mut sink: Box<dyn BlockSink>,
        state: &LoadState,
    ) -> Result<()> {
        let etag = (!src.etag.is_empty()).then_some(src.etag.as_str());
        let mut rd = match ufs.read(&src.ufs_path, src.offset, src.len, etag).await {
            Ok(r) => r,
            Err(e) => {
                sink.abort();
                return Err(e);
            }
        };
        let mut pending: Vec<u8> = Vec::with_capacity(LOAD_APPEND + CHUNK as usize);
        let mut off = 0u64;
        let mut append = |off: &mut u64, data: &[u8]| -> Result<()> {
            let crcs = chunk_crcs(data);
            sink.append(*off, data, &crcs)?;
            *off += data.len() as u64;
            let done = *off;
            state.update(|p| {
                p.done = done;
                p.crcs.extend_from_slice(&crcs);
            });
            Ok(())
        };
        let res: Result<()> = async {
            while let Some(piece) = rd.next().await? {
                self.store.metrics().bytes_from_ufs.inc_by(piece.len() as u64);
                pending.extend_from_slice(&piece);
                if pending.len() >= LOAD_APPEND {
                    let n = pending.len() / CHUNK as usize * CHUNK as usize;
                    append(&mut off, &pending[..n])?;
                    pending.drain(..n);
                }
            }
            if !pending.is_empty() {
                append(&mut off, &pending)?;
            }
            if off != src.len {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!("the UFS returned {off} bytes, expected {}: the object changed; retry", src.len),
                ));
            }
            Ok(())
        }
        .await;
        match res {
            Ok(()) => sink.commit(src.len).map(|_| ()),
            Err(e) => {
                sink.abort();
                Err(e)
            }
        }
    }
}

/// The worker's data-plane service: the tiered store, filled from the UFS
/// on a miss.
pub struct CachingService {
    pub store: Arc<TieredStore>,
    pub loader: Arc<Loader>,
}

impl BlockService for CachingService {
    fn open_read(&self, block_id: u64) -> Result<ReadSource> {
        self.store.open_read(block_id)
    }

    fn join(&self, ids: &[u64]) -> Result<()> {
        self.store.join(ids)
    }

    fn open_write(&self, block_id: u64, len_hint: u64, after: u64) -> Result<Box<dyn BlockSink>> {
        self.store.open_write(block_id, len_hint, after)
    }

    fn load(&self, block_id: u64) -> Option<BoxFuture<'static, Result<()>>> {
        Some(self.loader.load(block_id))
    }

    fn load_until(self: Arc<Self>, block_id: u64, end: u64) -> Option<BoxFuture<'static, Result<ReadSource>>> {
        Some(self.loader.load_until(block_id, end))
    }

    fn persist(&self, file_id: u64) -> Option<BoxFuture<'static, Result<()>>> {
        let loader = self.loader.clone();
        // Its own task: an upload is not abandoned halfway when meta's
        // connection drops.
        let task = tokio::spawn(async move { loader.persist(file_id).await });
        Some(
            async move { task.await.unwrap_or_else(|e| Err(Error::internal(format!("file {file_id}: upload task failed: {e}")))) }
                .boxed(),
        )
    }

    fn verify(&self, block_id: u64) -> Result<bool> {
        self.store.verify(block_id)
    }

    fn on_read(&self, block_id: u64, bytes: u64, loaded: bool) {
        self.store.on_read(block_id, bytes, loaded);
        let m = self.store.metrics();
        if loaded {
            m.cache_misses.inc();
        } else {
            m.cache_hits.inc();
            m.bytes_from_cache.inc_by(bytes);
        }
    }
}
