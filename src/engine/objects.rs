//! Observed objects as the engine sees them: pruned, converted to CEL once per version, and
//! indexed by kind. Shared by the controller (fed by watches) and `secmetrics evaluate` (fed
//! by files), so both run the same engine on the same data shapes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::Value as Json;

use super::node::Node;

/// An API kind as `apiVersion` + `kind`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kind {
    pub api_version: String,
    pub kind: String,
}

/// The pattern of an apiVersion as the API server spells it: `version` for the core group, or
/// `group/version` where the group has a dot or is one of the dotless built-in groups (CRD groups
/// must have a dot). The CRD holds it for `resource.apiVersion`, so `/v1`, `v1/`, ` v1`,
/// `core/v1` and `V1` are refused at admission and by `secmetrics evaluate`.
pub const API_VERSION_PATTERN: &str = r"^(([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)+[a-z0-9]([-a-z0-9]*[a-z0-9])?/|(apps|batch|autoscaling|policy|extensions)/)?v[0-9]+((alpha|beta)[0-9]+)?$";

/// The one spelling of an apiVersion that the engine, the watches and the metadata-only rule
/// use: surrounding spaces and slashes dropped, lower case, and the core group as `v1` however
/// it is written (`/v1`, `v1/`, ` v1`, `core/v1`, `V1`: each would otherwise be a kind of its own
/// that discovery may still resolve to core Secrets, whose data would then be read).
pub fn canonical_api_version(api_version: &str) -> String {
    let t = api_version.trim().trim_matches('/').trim().to_ascii_lowercase();
    match t.split_once('/') {
        Some((group, version)) => {
            let (group, version) = (group.trim(), version.trim().trim_matches('/').trim());
            if group.is_empty() || group == "core" {
                version.to_string()
            } else {
                format!("{group}/{version}")
            }
        }
        None => t,
    }
}

impl Kind {
    /// `apiVersion` (in its canonical spelling, see [`canonical_api_version`]) and `kind`.
    pub fn new(api_version: impl AsRef<str>, kind: impl Into<String>) -> Self {
        Kind { api_version: canonical_api_version(api_version.as_ref()), kind: kind.into() }
    }

    /// Kinds whose contents the operator never reads (SPEC §3): only metadata is kept. Core
    /// group (the apiVersion is canonical) and the kind in any case, erring on the side of
    /// reading less.
    pub fn is_metadata_only(&self) -> bool {
        self.api_version == "v1"
            && (self.kind.eq_ignore_ascii_case("Secret") || self.kind.eq_ignore_ascii_case("ConfigMap"))
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.api_version, self.kind)
    }
}

/// Namespace (empty for cluster-scoped objects) and name: the order offenders are listed in.
/// Shared strings: every metric's results refer to the same key without copying it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

/// One observed object, ready for evaluation.
pub struct CachedObject {
    pub key: ObjectKey,
    /// The object (`object` in expressions), in compact form.
    pub node: Node,
}

impl std::fmt::Debug for CachedObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CachedObject({}/{})", self.key.namespace, self.key.name)
    }
}

/// Removes what no metric needs and what must never be read before an object is cached:
/// managedFields, the last-applied annotation, and the data of Secrets and ConfigMaps.
pub fn prune(kind: &Kind, mut obj: Json) -> Json {
    if let Some(meta) = obj.get_mut("metadata").and_then(Json::as_object_mut) {
        meta.remove("managedFields");
        if let Some(ann) = meta.get_mut("annotations").and_then(Json::as_object_mut) {
            ann.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
    }
    if kind.is_metadata_only()
        && let Some(map) = obj.as_object_mut()
    {
        map.retain(|k, _| {
            k == "apiVersion" || k == "kind" || k == "metadata" || k == "type" || k == "immutable"
        });
    }
    obj
}

impl CachedObject {
    /// Builds the cached form of a (pruned) object.
    pub fn new(obj: &Json) -> Self {
        let meta = &obj["metadata"];
        let key = ObjectKey {
            // Shared: every object of a namespace holds the same string.
            namespace: super::node::key(meta["namespace"].as_str().unwrap_or_default()),
            name: meta["name"].as_str().unwrap_or_default().into(),
        };
        CachedObject { key, node: Node::from(obj) }
    }

    /// The object's labels.
    pub fn labels(&self) -> Option<&Node> {
        self.node.get("metadata")?.get("labels")
    }
}

/// A `map[string]string` field such as labels.
pub fn string_map(v: &Json) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default()
}

