//! Kubernetes Events for remediation actions, published at most once.
//!
//! Each Event's name is derived from what it reports (policy, rule, metric, action, target,
//! episode, outcome), so publishing it again after a restart is an AlreadyExists conflict,
//! not a duplicate.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};

/// The `reportingController` of every Event the operator publishes.
pub const REPORTING_CONTROLLER: &str = "secmetrics.io/secmetrics";

/// Hex SHA-256 of `parts`, each length-prefixed so different splits never collide.
pub fn stable_hash(parts: &[&str]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(&(p.len() as u64).to_be_bytes());
        ctx.update(p.as_bytes());
    }
    ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// What one Event says.
#[derive(Clone, Debug)]
pub struct Notice<'a> {
    /// The object the Event is about.
    pub regarding: ObjectReference,
    /// Normal or Warning.
    pub warning: bool,
    /// CamelCase reason, e.g. `RemediationApplied`.
    pub reason: &'a str,
    /// The action (`Remediate`, `Revert`, ...).
    pub action: &'a str,
    /// Human-readable note.
    pub note: String,
    /// Identity of the Event (see module docs).
    pub identity: String,
}

/// Publishes `notice` unless an Event with the same identity exists. Errors are returned for
/// the caller to log; a missing Event never blocks a remediation.
pub async fn publish_once(client: &Client, notice: Notice<'_>) -> Result<(), kube::Error> {
    let name_base = notice.regarding.name.clone().unwrap_or_default();
    let mut base: String = name_base.chars().take(200).collect();
    base = base.trim_end_matches(['.', '-']).to_string();
    let name = format!("{base}.{}", &notice.identity[..16.min(notice.identity.len())]);
    let namespace = notice.regarding.namespace.clone().unwrap_or_else(|| "default".to_string());
    let event = Event {
        metadata: ObjectMeta { name: Some(name), namespace: Some(namespace.clone()), ..Default::default() },
        event_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
        type_: Some(if notice.warning { "Warning" } else { "Normal" }.to_string()),
        reason: Some(notice.reason.to_string()),
        action: Some(notice.action.to_string()),
        note: Some(crate::api::conditions::truncate(notice.note, 1024)),
        regarding: Some(notice.regarding),
        reporting_controller: Some(REPORTING_CONTROLLER.to_string()),
        reporting_instance: Some(
            std::env::var("POD_NAME")
                .unwrap_or_else(|_| "secmetrics".to_string())
                .chars()
                .take(128)
                .collect(),
        ),
        ..Default::default()
    };
    let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
    match api.create(&PostParams::default(), &event).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_hash_is_stable_and_split_sensitive() {
        assert_eq!(stable_hash(&["a", "bc"]), stable_hash(&["a", "bc"]));
        assert_ne!(stable_hash(&["a", "bc"]), stable_hash(&["ab", "c"]));
        // A fixed value (SHA-256 of be64(1) || "x"): identities must not change between releases.
        assert_eq!(stable_hash(&["x"]), "028f0df5b8596fbcd10c9720b7a4784f8e7e04f629bd5a62bfbdf139678b6624");
        assert_eq!(stable_hash(&[]).len(), 64);
    }
}
