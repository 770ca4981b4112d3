//! The state machine's RocksDB: column families for inodes, dentries, blocks
//! and system keys, plus `Txn`, an overlay that collects one command's writes
//! into a single `WriteBatch` so a command is applied atomically.

pub mod snapshot;
pub mod state_machine;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use curvine_common::{Error, ErrorKind, Result};
use parking_lot::RwLock;
use rocksdb::{ColumnFamilyDescriptor, DBCompressionType, Direction, IteratorMode, Options, WriteBatch, DB};
use serde::{Deserialize, Serialize};

pub const CF_INODES: &str = "inodes";
pub const CF_DENTRIES: &str = "dentries";
pub const CF_BLOCKS: &str = "blocks";
pub const CF_SYS: &str = "sys";
/// Mount id → `Mount`.
pub const CF_MOUNTS: &str = "mounts";
/// Job id → `Job` (load jobs started by `cv warm`).
pub const CF_JOBS: &str = "jobs";
/// File id → `PersistItem`: files written under a write-through/write-back
/// mount that the UFS does not have yet.
pub const CF_PERSIST: &str = "persist";
/// Request id → the result of the command a client sent with it (and
/// `t` ++ time ++ id → nothing, to expire them): a retried write is
/// answered from here instead of being applied twice.
pub const CF_REQUESTS: &str = "requests";
const CFS: [&str; 8] = [CF_INODES, CF_DENTRIES, CF_BLOCKS, CF_SYS, CF_MOUNTS, CF_JOBS, CF_PERSIST, CF_REQUESTS];

mod migrate;

pub const ROOT_ID: u64 = 1;

pub const KEY_NEXT_INODE: &[u8] = b"next_inode";
pub const KEY_NEXT_BLOCK: &[u8] = b"next_block";
pub const KEY_FILES: &[u8] = b"files";
pub const KEY_DIRS: &[u8] = b"dirs";
pub const KEY_LAST_APPLIED: &[u8] = b"last_applied";
pub const KEY_MEMBERSHIP: &[u8] = b"last_membership";
pub const KEY_NEXT_MOUNT: &[u8] = b"next_mount";
pub const KEY_NEXT_JOB: &[u8] = b"next_job";
/// The encoding version of the values in this database (bincode is not
/// self-describing: a newer binary must refuse an older layout, not misread it).
pub const KEY_FORMAT: &[u8] = b"format";
pub const FORMAT: u64 = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InodeKind {
    File,
    Dir,
    /// A symbolic link: `Inode::target` is where it points (never followed
    /// by meta; the kernel or the caller resolves it).
    Symlink,
    // Appended (format 4): special files made by mknod(2) through FUSE.
    // Meta only names them; the kernel gives them their behaviour.
    Fifo,
    Socket,
    /// Devices: `Inode::rdev` is the device number.
    CharDev,
    BlockDev,
}

impl InodeKind {
    /// FIFOs, sockets and devices: no bytes, no blocks.
    pub fn is_special(self) -> bool {
        matches!(self, InodeKind::Fifo | InodeKind::Socket | InodeKind::CharDev | InodeKind::BlockDev)
    }
}

/// One block of a file: its id and (once the file is complete) its length.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockMeta {
    pub id: u64,
    pub len: u64,
}

/// Whether the UFS holds a file's current bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Persist {
    /// Loaded from (or written to) the UFS: the UFS has this version.
    Persisted,
    /// Written through Curvine, not yet in the UFS.
    Pending,
}

/// What the UFS said about a file or directory the last time it was asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UfsMeta {
    pub mount_id: u64,
    /// Path relative to the mount's URI (kept here because inodes have no
    /// parent pointers and the worker loading a block needs it).
    pub rel: String,
    pub len: u64,
    pub mtime_ms: i64,
    pub etag: String,
    /// When this entry was last confirmed against the UFS.
    pub synced_ms: i64,
    pub persist: Persist,
}

