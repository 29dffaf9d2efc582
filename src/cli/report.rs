//! `secmetrics report`: an auditor's report from the live cluster or from files.
//!
//! Both paths end in the same place: a list of SecurityMetrics and MetricPolicies handed to
//! [`crate::report::build`]. Files are read with the loader of `secmetrics evaluate`, so its
//! `-o yaml|json` output and `kubectl get sm,mp -A -o yaml` are both valid input.

use std::io::Write;
use std::path::PathBuf;

use k8s_openapi::jiff::{Timestamp, civil::Date, tz::TimeZone};
use kube::api::{Api, ListParams};

use super::load::{self, LoadError};
use crate::api::{MetricPolicy, SecurityMetric};
use crate::report::{self, Format, Options};

/// Arguments of `secmetrics report`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Read SecurityMetrics and MetricPolicies from these files or directories (YAML or JSON,
    /// `kind: List` included) instead of the cluster. Other kinds are skipped.
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<PathBuf>,
    /// Report format.
    #[arg(long, value_enum, default_value = "markdown")]
    pub format: Format,
    /// Write the report to this file instead of stdout.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// Only this namespace (default: all namespaces).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Only controls of this framework (e.g. CSA-AICM, NIST-800-53), and the metrics and
    /// policies evidencing them.
    #[arg(long)]
    pub framework: Option<String>,
    /// Only trend buckets, breaches and actions from this date on (`2026-01`, `2026-01-15` or
    /// an RFC 3339 time; UTC).
    #[arg(long, value_parser = parse_since)]
    pub since: Option<Timestamp>,
    /// The report's "generated at" (RFC 3339). Default: the newest `lastEvaluated` of the
    /// input, so the same input gives byte-identical output.
    #[arg(long, value_parser = parse_at)]
    pub at: Option<Timestamp>,
    /// Kubeconfig context to read from (default: the current context).
    #[arg(long)]
    pub context: Option<String>,
}

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{0}")]
    Invalid(String),
    #[error("reading from the cluster: {0}")]
    Cluster(String),
    #[error("writing {path}: {source}")]
    Output { path: String, source: std::io::Error },
}

/// `2026-01` or `2026-01-15` (UTC midnight) or an RFC 3339 time.
pub fn parse_since(s: &str) -> Result<Timestamp, String> {
    let date = if s.len() == 7 { format!("{s}-01") } else { s.to_string() };
    if let Ok(d) = date.parse::<Date>() {
        return d.to_zoned(TimeZone::UTC).map(|z| z.timestamp()).map_err(|e| e.to_string());
    }
    parse_at(s).map_err(|_| format!("expected YYYY-MM, YYYY-MM-DD or an RFC 3339 time, found {s:?}"))
}

/// An RFC 3339 time.
pub fn parse_at(s: &str) -> Result<Timestamp, String> {
    s.parse::<Timestamp>().map_err(|e| format!("expected an RFC 3339 time such as 2026-11-30T00:00:00Z: {e}"))
}

/// Runs the command.
pub fn run(args: &Args, stdout: &mut dyn Write) -> Result<(), ReportError> {
    let (metrics, policies) = if args.files.is_empty() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ReportError::Cluster(e.to_string()))?;
        runtime.block_on(from_cluster(args.namespace.as_deref(), args.context.as_deref()))?
    } else {
        from_files(&args.files)?
    };
    let options = Options {
        framework: args.framework.clone(),
        namespace: args.namespace.clone(),
        since: args.since,
        at: args.at,
    };
    let text = report::render(&report::build(&metrics, &policies, &options), args.format);
    match &args.output {
        Some(path) => std::fs::write(path, text)
            .map_err(|source| ReportError::Output { path: path.display().to_string(), source }),
        None => stdout
            .write_all(text.as_bytes())
            .and_then(|_| stdout.flush())
            .map_err(|source| ReportError::Output { path: "stdout".into(), source }),
    }
}

/// SecurityMetrics and MetricPolicies from files (unknown fields are ignored: a report
/// reads what a newer or older operator wrote).
pub fn from_files(paths: &[PathBuf]) -> Result<(Vec<SecurityMetric>, Vec<MetricPolicy>), ReportError> {
    let mut metrics = Vec::new();
    let mut policies = Vec::new();
    for doc in load::load(paths)? {
        let api_version = doc.value["apiVersion"].as_str().unwrap_or_default();
        let kind = doc.value["kind"].as_str().unwrap_or_default();
        if !api_version.starts_with("secmetrics.io/") {
            continue;
        }
        let invalid = |e: serde_json::Error| {
            let name = doc.value["metadata"]["name"].as_str().unwrap_or("<unnamed>");
            ReportError::Invalid(format!("{} {kind} {name}: {e}", doc.origin))
        };
        match kind {
            "SecurityMetric" => metrics.push(serde_json::from_value(doc.value.clone()).map_err(invalid)?),
            "MetricPolicy" => policies.push(serde_json::from_value(doc.value.clone()).map_err(invalid)?),
            _ => {}
        }
    }
    if metrics.is_empty() && policies.is_empty() {
        return Err(ReportError::Invalid("no SecurityMetric or MetricPolicy found in the -f inputs".into()));
    }
    Ok((metrics, policies))
}

/// SecurityMetrics and MetricPolicies from the cluster of the kubeconfig's current (or given)
/// context, in one namespace or all.
pub async fn from_cluster(
    namespace: Option<&str>,
    context: Option<&str>,
) -> Result<(Vec<SecurityMetric>, Vec<MetricPolicy>), ReportError> {
    let err = |e: &dyn std::fmt::Display| ReportError::Cluster(e.to_string());
    let config = match context {
        Some(c) => kube::Config::from_kubeconfig(&kube::config::KubeConfigOptions {
            context: Some(c.to_string()),
            ..Default::default()
        })
        .await
        .map_err(|e| err(&e))?,
        None => kube::Config::infer().await.map_err(|e| err(&e))?,
    };
    let client = kube::Client::try_from(config).map_err(|e| err(&e))?;
    let metrics = list_all::<SecurityMetric>(api(client.clone(), namespace)).await?;
    let policies = list_all::<MetricPolicy>(api(client, namespace)).await?;
    Ok((metrics, policies))
}

fn api<K>(client: kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    }
}

/// Lists in pages of 500, so a large cluster is never one huge response.
async fn list_all<K>(api: Api<K>) -> Result<Vec<K>, ReportError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut out = Vec::new();
    let mut params = ListParams::default().limit(500);
    loop {
        let page = api.list(&params).await.map_err(|e| ReportError::Cluster(e.to_string()))?;
        out.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_months_days_and_times() {
        assert_eq!(parse_since("2026-09").unwrap().to_string(), "2026-09-01T00:00:00Z");
        assert_eq!(parse_since("2026-09-15").unwrap().to_string(), "2026-09-15T00:00:00Z");
        assert_eq!(parse_since("2026-09-15T10:00:00Z").unwrap().to_string(), "2026-09-15T10:00:00Z");
        assert!(parse_since("last week").is_err());
    }
}
