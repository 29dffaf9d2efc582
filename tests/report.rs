//! `secmetrics report` on the fixtures of tests/fixtures/report (SecurityMetrics with months of
//! trend and breaches, a DryRun and an Enforce MetricPolicy with recorded actions), as an
//! auditor or a pipeline runs it: every format, filters, determinism, the OSCAL document
//! against NIST's schema and compliance-trestle, and the HTML page in headless Chromium.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures() -> String {
    root().join("tests/fixtures/report").display().to_string()
}

/// Runs `secmetrics report ARGS`; returns (exit code, stdout, stderr).
fn report(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_secmetrics")).arg("report").args(args).output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The report of the fixtures in `format`, with extra arguments; panics on failure.
fn fixture_report(format: &str, extra: &[&str]) -> String {
    let f = fixtures();
    let mut args = vec!["-f", &f, "--format", format];
    args.extend_from_slice(extra);
    let (code, out, err) = report(&args);
    assert_eq!(code, 0, "report --format {format} {extra:?} failed: {err}");
    out
}

fn json_report(extra: &[&str]) -> Value {
    serde_json::from_str(&fixture_report("json", extra)).unwrap()
}

fn names(v: &Value, list: &str) -> Vec<String> {
    v[list]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| format!("{}/{}", m["namespace"].as_str().unwrap(), m["name"].as_str().unwrap()))
        .collect()
}

/// RFC 4180 parsing, enough for the test: quoted fields with doubled quotes and line breaks.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {
                assert_eq!(chars.next(), Some('\n'), "CR must be followed by LF");
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, '\n') => panic!("bare LF outside quotes: RFC 4180 wants CRLF"),
            (false, c) => field.push(c),
        }
    }
    assert!(field.is_empty() && row.is_empty(), "CSV must end with CRLF");
    rows
}

#[test]
fn markdown_has_every_section_and_escapes_input() {
    let md = fixture_report("markdown", &[]);
    for heading in [
        "# Security metrics report",
        "## Summary",
        "## Checklist",
        "## Controls",
        "### CSA-AICM AIS-03 — not satisfied",
        "### ISO-27001 9.1 — satisfied",
        "## Metrics",
        "## Trends",
        "## Breaches",
        "## Remediation",
        "## Policies",
    ] {
        assert!(md.lines().any(|l| l == heading), "missing {heading:?}");
    }
    assert!(md.contains("Generated at 2026-11-28T09:00:00Z"), "time from the newest lastEvaluated");
    assert!(md.contains("| 2026-06 | 8000 | 82.4 | 70 | 90 | 88 | 93% | 2d 0h | 0s |"), "monthly trend row");
    assert!(
        md.contains("| **Planned** |") && md.contains("| **Reverted** |") && md.contains("| **Applied** |")
    );
    assert!(md.contains("monthly trend present for 3 of 4 metrics"), "honest checklist");
    assert!(md.contains("| `secmetrics-system/pods-run-as-non-root` | 2 | 0 | 15h 15m |"), "MTTR per metric");
    assert!(!md.contains("<script>"), "user input must be escaped");
    assert!(md.contains("&lt;script>alert") && md.contains("\\| pipe"), "escaped, readable");
}

#[test]
fn csv_has_one_row_per_metric() {
    let csv = fixture_report("csv", &[]);
    let rows = parse_csv(&csv);
    assert_eq!(rows.len(), 1 + 4, "header and one row per metric");
    assert!(rows.iter().all(|r| r.len() == rows[0].len()), "every row has every column");
    let col =
        |name: &str| rows[0].iter().position(|c| c == name).unwrap_or_else(|| panic!("no column {name}"));
    let row = rows.iter().find(|r| r[col("name")] == "pods-run-as-non-root").unwrap();
    assert_eq!(row[col("namespace")], "secmetrics-system");
    assert_eq!(row[col("state")], "Compliant");
    assert_eq!(row[col("responsibility")], "SharedOspAp");
    assert_eq!(row[col("complianceControls")], "CSA-AICM:AIS-03;ISO-27001:9.1;NIST-800-53:AC-6");
    assert_eq!(row[col("currentMonthMean")], "97.1");
    assert_eq!(row[col("currentMonthCompliantRatio")], "1");
    assert_eq!(row[col("breaches")], "2");
    assert_eq!(row[col("mttrSeconds")], "54900");
    assert_eq!(row[col("lastEvaluated")], "2026-11-28T09:00:00Z");
    let unknown = rows.iter().find(|r| r[col("name")] == "critical-vulnerabilities").unwrap();
    assert_eq!((unknown[col("value")].as_str(), unknown[col("state")].as_str()), ("", "Unknown"));
}

