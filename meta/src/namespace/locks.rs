//! Cluster-wide record locks, kept in the state machine so that every client
//! of the cluster (every FUSE mount, on any host) sees the same locks and a
//! new leader knows them all.
//!
//! - Semantics are fcntl's (POSIX record locks): a lock covers bytes
//!   `[start, end]` of a file; read locks share, a write lock excludes; one owner's
//!   locks never conflict with each other, and a new lock of an owner
//!   replaces (splitting where needed) that owner's locks on the range.
//!   flock(2) arrives from the kernel as a whole-file lock whose owner is
//!   the open file, so it behaves as flock between clients; as on Linux NFS,
//!   flock and fcntl locks of one file do see each other.
//! - An owner is `(session, owner)`: `session` names one client process (a
//!   mount), `owner` the kernel's lock owner in it. A session that stops
//!   renewing its lease loses its locks (the leader proposes
//!   `ReleaseLocks`, see `service/locks`), so a dead mount does not hold a
//!   file forever.
//! - Locks are keyed by path, not inode id: meta gives a file a new id when
//!   it is rewritten (a FUSE mount saves a changed file that way), and a
//!   lock must outlive that. So, unlike POSIX, a lock does not follow a
//!   rename, and the names of a hard-linked file lock separately.
//! - Storage, in `CF_SYS`: `lock:<path>` holds the file's locks; an index
//!   `lsess:<session><path>` lets a session's locks be found without a scan
//!   of every file.

use std::collections::BTreeSet;

use curvine_common::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};

use super::{Ns, Outcome};
#[cfg(test)]
use super::MetaCommand;
use crate::store::{decode, encode, id_key, Txn, CF_SYS};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockKind {
    Read,
    Write,
}

/// Who holds a lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockOwner {
    pub session: u64,
    pub owner: u64,
    /// For F_GETLK's answer only.
    pub pid: u32,
}

/// One held lock on bytes `[start, end]` (`end` = `u64::MAX`: to the end of
/// the file, however long it grows).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRec {
    pub holder: LockOwner,
    pub kind: LockKind,
    pub start: u64,
    pub end: u64,
}

impl LockRec {
    fn same_owner(&self, o: &LockOwner) -> bool {
        self.holder.session == o.session && self.holder.owner == o.owner
    }

    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start <= end && start <= self.end
    }

    /// Whether this lock stands in the way of `who` taking `kind` on the range.
    pub fn blocks(&self, who: &LockOwner, kind: LockKind, start: u64, end: u64) -> bool {
        !self.same_owner(who) && self.overlaps(start, end) && (self.kind == LockKind::Write || kind == LockKind::Write)
    }
}

const FILE_PREFIX: &[u8] = b"lock:";
const SESSION_PREFIX: &[u8] = b"lsess:";

fn file_key(file: &str) -> Vec<u8> {
    [FILE_PREFIX, file.as_bytes()].concat()
}

fn session_key(session: u64, file: &str) -> Vec<u8> {
    [SESSION_PREFIX, &id_key(session), file.as_bytes()].concat()
}

fn load(txn: &Txn, file: &str) -> Result<Vec<LockRec>> {
    txn.get(CF_SYS, &file_key(file))?.map(|v| decode(&v)).transpose().map(Option::unwrap_or_default)
}

/// Writes `file`'s locks and keeps the session index in step with them.
fn save(txn: &mut Txn, file: &str, before: &[LockRec], after: Vec<LockRec>) -> Result<()> {
    let sessions = |v: &[LockRec]| v.iter().map(|l| l.holder.session).collect::<BTreeSet<_>>();
    let (old, new) = (sessions(before), sessions(&after));
    for s in old.difference(&new) {
        txn.delete(CF_SYS, session_key(*s, file));
    }
    for s in new.difference(&old) {
        txn.put(CF_SYS, session_key(*s, file), Vec::new());
    }
    if after.is_empty() {
        txn.delete(CF_SYS, file_key(file));
    } else {
        txn.put(CF_SYS, file_key(file), encode(&after)?);
    }
    Ok(())
}

pub fn conflict_error(file: &str, l: &LockRec) -> Error {
    let end = if l.end == u64::MAX { "EOF".to_string() } else { l.end.to_string() };
    Error::new(
        ErrorKind::WouldBlock,
        format!("{file}: bytes {}..{end} are locked by another owner (pid {}, {:?})", l.start, l.holder.pid, l.kind),
    )
}

