//! MetricPolicy end to end: roll-up, DryRun, Enforce with revert, refusals, restart safety,
//! flapping, webhooks and tenancy, with the operator running under the chart's RBAC.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::discovery::ApiResource;
use secmetrics::api::metric_policy::{ActionRecord, MetricPolicyStatus, Outcome, PolicyState};
use secmetrics::api::{MetricPolicy, SecurityMetric};
use secmetrics::remediation::webhook;
use serde_json::{Value, json};

use crate::fixtures::{merge, owner_label_metric, pod};
use crate::harness::{TestEnv, eventually};
use crate::operator;
use crate::receiver::Receiver;

/// A metric over Deployments in `ns`: percent with an `owner` label (Breached below 50).
fn deployment_metric(ns: &str, name: &str) -> Value {
    owner_label_metric(
        ns,
        name,
        json!({"source": {"kubernetes": {"resource": {"apiVersion": "apps/v1", "kind": "Deployment"}}}}),
    )
}

pub(crate) fn policy(ns: &str, name: &str, spec: Value) -> Value {
    let mut p = json!({
        "apiVersion": "secmetrics.io/v1alpha1",
        "kind": "MetricPolicy",
        "metadata": {"name": name, "namespace": ns, "labels": {"e2e": ns}},
        "spec": {
            "description": "Workloads must name their owner.",
            "compliance": [{"framework": "CSA-AICM", "control": "AIS-03"}],
        }
    });
    merge(&mut p["spec"], spec);
    p
}

pub(crate) async fn create<K: kube::Resource<DynamicType = ()>>(env: &TestEnv, v: &Value) {
    let ns = v["metadata"]["namespace"].as_str().unwrap_or(&env.namespace);
    let api: Api<DynamicObject> = Api::namespaced_with(env.admin.clone(), ns, &ApiResource::erase::<K>(&()));
    let obj: DynamicObject = serde_json::from_value(v.clone()).unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap_or_else(|e| panic!("create {}: {e}", v["kind"]));
}

async fn create_deployment(env: &TestEnv, ns: &str, name: &str, replicas: i32, labels: Value) {
    let d = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "registry.example.com/app:1.0"}]}
            }
        }
    });
    let api: Api<Deployment> = Api::namespaced(env.admin.clone(), ns);
    api.create(&PostParams::default(), &serde_json::from_value(d).unwrap()).await.expect("create deployment");
}

async fn label_owner(env: &TestEnv, ns: &str, name: &str) {
    let api: Api<Deployment> = Api::namespaced(env.admin.clone(), ns);
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"owner": "team-a"}}})),
    )
    .await
    .unwrap();
}

