//! The `prometheus` source: an instant query over the Prometheus HTTP API.
//!
//! [`measure`] turns Prometheus' answer into an outcome (pure, unit-tested on recorded
//! answers); [`query`] asks over HTTP with a timeout. Reasons a reader can act on:
//! `PrometheusUnreachable`, `PrometheusHttpError`, `PrometheusQueryError` (Prometheus' own
//! message, e.g. a PromQL parse error), `UnsupportedResult`, `NonNumericValue`; an empty result
//! is no data (Unknown), never 0.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::api::security_metric::PrometheusAuthType;
use crate::engine::{Measurement, Outcome};
use crate::telemetry::error_chain;

/// Default query timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most response bytes read (a metric's answer is small; a huge one is a mistake).
const MAX_BODY: usize = 4 * 1024 * 1024;

fn unavailable(reason: &str, message: impl Into<String>) -> Outcome {
    Outcome::SourceUnavailable { reason: reason.into(), message: message.into() }
}

/// A Prometheus endpoint the platform defined (`--prometheus-endpoint name=url`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Base URL of the HTTP API.
    pub url: String,
    /// Set when the platform marked the endpoint tenant-safe
    /// (`--prometheus-tenant-safe-endpoint name[=label]`): the series label that carries the
    /// namespace there. Only tenant-safe endpoints serve metrics outside platform namespaces.
    pub namespace_label: Option<String>,
}

/// The namespace label of a tenant-safe endpoint unless the platform names another.
pub const DEFAULT_NAMESPACE_LABEL: &str = "namespace";

/// Where a metric's query goes and how it is confined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Base URL, without a trailing slash.
    pub address: String,
    /// For a tenant metric, the label its namespace is enforced on (see [`confine`]); None
    /// for platform metrics, whose queries are sent as written.
    pub namespace_label: Option<String>,
}

/// Where a metric's query goes: its address or the platform endpoint it names. Metrics
/// outside the platform namespaces may only use platform endpoints (no arbitrary URLs: SSRF)
/// that the platform marked tenant-safe (their queries are confined to their namespace).
pub fn resolve(
    address: Option<&str>,
    endpoint_ref: Option<&str>,
    platform: bool,
    endpoints: &HashMap<String, Endpoint>,
) -> Result<Target, Outcome> {
    match (address, endpoint_ref) {
        (Some(a), None) if platform => {
            Ok(Target { address: a.trim_end_matches('/').to_string(), namespace_label: None })
        }
        (Some(_), None) => Err(unavailable(
            "AddressNotAllowed",
            "only metrics in platform namespaces may set source.prometheus.address; use endpointRef to a platform-defined endpoint",
        )),
        (None, Some(name)) => {
            let Some(endpoint) = endpoints.get(name) else {
                let mut known: Vec<&str> = endpoints.keys().map(String::as_str).collect();
                known.sort();
                return Err(unavailable(
                    "EndpointNotFound",
                    format!("no Prometheus endpoint named {name:?} is defined (known: {})", known.join(", ")),
                ));
            };
            let address = endpoint.url.trim_end_matches('/').to_string();
            if platform {
                return Ok(Target { address, namespace_label: None });
            }
            match &endpoint.namespace_label {
                Some(label) => Ok(Target { address, namespace_label: Some(label.clone()) }),
                None => {
                    let mut safe: Vec<&str> = endpoints
                        .iter()
                        .filter(|(_, e)| e.namespace_label.is_some())
                        .map(|(n, _)| n.as_str())
                        .collect();
                    safe.sort();
                    Err(unavailable(
                        "EndpointNotTenantSafe",
                        format!(
                            "the Prometheus endpoint {name:?} is not marked tenant-safe by the platform, so metrics outside the platform namespaces may not query it (tenant-safe: {}); no query was sent",
                            if safe.is_empty() { "none".to_string() } else { safe.join(", ") }
                        ),
                    ))
                }
            }
        }
        _ => Err(unavailable("InvalidSource", "exactly one of address and endpointRef must be set")),
    }
}

/// The query sent for a metric in `namespace`: as written for platform metrics; for tenant
/// metrics, with `<namespace label>="<namespace>"` enforced on every selector, or refused
/// (`QueryNotConfined`) when that cannot be done with certainty.
pub fn confine(promql: &str, target: &Target, namespace: &str) -> Result<String, Outcome> {
    match &target.namespace_label {
        None => Ok(promql.to_string()),
        Some(label) => super::promql::enforce_label(promql, label, namespace).map_err(|e| {
            unavailable(
                "QueryNotConfined",
                format!("the query cannot be confined to namespace {namespace:?} ({label} label), so it was not sent: {e}"),
            )
        }),
    }
}

