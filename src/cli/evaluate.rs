//! `secmetrics evaluate`: the engine offline, for GitOps pipelines.
//!
//! Exit codes: 2 on invalid input; otherwise, when MetricPolicies are given, 1 when any policy
//! is not Compliant; without policies, 1 when any metric is Breached or Unknown (no data is
//! never a pass); 0 else.

use std::io::Write;
use std::path::PathBuf;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::json;

use super::load::{self, Document, LoadError, unknown_fields};
use crate::api::conditions::{self, NewCondition, READY};
use crate::api::metric_policy::{ActionRecord, MetricPolicyStatus, PolicyState};
use crate::api::security_metric::{MetricState, SecurityMetricStatus};
use crate::api::{MetricPolicy, SecurityMetric};
use crate::engine::policy::{self, MetricView};
use crate::engine::{self, Kind, ObjectIndex};

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

/// Arguments of `secmetrics evaluate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// SecurityMetric and MetricPolicy manifests (files or directories).
    #[arg(short = 'f', long = "filename", required = true)]
    pub metrics: Vec<PathBuf>,
    /// Cluster objects: manifests, `kubectl get -o yaml|json` output, or directories of them.
    #[arg(long = "objects", required = true)]
    pub objects: Vec<PathBuf>,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
    /// Namespaces whose metrics observe the whole cluster; others see their own namespace only.
    #[arg(long = "platform-namespace", default_value = "secmetrics-system")]
    pub platform_namespaces: Vec<String>,
    /// Namespace for metrics that do not name one.
    #[arg(long, default_value = "default")]
    pub namespace: String,
}

/// Invalid input.
#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{0}")]
    Invalid(String),
    #[error("writing output: {0}")]
    Output(String),
}

/// Runs the command; returns the exit code.
pub fn run(args: &Args, out: &mut dyn Write) -> Result<u8, EvaluateError> {
    let metric_docs = load::load(&args.metrics)?;
    let mut metrics = Vec::new();
    let mut policies = Vec::new();
    for doc in metric_docs {
        match parse_resource(doc, &args.namespace)? {
            Resource::Metric(m) => metrics.push(*m),
            Resource::Policy(p) => policies.push(*p),
        }
    }
    if metrics.is_empty() {
        return Err(EvaluateError::Invalid("no SecurityMetric found in the -f inputs".into()));
    }
    let mut index = ObjectIndex::default();
    index.ensure_kind(&Kind::new("v1", "Namespace"));
    for m in &metrics {
        if let Some(k) = &m.spec.source.kubernetes {
            index.ensure_kind(&Kind::new(&k.resource.api_version, &k.resource.kind));
        }
    }
    // Streamed: each object is converted to its compact cached form as soon as it is parsed,
    // so a dump never sits in memory as JSON.
    load::visit(&args.objects, |doc| {
        let (Some(api_version), Some(kind)) = (doc.value["apiVersion"].as_str(), doc.value["kind"].as_str())
        else {
            return Err(LoadError::Invalid {
                origin: doc.origin,
                message: "an object needs apiVersion and kind".into(),
            });
        };
        let kind = Kind::new(api_version, kind);
        index.apply(&kind, doc.value);
        Ok(())
    })?;

    let now = chrono::Utc::now();
    let now_time = Time(k8s_openapi::jiff::Timestamp::now());
    let statuses = evaluate_parallel(
        &metrics,
        &index,
        &args.platform_namespaces,
        now,
        &now_time,
        engine::DEFAULT_EVALUATION_BUDGET,
    );
    let previous: Vec<Option<SecurityMetricStatus>> = metrics.iter().map(|m| m.status.clone()).collect();
    for (m, status) in metrics.iter_mut().zip(statuses) {
        m.status = Some(status);
    }
    evaluate_history(&mut metrics, &previous, &policies, &now_time);
    let mut exit = 0;
    for m in &metrics {
        let status = m.status.as_ref().expect("every metric evaluated");
        if !matches!(status.state, MetricState::Compliant | MetricState::Warning) {
            exit = 1;
        }
    }
    if !policies.is_empty() {
        exit = 0;
        for p in &mut policies {
            let status = roll_up(p, &metrics, &now_time);
            if status.state != PolicyState::Compliant {
                exit = 1;
            }
            p.status = Some(status);
        }
    }
    write_output(args.output, &metrics, &policies, &args.platform_namespaces, out)
        .map_err(|e| EvaluateError::Output(e.to_string()))?;
    Ok(exit)
}

