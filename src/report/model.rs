//! The report model: SecurityMetrics and MetricPolicies (as read from the cluster or files) →
//! one sorted, filtered [`Report`] that every format renders. Pure: no Kubernetes client, no
//! clock (the report's time comes from [`Options::at`] or the input), so the same input gives
//! the same report.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::jiff::{Timestamp, tz::TimeZone};
use serde::Serialize;

use crate::api::metric_policy::{ActionType, Mode, Outcome, PolicyState};
use crate::api::security_metric::{Category, MetricState, MetricType, Operator, Responsibility};
use crate::api::{MetricPolicy, SecurityMetric};

/// The `schemaVersion` of the JSON report (docs/report-json.md).
pub const SCHEMA_VERSION: &str = "secmetrics.io/report/v1";

/// Categories an auditor expects covered (SPEC §1, point 3).
pub const EXPECTED_CATEGORIES: [Category; 7] = [
    Category::VulnerabilityManagement,
    Category::AccessControl,
    Category::DataProtection,
    Category::IncidentResponse,
    Category::ApiUsage,
    Category::ResourceAllocation,
    Category::NetworkSecurity,
];

/// What to include, and the report's own time.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Only controls of this framework (case-insensitive), and the metrics and policies
    /// evidencing them.
    pub framework: Option<String>,
    /// Only metrics and policies of this namespace.
    pub namespace: Option<String>,
    /// Only trend buckets, breaches and actions from this time on.
    pub since: Option<Timestamp>,
    /// The report's "generated at"; default the newest `lastEvaluated` of the input.
    pub at: Option<Timestamp>,
}

/// The whole report, sorted.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Always [`SCHEMA_VERSION`].
    pub schema_version: &'static str,
    /// The report's time (RFC 3339, UTC, seconds).
    pub generated_at: String,
    /// The tool that wrote it.
    pub generator: String,
    /// The filters applied.
    pub filters: Filters,
    /// Counts and policy states.
    pub summary: Summary,
    /// The auditor's eight points (SPEC §1) and where their evidence is.
    pub checklist: Vec<ChecklistItem>,
    /// One section per framework control, sorted by framework then control.
    pub controls: Vec<ControlSection>,
    /// Every metric, sorted by namespace then name.
    pub metrics: Vec<MetricDetail>,
    /// Every policy, sorted by namespace then name.
    pub policies: Vec<PolicySummary>,
    /// Remediation actions recorded by the policies, oldest first.
    pub actions: Vec<ActionEntry>,
    #[serde(skip)]
    pub(crate) generated: Timestamp,
}

/// Filters as given.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Filters {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub framework: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

/// Headline numbers.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub metrics: usize,
    pub metrics_by_state: StateCounts,
    pub anomalous_metrics: usize,
    pub policies: usize,
    pub policies_compliant: usize,
    pub controls: usize,
    pub controls_satisfied: usize,
    pub frameworks: Vec<String>,
    /// The UTC month of `generatedAt` (`2026-11`): the "current month" of trend columns.
    pub current_month: String,
    pub breaches: usize,
    pub open_breaches: usize,
    /// Mean time to recover over the recovered breaches of every metric, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mttr_seconds: Option<f64>,
    pub actions_by_outcome: BTreeMap<String, usize>,
}

/// Metrics per state.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StateCounts {
    pub compliant: usize,
    pub warning: usize,
    pub breached: usize,
    pub unknown: usize,
}

/// How well one checklist point is evidenced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Status {
    Met,
    Partial,
    Missing,
}

impl Status {
    /// The status as written in the report.
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Met => "Met",
            Status::Partial => "Partial",
            Status::Missing => "Missing",
        }
    }

    fn of(have: usize, of: usize) -> Status {
        if of > 0 && have == of {
            Status::Met
        } else if have > 0 {
            Status::Partial
        } else {
            Status::Missing
        }
    }
}

/// One of the auditor's eight points.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChecklistItem {
    /// 1 to 8, as in SPEC §1.
    pub number: u8,
    /// What the auditor checks.
    pub requirement: &'static str,
    pub status: Status,
    /// The evidence in one sentence, with counts.
    pub evidence: String,
    /// Report sections holding the evidence (anchors: `summary`, `controls`, `metrics`,
    /// `trends`, `breaches`, `remediation`, `policies`).
    pub sections: Vec<&'static str>,
}

/// A framework control and the metrics evidencing it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlSection {
    pub framework: String,
    pub control: String,
    /// Satisfied when at least one metric evidences it and every one is Compliant or Warning.
    pub satisfied: bool,
    /// `namespace/name` of the metrics evidencing it (their alignment, or selected by a
    /// policy that lists the control as an obligation).
    pub metrics: Vec<String>,
    /// Policies that roll the control up, with the state they report for it.
    pub policies: Vec<ControlPolicy>,
}

