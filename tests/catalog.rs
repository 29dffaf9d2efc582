//! The built-in catalog (charts/secmetrics/catalog/, SPEC §6): every metric measured by the
//! engine on small fixtures (tests/fixtures/catalog/) with a known answer, and documented,
//! owned and mapped to frameworks as SPEC §2 requires.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use secmetrics::api::metric_policy::{ActionType, Mode, Scope, TriggerState};
use secmetrics::api::security_metric::{MetricState, SecurityMetricStatus};
use secmetrics::api::{MetricPolicy, SecurityMetric};
use secmetrics::cli::load;
use secmetrics::engine::{self, CompiledSource, Kind, ObjectIndex, Outcome, Pass, Visibility, policy};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn catalog_dir() -> PathBuf {
    root().join("charts/secmetrics/catalog")
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/catalog").join(format!("{name}.yaml"))
}

/// Every document of the catalog, strictly typed: an unknown field (which the API server
/// would silently prune) fails here.
fn catalog() -> (BTreeMap<String, SecurityMetric>, Vec<MetricPolicy>) {
    let mut metrics = BTreeMap::new();
    let mut policies = Vec::new();
    for doc in load::load(&[catalog_dir()]).expect("the catalog loads") {
        let typed_back = |v: Value| {
            let unknown = load::unknown_fields(&doc.value, &v);
            assert!(unknown.is_empty(), "{}: unknown fields {unknown:?}", doc.origin);
        };
        match doc.value["kind"].as_str() {
            Some("SecurityMetric") => {
                let m: SecurityMetric = serde_json::from_value(doc.value.clone())
                    .unwrap_or_else(|e| panic!("{}: {e}", doc.origin));
                typed_back(serde_json::to_value(&m).unwrap());
                let name = m.metadata.name.clone().expect("named");
                assert!(metrics.insert(name.clone(), m).is_none(), "{name} is defined twice");
            }
            Some("MetricPolicy") => {
                let p: MetricPolicy = serde_json::from_value(doc.value.clone())
                    .unwrap_or_else(|e| panic!("{}: {e}", doc.origin));
                typed_back(serde_json::to_value(&p).unwrap());
                policies.push(p);
            }
            other => panic!("{}: unexpected kind {other:?} in the catalog", doc.origin),
        }
    }
    (metrics, policies)
}

fn metric(name: &str) -> SecurityMetric {
    catalog().0.remove(name).unwrap_or_else(|| panic!("no catalog metric {name}"))
}

/// The objects of some fixture files, indexed as the operator's watches would.
fn index(fixtures: &[&str], kinds: &[Kind]) -> ObjectIndex {
    let mut index = ObjectIndex::default();
    index.ensure_kind(&Kind::new("v1", "Namespace"));
    for k in kinds {
        index.ensure_kind(k);
    }
    let paths: Vec<PathBuf> = fixtures.iter().map(|f| fixture(f)).collect();
    for doc in load::load(&paths).expect("fixtures load") {
        let kind = Kind::new(doc.value["apiVersion"].as_str().unwrap(), doc.value["kind"].as_str().unwrap());
        index.apply(&kind, doc.value);
    }
    index
}

/// A catalog metric measured on fixtures from a platform namespace (cluster-wide).
struct Measured {
    status: SecurityMetricStatus,
    /// Every failing object (`namespace/name`, or `name` when cluster-scoped), uncapped.
    failing: BTreeSet<String>,
    tenants: BTreeMap<String, Option<f64>>,
}

