"""curvine.torch datasets under real DataLoader workers (forked, so the
inherited client must reconnect)."""

import collections
import io
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import curvine
from torch.utils.data import DataLoader, get_worker_info

from curvine.torch import Dataset, ShardDataset

N_FILES = 5000


def decode_id(data: bytes) -> int:
    return int.from_bytes(data[:4], "little")


@pytest.fixture(scope="module")
def small_files(client):
    """5,000 small files in 10 directories; file i holds i (and some
    padding) so a sample names itself."""
    root = "/t/small5000"
    if client.exists(root):
        client.rm(root, recursive=True)

    def put(i):
        client.write(f"{root}/d{i % 10}/{i:05d}.bin", i.to_bytes(4, "little") + bytes(i % 200))

    # Concurrent creates share the meta service's log appends.
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(N_FILES)))
    return root


def test_dataset_indices_are_sorted_paths(client, small_files):
    ds = Dataset(small_files, client=client)
    assert len(ds) == N_FILES
    assert ds.paths == sorted(ds.paths)
    assert ds[0] == client.read(ds.paths[0])
    assert Dataset(small_files, client=client).paths == ds.paths  # stable


def test_dataloader_4_workers_every_sample_once_per_epoch(client, small_files):
    ds = Dataset(small_files, decode=decode_id, transform=torch.tensor, client=client)
    dl = DataLoader(ds, batch_size=64, shuffle=True, num_workers=4, persistent_workers=True)
    for epoch in range(2):
        seen = collections.Counter()
        for batch in dl:
            seen.update(batch.tolist())
        assert len(seen) == N_FILES and set(seen) == set(range(N_FILES)), f"epoch {epoch}: gaps"
        assert max(seen.values()) == 1, f"epoch {epoch}: duplicates"


def test_kept_opens_read_without_meta_and_survive_rewrites(client, base):
    for i in range(8):
        client.write(f"{base}/k/{i}.bin", bytes([i]) * (1000 + i))
    ds = Dataset(f"{base}/k", client=client, open_ttl=1.0)
    assert ds._opened is not None and len(ds._opened) == 8
    assert ds.__getitems__(list(range(8))) == [bytes([i]) * (1000 + i) for i in range(8)]
    # Rewritten and removed after the dataset was built: a rewritten file
    # reads whole, as it was or as it is now, and as it is now once its kept
    # result is older than open_ttl; a removed one then raises.
    old3, new3 = bytes([3]) * 1003, b"new" * 5000
    client.write(f"{base}/k/3.bin", new3)
    client.rm(f"{base}/k/5.bin")
    assert ds.__getitems__([3])[0] in (old3, new3)
    deadline = time.monotonic() + 30
    while ds.__getitems__([3])[0] != new3:
        assert time.monotonic() < deadline, "the kept open result of a rewritten file never fell back"
        time.sleep(0.1)
    while True:
        try:
            assert ds.__getitems__([5])[0] == bytes([5]) * 1005
        except FileNotFoundError:
            break
        assert time.monotonic() < deadline, "a removed file kept reading"
        time.sleep(0.1)
    off = Dataset(f"{base}/k", client=client, keep_opens=False)
    assert off._opened is None and off.__getitems__([3]) == [new3]


class WithLocalStats(Dataset):
    """Each sample comes with the worker process's short-circuit counters
    taken right after its batch was read."""

    def __getitems__(self, indices):
        datas = super().__getitems__(indices)
        stats = self.client._local_stats()
        return [(d, stats) for d in datas]


