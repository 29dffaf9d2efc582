//! Breach episodes: when a metric became Breached and when it recovered. Unknown neither
//! starts nor ends an episode (missing data is not a recovery); Compliant or Warning ends it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::security_metric::{Breach, MetricState};

/// Most episodes kept in status (newest first).
pub const MAX_BREACHES: usize = 20;

/// `breaches` (newest first) after an evaluation found `state` at `now`.
pub fn record(breaches: &mut Vec<Breach>, state: MetricState, now: &Time) {
    let open = breaches.first().is_some_and(|b| b.until.is_none());
    match state {
        MetricState::Breached if !open => {
            breaches.insert(0, Breach { since: now.clone(), until: None });
            breaches.truncate(MAX_BREACHES);
        }
        MetricState::Compliant | MetricState::Warning if open => breaches[0].until = Some(now.clone()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MetricState::*;
    use k8s_openapi::jiff::Timestamp;

    fn t(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    #[test]
    fn episodes_open_on_breach_survive_unknown_and_close_on_recovery() {
        let mut b = Vec::new();
        for (s, state) in [
            (0, Compliant),
            (10, Breached),
            (20, Breached),
            (30, Unknown),
            (40, Breached),
            (50, Warning),
            (60, Breached),
        ] {
            record(&mut b, state, &t(s));
        }
        assert_eq!(
            b,
            vec![Breach { since: t(60), until: None }, Breach { since: t(10), until: Some(t(50)) }]
        );
    }

    #[test]
    fn the_list_is_capped_keeping_the_newest() {
        let mut b = Vec::new();
        for i in 0..30 {
            record(&mut b, Breached, &t(i * 10));
            record(&mut b, Compliant, &t(i * 10 + 5));
        }
        assert_eq!(b.len(), MAX_BREACHES);
        assert_eq!(b[0].since, t(290));
        assert_eq!(b[MAX_BREACHES - 1].since, t(100));
    }
}
