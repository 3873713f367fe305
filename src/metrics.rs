//! Prometheus metrics and the health/metrics HTTP server (to be written).
