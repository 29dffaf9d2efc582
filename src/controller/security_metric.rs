//! Keeps every SecurityMetric's status true.
//!
//! One task owns all metric state. It reacts to three things: a metric's spec changing
//! (its generation), an observed object changing (debounced; only the changed objects are
//! re-evaluated), and each metric's interval (a full re-evaluation). Status is written only
//! when it changed, plus one heartbeat per interval that refreshes `lastEvaluated`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::api::metric_policy::ActionRecord;
use crate::api::security_metric::{
    DEFAULT_TENANT_LABEL, MetricState, PrometheusSource, SecurityMetricSpec, SecurityMetricStatus,
};
use crate::api::{MetricPolicy, SecurityMetric};
use crate::engine::policy::MetricView;
use crate::engine::{
    self, CompileError, CompiledKubernetes, CompiledSource, Kind, ObjectKey, Outcome, Pass, Tally,
    Visibility, aggregate,
};
use crate::leader::Leadership;
use crate::metrics;
use crate::sources::kubernetes::{Change, KindState, Observed, Watches};
use crate::sources::prometheus;
use crate::status;

/// Settings of the metric controller.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespaces whose metrics see the whole cluster.
    pub platform_namespaces: Vec<String>,
    /// How long to wait after an object change before re-evaluating (collects bursts).
    pub debounce: Duration,
    /// Only metrics matching this label selector.
    pub metric_selector: Option<String>,
    /// Longest a metric's full evaluation may run before it is stopped and reported.
    pub evaluation_budget: Duration,
    /// Whether this replica may write.
    pub leadership: Leadership,
    /// Prometheus endpoints defined by the platform team, by name (`endpointRef`).
    pub prometheus_endpoints: HashMap<String, prometheus::Endpoint>,
    /// Longest one Prometheus query may take, whatever the metric asks.
    pub prometheus_max_timeout: Duration,
    /// Set once the SecurityMetrics are listed and every observed kind has synced (or failed).
    pub ready: Arc<AtomicBool>,
}

struct Entry {
    name: String,
    namespace: String,
    generation: Option<i64>,
    labels: BTreeMap<String, String>,
    spec: SecurityMetricSpec,
    compiled: Result<CompiledSource, CompileError>,
    visibility: Visibility,
    object_ref: ObjectReference,
    /// Per-object results of the last evaluation (Kubernetes sources).
    results: Option<Tally>,
    full: bool,
    changed: BTreeSet<ObjectKey>,
    due: Instant,
    /// When the next full (periodic) re-evaluation is due.
    next_full: Instant,
    /// The status as last written (or as found on the object at start-up).
    written: Option<SecurityMetricStatus>,
    /// When the evaluation behind the last write started: the heartbeat clock.
    written_at: Option<Instant>,
}

impl Entry {
    fn kinds(&self) -> Vec<Kind> {
        match &self.compiled {
            Ok(CompiledSource::Kubernetes(k)) => k.kinds(),
            _ => Vec::new(),
        }
    }
}