/// How long a query may take: what the metric asks (default [`DEFAULT_TIMEOUT`]), at most
/// the platform's `cap`.
pub fn effective_timeout(requested: Option<Duration>, cap: Duration) -> Duration {
    requested.unwrap_or(DEFAULT_TIMEOUT).min(cap)
}

/// The outcome of Prometheus' answer (`status` is the HTTP status, `body` the response).
/// With `own_tenant` (tenant metrics), series whose `tenant_label` names another tenant are
/// dropped: they count neither in the value nor in the breakdown.
pub fn measure(status: u16, body: &[u8], tenant_label: Option<&str>, own_tenant: Option<&str>) -> Outcome {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    // Prometheus answers errors (400 bad_data, 422 execution) with a JSON body naming them.
    if let Some(v) = &parsed
        && v["status"] == "error"
    {
        let kind = v["errorType"].as_str().unwrap_or("error");
        let error = v["error"].as_str().unwrap_or("no message");
        return unavailable(
            "PrometheusQueryError",
            format!("Prometheus rejected the query ({kind}): {error}"),
        );
    }
    if !(200..300).contains(&status) {
        let excerpt: String = String::from_utf8_lossy(body).chars().take(200).collect();
        return unavailable("PrometheusHttpError", format!("HTTP {status}: {}", excerpt.trim()));
    }
    let Some(v) = parsed else {
        return unavailable("PrometheusHttpError", "the answer is not JSON");
    };
    let data = &v["data"];
    let number = |sample: &Value| -> Result<f64, Outcome> {
        let text = sample[1].as_str().unwrap_or_default();
        match text.parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(x),
            _ => Err(unavailable(
                "NonNumericValue",
                format!("the query returned {text:?}, not a finite number"),
            )),
        }
    };
    match data["resultType"].as_str() {
        Some("scalar") => match number(&data["result"]) {
            Ok(x) => Outcome::Measured(Measurement { value: Some(x), population: 1, ..Default::default() }),
            Err(o) => o,
        },
        Some("vector") => {
            let mut series = data["result"].as_array().cloned().unwrap_or_default();
            if let (Some(label), Some(own)) = (tenant_label, own_tenant) {
                series.retain(|s| s["metric"][label].as_str().is_none_or(|t| t == own));
            }
            let mut total = 0.0;
            let mut tenants: BTreeMap<String, Option<f64>> = BTreeMap::new();
            for s in &series {
                let x = match number(&s["value"]) {
                    Ok(x) => x,
                    Err(o) => return o,
                };
                total += x;
                if let Some(label) = tenant_label
                    && let Some(t) = s["metric"][label].as_str()
                {
                    let e = tenants.entry(t.to_string()).or_insert(Some(0.0));
                    *e = e.map(|v| v + x);
                }
            }
            Outcome::Measured(Measurement {
                value: (!series.is_empty()).then_some(total),
                population: series.len() as u64,
                tenants,
                ..Default::default()
            })
        }
        other => unavailable(
            "UnsupportedResult",
            format!("the query returned a {}, not a scalar or an instant vector", other.unwrap_or("nothing")),
        ),
    }
}

/// What the operator presents to Prometheus, read from Secrets.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// The Authorization header value (`Bearer ...` or `Basic ...`).
    pub authorization: Option<String>,
    /// PEM CA bundle to trust instead of the system roots.
    pub ca_pem: Option<Vec<u8>>,
}

impl Credentials {
    /// The Authorization header for `auth` from the Secret's `data`; the error names the
    /// missing key.
    pub fn authorization(
        auth: PrometheusAuthType,
        secret: &str,
        data: &BTreeMap<String, Vec<u8>>,
    ) -> Result<String, String> {
        let key = |k: &str| {
            data.get(k)
                .map(|v| String::from_utf8_lossy(v).trim().to_string())
                .ok_or_else(|| format!("Secret {secret} has no key {k:?}"))
        };
        Ok(match auth {
            PrometheusAuthType::Bearer => format!("Bearer {}", key("token")?),
            PrometheusAuthType::Basic => {
                format!("Basic {}", base64(format!("{}:{}", key("username")?, key("password")?).as_bytes()))
            }
        })
    }
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A TLS client config trusting exactly the CAs in `pem`.
fn tls_config(pem: &[u8]) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("ca.crt is not a PEM certificate bundle: {e}"))?;
        roots.add(cert).map_err(|e| format!("ca.crt: {e}"))?;
    }
    if roots.is_empty() {
        return Err("ca.crt holds no certificate".into());
    }
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

