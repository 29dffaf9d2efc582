//! Observed objects in a compact, immutable form: the data every expression reads.
//!
//! A `serde_json::Value` or `cel` value tree of a pod costs 10–18 KB (a `HashMap` and an owned
//! key per map, a `Box<dyn Val>` per leaf). [`Node`] keeps maps as sorted arrays, shares map
//! keys between objects (`metadata`, `containers`, label keys: the same few hundred strings
//! in every object), and stores scalars inline, so the cache holds a pod in a few KB and an
//! expression walks it with binary searches over contiguous memory.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelUInt,
};
use cel::common::value::Val;
use serde_json::Value as Json;

use super::shared::Shared;

/// A map key, shared between all objects that use it.
pub type Key = Arc<str>;

/// A JSON-shaped value.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    Str(Box<str>),
    /// A string of at most [`SHORT`] bytes, stored inline: most strings in objects are short
    /// (`TCP`, `500m`, names), and a separate allocation would cost more than the string.
    Short(u8, [u8; SHORT]),
    List(Box<[Node]>),
    /// Entries sorted by key.
    Map(Box<[(Key, Node)]>),
}

/// Longest string stored inline.
pub const SHORT: usize = 22;

/// Most distinct keys shared; beyond it keys are allocated per object, so a stream of
/// objects with random keys (annotations) cannot grow the table without bound.
const MAX_SHARED_KEYS: usize = 65_536;

static KEYS: LazyLock<Mutex<HashSet<Key>>> = LazyLock::new(|| Mutex::new(HashSet::new()));
/// Set once the table is full: until then every key is shared, so two keys are equal exactly
/// when they are the same allocation, and a lookup needs no string comparison.
static KEYS_FULL: AtomicBool = AtomicBool::new(false);

/// The shared key for `k` (a new one once the table is full).
pub fn key(k: &str) -> Key {
    let mut keys = KEYS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(shared) = keys.get(k) {
        return shared.clone();
    }
    let new: Key = k.into();
    if keys.len() < MAX_SHARED_KEYS {
        keys.insert(new.clone());
    } else {
        KEYS_FULL.store(true, Ordering::Relaxed);
    }
    new
}

impl From<&Json> for Node {
    fn from(json: &Json) -> Self {
        match json {
            Json::Null => Node::Null,
            Json::Bool(b) => Node::Bool(*b),
            Json::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Node::Int(i)
                } else if let Some(u) = n.as_u64() {
                    Node::UInt(u)
                } else {
                    Node::Double(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Json::String(s) => Node::string(s),
            Json::Array(a) => Node::List(a.iter().map(Node::from).collect()),
            Json::Object(m) => {
                let mut entries: Vec<(Key, Node)> = m.iter().map(|(k, v)| (key(k), Node::from(v))).collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                Node::Map(entries.into_boxed_slice())
            }
        }
    }
}

impl Node {
    /// A string node: inline when short.
    pub fn string(s: &str) -> Node {
        if s.len() <= SHORT {
            let mut buf = [0u8; SHORT];
            buf[..s.len()].copy_from_slice(s.as_bytes());
            Node::Short(s.len() as u8, buf)
        } else {
            Node::Str(s.into())
        }
    }

    /// A map's entry by key (None for a missing key or a non-map).
    pub fn get(&self, k: &str) -> Option<&Node> {
        match self {
            Node::Map(entries) => map_get(entries, k),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Str(s) => Some(s),
            // Built from a &str by `Node::string`: always valid UTF-8.
            Node::Short(len, buf) => std::str::from_utf8(&buf[..*len as usize]).ok(),
            _ => None,
        }
    }

    /// A map of strings (labels, annotations) as (key, value) pairs; other entries skipped.
    pub fn string_entries(&self) -> impl Iterator<Item = (&str, &str)> {
        let entries: &[(Key, Node)] = match self {
            Node::Map(e) => e,
            _ => &[],
        };
        entries.iter().filter_map(|(k, v)| Some((&**k, v.as_str()?)))
    }

