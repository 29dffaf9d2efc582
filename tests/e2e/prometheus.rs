//! The `prometheus` source against a real Prometheus (Debian's package, started here on
//! 127.0.0.1) scraping a small exporter this test serves with known series.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use kube::api::Api;
use secmetrics::api::SecurityMetric;
use secmetrics::api::security_metric::SecurityMetricStatus;
use serde_json::{Value, json};

use crate::harness::{NamespaceGuard, eventually};
use crate::metric_policy::create;
use crate::operator;
use crate::security_metric::status_where;

/// The exporter's series: requests by tenant and code.
const SERIES: &str = "# TYPE e2e_requests counter\n\
e2e_requests_total{tenant=\"a\",code=\"401\"} 3\n\
e2e_requests_total{tenant=\"a\",code=\"403\"} 1\n\
e2e_requests_total{tenant=\"b\",code=\"401\"} 4\n";

/// Serves SERIES on /metrics from a thread, for as long as the test runs.
fn exporter() -> SocketAddr {
    exporter_of(SERIES.to_string())
}

/// Serves `series` on /metrics from a thread, for as long as the test runs.
fn exporter_of(series: String) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 2048];
            let _ = conn.read(&mut buf);
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{series}",
                series.len()
            );
            let _ = conn.write_all(response.as_bytes());
        }
    });
    addr
}

/// A Prometheus process scraping the exporter every second; killed when dropped.
struct Prometheus {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    web: bool,
}

impl Prometheus {
    fn start(exporter: SocketAddr, dir: PathBuf) -> Self {
        Self::start_with(exporter, dir, None)
    }

