"""The core API against a real node: every read path returns the bytes
written, buffers are filled in place, errors are Python's own exceptions."""

import errno
import io
import os
import threading

import numpy as np
import pytest
import torch

import curvine
from curvine import _curvine

# Spans several 2 MiB read chunks and ends mid-chunk.
SIZE = 5 * (1 << 20) + 12345


@pytest.fixture
def blob(client, base):
    data = np.random.default_rng(7).integers(0, 256, SIZE, dtype=np.uint8).tobytes()
    path = f"{base}/blob.bin"
    assert client.write(path, data) == SIZE
    return path, data


def test_read_whole_and_ranges(client, blob):
    path, data = blob
    assert client.read(path) == data
    assert client.read("cv:/" + path) == data
    assert client.read(path, 1000, 70000) == data[1000:71000]
    assert client.read(path, SIZE - 10) == data[-10:]
    assert client.read(path, SIZE + 5) == b""
    assert client.read(path, 0, 0) == b""


def test_read_into_bytearray_memoryview(client, blob):
    path, data = blob
    buf = bytearray(SIZE)
    assert client.read_into(path, buf) == SIZE
    assert buf == data
    # A window of a larger buffer: only that window is written.
    big = bytearray(b"\xee" * (SIZE + 200))
    assert client.read_into(path, memoryview(big)[100:100 + 5000], offset=77) == 5000
    assert big[100:5100] == data[77:5077]
    assert big[:100] == b"\xee" * 100 and big[5100:] == b"\xee" * (len(big) - 5100)
    # Past the end: short count.
    tail = bytearray(100)
    assert client.read_into(path, tail, offset=SIZE - 40) == 40
    assert tail[:40] == data[-40:]


