#!/usr/bin/env bash
# The one test command (`make test`, CI's .ci/run). Extra arguments go to `cargo test`.
#
# 1. builds (once, cached by version) the local control plane: hack/build-control-plane.sh
# 2. creates (once, keyed by the hash of hack/requirements-test.txt) a virtualenv with moto,
#    kubectl and hadolint; builds (once, cached) helm, promtool and kube-score
# 3. builds the tests, then runs `cargo test --workspace --locked --no-fail-fast` inside
#    `testenv run`, which starts ONE control plane that every test binary shares
#    (STS_TEST_KUBECONFIG, STS_TEST_CONTROL_PLANE_DIR) and tears it down afterwards.
# 4. prints the figures the tests recorded and one line per test binary (hack/test-summary.sh).
# Exit code: cargo test's.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
cache=${STS_TEST_CACHE:-$HOME/.cache/sts-session-operator}
mkdir -p "$cache"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}
total_started=$SECONDS

# -- 1. control plane binaries ----------------------------------------------------------------
started=$SECONDS
bin_dir=$(bash hack/build-control-plane.sh | tail -n 1)
echo "control plane build took $((SECONDS - started)) s ($bin_dir)"

# -- 2. virtualenv (moto, kubectl) --------------------------------------------------------------
req=hack/requirements-test.txt
venv="$cache/venv-$(sha256sum "$req" | cut -c1-12)"
(
  flock 9
  if [[ ! -f "$venv/.complete" ]]; then
    started=$SECONDS
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input -r "$req"
    touch "$venv/.complete"
    echo "virtualenv $venv set up in $((SECONDS - started)) s"
  fi
) 9>"$venv.lock"

# -- helm (install-path tests: tests/install.rs; block owned by the chart/deploy work) ------------
# Built once from hack/helm/go.mod and cached by version; tests/install.rs builds it itself when
# STS_TEST_HELM is unset.
started=$SECONDS
STS_TEST_HELM=$(bash hack/build-helm.sh | tail -n 1)   # (not `export X=$(…)`: that hides a failure)
export STS_TEST_HELM
echo "helm build took $((SECONDS - started)) s ($STS_TEST_HELM)"
# -- end of helm block ----------------------------------------------------------------------------

# -- images and a real node (tests/image, tests/node; block owned by the image/node work) ---------
# Debian packages they need (root installs them; CI runs as root): docker.io (dockerd, docker),
# debootstrap (the stand-in base images), containernetworking-plugins and libseccomp-dev (runc's
# build) for the node.
missing=()
for need in dockerd:docker.io docker:docker.io debootstrap:debootstrap; do
  command -v "${need%%:*}" >/dev/null || missing+=("${need#*:}")
