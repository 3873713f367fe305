#!/usr/bin/env bash
# `make demo`: the operator on a local control plane against the STS test double, nothing real.
#
# 1. builds the operator, `kubectl sts`, `testenv` and `sts-test-double`; finds (or builds, once)
#    the control plane binaries and the tools virtualenv (kubectl), as hack/test.sh does;
# 2. `testenv run` starts a private control plane (etcd, kube-apiserver,
#    kube-controller-manager; the CRD installed) and runs this script again inside it (`inside`):
# 3. starts the STS test double (sessions last DEMO_LIFETIME seconds, default 120, so rotations
#    happen while you watch; user `alice` with a virtual MFA device) and the operator (as the
#    `sts-operator` identity with the RBAC of tests/fixtures/operator-rbac.yaml);
# 4. applies examples/non-mfa.yaml and examples/mfa.yaml (with the double's keys in place of the
#    examples' placeholders) in namespace `demo`, approves `app-mfa` with `kubectl sts approve`
#    and a code computed from the double's TOTP seed, shows the Secrets (values masked) and
#    `kubectl get st`, then watches the SessionTokens until Ctrl-C, which removes everything.
#
# Environment: DEMO_LIFETIME (seconds), STS_TEST_KEEP=1 keeps the logs (printed at the end).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
cache=${STS_TEST_CACHE:-$HOME/.cache/sts-session-operator}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}
bin=$CARGO_TARGET_DIR/debug

if [[ ${1:-} != inside ]]; then
  echo "==> building the operator, kubectl-sts and the test tools (cargo build)"
  cargo build --quiet --locked --bin sts-session-operator --bin kubectl-sts
  cargo build --quiet --locked -p testkit --bin testenv --bin sts-test-double
  echo "==> control plane binaries (built once, then cached)"
  STS_TEST_BIN_DIR=$(bash hack/build-control-plane.sh | tail -n 1)
  export STS_TEST_BIN_DIR
  req=hack/requirements-test.txt
  venv="$cache/venv-$(sha256sum "$req" | cut -c1-12)"
  (
    flock 9
    if [[ ! -f "$venv/.complete" ]]; then
      echo "==> tools virtualenv (kubectl), once: $venv"
      rm -rf "$venv"
      python3 -m venv "$venv"
      "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input -r "$req"
      touch "$venv/.complete"
    fi
  ) 9>"$venv.lock"
  export DEMO_VENV=$venv
  echo "==> starting a local control plane"
  exec "$bin/testenv" run --crds crds -- bash "$root/hack/demo.sh" inside
fi

# ---- inside `testenv run`: STS_TEST_KUBECONFIG (admin), STS_TEST_CONTROL_PLANE_DIR ----------
dir=$STS_TEST_CONTROL_PLANE_DIR
export KUBECONFIG=$STS_TEST_KUBECONFIG
export PATH="$bin:$DEMO_VENV/bin:$PATH"   # kubectl (the wheel's), kubectl-sts
ns=demo
lifetime=${DEMO_LIFETIME:-120}
pids=()
cleanup() {
  trap - EXIT INT TERM
  echo
  echo "==> stopping the operator and the STS double; the control plane goes next"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ ${STS_TEST_KEEP:-} == 1 ]]; then
    echo "    logs kept in $dir (operator.log, sts-double.log)"
  fi
  exit 0
}
trap cleanup EXIT INT TERM

echo "==> STS test double: sessions last ${lifetime}s"
sts-test-double --lifetime "$lifetime" --user-name alice >"$dir/sts-double.env" 2>"$dir/sts-double.log" &
pids+=($!)
for _ in $(seq 100); do grep -q '^TOTP_URI=' "$dir/sts-double.env" 2>/dev/null && break; sleep 0.1; done
# shellcheck disable=SC1091
source <(grep -E '^(STS_ENDPOINT|AWS_ACCESS_KEY_ID|AWS_SECRET_ACCESS_KEY|MFA_SERIAL_NUMBER|TOTP_SEED_BASE32)=' "$dir/sts-double.env")
echo "    endpoint $STS_ENDPOINT, IAM user alice ($AWS_ACCESS_KEY_ID), MFA device $MFA_SERIAL_NUMBER"
echo "    TOTP seed $TOTP_SEED_BASE32 (current code: sts-test-double --print-code $TOTP_SEED_BASE32)"

