//! Evidence for auditors end to end: a tenant's resource use leaving its own baseline is an
//! anomaly, a DryRun rule scoped to that tenant plans a clamping ResourceQuota, and the
//! plan is visible in status, `kubectl get mp` and Events; trends and breaches fill in.

use k8s_openapi::api::core::v1::{Pod, ResourceQuota};
use kube::api::{Api, ListParams, PostParams};
use secmetrics::api::metric_policy::Outcome;
use secmetrics::api::security_metric::SecurityMetricStatus;
use secmetrics::api::{MetricPolicy, SecurityMetric};
use serde_json::json;

use crate::fixtures::pod;
use crate::harness::{NamespaceGuard, TestEnv, eventually};
use crate::metric_policy::{create, events_with_reason, policy, policy_where, records};
use crate::operator;

async fn metric_status(env: &TestEnv, name: &str) -> Option<SecurityMetricStatus> {
    let api: Api<SecurityMetric> = env.api();
    api.get(name).await.ok().and_then(|m| m.status)
}

async fn add_pods(env: &TestEnv, ns: &str, names: impl IntoIterator<Item = String>) {
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), ns);
    for name in names {
        pods.create(&PostParams::default(), &serde_json::from_value(pod(ns, &name, json!({}))).unwrap())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn tenant_use_jumping_above_its_baseline_plans_a_quota_clamp_for_that_tenant_only() {
    let Some((env, _op)) = operator::setup_platform("anomaly").await else { return };
    let ns = env.namespace.clone();
    let label = format!("e2e-tenant-{ns}");
    let mut guards = Vec::new();
    for tenant in ["busy", "calm"] {
        let name = format!("{ns}-{tenant}");
        env.create_namespace(&name, &[(label.as_str(), tenant)]).await;
        guards.push(NamespaceGuard::new(&env, &name));
        add_pods(&env, &name, (0..2).map(|i| format!("p{i}"))).await;
    }
    let metric = json!({
        "apiVersion": "secmetrics.io/v1alpha1", "kind": "SecurityMetric",
        "metadata": {"name": "tenant-pods", "namespace": ns, "labels": {"e2e": ns}},
        "spec": {
            "displayName": "Pods per tenant",
            "description": "Workload pods each tenant runs: resource use that should follow the tenant's own pattern.",
            "type": "Operational", "category": "ResourceAllocation",
            "owner": {"team": "platform", "responsibility": "OrchestratedServiceProvider"},
            "alignment": {"compliance": [{"framework": "CSA-AICM", "control": "AIS-03"}]},
            "source": {"kubernetes": {
                "resource": {"apiVersion": "v1", "kind": "Pod"},
                "namespaceSelector": {"matchExpressions": [{"key": label, "operator": "Exists"}]},
                "aggregate": "Count"
            }},
            "objective": {"operator": "<=", "target": 1000},
            "tenancy": {"tenantLabel": label},
            "anomaly": {"window": 4, "sensitivity": 3},
            "interval": "10s"
        }
    });
    create::<SecurityMetric>(&env, &metric).await;
    create::<MetricPolicy>(
        &env,
        &policy(
            &ns,
            "clamp",
            json!({"metrics": ["tenant-pods"], "rules": [{"name": "clamp", "when": {"state": "Anomalous"}, "scope": "Tenant",
                   "actions": [{"type": "ResourceQuota", "quota": {"pods": "2"}}]}]}),
        ),
    )
    .await;

    // The baselines warm up from one sample per status write (a heartbeat per interval).
    let warm = eventually("both tenants' baselines are warm", || async {
        let s = metric_status(&env, "tenant-pods").await?;
        (s.tenant_baselines.len() == 2 && s.tenant_baselines.iter().all(|b| b.baseline.samples >= 3))
            .then_some(s)
    })
    .await;
    assert!(!warm.anomalous, "a steady cluster is not anomalous: {warm:#?}");
    assert!(
        records(
            &policy_where(&env, &ns, "clamp", "reconciled", |s| s.observed_generation.is_some()).await,
            Outcome::Planned
        )
        .is_empty()
    );

    // The busy tenant's use jumps from 2 to 12 pods.
    add_pods(&env, &format!("{ns}-busy"), (2..12).map(|i| format!("p{i}"))).await;
    let s = eventually("the busy tenant is anomalous", || async {
        metric_status(&env, "tenant-pods").await.filter(|s| s.anomalous)
    })
    .await;
    let flagged: Vec<&str> = s.tenants.iter().filter(|t| t.anomalous).map(|t| t.name.as_str()).collect();
    assert_eq!(flagged, ["busy"]);
    assert!(s.anomalous_since.is_some());

    let p = policy_where(&env, &ns, "clamp", "a planned clamp", |s| !records(s, Outcome::Planned).is_empty())
        .await;
    let planned = records(&p, Outcome::Planned);
    assert!(planned.iter().all(|r| r.action.as_str() == "ResourceQuota" && r.dry_run), "{planned:#?}");
    assert!(
        planned.iter().all(|r| r.target.starts_with(&format!("ResourceQuota {ns}-busy/"))),
        "only the anomalous tenant: {planned:#?}"
    );
    assert!(
        p.last_action.as_deref().is_some_and(|a| a.starts_with("Planned ResourceQuota")),
        "{:?}",
        p.last_action
    );

    // kubectl get mp shows it at a glance.
    let out = std::process::Command::new(crate::harness::kubectl())
        .arg("--kubeconfig")
        .arg(&env.admin_kubeconfig)
        .args(["get", "mp", "clamp", "-n", &ns])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("LAST ACTION") && table.contains("Planned ResourceQuota"), "{table}");

    // An Event says so, and nothing changed: DryRun creates no quota.
    eventually("a RemediationPlanned Event", || async {
        let e = events_with_reason(&env, &ns, "RemediationPlanned").await;
        e.iter().any(|e| e.note.as_deref().unwrap_or_default().contains("ResourceQuota")).then_some(())
    })
    .await;
    let quotas: Api<ResourceQuota> = Api::namespaced(env.admin.clone(), &format!("{ns}-busy"));
    assert!(quotas.list(&ListParams::default()).await.unwrap().items.is_empty());

    // The auditor's report from the live cluster shows the planned clamp and the anomaly.
    let report = std::process::Command::new(env!("CARGO_BIN_EXE_secmetrics"))
        .args(["report", "--format", "markdown", "-n", &ns])
        .env("KUBECONFIG", &env.admin_kubeconfig)
        .output()
        .unwrap();
    assert!(report.status.success(), "{}", String::from_utf8_lossy(&report.stderr));
    let md = String::from_utf8_lossy(&report.stdout);
    let planned_line = md.lines().find(|l| l.contains("Planned") && l.contains("ResourceQuota"));
    assert!(
        planned_line.is_some_and(|l| l.contains(&format!("{ns}-busy"))),
        "no planned clamp in the report:\n{md}"
    );

    // The evaluations are tracked: today's bucket exists with samples and observed time.
    let trend = metric_status(&env, "tenant-pods").await.unwrap().trend.unwrap();
    let today = trend.daily.last().unwrap();
    assert!(today.samples >= 4 && today.observed_seconds > 0, "{today:?}");
    assert_eq!(trend.monthly.len(), 1);
}

