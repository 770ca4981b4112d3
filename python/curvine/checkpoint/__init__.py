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

import json
import os
import struct

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
    plain values) to ``path`` as safetensors; returns the file size. The
    file appears complete or not at all. ``metadata``: extra str→str
    entries for the header."""
    client = _client(client)
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
    with client.open(norm(path), "wb") as f:  # an exception aborts the file
        f.write(head)
        for _, t, n in layout:
            if n:
                # The tensor's own memory goes to the socket: no copy.
                f.write(flat_bytes(t).numpy())
                size += n
    return size


def read_header(path, *, client=None):
    """``(tensor_entries, metadata, data_start, file_size)`` of a
    safetensors file on Curvine."""
    client = _client(client)
    path = norm(path)
    size = client.stat(path).size
    prefix = client.read(path, 0, min(size, 1 << 20))
    if len(prefix) >= 8:
        (n,) = struct.unpack("<Q", prefix[:8])
        if 8 + n > len(prefix) and 8 + n <= size:
            prefix = client.read(path, 0, 8 + n)
    h, start = _format.parse_header(prefix, path)
    md = h.pop("__metadata__", None) or {}
    for name, e in h.items():
        b, end = e["data_offsets"]
        if e["dtype"] not in _format.CODES:
            raise ValueError(f"{path}: {name}: unsupported dtype {e['dtype']}")
        if not 0 <= b <= end <= size - start:
            raise ValueError(f"{path}: {name}: data_offsets {b}..{end} outside the file")
    return h, md, start, size


def load(path, device="cpu", *, client=None, staged=None, chunk=CHUNK):
    """Reads a checkpoint written by ``save`` (or any safetensors file) with
    every tensor on ``device``. CUDA devices go through pinned buffers and
    async copies; ``staged=True`` takes that path on the CPU too."""
    client = _client(client)
    path = norm(path)
    device = torch.device(device)
    entries, md, start, _ = read_header(path, client=client)
    tensors = {}
    items = []
    for name, e in sorted(entries.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        dtype = _format.CODES[e["dtype"]]
        t = torch.empty(e["shape"], dtype=dtype, device=device)
        b, end = e["data_offsets"]
        n = t.numel() * t.element_size()
        if n != end - b:
            raise ValueError(f"{path}: {name}: {end - b} bytes on file for {n} in shape {e['shape']}")
        tensors[name] = t
        if n:
            items.append((start + b, flat_bytes(t)))
    if staged is None:
        staged = device.type != "cpu"
    if staged:
        Stager(device, chunk).run(client, path, items)
    else:
        ranges = []
        for off, dst in items:
            for p in range(0, dst.numel(), PIECE):
                piece = dst[p:p + PIECE]
                ranges.append((off + p, piece.data_ptr(), piece.numel()))
        client._read_ranges(path, ranges)
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
