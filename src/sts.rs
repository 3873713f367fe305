//! STS calls (to be written).
