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

/// The hostile specs of tests/fixtures/hostile: `reject-*` are refused by the API server (the
/// e2e test `hostile_specs_are_refused_by_the_api_server_exactly_when_evaluate_refuses_them`
/// proves it on a real one), so `evaluate` must exit 2 naming the file, the document and the
/// field (`# path:` in the file); `accept-*` are admitted.
#[test]
fn evaluate_refuses_exactly_what_the_crd_refuses_with_located_messages() {
    let dir = root().join("tests/fixtures/hostile");
    let baseline = dir.join("accept-baseline.yaml");
    let objects = root().join("examples/workloads.yaml");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 20);
    for f in files {
        let name = f.file_name().unwrap().to_str().unwrap().to_string();
        let text = std::fs::read_to_string(&f).unwrap();
        let mut args = vec!["-f", path(&f), "--objects", path(&objects)];
        if text.contains("kind: MetricPolicy") {
            args.extend(["-f", path(&baseline)]);
        }
        let (code, _, err) = evaluate(&args);
        if name.starts_with("accept-") {
            assert_ne!(code, 2, "{name}: {err}");
            continue;
        }
        assert_eq!(code, 2, "{name} must be refused: {err}");
        assert!(err.contains(&name), "{name}: the file is named: {err}");
        if let Some(field) = text.lines().next().and_then(|l| l.strip_prefix("# path: ")) {
            assert!(err.contains(":2 (document 1)"), "{name}: the document is located: {err}");
            assert!(err.contains(&format!("  * {field}: ")), "{name}: the field {field} is named: {err}");
        } else {
            assert!(
                err.contains("invalid JSON at line 7 column") && err.contains("duplicate field \"interval\""),
                "{err}"
            );
        }
    }
}

/// Generated documents, valid or not, never crash `evaluate`: it exits 0, 1 or 2, and 2 always
/// with a message.
mod generated {
    use proptest::prelude::*;

    use super::*;

    fn scalar() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            "[a-zA-Z0-9 .:/_>=<!-]{0,12}".prop_map(serde_json::Value::from),
            prop_oneof![
                Just("1ns"),
                Just("8760h"),
                Just("8761h"),
                Just("1000000000000s"),
                Just("5m"),
                Just("0")
            ]
            .prop_map(serde_json::Value::from),
        ]
    }

    fn value() -> impl Strategy<Value = serde_json::Value> {
        let keys = prop_oneof![
            Just("kind".to_string()),
            Just("items".to_string()),
            Just("spec".to_string()),
            Just("source".to_string()),
            Just("kubernetes".to_string()),
            Just("interval".to_string()),
            Just("objective".to_string()),
            Just("window".to_string()),
            "[a-z]{1,6}",
        ];
        scalar().prop_recursive(4, 32, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                prop::collection::btree_map(keys.clone(), inner, 0..5)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A valid metric with one field replaced by a generated value.
    fn document() -> impl Strategy<Value = serde_json::Value> {
        let base: serde_json::Value = serde_saphyr::from_str(
            &std::fs::read_to_string(root().join("tests/fixtures/hostile/accept-baseline.yaml")).unwrap(),
        )
        .unwrap();
        let fields = prop_oneof![
            Just(vec!["spec", "interval"]),
            Just(vec!["spec", "objective"]),
            Just(vec!["spec", "source"]),
            Just(vec!["spec", "source", "kubernetes", "aggregate"]),
            Just(vec!["spec", "objective", "warning"]),
            Just(vec!["spec", "maxAge"]),
            Just(vec!["metadata"]),
            Just(vec!["spec"]),
            Just(vec!["kind"]),
            Just(vec!["spec", "tenancy"]),
            Just(vec!["spec", "anomaly"]),
        ];
        (fields, value()).prop_map(move |(path, v)| {
            let mut doc = base.clone();
            let mut at = &mut doc;
            for p in &path[..path.len() - 1] {
                at = &mut at[*p];
            }
            at[*path.last().unwrap()] = v;
            doc
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn generated_documents_exit_0_1_or_2_with_a_message(doc in document(), json in any::<bool>()) {
            let dir = tempfile::tempdir().unwrap();
            let f = dir.path().join(if json { "m.json" } else { "m.yaml" });
            let text = if json { doc.to_string() } else { serde_saphyr::to_string(&doc).unwrap() };
            std::fs::write(&f, text).unwrap();
            let (code, _, err) = evaluate(&["-f", path(&f), "--objects", path(&f)]);
            prop_assert!(matches!(code, 0..=2), "exit {code}: {err}");
            if code == 2 {
                prop_assert!(err.starts_with("error: ") && err.len() > 10, "{err}");
            }
        }
    }
}
