//! Carrying out (Enforce) and undoing remediation steps against the API server.
//!
//! Objects a rule owns outright (NetworkPolicy, ResourceQuota) are written with server-side
//! apply, field manager `secmetrics`, one object per policy rule, so each apply is that rule's
//! whole intent. Labels, annotations and replicas on other people's objects are merge patches
//! (same field manager): an apply would claim the whole set of fields this manager ever set on
//! the object, so two rules labelling the same object would remove each other's labels.
//! Every step is one API request, so a failure never leaves a target half-changed.

use std::collections::BTreeMap;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use super::plan::Step;
use super::targets::PolicyPlace;
use crate::api::FIELD_MANAGER;
use crate::api::metric_policy::{ActionType, RemediationAction, TargetRef, reserved_key};

/// Annotation that operators before 0.x wrote on scaled workloads. Never trusted now (the
/// workload's owner can write it): the previous replicas live in the policy's status. Read
/// only to revert a remediation recorded by such an operator without `previousReplicas`, and
/// removed on revert.
pub const PREVIOUS_REPLICAS: &str = "secmetrics.io/previous-replicas";
/// Label on owned objects: the policy (`namespace.name`) that created them.
pub const POLICY_LABEL: &str = "secmetrics.io/policy";
/// Label on owned objects: the rule that created them.
pub const RULE_LABEL: &str = "secmetrics.io/rule";

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(
        "forbidden: the operator may not {verb} {resource} in namespace {namespace} (enable remediation.enforce in the chart to grant it)"
    )]
    Forbidden { verb: String, resource: String, namespace: String },
    #[error("{0}")]
    Api(#[from] kube::Error),
    #[error("{0}")]
    Invalid(String),
    /// The step is never allowed (recorded as Refused, not Failed).
    #[error("{0}")]
    Refused(String),
}

/// Checks that hold whatever the planner decided, right before a change: an object stored
/// before the CRD's rules (or a bug upstream) still cannot write a reserved key.
pub fn guard(step: &Step) -> Result<(), StepError> {
    if matches!(step.action, ActionType::Label | ActionType::Annotate)
        && let Some(key) = step.key.as_deref().filter(|k| reserved_key(k))
    {
        return Err(StepError::Refused(format!(
            "key {key} is reserved for Kubernetes or secmetrics: no policy may write it; nothing was touched"
        )));
    }
    Ok(())
}

/// One permission a step needs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Permission {
    pub verb: &'static str,
    pub group: String,
    pub resource: String,
    pub namespace: String,
}

/// The permissions `action` needs on `target` (Enforce only), to check them all before the
/// first change.
pub async fn permissions(
    client: &Client,
    action: ActionType,
    target: &TargetRef,
    revert: bool,
) -> Result<Vec<Permission>, StepError> {
    let ns = target.namespace.clone().unwrap_or_default();
    let p = |verb, group: &str, resource: &str| Permission {
        verb,
        group: group.to_string(),
        resource: resource.to_string(),
        namespace: ns.clone(),
    };
    Ok(match action {
        ActionType::Event | ActionType::Webhook => vec![],
        ActionType::NetworkIsolation if revert => vec![p("delete", "networking.k8s.io", "networkpolicies")],
        ActionType::NetworkIsolation => {
            vec![
                p("create", "networking.k8s.io", "networkpolicies"),
                p("patch", "networking.k8s.io", "networkpolicies"),
            ]
        }
        ActionType::ResourceQuota if revert => vec![p("delete", "", "resourcequotas")],
        ActionType::ResourceQuota => {
            vec![p("create", "", "resourcequotas"), p("patch", "", "resourcequotas")]
        }
        ActionType::ScaleToZero => {
            let resource = if target.kind == "StatefulSet" { "statefulsets" } else { "deployments" };
            vec![p("get", "apps", resource), p("patch", "apps", resource)]
        }
        ActionType::Label | ActionType::Annotate => {
            let ar = api_resource(client, target).await?;
            vec![p("patch", &ar.group, &ar.plural)]
        }
    })
}