/// A file or directory, stored bincode-encoded under its id in `inodes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    pub id: u64,
    pub name: String,
    pub kind: InodeKind,
    pub mode: u32,
    pub mtime_ms: i64,
    pub ctime_ms: i64,
    pub len: u64,
    pub block_size: u64,
    pub replication: u32,
    pub complete: bool,
    pub blocks: Vec<BlockMeta>,
    /// Set for entries that exist in a UFS (loaded, or persisted).
    pub ufs: Option<UfsMeta>,
    /// Non-zero on a mount point: the mount's id.
    pub mount_id: u64,
    /// Directories under a mount: when the UFS listing was last merged in.
    pub listed_ms: i64,
    pub pinned: bool,
    /// Owner (format 3): the creating user where the client says who it is
    /// (FUSE), else 0 (root).
    pub uid: u32,
    pub gid: u32,
    /// Symlinks: the target.
    pub target: String,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Device nodes (format 4): the device number, as stat's st_rdev.
    pub rdev: u64,
    /// Links (format 5), as stat's st_nlink: a file's names (more than one
    /// with hard links); a directory's 2 + its subdirectories.
    pub nlink: u32,
}

impl Inode {
    pub fn is_dir(&self) -> bool {
        self.kind == InodeKind::Dir
    }

    /// Backed by a UFS object whose bytes the UFS holds: safe to drop from
    /// the namespace when the UFS no longer has it.
    pub fn is_ufs_persisted(&self) -> bool {
        matches!(&self.ufs, Some(u) if u.persist == Persist::Persisted)
    }
}

/// A UFS mounted at a Curvine path (stored in `mounts`, keyed by id).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub id: u64,
    pub path: String,
    pub uri: String,
    pub options: std::collections::BTreeMap<String, String>,
    pub write_mode: WriteMode,
    pub ttl_ms: i64,
    /// How long UFS metadata is trusted; negative = until `resync`.
    pub sync_interval_ms: i64,
    pub block_size: u64,
    /// Write-back: how long a closed file waits before it is uploaded.
    pub upload_delay_ms: i64,
}

impl Mount {
    /// `path` relative to the mount's root ("" for the mount point), when inside.
    pub fn rel<'a>(&self, path: &'a str) -> Option<&'a str> {
        if path == self.path {
            return Some("");
        }
        path.strip_prefix(self.path.as_str())?.strip_prefix('/')
    }

    /// Whether metadata confirmed at `synced_ms` must be checked again at `now`.
    pub fn stale(&self, synced_ms: i64, now: i64) -> bool {
        self.sync_interval_ms >= 0 && now.saturating_sub(synced_ms) >= self.sync_interval_ms
    }
}

/// A file waiting to be uploaded to its UFS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistItem {
    pub file_id: u64,
    /// Where it was when queued (for `cv sync PATH` and messages).
    pub path: String,
    /// Not before this time (upload delay, then retry backoff).
    pub due_ms: i64,
    pub attempts: u32,
    pub last_error: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

/// A load job (`cv warm`): its progress is written back while it runs, so
/// a restarted meta shows where it was and resumes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: u64,
    pub path: String,
    pub state: Option<JobState>,
    pub created_ms: i64,
    pub finished_ms: i64,
    pub scanning: bool,
    pub files_total: u64,
    pub files_done: u64,
    pub bytes_total: u64,
    pub bytes_done: u64,
    pub bytes_loaded: u64,
    pub blocks_failed: u64,
    pub error: String,
    pub attempt: u64,
    /// Block loads in flight; 0 = `LOADS_PER_WORKER` per live worker.
    pub parallel: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteMode {
    CacheOnly,
    WriteThrough,
    WriteBack,
}

impl WriteMode {
    pub fn parse(s: &str) -> Option<WriteMode> {
        match s {
            "" | "cache-only" => Some(WriteMode::CacheOnly),
            "write-through" => Some(WriteMode::WriteThrough),
            "write-back" => Some(WriteMode::WriteBack),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            WriteMode::CacheOnly => "cache-only",
            WriteMode::WriteThrough => "write-through",
            WriteMode::WriteBack => "write-back",
        }
    }
}

pub fn id_key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

pub fn dentry_key(parent: u64, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + name.len());
    k.extend_from_slice(&parent.to_be_bytes());
    k.extend_from_slice(name.as_bytes());
    k
}

