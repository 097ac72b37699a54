#!/usr/bin/env bash
# Names under load: the agents' DNS on a two-node simulated cluster against
# aardvark-dns (podman's name server) answering the same name on one host,
# in one run: two clients at RATE/2 queries per second each for SECS
# seconds per side; prints answered, failed, p50/p99/max latency and the
# ratios. As root; everything runs inside namespaces made here and removed
# on exit (tests/src/bin/trellis-bench-dns.rs).
#
#   sudo scripts/bench-dns.sh                 # RATE=1000 SECS=10
#   RATE=2000 SECS=5 sudo -E scripts/bench-dns.sh
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}
[[ $(id -u) == 0 ]] || { echo "run as root (it creates network namespaces)" >&2; exit 1; }
[[ -x $HOME/.cargo/bin/cargo ]] && export PATH="$HOME/.cargo/bin:$PATH"

echo "building release binaries..." >&2
cargo build --release -q --bin trellis --bin trellis-ipam --bin trellis-agent --bin trellisctl --bin trellis-bench-dns
TRELLIS_BIN_DIR=$target/release exec "$target/release/trellis-bench-dns" \
    --rate "${RATE:-1000}" --secs "${SECS:-10}"
