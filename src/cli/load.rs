//! Reading manifests from files and directories: multi-document YAML, JSON, and `kind: List`
//! (what `kubectl get -o yaml|json` prints), with the file and document of every error.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

/// Where a document came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    /// 1-based document number in the file.
    pub document: usize,
    /// 1-based line where the document starts.
    pub line: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{} (document {})", self.file.display(), self.line, self.document)
    }
}

/// A manifest and where it came from.
#[derive(Clone, Debug)]
pub struct Document {
    pub origin: Origin,
    pub value: Json,
}

/// Input that could not be read, with its location.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: invalid YAML: {message}")]
    Yaml { path: PathBuf, message: String },
    #[error("{path}: invalid JSON at line {line} column {column}: {message}")]
    Json { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{origin}: {message}")]
    Invalid { origin: Origin, message: String },
}

/// Like [`load`], but hands each document to `visit` as soon as it is parsed. JSON files are
/// streamed: the items of a `List` are parsed one at a time and never held together, so a
/// cluster dump of any size costs the memory of one item plus what `visit` keeps.
pub fn visit(
    paths: &[PathBuf],
    mut visit: impl FnMut(Document) -> Result<(), LoadError>,
) -> Result<(), LoadError> {
    let mut files = Vec::new();
    for p in paths {
        collect(p, &mut files)?;
    }
    for f in files {
        if starts_with_brace(&f)? {
            stream_json(&f, &mut visit)?;
        } else {
            let mut docs = Vec::new();
            load_file(&f, &mut docs)?;
            for d in docs {
                visit(d)?;
            }
        }
    }
    Ok(())
}

fn starts_with_brace(path: &Path) -> Result<bool, LoadError> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|source| LoadError::Io { path: path.into(), source })?;
    let mut buf = [0u8; 256];
    let n = file.read(&mut buf).map_err(|source| LoadError::Io { path: path.into(), source })?;
    Ok(buf[..n].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'))
}

/// Streams one JSON document: a List's items one by one, or the single object.
fn stream_json(
    path: &Path,
    visit: &mut dyn FnMut(Document) -> Result<(), LoadError>,
) -> Result<(), LoadError> {
    use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};

    struct Top<'a> {
        origin: Origin,
        visit: &'a mut dyn FnMut(Document) -> Result<(), LoadError>,
        failed: &'a mut Option<LoadError>,
        /// The list's apiVersion and kind, filled into items that lack them.
        list: (String, String),
    }
    struct Items<'a, 'b>(&'b mut Top<'a>);

    impl<'de> DeserializeSeed<'de> for Items<'_, '_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }
    impl<'de> Visitor<'de> for Items<'_, '_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of objects")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while let Some(Strict(item)) = seq.next_element::<Strict>()? {
                if self.0.failed.is_none() {
                    let (api_version, kind) = &self.0.list;
                    let value = fill_item(api_version, kind, item);
                    let doc = Document { origin: self.0.origin.clone(), value };
                    if let Err(e) = (self.0.visit)(doc) {
                        *self.0.failed = Some(e);
                    }
                }
            }
            Ok(())
        }
    }
    impl<'de> Visitor<'de> for Top<'_> {
        type Value = Option<serde_json::Map<String, Json>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a Kubernetes object or List")
        }
        fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Self::Value, A::Error> {
            use serde::de::Error;
            let mut rest = serde_json::Map::new();
            let mut was_list = false;
            while let Some(key) = map.next_key::<String>()? {
                if rest.contains_key(&key) || (key == "items" && was_list) {
                    return Err(A::Error::custom(format!("duplicate field {key:?}")));
                }
                let is_list = || {
                    // `kubectl get -o json` writes `items` before `kind`: read the file's
                    // top-level apiVersion and kind first (a second, allocation-free pass).
                    let (api_version, kind) = match (rest.get("apiVersion"), rest.get("kind")) {
                        (Some(a), Some(k)) => {
                            (a.as_str().map(str::to_string), k.as_str().map(str::to_string))
                        }
                        _ => top_kind(&self.origin.file),
                    };
                    let (a, k) = (api_version.unwrap_or_default(), kind.unwrap_or_default());
                    is_list_kind(&a, &k).then_some((a, k))
                };
                match (key == "items").then(is_list).flatten() {
                    Some(list) => {
                        self.list = list;
                        map.next_value_seed(Items(&mut self))?;
                        was_list = true;
                    }
                    None => {
                        let Strict(value) = map.next_value()?;
                        rest.insert(key, value);
                    }
                }
            }
            Ok((!was_list).then_some(rest))
        }
    }

    let file = std::fs::File::open(path).map_err(|source| LoadError::Io { path: path.into(), source })?;
    let mut de = serde_json::Deserializer::from_reader(std::io::BufReader::with_capacity(1 << 16, file));
    let mut failed = None;
    let origin = Origin { file: path.into(), document: 1, line: 1 };
    let single = {
        let top =
            Top { origin: origin.clone(), visit: &mut *visit, failed: &mut failed, list: Default::default() };
        serde::Deserializer::deserialize_map(&mut de, top).and_then(|v| de.end().map(|_| v))
    };
    let single = single.map_err(|e| LoadError::Json {
        path: path.into(),
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    if let Some(obj) = single {
        visit(Document { origin, value: Json::Object(obj) })?;
    }
    Ok(())
}

/// Reads every `.yaml`, `.yml` and `.json` file under `paths` (files are read whatever their
/// extension), in path order, flattening `List` documents into their items.
pub fn load(paths: &[PathBuf]) -> Result<Vec<Document>, LoadError> {
    let mut files = Vec::new();
    for p in paths {
        collect(p, &mut files)?;
    }
    let mut docs = Vec::new();
    for f in files {
        load_file(&f, &mut docs)?;
    }
    Ok(docs)
}

fn collect(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    let meta = std::fs::metadata(path).map_err(|source| LoadError::Io { path: path.into(), source })?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|source| LoadError::Io { path: path.into(), source })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            let is_manifest =
                e.extension().and_then(|x| x.to_str()).is_some_and(|x| matches!(x, "yaml" | "yml" | "json"));
            if e.is_dir() || is_manifest {
                collect(&e, out)?;
            }
        }
    } else {
        out.push(path.to_path_buf());
    }
    Ok(())
}

