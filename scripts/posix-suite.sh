#!/usr/bin/env bash
# POSIX conformance of `cv fuse`: runs pjdfstest (the Rust rewrite, from
# crates.io, installed once under ~/.cache/curvine) in a fresh mount on a
# fresh `cv up` node, prints the pass/fail/skip counts, and fails when
# fewer than MIN_PASS tests pass (the count recorded in docs/benchmarks.md,
# so a regression shows). All pass when recorded; the node has 3.5 GiB of
# cache because `open::interact_2gb` writes past 2 GiB (on a host with less
# free disk it and the test running beside it fail with ENOSPC).
#   scripts/posix-suite.sh [MIN_PASS]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
min=${1:-340}  # 350 passed when recorded (329 before the suite's own paths were made traversable)
root="$HOME/.cache/curvine/pjdfstest"
if [ ! -x "$root/bin/pjdfstest" ]; then
  dpkg -s libacl1-dev >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libacl1-dev >/dev/null
  cargo install -q pjdfstest --version 0.2.2 --locked --root "$root"
fi
if [ ! -e /dev/fuse ] || [ "$(id -u)" != 0 ]; then
  echo "SKIPPED posix-suite: needs /dev/fuse and root"; exit 0
fi
[ -x "$CV_BIN" ] || cargo build --release -q -p curvine-cli --features "$CV_FEATURES"
work=$(mktemp -d); shm=$(mktemp -d -p /dev/shm cv-posix-XXXXXX); mnt="$work/mnt"; mkdir -p "$mnt"
# The suite runs steps as other users with absolute paths: every directory
# above the mount must let them through (mktemp makes 0700).
chmod 755 "$work"
fusepid=""; uppid=""
cleanup() {
  # The daemon unmounts at SIGTERM; wait for it (bounded) before detaching.
  if [ -n "$fusepid" ]; then
    kill "$fusepid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$fusepid" 2>/dev/null || break; sleep 0.1; done
  fi
  umount -l "$mnt" 2>/dev/null || true
  [ -n "$uppid" ] && kill "$uppid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work" "$shm"
}
trap cleanup EXIT
"$CV_BIN" up --home "$work/home" --meta-port 0 --worker-port 0 --web-port 0 --mem 512MiB --disk 3GiB \
  --mem-dir "$shm/mem" >"$work/up.log" 2>&1 &
uppid=$!
ready() { # LOG: waits up to 60 s for the process's ready line, or fails with its log
  for _ in $(seq 600); do grep -q "curvine ready" "$1" && return 0; sleep 0.1; done
  echo "posix-suite: no ready line in $1:" >&2; tail -20 "$1" >&2; exit 1
}
ready "$work/up.log"
meta=$(grep "curvine ready" "$work/up.log" | sed -n 's/.*meta=\([^ ]*\).*/\1/p')
"$CV_BIN" fuse "$mnt" --meta "$meta" --allow-other >"$work/fuse.log" 2>&1 &
fusepid=$!
ready "$work/fuse.log"
# The suite must run on the mount, never on the directory under it.
fstype=$(stat -f -c %T "$mnt")
case "$fstype" in fuse|fuseblk) mountpoint -q "$mnt" ;; *) false ;; esac ||
  { echo "posix-suite: $mnt is not a FUSE mount ($fstype)" >&2; exit 1; }
mkdir "$mnt/t"
cat >"$work/pjd.toml" <<'TOML'
[features]

[settings]
naptime = 0.001
allow_remount = false

[dummy_auth]
entries = [["nobody", "nogroup"], ["daemon", "daemon"]]
TOML
(cd "$mnt/t" && timeout 900 "$root/bin/pjdfstest" -c "$work/pjd.toml" -p "$mnt/t" >"$work/result.txt" 2>&1) || true
[ -n "${POSIX_RESULT:-}" ] && cp "$work/result.txt" "$POSIX_RESULT"
count() { grep -cE "^[a-z_0-9]+::[a-z_0-9:]+ +$1" "$work/result.txt" || true; }
pass=$(count "ok$"); fail=$(count "FAILED$"); skip=$(count "skipped")
echo "pjdfstest on cv fuse: $pass passed, $fail failed, $skip skipped"
echo "failures by syscall:"; { grep -E "FAILED$" "$work/result.txt" || true; } | cut -d: -f1 | sort | uniq -c | sort -rn | head -12
if [ "$pass" -lt "$min" ]; then
  echo "posix-suite: $pass passed, fewer than the $min recorded" >&2; exit 1
fi
