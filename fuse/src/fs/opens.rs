//! Opening files: what an open asks meta (a reader, or a status), the
//! per-file state every handle counts on, and passthrough handovers. See
//! docs/architecture.md (FUSE: opens for reading, passthrough).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use curvine_client::{ErrorKind, FileKind, FileReader, FileStatus};
use fuser::{Errno, ReplyOpen};

use super::{errno, CvFuse, OpenFile};
use crate::files::FileState;

/// A reader an open got from meta, and the mount's count of new versions
/// before it asked (`CvFuse::versions`).
pub(super) struct Found {
    pub(super) reader: Arc<FileReader>,
    pub(super) versions: u64,
    /// Found by the lookup before the open (`looked.rs`), not by the open.
    pub(super) looked: bool,
}

/// How an open of an existing file asks meta about it.
pub(super) enum Lookup {
    /// A status (an open for writing).
    Stat,
    /// A reader, which carries the status (an open for reading).
    Reader,
    /// Already asked (the passthrough check opened a reader).
    Found(Found),
}

/// The outcome of trying a passthrough open.
pub(super) enum PtOpen {
    /// Handed to the kernel: the handle and the backing.
    Handed(u64, Arc<fuser::BackingId>),
    /// A normal open, with the reader the check found, if it asked meta.
    Normal(Option<Found>),
}