pub fn decode_u64(v: &[u8]) -> Result<u64> {
    let b: [u8; 8] = v.try_into().map_err(|_| Error::new(ErrorKind::Corrupt, "meta store: bad u64 value"))?;
    Ok(u64::from_be_bytes(b))
}

pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    bincode::serialize(v).map_err(|e| Error::internal(format!("meta store: encode: {e}")))
}

pub fn decode<T: for<'a> Deserialize<'a>>(v: &[u8]) -> Result<T> {
    bincode::deserialize(v).map_err(|e| Error::new(ErrorKind::Corrupt, format!("meta store: decode: {e}")))
}

pub fn db_err(path: &Path, e: rocksdb::Error) -> Error {
    Error::new(ErrorKind::Io, format!("rocksdb {}: {e}", path.display()))
}

fn db_options() -> Options {
    let mut o = Options::default();
    o.create_if_missing(true);
    o.create_missing_column_families(true);
    o.set_compression_type(DBCompressionType::None);
    o
}

/// Opens a RocksDB with the given column families, with an error naming the
/// directory (e.g. when another process holds its lock).
pub fn open_db(path: &Path, cfs: &[&str]) -> Result<DB> {
    std::fs::create_dir_all(path)
        .map_err(|e| Error::new(ErrorKind::Io, format!("{}: cannot create directory: {e}", path.display())))?;
    let descs = cfs.iter().map(|n| {
        let mut o = Options::default();
        o.set_compression_type(DBCompressionType::None);
        ColumnFamilyDescriptor::new(*n, o)
    });
    DB::open_cf_descriptors(&db_options(), path, descs)
        .map_err(|e| Error::new(ErrorKind::Config, format!("cannot open meta store {}: {e}", path.display())))
}

/// The state-machine database. The `DB` sits behind a lock so installing a
/// snapshot can swap it for another directory.
pub struct StateStore {
    dir: PathBuf,
    db: RwLock<Arc<DB>>,
    /// Serializes applying commands with taking a checkpoint, so a snapshot's
    /// metadata matches its content.
    pub apply_lock: parking_lot::Mutex<()>,
    /// Bumped whenever the mount table may have changed, so readers can
    /// cache it and refresh only then.
    pub mounts_gen: std::sync::atomic::AtomicU64,
}

const CURRENT_FILE: &str = "CURRENT_SM";