fn measure(name: &str, fixtures: &[&str]) -> Measured {
    let m = metric(name);
    let CompiledSource::Kubernetes(k) =
        engine::compile(&m.spec).unwrap_or_else(|e| panic!("{name} does not compile: {e}"))
    else {
        panic!("{name} is not a kubernetes metric")
    };
    let idx = index(fixtures, &k.kinds());
    let tally = k.evaluate_all(&Pass::new(chrono::Utc::now()), &idx, &Visibility::Cluster).expect("observed");
    let measurement = engine::aggregate::measure(&k, &tally, usize::MAX);
    assert_eq!(measurement.errors, 0, "{name}: evaluation errors: {:?}", measurement.first_error);
    let failing = measurement
        .offenders
        .iter()
        .map(|o| match &o.namespace {
            Some(ns) => format!("{ns}/{}", o.name),
            None => o.name.clone(),
        })
        .collect();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let status = engine::build_status(&m.spec, Some(1), None, &Outcome::Measured(measurement.clone()), &now);
    Measured { status, failing, tenants: measurement.tenants }
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Asserts the value, state and exact set of failing objects of a metric on fixtures.
#[track_caller]
fn expect(name: &str, fixtures: &[&str], value: f64, state: MetricState, failing: &[&str]) -> Measured {
    let m = measure(name, fixtures);
    assert_eq!(m.status.value, Some(value), "{name}: value");
    assert_eq!(m.status.state, state, "{name}: state");
    assert_eq!(m.failing, set(failing), "{name}: failing objects");
    m
}

/// The metrics the tests below check against a known answer; the catalog may hold no other.
const MEASURED: &[&str] = &[
    "cluster-admin-bindings",
    "wildcard-clusterroles",
    "wildcard-roles",
    "secret-readers-cluster-wide",
    "secret-readers-namespaced",
    "anonymous-authenticated-clusterrolebindings",
    "anonymous-authenticated-rolebindings",
    "pods-on-default-serviceaccount",
    "pods-without-token-automount",
    "pod-security-baseline",
    "pod-security-restricted",
    "namespaces-with-pod-security-enforce",
    "read-only-root-filesystem",
    "pods-with-resource-requests",
    "pods-with-resource-limits",
    "namespaces-with-resourcequota",
    "namespaces-with-limitrange",
    "tenant-cpu-requests",
    "tenant-quota-cpu-usage",
    "images-pinned-by-digest",
    "images-not-latest",
    "images-from-allowed-registries",
    "namespaces-with-default-deny",
    "externally-exposed-services",
    "ingresses-with-tls",
    "pods-without-secret-env-vars",
    "pods-in-default-namespace",
    "pods-with-owner-label",
    "critical-vulnerabilities",
    "high-vulnerabilities",
    // Not evaluated offline (no Prometheus, no operator records): checked by
    // prometheus_and_history_metrics_compile_and_are_never_a_silent_pass.
    "api-unauthorized-request-rate",
    "mean-time-to-recover",
];

#[test]
fn every_catalog_metric_has_a_known_answer_test() {
    let (metrics, _) = catalog();
    let names: BTreeSet<&str> = metrics.keys().map(String::as_str).collect();
    assert_eq!(names, MEASURED.iter().copied().collect(), "catalog metrics and tested metrics differ");
}

#[test]
fn every_catalog_metric_is_documented_owned_and_mapped() {
    const FRAMEWORKS: &[&str] = &[
        "CSA-AICM",
        "CSA-CCM",
        "ISO-27001",
        "ISO-42001",
        "NIST-800-53",
        "NIST-AI-RMF",
        "NIST-AI-600-1",
        "EU-AI-ACT",
        "BSI-C5",
        "CIS-K8S",
        "PSS",
    ];
    let (metrics, _) = catalog();
    assert!(metrics.len() >= 30, "the catalog covers SPEC §6: {} metrics", metrics.len());
    for (name, m) in &metrics {
        let s = &m.spec;
        assert!(m.metadata.namespace.is_none(), "{name}: the chart sets the namespace");
        assert!(
            s.description.len() >= 80 && s.description.ends_with('.'),
            "{name}: description {:?}",
            s.description
        );
        assert!(!s.display_name.is_empty(), "{name}");
        assert_eq!(s.owner.team, "platform-security", "{name}");
        assert!(!s.alignment.business_objectives.is_empty(), "{name}: business objectives");
        assert!(!s.alignment.security_requirements.is_empty(), "{name}: security requirements");
        let controls: Vec<(&str, &str)> =
            s.alignment.compliance.iter().map(|c| (c.framework.as_str(), c.control.as_str())).collect();
        assert!(controls.contains(&("CSA-AICM", "AIS-03")), "{name}: maps to CSA-AICM AIS-03");
        assert!(controls.contains(&("ISO-27001", "9.1")), "{name}: maps to ISO-27001 9.1");
        assert!(controls.len() >= 4, "{name}: mapped to a handful of controls: {controls:?}");
        for (f, _) in &controls {
            assert!(FRAMEWORKS.contains(f), "{name}: framework {f} is not one SPEC §2 lists");
        }
        let labels = m.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("secmetrics.io/catalog").map(String::as_str), Some("true"), "{name}");
        assert_eq!(
            labels.get("secmetrics.io/category"),
            Some(&s.category.as_str().to_lowercase()),
            "{name}: category label"
        );
        assert!(!s.unit.is_empty() && s.interval.is_some(), "{name}: unit and interval");
        engine::compile(s).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn baseline_policy_is_dry_run_and_selects_the_whole_catalog() {
    let (metrics, policies) = catalog();
    assert_eq!(policies.len(), 1);
    let p = &policies[0];
    assert_eq!(p.metadata.name.as_deref(), Some("catalog-baseline"));
    assert_eq!(p.spec.mode, Mode::DryRun);
    assert_eq!(p.spec.requirement.min_compliant_percent, 80.0);
    assert!(p.spec.compliance.iter().any(|c| c.framework == "CSA-AICM" && c.control == "AIS-03"));
    let views: Vec<_> = metrics.values().map(policy::MetricView::of).collect();
    let selected = policy::select(&p.spec, &views).unwrap();
    assert_eq!(selected.len(), metrics.len(), "the policy selects every catalog metric");

    let breach =
        p.spec.rules.iter().find(|r| r.when.state == TriggerState::Breached).expect("a Breached rule");
    assert_eq!(breach.when.for_.as_ref().map(|d| d.get().as_secs()), Some(600));
    assert_eq!(breach.actions[0].type_, ActionType::Event);
    let clamp =
        p.spec.rules.iter().find(|r| r.when.state == TriggerState::Anomalous).expect("an Anomalous rule");
    assert_eq!(clamp.scope, Scope::Tenant);
    let quota =
        clamp.actions.iter().find(|a| a.type_ == ActionType::ResourceQuota).expect("a ResourceQuota action");
    assert!(quota.quota.as_ref().is_some_and(|q| q.contains_key("requests.cpu")));
    // Only the tenant anomaly metric can be Anomalous, so only it can trigger the clamp.
    let anomalous: Vec<&str> =
        metrics.iter().filter(|(_, m)| m.spec.anomaly.is_some()).map(|(n, _)| n.as_str()).collect();
    assert_eq!(anomalous, ["tenant-cpu-requests"]);
}

#[test]
fn rbac_metrics_find_the_risky_bindings_and_roles() {
    use MetricState::*;
    expect("cluster-admin-bindings", &["rbac"], 2.0, Breached, &["admin-alice", "admin-mixed"]);
    expect(
        "wildcard-clusterroles",
        &["rbac"],
        3.0,
        Breached,
        &["everything-lister", "ops-wildcard-groups", "ops-wildcard-verbs"],
    );
    let m = expect("wildcard-roles", &["rbac"], 1.0, Breached, &["team-a/wild"]);
    assert_eq!(m.status.population, Some(3), "kube-system's Roles are not counted");
    assert_eq!(m.tenants.get("team-a"), Some(&Some(1.0)));
    // Through the bound ClusterRole: verbs get/list/watch (or *), resources secrets (or *), in
    // the core group (or *). Writing secrets, an `apps` lookalike, a missing role: no.
    let m = expect(
        "secret-readers-cluster-wide",
        &["rbac"],
        4.0,
        Breached,
        &["admin-alice", "admin-mixed", "list-everything-carol", "read-secrets-bob"],
    );
    assert_eq!(m.status.population, Some(9), "bindings of system subjects only are not counted");
    expect(
        "secret-readers-namespaced",
        &["rbac"],
        2.0,
        Warning,
        &["team-a/app-reads-secret", "team-a/bob-reads-secrets-via-clusterrole"],
    );
    expect(
        "anonymous-authenticated-clusterrolebindings",
        &["rbac"],
        2.0,
        Breached,
        &["anonymous-pods", "everyone-pods"],
    );
    expect(
        "anonymous-authenticated-rolebindings",
        &["rbac"],
        2.0,
        Breached,
        &["team-a/anonymous-config", "team-a/everyone-config"],
    );
}

/// Pods b-* of tests/fixtures/catalog/pod-security.yaml break one baseline check each.
const BASELINE_VIOLATIONS: &[&str] = &[
    "pss/b-adds-sys-admin",
    "pss/b-apparmor-annotation-unconfined",
    "pss/b-apparmor-unconfined",
    "pss/b-container-seccomp-unconfined",
    "pss/b-host-process",
    "pss/b-hostipc",
    "pss/b-hostnetwork",
    "pss/b-hostpath",
    "pss/b-hostpid",
    "pss/b-hostport",
    "pss/b-lifecycle-host",
    "pss/b-pod-seccomp-unconfined",
    "pss/b-privileged",
    "pss/b-privileged-ephemeral-container",
    "pss/b-probe-host",
    "pss/b-selinux-spc-t",
    "pss/b-selinux-user",
    "pss/b-unsafe-sysctl",
];

/// Pods r-* meet baseline but break one restricted check each.
const RESTRICTED_VIOLATIONS: &[&str] = &[
    "pss/r-adds-chown",
    "pss/r-container-overrides-non-root",
    "pss/r-container-uid-0",
    "pss/r-escalation-allowed",
    "pss/r-init-container-unhardened",
    "pss/r-may-run-as-root",
    "pss/r-nfs-volume",
    "pss/r-no-seccomp",
    "pss/r-not-dropping-all",
    "pss/r-pod-uid-0",
    "pss/r-proc-unmasked-user-namespace",
];

#[test]
fn pod_security_baseline_fails_exactly_the_baseline_violations() {
    // 6 restricted + 11 baseline-only + 18 violating pods; kube-system's privileged pod is
    // outside the population.
    let m = expect(
        "pod-security-baseline",
        &["pod-security"],
        48.5714,
        MetricState::Breached,
        BASELINE_VIOLATIONS,
    );
    assert_eq!((m.status.population, m.status.passing), (Some(35), Some(17)));
}

#[test]
fn pod_security_restricted_fails_every_violation() {
    let all: Vec<&str> = BASELINE_VIOLATIONS.iter().chain(RESTRICTED_VIOLATIONS).copied().collect();
    let m = expect("pod-security-restricted", &["pod-security"], 17.1429, MetricState::Breached, &all);
    assert_eq!(
        m.status.passing,
        Some(6),
        "the ok-* pods: Windows, user namespaces, container-level settings"
    );
}

#[test]
fn pod_security_expressions_run_on_the_fast_evaluator_for_ordinary_pods() {
    // Both checks are entirely within the fast evaluator's subset.
    let pod = index(&["pod-security"], &[]);
    let table = pod.objects(&Kind::new("v1", "Pod")).unwrap();
    let ok = table.values().find(|o| &*o.key.name == "ok-restricted").unwrap();
    for name in ["pod-security-baseline", "pod-security-restricted"] {
        let m = metric(name);
        let src = m.spec.source.kubernetes.as_ref().unwrap().passes.clone().unwrap();
        let program = cel::Program::compile(&src).unwrap();
        let op = engine::fast::compile(program.expression()).expect("in the subset");
        let env = engine::fast::Env {
            object: &ok.node,
            namespace: None,
            tenant: None,
            lookup: &engine::fast::NoObjects,
        };
        assert!(
            matches!(engine::fast::eval(&op, &env), Ok(engine::fast::V::Bool(true))),
            "{name} bailed to the interpreter"
        );
    }
}

#[test]
fn namespace_coverage_metrics_count_namespaces_not_objects() {
    use MetricState::*;
    // Non-system namespaces: default, ns-a, ns-b, ns-c, ns-d.
    expect(
        "namespaces-with-pod-security-enforce",
        &["namespaces"],
        40.0,
        Breached,
        &["default", "ns-b", "ns-d"],
    );
    let m =
        expect("namespaces-with-default-deny", &["namespaces"], 40.0, Breached, &["default", "ns-b", "ns-d"]);
    assert_eq!(m.tenants.get("team-x"), Some(&Some(50.0)), "ns-a and ns-b form tenant team-x");
    assert_eq!(m.status.population, Some(5));
    expect("namespaces-with-resourcequota", &["namespaces"], 60.0, Breached, &["ns-b", "ns-c"]);
    expect("namespaces-with-limitrange", &["namespaces"], 40.0, Breached, &["default", "ns-b", "ns-d"]);
}

#[test]
fn tenant_quota_usage_is_the_fullest_cpu_quota_per_tenant() {
    let m = measure("tenant-quota-cpu-usage", &["namespaces"]);
    // ns-a 500m of 2 (25%); ns-d 3 of 4 (75%) and 950m of 1 (95%); default has no CPU budget.
    assert_eq!(m.status.value, Some(95.0));
    assert_eq!(m.status.state, MetricState::Warning);
    assert_eq!(m.status.population, Some(3));
    assert_eq!(m.tenants, [("ns-d".into(), Some(95.0)), ("team-x".into(), Some(25.0))].into());
}

#[test]
fn service_account_metrics_follow_the_pod_and_its_account() {
    use MetricState::*;
    // Non-system pods: shop-web/web, shop-web/tool, shop-api/api, shop-api/batch, ml/trainer,
    // ml/finished, default/debug.
    expect(
        "pods-on-default-serviceaccount",
        &["workloads"],
        42.8571,
        Breached,
        &["default/debug", "ml/finished", "shop-api/api", "shop-api/batch"],
    );
    // Opted out on the pod (batch) or on its ServiceAccount (web, tool, ml's default).
    expect(
        "pods-without-token-automount",
        &["workloads"],
        57.1429,
        Warning,
        &["default/debug", "ml/trainer", "shop-api/api"],
    );
}

#[test]
fn resource_metrics_read_requests_limits_and_cpu_per_tenant() {
    use MetricState::*;
    expect(
        "pods-with-resource-requests",
        &["workloads"],
        57.1429,
        Breached,
        &["default/debug", "shop-api/batch", "shop-web/tool"],
    );
    expect(
        "pods-with-resource-limits",
        &["workloads"],
        28.5714,
        Breached,
        &["default/debug", "ml/finished", "shop-api/api", "shop-api/batch", "shop-web/tool"],
    );
    // 250m + 1 + 2 + 1500m; the finished pod's 8 cores and kube-system do not count.
    let m = measure("tenant-cpu-requests", &["workloads"]);
    assert_eq!(m.status.value, Some(4.75));
    assert_eq!(m.status.population, Some(6));
    assert_eq!(m.status.state, Compliant);
    assert_eq!(
        m.tenants,
        [("default".into(), Some(0.0)), ("ml".into(), Some(3.5)), ("shop".into(), Some(1.25))].into()
    );
}

#[test]
fn image_metrics_check_digests_tags_and_registries() {
    use MetricState::*;
    let all_but = |ok: &[&str]| -> Vec<&'static str> {
        [
            "default/debug",
            "ml/finished",
            "ml/trainer",
            "shop-api/api",
            "shop-api/batch",
            "shop-web/tool",
            "shop-web/web",
        ]
        .into_iter()
        .filter(|p| !ok.contains(p))
        .collect()
    };
    expect("images-pinned-by-digest", &["workloads"], 14.2857, Breached, &all_but(&["shop-web/web"]));
    // Untagged (nginx; a registry port is not a tag) and :latest fail.
    expect(
        "images-not-latest",
        &["workloads"],
        57.1429,
        Breached,
        &["ml/finished", "shop-api/batch", "shop-web/tool"],
    );
    expect(
        "images-from-allowed-registries",
        &["workloads"],
        57.1429,
        Breached,
        &["default/debug", "shop-api/batch", "shop-web/tool"],
    );
}

#[test]
fn workload_hygiene_metrics() {
    use MetricState::*;
    // env valueFrom.secretKeyRef (also in an init container) and envFrom.secretRef.
    expect(
        "pods-without-secret-env-vars",
        &["workloads"],
        57.1429,
        Breached,
        &["ml/trainer", "shop-api/api", "shop-web/tool"],
    );
    expect("pods-in-default-namespace", &["workloads"], 1.0, Breached, &["default/debug"]);
    expect(
        "pods-with-owner-label",
        &["workloads"],
        42.8571,
        Breached,
        &["default/debug", "ml/finished", "shop-api/batch", "shop-web/tool"],
    );
    // Every container and init container (batch's init container is writable).
    expect(
        "read-only-root-filesystem",
        &["workloads"],
        28.5714,
        Breached,
        &["default/debug", "ml/finished", "shop-api/api", "shop-api/batch", "shop-web/tool"],
    );
}

#[test]
fn network_metrics_find_exposed_services_and_ingresses_without_tls() {
    use MetricState::*;
    expect(
        "externally-exposed-services",
        &["network"],
        3.0,
        Warning,
        &["shop/external-ip", "shop/node-port", "shop/public-lb"],
    );
    expect(
        "ingresses-with-tls",
        &["network"],
        50.0,
        Breached,
        &["shop/plain-http", "shop/tls-for-one-host-of-two"],
    );
}

#[test]
fn vulnerability_metrics_sum_trivy_reports() {
    use MetricState::*;
    let m = expect(
        "critical-vulnerabilities",
        &["vulnerabilities"],
        4.0,
        Breached,
        &["ml/pod-trainer-trainer", "shop/replicaset-api-api"],
    );
    assert_eq!(m.tenants, [("ml".into(), Some(3.0)), ("shop".into(), Some(1.0))].into());
    expect(
        "high-vulnerabilities",
        &["vulnerabilities"],
        12.0,
        Warning,
        &["ml/pod-trainer-trainer", "shop/replicaset-web-web"],
    );
    // Without trivy-operator the kind is not there at all: no value, never a pass (the
    // operator reports SourceAvailable=False, reason KindNotFound; see tests/e2e/catalog.rs).
    let m = metric("critical-vulnerabilities");
    let CompiledSource::Kubernetes(k) = engine::compile(&m.spec).unwrap() else { panic!() };
    let without_trivy = index(&["workloads"], &[]);
    assert!(k.evaluate_all(&Pass::new(chrono::Utc::now()), &without_trivy, &Visibility::Cluster).is_err());
}

fn evaluate_cli(args: &[&str]) -> (i32, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_secmetrics"))
        .arg("evaluate")
        .args(["-f", catalog_dir().to_str().unwrap(), "--namespace", "secmetrics-system", "-o", "json"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let v: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout} {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap(), v)
}

fn item<'a>(list: &'a Value, kind: &str, name: &str) -> &'a Value {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["kind"] == kind && i["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind} {name} not in the output"))
}