/// Runs the metric controller until the watch of SecurityMetrics ends.
pub async fn run(client: Client, settings: Settings, recorder: Recorder) {
    let (tx, mut changes) = mpsc::unbounded_channel();
    let observed = Arc::new(Observed::default());
    let mut watches = Watches::new(client.clone(), observed.clone(), tx);
    watches.ensure(&BTreeSet::new());

    let metrics_api: Api<SecurityMetric> = Api::all(client.clone());
    let mut config = watcher::Config::default();
    if let Some(selector) = &settings.metric_selector {
        config = config.labels(selector);
    }
    let mut metric_events = watcher(metrics_api, config).default_backoff().applied_or_deleted().boxed();
    let mut entries: HashMap<(String, String), Entry> = HashMap::new();
    // Prometheus answers arrive here from their own tasks: a slow server delays only its metric.
    let (answers_tx, mut answers) = mpsc::unbounded_channel::<Answer>();
    // History metrics read the others' records: not before all of them are known.
    let mut metrics_listed = false;
    // MetricPolicies' recorded actions feed `history` metrics (RemediationCount).
    let (policies, writer) = reflector::store::<MetricPolicy>();
    tokio::spawn(
        reflector::reflector(
            writer,
            watcher(Api::<MetricPolicy>::all(client.clone()), watcher::Config::default()),
        )
        .default_backoff()
        .for_each(|_| futures::future::ready(())),
    );

    loop {
        let next_due = entries
            .values()
            .map(|e| e.due)
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            ev = metric_events.next() => match ev {
                Some(Ok(AppliedOrDeleted::Applied(m))) => {
                    on_metric(&mut entries, m, &settings);
                    watches.ensure(&wanted_kinds(&entries));
                }
                Some(Ok(AppliedOrDeleted::Deleted(m))) => {
                    entries.remove(&(m.namespace().unwrap_or_default(), m.name_any()));
                    metrics::forget_metric(&m.namespace().unwrap_or_default(), &m.name_any());
                    watches.ensure(&wanted_kinds(&entries));
                }
                Some(Ok(AppliedOrDeleted::Listed)) => metrics_listed = true,
                Some(Err(e)) => {
                    metrics::count_watch_error("SecurityMetric");
                    warn!(error = %e, "SecurityMetric watch error; retrying");
                }
                None => return,
            },
            Some(change) = changes.recv() => on_change(&mut entries, change, settings.debounce),
            Some(answer) = answers.recv() => {
                // An answer to a since-changed source is dropped (the new one is queried).
                let current = |e: &&mut Entry| {
                    matches!(&e.compiled, Ok(CompiledSource::Prometheus(p)) if **p == answer.source)
                };
                if let Some(entry) = entries.get_mut(&answer.key).filter(current) {
                    evaluate(&client, &recorder, &observed, entry, &settings, None, Some(answer.outcome)).await;
                }
            }
            _ = tokio::time::sleep_until(next_due) => {
                let now = Instant::now();
                if !settings.leadership.is_leader() {
                    // A follower keeps its watches warm and evaluates nothing; it looks again
                    // soon, so it takes over promptly.
                    for e in entries.values_mut().filter(|e| e.due <= now) {
                        e.due = now + FOLLOWER_RECHECK;
                    }
                    continue;
                }
                let mut due: Vec<_> = entries.iter().filter(|(_, e)| e.due <= now).map(|(k, _)| k.clone()).collect();
                due.retain(|key| !start_prometheus_query(&client, &mut entries, key, &settings, &observed, &answers_tx));
                let mut full = evaluate_full_in_groups(&entries, &due, &observed, settings.evaluation_budget);
                for key in due {
                    let computed = metrics_listed.then(|| history_outcome(&entries, &key, &policies)).flatten();
                    if let Some(entry) = entries.get_mut(&key) {
                        let precomputed = full.remove(&key);
                        evaluate(&client, &recorder, &observed, entry, &settings, precomputed, computed).await;
                    }
                }
            }
        }
        if !settings.ready.load(Ordering::Relaxed)
            && metrics_listed
            && entries.values().all(|e| !matches!(readiness(&observed, &e.kinds()), Readiness::Syncing))
        {
            info!("caches synced");
            settings.ready.store(true, Ordering::Relaxed);
            metrics::READY.set(1);
        }
    }
}

/// A Prometheus answer for a metric, with the source it was asked for.
struct Answer {
    key: (String, String),
    source: PrometheusSource,
    outcome: Outcome,
}