impl StateStore {
    /// Opens (creating on first start) the state machine under `dir`.
    pub fn open(dir: &Path) -> Result<Arc<StateStore>> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::new(ErrorKind::Io, format!("{}: cannot create directory: {e}", dir.display())))?;
        let name = match std::fs::read_to_string(dir.join(CURRENT_FILE)) {
            Ok(s) => s.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "sm-0".to_string(),
            Err(e) => return Err(Error::new(ErrorKind::Io, format!("{}: {e}", dir.join(CURRENT_FILE).display()))),
        };
        let db = open_db(&dir.join(&name), &CFS)?;
        let store = Arc::new(StateStore {
            dir: dir.to_path_buf(),
            db: RwLock::new(Arc::new(db)),
            apply_lock: Default::default(),
            mounts_gen: std::sync::atomic::AtomicU64::new(1),
        });
        store.init_root()?;
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The current database; readers hold the `Arc` for the length of a request.
    pub fn db(&self) -> Arc<DB> {
        self.db.read().clone()
    }

    /// Replaces the database by the checkpoint copied into `dir/<name>`.
    pub fn swap(&self, name: &str) -> Result<()> {
        let path = self.dir.join(name);
        let db = open_db(&path, &CFS)?;
        // A snapshot from a member still serving an older format's one.
        ensure_format(&db)?;
        let tmp = self.dir.join(format!("{CURRENT_FILE}.tmp"));
        let io = |p: &Path, e: std::io::Error| Error::new(ErrorKind::Io, format!("{}: {e}", p.display()));
        // Durable before the switch is: after a power loss the member must
        // open the database it went on with, not the one it replaced.
        std::fs::write(&tmp, name).map_err(|e| io(&tmp, e))?;
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, self.dir.join(CURRENT_FILE)).map_err(|e| io(&self.dir, e))?;
        std::fs::File::open(&self.dir).and_then(|f| f.sync_all()).map_err(|e| io(&self.dir, e))?;
        let old = std::mem::replace(&mut *self.db.write(), Arc::new(db));
        self.mounts_gen.fetch_add(1, std::sync::atomic::Ordering::Release);
        let old_path = old.path().to_path_buf();
        drop(old);
        // Readers may still hold the old DB for a moment; removing is best effort.
        if old_path != path {
            let _ = std::fs::remove_dir_all(&old_path);
        }
        Ok(())
    }

    pub fn flush(&self) -> Result<()> {
        let db = self.db();
        db.flush().map_err(|e| db_err(db.path(), e))
    }

    fn init_root(&self) -> Result<()> {
        let db = self.db();
        if get(&db, CF_INODES, &id_key(ROOT_ID))?.is_some() {
            return ensure_format(&db);
        }
        // Made by every member on its own, so nothing here may differ
        // between them (no clock): the root's times are set by the first
        // change in it.
        let root = Inode {
            id: ROOT_ID,
            name: String::new(),
            kind: InodeKind::Dir,
            mode: 0o755,
            mtime_ms: 0,
            ctime_ms: 0,
            len: 0,
            block_size: 0,
            replication: 0,
            complete: true,
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
            nlink: 2,
        };
        let mut txn = Txn::new(db.clone());
        txn.put(CF_SYS, KEY_FORMAT.to_vec(), FORMAT.to_be_bytes().to_vec());
        txn.put(CF_INODES, id_key(ROOT_ID).to_vec(), encode(&root)?);
        txn.put(CF_SYS, KEY_NEXT_INODE.to_vec(), (ROOT_ID + 1).to_be_bytes().to_vec());
        txn.put(CF_SYS, KEY_DIRS.to_vec(), 1u64.to_be_bytes().to_vec());
        let batch = txn.into_batch()?;
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(true);
        db.write_opt(batch, &wo).map_err(|e| db_err(db.path(), e))
    }
}

pub(crate) fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a rocksdb::ColumnFamily> {
    db.cf_handle(name).ok_or_else(|| Error::internal(format!("meta store: column family {name} missing")))
}

pub fn get(db: &DB, cf_name: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
    db.get_cf(cf(db, cf_name)?, key).map_err(|e| db_err(db.path(), e))
}

/// Brings a database an older binary wrote to this format (in place), or
/// refuses one this binary cannot read.
fn ensure_format(db: &DB) -> Result<()> {
    let mut format = get(db, CF_SYS, KEY_FORMAT)?.map(|v| decode_u64(&v)).transpose()?.unwrap_or(1);
    if (2..FORMAT).contains(&format) {
        migrate::upgrade(db, format)?;
        format = FORMAT;
    }
    if format != FORMAT {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "meta store {} has format {format}, this binary reads format {FORMAT}: \
                 start with an empty meta directory (or the binary that wrote it)",
                db.path().display()
            ),
        ));
    }
    Ok(())
}

/// Read options that stop an iterator at the end of `prefix`'s keys.
/// Without the bound, finding that end means stepping over every deleted
/// key after it until the next live one: after a storm of deletes in other
/// directories, `stat /` (which counts the root's children) took 1.7 ms.
fn within(prefix: &[u8]) -> rocksdb::ReadOptions {
    let mut ro = rocksdb::ReadOptions::default();
    if let Some(end) = prefix_end(prefix) {
        ro.set_iterate_upper_bound(end);
    }
    ro
}

/// The first key after every key starting with `prefix` (none if the
/// prefix is all 0xff bytes or empty).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Key/value pairs of `cf_name` whose key starts with `prefix`, in key order.
pub fn scan_prefix(db: &DB, cf_name: &str, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    for item in db.iterator_cf_opt(cf(db, cf_name)?, within(prefix), IteratorMode::From(prefix, Direction::Forward)) {
        let (k, v) = item.map_err(|e| db_err(db.path(), e))?;
        if !k.starts_with(prefix) {
            break;
        }
        out.push((k.to_vec(), v.to_vec()));
    }
    Ok(out)
}

