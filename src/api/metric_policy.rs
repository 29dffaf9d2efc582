//! The `MetricPolicy` custom resource: which metrics must hold, which obligations they
//! evidence, and which remediation a breach triggers.

// kube's printcolumn(...) arguments repeat `type_ = "string"`, which clippy misreads as
// duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration::Duration;
use super::security_metric::{ComplianceControl, MetricState};

/// Which SecurityMetrics must hold, the obligations they evidence, and the remediation a breach
/// triggers (DryRun unless Enforce is set).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "secmetrics.io",
    version = "v1alpha1",
    kind = "MetricPolicy",
    namespaced,
    status = "MetricPolicyStatus",
    shortname = "mp",
    category = "secmetrics",
    doc = "Which SecurityMetrics must hold, which compliance obligations they evidence, and which bounded, revertible remediation a breach triggers.",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "Score", type_ = "number", json_path = ".status.score"),
    printcolumn(name = "Active", type_ = "integer", json_path = ".status.activeCount"),
    printcolumn(name = "Last Action", type_ = "string", json_path = ".status.lastAction"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("has(self.metricSelector) || (has(self.metrics) && size(self.metrics) > 0)").message("select metrics with metricSelector and/or metrics"))]
#[serde(rename_all = "camelCase")]
pub struct MetricPolicySpec {
    /// What the policy requires and why (documentation an auditor reads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub description: Option<String>,
    /// Label selector over SecurityMetrics in the policy's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_selector: Option<LabelSelector>,
    /// Names of SecurityMetrics in the policy's namespace (in addition to the selector).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub metrics: Vec<String>,
    /// How many of the selected metrics must be compliant.
    #[serde(default)]
    pub requirement: Requirement,
    /// Compliance obligations this policy evidences (rolled up with its metrics' own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub compliance: Vec<ComplianceControl>,
    /// DryRun (default) records what would be done and changes nothing; Enforce acts.
    #[serde(default)]
    pub mode: Mode,
    /// Remediation rules, evaluated for every selected metric.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    #[x_kube(validation = Rule::new("self.all(r, self.exists_one(s, s.name == r.name))").message("rule names must be unique"))]
    pub rules: Vec<RemediationRule>,
}

/// The compliance requirement over the selected metrics.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Requirement {
    /// Percent of the selected metrics that must be Compliant (Warning counts as compliant,
    /// Unknown does not). Default 100.
    #[serde(default = "hundred")]
    #[schemars(range(min = 0, max = 100))]
    pub min_compliant_percent: f64,
}

impl Default for Requirement {
    fn default() -> Self {
        Requirement { min_compliant_percent: 100.0 }
    }
}

fn hundred() -> f64 {
    100.0
}

/// Whether remediation only records what it would do, or acts.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Mode {
    /// Record what Enforce would do (outcome Planned); change nothing.
    #[default]
    DryRun,
    /// Apply the actions (server-side, field manager `secmetrics`), revert on recovery.
    Enforce,
}

/// A remediation rule: when a selected metric is in a state long enough, act on a scope.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemediationRule {
    /// Rule name, unique in the policy (a DNS label).
    #[schemars(length(min = 1, max = 40), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// The trigger.
    pub when: Trigger,
    /// What the actions apply to. Default Metric.
    #[serde(default)]
    pub scope: Scope,
    /// What to do, in order; at most one action of each type.
    #[schemars(length(min = 1, max = 7))]
    #[x_kube(validation = Rule::new("self.all(a, self.exists_one(b, b.type == a.type))").message("at most one action of each type per rule"))]
    pub actions: Vec<RemediationAction>,
    /// Undo every change when the metric recovers. Default true.
    #[serde(default = "yes")]
    pub revert_on_recovery: bool,
    /// Least time between two actions (apply or revert) of this rule for one metric, so a
    /// flapping metric cannot make the operator flap (Go duration). Default 1m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<Duration>,
    /// Blast-radius cap: when an action would touch more targets, it touches none and records
    /// Refused. Default 10.
    #[serde(default = "ten")]
    #[schemars(range(min = 1, max = 100))]
    pub max_targets: i32,
    /// Namespaces never touched (kube-system, kube-public, kube-node-lease and the operator's
    /// namespace are always excluded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub excluded_namespaces: Vec<String>,
    /// Platform namespaces this rule may change. Platform namespaces are never targets
    /// otherwise, whatever the scope selects; the operator's own namespace and kube-system,
    /// kube-public, kube-node-lease stay excluded even when named. Only platform-namespace
    /// policies act outside their own namespace, so for a tenant policy this has no effect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 20),
        inner(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))
    )]
    pub include_platform_namespaces: Vec<String>,
}