/// Evaluates `history` metrics from the records of the other metrics (as just evaluated)
/// and the actions the input MetricPolicies recorded, per namespace.
fn evaluate_history(
    metrics: &mut [SecurityMetric],
    previous: &[Option<SecurityMetricStatus>],
    policies: &[MetricPolicy],
    now: &Time,
) {
    let mut computed = Vec::new();
    for (i, m) in metrics.iter().enumerate() {
        let Ok(engine::CompiledSource::History(h)) = engine::compile(&m.spec) else { continue };
        let namespace = m.metadata.namespace.clone().unwrap_or_default();
        let views: Vec<MetricView<'_>> = metrics
            .iter()
            .filter(|o| o.metadata.namespace.as_deref() == Some(namespace.as_str()))
            .map(MetricView::of)
            .collect();
        let actions: Vec<&ActionRecord> = policies
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(namespace.as_str()))
            .filter_map(|p| p.status.as_ref())
            .flat_map(|s| s.recent_actions.iter())
            .collect();
        let name = m.metadata.name.as_deref().unwrap_or_default();
        // Whole seconds, as the records are (see build_status).
        let at = k8s_openapi::jiff::Timestamp::from_second(now.0.as_second()).unwrap_or(now.0);
        let measured = h.measure(name, &namespace, &views, &actions, at, engine::MAX_OFFENDERS);
        let outcome = engine::Outcome::Measured(measured);
        computed.push((
            i,
            engine::build_status(&m.spec, m.metadata.generation, previous[i].as_ref(), &outcome, now),
        ));
    }
    for (i, status) in computed {
        metrics[i].status = Some(status);
    }
}

/// A policy's compliance roll-up over the evaluated metrics of its namespace (remediation is
/// not planned offline: it depends on the live cluster).
fn roll_up(p: &MetricPolicy, metrics: &[SecurityMetric], now: &Time) -> MetricPolicyStatus {
    let views: Vec<MetricView<'_>> =
        metrics.iter().filter(|m| m.metadata.namespace == p.metadata.namespace).map(MetricView::of).collect();
    let (selected, problem) = match policy::select(&p.spec, &views) {
        Ok(s) => (s, None),
        Err(e) => (Vec::new(), Some(("InvalidSelector".to_string(), e.to_string()))),
    };
    let r = policy::roll_up(&p.spec, &selected, now.0);
    let problem = problem.or_else(|| {
        (!r.missing.is_empty())
            .then(|| ("MetricsNotFound".to_string(), format!("metrics not found: {}", r.missing.join(", "))))
    });
    let ready = match problem {
        Some((reason, message)) => NewCondition::new(READY, false, reason, message),
        None => NewCondition::new(READY, true, "Evaluated", "evaluated offline"),
    };
    MetricPolicyStatus {
        observed_generation: p.metadata.generation,
        conditions: conditions::merge(&[], vec![ready], p.metadata.generation, now),
        state: r.state,
        score: r.score,
        coverage: r.coverage,
        metrics: r.metrics,
        frameworks: r.frameworks,
        ..Default::default()
    }
}

/// Most metrics evaluated in one pass. Each holds a tally of every object (about 2 MB at
/// 50k pods with tenancy) until the pass ends, and every core runs a pass: 2 keeps
/// `secmetrics evaluate` under 256 MiB at 50k pods on 2 cores (BENCHMARKS.md), 4 does not.
const MAX_GROUP: usize = 2;

