//! FUSE inode numbers for Curvine paths. Numbers are handed out by this
//! daemon (meta's ids change when a file is rewritten, and the kernel needs
//! one number per name for as long as it remembers it): a node is its
//! parent and its name, so a rename moves a whole subtree by changing one
//! node. A node lives until the kernel forgets every lookup of it.
//!
//! A file with hard links is one node under all of its names (the kernel
//! sees one inode, so its attributes and page cache are shared and
//! `st_ino` is equal): the node keeps one name for its path and the others
//! as aliases, and is found by the file's meta id when another of its
//! names is looked up.

use std::collections::HashMap;

use parking_lot::Mutex;

pub const ROOT: u64 = 1;

struct Node {
    parent: u64,
    name: String,
    lookups: u64,
    /// Other names of a hard-linked file.
    aliases: Vec<(u64, String)>,
    /// The meta id of a hard-linked file.
    file: Option<u64>,
}

impl Node {
    fn new(parent: u64, name: &str) -> Node {
        Node { parent, name: name.to_string(), lookups: 1, aliases: Vec::new(), file: None }
    }

    /// Drops the name `(parent, name)`: an alias takes over as the node's
    /// name, or, with none left, the node keeps a name no path leads to
    /// (its number stays valid for open files).
    fn drop_name(&mut self, parent: u64, name: &str, ino: u64, why: &str) {
        if self.parent == parent && self.name == name {
            match self.aliases.pop() {
                Some((p, n)) => (self.parent, self.name) = (p, n),
                None => self.name = format!("\0{why}-{ino}"),
            }
        } else {
            self.aliases.retain(|(p, n)| !(*p == parent && n == name));
        }
    }
}

