//! The rendered chart against the real API server: every object passes a server-side
//! dry-run apply, and the operator's Deployment is admitted under Pod Security `restricted`.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::harness::TestEnv;

fn helm_template(ns: &str, extra: &[&str]) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("tests/cluster/bin/helm"))
        .args(["template", "secmetrics"])
        .arg(root.join("charts/secmetrics"))
        .args(["--namespace", ns, "--kube-version", "1.36.3", "--set", "catalog.enabled=true"])
        .args(["--set", "networkPolicy.enabled=true", "--set", "monitoring.grafanaDashboard.enabled=true"])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "helm template: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `kubectl apply --server-side --dry-run=server` of `yaml`: (success, output).
fn dry_run_apply(env: &TestEnv, yaml: &str) -> (bool, String) {
    let mut child = Command::new(crate::harness::kubectl())
        .arg("--kubeconfig")
        .arg(&env.admin_kubeconfig)
        .args(["apply", "--server-side", "--dry-run=server", "--field-manager=e2e-chart", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

fn only_deployment(rendered: &str) -> String {
    rendered
        .split("\n---")
        .find(|d| d.contains("\nkind: Deployment"))
        .expect("the chart renders a Deployment")
        .to_string()
}

#[tokio::test]
async fn the_rendered_chart_passes_a_server_side_dry_run_and_pod_security_restricted() {
    let Some(env) = crate::harness::setup("chart").await else { return };
    env.install_crds().await;
    // The namespace enforces the restricted Pod Security level.
    let restricted = format!("{}-restricted", env.namespace);
    env.create_namespace(&restricted, &[("pod-security.kubernetes.io/enforce", "restricted")]).await;
    let _guard = crate::harness::NamespaceGuard::new(&env, &restricted);

    let rendered = helm_template(&restricted, &[]);
    let (ok, out) = dry_run_apply(&env, &rendered);
    assert!(ok, "server-side dry-run of the chart failed:\n{out}");
    for kind in [
        "deployment.apps/secmetrics",
        "clusterrole.rbac.authorization.k8s.io/secmetrics",
        "networkpolicy.networking.k8s.io/secmetrics",
        "securitymetric.secmetrics.io/",
    ] {
        assert!(out.contains(kind), "{kind} not applied:\n{out}");
    }
    // The test can fail: a Deployment asking for privilege escalation is rejected there.
    let bad = only_deployment(&rendered)
        .replace("allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true");
    // A Deployment is admitted with a warning (enforcement bites on its pods)...
    let (_, out) = dry_run_apply(&env, &bad);
    assert!(out.contains("would violate PodSecurity \"restricted"), "{out}");
    let (_, out) = dry_run_apply(&env, &only_deployment(&rendered));
    assert!(!out.contains("would violate PodSecurity"), "{out}");
    // ...so the pod template is also checked as a Pod, as the ReplicaSet controller creates it.
    let pod = |deployment: &str| -> String {
        let d: serde_json::Value = serde_saphyr::from_str(deployment).unwrap();
        let mut p = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "secmetrics-probe", "namespace": restricted},
            "spec": d["spec"]["template"]["spec"].clone()});
        p["spec"]["serviceAccountName"] = "default".into();
        serde_json::to_string(&p).unwrap()
    };
    let (ok, out) = dry_run_apply(&env, &pod(&only_deployment(&rendered)));
    assert!(ok, "the operator's pod is not admitted under restricted:\n{out}");
    let (ok, out) = dry_run_apply(&env, &pod(&bad));
    assert!(!ok && out.contains("restricted"), "a privilege-escalating pod must be rejected:\n{out}");
}
