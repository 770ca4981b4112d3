//! `FileSystem`: the Rust SDK entry point. Namespace calls go to meta; block
//! bytes go straight between this process and the workers.

use std::sync::Arc;

use curvine_common::config::ClientConf;
use curvine_common::path::normalize;
use curvine_common::proto::{self, FileStatus};
use curvine_common::{Error, ErrorKind, Result};
use curvine_fabric::rdma::auto::AutoTransport;
use curvine_fabric::rdma::RdmaOptions;
use curvine_fabric::tcp::{TcpOptions, TcpTransport};
use curvine_fabric::Transport;

use curvine_common::meta_client::MetaClient;
use crate::pool::ConnPool;
use crate::reader::FileReader;
use crate::writer::FileWriter;

pub(crate) struct Inner {
    pub meta: MetaClient,
    /// For calls that may wait on the UFS (a first listing of a large
    /// prefix, uploads, mount checks): same addresses, a long deadline.
    pub meta_ufs: MetaClient,
    pub pool: Arc<ConnPool>,
    pub conf: ClientConf,
    pub hostname: String,
    pub local: crate::local::LocalReads,
    /// Bytes sequential readers got from read-ahead windows.
    pub ahead_served: std::sync::atomic::AtomicU64,
}

/// A handle to one Curvine cluster. Cheap to clone; share it between tasks.
#[derive(Clone)]
pub struct FileSystem {
    pub(crate) inner: Arc<Inner>,
}

/// Deadline of calls that may wait on a UFS: merging a listing of a
/// million objects, or uploading a large file (write-through close, `sync`).
const UFS_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(900);

/// What a `remove` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Removed {
    /// Inodes removed (a file with other names counts none).
    pub inodes: u64,
    /// The parent directory's mtime (and ctime) and link count right
    /// after, when meta says.
    pub parent: Option<(i64, u32)>,
}

/// Options for `create`.
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    pub overwrite: bool,
    /// Create missing parent directories.
    pub parents: bool,
    /// 0 = the client's configured size, else the cluster default.
    pub block_size: u64,
    pub replication: u32,
    pub mode: u32,
    /// (uid, gid) to own the new file; `None` = root.
    pub owner: Option<(u32, u32)>,
}

impl FileSystem {
    /// Connects lazily: the first call reaches the meta service.
    pub fn new(conf: ClientConf) -> Result<FileSystem> {
        let tcp = TcpOptions {
            chunk_size: conf.chunk_size.0 as usize,
            depth: conf.pipeline_depth,
            io_timeout: conf.timeout,
            verify: conf.verify_checksums,
            ..Default::default()
        };
        // RDMA to the workers that offer it when this host has a device and
        // the build has the feature; TCP otherwise (and to the others).
        let transport: Arc<dyn Transport> = match RdmaOptions::from_conf(&conf.rdma) {
            Some(r) => Arc::new(AutoTransport::detect(tcp, &r)),
            None => Arc::new(TcpTransport::new(tcp)),
        };
        Self::with_transport(conf, transport)
    }

    pub fn with_transport(conf: ClientConf, transport: Arc<dyn Transport>) -> Result<FileSystem> {
        let meta = MetaClient::with_options(conf.meta.clone(), conf.retries, conf.timeout, conf.failover, conf.follower_reads)?;
        let meta_ufs =
            MetaClient::with_options(conf.meta.clone(), conf.retries, conf.timeout.max(UFS_CALL_TIMEOUT), conf.failover, false)?;
        let hostname = hostname();
        // Bounds every exchange with a same-host worker's socket.
        let local = crate::local::LocalReads::new(conf.timeout);
        Ok(FileSystem { inner: Arc::new(Inner { meta, meta_ufs, pool: ConnPool::new(transport), conf, hostname, local, ahead_served: Default::default() }) })
    }

