//! Start-up recovery of one tier: purge unfinished writes, index every
//! sealed block, delete what an interrupted commit left behind.

use std::collections::HashMap;
use std::path::Path;

use curvine_common::{Error, ErrorKind, Result};

use super::{crc_count, Tier, EXTENT_ALIGN};

/// A sealed block found on disk.
pub(super) struct FoundBlock {
    pub id: u64,
    pub len: u64,
    /// In an extent: its root block and where it starts in the root's file.
    pub at: Option<(u64, u64)>,
}

pub(super) struct Found {
    pub blocks: Vec<FoundBlock>,
    /// Length of every extent file (cut back to its last block's end).
    pub extent_len: HashMap<u64, u64>,
}

#[derive(Default)]
struct Seen {
    data: Option<u64>,
    crc: Option<u64>,
    /// `.at` marker: `Some(None)` when present but unreadable.
    at: Option<Option<(u64, u64, u64)>>,
}

/// Empties `tmp/` and returns every well-formed block in `blocks/`: a data
/// file with a `.crc` of `crc_count(len)` entries, or an `.at` marker with
/// such a `.crc` that points inside an existing extent file. Everything
/// else in `blocks/` that looks like a block file is deleted; an extent
/// file longer than its last block is cut back.
pub(super) fn scan_tier(t: &Tier) -> Result<Found> {
    let tmp = t.dir.join("tmp");
    for entry in read_dir(&tmp)? {
        let path = entry.path();
        tracing::info!(path = %path.display(), "removing unfinished block write");
        let res = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        if let Err(e) = res {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove unfinished block write");
        }
    }

    let blocks = t.dir.join("blocks");
    let mut seen: HashMap<u64, Seen> = HashMap::new();
    for entry in read_dir(&blocks)? {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let (stem, kind) = match (name.strip_suffix(".crc"), name.strip_suffix(".at")) {
            (Some(stem), _) => (stem, 1),
            (_, Some(stem)) => (stem, 2),
            _ => (&*name, 0),
        };
        let Some(id) = stem.parse::<u64>().ok() else {
            tracing::warn!(path = %entry.path().display(), "ignoring unknown file in block directory");
            continue;
        };
        let len = match entry.metadata() {
            Ok(m) if m.is_file() => m.len(),
            _ => {
                tracing::warn!(path = %entry.path().display(), "ignoring non-file in block directory");
                continue;
            }
        };
        let slot = seen.entry(id).or_default();
        match kind {
            0 => slot.data = Some(len),
            1 => slot.crc = Some(len),
            _ => slot.at = Some(read_marker(&entry.path())),
        }
    }

    let crc_ok = |s: &Seen, len: u64| s.crc == Some(crc_count(len) * 4);
    let mut found = Found {
        blocks: Vec::new(),
        extent_len: HashMap::new(),
    };
    // Extent members first: they decide which data files are extents.
    let mut bad = Vec::new();
    for (&id, s) in &seen {
        let Some(at) = s.at else { continue };
        let valid = at.filter(|&(root, base, len)| {
            let file = seen.get(&root).and_then(|r| r.data);
            crc_ok(s, len)
                && base.is_multiple_of(EXTENT_ALIGN)
                && file.is_some_and(|f| f >= base + len)
        });
        match valid {
            Some((root, base, len)) => {
                found.blocks.push(FoundBlock {
                    id,
                    len,
                    at: Some((root, base)),
                });
                let end = found.extent_len.entry(root).or_default();
                *end = (*end).max(base + len);
            }
            None => {
                tracing::warn!(block = id, tier = %t.kind, marker = ?at, "removing extent block with a bad marker or checksum file");
                bad.push(id);
            }
        }
    }
    for id in bad {
        remove(&[t.at_path(id), t.crc_path(id)]);
    }
    for (&root, &end) in &found.extent_len {
        if seen
            .get(&root)
            .and_then(|s| s.data)
            .is_some_and(|len| len > end)
        {
            tracing::info!(root, end, tier = %t.kind, "cutting an extent back to its last block (an append did not commit)");
            if let Err(e) = std::fs::OpenOptions::new()
                .write(true)
                .open(t.block_path(root))
                .and_then(|f| f.set_len(end))
            {
                tracing::warn!(root, error = %e, "cannot cut an extent back");
            }
        }
    }
    for (id, s) in seen {
        if s.at.is_some() || found.extent_len.contains_key(&id) {
            continue; // an extent member (or a bad one, handled), or an extent's file
        }
        match s.data {
            Some(len) if crc_ok(&s, len) => found.blocks.push(FoundBlock { id, len, at: None }),
            None if s.crc.is_none() => {}
            _ => {
                tracing::warn!(
                    block = id,
                    tier = %t.kind,
                    data_len = ?s.data,
                    crc_len = ?s.crc,
                    "removing incomplete block (missing or mismatched checksum file)"
                );
                remove(&[t.block_path(id), t.crc_path(id)]);
            }
        }
    }
    Ok(found)
}

/// `root base len` of an `.at` marker; `None` when it cannot be read.
fn read_marker(path: &Path) -> Option<(u64, u64, u64)> {
    let s = std::fs::read_to_string(path).ok()?;
    let mut it = s.split_whitespace().map(str::parse::<u64>);
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some(Ok(root)), Some(Ok(base)), Some(Ok(len)), None) => Some((root, base, len)),
        _ => None,
    }
}

fn remove(paths: &[std::path::PathBuf]) {
    for p in paths {
        if let Err(e) = std::fs::remove_file(p) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %p.display(), error = %e, "cannot remove incomplete block file");
            }
        }
    }
}

fn read_dir(dir: &Path) -> Result<Vec<std::fs::DirEntry>> {
    let err = |e: std::io::Error| Error::new(ErrorKind::Io, format!("cannot list {}: {e}", dir.display()));
    std::fs::read_dir(dir).map_err(err)?.map(|e| e.map_err(err)).collect()
}
