//! Upgrades of the state-machine database from older layouts, run once at
//! open. bincode is not self-describing, so each older layout is kept here
//! as its own type.

use rocksdb::{IteratorMode, WriteBatch, DB};
use serde::{Deserialize, Serialize};

use std::collections::HashMap;

use super::{
    cf, db_err, decode_u64, encode, BlockMeta, Inode, InodeKind, UfsMeta, CF_DENTRIES, CF_INODES, CF_SYS, FORMAT,
    KEY_FORMAT,
};
use curvine_common::{Error, ErrorKind, Result};

/// `Inode` as format 2 stored it (no owner, symlink target or xattrs).
#[derive(Serialize, Deserialize)]
struct InodeV2 {
    id: u64,
    name: String,
    kind: InodeKind,
    mode: u32,
    mtime_ms: i64,
    ctime_ms: i64,
    len: u64,
    block_size: u64,
    replication: u32,
    complete: bool,
    blocks: Vec<BlockMeta>,
    ufs: Option<UfsMeta>,
    mount_id: u64,
    listed_ms: i64,
    pinned: bool,
}

/// `Inode` as format 3 stored it (no device number): format 2's fields,
/// then the owner, symlink target and xattrs. bincode writes a nested
/// struct as its fields in order, so this is byte-for-byte the flat layout.
#[derive(Serialize, Deserialize)]
struct InodeV3 {
    v2: InodeV2,
    uid: u32,
    gid: u32,
    target: String,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl From<InodeV2> for InodeV3 {
    fn from(v2: InodeV2) -> InodeV3 {
        InodeV3 { v2, uid: 0, gid: 0, target: String::new(), xattrs: Vec::new() }
    }
}

/// `Inode` as format 4 stored it (no link count): format 3's fields, then
/// the device number.
#[derive(Serialize, Deserialize)]
struct InodeV4 {
    v3: InodeV3,
    rdev: u64,
}

impl From<InodeV3> for InodeV4 {
    fn from(v3: InodeV3) -> InodeV4 {
        InodeV4 { v3, rdev: 0 }
    }
}

impl From<InodeV4> for Inode {
    fn from(v4: InodeV4) -> Inode {
        let (v3, rdev) = (v4.v3, v4.rdev);
        let o = v3.v2;
        Inode {
            id: o.id,
            name: o.name,
            kind: o.kind,
            mode: o.mode,
            mtime_ms: o.mtime_ms,
            ctime_ms: o.ctime_ms,
            len: o.len,
            block_size: o.block_size,
            replication: o.replication,
            complete: o.complete,
            blocks: o.blocks,
            ufs: o.ufs,
            mount_id: o.mount_id,
            listed_ms: o.listed_ms,
            pinned: o.pinned,
            uid: v3.uid,
            gid: v3.gid,
            target: v3.target,
            xattrs: v3.xattrs,
            rdev,
            nlink: 1,
        }
    }
}

fn decode_old<T: for<'a> Deserialize<'a>>(v: &[u8], format: u64) -> Result<T> {
    bincode::deserialize(v).map_err(|e| Error::new(ErrorKind::Corrupt, format!("meta store: format {format} inode: {e}")))
}

/// Rewrites every inode of a format 2, 3 or 4 store in the current format
/// (format 2: owned by root, no xattrs; 2 and 3: no device number; all:
/// files one link, directories 2 + their subdirectories) and records the
/// new format, in one atomic, synced batch.
pub fn upgrade(db: &DB, format: u64) -> Result<()> {
    let inodes = cf(db, CF_INODES)?;
    let read = |v: &[u8]| -> Result<Inode> {
        let v4: InodeV4 = match format {
            2 => InodeV3::from(decode_old::<InodeV2>(v, 2)?).into(),
            3 => decode_old::<InodeV3>(v, 3)?.into(),
            _ => decode_old::<InodeV4>(v, 4)?,
        };
        Ok(Inode::from(v4))
    };
    // Directories' link counts: 2, plus one per subdirectory (its "..").
    let mut dirs: HashMap<u64, u32> = HashMap::new();
    for item in db.iterator_cf(inodes, IteratorMode::Start) {
        let (_, v) = item.map_err(|e| db_err(db.path(), e))?;
        let i = read(&v)?;
        if i.is_dir() {
            dirs.insert(i.id, 2);
        }
    }
    for item in db.iterator_cf(cf(db, CF_DENTRIES)?, IteratorMode::Start) {
        let (k, v) = item.map_err(|e| db_err(db.path(), e))?;
        let (Some(parent), Ok(child)) = (k.get(..8), decode_u64(&v)) else { continue };
        if dirs.contains_key(&child) {
            let parent = u64::from_be_bytes(parent.try_into().expect("8 bytes"));
            *dirs.entry(parent).or_insert(2) += 1;
        }
    }
    let mut batch = WriteBatch::default();
    let mut n = 0u64;
    for item in db.iterator_cf(inodes, IteratorMode::Start) {
        let (k, v) = item.map_err(|e| db_err(db.path(), e))?;
        let mut i = read(&v)?;
        if let Some(links) = dirs.get(&i.id) {
            i.nlink = *links;
        }
        batch.put_cf(inodes, k, encode(&i)?);
        n += 1;
    }
    // Exactly-once records keep their old layout: one that cannot be read
    // back still says "applied" (`once.rs`), so a retry across the upgrade
    // is not applied twice on this member while others skip it.
    batch.put_cf(cf(db, CF_SYS)?, KEY_FORMAT, FORMAT.to_be_bytes());
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(true);
    db.write_opt(batch, &wo).map_err(|e| db_err(db.path(), e))?;
    tracing::info!(inodes = n, from = format, to = FORMAT, path = %db.path().display(), "meta store upgraded");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{decode, id_key, StateStore, ROOT_ID};

    fn v2(id: u64, name: &str, kind: InodeKind, blocks: Vec<BlockMeta>) -> InodeV2 {
        let len = blocks.iter().map(|b| b.len).sum();
        InodeV2 {
            id, name: name.into(), kind, mode: 0o755, mtime_ms: 5, ctime_ms: 5, len, block_size: 0, replication: 0,
            complete: true, blocks, ufs: None, mount_id: 0, listed_ms: 0, pinned: false,
        }
    }

    #[test]
    fn a_format_2_store_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        {
            // Make the store look like what a format-2 binary left behind.
            let s = StateStore::open(dir.path()).unwrap();
            let db = s.db();
            let put = |id: u64, i: &InodeV2| db.put_cf(cf(&db, CF_INODES).unwrap(), id_key(id), bincode::serialize(i).unwrap()).unwrap();
            put(ROOT_ID, &v2(ROOT_ID, "", InodeKind::Dir, vec![]));
            put(9, &v2(9, "f", InodeKind::File, vec![BlockMeta { id: 4, len: 3 }]));
            db.put_cf(cf(&db, CF_SYS).unwrap(), KEY_FORMAT, 2u64.to_be_bytes()).unwrap();
        }
        let s = StateStore::open(dir.path()).unwrap();
        let db = s.db();
        let f: Inode = decode(&db.get_cf(cf(&db, CF_INODES).unwrap(), id_key(9)).unwrap().unwrap()).unwrap();
        assert_eq!((f.name.as_str(), f.len, f.blocks.len(), f.uid, f.xattrs.len()), ("f", 3, 1, 0, 0));
        let root: Inode = decode(&db.get_cf(cf(&db, CF_INODES).unwrap(), id_key(ROOT_ID)).unwrap().unwrap()).unwrap();
        assert_eq!(root.kind, InodeKind::Dir);
        assert_eq!(db.get_cf(cf(&db, CF_SYS).unwrap(), KEY_FORMAT).unwrap().unwrap(), FORMAT.to_be_bytes());
    }

