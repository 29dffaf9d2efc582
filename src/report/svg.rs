//! Inline SVG trend charts for the HTML report: no script, no external asset, printable.

use std::fmt::Write;

use super::html::escape;
use super::model::{Bucket, MetricDetail, num, percent, value_with_unit};

const W: f64 = 600.0;
const H: f64 = 260.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 88.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 52.0;

/// A "nice" step (1, 2, 2.5 or 5 × 10^k) for about `ticks` intervals over `span`.
fn nice_step(span: f64, ticks: f64) -> f64 {
    let raw = (span / ticks).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 2.5 {
        2.5
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// The value axis: from, to, step.
fn axis(m: &MetricDetail) -> (f64, f64, f64) {
    let mut values: Vec<f64> =
        m.monthly.iter().flat_map(|b| [b.min, b.max, b.mean, b.last]).flatten().collect();
    values.push(m.objective.target);
    values.extend(m.objective.warning);
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min).min(0.0);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if m.unit == "Percent" && lo >= 0.0 && hi <= 100.0 {
        return (0.0, 100.0, 20.0);
    }
    let hi = if hi <= lo { lo + 1.0 } else { hi };
    let step = nice_step(hi - lo, 5.0);
    ((lo / step).floor() * step, (hi / step).ceil() * step, step)
}

/// A line chart of a metric's monthly trend: mean (line and points), min–max range (bars),
/// target and warning (dashed lines), compliant share under each month.
pub fn monthly_chart(m: &MetricDetail) -> String {
    let mut o = String::new();
    // Writing to a String cannot fail.
    let _ = chart(m, &m.monthly, &mut o);
    o
}

fn chart(m: &MetricDetail, buckets: &[Bucket], o: &mut String) -> std::fmt::Result {
    let (lo, hi, step) = axis(m);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let y = |v: f64| TOP + plot_h - (v - lo) / (hi - lo) * plot_h;
    let band = plot_w / buckets.len().max(1) as f64;
    let x = |i: usize| LEFT + band * (i as f64 + 0.5);
    let f = |v: f64| format!("{v:.1}");
    let unit = escape(&m.unit);
    writeln!(
        o,
        r#"<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="Monthly trend of {}">"#,
        escape(&m.display_name)
    )?;
    writeln!(o, r##"<rect x="0" y="0" width="{W}" height="{H}" fill="#fff"/>"##)?;
    // Legend.
    let legend = [
        (
            r##"<line x1="0" y1="0" x2="18" y2="0" stroke="#1f5fbf" stroke-width="2.5"/><circle cx="9" cy="0" r="3" fill="#1f5fbf"/>"##,
            "mean",
        ),
        (r##"<rect x="4" y="-6" width="10" height="12" fill="#9ec5f8" fill-opacity="0.7"/>"##, "min–max"),
        (
            r##"<line x1="0" y1="0" x2="18" y2="0" stroke="#2e7d32" stroke-width="1.5" stroke-dasharray="6 3"/>"##,
            "target",
        ),
        (
            r##"<line x1="0" y1="0" x2="18" y2="0" stroke="#e08a00" stroke-width="1.5" stroke-dasharray="2 3"/>"##,
            "warning",
        ),
    ];
    let mut lx = LEFT;
    for (glyph, label) in legend {
        if label == "warning" && m.objective.warning.is_none() {
            continue;
        }
        writeln!(
            o,
            r#"<g transform="translate({lx},14)">{glyph}<text x="24" y="4" class="legend">{label}</text></g>"#
        )?;
        lx += 40.0 + 7.0 * label.chars().count() as f64;
    }
    // Value axis with grid.
    let mut v = lo;
    while v <= hi + step * 1e-9 {
        let yy = f(y(v));
        writeln!(
            o,
            r##"<line x1="{LEFT}" y1="{yy}" x2="{}" y2="{yy}" stroke="#e3e6ea"/><text x="{}" y="{}" class="tick" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            f(y(v) + 4.0),
            num(v)
        )?;
        v += step;
    }
    writeln!(
        o,
        r#"<text class="axis" transform="translate(14,{}) rotate(-90)" text-anchor="middle">{unit}</text>"#,
        f(TOP + plot_h / 2.0)
    )?;
    writeln!(
        o,
        r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{}" stroke="#6b7280"/><line x1="{LEFT}" y1="{}" x2="{}" y2="{}" stroke="#6b7280"/>"##,
        TOP + plot_h,
        TOP + plot_h,
        W - RIGHT,
        TOP + plot_h
    )?;
    // Ranges.
    for (i, b) in buckets.iter().enumerate() {
        if let (Some(min), Some(max)) = (b.min, b.max) {
            let top = y(max);
            let height = (y(min) - top).max(1.5);
            writeln!(
                o,
                r##"<rect x="{}" y="{}" width="{}" height="{}" fill="#9ec5f8" fill-opacity="0.7"><title>{}: min {}, max {}</title></rect>"##,
                f(x(i) - band * 0.18),
                f(top),
                f(band * 0.36),
                f(height),
                escape(&b.period),
                escape(&value_with_unit(min, &m.unit)),
                escape(&value_with_unit(max, &m.unit))
            )?;
        }
    }
    // Objective lines, labelled in the right margin.
    let objective = [
        (Some(m.objective.target), "#2e7d32", "6 3", "target"),
        (m.objective.warning, "#e08a00", "2 3", "warning"),
    ];
    for (value, color, dash, label) in objective {
        let Some(value) = value else { continue };
        let yy = f(y(value));
        writeln!(
            o,
            r#"<line x1="{LEFT}" y1="{yy}" x2="{}" y2="{yy}" stroke="{color}" stroke-width="1.5" stroke-dasharray="{dash}"/><text x="{}" y="{}" class="mark" fill="{color}">{label} {}</text>"#,
            W - RIGHT,
            W - RIGHT + 6.0,
            f(y(value) + 4.0),
            escape(&num(value))
        )?;
    }
    // Means.
    let points: Vec<(f64, f64)> =
        buckets.iter().enumerate().filter_map(|(i, b)| b.mean.map(|v| (x(i), y(v)))).collect();
    if points.len() > 1 {
        let path: Vec<String> = points.iter().map(|(a, b)| format!("{},{}", f(*a), f(*b))).collect();
        writeln!(
            o,
            r##"<polyline points="{}" fill="none" stroke="#1f5fbf" stroke-width="2.5"/>"##,
            path.join(" ")
        )?;
    }
    for (i, b) in buckets.iter().enumerate() {
        if let Some(mean) = b.mean {
            writeln!(
                o,
                r##"<circle cx="{}" cy="{}" r="4" fill="#1f5fbf"><title>{}: mean {}</title></circle>"##,
                f(x(i)),
                f(y(mean)),
                escape(&b.period),
                escape(&value_with_unit(mean, &m.unit))
            )?;
        }
        writeln!(
            o,
            r#"<text x="{}" y="{}" class="tick" text-anchor="middle">{}</text>"#,
            f(x(i)),
            f(TOP + plot_h + 16.0),
            escape(&b.period)
        )?;
        let share = b.compliant_ratio.map(percent).unwrap_or_else(|| "–".into());
        writeln!(
            o,
            r#"<text x="{}" y="{}" class="share" text-anchor="middle">{share}</text>"#,
            f(x(i)),
            f(TOP + plot_h + 32.0)
        )?;
    }
    writeln!(
        o,
        r#"<text x="{}" y="{}" class="share" text-anchor="end">compliant</text>"#,
        LEFT - 6.0,
        f(TOP + plot_h + 32.0)
    )?;
    writeln!(o, "</svg>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(100.0, 5.0), 20.0);
        assert_eq!(nice_step(7.0, 5.0), 2.0);
        assert_eq!(nice_step(1200.0, 5.0), 250.0);
    }
}
