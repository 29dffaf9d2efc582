//! The `SecurityMetric` custom resource: one specific, measurable security metric.

// kube's printcolumn(...) arguments repeat `type_ = "string"`, which clippy misreads as
// duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration::Duration;

/// A specific, measurable security metric: what it observes, its objective, its owner, and the
/// business objective, security requirement and compliance controls it serves.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "secmetrics.io",
    version = "v1alpha1",
    kind = "SecurityMetric",
    namespaced,
    status = "SecurityMetricStatus",
    shortname = "sm",
    category = "secmetrics",
    doc = "A specific, measurable application security metric (CSA AICM/CCM AIS-03): what it observes, its objective and thresholds, its owner, and the objectives and compliance controls it serves.",
    printcolumn(name = "Category", type_ = "string", json_path = ".spec.category"),
    printcolumn(name = "Value", type_ = "number", json_path = ".status.value"),
    printcolumn(name = "Target", type_ = "string", json_path = ".status.objective"),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "Tenants Breached", type_ = "integer", json_path = ".status.tenantsBreached"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct SecurityMetricSpec {
    /// Human-readable name, e.g. "Pods running as non-root".
    #[schemars(length(min = 1, max = 200))]
    pub display_name: String,
    /// What the metric measures and why it matters (documentation an auditor reads).
    #[schemars(length(min = 1, max = 4096))]
    pub description: String,
    /// Technical (measured from system state) or Operational (measured from processes).
    #[serde(rename = "type")]
    pub metric_type: MetricType,
    /// The security domain the metric belongs to.
    pub category: Category,
    /// Who owns the metric, and their role in the shared security responsibility model.
    pub owner: Owner,
    /// The business objectives, security requirements and compliance controls the metric serves.
    #[serde(default, skip_serializing_if = "Alignment::is_empty")]
    pub alignment: Alignment,
    /// Where the metric's data comes from. Exactly one source must be set.
    pub source: Source,
    /// Unit of the value: Percent, Count, Seconds, Ratio, or a free string.
    #[serde(default = "default_unit")]
    #[schemars(length(max = 63))]
    pub unit: String,
    /// The objective the value must meet, with an optional warning bound.
    pub objective: Objective,
    /// Flag values far outside the metric's own recent baseline as anomalous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anomaly: Option<Anomaly>,
    /// Break the value down per tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenancy: Option<Tenancy>,
    /// Evaluate at least this often (Go duration, at least 10s). Changes to observed objects
    /// also trigger evaluation. Default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('10s')").message("interval must be at least 10s"))]
    pub interval: Option<Duration>,
    /// A measurement older than this is Stale and never passing (Go duration). Default 3 × interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
}

fn default_unit() -> String {
    "Percent".to_string()
}

/// Technical or Operational.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum MetricType {
    Technical,
    Operational,
}

/// The security domain of a metric (SPEC §1: the relevance an auditor checks).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
pub enum Category {
    VulnerabilityManagement,
    AccessControl,
    DataProtection,
    IncidentResponse,
    ApiUsage,
    ResourceAllocation,
    NetworkSecurity,
    SupplyChain,
    Other,
}

impl Category {
    /// The name as written in the API.
    pub fn as_str(&self) -> &'static str {
        match self {
            Category::VulnerabilityManagement => "VulnerabilityManagement",
            Category::AccessControl => "AccessControl",
            Category::DataProtection => "DataProtection",
            Category::IncidentResponse => "IncidentResponse",
            Category::ApiUsage => "ApiUsage",
            Category::ResourceAllocation => "ResourceAllocation",
            Category::NetworkSecurity => "NetworkSecurity",
            Category::SupplyChain => "SupplyChain",
            Category::Other => "Other",
        }
    }
}

/// The owner of a metric.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    /// The owning team.
    #[schemars(length(min = 1, max = 200))]
    pub team: String,
    /// How to reach the owner (e-mail, chat channel, pager).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<String>,
    /// The owner's role in the shared security responsibility model.
    pub responsibility: Responsibility,
}