fn yes() -> bool {
    true
}

fn ten() -> i32 {
    10
}

/// When a rule fires.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Trigger {
    /// Breached, Warning (Warning or Breached), or Anomalous.
    pub state: TriggerState,
    /// How long the metric must have been in the state (since its `lastTransition`) before
    /// the rule acts (Go duration). Default 0.
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<Duration>,
}

/// States a rule can trigger on.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum TriggerState {
    /// The metric is Breached.
    Breached,
    /// The metric is Warning or Breached.
    Warning,
    /// The metric's value is outside its baseline.
    Anomalous,
}

/// What a rule's actions apply to.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Scope {
    /// The metric itself (namespace-level actions: the offenders' namespaces).
    #[default]
    Metric,
    /// The tenants whose own value is in the trigger state, through their namespaces.
    Tenant,
    /// The metric's failing objects (workload actions: their Deployments/StatefulSets).
    Offenders,
}

/// One remediation action.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(self.type in ['Label', 'Annotate']) || has(self.key)").message("Label and Annotate actions need key"))]
#[x_kube(validation = Rule::new("self.type != 'ResourceQuota' || has(self.quota)").message("ResourceQuota actions need quota"))]
#[x_kube(validation = Rule::new("self.type != 'Webhook' || has(self.webhook)").message("Webhook actions need webhook"))]
#[x_kube(validation = Rule::new(RESERVED_KEY_RULE).message(RESERVED_KEY_MESSAGE))]
pub struct RemediationAction {
    /// Event | Label | Annotate | NetworkIsolation | ScaleToZero | ResourceQuota | Webhook.
    #[serde(rename = "type")]
    pub type_: ActionType,
    /// Label or annotation key (Label, Annotate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 317))]
    pub key: Option<String>,
    /// Label or annotation value (Label, Annotate). Default "true".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub value: Option<String>,
    /// Hard limits of the clamping ResourceQuota (ResourceQuota), e.g. `{requests.cpu: "1"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<BTreeMap<String, Quantity>>,
    /// The receiver (Webhook). Only policies in platform namespaces may define receivers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookReceiver>,
}

/// CEL: a Label/Annotate key is not under a reserved prefix (see [`reserved_key`]).
const RESERVED_KEY_RULE: &str = r"!has(self.key) || !self.key.lowerAscii().matches('^([^/]*\\.)?(kubernetes\\.io|k8s\\.io|secmetrics\\.io)/')";
const RESERVED_KEY_MESSAGE: &str = "key may not use a prefix reserved for Kubernetes or secmetrics (kubernetes.io/, k8s.io/, secmetrics.io/ or a subdomain of them, e.g. pod-security.kubernetes.io/enforce or secmetrics.io/tenant)";

/// Label/annotation key prefixes (and their subdomains) no policy may write: Kubernetes' own
/// (Pod Security admission, topology, kubectl, ...) and secmetrics' own (the tenant label, the
/// operator's bookkeeping).
pub const RESERVED_KEY_DOMAINS: [&str; 3] = ["kubernetes.io", "k8s.io", "secmetrics.io"];

