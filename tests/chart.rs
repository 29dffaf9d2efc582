//! The chart's RBAC is read-only except for exactly what the operator writes, and the
//! rendered Deployment is hardened (SPEC §3). Needs the helm built by scripts/setup.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn render(args: &[&str]) -> Option<Vec<Value>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let helm = root.join("tests/cluster/bin/helm");
    if !helm.exists() {
        assert!(
            std::env::var_os("SECMETRICS_E2E_KUBECONFIG").is_none(),
            "helm is missing although the test suite was set up (scripts/setup builds it)"
        );
        eprintln!("chart test skipped: {} not built (run scripts/setup)", helm.display());
        return None;
    }
    let out = Command::new(helm)
        .args(["template", "secmetrics"])
        .arg(root.join("charts/secmetrics"))
        .args(["--namespace", "secmetrics-system", "--kube-version", "1.36.3"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let docs: Vec<Value> = serde_saphyr::from_multiple(&String::from_utf8(out.stdout).unwrap()).unwrap();
    Some(docs.into_iter().filter(|d| !d.is_null()).collect())
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind} {name}"))
}

#[test]
fn cluster_role_is_read_only_but_for_status_and_events() {
    let Some(docs) = render(&[]) else { return };
    let role = find(&docs, "ClusterRole", "secmetrics");
    for rule in role["rules"].as_array().unwrap() {
        let verbs: Vec<&str> =
            rule["verbs"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let resources: Vec<&str> =
            rule["resources"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert!(!verbs.contains(&"*") && !resources.contains(&"*"), "no wildcards: {rule}");
        assert!(
            !resources.contains(&"secrets") && !resources.contains(&"configmaps"),
            "no Secret access by default: {rule}"
        );
        match resources.as_slice() {
            ["securitymetrics/status", "metricpolicies/status"] => assert_eq!(verbs, ["patch"]),
            ["selfsubjectaccessreviews"] => assert_eq!(verbs, ["create"]),
            ["events"] => assert_eq!(verbs, ["create", "patch"]),
            _ => assert!(verbs.iter().all(|v| ["get", "list", "watch"].contains(v)), "read-only: {rule}"),
        }
    }
    // Extra observed kinds come only from the value.
    let Some(docs) = render(&[
        "--set",
        "rbac.extraObserve[0].apiGroups[0]=aquasecurity.github.io",
        "--set",
        "rbac.extraObserve[0].resources[0]=vulnerabilityreports",
    ]) else {
        return;
    };
    let rules = find(&docs, "ClusterRole", "secmetrics")["rules"].to_string();
    assert!(rules.contains("vulnerabilityreports"));
}

#[test]
fn deployment_runs_hardened() {
    let Some(docs) = render(&["--set", "platformNamespaces={secmetrics-system,platform}"]) else { return };
    let deploy = find(&docs, "Deployment", "secmetrics");
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let args = c["args"].to_string();
    assert!(args.contains("--platform-namespace=platform"), "{args}");
}

#[test]
fn enforcement_rbac_and_webhook_secrets_are_opt_in_and_exact() {
    let Some(docs) = render(&[]) else { return };
    assert!(
        !docs.iter().any(|d| d["metadata"]["name"] == "secmetrics-enforce"
            || d["metadata"]["name"] == "secmetrics-webhook-secrets"),
        "no enforcement RBAC and no Secret access by default"
    );
    let Some(docs) = render(&[
        "--set",
        "remediation.enforce=true",
        "--set",
        "remediation.webhookSecrets={hook-key}",
        "--set",
        "platformNamespaces={platform}",
    ]) else {
        return;
    };
    let role = find(&docs, "ClusterRole", "secmetrics-enforce");
    for rule in role["rules"].as_array().unwrap() {
        let verbs: Vec<&str> =
            rule["verbs"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let resources: Vec<&str> =
            rule["resources"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert!(
            !verbs.contains(&"*") && !resources.contains(&"*") && !resources.contains(&"secrets"),
            "{rule}"
        );
        match resources.as_slice() {
            ["networkpolicies"] | ["resourcequotas"] => assert_eq!(verbs, ["create", "patch", "delete"]),
            ["deployments", "statefulsets"] => assert_eq!(verbs, ["get", "patch"]),
            _ => assert_eq!(verbs, ["patch"], "label targets: patch only: {rule}"),
        }
    }
    find(&docs, "ClusterRoleBinding", "secmetrics-enforce");
    let secrets = docs
        .iter()
        .find(|d| d["kind"] == "Role" && d["metadata"]["name"] == "secmetrics-webhook-secrets")
        .expect("webhook Secret role");
    assert_eq!(secrets["metadata"]["namespace"], "platform", "only in platform namespaces");
    assert_eq!(secrets["rules"][0]["resourceNames"], serde_json::json!(["hook-key"]));
    assert_eq!(secrets["rules"][0]["verbs"], serde_json::json!(["get"]));
}

/// Numbers as f64, so that a value read back from Helm's YAML (float64 everywhere) compares
/// equal to the source.
fn normalized(v: &Value) -> Value {
    match v {
        Value::Number(n) => serde_json::json!(n.as_f64().unwrap()),
        Value::Array(a) => Value::Array(a.iter().map(normalized).collect()),
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), normalized(v))).collect()),
        other => other.clone(),
    }
}