/// Evaluates metrics on every core. Metrics of one kind and visibility form a group that is
/// evaluated in one pass over the objects (shared expressions once per object); each worker
/// takes the next group until none is left.
fn evaluate_parallel(
    metrics: &[SecurityMetric],
    index: &ObjectIndex,
    platform: &[String],
    now: chrono::DateTime<chrono::Utc>,
    now_time: &Time,
    budget: std::time::Duration,
) -> Vec<SecurityMetricStatus> {
    let compiled: Vec<Result<engine::CompiledSource, engine::CompileError>> =
        metrics.iter().map(|m| engine::compile(&m.spec)).collect();
    let visibility: Vec<engine::Visibility> = metrics
        .iter()
        .map(|m| engine::visibility(m.metadata.namespace.as_deref().unwrap_or_default(), platform))
        .collect();
    // Groups of metric indices: one per (kind, visibility); everything else on its own.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut by_kind: std::collections::HashMap<(Kind, engine::Visibility), usize> = Default::default();
    for (i, c) in compiled.iter().enumerate() {
        match c {
            Ok(engine::CompiledSource::Kubernetes(k)) => {
                let g = *by_kind.entry((k.kind.clone(), visibility[i].clone())).or_insert_with(|| {
                    groups.push(Vec::new());
                    groups.len() - 1
                });
                groups[g].push(i);
            }
            _ => groups.push(vec![i]),
        }
    }
    // A group holds one tally per metric until it ends: bound its size to bound memory, and
    // keep metrics sharing a `passes` expression in the same chunk.
    let source = |i: &usize| match &compiled[*i] {
        Ok(engine::CompiledSource::Kubernetes(k)) => k.passes_source().unwrap_or_default(),
        _ => "",
    };
    let groups: Vec<Vec<usize>> = groups
        .into_iter()
        .flat_map(|mut g| {
            g.sort_by(|a, b| source(a).cmp(source(b)).then(a.cmp(b)));
            g.chunks(MAX_GROUP).map(<[usize]>::to_vec).collect::<Vec<_>>()
        })
        .collect();
    let pass = engine::Pass::with_budget(now, budget);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(groups.len().max(1));
    let mut out: Vec<Option<SecurityMetricStatus>> = vec![None; metrics.len()];
    let done: Vec<Vec<(usize, SecurityMetricStatus)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                // An explicit stack: CEL's bounded recursion is measured against it.
                let worker = std::thread::Builder::new().stack_size(engine::expression::EVALUATION_STACK);
                worker
                    .spawn_scoped(s, || {
                        let mut mine = Vec::new();
                        loop {
                            let g = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(members) = groups.get(g) else { break };
                            for (i, outcome) in
                                evaluate_members(members, &compiled, &visibility, index, &pass)
                            {
                                let m = &metrics[i];
                                mine.push((
                                    i,
                                    engine::build_status(
                                        &m.spec,
                                        m.metadata.generation,
                                        None,
                                        &outcome,
                                        now_time,
                                    ),
                                ));
                            }
                        }
                        mine
                    })
                    .expect("spawning an evaluation thread")
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("evaluation worker panicked")).collect()
    });
    for (i, status) in done.into_iter().flatten() {
        out[i] = Some(status);
    }
    out.into_iter().map(|s| s.expect("every metric evaluated")).collect()
}

