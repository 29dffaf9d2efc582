#!/usr/bin/env python3
"""Writes a synthetic cluster dump (a `kind: List` JSON document, as `kubectl get -o json`
prints) and 100 metrics, with the same shapes as benches/synthetic.rs, for measuring
`secmetrics evaluate` (time and peak memory). Usage: gen_dump.py OUTDIR [PODS] [NAMESPACES]"""
import json, os, sys

out = sys.argv[1]
pods = int(sys.argv[2]) if len(sys.argv) > 2 else 50000
nss = int(sys.argv[3]) if len(sys.argv) > 3 else 5000
os.makedirs(out, exist_ok=True)

def namespace(i):
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"ns-{i:05}", "labels": {
        "secmetrics.io/tenant": f"tenant-{i % 50:02}", "kubernetes.io/metadata.name": f"ns-{i:05}"}}}

def pod(i):
    containers = []
    for c in range(1 + i % 3):
        containers.append({
            "name": f"c{c}",
            "image": f"registry.example.com/app{c}:latest" if i % 7 == 0 else f"registry.example.com/app{c}:1.{i % 10}",
            "resources": {} if i % 5 == 0 else {"limits": {"cpu": "500m", "memory": "256Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}},
            "securityContext": {"readOnlyRootFilesystem": i % 4 != 0, "allowPrivilegeEscalation": i % 6 == 0},
            "ports": [{"containerPort": 8080, "protocol": "TCP"}],
            "env": [{"name": "MODE", "value": "prod"}, {"name": "LEVEL", "value": "info"}],
        })
    return {"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"pod-{i:06}", "namespace": f"ns-{i % nss:05}", "uid": f"00000000-0000-0000-0000-{i:012}",
            "resourceVersion": str(1000 + i), "creationTimestamp": "2026-11-01T00:00:00Z",
            "labels": {"app": f"app-{i % 100}", "owner": None if i % 9 == 0 else "team"},
            "annotations": {"example.com/checksum": "abcdef0123456789"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"rs-{i // 3}", "uid": "x", "controller": True}]},
        "spec": {"securityContext": {} if i % 3 == 0 else {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "serviceAccountName": "default" if i % 8 == 0 else "app", "automountServiceAccountToken": i % 2 == 0,
            "containers": containers, "nodeName": f"node-{i % 100}"},
        "status": {"phase": "Running", "podIP": "10.0.0.1", "qosClass": "Burstable"}}

PASSES = [
    ("has(object.spec.securityContext.runAsNonRoot) && object.spec.securityContext.runAsNonRoot", "Ratio", None),
    ("object.spec.containers.all(c, has(c.resources.limits) && 'cpu' in c.resources.limits && 'memory' in c.resources.limits)", "Ratio", None),
    ("object.spec.containers.all(c, !c.image.endsWith(':latest'))", "Ratio", None),
    ("object.spec.containers.all(c, has(c.securityContext.readOnlyRootFilesystem) && c.securityContext.readOnlyRootFilesystem)", "Ratio", None),
    ("object.spec.serviceAccountName != 'default'", "CountFailing", None),
    ("!has(object.spec.automountServiceAccountToken) || !object.spec.automountServiceAccountToken", "Ratio", None),
    ("has(object.metadata.labels.owner)", "NamespaceCoverage", None),
    ("object.spec.containers.all(c, !has(c.securityContext.allowPrivilegeEscalation) || !c.securityContext.allowPrivilegeEscalation)", "Ratio", None),
    ("true", "Sum", "size(object.spec.containers)"),
    ("object.spec.containers.exists(c, c.image.startsWith('registry.example.com/'))", "Ratio", None),
]

def metric(i):
    passes, agg, value = PASSES[i % 10]
    src = {"resource": {"apiVersion": "v1", "kind": "Pod"}, "passes": passes, "aggregate": agg,
           "where": f"object.metadata.namespace != 'kube-system-{i}'"}
    if value:
        src["value"] = value
    return {"apiVersion": "secmetrics.io/v1alpha1", "kind": "SecurityMetric",
            "metadata": {"name": f"metric-{i:03}", "namespace": "secmetrics-system"},
            "spec": {"displayName": f"metric {i}", "description": "benchmark", "type": "Technical", "category": "Other",
                     "owner": {"team": "bench", "responsibility": "ApplicationProvider"}, "source": {"kubernetes": src},
                     "objective": {"operator": ">=", "target": (i % 10) * 10.0}, "tenancy": {}}}

with open(os.path.join(out, "dump.json"), "w") as f:
    json.dump({"apiVersion": "v1", "kind": "List", "items": [namespace(i) for i in range(nss)] + [pod(i) for i in range(pods)]}, f)
with open(os.path.join(out, "metrics.json"), "w") as f:
    json.dump({"apiVersion": "v1", "kind": "List", "items": [metric(i) for i in range(100)]}, f)
