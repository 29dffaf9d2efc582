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

/// At most this many intervals on the value axis, whatever the values.
const MAX_TICKS: usize = 12;

/// The value axis: its range and its tick values (at most [`MAX_TICKS`] + 1).
#[derive(Debug, PartialEq)]
struct Axis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

impl Axis {
    /// Where `v` sits between `lo` (0) and `hi` (1); halves first, so that a range wider than
    /// f64 allows (-1e308 to 1e308) still divides. A non-finite value sits at the bottom.
    fn ratio(&self, v: f64) -> f64 {
        let r = (v / 2.0 - self.lo / 2.0) / (self.hi / 2.0 - self.lo / 2.0);
        if r.is_finite() { r } else { 0.0 }
    }
}

fn axis(m: &MetricDetail) -> Axis {
    let mut values: Vec<f64> =
        m.monthly.iter().flat_map(|b| [b.min, b.max, b.mean, b.last]).flatten().collect();
    values.push(m.objective.target);
    values.extend(m.objective.warning);
    axis_of(&values, m.unit == "Percent")
}

/// The axis over `values` (non-finite ones ignored) and 0: nice steps when they fit in
/// [`MAX_TICKS`] intervals of finite values, else the range in five equal parts. Bounded for
/// any input: huge, tiny, equal, NaN or infinite values.
fn axis_of(values: &[f64], percent: bool) -> Axis {
    let finite = || values.iter().copied().filter(|v| v.is_finite());
    let lo = finite().fold(0.0, f64::min);
    let hi = finite().fold(f64::NEG_INFINITY, f64::max);
    if percent && lo >= 0.0 && hi <= 100.0 {
        return Axis { lo: 0.0, hi: 100.0, ticks: (0..=5).map(|i| f64::from(i) * 20.0).collect() };
    }
    // lo <= 0: an empty or flat range becomes [lo, 0] or [0, 1].
    let hi = if hi > lo {
        hi
    } else if lo < 0.0 {
        0.0
    } else {
        1.0
    };
    let step = nice_step(hi - lo, 5.0);
    let (from, to) = ((lo / step).floor() * step, (hi / step).ceil() * step);
    let intervals = ((to - from) / step).round();
    if [step, from, to, intervals].iter().all(|v| v.is_finite())
        && step > 0.0
        && (1.0..=MAX_TICKS as f64).contains(&intervals)
    {
        let ticks = (0..=intervals as usize).map(|i| from + step * i as f64).collect();
        return Axis { lo: from, hi: to, ticks };
    }
    // Interpolated, never lo + i × step: that overflows for a range wider than f64::MAX.
    let at = |t: f64| lo * (1.0 - t) + hi * t;
    Axis { lo, hi, ticks: (0..=5).map(|i| at(f64::from(i) / 5.0)).collect() }
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
    let axis = axis(m);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let y = |v: f64| TOP + plot_h - axis.ratio(v) * plot_h;
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
    for &v in &axis.ticks {
        let yy = f(y(v));
        writeln!(
            o,
            r##"<line x1="{LEFT}" y1="{yy}" x2="{}" y2="{yy}" stroke="#e3e6ea"/><text x="{}" y="{}" class="tick" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            f(y(v) + 4.0),
            num(v)
        )?;
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

    #[test]
    fn axes_of_ordinary_values_are_nice() {
        assert_eq!(axis_of(&[12.0, 95.0], true).ticks, vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
        assert_eq!(axis_of(&[0.0, 1200.0], false).ticks, vec![0.0, 250.0, 500.0, 750.0, 1000.0, 1250.0]);
        assert_eq!(axis_of(&[5.0, 5.0], false).ticks, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(axis_of(&[], false).ticks, vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]);
    }

    #[test]
    fn axes_of_extreme_values_are_bounded() {
        for pair in [
            [1e300, 1e300 + 1.0],
            [f64::MAX, f64::MIN],
            [f64::MAX, f64::MAX],
            [f64::MIN, f64::MIN],
            [1e15, 1e15 + 1e-3],
            [f64::MIN_POSITIVE, 5e-324],
            [f64::NAN, f64::INFINITY],
            [f64::NEG_INFINITY, 1e308],
            [-1e308, 1e308],
        ] {
            let a = axis_of(&pair, false);
            assert!((2..=MAX_TICKS + 1).contains(&a.ticks.len()), "{pair:?}: {a:?}");
            assert!(a.ticks.iter().all(|t| t.is_finite()) && a.lo < a.hi, "{pair:?}: {a:?}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(5000))]
        #[test]
        fn any_pair_of_values_gives_a_bounded_finite_axis(
            a in proptest::num::f64::ANY,
            b in proptest::num::f64::ANY,
            percent in proptest::bool::ANY,
        ) {
            let started = std::time::Instant::now();
            let axis = axis_of(&[a, b], percent);
            proptest::prop_assert!(started.elapsed() < std::time::Duration::from_millis(50));
            proptest::prop_assert!((2..=MAX_TICKS + 1).contains(&axis.ticks.len()), "{axis:?}");
            proptest::prop_assert!(axis.ticks.iter().all(|t| t.is_finite()), "{axis:?}");
            proptest::prop_assert!(axis.lo < axis.hi, "{axis:?}");
            for v in [a, b] {
                proptest::prop_assert!(axis.ratio(v).is_finite());
            }
        }
    }
}
