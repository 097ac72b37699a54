#!/usr/bin/env bash
# Allocation speed of trellis-ipam (etcd store and local store) side by side
# with the reference host-local, in the same run, plus a bare etcd put round
# trip for reference. One process per CNI call, as a runtime does it.
# Prints ADD/DEL median and p99, the wall time of a burst of N concurrent
# ADDs, and the ratios. Nothing is asserted.
#
#   scripts/bench-ipam.sh            # N=200
#   N=500 scripts/bench-ipam.sh
#
# The benchmark starts its own etcd on 127.0.0.1 (free ports, data in a
# temporary directory) and removes everything on exit. It touches no
# network configuration at all.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
N=${N:-200}
target=${CARGO_TARGET_DIR:-$root/target}
[[ -x $HOME/.cargo/bin/cargo ]] && export PATH="$HOME/.cargo/bin:$PATH"
command -v etcd >/dev/null || { echo "etcd is missing: run scripts/setup.sh" >&2; exit 1; }
[[ -x /usr/lib/cni/host-local ]] || { echo "host-local is missing: run scripts/setup.sh" >&2; exit 1; }

echo "building trellis-ipam (release) and the benchmark..." >&2
cargo build --release -q -p trellis-ipam

TRELLIS_BENCH_IPAM="$target/release/trellis-ipam" \
TRELLIS_BENCH_HOST_LOCAL=/usr/lib/cni/host-local \
TRELLIS_BENCH_N="$N" \
    cargo bench -q -p trellis-ipam --bench ipam
