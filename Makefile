.PHONY: test control-plane

# Everything: builds the local control plane (cached), the test virtualenv (cached), and runs
# `cargo test --workspace` against one shared control plane. ARGS go to cargo test.
test:
	bash hack/test.sh $(ARGS)

# Only builds (or finds) the control plane binaries; prints their directory.
control-plane:
	bash hack/build-control-plane.sh