/// Roles of the shared security responsibility model (CSA AICM).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Responsibility {
    ApplicationProvider,
    ModelProvider,
    OrchestratedServiceProvider,
    CloudServiceProvider,
    SharedCspMp,
    SharedOspAp,
}

/// What a metric is aligned with.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Alignment {
    /// Business objectives the metric supports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub business_objectives: Vec<String>,
    /// Security requirements the metric verifies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_requirements: Vec<String>,
    /// Compliance controls the metric evidences.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compliance: Vec<ComplianceControl>,
}

impl Alignment {
    fn is_empty(&self) -> bool {
        self.business_objectives.is_empty()
            && self.security_requirements.is_empty()
            && self.compliance.is_empty()
    }
}

/// A control of a compliance framework, e.g. `{framework: CSA-AICM, control: AIS-03}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
pub struct ComplianceControl {
    /// Framework identifier: CSA-AICM, CSA-CCM, ISO-27001, ISO-42001, NIST-800-53, NIST-AI-RMF,
    /// NIST-AI-600-1, EU-AI-ACT, BSI-C5, CIS-K8S, PSS, or your own.
    #[schemars(length(min = 1, max = 63))]
    pub framework: String,
    /// Control identifier within the framework, e.g. AIS-03 or CA-7.
    #[schemars(length(min = 1, max = 63))]
    pub control: String,
}

/// Where a metric's data comes from: exactly one of `kubernetes`, `prometheus`, `history`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.kubernetes), has(self.prometheus), has(self.history)].filter(x, x).size() == 1").message("exactly one of source.kubernetes, source.prometheus, source.history must be set"))]
pub struct Source {
    /// Observe Kubernetes objects of one kind and aggregate CEL expressions over them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesSource>,
    /// Query Prometheus (instant query).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusSource>,
    /// Compute operational metrics from the operator's own records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<HistorySource>,
}

/// Observe Kubernetes objects of one kind.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(self.aggregate in ['Sum', 'Min', 'Max', 'Average']) || has(self.value)").message("aggregates Sum, Min, Max and Average need source.kubernetes.value"))]
#[x_kube(validation = Rule::new("!(self.aggregate in ['Ratio', 'CountPassing', 'CountFailing', 'NamespaceCoverage']) || has(self.passes)").message("aggregates Ratio, CountPassing, CountFailing and NamespaceCoverage need source.kubernetes.passes"))]
pub struct KubernetesSource {
    /// The kind to observe (core kinds and custom resources, resolved through discovery).
    pub resource: ResourceRef,
    /// Which namespaces to observe. Outside the platform namespaces, only the metric's own
    /// namespace is ever observed, whatever this says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Label selector over the observed objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// CEL (bool): which objects form the population. Default: all selected objects.
    /// Variables: object, namespaceObject (the namespace's name, labels and annotations;
    /// `namespace` is a reserved word in CEL, so it is spelled as in Kubernetes'
    /// ValidatingAdmissionPolicy), tenant (string), now (timestamp); function
    /// lookup(apiVersion, kind, namespace, name).
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub where_: Option<String>,
    /// CEL (bool): which objects of the population pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub passes: Option<String>,
    /// CEL (number): the value of each object, for Sum, Min, Max and Average.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub value: Option<String>,
    /// How objects combine into the metric's value. Default Ratio (passing / population × 100).
    #[serde(default)]
    pub aggregate: Aggregate,
}

