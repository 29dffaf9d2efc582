//! Shared watches: one watch per observed kind, however many metrics use it, feeding one
//! in-memory index. Objects are pruned before they are cached; Secrets and ConfigMaps are
//! watched as metadata only.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, discovery};
use serde_json::Value as Json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::engine::{Kind, ObjectIndex, ObjectKey};

/// What a kind's watch reports to the metrics that observe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Objects were added, changed or deleted.
    Objects(Kind, Vec<ObjectKey>),
    /// The whole kind was (re)listed, or its availability changed.
    Kind(Kind),
}

/// The state of a kind's watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KindState {
    /// Listing for the first time.
    Syncing,
    /// The cache holds every object.
    Synced,
    /// The kind cannot be observed: `reason` (CamelCase) and a message saying exactly why.
    Failed { reason: String, message: String },
}

/// The index and the state of every kind's watch, shared with the evaluator.
#[derive(Default)]
pub struct Observed {
    pub index: RwLock<ObjectIndex>,
    pub kinds: RwLock<HashMap<Kind, KindState>>,
}

impl Observed {
    /// A snapshot of the index (cheap: tables are shared).
    pub fn snapshot(&self) -> ObjectIndex {
        self.index.read().expect("index lock").clone()
    }

    /// The state of a kind's watch (None when not watched).
    pub fn kind_state(&self, kind: &Kind) -> Option<KindState> {
        self.kinds.read().expect("kinds lock").get(kind).cloned()
    }

    fn set_state(&self, kind: &Kind, state: KindState) {
        self.kinds.write().expect("kinds lock").insert(kind.clone(), state);
    }
}

/// The set of running watches.
pub struct Watches {
    client: Client,
    observed: Arc<Observed>,
    changes: mpsc::UnboundedSender<Change>,
    tasks: HashMap<Kind, JoinHandle<()>>,
}

/// The kind every evaluation needs: namespaces carry tenants and namespace labels.
pub fn namespace_kind() -> Kind {
    Kind::new("v1", "Namespace")
}

impl Watches {
    /// No watches yet; `changes` receives what they see.
    pub fn new(client: Client, observed: Arc<Observed>, changes: mpsc::UnboundedSender<Change>) -> Self {
        Watches { client, observed, changes, tasks: HashMap::new() }
    }

    /// Starts watches for kinds not yet watched and stops those no metric needs any more.
    pub fn ensure(&mut self, wanted: &BTreeSet<Kind>) {
        let mut wanted = wanted.clone();
        wanted.insert(namespace_kind());
        self.tasks.retain(|kind, task| {
            let keep = wanted.contains(kind);
            if !keep {
                info!(%kind, "no metric observes this kind any more; stopping its watch");
                task.abort();
                self.observed.kinds.write().expect("kinds lock").remove(kind);
                self.observed.index.write().expect("index lock").reset(kind, []);
            }
            keep
        });
        for kind in wanted {
            if !self.tasks.contains_key(&kind) {
                info!(%kind, "starting watch");
                self.observed.set_state(&kind, KindState::Syncing);
                let task = tokio::spawn(watch_kind(
                    self.client.clone(),
                    kind.clone(),
                    self.observed.clone(),
                    self.changes.clone(),
                ));
                self.tasks.insert(kind, task);
            }
        }
    }
}

impl Drop for Watches {
    fn drop(&mut self) {
        for t in self.tasks.values() {
            t.abort();
        }
    }
}

fn gvk(kind: &Kind) -> GroupVersionKind {
    match kind.api_version.split_once('/') {
        Some((group, version)) => GroupVersionKind::gvk(group, version, &kind.kind),
        None => GroupVersionKind::gvk("", &kind.api_version, &kind.kind),
    }
}

/// Resolves the kind through discovery, retrying while it is not served (a CRD may be
/// installed later).
async fn resolve(
    client: &Client,
    kind: &Kind,
    observed: &Observed,
    changes: &mpsc::UnboundedSender<Change>,
) -> ApiResource {
    let mut delay = std::time::Duration::from_secs(2);
    loop {
        match discovery::pinned_kind(client, &gvk(kind)).await {
            Ok((ar, _caps)) => return ar,
            Err(e) => {
                let (reason, message) = match &e {
                    kube::Error::Api(s) if s.code == 403 => {
                        ("Forbidden", format!("the operator may not discover {kind}: {}", s.message))
                    }
                    _ => ("KindNotFound", format!("the API server does not serve {kind}: {e}")),
                };
                debug!(%kind, %message, "kind not resolvable");
                let failed = KindState::Failed { reason: reason.into(), message };
                if observed.kind_state(kind) != Some(failed.clone()) {
                    observed.set_state(kind, failed);
                    let _ = changes.send(Change::Kind(kind.clone()));
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(60));
            }
        }
    }
}