/// What the engine knows of a namespace: its labels, and its metadata as CEL's `namespace`.
pub struct NamespaceInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `namespaceObject` in expressions: name, labels and annotations.
    pub node: Node,
}

impl NamespaceInfo {
    /// From a Namespace object (JSON).
    pub fn new(obj: &Json) -> Self {
        let meta = &obj["metadata"];
        let name = meta["name"].as_str().unwrap_or_default().to_string();
        let labels = string_map(&meta["labels"]);
        let view = serde_json::json!({
            "name": name,
            "labels": meta.get("labels").cloned().unwrap_or_else(|| serde_json::json!({})),
            "annotations": meta.get("annotations").cloned().unwrap_or_else(|| serde_json::json!({})),
        });
        NamespaceInfo { name, labels, node: Node::from(&view) }
    }

    /// The namespace's tenant: the value of `tenant_label`, or its own name.
    pub fn tenant(&self, tenant_label: &str) -> &str {
        self.labels.get(tenant_label).map(String::as_str).unwrap_or(&self.name)
    }
}

/// The objects of one kind, in key order.
pub type KindTable = BTreeMap<ObjectKey, Arc<CachedObject>>;

/// Everything observed: objects by kind, and namespaces. Cloning is cheap (tables are shared
/// and copied only when written while a reader holds them).
#[derive(Clone, Default)]
pub struct ObjectIndex {
    kinds: HashMap<Kind, Arc<KindTable>>,
    namespaces: Arc<BTreeMap<String, Arc<NamespaceInfo>>>,
}

impl ObjectIndex {
    /// Inserts or replaces an object of `kind` (pruned first). Namespaces also land in the
    /// namespace table.
    pub fn apply(&mut self, kind: &Kind, obj: Json) {
        let obj = prune(kind, obj);
        if kind.api_version == "v1" && kind.kind == "Namespace" {
            let ns = NamespaceInfo::new(&obj);
            Arc::make_mut(&mut self.namespaces).insert(ns.name.clone(), Arc::new(ns));
        }
        let cached = CachedObject::new(&obj);
        let table = self.kinds.entry(kind.clone()).or_default();
        Arc::make_mut(table).insert(cached.key.clone(), Arc::new(cached));
    }

    /// Removes an object.
    pub fn delete(&mut self, kind: &Kind, key: &ObjectKey) {
        if kind.api_version == "v1" && kind.kind == "Namespace" {
            Arc::make_mut(&mut self.namespaces).remove(&*key.name);
        }
        if let Some(table) = self.kinds.get_mut(kind) {
            Arc::make_mut(table).remove(key);
        }
    }

    /// Replaces all objects of `kind` (a watch relist).
    pub fn reset(&mut self, kind: &Kind, objs: impl IntoIterator<Item = Json>) {
        self.kinds.insert(kind.clone(), Arc::new(KindTable::new()));
        if kind.api_version == "v1" && kind.kind == "Namespace" {
            self.namespaces = Arc::new(BTreeMap::new());
        }
        for o in objs {
            self.apply(kind, o);
        }
    }

    /// Marks `kind` as known even when it has no objects yet.
    pub fn ensure_kind(&mut self, kind: &Kind) {
        self.kinds.entry(kind.clone()).or_default();
    }

    /// The objects of `kind`, if the kind is known at all.
    pub fn objects(&self, kind: &Kind) -> Option<&Arc<KindTable>> {
        self.kinds.get(kind)
    }

    /// One object.
    pub fn get(&self, kind: &Kind, key: &ObjectKey) -> Option<&Arc<CachedObject>> {
        self.kinds.get(kind)?.get(key)
    }

    /// A namespace by name.
    pub fn namespace(&self, name: &str) -> Option<&Arc<NamespaceInfo>> {
        self.namespaces.get(name)
    }

