"""``torch.distributed.checkpoint`` storage on Curvine.

These reuse torch's file layout (one file per rank and write bucket plus a
``.metadata`` file written by the coordinator) and swap the local file
system for Curvine: each rank streams its own files to the workers, so
ranks write in parallel and a rank's files are complete or absent.

Saving over an existing checkpoint directory removes its ``.metadata``
before any rank writes, and the new one is renamed into place only after
every rank's files are complete (torch's ``finish``): a save that fails
midway leaves a directory without ``.metadata``, which ``dcp.load`` refuses,
never an old ``.metadata`` over a mix of old and new files.
"""

import contextlib
import io
import posixpath

from torch.distributed.checkpoint.filesystem import FileSystemBase, FileSystemReader, FileSystemWriter

from .._paths import PREFIX, norm

#: Files up to this size are read whole, in one call, when loading.
WHOLE_FILE = 1 << 30


class _CurvineFS(FileSystemBase):
    def __init__(self, client):
        self.client = client

    @contextlib.contextmanager
    def create_stream(self, path, mode):
        path = norm(path)
        if "w" in mode:
            f = self.client.open(path, "wb")
            try:
                yield f
            except BaseException:
                f.abort()
                raise
            f.close()
        else:
            if self.client.stat(path).size <= WHOLE_FILE:
                # One read, GIL released, instead of many small seeks.
                yield io.BytesIO(self.client.read(path))
            else:
                with io.BufferedReader(self.client.open(path, "rb"), 8 << 20) as f:
                    yield f

    def concat_path(self, path, suffix):
        return posixpath.join(norm(path), suffix)

    def init_path(self, path, **kwargs):
        return norm(path)

    def rename(self, path, new_path):
        self.client.mv(norm(path), norm(new_path))

    def mkdir(self, path):
        self.client.mkdir(norm(path), parents=True, exist_ok=True)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id):
        return isinstance(checkpoint_id, str) and checkpoint_id.startswith(PREFIX)

    def exists(self, path):
        return self.client.exists(norm(path))

    def rm_file(self, path):
        self.client.rm(norm(path))

    def ls(self, path):
        return [s.path for s in self.client.ls(norm(path))]


def _client(client):
    from . import _client as default

    return default(client)


class StorageWriter(FileSystemWriter):
    """``dcp.save(state_dict, storage_writer=StorageWriter("cv://ckpt/step-10"))``.

    ``thread_count`` files per rank are written at once. There is no fsync
    to ask for: a Curvine file is durable on its worker when ``close``
    returns."""

    def __init__(self, path, *, client=None, single_file_per_rank=True, thread_count=1,
                 per_thread_copy_ahead=10_000_000, overwrite=True):
        super().__init__(path=norm(path), single_file_per_rank=single_file_per_rank, sync_files=False,
                         thread_count=thread_count, per_thread_copy_ahead=per_thread_copy_ahead,
                         overwrite=overwrite)
        self.fs = _CurvineFS(_client(client))
        self.path = self.fs.init_path(path)

    def prepare_global_plan(self, plans):
        """Removes the ``.metadata`` of a checkpoint already in the
        directory, then plans as torch does. torch runs this on the
        coordinator after every rank's local plan (which checked
        ``overwrite``) and before any rank writes (they wait for its plan),
        so the old metadata cannot outlive the files it describes: it would
        otherwise stay loadable until ``finish`` replaces it, over data files
        the new save is rewriting."""
        per_rank = not getattr(self, "use_collectives", True) and getattr(self, "rank", None) is not None
        md = self._get_metadata_path(self.rank if per_rank else None)
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(md)
        return super().prepare_global_plan(plans)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id):
        return _CurvineFS.validate_checkpoint_id(checkpoint_id)


class StorageReader(FileSystemReader):
    """``dcp.load(state_dict, storage_reader=StorageReader("cv://ckpt/step-10"))``."""

    def __init__(self, path, *, client=None):
        super().__init__(norm(path))
        self.fs = _CurvineFS(_client(client))
        self.path = self.fs.init_path(path)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id):
        return _CurvineFS.validate_checkpoint_id(checkpoint_id)
