//! Controller wiring: client, CRD check, probes, and the metric controller.

pub mod metric_policy;
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

    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(&args.probe_addr)
        .await
        .with_context(|| format!("binding the probe address {}", args.probe_addr))?;
    tokio::spawn(crate::http::serve(listener, ready.clone()));

    let reporter = Reporter { controller: "secmetrics".into(), instance: std::env::var("POD_NAME").ok() };
    let recorder = Recorder::new(client.clone(), reporter);
    let settings = security_metric::Settings {
        platform_namespaces: args.platform_namespaces.clone(),
        debounce: args.debounce,
        metric_selector: args.metric_selector.clone(),
        evaluation_budget: args.evaluation_budget,
    };
    let policy_settings = metric_policy::Settings {
        platform_namespaces: args.platform_namespaces.clone(),
        operator_namespace: args.namespace.clone(),
        selector: args.metric_selector.clone(),
    };
    info!(platform_namespaces = ?settings.platform_namespaces, "secmetrics controller starting");
    ready.store(true, Ordering::Relaxed);
    tokio::select! {
        _ = security_metric::run(client.clone(), settings, recorder) => anyhow::bail!("the SecurityMetric watch ended"),
        _ = metric_policy::run(client, policy_settings) => anyhow::bail!("the MetricPolicy controller ended"),
        _ = shutdown_signal() => {
            info!("shutting down");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}
