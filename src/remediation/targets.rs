//! From a rule's scope to the objects each action touches: the metric itself, its offenders
//! (and their workloads), or the namespaces of its breached tenants. Exclusions and tenant
//! confinement (SPEC §3) are applied here, before anything is counted against `maxTargets`:
//! a tenant policy changes only namespaced objects in its own namespace (never a Namespace
//! object or anything else cluster-scoped), and platform namespaces are targets only when a
//! rule names them.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use super::events::stable_hash;
use super::plan::ActionTargets;
use crate::api::SecurityMetric;
use crate::api::metric_policy::{ActionType, RemediationRule, Scope, TargetRef, TriggerState};
use crate::api::security_metric::{DEFAULT_TENANT_LABEL, MetricState};

/// Namespaces no rule ever touches.
pub const ALWAYS_EXCLUDED: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// Where a policy lives and what it may touch.
#[derive(Clone, Debug)]
pub struct PolicyPlace<'a> {
    /// The policy's namespace.
    pub namespace: &'a str,
    /// The policy's name.
    pub name: &'a str,
    /// Whether the namespace is a platform namespace (cluster-wide actions allowed).
    pub platform: bool,
    /// The operator's own namespace (always excluded).
    pub operator_namespace: &'a str,
    /// The platform namespaces: never targets unless a rule names them
    /// (`includePlatformNamespaces`).
    pub platform_namespaces: &'a [String],
}

/// What may happen to one target a rule's scope selected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It is a target.
    Target,
    /// It is not a target (excluded, or outside the policy's reach); nothing is recorded.
    Excluded,
    /// It would be a target, but the policy may never change it: recorded as Refused.
    Refused(String),
}

impl PolicyPlace<'_> {
    /// Whether a target in `namespace` (a Namespace target: its own name) may be touched by `rule`.
    pub fn allows(&self, rule: &RemediationRule, namespace: Option<&str>) -> bool {
        let Some(ns) = namespace else { return false };
        if ALWAYS_EXCLUDED.contains(&ns) || ns == self.operator_namespace {
            return false;
        }
        if rule.excluded_namespaces.iter().any(|e| e == ns) {
            return false;
        }
        if self.platform_namespaces.iter().any(|p| p == ns)
            && !rule.include_platform_namespaces.iter().any(|p| p == ns)
        {
            return false;
        }
        self.platform || ns == self.namespace
    }

    /// What may happen to `t`, a target of an action of `rule` (`notification`: Event,
    /// Webhook, which change nothing).
    pub fn verdict(&self, rule: &RemediationRule, t: &TargetRef, notification: bool) -> Verdict {
        let cluster_scoped = t.namespace.is_none();
        if notification {
            // Notifications change nothing, so exclusions do not apply to them (an Event on a
            // metric in the operator's namespace is fine); confinement does.
            return if self.platform || (!cluster_scoped && t.namespace.as_deref() == Some(self.namespace)) {
                Verdict::Target
            } else {
                Verdict::Excluded
            };
        }
        if !self.allows(rule, target_namespace(t)) {
            return Verdict::Excluded;
        }
        if cluster_scoped && !self.platform {
            return Verdict::Refused(format!(
                "{t} is cluster-scoped: only policies in platform namespaces may change cluster-scoped objects, and {} is a tenant namespace; nothing was touched",
                self.namespace
            ));
        }
        Verdict::Target
    }

    /// Name of the objects (NetworkPolicy, ResourceQuota) a rule of this policy owns.
    pub fn owned_name(&self, rule: &str) -> String {
        format!("secmetrics-{rule}-{}", &stable_hash(&[self.namespace, self.name])[..8])
    }
}

fn namespace_ref(ns: &str) -> TargetRef {
    TargetRef { api_version: "v1".into(), kind: "Namespace".into(), namespace: None, name: ns.into() }
}

fn target_namespace(t: &TargetRef) -> Option<&str> {
    if t.kind == "Namespace" { Some(&t.name) } else { t.namespace.as_deref() }
}

/// The subjects of a rule for one metric, before they become per-action targets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Subjects {
    /// Objects (the metric itself, or its offenders).
    pub objects: Vec<TargetRef>,
    /// Namespaces (of the offenders, or of the breached tenants).
    pub namespaces: Vec<String>,
    /// Objects not listed in status (offenders beyond the status cap).
    pub unlisted: usize,
}

/// The metric as a target.
pub fn metric_ref(m: &SecurityMetric) -> TargetRef {
    TargetRef {
        api_version: "secmetrics.io/v1alpha1".into(),
        kind: "SecurityMetric".into(),
        namespace: m.namespace(),
        name: m.name_any(),
    }
}