/// Waits until the policy's status satisfies `pred`; returns it.
pub(crate) async fn policy_where(
    env: &TestEnv,
    ns: &str,
    name: &str,
    what: &str,
    pred: impl Fn(&MetricPolicyStatus) -> bool,
) -> MetricPolicyStatus {
    let api: Api<MetricPolicy> = Api::namespaced(env.admin.clone(), ns);
    let deadline = tokio::time::Instant::now() + crate::harness::WAIT;
    loop {
        let status = api.get(name).await.ok().and_then(|p| p.status);
        if let Some(s) = status.as_ref().filter(|s| pred(s)) {
            return s.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}; last status: {status:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn records(s: &MetricPolicyStatus, outcome: Outcome) -> Vec<&ActionRecord> {
    s.recent_actions.iter().filter(|r| r.outcome == outcome).collect()
}

fn has(s: &MetricPolicyStatus, outcome: Outcome, action: &str) -> bool {
    s.recent_actions.iter().any(|r| r.outcome == outcome && r.action.as_str() == action)
}

pub(crate) async fn events_with_reason(env: &TestEnv, ns: &str, reason: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(env.admin.clone(), ns);
    let list = api.list(&ListParams::default()).await.unwrap();
    list.items.into_iter().filter(|e| e.reason.as_deref() == Some(reason)).collect()
}

/// What a remediation could change on a Deployment: its generation (any spec change, e.g.
/// replicas), labels and annotations. (Its resourceVersion also moves with the deployment
/// controller's status updates, which are not ours.)
async fn rv(env: &TestEnv, ns: &str, name: &str) -> String {
    let api: Api<Deployment> = Api::namespaced(env.admin.clone(), ns);
    let m = api.get(name).await.unwrap().metadata;
    format!("generation {:?} labels {:?} annotations {:?}", m.generation, m.labels, m.annotations)
}

async fn namespace_rv(env: &TestEnv, ns: &str) -> String {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(env.admin.clone());
    api.get(ns).await.unwrap().metadata.resource_version.unwrap()
}

#[tokio::test]
async fn dry_run_plans_records_and_changes_nothing() {
    let Some((env, _op)) = operator::setup("mp_dryrun", &[]).await else { return };
    let ns = env.namespace.clone();
    create_deployment(&env, &ns, "web", 2, json!({"tier": "front"})).await;
    create::<SecurityMetric>(&env, &deployment_metric(&ns, "owners")).await;
    create::<MetricPolicy>(
        &env,
        &policy(
            &ns,
            "baseline",
            json!({
                "metrics": ["owners"],
                "rules": [{
                    "name": "contain",
                    "when": {"state": "Breached"},
                    "scope": "Offenders",
                    "cooldown": "1s",
                    "actions": [{"type": "NetworkIsolation"}, {"type": "ScaleToZero"}, {"type": "Label", "key": "quarantine"}, {"type": "Event"}]
                }]
            }),
        ),
    )
    .await;
    let before = rv(&env, &ns, "web").await;
    let ns_before = namespace_rv(&env, &ns).await;

    let s = policy_where(&env, &ns, "baseline", "four Planned actions", |s| {
        records(s, Outcome::Planned).len() == 4
    })
    .await;
    assert_eq!(s.state, PolicyState::NonCompliant);
    assert_eq!((s.score, s.coverage), (Some(0.0), Some(100.0)));
    assert_eq!(s.frameworks[0].control, "AIS-03");
    assert_eq!(s.active_count, 4);
    assert!(s.active_remediations.iter().all(|a| a.dry_run));
    let targets: Vec<&str> = s.recent_actions.iter().map(|r| r.target.as_str()).collect();
    assert!(targets.contains(&format!("Deployment {ns}/web").as_str()), "{targets:?}");
    assert!(
        targets.iter().any(|t| t.starts_with(&format!("NetworkPolicy {ns}/secmetrics-contain-"))),
        "{targets:?}"
    );
    assert!(s.recent_actions.iter().all(|r| r.dry_run));

    // Events on the policy (and targets); nothing changed in the cluster.
    let planned = eventually("RemediationPlanned events", || async {
        let e = events_with_reason(&env, &ns, "RemediationPlanned").await;
        (e.len() >= 8).then_some(e)
    })
    .await;
    assert!(
        planned.iter().any(|e| e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("MetricPolicy"))
    );
    assert_eq!(rv(&env, &ns, "web").await, before, "DryRun must not touch the Deployment");
    assert_eq!(namespace_rv(&env, &ns).await, ns_before, "nor the namespace");
    let nps: Api<NetworkPolicy> = env.api();
    assert!(nps.list(&ListParams::default()).await.unwrap().items.is_empty());

    // kubectl get mp shows Mode, State, Score, Active, Last Action.
    let out = std::process::Command::new(crate::harness::kubectl())
        .arg("--kubeconfig")
        .arg(&env.admin_kubeconfig)
        .args(["get", "mp", "-n", &ns])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAME", "MODE", "STATE", "SCORE", "ACTIVE", "LAST", "ACTION", "AGE"], "{table}");
    let row: Vec<&str> = table.lines().nth(1).unwrap_or_default().split_whitespace().collect();
    assert_eq!(&row[..6], ["baseline", "DryRun", "NonCompliant", "0", "4", "Planned"], "{table}");

    // Recovery: planned remediations end as (planned) reverts.
    label_owner(&env, &ns, "web").await;
    let s = policy_where(&env, &ns, "baseline", "Compliant and reverted", |s| {
        s.state == PolicyState::Compliant && s.active_count == 0
    })
    .await;
    assert_eq!(records(&s, Outcome::Reverted).len(), 4);
    assert_eq!(s.recent_actions[0].outcome, Outcome::Reverted, "newest first");
}

#[tokio::test]
async fn enforce_without_rbac_fails_cleanly_then_applies_reverts_and_survives_restart() {
    let _rbac = operator::ENFORCE_RBAC.lock().await;
    let Some(env) = crate::harness::setup("mp_enforce").await else { return };
    env.install_crds().await;
    // No enforcement RBAC to begin with (only this test grants it).
    let bindings: Api<ClusterRoleBinding> = Api::all(env.admin.clone());
    let _ = bindings.delete("secmetrics-enforce", &DeleteParams::default()).await;
    operator::install_chart_rbac(&env);
    let mut op = operator::start(&env, &[]);
    let ns = env.namespace.clone();
    create_deployment(&env, &ns, "web", 2, json!({})).await;
    create::<SecurityMetric>(&env, &deployment_metric(&ns, "owners")).await;
    create::<MetricPolicy>(
        &env,
        &policy(
            &ns,
            "contain",
            json!({
                "metrics": ["owners"],
                "mode": "Enforce",
                "rules": [{
                    "name": "isolate",
                    "when": {"state": "Breached"},
                    "scope": "Offenders",
                    "cooldown": "2s",
                    "actions": [{"type": "NetworkIsolation"}, {"type": "ScaleToZero"},
                                {"type": "ResourceQuota", "quota": {"requests.cpu": "100m", "pods": "1"}}]
                }]
            }),
        ),
    )
    .await;
    let before = rv(&env, &ns, "web").await;
    let s = policy_where(&env, &ns, "contain", "Failed records", |s| {
        has(s, Outcome::Failed, "NetworkIsolation")
            && has(s, Outcome::Failed, "ScaleToZero")
            && has(s, Outcome::Failed, "ResourceQuota")
    })
    .await;
    let np_failure = s.recent_actions.iter().find(|r| r.action.as_str() == "NetworkIsolation").unwrap();
    assert_eq!(
        np_failure.message.as_deref(),
        Some(
            format!(
                "forbidden: the operator may not create networkpolicies.networking.k8s.io in namespace {ns} (enable remediation.enforce in the chart to grant it)"
            )
            .as_str()
        )
    );
    assert_eq!(s.active_count, 0);
    assert_eq!(rv(&env, &ns, "web").await, before, "nothing half-applied");

    // With the chart's enforcement RBAC the next attempt (after the cooldown) applies.
    operator::install_chart_rbac_with(&env, &["--set", "remediation.enforce=true"]);
    let nps: Api<NetworkPolicy> = env.api();
    let np = eventually("the isolating NetworkPolicy", || async {
        nps.list(&ListParams::default()).await.ok()?.items.into_iter().next()
    })
    .await;
    // Kill the operator the moment the change is visible: before or after it was recorded.
    drop(op);
    let labels = np.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("secmetrics.io/policy").map(String::as_str),
        Some(format!("{ns}.contain").as_str())
    );
    assert_eq!(labels.get("secmetrics.io/rule").map(String::as_str), Some("isolate"));
    let spec = np.spec.unwrap();
    assert_eq!(spec.policy_types.unwrap(), ["Ingress", "Egress"]);
    assert!(spec.ingress.is_none() && spec.egress.is_none(), "default deny");

    op = operator::start(&env, &[]);
    let s = policy_where(&env, &ns, "contain", "all three applied", |s| s.active_count == 3).await;
    let quotas: Api<k8s_openapi::api::core::v1::ResourceQuota> = env.api();
    let rq = quotas.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(rq.len(), 1);
    let hard = rq[0].spec.clone().unwrap().hard.unwrap();
    assert_eq!((hard["requests.cpu"].0.as_str(), hard["pods"].0.as_str()), ("100m", "1"));
    let deployments: Api<Deployment> = env.api();
    let d = deployments.get("web").await.unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(0));
    let scaled = s.active_remediations.iter().find(|a| a.action.as_str() == "ScaleToZero").unwrap();
    assert_eq!((scaled.previous_replicas, scaled.pending), (Some(2), false), "recorded in status");
    assert_eq!(records(&s, Outcome::Applied).len(), 3, "{:?}", s.recent_actions);

    // Recovery reverts both: NetworkPolicy deleted, replicas restored.
    label_owner(&env, &ns, "web").await;
    let s = policy_where(&env, &ns, "contain", "all reverted", |s| records(s, Outcome::Reverted).len() == 3)
        .await;
    assert_eq!(s.active_count, 0);
    let d = deployments.get("web").await.unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(2));
    assert!(!d.metadata.annotations.unwrap_or_default().contains_key("secmetrics.io/previous-replicas"));
    assert!(nps.list(&ListParams::default()).await.unwrap().items.is_empty());
    // Exactly one Applied record and one Applied Event per target, across the restart.
    assert_eq!(records(&s, Outcome::Applied).len(), 3, "{:?}", s.recent_actions);
    let applied = events_with_reason(&env, &ns, "RemediationApplied").await;
    let on_policy = applied
        .iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("MetricPolicy"))
        .count();
    assert_eq!(on_policy, 3, "one policy Event per applied action");

    // Two metrics holding the same changes: the first to recover keeps them for the other.
    let mut tiers = deployment_metric(&ns, "tiers");
    tiers["spec"]["source"]["kubernetes"]["passes"] =
        json!("has(object.metadata.labels) && 'tier' in object.metadata.labels");
    create::<SecurityMetric>(&env, &tiers).await;
    let policies: Api<MetricPolicy> = env.api();
    policies
        .patch(
            "contain",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"metrics": ["owners", "tiers"]}})),
        )
        .await
        .unwrap();
    let deployments_api: Api<Deployment> = env.api();
    deployments_api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"owner": null}}})),
        )
        .await
        .unwrap();
    policy_where(&env, &ns, "contain", "both metrics remediated", |s| s.active_count == 6).await;
    assert_eq!(deployments.get("web").await.unwrap().spec.unwrap().replicas, Some(0));
    label_owner(&env, &ns, "web").await;
    let s =
        policy_where(&env, &ns, "contain", "owners recovered, changes kept", |s| s.active_count == 3).await;
    let kept: Vec<&ActionRecord> = s
        .recent_actions
        .iter()
        .filter(|r| r.metric == "owners" && r.outcome == Outcome::Reverted)
        .take(3)
        .collect();
    assert!(
        kept.iter().all(|r| r.message.as_deref() == Some("kept: still needed for metric tiers")),
        "{kept:?}"
    );
    assert_eq!(nps.list(&ListParams::default()).await.unwrap().items.len(), 1, "still isolated");
    assert_eq!(deployments.get("web").await.unwrap().spec.unwrap().replicas, Some(0), "still scaled down");
    deployments_api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tier": "front"}}})),
        )
        .await
        .unwrap();
    policy_where(&env, &ns, "contain", "everything reverted", |s| s.active_count == 0).await;
    assert!(nps.list(&ListParams::default()).await.unwrap().items.is_empty());
    assert_eq!(deployments.get("web").await.unwrap().spec.unwrap().replicas, Some(2), "restored once, to 2");
    drop(op);
}

