"""Python client benchmarks, each with its baseline measured in the same run:

1. ``read_into`` of a cached file into a numpy buffer vs the Rust client
   filling the same buffer (``FileReader::read_at`` called from Rust, no
   Python in the loop), rounds interleaved, medians.
2. DataLoader samples/s over 64 KiB files (curvine.torch.Dataset) vs the same
   files read from local disk by a plain map-style Dataset, same DataLoader
   settings: with the page cache warm, and cold (evicted before the epoch).
3. Checkpoint save/load GB/s (curvine.checkpoint) vs torch.save/torch.load
   of the same state dict to tmpfs (/dev/shm).

Starts its own `cv up` node. Usage:
    python python/bench/bench_python.py [--read-size 1GiB] [--files 4000] [--json]
"""

import argparse
import warnings
import json
import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import DataLoader

import curvine
import curvine.checkpoint as ckpt
from curvine.testing import Node
from curvine.torch import Dataset

GIB = 1 << 30

# torch suggests fewer DataLoader workers than cores*1 on a 2-core machine.
warnings.filterwarnings("ignore", message="This DataLoader will create")


def size_arg(s):
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    s = s.lower().rstrip("ib").rstrip("b")
    return int(float(s[:-1]) * units[s[-1]]) if s[-1] in units else int(s)


def bench_read(c, size, rounds, chunk):
    """Whole file into one buffer (``read_into``), and through a
    ``chunk``-sized buffer (``open(...).readinto`` in a loop), each against
    the Rust client filling the same buffer the same way."""
    path = "/bench/read.bin"
    data = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)
    c.write(path, data)
    buf = np.empty(size, dtype=np.uint8)
    small = np.empty(chunk, dtype=np.uint8)
    c.read_into(path, buf)  # warm connections and page tables
    assert np.array_equal(buf, data)
    t_py, t_rust, t_pyc, t_rustc = [], [], [], []
    for _ in range(rounds):
        t = time.perf_counter()
        c.read_into(path, buf)
        t_py.append(time.perf_counter() - t)
        t_rust += c._bench_rust_read(path, buf, 1)
        t = time.perf_counter()
        with c.open(path, "rb") as f:
            while f.readinto(small):
                pass
        t_pyc.append(time.perf_counter() - t)
        t_rustc += c._bench_rust_read(path, small, 1)
    rate = lambda ts: size / statistics.median(ts) / GIB  # noqa: E731
    return {"bytes": size, "rounds": rounds, "chunk": chunk,
            "python_read_into_gib_s": rate(t_py), "rust_read_at_gib_s": rate(t_rust),
            "ratio": rate(t_py) / rate(t_rust),
            "python_readinto_chunked_gib_s": rate(t_pyc), "rust_chunked_gib_s": rate(t_rustc),
            "ratio_chunked": rate(t_pyc) / rate(t_rustc)}


class LocalFiles(torch.utils.data.Dataset):
    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with open(self.paths[i], "rb") as f:
            return f.read()


def collate_bytes(batch):
    return len(batch)


