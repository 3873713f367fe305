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

// Non-test code handles what it is given: no unwrap, expect, panic, unreachable, unchecked
// indexing or arithmetic that can overflow (a justified `#[allow]` where an invariant holds).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

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
