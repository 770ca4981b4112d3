//! `Client`: the Python face of `curvine_client::FileSystem`. Every method
//! that talks to the cluster releases the GIL for the whole call.

use std::sync::Arc;

use curvine_client::{CreateOptions, ErrorKind, FileReader};
use curvine_common::config::{ClientConf, DEFAULT_META_ADDR};
use curvine_common::Error;
use parking_lot::Mutex;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::buffer::{Borrowed, RawMut};
use crate::conn::Conn;
use crate::errors::IntoPy;
use crate::file::{Reader, Writer};
use crate::par;
use crate::status::FileStatus;

/// Files read at once by `read_many` and ranges by `read_ranges`, unless
/// the caller says otherwise: enough to hide per-file round trips.
const DEFAULT_PARALLEL: usize = 16;

/// Most runtime threads a client may ask for: far past any core count, low
/// enough that a typo cannot exhaust the process's threads.
const MAX_THREADS: usize = 1024;

/// Longest request timeout `connect` accepts (a year): longer is "never" in
/// practice, and a bound keeps every deadline computed from it in range.
const MAX_TIMEOUT_SECS: f64 = 365.0 * 24.0 * 3600.0;

/// A connection to one Curvine cluster. Cheap to share between threads;
/// safe to inherit across `fork` (the child reconnects on first use).
#[pyclass(module = "curvine._curvine", subclass, frozen)]
pub struct Client {
    conf: ClientConf,
    threads: usize,
    /// Taken only with the GIL held and never across IO, so a fork (which
    /// happens with the GIL held) cannot catch it locked.
    conn: Mutex<Option<Arc<Conn>>>,
}

impl Client {
    /// The connection for this process, made on first use and again after
    /// a fork.
    pub fn conn(&self, _py: Python<'_>) -> PyResult<Arc<Conn>> {
        let mut cur = self.conn.lock();
        if let Some(c) = cur.as_ref() {
            if c.is_current() {
                return Ok(c.clone());
            }
            tracing::debug!("client inherited across fork: reconnecting");
        }
        let c = Conn::new(&self.conf, self.threads).py_err()?;
        if let Some(parent) = cur.as_ref() {
            // Block descriptors the parent prepared stay valid here.
            c.fs().adopt_local_blocks(parent.fs());
        }
        // The inherited `Conn`, if any, leaks itself on drop (see conn.rs).
        *cur = Some(c.clone());
        Ok(c)
    }

    /// Reads `dst.len` bytes (fewer only at the end of the file) of `r` from
    /// `offset` into `dst`, with the GIL released. With `probe`, memory the
    /// caller vouched for by address is first checked to be writable (the
    /// part the read fills; see `buffer::check_writable`).
    pub fn read_raw_from(
        py: Python<'_>,
        c: &Arc<Conn>,
        r: &FileReader,
        path: &str,
        dst: RawMut,
        offset: u64,
        probe: bool,
    ) -> PyResult<usize> {
        let n = span(r.len(), offset, dst.len as u64);
        let dst = RawMut { ptr: dst.ptr, len: n };
        if probe {
            crate::buffer::check_writable(dst)?;
        }
        let got = py.detach(|| c.block_on(r.read_at(offset, unsafe { dst.slice() }))).py_err()?;
        if got != n {
            return Err(short_read(path, got, n));
        }
        Ok(n)
    }

    /// Opens `path` with the GIL released.
    pub fn open_reader(&self, py: Python<'_>, conn: &Arc<Conn>, path: &str) -> PyResult<FileReader> {
        let path = path.to_string();
        let c = conn.clone();
        py.detach(move || c.block_on(c.fs().open(&path))).py_err()
    }
}

fn resolve_meta(meta: Option<String>) -> PyResult<Vec<String>> {
    let raw = meta
        .or_else(|| std::env::var("CURVINE_META").ok().filter(|s| !s.trim().is_empty()))
        .unwrap_or_else(|| DEFAULT_META_ADDR.to_string());
    let addrs: Vec<String> = raw.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    if addrs.is_empty() {
        return Err(PyValueError::new_err(format!("no meta address in {raw:?}; expected HOST:PORT[,HOST:PORT…]")));
    }
    for a in &addrs {
        let ok = a.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !ok {
            return Err(PyValueError::new_err(format!("bad meta address {a:?}; expected HOST:PORT")));
        }
    }
    Ok(addrs)
}

