#!/usr/bin/env bash
# A Kubernetes cluster of real kubelets in network namespaces, with trellis
# installed from manifests/ by `kubectl apply`. As root.
#
#   sudo scripts/kube-cluster.sh up [--nodes N] [--no-trellis]
#   eval "$(sudo scripts/kube-cluster.sh env)"     # KUBECONFIG, KUBE_BIN
#   $KUBE_BIN/kubectl get nodes -o wide
#   sudo scripts/kube-cluster.sh e2e --focus='\[sig-network\] Networking' --skip='\[Feature:|\[Slow\]|\[Serial\]'
#   sudo scripts/kube-cluster.sh down                # removes all of it
#
# `up` installs what is missing (scripts/setup.sh), builds the Kubernetes
# components from source (scripts/kube-build.sh) and trellis (release),
# then starts: etcd, kube-apiserver, kube-controller-manager and
# kube-scheduler in the underlay namespace tk-underlay; per node tk-nodeN
# its containerd, kubelet and kube-proxy; CoreDNS; trellis. State:
# $TRELLIS_KUBE_STATE (default /var/lib/trellis-kube). `down` also cleans up
# after a failed `up`.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x $HOME/.cargo/bin/cargo ]] && export PATH="$HOME/.cargo/bin:$PATH"
target=${CARGO_TARGET_DIR:-$PWD/target}
bin=$target/release/trellis-kube

case ${1:-} in
    up)
        bash scripts/setup.sh
        bash scripts/kube-build.sh
        echo "kube-cluster.sh: building trellis (release)..." >&2
        cargo build --release --quiet --bin trellis --bin trellis-ipam --bin trellis-agent \
            --bin trellis-kube
        ;;
    down)
        # Nothing was ever started without the binary.
        [[ -x $bin ]] || exit 0
        ;;
    env | e2e | forward | -h | --help) ;;
    *)
        sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2
        exit 2
        ;;
esac
export TRELLIS_BIN_DIR=${TRELLIS_BIN_DIR:-$target/release}
exec "$bin" "$@"
