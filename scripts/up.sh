#!/usr/bin/env bash
# Builds `cv` and runs an all-in-one node with embedded defaults.
# Extra arguments go to `cv up` (e.g. --home DIR, --meta-port 0).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
. scripts/env.sh
cargo build --release -p curvine-cli --features "$CV_FEATURES"
exec "$CV_BIN" up "$@"
