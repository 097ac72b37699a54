#!/usr/bin/env bash
# Builds, from source at the versions pinned in tests/kube/tools/*/go.mod,
# what the Kubernetes test cluster runs (scripts/kube-cluster.sh):
#   target/kube/bin: kube-apiserver kube-controller-manager kube-scheduler
#                    kubelet kube-proxy kubectl e2e.test ginkgo agnhost
#                    (Kubernetes), etcd, coredns, pause (the sandbox, from
#                    the Kubernetes sources' pause.c), agnhost-porter/
#   target/kube/cni: the reference CNI plugins every node starts with
# with the machine's Go (1.26; Debian's golang-go is too old) and every Go
# cache under target/go (GOMODCACHE, GOCACHE, GOTMPDIR), so a rerun builds
# nothing: it stops at once when target/kube/stamp says the same sources
# (tests/kube/tools, this script, Go's version) built what is there.
#
#   scripts/kube-build.sh           # CARGO_TARGET_DIR moves target/
#   TRELLIS_KUBE_DROP_CACHES=1 scripts/kube-build.sh
#                                   # then removes the Go caches (5-6 GB;
#                                   # CI, whose disk may be small, does)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}
out=$target/kube
start=$(date +%s)

# The machine's Go, never Debian's /usr/bin/go (1.19).
go=
for candidate in /usr/local/go/bin/go "$(command -v go || true)"; do
    [[ -x $candidate ]] || continue
    minor=$("$candidate" env GOVERSION | sed -nE 's/^go1\.([0-9]+).*/\1/p')
    if [[ -n $minor && $minor -ge 26 ]]; then
        go=$candidate
        break
    fi
done
if [[ -z $go ]]; then
    echo "kube-build.sh: Go 1.26 or later is needed (the machine's /usr/local/go)" >&2
    exit 1
fi

# What the binaries are built from; when target/kube/stamp holds the same,
# they are there already.
stamp=$( (
    "$go" env GOVERSION
    sha256sum <"$root/scripts/kube-build.sh"
    find tests/kube/tools -type f -print0 | sort -z | xargs -0 sha256sum
) | sha256sum | cut -d' ' -f1)
if [[ -f $out/stamp && $(cat "$out/stamp") == "$stamp" ]]; then
    echo "kube-build.sh: $out is built from these sources already" >&2
    exit 0
fi
rm -f "$out/stamp"

# Go's work files (a link of e2e.test writes hundreds of MB) go beside its
# caches, not to /tmp, which may be small.
export GOMODCACHE=$target/go/mod GOCACHE=$target/go/cache GOTMPDIR=$target/go/tmp GOTOOLCHAIN=local
mkdir -p "$GOTMPDIR"
# Module files writable (cargo clean can remove them); go.mod and go.sum are
# never rewritten by a build.
export GOFLAGS="-modcacherw -mod=readonly" CGO_ENABLED=0
mkdir -p "$out/bin" "$out/cni"
build() { # module dir, then go build arguments
    local dir=$1
    shift
    (cd "tests/kube/tools/$dir" && "$go" build -trimpath "$@")
}

# Kubernetes: stamp the release into the binaries as its own build does
# (kubectl version, the API server's /version, the e2e suite's skew checks).
k8s_version=$(sed -nE 's/^[[:space:]]*(require[[:space:]]+)?k8s\.io\/kubernetes (v[0-9.]+)$/\2/p' tests/kube/tools/k8s/go.mod)
[[ -n $k8s_version ]] || { echo "kube-build.sh: no k8s.io/kubernetes version in tests/kube/tools/k8s/go.mod" >&2; exit 1; }
minor=$(cut -d. -f2 <<<"$k8s_version")
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean"
done
echo "kube-build.sh: Kubernetes $k8s_version" >&2
build k8s -ldflags "$ldflags" -o "$out/bin/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-proxy \
    k8s.io/kubernetes/cmd/kubectl \
    k8s.io/kubernetes/test/images/agnhost \
    github.com/onsi/ginkgo/v2/ginkgo
(cd tests/kube/tools/k8s && "$go" test -c -trimpath -ldflags "$ldflags" \
    -o "$out/bin/e2e.test" k8s.io/kubernetes/test/e2e)

echo "kube-build.sh: etcd, CoreDNS, CNI plugins" >&2
build etcd -ldflags "-s -w" -o "$out/bin/etcd" go.etcd.io/etcd/server/v3
build coredns -ldflags "-s -w" -o "$out/bin/coredns" .
build cni -ldflags "-s -w" -o "$out/cni/" \
    github.com/containernetworking/plugins/plugins/main/loopback \
    github.com/containernetworking/plugins/plugins/main/bridge \
    github.com/containernetworking/plugins/plugins/main/macvlan \
    github.com/containernetworking/plugins/plugins/main/ipvlan \
    github.com/containernetworking/plugins/plugins/ipam/host-local \
    github.com/containernetworking/plugins/plugins/meta/portmap \
    github.com/containernetworking/plugins/plugins/meta/bandwidth \
    github.com/containernetworking/plugins/plugins/meta/tuning

# The sandbox image's program and agnhost's porter certificates come from
# the Kubernetes sources the build above fetched.
src=$GOMODCACHE/k8s.io/kubernetes@$k8s_version
pause_version=3.10.1
if [[ ! -x $out/bin/pause || $src/build/pause/linux/pause.c -nt $out/bin/pause ]]; then
    gcc -Os -static -Wall -Werror -DVERSION="$pause_version" \
        -o "$out/bin/pause" "$src/build/pause/linux/pause.c"
fi
mkdir -p "$out/bin/agnhost-porter"
install -m 0644 "$src/test/images/agnhost/porter/localhost.crt" \
    "$src/test/images/agnhost/porter/localhost.key" "$out/bin/agnhost-porter/"

echo "$stamp" >"$out/stamp"
if [[ ${TRELLIS_KUBE_DROP_CACHES:-0} == 1 ]]; then
    # Module files are read-only without -modcacherw; it is set above.
    rm -rf "$GOCACHE" "$GOMODCACHE" "$GOTMPDIR"
    echo "kube-build.sh: Go caches removed (TRELLIS_KUBE_DROP_CACHES=1)" >&2
fi
echo "kube-build.sh: done in $(($(date +%s) - start)) s ($out)" >&2
