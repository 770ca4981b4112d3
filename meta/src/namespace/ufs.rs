//! Mounts, and merging what a UFS says into the namespace.
//!
//! The meta service asks the UFS (outside the state machine, since UFS
//! answers are not deterministic) and proposes what it saw; these commands
//! merge it. A changed object gets new block ids, so blocks cached from the
//! old version can never be served for the new one.
//!
//! Entries written through Curvine and not (yet) in the UFS are "local":
//! a UFS entry of the same name never replaces them, and a listing that
//! lacks them never removes them.

use curvine_common::path;
use curvine_common::{Error, ErrorKind, Result};

use super::{Ns, Outcome};
use crate::store::{
    decode, encode, id_key, BlockMeta, Inode, InodeKind, Mount, Persist, PersistItem, UfsMeta, WriteMode, CF_BLOCKS,
    CF_MOUNTS, CF_PERSIST, KEY_NEXT_BLOCK, KEY_NEXT_MOUNT,
};

/// One object or directory as the UFS reported it (part of Raft commands).
pub use curvine_ufs::UfsEntry;

fn join_rel(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Same object version: the ETag decides when both sides have one.
fn same_version(u: &UfsMeta, e: &UfsEntry) -> bool {
    if !u.etag.is_empty() && !e.etag.is_empty() {
        return u.etag == e.etag && u.len == e.len;
    }
    u.len == e.len && u.mtime_ms == e.mtime_ms
}

impl Ns<'_> {
    fn mount_by_id(&self, id: u64) -> Result<Mount> {
        self.mounts()?
            .into_iter()
            .find(|m| m.id == id)
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("mount {id} was removed meanwhile")))
    }

    pub(super) fn mount(&mut self, m: &Mount, now: i64) -> Result<Outcome> {
        if m.path == "/" {
            return Err(Error::invalid(format!("cannot mount {} at /: mount below the root, e.g. /data", m.uri)));
        }
        for o in self.mounts()? {
            if path::is_within(&m.path, &o.path) {
                return Err(Error::invalid(format!(
                    "cannot mount {} at {}: it is inside the mount of {} at {} (mounts cannot nest)",
                    m.uri, m.path, o.uri, o.path
                )));
            }
            if path::is_within(&o.path, &m.path) {
                return Err(Error::invalid(format!(
                    "cannot mount {} at {}: the mount of {} at {} is inside it (mounts cannot nest)",
                    m.uri, m.path, o.uri, o.path
                )));
            }
        }
        let mut dir = match self.resolve(&m.path) {
            Ok(d) if !d.is_dir() => return Err(Error::not_dir(&m.path)),
            Ok(d) if !self.children(d.id)?.is_empty() => {
                return Err(Error::new(
                    ErrorKind::NotEmpty,
                    format!("cannot mount {} at {}: the directory is not empty", m.uri, m.path),
                ))
            }
            Ok(d) => d,
            Err(e) if e.kind() == ErrorKind::NotFound => self.mkdirs(&m.path, 0o755, now)?,
            Err(e) => return Err(e),
        };
        let mut m = m.clone();
        m.id = self.next_id(KEY_NEXT_MOUNT, 1)?;
        dir.mount_id = m.id;
        dir.listed_ms = 0;
        self.put_inode(&dir)?;
        self.txn.put(CF_MOUNTS, id_key(m.id).to_vec(), encode(&m)?);
        Ok(Outcome::Mount(m))
    }

    pub(super) fn umount(&mut self, p: &str, force: bool, now: i64) -> Result<Outcome> {
        let m = self
            .mounts()?
            .into_iter()
            .find(|m| m.path == p)
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("{p}: not a mount point (see `cv mount`)")))?;
        let dir = self.resolve(p)?;
        let local = self.count_local(&dir)?;
        if local > 0 && !force {
            return Err(Error::new(
                ErrorKind::NotEmpty,
                format!(
                    "cannot unmount {p}: {local} file(s) under it exist only in the cache, not in {}; \
                     copy them out first or unmount with --force to drop them",
                    m.uri
                ),
            ));
        }
        let (parent_path, _) = path::split(p).ok_or_else(|| Error::invalid("/: not a mount point"))?;
        let mut parent = self.resolve(parent_path)?;
        let mut freed = Vec::new();
        let n = self.remove_tree(&mut parent, &dir.name, &dir, now, &mut freed)?;
        self.txn.delete(CF_MOUNTS, id_key(m.id).to_vec());
        Ok(Outcome::Freed { inodes: n, blocks: freed, inode: None })
    }

    /// Files under `node` (itself included) that the UFS does not hold.
    fn count_local(&self, node: &Inode) -> Result<u64> {
        let mut n = 0;
        let mut stack = vec![node.clone()];
        while let Some(i) = stack.pop() {
            if i.is_dir() {
                for (_, id) in self.children(i.id)? {
                    stack.push(self.must_inode(id, &i.name)?);
                }
            } else if !i.is_ufs_persisted() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// The directory `dir` under mount `m`, creating missing directories on
    /// the way as UFS directories (they exist there: something below does).
    fn ufs_dirs(&mut self, m: &Mount, dir: &str, now: i64) -> Result<Inode> {
        let rel = m.rel(dir).ok_or_else(|| Error::internal(format!("{dir} is not under the mount at {}", m.path)))?;
        let mut cur = self.resolve(&m.path)?;
        if cur.mount_id != m.id {
            return Err(Error::new(ErrorKind::NotFound, format!("{}: mount was replaced meanwhile", m.path)));
        }
        let mut walked = String::new();
        for name in path::components(rel) {
            walked = join_rel(&walked, name);
            cur = match self.child(cur.id, name)? {
                Some(id) => {
                    let c = self.must_inode(id, dir)?;
                    if !c.is_dir() {
                        return Err(Error::not_dir(&path::join(&m.path, &walked)));
                    }
                    c
                }
                None => {
                    let mut d = self.new_inode(name, InodeKind::Dir, 0o755, now)?;
                    d.ufs = Some(UfsMeta {
                        mount_id: m.id,
                        rel: walked.clone(),
                        len: 0,
                        mtime_ms: now,
                        etag: String::new(),
                        synced_ms: now,
                        persist: Persist::Persisted,
                    });
                    self.link(&mut cur, &d, now)?;
                    d
                }
            };
        }
        Ok(cur)
    }

    /// Block ids for a UFS object of `len` bytes, registered to `file`.
    fn ufs_blocks(&mut self, file: u64, len: u64, block_size: u64) -> Result<Vec<BlockMeta>> {
        check_ufs_len(len, block_size)?;
        let mut blocks = Vec::with_capacity(len.div_ceil(block_size) as usize);
        let mut left = len;
        while left > 0 {
            let id = self.next_id(KEY_NEXT_BLOCK, 1)?;
            let n = left.min(block_size);
            self.txn.put(CF_BLOCKS, id_key(id).to_vec(), file.to_be_bytes().to_vec());
            blocks.push(BlockMeta { id, len: n });
            left -= n;
        }
        Ok(blocks)
    }

    fn free_file_blocks(&mut self, f: &Inode, freed: &mut Vec<u64>) {
        for b in &f.blocks {
            self.txn.delete(CF_BLOCKS, id_key(b.id).to_vec());
            freed.push(b.id);
        }
    }

    fn apply_ufs_file(&mut self, f: &mut Inode, m: &Mount, rel: &str, e: &UfsEntry, stamp: i64) -> Result<()> {
        f.blocks = self.ufs_blocks(f.id, e.len, m.block_size)?;
        f.len = e.len;
        f.block_size = m.block_size;
        f.replication = 1;
        f.complete = true;
        f.mtime_ms = e.mtime_ms;
        f.ufs = Some(UfsMeta {
            mount_id: m.id,
            rel: rel.to_string(),
            len: e.len,
            mtime_ms: e.mtime_ms,
            etag: e.etag.clone(),
            synced_ms: stamp,
            persist: Persist::Persisted,
        });
        Ok(())
    }

    /// Merges entry `e` into directory `parent`; `rel` is the entry's UFS path.
    fn merge_child(
        &mut self,
        parent: &mut Inode,
        m: &Mount,
        rel: &str,
        e: &UfsEntry,
        stamp: i64,
        freed: &mut Vec<u64>,
    ) -> Result<()> {
        if let Some(id) = self.child(parent.id, &e.name)? {
            let mut old = self.must_inode(id, rel)?;
            if !old.is_ufs_persisted() {
                return Ok(()); // a local entry wins over the UFS
            }
            if old.is_dir() == e.is_dir {
                let u = old.ufs.as_mut().expect("persisted entries have UFS metadata");
                if e.is_dir || same_version(u, e) {
                    u.synced_ms = stamp;
                    return self.put_inode(&old);
                }
                // Changed in the UFS: the old version's blocks are never served again.
                self.free_file_blocks(&old, freed);
                self.apply_ufs_file(&mut old, m, rel, e, stamp)?;
                return self.put_inode(&old);
            }
            if self.count_local(&old)? > 0 {
                return Ok(());
            }
            self.remove_tree(parent, &old.name, &old, stamp, freed)?;
        }
        let kind = if e.is_dir { InodeKind::Dir } else { InodeKind::File };
        let mut node = self.new_inode(&e.name, kind, if e.is_dir { 0o755 } else { 0o644 }, stamp)?;
        if e.is_dir {
            node.ufs = Some(UfsMeta {
                mount_id: m.id,
                rel: rel.to_string(),
                len: 0,
                mtime_ms: e.mtime_ms,
                etag: String::new(),
                synced_ms: stamp,
                persist: Persist::Persisted,
            });
        } else {
            self.apply_ufs_file(&mut node, m, rel, e, stamp)?;
        }
        self.link(parent, &node, stamp)
    }

    pub(super) fn ufs_upsert(&mut self, p: &str, mount_id: u64, e: &UfsEntry, now: i64) -> Result<Outcome> {
        let m = self.mount_by_id(mount_id)?;
        let rel = m.rel(p).ok_or_else(|| Error::internal(format!("{p} is not under the mount at {}", m.path)))?;
        let Some((parent_path, name)) = path::split(p).filter(|_| !rel.is_empty()) else {
            return Ok(Outcome::None); // the mount point itself
        };
        if name != e.name {
            return Err(Error::internal(format!("{p}: UFS entry is named {}", e.name)));
        }
        let mut parent = self.ufs_dirs(&m, parent_path, now)?;
        let mut freed = Vec::new();
        self.merge_child(&mut parent, &m, rel, e, now, &mut freed)?;
        let inode = self.resolve(p).ok();
        Ok(Outcome::Freed { inodes: 0, blocks: freed, inode })
    }

    pub(super) fn ufs_sync_page(&mut self, dir: &str, mount_id: u64, entries: &[UfsEntry], gen: i64) -> Result<Outcome> {
        let m = self.mount_by_id(mount_id)?;
        let mut parent = self.ufs_dirs(&m, dir, gen)?;
        let rel_dir = m.rel(dir).unwrap_or_default().to_string();
        let mut freed = Vec::new();
        for e in entries {
            if e.name.is_empty() || e.name.contains('/') {
                continue; // not a direct child: never trust a malformed listing
            }
            if !e.is_dir && check_ufs_len(e.len, m.block_size).is_err() {
                continue; // one absurd length must not make the directory unlistable
            }
            self.merge_child(&mut parent, &m, &join_rel(&rel_dir, &e.name), e, gen, &mut freed)?;
        }
        Ok(Outcome::Freed { inodes: 0, blocks: freed, inode: None })
    }

    pub(super) fn ufs_sync_end(&mut self, dir: &str, gen: i64) -> Result<Outcome> {
        let mut d = self.resolve(dir)?;
        let mut freed = Vec::new();
        let mut removed = 0;
        for (_, id) in self.children(d.id)? {
            let c = self.must_inode(id, dir)?;
            let stale = matches!(&c.ufs, Some(u) if u.persist == Persist::Persisted && u.synced_ms < gen);
            if stale && self.count_local(&c)? == 0 {
                removed += self.remove_tree(&mut d, &c.name, &c, gen, &mut freed)?;
            }
        }
        d.listed_ms = gen;
        self.put_inode(&d)?;
        Ok(Outcome::Freed { inodes: removed, blocks: freed, inode: Some(d) })
    }

    pub(super) fn ufs_remove(&mut self, p: &str, now: i64) -> Result<Outcome> {
        let node = match self.resolve(p) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
                return Ok(Outcome::Freed { inodes: 0, blocks: vec![], inode: None })
            }
            Err(e) => return Err(e),
        };
        if !node.is_ufs_persisted() || self.count_local(&node)? > 0 {
            return Ok(Outcome::Freed { inodes: 0, blocks: vec![], inode: Some(node) });
        }
        let (parent_path, _) = path::split(p).ok_or_else(|| Error::invalid("/: cannot remove the root"))?;
        let mut parent = self.resolve(parent_path)?;
        let mut freed = Vec::new();
        let n = self.remove_tree(&mut parent, &node.name, &node, now, &mut freed)?;
        Ok(Outcome::Freed { inodes: n, blocks: freed, inode: None })
    }

    /// UFS metadata of a new file at `p`: pending under a mount that writes
    /// to its UFS, none elsewhere (cache-only files live in the cache only).
    pub(super) fn pending_ufs(&self, p: &str, now: i64) -> Result<Option<UfsMeta>> {
        let Some(m) = self.mount_of(p)? else { return Ok(None) };
        if m.write_mode == WriteMode::CacheOnly {
            return Ok(None);
        }
        Ok(Some(UfsMeta {
            mount_id: m.id,
            rel: m.rel(p).unwrap_or_default().to_string(),
            len: 0,
            mtime_ms: 0,
            etag: String::new(),
            synced_ms: now,
            persist: Persist::Pending,
        }))
    }

    /// Queues a completed pending file for upload (after the mount's delay).
    pub(super) fn queue_persist(&mut self, f: &Inode, p: &str, now: i64) -> Result<()> {
        let Some(u) = f.ufs.as_ref().filter(|u| u.persist == Persist::Pending) else { return Ok(()) };
        let delay = match self.mount_by_id(u.mount_id) {
            Ok(m) if m.write_mode == WriteMode::WriteBack => m.upload_delay_ms.max(0),
            Ok(_) => 0,
            Err(_) => return Ok(()), // unmounted meanwhile: nowhere to upload
        };
        let item = PersistItem { file_id: f.id, path: p.to_string(), due_ms: now + delay, attempts: 0, last_error: String::new() };
        self.txn.put(CF_PERSIST, id_key(f.id).to_vec(), encode(&item)?);
        Ok(())
    }

    pub(super) fn persist_done(&mut self, file: u64, len: u64, etag: &str, mtime: i64, now: i64) -> Result<Outcome> {
        self.txn.delete(CF_PERSIST, id_key(file).to_vec());
        let Some(mut f) = self.inode(file)? else {
            return Ok(Outcome::None); // deleted or overwritten while uploading
        };
        match f.ufs.as_mut() {
            Some(u) if u.persist == Persist::Pending && f.complete && f.len == len => {
                u.persist = Persist::Persisted;
                u.len = len;
                u.etag = etag.to_string();
                u.mtime_ms = mtime;
                u.synced_ms = now;
            }
            _ => return Ok(Outcome::None),
        }
        self.put_inode(&f)?;
        Ok(Outcome::Inode(f))
    }

    /// After a rename: `node` (now at `path`) and everything below it have
    /// their UFS key under `rel`; queued uploads follow them.
    pub(super) fn rebase_ufs(&mut self, node: &mut Inode, rel: &str, path: &str) -> Result<()> {
        if let Some(u) = node.ufs.as_mut() {
            let pending = u.persist == Persist::Pending;
            if u.rel != rel {
                u.rel = rel.to_string();
                self.put_inode(node)?;
            }
            if pending && !node.is_dir() {
                let key = id_key(node.id).to_vec();
                if let Some(v) = self.txn.get(CF_PERSIST, &key)? {
                    let mut item: PersistItem = decode(&v)?;
                    item.path = path.to_string();
                    self.txn.put(CF_PERSIST, key, encode(&item)?);
                }
            }
        }
        if node.is_dir() {
            for (_, id) in self.children(node.id)? {
                let mut child = self.must_inode(id, path)?;
                let name = child.name.clone();
                self.rebase_ufs(&mut child, &join_rel(rel, &name), &path::join(path, &name))?;
            }
        }
        Ok(())
    }

    /// The file `id` was moved in the UFS: record the object's new version
    /// (a copy may carry a new ETag and mtime; the bytes are the same, so
    /// its cached blocks stay valid).
    pub(super) fn renamed_in_ufs(&mut self, id: u64, e: &UfsEntry, now: i64) -> Result<()> {
        let Some(mut f) = self.inode(id)? else { return Ok(()) };
        if let Some(u) = f.ufs.as_mut().filter(|u| u.persist == Persist::Persisted && u.len == e.len) {
            u.etag = e.etag.clone();
            u.mtime_ms = e.mtime_ms;
            u.synced_ms = now;
            self.put_inode(&f)?;
        }
        Ok(())
    }

    pub(super) fn persist_failed(&mut self, file: u64, error: &str, retry_ms: i64) -> Result<Outcome> {
        let key = id_key(file).to_vec();
        let Some(v) = self.txn.get(CF_PERSIST, &key)? else { return Ok(Outcome::None) };
        let mut item: PersistItem = decode(&v)?;
        item.attempts += 1;
        item.last_error = error.to_string();
        item.due_ms = retry_ms;
        self.txn.put(CF_PERSIST, key, encode(&item)?);
        Ok(Outcome::None)
    }
}

/// Most blocks a UFS object may have in the namespace (64 TiB at the default
/// 64 MiB blocks). Its block list is built when the entry is merged, in
/// the state machine: a length from a sparse file or a bad listing (2^63
/// bytes) would otherwise make every member allocate beyond memory, and
/// fail again each time the entry is replayed.
pub const MAX_UFS_BLOCKS: u64 = 1 << 20;

fn check_ufs_len(len: u64, block_size: u64) -> Result<()> {
    if len.div_ceil(block_size.max(1)) > MAX_UFS_BLOCKS {
        return Err(Error::invalid(format!(
            "a UFS object of {len} bytes would need more than {MAX_UFS_BLOCKS} blocks of {block_size} bytes; \
             mount with a larger block size to cache it"
        )));
    }
    Ok(())
}
