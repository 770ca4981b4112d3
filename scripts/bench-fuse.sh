#!/usr/bin/env bash
# FUSE benchmark (not a test), all in one run on one `cv up` node:
#  - fio sequential reads (bs=1M; 1 and 4 jobs; buffered and O_DIRECT) of a
#    cached file through `cv fuse`, against `cv bench read` of the same
#    file through the SDK;
#  - 64 KiB small files read per second (8 threads) through the mount;
#  - create / stat / unlink of N files through the mount, ops/s, from 1
#    and from 8 threads.
#   scripts/bench-fuse.sh [SIZE_MIB] [SMALL_FILES] [META_FILES]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
command -v fio >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio >/dev/null; }
[ -n "${NOBUILD:-}" ] || cargo build --release -q -p curvine-cli --features "$CV_FEATURES"
mib=${1:-2048}; small=${2:-5000}; metan=${3:-10000}
work=$(mktemp -d -p "$HOME"); shm=$(mktemp -d -p /dev/shm cv-bench-XXXXXX); mnt="$work/mnt"
mkdir -p "$mnt"
cleanup() {
  kill "$fusepid" 2>/dev/null || true; sleep 1; umount -l "$mnt" 2>/dev/null || true
  kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work" "$shm"
}
fusepid=""
trap cleanup EXIT

"$CV_BIN" up --home "$work/home" --meta-port 0 --worker-port 0 --web-port 0 \
  --mem "$((mib + 1024))MiB" --disk 1GiB --mem-dir "$shm/mem" >"$work/up.log" 2>&1 &
for _ in $(seq 300); do grep -q "curvine ready" "$work/up.log" && break; sleep 0.1; done
meta=$(sed -n 's/.*curvine ready meta=\([^ ]*\).*/\1/p' "$work/up.log")
export CURVINE_META=$meta

# The SDK figure (also writes the file /.bench/read-<bytes>).
sdk=$("$CV_BIN" bench read --size "${mib}MiB" --rounds 3 --json | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["mib_s"]))')
sdk_tcp=$("$CV_BIN" bench read --size "${mib}MiB" --rounds 3 --no-short-circuit --json | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["mib_s"]))')

"$CV_BIN" fuse "$mnt" >"$work/fuse.log" 2>&1 &
fusepid=$!
for _ in $(seq 300); do grep -q "curvine ready" "$work/fuse.log" && break; sleep 0.1; done
file="$mnt/.bench/read-$((mib << 20))"
[ -f "$file" ] || { echo "bench file missing at $file" >&2; exit 1; }

fio_read() { # jobs direct
  # Each run starts from the same state: Curvine's copy warm (the `cat`
  # below), the kernel's page cache of the mount empty. A run right after a
  # buffered one otherwise pays for dropping that run's 2 GiB of pages
  # (measured: O_DIRECT 3.2 GB/s after a buffered run, 6.4 GB/s next).
  sync; echo 1 > /proc/sys/vm/drop_caches 2>/dev/null || true
  fio --name=seq --filename="$file" --readonly --rw=read --bs=1M --numjobs="$1" --direct="$2" --ioengine=psync \
    --offset_increment=$((mib / $1))m --size=$((mib / $1))m --group_reporting --output-format=json 2>/dev/null |
    python3 -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["read"]["bw"] / 1024))'
}
cat "$file" >/dev/null  # the daemon's mappings and checksums warm
b1=$(fio_read 1 0); b4=$(fio_read 4 0); d1=$(fio_read 1 1); d4=$(fio_read 4 1)

