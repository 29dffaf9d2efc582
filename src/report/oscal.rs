//! The OSCAL report: an OSCAL 1.1.2 `assessment-results` document (JSON).
//!
//! - One result per month of trend (oldest first), then one for the current status.
//! - Each result reviews the framework controls that metrics evidence in it
//!   (`control-selections`, one per framework, the framework in a prop), observes every metric
//!   with data (`methods: [TEST]`, value/state/objective in the description and in props),
//!   and has one finding per control (target type `objective-id`, state `satisfied` or
//!   `not-satisfied`, related observations).
//! - Control ids are the control in lowercase (`AIS-03` → `ais-03`); one that would not be a
//!   valid OSCAL token (`9.1`) gets the framework as prefix (`iso-27001_9.1`).
//! - `import-ap` and the observations' evidence point into `back-matter` resources (the
//!   assessment plan: the MetricPolicies and SecurityMetric definitions; one per metric).
//! - Custom props use the namespace [`NS`]. UUIDs are stable (UUIDv5 of content).
//!
//! Checked against NIST's schema and with compliance-trestle by `tests/oscal/check.py`.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::jiff::{Timestamp, civil::Date, tz::TimeZone};
use serde_json::{Value, json};

use super::model::{MetricDetail, Report, duration, month_of, num, percent, rfc3339, value_with_unit};
use super::uuid::stable;
use crate::api::security_metric::MetricState;

/// Namespace of secmetrics' own OSCAL props.
pub const NS: &str = "https://secmetrics.io/ns/oscal";
/// The OSCAL version the document conforms to.
pub const OSCAL_VERSION: &str = "1.1.2";

fn prop(name: &str, value: impl AsRef<str>) -> Option<Value> {
    let v = one_line(value.as_ref());
    (!v.is_empty()).then(|| json!({"name": name, "ns": NS, "value": v}))
}

fn props(items: impl IntoIterator<Item = Option<Value>>) -> Value {
    Value::Array(items.into_iter().flatten().collect())
}

/// OSCAL `markup-line` and prop values: one line, no surrounding whitespace.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// An OSCAL control id (a token) for a framework control.
pub fn control_id(framework: &str, control: &str) -> String {
    let mut id = String::new();
    for c in control.trim().chars().flat_map(char::to_lowercase) {
        if c.is_alphanumeric() || matches!(c, '.' | '_') {
            id.push(c);
        } else if !id.ends_with('-') {
            id.push('-');
        }
    }
    let id = id.trim_matches('-').to_string();
    if id.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_') {
        id
    } else {
        let fw = super::model::slug(framework);
        let fw = if fw.starts_with(|c: char| c.is_ascii_alphabetic()) { fw } else { format!("fw-{fw}") };
        if id.is_empty() { fw } else { format!("{fw}_{id}") }
    }
}

/// The metrics of one result, each with its observation text, and the time it was collected.
struct Observed<'a> {
    metric: &'a MetricDetail,
    compliant: bool,
    title: String,
    description: String,
    props: Vec<Option<Value>>,
    collected: Timestamp,
}

/// Renders the report as OSCAL assessment-results JSON (pretty-printed, keys sorted).
pub fn render(r: &Report) -> String {
    let mut s = serde_json::to_string_pretty(&document(r)).expect("serializable");
    s.push('\n');
    s
}