echo "==> the operator (identity sts-operator, RBAC from tests/fixtures/operator-rbac.yaml)"
kubectl apply -f tests/fixtures/operator-rbac.yaml >/dev/null
metrics_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
KUBECONFIG=$dir/kubeconfig-sts-operator.yaml sts-session-operator \
  --sts-endpoint "$STS_ENDPOINT" --allowed-sts-endpoints 'http://127.0.0.1:*' \
  --metrics-address "127.0.0.1:$metrics_port" --metrics-auth=false --leader-election=false --log-format text \
  >"$dir/operator.log" 2>&1 &
pids+=($!)
for _ in $(seq 300); do
  curl -fs "http://127.0.0.1:$metrics_port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:$metrics_port/readyz" >/dev/null || { tail -20 "$dir/operator.log"; exit 1; }
echo "    ready (metrics: http://127.0.0.1:$metrics_port/metrics)"

echo "==> kubectl apply -n $ns -f examples/non-mfa.yaml -f examples/mfa.yaml (the double's keys in place of the examples')"
kubectl create namespace "$ns" >/dev/null
for f in examples/non-mfa.yaml examples/mfa.yaml; do
  sed -e "s|AKIAIOSFODNN7EXAMPLE|$AWS_ACCESS_KEY_ID|" \
      -e "s|wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY|$AWS_SECRET_ACCESS_KEY|" "$f" |
    kubectl apply -n "$ns" -f - | sed 's/^/    /'
done
kubectl wait -n "$ns" st/app --for=condition=Ready --timeout=30s >/dev/null

echo "==> kubectl sts approve app-mfa -n $ns   (the code: sts-test-double --print-code \$TOTP_SEED_BASE32)"
sts-test-double --print-code "$TOTP_SEED_BASE32" | kubectl sts approve app-mfa -n "$ns" | sed 's/^/    /'

show_secret() {
  echo "==> Secret $1 (values masked; \`config\` holds no secret and is shown)"
  kubectl get secret "$1" -n "$ns" -o json | python3 -c '
import base64, json, sys
s = json.load(sys.stdin)
for k, v in sorted(s.get("data", {}).items()):
    text = base64.b64decode(v).decode()
    if k == "config":
        print(f"    {k}:")
        for line in text.splitlines():
            print(f"      {line}")
    elif k in ("AWS_ACCESS_KEY_ID", "AWS_SESSION_EXPIRATION"):
        print(f"    {k}: {text}")
    else:
        print(f"    {k}: <{len(text)} bytes, masked>")
for k, v in sorted(s["metadata"].get("annotations", {}).items()):
    print(f"    (annotation {k}: {v})")
'
}
show_secret app-aws
show_secret app-mfa

echo "==> kubectl get st -n $ns"
kubectl get st -n "$ns" | sed 's/^/    /'
echo "==> kubectl sts status -n $ns"
kubectl sts status -n "$ns" | sed 's/^/    /'
echo "==> conditions of app-mfa"
kubectl get st app-mfa -n "$ns" \
  -o jsonpath='{range .status.conditions[*]}    {.type}={.status} {.reason}: {.message}{"\n"}{end}'

cat <<EOF

==> Watching (Ctrl-C stops and removes everything). Sessions last ${lifetime}s here:
    - app rotates by itself ~$((lifetime / 3))s before expiry (Issued events; a new AWS_ACCESS_KEY_ID);
    - app-mfa asks for a new code instead (Ready=True/AwaitingTokenCode, TokenCodeRequired events):
        export KUBECONFIG=$KUBECONFIG PATH=$bin:$DEMO_VENV/bin:\$PATH
        sts-test-double --print-code $TOTP_SEED_BASE32 | kubectl sts approve app-mfa -n $ns
    - with sessions this short, ConsumerRefresh=False/RenewWindowTooShort is expected.
    Other shells: kubectl get events -n $ns ; kubectl get secret app-aws -n $ns -o yaml
EOF
kubectl get st -n "$ns" -w --output-watch-events &
pids+=($!)
wait
