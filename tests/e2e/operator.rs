//! Runs the operator binary against the test cluster under the Helm chart's RBAC.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::harness::TestEnv;

/// A running operator process, killed when dropped.
pub struct Operator {
    child: Child,
    log: PathBuf,
    probe: std::net::SocketAddr,
    admin_kubeconfig: PathBuf,
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // The operator's side of a failed test, where CI shows it.
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- last lines of {} ---", self.log.display());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

fn bin(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/cluster/bin").join(name)
}

/// Held by the tests that grant or revoke the chart's enforcement RBAC (a cluster-wide
/// ClusterRoleBinding for the one operator identity), so one test's grant does not show up in
/// another's "without RBAC" phase.
pub static ENFORCE_RBAC: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Renders the chart with `helm template` and applies its RBAC and ServiceAccount (not the
/// Deployment: the operator runs here as a process with the chart's identity).
pub fn install_chart_rbac(env: &TestEnv) {
    install_chart_rbac_with(env, &[]);
}

/// [`install_chart_rbac`] with extra `helm template` arguments (e.g. `--set remediation.enforce=true`).
pub fn install_chart_rbac_with(env: &TestEnv, values: &[&str]) {
    let chart = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("charts/secmetrics");
    let rendered = Command::new(bin("helm"))
        .args(["template", "secmetrics", "--kube-version", "1.36.3"])
        .arg(&chart)
        .args([
            "--namespace",
            "secmetrics-system",
            "--show-only",
            "templates/rbac.yaml",
            "--show-only",
            "templates/serviceaccount.yaml",
        ])
        .args(values)
        // The identity the tests scrape /metrics with (`Operator::get`).
        .args(["--set", "monitoring.metricsReaders[0].namespace=secmetrics-system"])
        .args(["--set", &format!("monitoring.metricsReaders[0].name={METRICS_READER}")])
        .output()
        .expect("run helm");
    assert!(rendered.status.success(), "helm template: {}", String::from_utf8_lossy(&rendered.stderr));
    let ns = Command::new(bin("kubectl"))
        .arg("--kubeconfig")
        .arg(&env.admin_kubeconfig)
        .args(["create", "namespace", "secmetrics-system"])
        .output()
        .unwrap();
    let _ = ns; // exists already when another test created it
    let mut apply = Command::new(bin("kubectl"))
        .arg("--kubeconfig")
        .arg(&env.admin_kubeconfig)
        .args(["apply", "--server-side", "--force-conflicts", "--field-manager", "e2e-chart", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    apply.stdin.take().unwrap().write_all(&rendered.stdout).unwrap();
    let out = apply.wait_with_output().unwrap();
    assert!(out.status.success(), "kubectl apply chart RBAC: {}", String::from_utf8_lossy(&out.stderr));
}

/// Starts `secmetrics run` with the operator's identity, managing only the metrics labelled
/// `e2e=<the test's namespace>` so that tests running in parallel do not interfere (each test
/// also elects its own leader, on a Lease named after its namespace).
pub fn start(env: &TestEnv, platform_namespaces: &[&str]) -> Operator {
    start_with(env, platform_namespaces, "operator", &[])
}

/// [`start`] as replica `replica` (its POD_NAME, the leader identity) with extra arguments.
pub fn start_with(env: &TestEnv, platform_namespaces: &[&str], replica: &str, extra: &[&str]) -> Operator {
    let logs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/e2e-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let log = logs.join(format!("{}-{replica}.log", env.namespace));
    let file = std::fs::File::create(&log).unwrap();
    // A free port for /metrics and the probes (bound and released: the operator binds it next).
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_secmetrics"));
    cmd.arg("run")
        .arg(format!("--probe-addr={probe}"))
        .args(["--debounce", "200ms"])
        .arg(format!("--metric-selector=e2e={}", env.namespace))
        .arg(format!("--leader-election-id={}", env.namespace))
        .args(extra)
        .env("KUBECONFIG", &env.operator_kubeconfig)
        .env("POD_NAME", replica)
        .env("RUST_LOG", "secmetrics=debug,info")
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    for p in platform_namespaces {
        cmd.arg(format!("--platform-namespace={p}"));
    }
    Operator {
        child: cmd.spawn().expect("start operator"),
        log,
        probe,
        admin_kubeconfig: env.admin_kubeconfig.clone(),
    }
}

impl Operator {
    /// Kills the process at once (SIGKILL): no lease release, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// GETs `path` from the operator's probe/metrics port: (status code, body); None while it
    /// is not listening.
    /// `/metrics` is read with the token of a ServiceAccount bound to the chart's
    /// metrics-reader ClusterRole.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let token = (path == "/metrics").then(|| metrics_reader_token(&self.admin_kubeconfig));
        self.get_with_token(path, token.as_deref())
    }

    /// GETs `path` with `token` as its bearer token (none: no Authorization header).
    pub fn get_with_token(&self, path: &str, token: Option<&str>) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(self.probe).ok()?;
        let auth = token.map(|t| format!("authorization: Bearer {t}\r\n")).unwrap_or_default();
        conn.write_all(format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n{auth}\r\n").as_bytes()).ok()?;
        let mut response = String::new();
        conn.read_to_string(&mut response).ok()?;
        let code = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response.split_once("\r\n\r\n")?.1.to_string();
        Some((code, body))
    }
}

/// The ServiceAccount (in secmetrics-system) the chart's RBAC lets read /metrics in e2e tests.
pub const METRICS_READER: &str = "e2e-metrics-reader";

/// A token of `namespace/name` (created if missing), from the TokenRequest API.
pub fn service_account_token(admin_kubeconfig: &std::path::Path, namespace: &str, name: &str) -> String {
    let kubectl = |args: &[&str]| {
        Command::new(bin("kubectl"))
            .arg("--kubeconfig")
            .arg(admin_kubeconfig)
            .args(args)
            .output()
            .expect("run kubectl")
    };
    let _ = kubectl(&["create", "namespace", namespace]);
    let _ = kubectl(&["-n", namespace, "create", "serviceaccount", name]);
    let out = kubectl(&["-n", namespace, "create", "token", name, "--duration", "1h"]);
    assert!(out.status.success(), "kubectl create token: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("token").trim().to_string()
}

/// The metrics reader's token, requested once per test binary.
fn metrics_reader_token(admin_kubeconfig: &std::path::Path) -> String {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| service_account_token(admin_kubeconfig, "secmetrics-system", METRICS_READER)).clone()
}

/// A test namespace with the CRDs and the chart's RBAC installed and an operator running:
/// the usual start of a test of the operator's behaviour.
pub async fn setup(test: &str, platform_namespaces: &[&str]) -> Option<(TestEnv, Operator)> {
    let env = crate::harness::setup(test).await?;
    env.install_crds().await;
    install_chart_rbac(&env);
    let op = start(&env, platform_namespaces);
    Some((env, op))
}

/// [`setup`] with the test's own namespace as the platform namespace (cluster-wide policies).
pub async fn setup_platform(test: &str) -> Option<(TestEnv, Operator)> {
    let env = crate::harness::setup(test).await?;
    env.install_crds().await;
    install_chart_rbac(&env);
    let ns = env.namespace.clone();
    let op = start(&env, &[&ns]);
    Some((env, op))
}