/// An API kind.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRef {
    /// e.g. `v1`, `apps/v1`, `networking.k8s.io/v1`, spelled as the API server spells it.
    // The pattern is engine::objects::API_VERSION_PATTERN (a test holds them equal).
    #[schemars(
        length(min = 1, max = 253),
        regex(
            pattern = r"^(([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)+[a-z0-9]([-a-z0-9]*[a-z0-9])?/|(apps|batch|autoscaling|policy|extensions)/)?v[0-9]+((alpha|beta)[0-9]+)?$"
        )
    )]
    pub api_version: String,
    /// e.g. `Pod`, `NetworkPolicy`.
    #[schemars(length(min = 1, max = 63))]
    pub kind: String,
}

/// How observed objects combine into a value.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Aggregate {
    /// passing / population × 100.
    #[default]
    Ratio,
    /// The population size.
    Count,
    /// Objects that pass.
    CountPassing,
    /// Objects that fail.
    CountFailing,
    /// Sum of `value` over the population.
    Sum,
    /// Minimum of `value` over the population.
    Min,
    /// Maximum of `value` over the population.
    Max,
    /// Mean of `value` over the population.
    Average,
    /// Percent of the selected namespaces that hold at least one passing object.
    NamespaceCoverage,
}

/// An instant query against the Prometheus HTTP API (`/api/v1/query`). A scalar is the value;
/// a vector is summed, and broken down per tenant by `tenantLabel`. An empty result is no
/// data (Unknown), never 0.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.address) != has(self.endpointRef)").message("exactly one of source.prometheus.address, source.prometheus.endpointRef must be set"))]
#[x_kube(validation = Rule::new("!has(self.timeout) || duration(self.timeout) <= duration('30s')").message("source.prometheus.timeout may be at most 30s"))]
pub struct PrometheusSource {
    /// Base URL of the Prometheus HTTP API, e.g. `http://prometheus.monitoring:9090`. Only
    /// metrics in platform namespaces may name an address; others use `endpointRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Name of a Prometheus endpoint the platform team defined (operator flag
    /// `--prometheus-endpoint name=url`, Helm value `prometheus.endpoints`). Metrics outside
    /// the platform namespaces may name only endpoints the platform marked tenant-safe
    /// (`--prometheus-tenant-safe-endpoint`), and their query then sees only series of their
    /// own namespace (the namespace label is enforced on every selector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_ref: Option<String>,
    /// How long the query may take (default 10s, at most 30s). The platform caps it lower
    /// with the operator flag `--prometheus-max-timeout` (Helm value `prometheus.maxTimeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Credentials from a Secret in the metric's namespace (platform namespaces only; the
    /// chart grants reading exactly the Secrets in `prometheus.authSecrets`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<PrometheusAuth>,
    /// Trust for an HTTPS address signed by a private CA (platform namespaces only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<PrometheusTls>,
    /// PromQL returning an instant vector or a scalar.
    #[schemars(length(min = 1, max = 8192))]
    pub query: String,
    /// Series label carrying the tenant, for the per-tenant breakdown. Outside the platform
    /// namespaces, series naming another tenant than the metric's own are dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_label: Option<String>,
}

/// How the operator authenticates to Prometheus.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusAuth {
    /// `Bearer` (Secret key `token`) or `Basic` (keys `username` and `password`).
    #[serde(rename = "type")]
    pub type_: PrometheusAuthType,
    /// Name of the Secret, in the metric's namespace.
    pub secret_ref: String,
}

/// Authentication schemes for Prometheus.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PrometheusAuthType {
    Bearer,
    Basic,
}

/// TLS settings for Prometheus.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusTls {
    /// Name of a Secret (metric's namespace) whose key `ca.crt` holds the PEM CA bundle to
    /// trust instead of the system roots.
    pub ca_secret_ref: String,
}

/// Operational metrics computed from the operator's own records.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistorySource {
    /// What to compute over the window.
    pub statistic: HistoryStatistic,
    /// The window, as a Go duration, e.g. `720h` (30 days).
    pub window: Duration,
    /// Which SecurityMetrics (same namespace) the records come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_selector: Option<LabelSelector>,
}

