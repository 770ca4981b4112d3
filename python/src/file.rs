//! Open files behind `Client.open(path, "rb" | "wb")`. The Python layer
//! (`curvine/_io.py`) wraps them in `io.RawIOBase` and keeps the position.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use curvine_client::{CreateOptions, FileReader, FileWriter};
use curvine_common::{Error, ErrorKind};
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::buffer::{Borrowed, RawMut};
use crate::client::{new_bytes, read_ranges, Client};
use crate::conn::Conn;
use crate::errors::{to_py, IntoPy};
use crate::status::FileStatus;

/// A file open for reading: positional reads, any number of threads. Every
/// read goes to the version of the file that was opened (in this process; a
/// forked child opens the path again): if the path is replaced meanwhile (a
/// rename over it), reads return that version's bytes or fail, never the
/// new file's.
#[pyclass(module = "curvine._curvine", frozen)]
pub struct Reader {
    client: Py<Client>,
    path: String,
    size: u64,
    /// The file's status when opened (`id`, `complete`, …).
    status: curvine_client::FileStatus,
    /// The connection and open file of the process that opened it; replaced
    /// after a fork (the file is opened again in the child). Locked only
    /// with the GIL held, never across IO.
    open: Mutex<(Arc<Conn>, Arc<FileReader>)>,
}

impl Reader {
    pub fn open(client: Bound<'_, Client>, path: String) -> PyResult<Reader> {
        let py = client.py();
        let c = client.get().conn(py)?;
        let r = client.get().open_reader(py, &c, &path)?;
        let status = r.status().clone();
        Ok(Reader { size: r.len(), status, path, client: client.unbind(), open: Mutex::new((c, Arc::new(r))) })
    }

    fn current(&self, py: Python<'_>) -> PyResult<(Arc<Conn>, Arc<FileReader>)> {
        let cur = self.open.lock().clone();
        if cur.0.is_current() {
            return Ok(cur);
        }
        // Opened by the parent before a fork: open it again here.
        let client = self.client.bind(py).get();
        let c = client.conn(py)?;
        let r = Arc::new(client.open_reader(py, &c, &self.path)?);
        *self.open.lock() = (c.clone(), r.clone());
        Ok((c, r))
    }
}

#[pymethods]
impl Reader {
    #[getter]
    fn size(&self) -> u64 {
        self.size
    }

    #[getter]
    fn path(&self) -> &str {
        &self.path
    }

    /// The file's status when it was opened: `complete` is False for a file
    /// a writer still has open (or left unfinished).
    #[getter]
    fn status(&self) -> FileStatus {
        self.status.clone().into()
    }

    /// Fills `nbytes` of memory at `addr` (owned and kept alive by the
    /// caller, e.g. a tensor's `data_ptr()`) from `offset`; returns the bytes
    /// read (fewer only at the end of the file). Memory the read would fill
    /// that is not writable raises TypeError before any data is read.
    #[pyo3(signature = (addr, nbytes, offset=0))]
    fn _read_into_addr(&self, py: Python<'_>, addr: usize, nbytes: usize, offset: u64) -> PyResult<usize> {
        if addr == 0 && nbytes > 0 {
            return Err(pyo3::exceptions::PyValueError::new_err("null address"));
        }
        let dst = RawMut { ptr: addr as *mut u8, len: nbytes };
        let (c, r) = self.current(py)?;
        Client::read_raw_from(py, &c, &r, &self.path, dst, offset, true)
    }

    /// Reads several ranges in parallel, each into caller-owned memory:
    /// `ranges` is a list of `(file_offset, addr, nbytes)`, each inside the
    /// file. Returns the total bytes read. The memory is not probed for
    /// writability: callers pass tensors they allocated themselves.
    #[pyo3(signature = (ranges, parallel=16))]
    fn _read_ranges(&self, py: Python<'_>, ranges: Vec<(u64, usize, usize)>, parallel: usize) -> PyResult<u64> {
        let (c, r) = self.current(py)?;
        read_ranges(py, c, r, &self.path, ranges, parallel)
    }

