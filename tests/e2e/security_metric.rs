//! SecurityMetric end to end: the API server validates it, the operator (under the chart's
//! RBAC) keeps its status true, and the security invariants hold.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::runtime::watcher;
use secmetrics::api::SecurityMetric;
use secmetrics::api::security_metric::{MetricState, SecurityMetricStatus};
use serde_json::{Value, json};

use crate::fixtures::{self, owner_label_metric, pod};
use crate::harness::{self, TestEnv, WAIT, eventually};
use crate::operator;

async fn create(env: &TestEnv, v: &Value) {
    let api: Api<DynamicObject> = Api::namespaced_with(
        env.admin.clone(),
        v["metadata"]["namespace"].as_str().unwrap_or(&env.namespace),
        &kube::discovery::ApiResource::erase::<SecurityMetric>(&()),
    );
    let obj: DynamicObject = serde_json::from_value(v.clone()).unwrap();
    api.create(&PostParams::default(), &obj).await.expect("create SecurityMetric");
}

async fn create_pod(env: &TestEnv, ns: &str, v: Value) {
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), ns);
    pods.create(&PostParams::default(), &serde_json::from_value(v).unwrap()).await.expect("create pod");
}

/// Waits until the metric's status satisfies `pred`; returns it.
pub(crate) async fn status_where(
    env: &TestEnv,
    ns: &str,
    name: &str,
    what: &str,
    pred: impl Fn(&SecurityMetricStatus) -> bool,
) -> SecurityMetricStatus {
    let api: Api<SecurityMetric> = Api::namespaced(env.admin.clone(), ns);
    eventually(what, || async {
        let m = api.get(name).await.ok()?;
        m.status.filter(|s| pred(s))
    })
    .await
}

fn condition<'a>(
    s: &'a SecurityMetricStatus,
    t: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    s.conditions.iter().find(|c| c.type_ == t).unwrap_or_else(|| panic!("no {t} condition in {s:?}"))
}

async fn rejection(env: &TestEnv, mut v: Value, patch: Value) -> String {
    fixtures::merge(&mut v["spec"], patch);
    let api: Api<DynamicObject> = Api::namespaced_with(
        env.admin.clone(),
        &env.namespace,
        &kube::discovery::ApiResource::erase::<SecurityMetric>(&()),
    );
    match api.create(&PostParams::default(), &serde_json::from_value(v).unwrap()).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422, "{s:?}");
            s.message
        }
        other => panic!("the API server accepted an invalid SecurityMetric: {other:?}"),
    }
}

#[tokio::test]
async fn api_server_rejects_invalid_metrics_with_readable_messages() {
    let Some(env) = harness::setup("invalid_sm").await else { return };
    env.install_crds().await;
    let base = owner_label_metric(&env.namespace, "bad", json!({}));

    let two_sources = rejection(&env, base.clone(), json!({"source": {"prometheus": {"query": "up"}}})).await;
    assert!(
        two_sources
            .contains("exactly one of source.kubernetes, source.prometheus, source.history must be set"),
        "{two_sources}"
    );

    let wrong_side =
        rejection(&env, base.clone(), json!({"objective": {"operator": ">=", "target": 90, "warning": 95}}))
            .await;
    assert!(wrong_side.contains("objective.warning must be below target for >= and >"), "{wrong_side}");

    let eq_warning =
        rejection(&env, base.clone(), json!({"objective": {"operator": "==", "target": 0, "warning": 1}}))
            .await;
    assert!(eq_warning.contains("not allowed with =="), "{eq_warning}");

    let short = rejection(&env, base.clone(), json!({"interval": "5s"})).await;
    assert!(short.contains("interval must be at least 10s"), "{short}");

    let missing_value =
        rejection(&env, base.clone(), json!({"source": {"kubernetes": {"aggregate": "Sum"}}})).await;
    assert!(missing_value.contains("need source.kubernetes.value"), "{missing_value}");

    let bad_enum = rejection(&env, base.clone(), json!({"category": "Vibes"})).await;
    assert!(bad_enum.contains("spec.category") && bad_enum.contains("Unsupported value"), "{bad_enum}");

    // The valid one is accepted.
    create(&env, &base).await;
}