/// How often `Reader::resolve` starts again after a concurrent change tore
/// its walk.
const RESOLVE_RETRIES: u32 = 8;

/// Read-only queries against the current database.
pub struct Reader {
    pub db: Arc<DB>,
}

impl Reader {
    pub fn inode(&self, id: u64) -> Result<Option<Inode>> {
        get(&self.db, CF_INODES, &id_key(id))?.map(|v| decode(&v)).transpose()
    }

    pub fn child(&self, parent: u64, name: &str) -> Result<Option<u64>> {
        get(&self.db, CF_DENTRIES, &dentry_key(parent, name))?.map(|v| decode_u64(&v)).transpose()
    }

    pub fn children(&self, parent: u64) -> Result<Vec<(String, u64)>> {
        scan_prefix(&self.db, CF_DENTRIES, &parent.to_be_bytes())?
            .into_iter()
            .map(|(k, v)| Ok((String::from_utf8_lossy(&k[8..]).into_owned(), decode_u64(&v)?)))
            .collect()
    }

    pub fn count_children(&self, parent: u64) -> Result<u64> {
        let db = &self.db;
        let prefix = parent.to_be_bytes();
        let mut n = 0;
        for item in db.iterator_cf_opt(cf(db, CF_DENTRIES)?, within(&prefix), IteratorMode::From(&prefix, Direction::Forward)) {
            let (k, _) = item.map_err(|e| db_err(db.path(), e))?;
            if !k.starts_with(&prefix) {
                break;
            }
            n += 1;
        }
        Ok(n)
    }

    pub fn block_exists(&self, id: u64) -> Result<bool> {
        Ok(get(&self.db, CF_BLOCKS, &id_key(id))?.is_some())
    }

    /// A hash of the replicated state (every column family; of `sys`, all
    /// but this member's own bookkeeping: last applied entry, membership):
    /// members that applied the same entries have the same digest.
    pub fn digest(&self) -> Result<u64> {
        use std::hash::Hasher;
        let db = &self.db;
        // SipHash with fixed keys: the same bytes hash the same in every
        // process of this binary.
        let mut h = std::hash::DefaultHasher::new();
        for name in CFS {
            h.write(name.as_bytes());
            for item in db.iterator_cf(cf(db, name)?, IteratorMode::Start) {
                let (k, v) = item.map_err(|e| db_err(db.path(), e))?;
                if name == CF_SYS && (&*k == KEY_LAST_APPLIED || &*k == KEY_MEMBERSHIP) {
                    continue;
                }
                h.write(&k);
                h.write(&v);
            }
        }
        Ok(h.finish())
    }

    /// The index of the last log entry applied (0 = none).
    pub fn last_applied(&self) -> Result<u64> {
        let v = get(&self.db, CF_SYS, KEY_LAST_APPLIED)?;
        let id: Option<openraft::LogId<u64>> = v.map(|v| decode::<Option<openraft::LogId<u64>>>(&v)).transpose()?.flatten();
        Ok(id.map(|l| l.index).unwrap_or(0))
    }

    pub fn sys_u64(&self, key: &[u8]) -> Result<u64> {
        get(&self.db, CF_SYS, key)?.map(|v| decode_u64(&v)).transpose().map(|v| v.unwrap_or(0))
    }

    /// The mount table, in path order.
    pub fn mounts(&self) -> Result<Vec<Mount>> {
        let mut v: Vec<Mount> =
            scan_prefix(&self.db, CF_MOUNTS, &[])?.into_iter().map(|(_, v)| decode(&v)).collect::<Result<_>>()?;
        v.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(v)
    }

