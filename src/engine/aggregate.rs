//! From per-object results to a measurement: the value, counts, tenants and offenders.
//!
//! A [`Tally`] keeps running totals next to the per-object results, so replacing one
//! object's result costs O(log n) and reading the measurement costs O(tenants + offenders
//! listed), never a rescan of every object.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::kubernetes::{CompiledKubernetes, ObjectResult};
use super::objects::ObjectKey;
use crate::api::security_metric::{Aggregate, Offender};

/// A measurement before it is judged against the objective.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Measurement {
    /// The value; None when there is no data (e.g. a ratio over an empty population).
    pub value: Option<f64>,
    pub population: u64,
    pub passing: u64,
    pub errors: u64,
    /// The first error, with the object it came from.
    pub first_error: Option<String>,
    /// Every tenant's own value, by tenant name.
    pub tenants: BTreeMap<String, Option<f64>>,
    /// Failing objects, ordered by (namespace, name), at most `max_offenders`.
    pub offenders: Vec<Offender>,
    pub offenders_total: u64,
}

/// A float with a total order, for the min/max multiset.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Ordered(f64);

impl Eq for Ordered {}

impl PartialOrd for Ordered {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ordered {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Running totals that support removal.
#[derive(Clone, Debug, Default, PartialEq)]
struct Acc {
    population: u64,
    passing: u64,
    sum: f64,
    /// Multiset of values, for Min and Max under removal.
    values: BTreeMap<Ordered, u32>,
    value_count: u64,
}

impl Acc {
    fn add(&mut self, r: &ObjectResult) {
        if !r.in_population {
            return;
        }
        self.population += 1;
        self.passing += u64::from(r.passes);
        if let Some(v) = r.value {
            self.sum += v;
            self.value_count += 1;
            *self.values.entry(Ordered(v)).or_default() += 1;
        }
    }

    fn remove(&mut self, r: &ObjectResult) {
        if !r.in_population {
            return;
        }
        self.population -= 1;
        self.passing -= u64::from(r.passes);
        if let Some(v) = r.value {
            self.sum -= v;
            self.value_count -= 1;
            if let Some(n) = self.values.get_mut(&Ordered(v)) {
                *n -= 1;
                if *n == 0 {
                    self.values.remove(&Ordered(v));
                }
            }
        }
    }

    /// Adds everything `other` counted.
    fn merge(&mut self, other: Acc) {
        self.population += other.population;
        self.passing += other.passing;
        self.sum += other.sum;
        self.value_count += other.value_count;
        if self.values.is_empty() {
            self.values = other.values;
        } else {
            for (v, n) in other.values {
                *self.values.entry(v).or_default() += n;
            }
        }
    }

