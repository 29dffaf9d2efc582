//! A synthetic cluster for benchmarks: `namespaces` namespaces in 50 tenants, `pods` pods
//! spread over them, with the fields the example metrics read (securityContext, resources,
//! images, labels) varied so that every metric has passing and failing objects.
//! `benches/gen_dump.py` writes the same shapes to a file for `secmetrics evaluate`.

use serde_json::{Value, json};

pub fn namespace(i: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": format!("ns-{i:05}"), "labels": {"secmetrics.io/tenant": format!("tenant-{:02}", i % 50),
        "kubernetes.io/metadata.name": format!("ns-{i:05}")}}})
}

pub fn pod(i: usize, namespaces: usize) -> Value {
    let containers: Vec<Value> = (0..(1 + i % 3))
        .map(|c| {
            json!({
                "name": format!("c{c}"),
                "image": if i.is_multiple_of(7) { format!("registry.example.com/app{c}:latest") } else { format!("registry.example.com/app{c}:1.{}", i % 10) },
                "resources": if i.is_multiple_of(5) { json!({}) } else { json!({"limits": {"cpu": "500m", "memory": "256Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}}) },
                "securityContext": {"readOnlyRootFilesystem": !i.is_multiple_of(4), "allowPrivilegeEscalation": i.is_multiple_of(6)},
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "env": [{"name": "MODE", "value": "prod"}, {"name": "LEVEL", "value": "info"}],
            })
        })
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("pod-{i:06}"), "namespace": format!("ns-{:05}", i % namespaces),
            "uid": format!("00000000-0000-0000-0000-{i:012}"), "resourceVersion": format!("{}", 1000 + i),
            "creationTimestamp": "2026-11-01T00:00:00Z",
            "labels": {"app": format!("app-{}", i % 100), "owner": if i.is_multiple_of(9) { Value::Null } else { json!("team") }},
            "annotations": {"example.com/checksum": "abcdef0123456789"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("rs-{}", i / 3), "uid": "x", "controller": true}],
        },
        "spec": {
            "securityContext": if i.is_multiple_of(3) { json!({}) } else { json!({"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}}) },
            "serviceAccountName": if i.is_multiple_of(8) { "default" } else { "app" },
            "automountServiceAccountToken": i.is_multiple_of(2),
            "containers": containers,
            "nodeName": format!("node-{}", i % 100),
        },
        "status": {"phase": "Running", "podIP": "10.0.0.1", "qosClass": "Burstable"},
    })
}

/// Ten kinds of pod metric, each instantiated with several thresholds: 100 distinct metrics.
pub fn metric_spec(i: usize) -> Value {
    let (passes, aggregate, value) = match i % 10 {
        0 => (
            "has(object.spec.securityContext.runAsNonRoot) && object.spec.securityContext.runAsNonRoot",
            "Ratio",
            None,
        ),
        1 => (
            "object.spec.containers.all(c, has(c.resources.limits) && 'cpu' in c.resources.limits && 'memory' in c.resources.limits)",
            "Ratio",
            None,
        ),
        2 => ("object.spec.containers.all(c, !c.image.endsWith(':latest'))", "Ratio", None),
        3 => (
            "object.spec.containers.all(c, has(c.securityContext.readOnlyRootFilesystem) && c.securityContext.readOnlyRootFilesystem)",
            "Ratio",
            None,
        ),
        4 => ("object.spec.serviceAccountName != 'default'", "CountFailing", None),
        5 => (
            "!has(object.spec.automountServiceAccountToken) || !object.spec.automountServiceAccountToken",
            "Ratio",
            None,
        ),
        6 => ("has(object.metadata.labels.owner)", "NamespaceCoverage", None),
        7 => (
            "object.spec.containers.all(c, !has(c.securityContext.allowPrivilegeEscalation) || !c.securityContext.allowPrivilegeEscalation)",
            "Ratio",
            None,
        ),
        8 => ("true", "Sum", Some("size(object.spec.containers)")),
        _ => ("object.spec.containers.exists(c, c.image.startsWith('registry.example.com/'))", "Ratio", None),
    };
    let mut source = json!({"resource": {"apiVersion": "v1", "kind": "Pod"}, "passes": passes, "aggregate": aggregate,
        "where": format!("object.metadata.namespace != 'kube-system-{i}'")});
    if let Some(v) = value {
        source["value"] = json!(v);
    }
    json!({
        "displayName": format!("metric {i}"), "description": "benchmark", "type": "Technical", "category": "Other",
        "owner": {"team": "bench", "responsibility": "ApplicationProvider"},
        "source": {"kubernetes": source},
        "objective": {"operator": ">=", "target": (i % 10) as f64 * 10.0},
        "tenancy": {},
    })
}

/// The same ten kinds of metric, but nothing shared between any two of the 100: each `passes`
/// carries its own exemption (`|| object.metadata.name == 'exempt-<i>'`) and each `where`
/// filters on an object field rather than the namespace. This is the worst case for the
/// engine's sharing (one evaluation per distinct expression per object).
pub fn distinct_metric_spec(i: usize) -> Value {
    let mut spec = metric_spec(i);
    let source = &mut spec["source"]["kubernetes"];
    let passes = source["passes"].as_str().unwrap().to_string();
    source["passes"] = json!(format!("({passes}) || object.metadata.name == 'exempt-{i}'"));
    source["where"] = json!(format!("object.metadata.labels.app != 'legacy-{i}'"));
    spec
}
