#!/usr/bin/env bash
# The benchmarks (`make bench`, README "Benchmarks"). Extra arguments go to the bench binary
# (`make bench ARGS="--sizes 1000 --steady 30s"`; `make bench ARGS=--help` lists them).
#
# 1. builds (once, cached by version) the local control plane: hack/build-control-plane.sh
# 2. builds the operator exactly as the image does (`cargo build --release --locked --bin
#    sts-session-operator`), then the bench (`-p testkit --bin bench`, release)
# 3. runs the bench: a private control plane, the STS test double and the release operator.
# Not part of `make test` (it takes minutes); `cargo test --workspace` compiles it, so it cannot rot.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
cache=${STS_TEST_CACHE:-$HOME/.cache/sts-session-operator}
mkdir -p "$cache"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}

STS_TEST_BIN_DIR=$(bash hack/build-control-plane.sh | tail -n 1)
export STS_TEST_BIN_DIR

cargo build --quiet --release --locked --bin sts-session-operator
cargo build --quiet --release --locked -p testkit --bin bench

# Nothing may reach real AWS or pick up ambient AWS configuration.
export AWS_EC2_METADATA_DISABLED=true
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_PROFILE AWS_ENDPOINT_URL \
  AWS_CONTAINER_CREDENTIALS_FULL_URI AWS_CONTAINER_CREDENTIALS_RELATIVE_URI AWS_WEB_IDENTITY_TOKEN_FILE

exec "$CARGO_TARGET_DIR/release/bench" --operator "$CARGO_TARGET_DIR/release/sts-session-operator" "$@"
