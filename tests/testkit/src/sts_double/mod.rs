//! STS test double (to be written).
