//! Snapshots are RocksDB checkpoints of the state machine, kept under
//! `DIR/snapshots/<id>/` (newest only) and shipped as a flat archive of
//! (file name, bytes) records.

use std::path::{Path, PathBuf};

use curvine_common::{Error, ErrorKind, Result};
use openraft::SnapshotMeta;

use crate::raft::types::NodeId;
use crate::store::{decode, encode};

pub const META_FILE: &str = "curvine-snapshot.meta";

pub type Meta = SnapshotMeta<NodeId, openraft::BasicNode>;

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::new(ErrorKind::Io, format!("{}: {e}", path.display()))
}

/// A snapshot id safe to use as a directory name.
pub fn dir_name(snapshot_id: &str) -> String {
    snapshot_id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// Packs the regular files of `dir` (except the meta file) into an archive.
pub fn pack(dir: &Path) -> Result<Vec<u8>> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for ent in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let ent = ent.map_err(|e| io(dir, e))?;
        let name = ent.file_name().to_string_lossy().into_owned();
        if name == META_FILE || !ent.file_type().map_err(|e| io(dir, e))?.is_file() {
            continue;
        }
        let bytes = std::fs::read(ent.path()).map_err(|e| io(&ent.path(), e))?;
        files.push((name, bytes));
    }
    encode(&files)
}

/// Writes the files of an archive into `dir` (created).
pub fn unpack(data: &[u8], dir: &Path) -> Result<()> {
    let files: Vec<(String, Vec<u8>)> = decode(data)?;
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    for (name, bytes) in files {
        if name.contains('/') || name == ".." || name == "." {
            return Err(Error::new(ErrorKind::Corrupt, format!("snapshot: bad file name {name:?}")));
        }
        let p = dir.join(&name);
        std::fs::write(&p, bytes).map_err(|e| io(&p, e))?;
    }
    Ok(())
}

/// Copies the regular files of `from` into a new directory `to`.
pub fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| io(to, e))?;
    for ent in std::fs::read_dir(from).map_err(|e| io(from, e))? {
        let ent = ent.map_err(|e| io(from, e))?;
        if ent.file_name() == META_FILE || !ent.file_type().map_err(|e| io(from, e))?.is_file() {
            continue;
        }
        let dst = to.join(ent.file_name());
        std::fs::copy(ent.path(), &dst).map_err(|e| io(&dst, e))?;
    }
    Ok(())
}

pub fn write_meta(dir: &Path, meta: &Meta) -> Result<()> {
    let p = dir.join(META_FILE);
    std::fs::write(&p, encode(meta)?).map_err(|e| io(&p, e))
}

/// The newest complete snapshot under `root`: its directory and meta.
pub fn newest(root: &Path) -> Result<Option<(PathBuf, Meta)>> {
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(root, e)),
    };
    let mut best: Option<(PathBuf, Meta)> = None;
    for ent in rd {
        let ent = ent.map_err(|e| io(root, e))?;
        let mp = ent.path().join(META_FILE);
        let Ok(bytes) = std::fs::read(&mp) else { continue };
        let meta: Meta = decode(&bytes)?;
        if best.as_ref().is_none_or(|(_, b)| b.last_log_id < meta.last_log_id) {
            best = Some((ent.path(), meta));
        }
    }
    Ok(best)
}

/// Removes every entry under `root` except `keep`.
pub fn remove_others(root: &Path, keep: &Path) {
    if let Ok(rd) = std::fs::read_dir(root) {
        for ent in rd.flatten() {
            if ent.path() != keep {
                let _ = std::fs::remove_dir_all(ent.path());
            }
        }
    }
}
