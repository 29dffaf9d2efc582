//! The evidence a status carries across evaluations: trends, breaches, baselines, anomalies,
//! and the bound on status size. Plain data, clock injected.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use serde_json::json;

use super::*;
use crate::api::security_metric::{MetricState, Offender};

fn spec(anomaly: bool) -> SecurityMetricSpec {
    let mut s = json!({
        "displayName": "tenant CPU", "description": "CPU requested per tenant", "type": "Operational",
        "category": "ResourceAllocation",
        "owner": {"team": "platform", "responsibility": "OrchestratedServiceProvider"},
        "source": {"kubernetes": {"resource": {"apiVersion": "v1", "kind": "Pod"}, "aggregate": "Sum", "value": "1"}},
        "objective": {"operator": "<=", "target": 100, "warning": 150},
        "tenancy": {},
        "interval": "1m",
    });
    if anomaly {
        s["anomaly"] = json!({"window": 10, "sensitivity": 3});
    }
    serde_json::from_value(s).unwrap()
}

fn at(second: i64) -> Time {
    Time(Timestamp::from_second(second).unwrap())
}

/// 2026-01-01T00:00:00Z.
const JAN_1: i64 = 1_767_225_600;

fn measured(value: f64, tenants: &[(&str, f64)]) -> Outcome {
    Outcome::Measured(Measurement {
        value: Some(value),
        population: 10,
        passing: 10,
        tenants: tenants.iter().map(|(n, v)| (n.to_string(), Some(*v))).collect(),
        ..Default::default()
    })
}

#[test]
fn a_tenant_jumping_above_its_own_baseline_is_anomalous_and_the_metric_says_since_when() {
    let spec = spec(true);
    let mut status: Option<SecurityMetricStatus> = None;
    let mut t = JAN_1;
    for i in 0..20 {
        let jitter = (i % 3) as f64 * 0.1;
        let outcome = measured(10.0 + jitter, &[("team-a", 4.0 + jitter), ("team-b", 6.0)]);
        let s = build_status(&spec, Some(1), status.as_ref(), &outcome, &at(t));
        assert!(!s.anomalous, "steady series at step {i}: {:?}", s.tenants);
        status = Some(s);
        t += 60;
    }
    // team-a's use quadruples; the cluster total moves less, but the tenant's own baseline
    // catches it at the first evaluation.
    let s = build_status(
        &spec,
        Some(1),
        status.as_ref(),
        &measured(22.0, &[("team-a", 16.0), ("team-b", 6.0)]),
        &at(t),
    );
    assert!(s.anomalous);
    assert_eq!(s.anomalous_since, Some(at(t)));
    assert_eq!(s.tenants_anomalous, Some(1));
    let flagged: Vec<_> = s.tenants.iter().filter(|x| x.anomalous).map(|x| x.name.as_str()).collect();
    assert_eq!(flagged, ["team-a"]);
    assert_eq!(s.tenant_baselines.len(), 2);
    // The episode keeps its start while it lasts.
    let s2 = build_status(
        &spec,
        Some(1),
        Some(&s),
        &measured(22.0, &[("team-a", 16.0), ("team-b", 6.0)]),
        &at(t + 60),
    );
    if s2.anomalous {
        assert_eq!(s2.anomalous_since, Some(at(t)));
    }
}

#[test]
fn without_a_measurement_baselines_are_kept_and_nothing_is_anomalous() {
    let spec = spec(true);
    let mut status = None;
    for i in 0..10 {
        status = Some(build_status(
            &spec,
            Some(1),
            status.as_ref(),
            &measured(10.0, &[("a", 1.0)]),
            &at(JAN_1 + i * 60),
        ));
    }
    let before = status.clone().unwrap();
    let unavailable = Outcome::SourceUnavailable { reason: "Forbidden".into(), message: "no".into() };
    let s = build_status(&spec, Some(1), status.as_ref(), &unavailable, &at(JAN_1 + 600));
    assert_eq!(s.baseline, before.baseline);
    assert_eq!(s.tenant_baselines, before.tenant_baselines);
    assert!(!s.anomalous);
    assert_eq!(s.state, MetricState::Unknown);
}