impl ControlSection {
    /// An HTML/Markdown anchor for the section.
    pub fn anchor(&self) -> String {
        format!("control-{}", slug(&format!("{}-{}", self.framework, self.control)))
    }
}

/// A policy's state for one control.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlPolicy {
    /// `namespace/name`.
    pub policy: String,
    pub state: String,
}

/// One metric: definition, owner, alignment, objective, status, trend and breaches.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricDetail {
    pub namespace: String,
    pub name: String,
    pub display_name: String,
    pub description: String,
    #[serde(rename = "type")]
    pub metric_type: MetricType,
    pub category: Category,
    pub unit: String,
    pub owner: OwnerDetail,
    pub alignment: AlignmentDetail,
    pub objective: ObjectiveDetail,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    pub state: MetricState,
    pub anomalous: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_evaluated: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_transition: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub population: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passing: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenants_total: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenants_breached: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenants_anomalous: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offenders_total: Option<i64>,
    /// The Ready condition's message when it is False (what is wrong with the metric).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Monthly buckets, oldest first (from `--since` on).
    pub monthly: Vec<Bucket>,
    /// Daily buckets, oldest first (from `--since` on).
    pub daily: Vec<Bucket>,
    /// Breached episodes, oldest first (those still open or ending from `--since` on).
    pub breaches: Vec<BreachEntry>,
    /// Mean time to recover over the recovered breaches listed, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mttr_seconds: Option<f64>,
    /// `namespace/name` of the policies selecting the metric.
    pub policies: Vec<String>,
}

impl MetricDetail {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// An HTML/Markdown anchor for the metric.
    pub fn anchor(&self) -> String {
        format!("metric-{}", slug(&self.key()))
    }

    /// The bucket of `month` (`2026-11`), if any.
    pub fn month(&self, month: &str) -> Option<&Bucket> {
        self.monthly.iter().find(|b| b.period == month)
    }

    /// `framework:control` of every aligned control, joined with `;`.
    pub fn controls_joined(&self) -> String {
        self.alignment
            .compliance
            .iter()
            .map(|c| format!("{}:{}", c.framework, c.control))
            .collect::<Vec<_>>()
            .join(";")
    }
}

/// The owner of a metric.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerDetail {
    pub team: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contact: Option<String>,
    pub responsibility: Responsibility,
}

/// What a metric is aligned with.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AlignmentDetail {
    pub business_objectives: Vec<String>,
    pub security_requirements: Vec<String>,
    pub compliance: Vec<ControlRef>,
}

/// `{framework, control}`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ControlRef {
    pub framework: String,
    pub control: String,
}

/// A metric's objective.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectiveDetail {
    pub operator: Operator,
    pub target: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<f64>,
    /// In words, e.g. `>= 95 (warning below 80)`.
    pub text: String,
}

/// One trend bucket (a UTC day or month).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Bucket {
    pub period: String,
    pub samples: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compliant_ratio: Option<f64>,
    pub observed_seconds: i64,
    pub time_in_breach_seconds: i64,
    pub unknown_seconds: i64,
}

/// One Breached episode.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BreachEntry {
    pub since: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Until recovery, or until `generatedAt` while open.
    pub duration_seconds: i64,
    pub open: bool,
}

/// A policy: requirement, state and rules.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySummary {
    pub namespace: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub mode: Mode,
    pub state: PolicyState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coverage: Option<f64>,
    pub min_compliant_percent: f64,
    pub compliance: Vec<ControlRef>,
    /// Names of the selected metrics (same namespace).
    pub metrics: Vec<String>,
    pub rules: Vec<RuleSummary>,
    pub active_remediations: usize,
}

impl PolicySummary {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A remediation rule in words.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleSummary {
    pub name: String,
    /// e.g. `Breached for 10m`.
    pub when: String,
    pub scope: String,
    pub actions: Vec<ActionType>,
}

/// One recorded remediation action.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionEntry {
    pub time: String,
    /// `namespace/name` of the policy.
    pub policy: String,
    pub mode: Mode,
    pub rule: String,
    /// `namespace/name` of the metric whose state triggered it.
    pub metric: String,
    pub action: ActionType,
    pub target: String,
    pub outcome: Outcome,
    pub dry_run: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// RFC 3339 in UTC with whole seconds: the one time format of every report.
pub fn rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The UTC month (`2026-11`) of `t`.
pub fn month_of(t: Timestamp) -> String {
    t.to_zoned(TimeZone::UTC).strftime("%Y-%m").to_string()
}

/// A number for people: at most two decimals, no trailing zeros.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let s = format!("{:.2}", v);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.to_string() }
}

