//! `/healthz`, `/readyz` (kubelet probes) and `/metrics` (Prometheus). Deliberately tiny:
//! plain HTTP/1.1 on a TcpListener, one response per connection.
//!
//! `/metrics` names every metric and policy of every tenant: by default it answers only a
//! bearer token that the API server authenticates (TokenReview) and authorises for `get` on
//! the non-resource URL `/metrics` (SubjectAccessReview), as controller-runtime's metrics
//! filter and kube-rbac-proxy do. The probes stay open: the kubelet calls them without a token.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::warn;

/// Who may read `/metrics`.
#[derive(Clone)]
pub enum MetricsAccess {
    /// Anyone who reaches the port (restrict it with a NetworkPolicy).
    Open,
    /// Bearer tokens the API server authenticates and authorises (see the module docs).
    Kubernetes(Arc<Reviewer>),
}

/// Asks the API server who a token is and whether it may read `/metrics`; remembers each
/// answer for a minute, so that a scrape every few seconds costs two API calls a minute.
pub struct Reviewer {
    client: kube::Client,
    decisions: Mutex<HashMap<[u8; 32], (Instant, Decision)>>,
}

/// The answer for one token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No token, or one the API server does not authenticate: 401.
    Unauthenticated,
    /// Authenticated, but not allowed `get` on `/metrics`: 403.
    Forbidden,
    Allowed,
}

/// How long an answer is reused.
const DECISION_TTL: Duration = Duration::from_secs(60);
/// Most answers remembered (tokens are few: one per Prometheus replica).
const MAX_DECISIONS: usize = 256;
/// Most connections served at once.
const MAX_CONNECTIONS: usize = 64;
/// Largest request head read (a service account token is about 1 KiB).
const MAX_REQUEST: usize = 16 << 10;

impl Reviewer {
    pub fn new(client: kube::Client) -> Self {
        Reviewer { client, decisions: Mutex::new(HashMap::new()) }
    }

    /// Whether the bearer `token` may read `/metrics`.
    pub async fn decide(&self, token: Option<&str>) -> Decision {
        let Some(token) = token.filter(|t| !t.is_empty()) else { return Decision::Unauthenticated };
        let digest: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .expect("SHA-256 has 32 bytes");
        let now = Instant::now();
        if let Some((at, decision)) = self.lock().get(&digest)
            && now.duration_since(*at) < DECISION_TTL
        {
            return *decision;
        }
        let decision = match self.review(token).await {
            Ok(decision) => decision,
            Err(e) => {
                // Not remembered: the next scrape asks again.
                warn!(error = %e, "reviewing a /metrics token failed");
                return Decision::Unauthenticated;
            }
        };
        let mut decisions = self.lock();
        if decisions.len() >= MAX_DECISIONS {
            decisions.retain(|_, (at, _)| now.duration_since(*at) < DECISION_TTL);
            if decisions.len() >= MAX_DECISIONS {
                decisions.clear();
            }
        }
        decisions.insert(digest, (now, decision));
        decision
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (Instant, Decision)>> {
        self.decisions.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn review(&self, token: &str) -> Result<Decision, kube::Error> {
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_string()), ..Default::default() },
            ..Default::default()
        };
        let reviewed =
            Api::<TokenReview>::all(self.client.clone()).create(&PostParams::default(), &review).await?;
        let status = reviewed.status.unwrap_or_default();
        let Some(user) = status.user.filter(|_| status.authenticated == Some(true)) else {
            return Ok(Decision::Unauthenticated);
        };
        let access = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                groups: user.groups,
                uid: user.uid,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some("/metrics".into()),
                    verb: Some("get".into()),
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviewed = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &access)
            .await?;
        Ok(if reviewed.status.is_some_and(|s| s.allowed) { Decision::Allowed } else { Decision::Forbidden })
    }
}

/// The bearer token of a request head, if any.
fn bearer_token(head: &str) -> Option<&str> {
    head.lines().skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if !name.trim().eq_ignore_ascii_case("authorization") {
            return None;
        }
        let value = value.trim();
        let (scheme, token) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    })
}

/// Reads a request head (up to the blank line), within 5 s and [`MAX_REQUEST`] bytes.
async fn read_head(conn: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        let mut chunk = [0u8; 2048];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
            let n = conn.read(&mut chunk).await.ok()?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Some(())
    };
    tokio::time::timeout(Duration::from_secs(5), read).await.ok()??;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// Serves probes and metrics on `listener` until the process ends. `ready` flips once the
/// CRDs are served and the caches have synced.
pub async fn serve(listener: TcpListener, ready: Arc<AtomicBool>, access: MetricsAccess) {
    // Connections served at once: slow or idle clients wait in the kernel's backlog instead
    // of holding file descriptors (and a client that reaches the port can hold one for at
    // most the 5 s a request head may take).
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let mut conn = match listener.accept().await {
            Ok((conn, _)) => conn,
            Err(e) => {
                // Out of file descriptors, say: back off instead of spinning.
                warn!(error = %e, "accepting a probe or metrics connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ready = ready.clone();
        let access = access.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let Some(head) = read_head(&mut conn).await else { return };
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            let text = "text/plain";
            let (code, content_type, body) = match path {
                "/healthz" => ("200 OK", text, "ok".to_string()),
                "/readyz" if ready.load(Ordering::Relaxed) => ("200 OK", text, "ok".to_string()),
                "/readyz" => ("503 Service Unavailable", text, "caches not synced yet".to_string()),
                "/metrics" => {
                    let decision = match &access {
                        MetricsAccess::Open => Decision::Allowed,
                        MetricsAccess::Kubernetes(reviewer) => reviewer.decide(bearer_token(&head)).await,
                    };
                    match decision {
                        Decision::Allowed => (
                            "200 OK",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            crate::metrics::encode(),
                        ),
                        Decision::Unauthenticated => (
                            "401 Unauthorized",
                            text,
                            "a bearer token the API server authenticates is required".to_string(),
                        ),
                        Decision::Forbidden => (
                            "403 Forbidden",
                            text,
                            "this identity may not get the non-resource URL /metrics".to_string(),
                        ),
                    }
                }
                _ => ("404 Not Found", text, "not found".to_string()),
            };
            let response = format!(
                "HTTP/1.1 {code}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            if let Err(e) = conn.write_all(response.as_bytes()).await {
                warn!(error = %e, "probe response failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header_only() {
        let head = "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer abc.def\r\n\r\n";
        assert_eq!(bearer_token(head), Some("abc.def"));
        assert_eq!(bearer_token("GET /metrics HTTP/1.1\r\nauthorization:  bearer  t1 \r\n\r\n"), Some("t1"));
        assert_eq!(bearer_token("GET /metrics HTTP/1.1\r\nAuthorization: Basic dTpw\r\n\r\n"), None);
        assert_eq!(bearer_token("GET /metrics HTTP/1.1\r\nX-Authorization: Bearer t\r\n\r\n"), None);
        // The request line is not a header.
        assert_eq!(bearer_token("Authorization: Bearer t /metrics HTTP/1.1\r\n\r\n"), None);
    }
}
