//! The custom resources of `secmetrics.io/v1alpha1`.

pub mod conditions;
pub mod duration;
pub mod metric_policy;
pub mod security_metric;
pub mod validate;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use metric_policy::{MetricPolicy, MetricPolicySpec, MetricPolicyStatus};
pub use security_metric::{SecurityMetric, SecurityMetricSpec, SecurityMetricStatus};

/// The API group of every secmetrics resource.
pub const GROUP: &str = "secmetrics.io";
/// The field manager of every write the operator makes (server-side apply).
pub const FIELD_MANAGER: &str = "secmetrics";

/// The CustomResourceDefinitions the operator serves, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![SecurityMetric::crd(), MetricPolicy::crd()]
}

/// The CRDs as one multi-document YAML stream (what `secmetrics crds` prints and `crds/` holds).
pub fn crds_yaml() -> Result<String, serde_saphyr::ser::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd)?);
    }
    Ok(out)
}
