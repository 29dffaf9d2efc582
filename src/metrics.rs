//! The operator's Prometheus metrics (`/metrics`): metric values and states, policy scores,
//! remediations, reconcile timings and errors, watch health, leadership.
//!
//! Process-wide statics: the controllers update them where the facts arise, and the HTTP
//! server encodes them. Series of a deleted metric or policy are removed with it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::security_metric::{MetricState, SecurityMetricStatus};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MetricLabels {
    pub namespace: String,
    pub metric: String,
    pub category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub namespace: String,
    pub metric: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub namespace: String,
    pub metric: String,
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameLabels {
    pub namespace: String,
    pub metric: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub namespace: String,
    pub policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RemediationLabels {
    pub action: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// `secmetrics_metric_value`: the measured value.
pub static METRIC_VALUE: LazyLock<Family<MetricLabels, FloatGauge>> = LazyLock::new(Family::default);
/// `secmetrics_metric_state`: 1 for the metric's current state, 0 for the others.
pub static METRIC_STATE: LazyLock<Family<StateLabels, Gauge>> = LazyLock::new(Family::default);
/// `secmetrics_metric_anomalous`: 1 while the value or a tenant is outside its baseline.
pub static METRIC_ANOMALOUS: LazyLock<Family<NameLabels, Gauge>> = LazyLock::new(Family::default);
/// `secmetrics_metric_evaluation_errors`: objects whose CEL expressions failed.
pub static EVALUATION_ERRORS: LazyLock<Family<NameLabels, Gauge>> = LazyLock::new(Family::default);
/// `secmetrics_metric_tenant_value`: per-tenant values (bounded: see [`TENANT_SERIES_LIMIT`]).
pub static TENANT_VALUE: LazyLock<Family<TenantLabels, FloatGauge>> = LazyLock::new(Family::default);
/// `secmetrics_policy_score`: percent of a policy's metrics compliant.
pub static POLICY_SCORE: LazyLock<Family<PolicyLabels, FloatGauge>> = LazyLock::new(Family::default);
/// `secmetrics_policy_compliant`: 1 when the policy is Compliant.
pub static POLICY_COMPLIANT: LazyLock<Family<PolicyLabels, Gauge>> = LazyLock::new(Family::default);
/// `secmetrics_remediations_total`: actions recorded, by action and outcome.
pub static REMEDIATIONS: LazyLock<Family<RemediationLabels, Counter>> = LazyLock::new(Family::default);
/// `secmetrics_reconcile_duration_seconds`.
pub static RECONCILE_DURATION: LazyLock<Family<ControllerLabels, Histogram>> =
    LazyLock::new(|| Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 4.0, 10))));
/// `secmetrics_reconcile_errors_total`.
pub static RECONCILE_ERRORS: LazyLock<Family<ControllerLabels, Counter>> = LazyLock::new(Family::default);
/// `secmetrics_watch_errors_total`: watch failures (each is retried with backoff).
pub static WATCH_ERRORS: LazyLock<Family<KindLabels, Counter>> = LazyLock::new(Family::default);
/// `secmetrics_leader`: 1 while this replica leads.
pub static LEADER: LazyLock<Gauge> = LazyLock::new(Gauge::default);
/// `secmetrics_ready`: 1 once CRDs are served and caches synced.
pub static READY: LazyLock<Gauge> = LazyLock::new(Gauge::default);

/// `secmetrics_evaluation_workers`: threads of the evaluation pool.
pub static EVALUATION_WORKERS: LazyLock<Gauge> = LazyLock::new(Gauge::default);
/// `secmetrics_evaluation_busy_workers`: evaluation threads running a job now.
pub static EVALUATION_BUSY_WORKERS: LazyLock<Gauge> = LazyLock::new(Gauge::default);
/// `secmetrics_evaluation_queue_depth`: evaluation jobs waiting for a worker.
pub static EVALUATION_QUEUE_DEPTH: LazyLock<Gauge> = LazyLock::new(Gauge::default);
/// `secmetrics_evaluation_job_duration_seconds`: how long evaluation jobs ran (a job is one
/// metric, or one group of metrics evaluated in one pass).
pub static EVALUATION_JOB_DURATION: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::new(exponential_buckets(0.001, 4.0, 10)));
/// `secmetrics_evaluation_panics_total`: evaluation jobs that panicked (each reported on its
/// metric as EvaluationPanicked).
pub static EVALUATION_PANICS: LazyLock<Counter> = LazyLock::new(Counter::default);

/// Metrics with more tenants than this export no per-tenant series (cardinality bound);
/// `--tenant-series-limit`, 0 turns per-tenant series off.
pub static TENANT_SERIES_LIMIT: AtomicUsize = AtomicUsize::new(20);

