//! The Kubernetes source: select objects of one kind, evaluate `where`/`passes`/`value` on each,
//! and aggregate. Per-object results are kept so that a change to one object re-evaluates
//! only that object.

use std::collections::HashMap;
use std::sync::Arc;

use cel::Context;
use cel::common::value::Val;

use super::aggregate::{Tally, TallyBuilder};
use super::expression::{CompileError, EvalError, Expression, Inputs, root_context, timestamp_val};
use super::fast::Env;
use super::lookup::{LookupScope, with_scope};
use super::node::Node;
use super::objects::{CachedObject, Kind, NamespaceInfo, ObjectIndex, ObjectKey};
use super::selector::Selector;
use crate::api::security_metric::{Aggregate, DEFAULT_TENANT_LABEL, KubernetesSource};

/// A Kubernetes source, compiled once per spec generation.
#[derive(Debug)]
pub struct CompiledKubernetes {
    pub kind: Kind,
    namespace_selector: Option<Selector>,
    selector: Option<Selector>,
    where_: Option<Expression>,
    passes: Option<Expression>,
    value: Option<Expression>,
    pub aggregate: Aggregate,
    tenant_label: String,
}

/// One object's result of a `passes` expression shared by several metrics of a group.
type Memo = Option<Result<bool, EvalError>>;

/// The result of one object.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectResult {
    /// The object's tenant (its namespace's tenant; None when cluster-scoped).
    pub tenant: Option<Arc<str>>,
    /// Whether `where` held (or there is none).
    pub in_population: bool,
    /// Whether `passes` held. False when it errored: an error is never a pass.
    pub passes: bool,
    /// `value`, when it evaluated to a number.
    pub value: Option<f64>,
    /// The first error on this object.
    pub error: Option<String>,
}

/// What one namespace means for one metric, resolved once per run of its objects (objects
/// are ordered by namespace, so a full evaluation resolves each namespace once).
struct NamespaceScope<'a> {
    name: Arc<str>,
    /// Whether the metric sees objects in this namespace at all.
    selected: bool,
    info: Option<&'a NamespaceInfo>,
    tenant: Option<Arc<str>>,
    /// `where`, when it has one value per namespace: computed for the first object of the run.
    where_memo: std::cell::OnceCell<Result<bool, EvalError>>,
}

/// Where the evaluation may look: everything (platform namespaces) or one namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Visibility {
    Cluster,
    Namespace(String),
}

impl Visibility {
    /// The namespace an unprivileged metric is confined to.
    pub fn confined_to(&self) -> Option<&str> {
        match self {
            Visibility::Cluster => None,
            Visibility::Namespace(ns) => Some(ns),
        }
    }
}

/// Everything one evaluation pass needs besides the objects.
pub struct Pass {
    root: Context<'static, 'static>,
    now: Box<dyn Val>,
    at: chrono::DateTime<chrono::Utc>,
    budget: Option<(std::time::Instant, std::time::Duration)>,
}

impl Pass {
    /// A pass at time `now`, without a time budget.
    pub fn new(now: chrono::DateTime<chrono::Utc>) -> Self {
        Pass { root: root_context(), now: timestamp_val(now), at: now, budget: None }
    }

    /// A pass whose full evaluations stop once `budget` has elapsed (from now).
    pub fn with_budget(now: chrono::DateTime<chrono::Utc>, budget: std::time::Duration) -> Self {
        Pass { budget: Some((std::time::Instant::now() + budget, budget)), ..Pass::new(now) }
    }
}

/// Why a full evaluation produced no tally.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvaluationError {
    /// The kind is not in the index at all.
    #[error("{0} is not observed")]
    KindNotObserved(Kind),
    /// The time budget ran out: the expressions are too expensive for this many objects.
    #[error(
        "evaluation stopped after {evaluated} of {total} objects: it exceeded its time budget of {budget:?}; simplify where, passes or value"
    )]
    TimeBudgetExceeded { budget: std::time::Duration, evaluated: usize, total: usize },
    /// One object's evaluation exceeded the per-evaluation cost limit.
    #[error("{0}; simplify where, passes or value")]
    CostLimitExceeded(String),
}

