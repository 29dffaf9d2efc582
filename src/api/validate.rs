//! Validation of a secmetrics object against its generated CRD schema, the way the API server
//! validates it: one source of truth for what `kubectl apply` accepts and what
//! `secmetrics evaluate` accepts.
//!
//! The schema is the `openAPIV3Schema` of [`super::crds`] (what `crds/` holds and the API server
//! enforces), walked as the API server does: nulls of non-nullable fields are dropped and
//! defaults applied, then type, `required`, `enum`, `pattern`, `minLength`/`maxLength`,
//! `minItems`/`maxItems`, `minimum`/`maximum` are checked, and every `x-kubernetes-validations`
//! rule is evaluated with the `cel` crate, `self` bound to the value (only where the value is
//! structurally valid, as CEL needs typed input). `status` is not validated: the API server
//! ignores it on create (status subresource). Metadata: `name` (DNS subdomain) and
//! `namespace` (DNS label).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use serde_json::Value as Json;

/// One reason the API server would refuse an object, at a field path such as
/// `spec.source.kubernetes.where`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// The schemas of the served kinds, by kind.
static SCHEMAS: LazyLock<HashMap<String, Json>> = LazyLock::new(|| {
    super::crds()
        .into_iter()
        .filter_map(|crd| {
            let kind = crd.spec.names.kind.clone();
            let schema = crd.spec.versions.first()?.schema.as_ref()?.open_api_v3_schema.as_ref()?.clone();
            Some((kind, serde_json::to_value(schema).ok()?))
        })
        .collect()
});

/// Compiled `x-kubernetes-validations` rules, by source.
static RULES: LazyLock<std::sync::Mutex<HashMap<String, Option<Arc<cel::Program>>>>> =
    LazyLock::new(Default::default);

/// Validates `obj` (a whole object: apiVersion, kind, metadata, spec) as the CRD of `kind`.
/// Returns the object as the API server would store it (defaults applied) and every violation.
pub fn validate(kind: &str, obj: &Json) -> (Json, Vec<Violation>) {
    let Some(schema) = SCHEMAS.get(kind) else {
        return (
            obj.clone(),
            vec![Violation { path: "kind".into(), message: format!("unknown kind {kind:?}") }],
        );
    };
    let mut out = Vec::new();
    let mut obj = obj.clone();
    if let Json::Object(map) = &mut obj {
        // The API server resets status on create (status subresource).
        let status = map.remove("status");
        let mut spec_only = Json::Object(map.clone());
        default(schema, &mut spec_only);
        check(schema, &spec_only, "", &mut out);
        metadata(&spec_only["metadata"], &mut out);
        if let (Json::Object(m), Some(s)) = (&mut spec_only, status) {
            m.insert("status".into(), s);
        }
        obj = spec_only;
    } else {
        out.push(Violation { path: "<root>".into(), message: "must be an object".into() });
    }
    (obj, out)
}