/// Readers from kept open results, with their same-host blocks'
/// descriptors fetched in batches (`prepare_local`); the GIL is released.
fn prepared_readers(py: Python<'_>, c: &Arc<Conn>, raws: Vec<Vec<u8>>) -> PyResult<Vec<Arc<FileReader>>> {
    let c = c.clone();
    py.detach(move || {
        c.block_on(async {
            let readers = raws.iter().map(|r| c.fs().reader_from(r).map(Arc::new)).collect::<curvine_client::Result<Vec<_>>>()?;
            let refs: Vec<&FileReader> = readers.iter().map(|r| r.as_ref()).collect();
            c.fs().prepare_local(&refs).await;
            Ok::<_, curvine_client::Error>(readers)
        })
    })
    .py_err()
}

/// A `deadline` for waiting `timeout` seconds: `None` (no deadline) for
/// `None`, infinity, or a span too long to represent.
fn deadline_after(timeout: Option<f64>) -> PyResult<Option<std::time::Instant>> {
    let Some(t) = timeout else { return Ok(None) };
    if t.is_nan() || t < 0.0 {
        return Err(PyValueError::new_err(format!("timeout must be >= 0 seconds or None, got {t}")));
    }
    Ok(std::time::Duration::try_from_secs_f64(t).ok().and_then(|d| std::time::Instant::now().checked_add(d)))
}

/// Reads several ranges of `r` in parallel, each into caller-owned memory:
/// `ranges` holds `(file_offset, addr, nbytes)`, each inside the file.
/// Returns the total bytes read.
pub fn read_ranges(
    py: Python<'_>,
    c: Arc<Conn>,
    r: Arc<FileReader>,
    path: &str,
    ranges: Vec<(u64, usize, usize)>,
    parallel: usize,
) -> PyResult<u64> {
    let len = r.len();
    for &(off, addr, n) in &ranges {
        if off.checked_add(n as u64).is_none_or(|end| end > len) {
            return Err(PyValueError::new_err(format!("{path}: range {off}+{n} is past the end ({len} bytes)")));
        }
        if addr == 0 && n > 0 {
            return Err(PyValueError::new_err("null address"));
        }
    }
    let ranges = Arc::new(ranges);
    let total: u64 = ranges.iter().map(|r| r.2 as u64).sum();
    let p = path.to_string();
    py.detach(move || {
        c.block_on(par::for_each(c.runtime().handle(), ranges.len(), parallel, move |i| {
            let (r, ranges, p) = (r.clone(), ranges.clone(), p.clone());
            async move {
                let (off, addr, n) = ranges[i];
                let got = r.read_at(off, unsafe { RawMut { ptr: addr as *mut u8, len: n }.slice() }).await?;
                if got != n {
                    return Err(Error::new(ErrorKind::Io, format!("{p}: read {got} of {n} bytes at {off}")));
                }
                Ok(())
            }
        }))
    })
    .py_err()?;
    Ok(total)
}

fn check_offset(offset: i64) -> PyResult<u64> {
    u64::try_from(offset).map_err(|_| PyValueError::new_err(format!("offset must be >= 0, got {offset}")))
}

/// Bytes `read_at(offset, buf)` will fill: the overlap of `[offset,
/// offset+want)` with the file.
fn span(len: u64, offset: u64, want: u64) -> usize {
    len.saturating_sub(offset).min(want) as usize
}

/// A `length` argument: `None` = to the end of the file.
fn check_length(length: Option<i64>) -> PyResult<u64> {
    match length {
        None => Ok(u64::MAX),
        Some(l) => u64::try_from(l).map_err(|_| PyValueError::new_err(format!("length must be >= 0, got {l}"))),
    }
}

/// `n` bytes of `r` from `offset`, read straight into a new `bytes`.
fn read_new<'py>(
    py: Python<'py>,
    c: &Arc<Conn>,
    r: &curvine_client::FileReader,
    path: &str,
    offset: u64,
    n: usize,
) -> PyResult<Bound<'py, PyBytes>> {
    let (bytes, dst) = new_bytes(py, n)?;
    let got = py.detach(|| c.block_on(r.read_at(offset, unsafe { dst.slice() }))).py_err()?;
    if got != n {
        return Err(short_read(path, got, n));
    }
    Ok(bytes)
}

