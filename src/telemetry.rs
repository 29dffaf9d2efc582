//! Structured logging, and how errors are written out.

use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. `RUST_LOG` overrides `level`.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// An error followed by its sources (`connect failed: tls: unknown issuer`): what a condition
/// message, an action record or a log line needs to be actionable, since HTTP client errors
/// put the cause in the sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("unknown issuer")]
    struct Cause;

    #[derive(Debug, thiserror::Error)]
    #[error("tls handshake")]
    struct Tls(#[source] Cause);

    #[derive(Debug, thiserror::Error)]
    #[error("connect failed")]
    struct Connect(#[source] Tls);

    #[test]
    fn error_chain_names_every_source() {
        assert_eq!(super::error_chain(&Connect(Tls(Cause))), "connect failed: tls handshake: unknown issuer");
        assert_eq!(super::error_chain(&Cause), "unknown issuer");
    }
}
