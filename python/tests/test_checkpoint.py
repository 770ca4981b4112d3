"""curvine.checkpoint: safetensors save/load, the staged (pinned) load path,
and torch.distributed.checkpoint with two gloo ranks."""

import os
import subprocess
import sys

import pytest
import safetensors.torch
import torch
import torch.nn as nn

import curvine.checkpoint as ckpt
from curvine import _staging


def small_model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 30 * 30, 10))
    m(torch.randn(4, 3, 32, 32))  # moves BatchNorm's running stats off their defaults
    return m


def assert_state_equal(a, b):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


def test_model_round_trip(client, base):
    sd = small_model().state_dict()
    path = f"cv:/{base}/model.safetensors"
    size = ckpt.save(sd, path, client=client, metadata={"step": "1000"})
    assert client.stat(path).size == size
    back = ckpt.load(path, client=client)
    assert_state_equal(dict(sorted(sd.items())), dict(sorted(back.items())))
    m = small_model()
    m.load_state_dict(back)
    _, md, _, _ = ckpt.read_header(path, client=client)
    assert md["step"] == "1000"


def test_safetensors_reads_the_file_after_cv_fs_get(client, base, node, tmp_path):
    sd = small_model().state_dict()
    sd["half"] = torch.randn(5, 7).to(torch.bfloat16)
    sd["flags"] = torch.tensor([True, False, True])
    sd["scalar"] = torch.tensor(3.5, dtype=torch.float64)
    sd["empty"] = torch.zeros(0, 4)
    path = f"{base}/st.safetensors"
    ckpt.save(sd, path, client=client)
    local = tmp_path / "st.safetensors"
    cv = os.environ.get("CV_BIN") or os.path.expanduser("~/.cache/curvine/target/release/cv")
    subprocess.run([cv, "fs", "get", path, str(local), "--meta", node.meta], check=True, timeout=120,
                   stdout=subprocess.DEVNULL)
    assert_state_equal(dict(sorted(sd.items())), dict(sorted(safetensors.torch.load_file(str(local)).items())))


