#!/usr/bin/env bash
# Runs the fuzz targets of fuzz/ (cargo-fuzz, libFuzzer) for a set time
# each, starting from the committed corpus (fuzz/corpus/<target>/, seeds
# from real configurations and records). A crash stops the run with the
# input that made it under target/fuzz/artifacts/<target>/; turn it into a
# unit test of the crate that failed, then fix it.
#
#   scripts/fuzz.sh [--seconds N] [--dev] [target...]   # default: 60 s, every target
#   scripts/fuzz.sh --list
#
# --dev builds without optimisation and with line tables only: fewer
# executions a second, a shorter build (what CI uses, scripts/test.sh).
#
# cargo-fuzz (pinned below) is built once into target/fuzz-tools, the
# targets into target/fuzz; new inputs libFuzzer finds go to
# target/fuzz/corpus/<target>/ (copy the interesting ones into fuzz/corpus).
# The stable toolchain serves, with RUSTC_BOOTSTRAP=1 for cargo-fuzz's -Z
# flags; FUZZ_SANITIZER=address turns AddressSanitizer on (default none:
# the code is safe Rust, and overflow checks and debug assertions are on).
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.2

cd "$(dirname "$0")/.."
root=$PWD
[[ -x $HOME/.cargo/bin/cargo ]] && export PATH="$HOME/.cargo/bin:$PATH"

seconds=60
list=0
profile=()
targets=()
while (($#)); do
    case $1 in
        --seconds) seconds=${2:?--seconds needs a number}; shift 2 ;;
        --seconds=*) seconds=${1#*=}; shift ;;
        --list) list=1; shift ;;
        --dev) profile=(--dev); export CARGO_PROFILE_DEV_DEBUG=line-tables-only; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
[[ $seconds =~ ^[0-9]+$ && $seconds -gt 0 ]] || { echo "fuzz.sh: --seconds must be a positive number" >&2; exit 2; }

tools=$root/target/fuzz-tools
if ! "$tools/bin/cargo-fuzz" --version 2>/dev/null | grep -qx "cargo-fuzz $CARGO_FUZZ_VERSION"; then
    echo "fuzz.sh: building cargo-fuzz $CARGO_FUZZ_VERSION into $tools" >&2
    CARGO_TARGET_DIR=$tools/build cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" \
        --locked --root "$tools" --quiet
fi
export PATH="$tools/bin:$PATH"
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=$root/target/fuzz
sanitizer=${FUZZ_SANITIZER:-none}

cd fuzz
mapfile -t all < <(cargo fuzz list)
if ((list)); then
    printf '%s\n' "${all[@]}"
    exit 0
fi
((${#targets[@]})) || targets=("${all[@]}")
for t in "${targets[@]}"; do
    [[ " ${all[*]} " == *" $t "* ]] || { echo "fuzz.sh: no target $t (have: ${all[*]})" >&2; exit 2; }
done

# One build for every target: release (or --dev), overflow checks and
# debug assertions on.
flags=(--sanitizer "$sanitizer" --debug-assertions "${profile[@]}")
cargo fuzz build "${flags[@]}"

# Scratch files of the targets (node_json's state dir), in memory when
# there is /dev/shm, removed at the end.
scratch_base=/dev/shm
[[ -d $scratch_base && -w $scratch_base ]] || scratch_base=${TMPDIR:-/tmp}
TRELLIS_FUZZ_DIR=$(mktemp -d "$scratch_base/trellis-fuzz.XXXXXX")
export TRELLIS_FUZZ_DIR
trap 'rm -rf "$TRELLIS_FUZZ_DIR"' EXIT

status=0
for t in "${targets[@]}"; do
    work=$CARGO_TARGET_DIR/corpus/$t
    artifacts=$CARGO_TARGET_DIR/artifacts/$t
    log=$CARGO_TARGET_DIR/logs/$t.log
    mkdir -p "$work" "$artifacts" "corpus/$t" "$(dirname "$log")"
    echo "==> $t: ${seconds}s (log: $log)" >&2
    # New inputs go to the first directory (the scratch one); the
    # committed corpus is read, never written.
    if cargo fuzz run "${flags[@]}" "$t" "$work" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1; then
        grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)|^#[0-9]+.*DONE' "$log" | sed "s/^/    $t: /" >&2 || true
    else
        tail -n 60 "$log" >&2
        echo "fuzz.sh: $t failed; the input is in $artifacts/:" >&2
        ls -1 "$artifacts" >&2 || true
        status=1
    fi
done
exit $status