/// The outcomes of one group (all Kubernetes metrics of one kind and visibility, or one
/// metric of any source).
fn evaluate_members(
    members: &[usize],
    compiled: &[Result<engine::CompiledSource, engine::CompileError>],
    visibility: &[engine::Visibility],
    index: &ObjectIndex,
    pass: &engine::Pass,
) -> Vec<(usize, engine::Outcome)> {
    let kubernetes: Vec<&engine::CompiledKubernetes> = members
        .iter()
        .filter_map(|&i| match &compiled[i] {
            Ok(engine::CompiledSource::Kubernetes(k)) => Some(&**k),
            _ => None,
        })
        .collect();
    if kubernetes.len() == members.len() {
        let results =
            engine::CompiledKubernetes::evaluate_group(&kubernetes, pass, index, &visibility[members[0]]);
        return members
            .iter()
            .zip(kubernetes.iter().zip(results))
            .map(|(&i, (k, r))| {
                let outcome = match r {
                    Ok(tally) => engine::Outcome::Measured(engine::aggregate::measure(
                        k,
                        &tally,
                        engine::MAX_OFFENDERS,
                    )),
                    Err(e) => e.into(),
                };
                (i, outcome)
            })
            .collect();
    }
    members
        .iter()
        .map(|&i| {
            let outcome = match &compiled[i] {
                Err(e) => engine::Outcome::Invalid(e.clone()),
                // Offline there is no Prometheus to ask: no data, and the condition says why.
                Ok(engine::CompiledSource::Prometheus(_)) => engine::Outcome::SourceUnavailable {
                    reason: "NotQueriedOffline".into(),
                    message: "secmetrics evaluate does not query Prometheus; the operator does".into(),
                },
                Ok(engine::CompiledSource::Kubernetes(_)) => unreachable!("grouped above"),
                // Replaced once the other metrics are evaluated (see `evaluate_history`).
                Ok(engine::CompiledSource::History(_)) => engine::Outcome::SourceUnavailable {
                    reason: "NotEvaluated".into(),
                    message: "history metrics are evaluated after the others".into(),
                },
            };
            (i, outcome)
        })
        .collect()
}

enum Resource {
    Metric(Box<SecurityMetric>),
    Policy(Box<MetricPolicy>),
}

fn parse_resource(doc: Document, default_ns: &str) -> Result<Resource, EvaluateError> {
    let kind = doc.value["kind"].as_str().unwrap_or_default();
    let api_version = doc.value["apiVersion"].as_str().unwrap_or_default();
    if api_version == "secmetrics.io/v1alpha1" && matches!(kind, "SecurityMetric" | "MetricPolicy") {
        admit(&doc, kind)?;
    }
    match (api_version, kind) {
        ("secmetrics.io/v1alpha1", "SecurityMetric") => {
            let mut m: SecurityMetric = parse_typed(&doc, kind)?;
            m.metadata.namespace.get_or_insert_with(|| default_ns.to_string());
            Ok(Resource::Metric(Box::new(m)))
        }
        ("secmetrics.io/v1alpha1", "MetricPolicy") => {
            let mut p: MetricPolicy = parse_typed(&doc, kind)?;
            p.metadata.namespace.get_or_insert_with(|| default_ns.to_string());
            Ok(Resource::Policy(Box::new(p)))
        }
        _ => Err(EvaluateError::Invalid(format!(
            "{}: expected a secmetrics.io/v1alpha1 SecurityMetric or MetricPolicy, found {api_version} {kind}",
            doc.origin
        ))),
    }
}

/// Refuses what the API server would refuse: the document validated against the generated CRD
/// schema (the one the cluster enforces), every violation listed with its field path.
fn admit(doc: &Document, kind: &str) -> Result<(), EvaluateError> {
    let (_, violations) = crate::api::validate::validate(kind, &doc.value);
    if violations.is_empty() {
        return Ok(());
    }
    let name = doc.value["metadata"]["name"].as_str().unwrap_or("<unnamed>");
    let lines: Vec<String> = violations.iter().map(|v| format!("  * {v}")).collect();
    Err(EvaluateError::Invalid(format!(
        "{} {kind} {name:?} is invalid (the API server would refuse it):\n{}",
        doc.origin,
        lines.join("\n")
    )))
}

/// Deserializes `doc` as `kind`, rejecting unknown fields by name (the API server would prune
/// them silently, so a typo would otherwise pass review and do nothing).
fn parse_typed<T: serde::de::DeserializeOwned + serde::Serialize>(
    doc: &Document,
    kind: &str,
) -> Result<T, EvaluateError> {
    let name = doc.value["metadata"]["name"].as_str().unwrap_or("<unnamed>").to_string();
    let typed: T = serde_json::from_value(doc.value.clone())
        .map_err(|e| EvaluateError::Invalid(format!("{} {kind} {name}: {e}", doc.origin)))?;
    let round_trip = serde_json::to_value(&typed).expect("serializable");
    let unknown = unknown_fields(&doc.value, &round_trip);
    if !unknown.is_empty() {
        return Err(EvaluateError::Invalid(format!(
            "{} {kind} {name}: unknown field{} {}",
            doc.origin,
            if unknown.len() > 1 { "s" } else { "" },
            unknown.join(", ")
        )));
    }
    Ok(typed)
}

