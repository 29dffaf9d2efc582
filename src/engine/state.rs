//! From a value to a state against an objective.

use crate::api::security_metric::{MetricState, Objective, Operator};

fn holds(op: Operator, value: f64, bound: f64) -> bool {
    match op {
        Operator::Ge => value >= bound,
        Operator::Le => value <= bound,
        Operator::Gt => value > bound,
        Operator::Lt => value < bound,
        Operator::Eq => (value - bound).abs() <= f64::EPSILON * bound.abs().max(1.0),
    }
}

/// Compliant when the target holds; Warning when only the warning bound holds; Breached
/// otherwise; Unknown without a value.
pub fn state_of(objective: &Objective, value: Option<f64>) -> MetricState {
    let Some(v) = value else { return MetricState::Unknown };
    if !v.is_finite() {
        return MetricState::Unknown;
    }
    if holds(objective.operator, v, objective.target) {
        MetricState::Compliant
    } else if objective.warning.is_some_and(|w| holds(objective.operator, v, w)) {
        MetricState::Warning
    } else {
        MetricState::Breached
    }
}

/// The objective for display, e.g. `>= 95`.
pub fn describe(objective: &Objective) -> String {
    format!("{} {}", objective.operator.as_str(), objective.target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use MetricState::*;

    fn obj(op: Operator, target: f64, warning: Option<f64>) -> Objective {
        Objective { operator: op, target, warning }
    }

    #[test]
    fn greater_or_equal_boundaries() {
        let o = obj(Operator::Ge, 95.0, Some(90.0));
        assert_eq!(state_of(&o, Some(100.0)), Compliant);
        assert_eq!(state_of(&o, Some(95.0)), Compliant, "exactly at target");
        assert_eq!(state_of(&o, Some(94.99)), Warning);
        assert_eq!(state_of(&o, Some(90.0)), Warning, "exactly at warning");
        assert_eq!(state_of(&o, Some(89.99)), Breached);
    }

    #[test]
    fn strict_operators_boundaries() {
        let o = obj(Operator::Gt, 0.0, None);
        assert_eq!(state_of(&o, Some(0.0)), Breached, "exactly at a strict target");
        assert_eq!(state_of(&o, Some(0.1)), Compliant);
        let o = obj(Operator::Lt, 10.0, Some(20.0));
        assert_eq!(state_of(&o, Some(10.0)), Warning);
        assert_eq!(state_of(&o, Some(20.0)), Breached, "exactly at a strict warning");
        assert_eq!(state_of(&o, Some(9.0)), Compliant);
    }

    #[test]
    fn less_or_equal_and_equal() {
        let o = obj(Operator::Le, 0.0, Some(2.0));
        assert_eq!(state_of(&o, Some(0.0)), Compliant);
        assert_eq!(state_of(&o, Some(2.0)), Warning);
        assert_eq!(state_of(&o, Some(3.0)), Breached);
        let o = obj(Operator::Eq, 0.0, None);
        assert_eq!(state_of(&o, Some(0.0)), Compliant);
        assert_eq!(state_of(&o, Some(1.0)), Breached);
    }

    #[test]
    fn no_value_is_unknown_never_passing() {
        let o = obj(Operator::Ge, 0.0, None);
        assert_eq!(state_of(&o, None), Unknown);
        assert_eq!(state_of(&o, Some(f64::NAN)), Unknown);
    }
}
