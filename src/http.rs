//! `/healthz`, `/readyz` (kubelet probes) and `/metrics` (Prometheus). Deliberately tiny:
//! plain HTTP/1.1 on a TcpListener, one response per connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::warn;

/// Serves probes and metrics on `listener` until the process ends. `ready` flips once the
/// CRDs are served and the caches have synced.
pub async fn serve(listener: TcpListener, ready: Arc<AtomicBool>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else { continue };
        let ready = ready.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = match tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (code, content_type, body) = match path {
                "/healthz" => ("200 OK", "text/plain", "ok".to_string()),
                "/readyz" if ready.load(Ordering::Relaxed) => ("200 OK", "text/plain", "ok".to_string()),
                "/readyz" => ("503 Service Unavailable", "text/plain", "caches not synced yet".to_string()),
                "/metrics" => (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    crate::metrics::encode(),
                ),
                _ => ("404 Not Found", "text/plain", "not found".to_string()),
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
