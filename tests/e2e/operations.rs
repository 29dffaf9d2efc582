//! Production operations end to end: leader election with failover, and `/metrics`.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use secmetrics::api::metric_policy::Outcome;
use secmetrics::api::security_metric::MetricState;
use secmetrics::api::{MetricPolicy, SecurityMetric};
use serde_json::json;

use crate::fixtures::{owner_label_metric, pod};
use crate::harness::{TestEnv, eventually};
use crate::metric_policy::{create, events_with_reason, policy, policy_where, records};
use crate::operator::{self, Operator};

async fn holder(env: &TestEnv) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(env.admin.clone(), "secmetrics-system");
    leases.get_opt(&env.namespace).await.ok()??.spec?.holder_identity
}

async fn metric_state(env: &TestEnv, name: &str) -> Option<MetricState> {
    let api: Api<SecurityMetric> = env.api();
    api.get(name).await.ok()?.status.map(|s| s.state)
}

const LEASE: Duration = Duration::from_secs(6);

#[tokio::test]
async fn the_follower_takes_over_when_the_leader_is_killed_and_nothing_is_done_twice() {
    let Some(env) = crate::harness::setup("failover").await else { return };
    env.install_crds().await;
    operator::install_chart_rbac(&env);
    let ns = env.namespace.clone();
    let lease = format!("--lease-duration={}s", LEASE.as_secs());
    let mut a = operator::start_with(&env, &[], "replica-a", &[&lease]);
    let leader =
        eventually("replica-a leads", || async { holder(&env).await.filter(|h| h == "replica-a") }).await;
    let mut b = operator::start_with(&env, &[], "replica-b", &[&lease]);
    assert_eq!(leader, "replica-a");

    let pods: Api<Pod> = env.api();
    pods.create(&PostParams::default(), &serde_json::from_value(pod(&ns, "p", json!({}))).unwrap())
        .await
        .unwrap();
    create::<SecurityMetric>(
        &env,
        &owner_label_metric(&ns, "owners", json!({"objective": {"warning": null}})),
    )
    .await;
    create::<MetricPolicy>(
        &env,
        &policy(&ns, "notify", json!({"metrics": ["owners"], "rules": [{"name": "tell", "when": {"state": "Breached"}, "actions": [{"type": "Event"}]}]})),
    )
    .await;
    policy_where(&env, &ns, "notify", "one planned Event", |s| records(s, Outcome::Planned).len() == 1).await;
    // Both replicas serve; only the leader says so.
    let leader_gauge =
        |op: &Operator| op.get("/metrics").map(|(_, body)| body.lines().any(|l| l == "secmetrics_leader 1"));
    assert_eq!(leader_gauge(&a), Some(true));
    assert_eq!(leader_gauge(&b), Some(false));

    a.kill();
    let killed = Instant::now();
    eventually("replica-b takes over", || async { holder(&env).await.filter(|h| h == "replica-b") }).await;
    let takeover = killed.elapsed();
    eprintln!("failover: replica-b took the lease {:.1}s after replica-a was killed", takeover.as_secs_f64());
    // Renewals every lease/7: the follower needs the lease duration since it last saw the
    // lease change, plus at most one retry period (and an API round trip).
    assert!(takeover <= LEASE + LEASE / 7 + Duration::from_secs(2), "takeover took {takeover:?}");

    // The new leader keeps status converging...
    pods.patch("p", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"owner": "a"}}})))
        .await
        .unwrap();
    eventually("the metric recovers under the new leader", || async {
        metric_state(&env, "owners").await.filter(|s| *s == MetricState::Compliant)
    })
    .await;
    // ...and repeats nothing: still one Planned record and one Event for the breach.
    let s = policy_where(&env, &ns, "notify", "recovery seen", |s| s.active_remediations.is_empty()).await;
    assert_eq!(records(&s, Outcome::Planned).len(), 1, "{:#?}", s.recent_actions);
    let planned = events_with_reason(&env, &ns, "RemediationPlanned").await;
    assert_eq!(
        planned
            .iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("MetricPolicy"))
            .count(),
        1
    );
    assert_eq!(leader_gauge(&b), Some(true));
    b.kill();
}

