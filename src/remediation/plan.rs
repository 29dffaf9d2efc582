//! Deciding what remediation to apply, revert or refuse. Pure: the policy's rules, the
//! metrics' trigger states, the resolved targets and the policy's recorded state in, steps out.
//!
//! Everything the decision depends on across reconciles (what is active, when a rule last
//! acted, which episode was already refused) lives in the policy's status, so a restarted
//! operator decides exactly what the previous one would have.

use std::collections::BTreeSet;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::metric_policy::{
    ActionType, ActiveRemediation, Mode, RemediationRule, RuleState, TargetRef, TriggerState, reserved_key,
};
use crate::api::security_metric::{MetricState, SecurityMetricStatus};

/// Most entries in a policy's `status.activeRemediations`: an action whose new targets would
/// take the policy beyond it touches none and records Refused (like `maxTargets`), so status
/// stays bounded without ever forgetting a change that is still to be reverted.
pub const MAX_ACTIVE: usize = 200;

/// Default cooldown between two actions of one rule for one metric.
pub const DEFAULT_COOLDOWN: SignedDuration = SignedDuration::from_secs(60);

/// Whether a metric is in a rule's trigger state, and since when (the episode).
pub fn triggered(state: TriggerState, status: Option<&SecurityMetricStatus>) -> Option<Timestamp> {
    let s = status?;
    let (on, since) = match state {
        TriggerState::Breached => (s.state == MetricState::Breached, &s.last_transition),
        TriggerState::Warning => {
            (matches!(s.state, MetricState::Warning | MetricState::Breached), &s.last_transition)
        }
        TriggerState::Anomalous => (s.anomalous, &s.anomalous_since),
    };
    // Without a recorded start the episode starts now-ish; lastEvaluated is the best
    // stable stand-in (it is in status, so a restart sees the same value).
    on.then(|| since.as_ref().or(s.last_evaluated.as_ref()).map(|t| t.0)).flatten()
}

/// The targets one action would touch for one metric.
#[derive(Clone, Debug, PartialEq)]
pub struct ActionTargets {
    /// The action.
    pub action: ActionType,
    /// Label/annotation key, for Label and Annotate.
    pub key: Option<String>,
    /// The targets, sorted, after exclusions.
    pub targets: Vec<TargetRef>,
    /// How many targets the action would touch: more than `targets.len()` when the metric's
    /// status lists only some of them (offenders are capped).
    pub count: usize,
    /// Targets the scope selected but the policy may never change, with the reason (e.g. a
    /// tenant policy and a cluster-scoped object): each is recorded as Refused.
    pub refused: Vec<(TargetRef, String)>,
}

/// One rule for one selected metric.
#[derive(Clone, Debug)]
pub struct RuleInput<'a> {
    /// The rule.
    pub rule: &'a RemediationRule,
    /// The metric's name.
    pub metric: &'a str,
    /// Since when the metric is in the trigger state (None: it is not).
    pub triggered: Option<Timestamp>,
    /// The metric's state is Unknown: neither act nor revert until it is measured again
    /// (missing data is not a recovery).
    pub hold: bool,
    /// Resolved targets per action; resolved only when the rule is due (see [`due`]).
    pub actions: Vec<ActionTargets>,
}

/// Whether a rule whose metric entered the trigger state at `since` is due at `now`.
pub fn due(rule: &RemediationRule, since: Timestamp, now: Timestamp) -> bool {
    now.duration_since(since) >= for_of(rule)
}

fn for_of(rule: &RemediationRule) -> SignedDuration {
    rule.when.for_.as_ref().map(|d| to_signed(d.get())).unwrap_or(SignedDuration::ZERO)
}

fn cooldown_of(rule: &RemediationRule) -> SignedDuration {
    rule.cooldown.as_ref().map(|d| to_signed(d.get())).unwrap_or(DEFAULT_COOLDOWN)
}

/// `t + d`, or the last representable instant when that is past it (a recorded time near
/// the end of the range plus a long cooldown must not overflow).
fn after(t: Timestamp, d: SignedDuration) -> Timestamp {
    t.checked_add(d).unwrap_or(if d.is_negative() { Timestamp::MIN } else { Timestamp::MAX })
}