/// A duration for people: `3d 4h`, `2h 5m`, `7m 12s`, `40s`.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as i64;
    let (d, h, m, sec) = (s / 86400, s % 86400 / 3600, s % 3600 / 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// Lowercase letters, digits and single dashes: a safe anchor.
pub fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

/// A value with its unit, for people: `95%`, `12`, `30 s`, `3 widgets`.
pub fn value_with_unit(v: f64, unit: &str) -> String {
    match unit {
        "Percent" => format!("{}%", num(v)),
        "Count" | "Ratio" | "" => num(v),
        "Seconds" => format!("{} s", num(v)),
        other => format!("{} {other}", num(v)),
    }
}

/// A 0–1 ratio as a percentage: `97.5%`.
pub fn percent(ratio: f64) -> String {
    format!("{}%", num(ratio * 100.0))
}

/// The role in words, with the CSA AICM abbreviation.
pub fn responsibility_label(r: Responsibility) -> &'static str {
    match r {
        Responsibility::ApplicationProvider => "Application Provider (AP)",
        Responsibility::ModelProvider => "Model Provider (MP)",
        Responsibility::OrchestratedServiceProvider => "Orchestrated Service Provider (OSP)",
        Responsibility::CloudServiceProvider => "Cloud Service Provider (CSP)",
        Responsibility::SharedCspMp => "Shared CSP-MP",
        Responsibility::SharedOspAp => "Shared OSP-AP",
    }
}

/// The metric type in words.
pub fn type_label(t: MetricType) -> &'static str {
    match t {
        MetricType::Technical => "Technical",
        MetricType::Operational => "Operational",
    }
}

fn ns_of(meta: &kube::api::ObjectMeta) -> String {
    meta.namespace.clone().unwrap_or_else(|| "default".into())
}

