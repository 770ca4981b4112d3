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

pub struct MountLocks {
    pub session: u64,
    keeper: AtomicBool,
    /// Paths locked through each inode (until the kernel forgets it).
    paths: Mutex<HashMap<u64, HashSet<String>>>,
    /// Owners with a blocking request waiting: (waiters, closes since). A
    /// waiter whose owner closed the file meanwhile (its process was
    /// killed) gives up instead of taking a lock nobody would release.
    waiting: Mutex<HashMap<u64, (usize, u64)>>,
}

fn random_session() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.finish().max(1)
}

/// Whether the thread `pid` (in this daemon's pid namespace, as FUSE gives
/// it) is gone or has a signal pending that should end its F_SETLKW: a
/// fatal one (the kernel marks a dying process with SIGKILL) or one it
/// catches and does not block, whose handler must run (the `alarm()`
/// timeout idiom). fuser answers the kernel's INTERRUPT with ENOSYS, so a
/// waiting process stays in the kernel until this daemon answers: the
/// wait loop answers EINTR as soon as it sees such a signal. Signals the
/// process ignores are never pending and do not end the wait.
fn interrupted(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return true };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let pending = (field("SigPnd:") | field("ShdPnd:")) & !field("SigBlk:");
    let sigkill = 1u64 << (libc::SIGKILL - 1);
    pending & (sigkill | field("SigCgt:")) != 0
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
        MountLocks { session: random_session(), keeper: AtomicBool::new(false), paths: Mutex::default(), waiting: Mutex::default() }
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
            Some(l) => Ok((l.start, l.end, if l.kind == LockKind::Write { libc::F_WRLCK } else { libc::F_RDLCK }, l.pid)),
            None => Ok((0, 0, libc::F_UNLCK, 0)),
        }
    }

    /// F_SETLK / F_SETLKW (`wait`) / flock.
    #[allow(clippy::too_many_arguments)]
    pub async fn set(&self, fs: &FileSystem, ino: u64, path: &str, owner: u64, pid: u32, typ: i32, start: u64, end: u64, wait: bool) -> Result<(), Errno> {
        let kind = kind_of(typ)?;
        if kind.is_some() {
            self.keep_alive(fs);
            self.paths.lock().entry(ino).or_default().insert(path.to_string());
        }
        if !wait {
            return fs.lock_set(path, self.who(owner, pid), kind, start, end).await.map_err(|e| errno(&e));
        }
        let closes = {
            let mut w = self.waiting.lock();
            let e = w.entry(owner).or_default();
            e.0 += 1;
            e.1
        };
        let res = self.wait_for(fs, path, owner, pid, kind, start, end, closes).await;
        let mut w = self.waiting.lock();
        if let Some(e) = w.get_mut(&owner) {
            e.0 -= 1;
            if e.0 == 0 {
                w.remove(&owner);
            }
        }
        res
    }

    fn closed_since(&self, owner: u64, closes: u64) -> bool {
        self.waiting.lock().get(&owner).is_some_and(|e| e.1 != closes)
    }

    /// F_SETLKW: tries until the lock is had, the request fails otherwise,
    /// or the owner closes the file.
    #[allow(clippy::too_many_arguments)]
    async fn wait_for(&self, fs: &FileSystem, path: &str, owner: u64, pid: u32, kind: Option<LockKind>, start: u64, end: u64, closes: u64) -> Result<(), Errno> {
        let mut step = Duration::from_millis(2);
        loop {
            match fs.lock_set(path, self.who(owner, pid), kind, start, end).await {
                Ok(()) => break,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    tokio::time::sleep(step).await;
                    step = (step * 2).min(MAX_WAIT_STEP);
                    if self.closed_since(owner, closes) || interrupted(pid) {
                        return Err(Errno::EINTR);
                    }
                }
                Err(e) => return Err(errno(&e)),
            }
        }
        if kind.is_some() && self.closed_since(owner, closes) {
            // The owner closed the file while this request waited.
            let _ = fs.lock_set(path, self.who(owner, pid), None, start, end).await;
            return Err(Errno::EINTR);
        }
        Ok(())
    }

    /// The owner closed `ino` (flush: POSIX drops a process's locks on
    /// any close of the file; release of an flock owner): drop its locks.
    pub async fn closed(&self, fs: &FileSystem, ino: u64, owner: u64) {
        if let Some(e) = self.waiting.lock().get_mut(&owner) {
            e.1 += 1;
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
