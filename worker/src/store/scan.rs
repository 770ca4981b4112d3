//! Start-up recovery of one tier: purge unfinished writes, index every
//! sealed block, delete what an interrupted commit left behind.

use std::collections::HashMap;
use std::path::Path;

use curvine_common::{Error, ErrorKind, Result};

use super::{crc_count, Tier};

/// Empties `tmp/` and returns `(block id, len)` of every well-formed block
/// in `blocks/`: a data file with a `.crc` of `crc_count(len)` entries.
/// Everything else in `blocks/` that looks like a block file is deleted.
pub(super) fn scan_tier(t: &Tier) -> Result<Vec<(u64, u64)>> {
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
    // id -> (data len if present, crc file len if present)
    let mut seen: HashMap<u64, (Option<u64>, Option<u64>)> = HashMap::new();
    for entry in read_dir(&blocks)? {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let (id, is_crc) = match name.strip_suffix(".crc") {
            Some(stem) => (stem.parse::<u64>().ok(), true),
            None => (name.parse::<u64>().ok(), false),
        };
        let Some(id) = id else {
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
        if is_crc {
            slot.1 = Some(len);
        } else {
            slot.0 = Some(len);
        }
    }

    let mut found = Vec::with_capacity(seen.len());
    for (id, (data, crc)) in seen {
        match (data, crc) {
            (Some(len), Some(crc_len)) if crc_len == crc_count(len) * 4 => found.push((id, len)),
            _ => {
                tracing::warn!(
                    block = id,
                    tier = %t.kind,
                    data_len = ?data,
                    crc_len = ?crc,
                    "removing incomplete block (missing or mismatched checksum file)"
                );
                for p in [t.block_path(id), t.crc_path(id)] {
                    if let Err(e) = std::fs::remove_file(&p) {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            tracing::warn!(path = %p.display(), error = %e, "cannot remove incomplete block file");
                        }
                    }
                }
            }
        }
    }
    Ok(found)
}

fn read_dir(dir: &Path) -> Result<Vec<std::fs::DirEntry>> {
    let err = |e: std::io::Error| Error::new(ErrorKind::Io, format!("cannot list {}: {e}", dir.display()));
    std::fs::read_dir(dir).map_err(err)?.map(|e| e.map_err(err)).collect()
}
