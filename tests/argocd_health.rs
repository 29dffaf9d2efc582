//! The Argo CD health checks (charts/secmetrics/health/*.lua, docs/argocd-health.md) on
//! statuses the operator writes: SecurityMetric statuses come from the engine's own
//! `build_status`, MetricPolicy statuses carry the controller's reasons and messages.
//!
//! The scripts run in Lua 5.1 (mlua, vendored: no system package), the dialect of the
//! gopher-lua VM Argo CD runs them in, with only the base and table libraries.

use std::path::PathBuf;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use mlua::serde::SerializeOptions;
use mlua::{Lua, LuaOptions, LuaSerdeExt, StdLib, Table};
use secmetrics::api::conditions::{self, NewCondition, READY};
use secmetrics::api::metric_policy::{MetricPolicy, MetricPolicyStatus, PolicyState};
use secmetrics::api::security_metric::SecurityMetric;
use secmetrics::engine::{self, Measurement, Outcome};
use serde_json::{Value, json};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn script(kind: &str) -> String {
    std::fs::read_to_string(root().join(format!("charts/secmetrics/health/{kind}.lua"))).unwrap()
}

/// Runs a health script on `obj` as Argo CD does: `obj` global, the script's return value
/// is `{status, message}`.
fn health(script: &str, obj: &Value) -> (String, String) {
    let lua = Lua::new_with(StdLib::TABLE, LuaOptions::default()).unwrap();
    // JSON null is Lua nil in Argo CD (not mlua's NULL sentinel).
    let opts = SerializeOptions::new().serialize_none_to_null(false).serialize_unit_to_null(false);
    lua.globals().set("obj", lua.to_value_with(obj, opts).unwrap()).unwrap();
    let hs: Table = lua.load(script).eval().unwrap_or_else(|e| panic!("health script failed: {e}"));
    (hs.get("status").unwrap(), hs.get("message").unwrap())
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(1_780_000_000).unwrap())
}

/// The first example SecurityMetric at `generation`.
fn metric(generation: i64) -> SecurityMetric {
    let docs = secmetrics::cli::load::load(&[root().join("examples/metrics.yaml")]).unwrap();
    let mut m: SecurityMetric = serde_json::from_value(docs[0].value.clone()).unwrap();
    m.metadata.generation = Some(generation);
    m
}

fn metric_with(generation: i64, observed: i64, outcome: &Outcome) -> Value {
    let mut m = metric(generation);
    m.status = Some(engine::build_status(&m.spec, Some(observed), None, outcome, &now()));
    serde_json::to_value(&m).unwrap()
}

fn measured(value: Option<f64>) -> Outcome {
    Outcome::Measured(Measurement { value, population: 40, passing: 30, ..Default::default() })
}

#[test]
fn security_metric_health_follows_generation_and_ready() {
    let lua = script("securitymetric");
    let check = |obj: &Value, status: &str, message: &str| {
        let (s, m) = health(&lua, obj);
        assert_eq!((s.as_str(), m.as_str()), (status, message), "{}", obj["status"]);
    };
    // Not evaluated yet.
    check(
        &serde_json::to_value(metric(1)).unwrap(),
        "Progressing",
        "Waiting for the secmetrics operator to evaluate the metric",
    );
    // Status of an older spec: the new one is not evaluated yet.
    check(
        &metric_with(3, 2, &measured(Some(97.5))),
        "Progressing",
        "Waiting for the secmetrics operator to evaluate generation 3",
    );
    // Evaluated: Healthy in every state, the state in the message (objective >= 95).
    check(
        &metric_with(3, 3, &measured(Some(97.5))),
        "Healthy",
        "Compliant: value 97.5 is Compliant (objective >= 95)",
    );
    check(
        &metric_with(3, 3, &measured(Some(85.0))),
        "Healthy",
        "Warning: value 85 is Warning (objective >= 95)",
    );
    check(
        &metric_with(3, 3, &measured(Some(42.0))),
        "Healthy",
        "Breached: value 42 is Breached (objective >= 95)",
    );
    // Evaluated without data: works, state Unknown.
    check(&metric_with(3, 3, &measured(None)), "Healthy", "Unknown: no data: the population is empty");
    // Not working: Degraded with the reason and the operator's message.
    let forbidden = Outcome::SourceUnavailable {
        reason: "Forbidden".into(),
        message: "pods is forbidden: User \"system:serviceaccount:secmetrics-system:secmetrics\" cannot list"
            .into(),
    };
    check(
        &metric_with(3, 3, &forbidden),
        "Degraded",
        "Forbidden: pods is forbidden: User \"system:serviceaccount:secmetrics-system:secmetrics\" cannot list",
    );
    let mut bad = metric(3);
    bad.spec.source.kubernetes.as_mut().unwrap().where_ = Some("objetc.metadata.name == 'x'".into());
    let err = engine::compile(&bad.spec).expect_err("an undeclared reference does not compile");
    let obj = metric_with(3, 3, &Outcome::Invalid(err.clone()));
    let (status, message) = health(&lua, &obj);
    assert_eq!(status, "Degraded");
    assert_eq!(message, format!("InvalidSpec: {err}"));
    assert!(message.contains("objetc"), "{message}");

    // Conditions without Ready, or Ready Unknown: still Progressing.
    let mut obj = metric_with(3, 3, &measured(Some(97.5)));
    obj["status"]["conditions"].as_array_mut().unwrap().retain(|c| c["type"] != "Ready");
    check(&obj, "Progressing", "Waiting for the secmetrics operator to evaluate the metric");
    let mut obj = metric_with(3, 3, &measured(Some(97.5)));
    for c in obj["status"]["conditions"].as_array_mut().unwrap() {
        if c["type"] == "Ready" {
            c["status"] = json!("Unknown");
        }
    }
    check(&obj, "Progressing", "Waiting for the secmetrics operator to evaluate the metric");
}