impl CvFuse {
    /// A handle on `ino`, with the reader of the version its open found.
    pub(super) fn new_fh(&self, ino: u64, write: bool, reader: Option<(u64, Found)>) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let refresh = AtomicBool::new(reader.as_ref().is_some_and(|(_, f)| f.looked));
        let reader = tokio::sync::Mutex::new(reader.map(|(v, f)| (v, f.reader)));
        let first_read = tokio::sync::Mutex::new(());
        self.handles.lock().insert(fh, Arc::new(OpenFile { ino, passthrough: false, write, reader, refresh, first_read }));
        fh
    }

    /// Whether `ino` is open through this mount other than in passthrough
    /// mode, or has changes of this mount's (then it cannot be handed over).
    pub(super) fn busy_for_passthrough(&self, ino: u64) -> bool {
        let open = self.handles.lock().values().any(|h| h.ino == ino && !h.passthrough);
        open || self.state(ino).is_some()
    }

    /// Opens `ino` for reading in passthrough mode when it can be: its
    /// handle and backing, or for a normal open the reader it found (or
    /// was given: `looked`, from the lookup just before).
    pub(super) async fn open_passthrough(&self, ino: u64, path: &str, looked: Option<Found>, reply: &ReplyOpen) -> Result<PtOpen, Errno> {
        let backing = match self.pt.share(ino) {
            Some(b) => b,
            None => {
                if !self.pt.enabled() || self.busy_for_passthrough(ino) {
                    return Ok(PtOpen::Normal(looked));
                }
                let found = match looked {
                    Some(f) => f,
                    None => match self.find_reader(path).await {
                        Ok(f) => f,
                        Err(e) if e.kind() == ErrorKind::NotFound => return Err(errno(&e)),
                        // As for a normal open: its status is enough (a
                        // read will say what is wrong).
                        Err(_) => return Ok(PtOpen::Normal(None)),
                    },
                };
                // A block that fails its crc is read the normal way (over
                // TCP, from a copy the worker checks).
                let file = found.reader.whole_local_file().await.unwrap_or_else(|e| {
                    tracing::debug!(path, error = %e, "not handing a file to the kernel");
                    None
                });
                let Some(file) = file else { return Ok(PtOpen::Normal(Some(found))) };
                // A change through this mount since the reader was found
                // (a write open and close meanwhile) makes it stale.
                let busy = || self.busy_for_passthrough(ino) || !self.current(&found);
                let made = self.pt.register(ino, busy, || reply.open_backing(&*file));
                match made {
                    Ok(Some(b)) => b,
                    Ok(None) => return Ok(PtOpen::Normal(Some(found))),
                    Err(e) => {
                        // Not allowed here (no CAP_SYS_ADMIN in the initial
                        // namespace) or not supported after all: stop trying.
                        tracing::warn!(error = %e, "FUSE passthrough refused by the kernel; reads go through the daemon");
                        self.pt.set_enabled(false);
                        return Ok(PtOpen::Normal(Some(found)));
                    }
                }
            }
        };
        Ok(PtOpen::Handed(self.new_passthrough_fh(ino), backing))
    }

    /// Meta's `open` of `path`: its status and block locations in one call,
    /// so a read open asks meta once (a stat, then an open at the first
    /// read, were two calls; for a small file, half its cost).
    pub(super) async fn find_reader(&self, path: &str) -> curvine_client::Result<Found> {
        let versions = self.versions.load(Ordering::Acquire);
        let reader = self.fs.open(path).await?;
        Ok(Found { reader: Arc::new(reader), versions, looked: false })
    }

    pub(super) fn new_passthrough_fh(&self, ino: u64) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let (reader, refresh) = (tokio::sync::Mutex::new(None), AtomicBool::new(false));
        let first_read = tokio::sync::Mutex::new(());
        self.handles.lock().insert(fh, Arc::new(OpenFile { ino, passthrough: true, write: false, reader, refresh, first_read }));
        fh
    }

    /// Registers an open handle on `ino` (its state created if needed).
    pub(super) fn open_state(&self, ino: u64, size: u64, mode: u32) -> Arc<tokio::sync::Mutex<FileState>> {
        self.state_from(ino, size, mode, true).expect("made from a current status")
    }

    /// `ino`'s state, made with `size` and `mode` if it has none — unless
    /// they come from a stale answer (`current` false): then `None`.
    /// Checked under the table's lock, since a new version of the file
    /// can only be made through its state in the table.
    fn state_from(&self, ino: u64, size: u64, mode: u32, current: bool) -> Option<Arc<tokio::sync::Mutex<FileState>>> {
        let mut files = self.files.lock();
        if let Some(s) = files.get(&ino) {
            return Some(s.clone());
        }
        if !current {
            return None;
        }
        let s = Arc::new(tokio::sync::Mutex::new(FileState::new(size, mode, self.versions.clone())));
        files.insert(ino, s.clone());
        Some(s)
    }

    /// Locks `s`, taken from `files` for `ino`; `None` when its last holder
    /// (a last close, a truncate) dropped it from `files` while this waited:
    /// a handle counted on it would be on a state nobody else finds. The
    /// caller then takes the state again, after a fresh stat (the holder
    /// may have saved a new version).
    pub(super) async fn lock_if_current(&self, ino: u64, s: Arc<tokio::sync::Mutex<FileState>>) -> Option<tokio::sync::OwnedMutexGuard<FileState>> {
        let guard = s.clone().lock_owned().await;
        self.files.lock().get(&ino).is_some_and(|cur| Arc::ptr_eq(cur, &s)).then_some(guard)
    }

    /// Drops `ino`'s state `s` from `files`. Called with `s` locked, so an
    /// open waiting for the lock sees it gone (`lock_if_current`).
    pub(super) fn drop_state(&self, ino: u64, s: &Arc<tokio::sync::Mutex<FileState>>) {
        let mut files = self.files.lock();
        if files.get(&ino).is_some_and(|cur| Arc::ptr_eq(cur, s)) {
            files.remove(&ino);
        }
    }

    /// The state of the file `ino` at `path` (made from meta's status if it
    /// has none), locked, and that status. Started over when the state was
    /// dropped from the table while this waited for its lock (a last close
    /// or a truncate finished meanwhile: the file may be a new version).
    pub(super) async fn locked_file_state(
        &self,
        ino: u64,
        path: &str,
    ) -> Result<(FileStatus, Arc<tokio::sync::Mutex<FileState>>, tokio::sync::OwnedMutexGuard<FileState>), Errno> {
        let (st, _, state, s) = self.locked_file_state_for(ino, path, Lookup::Stat).await?;
        Ok((st, state, s))
    }

    /// `locked_file_state`, asking meta as `how` says; also the reader found.
    pub(super) async fn locked_file_state_for(
        &self,
        ino: u64,
        path: &str,
        mut how: Lookup,
    ) -> Result<(FileStatus, Option<Found>, Arc<tokio::sync::Mutex<FileState>>, tokio::sync::OwnedMutexGuard<FileState>), Errno> {
        // A reader found before this mount made a new version is not this
        // open's, nor is its status: ask again, twice at most — under a
        // stream of this mount's writes, a stat now and a reader at the
        // first read.
        let mut stale = 0;
        let mut ask_again = || {
            stale += 1;
            if stale < 2 { Lookup::Reader } else { Lookup::Stat }
        };
        loop {
            let found = match std::mem::replace(&mut how, Lookup::Stat) {
                Lookup::Found(f) => Some(f),
                Lookup::Stat => None,
                Lookup::Reader => match self.find_reader(path).await {
                    Ok(f) => Some(f),
                    Err(e) if e.kind() == ErrorKind::NotFound => return Err(errno(&e)),
                    // A directory, or blocks meta cannot place now (no live
                    // worker to load them from the UFS): the status is all
                    // an open needs, and a read will say what is wrong.
                    Err(e) => {
                        tracing::debug!(path, error = %e, "opening without a reader");
                        None
                    }
                },
            };
            let st = match &found {
                Some(f) => f.reader.status().clone(),
                None => self.fs.stat(path).await.map_err(|e| errno(&e))?,
            };
            if st.kind == FileKind::Dir as i32 {
                return Err(Errno::EISDIR);
            }
            let current = found.as_ref().is_none_or(|f| self.current(f));
            let Some(state) = self.state_from(ino, st.len, st.mode, current) else {
                how = ask_again();
                continue;
            };
            let Some(s) = self.lock_if_current(ino, state.clone()).await else {
                if found.is_some() {
                    how = Lookup::Reader;
                }
                continue;
            };
            // The state was there already; a new version may have come
            // since the reader was found.
            if found.as_ref().is_some_and(|f| !self.current(f)) {
                if s.open == 0 && s.is_clean() {
                    self.drop_state(ino, &state);
                }
                drop(s);
                how = ask_again();
                continue;
            }
            return Ok((st, found, state, s));
        }
    }

    /// Whether this mount made no new version of any file since `f` was
    /// asked for.
    pub(super) fn current(&self, f: &Found) -> bool {
        self.versions.load(Ordering::Acquire) == f.versions
    }

    /// Counts a new handle on the existing file `ino` at `path`, truncating
    /// it for O_TRUNC: its status, whether its bytes are unchanged since
    /// its last open here (the kernel may keep its page cache), and for a
    /// read open (`how` not `Stat`) the reader of the version it found.
    pub(super) async fn open_existing(&self, ino: u64, path: &str, flags: i32, how: Lookup) -> Result<(FileStatus, bool, Option<(u64, Found)>), Errno> {
        let (st, found, state, mut s) = self.locked_file_state_for(ino, path, how).await?;
        // The kernel refuses any other kind of open of an inode in
        // passthrough mode (EIO). Checked once this open's state
        // exists (no backing can be made after that, see
        // `Passthrough::register`) and before anything changes.
        if self.pt.has_backing(ino) {
            if s.open == 0 && s.is_clean() {
                self.drop_state(ino, &state);
            }
            return Err(Errno::ETXTBSY);
        }
        s.open += 1;
        s.owner = Some((st.uid, st.gid));
        if flags & libc::O_TRUNC != 0 && flags & libc::O_ACCMODE != libc::O_RDONLY {
            if let Err(e) = s.truncate(&self.fs, path, 0, &self.opts.staging).await {
                s.open -= 1;
                return Err(errno(&e));
            }
        }
        let unchanged = s.is_clean() && self.seen.lock().insert(ino, (st.mtime_ms, st.len)) == Some((st.mtime_ms, st.len));
        // The reader holds the version meta had (current under this lock,
        // see above); it serves this handle's reads unless the mount has
        // unsaved bytes of the file (read from the mount's copy).
        let reader = found.filter(|_| s.is_clean()).map(|f| (s.version, f));
        Ok((st, unchanged, reader))
    }
}
