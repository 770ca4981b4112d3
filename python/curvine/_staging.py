"""Reads into device memory through pinned host buffers.

A GPU cannot take bytes from a socket, so reads for a CUDA tensor land in
page-locked ("pinned") host buffers first and go on with asynchronous
host-to-device copies. Two buffers alternate: while the copy engine drains
one, the next read fills the other, so network and PCIe transfers overlap.
Without CUDA the same code runs with synchronous copies and page-locked
buffers of our own (``mlock``), which is how the tests exercise it on CPU.
"""

import mmap

import torch

from . import _curvine
from ._paths import norm

#: Bytes per staging buffer: large enough that per-read and per-copy
#: overheads vanish, small enough that two fit anywhere.
CHUNK = 16 << 20


def pinned_empty(nbytes: int) -> torch.Tensor:
    """A uint8 tensor of ``nbytes`` in page-locked host memory."""
    if torch.cuda.is_available():
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    # An anonymous mapping of its own, so the lock ends when the tensor (and
    # with it the mapping) is freed instead of outliving it in malloc's pool.
    mm = mmap.mmap(-1, max(nbytes, 1))
    t = torch.frombuffer(mm, dtype=torch.uint8)[:nbytes]
    _curvine.lock_memory(mm)
    return t


def flat_bytes(t: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor's memory as a 1-D uint8 view (no copy)."""
    if not t.is_contiguous():
        raise ValueError("expected a contiguous tensor")
    return t.reshape(-1).view(torch.uint8)


class Stager:
    """Two pinned buffers and, on CUDA, a copy stream with one event per
    buffer telling when that buffer may be refilled."""

    def __init__(self, device: torch.device, chunk: int = CHUNK):
        self.device = device
        self.chunk = chunk
        self.bufs = [pinned_empty(chunk), pinned_empty(chunk)]
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.events = [torch.cuda.Event(), torch.cuda.Event()] if self.cuda else [None, None]

    def run(self, reader, items) -> int:
        """Copies ranges of the file open in ``reader`` (a native reader,
        ``Client._open_reader``) into tensors: ``items`` is a list of
        ``(file_offset, dst)`` with ``dst`` a 1-D uint8 tensor on the
        device; ranges are read in file order. Returns the bytes copied."""
        windows = _windows(sorted(items, key=lambda it: it[0]), self.chunk)
        total = 0
        if self.cuda:
            # The destinations may have just been allocated or written on the
            # caller's stream: order the copy stream after that work.
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
        for k, (start, length, pieces) in enumerate(windows):
            i = k % 2
            buf = self.bufs[i]
            if self.events[i] is not None:
                # The copy that last read this buffer must be done before
                # the next read overwrites it.
                self.events[i].synchronize()
            got = reader._read_into_addr(buf.data_ptr(), length, start)
            if got != length:
                raise OSError(5, f"{reader.path}: read {got} of {length} bytes at {start}")
            if self.cuda:
                with torch.cuda.stream(self.stream):
                    for src_off, dst in pieces:
                        dst.copy_(buf[src_off:src_off + dst.numel()], non_blocking=True)
                    self.events[i].record(self.stream)
            else:
                for src_off, dst in pieces:
                    dst.copy_(buf[src_off:src_off + dst.numel()])
            total += sum(dst.numel() for _, dst in pieces)
        if self.cuda:
            # Work queued later on the caller's stream sees the data.
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return total


def _windows(items, chunk):
    """Groups ``(file_offset, dst)`` ranges into reads of at most ``chunk``
    bytes: ``(start, length, [(offset_in_buffer, dst_piece), ...])``. Long
    ranges are split; neighbouring short ones share a read."""
    pieces = []
    for off, dst in items:
        n = dst.numel()
        for p in range(0, n, chunk):
            pieces.append((off + p, dst[p:p + chunk]))
    out = []
    cur = None
    for off, dst in pieces:
        end = off + dst.numel()
        if cur is not None and off >= cur[0] and end - cur[0] <= chunk:
            cur[2].append((off - cur[0], dst))
            cur[1] = max(cur[1], end - cur[0])
        else:
            cur = [off, end - off, [(0, dst)]]
            out.append(cur)
    return [tuple(w) for w in out]


def read_into_device(client, path, tensor: torch.Tensor, offset: int = 0, chunk: int = CHUNK) -> int:
    """``Client.read_into`` for a tensor on a device (or, to exercise the
    path, on the CPU): staged through two pinned buffers."""
    path = norm(path)
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    dst = flat_bytes(tensor)
    reader = client._open_reader(path)
    n = max(0, min(dst.numel(), reader.size - offset))
    if n == 0:
        return 0
    stager = Stager(tensor.device, min(chunk, n))
    return stager.run(reader, [(offset, dst[:n])])