/// The subjects of `scope` for metric `m`; `tenant_namespaces` maps each tenant to its namespaces.
pub fn subjects(
    scope: Scope,
    trigger: TriggerState,
    m: &SecurityMetric,
    tenant_namespaces: &BTreeMap<String, Vec<String>>,
) -> Subjects {
    let status = m.status.as_ref();
    let offenders = status.map(|s| s.offenders.as_slice()).unwrap_or_default();
    let api_version =
        m.spec.source.kubernetes.as_ref().map(|k| k.resource.api_version.clone()).unwrap_or_default();
    let offender_refs: Vec<TargetRef> = offenders
        .iter()
        .map(|o| TargetRef {
            // NamespaceCoverage offenders are namespaces, whatever kind the metric observes.
            api_version: if o.kind == "Namespace" { "v1".into() } else { api_version.clone() },
            kind: o.kind.clone(),
            namespace: o.namespace.clone(),
            name: o.name.clone(),
        })
        .collect();
    let unlisted =
        status.and_then(|s| s.offenders_total).map(|t| (t.max(0) as usize).saturating_sub(offenders.len()));
    // A Namespace offender (NamespaceCoverage metrics) is itself the namespace to act in.
    let offender_namespaces: BTreeSet<String> = offenders
        .iter()
        .filter_map(|o| if o.kind == "Namespace" { Some(o.name.clone()) } else { o.namespace.clone() })
        .collect();
    match scope {
        Scope::Metric => Subjects {
            objects: vec![metric_ref(m)],
            namespaces: offender_namespaces.into_iter().collect(),
            unlisted: unlisted.unwrap_or(0),
        },
        Scope::Offenders => Subjects {
            objects: offender_refs,
            namespaces: offender_namespaces.into_iter().collect(),
            unlisted: unlisted.unwrap_or(0),
        },
        Scope::Tenant => {
            let tenants = breached_tenants(trigger, m);
            let namespaces: BTreeSet<String> = tenants
                .iter()
                .flat_map(|t| tenant_namespaces.get(t).into_iter().flatten().cloned())
                .collect();
            Subjects {
                objects: namespaces.iter().map(|n| namespace_ref(n)).collect(),
                namespaces: namespaces.into_iter().collect(),
                unlisted: 0,
            }
        }
    }
}

/// Tenants in the trigger state: their own state, or (Anomalous) their own value outside
/// their own baseline.
pub fn breached_tenants(trigger: TriggerState, m: &SecurityMetric) -> Vec<String> {
    let tenants = m.status.as_ref().map(|s| s.tenants.as_slice()).unwrap_or_default();
    tenants
        .iter()
        .filter(|t| match trigger {
            TriggerState::Breached => t.state == MetricState::Breached,
            TriggerState::Warning => matches!(t.state, MetricState::Warning | MetricState::Breached),
            TriggerState::Anomalous => t.anomalous,
        })
        .map(|t| t.name.clone())
        .collect()
}

/// The tenant label of a metric.
pub fn tenant_label(m: &SecurityMetric) -> String {
    m.spec.tenancy.as_ref().map(|t| t.tenant_label.clone()).unwrap_or_else(|| DEFAULT_TENANT_LABEL.into())
}

/// Maps every tenant named in `tenants` to its namespaces (by label, or by name for
/// namespaces without the label).
pub async fn tenant_namespaces(
    client: &Client,
    label: &str,
    tenants: &BTreeSet<String>,
) -> Result<BTreeMap<String, Vec<String>>, kube::Error> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if tenants.is_empty() {
        return Ok(out);
    }
    for ns in Api::<Namespace>::all(client.clone()).list(&ListParams::default()).await? {
        let name = ns.name_any();
        let tenant = ns.labels().get(label).cloned().unwrap_or_else(|| name.clone());
        if tenants.contains(&tenant) {
            out.entry(tenant).or_default().push(name);
        }
    }
    Ok(out)
}

fn controller_of(refs: &[OwnerReference]) -> Option<&OwnerReference> {
    refs.iter().find(|r| r.controller == Some(true))
}

fn workload(kind: &str, namespace: &str, name: &str) -> TargetRef {
    TargetRef {
        api_version: "apps/v1".into(),
        kind: kind.into(),
        namespace: Some(namespace.into()),
        name: name.into(),
    }
}