/// Checks `wanted` with SelfSubjectAccessReviews; the first denied permission is the error.
pub async fn check(client: &Client, wanted: &[Permission]) -> Result<(), StepError> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    for w in wanted {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(w.verb.into()),
                    group: Some(w.group.clone()),
                    resource: Some(w.resource.clone()),
                    namespace: (!w.namespace.is_empty()).then(|| w.namespace.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = api.create(&PostParams::default(), &review).await?;
        if !answer.status.is_some_and(|s| s.allowed) {
            let resource =
                if w.group.is_empty() { w.resource.clone() } else { format!("{}.{}", w.resource, w.group) };
            let namespace = if w.namespace.is_empty() { "(cluster)".into() } else { w.namespace.clone() };
            return Err(StepError::Forbidden { verb: w.verb.into(), resource, namespace });
        }
    }
    Ok(())
}

async fn api_resource(client: &Client, t: &TargetRef) -> Result<ApiResource, StepError> {
    let (group, version) = match t.api_version.rsplit_once('/') {
        Some((g, v)) => (g, v),
        None => ("", t.api_version.as_str()),
    };
    let gvk = GroupVersionKind::gvk(group, version, &t.kind);
    let (ar, _caps) = kube::discovery::pinned_kind(client, &gvk).await?;
    Ok(ar)
}

async fn dynamic_api(client: &Client, t: &TargetRef) -> Result<Api<DynamicObject>, StepError> {
    let ar = api_resource(client, t).await?;
    Ok(match &t.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    })
}

fn merge_params() -> PatchParams {
    PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }
}

fn owner_labels(place: &PolicyPlace<'_>, rule: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/managed-by".to_string(), "secmetrics".to_string()),
        (POLICY_LABEL.to_string(), format!("{}.{}", place.namespace, place.name)),
        (RULE_LABEL.to_string(), rule.to_string()),
    ])
}

/// The replicas of the workload `t` now (what ScaleToZero records before it scales).
pub async fn replicas(client: &Client, t: &TargetRef) -> Result<i32, StepError> {
    let obj = dynamic_api(client, t).await?.get(&t.name).await?;
    Ok(replicas_of(&obj))
}

fn replicas_of(obj: &DynamicObject) -> i32 {
    obj.data
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .map_or(1, |r| r.clamp(0, i32::MAX.into()) as i32)
}

/// Makes the change of `step` (Enforce). Returns a note for the record.
///
/// ScaleToZero needs `step.previous_replicas`, recorded in status before this is called;
/// `fresh` (the count was just read for this step) makes the scale fail when the workload's
/// replicas changed since, so the record never holds a stale count.
pub async fn apply(
    client: &Client,
    place: &PolicyPlace<'_>,
    step: &Step,
    action: &RemediationAction,
    fresh: bool,
) -> Result<String, StepError> {
    guard(step)?;
    let t = &step.target;
    match step.action {
        ActionType::Event | ActionType::Webhook => Ok(String::new()),
        ActionType::Label | ActionType::Annotate => {
            let key = step.key.as_deref().ok_or_else(|| StepError::Invalid("no key".into()))?;
            let value = action.value.clone().unwrap_or_else(|| "true".into());
            let field = if step.action == ActionType::Label { "labels" } else { "annotations" };
            let api = dynamic_api(client, t).await?;
            api.patch(&t.name, &merge_params(), &Patch::Merge(json!({"metadata": {field: {key: value}}})))
                .await?;
            Ok(format!("{key}={value}"))
        }
        ActionType::NetworkIsolation => {
            let np = json!({
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": t.name, "namespace": t.namespace, "labels": owner_labels(place, &step.rule)},
                "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
            });
            ssa(client, t, np).await?;
            Ok("default-deny ingress and egress".into())
        }
        ActionType::ResourceQuota => {
            let hard = action.quota.clone().ok_or_else(|| StepError::Invalid("no quota".into()))?;
            let rq = json!({
                "apiVersion": "v1",
                "kind": "ResourceQuota",
                "metadata": {"name": t.name, "namespace": t.namespace, "labels": owner_labels(place, &step.rule)},
                "spec": {"hard": hard},
            });
            ssa(client, t, rq).await?;
            let limits: Vec<String> = hard.iter().map(|(k, v)| format!("{k}={}", v.0)).collect();
            Ok(format!("hard {}", limits.join(", ")))
        }
        ActionType::ScaleToZero => {
            let previous = step
                .previous_replicas
                .ok_or_else(|| StepError::Invalid("no recorded previous replicas".into()))?;
            let api = dynamic_api(client, t).await?;
            let patch = if fresh {
                let obj = api.get(&t.name).await?;
                let now = replicas_of(&obj);
                if now != previous {
                    return Err(StepError::Invalid(format!(
                        "replicas changed from {previous} to {now} since they were recorded; retrying"
                    )));
                }
                // resourceVersion makes the read-modify-write atomic: a concurrent change fails it.
                json!({"metadata": {"resourceVersion": obj.resource_version()}, "spec": {"replicas": 0}})
            } else {
                // Already held at zero by a recorded remediation (or recorded, not confirmed):
                // the count to restore is the record's.
                json!({"spec": {"replicas": 0}})
            };
            api.patch(&t.name, &merge_params(), &Patch::Merge(patch)).await?;
            Ok(format!("replicas {previous} -> 0 (previous replicas recorded in status)"))
        }
    }
}