    /// Children of `parent` after `start_after` (a name; "" = from the first), at most `limit`.
    pub fn children_page(&self, parent: u64, start_after: &str, limit: usize) -> Result<Vec<(String, u64)>> {
        let db = &self.db;
        let prefix = parent.to_be_bytes();
        let from = dentry_key(parent, start_after);
        let mut out = Vec::new();
        for item in db.iterator_cf_opt(cf(db, CF_DENTRIES)?, within(&prefix), IteratorMode::From(&from, Direction::Forward)) {
            let (k, v) = item.map_err(|e| db_err(db.path(), e))?;
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            let name = String::from_utf8_lossy(&k[8..]).into_owned();
            if !start_after.is_empty() && name == start_after {
                continue;
            }
            out.push((name, decode_u64(&v)?));
        }
        Ok(out)
    }

    pub fn jobs(&self) -> Result<Vec<Job>> {
        scan_prefix(&self.db, CF_JOBS, &[])?.into_iter().map(|(_, v)| decode(&v)).collect()
    }

    pub fn job(&self, id: u64) -> Result<Option<Job>> {
        get(&self.db, CF_JOBS, &id_key(id))?.map(|v| decode(&v)).transpose()
    }

    /// Queued uploads with file id above `after`, at most `limit`.
    pub fn persist_page(&self, after: u64, limit: usize) -> Result<Vec<PersistItem>> {
        let db = &self.db;
        let from = id_key(after.saturating_add(1));
        let mut out = Vec::new();
        for item in db.iterator_cf(cf(db, CF_PERSIST)?, IteratorMode::From(&from, Direction::Forward)) {
            let (_, v) = item.map_err(|e| db_err(db.path(), e))?;
            if out.len() >= limit {
                break;
            }
            out.push(decode(&v)?);
        }
        Ok(out)
    }

    pub fn persist_item(&self, file: u64) -> Result<Option<PersistItem>> {
        get(&self.db, CF_PERSIST, &id_key(file))?.map(|v| decode(&v)).transpose()
    }

    /// The file owning `block`, if the block is known.
    pub fn block_file(&self, block: u64) -> Result<Option<u64>> {
        get(&self.db, CF_BLOCKS, &id_key(block))?.map(|v| decode_u64(&v)).transpose()
    }

    /// Resolves a normalized path to its inode. Errors name `path`.
    ///
    /// Reads are not one snapshot: an entry applied between reading a
    /// name and reading its inode (a delete or a rename over it) shows as
    /// a name whose inode is gone. That is retried from the top, where the
    /// name is then gone too; only a name that keeps pointing at a missing
    /// inode is reported as corrupt.
    pub fn resolve(&self, path: &str) -> Result<Inode> {
        let mut torn = 0;
        loop {
            match self.resolve_once(path)? {
                Some(inode) => return Ok(inode),
                None if torn < RESOLVE_RETRIES => torn += 1,
                None => return Err(Error::new(ErrorKind::Corrupt, format!("{path}: dangling entry"))),
            }
        }
    }

