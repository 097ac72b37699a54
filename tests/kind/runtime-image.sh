#!/usr/bin/env bash
# The runtime image and the DaemonSet's security contexts, checked without
# a cluster or an image registry (for machines where tests/kind/run.sh
# cannot run). As root, with podman, debootstrap, etcd and iproute2.
#
#  1. A debian:bookworm-slim stand-in is made with debootstrap from the
#     Debian archive (once; kept in podman's store), and the Containerfile's
#     runtime stage is built on it with the workspace's own binaries in
#     place of the musl build stage (which needs the Rust image).
#  2. The install-cni init container runs twice as the DaemonSet runs it
#     (no capability, read-only root, the host dirs at their own paths, the
#     ConfigMap's keys as files) against etcd on loopback: it seeds the
#     cluster config and installs, then reports everything unchanged.
#  3. The agent container runs as the DaemonSet runs it (NET_ADMIN only,
#     read-only root) in a node namespace of its own: /healthz turns 200,
#     the VXLAN device, the bridge and the nftables table appear, and they
#     stay after SIGTERM.
# Everything it creates (namespaces, containers, processes, files) goes when
# it ends.
#
# Usage: sudo tests/kind/runtime-image.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN_DIR=${TRELLIS_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/debug}
BASE=docker.io/library/debian:bookworm-slim
IMAGE=localhost/trellis:runtime-check
# Explicit limits: podman's defaults copy the host's, which a sandbox may
# refuse.
LIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
P=$$
NODE=trl-imgnode-$P
UNDER=trl-imgunder-$P
AGENT=trl-imgagent-$P
WORK=$(mktemp -d -t trellis-image.XXXXXX)
etcd_pids=()

finish() {
    local status=$?
    podman rm -f "$AGENT" >/dev/null 2>&1 || true
    for pid in "${etcd_pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    ip netns del "$NODE" 2>/dev/null || true
    ip netns del "$UNDER" 2>/dev/null || true
    rm -rf "$WORK"
    if [[ $status -eq 0 ]]; then echo "runtime image check passed"; else echo "FAILED" >&2; fi
    exit "$status"
}
trap finish EXIT

fail() { echo "FAILED: $*" >&2; exit 1; }

start_etcd() { # netns-or-empty url
    local prefix=()
    [[ -n $1 ]] && prefix=(ip netns exec "$1")
    "${prefix[@]}" etcd --data-dir "$WORK/etcd-${#etcd_pids[@]}" \
        --listen-client-urls "$2" --advertise-client-urls "$2" \
        --listen-peer-urls http://127.0.0.1:0 --initial-advertise-peer-urls http://127.0.0.1:2380 \
        --initial-cluster default=http://127.0.0.1:2380 >"$WORK/etcd.log" 2>&1 &
    etcd_pids+=($!)
    for _ in $(seq 1 50); do
        "${prefix[@]}" env ETCDCTL_API=3 etcdctl --endpoints "$2" --dial-timeout 1s \
            endpoint health >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    cat "$WORK/etcd.log" >&2
    fail "etcd did not start"
}

echo "== the runtime stage"
for bin in trellis trellis-ipam trellis-agent; do
    [[ -x $BIN_DIR/$bin ]] || fail "$BIN_DIR/$bin is missing: cargo build --workspace --bins"
done
if ! podman image exists "$BASE"; then
    debootstrap --variant=minbase bookworm "$WORK/rootfs" http://deb.debian.org/debian >"$WORK/debootstrap.log"
    tar -C "$WORK/rootfs" -c . | podman import - "$BASE" >/dev/null
    rm -rf "$WORK/rootfs"
fi
mkdir -p "$WORK/ctx/out"
cp "$BIN_DIR/trellis" "$BIN_DIR/trellis-ipam" "$BIN_DIR/trellis-agent" "$WORK/ctx/out/"
strip "$WORK/ctx/out/"*
# The Containerfile's last stage, its binaries taken from the context.
awk '/^FROM /{n++} {line[NR]=$0; stage[NR]=n} END{for(i=1;i<=NR;i++) if(stage[i]==n) print line[i]}' \
    "$ROOT/Containerfile" | sed 's|^COPY --from=build /out/ |COPY out/ |' >"$WORK/ctx/Containerfile"
grep -q '^COPY out/ ' "$WORK/ctx/Containerfile" || fail "the runtime stage no longer copies /out/ from the build stage"
podman build --pull=never -q -f "$WORK/ctx/Containerfile" -t "$IMAGE" "$WORK/ctx" >/dev/null
podman run --rm "${LIMITS[@]}" "$IMAGE" nft --version

