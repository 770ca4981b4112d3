//! `FileStatus`: what `stat` and `ls` return.

use curvine_client::{FileKind, FileStatus as Proto};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// A file's or directory's status. Times are seconds since the epoch.
#[pyclass(module = "curvine", name = "FileStatus", frozen, get_all)]
pub struct FileStatus {
    pub path: String,
    pub name: String,
    pub is_dir: bool,
    pub size: u64,
    pub mode: u32,
    pub mtime: f64,
    pub ctime: f64,
    pub block_size: u64,
    pub replication: u32,
    /// False while a writer still has the file open.
    pub complete: bool,
    /// Entries directly inside (directories).
    pub children: u64,
    pub id: u64,
}

impl From<Proto> for FileStatus {
    fn from(s: Proto) -> Self {
        FileStatus {
            is_dir: s.kind == FileKind::Dir as i32,
            path: s.path,
            name: s.name,
            size: s.len,
            mode: s.mode,
            mtime: s.mtime_ms as f64 / 1000.0,
            ctime: s.ctime_ms as f64 / 1000.0,
            block_size: s.block_size,
            replication: s.replication,
            complete: s.complete,
            children: s.children,
            id: s.id,
        }
    }
}

#[pymethods]
impl FileStatus {
    #[getter]
    fn is_file(&self) -> bool {
        !self.is_dir
    }

    /// fsspec's info dict: `name`, `size`, `type` ("file" | "directory"), and
    /// the rest of the fields.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("name", &self.path)?;
        d.set_item("size", self.size)?;
        d.set_item("type", if self.is_dir { "directory" } else { "file" })?;
        d.set_item("mode", self.mode)?;
        d.set_item("mtime", self.mtime)?;
        d.set_item("ctime", self.ctime)?;
        d.set_item("block_size", self.block_size)?;
        d.set_item("replication", self.replication)?;
        d.set_item("complete", self.complete)?;
        d.set_item("children", self.children)?;
        d.set_item("id", self.id)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        let kind = if self.is_dir { "dir" } else { "file" };
        format!("FileStatus(path={:?}, {kind}, size={})", self.path, self.size)
    }
}