fn write_output(
    output: Output,
    metrics: &[SecurityMetric],
    policies: &[MetricPolicy],
    platform: &[String],
    out: &mut dyn Write,
) -> std::io::Result<()> {
    match output {
        Output::Json | Output::Yaml => {
            let mut items: Vec<serde_json::Value> =
                metrics.iter().map(|m| serde_json::to_value(m).expect("serializable")).collect();
            items.extend(policies.iter().map(|p| serde_json::to_value(p).expect("serializable")));
            let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
            if output == Output::Json {
                writeln!(out, "{}", serde_json::to_string_pretty(&list).expect("serializable"))
            } else {
                write!(out, "{}", serde_saphyr::to_string(&list).map_err(std::io::Error::other)?)
            }
        }
        Output::Table => {
            let mut rows = vec![
                ["NAMESPACE", "NAME", "CATEGORY", "VALUE", "OBJECTIVE", "STATE", "SCOPE", "DETAIL"]
                    .map(String::from),
            ];
            for m in metrics {
                let s = m.status.clone().unwrap_or_default();
                let ns = m.metadata.namespace.clone().unwrap_or_default();
                let detail = s
                    .conditions
                    .iter()
                    .find(|c| c.type_ == "Ready" && c.status == "False")
                    .map(|c| c.message.clone())
                    .or_else(|| s.evaluation_errors.map(|n| format!("{n} evaluation errors")))
                    .unwrap_or_default();
                rows.push([
                    ns.clone(),
                    m.metadata.name.clone().unwrap_or_default(),
                    m.spec.category.as_str().to_string(),
                    s.value.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                    s.objective.unwrap_or_default(),
                    s.state.as_str().to_string(),
                    if platform.contains(&ns) { "cluster".into() } else { format!("namespace {ns}") },
                    detail,
                ]);
            }
            write_table(out, &rows)?;
            if !policies.is_empty() {
                writeln!(out)?;
                let mut rows = vec![
                    ["NAMESPACE", "POLICY", "STATE", "SCORE", "COVERAGE", "REQUIRED", "DETAIL"]
                        .map(String::from),
                ];
                for p in policies {
                    let s = p.status.clone().unwrap_or_default();
                    let pct = |v: Option<f64>| v.map(|v| format!("{v}%")).unwrap_or_else(|| "-".into());
                    let failing: Vec<String> = s
                        .metrics
                        .iter()
                        .filter(|m| !matches!(m.state, MetricState::Compliant | MetricState::Warning))
                        .map(|m| format!("{} {}", m.name, m.state.as_str()))
                        .collect();
                    let detail = s
                        .conditions
                        .iter()
                        .find(|c| c.type_ == READY && c.status == "False")
                        .map(|c| c.message.clone())
                        .unwrap_or_else(|| failing.join(", "));
                    rows.push([
                        p.metadata.namespace.clone().unwrap_or_default(),
                        p.metadata.name.clone().unwrap_or_default(),
                        s.state.as_str().to_string(),
                        pct(s.score),
                        pct(s.coverage),
                        format!(">= {}%", p.spec.requirement.min_compliant_percent),
                        detail,
                    ]);
                }
                write_table(out, &rows)?;
            }
            Ok(())
        }
    }
}

fn write_table<const N: usize>(out: &mut dyn Write, rows: &[[String; N]]) -> std::io::Result<()> {
    let widths: Vec<usize> =
        (0..N).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    for r in rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        writeln!(out, "{}", line.join("  ").trim_end())?;
    }
    Ok(())
}