#[tokio::test]
async fn max_targets_refuses_and_excluded_namespaces_are_never_touched() {
    let Some((env, _op)) = operator::setup("mp_refuse", &[]).await else { return };
    let ns = env.namespace.clone();
    for name in ["a", "b", "c"] {
        create_deployment(&env, &ns, name, 1, json!({})).await;
    }
    create::<SecurityMetric>(&env, &deployment_metric(&ns, "owners")).await;
    create::<MetricPolicy>(
        &env,
        &policy(
            &ns,
            "capped",
            json!({
                "metrics": ["owners"],
                "rules": [
                    {"name": "scale", "when": {"state": "Breached"}, "scope": "Offenders", "maxTargets": 2,
                     "actions": [{"type": "ScaleToZero"}]},
                    {"name": "label", "when": {"state": "Breached"}, "scope": "Offenders",
                     "excludedNamespaces": [ns], "actions": [{"type": "Label", "key": "quarantine"}]},
                    {"name": "event", "when": {"state": "Breached"}, "actions": [{"type": "Event"}]}
                ]
            }),
        ),
    )
    .await;
    let s = policy_where(&env, &ns, "capped", "a refusal and the event", |s| {
        has(s, Outcome::Refused, "ScaleToZero") && has(s, Outcome::Planned, "Event")
    })
    .await;
    let refused = records(&s, Outcome::Refused);
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].message.as_deref(), Some("3 targets exceed maxTargets 2: nothing was touched"));
    assert!(
        !s.recent_actions.iter().any(|r| r.rule == "label"),
        "excluded namespace touched: {:?}",
        s.recent_actions
    );
    assert!(!s.active_remediations.iter().any(|a| a.rule != "event"));
    // Recorded once per episode, not at every reconcile.
    let api: Api<MetricPolicy> = env.api();
    api.patch(
        "capped",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"poke": "1"}}})),
    )
    .await
    .unwrap();
    let again = policy_where(&env, &ns, "capped", "still one refusal", |s| {
        s.rule_states.iter().any(|r| r.settled_episode.is_some())
    })
    .await;
    assert_eq!(records(&again, Outcome::Refused).len(), 1);
}

