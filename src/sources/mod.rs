//! Where metric data comes from: shared watches of Kubernetes objects, and Prometheus.

pub mod kubernetes;
pub mod prometheus;
pub mod promql;