#[test]
fn catalog_renders_every_metric_and_the_policy_only_when_enabled() {
    let Some(docs) = render(&[]) else { return };
    assert!(
        !docs.iter().any(|d| d["kind"] == "SecurityMetric" || d["kind"] == "MetricPolicy"),
        "no catalog by default"
    );
    assert!(!find(&docs, "ClusterRole", "secmetrics")["rules"].to_string().contains("vulnerabilityreports"));

    let Some(docs) = render(&["--set", "catalog.enabled=true"]) else { return };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let sources =
        secmetrics::cli::load::load(&[root.join("charts/secmetrics/catalog")]).expect("the catalog loads");
    assert!(sources.len() > 30, "{} catalog documents", sources.len());
    for src in &sources {
        let (kind, name) =
            (src.value["kind"].as_str().unwrap(), src.value["metadata"]["name"].as_str().unwrap());
        let out = find(&docs, kind, name);
        assert_eq!(out["metadata"]["namespace"], "secmetrics-system", "{kind} {name}: the release namespace");
        let labels = &out["metadata"]["labels"];
        assert_eq!(labels["secmetrics.io/catalog"], "true", "{kind} {name}");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "Helm", "{kind} {name}: the chart's labels");
        for (k, v) in src.value["metadata"]["labels"].as_object().unwrap() {
            assert_eq!(&labels[k], v, "{kind} {name}: label {k} kept");
        }
        assert_eq!(
            normalized(&out["spec"]),
            normalized(&src.value["spec"]),
            "{kind} {name}: spec as written"
        );
    }
    let rendered = |kind: &str| docs.iter().filter(|d| d["kind"] == kind).count();
    let sources_of = |kind: &str| sources.iter().filter(|d| d.value["kind"] == kind).count();
    assert_eq!(rendered("SecurityMetric"), sources_of("SecurityMetric"));
    assert_eq!(rendered("MetricPolicy"), 1);
    assert_eq!(find(&docs, "MetricPolicy", "catalog-baseline")["spec"]["mode"], "DryRun");
    // The vulnerability metrics may read trivy-operator's reports; still read-only.
    let rules = find(&docs, "ClusterRole", "secmetrics")["rules"].as_array().unwrap().clone();
    let vuln = rules.iter().find(|r| r["resources"] == serde_json::json!(["vulnerabilityreports"])).unwrap();
    assert_eq!(vuln["verbs"], serde_json::json!(["get", "list", "watch"]));

    // Another release namespace: the catalog follows it.
    let Some(docs) = render(&["--set", "catalog.enabled=true", "--namespace", "platform"]) else { return };
    let in_platform = docs
        .iter()
        .filter(|d| d["kind"] == "SecurityMetric" && d["metadata"]["namespace"] == "platform")
        .count();
    assert_eq!(in_platform, sources_of("SecurityMetric"));
}

fn helm(args: &[&str]) -> Option<std::process::Output> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let helm = root.join("tests/cluster/bin/helm");
    if !helm.exists() {
        return None;
    }
    Some(Command::new(helm).args(args).current_dir(&root).output().unwrap())
}

#[test]
fn helm_lint_is_clean_and_the_values_schema_rejects_bad_values() {
    let Some(out) = helm(&["lint", "charts/secmetrics", "--strict"]) else { return };
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for (bad, complaint) in [
        ("replicas=two", "/replicas"),
        ("logFormat=xml", "/logFormat"),
        ("leaderElection.leaseDuration=soon", "/leaderElection/leaseDuration"),
        ("prometheus.endpoints.main=ftp://x", "/prometheus/endpoints/main"),
        ("replica=2", "additional properties 'replica' not allowed"),
    ] {
        let out = helm(&["template", "x", "charts/secmetrics", "--set", bad]).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(complaint), "{bad}: {err}");
    }
}

