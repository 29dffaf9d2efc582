//! Keeps every MetricPolicy's status true and carries out its remediation rules.
//!
//! Reconcile is a pipeline: read the policy's metrics from the shared reflector (pure roll-up)
//! → resolve each due rule's targets (reads) → plan (pure) → act → record in status. The
//! status is the memory: what is active, when each rule last acted, which refusals were
//! recorded; so a restarted operator neither repeats nor forgets an action.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tracing::{info, warn};

use crate::api::conditions::{self, NewCondition, READY};
use crate::api::metric_policy::{
    ActionRecord, ActionType, ActiveRemediation, MetricPolicyStatus, Mode, Outcome, PolicyState,
    RemediationAction, RemediationRule, RuleState, Scope, TargetRef,
};
use crate::api::security_metric::MetricState;
use crate::api::{MetricPolicy, SecurityMetric};
use crate::engine::policy::{self, MetricView};
use crate::leader::Leadership;
use crate::metrics;
use crate::remediation::events::{self, Notice, stable_hash};
use crate::remediation::plan::{self, RuleInput, Step};
use crate::remediation::targets::{self, PolicyPlace};
use crate::remediation::{execute, webhook};
use crate::status;

/// Most entries in `status.recentActions`.
pub const MAX_RECENT_ACTIONS: usize = 20;
/// Reconcile at least this often: metric data can go stale without any event.
const RESYNC: Duration = Duration::from_secs(60);

/// Settings of the policy controller.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespaces whose policies may act cluster-wide and define webhook receivers.
    pub platform_namespaces: Vec<String>,
    /// The operator's namespace (never touched).
    pub operator_namespace: String,
    /// Only policies (and metrics) matching this label selector.
    pub selector: Option<String>,
    /// Whether this replica may write and act.
    pub leadership: Leadership,
}

struct Ctx {
    client: Client,
    settings: Settings,
    metrics: Store<SecurityMetric>,
}