echo "== install-cni as the DaemonSet's init container"
host=$WORK/host
mkdir -p "$host/opt/cni/bin" "$host/etc/cni/net.d" "$host/config"
python3 - "$ROOT/manifests/trellis.yaml" "$host/config" <<'EOF'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
cm = next(d for d in docs if d["kind"] == "ConfigMap")
for key, value in cm["data"].items():
    open(f"{sys.argv[2]}/{key}", "w").write(value)
EOF
port=$((20000 + P % 20000))
start_etcd "" "http://127.0.0.1:$port"
install() {
    podman run --rm "${LIMITS[@]}" --network host --read-only --cap-drop ALL --user 0 \
        --security-opt no-new-privileges \
        -v "$host/opt/cni/bin:/opt/cni/bin" -v "$host/etc/cni/net.d:/etc/cni/net.d" \
        -v "$host/config:/etc/trellis/config:ro" \
        -e TRELLIS_ETCD_ENDPOINTS="http://127.0.0.1:$port" -e TRELLIS_ETCD_PREFIX=/trellis \
        -e TRELLIS_STATE_DIR=/run/trellis \
        -e TRELLIS_CONFLIST_TEMPLATE=/etc/trellis/config/10-trellis.conflist \
        -e TRELLIS_CLUSTER_CONFIG=/etc/trellis/config/cluster-config.json \
        "$IMAGE" trellis-agent install-cni 2>&1
}
first=$(install) || fail "install-cni: $first"
echo "$first"
[[ $(grep -c '^created' <<<"$first") -eq 4 ]] || fail "expected 4 created entries"
second=$(install) || fail "install-cni: $second"
[[ $(grep -c '^unchanged' <<<"$second") -eq 4 ]] || fail "second run: $second"
cmp "$host/opt/cni/bin/trellis" "$WORK/ctx/out/trellis" || fail "installed trellis differs"
jq -e '.plugins[0].ipam.etcdEndpoints[0] == "http://127.0.0.1:'"$port"'"' \
    "$host/etc/cni/net.d/10-trellis.conflist" >/dev/null || fail "conflist endpoints"

echo "== the agent with NET_ADMIN only"
ip netns add "$UNDER"
ip netns add "$NODE"
ip link add "ti$P" type veth peer name "tu$P"
ip link set "ti$P" netns "$NODE"
ip link set "tu$P" netns "$UNDER"
ip -n "$NODE" link set "ti$P" name eth0
ip -n "$NODE" link set lo up
ip -n "$NODE" link set eth0 up
ip -n "$NODE" addr add 192.0.2.1/24 dev eth0
ip -n "$NODE" route add default via 192.0.2.254
ip -n "$UNDER" link set lo up
ip -n "$UNDER" link set "tu$P" up
ip -n "$UNDER" addr add 192.0.2.254/24 dev "tu$P"
ip netns exec "$NODE" sysctl -qw net.ipv4.ip_forward=1
start_etcd "$UNDER" http://192.0.2.254:2379
ip netns exec "$UNDER" env ETCDCTL_API=3 etcdctl --endpoints http://192.0.2.254:2379 \
    put /trellis/config "$(cat "$host/config/cluster-config.json")" >/dev/null
mkdir -p "$WORK/run-trellis"
podman run -d --name "$AGENT" "${LIMITS[@]}" --network "ns:/run/netns/$NODE" --read-only \
    --cap-drop ALL --cap-add NET_ADMIN --user 0 --security-opt no-new-privileges \
    -v "$WORK/run-trellis:/run/trellis" \
    -e NODE_NAME=image-node -e TRELLIS_ETCD_ENDPOINTS=http://192.0.2.254:2379 \
    -e TRELLIS_STATE_DIR=/run/trellis -e TRELLIS_METRICS_ADDR=192.0.2.1:9437 \
    "$IMAGE" trellis-agent run >/dev/null
code=000
for _ in $(seq 1 30); do
    code=$(ip netns exec "$NODE" curl -s -m 2 -o /dev/null -w '%{http_code}' http://192.0.2.1:9437/healthz || true)
    [[ $code == 200 ]] && break
    sleep 1
done
[[ $code == 200 ]] || { podman logs "$AGENT" >&2; fail "/healthz answered $code"; }
ip -n "$NODE" link show trellis.1 >/dev/null || fail "no VXLAN device"
ip -n "$NODE" link show trellis0 >/dev/null || fail "no bridge"
ip netns exec "$NODE" nft list table ip trellis-agent >/dev/null || fail "no nftables table"
jq -e '.nodeName == "image-node"' "$WORK/run-trellis/node.json" >/dev/null || fail "node.json"
podman stop -t 10 "$AGENT" >/dev/null
ip -n "$NODE" link show trellis.1 >/dev/null || fail "SIGTERM removed the VXLAN device"
echo "agent healthy with NET_ADMIN only; its devices stay after SIGTERM"
