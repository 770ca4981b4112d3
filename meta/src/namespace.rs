//! The namespace commands and their pure logic against the state machine:
//! each command reads and writes through one `Txn`, so it applies atomically
//! or not at all. Commands carry every non-deterministic value (times) so
//! all replicas compute the same result.

use curvine_common::path;
use curvine_common::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};

use crate::store::{
    decode, decode_u64, dentry_key, encode, id_key, BlockMeta, Inode, InodeKind, Txn, CF_BLOCKS, CF_DENTRIES,
    CF_INODES, CF_SYS, KEY_DIRS, KEY_FILES, KEY_NEXT_BLOCK, KEY_NEXT_INODE, ROOT_ID,
};

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
}

/// The state machine's answer to one log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaResult(pub Result<Outcome, Error>);

struct Ns<'a> {
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
        })
    }

    fn link(&mut self, parent: &mut Inode, child: &Inode, now: i64) -> Result<()> {
        self.txn.put(CF_DENTRIES, dentry_key(parent.id, &child.name), child.id.to_be_bytes().to_vec());
        self.put_inode(child)?;
        parent.mtime_ms = now;
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
                    let dir = self.new_inode(name, InodeKind::Dir, mode, now)?;
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
        let dir = self.new_inode(name, InodeKind::Dir, mode, now)?;
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
            removed = self.remove_tree(&mut parent, &old, now, &mut freed)?;
        }
        let mut file = self.new_inode(name, InodeKind::File, mode, now)?;
        file.block_size = bs;
        file.replication = repl;
        self.link(&mut parent, &file, now)?;
        Ok(Outcome::Freed { inodes: removed, blocks: freed, inode: Some(file) })
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
            return Err(Error::invalid(format!("{p}: file is already complete")));
        }
        let id = self.next_id(KEY_NEXT_BLOCK, 1)?;
        let offset = f.blocks.len() as u64 * f.block_size;
        f.blocks.push(BlockMeta { id, len: 0 });
        self.txn.put(CF_BLOCKS, id_key(id).to_vec(), f.id.to_be_bytes().to_vec());
        self.put_inode(&f)?;
        Ok(Outcome::Block { file: f, block_id: id, offset })
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
        f.blocks = blocks.to_vec();
        f.len = len;
        f.complete = true;
        f.mtime_ms = now;
        self.put_inode(&f)?;
        Ok(Outcome::Freed { inodes: 0, blocks: freed, inode: Some(f) })
    }

    fn abort(&mut self, file_id: u64, p: &str) -> Result<Outcome> {
        let f = self.open_file(file_id, p)?;
        if f.complete {
            return Err(Error::invalid(format!("{p}: file is complete, cannot abort")));
        }
        // The parent is found by path; an aborted file renamed meanwhile is left alone.
        let (parent_path, name) = path::split(p).ok_or_else(|| Error::is_dir(p))?;
        let mut parent = self.resolve(parent_path)?;
        if self.child(parent.id, name)? != Some(f.id) {
            return Err(Error::not_found(p));
        }
        let mut freed = Vec::new();
        let n = self.remove_tree(&mut parent, &f, f.mtime_ms, &mut freed)?;
        Ok(Outcome::Freed { inodes: n, blocks: freed, inode: None })
    }

    /// Unlinks `node` from `parent` and removes it with everything below it.
    fn remove_tree(&mut self, parent: &mut Inode, node: &Inode, now: i64, freed: &mut Vec<u64>) -> Result<u64> {
        self.txn.delete(CF_DENTRIES, dentry_key(parent.id, &node.name));
        parent.mtime_ms = now;
        self.put_inode(parent)?;
        let mut stack = vec![node.clone()];
        let mut n = 0u64;
        while let Some(i) = stack.pop() {
            n += 1;
            if i.is_dir() {
                for (k, id) in self.children(i.id)? {
                    self.txn.delete(CF_DENTRIES, k);
                    stack.push(self.must_inode(id, &i.name)?);
                }
                self.add_counter(KEY_DIRS, -1)?;
            } else {
                for b in &i.blocks {
                    self.txn.delete(CF_BLOCKS, id_key(b.id).to_vec());
                    freed.push(b.id);
                }
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
        let mut freed = Vec::new();
        let n = self.remove_tree(&mut parent, &node, now, &mut freed)?;
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
            let old = self.must_inode(id, dst)?;
            match (node.is_dir(), old.is_dir()) {
                (true, false) => return Err(Error::not_dir(dst)),
                (false, true) => return Err(Error::is_dir(dst)),
                (true, true) if !self.children(old.id)?.is_empty() => return Err(Error::path(ErrorKind::NotEmpty, dst)),
                _ => {}
            }
            removed = self.remove_tree(&mut dst_parent, &old, now, &mut freed)?;
        }
        // Re-read the source parent: it may be the destination parent just updated.
        let mut src_parent = if src_parent.id == dst_parent.id { dst_parent.clone() } else { src_parent };
        self.txn.delete(CF_DENTRIES, dentry_key(src_parent.id, sname));
        src_parent.mtime_ms = now;
        self.put_inode(&src_parent)?;
        if src_parent.id == dst_parent.id {
            dst_parent = src_parent;
        }
        let mut moved = node;
        moved.name = dname.to_string();
        moved.ctime_ms = now;
        self.txn.put(CF_DENTRIES, dentry_key(dst_parent.id, dname), moved.id.to_be_bytes().to_vec());
        self.put_inode(&moved)?;
        dst_parent.mtime_ms = now;
        self.put_inode(&dst_parent)?;
        Ok(Outcome::Freed { inodes: removed, blocks: freed, inode: Some(moved) })
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

/// Applies one command to `txn`. On error the caller discards `txn`.
pub fn apply(txn: &mut Txn, cmd: &MetaCommand) -> Result<Outcome> {
    let mut ns = Ns { txn };
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
        MetaCommand::SetAttr { path, mode, mtime_ms } => ns.set_attr(path, *mode, *mtime_ms),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::{Reader, StateStore};

    struct T {
        _dir: tempfile::TempDir,
        store: Arc<StateStore>,
    }

    impl T {
        fn new() -> T {
            let dir = tempfile::tempdir().unwrap();
            let store = StateStore::open(dir.path()).unwrap();
            T { _dir: dir, store }
        }

        fn run(&self, cmd: MetaCommand) -> Result<Outcome> {
            let mut txn = Txn::new(self.store.db());
            let out = apply(&mut txn, &cmd)?;
            self.store.db().write(txn.into_batch()?).unwrap();
            Ok(out)
        }

        fn kind(&self, cmd: MetaCommand) -> ErrorKind {
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
}
