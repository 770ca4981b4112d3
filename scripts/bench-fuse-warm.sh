#!/usr/bin/env bash
# FUSE benchmark (not a test): a 1 GiB object in moto (S3 on loopback),
# mounted and `cv warm`ed (its 16 blocks are loaded one by one), read with
# fio (bs=1M) through `cv fuse --passthrough`: the first open asks the
# worker to join the blocks into one file (one copy), later reads are the
# kernel's. Baselines in the same run: `cv fs get` of the same file through
# the SDK (short-circuit), and fio through `cv fuse` without passthrough.
#   scripts/bench-fuse-warm.sh [SIZE_MIB]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
command -v fio >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio >/dev/null; }
./scripts/s3-server.sh install >/dev/null
[ -n "${NOBUILD:-}" ] || cargo build --release -q -p curvine-cli --features "$CV_FEATURES"
mib=${1:-1024}
work=$(mktemp -d -p "$HOME"); shm=$(mktemp -d -p /dev/shm cv-warm-XXXXXX); mnt="$work/mnt"; mkdir -p "$mnt"
cleanup() { pkill -f "fuse $mnt" 2>/dev/null || true; sleep 1; umount -l "$mnt" 2>/dev/null || true; kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work" "$shm"; }
trap cleanup EXIT
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
"$HOME/.cache/curvine/moto-venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
ep="http://127.0.0.1:$port"
for _ in $(seq 100); do curl -s "$ep" >/dev/null && break; sleep 0.1; done
AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test "$HOME/.cache/curvine/moto-venv/bin/python" - "$ep" "$mib" <<'PY'
import sys, os, boto3
ep, mib = sys.argv[1], int(sys.argv[2])
s3 = boto3.client("s3", endpoint_url=ep, region_name="us-east-1")
s3.create_bucket(Bucket="warm")
s3.put_object(Bucket="warm", Key="model.bin", Body=os.urandom(mib << 20))
PY
"$CV_BIN" up --home "$work/home" --meta-port 0 --worker-port 0 --web-port 0 --mem $((mib * 3 + 512))MiB --mem-dir "$shm/mem" >"$work/up.log" 2>&1 &
for _ in $(seq 300); do grep -q "curvine ready" "$work/up.log" && break; sleep 0.1; done
export CURVINE_META=$(sed -n 's/.*curvine ready meta=\([^ ]*\).*/\1/p' "$work/up.log")
"$CV_BIN" mount "s3://warm/" /w -o "endpoint=$ep" -o region=us-east-1 -o access_key_id=test -o secret_access_key=test >/dev/null
"$CV_BIN" warm /w >/dev/null
rate() { python3 -c "import sys; print(round($1 / (1 << 20) / float(sys.argv[1])))" "$2"; }
bytes=$((mib << 20))
for i in 1 2 3; do
  s=$(date +%s.%N); "$CV_BIN" fs get /w/model.bin - > /dev/null; e=$(date +%s.%N)
  echo "SDK cv fs get (short-circuit), pass $i: $(rate $bytes "$(echo "$e - $s" | bc)") MiB/s"
done
fio_read() { fio --name=seq --filename="$mnt/w/model.bin" --readonly --rw=read --bs=1M --numjobs=$1 --direct=$2 --ioengine=psync --offset_increment=$((mib/$1))m --size=$((mib/$1))m --group_reporting --output-format=json 2>/dev/null | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["read"]["bw"] / 1024))'; }
for mode in "" "--passthrough"; do
  "$CV_BIN" fuse "$mnt" $mode >"$work/fuse.log" 2>&1 &
  for _ in $(seq 300); do grep -q "curvine ready" "$work/fuse.log" && break; sleep 0.1; done
  if [ -n "$mode" ]; then
    s=$(date +%s.%N); exec 9<"$mnt/w/model.bin"; e=$(date +%s.%N)
    echo "first passthrough open (joins the blocks): $(echo "($e - $s) * 1000" | bc | cut -d. -f1) ms"
  fi
  for j in 1 4; do for d in 0 1; do
    echo "fuse ${mode:-normal} jobs=$j direct=$d: $(fio_read $j $d) MiB/s"
  done; done
  [ -n "$mode" ] && exec 9<&-
  grep -i "passthrough" "$work/fuse.log" || true
  pkill -f "fuse $mnt" || true
  for _ in $(seq 50); do mountpoint -q "$mnt" || break; sleep 0.1; done
done
