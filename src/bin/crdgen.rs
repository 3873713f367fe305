//! Prints the SessionToken CRD as YAML. `crds/` holds its output; a test fails if they differ.
fn main() {
    print!("{}", sts_session_operator::crd::crd_yaml());
}
