//! Borrowing the memory of Python objects (bytes, bytearray, memoryview,
//! numpy arrays, mmap, …) through the buffer protocol, so reads land in the
//! caller's memory and writes leave from it without a copy.
//!
//! The exported buffer pins the object's memory (a `bytearray` cannot be
//! resized while exported), which is what makes it safe to fill it with the
//! GIL released.

use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::{PyBufferError, PyTypeError};
use pyo3::prelude::*;

/// A raw, `Send` view of memory whose owner outlives the IO: either an
/// exported Python buffer held by the caller, or memory the caller vouches
/// for (`read_into` on a torch tensor's `data_ptr()`).
#[derive(Clone, Copy)]
pub struct RawMut {
    pub ptr: *mut u8,
    pub len: usize,
}

// SAFETY: the memory behind a `RawMut` is only touched by the one IO call it
// was made for, while its owner is kept alive by that call's caller.
unsafe impl Send for RawMut {}
unsafe impl Sync for RawMut {}

impl RawMut {
    /// # Safety
    /// The memory must be valid for writes of `len` bytes and not be used by
    /// anything else until the returned slice is dropped.
    pub unsafe fn slice<'a>(self) -> &'a mut [u8] {
        if self.len == 0 {
            return &mut [];
        }
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

/// A read-only counterpart for writes.
#[derive(Clone, Copy)]
pub struct RawRef {
    pub ptr: *const u8,
    pub len: usize,
}

// SAFETY: as for `RawMut`.
unsafe impl Send for RawRef {}
unsafe impl Sync for RawRef {}

impl RawRef {
    /// # Safety
    /// The memory must be valid for reads of `len` bytes and not be written
    /// while the returned slice lives.
    pub unsafe fn slice<'a>(self) -> &'a [u8] {
        if self.len == 0 {
            return &[];
        }
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// An exported buffer; released (under the GIL) when dropped.
pub struct Borrowed {
    buf: PyUntypedBuffer,
}

impl Borrowed {
    fn get(obj: &Bound<'_, PyAny>) -> PyResult<Borrowed> {
        let buf = PyUntypedBuffer::get(obj).map_err(|_| {
            PyTypeError::new_err(format!(
                "expected a buffer (bytes, bytearray, memoryview, numpy array, torch tensor), got {}",
                type_name(obj)
            ))
        })?;
        if !buf.is_c_contiguous() {
            return Err(PyBufferError::new_err("buffer is not C-contiguous; pass a contiguous array"));
        }
        Ok(Borrowed { buf })
    }

    /// A writable, C-contiguous buffer.
    pub fn writable(obj: &Bound<'_, PyAny>) -> PyResult<Borrowed> {
        let b = Self::get(obj)?;
        if b.buf.readonly() {
            return Err(PyTypeError::new_err(format!("{} is read-only; pass a writable buffer", type_name(obj))));
        }
        Ok(b)
    }

    /// Any C-contiguous buffer, for writing its bytes out.
    pub fn readable(obj: &Bound<'_, PyAny>) -> PyResult<Borrowed> {
        Self::get(obj)
    }

    pub fn len(&self) -> usize {
        self.buf.len_bytes()
    }

    pub fn raw_mut(&self) -> RawMut {
        RawMut { ptr: self.buf.buf_ptr() as *mut u8, len: self.len() }
    }

    pub fn raw(&self) -> RawRef {
        RawRef { ptr: self.buf.buf_ptr() as *const u8, len: self.len() }
    }
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "object".into())
}
