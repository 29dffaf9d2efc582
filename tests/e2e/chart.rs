//! The Helm chart against the real API server: everything it renders passes server-side
//! validation (server-side dry-run apply), and the rendered Deployment's pods are admitted in
//! a namespace enforcing Pod Security `restricted`, where a non-compliant variant is not.
//!
//! The operator runs in these tests as a local process (no kubelet, no scheduler): what can be
//! tested is that the API server accepts the objects and that the controller-manager's
//! ReplicaSet controller gets the Deployment's pods past pod-security admission.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};

use crate::harness::{self, NamespaceGuard, TestEnv, eventually};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `helm template` of the chart into `namespace` with `args`: the rendered objects.
fn render(namespace: &str, args: &[&str]) -> Vec<Value> {
    let out = Command::new(root().join("tests/cluster/bin/helm"))
        .args(["template", "secmetrics"])
        .arg(root().join("charts/secmetrics"))
        .args(["--namespace", namespace, "--kube-version", "1.36.3"])
        .args(args)
        .output()
        .expect("run helm");
    assert!(out.status.success(), "helm template: {}", String::from_utf8_lossy(&out.stderr));
    let docs: Vec<Value> = serde_saphyr::from_multiple(&String::from_utf8(out.stdout).unwrap()).unwrap();
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// `kubectl <args> -f -` as the admin with `docs` on stdin.
fn kubectl_with(env: &TestEnv, args: &[&str], docs: &[Value]) -> Output {
    let mut child = Command::new(harness::kubectl())
        .arg("--kubeconfig")
        .arg(&env.admin_kubeconfig)
        .args(args)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    let stream: String = docs.iter().map(|d| format!("---\n{d}\n")).collect();
    child.stdin.take().unwrap().write_all(stream.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

const DRY_RUN: &[&str] = &[
    "apply",
    "--server-side",
    "--dry-run=server",
    "--force-conflicts",
    "--field-manager",
    "e2e-chart-dry-run",
];

#[tokio::test]
async fn rendered_chart_passes_server_side_dry_run() {
    let Some(env) = harness::setup("chart_dry_run").await else { return };
    // The catalog's SecurityMetrics and MetricPolicy need the CRDs served (also rendered
    // below, with --include-crds, and dry-run applied like the rest).
    env.install_crds().await;
    let ns = env.namespace.clone();
    let platform = format!("platformNamespaces={{{ns}}}");
    // Every toggle on: the same values tests/chart.rs lints and renders.
    let everything = root().join("tests/fixtures/chart/everything.yaml");
    let docs = render(&ns, &["--include-crds", "--set", &platform, "--values", everything.to_str().unwrap()]);
    // ServiceMonitor and PrometheusRule need prometheus-operator's CRDs, which this cluster
    // does not have (tests/chart.rs checks them, and promtool parses the rules).
    let (monitoring, docs): (Vec<Value>, Vec<Value>) =
        docs.into_iter().partition(|d| d["apiVersion"] == "monitoring.coreos.com/v1");
    assert_eq!(monitoring.len(), 2, "ServiceMonitor and PrometheusRule rendered");
    let kinds = |kind: &str| docs.iter().filter(|d| d["kind"] == kind).count();
    for kind in [
        "CustomResourceDefinition",
        "Deployment",
        "ServiceAccount",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "SecurityMetric",
        "MetricPolicy",
    ] {
        assert!(kinds(kind) > 0, "{kind} rendered");
    }

    let out = kubectl_with(&env, DRY_RUN, &docs);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "server-side dry run:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let applied = stdout.lines().filter(|l| l.ends_with("serverside-applied (server dry run)")).count();
    assert_eq!(applied, docs.len(), "every object validated:\n{stdout}");
    // A dry run changes nothing.
    let deployments: Api<Deployment> = env.api();
    assert!(deployments.get_opt("secmetrics").await.unwrap().is_none());

    // The server validates, so the check can fail: a PodDisruptionBudget setting both
    // minAvailable and maxUnavailable is rejected.
    let mut broken = docs.clone();
    let pdb = broken.iter_mut().find(|d| d["kind"] == "PodDisruptionBudget").unwrap();
    pdb["spec"]["maxUnavailable"] = json!(1);
    let out = kubectl_with(&env, DRY_RUN, &broken);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an invalid PodDisruptionBudget passed the dry run");
    assert!(stderr.contains("minAvailable and maxUnavailable cannot be both set"), "{stderr}");
}

/// A ReplicaSet's `ReplicaFailure` condition message, if any.
fn replica_failure(rs: &ReplicaSet) -> Option<String> {
    let conditions = rs.status.as_ref()?.conditions.as_ref()?;
    conditions.iter().find(|c| c.type_ == "ReplicaFailure" && c.status == "True").map(|c| {
        format!("{}: {}", c.reason.clone().unwrap_or_default(), c.message.clone().unwrap_or_default())
    })
}

/// Pods and ReplicaSets of the Deployment whose pods carry `instance`.
async fn pods_of(pods: &Api<Pod>, instance: &str) -> usize {
    let lp = ListParams::default().labels(&format!("app.kubernetes.io/instance={instance}"));
    pods.list(&lp).await.unwrap().items.len()
}

#[tokio::test]
async fn rendered_deployment_is_admitted_under_restricted_pod_security() {
    let Some(env) = harness::setup("chart_restricted").await else { return };
    let ns = format!("{}-restricted", env.namespace);
    env.create_namespace(
        &ns,
        &[
            ("pod-security.kubernetes.io/enforce", "restricted"),
            ("pod-security.kubernetes.io/enforce-version", "latest"),
        ],
    )
    .await;
    let _guard = NamespaceGuard::new(&env, &ns);
    let docs = render(
        &ns,
        &["--show-only", "templates/deployment.yaml", "--show-only", "templates/serviceaccount.yaml"],
    );
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap().clone();
    let replicas = deployment["spec"]["replicas"].as_u64().unwrap() as usize;
    assert_eq!(replicas, 2);

    // The pod template, created directly as a Pod (dry run): admitted.
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), &ns);
    let as_pod = |d: &Value, name: &str| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": d["spec"]["template"]["metadata"]["labels"]},
            "spec": d["spec"]["template"]["spec"],
        }))
        .unwrap()
    };
    let dry = PostParams { dry_run: true, ..Default::default() };
    // The ServiceAccount must exist for a pod to be admitted at all.
    let out = kubectl_with(&env, &["apply", "--server-side", "--field-manager", "e2e-chart"], &docs);
    assert!(out.status.success(), "apply: {}", String::from_utf8_lossy(&out.stderr));
    pods.create(&dry, &as_pod(&deployment, "template-check"))
        .await
        .unwrap_or_else(|e| panic!("the chart's pod template is rejected under restricted: {e}"));

    // The Deployment, applied for real: the ReplicaSet controller creates both pods, each
    // admitted by pod-security admission (they stay Pending: there is no scheduler).
    eventually("both operator pods are created under restricted", || async {
        (pods_of(&pods, "secmetrics").await == replicas).then_some(())
    })
    .await;
    let sets: Api<ReplicaSet> = Api::namespaced(env.admin.clone(), &ns);
    for rs in sets.list(&ListParams::default()).await.unwrap() {
        assert_eq!(replica_failure(&rs), None, "ReplicaSet {:?}", rs.metadata.name);
    }

    // A variant allowing privilege escalation, under its own name and labels: the
    // Deployment object is accepted (Pod Security enforces on pods), its pods are not.
    let mut variant = deployment.clone();
    variant["metadata"]["name"] = json!("secmetrics-escalating");
    variant["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] = json!("escalating");
    variant["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/instance"] = json!("escalating");
    variant["spec"]["template"]["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] =
        json!(true);
    let err =
        pods.create(&dry, &as_pod(&variant, "escalating-check")).await.expect_err("the variant is admitted");
    assert!(
        err.to_string()
            .contains(r#"violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false"#),
        "{err}"
    );
    let out = kubectl_with(&env, &["apply", "--server-side", "--field-manager", "e2e-chart"], &[variant]);
    assert!(out.status.success(), "apply: {}", String::from_utf8_lossy(&out.stderr));
    let failure = eventually("the variant's ReplicaSet reports its pods forbidden", || async {
        let lp = ListParams::default().labels("app.kubernetes.io/instance=escalating");
        sets.list(&lp).await.unwrap().items.iter().find_map(replica_failure)
    })
    .await;
    assert!(failure.starts_with("FailedCreate: "), "{failure}");
    assert!(failure.contains(r#"violates PodSecurity "restricted:latest""#), "{failure}");
    assert_eq!(pods_of(&pods, "escalating").await, 0, "no pod of the variant exists");
}