fn with_type(mut obj: Json, kind: &Kind) -> Json {
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), Json::String(kind.api_version.clone()));
        m.insert("kind".into(), Json::String(kind.kind.clone()));
    }
    obj
}

fn to_json<K: serde::Serialize>(ev: watcher::Event<K>) -> watcher::Event<Json> {
    let j = |o: K| serde_json::to_value(o).unwrap_or_default();
    match ev {
        watcher::Event::Apply(o) => watcher::Event::Apply(j(o)),
        watcher::Event::Delete(o) => watcher::Event::Delete(j(o)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(o) => watcher::Event::InitApply(j(o)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

fn key_of(obj: &Json) -> ObjectKey {
    ObjectKey {
        namespace: obj["metadata"]["namespace"].as_str().unwrap_or_default().into(),
        name: obj["metadata"]["name"].as_str().unwrap_or_default().into(),
    }
}

async fn watch_kind(
    client: Client,
    kind: Kind,
    observed: Arc<Observed>,
    changes: mpsc::UnboundedSender<Change>,
) {
    let ar = resolve(&client, &kind, &observed, &changes).await;
    let config = watcher::Config::default().page_size(500);
    // Secrets and ConfigMaps: metadata only, their data never reaches this process.
    // Decided on what discovery resolved too, not only on how the metric spelled the kind.
    let resolved =
        Kind::new(if ar.group.is_empty() { ar.version.clone() } else { ar.api_version.clone() }, &ar.kind);
    let mut stream = if kind.is_metadata_only() || resolved.is_metadata_only() {
        let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(client, &ar);
        watcher(api, config).default_backoff().map(|ev| ev.map(to_json)).boxed()
    } else {
        let api: Api<DynamicObject> = Api::all_with(client, &ar);
        watcher(api, config).default_backoff().map(|ev| ev.map(to_json)).boxed()
    };
    let mut buffer: Vec<Json> = Vec::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => buffer.clear(),
            Ok(watcher::Event::InitApply(o)) => buffer.push(with_type(o, &kind)),
            Ok(watcher::Event::InitDone) => {
                let objs = std::mem::take(&mut buffer);
                let n = objs.len();
                observed.index.write().expect("index lock").reset(&kind, objs);
                observed.set_state(&kind, KindState::Synced);
                debug!(%kind, objects = n, "cache synced");
                let _ = changes.send(Change::Kind(kind.clone()));
            }
            Ok(watcher::Event::Apply(o)) => {
                let o = with_type(o, &kind);
                let key = key_of(&o);
                observed.index.write().expect("index lock").apply(&kind, o);
                let _ = changes.send(Change::Objects(kind.clone(), vec![key]));
            }
            Ok(watcher::Event::Delete(o)) => {
                let key = key_of(&o);
                observed.index.write().expect("index lock").delete(&kind, &key);
                let _ = changes.send(Change::Objects(kind.clone(), vec![key]));
            }
            Err(e) => {
                crate::metrics::count_watch_error(&kind.kind);
                let failed = match &e {
                    watcher::Error::InitialListFailed(kube::Error::Api(s)) if s.code == 403 => Some((
                        "Forbidden",
                        format!(
                            "the operator may not list {}: {} (grant get, list, watch in its ClusterRole)",
                            ar.plural, s.message
                        ),
                    )),
                    watcher::Error::InitialListFailed(kube::Error::Api(s)) if s.code == 404 => {
                        Some(("KindNotFound", format!("the API server does not serve {kind}: {}", s.message)))
                    }
                    _ => None,
                };
                match failed {
                    Some((reason, message)) => {
                        let state = KindState::Failed { reason: reason.into(), message: message.clone() };
                        if observed.kind_state(&kind) != Some(state.clone()) {
                            warn!(%kind, %message, "cannot observe kind");
                            observed.set_state(&kind, state);
                            let _ = changes.send(Change::Kind(kind.clone()));
                        }
                    }
                    None => warn!(%kind, error = %e, "watch error; retrying with backoff"),
                }
            }
        }
    }
}