#[tokio::test]
async fn flapping_metric_acts_at_most_as_often_as_the_cooldown_allows() {
    let Some((env, _op)) = operator::setup("mp_flap", &[]).await else { return };
    let ns = env.namespace.clone();
    let pods: Api<Pod> = env.api();
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(pod(&ns, "p", json!({"owner": "a"}))).unwrap(),
    )
    .await
    .unwrap();
    create::<SecurityMetric>(
        &env,
        &owner_label_metric(&ns, "owners", json!({"objective": {"warning": null}})),
    )
    .await;
    create::<MetricPolicy>(
        &env,
        &policy(
            &ns,
            "flappy",
            json!({"metrics": ["owners"], "rules": [{"name": "mark", "when": {"state": "Breached"}, "cooldown": "6s",
                   "actions": [{"type": "Label", "key": "breached"}]}]}),
        ),
    )
    .await;
    policy_where(&env, &ns, "flappy", "Compliant", |s| s.state == PolicyState::Compliant).await;
    // The metric alternates every 1.5s for 18s.
    let metrics: Api<SecurityMetric> = env.api();
    let started = tokio::time::Instant::now();
    let mut flips = 0;
    let mut states_seen = BTreeMap::new();
    while started.elapsed() < Duration::from_secs(18) {
        let labels = if flips % 2 == 0 { json!({"owner": null}) } else { json!({"owner": "a"}) };
        pods.patch("p", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": labels}})))
            .await
            .unwrap();
        flips += 1;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let state = metrics.get("owners").await.unwrap().status.map(|s| s.state.as_str());
        *states_seen.entry(state).or_insert(0) += 1;
    }
    assert!(states_seen.len() >= 2, "the metric did flap: {states_seen:?}");
    let s =
        Api::<MetricPolicy>::namespaced(env.admin.clone(), &ns).get("flappy").await.unwrap().status.unwrap();
    let actions = s.recent_actions.len();
    // 18s with a 6s cooldown: at most one action per 6s window, plus the first.
    assert!((1..=4).contains(&actions), "{actions} actions: {:?}", s.recent_actions);
}

