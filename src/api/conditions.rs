//! Building status conditions deterministically.
//!
//! A condition's `lastTransitionTime` moves only when its status flips, so recomputing the
//! same conditions yields the same status and the controller never triggers itself.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types used by secmetrics resources.
pub const READY: &str = "Ready";
/// The metric's source could be read.
pub const SOURCE_AVAILABLE: &str = "SourceAvailable";
/// The metric's expressions compiled.
pub const EXPRESSION_VALID: &str = "ExpressionValid";

/// A condition as computed by a reconcile, before timestamps are merged in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewCondition {
    /// Condition type, e.g. `Ready`.
    pub type_: &'static str,
    /// True or False.
    pub status: bool,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable message saying exactly what is wrong (or right).
    pub message: String,
}

impl NewCondition {
    /// A condition of `type_` with `status`, `reason` and `message`.
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        NewCondition { type_, status, reason: reason.into(), message: message.into() }
    }
}

/// Merges freshly computed conditions with the previous ones, keeping each previous
/// `lastTransitionTime` unless that condition's status changed.
pub fn merge(
    previous: &[Condition],
    new: Vec<NewCondition>,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    new.into_iter()
        .map(|c| {
            let status = if c.status { "True" } else { "False" }.to_string();
            let last_transition_time = previous
                .iter()
                .find(|p| p.type_ == c.type_ && p.status == status)
                .map(|p| p.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: c.type_.to_string(),
                status,
                reason: c.reason,
                message: truncate(c.message, 1024),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// Bounds a message so a hostile or huge error cannot bloat status.
pub fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max.saturating_sub(3);
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn keeps_transition_time_while_status_holds() {
        let first = merge(&[], vec![NewCondition::new(READY, true, "Evaluated", "ok")], Some(1), &t(100));
        assert_eq!(first[0].last_transition_time, t(100));
        let second =
            merge(&first, vec![NewCondition::new(READY, true, "Evaluated", "still ok")], Some(1), &t(200));
        assert_eq!(second[0].last_transition_time, t(100));
        assert_eq!(second[0].message, "still ok");
        let third = merge(&second, vec![NewCondition::new(READY, false, "Error", "bad")], Some(2), &t(300));
        assert_eq!(third[0].last_transition_time, t(300));
        assert_eq!(third[0].status, "False");
        assert_eq!(third[0].observed_generation, Some(2));
    }

    #[test]
    fn truncates_on_char_boundary() {
        let s = truncate("é".repeat(1000), 11);
        assert!(s.len() <= 11 && s.ends_with("..."));
    }
}
