//! Remediation: deciding (pure, [`plan`]) and carrying out (the rest) what a MetricPolicy's
//! rules trigger: dry-run by default, bounded, idempotent and revertible.

pub mod events;
pub mod execute;
pub mod plan;
pub mod targets;
pub mod webhook;