def drop_cache(paths):
    """Evicts the files from the page cache, so the next read goes to disk."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_loader(ds, workers, batch, before_epoch=None):
    """Samples/s of the second epoch (the first starts the workers)."""
    dl = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, collate_fn=collate_bytes,
                    persistent_workers=True, prefetch_factor=4)
    for _ in dl:
        pass
    if before_epoch is not None:
        before_epoch()
    t = time.perf_counter()
    n = sum(dl)
    return n / (time.perf_counter() - t)


def bench_loader(c, files, fsize, workers, batch, rounds):
    root = "/bench/files"
    local = tempfile.mkdtemp(prefix="cv-bench-files-", dir="/var/tmp")
    rng = np.random.default_rng(1)
    blobs = [rng.integers(0, 256, fsize, dtype=np.uint8).tobytes() for _ in range(64)]

    def put(i):
        d = blobs[i % 64]
        c.write(f"{root}/{i // 1000}/{i:06d}.bin", d)
        p = os.path.join(local, f"{i:06d}.bin")
        with open(p, "wb") as f:
            f.write(d)
        return p

    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(put, range(files)))
    os.sync()
    rates = {"curvine": [], "local_warm": [], "local_cold": []}
    try:
        # Interleaved, so drift of the machine hits all three alike.
        for _ in range(rounds):
            rates["curvine"].append(run_loader(Dataset(root, client=c), workers, batch))
            rates["local_warm"].append(run_loader(LocalFiles(paths), workers, batch))
            rates["local_cold"].append(run_loader(LocalFiles(paths), workers, batch, lambda: drop_cache(paths)))
    finally:
        shutil.rmtree(local, ignore_errors=True)
    cv, warm, cold = (statistics.median(rates[k]) for k in ("curvine", "local_warm", "local_cold"))
    return {"files": files, "file_bytes": fsize, "workers": workers, "batch": batch, "rounds": rounds,
            "curvine_samples_s": cv, "local_page_cache_samples_s": warm, "local_disk_cold_samples_s": cold,
            "ratio_vs_page_cache": cv / warm, "ratio_vs_cold_disk": cv / cold}


def bench_checkpoint(c, total, rounds):
    n = 16
    sd = {f"layer{i}.weight": torch.randn(total // n // 4) for i in range(n)}
    nbytes = sum(t.numel() * t.element_size() for t in sd.values())
    shm = tempfile.mkdtemp(prefix="cv-bench-", dir="/dev/shm")
    try:
        res = {"save_cv": [], "load_cv": [], "save_torch": [], "load_torch": []}
        for _ in range(rounds):
            t = time.perf_counter()
            ckpt.save(sd, "/bench/ckpt.safetensors", client=c)
            res["save_cv"].append(time.perf_counter() - t)
            t = time.perf_counter()
            back = ckpt.load("/bench/ckpt.safetensors", client=c)
            res["load_cv"].append(time.perf_counter() - t)
            del back
            p = os.path.join(shm, "ckpt.pt")
            t = time.perf_counter()
            torch.save(sd, p)
            res["save_torch"].append(time.perf_counter() - t)
            t = time.perf_counter()
            back = torch.load(p, weights_only=True)
            res["load_torch"].append(time.perf_counter() - t)
            del back
            os.remove(p)
    finally:
        shutil.rmtree(shm, ignore_errors=True)
    out = {"bytes": nbytes, "rounds": rounds}
    for k, v in res.items():
        out[f"{k}_gb_s"] = nbytes / statistics.median(v) / 1e9
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--read-size", type=size_arg, default=1 << 30)
    ap.add_argument("--read-rounds", type=int, default=7)
    ap.add_argument("--read-chunk", type=size_arg, default=16 << 20)
    ap.add_argument("--files", type=int, default=4000)
    ap.add_argument("--file-size", type=size_arg, default=64 << 10)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--loader-rounds", type=int, default=3)
    ap.add_argument("--ckpt-size", type=size_arg, default=1 << 30)
    ap.add_argument("--ckpt-rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    with Node(mem="6GiB") as node:
        c = curvine.connect(node.meta)
        results = {
            "read_into": bench_read(c, a.read_size, a.read_rounds, a.read_chunk),
            "dataloader": bench_loader(c, a.files, a.file_size, a.workers, a.batch, a.loader_rounds),
            "checkpoint": bench_checkpoint(c, a.ckpt_size, a.ckpt_rounds),
        }
    if a.json:
        print(json.dumps(results, indent=2))
        return
    r, d, k = results["read_into"], results["dataloader"], results["checkpoint"]
    print(f"read_into {r['bytes'] / GIB:.2f} GiB x{r['rounds']}: python {r['python_read_into_gib_s']:.2f} GiB/s, "
          f"rust client {r['rust_read_at_gib_s']:.2f} GiB/s, ratio {r['ratio']:.2f}; through a "
          f"{r['chunk'] >> 20} MiB buffer: python {r['python_readinto_chunked_gib_s']:.2f}, "
          f"rust {r['rust_chunked_gib_s']:.2f}, ratio {r['ratio_chunked']:.2f}")
    print(f"DataLoader {d['files']} x {d['file_bytes'] >> 10} KiB, {d['workers']} workers, batch {d['batch']}: "
          f"curvine {d['curvine_samples_s']:.0f} samples/s; local files, page cache warm "
          f"{d['local_page_cache_samples_s']:.0f} (ratio {d['ratio_vs_page_cache']:.2f}), cold "
          f"{d['local_disk_cold_samples_s']:.0f} (ratio {d['ratio_vs_cold_disk']:.2f})")
    print(f"checkpoint {k['bytes'] / 1e9:.2f} GB: curvine save {k['save_cv_gb_s']:.2f} GB/s, load {k['load_cv_gb_s']:.2f} GB/s; "
          f"torch.save to tmpfs {k['save_torch_gb_s']:.2f} GB/s, torch.load {k['load_torch_gb_s']:.2f} GB/s")


if __name__ == "__main__":
    main()