#[tokio::test]
async fn webhook_is_signed_sent_once_per_transition_and_failures_are_bounded() {
    let Some(env) = crate::harness::setup("mp_webhook").await else { return };
    env.install_crds().await;
    let ns = env.namespace.clone();
    let platform = format!("platformNamespaces={{{ns}}}");
    operator::install_chart_rbac_with(
        &env,
        &["--set", &platform, "--set", "remediation.webhookSecrets={hook-key}"],
    );
    let _op = operator::start(&env, &[&ns]);
    let key = b"s3cret-hmac-key";
    let secrets: Api<Secret> = env.api();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "hook-key"},
        "stringData": {"key": String::from_utf8_lossy(key)}
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    let ok = Receiver::start(200).await;
    let broken = Receiver::start(500).await;

    create_deployment(&env, &ns, "web", 1, json!({})).await;
    // The namespace is a platform namespace here: keep the metric to its own Deployments, or
    // other tests' Deployments would move it.
    let mut metric = deployment_metric(&ns, "owners");
    metric["spec"]["source"]["kubernetes"]["where"] = json!(format!("object.metadata.namespace == '{ns}'"));
    create::<SecurityMetric>(&env, &metric).await;
    create::<MetricPolicy>(
        &env,
        &policy(
            &ns,
            "notify",
            json!({
                "metrics": ["owners"],
                "mode": "Enforce",
                "rules": [
                    {"name": "page", "when": {"state": "Breached"}, "cooldown": "2s", "actions": [{"type": "Webhook",
                        "webhook": {"url": ok.url, "secretRef": {"name": "hook-key", "key": "key"}, "format": "Alertmanager"}}]},
                    {"name": "broken", "when": {"state": "Breached"}, "cooldown": "1h", "actions": [{"type": "Webhook",
                        "webhook": {"url": broken.url, "maxRetries": 2, "timeout": "2s"}}]},
                    {"name": "note", "when": {"state": "Breached"}, "actions": [{"type": "Event"}]}
                ]
            }),
        ),
    )
    .await;
    let s = policy_where(&env, &ns, "notify", "webhook outcomes", |s| {
        has(s, Outcome::Applied, "Webhook")
            && has(s, Outcome::Failed, "Webhook")
            && has(s, Outcome::Applied, "Event")
    })
    .await;
    let failed = records(&s, Outcome::Failed);
    assert_eq!(failed[0].rule, "broken");
    assert!(
        failed[0].message.as_deref().unwrap().ends_with("receiver answered HTTP 500 after 3 attempts"),
        "{failed:?}"
    );
    assert_eq!(broken.requests().len(), 3, "one attempt and two retries");

    let got = ok.requests();
    assert_eq!(got.len(), 1, "exactly one POST for the transition");
    let sig = got[0].headers.get(webhook::SIGNATURE_HEADER).expect("signed");
    assert!(webhook::verify(key, &got[0].body, sig), "HMAC verifies");
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!((body["version"].as_str(), body["status"].as_str()), (Some("4"), Some("firing")));
    assert_eq!(body["alerts"][0]["labels"]["metric"], "owners");

    // Recovery: exactly one more (resolved) POST.
    label_owner(&env, &ns, "web").await;
    policy_where(&env, &ns, "notify", "page reverted", |s| {
        s.recent_actions.iter().any(|r| r.rule == "page" && r.outcome == Outcome::Reverted)
    })
    .await;
    let got = ok.requests();
    assert_eq!(got.len(), 2, "one POST per transition");
    let body: Value = serde_json::from_slice(&got[1].body).unwrap();
    assert_eq!(body["status"], "resolved");
    assert_ne!(got[0].headers[webhook::DELIVERY_HEADER], got[1].headers[webhook::DELIVERY_HEADER]);
}