/// Statistics over the operator's own records.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum HistoryStatistic {
    /// Mean time from entering Breached to leaving it, in seconds.
    MeanTimeToRecover,
    /// Number of breaches that started in the window.
    BreachCount,
    /// Seconds spent in Breached within the window.
    TimeInBreach,
    /// Remediation actions recorded by MetricPolicies in the window.
    RemediationCount,
}

/// The objective a value must meet.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.warning) || (self.operator in ['>=', '>'] && double(self.warning) < double(self.target)) || (self.operator in ['<=', '<'] && double(self.warning) > double(self.target))").message("objective.warning must be below target for >= and >, above target for <= and <, and is not allowed with =="))]
pub struct Objective {
    /// How the value compares with the target: >=, <=, >, <, ==.
    pub operator: Operator,
    /// The value that must hold.
    pub target: f64,
    /// A second bound in the same direction: between target and warning is Warning,
    /// beyond warning is Breached. Without it, missing the target is Breached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<f64>,
}

/// Comparison operators of an objective.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Operator {
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "==")]
    Eq,
}

impl Operator {
    /// The operator as written in the API.
    pub fn as_str(&self) -> &'static str {
        match self {
            Operator::Ge => ">=",
            Operator::Le => "<=",
            Operator::Gt => ">",
            Operator::Lt => "<",
            Operator::Eq => "==",
        }
    }
}

/// Anomaly detection against the metric's own recent values: an exponentially weighted mean
/// and standard deviation (kept in status as `baseline`, and per tenant in `tenantBaselines`).
/// A value more than `sensitivity` deviations away (at least 5% of the mean) is anomalous,
/// once the baseline holds `window / 2` samples (at least 3). One sample per status write: at
/// every change and at the heartbeat once per interval.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Anomaly {
    /// Number of recent samples carrying most of the baseline's weight (EWMA span).
    #[schemars(range(min = 3, max = 100))]
    pub window: i32,
    /// How many standard deviations from the baseline mean a value must be to be anomalous.
    pub sensitivity: f64,
}

/// Per-tenant breakdown.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tenancy {
    /// Namespace label carrying the tenant name. Default `secmetrics.io/tenant`; a namespace
    /// without the label is its own tenant.
    #[serde(default = "default_tenant_label")]
    pub tenant_label: String,
}

/// The default namespace label that names a tenant.
pub const DEFAULT_TENANT_LABEL: &str = "secmetrics.io/tenant";

fn default_tenant_label() -> String {
    DEFAULT_TENANT_LABEL.to_string()
}

/// The observed state of a SecurityMetric.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecurityMetricStatus {
    /// The spec generation this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, SourceAvailable, ExpressionValid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The measured value, absent when there is no data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The objective in words, e.g. ">= 95", for display.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objective: Option<String>,
    /// Objects in the population.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub population: Option<i64>,
    /// Objects of the population that pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passing: Option<i64>,
    /// Objects whose expressions failed to evaluate (counted as not passing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation_errors: Option<i64>,
    /// The first evaluation error, with the object it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_evaluation_error: Option<String>,
    /// Compliant, Warning, Breached, or Unknown (no data, stale, or error: never passing).
    #[serde(default)]
    pub state: MetricState,
    /// The value is outside the metric's recent baseline.
    #[serde(default)]
    pub anomalous: bool,
    /// When the value was last computed (refreshed at least once per interval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_evaluated: Option<Time>,
    /// When `state` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition: Option<Time>,
    /// Per-tenant values, worst first, capped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<TenantValue>,
    /// Number of tenants observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants_total: Option<i64>,
    /// Number of tenants whose own value is Breached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants_breached: Option<i64>,
    /// Failing objects, ordered by namespace then name, capped. Never object contents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offenders: Vec<Offender>,
    /// Number of failing objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offenders_total: Option<i64>,
    /// Since when `anomalous` is true (the anomaly episode a policy rule acts on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anomalous_since: Option<Time>,
    /// Number of tenants whose own value is outside their baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants_anomalous: Option<i64>,
    /// The baseline of recent values anomaly detection compares with (spec.anomaly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Baseline>,
    /// Per-tenant baselines (spec.anomaly with spec.tenancy), by tenant name, capped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenant_baselines: Vec<TenantBaseline>,
    /// Daily and monthly aggregates of the measured values: the tracking evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trend: Option<Trend>,
    /// Recent Breached episodes, newest first, capped: the records behind MTTR.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub breaches: Vec<Breach>,
}

