#!/usr/bin/env bash
# Tier benchmark (not a test): `cv bench read` of a file held in one tier,
# against `fio` sequential reads (bs=1M, one job) of a file in the same tier
# directory, in the same run. MEM: a tmpfs directory; SSD: the disk tier
# under a temp home (buffered, i.e. page cache, and O_DIRECT = the device).
#   scripts/bench-tiers.sh [SIZE_MIB]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
command -v fio >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio >/dev/null; }
cargo build --release -q -p curvine-cli --features "$CV_FEATURES"
mib=${1:-1024}
work=$(mktemp -d -p "$HOME"); shm=$(mktemp -d -p /dev/shm cv-bench-XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work" "$shm"' EXIT

# Starts `cv up` with the given flags; sets $meta and $uppid.
up() {
  local log="$work/up-$1.log"; shift
  "$CV_BIN" up --meta-port 0 --worker-port 0 --web-port 0 "$@" >"$log" 2>&1 &
  uppid=$!
  for _ in $(seq 300); do grep -q "curvine ready" "$log" && break; sleep 0.1; done
  meta=$(sed -n 's/.*curvine ready meta=\([^ ]*\).*/\1/p' "$log")
}

# fio sequential read of a ${mib} MiB file in $1; prints MiB/s.
fio_read() {
  fio --name=seq --directory="$1" --rw=read --bs=1M --size="${mib}m" --numjobs=1 --ioengine=psync \
    --invalidate=0 "${@:2}" --output-format=json 2>/dev/null |
    python3 -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["read"]["bw"] / 1024))'
}

bench() {
  "$CV_BIN" bench read --meta "$meta" --size "${mib}MiB" --rounds 3 --json "$@" |
    python3 -c 'import json,sys; print(round(json.load(sys.stdin)["mib_s"]))'
}

echo "== MEM tier ($shm/mem, tmpfs), ${mib} MiB"
up mem --home "$work/mem" --mem "$((mib + 256))MiB" --disk 256MiB --mem-dir "$shm/mem"
sc=$(bench); tcp=$(bench --no-short-circuit)
fio_read "$shm/mem" >/dev/null  # lay the file out, then measure
f=$(fio_read "$shm/mem")
echo "cv bench read short-circuit: $sc MiB/s  TCP: $tcp MiB/s  fio (same dir): $f MiB/s  ratio $(python3 -c "print(round($sc/$f,2))")"
kill "$uppid" 2>/dev/null || true; wait "$uppid" 2>/dev/null || true

echo "== SSD tier ($work/ssd/data/ssd), ${mib} MiB"
up ssd --home "$work/ssd" --no-mem --disk "$((mib + 512))MiB"
sc=$(bench); tcp=$(bench --no-short-circuit)
dir="$work/ssd/data/ssd"
fio_read "$dir" >/dev/null
f=$(fio_read "$dir"); fd=$(fio_read "$dir" --direct=1)
echo "cv bench read short-circuit: $sc MiB/s  TCP: $tcp MiB/s  fio buffered: $f MiB/s  fio O_DIRECT: $fd MiB/s  ratio (buffered) $(python3 -c "print(round($sc/$f,2))")"
kill "$uppid" 2>/dev/null || true; wait "$uppid" 2>/dev/null || true
