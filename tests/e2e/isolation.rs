//! Isolation end to end: a hostile tenant metric, as expensive as the static limits allow,
//! delays only itself. The platform metric beside it keeps its interval, a MetricPolicy over
//! it keeps acting, and the hostile metric reports its budget.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams, PostParams};
use secmetrics::api::metric_policy::PolicyState;
use secmetrics::api::security_metric::{MetricState, SecurityMetricStatus};
use secmetrics::api::{MetricPolicy, SecurityMetric};
use serde_json::{Value, json};

use crate::fixtures::{owner_label_metric, pod};
use crate::harness::{self, TestEnv};
use crate::metric_policy::{create, policy, policy_where};
use crate::operator;
use crate::security_metric::status_where;

/// Two nested comprehensions over every pair of `env` entries (all distinct, so `all` never
/// stops early): the most expensive shape the static limits allow.
const HOSTILE: &str = "object.spec.containers[0].env.all(a, object.spec.containers[0].env.all(b, a.name != b.name || a.value == b.value))";
/// Entries per hostile pod: 20 million pairs, several seconds per pod in a debug build.
const ENV: usize = 4500;
/// Hostile pods: with a budget checked before each object, only the first is evaluated.
const HOSTILE_PODS: usize = 3;
/// The platform metric's interval (the shortest the CRD allows) and the slack allowed on it.
const INTERVAL: Duration = Duration::from_secs(10);
const SLACK: Duration = Duration::from_secs(4);

fn hostile_pod(ns: &str, name: &str) -> Value {
    let mut p = pod(ns, name, json!({"owner": "tenant"}));
    let env: Vec<Value> = (0..ENV).map(|i| json!({"name": format!("E{i}"), "value": "v"})).collect();
    p["spec"]["containers"][0]["env"] = Value::Array(env);
    p
}

fn last_evaluated(s: &SecurityMetricStatus) -> Time {
    s.last_evaluated.clone().expect("lastEvaluated")
}

/// The hostile metric stopped by its time budget (or, once the engine limits the cost of one
/// evaluation, by that limit: then its objects report evaluation errors).
fn stopped_for_cost(s: &SecurityMetricStatus) -> bool {
    let budget = s
        .conditions
        .iter()
        .any(|c| c.type_ == "ExpressionValid" && c.status == "False" && c.reason == "CostLimitExceeded");
    budget || s.evaluation_errors.is_some_and(|n| n > 0)
}

async fn create_pod(env: &TestEnv, v: Value) {
    let ns = v["metadata"]["namespace"].as_str().unwrap().to_string();
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), &ns);
    pods.create(&PostParams::default(), &serde_json::from_value(v).unwrap()).await.expect("create pod");
}

#[tokio::test]
async fn hostile_tenant_metric_delays_only_itself() {
    let Some(env) = harness::setup("isolation").await else { return };
    env.install_crds().await;
    operator::install_chart_rbac(&env);
    let platform = env.namespace.clone();
    let tenant = format!("{platform}-t");
    env.create_namespace(&tenant, &[]).await;
    let _cleanup = harness::NamespaceGuard::new(&env, &tenant);
    for i in 0..HOSTILE_PODS {
        create_pod(&env, hostile_pod(&tenant, &format!("hostile-{i}"))).await;
    }
    create_pod(&env, pod(&platform, "p", json!({"owner": "platform"}))).await;
    let op = operator::start_with(
        &env,
        &[&platform],
        "operator",
        &["--evaluation-budget=1s", "--evaluation-workers=2"],
    );

    // The tenant's metric (managed by this test's operator: labelled with its selector).
    let mut hostile =
        owner_label_metric(&tenant, "hostile", json!({"source": {"kubernetes": {"passes": HOSTILE}}}));
    hostile["metadata"]["labels"]["e2e"] = json!(platform);
    create::<SecurityMetric>(&env, &hostile).await;
    // The platform's metric: every pod of the platform namespace has an owner (Breached below
    // 100). Only its own namespace: pods of tests running alongside would change its value,
    // and a write for a change shifts the heartbeat's phase.
    let interval = format!("{}s", INTERVAL.as_secs());
    let own_namespace = json!({"matchLabels": {"kubernetes.io/metadata.name": platform}});
    create::<SecurityMetric>(
        &env,
        &owner_label_metric(
            &platform,
            "platform",
            json!({"objective": {"warning": null}, "interval": interval,
                   "source": {"kubernetes": {"namespaceSelector": own_namespace}}}),
        ),
    )
    .await;
    create::<MetricPolicy>(&env, &policy(&platform, "owners", json!({"metrics": ["platform"]}))).await;
    status_where(&env, &platform, "platform", "first status", |s| s.value == Some(100.0)).await;
    policy_where(&env, &platform, "owners", "Compliant", |s| s.state == PolicyState::Compliant).await;

    // While the hostile metric is evaluated over and over, the platform metric's heartbeat
    // keeps its interval: each lastEvaluated follows the previous by at most interval + slack.
    let mut previous = last_evaluated(
        &status_where(&env, &platform, "platform", "a status", |s| s.last_evaluated.is_some()).await,
    );
    for round in 0..3 {
        let next = tokio::time::timeout(
            2 * INTERVAL,
            status_where(&env, &platform, "platform", "lastEvaluated advances", |s| {
                s.last_evaluated.as_ref().is_some_and(|t| t.0 > previous.0)
            }),
        )
        .await
        .unwrap_or_else(|_| {
            panic!("round {round}: no evaluation of the platform metric for {:?}", 2 * INTERVAL)
        });
        let next = last_evaluated(&next);
        let gap = Duration::try_from(next.0.duration_since(previous.0)).unwrap();
        assert!(
            gap <= INTERVAL + SLACK,
            "round {round}: the platform metric was evaluated {gap:?} after the previous time ({:?} {:?})",
            previous.0,
            next.0
        );
        previous = next;
    }

    // Meanwhile the hostile metric reports its cost, and never a measurement of all its pods.
    let s = status_where(&env, &tenant, "hostile", "stopped for its cost", stopped_for_cost).await;
    assert_ne!(s.value, Some(100.0), "{s:?}");

    // The policy keeps acting: an object change reaches the metric and the policy promptly
    // (well within one hostile evaluation).
    let pods: Api<Pod> = env.api();
    pods.patch("p", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"owner": null}}})))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(8), async {
        status_where(&env, &platform, "platform", "Breached", |s| s.state == MetricState::Breached).await;
        policy_where(&env, &platform, "owners", "NonCompliant", |s| s.state == PolicyState::NonCompliant)
            .await;
    })
    .await
    .expect("the platform metric and its policy follow the change within 8s");

    // The pool's series are exported.
    let (_, metrics) = op.get("/metrics").expect("the operator serves /metrics");
    for series in ["secmetrics_evaluation_workers 2", "secmetrics_evaluation_job_duration_seconds_count"] {
        assert!(metrics.contains(series), "{series} in /metrics:\n{metrics}");
    }
}