done
[[ -x /usr/lib/cni/loopback ]] || missing+=(containernetworking-plugins)
[[ -f /usr/include/seccomp.h ]] || missing+=(libseccomp-dev)
if ((${#missing[@]})); then
  started=$SECONDS
  if [[ $(id -u) != 0 ]]; then
    echo "missing Debian packages ${missing[*]}: apt-get install them as root" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "installed ${missing[*]} in $((SECONDS - started)) s"
fi
# kubelet, kube-scheduler (same Kubernetes as the control plane), containerd 2.x and runc, cached
# by version (hack/build-node.sh), built while the image builds: its final link-time optimisation
# runs on one core, and debootstrap mostly waits on the network.
started=$SECONDS
node_build_log=$(mktemp "${TMPDIR:-/tmp}/sts-node-build.XXXXXX")
bash hack/build-node.sh >"$node_build_log.out" 2>"$node_build_log" &
node_build_pid=$!
# The operator's image from ./Dockerfile (docker build, stand-in base images made here), plus the
# node tests' consumer and pause images; cached by content (hack/build-image.sh).
STS_TEST_IMAGES=$(bash hack/build-image.sh | tail -n 1) || { kill "$node_build_pid" 2>/dev/null; exit 1; }
export STS_TEST_IMAGES
echo "image build took $((SECONDS - started)) s ($STS_TEST_IMAGES)"
if ! wait "$node_build_pid"; then
  cat "$node_build_log" >&2
  echo "hack/build-node.sh failed" >&2
  exit 1
fi
cat "$node_build_log" >&2
STS_TEST_NODE_BIN_DIR=$(tail -n 1 "$node_build_log.out")
rm -f "$node_build_log" "$node_build_log.out"
export STS_TEST_NODE_BIN_DIR
echo "image and node builds took $((SECONDS - started)) s ($STS_TEST_NODE_BIN_DIR)"
# -- end of images and node block -------------------------------------------------------------------

# -- promtool and kube-score (alerts and manifest lint: tests/lint.rs) ------------------------------
# Built once from hack/promtool/go.mod and hack/kube-score/go.mod, cached by version
# (hack/build-go-tool.sh); tests/lint.rs builds them itself when these are unset.
started=$SECONDS
STS_TEST_PROMTOOL=$(bash hack/build-go-tool.sh promtool | tail -n 1)
export STS_TEST_PROMTOOL
echo "promtool build took $((SECONDS - started)) s ($STS_TEST_PROMTOOL)"
started=$SECONDS
STS_TEST_KUBE_SCORE=$(bash hack/build-go-tool.sh kube-score | tail -n 1)
export STS_TEST_KUBE_SCORE
echo "kube-score build took $((SECONDS - started)) s ($STS_TEST_KUBE_SCORE)"
# -- end of promtool / kube-score block -------------------------------------------------------------

# -- 3. environment ------------------------------------------------------------------------------
export STS_TEST_BIN_DIR="$bin_dir"
export STS_TEST_VENV="$venv"
export PATH="$venv/bin:$PATH"   # kubectl = the wheel's
# Nothing may reach real AWS or pick up ambient AWS configuration.
export AWS_EC2_METADATA_DISABLED=true
export AWS_ACCESS_KEY_ID=AKIDTESTKITDUMMY00000 AWS_SECRET_ACCESS_KEY=testkit-dummy-secret-not-used
export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
unset AWS_SESSION_TOKEN AWS_PROFILE AWS_ENDPOINT_URL AWS_CONTAINER_CREDENTIALS_FULL_URI \
  AWS_CONTAINER_CREDENTIALS_RELATIVE_URI AWS_WEB_IDENTITY_TOKEN_FILE

# -- 4. lint, build, then run the tests on one shared control plane ----------------------------
started=$SECONDS
# Formatting and lints (src/lib.rs denies unwrap, expect, panic, unreachable, unchecked indexing
# and arithmetic in non-test code): a red lint fails the run before any test.
cargo fmt --all --check
cargo clippy --quiet --locked --all-targets -- -D warnings
echo "fmt and clippy took $((SECONDS - started)) s"
started=$SECONDS
cargo build --quiet --locked -p testkit --bin testenv
cargo test --quiet --workspace --locked --no-run
echo "test build took $((SECONDS - started)) s"

crd_args=()
if compgen -G "crds/*.yaml" >/dev/null || compgen -G "crds/*.yml" >/dev/null; then
  crd_args=(--crds crds)
fi
# -- summary of figures (block owned by the fault/security suites) -------------------------------
# Tests append `test=NAME key=value...` lines here (tests/support/summary.rs); printed at the end.
summary_dir=$(mktemp -d "${TMPDIR:-/tmp}/sts-test-summary.XXXXXX")
export STS_TEST_SUMMARY_DIR="$summary_dir"
# -- end of summary block --------------------------------------------------------------------------

# A hang fails here, with a message, rather than at CI's time limit.
# --no-fail-fast: a red test binary never hides the others (cargo test would stop at the first);
# the output is also kept, for the one-line-per-binary summary at the end.
test_timeout=${STS_TEST_TIMEOUT:-2400}
test_log="$summary_dir/cargo-test.log"
started=$SECONDS
set +e
timeout --foreground --kill-after=60 "$test_timeout" \
  "$CARGO_TARGET_DIR/debug/testenv" run "${crd_args[@]}" -- \
  cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$test_log"
rc=${PIPESTATUS[0]}
set -e
if [[ $rc == 124 ]]; then
  echo "tests did not finish within $test_timeout s (STS_TEST_TIMEOUT): stopped" >&2
fi

# -- summary of figures: the sums over every test that recorded some --------------------------------
if [[ -s "$summary_dir/figures.txt" ]]; then
  echo "== reliability and security figures ($(wc -l <"$summary_dir/figures.txt") tests recorded some) =="
  awk '
    { for (i = 2; i <= NF; i++) { split($i, kv, "="); sum[kv[1]] += kv[2] } }
    END {
      n = split("rotations:rotations survived (under kills and faults)|kills:operator kills (kill -9)|restarts:control-plane restarts|faults:STS faults injected|approvals:MFA approvals under kills|kills_mid_call:kills during an STS call (MFA approvals)|bad_inputs:bad inputs tried end to end|fuzz_cases:property-test cases on untrusted input|leaks:leaks found (must be 0)|hostile:hostile objects tried|crashes:operator crashes|stalls:stalls", rows, "|")
      for (i = 1; i <= n; i++) {
        split(rows[i], r, ":")
        printf "  %-48s %d\n", r[2], sum[r[1]] + 0
      }
    }' "$summary_dir/figures.txt"
fi
# -- one line per test binary (from cargo's "Running ..." and "test result: ..." lines) -------------
echo "== test binaries =="
bash hack/test-summary.sh "$test_log" || true
rm -rf "$summary_dir"
# -- end of summary block --------------------------------------------------------------------------
echo "tests took $((SECONDS - started)) s (exit code $rc); make test took $((SECONDS - total_started)) s in all"
exit $rc
