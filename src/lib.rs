//! sts-session-operator: turns an IAM user's long-term keys plus an MFA code into short-lived
//! STS session credentials, kept fresh in a Kubernetes Secret.

pub mod metrics;
pub mod sensitive;
pub mod sts;

pub use sensitive::Sensitive;
