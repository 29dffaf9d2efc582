//! The pure evaluation engine: a SecurityMetric spec plus observed objects in, status out.
//! No Kubernetes client here; the controller and `secmetrics evaluate` both drive it.

pub mod aggregate;
pub mod anomaly;
pub mod breaches;
pub mod cost;
pub mod expression;
pub mod fast;
pub mod history;
pub mod kubernetes;
pub mod lookup;
pub mod node;
pub mod objects;
pub mod policy;
pub mod selector;
pub mod shared;
pub mod state;
pub mod trend;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::conditions::{self, EXPRESSION_VALID, NewCondition, READY, SOURCE_AVAILABLE};
use crate::api::security_metric::{
    Anomaly, MetricState, SecurityMetricSpec, SecurityMetricStatus, TenantBaseline, TenantValue,
};
pub use aggregate::{Measurement, Tally};
pub use expression::CompileError;
pub use kubernetes::{CompiledKubernetes, EvaluationError, ObjectResult, Pass, Visibility};
pub use objects::{Kind, ObjectIndex, ObjectKey};

/// Default evaluation interval.
pub const DEFAULT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(300);
/// Most tenants listed in status.
pub const MAX_TENANTS: usize = 20;
/// Most offenders listed in status.
pub const MAX_OFFENDERS: usize = 20;

/// A metric's source, compiled.
#[derive(Debug)]
pub enum CompiledSource {
    Kubernetes(Box<CompiledKubernetes>),
    /// Computed from the operator's own records.
    History(Box<history::CompiledHistory>),
    /// Queried from Prometheus (by the controller: the engine has no client).
    Prometheus(Box<crate::api::security_metric::PrometheusSource>),
}

/// Compiles a metric's source. Errors name the field and position.
pub fn compile(spec: &SecurityMetricSpec) -> Result<CompiledSource, CompileError> {
    let tenant_label = spec.tenancy.as_ref().map(|t| t.tenant_label.as_str());
    match (&spec.source.kubernetes, &spec.source.prometheus, &spec.source.history) {
        (Some(k), None, None) => {
            Ok(CompiledSource::Kubernetes(Box::new(CompiledKubernetes::compile(k, tenant_label)?)))
        }
        (None, Some(p), None) => Ok(CompiledSource::Prometheus(Box::new(p.clone()))),
        (None, None, Some(h)) => history::CompiledHistory::compile(h)
            .map(|c| CompiledSource::History(Box::new(c)))
            .map_err(|e| CompileError { field: e.field, message: e.to_string(), position: None }),
        _ => Err(CompileError {
            field: "source",
            message: "exactly one of kubernetes, prometheus, history must be set".into(),
            position: None,
        }),
    }
}

/// The evaluation interval of a spec.
pub fn interval(spec: &SecurityMetricSpec) -> std::time::Duration {
    spec.interval.as_ref().map(|d| d.get()).unwrap_or(DEFAULT_INTERVAL)
}

/// How old a measurement may be before it is Stale: `maxAge`, default 3 × interval.
pub fn max_age(spec: &SecurityMetricSpec) -> std::time::Duration {
    spec.max_age.as_ref().map(|d| d.get()).unwrap_or_else(|| interval(spec).saturating_mul(3))
}

/// What an evaluation produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A measurement.
    Measured(Measurement),
    /// The source could not be read: `reason` (CamelCase) and a precise message.
    SourceUnavailable { reason: String, message: String },
    /// An expression or selector is invalid.
    Invalid(CompileError),
    /// The expressions were stopped by the evaluation time budget.
    TooExpensive(String),
    /// The evaluation panicked (a bug): the panic's message. Only this metric is affected.
    Panicked(String),
}

impl From<EvaluationError> for Outcome {
    fn from(e: EvaluationError) -> Self {
        match e {
            EvaluationError::KindNotObserved(_) => {
                Outcome::SourceUnavailable { reason: "KindNotObserved".into(), message: e.to_string() }
            }
            EvaluationError::TimeBudgetExceeded { .. } | EvaluationError::CostLimitExceeded(_) => {
                Outcome::TooExpensive(e.to_string())
            }
        }
    }
}

/// Default time budget of one metric's full evaluation.
pub const DEFAULT_EVALUATION_BUDGET: std::time::Duration = std::time::Duration::from_secs(30);

