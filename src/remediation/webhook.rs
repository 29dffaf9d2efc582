//! Webhook delivery: JSON payload (generic or Alertmanager's), HMAC-SHA256 signature, per-attempt
//! timeout, bounded retries with exponential backoff.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::api::metric_policy::WebhookFormat;
use crate::telemetry::error_chain;

/// Header carrying `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "x-secmetrics-signature";
/// Header carrying the delivery's stable identity: the same transition always has the same
/// delivery id, so a receiver can discard a repeat.
pub const DELIVERY_HEADER: &str = "x-secmetrics-delivery";

/// What a webhook reports.
#[derive(Clone, Debug)]
pub struct Transition<'a> {
    /// `namespace/name` of the policy.
    pub policy: &'a str,
    /// Rule name.
    pub rule: &'a str,
    /// Namespace of the metric.
    pub namespace: &'a str,
    /// Metric name.
    pub metric: &'a str,
    /// The metric's state.
    pub state: &'a str,
    /// The metric's value.
    pub value: Option<f64>,
    /// `firing` (the rule triggered) or `resolved` (the metric recovered).
    pub status: &'a str,
    /// When the episode started (RFC 3339).
    pub since: String,
    /// DryRun or Enforce.
    pub mode: &'a str,
    /// Stable identity of this delivery.
    pub delivery: &'a str,
}

/// The JSON body for `format`.
pub fn payload(t: &Transition<'_>, format: WebhookFormat) -> Value {
    match format {
        WebhookFormat::Generic => json!({
            "kind": "SecMetricsTransition",
            "delivery": t.delivery,
            "status": t.status,
            "policy": t.policy,
            "rule": t.rule,
            "namespace": t.namespace,
            "metric": t.metric,
            "state": t.state,
            "value": t.value,
            "since": t.since,
            "mode": t.mode,
        }),
        WebhookFormat::Alertmanager => {
            let labels = json!({
                "alertname": "SecurityMetricBreached",
                "namespace": t.namespace,
                "metric": t.metric,
                "policy": t.policy,
                "rule": t.rule,
                "state": t.state,
            });
            json!({
                "version": "4",
                "groupKey": format!("{}/{}", t.policy, t.rule),
                "truncatedAlerts": 0,
                "status": t.status,
                "receiver": "secmetrics",
                "groupLabels": {"policy": t.policy, "rule": t.rule},
                "commonLabels": labels,
                "commonAnnotations": {},
                "externalURL": "",
                "alerts": [{
                    "status": t.status,
                    "labels": labels,
                    "annotations": {
                        "summary": format!("SecurityMetric {}/{} is {}", t.namespace, t.metric, t.state),
                        "value": t.value.map(|v| v.to_string()).unwrap_or_default(),
                        "mode": t.mode,
                    },
                    "startsAt": t.since,
                    "endsAt": if t.status == "resolved" { jiff_now() } else { "0001-01-01T00:00:00Z".to_string() },
                    "generatorURL": "",
                    "fingerprint": &t.delivery[..16.min(t.delivery.len())],
                }],
            })
        }
    }
}

fn jiff_now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// `sha256=<hex>` of the HMAC-SHA256 of `body` under `key`.
pub fn sign(key: &[u8], body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let tag = ring::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// Whether `signature` (as sent in [`SIGNATURE_HEADER`]) is valid for `body` under `key`.
pub fn verify(key: &[u8], body: &[u8], signature: &str) -> bool {
    let Some(hex) = signature.strip_prefix("sha256=") else { return false };
    let Some(tag) = decode_hex(hex) else { return false };
    ring::hmac::verify(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), body, &tag).is_ok()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// How a delivery is attempted.
#[derive(Clone, Debug)]
pub struct Delivery<'a> {
    /// Receiver URL.
    pub url: &'a str,
    /// The JSON body.
    pub body: Vec<u8>,
    /// HMAC key, when the receiver has one.
    pub key: Option<Vec<u8>>,
    /// Stable delivery id.
    pub delivery: &'a str,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Backoff before the first retry (doubles each time).
    pub backoff: Duration,
}