#[test]
fn json_has_the_documented_schema() {
    let v = json_report(&[]);
    assert_eq!(v["schemaVersion"], "secmetrics.io/report/v1");
    assert_eq!(v["generatedAt"], "2026-11-28T09:00:00Z");
    assert_eq!(v["summary"]["metrics"], 4);
    assert_eq!(v["summary"]["metricsByState"]["breached"], 1);
    assert_eq!(v["summary"]["currentMonth"], "2026-11");
    assert_eq!(v["summary"]["actionsByOutcome"]["Planned"], 2);
    assert_eq!(v["checklist"].as_array().unwrap().len(), 8);
    assert_eq!(v["checklist"][6]["status"], "Met", "remediation visible: actions recorded");
    assert_eq!(
        names(&v, "metrics"),
        [
            "secmetrics-system/namespaces-default-deny",
            "secmetrics-system/pods-run-as-non-root",
            "team-a/critical-vulnerabilities",
            "team-a/tenant-cpu-quota-usage"
        ],
        "sorted by namespace and name"
    );
    let pods = &v["metrics"][1];
    for key in [
        "displayName",
        "description",
        "type",
        "category",
        "owner",
        "alignment",
        "objective",
        "value",
        "state",
        "lastEvaluated",
        "monthly",
        "daily",
        "breaches",
        "mttrSeconds",
        "policies",
    ] {
        assert!(!pods[key].is_null(), "metric field {key}");
    }
    assert_eq!(pods["monthly"].as_array().unwrap().len(), 6);
    assert_eq!(pods["breaches"][0]["since"], "2026-07-03T08:00:00Z", "oldest first");
    assert_eq!(pods["mttrSeconds"], 54900.0);
    assert_eq!(v["metrics"][0]["breaches"][1]["open"], true);
    let controls: Vec<String> = v["controls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("{} {}", c["framework"].as_str().unwrap(), c["control"].as_str().unwrap()))
        .collect();
    assert_eq!(controls[0], "BSI-C5 COM-04", "a policy obligation is a control too");
    assert!(controls.contains(&"EU-AI-ACT Art. 15(4)".to_string()));
    let times: Vec<&str> =
        v["actions"].as_array().unwrap().iter().map(|a| a["time"].as_str().unwrap()).collect();
    assert_eq!(times.len(), 5);
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "actions oldest first: {times:?}");
    assert_eq!(v["actions"][2]["outcome"], "Planned");
    assert_eq!(v["actions"][2]["mode"], "DryRun");
}

