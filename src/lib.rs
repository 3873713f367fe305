//! sts-session-operator: turns an IAM user's long-term keys plus an MFA code into short-lived
//! STS session credentials, kept fresh in a Kubernetes Secret.

pub mod consumers;
pub mod controller;
pub mod crd;
pub mod events;
pub mod metrics;
pub mod plan;
pub mod plugin;
pub mod requeue;
pub mod secret;
pub mod sensitive;
pub mod sts;
pub mod telemetry;

pub use sensitive::Sensitive;