    fn value(&self, aggregate: Aggregate) -> Option<f64> {
        let pct = |num: u64, den: u64| (den > 0).then(|| num as f64 * 100.0 / den as f64);
        match aggregate {
            Aggregate::Ratio | Aggregate::NamespaceCoverage => pct(self.passing, self.population),
            Aggregate::Count => Some(self.population as f64),
            Aggregate::CountPassing => Some(self.passing as f64),
            Aggregate::CountFailing => Some((self.population - self.passing) as f64),
            Aggregate::Sum => Some(if self.value_count == 0 { 0.0 } else { self.sum }),
            Aggregate::Min => self.values.keys().next().map(|v| v.0),
            Aggregate::Max => self.values.keys().next_back().map(|v| v.0),
            Aggregate::Average => (self.value_count > 0).then(|| self.sum / self.value_count as f64),
        }
    }
}

/// Per-object results of one metric with running totals.
///
/// A full evaluation produces results in key order; they are kept as a compact sorted vector
/// (`base`: 24 bytes per object, keys shared by every metric of the same pass), built
/// without a single key comparison. Later single-object changes go to an ordered overlay
/// (`delta`) and leave a hole in `base`; the next full evaluation starts over.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    keys: Arc<[ObjectKey]>,
    base: Vec<Entry>,
    /// Tenants of `base` entries, by index.
    tenant_names: Vec<Arc<str>>,
    delta: BTreeMap<ObjectKey, ObjectResult>,
    live: usize,
    total: Acc,
    tenants: BTreeMap<Arc<str>, Acc>,
    /// Failing population members of `base` (indexes, in key order; holes are skipped) and
    /// of `delta`: together, the offenders.
    failing_base: Vec<u32>,
    failing_delta: BTreeMap<ObjectKey, Option<Arc<str>>>,
    failing_count: u64,
    errors: BTreeMap<ObjectKey, String>,
    /// Passing objects per namespace, for NamespaceCoverage.
    passing_per_namespace: HashMap<Arc<str>, u64>,
    /// NamespaceCoverage: the namespaces in scope (set on full evaluations; namespace
    /// changes always cause one), kept up to date as objects start or stop passing.
    coverage: Option<Coverage>,
}

/// One object's result in `base`.
#[derive(Clone, Copy, Debug)]
struct Entry {
    value: f64,
    /// Index into the shared keys.
    key: u32,
    /// Index into `tenant_names`, or `NO_TENANT`.
    tenant: u32,
    flags: u8,
}

const LIVE: u8 = 1;
const IN_POPULATION: u8 = 2;
const PASSES: u8 = 4;
const HAS_VALUE: u8 = 8;
const HAS_ERROR: u8 = 16;
const NO_TENANT: u32 = u32::MAX;

/// Builds a [`Tally`] from a full evaluation's results, pushed in key order.
pub struct TallyBuilder {
    tally: Tally,
    errors: Vec<(ObjectKey, String)>,
    tenant_index: HashMap<Arc<str>, u32>,
    /// Totals per tenant, by index into `tenant_names`.
    tenant_accs: Vec<Acc>,
    /// Whether passing objects are counted per namespace (NamespaceCoverage only).
    per_namespace: bool,
    /// The current run of one namespace and tenant: its namespace, tenant index, totals,
    /// and passing objects.
    run: Option<(Arc<str>, u32, Acc, u64)>,
}

impl TallyBuilder {
    /// A builder whose results refer to `keys` by index; `per_namespace` keeps the passing
    /// objects per namespace that NamespaceCoverage needs.
    pub fn new(keys: Arc<[ObjectKey]>, per_namespace: bool) -> Self {
        // Exactly one entry per object at most: no doubling slack, no reallocation copies.
        let base = Vec::with_capacity(keys.len());
        TallyBuilder {
            tally: Tally { keys, base, ..Tally::default() },
            errors: Vec::new(),
            tenant_index: HashMap::new(),
            tenant_accs: Vec::new(),
            per_namespace,
            run: None,
        }
    }

    /// Adds the result of the object `keys[key]` in `tenant` (`r.tenant` is not read); keys
    /// must come in increasing order.
    pub fn push(&mut self, key: u32, tenant: Option<&Arc<str>>, r: ObjectResult) {
        let t = &mut self.tally;
        let namespace = &t.keys[key as usize].namespace;
        let same_run = self.run.as_ref().is_some_and(|(ns, run_tenant, _, _)| {
            (Arc::ptr_eq(ns, namespace) || ns == namespace)
                && match tenant {
                    None => *run_tenant == NO_TENANT,
                    Some(rt) => t
                        .tenant_names
                        .get(*run_tenant as usize)
                        .is_some_and(|n| Arc::ptr_eq(n, rt) || n == rt),
                }
        });
        if !same_run {
            let tenant = match tenant {
                None => NO_TENANT,
                // Tenants are few and their names shared: found by pointer without hashing.
                Some(rt) if let Some(i) = t.tenant_names.iter().take(64).position(|n| Arc::ptr_eq(n, rt)) => {
                    i as u32
                }
                Some(rt) => *self.tenant_index.entry(rt.clone()).or_insert_with(|| {
                    t.tenant_names.push(rt.clone());
                    self.tenant_accs.push(Acc::default());
                    (t.tenant_names.len() - 1) as u32
                }),
            };
            let previous = self.run.replace((namespace.clone(), tenant, Acc::default(), 0));
            self.flush(previous);
        }
        let t = &mut self.tally;
        let (_, tenant, acc, passing) = self.run.as_mut().expect("set above");
        t.total.add(&r);
        acc.add(&r);
        let mut flags = LIVE;
        if r.passes {
            flags |= PASSES;
        }
        if r.in_population {
            flags |= IN_POPULATION;
            if r.passes {
                *passing += 1;
            } else {
                t.failing_base.push(t.base.len() as u32);
                t.failing_count += 1;
            }
        }
        if r.value.is_some() {
            flags |= HAS_VALUE;
        }
        if let Some(e) = r.error {
            flags |= HAS_ERROR;
            self.errors.push((t.keys[key as usize].clone(), e));
        }
        t.base.push(Entry { value: r.value.unwrap_or_default(), key, tenant: *tenant, flags });
    }

    /// Adds a finished run's tenant and namespace totals.
    fn flush(&mut self, run: Option<(Arc<str>, u32, Acc, u64)>) {
        let Some((namespace, tenant, acc, passing)) = run else { return };
        if let Some(t) = self.tenant_accs.get_mut(tenant as usize) {
            t.merge(acc);
        }
        if passing > 0 && self.per_namespace {
            *self.tally.passing_per_namespace.entry(namespace).or_default() += passing;
        }
    }