fn short_read(path: &str, got: usize, want: usize) -> PyErr {
    crate::errors::to_py(Error::new(
        ErrorKind::Io,
        format!("{path}: read {got} of {want} bytes (file changed while reading?)"),
    ))
}

#[pymethods]
impl Client {
    /// `meta`: `HOST:PORT` (comma-separated for several); default
    /// `$CURVINE_META`, then 127.0.0.1:8995. `threads`: runtime threads
    /// that move bytes for parallel reads.
    #[new]
    #[pyo3(signature = (meta=None, *, threads=None, timeout=None, verify_checksums=true))]
    fn new(meta: Option<String>, threads: Option<usize>, timeout: Option<f64>, verify_checksums: bool) -> PyResult<Self> {
        let mut conf = ClientConf { meta: resolve_meta(meta)?, verify_checksums, ..Default::default() };
        if let Some(t) = timeout {
            if !(t > 0.0 && t <= MAX_TIMEOUT_SECS) {
                return Err(PyValueError::new_err(format!(
                    "timeout must be > 0 and at most {MAX_TIMEOUT_SECS} seconds (a year), got {t}"
                )));
            }
            conf.timeout = std::time::Duration::try_from_secs_f64(t)
                .map_err(|e| PyValueError::new_err(format!("timeout {t}: {e}")))?;
        }
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let threads = threads.unwrap_or(cores.min(4));
        if !(1..=MAX_THREADS).contains(&threads) {
            return Err(PyValueError::new_err(format!("threads must be 1..={MAX_THREADS}, got {threads}")));
        }
        Ok(Client { conf, threads, conn: Mutex::new(None) })
    }

    /// The meta address(es), comma-separated, as `connect` accepts them.
    #[getter]
    fn meta(&self) -> String {
        self.conf.meta.join(",")
    }

    /// Runtime threads moving bytes for this client.
    #[getter]
    fn threads(&self) -> usize {
        self.threads
    }

    /// Request timeout in seconds.
    #[getter]
    fn timeout(&self) -> f64 {
        self.conf.timeout.as_secs_f64()
    }

    #[getter]
    fn verify_checksums(&self) -> bool {
        self.conf.verify_checksums
    }

    fn stat(&self, py: Python<'_>, path: String) -> PyResult<FileStatus> {
        let c = self.conn(py)?;
        let s = py.detach(move || c.block_on(c.fs().stat(&path))).py_err()?;
        Ok(s.into())
    }