fn condition<'a>(status: &'a Value, t: &str) -> &'a Value {
    status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == t).unwrap()
}

#[test]
fn prometheus_and_history_metrics_compile_and_are_never_a_silent_pass() {
    let (_, out) = evaluate_cli(&["--objects", fixture("workloads").to_str().unwrap()]);
    // Offline there is no Prometheus: no value, Unknown, and a Ready condition that says why.
    let s = &item(&out, "SecurityMetric", "api-unauthorized-request-rate")["status"];
    assert_eq!(condition(s, "ExpressionValid")["status"], "True", "{s}");
    assert_eq!(s["state"], "Unknown", "{s}");
    let ready = condition(s, "Ready");
    assert_eq!(ready["status"], "False", "{s}");
    assert!(!ready["message"].as_str().unwrap().is_empty(), "{s}");
    // The history metric reads the records the other metrics just got: every metric breached
    // now has an open breach that started now (MTTR 0 s so far), and is an offender.
    let s = &item(&out, "SecurityMetric", "mean-time-to-recover")["status"];
    let breached: Vec<&str> = out["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"] == "SecurityMetric" && i["status"]["state"] == "Breached")
        // The history metric's selector leaves the incident-response metrics out.
        .filter(|i| i["metadata"]["labels"]["secmetrics.io/category"] != "incidentresponse")
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert!(!breached.is_empty(), "the fixtures breach some metrics");
    assert_eq!(s["value"], 0.0, "{s}");
    assert_eq!(s["offendersTotal"], breached.len(), "{s}");
    let offenders: Vec<&str> =
        s["offenders"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert!(offenders.iter().all(|o| breached.contains(o)), "{offenders:?} vs {breached:?}");
}