#[derive(Default)]
struct Table {
    nodes: HashMap<u64, Node>,
    by_name: HashMap<(u64, String), u64>,
    /// Hard-linked files' nodes by meta id.
    by_file: HashMap<u64, u64>,
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
        t.nodes.insert(ino, Node::new(parent, name));
        t.by_name.insert((parent, name.to_string()), ino);
        ino
    }

    /// `lookup` of a name of a file with hard links (meta id `file`): the
    /// node of its other names if the kernel holds one.
    pub fn lookup_linked(&self, parent: u64, name: &str, file: u64) -> u64 {
        let mut t = self.t.lock();
        let key = (parent, name.to_string());
        // A name now leading to another file (rewritten or replaced by
        // another client) leaves the node it led to.
        if let Some(stale) = t.by_name.get(&key).copied().filter(|i| t.nodes.get(i).is_some_and(|n| n.file.is_some_and(|f| f != file))) {
            t.by_name.remove(&key);
            if let Some(n) = t.nodes.get_mut(&stale) {
                n.drop_name(parent, name, stale, "replaced");
            }
        }
        let ino = match (t.by_name.get(&key).copied(), t.by_file.get(&file).copied()) {
            (Some(ino), _) => ino,
            (None, Some(ino)) if t.nodes.contains_key(&ino) => {
                // The name just looked up exists: it becomes the one the
                // node's path uses (the old one may be gone elsewhere).
                let n = t.nodes.get_mut(&ino).expect("checked");
                let old = (std::mem::replace(&mut n.parent, parent), std::mem::replace(&mut n.name, name.to_string()));
                n.aliases.push(old);
                t.by_name.insert(key, ino);
                ino
            }
            (None, _) => {
                let ino = t.next;
                t.next += 1;
                t.nodes.insert(ino, Node { lookups: 0, ..Node::new(parent, name) });
                t.by_name.insert(key, ino);
                ino
            }
        };
        let n = t.nodes.get_mut(&ino).expect("present");
        n.lookups += 1;
        if n.file.is_none() {
            n.file = Some(file);
        }
        t.by_file.entry(file).or_insert(ino);
        ino
    }

    /// `link(2)` made `new_parent/new_name` a name of `ino` (meta id
    /// `file`); the kernel counts the answer as a lookup.
    pub fn link(&self, ino: u64, new_parent: u64, new_name: &str, file: u64) -> Option<u64> {
        let mut t = self.t.lock();
        let n = t.nodes.get_mut(&ino)?;
        n.lookups += 1;
        n.file = Some(file);
        n.aliases.push((new_parent, new_name.to_string()));
        t.by_name.insert((new_parent, new_name.to_string()), ino);
        t.by_file.insert(file, ino);
        Some(ino)
    }

    /// The number already given to `name` in `parent`, if any.
    pub fn known(&self, parent: u64, name: &str) -> Option<u64> {
        self.t.lock().by_name.get(&(parent, name.to_string())).copied()
    }

    /// Drops `n` of the kernel's lookups of `ino`; true when that was the
    /// last (the number is free: no open file or cached entry uses it).
    pub fn forget(&self, ino: u64, n: u64) -> bool {
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
                for key in std::iter::once((node.parent, node.name)).chain(node.aliases) {
                    if t.by_name.get(&key) == Some(&ino) {
                        t.by_name.remove(&key);
                    }
                }
                if let Some(f) = node.file {
                    if t.by_file.get(&f) == Some(&ino) {
                        t.by_file.remove(&f);
                    }
                }
            }
        }
        gone
    }

    /// `parent/name` was renamed to `new_parent/new_name`: the node (if
    /// known) follows; a node that was at the destination is detached (its
    /// number stays valid for open files but no name leads to it).
    pub fn rename(&self, parent: u64, name: &str, new_parent: u64, new_name: &str) {
        let mut t = self.t.lock();
        let replaced = t.by_name.remove(&(new_parent, new_name.to_string()));
        if let Some(r) = replaced {
            if let Some(n) = t.nodes.get_mut(&r) {
                n.drop_name(new_parent, new_name, r, "replaced");
            }
        }
        if let Some(ino) = t.by_name.remove(&(parent, name.to_string())) {
            if let Some(n) = t.nodes.get_mut(&ino) {
                if n.parent == parent && n.name == name {
                    n.parent = new_parent;
                    n.name = new_name.to_string();
                } else if let Some(a) = n.aliases.iter_mut().find(|(p, x)| *p == parent && x == name) {
                    *a = (new_parent, new_name.to_string());
                }
            }
            t.by_name.insert((new_parent, new_name.to_string()), ino);
        }
    }

    /// `parent/name` is gone from the namespace.
    pub fn unlink(&self, parent: u64, name: &str) {
        let mut t = self.t.lock();
        if let Some(ino) = t.by_name.remove(&(parent, name.to_string())) {
            if let Some(n) = t.nodes.get_mut(&ino) {
                n.drop_name(parent, name, ino, "unlinked");
            }
        }
    }

    /// `ino`'s name `name` (in whichever directory it has it) is gone: the
    /// hidden name of an unlinked file, removed at its last close. Its other
    /// names (hard links) keep leading to it.
    pub fn unlink_name_of(&self, ino: u64, name: &str) {
        let parent = {
            let t = self.t.lock();
            let Some(n) = t.nodes.get(&ino) else { return };
            if n.name == name {
                n.parent
            } else {
                match n.aliases.iter().find(|(_, x)| x == name) {
                    Some((p, _)) => *p,
                    None => return,
                }
            }
        };
        self.unlink(parent, name);
    }

    /// The name `parent/name` of `ino` became `parent/new_name` (an open
    /// file that was unlinked lives on under a hidden name); the old name is
    /// free for a new file at once.
    pub fn rehome(&self, ino: u64, parent: u64, name: &str, new_name: &str) {
        let mut t = self.t.lock();
        let Some(n) = t.nodes.get_mut(&ino) else { return };
        if n.parent == parent && n.name == name {
            n.name = new_name.to_string();
        } else if let Some(a) = n.aliases.iter_mut().find(|(p, x)| *p == parent && x == name) {
            a.1 = new_name.to_string();
        } else {
            return;
        }
        let old = (parent, name.to_string());
        if t.by_name.get(&old) == Some(&ino) {
            t.by_name.remove(&old);
        }
        t.by_name.insert((parent, new_name.to_string()), ino);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hidden_name_removed_at_last_close_leaves_the_other_names() {
        let i = Inodes::new("/");
        let dir = i.lookup(ROOT, "d");
        let ino = i.lookup_linked(dir, "a", 7);
        assert_eq!(i.link(ino, dir, "b", 7), Some(ino));
        // `a` unlinked while open: it lives on hidden, then goes at the last close.
        i.rehome(ino, dir, "a", ".hidden");
        assert_eq!(i.path(ino).as_deref(), Some("/d/.hidden"));
        i.unlink_name_of(ino, ".hidden");
        assert_eq!(i.path(ino).as_deref(), Some("/d/b"), "the other name leads to the file");
        assert_eq!(i.known(dir, ".hidden"), None);
    }

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
        t.rehome(j, ROOT, "j", ".hidden-j");
        assert_eq!(t.path(j).unwrap(), "/data/.hidden-j");
        assert_ne!(t.lookup(ROOT, "j"), j, "a new file under the old name is a new inode");
    }

    #[test]
    fn hard_links_are_one_node_under_every_name() {
        let t = Inodes::new("/");
        let d = t.lookup(ROOT, "d");
        let a = t.lookup(ROOT, "a");
        // link(2) of /a as /d/b, then a lookup of a third name found by meta id.
        assert_eq!(t.link(a, d, "b", 42), Some(a));
        assert_eq!(t.lookup_linked(ROOT, "c", 42), a);
        assert_eq!(t.known(d, "b"), Some(a));
        assert_eq!(t.path(a).unwrap(), "/c", "the name looked up last is the node's path");
        // Unlinking the name the path uses: another name takes over.
        t.unlink(ROOT, "c");
        assert_eq!(t.known(ROOT, "c"), None);
        assert!(["/d/b", "/a"].contains(&t.path(a).unwrap().as_str()));
        // Renaming an alias moves that name only.
        t.rename(d, "b", ROOT, "b2");
        assert_eq!(t.known(ROOT, "b2"), Some(a));
        assert_eq!(t.known(d, "b"), None);
        // Renaming another file over one name leaves the node its other name.
        let x = t.lookup(ROOT, "x");
        t.rename(ROOT, "x", ROOT, "b2");
        assert_eq!(t.known(ROOT, "b2"), Some(x));
        assert_eq!(t.path(a).unwrap(), "/a");
        // A name found leading to another file leaves the node.
        t.link(a, ROOT, "e", 42);
        assert_ne!(t.lookup_linked(ROOT, "e", 43), a);
        assert_eq!((t.known(ROOT, "e").is_some(), t.path(a).unwrap().as_str()), (true, "/a"));
        // Hiding one name of an open linked file keeps the others.
        let k = t.lookup(ROOT, "k");
        t.link(k, ROOT, "k2", 9);
        t.rehome(k, ROOT, "k2", ".hidden-k2");
        assert_eq!((t.known(ROOT, "k"), t.known(ROOT, "k2"), t.known(ROOT, ".hidden-k2")), (Some(k), None, Some(k)));
        assert_eq!(t.path(k).unwrap(), "/k");
        // Forgetting the node frees all of its names and its file id.
        let g = t.lookup(ROOT, "g");
        t.link(g, ROOT, "h", 7);
        t.forget(g, 2);
        assert_eq!((t.known(ROOT, "g"), t.known(ROOT, "h")), (None, None));
        assert_ne!(t.lookup_linked(ROOT, "h", 7), g);
    }
}
