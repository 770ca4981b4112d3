"""Curvine's Python client.

    import curvine
    cv = curvine.connect()                 # $CURVINE_META or 127.0.0.1:8995
    cv.write("/data/a.bin", b"...")
    data = cv.read("cv://data/a.bin")
    cv.read_into("/data/a.bin", numpy_array)

Submodules: ``curvine.fsspec`` (the ``cv://`` protocol), ``curvine.torch``
(datasets), ``curvine.checkpoint`` (safetensors and
torch.distributed.checkpoint)."""

from ._curvine import FileStatus, __version__, lock_memory
from ._client import Client

__all__ = ["connect", "Client", "FileStatus", "lock_memory", "__version__"]


def connect(meta=None, *, threads=None, timeout=None, verify_checksums=True, check=True) -> Client:
    """A client for the cluster whose meta service is at ``meta``
    (``HOST:PORT``, comma-separated for several); default ``$CURVINE_META``,
    then ``127.0.0.1:8995``. With ``check`` (default) the meta service is
    asked once now, so a wrong address fails here with ConnectionError."""
    c = Client(meta, threads=threads, timeout=timeout, verify_checksums=verify_checksums)
    if check:
        c.exists("/")
    return c
