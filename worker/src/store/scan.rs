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
    /// In an extent: its number and where the block starts in it.
    pub at: Option<(u64, u64)>,
}

pub(super) struct Found {
    pub blocks: Vec<FoundBlock>,
    /// Length of every extent file with blocks.
    pub extent_len: HashMap<u64, u64>,
    /// Above every extent number seen.
    pub next_extent: u64,
}

#[derive(Default)]
struct Seen {
    data: Option<u64>,
    crc: Option<u64>,
    /// `.at` marker: `Some(None)` when present but unreadable.
    at: Option<Option<(u64, u64, u64)>>,
}

/// Empties `tmp/` and returns every well-formed block in `blocks/`: an
/// `.at` marker with a `.crc` of `crc_count(len)` entries that points
/// inside an existing extent file `x<n>`, or else a data file with such a
/// `.crc`. Everything else in `blocks/` that looks like a block or extent
/// file is deleted.
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
    let mut extents: HashMap<u64, u64> = HashMap::new();
    for entry in read_dir(&blocks)? {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let (stem, kind) = match (name.strip_suffix(".crc"), name.strip_suffix(".at"), name.strip_prefix('x')) {
            (Some(stem), _, _) => (stem, 1),
            (_, Some(stem), _) => (stem, 2),
            (_, _, Some(n)) => (n, 3),
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
        if kind == 3 {
            extents.insert(id, len);
            continue;
        }
        let slot = seen.entry(id).or_default();
        match kind {
            0 => slot.data = Some(len),
            1 => slot.crc = Some(len),
            _ => slot.at = Some(read_marker(&entry.path())),
        }
    }

    // Extents of the first extent format (one session's build) were the
    // first block's own file, named by its id: give them their x-name.
    let old: Vec<u64> = seen
        .iter()
        .filter(|(&id, s)| s.data.is_some() && !extents.contains_key(&id) && matches!(s.at, Some(Some((n, 0, _))) if n == id))
        .map(|(&id, _)| id)
        .collect();
    for id in old {
        if std::fs::rename(t.block_path(id), t.extent_path(id)).is_ok() {
            let s = seen.get_mut(&id).expect("listed above");
            extents.insert(id, s.data.take().unwrap_or(0));
        }
    }
    let crc_ok = |s: &Seen, len: u64| s.crc == Some(crc_count(len) * 4);
    let next_extent = extents.keys().max().map_or(1, |n| n + 1);
    let mut found = Found { blocks: Vec::new(), extent_len: HashMap::new(), next_extent };
    for (id, s) in seen {
        if let Some(at) = s.at {
            let valid = at.filter(|&(n, base, len)| {
                crc_ok(&s, len)
                    && base.is_multiple_of(EXTENT_ALIGN)
                    && base.checked_add(len).is_some_and(|end| extents.get(&n).is_some_and(|&f| f >= end))
            });
            if let Some((n, base, len)) = valid {
                found.blocks.push(FoundBlock { id, len, at: Some((n, base)) });
                let end = found.extent_len.entry(n).or_default();
                *end = (*end).max(base + len);
                if s.data.is_some() {
                    // A crash between writing the marker and moving the
                    // block's own file away: the extent has its bytes.
                    remove(&[t.block_path(id)]);
                }
                continue;
            }
            // Not (or no longer) in an extent: judged by its own files.
            tracing::warn!(block = id, tier = %t.kind, marker = ?at, "dropping an extent marker that does not fit");
            remove(&[t.at_path(id)]);
        }
        match s.data {
            Some(len) if crc_ok(&s, len) => found.blocks.push(FoundBlock { id, len, at: None }),
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
    // Bytes past an extent's last block stay: a block that left from its
    // end may still be mapped by a reader, and an append a crash cut short
    // cannot be told from it. They count as the extent's dead bytes.
    for (n, len) in extents {
        match found.extent_len.get_mut(&n) {
            None => {
                tracing::warn!(extent = n, tier = %t.kind, "removing an extent no block is in");
                remove(&[t.extent_path(n)]);
            }
            Some(end) => *end = (*end).max(len),
        }
    }
    Ok(found)
}

/// `n base len` of an `.at` marker; `None` when it cannot be read or
/// `base + len` overflows (every offset check and read adds them: a
/// malformed marker must not wrap around to a valid-looking offset).
fn read_marker(path: &Path) -> Option<(u64, u64, u64)> {
    let s = std::fs::read_to_string(path).ok()?;
    let mut it = s.split_whitespace().map(str::parse::<u64>);
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some(Ok(n)), Some(Ok(base)), Some(Ok(len)), None) => base.checked_add(len).map(|_| (n, base, len)),
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