    /// `resolve`, or `None` when a name led to a missing inode.
    fn resolve_once(&self, path: &str) -> Result<Option<Inode>> {
        let mut cur = self.inode(ROOT_ID)?.ok_or_else(|| Error::internal("meta store: root inode missing"))?;
        for name in curvine_common::path::components(path) {
            if !cur.is_dir() {
                return Err(Error::not_dir(path));
            }
            let id = self.child(cur.id, name)?.ok_or_else(|| Error::not_found(path))?;
            match self.inode(id)? {
                Some(i) => cur = i,
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    /// The inode of a listed entry `(parent, name) -> id` as it is now:
    /// `None` when the name was removed after the listing read it, the new
    /// file when the name was replaced meanwhile (a rename over it, as a
    /// FUSE mount saves a changed file). A name that keeps pointing at a
    /// missing inode is corrupt.
    pub fn listed_inode(&self, parent: u64, name: &str, id: u64, path: &str) -> Result<Option<Inode>> {
        let mut id = id;
        for _ in 0..=RESOLVE_RETRIES {
            if let Some(i) = self.inode(id)? {
                return Ok(Some(i));
            }
            match self.child(parent, name)? {
                Some(now) if now != id => id = now,
                Some(_) => match self.inode(id)? {
                    Some(i) => return Ok(Some(i)),
                    None => break,
                },
                None => return Ok(None),
            }
        }
        Err(Error::new(ErrorKind::Corrupt, format!("{path}: dangling entry (inode {id})")))
    }
}

type OverlayKey = (&'static str, Vec<u8>);

/// The writes of one command: reads see earlier writes of the same command,
/// and `into_batch` turns them into one atomic `WriteBatch`.
pub struct Txn {
    db: Arc<DB>,
    overlay: BTreeMap<OverlayKey, Option<Vec<u8>>>,
    /// What each write replaced in the overlay, newest last, so a failed
    /// command's writes can be undone while those before it stay.
    undo: Vec<(OverlayKey, Option<Option<Vec<u8>>>)>,
}

/// A point to roll a `Txn` back to.
#[derive(Clone, Copy, Debug)]
pub struct Savepoint(usize);

impl Txn {
    pub fn new(db: Arc<DB>) -> Txn {
        Txn { db, overlay: BTreeMap::new(), undo: Vec::new() }
    }

    pub fn savepoint(&self) -> Savepoint {
        Savepoint(self.undo.len())
    }

    /// Undoes every write made since `sp`.
    pub fn rollback(&mut self, sp: Savepoint) {
        while self.undo.len() > sp.0 {
            let Some((k, prev)) = self.undo.pop() else { break };
            match prev {
                Some(v) => self.overlay.insert(k, v),
                None => self.overlay.remove(&k),
            };
        }
    }

    fn record(&mut self, key: OverlayKey, value: Option<Vec<u8>>) {
        let prev = self.overlay.insert(key.clone(), value);
        self.undo.push((key, prev));
    }

    fn cf_static(name: &str) -> &'static str {
        match name {
            CF_INODES => CF_INODES,
            CF_DENTRIES => CF_DENTRIES,
            CF_BLOCKS => CF_BLOCKS,
            CF_MOUNTS => CF_MOUNTS,
            CF_JOBS => CF_JOBS,
            CF_PERSIST => CF_PERSIST,
            CF_REQUESTS => CF_REQUESTS,
            _ => CF_SYS,
        }
    }

    pub fn get(&self, cf_name: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.overlay.get(&(Self::cf_static(cf_name), key.to_vec())) {
            Some(v) => Ok(v.clone()),
            None => get(&self.db, cf_name, key),
        }
    }

    pub fn put(&mut self, cf_name: &str, key: Vec<u8>, value: Vec<u8>) {
        self.record((Self::cf_static(cf_name), key), Some(value));
    }

    pub fn delete(&mut self, cf_name: &str, key: Vec<u8>) {
        self.record((Self::cf_static(cf_name), key), None);
    }

    /// Entries under `prefix`, merging this command's own writes.
    pub fn scan_prefix(&self, cf_name: &str, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let cfs = Self::cf_static(cf_name);
        let mut m: BTreeMap<Vec<u8>, Option<Vec<u8>>> =
            scan_prefix(&self.db, cf_name, prefix)?.into_iter().map(|(k, v)| (k, Some(v))).collect();
        for ((c, k), v) in self.overlay.range((cfs, prefix.to_vec())..) {
            if *c != cfs || !k.starts_with(prefix) {
                break;
            }
            m.insert(k.clone(), v.clone());
        }
        Ok(m.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect())
    }

    pub fn into_batch(self) -> Result<WriteBatch> {
        let mut b = WriteBatch::default();
        for ((c, k), v) in self.overlay {
            let h = cf(&self.db, c)?;
            match v {
                Some(v) => b.put_cf(h, k, v),
                None => b.delete_cf(h, k),
            }
        }
        Ok(b)
    }

    pub fn db(&self) -> &Arc<DB> {
        &self.db
    }
}

#[cfg(test)]
mod within_tests {
    #[test]
    fn prefix_bounds_end_after_the_prefix() {
        use super::prefix_end;
        assert_eq!(prefix_end(&[0, 0, 0, 1]), Some(vec![0, 0, 0, 2]));
        assert_eq!(prefix_end(&[0, 1, 0xff, 0xff]), Some(vec![0, 2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(&[]), None);
    }
}
