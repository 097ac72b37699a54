#!/usr/bin/env bash
# Pod setup and teardown, trellis against the reference bridge + host-local,
# through the same real libcni client on the same node in the same run:
# trellis in cluster mode (the node of a simulated cluster: etcd and its
# agent) and in single-host mode, the reference beside them. Sequential
# rounds (N ADDs then N DELs, contenders alternating) give per-operation
# medians; a burst (B ADDs at once, then B DELs at once) gives wall times,
# failures and duplicate addresses. Prints medians and ratios to the
# reference. As root; everything runs inside namespaces made here and
# removed on exit (tests/src/bin/trellis-bench-plugin.rs).
#
#   sudo scripts/bench-plugin.sh                         # N=40 ROUNDS=3 BURST=200
#   N=50 ROUNDS=5 BURST=0 IP_MASQ=true sudo -E scripts/bench-plugin.sh
#   DUAL_STACK=true sudo -E scripts/bench-plugin.sh     # + dual-stack against IPv4 only
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}
[[ $(id -u) == 0 ]] || { echo "run as root (it creates network namespaces)" >&2; exit 1; }
[[ -x $HOME/.cargo/bin/cargo ]] && export PATH="$HOME/.cargo/bin:$PATH"

echo "building release binaries..." >&2
cargo build --release -q --bin trellis --bin trellis-ipam --bin trellis-agent --bin trellis-bench-plugin
flags=(--n "${N:-40}" --rounds "${ROUNDS:-3}" --burst "${BURST:-200}")
[[ ${IP_MASQ:-false} == true ]] && flags+=(--ip-masq)
[[ ${DUAL_STACK:-false} == true ]] && flags+=(--dual-stack)
TRELLIS_BIN_DIR=$target/release exec "$target/release/trellis-bench-plugin" "${flags[@]}"