#[tokio::test]
async fn status_converges_and_follows_object_changes() {
    let Some((env, _op)) = operator::setup("converge", &[]).await else { return };
    let ns = env.namespace.clone();
    create_pod(&env, &ns, pod(&ns, "owned", json!({"owner": "team-a"}))).await;
    create_pod(&env, &ns, pod(&ns, "orphan", json!({"app": "x"}))).await;
    create(&env, &owner_label_metric(&ns, "owners", json!({}))).await;
    // A second metric of the same kind and check, due at the same time: evaluated in the same
    // pass over the pods, each against its own objective.
    create(&env, &owner_label_metric(&ns, "owners-strict", json!({"objective": {"warning": null}}))).await;

    let s = status_where(&env, &ns, "owners", "value 50", |s| s.value == Some(50.0)).await;
    let strict = status_where(&env, &ns, "owners-strict", "value 50", |s| s.value == Some(50.0)).await;
    assert_eq!(strict.state, MetricState::Breached);
    assert_eq!(s.state, MetricState::Warning);
    assert_eq!((s.population, s.passing, s.offenders_total), (Some(2), Some(1), Some(1)));
    assert_eq!(s.offenders[0].name, "orphan");
    assert_eq!(s.observed_generation, Some(1));
    assert_eq!(condition(&s, "Ready").status, "True");
    assert_eq!(condition(&s, "SourceAvailable").status, "True");
    assert_eq!(condition(&s, "ExpressionValid").status, "True");

    // Change one object: the value follows (well before the 10s interval would).
    let pods: Api<Pod> = env.api();
    pods.patch(
        "orphan",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"owner": "team-b"}}})),
    )
    .await
    .unwrap();
    let s = status_where(&env, &ns, "owners", "value 100", |s| s.value == Some(100.0)).await;
    assert_eq!(s.state, MetricState::Compliant);
    assert!(s.offenders.is_empty());

    // A state transition is visible as an Event on the metric.
    let events: Api<Event> = env.api();
    eventually("a Compliant event on the metric", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("owners")
                && e.reason.as_deref() == Some("Compliant")
        })
    })
    .await;

    // Delete and add objects.
    pods.delete("owned", &DeleteParams::default().grace_period(0)).await.unwrap();
    create_pod(&env, &ns, pod(&ns, "new-orphan", json!({}))).await;
    let s = status_where(&env, &ns, "owners", "value 50 again", |s| {
        s.value == Some(50.0) && s.population == Some(2)
    })
    .await;
    assert_eq!(s.offenders[0].name, "new-orphan");

    // A spec change is picked up (generation 2) with the new objective.
    let api: Api<SecurityMetric> = env.api();
    api.patch(
        "owners",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"objective": {"target": 40, "warning": 20}}})),
    )
    .await
    .unwrap();
    let s = status_where(&env, &ns, "owners", "generation 2", |s| s.observed_generation == Some(2)).await;
    assert_eq!(s.state, MetricState::Compliant);
    assert_eq!(s.objective.as_deref(), Some(">= 40"));
}

#[tokio::test]
async fn invalid_expression_reports_condition_without_crashing() {
    let Some((env, op)) = operator::setup("badcel", &[]).await else { return };
    let ns = env.namespace.clone();
    create(
        &env,
        &owner_label_metric(&ns, "typo", json!({"source": {"kubernetes": {"where": "objetc.spec != null"}}})),
    )
    .await;
    let s = status_where(&env, &ns, "typo", "ExpressionValid=False", |s| {
        s.conditions.iter().any(|c| c.type_ == "ExpressionValid" && c.status == "False")
    })
    .await;
    assert_eq!(s.state, MetricState::Unknown);
    let c = condition(&s, "ExpressionValid");
    assert_eq!(c.reason, "InvalidExpression");
    assert!(
        c.message.starts_with("where: undeclared reference to 'objetc'") && c.message.ends_with("at 1:1"),
        "{}",
        c.message
    );
    assert_eq!(condition(&s, "Ready").status, "False");
    // Still serving other metrics: a valid one next to it converges.
    create_pod(&env, &ns, pod(&ns, "p", json!({"owner": "x"}))).await;
    create(&env, &owner_label_metric(&ns, "good", json!({}))).await;
    status_where(&env, &ns, "good", "value 100", |s| s.value == Some(100.0)).await;
    drop(op);
}

