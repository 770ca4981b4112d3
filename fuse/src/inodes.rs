//! FUSE inode numbers for Curvine paths. Numbers are handed out by this
//! daemon (meta's ids change when a file is rewritten, and the kernel needs
//! one number per name for as long as it remembers it): a node is its
//! parent and its name, so a rename moves a whole subtree by changing one
//! node. A node lives until the kernel forgets every lookup of it.

use std::collections::HashMap;

use parking_lot::Mutex;

pub const ROOT: u64 = 1;

struct Node {
    parent: u64,
    name: String,
    lookups: u64,
}

#[derive(Default)]
struct Table {
    nodes: HashMap<u64, Node>,
    by_name: HashMap<(u64, String), u64>,
    next: u64,
}

pub struct Inodes {
    /// The Curvine directory the mount shows (`/` or `--subdir`).
    root: String,
    t: Mutex<Table>,
}

impl Inodes {
    pub fn new(root: &str) -> Inodes {
        let root = if root.len() > 1 { root.trim_end_matches('/').to_string() } else { "/".to_string() };
        Inodes { root, t: Mutex::new(Table { next: ROOT + 1, ..Default::default() }) }
    }

    /// The Curvine path of `ino`, or `None` when the kernel asked about a
    /// number it was never given (or already forgot).
    pub fn path(&self, ino: u64) -> Option<String> {
        let t = self.t.lock();
        let mut parts = Vec::new();
        let mut at = ino;
        while at != ROOT {
            let n = t.nodes.get(&at)?;
            parts.push(n.name.as_str());
            at = n.parent;
        }
        let mut p = self.root.clone();
        for name in parts.iter().rev() {
            if !p.ends_with('/') {
                p.push('/');
            }
            p.push_str(name);
        }
        Some(p)
    }

    /// The path of `name` inside directory `parent`.
    pub fn child_path(&self, parent: u64, name: &str) -> Option<String> {
        let dir = self.path(parent)?;
        Some(if dir.ends_with('/') { format!("{dir}{name}") } else { format!("{dir}/{name}") })
    }

    /// The number for `name` in `parent`, counting one more kernel lookup.
    pub fn lookup(&self, parent: u64, name: &str) -> u64 {
        let mut t = self.t.lock();
        if let Some(&ino) = t.by_name.get(&(parent, name.to_string())) {
            if let Some(n) = t.nodes.get_mut(&ino) {
                n.lookups += 1;
            }
            return ino;
        }
        let ino = t.next;
        t.next += 1;
        t.nodes.insert(ino, Node { parent, name: name.to_string(), lookups: 1 });
        t.by_name.insert((parent, name.to_string()), ino);
        ino
    }

    /// The number already given to `name` in `parent`, if any.
    pub fn known(&self, parent: u64, name: &str) -> Option<u64> {
        self.t.lock().by_name.get(&(parent, name.to_string())).copied()
    }

    /// The kernel dropped `n` lookups of `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        let mut t = self.t.lock();
        let gone = match t.nodes.get_mut(&ino) {
            Some(node) => {
                node.lookups = node.lookups.saturating_sub(n);
                node.lookups == 0
            }
            None => false,
        };
        if gone {
            if let Some(node) = t.nodes.remove(&ino) {
                if t.by_name.get(&(node.parent, node.name.clone())) == Some(&ino) {
                    t.by_name.remove(&(node.parent, node.name));
                }
            }
        }
    }

    /// `parent/name` was renamed to `new_parent/new_name`: the node (if
    /// known) follows; a node that was at the destination is detached (its
    /// number stays valid for open files but no name leads to it).
    pub fn rename(&self, parent: u64, name: &str, new_parent: u64, new_name: &str) {
        let mut t = self.t.lock();
        let replaced = t.by_name.remove(&(new_parent, new_name.to_string()));
        if let Some(r) = replaced {
            if let Some(n) = t.nodes.get_mut(&r) {
                n.name = format!("\0replaced-{r}");
            }
        }
        if let Some(ino) = t.by_name.remove(&(parent, name.to_string())) {
            if let Some(n) = t.nodes.get_mut(&ino) {
                n.parent = new_parent;
                n.name = new_name.to_string();
            }
            t.by_name.insert((new_parent, new_name.to_string()), ino);
        }
    }

    /// `parent/name` is gone from the namespace.
    pub fn unlink(&self, parent: u64, name: &str) {
        let mut t = self.t.lock();
        if let Some(ino) = t.by_name.remove(&(parent, name.to_string())) {
            if let Some(n) = t.nodes.get_mut(&ino) {
                n.name = format!("\0unlinked-{ino}");
            }
        }
    }

    /// Points `ino` at another name in the same directory (an open file
    /// that was unlinked lives on under a hidden name).
    pub fn rehome(&self, ino: u64, parent: u64, name: &str) {
        let mut t = self.t.lock();
        let Some(n) = t.nodes.get_mut(&ino) else { return };
        let old = (n.parent, std::mem::replace(&mut n.name, name.to_string()));
        n.parent = parent;
        // The old name is free for a new file now.
        if t.by_name.get(&old) == Some(&ino) {
            t.by_name.remove(&old);
        }
        t.by_name.insert((parent, name.to_string()), ino);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_renames_and_forget() {
        let t = Inodes::new("/data/");
        assert_eq!(t.path(ROOT).unwrap(), "/data");
        let a = t.lookup(ROOT, "a");
        let f = t.lookup(a, "f");
        assert_eq!(t.path(f).unwrap(), "/data/a/f");
        assert_eq!(t.lookup(a, "f"), f, "same name, same number");
        t.rename(ROOT, "a", ROOT, "b");
        assert_eq!(t.path(f).unwrap(), "/data/b/f", "a subtree moves with its directory");
        let g = t.lookup(ROOT, "g");
        t.rename(ROOT, "g", a, "f");
        assert_eq!(t.path(g).unwrap(), "/data/b/f");
        assert_eq!(t.known(a, "f"), Some(g));
        t.forget(g, 1);
        assert!(t.path(g).is_none());
        t.forget(f, 1);
        t.forget(f, 1);
        assert!(t.path(f).is_none());
        assert_eq!(Inodes::new("/").child_path(ROOT, "x").unwrap(), "/x");
        // An open file moved to a hidden name frees its old name at once.
        let j = t.lookup(ROOT, "j");
        t.rehome(j, ROOT, ".hidden-j");
        assert_eq!(t.path(j).unwrap(), "/data/.hidden-j");
        assert_ne!(t.lookup(ROOT, "j"), j, "a new file under the old name is a new inode");
    }
}