    /// All namespaces, by name.
    pub fn namespaces(&self) -> impl Iterator<Item = &Arc<NamespaceInfo>> {
        self.namespaces.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prune_drops_managed_fields_last_applied_and_secret_data() {
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "s", "managedFields": [{}], "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": "{...}", "keep": "me"}},
            "data": {"password": "aHVudGVyMg=="}, "stringData": {"x": "y"}
        });
        let pruned = prune(&Kind::new("v1", "Secret"), secret);
        assert!(pruned.get("data").is_none() && pruned.get("stringData").is_none());
        assert!(pruned["metadata"].get("managedFields").is_none());
        assert_eq!(pruned["metadata"]["annotations"], json!({"keep": "me"}));
        assert_eq!(pruned["type"], "Opaque");
        let pod = prune(&Kind::new("v1", "Pod"), json!({"metadata": {"name": "p"}, "spec": {"a": 1}}));
        assert_eq!(pod["spec"]["a"], 1);
    }

    #[test]
    fn index_applies_deletes_and_shares_tables() {
        let kind = Kind::new("v1", "Pod");
        let mut idx = ObjectIndex::default();
        idx.apply(&kind, json!({"metadata": {"name": "a", "namespace": "n1"}}));
        let snapshot = idx.clone();
        idx.apply(&kind, json!({"metadata": {"name": "b", "namespace": "n1"}}));
        assert_eq!(snapshot.objects(&kind).unwrap().len(), 1, "a snapshot does not see later writes");
        assert_eq!(idx.objects(&kind).unwrap().len(), 2);
        idx.delete(&kind, &ObjectKey { namespace: "n1".into(), name: "a".into() });
        assert_eq!(idx.objects(&kind).unwrap().len(), 1);
    }

    #[test]
    fn tenant_comes_from_label_or_namespace_name() {
        let ns = NamespaceInfo::new(
            &json!({"metadata": {"name": "team-a-dev", "labels": {"secmetrics.io/tenant": "team-a"}}}),
        );
        assert_eq!(ns.tenant("secmetrics.io/tenant"), "team-a");
        assert_eq!(ns.tenant("other"), "team-a-dev");
    }
}

#[cfg(test)]
mod kind_tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_spelling_of_the_core_group_is_v1_and_secrets_stay_metadata_only() {
        for spelling in
            ["v1", "/v1", "v1/", " v1", "v1 ", "core/v1", "Core/V1", "V1", "//v1", "/ v1", " core / v1 "]
        {
            assert_eq!(canonical_api_version(spelling), "v1", "{spelling:?}");
            for kind in ["Secret", "ConfigMap", "secret", "CONFIGMAP"] {
                assert!(Kind::new(spelling, kind).is_metadata_only(), "{spelling:?} {kind}");
            }
            let secret = json!({"apiVersion": spelling, "kind": "Secret", "metadata": {"name": "s"},
                "data": {"password": "aHVudGVyMg=="}, "stringData": {"k": "v"}});
            let pruned = prune(&Kind::new(spelling, "Secret"), secret);
            assert!(pruned.get("data").is_none() && pruned.get("stringData").is_none(), "{pruned}");
        }
        assert_eq!(canonical_api_version("apps/v1"), "apps/v1");
        assert_eq!(canonical_api_version(" Networking.K8s.io/v1/"), "networking.k8s.io/v1");
        assert!(!Kind::new("apps/v1", "Secret").is_metadata_only());
    }

    #[test]
    fn the_crd_holds_the_pattern() {
        let crds = serde_json::to_string(&crate::api::crds()).unwrap();
        let pattern = serde_json::to_string(API_VERSION_PATTERN).unwrap();
        assert!(crds.contains(&format!("\"pattern\":{pattern}")));
    }

    #[test]
    fn the_pattern_admits_only_canonical_spellings() {
        let re = regex::Regex::new(API_VERSION_PATTERN).unwrap();
        for ok in [
            "v1",
            "apps/v1",
            "batch/v1",
            "networking.k8s.io/v1",
            "secmetrics.io/v1alpha1",
            "example.com/v2beta3",
        ] {
            assert!(re.is_match(ok), "{ok}");
            assert_eq!(canonical_api_version(ok), ok);
        }
        for bad in [
            "/v1", "v1/", " v1", "v1 ", "core/v1", "V1", "apps/", "/", "", "v1/v1", "Apps/v1", "foo/v1",
            "a..b/v1", "x.io/1",
        ] {
            assert!(!re.is_match(bad), "{bad:?}");
        }
    }
}
