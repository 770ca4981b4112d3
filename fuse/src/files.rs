//! The bytes of files open for writing. Curvine files are sealed once
//! written, so POSIX writes are mapped onto whole-file versions:
//!
//! - a new (or truncated-to-empty) file written from offset 0 onwards
//!   streams straight into a `FileWriter`: `cp`, `tar -x` and checkpoint
//!   writers never touch local disk;
//! - anything else (a write elsewhere, a truncate to a non-zero size, a
//!   write to an existing file) stages the file in a local temporary file
//!   (downloaded once), applies writes there, and uploads it as the file's
//!   new version at `flush`/`fsync`/last close — what sqlite, git and
//!   editors need.
//!
//! Readers of the same inode through this mount see the staged bytes
//! (their own writes) at once; other clients see a version once it is
//! uploaded (close-to-open consistency, as NFS gives).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use curvine_client::{CreateOptions, Error, FileSystem, FileWriter, Result};

/// Bytes per piece when downloading into or uploading from a staging file.
const PIECE: usize = 4 << 20;

pub enum Data {
    /// No local changes: the file's bytes are what meta and the workers have.
    Clean,
    /// Being written sequentially; `FileWriter::len` is the size so far.
    Stream(Box<FileWriter>),
    /// Held in a local file; `dirty` until uploaded.
    Staged { file: File, dirty: bool },
}

/// One inode with open handles (or a pending change).
pub struct FileState {
    pub data: Data,
    /// The file's size as this mount sees it.
    pub size: u64,
    /// Open handles on the inode.
    pub open: usize,
    /// Bumped at every new version this mount wrote, so readers reopen.
    pub version: u64,
    /// The mount's count of new versions (of any file): an open that read
    /// a file's blocks from meta keeps them only if none was made meanwhile.
    versions: Arc<AtomicU64>,
    /// Set when the file was unlinked while open: the hidden name it lives
    /// under until its last handle closes.
    pub unlinked_as: Option<String>,
    pub mode: u32,
    /// Owner kept by every new version this mount writes.
    pub owner: Option<(u32, u32)>,
    /// When this mount last changed the bytes (ms; 0 = never): the file's
    /// mtime and ctime as this mount shows them until meta has later ones.
    pub changed_ms: i64,
    /// A seal of streamed bytes that failed (the bytes are gone), kept for
    /// the writer: another caller (a reader, a rename) may have made it
    /// fail, and the writer's own flush would then find nothing to save.
    pub failed: Option<Error>,
}

impl FileState {
    pub fn new(size: u64, mode: u32, versions: Arc<AtomicU64>) -> FileState {
        FileState { data: Data::Clean, size, open: 0, version: 0, versions, unlinked_as: None, mode, owner: None, changed_ms: 0, failed: None }
    }

    /// This mount starts a new version of the file.
    pub fn new_version(&mut self) {
        self.version += 1;
        self.versions.fetch_add(1, Ordering::AcqRel);
    }

    pub fn is_clean(&self) -> bool {
        matches!(self.data, Data::Clean)
    }

    /// Writes `buf` at `offset` of the file at `path`.
    pub async fn write(&mut self, fs: &FileSystem, path: &str, offset: u64, buf: &[u8], staging: &std::path::Path) -> Result<()> {
        self.changed_ms = curvine_common::now_ms();
        if let Data::Stream(w) = &mut self.data {
            if offset == w.len() {
                w.write(buf).await?;
                self.size = w.len();
                return Ok(());
            }
        }
        if matches!(self.data, Data::Clean) && offset == 0 && self.size == 0 {
            let opts = CreateOptions { overwrite: true, mode: self.mode, owner: self.owner, ..Default::default() };
            let w = fs.create(path, opts).await?;
            self.data = Data::Stream(Box::new(w));
            self.new_version();
            return Box::pin(self.write(fs, path, offset, buf, staging)).await;
        }
        let file = self.stage(fs, path, staging).await?;
        file.write_all_at(buf, offset)?;
        self.size = self.size.max(offset + buf.len() as u64);
        if let Data::Staged { dirty, .. } = &mut self.data {
            *dirty = true;
        }
        Ok(())
    }