fn load_file(path: &Path, out: &mut Vec<Document>) -> Result<(), LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io { path: path.into(), source })?;
    if text.trim_start().starts_with('{') {
        let Strict(value) = serde_json::from_str(&text).map_err(|e| LoadError::Json {
            path: path.into(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
        push(Origin { file: path.into(), document: 1, line: 1 }, value, out)?;
        return Ok(());
    }
    let values: Vec<Json> = serde_saphyr::from_multiple(&text).map_err(|e| LoadError::Yaml {
        path: path.into(),
        // The first line says where ("line L column C: ..."); the rest is a source snippet.
        message: e.to_string().lines().next().unwrap_or_default().trim_start_matches("error: ").to_string(),
    })?;
    let starts = document_starts(&text);
    for (i, value) in values.into_iter().filter(|v| !v.is_null()).enumerate() {
        let origin = Origin { file: path.into(), document: i + 1, line: starts.get(i).copied().unwrap_or(1) };
        push(origin, value, out)?;
    }
    Ok(())
}

/// The first content line of each non-empty document.
fn document_starts(text: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut pending = true;
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("---") {
            pending = true;
            continue;
        }
        let content = line.trim();
        if pending && !content.is_empty() && !content.starts_with('#') {
            starts.push(i + 1);
            pending = false;
        }
    }
    starts
}

fn push(origin: Origin, mut value: Json, out: &mut Vec<Document>) -> Result<(), LoadError> {
    if !value.is_object() {
        return Err(LoadError::Invalid { origin, message: "a manifest must be a mapping".into() });
    }
    let api_version = value["apiVersion"].as_str().unwrap_or_default().to_string();
    let kind = value["kind"].as_str().unwrap_or_default().to_string();
    if is_list_kind(&api_version, &kind) && value["items"].is_array() {
        let Json::Array(items) = value["items"].take() else { unreachable!() };
        for item in items {
            out.push(Document { origin: origin.clone(), value: fill_item(&api_version, &kind, item) });
        }
    } else {
        out.push(Document { origin, value });
    }
    Ok(())
}

/// Built-in kinds whose typed lists (`PodList`, what the API itself returns) are flattened,
/// by group version. Any other `...List` kind is one object like any other.
const LISTED_KINDS: &[(&str, &[&str])] = &[
    (
        "v1",
        &[
            "ConfigMap",
            "Endpoints",
            "Event",
            "LimitRange",
            "Namespace",
            "Node",
            "PersistentVolume",
            "PersistentVolumeClaim",
            "Pod",
            "PodTemplate",
            "ReplicationController",
            "ResourceQuota",
            "Secret",
            "Service",
            "ServiceAccount",
        ],
    ),
    ("apps/v1", &["ControllerRevision", "DaemonSet", "Deployment", "ReplicaSet", "StatefulSet"]),
    ("batch/v1", &["CronJob", "Job"]),
    ("networking.k8s.io/v1", &["Ingress", "IngressClass", "NetworkPolicy"]),
    ("rbac.authorization.k8s.io/v1", &["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]),
    ("policy/v1", &["PodDisruptionBudget"]),
    ("autoscaling/v1", &["HorizontalPodAutoscaler"]),
    ("autoscaling/v2", &["HorizontalPodAutoscaler"]),
    ("storage.k8s.io/v1", &["CSIDriver", "StorageClass", "VolumeAttachment"]),
    ("discovery.k8s.io/v1", &["EndpointSlice"]),
    ("coordination.k8s.io/v1", &["Lease"]),
    ("scheduling.k8s.io/v1", &["PriorityClass"]),
    ("apiextensions.k8s.io/v1", &["CustomResourceDefinition"]),
    (
        "admissionregistration.k8s.io/v1",
        &[
            "MutatingWebhookConfiguration",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
            "ValidatingWebhookConfiguration",
        ],
    ),
    ("secmetrics.io/v1alpha1", &["MetricPolicy", "SecurityMetric"]),
];

/// Whether a document of this apiVersion and kind is a list to flatten: `v1 List` (what
/// `kubectl get -o yaml|json` prints) or the typed list of a built-in kind.
pub fn is_list_kind(api_version: &str, kind: &str) -> bool {
    if kind == "List" {
        return api_version == "v1";
    }
    kind.strip_suffix("List").is_some_and(|item| {
        LISTED_KINDS.iter().any(|(gv, kinds)| *gv == api_version && kinds.contains(&item))
    })
}

/// An item of a typed list carries the list's apiVersion and item kind when it has none (the
/// API omits them in lists).
fn fill_item(api_version: &str, kind: &str, mut item: Json) -> Json {
    if kind != "List"
        && let Some(obj) = item.as_object_mut()
    {
        obj.entry("apiVersion").or_insert_with(|| Json::String(api_version.into()));
        obj.entry("kind").or_insert_with(|| Json::String(kind.trim_end_matches("List").into()));
    }
    item
}

/// The top-level apiVersion and kind of a JSON file, read without keeping anything else.
fn top_kind(path: &Path) -> (Option<String>, Option<String>) {
    use serde::de::{IgnoredAny, MapAccess, Visitor};
    struct Top;
    impl<'de> Visitor<'de> for Top {
        type Value = (Option<String>, Option<String>);
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let (mut api_version, mut kind) = (None, None);
            while let Some(key) = map.next_key::<String>()? {
                match key.as_str() {
                    "apiVersion" => api_version = map.next_value::<Json>()?.as_str().map(str::to_string),
                    "kind" => kind = map.next_value::<Json>()?.as_str().map(str::to_string),
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok((api_version, kind))
        }
    }
    let Ok(file) = std::fs::File::open(path) else { return (None, None) };
    let mut de = serde_json::Deserializer::from_reader(std::io::BufReader::with_capacity(1 << 16, file));
    serde::Deserializer::deserialize_map(&mut de, Top).unwrap_or((None, None))
}

/// A JSON value whose objects never repeat a key: YAML refuses duplicate keys, and so does the
/// API server's strict field validation; serde_json alone would keep the last one silently.
struct Strict(Json);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, MapAccess, SeqAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Json;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
                Ok(Json::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
                Ok(Json::from(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
                Ok(Json::from(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Json, E> {
                Ok(serde_json::Number::from_f64(v).map_or(Json::Null, Json::Number))
            }
            fn visit_str<E>(self, v: &str) -> Result<Json, E> {
                Ok(Json::String(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Json, E> {
                Ok(Json::String(v))
            }
            fn visit_unit<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_none<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
                let mut out = Vec::new();
                while let Some(Strict(v)) = seq.next_element()? {
                    out.push(v);
                }
                Ok(Json::Array(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
                let mut out = serde_json::Map::new();
                while let Some(key) = map.next_key::<String>()? {
                    if out.contains_key(&key) {
                        return Err(A::Error::custom(format!("duplicate field {key:?}")));
                    }
                    let Strict(v) = map.next_value()?;
                    out.insert(key, v);
                }
                Ok(Json::Object(out))
            }
        }
        d.deserialize_any(V).map(Strict)
    }
}

/// Fields of `input` that deserializing into a type dropped: unknown fields. Defaults may add
/// fields but never remove them, so whatever `input` has and `typed` lacks was not understood.
pub fn unknown_fields(input: &Json, typed: &Json) -> Vec<String> {
    fn walk(prefix: &str, a: &Json, b: &Json, out: &mut Vec<String>) {
        match (a, b) {
            (Json::Object(a), Json::Object(b)) => {
                for (k, av) in a {
                    let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    match b.get(k) {
                        None if !av.is_null() => out.push(path),
                        None => {}
                        Some(bv) => walk(&path, av, bv, out),
                    }
                }
            }
            (Json::Array(a), Json::Array(b)) => {
                for (i, (av, bv)) in a.iter().zip(b).enumerate() {
                    walk(&format!("{prefix}[{i}]"), av, bv, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", input, typed, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn multi_document_yaml_lists_and_json() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.yaml",
            "# comment\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Pod, metadata: {name: p1}}\n- {apiVersion: v1, kind: Pod, metadata: {name: p2}}\n",
        );
        write(
            dir.path(),
            "b.json",
            r#"{"apiVersion": "v1", "kind": "PodList", "items": [{"kind": "Pod", "metadata": {"name": "p3"}}]}"#,
        );
        write(dir.path(), "ignored.txt", "not: read");
        let docs = load(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<_> = docs.iter().map(|d| d.value["metadata"]["name"].as_str().unwrap()).collect();
        assert_eq!(names, vec!["a", "p1", "p2", "p3"]);
        assert_eq!((docs[0].origin.line, docs[0].origin.document), (2, 1));
        assert_eq!((docs[1].origin.line, docs[1].origin.document), (8, 2));
    }

    #[test]
    fn streamed_json_lists_and_single_objects() {
        let dir = tempfile::tempdir().unwrap();
        let list = write(
            dir.path(),
            "list.json",
            r#" {"apiVersion": "v1", "items": [{"metadata": {"name": "a"}}, {"metadata": {"name": "b"}}], "kind": "List"}"#,
        );
        let single = write(dir.path(), "one.json", r#"{"kind": "Pod", "metadata": {"name": "c"}}"#);
        let mut names = Vec::new();
        visit(&[list, single], |d| {
            names.push(d.value["metadata"]["name"].as_str().unwrap().to_string());
            Ok(())
        })
        .unwrap();
        assert_eq!(names, vec!["a", "b", "c"]);
        let bad = write(dir.path(), "bad.json", "{\"items\": [{\"a\": 1}, {\"b\": ]}");
        let err = visit(&[bad], |_| Ok(())).unwrap_err().to_string();
        assert!(err.contains("bad.json: invalid JSON at line 1 column"), "{err}");
    }

    #[test]
    fn errors_name_file_and_position() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "bad.yaml", "a: 1\n  b: 2\n");
        let err = load(&[p]).unwrap_err().to_string();
        assert!(err.contains("bad.yaml: invalid YAML: line 2 column 4"), "{err}");
        let p = write(dir.path(), "bad.json", "{\"a\": 1,\n \"b\": }");
        let err = load(&[p]).unwrap_err().to_string();
        assert!(err.contains("bad.json: invalid JSON at line 2 column 7"), "{err}");
        let err = load(&[dir.path().join("missing.yaml")]).unwrap_err().to_string();
        assert!(err.contains("missing.yaml: No such file"), "{err}");
        let p = write(dir.path(), "scalar.yaml", "just a string\n");
        assert!(
            load(&[p])
                .unwrap_err()
                .to_string()
                .contains("scalar.yaml:1 (document 1): a manifest must be a mapping")
        );
    }

    #[test]
    fn unknown_fields_are_found_by_round_trip() {
        let input = json!({"spec": {"objective": {"operator": ">=", "tagret": 1}, "list": [{"a": 1, "zz": 2}]}, "x": null});
        let typed = json!({"spec": {"objective": {"operator": ">=", "target": 0}, "list": [{"a": 1}]}});
        assert_eq!(unknown_fields(&input, &typed), vec!["spec.list[0].zz", "spec.objective.tagret"]);
    }

    #[test]
    fn duplicate_json_keys_are_errors_with_their_position() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("top.json", "{\"kind\": \"Pod\",\n \"kind\": \"Secret\"}", 2),
            ("nested.json", "{\"kind\": \"Pod\", \"spec\": {\"a\": 1,\n\n \"a\": 2}}", 3),
            (
                "item.json",
                "{\"apiVersion\": \"v1\", \"kind\": \"List\", \"items\": [\n{\"kind\": \"Pod\", \"data\": {}, \"data\": {}}]}",
                2,
            ),
            ("items.json", "{\"apiVersion\": \"v1\", \"kind\": \"List\", \"items\": [],\n \"items\": []}", 2),
        ];
        for (name, text, line) in cases {
            let p = write(dir.path(), name, text);
            for err in [
                load(std::slice::from_ref(&p)).unwrap_err().to_string(),
                visit(std::slice::from_ref(&p), |_| Ok(())).unwrap_err().to_string(),
            ] {
                assert!(err.contains(&format!("{name}: invalid JSON at line {line} column")), "{err}");
                assert!(err.contains("duplicate field"), "{err}");
            }
        }
        let p = write(dir.path(), "dup.yaml", "kind: Pod\nkind: Secret\n");
        assert!(load(&[p]).unwrap_err().to_string().contains("dup.yaml: invalid YAML"));
    }

    #[test]
    fn only_v1_list_and_typed_lists_of_known_kinds_are_flattened() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "lists.yaml",
            "apiVersion: v1\nkind: SecretList\nitems: [{metadata: {name: s}}]\n---\n\
             apiVersion: example.com/v1\nkind: ScanList\nmetadata: {name: scans}\nitems: [{metadata: {name: x}}]\n---\n\
             apiVersion: example.com/v1\nkind: List\nmetadata: {name: fake}\nitems: [{metadata: {name: y}}]\n",
        );
        let docs = load(&[p]).unwrap();
        let got: Vec<(&str, &str, &str)> = docs
            .iter()
            .map(|d| {
                let v = &d.value;
                (
                    v["apiVersion"].as_str().unwrap(),
                    v["kind"].as_str().unwrap(),
                    v["metadata"]["name"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("v1", "Secret", "s"),
                ("example.com/v1", "ScanList", "scans"),
                ("example.com/v1", "List", "fake")
            ]
        );
        // Streamed: the same rule, whether `kind` comes before or after `items`.
        for (name, text) in [
            (
                "after.json",
                r#"{"apiVersion": "example.com/v1", "items": [{"metadata": {"name": "x"}}], "kind": "ScanList", "metadata": {"name": "scans"}}"#,
            ),
            (
                "before.json",
                r#"{"apiVersion": "example.com/v1", "kind": "ScanList", "items": [{"metadata": {"name": "x"}}], "metadata": {"name": "scans"}}"#,
            ),
        ] {
            let p = write(dir.path(), name, text);
            let mut seen = Vec::new();
            visit(&[p], |d| {
                seen.push(d.value["kind"].as_str().unwrap_or_default().to_string());
                Ok(())
            })
            .unwrap();
            assert_eq!(seen, vec!["ScanList"], "{name}");
        }
        let p = write(
            dir.path(),
            "pods.json",
            r#"{"items": [{"metadata": {"name": "p"}}], "kind": "PodList", "apiVersion": "v1"}"#,
        );
        let mut seen = Vec::new();
        visit(&[p], |d| {
            seen.push(format!("{} {}", d.value["apiVersion"], d.value["kind"]));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![r#""v1" "Pod""#]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        /// Any text, read as YAML or as (streamed) JSON, is documents or a located error.
        #[test]
        fn any_text_loads_or_fails_with_a_located_message(
            text in r#"[{}\[\]:,"a-z0-9 \n-]{0,80}|\{"(apiVersion|kind|items|a)": ("v1"|"List"|"PodList"|\[\{\}\]|\{"a": 1, "a": 2\}|1e999)(, "(apiVersion|kind|items|a)": ("v1"|"List"|\[\]|\[\{"kind": "Pod"\}\]|null)){0,4}\}"#
        ) {
            let dir = tempfile::tempdir().unwrap();
            for name in ["in.yaml", "in.json"] {
                let p = write(dir.path(), name, &text);
                if let Err(e) = load(std::slice::from_ref(&p)) {
                    proptest::prop_assert!(e.to_string().contains(name), "{e}");
                }
                if let Err(e) = visit(std::slice::from_ref(&p), |_| Ok(())) {
                    proptest::prop_assert!(e.to_string().contains(name), "{e}");
                }
            }
        }
    }
}
