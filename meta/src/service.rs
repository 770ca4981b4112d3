//! The gRPC `MetaService`: mutations are proposed through Raft (with times
//! filled in here so every replica applies the same command, grouped by
//! `Proposer`, and deduplicated by the caller's request id); reads go to
//! the state machine's database directly, after the leader check of
//! `leader.rs`.
//!
//! Handlers' spans are at debug level: at the servers' default (info) every
//! call otherwise formatted its whole request into a span (1.5 % of the
//! server's CPU in a create storm).

use std::sync::Arc;
use std::time::Instant;

use curvine_common::config::Config;
use curvine_common::path::{join, normalize};
use curvine_common::proto::meta_service_server::MetaService;
use curvine_common::proto::*;
use curvine_common::{now_ms, Error, ErrorKind, Result};
use tonic::{Request, Response, Status};

use crate::metrics::Metrics;
use crate::leader::{ReadBarrier, Role};
use crate::namespace::{MetaCommand, Outcome, RequestId};
use crate::propose::Proposer;
use crate::raft::types::Raft;
use crate::store::{BlockMeta, Inode, InodeKind, Persist, Reader, StateStore, KEY_DIRS, KEY_FILES};
use crate::workers::{Reported, Workers};

/// The meta service state shared by all handlers.
pub struct MetaServiceImpl {
    pub raft: Raft,
    /// This member's Raft id.
    pub id: u64,
    pub proposer: Proposer,
    pub barrier: ReadBarrier,
    /// When this member last heard from its group (`contact.rs`).
    pub contact: Arc<crate::contact::Contact>,
    pub mounts: crate::mounts::Mounts,
    pub jobs: crate::jobs::Jobs,
    pub persister: crate::persist::Persister,
    pub store: Arc<StateStore>,
    pub workers: Arc<Workers>,
    /// Lock sessions' leases (`locks.rs`).
    pub locks: crate::locks::Leases,
    pub conf: Arc<Config>,
    pub metrics: Metrics,
}

fn status_of(inode: &Inode, path: &str, children: u64) -> FileStatus {
    FileStatus {
        id: inode.id,
        path: path.to_string(),
        // The name this status was reached by (a hard-linked file has several).
        name: match path.rsplit_once('/') {
            Some((_, n)) if !n.is_empty() => n.to_string(),
            _ => inode.name.clone(),
        },
        kind: match inode.kind {
            InodeKind::Dir => FileKind::Dir as i32,
            InodeKind::File => FileKind::File as i32,
            InodeKind::Symlink => FileKind::Symlink as i32,
            InodeKind::Fifo => FileKind::Fifo as i32,
            InodeKind::Socket => FileKind::Socket as i32,
            InodeKind::CharDev => FileKind::CharDev as i32,
            InodeKind::BlockDev => FileKind::BlockDev as i32,
        },
        len: inode.len,
        mode: inode.mode,
        mtime_ms: inode.mtime_ms,
        ctime_ms: inode.ctime_ms,
        block_size: inode.block_size,
        replication: inode.replication,
        complete: inode.complete,
        children,
        ufs_state: match &inode.ufs {
            Some(u) if !inode.is_dir() => match u.persist {
                Persist::Persisted => "persisted".into(),
                Persist::Pending => "pending".into(),
            },
            _ => String::new(),
        },
        pinned: inode.pinned,
        mount_uri: String::new(),
        uid: inode.uid,
        gid: inode.gid,
        target: inode.target.clone(),
        rdev: inode.rdev,
        nlink: inode.nlink,
    }
}

/// `cmd`, made to record `uid`/`gid` as the owner of what it creates when
/// the client named one.
fn owned(cmd: MetaCommand, uid: Option<u32>, gid: Option<u32>) -> MetaCommand {
    match (uid, gid) {
        (Some(uid), Some(gid)) => MetaCommand::Owned { uid, gid, cmd: Box::new(cmd) },
        _ => cmd,
    }
}