    #[test]
    fn a_format_3_store_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = StateStore::open(dir.path()).unwrap();
            let db = s.db();
            let mut f: InodeV3 = v2(9, "f", InodeKind::File, vec![BlockMeta { id: 4, len: 3 }]).into();
            f.uid = 7;
            f.xattrs = vec![("user.a".into(), b"1".to_vec())];
            // The nested layout is the flat one format 3 wrote: the current
            // encoding minus the trailing device number and link count.
            let v3_bytes = bincode::serialize(&f).unwrap();
            let now = encode(&Inode::from(InodeV4::from(bincode::deserialize::<InodeV3>(&v3_bytes).unwrap()))).unwrap();
            assert_eq!(&now[..now.len() - 12], &v3_bytes[..]);
            let root: InodeV3 = v2(ROOT_ID, "", InodeKind::Dir, vec![]).into();
            let put = |id: u64, i: &InodeV3| db.put_cf(cf(&db, CF_INODES).unwrap(), id_key(id), bincode::serialize(i).unwrap()).unwrap();
            put(ROOT_ID, &root);
            put(9, &f);
            db.put_cf(cf(&db, CF_SYS).unwrap(), KEY_FORMAT, 3u64.to_be_bytes()).unwrap();
        }
        let s = StateStore::open(dir.path()).unwrap();
        let db = s.db();
        let f: Inode = decode(&db.get_cf(cf(&db, CF_INODES).unwrap(), id_key(9)).unwrap().unwrap()).unwrap();
        assert_eq!((f.name.as_str(), f.len, f.uid, f.xattrs.len(), f.rdev, f.nlink), ("f", 3, 7, 1, 0, 1));
        assert_eq!(db.get_cf(cf(&db, CF_SYS).unwrap(), KEY_FORMAT).unwrap().unwrap(), FORMAT.to_be_bytes());
    }

    #[test]
    fn a_format_4_store_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = StateStore::open(dir.path()).unwrap();
            let db = s.db();
            let mut f = InodeV4::from(InodeV3::from(v2(9, "dev", InodeKind::CharDev, vec![])));
            f.rdev = 0x103;
            f.v3.gid = 5;
            // Format 4 wrote the current encoding minus the trailing link count.
            let v4_bytes = bincode::serialize(&f).unwrap();
            let now = encode(&Inode::from(bincode::deserialize::<InodeV4>(&v4_bytes).unwrap())).unwrap();
            assert_eq!(&now[..now.len() - 4], &v4_bytes[..]);
            let root = InodeV4::from(InodeV3::from(v2(ROOT_ID, "", InodeKind::Dir, vec![])));
            let put = |id: u64, i: &InodeV4| db.put_cf(cf(&db, CF_INODES).unwrap(), id_key(id), bincode::serialize(i).unwrap()).unwrap();
            put(ROOT_ID, &root);
            put(9, &f);
            // /a and /a/b, directories: the root gets 3 links, /a 3, /a/b 2.
            put(10, &InodeV4::from(InodeV3::from(v2(10, "a", InodeKind::Dir, vec![]))));
            put(11, &InodeV4::from(InodeV3::from(v2(11, "b", InodeKind::Dir, vec![]))));
            let dent = |parent: u64, name: &str, child: u64| {
                let k = crate::store::dentry_key(parent, name);
                db.put_cf(cf(&db, CF_DENTRIES).unwrap(), k, child.to_be_bytes()).unwrap();
            };
            dent(ROOT_ID, "dev", 9);
            dent(ROOT_ID, "a", 10);
            dent(10, "b", 11);
            db.put_cf(cf(&db, CF_SYS).unwrap(), KEY_FORMAT, 4u64.to_be_bytes()).unwrap();
        }
        let s = StateStore::open(dir.path()).unwrap();
        let db = s.db();
        let f: Inode = decode(&db.get_cf(cf(&db, CF_INODES).unwrap(), id_key(9)).unwrap().unwrap()).unwrap();
        assert_eq!((f.name.as_str(), f.kind, f.gid, f.rdev, f.nlink), ("dev", InodeKind::CharDev, 5, 0x103, 1));
        let links = |id| decode::<Inode>(&db.get_cf(cf(&db, CF_INODES).unwrap(), id_key(id)).unwrap().unwrap()).unwrap().nlink;
        assert_eq!((links(ROOT_ID), links(10), links(11)), (3, 3, 2));
        assert_eq!(db.get_cf(cf(&db, CF_SYS).unwrap(), KEY_FORMAT).unwrap().unwrap(), FORMAT.to_be_bytes());
    }
}
