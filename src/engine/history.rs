//! The `history` source: operational metrics computed from the operator's own records
//! (breach episodes in SecurityMetric status, actions in MetricPolicy status) over a window.
//! Pure: records and the clock in, a measurement out.

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::aggregate::Measurement;
use super::policy::MetricView;
use super::selector::{Selector, SelectorError};
use crate::api::metric_policy::{ActionRecord, Outcome as ActionOutcome};
use crate::api::security_metric::{Breach, HistorySource, HistoryStatistic, Offender};

/// A history source, compiled: its selector parsed once.
#[derive(Debug)]
pub struct CompiledHistory {
    pub source: HistorySource,
    selector: Option<Selector>,
}

impl CompiledHistory {
    /// Compiles `source`; a bad selector is an error naming the field.
    pub fn compile(source: &HistorySource) -> Result<Self, SelectorError> {
        let selector = source
            .metric_selector
            .as_ref()
            .map(|s| Selector::new("source.history.metricSelector", s))
            .transpose()?;
        Ok(CompiledHistory { source: source.clone(), selector })
    }

    /// Whether the metric `m` is one whose records count (never the history metric itself,
    /// nor another history metric: records of records would loop).
    pub fn selects(&self, own_name: &str, m: &MetricView<'_>) -> bool {
        m.name != own_name
            && m.spec.source.history.is_none()
            && self.selector.as_ref().is_none_or(|s| s.matches(m.labels))
    }

