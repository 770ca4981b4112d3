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

/// Packs the regular files of `dir` (except the meta file) into the archive
/// file `out`, streaming: records of (name length u32, name, length u64,
/// bytes), big-endian. Memory use does not grow with the state's size.
pub fn pack(dir: &Path, out: &Path) -> Result<()> {
    use std::io::Write;
    let tmp = out.with_extension("partial");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?);
    for ent in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let ent = ent.map_err(|e| io(dir, e))?;
        let name = ent.file_name().to_string_lossy().into_owned();
        if name == META_FILE || !ent.file_type().map_err(|e| io(dir, e))?.is_file() {
            continue;
        }
        let mut f = std::fs::File::open(ent.path()).map_err(|e| io(&ent.path(), e))?;
        let len = f.metadata().map_err(|e| io(&ent.path(), e))?.len();
        w.write_all(&(name.len() as u32).to_be_bytes()).map_err(|e| io(&tmp, e))?;
        w.write_all(name.as_bytes()).map_err(|e| io(&tmp, e))?;
        w.write_all(&len.to_be_bytes()).map_err(|e| io(&tmp, e))?;
        let n = std::io::copy(&mut f, &mut w).map_err(|e| io(&ent.path(), e))?;
        if n != len {
            return Err(Error::new(ErrorKind::Io, format!("{}: changed while packing a snapshot", ent.path().display())));
        }
    }
    w.into_inner().map_err(|e| io(&tmp, e.into_error()))?.sync_all().map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, out).map_err(|e| io(out, e))
}

/// Writes the files of an archive read from `r` into `dir` (created),
/// streaming.
pub fn unpack(r: impl std::io::Read, dir: &Path) -> Result<()> {
    use std::io::Read;
    let bad = |why: String| Error::new(ErrorKind::Corrupt, format!("snapshot archive: {why}"));
    let mut r = std::io::BufReader::new(r);
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    loop {
        let mut n = [0u8; 4];
        match r.read_exact(&mut n) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(bad(e.to_string())),
        }
        let name_len = u32::from_be_bytes(n) as usize;
        if name_len == 0 || name_len > 4096 {
            return Err(bad(format!("file name of {name_len} bytes")));
        }
        let mut name = vec![0u8; name_len];
        r.read_exact(&mut name).map_err(|e| bad(e.to_string()))?;
        let name = String::from_utf8(name).map_err(|_| bad("file name is not UTF-8".into()))?;
        if name.contains('/') || name == ".." || name == "." {
            return Err(bad(format!("bad file name {name:?}")));
        }
        let mut l = [0u8; 8];
        r.read_exact(&mut l).map_err(|e| bad(e.to_string()))?;
        let len = u64::from_be_bytes(l);
        let p = dir.join(&name);
        let mut f = std::fs::File::create(&p).map_err(|e| io(&p, e))?;
        let copied = std::io::copy(&mut (&mut r).take(len), &mut f).map_err(|e| io(&p, e))?;
        if copied != len {
            return Err(bad(format!("{name}: {copied} of {len} bytes")));
        }
    }
}

/// The archive file of snapshot directory `dir`, packed on first use.
pub fn archive(dir: &Path) -> Result<PathBuf> {
    let out = dir.with_extension("pack");
    if !out.exists() {
        pack(dir, &out)?;
    }
    Ok(out)
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

/// Writes `dir`'s meta file, durably and last: a directory with a meta file
/// is a complete snapshot (`newest`), also after a power loss.
pub fn write_meta(dir: &Path, meta: &Meta) -> Result<()> {
    let p = dir.join(META_FILE);
    let tmp = dir.join(format!("{META_FILE}.tmp"));
    std::fs::write(&tmp, encode(meta)?).map_err(|e| io(&tmp, e))?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, &p).map_err(|e| io(&p, e))?;
    std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(|e| io(dir, e))
}

/// Makes the files of `dir` and its entries durable. An installed snapshot
/// replaces log entries the leader no longer has: it must be on disk
/// before the member goes on as if it were.
pub fn sync_dir(dir: &Path) -> Result<()> {
    for ent in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let ent = ent.map_err(|e| io(dir, e))?;
        if ent.file_type().map_err(|e| io(dir, e))?.is_file() {
            let p = ent.path();
            std::fs::File::open(&p).and_then(|f| f.sync_all()).map_err(|e| io(&p, e))?;
        }
    }
    std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(|e| io(dir, e))
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
        // One damaged snapshot must not hide the others (nor stop the member).
        let meta: Meta = match decode(&bytes) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(path = %mp.display(), error = %e, "skipping a snapshot whose meta cannot be read");
                continue;
            }
        };
        if best.as_ref().is_none_or(|(_, b)| b.last_log_id < meta.last_log_id) {
            best = Some((ent.path(), meta));
        }
    }
    Ok(best)
}

/// Removes every entry under `root` except `keep` and its archive.
pub fn remove_others(root: &Path, keep: &Path) {
    let pack = keep.with_extension("pack");
    if let Ok(rd) = std::fs::read_dir(root) {
        for ent in rd.flatten() {
            let p = ent.path();
            if p != keep && p != pack {
                if p.is_dir() {
                    let _ = std::fs::remove_dir_all(&p);
                } else {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_snapshot_meta_is_skipped_not_fatal() {
        let t = tempfile::tempdir().unwrap();
        let good = t.path().join("good");
        std::fs::create_dir(&good).unwrap();
        let meta = Meta { last_log_id: None, last_membership: Default::default(), snapshot_id: "1-5-0".into() };
        write_meta(&good, &meta).unwrap();
        sync_dir(&good).unwrap();
        assert!(!good.join(format!("{META_FILE}.tmp")).exists(), "the meta file is written through a temporary");
        let bad = t.path().join("bad");
        std::fs::create_dir(&bad).unwrap();
        std::fs::write(bad.join(META_FILE), [0xffu8; 7]).unwrap();
        let (dir, found) = newest(t.path()).unwrap().expect("the good snapshot");
        assert_eq!((dir, found.snapshot_id), (good, "1-5-0".to_string()));
    }

    #[test]
    fn archives_round_trip_and_damage_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("snap");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("000001.sst"), vec![7u8; 300_000]).unwrap();
        std::fs::write(src.join("CURRENT"), b"MANIFEST-1\n").unwrap();
        std::fs::write(src.join(META_FILE), b"not packed").unwrap();
        let pack = archive(&src).unwrap();
        assert_eq!(pack, t.path().join("snap.pack"));
        let out = t.path().join("out");
        unpack(std::fs::File::open(&pack).unwrap(), &out).unwrap();
        assert_eq!(std::fs::read(out.join("000001.sst")).unwrap(), vec![7u8; 300_000]);
        assert_eq!(std::fs::read(out.join("CURRENT")).unwrap(), b"MANIFEST-1\n");
        assert!(!out.join(META_FILE).exists());

        // A cut-off archive and a path in a name are errors, not partial states.
        let bytes = std::fs::read(&pack).unwrap();
        let err = unpack(&bytes[..bytes.len() - 10], &t.path().join("cut")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
        let mut evil = 6u32.to_be_bytes().to_vec();
        evil.extend_from_slice(b"../etc");
        evil.extend_from_slice(&0u64.to_be_bytes());
        assert_eq!(unpack(&evil[..], &t.path().join("evil")).unwrap_err().kind(), ErrorKind::Corrupt);
    }
}
