#!/usr/bin/env bash
# Every test suite, as CI runs it: installs what is missing, checks format and
# lints, builds the workspace, runs the unit and root integration tests, the
# quick soak (scripts/soak.sh --quick), then the end-to-end suites. Exits non-zero on the first failure. As root.
#
#   sudo scripts/test.sh            # everything
#   TRELLIS_TEST_THREADS=1 scripts/test.sh
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
threads=${TRELLIS_TEST_THREADS:-2}
start=$(date +%s)

step() { printf '\n==> %s (%ss)\n' "$*" "$(($(date +%s) - start))" >&2; }

step "setup"
bash scripts/setup.sh
[[ -x $HOME/.cargo/bin/cargo ]] && export PATH="$HOME/.cargo/bin:$PATH"

export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
# CI builds once: no incremental state (1.5 GB of target/ otherwise).
[[ ${CI:-} == true ]] && export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}
target=${CARGO_TARGET_DIR:-$root/target}

step "leftovers of killed runs"
# Namespaces named trl-<tag>-<pid>-<n> whose test process is gone.
for ns in $(ip netns list | awk '{print $1}' | grep '^trl-' || true); do
    pid=$(sed -E 's/^trl-.*-([0-9]+)-[0-9]+$/\1/' <<<"$ns")
    if [[ $pid =~ ^[0-9]+$ ]] && ! kill -0 "$pid" 2>/dev/null; then
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    fi
done

step "rustfmt"
cargo fmt --all -- --check

# TRELLIS_SKIP_KUBE=1 leaves out the Kubernetes suite and its build (for a
# second checkout on a machine whose one Kubernetes test cluster slot is in
# use); CI runs everything.
kube=${TRELLIS_SKIP_KUBE:-0}
if [[ $kube != 1 ]]; then
    # First, while nothing else takes disk: the Go caches peak at 5-6 GB.
    # CI drops them afterwards (its disk may be small; the binaries and
    # their stamp stay); elsewhere they make the next build a no-op.
    step "Kubernetes components from source (scripts/kube-build.sh)"
    drop=0
    [[ ${CI:-} == true ]] && drop=1
    TRELLIS_KUBE_DROP_CACHES=${TRELLIS_KUBE_DROP_CACHES:-$drop} bash scripts/kube-build.sh
fi

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "build"
cargo build --workspace --bins
GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE=${GOCACHE:-$target/go-build-cache} \
    go vet ./tests/libcni-driver
test -z "$(gofmt -l tests/libcni-driver)" || { gofmt -l tests/libcni-driver; echo "gofmt: reformat the files above" >&2; exit 1; }
step "Kubernetes manifests" && bash scripts/validate-manifests.sh
if [[ $kube != 1 ]]; then
    step "trellis's release binaries (the Kubernetes suite's image holds them, like the Containerfile's)"
    cargo build --release --bin trellis --bin trellis-ipam --bin trellis-agent
fi

step "unit tests (every crate but the harness)"
timeout --foreground 30m cargo test --workspace --exclude trellis-tests -- --test-threads="$threads"

step "fuzz targets, each briefly (scripts/fuzz.sh --dev)"
# cargo-fuzz is built into target/fuzz-tools once, the targets into
# target/fuzz; then every target runs TRELLIS_FUZZ_SECONDS (10) from the
# committed corpus. A crash fails the run with the input that made it.
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
timeout --foreground 30m bash scripts/fuzz.sh --dev --seconds "${TRELLIS_FUZZ_SECONDS:-10}"

step "root integration suites and harness self-tests (tests/tests, but e2e_*)"
suites=()
for file in tests/tests/*.rs; do
    name=$(basename "$file" .rs)
    [[ $name == e2e_* ]] || suites+=(--test "$name")
done
timeout --foreground 30m cargo test -p trellis-tests --lib --bins "${suites[@]}" -- --test-threads="$threads"
cargo test -p trellis-tests --doc

step "soak --quick (three etcd members, three nodes, 600 ADD/DEL pairs under faults; 75-95 s)"
timeout --foreground 10m bash scripts/soak.sh --quick

e2e=()
for file in tests/tests/e2e_*.rs; do
    [[ -e $file && $file != */e2e_kube.rs ]] && e2e+=("$(basename "$file" .rs)")
done
for suite in "${e2e[@]}"; do
    step "end-to-end: $suite"
    # One suite at a time, its tests one at a time: each builds a whole
    # cluster, and two cores are shared with the build.
    timeout --foreground 20m cargo test -p trellis-tests --test "$suite" -- --test-threads=1
done

if [[ $kube != 1 ]]; then
    step "end-to-end: e2e_kube (Kubernetes in network namespaces, conformance)"
    # Its own harness: one cluster, its checks in order.
    timeout --foreground 45m cargo test -p trellis-tests --test e2e_kube
else
    step "end-to-end: e2e_kube skipped (TRELLIS_SKIP_KUBE=1)"
fi

step "all suites passed"
