#!/usr/bin/env bash
# UFS benchmark (not a test): starts moto on loopback, fills a bucket with
# 64 KiB objects and 64 MiB objects, starts `cv up`, and runs `cv bench ufs`
# on both sets: direct opendal reads vs Curvine cold / hot / `cv warm`.
#   scripts/bench-ufs.sh [SMALL_COUNT] [LARGE_COUNT] [LARGE_READERS] [cv bench ufs flags]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
./scripts/s3-server.sh install >/dev/null
cargo build --release -q -p curvine-cli --features "$CV_FEATURES"
small=${1:-2000}; large=${2:-8}; readers=${3:-4}
work=$(mktemp -d); shm=$(mktemp -d -p /dev/shm cv-bench-XXXXXX 2>/dev/null || mktemp -d)
# The memory tier goes in its own directory, removed with everything else.
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work" "$shm"' EXIT
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
"$HOME/.cache/curvine/moto-venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
ep="http://127.0.0.1:$port"
for _ in $(seq 100); do curl -s "$ep" >/dev/null && break; sleep 0.1; done
AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test "$HOME/.cache/curvine/moto-venv/bin/python" - "$ep" "$small" "$large" <<'PY'
import sys, os, boto3, concurrent.futures as cf
ep, small, large = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s3 = boto3.client("s3", endpoint_url=ep, region_name="us-east-1")
s3.create_bucket(Bucket="bench")
def put(k, n): s3.put_object(Bucket="bench", Key=k, Body=os.urandom(n))
with cf.ThreadPoolExecutor(16) as ex:
    list(ex.map(lambda i: put(f"small/o{i:06}", 64 << 10), range(small)))
for i in range(large): put(f"large/o{i:03}", 64 << 20)
PY
"$CV_BIN" up --home "$work/home" --meta-port 0 --worker-port 0 --web-port 0 --mem 4GiB --mem-dir "$shm/mem" >"$work/up.log" 2>&1 &
uppid=$!
for _ in $(seq 300); do grep -q "curvine ready" "$work/up.log" && break; sleep 0.1; done
meta=$(sed -n 's/.*curvine ready meta=\([^ ]*\).*/\1/p' "$work/up.log")
opts=(-o "endpoint=$ep" -o region=us-east-1 -o access_key_id=test -o secret_access_key=test)
echo "== 64 KiB objects"; "$CV_BIN" bench ufs --meta "$meta" "s3://bench/small" "${opts[@]}" -t 16 "${@:4}"
# One GET per 64 MiB block (moto re-reads the whole object on every ranged GET).
if [ "$large" -gt 0 ]; then
  echo "== 64 MiB objects"
  "$CV_BIN" bench ufs --meta "$meta" "s3://bench/large" "${opts[@]}" -o read_chunk=64MiB -t "$readers" "${@:4}"
fi
# Memory: the server's peak RSS after all of the above, and the CLI's while
# listing the small set page by page.
"$CV_BIN" mount --meta "$meta" "s3://bench/small" /rss "${opts[@]}" >/dev/null
python3 - "$CV_BIN" "$meta" <<'PY'
import resource, subprocess, sys
n = sum(1 for _ in subprocess.Popen([sys.argv[1], "fs", "ls", "--meta", sys.argv[2], "/rss"], stdout=subprocess.PIPE).stdout)
print(f"== cv fs ls of {n} entries: CLI peak RSS {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024} MiB")
PY
echo "== cv up (meta + worker) peak RSS: $(awk '/VmHWM/ {print int($2/1024) " MiB"}' /proc/$uppid/status)"