impl CompiledKubernetes {
    /// Compiles a Kubernetes source; `tenant_label` is the metric's tenancy label, if any.
    pub fn compile(src: &KubernetesSource, tenant_label: Option<&str>) -> Result<Self, CompileError> {
        let expr =
            |field, e: &Option<String>| e.as_deref().map(|s| Expression::compile(field, s)).transpose();
        let sel = |field, s: &Option<_>| {
            s.as_ref().map(|s| Selector::new(field, s)).transpose().map_err(|e| CompileError {
                field,
                message: e.to_string(),
                position: None,
            })
        };
        let aggregate = src.aggregate;
        let needs_passes = matches!(
            aggregate,
            Aggregate::Ratio
                | Aggregate::CountPassing
                | Aggregate::CountFailing
                | Aggregate::NamespaceCoverage
        );
        let needs_value =
            matches!(aggregate, Aggregate::Sum | Aggregate::Min | Aggregate::Max | Aggregate::Average);
        if needs_passes && src.passes.is_none() {
            return Err(CompileError {
                field: "passes",
                message: format!("aggregate {aggregate:?} needs passes"),
                position: None,
            });
        }
        if needs_value && src.value.is_none() {
            return Err(CompileError {
                field: "value",
                message: format!("aggregate {aggregate:?} needs value"),
                position: None,
            });
        }
        Ok(CompiledKubernetes {
            kind: Kind::new(&src.resource.api_version, &src.resource.kind),
            namespace_selector: sel("namespaceSelector", &src.namespace_selector)?,
            selector: sel("selector", &src.selector)?,
            where_: expr("where", &src.where_)?,
            passes: expr("passes", &src.passes)?,
            value: expr("value", &src.value)?,
            aggregate,
            tenant_label: tenant_label.unwrap_or(DEFAULT_TENANT_LABEL).to_string(),
        })
    }

    /// Every kind this source reads: the observed kind, then kinds read by `lookup()`.
    pub fn kinds(&self) -> Vec<Kind> {
        let mut kinds = vec![self.kind.clone()];
        for e in [&self.where_, &self.passes, &self.value].into_iter().flatten() {
            for k in e.lookups() {
                if !kinds.contains(k) {
                    kinds.push(k.clone());
                }
            }
        }
        kinds
    }

    /// Whether namespace `ns` is in scope for this metric.
    pub fn namespace_selected(&self, ns: &NamespaceInfo, visibility: &Visibility) -> bool {
        if visibility.confined_to().is_some_and(|c| c != ns.name) {
            return false;
        }
        self.namespace_selector.as_ref().is_none_or(|s| s.matches(&ns.labels))
    }

