//! `secmetrics evaluate` as a GitOps pipeline runs it: files in, table or objects out, and an
//! exit code that gates the pipeline.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn evaluate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_secmetrics")).arg("evaluate").args(args).output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn examples_breach_and_exit_one_with_a_table() {
    let (code, out, err) = evaluate(&[
        "-f",
        path(&root().join("examples/metrics.yaml")),
        "--objects",
        path(&root().join("examples/workloads.yaml")),
    ]);
    assert_eq!(code, 1, "{err}");
    let row = out.lines().find(|l| l.contains("pods-run-as-non-root")).expect(&out);
    assert!(row.contains("50") && row.contains("Breached") && row.contains(">= 95"), "{row}");
    let row = out.lines().find(|l| l.contains("containers-with-resource-limits")).unwrap();
    assert!(row.contains("75") && row.contains("Warning"), "{row}");
    assert!(out.lines().next().unwrap().starts_with("NAMESPACE"));
}

#[test]
fn compliant_input_exits_zero_and_json_has_kubectl_shape() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("m.yaml"),
        r#"
apiVersion: secmetrics.io/v1alpha1
kind: SecurityMetric
metadata: {name: tls, namespace: secmetrics-system}
spec:
  displayName: TLS
  description: Ingress TLS
  type: Technical
  category: DataProtection
  owner: {team: net, responsibility: SharedOspAp}
  source: {kubernetes: {resource: {apiVersion: networking.k8s.io/v1, kind: Ingress}, passes: "has(object.spec.tls)"}}
  objective: {operator: ">=", target: 100}
"#,
    )
    .unwrap();
    // A directory holding `kubectl get -o json` output.
    std::fs::create_dir(dir.path().join("dump")).unwrap();
    std::fs::write(
        dir.path().join("dump/ingresses.json"),
        r#"{"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "a", "namespace": "x"}, "spec": {"tls": [{}]}}]}"#,
    )
    .unwrap();
    let (code, out, err) = evaluate(&[
        "-f",
        path(&dir.path().join("m.yaml")),
        "--objects",
        path(&dir.path().join("dump")),
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["kind"], "List");
    assert_eq!(v["items"][0]["kind"], "SecurityMetric");
    assert_eq!(v["items"][0]["status"]["state"], "Compliant");
    assert_eq!(v["items"][0]["status"]["value"], 100.0);
    // YAML output reads back as the same objects.
    let (_, yaml, _) = evaluate(&[
        "-f",
        path(&dir.path().join("m.yaml")),
        "--objects",
        path(&dir.path().join("dump")),
        "-o",
        "yaml",
    ]);
    let back: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
    assert_eq!(back["items"][0]["status"]["state"], "Compliant");
}

#[test]
fn invalid_input_exits_two_with_file_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let bad_yaml = dir.path().join("bad.yaml");
    std::fs::write(&bad_yaml, "apiVersion: v1\n  kind: x\n").unwrap();
    let (code, _, err) = evaluate(&["-f", path(&bad_yaml), "--objects", path(&bad_yaml)]);
    assert_eq!(code, 2);
    assert!(err.contains("bad.yaml: invalid YAML: line 2 column"), "{err}");

    let unknown = dir.path().join("unknown.yaml");
    let metrics = std::fs::read_to_string(root().join("examples/metrics.yaml")).unwrap();
    std::fs::write(
        &unknown,
        metrics.replacen(
            "objective: {operator: \">=\", target: 90",
            "objective: {operator: \">=\", tagret: 1, target: 90",
            1,
        ),
    )
    .unwrap();
    let (code, _, err) =
        evaluate(&["-f", path(&unknown), "--objects", path(&root().join("examples/workloads.yaml"))]);
    assert_eq!(code, 2);
    assert!(
        err.contains("unknown.yaml:")
            && err.contains("(document 2) SecurityMetric \"containers-with-resource-limits\" is invalid")
            && err.contains("spec.objective.tagret: unknown field"),
        "{err}"
    );

    let (code, _, err) = evaluate(&["-f", "/nonexistent/metrics.yaml", "--objects", path(&unknown)]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/metrics.yaml: No such file or directory"), "{err}");
}

#[test]
fn invalid_expression_is_unknown_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.yaml");
    let metrics = std::fs::read_to_string(root().join("examples/metrics.yaml")).unwrap();
    std::fs::write(&m, metrics.replacen("where: \"!(object.metadata", "where: \"!(objetc.metadata", 1))
        .unwrap();
    let (code, out, _) =
        evaluate(&["-f", path(&m), "--objects", path(&root().join("examples/workloads.yaml"))]);
    assert_eq!(code, 1);
    let row = out.lines().find(|l| l.contains("pods-run-as-non-root")).unwrap();
    assert!(
        row.contains("Unknown") && row.contains("undeclared reference to 'objetc'") && row.contains("at 1:3"),
        "{row}"
    );
}

#[test]
fn chart_crds_equal_generated_crds() {
    let chart = std::fs::read_to_string(root().join("charts/secmetrics/crds/secmetrics.io.yaml")).unwrap();
    assert!(
        chart == secmetrics::api::crds_yaml().unwrap(),
        "charts/secmetrics/crds/ is out of date: cp crds/secmetrics.io.yaml charts/secmetrics/crds/"
    );
}

#[test]
fn policies_gate_the_exit_code_on_their_requirement() {
    let examples = root().join("examples");
    let (code, out, err) = evaluate(&[
        "-f",
        path(&examples.join("metrics.yaml")),
        "-f",
        path(&examples.join("policies.yaml")),
        "--objects",
        path(&examples.join("workloads.yaml")),
    ]);
    assert_eq!(code, 1, "{err}");
    let row = out.lines().find(|l| l.contains("baseline")).expect(&out);
    assert!(row.contains("NonCompliant") && row.contains(">= 75%"), "{row}");
    assert!(row.contains("pods-run-as-non-root Breached"), "{row}");

    // The same metrics under a policy that tolerates them: the policy decides the exit code.
    let dir = tempfile::tempdir().unwrap();
    let lenient = std::fs::read_to_string(examples.join("policies.yaml"))
        .unwrap()
        .replace("minCompliantPercent: 75", "minCompliantPercent: 25");
    std::fs::write(dir.path().join("p.yaml"), lenient).unwrap();
    let (code, out, err) = evaluate(&[
        "-f",
        path(&examples.join("metrics.yaml")),
        "-f",
        path(&dir.path().join("p.yaml")),
        "--objects",
        path(&examples.join("workloads.yaml")),
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let policy = v["items"].as_array().unwrap().iter().find(|i| i["kind"] == "MetricPolicy").unwrap();
    assert_eq!(policy["status"]["state"], "Compliant");
    let controls: Vec<&str> = policy["status"]["frameworks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["control"].as_str().unwrap())
        .collect();
    assert!(controls.contains(&"AIS-03") && controls.contains(&"9.1"), "{controls:?}");

    // A typo in a policy is an error with the file and document, not a silent no-op.
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: secmetrics.io/v1alpha1\nkind: MetricPolicy\nmetadata: {name: p}\nspec: {metrics: [a], mdoe: Enforce}\n",
    )
    .unwrap();
    let (code, _, err) = evaluate(&[
        "-f",
        path(&examples.join("metrics.yaml")),
        "-f",
        path(&dir.path().join("bad.yaml")),
        "--objects",
        path(&examples.join("workloads.yaml")),
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("bad.yaml")
            && err.contains("MetricPolicy \"p\" is invalid")
            && err.contains("spec.mdoe: unknown field"),
        "{err}"
    );
}