/// Runs `promql` against `address`, answering by `deadline` (the end of the metric's
/// `timeout`, which started before the credentials were read).
pub async fn query(
    address: &str,
    promql: &str,
    tenant_label: Option<&str>,
    own_tenant: Option<&str>,
    timeout: Duration,
    deadline: tokio::time::Instant,
    credentials: &Credentials,
) -> Outcome {
    let encoded: String = form_urlencoded(promql);
    let url = format!("{address}/api/v1/query?query={encoded}");
    let uri: http::Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => return unavailable("InvalidAddress", format!("{address}: {e}")),
    };
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return unavailable("InvalidAddress", format!("{address}: the scheme must be http or https"));
    }
    let builder = match &credentials.ca_pem {
        Some(pem) => match tls_config(pem) {
            Ok(config) => hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config),
            Err(e) => return unavailable("InvalidCA", e),
        },
        None => match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
            Ok(b) => b,
            Err(e) => return unavailable("PrometheusUnreachable", format!("TLS roots: {e}")),
        },
    };
    let https = builder.https_or_http().enable_http1().build();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let mut request = http::Request::get(uri)
        .header(http::header::USER_AGENT, concat!("secmetrics/", env!("CARGO_PKG_VERSION")));
    if let Some(value) = &credentials.authorization {
        request = request.header(http::header::AUTHORIZATION, value);
    }
    let request = request.body(Empty::new());
    let request = match request {
        Ok(r) => r,
        Err(e) => return unavailable("InvalidAddress", e.to_string()),
    };
    let answer = tokio::time::timeout_at(deadline, async {
        let response = client.request(request).await.map_err(|e| error_chain(&e))?;
        let status = response.status().as_u16();
        let body = http_body_util::Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok::<_, String>((status, body))
    })
    .await;
    match answer {
        Ok(Ok((status, body))) => measure(status, &body, tenant_label, own_tenant),
        Ok(Err(e)) => unavailable("PrometheusUnreachable", format!("{address}: {e}")),
        Err(_) => unavailable("PrometheusUnreachable", format!("{address}: no answer within {timeout:?}")),
    }
}

