"""A local `cv up` node for tests and benchmarks: started on OS-chosen ports
in temp dirs (memory tier on /dev/shm), ready once its ready line is out and
a worker is alive, removed on ``stop()``."""

import os
import shutil
import subprocess
import tempfile
import threading
import time

from . import connect

READY_TIMEOUT = 60.0


def cv_bin():
    default = os.path.expanduser("~/.cache/curvine/target/release/cv")
    path = os.environ.get("CV_BIN") or default
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"cv binary not found at {path}: build it (cargo build --release -p curvine-cli) or set CV_BIN")
    return path


class Node:
    """A running `cv up`: its meta address, home, and log."""

    def __init__(self, mem="2GiB", extra_args=()):
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        # Home (and so the Raft log) on tmpfs too: its fsyncs cost nothing, so
        # tests that create thousands of files do not wait on the disk.
        self.home = tempfile.mkdtemp(prefix="cv-pytest-", dir=shm)
        self.mem_dir = tempfile.mkdtemp(prefix="cv-pytest-", dir=shm)
        self.log_path = os.path.join(self.home, "cv.log")
        args = [cv_bin(), "up", "--home", self.home, "--mem-dir", self.mem_dir, "--mem", mem,
                "--meta-port", "0", "--worker-port", "0", "--web-port", "0", *extra_args]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.ready = self._wait_ready_line()
        self.meta = self.ready["meta"]
        self._wait_worker()

    def _wait_ready_line(self):
        # A reader thread hands over the ready line and then keeps draining
        # stdout so the server never blocks on a full pipe.
        got = {}
        seen = threading.Event()

        def drain():
            for line in self.proc.stdout:
                if line.startswith("curvine ready") and not seen.is_set():
                    got["line"] = line.strip()
                    seen.set()
                else:
                    self.log.write(line)
            seen.set()

        threading.Thread(target=drain, daemon=True).start()
        if not seen.wait(READY_TIMEOUT) or "line" not in got:
            self.stop()
            raise RuntimeError(f"cv up did not become ready: exit {self.proc.poll()}\n{self.log_tail()}")
        return dict(kv.split("=", 1) for kv in got["line"].split()[2:] if "=" in kv)

    def _wait_worker(self):
        c = connect(self.meta, check=False)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                if any(w["alive"] for w in c.report()["workers"]):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"no live worker after {READY_TIMEOUT}s\n{self.log_tail()}")
            # Poll interval between status calls, not a wait for an event.
            time.sleep(0.05)

    def log_tail(self, n=40):
        self.log.flush()
        with open(self.log_path) as f:
            return "".join(f.readlines()[-n:])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.mem_dir, ignore_errors=True)
        shutil.rmtree(self.home, ignore_errors=True)



    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