/// Aggregates of the measured values over UTC days and months.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Trend {
    /// One bucket per UTC day, oldest first, at most 31.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub daily: Vec<TrendBucket>,
    /// One bucket per UTC month, oldest first, at most 12.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub monthly: Vec<TrendBucket>,
}

/// The values and states of one period. Time between two evaluations is attributed to the
/// earlier one's value and state (it held until the next evaluation), up to `maxAge`; longer
/// gaps are not observed time.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrendBucket {
    /// The UTC day (`2026-11-28`) or month (`2026-11`).
    pub period: String,
    /// Evaluations recorded in the period.
    pub samples: i64,
    /// Lowest value in the period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Highest value in the period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Time-weighted mean value in the period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    /// The latest value in the period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<f64>,
    /// Share (0 to 1) of the observed time the metric was Compliant or Warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compliant_ratio: Option<f64>,
    /// Seconds of the period covered by evaluations.
    pub observed_seconds: i64,
    /// Seconds of the observed time spent Breached.
    pub time_in_breach_seconds: i64,
    /// Seconds of the observed time without data (Unknown).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unknown_seconds: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// One Breached episode. It ends when the metric is Compliant or Warning again (Unknown does
/// not end it: missing data is not a recovery).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Breach {
    /// When the metric became Breached.
    pub since: Time,
    /// When it recovered; absent while the breach lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Time>,
}

/// An exponentially weighted mean and standard deviation of recent values.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Baseline {
    /// Weighted mean of recent values.
    pub mean: f64,
    /// Weighted standard deviation of recent values.
    pub std_dev: f64,
    /// Values folded in so far (anomalies are flagged once there are enough).
    pub samples: i64,
}

/// One tenant's baseline.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantBaseline {
    /// Tenant name.
    pub name: String,
    /// The tenant's baseline.
    #[serde(flatten)]
    pub baseline: Baseline,
}

/// The state of a metric against its objective.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum MetricState {
    /// The objective holds.
    Compliant,
    /// Between target and warning.
    Warning,
    /// Beyond warning (or missing the target when no warning is set).
    Breached,
    /// No data, stale data, or an error. Never counted as passing.
    #[default]
    Unknown,
}

impl MetricState {
    /// The state as written in the API.
    pub fn as_str(&self) -> &'static str {
        match self {
            MetricState::Compliant => "Compliant",
            MetricState::Warning => "Warning",
            MetricState::Breached => "Breached",
            MetricState::Unknown => "Unknown",
        }
    }

    /// Ordering for "worst first" lists: Breached, Unknown, Warning, Compliant.
    pub fn severity(&self) -> u8 {
        match self {
            MetricState::Breached => 3,
            MetricState::Unknown => 2,
            MetricState::Warning => 1,
            MetricState::Compliant => 0,
        }
    }
}

/// One tenant's share of a metric.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantValue {
    /// Tenant name.
    pub name: String,
    /// The tenant's value, absent when it has no data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The tenant's state against the metric's objective.
    pub state: MetricState,
    /// The tenant's value is outside its own baseline (spec.anomaly).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub anomalous: bool,
}

/// A failing object, by reference only.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Offender {
    /// Kind of the object.
    pub kind: String,
    /// Namespace of the object (absent for cluster-scoped objects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the object.
    pub name: String,
    /// Tenant owning the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}