#[tokio::test]
async fn metrics_endpoint_exports_every_series_with_the_values_in_status() {
    let Some((env, op)) = operator::setup_platform("metrics").await else { return };
    let ns = env.namespace.clone();
    let label = format!("e2e-tenant-{ns}");
    let mut guards = Vec::new();
    for (suffix, tenant, owner) in [("a", "alpha", true), ("b", "beta", false)] {
        let name = format!("{ns}-{suffix}");
        env.create_namespace(&name, &[(label.as_str(), tenant)]).await;
        guards.push(crate::harness::NamespaceGuard::new(&env, &name));
        let labels = if owner { json!({"owner": "x"}) } else { json!({}) };
        let pods: Api<Pod> = Api::namespaced(env.admin.clone(), &name);
        pods.create(&PostParams::default(), &serde_json::from_value(pod(&name, "p", labels)).unwrap())
            .await
            .unwrap();
    }
    let metric = owner_label_metric(
        &ns,
        "owners",
        json!({
            "category": "AccessControl",
            "source": {"kubernetes": {"namespaceSelector": {"matchExpressions": [{"key": label, "operator": "Exists"}]}}},
            "tenancy": {"tenantLabel": label},
            "objective": {"warning": null}
        }),
    );
    create::<SecurityMetric>(&env, &metric).await;
    create::<MetricPolicy>(
        &env,
        &policy(&ns, "baseline", json!({"metrics": ["owners"], "rules": [{"name": "tell", "when": {"state": "Breached"}, "actions": [{"type": "Event"}]}]})),
    )
    .await;
    policy_where(&env, &ns, "baseline", "a planned Event", |s| records(s, Outcome::Planned).len() == 1).await;
    assert_eq!(op.get("/readyz").map(|(c, _)| c), Some(200));
    assert_eq!(op.get("/healthz").map(|(c, _)| c), Some(200));

    let body = eventually("the policy score is exported", || async {
        op.get("/metrics").map(|(_, b)| b).filter(|b| b.contains("secmetrics_policy_score{"))
    })
    .await;
    let expect = [
        format!(
            r#"secmetrics_metric_value{{namespace="{ns}",metric="owners",category="AccessControl"}} 50.0"#
        ),
        format!(r#"secmetrics_metric_state{{namespace="{ns}",metric="owners",state="Breached"}} 1"#),
        format!(r#"secmetrics_metric_state{{namespace="{ns}",metric="owners",state="Compliant"}} 0"#),
        format!(r#"secmetrics_metric_tenant_value{{namespace="{ns}",metric="owners",tenant="alpha"}} 100.0"#),
        format!(r#"secmetrics_metric_tenant_value{{namespace="{ns}",metric="owners",tenant="beta"}} 0.0"#),
        format!(r#"secmetrics_metric_anomalous{{namespace="{ns}",metric="owners"}} 0"#),
        format!(r#"secmetrics_metric_evaluation_errors{{namespace="{ns}",metric="owners"}} 0"#),
        format!(r#"secmetrics_policy_score{{namespace="{ns}",policy="baseline"}} 0.0"#),
        format!(r#"secmetrics_policy_compliant{{namespace="{ns}",policy="baseline"}} 0"#),
        r#"secmetrics_remediations_total{action="Event",outcome="Planned"} 1"#.to_string(),
        r#"secmetrics_reconcile_duration_seconds_count{controller="securitymetric"}"#.to_string(),
        r#"secmetrics_reconcile_duration_seconds_count{controller="metricpolicy"}"#.to_string(),
        r#"secmetrics_reconcile_errors_total{controller="securitymetric"} 0"#.to_string(),
        r#"secmetrics_reconcile_errors_total{controller="metricpolicy"} 0"#.to_string(),
        r#"secmetrics_watch_errors_total{kind="SecurityMetric"} 0"#.to_string(),
        "secmetrics_leader 1".to_string(),
        "secmetrics_ready 1".to_string(),
    ];
    for line in &expect {
        assert!(body.lines().any(|l| l.starts_with(line.as_str())), "missing {line} in\n{body}");
    }
}

/// `/metrics` names every tenant's metrics: it answers only tokens the API server
/// authenticates and authorises for `get /metrics`; the kubelet's probes stay open.
#[tokio::test]
async fn metrics_answer_only_tokens_allowed_to_read_them() {
    let Some((env, op)) = operator::setup("metrics-auth", &[]).await else { return };
    let status = |token: Option<&str>| op.get_with_token("/metrics", token).map(|(code, _)| code);
    // Listening, with no token: 401.
    eventually("the operator answers 401 without a token", || async { status(None).filter(|c| *c == 401) })
        .await;
    assert_eq!(status(Some("not-a-token")), Some(401), "a token the API server does not authenticate");
    // A real identity without the metrics-reader binding: 403.
    let stranger = operator::service_account_token(&env.admin_kubeconfig, &env.namespace, "stranger");
    assert_eq!(status(Some(&stranger)), Some(403));
    // The chart's metrics-reader ClusterRole, bound to the reader: 200, with the series.
    let (code, body) = op.get("/metrics").expect("listening");
    assert_eq!(code, 200);
    assert!(body.contains("secmetrics_leader"), "{body}");
    // The probes need no token.
    assert_eq!(op.get_with_token("/healthz", None).map(|(c, _)| c), Some(200));
    assert!(matches!(op.get_with_token("/readyz", None).map(|(c, _)| c), Some(200 | 503)));
}
