//! Keeps every SecurityMetric's status true.
//!
//! One task owns all metric state. It reacts to three things: a metric's spec changing
//! (its generation), an observed object changing (debounced; only the changed objects are
//! re-evaluated), and each metric's interval (a full re-evaluation). Status is written only
//! when it changed, plus one heartbeat per interval that refreshes `lastEvaluated`.
//!
//! The task never runs CEL itself: it submits due Kubernetes metrics to the evaluation pool
//! ([`super::pool`]) with a snapshot of the objects and keeps serving events while they run;
//! results come back as another event. A metric is in at most one job at a time, so a slow
//! or hostile metric occupies one worker for at most its budget (plus the object being
//! evaluated when the budget runs out) and delays only itself.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

use super::pool::{Done, Pool};
use crate::api::metric_policy::ActionRecord;
use crate::api::security_metric::{
    DEFAULT_TENANT_LABEL, MetricState, PrometheusSource, SecurityMetricSpec, SecurityMetricStatus,
};
use crate::api::{MetricPolicy, SecurityMetric};
use crate::engine::policy::MetricView;
use crate::engine::{
    self, CompileError, CompiledKubernetes, CompiledSource, Kind, ObjectIndex, ObjectKey, Outcome, Pass,
    Tally, Visibility, aggregate,
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
    /// Threads evaluating expressions (the evaluation pool); 0: [`super::pool::default_workers`].
    pub evaluation_workers: usize,
}

type Key = (String, String);