fn name_of(meta: &kube::api::ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

fn eq_ci(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Builds the report. Metrics and policies may come in any order; the report is sorted.
pub fn build(metrics: &[SecurityMetric], policies: &[MetricPolicy], options: &Options) -> Report {
    let generated = options.at.unwrap_or_else(|| newest_time(metrics, policies));
    let since = options.since;
    let since_month = since.map(month_of);
    let since_day = since.map(|t| t.to_zoned(TimeZone::UTC).strftime("%Y-%m-%d").to_string());
    let in_ns = |meta: &kube::api::ObjectMeta| options.namespace.as_ref().is_none_or(|n| *n == ns_of(meta));

    // Policies first: which metrics they select and which obligations they add.
    let mut policy_list: Vec<PolicySummary> = policies
        .iter()
        .filter(|p| in_ns(&p.metadata))
        .map(|p| {
            let status = p.status.clone().unwrap_or_default();
            let mut selected: BTreeSet<String> = status.metrics.iter().map(|m| m.name.clone()).collect();
            selected.extend(p.spec.metrics.iter().cloned());
            let mut compliance: Vec<ControlRef> = p
                .spec
                .compliance
                .iter()
                .map(|c| ControlRef { framework: c.framework.clone(), control: c.control.clone() })
                .collect();
            compliance.sort();
            compliance.dedup();
            PolicySummary {
                namespace: ns_of(&p.metadata),
                name: name_of(&p.metadata),
                description: p.spec.description.clone(),
                mode: p.spec.mode,
                state: status.state,
                score: status.score,
                coverage: status.coverage,
                min_compliant_percent: p.spec.requirement.min_compliant_percent,
                compliance,
                metrics: selected.into_iter().collect(),
                rules: p
                    .spec
                    .rules
                    .iter()
                    .map(|r| RuleSummary {
                        name: r.name.clone(),
                        when: match &r.when.for_ {
                            Some(d) => format!("{:?} for {}", r.when.state, d),
                            None => format!("{:?}", r.when.state),
                        },
                        scope: format!("{:?}", r.scope),
                        actions: r.actions.iter().map(|a| a.type_).collect(),
                    })
                    .collect(),
                active_remediations: status.active_remediations.len(),
            }
        })
        .collect();
    policy_list.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

    // Controls: metric alignment, plus policy obligations evidenced by the selected metrics.
    let mut controls: BTreeMap<ControlRef, (BTreeSet<String>, BTreeMap<String, String>)> = BTreeMap::new();
    let metric_keys: BTreeSet<String> = metrics
        .iter()
        .filter(|m| in_ns(&m.metadata))
        .map(|m| format!("{}/{}", ns_of(&m.metadata), name_of(&m.metadata)))
        .collect();
    for m in metrics.iter().filter(|m| in_ns(&m.metadata)) {
        let key = format!("{}/{}", ns_of(&m.metadata), name_of(&m.metadata));
        for c in &m.spec.alignment.compliance {
            let r = ControlRef { framework: c.framework.clone(), control: c.control.clone() };
            controls.entry(r).or_default().0.insert(key.clone());
        }
    }
    for (p, raw) in policy_list.iter().zip(sorted_policies(policies, &in_ns)) {
        for c in &p.compliance {
            let entry = controls.entry(c.clone()).or_default();
            for m in &p.metrics {
                let key = format!("{}/{m}", p.namespace);
                if metric_keys.contains(&key) {
                    entry.0.insert(key);
                }
            }
        }
        let status = raw.status.clone().unwrap_or_default();
        for f in &status.frameworks {
            let r = ControlRef { framework: f.framework.clone(), control: f.control.clone() };
            controls.entry(r).or_default().1.insert(p.key(), f.state.as_str().to_string());
        }
        for c in &p.compliance {
            controls
                .get_mut(c)
                .expect("inserted above")
                .1
                .entry(p.key())
                .or_insert_with(|| status.state.as_str().into());
        }
    }
    if let Some(fw) = &options.framework {
        controls.retain(|c, _| eq_ci(&c.framework, fw));
    }

    // Metrics: all of the namespace, or those evidencing a kept control.
    let evidencing: BTreeSet<String> = controls.values().flat_map(|(m, _)| m.iter().cloned()).collect();
    let mut details: Vec<MetricDetail> = metrics
        .iter()
        .filter(|m| in_ns(&m.metadata))
        .map(|m| detail(m, generated, &policy_list, since, since_month.as_deref(), since_day.as_deref()))
        .filter(|d| options.framework.is_none() || evidencing.contains(&d.key()))
        .collect();
    details.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let states: BTreeMap<String, MetricState> = details.iter().map(|d| (d.key(), d.state)).collect();

    if options.framework.is_some() {
        policy_list.retain(|p| {
            p.metrics.iter().any(|m| states.contains_key(&format!("{}/{m}", p.namespace)))
                || controls.values().any(|(_, ps)| ps.contains_key(&p.key()))
        });
    }
    let kept_policies: BTreeSet<String> = policy_list.iter().map(PolicySummary::key).collect();

    let control_sections: Vec<ControlSection> = controls
        .into_iter()
        .map(|(c, (metrics, pols))| {
            let metrics: Vec<String> = metrics.into_iter().filter(|m| states.contains_key(m)).collect();
            let satisfied = !metrics.is_empty()
                && metrics.iter().all(|m| matches!(states[m], MetricState::Compliant | MetricState::Warning));
            ControlSection {
                framework: c.framework,
                control: c.control,
                satisfied,
                metrics,
                policies: pols
                    .into_iter()
                    .filter(|(p, _)| kept_policies.contains(p))
                    .map(|(policy, state)| ControlPolicy { policy, state })
                    .collect(),
            }
        })
        .collect();

    // Actions of the kept policies on the kept metrics.
    let mut actions: Vec<ActionEntry> = Vec::new();
    for p in sorted_policies(policies, &in_ns) {
        let key = format!("{}/{}", ns_of(&p.metadata), name_of(&p.metadata));
        if !kept_policies.contains(&key) {
            continue;
        }
        for a in p.status.as_ref().map(|s| s.recent_actions.as_slice()).unwrap_or_default() {
            let metric = format!("{}/{}", ns_of(&p.metadata), a.metric);
            if options.framework.is_some() && !states.contains_key(&metric) {
                continue;
            }
            if since.is_some_and(|s| a.time.0 < s) {
                continue;
            }
            actions.push(ActionEntry {
                time: rfc3339(a.time.0),
                policy: key.clone(),
                mode: p.spec.mode,
                rule: a.rule.clone(),
                metric,
                action: a.action,
                target: a.target.clone(),
                outcome: a.outcome,
                dry_run: a.dry_run,
                message: a.message.clone(),
            });
        }
    }
    actions.sort_by(|a, b| {
        (&a.time, &a.policy, &a.rule, &a.metric, a.action, &a.target, a.outcome.as_str()).cmp(&(
            &b.time,
            &b.policy,
            &b.rule,
            &b.metric,
            b.action,
            &b.target,
            b.outcome.as_str(),
        ))
    });

    let current_month = month_of(generated);
    let summary = summarize(&details, &policy_list, &control_sections, &actions, current_month);
    let checklist = checklist(&details, &policy_list, &control_sections, &actions);
    Report {
        schema_version: SCHEMA_VERSION,
        generated_at: rfc3339(generated),
        generator: format!("secmetrics {}", env!("CARGO_PKG_VERSION")),
        filters: Filters {
            framework: options.framework.clone(),
            namespace: options.namespace.clone(),
            since: since.map(rfc3339),
        },
        summary,
        checklist,
        controls: control_sections,
        metrics: details,
        policies: policy_list,
        actions,
        generated,
    }
}

fn sorted_policies<'a>(
    policies: &'a [MetricPolicy],
    in_ns: &dyn Fn(&kube::api::ObjectMeta) -> bool,
) -> Vec<&'a MetricPolicy> {
    let mut v: Vec<&MetricPolicy> = policies.iter().filter(|p| in_ns(&p.metadata)).collect();
    v.sort_by_key(|p| (ns_of(&p.metadata), name_of(&p.metadata)));
    v
}