/// Starts the query of `key` if it is a `prometheus` metric, on a task of its own that sends
/// its answer to `answers` within the metric's timeout (at most the platform's cap, Secrets
/// included): one slow server delays only its own metrics, never the loop. Returns whether a
/// query was started (the metric is evaluated when its answer arrives).
fn start_prometheus_query(
    client: &Client,
    entries: &mut HashMap<(String, String), Entry>,
    key: &(String, String),
    settings: &Settings,
    observed: &Observed,
    answers: &mpsc::UnboundedSender<Answer>,
) -> bool {
    let Some(e) = entries.get_mut(key) else { return false };
    let Ok(CompiledSource::Prometheus(p)) = &e.compiled else { return false };
    let source = (**p).clone();
    let platform = matches!(e.visibility, Visibility::Cluster);
    let timeout = prometheus::effective_timeout(
        source.timeout.as_ref().map(|t| t.get()),
        settings.prometheus_max_timeout,
    );
    // Not due again while the query runs; its answer sets the next time (this only guards
    // against an answer that never comes).
    e.due = Instant::now() + timeout + Duration::from_secs(5);
    let prepared = prometheus::resolve(
        source.address.as_deref(),
        source.endpoint_ref.as_deref(),
        platform,
        &settings.prometheus_endpoints,
    )
    .and_then(|target| prometheus::confine(&source.query, &target, &e.namespace).map(|q| (target, q)));
    // A tenant metric's breakdown keeps only its own tenant (its namespace's).
    let own_tenant = (!platform && source.tenant_label.is_some()).then(|| {
        let label = e.spec.tenancy.as_ref().map(|t| t.tenant_label.as_str()).unwrap_or(DEFAULT_TENANT_LABEL);
        let index = observed.snapshot();
        index
            .namespace(&e.namespace)
            .map(|ns| ns.tenant(label).to_string())
            .unwrap_or_else(|| e.namespace.clone())
    });
    let (client, namespace, key, answers) =
        (client.clone(), e.namespace.clone(), key.clone(), answers.clone());
    tokio::spawn(async move {
        let deadline = Instant::now() + timeout;
        let outcome = match prepared {
            Err(refused) => refused,
            Ok((target, promql)) => {
                let read =
                    tokio::time::timeout_at(deadline, credentials(&client, &namespace, &source, platform));
                match read.await {
                    Err(_) => Outcome::SourceUnavailable {
                        reason: "SecretNotReadable".into(),
                        message: format!(
                            "reading the credentials took longer than the query's timeout ({timeout:?})"
                        ),
                    },
                    Ok(Err(refused)) => refused,
                    Ok(Ok(c)) => {
                        let (label, own) = (source.tenant_label.as_deref(), own_tenant.as_deref());
                        prometheus::query(&target.address, &promql, label, own, timeout, deadline, &c).await
                    }
                }
            }
        };
        let _ = answers.send(Answer { key, source, outcome });
    });
    true
}

