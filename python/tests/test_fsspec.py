"""`cv://` through fsspec, pandas and pyarrow, found via the entry point."""

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from curvine.fsspec import CurvineFileSystem


@pytest.fixture
def fs(meta_env):
    return fsspec.filesystem("cv")


def test_protocol_is_registered(fs):
    assert isinstance(fs, CurvineFileSystem)
    assert fsspec.get_filesystem_class("cv") is CurvineFileSystem


def test_open_read_write(fs, client, base):
    data = np.random.default_rng(3).integers(0, 256, 3_000_000, dtype=np.uint8).tobytes()
    with fsspec.open(f"cv:/{base}/a.bin", "wb") as f:
        f.write(data[:1000])
        f.write(data[1000:])
    assert client.read(f"{base}/a.bin") == data
    with fsspec.open(f"cv:/{base}/a.bin", "rb") as f:
        assert f.read(10) == data[:10]
        f.seek(2_000_000)
        assert f.read(100) == data[2_000_000:2_000_100]
    with fsspec.open(f"cv:/{base}/t.txt", "w") as f:
        f.write("héllo\nworld\n")
    with fsspec.open(f"cv:/{base}/t.txt", "r") as f:
        assert f.read().splitlines() == ["héllo", "world"]
    assert fs.cat_file(f"{base}/a.bin", start=5, end=25) == data[5:25]
    assert fs.cat_file(f"{base}/a.bin", start=-10) == data[-10:]


def test_listing_and_namespace(fs, client, base):
    fs.pipe_file(f"cv:/{base}/x/1.bin", b"one")
    fs.pipe_file(f"cv:/{base}/x/y/2.bin", b"two")
    assert fs.ls(f"cv:/{base}/x", detail=False) == [f"{base}/x/1.bin", f"{base}/x/y"]
    info = fs.info(f"cv:/{base}/x/1.bin")
    assert (info["name"], info["size"], info["type"]) == (f"{base}/x/1.bin", 3, "file")
    assert fs.isdir(f"{base}/x/y") and fs.isfile(f"{base}/x/y/2.bin")
    assert sorted(fs.find(f"cv:/{base}/x")) == [f"{base}/x/1.bin", f"{base}/x/y/2.bin"]
    fs.mv(f"{base}/x/y", f"{base}/x/z")
    assert fs.cat(f"cv:/{base}/x/z/2.bin") == b"two"
    fs.rm(f"{base}/x", recursive=True)
    assert not fs.exists(f"{base}/x")
    with pytest.raises(FileNotFoundError):
        fs.info(f"{base}/x")


def test_pandas_parquet_round_trip(meta_env, base):
    df = pd.DataFrame({"a": np.arange(10_000), "b": np.random.default_rng(0).random(10_000),
                       "c": [f"s{i}" for i in range(10_000)]})
    df.to_parquet(f"cv:/{base}/df.parquet")
    back = pd.read_parquet(f"cv:/{base}/df.parquet")
    pd.testing.assert_frame_equal(df, back)
    cols = pd.read_parquet(f"cv:/{base}/df.parquet", columns=["b"])
    pd.testing.assert_frame_equal(df[["b"]], cols)


def test_pyarrow_dataset_over_a_directory(fs, base):
    for part in range(3):
        t = pa.table({"part": [part] * 500, "v": np.arange(500) + part * 500})
        with fs.open(f"{base}/tbl/part-{part}.parquet", "wb") as f:
            pq.write_table(t, f)
    dset = ds.dataset(f"{base}/tbl", filesystem=fs, format="parquet")
    table = dset.to_table()
    assert table.num_rows == 1500
    assert sorted(table.column("v").to_pylist()) == list(range(1500))
    filtered = dset.to_table(filter=ds.field("part") == 2)
    assert filtered.num_rows == 500


def test_exclusive_create_refuses_an_existing_file(fs, client, base):
    with fs.open(f"{base}/x.bin", "xb") as f:
        f.write(b"one")
    with pytest.raises(FileExistsError):
        fs.open(f"{base}/x.bin", "xb")
    assert client.read(f"{base}/x.bin") == b"one"


def test_transaction_commits_all_or_nothing(fs, client, base):
    client.write(f"{base}/tx/a.bin", b"old a")
    with fs.transaction:
        with fs.open(f"{base}/tx/a.bin", "wb") as f:
            f.write(b"new a")
        fs.pipe_file(f"{base}/tx/b.bin", b"new b")
        # Nothing is visible before the commit: the old file is whole.
        assert client.read(f"{base}/tx/a.bin") == b"old a"
        assert not client.exists(f"{base}/tx/b.bin")
    assert client.read(f"{base}/tx/a.bin") == b"new a" and client.read(f"{base}/tx/b.bin") == b"new b"
    assert sorted(s.name for s in client.ls(f"{base}/tx")) == ["a.bin", "b.bin"]

    # An exception discards every deferred file, open or closed.
    with pytest.raises(RuntimeError):
        with fs.transaction:
            with fs.open(f"{base}/tx/a.bin", "wb") as f:
                f.write(b"discarded")
            g = fs.open(f"{base}/tx/c.bin", "wb")
            g.write(b"half")
            raise RuntimeError("boom")
    assert client.read(f"{base}/tx/a.bin") == b"new a"
    assert sorted(s.name for s in client.ls(f"{base}/tx")) == ["a.bin", "b.bin"], "no temporary file is left"


def test_autocommit_false_defers_to_commit(fs, client, base):
    f = fs.open(f"{base}/d.bin", "wb", autocommit=False)
    f.write(b"deferred")
    f.close()
    assert not client.exists(f"{base}/d.bin")
    f.commit()
    assert client.read(f"{base}/d.bin") == b"deferred"
    with pytest.raises(ValueError, match="exclusive"):
        fs.open(f"{base}/e.bin", "xb", autocommit=False)
