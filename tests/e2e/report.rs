//! `secmetrics report` against the live cluster: it lists the SecurityMetrics and
//! MetricPolicies through the API and builds the very same report as from files.

use std::process::Command;

use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use secmetrics::api::{MetricPolicy, SecurityMetric};
use serde_json::json;

use crate::harness;

fn report(args: &[&str], kubeconfig: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_secmetrics"))
        .env("KUBECONFIG", kubeconfig)
        .arg("report")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "report {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn meta(name: &Option<String>, ns: &str) -> ObjectMeta {
    ObjectMeta { name: name.clone(), namespace: Some(ns.to_string()), ..Default::default() }
}

#[tokio::test]
async fn report_from_the_cluster_equals_report_from_files() {
    let Some(env) = harness::setup("report").await else { return };
    env.install_crds().await;
    let ns = env.namespace.clone();
    let fixtures = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/report");
    let (mut metrics, mut policies) = secmetrics::cli::report::from_files(&[fixtures]).unwrap();

    // The fixtures, moved into the test's namespace: created, then their status written through
    // the status subresource as the operator would. No operator selects them (no e2e label).
    let sms: Api<SecurityMetric> = env.api();
    for m in &mut metrics {
        m.metadata = meta(&m.metadata.name, &ns);
        let name = m.metadata.name.clone().unwrap();
        sms.create(&PostParams::default(), m).await.expect("create SecurityMetric");
        sms.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": m.status})))
            .await
            .expect("write SecurityMetric status");
    }
    let mps: Api<MetricPolicy> = env.api();
    for p in &mut policies {
        p.metadata = meta(&p.metadata.name, &ns);
        let name = p.metadata.name.clone().unwrap();
        mps.create(&PostParams::default(), p).await.expect("create MetricPolicy");
        mps.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": p.status})))
            .await
            .expect("write MetricPolicy status");
    }

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("objects.json");
    let items: Vec<serde_json::Value> = metrics
        .iter()
        .map(|m| serde_json::to_value(m).unwrap())
        .chain(policies.iter().map(|p| serde_json::to_value(p).unwrap()))
        .collect();
    std::fs::write(
        &file,
        serde_json::to_string(&json!({"apiVersion": "v1", "kind": "List", "items": items})).unwrap(),
    )
    .unwrap();

    let kubeconfig = env.admin_kubeconfig.clone();
    for format in ["json", "oscal"] {
        let live = report(&["-n", &ns, "--format", format], &kubeconfig);
        let offline = report(&["-f", file.to_str().unwrap(), "-n", &ns, "--format", format], &kubeconfig);
        assert_eq!(live, offline, "{format}: the cluster path and the file path disagree");
    }
    let v: serde_json::Value =
        serde_json::from_str(&report(&["-n", &ns, "--format", "json"], &kubeconfig)).unwrap();
    assert_eq!(v["summary"]["metrics"], 4);
    assert_eq!(v["summary"]["policies"], 2);
    assert_eq!(v["actions"].as_array().unwrap().len(), 5);
    // All namespaces (the default) include the test's objects too.
    let all: serde_json::Value = serde_json::from_str(&report(&["--format", "json"], &kubeconfig)).unwrap();
    assert!(all["metrics"].as_array().unwrap().iter().filter(|m| m["namespace"] == ns.as_str()).count() == 4);
}