/// The credentials a `prometheus` metric names, read from Secrets in its namespace. Only
/// platform metrics may name any (a tenant cannot borrow the operator's access).
async fn credentials(
    client: &Client,
    namespace: &str,
    p: &PrometheusSource,
    platform: bool,
) -> Result<prometheus::Credentials, Outcome> {
    if !platform && (p.auth.is_some() || p.tls.is_some()) {
        return Err(Outcome::SourceUnavailable {
            reason: "AuthNotAllowed".into(),
            message: "only metrics in platform namespaces may use source.prometheus.auth or tls".into(),
        });
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let read = |name: String| {
        let secrets = secrets.clone();
        async move {
            let secret = secrets.get(&name).await.map_err(|e| Outcome::SourceUnavailable {
                reason: "SecretNotReadable".into(),
                message: format!("cannot read Secret {namespace}/{name}: {e} (list it in the chart's prometheus.authSecrets)"),
            })?;
            let data: BTreeMap<String, Vec<u8>> =
                secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
            Ok::<_, Outcome>(data)
        }
    };
    let mut c = prometheus::Credentials::default();
    if let Some(auth) = &p.auth {
        let data = read(auth.secret_ref.clone()).await?;
        c.authorization =
            Some(prometheus::Credentials::authorization(auth.type_, &auth.secret_ref, &data).map_err(
                |message| Outcome::SourceUnavailable { reason: "SecretNotReadable".into(), message },
            )?);
    }
    if let Some(tls) = &p.tls {
        let mut data = read(tls.ca_secret_ref.clone()).await?;
        c.ca_pem = Some(data.remove("ca.crt").ok_or_else(|| Outcome::SourceUnavailable {
            reason: "SecretNotReadable".into(),
            message: format!("Secret {namespace}/{} has no key \"ca.crt\"", tls.ca_secret_ref),
        })?);
    }
    Ok(c)
}

/// How soon a follower looks again (it takes over within a lease duration).
const FOLLOWER_RECHECK: Duration = Duration::from_secs(2);

use kube::runtime::watcher::Event as WatchEvent;

/// A metric applied or deleted (init events folded in), or the initial list complete.
enum AppliedOrDeleted {
    Applied(SecurityMetric),
    Deleted(SecurityMetric),
    Listed,
}

trait AppliedOrDeletedExt {
    fn applied_or_deleted(
        self,
    ) -> impl futures::Stream<Item = Result<AppliedOrDeleted, watcher::Error>> + Send;
}

impl<S> AppliedOrDeletedExt for S
where
    S: futures::Stream<Item = Result<WatchEvent<SecurityMetric>, watcher::Error>> + Send,
{
    fn applied_or_deleted(
        self,
    ) -> impl futures::Stream<Item = Result<AppliedOrDeleted, watcher::Error>> + Send {
        self.filter_map(|ev| async move {
            match ev {
                Ok(WatchEvent::Apply(m)) | Ok(WatchEvent::InitApply(m)) => {
                    Some(Ok(AppliedOrDeleted::Applied(m)))
                }
                Ok(WatchEvent::Delete(m)) => Some(Ok(AppliedOrDeleted::Deleted(m))),
                Ok(WatchEvent::InitDone) => Some(Ok(AppliedOrDeleted::Listed)),
                Ok(WatchEvent::Init) => None,
                Err(e) => Some(Err(e)),
            }
        })
    }
}

fn wanted_kinds(entries: &HashMap<(String, String), Entry>) -> BTreeSet<Kind> {
    entries.values().flat_map(|e| e.kinds()).collect()
}

fn on_metric(entries: &mut HashMap<(String, String), Entry>, m: SecurityMetric, settings: &Settings) {
    let key = (m.namespace().unwrap_or_default(), m.name_any());
    let generation = m.metadata.generation;
    // Our own status writes come back through the watch; only a new spec matters. A newer
    // status is another replica's (the leader's) write: it is the previous status this
    // replica builds on once it leads, so trends and breaches carry over.
    if let Some(e) = entries.get_mut(&key).filter(|e| e.generation == generation && e.spec == m.spec) {
        let newer =
            |s: &SecurityMetricStatus| e.written.as_ref().is_none_or(|w| s.last_evaluated > w.last_evaluated);
        if let Some(status) = m.status.filter(newer) {
            e.written = Some(status);
        }
        return;
    }
    let compiled = engine::compile(&m.spec);
    let visibility = engine::visibility(&key.0, &settings.platform_namespaces);
    let previous = entries.remove(&key);
    let written = previous.as_ref().and_then(|p| p.written.clone()).or_else(|| m.status.clone());
    info!(namespace = %key.0, name = %key.1, ?generation, "metric spec changed; evaluating");
    entries.insert(
        key.clone(),
        Entry {
            name: key.1,
            namespace: key.0,
            generation,
            object_ref: m.object_ref(&()),
            labels: m.metadata.labels.clone().unwrap_or_default(),
            spec: m.spec,
            compiled,
            visibility,
            results: None,
            full: true,
            changed: BTreeSet::new(),
            due: Instant::now(),
            next_full: Instant::now(),
            written,
            written_at: previous.and_then(|p| p.written_at),
        },
    );
}

fn on_change(entries: &mut HashMap<(String, String), Entry>, change: Change, debounce: Duration) {
    let soon = Instant::now() + debounce;
    for e in entries.values_mut() {
        let kinds = e.kinds();
        let relevant = match &change {
            // Namespaces carry labels and tenants every metric depends on.
            Change::Kind(k) => kinds.contains(k) || k.kind == "Namespace",
            Change::Objects(k, keys) => {
                if kinds.first() == Some(k) {
                    e.changed.extend(keys.iter().cloned());
                    true
                } else if kinds.contains(k) || (k.kind == "Namespace" && k.api_version == "v1") {
                    // A looked-up object or a namespace: any object may depend on it.
                    e.full = true;
                    true
                } else {
                    false
                }
            }
        };
        if relevant {
            if matches!(change, Change::Kind(_)) {
                e.full = true;
            }
            e.due = e.due.min(soon);
        }
    }
}

type Full = Result<Tally, engine::EvaluationError>;
type Member<'a> = (&'a (String, String), &'a CompiledKubernetes);

/// Whether `e`'s next evaluation is a full one (not only the changed objects).
fn needs_full(e: &Entry, now: Instant) -> bool {
    e.full || now >= e.next_full || e.results.is_none()
}

/// Full evaluations of the due metrics, one pass over the objects per (kind, visibility)
/// group of two or more metrics (shared expressions are evaluated once per object).
/// Metrics not computed here are evaluated on their own by [`evaluate`].
fn evaluate_full_in_groups(
    entries: &HashMap<(String, String), Entry>,
    due: &[(String, String)],
    observed: &Observed,
    budget: Duration,
) -> HashMap<(String, String), Full> {
    let now = Instant::now();
    let mut groups: HashMap<(Kind, Visibility), Vec<Member<'_>>> = HashMap::new();
    for key in due {
        let Some(e) = entries.get(key) else { continue };
        let Ok(CompiledSource::Kubernetes(k)) = &e.compiled else { continue };
        if needs_full(e, now) && matches!(readiness(observed, &k.kinds()), Readiness::Ready) {
            groups.entry((k.kind.clone(), e.visibility.clone())).or_default().push((key, &**k));
        }
    }
    let mut out = HashMap::new();
    let groups: Vec<_> = groups.into_iter().filter(|(_, members)| members.len() > 1).collect();
    if groups.is_empty() {
        return out;
    }
    let index = observed.snapshot();
    let pass = Pass::with_budget(chrono::Utc::now(), budget);
    // CPU-bound: keep it off the async worker's cooperative budget.
    tokio::task::block_in_place(|| {
        for ((_, visibility), members) in groups {
            let compiled: Vec<&CompiledKubernetes> = members.iter().map(|(_, k)| *k).collect();
            let results = CompiledKubernetes::evaluate_group(&compiled, &pass, &index, &visibility);
            tracing::debug!(kind = %compiled[0].kind, metrics = compiled.len(), "full evaluation in one pass");
            for ((key, _), result) in members.into_iter().zip(results) {
                out.insert(key.clone(), result);
            }
        }
    });
    out
}

/// The first unavailable kind of a metric, or whether some kind is still syncing.
enum Readiness {
    Ready,
    Syncing,
    Unavailable { reason: String, message: String },
}

fn readiness(observed: &Observed, kinds: &[Kind]) -> Readiness {
    for k in kinds.iter().chain(std::iter::once(&crate::sources::kubernetes::namespace_kind())) {
        match observed.kind_state(k) {
            None | Some(KindState::Syncing) => return Readiness::Syncing,
            Some(KindState::Failed { reason, message }) => return Readiness::Unavailable { reason, message },
            Some(KindState::Synced) => {}
        }
    }
    Readiness::Ready
}

/// The outcome of a `history` metric from the records of the other metrics in its namespace
/// (as this controller last wrote or saw them) and of the MetricPolicies there. None for
/// other sources, and while the policies are still loading.
fn history_outcome(
    entries: &HashMap<(String, String), Entry>,
    key: &(String, String),
    policies: &Store<MetricPolicy>,
) -> Option<Outcome> {
    let e = entries.get(key)?;
    let Ok(CompiledSource::History(h)) = &e.compiled else { return None };
    policies.wait_until_ready().now_or_never()?.ok()?;
    let metrics: Vec<MetricView<'_>> = entries
        .values()
        .filter(|m| m.namespace == e.namespace)
        .map(|m| MetricView { name: &m.name, labels: &m.labels, spec: &m.spec, status: m.written.as_ref() })
        .collect();
    let in_namespace =
        policies.state_filter(|p| p.metadata.namespace.as_deref() == Some(e.namespace.as_str()));
    let actions: Vec<&ActionRecord> =
        in_namespace.iter().filter_map(|p| p.status.as_ref()).flat_map(|s| s.recent_actions.iter()).collect();
    // Whole seconds, as the records are (see engine::build_status).
    let now =
        k8s_openapi::jiff::Timestamp::from_second(k8s_openapi::jiff::Timestamp::now().as_second()).ok()?;
    Some(Outcome::Measured(h.measure(&e.name, &e.namespace, &metrics, &actions, now, engine::MAX_OFFENDERS)))
}

/// One metric's evaluation and status write, in a span naming the metric (so every log line
/// of it, JSON included, carries namespace and name).
#[tracing::instrument(skip_all, fields(namespace = %e.namespace, metric = %e.name))]
async fn evaluate(
    client: &Client,
    recorder: &Recorder,
    observed: &Observed,
    e: &mut Entry,
    settings: &Settings,
    precomputed: Option<Full>,
    computed: Option<Outcome>,
) {
    let budget = settings.evaluation_budget;
    let interval = engine::interval(&e.spec);
    let started = Instant::now();
    let outcome = match &e.compiled {
        Err(err) => Outcome::Invalid(err.clone()),
        Ok(CompiledSource::History(_) | CompiledSource::Prometheus(_)) => match computed {
            Some(outcome) => outcome,
            None => {
                // History: the metrics or MetricPolicies are still loading.
                e.due = Instant::now() + Duration::from_millis(500);
                return;
            }
        },
        Ok(CompiledSource::Kubernetes(k)) => match readiness(observed, &k.kinds()) {
            Readiness::Syncing => {
                e.due = Instant::now() + Duration::from_millis(500);
                return;
            }
            Readiness::Unavailable { reason, message } => {
                e.results = None;
                Outcome::SourceUnavailable { reason, message }
            }
            Readiness::Ready => {
                let index = observed.snapshot();
                let pass = Pass::with_budget(chrono::Utc::now(), budget);
                // CEL evaluation is CPU-bound: keep it off the async worker's cooperative budget.
                let full = needs_full(e, Instant::now()) || precomputed.is_some();
                tokio::task::block_in_place(|| {
                    let mut failed = None;
                    match (&mut e.results, full) {
                        (Some(results), false) => {
                            let keys: Vec<_> = std::mem::take(&mut e.changed).into_iter().collect();
                            if let Err(err) = k.evaluate_changed(&pass, &index, &e.visibility, &keys, results)
                            {
                                failed = Some(err);
                            }
                        }
                        _ => {
                            e.changed.clear();
                            e.next_full = Instant::now() + interval;
                            e.results = precomputed
                                .unwrap_or_else(|| k.evaluate_all(&pass, &index, &e.visibility))
                                .map_err(|err| failed = Some(err))
                                .ok();
                        }
                    }
                    e.full = false;
                    match (failed, &e.results) {
                        (Some(err), _) => {
                            // The next evaluation starts over with a full one.
                            e.results = None;
                            err.into()
                        }
                        (None, Some(results)) => {
                            Outcome::Measured(aggregate::measure(k, results, engine::MAX_OFFENDERS))
                        }
                        (None, None) => unreachable!("a tally or an error"),
                    }
                })
            }
        },
    };
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let new = engine::build_status(&e.spec, e.generation, e.written.as_ref(), &outcome, &now);
    let heartbeat_due = e.written_at.is_none_or(|t| t.elapsed() >= interval);
    let changed = e.written.as_ref().is_none_or(|old| engine::status_changed(old, &new));
    // The next periodic evaluation is a full one (expressions may depend on `now`).
    if e.next_full <= Instant::now() {
        e.next_full = Instant::now() + interval;
    }
    e.due = e.next_full;
    if !(changed || heartbeat_due) {
        return;
    }
    // Fencing: the lease may have been lost while evaluating.
    if !settings.leadership.is_leader() {
        e.due = Instant::now() + FOLLOWER_RECHECK;
        return;
    }
    let api: Api<SecurityMetric> = Api::namespaced(client.clone(), &e.namespace);
    match status::write_status(&api, &e.name, &new).await {
        Ok(()) => {
            metrics::record_metric(&e.namespace, &e.name, e.spec.category.as_str(), &new);
            metrics::observe_reconcile("securitymetric", started.elapsed().as_secs_f64(), false);
            let old_state = e.written.as_ref().map(|s| s.state);
            tracing::debug!(namespace = %e.namespace, name = %e.name, state = new.state.as_str(),
                took_ms = started.elapsed().as_millis() as u64, changed, "status written");
            if old_state.is_some_and(|s| s != new.state) {
                publish_transition(recorder, &e.object_ref, old_state.unwrap_or_default(), &new).await;
            }
            e.written = Some(new);
            // The evaluation's start, not the write's end: the next evaluation is due one
            // interval after a later instant, so its heartbeat check always finds a full
            // interval elapsed (measured from the write's end, a slow write made every other
            // heartbeat fall a few milliseconds short and be skipped).
            e.written_at = Some(started);
        }
        Err(err) => {
            metrics::observe_reconcile("securitymetric", started.elapsed().as_secs_f64(), true);
            warn!(namespace = %e.namespace, name = %e.name, error = %err, "writing status failed; retrying soon");
            e.due = Instant::now() + Duration::from_secs(5);
        }
    }
}

async fn publish_transition(
    recorder: &Recorder,
    object: &ObjectReference,
    old: MetricState,
    new: &SecurityMetricStatus,
) {
    let type_ =
        if matches!(new.state, MetricState::Compliant) { EventType::Normal } else { EventType::Warning };
    let value = new.value.map(|v| v.to_string()).unwrap_or_else(|| "none".into());
    let note = format!(
        "{} -> {}: value {value} (objective {})",
        old.as_str(),
        new.state.as_str(),
        new.objective.clone().unwrap_or_default()
    );
    let event = Event {
        type_,
        reason: new.state.as_str().to_string(),
        note: Some(note),
        action: "Evaluate".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, object).await {
        warn!(error = %e, "publishing event failed");
    }
}