def test_forked_workers_inherit_prepared_block_descriptors(node, client, base):
    # 100 files: fewer than a client keeps even under a 1,024 open-file
    # limit (256). A fresh client, so its counters are this test's alone.
    n = 100
    for i in range(n):
        client.write(f"{base}/fd/{i:03d}.bin", i.to_bytes(4, "little") * 1000)
    own = curvine.connect(node.meta)
    ds = WithLocalStats(f"{base}/fd", client=own)
    parent = own._local_stats()
    assert parent["prefetched"] == n, parent  # the dataset prepared them all
    dl = DataLoader(ds, batch_size=10, shuffle=True, num_workers=2, collate_fn=lambda b: b)
    got = set()
    for batch in dl:
        for data, stats in batch:
            i = decode_id(data)
            assert data == i.to_bytes(4, "little") * 1000
            got.add(i)
            # Forked with the parent's descriptors: no block was asked for
            # again, every read was local.
            assert stats["adopted"] == n and stats["prefetched"] == 0 and stats["opened"] == 0, stats
            assert stats["reads"] >= 1 and stats["fallbacks"] == 0, stats
    assert got == set(range(n))


def test_dataloader_spawned_workers_reconnect(meta_env, small_files):
    # spawn pickles the dataset (and its client) into fresh interpreters.
    ds = Dataset(f"cv:/{small_files}/d3")
    dl = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="spawn")
    got = sorted(decode_id(b) for b in dl)
    assert got == list(range(3, N_FILES, 10))


def make_shard(shard: int, per: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for i in range(per):
            key = f"s{shard:03d}_{i:02d}"
            for ext, payload in (("cls", str(shard * 100 + i).encode()), ("bin", bytes([i]) * (100 + i))):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


@pytest.fixture(scope="module")
def shards(client):
    root = "/t/shards"
    if client.exists(root):
        client.rm(root, recursive=True)
    n, per = 11, 7  # 11 shards over 4 readers: an uneven split
    for s in range(n):
        client.write(f"{root}/shard-{s:03d}.tar", make_shard(s, per))
    return root, n, per


def tag_worker(sample):
    info = get_worker_info()
    sample["worker"] = info.id if info is not None else -1
    return sample


def test_shard_dataset_splits_over_ranks_and_workers(client, shards):
    root, n, per = shards
    keys = collections.Counter()
    readers_of = collections.defaultdict(set)
    for rank in range(2):
        ds = ShardDataset(f"cv:/{root}", transform=tag_worker, client=client, rank=rank, world_size=2)
        dl = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True)
        for epoch in range(2):
            for s in dl:
                assert s["cls"] == str(int(s["__key__"][1:4]) * 100 + int(s["__key__"][5:])).encode()
                assert s["bin"] == bytes([int(s["__key__"][5:])]) * (100 + int(s["__key__"][5:]))
                if epoch == 0:
                    keys[s["__key__"]] += 1
                    readers_of[s["__url__"]].add((rank, s["worker"]))
    assert len(keys) == n * per, "gaps"
    assert max(keys.values()) == 1, "duplicates"
    assert all(len(r) == 1 for r in readers_of.values()), "a shard was read by two readers"
    assert len(set().union(*readers_of.values())) == 4, "every (rank, worker) got shards"


def test_shard_dataset_brace_pattern_and_shuffle(client, shards):
    root, n, per = shards
    ds = ShardDataset(f"cv:/{root}/shard-{{000..{n - 1:03d}}}.tar", client=client, shuffle=True, seed=5,
                      rank=0, world_size=1)
    ds.set_epoch(1)
    order1 = ds.my_shards()
    ds.set_epoch(2)
    assert sorted(order1) == sorted(ds.my_shards()) == [f"{root}/shard-{s:03d}.tar" for s in range(n)]
    assert order1 != ds.my_shards()
    assert sum(1 for _ in ds) == n * per
    no_prefetch = ShardDataset(f"{root}/shard-000.tar", client=client, prefetch=False, rank=0, world_size=1)
    assert [s["__key__"] for s in no_prefetch] == [f"s000_{i:02d}" for i in range(per)]
    with pytest.raises(ValueError, match="rank"):
        ShardDataset(root, client=client, rank=2, world_size=2).my_shards()
