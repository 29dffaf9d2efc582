//! The JSON report: the model as is, `schemaVersion: secmetrics.io/report/v1`
//! (docs/report-json.md documents every field).

use super::model::Report;

/// Renders the report as pretty-printed JSON with a trailing newline.
pub fn render(r: &Report) -> String {
    let mut s = serde_json::to_string_pretty(r).expect("the report serializes");
    s.push('\n');
    s
}