/// `SetLock`: takes (`kind` Some) or drops (None) `who`'s lock on
/// `[start, end]` of `file`, all or nothing.
pub(crate) fn set(txn: &mut Txn, file: &str, who: LockOwner, kind: Option<LockKind>, start: u64, end: u64) -> Result<Outcome> {
    if start > end {
        return Err(Error::invalid(format!("lock range {start}..{end} is empty")));
    }
    // An unlock needs no file: the one it names may be gone (deleted by
    // another client while locked), and its records must still go.
    if kind.is_some() {
        Ns { txn: &mut *txn }.resolve(file)?;
    }
    let before = load(txn, file)?;
    if let Some(k) = kind {
        if let Some(l) = before.iter().find(|l| l.blocks(&who, k, start, end)) {
            return Err(conflict_error(file, l));
        }
    }
    let mut after = Vec::with_capacity(before.len() + 2);
    for l in &before {
        if !l.same_owner(&who) || !l.overlaps(start, end) {
            after.push(*l);
            continue;
        }
        // The part of the owner's old lock outside the range stays.
        if l.start < start {
            after.push(LockRec { end: start - 1, ..*l });
        }
        if l.end > end {
            after.push(LockRec { start: end + 1, ..*l });
        }
    }
    if let Some(kind) = kind {
        after.push(LockRec { holder: who, kind, start, end });
    }
    save(txn, file, &before, after)?;
    Ok(Outcome::None)
}

/// `ReleaseLocks`: drops `session`'s locks, on `file` only and/or of
/// `owner` only when given.
pub(crate) fn release(txn: &mut Txn, session: u64, file: Option<&str>, owner: Option<u64>) -> Result<Outcome> {
    let files: Vec<String> = match file {
        Some(f) => vec![f.to_string()],
        None => {
            let prefix = [SESSION_PREFIX, &id_key(session)].concat();
            txn.scan_prefix(CF_SYS, &prefix)?
                .into_iter()
                .filter_map(|(k, _)| k.get(prefix.len()..).and_then(|b| String::from_utf8(b.to_vec()).ok()))
                .collect()
        }
    };
    for f in files {
        let before = load(txn, &f)?;
        let after: Vec<LockRec> = before
            .iter()
            .filter(|l| !(l.holder.session == session && owner.is_none_or(|o| l.holder.owner == o)))
            .copied()
            .collect();
        if after.len() != before.len() {
            save(txn, &f, &before, after)?;
        }
    }
    Ok(Outcome::None)
}

/// F_GETLK: the first lock that would stop `who` taking `kind` on the range.
pub fn conflicting(db: &rocksdb::DB, file: &str, who: &LockOwner, kind: LockKind, start: u64, end: u64) -> Result<Option<LockRec>> {
    let v: Vec<LockRec> = crate::store::get(db, CF_SYS, &file_key(file))?.map(|v| decode(&v)).transpose()?.unwrap_or_default();
    Ok(v.into_iter().find(|l| l.blocks(who, kind, start, end)))
}

