//! `Ufs`: one mounted under file system — an OpenDAL operator with bounded
//! timeouts and retries, plus the mount's URI and settings.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opendal::layers::{RetryLayer, TimeoutLayer};
use opendal::{services, Capability, Configurator, HttpTransporter, Metadata, Operator};
use opendal_http_transport_reqwest::ReqwestTransport;

use crate::io::{UfsLister, UfsRead, UfsWriter};
use crate::options::{resolve, Settings};
use crate::uri::{check_rel, UfsUri};
use crate::{error, Error, ErrorKind, Result};

/// A TCP connect that takes longer than this fails; with the retries below an
/// unreachable endpoint is reported within ~8 s.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on a whole non-streaming operation (stat, one list page, delete).
const OP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on each piece of a streaming read or write.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Retries of temporary errors (connect failures, 5xx, throttling).
const RETRIES: usize = 2;
/// `check` gives up after this even if a layer above misbehaves.
const CHECK_DEADLINE: Duration = Duration::from_secs(15);

/// Metadata of one UFS entry. `name` is the last path component, without a
/// trailing `/` (empty for the mount root).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UfsEntry {
    pub name: String,
    pub is_dir: bool,
    pub len: u64,
    pub mtime_ms: i64,
    pub etag: String,
}

/// One mounted UFS. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Ufs {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub uri: UfsUri,
    pub shown: String,
    pub op: Operator,
    pub cap: Capability,
    pub settings: Settings,
    /// Aborts of dropped writers still running (see [`Ufs::aborts_in_flight`]).
    pub aborts: AtomicUsize,
}

impl std::fmt::Debug for Ufs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the options: they hold secrets.
        f.debug_struct("Ufs").field("uri", &self.inner.shown).finish_non_exhaustive()
    }
}