async fn ssa(client: &Client, t: &TargetRef, obj: Value) -> Result<(), StepError> {
    let api = dynamic_api(client, t).await?;
    api.patch(&t.name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(obj)).await?;
    Ok(())
}

/// Undoes the change of `step` (Enforce). Undoing what is already undone succeeds.
pub async fn revert(client: &Client, step: &Step) -> Result<String, StepError> {
    let t = &step.target;
    let gone = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 404);
    match step.action {
        ActionType::Event | ActionType::Webhook => Ok(String::new()),
        ActionType::Label | ActionType::Annotate => {
            let key = step.key.as_deref().ok_or_else(|| StepError::Invalid("no key".into()))?;
            let field = if step.action == ActionType::Label { "labels" } else { "annotations" };
            let api = dynamic_api(client, t).await?;
            match api
                .patch(&t.name, &merge_params(), &Patch::Merge(json!({"metadata": {field: {key: null}}})))
                .await
            {
                Ok(_) => Ok(format!("{key} removed")),
                Err(e) if gone(&e) => Ok("target no longer exists".into()),
                Err(e) => Err(e.into()),
            }
        }
        ActionType::NetworkIsolation | ActionType::ResourceQuota => {
            let api = dynamic_api(client, t).await?;
            match api.delete(&t.name, &DeleteParams::default()).await {
                Ok(_) => Ok("deleted".into()),
                Err(e) if gone(&e) => Ok("already deleted".into()),
                Err(e) => Err(e.into()),
            }
        }
        ActionType::ScaleToZero => {
            let api = dynamic_api(client, t).await?;
            let replicas = match step.previous_replicas {
                Some(r) => r,
                // Recorded by an operator that kept the count on the workload: the only
                // memory of it there is.
                None => {
                    let obj = match api.get(&t.name).await {
                        Ok(o) => o,
                        Err(e) if gone(&e) => return Ok("target no longer exists".into()),
                        Err(e) => return Err(e.into()),
                    };
                    let Some(prev) = obj.annotations().get(PREVIOUS_REPLICAS).cloned() else {
                        return Ok("already restored".into());
                    };
                    prev.parse().map_err(|_| {
                        StepError::Invalid(format!("annotation {PREVIOUS_REPLICAS}={prev:?} is not a number"))
                    })?
                }
            };
            let patch = json!({
                "metadata": {"annotations": {PREVIOUS_REPLICAS: null}},
                "spec": {"replicas": replicas},
            });
            match api.patch(&t.name, &merge_params(), &Patch::Merge(patch)).await {
                Ok(_) => Ok(format!("replicas restored to {replicas}")),
                Err(e) if gone(&e) => Ok("target no longer exists".into()),
                Err(e) => Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    #[test]
    fn guard_refuses_reserved_keys_at_act_time() {
        let step = |action, key: &str| Step {
            rule: "r".into(),
            metric: "m".into(),
            action,
            key: Some(key.into()),
            target: TargetRef {
                api_version: "v1".into(),
                kind: "Pod".into(),
                namespace: Some("shop".into()),
                name: "p".into(),
            },
            dry_run: false,
            episode: Timestamp::UNIX_EPOCH,
            previous_replicas: None,
        };
        for (action, key) in [
            (ActionType::Label, "secmetrics.io/tenant"),
            (ActionType::Annotate, "pod-security.kubernetes.io/enforce"),
        ] {
            let e = guard(&step(action, key)).unwrap_err();
            assert!(matches!(e, StepError::Refused(_)), "{e}");
            assert!(e.to_string().starts_with(&format!("key {key} is reserved")), "{e}");
        }
        assert!(guard(&step(ActionType::Label, "example.com/quarantine")).is_ok());
    }
}
