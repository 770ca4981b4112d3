"""``Client``: the public client. Paths may be ``/a/b`` or ``cv://a/b``; IO
runs in Rust with the GIL released."""

import sys

from . import _curvine
from ._io import CurvineReader, CurvineWriter
from ._paths import norm


def _as_tensor(obj):
    """``obj`` if it is a torch tensor (without importing torch)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        return obj
    return None


class Client(_curvine.Client):
    """A connection to one Curvine cluster; see ``curvine.connect``.

    Safe to share between threads and to inherit across ``fork`` (a
    DataLoader worker reconnects on first use); picklable (the copy
    reconnects to the same meta address with the same threads, timeout
    and checksum setting)."""

    def __reduce__(self):
        return (_reconnect, (self.meta, self.threads, self.timeout, self.verify_checksums))

    def __repr__(self):
        return f"curvine.Client(meta={self.meta!r})"

    def stat(self, path):
        return super().stat(norm(path))

    def ls(self, path="/"):
        return super().ls(norm(path))

    def exists(self, path) -> bool:
        return super().exists(norm(path))

    def mkdir(self, path, parents=False, exist_ok=False):
        return super().mkdir(norm(path), parents, exist_ok)

    def rm(self, path, recursive=False) -> int:
        return super().rm(norm(path), recursive)

    def mv(self, src, dst):
        return super().mv(norm(src), norm(dst))

    def read(self, path, offset=0, length=None) -> bytes:
        return super().read(norm(path), offset, length)

    def read_view(self, path, offset=0, length=None) -> memoryview:
        """Bytes ``[offset, offset+length)`` as a read-only memoryview, in
        place (no copy) when they lie in one block cached in memory by a
        worker on this host, else read into new memory. Suits
        ``torch.frombuffer`` / ``numpy.frombuffer`` of large tensors."""
        return super().read_view(norm(path), offset, length)

    def read_many(self, paths, parallel=16) -> list:
        return super().read_many([norm(p) for p in paths], parallel)

    def write(self, path, data, overwrite=True, parents=True) -> int:
        return super().write(norm(path), data, overwrite, parents)

    def warm(self, path, wait=True, parallel=0, timeout=None) -> dict:
        return super().warm(norm(path), wait, parallel, timeout)

    def read_into(self, path, buffer, offset=0) -> int:
        """Fills ``buffer`` from file offset ``offset`` in place; returns the
        bytes read. ``buffer``: bytearray, memoryview, numpy array, mmap, or
        a contiguous torch tensor. A CUDA tensor is filled through pinned
        host buffers, two in flight, with async copies. A CPU tensor whose
        memory cannot be written (``torch.frombuffer`` over a read-only
        buffer such as ``read_view``) raises TypeError before any IO."""
        path = norm(path)
        t = _as_tensor(buffer)
        if t is None:
            return super().read_into(path, buffer, offset)
        if not t.is_contiguous():
            raise ValueError("read_into needs a contiguous tensor")
        nbytes = t.numel() * t.element_size()
        if t.device.type == "cpu":
            # The tensor outlives the call: the caller holds it.
            return self._read_into_addr(path, t.data_ptr(), nbytes, offset)
        from . import _staging

        return _staging.read_into_device(self, path, t, offset)

    def open(self, path, mode="rb"):
        """``mode`` "rb": a seekable ``io.RawIOBase``; "wb": a new file,
        complete at ``close()`` (replaces an existing one); "xb": the same,
        but FileExistsError if the path exists (checked atomically by the
        create). A writer dropped without ``close()`` is aborted."""
        path = norm(path)
        if mode in ("rb", "r"):
            return CurvineReader(self._open_reader(path))
        if mode in ("wb", "w"):
            return CurvineWriter(self._open_writer(path))
        if mode in ("xb", "x"):
            return CurvineWriter(self._open_writer(path, overwrite=False))
        raise ValueError(f"mode must be 'rb', 'wb' or 'xb', got {mode!r}")


def _reconnect(meta, threads=None, timeout=None, verify_checksums=True):
    return Client(meta, threads=threads, timeout=timeout, verify_checksums=verify_checksums)
