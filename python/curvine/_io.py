"""File objects for ``Client.open``: ``io.RawIOBase`` over the native
reader/writer. Reads land straight in the caller's buffer (``readinto``) or
in a new ``bytes`` (``read``) without an intermediate copy."""

import io
import os


class CurvineReader(io.RawIOBase):
    """A Curvine file open for reading: seekable, positional, any size."""

    def __init__(self, native):
        super().__init__()
        self._f = native
        self._pos = 0
        self.name = native.path
        self.mode = "rb"

    @property
    def size(self) -> int:
        return self._f.size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self._checkClosed()
        n = self._f.readinto_at(self._pos, buffer)
        self._pos += n
        return n

    def read(self, size=-1) -> bytes:
        self._checkClosed()
        if size is None or size < 0:
            size = max(0, self._f.size - self._pos)
        data = self._f.read_at(self._pos, size)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._checkClosed()
        if whence == os.SEEK_SET:
            pos = offset
        elif whence == os.SEEK_CUR:
            pos = self._pos + offset
        elif whence == os.SEEK_END:
            pos = self._f.size + offset
        else:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def tell(self) -> int:
        self._checkClosed()
        return self._pos

    def __repr__(self):
        return f"<curvine reader {self.name!r} pos={self._pos} size={self._f.size}>"


class CurvineWriter(io.RawIOBase):
    """A new Curvine file. It becomes complete at ``close()``; leaving a
    ``with`` block by an exception aborts it instead, and so does dropping
    the writer without ``close()`` (garbage collection), so a failed or
    forgotten writer never leaves a truncated file behind."""

    def __init__(self, native):
        super().__init__()
        self._f = native
        self._pos = 0
        self.name = native.path
        self.mode = "wb"

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._checkClosed()
        n = self._f.write(data)
        self._pos += n
        return n

    def tell(self) -> int:
        self._checkClosed()
        return self._pos

    def close(self) -> None:
        if not self.closed:
            try:
                self._f.close()
            finally:
                super().close()

    def abort(self) -> None:
        """Drops the file being written."""
        if not self.closed:
            try:
                self._f.abort()
            finally:
                super().close()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    def __del__(self):
        # IOBase's finalizer would close(), i.e. publish whatever was written
        # so far; only an explicit close() completes the file.
        try:
            if not self.closed:
                self.abort()
        except Exception:
            pass

    def __repr__(self):
        return f"<curvine writer {self.name!r} written={self._pos}>"