    /// The statistic over the window ending at `now`, from the selected metrics (all in the
    /// history metric's namespace) and the actions MetricPolicies there recorded. The
    /// population is the selected metrics; those with a breach in the window are the
    /// offenders. No selected metric: no data.
    pub fn measure(
        &self,
        own_name: &str,
        namespace: &str,
        metrics: &[MetricView<'_>],
        actions: &[&ActionRecord],
        now: Timestamp,
        max_offenders: usize,
    ) -> Measurement {
        // Checked: a window reaching before the earliest timestamp starts there.
        let window = SignedDuration::try_from(self.source.window.get()).unwrap_or(SignedDuration::MAX);
        let window_start = now.checked_sub(window).unwrap_or(Timestamp::MIN);
        let mut selected: Vec<&MetricView<'_>> =
            metrics.iter().filter(|m| self.selects(own_name, m)).collect();
        selected.sort_by(|a, b| a.name.cmp(b.name));
        let episodes = |m: &MetricView<'_>| -> Vec<(Timestamp, Option<Timestamp>)> {
            let breaches: &[Breach] = m.status.map(|s| s.breaches.as_slice()).unwrap_or_default();
            breaches
                .iter()
                .map(|b| (b.since.0, b.until.as_ref().map(|u| u.0)))
                // Overlapping the window: ended in it, or still open, or started in it.
                .filter(|(since, until)| until.is_none_or(|u| u >= window_start) && *since <= now)
                .collect()
        };
        let mut offenders = Vec::new();
        let mut all = Vec::new();
        for m in &selected {
            let e = episodes(m);
            if !e.is_empty() {
                offenders.push(Offender {
                    kind: "SecurityMetric".into(),
                    namespace: Some(namespace.to_string()),
                    name: m.name.to_string(),
                    tenant: None,
                });
            }
            all.extend(e);
        }
        let seconds = |from: Timestamp, to: Timestamp| to.duration_since(from).as_secs_f64().max(0.0);
        let value = match self.source.statistic {
            // Recovered episodes count their full length; open ones count until now (an
            // unresolved breach pushes MTTR up instead of hiding from it).
            HistoryStatistic::MeanTimeToRecover => {
                let durations: Vec<f64> = all.iter().map(|(s, u)| seconds(*s, u.unwrap_or(now))).collect();
                if durations.is_empty() {
                    0.0
                } else {
                    durations.iter().sum::<f64>() / durations.len() as f64
                }
            }
            HistoryStatistic::BreachCount => all.iter().filter(|(s, _)| *s >= window_start).count() as f64,
            HistoryStatistic::TimeInBreach => {
                all.iter().map(|(s, u)| seconds((*s).max(window_start), u.unwrap_or(now).min(now))).sum()
            }
            HistoryStatistic::RemediationCount => {
                let names: Vec<&str> = selected.iter().map(|m| m.name).collect();
                actions
                    .iter()
                    .filter(|a| {
                        matches!(a.outcome, ActionOutcome::Applied | ActionOutcome::Planned)
                            && a.time.0 >= window_start
                            && a.time.0 <= now
                            && names.contains(&a.metric.as_str())
                    })
                    .count() as f64
            }
        };
        let population = selected.len() as u64;
        let offenders_total = offenders.len() as u64;
        offenders.truncate(max_offenders);
        Measurement {
            value: (population > 0).then_some(value),
            population,
            passing: population - offenders_total,
            offenders,
            offenders_total,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    use super::*;
    use crate::api::security_metric::{SecurityMetricSpec, SecurityMetricStatus};

    const H: i64 = 3600;
    const NOW: i64 = 1_767_225_600 + 40 * 24 * H;

    fn t(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    fn spec(history: bool) -> SecurityMetricSpec {
        let source = if history {
            json!({"history": {"statistic": "MeanTimeToRecover", "window": "720h"}})
        } else {
            json!({"kubernetes": {"resource": {"apiVersion": "v1", "kind": "Pod"}, "passes": "true"}})
        };
        serde_json::from_value(json!({
            "displayName": "m", "description": "d", "type": "Operational", "category": "AccessControl",
            "owner": {"team": "t", "responsibility": "ApplicationProvider"},
            "source": source, "objective": {"operator": "<=", "target": 86400}
        }))
        .unwrap()
    }

    fn status(breaches: &[(i64, Option<i64>)]) -> SecurityMetricStatus {
        SecurityMetricStatus {
            breaches: breaches.iter().map(|(s, u)| Breach { since: t(*s), until: u.map(t) }).collect(),
            ..Default::default()
        }
    }

    fn compiled(statistic: &str, selector: Option<serde_json::Value>) -> CompiledHistory {
        let mut s = json!({"statistic": statistic, "window": "720h"});
        if let Some(sel) = selector {
            s["metricSelector"] = sel;
        }
        CompiledHistory::compile(&serde_json::from_value(s).unwrap()).unwrap()
    }

    struct Fixture {
        specs: Vec<SecurityMetricSpec>,
        statuses: Vec<SecurityMetricStatus>,
        labels: Vec<BTreeMap<String, String>>,
        names: Vec<&'static str>,
    }

    impl Fixture {
        fn new() -> Self {
            let day = 24 * H;
            let critical = BTreeMap::from([("severity".to_string(), "critical".to_string())]);
            Fixture {
                names: vec!["rbac", "netpol", "old", "mttr"],
                specs: vec![spec(false), spec(false), spec(false), spec(true)],
                labels: vec![critical.clone(), critical.clone(), BTreeMap::new(), critical],
                statuses: vec![
                    // Recovered after 2h and after 10h, both in the window; one long before it.
                    status(&[
                        (NOW - 5 * day, Some(NOW - 5 * day + 10 * H)),
                        (NOW - 2 * day, Some(NOW - 2 * day + 2 * H)),
                        (NOW - 39 * day, Some(NOW - 38 * day)),
                    ]),
                    // Open for 6h now.
                    status(&[(NOW - 6 * H, None)]),
                    // Not critical: excluded by the selector.
                    status(&[(NOW - 3 * H, Some(NOW - H))]),
                    status(&[(NOW - H, None)]),
                ],
            }
        }

        fn views(&self) -> Vec<MetricView<'_>> {
            (0..self.names.len())
                .map(|i| MetricView {
                    name: self.names[i],
                    labels: &self.labels[i],
                    spec: &self.specs[i],
                    status: Some(&self.statuses[i]),
                })
                .collect()
        }
    }

    fn value(statistic: &str, actions: &[&ActionRecord]) -> Measurement {
        let f = Fixture::new();
        let c = compiled(statistic, Some(json!({"matchLabels": {"severity": "critical"}})));
        c.measure("mttr", "platform", &f.views(), actions, Timestamp::from_second(NOW).unwrap(), 20)
    }

    #[test]
    fn mean_time_to_recover_counts_recovered_and_open_breaches_in_the_window() {
        let m = value("MeanTimeToRecover", &[]);
        // (10h + 2h + 6h open) / 3; the breach 39 days ago is outside the 30-day window.
        assert_eq!(m.value, Some(6.0 * H as f64));
        assert_eq!((m.population, m.passing, m.offenders_total), (2, 0, 2));
        assert_eq!(m.offenders[0].name, "netpol");
    }

    #[test]
    fn breach_count_and_time_in_breach() {
        assert_eq!(value("BreachCount", &[]).value, Some(3.0));
        assert_eq!(value("TimeInBreach", &[]).value, Some((10 + 2 + 6) as f64 * H as f64));
    }

    #[test]
    fn remediation_count_counts_applied_and_planned_actions_of_selected_metrics_in_the_window() {
        let action = |metric: &str, at: i64, outcome: &str| -> ActionRecord {
            serde_json::from_value(json!({
                "time": t(at).0.to_string(), "rule": "r", "metric": metric, "action": "Event",
                "target": "SecurityMetric platform/x", "outcome": outcome, "dryRun": false
            }))
            .unwrap()
        };
        let actions = [
            action("rbac", NOW - H, "Applied"),
            action("netpol", NOW - 2 * H, "Planned"),
            action("rbac", NOW - 3 * H, "Reverted"),
            action("old", NOW - H, "Applied"),
            action("rbac", NOW - 31 * 24 * H, "Applied"),
        ];
        let refs: Vec<&ActionRecord> = actions.iter().collect();
        assert_eq!(value("RemediationCount", &refs).value, Some(2.0));
    }

    #[test]
    fn nothing_selected_is_no_data_and_no_breach_is_zero() {
        let f = Fixture::new();
        let now = Timestamp::from_second(NOW).unwrap();
        let none = compiled("MeanTimeToRecover", Some(json!({"matchLabels": {"team": "nobody"}})));
        assert_eq!(none.measure("mttr", "p", &f.views(), &[], now, 20).value, None);
        let clean = SecurityMetricStatus::default();
        let views =
            vec![MetricView { name: "calm", labels: &f.labels[2], spec: &f.specs[0], status: Some(&clean) }];
        let all = compiled("MeanTimeToRecover", None);
        let m = all.measure("mttr", "p", &views, &[], now, 20);
        assert_eq!((m.value, m.population, m.passing), (Some(0.0), 1, 1));
    }

    #[test]
    fn the_longest_window_at_the_edges_of_time_never_panics() {
        let c = |statistic: &str| {
            CompiledHistory::compile(
                &serde_json::from_value(json!({"statistic": statistic, "window": "8760h"})).unwrap(),
            )
            .unwrap()
        };
        let extreme = status(&[
            (Timestamp::MAX.as_second(), None),
            (Timestamp::MIN.as_second(), Some(Timestamp::MAX.as_second())),
        ]);
        let (sp, labels) = (spec(false), BTreeMap::new());
        let views = [MetricView { name: "a", labels: &labels, spec: &sp, status: Some(&extreme) }];
        let act: ActionRecord = serde_json::from_value(json!({
            "time": Timestamp::MIN.to_string(), "rule": "r", "metric": "a", "action": "Event",
            "target": "SecurityMetric ns/a", "outcome": "Applied", "dryRun": false
        }))
        .unwrap();
        for statistic in ["MeanTimeToRecover", "BreachCount", "TimeInBreach", "RemediationCount"] {
            for now in [Timestamp::MIN, Timestamp::MIN + SignedDuration::from_hours(1), Timestamp::MAX] {
                let m = c(statistic).measure("h", "ns", &views, &[&act], now, 10);
                assert!(m.value.is_none_or(f64::is_finite), "{statistic} at {now}: {:?}", m.value);
            }
        }
    }
}