    /// Entries of a directory, sorted by name.
    fn ls(&self, py: Python<'_>, path: String) -> PyResult<Vec<FileStatus>> {
        let c = self.conn(py)?;
        let mut v = py.detach(move || c.block_on(c.fs().list(&path))).py_err()?;
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v.into_iter().map(FileStatus::from).collect())
    }

    fn exists(&self, py: Python<'_>, path: String) -> PyResult<bool> {
        let c = self.conn(py)?;
        py.detach(move || c.block_on(c.fs().exists(&path))).py_err()
    }

    /// Like `pathlib.Path.mkdir`: `parents` creates missing ancestors,
    /// `exist_ok` accepts an existing directory.
    #[pyo3(signature = (path, parents=false, exist_ok=false))]
    fn mkdir(&self, py: Python<'_>, path: String, parents: bool, exist_ok: bool) -> PyResult<()> {
        let c = self.conn(py)?;
        py.detach(move || {
            c.block_on(async {
                match c.fs().mkdir(&path, parents).await {
                    Ok(_) => Ok(()),
                    Err(e) if exist_ok && e.kind() == ErrorKind::AlreadyExists => match c.fs().stat(&path).await {
                        Ok(s) if s.kind == curvine_client::FileKind::Dir as i32 => Ok(()),
                        _ => Err(e),
                    },
                    Err(e) => Err(e),
                }
            })
        })
        .py_err()
    }

    /// Removes a file, an empty directory, or (`recursive`) a tree.
    #[pyo3(signature = (path, recursive=false))]
    fn rm(&self, py: Python<'_>, path: String, recursive: bool) -> PyResult<u64> {
        let c = self.conn(py)?;
        py.detach(move || c.block_on(c.fs().delete(&path, recursive))).py_err()
    }

    /// Atomic rename of a file or directory.
    fn mv(&self, py: Python<'_>, src: String, dst: String) -> PyResult<()> {
        let c = self.conn(py)?;
        py.detach(move || c.block_on(c.fs().rename(&src, &dst))).py_err()
    }

    /// Bytes `[offset, offset+length)` of the file (to its end by default),
    /// read straight into the returned `bytes`.
    #[pyo3(signature = (path, offset=0, length=None))]
    fn read<'py>(&self, py: Python<'py>, path: String, offset: i64, length: Option<i64>) -> PyResult<Bound<'py, PyBytes>> {
        let offset = check_offset(offset)?;
        let want = check_length(length)?;
        let c = self.conn(py)?;
        let r = self.open_reader(py, &c, &path)?;
        let n = span(r.len(), offset, want);
        read_new(py, &c, &r, &path, offset, n)
    }

    /// Bytes `[offset, offset+length)` as a read-only `memoryview`: in place
    /// (no copy) when they lie in one block of a MEM-tier worker on this
    /// host; otherwise read into new memory. Use it for large tensors
    /// (`torch.frombuffer`, `numpy.frombuffer`); the view keeps the mapping.
    #[pyo3(signature = (path, offset=0, length=None))]
    fn read_view<'py>(&self, py: Python<'py>, path: String, offset: i64, length: Option<i64>) -> PyResult<Bound<'py, PyAny>> {
        let offset = check_offset(offset)?;
        let want = check_length(length)?;
        let c = self.conn(py)?;
        let r = self.open_reader(py, &c, &path)?;
        let n = span(r.len(), offset, want);
        let view = py.detach(|| c.block_on(r.view(offset, n as u64))).py_err()?;
        let obj = match view {
            Some(range) => Bound::new(py, crate::view::MappedView { range })?.into_any(),
            None => read_new(py, &c, &r, &path, offset, n)?.into_any(),
        };
        Ok(pyo3::types::PyMemoryView::from(&obj)?.into_any())
    }

    /// Fills `buffer` (any writable, C-contiguous buffer) from file offset
    /// `offset`; returns the bytes read (fewer than the buffer only at the
    /// end of the file).
    #[pyo3(signature = (path, buffer, offset=0))]
    fn read_into(&self, py: Python<'_>, path: String, buffer: &Bound<'_, PyAny>, offset: i64) -> PyResult<usize> {
        let offset = check_offset(offset)?;
        let buf = Borrowed::writable(buffer)?;
        let dst = buf.raw_mut();
        self.read_raw(py, &path, dst, offset, false)
    }

    /// `read_into` for memory the caller owns and keeps alive, given as an
    /// address (a torch tensor's `data_ptr()`). Used by the Python layer.
    /// Memory the read would fill that is not writable (a read-only
    /// mapping) raises TypeError before any data is read.
    #[pyo3(signature = (path, addr, nbytes, offset=0))]
    fn _read_into_addr(&self, py: Python<'_>, path: String, addr: usize, nbytes: usize, offset: i64) -> PyResult<usize> {
        let offset = check_offset(offset)?;
        if addr == 0 && nbytes > 0 {
            return Err(PyValueError::new_err("null address"));
        }
        self.read_raw(py, &path, RawMut { ptr: addr as *mut u8, len: nbytes }, offset, true)
    }

    /// Reads several ranges of one file in parallel, each into caller-owned
    /// memory: `ranges` is a list of `(file_offset, addr, nbytes)`. Each
    /// range must lie inside the file. Returns the total bytes read. The
    /// memory is not probed for writability (see `_read_into_addr`): callers
    /// pass tensors they allocated themselves.
    #[pyo3(signature = (path, ranges, parallel=DEFAULT_PARALLEL))]
    fn _read_ranges(&self, py: Python<'_>, path: String, ranges: Vec<(u64, usize, usize)>, parallel: usize) -> PyResult<u64> {
        let c = self.conn(py)?;
        let r = Arc::new(self.open_reader(py, &c, &path)?);
        read_ranges(py, c, r, &path, ranges, parallel)
    }

    /// Whole files, read `parallel` at a time inside Rust; `bytes` in the
    /// order of `paths`.
    #[pyo3(signature = (paths, parallel=DEFAULT_PARALLEL))]
    fn read_many<'py>(&self, py: Python<'py>, paths: Vec<String>, parallel: usize) -> PyResult<Bound<'py, PyList>> {
        let c = self.conn(py)?;
        let paths = Arc::new(paths);
        // Open everything first, in one meta call per 1,024 paths: the
        // lengths size the `bytes` objects, which must be allocated with the
        // GIL held. The first path that failed raises.
        let readers: Vec<Arc<curvine_client::FileReader>> = {
            let (c2, paths) = (c.clone(), paths.clone());
            py.detach(move || {
                c2.block_on(async {
                    let opened = c2.fs().open_many(&paths).await?;
                    let readers = opened.into_iter().map(|r| r.map(Arc::new)).collect::<curvine_client::Result<Vec<_>>>()?;
                    let refs: Vec<&curvine_client::FileReader> = readers.iter().map(|r| r.as_ref()).collect();
                    c2.fs().prepare_local(&refs).await;
                    Ok::<_, curvine_client::Error>(readers)
                })
            })
            .py_err()?
        };
        let (out, _) = read_whole(py, &c, readers, parallel, false)?;
        PyList::new(py, out)
    }

    /// Open results of `paths` (one meta call per 1,024 paths), encoded, for
    /// `_read_many_opened`; the first path that fails raises.
    fn _open_many_raw<'py>(&self, py: Python<'py>, paths: Vec<String>) -> PyResult<Bound<'py, PyList>> {
        let c = self.conn(py)?;
        let raws: Vec<Vec<u8>> = py
            .detach(move || {
                c.block_on(async {
                    let opened = c.fs().open_many(&paths).await?;
                    opened.into_iter().map(|r| r.map(|r| r.encode())).collect::<curvine_client::Result<Vec<_>>>()
                })
            })
            .py_err()?;
        PyList::new(py, raws.iter().map(|r| PyBytes::new(py, r)))
    }

    /// This process's short-circuit counters (for tests and benchmarks):
    /// reads served from local block files, fallbacks to TCP, and block
    /// descriptors prefetched in batches, opened one at a time, or adopted
    /// from the parent process at a fork.
    fn _local_stats(&self, py: Python<'_>) -> PyResult<std::collections::HashMap<&'static str, u64>> {
        let s = self.conn(py)?.fs().local_stats();
        Ok([("reads", s.reads), ("fallbacks", s.fallbacks), ("prefetched", s.prefetched), ("opened", s.opened), ("adopted", s.adopted), ("writes", s.writes)]
            .into_iter()
            .collect())
    }

    /// Fetches the descriptors of kept open results' blocks held by a worker
    /// on this host (one round trip per 200 blocks), so reads from them, in
    /// this process and in processes forked from it later (DataLoader
    /// workers), start without a round trip. Best effort.
    fn _prepare_local(&self, py: Python<'_>, raws: Vec<Vec<u8>>) -> PyResult<()> {
        let c = self.conn(py)?;
        prepared_readers(py, &c, raws).map(drop)
    }

    /// Like `read_many`, from kept open results (no meta call): `bytes` per
    /// result, or `None` where the kept result is stale (a block moved or
    /// is gone: read that file by path again).
    #[pyo3(signature = (raws, parallel=DEFAULT_PARALLEL))]
    fn _read_many_opened<'py>(&self, py: Python<'py>, raws: Vec<Vec<u8>>, parallel: usize) -> PyResult<Bound<'py, PyList>> {
        let c = self.conn(py)?;
        let readers = prepared_readers(py, &c, raws)?;
        let (out, stale) = read_whole(py, &c, readers, parallel, true)?;
        let items: Vec<Bound<'py, PyAny>> = out
            .into_iter()
            .enumerate()
            .map(|(i, b)| if stale.contains(&i) { py.None().into_bound(py) } else { b.into_any() })
            .collect();
        PyList::new(py, items)
    }

    /// Writes `data` (any buffer) as the whole file; returns its size.
    #[pyo3(signature = (path, data, overwrite=true, parents=true))]
    fn write(&self, py: Python<'_>, path: String, data: &Bound<'_, PyAny>, overwrite: bool, parents: bool) -> PyResult<u64> {
        let buf = Borrowed::readable(data)?;
        let src = buf.raw();
        let c = self.conn(py)?;
        py.detach(move || {
            c.block_on(async {
                let opts = CreateOptions { overwrite, parents, ..Default::default() };
                let mut w = c.fs().create(&path, opts).await?;
                w.write(unsafe { src.slice() }).await?;
                w.close().await
            })
        })
        .py_err()
        .map(|s| s.len)
    }

    /// A reader for `open(path, "rb")`.
    fn _open_reader(slf: Bound<'_, Self>, path: String) -> PyResult<Reader> {
        Reader::open(slf, path)
    }

    /// A writer for `open(path, "wb")`.
    #[pyo3(signature = (path, overwrite=true, parents=true))]
    fn _open_writer(slf: Bound<'_, Self>, path: String, overwrite: bool, parents: bool) -> PyResult<Writer> {
        Writer::create(slf, path, overwrite, parents)
    }

    /// Cluster summary, as `cv report` shows it: `workers` (list of dicts
    /// with `id`, `addr`, `alive`), `capacity`, `used`, `files`, `dirs`.
    fn report<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.conn(py)?;
        let r = py.detach(move || c.block_on(c.fs().report())).py_err()?;
        let d = PyDict::new(py);
        let workers = PyList::empty(py);
        for w in &r.workers {
            let wd = PyDict::new(py);
            wd.set_item("id", w.id)?;
            wd.set_item("addr", &w.addr)?;
            wd.set_item("hostname", &w.hostname)?;
            wd.set_item("alive", w.alive)?;
            workers.append(wd)?;
        }
        d.set_item("workers", workers)?;
        d.set_item("capacity", r.capacity)?;
        d.set_item("used", r.used)?;
        d.set_item("files", r.files)?;
        d.set_item("dirs", r.dirs)?;
        Ok(d)
    }

    /// Loads a path (file or tree, typically under a UFS mount) into the
    /// cache ahead of reads, as `cv warm` does. With `wait` (default) it
    /// returns when the load job ends, raising if it failed; otherwise at
    /// once. Returns the job as a dict (`id`, `state`, `files_total`,
    /// `bytes_done`, …). `timeout`: seconds to wait at most (TimeoutError);
    /// None or infinity waits for as long as the job runs.
    #[pyo3(signature = (path, wait=true, parallel=0, timeout=None))]
    fn warm<'py>(
        &self,
        py: Python<'py>,
        path: String,
        wait: bool,
        parallel: u32,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let deadline = deadline_after(timeout)?;
        let c = self.conn(py)?;
        let job = py
            .detach(move || {
                c.block_on(async {
                    let mut job = c.fs().warm(&path, parallel).await?;
                    while wait && job.state == "running" {
                        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                            return Err(Error::new(
                                ErrorKind::Timeout,
                                format!("{path}: warm job {} still running ({} of {} bytes)", job.id, job.bytes_done, job.bytes_total),
                            ));
                        }
                        // Poll interval of the job's status; the job runs on the workers.
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        let id = job.id;
                        job = c.fs().jobs(id).await?.into_iter().find(|j| j.id == id).ok_or_else(|| {
                            Error::new(ErrorKind::NotFound, format!("{path}: warm job {id} disappeared"))
                        })?;
                    }
                    if wait && job.state != "done" {
                        let why = if job.error.is_empty() { job.state.clone() } else { job.error.clone() };
                        return Err(Error::new(ErrorKind::Io, format!("{path}: warm job {} {why}", job.id)));
                    }
                    Ok(job)
                })
            })
            .py_err()?;
        let d = PyDict::new(py);
        d.set_item("id", job.id)?;
        d.set_item("path", &job.path)?;
        d.set_item("state", &job.state)?;
        d.set_item("files_total", job.files_total)?;
        d.set_item("files_done", job.files_done)?;
        d.set_item("bytes_total", job.bytes_total)?;
        d.set_item("bytes_done", job.bytes_done)?;
        d.set_item("bytes_loaded", job.bytes_loaded)?;
        d.set_item("blocks_failed", job.blocks_failed)?;
        d.set_item("error", &job.error)?;
        Ok(d)
    }

    /// Benchmark baseline: reads the whole file through `buffer` (one
    /// `FileReader::read_at` per buffer-full, in a Rust loop, no Python in
    /// between) `rounds` times. Returns each round's seconds.
    fn _bench_rust_read(&self, py: Python<'_>, path: String, buffer: &Bound<'_, PyAny>, rounds: usize) -> PyResult<Vec<f64>> {
        let buf = Borrowed::writable(buffer)?;
        let dst = buf.raw_mut();
        let c = self.conn(py)?;
        let r = self.open_reader(py, &c, &path)?;
        py.detach(move || {
            c.block_on(async {
                let mut secs = Vec::with_capacity(rounds);
                let step = dst.len.max(1) as u64;
                for _ in 0..rounds {
                    let t = std::time::Instant::now();
                    let mut off = 0;
                    while off < r.len() {
                        r.read_at(off, unsafe { dst.slice() }).await?;
                        off += step;
                    }
                    secs.push(t.elapsed().as_secs_f64());
                }
                Ok::<_, Error>(secs)
            })
        })
        .py_err()
    }
}