    /// The same value as `cel`'s interpreter sees it (for expressions outside the fast
    /// evaluator's subset). Containers are shared so the interpreter's copies are O(1).
    pub fn to_val(&self) -> Box<dyn Val> {
        match self {
            Node::Null => Box::new(CelNull),
            Node::Bool(b) => Box::new(CelBool::from(*b)),
            Node::Int(i) => Box::new(CelInt::from(*i)),
            Node::UInt(u) => Box::new(CelUInt::from(*u)),
            Node::Double(d) => Box::new(CelDouble::from(*d)),
            Node::Str(_) | Node::Short(..) => {
                Box::new(CelString::from(self.as_str().unwrap_or_default().to_string()))
            }
            Node::List(items) => Box::new(Shared::new(Box::new(CelList::from(
                items.iter().map(Node::to_val).collect::<Vec<_>>(),
            )))),
            Node::Map(entries) => Box::new(Shared::new(Box::new(CelMap::from(
                entries
                    .iter()
                    .map(|(k, v)| (CelMapKey::from(k.to_string()), v.to_val()))
                    .collect::<std::collections::HashMap<_, _>>(),
            )))),
        }
    }
}

/// Binary search in sorted map entries.
pub fn map_get<'a>(entries: &'a [(Key, Node)], k: &str) -> Option<&'a Node> {
    entries.binary_search_by(|(e, _)| (**e).cmp(k)).ok().map(|i| &entries[i].1)
}

/// [`map_get`] for a shared key that a scan by pointer (how maps built while the key was
/// shared hold it) did not find: absent, unless keys stopped being shared, when the string
/// search decides.
pub fn map_get_unshared<'a>(entries: &'a [(Key, Node)], k: &Key) -> Option<&'a Node> {
    // Every map key and every compiled field name comes from `key()`: while all of them are
    // shared, a key not found by identity is absent.
    if !KEYS_FULL.load(Ordering::Relaxed) {
        return None;
    }
    map_get(entries, k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn maps_are_sorted_and_keys_shared() {
        let a =
            Node::from(&json!({"b": 1, "a": {"x": [true, null, 1.5, "s"]}, "c": 18446744073709551615u64}));
        assert_eq!(a.get("b"), Some(&Node::Int(1)));
        assert_eq!(a.get("c"), Some(&Node::UInt(u64::MAX)));
        assert_eq!(
            a.get("a").and_then(|m| m.get("x")),
            Some(&Node::List(
                vec![Node::Bool(true), Node::Null, Node::Double(1.5), Node::string("s")].into()
            ))
        );
        assert_eq!(a.get("zz"), None);
        let b = Node::from(&json!({"b": 2}));
        let (Node::Map(ea), Node::Map(eb)) = (&a, &b) else { panic!() };
        let kb_a = &ea.iter().find(|(k, _)| &**k == "b").unwrap().0;
        assert!(Arc::ptr_eq(kb_a, &eb[0].0), "keys are shared between objects");
    }

    #[test]
    fn short_strings_are_inline_and_long_ones_allocated() {
        assert_eq!(std::mem::size_of::<Node>(), 24);
        let short = "ü".repeat(11);
        assert!(matches!(Node::string(&short), Node::Short(22, _)));
        assert_eq!(Node::string(&short).as_str(), Some(short.as_str()));
        let long = "x".repeat(23);
        assert!(matches!(Node::string(&long), Node::Str(_)));
        assert_eq!(Node::string(&long).as_str(), Some(long.as_str()));
        assert_eq!(Node::string("").as_str(), Some(""));
    }

    #[test]
    fn string_entries_skip_non_strings() {
        let labels = Node::from(&json!({"app": "web", "n": 1}));
        assert_eq!(labels.string_entries().collect::<Vec<_>>(), vec![("app", "web")]);
    }
}
