//! Shared fixture for end-to-end tests against the local control plane (`tests/cluster/`).
//!
//! `SECMETRICS_E2E_KUBECONFIG` (admin) and `SECMETRICS_E2E_OPERATOR_KUBECONFIG` (the operator's
//! identity, with only the RBAC a test grants) select the cluster; `scripts/test` sets both.
//! Without them every e2e test prints that it was skipped and passes.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{Condition, await_condition, conditions};
use kube::{Client, Config, Resource};
use serde::de::DeserializeOwned;

/// How long any wait in an e2e test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(60);

/// One test's view of the cluster: an admin client and a namespace of its own, deleted on drop.
pub struct TestEnv {
    pub admin: Client,
    pub namespace: String,
    pub operator_kubeconfig: PathBuf,
    pub admin_kubeconfig: PathBuf,
}

/// The cluster for `test`, or `None` (and a note on stderr) when e2e tests are not configured.
pub async fn setup(test: &str) -> Option<TestEnv> {
    let Some(admin_kubeconfig) = std::env::var_os("SECMETRICS_E2E_KUBECONFIG").map(PathBuf::from) else {
        eprintln!("e2e test {test} skipped: SECMETRICS_E2E_KUBECONFIG is not set (run scripts/test)");
        return None;
    };
    let operator_kubeconfig = std::env::var_os("SECMETRICS_E2E_OPERATOR_KUBECONFIG")
        .map(PathBuf::from)
        .expect("SECMETRICS_E2E_OPERATOR_KUBECONFIG must be set with SECMETRICS_E2E_KUBECONFIG");
    let admin = client_from(&admin_kubeconfig).await;
    let namespace = format!("e2e-{}-{}", test.replace('_', "-"), suffix());
    let env = TestEnv { admin, namespace, operator_kubeconfig, admin_kubeconfig };
    env.create_namespace(&env.namespace, &[]).await;
    Some(env)
}

/// A client authenticated by `kubeconfig`.
pub async fn client_from(kubeconfig: &PathBuf) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.expect("kubeconfig");
    Client::try_from(config).expect("client")
}

fn suffix() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{:x}{:x}", std::process::id() % 0xfff, nanos % 0xfffff)
}

impl TestEnv {
    /// A client with the operator's identity.
    pub async fn operator_client(&self) -> Client {
        client_from(&self.operator_kubeconfig).await
    }

    /// Creates a namespace with labels, removed when the test ends, and waits for its
    /// "default" ServiceAccount (created by the controller-manager) so pods can be created.
    pub async fn create_namespace(&self, name: &str, labels: &[(&str, &str)]) {
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": labels.iter().cloned().collect::<std::collections::BTreeMap<_, _>>()}
        }))
        .unwrap();
        Api::<Namespace>::all(self.admin.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        let sas: Api<ServiceAccount> = Api::namespaced(self.admin.clone(), name);
        wait_for(sas, "default", conditions::is_created()).await;
    }

    /// Applies the operator's CRDs (server-side apply) and waits until they are established.
    pub async fn install_crds(&self) {
        let crds: Api<CustomResourceDefinition> = Api::all(self.admin.clone());
        for crd in secmetrics::api::crds() {
            let name = crd.metadata.name.clone().unwrap();
            crds.patch(&name, &PatchParams::apply("secmetrics-e2e").force(), &Patch::Apply(&crd))
                .await
                .unwrap_or_else(|e| panic!("apply CRD {name}: {e}"));
            wait_for(crds.clone(), &name, conditions::is_crd_established()).await;
        }
    }

    /// A namespaced Api in the test's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.admin.clone(), &self.namespace)
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        // Namespace deletion is asynchronous in Kubernetes; start it and let the
        // controller-manager finish. Runs on its own thread because Drop cannot await.
        // The test's client is driven by the test's runtime, which is blocked here: use a new one.
        delete_namespace_blocking(self.admin_kubeconfig.clone(), self.namespace.clone());
    }
}

/// Deletes an extra namespace when the test ends.
pub struct NamespaceGuard {
    kubeconfig: PathBuf,
    name: String,
}

impl NamespaceGuard {
    pub fn new(env: &TestEnv, name: &str) -> Self {
        NamespaceGuard { kubeconfig: env.admin_kubeconfig.clone(), name: name.to_string() }
    }
}

impl Drop for NamespaceGuard {
    fn drop(&mut self) {
        delete_namespace_blocking(self.kubeconfig.clone(), self.name.clone());
    }
}

fn delete_namespace_blocking(kubeconfig: PathBuf, ns: String) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let client = client_from(&kubeconfig).await;
            let _ = Api::<Namespace>::all(client).delete(&ns, &DeleteParams::background()).await;
        });
    })
    .join()
    .ok();
}

/// Waits until `cond` holds for the named object, failing the test after [`WAIT`].
pub async fn wait_for<K>(api: Api<K>, name: &str, cond: impl Condition<K>) -> K
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    match tokio::time::timeout(WAIT, await_condition(api, name, cond)).await {
        Ok(Ok(Some(obj))) => obj,
        Ok(Ok(None)) => panic!("{name} was deleted while waiting"),
        Ok(Err(e)) => panic!("watching {name}: {e}"),
        Err(_) => panic!("timed out after {WAIT:?} waiting for {name}"),
    }
}

/// Waits until the object with `uid` is gone, failing the test after [`WAIT`].
pub async fn wait_deleted<K>(api: Api<K>, name: &str, uid: &str)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    match tokio::time::timeout(WAIT, await_condition(api, name, conditions::is_deleted(uid))).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!("watching {name}: {e}"),
        Err(_) => panic!("timed out after {WAIT:?} waiting for {name} to be deleted"),
    }
}

/// Polls `check` every 100ms until it returns `Some`, failing the test after [`WAIT`].
/// For conditions no watch can express (e.g. "this identity is now allowed").
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {WAIT:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Path of the kubectl built with the control plane.
pub fn kubectl() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/cluster/bin/kubectl")
}