/// Whether `key` is under a reserved prefix: `kubernetes.io/x`, `pod-security.kubernetes.io/x`,
/// `k8s.io/x`, `secmetrics.io/tenant`, ... (compared without case). Checked by the CRD and
/// again before planning and acting, for objects that predate the CRD rule.
pub fn reserved_key(key: &str) -> bool {
    let Some((prefix, _)) = key.split_once('/') else { return false };
    let prefix = prefix.to_ascii_lowercase();
    RESERVED_KEY_DOMAINS
        .iter()
        .any(|d| prefix == *d || prefix.strip_suffix(d).is_some_and(|rest| rest.ends_with('.')))
}

/// Kinds of remediation action.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
pub enum ActionType {
    /// A Kubernetes Event on the metric and on each target.
    Event,
    /// Set a label on each target.
    Label,
    /// Set an annotation on each target.
    Annotate,
    /// A default-deny NetworkPolicy (owned by the policy) in each target namespace.
    NetworkIsolation,
    /// Scale Deployments/StatefulSets to 0, recording the previous replicas for revert.
    ScaleToZero,
    /// A clamping ResourceQuota (owned by the policy) in each target namespace.
    ResourceQuota,
    /// POST the transition as JSON to a receiver, signed with HMAC-SHA256.
    Webhook,
}

impl ActionType {
    /// The name as written in the API.
    pub fn as_str(&self) -> &'static str {
        match self {
            ActionType::Event => "Event",
            ActionType::Label => "Label",
            ActionType::Annotate => "Annotate",
            ActionType::NetworkIsolation => "NetworkIsolation",
            ActionType::ScaleToZero => "ScaleToZero",
            ActionType::ResourceQuota => "ResourceQuota",
            ActionType::Webhook => "Webhook",
        }
    }
}

/// Where a Webhook action POSTs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookReceiver {
    /// http(s) URL of the receiver.
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://"))]
    pub url: String,
    /// Secret (in the policy's namespace) holding the HMAC-SHA256 key; the signature is sent
    /// as `X-Secmetrics-Signature: sha256=<hex>` over the request body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// Generic (default) or Alertmanager (the Alertmanager webhook payload).
    #[serde(default)]
    pub format: WebhookFormat,
    /// Per-attempt timeout (Go duration). Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Retries after a failed attempt, with exponential backoff. Default 3.
    #[serde(default = "three")]
    #[schemars(range(min = 0, max = 10))]
    pub max_retries: i32,
}

fn three() -> i32 {
    3
}

/// A key of a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    pub name: String,
    /// Key within the Secret's data.
    pub key: String,
}

/// Webhook payload shapes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum WebhookFormat {
    /// `{policy, rule, metric, state, value, transition, targets, ...}`.
    #[default]
    Generic,
    /// Alertmanager's webhook payload (`version: "4"`, `alerts[]`).
    Alertmanager,
}

/// The observed state of a MetricPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricPolicyStatus {
    /// The spec generation this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready (and why not).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Compliant when at least `requirement.minCompliantPercent` of the metrics are compliant.
    #[serde(default)]
    pub state: PolicyState,
    /// Percent of the selected metrics that are Compliant or Warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// Percent of the selected metrics with fresh data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage: Option<f64>,
    /// The selected metrics and their states, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<PolicyMetric>,
    /// Per framework control: the policy's own obligations and its metrics' alignment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub frameworks: Vec<FrameworkControlState>,
    /// Remediations in effect (or planned, in DryRun), to be reverted on recovery.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active_remediations: Vec<ActiveRemediation>,
    /// Number of active remediations (for `kubectl get`).
    #[serde(default)]
    pub active_count: i64,
    /// The newest action in one line, e.g. `Planned ResourceQuota Namespace t1 (rule clamp)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_action: Option<String>,
    /// The latest actions, newest first, capped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_actions: Vec<ActionRecord>,
    /// Per rule and metric: the last action (for cooldown) and refusals already recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rule_states: Vec<RuleState>,
}