#[test]
fn html_escapes_input_and_has_one_chart_per_trended_metric() {
    let html = fixture_report("html", &[]);
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert_eq!(html.matches("<svg").count(), 3, "three metrics have a monthly trend");
    assert!(!html.contains("<script"), "no script at all, and user input escaped");
    assert!(html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &quot;quoted&quot;"));
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"), "no external asset");
    for id in ["summary", "checklist", "controls", "metrics", "trends", "breaches", "remediation", "policies"]
    {
        assert!(html.contains(&format!("<section id=\"{id}\">")), "section {id}");
    }
    assert!(html.contains("@media print"));
}

#[test]
fn every_format_is_byte_identical_on_two_runs_and_at_sets_the_time() {
    for format in ["markdown", "html", "json", "csv", "oscal"] {
        assert_eq!(fixture_report(format, &[]), fixture_report(format, &[]), "{format} differs between runs");
    }
    let v = json_report(&["--at", "2026-12-01T00:00:00Z"]);
    assert_eq!(v["generatedAt"], "2026-12-01T00:00:00Z");
    assert_eq!(v["summary"]["currentMonth"], "2026-12");
    assert_eq!(
        v["metrics"][0]["breaches"][1]["durationSeconds"],
        10 * 86400 + 14 * 3600,
        "open breach runs to --at"
    );
}

#[test]
fn filters_narrow_the_report() {
    let v = json_report(&["--framework", "csa-ccm"]);
    assert_eq!(v["filters"]["framework"], "csa-ccm");
    assert_eq!(v["controls"].as_array().unwrap().len(), 1);
    assert_eq!(v["controls"][0]["control"], "IVS-03");
    assert_eq!(names(&v, "metrics"), ["secmetrics-system/namespaces-default-deny"]);
    assert_eq!(names(&v, "policies"), ["secmetrics-system/baseline"]);
    assert_eq!(v["actions"].as_array().unwrap().len(), 2, "only the actions on the kept metric");

    let v = json_report(&["--namespace", "team-a"]);
    assert_eq!(names(&v, "metrics"), ["team-a/critical-vulnerabilities", "team-a/tenant-cpu-quota-usage"]);
    assert_eq!(names(&v, "policies"), ["team-a/quota-guard"]);
    assert!(v["controls"].as_array().unwrap().iter().all(|c| c["framework"] != "CSA-AICM"));

    let v = json_report(&["--since", "2026-10"]);
    let pods = &v["metrics"][1];
    assert_eq!(pods["name"], "pods-run-as-non-root");
    let months: Vec<&str> =
        pods["monthly"].as_array().unwrap().iter().map(|b| b["period"].as_str().unwrap()).collect();
    assert_eq!(months, ["2026-10", "2026-11"]);
    assert_eq!(pods["breaches"].as_array().unwrap().len(), 0, "breaches ended before --since are left out");
    assert_eq!(v["metrics"][0]["breaches"].as_array().unwrap().len(), 1, "the open breach stays");
    assert_eq!(json_report(&["--since", "2026-11-01"])["actions"].as_array().unwrap().len(), 3);

    let md = fixture_report("markdown", &["--framework", "NIST-800-53"]);
    assert!(md.contains("### NIST-800-53 CA-7") && !md.contains("### CSA-AICM AIS-03"));
    let (code, _, err) = report(&["-f", &fixtures(), "--since", "yesterday"]);
    assert_eq!(code, 2, "clap rejects a bad --since: {err}");
}

#[test]
fn reads_evaluate_output_in_yaml_and_json() {
    let dir = tempfile::tempdir().unwrap();
    for output in ["yaml", "json"] {
        let out = Command::new(env!("CARGO_BIN_EXE_secmetrics"))
            .args(["evaluate", "-f"])
            .arg(root().join("examples/metrics.yaml"))
            .arg("--objects")
            .arg(root().join("examples/workloads.yaml"))
            .args(["-o", output])
            .output()
            .unwrap();
        let file = dir.path().join(format!("evaluated.{output}"));
        std::fs::write(&file, &out.stdout).unwrap();
        let evaluated: usize = String::from_utf8(out.stdout).unwrap().matches("kind: SecurityMetric").count()
            + std::fs::read_to_string(&file).unwrap().matches("\"kind\": \"SecurityMetric\"").count();
        let (code, text, err) = report(&["-f", file.to_str().unwrap(), "--format", "json"]);
        assert_eq!(code, 0, "{err}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(evaluated > 0);
        assert_eq!(v["summary"]["metrics"], evaluated, "{output}: every evaluated metric is reported");
        assert!(v["metrics"].as_array().unwrap().iter().all(|m| m["lastEvaluated"].is_string()));
    }
    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) = report(&["-f", empty.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("no SecurityMetric or MetricPolicy found"), "{err}");
}

/// The Python with compliance-trestle and jsonschema: scripts/setup's venv, or
/// `SECMETRICS_PYTHON`, or `python3`.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("SECMETRICS_PYTHON") {
        return p.into();
    }
    let venv = root().join("target/oscal-venv/bin/python3");
    if venv.exists() { venv } else { "python3".into() }
}

fn check_oscal(file: &Path) {
    let out = Command::new(python()).arg(root().join("tests/oscal/check.py")).arg(file).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "tests/oscal/check.py failed (run scripts/setup to install its Python packages):\n{text}"
    );
    assert!(text.contains(": ok: OSCAL 1.1.2 assessment-results"), "{text}");
}