/// The newest `lastEvaluated` of the input; without any, the newest time the input holds;
/// without any, the Unix epoch (so the output still depends on the input alone).
fn newest_time(metrics: &[SecurityMetric], policies: &[MetricPolicy]) -> Timestamp {
    let evaluated =
        metrics.iter().filter_map(|m| m.status.as_ref()?.last_evaluated.as_ref().map(|t| t.0)).max();
    evaluated
        .or_else(|| {
            let breaches = metrics
                .iter()
                .filter_map(|m| m.status.as_ref())
                .flat_map(|s| {
                    s.breaches.iter().flat_map(|b| [Some(b.since.0), b.until.as_ref().map(|u| u.0)])
                })
                .flatten();
            let actions = policies
                .iter()
                .filter_map(|p| p.status.as_ref())
                .flat_map(|s| s.recent_actions.iter().map(|a| a.time.0));
            breaches.chain(actions).max()
        })
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

fn detail(
    m: &SecurityMetric,
    generated: Timestamp,
    policies: &[PolicySummary],
    since: Option<Timestamp>,
    since_month: Option<&str>,
    since_day: Option<&str>,
) -> MetricDetail {
    let s = m.status.clone().unwrap_or_default();
    let namespace = ns_of(&m.metadata);
    let name = name_of(&m.metadata);
    let o = &m.spec.objective;
    let text = match o.warning {
        Some(w) => {
            let side = if matches!(o.operator, Operator::Ge | Operator::Gt) { "below" } else { "above" };
            format!(
                "{} {} (Warning {side} {}, Breached {side} {})",
                o.operator.as_str(),
                num(o.target),
                num(o.target),
                num(w)
            )
        }
        None => format!("{} {}", o.operator.as_str(), num(o.target)),
    };
    let bucket = |b: &crate::api::security_metric::TrendBucket| Bucket {
        period: b.period.clone(),
        samples: b.samples,
        min: b.min,
        max: b.max,
        mean: b.mean,
        last: b.last,
        compliant_ratio: b.compliant_ratio,
        observed_seconds: b.observed_seconds,
        time_in_breach_seconds: b.time_in_breach_seconds,
        unknown_seconds: b.unknown_seconds,
    };
    let trend = s.trend.clone().unwrap_or_default();
    let mut monthly: Vec<Bucket> = trend
        .monthly
        .iter()
        .filter(|b| since_month.is_none_or(|sm| b.period.as_str() >= sm))
        .map(bucket)
        .collect();
    monthly.sort_by(|a, b| a.period.cmp(&b.period));
    let mut daily: Vec<Bucket> = trend
        .daily
        .iter()
        .filter(|b| since_day.is_none_or(|sd| b.period.as_str() >= sd))
        .map(bucket)
        .collect();
    daily.sort_by(|a, b| a.period.cmp(&b.period));
    let mut breaches: Vec<BreachEntry> = s
        .breaches
        .iter()
        .filter(|b| since.is_none_or(|since| b.until.as_ref().is_none_or(|u| u.0 >= since)))
        .map(|b| {
            let end = b.until.as_ref().map_or(generated, |u| u.0);
            BreachEntry {
                since: rfc3339(b.since.0),
                until: b.until.as_ref().map(|u| rfc3339(u.0)),
                duration_seconds: end.duration_since(b.since.0).as_secs().max(0),
                open: b.until.is_none(),
            }
        })
        .collect();
    breaches.sort_by(|a, b| a.since.cmp(&b.since));
    let recovered: Vec<i64> = breaches.iter().filter(|b| !b.open).map(|b| b.duration_seconds).collect();
    let mttr_seconds =
        (!recovered.is_empty()).then(|| recovered.iter().sum::<i64>() as f64 / recovered.len() as f64);
    let mut compliance: Vec<ControlRef> = m
        .spec
        .alignment
        .compliance
        .iter()
        .map(|c| ControlRef { framework: c.framework.clone(), control: c.control.clone() })
        .collect();
    compliance.sort();
    compliance.dedup();
    MetricDetail {
        policies: policies
            .iter()
            .filter(|p| p.namespace == namespace && p.metrics.contains(&name))
            .map(PolicySummary::key)
            .collect(),
        namespace,
        name,
        display_name: m.spec.display_name.clone(),
        description: m.spec.description.clone(),
        metric_type: m.spec.metric_type,
        category: m.spec.category,
        unit: m.spec.unit.clone(),
        owner: OwnerDetail {
            team: m.spec.owner.team.clone(),
            contact: m.spec.owner.contact.clone(),
            responsibility: m.spec.owner.responsibility,
        },
        alignment: AlignmentDetail {
            business_objectives: m.spec.alignment.business_objectives.clone(),
            security_requirements: m.spec.alignment.security_requirements.clone(),
            compliance,
        },
        objective: ObjectiveDetail { operator: o.operator, target: o.target, warning: o.warning, text },
        value: s.value,
        state: s.state,
        anomalous: s.anomalous,
        last_evaluated: s.last_evaluated.as_ref().map(|t| rfc3339(t.0)),
        last_transition: s.last_transition.as_ref().map(|t| rfc3339(t.0)),
        population: s.population,
        passing: s.passing,
        tenants_total: s.tenants_total,
        tenants_breached: s.tenants_breached,
        tenants_anomalous: s.tenants_anomalous,
        offenders_total: s.offenders_total,
        problem: s
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready" && c.status == "False")
            .map(|c| c.message.clone()),
        monthly,
        daily,
        breaches,
        mttr_seconds,
    }
}

fn summarize(
    metrics: &[MetricDetail],
    policies: &[PolicySummary],
    controls: &[ControlSection],
    actions: &[ActionEntry],
    current_month: String,
) -> Summary {
    let mut by_state = StateCounts::default();
    for m in metrics {
        match m.state {
            MetricState::Compliant => by_state.compliant += 1,
            MetricState::Warning => by_state.warning += 1,
            MetricState::Breached => by_state.breached += 1,
            MetricState::Unknown => by_state.unknown += 1,
        }
    }
    let recovered: Vec<i64> = metrics
        .iter()
        .flat_map(|m| m.breaches.iter().filter(|b| !b.open).map(|b| b.duration_seconds))
        .collect();
    let mut actions_by_outcome = BTreeMap::new();
    for a in actions {
        *actions_by_outcome.entry(a.outcome.as_str().to_string()).or_insert(0) += 1;
    }
    Summary {
        metrics: metrics.len(),
        metrics_by_state: by_state,
        anomalous_metrics: metrics.iter().filter(|m| m.anomalous).count(),
        policies: policies.len(),
        policies_compliant: policies.iter().filter(|p| p.state == PolicyState::Compliant).count(),
        controls: controls.len(),
        controls_satisfied: controls.iter().filter(|c| c.satisfied).count(),
        frameworks: controls
            .iter()
            .map(|c| c.framework.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
        current_month,
        breaches: metrics.iter().map(|m| m.breaches.len()).sum(),
        open_breaches: metrics.iter().flat_map(|m| &m.breaches).filter(|b| b.open).count(),
        mttr_seconds: (!recovered.is_empty())
            .then(|| recovered.iter().sum::<i64>() as f64 / recovered.len() as f64),
        actions_by_outcome,
    }
}

/// Whether a framework name belongs to a family (ISO, CCM, NIST 800-53).
type FrameworkTest = fn(&str) -> bool;

fn checklist(
    metrics: &[MetricDetail],
    policies: &[PolicySummary],
    controls: &[ControlSection],
    actions: &[ActionEntry],
) -> Vec<ChecklistItem> {
    let total = metrics.len();
    let of = |n: usize| format!("{n} of {total} metrics");
    let names = |f: &dyn Fn(&MetricDetail) -> bool| {
        let v: Vec<&str> = metrics.iter().filter(|m| f(m)).map(|m| m.name.as_str()).take(5).collect();
        if v.is_empty() { String::new() } else { format!(" (lacking: {})", v.join(", ")) }
    };

    let documented = |m: &MetricDetail| !m.description.trim().is_empty() && !m.owner.team.trim().is_empty();
    let n1 = metrics.iter().filter(|m| documented(m)).count();
    let contacts = metrics.iter().filter(|m| m.owner.contact.is_some()).count();

    let measured = |m: &MetricDetail| m.value.is_some() && m.state != MetricState::Unknown;
    let n2 = metrics.iter().filter(|m| measured(m)).count();

    let covered: BTreeSet<Category> = metrics.iter().map(|m| m.category).collect();
    let n3 = EXPECTED_CATEGORIES.iter().filter(|c| covered.contains(c)).count();
    let missing: Vec<&str> =
        EXPECTED_CATEGORIES.iter().filter(|c| !covered.contains(c)).map(|c| c.as_str()).collect();

    let used = |m: &MetricDetail| !m.policies.is_empty() && m.last_evaluated.is_some();
    let n4 = metrics.iter().filter(|m| used(m)).count();

    let aligned = |m: &MetricDetail| {
        !m.alignment.business_objectives.is_empty()
            && !m.alignment.security_requirements.is_empty()
            && !m.alignment.compliance.is_empty()
    };
    let n5 = metrics.iter().filter(|m| aligned(m)).count();

    let tracked = metrics.iter().filter(|m| !m.monthly.is_empty()).count();
    let trending = metrics.iter().filter(|m| m.monthly.len() >= 2).count();
    let months: BTreeSet<&str> =
        metrics.iter().flat_map(|m| m.monthly.iter().map(|b| b.period.as_str())).collect();
    let status6 = if total > 0 && trending == total {
        Status::Met
    } else if tracked > 0 {
        Status::Partial
    } else {
        Status::Missing
    };
    let span = match (months.first(), months.last()) {
        (Some(a), Some(b)) if a != b => format!(", months {a} to {b}"),
        (Some(a), _) => format!(", month {a}"),
        _ => String::new(),
    };

    let rules: usize = policies.iter().map(|p| p.rules.len()).sum();
    let breached_metrics = metrics.iter().filter(|m| !m.breaches.is_empty()).count();
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    for a in actions {
        *outcomes.entry(a.outcome.as_str()).or_default() += 1;
    }
    let outcome_text = outcomes.iter().map(|(o, n)| format!("{n} {o}")).collect::<Vec<_>>().join(", ");
    let (status7, evidence7) = if rules == 0 {
        (
            Status::Missing,
            format!("no MetricPolicy defines a remediation rule; {breached_metrics} metrics breached"),
        )
    } else if actions.is_empty() {
        (
            if breached_metrics == 0 { Status::Met } else { Status::Partial },
            format!(
                "{rules} remediation rules in {} policies, no action recorded; {breached_metrics} metrics breached",
                policies.iter().filter(|p| !p.rules.is_empty()).count()
            ),
        )
    } else {
        (
            Status::Met,
            format!(
                "{} actions recorded ({outcome_text}) by {rules} rules; Planned actions are DryRun evidence that a threshold triggered remediation",
                actions.len()
            ),
        )
    };

    let families: [(&str, FrameworkTest); 3] = [
        ("ISO", |f| f.to_ascii_uppercase().starts_with("ISO")),
        ("CCM", |f| matches!(f.to_ascii_uppercase().as_str(), "CSA-CCM" | "CSA-AICM")),
        ("NIST 800-53", |f| f.eq_ignore_ascii_case("NIST-800-53")),
    ];
    let present: Vec<&str> = families
        .iter()
        .filter(|(_, is)| controls.iter().any(|c| is(&c.framework)))
        .map(|(n, _)| *n)
        .collect();
    let mut per_framework: BTreeMap<&str, usize> = BTreeMap::new();
    for c in controls {
        *per_framework.entry(c.framework.as_str()).or_default() += 1;
    }
    let fw_text = per_framework.iter().map(|(f, n)| format!("{f} ({n})")).collect::<Vec<_>>().join(", ");

    vec![
        ChecklistItem {
            number: 1,
            requirement: "Metrics are defined and documented",
            status: Status::of(n1, total),
            evidence: format!(
                "{} have a display name, a description and an owning team; {contacts} name a contact{}",
                of(n1),
                names(&|m| !documented(m))
            ),
            sections: vec!["metrics"],
        },
        ChecklistItem {
            number: 2,
            requirement: "Metrics are specific and measurable",
            status: Status::of(n2, total),
            evidence: format!(
                "every metric has an objective (operator, target, unit); {} have a current measured value{}",
                of(n2),
                names(&|m| !measured(m))
            ),
            sections: vec!["controls", "metrics"],
        },
        ChecklistItem {
            number: 3,
            requirement: "Metrics are sufficient and relevant (vulnerability management, access control, data protection, incident response, API usage, resource allocation, network security)",
            status: Status::of(n3, EXPECTED_CATEGORIES.len()),
            evidence: if missing.is_empty() {
                format!("all {} expected categories have metrics", EXPECTED_CATEGORIES.len())
            } else {
                format!(
                    "{n3} of {} expected categories have metrics; missing: {}",
                    EXPECTED_CATEGORIES.len(),
                    missing.join(", ")
                )
            },
            sections: vec!["summary", "metrics"],
        },
        ChecklistItem {
            number: 4,
            requirement: "Metrics are actually used",
            status: Status::of(n4, total),
            evidence: format!(
                "{} are evaluated by the operator and selected by a MetricPolicy{}",
                of(n4),
                names(&|m| !used(m))
            ),
            sections: vec!["policies", "metrics"],
        },
        ChecklistItem {
            number: 5,
            requirement: "Metrics are aligned with business objectives, security requirements and compliance requirements",
            status: Status::of(n5, total),
            evidence: format!(
                "{} name business objectives, security requirements and compliance controls{}",
                of(n5),
                names(&|m| !aligned(m))
            ),
            sections: vec!["controls", "metrics"],
        },
        ChecklistItem {
            number: 6,
            requirement: "Metrics are monitored and evaluated, with evidence of monthly tracking and trends",
            status: status6,
            evidence: format!(
                "monthly trend present for {} ({trending} with two or more months{span})",
                of(tracked)
            ),
            sections: vec!["trends", "breaches"],
        },
        ChecklistItem {
            number: 7,
            requirement: "Automated remediation triggered by a threshold is visible",
            status: status7,
            evidence: evidence7,
            sections: vec!["remediation", "policies"],
        },
        ChecklistItem {
            number: 8,
            requirement: "Metrics are reported in a form usable for ISO, CCM and NIST 800-53 assessments",
            status: Status::of(present.len(), families.len()),
            evidence: format!(
                "{} controls mapped: {}; framework families present: {}; also available as OSCAL assessment-results (--format oscal), JSON and CSV",
                controls.len(),
                if fw_text.is_empty() { "none".to_string() } else { fw_text },
                if present.is_empty() { "none".to_string() } else { present.join(", ") }
            ),
            sections: vec!["controls"],
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn metric(
        ns: &str,
        name: &str,
        state: &str,
        evaluated: Option<&str>,
        controls: &[(&str, &str)],
    ) -> SecurityMetric {
        let compliance: Vec<_> =
            controls.iter().map(|(f, c)| json!({"framework": f, "control": c})).collect();
        let mut status = json!({"state": state});
        if let Some(t) = evaluated {
            status["lastEvaluated"] = json!(t);
            status["value"] = json!(1);
        }
        serde_json::from_value(json!({
            "apiVersion": "secmetrics.io/v1alpha1", "kind": "SecurityMetric",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "displayName": name, "description": "d", "type": "Technical", "category": "AccessControl",
                "owner": {"team": "t", "responsibility": "SharedOspAp"},
                "alignment": {"compliance": compliance},
                "source": {"kubernetes": {"resource": {"apiVersion": "v1", "kind": "Pod"}, "passes": "true"}},
                "objective": {"operator": ">=", "target": 1}
            },
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn order_of_input_does_not_matter_and_time_comes_from_input() {
        let a = metric("b", "x", "Compliant", Some("2026-03-01T00:00:00Z"), &[("F", "C-1")]);
        let b = metric("a", "y", "Unknown", None, &[("F", "C-1"), ("G", "C-2")]);
        let c = metric("a", "z", "Warning", Some("2026-03-02T10:00:00Z"), &[("G", "C-2")]);
        let one = build(&[a.clone(), b.clone(), c.clone()], &[], &Options::default());
        let two = build(&[c, b, a], &[], &Options::default());
        assert_eq!(serde_json::to_string(&one).unwrap(), serde_json::to_string(&two).unwrap());
        assert_eq!(one.generated_at, "2026-03-02T10:00:00Z");
        let keys: Vec<String> = one.metrics.iter().map(MetricDetail::key).collect();
        assert_eq!(keys, ["a/y", "a/z", "b/x"]);
        // Unknown never satisfies a control; Warning does.
        let sat: Vec<(String, bool)> =
            one.controls.iter().map(|c| (c.control.clone(), c.satisfied)).collect();
        assert_eq!(sat, [("C-1".to_string(), false), ("C-2".to_string(), false)]);
        let only_g = build(&[metric("a", "z", "Warning", None, &[("G", "C-2")])], &[], &Options::default());
        assert!(only_g.controls[0].satisfied);
        assert_eq!(
            only_g.generated_at, "1970-01-01T00:00:00Z",
            "no time in the input: the epoch, not the clock"
        );
    }

    #[test]
    fn framework_filter_keeps_its_controls_and_metrics() {
        let a = metric("n", "a", "Compliant", None, &[("CSA-AICM", "AIS-03")]);
        let b = metric("n", "b", "Compliant", None, &[("NIST-800-53", "CA-7")]);
        let options = Options { framework: Some("nist-800-53".into()), ..Default::default() };
        let r = build(&[a, b], &[], &options);
        assert_eq!(r.controls.len(), 1);
        assert_eq!(r.metrics.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["b"]);
        assert_eq!(r.checklist[7].status, Status::Partial, "only the NIST family is present");
    }

    #[test]
    fn numbers_durations_slugs() {
        assert_eq!(num(95.0), "95");
        assert_eq!(num(95.456), "95.46");
        assert_eq!(num(0.5), "0.5");
        assert_eq!(num(-0.001), "0");
        assert_eq!(duration(40.0), "40s");
        assert_eq!(duration(3725.0), "1h 2m");
        assert_eq!(duration(90061.0), "1d 1h");
        assert_eq!(slug("CSA-AICM-AIS-03"), "csa-aicm-ais-03");
        assert_eq!(slug("EU-AI-ACT Art. 15(2)"), "eu-ai-act-art-15-2");
    }
}