impl Ufs {
    /// Builds the UFS from `uri` and `options` (see [`crate::options`] for
    /// the keys) without contacting the store. For `file://` the root
    /// directory must exist.
    pub fn new(uri: &str, options: &BTreeMap<String, String>) -> Result<Ufs> {
        crate::init();
        let uri = UfsUri::parse(uri)?;
        let shown = uri.to_string();
        let mut settings = resolve(&uri, options)?;
        if uri.scheme == "file" && !std::path::Path::new(&uri.root).is_dir() {
            // OpenDAL would create it; a typo must not silently make a new tree.
            return Err(Error::new(ErrorKind::NotFound, format!("{shown}: no such local directory")));
        }
        if uri.scheme == "file" && !options.contains_key("atomic_write_dir") {
            local_staging(&shown, &mut settings);
        }
        let op = build_operator(&uri, &settings).map_err(|e| Settings::config_error(&uri, &e))?;
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(50))
            .build()
            .map_err(|e| Error::internal(format!("{shown}: cannot build the HTTP client: {e}")))?;
        let ctx = op.base_context().with_http_transport(HttpTransporter::new(ReqwestTransport::new(client)));
        let retry_uri = shown.clone();
        let op = op
            .with_context(ctx)
            .layer(TimeoutLayer::new().with_timeout(OP_TIMEOUT).with_io_timeout(IO_TIMEOUT))
            .layer(
                RetryLayer::new()
                    .with_max_times(RETRIES)
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_delay(Duration::from_secs(2))
                    .with_jitter()
                    // OpenDAL's default notifier logs the full error, which can
                    // include request URLs; log our redacted view instead.
                    .with_notify(move |ev: opendal::layers::RetryEvent<'_>| {
                        tracing::warn!(uri = %retry_uri, op = ?ev.op, attempt = ev.attempt, kind = ?ev.err.kind(), "retrying UFS request");
                    }),
            );
        let cap = op.info().capability();
        tracing::debug!(uri = %shown, options = ?crate::redact(options), "ufs built");
        Ok(Ufs { inner: Arc::new(Inner { uri, shown, op, cap, settings, aborts: AtomicUsize::new(0) }) })
    }

    /// The directory (relative to the root) where writes are staged before
    /// they are renamed into place (`file://`, `webhdfs://`; `.curvine-tmp`
    /// unless the `atomic_write_dir` option moves it), when it lies inside the
    /// root. It never appears in `list`, and paths in it are refused
    /// (`InvalidPath`).
    pub fn staging_dir(&self) -> Option<&str> {
        self.inner.settings.staging.as_deref()
    }

    /// Whether writes go to the object itself instead of being staged and
    /// renamed (hdfs; file:// whose staging directory cannot be created).
    /// There an overwrite that fails or is aborted loses the previous
    /// content, and the partial object is deleted.
    pub fn writes_in_place(&self) -> bool {
        self.inner.settings.writes_in_place
    }

    /// Aborts of dropped (not closed) writers still running in the
    /// background. Zero means every dropped write has been cleaned up.
    pub fn aborts_in_flight(&self) -> usize {
        self.inner.aborts.load(Ordering::Acquire)
    }

    /// Removes what unfinished writes left in the staging directory (a
    /// process killed mid-upload leaves its temporary object there for
    /// good): files last modified more than `age` ago. Returns how many
    /// went. Nothing to do without a staging directory inside the root, or
    /// when it does not exist yet.
    #[tracing::instrument(skip(self), fields(uri = %self.inner.shown))]
    pub async fn sweep_staging(&self, age: Duration) -> Result<u64> {
        let Some(dir) = self.staging_dir() else { return Ok(0) };
        let what = self.what(dir);
        let cutoff = SystemTime::now().checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH);
        let lister = match self.inner.op.lister_with(&format!("{dir}/")).recursive(true).await {
            Ok(l) => l,
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(self.err(&e, &what)),
        };
        let entries: Vec<opendal::Entry> =
            futures::TryStreamExt::try_collect(lister).await.map_err(|e| self.err(&e, &what))?;
        let mut removed = 0;
        for e in entries.into_iter().filter(|e| !e.metadata().is_dir()) {
            // Listings of some stores (the local one) carry no times.
            let modified = match e.metadata().last_modified() {
                Some(t) => Some(t),
                None => match self.inner.op.stat(e.path()).await {
                    Ok(m) => m.last_modified(),
                    Err(x) if x.kind() == opendal::ErrorKind::NotFound => continue,
                    Err(x) => return Err(self.err(&x, &what)),
                },
            };
            let Some(modified) = modified.map(SystemTime::from) else { continue };
            if modified < cutoff {
                match self.inner.op.delete(e.path()).await {
                    Ok(()) => removed += 1,
                    Err(x) if x.kind() == opendal::ErrorKind::NotFound => {}
                    Err(x) => return Err(self.err(&x, &what)),
                }
            }
        }
        Ok(removed)
    }

    /// Whether `r` (checked, relative to the root) is the staging directory
    /// or inside it.
    pub(crate) fn is_staging(&self, r: &str) -> bool {
        let r = r.trim_matches('/');
        match self.staging_dir() {
            Some(t) => r.strip_prefix(t).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
            None => false,
        }
    }

    /// `rel` checked (see `check_rel`) and outside the staging directory.
    fn rel<'a>(&self, rel: &'a str) -> Result<&'a str> {
        let r = check_rel(rel)?;
        if self.is_staging(r) {
            return Err(Error::new(
                ErrorKind::InvalidPath,
                format!("{}: reserved for writes in progress (the UFS's staging directory)", self.what(r)),
            ));
        }
        Ok(r)
    }

    /// The canonical URI (`s3://bkt/prefix`), for messages and display.
    pub fn uri(&self) -> &str {
        &self.inner.shown
    }

    /// The parsed URI.
    pub fn parsed_uri(&self) -> &UfsUri {
        &self.inner.uri
    }

    /// Proves that the store is reachable, the credentials are accepted and
    /// the bucket exists, by listing the root with a limit of one. Fails
    /// within ~15 s.
    #[tracing::instrument(skip(self), fields(uri = %self.inner.shown))]
    pub async fn check(&self) -> Result<()> {
        let shown = &self.inner.shown;
        let work = async {
            let mut l = self.inner.op.lister_with("/").limit(1).await.map_err(|e| self.err(&e, shown))?;
            futures::TryStreamExt::try_next(&mut l).await.map_err(|e| self.err(&e, shown))?;
            Ok(())
        };
        match tokio::time::timeout(CHECK_DEADLINE, work).await {
            Ok(r) => r.map_err(|e: Error| self.explain_check(e)),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!("{shown}: no answer from the store within {CHECK_DEADLINE:?} (is the endpoint or namenode reachable from here?)"),
            )),
        }
    }

    /// Makes `check` errors say what to fix: the endpoint that cannot be
    /// reached, the bucket (or root) that does not exist.
    fn explain_check(&self, e: Error) -> Error {
        let shown = &self.inner.shown;
        let endpoint = self.inner.settings.opendal.get("endpoint");
        match e.kind() {
            ErrorKind::Unavailable if e.message().contains("cannot reach") => {
                let why = e.message().rsplit_once("cannot reach the store: ").map(|x| x.1).unwrap_or("");
                let at = endpoint.map(|ep| format!(" endpoint {ep}")).unwrap_or_default();
                Error::new(ErrorKind::Unavailable, format!("{shown}: cannot reach{at}: {why}"))
            }
            // Listing a prefix never 404s, so the container itself is missing,
            // or the endpoint is not the kind of store the scheme says.
            ErrorKind::NotFound if !e.message().contains("does not exist") => {
                let what = match self.inner.uri.scheme.as_str() {
                    "s3" | "gs" | "oss" => "bucket",
                    "azblob" => "container",
                    _ => "root directory",
                };
                let ep = endpoint.map(|ep| format!(", or {ep} is not a {} endpoint", self.inner.uri.scheme)).unwrap_or_default();
                Error::new(ErrorKind::NotFound, format!("{shown}: {what} does not exist{ep}"))
            }
            _ => e,
        }
    }

    /// Metadata of `rel` (relative to the root, `""` = the root), `None` when
    /// absent. Directories include implicit ones (a prefix with objects under
    /// it but no marker object).
    #[tracing::instrument(skip(self), fields(uri = %self.inner.shown))]
    pub async fn stat(&self, rel: &str) -> Result<Option<UfsEntry>> {
        let r = self.rel(rel)?;
        if r.is_empty() {
            return Ok(Some(UfsEntry { name: String::new(), is_dir: true, len: 0, mtime_ms: 0, etag: String::new() }));
        }
        let what = self.what(r);
        let name = r.rsplit('/').next().unwrap_or(r).to_string();
        match self.inner.op.stat(r).await {
            Ok(m) => return Ok(Some(entry(name, &m))),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => {}
            // A file in the way of a path component (local fs, HDFS).
            Err(e) if error::is_not_dir(&e) => return Ok(None),
            Err(e) => return Err(self.err(&e, &what)),
        }
        match self.inner.op.stat(&format!("{r}/")).await {
            Ok(m) if m.is_dir() => Ok(Some(entry(name, &m))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound || error::is_not_dir(&e) => Ok(None),
            Err(e) => Err(self.err(&e, &what)),
        }
    }

    /// Direct children of directory `rel`, fetched page by page as the
    /// caller asks for them; never includes the directory itself.
    #[tracing::instrument(skip(self), fields(uri = %self.inner.shown))]
    pub async fn list(&self, rel: &str) -> Result<UfsLister> {
        let r = self.rel(rel)?;
        let dir = if r.is_empty() { "/".to_string() } else { format!("{r}/") };
        let what = self.what(r);
        let lister = self.inner.op.lister_with(&dir).limit(self.inner.settings.list_page).await.map_err(|e| self.err(&e, &what))?;
        Ok(UfsLister::new(self.clone(), lister, dir, what))
    }

    /// Bytes `[offset, offset+len)` of file `rel`, streamed in order; exactly
    /// `len` bytes or an error. With `etag`, fails with `Unavailable`
    /// ("changed in the UFS") if the object is no longer that version.
    /// Ranges longer than `read_chunk` are fetched as concurrent ranged reads.
    #[tracing::instrument(skip(self), fields(uri = %self.inner.shown))]
    pub async fn read(&self, rel: &str, offset: u64, len: u64, etag: Option<&str>) -> Result<UfsRead> {
        let r = self.rel(rel)?;
        let what = self.what(r);
        if r.is_empty() {
            return Err(Error::is_dir(&what));
        }
        let end = offset.checked_add(len).ok_or_else(|| Error::invalid(format!("{what}: range {offset}+{len} overflows")))?;
        let native_if_match = self.inner.cap.read_with_if_match;
        if let (Some(tag), false) = (etag, native_if_match) {
            self.check_etag(r, tag).await?;
        }
        if len == 0 {
            return Ok(UfsRead::empty(what));
        }
        let s = &self.inner.settings;
        let mut fut = self.inner.op.reader_with(r);
        if len > s.read_chunk as u64 {
            fut = fut.chunk(s.read_chunk).concurrent(s.read_concurrency);
        }
        if let (Some(tag), true) = (etag, native_if_match) {
            fut = fut.if_match(tag);
        }
        let reader = fut.await.map_err(|e| self.err(&e, &what))?;
        let stream = reader.into_stream(offset..end).await.map_err(|e| self.err(&e, &what))?;
        Ok(UfsRead::new(self.clone(), stream, len, what))
    }

    /// For stores without conditional reads: the object must still have `tag`.
    async fn check_etag(&self, r: &str, tag: &str) -> Result<()> {
        let what = self.what(r);
        match self.stat(r).await? {
            Some(e) if !e.is_dir && e.etag == tag => Ok(()),
            Some(e) if e.is_dir => Err(Error::is_dir(&what)),
            Some(e) => Err(changed(&what, tag, &e.etag)),
            None => Err(Error::not_found(&what)),
        }
    }

    /// A writer that replaces `rel` as a whole when closed (multipart upload
    /// for large objects). Dropping it without `close` aborts.
    #[tracing::instrument(skip(self), fields(uri = %self.inner.shown))]
    pub async fn writer(&self, rel: &str) -> Result<UfsWriter> {
        let r = self.rel(rel)?;
        let what = self.what(r);
        if r.is_empty() {
            return Err(Error::is_dir(&what));
        }
        let s = &self.inner.settings;
        let w = self
            .inner
            .op
            .writer_with(r)
            .chunk(s.write_chunk)
            .concurrent(s.write_concurrency)
            .await
            .map_err(|e| self.err(&e, &what))?;
        Ok(UfsWriter::new(self.clone(), w, r.to_string(), what))
    }

    /// Deletes file `rel`; a missing file is not an error.
    #[tracing::instrument(skip(self), fields(uri = %self.inner.shown))]
    pub async fn delete(&self, rel: &str) -> Result<()> {
        let r = self.rel(rel)?;
        let what = self.what(r);
        if r.is_empty() {
            return Err(Error::is_dir(&what));
        }
        match self.inner.op.delete(r).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err(&e, &what)),
        }
    }

    /// Deletes directory `rel` and everything under it; missing is not an error.
    #[tracing::instrument(skip(self), fields(uri = %self.inner.shown))]
    pub async fn delete_all(&self, rel: &str) -> Result<()> {
        let r = self.rel(rel)?;
        let what = self.what(r);
        if r.is_empty() {
            return Err(Error::invalid(format!("{what}: refusing to delete the whole UFS root")));
        }
        let dir = format!("{}/", r.trim_end_matches('/'));
        match self.inner.op.delete_with(&dir).recursive(true).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err(&e, &what)),
        }
    }

    /// Moves file `src` to `dst`, replacing `dst`: a native rename where the
    /// store has one (local fs, HDFS), else a server-side copy and a delete
    /// (object stores), else the bytes are streamed through. Returns `dst`'s
    /// entry afterwards. Not atomic on object stores: a failure after the
    /// copy leaves both, never neither.
    #[tracing::instrument(skip(self), fields(uri = %self.inner.shown))]
    pub async fn rename(&self, src: &str, dst: &str) -> Result<UfsEntry> {
        let (s, d) = (self.rel(src)?, self.rel(dst)?);
        if s.is_empty() || d.is_empty() {
            return Err(Error::invalid(format!("{}: cannot rename the UFS root", self.what(""))));
        }
        let what = format!("{} -> {}", self.what(s), self.what(d));
        let cap = &self.inner.cap;
        if cap.rename {
            self.inner.op.rename(s, d).await.map_err(|e| self.err(&e, &what))?;
        } else {
            if cap.copy {
                self.inner.op.copy(s, d).await.map_err(|e| self.err(&e, &what))?;
            } else {
                self.stream_copy(s, d).await.map_err(|e| e.context(&what))?;
            }
            self.delete(s).await?;
        }
        match self.stat(d).await? {
            Some(e) if !e.is_dir => Ok(e),
            _ => Err(Error::new(ErrorKind::Unavailable, format!("{what}: the renamed object is not there afterwards"))),
        }
    }

    async fn stream_copy(&self, s: &str, d: &str) -> Result<()> {
        let len = match self.stat(s).await? {
            Some(e) if !e.is_dir => e.len,
            Some(_) => return Err(Error::is_dir(&self.what(s))),
            None => return Err(Error::not_found(&self.what(s))),
        };
        let mut r = self.read(s, 0, len, None).await?;
        let mut w = self.writer(d).await?;
        while let Some(b) = r.next().await? {
            if let Err(e) = w.write(b).await {
                let _ = w.abort().await;
                return Err(e);
            }
        }
        w.close().await.map(|_| ())
    }

    /// Moves directory `src` and everything under it to `dst` (which must
    /// not exist): every object is renamed as by [`Ufs::rename`], several at
    /// a time, then what is left of `src` (markers) is deleted. Returns how
    /// many files moved.
    #[tracing::instrument(skip(self), fields(uri = %self.inner.shown))]
    pub async fn rename_all(&self, src: &str, dst: &str) -> Result<u64> {
        use futures::TryStreamExt;
        let (s, d) = (self.rel(src)?, self.rel(dst)?);
        if s.is_empty() || d.is_empty() {
            return Err(Error::invalid(format!("{}: cannot rename the UFS root", self.what(""))));
        }
        let (s, d) = (s.trim_end_matches('/').to_string(), d.trim_end_matches('/').to_string());
        let what = format!("{} -> {}", self.what(&s), self.what(&d));
        let prefix = format!("{s}/");
        let lister =
            self.inner.op.lister_with(&prefix).recursive(true).await.map_err(|e| self.err(&e, &what))?;
        let mut moved = 0u64;
        let mut files = lister
            .map_err(|e| self.err(&e, &what))
            .try_filter(|e| futures::future::ready(!e.metadata().is_dir() && !self.is_staging(e.path())))
            .map_ok(|e| {
                let rest = e.path().strip_prefix(&prefix).unwrap_or(e.path()).to_string();
                let from = format!("{prefix}{rest}");
                let to = format!("{d}/{rest}");
                async move { self.rename(&from, &to).await.map(|_| ()) }
            })
            .try_buffer_unordered(8);
        while files.try_next().await?.is_some() {
            moved += 1;
        }
        if moved == 0 && self.inner.cap.create_dir {
            // An empty directory exists only as its marker: move that too.
            self.inner.op.create_dir(&format!("{d}/")).await.map_err(|e| self.err(&e, &what))?;
        }
        self.delete_all(&s).await?;
        Ok(moved)
    }

    /// `s3://bkt/root/rel`, for messages.
    pub(crate) fn what(&self, rel: &str) -> String {
        let base = self.inner.shown.trim_end_matches('/');
        if rel.is_empty() { self.inner.shown.clone() } else { format!("{base}/{rel}") }
    }

    pub(crate) fn err(&self, e: &opendal::Error, what: &str) -> Error {
        let mapped = error::map(e, what, &self.inner.settings.opendal);
        tracing::debug!(what, kind = ?mapped.kind(), msg = mapped.message(), "ufs error");
        mapped
    }
}