#[test]
fn oscal_validates_against_nist_schema_and_loads_in_trestle() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("assessment-results.json");
    let text = fixture_report("oscal", &[]);
    std::fs::write(&file, &text).unwrap();
    check_oscal(&file);

    let v: Value = serde_json::from_str(&text).unwrap();
    let ar = &v["assessment-results"];
    assert_eq!(ar["metadata"]["oscal-version"], "1.1.2");
    assert_eq!(ar["metadata"]["last-modified"], "2026-11-28T09:00:00Z");
    let import = ar["import-ap"]["href"].as_str().unwrap();
    let resources = ar["back-matter"]["resources"].as_array().unwrap();
    assert!(
        resources.iter().any(|r| format!("#{}", r["uuid"].as_str().unwrap()) == import),
        "import-ap resolves"
    );
    let results = ar["results"].as_array().unwrap();
    let months = ["2026-06", "2026-07", "2026-08", "2026-09", "2026-10", "2026-11"];
    assert_eq!(results.len(), months.len() + 1, "one result per month of trend, plus the current one");
    for (r, month) in results.iter().zip(months) {
        assert_eq!(r["title"], format!("Monthly tracking {month}"));
        assert_eq!(r["start"], format!("{month}-01T00:00:00Z"));
    }
    assert_eq!(results[6]["title"], "Current status at 2026-11-28T09:00:00Z");
    assert_eq!(results[0]["observations"].as_array().unwrap().len(), 1, "June: one metric has data");
    let current = &results[6];
    assert_eq!(current["observations"].as_array().unwrap().len(), 4);
    let finding = |id: &str| {
        current["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["target"]["target-id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no finding {id}"))
    };
    assert_eq!(finding("iso-27001_9.1")["target"]["status"]["state"], "satisfied");
    assert_eq!(finding("ais-03")["target"]["status"]["state"], "not-satisfied");
    assert_eq!(finding("ais-03")["target"]["type"], "objective-id");
    // Stable identifiers: all distinct, and the same on every run (checked byte-for-byte above).
    let uuids: Vec<&str> = text.lines().filter_map(|l| l.trim().strip_prefix("\"uuid\": \"")).collect();
    let distinct: std::collections::BTreeSet<&&str> = uuids.iter().collect();
    assert_eq!(distinct.len(), uuids.len(), "every uuid is unique");

    // A filtered report is a valid document too.
    let filtered = dir.path().join("filtered.json");
    std::fs::write(&filtered, fixture_report("oscal", &["--framework", "NIST-800-53", "--since", "2026-10"]))
        .unwrap();
    check_oscal(&filtered);
}

#[test]
fn html_renders_in_headless_chromium() {
    let Some(chromium) = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()))
    else {
        println!("note: chromium is not installed (scripts/setup installs it); skipping the screenshot test");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("report.html");
    let png = dir.path().join("report.png");
    std::fs::write(&html, fixture_report("html", &[])).unwrap();
    let out = Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,2400"])
        .arg(format!("--user-data-dir={}", dir.path().join("profile").display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", html.display()))
        .output()
        .unwrap();
    assert!(png.exists(), "no screenshot: {}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    // A blank 1280x2400 page compresses to a few KiB; the rendered report is far larger.
    assert!(bytes.len() > 50_000, "screenshot is suspiciously small: {} bytes", bytes.len());
}

/// Extreme trend values (all of a metric's months and its target near -1e15 with a step below
/// their resolution, at -1e300, across the whole f64 range) used to hang the HTML report in
/// its axis-tick loop; it must finish promptly with a bounded chart.
#[test]
fn html_report_finishes_for_extreme_values() {
    let text = std::fs::read_to_string(root().join("tests/fixtures/report/metrics.yaml")).unwrap();
    for (min, max) in [
        ("-1.000000000000001e15", "-1e15"),
        ("-1e300", "-1e300"),
        ("-1.7976931348623157e308", "1.7976931348623157e308"),
        ("-1e-323", "-5e-324"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.yaml");
        // Every monthly bucket of the first metric, and its target, at the extreme values.
        let start = text.find("      monthly:\n").unwrap() + "      monthly:\n".len();
        let len: usize =
            text[start..].lines().take_while(|l| l.starts_with("      - ")).map(|l| l.len() + 1).sum();
        let bucket = format!(
            "      - {{period: \"2026-06\", samples: 1, min: {min}, max: {max}, mean: {max}, last: {min}, observedSeconds: 60, timeInBreachSeconds: 0}}\n"
        );
        let patched = format!("{}{bucket}{}", &text[..start], &text[start + len..]);
        let patched = patched.replacen("unit: Percent", "unit: Count", 1).replacen(
            "target: 95, warning: 80",
            &format!("target: {max}"),
            1,
        );
        std::fs::write(&f, patched).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_secmetrics"))
            .args(["report", "-f", f.to_str().unwrap(), "--format", "html"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > std::time::Duration::from_secs(20) {
                child.kill().unwrap();
                panic!("report --format html did not finish for {min}..{max}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let html = String::from_utf8(out.stdout).unwrap();
        assert!(
            html.matches("class=\"tick\" text-anchor=\"end\"").count() < 100,
            "{min}..{max}: too many ticks"
        );
    }
}
