# Sourced by the scripts: one build cache per machine, outside the work tree,
# so RocksDB (≈20 min on 2 cores) is compiled once.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/curvine/target}"
export CV_BIN="$CARGO_TARGET_DIR/release/cv"
# The Python module (python/) is a cdylib loaded by an interpreter: build it
# without linking libpython in every cargo build, as maturin does, so the two
# share artifacts and a machine without libpython's .so still builds.
export PYO3_BUILD_EXTENSION_MODULE=1
# Features every build of `cv` gets, so the scripts share one build: the RDMA
# transport (used only where both sides have a device; TCP otherwise).
export CV_FEATURES="${CV_FEATURES:-curvine-cli/rdma}"
