//! sts-session-operator: turns an IAM user's long-term keys plus an MFA code into short-lived
//! STS session credentials, kept fresh in a Kubernetes Secret.
//!
//! Where things are:
//! - `approval`: the whole code protocol (parsing, age, the claim, interrupted claims);
//! - `plan`: the decisions, pure (`decide`, `settle`);
//! - `reconcile`: observe → decide → act, the watches, the backstop;
//! - `sts`: the STS client, the endpoint policy, its errors;
//! - `secret`: how Secrets are laid out and read; `credentials`: the one credentials type;
//! - `crd`: the resource; `metrics`, `events`, `telemetry`; `plugin`: kubectl-sts's pure half.

pub mod approval;
pub mod crd;
pub mod credentials;
pub mod events;
pub mod metrics;
pub mod plan;
pub mod plugin;
pub mod reconcile;
pub mod requeue;
pub mod secret;
pub mod sensitive;
pub mod sts;
pub mod telemetry;

pub use credentials::Credentials;
pub use sensitive::Sensitive;