#[tokio::test]
async fn tenant_policy_is_confined_and_cannot_define_webhooks() {
    let Some((env, _op)) = operator::setup("mp_tenant", &[]).await else { return };
    let ns = env.namespace.clone();
    let other = format!("{ns}-other");
    env.create_namespace(&other, &[]).await;
    let _guard = crate::harness::NamespaceGuard::new(&env, &other);
    create_deployment(&env, &ns, "web", 1, json!({})).await;
    create::<SecurityMetric>(&env, &deployment_metric(&ns, "owners")).await;
    // A metric in another namespace carrying the labels the policy selects.
    let mut foreign = deployment_metric(&other, "foreign");
    foreign["metadata"]["labels"] = json!({"e2e": ns, "set": "baseline"});
    create::<SecurityMetric>(&env, &foreign).await;
    let api: Api<SecurityMetric> = env.api();
    api.patch(
        "owners",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"set": "baseline"}}})),
    )
    .await
    .unwrap();
    create::<MetricPolicy>(
        &env,
        &policy(
            &ns,
            "tenant",
            json!({
                "metricSelector": {"matchLabels": {"set": "baseline"}},
                "mode": "Enforce",
                "rules": [
                    {"name": "exfil", "when": {"state": "Breached"}, "actions": [{"type": "Webhook", "webhook": {"url": "http://169.254.169.254/latest"}}]},
                    {"name": "isolate", "when": {"state": "Breached"}, "actions": [{"type": "NetworkIsolation"}]}
                ]
            }),
        ),
    )
    .await;
    let s = policy_where(&env, &ns, "tenant", "WebhookNotAllowed", |s| {
        s.conditions.iter().any(|c| c.type_ == "Ready" && c.reason == "WebhookNotAllowed")
    })
    .await;
    let ready = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.status, "False");
    assert!(
        ready.message.contains("Webhook receivers may only be defined by policies in platform namespaces"),
        "{}",
        ready.message
    );
    let names: Vec<&str> = s.metrics.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["owners"], "only its own namespace's metrics");
    // It acts (here: tries to; no enforce RBAC is needed for the check) only in its namespace.
    let s = policy_where(&env, &ns, "tenant", "isolate recorded", |s| {
        s.recent_actions.iter().any(|r| r.rule == "isolate")
    })
    .await;
    assert!(s.recent_actions.iter().all(|r| r.rule != "exfil"), "{:?}", s.recent_actions);
    assert!(
        s.recent_actions
            .iter()
            .filter(|r| r.rule == "isolate")
            .all(|r| r.target.contains(&format!(" {ns}/"))),
        "{:?}",
        s.recent_actions
    );
}

async fn rejection(env: &TestEnv, spec: Value) -> String {
    let v = policy(&env.namespace, "bad", spec);
    let api: Api<DynamicObject> =
        Api::namespaced_with(env.admin.clone(), &env.namespace, &ApiResource::erase::<MetricPolicy>(&()));
    match api.create(&PostParams::default(), &serde_json::from_value(v).unwrap()).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422, "{s:?}");
            s.message
        }
        other => panic!("the API server accepted an invalid MetricPolicy: {other:?}"),
    }
}

#[tokio::test]
async fn api_server_rejects_invalid_policies_with_readable_messages() {
    let Some(env) = crate::harness::setup("invalid_mp").await else { return };
    env.install_crds().await;
    let rule = |actions: Value| json!({"name": "r", "when": {"state": "Breached"}, "actions": actions});
    let none = rejection(&env, json!({})).await;
    assert!(none.contains("select metrics with metricSelector and/or metrics"), "{none}");
    let no_key =
        rejection(&env, json!({"metrics": ["m"], "rules": [rule(json!([{"type": "Label"}]))]})).await;
    assert!(no_key.contains("Label and Annotate actions need key"), "{no_key}");
    let no_quota =
        rejection(&env, json!({"metrics": ["m"], "rules": [rule(json!([{"type": "ResourceQuota"}]))]})).await;
    assert!(no_quota.contains("ResourceQuota actions need quota"), "{no_quota}");
    let twice = rejection(
        &env,
        json!({"metrics": ["m"], "rules": [rule(json!([{"type": "Event"}, {"type": "Event"}]))]}),
    )
    .await;
    assert!(twice.contains("at most one action of each type per rule"), "{twice}");
    let dup = rejection(
        &env,
        json!({"metrics": ["m"], "rules": [rule(json!([{"type": "Event"}])), rule(json!([{"type": "Event"}]))]}),
    )
    .await;
    assert!(dup.contains("rule names must be unique"), "{dup}");
    let url = rejection(
        &env,
        json!({"metrics": ["m"], "rules": [rule(json!([{"type": "Webhook", "webhook": {"url": "file:///etc/passwd"}}]))]}),
    )
    .await;
    assert!(url.contains("webhook.url"), "{url}");
    let mode = rejection(&env, json!({"metrics": ["m"], "mode": "Sometimes"})).await;
    assert!(mode.contains("spec.mode") && mode.contains("Unsupported value"), "{mode}");
    // The example policy is accepted.
    let example: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/policies.yaml")).unwrap(),
    )
    .unwrap();
    let mut example = example;
    example["metadata"]["namespace"] = json!(env.namespace);
    create::<MetricPolicy>(&env, &example).await;
}