    /// The tally.
    pub fn finish(mut self) -> Tally {
        let run = self.run.take();
        self.flush(run);
        let t = &mut self.tally;
        for (name, acc) in t.tenant_names.iter().zip(self.tenant_accs) {
            if acc.population > 0 || !acc.values.is_empty() {
                t.tenants.insert(name.clone(), acc);
            }
        }
        t.live = t.base.len();
        t.errors = self.errors.into_iter().collect();
        self.tally
    }
}

/// Two tallies are equal when they hold the same results and totals, however they were built.
impl PartialEq for Tally {
    fn eq(&self, other: &Self) -> bool {
        self.entries().eq(other.entries())
            && self.failing().eq(other.failing())
            && self.total == other.total
            && self.tenants == other.tenants
            && self.failing_count == other.failing_count
            && self.errors == other.errors
            && self.passing_per_namespace == other.passing_per_namespace
            && self.coverage == other.coverage
    }
}

/// Running NamespaceCoverage totals.
#[derive(Clone, Debug, Default, PartialEq)]
struct Coverage {
    /// Namespace → tenant, for every namespace in scope.
    namespaces: HashMap<String, Arc<str>>,
    /// Namespaces in scope without a passing object, in name order (the offenders).
    uncovered: BTreeSet<String>,
    /// Tenant → (namespaces, covered namespaces).
    tenants: BTreeMap<Arc<str>, (u64, u64)>,
}

impl Coverage {
    fn covered(&mut self, ns: &str, covered: bool) {
        let Some(tenant) = self.namespaces.get(ns) else { return };
        let counts = self.tenants.entry(tenant.clone()).or_default();
        if covered {
            self.uncovered.remove(ns);
            counts.1 += 1;
        } else {
            self.uncovered.insert(ns.to_string());
            counts.1 -= 1;
        }
    }
}

impl Tally {
    /// The result held by a `base` entry.
    fn base_result(&self, e: &Entry) -> ObjectResult {
        ObjectResult {
            tenant: self.tenant_names.get(e.tenant as usize).cloned(),
            in_population: e.flags & IN_POPULATION != 0,
            passes: e.flags & PASSES != 0,
            value: (e.flags & HAS_VALUE != 0).then_some(e.value),
            error: if e.flags & HAS_ERROR != 0 {
                self.errors.get(&self.keys[e.key as usize]).cloned()
            } else {
                None
            },
        }
    }

    /// Sets (or, with None, removes) the result of one object, updating the totals.
    pub fn set(&mut self, key: ObjectKey, result: Option<ObjectResult>) {
        let old = match self.delta.remove(&key) {
            Some(old) => Some(old),
            None => match self.base.binary_search_by(|e| self.keys[e.key as usize].cmp(&key)) {
                Ok(i) if self.base[i].flags & LIVE != 0 => {
                    self.base[i].flags &= !LIVE;
                    Some(self.base_result(&self.base[i]))
                }
                _ => None,
            },
        };
        if let Some(old) = old {
            self.live -= 1;
            self.account(&key, &old, false);
        }
        if let Some(new) = result {
            self.live += 1;
            self.account(&key, &new, true);
            self.delta.insert(key, new);
        }
    }

    /// Every result, in key order.
    pub fn entries(&self) -> impl Iterator<Item = (&ObjectKey, ObjectResult)> {
        let base = self
            .base
            .iter()
            .filter(|e| e.flags & LIVE != 0)
            .map(|e| (&self.keys[e.key as usize], self.base_result(e)));
        merge_sorted(base, self.delta.iter().map(|(k, r)| (k, r.clone())))
    }

    /// Failing population members with their tenants, in key order.
    fn failing(&self) -> impl Iterator<Item = (&ObjectKey, Option<&Arc<str>>)> {
        let base = self.failing_base.iter().filter_map(|&i| {
            let e = &self.base[i as usize];
            (e.flags & LIVE != 0)
                .then(|| (&self.keys[e.key as usize], self.tenant_names.get(e.tenant as usize)))
        });
        merge_sorted(base, self.failing_delta.iter().map(|(k, t)| (k, t.as_ref())))
    }

