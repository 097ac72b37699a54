#!/usr/bin/env bash
# The demo: installs what is missing, builds (release), starts etcd and three
# simulated nodes (network namespaces) with their trellis-agent, attaches
# pods on every node through libcni, prints each node's subnet and a
# connectivity matrix, and tears everything down. As root.
#
#   sudo scripts/demo.sh            # run and tear down
#   sudo scripts/demo.sh --keep     # leave it up, with how to explore it
#   sudo scripts/demo.sh --down     # remove a kept demo
#   (--nodes N, --pods-per-node N)
set -euo pipefail
cd "$(dirname "$0")/.."

[[ -x $HOME/.cargo/bin/cargo ]] && export PATH="$HOME/.cargo/bin:$PATH"
export TRELLIS_BIN_DIR=$PWD/target/release

if [[ ${1:-} == --down && -x target/release/trellis-demo ]]; then
    exec target/release/trellis-demo --down
fi

bash scripts/setup.sh
echo "Building (release)..." >&2
cargo build --release --workspace --bins --quiet
exec target/release/trellis-demo "$@"
