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
