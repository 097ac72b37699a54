#!/usr/bin/env bash
# The Kubernetes check of trellis, on a kind cluster (1 control plane + 2
# workers, no default CNI): builds the image from the Containerfile, loads it
# into the nodes, runs the try-out etcd (manifests/etcd.yaml), applies the
# manifests (manifests/base with the image set to the one built here),
# waits for the DaemonSet and the nodes, then checks from pods on two
# different workers: pod-to-pod ping and HTTP across nodes, a Service name
# through cluster DNS, and that traffic and addresses survive a rolling
# restart of the agents.
#
# Needs docker (or podman: CONTAINER_ENGINE=podman, which also sets
# KIND_EXPERIMENTAL_PROVIDER), kind, kubectl, and access to the registries of
# the base images. It cannot run on machines without them; it is the check
# to run where they are.
#
# Usage: tests/kind/run.sh            build, create, check, delete the cluster
#        KEEP=1 tests/kind/run.sh     leave the cluster up afterwards
# Environment: TRELLIS_KIND_CLUSTER (default trellis-e2e), TRELLIS_IMAGE
# (default localhost/trellis:kind), CONTAINER_ENGINE (docker), KEEP (0),
# TEST_IMAGE (docker.io/library/busybox:1.36.1).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLUSTER=${TRELLIS_KIND_CLUSTER:-trellis-e2e}
IMAGE=${TRELLIS_IMAGE:-localhost/trellis:kind}
ENGINE=${CONTAINER_ENGINE:-docker}
KEEP=${KEEP:-0}
TEST_IMAGE=${TEST_IMAGE:-docker.io/library/busybox:1.36.1}
NS=trellis-e2e

if [[ $ENGINE == podman ]]; then
    export KIND_EXPERIMENTAL_PROVIDER=podman
fi
for tool in kind kubectl "$ENGINE"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "tests/kind/run.sh needs $tool" >&2
        exit 2
    fi
done

k() { kubectl --context "kind-$CLUSTER" "$@"; }
step() { printf '\n== %s\n' "$*"; }

mkdir -p "$ROOT/target"
WORK=$(mktemp -d "$ROOT/target/kind.XXXXXX")
created_cluster=0

diagnostics() {
    echo "--- diagnostics" >&2
    k get nodes -o wide >&2 || true
    k get pods -A -o wide >&2 || true
    k -n trellis-system describe daemonset trellis-agent >&2 || true
    k -n trellis-system logs -l app.kubernetes.io/component=agent \
        --all-containers --prefix --tail=80 >&2 || true
    k -n trellis-etcd logs deployment/trellis-etcd --tail=40 >&2 || true
    k -n "$NS" describe pods >&2 || true
}

