//! Prints the SessionToken CRD as YAML. `crds/` holds its output; a test fails if they differ.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
fn main() {
    print!("{}", sts_session_operator::crd::crd_yaml());
}
