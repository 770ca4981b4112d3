#!/usr/bin/env bash
# The S3 server the UFS tests run against: moto in server mode, in a venv at
# $CV_MOTO_VENV (default ~/.cache/curvine/moto-venv).
#   scripts/s3-server.sh install      install moto + boto3 (idempotent)
#   scripts/s3-server.sh run [PORT]   run it in the foreground on 127.0.0.1
# Tests start their own servers through testbed::s3::S3Server.
# Alternative server that verifies SigV4: `cargo install s3s-fs@0.14.1 --locked
# --features binary`, then run tests with CV_S3_SERVER=s3s-fs.
set -euo pipefail
VENV="${CV_MOTO_VENV:-$HOME/.cache/curvine/moto-venv}"

installed() {
  [ -x "$VENV/bin/moto_server" ] && "$VENV/bin/python" -c 'import moto.server, boto3' >/dev/null 2>&1
}

install() {
  installed && return 0
  mkdir -p "$(dirname "$VENV")"
  # One installer at a time (test.sh and a developer may both run this).
  exec 9>"$VENV.lock"
  flock 9
  installed && return 0
  # A venv whose Python is gone (e.g. a removed pyenv version) is rebuilt.
  if [ -d "$VENV" ] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then rm -rf "$VENV"; fi
  if [ ! -x "$VENV/bin/pip" ]; then
    command -v python3 >/dev/null 2>&1 || { echo "python3 not found: apt-get install python3 python3-venv" >&2; exit 1; }
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
      # Debian's python3 needs python3-venv for ensurepip.
      echo "installing python3-venv" >&2
      SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
      $SUDO apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
      rm -rf "$VENV"
      python3 -m venv "$VENV"
    fi
  fi
  echo "installing moto[server] into $VENV" >&2
  "$VENV/bin/pip" install -q 'moto[server]==5.*' boto3
  installed || { echo "moto installed but moto_server does not start; see $VENV" >&2; exit 1; }
}

case "${1:-}" in
  install) install ;;
  run) install; exec "$VENV/bin/moto_server" -H 127.0.0.1 -p "${2:-5000}" ;;
  *) echo "usage: $0 install | run [PORT]" >&2; exit 2 ;;
esac