echo "== sequential read of a cached ${mib} MiB file (MiB/s)"
echo "SDK (cv bench read): short-circuit $sdk, TCP $sdk_tcp"
for r in "buffered 1 job:$b1" "buffered 4 jobs:$b4" "O_DIRECT 1 job:$d1" "O_DIRECT 4 jobs:$d4"; do
  v=${r##*:}; python3 -c "print(f'fio ${r%%:*}: $v MiB/s   ratio vs SDK short-circuit {$v/$sdk:.2f}, vs SDK TCP {$v/$sdk_tcp:.2f}')"
done

# Small files: written through the SDK (cached), read through the mount.
python3 - "$mnt" "$small" <<'PY'
import os, sys, time, concurrent.futures as cf
mnt, n = sys.argv[1], int(sys.argv[2])
d = os.path.join(mnt, "small"); os.makedirs(d, exist_ok=True)
blob = os.urandom(64 << 10)
for i in range(n):
    with open(os.path.join(d, f"{i:06d}"), "wb") as f: f.write(blob)
def read(i):
    with open(os.path.join(d, f"{i:06d}"), "rb") as f: return len(f.read())
os.system("sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null")
t = time.time()
with cf.ThreadPoolExecutor(8) as ex: total = sum(ex.map(read, range(n)))
dt = time.time() - t
assert total == n * len(blob)
print(f"== 64 KiB files through the mount, 8 threads: {n/dt:.0f} files/s ({total/dt/2**20:.0f} MiB/s)")
PY

python3 - "$mnt" "$metan" <<'PY'
import os, sys, time
mnt, n = sys.argv[1], int(sys.argv[2])
d = os.path.join(mnt, "meta"); os.makedirs(d, exist_ok=True)
names = [os.path.join(d, f"f{i:06d}") for i in range(n)]
t = time.time()
for p in names: os.close(os.open(p, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644))
c = time.time() - t; t = time.time()
for p in names: os.stat(p)
s = time.time() - t; t = time.time()
for p in names: os.unlink(p)
u = time.time() - t
print(f"== metadata through the mount, 1 thread, {n} files: create {n/c:.0f}/s, stat {n/s:.0f}/s, unlink {n/u:.0f}/s")
PY

# The same from 8 threads, each in its own directory (the kernel serializes
# creates and unlinks within one directory on that directory's lock).
python3 - "$mnt" "$metan" <<'PY'
import os, sys, time, concurrent.futures as cf
mnt, n, k = sys.argv[1], int(sys.argv[2]), 8
dirs = [os.path.join(mnt, "meta8", f"t{t}") for t in range(k)]
for d in dirs: os.makedirs(d)
names = [[os.path.join(dirs[t], f"f{i:06d}") for i in range(t, n, k)] for t in range(k)]
def run(op):
    t = time.time()
    with cf.ThreadPoolExecutor(k) as ex: list(ex.map(lambda ps: [op(p) for p in ps], names))
    return n / (time.time() - t)
c = run(lambda p: os.close(os.open(p, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)))
s = run(os.stat)
u = run(os.unlink)
print(f"== metadata through the mount, {k} threads, {n} files: create {c:.0f}/s, stat {s:.0f}/s, unlink {u:.0f}/s")
PY

# Cluster-wide locks: every lock change is a meta write. fcntl lock+unlock
# pairs, and sqlite (which locks per transaction), against a local directory.
python3 - "$mnt" "$work" <<'PY'
import fcntl, os, sqlite3, sys, time
def run(d, label):
    p = os.path.join(d, "lockbench")
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
    n, t = 2000, time.time()
    for _ in range(n):
        fcntl.lockf(fd, fcntl.LOCK_EX, 0, 0); fcntl.lockf(fd, fcntl.LOCK_UN, 0, 0)
    pairs = n / (time.time() - t)
    os.close(fd)
    db = sqlite3.connect(os.path.join(d, "bench.db"))
    db.execute("create table t (k integer primary key, v text)")
    m, t = 300, time.time()
    for i in range(m):
        db.execute("insert into t values (?, ?)", (i, "x" * 100)); db.commit()
    tx = m / (time.time() - t)
    assert db.execute("select count(*) from t").fetchone()[0] == m
    db.close()
    print(f"== locks, {label}: fcntl lock+unlock {pairs:.0f} pairs/s; sqlite {tx:.0f} insert transactions/s")
local = os.path.join(sys.argv[2], "local"); os.makedirs(local, exist_ok=True)
run(sys.argv[1], "through the mount (cluster-wide)")
run(local, "local directory (same run)")
PY