/// Drops nulls of non-nullable fields and applies defaults, recursively (the API server's
/// order: before validation).
fn default(schema: &Json, value: &mut Json) {
    match value {
        Json::Object(map) => {
            if let Some(props) = schema["properties"].as_object() {
                map.retain(|k, v| !(v.is_null() && props.get(k).is_some_and(|p| p["nullable"] != true)));
                for (k, p) in props {
                    if !map.contains_key(k)
                        && let Some(d) = p.get("default")
                    {
                        map.insert(k.clone(), d.clone());
                    }
                }
                for (k, v) in map.iter_mut() {
                    if let Some(p) = props.get(k) {
                        default(p, v);
                    }
                }
            } else if let Some(p) = schema.get("additionalProperties").filter(|p| p.is_object()) {
                for v in map.values_mut() {
                    default(p, v);
                }
            }
        }
        Json::Array(items) => {
            if let Some(p) = schema.get("items") {
                for v in items {
                    default(p, v);
                }
            }
        }
        _ => {}
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

fn show(v: &Json) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 { format!("{}...", s.chars().take(77).collect::<String>()) } else { s }
}

/// Structural checks, then (when they pass) the CEL rules of this node. Returns whether the
/// value is structurally valid (whatever its rules say).
fn check(schema: &Json, value: &Json, path: &str, out: &mut Vec<Violation>) -> bool {
    // This node's own structural errors; its children's go to `out` directly.
    let mut mine = Vec::new();
    let mut push = |message: String| mine.push(Violation { path: path.to_string(), message });
    let at = if path.is_empty() { "<root>" } else { path };
    if value.is_null() {
        if schema["nullable"] != true {
            push(format!(
                "Invalid value: null: {at} in body must be of type {}",
                schema["type"].as_str().unwrap_or("object")
            ));
        }
        let ok = mine.is_empty();
        out.append(&mut mine);
        return ok;
    }
    let int_or_string = schema["x-kubernetes-int-or-string"] == true;
    let type_ok = match schema["type"].as_str() {
        _ if int_or_string => value.is_string() || value.is_i64() || value.is_u64(),
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("boolean") => value.is_boolean(),
        Some("number") => value.is_number(),
        Some("integer") => {
            value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => true,
    };
    if !type_ok {
        let ty = if int_or_string { "integer or string" } else { schema["type"].as_str().unwrap_or("?") };
        push(format!("Invalid value: {}: {at} in body must be of type {ty}", show(value)));
        out.append(&mut mine);
        return false;
    }
    let mut children_ok = true;
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed.iter().map(Json::to_string).collect();
        push(format!("Unsupported value: {}: supported values: {}", show(value), list.join(", ")));
    }
    match value {
        Json::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(max) = schema["maxLength"].as_u64()
                && len > max
            {
                push(format!("Too long: may not be more than {max} bytes"));
            }
            if let Some(min) = schema["minLength"].as_u64()
                && len < min
            {
                push(format!(
                    "Invalid value: {}: {at} in body should be at least {min} chars long",
                    show(value)
                ));
            }
            if let Some(p) = schema["pattern"].as_str()
                && !pattern_matches(p, s)
            {
                push(format!("Invalid value: {}: {at} in body should match '{p}'", show(value)));
            }
        }
        Json::Number(n) => {
            let x = n.as_f64().unwrap_or_default(); // JSON numbers are finite
            if let Some(max) = schema["maximum"].as_f64()
                && x > max
            {
                push(format!("Invalid value: {n}: {at} in body should be less than or equal to {max}"));
            }
            if let Some(min) = schema["minimum"].as_f64()
                && x < min
            {
                push(format!("Invalid value: {n}: {at} in body should be greater than or equal to {min}"));
            }
        }
        Json::Array(items) => {
            if let Some(max) = schema["maxItems"].as_u64()
                && items.len() as u64 > max
            {
                push(format!("Too many: {}: must have at most {max} items", items.len()));
            }
            if let Some(min) = schema["minItems"].as_u64()
                && (items.len() as u64) < min
            {
                push(format!(
                    "Invalid value: {} items: {at} in body should have at least {min} items",
                    items.len()
                ));
            }
            if let Some(item) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    children_ok &= check(item, v, &format!("{path}[{i}]"), out);
                }
            }
        }
        Json::Object(map) => {
            for r in schema["required"].as_array().into_iter().flatten().filter_map(Json::as_str) {
                if !map.contains_key(r) {
                    mine.push(Violation { path: join(path, r), message: "Required value".into() });
                }
            }
            let props = schema["properties"].as_object();
            let additional = schema.get("additionalProperties").filter(|p| p.is_object());
            let preserve = schema["x-kubernetes-preserve-unknown-fields"] == true;
            for (k, v) in map {
                let child = join(path, k);
                match props.and_then(|p| p.get(k)).or(additional) {
                    // metadata is validated as ObjectMeta (below), status not at all.
                    _ if path.is_empty()
                        && matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status") => {}
                    Some(p) => children_ok &= check(p, v, &child, out),
                    None if preserve => {}
                    None => mine.push(Violation { path: child, message: "unknown field".into() }),
                }
            }
        }
        _ => {}
    }
    // CEL needs well-typed input: rules run where the value and everything under it is
    // structurally valid (a failed rule below does not stop the rules above).
    let own_ok = mine.is_empty();
    out.append(&mut mine);
    if !own_ok || !children_ok {
        return false;
    }
    for rule in schema["x-kubernetes-validations"].as_array().into_iter().flatten() {
        let source = rule["rule"].as_str().unwrap_or_default();
        let message = rule["message"].as_str().map(str::to_string);
        let failed = match evaluate_rule(source, value) {
            Ok(true) => None,
            Ok(false) => Some(message.unwrap_or_else(|| format!("failed rule: {source}"))),
            Err(e) => Some(format!("{}: {e}", message.unwrap_or_else(|| format!("rule {source}")))),
        };
        if let Some(m) = failed {
            out.push(Violation {
                path: path.to_string(),
                message: format!("Invalid value: {}: {m}", show(value)),
            });
        }
    }
    true
}

