//! The one place that writes status: server-side apply with field manager `secmetrics`, so
//! the operator owns exactly the status fields it sets and removes those it no longer sets.

use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::api::security_metric::SecurityMetricStatus;
use crate::api::{FIELD_MANAGER, SecurityMetric};

/// Applies `status` to the named SecurityMetric. A metric deleted meanwhile is not an error.
pub async fn write_metric_status(
    api: &Api<SecurityMetric>,
    name: &str,
    status: &SecurityMetricStatus,
) -> Result<(), kube::Error> {
    let patch = json!({
        "apiVersion": "secmetrics.io/v1alpha1",
        "kind": "SecurityMetric",
        "status": status,
    });
    match api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Applies `status` to the named MetricPolicy. A policy deleted meanwhile is not an error.
pub async fn write_policy_status(
    api: &Api<crate::api::MetricPolicy>,
    name: &str,
    status: &crate::api::MetricPolicyStatus,
) -> Result<(), kube::Error> {
    let patch = json!({
        "apiVersion": "secmetrics.io/v1alpha1",
        "kind": "MetricPolicy",
        "status": status,
    });
    match api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}