/// The Deployment or StatefulSet behind an object (itself, or its controllers' chain).
pub async fn workload_of(client: &Client, t: &TargetRef) -> Result<Option<TargetRef>, kube::Error> {
    let Some(ns) = t.namespace.as_deref() else { return Ok(None) };
    let owner = match (t.api_version.as_str(), t.kind.as_str()) {
        ("apps/v1", "Deployment" | "StatefulSet") => return Ok(Some(t.clone())),
        ("apps/v1", "ReplicaSet") => {
            let rs = Api::<ReplicaSet>::namespaced(client.clone(), ns).get_opt(&t.name).await?;
            rs.and_then(|rs| controller_of(rs.owner_references()).cloned())
        }
        ("v1", "Pod") => {
            let pod = Api::<Pod>::namespaced(client.clone(), ns).get_opt(&t.name).await?;
            pod.and_then(|p| controller_of(p.owner_references()).cloned())
        }
        _ => None,
    };
    let Some(owner) = owner else { return Ok(None) };
    let next = TargetRef {
        api_version: owner.api_version,
        kind: owner.kind,
        namespace: Some(ns.to_string()),
        name: owner.name,
    };
    match next.kind.as_str() {
        "Deployment" | "StatefulSet" => Ok(Some(next)),
        "ReplicaSet" => Box::pin(workload_of(client, &next)).await,
        _ => Ok(None),
    }
}

/// Every Deployment and StatefulSet in `namespace`.
pub async fn workloads_in(client: &Client, namespace: &str) -> Result<Vec<TargetRef>, kube::Error> {
    let mut out = Vec::new();
    for d in Api::<Deployment>::namespaced(client.clone(), namespace).list(&ListParams::default()).await? {
        out.push(workload("Deployment", namespace, &d.name_any()));
    }
    for s in Api::<StatefulSet>::namespaced(client.clone(), namespace).list(&ListParams::default()).await? {
        out.push(workload("StatefulSet", namespace, &s.name_any()));
    }
    Ok(out)
}

/// The targets of every action of `rule` for metric `m`, after exclusions and confinement.
pub async fn resolve(
    client: &Client,
    place: &PolicyPlace<'_>,
    rule: &RemediationRule,
    m: &SecurityMetric,
    subjects: &Subjects,
) -> Result<Vec<ActionTargets>, kube::Error> {
    let mut out = Vec::new();
    for action in &rule.actions {
        let mut unlisted = subjects.unlisted;
        let raw: Vec<TargetRef> = match action.type_ {
            ActionType::Event | ActionType::Label | ActionType::Annotate => subjects.objects.clone(),
            ActionType::Webhook => {
                unlisted = 0;
                vec![metric_ref(m)]
            }
            ActionType::NetworkIsolation => {
                owned_in(place, rule, subjects, "networking.k8s.io/v1", "NetworkPolicy")
            }
            ActionType::ResourceQuota => owned_in(place, rule, subjects, "v1", "ResourceQuota"),
            ActionType::ScaleToZero => match rule.scope {
                Scope::Tenant => {
                    let mut all = Vec::new();
                    for ns in &subjects.namespaces {
                        if place.allows(rule, Some(ns)) {
                            all.extend(workloads_in(client, ns).await?);
                        }
                    }
                    all
                }
                Scope::Metric | Scope::Offenders => {
                    let objects = if rule.scope == Scope::Metric {
                        subjects_offenders(m)
                    } else {
                        subjects.objects.clone()
                    };
                    let mut all = Vec::new();
                    for o in &objects {
                        if place.allows(rule, target_namespace(o))
                            && let Some(w) = workload_of(client, o).await?
                        {
                            all.push(w);
                        }
                    }
                    all
                }
            },
        };
        let notification = matches!(action.type_, ActionType::Event | ActionType::Webhook);
        let mut targets: BTreeSet<TargetRef> = BTreeSet::new();
        let mut refused: BTreeMap<TargetRef, String> = BTreeMap::new();
        for t in raw {
            match place.verdict(rule, &t, notification) {
                Verdict::Target => {
                    targets.insert(t);
                }
                Verdict::Excluded => {}
                Verdict::Refused(why) => {
                    refused.insert(t, why);
                }
            }
        }
        let targets: Vec<TargetRef> = targets.into_iter().collect();
        let refused: Vec<(TargetRef, String)> = refused.into_iter().collect();
        let count = targets.len() + unlisted;
        let key = action.key.clone();
        out.push(ActionTargets { action: action.type_, key, targets, count, refused });
    }
    Ok(out)
}

fn subjects_offenders(m: &SecurityMetric) -> Vec<TargetRef> {
    subjects(Scope::Offenders, TriggerState::Breached, m, &BTreeMap::new()).objects
}

