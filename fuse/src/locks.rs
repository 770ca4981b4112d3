//! fcntl and flock locks that hold across every mount of the cluster: the
//! kernel hands lock requests to this daemon (FUSE_POSIX_LOCKS,
//! FUSE_FLOCK_LOCKS) and meta keeps the locks. flock arrives as a
//! whole-file lock owned by the open file, so it is emulated with record
//! locks, as on Linux NFS: flock and fcntl locks of one file see each
//! other.
//!
//! This mount is one lock session. It renews the session while it runs and
//! drops its locks at unmount; if the daemon dies, meta frees them after
//! `meta.lock_lease`. A lock is taken on the file's path at the time (see
//! meta's `namespace/locks.rs` for why): this mount remembers which paths
//! each inode locked, so closing a renamed file still drops its locks.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use curvine_client::locks::{LockKind, LockWho};
use curvine_client::{ErrorKind, FileSystem};
use fuser::Errno;
use parking_lot::Mutex;

/// Longest pause between two tries of a blocking (F_SETLKW) lock.
const MAX_WAIT_STEP: Duration = Duration::from_millis(100);
/// The largest file offset the kernel takes in a lock reply.
const OFFSET_MAX: u64 = i64::MAX as u64;

pub struct MountLocks {
    pub session: u64,
    keeper: AtomicBool,
    /// Paths locked through each inode (until the kernel forgets it).
    paths: Mutex<HashMap<u64, HashSet<String>>>,
    /// (owner, inode) pairs with a blocking request waiting: (waiters,
    /// closes of that file by that owner since). A waiter whose owner
    /// closed the file meanwhile (its process was killed) gives up instead
    /// of taking a lock nobody would release.
    waiting: Mutex<HashMap<(u64, u64), (usize, u64)>>,
    /// Per open file handle: its inode and the lock owners that took locks
    /// through it and have not closed the file since. An owner no flush
    /// names is the open file itself (an F_OFD_SETLK lock): its locks go
    /// when the handle is released.
    by_fh: Mutex<HashMap<u64, (u64, HashSet<u64>)>>,
}

fn random_session() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.finish().max(1)
}

/// Whether the thread `tid` (the requesting thread, in this daemon's pid
/// namespace, as the FUSE header gives it) is gone or has a signal pending
/// that it does not block: fuser answers the kernel's INTERRUPT with
/// ENOSYS, so a waiting process stays in the kernel until this daemon
/// answers, and the wait loop answers EINTR as soon as it sees one. The
/// kernel turns that EINTR into a restart of the call: a fatal signal
/// (SIGKILL, or a default action that kills or dumps core) ends the
/// process, a handler runs and the call then fails with EINTR (the
/// `alarm()` timeout idiom) or, with `SA_RESTART`, waits again. Ignored
/// signals are never pending and do not end the wait.
fn interrupted(tid: u32) -> bool {
    if tid == 0 {
        return false;
    }
    let status = match std::fs::read_to_string(format!("/proc/{tid}/status")) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return true,
        // Unreadable (hidepid): no way to tell, so keep waiting.
        Err(_) => return false,
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    (field("SigPnd:") | field("ShdPnd:")) & !field("SigBlk:") & !field("SigIgn:") != 0
}

fn kind_of(typ: i32) -> Result<Option<LockKind>, Errno> {
    match typ {
        libc::F_RDLCK => Ok(Some(LockKind::Read)),
        libc::F_WRLCK => Ok(Some(LockKind::Write)),
        libc::F_UNLCK => Ok(None),
        _ => Err(Errno::EINVAL),
    }
}

fn errno(e: &curvine_client::Error) -> Errno {
    if e.kind() != ErrorKind::WouldBlock {
        tracing::warn!(error = %e, "lock request failed");
    }
    Errno::from_i32(e.kind().errno())
}

impl Default for MountLocks {
    fn default() -> Self {
        MountLocks { session: random_session(), keeper: AtomicBool::new(false), paths: Mutex::default(), waiting: Mutex::default(), by_fh: Mutex::default() }
    }
}

impl MountLocks {
    fn who(&self, owner: u64, pid: u32) -> LockWho {
        LockWho { session: self.session, owner, pid }
    }

    /// F_GETLK: the lock in the way as (start, end, type, pid), or F_UNLCK.
    pub async fn test(&self, fs: &FileSystem, path: &str, owner: u64, pid: u32, typ: i32, start: u64, end: u64) -> Result<(u64, u64, i32, u32), Errno> {
        let Some(kind) = kind_of(typ)? else { return Ok((0, 0, libc::F_UNLCK, 0)) };
        match fs.lock_test(path, self.who(owner, pid), kind, start, end).await.map_err(|e| errno(&e))? {
            // The kernel refuses offsets past OFFSET_MAX (EIO); an SDK lock
            // "to the end of the file" says u64::MAX.
            Some(l) => Ok((l.start.min(OFFSET_MAX), l.end.min(OFFSET_MAX), if l.kind == LockKind::Write { libc::F_WRLCK } else { libc::F_RDLCK }, l.pid)),
            None => Ok((0, 0, libc::F_UNLCK, 0)),
        }
    }