fn to_signed(d: std::time::Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

/// One change to make (or plan), or to undo.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Rule name.
    pub rule: String,
    /// Metric name.
    pub metric: String,
    /// The action.
    pub action: ActionType,
    /// Label/annotation key.
    pub key: Option<String>,
    /// The target.
    pub target: TargetRef,
    /// Planned only.
    pub dry_run: bool,
    /// The trigger episode (apply) or the remediation's `since` (revert): with the rest, a
    /// stable identity for Events and webhook deliveries across restarts.
    pub episode: Timestamp,
    /// ScaleToZero: the replicas to restore, from the operator's own record (apply: when the
    /// workload is already held at zero by a recorded remediation; revert: the record's).
    /// Never read from the workload, whose owner can write anything there.
    pub previous_replicas: Option<i32>,
}

/// An action (or one of its targets) not taken: beyond `maxTargets` or the policy's cap on
/// active remediations, a reserved key, or a target the policy may never change.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    /// Rule name.
    pub rule: String,
    /// Metric name.
    pub metric: String,
    /// The action.
    pub action: ActionType,
    /// What was refused: a target, a key, or a count (`3 targets`).
    pub target: String,
    /// Why, for the record.
    pub message: String,
    /// The episode, recorded so the refusal is recorded once.
    pub episode: Timestamp,
}

/// What to do in this reconcile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Changes to undo, first.
    pub revert: Vec<Step>,
    /// Changes to make (or plan).
    pub apply: Vec<Step>,
    /// Remediations that end without an undo (`revertOnRecovery: false`).
    pub forget: Vec<ActiveRemediation>,
    /// Refusals to record.
    pub refuse: Vec<Refusal>,
    /// When a waiting rule (`for`, cooldown) must be looked at again.
    pub recheck_at: Option<Timestamp>,
}