static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    let mut r = Registry::with_prefix("secmetrics");
    r.register("metric_value", "The measured value of a SecurityMetric", METRIC_VALUE.clone());
    r.register(
        "metric_state",
        "1 for a SecurityMetric's current state, 0 for the others",
        METRIC_STATE.clone(),
    );
    r.register(
        "metric_anomalous",
        "1 while a SecurityMetric or one of its tenants is outside its baseline",
        METRIC_ANOMALOUS.clone(),
    );
    r.register(
        "metric_evaluation_errors",
        "Objects whose CEL expressions failed in the last evaluation",
        EVALUATION_ERRORS.clone(),
    );
    r.register(
        "metric_tenant_value",
        "A tenant's value of a SecurityMetric (only for metrics with few tenants)",
        TENANT_VALUE.clone(),
    );
    r.register(
        "policy_score",
        "Percent of a MetricPolicy's metrics Compliant or Warning",
        POLICY_SCORE.clone(),
    );
    r.register("policy_compliant", "1 when a MetricPolicy is Compliant", POLICY_COMPLIANT.clone());
    r.register("remediations", "Remediation actions recorded, by action and outcome", REMEDIATIONS.clone());
    r.register(
        "reconcile_duration_seconds",
        "Time to evaluate a metric or reconcile a policy",
        RECONCILE_DURATION.clone(),
    );
    r.register(
        "reconcile_errors",
        "Failed evaluations (status writes) and policy reconciles",
        RECONCILE_ERRORS.clone(),
    );
    r.register("watch_errors", "Watch failures, each retried with backoff", WATCH_ERRORS.clone());
    r.register("evaluation_workers", "Threads of the evaluation worker pool", EVALUATION_WORKERS.clone());
    r.register(
        "evaluation_busy_workers",
        "Evaluation worker threads running a job",
        EVALUATION_BUSY_WORKERS.clone(),
    );
    r.register(
        "evaluation_queue_depth",
        "Evaluation jobs waiting for a worker",
        EVALUATION_QUEUE_DEPTH.clone(),
    );
    r.register(
        "evaluation_job_duration_seconds",
        "Run time of evaluation jobs (one metric, or one group of metrics evaluated in one pass)",
        EVALUATION_JOB_DURATION.clone(),
    );
    r.register("evaluation_panics", "Evaluation jobs that panicked", EVALUATION_PANICS.clone());
    r.register("leader", "1 while this replica is the leader", LEADER.clone());
    r.register("ready", "1 once the CRDs are served and the caches synced", READY.clone());
    r
});

/// Creates the error counters at zero, so a dashboard or alert sees "no errors" rather than
/// "no data" before the first one.
pub fn init() {
    for controller in ["securitymetric", "metricpolicy"] {
        let _ = RECONCILE_ERRORS.get_or_create(&ControllerLabels { controller: controller.into() });
    }
    for kind in ["SecurityMetric", "MetricPolicy"] {
        let _ = WATCH_ERRORS.get_or_create(&KindLabels { kind: kind.into() });
    }
}

/// The metrics in the Prometheus text format.
pub fn encode() -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &REGISTRY).expect("writing to a String cannot fail");
    out
}

const STATES: [MetricState; 4] =
    [MetricState::Compliant, MetricState::Warning, MetricState::Breached, MetricState::Unknown];

/// The label values exported per SecurityMetric, so its series can be removed (a Family
/// removes by exact label set only).
static EXPORTED: LazyLock<Mutex<HashMap<(String, String), Exported>>> = LazyLock::new(Default::default);

#[derive(Default)]
struct Exported {
    category: String,
    tenants: Vec<String>,
}

/// Records a SecurityMetric's status.
pub fn record_metric(namespace: &str, name: &str, category: &str, status: &SecurityMetricStatus) {
    forget_metric(namespace, name);
    let labels = MetricLabels { namespace: namespace.into(), metric: name.into(), category: category.into() };
    if let Some(v) = status.value {
        METRIC_VALUE.get_or_create(&labels).set(v);
    }
    for s in STATES {
        let l = StateLabels { namespace: namespace.into(), metric: name.into(), state: s.as_str().into() };
        METRIC_STATE.get_or_create(&l).set(i64::from(status.state == s));
    }
    let n = NameLabels { namespace: namespace.into(), metric: name.into() };
    METRIC_ANOMALOUS.get_or_create(&n).set(i64::from(status.anomalous));
    EVALUATION_ERRORS.get_or_create(&n).set(status.evaluation_errors.unwrap_or(0));
    let mut exported = Exported { category: category.into(), tenants: Vec::new() };
    let limit = TENANT_SERIES_LIMIT.load(Ordering::Relaxed) as i64;
    if status.tenants_total.is_some_and(|t| t <= limit) {
        for t in &status.tenants {
            if let Some(v) = t.value {
                let l =
                    TenantLabels { namespace: namespace.into(), metric: name.into(), tenant: t.name.clone() };
                TENANT_VALUE.get_or_create(&l).set(v);
                exported.tenants.push(t.name.clone());
            }
        }
    }
    if let Ok(mut e) = EXPORTED.lock() {
        e.insert((namespace.into(), name.into()), exported);
    }
}

