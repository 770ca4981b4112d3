//! `MappedView`: the bytes of a cached block exposed in place through the
//! buffer protocol (read-only), so `memoryview(view)`, `numpy.frombuffer`
//! and `torch.frombuffer` see the worker's tmpfs pages without a copy. The
//! object keeps the client's mapping alive; the bytes were checked against
//! their crcs when the view was made and cannot change (sealed MEM blocks).

use std::ffi::{c_int, c_void};

use curvine_client::MappedRange;
use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;

#[pyclass(frozen, module = "curvine._curvine")]
pub struct MappedView {
    pub range: MappedRange,
}

#[pymethods]
impl MappedView {
    fn __len__(&self) -> usize {
        self.range.bytes().len()
    }

    /// # Safety
    /// Called by Python with a valid `Py_buffer` to fill.
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("no Py_buffer to fill"));
        }
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err("a cached block's view is read-only"));
        }
        let bytes = slf.get().range.bytes();
        // SAFETY: `view` is valid (checked above); the exported pointer
        // stays valid while `obj` (this object, which owns the mapping) is
        // referenced by the buffer.
        unsafe {
            (*view).obj = slf.clone().into_any().into_ptr();
            (*view).buf = bytes.as_ptr() as *mut c_void;
            (*view).len = bytes.len() as ffi::Py_ssize_t;
            (*view).readonly = 1;
            (*view).itemsize = 1;
            (*view).format = if flags & ffi::PyBUF_FORMAT == ffi::PyBUF_FORMAT {
                c"B".as_ptr() as *mut _
            } else {
                std::ptr::null_mut()
            };
            (*view).ndim = 1;
            (*view).shape =
                if flags & ffi::PyBUF_ND == ffi::PyBUF_ND { &mut (*view).len } else { std::ptr::null_mut() };
            (*view).strides = if flags & ffi::PyBUF_STRIDES == ffi::PyBUF_STRIDES {
                &mut (*view).itemsize
            } else {
                std::ptr::null_mut()
            };
            (*view).suboffsets = std::ptr::null_mut();
            (*view).internal = std::ptr::null_mut();
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {}
}
