//! secmetrics: application security metrics (CSA AICM/CCM AIS-03) as Kubernetes resources.
//!
//! - [`api`]: the custom resources.
//! - [`engine`]: the pure evaluation engine (no Kubernetes client).
//! - [`report`]: auditor reports (Markdown, HTML, JSON, CSV, OSCAL) from the resources.

pub mod api;
pub mod cli;
pub mod controller;
pub mod engine;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod remediation;
pub mod report;
pub mod sources;
pub mod status;
pub mod telemetry;
