//! Controller wiring: client, CRD check, probes, and the metric controller.

pub mod metric_policy;
pub mod pool;
pub mod security_metric;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use kube::Client;
use kube::api::{Api, ListParams};
use kube::runtime::events::{Recorder, Reporter};
use tracing::info;

use crate::api::SecurityMetric;
use crate::leader;
use crate::telemetry::{self, LogFormat};

/// Arguments of `secmetrics run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Namespaces whose SecurityMetrics observe the whole cluster (repeatable). Metrics in any
    /// other namespace see only their own namespace. Default: the operator's namespace.
    #[arg(long = "platform-namespace", env = "SECMETRICS_PLATFORM_NAMESPACES", value_delimiter = ',')]
    pub platform_namespaces: Vec<String>,
    /// The operator's own namespace (from the downward API in the chart).
    #[arg(long, env = "POD_NAMESPACE", default_value = "secmetrics-system")]
    pub namespace: String,
    /// Address of /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8081")]
    pub probe_addr: String,
    /// Wait this long after an object change before re-evaluating (collects bursts).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub debounce: Duration,
    /// Longest one metric's full evaluation may run; beyond it the evaluation stops and the
    /// metric reports ExpressionValid=False (CostLimitExceeded).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub evaluation_budget: Duration,
    /// Threads that evaluate metrics' expressions, off the async runtime: a slow metric
    /// occupies one of them for at most its budget while the others serve the rest.
    /// 0: the available parallelism, at most 4.
    #[arg(long, default_value_t = 0, env = "SECMETRICS_EVALUATION_WORKERS")]
    pub evaluation_workers: usize,
    /// Manage only the SecurityMetrics and MetricPolicies matching this label selector
    /// (sharding, canaries).
    #[arg(long)]
    pub metric_selector: Option<String>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text", env = "SECMETRICS_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log level (tracing filter syntax); RUST_LOG overrides it.
    #[arg(long, default_value = "info", env = "SECMETRICS_LOG_LEVEL")]
    pub log_level: String,
    /// Elect a leader among replicas on a Lease; only the leader writes and acts. Turn off
    /// only for a single replica.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Name of the Lease (in the operator's namespace) the replicas compete for.
    #[arg(long, default_value = "secmetrics")]
    pub leader_election_id: String,
    /// How long a lease is valid after its last renewal (the longest takeover after a leader
    /// dies). A leader that cannot renew stops writing after two thirds of it.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// A Prometheus endpoint metrics may name in `source.prometheus.endpointRef`, as
    /// `name=url` (repeatable). Metrics outside the platform namespaces can only use these.
    #[arg(long = "prometheus-endpoint", env = "SECMETRICS_PROMETHEUS_ENDPOINTS", value_delimiter = ',', value_parser = parse_endpoint)]
    pub prometheus_endpoints: Vec<(String, String)>,
    /// Metrics with more tenants than this export no per-tenant Prometheus series
    /// (cardinality bound); 0 turns them off.
    #[arg(long, default_value_t = 20)]
    pub tenant_series_limit: usize,
}

fn parse_endpoint(s: &str) -> Result<(String, String), String> {
    let (name, url) = s.split_once('=').ok_or("expected name=url")?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("{url}: the URL must start with http:// or https://"));
    }
    Ok((name.to_string(), url.to_string()))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::api::duration::Duration::parse(s).map(|d| d.get()).map_err(|e| e.to_string())
}

/// Runs the controller until SIGTERM/SIGINT.
pub async fn run(mut args: RunArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format, &args.log_level);
    if args.platform_namespaces.is_empty() {
        args.platform_namespaces.push(args.namespace.clone());
    }
    let client = Client::try_default().await.context("connecting to the Kubernetes API")?;
    // Fail fast, with a message that says what to do, when the CRDs are missing.
    Api::<SecurityMetric>::all(client.clone())
        .list(&ListParams::default().limit(1))
        .await
        .context("listing SecurityMetrics failed: are the CRDs installed (kubectl apply -f crds/) and is list allowed?")?;

    crate::metrics::init();
    crate::metrics::TENANT_SERIES_LIMIT.store(args.tenant_series_limit, Ordering::Relaxed);
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(&args.probe_addr)
        .await
        .with_context(|| format!("binding the probe address {}", args.probe_addr))?;
    tokio::spawn(crate::http::serve(listener, ready.clone()));

    let identity =
        std::env::var("POD_NAME").unwrap_or_else(|_| format!("{}-{}", hostname(), std::process::id()));
    let leadership = if args.leader_elect {
        let timing = leader::Timing {
            lease_duration: args.lease_duration,
            renew_deadline: args.lease_duration * 2 / 3,
            retry_period: (args.lease_duration / 7).max(Duration::from_millis(500)),
        };
        leader::start(client.clone(), &args.namespace, &args.leader_election_id, identity.clone(), timing)
    } else {
        crate::metrics::LEADER.set(1);
        leader::Leadership::always()
    };
    let reporter = Reporter { controller: "secmetrics".into(), instance: Some(identity) };
    let recorder = Recorder::new(client.clone(), reporter);
    let settings = security_metric::Settings {
        platform_namespaces: args.platform_namespaces.clone(),
        debounce: args.debounce,
        metric_selector: args.metric_selector.clone(),
        evaluation_budget: args.evaluation_budget,
        evaluation_workers: args.evaluation_workers,
        leadership: leadership.clone(),
        ready: ready.clone(),
        prometheus_endpoints: args.prometheus_endpoints.iter().cloned().collect(),
    };
    let policy_settings = metric_policy::Settings {
        platform_namespaces: args.platform_namespaces.clone(),
        operator_namespace: args.namespace.clone(),
        selector: args.metric_selector.clone(),
        leadership,
    };
    info!(platform_namespaces = ?settings.platform_namespaces, leader_elect = args.leader_elect, "secmetrics controller starting");
    tokio::select! {
        _ = security_metric::run(client.clone(), settings, recorder) => anyhow::bail!("the SecurityMetric watch ended"),
        _ = metric_policy::run(client, policy_settings) => anyhow::bail!("the MetricPolicy controller ended"),
        _ = shutdown_signal() => {
            info!("shutting down");
            Ok(())
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "secmetrics".into())
}

async fn shutdown_signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}
