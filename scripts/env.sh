# Sourced by the scripts: one build cache per machine, outside the work tree,
# so RocksDB (≈20 min on 2 cores) is compiled once.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/curvine/target}"
export CV_BIN="$CARGO_TARGET_DIR/release/cv"