/// Builds the status for `outcome`, keeping timestamps from `previous` where nothing changed.
pub fn build_status(
    spec: &SecurityMetricSpec,
    generation: Option<i64>,
    previous: Option<&SecurityMetricStatus>,
    outcome: &Outcome,
    now: &Time,
) -> SecurityMetricStatus {
    // The API server keeps whole seconds: so does the status held in memory, or records
    // compared across a restart (breach durations, trend spans) would disagree.
    let now = &Time(k8s_openapi::jiff::Timestamp::from_second(now.0.as_second()).unwrap_or(now.0));
    let objective_text = state::describe(&spec.objective);
    let mut status = SecurityMetricStatus {
        observed_generation: generation,
        objective: Some(objective_text.clone()),
        last_evaluated: Some(now.clone()),
        ..Default::default()
    };
    let (expr_ok, source_ok, ready);
    match outcome {
        Outcome::Invalid(e) => {
            expr_ok = NewCondition::new(EXPRESSION_VALID, false, "InvalidExpression", e.to_string());
            source_ok = NewCondition::new(
                SOURCE_AVAILABLE,
                false,
                "NotEvaluated",
                "not evaluated: the spec is invalid",
            );
            ready = NewCondition::new(READY, false, "InvalidSpec", e.to_string());
        }
        Outcome::TooExpensive(message) => {
            expr_ok = NewCondition::new(EXPRESSION_VALID, false, "CostLimitExceeded", message.clone());
            source_ok = NewCondition::new(SOURCE_AVAILABLE, true, "Observed", "the source was read");
            ready = NewCondition::new(READY, false, "CostLimitExceeded", message.clone());
        }
        Outcome::Panicked(panic) => {
            let message = conditions::truncate(
                format!("the evaluation panicked (a bug, please report it): {panic}"),
                512,
            );
            expr_ok = NewCondition::new(EXPRESSION_VALID, false, "EvaluationPanicked", message.clone());
            source_ok = NewCondition::new(SOURCE_AVAILABLE, true, "Observed", "the source was read");
            ready = NewCondition::new(READY, false, "EvaluationPanicked", message);
        }
        Outcome::SourceUnavailable { reason, message } => {
            expr_ok = NewCondition::new(EXPRESSION_VALID, true, "Compiled", "all expressions compiled");
            source_ok = NewCondition::new(SOURCE_AVAILABLE, false, reason.clone(), message.clone());
            ready = NewCondition::new(READY, false, reason.clone(), message.clone());
        }
        Outcome::Measured(m) => {
            expr_ok = NewCondition::new(EXPRESSION_VALID, true, "Compiled", "all expressions compiled");
            source_ok = NewCondition::new(
                SOURCE_AVAILABLE,
                true,
                "Observed",
                format!("{} objects in the population", m.population),
            );
            // A value that is not a finite number (a Sum that overflowed, NaN from a `value`
            // expression or a query) is no value: Unknown and not Ready, never compared.
            let non_finite = m.value.filter(|v| !v.is_finite());
            let value = m.value.filter(|v| v.is_finite());
            status.value = value.map(round);
            status.population = Some(m.population as i64);
            status.passing = Some(m.passing as i64);
            status.evaluation_errors = (m.errors > 0).then_some(m.errors as i64);
            status.first_evaluation_error = m.first_error.clone().map(|e| conditions::truncate(e, 512));
            status.state = state::state_of(&spec.objective, value);
            status.offenders = m.offenders.clone();
            status.offenders_total = Some(m.offenders_total as i64);
            if spec.tenancy.is_some() {
                let mut tenants: Vec<TenantValue> = m
                    .tenants
                    .iter()
                    .map(|(name, v)| (name, v.filter(|v| v.is_finite())))
                    .map(|(name, v)| TenantValue {
                        name: name.clone(),
                        value: v.map(round),
                        state: state::state_of(&spec.objective, v),
                        anomalous: false,
                    })
                    .collect();
                if let Some(a) = &spec.anomaly {
                    status.tenant_baselines = tenant_baselines(a, previous, &mut tenants, &m.tenants);
                    status.tenants_anomalous = Some(tenants.iter().filter(|t| t.anomalous).count() as i64);
                }
                status.tenants_total = Some(tenants.len() as i64);
                status.tenants_breached =
                    Some(tenants.iter().filter(|t| t.state == MetricState::Breached).count() as i64);
                tenants.sort_by(|a, b| {
                    b.state
                        .severity()
                        .cmp(&a.state.severity())
                        .then_with(|| b.anomalous.cmp(&a.anomalous))
                        .then_with(|| a.name.cmp(&b.name))
                });
                tenants.truncate(MAX_TENANTS);
                status.tenants = tenants;
            }
            if let (Some(a), Some(v)) = (&spec.anomaly, value) {
                let before = previous.and_then(|p| p.baseline.as_ref());
                status.anomalous = before.is_some_and(|b| anomaly::is_anomalous(a, b, v));
                status.baseline = Some(anomaly::fold(a, before, v));
            }
            ready = match m.value {
                Some(v) if non_finite.is_some() => NewCondition::new(
                    READY,
                    false,
                    "NonFiniteValue",
                    format!(
                        "{} over {} objects is {v}, not a finite number (an overflow or an undefined value): no value is reported",
                        spec.source.kubernetes.as_ref().map_or_else(
                            || "the value".to_string(),
                            |k| format!("aggregate {:?}", k.aggregate)
                        ),
                        m.population
                    ),
                ),
                Some(v) => NewCondition::new(
                    READY,
                    true,
                    "Evaluated",
                    format!("value {} is {} (objective {objective_text})", round(v), status.state.as_str()),
                ),
                None => NewCondition::new(READY, false, "NoData", "no data: the population is empty"),
            };
        }
    }
    record_history(spec, previous, &mut status, now);
    let prev_conditions = previous.map(|p| p.conditions.as_slice()).unwrap_or_default();
    status.conditions = conditions::merge(prev_conditions, vec![ready, source_ok, expr_ok], generation, now);
    status.last_transition = match previous {
        Some(p) if p.state == status.state => p.last_transition.clone().or_else(|| Some(now.clone())),
        _ => Some(now.clone()),
    };
    status
}

