//! Objects the e2e tests create.

use secmetrics::api::SecurityMetric;
use serde_json::{Value, json};

/// A valid SecurityMetric observing pods: percent running as non-root.
pub fn non_root_metric(name: &str) -> Value {
    json!({
        "apiVersion": "secmetrics.io/v1alpha1",
        "kind": "SecurityMetric",
        "metadata": {"name": name},
        "spec": {
            "displayName": "Pods running as non-root",
            "description": "Share of pods whose containers all run as a non-root user.",
            "type": "Technical",
            "category": "AccessControl",
            "owner": {"team": "platform", "responsibility": "ApplicationProvider"},
            "source": {"kubernetes": {
                "resource": {"apiVersion": "v1", "kind": "Pod"},
                "passes": "has(object.spec.securityContext) && has(object.spec.securityContext.runAsNonRoot) && object.spec.securityContext.runAsNonRoot == true"
            }},
            "objective": {"operator": ">=", "target": 90, "warning": 80}
        }
    })
}

/// Deserializes a fixture into the typed resource.
pub fn typed(v: &Value) -> SecurityMetric {
    serde_json::from_value(v.clone()).expect("fixture is a valid SecurityMetric")
}
