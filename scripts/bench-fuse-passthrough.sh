#!/usr/bin/env bash
# FUSE benchmark (not a test): fio sequential reads (bs=1M; 1 and 4 jobs;
# buffered and O_DIRECT) of a cached 2 GiB file written through the SDK in
# default 64 MiB blocks (the worker keeps them in one extent file), through
# `cv fuse` without and with `--passthrough`, against `cv bench read` of
# the same file in the same run.
#   BS=2GiB scripts/bench-fuse-passthrough.sh   (the file as one block)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
command -v fio >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio >/dev/null; }
cargo build --release -q -p curvine-cli --features "$CV_FEATURES"
BS=${BS:-64MiB}
work=$(mktemp -d -p "$HOME"); shm=$(mktemp -d -p /dev/shm cv-pt-XXXXXX); mnt="$work/mnt"; mkdir -p "$mnt"
cleanup() { pkill -f "fuse $mnt" 2>/dev/null || true; sleep 1; umount -l "$mnt" 2>/dev/null || true; kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work" "$shm"; }
trap cleanup EXIT
"$CV_BIN" up --home "$work/home" --meta-port 0 --worker-port 0 --web-port 0 --mem 3GiB --disk 1GiB --block-size $BS --mem-dir "$shm/mem" >"$work/up.log" 2>&1 &
for _ in $(seq 300); do grep -q "curvine ready" "$work/up.log" && break; sleep 0.1; done
export CURVINE_META=$(sed -n 's/.*curvine ready meta=\([^ ]*\).*/\1/p' "$work/up.log")
echo "SDK short-circuit: $("$CV_BIN" bench read --size 2GiB --rounds 3 --json | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["mib_s"]))') MiB/s"
echo "SDK TCP: $("$CV_BIN" bench read --size 2GiB --rounds 3 --no-short-circuit --json | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["mib_s"]))') MiB/s"
file="$mnt/.bench/read-$((2048 << 20))"
for mode in "" "--passthrough"; do
  "$CV_BIN" fuse "$mnt" $mode >"$work/fuse.log" 2>&1 &
  for _ in $(seq 300); do grep -q "curvine ready" "$work/fuse.log" && break; sleep 0.1; done
  sleep 0.5
  cat "$file" > /dev/null
  for j in 1 4; do for d in 0 1; do
    bw=$(fio --name=seq --filename="$file" --readonly --rw=read --bs=1M --numjobs=$j --direct=$d --ioengine=psync --offset_increment=$((2048/j))m --size=$((2048/j))m --group_reporting --output-format=json 2>/dev/null | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["read"]["bw"] / 1024))')
    echo "fuse ${mode:-normal} jobs=$j direct=$d: $bw MiB/s"
  done; done
  grep -i "passthrough" "$work/fuse.log" || true
  kill %2 2>/dev/null || pkill -f "fuse $mnt" || true
  for _ in $(seq 50); do mountpoint -q "$mnt" || break; sleep 0.1; done
done