def test_read_into_numpy_in_place(client, blob):
    path, data = blob
    arr = np.zeros(SIZE // 4, dtype=np.float32)  # any dtype: bytes land as is
    before = arr.ctypes.data
    view = arr.view(np.uint8)  # made before the read: sees the same memory
    n = client.read_into(path, arr)
    assert n == arr.nbytes
    assert arr.ctypes.data == before
    assert view.tobytes() == data[:n]
    assert np.array_equal(arr, np.frombuffer(data[:n], dtype=np.float32), equal_nan=True)


def test_read_into_torch_in_place(client, blob):
    path, data = blob
    for dtype in (torch.uint8, torch.float32, torch.bfloat16, torch.int64):
        t = torch.zeros(4096, dtype=dtype)
        ptr = t.data_ptr()
        n = client.read_into(path, t, offset=333)
        assert n == t.numel() * t.element_size()
        assert t.data_ptr() == ptr
        assert t.view(torch.uint8).numpy().tobytes() == data[333:333 + n]


def test_read_many(client, base):
    rng = np.random.default_rng(1)
    files = {f"{base}/m/{i:03d}": rng.integers(0, 256, int(rng.integers(0, 300_000)), dtype=np.uint8).tobytes()
             for i in range(40)}
    for p, d in files.items():
        client.write(p, d)
    paths = sorted(files)
    got = client.read_many(paths)
    assert got == [files[p] for p in paths]
    assert client.read_many([]) == []
    with pytest.raises(FileNotFoundError):
        client.read_many(paths[:3] + [f"{base}/m/missing"])


def test_open_rb_is_raw_io(client, blob):
    path, data = blob
    with client.open(path, "rb") as f:
        assert isinstance(f, io.RawIOBase)
        assert f.readable() and f.seekable()
        assert f.read(10) == data[:10]
        assert f.tell() == 10
        buf = bytearray(4096)
        assert f.readinto(buf) == 4096 and buf == data[10:4106]
        assert f.seek(-100, os.SEEK_END) == SIZE - 100
        assert f.read() == data[-100:]
        assert f.read(5) == b""
        f.seek(5000)
        assert f.read(1) == data[5000:5001]
        with pytest.raises(ValueError):
            f.seek(-1)
    # Buffered wrappers work on top.
    with io.BufferedReader(client.open(path, "rb")) as f:
        assert f.read() == data


def test_open_wb_small_writes_and_abort(client, base):
    path = f"{base}/w.bin"
    parts = [os.urandom(n) for n in (1, 100, 70_000, 3 << 20, 5)]
    with client.open(path, "wb") as f:
        assert isinstance(f, io.RawIOBase)
        for p in parts:
            assert f.write(p) == len(p)
        assert f.tell() == sum(map(len, parts))
    assert client.read(path) == b"".join(parts)
    # Leaving the block by an exception drops the file.
    with pytest.raises(RuntimeError):
        with client.open(f"{base}/aborted", "wb") as f:
            f.write(b"x" * 100_000)
            raise RuntimeError("boom")
    assert not client.exists(f"{base}/aborted")
    with pytest.raises(ValueError):
        client.open(path, "ab")


def test_open_xb_refuses_an_existing_file(client, base):
    path = f"{base}/x.bin"
    with client.open(path, "xb") as f:
        f.write(b"first")
    with pytest.raises(FileExistsError):
        client.open(path, "xb")
    assert client.read(path) == b"first"


def test_writer_dropped_without_close_is_aborted(client, base):
    import gc

    w = client.open(f"{base}/dropped", "wb")
    w.write(b"x" * 100_000)
    assert client.exists(f"{base}/dropped") and not client.stat(f"{base}/dropped").complete
    del w
    gc.collect()
    assert not client.exists(f"{base}/dropped"), "garbage collection must not publish a truncated file"
    # An explicit close still completes, and the native closed flag follows.
    w = client.open(f"{base}/kept", "wb")
    assert not w._f.closed
    w.write(b"kept")
    w.close()
    assert w._f.closed and client.read(f"{base}/kept") == b"kept"
    w = client.open(f"{base}/aborted", "wb")
    w.abort()
    assert w._f.closed and not client.exists(f"{base}/aborted")


def test_namespace_calls(client, base):
    client.mkdir(f"{base}/d/e", parents=True)
    client.mkdir(f"{base}/d/e", parents=True, exist_ok=True)
    client.write(f"{base}/d/e/f", b"hello")
    st = client.stat(f"{base}/d/e/f")
    assert (st.path, st.name, st.size, st.is_dir, st.is_file, st.complete) == (f"{base}/d/e/f", "f", 5, False, True, True)
    assert client.stat(f"{base}/d").is_dir
    assert [s.name for s in client.ls(f"{base}/d")] == ["e"]
    assert client.exists(f"{base}/d/e/f") and not client.exists(f"{base}/nope")
    client.mv(f"{base}/d/e/f", f"{base}/d/g")
    assert client.read(f"{base}/d/g") == b"hello"
    assert not client.exists(f"{base}/d/e/f")
    client.rm(f"{base}/d/g")
    client.rm(f"{base}/d", recursive=True)
    assert not client.exists(f"{base}/d")
    assert client.stat(f"{base}").to_dict()["type"] == "directory"


def test_errors_from_the_server_are_python_exceptions(client, base):
    client.write(f"{base}/file", b"x")
    client.mkdir(f"{base}/dir")
    client.write(f"{base}/dir/child", b"y")
    cases = [
        (FileNotFoundError, errno.ENOENT, lambda: client.stat(f"{base}/missing")),
        (FileNotFoundError, errno.ENOENT, lambda: client.read(f"{base}/missing")),
        (FileExistsError, errno.EEXIST, lambda: client.mkdir(f"{base}/dir")),
        (FileExistsError, errno.EEXIST, lambda: client.write(f"{base}/file", b"z", overwrite=False)),
        (NotADirectoryError, errno.ENOTDIR, lambda: client.ls(f"{base}/file")),
        (NotADirectoryError, errno.ENOTDIR, lambda: client.mkdir(f"{base}/file/sub")),
        (IsADirectoryError, errno.EISDIR, lambda: client.read(f"{base}/dir")),
        (OSError, errno.ENOTEMPTY, lambda: client.rm(f"{base}/dir")),
        (OSError, errno.EINVAL, lambda: client.stat(f"{base}/../x")),
    ]
    for exc, code, call in cases:
        with pytest.raises(exc) as ei:
            call()
        assert ei.value.errno == code, (exc, ei.value)
        assert base in str(ei.value) or ".." in str(ei.value)


def test_every_error_kind_maps_to_its_exception():
    expected = {
        1: FileNotFoundError, 2: FileExistsError, 3: NotADirectoryError, 4: IsADirectoryError,
        5: OSError, 6: OSError, 7: OSError, 8: OSError, 9: ConnectionError, 10: PermissionError,
        11: OSError, 12: OSError, 13: OSError, 14: TimeoutError, 15: OSError, 16: OSError,
        # NotLeader: no meta leader to ask right now, like Unavailable.
        17: ConnectionError, 18: PermissionError, 19: BlockingIOError,
    }
    errnos = {1: errno.ENOENT, 2: errno.EEXIST, 3: errno.ENOTDIR, 4: errno.EISDIR, 5: errno.ENOTEMPTY,
              6: errno.EINVAL, 7: errno.EINVAL, 8: errno.ENOSPC, 9: errno.EAGAIN, 10: errno.EACCES,
              11: errno.EIO, 12: errno.EIO, 13: errno.EIO, 14: errno.ETIMEDOUT, 15: errno.EINVAL, 16: errno.EIO,
              17: errno.EAGAIN, 18: errno.EPERM, 19: errno.EAGAIN}
    for code, exc in expected.items():
        e = _curvine.error_for_kind(code, f"/p: kind {code}")
        assert type(e) is exc, (code, type(e))
        assert e.errno == errnos[code]
        assert str(e).endswith(f"/p: kind {code}")


def test_unreachable_meta_is_connection_error(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(ConnectionError, match="meta"):
        curvine.connect(f"127.0.0.1:{port}", timeout=5)


def test_bad_arguments_are_clear(client, blob, node, monkeypatch):
    path, _ = blob
    with pytest.raises(TypeError, match="read-only"):
        client.read_into(path, b"immutable")
    with pytest.raises(TypeError, match="expected a buffer"):
        client.read_into(path, [1, 2, 3])
    with pytest.raises(BufferError, match="contiguous"):
        client.read_into(path, np.zeros((64, 64), dtype=np.uint8)[:, ::2])
    with pytest.raises(ValueError, match="contiguous"):
        client.read_into(path, torch.zeros(64, 64).t())
    with pytest.raises(ValueError, match="offset"):
        client.read_into(path, bytearray(4), offset=-1)
    with pytest.raises(ValueError, match="length"):
        client.read(path, 0, -5)
    with pytest.raises(TypeError):
        client.stat(42)
    with pytest.raises(ValueError, match="HOST:PORT"):
        curvine.connect("no-port-here")
    monkeypatch.setenv("CURVINE_META", node.meta)
    assert curvine.connect().meta == node.meta


def test_out_of_range_timeouts_and_threads_are_value_errors(node):
    for timeout in (1e20, float("inf"), float("nan"), 0, -1):
        with pytest.raises(ValueError, match="timeout"):
            curvine.connect(node.meta, timeout=timeout)
    for threads in (0, 1025, 10**6):
        with pytest.raises(ValueError, match="threads"):
            curvine.connect(node.meta, threads=threads)
    c = curvine.connect(node.meta, timeout=365 * 24 * 3600, threads=1024)
    assert (c.timeout, c.threads) == (365 * 24 * 3600, 1024)
    assert c.exists("/")


def test_warm_loads_a_mounted_directory(client, node, base, tmp_path):
    import subprocess

    from curvine.testing import cv_bin

    ufs = tmp_path / "ufs"
    (ufs / "sub").mkdir(parents=True)
    files = {"a.bin": os.urandom(3 << 20), "sub/b.bin": os.urandom(12345), "c.txt": b"hello"}
    for name, data in files.items():
        (ufs / name).write_bytes(data)
    subprocess.run([cv_bin(), "mount", f"file://{ufs}", f"{base}/m", "--meta", node.meta], check=True,
                   timeout=60, stdout=subprocess.DEVNULL)
    job = client.warm(f"cv:/{base}/m", timeout=120)
    assert job["state"] == "done"
    assert job["files_total"] == len(files)
    assert job["bytes_total"] == sum(map(len, files.values())) == job["bytes_done"]
    for name, data in files.items():
        assert client.read(f"{base}/m/{name}") == data
    started = client.warm(f"{base}/m", wait=False)
    assert started["id"] > job["id"] and started["state"] in ("running", "done")
    with pytest.raises(FileNotFoundError):
        client.warm(f"{base}/not-there")
    # No deadline for infinite or unrepresentably long timeouts.
    for timeout in (float("inf"), 1e300):
        assert client.warm(f"{base}/m", timeout=timeout)["state"] == "done"
    for timeout in (float("nan"), -1):
        with pytest.raises(ValueError, match="timeout"):
            client.warm(f"{base}/m", timeout=timeout)


def test_threads_share_a_client(client, blob):
    path, data = blob
    errors = []

    def reader(k):
        try:
            for i in range(5):
                off = (k * 7919 + i * 104729) % SIZE
                assert client.read(path, off, 300_000) == data[off:off + 300_000]
        except Exception as e:  # reported below
            errors.append(e)

    ts = [threading.Thread(target=reader, args=(k,)) for k in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []


def _child_reads(client, path, reader, q):
    # Runs in a forked child: the inherited client and open file reconnect.
    try:
        q.put((client.read(path), reader.read(), client.read_many([path])[0]))
    except BaseException as e:
        q.put(repr(e))


def test_fork_after_connect_does_not_hang(client, blob):
    import multiprocessing as mp

    path, data = blob
    assert client.read(path, 0, 10) == data[:10]  # the parent's connection is live
    reader = client.open(path, "rb")
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_reads, args=(client, path, reader, q))
    p.start()
    got = q.get(timeout=120)
    p.join(60)
    assert p.exitcode == 0, f"child did not exit cleanly: {p.exitcode}"
    assert got == (data, data, data)
    # The parent's client still works.
    assert client.read(path) == data
    assert reader.read(10) == data[:10]


def test_client_pickles(client, blob):
    import pickle

    c2 = pickle.loads(pickle.dumps(client))
    assert c2.meta == client.meta
    assert c2.read(blob[0], 0, 100) == blob[1][:100]
    # The settings travel with it.
    c3 = curvine.connect(client.meta, threads=3, timeout=7.5, verify_checksums=False)
    c4 = pickle.loads(pickle.dumps(c3))
    assert (c4.meta, c4.threads, c4.timeout, c4.verify_checksums) == (client.meta, 3, 7.5, False)
    assert c4.read(blob[0], 0, 100) == blob[1][:100]


def test_gil_is_released_while_waiting_on_the_cluster(node, blob):
    """With the server stopped, a call blocks inside Rust; the main thread
    must still run Python (here: to resume the server). If the call held
    the GIL, the main thread could only run after the call timed out."""
    import signal

    path, data = blob
    c = curvine.connect(node.meta, timeout=20)
    c.stat(path)  # connection up before the server stops
    calling = threading.Event()
    result = {}

    def call():
        calling.set()
        try:
            result["data"] = c.read(path, 0, 1000)
        except Exception as e:  # reported below
            result["error"] = e

    os.kill(node.proc.pid, signal.SIGSTOP)
    try:
        t = threading.Thread(target=call)
        t.start()
        calling.wait()
    finally:
        os.kill(node.proc.pid, signal.SIGCONT)
    t.join(60)
    assert not t.is_alive()
    assert result == {"data": data[:1000]}


def _child_uses_writer(writer, q):
    try:
        writer.write(b"more")
        q.put("wrote")
    except OSError as e:
        q.put((e.errno, str(e)))


def test_writer_inherited_across_fork_refuses_clearly(client, base):
    import multiprocessing as mp

    w = client.open(f"{base}/forked-writer", "wb")
    w.write(b"parent")
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_uses_writer, args=(w, q))
    p.start()
    got = q.get(timeout=120)
    p.join(60)
    assert p.exitcode == 0
    assert got[0] == errno.EINVAL and "after fork" in got[1]
    w.close()  # the parent's writer is untouched
    assert client.read(f"{base}/forked-writer") == b"parent"


def test_read_into_read_only_memory_is_a_type_error(client, blob):
    """A tensor over read-only memory (torch.frombuffer warns but allows
    it) must be refused before the native read writes to it: SIGSEGV
    otherwise."""
    import mmap
    import warnings

    path, data = blob
    ro = mmap.mmap(-1, 1 << 20, prot=mmap.PROT_READ)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "The given buffer is not writable"
        t = torch.frombuffer(ro, dtype=torch.uint8)
        with pytest.raises(TypeError, match="not writable"):
            client.read_into(path, t)
        # Mapped cache blocks from read_view are read-only too.
        view = client.read_view(path, offset=1 << 20, length=1 << 20)
        tv = torch.frombuffer(view, dtype=torch.float32)
        with pytest.raises(TypeError, match="not writable"):
            client.read_into(path, tv)
    assert bytes(ro[:16]) == bytes(16) and bytes(view) == data[1 << 20:2 << 20]
    # A writable tensor (mapping, or torch's own memory) still reads in place.
    rw = mmap.mmap(-1, 1 << 20)
    tw = torch.frombuffer(rw, dtype=torch.uint8)
    assert client.read_into(path, tw, offset=3) == 1 << 20 and bytes(rw) == data[3:3 + (1 << 20)]
    te = torch.empty(SIZE, dtype=torch.uint8)
    assert client.read_into(path, te) == SIZE and te.numpy().tobytes() == data
    del t, tv, tw, view
    ro.close()
    rw.close()


def test_read_view_is_in_place_and_read_only(client, base):
    data = os.urandom((3 << 20) + 5)
    p = f"{base}/view.bin"
    client.write(p, data)
    # Within one (1 MiB) block of the local MEM-tier worker: in place.
    v1 = client.read_view(p, offset=1 << 20, length=1 << 20)
    v2 = client.read_view(p, offset=1 << 20, length=4096)
    assert isinstance(v1, memoryview) and v1.readonly
    assert bytes(v1) == data[1 << 20:2 << 20] and bytes(v2) == data[1 << 20:(1 << 20) + 4096]
    a1, a2 = np.frombuffer(v1, dtype=np.uint8), np.frombuffer(v2, dtype=np.uint8)
    assert a1.ctypes.data == a2.ctypes.data, "two views of one block share its mapping: no copy"
    assert not a1.flags.writeable
    with pytest.raises((TypeError, BufferError, ValueError)):
        memoryview(v1).cast("B")[0] = 1
    # Across blocks, or to the end of the file: read into new memory.
    whole = client.read_view(p)
    assert bytes(whole) == data
    assert np.frombuffer(client.read_view(p), dtype=np.uint8).ctypes.data != np.frombuffer(whole, dtype=np.uint8).ctypes.data
    del v1, v2, a1, a2  # the mapping goes with the last reference
