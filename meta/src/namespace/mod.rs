//! The namespace commands and their pure logic against the state machine:
//! each command reads and writes through one `Txn`, so it applies atomically
//! or not at all. Commands carry every non-deterministic value (times) so
//! all replicas compute the same result.

pub(crate) mod attrs;
pub mod locks;
mod once;
mod ufs;

use curvine_common::path;
use curvine_common::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};

use crate::store::{
    decode, decode_u64, dentry_key, encode, id_key, BlockMeta, Inode, InodeKind, Job, Mount, Txn, CF_BLOCKS, CF_DENTRIES,
    CF_INODES, CF_MOUNTS, CF_SYS, KEY_DIRS, KEY_FILES, KEY_NEXT_BLOCK, KEY_NEXT_INODE, ROOT_ID,
};
pub use once::{RequestId, RETAIN_MS};
pub use ufs::UfsEntry;

/// A namespace mutation, proposed through Raft. Paths are normalized.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    Mkdir { path: String, parents: bool, mode: u32, now_ms: i64 },
    Create { path: String, overwrite: bool, parents: bool, block_size: u64, replication: u32, mode: u32, now_ms: i64 },
    AddBlock { file_id: u64, path: String },
    Complete { file_id: u64, path: String, blocks: Vec<BlockMeta>, len: u64, now_ms: i64 },
    Abort { file_id: u64, path: String },
    Delete { path: String, recursive: bool, now_ms: i64 },
    Rename { src: String, dst: String, now_ms: i64 },
    SetAttr { path: String, mode: Option<u32>, mtime_ms: Option<i64> },
    /// Adds a mount (its `id` is assigned here) and creates its mount point.
    Mount { mount: Mount, now_ms: i64 },
    /// Removes the mount at `path` and its cached namespace.
    Umount { path: String, force: bool, now_ms: i64 },
    /// Merges one UFS entry found at `path` (creating its parent directories).
    UfsUpsert { path: String, mount_id: u64, entry: UfsEntry, now_ms: i64 },
    /// Merges a page of a directory listing; entries are stamped `gen`.
    UfsSyncPage { dir: String, mount_id: u64, entries: Vec<UfsEntry>, gen: i64 },
    /// Ends a listing started at `gen`: UFS entries not seen since are gone.
    UfsSyncEnd { dir: String, gen: i64 },
    /// The UFS no longer has `path`.
    UfsRemove { path: String, now_ms: i64 },
    /// Records a new load job (its id is assigned here).
    JobCreate { path: String, parallel: u32, now_ms: i64 },
    /// Progress or end of a job; a finished job's state is never reverted.
    JobUpdate { job: Job },
    /// Keeps (or stops keeping) `path` and everything below it from eviction and `cv free`.
    SetPin { path: String, pinned: bool },
    /// File `file_id` is in the UFS now, as this version.
    PersistDone { file_id: u64, len: u64, etag: String, mtime_ms: i64, now_ms: i64 },
    /// An upload failed: retry at `retry_ms`.
    PersistFailed { file_id: u64, error: String, retry_ms: i64 },
    /// A rename already done in the UFS (write-through / write-back
    /// mounts); `entry` is the moved file's new UFS version.
    RenameUfs { src: String, dst: String, now_ms: i64, entry: Option<UfsEntry> },
    // Appended (format 3): older log entries keep decoding.
    /// Runs `cmd` and makes `uid`/`gid` the owner of what it created.
    Owned { uid: u32, gid: u32, cmd: Box<MetaCommand> },
    Chown { path: String, uid: Option<u32>, gid: Option<u32>, now_ms: i64 },
    Symlink { path: String, target: String, now_ms: i64 },
    /// Sets (`value` Some) or removes an extended attribute; `flags` are
    /// setxattr(2)'s XATTR_CREATE / XATTR_REPLACE.
    SetXattr { path: String, name: String, value: Option<Vec<u8>>, flags: u32 },
    // Appended (format 4).
    /// A FIFO, socket or device node (`kind` one of those, `rdev` the device).
    Mknod { path: String, kind: InodeKind, mode: u32, rdev: u64, now_ms: i64 },
    /// Runs `cmd` (one that carries no time of its own: `SetAttr`,
    /// `SetXattr`) and stamps the inode it changed with ctime `now_ms`.
    Timed { now_ms: i64, cmd: Box<MetaCommand> },
    /// Applies `cmd` once per request id: a retry of an applied command
    /// gets the recorded result (`once.rs`).
    Once { id: RequestId, now_ms: i64, cmd: Box<MetaCommand> },
    /// Commands of concurrent calls proposed together (group commit); each
    /// applies or fails on its own.
    Batch(Vec<MetaCommand>),
    /// `link(2)`: `dst` becomes another name of the file at `src`. Added
    /// last: variants are numbered in the log.
    Link { src: String, dst: String, now_ms: i64 },
    /// A cluster-wide record lock taken (`kind` Some) or dropped (None) by
    /// `who` on bytes `[start, end]` of the file at path `file` (`locks.rs`).
    SetLock { file: String, who: locks::LockOwner, kind: Option<locks::LockKind>, start: u64, end: u64 },
    /// Drops `session`'s locks (on `file` / of `owner` only, when given).
    ReleaseLocks { session: u64, file: Option<String>, owner: Option<u64> },
    /// Runs `cmd` (a `Create`) and leaves the new file complete and empty,
    /// as a local file system does: a file closed without a byte written
    /// costs this one command, and its first `AddBlock` opens it for
    /// writing again. Not done for a file that belongs in a UFS: its upload
    /// is queued when its writer completes it, as before.
    CreateSealed { cmd: Box<MetaCommand> },
}

impl MetaCommand {
    /// Whether this command, or one it wraps, satisfies `f`.
    pub fn any(&self, f: &dyn Fn(&MetaCommand) -> bool) -> bool {
        f(self)
            || match self {
                MetaCommand::Owned { cmd, .. }
                | MetaCommand::Timed { cmd, .. }
                | MetaCommand::Once { cmd, .. }
                | MetaCommand::CreateSealed { cmd } => cmd.any(f),
                MetaCommand::Batch(cmds) => cmds.iter().any(|c| c.any(f)),
                _ => false,
            }
    }
}

/// What a successful command produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    None,
    /// The inode created or changed.
    Inode(Inode),
    /// A block allocated by `AddBlock`: the file, the block id, its offset.
    Block { file: Inode, block_id: u64, offset: u64 },
    /// Inodes removed and blocks freed (delete, overwrite, rename over a file).
    Freed { inodes: u64, blocks: Vec<u64>, inode: Option<Inode> },
    /// A mount added, with its id.
    Mount(Mount),
    Job(Job),
    /// The results of a `Batch`, in order.
    Batch(Vec<MetaResult>),
}

/// The state machine's answer to one log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaResult(pub Result<Outcome, Error>);

pub(crate) struct Ns<'a> {
    txn: &'a mut Txn,
}