#[tokio::test]
async fn tenant_scope_targets_every_namespace_of_the_breached_tenant_only() {
    let Some((env, _op)) = operator::setup_platform("mp_tenants").await else { return };
    let ns = env.namespace.clone();
    let label = format!("e2e-tenant-{ns}");
    let mut guards = Vec::new();
    for (suffix, tenant) in [("a1", "bad"), ("a2", "bad"), ("b1", "good")] {
        let name = format!("{ns}-{suffix}");
        env.create_namespace(&name, &[(label.as_str(), tenant)]).await;
        guards.push(crate::harness::NamespaceGuard::new(&env, &name));
        let owner = if tenant == "good" { json!({"owner": "x"}) } else { json!({}) };
        let pods: Api<Pod> = Api::namespaced(env.admin.clone(), &name);
        pods.create(&PostParams::default(), &serde_json::from_value(pod(&name, "p", owner)).unwrap())
            .await
            .unwrap();
    }
    // A platform metric over the three namespaces, broken down by the tenant label.
    let metric = owner_label_metric(
        &ns,
        "owners",
        json!({
            "source": {"kubernetes": {"namespaceSelector": {"matchExpressions": [{"key": label, "operator": "Exists"}]}}},
            "tenancy": {"tenantLabel": label},
            "objective": {"warning": null}
        }),
    );
    create::<SecurityMetric>(&env, &metric).await;
    create::<MetricPolicy>(
        &env,
        &policy(
            &ns,
            "tenants",
            json!({"metrics": ["owners"], "rules": [{"name": "fence", "when": {"state": "Breached"}, "scope": "Tenant",
                   "actions": [{"type": "NetworkIsolation"}, {"type": "ResourceQuota", "quota": {"pods": "0"}}]}]}),
        ),
    )
    .await;
    let s = policy_where(&env, &ns, "tenants", "planned fences", |s| records(s, Outcome::Planned).len() == 4)
        .await;
    let mut targets: Vec<String> = records(&s, Outcome::Planned)
        .iter()
        .map(|r| r.target.split(['/', ' ']).nth(1).unwrap().to_string())
        .collect();
    targets.sort();
    targets.dedup();
    assert_eq!(targets, [format!("{ns}-a1"), format!("{ns}-a2")], "only the breached tenant's namespaces");
}

/// A test namespace and an operator under the chart's RBAC with `remediation.enforce=true`,
/// holding [`operator::ENFORCE_RBAC`] for the test's duration.
async fn enforcing_operator(
    test: &str,
) -> Option<(TestEnv, operator::Operator, tokio::sync::MutexGuard<'static, ()>)> {
    let rbac = operator::ENFORCE_RBAC.lock().await;
    let env = crate::harness::setup(test).await?;
    env.install_crds().await;
    operator::install_chart_rbac_with(&env, &["--set", "remediation.enforce=true"]);
    let op = operator::start(&env, &[]);
    Some((env, op, rbac))
}

#[tokio::test]
async fn tenant_policy_in_enforce_cannot_change_its_namespace_object() {
    let Some((env, _op, _rbac)) = enforcing_operator("mp_ns_escape").await else { return };
    let ns = env.namespace.clone();
    create_deployment(&env, &ns, "web", 1, json!({})).await;
    // Per tenant: the test's namespace is its own tenant, so scope Tenant selects its Namespace.
    let mut metric = deployment_metric(&ns, "owners");
    metric["spec"]["tenancy"] = json!({});
    create::<SecurityMetric>(&env, &metric).await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(env.admin.clone());
    let before = namespaces.get(&ns).await.unwrap().metadata;
    create::<MetricPolicy>(
        &env,
        &policy(
            &ns,
            "escape",
            json!({
                "metrics": ["owners"],
                "mode": "Enforce",
                "rules": [{
                    "name": "mark",
                    "when": {"state": "Breached"},
                    "scope": "Tenant",
                    "cooldown": "1s",
                    "actions": [{"type": "Label", "key": "quarantine", "value": "yes"},
                                {"type": "Annotate", "key": "example.com/owner", "value": "another-tenant"},
                                {"type": "NetworkIsolation"}]
                }]
            }),
        ),
    )
    .await;
    // The rule acts where it may (a NetworkPolicy in its namespace) and refuses the Namespace.
    let s = policy_where(&env, &ns, "escape", "the Namespace refused, the isolation applied", |s| {
        has(s, Outcome::Refused, "Label")
            && has(s, Outcome::Refused, "Annotate")
            && has(s, Outcome::Applied, "NetworkIsolation")
    })
    .await;
    for r in records(&s, Outcome::Refused) {
        assert_eq!(r.target, format!("Namespace {ns}"), "{r:?}");
        assert_eq!(
            r.message.as_deref(),
            Some(format!("Namespace {ns} is cluster-scoped: only policies in platform namespaces may change cluster-scoped objects, and {ns} is a tenant namespace; nothing was touched").as_str())
        );
    }
    assert!(
        s.active_remediations.iter().all(|a| a.target.kind != "Namespace"),
        "{:?}",
        s.active_remediations
    );
    let after = namespaces.get(&ns).await.unwrap().metadata;
    assert_eq!(after.labels, before.labels);
    assert_eq!(after.annotations, before.annotations);
    assert_eq!(after.resource_version, before.resource_version, "the Namespace was not written at all");
}