pub(crate) fn changed(what: &str, expected: &str, now: &str) -> Error {
    Error::unavailable(format!(
        "{what}: changed in the UFS since it was cached (etag {expected}, now {now}); re-read its metadata and retry"
    ))
}

/// OpenDAL metadata → `UfsEntry`, with a synthetic etag when the store has none.
pub(crate) fn entry(name: String, m: &Metadata) -> UfsEntry {
    let since_epoch = m.last_modified().and_then(|t| SystemTime::from(t).duration_since(SystemTime::UNIX_EPOCH).ok());
    let mtime_ms = since_epoch.map(|d| d.as_millis() as i64).unwrap_or(0);
    let is_dir = m.is_dir();
    let len = if is_dir { 0 } else { m.content_length() };
    let etag = match (m.etag(), is_dir) {
        (Some(t), _) => t.to_string(),
        (None, true) => String::new(),
        // Nanoseconds, so a rewrite within the same millisecond still differs
        // on file systems that keep them.
        (None, false) => format!("{len:x}-{:x}", since_epoch.map(|d| d.as_nanos()).unwrap_or(0)),
    };
    UfsEntry { name, is_dir, len, mtime_ms, etag }
}

/// Creates the default staging directory of a `file://` mount. Where it
/// cannot be (a read-only tree), writes go in place as OpenDAL does without
/// `atomic_write_dir`: such a mount is read, not written, and if a write does
/// happen an abort deletes the partial file it left.
fn local_staging(shown: &str, s: &mut Settings) {
    let Some(dir) = s.opendal.get("atomic_write_dir") else { return };
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(_) if std::path::Path::new(dir).is_dir() => {}
        Err(e) => {
            tracing::warn!(uri = shown, dir = %dir, error = %e, "cannot create the staging directory; writes will go in place");
            s.opendal.remove("atomic_write_dir");
            s.writes_in_place = true;
        }
    }
}