impl Ns<'_> {
    fn inode(&self, id: u64) -> Result<Option<Inode>> {
        self.txn.get(CF_INODES, &id_key(id))?.map(|v| decode(&v)).transpose()
    }

    fn must_inode(&self, id: u64, path: &str) -> Result<Inode> {
        self.inode(id)?.ok_or_else(|| Error::new(ErrorKind::Corrupt, format!("{path}: dangling entry (inode {id})")))
    }

    fn child(&self, parent: u64, name: &str) -> Result<Option<u64>> {
        self.txn.get(CF_DENTRIES, &dentry_key(parent, name))?.map(|v| decode_u64(&v)).transpose()
    }

    fn children(&self, parent: u64) -> Result<Vec<(Vec<u8>, u64)>> {
        self.txn
            .scan_prefix(CF_DENTRIES, &parent.to_be_bytes())?
            .into_iter()
            .map(|(k, v)| Ok((k, decode_u64(&v)?)))
            .collect()
    }

    fn put_inode(&mut self, inode: &Inode) -> Result<()> {
        self.txn.put(CF_INODES, id_key(inode.id).to_vec(), encode(inode)?);
        Ok(())
    }

    fn counter(&self, key: &[u8]) -> Result<u64> {
        self.txn.get(CF_SYS, key)?.map(|v| decode_u64(&v)).transpose().map(|v| v.unwrap_or(0))
    }

    fn add_counter(&mut self, key: &[u8], delta: i64) -> Result<()> {
        let v = self.counter(key)?.saturating_add_signed(delta);
        self.txn.put(CF_SYS, key.to_vec(), v.to_be_bytes().to_vec());
        Ok(())
    }

    fn next_id(&mut self, key: &[u8], first: u64) -> Result<u64> {
        let id = self.counter(key)?.max(first);
        self.txn.put(CF_SYS, key.to_vec(), (id + 1).to_be_bytes().to_vec());
        Ok(id)
    }

    /// Resolves a path; errors name `path`.
    fn resolve(&self, p: &str) -> Result<Inode> {
        let mut cur = self.must_inode(ROOT_ID, "/")?;
        for name in path::components(p) {
            if !cur.is_dir() {
                return Err(Error::not_dir(p));
            }
            let id = self.child(cur.id, name)?.ok_or_else(|| Error::not_found(p))?;
            cur = self.must_inode(id, p)?;
        }
        Ok(cur)
    }

    /// The parent directory of `p` (created when `parents`), and `p`'s name.
    fn parent_of<'p>(&mut self, p: &'p str, parents: bool, mode: u32, now: i64) -> Result<(Inode, &'p str)> {
        let (parent, name) = path::split(p).ok_or_else(|| Error::exists(p))?;
        let dir = if parents { self.mkdirs(parent, mode, now)? } else { self.resolve(parent)? };
        if !dir.is_dir() {
            return Err(Error::not_dir(parent));
        }
        Ok((dir, name))
    }

    fn new_inode(&mut self, name: &str, kind: InodeKind, mode: u32, now: i64) -> Result<Inode> {
        let id = self.next_id(KEY_NEXT_INODE, ROOT_ID + 1)?;
        Ok(Inode {
            id,
            name: name.to_string(),
            kind,
            mode,
            mtime_ms: now,
            ctime_ms: now,
            len: 0,
            block_size: 0,
            replication: 0,
            complete: kind == InodeKind::Dir,
            blocks: vec![],
            ufs: None,
            mount_id: 0,
            listed_ms: 0,
            pinned: false,
            uid: 0,
            gid: 0,
            target: String::new(),
            xattrs: Vec::new(),
            rdev: 0,
            // A directory: its name and its "."; each subdirectory's ".."
            // adds one (`link`).
            nlink: if kind == InodeKind::Dir { 2 } else { 1 },
        })
    }

    fn mounts(&self) -> Result<Vec<Mount>> {
        self.txn.scan_prefix(CF_MOUNTS, &[])?.into_iter().map(|(_, v)| decode(&v)).collect()
    }

    fn mount_of(&self, p: &str) -> Result<Option<Mount>> {
        Ok(self.mounts()?.into_iter().filter(|m| m.rel(p).is_some()).max_by_key(|m| m.path.len()))
    }

    fn job_create(&mut self, p: &str, parallel: u32, now: i64) -> Result<Outcome> {
        self.resolve(p)?;
        let job = Job {
            id: self.next_id(crate::store::KEY_NEXT_JOB, 1)?,
            path: p.to_string(),
            state: Some(crate::store::JobState::Running),
            created_ms: now,
            scanning: true,
            attempt: 1,
            parallel,
            ..Default::default()
        };
        self.txn.put(crate::store::CF_JOBS, id_key(job.id).to_vec(), encode(&job)?);
        Ok(Outcome::Job(job))
    }

    fn job_update(&mut self, job: &Job) -> Result<Outcome> {
        let key = id_key(job.id).to_vec();
        let old: Job = match self.txn.get(crate::store::CF_JOBS, &key)? {
            Some(v) => decode(&v)?,
            None => return Err(Error::new(ErrorKind::NotFound, format!("job {}", job.id))),
        };
        let mut new = job.clone();
        if old.state != Some(crate::store::JobState::Running) {
            new.state = old.state; // cancelled (or finished) stays so
            if new.finished_ms == 0 {
                new.finished_ms = old.finished_ms;
            }
        }
        self.txn.put(crate::store::CF_JOBS, key, encode(&new)?);
        Ok(Outcome::Job(new))
    }

    /// Refuses to remove or move `p` when it is, or holds, a mount point,
    /// or when it is a UFS object in a mount that does not write to the UFS.
    fn check_removable(&self, p: &str, node: &Inode, what: &str) -> Result<()> {
        if let Some(m) = self.mounts()?.into_iter().find(|m| path::is_within(&m.path, p)) {
            return Err(Error::invalid(format!(
                "cannot {what} {p}: {} is a mount point of {} (use `cv umount {}`)",
                m.path, m.uri, m.path
            )));
        }
        if let Some(m) = self.mount_of(p)? {
            let in_ufs = node.is_ufs_persisted() || (node.is_dir() && node.ufs.is_some());
            if in_ufs && m.write_mode == crate::store::WriteMode::CacheOnly {
                return Err(Error::new(
                    ErrorKind::PermissionDenied,
                    format!(
                        "cannot {what} {p}: it is stored in {} and the mount is cache-only, which never changes the UFS",
                        m.uri
                    ),
                ));
            }
        }
        Ok(())
    }

    fn link(&mut self, parent: &mut Inode, child: &Inode, now: i64) -> Result<()> {
        self.txn.put(CF_DENTRIES, dentry_key(parent.id, &child.name), child.id.to_be_bytes().to_vec());
        self.put_inode(child)?;
        if child.is_dir() {
            parent.nlink += 1; // the child's ".."
        }
        parent.mtime_ms = now;
        parent.ctime_ms = now;
        self.put_inode(parent)?;
        self.add_counter(if child.is_dir() { KEY_DIRS } else { KEY_FILES }, 1)
    }

    /// `mkdir -p`: every missing directory on the way; the last one returned.
    fn mkdirs(&mut self, p: &str, mode: u32, now: i64) -> Result<Inode> {
        let mut cur = self.must_inode(ROOT_ID, "/")?;
        let mut walked = String::new();
        for name in path::components(p) {
            walked.push('/');
            walked.push_str(name);
            if !cur.is_dir() {
                return Err(Error::not_dir(&walked));
            }
            cur = match self.child(cur.id, name)? {
                Some(id) => self.must_inode(id, &walked)?,
                None => {
                    let mut dir = self.new_inode(name, InodeKind::Dir, mode, now)?;
                    dir.ufs = self.pending_ufs(&walked, now)?;
                    self.link(&mut cur, &dir, now)?;
                    dir
                }
            };
        }
        if !cur.is_dir() {
            return Err(Error::not_dir(p));
        }
        Ok(cur)
    }

    fn mkdir(&mut self, p: &str, parents: bool, mode: u32, now: i64) -> Result<Outcome> {
        if parents {
            return self.mkdirs(p, mode, now).map(Outcome::Inode);
        }
        let (mut parent, name) = self.parent_of(p, false, mode, now)?;
        if self.child(parent.id, name)?.is_some() {
            return Err(Error::exists(p));
        }
        let mut dir = self.new_inode(name, InodeKind::Dir, mode, now)?;
        // Under a mount that writes to its UFS, a new directory belongs there too.
        dir.ufs = self.pending_ufs(p, now)?;
        self.link(&mut parent, &dir, now)?;
        Ok(Outcome::Inode(dir))
    }

    #[allow(clippy::too_many_arguments)]
    fn create(&mut self, p: &str, overwrite: bool, parents: bool, bs: u64, repl: u32, mode: u32, now: i64) -> Result<Outcome> {
        if p == "/" {
            return Err(Error::is_dir(p));
        }
        let (mut parent, name) = self.parent_of(p, parents, 0o755, now)?;
        let mut freed = Vec::new();
        let mut removed = 0;
        if let Some(id) = self.child(parent.id, name)? {
            let old = self.must_inode(id, p)?;
            if old.is_dir() {
                return Err(Error::is_dir(p));
            }
            if !overwrite {
                return Err(Error::exists(p));
            }
            if old.nlink > 1 {
                return self.truncate_linked(&mut parent, old, bs, repl, now);
            }
            removed = self.remove_tree(&mut parent, name, &old, now, &mut freed)?;
        }
        let mut file = self.new_inode(name, InodeKind::File, mode, now)?;
        file.block_size = bs;
        file.replication = repl;
        file.ufs = self.pending_ufs(p, now)?;
        self.link(&mut parent, &file, now)?;
        Ok(Outcome::Freed { inodes: removed, blocks: freed, inode: Some(file) })
    }

    /// An overwrite of a file with hard links rewrites that file, keeping its
    /// id and names (O_TRUNC: every name sees the new bytes), instead of
    /// giving one name a new file.
    fn truncate_linked(&mut self, parent: &mut Inode, mut f: Inode, bs: u64, repl: u32, now: i64) -> Result<Outcome> {
        let freed = self.drop_blocks(&mut f);
        f.complete = false;
        f.block_size = bs;
        f.replication = repl;
        f.mtime_ms = now;
        f.ctime_ms = now;
        self.put_inode(&f)?;
        parent.mtime_ms = now;
        parent.ctime_ms = now;
        self.put_inode(parent)?;
        Ok(Outcome::Freed { inodes: 0, blocks: freed, inode: Some(f) })
    }

    /// Empties `f` (the caller saves it): its blocks leave the block
    /// index and are returned for the workers to delete.
    fn drop_blocks(&mut self, f: &mut Inode) -> Vec<u64> {
        f.len = 0;
        std::mem::take(&mut f.blocks)
            .into_iter()
            .map(|b| {
                self.txn.delete(CF_BLOCKS, id_key(b.id).to_vec());
                b.id
            })
            .collect()
    }

    /// The incomplete file a writer refers to by id (and path, for messages).
    fn open_file(&self, file_id: u64, p: &str) -> Result<Inode> {
        let f = if file_id != 0 {
            self.inode(file_id)?.ok_or_else(|| Error::not_found(p))?
        } else {
            self.resolve(p)?
        };
        if f.is_dir() {
            return Err(Error::is_dir(p));
        }
        Ok(f)
    }

    fn add_block(&mut self, file_id: u64, p: &str) -> Result<Outcome> {
        let mut f = self.open_file(file_id, p)?;
        if f.complete {
            // A file created sealed (`CreateSealed`) and not written yet is
            // opened for writing again by its writer's first block.
            if !Self::sealed_empty(&f) {
                return Err(Error::invalid(format!("{p}: file is already complete")));
            }
            f.complete = false;
        }
        let id = self.next_id(KEY_NEXT_BLOCK, 1)?;
        let offset = f.blocks.len() as u64 * f.block_size;
        f.blocks.push(BlockMeta { id, len: 0 });
        self.txn.put(CF_BLOCKS, id_key(id).to_vec(), f.id.to_be_bytes().to_vec());
        self.put_inode(&f)?;
        Ok(Outcome::Block { file: f, block_id: id, offset })
    }

    /// An empty file with nothing for a UFS: one `CreateSealed` may leave
    /// complete, and its writer may open again.
    fn sealable(f: &Inode) -> bool {
        f.kind == InodeKind::File && f.len == 0 && f.blocks.is_empty() && f.ufs.is_none()
    }

    /// A file as `CreateSealed` leaves it, not written since.
    fn sealed_empty(f: &Inode) -> bool {
        f.complete && Self::sealable(f)
    }

    /// `CreateSealed`'s second half: the file `out` created (or, hard
    /// linked, emptied in place), complete.
    fn seal_new(&mut self, out: Outcome) -> Result<Outcome> {
        let Outcome::Freed { inodes, blocks, inode: Some(mut f) } = out else { return Ok(out) };
        if !f.complete && Self::sealable(&f) {
            f.complete = true;
            self.put_inode(&f)?;
        }
        Ok(Outcome::Freed { inodes, blocks, inode: Some(f) })
    }

    fn complete(&mut self, file_id: u64, p: &str, blocks: &[BlockMeta], len: u64, now: i64) -> Result<Outcome> {
        let mut f = self.open_file(file_id, p)?;
        if f.complete {
            return Ok(Outcome::Freed { inodes: 0, blocks: vec![], inode: Some(f) });
        }
        let sum: u64 = blocks.iter().map(|b| b.len).sum();
        if sum != len {
            return Err(Error::invalid(format!("{p}: block lengths add up to {sum}, file length is {len}")));
        }
        for b in blocks {
            if !f.blocks.iter().any(|x| x.id == b.id) {
                return Err(Error::invalid(format!("{p}: block {} does not belong to this file", b.id)));
            }
            if b.len > f.block_size {
                return Err(Error::invalid(format!("{p}: block {} is longer than the block size", b.id)));
            }
        }
        let mut freed = Vec::new();
        for b in &f.blocks {
            if !blocks.iter().any(|x| x.id == b.id) {
                self.txn.delete(CF_BLOCKS, id_key(b.id).to_vec());
                freed.push(b.id);
            }
        }
        // A file closed without a byte written keeps its create's times,
        // as on a local file system (FUSE clients cache them from the
        // create's answer, and nothing tells the kernel they changed).
        let written = len > 0 || !f.blocks.is_empty();
        f.blocks = blocks.to_vec();
        f.len = len;
        f.complete = true;
        if written {
            f.mtime_ms = now;
            f.ctime_ms = now;
        }
        self.put_inode(&f)?;
        self.queue_persist(&f, p, now)?;
        Ok(Outcome::Freed { inodes: 0, blocks: freed, inode: Some(f) })
    }

    fn abort(&mut self, file_id: u64, p: &str) -> Result<Outcome> {
        let mut f = self.open_file(file_id, p)?;
        // A file created sealed whose writer gave up before its first block
        // goes, as it would had it been created open.
        if f.complete && !Self::sealed_empty(&f) {
            return Err(Error::invalid(format!("{p}: file is complete, cannot abort")));
        }
        if f.nlink > 1 {
            // Other names lead here (an overwrite rewrote a hard-linked
            // file in place, or a name was linked while it was written):
            // the file stays, empty and complete, as a local file is left
            // by an O_TRUNC writer that died. Removing it would leave the
            // other names dangling.
            let freed = self.drop_blocks(&mut f);
            f.complete = true;
            self.put_inode(&f)?;
            return Ok(Outcome::Freed { inodes: 0, blocks: freed, inode: Some(f) });
        }
        // The parent is found by path; an aborted file renamed meanwhile is left alone.
        let (parent_path, name) = path::split(p).ok_or_else(|| Error::is_dir(p))?;
        let mut parent = self.resolve(parent_path)?;
        if self.child(parent.id, name)? != Some(f.id) {
            return Err(Error::not_found(p));
        }
        let mut freed = Vec::new();
        let n = self.remove_tree(&mut parent, name, &f, f.mtime_ms, &mut freed)?;
        Ok(Outcome::Freed { inodes: n, blocks: freed, inode: None })
    }

    /// Unlinks `name` (leading to `node`) from `parent` and removes the node
    /// with everything below it. A file with other names (hard links) only
    /// loses this one: its link count drops and its ctime moves.
    fn remove_tree(&mut self, parent: &mut Inode, name: &str, node: &Inode, now: i64, freed: &mut Vec<u64>) -> Result<u64> {
        self.txn.delete(CF_DENTRIES, dentry_key(parent.id, name));
        if node.is_dir() {
            parent.nlink = parent.nlink.saturating_sub(1).max(2);
        }
        parent.mtime_ms = now;
        parent.ctime_ms = now;
        self.put_inode(parent)?;
        let mut stack = vec![node.id];
        let mut n = 0u64;
        while let Some(id) = stack.pop() {
            // Read each inode when its turn comes: an earlier name of a
            // hard-linked file in the same tree changed its link count.
            let mut i = self.must_inode(id, &node.name)?;
            if !i.is_dir() && i.nlink > 1 {
                i.nlink -= 1;
                i.ctime_ms = now;
                self.put_inode(&i)?;
                continue;
            }
            n += 1;
            if i.is_dir() {
                for (k, id) in self.children(i.id)? {
                    self.txn.delete(CF_DENTRIES, k);
                    stack.push(id);
                }
                self.add_counter(KEY_DIRS, -1)?;
            } else {
                for b in &i.blocks {
                    self.txn.delete(CF_BLOCKS, id_key(b.id).to_vec());
                    freed.push(b.id);
                }
                self.txn.delete(crate::store::CF_PERSIST, id_key(i.id).to_vec());
                self.add_counter(KEY_FILES, -1)?;
            }
            self.txn.delete(CF_INODES, id_key(i.id).to_vec());
        }
        Ok(n)
    }

    fn delete(&mut self, p: &str, recursive: bool, now: i64) -> Result<Outcome> {
        let (parent_path, name) = path::split(p).ok_or_else(|| Error::invalid("/: cannot delete the root directory"))?;
        let mut parent = self.resolve(parent_path)?;
        if !parent.is_dir() {
            return Err(Error::not_dir(parent_path));
        }
        let id = self.child(parent.id, name)?.ok_or_else(|| Error::not_found(p))?;
        let node = self.must_inode(id, p)?;
        if node.is_dir() && !recursive && !self.children(node.id)?.is_empty() {
            return Err(Error::path(ErrorKind::NotEmpty, p));
        }
        self.check_removable(p, &node, "delete")?;
        let mut freed = Vec::new();
        let n = self.remove_tree(&mut parent, name, &node, now, &mut freed)?;
        Ok(Outcome::Freed { inodes: n, blocks: freed, inode: None })
    }

    fn rename(&mut self, src: &str, dst: &str, now: i64) -> Result<Outcome> {
        if src == "/" || dst == "/" {
            return Err(Error::invalid(format!("{src} -> {dst}: cannot rename the root directory")));
        }
        let node = self.resolve(src)?;
        if src == dst {
            return Ok(Outcome::Freed { inodes: 0, blocks: vec![], inode: Some(node) });
        }
        if node.is_dir() && path::is_within(dst, src) {
            return Err(Error::invalid(format!("{src} -> {dst}: cannot move a directory into itself")));
        }
        self.check_removable(src, &node, "rename")?;
        if let Some(m) = self.mount_of(dst)? {
            if m.path == dst {
                return Err(Error::invalid(format!("cannot rename onto {dst}: it is a mount point of {}", m.uri)));
            }
            if node.nlink > 1 && !node.is_dir() {
                return Err(Error::new(
                    ErrorKind::NotPermitted,
                    format!("{src} -> {dst}: a file with hard links cannot move under the mount of {}", m.uri),
                ));
            }
        }
        let (sp, sname) = path::split(src).ok_or_else(|| Error::invalid("/: cannot rename the root directory"))?;
        let (dp, dname) = path::split(dst).ok_or_else(|| Error::invalid("/: cannot rename the root directory"))?;
        let src_parent = self.resolve(sp)?;
        let dst_parent = self.resolve(dp)?;
        if !dst_parent.is_dir() {
            return Err(Error::not_dir(dp));
        }
        let mut freed = Vec::new();
        let mut removed = 0;
        let mut dst_parent = dst_parent;
        if let Some(id) = self.child(dst_parent.id, dname)? {
            if id == node.id {
                // Two names of one file: rename(2) succeeds and changes nothing.
                return Ok(Outcome::Freed { inodes: 0, blocks: vec![], inode: Some(node) });
            }
            let old = self.must_inode(id, dst)?;
            match (node.is_dir(), old.is_dir()) {
                (true, false) => return Err(Error::not_dir(dst)),
                (false, true) => return Err(Error::is_dir(dst)),
                (true, true) if !self.children(old.id)?.is_empty() => return Err(Error::path(ErrorKind::NotEmpty, dst)),
                _ => {}
            }
            removed = self.remove_tree(&mut dst_parent, dname, &old, now, &mut freed)?;
        }
        // Re-read the source parent: it may be the destination parent just updated.
        let mut src_parent = if src_parent.id == dst_parent.id { dst_parent.clone() } else { src_parent };
        self.txn.delete(CF_DENTRIES, dentry_key(src_parent.id, sname));
        if node.is_dir() {
            src_parent.nlink = src_parent.nlink.saturating_sub(1).max(2); // its ".." moves
        }
        src_parent.mtime_ms = now;
        src_parent.ctime_ms = now;
        self.put_inode(&src_parent)?;
        if src_parent.id == dst_parent.id {
            dst_parent = src_parent;
        }
        let mut moved = node;
        moved.name = dname.to_string();
        moved.ctime_ms = now;
        self.txn.put(CF_DENTRIES, dentry_key(dst_parent.id, dname), moved.id.to_be_bytes().to_vec());
        self.put_inode(&moved)?;
        if moved.ufs.is_some() {
            // Entries of a writing mount keep their object key in step with
            // their path (the service moved the objects first).
            if let Some(m) = self.mount_of(dst)? {
                let rel = m.rel(dst).unwrap_or_default().to_string();
                self.rebase_ufs(&mut moved, &rel, dst)?;
            }
        }
        if moved.is_dir() {
            dst_parent.nlink += 1;
        }
        dst_parent.mtime_ms = now;
        dst_parent.ctime_ms = now;
        self.put_inode(&dst_parent)?;
        Ok(Outcome::Freed { inodes: removed, blocks: freed, inode: Some(moved) })
    }

    /// `link(2)`: `dst` becomes another name of the file at `src`. Not for
    /// directories (EPERM, as POSIX allows) nor inside UFS mounts (objects
    /// have one key each).
    fn hard_link(&mut self, src: &str, dst: &str, now: i64) -> Result<Outcome> {
        let mut node = self.resolve(src)?;
        if node.is_dir() {
            return Err(Error::new(ErrorKind::NotPermitted, format!("{src}: cannot hard-link a directory")));
        }
        for p in [src, dst] {
            if let Some(m) = self.mount_of(p)? {
                return Err(Error::new(
                    ErrorKind::NotPermitted,
                    format!("{src} -> {dst}: hard links are not supported under the mount of {} at {}", m.uri, m.path),
                ));
            }
        }
        let (mut parent, name) = self.parent_of(dst, false, 0, now)?;
        if self.child(parent.id, name)?.is_some() {
            return Err(Error::exists(dst));
        }
        node.nlink = node.nlink.checked_add(1).ok_or_else(|| Error::invalid(format!("{src}: too many links")))?;
        node.ctime_ms = now;
        self.txn.put(CF_DENTRIES, dentry_key(parent.id, name), node.id.to_be_bytes().to_vec());
        self.put_inode(&node)?;
        parent.mtime_ms = now;
        parent.ctime_ms = now;
        self.put_inode(&parent)?;
        Ok(Outcome::Inode(node))
    }

    fn set_attr(&mut self, p: &str, mode: Option<u32>, mtime: Option<i64>) -> Result<Outcome> {
        let mut node = self.resolve(p)?;
        if let Some(m) = mode {
            node.mode = m & 0o7777;
        }
        if let Some(t) = mtime {
            node.mtime_ms = t;
        }
        self.put_inode(&node)?;
        Ok(Outcome::Inode(node))
    }
}