/// The OSCAL document as a JSON value.
pub fn document(r: &Report) -> Value {
    let generated = r.generated;
    let filters = format!(
        "framework={};namespace={};since={}",
        r.filters.framework.as_deref().unwrap_or(""),
        r.filters.namespace.as_deref().unwrap_or(""),
        r.filters.since.as_deref().unwrap_or("")
    );
    let metric_set: Vec<String> = r.metrics.iter().map(MetricDetail::key).collect();
    let scope = format!("{filters};metrics={}", metric_set.join(","));
    let resource_uuid = |m: &MetricDetail| stable(&["resource", "securitymetric", &m.key()]);
    let plan_uuid = stable(&["resource", "assessment-plan", &scope]);

    let months: BTreeSet<&str> =
        r.metrics.iter().flat_map(|m| m.monthly.iter().map(|b| b.period.as_str())).collect();
    let current_month = month_of(generated);
    let mut results = Vec::new();
    for month in months {
        let Some((start, next)) = month_bounds(month) else { continue };
        let end = next.min(generated).max(start);
        let key =
            if month == current_month { format!("{scope};at={}", r.generated_at) } else { scope.clone() };
        let observed: Vec<Observed> = r
            .metrics
            .iter()
            .filter_map(|m| {
                let b = m.month(month)?;
                let compliant = b.compliant_ratio.is_some_and(|c| c >= 1.0 - 1e-9);
                let v = |x: Option<f64>| x.map(|x| value_with_unit(x, &m.unit)).unwrap_or_else(|| "-".into());
                let description = format!(
                    "{} (`{}`) in {month} (UTC), objective {}: time-weighted mean {}, min {}, max {}, last {}; \
                     compliant (Compliant or Warning) for {} of the observed time ({} observed, {} in breach, {} without data), \
                     {} evaluations. Source: SecurityMetric status.trend.monthly.",
                    one_line(&m.display_name),
                    m.key(),
                    m.objective.text,
                    v(b.mean),
                    v(b.min),
                    v(b.max),
                    v(b.last),
                    b.compliant_ratio.map(percent).unwrap_or_else(|| "unknown".into()),
                    duration(b.observed_seconds as f64),
                    duration(b.time_in_breach_seconds as f64),
                    duration(b.unknown_seconds as f64),
                    b.samples
                );
                Some(Observed {
                    metric: m,
                    compliant,
                    title: format!("{} — {month}", one_line(&m.display_name)),
                    description,
                    props: vec![
                        prop("period", month),
                        b.mean.and_then(|x| prop("mean", num(x))),
                        b.min.and_then(|x| prop("min", num(x))),
                        b.max.and_then(|x| prop("max", num(x))),
                        b.compliant_ratio.and_then(|x| prop("compliant-ratio", x.to_string())),
                        prop("time-in-breach-seconds", b.time_in_breach_seconds.to_string()),
                    ],
                    collected: end,
                })
            })
            .collect();
        results.push(result(
            r,
            &key,
            &format!("Monthly tracking {month}"),
            &format!(
                "Monthly tracking of the security metrics for {month} (UTC): per metric, the time-weighted mean, \
                 range and share of observed time compliant. A control is satisfied in the month when every metric \
                 evidencing it with data was compliant for all of its observed time."
            ),
            start,
            end,
            vec![prop("period", month)],
            observed,
            "were compliant for all of their observed time",
            &resource_uuid,
        ));
    }

    // The current status.
    let start = r
        .metrics
        .iter()
        .filter_map(|m| m.last_evaluated.as_deref()?.parse::<Timestamp>().ok())
        .min()
        .unwrap_or(generated)
        .min(generated);
    let observed: Vec<Observed> = r
        .metrics
        .iter()
        .map(|m| {
            let value = m.value.map(|v| value_with_unit(v, &m.unit)).unwrap_or_else(|| "no value".into());
            let collected =
                m.last_evaluated.as_deref().and_then(|t| t.parse::<Timestamp>().ok()).unwrap_or(generated);
            let actions: Vec<_> = r.actions.iter().filter(|a| a.metric == m.key()).collect();
            let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
            for a in &actions {
                *outcomes.entry(a.outcome.as_str()).or_default() += 1;
            }
            let remediation = if actions.is_empty() {
                String::new()
            } else {
                let o: Vec<String> = outcomes.iter().map(|(k, v)| format!("{v} {k}")).collect();
                format!(" Remediation actions recorded: {}.", o.join(", "))
            };
            let description = format!(
                "{} (`{}`): {}. Value {value}, objective {}: {}{}; last evaluated {}. Owner {} ({:?}).{}{}",
                one_line(&m.display_name),
                m.key(),
                m.description.trim(),
                m.objective.text,
                m.state.as_str(),
                if m.anomalous { ", anomalous" } else { "" },
                m.last_evaluated.as_deref().unwrap_or("never"),
                m.owner.team,
                m.owner.responsibility,
                m.mttr_seconds
                    .map(|s| format!(" {} breaches recorded, MTTR {}.", m.breaches.len(), duration(s)))
                    .unwrap_or_default(),
                remediation
            );
            Observed {
                metric: m,
                compliant: matches!(m.state, MetricState::Compliant | MetricState::Warning),
                title: one_line(&m.display_name),
                description,
                props: vec![
                    prop("state", m.state.as_str()),
                    m.value.and_then(|v| prop("value", num(v))),
                    prop("objective", &m.objective.text),
                    prop("unit", &m.unit),
                    m.anomalous.then(|| prop("anomalous", "true")).flatten(),
                ],
                collected,
            }
        })
        .collect();
    results.push(result(
        r,
        &format!("{scope};at={}", r.generated_at),
        &format!("Current status at {}", r.generated_at),
        "The current value and state of every security metric, as last evaluated by the secmetrics operator. \
         A control is satisfied when every metric evidencing it is Compliant or Warning (Unknown never passes).",
        start,
        generated,
        vec![prop("period", "current")],
        observed,
        "are Compliant or Warning",
        &resource_uuid,
    ));

    let mut resources = vec![json!({
        "uuid": plan_uuid,
        "title": "Assessment plan: secmetrics SecurityMetrics and MetricPolicies",
        "description": format!(
            "The assessment is continuous and automated: each SecurityMetric defines what is measured, its objective \
             and the controls it evidences; MetricPolicies define which metrics must hold and the remediation a \
             breach triggers. {} metrics and {} policies{}.",
            r.metrics.len(),
            r.policies.len(),
            if filters == "framework=;namespace=;since=" { String::new() } else { format!(" (filters: {filters})") }
        ),
        "props": props([prop("generator", &r.generator)]),
    })];
    for m in &r.metrics {
        let mut rprops = vec![
            prop("kind", "SecurityMetric"),
            prop("namespace", &m.namespace),
            prop("name", &m.name),
            prop("category", m.category.as_str()),
            prop("type", format!("{:?}", m.metric_type)),
            prop("owner", &m.owner.team),
            prop("responsibility", format!("{:?}", m.owner.responsibility)),
        ];
        for c in &m.alignment.compliance {
            rprops.push(prop("control", format!("{} {}", c.framework, c.control)));
        }
        resources.push(json!({
            "uuid": resource_uuid(m),
            "title": format!("SecurityMetric {}: {}", m.key(), one_line(&m.display_name)),
            "description": definition(m),
            "props": props(rprops),
            "rlinks": [{"href": format!("/apis/secmetrics.io/v1alpha1/namespaces/{}/securitymetrics/{}", m.namespace, m.name)}],
        }));
    }

    json!({
        "assessment-results": {
            "uuid": stable(&["assessment-results", &scope, &r.generated_at]),
            "metadata": {
                "title": "secmetrics: application security metrics assessment results",
                "last-modified": r.generated_at,
                "version": r.generated_at,
                "oscal-version": OSCAL_VERSION,
                "props": props([
                    prop("generator", &r.generator),
                    r.filters.framework.as_ref().and_then(|f| prop("filter-framework", f)),
                    r.filters.namespace.as_ref().and_then(|n| prop("filter-namespace", n)),
                    r.filters.since.as_ref().and_then(|s| prop("filter-since", s)),
                ]),
                "remarks": "Generated by `secmetrics report --format oscal` from SecurityMetric and MetricPolicy status.",
            },
            "import-ap": {"href": format!("#{plan_uuid}")},
            "results": results,
            "back-matter": {"resources": resources},
        }
    })
}

