//! The built-in catalog on a real cluster: the chart renders it, the API server accepts every
//! object (CRD schema and CEL rules), the operator brings every metric to a known state, and
//! the Pod Security metrics agree with the API server's own pod-security admission.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use k8s_openapi::api::core::v1::{Pod, ResourceQuota};
use kube::api::{Api, PostParams};
use kube::core::DynamicObject;
use kube::discovery::ApiResource;
use secmetrics::api::metric_policy::PolicyState;
use secmetrics::api::security_metric::MetricState;
use secmetrics::api::{MetricPolicy, SecurityMetric};
use secmetrics::cli::load;
use secmetrics::engine::{self, CompiledSource, Kind, ObjectIndex, Pass, Visibility};
use serde_json::{Value, json};

use crate::harness::{self, NamespaceGuard, TestEnv, eventually};
use crate::operator;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The catalog as the chart renders it for `namespace` (`catalog.enabled=true`).
fn rendered_catalog(namespace: &str) -> Vec<Value> {
    let out = Command::new(root().join("tests/cluster/bin/helm"))
        .args(["template", "secmetrics", "--kube-version", "1.36.3"])
        .arg(root().join("charts/secmetrics"))
        .args(["--namespace", namespace, "--set", "catalog.enabled=true"])
        .args(["--show-only", "templates/catalog.yaml"])
        .output()
        .expect("run helm");
    assert!(out.status.success(), "helm template: {}", String::from_utf8_lossy(&out.stderr));
    let docs: Vec<Value> = serde_saphyr::from_multiple(&String::from_utf8(out.stdout).unwrap()).unwrap();
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// `kubectl apply` of a manifest as the admin.
fn kubectl_apply(env: &TestEnv, manifest: &str) {
    let mut apply = Command::new(harness::kubectl())
        .arg("--kubeconfig")
        .arg(&env.admin_kubeconfig)
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    apply.stdin.take().unwrap().write_all(manifest.as_bytes()).unwrap();
    let out = apply.wait_with_output().unwrap();
    assert!(out.status.success(), "kubectl apply: {}", String::from_utf8_lossy(&out.stderr));
}

/// Two tenants: `good` follows the catalog's advice, `bad` breaks it in many ways.
fn workloads(ns: &str) -> String {
    r#"
apiVersion: v1
kind: ResourceQuota
metadata: {name: compute, namespace: NS-good}
spec: {hard: {requests.cpu: "4", requests.memory: 4Gi}}
---
apiVersion: v1
kind: LimitRange
metadata: {name: defaults, namespace: NS-good}
spec:
  limits: [{type: Container, default: {cpu: 500m, memory: 128Mi}, defaultRequest: {cpu: 100m, memory: 64Mi}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: NS-good}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web, namespace: NS-good}
automountServiceAccountToken: false
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: NS-good, labels: {team: shop, app: web}}
spec:
  serviceAccountName: web
  securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}
  containers:
    - name: web
      image: registry.example.com/shop/web@sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945
      resources: {requests: {cpu: 250m, memory: 64Mi}, limits: {cpu: 500m, memory: 128Mi}}
      securityContext:
        readOnlyRootFilesystem: true
        allowPrivilegeEscalation: false
        capabilities: {drop: [ALL]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: NS-good}
spec: {selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web, namespace: NS-good}
spec:
  tls: [{hosts: [shop.example.com], secretName: shop-tls}]
  rules:
    - host: shop.example.com
      http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}
---
apiVersion: v1
kind: Pod
metadata: {name: root, namespace: NS-bad}
spec:
  hostNetwork: true
  containers:
    - name: root
      image: nginx:latest
      securityContext: {privileged: true}
      env:
        - name: PASSWORD
          valueFrom: {secretKeyRef: {name: db, key: password}}
---
apiVersion: v1
kind: Service
metadata: {name: public, namespace: NS-bad}
spec: {type: LoadBalancer, ports: [{port: 443}]}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: plain, namespace: NS-bad}
spec:
  rules:
    - host: plain.example.com
      http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: public, port: {number: 443}}}}]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: wild, namespace: NS-bad}
rules: [{apiGroups: [apps], resources: ["*"], verbs: [get, list]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: everyone, namespace: NS-bad}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: wild}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: "system:authenticated"}]
"#
    .replace("NS-", &format!("{ns}-"))
}

fn condition<'a>(
    m: &'a SecurityMetric,
    t: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    m.status.as_ref()?.conditions.iter().find(|c| c.type_ == t)
}