def test_nested_state_with_optimizer(client, base):
    m = small_model()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    m(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    state = {"model": m.state_dict(), "optim": opt.state_dict(), "step": 7, "note": None, "shape": (1, 2)}
    path = f"{base}/full.safetensors"
    ckpt.save(state, path, client=client)
    back = ckpt.load(path, client=client)
    assert back["step"] == 7 and back["note"] is None and back["shape"] == (1, 2)
    assert_state_equal(state["model"], back["model"])
    assert back["optim"]["param_groups"] == state["optim"]["param_groups"]
    for pid, st in state["optim"]["state"].items():
        for k, v in st.items():
            assert torch.equal(v, back["optim"]["state"][pid][k]), (pid, k)
    opt2 = torch.optim.AdamW(small_model().parameters(), lr=1e-3)
    opt2.load_state_dict(back["optim"])


def test_staged_load_on_cpu_uses_pinned_buffers(client, base):
    sd = {f"w{i}": torch.randn(300, 257) for i in range(6)}
    path = f"{base}/staged.safetensors"
    ckpt.save(sd, path, client=client)
    # Chunks smaller than a tensor: tensors are split over several reads,
    # and neighbours share reads.
    back = ckpt.load(path, client=client, staged=True, chunk=100_000)
    assert_state_equal(sd, back)


def test_pinned_staging_buffers_are_page_locked():
    def locked_kb():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmLck:"))

    before = locked_kb()
    buf = _staging.pinned_empty(8 << 20)
    if not torch.cuda.is_available():
        assert locked_kb() - before >= (8 << 20) // 1024
    assert buf.numel() == 8 << 20 and buf.dtype == torch.uint8


def test_staged_read_into_cpu_tensor(client, base):
    data = os.urandom(3 * 1024 * 1024 + 17)
    client.write(f"{base}/raw", data)
    t = torch.zeros(len(data) - 100, dtype=torch.uint8)
    ptr = t.data_ptr()
    n = _staging.read_into_device(client, f"{base}/raw", t, offset=100, chunk=1 << 20)
    assert n == len(data) - 100 and t.data_ptr() == ptr
    assert t.numpy().tobytes() == data[100:]


def test_bad_checkpoints_are_clear_errors(client, base):
    client.write(f"{base}/junk", b"\xff" * 64)
    with pytest.raises(ValueError, match="safetensors"):
        ckpt.load(f"{base}/junk", client=client)
    with pytest.raises(TypeError, match="cannot store"):
        ckpt.save({"x": object()}, f"{base}/bad", client=client)
    assert not client.exists(f"{base}/bad")
    with pytest.raises(FileNotFoundError):
        ckpt.load(f"{base}/missing", client=client)


class _FailingWrites:
    """The test client, except that the ``fail_at``-th ``write`` to a file
    it opens for writing raises (after calling ``on_fail``): a save that
    dies midway, against the real cluster."""

    def __init__(self, client, fail_at=2, on_fail=None):
        self._c, self._fail_at, self._on_fail = client, fail_at, on_fail

    def __getattr__(self, name):
        return getattr(self._c, name)

    def open(self, path, mode="rb"):
        f = self._c.open(path, mode)
        if "r" in mode:
            return f
        calls = [0]
        write = f.write

        def failing(data):
            calls[0] += 1
            if calls[0] == self._fail_at:
                if self._on_fail:
                    self._on_fail(path)
                raise OSError(5, "injected write failure")
            return write(data)

        f.write = failing
        return f


def test_failed_save_keeps_the_previous_checkpoint(client, base):
    old = {"w": torch.randn(64, 64), "b": torch.randn(64)}
    path = f"{base}/ck/model.safetensors"
    ckpt.save(old, path, client=client)
    old_bytes = client.read(path)
    seen = {}

    def during(tmp):
        # Mid-save: the new bytes go to a hidden name; the target is the
        # old checkpoint, complete.
        seen["tmp"] = tmp
        seen["target"] = client.read(path)
        seen["complete"] = client.stat(path).complete

    with pytest.raises(OSError, match="injected"):
        ckpt.save({"w": torch.zeros(64, 64), "b": torch.zeros(64)}, path,
                  client=_FailingWrites(client, on_fail=during))
    assert seen["target"] == old_bytes and seen["complete"]
    assert seen["tmp"] != path and seen["tmp"].startswith(f"{base}/ck/.model.safetensors.tmp-")
    assert client.read(path) == old_bytes
    assert_state_equal(old, ckpt.load(path, client=client))
    assert [s.name for s in client.ls(f"{base}/ck")] == ["model.safetensors"], "the temporary file is removed"
    # A successful save replaces it in one step.
    new = {"w": torch.ones(3)}
    ckpt.save(new, path, client=client)
    assert_state_equal(new, ckpt.load(path, client=client))
    assert [s.name for s in client.ls(f"{base}/ck")] == ["model.safetensors"]


def test_incomplete_file_is_refused(client, base):
    sd = {"w": torch.randn(100)}
    ckpt.save(sd, f"{base}/done.safetensors", client=client)
    whole = client.read(f"{base}/done.safetensors")
    # A writer that has not finished (or died): header and all bytes are
    # there, but the file is incomplete.
    w = client.open(f"{base}/partial.safetensors", "wb")
    w.write(whole)
    try:
        for call in (ckpt.load, ckpt.read_header):
            with pytest.raises(ValueError, match="incomplete"):
                call(f"{base}/partial.safetensors", client=client)
    finally:
        w.abort()


def test_header_sizes_are_checked_before_allocating(client, base):
    import json
    import struct

    def st(entries):
        raw = json.dumps(entries).encode()
        raw += b" " * (-len(raw) % 8)
        return struct.pack("<Q", len(raw)) + raw + b"\0" * 16

    # 4 bytes on file for a shape of 4e12 floats: refused, not allocated.
    client.write(f"{base}/huge", st({"x": {"dtype": "F32", "shape": [1_000_000, 1_000_000], "data_offsets": [0, 4]}}))
    with pytest.raises(ValueError, match="4 bytes on file"):
        ckpt.load(f"{base}/huge", client=client)
    client.write(f"{base}/neg", st({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}))
    with pytest.raises(ValueError, match="bad shape"):
        ckpt.load(f"{base}/neg", client=client)
    client.write(f"{base}/nodtype", st({"x": {"shape": [1], "data_offsets": [0, 4]}}))
    with pytest.raises(ValueError, match="bad safetensors entry"):
        ckpt.read_header(f"{base}/nodtype", client=client)


def test_an_open_reader_never_mixes_in_a_replacing_file(client, base):
    """load reads header and tensors through one open: after a save renames
    a new file over the path, that open yields the old bytes or fails; it
    never returns the new ones."""
    path = f"{base}/swap.safetensors"
    ckpt.save({"w": torch.zeros(1 << 18)}, path, client=client)
    old = client.read(path)
    r = client._open_reader(path)
    ckpt.save({"w": torch.ones(1 << 18)}, path, client=client)
    assert client.read(path) != old
    try:
        got = r.read_at(0, len(old))
    except OSError:
        return
    assert got == old


cuda = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="CUDA not available here: GPU read_into/load tests need a GPU "
    "(the pinned staging path is covered on CPU by test_staged_*)",
)


