//! Leader election on a `coordination.k8s.io` Lease, with fencing.
//!
//! Every replica keeps its watches and caches warm; only the leader writes status and acts.
//! A small loop of our own rather than a crate: the property that matters here is that a
//! leader that cannot renew stops writing *before* another replica may take the lease over,
//! and the crates we looked at (kube-lease-manager 0.13) keep reporting leadership while
//! renewals fail. Leadership is therefore a deadline, not a flag: it lasts `renew_deadline`
//! from the start of the last successful renewal, and a replica only takes over a lease it has
//! seen unchanged for `lease_duration` (> `renew_deadline`) on its own clock (client-go's rule,
//! immune to clock skew between nodes).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use tokio::time::Instant;
use tracing::{info, warn};

/// Timing of the election.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// How long a lease is valid after its last renewal.
    pub lease_duration: Duration,
    /// How long the leader keeps leading after the start of its last successful renewal.
    pub renew_deadline: Duration,
    /// How often to try to acquire or renew.
    pub retry_period: Duration,
}

impl Default for Timing {
    /// client-go's defaults: 15s, 10s, 2s.
    fn default() -> Self {
        Timing {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Whether this replica may write. Cheap to clone and to ask.
#[derive(Clone, Debug)]
pub struct Leadership {
    until: Arc<Mutex<Option<Instant>>>,
}

impl Leadership {
    /// Always the leader (leader election disabled: a single replica).
    pub fn always() -> Self {
        Leadership {
            until: Arc::new(Mutex::new(Some(Instant::now() + Duration::from_secs(100 * 365 * 86_400)))),
        }
    }

    fn none() -> Self {
        Leadership { until: Arc::new(Mutex::new(None)) }
    }

    /// Whether this replica leads now: its last renewal is recent enough.
    pub fn is_leader(&self) -> bool {
        self.until.lock().map(|u| u.is_some_and(|u| Instant::now() < u)).unwrap_or(false)
    }

    fn extend(&self, until: Instant) {
        if let Ok(mut u) = self.until.lock() {
            *u = Some(until);
        }
    }

    fn revoke(&self) {
        if let Ok(mut u) = self.until.lock() {
            *u = None;
        }
    }
}

/// Starts the election loop for `lease` in `namespace` as `identity`; returns the handle the
/// controllers ask before every write.
pub fn start(client: Client, namespace: &str, lease: &str, identity: String, timing: Timing) -> Leadership {
    let leadership = Leadership::none();
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let handle = leadership.clone();
    let lease = lease.to_string();
    tokio::spawn(async move {
        let mut observed: Option<(String, Instant)> = None; // (resourceVersion, when we saw it change)
        let mut was_leader = false;
        loop {
            let started = Instant::now();
            match try_acquire_or_renew(&api, &lease, &identity, timing, &mut observed).await {
                Ok(true) => handle.extend(started + timing.renew_deadline),
                Ok(false) => handle.revoke(),
                Err(e) => warn!(error = %e, lease = %lease, "leader election: renewing failed"),
            }
            let leading = handle.is_leader();
            if leading != was_leader {
                info!(lease = %lease, identity = %identity, leading, "leadership changed");
                crate::metrics::LEADER.set(i64::from(leading));
                if !leading {
                    crate::metrics::forget_all();
                }
                was_leader = leading;
            }
            tokio::time::sleep(timing.retry_period).await;
        }
    });
    leadership
}

fn now_micro() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// One round: Ok(true) when this replica holds the lease after it.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    name: &str,
    identity: &str,
    timing: Timing,
    observed: &mut Option<(String, Instant)>,
) -> Result<bool, kube::Error> {
    let seconds = timing.lease_duration.as_secs() as i32;
    let Some(mut lease) = api.get_opt(name).await? else {
        let lease = Lease {
            metadata: ObjectMeta { name: Some(name.to_string()), ..Default::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some(identity.to_string()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(now_micro()),
                renew_time: Some(now_micro()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false), // another replica was faster
            Err(e) => Err(e),
        };
    };
    let version = lease.resource_version().unwrap_or_default();
    if observed.as_ref().is_none_or(|(v, _)| *v != version) {
        *observed = Some((version, Instant::now()));
    }
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let expired = observed.as_ref().is_some_and(|(_, seen)| seen.elapsed() >= timing.lease_duration);
    if holder != identity && !holder.is_empty() && !expired {
        return Ok(false);
    }
    if holder != identity {
        spec.holder_identity = Some(identity.to_string());
        spec.acquire_time = Some(now_micro());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(now_micro());
    spec.lease_duration_seconds = Some(seconds);
    // Replace carries the resourceVersion read above: a concurrent change makes it fail (409).
    match api.replace(name, &PostParams::default(), &lease).await {
        Ok(updated) => {
            *observed = Some((updated.resource_version().unwrap_or_default(), Instant::now()));
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leadership_is_a_deadline() {
        let l = Leadership::none();
        assert!(!l.is_leader());
        l.extend(Instant::now() + Duration::from_secs(10));
        assert!(l.is_leader());
        // A leader whose last renewal is older than the renew deadline stops by itself.
        l.extend(Instant::now() - Duration::from_millis(1));
        assert!(!l.is_leader());
        l.extend(Instant::now() + Duration::from_secs(10));
        l.revoke();
        assert!(!l.is_leader());
        assert!(Leadership::always().is_leader());
    }
}