/// Entries per `List` page when the client does not ask for a size.
const LIST_PAGE: usize = 1000;

impl MetaServiceImpl {
    pub(crate) fn reader(&self) -> Reader {
        Reader { db: self.store.db() }
    }

    /// Proposes `cmd` and waits until it is applied here. Within a client
    /// call that named itself, each write is applied once per request id.
    pub(crate) async fn write(&self, cmd: MetaCommand) -> Result<Outcome> {
        let cmd = match CALL.try_with(|c| c.next_id()).ok().flatten() {
            Some(id) => MetaCommand::Once { id, now_ms: now_ms(), cmd: Box::new(cmd) },
            None => cmd,
        };
        self.propose(cmd).await
    }

    /// Proposes a merge of what a UFS said (`UfsUpsert`, `UfsRemove`,
    /// `UfsSync*`): applying one twice does no harm, so it carries no request
    /// id. Its answer must not be replayed either: a retried listing stamps
    /// its pages with its own `gen`, and replaying the first attempt's pages
    /// would leave them at the old one, for the retry's `UfsSyncEnd` to
    /// remove. And whether a call makes such a write depends on the time
    /// (is the entry stale?), so they must not take sub-ids the call's
    /// other writes would get on one attempt and not on its retry.
    pub(crate) async fn merge(&self, cmd: MetaCommand) -> Result<Outcome> {
        self.propose(cmd).await
    }

    async fn propose(&self, cmd: MetaCommand) -> Result<Outcome> {
        let res = self.proposer.propose(cmd).await;
        if let Ok(Outcome::Freed { blocks, .. }) = &res {
            self.workers.free_blocks(blocks);
        }
        res
    }

    pub(crate) fn dir_status(&self, inode: &Inode, path: &str) -> Result<FileStatus> {
        let children = if inode.is_dir() { self.reader().count_children(inode.id)? } else { 0 };
        let mut st = status_of(inode, path, children);
        if inode.mount_id != 0 {
            if let Some(m) = self.mounts.table(&self.store)?.iter().find(|m| m.id == inode.mount_id) {
                st.mount_uri = m.uri.clone();
            }
        }
        Ok(st)
    }