    /// Fills `buffer` from `offset`; returns the bytes read (0 at the end).
    fn readinto_at(&self, py: Python<'_>, offset: u64, buffer: &Bound<'_, PyAny>) -> PyResult<usize> {
        let buf = Borrowed::writable(buffer)?;
        let dst = buf.raw_mut();
        let (c, r) = self.current(py)?;
        py.detach(move || c.block_on(r.read_at(offset, unsafe { dst.slice() }))).py_err()
    }

    /// Up to `n` bytes from `offset`, read straight into a new `bytes`.
    fn read_at<'py>(&self, py: Python<'py>, offset: u64, n: u64) -> PyResult<Bound<'py, PyBytes>> {
        let n = self.size.saturating_sub(offset).min(n) as usize;
        let (bytes, dst) = new_bytes(py, n)?;
        let (c, r) = self.current(py)?;
        let got = py.detach(move || c.block_on(r.read_at(offset, unsafe { dst.slice() }))).py_err()?;
        if got != n {
            return Err(to_py(Error::new(ErrorKind::Io, format!("{}: read {got} of {n} bytes", self.path))));
        }
        Ok(bytes)
    }
}

/// A file being written; complete only after `close`.
#[pyclass(module = "curvine._curvine", frozen)]
pub struct Writer {
    path: String,
    conn: Arc<Conn>,
    /// `None` once closed or aborted. Held across IO: one writer is one
    /// stream, so concurrent writes from several threads queue here.
    w: Mutex<Option<FileWriter>>,
    /// Set when `close` or `abort` takes the writer. Read by `closed`
    /// without the lock above, which a write may hold for as long as the
    /// network takes (and which a fork can leave locked in the child).
    closed: AtomicBool,
}

impl Writer {
    pub fn create(client: Bound<'_, Client>, path: String, overwrite: bool, parents: bool) -> PyResult<Writer> {
        let py = client.py();
        let c = client.get().conn(py)?;
        let (c2, p) = (c.clone(), path.clone());
        let w = py
            .detach(move || c2.block_on(c2.fs().create(&p, CreateOptions { overwrite, parents, ..Default::default() })))
            .py_err()?;
        Ok(Writer { path, conn: c, w: Mutex::new(Some(w)), closed: AtomicBool::new(false) })
    }

    fn check_process(&self) -> PyResult<()> {
        if self.conn.is_current() {
            return Ok(());
        }
        Err(to_py(Error::invalid(format!(
            "{}: a file opened for writing cannot be used after fork; open it in this process",
            self.path
        ))))
    }
}

#[pymethods]
impl Writer {
    #[getter]
    fn path(&self) -> &str {
        &self.path
    }

    /// Appends `data` (any buffer); returns its length.
    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<usize> {
        self.check_process()?;
        let buf = Borrowed::readable(data)?;
        let src = buf.raw();
        let c = self.conn.clone();
        py.detach(|| {
            let mut g = self.w.lock();
            let w = g.as_mut().ok_or_else(|| Error::invalid(format!("{}: write to a closed file", self.path)))?;
            c.block_on(w.write(unsafe { src.slice() }))
        })
        .py_err()?;
        Ok(src.len)
    }

    /// Completes the file; returns its size. Closing twice is a no-op.
    fn close(&self, py: Python<'_>) -> PyResult<Option<u64>> {
        self.check_process()?;
        let c = self.conn.clone();
        py.detach(|| {
            let Some(w) = self.w.lock().take() else { return Ok(None) };
            self.closed.store(true, Ordering::Release);
            c.block_on(w.close()).map(|s| Some(s.len))
        })
        .py_err()
    }

    /// Drops the unfinished file (nothing partial is ever visible as
    /// complete).
    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        self.check_process()?;
        let c = self.conn.clone();
        py.detach(|| {
            let taken = self.w.lock().take();
            if let Some(mut w) = taken {
                self.closed.store(true, Ordering::Release);
                c.block_on(w.abort());
            }
        });
        Ok(())
    }

    #[getter]
    fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let Some(w) = self.w.get_mut().take() else { return };
        if self.conn.is_current() {
            // FileWriter's own drop aborts the file on the current runtime.
            let _enter = self.conn.runtime().enter();
            drop(w);
        } else {
            // Inherited across fork: its connections belong to the parent.
            std::mem::forget(w);
        }
    }
}
