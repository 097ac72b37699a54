#!/usr/bin/env bash
# Checks the Kubernetes manifests without a cluster:
#  1. manifests/trellis.yaml is exactly manifests/base/ joined in the order of
#     base/kustomization.yaml (--write regenerates it);
#  2. every manifest, and the kustomize builds of base/ and etcd-tls/ when
#     kubectl is there, validates in strict mode (unknown fields are errors)
#     against the Kubernetes schemas of the oldest and newest versions we
#     support, with kubernetes-validate (installed from PyPI when missing);
#  3. every environment variable and flag the manifests give trellis-agent
#     is one that `trellis-agent <subcommand> --help` lists (the binary is
#     built when missing), so the DaemonSet cannot drift from the CLI;
#  4. the Containerfile copies paths that exist and builds binaries that do;
#  5. the kind recipe's shell scripts pass bash -n and shellcheck.
# The conflist of the ConfigMap is checked against the real plugins by the
# Rust suites tests/tests/manifests_*.rs.
#
# Usage: scripts/validate-manifests.sh [--write]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MANIFESTS=$ROOT/manifests
K8S_VERSIONS=(1.29.0 1.37.0)
KV_VERSION=1.37.0
BIN_DIR=${TRELLIS_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/debug}

passed=0
failed=0
pass() { passed=$((passed + 1)); echo "ok: $*"; }
fail() { failed=$((failed + 1)); echo "FAILED: $*" >&2; }