/// Forgets a SecurityMetric's series (deleted, or about to be recorded anew).
pub fn forget_metric(namespace: &str, name: &str) {
    let Some(exported) = EXPORTED.lock().ok().and_then(|mut e| e.remove(&(namespace.into(), name.into())))
    else {
        return;
    };
    METRIC_VALUE.remove(&MetricLabels {
        namespace: namespace.into(),
        metric: name.into(),
        category: exported.category,
    });
    for s in STATES {
        METRIC_STATE.remove(&StateLabels {
            namespace: namespace.into(),
            metric: name.into(),
            state: s.as_str().into(),
        });
    }
    let n = NameLabels { namespace: namespace.into(), metric: name.into() };
    METRIC_ANOMALOUS.remove(&n);
    EVALUATION_ERRORS.remove(&n);
    for tenant in exported.tenants {
        TENANT_VALUE.remove(&TenantLabels { namespace: namespace.into(), metric: name.into(), tenant });
    }
}

/// Forgets every metric and policy series: a replica that stops leading stops evaluating,
/// and its last values would otherwise be scraped as if current.
pub fn forget_all() {
    if let Ok(mut e) = EXPORTED.lock() {
        e.clear();
    }
    METRIC_VALUE.clear();
    METRIC_STATE.clear();
    METRIC_ANOMALOUS.clear();
    EVALUATION_ERRORS.clear();
    TENANT_VALUE.clear();
    POLICY_SCORE.clear();
    POLICY_COMPLIANT.clear();
}

/// Records a MetricPolicy's roll-up.
pub fn record_policy(namespace: &str, name: &str, score: Option<f64>, compliant: bool) {
    let l = PolicyLabels { namespace: namespace.into(), policy: name.into() };
    match score {
        Some(s) => {
            POLICY_SCORE.get_or_create(&l).set(s);
        }
        None => {
            POLICY_SCORE.remove(&l);
        }
    }
    POLICY_COMPLIANT.get_or_create(&l).set(i64::from(compliant));
}

/// Forgets a deleted MetricPolicy's series.
pub fn forget_policy(namespace: &str, name: &str) {
    let l = PolicyLabels { namespace: namespace.into(), policy: name.into() };
    POLICY_SCORE.remove(&l);
    POLICY_COMPLIANT.remove(&l);
}

/// Counts one recorded remediation action.
pub fn count_remediation(action: &str, outcome: &str) {
    REMEDIATIONS.get_or_create(&RemediationLabels { action: action.into(), outcome: outcome.into() }).inc();
}

/// Times one reconcile of `controller`.
pub fn observe_reconcile(controller: &str, seconds: f64, failed: bool) {
    let l = ControllerLabels { controller: controller.into() };
    RECONCILE_DURATION.get_or_create(&l).observe(seconds);
    if failed {
        RECONCILE_ERRORS.get_or_create(&l).inc();
    }
}

/// Counts a watch failure for `kind`.
pub fn count_watch_error(kind: &str) {
    WATCH_ERRORS.get_or_create(&KindLabels { kind: kind.into() }).inc();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::security_metric::TenantValue;

    #[test]
    fn a_metric_is_exported_replaced_and_forgotten() {
        let tenant = |name: &str, v: f64| TenantValue {
            name: name.into(),
            value: Some(v),
            state: MetricState::Compliant,
            anomalous: false,
        };
        let status = SecurityMetricStatus {
            value: Some(87.5),
            state: MetricState::Warning,
            tenants: vec![tenant("a", 80.0), tenant("b", 95.0)],
            tenants_total: Some(2),
            ..Default::default()
        };
        record_metric("unit-ns", "unit-m", "AccessControl", &status);
        let text = encode();
        assert!(text.contains(r#"secmetrics_metric_value{namespace="unit-ns",metric="unit-m",category="AccessControl"} 87.5"#), "{text}");
        assert!(
            text.contains(
                r#"secmetrics_metric_state{namespace="unit-ns",metric="unit-m",state="Warning"} 1"#
            )
        );
        assert!(
            text.contains(
                r#"secmetrics_metric_state{namespace="unit-ns",metric="unit-m",state="Compliant"} 0"#
            )
        );
        assert!(text.contains(
            r#"secmetrics_metric_tenant_value{namespace="unit-ns",metric="unit-m",tenant="b"} 95.0"#
        ));
        // Too many tenants: no per-tenant series.
        let many = SecurityMetricStatus { tenants_total: Some(21), ..status };
        record_metric("unit-ns", "unit-m", "AccessControl", &many);
        assert!(!encode().contains(r#"tenant="b""#));
        forget_metric("unit-ns", "unit-m");
        assert!(!encode().contains("unit-m"));
        record_metric("unit-ns", "unit-m", "AccessControl", &many);
        record_policy("unit-ns", "unit-p", Some(50.0), false);
        forget_all();
        let text = encode();
        assert!(!text.contains("unit-m") && !text.contains("unit-p"), "{text}");
    }
}