#[tokio::test]
async fn unobservable_kinds_report_source_unavailable() {
    let Some((env, _op)) = operator::setup("forbidden", &[]).await else { return };
    let ns = env.namespace.clone();
    // Secrets are not in the chart's default RBAC: the operator may not list them.
    create(
        &env,
        &owner_label_metric(
            &ns,
            "secrets",
            json!({"source": {"kubernetes": {
        "resource": {"apiVersion": "v1", "kind": "Secret"}, "aggregate": "Count", "passes": null}}}),
        ),
    )
    .await;
    create(
        &env,
        &owner_label_metric(
            &ns,
            "widgets",
            json!({"source": {"kubernetes": {
        "resource": {"apiVersion": "example.com/v1", "kind": "Widget"}}}}),
        ),
    )
    .await;
    let unavailable = |s: &SecurityMetricStatus| {
        s.conditions.iter().any(|c| c.type_ == "SourceAvailable" && c.status == "False")
    };
    let s = status_where(&env, &ns, "secrets", "SourceAvailable=False", unavailable).await;
    let c = condition(&s, "SourceAvailable");
    assert_eq!(c.reason, "Forbidden", "{c:?}");
    assert!(c.message.contains("may not list secrets"), "{}", c.message);
    assert_eq!(s.state, MetricState::Unknown);
    let s = status_where(&env, &ns, "widgets", "SourceAvailable=False", unavailable).await;
    let c = condition(&s, "SourceAvailable");
    assert_eq!(c.reason, "KindNotFound", "{c:?}");
    assert!(c.message.contains("example.com/v1/Widget"), "{}", c.message);
}

#[tokio::test]
async fn tenant_metric_cannot_see_another_tenants_objects() {
    let Some(env) = harness::setup("confine").await else { return };
    env.install_crds().await;
    operator::install_chart_rbac(&env);
    let tenant_b = format!("{}-b", env.namespace);
    env.create_namespace(&tenant_b, &[]).await;
    let _cleanup = harness::NamespaceGuard::new(&env, &tenant_b);
    let _op = operator::start(&env, &["secmetrics-system"]);
    let ns = env.namespace.clone();
    create_pod(&env, &ns, pod(&ns, "mine", json!({"owner": "a"}))).await;
    for i in 0..3 {
        create_pod(&env, &tenant_b, pod(&tenant_b, &format!("theirs-{i}"), json!({}))).await;
    }
    // Asks for every namespace; being outside the platform namespaces, it gets its own only.
    create(
        &env,
        &owner_label_metric(
            &ns,
            "all-pods",
            json!({"source": {"kubernetes": {"namespaceSelector": {}}}, "tenancy": {}}),
        ),
    )
    .await;
    let s = status_where(&env, &ns, "all-pods", "evaluated", |s| s.value.is_some()).await;
    assert_eq!((s.population, s.value), (Some(1), Some(100.0)));
    let text = serde_json::to_string(&s).unwrap();
    assert!(!text.contains(&tenant_b) && !text.contains("theirs"), "status leaks another tenant: {text}");
    assert!(s.tenants.iter().all(|t| t.name == ns));
}

