//! The FUSE operations. fuser's threads only decode requests: every
//! operation runs as a task on the daemon's tokio runtime and answers the
//! kernel from there, so slow calls (a UFS load, an upload) never hold up
//! other requests.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use curvine_client::{CreateOptions, Error, ErrorKind, FileKind, FileReader, FileStatus, FileSystem};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLock, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};
use parking_lot::Mutex;
use tokio::runtime::Handle as Rt;

use crate::dirattrs::DirAttrs;
use crate::files::FileState;
use crate::inodes::{Inodes, ROOT};
use crate::locks::MountLocks;
use crate::looked::Looked;
use crate::passthrough::Passthrough;

mod opens;
use opens::{Found, Lookup, PtOpen};

/// Names an open file lives under after it was unlinked (hidden from
/// listings and lookups; removed at its last close).
pub const HIDDEN_PREFIX: &str = ".cvfuse-unlinked-";

#[derive(Clone, Debug)]
pub struct Options {
    pub attr_ttl: Duration,
    pub entry_ttl: Duration,
    /// How long the kernel may remember that a name does not exist
    /// (zero: it asks every time).
    pub negative_ttl: Duration,
    /// How long a lookup's reader may serve an open (`looked.rs`).
    pub open_after_lookup: Duration,
    pub direct_io: bool,
    pub writeback_cache: bool,
    /// Where files being rewritten are staged.
    pub staging: PathBuf,
    /// Hand read-only opens of same-host MEM blocks to the kernel
    /// (`passthrough.rs`).
    pub passthrough: bool,
}

/// What a read answers with: bytes read into a buffer, or a checked window
/// onto a block mapped from a worker on this host.
enum ReadOut {
    Owned(Vec<u8>),
    Mapped(curvine_client::MappedRange),
}

impl ReadOut {
    fn bytes(&self) -> &[u8] {
        match self {
            ReadOut::Owned(b) => b,
            ReadOut::Mapped(m) => m.bytes(),
        }
    }
}

struct OpenFile {
    ino: u64,
    /// Opened in passthrough mode: the kernel reads its backing file.
    passthrough: bool,
    /// Opened for writing: its flush, fsync and release report a failed
    /// seal of the file's bytes (`FileState::failed`).
    write: bool,
    /// The reader, with the version of the file it was opened at.
    reader: tokio::sync::Mutex<Option<(u64, Arc<FileReader>)>>,
    /// The reader came from the lookup before the open and nothing was read
    /// through it yet: if its blocks are gone, another client replaced or
    /// removed the file between that lookup and the open, and the handle
    /// reads what the name holds now, as an open asking meta would have.
    refresh: AtomicBool,
    /// Held by reads while `refresh` is set.
    first_read: tokio::sync::Mutex<()>,
}

pub struct CvFuse {
    fs: FileSystem,
    rt: Rt,
    opts: Options,
    inodes: Arc<Inodes>,
    /// Inodes with open handles (or changes not yet uploaded).
    files: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<FileState>>>>,
    handles: Mutex<HashMap<u64, Arc<OpenFile>>>,
    dirs: Mutex<HashMap<u64, Arc<Vec<FileStatus>>>>,
    /// (mtime, len) of each inode at its last open: unchanged files keep
    /// their page cache.
    seen: Mutex<HashMap<u64, (i64, u64)>>,
    next_fh: AtomicU64,
    /// New versions of files this mount made (`FileState::new_version`)
    /// and streams it sealed.
    versions: Arc<AtomicU64>,
    /// Readers the last lookups found, for the opens that follow them.
    looked: Looked<Found>,
    pt: Passthrough,
    dir_attrs: DirAttrs,
    locks: MountLocks,
}

fn errno(e: &Error) -> Errno {
    let code = match e.kind() {
        // Meta or a worker stayed unreachable through the client's retries.
        // EAGAIN (the kind's own errno) means "try again" only to O_NONBLOCK
        // callers; a blocking read, write or close would spin on it or
        // misreport it. A soft NFS mount answers EIO here too.
        ErrorKind::Unavailable | ErrorKind::NotLeader => libc::EIO,
        k => k.errno(),
    };
    if code == libc::EIO {
        // The caller sees only "I/O error": say here what it was.
        tracing::warn!(error = %e, "answering EIO");
    }
    Errno::from_i32(code)
}

/// `errno` for a read through an open handle: a file removed or replaced
/// by another client meanwhile (its blocks freed) is a stale handle, as on
/// NFS, not a missing name.
fn read_errno(e: &Error) -> Errno {
    match e.kind() {
        ErrorKind::NotFound => Errno::ESTALE,
        _ => errno(e),
    }
}

/// Files of at most this many blocks come with their blocks in a lookup's
/// answer (`looked.rs`): small files, whose open would cost as much as
/// reading them.
const LOOKUP_BLOCKS: u32 = 4;

fn name_str(name: &OsStr) -> Result<&str, Errno> {
    let s = name.to_str().ok_or(Errno::EINVAL)?;
    if s.len() > 255 {
        return Err(Errno::ENAMETOOLONG);
    }
    if s.starts_with(HIDDEN_PREFIX) {
        return Err(Errno::ENOENT);
    }
    Ok(s)
}

fn time(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH
    }
}

