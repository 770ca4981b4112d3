//! Open files behind `Client.open(path, "rb" | "wb")`. The Python layer
//! (`curvine/_io.py`) wraps them in `io.RawIOBase` and keeps the position.

use std::sync::Arc;

use curvine_client::{CreateOptions, FileReader, FileWriter};
use curvine_common::{Error, ErrorKind};
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::buffer::Borrowed;
use crate::client::{new_bytes, Client};
use crate::conn::Conn;
use crate::errors::{to_py, IntoPy};

/// A file open for reading: positional reads, any number of threads.
#[pyclass(module = "curvine._curvine", frozen)]
pub struct Reader {
    client: Py<Client>,
    path: String,
    size: u64,
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
        Ok(Reader { size: r.len(), path, client: client.unbind(), open: Mutex::new((c, Arc::new(r))) })
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
}

impl Writer {
    pub fn create(client: Bound<'_, Client>, path: String, overwrite: bool, parents: bool) -> PyResult<Writer> {
        let py = client.py();
        let c = client.get().conn(py)?;
        let (c2, p) = (c.clone(), path.clone());
        let w = py
            .detach(move || c2.block_on(c2.fs().create(&p, CreateOptions { overwrite, parents, ..Default::default() })))
            .py_err()?;
        Ok(Writer { path, conn: c, w: Mutex::new(Some(w)) })
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
            if let Some(mut w) = self.w.lock().take() {
                c.block_on(w.abort());
            }
        });
        Ok(())
    }

    #[getter]
    fn closed(&self) -> bool {
        self.w.lock().is_none()
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