fn build_operator(uri: &UfsUri, s: &Settings) -> opendal::Result<Operator> {
    let m = s.opendal.clone();
    match uri.scheme.as_str() {
        "s3" => Operator::from_config(services::S3Config::from_iter(m)?),
        "gs" => Operator::from_config(services::GcsConfig::from_iter(m)?),
        "azblob" => Operator::from_config(services::AzblobConfig::from_iter(m)?),
        "oss" => Operator::from_config(services::OssConfig::from_iter(m)?),
        "webhdfs" => Operator::from_config(services::WebhdfsConfig::from_iter(m)?),
        #[cfg(feature = "hdfs")]
        "hdfs" => Operator::from_config(services::HdfsNativeConfig::from_iter(m)?),
        "file" => Operator::from_config(services::FsConfig::from_iter(m)?),
        other => Err(opendal::Error::new(opendal::ErrorKind::ConfigInvalid, format!("scheme {other} is not built in"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhdfs_can_write_more_than_one_chunk() {
        // No IO: OpenDAL declares multi-chunk writes only with a staging dir.
        let ufs = Ufs::new("webhdfs://127.0.0.1:1/user", &BTreeMap::new()).unwrap();
        assert!(ufs.inner.cap.write_can_multi);
        assert_eq!(ufs.staging_dir(), Some(".curvine-tmp"));
        assert!(!ufs.writes_in_place());
        let s3 = Ufs::new("s3://bkt/x", &[("endpoint".to_string(), "http://127.0.0.1:1".to_string())].into()).unwrap();
        assert_eq!((s3.staging_dir(), s3.writes_in_place()), (None, false));
    }

    /// Temporary files older than the age go from the staging directory;
    /// newer ones (writes that may still be running) and everything
    /// outside it stay.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sweeping_the_staging_directory_removes_only_old_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let ufs = Ufs::new(&format!("file://{}", dir.path().display()), &BTreeMap::new()).unwrap();
        let tmp = dir.path().join(".curvine-tmp");
        std::fs::create_dir_all(tmp.join("sub")).unwrap();
        let old = SystemTime::now() - Duration::from_secs(3 * 24 * 3600);
        for (p, t) in [("old", Some(old)), ("sub/old2", Some(old)), ("fresh", None)] {
            let f = std::fs::File::create(tmp.join(p)).unwrap();
            if let Some(t) = t {
                f.set_modified(t).unwrap();
            }
        }
        let outside = dir.path().join("data");
        std::fs::File::create(&outside).unwrap().set_modified(old).unwrap();
        assert_eq!(ufs.sweep_staging(Duration::from_secs(24 * 3600)).await.unwrap(), 2);
        assert!(!tmp.join("old").exists() && !tmp.join("sub/old2").exists());
        assert!(tmp.join("fresh").exists() && outside.exists());
        assert_eq!(ufs.sweep_staging(Duration::from_secs(24 * 3600)).await.unwrap(), 0);
        // No staging directory yet, or none at all: nothing to do.
        let empty = tempfile::tempdir().unwrap();
        let u = Ufs::new(&format!("file://{}", empty.path().display()), &BTreeMap::new()).unwrap();
        std::fs::remove_dir(empty.path().join(".curvine-tmp")).ok();
        assert_eq!(u.sweep_staging(Duration::ZERO).await.unwrap(), 0);
        let s3 = Ufs::new("s3://bkt/x", &[("endpoint".to_string(), "http://127.0.0.1:1".to_string())].into()).unwrap();
        assert_eq!(s3.sweep_staging(Duration::ZERO).await.unwrap(), 0);
    }

    /// Where the staging dir cannot be made, file:// writes in place as
    /// before: the mount still works, and an aborted write leaves no partial
    /// file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_root_without_a_staging_dir_writes_in_place() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".curvine-tmp"), b"in the way").unwrap();
        let ufs = Ufs::new(&format!("file://{}", dir.path().display()), &BTreeMap::new()).unwrap();
        assert!(ufs.writes_in_place());
        let mut w = ufs.writer("a").await.unwrap();
        w.write(bytes::Bytes::from_static(b"whole")).await.unwrap();
        assert_eq!(w.close().await.unwrap().len, 5);
        let mut w = ufs.writer("b").await.unwrap();
        w.write(bytes::Bytes::from(vec![7u8; 9 << 20])).await.unwrap();
        w.abort().await.unwrap();
        assert_eq!(ufs.stat("b").await.unwrap(), None, "the partial file is deleted");
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"whole");
    }
}
