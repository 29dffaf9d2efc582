//! The local control plane behaves like a real cluster: structural CRDs, server-side apply on
//! the status subresource, watches, RBAC for the operator's identity, and the controller-manager.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use secmetrics::api::{FIELD_MANAGER, SecurityMetric};
use serde_json::json;

use crate::fixtures;
use crate::harness::{self, WAIT, eventually};

#[tokio::test]
async fn crds_are_structural_and_established() {
    let Some(env) = harness::setup("crds_established").await else { return };
    env.install_crds().await;
    let crds: Api<CustomResourceDefinition> = Api::all(env.admin.clone());
    for crd in secmetrics::api::crds() {
        let live = crds.get(crd.metadata.name.as_deref().unwrap()).await.unwrap();
        let conds = live.status.unwrap().conditions.unwrap_or_default();
        let status = |t: &str| conds.iter().find(|c| c.type_ == t).map(|c| c.status.clone());
        assert_eq!(status("Established").as_deref(), Some("True"), "{conds:?}");
        assert_eq!(status("NamesAccepted").as_deref(), Some("True"), "{conds:?}");
        assert_eq!(status("NonStructuralSchema"), None, "schema must be structural: {conds:?}");
    }
}

#[tokio::test]
async fn status_written_with_server_side_apply_is_seen_by_a_watch() {
    let Some(env) = harness::setup("status_ssa").await else { return };
    env.install_crds().await;
    let metrics: Api<SecurityMetric> = env.api();
    metrics.create(&PostParams::default(), &fixtures::typed(&fixtures::non_root_metric("m1"))).await.unwrap();

    // Start watching before the write, so the update must arrive through the watch.
    let watch = watcher(metrics.clone(), watcher::Config::default().fields("metadata.name=m1"))
        .applied_objects()
        .try_filter(|m| futures::future::ready(m.status.as_ref().and_then(|s| s.value) == Some(42.0)))
        .boxed();

    let patch = json!({
        "apiVersion": "secmetrics.io/v1alpha1",
        "kind": "SecurityMetric",
        "status": {"value": 42.0, "state": "Breached"}
    });
    metrics
        .patch_status("m1", &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .unwrap();

    let seen = tokio::time::timeout(WAIT, watch.take(1).try_collect::<Vec<_>>())
        .await
        .expect("watch event")
        .unwrap();
    let status = seen[0].status.clone().unwrap();
    assert_eq!(status.state, secmetrics::api::security_metric::MetricState::Breached);

    let live = metrics.get("m1").await.unwrap();
    let managers = live.metadata.managed_fields.unwrap_or_default();
    assert!(
        managers.iter().any(|m| m.manager.as_deref() == Some(FIELD_MANAGER)
            && m.operation.as_deref() == Some("Apply")
            && m.subresource.as_deref() == Some("status")),
        "status must be owned by field manager {FIELD_MANAGER}: {managers:?}"
    );
    // The status subresource keeps spec writes and status writes apart.
    assert_eq!(live.spec, fixtures::typed(&fixtures::non_root_metric("m1")).spec);
}

async fn operator_may_list_secrets(env: &harness::TestEnv) -> bool {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some("list".into()),
                resource: Some("secrets".into()),
                namespace: Some(env.namespace.clone()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(env.operator_client().await);
    let answer = api.create(&PostParams::default(), &review).await.unwrap();
    answer.status.unwrap().allowed
}

#[tokio::test]
async fn operator_identity_is_forbidden_until_granted() {
    let Some(env) = harness::setup("rbac").await else { return };
    let secrets: Api<Secret> = Api::namespaced(env.operator_client().await, &env.namespace);
    match secrets.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
        other => panic!("the operator identity must be forbidden before any binding, got {other:?}"),
    }
    assert!(!operator_may_list_secrets(&env).await);

    // A Role in this test's namespace only: tests run in parallel, and a cluster-wide grant
    // would leak into the other tests' namespaces (the version test asserts "no").
    let name = "secret-reader";
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": name},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}]
    }))
    .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": "secmetrics", "namespace": "secmetrics-system"}]
    }))
    .unwrap();
    let roles: Api<Role> = env.api();
    let bindings: Api<RoleBinding> = env.api();
    roles.create(&PostParams::default(), &role).await.unwrap();
    bindings.create(&PostParams::default(), &binding).await.unwrap();

    // RBAC changes reach the authorizer through its informer: wait until they do.
    eventually("the binding grants list secrets", || async {
        operator_may_list_secrets(&env).await.then_some(())
    })
    .await;
    secrets.list(&ListParams::default()).await.expect("list secrets after the grant");

    bindings.delete(name, &DeleteParams::default()).await.unwrap();
    roles.delete(name, &DeleteParams::default()).await.unwrap();
}

#[tokio::test]
async fn controller_manager_creates_pods_and_collects_garbage() {
    let Some(env) = harness::setup("kcm").await else { return };
    let deployments: Api<Deployment> = env.api();
    let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}
        }
    }))
    .unwrap();
    deployments.create(&PostParams::default(), &deployment).await.unwrap();

    let pods: Api<Pod> = env.api();
    let created = eventually("the Deployment's pods exist", || async {
        let list = pods.list(&ListParams::default().labels("app=web")).await.ok()?;
        (list.items.len() == 2).then_some(list.items)
    })
    .await;

    deployments.delete("web", &DeleteParams::background()).await.unwrap();
    for pod in created {
        let uid = pod.metadata.uid.clone().unwrap();
        harness::wait_deleted(pods.clone(), pod.metadata.name.as_deref().unwrap(), &uid).await;
    }
}

#[tokio::test]
async fn kubectl_and_server_report_the_pinned_release() {
    let Some(env) = harness::setup("version").await else { return };
    let go_mod =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cluster/go.mod")).unwrap();
    let pinned = go_mod
        .lines()
        .find_map(|l| l.trim().strip_prefix("k8s.io/kubernetes "))
        .expect("go.mod pins k8s.io/kubernetes")
        .trim()
        .to_string();
    let out = std::process::Command::new(harness::kubectl())
        .arg("--kubeconfig")
        .arg(&env.admin_kubeconfig)
        .args(["version", "-o", "json"])
        .output()
        .expect("run kubectl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["clientVersion"]["gitVersion"], pinned.as_str());
    assert_eq!(v["serverVersion"]["gitVersion"], pinned.as_str());

    let out = std::process::Command::new(harness::kubectl())
        .arg("--kubeconfig")
        .arg(&env.operator_kubeconfig)
        .args(["auth", "can-i", "list", "secrets", "-n", &env.namespace])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no");
}