#[test]
fn trend_and_breaches_follow_evaluations_and_do_not_count_as_changes() {
    let spec = spec(false);
    let s1 = build_status(&spec, Some(1), None, &measured(50.0, &[]), &at(JAN_1));
    let s2 = build_status(&spec, Some(1), Some(&s1), &measured(50.0, &[]), &at(JAN_1 + 60));
    assert!(!status_changed(&s1, &s2), "a new trend sample alone is not a change");
    assert_eq!(s2.trend.as_ref().unwrap().daily[0].observed_seconds, 60);
    // Breached (beyond warning 150), then back.
    let s3 = build_status(&spec, Some(1), Some(&s2), &measured(200.0, &[]), &at(JAN_1 + 120));
    assert_eq!(s3.state, MetricState::Breached);
    assert_eq!(s3.breaches.len(), 1);
    assert!(s3.breaches[0].until.is_none());
    let s4 = build_status(&spec, Some(1), Some(&s3), &measured(90.0, &[]), &at(JAN_1 + 240));
    assert_eq!(s4.breaches[0].since, at(JAN_1 + 120));
    assert_eq!(s4.breaches[0].until, Some(at(JAN_1 + 240)));
    let day = &s4.trend.as_ref().unwrap().daily[0];
    assert_eq!((day.observed_seconds, day.time_in_breach_seconds), (240, 120));
    // A gap longer than maxAge (3 x 1m) counts only up to maxAge.
    let s5 = build_status(&spec, Some(1), Some(&s4), &measured(90.0, &[]), &at(JAN_1 + 840));
    assert_eq!(s5.trend.as_ref().unwrap().daily[0].observed_seconds, 240 + 180);
    assert_eq!((day.min, day.max, day.last, day.samples), (Some(50.0), Some(200.0), Some(90.0), 4));
}

#[test]
fn status_stays_under_16_kib_with_20_tenants_20_offenders_a_full_year_and_20_breaches() {
    let spec = spec(true);
    let tenants: Vec<(String, f64)> =
        (0..20).map(|i| (format!("tenant-with-a-long-name-{i:02}"), 40.0 + i as f64)).collect();
    let offenders: Vec<Offender> = (0..20)
        .map(|i| Offender {
            kind: "Pod".into(),
            namespace: Some(format!("tenant-with-a-long-name-{i:02}-production")),
            name: format!("inference-server-7d9f8c6b5d-{i:05}"),
            tenant: Some(format!("tenant-with-a-long-name-{i:02}")),
        })
        .collect();
    let mut status = None;
    let mut t = JAN_1;
    // A year and a bit of hourly evaluations, alternating Breached and Compliant days.
    for i in 0..(400 * 24) {
        let breached = (i / 24) % 2 == 1;
        let value = if breached { 160.0 + (i % 7) as f64 } else { 90.0 + (i % 5) as f64 / 3.0 };
        let outcome = Outcome::Measured(Measurement {
            value: Some(value),
            population: 5000,
            passing: 4980,
            errors: 3,
            first_error: Some("object ns/p: no such key: requests".into()),
            tenants: tenants
                .iter()
                .map(|(n, v)| (n.clone(), Some(v + (i % 3) as f64)))
                .collect::<BTreeMap<_, _>>(),
            offenders: offenders.clone(),
            offenders_total: 20,
        });
        status = Some(build_status(&spec, Some(7), status.as_ref(), &outcome, &at(t)));
        t += 3600;
    }
    let s = status.unwrap();
    let trend = s.trend.as_ref().unwrap();
    assert_eq!((trend.daily.len(), trend.monthly.len()), (31, 12));
    assert_eq!(s.breaches.len(), breaches::MAX_BREACHES);
    assert_eq!(s.tenants.len(), 20);
    assert_eq!(s.offenders.len(), 20);
    let size = serde_json::to_vec(&s).unwrap().len();
    let part = |v: serde_json::Value| serde_json::to_vec(&v).unwrap().len();
    let j = serde_json::to_value(&s).unwrap();
    eprintln!(
        "status size: {size} bytes (trend {}, breaches {}, tenants {}, baselines {}, offenders {}, conditions {})",
        part(j["trend"].clone()),
        part(j["breaches"].clone()),
        part(j["tenants"].clone()),
        part(j["tenantBaselines"].clone()),
        part(j["offenders"].clone()),
        part(j["conditions"].clone())
    );
    assert!(size < 16 * 1024, "status is {size} bytes");
}
