//! Streaming handles of a `Ufs`: paged listing, ranged reads, whole-object
//! writes.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures::TryStreamExt;
use opendal::{Buffer, BufferStream, Lister, Writer};

use crate::ufs::{entry, Ufs, UfsEntry};
use crate::{Error, ErrorKind, Result};

/// Direct children of a directory, fetched from the store as pages are asked for.
pub struct UfsLister {
    ufs: Ufs,
    lister: Lister,
    /// The listed directory as OpenDAL names it (`a/b/`, or `/` for the root).
    dir: String,
    what: String,
    done: bool,
}

impl UfsLister {
    pub(crate) fn new(ufs: Ufs, lister: Lister, dir: String, what: String) -> Self {
        UfsLister { ufs, lister, dir, what, done: false }
    }

    /// Up to `max` more entries (at least one unless done); an empty Vec means
    /// the listing is complete.
    pub async fn next_page(&mut self, max: usize) -> Result<Vec<UfsEntry>> {
        let mut out = Vec::new();
        while !self.done && out.len() < max.max(1) {
            let Some(e) = self.lister.try_next().await.map_err(|e| self.ufs.err(&e, &self.what))? else {
                self.done = true;
                break;
            };
            // Object stores return the directory's own marker object; the
            // staging directory holds writes in progress, not entries.
            let path = e.path();
            if path == self.dir || path.is_empty() || path == "/" || self.ufs.is_staging(path) {
                continue;
            }
            let name = e.name().trim_end_matches('/').to_string();
            out.push(entry(name, e.metadata()));
        }
        Ok(out)
    }
}

/// Bytes of one ranged read, in order. Yields exactly the requested length or
/// fails.
pub struct UfsRead {
    ufs: Option<Ufs>,
    stream: Option<BufferStream>,
    /// Pieces of the last buffer not handed out yet.
    buf: Buffer,
    remaining: u64,
    what: String,
}

impl UfsRead {
    pub(crate) fn new(ufs: Ufs, stream: BufferStream, len: u64, what: String) -> Self {
        UfsRead { ufs: Some(ufs), stream: Some(stream), buf: Buffer::new(), remaining: len, what }
    }

    pub(crate) fn empty(what: String) -> Self {
        UfsRead { ufs: None, stream: None, buf: Buffer::new(), remaining: 0, what }
    }

    /// The next piece, `None` after the last byte of the range.
    pub async fn next(&mut self) -> Result<Option<Bytes>> {
        while self.remaining > 0 {
            if let Some(mut piece) = self.buf.next() {
                if piece.is_empty() {
                    continue;
                }
                if piece.len() as u64 > self.remaining {
                    piece.truncate(self.remaining as usize);
                }
                self.remaining -= piece.len() as u64;
                return Ok(Some(piece));
            }
            let (Some(stream), Some(ufs)) = (self.stream.as_mut(), self.ufs.as_ref()) else { break };
            match stream.try_next().await {
                Ok(Some(b)) => self.buf = b,
                Ok(None) => {
                    return Err(Error::new(
                        ErrorKind::Io,
                        format!("{}: object ended {} bytes before the end of the requested range (changed in the UFS?)", self.what, self.remaining),
                    ))
                }
                Err(e) => return Err(ufs.err(&e, &self.what)),
            }
        }
        // Release the connection as soon as the range is done.
        self.stream = None;
        Ok(None)
    }

    /// Bytes still to come.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }
}

/// A whole-object write. `close` makes the object visible and returns its
/// metadata as the store reports it; dropping without `close` aborts.
pub struct UfsWriter {
    ufs: Ufs,
    w: Option<Writer>,
    rel: String,
    what: String,
    written: u64,
}

impl UfsWriter {
    pub(crate) fn new(ufs: Ufs, w: Writer, rel: String, what: String) -> Self {
        UfsWriter { ufs, w: Some(w), rel, what, written: 0 }
    }

    pub async fn write(&mut self, data: Bytes) -> Result<()> {
        let Some(w) = self.w.as_mut() else { return Err(Error::internal(format!("{}: writer already closed", self.what))) };
        let n = data.len() as u64;
        w.write(data).await.map_err(|e| self.ufs.err(&e, &self.what))?;
        self.written += n;
        Ok(())
    }

    /// Completes the object and returns its entry (etag and mtime from the store).
    #[tracing::instrument(skip(self), fields(what = %self.what, bytes = self.written))]
    pub async fn close(mut self) -> Result<UfsEntry> {
        let Some(mut w) = self.w.take() else { return Err(Error::internal(format!("{}: writer already closed", self.what))) };
        if let Err(e) = w.close().await {
            let err = self.ufs.err(&e, &self.what);
            self.abort_now(w).await;
            return Err(err);
        }
        match self.ufs.stat(&self.rel).await? {
            Some(e) if !e.is_dir => Ok(e),
            _ => Err(Error::new(ErrorKind::Io, format!("{}: written but not visible in the UFS", self.what))),
        }
    }

    /// Discards what was written; the object keeps its previous content
    /// (hdfs writes in place: there the partial object is deleted).
    pub async fn abort(mut self) -> Result<()> {
        if let Some(w) = self.w.take() {
            self.abort_now(w).await;
        }
        Ok(())
    }

    async fn abort_now(&self, mut w: Writer) {
        abort(&self.ufs, &mut w, &self.rel, &self.what).await;
    }
}

/// Aborts `w`: the store drops what it staged (multipart upload, temp file,
/// WebHDFS blocks) and the object keeps its previous content.
///
/// Only a store that writes in place (hdfs, or file:// without a staging
/// directory) has touched the object itself; OpenDAL cannot abort there, so
/// the partial object is deleted. Any other store that cannot abort keeps the
/// object: the failed write never touched it, and deleting it would lose data.
async fn abort(ufs: &Ufs, w: &mut Writer, rel: &str, what: &str) {
    match w.abort().await {
        Ok(()) => {}
        Err(e) if e.kind() == opendal::ErrorKind::Unsupported && ufs.inner.settings.writes_in_place => {
            if let Err(e) = ufs.delete(rel).await {
                tracing::warn!(what, error = %e, "cannot remove a partial write");
            }
        }
        Err(e) => tracing::warn!(what, error = %ufs.err(&e, what), "abort failed"),
    }
}

/// Counts a dropped writer's abort in [`Ufs::aborts_in_flight`] while it
/// lives, also if the task is cancelled (runtime shutdown).
struct AbortInFlight(Ufs);

impl AbortInFlight {
    fn new(ufs: &Ufs) -> Self {
        ufs.inner.aborts.fetch_add(1, Ordering::AcqRel);
        AbortInFlight(ufs.clone())
    }
}

impl Drop for AbortInFlight {
    fn drop(&mut self) {
        self.0.inner.aborts.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for UfsWriter {
    fn drop(&mut self) {
        let Some(mut w) = self.w.take() else { return };
        // Multipart uploads would otherwise linger (and be billed) in the store.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let pending = AbortInFlight::new(&self.ufs);
            let (rel, what) = (self.rel.clone(), self.what.clone());
            rt.spawn(async move {
                abort(&pending.0, &mut w, &rel, &what).await;
                drop(pending);
            });
        }
    }
}