/// Why a delivery failed, after every retry.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("invalid webhook URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("receiver answered HTTP {status} after {attempts} attempts")]
    Status { status: u16, attempts: u32 },
    #[error("receiver unreachable after {attempts} attempts: {reason}")]
    Unreachable { reason: String, attempts: u32 },
    #[error("TLS setup: {0}")]
    Tls(String),
}

/// POSTs the delivery, retrying on connection errors, timeouts and 5xx/429 answers. Returns
/// the number of attempts made.
pub async fn deliver(d: &Delivery<'_>) -> Result<u32, DeliveryError> {
    let uri: http::Uri = d.url.parse().map_err(|e: http::uri::InvalidUri| DeliveryError::InvalidUrl {
        url: d.url.into(),
        reason: e.to_string(),
    })?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(DeliveryError::InvalidUrl {
            url: d.url.into(),
            reason: "scheme must be http or https".into(),
        });
    }
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| DeliveryError::Tls(e.to_string()))?
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let signature = d.key.as_ref().map(|k| sign(k, &d.body));
    let mut backoff = d.backoff;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut req = http::Request::post(uri.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, concat!("secmetrics/", env!("CARGO_PKG_VERSION")))
            .header(DELIVERY_HEADER, d.delivery);
        if let Some(sig) = &signature {
            req = req.header(SIGNATURE_HEADER, sig.as_str());
        }
        let req = req
            .body(Full::new(Bytes::from(d.body.clone())))
            .map_err(|e| DeliveryError::InvalidUrl { url: d.url.into(), reason: e.to_string() })?;
        let result = tokio::time::timeout(d.timeout, async {
            let resp = client.request(req).await?;
            let status = resp.status();
            // Drain the (bounded) body so the connection can be reused.
            let _ = http_body_util::Limited::new(resp.into_body(), 64 * 1024).collect().await;
            Ok::<_, hyper_util::client::legacy::Error>(status)
        })
        .await;
        let retryable = match result {
            Ok(Ok(status)) if status.is_success() => return Ok(attempt),
            Ok(Ok(status)) => {
                let retry = status.is_server_error() || status.as_u16() == 429;
                if !retry || attempt > d.max_retries {
                    return Err(DeliveryError::Status { status: status.as_u16(), attempts: attempt });
                }
                true
            }
            Ok(Err(e)) => {
                if attempt > d.max_retries {
                    return Err(DeliveryError::Unreachable { reason: error_chain(&e), attempts: attempt });
                }
                true
            }
            Err(_) => {
                if attempt > d.max_retries {
                    return Err(DeliveryError::Unreachable {
                        reason: format!("timed out after {:?}", d.timeout),
                        attempts: attempt,
                    });
                }
                true
            }
        };
        debug_assert!(retryable);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_rfc4231_and_verifies() {
        // RFC 4231 test case 2.
        let sig = sign(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(sig, "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        assert!(verify(b"Jefe", b"what do ya want for nothing?", &sig));
        assert!(!verify(b"Jefe", b"what do ya want for nothing!", &sig));
        assert!(!verify(b"other", b"what do ya want for nothing?", &sig));
        assert!(!verify(b"Jefe", b"x", "sha256=zz"));
    }

    #[test]
    fn alertmanager_payload_has_the_webhook_shape() {
        let t = Transition {
            policy: "platform/baseline",
            rule: "notify",
            namespace: "shop",
            metric: "owners",
            state: "Breached",
            value: Some(40.0),
            status: "firing",
            since: "2026-11-28T00:00:00Z".into(),
            mode: "DryRun",
            delivery: "0123456789abcdef0123",
        };
        let p = payload(&t, WebhookFormat::Alertmanager);
        assert_eq!(p["version"], "4");
        assert_eq!(p["status"], "firing");
        assert_eq!(p["alerts"][0]["labels"]["metric"], "owners");
        assert_eq!(p["alerts"][0]["startsAt"], "2026-11-28T00:00:00Z");
        let g = payload(&t, WebhookFormat::Generic);
        assert_eq!((g["delivery"].as_str(), g["value"].as_f64()), (Some("0123456789abcdef0123"), Some(40.0)));
    }
}
