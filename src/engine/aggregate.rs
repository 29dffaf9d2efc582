//! From per-object results to a measurement: the value, counts, tenants and offenders.

use std::collections::BTreeMap;

use super::kubernetes::{CompiledKubernetes, ObjectResult, Visibility};
use super::objects::{ObjectIndex, ObjectKey};
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

#[derive(Default)]
struct Acc {
    population: u64,
    passing: u64,
    sum: f64,
    min: Option<f64>,
    max: Option<f64>,
    values: u64,
}

impl Acc {
    fn add(&mut self, r: &ObjectResult) {
        if !r.in_population {
            return;
        }
        self.population += 1;
        if r.passes {
            self.passing += 1;
        }
        if let Some(v) = r.value {
            self.sum += v;
            self.values += 1;
            self.min = Some(self.min.map_or(v, |m| m.min(v)));
            self.max = Some(self.max.map_or(v, |m| m.max(v)));
        }
    }

    fn value(&self, aggregate: Aggregate) -> Option<f64> {
        let pct = |num: u64, den: u64| (den > 0).then(|| num as f64 * 100.0 / den as f64);
        match aggregate {
            Aggregate::Ratio | Aggregate::NamespaceCoverage => pct(self.passing, self.population),
            Aggregate::Count => Some(self.population as f64),
            Aggregate::CountPassing => Some(self.passing as f64),
            Aggregate::CountFailing => Some((self.population - self.passing) as f64),
            Aggregate::Sum => Some(self.sum),
            Aggregate::Min => self.min,
            Aggregate::Max => self.max,
            Aggregate::Average => (self.values > 0).then(|| self.sum / self.values as f64),
        }
    }
}

/// Aggregates object results. NamespaceCoverage counts namespaces instead of objects: a
/// namespace passes when it holds at least one passing object.
pub fn measure(
    source: &CompiledKubernetes,
    results: &BTreeMap<ObjectKey, ObjectResult>,
    index: &ObjectIndex,
    visibility: &Visibility,
    max_offenders: usize,
) -> Measurement {
    let mut m = Measurement::default();
    for (key, r) in results {
        if let Some(e) = &r.error {
            m.errors += 1;
            if m.first_error.is_none() {
                m.first_error = Some(format!("{}: {e}", display_key(key)));
            }
        }
    }
    if source.aggregate == Aggregate::NamespaceCoverage {
        return coverage(source, results, index, visibility, max_offenders, m);
    }
    let mut total = Acc::default();
    let mut tenants: BTreeMap<&str, Acc> = BTreeMap::new();
    for (key, r) in results {
        total.add(r);
        if let Some(t) = &r.tenant {
            tenants.entry(t).or_default().add(r);
        }
        // Offenders: population members that fail (only meaningful when there is a `passes`).
        if r.in_population && !r.passes && source.aggregate != Aggregate::Count {
            m.offenders_total += 1;
            if m.offenders.len() < max_offenders {
                m.offenders.push(offender(&source.kind.kind, key, r.tenant.clone()));
            }
        }
    }
    m.value = total.value(source.aggregate);
    m.population = total.population;
    m.passing = total.passing;
    m.tenants = tenants.into_iter().map(|(t, acc)| (t.to_string(), acc.value(source.aggregate))).collect();
    m
}

fn coverage(
    source: &CompiledKubernetes,
    results: &BTreeMap<ObjectKey, ObjectResult>,
    index: &ObjectIndex,
    visibility: &Visibility,
    max_offenders: usize,
    mut m: Measurement,
) -> Measurement {
    let covered: std::collections::BTreeSet<&str> = results
        .iter()
        .filter(|(_, r)| r.in_population && r.passes)
        .map(|(k, _)| k.namespace.as_str())
        .collect();
    let mut total = Acc::default();
    let mut tenants: BTreeMap<String, Acc> = BTreeMap::new();
    for ns in source.selected_namespaces(index, visibility) {
        let passes = covered.contains(ns.name.as_str());
        let r = ObjectResult { tenant: None, in_population: true, passes, value: None, error: None };
        total.add(&r);
        tenants.entry(ns.tenant(source.tenant_label()).to_string()).or_default().add(&r);
        if !passes {
            m.offenders_total += 1;
            if m.offenders.len() < max_offenders {
                let key = ObjectKey { namespace: String::new(), name: ns.name.clone() };
                m.offenders.push(offender(
                    "Namespace",
                    &key,
                    Some(ns.tenant(source.tenant_label()).to_string()),
                ));
            }
        }
    }
    m.value = total.value(Aggregate::NamespaceCoverage);
    m.population = total.population;
    m.passing = total.passing;
    m.tenants = tenants.into_iter().map(|(t, acc)| (t, acc.value(Aggregate::NamespaceCoverage))).collect();
    m
}

fn offender(kind: &str, key: &ObjectKey, tenant: Option<String>) -> Offender {
    Offender {
        kind: kind.to_string(),
        namespace: (!key.namespace.is_empty()).then(|| key.namespace.clone()),
        name: key.name.clone(),
        tenant,
    }
}

fn display_key(key: &ObjectKey) -> String {
    if key.namespace.is_empty() { key.name.clone() } else { format!("{}/{}", key.namespace, key.name) }
}