/// Applies the command of one Raft entry to `txn`, then expires old
/// request records (`once.rs`). An error of the expiry is the store's
/// (a failed read), not the command's.
pub fn apply_entry(txn: &mut Txn, cmd: &MetaCommand) -> (Result<Outcome>, Result<()>) {
    let res = apply(txn, cmd);
    (res, once::expire_for_entry(txn, cmd))
}

/// Applies one command to `txn`. On error, `txn` holds none of the
/// command's writes (earlier writes to it stay).
pub fn apply(txn: &mut Txn, cmd: &MetaCommand) -> Result<Outcome> {
    match cmd {
        MetaCommand::Batch(cmds) => Ok(once::apply_batch(txn, cmds)),
        // Records its result even when the command fails.
        MetaCommand::Once { id, now_ms, cmd } => once::apply_once(txn, id, *now_ms, cmd),
        _ => {
            let sp = txn.savepoint();
            let res = apply_ns(&mut Ns { txn }, cmd);
            if res.is_err() {
                txn.rollback(sp);
            }
            res
        }
    }
}

fn apply_ns(ns: &mut Ns<'_>, cmd: &MetaCommand) -> Result<Outcome> {
    match cmd {
        MetaCommand::Mkdir { path, parents, mode, now_ms } => ns.mkdir(path, *parents, *mode, *now_ms),
        MetaCommand::Create { path, overwrite, parents, block_size, replication, mode, now_ms } => {
            ns.create(path, *overwrite, *parents, *block_size, *replication, *mode, *now_ms)
        }
        MetaCommand::AddBlock { file_id, path } => ns.add_block(*file_id, path),
        MetaCommand::Complete { file_id, path, blocks, len, now_ms } => ns.complete(*file_id, path, blocks, *len, *now_ms),
        MetaCommand::Abort { file_id, path } => ns.abort(*file_id, path),
        MetaCommand::Delete { path, recursive, now_ms } => ns.delete(path, *recursive, *now_ms),
        MetaCommand::Rename { src, dst, now_ms } => ns.rename(src, dst, *now_ms),
        MetaCommand::Link { src, dst, now_ms } => ns.hard_link(src, dst, *now_ms),
        MetaCommand::RenameUfs { src, dst, now_ms, entry } => {
            let out = ns.rename(src, dst, *now_ms)?;
            match (&out, entry) {
                (Outcome::Freed { inode: Some(f), .. }, Some(e)) => ns.renamed_in_ufs(f.id, e, *now_ms)?,
                _ => {}
            }
            Ok(out)
        }
        MetaCommand::SetAttr { path, mode, mtime_ms } => ns.set_attr(path, *mode, *mtime_ms),
        MetaCommand::Mount { mount, now_ms } => ns.mount(mount, *now_ms),
        MetaCommand::Umount { path, force, now_ms } => ns.umount(path, *force, *now_ms),
        MetaCommand::UfsUpsert { path, mount_id, entry, now_ms } => ns.ufs_upsert(path, *mount_id, entry, *now_ms),
        MetaCommand::UfsSyncPage { dir, mount_id, entries, gen } => ns.ufs_sync_page(dir, *mount_id, entries, *gen),
        MetaCommand::UfsSyncEnd { dir, gen } => ns.ufs_sync_end(dir, *gen),
        MetaCommand::UfsRemove { path, now_ms } => ns.ufs_remove(path, *now_ms),
        MetaCommand::JobCreate { path, parallel, now_ms } => ns.job_create(path, *parallel, *now_ms),
        MetaCommand::JobUpdate { job } => ns.job_update(job),
        MetaCommand::PersistDone { file_id, len, etag, mtime_ms, now_ms } => {
            ns.persist_done(*file_id, *len, etag, *mtime_ms, *now_ms)
        }
        MetaCommand::PersistFailed { file_id, error, retry_ms } => ns.persist_failed(*file_id, error, *retry_ms),
        MetaCommand::SetPin { path, pinned } => {
            let mut node = ns.resolve(path)?;
            node.pinned = *pinned;
            ns.put_inode(&node)?;
            Ok(Outcome::Inode(node))
        }
        MetaCommand::Owned { uid, gid, cmd } => apply_ns(ns, cmd).and_then(|out| ns.own(out, *uid, *gid)),
        MetaCommand::Chown { path, uid, gid, now_ms } => ns.chown(path, *uid, *gid, *now_ms),
        MetaCommand::Symlink { path, target, now_ms } => ns.symlink(path, target, *now_ms),
        MetaCommand::Mknod { path, kind, mode, rdev, now_ms } => ns.mknod(path, *kind, *mode, *rdev, *now_ms),
        MetaCommand::Timed { now_ms, cmd } => apply_ns(ns, cmd).and_then(|out| ns.stamp_ctime(out, *now_ms)),
        MetaCommand::CreateSealed { cmd } => apply_ns(ns, cmd).and_then(|out| ns.seal_new(out)),
        MetaCommand::SetXattr { path, name, value, flags } => ns.set_xattr(path, name, value.as_deref(), *flags),
        MetaCommand::SetLock { file, who, kind, start, end } => locks::set(ns.txn, file, *who, *kind, *start, *end),
        MetaCommand::ReleaseLocks { session, file, owner } => locks::release(ns.txn, *session, file.as_deref(), *owner),
        MetaCommand::Once { .. } | MetaCommand::Batch(_) => apply(ns.txn, cmd),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::{Reader, StateStore};

    /// A state store in a temp dir that commands are applied to.
    pub(crate) struct T {
        _dir: tempfile::TempDir,
        pub(crate) store: Arc<StateStore>,
    }

    impl T {
        pub(crate) fn new() -> T {
            let dir = tempfile::tempdir().unwrap();
            let store = StateStore::open(dir.path()).unwrap();
            T { _dir: dir, store }
        }

        pub(crate) fn run(&self, cmd: MetaCommand) -> Result<Outcome> {
            let mut txn = Txn::new(self.store.db());
            let out = apply(&mut txn, &cmd)?;
            self.store.db().write(txn.into_batch()?).unwrap();
            Ok(out)
        }

        pub(crate) fn kind(&self, cmd: MetaCommand) -> ErrorKind {
            self.run(cmd).unwrap_err().kind()
        }

        fn reader(&self) -> Reader {
            Reader { db: self.store.db() }
        }

        fn names(&self, p: &str) -> Vec<String> {
            let r = self.reader();
            let d = r.resolve(p).unwrap();
            r.children(d.id).unwrap().into_iter().map(|(n, _)| n).collect()
        }
    }

    fn mkdir(p: &str, parents: bool) -> MetaCommand {
        MetaCommand::Mkdir { path: p.into(), parents, mode: 0o755, now_ms: 1 }
    }
    fn create(p: &str, overwrite: bool) -> MetaCommand {
        MetaCommand::Create { path: p.into(), overwrite, parents: false, block_size: 10, replication: 1, mode: 0o644, now_ms: 1 }
    }
    fn del(p: &str, recursive: bool) -> MetaCommand {
        MetaCommand::Delete { path: p.into(), recursive, now_ms: 2 }
    }
    fn rename(s: &str, d: &str) -> MetaCommand {
        MetaCommand::Rename { src: s.into(), dst: d.into(), now_ms: 3 }
    }

    fn write_file(t: &T, p: &str, lens: &[u64]) -> Vec<u64> {
        let Outcome::Freed { inode: Some(f), .. } = t.run(create(p, true)).unwrap() else { panic!() };
        let mut blocks = vec![];
        for l in lens {
            let Outcome::Block { block_id, .. } = t.run(MetaCommand::AddBlock { file_id: f.id, path: p.into() }).unwrap() else {
                panic!()
            };
            blocks.push(BlockMeta { id: block_id, len: *l });
        }
        let ids = blocks.iter().map(|b| b.id).collect();
        let len = lens.iter().sum();
        t.run(MetaCommand::Complete { file_id: f.id, path: p.into(), blocks, len, now_ms: 2 }).unwrap();
        ids
    }

    #[test]
    fn sealed_creates_are_complete_until_written() {
        let t = T::new();
        let sealed = |p: &str, overwrite| MetaCommand::CreateSealed { cmd: Box::new(create(p, overwrite)) };
        // Closed without a byte: complete and empty after the one command.
        let Outcome::Freed { inode: Some(f), .. } = t.run(sealed("/e", false)).unwrap() else { panic!() };
        assert!(f.complete && f.len == 0);
        assert!(t.reader().resolve("/e").unwrap().complete);
        // Written: the first block opens it again, Complete seals it with its bytes.
        let Outcome::Freed { inode: Some(f), .. } = t.run(sealed("/w", false)).unwrap() else { panic!() };
        let Outcome::Block { block_id, file, .. } = t.run(MetaCommand::AddBlock { file_id: f.id, path: "/w".into() }).unwrap() else {
            panic!()
        };
        assert!(!file.complete && !t.reader().resolve("/w").unwrap().complete);
        let blocks = vec![BlockMeta { id: block_id, len: 7 }];
        t.run(MetaCommand::Complete { file_id: f.id, path: "/w".into(), blocks, len: 7, now_ms: 2 }).unwrap();
        let w = t.reader().resolve("/w").unwrap();
        assert!(w.complete && w.len == 7);
        // A file with bytes is not opened again, nor aborted.
        assert_eq!(t.kind(MetaCommand::AddBlock { file_id: f.id, path: "/w".into() }), ErrorKind::InvalidArgument);
        assert_eq!(t.kind(MetaCommand::Abort { file_id: f.id, path: "/w".into() }), ErrorKind::InvalidArgument);
        // A writer that gives up before its first block removes the file.
        let Outcome::Freed { inode: Some(g), .. } = t.run(sealed("/g", false)).unwrap() else { panic!() };
        t.run(MetaCommand::Abort { file_id: g.id, path: "/g".into() }).unwrap();
        assert_eq!(t.reader().resolve("/g").unwrap_err().kind(), ErrorKind::NotFound);
        // The old way (Create, Complete) still works, and a sealed file's
        // Complete without blocks is answered as done.
        let Outcome::Freed { inode: Some(h), .. } = t.run(create("/h", false)).unwrap() else { panic!() };
        assert!(!h.complete);
        t.run(MetaCommand::Complete { file_id: h.id, path: "/h".into(), blocks: vec![], len: 0, now_ms: 2 }).unwrap();
        let Outcome::Freed { inode: Some(e), .. } = t.run(sealed("/e", true)).unwrap() else { panic!() };
        t.run(MetaCommand::Complete { file_id: e.id, path: "/e".into(), blocks: vec![], len: 0, now_ms: 2 }).unwrap();
        assert!(t.reader().resolve("/e").unwrap().complete);
    }

    #[test]
    fn special_files_and_ctime_stamps() {
        let t = T::new();
        t.run(mkdir("/d", false)).unwrap();
        let nod = |p: &str, kind| MetaCommand::Mknod { path: p.into(), kind, mode: 0o10640, rdev: 0x103, now_ms: 5 };
        let Outcome::Inode(f) = t.run(nod("/d/fifo", InodeKind::Fifo)).unwrap() else { panic!() };
        assert_eq!((f.kind, f.mode, f.rdev, f.complete), (InodeKind::Fifo, 0o640, 0, true));
        let Outcome::Inode(c) = t.run(nod("/d/chr", InodeKind::CharDev)).unwrap() else { panic!() };
        assert_eq!(c.rdev, 0x103);
        assert_eq!(t.kind(nod("/d/fifo", InodeKind::Socket)), ErrorKind::AlreadyExists);
        assert_eq!(t.kind(nod("/d/file", InodeKind::File)), ErrorKind::InvalidArgument);
        assert_eq!(t.kind(nod("/nope/x", InodeKind::Fifo)), ErrorKind::NotFound);
        let d = t.reader().resolve("/d").unwrap();
        assert_eq!((d.mtime_ms, d.ctime_ms), (5, 5), "a new entry stamps its directory");
        assert_eq!(t.reader().sys_u64(KEY_FILES).unwrap(), 2);

        // Timed stamps the ctime of what it changed, and nothing on failure.
        let chmod = |p: &str| MetaCommand::SetAttr { path: p.into(), mode: Some(0o600), mtime_ms: None };
        t.run(MetaCommand::Timed { now_ms: 9, cmd: Box::new(chmod("/d/fifo")) }).unwrap();
        let f = t.reader().resolve("/d/fifo").unwrap();
        assert_eq!((f.mode, f.ctime_ms, f.mtime_ms), (0o600, 9, 5));
        let xattr = MetaCommand::SetXattr { path: "/d/fifo".into(), name: "user.a".into(), value: None, flags: 0 };
        assert_eq!(t.kind(MetaCommand::Timed { now_ms: 11, cmd: Box::new(xattr) }), ErrorKind::NotFound);
        assert_eq!(t.reader().resolve("/d/fifo").unwrap().ctime_ms, 9);
        t.run(del("/d/fifo", false)).unwrap();
        assert_eq!(t.reader().resolve("/d").unwrap().ctime_ms, 2);
        assert_eq!(t.reader().sys_u64(KEY_FILES).unwrap(), 1);
    }

    #[test]
    fn mkdir_parents_and_errors() {
        let t = T::new();
        t.run(mkdir("/a/b/c", true)).unwrap();
        t.run(mkdir("/a/b/c", true)).unwrap();
        assert_eq!(t.kind(mkdir("/a/b", false)), ErrorKind::AlreadyExists);
        assert_eq!(t.kind(mkdir("/x/y", false)), ErrorKind::NotFound);
        t.run(create("/a/f", false)).unwrap();
        assert_eq!(t.kind(mkdir("/a/f/g", true)), ErrorKind::NotADirectory);
        assert_eq!(t.kind(create("/a/f/g", false)), ErrorKind::NotADirectory);
        assert_eq!(t.kind(create("/a/b", true)), ErrorKind::IsADirectory);
        assert_eq!(t.kind(create("/a/f", false)), ErrorKind::AlreadyExists);
        assert_eq!(t.reader().sys_u64(KEY_DIRS).unwrap(), 4);
        assert_eq!(t.reader().sys_u64(KEY_FILES).unwrap(), 1);
    }

    #[test]
    fn write_overwrite_frees_blocks() {
        let t = T::new();
        let ids = write_file(&t, "/f", &[10, 3]);
        let f = t.reader().resolve("/f").unwrap();
        assert!(f.complete);
        assert_eq!(f.len, 13);
        assert!(t.reader().block_exists(ids[0]).unwrap());
        let Outcome::Freed { blocks, .. } = t.run(create("/f", true)).unwrap() else { panic!() };
        assert_eq!(blocks, ids);
        assert!(!t.reader().block_exists(ids[0]).unwrap());
        assert_eq!(t.reader().sys_u64(KEY_FILES).unwrap(), 1);
    }

    #[test]
    fn an_aborted_rewrite_of_a_linked_file_leaves_it_empty_under_every_name() {
        let t = T::new();
        write_file(&t, "/a", &[5]);
        t.run(MetaCommand::Link { src: "/a".into(), dst: "/b".into(), now_ms: 3 }).unwrap();
        let Outcome::Freed { inode: Some(f), .. } = t.run(create("/a", true)).unwrap() else { panic!() };
        let Outcome::Block { block_id, .. } = t.run(MetaCommand::AddBlock { file_id: f.id, path: "/a".into() }).unwrap() else {
            panic!()
        };
        let Outcome::Freed { inodes, blocks, .. } = t.run(MetaCommand::Abort { file_id: f.id, path: "/a".into() }).unwrap() else {
            panic!()
        };
        assert_eq!((inodes, blocks), (0, vec![block_id]), "the written block is freed, the file is not");
        let r = t.reader();
        let (a, b) = (r.resolve("/a").unwrap(), r.resolve("/b").unwrap());
        assert_eq!(a, b);
        assert_eq!((a.id, a.len, a.complete, a.nlink, a.blocks.len()), (f.id, 0, true, 2, 0));
        assert!(!r.block_exists(block_id).unwrap());
        assert_eq!(r.sys_u64(KEY_FILES).unwrap(), 1);
        // With one name left, an aborted rewrite removes the file as before.
        t.run(del("/b", false)).unwrap();
        let Outcome::Freed { inode: Some(f), .. } = t.run(create("/a", true)).unwrap() else { panic!() };
        t.run(MetaCommand::Abort { file_id: f.id, path: "/a".into() }).unwrap();
        assert_eq!(t.reader().resolve("/a").unwrap_err().kind(), ErrorKind::NotFound);
    }

    #[test]
    fn hard_links_share_the_file_until_its_last_name_goes() {
        let t = T::new();
        let link = |s: &str, d: &str, now| MetaCommand::Link { src: s.into(), dst: d.into(), now_ms: now };
        t.run(mkdir("/d/e", true)).unwrap();
        let ids = write_file(&t, "/d/f", &[5]);
        let Outcome::Inode(f) = t.run(link("/d/f", "/d/e/g", 7)).unwrap() else { panic!() };
        assert_eq!((f.nlink, f.ctime_ms), (2, 7));
        t.run(link("/d/e/g", "/h", 8)).unwrap();
        let r = t.reader();
        let (a, b, c) = (r.resolve("/d/f").unwrap(), r.resolve("/d/e/g").unwrap(), r.resolve("/h").unwrap());
        assert_eq!((a.id, a.nlink), (b.id, 3));
        assert_eq!(a, c);
        assert_eq!(r.resolve("/d/e").unwrap().mtime_ms, 7, "the new name's directory changed");
        assert_eq!(t.reader().sys_u64(KEY_FILES).unwrap(), 1, "one file, three names");

        // What link refuses.
        assert_eq!(t.kind(link("/d", "/d2", 9)), ErrorKind::NotPermitted);
        assert_eq!(t.kind(link("/d/f", "/h", 9)), ErrorKind::AlreadyExists);
        assert_eq!(t.kind(link("/nope", "/x", 9)), ErrorKind::NotFound);
        assert_eq!(t.kind(link("/d/f", "/nope/x", 9)), ErrorKind::NotFound);
        assert_eq!(t.kind(link("/d/f", "/d/f/x", 9)), ErrorKind::NotADirectory);
        t.run(mount_cmd("/m")).unwrap();
        assert_eq!(t.kind(link("/d/f", "/m/x", 9)), ErrorKind::NotPermitted, "UFS objects have one key each");
        assert_eq!(t.kind(rename("/d/f", "/m/x")), ErrorKind::NotPermitted, "nor may a linked file move there");

        // rename between two names of one file changes nothing.
        t.run(rename("/d/f", "/h")).unwrap();
        assert!(t.reader().resolve("/d/f").is_ok());
        assert_eq!(t.reader().resolve("/h").unwrap().nlink, 3);

        // Unlinking a name (and renaming over one) keeps the blocks.
        let Outcome::Freed { inodes, blocks, .. } = t.run(del("/d/f", false)).unwrap() else { panic!() };
        assert_eq!((inodes, blocks.len()), (0, 0));
        let g = t.reader().resolve("/d/e/g").unwrap();
        assert_eq!((g.nlink, g.ctime_ms), (2, 2));
        write_file(&t, "/other", &[1]);
        let Outcome::Freed { blocks, .. } = t.run(rename("/other", "/h")).unwrap() else { panic!() };
        assert!(blocks.is_empty());
        assert_eq!(t.reader().resolve("/d/e/g").unwrap().nlink, 1);
        assert!(t.reader().block_exists(ids[0]).unwrap());

        // An overwrite through one name rewrites the file under all of them.
        t.run(link("/d/e/g", "/d/w", 9)).unwrap();
        let Outcome::Freed { inode: Some(w), blocks, .. } = t.run(create("/d/w", true)).unwrap() else { panic!() };
        assert_eq!((w.id, w.nlink, w.len, w.complete, blocks), (g.id, 2, 0, false, ids.clone()));
        assert_eq!(t.reader().resolve("/d/e/g").unwrap().id, g.id);
        let Outcome::Freed { inode: Some(w), .. } = t.run(MetaCommand::Complete { file_id: w.id, path: "/d/w".into(), blocks: vec![], len: 0, now_ms: 9 }).unwrap() else { panic!() };
        assert!(w.complete);
        t.run(del("/d/w", false)).unwrap();
        let ids = write_file(&t, "/d/e/g", &[5]);
        // A tree holding both names of a file frees it once, with its blocks.
        t.run(link("/d/e/g", "/d/g2", 10)).unwrap();
        let Outcome::Freed { inodes, blocks, .. } = t.run(del("/d", true)).unwrap() else { panic!() };
        assert_eq!((inodes, blocks), (3, ids.clone()));
        assert!(!t.reader().block_exists(ids[0]).unwrap());
        assert_eq!(t.reader().sys_u64(KEY_FILES).unwrap(), 1, "only the file renamed onto /h is left");
        assert_eq!(t.names("/"), vec!["h", "m"]);
    }

    #[test]
    fn directory_link_counts_follow_their_subdirectories() {
        let t = T::new();
        let links = |p: &str| t.reader().resolve(p).unwrap().nlink;
        assert_eq!(links("/"), 2);
        t.run(mkdir("/a/b/c", true)).unwrap();
        t.run(mkdir("/a/d", false)).unwrap();
        write_file(&t, "/a/f", &[1]);
        assert_eq!((links("/"), links("/a"), links("/a/b"), links("/a/b/c")), (3, 4, 3, 2));
        // A directory moving between parents moves its "..".
        t.run(rename("/a/d", "/a/b/d")).unwrap();
        assert_eq!((links("/a"), links("/a/b")), (3, 4));
        t.run(rename("/a/b/d", "/a/b/e")).unwrap();
        assert_eq!(links("/a/b"), 4);
        // Over an empty directory: one replaced, one arrived.
        t.run(mkdir("/x", false)).unwrap();
        t.run(rename("/a/b/e", "/x")).unwrap();
        assert_eq!((links("/"), links("/a/b")), (4, 3));
        t.run(del("/x", false)).unwrap();
        t.run(del("/a/b", true)).unwrap();
        assert_eq!((links("/"), links("/a")), (3, 2), "files do not count");
    }

    #[test]
    fn readers_tell_a_concurrent_removal_from_a_dangling_entry() {
        use crate::store::{dentry_key, id_key, CF_DENTRIES, CF_INODES};
        let t = T::new();
        t.run(mkdir("/d", false)).unwrap();
        t.run(create("/d/f", false)).unwrap();
        let r = t.reader();
        let dir = r.resolve("/d").unwrap();
        let (name, id) = r.children(dir.id).unwrap().remove(0);
        // Removed after a listing read its name: skipped, not an error.
        t.run(del("/d/f", false)).unwrap();
        assert_eq!(r.listed_inode(dir.id, &name, id, "/d/f").unwrap(), None);
        assert_eq!(r.resolve("/d/f").unwrap_err().kind(), ErrorKind::NotFound);
        // Replaced after the listing read it (a rename over it): the new file.
        t.run(create("/d/f", false)).unwrap();
        let (_, old_id) = r.children(dir.id).unwrap().remove(0);
        t.run(create("/d/new", false)).unwrap();
        t.run(rename("/d/new", "/d/f")).unwrap();
        let now = r.listed_inode(dir.id, "f", old_id, "/d/f").unwrap().unwrap();
        assert_ne!(now.id, old_id);
        assert_eq!(now.id, r.resolve("/d/f").unwrap().id);
        // A name that keeps pointing at a missing inode is corruption.
        t.run(create("/d/g", false)).unwrap();
        let g = r.resolve("/d/g").unwrap();
        let db = t.store.db();
        db.delete_cf(db.cf_handle(CF_INODES).unwrap(), id_key(g.id)).unwrap();
        assert_eq!(r.resolve("/d/g").unwrap_err().kind(), ErrorKind::Corrupt);
        assert_eq!(r.listed_inode(dir.id, "g", g.id, "/d/g").unwrap_err().kind(), ErrorKind::Corrupt);
        assert!(db.get_cf(db.cf_handle(CF_DENTRIES).unwrap(), dentry_key(dir.id, "g")).unwrap().is_some());
    }

    #[test]
    fn delete_rules() {
        let t = T::new();
        t.run(mkdir("/d/e", true)).unwrap();
        let ids = write_file(&t, "/d/e/f", &[5]);
        assert_eq!(t.kind(del("/d", false)), ErrorKind::NotEmpty);
        assert_eq!(t.kind(del("/", true)), ErrorKind::InvalidArgument);
        assert_eq!(t.kind(del("/nope", true)), ErrorKind::NotFound);
        let Outcome::Freed { inodes, blocks, .. } = t.run(del("/d", true)).unwrap() else { panic!() };
        assert_eq!(inodes, 3);
        assert_eq!(blocks, ids);
        assert!(t.names("/").is_empty());
        assert_eq!(t.reader().sys_u64(KEY_DIRS).unwrap(), 1);
        assert_eq!(t.reader().sys_u64(KEY_FILES).unwrap(), 0);
    }

    #[test]
    fn rename_rules() {
        let t = T::new();
        t.run(mkdir("/a/sub", true)).unwrap();
        write_file(&t, "/a/sub/f", &[1]);
        t.run(rename("/a", "/b")).unwrap();
        assert_eq!(t.names("/"), vec!["b".to_string()]);
        assert!(t.reader().resolve("/b/sub/f").is_ok());
        assert_eq!(t.kind(rename("/b", "/b/sub/x")), ErrorKind::InvalidArgument);
        assert_eq!(t.kind(rename("/zz", "/y")), ErrorKind::NotFound);
        // file over file replaces it
        let old = write_file(&t, "/g", &[2]);
        let Outcome::Freed { blocks, .. } = t.run(rename("/b/sub/f", "/g")).unwrap() else { panic!() };
        assert_eq!(blocks, old);
        assert_eq!(t.reader().resolve("/g").unwrap().len, 1);
        // dir over non-empty dir
        t.run(mkdir("/c/x", true)).unwrap();
        assert_eq!(t.kind(rename("/b", "/c")), ErrorKind::NotEmpty);
        assert_eq!(t.kind(rename("/g", "/c")), ErrorKind::IsADirectory);
        assert_eq!(t.kind(rename("/b", "/g")), ErrorKind::NotADirectory);
        // within the same parent
        t.run(rename("/g", "/h")).unwrap();
        assert_eq!(t.names("/"), vec!["b".to_string(), "c".to_string(), "h".to_string()]);
    }

    #[test]
    fn closing_an_empty_file_keeps_its_times() {
        let t = T::new();
        let Outcome::Freed { inode: Some(f), .. } = t.run(create("/e", false)).unwrap() else { panic!() };
        let done = |p: &str, id, blocks: Vec<BlockMeta>, len| MetaCommand::Complete { file_id: id, path: p.into(), blocks, len, now_ms: 50 };
        t.run(done("/e", f.id, vec![], 0)).unwrap();
        let e = t.reader().resolve("/e").unwrap();
        assert_eq!((e.complete, e.mtime_ms, e.ctime_ms), (true, 1, 1), "no write, no new times");
        write_file(&t, "/w", &[3]);
        assert_eq!(t.reader().resolve("/w").unwrap().mtime_ms, 2, "a written file takes the close's time");
    }

    #[test]
    fn abort_and_set_attr() {
        let t = T::new();
        let Outcome::Freed { inode: Some(f), .. } = t.run(create("/f", false)).unwrap() else { panic!() };
        t.run(MetaCommand::AddBlock { file_id: f.id, path: "/f".into() }).unwrap();
        let Outcome::Freed { blocks, .. } = t.run(MetaCommand::Abort { file_id: f.id, path: "/f".into() }).unwrap() else {
            panic!()
        };
        assert_eq!(blocks.len(), 1);
        assert_eq!(t.kind(MetaCommand::SetAttr { path: "/f".into(), mode: Some(0o600), mtime_ms: None }), ErrorKind::NotFound);
        t.run(mkdir("/d", false)).unwrap();
        let Outcome::Inode(d) = t.run(MetaCommand::SetAttr { path: "/d".into(), mode: Some(0o700), mtime_ms: Some(42) }).unwrap()
        else {
            panic!()
        };
        assert_eq!((d.mode, d.mtime_ms), (0o700, 42));
    }

    #[test]
    fn owners_symlinks_and_xattrs() {
        use super::attrs::{XATTR_BYTES_MAX, XATTR_CREATE, XATTR_REPLACE};
        let t = T::new();
        let owned = |cmd| MetaCommand::Owned { uid: 7, gid: 8, cmd: Box::new(cmd) };
        let Outcome::Freed { inode: Some(f), .. } = t.run(owned(create("/f", false))).unwrap() else { panic!() };
        assert_eq!((f.uid, f.gid), (7, 8));
        let Outcome::Inode(d) = t.run(owned(mkdir("/d", false))).unwrap() else { panic!() };
        assert_eq!((d.uid, d.gid), (7, 8));
        assert_eq!(t.kind(owned(mkdir("/d", false))), ErrorKind::AlreadyExists, "a failed command owns nothing");
        let chown = |p: &str, uid, gid| MetaCommand::Chown { path: p.into(), uid, gid, now_ms: 9 };
        let Outcome::Inode(d) = t.run(chown("/d", None, Some(3))).unwrap() else { panic!() };
        assert_eq!((d.uid, d.gid, d.ctime_ms), (7, 3, 9));
        assert_eq!(t.kind(chown("/nope", Some(1), None)), ErrorKind::NotFound);

        let link = |p: &str, to: &str| MetaCommand::Symlink { path: p.into(), target: to.into(), now_ms: 4 };
        let Outcome::Inode(l) = t.run(link("/d/l", "../f")).unwrap() else { panic!() };
        assert_eq!((l.kind, l.target.as_str(), l.len), (InodeKind::Symlink, "../f", 4));
        assert_eq!(t.kind(link("/d/l", "x")), ErrorKind::AlreadyExists);
        assert_eq!(t.kind(link("/d/m", "")), ErrorKind::InvalidArgument);
        assert_eq!(t.kind(link("/no/m", "x")), ErrorKind::NotFound);
        t.run(rename("/d/l", "/l2")).unwrap();
        t.run(MetaCommand::Delete { path: "/l2".into(), recursive: false, now_ms: 5 }).unwrap();

        let set = |name: &str, v: Option<&[u8]>, flags| MetaCommand::SetXattr {
            path: "/f".into(),
            name: name.into(),
            value: v.map(<[u8]>::to_vec),
            flags,
        };
        t.run(set("user.b", Some(b"2"), 0)).unwrap();
        let Outcome::Inode(f) = t.run(set("user.a", Some(b"1"), XATTR_CREATE)).unwrap() else { panic!() };
        assert_eq!(f.xattrs, vec![("user.a".to_string(), b"1".to_vec()), ("user.b".to_string(), b"2".to_vec())]);
        assert_eq!(t.kind(set("user.a", Some(b"x"), XATTR_CREATE)), ErrorKind::AlreadyExists);
        assert_eq!(t.kind(set("user.c", Some(b"x"), XATTR_REPLACE)), ErrorKind::NotFound);
        assert_eq!(t.kind(set("user.c", None, 0)), ErrorKind::NotFound);
        assert_eq!(t.kind(set("", Some(b"x"), 0)), ErrorKind::InvalidArgument);
        assert_eq!(t.kind(set("user.big", Some(&vec![0u8; XATTR_BYTES_MAX]), 0)), ErrorKind::NoSpace);
        let Outcome::Inode(f) = t.run(set("user.a", None, 0)).unwrap() else { panic!() };
        assert_eq!(f.xattrs.len(), 1);
    }

    fn mount_cmd(p: &str) -> MetaCommand {
        let mount = Mount {
            id: 0,
            path: p.into(),
            uri: format!("s3://b{p}"),
            options: Default::default(),
            write_mode: crate::store::WriteMode::CacheOnly,
            ttl_ms: 0,
            sync_interval_ms: 1000,
            block_size: 10,
            upload_delay_ms: 0,
        };
        MetaCommand::Mount { mount, now_ms: 1 }
    }

    fn entry(name: &str, len: u64, etag: &str) -> UfsEntry {
        UfsEntry { name: name.into(), is_dir: false, len, mtime_ms: 5, etag: etag.into() }
    }

    fn mount_id(t: &T, p: &str) -> u64 {
        t.reader().resolve(p).unwrap().mount_id
    }

    #[test]
    fn mounts_do_not_nest_and_guard_their_contents() {
        let t = T::new();
        assert_eq!(t.kind(mount_cmd("/")), ErrorKind::InvalidArgument);
        let Outcome::Mount(m) = t.run(mount_cmd("/a/b")).unwrap() else { panic!() };
        assert_eq!(mount_id(&t, "/a/b"), m.id);
        assert_eq!(t.kind(mount_cmd("/a/b/c")), ErrorKind::InvalidArgument);
        assert_eq!(t.kind(mount_cmd("/a")), ErrorKind::InvalidArgument);
        t.run(mkdir("/x", false)).unwrap();
        t.run(create("/x/f", false)).unwrap();
        assert_eq!(t.kind(mount_cmd("/x")), ErrorKind::NotEmpty);
        // The mount point and its parents cannot be removed or moved.
        assert_eq!(t.kind(del("/a", true)), ErrorKind::InvalidArgument);
        assert_eq!(t.kind(rename("/a/b", "/y")), ErrorKind::InvalidArgument);
        // UFS objects under a cache-only mount cannot be deleted.
        t.run(MetaCommand::UfsUpsert { path: "/a/b/o".into(), mount_id: m.id, entry: entry("o", 25, "e1"), now_ms: 2 })
            .unwrap();
        assert_eq!(t.kind(del("/a/b/o", false)), ErrorKind::PermissionDenied);
        // A local file under the mount: umount needs force.
        t.run(create("/a/b/local", false)).unwrap();
        assert_eq!(t.kind(MetaCommand::Umount { path: "/a/b".into(), force: false, now_ms: 3 }), ErrorKind::NotEmpty);
        let Outcome::Freed { blocks, .. } =
            t.run(MetaCommand::Umount { path: "/a/b".into(), force: true, now_ms: 3 }).unwrap()
        else {
            panic!()
        };
        assert_eq!(blocks.len(), 3, "the UFS object's 3 blocks are freed");
        assert!(t.reader().mounts().unwrap().is_empty());
        assert_eq!(t.kind(MetaCommand::Umount { path: "/a/b".into(), force: true, now_ms: 3 }), ErrorKind::NotFound);
    }

    #[test]
    fn changed_objects_get_new_blocks_and_listings_drop_what_is_gone() {
        let t = T::new();
        let Outcome::Mount(m) = t.run(mount_cmd("/m")).unwrap() else { panic!() };
        let up = |p: &str, e: UfsEntry, now| MetaCommand::UfsUpsert { path: p.into(), mount_id: m.id, entry: e, now_ms: now };
        t.run(up("/m/d/f", entry("f", 25, "e1"), 2)).unwrap();
        let f = t.reader().resolve("/m/d/f").unwrap();
        assert_eq!(f.blocks.iter().map(|b| b.len).collect::<Vec<_>>(), vec![10, 10, 5]);
        assert_eq!(f.ufs.as_ref().unwrap().rel, "d/f");
        assert!(t.reader().resolve("/m/d").unwrap().is_ufs_persisted(), "parent created as a UFS directory");
        // Same version: blocks kept, only the sync time moves.
        let Outcome::Freed { blocks, .. } = t.run(up("/m/d/f", entry("f", 25, "e1"), 3)).unwrap() else { panic!() };
        assert!(blocks.is_empty());
        assert_eq!(t.reader().resolve("/m/d/f").unwrap().blocks, f.blocks);
        // Same length, new ETag: new block ids, the old ones freed.
        let Outcome::Freed { blocks, .. } = t.run(up("/m/d/f", entry("f", 25, "e2"), 4)).unwrap() else { panic!() };
        assert_eq!(blocks, f.blocks.iter().map(|b| b.id).collect::<Vec<_>>());
        let f2 = t.reader().resolve("/m/d/f").unwrap();
        assert!(f2.blocks.iter().all(|b| !blocks.contains(&b.id)));
        // A listing without `f` (and with `g`) removes f but keeps a local file.
        t.run(create("/m/d/local", false)).unwrap();
        let page = MetaCommand::UfsSyncPage { dir: "/m/d".into(), mount_id: m.id, entries: vec![entry("g", 1, "x")], gen: 10 };
        t.run(page).unwrap();
        let Outcome::Freed { inodes, blocks, .. } = t.run(MetaCommand::UfsSyncEnd { dir: "/m/d".into(), gen: 10 }).unwrap()
        else {
            panic!()
        };
        assert_eq!(inodes, 1);
        assert_eq!(blocks.len(), 3);
        assert_eq!(t.names("/m/d"), vec!["g".to_string(), "local".to_string()]);
        assert_eq!(t.reader().resolve("/m/d").unwrap().listed_ms, 10);
        // A UFS entry never replaces a local file of the same name.
        t.run(up("/m/d/local", entry("local", 99, "z"), 11)).unwrap();
        assert!(t.reader().resolve("/m/d/local").unwrap().ufs.is_none());
        // Removal of a vanished object; a missing path is fine.
        t.run(MetaCommand::UfsRemove { path: "/m/d/g".into(), now_ms: 12 }).unwrap();
        t.run(MetaCommand::UfsRemove { path: "/m/d/g".into(), now_ms: 12 }).unwrap();
        assert_eq!(t.names("/m/d"), vec!["local".to_string()]);
    }

    #[test]
    fn absurd_ufs_lengths_are_refused_without_allocating_their_blocks() {
        let t = T::new();
        let Outcome::Mount(m) = t.run(mount_cmd("/m")).unwrap() else { panic!() };
        // Blocks of 10 bytes: 2^62 bytes would be ~4.6e17 block ids.
        let huge = entry("huge", 1 << 62, "e");
        let up = MetaCommand::UfsUpsert { path: "/m/huge".into(), mount_id: m.id, entry: huge.clone(), now_ms: 2 };
        assert_eq!(t.kind(up), ErrorKind::InvalidArgument);
        // In a listing it is left out; the rest of the page is merged.
        let page = MetaCommand::UfsSyncPage { dir: "/m".into(), mount_id: m.id, entries: vec![huge, entry("ok", 25, "x")], gen: 3 };
        t.run(page).unwrap();
        assert_eq!(t.names("/m"), vec!["ok".to_string()]);
        // One block past the limit is refused as well.
        let over = entry("over", 10 * ufs::MAX_UFS_BLOCKS + 1, "y");
        let up = MetaCommand::UfsUpsert { path: "/m/over".into(), mount_id: m.id, entry: over, now_ms: 4 };
        assert_eq!(t.kind(up), ErrorKind::InvalidArgument);
    }

    #[test]
    fn jobs_and_pins() {
        let t = T::new();
        t.run(mkdir("/d", false)).unwrap();
        assert_eq!(t.kind(MetaCommand::JobCreate { path: "/nope".into(), parallel: 0, now_ms: 1 }), ErrorKind::NotFound);
        let Outcome::Job(j) = t.run(MetaCommand::JobCreate { path: "/d".into(), parallel: 0, now_ms: 1 }).unwrap() else {
            panic!()
        };
        let mut c = j.clone();
        c.state = Some(crate::store::JobState::Cancelled);
        t.run(MetaCommand::JobUpdate { job: c }).unwrap();
        // The runner's later progress cannot revive a cancelled job.
        let mut p = j.clone();
        p.bytes_done = 7;
        let Outcome::Job(after) = t.run(MetaCommand::JobUpdate { job: p }).unwrap() else { panic!() };
        assert_eq!(after.state, Some(crate::store::JobState::Cancelled));
        assert_eq!(after.bytes_done, 7);
        assert_eq!(t.reader().jobs().unwrap().len(), 1);
        let Outcome::Inode(d) = t.run(MetaCommand::SetPin { path: "/d".into(), pinned: true }).unwrap() else { panic!() };
        assert!(d.pinned);
    }
}