/// Percent-encodes a query parameter (RFC 3986 unreserved characters stay).
fn form_urlencoded(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(o: Outcome) -> Measurement {
        match o {
            Outcome::Measured(m) => m,
            other => panic!("not measured: {other:?}"),
        }
    }

    fn reason(o: Outcome) -> (String, String) {
        match o {
            Outcome::SourceUnavailable { reason, message } => (reason, message),
            other => panic!("not unavailable: {other:?}"),
        }
    }

    #[test]
    fn a_scalar_is_the_value() {
        let body = br#"{"status":"success","data":{"resultType":"scalar","result":[1700000000.1,"42.5"]}}"#;
        assert_eq!(measured(measure(200, body, None, None)).value, Some(42.5));
    }

    #[test]
    fn a_vector_is_summed_and_broken_down_per_tenant() {
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"tenant":"a","code":"401"},"value":[1,"3"]},
            {"metric":{"tenant":"a","code":"403"},"value":[1,"1"]},
            {"metric":{"tenant":"b"},"value":[1,"4"]},
            {"metric":{},"value":[1,"2"]}]}}"#;
        let m = measured(measure(200, body, Some("tenant"), None));
        assert_eq!((m.value, m.population), (Some(10.0), 4));
        assert_eq!(m.tenants, BTreeMap::from([("a".into(), Some(4.0)), ("b".into(), Some(4.0))]));
    }

    #[test]
    fn an_empty_result_is_no_data_not_zero() {
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(measured(measure(200, body, None, None)).value, None);
    }

    #[test]
    fn errors_carry_prometheus_words() {
        let body = br#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:5: parse error: unexpected <by>"}"#;
        let (r, m) = reason(measure(400, body, None, None));
        assert_eq!(r, "PrometheusQueryError");
        assert!(m.contains("parse error: unexpected <by>"), "{m}");
        let (r, m) = reason(measure(503, b"Service Unavailable", None, None));
        assert_eq!((r.as_str(), m.as_str()), ("PrometheusHttpError", "HTTP 503: Service Unavailable"));
        let body = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert_eq!(reason(measure(200, body, None, None)).0, "UnsupportedResult");
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}}"#;
        assert_eq!(reason(measure(200, body, None, None)).0, "NonNumericValue");
        let body = br#"{"status":"success","data":{"resultType":"scalar","result":[1,"+Inf"]}}"#;
        assert_eq!(reason(measure(200, body, None, None)).0, "NonNumericValue");
    }

    fn endpoints() -> HashMap<String, Endpoint> {
        HashMap::from([
            ("main".to_string(), Endpoint { url: "http://prom:9090/".into(), namespace_label: None }),
            (
                "tenants".to_string(),
                Endpoint {
                    url: "http://tenant-prom:9090".into(),
                    namespace_label: Some("kubernetes_namespace".into()),
                },
            ),
        ])
    }

    #[test]
    fn tenants_may_only_use_tenant_safe_platform_endpoints() {
        let endpoints = endpoints();
        let target = |address: &str, label: Option<&str>| Target {
            address: address.into(),
            namespace_label: label.map(String::from),
        };
        assert_eq!(
            resolve(Some("http://x:9090"), None, true, &endpoints).unwrap(),
            target("http://x:9090", None)
        );
        assert_eq!(
            reason(resolve(Some("http://x:9090"), None, false, &endpoints).unwrap_err()).0,
            "AddressNotAllowed"
        );
        // Platform metrics use any endpoint, queries unchanged.
        assert_eq!(resolve(None, Some("main"), true, &endpoints).unwrap(), target("http://prom:9090", None));
        assert_eq!(
            resolve(None, Some("tenants"), true, &endpoints).unwrap(),
            target("http://tenant-prom:9090", None)
        );
        // Tenant metrics only the tenant-safe ones, confined on the endpoint's label.
        assert_eq!(
            resolve(None, Some("tenants"), false, &endpoints).unwrap(),
            target("http://tenant-prom:9090", Some("kubernetes_namespace"))
        );
        let (r, m) = reason(resolve(None, Some("main"), false, &endpoints).unwrap_err());
        assert_eq!(r, "EndpointNotTenantSafe");
        assert_eq!(
            m,
            "the Prometheus endpoint \"main\" is not marked tenant-safe by the platform, so metrics outside the platform namespaces may not query it (tenant-safe: tenants); no query was sent"
        );
        let (r, m) = reason(resolve(None, Some("other"), false, &endpoints).unwrap_err());
        assert_eq!(r, "EndpointNotFound");
        assert!(m.contains("known: main, tenants"), "{m}");
    }

    #[test]
    fn tenant_queries_are_confined_and_platform_queries_unchanged() {
        let platform = Target { address: "http://p".into(), namespace_label: None };
        assert_eq!(confine("sum(x)", &platform, "team-a").unwrap(), "sum(x)");
        let tenant = Target { address: "http://p".into(), namespace_label: Some("namespace".into()) };
        assert_eq!(
            confine(r#"sum(x{namespace="other"})"#, &tenant, "team-a").unwrap(),
            r#"sum(x{namespace="team-a"})"#
        );
        let (r, m) = reason(confine("sum(x", &tenant, "team-a").unwrap_err());
        assert_eq!(r, "QueryNotConfined");
        assert!(m.contains("not sent"), "{m}");
    }

    #[test]
    fn foreign_tenants_are_dropped_for_tenant_metrics() {
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"tenant":"a"},"value":[1,"3"]},
            {"metric":{"tenant":"b"},"value":[1,"4"]},
            {"metric":{},"value":[1,"2"]}]}}"#;
        let m = measured(measure(200, body, Some("tenant"), Some("a")));
        assert_eq!((m.value, m.population), (Some(5.0), 2));
        assert_eq!(m.tenants, BTreeMap::from([("a".into(), Some(3.0))]));
        let m = measured(measure(200, body, Some("tenant"), Some("c")));
        assert_eq!((m.value, m.population), (Some(2.0), 1));
        assert!(m.tenants.is_empty());
    }

    #[test]
    fn the_platform_caps_timeouts() {
        let cap = Duration::from_secs(10);
        assert_eq!(effective_timeout(None, cap), DEFAULT_TIMEOUT);
        assert_eq!(effective_timeout(Some(Duration::from_secs(2)), cap), Duration::from_secs(2));
        assert_eq!(effective_timeout(Some(Duration::from_secs(30)), cap), cap);
        assert_eq!(effective_timeout(None, Duration::from_secs(3)), Duration::from_secs(3));
    }

    #[test]
    fn credentials_from_secret_keys() {
        let data = BTreeMap::from([
            ("username".to_string(), b"admin".to_vec()),
            ("password".to_string(), b"s3cret\n".to_vec()),
            ("token".to_string(), b"abc".to_vec()),
        ]);
        assert_eq!(
            Credentials::authorization(PrometheusAuthType::Basic, "p", &data).unwrap(),
            "Basic YWRtaW46czNjcmV0"
        );
        assert_eq!(Credentials::authorization(PrometheusAuthType::Bearer, "p", &data).unwrap(), "Bearer abc");
        let err = Credentials::authorization(PrometheusAuthType::Bearer, "p", &BTreeMap::new()).unwrap_err();
        assert_eq!(err, "Secret p has no key \"token\"");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert!(tls_config(b"not pem").is_err());
    }

    #[test]
    fn queries_are_encoded() {
        assert_eq!(
            form_urlencoded(r#"sum(rate(x{code=~"401|403"}[5m]))"#),
            "sum%28rate%28x%7Bcode%3D~%22401%7C403%22%7D%5B5m%5D%29%29"
        );
    }
}
