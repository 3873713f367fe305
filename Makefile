.PHONY: test control-plane bench demo

# Everything: builds the local control plane (cached), the test virtualenv (cached), and runs
# `cargo test --workspace` against one shared control plane. ARGS go to cargo test.
test:
	bash hack/test.sh $(ARGS)

# Only builds (or finds) the control plane binaries; prints their directory.
control-plane:
	bash hack/build-control-plane.sh

# Benchmarks (minutes; not part of `test`): a private control plane, the STS test double and the
# release-built operator; prints a table (README "Benchmarks"). ARGS go to the bench binary,
# e.g. make bench ARGS="--sizes 1000 --steady 30s"; make bench ARGS=--help
bench:
	bash hack/bench.sh $(ARGS)

# Try it: a local control plane, the STS test double and the operator; applies examples/mfa.yaml
# and examples/non-mfa.yaml, approves with a TOTP code, then watches. Ctrl-C removes everything.
demo:
	bash hack/demo.sh