struct Entry {
    /// Which spec this entry is (a new one per spec change): a result of an evaluation
    /// submitted for an older one is dropped.
    epoch: u64,
    name: String,
    namespace: String,
    generation: Option<i64>,
    labels: BTreeMap<String, String>,
    spec: SecurityMetricSpec,
    compiled: Result<Arc<CompiledSource>, CompileError>,
    visibility: Visibility,
    object_ref: ObjectReference,
    /// Evaluated alone, never in a group: after its group's evaluation panicked, until it
    /// succeeds alone.
    solo: bool,
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
        match self.compiled.as_deref() {
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

    // CEL evaluation runs on the pool's threads; this loop only submits and writes results.
    let workers = match settings.evaluation_workers {
        0 => super::pool::default_workers(),
        n => n,
    };
    info!(workers, stack_mib = super::pool::STACK_SIZE >> 20, "evaluation pool starting");
    let (mut pool, mut finished) = EvaluationPool::new(workers, workers * QUEUED_PER_WORKER);
    let mut submitted: HashMap<Key, Submitted> = HashMap::new();
    // Due metrics that found the queue full: not due again before a job has finished.
    let mut deferred: BTreeSet<Key> = BTreeSet::new();

    loop {
        let next_due = entries
            .iter()
            .filter(|(k, _)| !pool.is_in_flight(k) && !deferred.contains(*k))
            .map(|(_, e)| e.due)
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
                    matches!(e.compiled.as_deref(), Ok(CompiledSource::Prometheus(p)) if **p == answer.source)
                };
                if let Some(entry) = entries.get_mut(&answer.key).filter(current) {
                    evaluate(&client, &recorder, &observed, entry, &settings, Some(answer.outcome)).await;
                }
            }
            Some(done) = finished.recv() => {
                pool.finished(&done);
                deferred.clear();
                on_finished(&client, &recorder, &mut entries, &mut submitted, done, &settings).await;
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
                // Longest overdue first: when the queue is full, the others wait their turn.
                let mut due: Vec<_> = entries
                    .iter()
                    .filter(|(k, e)| e.due <= now && !pool.is_in_flight(k) && !deferred.contains(*k))
                    .map(|(k, e)| (e.due, k.clone()))
                    .collect();
                due.sort();
                let mut due: Vec<Key> = due.into_iter().map(|(_, k)| k).collect();
                due.retain(|key| !start_prometheus_query(&client, &mut entries, key, &settings, &observed, &answers_tx));
                deferred.extend(submit_evaluations(&mut entries, &due, &observed, &settings, &mut pool, &mut submitted));
                for key in due {
                    if pool.is_in_flight(&key) || deferred.contains(&key) {
                        continue;
                    }
                    let computed = metrics_listed.then(|| history_outcome(&entries, &key, &policies)).flatten();
                    if let Some(entry) = entries.get_mut(&key) {
                        evaluate(&client, &recorder, &observed, entry, &settings, computed).await;
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
    let Ok(CompiledSource::Prometheus(p)) = e.compiled.as_deref() else { return false };
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
    let compiled = engine::compile(&m.spec).map(Arc::new);
    let visibility = engine::visibility(&key.0, &settings.platform_namespaces);
    let previous = entries.remove(&key);
    let written = previous.as_ref().and_then(|p| p.written.clone()).or_else(|| m.status.clone());
    info!(namespace = %key.0, name = %key.1, ?generation, "metric spec changed; evaluating");
    entries.insert(
        key.clone(),
        Entry {
            epoch: NEXT_EPOCH.fetch_add(1, Ordering::Relaxed),
            name: key.1,
            namespace: key.0,
            generation,
            object_ref: m.object_ref(&()),
            labels: m.metadata.labels.clone().unwrap_or_default(),
            spec: m.spec,
            compiled,
            visibility,
            solo: false,
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

/// Jobs queued per worker at most: more would evaluate ever older snapshots; the loop keeps
/// the other due metrics (longest overdue first) until a job finishes.
const QUEUED_PER_WORKER: usize = 2;

/// Numbers the entries (see [`Entry::epoch`]).
static NEXT_EPOCH: AtomicU64 = AtomicU64::new(0);

/// A metric's evaluation on the pool: for which entry, and since when (the heartbeat clock).
struct Submitted {
    epoch: u64,
    started: Instant,
}

/// What a job hands back for each of its metrics: the tally to keep (none after a failed
/// full evaluation) and the outcome measured from it.
struct Evaluated {
    results: Option<Tally>,
    outcome: Outcome,
}

type EvaluationPool = Pool<Key, Vec<Evaluated>>;

/// Whether `e`'s next evaluation is a full one (not only the changed objects).
fn needs_full(e: &Entry, now: Instant) -> bool {
    e.full || now >= e.next_full || e.results.is_none()
}

/// The Kubernetes source of a metric known to have one.
fn kubernetes(c: &CompiledSource) -> &CompiledKubernetes {
    match c {
        CompiledSource::Kubernetes(k) => k,
        _ => unreachable!("only Kubernetes metrics are evaluated on the pool"),
    }
}

/// Submits the due Kubernetes metrics whose kinds are ready to the pool: full evaluations of
/// two or more metrics of one (kind, visibility) as one job (one pass over the objects,
/// shared expressions evaluated once per object), every other metric as a job of its own.
/// All jobs of a round read one snapshot of the objects. Returns the metrics that found the
/// queue full; the others not submitted (other sources, kinds not ready) are left to
/// [`evaluate`].
fn submit_evaluations(
    entries: &mut HashMap<Key, Entry>,
    due: &[Key],
    observed: &Observed,
    settings: &Settings,
    pool: &mut EvaluationPool,
    submitted: &mut HashMap<Key, Submitted>,
) -> Vec<Key> {
    let now = Instant::now();
    // Jobs in the order of their first metric in `due`.
    let mut jobs: Vec<(Vec<Key>, bool)> = Vec::new();
    let mut group_of: HashMap<(Kind, Visibility), usize> = HashMap::new();
    for key in due {
        let Some(e) = entries.get(key) else { continue };
        let Ok(CompiledSource::Kubernetes(k)) = e.compiled.as_deref() else { continue };
        if !matches!(readiness(observed, &k.kinds()), Readiness::Ready) {
            continue;
        }
        if needs_full(e, now) && !e.solo {
            let at = *group_of.entry((k.kind.clone(), e.visibility.clone())).or_insert_with(|| {
                jobs.push((Vec::new(), true));
                jobs.len() - 1
            });
            jobs[at].0.push(key.clone());
        } else {
            jobs.push((vec![key.clone()], needs_full(e, now)));
        }
    }
    let mut deferred = Vec::new();
    let mut index: Option<Arc<ObjectIndex>> = None;
    let budget = settings.evaluation_budget;
    for (keys, full) in jobs {
        if !pool.has_room() {
            deferred.extend(keys);
            continue;
        }
        let index = index.get_or_insert_with(|| Arc::new(observed.snapshot())).clone();
        let mut members = Vec::new();
        for key in &keys {
            let e = entries.get_mut(key).expect("collected above");
            let compiled = e.compiled.as_ref().expect("a Kubernetes source").clone();
            let changed: Vec<ObjectKey> = std::mem::take(&mut e.changed).into_iter().collect();
            // Moved into the job (a metric is in one job at a time); back with its result.
            let previous = e.results.take();
            if full {
                e.next_full = now + engine::interval(&e.spec);
            }
            e.full = false;
            members.push((compiled, previous, changed));
        }
        let visibility = entries[&keys[0]].visibility.clone();
        let work = move || evaluate_job(members, full, &index, &visibility, budget);
        match pool.submit(keys.clone(), work) {
            Ok(()) => {
                for key in keys {
                    let epoch = entries[&key].epoch;
                    submitted.insert(key, Submitted { epoch, started: now });
                }
            }
            Err(refused) => unreachable!("checked above: {refused:?}"),
        }
    }
    deferred
}

/// A job, on a pool thread: one metric (full or changed objects only) or a group of metrics
/// (full, in one pass). The pass, and so the time budget, starts here: not while queued.
fn evaluate_job(
    members: Vec<(Arc<CompiledSource>, Option<Tally>, Vec<ObjectKey>)>,
    full: bool,
    index: &ObjectIndex,
    visibility: &Visibility,
    budget: Duration,
) -> Vec<Evaluated> {
    let pass = Pass::with_budget(chrono::Utc::now(), budget);
    let measured = |k: &CompiledKubernetes, result: Result<Tally, engine::EvaluationError>| match result {
        Ok(tally) => {
            let outcome = Outcome::Measured(aggregate::measure(k, &tally, engine::MAX_OFFENDERS));
            Evaluated { results: Some(tally), outcome }
        }
        Err(err) => Evaluated { results: None, outcome: err.into() },
    };
    if members.len() > 1 {
        let compiled: Vec<&CompiledKubernetes> = members.iter().map(|(c, _, _)| kubernetes(c)).collect();
        let results = CompiledKubernetes::evaluate_group(&compiled, &pass, index, visibility);
        tracing::debug!(kind = %compiled[0].kind, metrics = compiled.len(), "full evaluation in one pass");
        return compiled.into_iter().zip(results).map(|(k, r)| measured(k, r)).collect();
    }
    members
        .into_iter()
        .map(|(c, previous, changed)| {
            let k = kubernetes(&c);
            match (previous, full) {
                (Some(mut tally), false) => {
                    // Over the cost limit on a changed object: no tally (the next one is full).
                    let result = k.evaluate_changed(&pass, index, visibility, &changed, &mut tally);
                    measured(k, result.map(|()| tally))
                }
                _ => measured(k, k.evaluate_all(&pass, index, visibility)),
            }
        })
        .collect()
}

/// A job's results back from the pool: each metric's tally kept and its status written.
async fn on_finished(
    client: &Client,
    recorder: &Recorder,
    entries: &mut HashMap<Key, Entry>,
    submitted: &mut HashMap<Key, Submitted>,
    done: Done<Key, Vec<Evaluated>>,
    settings: &Settings,
) {
    for (key, outcome, started, pending) in take_results(entries, submitted, done) {
        if let Some(e) = entries.get_mut(&key) {
            conclude(client, recorder, e, settings, outcome, started, pending).await;
        }
    }
}

/// Takes a finished job's results into the entries: per metric to write, its outcome, when
/// its evaluation started, and whether objects changed while it ran (then it is re-evaluated
/// after the debounce). Results for a metric deleted or changed meanwhile are dropped (the
/// new spec is due already). A panicking group names no metric: its members are evaluated
/// again at once, each alone and from then on, so that the panic is the outcome of only the
/// metric that causes it; the others rejoin their group once they succeed alone.
fn take_results(
    entries: &mut HashMap<Key, Entry>,
    submitted: &mut HashMap<Key, Submitted>,
    done: Done<Key, Vec<Evaluated>>,
) -> Vec<(Key, Outcome, Instant, bool)> {
    let Done { keys, result, ran } = done;
    tracing::debug!(metrics = keys.len(), ran_ms = ran.as_millis() as u64, "evaluation job finished");
    let group = keys.len() > 1;
    let mut evaluated: Vec<Option<Evaluated>> = match result {
        Ok(evaluated) => evaluated.into_iter().map(Some).collect(),
        Err(panic) if group => {
            warn!(metrics = ?keys, %panic, "a group evaluation panicked; evaluating its metrics one by one");
            keys.iter().map(|_| None).collect()
        }
        Err(panic) => {
            warn!(metric = ?keys[0], %panic, "evaluation panicked; reported on the metric");
            vec![Some(Evaluated { results: None, outcome: Outcome::Panicked(panic) })]
        }
    };
    let mut out = Vec::new();
    for (key, evaluated) in keys.into_iter().zip(evaluated.iter_mut()) {
        let Some(Submitted { epoch, started }) = submitted.remove(&key) else { continue };
        let Some(e) = entries.get_mut(&key).filter(|e| e.epoch == epoch) else { continue };
        let Some(Evaluated { results, outcome }) = evaluated.take() else {
            // Its group panicked: alone, now (its tally went with the job: a full evaluation).
            e.solo = true;
            e.due = Instant::now();
            continue;
        };
        if !group && e.solo && !matches!(outcome, Outcome::Panicked(_)) {
            e.solo = false;
        }
        e.results = results;
        let pending = e.full || !e.changed.is_empty();
        out.push((key, outcome, started, pending));
    }
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
    let Ok(CompiledSource::History(h)) = e.compiled.as_deref() else { return None };
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

/// One metric's evaluation where it needs no expression (another source, the spec invalid,
/// its kinds not observable) and its status write. Kubernetes metrics whose kinds are ready
/// are evaluated on the pool ([`submit_evaluations`]); left here, they wait for room in it.
#[tracing::instrument(skip_all, fields(namespace = %e.namespace, metric = %e.name))]
async fn evaluate(
    client: &Client,
    recorder: &Recorder,
    observed: &Observed,
    e: &mut Entry,
    settings: &Settings,
    computed: Option<Outcome>,
) {
    let started = Instant::now();
    let outcome = match e.compiled.as_deref() {
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
            // Ready since the pool's round: it is due, and goes to the pool next round.
            Readiness::Ready => return,
        },
    };
    conclude(client, recorder, e, settings, outcome, started, false).await;
}

/// A metric's status from `outcome` of the evaluation begun at `started`, written when it
/// changed or a heartbeat is due; schedules the next evaluation (soon when objects changed
/// meanwhile: `pending`).
#[tracing::instrument(skip_all, fields(namespace = %e.namespace, metric = %e.name))]
async fn conclude(
    client: &Client,
    recorder: &Recorder,
    e: &mut Entry,
    settings: &Settings,
    outcome: Outcome,
    started: Instant,
    pending: bool,
) {
    let interval = engine::interval(&e.spec);
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let new = engine::build_status(&e.spec, e.generation, e.written.as_ref(), &outcome, &now);
    let heartbeat_due = e.written_at.is_none_or(|t| t.elapsed() >= interval);
    let changed = e.written.as_ref().is_none_or(|old| engine::status_changed(old, &new));
    // The next periodic evaluation is a full one (expressions may depend on `now`).
    if e.next_full <= Instant::now() {
        e.next_full = Instant::now() + interval;
    }
    e.due = e.next_full;
    if pending {
        e.due = e.due.min(Instant::now() + settings.debounce);
    }
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

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::api::security_metric::MetricState;

    /// Two nested comprehensions over a long `env`: as expensive per object as the static
    /// limits allow (every pair of entries, all distinct, so `all` never stops early).
    pub(crate) const HOSTILE: &str = "object.spec.containers[0].env.all(a, object.spec.containers[0].env.all(b, a.name != b.name || a.value == b.value))";

    fn spec(passes: &str) -> SecurityMetricSpec {
        serde_json::from_value(json!({
            "displayName": "m", "description": "d", "type": "Technical", "category": "Other",
            "owner": {"team": "t", "responsibility": "ApplicationProvider"},
            "source": {"kubernetes": {"resource": {"apiVersion": "v1", "kind": "Pod"}, "passes": passes}},
            "objective": {"operator": ">=", "target": 100},
        }))
        .unwrap()
    }

    fn compiled(passes: &str) -> Arc<CompiledSource> {
        Arc::new(engine::compile(&spec(passes)).expect("compiles within the static limits"))
    }

    fn pod(ns: &str, name: &str, env: usize) -> Value {
        let env: Vec<Value> = (0..env).map(|i| json!({"name": format!("E{i}"), "value": "v"})).collect();
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {"owner": "a"}},
            "spec": {"containers": [{"name": "c", "image": "i", "env": env}]}})
    }

    fn index(pods: usize, env: usize) -> Arc<ObjectIndex> {
        let mut idx = ObjectIndex::default();
        idx.apply(&Kind::new("v1", "Namespace"), json!({"metadata": {"name": "t"}}));
        idx.ensure_kind(&Kind::new("v1", "Pod"));
        for i in 0..pods {
            idx.apply(&Kind::new("v1", "Pod"), pod("t", &format!("p{i:04}"), env));
        }
        Arc::new(idx)
    }

    fn job(
        source: &Arc<CompiledSource>,
        index: &Arc<ObjectIndex>,
        budget: Duration,
    ) -> impl FnOnce() -> Vec<Evaluated> + Send + 'static {
        let (source, index) = (source.clone(), index.clone());
        move || evaluate_job(vec![(source, None, Vec::new())], true, &index, &Visibility::Cluster, budget)
    }

    const OWNED: &str = "has(object.metadata.labels) && 'owner' in object.metadata.labels";

    #[test]
    fn the_budget_stops_an_evaluation_at_the_first_object_past_it() {
        // Each object alone (within the cost limit) takes longer than the budget: the pass
        // stops before the second.
        let [e] = &job(&compiled(HOSTILE), &index(3, 200), Duration::from_millis(1))()[..] else { panic!() };
        let Outcome::TooExpensive(message) = &e.outcome else { panic!("{:?}", e.outcome) };
        assert!(message.starts_with("evaluation stopped after 1 of 3 objects"), "{message}");
        assert!(e.results.is_none());
    }

    #[test]
    fn a_group_job_measures_each_metric_as_a_job_of_its_own_would() {
        let idx = index(3, 2);
        let (a, b) = (compiled(OWNED), compiled("object.metadata.name == 'p0001'"));
        let group = evaluate_job(
            vec![(a.clone(), None, Vec::new()), (b.clone(), None, Vec::new())],
            true,
            &idx,
            &Visibility::Cluster,
            Duration::from_secs(30),
        );
        for (e, c) in group.iter().zip([a, b]) {
            let alone = job(&c, &idx, Duration::from_secs(30))();
            assert_eq!(e.outcome, alone[0].outcome);
        }
        let Outcome::Measured(m) = &group[1].outcome else { panic!() };
        assert_eq!((m.population, m.passing), (3, 1));
    }

    #[test]
    fn a_panic_is_reported_on_the_metric_as_evaluation_panicked() {
        let outcome = Outcome::Panicked(format!("index out of bounds {}", "x".repeat(2000)));
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let s = engine::build_status(&spec(OWNED), Some(1), None, &outcome, &now);
        let c = |t: &str| s.conditions.iter().find(|c| c.type_ == t).unwrap().clone();
        assert_eq!((c("Ready").status.as_str(), c("Ready").reason.as_str()), ("False", "EvaluationPanicked"));
        let expr = c("ExpressionValid");
        assert_eq!((expr.status.as_str(), expr.reason.as_str()), ("False", "EvaluationPanicked"));
        assert!(
            expr.message.contains("index out of bounds") && expr.message.len() <= 512,
            "{}",
            expr.message
        );
        assert_eq!(s.state, MetricState::Unknown);
    }

    fn entry(name: &str) -> Entry {
        Entry {
            epoch: NEXT_EPOCH.fetch_add(1, Ordering::Relaxed),
            name: name.into(),
            namespace: "t".into(),
            generation: Some(1),
            labels: BTreeMap::new(),
            spec: spec(OWNED),
            compiled: Ok(compiled(OWNED)),
            visibility: Visibility::Namespace("t".into()),
            object_ref: ObjectReference::default(),
            solo: false,
            results: None,
            full: true,
            changed: BTreeSet::new(),
            due: Instant::now() + Duration::from_secs(60),
            next_full: Instant::now(),
            written: None,
            written_at: None,
        }
    }

    fn key(name: &str) -> Key {
        ("t".into(), name.into())
    }

    /// Entries `names`, each submitted (as the loop does) in one job.
    fn submitted(names: &[&str]) -> (HashMap<Key, Entry>, HashMap<Key, Submitted>) {
        let entries: HashMap<Key, Entry> = names.iter().map(|n| (key(n), entry(n))).collect();
        let submitted = entries
            .iter()
            .map(|(k, e)| (k.clone(), Submitted { epoch: e.epoch, started: Instant::now() }))
            .collect();
        (entries, submitted)
    }

    fn panicked(names: &[&str]) -> Done<Key, Vec<Evaluated>> {
        Done { keys: names.iter().map(|n| key(n)).collect(), result: Err("boom".into()), ran: Duration::ZERO }
    }

    #[test]
    fn a_panic_alone_is_that_metrics_outcome() {
        let (mut entries, mut sub) = submitted(&["bad"]);
        let out = take_results(&mut entries, &mut sub, panicked(&["bad"]));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1, Outcome::Panicked("boom".into()));
        assert!(entries[&key("bad")].results.is_none(), "the next evaluation is a full one");
    }

    #[test]
    fn a_panicking_group_is_evaluated_again_one_by_one_and_rejoins_after_success() {
        let (mut entries, mut sub) = submitted(&["a", "b"]);
        let out = take_results(&mut entries, &mut sub, panicked(&["a", "b"]));
        assert!(out.is_empty(), "no metric is blamed for its group's panic");
        for n in ["a", "b"] {
            let e = &entries[&key(n)];
            assert!(e.solo && e.due <= Instant::now(), "{n} is due now, alone");
        }
        // The next round submits each alone; "a" succeeds, "b" panics again.
        let (observed, settings) = (Observed::default(), settings());
        ready(&observed);
        let (mut pool, _rx) = EvaluationPool::new(1, 8);
        let due = [key("a"), key("b")];
        let deferred = submit_evaluations(&mut entries, &due, &observed, &settings, &mut pool, &mut sub);
        assert!(deferred.is_empty());
        assert!(pool.is_in_flight(&key("a")) && pool.is_in_flight(&key("b")));
        let ok = Done {
            keys: vec![key("a")],
            result: Ok(vec![Evaluated { results: None, outcome: Outcome::TooExpensive("x".into()) }]),
            ran: Duration::ZERO,
        };
        assert_eq!(take_results(&mut entries, &mut sub, ok).len(), 1);
        assert!(!entries[&key("a")].solo, "a rejoins its group");
        let out = take_results(&mut entries, &mut sub, panicked(&["b"]));
        assert_eq!(out[0].1, Outcome::Panicked("boom".into()));
        assert!(entries[&key("b")].solo, "b stays alone");
    }

    #[test]
    fn a_result_for_a_replaced_or_deleted_metric_is_dropped() {
        let (mut entries, mut sub) = submitted(&["changed", "deleted"]);
        entries.insert(key("changed"), entry("changed"));
        entries.remove(&key("deleted"));
        let ok = |n: &str| Evaluated { results: None, outcome: Outcome::TooExpensive(n.into()) };
        let done = Done {
            keys: vec![key("changed"), key("deleted")],
            result: Ok(vec![ok("changed"), ok("deleted")]),
            ran: Duration::ZERO,
        };
        assert!(take_results(&mut entries, &mut sub, done).is_empty());
        assert!(sub.is_empty());
    }

    #[test]
    fn objects_changed_while_a_job_ran_make_it_due_again_soon() {
        let (mut entries, mut sub) = submitted(&["m"]);
        entries.get_mut(&key("m")).unwrap().full = false;
        entries
            .get_mut(&key("m"))
            .unwrap()
            .changed
            .insert(ObjectKey { namespace: "t".into(), name: "p".into() });
        let done = Done {
            keys: vec![key("m")],
            result: Ok(vec![Evaluated { results: None, outcome: Outcome::TooExpensive("x".into()) }]),
            ran: Duration::ZERO,
        };
        let out = take_results(&mut entries, &mut sub, done);
        assert!(out[0].3, "pending changes");
    }

    fn settings() -> Settings {
        Settings {
            platform_namespaces: Vec::new(),
            debounce: Duration::from_millis(200),
            metric_selector: None,
            evaluation_budget: Duration::from_secs(1),
            leadership: Leadership::always(),
            prometheus_endpoints: HashMap::new(),
            prometheus_max_timeout: Duration::from_secs(10),
            ready: Arc::new(AtomicBool::new(false)),
            evaluation_workers: 1,
        }
    }

    /// Pods and namespaces observed (synced).
    fn ready(observed: &Observed) {
        let mut kinds = observed.kinds.write().unwrap();
        for k in [Kind::new("v1", "Pod"), crate::sources::kubernetes::namespace_kind()] {
            kinds.insert(k, KindState::Synced);
        }
    }

    /// Submits a hostile metric (stopped by its budget) and then a cheap one; returns how
    /// long after submission the cheap one's result arrived, and the results in order.
    async fn hostile_then_cheap(workers: usize, budget: Duration) -> (Duration, Vec<Key>) {
        let (mut pool, mut done) = EvaluationPool::new(workers, 4);
        // Many objects each within the cost limit (200 x 200 iterations of a small body): the
        // budget, not one object, bounds the hostile job.
        let idx = index(1000, 200);
        let key = |n: &str| ("t".to_string(), n.to_string());
        let start = Instant::now();
        pool.submit(vec![key("hostile")], job(&compiled(HOSTILE), &idx, budget)).unwrap();
        pool.submit(vec![key("cheap")], job(&compiled(OWNED), &idx, budget)).unwrap();
        let mut order = Vec::new();
        let mut cheap_after = Duration::ZERO;
        for _ in 0..2 {
            let d = tokio::time::timeout(Duration::from_secs(30), done.recv()).await.unwrap().unwrap();
            pool.finished(&d);
            let r = d.result.unwrap();
            if d.keys[0].1 == "cheap" {
                cheap_after = start.elapsed();
                assert!(matches!(r[0].outcome, Outcome::Measured(_)), "{:?}", r[0].outcome);
            } else {
                assert!(matches!(r[0].outcome, Outcome::TooExpensive(_)), "{:?}", r[0].outcome);
            }
            order.push(d.keys[0].clone());
        }
        (cheap_after, order)
    }

    #[tokio::test]
    async fn two_workers_a_hostile_metric_does_not_delay_a_cheap_one() {
        let budget = Duration::from_secs(2);
        let (cheap_after, order) = hostile_then_cheap(2, budget).await;
        assert_eq!(order[0].1, "cheap", "the cheap metric finishes first");
        assert!(cheap_after < budget / 2, "the cheap metric waited {cheap_after:?}");
    }

    #[tokio::test]
    async fn one_worker_a_cheap_metric_waits_at_most_the_hostile_ones_budget() {
        let budget = Duration::from_millis(700);
        let (cheap_after, order) = hostile_then_cheap(1, budget).await;
        assert_eq!(order[0].1, "hostile", "one worker: in submission order");
        // The budget, one object past it (checked before every object), and the cheap pass.
        assert!(cheap_after < budget + Duration::from_millis(600), "the cheap metric waited {cheap_after:?}");
    }
}