    /// Resolves what namespace `name` ("" for cluster-scoped objects) means for this metric.
    fn namespace_scope<'a>(
        &self,
        index: &'a ObjectIndex,
        name: &Arc<str>,
        visibility: &Visibility,
    ) -> NamespaceScope<'a> {
        if name.is_empty() {
            // Cluster-scoped objects are invisible to a confined metric.
            let selected = visibility.confined_to().is_none();
            return NamespaceScope {
                name: name.clone(),
                selected,
                info: None,
                tenant: None,
                where_memo: Default::default(),
            };
        }
        let info = index.namespace(name).map(|ns| &**ns);
        let selected = match (info, visibility.confined_to()) {
            (_, Some(c)) if c != &**name => false,
            (Some(ns), _) => self.namespace_selected(ns, visibility),
            // Namespace not (yet) known: selected only when no namespaceSelector asks for labels.
            (None, _) => self.namespace_selector.is_none(),
        };
        // Shared strings: one per tenant, so tallies compare tenants by pointer.
        let tenant = Some(super::node::key(info.map(|ns| ns.tenant(&self.tenant_label)).unwrap_or(name)));
        NamespaceScope { name: name.clone(), selected, info, tenant, where_memo: Default::default() }
    }

    /// The scope of `namespace`: `current` when it already is that namespace's (objects come
    /// in runs of one namespace), resolved anew otherwise.
    fn scope_for<'s, 'a>(
        &self,
        current: &'s mut Option<NamespaceScope<'a>>,
        index: &'a ObjectIndex,
        namespace: &Arc<str>,
        visibility: &Visibility,
    ) -> &'s NamespaceScope<'a> {
        let same = current.as_ref().is_some_and(|s| Arc::ptr_eq(&s.name, namespace) || s.name == *namespace);
        if !same {
            *current = Some(self.namespace_scope(index, namespace, visibility));
        }
        current.as_ref().expect("set above")
    }

    /// Evaluates one object in its namespace's scope, or None when it is not selected at all.
    /// An expression over the cost limit leaves its message in `over_cost`.
    fn evaluate_object(
        &self,
        pass: &Pass,
        obj: &CachedObject,
        ns: &NamespaceScope<'_>,
        lookup: &dyn super::fast::Lookup,
        passes_memo: Option<&mut Memo>,
        over_cost: &mut Option<String>,
    ) -> Option<ObjectResult> {
        if !ns.selected || self.selector.as_ref().is_some_and(|s| !s.matches_node(obj.labels())) {
            return None;
        }
        let inputs = Inputs {
            env: Env {
                object: &obj.node,
                namespace: ns.info.map(|n| &n.node),
                tenant: ns.tenant.as_deref(),
                lookup,
            },
            now: pass.now.as_ref(),
        };
        // The tenant is the scope's: callers that keep the result fill it in, a full pass
        // hands the scope's to the tally (no reference count per object and metric).
        let tenant = None;
        let mut error: Option<String> = None;
        let mut fail = |error: &mut Option<String>, e: EvalError| {
            if let EvalError::CostLimitExceeded { .. } = e {
                over_cost.get_or_insert_with(|| e.message());
            }
            error.get_or_insert(e.message());
        };
        let in_population = match &self.where_ {
            None => true,
            Some(w) => if w.namespace_only() {
                ns.where_memo.get_or_init(|| w.eval_bool(&pass.root, &inputs)).clone()
            } else {
                w.eval_bool(&pass.root, &inputs)
            }
            .unwrap_or_else(|e| {
                fail(&mut error, e);
                true
            }),
        };
        if !in_population {
            return Some(ObjectResult { tenant, in_population, passes: false, value: None, error: None });
        }
        let passes = match &self.passes {
            None => true,
            Some(_) if error.is_some() => false,
            Some(p) => {
                let result = match passes_memo {
                    Some(memo) => memo.get_or_insert_with(|| p.eval_bool(&pass.root, &inputs)).clone(),
                    None => p.eval_bool(&pass.root, &inputs),
                };
                result.unwrap_or_else(|e| {
                    fail(&mut error, e);
                    false
                })
            }
        };
        let value = match &self.value {
            Some(v) if error.is_none() => {
                v.eval_number(&pass.root, &inputs).map_err(|e| fail(&mut error, e)).ok()
            }
            _ => None,
        };
        let passes = passes && error.is_none();
        Some(ObjectResult { tenant, in_population, passes, value, error })
    }

    /// Evaluates every object of the kind, within the pass's time budget.
    pub fn evaluate_all(
        &self,
        pass: &Pass,
        index: &ObjectIndex,
        visibility: &Visibility,
    ) -> Result<Tally, EvaluationError> {
        let table: &Arc<_> =
            index.objects(&self.kind).ok_or_else(|| EvaluationError::KindNotObserved(self.kind.clone()))?;
        let scope = LookupScope::new(index, visibility.confined_to());
        let lookup = LookupIn { index, visibility };
        let keys: Arc<[ObjectKey]> = table.keys().cloned().collect();
        with_scope(scope, || {
            let mut tally = TallyBuilder::new(keys, self.aggregate == Aggregate::NamespaceCoverage);
            let mut ns: Option<NamespaceScope<'_>> = None;
            for (i, (k, o)) in table.iter().enumerate() {
                // The budget is checked before every object (one clock read, a few ns): a
                // hostile object's evaluation is slow on its own, so checking every n objects
                // would let one pass overrun its budget n-fold.
                if let Some((deadline, budget)) = pass.budget
                    && std::time::Instant::now() > deadline
                {
                    return Err(EvaluationError::TimeBudgetExceeded {
                        budget,
                        evaluated: i,
                        total: table.len(),
                    });
                }
                let scope = self.scope_for(&mut ns, index, &k.namespace, visibility);
                let mut over_cost = None;
                if let Some(r) = self.evaluate_object(pass, o, scope, &lookup, None, &mut over_cost) {
                    tally.push(i as u32, scope.tenant.as_ref(), r);
                }
                stop_over_cost(over_cost, k)?;
            }
            Ok(self.finish(index, visibility, tally))
        })
    }

    /// Evaluates several metrics that observe the same kind with the same visibility in one
    /// pass over the objects: each object is read from memory once for all of them, instead
    /// of once per metric. Results are exactly those of [`CompiledKubernetes::evaluate_all`]
    /// per metric. The pass may take each metric's time budget once; beyond that the metrics
    /// are evaluated one by one, so that the budget stops (and names) only the expensive one.
    pub fn evaluate_group(
        metrics: &[&Self],
        pass: &Pass,
        index: &ObjectIndex,
        visibility: &Visibility,
    ) -> Vec<Result<Tally, EvaluationError>> {
        let Some(first) = metrics.first() else { return Vec::new() };
        let one_by_one = || metrics.iter().map(|m| m.evaluate_all(pass, index, visibility)).collect();
        if metrics.len() == 1 || metrics.iter().any(|m| m.kind != first.kind) {
            return one_by_one();
        }
        let Some(table) = index.objects(&first.kind) else { return one_by_one() };
        let deadline =
            pass.budget.map(|(_, budget)| std::time::Instant::now() + budget * metrics.len() as u32);
        let scope = LookupScope::new(index, visibility.confined_to());
        let lookup = LookupIn { index, visibility };
        let keys: Arc<[ObjectKey]> = table.keys().cloned().collect();
        // Metrics often share a `passes` expression (one check, several thresholds or
        // selections): evaluate it once per object. Its result depends on the object, its
        // namespace, `now` (one per pass) and `tenant` (one per tenant label).
        let mut slots: HashMap<(&str, &str), usize> = HashMap::new();
        let mut uses: HashMap<(&str, &str), usize> = HashMap::new();
        for m in metrics {
            if let Some(p) = &m.passes {
                *uses.entry((p.source(), m.tenant_label.as_str())).or_default() += 1;
            }
        }
        let slot_of: Vec<Option<usize>> = metrics
            .iter()
            .map(|m| {
                let key = (m.passes.as_ref()?.source(), m.tenant_label.as_str());
                (uses[&key] > 1).then(|| {
                    let next = slots.len();
                    *slots.entry(key).or_insert(next)
                })
            })
            .collect();
        let mut memo: Vec<Memo> = vec![None; slots.len()];
        let grouped = with_scope(scope, || {
            let mut tallies: Vec<TallyBuilder> = metrics
                .iter()
                .map(|m| TallyBuilder::new(keys.clone(), m.aggregate == Aggregate::NamespaceCoverage))
                .collect();
            let mut scopes: Vec<Option<NamespaceScope<'_>>> = metrics.iter().map(|_| None).collect();
            let mut over_cost = None;
            for (i, (k, o)) in table.iter().enumerate() {
                if deadline.is_some_and(|d| std::time::Instant::now() > d) {
                    return None;
                }
                memo.iter_mut().for_each(|m| *m = None);
                for (((m, ns), tally), slot) in
                    metrics.iter().zip(scopes.iter_mut()).zip(tallies.iter_mut()).zip(&slot_of)
                {
                    let scope = m.scope_for(ns, index, &k.namespace, visibility);
                    let shared = slot.map(|s| &mut memo[s]);
                    if let Some(r) = m.evaluate_object(pass, o, scope, &lookup, shared, &mut over_cost) {
                        tally.push(i as u32, scope.tenant.as_ref(), r);
                    }
                }
                // One metric over its cost: evaluate them one by one, which names it.
                if over_cost.is_some() {
                    return None;
                }
            }
            Some(tallies)
        });
        let Some(grouped) = grouped else {
            let fresh = Pass::with_budget(pass.at, pass.budget.map(|(_, b)| b).unwrap_or_default());
            return metrics.iter().map(|m| m.evaluate_all(&fresh, index, visibility)).collect();
        };
        metrics.iter().zip(grouped).map(|(m, tally)| Ok(m.finish(index, visibility, tally))).collect()
    }

    /// The tally of a full evaluation.
    fn finish(&self, index: &ObjectIndex, visibility: &Visibility, tally: TallyBuilder) -> Tally {
        let mut tally = tally.finish();
        if self.aggregate == Aggregate::NamespaceCoverage {
            tally.set_namespaces(
                self.selected_namespaces(index, visibility)
                    .map(|ns| (ns.name.clone(), Arc::from(ns.tenant(&self.tenant_label)))),
            );
        }
        tally
    }

    /// Re-evaluates the objects in `keys` only (after watch events), updating `tally`. An
    /// object over the cost limit stops the metric as in a full evaluation.
    pub fn evaluate_changed(
        &self,
        pass: &Pass,
        index: &ObjectIndex,
        visibility: &Visibility,
        keys: &[ObjectKey],
        tally: &mut Tally,
    ) -> Result<(), EvaluationError> {
        let scope = LookupScope::new(index, visibility.confined_to());
        let lookup = LookupIn { index, visibility };
        with_scope(scope, || {
            for key in keys {
                let mut over_cost = None;
                let result = index.get(&self.kind, key).and_then(|o| {
                    let ns = self.namespace_scope(index, &key.namespace, visibility);
                    let r = self.evaluate_object(pass, o, &ns, &lookup, None, &mut over_cost)?;
                    Some(ObjectResult { tenant: ns.tenant.clone(), ..r })
                });
                stop_over_cost(over_cost, key)?;
                tally.set(key.clone(), result);
            }
            Ok(())
        })
    }

    /// The namespaces in scope, for NamespaceCoverage.
    pub fn selected_namespaces<'a>(
        &'a self,
        index: &'a ObjectIndex,
        visibility: &'a Visibility,
    ) -> impl Iterator<Item = &'a Arc<NamespaceInfo>> + 'a {
        index.namespaces().filter(move |ns| self.namespace_selected(ns, visibility))
    }

    /// The `passes` expression as written (metrics sharing one are best evaluated together).
    pub fn passes_source(&self) -> Option<&str> {
        self.passes.as_ref().map(|p| p.source())
    }

    /// The tenant label this metric groups by.
    pub fn tenant_label(&self) -> &str {
        &self.tenant_label
    }
}

/// The error that stops an evaluation after an expression exceeded the cost limit on the
/// object `key`.
fn stop_over_cost(over_cost: Option<String>, key: &ObjectKey) -> Result<(), EvaluationError> {
    match over_cost {
        None => Ok(()),
        Some(message) => Err(EvaluationError::CostLimitExceeded(format!(
            "{message} ({})",
            super::aggregate::display_key(key)
        ))),
    }
}

/// `lookup()` for the fast evaluator: the cached object, confined like the metric.
struct LookupIn<'a> {
    index: &'a ObjectIndex,
    visibility: &'a Visibility,
}

impl super::fast::Lookup for LookupIn<'_> {
    fn lookup(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<&Node> {
        if self.visibility.confined_to().is_some_and(|c| c != namespace) {
            return None;
        }
        let key = ObjectKey { namespace: namespace.into(), name: name.into() };
        self.index.get(&Kind::new(api_version, kind), &key).map(|o| &o.node)
    }
}
