//! Every report format on generated input (issue 12): the report fixtures with their
//! tenant-written text (names, descriptions, owners, controls, offenders) and their numbers
//! (values, trend aggregates, objectives) replaced by generated ones — markup, quotes, commas,
//! line breaks, control characters, NaN, infinities, extremes. Every format renders without a
//! panic and in bounded time; JSON and OSCAL parse; the HTML escapes what it was given.
//!
//! `cargo test --test report_fuzz`; `SECMETRICS_FUZZ_CASES=N` for a longer run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;

use secmetrics::api::{MetricPolicy, SecurityMetric};
use secmetrics::report::{self, Format, Options};

fn fixtures() -> (Value, Value) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/report");
    let metrics: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(dir.join("metrics.yaml")).unwrap()).unwrap();
    let policies: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("policies.json")).unwrap()).unwrap();
    (metrics, policies)
}

/// Text a tenant could write: markup, quotes, separators, line breaks, unicode, controls.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,40}",
        Just("<script>alert(1)</script>".to_string()),
        Just("\"quoted\", comma | pipe\nnew line\r\n]]> --> `code` *em* [l](x)".to_string()),
        Just("\u{202e}rtl \u{0}nul \u{1b}[31m esc".to_string()),
        "[<>&\"',|\n#*_`\\[\\]]{1,30}",
    ]
}

/// Numbers a status could hold after any arithmetic.
fn number() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(f64::MAX),
        Just(f64::MIN_POSITIVE),
        Just(-0.0),
        -1e6f64..1e6,
    ]
}

/// Replaces, in place and by visiting order, every string under the keys a tenant writes and
/// every number under status, with generated ones (cycled).
fn mutate(v: &mut Value, texts: &[String], numbers: &[f64], at: &mut usize, in_status: bool) {
    const TEXT_KEYS: [&str; 10] = [
        "displayName",
        "description",
        "team",
        "contact",
        "framework",
        "control",
        "name",
        "message",
        "target",
        "rule",
    ];
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                let status = in_status || k == "status" || k == "objective";
                match child {
                    Value::String(s)
                        if TEXT_KEYS.contains(&k.as_str()) && k != "name" || (k == "name" && in_status) =>
                    {
                        *s = texts[*at % texts.len()].clone();
                        *at += 1;
                    }
                    Value::Number(_) if status => {
                        let n = numbers[*at % numbers.len()];
                        *at += 1;
                        // JSON has no NaN or infinities: those go through the typed status below.
                        if let Some(n) = serde_json::Number::from_f64(n) {
                            *child = Value::Number(n);
                        }
                    }
                    _ => mutate(child, texts, numbers, at, status),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                mutate(item, texts, numbers, at, in_status);
            }
        }
        _ => {}
    }
}

fn items<T: serde::de::DeserializeOwned>(list: &Value) -> Vec<T> {
    list["items"].as_array().unwrap().iter().filter_map(|i| serde_json::from_value(i.clone()).ok()).collect()
}

fn cases() -> u32 {
    std::env::var("SECMETRICS_FUZZ_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(200)
}

#[test]
fn every_format_renders_generated_input() {
    let (metrics, policies) = fixtures();
    let mut runner =
        TestRunner::new(Config { cases: cases(), failure_persistence: None, ..Config::default() });
    let input = (prop::collection::vec(text(), 1..12), prop::collection::vec(number(), 1..12), any::<bool>());
    runner
        .run(&input, |(texts, numbers, non_finite)| {
            let (mut m, mut p) = (metrics.clone(), policies.clone());
            let mut at = 0;
            mutate(&mut m, &texts, &numbers, &mut at, false);
            mutate(&mut p, &texts, &numbers, &mut at, false);
            let mut metrics: Vec<SecurityMetric> = items(&m);
            let policies: Vec<MetricPolicy> = items(&p);
            prop_assert!(!metrics.is_empty(), "the generated fixtures still deserialize");
            if non_finite {
                // What JSON cannot carry, the typed status can (an overflowing aggregate).
                for (i, metric) in metrics.iter_mut().enumerate() {
                    if let Some(s) = metric.status.as_mut() {
                        s.value = Some(numbers[i % numbers.len()]);
                    }
                }
            }
            let report = report::build(&metrics, &policies, &Options::default());
            for format in [Format::Markdown, Format::Html, Format::Json, Format::Csv, Format::Oscal] {
                let started = Instant::now();
                let out = report::render(&report, format);
                prop_assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "{format:?} took {:?}",
                    started.elapsed()
                );
                match format {
                    Format::Json | Format::Oscal => {
                        serde_json::from_str::<Value>(&out)
                            .map_err(|e| TestCaseError::fail(format!("{format:?}: {e}")))?;
                    }
                    Format::Html => {
                        prop_assert!(!out.contains("<script>alert"), "HTML escapes generated text");
                    }
                    Format::Markdown | Format::Csv => prop_assert!(!out.is_empty()),
                }
            }
            Ok(())
        })
        .unwrap();
}
