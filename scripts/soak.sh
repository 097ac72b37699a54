#!/usr/bin/env bash
# The soak: a three-member etcd and three simulated nodes with their
# agents, concurrent ADD/DEL from every node, faults at random moments (a
# follower or the leader SIGKILLed and restarted, a member partitioned away
# and healed, an agent SIGKILLed and restarted, every member frozen longer
# than the plugin's 3 s deadline), invariants checked after every wave and
# every repair. Prints operations, failed ADDs by CNI code, the longest ADD
# during a leader election, the time to settle after the last fault; exits
# non-zero when an invariant broke (the seed is printed: --seed replays the
# fault schedule). Root; everything lives in network namespaces and is
# removed at the end.
#
#   scripts/soak.sh --quick          # 600 pairs, 75-95 s here (CI)
#   scripts/soak.sh --pairs 10000    # the full run (the default)
#   scripts/soak.sh --pairs 2000 --per-node 6 --seed 42
set -euo pipefail
cd "$(dirname "$0")/.."

[[ -x $HOME/.cargo/bin/cargo ]] && export PATH="$HOME/.cargo/bin:$PATH"
command -v etcd >/dev/null || { echo "etcd is missing: run scripts/setup.sh" >&2; exit 1; }
[[ $(id -u) == 0 ]] || { echo "the soak builds network namespaces: run it as root" >&2; exit 1; }

target=${CARGO_TARGET_DIR:-$PWD/target}
echo "building the plugins, the agent and trellis-soak..." >&2
cargo build --quiet -p trellis -p trellis-ipam -p trellis-agent
cargo build --quiet -p trellis-tests --bin trellis-soak
export TRELLIS_BIN_DIR=${TRELLIS_BIN_DIR:-$target/debug}
exec "$target/debug/trellis-soak" "$@"