    fn account(&mut self, key: &ObjectKey, r: &ObjectResult, add: bool) {
        let apply = |acc: &mut Acc| if add { acc.add(r) } else { acc.remove(r) };
        apply(&mut self.total);
        if let Some(t) = &r.tenant {
            let acc = self.tenants.entry(t.clone()).or_default();
            apply(acc);
            if acc.population == 0 && acc.values.is_empty() {
                self.tenants.remove(t);
            }
        }
        let failing = r.in_population && !r.passes;
        let passing = r.in_population && r.passes;
        if add {
            if failing {
                self.failing_count += 1;
                self.failing_delta.insert(key.clone(), r.tenant.clone());
            }
            if let Some(e) = &r.error {
                self.errors.insert(key.clone(), e.clone());
            }
            if passing && self.coverage.is_some() {
                let n = self.passing_per_namespace.entry(key.namespace.clone()).or_default();
                *n += 1;
                if *n == 1
                    && let Some(c) = &mut self.coverage
                {
                    c.covered(&key.namespace, true);
                }
            }
        } else {
            if failing {
                self.failing_count -= 1;
                // A failing entry of `base` became a hole: the offender list skips it.
                self.failing_delta.remove(key);
            }
            self.errors.remove(key);
            if passing
                && self.coverage.is_some()
                && let Some(n) = self.passing_per_namespace.get_mut(&key.namespace)
            {
                *n -= 1;
                if *n == 0 {
                    self.passing_per_namespace.remove(&key.namespace);
                    if let Some(c) = &mut self.coverage {
                        c.covered(&key.namespace, false);
                    }
                }
            }
        }
    }

    /// Records the namespaces in scope and their tenants (NamespaceCoverage).
    pub fn set_namespaces(&mut self, namespaces: impl Iterator<Item = (String, Arc<str>)>) {
        let mut c = Coverage::default();
        for (ns, tenant) in namespaces {
            let covered = self.passing_per_namespace.contains_key(ns.as_str());
            let counts = c.tenants.entry(tenant.clone()).or_default();
            counts.0 += 1;
            if covered {
                counts.1 += 1;
            } else {
                c.uncovered.insert(ns.clone());
            }
            c.namespaces.insert(ns, tenant);
        }
        self.coverage = Some(c);
    }

    /// Number of objects with a result.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no object has a result.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }
}

/// Merges two iterators sorted by key (keys are unique across both).
fn merge_sorted<'a, T: 'a>(
    a: impl Iterator<Item = (&'a ObjectKey, T)>,
    b: impl Iterator<Item = (&'a ObjectKey, T)>,
) -> impl Iterator<Item = (&'a ObjectKey, T)> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some((ka, _)), Some((kb, _))) => {
            if ka <= kb {
                a.next()
            } else {
                b.next()
            }
        }
        (Some(_), None) => a.next(),
        (None, _) => b.next(),
    })
}

/// Reads the measurement from a tally. NamespaceCoverage counts namespaces instead of
/// objects: a namespace passes when it holds at least one passing object.
pub fn measure(source: &CompiledKubernetes, tally: &Tally, max_offenders: usize) -> Measurement {
    let mut m = Measurement {
        errors: tally.errors.len() as u64,
        first_error: tally.errors.iter().next().map(|(k, e)| format!("{}: {e}", display_key(k))),
        ..Default::default()
    };
    if source.aggregate == Aggregate::NamespaceCoverage {
        return coverage(tally, max_offenders, m);
    }
    m.value = tally.total.value(source.aggregate);
    m.population = tally.total.population;
    m.passing = tally.total.passing;
    m.tenants = tally.tenants.iter().map(|(t, acc)| (t.to_string(), acc.value(source.aggregate))).collect();
    // Offenders only mean something when objects can fail (not for Count).
    if source.aggregate != Aggregate::Count {
        m.offenders_total = tally.failing_count;
        m.offenders = tally
            .failing()
            .take(max_offenders)
            .map(|(k, tenant)| offender(&source.kind.kind, k, tenant.map(|t| t.to_string())))
            .collect();
    }
    m
}

fn coverage(tally: &Tally, max_offenders: usize, mut m: Measurement) -> Measurement {
    let Some(c) = &tally.coverage else { return m };
    let pct = |covered: u64, total: u64| (total > 0).then(|| covered as f64 * 100.0 / total as f64);
    m.population = c.namespaces.len() as u64;
    m.passing = m.population - c.uncovered.len() as u64;
    m.value = pct(m.passing, m.population);
    m.tenants =
        c.tenants.iter().map(|(t, (total, covered))| (t.to_string(), pct(*covered, *total))).collect();
    m.offenders_total = c.uncovered.len() as u64;
    m.offenders = c
        .uncovered
        .iter()
        .take(max_offenders)
        .map(|ns| {
            let key = ObjectKey { namespace: "".into(), name: ns.as_str().into() };
            offender("Namespace", &key, c.namespaces.get(ns).map(|t| t.to_string()))
        })
        .collect();
    m
}

