#!/usr/bin/env bash
# Runs the Python package's tests (python/tests) against real `cv up`
# processes that the pytest fixtures start on OS-chosen ports. Builds `cv`,
# sets up the virtualenv and the package first (scripts/py-env.sh).
# Extra arguments go to pytest, e.g. `-k checkpoint -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
. scripts/env.sh
cargo build --release -p curvine-cli --features "$CV_FEATURES"
./scripts/py-env.sh
VENV="${CURVINE_VENV:-$HOME/.cache/curvine/venv}"
export CV_BIN
exec "$VENV/bin/python" -m pytest python/tests -ra "$@"