/// A `history` metric over the test's other metrics.
fn history_metric(ns: &str, name: &str, statistic: &str) -> serde_json::Value {
    json!({
        "apiVersion": "secmetrics.io/v1alpha1", "kind": "SecurityMetric",
        "metadata": {"name": name, "namespace": ns, "labels": {"e2e": ns}},
        "spec": {
            "displayName": statistic, "description": "Operational metric over the breach records.",
            "type": "Operational", "category": "IncidentResponse",
            "owner": {"team": "platform", "responsibility": "OrchestratedServiceProvider"},
            "source": {"history": {"statistic": statistic, "window": "1h",
                                   "metricSelector": {"matchLabels": {"severity": "critical"}}}},
            "unit": "Seconds",
            "objective": {"operator": "<=", "target": 86400},
            "interval": "10s"
        }
    })
}

#[tokio::test]
async fn breaches_are_recorded_and_history_metrics_compute_mttr_and_counts_from_them() {
    let Some((env, _op)) = operator::setup("history", &[]).await else { return };
    let ns = env.namespace.clone();
    add_pods(&env, &ns, ["unowned".to_string()]).await;
    let mut m = crate::fixtures::owner_label_metric(&ns, "owners", json!({"objective": {"warning": null}}));
    m["metadata"]["labels"]["severity"] = json!("critical");
    create::<SecurityMetric>(&env, &m).await;
    for (name, statistic) in [("mttr", "MeanTimeToRecover"), ("breaches", "BreachCount")] {
        create::<SecurityMetric>(&env, &history_metric(&ns, name, statistic)).await;
    }
    let breached = eventually("the owner metric is Breached with an open breach", || async {
        metric_status(&env, "owners").await.filter(|s| s.breaches.len() == 1 && s.breaches[0].until.is_none())
    })
    .await;
    // The history metric sees the open breach (and the breach lasts a while meanwhile).
    eventually("the open breach is counted", || async {
        metric_status(&env, "breaches").await.filter(|s| s.value == Some(1.0))
    })
    .await;
    // Recover: the pod gets its owner.
    let pods: Api<Pod> = env.api();
    pods.patch(
        "unowned",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"metadata": {"labels": {"owner": "team-a"}}})),
    )
    .await
    .unwrap();
    let recovered = eventually("the breach is closed", || async {
        metric_status(&env, "owners").await.filter(|s| s.breaches.first().is_some_and(|b| b.until.is_some()))
    })
    .await;
    let b = &recovered.breaches[0];
    assert_eq!(b.since, breached.breaches[0].since);
    let duration = b.until.as_ref().unwrap().0.duration_since(b.since.0).as_secs_f64();
    // The history metrics pick the closed record up at their next evaluation.
    let mttr = eventually("MTTR equals the one breach's duration", || async {
        metric_status(&env, "mttr")
            .await
            .filter(|s| s.value == Some(duration) && s.offenders_total == Some(1))
    })
    .await;
    assert_eq!((mttr.population, mttr.passing, mttr.offenders_total), (Some(1), Some(0), Some(1)));
    assert_eq!(mttr.offenders[0].name, "owners");
    assert_eq!(mttr.state, secmetrics::api::security_metric::MetricState::Compliant);
    assert_eq!(metric_status(&env, "breaches").await.unwrap().value, Some(1.0), "still one breach");
}
