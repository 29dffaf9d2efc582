//! The chart's RBAC is read-only except for exactly what the operator writes, the rendered
//! Deployment is hardened (SPEC §3) and highly available, values are validated by the schema,
//! and the monitoring the chart ships (alerts, dashboard) queries only metrics the operator
//! exports. Needs the helm built by scripts/setup (and promtool, Debian package prometheus).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The helm built by scripts/setup; None (test skipped) only outside the test suite.
fn helm() -> Option<Command> {
    let helm = root().join("tests/cluster/bin/helm");
    if !helm.exists() {
        assert!(
            std::env::var_os("SECMETRICS_E2E_KUBECONFIG").is_none(),
            "helm is missing although the test suite was set up (scripts/setup builds it)"
        );
        eprintln!("chart test skipped: {} not built (run scripts/setup)", helm.display());
        return None;
    }
    Some(Command::new(helm))
}

/// `helm template` of the chart with `args`: the output, failed or not.
fn template(args: &[&str]) -> Option<Output> {
    let out = helm()?
        .args(["template", "secmetrics"])
        .arg(root().join("charts/secmetrics"))
        .args(["--namespace", "secmetrics-system", "--kube-version", "1.36.3"])
        .args(args)
        .output()
        .unwrap();
    Some(out)
}

fn render(args: &[&str]) -> Option<Vec<Value>> {
    let out = template(args)?;
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
            // Reviews: its own permissions (Enforce), and a /metrics scraper's token.
            ["selfsubjectaccessreviews"] | ["tokenreviews"] | ["subjectaccessreviews"] => {
                assert_eq!(verbs, ["create"])
            }
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
fn metrics_need_an_authorised_token_unless_turned_off() {
    let Some(docs) = render(&[
        "--set",
        "monitoring.serviceMonitor.enabled=true",
        "--set",
        "monitoring.metricsReaders[0].namespace=monitoring",
        "--set",
        "monitoring.metricsReaders[0].name=prometheus-k8s",
    ]) else {
        return;
    };
    let args = find(&docs, "Deployment", "secmetrics")["spec"]["template"]["spec"]["containers"][0]["args"]
        .to_string();
    assert!(args.contains("--metrics-auth=kubernetes"), "{args}");
    let rules = find(&docs, "ClusterRole", "secmetrics")["rules"].to_string();
    assert!(rules.contains("tokenreviews") && rules.contains("\"subjectaccessreviews\""), "{rules}");
    let reader = find(&docs, "ClusterRole", "secmetrics-metrics-reader");
    assert_eq!(reader["rules"], serde_json::json!([{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]));
    let binding = find(&docs, "ClusterRoleBinding", "secmetrics-metrics-reader");
    assert_eq!(
        binding["subjects"],
        serde_json::json!([{"kind": "ServiceAccount", "name": "prometheus-k8s", "namespace": "monitoring"}])
    );
    let monitor = find(&docs, "ServiceMonitor", "secmetrics");
    assert_eq!(
        monitor["spec"]["endpoints"][0]["bearerTokenFile"],
        "/var/run/secrets/kubernetes.io/serviceaccount/token"
    );
    // Off: no review permissions, no reader role, an open endpoint (restrict it otherwise).
    let Some(docs) = render(&["--set", "monitoring.metricsAuth=none"]) else { return };
    let rules = find(&docs, "ClusterRole", "secmetrics")["rules"].to_string();
    assert!(!rules.contains("tokenreviews") && !rules.contains("\"subjectaccessreviews\""), "{rules}");
    assert!(!docs.iter().any(|d| d["metadata"]["name"] == "secmetrics-metrics-reader"));
    let args = find(&docs, "Deployment", "secmetrics")["spec"]["template"]["spec"]["containers"][0]["args"]
        .to_string();
    assert!(args.contains("--metrics-auth=none"), "{args}");
    let refused = template(&["--set", "monitoring.metricsAuth=anyone"]).expect("helm is there");
    assert!(!refused.status.success(), "the schema refuses other values");
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

/// Every toggle of the chart on, as production would set it (shared with the e2e dry run).
const EVERYTHING: &[&str] = &["--values", "tests/fixtures/chart/everything.yaml"];

#[test]
fn helm_lint_is_clean() {
    for values in [&[][..], EVERYTHING] {
        let Some(mut helm) = helm() else { return };
        let out = helm
            .args(["lint", "--strict", "--kube-version", "1.36.3"])
            .arg(root().join("charts/secmetrics"))
            .args(values)
            .output()
            .unwrap();
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "helm lint {values:?}:\n{text}");
        assert!(!text.contains("[WARNING]") && !text.contains("[ERROR]"), "helm lint {values:?}:\n{text}");
        assert!(text.contains("1 chart(s) linted, 0 chart(s) failed"), "{text}");
    }
}

#[test]
fn values_schema_rejects_bad_values() {
    // Each bad value and the path helm's schema validation names.
    let bad = [
        ("replicas=two", "/replicas"),
        ("replicas=0", "/replicas"),
        ("logFormat=xml", "/logFormat"),
        ("replica=2", "additional properties 'replica'"),
        ("leaderElection.leaseDuration=soon", "/leaderElection/leaseDuration"),
        ("podAntiAffinity=maybe", "/podAntiAffinity"),
        ("platformNamespaces={Platform_NS}", "/platformNamespaces/0"),
        ("networkPolicy.apiServerCIDRs={10.0.0.10}", "/networkPolicy/apiServerCIDRs/0"),
        (
            "monitoring.prometheusRule.breachedForMinutes=half-an-hour",
            "/monitoring/prometheusRule/breachedForMinutes",
        ),
        ("prometheus.endpoints.main=ftp://x", "/prometheus/endpoints/main"),
        (
            "rbac.extraObserve[0].apiGroups[0]=,rbac.extraObserve[0].resources[0]=*",
            "/rbac/extraObserve/0/resources/0",
        ),
        ("image.digest=latest", "/image/digest"),
        ("evaluation.workers=-1", "/evaluation/workers"),
        ("evaluation.budget=forever", "/evaluation/budget"),
    ];
    for (value, path) in bad {
        let Some(out) = template(&["--set", value]) else { return };
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--set {value} was accepted");
        assert!(err.contains("values don't meet the specifications of the schema"), "--set {value}: {err}");
        assert!(err.contains(path), "--set {value}: expected {path} in {err}");
    }
    // The schema is not merely strict: the defaults, every toggle and the documented
    // alternatives pass.
    for values in [
        &[][..],
        EVERYTHING,
        &["--set", "podAntiAffinity=hard,logFormat=text,monitoring.prometheusRule.breachedForMinutes=60"],
        &["--set", "image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"],
    ] {
        render(values);
    }
    // Several replicas without leader election would all write and act: refused.
    let Some(out) = template(&["--set", "replicas=3,leaderElection.enabled=false"]) else { return };
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("replicas > 1 needs leaderElection.enabled"));
    render(&["--set", "replicas=1,leaderElection.enabled=false"]);
}

fn selector_labels() -> Value {
    serde_json::json!({"app.kubernetes.io/name": "secmetrics", "app.kubernetes.io/instance": "secmetrics"})
}

#[test]
fn two_replicas_elect_a_leader_and_spread_by_default() {
    let Some(docs) = render(&["--set", "logLevel=secmetrics=debug,logFormat=text"]) else { return };
    let deploy = find(&docs, "Deployment", "secmetrics");
    assert_eq!(deploy["spec"]["replicas"], 2);
    let pod = &deploy["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"], selector_labels());
    let c = &pod["spec"]["containers"][0];
    let args: Vec<&str> = c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    for want in [
        "--leader-elect=true",
        "--leader-election-id=secmetrics",
        "--lease-duration=15s",
        "--evaluation-workers=0",
        "--evaluation-budget=30s",
    ] {
        assert!(args.contains(&want), "{want} in {args:?}");
    }
    let env = |name: &str| {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("env {name}"))
            .clone()
    };
    // The Lease's namespace and the replica's identity come from the downward API.
    assert_eq!(env("POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
    assert_eq!(env("POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace");
    assert_eq!(env("SECMETRICS_LOG_LEVEL")["value"], "secmetrics=debug");
    assert_eq!(env("SECMETRICS_LOG_FORMAT")["value"], "text");
    assert!(c["resources"]["requests"]["cpu"].is_string() && c["resources"]["limits"]["memory"].is_string());
    // Replicas on different nodes and zones where possible.
    let anti =
        &pod["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(anti["podAffinityTerm"]["labelSelector"]["matchLabels"], selector_labels());
    let spread = pod["spec"]["topologySpreadConstraints"].as_array().unwrap();
    let keys: Vec<&str> = spread.iter().map(|t| t["topologyKey"].as_str().unwrap()).collect();
    assert_eq!(keys, ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]);
    assert!(spread.iter().all(|t| t["labelSelector"]["matchLabels"] == selector_labels()));
    // A drain keeps one replica.
    let pdb = find(&docs, "PodDisruptionBudget", "secmetrics");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], selector_labels());
    // The Service in front of /metrics selects the pods and targets the probe port.
    let svc = find(&docs, "Service", "secmetrics");
    assert_eq!(svc["spec"]["selector"], selector_labels());
    assert_eq!(svc["spec"]["ports"][0]["name"], "http");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], c["ports"][0]["name"]);

    // One replica may run without leader election, and gets no PodDisruptionBudget (it would
    // block every drain); affinity replaces the default.
    let Some(docs) = render(&[
        "--set",
        "replicas=1,leaderElection.enabled=false",
        "--set",
        "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=pool",
        "--set",
        "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
    ]) else {
        return;
    };
    let deploy = find(&docs, "Deployment", "secmetrics");
    assert_eq!(deploy["spec"]["replicas"], 1);
    assert!(
        deploy["spec"]["template"]["spec"]["containers"][0]["args"]
            .to_string()
            .contains("--leader-elect=false")
    );
    let affinity = &deploy["spec"]["template"]["spec"]["affinity"];
    assert!(affinity["podAntiAffinity"].is_null() && affinity["nodeAffinity"].is_object(), "{affinity}");
    assert!(!docs.iter().any(|d| d["kind"] == "PodDisruptionBudget"));
}

