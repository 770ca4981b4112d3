"""``cv://`` for fsspec, pandas and pyarrow.

Registered through the ``fsspec.specs`` entry point, so after installing the
package ``fsspec.open("cv://data/x.parquet")``,
``pandas.read_parquet("cv://data/x.parquet")`` and
``pyarrow.dataset.dataset("cv://data/", filesystem=...)`` work. The meta
address comes from ``storage_options={"meta": "HOST:PORT"}`` or
``$CURVINE_META``. Paths are absolute Curvine paths (``/data/x``).

Writes: a file opened with ``fs.open(path, "wb")`` is complete at
``close()``, and leaving ``with fs.open(...) as f:`` by an exception aborts
it. ``with fsspec.open(url, "wb") as f:`` is different: fsspec's ``OpenFile``
closes (so completes) the file even when its block raises. For
all-or-nothing writes there use a transaction (``with fs.transaction:``) or
``autocommit=False``: the bytes go to a hidden temporary file next to the
target, ``commit()`` renames it over the target in one atomic step and
``discard()`` (a transaction left by an exception) removes it.
"""

import io
import os
import posixpath
import uuid

from fsspec.spec import AbstractFileSystem

from ._io import CurvineWriter
from ._paths import PREFIX, norm

#: Read buffer of files opened through fsspec: parquet readers ask for many
#: small pieces (footers, column chunks) and each unbuffered read is a round
#: trip.
READ_BUFFER = 4 << 20


class _DeferredWriter(CurvineWriter):
    """A write with ``autocommit=False``: bytes go to a hidden temporary
    file in the target's directory; ``commit()`` closes it and renames it
    over the target (atomic), ``discard()`` drops it."""

    def __init__(self, client, target):
        parent, name = posixpath.split(target)
        tmp = posixpath.join(parent, f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}")
        super().__init__(client._open_writer(tmp, overwrite=False))
        self._client = client
        self._tmp = tmp
        self.name = target

    def commit(self):
        self.close()
        self._client.mv(self._tmp, self.name)

    def discard(self):
        if not self.closed:
            self.abort()
            return
        try:
            self._client.rm(self._tmp)
        except FileNotFoundError:
            pass


class CurvineFileSystem(AbstractFileSystem):
    protocol = ("cv",)
    root_marker = "/"

    def __init__(self, meta=None, client=None, **kwargs):
        super().__init__(**kwargs)
        if client is None:
            from . import connect

            client = connect(meta)
        self.client = client

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        return norm(path)

    def unstrip_protocol(self, name):
        return PREFIX + norm(name)

    @staticmethod
    def _get_kwargs_from_urls(path):
        return {}

    def _info(self, status):
        return status.to_dict()

    def ls(self, path, detail=True, **kwargs):
        path = self._strip_protocol(path)
        s = self.client.stat(path)
        entries = self.client.ls(path) if s.is_dir else [s]
        if detail:
            return [self._info(e) for e in entries]
        return [e.path for e in entries]

    def info(self, path, **kwargs):
        return self._info(self.client.stat(self._strip_protocol(path)))

    def exists(self, path, **kwargs):
        return self.client.exists(self._strip_protocol(path))

    def mkdir(self, path, create_parents=True, **kwargs):
        self.client.mkdir(self._strip_protocol(path), parents=create_parents, exist_ok=False)

    def makedirs(self, path, exist_ok=False):
        self.client.mkdir(self._strip_protocol(path), parents=True, exist_ok=exist_ok)

    def rmdir(self, path):
        self.client.rm(self._strip_protocol(path))

    def rm_file(self, path):
        self.client.rm(self._strip_protocol(path))

    def _rm(self, path):
        self.client.rm(self._strip_protocol(path))

    def rm(self, path, recursive=False, maxdepth=None):
        if isinstance(path, list):
            for p in path:
                self.rm(p, recursive=recursive, maxdepth=maxdepth)
            return
        self.client.rm(self._strip_protocol(path), recursive=recursive)

    def mv(self, path1, path2, recursive=False, maxdepth=None, **kwargs):
        # One atomic rename, files and directories alike.
        self.client.mv(self._strip_protocol(path1), self._strip_protocol(path2))

    rename = mv

    def cat_file(self, path, start=None, end=None, **kwargs):
        path = self._strip_protocol(path)
        if start is None and end is None:
            return self.client.read(path)
        size = self.client.stat(path).size
        start = 0 if start is None else (start if start >= 0 else max(0, size + start))
        end = size if end is None else (end if end >= 0 else max(0, size + end))
        return self.client.read(path, start, max(0, min(end, size) - start))

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        overwrite = mode != "create"
        if self._intrans and overwrite:
            # Deferred to the transaction's commit like any other write.
            with self.open(path, "wb") as f:
                f.write(value)
            return
        self.client.write(self._strip_protocol(path), value, overwrite=overwrite)

    def cp_file(self, path1, path2, **kwargs):
        self.client.write(self._strip_protocol(path2), self.client.read(self._strip_protocol(path1)))

    def modified(self, path):
        import datetime

        s = self.client.stat(self._strip_protocol(path))
        return datetime.datetime.fromtimestamp(s.mtime, tz=datetime.timezone.utc)

    created = modified

    def ukey(self, path):
        s = self.client.stat(self._strip_protocol(path))
        return f"{s.id}-{s.size}-{s.mtime}"

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        path = self._strip_protocol(path)
        if "r" in mode:
            raw = self.client.open(path, "rb")
            f = io.BufferedReader(raw, buffer_size=block_size or READ_BUFFER)
            f.size = raw.size  # pyarrow and fsspec helpers look for it
            return f
        if "w" in mode or "x" in mode:
            if not autocommit:
                if "x" in mode:
                    # The commit's rename would replace a file created meanwhile.
                    raise ValueError("exclusive create ('x') cannot be deferred to a commit: use autocommit=True")
                return _DeferredWriter(self.client, path)
            # "x": the create itself refuses an existing path (EEXIST).
            return self.client.open(path, "xb" if "x" in mode else "wb")
        raise ValueError(f"unsupported mode {mode!r} (Curvine files are written once: rb, wb, xb)")
