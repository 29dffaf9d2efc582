//! Daily and monthly trend buckets, folded from evaluations. Pure: the clock is an argument,
//! so tests simulate months of evaluations in milliseconds.
//!
//! Each status write folds the span since the previous written evaluation into the buckets,
//! attributed to the previous value and state (they held until now: any change in between
//! would have been written). Folding only at writes is therefore exact, and an evaluation
//! that is not written changes nothing. Span ends are whole seconds, so consecutive spans
//! tile the timeline without rounding drift.

use k8s_openapi::jiff::{Timestamp, tz::TimeZone};

use crate::api::security_metric::{MetricState, Trend, TrendBucket};

/// Most daily buckets kept.
pub const MAX_DAILY: usize = 31;
/// Most monthly buckets kept.
pub const MAX_MONTHLY: usize = 12;

/// What held during a span: the value and state of the evaluation that started it.
#[derive(Clone, Copy, Debug)]
pub struct Held {
    pub value: Option<f64>,
    pub state: MetricState,
}

/// Folds one evaluation into `trend`: the span `[since, now)` with what `held` (if there is
/// a previous evaluation; spans longer than `max_gap` count only up to `max_gap`, the rest is
/// not observed), then the new point (`value` at `now`).
pub fn record(
    trend: &mut Trend,
    previous: Option<(Timestamp, Held)>,
    now: Timestamp,
    value: Option<f64>,
    max_gap: std::time::Duration,
) {
    let now_s = now.as_second();
    if let Some((since, held)) = previous {
        let start = since.as_second();
        let end = now_s.min(start.saturating_add(max_gap.as_secs() as i64));
        fold_span(trend, start, end, held);
    }
    let (day, month) = periods(now_s);
    for (buckets, period) in [(&mut trend.daily, day), (&mut trend.monthly, month)] {
        let b = bucket(buckets, period);
        b.samples += 1;
        if let Some(v) = value.filter(|v| v.is_finite()) {
            b.min = Some(b.min.map_or(v, |m| m.min(v)));
            b.max = Some(b.max.map_or(v, |m| m.max(v)));
            b.mean = Some(b.mean.unwrap_or(v));
            b.last = Some(v);
        }
    }
    trim(&mut trend.daily, MAX_DAILY);
    trim(&mut trend.monthly, MAX_MONTHLY);
}

/// Adds `[start, end)` (Unix seconds) to the daily and monthly buckets it overlaps.
fn fold_span(trend: &mut Trend, start: i64, end: i64, held: Held) {
    let mut t = start;
    while t < end {
        let piece_end = end.min(next_day(t));
        let secs = piece_end - t;
        let (day, month) = periods(t);
        for (buckets, period) in [(&mut trend.daily, day), (&mut trend.monthly, month)] {
            add(bucket(buckets, period), secs, held);
        }
        t = piece_end;
    }
}

fn add(b: &mut TrendBucket, secs: i64, held: Held) {
    let value = held.value.filter(|v| v.is_finite());
    let valued = b.observed_seconds - b.unknown_seconds;
    b.observed_seconds += secs;
    match (held.state, value) {
        (MetricState::Unknown, _) | (_, None) => b.unknown_seconds += secs,
        (state, Some(v)) => {
            if state == MetricState::Breached {
                b.time_in_breach_seconds += secs;
            }
            let mean = b.mean.unwrap_or(v);
            // Not rounded: the mean is a running state, and rounding each fold drifts
            // (six significant digits drifted by 5e-5 relative over a month).
            b.mean = Some((mean * valued as f64 + v * secs as f64) / (valued + secs) as f64);
            b.min = Some(b.min.map_or(v, |m| m.min(v)));
            b.max = Some(b.max.map_or(v, |m| m.max(v)));
        }
    }
    let compliant = b.observed_seconds - b.unknown_seconds - b.time_in_breach_seconds;
    b.compliant_ratio = (b.observed_seconds > 0).then(|| round(compliant as f64 / b.observed_seconds as f64));
}

/// The bucket for `period`, created in order if missing (periods sort as strings).
fn bucket(buckets: &mut Vec<TrendBucket>, period: String) -> &mut TrendBucket {
    let i = match buckets.binary_search_by(|b| b.period.as_str().cmp(&period)) {
        Ok(i) => i,
        Err(i) => {
            buckets.insert(i, TrendBucket { period, ..Default::default() });
            i
        }
    };
    &mut buckets[i]
}

fn trim(buckets: &mut Vec<TrendBucket>, max: usize) {
    if buckets.len() > max {
        buckets.drain(..buckets.len() - max);
    }
}

/// The UTC day (`2026-11-28`) and month (`2026-11`) of a Unix second.
fn periods(second: i64) -> (String, String) {
    let date = Timestamp::from_second(second).unwrap_or(Timestamp::UNIX_EPOCH).to_zoned(TimeZone::UTC).date();
    (
        format!("{:04}-{:02}-{:02}", date.year(), date.month(), date.day()),
        format!("{:04}-{:02}", date.year(), date.month()),
    )
}

/// The first second of the UTC day after the one holding `second`.
fn next_day(second: i64) -> i64 {
    (second.div_euclid(86_400) + 1) * 86_400
}

fn round(v: f64) -> f64 {
    (v * 10_000.0).round() / 10_000.0
}

