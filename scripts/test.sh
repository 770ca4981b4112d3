#!/usr/bin/env bash
# Runs every test: unit tests, fabric conformance, and the integration tests
# that start real `cv` processes on loopback. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
. scripts/env.sh
start=$(date +%s)
./scripts/s3-server.sh install  # moto, the S3 server the UFS tests start (venv in ~/.cache/curvine)
cargo build --release --workspace --all-targets --features "$CV_FEATURES"
# Integration tests each start their own node on OS-chosen ports; a few at a
# time keeps a 2-core machine responsive.
cargo test --release --workspace --features "$CV_FEATURES" --no-fail-fast -- --test-threads="${CV_TEST_THREADS:-3}"
# RDMA (fabric feature `rdma`, in CV_FEATURES) is built into everything
# above; its conformance test runs where the host has a device
# (testbed/rxe.sh) and says why it skips elsewhere.
# The CUDA path (client feature `gpu`) compiles everywhere — the driver is
# loaded at run time — and its test skips, saying so, without a GPU.
cargo test --release -p curvine-cli --features "gpu,$CV_FEATURES" --test gpu
# POSIX conformance of the FUSE mount (pjdfstest; fails below the recorded pass count).
./scripts/posix-suite.sh
./scripts/test-python.sh  # the Python package against a real node (sets up its venv)
echo "all tests passed in $(( $(date +%s) - start )) s"
