//! Test support for sts-session-operator: real peers on loopback.
//!
//! - a local control plane (etcd, kube-apiserver, kube-controller-manager) built from Go modules,
//! - moto in server mode (the real-wire STS peer),
//! - `sts_double`: our own STS *test double*, only for what moto cannot do.

pub mod sts_double;
