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

/// `madvise` advice that faults a range in writable (Linux 5.14+); failing
/// means a page is not writable, not mapped, or the kernel is older.
const MADV_POPULATE_WRITE: libc::c_int = 23;

/// Checks that `raw` is mapped writable before native code writes to it,
/// so memory the caller vouches for but cannot be written (a tensor made by
/// `torch.frombuffer` over a read-only mapping, such as a `read_view`)
/// raises TypeError instead of killing the process with SIGSEGV.
///
/// `MADV_POPULATE_WRITE` answers in one call and faults the pages in as the
/// read would; when it fails for any reason, the kernel is asked to write
/// one byte per page from /dev/zero, which reports EFAULT (or a short count)
/// for a page that cannot be written instead of faulting. That probe zeroes
/// the first byte of each page, which the read overwrites anyway.
pub fn check_writable(raw: RawMut) -> PyResult<()> {
    if raw.len == 0 {
        return Ok(());
    }
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => 4096,
    };
    let start = raw.ptr as usize;
    let end = start.checked_add(raw.len).ok_or_else(|| PyTypeError::new_err("address range overflows"))?;
    let aligned = start & !(page - 1);
    // SAFETY: madvise never touches memory the process cannot write; on a
    // bad range it returns an error.
    if unsafe { libc::madvise(aligned as *mut libc::c_void, end - aligned, MADV_POPULATE_WRITE) } == 0 {
        return Ok(());
    }
    if probe_pages(start, end, page) {
        return Ok(());
    }
    Err(PyTypeError::new_err(format!(
        "destination memory at {start:#x} ({} bytes) is not writable (a read-only mapping such as a tensor over \
         read_view or a read-only buffer); read into a writable tensor",
        raw.len
    )))
}

/// Whether the kernel can write the first byte of every page of
/// `[start, end)` (one byte per page, read from /dev/zero). True when
/// /dev/zero cannot be opened: the check is then skipped.
fn probe_pages(start: usize, end: usize, page: usize) -> bool {
    // SAFETY: plain syscalls; the kernel validates every address given to
    // readv and fails instead of faulting.
    unsafe {
        let fd = libc::open(c"/dev/zero".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return true;
        }
        let mut ok = true;
        let mut addr = start;
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(1024);
        while ok && addr < end {
            iov.clear();
            // IOV_MAX (1024) pages per call.
            while iov.len() < 1024 && addr < end {
                iov.push(libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: 1 });
                addr = (addr & !(page - 1)) + page;
            }
            loop {
                let n = libc::readv(fd, iov.as_ptr(), iov.len() as libc::c_int);
                if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                ok = n == iov.len() as isize;
                break;
            }
        }
        libc::close(fd);
        ok
    }
}
