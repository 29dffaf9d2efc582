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
    /// Marks a `--prometheus-endpoint` tenant-safe, as `name` or `name=label` (repeatable):
    /// metrics outside the platform namespaces may query it, and every selector of their
    /// queries is confined to their namespace on `label` (default `namespace`), as
    /// prom-label-proxy does. Tenant metrics cannot use endpoints not marked so.
    #[arg(long = "prometheus-tenant-safe-endpoint", env = "SECMETRICS_PROMETHEUS_TENANT_SAFE_ENDPOINTS", value_delimiter = ',', value_parser = parse_tenant_safe)]
    pub prometheus_tenant_safe_endpoints: Vec<(String, String)>,
    /// Longest any Prometheus query may take, whatever a metric's `timeout` asks.
    #[arg(long, env = "SECMETRICS_PROMETHEUS_MAX_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub prometheus_max_timeout: Duration,
    /// Metrics with more tenants than this export no per-tenant Prometheus series
    /// (cardinality bound); 0 turns them off.
    #[arg(long, default_value_t = 20)]
    pub tenant_series_limit: usize,
    /// Who may read /metrics: `kubernetes` answers only bearer tokens the API server
    /// authenticates (TokenReview) and allows `get` on the non-resource URL /metrics
    /// (SubjectAccessReview); `none` answers anyone who reaches the port.
    #[arg(long, value_enum, default_value = "kubernetes", env = "SECMETRICS_METRICS_AUTH")]
    pub metrics_auth: MetricsAuth,
}

/// Values of `--metrics-auth`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsAuth {
    Kubernetes,
    None,
}

fn parse_endpoint(s: &str) -> Result<(String, String), String> {
    let (name, url) = s.split_once('=').ok_or("expected name=url")?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("{url}: the URL must start with http:// or https://"));
    }
    Ok((name.to_string(), url.to_string()))
}

fn parse_tenant_safe(s: &str) -> Result<(String, String), String> {
    let (name, label) = s.split_once('=').unwrap_or((s, crate::sources::prometheus::DEFAULT_NAMESPACE_LABEL));
    if name.is_empty() {
        return Err("expected name or name=label".into());
    }
    if !crate::sources::promql::is_label_name(label) || label == "__name__" {
        return Err(format!("{label:?} is not a label name ([a-zA-Z_][a-zA-Z0-9_]*)"));
    }
    Ok((name.to_string(), label.to_string()))
}

/// The endpoints by name, tenant-safe ones with their namespace label; an endpoint marked
/// tenant-safe must be defined.
fn prometheus_endpoints(
    args: &RunArgs,
) -> anyhow::Result<std::collections::HashMap<String, crate::sources::prometheus::Endpoint>> {
    let mut endpoints: std::collections::HashMap<_, _> = args
        .prometheus_endpoints
        .iter()
        .map(|(name, url)| {
            (name.clone(), crate::sources::prometheus::Endpoint { url: url.clone(), namespace_label: None })
        })
        .collect();
    for (name, label) in &args.prometheus_tenant_safe_endpoints {
        let endpoint = endpoints.get_mut(name).with_context(|| {
            format!("--prometheus-tenant-safe-endpoint {name}: no --prometheus-endpoint named {name}")
        })?;
        endpoint.namespace_label = Some(label.clone());
    }
    Ok(endpoints)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::api::duration::Duration::parse(s).map(|d| d.get()).map_err(|e| e.to_string())
}

/// Runs the controller until SIGTERM/SIGINT.
pub async fn run(mut args: RunArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format, &args.log_level);
    let prometheus_endpoints = prometheus_endpoints(&args)?;
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
    let access = match args.metrics_auth {
        MetricsAuth::Kubernetes => {
            crate::http::MetricsAccess::Kubernetes(Arc::new(crate::http::Reviewer::new(client.clone())))
        }
        MetricsAuth::None => crate::http::MetricsAccess::Open,
    };
    tokio::spawn(crate::http::serve(listener, ready.clone(), access));

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
        prometheus_endpoints,
        prometheus_max_timeout: args.prometheus_max_timeout,
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn args(extra: &[&str]) -> Result<RunArgs, clap::Error> {
        Cli::try_parse_from(["secmetrics"].iter().chain(extra)).map(|c| c.run)
    }

    #[test]
    fn endpoints_are_tenant_safe_only_when_marked() {
        let a = args(&[
            "--prometheus-endpoint=main=http://prom:9090",
            "--prometheus-endpoint=t=http://t:9090",
            "--prometheus-endpoint=l=http://l:9090",
            "--prometheus-tenant-safe-endpoint=t",
            "--prometheus-tenant-safe-endpoint=l=kubernetes_namespace",
        ])
        .unwrap();
        let endpoints = prometheus_endpoints(&a).unwrap();
        let label = |n: &str| endpoints[n].namespace_label.clone();
        assert_eq!(label("main"), None);
        assert_eq!(label("t").as_deref(), Some("namespace"));
        assert_eq!(label("l").as_deref(), Some("kubernetes_namespace"));
        assert_eq!(a.prometheus_max_timeout, Duration::from_secs(10));
        // A tenant-safe mark needs a defined endpoint and a plain label name.
        let a = args(&["--prometheus-tenant-safe-endpoint=missing"]).unwrap();
        assert!(
            prometheus_endpoints(&a)
                .unwrap_err()
                .to_string()
                .contains("no --prometheus-endpoint named missing")
        );
        assert!(args(&["--prometheus-tenant-safe-endpoint=t=bad-label"]).is_err());
        assert!(args(&["--prometheus-tenant-safe-endpoint=t=__name__"]).is_err());
        let a = args(&["--prometheus-max-timeout=3s"]).unwrap();
        assert_eq!(a.prometheus_max_timeout, Duration::from_secs(3));
    }
}