    /// A client for `meta` (`host:port`) with default settings.
    pub fn connect_to(meta: &str) -> Result<FileSystem> {
        Self::new(ClientConf { meta: vec![meta.to_string()], ..Default::default() })
    }

    /// The meta addresses this client talks to.
    pub(crate) fn meta(&self) -> &curvine_common::meta_client::MetaClient {
        &self.inner.meta
    }

    /// The meta client for calls that may wait on a UFS.
    pub(crate) fn meta_ufs(&self) -> &curvine_common::meta_client::MetaClient {
        &self.inner.meta_ufs
    }

    pub fn meta_addrs(&self) -> &[String] {
        self.inner.meta.addrs()
    }

    pub fn conf(&self) -> &ClientConf {
        &self.inner.conf
    }

    /// How many reads went through the same-host short-circuit.
    pub fn local_stats(&self) -> crate::local::LocalStats {
        self.inner.local.stats()
    }

    /// Bytes this client's sequential readers were served from read-ahead
    /// windows (fetched in the background before they asked).
    pub fn read_ahead_bytes(&self) -> u64 {
        self.inner.ahead_served.load(std::sync::atomic::Ordering::Relaxed)
    }

    #[tracing::instrument(skip(self))]
    pub async fn mkdir(&self, path: &str, parents: bool) -> Result<FileStatus> {
        self.mkdir_with(path, parents, 0o755, None).await
    }

    /// `mkdir` with a mode and, optionally, the (uid, gid) that owns the
    /// new directory (FUSE creates on behalf of the calling user).
    pub async fn mkdir_with(&self, path: &str, parents: bool, mode: u32, owner: Option<(u32, u32)>) -> Result<FileStatus> {
        let path = normalize(path)?;
        let r = self
            .inner
            .meta
            .call(|mut c| {
                let (uid, gid) = (owner.map(|o| o.0), owner.map(|o| o.1));
                let req = proto::MkdirRequest { path: path.clone(), parents, mode, uid, gid };
                async move { c.mkdir(req).await }
            })
            .await?;
        r.status.ok_or_else(|| Error::internal("mkdir: empty response"))
    }

    #[tracing::instrument(skip(self))]
    pub async fn stat(&self, path: &str) -> Result<FileStatus> {
        Ok(self.stat_for_read(path, 0).await?.0)
    }

    /// `stat`, and for a regular file of at most `blocks_up_to` blocks a
    /// reader made from the same answer (when meta's leader answered: it
    /// locates the blocks as `open` does). For a caller likely to open
    /// what it stats: one call instead of two.
    pub async fn stat_for_read(&self, path: &str, blocks_up_to: u32) -> Result<(FileStatus, Option<FileReader>)> {
        let path = normalize(path)?;
        let r = self
            .inner
            .meta
            .call(|mut c| {
                let req = proto::StatRequest { path: path.clone(), blocks_up_to };
                async move { c.stat(req).await }
            })
            .await?;
        let status = r.status.ok_or_else(|| Error::internal("stat: empty response"))?;
        let reader = r.located.then(|| FileReader::new(self.clone(), status.clone(), r.blocks));
        Ok((status, reader))
    }