/// Why a reconcile failed (retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing status: {0}")]
    Status(#[source] kube::Error),
    #[error("reading the policy: {0}")]
    Read(#[source] kube::Error),
    #[error("resolving targets: {0}")]
    Targets(#[source] kube::Error),
    #[error("the reconcile did not finish within {0:?}; retrying")]
    Timeout(Duration),
}

/// Runs the policy controller until its watches end.
pub async fn run(client: Client, settings: Settings) {
    let mut config = watcher::Config::default();
    if let Some(selector) = &settings.selector {
        config = config.labels(selector);
    }
    let (metrics, writer) = reflector::store();
    // The reflector updates the store before the event triggers a reconcile, so the
    // reconcile always reads the metric status that triggered it.
    let metric_events =
        reflector::reflector(writer, watcher(Api::<SecurityMetric>::all(client.clone()), config.clone()))
            .default_backoff()
            .touched_objects();
    let controller = Controller::new(Api::<MetricPolicy>::all(client.clone()), config);
    let policies = controller.store();
    let ctx = Arc::new(Ctx { client, settings, metrics });
    controller
        .watches_stream(metric_events, move |m: SecurityMetric| {
            let ns = m.namespace();
            policies
                .state()
                .into_iter()
                .filter(|p| p.namespace() == ns)
                .map(|p| ObjectRef::from_obj(p.as_ref()))
                .collect::<Vec<_>>()
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                if matches!(e, kube::runtime::controller::Error::QueueError(_)) {
                    metrics::count_watch_error("MetricPolicy");
                }
                tracing::debug!(error = %e, "policy reconcile");
            }
        })
        .await;
}

fn error_policy(p: Arc<MetricPolicy>, e: &Error, _: Arc<Ctx>) -> Action {
    warn!(namespace = ?p.namespace(), name = %p.name_any(), error = %e, "policy reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// One record with the Events it owes.
struct Done {
    record: ActionRecord,
    target: TargetRef,
    episode: Timestamp,
}

/// How soon a follower looks again (it takes over within a lease duration).
const FOLLOWER_RECHECK: Duration = Duration::from_secs(2);
/// Longest one policy reconcile may take (webhook deliveries included: each is bounded by
/// its own timeout and retries, well under this).
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(60);

async fn reconcile(p: Arc<MetricPolicy>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if !ctx.settings.leadership.is_leader() {
        return Ok(Action::requeue(FOLLOWER_RECHECK));
    }
    let started = std::time::Instant::now();
    // Bounded: a request that never answers must not hold this policy (or, in the
    // controller's queue, the others) forever. Stopping mid-way is what a crash does, which
    // the reconcile is built to survive (status is its memory).
    let result = tokio::time::timeout(RECONCILE_TIMEOUT, reconcile_as_leader(p, ctx))
        .await
        .unwrap_or(Err(Error::Timeout(RECONCILE_TIMEOUT)));
    metrics::observe_reconcile("metricpolicy", started.elapsed().as_secs_f64(), result.is_err());
    result
}

async fn reconcile_as_leader(p: Arc<MetricPolicy>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = p.namespace().unwrap_or_default();
    let name = p.name_any();
    let leading = || ctx.settings.leadership.is_leader();
    // Before the metric store's first list, every metric would look missing, and every active
    // remediation would look orphaned and be reverted.
    if ctx.metrics.wait_until_ready().await.is_err() {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    // The status is the remediation memory, so read it fresh: the controller's store may not
    // have seen this controller's own last write yet, and acting on that older status would
    // repeat actions.
    let api: Api<MetricPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let p = match api.get_opt(&name).await.map_err(Error::Read)? {
        // Deleted, or deleted and re-created (a new object gets its own reconcile).
        Some(fresh) if fresh.metadata.uid == p.metadata.uid => Arc::new(fresh),
        _ => {
            metrics::forget_policy(&ns, &name);
            return Ok(Action::await_change());
        }
    };
    let now = Timestamp::now();
    let place = PolicyPlace {
        namespace: &ns,
        name: &name,
        platform: ctx.settings.platform_namespaces.contains(&ns),
        operator_namespace: &ctx.settings.operator_namespace,
        platform_namespaces: &ctx.settings.platform_namespaces,
    };
    let old = p.status.clone().unwrap_or_default();
    let all: Vec<Arc<SecurityMetric>> =
        ctx.metrics.state().into_iter().filter(|m| m.namespace().as_deref() == Some(&ns)).collect();
    let views: Vec<MetricView<'_>> = all.iter().map(|m| MetricView::of(m)).collect();

    let mut problems: Vec<(String, String)> = Vec::new();
    let selected = match policy::select(&p.spec, &views) {
        Ok(s) => s,
        Err(e) => {
            problems.push(("InvalidSelector".into(), e.to_string()));
            Vec::new()
        }
    };
    let rollup = policy::roll_up(&p.spec, &selected, now);
    if !rollup.missing.is_empty() {
        problems.push((
            "MetricsNotFound".into(),
            format!("metrics not found in {ns}: {}", rollup.missing.join(", ")),
        ));
    }
    let webhook_rules: Vec<&str> = p
        .spec
        .rules
        .iter()
        .filter(|r| r.actions.iter().any(|a| a.type_ == ActionType::Webhook))
        .map(|r| r.name.as_str())
        .collect();
    if !place.platform && !webhook_rules.is_empty() {
        problems.push((
            "WebhookNotAllowed".into(),
            format!(
                "Webhook receivers may only be defined by policies in platform namespaces ({}); rule {} will not call its URL",
                ctx.settings.platform_namespaces.join(", "),
                webhook_rules.join(", ")
            ),
        ));
    }

    // Rule inputs: trigger state per (rule, metric), targets resolved only when due.
    let by_name: BTreeMap<&str, &Arc<SecurityMetric>> =
        all.iter().map(|m| (m.metadata.name.as_deref().unwrap_or_default(), m)).collect();
    let mut inputs: Vec<RuleInput<'_>> = Vec::new();
    for rule in &p.spec.rules {
        for view in &selected {
            let m = by_name[view.name];
            let status = m.status.as_ref();
            let hold = policy::effective_state(view, now) == MetricState::Unknown;
            let triggered = plan::triggered(rule.when.state, status);
            let mut actions = Vec::new();
            if let Some(since) = triggered
                && !hold
                && plan::due(rule, since, now)
            {
                actions = resolve(&ctx.client, &place, rule, m).await.map_err(Error::Targets)?;
            }
            inputs.push(RuleInput { rule, metric: view.name, triggered, hold, actions });
        }
    }
    let plan = plan::plan(p.spec.mode, &inputs, &old.active_remediations, &old.rule_states, now);
    // Fencing: a replica that lost the lease while deciding does not act.
    if !leading() {
        return Ok(Action::requeue(FOLLOWER_RECHECK));
    }

    // Act: reverts first, then applies grouped per (rule, metric, action) so permissions are
    // checked for all targets of an action before the first change.
    let mut active = old.active_remediations.clone();
    let mut done: Vec<Done> = Vec::new();
    let mut acted: BTreeSet<(String, String)> = BTreeSet::new();
    let mut settled: BTreeMap<(String, String), Timestamp> = BTreeMap::new();
    let stamp = Time(now);
    let record = |s: &Step, outcome: Outcome, message: String| ActionRecord {
        time: stamp.clone(),
        rule: s.rule.clone(),
        metric: s.metric.clone(),
        action: s.action,
        target: s.target.to_string(),
        outcome,
        dry_run: s.dry_run,
        message: (!message.is_empty()).then_some(message),
    };
    let rule_of = |r: &str| p.spec.rules.iter().find(|x| x.name == r);
    let action_of = |r: &str, a: ActionType| rule_of(r).and_then(|r| r.actions.iter().find(|x| x.type_ == a));

    let mut webhooks: Vec<(Step, &RemediationAction, bool)> = Vec::new();
    for s in &plan.revert {
        acted.insert((s.rule.clone(), s.metric.clone()));
        if s.action == ActionType::Webhook {
            if let Some(a) = action_of(&s.rule, s.action).filter(|_| !s.dry_run && place.platform) {
                webhooks.push((s.clone(), a, true));
            } else {
                active.retain(|a| !same(a, s));
                done.push(Done {
                    record: record(s, Outcome::Reverted, String::new()),
                    target: s.target.clone(),
                    episode: s.episode,
                });
            }
            continue;
        }
        // Another metric's remediation holding the same change (one NetworkPolicy per rule
        // and namespace, one label key, one scaled workload): undoing it now would undo that
        // one too. The last holder to recover undoes it.
        let holder = active
            .iter()
            .find(|a| {
                !a.dry_run && a.action == s.action && a.target == s.target && a.key == s.key && !same(a, s)
            })
            .map(|a| a.metric.clone());
        let result = if s.dry_run {
            Ok(String::new())
        } else if let Some(metric) = holder {
            Ok(format!("kept: still needed for metric {metric}"))
        } else {
            match execute::permissions(&ctx.client, s.action, &s.target, true).await {
                Ok(perms) => match execute::check(&ctx.client, &perms).await {
                    Ok(()) => execute::revert(&ctx.client, s).await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            }
        };
        match result {
            Ok(msg) => {
                active.retain(|a| !same(a, s));
                done.push(Done {
                    record: record(s, Outcome::Reverted, msg),
                    target: s.target.clone(),
                    episode: s.episode,
                });
            }
            Err(e) => done.push(Done {
                record: record(s, Outcome::Failed, format!("revert: {e}")),
                target: s.target.clone(),
                episode: s.episode,
            }),
        }
    }

    let mut groups: BTreeMap<(String, String, ActionType), Vec<&Step>> = BTreeMap::new();
    for s in &plan.apply {
        groups.entry((s.rule.clone(), s.metric.clone(), s.action)).or_default().push(s);
    }
    for ((rule, metric, action_type), steps) in groups {
        acted.insert((rule.clone(), metric.clone()));
        let Some(action) = action_of(&rule, action_type) else { continue };
        if action_type == ActionType::Webhook && !place.platform {
            continue;
        }
        let dry_run = steps[0].dry_run;
        if dry_run {
            for s in steps {
                upsert(&mut active, s, &stamp);
                done.push(Done {
                    record: record(s, Outcome::Planned, String::new()),
                    target: s.target.clone(),
                    episode: s.episode,
                });
            }
            continue;
        }
        if action_type == ActionType::Webhook {
            for s in steps {
                webhooks.push((s.clone(), action, false));
            }
            continue;
        }
        // Every permission of every target first: all or nothing.
        let mut denied = None;
        for s in &steps {
            let check = match execute::permissions(&ctx.client, action_type, &s.target, false).await {
                Ok(perms) => execute::check(&ctx.client, &perms).await,
                Err(e) => Err(e),
            };
            if let Err(e) = check {
                denied = Some(e.to_string());
                break;
            }
        }
        if let Some(msg) = denied {
            for s in steps {
                done.push(Done {
                    record: record(s, Outcome::Failed, msg.clone()),
                    target: s.target.clone(),
                    episode: s.episode,
                });
            }
            continue;
        }
        // ScaleToZero records the replicas it will restore before it scales, in status, where
        // the workload's owner cannot write: a restart in between redoes the (pending) change
        // with the recorded count, and nothing on the workload is ever trusted.
        let mut ready: Vec<(Step, bool, Option<ActiveRemediation>)> = Vec::new();
        for s in steps {
            let prior = active.iter().find(|a| same(a, s)).cloned();
            if action_type != ActionType::ScaleToZero {
                ready.push((s.clone(), false, prior));
                continue;
            }
            let mut s = s.clone();
            let fresh = s.previous_replicas.is_none();
            if fresh {
                match execute::replicas(&ctx.client, &s.target).await {
                    Ok(r) => s.previous_replicas = Some(r),
                    Err(e) => {
                        done.push(Done {
                            record: record(&s, Outcome::Failed, e.to_string()),
                            target: s.target.clone(),
                            episode: s.episode,
                        });
                        continue;
                    }
                }
            }
            upsert_pending(&mut active, &s, &stamp);
            ready.push((s, fresh, prior));
        }
        if action_type == ActionType::ScaleToZero && !ready.is_empty() {
            // The last status plus these pending entries only: what else this reconcile did is
            // recorded (with its Events) at the end, or redone after a restart.
            let mut recorded = old.active_remediations.clone();
            for (s, _, _) in &ready {
                upsert_pending(&mut recorded, s, &stamp);
            }
            let interim = build_status(
                &p,
                &old,
                &rollup,
                &problems,
                &inputs,
                recorded,
                &[],
                BTreeSet::new(),
                BTreeMap::new(),
                now,
            );
            if !leading() {
                return Ok(Action::requeue(FOLLOWER_RECHECK));
            }
            status::write_status(&api, &name, &interim).await.map_err(Error::Status)?;
        }
        for (s, fresh, prior) in ready {
            match execute::apply(&ctx.client, &place, &s, action, fresh).await {
                Ok(msg) => {
                    upsert(&mut active, &s, &stamp);
                    done.push(Done {
                        record: record(&s, Outcome::Applied, msg),
                        target: s.target.clone(),
                        episode: s.episode,
                    });
                }
                Err(e) => {
                    // Nothing changed: the entry is what it was before this attempt (a
                    // change recorded but not confirmed stays pending, to be made again).
                    if !prior.as_ref().is_some_and(|a| a.pending) {
                        active.retain(|a| !same(a, &s));
                        active.extend(prior);
                    }
                    let outcome = if matches!(e, execute::StepError::Refused(_)) {
                        Outcome::Refused
                    } else {
                        Outcome::Failed
                    };
                    done.push(Done {
                        record: record(&s, outcome, e.to_string()),
                        target: s.target.clone(),
                        episode: s.episode,
                    });
                }
            }
        }
    }

    // A webhook cannot be taken back, so it is recorded as sent (or as no longer active)
    // before it is sent: an operator killed in between never sends it a second time. The
    // cost is the other way round: such a delivery may be lost, never duplicated.
    if !webhooks.is_empty() {
        let mut pending = active.clone();
        for (s, _, resolved) in &webhooks {
            if *resolved {
                pending.retain(|a| !same(a, s));
            } else {
                upsert(&mut pending, s, &stamp);
            }
        }
        let interim = build_status(
            &p,
            &old,
            &rollup,
            &problems,
            &inputs,
            pending,
            &done,
            acted.clone(),
            settled.clone(),
            now,
        );
        if !leading() {
            return Ok(Action::requeue(FOLLOWER_RECHECK));
        }
        if interim != old {
            status::write_status(&api, &name, &interim).await.map_err(Error::Status)?;
        }
    }

    // Webhooks last and concurrently: a slow or failing receiver delays nobody else.
    let deliveries = webhooks.iter().map(|(s, a, resolved)| {
        let ctx = ctx.clone();
        let p = p.clone();
        let metric = by_name.get(s.metric.as_str()).and_then(|m| m.status.as_ref());
        let (state, value) = metric.map(|m| (m.state, m.value)).unwrap_or_default();
        async move { deliver(&ctx.client, &p, s, a, *resolved, state, value).await }
    });
    for ((s, _, resolved), result) in webhooks.iter().zip(futures::future::join_all(deliveries).await) {
        let (outcome, msg) = match (result, resolved) {
            (Ok(msg), false) => {
                upsert(&mut active, s, &stamp);
                (Outcome::Applied, msg)
            }
            (Ok(msg), true) => {
                active.retain(|a| !same(a, s));
                (Outcome::Reverted, msg)
            }
            (Err(msg), _) => (Outcome::Failed, msg),
        };
        done.push(Done { record: record(s, outcome, msg), target: s.target.clone(), episode: s.episode });
    }

    for f in &plan.forget {
        active.retain(|a| {
            !(a.rule == f.rule && a.metric == f.metric && a.action == f.action && a.target == f.target)
        });
        acted.insert((f.rule.clone(), f.metric.clone()));
    }
    for r in &plan.refuse {
        settled.insert((r.rule.clone(), r.metric.clone()), r.episode);
        done.push(Done {
            record: ActionRecord {
                time: stamp.clone(),
                rule: r.rule.clone(),
                metric: r.metric.clone(),
                action: r.action,
                target: r.target.clone(),
                outcome: Outcome::Refused,
                dry_run: p.spec.mode == Mode::DryRun,
                message: Some(r.message.clone()),
            },
            target: targets::metric_ref(by_name[r.metric.as_str()]),
            episode: r.episode,
        });
    }

    // Events: one on the policy and one on the target per action, named after what they
    // report so a restart cannot publish them twice.
    let policy_ref = p.object_ref(&());
    for d in &done {
        let r = &d.record;
        info!(namespace = %ns, policy = %name, rule = %r.rule, metric = %r.metric, action = r.action.as_str(),
            target = %r.target, outcome = r.outcome.as_str(), dry_run = r.dry_run,
            message = r.message.as_deref().unwrap_or_default(), "remediation");
        publish(&ctx.client, &p, &policy_ref, d).await;
    }

    let status = build_status(&p, &old, &rollup, &problems, &inputs, active, &done, acted, settled, now);
    for d in &done {
        metrics::count_remediation(d.record.action.as_str(), d.record.outcome.as_str());
    }
    metrics::record_policy(&ns, &name, status.score, status.state == PolicyState::Compliant);
    if !leading() {
        return Ok(Action::requeue(FOLLOWER_RECHECK));
    }
    if old != status {
        status::write_status(&api, &name, &status).await.map_err(Error::Status)?;
        if old.state != status.state {
            info!(namespace = %ns, name = %name, state = status.state.as_str(), "policy state changed");
        }
    }
    let wait = plan
        .recheck_at
        .map(|t| {
            Duration::try_from(t.duration_since(now)).unwrap_or_default().max(Duration::from_millis(500))
        })
        .unwrap_or(RESYNC)
        .min(RESYNC);
    Ok(Action::requeue(wait))
}

async fn resolve(
    client: &Client,
    place: &PolicyPlace<'_>,
    rule: &RemediationRule,
    m: &SecurityMetric,
) -> Result<Vec<plan::ActionTargets>, kube::Error> {
    let tenants: BTreeSet<String> = if rule.scope == Scope::Tenant {
        targets::breached_tenants(rule.when.state, m).into_iter().collect()
    } else {
        BTreeSet::new()
    };
    let tenant_namespaces = targets::tenant_namespaces(client, &targets::tenant_label(m), &tenants).await?;
    let subjects = targets::subjects(rule.scope, rule.when.state, m, &tenant_namespaces);
    targets::resolve(client, place, rule, m, &subjects).await
}

fn same(a: &ActiveRemediation, s: &Step) -> bool {
    a.rule == s.rule && a.metric == s.metric && a.action == s.action && a.target == s.target
}

fn upsert(active: &mut Vec<ActiveRemediation>, s: &Step, now: &Time) {
    active.retain(|a| !same(a, s));
    active.push(ActiveRemediation {
        rule: s.rule.clone(),
        metric: s.metric.clone(),
        action: s.action,
        target: s.target.clone(),
        key: s.key.clone(),
        since: now.clone(),
        dry_run: s.dry_run,
        previous_replicas: s.previous_replicas,
        pending: false,
    });
}

/// [`upsert`], marked as recorded before the change is made.
fn upsert_pending(active: &mut Vec<ActiveRemediation>, s: &Step, now: &Time) {
    upsert(active, s, now);
    if let Some(a) = active.iter_mut().find(|a| same(a, s)) {
        a.pending = true;
    }
}

fn identity(p: &MetricPolicy, d: &Done, on: &str) -> String {
    let uid = p.metadata.uid.as_deref().unwrap_or_default();
    stable_hash(&[
        uid,
        &d.record.rule,
        &d.record.metric,
        d.record.action.as_str(),
        &d.target.to_string(),
        &d.episode.to_string(),
        d.record.outcome.as_str(),
        on,
    ])
}

async fn publish(client: &Client, p: &MetricPolicy, policy_ref: &ObjectReference, d: &Done) {
    let r = &d.record;
    let warning = matches!(r.outcome, Outcome::Failed | Outcome::Refused);
    let reason = match r.outcome {
        Outcome::Applied => "RemediationApplied",
        Outcome::Planned => "RemediationPlanned",
        Outcome::Reverted => "RemediationReverted",
        Outcome::Refused => "RemediationRefused",
        Outcome::Failed => "RemediationFailed",
    };
    let mode = if r.dry_run { " (DryRun)" } else { "" };
    let note = format!(
        "{} {} on {} by rule {} for metric {}{mode}{}",
        r.action.as_str(),
        r.outcome.as_str(),
        r.target,
        r.rule,
        r.metric,
        r.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
    );
    let on_policy = Notice {
        regarding: policy_ref.clone(),
        warning,
        reason,
        action: "Remediate",
        note: note.clone(),
        identity: identity(p, d, "policy"),
    };
    if let Err(e) = events::publish_once(client, on_policy).await {
        warn!(error = %e, "publishing the policy's remediation event failed");
    }
    // The target's Event, for objects that exist as such (not the refusal's count).
    if r.outcome != Outcome::Refused {
        let t = &d.target;
        let on_target = Notice {
            regarding: ObjectReference {
                api_version: Some(t.api_version.clone()),
                kind: Some(t.kind.clone()),
                namespace: t.namespace.clone(),
                name: Some(t.name.clone()),
                ..Default::default()
            },
            warning,
            reason,
            action: "Remediate",
            note: format!("{note} (policy {}/{})", p.namespace().unwrap_or_default(), p.name_any()),
            identity: identity(p, d, "target"),
        };
        if let Err(e) = events::publish_once(client, on_target).await {
            warn!(error = %e, "publishing the target's remediation event failed");
        }
    }
}

async fn deliver(
    client: &Client,
    p: &MetricPolicy,
    s: &Step,
    a: &RemediationAction,
    resolved: bool,
    state: MetricState,
    value: Option<f64>,
) -> Result<String, String> {
    let receiver = a.webhook.as_ref().ok_or("no webhook receiver")?;
    let ns = p.namespace().unwrap_or_default();
    let key = match &receiver.secret_ref {
        None => None,
        Some(r) => {
            let secret = Api::<Secret>::namespaced(client.clone(), &ns)
                .get(&r.name)
                .await
                .map_err(|e| format!("reading Secret {ns}/{}: {e}", r.name))?;
            let bytes = secret
                .data
                .as_ref()
                .and_then(|d| d.get(&r.key))
                .ok_or_else(|| format!("Secret {ns}/{} has no key {:?}", r.name, r.key))?;
            Some(bytes.0.clone())
        }
    };
    let policy = format!("{ns}/{}", p.name_any());
    let delivery = stable_hash(&[
        p.metadata.uid.as_deref().unwrap_or_default(),
        &s.rule,
        &s.metric,
        &s.episode.to_string(),
        if resolved { "resolved" } else { "firing" },
    ]);
    let transition = webhook::Transition {
        policy: &policy,
        rule: &s.rule,
        namespace: &ns,
        metric: &s.metric,
        state: state.as_str(),
        value,
        status: if resolved { "resolved" } else { "firing" },
        since: s.episode.to_string(),
        mode: if s.dry_run { "DryRun" } else { "Enforce" },
        delivery: &delivery,
    };
    let body =
        serde_json::to_vec(&webhook::payload(&transition, receiver.format)).map_err(|e| e.to_string())?;
    let d = webhook::Delivery {
        url: &receiver.url,
        body,
        key,
        delivery: &delivery,
        timeout: receiver.timeout.as_ref().map(|t| t.get()).unwrap_or(Duration::from_secs(5)),
        max_retries: receiver.max_retries.max(0) as u32,
        backoff: Duration::from_millis(200),
    };
    match webhook::deliver(&d).await {
        Ok(attempts) => Ok(format!(
            "delivered to {} ({attempts} attempt{})",
            receiver.url,
            if attempts == 1 { "" } else { "s" }
        )),
        Err(e) => Err(format!("{}: {e}", receiver.url)),
    }
}

#[allow(clippy::too_many_arguments)]
fn build_status(
    p: &MetricPolicy,
    old: &MetricPolicyStatus,
    rollup: &policy::RollUp,
    problems: &[(String, String)],
    inputs: &[RuleInput<'_>],
    mut active: Vec<ActiveRemediation>,
    done: &[Done],
    acted: BTreeSet<(String, String)>,
    settled: BTreeMap<(String, String), Timestamp>,
    now: Timestamp,
) -> MetricPolicyStatus {
    active.sort_by(|a, b| {
        (&a.rule, &a.metric, a.action, &a.target).cmp(&(&b.rule, &b.metric, b.action, &b.target))
    });
    // Never truncated: an entry dropped here would never be reverted. The planner keeps the
    // list within plan::MAX_ACTIVE by refusing new entries instead.
    let mut recent: Vec<ActionRecord> = done.iter().map(|d| d.record.clone()).collect();
    recent.extend(old.recent_actions.iter().cloned());
    // Newest first; within one reconcile, in the order the actions were taken.
    recent.sort_by_key(|r| std::cmp::Reverse(r.time.0));
    recent.truncate(MAX_RECENT_ACTIONS);

    // Rule memory: only for pairs still in the policy, and only what is still needed.
    let live: BTreeSet<(String, String)> =
        inputs.iter().map(|i| (i.rule.name.clone(), i.metric.to_string())).collect();
    let mut rule_states: Vec<RuleState> = Vec::new();
    for (rule, metric) in &live {
        let key = (rule.clone(), metric.clone());
        let prev = old.rule_states.iter().find(|s| &s.rule == rule && &s.metric == metric);
        let last_action =
            if acted.contains(&key) { Some(Time(now)) } else { prev.and_then(|s| s.last_action.clone()) };
        let input = inputs.iter().find(|i| &i.rule.name == rule && i.metric == metric);
        let episode = input.and_then(|i| i.triggered);
        let settled_episode = settled
            .get(&key)
            .map(|t| Time(*t))
            .or_else(|| prev.and_then(|s| s.settled_episode.clone()))
            // A settled episode that ended is forgotten.
            .filter(|t| Some(t.0) == episode);
        if last_action.is_some() || settled_episode.is_some() {
            rule_states.push(RuleState {
                rule: rule.clone(),
                metric: metric.clone(),
                last_action,
                settled_episode,
            });
        }
    }

    let mut conds = Vec::new();
    // The first problem names the reason; the message lists them all.
    let ready = match problems.first() {
        Some((reason, _)) => {
            let all: Vec<&str> = problems.iter().map(|(_, m)| m.as_str()).collect();
            NewCondition::new(READY, false, reason.clone(), all.join("; "))
        }
        None => {
            let compliant = rollup
                .metrics
                .iter()
                .filter(|m| matches!(m.state, MetricState::Compliant | MetricState::Warning))
                .count();
            NewCondition::new(
                READY,
                true,
                "Reconciled",
                format!(
                    "{compliant} of {} metrics compliant; {} remediation(s) active",
                    rollup.metrics.len(),
                    active.len()
                ),
            )
        }
    };
    conds.push(ready);
    let conditions = conditions::merge(&old.conditions, conds, p.metadata.generation, &Time(now));
    MetricPolicyStatus {
        observed_generation: p.metadata.generation,
        conditions,
        state: rollup.state,
        score: rollup.score,
        coverage: rollup.coverage,
        metrics: rollup.metrics.clone(),
        frameworks: rollup.frameworks.clone(),
        active_count: active.len() as i64,
        active_remediations: active,
        last_action: recent.first().map(ActionRecord::summary),
        recent_actions: recent,
        rule_states,
    }
}
