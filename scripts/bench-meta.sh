#!/usr/bin/env bash
# Metadata throughput, as recorded in docs/benchmarks.md: `cv bench meta`
# against a fresh single node (`cv up`) and a fresh three-member group
# (three `cv meta` processes on loopback), each with the client on meta
# frames (the default) and on gRPC (CURVINE_META_TRANSPORT=grpc) in the
# same run, for 16 tasks and 1 task. Homes live under $HOMEDIR (default
# /var/tmp: a disk, so fsyncs are real).
#
# usage: scripts/bench-meta.sh [FILES] [--three]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
files=${1:-20000}
three=${2:-}
root=$(mktemp -d -p "${HOMEDIR:-/var/tmp}" cv-bench-meta-XXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$root"
}
trap cleanup EXIT

wait_for() { # FILE PATTERN
    for _ in $(seq 600); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; exit 1
}

bench() { # LABEL META TRANSPORT ARGS...
    local label=$1 meta=$2 transport=$3; shift 3
    echo "== $label, $transport: cv bench meta $*"
    CURVINE_META_TRANSPORT=$transport "$CV_BIN" bench meta --meta "$meta" "$@"
}

start_up() {
    local w; w=$(mktemp -d -p "$root" up-XXXX)
    "$CV_BIN" up --home "$w" --meta-port 0 --worker-port 0 --web-port 0 --mem 1GiB --mem-dir "/dev/shm/$(basename "$w")" > "$w/up.log" 2>&1 &
    pids+=($!)
    wait_for "$w/up.log" "curvine ready"
    up_pid=$!
    meta=$(sed -n 's/.*curvine ready.*meta=\([^ ]*\).*/\1/p' "$w/up.log" | head -1)
}

for transport in frames grpc; do
    start_up
    bench "single node" "$meta" "$transport" -t 16 --files "$files"
    bench "single node" "$meta" "$transport" -t 1 --files $((files / 5)) --ops create,stat,rename,delete
    echo "meta RSS: $(grep VmRSS /proc/$up_pid/status | awk '{print $2, $3}')"
    kill "$up_pid"; wait "$up_pid" 2>/dev/null || true
    rm -rf /dev/shm/up-*
done

if [ "$three" = "--three" ]; then
    ports=$(python3 -c 'import socket
s=[socket.socket() for _ in range(3)]
[x.bind(("127.0.0.1",0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))')
    read -r p1 p2 p3 <<< "$ports"
    peers="1=127.0.0.1:$p1,2=127.0.0.1:$p2,3=127.0.0.1:$p3"
    for id in 1 2 3; do
        port=$(eval echo "\$p$id")
        "$CV_BIN" meta --id $id --peers "$peers" --dir "$root/m$id" --host 127.0.0.1 --port "$port" --web-port 0 > "$root/m$id.log" 2>&1 &
        pids+=($!)
    done
    for id in 1 2 3; do wait_for "$root/m$id.log" "meta node serving"; done
    all="127.0.0.1:$p1,127.0.0.1:$p2,127.0.0.1:$p3"
    until "$CV_BIN" fs --meta "$all" ls / > /dev/null 2>&1; do sleep 0.2; done
    for transport in frames grpc; do
        bench "three members" "$all" "$transport" -t 16 --files "$files" --dir "/.bench-$transport"
    done
fi
