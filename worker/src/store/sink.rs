//! A block being written: bytes go to `tmp/<id>` in the chosen tier (or to
//! the end of an extent's file), under a space reservation; commit renames
//! them into `blocks/` (or writes the block's `.at` marker).
//!
//! To ensure correctness: a sink that is dropped without a successful commit
//! (abort, a dropped connection, an error) deletes its tmp files (or cuts
//! the extent file back to where the block began) and releases its
//! reservation, so nothing leaks and nothing partial is ever indexed.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use curvine_common::tier::TierKind;
use curvine_common::{Error, ErrorKind, Result};
use curvine_fabric::frame::CHUNK;
use curvine_fabric::service::BlockSink;

use super::{crc_count, write_at_marker, Inner};

pub(super) struct TierSink {
    inner: Arc<Inner>,
    block_id: u64,
    tier: usize,
    /// Appending to an extent: its number and where this block starts.
    at: Option<(u64, u64)>,
    file: Option<File>,
    /// A second handle on the tmp file for serving appended bytes early.
    reader: Option<Arc<File>>,
    written: u64,
    reserved: u64,
    crcs: Vec<u32>,
    /// Set once the block is sealed; Drop then has nothing to undo.
    sealed: bool,
}

impl TierSink {
    /// Takes over a reservation of `reserved` bytes already made in `tier`
    /// (and, with `at`, the append to that extent `extent_for` marked).
    pub(super) fn create(
        inner: Arc<Inner>,
        block_id: u64,
        tier: usize,
        reserved: u64,
        at: Option<(u64, u64)>,
    ) -> Result<TierSink> {
        let mut sink = TierSink {
            inner,
            block_id,
            tier,
            at,
            file: None,
            reader: None,
            written: 0,
            reserved,
            crcs: Vec::new(),
            sealed: false,
        };
        let t = &sink.inner.tiers[tier];
        let opened = match at {
            Some((n, _)) => std::fs::OpenOptions::new().read(true).write(true).open(t.extent_path(n)),
            None => std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(t.tmp_path(block_id)),
        };
        let file = opened.map_err(|e| sink.io_error(e, "create"))?;
        // Readers use pread only, so sharing the write handle's offset is harmless.
        sink.reader = Some(Arc::new(file.try_clone().map_err(|e| sink.io_error(e, "open"))?));
        sink.file = Some(file);
        Ok(sink)
    }

    /// Maps a disk error; a full disk is `NoSpace`, whatever the accounting says.
    fn io_error(&self, e: std::io::Error, what: &str) -> Error {
        let t = &self.inner.tiers[self.tier];
        if e.raw_os_error() == Some(libc::ENOSPC) || e.kind() == std::io::ErrorKind::StorageFull {
            return Error::new(
                ErrorKind::NoSpace,
                format!(
                    "worker {}: {} tier at {} is full (disk) writing block {}",
                    self.inner.worker_id,
                    t.kind,
                    t.dir.display(),
                    self.block_id
                ),
            );
        }
        Error::new(
            ErrorKind::Io,
            format!("worker {}: {what} block {} in {}: {e}", self.inner.worker_id, self.block_id, t.dir.display()),
        )
    }

    fn seal(&mut self, len: u64) -> Result<()> {
        if len != self.written {
            return Err(Error::invalid(format!(
                "block {}: commit at {len} bytes but {} were written",
                self.block_id, self.written
            )));
        }
        if self.crcs.len() as u64 != crc_count(len) {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!("block {}: {} checksums for {len} bytes", self.block_id, self.crcs.len()),
            ));
        }
        let t = &self.inner.tiers[self.tier];
        let sync = self.inner.sync_on_commit && t.kind != TierKind::Mem;
        if let Some((ext, base)) = self.at {
            // MEM only: nothing to sync. The marker is the commit point.
            self.file = None;
            let raw: Vec<u8> = self.crcs.iter().flat_map(|c| c.to_le_bytes()).collect();
            let tmp_crc = t.tmp_crc_path(self.block_id);
            write_file(&tmp_crc, &raw, false).map_err(|e| self.io_error(e, "write checksums of"))?;
            let crc_path = t.crc_path(self.block_id);
            std::fs::rename(&tmp_crc, &crc_path).map_err(|e| self.io_error(e, "seal"))?;
            if let Err(e) = write_at_marker(t, self.block_id, ext, base, len) {
                let _ = std::fs::remove_file(&crc_path);
                return Err(self.io_error(e, "seal"));
            }
            return Ok(());
        }
        let file = self.file.take().ok_or_else(|| Error::internal("block sink used after commit"))?;
        if sync {
            file.sync_all().map_err(|e| self.io_error(e, "sync"))?;
        }
        drop(file);
        let mut raw = Vec::with_capacity(self.crcs.len() * 4);
        for c in &self.crcs {
            raw.extend_from_slice(&c.to_le_bytes());
        }
        let tmp_crc = t.tmp_crc_path(self.block_id);
        write_file(&tmp_crc, &raw, sync).map_err(|e| self.io_error(e, "write checksums of"))?;
        // The .crc goes first: a data file in blocks/ without its .crc is
        // an interrupted commit and is deleted on start.
        let crc_path = t.crc_path(self.block_id);
        std::fs::rename(&tmp_crc, &crc_path).map_err(|e| self.io_error(e, "seal"))?;
        if let Err(e) = std::fs::rename(t.tmp_path(self.block_id), t.block_path(self.block_id)) {
            let _ = std::fs::remove_file(&crc_path);
            return Err(self.io_error(e, "seal"));
        }
        if sync {
            // The block is in place already; failing the commit now would
            // leave an unindexed block behind, so only warn.
            if let Err(e) = File::open(t.dir.join("blocks")).and_then(|d| d.sync_all()) {
                tracing::warn!(dir = %t.dir.display(), error = %e, "cannot sync block directory");
            }
        }
        Ok(())
    }
}