/// `v` to six significant digits.
pub(crate) fn significant(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let scale = 10f64.powi(6 - v.abs().log10().ceil() as i32);
    (v * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const HOUR: i64 = 3600;
    const DAY: i64 = 86_400;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn held(value: f64, state: MetricState) -> Held {
        Held { value: Some(value), state }
    }

    /// 2026-01-01T00:00:00Z.
    const JAN_1: i64 = 1_767_225_600;

    #[test]
    fn four_hundred_days_keep_exactly_31_daily_and_12_monthly_buckets() {
        let mut trend = Trend::default();
        let step = 10 * 60; // an evaluation every 10 minutes
        let mut previous: Option<(Timestamp, Held)> = None;
        let mut t = JAN_1;
        let end = JAN_1 + 400 * DAY;
        while t < end {
            // Day d of the run: value d % 10; Breached on odd days, Compliant on even ones.
            let d = (t - JAN_1) / DAY;
            let h = held(
                (d % 10) as f64,
                if d % 2 == 1 { MetricState::Breached } else { MetricState::Compliant },
            );
            record(&mut trend, previous, ts(t), h.value, Duration::from_secs(900));
            previous = Some((ts(t), h));
            t += step;
        }
        assert_eq!(trend.daily.len(), 31);
        assert_eq!(trend.monthly.len(), 12);
        // The newest day is 2027-02-04 (day 399), the oldest kept is day 369.
        assert_eq!(trend.daily.last().unwrap().period, "2027-02-04");
        assert_eq!(trend.daily.first().unwrap().period, "2027-01-05");
        assert_eq!(trend.monthly.last().unwrap().period, "2027-02");
        assert_eq!(trend.monthly.first().unwrap().period, "2026-03");

        // A full day in the middle: 144 evaluations, observed all day, value constant.
        let day = trend.daily.iter().find(|b| b.period == "2027-01-10").unwrap(); // day 374
        assert_eq!(day.samples, 144);
        assert_eq!(day.observed_seconds, DAY);
        assert_eq!(day.min, Some(4.0));
        assert_eq!(day.max, Some(4.0));
        assert_eq!(day.mean, Some(4.0));
        assert_eq!(day.compliant_ratio, Some(1.0), "an even day is Compliant");
        assert_eq!(day.time_in_breach_seconds, 0);
        let odd = trend.daily.iter().find(|b| b.period == "2027-01-11").unwrap();
        assert_eq!(odd.time_in_breach_seconds, DAY);
        assert_eq!(odd.compliant_ratio, Some(0.0));

        // A full month: every second observed, half-ish of the days Breached.
        let march = trend.monthly.iter().find(|b| b.period == "2026-03").unwrap();
        assert_eq!(march.observed_seconds, 31 * DAY);
        assert_eq!(march.samples, 31 * 144);
        // 2026-03-01 is day 59 (odd): odd days of March are days 59, 61, ..., 89 → 16 days.
        assert_eq!(march.time_in_breach_seconds, 16 * DAY);
        assert_eq!(march.compliant_ratio, Some(round(15.0 / 31.0)));
        assert_eq!(march.min, Some(0.0));
        assert_eq!(march.max, Some(9.0));
        // Days 59..=89: values (d % 10), time-weighted equally.
        let mean = (59..=89).map(|d| (d % 10) as f64).sum::<f64>() / 31.0;
        assert!((march.mean.unwrap() - mean).abs() < 1e-9, "{:?} vs {mean}", march.mean);
    }

    #[test]
    fn a_span_across_midnight_is_split_between_days_and_months() {
        let mut trend = Trend::default();
        let before = JAN_1 - HOUR; // 2025-12-31T23:00Z
        record(&mut trend, None, ts(before), Some(1.0), Duration::from_secs(4 * 3600));
        record(
            &mut trend,
            Some((ts(before), held(1.0, MetricState::Breached))),
            ts(JAN_1 + 2 * HOUR),
            Some(3.0),
            Duration::from_secs(4 * 3600),
        );
        let periods: Vec<_> = trend.daily.iter().map(|b| (b.period.as_str(), b.observed_seconds)).collect();
        assert_eq!(periods, [("2025-12-31", HOUR), ("2026-01-01", 2 * HOUR)]);
        let months: Vec<_> =
            trend.monthly.iter().map(|b| (b.period.as_str(), b.time_in_breach_seconds)).collect();
        assert_eq!(months, [("2025-12", HOUR), ("2026-01", 2 * HOUR)]);
        let jan = &trend.daily[1];
        assert_eq!((jan.min, jan.max, jan.last), (Some(1.0), Some(3.0), Some(3.0)));
        assert_eq!(jan.mean, Some(1.0), "the new value has held for no time yet");
    }

    #[test]
    fn gaps_longer_than_max_gap_are_not_observed_and_unknown_time_is_counted() {
        let mut trend = Trend::default();
        record(&mut trend, None, ts(JAN_1), Some(5.0), Duration::from_secs(600));
        // The operator was away for two hours: only 10 minutes count.
        record(
            &mut trend,
            Some((ts(JAN_1), held(5.0, MetricState::Compliant))),
            ts(JAN_1 + 2 * HOUR),
            None,
            Duration::from_secs(600),
        );
        let unknown = Held { value: None, state: MetricState::Unknown };
        record(
            &mut trend,
            Some((ts(JAN_1 + 2 * HOUR), unknown)),
            ts(JAN_1 + 2 * HOUR + 300),
            Some(7.0),
            Duration::from_secs(600),
        );
        let b = &trend.daily[0];
        assert_eq!(b.observed_seconds, 900);
        assert_eq!(b.unknown_seconds, 300);
        assert_eq!(b.compliant_ratio, Some(round(600.0 / 900.0)), "Unknown time is never compliant");
        assert_eq!(b.mean, Some(5.0), "the mean covers valued time only");
        assert_eq!(b.samples, 3);
        assert_eq!(b.last, Some(7.0));
    }
}
