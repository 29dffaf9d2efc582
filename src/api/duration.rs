//! Durations as Kubernetes writes them (Go `time.ParseDuration` syntax: `30s`, `5m`, `1h30m`).

use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written in Go syntax. The text is kept as written so that status and
/// `kubectl get -o yaml` show what the user wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Duration {
    text: String,
    value: std::time::Duration,
}

/// A duration that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {text:?}: {reason} (use Go syntax such as 30s, 5m, 1h30m)")]
pub struct DurationError {
    text: String,
    reason: &'static str,
}

impl Duration {
    /// Parses Go duration syntax; negative durations are rejected.
    pub fn parse(text: &str) -> Result<Self, DurationError> {
        let err = |reason| DurationError { text: text.to_string(), reason };
        if text.is_empty() {
            return Err(err("empty"));
        }
        if text == "0" {
            return Ok(Duration { text: text.into(), value: std::time::Duration::ZERO });
        }
        let mut total = 0f64;
        let mut rest = text;
        while !rest.is_empty() {
            let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
            if num_len == 0 {
                return Err(err("expected a number"));
            }
            let number: f64 = rest[..num_len].parse().map_err(|_| err("bad number"))?;
            rest = &rest[num_len..];
            let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
            let seconds = match &rest[..unit_len] {
                "ns" => 1e-9,
                "us" | "µs" => 1e-6,
                "ms" => 1e-3,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                "" => return Err(err("missing unit")),
                _ => return Err(err("unknown unit")),
            };
            rest = &rest[unit_len..];
            total += number * seconds;
        }
        if !total.is_finite() || total > 1e12 {
            return Err(err("too large"));
        }
        Ok(Duration { text: text.to_string(), value: std::time::Duration::from_secs_f64(total) })
    }

    /// A duration from whole seconds, written the way Go prints it.
    pub fn from_secs(secs: u64) -> Self {
        let mut text = String::new();
        let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
        if h > 0 {
            text.push_str(&format!("{h}h"));
        }
        if m > 0 {
            text.push_str(&format!("{m}m"));
        }
        if s > 0 || text.is_empty() {
            text.push_str(&format!("{s}s"));
        }
        Duration { text, value: std::time::Duration::from_secs(secs) }
    }

    /// The parsed value.
    pub fn get(&self) -> std::time::Duration {
        self.value
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Duration::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$",
            "description": "A duration in Go syntax, e.g. 30s, 5m, 1h30m."
        })
    }

    fn inline_schema() -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_syntax() {
        assert_eq!(Duration::parse("5m").unwrap().get().as_secs(), 300);
        assert_eq!(Duration::parse("1h30m").unwrap().get().as_secs(), 5400);
        assert_eq!(Duration::parse("1.5s").unwrap().get().as_millis(), 1500);
        assert_eq!(Duration::parse("250ms").unwrap().get().as_millis(), 250);
        assert_eq!(Duration::parse("0").unwrap().get().as_secs(), 0);
    }

    #[test]
    fn rejects_bad_input_with_reason() {
        assert_eq!(Duration::parse("5").unwrap_err().reason, "missing unit");
        assert_eq!(Duration::parse("5d").unwrap_err().reason, "unknown unit");
        assert_eq!(Duration::parse("").unwrap_err().reason, "empty");
        assert_eq!(Duration::parse("-5s").unwrap_err().reason, "expected a number");
        assert!(Duration::parse("5x").unwrap_err().to_string().contains("\"5x\""));
    }

    #[test]
    fn formats_whole_seconds_like_go() {
        assert_eq!(Duration::from_secs(300).to_string(), "5m");
        assert_eq!(Duration::from_secs(5400).to_string(), "1h30m");
        assert_eq!(Duration::from_secs(0).to_string(), "0s");
    }
}