/// Whether a metric has reached the state it must reach on this cluster, or why not yet.
fn settled(m: &SecurityMetric) -> Result<(), String> {
    let name = m.metadata.name.as_deref().unwrap_or_default();
    let s = m.status.as_ref().ok_or("no status yet")?;
    if s.observed_generation != Some(1) {
        return Err("not evaluated yet".into());
    }
    let unavailable = condition(m, "SourceAvailable").filter(|c| c.status == "False");
    match name {
        // trivy-operator is not installed: its kind is not served.
        "critical-vulnerabilities" | "high-vulnerabilities" => match unavailable {
            Some(c) if c.reason == "KindNotFound" && c.message.contains("VulnerabilityReport") => Ok(()),
            _ => Err("expected SourceAvailable=False, reason KindNotFound".into()),
        },
        // No Prometheus here: unavailable, with a reason and a message that say why.
        "api-unauthorized-request-rate" => match unavailable {
            Some(c) if !c.reason.is_empty() && !c.message.is_empty() && s.state == MetricState::Unknown => {
                Ok(())
            }
            _ => Err("expected SourceAvailable=False with a reason".into()),
        },
        // Whatever the history source makes of a fresh cluster: a known state, or Unknown
        // with a Ready condition that says why (never a silent pass).
        "mean-time-to-recover" => {
            let ready = condition(m, "Ready").ok_or("no Ready condition")?;
            match s.state {
                MetricState::Unknown if ready.status == "False" && !ready.message.is_empty() => Ok(()),
                MetricState::Unknown => Err("Unknown without a reason".into()),
                _ => Ok(()),
            }
        }
        _ if s.state != MetricState::Unknown && s.value.is_some() => Ok(()),
        _ => Err(format!(
            "state {:?}, conditions {:?}",
            s.state,
            s.conditions.iter().map(|c| (&c.type_, &c.reason, &c.message)).collect::<Vec<_>>()
        )),
    }
}

#[tokio::test]
async fn every_catalog_metric_reaches_a_known_state() {
    let Some(env) = harness::setup("catalog").await else { return };
    env.install_crds().await;
    operator::install_chart_rbac(&env);
    let ns = env.namespace.clone();
    let (good, bad) = (format!("{ns}-good"), format!("{ns}-bad"));
    let t1 = format!("{ns}-t1");
    let t2 = format!("{ns}-t2");
    env.create_namespace(
        &good,
        &[("secmetrics.io/tenant", t1.as_str()), ("pod-security.kubernetes.io/enforce", "restricted")],
    )
    .await;
    let _good = NamespaceGuard::new(&env, &good);
    env.create_namespace(&bad, &[("secmetrics.io/tenant", t2.as_str())]).await;
    let _bad = NamespaceGuard::new(&env, &bad);
    kubectl_apply(&env, &workloads(&ns));
    // The quota controller fills in usage: the quota-usage metric needs it.
    let quotas: Api<ResourceQuota> = Api::namespaced(env.admin.clone(), &good);
    eventually("the quota's usage is computed", || async {
        let q = quotas.get("compute").await.ok()?;
        q.status?.used?.contains_key("requests.cpu").then_some(())
    })
    .await;

    // The chart's catalog for this namespace, labelled for this test's operator. Creating it
    // runs every object through the CRDs' schemas and validation rules.
    let catalog = rendered_catalog(&ns);
    let mut metric_names = BTreeSet::new();
    for mut doc in catalog {
        doc["metadata"]["labels"]["e2e"] = json!(ns);
        let ar = match doc["kind"].as_str() {
            Some("SecurityMetric") => {
                metric_names.insert(doc["metadata"]["name"].as_str().unwrap().to_string());
                ApiResource::erase::<SecurityMetric>(&())
            }
            Some("MetricPolicy") => ApiResource::erase::<MetricPolicy>(&()),
            other => panic!("unexpected {other:?} in the catalog"),
        };
        let api: Api<DynamicObject> = Api::namespaced_with(env.admin.clone(), &ns, &ar);
        let obj: DynamicObject = serde_json::from_value(doc.clone()).unwrap();
        api.create(&PostParams::default(), &obj).await.unwrap_or_else(|e| {
            panic!("the API server rejects {} {}: {e}", doc["kind"], doc["metadata"]["name"])
        });
    }
    assert!(metric_names.len() >= 30);
    let _op = operator::start(&env, &[&ns]);

    let metrics: Api<SecurityMetric> = env.api();
    let all = eventually("every catalog metric reaches a known state", || async {
        let list = metrics.list(&Default::default()).await.ok()?;
        let pending: Vec<String> = list
            .items
            .iter()
            .filter_map(|m| settled(m).err().map(|e| format!("{}: {e}", m.metadata.name.as_deref().unwrap())))
            .collect();
        if !pending.is_empty() || list.items.len() != metric_names.len() {
            eprintln!("waiting for {} metrics: {pending:?}", pending.len());
            return None;
        }
        Some(list.items)
    })
    .await;
    let by_name: BTreeMap<String, SecurityMetric> =
        all.into_iter().map(|m| (m.metadata.name.clone().unwrap(), m)).collect();
    let status = |name: &str| by_name[name].status.clone().unwrap();
    for (name, m) in &by_name {
        let s = m.status.as_ref().unwrap();
        eprintln!("{name:45} {:>10} {:?}", s.value.map(|v| v.to_string()).unwrap_or("-".into()), s.state);
    }

    // The bad tenant's privileged pod breaks baseline, and its namespace enforces nothing.
    let baseline = status("pod-security-baseline");
    assert_ne!(baseline.state, MetricState::Compliant);
    let t2_baseline = baseline.tenants.iter().find(|t| t.name == t2).expect("the bad tenant is listed first");
    assert_eq!((t2_baseline.value, t2_baseline.state), (Some(0.0), MetricState::Breached));
    assert_ne!(status("namespaces-with-pod-security-enforce").state, MetricState::Compliant);
    let exposed = status("externally-exposed-services");
    assert!(exposed.value.unwrap() >= 1.0, "the LoadBalancer Service counts: {exposed:?}");
    let tls = status("ingresses-with-tls");
    assert!(tls.value.unwrap() < 100.0 && tls.population.unwrap() >= 2, "{tls:?}");
    let quota = status("tenant-quota-cpu-usage");
    assert!(quota.population.unwrap() >= 1, "{quota:?}");

    // The DryRun baseline policy rolls the catalog up; missing components count against it.
    let policies: Api<MetricPolicy> = env.api();
    let p = eventually("the baseline policy rolls the catalog up", || async {
        let p = policies.get("catalog-baseline").await.ok()?;
        let s = p.status?;
        (s.metrics.len() == metric_names.len() && s.state != PolicyState::Unknown).then_some(s)
    })
    .await;
    assert!(p.coverage.unwrap() < 100.0, "Prometheus and trivy-operator are absent: {:?}", p.coverage);
    assert_eq!(p.state, PolicyState::NonCompliant, "score {:?}", p.score);
    assert!(p.active_remediations.iter().all(|r| r.dry_run), "DryRun never changes the cluster");
}

