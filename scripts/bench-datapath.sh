#!/usr/bin/env bash
# The data path benchmark: iperf3 between pods on two simulated nodes over
# the VXLAN overlay against the same between the two node namespaces over
# the underlay, alternating in one run; prints medians, the ratio, and ping
# latency both ways. As root. Options: --seconds N --reps N --streams N,
# --ab-notrack (tunnel packets untracked against tracked, interleaved),
# --no-pin (iperf3 placement left to the scheduler; default: CPUs 0 and 1).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x $HOME/.cargo/bin/cargo ]] && export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/setup.sh
cargo build --release --workspace --bins --quiet
export TRELLIS_BIN_DIR=$PWD/target/release
exec target/release/trellis-bench-datapath "$@"
