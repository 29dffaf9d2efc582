//! The offline gate against the API server: every spec of tests/fixtures/hostile is created
//! (server-side dry run, strict field validation, as `kubectl apply` sends it) on the real
//! API server with the generated CRDs, and `secmetrics evaluate` must refuse (exit 2) exactly
//! the specs the API server refuses.

use crate::harness;

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn hostile_specs_are_refused_by_the_api_server_exactly_when_evaluate_refuses_them() {
    let Some(env) = harness::setup("hostile_specs").await else { return };
    env.install_crds().await;
    let dir = root().join("tests/fixtures/hostile");
    let tmp = tempfile::tempdir().unwrap();
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let baseline = dir.join("accept-baseline.yaml");
    let mut disagreements = Vec::new();
    for f in files {
        let name = f.file_name().unwrap().to_str().unwrap().to_string();
        let text = std::fs::read_to_string(&f)
            .unwrap()
            .replace("namespace: team-a", &format!("namespace: {}", env.namespace))
            .replace("\"namespace\": \"team-a\"", &format!("\"namespace\": \"{}\"", env.namespace));
        let local = tmp.path().join(&name);
        std::fs::write(&local, &text).unwrap();
        // The body as kubectl sends it: JSON as written (duplicate keys included), YAML as JSON.
        let (body, plural) = if name.ends_with(".json") {
            (text.clone(), "securitymetrics")
        } else {
            let v: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
            let plural = if v["kind"] == "MetricPolicy" { "metricpolicies" } else { "securitymetrics" };
            (v.to_string(), plural)
        };
        let request = http::Request::post(format!(
            "/apis/secmetrics.io/v1alpha1/namespaces/{}/{plural}?dryRun=All&fieldValidation=Strict",
            env.namespace
        ))
        .header("Content-Type", "application/json")
        .body(body.into_bytes())
        .unwrap();
        let server = env.admin.request_text(request).await;
        let server_refuses = match &server {
            Ok(_) => false,
            Err(kube::Error::Api(s)) if (400..500).contains(&s.code) => true,
            Err(e) => panic!("{name}: {e}"),
        };
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_secmetrics"));
        cmd.args(["evaluate", "-f"]).arg(&local).arg("--objects").arg(root().join("examples/workloads.yaml"));
        if text.contains("kind: MetricPolicy") {
            cmd.arg("-f").arg(&baseline);
        }
        let out = cmd.output().unwrap();
        let evaluate_refuses = out.status.code() == Some(2);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        eprintln!(
            "{name}: API server {} / evaluate {}",
            match &server {
                Ok(_) => "admits".to_string(),
                Err(e) => format!("refuses ({e})"),
            },
            if evaluate_refuses { format!("refuses ({})", err.trim()) } else { "admits".into() }
        );
        if server_refuses != evaluate_refuses {
            disagreements.push(format!("{name}: server refuses {server_refuses}, evaluate refuses {evaluate_refuses}: {server:?} / {err}"));
        }
        assert_eq!(
            name.starts_with("reject-"),
            server_refuses,
            "{name}: the fixture's name says what the API server does: {server:?}"
        );
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}