fn earliest(a: Option<Timestamp>, b: Timestamp) -> Option<Timestamp> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// Decides the steps for `inputs` at `now` given the recorded state.
pub fn plan(
    mode: Mode,
    inputs: &[RuleInput<'_>],
    active: &[ActiveRemediation],
    rule_states: &[RuleState],
    now: Timestamp,
) -> Plan {
    let mut plan = Plan::default();
    let dry_run = mode == Mode::DryRun;
    // Room for new entries in status; never made by dropping one.
    let mut room = MAX_ACTIVE.saturating_sub(active.len());
    for input in inputs {
        let rule = input.rule;
        let mine: Vec<&ActiveRemediation> =
            active.iter().filter(|a| a.rule == rule.name && a.metric == input.metric).collect();
        let state = rule_states.iter().find(|s| s.rule == rule.name && s.metric == input.metric);
        let cool_until = state.and_then(|s| s.last_action.as_ref()).map(|t| after(t.0, cooldown_of(rule)));
        let cooling = cool_until.is_some_and(|t| t > now);
        if input.hold {
            continue;
        }

        match input.triggered {
            Some(since) if due(rule, since, now) => {
                let settled = state.and_then(|s| s.settled_episode.as_ref()).map(|t| t.0) == Some(since);
                let mut refusals = Vec::new();
                let mut refuse = |action: ActionType, target: String, message: String| {
                    refusals.push(Refusal {
                        rule: rule.name.clone(),
                        metric: input.metric.to_string(),
                        action,
                        target,
                        message,
                        episode: since,
                    })
                };
                let mut wanted: Vec<Vec<Step>> = Vec::new();
                for a in &input.actions {
                    if matches!(a.action, ActionType::Label | ActionType::Annotate)
                        && let Some(key) = a.key.as_deref().filter(|k| reserved_key(k))
                    {
                        refuse(
                            a.action,
                            format!("key {key}"),
                            format!(
                                "key {key} is reserved for Kubernetes or secmetrics: no policy may write it; nothing was touched"
                            ),
                        );
                        continue;
                    }
                    for (t, why) in &a.refused {
                        refuse(a.action, t.to_string(), why.clone());
                    }
                    if a.count > rule.max_targets.max(0) as usize {
                        refuse(
                            a.action,
                            format!("{} targets", a.count),
                            format!(
                                "{} targets exceed maxTargets {}: nothing was touched",
                                a.count, rule.max_targets
                            ),
                        );
                        continue;
                    }
                    let mut steps = Vec::new();
                    for t in &a.targets {
                        let existing = mine.iter().find(|m| m.action == a.action && &m.target == t);
                        // Planned entries become real when the policy switches to Enforce;
                        // real ones stay real when it switches back (they revert on recovery).
                        // A change recorded but not confirmed (pending) is made again.
                        if existing.is_none_or(|e| (e.dry_run || e.pending) && !dry_run) {
                            steps.push(Step {
                                rule: rule.name.clone(),
                                metric: input.metric.to_string(),
                                action: a.action,
                                key: a.key.clone(),
                                target: t.clone(),
                                dry_run,
                                episode: since,
                                previous_replicas: recorded_replicas(active, a.action, t),
                            });
                        }
                    }
                    if !steps.is_empty() {
                        wanted.push(steps);
                    }
                }
                if !wanted.is_empty() {
                    if cooling {
                        plan.recheck_at = earliest(plan.recheck_at, cool_until.unwrap_or(now));
                    } else {
                        for steps in wanted {
                            // All of an action's targets or none, like maxTargets.
                            let new = steps.iter().filter(|s| !active.iter().any(|a| same(a, s))).count();
                            if new > room {
                                refuse(
                                    steps[0].action,
                                    format!("{new} targets"),
                                    format!(
                                        "{new} more active remediations would exceed the policy's cap of {MAX_ACTIVE} (room for {room}): nothing was touched"
                                    ),
                                );
                                continue;
                            }
                            room -= new;
                            plan.apply.extend(steps);
                        }
                    }
                }
                if !settled {
                    plan.refuse.extend(refusals);
                }
            }
            triggered => {
                if let Some(since) = triggered {
                    plan.recheck_at = earliest(plan.recheck_at, after(since, for_of(rule)));
                    // Still in the trigger state (waiting on `for` again after a restart of the
                    // episode): what is active stays.
                    if !mine.is_empty() {
                        continue;
                    }
                }
                if mine.is_empty() {
                    continue;
                }
                if !rule.revert_on_recovery {
                    plan.forget.extend(mine.into_iter().cloned());
                } else if cooling {
                    plan.recheck_at = earliest(plan.recheck_at, cool_until.unwrap_or(now));
                } else {
                    plan.revert.extend(mine.into_iter().map(revert_step));
                }
            }
        }
    }
    // Remediations whose rule or metric left the policy are undone at once: nothing
    // would ever revert them otherwise.
    let known: BTreeSet<(&str, &str)> = inputs.iter().map(|i| (i.rule.name.as_str(), i.metric)).collect();
    for a in active {
        if !known.contains(&(a.rule.as_str(), a.metric.as_str())) {
            plan.revert.push(revert_step(a));
        }
    }
    plan
}

fn revert_step(a: &ActiveRemediation) -> Step {
    Step {
        rule: a.rule.clone(),
        metric: a.metric.clone(),
        action: a.action,
        key: a.key.clone(),
        target: a.target.clone(),
        dry_run: a.dry_run,
        episode: a.since.0,
        previous_replicas: a.previous_replicas,
    }
}

fn same(a: &ActiveRemediation, s: &Step) -> bool {
    a.rule == s.rule && a.metric == s.metric && a.action == s.action && a.target == s.target
}

/// The replicas recorded for a workload some remediation already holds at zero (this one,
/// pending, or another rule's or metric's): scaling it again must restore the same count,
/// not the 0 it now has.
fn recorded_replicas(active: &[ActiveRemediation], action: ActionType, t: &TargetRef) -> Option<i32> {
    if action != ActionType::ScaleToZero {
        return None;
    }
    active
        .iter()
        .filter(|a| a.action == action && &a.target == t && !a.dry_run)
        .find_map(|a| a.previous_replicas)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn rule(v: serde_json::Value) -> RemediationRule {
        let mut base = serde_json::json!({
            "name": "isolate", "when": {"state": "Breached"}, "actions": [{"type": "NetworkIsolation"}]
        });
        for (k, v) in v.as_object().unwrap() {
            base[k] = v.clone();
        }
        serde_json::from_value(base).unwrap()
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn np(ns: &str) -> TargetRef {
        TargetRef {
            api_version: "networking.k8s.io/v1".into(),
            kind: "NetworkPolicy".into(),
            namespace: Some(ns.into()),
            name: "secmetrics-isolate".into(),
        }
    }

    fn input<'a>(rule: &'a RemediationRule, triggered: Option<i64>, targets: &[&str]) -> RuleInput<'a> {
        RuleInput {
            rule,
            metric: "m",
            triggered: triggered.map(t),
            hold: false,
            actions: vec![ActionTargets {
                action: ActionType::NetworkIsolation,
                key: None,
                targets: targets.iter().map(|n| np(n)).collect(),
                count: targets.len(),
                refused: vec![],
            }],
        }
    }

    fn active(rule: &str, ns: &str, since: i64, dry_run: bool) -> ActiveRemediation {
        ActiveRemediation {
            rule: rule.into(),
            metric: "m".into(),
            action: ActionType::NetworkIsolation,
            target: np(ns),
            key: None,
            since: Time(t(since)),
            dry_run,
            previous_replicas: None,
            pending: false,
        }
    }

    fn acted(rule: &str, at: i64) -> RuleState {
        RuleState {
            rule: rule.into(),
            metric: "m".into(),
            last_action: Some(Time(t(at))),
            settled_episode: None,
        }
    }

    #[test]
    fn triggers_on_the_configured_state() {
        let s = |state, anomalous| SecurityMetricStatus {
            state,
            anomalous,
            last_transition: Some(Time(t(5))),
            ..Default::default()
        };
        use MetricState::*;
        assert_eq!(triggered(TriggerState::Breached, Some(&s(Breached, false))), Some(t(5)));
        assert_eq!(triggered(TriggerState::Breached, Some(&s(Warning, false))), None);
        assert_eq!(triggered(TriggerState::Warning, Some(&s(Breached, false))), Some(t(5)));
        assert_eq!(triggered(TriggerState::Warning, Some(&s(Unknown, false))), None);
        let anomalous = SecurityMetricStatus { anomalous_since: Some(Time(t(9))), ..s(Compliant, true) };
        assert_eq!(
            triggered(TriggerState::Anomalous, Some(&anomalous)),
            Some(t(9)),
            "the anomaly's own start"
        );
        assert_eq!(triggered(TriggerState::Breached, None), None);
    }

    #[test]
    fn applies_after_for_and_plans_in_dry_run() {
        let r = rule(serde_json::json!({"when": {"state": "Breached", "for": "30s"}}));
        // Breached since t=0; at t=10 the rule waits until t=30.
        let p = plan(Mode::DryRun, &[input(&r, Some(0), &["a", "b"])], &[], &[], t(10));
        assert!(p.apply.is_empty());
        assert_eq!(p.recheck_at, Some(t(30)));
        let p = plan(Mode::DryRun, &[input(&r, Some(0), &["a", "b"])], &[], &[], t(30));
        assert_eq!(p.apply.len(), 2);
        assert!(p.apply.iter().all(|s| s.dry_run && s.episode == t(0)));
        // Already active: nothing more to do.
        let act = [active("isolate", "a", 30, true), active("isolate", "b", 30, true)];
        let p = plan(Mode::DryRun, &[input(&r, Some(0), &["a", "b"])], &act, &[acted("isolate", 30)], t(40));
        assert_eq!(p, Plan::default());
        // Switching to Enforce makes planned entries real (after the cooldown).
        let p =
            plan(Mode::Enforce, &[input(&r, Some(0), &["a", "b"])], &act, &[acted("isolate", 30)], t(100));
        assert_eq!(p.apply.len(), 2);
        assert!(p.apply.iter().all(|s| !s.dry_run));
    }

    #[test]
    fn reverts_on_recovery_only_after_the_cooldown() {
        let r = rule(serde_json::json!({"cooldown": "1m"}));
        let act = [active("isolate", "a", 0, false)];
        let states = [acted("isolate", 0)];
        let p = plan(Mode::Enforce, &[input(&r, None, &[])], &act, &states, t(20));
        assert!(p.revert.is_empty());
        assert_eq!(p.recheck_at, Some(t(60)));
        let p = plan(Mode::Enforce, &[input(&r, None, &[])], &act, &states, t(60));
        assert_eq!(p.revert.len(), 1);
        assert_eq!(p.revert[0].episode, t(0));
        // Without revertOnRecovery the remediation is forgotten, not undone.
        let keep = rule(serde_json::json!({"revertOnRecovery": false}));
        let p = plan(Mode::Enforce, &[input(&keep, None, &[])], &act, &states, t(60));
        assert!(p.revert.is_empty());
        assert_eq!(p.forget.len(), 1);
    }

    #[test]
    fn flapping_metric_acts_at_most_once_per_cooldown() {
        let r = rule(serde_json::json!({"cooldown": "30s"}));
        let mut active_now: Vec<ActiveRemediation> = Vec::new();
        let mut states: Vec<RuleState> = Vec::new();
        let mut actions = 0;
        // The metric flips every 3 seconds for two minutes; the controller reconciles each second.
        for sec in 0..120 {
            let breached_since = (sec / 3) % 2 == 0;
            let episode = (sec / 3) * 3;
            let i = input(&r, breached_since.then_some(episode), &["a"]);
            let p = plan(Mode::Enforce, &[i], &active_now, &states, t(sec));
            if !p.apply.is_empty() || !p.revert.is_empty() {
                actions += 1;
                states = vec![acted("isolate", sec)];
            }
            for s in &p.apply {
                active_now.push(active("isolate", s.target.namespace.as_deref().unwrap(), sec, false));
            }
            if !p.revert.is_empty() {
                active_now.clear();
            }
        }
        // Two minutes with a 30s cooldown: at most one action per 30 seconds.
        assert!(actions <= 4 + 1, "{actions} actions");
        assert!(actions >= 2, "it still acts: {actions}");
    }

    #[test]
    fn refuses_beyond_max_targets_once_per_episode() {
        let r = rule(serde_json::json!({"maxTargets": 2}));
        let mut i = input(&r, Some(0), &["a", "b", "c"]);
        let p = plan(Mode::Enforce, std::slice::from_ref(&i), &[], &[], t(1));
        assert!(p.apply.is_empty());
        assert_eq!(p.refuse.len(), 1);
        assert_eq!(p.refuse[0].target, "3 targets");
        assert_eq!(p.refuse[0].message, "3 targets exceed maxTargets 2: nothing was touched");
        let settled = RuleState {
            rule: "isolate".into(),
            metric: "m".into(),
            last_action: None,
            settled_episode: Some(Time(t(0))),
        };
        let p = plan(Mode::Enforce, std::slice::from_ref(&i), &[], std::slice::from_ref(&settled), t(5));
        assert!(p.refuse.is_empty() && p.apply.is_empty());
        // A count beyond the listed targets (capped offenders) refuses too.
        i.actions[0].targets.truncate(1);
        i.actions[0].count = 25;
        i.triggered = Some(t(100));
        let p = plan(Mode::Enforce, &[i], &[], &[settled], t(101));
        assert_eq!(p.refuse[0].target, "25 targets");
    }

    fn deployment(ns: &str, name: &str) -> TargetRef {
        TargetRef {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            namespace: Some(ns.into()),
            name: name.into(),
        }
    }

    fn scale_input<'a>(rule: &'a RemediationRule, metric: &'a str, targets: &[TargetRef]) -> RuleInput<'a> {
        RuleInput {
            rule,
            metric,
            triggered: Some(t(0)),
            hold: false,
            actions: vec![ActionTargets {
                action: ActionType::ScaleToZero,
                key: None,
                targets: targets.to_vec(),
                count: targets.len(),
                refused: vec![],
            }],
        }
    }

    fn scaled(metric: &str, target: TargetRef, previous: i32, pending: bool) -> ActiveRemediation {
        ActiveRemediation {
            rule: "isolate".into(),
            metric: metric.into(),
            action: ActionType::ScaleToZero,
            target,
            key: None,
            since: Time(t(0)),
            dry_run: false,
            previous_replicas: Some(previous),
            pending,
        }
    }

    #[test]
    fn reserved_keys_are_refused_whatever_the_crd_let_through() {
        for key in [
            "pod-security.kubernetes.io/enforce",
            "kubernetes.io/metadata.name",
            "node-role.kubernetes.io/control-plane",
            "k8s.io/x",
            "foo.k8s.io/x",
            "secmetrics.io/tenant",
            "secmetrics.io/previous-replicas",
            "team.secmetrics.io/x",
            "Pod-Security.Kubernetes.IO/enforce",
        ] {
            let r = rule(serde_json::json!({"actions": [{"type": "Label", "key": key}]}));
            let i = RuleInput {
                rule: &r,
                metric: "m",
                triggered: Some(t(0)),
                hold: false,
                actions: vec![ActionTargets {
                    action: ActionType::Label,
                    key: Some(key.into()),
                    targets: vec![np("a")],
                    count: 1,
                    refused: vec![],
                }],
            };
            for mode in [Mode::DryRun, Mode::Enforce] {
                let p = plan(mode, std::slice::from_ref(&i), &[], &[], t(1));
                assert!(p.apply.is_empty(), "{key}: {p:?}");
                assert_eq!(p.refuse.len(), 1, "{key}");
                assert_eq!(p.refuse[0].target, format!("key {key}"));
                assert_eq!(
                    p.refuse[0].message,
                    format!(
                        "key {key} is reserved for Kubernetes or secmetrics: no policy may write it; nothing was touched"
                    )
                );
            }
        }
        // Not reserved: other domains, unprefixed keys, look-alikes.
        for key in
            ["quarantine", "example.com/quarantine", "notkubernetes.io/x", "kubernetes.io", "k8s.iox/y"]
        {
            assert!(!reserved_key(key), "{key}");
        }
    }

    #[test]
    fn refused_targets_are_recorded_once_and_the_rest_applies() {
        let r = rule(serde_json::json!({}));
        let mut i = input(&r, Some(0), &["a"]);
        let ns = TargetRef {
            api_version: "v1".into(),
            kind: "Namespace".into(),
            namespace: None,
            name: "a".into(),
        };
        i.actions[0].refused = vec![(ns, "cluster-scoped".into())];
        let p = plan(Mode::Enforce, std::slice::from_ref(&i), &[], &[], t(1));
        assert_eq!(p.apply.len(), 1);
        assert_eq!(
            (p.refuse[0].target.as_str(), p.refuse[0].message.as_str()),
            ("Namespace a", "cluster-scoped")
        );
        let settled = RuleState {
            rule: "isolate".into(),
            metric: "m".into(),
            last_action: None,
            settled_episode: Some(Time(t(0))),
        };
        let p = plan(Mode::Enforce, &[i], &[], &[settled], t(2));
        assert!(p.refuse.is_empty(), "once per episode");
    }

    #[test]
    fn previous_replicas_come_from_the_record_only() {
        let r = rule(serde_json::json!({"actions": [{"type": "ScaleToZero"}], "cooldown": "1s"}));
        let web = deployment("shop", "web");
        // A first scale: nothing recorded, the controller reads and records the count.
        let p = plan(Mode::Enforce, &[scale_input(&r, "m", std::slice::from_ref(&web))], &[], &[], t(1));
        assert_eq!(p.apply[0].previous_replicas, None);
        // Another metric scaling a workload a recorded remediation holds at zero: the same
        // count (not the 0 it has now).
        let held = [scaled("m", web.clone(), 2, false)];
        let p =
            plan(Mode::Enforce, &[scale_input(&r, "other", std::slice::from_ref(&web))], &held, &[], t(1));
        assert_eq!(p.apply[0].previous_replicas, Some(2));
        // Recorded but not confirmed (a restart in between): made again with the record's count.
        let pending = [scaled("m", web.clone(), 2, true)];
        let p = plan(Mode::Enforce, &[scale_input(&r, "m", std::slice::from_ref(&web))], &pending, &[], t(1));
        assert_eq!((p.apply.len(), p.apply[0].previous_replicas), (1, Some(2)));
        // In DryRun a pending real change is left alone, not turned into a plan.
        let p = plan(Mode::DryRun, &[scale_input(&r, "m", std::slice::from_ref(&web))], &pending, &[], t(1));
        assert!(p.apply.is_empty());
        // Revert restores the recorded count.
        let mut recovered = scale_input(&r, "m", &[]);
        recovered.triggered = None;
        let p = plan(Mode::Enforce, &[recovered], &held, &[], t(10));
        assert_eq!(p.revert[0].previous_replicas, Some(2));
    }

    #[test]
    fn active_remediations_are_bounded_by_refusing_never_by_dropping() {
        let r = rule(serde_json::json!({"maxTargets": 100}));
        // Already at the cap: every entry is kept, and a new action is refused.
        let full: Vec<ActiveRemediation> =
            (0..MAX_ACTIVE).map(|n| active("isolate", &format!("x{n}"), 0, false)).collect();
        let p = plan(Mode::Enforce, &[input(&r, Some(0), &["a", "b"])], &full, &[], t(1));
        assert!(p.apply.is_empty());
        assert_eq!(p.refuse.len(), 1);
        assert_eq!(
            p.refuse[0].message,
            format!(
                "2 more active remediations would exceed the policy's cap of {MAX_ACTIVE} (room for 0): nothing was touched"
            )
        );
        // Nothing active is reverted or forgotten for it.
        assert!(p.revert.is_empty() && p.forget.is_empty());
        // Room for one action, not the next: all of an action's targets or none.
        let almost = &full[..MAX_ACTIVE - 3];
        let r2 = rule(serde_json::json!({"name": "second", "maxTargets": 100}));
        let p = plan(
            Mode::Enforce,
            &[input(&r, Some(0), &["a", "b"]), input(&r2, Some(0), &["c", "d"])],
            almost,
            &[],
            t(1),
        );
        assert_eq!(p.apply.len(), 2);
        assert!(p.apply.iter().all(|s| s.rule == "isolate"));
        assert_eq!((p.refuse.len(), p.refuse[0].rule.as_str()), (1, "second"));
        // Re-applying existing entries (DryRun → Enforce) needs no room.
        let planned: Vec<ActiveRemediation> =
            (0..MAX_ACTIVE).map(|n| active("isolate", &format!("n{n}"), 0, true)).collect();
        let names: Vec<String> = (0..MAX_ACTIVE).map(|n| format!("n{n}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let r3 = rule(serde_json::json!({"maxTargets": 100}));
        let p = plan(Mode::Enforce, &[input(&r3, Some(0), &refs[..100])], &planned, &[], t(1));
        assert_eq!((p.apply.len(), p.refuse.len()), (100, 0));
    }

    #[test]
    fn unknown_state_holds_what_is_active() {
        let r = rule(serde_json::json!({}));
        let act = [active("isolate", "a", 0, false)];
        let mut i = input(&r, None, &[]);
        i.hold = true;
        let p = plan(Mode::Enforce, &[i], &act, &[], t(1000));
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn remediations_of_removed_rules_are_reverted_at_once() {
        let r = rule(serde_json::json!({}));
        let act = [active("gone", "a", 0, false), active("isolate", "b", 0, false)];
        let p = plan(Mode::Enforce, &[input(&r, Some(0), &["b"])], &act, &[acted("gone", 0)], t(1));
        assert_eq!(p.revert.len(), 1);
        assert_eq!(p.revert[0].rule, "gone");
        assert!(p.apply.is_empty());
    }

    #[test]
    fn the_longest_for_and_cooldown_at_the_end_of_time_never_panic() {
        let r = rule(serde_json::json!({"when": {"state": "Breached", "for": "8760h"}, "cooldown": "8760h"}));
        let end = Timestamp::MAX;
        let last = RuleState {
            rule: "isolate".into(),
            metric: "m".into(),
            last_action: Some(Time(end)),
            settled_episode: None,
        };
        for now in [Timestamp::MIN, t(0), end] {
            let mut i = input(&r, None, &["a"]);
            i.triggered = Some(end);
            let p = plan(
                Mode::Enforce,
                &[i],
                &[active("isolate", "a", 0, false)],
                std::slice::from_ref(&last),
                now,
            );
            assert!(p.apply.is_empty(), "waiting on for");
            assert_eq!(p.recheck_at, Some(end), "recheck at the end of time, not a panic");
            let p = plan(
                Mode::Enforce,
                &[input(&r, None, &["a"])],
                &[active("isolate", "a", 0, false)],
                std::slice::from_ref(&last),
                now,
            );
            assert_eq!(p.revert.is_empty(), now < end, "cooling down until the end of time");
        }
        assert_eq!(after(Timestamp::MIN, SignedDuration::MIN), Timestamp::MIN);
    }
}
