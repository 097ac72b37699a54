#!/usr/bin/env bash
# Scale benchmark of trellis-agent (root; namespaces only, nothing on the
# host's network). K fake remote node records are written to etcd in one
# transaction; it prints the time until the kernel holds all K FDB,
# neighbour and route entries and until all are gone after the K records
# are deleted, the agent's own reconcile time, the same entries written by
# `ip -batch`/`bridge -batch` as a reference in the same run, and the
# agent's RSS. Then, with the largest K in place, JOINS (default 50) more
# nodes join one at a time and leave again: the time from the etcd write to
# the node's route there (and gone), medians, and the agent's CPU time per
# join. The work is node-agent/benches/overlay_scale.rs.
#
#   sudo scripts/bench-agent.sh               # K = 1000 and 5000, 3 runs each
#   sudo RUNS=5 JOINS=50 scripts/bench-agent.sh 1000 5000 10000
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) -ne 0 ]]; then
    echo "bench-agent.sh: needs root (network namespaces)" >&2
    exit 1
fi
for tool in etcd ip bridge; do
    command -v "$tool" >/dev/null || { echo "bench-agent.sh: $tool missing (run scripts/setup.sh)" >&2; exit 1; }
done
sizes=("$@")
[[ ${#sizes[@]} -gt 0 ]] || sizes=(1000 5000)
exec cargo bench -q -p trellis-agent --bench overlay_scale -- "${sizes[@]}"