fn write_file(path: &Path, data: &[u8], sync: bool) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(data)?;
    if sync {
        f.sync_all()?;
    }
    Ok(())
}

impl BlockSink for TierSink {
    fn append(&mut self, offset: u64, data: &[u8], crcs: &[u32]) -> Result<()> {
        if offset != self.written {
            return Err(Error::invalid(format!(
                "block {}: write at offset {offset}, expected {}",
                self.block_id, self.written
            )));
        }
        if data.is_empty() {
            return Ok(());
        }
        if !offset.is_multiple_of(CHUNK) {
            return Err(Error::invalid(format!(
                "block {}: write at {offset} follows a partial chunk; only the last write may end mid-chunk",
                self.block_id
            )));
        }
        if crcs.len() as u64 != crc_count(data.len() as u64) {
            return Err(Error::invalid(format!(
                "block {}: {} checksums for {} bytes",
                self.block_id,
                crcs.len(),
                data.len()
            )));
        }
        let end = self.written + data.len() as u64;
        if end > self.reserved {
            self.inner
                .grow(self.tier, end - self.reserved)
                .map_err(|e| e.context(format!("block {}", self.block_id)))?;
            self.reserved = end;
        }
        let base = self.base();
        let file = self.file.as_mut().ok_or_else(|| Error::internal("block sink used after commit"))?;
        if let Err(e) = file.write_all_at(data, base + offset) {
            return Err(self.io_error(e, "write"));
        }
        self.written = end;
        self.crcs.extend_from_slice(crcs);
        self.inner.metrics.write_bytes.inc_by(data.len() as u64);
        Ok(())
    }

    fn commit(mut self: Box<Self>, len: u64) -> Result<TierKind> {
        let kind = self.tier();
        let _span = tracing::debug_span!("commit", worker = self.inner.worker_id, block = self.block_id, len).entered();
        // On error Drop removes the tmp files and releases the reservation.
        self.seal(len)?;
        let crcs: Arc<[u32]> = std::mem::take(&mut self.crcs).into();
        self.inner.seal(self.block_id, self.tier, self.reserved, len, crcs, self.at);
        self.sealed = true;
        tracing::debug!(tier = %kind, "block committed");
        Ok(kind)
    }

    fn abort(self: Box<Self>) {
        tracing::debug!(worker = self.inner.worker_id, block = self.block_id, "block write aborted");
    }

    fn tier(&self) -> TierKind {
        self.inner.tiers[self.tier].kind
    }

    fn partial(&self) -> Option<Arc<File>> {
        self.reader.clone()
    }

    fn direct(&self) -> Option<Arc<File>> {
        self.reader.clone()
    }

    fn base(&self) -> u64 {
        self.at.map_or(0, |(_, base)| base)
    }

    fn adopt(&mut self, len: u64, crcs: &[u32]) -> Result<()> {
        if self.written != 0 {
            return Err(Error::invalid(format!("block {}: direct write after appends", self.block_id)));
        }
        if crcs.len() as u64 != crc_count(len) {
            return Err(Error::invalid(format!("block {}: {} checksums for {len} bytes", self.block_id, crcs.len())));
        }
        let file = self.file.as_ref().ok_or_else(|| Error::internal("block sink used after commit"))?;
        let on_disk = file.metadata().map_err(|e| self.io_error(e, "stat"))?.len().saturating_sub(self.base());
        if on_disk < len {
            return Err(Error::invalid(format!(
                "block {}: commit at {len} bytes but the file holds {on_disk}",
                self.block_id
            )));
        }
        if len > self.reserved {
            self.inner.grow(self.tier, len - self.reserved).map_err(|e| e.context(format!("block {}", self.block_id)))?;
            self.reserved = len;
        }
        if on_disk > len {
            file.set_len(self.base() + len).map_err(|e| self.io_error(e, "truncate"))?;
        }
        self.written = len;
        self.crcs = crcs.to_vec();
        self.inner.metrics.write_bytes.inc_by(len);
        Ok(())
    }
}

impl Drop for TierSink {
    fn drop(&mut self) {
        if self.sealed {
            return;
        }
        let t = &self.inner.tiers[self.tier];
        if let Some((ext, base)) = self.at {
            // The extent ends where this block began again (a same-host
            // writer may have written past its reservation, too).
            let cut = std::fs::OpenOptions::new().write(true).open(t.extent_path(ext)).and_then(|f| f.set_len(base));
            if let Err(e) = cut {
                tracing::warn!(ext, base, error = %e, "cannot cut an extent back after an aborted append");
            }
        }
        self.file = None;
        for p in [t.tmp_path(self.block_id), t.tmp_crc_path(self.block_id), t.tmp_at_path(self.block_id)] {
            if let Err(e) = std::fs::remove_file(&p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %p.display(), error = %e, "cannot remove unfinished block file");
                }
            }
        }
        self.inner.release(self.block_id, self.tier, self.reserved, self.at);
    }
}