    /// F_SETLK / F_SETLKW (`wait`) / flock. `tid` is the requesting
    /// thread (its pending signals end a wait), `pid` the lock's process.
    #[allow(clippy::too_many_arguments)]
    pub async fn set(&self, fs: &FileSystem, ino: u64, fh: u64, path: &str, owner: u64, pid: u32, tid: u32, typ: i32, start: u64, end: u64, wait: bool) -> Result<(), Errno> {
        let kind = kind_of(typ)?;
        if kind.is_none() {
            return self.unlock(fs, ino, path, owner, pid, start, end).await;
        }
        self.keep_alive(fs);
        self.paths.lock().entry(ino).or_default().insert(path.to_string());
        self.by_fh.lock().entry(fh).or_insert_with(|| (ino, HashSet::new())).1.insert(owner);
        if !wait {
            return fs.lock_set(path, self.who(owner, pid), kind, start, end).await.map_err(|e| errno(&e));
        }
        let key = (owner, ino);
        let closes = {
            let mut w = self.waiting.lock();
            let e = w.entry(key).or_default();
            e.0 += 1;
            e.1
        };
        let res = self.wait_for(fs, path, key, pid, tid, kind, start, end, closes).await;
        let mut w = self.waiting.lock();
        if let Some(e) = w.get_mut(&key) {
            e.0 -= 1;
            if e.0 == 0 {
                w.remove(&key);
            }
        }
        res
    }

    /// An unlock applies under every path this inode locked through, not
    /// only its name now: locks are kept by path, and the file may have
    /// been renamed (or, open and unlinked, moved to a hidden name) since
    /// it was locked.
    #[allow(clippy::too_many_arguments)]
    async fn unlock(&self, fs: &FileSystem, ino: u64, path: &str, owner: u64, pid: u32, start: u64, end: u64) -> Result<(), Errno> {
        let others: Vec<String> = match self.paths.lock().get(&ino) {
            Some(p) => p.iter().filter(|p| p.as_str() != path).cloned().collect(),
            None => Vec::new(),
        };
        for p in others {
            if let Err(e) = fs.lock_set(&p, self.who(owner, pid), None, start, end).await {
                tracing::warn!(path = %p, error = %e, "cannot unlock under an earlier name (meta frees it at close or with the session)");
            }
        }
        fs.lock_set(path, self.who(owner, pid), None, start, end).await.map_err(|e| errno(&e))
    }

    fn closed_since(&self, key: (u64, u64), closes: u64) -> bool {
        self.waiting.lock().get(&key).is_some_and(|e| e.1 != closes)
    }

    /// F_SETLKW: tries until the lock is had, the request fails otherwise,
    /// or the owner closes the file.
    #[allow(clippy::too_many_arguments)]
    async fn wait_for(&self, fs: &FileSystem, path: &str, key: (u64, u64), pid: u32, tid: u32, kind: Option<LockKind>, start: u64, end: u64, closes: u64) -> Result<(), Errno> {
        let who = self.who(key.0, pid);
        let mut step = Duration::from_millis(2);
        loop {
            match fs.lock_set(path, who, kind, start, end).await {
                Ok(()) => break,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    tokio::time::sleep(step).await;
                    step = (step * 2).min(MAX_WAIT_STEP);
                    if self.closed_since(key, closes) || interrupted(tid) {
                        return Err(Errno::EINTR);
                    }
                }
                Err(e) => return Err(errno(&e)),
            }
        }
        if kind.is_some() && self.closed_since(key, closes) {
            // The owner closed this file while the request waited: its
            // locks on it were dropped at that close, and the one just
            // taken would outlive every handle.
            let _ = fs.lock_set(path, who, None, start, end).await;
            return Err(Errno::EINTR);
        }
        Ok(())
    }

    /// The owner closed `ino` (flush: POSIX drops a process's locks on
    /// any close of the file; release of an flock owner): drop its locks.
    pub async fn closed(&self, fs: &FileSystem, ino: u64, owner: u64) {
        if let Some(e) = self.waiting.lock().get_mut(&(owner, ino)) {
            e.1 += 1;
        }
        for (i, owners) in self.by_fh.lock().values_mut() {
            if *i == ino {
                owners.remove(&owner);
            }
        }
        let paths: Vec<String> = match self.paths.lock().get(&ino) {
            Some(p) => p.iter().cloned().collect(),
            None => return,
        };
        for p in paths {
            if let Err(e) = fs.lock_release(self.session, Some(&p), Some(owner)).await {
                tracing::warn!(path = %p, error = %e, "cannot drop a closed file's locks (meta frees them with the session)");
            }
        }
    }

    /// The file handle `fh` was released (its last close): owners that
    /// locked through it and no close has named since (open-file-description
    /// locks) lose their locks on the file.
    pub async fn released(&self, fs: &FileSystem, fh: u64) {
        let Some((ino, owners)) = self.by_fh.lock().remove(&fh) else { return };
        for owner in owners {
            self.closed(fs, ino, owner).await;
        }
    }

    /// The kernel forgot `ino`: no open file uses it, so no lock remains.
    pub fn forget(&self, ino: u64) {
        self.paths.lock().remove(&ino);
    }

    /// Unmount: drops every lock of this mount.
    pub async fn end(&self, fs: &FileSystem) {
        if self.keeper.load(Ordering::Acquire) {
            if let Err(e) = fs.lock_release(self.session, None, None).await {
                tracing::warn!(error = %e, "cannot drop this mount's locks at unmount (meta frees them after the lease)");
            }
        }
    }

    /// Renews the session for the rest of the mount's life, from its first lock.
    fn keep_alive(&self, fs: &FileSystem) {
        if self.keeper.swap(true, Ordering::AcqRel) {
            return;
        }
        let (fs, session) = (fs.clone(), self.session);
        tokio::spawn(async move {
            loop {
                let pause = match fs.lock_keep(session).await {
                    Ok(lease) => (lease / 3).max(Duration::from_millis(50)),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot renew this mount's lock session");
                        Duration::from_millis(500)
                    }
                };
                tokio::time::sleep(pause).await;
            }
        });
    }
}
