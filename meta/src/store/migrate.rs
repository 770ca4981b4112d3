//! Upgrades of the state-machine database from older layouts, run once at
//! open. bincode is not self-describing, so each older layout is kept here
//! as its own type.

use rocksdb::{IteratorMode, WriteBatch, DB};
use serde::{Deserialize, Serialize};

use super::{cf, db_err, encode, BlockMeta, Inode, InodeKind, UfsMeta, CF_INODES, CF_SYS, KEY_FORMAT};
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

/// Rewrites every inode in format 3 (owned by root, no xattrs) and records
/// the new format, in one atomic, synced batch.
pub fn format2_to_3(db: &DB) -> Result<()> {
    let inodes = cf(db, CF_INODES)?;
    let mut batch = WriteBatch::default();
    let mut n = 0u64;
    for item in db.iterator_cf(inodes, IteratorMode::Start) {
        let (k, v) = item.map_err(|e| db_err(db.path(), e))?;
        let old: InodeV2 = bincode::deserialize(&v)
            .map_err(|e| Error::new(ErrorKind::Corrupt, format!("meta store: format 2 inode: {e}")))?;
        let new = Inode {
            id: old.id,
            name: old.name,
            kind: old.kind,
            mode: old.mode,
            mtime_ms: old.mtime_ms,
            ctime_ms: old.ctime_ms,
            len: old.len,
            block_size: old.block_size,
            replication: old.replication,
            complete: old.complete,
            blocks: old.blocks,
            ufs: old.ufs,
            mount_id: old.mount_id,
            listed_ms: old.listed_ms,
            pinned: old.pinned,
            uid: 0,
            gid: 0,
            target: String::new(),
            xattrs: Vec::new(),
        };
        batch.put_cf(inodes, k, encode(&new)?);
        n += 1;
    }
    batch.put_cf(cf(db, CF_SYS)?, KEY_FORMAT, 3u64.to_be_bytes());
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(true);
    db.write_opt(batch, &wo).map_err(|e| db_err(db.path(), e))?;
    tracing::info!(inodes = n, path = %db.path().display(), "meta store upgraded from format 2 to 3");
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
        assert_eq!(db.get_cf(cf(&db, CF_SYS).unwrap(), KEY_FORMAT).unwrap().unwrap(), 3u64.to_be_bytes());
    }
}