/// Whether `s` matches the schema's `pattern` (an RE2 expression, as the API server reads it).
fn pattern_matches(pattern: &str, s: &str) -> bool {
    static CACHE: LazyLock<std::sync::Mutex<HashMap<String, Option<regex::Regex>>>> =
        LazyLock::new(Default::default);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let re = cache.entry(pattern.to_string()).or_insert_with(|| regex::Regex::new(pattern).ok());
    re.as_ref().is_some_and(|re| re.is_match(s))
}

/// The CEL environment of validation rules: the standard library and the strings extension,
/// as in the API server's (rules use e.g. `lowerAscii()`).
static RULE_ENV: LazyLock<Arc<cel::Env>> = LazyLock::new(|| {
    let mut env = cel::Env::stdlib();
    cel::extensions::strings(&mut env).expect("the strings extension is declared once");
    Arc::new(env)
});

/// Evaluates one `x-kubernetes-validations` rule with `self` bound to `value`.
fn evaluate_rule(source: &str, value: &Json) -> Result<bool, String> {
    let program = {
        let mut rules = RULES.lock().unwrap_or_else(|e| e.into_inner());
        rules.entry(source.to_string()).or_insert_with(|| RULE_ENV.compile(source).ok().map(Arc::new)).clone()
    };
    let program = program.ok_or_else(|| format!("rule does not compile: {source}"))?;
    let mut ctx = cel::Context::with_env(RULE_ENV.clone());
    ctx.add_variable("self", value.clone()).map_err(|e| e.to_string())?;
    match program.execute(&ctx) {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("rule evaluated to {other:?}, not a bool")),
        Err(e) => Err(format!("rule evaluation error: {e}")),
    }
}

