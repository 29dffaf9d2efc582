//! Durations as Kubernetes writes them (Go `time.ParseDuration` syntax: `30s`, `5m`, `1h30m`).
//!
//! Every duration field is bounded by [`MAX_SECONDS`], in the CRD (`maxLength` and a CEL rule on
//! the schema of this type, so the API server refuses larger values) and here (the parser
//! refuses them too), so that no admitted value can overflow time arithmetic.

use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The largest duration any field admits: 8760h (365 days), in seconds.
pub const MAX_SECONDS: u64 = 8760 * 3600;
/// [`MAX_SECONDS`] as written in the CRD's rule and in error messages.
pub const MAX_TEXT: &str = "8760h";
/// The longest duration text any field admits.
pub const MAX_LENGTH: usize = 64;
/// The pattern of the CRD (Go syntax without sign; `0` alone is Go's zero).
pub const PATTERN: &str = "^([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

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

const NANOS_PER_SEC: u128 = 1_000_000_000;

impl Duration {
    /// Parses Go duration syntax (what [`PATTERN`] admits, and `0`), up to [`MAX_SECONDS`];
    /// negative durations are rejected. Exact: integer nanoseconds, never floating point.
    pub fn parse(text: &str) -> Result<Self, DurationError> {
        let err = |reason| DurationError { text: text.chars().take(MAX_LENGTH).collect(), reason };
        if text.is_empty() {
            return Err(err("empty"));
        }
        if text.len() > MAX_LENGTH {
            return Err(err("longer than 64 characters"));
        }
        if text == "0" {
            return Ok(Duration { text: text.into(), value: std::time::Duration::ZERO });
        }
        let max_nanos = u128::from(MAX_SECONDS) * NANOS_PER_SEC;
        let too_large = || err("too large: at most 8760h (365 days)");
        let mut total: u128 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let int_len = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            if int_len == 0 {
                return Err(err("expected a number"));
            }
            let int_digits = &rest[..int_len];
            rest = &rest[int_len..];
            let mut frac_digits = "";
            if let Some(r) = rest.strip_prefix('.') {
                let frac_len = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
                if frac_len == 0 {
                    return Err(err("expected digits after the decimal point"));
                }
                frac_digits = &r[..frac_len];
                rest = &r[frac_len..];
            }
            let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
            let unit: u128 = match &rest[..unit_len] {
                "ns" => 1,
                "us" | "µs" => 1_000,
                "ms" => 1_000_000,
                "s" => NANOS_PER_SEC,
                "m" => 60 * NANOS_PER_SEC,
                "h" => 3600 * NANOS_PER_SEC,
                "" => return Err(err("missing unit")),
                _ => return Err(err("unknown unit")),
            };
            rest = &rest[unit_len..];
            // At most 64 characters: the integer part fits in u128 or is too large anyway.
            let int: u128 = int_digits.parse().map_err(|_| too_large())?;
            let mut part = int.checked_mul(unit).ok_or_else(too_large)?;
            // The fraction, truncated to whole nanoseconds (as Go does).
            let (mut num, mut den) = (0u128, 1u128);
            // 20 digits: below a nanosecond of an hour, and num × unit stays far inside u128.
            for d in frac_digits.bytes().take(20) {
                num = num * 10 + u128::from(d - b'0');
                den *= 10;
            }
            part = part.checked_add(num * unit / den).ok_or_else(too_large)?;
            total = total.checked_add(part).ok_or_else(too_large)?;
            if total > max_nanos {
                return Err(too_large());
            }
        }
        let value = std::time::Duration::new((total / NANOS_PER_SEC) as u64, (total % NANOS_PER_SEC) as u32);
        Ok(Duration { text: text.to_string(), value })
    }

    /// A duration from whole seconds, written the way Go prints it; capped at [`MAX_SECONDS`].
    pub fn from_secs(secs: u64) -> Self {
        let secs = secs.min(MAX_SECONDS);
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
            "maxLength": MAX_LENGTH,
            "pattern": PATTERN,
            "description": "A duration in Go syntax, e.g. 30s, 5m, 1h30m; at most 8760h.",
            "x-kubernetes-validations": [{
                "rule": format!("duration(self) <= duration('{MAX_TEXT}')"),
                "message": format!("must be at most {MAX_TEXT} (365 days)"),
            }]
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
        assert_eq!(Duration::parse("1.s").unwrap_err().reason, "expected digits after the decimal point");
        assert_eq!(Duration::parse(".5s").unwrap_err().reason, "expected a number");
        assert_eq!(Duration::parse("+5s").unwrap_err().reason, "expected a number");
    }

    #[test]
    fn bounded_by_max_seconds_with_a_readable_message() {
        assert_eq!(Duration::parse("8760h").unwrap().get().as_secs(), MAX_SECONDS);
        assert_eq!(Duration::parse("525600m").unwrap().get().as_secs(), MAX_SECONDS);
        for text in [
            "8760h1ns",
            "1000000000000s",
            "18446744073709551615s",
            "18446744073709551616h",
            "340282366920938463463374607431768211456h",
            "9999999999999999999999999999999999999999999ns",
            "5124095576030431h",
            "8000h8000h",
        ] {
            let e = Duration::parse(text).unwrap_err();
            assert_eq!(e.reason, "too large: at most 8760h (365 days)", "{text}");
            assert!(e.to_string().contains("at most 8760h"), "{e}");
        }
        assert_eq!(Duration::parse(&"1".repeat(65)).unwrap_err().reason, "longer than 64 characters");
        assert_eq!(Duration::from_secs(u64::MAX).get().as_secs(), MAX_SECONDS);
    }

    #[test]
    fn fractions_are_exact() {
        assert_eq!(Duration::parse("0.1s").unwrap().get().as_nanos(), 100_000_000);
        assert_eq!(Duration::parse("1.000000001s").unwrap().get().as_nanos(), 1_000_000_001);
        assert_eq!(Duration::parse("1.5ns").unwrap().get().as_nanos(), 1);
        assert_eq!(Duration::parse("1.5µs").unwrap().get().as_nanos(), 1500);
        assert_eq!(Duration::parse("0.00000000000000000000000000000000001h").unwrap().get().as_nanos(), 0);
        assert_eq!(
            Duration::parse("1.99999999999999999999999999999999999h").unwrap().get().as_nanos(),
            2 * 3_600_000_000_000 - 1
        );
    }

    /// Exactly what the CRD pattern admits (plus `0`) within the bound parses.
    fn matches_pattern(s: &str) -> bool {
        let mut rest = s;
        if rest.is_empty() {
            return false;
        }
        while !rest.is_empty() {
            let n = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            if n == 0 {
                return false;
            }
            rest = &rest[n..];
            if let Some(r) = rest.strip_prefix('.') {
                let n = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
                if n == 0 {
                    return false;
                }
                rest = &r[n..];
            }
            let Some(unit) = ["ns", "us", "µs", "ms", "s", "m", "h"]
                .into_iter()
                .find(|u| rest.starts_with(u) && !rest[u.len()..].starts_with(|c: char| c.is_alphabetic()))
            else {
                return false;
            };
            rest = &rest[unit.len()..];
        }
        true
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        #[test]
        fn never_panics_and_admits_only_the_pattern(
            text in "[0-9.µnumsh+-]{0,24}|[0-9]{1,40}(ns|s|m|h)|[0-9]{1,3}\\.[0-9]{1,60}(ns|µs|ms|s|m|h)"
        ) {
            match Duration::parse(&text) {
                Ok(d) => {
                    proptest::prop_assert!(text == "0" || matches_pattern(&text), "{text}");
                    proptest::prop_assert!(d.get().as_secs() <= MAX_SECONDS);
                }
                Err(e) => {
                    proptest::prop_assert!(!e.to_string().is_empty());
                    if matches_pattern(&text) && text.len() <= MAX_LENGTH {
                        proptest::prop_assert_eq!(e.reason, "too large: at most 8760h (365 days)");
                    }
                }
            }
        }

        #[test]
        fn whole_seconds_round_trip(secs in 0..=MAX_SECONDS) {
            let d = Duration::from_secs(secs);
            proptest::prop_assert_eq!(Duration::parse(&d.to_string()).unwrap().get().as_secs(), secs);
        }
    }

    #[test]
    fn formats_whole_seconds_like_go() {
        assert_eq!(Duration::from_secs(300).to_string(), "5m");
        assert_eq!(Duration::from_secs(5400).to_string(), "1h30m");
        assert_eq!(Duration::from_secs(0).to_string(), "0s");
    }
}