/// Sessions holding at least one lock.
pub fn sessions(db: &rocksdb::DB) -> Result<BTreeSet<u64>> {
    Ok(crate::store::scan_prefix(db, CF_SYS, SESSION_PREFIX)?
        .into_iter()
        .filter_map(|(k, _)| k.get(SESSION_PREFIX.len()..SESSION_PREFIX.len() + 8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespace::tests::T;

    /// Lock tests' additions to the namespace tests' harness.
    trait Locks {
        fn ok(&self, cmd: MetaCommand);
        fn file(&self, p: &'static str) -> &'static str;
        fn conflict(&self, f: &str, w: LockOwner, kind: LockKind, start: u64, end: u64) -> Option<LockRec>;
    }

    impl Locks for T {
        fn ok(&self, cmd: MetaCommand) {
            self.run(cmd).unwrap();
        }

        fn file(&self, p: &'static str) -> &'static str {
            let c = MetaCommand::Create {
                path: p.into(),
                overwrite: false,
                parents: false,
                block_size: 10,
                replication: 1,
                mode: 0o644,
                now_ms: 1,
            };
            self.ok(c);
            p
        }

        fn conflict(&self, f: &str, w: LockOwner, kind: LockKind, start: u64, end: u64) -> Option<LockRec> {
            conflicting(&self.store.db(), f, &w, kind, start, end).unwrap()
        }
    }

    fn who(session: u64, owner: u64) -> LockOwner {
        LockOwner { session, owner, pid: owner as u32 }
    }

    fn lock(file: &str, w: LockOwner, kind: Option<LockKind>, start: u64, end: u64) -> MetaCommand {
        MetaCommand::SetLock { file: file.into(), who: w, kind, start, end }
    }

    use LockKind::{Read, Write};

    #[test]
    fn record_locks_follow_fcntl() {
        let t = T::new();
        let f = t.file("/f");
        let (a, b) = (who(1, 10), who(2, 20));
        // Read locks share; a write lock of another owner is refused.
        t.ok(lock(f, a, Some(Read), 0, 99));
        t.ok(lock(f, b, Some(Read), 50, 149));
        assert_eq!(t.kind(lock(f, b, Some(Write), 0, 9)), ErrorKind::WouldBlock);
        // Beyond a's range b may write-lock, to the end of the file.
        t.ok(lock(f, b, Some(Write), 200, u64::MAX));
        assert_eq!(t.kind(lock(f, a, Some(Read), 1000, 1000)), ErrorKind::WouldBlock, "to EOF covers it");
        // One owner's locks never conflict: a upgrades part of its range
        // (b's read lock on 50..149 is not in 0..9).
        t.ok(lock(f, a, Some(Write), 0, 9));
        let found = t.conflict(f, b, Read, 0, 20).expect("a's write lock");
        assert_eq!((found.start, found.end, found.kind, found.holder.pid), (0, 9, Write, 10));
        assert_eq!(t.conflict(f, a, Write, 0, 49), None, "own locks are no conflict");
        // Unlocking pieces splits a's read lock.
        t.ok(lock(f, a, None, 0, 9));
        t.ok(lock(f, a, None, 20, 29));
        assert!(t.conflict(f, b, Write, 10, 19).is_some(), "10..19 still read-locked");
        assert_eq!(t.conflict(f, b, Write, 20, 29), None, "20..29 unlocked");
        assert_eq!(t.conflict(f, b, Write, 0, 9), None);
        assert!(t.conflict(f, who(3, 30), Write, 30, 49).is_some(), "30..99 still a's");
        // A failed command changes nothing.
        assert_eq!(t.kind(lock(f, b, Some(Write), 0, 1000)), ErrorKind::WouldBlock);
        assert_eq!(t.conflict(f, a, Read, 0, 9), None, "b's refused lock was not taken");
        assert_eq!(t.kind(lock(f, a, Some(Read), 5, 1)), ErrorKind::InvalidArgument);
        assert_eq!(t.kind(lock("/nope", a, Some(Read), 0, 1)), ErrorKind::NotFound);
        // A file deleted while locked can still be unlocked.
        let g = t.file("/g");
        t.ok(lock(g, a, Some(Write), 0, 9));
        t.ok(MetaCommand::Delete { path: g.into(), recursive: false, now_ms: 5 });
        assert!(conflicting(&t.store.db(), g, &b, Write, 0, 9).unwrap().is_some());
        t.ok(lock(g, a, None, 0, u64::MAX));
        assert_eq!(conflicting(&t.store.db(), g, &b, Write, 0, 9).unwrap(), None, "the deleted file's lock went");
    }

    #[test]
    fn sessions_and_owners_release_their_locks() {
        let t = T::new();
        let (f, g) = (t.file("/f"), t.file("/g"));
        let (a1, a2, b) = (who(1, 10), who(1, 11), who(2, 20));
        t.ok(lock(f, a1, Some(Write), 0, 9));
        t.ok(lock(f, a2, Some(Write), 10, 19));
        t.ok(lock(g, a1, Some(Write), 0, u64::MAX));
        t.ok(lock(f, b, Some(Read), 100, 199));
        assert_eq!(t.kind(lock(g, b, Some(Read), 0, 0)), ErrorKind::WouldBlock);
        assert_eq!(sessions(&t.store.db()).unwrap().into_iter().collect::<Vec<_>>(), vec![1, 2]);
        // One owner on one file (a close).
        t.ok(MetaCommand::ReleaseLocks { session: 1, file: Some(f.into()), owner: Some(10) });
        assert_eq!(t.conflict(f, b, Write, 0, 9), None);
        assert!(t.conflict(f, b, Write, 10, 19).is_some(), "a2's lock stays");
        assert!(t.conflict(g, b, Write, 0, 0).is_some(), "a1's lock on g stays");
        // The whole session (a dead mount).
        t.ok(MetaCommand::ReleaseLocks { session: 1, file: None, owner: None });
        assert_eq!(t.conflict(f, b, Write, 0, u64::MAX), None);
        assert_eq!(t.conflict(g, b, Write, 0, u64::MAX), None);
        assert_eq!(t.conflict(f, who(3, 1), Read, 0, u64::MAX), None, "b's read lock does not block reads");
        assert!(t.conflict(f, who(3, 1), Write, 150, 150).is_some(), "but it blocks writes");
        assert_eq!(sessions(&t.store.db()).unwrap().into_iter().collect::<Vec<_>>(), vec![2]);
        t.ok(MetaCommand::ReleaseLocks { session: 2, file: None, owner: None });
        assert!(sessions(&t.store.db()).unwrap().is_empty());
        assert_eq!(t.conflict(f, who(3, 1), Write, 0, u64::MAX), None);
    }
}