impl Client {
    fn read_raw(&self, py: Python<'_>, path: &str, dst: RawMut, offset: u64, probe: bool) -> PyResult<usize> {
        let c = self.conn(py)?;
        let r = self.open_reader(py, &c, path)?;
        Self::read_raw_from(py, &c, &r, path, dst, offset, probe)
    }
}

/// A new, uninitialized `bytes` of `len` and a pointer to fill it through.
/// Filling a fresh `bytes` before anyone else sees it is how CPython builds
/// them too; skipping the zero-fill saves a pass over the memory.
pub fn new_bytes(py: Python<'_>, len: usize) -> PyResult<(Bound<'_, PyBytes>, RawMut)> {
    use pyo3::ffi;
    let n = ffi::Py_ssize_t::try_from(len).map_err(|_| PyValueError::new_err("read too large"))?;
    // SAFETY: a NULL source asks CPython for an uninitialized object of size n.
    unsafe {
        let obj = ffi::PyBytes_FromStringAndSize(std::ptr::null(), n);
        let obj = Bound::from_owned_ptr_or_err(py, obj)?;
        let ptr = ffi::PyBytes_AsString(obj.as_ptr()) as *mut u8;
        if ptr.is_null() {
            return Err(PyErr::fetch(py));
        }
        let bytes = obj.cast_into_unchecked::<PyBytes>();
        Ok((bytes, RawMut { ptr, len }))
    }
}