/// `metadata.name` must be a DNS subdomain (or come from `generateName`), `namespace` a DNS
/// label, as for every namespaced custom resource.
fn metadata(meta: &Json, out: &mut Vec<Violation>) {
    let mut push = |path: &str, message: String| out.push(Violation { path: path.into(), message });
    if !meta.is_object() {
        push("metadata", "Required value: name or generateName is required".into());
        return;
    }
    match &meta["name"] {
        Json::String(n) => {
            if let Err(m) = dns_subdomain(n) {
                push("metadata.name", format!("Invalid value: {}: {m}", show(&meta["name"])));
            }
        }
        Json::Null if meta["generateName"].is_string() => {}
        Json::Null => push("metadata.name", "Required value: name or generateName is required".into()),
        other => push("metadata.name", format!("Invalid value: {}: must be a string", show(other))),
    }
    match &meta["namespace"] {
        Json::Null => {}
        Json::String(n) if dns_label(n) => {}
        other => push(
            "metadata.namespace",
            format!(
                "Invalid value: {}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
                show(other)
            ),
        ),
    }
}

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn dns_subdomain(s: &str) -> Result<(), &'static str> {
    if s.len() > 253 {
        return Err("must be no more than 253 characters");
    }
    if s.split('.').all(dns_label) {
        Ok(())
    } else {
        Err(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn metric(spec_patch: Json) -> Json {
        let mut m = json!({
            "apiVersion": "secmetrics.io/v1alpha1", "kind": "SecurityMetric",
            "metadata": {"name": "m", "namespace": "team-a"},
            "spec": {
                "displayName": "m", "description": "d", "type": "Technical", "category": "AccessControl",
                "owner": {"team": "t", "responsibility": "ApplicationProvider"},
                "source": {"kubernetes": {"resource": {"apiVersion": "v1", "kind": "Pod"}, "passes": "true"}},
                "objective": {"operator": ">=", "target": 95}
            }
        });
        for (k, v) in spec_patch.as_object().unwrap() {
            m["spec"][k] = v.clone();
        }
        m
    }

    fn paths(v: &Json) -> Vec<String> {
        validate("SecurityMetric", v).1.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_valid_metric_passes_and_gets_defaults() {
        let (obj, v) = validate("SecurityMetric", &metric(json!({})));
        assert!(v.is_empty(), "{v:?}");
        assert_eq!(obj["spec"]["source"]["kubernetes"]["aggregate"], "Ratio");
        assert_eq!(obj["spec"]["unit"], "Percent");
    }

    #[test]
    fn crd_rules_are_enforced_with_located_messages() {
        let cases = [
            (
                json!({"interval": "1ns"}),
                "spec.interval: Invalid value: \"1ns\": interval must be at least 10s",
            ),
            (
                json!({"interval": "1000000000000s"}),
                "spec.interval: Invalid value: \"1000000000000s\": must be at most 8760h",
            ),
            (json!({"maxAge": "0"}), "spec.maxAge: Invalid value: \"0\": spec.maxAge in body should match"),
            (
                json!({"objective": {"operator": ">=", "target": 95, "warning": 99}}),
                "spec.objective: Invalid value:",
            ),
            (
                json!({"objective": {"operator": "=>", "target": 95}}),
                "spec.objective.operator: Unsupported value: \"=>\"",
            ),
            (
                json!({"source": {"kubernetes": {"resource": {"apiVersion": "v1", "kind": "Pod"}, "passes": "x".repeat(100_000)}}}),
                "spec.source.kubernetes.passes: Too long: may not be more than 4096 bytes",
            ),
            (
                json!({"source": {"kubernetes": {"resource": {"apiVersion": "v1", "kind": "Pod"}, "passes": "true"},
                "history": {"statistic": "BreachCount", "window": "1h"}}}),
                "spec.source: Invalid value: {",
            ),
            (
                json!({"source": {"kubernetes": {"resource": {"apiVersion": "v1", "kind": "Pod"}}}}),
                "need source.kubernetes.passes",
            ),
            (
                json!({"source": {"history": {"statistic": "BreachCount", "window": "8761h"}}}),
                "spec.source.history.window: Invalid value: \"8761h\": must be at most 8760h (365 days)",
            ),
            (
                json!({"anomaly": {"window": 1000, "sensitivity": 3}}),
                "spec.anomaly.window: Invalid value: 1000",
            ),
            (
                json!({"anomaly": {"window": "3", "sensitivity": 3}}),
                "spec.anomaly.window: Invalid value: \"3\": spec.anomaly.window in body must be of type integer",
            ),
            (json!({"owner": null}), "spec.owner: Required value"),
            (json!({"tpye": "x"}), "spec.tpye: unknown field"),
        ];
        for (patch, expected) in cases {
            let got = paths(&metric(patch.clone()));
            assert!(got.iter().any(|g| g.contains(expected)), "{patch}: expected {expected:?} in {got:#?}");
        }
    }

    #[test]
    fn metadata_name_and_namespace_are_checked() {
        let mut m = metric(json!({}));
        m["metadata"]["name"] = json!("Not_A_Name");
        m["metadata"]["namespace"] = json!("-x");
        let got = paths(&m);
        assert!(got.iter().any(|g| g.starts_with("metadata.name: Invalid value")), "{got:?}");
        assert!(got.iter().any(|g| g.starts_with("metadata.namespace: Invalid value")), "{got:?}");
    }

    #[test]
    fn policy_rules_are_enforced() {
        let p = json!({
            "apiVersion": "secmetrics.io/v1alpha1", "kind": "MetricPolicy", "metadata": {"name": "p"},
            "spec": {"metrics": ["a"], "rules": [
                {"name": "r", "when": {"state": "Breached", "for": "9000h"}, "cooldown": "1h",
                 "actions": [{"type": "Event"}, {"type": "Event"}, {"type": "Label"}]},
                {"name": "r", "when": {"state": "Breached"}, "actions": [{"type": "Event"}]}
            ]}
        });
        let got: Vec<String> = validate("MetricPolicy", &p).1.iter().map(ToString::to_string).collect();
        for expected in [
            "spec.rules[0].when.for: Invalid value: \"9000h\": must be at most 8760h",
            "spec.rules[0].actions: Invalid value: [{\"type\":\"Event\"}",
            "spec.rules[0].actions[2]: Invalid value: {\"type\":\"Label\"}: Label and Annotate actions need key",
        ] {
            assert!(got.iter().any(|g| g.contains(expected)), "expected {expected:?} in {got:#?}");
        }
        // Rule names: checked only when the rules themselves are valid (as CEL needs).
        let mut ok = p.clone();
        ok["spec"]["rules"][0] =
            json!({"name": "r", "when": {"state": "Breached"}, "actions": [{"type": "Event"}]});
        let got: Vec<String> = validate("MetricPolicy", &ok).1.iter().map(ToString::to_string).collect();
        assert!(got.iter().any(|g| g.contains("rule names must be unique")), "{got:#?}");
        assert!(validate("MetricPolicy", &json!({"apiVersion": "secmetrics.io/v1alpha1", "kind": "MetricPolicy", "metadata": {"name": "p"}, "spec": {}})).1
            .iter().any(|v| v.message.contains("select metrics with metricSelector and/or metrics")));
    }
}
