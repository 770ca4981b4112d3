#!/usr/bin/env bash
# Memory with a large prefix (not a test): N small files in a local
# directory mounted as file://, then `cv fs ls` of it (CLI peak RSS) and
# `cv warm` of it; prints the peak RSS of `cv up` (meta + worker) at the end.
#   scripts/rss-100k.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
cargo build --release -q -p curvine-cli --features "$CV_FEATURES"
n=${1:-100000}
work=$(mktemp -d); shm=$(mktemp -d -p /dev/shm cv-bench-XXXXXX 2>/dev/null || mktemp -d)
# The memory tier goes in its own directory, removed with everything else.
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work" "$shm"' EXIT
mkdir -p "$work/ufs/set"
python3 - "$work/ufs/set" "$n" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
blob = os.urandom(1024)
for i in range(n):
    with open(f"{d}/f{i:07}", "wb") as f: f.write(blob)
PY
"$CV_BIN" up --home "$work/home" --meta-port 0 --worker-port 0 --web-port 0 --mem 2GiB --mem-dir "$shm/mem" >"$work/up.log" 2>&1 &
uppid=$!
for _ in $(seq 300); do grep -q "curvine ready" "$work/up.log" && break; sleep 0.1; done
meta=$(sed -n 's/.*curvine ready meta=\([^ ]*\).*/\1/p' "$work/up.log")
echo "after start: cv up RSS $(awk '/VmRSS/ {print int($2/1024) " MiB"}' /proc/$uppid/status)"
"$CV_BIN" mount --meta "$meta" "file://$work/ufs" /big >/dev/null
python3 - "$CV_BIN" "$meta" <<'PY'
import resource, subprocess, sys, time
t = time.time()
p = subprocess.Popen([sys.argv[1], "fs", "ls", "--meta", sys.argv[2], "/big/set"], stdout=subprocess.PIPE)
n = sum(1 for _ in p.stdout)
p.wait()
print(f"cv fs ls /big/set: {n} entries in {time.time()-t:.1f} s, CLI peak RSS {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024} MiB")
t = time.time()
subprocess.run([sys.argv[1], "warm", "--meta", sys.argv[2], "/big/set"], check=True, stdout=subprocess.DEVNULL)
print(f"cv warm /big/set: {time.time()-t:.1f} s, CLI peak RSS {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024} MiB (max of both)")
PY
echo "cv up (meta + worker) peak RSS: $(awk '/VmHWM/ {print int($2/1024) " MiB"}' /proc/$uppid/status), now $(awk '/VmRSS/ {print int($2/1024) " MiB"}' /proc/$uppid/status)"
