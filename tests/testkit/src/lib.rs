//! Test support for sts-session-operator: real peers on loopback.
//!
//! - [`control_plane`]: a local control plane (etcd, kube-apiserver, kube-controller-manager)
//!   built from Go modules, with test users, RBAC and an audit log,
//! - [`moto`]: moto in server mode (the real-wire STS peer),
//! - [`process`]: child processes and scratch directories that never outlive the test binary,
//! - `sts_double`: our own STS *test double*, only for what moto cannot do.
//!
//! Environment (all set by `hack/test.sh` / `make test`):
//! - `STS_TEST_BIN_DIR`: control plane binaries (else `hack/build-control-plane.sh` is run),
//! - `STS_TEST_KUBECONFIG` + `STS_TEST_CONTROL_PLANE_DIR`: attach [`ControlPlane::shared`] to the
//!   instance the test command started (`testenv run -- …`),
//! - `STS_TEST_VENV`: virtualenv with `moto_server` and `kubectl`,
//! - `STS_TEST_KEEP=1`: keep scratch directories (logs, etcd data, audit log) after the run.

pub mod control_plane;
pub mod moto;
pub mod process;
pub mod sts_double;

pub use control_plane::{AuditEvent, ControlPlane, TEST_USERS, TestUser};
pub use moto::Moto;
pub use process::{ChildProcess, ProcessBuilder, ScratchDir};
