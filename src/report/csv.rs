//! The CSV report: one row per metric (RFC 4180: CRLF line ends, fields quoted when they hold
//! a comma, a quote or a line break), for spreadsheets and GRC tools.

use super::model::Report;

/// The header row.
pub const COLUMNS: [&str; 19] = [
    "namespace",
    "name",
    "displayName",
    "category",
    "type",
    "ownerTeam",
    "responsibility",
    "objective",
    "value",
    "unit",
    "state",
    "lastEvaluated",
    "complianceControls",
    "currentMonth",
    "currentMonthMean",
    "currentMonthCompliantRatio",
    "breaches",
    "openBreaches",
    "mttrSeconds",
];

/// Quotes one field per RFC 4180. Free text that a spreadsheet would run as a formula
/// (starting with `=`, `+`, `-`, `@`, tab or CR) is prefixed with `'` (OWASP CSV injection).
pub fn field(s: &str, free_text: bool) -> String {
    let guarded = if free_text && s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if guarded.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// Renders the report as CSV.
pub fn render(r: &Report) -> String {
    let mut out = COLUMNS.join(",");
    out.push_str("\r\n");
    let month = &r.summary.current_month;
    for m in &r.metrics {
        let bucket = m.month(month);
        let row = [
            field(&m.namespace, false),
            field(&m.name, false),
            field(&m.display_name, true),
            m.category.as_str().to_string(),
            format!("{:?}", m.metric_type),
            field(&m.owner.team, true),
            format!("{:?}", m.owner.responsibility),
            field(&m.objective.text, false),
            opt(m.value),
            field(&m.unit, true),
            m.state.as_str().to_string(),
            m.last_evaluated.clone().unwrap_or_default(),
            field(&m.controls_joined(), true),
            month.clone(),
            opt(bucket.and_then(|b| b.mean)),
            opt(bucket.and_then(|b| b.compliant_ratio)),
            m.breaches.len().to_string(),
            m.breaches.iter().filter(|b| b.open).count().to_string(),
            opt(m.mttr_seconds),
        ];
        out.push_str(&row.join(","));
        out.push_str("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_per_rfc_4180_and_guards_formulas() {
        assert_eq!(field("plain", true), "plain");
        assert_eq!(field("a,b", false), "\"a,b\"");
        assert_eq!(field("say \"hi\"\nnow", false), "\"say \"\"hi\"\"\nnow\"");
        assert_eq!(field("=cmd()", true), "'=cmd()");
        assert_eq!(field("-5", false), "-5");
    }
}
