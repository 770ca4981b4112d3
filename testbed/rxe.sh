#!/usr/bin/env bash
# Sets up soft-RoCE (rdma_rxe) on this host so the RDMA tests run:
#   testbed/rxe.sh [NETDEV]     add an rxe link on NETDEV (default: the
#                               interface of the default route)
#   testbed/rxe.sh --remove     remove the links this script added
# Needs root, iproute2's `rdma` tool and a kernel with rdma_rxe. Where the
# kernel has no RDMA support it says so and exits 2; the RDMA tests then
# skip with the same reason (`ibv_get_device_list` fails with ENOSYS).
set -euo pipefail
if [ "${1:-}" = "--remove" ]; then
  for l in $(rdma link show 2>/dev/null | awk '/ rxe_cv/ {print $2}' | cut -d/ -f1); do
    rdma link delete "$l"
  done
  exit 0
fi
command -v rdma >/dev/null 2>&1 || { echo "rxe.sh: the 'rdma' tool (iproute2) is missing" >&2; exit 2; }
if ! modprobe rdma_rxe 2>/dev/null && [ ! -d /sys/module/rdma_rxe ]; then
  echo "rxe.sh: this kernel has no rdma_rxe module (uname -r: $(uname -r)); RDMA cannot run here" >&2
  exit 2
fi
dev="${1:-$(ip route show default | awk '{print $5; exit}')}"
[ -n "$dev" ] || { echo "rxe.sh: no network device given and no default route" >&2; exit 2; }
if rdma link show 2>/dev/null | grep -q "netdev $dev\b"; then
  echo "rxe.sh: $dev already has an RDMA link"; rdma link show; exit 0
fi
rdma link add "rxe_cv0" type rxe netdev "$dev"
rdma link show
# The tests also need to lock the registered buffers' pages in memory.
echo "rxe.sh: soft-RoCE on $dev; run with 'ulimit -l unlimited' if registration fails with ENOMEM"