/// A metric's definition: what an auditor needs to know about it.
fn definition(m: &MetricDetail) -> String {
    let mut s = format!(
        "{}\n\nObjective: {} ({}). Owner: {}{} ({:?}).",
        m.description.trim(),
        m.objective.text,
        m.unit,
        m.owner.team,
        m.owner.contact.as_ref().map(|c| format!(", {c}")).unwrap_or_default(),
        m.owner.responsibility
    );
    if !m.alignment.business_objectives.is_empty() {
        s.push_str(&format!("\n\nBusiness objectives: {}.", m.alignment.business_objectives.join("; ")));
    }
    if !m.alignment.security_requirements.is_empty() {
        s.push_str(&format!("\n\nSecurity requirements: {}.", m.alignment.security_requirements.join("; ")));
    }
    s
}

/// The first instant of a `YYYY-MM` month and of the next one.
fn month_bounds(month: &str) -> Option<(Timestamp, Timestamp)> {
    let d: Date = format!("{month}-01").parse().ok()?;
    let next = d.last_of_month().tomorrow().ok()?;
    let ts = |d: Date| d.to_zoned(TimeZone::UTC).ok().map(|z| z.timestamp());
    Some((ts(d)?, ts(next)?))
}

#[allow(clippy::too_many_arguments)]
fn result(
    r: &Report,
    key: &str,
    title: &str,
    description: &str,
    start: Timestamp,
    end: Timestamp,
    result_props: Vec<Option<Value>>,
    observed: Vec<Observed>,
    criterion: &str,
    resource_uuid: &dyn Fn(&MetricDetail) -> String,
) -> Value {
    let result_uuid = stable(&["result", key, title]);
    let obs_uuid = |m: &MetricDetail| stable(&["observation", &result_uuid, &m.key()]);
    let observations: Vec<Value> = observed
        .iter()
        .map(|o| {
            let mut p = vec![
                prop("metric", o.metric.key()),
                prop("category", o.metric.category.as_str()),
                prop("responsibility", format!("{:?}", o.metric.owner.responsibility)),
            ];
            p.extend(o.props.iter().cloned());
            json!({
                "uuid": obs_uuid(o.metric),
                "title": o.title,
                "description": o.description,
                "props": props(p),
                "methods": ["TEST"],
                "types": ["control-objective"],
                "relevant-evidence": [{
                    "href": format!("#{}", resource_uuid(o.metric)),
                    "description": format!("SecurityMetric {} (definition and status)", o.metric.key()),
                }],
                "collected": rfc3339(o.collected),
            })
        })
        .collect();

    // Controls reviewed in this result: those with at least one observed metric.
    let mut findings = Vec::new();
    let mut by_framework: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for c in &r.controls {
        let evidence: Vec<&Observed> =
            observed.iter().filter(|o| c.metrics.contains(&o.metric.key())).collect();
        if evidence.is_empty() {
            continue;
        }
        let id = control_id(&c.framework, &c.control);
        by_framework.entry(c.framework.as_str()).or_default().insert(id.clone());
        let passing = evidence.iter().filter(|o| o.compliant).count();
        let satisfied = passing == evidence.len();
        findings.push(json!({
            "uuid": stable(&["finding", &result_uuid, &c.framework, &c.control]),
            "title": one_line(&format!("{} {}: {}", c.framework, c.control, if satisfied { "satisfied" } else { "not satisfied" })),
            "description": format!(
                "{passing} of {} metrics evidencing {} {} {}.",
                evidence.len(),
                c.framework,
                c.control,
                criterion
            ),
            "props": props([prop("framework", &c.framework), prop("control", &c.control)]),
            "target": {
                "type": "objective-id",
                "target-id": id,
                "title": one_line(&format!("{} {}", c.framework, c.control)),
                "props": props([prop("framework", &c.framework)]),
                "status": {
                    "state": if satisfied { "satisfied" } else { "not-satisfied" },
                    "reason": if satisfied { "pass" } else { "fail" },
                },
            },
            "related-observations": evidence.iter().map(|o| json!({"observation-uuid": obs_uuid(o.metric)})).collect::<Vec<_>>(),
        }));
    }
    let selections: Vec<Value> = if by_framework.is_empty() {
        vec![json!({"description": "No framework control is evidenced by the metrics of this result."})]
    } else {
        by_framework
            .into_iter()
            .map(|(fw, ids)| {
                json!({
                    "description": one_line(&format!("{fw} controls evidenced by security metrics")),
                    "props": props([prop("framework", fw)]),
                    "include-controls": ids.into_iter().map(|id| json!({"control-id": id})).collect::<Vec<_>>(),
                })
            })
            .collect()
    };
    let mut result = json!({
        "uuid": result_uuid,
        "title": title,
        "description": description,
        "start": rfc3339(start),
        "end": rfc3339(end),
        "props": props(result_props),
        "reviewed-controls": {"control-selections": selections},
    });
    if !observations.is_empty() {
        result["observations"] = Value::Array(observations);
    }
    if !findings.is_empty() {
        result["findings"] = Value::Array(findings);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_ids_are_oscal_tokens() {
        assert_eq!(control_id("CSA-AICM", "AIS-03"), "ais-03");
        assert_eq!(control_id("NIST-800-53", "CA-7"), "ca-7");
        assert_eq!(control_id("ISO-27001", "9.1"), "iso-27001_9.1");
        assert_eq!(control_id("ISO-42001", "B.6.2.6"), "b.6.2.6");
        assert_eq!(control_id("EU-AI-ACT", "Art. 15(2)"), "art.-15-2");
        assert_eq!(control_id("NIST-AI-RMF", "MEASURE 3.2"), "measure-3.2");
    }

    #[test]
    fn months_have_bounds() {
        let (a, b) = month_bounds("2026-12").unwrap();
        assert_eq!(
            (rfc3339(a).as_str(), rfc3339(b).as_str()),
            ("2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z")
        );
        assert!(month_bounds("nonsense").is_none());
    }
}
