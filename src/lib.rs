//! secmetrics: application security metrics (CSA AICM/CCM AIS-03) as Kubernetes resources.
//!
//! - [`api`]: the custom resources.

pub mod api;