/// Most tenants with a baseline kept in status (by tenant name).
pub const MAX_TENANT_BASELINES: usize = 32;

/// Folds every tenant's value into its baseline and flags the tenants outside theirs.
fn tenant_baselines(
    spec: &Anomaly,
    previous: Option<&SecurityMetricStatus>,
    tenants: &mut [TenantValue],
    values: &std::collections::BTreeMap<String, Option<f64>>,
) -> Vec<TenantBaseline> {
    let before = previous.map(|p| p.tenant_baselines.as_slice()).unwrap_or_default();
    let find =
        |name: &str| before.binary_search_by(|b| b.name.as_str().cmp(name)).ok().map(|i| &before[i].baseline);
    let mut out = Vec::new();
    // `values` is sorted by name, so the kept baselines are the first tenants by name.
    for (name, value) in values {
        let Some(v) = value.filter(|v| v.is_finite()) else { continue };
        if out.len() == MAX_TENANT_BASELINES {
            break;
        }
        let old = find(name);
        if old.is_some_and(|b| anomaly::is_anomalous(spec, b, v))
            && let Some(t) = tenants.iter_mut().find(|t| &t.name == name)
        {
            t.anomalous = true;
        }
        out.push(TenantBaseline { name: name.clone(), baseline: anomaly::fold(spec, old, v) });
    }
    out
}

/// Carries the evidence across evaluations: trend buckets, breach episodes, and baselines
/// and the anomaly episode (kept as they were when this evaluation measured nothing).
fn record_history(
    spec: &SecurityMetricSpec,
    previous: Option<&SecurityMetricStatus>,
    status: &mut SecurityMetricStatus,
    now: &Time,
) {
    let mut trend = previous.and_then(|p| p.trend.clone()).unwrap_or_default();
    let held = previous.and_then(|p| {
        let since = p.last_evaluated.as_ref()?;
        Some((since.0, trend::Held { value: p.value, state: p.state }))
    });
    trend::record(&mut trend, held, now.0, status.value, max_age(spec));
    status.trend = Some(trend);
    status.breaches = previous.map(|p| p.breaches.clone()).unwrap_or_default();
    breaches::record(&mut status.breaches, status.state, now);
    if spec.anomaly.is_some() {
        if status.baseline.is_none() {
            status.baseline = previous.and_then(|p| p.baseline.clone());
        }
        if status.tenants_anomalous.is_none() && status.tenant_baselines.is_empty() {
            status.tenant_baselines = previous.map(|p| p.tenant_baselines.clone()).unwrap_or_default();
        }
        status.anomalous |= status.tenants_anomalous.unwrap_or(0) > 0;
        status.anomalous_since = status.anomalous.then(|| {
            previous
                .filter(|p| p.anomalous)
                .and_then(|p| p.anomalous_since.clone())
                .unwrap_or_else(|| now.clone())
        });
    }
}

/// Values are reported with at most 4 decimals so status does not churn on float noise.
/// Four decimals; values too large for that are already whole (and must not overflow).
fn round(v: f64) -> f64 {
    let r = (v * 10_000.0).round() / 10_000.0;
    if r.is_finite() { r } else { v }
}

/// Whether `new` differs from `old` in anything but the evaluation timestamp: only then is
/// a write needed (besides the heartbeat).
pub fn status_changed(old: &SecurityMetricStatus, new: &SecurityMetricStatus) -> bool {
    // Trend and baselines change with every evaluation; they are written with real changes
    // and heartbeats (folding only at writes is exact: see `trend`).
    let strip = |s: &SecurityMetricStatus| SecurityMetricStatus {
        last_evaluated: None,
        trend: None,
        baseline: None,
        tenant_baselines: Vec::new(),
        ..s.clone()
    };
    strip(old) != strip(new)
}

#[cfg(test)]
mod history_tests;
#[cfg(test)]
mod tests;

/// What a metric in `namespace` may observe: the whole cluster from a platform namespace,
/// its own namespace otherwise (SPEC §3).
pub fn visibility(namespace: &str, platform_namespaces: &[String]) -> Visibility {
    if platform_namespaces.iter().any(|p| p == namespace) {
        Visibility::Cluster
    } else {
        Visibility::Namespace(namespace.to_string())
    }
}