finish() {
    local status=$?
    if [[ $status -ne 0 ]]; then
        echo "FAILED (exit $status)" >&2
        diagnostics
    fi
    if [[ $KEEP == 1 ]]; then
        echo "cluster kept: kubectl --context kind-$CLUSTER ...; remove it with" \
            "kind delete cluster --name $CLUSTER"
    elif [[ $created_cluster == 1 ]]; then
        kind delete cluster --name "$CLUSTER" || true
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap finish EXIT

step "building $IMAGE"
"$ENGINE" build -f "$ROOT/Containerfile" -t "$IMAGE" "$ROOT"
"$ENGINE" pull "$TEST_IMAGE"

step "kind cluster $CLUSTER"
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    echo "reusing the existing cluster $CLUSTER"
else
    kind create cluster --name "$CLUSTER" --config "$ROOT/tests/kind/cluster.yaml"
    created_cluster=1
fi
for image in "$IMAGE" "$TEST_IMAGE"; do
    "$ENGINE" save -o "$WORK/image.tar" "$image"
    kind load image-archive "$WORK/image.tar" --name "$CLUSTER"
done

step "try-out etcd"
k apply -f "$ROOT/manifests/etcd.yaml"
k -n trellis-etcd rollout status deployment/trellis-etcd --timeout=300s

step "trellis"
# The manifests as shipped, with the image built here.
mkdir -p "$WORK/overlay"
cat >"$WORK/overlay/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../../../manifests/base
images:
  - name: localhost/trellis
    newName: ${IMAGE%:*}
    newTag: ${IMAGE##*:}
EOF
k apply -k "$WORK/overlay"
k -n trellis-system rollout status daemonset/trellis-agent --timeout=300s
k wait --for=condition=Ready nodes --all --timeout=300s

step "what the installer left on a node"
worker=$(k get nodes -l '!node-role.kubernetes.io/control-plane' \
    -o jsonpath='{.items[0].metadata.name}')
"$ENGINE" exec "$worker" ls -l /opt/cni/bin/trellis /opt/cni/bin/trellis-ipam
"$ENGINE" exec "$worker" cat /etc/cni/net.d/10-trellis.conflist
"$ENGINE" exec "$worker" cat /run/trellis/node.json
k -n trellis-etcd exec deployment/trellis-etcd -- \
    etcdctl --endpoints=http://127.0.0.1:23790 get --prefix /trellis/nodes/

step "pods on two workers"
read -r worker_a worker_b < <(k get nodes -l '!node-role.kubernetes.io/control-plane' \
    -o jsonpath='{.items[0].metadata.name} {.items[1].metadata.name}')
k create namespace "$NS" --dry-run=client -o yaml | k apply -f -
k -n "$NS" apply -f - <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: server
  labels:
    app: server
spec:
  nodeName: $worker_a
  terminationGracePeriodSeconds: 1
  containers:
    - name: httpd
      image: $TEST_IMAGE
      command: ["sh", "-c", "mkdir -p /www && echo trellis-ok >/www/index.html && exec httpd -f -p 8080 -h /www"]
      ports:
        - containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: server
spec:
  selector:
    app: server
  ports:
    - port: 8080
---
apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  nodeName: $worker_b
  terminationGracePeriodSeconds: 1
  containers:
    - name: sh
      image: $TEST_IMAGE
      command: ["sleep", "3600"]
EOF
k -n "$NS" wait --for=condition=Ready pod/server pod/client --timeout=180s
server_ip=$(k -n "$NS" get pod server -o jsonpath='{.status.podIP}')
client_ip=$(k -n "$NS" get pod client -o jsonpath='{.status.podIP}')
echo "server $server_ip on $worker_a, client $client_ip on $worker_b"
for ip in "$server_ip" "$client_ip"; do
    [[ $ip == 10.244.* ]] || { echo "pod address $ip is outside 10.244.0.0/16" >&2; exit 1; }
done
[[ ${server_ip%.*} != "${client_ip%.*}" ]] || {
    echo "pods on two nodes share the subnet ${server_ip%.*}.0" >&2
    exit 1
}

check_traffic() {
    k -n "$NS" exec client -- ping -c 3 -W 2 "$server_ip"
    k -n "$NS" exec server -- ping -c 3 -W 2 "$client_ip"
    answer=$(k -n "$NS" exec client -- wget -qO- -T 5 "http://$server_ip:8080/")
    [[ $answer == trellis-ok ]] || { echo "HTTP across nodes answered '$answer'" >&2; return 1; }
    # Cluster DNS (CoreDNS pods, on the trellis network too) and a Service.
    answer=$(k -n "$NS" exec client -- wget -qO- -T 5 "http://server.$NS.svc.cluster.local:8080/")
    [[ $answer == trellis-ok ]] || { echo "HTTP to the Service answered '$answer'" >&2; return 1; }
}
check_traffic

step "rolling restart of the agents: pods keep their addresses and traffic"
k -n trellis-system rollout restart daemonset/trellis-agent
k -n trellis-system rollout status daemonset/trellis-agent --timeout=300s
after=$(k -n "$NS" get pod server -o jsonpath='{.status.podIP}')
[[ $after == "$server_ip" ]] || { echo "server address changed: $server_ip -> $after" >&2; exit 1; }
check_traffic

step "kind check passed"
