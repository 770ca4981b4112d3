"""PyTorch datasets over Curvine.

``Dataset(root)``: map-style, one sample per file under ``root`` (sorted
paths, so index ``i`` names the same file in every worker and every epoch).
A DataLoader batch is fetched with one ``read_many`` call, files read in
parallel inside Rust.

``ShardDataset(urls_or_prefix)``: iterable over tar shards (webdataset
layout: members ``key.ext`` grouped into one sample per key). Shards are
split across distributed ranks and DataLoader workers, each shard read by
exactly one of them, and the next shard is read in the background while the
current one is being consumed.

Both hold a ``curvine.Client``, which survives the fork into DataLoader
workers (it reconnects there) and pickling (``spawn``/``forkserver``).
"""

import io
import os
import random
import re
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor

import torch.utils.data as tud

from ._paths import norm

__all__ = ["Dataset", "ShardDataset", "list_files"]


def _client(client):
    from .checkpoint import _client as default

    return default(client)


def _decode_transform(ds, x):
    if ds.decode is not None:
        x = ds.decode(x)
    if ds.transform is not None:
        x = ds.transform(x)
    return x


def list_files(client, root):
    """Every file under ``root`` (recursively), sorted by path."""
    root = norm(root)
    s = client.stat(root)
    if not s.is_dir:
        return [root]
    out, todo = [], [root]
    while todo:
        d = todo.pop()
        for e in client.ls(d):
            (todo if e.is_dir else out).append(e.path)
    out.sort()
    return out


# Datasets up to this many files keep their files' open results.
KEEP_OPENS_MAX = 200_000


class Dataset(tud.Dataset):
    """Map-style dataset: item ``i`` is ``transform(decode(bytes of file
    i))`` over the sorted files under ``root``.

    ``keep_opens`` (default: for up to 200,000 files) opens every file once
    when the dataset is built and keeps the results (block locations, about
    200 bytes a file, pickled to DataLoader workers with the dataset), so a
    batch costs no call to the metadata service. A kept result is used for
    ``open_ttl`` seconds, then the file is opened again. A file changed in
    the meantime reads whole, as it was or as it is now, never a mix; after
    ``open_ttl`` it reads as it is now."""

    def __init__(self, root, decode=None, transform=None, client=None, keep_opens=None, open_ttl=600.0):
        self.client = _client(client)
        self.root = norm(root)
        self.paths = list_files(self.client, self.root)
        self.decode = decode
        self.transform = transform
        if keep_opens is None:
            keep_opens = len(self.paths) <= KEEP_OPENS_MAX
        self.open_ttl = open_ttl
        self._opened = self.client._open_many_raw(self.paths) if keep_opens else None
        self._opened_at = [time.time()] * len(self.paths) if keep_opens else None
        if keep_opens:
            # DataLoader workers forked later inherit these descriptors.
            self.client._prepare_local(self._opened)

    def __len__(self):
        return len(self.paths)

    def _finish(self, data):
        return _decode_transform(self, data)

    def __getitem__(self, i):
        return self._finish(self.client.read(self.paths[i]))

    def __getitems__(self, indices):
        # DataLoader's batched fetch: the whole batch in one parallel read.
        if self._opened is None:
            datas = self.client.read_many([self.paths[i] for i in indices])
        else:
            now = time.time()
            old = [i for i in indices if now - self._opened_at[i] > self.open_ttl]
            if old:
                for i, raw in zip(old, self.client._open_many_raw([self.paths[i] for i in old])):
                    self._opened[i], self._opened_at[i] = raw, now
            datas = self.client._read_many_opened([self._opened[i] for i in indices])
            stale = [k for k, d in enumerate(datas) if d is None]
            if stale:
                fresh = self.client.read_many([self.paths[indices[k]] for k in stale])
                for k, d in zip(stale, fresh):
                    datas[k] = d
        return [self._finish(d) for d in datas]


def _expand(pattern):
    """``shard-{000..009}.tar`` → 10 names (webdataset brace syntax)."""
    m = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not m:
        return [pattern]
    a, b = m.group(1), m.group(2)
    width = len(a)
    head, tail = pattern[:m.start()], pattern[m.end():]
    out = []
    for i in range(int(a), int(b) + 1):
        out.extend(_expand(f"{head}{i:0{width}d}{tail}"))
    return out


def _rank_world(rank, world_size):
    if rank is not None and world_size is not None:
        return rank, world_size
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def tar_samples(data, url):
    """Samples of one tar shard, webdataset-style: consecutive members
    ``dir/key.ext`` become ``{"__key__": "dir/key", "__url__": url, "ext":
    bytes}``."""
    sample = None
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        for m in tf:
            if not m.isfile():
                continue
            d, base = os.path.split(m.name)
            if "." not in base:
                continue
            stem, ext = base.split(".", 1)
            key = f"{d}/{stem}" if d else stem
            if sample is not None and sample["__key__"] != key:
                yield sample
                sample = None
            if sample is None:
                sample = {"__key__": key, "__url__": url}
            sample[ext] = tf.extractfile(m).read()
    if sample is not None:
        yield sample


class ShardDataset(tud.IterableDataset):
    """Iterable over tar shards. ``urls_or_prefix``: a list of paths, a
    brace pattern (``cv://d/shard-{000..099}.tar``), or a directory (every
    file under it, sorted). ``rank``/``world_size`` default to
    torch.distributed, then ``$RANK``/``$WORLD_SIZE``. With ``shuffle`` the
    shard order changes per epoch (``set_epoch``), identically on every
    rank and worker, so the split stays exact."""

    def __init__(self, urls_or_prefix, decode=None, transform=None, client=None, *,
                 rank=None, world_size=None, shuffle=False, seed=0, prefetch=True):
        self.client = _client(client)
        if isinstance(urls_or_prefix, (list, tuple)):
            urls = [norm(u) for u in urls_or_prefix]
        else:
            pattern = norm(urls_or_prefix)
            urls = _expand(pattern) if "{" in pattern else list_files(self.client, pattern)
        if not urls:
            raise ValueError(f"no shards in {urls_or_prefix!r}")
        self.urls = urls
        self.decode = decode
        self.transform = transform
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.prefetch = prefetch

    def set_epoch(self, epoch):
        self.epoch = epoch

    def my_shards(self):
        """The shards this rank and DataLoader worker read."""
        rank, world = _rank_world(self.rank, self.world_size)
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world size {world}")
        info = tud.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        urls = list(self.urls)
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(urls)
        return urls[rank * nw + wid::world * nw]

    def _finish(self, sample):
        return _decode_transform(self, sample)

    def __iter__(self):
        urls = self.my_shards()
        if not urls:
            return
        if not self.prefetch:
            for u in urls:
                for s in tar_samples(self.client.read(u), u):
                    yield self._finish(s)
            return
        # The next shard is read (GIL released) while this one is consumed.
        with ThreadPoolExecutor(1, thread_name_prefix="curvine-prefetch") as pool:
            nxt = pool.submit(self.client.read, urls[0])
            for i, u in enumerate(urls):
                data = nxt.result()
                if i + 1 < len(urls):
                    nxt = pool.submit(self.client.read, urls[i + 1])
                for s in tar_samples(data, u):
                    yield self._finish(s)