@cuda
def test_read_into_cuda_tensor(client, base):
    data = os.urandom(40 << 20)
    client.write(f"{base}/gpu", data)
    t = torch.zeros(len(data), dtype=torch.uint8, device="cuda")
    assert client.read_into(f"{base}/gpu", t) == len(data)
    assert t.cpu().numpy().tobytes() == data


@cuda
def test_load_to_cuda(client, base):
    sd = small_model().state_dict()
    ckpt.save(sd, f"{base}/m.safetensors", client=client)
    back = ckpt.load(f"{base}/m.safetensors", device="cuda", client=client)
    assert all(t.is_cuda for t in back.values())
    assert_state_equal(sd, {k: v.cpu() for k, v in back.items()})


DCP_WORKER = os.path.join(os.path.dirname(__file__), "dcp_worker.py")


def test_dcp_save_load_two_ranks(node, client, base, tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    ckpt_dir = f"cv:/{base}/dcp"
    env = dict(os.environ, CURVINE_META=node.meta, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2")
    procs = [subprocess.Popen([sys.executable, DCP_WORKER, ckpt_dir], env=dict(env, RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outs.append(out)
    for r, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"rank {r} failed:\n{out}"
        assert "loaded ok" in out, out
    names = sorted(s.name for s in client.ls(f"{base}/dcp"))
    assert ".metadata" in names
    data_files = [n for n in names if n.endswith(".distcp")]
    assert len(data_files) == 2, names  # one per rank, written by that rank


def test_dcp_save_over_a_checkpoint_removes_its_metadata_first(client, base):
    """A save over an existing checkpoint that fails midway must not leave
    the old .metadata describing files the new save was rewriting."""
    import warnings

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    d = f"cv:/{base}/dcp1"
    state = {"w": torch.randn(256, 256), "b": torch.arange(10)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # single process: no process group; overwrite warning
        dcp.save(state, storage_writer=ckpt.StorageWriter(d, client=client), no_dist=True)
        assert client.exists(f"{base}/dcp1/.metadata")
        seen = {}

        def during(_path):
            seen["metadata"] = client.exists(f"{base}/dcp1/.metadata")

        with pytest.raises(CheckpointException, match="injected"):
            dcp.save({"w": torch.zeros(256, 256), "b": torch.zeros(10, dtype=torch.int64)},
                     storage_writer=ckpt.StorageWriter(d, client=_FailingWrites(client, fail_at=1, on_fail=during)),
                     no_dist=True)
        assert seen == {"metadata": False}, "removed before the first data write"
        assert not client.exists(f"{base}/dcp1/.metadata")
        fresh = {"w": torch.empty(256, 256), "b": torch.empty(10, dtype=torch.int64)}
        with pytest.raises((CheckpointException, FileNotFoundError), match="metadata"):
            dcp.load(fresh, storage_reader=ckpt.StorageReader(d, client=client), no_dist=True)
        # A save that completes is loadable again.
        dcp.save(state, storage_writer=ckpt.StorageWriter(d, client=client), no_dist=True)
        dcp.load(fresh, storage_reader=ckpt.StorageReader(d, client=client), no_dist=True)
    assert torch.equal(fresh["w"], state["w"]) and torch.equal(fresh["b"], state["b"])
