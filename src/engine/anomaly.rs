//! Anomaly detection: an exponentially weighted mean and standard deviation of a metric's
//! (or a tenant's) recent values, two numbers per series, so it fits in status. A value is
//! anomalous when it is more than `sensitivity` deviations from the baseline it is compared
//! with (the baseline before the value is folded in).

use super::trend::significant;
use crate::api::security_metric::{Anomaly, Baseline};

/// Smallest deviation used, relative to the baseline mean: a perfectly steady series has no
/// spread, and without a floor any change at all would be an anomaly.
pub const RELATIVE_FLOOR: f64 = 0.05;
/// Smallest deviation used when the mean is (near) zero.
pub const ABSOLUTE_FLOOR: f64 = 1e-6;

/// Samples needed before anything is flagged: half the window, at least three.
pub fn warm_up(spec: &Anomaly) -> i64 {
    (i64::from(spec.window) / 2).max(3)
}

/// Whether `value` is outside `baseline`.
pub fn is_anomalous(spec: &Anomaly, baseline: &Baseline, value: f64) -> bool {
    if baseline.samples < warm_up(spec) || !value.is_finite() {
        return false;
    }
    let spread = baseline.std_dev.max(baseline.mean.abs() * RELATIVE_FLOOR).max(ABSOLUTE_FLOOR);
    (value - baseline.mean).abs() > spec.sensitivity * spread
}

/// `baseline` with `value` folded in (EWMA with alpha = 2 / (window + 1), the usual span
/// equivalence: recent `window` samples carry most of the weight).
pub fn fold(spec: &Anomaly, baseline: Option<&Baseline>, value: f64) -> Baseline {
    if !value.is_finite() {
        return baseline.cloned().unwrap_or_default();
    }
    let Some(b) = baseline.filter(|b| b.samples > 0) else {
        return Baseline { mean: value, std_dev: 0.0, samples: 1 };
    };
    let alpha = 2.0 / (f64::from(spec.window.max(1)) + 1.0);
    let diff = value - b.mean;
    let increment = alpha * diff;
    let mean = b.mean + increment;
    let variance = (1.0 - alpha) * (b.std_dev * b.std_dev + diff * increment);
    Baseline {
        mean: significant(mean),
        std_dev: significant(variance.max(0.0).sqrt()),
        samples: b.samples + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(window: i32, sensitivity: f64) -> Anomaly {
        Anomaly { window, sensitivity }
    }

    /// A deterministic uniform noise in [-1, 1].
    struct Noise(u64);
    impl Noise {
        fn next(&mut self) -> f64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        }
    }

    /// Runs a series; returns the indexes flagged anomalous.
    fn flagged(spec: &Anomaly, series: impl IntoIterator<Item = f64>) -> Vec<usize> {
        let mut baseline: Option<Baseline> = None;
        let mut out = Vec::new();
        for (i, v) in series.into_iter().enumerate() {
            if baseline.as_ref().is_some_and(|b| is_anomalous(spec, b, v)) {
                out.push(i);
            }
            baseline = Some(fold(spec, baseline.as_ref(), v));
        }
        out
    }

    #[test]
    fn a_steady_noisy_series_raises_no_alarm() {
        let s = spec(20, 3.0);
        let mut noise = Noise(7);
        // Noise of ±5 around 10: the spread comes from the noise, not from the 5% floor.
        let series: Vec<f64> = (0..5000).map(|_| 10.0 + 5.0 * noise.next()).collect();
        assert_eq!(flagged(&s, series), Vec::<usize>::new());
    }

    #[test]
    fn a_step_change_is_flagged_at_the_first_evaluation_after_it() {
        let s = spec(10, 3.0);
        let mut noise = Noise(11);
        let mut series: Vec<f64> = (0..200).map(|_| 4.0 + 0.2 * noise.next()).collect();
        series.extend((0..50).map(|_| 16.0 + 0.2 * noise.next()));
        let hits = flagged(&s, series);
        assert_eq!(hits.first(), Some(&200), "detected at the step: {hits:?}");
        // The baseline adapts: a lasting change stops being an anomaly.
        assert!(hits.iter().all(|&i| i < 215), "{hits:?}");
    }

    #[test]
    fn a_drop_is_an_anomaly_too_and_nothing_is_flagged_during_warm_up() {
        let s = spec(6, 3.0);
        assert_eq!(warm_up(&s), 3);
        // 50 then 5 right away: only two samples in the baseline, too early to judge.
        assert_eq!(flagged(&s, [50.0, 50.0, 5.0]), Vec::<usize>::new());
        assert_eq!(flagged(&s, [50.0, 50.0, 50.0, 50.0, 5.0]), vec![4]);
    }

    #[test]
    fn a_perfectly_steady_series_tolerates_small_changes_only() {
        let s = spec(10, 3.0);
        let steady = std::iter::repeat_n(2.0, 30);
        assert_eq!(flagged(&s, steady.clone().chain([2.2])), Vec::<usize>::new(), "10% is within 3 x 5%");
        assert_eq!(flagged(&s, steady.chain([8.0])), vec![30]);
        let zeros = std::iter::repeat_n(0.0, 10);
        assert_eq!(flagged(&s, zeros.chain([1.0])), vec![10], "something from nothing");
    }

    #[test]
    fn non_finite_values_are_ignored() {
        let s = spec(5, 3.0);
        let b = fold(&s, None, 1.0);
        assert_eq!(fold(&s, Some(&b), f64::NAN), b);
        assert!(!is_anomalous(&s, &Baseline { mean: 1.0, std_dev: 0.0, samples: 10 }, f64::INFINITY));
    }
}