/// Compliance state of a policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PolicyState {
    /// Enough metrics are compliant.
    Compliant,
    /// Too few metrics are compliant.
    NonCompliant,
    /// No metric is selected, or none has data.
    #[default]
    Unknown,
}

impl PolicyState {
    /// The state as written in the API.
    pub fn as_str(&self) -> &'static str {
        match self {
            PolicyState::Compliant => "Compliant",
            PolicyState::NonCompliant => "NonCompliant",
            PolicyState::Unknown => "Unknown",
        }
    }
}

/// A selected metric's state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyMetric {
    /// SecurityMetric name.
    pub name: String,
    /// Its state (Unknown when stale or missing).
    pub state: MetricState,
    /// Its value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
}

/// One framework control's state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FrameworkControlState {
    /// Framework identifier.
    pub framework: String,
    /// Control identifier.
    pub control: String,
    /// Compliant when every metric evidencing it is compliant (for the policy's own
    /// obligations: when the policy is).
    pub state: PolicyState,
    /// The metrics evidencing it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<String>,
}

/// An object an action touched (or would touch).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// API version, e.g. `apps/v1`.
    pub api_version: String,
    /// Kind, e.g. `Deployment`.
    pub kind: String,
    /// Namespace (absent for cluster-scoped objects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for TargetRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// A remediation in effect.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActiveRemediation {
    /// Rule name.
    pub rule: String,
    /// The metric whose state triggered it.
    pub metric: String,
    /// The action.
    pub action: ActionType,
    /// What it changed.
    pub target: TargetRef,
    /// The label or annotation key set (Label, Annotate), so revert removes exactly it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// When it was applied (or planned).
    pub since: Time,
    /// Planned only (DryRun): nothing was changed.
    pub dry_run: bool,
    /// ScaleToZero: the workload's replicas before it was scaled, as the operator read them.
    /// Revert restores exactly this (never a value read back from the workload, which its
    /// owner can write).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub previous_replicas: Option<i32>,
    /// Recorded before the change was confirmed (ScaleToZero records what it will change
    /// first): the next reconcile makes the change again, keeping `previousReplicas`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
}

/// Outcomes of an action.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Outcome {
    /// The change was made.
    Applied,
    /// DryRun: the change Enforce would make.
    Planned,
    /// The change was undone after recovery.
    Reverted,
    /// Not done: it would have exceeded maxTargets, or the scope is not allowed.
    Refused,
    /// Attempted and failed (the message says why); nothing was half-applied.
    Failed,
}

impl Outcome {
    /// The outcome as written in the API.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Applied => "Applied",
            Outcome::Planned => "Planned",
            Outcome::Reverted => "Reverted",
            Outcome::Refused => "Refused",
            Outcome::Failed => "Failed",
        }
    }
}

impl ActionRecord {
    /// The action in one line, for `kubectl get` and logs.
    pub fn summary(&self) -> String {
        format!("{} {} {} (rule {})", self.outcome.as_str(), self.action.as_str(), self.target, self.rule)
    }
}

/// One recorded action.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActionRecord {
    /// When it happened.
    pub time: Time,
    /// Rule name.
    pub rule: String,
    /// The metric whose state triggered it.
    pub metric: String,
    /// The action.
    pub action: ActionType,
    /// What it touched, e.g. `Deployment shop/web` (or the count, for a refusal).
    pub target: String,
    /// Applied, Planned, Reverted, Refused or Failed.
    pub outcome: Outcome,
    /// DryRun: nothing was changed.
    pub dry_run: bool,
    /// Details (the error, the refusal's count, the previous value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Memory of one rule for one metric, kept in status so it survives restarts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleState {
    /// Rule name.
    pub rule: String,
    /// Metric name.
    pub metric: String,
    /// When this rule last applied or reverted anything for this metric (cooldown clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_action: Option<Time>,
    /// The trigger episode (the metric's lastTransition) already recorded as Refused or Failed,
    /// so a refusal is recorded once per episode, not at every reconcile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled_episode: Option<Time>,
}
