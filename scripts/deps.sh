#!/usr/bin/env bash
# Installs what building and testing Curvine needs on Debian, idempotently:
# protoc (tonic codegen), libclang (RocksDB and rdma-sys bindgen), fuse3
# (FUSE tests), libibverbs/librdmacm headers (the `rdma` feature), iproute2
# (network namespaces for the meta partition test).
set -euo pipefail
need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
dpkg -s libibverbs-dev >/dev/null 2>&1 || need+=(libibverbs-dev)
dpkg -s librdmacm-dev >/dev/null 2>&1 || need+=(librdmacm-dev)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
dpkg -s libacl1-dev >/dev/null 2>&1 || need+=(libacl1-dev)  # pjdfstest (scripts/posix-suite.sh)
[ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || command -v ip >/dev/null 2>&1 || need+=(iproute2)  # meta partition test (testbed::netns)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install the Rust toolchain (rustup)" >&2; exit 1; }