    fn outcome_inode(out: Outcome) -> Result<Inode> {
        match out {
            Outcome::Inode(i) | Outcome::Freed { inode: Some(i), .. } | Outcome::Block { file: i, .. } => Ok(i),
            other => Err(Error::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn do_mkdir(&self, r: MkdirRequest) -> Result<MkdirResponse> {
        let path = normalize(&r.path)?;
        let mode = if r.mode == 0 { 0o755 } else { r.mode };
        let cmd = MetaCommand::Mkdir { path: path.clone(), parents: r.parents, mode, now_ms: now_ms() };
        let out = self.write(owned(cmd, r.uid, r.gid)).await?;
        let inode = Self::outcome_inode(out)?;
        Ok(MkdirResponse { status: Some(self.dir_status(&inode, &path)?) })
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn do_create(&self, r: CreateRequest) -> Result<CreateResponse> {
        let path = normalize(&r.path)?;
        let block_size = if r.block_size == 0 { self.conf.cluster.block_size.0 } else { r.block_size };
        let replication = if r.replication == 0 { self.conf.cluster.replication } else { r.replication };
        if replication == 0 || replication > 16 {
            return Err(Error::invalid(format!("{path}: replication {replication} must be between 1 and 16")));
        }
        // Data-plane frames and checksums work in 64 KiB chunks.
        if block_size < 64 << 10 || block_size > 4 << 30 || block_size % (64 << 10) != 0 {
            return Err(Error::invalid(format!(
                "{path}: block size {block_size} must be a multiple of 64 KiB between 64 KiB and 4 GiB"
            )));
        }
        let mode = if r.mode == 0 { 0o644 } else { r.mode };
        let cmd = MetaCommand::Create {
            path: path.clone(),
            overwrite: r.overwrite,
            parents: r.parents,
            block_size,
            replication,
            mode,
            now_ms: now_ms(),
        };
        // Created complete and empty: a writer that closes without a byte
        // needs no second command (`status.complete` tells it so).
        let cmd = MetaCommand::CreateSealed { cmd: Box::new(cmd) };
        let inode = Self::outcome_inode(self.write(owned(cmd, r.uid, r.gid)).await?)?;
        Ok(CreateResponse { status: Some(status_of(&inode, &path, 0)) })
    }

    fn file_for_write(&self, file_id: u64, path: &str) -> Result<(Inode, String)> {
        let reader = self.reader();
        let path = if path.is_empty() { String::new() } else { normalize(path)? };
        let inode = if file_id != 0 { reader.inode(file_id)? } else { Some(reader.resolve(&path)?) };
        let name = if path.is_empty() { format!("file {file_id}") } else { path.clone() };
        let inode = inode.ok_or_else(|| Error::not_found(&name))?;
        if inode.is_dir() {
            return Err(Error::is_dir(&name));
        }
        Ok((inode, path))
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn do_add_block(&self, r: AddBlockRequest) -> Result<AddBlockResponse> {
        let (file, path) = self.file_for_write(r.file_id, &r.path)?;
        let locations =
            self.workers.place(file.block_size, &r.client_host, &r.exclude_workers, file.replication as usize)?;
        match self.write(MetaCommand::AddBlock { file_id: file.id, path }).await? {
            Outcome::Block { block_id, offset, .. } => {
                Ok(AddBlockResponse { block: Some(LocatedBlock { id: block_id, offset, len: 0, locations, from_ufs: false }) })
            }
            other => Err(Error::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn do_complete(&self, r: CompleteRequest) -> Result<CompleteResponse> {
        let (file, path) = self.file_for_write(r.file_id, &r.path)?;
        let blocks = r.blocks.iter().map(|b| BlockMeta { id: b.id, len: b.len }).collect();
        let cmd = MetaCommand::Complete { file_id: file.id, path: path.clone(), blocks, len: r.len, now_ms: now_ms() };
        let inode = Self::outcome_inode(self.write(cmd).await?)?;
        for b in &r.blocks {
            self.workers.add_locations(b.id, &b.worker_ids);
        }
        let persist_now = self.write_through(&inode)?;
        Ok(CompleteResponse { status: Some(status_of(&inode, &path, 0)), persist_now })
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn do_abort(&self, r: AbortRequest) -> Result<AbortResponse> {
        let path = normalize(&r.path)?;
        self.write(MetaCommand::Abort { file_id: r.file_id, path }).await?;
        Ok(AbortResponse {})
    }

    /// At most this many paths per `OpenMany`.
    const OPEN_MANY_MAX: usize = 4096;

    #[tracing::instrument(level = "debug", skip_all, fields(paths = r.paths.len()))]
    async fn do_open_many(&self, r: OpenManyRequest) -> Result<OpenManyResponse> {
        if r.paths.len() > Self::OPEN_MANY_MAX {
            return Err(Error::invalid(format!(
                "open_many: {} paths in one call, at most {} allowed",
                r.paths.len(),
                Self::OPEN_MANY_MAX
            )));
        }
        let mut results = Vec::with_capacity(r.paths.len());
        for path in r.paths {
            results.push(match self.do_open(OpenRequest { path }).await {
                Ok(o) => OpenResult { open: Some(o), error_kind: 0, error: String::new() },
                // The whole call is retried (e.g. workers re-registering
                // after a leader change), not reported per file.
                Err(e) if e.is_temporary() => return Err(e),
                Err(e) => OpenResult { open: None, error_kind: u32::from(e.kind().code()), error: e.message().to_string() },
            });
        }
        Ok(OpenManyResponse { results })
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn do_open(&self, r: OpenRequest) -> Result<OpenResponse> {
        let path = normalize(&r.path)?;
        self.ensure_entry(&path, false).await?;
        let inode = self.reader().resolve(&path)?;
        if inode.is_dir() {
            return Err(Error::is_dir(&path));
        }
        if inode.kind == InodeKind::Symlink {
            return Err(Error::invalid(format!("{path}: is a symbolic link (to {}); open its target", inode.target)));
        }
        if inode.kind.is_special() {
            return Err(Error::invalid(format!("{path}: is a {:?}, which holds no bytes to read", inode.kind)));
        }
        let blocks = self.locate(&inode, &path)?;
        Ok(OpenResponse { status: Some(status_of(&inode, &path, 0)), blocks })
    }

    /// The blocks of the file `inode` at `path`, each with the workers that
    /// hold it (or, when none does and the file is in its UFS, the worker
    /// to load it).
    fn locate(&self, inode: &Inode, path: &str) -> Result<Vec<LocatedBlock>> {
        let mut offset = 0;
        let mut blocks = Vec::with_capacity(inode.blocks.len());
        let in_ufs = inode.is_ufs_persisted();
        for b in &inode.blocks {
            let mut lb =
                LocatedBlock { id: b.id, offset, len: b.len, locations: self.workers.locations(b.id), from_ufs: false };
            if lb.locations.is_empty() && !in_ufs {
                if let Some(e) = self.workers.settling() {
                    return Err(e.context(&path));
                }
            }
            if lb.locations.is_empty() && in_ufs {
                let loader = self.workers.loader_for(b.id).ok_or_else(|| {
                    Error::unavailable(format!("{path}: not cached and no live worker to load it from the UFS"))
                })?;
                lb.locations.push(loader);
                lb.from_ufs = true;
            }
            blocks.push(lb);
            offset += if inode.complete { b.len } else { inode.block_size };
        }
        Ok(blocks)
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn do_stat(&self, r: StatRequest) -> Result<StatResponse> {
        let path = normalize(&r.path)?;
        self.ensure_entry(&path, false).await?;
        let inode = self.reader().resolve(&path)?;
        let status = Some(self.dir_status(&inode, &path)?);
        let wanted = r.blocks_up_to > 0 && inode.kind == InodeKind::File && inode.blocks.len() <= r.blocks_up_to as usize;
        if wanted && matches!(crate::leader::role(&self.raft, self.id), Role::Leader { .. }) {
            // Blocks that cannot be placed now (workers settling, no
            // loader) are left to the caller's open, which says why.
            if let Ok(blocks) = self.locate(&inode, &path) {
                return Ok(StatResponse { status, located: true, blocks });
            }
        }
        Ok(StatResponse { status, located: false, blocks: Vec::new() })
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn do_list(&self, r: ListRequest) -> Result<ListResponse> {
        let path = normalize(&r.path)?;
        // A listing under a mount merges the UFS's entries first (the first page only).
        if r.start_after.is_empty() {
            self.ensure_listed(&path, false).await?;
        }
        let reader = self.reader();
        let dir = reader.resolve(&path)?;
        if !dir.is_dir() {
            return Err(Error::not_dir(&path));
        }
        let limit = if r.limit == 0 { LIST_PAGE } else { (r.limit as usize).min(100_000) };
        let page = reader.children_page(dir.id, &r.start_after, limit + 1)?;
        let more = page.len() > limit;
        let mut entries = Vec::with_capacity(page.len().min(limit));
        for (name, id) in page.into_iter().take(limit) {
            let p = join(&path, &name);
            // Removed after the page was read: not listed.
            if let Some(inode) = reader.listed_inode(dir.id, &name, id, &p)? {
                entries.push(status_of(&inode, &p, 0));
            }
        }
        Ok(ListResponse { entries, more })
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn do_delete(&self, r: DeleteRequest) -> Result<DeleteResponse> {
        let path = normalize(&r.path)?;
        // Under a mount that writes to its UFS, the UFS copy goes first: a
        // failure there leaves both sides as they were.
        self.delete_in_ufs(&path, r.recursive).await?;
        let parent = curvine_common::path::split(&path).map(|(p, _)| p.to_string());
        let deleted_inodes = match self.write(MetaCommand::Delete { path, recursive: r.recursive, now_ms: now_ms() }).await? {
            Outcome::Freed { inodes, .. } => inodes,
            _ => 0,
        };
        // The parent as the delete left it (applied here before `write`
        // returned; a retried call's first attempt stamped its own time).
        let parent = parent.and_then(|p| self.reader().resolve(&p).ok()).filter(|p| p.is_dir());
        Ok(DeleteResponse {
            deleted_inodes,
            parent_mtime_ms: parent.as_ref().map_or(0, |p| p.mtime_ms),
            parent_nlink: parent.map_or(0, |p| p.nlink),
        })
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn do_rename(&self, r: RenameRequest) -> Result<RenameResponse> {
        let src = normalize(&r.src)?;
        let dst = normalize(&r.dst)?;
        let cmd = self.rename_in_ufs(&src, &dst, now_ms()).await?;
        self.write(cmd).await?;
        Ok(RenameResponse {})
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn do_set_attr(&self, r: SetAttrRequest) -> Result<SetAttrResponse> {
        let path = normalize(&r.path)?;
        let mut inode = None;
        if r.uid.is_some() || r.gid.is_some() {
            let cmd = MetaCommand::Chown { path: path.clone(), uid: r.uid, gid: r.gid, now_ms: now_ms() };
            inode = Some(Self::outcome_inode(self.write(cmd).await?)?);
        }
        if r.mode.is_some() || r.mtime_ms.is_some() || inode.is_none() {
            let set = MetaCommand::SetAttr { path: path.clone(), mode: r.mode, mtime_ms: r.mtime_ms };
            let cmd = MetaCommand::Timed { now_ms: now_ms(), cmd: Box::new(set) };
            inode = Some(Self::outcome_inode(self.write(cmd).await?)?);
        }
        let inode = inode.ok_or_else(|| Error::internal("set_attr changed nothing"))?;
        Ok(SetAttrResponse { status: Some(self.dir_status(&inode, &path)?) })
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn do_symlink(&self, r: SymlinkRequest) -> Result<SymlinkResponse> {
        let path = normalize(&r.path)?;
        let cmd = MetaCommand::Symlink { path: path.clone(), target: r.target, now_ms: now_ms() };
        let inode = Self::outcome_inode(self.write(owned(cmd, r.uid, r.gid)).await?)?;
        Ok(SymlinkResponse { status: Some(status_of(&inode, &path, 0)) })
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn do_link(&self, r: LinkRequest) -> Result<LinkResponse> {
        let (src, dst) = (normalize(&r.src)?, normalize(&r.dst)?);
        let cmd = MetaCommand::Link { src, dst: dst.clone(), now_ms: now_ms() };
        let inode = Self::outcome_inode(self.write(cmd).await?)?;
        Ok(LinkResponse { status: Some(status_of(&inode, &dst, 0)) })
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn do_mknod(&self, r: MknodRequest) -> Result<MknodResponse> {
        let path = normalize(&r.path)?;
        let kind = match FileKind::try_from(r.kind) {
            Ok(FileKind::Fifo) => InodeKind::Fifo,
            Ok(FileKind::Socket) => InodeKind::Socket,
            Ok(FileKind::CharDev) => InodeKind::CharDev,
            Ok(FileKind::BlockDev) => InodeKind::BlockDev,
            _ => return Err(Error::invalid(format!("{path}: mknod makes FIFOs, sockets and devices (kind {})", r.kind))),
        };
        let cmd = MetaCommand::Mknod { path: path.clone(), kind, mode: r.mode, rdev: r.rdev, now_ms: now_ms() };
        let inode = Self::outcome_inode(self.write(owned(cmd, r.uid, r.gid)).await?)?;
        Ok(MknodResponse { status: Some(status_of(&inode, &path, 0)) })
    }

    #[tracing::instrument(level = "debug", skip(self, r), fields(path = %r.path, op = r.op, name = %r.name))]
    async fn do_xattr(&self, r: XattrRequest) -> Result<XattrResponse> {
        let path = normalize(&r.path)?;
        let none = || Error::new(ErrorKind::NotFound, format!("{path}: no attribute {}", r.name));
        match r.op {
            0 => {
                let inode = self.reader().resolve(&path)?;
                let v = inode.xattrs.iter().find(|(n, _)| *n == r.name).ok_or_else(none)?;
                Ok(XattrResponse { value: v.1.clone(), names: vec![] })
            }
            1 | 2 => {
                crate::namespace::attrs::check_xattr(&path, &r.name, r.value.len())?;
                let value = (r.op == 1).then_some(r.value);
                let set = MetaCommand::SetXattr { path, name: r.name, value, flags: r.flags };
                self.write(MetaCommand::Timed { now_ms: now_ms(), cmd: Box::new(set) }).await?;
                Ok(XattrResponse::default())
            }
            3 => {
                let inode = self.reader().resolve(&path)?;
                Ok(XattrResponse { value: vec![], names: inode.xattrs.into_iter().map(|(n, _)| n).collect() })
            }
            op => Err(Error::invalid(format!("xattr: unknown op {op}"))),
        }
    }

    fn reported(&self, blocks: Vec<ReportedBlock>) -> Result<Vec<Reported>> {
        let reader = self.reader();
        blocks.into_iter().map(|b| Ok(Reported { known: reader.block_exists(b.id)?, id: b.id, tier: b.tier })).collect()
    }

    #[tracing::instrument(level = "debug", skip(self, r), fields(worker = r.worker.as_ref().map(|w| w.id), blocks = r.blocks.len()))]
    async fn do_register(&self, r: RegisterWorkerRequest) -> Result<RegisterWorkerResponse> {
        let info = r.worker.ok_or_else(|| Error::invalid("register: worker info missing"))?;
        let blocks = self.reported(r.blocks)?;
        let ids: Vec<u64> = blocks.iter().filter(|b| b.known).map(|b| b.id).collect();
        let id = info.id;
        tracing::info!(worker = id, addr = %info.addr, "worker registered");
        self.workers.register(info, blocks)?;
        let reader = self.reader();
        let want = |b: u64| {
            reader.block_file(b).ok().flatten().and_then(|f| reader.inode(f).ok().flatten()).map(|f| f.replication).unwrap_or(1)
        };
        let trimmed = self.workers.trim_extra_copies(id, &ids, want);
        if !trimmed.is_empty() {
            tracing::info!(worker = id, blocks = trimmed.len(), "dropping copies beyond their files' replication");
        }
        self.metrics.workers_alive.set(self.workers.alive_count() as i64);
        Ok(RegisterWorkerResponse { heartbeat_interval_ms: self.conf.worker.heartbeat_interval.as_millis() as u64 })
    }

    #[tracing::instrument(level = "debug", skip(self, r), fields(worker = r.worker_id))]
    async fn do_heartbeat(&self, r: HeartbeatRequest) -> Result<HeartbeatResponse> {
        let added = self.reported(r.added)?;
        let evictable = self.evictable(&r.evict_candidates)?;
        let resp = match self.workers.heartbeat(r.worker_id, r.tiers, r.cache, added, &r.removed) {
            Some((delete_blocks, replicate)) => {
                HeartbeatResponse { reregister: false, delete_blocks, evictable, replicate }
            }
            None => HeartbeatResponse { reregister: true, ..Default::default() },
        };
        self.metrics.workers_alive.set(self.workers.alive_count() as i64);
        let cache = self.workers.cache_totals();
        self.metrics.cache_hits.set(cache.hits as i64);
        self.metrics.cache_misses.set(cache.misses as i64);
        Ok(resp)
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn do_report_corrupt(&self, r: ReportCorruptRequest) -> Result<ReportCorruptResponse> {
        // Only a copy the block can do without: the UFS has the file, or
        // another worker has a copy. The last copy of a cache-only block
        // stays (its good chunks still read).
        let reader = self.reader();
        let in_ufs = reader.block_file(r.block_id)?.and_then(|f| reader.inode(f).ok().flatten()).is_some_and(|f| f.is_ufs_persisted());
        let others = self.workers.locations(r.block_id).iter().any(|l| l.worker_id != r.worker_id);
        // (The copy may be too new for meta to know of it yet: a block just
        // loaded is reported with the next heartbeat.)
        let dropped = in_ufs || others;
        if dropped {
            self.workers.drop_copy(r.block_id, r.worker_id);
        }
        tracing::warn!(block = r.block_id, worker = r.worker_id, path = %r.path, dropped, "client reported a corrupt block copy");
        self.metrics.corrupt_reports.inc();
        Ok(ReportCorruptResponse { dropped })
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn do_report(&self, _r: ReportRequest) -> Result<ReportResponse> {
        let workers = self.workers.list();
        let (mut capacity, mut used) = (0, 0);
        for w in workers.iter().filter(|w| w.alive) {
            for t in &w.tiers {
                capacity += t.capacity;
                used += t.used;
            }
        }
        let reader = self.reader();
        let m = self.raft.metrics().borrow().clone();
        Ok(ReportResponse {
            capacity,
            used,
            files: reader.sys_u64(KEY_FILES)?,
            dirs: reader.sys_u64(KEY_DIRS)?,
            block_size: self.conf.cluster.block_size.0,
            raft_leader: m.current_leader.unwrap_or(0),
            raft_term: m.current_term,
            raft_applied: m.last_applied.map(|l| l.index).unwrap_or(0),
            cache: Some(self.workers.cache_totals()),
            mounts: self.mounts.table(&self.store)?.len() as u64,
            workers,
        })
    }
}

tokio::task_local! {
    /// The client call a handler is serving.
    static CALL: Call;
}

/// A client call: its request id (from `x-cv-request-id`) and how many
/// writes it has made, so each write gets its own id, the same on a retry.
struct Call {
    id: Option<(u64, u64)>,
    writes: std::sync::atomic::AtomicU32,
}

impl Call {
    fn of<T>(req: &Request<T>) -> Call {
        let id = req
            .metadata()
            .get(curvine_common::REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once('-'))
            .and_then(|(c, s)| Some((u64::from_str_radix(c, 16).ok()?, u64::from_str_radix(s, 16).ok()?)));
        Call { id, writes: Default::default() }
    }

    fn next_id(&self) -> Option<RequestId> {
        let (client, seq) = self.id?;
        Some(RequestId { client, seq, sub: self.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed) })
    }
}

impl MetaServiceImpl {
    /// A leader that has heard from no majority for `CUT_OFF` answers at
    /// once that it cannot serve, so callers try the other members.
    fn in_contact(&self) -> Result<()> {
        match self.contact.cut_off(&self.raft, self.id, "", "another member may lead now") {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Reads a follower may answer itself when asked to (`meta.follower_reads`).
const FOLLOWER_READS: [&str; 2] = ["stat", "list"];
/// Reads the leader answers after a read-index round (linearizable).
const READS: [&str; 7] = ["stat", "list", "open", "open_many", "list_mounts", "job_status", "xattr"];

impl MetaServiceImpl {
    /// Whether this node may answer `rpc` now: the leader may (reads after
    /// a read-index round when others could lead); a follower answers
    /// follower reads when asked and allowed, else names the leader.
    async fn gate<T>(&self, rpc: &str, req: &Request<T>) -> Result<()> {
        if matches!(rpc, "members" | "node_status") {
            return Ok(()); // any member answers (changes check for themselves)
        }
        match crate::leader::role(&self.raft, self.id) {
            Role::Leader { voters } => {
                if voters > 1 {
                    self.in_contact()?;
                    if READS.contains(&rpc) {
                        self.barrier.wait(&self.raft, self.id, self.conf.meta.write_timeout).await?;
                    }
                }
                Ok(())
            }
            Role::Other { leader } => {
                let asked = req.metadata().get(curvine_common::READ_HEADER).is_some_and(|v| v == "follower");
                // Only while the leader's appends arrive: that bounds how
                // stale the answer can be (`contact.rs`).
                let recent = self.contact.leader_age().is_some_and(|a| a <= crate::contact::CUT_OFF);
                if asked && recent && self.conf.meta.follower_reads && FOLLOWER_READS.contains(&rpc) {
                    return Ok(());
                }
                Err(Error::not_leader(self.id, leader.as_deref()))
            }
        }
    }
}

macro_rules! handlers {
    ($($name:ident / $inner:ident : $req:ty => $resp:ty),* $(,)?) => {
        #[tonic::async_trait]
        impl MetaService for MetaServiceImpl {
            $(
                async fn $name(&self, req: Request<$req>) -> Result<Response<$resp>, Status> {
                    let start = Instant::now();
                    let res = match self.gate(stringify!($name), &req).await {
                        Ok(()) => CALL.scope(Call::of(&req), self.$inner(req.into_inner())).await,
                        Err(e) => Err(e),
                    };
                    let res = res.map(Response::new).map_err(Status::from);
                    self.metrics.record(stringify!($name), start, &res);
                    res
                }
            )*
        }
    };
}

handlers! {
    mkdir / do_mkdir: MkdirRequest => MkdirResponse,
    create / do_create: CreateRequest => CreateResponse,
    add_block / do_add_block: AddBlockRequest => AddBlockResponse,
    complete / do_complete: CompleteRequest => CompleteResponse,
    abort / do_abort: AbortRequest => AbortResponse,
    open / do_open: OpenRequest => OpenResponse,
    open_many / do_open_many: OpenManyRequest => OpenManyResponse,
    stat / do_stat: StatRequest => StatResponse,
    list / do_list: ListRequest => ListResponse,
    delete / do_delete: DeleteRequest => DeleteResponse,
    rename / do_rename: RenameRequest => RenameResponse,
    set_attr / do_set_attr: SetAttrRequest => SetAttrResponse,
    register_worker / do_register: RegisterWorkerRequest => RegisterWorkerResponse,
    heartbeat / do_heartbeat: HeartbeatRequest => HeartbeatResponse,
    report / do_report: ReportRequest => ReportResponse,
    mount / do_mount: MountRequest => MountResponse,
    umount / do_umount: UmountRequest => UmountResponse,
    list_mounts / do_list_mounts: ListMountsRequest => ListMountsResponse,
    resync / do_resync: ResyncRequest => ResyncResponse,
    block_source / do_block_source: BlockSourceRequest => BlockSourceResponse,
    warm / do_warm: WarmRequest => WarmResponse,
    persist_source / do_persist_source: PersistSourceRequest => PersistSourceResponse,
    persist_done / do_persist_done: PersistDoneRequest => PersistDoneResponse,
    sync / do_sync: SyncRequest => SyncResponse,
    job_status / do_job_status: JobStatusRequest => JobStatusResponse,
    cancel_job / do_cancel_job: CancelJobRequest => CancelJobResponse,
    free / do_free: FreeRequest => FreeResponse,
    pin / do_pin: PinRequest => PinResponse,
    report_corrupt / do_report_corrupt: ReportCorruptRequest => ReportCorruptResponse,
    symlink / do_symlink: SymlinkRequest => SymlinkResponse,
    link / do_link: LinkRequest => LinkResponse,
    lock / do_lock: LockRequest => LockResponse,
    xattr / do_xattr: XattrRequest => XattrResponse,
    mknod / do_mknod: MknodRequest => MknodResponse,
    members / do_members: MembersRequest => MembersResponse,
    node_status / do_node_status: NodeStatusRequest => NodeStatusResponse,
}
