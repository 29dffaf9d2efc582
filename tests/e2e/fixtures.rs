//! Objects the e2e tests create.

use secmetrics::api::SecurityMetric;
use serde_json::{Value, json};

/// A valid SecurityMetric with no namespace or labels (no test operator manages it): the
/// owner-label metric below with a non-root `passes`.
pub fn non_root_metric(name: &str) -> Value {
    let mut m = owner_label_metric(
        "",
        name,
        json!({"source": {"kubernetes": {"passes":
        "has(object.spec.securityContext) && has(object.spec.securityContext.runAsNonRoot) && object.spec.securityContext.runAsNonRoot == true"}}}),
    );
    m["metadata"] = json!({"name": name});
    m
}

/// Deserializes a fixture into the typed resource.
pub fn typed(v: &Value) -> SecurityMetric {
    serde_json::from_value(v.clone()).expect("fixture is a valid SecurityMetric")
}

/// A metric in `ns` (labelled for the test's operator) over pods: percent with an `owner` label.
pub fn owner_label_metric(ns: &str, name: &str, extra: Value) -> Value {
    let mut m = json!({
        "apiVersion": "secmetrics.io/v1alpha1",
        "kind": "SecurityMetric",
        "metadata": {"name": name, "namespace": ns, "labels": {"e2e": ns}},
        "spec": {
            "displayName": "Pods with an owner label",
            "description": "Share of pods labelled with their owning team.",
            "type": "Operational",
            "category": "Other",
            "owner": {"team": "platform", "responsibility": "ApplicationProvider"},
            "source": {"kubernetes": {
                "resource": {"apiVersion": "v1", "kind": "Pod"},
                "passes": "has(object.metadata.labels) && 'owner' in object.metadata.labels"
            }},
            "objective": {"operator": ">=", "target": 100, "warning": 50},
            "interval": "10s"
        }
    });
    merge(&mut m["spec"], extra);
    m
}

/// Merges `patch` into `target` (objects recursively, anything else replaced).
pub fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p,
    }
}

/// A pod in `ns` with labels.
pub fn pod(ns: &str, name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "registry.example.com/app:1.0"}]}
    })
}