#[tokio::test]
async fn idle_cluster_gets_one_heartbeat_per_interval() {
    let Some((env, _op)) = operator::setup("heartbeat", &[]).await else { return };
    let ns = env.namespace.clone();
    create_pod(&env, &ns, pod(&ns, "p", json!({"owner": "a"}))).await;
    create(&env, &owner_label_metric(&ns, "idle", json!({"interval": "10s"}))).await;
    status_where(&env, &ns, "idle", "first status", |s| s.value.is_some()).await;

    // Count every write to the metric (each bumps resourceVersion and reaches the watch) over
    // three intervals of an idle cluster.
    let api: Api<SecurityMetric> = env.api();
    let window = Duration::from_secs(32);
    let stream = watcher(api, watcher::Config::default().fields("metadata.name=idle"))
        .try_filter_map(|e| async move {
            Ok(match e {
                watcher::Event::Apply(m) => Some(m),
                _ => None,
            })
        })
        .take_until(tokio::time::sleep(window));
    let writes: Vec<SecurityMetric> =
        tokio::time::timeout(WAIT, stream.try_collect()).await.unwrap().unwrap();
    let evaluated: Vec<_> = writes.iter().filter_map(|m| m.status.as_ref()?.last_evaluated.clone()).collect();
    assert!(
        (2..=4).contains(&writes.len()),
        "expected 3 heartbeats (±1) in 32s at a 10s interval, saw {}: {evaluated:?}",
        writes.len()
    );
    assert!(
        evaluated.windows(2).all(|w| w[0] < w[1]),
        "each heartbeat refreshes lastEvaluated: {evaluated:?}"
    );
    let states: std::collections::BTreeSet<_> =
        writes.iter().map(|m| m.status.as_ref().unwrap().state).collect();
    assert_eq!(states.len(), 1, "nothing but lastEvaluated changes on an idle cluster");
}

#[tokio::test]
async fn config_maps_are_observed_as_metadata_only() {
    let Some(env) = harness::setup("metaonly").await else { return };
    env.install_crds().await;
    operator::install_chart_rbac(&env);
    // Grant ConfigMaps as a platform team would with rbac.extraObserve (its own role, so the
    // chart's default stays as the other tests expect).
    let grant = format!("{}-configmaps", env.namespace);
    let roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(env.admin.clone());
    let bindings: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> = Api::all(env.admin.clone());
    roles
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": grant},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}]}))
            .unwrap(),
        )
        .await
        .unwrap();
    bindings
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": grant},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": grant},
            "subjects": [{"kind": "ServiceAccount", "name": "secmetrics", "namespace": "secmetrics-system"}]})).unwrap())
        .await
        .unwrap();
    let _op = operator::start(&env, &[]);
    let ns = env.namespace.clone();
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = env.api();
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
        "metadata": {"name": "settings", "labels": {"owner": "team-a"}}, "data": {"password": "hunter2"}}))
        .unwrap(),
    )
    .await
    .unwrap();
    create(
        &env,
        &owner_label_metric(
            &ns,
            "cm-data",
            json!({"source": {"kubernetes": {
        "resource": {"apiVersion": "v1", "kind": "ConfigMap"},
        "where": "object.metadata.name == 'settings'",
        "passes": "has(object.data)", "aggregate": "CountPassing"}}}),
        ),
    )
    .await;
    create(&env, &owner_label_metric(&ns, "cm-labels", json!({"source": {"kubernetes": {
        "resource": {"apiVersion": "v1", "kind": "ConfigMap"}, "where": "object.metadata.name == 'settings'"}}}))).await;
    let data = status_where(&env, &ns, "cm-data", "evaluated", |s| s.population == Some(1)).await;
    assert_eq!(data.value, Some(0.0), "the operator must never see ConfigMap data");
    let labels = status_where(&env, &ns, "cm-labels", "evaluated", |s| s.population == Some(1)).await;
    assert_eq!(labels.value, Some(100.0), "metadata (labels) is observed");
    bindings.delete(&grant, &DeleteParams::default()).await.unwrap();
    roles.delete(&grant, &DeleteParams::default()).await.unwrap();
}
