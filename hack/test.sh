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

# -- 4. build, then run the tests on one shared control plane ----------------------------------
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
      n = split("rotations:rotations survived (under kills and faults)|kills:operator kills (kill -9)|restarts:control-plane restarts|faults:STS faults injected|approvals:MFA approvals under kills|kills_mid_call:kills during an STS call (MFA approvals)|bad_inputs:bad inputs tried end to end|fuzz_cases:property-test cases on untrusted input|leaks:leaks found (must be 0)", rows, "|")
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