#[test]
fn the_cli_evaluates_the_whole_catalog_and_the_policy_gates_on_it() {
    let args: Vec<String> = ["rbac", "pod-security", "namespaces", "workloads", "network", "vulnerabilities"]
        .iter()
        .flat_map(|f| ["--objects".to_string(), fixture(f).to_str().unwrap().to_string()])
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out) = evaluate_cli(&args);
    assert_eq!(code, 1, "the fixtures break the baseline: the pipeline gate fails");
    let policy = &item(&out, "MetricPolicy", "catalog-baseline")["status"];
    assert_eq!(policy["state"], "NonCompliant");
    assert_eq!(policy["metrics"].as_array().unwrap().len(), MEASURED.len());
    // The answers measured one by one above, now over every fixture file at once: the 7
    // pods of workloads.yaml meet baseline, so 17 + 7 of 35 + 7 pods pass.
    let s = &item(&out, "SecurityMetric", "pod-security-baseline")["status"];
    assert_eq!(s["value"], 57.1429);
    assert_eq!(s["offendersTotal"], BASELINE_VIOLATIONS.len());
    let s = &item(&out, "SecurityMetric", "secret-readers-cluster-wide")["status"];
    assert_eq!(s["value"], 4.0);
    let frameworks = policy["frameworks"].as_array().unwrap();
    assert!(frameworks.iter().any(|f| f["framework"] == "CIS-K8S" && f["control"] == "5.1.1"));
    assert!(frameworks.iter().any(|f| f["framework"] == "PSS" && f["control"] == "restricted"));

    // A clean cluster (only namespaces with their guardrails, and no workloads) does not
    // make the metrics pass silently: empty populations are Unknown, not Compliant.
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.yaml");
    std::fs::write(&empty, "apiVersion: v1\nkind: Namespace\nmetadata: {name: app}\n").unwrap();
    let (_, out) = evaluate_cli(&["--objects", empty.to_str().unwrap()]);
    assert_eq!(item(&out, "SecurityMetric", "pod-security-baseline")["status"]["state"], "Unknown");
}

/// Keeps the fixture directory honest: every fixture file is used by a test above.
#[test]
fn every_fixture_file_is_used() {
    let used = ["rbac", "pod-security", "namespaces", "workloads", "network", "vulnerabilities"];
    let files: BTreeSet<String> = std::fs::read_dir(root().join("tests/fixtures/catalog"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, used.iter().map(|s| s.to_string()).collect());
}