    pub async fn exists(&self, path: &str) -> Result<bool> {
        match self.stat(path).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every entry of directory `path`. Large directories arrive in pages;
    /// use `list_page` to hold one page at a time.
    #[tracing::instrument(skip(self))]
    pub async fn list(&self, path: &str) -> Result<Vec<FileStatus>> {
        let mut all = Vec::new();
        let mut after = String::new();
        loop {
            let (page, more) = self.list_page(path, &after, 0).await?;
            if let Some(last) = page.last() {
                after = last.name.clone();
            }
            all.extend(page);
            if !more || after.is_empty() {
                return Ok(all);
            }
        }
    }

    /// Entries of `path` after the name `start_after` ("" = from the first),
    /// at most `limit` (0 = the server's page size), and whether more follow.
    pub async fn list_page(&self, path: &str, start_after: &str, limit: u32) -> Result<(Vec<FileStatus>, bool)> {
        let path = normalize(path)?;
        let r = self
            .inner
            .meta_ufs
            .call(|mut c| {
                let req = proto::ListRequest { path: path.clone(), start_after: start_after.to_string(), limit };
                async move { c.list(req).await }
            })
            .await?;
        Ok((r.entries, r.more))
    }

    /// Removes `path`; the number of inodes removed.
    pub async fn delete(&self, path: &str, recursive: bool) -> Result<u64> {
        Ok(self.remove(path, recursive).await?.inodes)
    }

    /// `delete`, also saying how it left the parent directory.
    #[tracing::instrument(skip(self))]
    pub async fn remove(&self, path: &str, recursive: bool) -> Result<Removed> {
        let path = normalize(path)?;
        let r = self
            .inner
            .meta
            .call(|mut c| {
                let req = proto::DeleteRequest { path: path.clone(), recursive };
                async move { c.delete(req).await }
            })
            .await?;
        let parent = (r.parent_mtime_ms != 0 && r.parent_nlink != 0).then_some((r.parent_mtime_ms, r.parent_nlink));
        Ok(Removed { inodes: r.deleted_inodes, parent })
    }

    #[tracing::instrument(skip(self))]
    pub async fn rename(&self, src: &str, dst: &str) -> Result<()> {
        let (src, dst) = (normalize(src)?, normalize(dst)?);
        self.inner
            .meta
            .call(|mut c| {
                let req = proto::RenameRequest { src: src.clone(), dst: dst.clone() };
                async move { c.rename(req).await }
            })
            .await?;
        Ok(())
    }

    #[tracing::instrument(skip(self))]
    pub async fn set_attr(&self, path: &str, mode: Option<u32>, mtime_ms: Option<i64>) -> Result<FileStatus> {
        let path = normalize(path)?;
        let r = self
            .inner
            .meta
            .call(|mut c| {
                let req = proto::SetAttrRequest { path: path.clone(), mode, mtime_ms, ..Default::default() };
                async move { c.set_attr(req).await }
            })
            .await?;
        r.status.ok_or_else(|| Error::internal("set_attr: empty response"))
    }

    /// Workers, tiers and capacity, as `cv report` shows them.
    pub async fn report(&self) -> Result<proto::ReportResponse> {
        self.inner.meta.call(|mut c| async move { c.report(proto::ReportRequest {}).await }).await
    }

    #[tracing::instrument(skip(self))]
    pub async fn create(&self, path: &str, opts: CreateOptions) -> Result<FileWriter> {
        let path = normalize(path)?;
        let block_size = if opts.block_size != 0 { opts.block_size } else { self.inner.conf.block_size.0 };
        let r = self
            .inner
            .meta
            .call(|mut c| {
                let req = proto::CreateRequest {
                    path: path.clone(),
                    overwrite: opts.overwrite,
                    block_size,
                    replication: opts.replication,
                    mode: if opts.mode == 0 { 0o644 } else { opts.mode },
                    parents: opts.parents,
                    client_host: self.inner.hostname.clone(),
                    uid: opts.owner.map(|o| o.0),
                    gid: opts.owner.map(|o| o.1),
                };
                async move { c.create(req).await }
            })
            .await?;
        let status = r.status.ok_or_else(|| Error::internal("create: empty response"))?;
        Ok(FileWriter::new(self.clone(), status))
    }

    #[tracing::instrument(skip(self))]
    pub async fn open(&self, path: &str) -> Result<FileReader> {
        let path = normalize(path)?;
        let r = self
            .inner
            .meta
            .call(|mut c| {
                let req = proto::OpenRequest { path: path.clone() };
                async move { c.open(req).await }
            })
            .await?;
        let status = r.status.ok_or_else(|| Error::internal("open: empty response"))?;
        Ok(FileReader::new(self.clone(), status, r.blocks))
    }

    /// A reader from an open result kept with `FileReader::encode`.
    pub fn reader_from(&self, raw: &[u8]) -> Result<FileReader> {
        use prost::Message;
        let r = proto::OpenResponse::decode(raw).map_err(|e| Error::invalid(format!("not a kept open result: {e}")))?;
        let status = r.status.ok_or_else(|| Error::invalid("kept open result without a status"))?;
        Ok(FileReader::new(self.clone(), status, r.blocks))
    }

    /// Opens many files with one meta call per 1,024 paths (a training
    /// batch): one result per path, in order.
    pub async fn open_many(&self, paths: &[String]) -> Result<Vec<Result<FileReader>>> {
        let mut out = Vec::with_capacity(paths.len());
        for group in paths.chunks(1024) {
            let norm: Vec<Result<String>> = group.iter().map(|p| normalize(p)).collect();
            let ok: Vec<String> = norm.iter().filter_map(|p| p.as_ref().ok().cloned()).collect();
            let r = self
                .inner
                .meta
                .call(|mut c| {
                    let req = proto::OpenManyRequest { paths: ok.clone() };
                    async move { c.open_many(req).await }
                })
                .await?;
            if r.results.len() != ok.len() {
                return Err(Error::protocol(format!("open_many: {} results for {} paths", r.results.len(), ok.len())));
            }
            let mut results = r.results.into_iter();
            for p in norm {
                out.push(p.and_then(|_| {
                    let res = results.next().expect("counted above");
                    match res.open {
                        Some(o) if res.error_kind == 0 => {
                            let status = o.status.ok_or_else(|| Error::internal("open_many: empty status"))?;
                            Ok(FileReader::new(self.clone(), status, o.blocks))
                        }
                        // Meta's message names the path.
                        _ => Err(Error::new(ErrorKind::from_code(res.error_kind.min(u16::MAX as u32) as u16), res.error)),
                    }
                }));
            }
        }
        Ok(out)
    }

    /// Gets ready to read `readers` from workers on this host: their blocks'
    /// descriptors are fetched in batches (one round trip per 200 blocks)
    /// instead of one per block at first read. A no-op without short-circuit.
    pub async fn prepare_local(&self, readers: &[&FileReader]) {
        let inner = &self.inner;
        if !inner.conf.short_circuit {
            return;
        }
        let blocks: Vec<_> = readers
            .iter()
            .flat_map(|r| r.blocks())
            .filter(|b| !b.from_ufs)
            .filter_map(|b| b.locations.iter().find(|l| l.hostname == inner.hostname).map(|l| (l, b.id)))
            .collect();
        inner.local.prefetch(&blocks).await;
    }

    /// Takes over the block descriptors (and their mappings) that `parent`
    /// holds for short-circuit reads. Only for a process forked from the one
    /// that made `parent`: fork copies the descriptors and mappings, so a
    /// DataLoader worker starts with every block its parent prepared instead
    /// of asking the worker for each again. Nothing else of `parent` is used
    /// (its connections belong to the parent process).
    pub fn adopt_local_blocks(&self, parent: &FileSystem) {
        self.inner.local.adopt(&parent.inner.local);
    }

    /// Writes `data` as the whole content of `path`.
    pub async fn write_all(&self, path: &str, data: &[u8], overwrite: bool) -> Result<FileStatus> {
        let mut w = self.create(path, CreateOptions { overwrite, ..Default::default() }).await?;
        w.write(data).await?;
        w.close().await
    }

    /// Reads the whole file.
    pub async fn read_all(&self, path: &str) -> Result<Vec<u8>> {
        let r = self.open(path).await?;
        let mut buf = vec![0u8; r.len() as usize];
        let n = r.read_at(0, &mut buf).await?;
        buf.truncate(n);
        Ok(buf)
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // within it or truncates.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if r != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
