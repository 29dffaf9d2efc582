//! The Markdown report: what an auditor reads in a Git repository or a pull request.

use std::fmt::Write;

use super::model::{Report, duration, num, percent, responsibility_label, type_label, value_with_unit};

/// Escapes text for Markdown: inline markup, HTML tags and entities, and table separators;
/// newlines become spaces (every piece of text here sits on one line or in a table cell).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '|' | '#' | '~' => {
                out.push('\\');
                out.push(c);
            }
            // `<` could open a tag; `&` followed by a name could be an entity. `>` alone is
            // harmless mid-line (every piece of text here follows other text).
            '<' => out.push_str("&lt;"),
            '&' if chars.peek().is_some_and(|n| n.is_ascii_alphanumeric() || *n == '#') => {
                out.push_str("&amp;")
            }
            '\r' => {}
            '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn opt(v: &Option<String>) -> String {
    v.as_deref().map(escape).unwrap_or_else(|| "-".into())
}

/// Renders the report as Markdown (GitHub-flavoured tables).
pub fn render(r: &Report) -> String {
    let mut o = String::new();
    // Writing to a String cannot fail.
    let _ = write_report(r, &mut o);
    o
}

fn write_report(r: &Report, o: &mut String) -> std::fmt::Result {
    let s = &r.summary;
    writeln!(o, "# Security metrics report\n")?;
    writeln!(o, "Generated at {} by {}.", r.generated_at, escape(&r.generator))?;
    let mut filters = Vec::new();
    if let Some(f) = &r.filters.framework {
        filters.push(format!("framework {}", escape(f)));
    }
    if let Some(n) = &r.filters.namespace {
        filters.push(format!("namespace {}", escape(n)));
    }
    if let Some(t) = &r.filters.since {
        filters.push(format!("since {t}"));
    }
    if !filters.is_empty() {
        writeln!(o, "Filtered to {}.", filters.join(", "))?;
    }

    writeln!(o, "\n## Summary\n")?;
    let c = &s.metrics_by_state;
    writeln!(
        o,
        "- **Metrics**: {} — {} Compliant, {} Warning, {} Breached, {} Unknown; {} anomalous.",
        s.metrics, c.compliant, c.warning, c.breached, c.unknown, s.anomalous_metrics
    )?;
    writeln!(
        o,
        "- **Controls**: {} ({} satisfied) in {}.",
        s.controls,
        s.controls_satisfied,
        if s.frameworks.is_empty() { "no framework".to_string() } else { escape(&s.frameworks.join(", ")) }
    )?;
    writeln!(o, "- **Policies**: {} ({} Compliant).", s.policies, s.policies_compliant)?;
    writeln!(
        o,
        "- **Breaches**: {} recorded, {} open; mean time to recover {}.",
        s.breaches,
        s.open_breaches,
        s.mttr_seconds.map(duration).unwrap_or_else(|| "-".into())
    )?;
    let outcomes: Vec<String> = s.actions_by_outcome.iter().map(|(k, v)| format!("{v} {k}")).collect();
    writeln!(
        o,
        "- **Remediation actions**: {}.",
        if outcomes.is_empty() { "none recorded".to_string() } else { outcomes.join(", ") }
    )?;

    if !r.policies.is_empty() {
        writeln!(o, "\n| Policy | Mode | State | Score | Coverage | Required | Active remediations |")?;
        writeln!(o, "|---|---|---|---:|---:|---:|---:|")?;
        for p in &r.policies {
            writeln!(
                o,
                "| {} | {:?} | {} | {} | {} | {}% | {} |",
                escape(&p.key()),
                p.mode,
                p.state.as_str(),
                p.score.map(|v| format!("{}%", num(v))).unwrap_or_else(|| "-".into()),
                p.coverage.map(|v| format!("{}%", num(v))).unwrap_or_else(|| "-".into()),
                num(p.min_compliant_percent),
                p.active_remediations
            )?;
        }
    }
    let mut categories: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for m in &r.metrics {
        categories.entry(m.category.as_str()).or_default().push(m.state.as_str());
    }
    if !categories.is_empty() {
        writeln!(o, "\n| Category | Metrics | Compliant or Warning |")?;
        writeln!(o, "|---|---:|---:|")?;
        for (cat, states) in &categories {
            let ok = states.iter().filter(|s| matches!(**s, "Compliant" | "Warning")).count();
            writeln!(o, "| {cat} | {} | {ok} |", states.len())?;
        }
    }

    writeln!(o, "\n## Checklist\n")?;
    writeln!(o, "The auditor's eight points (CSA AICM/CCM AIS-03) and where this report evidences them.\n")?;
    writeln!(o, "| # | Point | Status | Evidence | Where |")?;
    writeln!(o, "|---:|---|---|---|---|")?;
    for item in &r.checklist {
        let where_: Vec<String> = item.sections.iter().map(|s| format!("[{s}](#{s})")).collect();
        writeln!(
            o,
            "| {} | {} | **{}** | {} | {} |",
            item.number,
            escape(item.requirement),
            item.status.as_str(),
            escape(&item.evidence),
            where_.join(", ")
        )?;
    }

    writeln!(o, "\n## Controls\n")?;
    if r.controls.is_empty() {
        writeln!(o, "No metric or policy is mapped to a framework control.")?;
    }
    for c in &r.controls {
        writeln!(
            o,
            "### {} {} — {}\n",
            escape(&c.framework),
            escape(&c.control),
            if c.satisfied { "satisfied" } else { "not satisfied" }
        )?;
        if !c.policies.is_empty() {
            let ps: Vec<String> =
                c.policies.iter().map(|p| format!("{} ({})", escape(&p.policy), escape(&p.state))).collect();
            writeln!(o, "Rolled up by: {}.\n", ps.join(", "))?;
        }
        if c.metrics.is_empty() {
            writeln!(o, "No metric evidences this control.\n")?;
            continue;
        }
        writeln!(o, "| Metric | Definition | Owner (role) | Objective | Value | State | Last evaluated |")?;
        writeln!(o, "|---|---|---|---|---:|---|---|")?;
        for key in &c.metrics {
            let Some(m) = r.metrics.iter().find(|m| &m.key() == key) else { continue };
            writeln!(
                o,
                "| {} (`{}`) | {} | {} ({}) | {} | {} | {} | {} |",
                escape(&m.display_name),
                m.key(),
                escape(&m.description),
                escape(&m.owner.team),
                responsibility_label(m.owner.responsibility),
                escape(&m.objective.text),
                m.value
                    .map(|v| value_with_unit(v, &m.unit))
                    .map(|v| escape(&v))
                    .unwrap_or_else(|| "-".into()),
                state_text(m.state.as_str(), m.anomalous),
                m.last_evaluated.as_deref().unwrap_or("-")
            )?;
        }
        writeln!(o)?;
    }

    writeln!(o, "## Metrics\n")?;
    for m in &r.metrics {
        writeln!(o, "### {} (`{}`)\n", escape(&m.display_name), m.key())?;
        writeln!(o, "- **Definition**: {}", escape(&m.description))?;
        writeln!(
            o,
            "- **Type, category, unit**: {}, {}, {}",
            type_label(m.metric_type),
            m.category.as_str(),
            escape(&m.unit)
        )?;
        writeln!(
            o,
            "- **Owner**: {}{}; responsibility: {}",
            escape(&m.owner.team),
            m.owner.contact.as_ref().map(|c| format!(" ({})", escape(c))).unwrap_or_default(),
            responsibility_label(m.owner.responsibility)
        )?;
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.iter().map(|x| escape(x)).collect::<Vec<_>>().join("; ")
            }
        };
        writeln!(o, "- **Business objectives**: {}", list(&m.alignment.business_objectives))?;
        writeln!(o, "- **Security requirements**: {}", list(&m.alignment.security_requirements))?;
        let controls: Vec<String> = m
            .alignment
            .compliance
            .iter()
            .map(|c| format!("{} {}", escape(&c.framework), escape(&c.control)))
            .collect();
        writeln!(
            o,
            "- **Compliance**: {}",
            if controls.is_empty() { "-".into() } else { controls.join(", ") }
        )?;
        writeln!(o, "- **Objective**: {}", escape(&m.objective.text))?;
        writeln!(
            o,
            "- **Current**: {} — {}; last evaluated {}, state since {}",
            m.value.map(|v| escape(&value_with_unit(v, &m.unit))).unwrap_or_else(|| "no value".into()),
            state_text(m.state.as_str(), m.anomalous),
            m.last_evaluated.as_deref().unwrap_or("never"),
            m.last_transition.as_deref().unwrap_or("-")
        )?;
        if let (Some(pop), Some(pass)) = (m.population, m.passing) {
            writeln!(
                o,
                "- **Population**: {pass} of {pop} objects pass{}",
                m.offenders_total
                    .map(|n| format!("; {n} offender{}", if n == 1 { "" } else { "s" }))
                    .unwrap_or_default()
            )?;
        }
        if let Some(t) = m.tenants_total {
            writeln!(
                o,
                "- **Tenants**: {t}, {} breached{}",
                m.tenants_breached.unwrap_or(0),
                m.tenants_anomalous.map(|n| format!(", {n} anomalous")).unwrap_or_default()
            )?;
        }
        if let Some(p) = &m.problem {
            writeln!(o, "- **Problem**: {}", escape(p))?;
        }
        writeln!(
            o,
            "- **Policies**: {}",
            if m.policies.is_empty() { "none".into() } else { escape(&m.policies.join(", ")) }
        )?;
        writeln!(o)?;
    }

    writeln!(o, "## Trends\n")?;
    writeln!(
        o,
        "Monthly aggregates (UTC months). Mean is time-weighted; Compliant is the share of observed time \
         the metric was Compliant or Warning.\n"
    )?;
    let untracked: Vec<String> =
        r.metrics.iter().filter(|m| m.monthly.is_empty()).map(|m| format!("`{}`", m.key())).collect();
    for m in r.metrics.iter().filter(|m| !m.monthly.is_empty()) {
        writeln!(
            o,
            "### {} (`{}`), objective {}\n",
            escape(&m.display_name),
            m.key(),
            escape(&m.objective.text)
        )?;
        writeln!(o, "| Month | Samples | Mean | Min | Max | Last | Compliant | Time in breach | Unknown |")?;
        writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|---:|")?;
        for b in &m.monthly {
            let v = |x: Option<f64>| x.map(num).unwrap_or_else(|| "-".into());
            writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                escape(&b.period),
                b.samples,
                v(b.mean),
                v(b.min),
                v(b.max),
                v(b.last),
                b.compliant_ratio.map(percent).unwrap_or_else(|| "-".into()),
                duration(b.time_in_breach_seconds as f64),
                duration(b.unknown_seconds as f64)
            )?;
        }
        writeln!(o)?;
    }
    if !untracked.is_empty() {
        writeln!(o, "No monthly trend recorded yet for: {}.\n", untracked.join(", "))?;
    }

    writeln!(o, "## Breaches\n")?;
    writeln!(
        o,
        "Breached episodes as recorded in status (recent ones; the operator keeps a bounded history). \
         MTTR is the mean duration of the recovered episodes listed.\n"
    )?;
    let breached: Vec<_> = r.metrics.iter().filter(|m| !m.breaches.is_empty()).collect();
    if breached.is_empty() {
        writeln!(o, "No breach recorded.\n")?;
    } else {
        writeln!(o, "| Metric | Breaches | Open | MTTR |")?;
        writeln!(o, "|---|---:|---:|---:|")?;
        for m in &breached {
            writeln!(
                o,
                "| `{}` | {} | {} | {} |",
                m.key(),
                m.breaches.len(),
                m.breaches.iter().filter(|b| b.open).count(),
                m.mttr_seconds.map(duration).unwrap_or_else(|| "-".into())
            )?;
        }
        writeln!(o, "\n| Metric | Since | Until | Duration |")?;
        writeln!(o, "|---|---|---|---:|")?;
        for m in &breached {
            for b in &m.breaches {
                writeln!(
                    o,
                    "| `{}` | {} | {} | {} |",
                    m.key(),
                    b.since,
                    b.until.as_deref().unwrap_or("open"),
                    duration(b.duration_seconds as f64)
                )?;
            }
        }
        writeln!(o)?;
    }

    writeln!(o, "## Remediation\n")?;
    let rules: Vec<String> = r
        .policies
        .iter()
        .flat_map(|p| {
            p.rules.iter().map(move |rule| {
                let actions: Vec<&str> = rule.actions.iter().map(|a| a.as_str()).collect();
                format!(
                    "- `{}` rule `{}` ({:?}): when {}, scope {}: {}",
                    p.key(),
                    escape(&rule.name),
                    p.mode,
                    escape(&rule.when),
                    escape(&rule.scope),
                    actions.join(", ")
                )
            })
        })
        .collect();
    if rules.is_empty() {
        writeln!(o, "No MetricPolicy defines a remediation rule.\n")?;
    } else {
        writeln!(o, "Rules:\n\n{}\n", rules.join("\n"))?;
    }
    if r.actions.is_empty() {
        writeln!(o, "No remediation action recorded.\n")?;
    } else {
        writeln!(
            o,
            "Actions recorded by the policies, oldest first. Planned actions come from DryRun policies: \
             they show the threshold triggered remediation, and nothing was changed.\n"
        )?;
        writeln!(o, "| Time | Policy | Rule | Metric | Action | Target | Outcome | Message |")?;
        writeln!(o, "|---|---|---|---|---|---|---|---|")?;
        for a in &r.actions {
            writeln!(
                o,
                "| {} | {} ({:?}) | {} | `{}` | {} | {} | **{}** | {} |",
                a.time,
                escape(&a.policy),
                a.mode,
                escape(&a.rule),
                a.metric,
                a.action.as_str(),
                escape(&a.target),
                a.outcome.as_str(),
                opt(&a.message)
            )?;
        }
        writeln!(o)?;
    }

    writeln!(o, "## Policies\n")?;
    if r.policies.is_empty() {
        writeln!(o, "No MetricPolicy.")?;
    }
    for p in &r.policies {
        writeln!(o, "### `{}`\n", p.key())?;
        if let Some(d) = &p.description {
            writeln!(o, "{}\n", escape(d))?;
        }
        writeln!(
            o,
            "- **Mode**: {:?}; **state**: {}; score {}; coverage {}; requires {}% compliant",
            p.mode,
            p.state.as_str(),
            p.score.map(|v| format!("{}%", num(v))).unwrap_or_else(|| "-".into()),
            p.coverage.map(|v| format!("{}%", num(v))).unwrap_or_else(|| "-".into()),
            num(p.min_compliant_percent)
        )?;
        let obligations: Vec<String> =
            p.compliance.iter().map(|c| format!("{} {}", escape(&c.framework), escape(&c.control))).collect();
        writeln!(
            o,
            "- **Obligations**: {}",
            if obligations.is_empty() { "-".into() } else { obligations.join(", ") }
        )?;
        writeln!(
            o,
            "- **Metrics**: {}",
            if p.metrics.is_empty() { "-".into() } else { escape(&p.metrics.join(", ")) }
        )?;
        writeln!(o)?;
    }
    Ok(())
}

fn state_text(state: &str, anomalous: bool) -> String {
    if anomalous { format!("**{state}** (anomalous)") } else { format!("**{state}**") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_html_and_cells() {
        assert_eq!(escape("a|b <i>x</i> *y*\nz"), "a\\|b &lt;i>x&lt;/i> \\*y\\* z");
        assert_eq!(escape("A & B &amp; >= 1"), "A & B &amp;amp; >= 1");
    }
}