WORK=$(mktemp -d -t trellis-manifests.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# --- 1. the combined file -------------------------------------------------
combined() {
    "$PY" - "$MANIFESTS/base" <<'EOF'
import sys, yaml, pathlib
base = pathlib.Path(sys.argv[1])
resources = yaml.safe_load((base / "kustomization.yaml").read_text())["resources"]
out = ["# trellis: everything for `kubectl apply -f manifests/trellis.yaml`.\n",
       "# Generated from manifests/base/ by scripts/validate-manifests.sh --write;\n",
       "# edit those files, not this one.\n"]
for name in resources:
    out.append("---\n")
    out.append(f"# Source: manifests/base/{name}\n")
    out.append((base / name).read_text())
sys.stdout.write("".join(out))
EOF
}

# kubernetes-validate (and PyYAML, which it depends on): the installed one,
# else a virtualenv of our own under the target dir.
KV=$(command -v kubernetes-validate || true)
PY=python3
if [[ -z $KV ]] || ! python3 -c 'import yaml' 2>/dev/null; then
    venv=${CARGO_TARGET_DIR:-$ROOT/target}/validate-manifests-venv
    if [[ ! -x $venv/bin/kubernetes-validate ]]; then
        echo "installing kubernetes-validate $KV_VERSION from PyPI into $venv"
        python3 -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet "kubernetes-validate==$KV_VERSION"
    fi
    KV=$venv/bin/kubernetes-validate
    PY=$venv/bin/python
fi
combined >"$WORK/trellis.yaml"
if [[ ${1:-} == --write ]]; then
    cp "$WORK/trellis.yaml" "$MANIFESTS/trellis.yaml"
    echo "wrote manifests/trellis.yaml"
fi
if cmp -s "$WORK/trellis.yaml" "$MANIFESTS/trellis.yaml"; then
    pass "manifests/trellis.yaml matches manifests/base/"
else
    fail "manifests/trellis.yaml differs from manifests/base/: run scripts/validate-manifests.sh --write"
    diff -u "$MANIFESTS/trellis.yaml" "$WORK/trellis.yaml" | head -40 >&2 || true
fi

# --- 2. schemas -----------------------------------------------------------
documents=("$MANIFESTS/trellis.yaml" "$MANIFESTS/etcd.yaml" "$MANIFESTS/cleanup.yaml")
if command -v kubectl >/dev/null 2>&1; then
    for overlay in base etcd-tls; do
        if kubectl kustomize "$MANIFESTS/$overlay" >"$WORK/kustomize-$overlay.yaml"; then
            pass "kubectl kustomize manifests/$overlay"
            documents+=("$WORK/kustomize-$overlay.yaml")
        else
            fail "kubectl kustomize manifests/$overlay"
        fi
    done
    # kustomize's output of base/ holds the same objects as trellis.yaml.
    if "$PY" - "$WORK/kustomize-base.yaml" "$MANIFESTS/trellis.yaml" <<'EOF'
import sys, yaml
def objects(path):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    return sorted(docs, key=lambda d: (d["kind"], d["metadata"]["name"]))
sys.exit(0 if objects(sys.argv[1]) == objects(sys.argv[2]) else 1)
EOF
    then
        pass "kustomize build of manifests/base equals manifests/trellis.yaml"
    else
        fail "kustomize build of manifests/base differs from manifests/trellis.yaml"
    fi
else
    echo "note: kubectl not found; the kustomize overlays are not rendered"
fi
for version in "${K8S_VERSIONS[@]}"; do
    for doc in "${documents[@]}"; do
        shown=${doc#"$ROOT"/}
        shown=${shown#"$WORK"/}
        if "$KV" --strict --quiet -k "$version" "$doc" >"$WORK/kv.out" 2>&1; then
            pass "$shown validates (strict) against Kubernetes $version"
        else
            fail "$shown against Kubernetes $version"
            cat "$WORK/kv.out" >&2
        fi
    done
done

# --- 3. the manifests and the agent's command line ------------------------
agent=$BIN_DIR/trellis-agent
if [[ ! -x $agent ]]; then
    echo "building trellis-agent"
    (cd "$ROOT" && cargo build --quiet -p trellis-agent --bin trellis-agent)
fi
for sub in run install-cni cleanup; do
    "$agent" "$sub" --help >"$WORK/help-$sub.txt"
done
if "$PY" - "$WORK" "${documents[@]}" <<'EOF'; then
import re, sys, yaml, pathlib
work = pathlib.Path(sys.argv[1])
# Variables the containers use that are not agent flags.
NOT_FLAGS = {"HOST_IP", "POD_IP", "RUST_LOG"}
helps = {}
for sub in ("run", "install-cni", "cleanup"):
    text = (work / f"help-{sub}.txt").read_text()
    envs = set(re.findall(r"\[env: ([A-Z0-9_]+)[=\]]", text))
    flags = set(re.findall(r"(--[a-z0-9-]+)", text))
    helps[sub] = (envs, flags)
problems, checked = [], 0
for path in sys.argv[2:]:
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            if not doc or doc.get("kind") not in ("DaemonSet", "Deployment"):
                continue
            spec = doc["spec"]["template"]["spec"]
            for c in spec.get("initContainers", []) + spec["containers"]:
                cmd = c.get("command", [])
                if not cmd or cmd[0] != "trellis-agent":
                    continue
                where = f"{path.split('/')[-1]}: {doc['metadata']['name']}/{c['name']}"
                sub = cmd[1] if len(cmd) > 1 else "run"
                if sub not in helps:
                    problems.append(f"{where}: unknown subcommand {sub}")
                    continue
                envs, flags = helps[sub]
                defined = set()
                for e in c.get("env", []):
                    name = e["name"]
                    if name not in NOT_FLAGS and name not in envs:
                        problems.append(f"{where}: trellis-agent {sub} reads no {name}")
                    for ref in re.findall(r"\$\(([A-Za-z0-9_]+)\)", e.get("value", "")):
                        if ref not in defined:
                            problems.append(f"{where}: {name} uses $({ref}) before it is set")
                    defined.add(name)
                for arg in cmd[2:] + c.get("args", []):
                    flag = arg.split("=", 1)[0]
                    if flag.startswith("--") and flag not in flags:
                        problems.append(f"{where}: trellis-agent {sub} has no {flag}")
                checked += 1
for p in problems:
    print(p, file=sys.stderr)
if checked == 0:
    print("no trellis-agent container found", file=sys.stderr)
    sys.exit(1)
print(f"{checked} trellis-agent containers checked")
sys.exit(1 if problems else 0)
EOF
    pass "every env var and flag of the manifests is one trellis-agent reads"
else
    fail "the manifests give trellis-agent variables or flags it does not read"
fi

# --- 4. the Containerfile -------------------------------------------------
# No image can be built here (no registry for the base images): check that
# what it copies exists, that it copies every workspace member (cargo
# --locked needs them all) and that the binaries it builds are the
# workspace's.
if "$PY" - "$ROOT" <<'EOF'; then
import re, sys, pathlib, tomllib
root = pathlib.Path(sys.argv[1])
text = (root / "Containerfile").read_text()
problems, copied = [], set()
for line in text.splitlines():
    m = re.match(r"\s*COPY\s+(?!--from)(.+)", line)
    if not m:
        continue
    *sources, _dest = m.group(1).split()
    for src in sources:
        copied.add(src.rstrip("/"))
        if not (root / src).exists():
            problems.append(f"COPY {src}: no such path")
members = tomllib.loads((root / "Cargo.toml").read_text())["workspace"]["members"]
bins = set()
for member in members:
    if member not in copied:
        problems.append(f"workspace member {member} is not copied")
    manifest = tomllib.loads((root / member / "Cargo.toml").read_text())
    bins.update(b["name"] for b in manifest.get("bin", []))
for name in re.findall(r"--bin\s+([\w-]+)", text):
    if name not in bins:
        problems.append(f"--bin {name}: no such binary in the workspace")
for p in problems:
    print(p, file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
    pass "Containerfile copies existing paths and builds the workspace's binaries"
else
    fail "Containerfile"
fi

# --- 5. the kind recipe's scripts ----------------------------------------
shopt -s nullglob
scripts=("$ROOT"/tests/kind/*.sh "$ROOT/scripts/validate-manifests.sh")
shopt -u nullglob
for script in "${scripts[@]}"; do
    [[ -f $script ]] || continue
    if bash -n "$script"; then
        pass "bash -n ${script#"$ROOT"/}"
    else
        fail "bash -n ${script#"$ROOT"/}"
    fi
done
if command -v shellcheck >/dev/null 2>&1; then
    if shellcheck "${scripts[@]}"; then
        pass "shellcheck of the kind recipe and this script"
    else
        fail "shellcheck"
    fi
else
    echo "note: shellcheck not installed (apt-get install shellcheck); skipped"
fi

echo "validate-manifests: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
