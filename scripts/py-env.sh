#!/usr/bin/env bash
# Sets up the project's Python virtualenv and installs the `curvine` package
# into it, idempotently: creates the venv once, (re)installs
# python/requirements-dev.txt when that file changes, and rebuilds the pyo3
# module with `maturin develop --release` into the shared cargo target dir
# (curvine-client does not pull RocksDB, so this is a short build).
#
# Venv: $CURVINE_VENV, default ~/.cache/curvine/venv (outside the work tree,
# so CI's fresh clones reuse it). Activate with
#   . ~/.cache/curvine/venv/bin/activate
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
VENV="${CURVINE_VENV:-$HOME/.cache/curvine/venv}"
PY="${PYTHON:-python3}"

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! command -v "$PY" >/dev/null 2>&1; then
  echo "installing python3" >&2
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3 >/dev/null
fi
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "curvine needs Python >= 3.11; $PY is $("$PY" --version 2>&1)" >&2; exit 1; }
if ! "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  # Debian splits venv/ensurepip out of python3.
  echo "installing python3-venv" >&2
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating virtualenv $VENV" >&2
  "$PY" -m venv "$VENV"
fi

# Reinstall only when the requirements change; pip's cache (~/.cache/pip)
# makes a reinstall on the same machine download nothing (torch is ~0.5 GB
# plus several GB of CUDA wheels the first time).
req=python/requirements-dev.txt
stamp="$VENV/.curvine-requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "installing $req into $VENV" >&2
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -r "$req"
  echo "$want" >"$stamp"
fi

export VIRTUAL_ENV="$VENV"
export PATH="$VENV/bin:$PATH"
(cd python && maturin develop --release --quiet)
"$VENV/bin/python" -c 'import curvine, curvine.fsspec; print("curvine", curvine.__version__, "installed in", __import__("sys").prefix)'