    /// With a `--web.config.file` (TLS, basic auth).
    fn start_with(exporter: SocketAddr, dir: PathBuf, web_config: Option<String>) -> Self {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut p = Prometheus { child: None, port, dir, web: web_config.is_some() };
        std::fs::create_dir_all(&p.dir).unwrap();
        if let Some(web) = web_config {
            std::fs::write(p.dir.join("web.yml"), web).unwrap();
        }
        std::fs::create_dir_all(&p.dir).unwrap();
        std::fs::write(
            p.dir.join("prometheus.yml"),
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n  - job_name: e2e\n    static_configs: [{{targets: ['{exporter}']}}]\n"
            ),
        )
        .unwrap();
        p.restart();
        p
    }

    fn restart(&mut self) {
        let binary = std::env::var("SECMETRICS_PROMETHEUS").unwrap_or_else(|_| "/usr/bin/prometheus".into());
        assert!(
            std::path::Path::new(&binary).exists(),
            "{binary} not found: run scripts/setup (it installs Debian's prometheus package)"
        );
        let log = std::fs::File::create(self.dir.join("prometheus.log")).unwrap();
        let mut cmd = Command::new(binary);
        if self.web {
            cmd.arg(format!("--web.config.file={}", self.dir.join("web.yml").display()));
        }
        let child = cmd
            .arg(format!("--config.file={}", self.dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", self.dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The instant value of `promql` (a plain GET, independent of the operator's client).
    fn value(&self, promql: &str) -> Option<f64> {
        let mut conn = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        let q: String = promql
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b == b'_' {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        write!(conn, "GET /api/v1/query?query={q} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            .ok()?;
        let mut response = String::new();
        conn.read_to_string(&mut response).ok()?;
        let body: Value = serde_json::from_str(response.split_once("\r\n\r\n")?.1).ok()?;
        body["data"]["result"][1].as_str()?.parse().ok().filter(|v: &f64| v.is_finite())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

fn prometheus_metric(ns: &str, test_ns: &str, name: &str, source: Value) -> Value {
    json!({
        "apiVersion": "secmetrics.io/v1alpha1", "kind": "SecurityMetric",
        "metadata": {"name": name, "namespace": ns, "labels": {"e2e": test_ns}},
        "spec": {
            "displayName": name, "description": "Unauthorized API requests, from Prometheus.",
            "type": "Operational", "category": "ApiUsage",
            "owner": {"team": "platform", "responsibility": "OrchestratedServiceProvider"},
            "source": {"prometheus": source},
            "objective": {"operator": "<=", "target": 100},
            "interval": "10s"
        }
    })
}

fn condition<'a>(s: &'a SecurityMetricStatus, t: &str) -> (&'a str, &'a str, &'a str) {
    let c = s.conditions.iter().find(|c| c.type_ == t).unwrap();
    (c.status.as_str(), c.reason.as_str(), c.message.as_str())
}

#[tokio::test]
async fn prometheus_metrics_converge_fail_clearly_and_recover() {
    let Some((env, _op)) = operator::setup_platform("prometheus").await else { return };
    let ns = env.namespace.clone();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/e2e-prometheus").join(&ns);
    let mut prom = Prometheus::start(exporter(), dir);
    // Prometheus has scraped the exporter: the expected values, computed here.
    let total =
        eventually("Prometheus has the series", || async { prom.value("scalar(sum(e2e_requests_total))") })
            .await;
    assert_eq!(total, 8.0);

    let url = prom.url();
    for (name, source) in [
        ("scalar", json!({"address": url, "query": "scalar(sum(e2e_requests_total))"})),
        ("summed", json!({"address": url, "query": "e2e_requests_total{code=\"401\"}"})),
        ("per-tenant", json!({"address": url, "query": "e2e_requests_total", "tenantLabel": "tenant"})),
        ("bad-promql", json!({"address": url, "query": "sum(e2e_requests_total"})),
    ] {
        let mut m = prometheus_metric(&ns, &ns, name, source);
        if name == "per-tenant" {
            m["spec"]["tenancy"] = json!({});
        }
        create::<SecurityMetric>(&env, &m).await;
    }
    // A tenant may not point the operator at an address of its choosing.
    let tenant_ns = format!("{ns}-tenant");
    env.create_namespace(&tenant_ns, &[]).await;
    let _guard = NamespaceGuard::new(&env, &tenant_ns);
    create::<SecurityMetric>(
        &env,
        &prometheus_metric(&tenant_ns, &ns, "ssrf", json!({"address": url, "query": "up"})),
    )
    .await;

    let s = status_where(&env, &ns, "scalar", "scalar converges", |s| s.value == Some(8.0)).await;
    assert_eq!(s.state, secmetrics::api::security_metric::MetricState::Compliant);
    let s = status_where(&env, &ns, "summed", "vector summed", |s| s.value == Some(7.0)).await;
    assert_eq!(s.population, Some(2), "two series with code 401");
    let s = status_where(&env, &ns, "per-tenant", "per tenant", |s| s.value == Some(8.0)).await;
    let tenants: Vec<(&str, Option<f64>)> = s.tenants.iter().map(|t| (t.name.as_str(), t.value)).collect();
    assert_eq!(tenants, [("a", Some(4.0)), ("b", Some(4.0))]);
    let s = status_where(&env, &ns, "bad-promql", "the PromQL error", |s| !s.conditions.is_empty()).await;
    let (status, reason, message) = condition(&s, "SourceAvailable");
    assert_eq!((status, reason), ("False", "PrometheusQueryError"), "{message}");
    assert!(message.contains("parse error"), "Prometheus' own words: {message}");
    let s =
        status_where(&env, &tenant_ns, "ssrf", "the tenant's address refused", |s| !s.conditions.is_empty())
            .await;
    assert_eq!(condition(&s, "SourceAvailable").1, "AddressNotAllowed");

    // Prometheus stops: within an interval the metric says so (and has no value).
    prom.stop();
    let s = status_where(&env, &ns, "scalar", "Prometheus unreachable", |s| {
        s.conditions.iter().any(|c| c.type_ == "SourceAvailable" && c.status == "False")
    })
    .await;
    let (_, reason, message) = condition(&s, "SourceAvailable");
    assert_eq!(reason, "PrometheusUnreachable", "{message}");
    assert_eq!(s.state, secmetrics::api::security_metric::MetricState::Unknown);
    // It comes back (same port, same data): the metric recovers.
    prom.restart();
    status_where(&env, &ns, "scalar", "recovered", |s| s.value == Some(8.0)).await;
}

/// A bcrypt hash of `e2e-password` (cost 4), for Prometheus' basic_auth_users.
const PASSWORD_HASH: &str = "$2b$04$UayTk44Fa5vK0wZLtEQFiOcvwOQ6.VQ0zNKMroWwgqbLPT/9MTB1S";

/// A CA and a server certificate for 127.0.0.1 signed by it, made with openssl in `dir`.
fn certificates(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    for args in [
        "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 1 -subj /CN=e2e-ca",
        "req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1",
        "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 1 -extfile san.ext",
    ] {
        let out = Command::new("openssl").args(args.split(' ')).current_dir(dir).output().expect("openssl");
        assert!(out.status.success(), "openssl {args}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[tokio::test]
async fn prometheus_behind_tls_and_basic_auth_is_queried_with_credentials_from_secrets() {
    let Some(env) = crate::harness::setup("prom-auth").await else { return };
    env.install_crds().await;
    let ns = env.namespace.clone();
    // The chart grants reading exactly these two Secrets in the platform namespace.
    let platform = format!("platformNamespaces={{{ns}}}");
    operator::install_chart_rbac_with(
        &env,
        &["--set", &platform, "--set", "prometheus.authSecrets={prom-auth,prom-ca}"],
    );
    let _op = operator::start(&env, &[&ns]);

    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/e2e-prometheus").join(&ns);
    certificates(&dir);
    let web = format!(
        "tls_server_config: {{cert_file: {dir}/server.crt, key_file: {dir}/server.key}}\nbasic_auth_users: {{e2e: '{PASSWORD_HASH}'}}\n",
        dir = dir.display()
    );
    let prom = Prometheus::start_with(exporter(), dir.clone(), Some(web));
    let url = format!("https://127.0.0.1:{}", prom.port);

    let secrets: Api<k8s_openapi::api::core::v1::Secret> = env.api();
    let ca = std::fs::read_to_string(dir.join("ca.crt")).unwrap();
    for secret in [
        json!({"metadata": {"name": "prom-auth"}, "stringData": {"username": "e2e", "password": "e2e-password"}}),
        json!({"metadata": {"name": "prom-ca"}, "stringData": {"ca.crt": ca}}),
    ] {
        secrets.create(&Default::default(), &serde_json::from_value(secret).unwrap()).await.unwrap();
    }
    let query = "scalar(sum(e2e_requests_total))";
    let tls = json!({"caSecretRef": "prom-ca"});
    let auth = json!({"type": "Basic", "secretRef": "prom-auth"});
    for (name, source) in [
        ("authed", json!({"address": url, "query": query, "tls": tls, "auth": auth})),
        ("no-credentials", json!({"address": url, "query": query, "tls": tls})),
        ("system-roots", json!({"address": url, "query": query, "auth": auth})),
    ] {
        create::<SecurityMetric>(&env, &prometheus_metric(&ns, &ns, name, source)).await;
    }
    status_where(&env, &ns, "authed", "the authenticated query converges", |s| s.value == Some(8.0)).await;
    let s = status_where(&env, &ns, "no-credentials", "refused without credentials", |s| {
        !s.conditions.is_empty()
    })
    .await;
    let (_, reason, message) = condition(&s, "SourceAvailable");
    assert_eq!(reason, "PrometheusHttpError", "{message}");
    assert!(message.starts_with("HTTP 401"), "{message}");
    let s = status_where(&env, &ns, "system-roots", "the private CA is not trusted by default", |s| {
        !s.conditions.is_empty()
    })
    .await;
    let (_, reason, message) = condition(&s, "SourceAvailable");
    assert_eq!(reason, "PrometheusUnreachable", "{message}");
    assert!(message.to_lowercase().contains("certificate"), "{message}");
}

/// A tenant's metrics through a tenant-safe endpoint see only their own namespace's series,
/// whatever their PromQL asks; an endpoint the platform did not mark tenant-safe is refused
/// before any query; foreign tenantLabel values are dropped. Platform metrics are unchanged.
#[tokio::test]
async fn tenant_queries_are_confined_to_their_namespace() {
    let Some(env) = crate::harness::setup("prom-tenant").await else { return };
    env.install_crds().await;
    operator::install_chart_rbac(&env);
    let ns = env.namespace.clone();
    let tenant_ns = format!("{ns}-t");
    env.create_namespace(&tenant_ns, &[]).await;
    let _guard = NamespaceGuard::new(&env, &tenant_ns);
    // Two series in the tenant's namespace (one claiming another tenant), one of a victim.
    let series = format!(
        "# TYPE e2e_tenant_requests counter\n\
         e2e_tenant_requests_total{{namespace=\"{tenant_ns}\",tenant=\"{tenant_ns}\"}} 2\n\
         e2e_tenant_requests_total{{namespace=\"{tenant_ns}\",tenant=\"intruder\"}} 5\n\
         e2e_tenant_requests_total{{namespace=\"victim\",tenant=\"victim\"}} 40\n\
         # TYPE e2e_secret_info gauge\n\
         e2e_secret_info{{namespace=\"victim\",secret=\"db-password\"}} 1\n"
    );
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/e2e-prometheus").join(&ns);
    let prom = Prometheus::start(exporter_of(series), dir);
    let total = eventually("Prometheus has the series", || async {
        prom.value("scalar(sum(e2e_tenant_requests_total) + sum(e2e_secret_info))")
    })
    .await;
    assert_eq!(total, 48.0);
    let url = prom.url();
    let _op = operator::start_with(
        &env,
        &[&ns],
        "operator",
        &[
            &format!("--prometheus-endpoint=safe={url}"),
            &format!("--prometheus-endpoint=open={url}"),
            "--prometheus-tenant-safe-endpoint=safe",
        ],
    );

    let safe = |query: &str| json!({"endpointRef": "safe", "query": query});
    for (name, source) in [
        ("everything", safe(r#"sum(e2e_tenant_requests_total{namespace=~".+"})"#)),
        ("any-name", safe(r#"sum({__name__=~"e2e_.*"})"#)),
        (
            "per-tenant",
            json!({"endpointRef": "safe", "query": "e2e_tenant_requests_total", "tenantLabel": "tenant"}),
        ),
        ("open", json!({"endpointRef": "open", "query": "sum(e2e_tenant_requests_total)"})),
        ("unparsable", safe("sum(e2e_tenant_requests_total")),
    ] {
        let mut m = prometheus_metric(&tenant_ns, &ns, name, source);
        if name == "per-tenant" {
            m["spec"]["tenancy"] = json!({});
        }
        create::<SecurityMetric>(&env, &m).await;
    }
    // The platform's own metric through the same endpoint: sent as written.
    create::<SecurityMetric>(
        &env,
        &prometheus_metric(&ns, &ns, "platform", safe("scalar(sum(e2e_tenant_requests_total))")),
    )
    .await;

    status_where(&env, &ns, "platform", "the platform sees everything", |s| s.value == Some(47.0)).await;
    let s =
        status_where(&env, &tenant_ns, "everything", "the tenant's sum", |s| !s.conditions.is_empty()).await;
    assert_eq!(s.value, Some(7.0), "only the tenant's namespace: {s:?}");
    // Any metric name: still only the tenant's series (not the victim's e2e_secret_info).
    let s =
        status_where(&env, &tenant_ns, "any-name", "the tenant's series", |s| !s.conditions.is_empty()).await;
    assert_eq!(s.value, Some(7.0), "{s:?}");
    let s =
        status_where(&env, &tenant_ns, "per-tenant", "own tenant only", |s| !s.conditions.is_empty()).await;
    let tenants: Vec<(&str, Option<f64>)> = s.tenants.iter().map(|t| (t.name.as_str(), t.value)).collect();
    assert_eq!(tenants, [(tenant_ns.as_str(), Some(2.0))], "{s:?}");
    assert_eq!((s.value, s.population), (Some(2.0), Some(1)), "the intruder's series is dropped");
    let s = status_where(&env, &tenant_ns, "open", "refused", |s| !s.conditions.is_empty()).await;
    let (status, reason, message) = condition(&s, "SourceAvailable");
    assert_eq!((status, reason), ("False", "EndpointNotTenantSafe"), "{message}");
    assert_eq!(
        message,
        "the Prometheus endpoint \"open\" is not marked tenant-safe by the platform, so metrics outside the platform namespaces may not query it (tenant-safe: safe); no query was sent"
    );
    assert_eq!(s.value, None);
    let s = status_where(&env, &tenant_ns, "unparsable", "refused", |s| !s.conditions.is_empty()).await;
    let (status, reason, message) = condition(&s, "SourceAvailable");
    assert_eq!((status, reason), ("False", "QueryNotConfined"), "{message}");
    assert!(message.contains("was not sent"), "{message}");
}

/// A TCP listener that accepts connections and never answers; counts them.
fn black_hole() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    (addr, accepted)
}

/// A Prometheus that never answers delays only its own metric, for at most the platform's
/// cap (not the 30s the metric asks), and the CRD refuses timeouts above 30s.
#[tokio::test]
async fn a_slow_prometheus_delays_only_its_own_metric_within_the_platform_cap() {
    let Some(env) = crate::harness::setup("prom-slow").await else { return };
    env.install_crds().await;
    operator::install_chart_rbac(&env);
    let ns = env.namespace.clone();

    // The CRD's maximum.
    let too_long = prometheus_metric(
        &ns,
        &ns,
        "too-long",
        json!({"address": "http://x:9090", "query": "up", "timeout": "31s"}),
    );
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        env.admin.clone(),
        &ns,
        &kube::discovery::ApiResource::erase::<SecurityMetric>(&()),
    );
    match api.create(&Default::default(), &serde_json::from_value(too_long).unwrap()).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422, "{s:?}");
            assert!(s.message.contains("source.prometheus.timeout may be at most 30s"), "{}", s.message);
        }
        other => panic!("a 31s timeout was accepted: {other:?}"),
    }

    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/e2e-prometheus").join(&ns);
    let prom = Prometheus::start(exporter(), dir);
    eventually("Prometheus has the series", || async { prom.value("scalar(sum(e2e_requests_total))") }).await;
    let _op = operator::start_with(&env, &[&ns], "operator", &["--prometheus-max-timeout=15s"]);

    let (hole, accepted) = black_hole();
    let slow = json!({"address": format!("http://{hole}"), "query": "up", "timeout": "30s"});
    create::<SecurityMetric>(&env, &prometheus_metric(&ns, &ns, "slow", slow)).await;
    eventually("the operator is waiting on the slow server", || async {
        (accepted.load(std::sync::atomic::Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    // While the slow query hangs, another metric converges.
    let fast = json!({"address": prom.url(), "query": "scalar(sum(e2e_requests_total))"});
    create::<SecurityMetric>(&env, &prometheus_metric(&ns, &ns, "fast", fast)).await;
    status_where(&env, &ns, "fast", "the fast metric converges", |s| s.value == Some(8.0)).await;
    let slow_now: SecurityMetric = Api::namespaced(env.admin.clone(), &ns).get("slow").await.unwrap();
    assert!(
        slow_now.status.as_ref().is_none_or(|s| s.conditions.is_empty()),
        "the slow query is still pending: {:?}",
        slow_now.status
    );
    // The slow metric gives up at the platform's cap.
    let s = status_where(&env, &ns, "slow", "the slow query timed out", |s| !s.conditions.is_empty()).await;
    let (status, reason, message) = condition(&s, "SourceAvailable");
    assert_eq!((status, reason), ("False", "PrometheusUnreachable"), "{message}");
    assert!(message.ends_with("no answer within 15s"), "{message}");
}
