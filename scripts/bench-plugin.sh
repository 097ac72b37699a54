#!/usr/bin/env bash
# Times N ADDs then N DELs through the same real libcni client for
# trellis + trellis-ipam and for the reference bridge + host-local, in the
# same node namespace, in the same run (rounds alternate between the two so
# that neither gets a quieter machine). Prints per-operation medians, the
# median time of a whole round (N ADDs + N DELs) and the ratio
# trellis / reference. As root; everything runs inside namespaces made here
# and removed on exit.
#
#   sudo scripts/bench-plugin.sh                 # N=50, 5 rounds, ipMasq off
#   N=100 ROUNDS=7 IP_MASQ=true sudo -E scripts/bench-plugin.sh
#   TRELLIS_IPAM=host-local scripts/bench-plugin.sh   # trellis on the reference IPAM
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
N=${N:-50}
ROUNDS=${ROUNDS:-5}
IP_MASQ=${IP_MASQ:-false}
TRELLIS_IPAM=${TRELLIS_IPAM:-trellis-ipam}
target=${CARGO_TARGET_DIR:-$root/target}

[[ $(id -u) == 0 ]] || { echo "run as root (it creates network namespaces)" >&2; exit 1; }
[[ -x $HOME/.cargo/bin/cargo ]] && export PATH="$HOME/.cargo/bin:$PATH"
for tool in jq go ip nft; do
    command -v "$tool" >/dev/null || { echo "$tool is missing: run scripts/setup.sh" >&2; exit 1; }
done

echo "building release binaries and the libcni driver..." >&2
cargo build --release -q -p trellis -p trellis-ipam
driver=$target/release/libcni-driver
GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE=$target/go-build-cache \
    go build -o "$driver" ./tests/libcni-driver

work=$(mktemp -d /tmp/trl-bench.XXXXXX)
node=trl-bench-$$-0
pods=()
cleanup() {
    for ns in "${pods[@]}" "$node"; do
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$node"
ip -n "$node" link set lo up
for i in $(seq 1 "$N"); do
    ns=trl-bench-$$-$i
    ip netns add "$ns"
    pods+=("$ns")
    echo "/run/netns/$ns" >>"$work/netns-list"
done

mkdir -p "$work/bin"
ln -s /usr/lib/cni/* "$work/bin/"
ln -sf "$target/release/trellis" "$target/release/trellis-ipam" "$work/bin/"

# The same job for both: a bridge that is the pods' gateway, hairpin on,
# the same masquerade setting, an address from a local store.
cat >"$work/trellis.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "bench-trellis", "plugins": [
  {"type": "trellis", "bridge": "trellis0", "stateDir": "$work/state",
   "ipMasq": $IP_MASQ, "hairpinMode": true,
   "ipam": {"type": "$TRELLIS_IPAM", "subnet": "10.88.0.0/16", "dataDir": "$work/trellis-ipam"}}]}
EOF
cat >"$work/reference.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "bench-reference", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true,
   "ipMasq": $IP_MASQ, "hairpinMode": true,
   "ipam": {"type": "host-local", "subnet": "10.89.0.0/16", "dataDir": "$work/host-local"}}]}
EOF

run() { # plugin round -> timings JSON
    ip netns exec "$node" "$driver" bench --conflist "$work/$1.conflist" \
        --netns-list "$work/netns-list" --count "$N" \
        --cni-path "$work/bin" --cache-dir "$work/cache-$1" >"$work/$1-$2.json"
}

echo "warming up..." >&2
N_SAVE=$N
N=1 run trellis 0 && N=1 run reference 0
N=$N_SAVE
for r in $(seq 1 "$ROUNDS"); do
    echo "round $r/$ROUNDS: $N ADDs then $N DELs each" >&2
    run trellis "$r"
    run reference "$r"
done

summary() { # plugin -> "addMedian delMedian roundMedian" (ms)
    local files=()
    for r in $(seq 1 "$ROUNDS"); do files+=("$work/$1-$r.json"); done
    jq -s -r '
        def median: sort | if length % 2 == 1 then .[length/2|floor]
                           else (.[length/2-1] + .[length/2]) / 2 end;
        [.[].addMs[]] as $add | [.[].delMs[]] as $del |
        [.[] | (.addMs | add) + (.delMs | add)] as $rounds |
        "\($add | median) \($del | median) \($rounds | median)"' "${files[@]}"
}
read -r t_add t_del t_round < <(summary trellis)
read -r r_add r_del r_round < <(summary reference)

printf '\n%s ADDs then %s DELs per round, %s rounds, ipMasq=%s, libcni %s\n' \
    "$N" "$N" "$ROUNDS" "$IP_MASQ" "$(dpkg-query -W -f '${Version}' golang-github-appc-cni-dev 2>/dev/null || echo '?')"
printf '%-34s %12s %12s %14s\n' "" "ADD median" "DEL median" "round median"
printf '%-34s %10.2fms %10.2fms %12.1fms\n' "trellis + $TRELLIS_IPAM" "$t_add" "$t_del" "$t_round"
printf '%-34s %10.2fms %10.2fms %12.1fms\n' "reference bridge + host-local" "$r_add" "$r_del" "$r_round"
printf 'ratio trellis/reference: ADD %.2f  DEL %.2f  round %.2f  (target <= 0.5)\n' \
    "$(jq -n "$t_add / $r_add")" "$(jq -n "$t_del / $r_del")" "$(jq -n "$t_round / $r_round")"