#[test]
fn production_defaults_two_replicas_leader_election_pdb_and_spread() {
    let Some(docs) = render(&[]) else { return };
    let d = find(&docs, "Deployment", "secmetrics");
    assert_eq!(d["spec"]["replicas"], 2);
    let args: Vec<&str> = d["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--leader-elect=true") && args.contains(&"--lease-duration=15s"), "{args:?}");
    assert!(d["spec"]["template"]["spec"]["topologySpreadConstraints"].is_array());
    assert_eq!(find(&docs, "PodDisruptionBudget", "secmetrics")["spec"]["minAvailable"], 1);
    assert_eq!(find(&docs, "Service", "secmetrics")["spec"]["ports"][0]["targetPort"], "http");
    assert!(
        !docs.iter().any(|d| d["kind"] == "ServiceMonitor" || d["kind"] == "NetworkPolicy"),
        "opt-in only"
    );
    // One replica: no PDB (it would block every drain), no spread.
    let Some(single) = render(&["--set", "replicas=1"]) else { return };
    assert!(!single.iter().any(|d| d["kind"] == "PodDisruptionBudget"));
    let Some(auth) = render(&["--set", "prometheus.authSecrets={prom-auth}"]) else { return };
    let role = find(&auth, "Role", "secmetrics-prometheus-secrets");
    assert_eq!(role["metadata"]["namespace"], "secmetrics-system", "platform namespaces only");
    assert_eq!(
        role["rules"],
        serde_json::json!([{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["prom-auth"], "verbs": ["get"]}])
    );
    assert!(!docs.iter().any(|d| d["metadata"]["name"] == "secmetrics-prometheus-secrets"), "opt-in only");
    let Some(endpoints) = render(&["--set", "prometheus.endpoints.main=http://prom:9090"]) else { return };
    let args =
        &find(&endpoints, "Deployment", "secmetrics")["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(args.as_array().unwrap().iter().any(|a| a == "--prometheus-endpoint=main=http://prom:9090"));
}

/// Every `secmetrics_*` name the operator exports, from its registrations in src/metrics.rs
/// (counters gain `_total`, histograms `_bucket`, `_sum`, `_count`).
fn exported_names() -> std::collections::BTreeSet<String> {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/metrics.rs")).unwrap();
    let mut names = std::collections::BTreeSet::new();
    for part in src.split("r.register(").skip(1) {
        let name =
            format!("secmetrics_{}", part.trim_start().trim_start_matches('"').split('"').next().unwrap());
        for suffix in ["", "_total", "_bucket", "_sum", "_count"] {
            names.insert(format!("{name}{suffix}"));
        }
    }
    assert!(names.contains("secmetrics_metric_value"), "the registrations were found");
    names
}

fn queried_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("secmetrics_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn alerts_and_dashboard_query_only_metrics_the_operator_exports() {
    let exported = exported_names();
    let Some(docs) = render(&[
        "--set",
        "monitoring.serviceMonitor.enabled=true",
        "--set",
        "monitoring.prometheusRule.enabled=true",
        "--set",
        "monitoring.grafanaDashboard.enabled=true",
    ]) else {
        return;
    };
    assert_eq!(find(&docs, "ServiceMonitor", "secmetrics")["spec"]["endpoints"][0]["path"], "/metrics");
    let rules = &find(&docs, "PrometheusRule", "secmetrics")["spec"]["groups"][0]["rules"];
    let alerts: Vec<&str> = rules.as_array().unwrap().iter().map(|r| r["alert"].as_str().unwrap()).collect();
    assert_eq!(
        alerts,
        [
            "SecurityMetricBreached",
            "MetricPolicyNonCompliant",
            "SecmetricsNoLeader",
            "SecmetricsNotReady",
            "SecmetricsReconcileErrors"
        ]
    );
    let mut queried = Vec::new();
    for r in rules.as_array().unwrap() {
        queried.extend(queried_names(r["expr"].as_str().unwrap()));
    }
    let dashboard: Value = serde_json::from_str(
        find(&docs, "ConfigMap", "secmetrics-dashboard")["data"]["secmetrics.json"].as_str().unwrap(),
    )
    .unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    for p in panels {
        for t in p["targets"].as_array().unwrap() {
            let names = queried_names(t["expr"].as_str().unwrap());
            assert!(!names.is_empty(), "panel {} queries no secmetrics metric", p["title"]);
            queried.extend(names);
        }
    }
    for name in &queried {
        assert!(exported.contains(name), "{name} is queried but not exported (src/metrics.rs)");
    }
    for family in [
        "secmetrics_metric_value",
        "secmetrics_metric_state",
        "secmetrics_policy_score",
        "secmetrics_remediations_total",
        "secmetrics_metric_tenant_value",
    ] {
        assert!(queried.iter().any(|q| q == family), "the dashboard shows {family}");
    }
}