fn to_ms(t: TimeOrNow) -> i64 {
    let t = match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    };
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl CvFuse {
    pub fn new(fs: FileSystem, rt: Rt, root: &str, opts: Options) -> CvFuse {
        let dir_attrs = DirAttrs::new(opts.attr_ttl);
        let looked = Looked::new(opts.open_after_lookup, opts.attr_ttl, opts.entry_ttl);
        CvFuse {
            fs,
            rt,
            opts,
            inodes: Arc::new(Inodes::new(root)),
            files: Mutex::default(),
            handles: Mutex::default(),
            dirs: Mutex::default(),
            seen: Mutex::default(),
            next_fh: AtomicU64::new(1),
            versions: Arc::default(),
            looked,
            pt: Passthrough::default(),
            dir_attrs,
            locks: MountLocks::default(),
        }
    }

    /// Drops this mount's cluster-wide locks (at unmount).
    pub async fn end_locks(&self) {
        self.locks.end(&self.fs).await;
    }

    /// At the daemon's end: publishes every file's unsaved bytes (writes
    /// already answered as done, whose handles are still open when the mount
    /// was detached lazily) and removes the hidden names of files unlinked
    /// while open. Best effort: a failure is logged, the rest go on.
    pub async fn save_all(&self) {
        let states: Vec<_> = self.files.lock().iter().map(|(i, s)| (*i, s.clone())).collect();
        for (ino, s) in states {
            let mut s = s.lock().await;
            if let Some(hidden) = s.unlinked_as.take() {
                s.discard().await;
                if let Err(e) = self.fs.delete(&hidden, false).await {
                    tracing::warn!(path = %hidden, error = %e, "could not remove an unlinked file at exit");
                }
                continue;
            }
            let Some(path) = self.inodes.path(ino) else { continue };
            if s.is_clean() {
                continue;
            }
            match self.save(&mut s, &path).await {
                Ok(()) => tracing::info!(path = %path, "saved a file still open at exit"),
                Err(e) => tracing::error!(path = %path, errno = ?e, "could not save a file still open at exit: its unsaved writes are lost"),
            }
        }
    }

    /// An entry of `dir` went: the kept attributes take what meta says the
    /// directory became, or go when it did not say (or the call failed:
    /// it may have been applied all the same).
    fn removed_in(&self, dir: u64, done: &Result<curvine_client::Removed, Errno>) {
        match done {
            Ok(curvine_client::Removed { parent: Some((ms, nlink)), .. }) => self.dir_attrs.removed_from(dir, time(*ms), *nlink),
            _ => self.dir_attrs.forget(dir),
        }
    }

    fn attr(&self, ino: u64, st: &FileStatus, local_size: Option<u64>) -> FileAttr {
        let dir = st.kind == FileKind::Dir as i32;
        let kind = file_type(st.kind);
        let size = local_size.unwrap_or(st.len);
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time(st.mtime_ms),
            mtime: time(st.mtime_ms),
            ctime: time(st.ctime_ms.max(st.mtime_ms)),
            crtime: time(st.ctime_ms),
            kind,
            perm: (st.mode & 0o7777) as u16,
            // Directories: 2 + subdirectories (2 from metas that do not count).
            nlink: if dir { st.nlink.max(2) } else { st.nlink.max(1) },
            uid: st.uid,
            gid: st.gid,
            rdev: st.rdev as u32,
            blksize: 1 << 20,
            flags: 0,
        }
    }

    fn state(&self, ino: u64) -> Option<Arc<tokio::sync::Mutex<FileState>>> {
        self.files.lock().get(&ino).cloned()
    }

    /// Attributes of `ino` at `path`, with this mount's unsaved size.
    async fn getattr_of(&self, ino: u64, path: &str) -> Result<FileAttr, Errno> {
        let st = self.fs.stat(path).await.map_err(|e| errno(&e))?;
        Ok(self.attr_now(ino, &st).await)
    }

    /// `st` as the kernel should see it: with this mount's unsaved size,
    /// and no links left once an open file was unlinked.
    async fn attr_now(&self, ino: u64, st: &FileStatus) -> FileAttr {
        let Some(s) = self.state(ino) else { return self.attr(ino, st, None) };
        let s = s.lock().await;
        let mut a = self.attr(ino, st, Some(s.size));
        if s.unlinked_as.is_some() {
            a.nlink = 0;
        }
        // Changes not yet saved to meta (or saved with an older time).
        let changed = time(s.changed_ms);
        a.mtime = a.mtime.max(changed);
        a.ctime = a.ctime.max(changed);
        a
    }

    /// Runs `f`, first on the calling thread (the one that took the
    /// request from the kernel) up to its first wait. Many requests never
    /// wait (a close with nothing to save, a read of a MEM block mapped
    /// here, answers from kept state): they are answered from this thread,
    /// without handing the request to a runtime thread and back, which on
    /// a small VM costs more than the work. One that waits goes on as a
    /// task (a future is polled again, with the task's waker, once
    /// spawned, so nothing is lost by the first poll's inert waker).
    fn spawn<F>(self: &Arc<Self>, f: impl FnOnce(Arc<Self>) -> F + Send + 'static)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut fut = Box::pin(f(self.clone()));
        let _rt = self.rt.enter();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        // A panic here would end this request thread (and with the first
        // one, the session), where a task's panic ends only the task: the
        // request's reply, dropped unanswered, then tells the kernel EIO.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.as_mut().poll(&mut cx))) {
            Ok(std::task::Poll::Pending) => drop(self.rt.spawn(fut)),
            Ok(std::task::Poll::Ready(())) => {}
            Err(_) => tracing::error!("a request handler panicked; the request fails with EIO"),
        }
    }

    /// Runs `f` as a task and answers `reply` with its outcome.
    fn answer<F>(self: &Arc<Self>, reply: ReplyEmpty, f: impl FnOnce(Arc<Self>) -> F + Send + 'static)
    where
        F: std::future::Future<Output = Result<(), Errno>> + Send + 'static,
    {
        self.spawn(move |me| async move {
            match f(me).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
    }

    fn path(&self, ino: INodeNo) -> Result<String, Errno> {
        self.inodes.path(ino.0).ok_or(Errno::ESTALE)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<(String, String), Errno> {
        let name = name_str(name)?.to_string();
        let path = self.inodes.child_path(parent.0, &name).ok_or(Errno::ESTALE)?;
        Ok((name, path))
    }

    /// The node for `parent/name` (status `st`), counting a lookup: a file
    /// with hard links shares one node among its names.
    fn node(&self, parent: u64, name: &str, st: &FileStatus) -> u64 {
        if st.nlink > 1 && st.kind != FileKind::Dir as i32 {
            self.inodes.lookup_linked(parent, name, st.id)
        } else {
            self.inodes.lookup(parent, name)
        }
    }

    async fn entry(&self, parent: u64, name: &str, path: &str) -> Result<FileAttr, Errno> {
        let versions = self.versions.load(Ordering::Acquire);
        let (st, reader) = if self.looked.enabled() {
            self.fs.stat_for_read(path, LOOKUP_BLOCKS).await.map_err(|e| errno(&e))?
        } else {
            (self.fs.stat(path).await.map_err(|e| errno(&e))?, None)
        };
        let ino = self.node(parent, name, &st);
        // Not a file still being written elsewhere (its length will
        // change), nor one this mount has open (its state decides).
        if let Some(r) = reader.filter(|_| st.complete && self.state(ino).is_none()) {
            self.looked.keep(ino, Found { reader: Arc::new(r), versions, looked: true });
        }
        Ok(self.attr_now(ino, &st).await)
    }

    async fn do_read(&self, fh: u64, offset: u64, size: u32) -> Result<ReadOut, Errno> {
        let h = self.handles.lock().get(&fh).cloned().ok_or(Errno::EBADF)?;
        if h.refresh.load(Ordering::Acquire) {
            // Reads wait for one another until one has decided (the
            // kernel's read-ahead sends several at once): switching files
            // after a byte was read would mix two files.
            let _first = h.first_read.lock().await;
            if h.refresh.load(Ordering::Acquire) {
                let res = self.read_through(&h, offset, size).await;
                return match res {
                    Err(Errno::ESTALE) => {
                        h.refresh.store(false, Ordering::Release);
                        *h.reader.lock().await = None;
                        self.read_through(&h, offset, size).await
                    }
                    Ok(out) => {
                        h.refresh.store(false, Ordering::Release);
                        Ok(out)
                    }
                    Err(e) => Err(e),
                };
            }
        }
        self.read_through(&h, offset, size).await
    }

    async fn read_through(&self, h: &OpenFile, offset: u64, size: u32) -> Result<ReadOut, Errno> {
        let mut version = 0;
        if let Some(s) = self.state(h.ino) {
            let mut s = s.lock().await;
            if let Some(buf) = s.read_local(offset, size as usize).await.map_err(|e| errno(&e))? {
                return Ok(ReadOut::Owned(buf));
            }
            version = s.version;
        }
        let mut slot = h.reader.lock().await;
        let reader = match &*slot {
            Some((v, r)) if *v == version => r.clone(),
            _ => {
                let path = self.inodes.path(h.ino).ok_or(Errno::ESTALE)?;
                let r = Arc::new(self.fs.open(&path).await.map_err(|e| read_errno(&e))?);
                *slot = Some((version, r.clone()));
                r
            }
        };
        drop(slot);
        // Bytes in a MEM block of a worker on this host go to the kernel
        // straight from the block's mapping: no buffer to fill (and zero)
        // and no copy in the daemon.
        let len = reader.len().saturating_sub(offset).min(u64::from(size));
        if len > 0 {
            match reader.view(offset, len).await {
                Ok(Some(v)) => return Ok(ReadOut::Mapped(v)),
                Ok(None) => {}
                Err(e) => return Err(read_errno(&e)),
            }
        }
        let mut buf = vec![0u8; len as usize];
        let n = reader.read_at(offset, &mut buf).await.map_err(|e| read_errno(&e))?;
        buf.truncate(n);
        Ok(ReadOut::Owned(buf))
    }

    /// Makes this mount's changes to `ino` visible to every client.
    async fn commit(&self, ino: u64) -> Result<(), Errno> {
        let Some(s) = self.state(ino) else { return Ok(()) };
        let mut s = s.lock().await;
        let path = self.inodes.path(ino).ok_or(Errno::ESTALE)?;
        self.save(&mut s, &path).await
    }

    /// `commit` for a flush or fsync through handle `fh`: a write handle
    /// also hears of a seal that failed under another caller.
    async fn commit_fh(&self, ino: u64, fh: u64) -> Result<(), Errno> {
        let Some(s) = self.state(ino) else { return Ok(()) };
        let mut s = s.lock().await;
        let path = self.inodes.path(ino).ok_or(Errno::ESTALE)?;
        let res = self.save(&mut s, &path).await;
        let write = self.handles.lock().get(&fh).is_some_and(|h| h.write);
        res.and(Self::failed_for(&mut s, write))
    }

    /// The failed seal of `s`'s bytes, for a write handle: reported once
    /// (a failure the caller's own save just met is cleared with it).
    fn failed_for(s: &mut FileState, write: bool) -> Result<(), Errno> {
        match s.failed.take_if(|_| write) {
            Some(e) => Err(errno(&e)),
            None => Ok(()),
        }
    }

    /// Publishes `s`'s unsaved bytes at `path` (any name of a hard-linked
    /// file: meta rewrites such a file in place, under all of its names).
    async fn save(&self, s: &mut FileState, path: &str) -> Result<(), Errno> {
        s.commit(Some((&self.fs, path))).await.map_err(|e| errno(&e))
    }

    async fn release_fh(&self, fh: u64) -> Result<(), Errno> {
        let Some(h) = self.handles.lock().remove(&fh) else { return Ok(()) };
        if h.passthrough {
            self.pt.release(h.ino);
            return Ok(());
        }
        let Some(s) = self.state(h.ino) else { return Ok(()) };
        let mut st = s.lock().await;
        let path = self.inodes.path(h.ino);
        let res = match &path {
            Some(p) if st.unlinked_as.is_none() => self.save(&mut st, p).await,
            _ => Ok(()),
        };
        let failed = Self::failed_for(&mut st, h.write);
        st.open = st.open.saturating_sub(1);
        if st.open == 0 {
            if let Some(hidden) = st.unlinked_as.take() {
                // Other names (hard links) still lead to the file: they must
                // see what was written through the unlinked one.
                if self.fs.stat(&hidden).await.is_ok_and(|f| f.nlink > 1) {
                    if let Err(e) = self.save(&mut st, &hidden).await {
                        tracing::warn!(path = %hidden, error = ?e, "could not save writes to a linked file at its last close");
                    }
                }
                st.discard().await;
                match self.fs.delete(&hidden, false).await {
                    // The node's hidden name goes too: with other names
                    // (hard links) left, it must be found by one of them.
                    Ok(_) => self.inodes.unlink_name_of(h.ino, hidden.rsplit('/').next().unwrap_or_default()),
                    Err(e) => tracing::warn!(path = %hidden, error = %e, "could not remove an unlinked file at its last close"),
                }
            }
            if res.is_ok() {
                self.drop_state(h.ino, &s);
            }
        }
        res.and(failed)
    }

    async fn do_setattr(&self, ino: u64, a: SetAttr) -> Result<FileAttr, Errno> {
        let path = self.inodes.path(ino).ok_or(Errno::ESTALE)?;
        if a.size.is_some() && self.pt.has_backing(ino) {
            // Readers of the backing would go on seeing the old bytes.
            return Err(Errno::ETXTBSY);
        }
        if a.uid.is_some() || a.gid.is_some() {
            // The kernel has checked the caller may (default_permissions).
            let st = self.fs.set_owner(&path, a.uid, a.gid).await.map_err(|e| errno(&e))?;
            if let Some(s) = self.state(ino) {
                s.lock().await.owner = Some((st.uid, st.gid));
            }
        }
        if let Some(size) = a.size {
            let (st, state, mut s) = self.locked_file_state(ino, &path).await?;
            s.owner.get_or_insert((st.uid, st.gid));
            s.truncate(&self.fs, &path, size, &self.opts.staging).await.map_err(|e| errno(&e))?;
            if s.open == 0 {
                // Nobody holds it open: the new size is published now.
                self.save(&mut s, &path).await?;
                self.drop_state(ino, &state);
            }
        }
        if a.mode.is_some() || a.mtime.is_some() {
            if let Some(s) = self.state(ino) {
                if let Some(m) = a.mode {
                    s.lock().await.mode = m & 0o7777;
                }
            }
            self.fs.set_attr(&path, a.mode.map(|m| m & 0o7777), a.mtime).await.map_err(|e| errno(&e))?;
        }
        self.getattr_of(ino, &path).await
    }

    async fn list(&self, path: &str) -> Result<Arc<Vec<FileStatus>>, Errno> {
        let mut entries = self.fs.list(path).await.map_err(|e| errno(&e))?;
        entries.retain(|e| !e.name.starts_with(HIDDEN_PREFIX));
        Ok(Arc::new(entries))
    }
}

struct SetAttr {
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    mtime: Option<i64>,
}

/// Stable d_ino for plain readdir entries (no lookup is counted for them).
fn dir_ino(path: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut h);
    h.finish() | (1 << 63)
}

/// `Arc<CvFuse>` is what fuser serves: handlers clone it into tasks.
pub struct Mounted(pub Arc<CvFuse>);

impl Filesystem for Mounted {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        // Locks go to meta, so they hold across every mount (locks.rs).
        if config.add_capabilities(InitFlags::FUSE_POSIX_LOCKS | InitFlags::FUSE_FLOCK_LOCKS).is_err() {
            tracing::warn!("the kernel does not pass lock requests to FUSE: locks hold on this host only");
        }
        if self.0.opts.writeback_cache {
            let _ = config.add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE);
        }
        if self.0.opts.passthrough {
            // The kernel does not combine passthrough with the writeback cache.
            let ok = !self.0.opts.writeback_cache
                && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok();
            if !ok {
                tracing::warn!(
                    "FUSE passthrough unavailable (needs Linux 6.9+ with CONFIG_FUSE_PASSTHROUGH, and no --writeback-cache); \
                     reads go through the daemon"
                );
            }
            self.0.pt.set_enabled(ok);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (name, path) = match self.0.child(parent, name) {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        self.0.spawn(move |me| async move {
            match me.entry(parent.0, &name, &path).await {
                Ok(a) => reply.entry_with_ttls(&me.opts.attr_ttl, &me.opts.entry_ttl, &a, Generation(0)),
                // Node 0 with a timeout: the kernel keeps a negative entry
                // (and an O_CREAT open of the name goes straight to create).
                Err(e) if e == Errno::ENOENT && !me.opts.negative_ttl.is_zero() => {
                    let none = FileAttr { ino: INodeNo(0), ..me.attr(0, &FileStatus::default(), None) };
                    reply.entry_with_ttls(&Duration::ZERO, &me.opts.negative_ttl, &none, Generation(0))
                }
                Err(e) => reply.error(e),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if self.0.inodes.forget(ino.0, nlookup) {
            self.0.locks.forget(ino.0);
            // Numbers are never handed out again: nothing would drop it.
            self.0.seen.lock().remove(&ino.0);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let path = match self.0.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        if let Some(a) = self.0.dir_attrs.get(ino.0) {
            return reply.attr(&self.0.opts.attr_ttl, &a);
        }
        self.0.spawn(move |me| async move {
            let gen = me.dir_attrs.generation();
            match me.getattr_of(ino.0, &path).await {
                Ok(a) => {
                    if a.kind == FileType::Directory {
                        me.dir_attrs.put(a, gen);
                    }
                    reply.attr(&me.opts.attr_ttl, &a)
                }
                Err(e) => reply.error(e),
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let a = SetAttr { mode, uid, gid, size, mtime: mtime.map(to_ms) };
        self.0.dir_attrs.forget(ino.0);
        self.0.spawn(move |me| async move {
            let res = me.do_setattr(ino.0, a).await;
            me.dir_attrs.forget(ino.0); // a getattr may have raced the change
            match res {
                Ok(attr) => reply.attr(&me.opts.attr_ttl, &attr),
                Err(e) => reply.error(e),
            }
        });
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let owner = (req.uid(), req.gid());
        let (name, path) = match self.0.child(parent, name) {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        self.0.spawn(move |me| async move {
            let res = async {
                let st = match me.fs.mkdir_with(&path, false, mode & !umask & 0o7777, Some(owner)).await {
                    Ok(st) => st,
                    Err(e) => {
                        // It may have been applied all the same.
                        me.dir_attrs.forget(parent.0);
                        return Err(errno(&e));
                    }
                };
                // Meta stamped the parent with the new directory's time
                // and counted its `..` link.
                me.dir_attrs.changed_in(parent.0, time(st.mtime_ms), 1);
                let ino = me.inodes.lookup(parent.0, &name);
                let a = me.attr(ino, &st, None);
                // Nothing can have changed the new directory through this
                // mount yet; its first create would otherwise ask meta.
                me.dir_attrs.put(a, me.dir_attrs.generation());
                Ok::<_, Errno>(a)
            };
            match res.await {
                Ok(a) => reply.entry_with_ttls(&me.opts.attr_ttl, &me.opts.entry_ttl, &a, Generation(0)),
                Err(e) => reply.error(e),
            }
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (name, path) = match self.0.child(parent, name) {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        self.0.answer(reply, move |me| async move {
            // The kernel refuses unlink of a directory (EISDIR) itself,
            // from the type it looked up: no stat needed here.
            let open = me.inodes.known(parent.0, &name).and_then(|ino| me.state(ino).map(|s| (ino, s)));
            if let Some((ino, s)) = open {
                let mut s = s.lock().await;
                if s.open > 0 {
                    // Still open here: keep the bytes under a hidden name
                    // until the last close (POSIX unlink).
                    let hidden_name = format!("{HIDDEN_PREFIX}{}-{ino}", std::process::id());
                    let hidden = me.inodes.child_path(parent.0, &hidden_name).ok_or(Errno::ESTALE)?;
                    me.save(&mut s, &path).await?;
                    me.dir_attrs.forget(parent.0);
                    me.fs.rename(&path, &hidden).await.map_err(|e| errno(&e))?;
                    me.inodes.rehome(ino, parent.0, &name, &hidden_name);
                    me.dir_attrs.forget(parent.0); // a getattr may have raced the change
                    s.unlinked_as = Some(hidden);
                    return Ok(());
                }
            }
            let done = me.fs.remove(&path, false).await.map_err(|e| errno(&e));
            me.removed_in(parent.0, &done);
            done?;
            me.inodes.unlink(parent.0, &name);
            Ok(())
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (name, path) = match self.0.child(parent, name) {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        self.0.answer(reply, move |me| async move {
            // The kernel refuses rmdir of a non-directory (ENOTDIR).
            let done = me.fs.remove(&path, false).await.map_err(|e| errno(&e));
            me.removed_in(parent.0, &done);
            done?;
            if let Some(gone) = me.inodes.known(parent.0, &name) {
                me.dir_attrs.forget(gone);
            }
            me.inodes.unlink(parent.0, &name);
            Ok(())
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let ((name, src), (newname, dst)) = match (self.0.child(parent, name), self.0.child(newparent, newname)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        if flags.contains(RenameFlags::RENAME_EXCHANGE) || flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let (moved, replaced) = (self.0.inodes.known(parent.0, &name), self.0.inodes.known(newparent.0, &newname));
        for d in [Some(parent.0), Some(newparent.0), moved, replaced].into_iter().flatten() {
            self.0.dir_attrs.forget(d);
        }
        self.0.answer(reply, move |me| async move {
            if noreplace {
                // Checked, then renamed: a concurrent create of the
                // destination by another client can slip in between.
                match me.fs.stat(&dst).await {
                    Ok(_) => return Err(Errno::EEXIST),
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(errno(&e)),
                }
            }
            // Unsaved bytes of the source go with it.
            if let Some(ino) = me.inodes.known(parent.0, &name) {
                me.commit(ino).await?;
            }
            me.fs.rename(&src, &dst).await.map_err(|e| errno(&e))?;
            me.inodes.rename(parent.0, &name, newparent.0, &newname);
            // A getattr may have raced the change.
            for d in [Some(parent.0), Some(newparent.0), moved, replaced].into_iter().flatten() {
                me.dir_attrs.forget(d);
            }
            Ok(())
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let path = match self.0.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        self.0.spawn(move |me| async move {
            let read_only = flags.acc_mode() == OpenAccMode::O_RDONLY && flags.0 & libc::O_TRUNC == 0;
            // Also when passthrough was switched off: existing backings must
            // be shared.
            // Taken either way: it serves one open at most, and only if
            // this mount changed nothing since.
            let looked = me.looked.take(ino.0).filter(|f| read_only && me.current(f));
            let mut how = if read_only { Lookup::Reader } else { Lookup::Stat };
            let looked = if read_only && !me.opts.direct_io {
                match me.open_passthrough(ino.0, &path, looked, &reply).await {
                    Ok(PtOpen::Handed(fh, backing)) => return reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &backing),
                    Ok(PtOpen::Normal(found)) => found,
                    Err(e) => return reply.error(e),
                }
            } else {
                looked
            };
            if let Some(found) = looked {
                how = Lookup::Found(found);
            }
            let mut tries = 0;
            let res = loop {
                let how = std::mem::replace(&mut how, if read_only { Lookup::Reader } else { Lookup::Stat });
                match me.open_existing(ino.0, &path, flags.0, how).await.map(|(_, unchanged, reader)| (unchanged, reader)) {
                    // A reader that lost the race to a passthrough open shares
                    // its backing instead; if the backing went with its last
                    // handle meanwhile, the open starts over.
                    Err(Errno::ETXTBSY) if read_only => match me.pt.share(ino.0) {
                        Some(b) => {
                            let fh = me.new_passthrough_fh(ino.0);
                            return reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &b);
                        }
                        None if tries < 3 => tries += 1,
                        None => break Err(Errno::EAGAIN),
                    },
                    other => break other,
                }
            };
            match res {
                Ok((unchanged, reader)) => {
                    // With the kernel's cached pages of the file kept, a
                    // read may already have been served from them.
                    let reader = reader.map(|(v, mut f)| {
                        f.looked &= !unchanged;
                        (v, f)
                    });
                    let fh = me.new_fh(ino.0, flags.acc_mode() != OpenAccMode::O_RDONLY, reader);
                    let mut f = FopenFlags::empty();
                    if me.opts.direct_io {
                        f |= FopenFlags::FOPEN_DIRECT_IO;
                    } else if unchanged {
                        f |= FopenFlags::FOPEN_KEEP_CACHE;
                    }
                    reply.opened(FileHandle(fh), f)
                }
                Err(e) => reply.error(e),
            }
        });
    }

    fn create(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, flags: i32, reply: ReplyCreate) {
        let owner = (req.uid(), req.gid());
        let (name, path) = match self.0.child(parent, name) {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        self.0.spawn(move |me| async move {
            let mode = mode & !umask & 0o7777;
            let res = async {
                // Only O_TRUNC replaces a file already there: the kernel's
                // negative lookup may be older than another client's create
                // of the name, whose bytes an O_CREAT|O_APPEND must keep.
                let overwrite = flags & libc::O_TRUNC != 0 && flags & libc::O_EXCL == 0;
                let opts = CreateOptions { overwrite, mode, owner: Some(owner), ..Default::default() };
                let w = match me.fs.create(&path, opts).await {
                    Ok(w) => w,
                    Err(e) if e.kind() == ErrorKind::AlreadyExists && flags & libc::O_EXCL == 0 => {
                        // Opened as `open` would have, had the kernel known the file.
                        let st = me.fs.stat(&path).await.map_err(|e| errno(&e))?;
                        let ino = me.node(parent.0, &name, &st);
                        let (st, unchanged, _) = match me.open_existing(ino, &path, flags, Lookup::Stat).await {
                            Ok(x) => x,
                            Err(e) => {
                                // The kernel counts no lookup for a failed create.
                                me.inodes.forget(ino, 1);
                                return Err(e);
                            }
                        };
                        return Ok((ino, me.attr_now(ino, &st).await, unchanged));
                    }
                    Err(e) => return Err(errno(&e)),
                };
                let st = w.status().clone();
                me.dir_attrs.changed_in(parent.0, time(st.mtime_ms), 0);
                let ino = me.inodes.lookup(parent.0, &name);
                let mut s = loop {
                    if let Some(s) = me.lock_if_current(ino, me.open_state(ino, 0, mode)).await {
                        break s;
                    }
                };
                s.discard().await;
                s.owner = Some(owner);
                s.mode = mode;
                s.data = crate::files::Data::Stream(Box::new(w));
                s.size = 0;
                s.new_version();
                s.open += 1;
                drop(s);
                Ok((ino, me.attr(ino, &st, Some(0)), false))
            };
            match res.await {
                Ok((ino, attr, unchanged)) => {
                    let fh = me.new_fh(ino, flags & libc::O_ACCMODE != libc::O_RDONLY, None);
                    let f = if me.opts.direct_io {
                        FopenFlags::FOPEN_DIRECT_IO
                    } else if unchanged {
                        FopenFlags::FOPEN_KEEP_CACHE
                    } else {
                        FopenFlags::empty()
                    };
                    reply.created(&me.opts.entry_ttl, &attr, Generation(0), FileHandle(fh), f)
                }
                Err(e) => reply.error(e),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.0.spawn(move |me| async move {
            match me.do_read(fh.0, offset, size).await {
                Ok(b) => reply.data(b.bytes()),
                Err(e) => reply.error(e),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _wf: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = data.to_vec();
        self.0.spawn(move |me| async move {
            let res = async {
                let s = me.state(ino.0).ok_or(Errno::EBADF)?;
                let mut s = s.lock().await;
                let path = me.inodes.path(ino.0).ok_or(Errno::ESTALE)?;
                s.write(&me.fs, &path, offset, &data, &me.opts.staging).await.map_err(|e| errno(&e))
            };
            match res.await {
                Ok(()) => reply.written(data.len() as u32),
                Err(e) => reply.error(e),
            }
        });
    }

    fn flush(&self, _req: &Request, ino: INodeNo, fh: FileHandle, lock: LockOwner, reply: ReplyEmpty) {
        self.0.answer(reply, move |me| async move {
            let res = me.commit_fh(ino.0, fh.0).await;
            // Any close drops the closing process's record locks on the file.
            me.locks.closed(&me.fs, ino.0, lock.0).await;
            res
        });
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.0.answer(reply, move |me| async move { me.commit_fh(ino.0, fh.0).await });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.0.answer(reply, move |me| async move {
            // An flock owner (the open file) closed for the last time.
            if let Some(owner) = lock {
                me.locks.closed(&me.fs, ino.0, owner.0).await;
            }
            me.locks.released(&me.fs, fh.0).await;
            me.release_fh(fh.0).await
        });
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let path = self.0.path(ino);
        self.0.spawn(move |me| async move {
            let res = async { me.locks.test(&me.fs, &path?, lock_owner.0, pid, typ, start, end).await };
            match res.await {
                Ok((s, e, t, p)) => reply.locked(s, e, t, p),
                Err(e) => reply.error(e),
            }
        });
    }

    fn setlk(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let (path, tid) = (self.0.path(ino), req.pid());
        self.0.answer(reply, move |me| async move {
            me.locks.set(&me.fs, ino.0, fh.0, &path?, lock_owner.0, pid, tid, typ, start, end, sleep).await
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let path = match self.0.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        self.0.spawn(move |me| async move {
            match me.list(&path).await {
                Ok(entries) => {
                    let fh = me.next_fh.fetch_add(1, Ordering::Relaxed);
                    me.dirs.lock().insert(fh, entries);
                    reply.opened(FileHandle(fh), FopenFlags::empty())
                }
                Err(e) => reply.error(e),
            }
        });
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let Some(entries) = self.0.dirs.lock().get(&fh.0).cloned() else { return reply.error(Errno::EBADF) };
        let dir = self.0.inodes.path(ino.0).unwrap_or_default();
        let mut i = offset as usize;
        loop {
            let full = match i {
                0 => reply.add(ino, 1, FileType::Directory, "."),
                1 => reply.add(INodeNo(ROOT), 2, FileType::Directory, ".."),
                _ => match entries.get(i - 2) {
                    None => break,
                    Some(e) => {
                        let kind = file_type(e.kind);
                        let known = self.0.inodes.known(ino.0, &e.name);
                        let d_ino = known.unwrap_or_else(|| dir_ino(&format!("{dir}/{}", e.name)));
                        reply.add(INodeNo(d_ino), i as u64 + 1, kind, &e.name)
                    }
                },
            };
            if full {
                break;
            }
            i += 1;
        }
        reply.ok()
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let Some(entries) = self.0.dirs.lock().get(&fh.0).cloned() else { return reply.error(Errno::EBADF) };
        // A task: a file with changes of this mount's shows their size (its
        // state's lock awaited), as lookup and getattr show it. Meta's size
        // would make the kernel cut its cached pages, and an O_APPEND
        // writer append at that old end.
        self.0.spawn(move |me| async move {
            let mut i = offset as usize;
            // The same offsets as `readdir` ("." and ".." first), as the kernel
            // may switch between the two within one listing. The kernel counts
            // no lookup for "." and "..", and ignores their attributes.
            let dot = FileAttr { ino, kind: FileType::Directory, perm: 0o755, nlink: 2, ..me.attr(ino.0, &FileStatus::default(), None) };
            loop {
                let full = match i {
                    0 => reply.add(ino, 1, ".", &me.opts.entry_ttl, &dot, Generation(0)),
                    1 => reply.add(INodeNo(ROOT), 2, "..", &me.opts.entry_ttl, &FileAttr { ino: INodeNo(ROOT), ..dot }, Generation(0)),
                    _ => match entries.get(i - 2) {
                        None => break,
                        Some(e) => {
                            let child = me.node(ino.0, &e.name, e);
                            let attr = me.attr_now(child, e).await;
                            let full = reply.add(INodeNo(child), i as u64 + 1, &e.name, &me.opts.entry_ttl, &attr, Generation(0));
                            if full {
                                me.inodes.forget(child, 1);
                            }
                            full
                        }
                    },
                };
                if full {
                    break;
                }
                i += 1;
            }
            reply.ok()
        });
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.0.dirs.lock().remove(&fh.0);
        reply.ok()
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.0.spawn(move |me| async move {
            match me.fs.report().await {
                Ok(r) => {
                    const BS: u64 = 4096;
                    let blocks = r.capacity / BS;
                    let free = r.capacity.saturating_sub(r.used) / BS;
                    let files = r.files + r.dirs;
                    reply.statfs(blocks, free, free, files + (1 << 32), 1 << 32, BS as u32, 255, BS as u32)
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let owner = (req.uid(), req.gid());
        let (name, path) = match self.0.child(parent, name) {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        let kind = match mode & libc::S_IFMT {
            libc::S_IFIFO => Some(FileKind::Fifo),
            libc::S_IFSOCK => Some(FileKind::Socket),
            libc::S_IFCHR => Some(FileKind::CharDev),
            libc::S_IFBLK => Some(FileKind::BlockDev),
            libc::S_IFREG | 0 => None,
            _ => return reply.error(Errno::EINVAL),
        };
        let perm = mode & !umask & 0o7777;
        self.0.dir_attrs.forget(parent.0);
        self.0.spawn(move |me| async move {
            let res = async {
                let st = match kind {
                    Some(k) => me.fs.mknod(&path, k, perm, rdev as u64, Some(owner)).await,
                    // mknod(S_IFREG): an empty regular file.
                    None => {
                        let opts = CreateOptions { overwrite: false, mode: perm, owner: Some(owner), ..Default::default() };
                        match me.fs.create(&path, opts).await {
                            Ok(w) => w.close().await,
                            Err(e) => Err(e),
                        }
                    }
                }
                .map_err(|e| errno(&e))?;
                me.dir_attrs.forget(parent.0); // a getattr may have raced the change
                Ok::<_, Errno>(me.attr(me.inodes.lookup(parent.0, &name), &st, None))
            };
            match res.await {
                Ok(a) => reply.entry_with_ttls(&me.opts.attr_ttl, &me.opts.entry_ttl, &a, Generation(0)),
                Err(e) => reply.error(e),
            }
        });
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &std::path::Path, reply: ReplyEntry) {
        let owner = (req.uid(), req.gid());
        let (name, path) = match self.0.child(parent, link_name) {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        let Some(target) = target.to_str().map(str::to_string) else { return reply.error(Errno::EINVAL) };
        self.0.dir_attrs.forget(parent.0);
        self.0.spawn(move |me| async move {
            let res = me.fs.symlink(&target, &path, Some(owner)).await;
            me.dir_attrs.forget(parent.0); // a getattr may have raced the change
            match res {
                Ok(st) => {
                    let a = me.attr(me.inodes.lookup(parent.0, &name), &st, None);
                    reply.entry_with_ttls(&me.opts.attr_ttl, &me.opts.entry_ttl, &a, Generation(0))
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let src = match self.0.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let (name, dst) = match self.0.child(newparent, newname) {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        self.0.dir_attrs.forget(newparent.0);
        self.0.spawn(move |me| async move {
            let res = async {
                // Unsaved bytes first: the new name must show them.
                me.commit(ino.0).await?;
                let st = me.fs.link(&src, &dst).await.map_err(|e| errno(&e))?;
                // The same node under both names: one inode for the kernel.
                let node = me.inodes.link(ino.0, newparent.0, &name, st.id).ok_or(Errno::ESTALE)?;
                Ok::<_, Errno>(me.attr_now(node, &st).await)
            };
            let res = res.await;
            me.dir_attrs.forget(newparent.0); // a getattr may have raced the change
            match res {
                Ok(a) => reply.entry_with_ttls(&me.opts.attr_ttl, &me.opts.entry_ttl, &a, Generation(0)),
                Err(e) => reply.error(e),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let path = match self.0.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        self.0.spawn(move |me| async move {
            match me.fs.stat(&path).await {
                Ok(st) if st.kind == FileKind::Symlink as i32 => reply.data(st.target.as_bytes()),
                Ok(_) => reply.error(Errno::EINVAL),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let (path, name) = match (self.0.path(ino), name.to_str()) {
            (Ok(p), Some(n)) => (p, n.to_string()),
            (Err(e), _) => return reply.error(e),
            (_, None) => return reply.error(Errno::EINVAL),
        };
        self.0.spawn(move |me| async move {
            match me.fs.xattr_get(&path, &name).await {
                Ok(v) => xattr_reply(reply, size, &v),
                Err(e) if e.kind() == ErrorKind::NotFound => reply.error(Errno::NO_XATTR),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let path = match self.0.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        self.0.spawn(move |me| async move {
            match me.fs.xattr_list(&path).await {
                Ok(names) => {
                    let mut buf = Vec::new();
                    for n in names {
                        buf.extend_from_slice(n.as_bytes());
                        buf.push(0);
                    }
                    xattr_reply(reply, size, &buf)
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn setxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, value: &[u8], flags: i32, _pos: u32, reply: ReplyEmpty) {
        let (path, name) = match (self.0.path(ino), name.to_str()) {
            (Ok(p), Some(n)) => (p, n.to_string()),
            (Err(e), _) => return reply.error(e),
            (_, None) => return reply.error(Errno::EINVAL),
        };
        let value = value.to_vec();
        self.0.dir_attrs.forget(ino.0);
        self.0.answer(reply, move |me| async move {
            let res = me.fs.xattr_set(&path, &name, &value, flags as u32).await;
            me.dir_attrs.forget(ino.0); // a getattr may have raced the change
            res.map_err(|e| match e.kind() {
                ErrorKind::NotFound => Errno::NO_XATTR,
                ErrorKind::NoSpace => Errno::E2BIG,
                ErrorKind::InvalidArgument => Errno::ERANGE,
                _ => errno(&e),
            })
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (path, name) = match (self.0.path(ino), name.to_str()) {
            (Ok(p), Some(n)) => (p, n.to_string()),
            (Err(e), _) => return reply.error(e),
            (_, None) => return reply.error(Errno::EINVAL),
        };
        self.0.dir_attrs.forget(ino.0);
        self.0.answer(reply, move |me| async move {
            let res = me.fs.xattr_remove(&path, &name).await;
            me.dir_attrs.forget(ino.0); // a getattr may have raced the change
            res.map_err(|e| match e.kind() {
                ErrorKind::NotFound => Errno::NO_XATTR,
                _ => errno(&e),
            })
        });
    }
}

/// getxattr/listxattr answer: the size when asked for it (size 0), the
/// bytes when they fit, ERANGE otherwise.
fn xattr_reply(reply: ReplyXattr, size: u32, data: &[u8]) {
    if size == 0 {
        reply.size(data.len() as u32)
    } else if data.len() <= size as usize {
        reply.data(data)
    } else {
        reply.error(Errno::ERANGE)
    }
}

/// The kernel's file type of a meta `FileKind`.
fn file_type(kind: i32) -> FileType {
    match FileKind::try_from(kind) {
        Ok(FileKind::Dir) => FileType::Directory,
        Ok(FileKind::Symlink) => FileType::Symlink,
        Ok(FileKind::Fifo) => FileType::NamedPipe,
        Ok(FileKind::Socket) => FileType::Socket,
        Ok(FileKind::CharDev) => FileType::CharDevice,
        Ok(FileKind::BlockDev) => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}