#[tokio::test]
async fn scale_to_zero_restores_the_recorded_replicas_not_an_owner_set_annotation() {
    let Some((env, _op, _rbac)) = enforcing_operator("mp_prev_replicas").await else { return };
    let ns = env.namespace.clone();
    create_deployment(&env, &ns, "web", 2, json!({})).await;
    // The workload's owner pre-sets the annotation older operators trusted.
    let deployments: Api<Deployment> = env.api();
    let forged = json!({"metadata": {"annotations": {"secmetrics.io/previous-replicas": "50"}}});
    deployments.patch("web", &PatchParams::default(), &Patch::Merge(forged.clone())).await.unwrap();
    create::<SecurityMetric>(&env, &deployment_metric(&ns, "owners")).await;
    create::<MetricPolicy>(
        &env,
        &policy(
            &ns,
            "scale",
            json!({
                "metrics": ["owners"],
                "mode": "Enforce",
                "rules": [{"name": "stop", "when": {"state": "Breached"}, "scope": "Offenders", "cooldown": "1s",
                           "actions": [{"type": "ScaleToZero"}]}]
            }),
        ),
    )
    .await;
    let s = policy_where(&env, &ns, "scale", "scaled, confirmed", |s| {
        has(s, Outcome::Applied, "ScaleToZero") && s.active_remediations.iter().any(|a| !a.pending)
    })
    .await;
    assert_eq!(s.active_remediations.len(), 1);
    assert_eq!(
        s.active_remediations[0].previous_replicas,
        Some(2),
        "read from the workload's spec, not the annotation"
    );
    assert_eq!(
        deployments.get("web").await.unwrap().spec.unwrap().replicas,
        Some(0),
        "the annotation did not stop it"
    );
    // Rewriting it while scaled changes nothing either.
    deployments.patch("web", &PatchParams::default(), &Patch::Merge(forged)).await.unwrap();

    label_owner(&env, &ns, "web").await;
    let s = policy_where(&env, &ns, "scale", "reverted", |s| has(s, Outcome::Reverted, "ScaleToZero")).await;
    assert_eq!(s.active_count, 0);
    let d = deployments.get("web").await.unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(2), "restored to its real previous replicas, not 50");
    assert!(!d.metadata.annotations.unwrap_or_default().contains_key("secmetrics.io/previous-replicas"));
}

#[tokio::test]
async fn api_server_rejects_reserved_keys_and_hostile_platform_namespace_lists() {
    let Some(env) = crate::harness::setup("mp_reserved").await else { return };
    env.install_crds().await;
    let label = |key: &str| {
        json!({"metrics": ["m"], "rules": [{"name": "r", "when": {"state": "Breached"},
               "actions": [{"type": "Label", "key": key}]}]})
    };
    let reserved = "key may not use a prefix reserved for Kubernetes or secmetrics";
    for key in [
        "pod-security.kubernetes.io/enforce",
        "secmetrics.io/tenant",
        "secmetrics.io/previous-replicas",
        "kubernetes.io/metadata.name",
        "foo.k8s.io/bar",
        "Pod-Security.Kubernetes.io/enforce",
    ] {
        let msg = rejection(&env, label(key)).await;
        assert!(msg.contains(reserved), "{key}: {msg}");
        assert!(msg.contains("pod-security.kubernetes.io/enforce or secmetrics.io/tenant"), "{msg}");
    }
    let annotate = rejection(
        &env,
        json!({"metrics": ["m"], "rules": [{"name": "r", "when": {"state": "Breached"},
               "actions": [{"type": "Annotate", "key": "kubectl.kubernetes.io/last-applied-configuration"}]}]}),
    )
    .await;
    assert!(annotate.contains(reserved), "{annotate}");

    // includePlatformNamespaces: too many, too long, not a namespace name, empty.
    let include = |names: Value| {
        json!({"metrics": ["m"], "rules": [{"name": "r", "when": {"state": "Breached"},
               "actions": [{"type": "Event"}], "includePlatformNamespaces": names}]})
    };
    let many: Vec<String> = (0..21).map(|n| format!("ns{n}")).collect();
    let msg = rejection(&env, include(json!(many))).await;
    assert!(msg.contains("includePlatformNamespaces") && msg.contains("21"), "{msg}");
    for bad in ["x".repeat(64), "../kube-system".into(), "-x".into(), String::new()] {
        let msg = rejection(&env, include(json!([bad]))).await;
        assert!(msg.contains("includePlatformNamespaces"), "{bad:?}: {msg}");
    }

    // Allowed: keys under other domains, unprefixed keys, a named platform namespace.
    let mut ok = policy(&env.namespace, "ok", label("example.com/quarantine"));
    ok["spec"]["rules"][0]["includePlatformNamespaces"] = json!(["secmetrics-system"]);
    create::<MetricPolicy>(&env, &ok).await;
    create::<MetricPolicy>(&env, &policy(&env.namespace, "ok2", label("quarantine"))).await;
}