#[test]
fn network_policy_admits_only_the_metrics_port_and_reaches_only_dns_and_the_api_server() {
    let Some(docs) = render(&[]) else { return };
    assert!(!docs.iter().any(|d| d["kind"] == "NetworkPolicy"), "opt-in");
    let Some(docs) = render(&["--set", "networkPolicy.enabled=true"]) else { return };
    let np = find(&docs, "NetworkPolicy", "secmetrics");
    assert_eq!(np["spec"]["podSelector"]["matchLabels"], selector_labels());
    assert_eq!(np["spec"]["policyTypes"], serde_json::json!(["Ingress", "Egress"]));
    let ingress = np["spec"]["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 1);
    assert_eq!(ingress[0]["ports"], serde_json::json!([{"port": 8081, "protocol": "TCP"}]));
    let egress = np["spec"]["egress"].as_array().unwrap();
    assert_eq!(egress.len(), 2, "DNS and the API server only: {egress:?}");
    assert_eq!(egress[0]["ports"][0]["port"], 53);
    assert_eq!(egress[0]["to"][0]["podSelector"]["matchLabels"]["k8s-app"], "kube-dns");
    assert_eq!(
        egress[1]["ports"],
        serde_json::json!([{"port": 6443, "protocol": "TCP"}, {"port": 443, "protocol": "TCP"}])
    );
    assert!(egress[1]["to"].is_null(), "without cidrs: the API server ports anywhere");

    let Some(docs) = render(&[
        "--set",
        "networkPolicy.enabled=true,networkPolicy.apiServerCIDRs={10.0.0.10/32},networkPolicy.apiServerPort=443",
        "--set-json",
        r#"networkPolicy.extraEgress=[{"to":[{"ipBlock":{"cidr":"203.0.113.0/24"}}],"ports":[{"port":443}]}]"#,
        "--set-json",
        r#"networkPolicy.ingressFrom=[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}]"#,
    ]) else {
        return;
    };
    let np = find(&docs, "NetworkPolicy", "secmetrics");
    let egress = np["spec"]["egress"].as_array().unwrap();
    assert_eq!(egress[1]["to"], serde_json::json!([{"ipBlock": {"cidr": "10.0.0.10/32"}}]));
    assert_eq!(egress[1]["ports"], serde_json::json!([{"port": 443, "protocol": "TCP"}]), "443 once");
    assert_eq!(
        egress[2]["to"][0]["ipBlock"]["cidr"], "203.0.113.0/24",
        "webhook/Prometheus egress from the value"
    );
    assert_eq!(
        np["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );
}

#[test]
fn monitoring_renders_service_monitor_alerts_and_dashboard_only_when_enabled() {
    let Some(docs) = render(&[]) else { return };
    for kind in ["ServiceMonitor", "PrometheusRule", "ConfigMap"] {
        assert!(!docs.iter().any(|d| d["kind"] == kind), "no {kind} by default");
    }
    let Some(docs) = render(&[
        "--set",
        "monitoring.serviceMonitor.enabled=true,monitoring.serviceMonitor.labels.release=kube-prometheus-stack",
        "--set",
        "monitoring.prometheusRule.enabled=true,monitoring.prometheusRule.breachedForMinutes=45",
        "--set",
        "monitoring.grafanaDashboard.enabled=true,monitoring.grafanaDashboard.namespace=grafana",
    ]) else {
        return;
    };
    let sm = find(&docs, "ServiceMonitor", "secmetrics");
    assert_eq!(sm["metadata"]["labels"]["release"], "kube-prometheus-stack");
    let svc = find(&docs, "Service", "secmetrics");
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&svc["metadata"]["labels"][k], v, "the ServiceMonitor selects the Service");
    }
    assert_eq!(sm["spec"]["endpoints"][0]["port"], svc["spec"]["ports"][0]["name"]);
    assert_eq!(sm["spec"]["endpoints"][0]["honorLabels"], true, "keeps the metrics' own namespace label");

    let rules = alert_rules(&docs);
    let names: Vec<&str> = rules.iter().map(|r| r["alert"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "SecmetricsMetricBreached",
            "SecmetricsPolicyNonCompliant",
            "SecmetricsNoLeader",
            "SecmetricsOperatorNotReady",
            "SecmetricsReconcileErrors",
            "SecmetricsWatchErrors"
        ]
    );
    let rule = |name: &str| rules.iter().find(|r| r["alert"] == name).unwrap();
    let breached = rule("SecmetricsMetricBreached");
    assert_eq!(breached["for"], "45m");
    let expr = breached["expr"].as_str().unwrap();
    assert!(
        expr.contains(r#"secmetrics_metric_state{job="secmetrics", state="Breached"}"#)
            && expr.contains("== 1")
    );
    let no_leader = rule("SecmetricsNoLeader")["expr"].as_str().unwrap();
    assert!(
        no_leader.contains("max(secmetrics_leader{") && no_leader.contains("or vector(0)) == 0"),
        "{no_leader}"
    );
    assert!(
        rule("SecmetricsReconcileErrors")["expr"]
            .as_str()
            .unwrap()
            .contains("rate(secmetrics_reconcile_errors_total")
    );
    // Prometheus' own templates reach Prometheus untouched by helm.
    assert!(
        breached["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("{{ $labels.namespace }}/{{ $labels.metric }}")
    );

    let cm = find(&docs, "ConfigMap", "secmetrics-dashboard");
    assert_eq!(cm["metadata"]["namespace"], "grafana");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: Value = serde_json::from_str(cm["data"]["secmetrics.json"].as_str().unwrap()).unwrap();
    assert_eq!(shipped, dashboard(), "the ConfigMap ships dashboards/secmetrics.json as it is");
}

fn alert_rules(docs: &[Value]) -> Vec<Value> {
    let rule = find(docs, "PrometheusRule", "secmetrics");
    rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect()
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(root().join("charts/secmetrics/dashboards/secmetrics.json")).unwrap();
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every PromQL expression of the dashboard: panel targets and template variable queries.
fn dashboard_queries(dash: &Value) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                        ("query", Value::String(s)) if s.contains('(') => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(dash, &mut out);
    out
}

/// The metric names a PromQL expression (with Grafana's `$variables` and `label_values()`)
/// selects: identifiers outside label matchers, strings, ranges, grouping clauses and
/// function names.
fn metric_names(expr: &str) -> Vec<String> {
    const GROUPING: [&str; 6] = ["by", "without", "on", "ignoring", "group_left", "group_right"];
    const OPERATORS: [&str; 8] = ["and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"];
    let b: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    // Index just past the bracket matching the one at `i` (strings inside are skipped).
    let close = |mut i: usize, open: char, shut: char| {
        let mut depth = 0;
        while i < b.len() {
            match b[i] {
                '"' | '\'' | '`' => {
                    let q = b[i];
                    i += 1;
                    while i < b.len() && b[i] != q {
                        i += if b[i] == '\\' { 2 } else { 1 };
                    }
                }
                c if c == open => depth += 1,
                c if c == shut => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        b.len()
    };
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < b.len() && b[i] != c {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '{' {
            i = close(i, '{', '}');
        } else if c == '[' {
            i = close(i, '[', ']');
        } else if c == '$' || c.is_ascii_digit() || c == '.' {
            i += 1;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == '_' || b[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == '_' || b[i] == ':') {
                i += 1;
            }
            let word: String = b[start..i].iter().collect();
            let mut j = i;
            while j < b.len() && b[j].is_whitespace() {
                j += 1;
            }
            let call = j < b.len() && b[j] == '(';
            // An aggregation with its grouping first: `sum by (x) (...)`.
            let rest: String = b[j..].iter().take(8).collect();
            let aggregation = ["by ", "by(", "without ", "without("].iter().any(|g| rest.starts_with(g));
            if GROUPING.contains(&word.as_str()) {
                if call {
                    i = close(j, '(', ')');
                }
            } else if word == "label_values" && call {
                // Grafana: label_values(selector, label): only the selector names a metric.
                let end = close(j, '(', ')');
                let args: String = b[j + 1..end - 1].iter().collect();
                let selector = args.rsplit_once(',').map_or(args.as_str(), |(s, _)| s);
                names.extend(metric_names(selector));
                i = end;
            } else if !call && !aggregation && !OPERATORS.contains(&word.to_ascii_lowercase().as_str()) {
                names.push(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn metric_names_are_found_in_promql() {
    let expr = r#"histogram_quantile(0.99, sum by (le, controller) (rate(secmetrics_reconcile_duration_seconds_bucket{a="x}y", b=~"$ns"}[$__rate_interval])))
        and on (instance) secmetrics_leader == bool 1 or vector(0) unless label_replace(up, "dst", "v", "src", "(.*)") offset 5m"#;
    assert_eq!(
        metric_names(expr),
        ["secmetrics_reconcile_duration_seconds_bucket", "secmetrics_leader", "up"]
    );
    assert_eq!(
        metric_names(r#"label_values(secmetrics_metric_value{namespace=~"$namespace"}, metric)"#),
        ["secmetrics_metric_value"]
    );
    assert_eq!(
        metric_names("max by (namespace) (secmetrics_metric_valeu) > 1e3"),
        ["secmetrics_metric_valeu"]
    );
}

/// The sample names the operator's /metrics exposes (from its registry: a renamed metric
/// changes this set), with the suffixes of counters and histograms.
fn exported_metric_names() -> BTreeSet<String> {
    use secmetrics::api::security_metric::{MetricState, SecurityMetricStatus, TenantValue};
    use secmetrics::metrics;
    // One series of every family, so the exposition is complete whatever an empty family does.
    metrics::init();
    let status = SecurityMetricStatus {
        value: Some(1.0),
        state: MetricState::Breached,
        tenants: vec![TenantValue {
            name: "t".into(),
            value: Some(1.0),
            state: MetricState::Breached,
            anomalous: true,
        }],
        tenants_total: Some(1),
        evaluation_errors: Some(1),
        anomalous: true,
        ..Default::default()
    };
    metrics::record_metric("chart-test", "m", "AccessControl", &status);
    metrics::record_policy("chart-test", "p", Some(50.0), false);
    metrics::count_remediation("Event", "Planned");
    metrics::observe_reconcile("securitymetric", 0.01, true);
    metrics::count_watch_error("SecurityMetric");
    let text = metrics::encode();
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            match kind {
                "counter" => names.insert(format!("{}_total", name.trim_end_matches("_total"))),
                "histogram" => {
                    ["_bucket", "_sum", "_count"].iter().for_each(|s| {
                        names.insert(format!("{name}{s}"));
                    });
                    true
                }
                _ => names.insert(name.to_string()),
            };
        } else if !line.starts_with('#') && !line.is_empty() {
            let sample = line.split(['{', ' ']).next().unwrap();
            assert!(names.contains(sample), "sample {sample} of an undeclared family in\n{text}");
        }
    }
    names
}

#[test]
fn dashboard_and_alerts_query_only_metrics_the_operator_exports() {
    let exported = exported_metric_names();
    for expected in [
        "secmetrics_metric_value",
        "secmetrics_metric_state",
        "secmetrics_metric_tenant_value",
        "secmetrics_policy_score",
        "secmetrics_remediations_total",
        "secmetrics_reconcile_duration_seconds_bucket",
        "secmetrics_leader",
    ] {
        assert!(exported.contains(expected), "{expected} not in {exported:?}");
    }
    let check = |what: &str, exprs: &[String]| -> BTreeSet<String> {
        assert!(!exprs.is_empty(), "{what}: no queries found");
        let mut used = BTreeSet::new();
        for expr in exprs {
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{what}: no metric in {expr}");
            for n in names {
                assert!(
                    exported.contains(&n),
                    "{what} queries {n}, which the operator does not export: {expr}"
                );
                used.insert(n);
            }
        }
        used
    };
    let dash_queries = dashboard_queries(&dashboard());
    let used = check("the dashboard", &dash_queries);
    // The panels the dashboard promises: values, states, per-tenant values, policy scores,
    // remediations, reconcile latency.
    for family in [
        "secmetrics_metric_value",
        "secmetrics_metric_state",
        "secmetrics_metric_tenant_value",
        "secmetrics_policy_score",
        "secmetrics_remediations_total",
        "secmetrics_reconcile_duration_seconds_bucket",
    ] {
        assert!(used.contains(family), "no dashboard panel queries {family}");
    }
    let Some(docs) = render(&["--set", "monitoring.prometheusRule.enabled=true"]) else { return };
    let rules = alert_rules(&docs);
    let exprs: Vec<String> = rules.iter().map(|r| r["expr"].as_str().unwrap().to_string()).collect();
    check("the PrometheusRule", &exprs);
    promtool_checks(&rules, &dash_queries);
}

/// `promtool check rules` on the alerts, and on the dashboard queries as recording rules
/// (Grafana's variables replaced): both parse as PromQL.
fn promtool_checks(alerts: &[Value], dashboard_queries: &[String]) {
    if Command::new("promtool").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("SECMETRICS_E2E_KUBECONFIG").is_none(),
            "promtool is missing although the test suite was set up (scripts/setup installs it)"
        );
        eprintln!("promtool checks skipped: promtool not installed (run scripts/setup)");
        return;
    }
    let records: Vec<Value> = dashboard_queries
        .iter()
        .filter(|q| !q.starts_with("label_values"))
        .enumerate()
        .map(|(i, q)| {
            let q = q.replace("$__rate_interval", "5m").replace("$namespace", ".*").replace("$metric", ".*");
            serde_json::json!({"record": format!("secmetrics:dashboard:{i}"), "expr": q})
        })
        .collect();
    let file = serde_json::json!({"groups": [
        {"name": "alerts", "rules": alerts},
        {"name": "dashboard", "rules": records},
    ]});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, serde_json::to_string(&file).unwrap()).unwrap();
    let out = Command::new("promtool").args(["check", "rules"]).arg(&path).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool check rules:\n{text}");
    assert!(text.contains(&format!("SUCCESS: {} rules found", alerts.len() + records.len())), "{text}");
}

/// The production values of the README's Install section render as documented.
#[test]
fn readme_production_values_render() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let after = &readme[readme.find("`values-production.yaml`").expect("the README's production values")..];
    let start = after.find("```yaml\n").unwrap() + "```yaml\n".len();
    let values = &after[start..start + after[start..].find("```").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("values-production.yaml");
    std::fs::write(&path, values).unwrap();
    let Some(docs) = render(&["--values", path.to_str().unwrap()]) else { return };
    for kind in [
        "ServiceMonitor",
        "PrometheusRule",
        "ConfigMap",
        "SecurityMetric",
        "NetworkPolicy",
        "PodDisruptionBudget",
    ] {
        assert!(docs.iter().any(|d| d["kind"] == kind), "{kind} rendered from the README's values");
    }
    let np = find(&docs, "NetworkPolicy", "secmetrics");
    assert_eq!(np["spec"]["egress"][1]["to"][1]["ipBlock"]["cidr"], "10.0.0.11/32");
    assert_eq!(np["spec"]["egress"][2]["ports"][0]["port"], 9090);
}

#[test]
fn prometheus_endpoints_and_auth_secrets_are_exact_and_opt_in() {
    let Some(docs) = render(&[]) else { return };
    assert!(!docs.iter().any(|d| d["metadata"]["name"] == "secmetrics-prometheus-secrets"), "opt-in only");
    let Some(docs) =
        render(&["--set", "prometheus.authSecrets={prom-auth},prometheus.endpoints.main=http://prom:9090"])
    else {
        return;
    };
    let role = find(&docs, "Role", "secmetrics-prometheus-secrets");
    assert_eq!(role["metadata"]["namespace"], "secmetrics-system", "platform namespaces only");
    assert_eq!(
        role["rules"],
        serde_json::json!([{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["prom-auth"], "verbs": ["get"]}])
    );
    let args = &find(&docs, "Deployment", "secmetrics")["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(args.as_array().unwrap().iter().any(|a| a == "--prometheus-endpoint=main=http://prom:9090"));
    assert!(
        !args.as_array().unwrap().iter().any(|a| a.as_str().unwrap().starts_with("--prometheus-tenant-safe"))
    );
    assert!(args.as_array().unwrap().iter().any(|a| a == "--prometheus-max-timeout=10s"));
}

#[test]
fn prometheus_endpoints_are_tenant_safe_only_when_marked() {
    let Some(docs) = render(&[
        "--set",
        "prometheus.endpoints.main=http://prom:9090,prometheus.endpoints.t.url=http://t:9090,prometheus.endpoints.t.tenantSafe=true,prometheus.endpoints.l.url=http://l:9090,prometheus.endpoints.l.tenantSafe=true,prometheus.endpoints.l.namespaceLabel=kubernetes_namespace,prometheus.endpoints.o.url=http://o:9090,prometheus.maxTimeout=3s",
    ]) else {
        return;
    };
    let args = &find(&docs, "Deployment", "secmetrics")["spec"]["template"]["spec"]["containers"][0]["args"];
    let prometheus: Vec<&str> = args
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str().filter(|a| a.starts_with("--prometheus")))
        .collect();
    assert_eq!(
        prometheus,
        [
            "--prometheus-endpoint=l=http://l:9090",
            "--prometheus-tenant-safe-endpoint=l=kubernetes_namespace",
            "--prometheus-endpoint=main=http://prom:9090",
            "--prometheus-endpoint=o=http://o:9090",
            "--prometheus-endpoint=t=http://t:9090",
            "--prometheus-tenant-safe-endpoint=t=namespace",
            "--prometheus-max-timeout=3s",
        ]
    );
}
