//! A MetricPolicy's compliance roll-up: which metrics it selects, its score, coverage,
//! state, and per-framework-control state. Pure: metrics in, status fields out.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::selector::{Selector, SelectorError};
use crate::api::metric_policy::{FrameworkControlState, MetricPolicySpec, PolicyMetric, PolicyState};
use crate::api::security_metric::{MetricState, SecurityMetricSpec, SecurityMetricStatus};

/// A SecurityMetric as the roll-up sees it.
#[derive(Clone, Copy, Debug)]
pub struct MetricView<'a> {
    /// Metric name.
    pub name: &'a str,
    /// Its labels.
    pub labels: &'a BTreeMap<String, String>,
    /// Its spec.
    pub spec: &'a SecurityMetricSpec,
    /// Its status, if written yet.
    pub status: Option<&'a SecurityMetricStatus>,
}

impl<'a> MetricView<'a> {
    /// The view of a SecurityMetric.
    pub fn of(m: &'a crate::api::SecurityMetric) -> Self {
        static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();
        MetricView {
            name: m.metadata.name.as_deref().unwrap_or_default(),
            labels: m.metadata.labels.as_ref().unwrap_or(&NO_LABELS),
            spec: &m.spec,
            status: m.status.as_ref(),
        }
    }
}

/// The roll-up of a policy over its metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct RollUp {
    /// Compliant, NonCompliant, or Unknown (nothing selected, or no metric has data).
    pub state: PolicyState,
    /// Percent of the selected metrics Compliant or Warning.
    pub score: Option<f64>,
    /// Percent of the selected metrics with fresh data.
    pub coverage: Option<f64>,
    /// Every selected (or named) metric, by name.
    pub metrics: Vec<PolicyMetric>,
    /// Per framework control.
    pub frameworks: Vec<FrameworkControlState>,
    /// Names listed in `spec.metrics` that do not exist.
    pub missing: Vec<String>,
}

/// Which of `metrics` (all in the policy's namespace) the policy selects: the selector's
/// matches plus the named ones, sorted by name.
pub fn select<'a>(
    spec: &MetricPolicySpec,
    metrics: &[MetricView<'a>],
) -> Result<Vec<MetricView<'a>>, SelectorError> {
    let selector = spec.metric_selector.as_ref().map(|s| Selector::new("metricSelector", s)).transpose()?;
    let mut selected: Vec<MetricView<'a>> = metrics
        .iter()
        .filter(|m| {
            selector.as_ref().is_some_and(|s| s.matches(m.labels)) || spec.metrics.iter().any(|n| n == m.name)
        })
        .copied()
        .collect();
    selected.sort_by(|a, b| a.name.cmp(b.name));
    selected.dedup_by(|a, b| a.name == b.name);
    Ok(selected)
}

/// The state a policy sees for a metric: its own, or Unknown when the measurement is older
/// than the metric's maxAge (never a silent pass on stale data).
pub fn effective_state(m: &MetricView<'_>, now: Timestamp) -> MetricState {
    let Some(status) = m.status else { return MetricState::Unknown };
    let fresh = status.last_evaluated.as_ref().is_some_and(|t| {
        let max_age = SignedDuration::try_from(super::max_age(m.spec)).unwrap_or(SignedDuration::MAX);
        now.duration_since(t.0) <= max_age
    });
    if fresh { status.state } else { MetricState::Unknown }
}

fn compliant(s: MetricState) -> bool {
    matches!(s, MetricState::Compliant | MetricState::Warning)
}

