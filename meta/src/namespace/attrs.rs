//! Owners, symbolic links and extended attributes: what a POSIX front end
//! (FUSE) needs beyond files and directories.

use curvine_common::{Error, ErrorKind, Result};

use super::{Ns, Outcome};
use crate::store::{Inode, InodeKind};

/// Longest attribute name, and most bytes of names and values per inode
/// (Linux's own limits for one attribute are 255 and 64 KiB).
pub const XATTR_NAME_MAX: usize = 255;
pub const XATTR_BYTES_MAX: usize = 64 << 10;

/// `SetXattr` flags, as setxattr(2) has them.
pub const XATTR_CREATE: u32 = 1;
pub const XATTR_REPLACE: u32 = 2;

impl Ns<'_> {
    /// Makes `uid`/`gid` the owner of the inode `out` created or changed.
    pub(super) fn own(&mut self, out: Outcome, uid: u32, gid: u32) -> Result<Outcome> {
        let set = |ns: &mut Self, mut i: Inode| -> Result<Inode> {
            i.uid = uid;
            i.gid = gid;
            ns.put_inode(&i)?;
            Ok(i)
        };
        Ok(match out {
            Outcome::Inode(i) => Outcome::Inode(set(self, i)?),
            Outcome::Freed { inodes, blocks, inode: Some(i) } => Outcome::Freed { inodes, blocks, inode: Some(set(self, i)?) },
            other => other,
        })
    }

    pub(super) fn chown(&mut self, p: &str, uid: Option<u32>, gid: Option<u32>, now: i64) -> Result<Outcome> {
        let mut node = self.resolve(p)?;
        if let Some(u) = uid {
            node.uid = u;
        }
        if let Some(g) = gid {
            node.gid = g;
        }
        node.ctime_ms = now;
        self.put_inode(&node)?;
        Ok(Outcome::Inode(node))
    }

    pub(super) fn symlink(&mut self, p: &str, target: &str, now: i64) -> Result<Outcome> {
        if target.is_empty() || target.len() > 4096 {
            return Err(Error::invalid(format!("{p}: a symlink target must have 1 to 4096 bytes")));
        }
        let (mut parent, name) = self.parent_of(p, false, 0o755, now)?;
        if self.child(parent.id, name)?.is_some() {
            return Err(Error::exists(p));
        }
        let mut link = self.new_inode(name, InodeKind::Symlink, 0o777, now)?;
        link.target = target.to_string();
        link.len = target.len() as u64;
        link.complete = true;
        self.link(&mut parent, &link, now)?;
        Ok(Outcome::Inode(link))
    }

    pub(super) fn mknod(&mut self, p: &str, kind: InodeKind, mode: u32, rdev: u64, now: i64) -> Result<Outcome> {
        if !kind.is_special() {
            return Err(Error::invalid(format!("{p}: mknod makes FIFOs, sockets and devices, not {kind:?}")));
        }
        let (mut parent, name) = self.parent_of(p, false, 0o755, now)?;
        if self.child(parent.id, name)?.is_some() {
            return Err(Error::exists(p));
        }
        let mut node = self.new_inode(name, kind, mode & 0o7777, now)?;
        node.rdev = if matches!(kind, InodeKind::CharDev | InodeKind::BlockDev) { rdev } else { 0 };
        node.complete = true;
        self.link(&mut parent, &node, now)?;
        Ok(Outcome::Inode(node))
    }

    /// Sets the ctime of the inode `out` changed.
    pub(super) fn stamp_ctime(&mut self, out: Outcome, now: i64) -> Result<Outcome> {
        Ok(match out {
            Outcome::Inode(mut i) => {
                i.ctime_ms = now;
                self.put_inode(&i)?;
                Outcome::Inode(i)
            }
            other => other,
        })
    }

    /// Sets (`value` Some) or removes (None) attribute `name` of `p`.
    pub(super) fn set_xattr(&mut self, p: &str, name: &str, value: Option<&[u8]>, flags: u32) -> Result<Outcome> {
        check_xattr(p, name, 0)?;
        let mut node = self.resolve(p)?;
        let at = node.xattrs.binary_search_by(|(n, _)| n.as_str().cmp(name));
        match (value, at) {
            (None, Ok(i)) => {
                node.xattrs.remove(i);
            }
            (None, Err(_)) => return Err(Error::new(ErrorKind::NotFound, format!("{p}: no attribute {name}"))),
            (Some(_), Ok(_)) if flags & XATTR_CREATE != 0 => {
                return Err(Error::new(ErrorKind::AlreadyExists, format!("{p}: attribute {name} exists")));
            }
            (Some(_), Err(_)) if flags & XATTR_REPLACE != 0 => {
                return Err(Error::new(ErrorKind::NotFound, format!("{p}: no attribute {name}")));
            }
            (Some(v), Ok(i)) => node.xattrs[i].1 = v.to_vec(),
            (Some(v), Err(i)) => node.xattrs.insert(i, (name.to_string(), v.to_vec())),
        }
        let total: usize = node.xattrs.iter().map(|(n, v)| n.len() + v.len()).sum();
        if total > XATTR_BYTES_MAX {
            return Err(too_large(p));
        }
        self.put_inode(&node)?;
        Ok(Outcome::Inode(node))
    }
}

/// The limits one attribute of `value_len` bytes can be checked against
/// without the inode: its name's length, and that it alone fits the
/// inode's budget. The service checks them before proposing (an oversized
/// value never reaches the Raft log); apply checks the inode's total too.
pub(crate) fn check_xattr(p: &str, name: &str, value_len: usize) -> Result<()> {
    if name.is_empty() || name.len() > XATTR_NAME_MAX {
        return Err(Error::invalid(format!("{p}: attribute name must have 1 to {XATTR_NAME_MAX} bytes")));
    }
    if name.len() + value_len > XATTR_BYTES_MAX {
        return Err(too_large(p));
    }
    Ok(())
}

fn too_large(p: &str) -> Error {
    Error::new(ErrorKind::NoSpace, format!("{p}: extended attributes exceed {XATTR_BYTES_MAX} bytes"))
}