/// Reads each reader's whole file into a new `bytes`, `parallel` at a time
/// inside Rust (the `bytes` are allocated first, with the GIL held). With
/// `tolerate_stale`, files whose read fails because a block is gone or
/// moved (`NotFound`, `Unavailable`, `Corrupt`, short) are listed instead of
/// raising; otherwise the first failure raises.
fn read_whole<'py>(
    py: Python<'py>,
    c: &Arc<Conn>,
    readers: Vec<Arc<curvine_client::FileReader>>,
    parallel: usize,
    tolerate_stale: bool,
) -> PyResult<(Vec<Bound<'py, PyBytes>>, Vec<usize>)> {
    let n = readers.len();
    let mut out = Vec::with_capacity(n);
    let mut dsts = Vec::with_capacity(n);
    for r in &readers {
        let (b, dst) = new_bytes(py, r.len() as usize)?;
        out.push(b);
        dsts.push(dst);
    }
    let stale: Arc<parking_lot::Mutex<Vec<usize>>> = Default::default();
    let (readers, dsts, st, c) = (Arc::new(readers), Arc::new(dsts), stale.clone(), c.clone());
    py.detach(move || {
        c.block_on(par::for_each(c.runtime().handle(), n, parallel, move |i| {
            let (readers, dsts, st) = (readers.clone(), dsts.clone(), st.clone());
            async move {
                let (r, dst) = (&readers[i], dsts[i]);
                let res = match r.read_at(0, unsafe { dst.slice() }).await {
                    Ok(got) if got == dst.len => return Ok(()),
                    Ok(got) => Err(Error::new(ErrorKind::Io, format!("{}: read {got} of {} bytes", r.status().path, dst.len))),
                    Err(e) => Err(e),
                };
                match res {
                    Err(e)
                        if tolerate_stale
                            && matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Unavailable | ErrorKind::Corrupt | ErrorKind::Io) =>
                    {
                        st.lock().push(i);
                        Ok(())
                    }
                    other => other,
                }
            }
        }))
    })
    .py_err()?;
    let stale = std::mem::take(&mut *stale.lock());
    Ok((out, stale))
}
