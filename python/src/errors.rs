//! Curvine errors as Python's own exceptions.
//!
//! `OSError(errno, message)` already picks the built-in subclass for the
//! errno (ENOENT → FileNotFoundError, EEXIST → FileExistsError, ENOTDIR →
//! NotADirectoryError, EISDIR → IsADirectoryError, EACCES →
//! PermissionError, ETIMEDOUT → TimeoutError), so callers can catch either
//! the subclass or `OSError` and read `.errno`. Two kinds need a hand:
//! `Unavailable` and `NotLeader` map to EAGAIN, which Python would turn into
//! the misleading `BlockingIOError` (a non-blocking call that would block);
//! both mean the cluster could not be reached or asked right now, so they
//! become `ConnectionError` (errno still EAGAIN).

use curvine_common::{Error, ErrorKind};
use pyo3::exceptions::{PyConnectionError, PyOSError};
use pyo3::PyErr;

pub fn to_py(e: Error) -> PyErr {
    let errno = e.kind().errno();
    let msg = e.message().to_string();
    match e.kind() {
        ErrorKind::Unavailable | ErrorKind::NotLeader => PyConnectionError::new_err((errno, msg)),
        _ => PyOSError::new_err((errno, msg)),
    }
}

/// `?`-friendly conversion: `result.map_err(to_py)` at every boundary.
pub trait IntoPy<T> {
    fn py_err(self) -> pyo3::PyResult<T>;
}

impl<T> IntoPy<T> for Result<T, Error> {
    fn py_err(self) -> pyo3::PyResult<T> {
        self.map_err(to_py)
    }
}