/// Rolls `selected` up against the policy's requirement at `now`.
pub fn roll_up(spec: &MetricPolicySpec, selected: &[MetricView<'_>], now: Timestamp) -> RollUp {
    let mut metrics: Vec<PolicyMetric> = selected
        .iter()
        .map(|m| PolicyMetric {
            name: m.name.to_string(),
            state: effective_state(m, now),
            value: m.status.and_then(|s| s.value),
        })
        .collect();
    let missing: Vec<String> = spec
        .metrics
        .iter()
        .filter(|n| !selected.iter().any(|m| m.name == n.as_str()))
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // A named metric that does not exist counts against the requirement.
    metrics.extend(missing.iter().map(|n| PolicyMetric {
        name: n.clone(),
        state: MetricState::Unknown,
        value: None,
    }));
    metrics.sort_by(|a, b| a.name.cmp(&b.name));

    let total = metrics.len();
    let ok = metrics.iter().filter(|m| compliant(m.state)).count();
    let fresh = metrics.iter().filter(|m| m.state != MetricState::Unknown).count();
    let percent = |n: usize| round2(n as f64 * 100.0 / total as f64);
    let (score, coverage) = if total == 0 { (None, None) } else { (Some(percent(ok)), Some(percent(fresh))) };
    let state = match score {
        None => PolicyState::Unknown,
        Some(_) if fresh == 0 => PolicyState::Unknown,
        Some(s) if s + 1e-9 >= spec.requirement.min_compliant_percent => PolicyState::Compliant,
        Some(_) => PolicyState::NonCompliant,
    };

    // Per control: the metrics aligned with it; the policy's own obligations are evidenced by
    // all of its metrics.
    let mut controls: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for c in &spec.compliance {
        controls
            .entry((c.framework.clone(), c.control.clone()))
            .or_default()
            .extend(metrics.iter().map(|m| m.name.clone()));
    }
    for m in selected {
        for c in &m.spec.alignment.compliance {
            controls.entry((c.framework.clone(), c.control.clone())).or_default().insert(m.name.to_string());
        }
    }
    let state_of = |name: &str| metrics.iter().find(|m| m.name == name).map(|m| m.state);
    let frameworks = controls
        .into_iter()
        .map(|((framework, control), names)| {
            let states: Vec<MetricState> = names.iter().filter_map(|n| state_of(n)).collect();
            let state = if states.is_empty() || states.iter().all(|s| *s == MetricState::Unknown) {
                PolicyState::Unknown
            } else if states.iter().all(|s| compliant(*s)) {
                PolicyState::Compliant
            } else {
                PolicyState::NonCompliant
            };
            FrameworkControlState { framework, control, state, metrics: names.into_iter().collect() }
        })
        .collect();
    RollUp { state, score, coverage, metrics, frameworks, missing }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::security_metric::ComplianceControl;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn metric_spec(controls: &[(&str, &str)]) -> SecurityMetricSpec {
        let mut spec: SecurityMetricSpec = serde_json::from_value(serde_json::json!({
            "displayName": "m", "description": "d", "type": "Technical", "category": "Other",
            "owner": {"team": "t", "responsibility": "ApplicationProvider"},
            "source": {"kubernetes": {"resource": {"apiVersion": "v1", "kind": "Pod"}, "passes": "true"}},
            "objective": {"operator": ">=", "target": 90},
            "interval": "1m"
        }))
        .unwrap();
        spec.alignment.compliance = controls
            .iter()
            .map(|(f, c)| ComplianceControl { framework: f.to_string(), control: c.to_string() })
            .collect();
        spec
    }

    fn status(state: MetricState, evaluated_secs_ago: i64, now: Timestamp) -> SecurityMetricStatus {
        SecurityMetricStatus {
            state,
            value: Some(1.0),
            last_evaluated: Some(Time(now - SignedDuration::from_secs(evaluated_secs_ago))),
            ..Default::default()
        }
    }

    fn policy(v: serde_json::Value) -> MetricPolicySpec {
        serde_json::from_value(v).unwrap()
    }

    struct Fixture {
        names: Vec<String>,
        labels: Vec<BTreeMap<String, String>>,
        specs: Vec<SecurityMetricSpec>,
        statuses: Vec<Option<SecurityMetricStatus>>,
    }

    impl Fixture {
        fn views(&self) -> Vec<MetricView<'_>> {
            (0..self.names.len())
                .map(|i| MetricView {
                    name: &self.names[i],
                    labels: &self.labels[i],
                    spec: &self.specs[i],
                    status: self.statuses[i].as_ref(),
                })
                .collect()
        }
    }

    fn fixture(now: Timestamp) -> Fixture {
        let l = |v: &str| BTreeMap::from([("set".to_string(), v.to_string())]);
        Fixture {
            names: ["a", "b", "c", "d", "other"].map(String::from).to_vec(),
            labels: vec![l("x"), l("x"), l("x"), l("x"), l("y")],
            specs: vec![
                metric_spec(&[("CSA-AICM", "AIS-03")]),
                metric_spec(&[("CSA-AICM", "AIS-03"), ("ISO-27001", "9.1")]),
                metric_spec(&[]),
                metric_spec(&[("ISO-27001", "9.1")]),
                metric_spec(&[("PSS", "baseline")]),
            ],
            statuses: vec![
                Some(status(MetricState::Compliant, 10, now)),
                Some(status(MetricState::Warning, 10, now)),
                Some(status(MetricState::Breached, 10, now)),
                // Stale: 3 × 1m is the default maxAge.
                Some(status(MetricState::Compliant, 181, now)),
                Some(status(MetricState::Compliant, 10, now)),
            ],
        }
    }

    #[test]
    fn selects_by_labels_and_names_without_duplicates() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let f = fixture(now);
        let views = f.views();
        let spec = policy(
            serde_json::json!({"metricSelector": {"matchLabels": {"set": "x"}}, "metrics": ["a", "other"]}),
        );
        let names: Vec<&str> = select(&spec, &views).unwrap().iter().map(|m| m.name).collect();
        assert_eq!(names, ["a", "b", "c", "d", "other"]);
        let spec = policy(serde_json::json!({"metrics": ["c"]}));
        let names: Vec<&str> = select(&spec, &views).unwrap().iter().map(|m| m.name).collect();
        assert_eq!(names, ["c"]);
    }

    #[test]
    fn score_counts_warning_as_compliant_and_stale_as_unknown() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let f = fixture(now);
        let views = f.views();
        let spec = policy(serde_json::json!({
            "metricSelector": {"matchLabels": {"set": "x"}},
            "requirement": {"minCompliantPercent": 50},
            "compliance": [{"framework": "CSA-AICM", "control": "AIS-03"}]
        }));
        let selected = select(&spec, &views).unwrap();
        let r = roll_up(&spec, &selected, now);
        // a Compliant, b Warning, c Breached, d stale → 2 of 4 compliant, 3 of 4 fresh.
        assert_eq!((r.score, r.coverage), (Some(50.0), Some(75.0)));
        assert_eq!(r.state, PolicyState::Compliant);
        assert_eq!(r.metrics[3].state, MetricState::Unknown);
        // Exactly at the requirement is compliant; above it is not.
        let strict = MetricPolicySpec {
            requirement: crate::api::metric_policy::Requirement { min_compliant_percent: 50.01 },
            ..spec.clone()
        };
        assert_eq!(roll_up(&strict, &selected, now).state, PolicyState::NonCompliant);

        let controls: Vec<(&str, &str, PolicyState, usize)> = r
            .frameworks
            .iter()
            .map(|c| (c.framework.as_str(), c.control.as_str(), c.state, c.metrics.len()))
            .collect();
        assert_eq!(
            controls,
            [
                // The policy's own obligation: evidenced by all four metrics; c is Breached.
                ("CSA-AICM", "AIS-03", PolicyState::NonCompliant, 4),
                // b Warning, d stale (Unknown): not every metric compliant.
                ("ISO-27001", "9.1", PolicyState::NonCompliant, 2),
            ]
        );
    }

    #[test]
    fn missing_named_metrics_count_against_and_nothing_selected_is_unknown() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let f = fixture(now);
        let views = f.views();
        let spec = policy(serde_json::json!({"metrics": ["a", "ghost"]}));
        let selected = select(&spec, &views).unwrap();
        let r = roll_up(&spec, &selected, now);
        assert_eq!(r.missing, ["ghost"]);
        assert_eq!((r.score, r.coverage, r.state), (Some(50.0), Some(50.0), PolicyState::NonCompliant));

        let none = policy(serde_json::json!({"metricSelector": {"matchLabels": {"set": "nothing"}}}));
        let r = roll_up(&none, &select(&none, &views).unwrap(), now);
        assert_eq!((r.score, r.state), (None, PolicyState::Unknown));
        // Only stale data: Unknown, not NonCompliant or Compliant.
        let stale = policy(serde_json::json!({"metrics": ["d"], "requirement": {"minCompliantPercent": 0}}));
        assert_eq!(roll_up(&stale, &select(&stale, &views).unwrap(), now).state, PolicyState::Unknown);
    }
}
