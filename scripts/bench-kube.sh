#!/usr/bin/env bash
# Pod startup latency (created to Ready) on the Kubernetes test cluster in
# network namespaces: a burst of PODS pods at once with the reference
# plugins' conflist (bridge + host-local + portmap, v1.9.0), then with
# trellis installed from manifests/, same cluster, same run. Prints p50,
# p99 and the time until all were Ready, with the ratios. As root; uses the
# machine's one test cluster slot (scripts/kube-cluster.sh) and removes the
# cluster at the end, also on failure.
#
#   sudo scripts/bench-kube.sh            # PODS=100 NODES=3
set -euo pipefail
cd "$(dirname "$0")/.."
pods=${PODS:-100}
nodes=${NODES:-3}
trap 'bash scripts/kube-cluster.sh down >/dev/null 2>&1 || true' EXIT
bash scripts/kube-cluster.sh up --nodes "$nodes" --no-trellis >/dev/null
target=${CARGO_TARGET_DIR:-$PWD/target}
TRELLIS_BIN_DIR=${TRELLIS_BIN_DIR:-$target/release} \
    "$target/release/trellis-kube" bench-startup --pods "$pods"