fn offender(kind: &str, key: &ObjectKey, tenant: Option<String>) -> Offender {
    Offender {
        kind: kind.to_string(),
        namespace: (!key.namespace.is_empty()).then(|| key.namespace.to_string()),
        name: key.name.to_string(),
        tenant,
    }
}

pub(crate) fn display_key(key: &ObjectKey) -> String {
    if key.namespace.is_empty() { key.name.to_string() } else { format!("{}/{}", key.namespace, key.name) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(tenant: &str, passes: bool, value: Option<f64>) -> Option<ObjectResult> {
        Some(ObjectResult { tenant: Some(tenant.into()), in_population: true, passes, value, error: None })
    }

    fn key(ns: &str, name: &str) -> ObjectKey {
        ObjectKey { namespace: ns.into(), name: name.into() }
    }

    #[test]
    fn removal_restores_min_max_and_counts() {
        let mut t = Tally::default();
        t.set(key("a", "1"), r("x", true, Some(5.0)));
        t.set(key("a", "2"), r("x", false, Some(1.0)));
        t.set(key("b", "3"), r("y", true, Some(9.0)));
        assert_eq!(t.total.value(Aggregate::Min), Some(1.0));
        assert_eq!(t.total.value(Aggregate::Max), Some(9.0));
        t.set(key("a", "2"), None);
        t.set(key("b", "3"), r("y", false, Some(3.0)));
        assert_eq!(t.total.value(Aggregate::Min), Some(3.0));
        assert_eq!(t.total.value(Aggregate::Max), Some(5.0));
        assert_eq!((t.total.population, t.total.passing), (2, 1));
        assert_eq!(t.failing().map(|(k, _)| k).collect::<Vec<_>>(), vec![&key("b", "3")]);
        // Rebuilding from scratch gives the same totals.
        let mut fresh = Tally::default();
        for (k, v) in t.entries() {
            fresh.set(k.clone(), Some(v));
        }
        assert_eq!(fresh, t);
    }

    /// A tally bulk-loaded from results in key order.
    fn from_sorted(results: impl Iterator<Item = (ObjectKey, ObjectResult)>) -> Tally {
        let (keys, results): (Vec<_>, Vec<_>) = results.unzip();
        let mut builder = TallyBuilder::new(keys.into(), false);
        for (i, r) in results.into_iter().enumerate() {
            let tenant = r.tenant.clone();
            builder.push(i as u32, tenant.as_ref(), r);
        }
        builder.finish()
    }

    #[test]
    fn bulk_load_equals_one_by_one() {
        let mut results = Vec::new();
        for i in 0..200u32 {
            let ns = format!("ns-{}", i / 7);
            let tenant = if i % 50 < 3 { None } else { Some(Arc::from(format!("t{}", i / 30))) };
            let r = ObjectResult {
                tenant,
                in_population: i % 11 != 0,
                passes: i % 3 == 0,
                value: (i % 4 != 0).then_some(f64::from(i % 9)),
                error: (i % 13 == 0).then(|| format!("e{i}")),
            };
            results.push((key(&ns, &format!("p{i:03}")), r));
        }
        results.sort_by(|a, b| a.0.cmp(&b.0));
        let mut bulk = from_sorted(results.clone().into_iter());
        let mut one_by_one = Tally::default();
        for (k, r) in results.clone() {
            one_by_one.set(k, Some(r));
        }
        assert_eq!(bulk, one_by_one);
        // Changes on top of a bulk load (replace, remove, add) equal the same changes one by one.
        for (i, (k, r)) in results.iter().enumerate().filter(|(i, _)| i % 5 == 0) {
            let changed = (i % 10 == 0).then(|| ObjectResult { passes: !r.passes, error: None, ..r.clone() });
            bulk.set(k.clone(), changed.clone());
            one_by_one.set(k.clone(), changed);
        }
        bulk.set(key("zz", "new"), r("x", false, Some(1.0)));
        one_by_one.set(key("zz", "new"), r("x", false, Some(1.0)));
        assert_eq!(bulk, one_by_one);
        assert_eq!(bulk.len(), one_by_one.len());
        assert_eq!(bulk.failing().count() as u64, bulk.failing_count);
    }

    #[test]
    fn empty_tenants_disappear() {
        let mut t = Tally::default();
        t.set(key("a", "1"), r("x", true, None));
        t.set(key("a", "1"), None);
        assert!(t.tenants.is_empty() && t.is_empty());
    }
}
