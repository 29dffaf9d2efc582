//! Where metric data comes from: shared watches of Kubernetes objects.

pub mod kubernetes;
