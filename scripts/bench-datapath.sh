#!/usr/bin/env bash
# The data path benchmark, like with like, in one run: iperf3 and ping
# between two simulated nodes over the underlay, between pods over trellis's
# direct routing (at the overlay's MTU, and in a second cluster with
# "mtu": 1500) and over its VXLAN (IPv4 and IPv6), and between pods of a
# flannel-style VXLAN and of host-gw routing built by hand on the same
# underlay (each bare and with masquerade); CUBIC then BBR, medians, ratios
# to the underlay, the targets, ping per row. As root. Options: --seconds N
# --reps N --streams N, --congestion ALGO (only that one), --ab-notrack
# (tunnel packets untracked against tracked, interleaved, instead), --no-pin
# (iperf3 placement left to the scheduler; default: CPUs 0 and 1).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x $HOME/.cargo/bin/cargo ]] && export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/setup.sh
cargo build --release --workspace --bins --quiet
export TRELLIS_BIN_DIR=$PWD/target/release
exec target/release/trellis-bench-datapath "$@"
