//! `curvine._curvine`: the native half of the `curvine` Python package.
//! The Python half (`python/curvine/`) builds the public API on it.

mod buffer;
mod client;
mod conn;
mod errors;
mod file;
mod par;
mod status;
mod view;

use pyo3::prelude::*;

#[pymodule]
fn _curvine(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Logs go to stderr, filtered by RUST_LOG (default: warnings only), the
    // same as the `cv` client commands.
    curvine_common::telemetry::init_logging("warn");
    m.add_class::<client::Client>()?;
    m.add_class::<file::Reader>()?;
    m.add_class::<view::MappedView>()?;
    m.add_class::<file::Writer>()?;
    m.add_class::<status::FileStatus>()?;
    m.add_function(wrap_pyfunction!(lock_memory, m)?)?;
    m.add_function(wrap_pyfunction!(error_for_kind, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

/// Page-locks `buffer`'s memory (`mlock`), so it stays resident and a DMA
/// engine can read it: the host side of the staged copies to a GPU when
/// CUDA's own pinned allocator is absent. Returns False when the process may
/// not lock that much memory (RLIMIT_MEMLOCK); the buffer still works, only
/// unpinned. The lock goes away when the memory is unmapped.
#[pyfunction]
fn lock_memory(buffer: &Bound<'_, PyAny>) -> PyResult<bool> {
    let b = buffer::Borrowed::writable(buffer)?;
    let raw = b.raw_mut();
    if raw.len == 0 {
        return Ok(true);
    }
    // SAFETY: the range is the exported buffer, valid while `b` lives;
    // mlock only changes residency, never contents.
    let r = unsafe { libc::mlock(raw.ptr as *const libc::c_void, raw.len) };
    Ok(r == 0)
}

/// The exception a Curvine error of kind `code` (`ErrorKind` number)
/// becomes; lets the tests check the mapping of every kind, including the
/// ones a healthy test cluster never produces.
#[pyfunction]
fn error_for_kind(code: u16, message: String) -> PyErr {
    let kind = curvine_common::ErrorKind::from_code(code);
    errors::to_py(curvine_common::Error::new(kind, message))
}