fn owned_in(
    place: &PolicyPlace<'_>,
    rule: &RemediationRule,
    s: &Subjects,
    api_version: &str,
    kind: &str,
) -> Vec<TargetRef> {
    s.namespaces
        .iter()
        .map(|ns| TargetRef {
            api_version: api_version.into(),
            kind: kind.into(),
            namespace: Some(ns.clone()),
            name: place.owned_name(&rule.name),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(excluded: &[&str]) -> RemediationRule {
        serde_json::from_value(serde_json::json!({
            "name": "r", "when": {"state": "Breached"}, "actions": [{"type": "Event"}],
            "excludedNamespaces": excluded
        }))
        .unwrap()
    }

    #[test]
    fn exclusions_and_confinement() {
        let platform = PolicyPlace {
            namespace: "platform",
            name: "p",
            platform: true,
            operator_namespace: "secmetrics-system",
            platform_namespaces: &[],
        };
        let tenant = PolicyPlace {
            namespace: "shop",
            name: "p",
            platform: false,
            operator_namespace: "secmetrics-system",
            platform_namespaces: &[],
        };
        let r = rule(&["legacy"]);
        for ns in ["kube-system", "kube-public", "kube-node-lease", "secmetrics-system", "legacy"] {
            assert!(!platform.allows(&r, Some(ns)), "{ns}");
        }
        assert!(platform.allows(&r, Some("shop")) && platform.allows(&r, Some("other")));
        assert!(tenant.allows(&r, Some("shop")));
        assert!(!tenant.allows(&r, Some("other")));
        assert!(!platform.allows(&r, None), "cluster-scoped objects are never touched");
    }

    fn places(platform_namespaces: &[String]) -> (PolicyPlace<'_>, PolicyPlace<'_>) {
        let platform = PolicyPlace {
            namespace: "platform",
            name: "p",
            platform: true,
            operator_namespace: "secmetrics-system",
            platform_namespaces,
        };
        let tenant = PolicyPlace { namespace: "shop", platform: false, ..platform.clone() };
        (platform, tenant)
    }

    fn ns_ref(name: &str) -> TargetRef {
        namespace_ref(name)
    }

    fn pod_ref(ns: &str) -> TargetRef {
        TargetRef {
            api_version: "v1".into(),
            kind: "Pod".into(),
            namespace: Some(ns.into()),
            name: "p".into(),
        }
    }

    #[test]
    fn tenant_policies_never_change_cluster_scoped_objects() {
        let (platform, tenant) = places(&[]);
        let r = rule(&[]);
        // Its own Namespace object: in reach, but cluster-scoped: refused, with the reason.
        match tenant.verdict(&r, &ns_ref("shop"), false) {
            Verdict::Refused(why) => assert_eq!(
                why,
                "Namespace shop is cluster-scoped: only policies in platform namespaces may change cluster-scoped objects, and shop is a tenant namespace; nothing was touched"
            ),
            v => panic!("{v:?}"),
        }
        // Another tenant's Namespace: not a target at all (confinement), nothing recorded.
        assert_eq!(tenant.verdict(&r, &ns_ref("other"), false), Verdict::Excluded);
        // Objects in its own namespace: targets; elsewhere: not.
        assert_eq!(tenant.verdict(&r, &pod_ref("shop"), false), Verdict::Target);
        assert_eq!(tenant.verdict(&r, &pod_ref("other"), false), Verdict::Excluded);
        // Notifications on a cluster-scoped object: not a target for a tenant.
        assert_eq!(tenant.verdict(&r, &ns_ref("shop"), true), Verdict::Excluded);
        // Other cluster-scoped kinds: never, for anyone.
        let node =
            TargetRef { api_version: "v1".into(), kind: "Node".into(), namespace: None, name: "shop".into() };
        assert_eq!(tenant.verdict(&r, &node, false), Verdict::Excluded);
        assert_eq!(platform.verdict(&r, &node, false), Verdict::Excluded);
        // A platform policy may label a tenant's Namespace.
        assert_eq!(platform.verdict(&r, &ns_ref("shop"), false), Verdict::Target);
    }

    #[test]
    fn platform_namespaces_are_targets_only_when_named() {
        let platform_namespaces = ["platform".to_string(), "observability".to_string()];
        let (platform, tenant) = places(&platform_namespaces);
        let r = rule(&[]);
        for ns in ["platform", "observability"] {
            assert!(!platform.allows(&r, Some(ns)), "{ns}, even the policy's own");
            assert_eq!(platform.verdict(&r, &ns_ref(ns), false), Verdict::Excluded);
            assert_eq!(platform.verdict(&r, &pod_ref(ns), false), Verdict::Excluded);
        }
        assert!(platform.allows(&r, Some("shop")));
        // Notifications (an Event on the platform's own metric) still happen.
        assert_eq!(platform.verdict(&r, &pod_ref("platform"), true), Verdict::Target);
        let named: RemediationRule = serde_json::from_value(serde_json::json!({
            "name": "r", "when": {"state": "Breached"}, "actions": [{"type": "Label", "key": "k"}],
            "includePlatformNamespaces": ["observability", "secmetrics-system", "kube-system", "shop"]
        }))
        .unwrap();
        assert!(platform.allows(&named, Some("observability")), "named");
        assert!(!platform.allows(&named, Some("platform")), "not named");
        // Naming never reaches the always-excluded namespaces.
        assert!(!platform.allows(&named, Some("secmetrics-system")));
        assert!(!platform.allows(&named, Some("kube-system")));
        // Hostile: a tenant naming a platform namespace (or another tenant's) reaches nothing more.
        assert!(!tenant.allows(&named, Some("observability")));
        let foreign: RemediationRule = serde_json::from_value(serde_json::json!({
            "name": "r", "when": {"state": "Breached"}, "actions": [{"type": "Label", "key": "k"}],
            "includePlatformNamespaces": ["platform", "other"]
        }))
        .unwrap();
        for ns in ["platform", "observability", "other"] {
            assert!(!tenant.allows(&foreign, Some(ns)), "{ns}");
            assert_eq!(tenant.verdict(&foreign, &pod_ref(ns), false), Verdict::Excluded);
        }
        assert!(tenant.allows(&foreign, Some("shop")));
    }

    #[test]
    fn subjects_per_scope() {
        let m: SecurityMetric = serde_json::from_value(serde_json::json!({
            "apiVersion": "secmetrics.io/v1alpha1", "kind": "SecurityMetric",
            "metadata": {"name": "m", "namespace": "platform"},
            "spec": {
                "displayName": "m", "description": "d", "type": "Technical", "category": "Other",
                "owner": {"team": "t", "responsibility": "ApplicationProvider"},
                "source": {"kubernetes": {"resource": {"apiVersion": "v1", "kind": "Pod"}, "passes": "true"}},
                "objective": {"operator": ">=", "target": 90}
            },
            "status": {
                "state": "Breached",
                "offenders": [
                    {"kind": "Pod", "namespace": "a", "name": "p1"},
                    {"kind": "Pod", "namespace": "b", "name": "p2"},
                    {"kind": "Namespace", "name": "c"}
                ],
                "offendersTotal": 6,
                "tenants": [
                    {"name": "t1", "state": "Breached"},
                    {"name": "t2", "state": "Warning"},
                    {"name": "t3", "state": "Compliant", "anomalous": true}
                ]
            }
        }))
        .unwrap();
        let s = subjects(Scope::Offenders, TriggerState::Breached, &m, &BTreeMap::new());
        assert_eq!(s.objects.len(), 3);
        assert_eq!(s.objects[0].to_string(), "Pod a/p1");
        assert_eq!(
            (s.objects[2].api_version.as_str(), s.objects[2].to_string().as_str()),
            ("v1", "Namespace c")
        );
        assert_eq!((s.namespaces.clone(), s.unlisted), (["a", "b", "c"].map(String::from).to_vec(), 3));
        let s = subjects(Scope::Metric, TriggerState::Breached, &m, &BTreeMap::new());
        assert_eq!(s.objects[0].to_string(), "SecurityMetric platform/m");
        let map = BTreeMap::from([
            ("t1".to_string(), vec!["t1-a".to_string(), "t1-b".to_string()]),
            ("t2".to_string(), vec!["t2-a".to_string()]),
        ]);
        let s = subjects(Scope::Tenant, TriggerState::Breached, &m, &map);
        assert_eq!(s.namespaces, ["t1-a", "t1-b"]);
        let s = subjects(Scope::Tenant, TriggerState::Warning, &m, &map);
        assert_eq!(s.namespaces, ["t1-a", "t1-b", "t2-a"]);
        let map = BTreeMap::from([("t3".to_string(), vec!["t3-a".to_string()])]);
        let s = subjects(Scope::Tenant, TriggerState::Anomalous, &m, &map);
        assert_eq!(s.namespaces, ["t3-a"], "only the tenant outside its own baseline");
    }
}
