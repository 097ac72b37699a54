#!/usr/bin/env bash
# Installs every Debian package trellis needs to build, test and run its demo
# and benchmarks. Idempotent: only what is missing is installed, and the
# package lists are refreshed at most once per run. Debian 12 (bookworm), as
# root.
set -euo pipefail

PACKAGES=(
    # the cluster store, and its client for the tests and the demo
    etcd-server etcd-client
    # the libcni driver of the tests: Go and Debian's libcni sources
    golang-go golang-github-appc-cni-dev
    # reference CNI plugins (bridge, host-local, portmap, bandwidth, tuning...)
    containernetworking-plugins
    # container runtimes used as CNI clients by the end-to-end suites
    podman containerd runc uidmap
    # protoc, for the CRI client's gRPC code
    protobuf-compiler
    # test topologies (ip, nsenter, sysctl), traffic and inspection
    iproute2 nftables iperf3 iputils-ping jq procps
    # rootfs of the test containers and of the CRI sandbox image
    busybox-static
    # certificates for the TLS etcd of the IPAM suites
    openssl
    # scripts/validate-manifests.sh: shell scripts of the kind recipe
    shellcheck
    # the Kubernetes test cluster (scripts/kube-cluster.sh): the sandbox
    # program (gcc, static glibc), iptables for portmap's hostPort rules,
    # and the programs of the e2e suite's images (agnhost is Alpine with
    # curl, bind-tools and netcat; jessie-dnsutils is Debian's dnsutils)
    gcc libc6-dev iptables curl bind9-dnsutils netcat-openbsd
    # the agent's DNS suite: dig (bind9-dnsutils, above) asks it, and
    # dnsmasq plays the resolver it forwards to, on the harness's outside host
    dnsmasq-base
    # scripts/bench-dns.sh: podman's name server, the reference
    aardvark-dns
)

if [[ $(id -u) -ne 0 ]]; then
    echo "setup.sh: run as root (it installs Debian packages)" >&2
    exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]})); then
    echo "setup.sh: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >&2
else
    echo "setup.sh: all ${#PACKAGES[@]} Debian packages present" >&2
fi

# The Rust toolchain is the machine's own (rustup); it cannot be fetched here.
if ! command -v cargo >/dev/null; then
    for dir in "$HOME/.cargo/bin" /root/.cargo/bin /usr/local/cargo/bin; do
        [[ -x $dir/cargo ]] && export PATH="$dir:$PATH" && break
    done
fi
if ! command -v cargo >/dev/null; then
    echo "setup.sh: cargo not found: install a Rust toolchain >= 1.85 (rustup) first" >&2
    exit 1
fi
for tool in fmt:rustfmt clippy:clippy; do
    if ! cargo "${tool%%:*}" --version >/dev/null 2>&1; then
        rustup component add "${tool#*:}" >&2 || {
            echo "setup.sh: cargo ${tool%%:*} is missing and rustup could not add ${tool#*:}" >&2
            exit 1
        }
    fi
done

# The kernel features the suites use (VXLAN, bridge, veth) must be there; say
# so early rather than deep inside a suite. Probed in a namespace of our own,
# never in the host's.
probe_ns="trl-setup-$$"
ip netns add "$probe_ns"
trap 'ip netns del "$probe_ns" 2>/dev/null || true' EXIT
for kind in "vxlan id 1 dstport 4789" "bridge" "veth"; do
    # shellcheck disable=SC2086
    if ! ip -n "$probe_ns" link add probe type $kind; then
        echo "setup.sh: this kernel cannot create ${kind%% *} devices" >&2
        exit 1
    fi
    ip -n "$probe_ns" link del probe
done