/// A catalog metric's failing objects on fixture files (evaluated by the engine offline).
fn failing(metric: &str, fixture: &str) -> BTreeSet<String> {
    let doc = load::load(&[root().join("charts/secmetrics/catalog/pod-security.yaml")])
        .unwrap()
        .into_iter()
        .find(|d| d.value["metadata"]["name"] == metric)
        .expect("catalog metric");
    let m: SecurityMetric = serde_json::from_value(doc.value).unwrap();
    let CompiledSource::Kubernetes(k) = engine::compile(&m.spec).unwrap() else { panic!("{metric}") };
    let mut index = ObjectIndex::default();
    for kind in k.kinds() {
        index.ensure_kind(&kind);
    }
    for d in load::load(&[root().join("tests/fixtures/catalog").join(fixture)]).unwrap() {
        index.apply(
            &Kind::new(d.value["apiVersion"].as_str().unwrap(), d.value["kind"].as_str().unwrap()),
            d.value,
        );
    }
    let tally = k.evaluate_all(&Pass::new(chrono::Utc::now()), &index, &Visibility::Cluster).unwrap();
    engine::aggregate::measure(&k, &tally, usize::MAX).offenders.into_iter().map(|o| o.name).collect()
}

#[tokio::test]
async fn pod_security_metrics_agree_with_pod_security_admission() {
    let Some(env) = harness::setup("pssadm").await else { return };
    let levels = ["baseline", "restricted"];
    let mut guards = Vec::new();
    for level in levels {
        let ns = format!("{}-{level}", env.namespace);
        env.create_namespace(&ns, &[("pod-security.kubernetes.io/enforce", level)]).await;
        guards.push(NamespaceGuard::new(&env, &ns));
    }
    let pods: Vec<Value> = load::load(&[root().join("tests/fixtures/catalog/pod-security.yaml")])
        .unwrap()
        .into_iter()
        .map(|d| d.value)
        .filter(|v| v["kind"] == "Pod" && v["metadata"]["namespace"] == "pss")
        .collect();
    let mut compared = 0;
    for level in levels {
        let rejected_by_metric = failing(&format!("pod-security-{level}"), "pod-security.yaml");
        let ns = format!("{}-{level}", env.namespace);
        let api: Api<DynamicObject> =
            Api::namespaced_with(env.admin.clone(), &ns, &ApiResource::erase::<Pod>(&()));
        let dry_run = PostParams { dry_run: true, ..Default::default() };
        for mut pod in pods.clone() {
            let name = pod["metadata"]["name"].as_str().unwrap().to_string();
            if pod["spec"].get("ephemeralContainers").is_some() {
                continue; // ephemeral containers cannot be set when a pod is created
            }
            pod["metadata"]["namespace"] = json!(ns);
            let admitted = match api.create(&dry_run, &serde_json::from_value(pod).unwrap()).await {
                Ok(_) => true,
                Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains("violates PodSecurity") => {
                    false
                }
                Err(e) => panic!("{name}: the fixture must be a valid pod: {e}"),
            };
            assert_eq!(
                admitted,
                !rejected_by_metric.contains(&name),
                "{name} at {level}: admission {} it, the catalog metric {} it",
                if admitted { "admits" } else { "rejects" },
                if rejected_by_metric.contains(&name) { "fails" } else { "passes" },
            );
            compared += 1;
        }
    }
    assert_eq!(compared, 2 * (pods.len() - 1), "every creatable fixture pod, at both levels");
}