fn policy(
    generation: i64,
    observed: i64,
    state: PolicyState,
    score: Option<f64>,
    ready: NewCondition,
) -> Value {
    let docs = secmetrics::cli::load::load(&[root().join("examples/policies.yaml")]).unwrap();
    let mut p: MetricPolicy = serde_json::from_value(docs[0].value.clone()).unwrap();
    p.metadata.generation = Some(generation);
    p.status = Some(MetricPolicyStatus {
        observed_generation: Some(observed),
        conditions: conditions::merge(&[], vec![ready], Some(observed), &now()),
        state,
        score,
        ..Default::default()
    });
    serde_json::to_value(&p).unwrap()
}

#[test]
fn metric_policy_health_follows_generation_and_ready() {
    let lua = script("metricpolicy");
    let reconciled = |m: &str| NewCondition::new(READY, true, "Reconciled", m);
    let check = |obj: &Value, status: &str, message: &str| {
        let (s, m) = health(&lua, obj);
        assert_eq!((s.as_str(), m.as_str()), (status, message), "{}", obj["status"]);
    };
    let mut fresh = policy(1, 1, PolicyState::Unknown, None, reconciled(""));
    fresh.as_object_mut().unwrap().remove("status");
    check(&fresh, "Progressing", "Waiting for the secmetrics operator to reconcile the policy");
    check(
        &policy(
            2,
            1,
            PolicyState::Compliant,
            Some(100.0),
            reconciled("3 of 3 metrics compliant; 0 remediation(s) active"),
        ),
        "Progressing",
        "Waiting for the secmetrics operator to reconcile generation 2",
    );
    check(
        &policy(
            2,
            2,
            PolicyState::Compliant,
            Some(100.0),
            reconciled("3 of 3 metrics compliant; 0 remediation(s) active"),
        ),
        "Healthy",
        "Compliant (score 100%): 3 of 3 metrics compliant; 0 remediation(s) active",
    );
    // NonCompliant is the policy working: Healthy, and the message says so.
    check(
        &policy(
            2,
            2,
            PolicyState::NonCompliant,
            Some(33.3),
            reconciled("1 of 3 metrics compliant; 2 remediation(s) active"),
        ),
        "Healthy",
        "NonCompliant (score 33.3%): 1 of 3 metrics compliant; 2 remediation(s) active",
    );
    check(
        &policy(
            2,
            2,
            PolicyState::Unknown,
            None,
            NewCondition::new(
                READY,
                false,
                "MetricsNotFound",
                "metrics not found in shop: pods-run-as-non-root",
            ),
        ),
        "Degraded",
        "MetricsNotFound: metrics not found in shop: pods-run-as-non-root",
    );
}

/// The argocd-cm snippet in docs/argocd-health.md carries exactly the shipped scripts.
#[test]
fn argocd_cm_snippet_in_the_docs_is_the_shipped_lua() {
    let doc = std::fs::read_to_string(root().join("docs/argocd-health.md")).unwrap();
    let start = doc.find("```yaml\napiVersion: v1\nkind: ConfigMap").expect("the argocd-cm block")
        + "```yaml\n".len();
    let end = start + doc[start..].find("```").unwrap();
    let cm: Value = serde_saphyr::from_str(&doc[start..end]).unwrap();
    assert_eq!(cm["metadata"]["name"], "argocd-cm");
    for (kind, file) in [("SecurityMetric", "securitymetric"), ("MetricPolicy", "metricpolicy")] {
        let key = format!("resource.customizations.health.secmetrics.io_{kind}");
        assert_eq!(cm["data"][&key].as_str(), Some(script(file).as_str()), "{key} in docs/argocd-health.md");
    }
}
