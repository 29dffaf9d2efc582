//! The HTML report: one self-contained page (inline CSS and SVG charts, no script, no
//! external asset), readable on screen and in print. Every piece of input text is escaped.

use std::fmt::Write;

use super::model::{Report, duration, num, percent, responsibility_label, type_label, value_with_unit};

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "DejaVu Sans", sans-serif;
  color: #1f2328; margin: 0 auto; max-width: 1180px; padding: 24px 32px 48px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 36px 0 12px; padding-bottom: 4px; border-bottom: 2px solid #d0d7de; }
h3 { font-size: 16px; margin: 24px 0 8px; }
.meta { color: #57606a; margin: 0 0 12px; }
nav { margin: 12px 0 8px; padding: 8px 12px; background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; }
nav a { margin-right: 14px; }
a { color: #0969da; text-decoration: none; }
a:hover { text-decoration: underline; }
code { font: 12.5px ui-monospace, SFMono-Regular, Menlo, Consolas, "DejaVu Sans Mono", monospace;
  background: #f6f8fa; padding: 1px 4px; border-radius: 4px; }
table { border-collapse: collapse; width: 100%; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: 5px 8px; text-align: left; vertical-align: top; }
th { background: #f0f3f6; font-weight: 600; }
tbody tr:nth-child(even) { background: #fafbfc; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.nowrap { white-space: nowrap; }
table.fixed { table-layout: fixed; }
table.fixed td { overflow-wrap: anywhere; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-weight: 600; font-size: 12px;
  border: 1px solid transparent; white-space: nowrap; }
.Compliant, .Met, .satisfied, .Applied, .Reverted { background: #dafbe1; color: #116329; border-color: #aceebb; }
.Warning, .Partial, .Planned { background: #fff8c5; color: #7d4e00; border-color: #f5e0a0; }
.Breached, .Missing, .not-satisfied, .NonCompliant, .Failed, .Refused { background: #ffebe9; color: #a40e26; border-color: #ffcecb; }
.Unknown { background: #eaeef2; color: #424a53; border-color: #d0d7de; }
.anomalous { background: #fbefff; color: #6e40c9; border-color: #e6d2ff; }
.tiles { display: flex; flex-wrap: wrap; gap: 12px; margin: 8px 0 16px; }
.tile { border: 1px solid #d0d7de; border-radius: 8px; padding: 10px 14px; min-width: 140px; }
.tile .n { font-size: 24px; font-weight: 700; }
.tile .l { color: #57606a; font-size: 12px; }
dl.facts { display: grid; grid-template-columns: 190px 1fr; gap: 4px 12px; margin: 8px 0 16px; }
dl.facts dt { color: #57606a; font-weight: 600; }
dl.facts dd { margin: 0; }
article.metric { border: 1px solid #d0d7de; border-radius: 8px; padding: 4px 16px 8px; margin: 12px 0; }
.trend { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.trend table { width: auto; margin: 0; }
svg.chart { max-width: 100%; height: auto; border: 1px solid #d0d7de; border-radius: 6px; }
svg .tick { font: 11px system-ui, sans-serif; fill: #57606a; }
svg .share { font: 10.5px system-ui, sans-serif; fill: #116329; }
svg .legend, svg .axis { font: 12px system-ui, sans-serif; fill: #1f2328; }
svg .mark { font: 11px system-ui, sans-serif; }
.note { color: #57606a; }
@media print {
  body { max-width: none; padding: 0; font-size: 11px; }
  nav { display: none; }
  a { color: inherit; }
  h2 { break-after: avoid; }
  h3 { break-after: avoid; }
  tr, svg, article.metric, .trend-item { break-inside: avoid; }
  #controls, #metrics, #trends, #remediation { break-before: page; }
  thead { display: table-header-group; }
  .badge, th, tbody tr:nth-child(even), .tile { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"#;

fn badge(class: &str, text: &str) -> String {
    format!(r#"<span class="badge {}">{}</span>"#, escape(class), escape(text))
}

fn opt_num(v: Option<f64>, suffix: &str) -> String {
    v.map(|v| format!("{}{suffix}", num(v))).unwrap_or_else(|| "–".into())
}

/// Renders the report as one HTML page.
pub fn render(r: &Report) -> String {
    let mut o = String::new();
    // Writing to a String cannot fail.
    let _ = write_page(r, &mut o);
    o
}

fn write_page(r: &Report, o: &mut String) -> std::fmt::Result {
    let s = &r.summary;
    writeln!(o, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">")?;
    writeln!(o, "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">")?;
    writeln!(o, "<meta name=\"generator\" content=\"{}\">", escape(&r.generator))?;
    writeln!(o, "<title>Security metrics report — {}</title>", escape(&r.generated_at))?;
    writeln!(o, "<style>{STYLE}</style>\n</head>\n<body>")?;
    writeln!(o, "<header><h1>Security metrics report</h1>")?;
    let mut filters = Vec::new();
    if let Some(f) = &r.filters.framework {
        filters.push(format!("framework <b>{}</b>", escape(f)));
    }
    if let Some(n) = &r.filters.namespace {
        filters.push(format!("namespace <b>{}</b>", escape(n)));
    }
    if let Some(t) = &r.filters.since {
        filters.push(format!("since <b>{}</b>", escape(t)));
    }
    writeln!(
        o,
        "<p class=\"meta\">Generated at {} by {}.{}</p></header>",
        escape(&r.generated_at),
        escape(&r.generator),
        if filters.is_empty() { String::new() } else { format!(" Filtered to {}.", filters.join(", ")) }
    )?;
    writeln!(
        o,
        "<nav>{}</nav>",
        ["summary", "checklist", "controls", "metrics", "trends", "breaches", "remediation", "policies"]
            .map(|a| format!("<a href=\"#{a}\">{}{}</a>", a[..1].to_uppercase(), &a[1..]))
            .join("")
    )?;

    // Summary.
    writeln!(o, "<section id=\"summary\"><h2>Summary</h2>\n<div class=\"tiles\">")?;
    let c = &s.metrics_by_state;
    let tile = |n: String, l: &str| {
        format!("<div class=\"tile\"><div class=\"n\">{n}</div><div class=\"l\">{l}</div></div>")
    };
    let tiles = [
        tile(s.metrics.to_string(), "metrics"),
        tile(c.compliant.to_string(), &badge("Compliant", "Compliant")),
        tile(c.warning.to_string(), &badge("Warning", "Warning")),
        tile(c.breached.to_string(), &badge("Breached", "Breached")),
        tile(c.unknown.to_string(), &badge("Unknown", "Unknown")),
        tile(format!("{} / {}", s.controls_satisfied, s.controls), "controls satisfied"),
        tile(format!("{} / {}", s.policies_compliant, s.policies), "policies compliant"),
        tile(format!("{} ({} open)", s.breaches, s.open_breaches), "breaches recorded"),
        tile(s.mttr_seconds.map(duration).unwrap_or_else(|| "–".into()), "mean time to recover"),
    ];
    writeln!(o, "{}</div>", tiles.join("\n"))?;
    if s.anomalous_metrics > 0 {
        writeln!(
            o,
            "<p>{} {} anomalous (outside their own baseline).</p>",
            s.anomalous_metrics,
            if s.anomalous_metrics == 1 { "metric is" } else { "metrics are" }
        )?;
    }
    let outcomes: Vec<String> =
        s.actions_by_outcome.iter().map(|(k, v)| format!("{v} {}", badge(k, k))).collect();
    writeln!(
        o,
        "<p>Remediation actions: {}. Frameworks: {}.</p>",
        if outcomes.is_empty() { "none recorded".into() } else { outcomes.join(" ") },
        if s.frameworks.is_empty() { "none".into() } else { escape(&s.frameworks.join(", ")) }
    )?;
    if !r.policies.is_empty() {
        writeln!(
            o,
            "<table><thead><tr><th>Policy</th><th>Mode</th><th>State</th><th class=\"num\">Score</th><th class=\"num\">Coverage</th><th class=\"num\">Required</th><th class=\"num\">Active remediations</th></tr></thead><tbody>"
        )?;
        for p in &r.policies {
            writeln!(
                o,
                "<tr><td><a href=\"#policy-{}\"><code>{}</code></a></td><td>{:?}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}%</td><td class=\"num\">{}</td></tr>",
                super::model::slug(&p.key()),
                escape(&p.key()),
                p.mode,
                badge(p.state.as_str(), p.state.as_str()),
                opt_num(p.score, "%"),
                opt_num(p.coverage, "%"),
                num(p.min_compliant_percent),
                p.active_remediations
            )?;
        }
        writeln!(o, "</tbody></table>")?;
    }
    let mut categories: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for m in &r.metrics {
        let e = categories.entry(m.category.as_str()).or_default();
        e.0 += 1;
        if matches!(m.state.as_str(), "Compliant" | "Warning") {
            e.1 += 1;
        }
    }
    if !categories.is_empty() {
        writeln!(
            o,
            "<table style=\"width:auto\"><thead><tr><th>Category</th><th class=\"num\">Metrics</th><th class=\"num\">Compliant or Warning</th></tr></thead><tbody>"
        )?;
        for (cat, (n, ok)) in &categories {
            writeln!(o, "<tr><td>{cat}</td><td class=\"num\">{n}</td><td class=\"num\">{ok}</td></tr>")?;
        }
        writeln!(o, "</tbody></table>")?;
    }
    writeln!(o, "</section>")?;

    // Checklist.
    writeln!(o, "<section id=\"checklist\"><h2>Auditor's checklist</h2>")?;
    writeln!(
        o,
        "<p class=\"note\">The eight points an auditor checks for CSA AICM/CCM AIS-03, and where this report evidences them.</p>"
    )?;
    writeln!(
        o,
        "<table><thead><tr><th class=\"num\">#</th><th>Point</th><th>Status</th><th>Evidence</th><th>Where</th></tr></thead><tbody>"
    )?;
    for item in &r.checklist {
        let where_: Vec<String> = item.sections.iter().map(|s| format!("<a href=\"#{s}\">{s}</a>")).collect();
        writeln!(
            o,
            "<tr><td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            item.number,
            escape(item.requirement),
            badge(item.status.as_str(), item.status.as_str()),
            escape(&item.evidence),
            where_.join(", ")
        )?;
    }
    writeln!(o, "</tbody></table></section>")?;

    // Controls.
    writeln!(o, "<section id=\"controls\"><h2>Controls</h2>")?;
    if r.controls.is_empty() {
        writeln!(o, "<p>No metric or policy is mapped to a framework control.</p>")?;
    }
    for c in &r.controls {
        let (class, text) =
            if c.satisfied { ("satisfied", "satisfied") } else { ("not-satisfied", "not satisfied") };
        writeln!(
            o,
            "<h3 id=\"{}\">{} {} {}</h3>",
            c.anchor(),
            escape(&c.framework),
            escape(&c.control),
            badge(class, text)
        )?;
        if !c.policies.is_empty() {
            let ps: Vec<String> = c
                .policies
                .iter()
                .map(|p| format!("<code>{}</code> {}", escape(&p.policy), badge(&p.state, &p.state)))
                .collect();
            writeln!(o, "<p>Rolled up by {}.</p>", ps.join(", "))?;
        }
        if c.metrics.is_empty() {
            writeln!(o, "<p>No metric evidences this control.</p>")?;
            continue;
        }
        writeln!(
            o,
            "<table class=\"fixed\"><colgroup><col style=\"width:19%\"><col style=\"width:29%\"><col style=\"width:14%\"><col style=\"width:13%\"><col style=\"width:7%\"><col style=\"width:9%\"><col style=\"width:9%\"></colgroup>\
             <thead><tr><th>Metric</th><th>Definition</th><th>Owner (role)</th><th>Objective</th><th class=\"num\">Value</th><th>State</th><th>Last evaluated</th></tr></thead><tbody>"
        )?;
        for key in &c.metrics {
            let Some(m) = r.metrics.iter().find(|m| &m.key() == key) else { continue };
            writeln!(
                o,
                "<tr><td><a href=\"#{}\">{}</a><br><code>{}</code></td><td>{}</td><td>{}<br>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
                m.anchor(),
                escape(&m.display_name),
                escape(&m.key()),
                escape(&m.description),
                escape(&m.owner.team),
                responsibility_label(m.owner.responsibility),
                escape(&m.objective.text),
                m.value.map(|v| escape(&value_with_unit(v, &m.unit))).unwrap_or_else(|| "–".into()),
                state_badges(m.state.as_str(), m.anomalous),
                time_cell(m.last_evaluated.as_deref())
            )?;
        }
        writeln!(o, "</tbody></table>")?;
    }
    writeln!(o, "</section>")?;

    // Metrics.
    writeln!(o, "<section id=\"metrics\"><h2>Metrics</h2>")?;
    for m in &r.metrics {
        writeln!(o, "<article class=\"metric\" id=\"{}\">", m.anchor())?;
        writeln!(
            o,
            "<h3>{} <code>{}</code> {}</h3>",
            escape(&m.display_name),
            escape(&m.key()),
            state_badges(m.state.as_str(), m.anomalous)
        )?;
        writeln!(o, "<dl class=\"facts\">")?;
        let mut fact = |k: &str, v: String| writeln!(o, "<dt>{k}</dt><dd>{v}</dd>");
        fact("Definition", escape(&m.description))?;
        fact(
            "Type, category, unit",
            format!("{}, {}, {}", type_label(m.metric_type), m.category.as_str(), escape(&m.unit)),
        )?;
        fact(
            "Owner",
            format!(
                "{}{} — {}",
                escape(&m.owner.team),
                m.owner.contact.as_ref().map(|c| format!(" ({})", escape(c))).unwrap_or_default(),
                responsibility_label(m.owner.responsibility)
            ),
        )?;
        let list = |v: &[String]| {
            if v.is_empty() {
                "–".to_string()
            } else {
                v.iter().map(|x| escape(x)).collect::<Vec<_>>().join("; ")
            }
        };
        fact("Business objectives", list(&m.alignment.business_objectives))?;
        fact("Security requirements", list(&m.alignment.security_requirements))?;
        let controls: Vec<String> = m
            .alignment
            .compliance
            .iter()
            .map(|c| {
                let anchor =
                    format!("control-{}", super::model::slug(&format!("{}-{}", c.framework, c.control)));
                format!("<a href=\"#{anchor}\">{} {}</a>", escape(&c.framework), escape(&c.control))
            })
            .collect();
        fact("Compliance", if controls.is_empty() { "–".into() } else { controls.join(", ") })?;
        fact("Objective", escape(&m.objective.text))?;
        fact(
            "Current value",
            format!(
                "{} {}",
                m.value.map(|v| escape(&value_with_unit(v, &m.unit))).unwrap_or_else(|| "no value".into()),
                state_badges(m.state.as_str(), m.anomalous)
            ),
        )?;
        fact(
            "Last evaluated",
            format!(
                "{}; state since {}",
                escape(m.last_evaluated.as_deref().unwrap_or("never")),
                escape(m.last_transition.as_deref().unwrap_or("–"))
            ),
        )?;
        if let (Some(pop), Some(pass)) = (m.population, m.passing) {
            fact(
                "Population",
                format!(
                    "{pass} of {pop} objects pass{}",
                    m.offenders_total
                        .map(|n| format!("; {n} offender{}", if n == 1 { "" } else { "s" }))
                        .unwrap_or_default()
                ),
            )?;
        }
        if let Some(t) = m.tenants_total {
            fact(
                "Tenants",
                format!(
                    "{t}, {} breached{}",
                    m.tenants_breached.unwrap_or(0),
                    m.tenants_anomalous.map(|n| format!(", {n} anomalous")).unwrap_or_default()
                ),
            )?;
        }
        if let Some(p) = &m.problem {
            fact("Problem", escape(p))?;
        }
        fact(
            "Breaches, MTTR",
            format!(
                "{} recorded; MTTR {}",
                m.breaches.len(),
                m.mttr_seconds.map(duration).unwrap_or_else(|| "–".into())
            ),
        )?;
        let policies: Vec<String> =
            m.policies.iter().map(|p| format!("<code>{}</code>", escape(p))).collect();
        fact("Policies", if policies.is_empty() { "none".into() } else { policies.join(", ") })?;
        writeln!(o, "</dl></article>")?;
    }
    writeln!(o, "</section>")?;

    // Trends.
    writeln!(o, "<section id=\"trends\"><h2>Monthly trends</h2>")?;
    writeln!(
        o,
        "<p class=\"note\">Per UTC month: time-weighted mean (line), lowest to highest value (bar), objective \
         (dashed), and under each month the share of observed time the metric was Compliant or Warning.</p>"
    )?;
    for m in r.metrics.iter().filter(|m| !m.monthly.is_empty()) {
        writeln!(
            o,
            "<div class=\"trend-item\"><h3><a href=\"#{}\">{}</a> <code>{}</code></h3>\n<div class=\"trend\">",
            m.anchor(),
            escape(&m.display_name),
            escape(&m.key())
        )?;
        o.push_str(&super::svg::monthly_chart(m));
        writeln!(
            o,
            "<table><thead><tr><th>Month</th><th class=\"num\">Mean</th><th class=\"num\">Min</th><th class=\"num\">Max</th><th class=\"num\">Compliant</th><th class=\"num\">In breach</th><th class=\"num\">Samples</th></tr></thead><tbody>"
        )?;
        for b in &m.monthly {
            writeln!(
                o,
                "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                escape(&b.period),
                opt_num(b.mean, ""),
                opt_num(b.min, ""),
                opt_num(b.max, ""),
                b.compliant_ratio.map(percent).unwrap_or_else(|| "–".into()),
                duration(b.time_in_breach_seconds as f64),
                b.samples
            )?;
        }
        writeln!(o, "</tbody></table></div></div>")?;
    }
    let untracked: Vec<String> = r
        .metrics
        .iter()
        .filter(|m| m.monthly.is_empty())
        .map(|m| format!("<code>{}</code>", escape(&m.key())))
        .collect();
    if !untracked.is_empty() {
        writeln!(o, "<p>No monthly trend recorded yet for {}.</p>", untracked.join(", "))?;
    }
    writeln!(o, "</section>")?;

    // Breaches.
    writeln!(o, "<section id=\"breaches\"><h2>Breaches and MTTR</h2>")?;
    writeln!(
        o,
        "<p class=\"note\">Breached episodes as recorded in status (the operator keeps the recent ones). MTTR is the \
         mean duration of the recovered episodes listed; an open breach counts until the report's time.</p>"
    )?;
    let breached: Vec<_> = r.metrics.iter().filter(|m| !m.breaches.is_empty()).collect();
    if breached.is_empty() {
        writeln!(o, "<p>No breach recorded.</p>")?;
    } else {
        writeln!(
            o,
            "<table><thead><tr><th>Metric</th><th>Since</th><th>Until</th><th class=\"num\">Duration</th><th class=\"num\">MTTR</th></tr></thead><tbody>"
        )?;
        for m in &breached {
            let n = m.breaches.len();
            for (i, b) in m.breaches.iter().enumerate() {
                let metric = format!(
                    "<td rowspan=\"{n}\"><a href=\"#{}\"><code>{}</code></a></td>",
                    m.anchor(),
                    escape(&m.key())
                );
                let mttr = format!(
                    "<td class=\"num\" rowspan=\"{n}\">{}</td>",
                    m.mttr_seconds.map(duration).unwrap_or_else(|| "–".into())
                );
                writeln!(
                    o,
                    "<tr>{}<td class=\"nowrap\">{}</td><td class=\"nowrap\">{}</td><td class=\"num\">{}</td>{}</tr>",
                    if i == 0 { metric } else { String::new() },
                    escape(&b.since),
                    b.until.as_deref().map(escape).unwrap_or_else(|| badge("Breached", "open")),
                    duration(b.duration_seconds as f64),
                    if i == 0 { mttr } else { String::new() }
                )?;
            }
        }
        writeln!(o, "</tbody></table>")?;
    }
    writeln!(o, "</section>")?;

    // Remediation.
    writeln!(o, "<section id=\"remediation\"><h2>Remediation</h2>")?;
    let rules: Vec<String> = r
        .policies
        .iter()
        .flat_map(|p| {
            p.rules.iter().map(move |rule| {
                let actions: Vec<&str> = rule.actions.iter().map(|a| a.as_str()).collect();
                format!(
                    "<tr><td><code>{}</code></td><td>{:?}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(&p.key()),
                    p.mode,
                    escape(&rule.name),
                    escape(&rule.when),
                    escape(&rule.scope),
                    actions.join(", ")
                )
            })
        })
        .collect();
    if rules.is_empty() {
        writeln!(o, "<p>No MetricPolicy defines a remediation rule.</p>")?;
    } else {
        writeln!(
            o,
            "<h3>Rules</h3><table><thead><tr><th>Policy</th><th>Mode</th><th>Rule</th><th>When</th><th>Scope</th><th>Actions</th></tr></thead><tbody>\n{}\n</tbody></table>",
            rules.join("\n")
        )?;
    }
    if r.actions.is_empty() {
        writeln!(o, "<p>No remediation action recorded.</p>")?;
    } else {
        writeln!(
            o,
            "<h3>Actions</h3><p class=\"note\">Oldest first. <b>Planned</b> actions come from DryRun policies: the \
             threshold triggered remediation and nothing was changed.</p>"
        )?;
        writeln!(
            o,
            "<table><thead><tr><th>Time</th><th>Policy</th><th>Rule</th><th>Metric</th><th>Action</th><th>Target</th><th>Outcome</th><th>Message</th></tr></thead><tbody>"
        )?;
        for a in &r.actions {
            writeln!(
                o,
                "<tr><td class=\"nowrap\">{}</td><td><code>{}</code> ({:?})</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&a.time),
                escape(&a.policy),
                a.mode,
                escape(&a.rule),
                escape(&a.metric),
                a.action.as_str(),
                escape(&a.target),
                badge(a.outcome.as_str(), a.outcome.as_str()),
                a.message.as_deref().map(escape).unwrap_or_default()
            )?;
        }
        writeln!(o, "</tbody></table>")?;
    }
    writeln!(o, "</section>")?;

    // Policies.
    writeln!(o, "<section id=\"policies\"><h2>Policies</h2>")?;
    if r.policies.is_empty() {
        writeln!(o, "<p>No MetricPolicy.</p>")?;
    }
    for p in &r.policies {
        writeln!(
            o,
            "<h3 id=\"policy-{}\"><code>{}</code> {}</h3>",
            super::model::slug(&p.key()),
            escape(&p.key()),
            badge(p.state.as_str(), p.state.as_str())
        )?;
        if let Some(d) = &p.description {
            writeln!(o, "<p>{}</p>", escape(d))?;
        }
        let obligations: Vec<String> =
            p.compliance.iter().map(|c| format!("{} {}", escape(&c.framework), escape(&c.control))).collect();
        writeln!(
            o,
            "<dl class=\"facts\"><dt>Mode</dt><dd>{:?}</dd><dt>Score, coverage</dt><dd>{}, {} (requires {}% compliant)</dd><dt>Obligations</dt><dd>{}</dd><dt>Metrics</dt><dd>{}</dd></dl>",
            p.mode,
            opt_num(p.score, "%"),
            opt_num(p.coverage, "%"),
            num(p.min_compliant_percent),
            if obligations.is_empty() { "–".into() } else { obligations.join(", ") },
            if p.metrics.is_empty() { "–".into() } else { escape(&p.metrics.join(", ")) }
        )?;
    }
    writeln!(o, "</section>")?;
    writeln!(o, "</body>\n</html>")
}

/// A timestamp that may break between date and time in a narrow column.
fn time_cell(t: Option<&str>) -> String {
    t.map(|t| escape(t).replacen('T', "T<wbr>", 1)).unwrap_or_else(|| "never".into())
}

fn state_badges(state: &str, anomalous: bool) -> String {
    let mut s = badge(state, state);
    if anomalous {
        s.push(' ');
        s.push_str(&badge("anomalous", "anomalous"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_that_matters() {
        assert_eq!(
            escape(r#"<script>alert("x&y")</script>'"#),
            "&lt;script&gt;alert(&quot;x&amp;y&quot;)&lt;/script&gt;&#39;"
        );
    }
}
