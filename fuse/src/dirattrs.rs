//! Attributes of directories, kept for the attribute timeout.
//!
//! The kernel drops a directory's cached attributes whenever an entry is
//! created in it and, with `default_permissions`, asks for them again at the
//! next path walk through it: without this table every create or unlink in
//! a directory costs one more meta call. A create, unlink, mkdir or rmdir
//! made through this mount changes only the directory's mtime and ctime
//! (and its link count, for a subdirectory), which meta stamps with a time
//! it returns (a new entry's own time; a delete's answer carries the
//! directory's time and link count after it), so the kept copy takes them. Any other change
//! through this mount drops the copy; changes from other clients show after
//! the timeout, as with the kernel's own attribute cache. A read from meta
//! is kept only if no change went through this mount while it was on its
//! way (a generation counter), so a stale read cannot land after a change.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use fuser::FileAttr;
use parking_lot::Mutex;

/// Expired entries are swept once the table holds this many.
const SWEEP_AT: usize = 10_000;

pub struct DirAttrs {
    ttl: Duration,
    map: Mutex<HashMap<u64, (FileAttr, Instant)>>,
    /// Bumped by every change; see `generation`.
    gen: AtomicU64,
}

impl DirAttrs {
    pub fn new(ttl: Duration) -> DirAttrs {
        DirAttrs { ttl, map: Mutex::default(), gen: AtomicU64::new(0) }
    }

    /// The kept attributes of directory `ino`, if still fresh.
    pub fn get(&self, ino: u64) -> Option<FileAttr> {
        let g = self.map.lock();
        g.get(&ino).filter(|(_, until)| Instant::now() < *until).map(|(a, _)| *a)
    }

    /// Taken before reading attributes from meta, handed to `put`.
    pub fn generation(&self) -> u64 {
        self.gen.load(Ordering::Acquire)
    }

    /// Keeps `attr` (of a directory, read from meta after `generation`
    /// returned `gen`), unless something changed since.
    pub fn put(&self, attr: FileAttr, gen: u64) {
        if self.ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut g = self.map.lock();
        if self.gen.load(Ordering::Acquire) != gen {
            return;
        }
        if g.len() >= SWEEP_AT {
            g.retain(|_, (_, until)| now < *until);
        }
        g.insert(attr.ino.0, (attr, now + self.ttl));
    }

    /// An entry made in `dir`, which meta stamped with `at` (the new
    /// entry's own time). `subdirs` is 1 for a directory made (its `..`
    /// link), else 0.
    pub fn changed_in(&self, dir: u64, at: SystemTime, subdirs: i32) {
        self.stamp(dir, at, |n| n.saturating_add_signed(subdirs).max(2));
    }

    /// An entry removed from `dir`: meta's answer said how the directory
    /// was left (`at` its mtime and ctime, `nlink` its links), so no type
    /// this mount believes the entry had is trusted.
    pub fn removed_from(&self, dir: u64, at: SystemTime, nlink: u32) {
        self.stamp(dir, at, |_| nlink.max(2));
    }

    /// Moves the kept times of `dir` to `at` (never back) and its link
    /// count by `links`; a read from meta on its way is not kept.
    fn stamp(&self, dir: u64, at: SystemTime, links: impl FnOnce(u32) -> u32) {
        let mut g = self.map.lock();
        self.gen.fetch_add(1, Ordering::AcqRel);
        if let Some((a, _)) = g.get_mut(&dir) {
            a.mtime = a.mtime.max(at);
            a.ctime = a.ctime.max(at);
            a.nlink = links(a.nlink);
        }
    }

    /// `ino` changed some other way: ask meta next time.
    pub fn forget(&self, ino: u64) {
        let mut g = self.map.lock();
        self.gen.fetch_add(1, Ordering::AcqRel);
        g.remove(&ino);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fuser::{FileType, INodeNo};

    fn dir(ino: u64, t: SystemTime) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size: 0,
            blocks: 0,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: FileType::Directory,
            perm: 0o755,
            nlink: 2,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    #[test]
    fn entries_made_or_removed_move_the_times_and_other_changes_drop_the_copy() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let d = DirAttrs::new(Duration::from_secs(60));
        d.put(dir(7, t0), d.generation());
        let t1 = t0 + Duration::from_millis(5);
        d.changed_in(7, t1, 0);
        let a = d.get(7).unwrap();
        assert_eq!((a.mtime, a.ctime, a.perm, a.nlink), (t1, t1, 0o755, 2));
        // An older time (a create that raced a later one) never goes back.
        d.changed_in(7, t0, 0);
        assert_eq!(d.get(7).unwrap().mtime, t1);
        // Subdirectories count in the links, as meta counts them.
        d.changed_in(7, t1, 1);
        d.changed_in(7, t1, 1);
        assert_eq!(d.get(7).unwrap().nlink, 4);
        // A removal takes the link count meta gave.
        let t2 = t1 + Duration::from_millis(5);
        d.removed_from(7, t2, 3);
        let a = d.get(7).unwrap();
        assert_eq!((a.mtime, a.ctime, a.nlink), (t2, t2, 3));
        d.removed_from(7, t1, 2);
        assert_eq!((d.get(7).unwrap().mtime, d.get(7).unwrap().nlink), (t2, 2), "times never go back");
        d.changed_in(8, t1, 0); // not kept: nothing to update
        assert!(d.get(8).is_none());
        d.forget(7);
        assert!(d.get(7).is_none());
        // A zero timeout keeps nothing; an expired copy is not returned.
        let off = DirAttrs::new(Duration::ZERO);
        off.put(dir(1, t0), off.generation());
        assert!(off.get(1).is_none());
        let short = DirAttrs::new(Duration::from_millis(1));
        short.put(dir(2, t0), short.generation());
        std::thread::sleep(Duration::from_millis(5));
        assert!(short.get(2).is_none());
        // A read that started before a change is not kept.
        let gen = d.generation();
        d.forget(9);
        d.put(dir(7, t0), gen);
        assert!(d.get(7).is_none(), "a stale read was kept");
    }
}