    /// Sets the file's size.
    pub async fn truncate(&mut self, fs: &FileSystem, path: &str, size: u64, staging: &std::path::Path) -> Result<()> {
        if size == self.size && !matches!(self.data, Data::Stream(_)) {
            return Ok(());
        }
        self.changed_ms = curvine_common::now_ms();
        if size == 0 && !matches!(self.data, Data::Staged { .. }) {
            // A fresh empty version; later writes from 0 stream into it.
            if let Data::Stream(mut w) = std::mem::replace(&mut self.data, Data::Clean) {
                w.abort().await;
            }
            let opts = CreateOptions { overwrite: true, mode: self.mode, owner: self.owner, ..Default::default() };
            fs.create(path, opts).await?.close().await?;
            self.size = 0;
            self.new_version();
            return Ok(());
        }
        let file = self.stage(fs, path, staging).await?;
        file.set_len(size)?;
        self.size = size;
        if let Data::Staged { dirty, .. } = &mut self.data {
            *dirty = true;
        }
        Ok(())
    }

    /// Reads from the local copy when there is one; `None` when the file
    /// is clean (read it from Curvine). A file still streaming is sealed
    /// first, so the reader sees every byte written.
    pub async fn read_local(&mut self, offset: u64, size: usize) -> Result<Option<Vec<u8>>> {
        if let Data::Stream(_) = self.data {
            self.commit(None).await?;
        }
        match &self.data {
            Data::Staged { file, .. } => {
                let end = (offset + size as u64).min(self.size);
                if offset >= end {
                    return Ok(Some(Vec::new()));
                }
                // Allocated only here: most reads are of clean files, and
                // zeroing 1 MiB per request showed in profiles.
                let mut buf = vec![0u8; (end - offset) as usize];
                file.read_exact_at(&mut buf, offset)?;
                Ok(Some(buf))
            }
            _ => Ok(None),
        }
    }

    /// Makes this mount's changes the file's current version in Curvine:
    /// seals a stream, uploads a dirty staged copy (kept for reads).
    pub async fn commit(&mut self, upload_to: Option<(&FileSystem, &str)>) -> Result<()> {
        match std::mem::replace(&mut self.data, Data::Clean) {
            Data::Clean => Ok(()),
            Data::Stream(w) => match w.close().await {
                Ok(st) => {
                    self.size = st.len;
                    // Readers found while it streamed hold an unfinished file.
                    self.versions.fetch_add(1, Ordering::AcqRel);
                    Ok(())
                }
                Err(e) => {
                    self.failed = Some(e.clone());
                    Err(e)
                }
            },
            Data::Staged { file, dirty } => {
                let Some((fs, path)) = upload_to.filter(|_| dirty) else {
                    self.data = Data::Staged { file, dirty };
                    return Ok(());
                };
                let opts = CreateOptions { overwrite: true, mode: self.mode, owner: self.owner, ..Default::default() };
                match upload(fs, path, &file, self.size, opts).await {
                    Ok(()) => {
                        self.new_version();
                        self.data = Data::Staged { file, dirty: false };
                        Ok(())
                    }
                    Err(e) => {
                        self.data = Data::Staged { file, dirty: true };
                        Err(e)
                    }
                }
            }
        }
    }

    /// Drops a stream that was never sealed (the handle went away with an
    /// error); a staged copy is simply forgotten.
    pub async fn discard(&mut self) {
        if let Data::Stream(mut w) = std::mem::replace(&mut self.data, Data::Clean) {
            w.abort().await;
        }
    }

    /// The local copy, downloading the file into it first if needed.
    async fn stage(&mut self, fs: &FileSystem, path: &str, staging: &std::path::Path) -> Result<&File> {
        if let Data::Stream(_) = self.data {
            self.commit(None).await?;
        }
        if matches!(self.data, Data::Clean) {
            let file = tempfile::tempfile_in(staging)?;
            if self.size > 0 {
                let r = fs.open(path).await?;
                let mut buf = vec![0u8; PIECE];
                let mut off = 0u64;
                while off < r.len() {
                    let n = r.read_at(off, &mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    file.write_all_at(&buf[..n], off)?;
                    off += n as u64;
                }
                self.size = off;
            }
            self.data = Data::Staged { file, dirty: false };
        }
        match &self.data {
            Data::Staged { file, .. } => Ok(file),
            _ => unreachable!("staged just above"),
        }
    }
}

/// Writes `size` bytes of `file` as the new version of `path`.
async fn upload(fs: &FileSystem, path: &str, file: &File, size: u64, opts: CreateOptions) -> Result<()> {
    let mut w = fs.create(path, opts).await?;
    let mut buf = vec![0u8; PIECE];
    let mut off = 0u64;
    while off < size {
        let n = PIECE.min((size - off) as usize);
        if let Err(e) = file.read_exact_at(&mut buf[..n], off) {
            w.abort().await;
            return Err(e.into());
        }
        w.write(&buf[..n]).await?;
        off += n as u64;
    }
    w.close().await?;
    Ok(())
}
