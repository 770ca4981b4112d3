"""Checkpoints on Curvine.

``save(state_dict, path)`` writes one safetensors file (non-tensor entries
in its metadata) that ``safetensors.torch.load_file`` reads after
``cv fs get``; ``load(path, device=...)`` reads every tensor straight into
its preallocated destination: on the CPU by parallel ranged reads into the
tensors' own memory, on a GPU through two pinned host buffers with async
copies. ``StorageWriter``/``StorageReader`` plug into
``torch.distributed.checkpoint.save/load``; each rank writes its own files,
so ranks write to Curvine in parallel.
"""

import contextlib
import json
import math
import os
import posixpath
import struct
import uuid

import torch

from .._paths import norm
from .._staging import CHUNK, Stager, flat_bytes
from . import _format

__all__ = ["save", "load", "StorageWriter", "StorageReader"]

#: Bytes per ranged read when loading into CPU tensors: big tensors are split
#: so that several reads run at once.
PIECE = 8 << 20

_clients = {}


def _client(client):
    """The given client, else one per process for ``$CURVINE_META``."""
    if client is not None:
        return client
    from .. import connect

    key = (os.getpid(), os.environ.get("CURVINE_META"))
    if key not in _clients:
        _clients[key] = connect()
    return _clients[key]


def save(state_dict, path, *, metadata=None, client=None) -> int:
    """Writes ``state_dict`` (tensors on any device, nested dicts/lists,
    plain values) to ``path`` as safetensors; returns the file size.
    ``metadata``: extra str→str entries for the header.

    The file appears complete or not at all, and a checkpoint already at
    ``path`` stays whole until the new one replaces it: the bytes go to a
    hidden temporary file in the same directory
    (``.NAME.tmp-PID-RANDOM``), which one atomic rename puts over ``path``
    once it is complete. A save that fails removes its temporary file; one
    whose process is killed leaves it behind, incomplete (``load`` refuses
    it), for the caller to remove."""
    client = _client(client)
    path = norm(path)
    parent, fname = posixpath.split(path)
    if not fname:
        raise ValueError("cannot save a checkpoint as /")
    tensors, tree = _format.flatten(state_dict)
    cpu = {}
    for name, t in tensors.items():
        t = t.detach()
        if t.device.type != "cpu":
            t = t.to("cpu")
        cpu[name] = t.contiguous()
    md = {_format.FORMAT_KEY: "pt"}
    if tree is not None:
        md[_format.TREE_KEY] = json.dumps(tree, separators=(",", ":"))
    for k, v in (metadata or {}).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"metadata must map str to str, got {k!r}: {type(v).__name__}")
        md[k] = v
    head, layout = _format.header(cpu, md)
    size = len(head)
    tmp = posixpath.join(parent, f".{fname}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}")
    with client.open(tmp, "xb") as f:  # an exception aborts (removes) the file
        f.write(head)
        for _, t, n in layout:
            if n:
                # The tensor's own memory goes to the socket: no copy.
                f.write(flat_bytes(t).numpy())
                size += n
    try:
        client.mv(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            client.rm(tmp)
        raise
    return size


def read_header(path, *, client=None):
    """``(tensor_entries, metadata, data_start, file_size)`` of a
    safetensors file on Curvine. Every entry is checked against the file
    (dtype known, shape's bytes equal to its byte range, range inside the
    file); an incomplete file (still being written, or left by a killed
    writer) raises ValueError."""
    client = _client(client)
    path = norm(path)
    return _read_header(_open(client, path), path)


def _open(client, path):
    """The file opened once for reading, refused when incomplete: every
    later read comes from this version of it, so a save renaming a new file
    over the path meanwhile makes them fail instead of mixing two files."""
    r = client._open_reader(path)
    if not r.status.complete:
        raise ValueError(f"{path}: incomplete file (a writer still has it open, or died before finishing it); "
                         "not a checkpoint")
    return r


def _read_header(r, path):
    size = r.size
    prefix = r.read_at(0, min(size, 1 << 20))
    if len(prefix) >= 8:
        (n,) = struct.unpack("<Q", prefix[:8])
        if 8 + n > len(prefix) and 8 + n <= size:
            prefix = r.read_at(0, 8 + n)
    h, start = _format.parse_header(prefix, path)
    md = h.pop("__metadata__", None) or {}
    if not isinstance(md, dict):
        raise ValueError(f"{path}: bad safetensors header: __metadata__ is not a dict")
    for name, e in h.items():
        try:
            code, shape, (b, end) = e["dtype"], e["shape"], e["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise ValueError(f"{path}: {name}: bad safetensors entry {e!r}") from None
        dtype = _format.CODES.get(code) if isinstance(code, str) else None
        if dtype is None:
            raise ValueError(f"{path}: {name}: unsupported dtype {code!r}")
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                for d in shape)):
            raise ValueError(f"{path}: {name}: bad shape {shape!r}")
        if not (isinstance(b, int) and isinstance(end, int) and 0 <= b <= end <= size - start):
            raise ValueError(f"{path}: {name}: data_offsets {b}..{end} outside the file")
        n = math.prod(shape) * dtype.itemsize
        if n != end - b:
            raise ValueError(f"{path}: {name}: {end - b} bytes on file for {n} in shape {shape}")
    return h, md, start, size


def load(path, device="cpu", *, client=None, staged=None, chunk=CHUNK):
    """Reads a checkpoint written by ``save`` (or any safetensors file) with
    every tensor on ``device``. CUDA devices go through pinned buffers and
    async copies; ``staged=True`` takes that path on the CPU too. The
    header and every tensor come from one open of the file, so a ``save``
    replacing it meanwhile makes this fail rather than mix two files; sizes
    are checked against the header before anything is allocated."""
    client = _client(client)
    path = norm(path)
    device = torch.device(device)
    r = _open(client, path)
    entries, md, start, _ = _read_header(r, path)
    tensors = {}
    items = []
    for name, e in sorted(entries.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        t = torch.empty(e["shape"], dtype=_format.CODES[e["dtype"]], device=device)
        b, end = e["data_offsets"]
        n = end - b
        tensors[name] = t
        if n:
            items.append((start + b, flat_bytes(t)))
    if staged is None:
        staged = device.type != "cpu"
    if staged:
        Stager(device, chunk).run(r, items)
    else:
        ranges = []
        for off, dst in items:
            for p in range(0, dst.numel(), PIECE):
                piece = dst[p:p + PIECE]
                ranges.append((off + p, piece.data_ptr(), piece.numel()))
        r._read_ranges(ranges)
    tree = md.get(_format.TREE_KEY)
    if tree is None:
        return tensors
    return _format.unflatten(json.loads(tree), tensors)


def __getattr__(name):
    # torch.distributed is imported only by those who use it.
    if name in ("StorageWriter", "StorageReader"):
        from . import _dcp

        return getattr(_dcp, name)
    raise AttributeError(name)
