//! Engine behaviour on plain data: aggregates, tenants, offenders, confinement, errors, joins.

use serde_json::{Value, json};

use super::*;
use crate::api::security_metric::{MetricState, Offender, SecurityMetricSpec};

fn spec(source: Value, objective: Value, tenancy: bool) -> SecurityMetricSpec {
    let mut s = json!({
        "displayName": "m", "description": "d", "type": "Technical", "category": "Other",
        "owner": {"team": "t", "responsibility": "ApplicationProvider"},
        "source": {"kubernetes": source},
        "objective": objective,
    });
    if tenancy {
        s["tenancy"] = json!({});
    }
    serde_json::from_value(s).unwrap()
}

fn ns(name: &str, tenant: Option<&str>) -> Value {
    let labels = tenant.map(|t| json!({"secmetrics.io/tenant": t})).unwrap_or(json!({}));
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

fn pod(ns: &str, name: &str, non_root: Option<bool>, cpu_millis: i64) -> Value {
    let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {"containers": [{"name": "c", "image": "nginx:1", "resources": {"requests": {"cpuMillis": cpu_millis}}}]}});
    if let Some(b) = non_root {
        p["spec"]["securityContext"] = json!({"runAsNonRoot": b});
    }
    p
}

fn index(objs: Vec<Value>) -> ObjectIndex {
    let mut idx = ObjectIndex::default();
    idx.ensure_kind(&Kind::new("v1", "Namespace"));
    idx.ensure_kind(&Kind::new("v1", "Pod"));
    for o in objs {
        let kind = Kind::new(o["apiVersion"].as_str().unwrap(), o["kind"].as_str().unwrap());
        idx.apply(&kind, o);
    }
    idx
}

fn evaluate(spec: &SecurityMetricSpec, idx: &ObjectIndex, vis: Visibility) -> SecurityMetricStatus {
    let CompiledSource::Kubernetes(k) = compile(spec).unwrap() else { panic!() };
    let pass = Pass::new(chrono::Utc::now());
    let results = k.evaluate_all(&pass, idx, &vis).expect("kind observed");
    let m = aggregate::measure(&k, &results, MAX_OFFENDERS);
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    build_status(spec, Some(1), None, &Outcome::Measured(m), &now)
}

const NON_ROOT: &str = "has(object.spec.securityContext) && object.spec.securityContext.runAsNonRoot";

fn cluster() -> ObjectIndex {
    index(vec![
        ns("a1", Some("team-a")),
        ns("a2", Some("team-a")),
        ns("b1", Some("team-b")),
        ns("empty", None),
        pod("a1", "p1", Some(true), 100),
        pod("a1", "p2", Some(true), 200),
        pod("a2", "p3", Some(false), 300),
        pod("b1", "p4", None, 400),
        pod("b1", "p5", Some(true), 500),
    ])
}

fn value_of(aggregate: &str, extra: Value) -> Option<f64> {
    let mut src = json!({"resource": {"apiVersion": "v1", "kind": "Pod"}, "aggregate": aggregate,
        "passes": NON_ROOT, "value": "object.spec.containers[0].resources.requests.cpuMillis"});
    for (k, v) in extra.as_object().unwrap() {
        src[k] = v.clone();
    }
    evaluate(&spec(src, json!({"operator": ">=", "target": 0}), false), &cluster(), Visibility::Cluster).value
}

#[test]
fn every_aggregate() {
    assert_eq!(value_of("Ratio", json!({})), Some(60.0));
    assert_eq!(value_of("Count", json!({})), Some(5.0));
    assert_eq!(value_of("CountPassing", json!({})), Some(3.0));
    assert_eq!(value_of("CountFailing", json!({})), Some(2.0));
    assert_eq!(value_of("Sum", json!({})), Some(1500.0));
    assert_eq!(value_of("Min", json!({})), Some(100.0));
    assert_eq!(value_of("Max", json!({})), Some(500.0));
    assert_eq!(value_of("Average", json!({})), Some(300.0));
    // `where` narrows the population for every aggregate.
    assert_eq!(value_of("Count", json!({"where": "object.metadata.namespace != 'b1'"})), Some(3.0));
    assert_eq!(value_of("Ratio", json!({"where": "object.metadata.namespace == 'a1'"})), Some(100.0));
    // Selectors.
    assert_eq!(value_of("Count", json!({"selector": {"matchLabels": {"app": "p1"}}})), Some(1.0));
    assert_eq!(
        value_of("Count", json!({"namespaceSelector": {"matchLabels": {"secmetrics.io/tenant": "team-b"}}})),
        Some(2.0)
    );
}

#[test]
fn empty_population_has_no_ratio_but_counts_zero() {
    let none = json!({"where": "false"});
    assert_eq!(value_of("Ratio", none.clone()), None);
    assert_eq!(value_of("Average", none.clone()), None);
    assert_eq!(value_of("Min", none.clone()), None);
    assert_eq!(value_of("Count", none.clone()), Some(0.0));
    assert_eq!(value_of("Sum", none), Some(0.0));
}

#[test]
fn no_data_is_unknown_and_not_ready() {
    let s = spec(
        json!({"resource": {"apiVersion": "v1", "kind": "Pod"}, "where": "false", "passes": "true"}),
        json!({"operator": ">=", "target": 0}),
        false,
    );
    let st = evaluate(&s, &cluster(), Visibility::Cluster);
    assert_eq!(st.state, MetricState::Unknown);
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "NoData"));
}

#[test]
fn namespace_coverage_counts_namespaces_with_a_passing_object() {
    // a1 and b1 hold a non-root pod; a2 does not; "empty" holds nothing.
    assert_eq!(value_of("NamespaceCoverage", json!({})), Some(50.0));
    let s = spec(
        json!({"resource": {"apiVersion": "v1", "kind": "Pod"}, "aggregate": "NamespaceCoverage", "passes": NON_ROOT}),
        json!({"operator": ">=", "target": 100}),
        true,
    );
    let st = evaluate(&s, &cluster(), Visibility::Cluster);
    let names: Vec<_> = st.offenders.iter().map(|o| (o.kind.as_str(), o.name.as_str())).collect();
    assert_eq!(names, vec![("Namespace", "a2"), ("Namespace", "empty")]);
    assert_eq!(st.tenants_total, Some(3));
}

#[test]
fn tenants_worst_first_with_totals() {
    let s = spec(
        json!({"resource": {"apiVersion": "v1", "kind": "Pod"}, "passes": NON_ROOT}),
        json!({"operator": ">=", "target": 90, "warning": 60}),
        true,
    );
    let st = evaluate(&s, &cluster(), Visibility::Cluster);
    let t: Vec<_> = st.tenants.iter().map(|t| (t.name.as_str(), t.value, t.state)).collect();
    // team-a: 2 of 3 pass (66.67%, Warning); team-b: 1 of 2 (50%, Breached).
    assert_eq!(
        t,
        vec![("team-b", Some(50.0), MetricState::Breached), ("team-a", Some(66.6667), MetricState::Warning)]
    );
    assert_eq!((st.tenants_total, st.tenants_breached), (Some(2), Some(1)));
    // Overall 3 of 5 = 60%: exactly at the warning bound.
    assert_eq!(st.state, MetricState::Warning);
}

#[test]
fn offenders_are_ordered_capped_and_reference_only() {
    let mut objs = vec![ns("z", None), ns("a", None)];
    for i in (0..30).rev() {
        objs.push(pod("z", &format!("p{i:02}"), Some(false), 1));
        objs.push(pod("a", &format!("p{i:02}"), Some(false), 1));
    }
    let s = spec(
        json!({"resource": {"apiVersion": "v1", "kind": "Pod"}, "passes": NON_ROOT}),
        json!({"operator": ">=", "target": 90}),
        false,
    );
    let st = evaluate(&s, &index(objs), Visibility::Cluster);
    assert_eq!(st.offenders_total, Some(60));
    assert_eq!(st.offenders.len(), MAX_OFFENDERS);
    assert_eq!(
        st.offenders[0],
        Offender {
            kind: "Pod".into(),
            namespace: Some("a".into()),
            name: "p00".into(),
            tenant: Some("a".into())
        }
    );
    assert!(st.offenders.windows(2).all(|w| (&w[0].namespace, &w[0].name) < (&w[1].namespace, &w[1].name)));
    let yaml = serde_json::to_string(&st).unwrap();
    assert!(!yaml.contains("nginx"), "status never carries object contents");
}

#[test]
fn tenants_are_capped() {
    let mut objs = vec![];
    for i in 0..50 {
        objs.push(ns(&format!("n{i}"), None));
        objs.push(pod(&format!("n{i}"), "p", Some(i % 2 == 0), 1));
    }
    let s = spec(
        json!({"resource": {"apiVersion": "v1", "kind": "Pod"}, "passes": NON_ROOT}),
        json!({"operator": ">=", "target": 90}),
        true,
    );
    let st = evaluate(&s, &index(objs), Visibility::Cluster);
    assert_eq!(st.tenants.len(), MAX_TENANTS);
    assert_eq!((st.tenants_total, st.tenants_breached), (Some(50), Some(25)));
    assert!(st.tenants.iter().all(|t| t.state == MetricState::Breached), "worst first");
}

#[test]
fn confined_metric_sees_only_its_namespace() {
    let s = spec(
        json!({"resource": {"apiVersion": "v1", "kind": "Pod"}, "passes": NON_ROOT,
               "namespaceSelector": {}}),
        json!({"operator": ">=", "target": 90}),
        true,
    );
    let st = evaluate(&s, &cluster(), Visibility::Namespace("a2".into()));
    assert_eq!(st.population, Some(1));
    assert!(st.offenders.iter().all(|o| o.namespace.as_deref() == Some("a2")));
    assert!(st.tenants.iter().all(|t| t.name == "team-a"));
}

#[test]
fn runtime_errors_are_counted_not_fatal_and_never_pass() {
    let s = spec(
        json!({"resource": {"apiVersion": "v1", "kind": "Pod"}, "passes": "object.spec.securityContext.runAsNonRoot"}),
        json!({"operator": ">=", "target": 50}),
        false,
    );
    let st = evaluate(&s, &cluster(), Visibility::Cluster);
    assert_eq!(st.evaluation_errors, Some(1), "p4 has no securityContext");
    assert!(
        st.first_evaluation_error.as_deref().unwrap().starts_with("b1/p4: passes:"),
        "{:?}",
        st.first_evaluation_error
    );
    assert_eq!(st.passing, Some(3));
    assert_eq!(st.value, Some(60.0));
}

#[test]
fn non_bool_passes_is_an_error_naming_the_type() {
    let s = spec(
        json!({"resource": {"apiVersion": "v1", "kind": "Pod"}, "passes": "object.metadata.name"}),
        json!({"operator": ">=", "target": 50}),
        false,
    );
    let st = evaluate(&s, &cluster(), Visibility::Cluster);
    assert_eq!(st.evaluation_errors, Some(5));
    assert!(st.first_evaluation_error.unwrap().contains("passes must be a bool, got string"));
}

#[test]
fn invalid_expression_is_reported_with_position() {
    let s = spec(
        json!({"resource": {"apiVersion": "v1", "kind": "Pod"}, "where": "objetc.spec", "passes": "true"}),
        json!({"operator": ">=", "target": 50}),
        false,
    );
    let err = compile(&s).unwrap_err();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let st = build_status(&s, Some(3), None, &Outcome::Invalid(err), &now);
    assert_eq!(st.state, MetricState::Unknown);
    let c = st.conditions.iter().find(|c| c.type_ == "ExpressionValid").unwrap();
    assert_eq!(c.status, "False");
    assert!(
        c.message.starts_with("where: undeclared reference to 'objetc'") && c.message.ends_with("at 1:1"),
        "{}",
        c.message
    );
    assert_eq!(st.observed_generation, Some(3));
}

#[test]
fn lookup_joins_role_bindings_to_roles_within_visibility() {
    let idx = {
        let mut idx = cluster();
        idx.ensure_kind(&Kind::new("rbac.authorization.k8s.io/v1", "Role"));
        idx.ensure_kind(&Kind::new("rbac.authorization.k8s.io/v1", "RoleBinding"));
        for (ns, role, verbs) in [("a1", "reader", json!(["get"])), ("a2", "admin", json!(["*"]))] {
            idx.apply(
                &Kind::new("rbac.authorization.k8s.io/v1", "Role"),
                json!({"metadata": {"name": role, "namespace": ns}, "rules": [{"verbs": verbs, "resources": ["pods"]}]}),
            );
            idx.apply(
                &Kind::new("rbac.authorization.k8s.io/v1", "RoleBinding"),
                json!({"metadata": {"name": format!("{role}-binding"), "namespace": ns},
                       "roleRef": {"kind": "Role", "name": role}}),
            );
        }
        idx
    };
    let s = spec(
        json!({"resource": {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding"},
               "aggregate": "CountFailing",
               "passes": "lookup('rbac.authorization.k8s.io/v1', 'Role', object.metadata.namespace, object.roleRef.name) == null || !lookup('rbac.authorization.k8s.io/v1', 'Role', object.metadata.namespace, object.roleRef.name).rules.exists(r, '*' in r.verbs)"}),
        json!({"operator": "<=", "target": 0}),
        false,
    );
    let st = evaluate(&s, &idx, Visibility::Cluster);
    assert_eq!(st.value, Some(1.0));
    assert_eq!(st.offenders[0].name, "admin-binding");
    // Confined to a1, a lookup into a2 sees nothing.
    let confined = spec(
        json!({"resource": {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding"},
               "aggregate": "CountPassing",
               "passes": "lookup('rbac.authorization.k8s.io/v1', 'Role', 'a2', 'admin') != null"}),
        json!({"operator": "<=", "target": 0}),
        false,
    );
    assert_eq!(evaluate(&confined, &idx, Visibility::Namespace("a1".into())).value, Some(0.0));
    assert_eq!(evaluate(&confined, &idx, Visibility::Cluster).value, Some(2.0));
}

#[test]
fn incremental_update_matches_full_evaluation() {
    let s = spec(
        json!({"resource": {"apiVersion": "v1", "kind": "Pod"}, "passes": NON_ROOT}),
        json!({"operator": ">=", "target": 90}),
        true,
    );
    let CompiledSource::Kubernetes(k) = compile(&s).unwrap() else { panic!() };
    let mut idx = cluster();
    let pass = Pass::new(chrono::Utc::now());
    let mut results = k.evaluate_all(&pass, &idx, &Visibility::Cluster).unwrap();
    idx.apply(&Kind::new("v1", "Pod"), pod("a2", "p3", Some(true), 300));
    idx.delete(&Kind::new("v1", "Pod"), &ObjectKey { namespace: "b1".into(), name: "p4".into() });
    let changed = [
        ObjectKey { namespace: "a2".into(), name: "p3".into() },
        ObjectKey { namespace: "b1".into(), name: "p4".into() },
    ];
    k.evaluate_changed(&pass, &idx, &Visibility::Cluster, &changed, &mut results).unwrap();
    assert_eq!(
        results,
        k.evaluate_all(&pass, &idx, &Visibility::Cluster).unwrap(),
        "same results and totals"
    );
    let m = aggregate::measure(&k, &results, MAX_OFFENDERS);
    assert_eq!(m.value, Some(100.0));
}

#[test]
fn status_unchanged_ignores_evaluation_time() {
    let s = spec(
        json!({"resource": {"apiVersion": "v1", "kind": "Pod"}, "passes": NON_ROOT}),
        json!({"operator": ">=", "target": 90}),
        false,
    );
    let idx = cluster();
    let first = evaluate(&s, &idx, Visibility::Cluster);
    let CompiledSource::Kubernetes(k) = compile(&s).unwrap() else { panic!() };
    let pass = Pass::new(chrono::Utc::now());
    let m = aggregate::measure(&k, &k.evaluate_all(&pass, &idx, &Visibility::Cluster).unwrap(), 20);
    let later = Time(k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_secs(60));
    let second = build_status(&s, Some(1), Some(&first), &Outcome::Measured(m), &later);
    assert!(!status_changed(&first, &second));
    assert_eq!(second.last_transition, first.last_transition);
    assert_ne!(second.last_evaluated, first.last_evaluated);
}

#[test]
fn time_budget_stops_expensive_evaluations_and_is_reported() {
    let mut objs = vec![ns("n", None)];
    for i in 0..600 {
        objs.push(pod("n", &format!("p{i:03}"), Some(true), 1));
    }
    let idx = index(objs);
    let s = spec(
        json!({"resource": {"apiVersion": "v1", "kind": "Pod"}, "passes": NON_ROOT}),
        json!({"operator": ">=", "target": 90}),
        false,
    );
    let CompiledSource::Kubernetes(k) = compile(&s).unwrap() else { panic!() };
    let pass = Pass::with_budget(chrono::Utc::now(), std::time::Duration::ZERO);
    let err = k.evaluate_all(&pass, &idx, &Visibility::Cluster).unwrap_err();
    assert!(matches!(err, EvaluationError::TimeBudgetExceeded { evaluated: 0, total: 600, .. }), "{err:?}");
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let st = build_status(&s, Some(1), None, &Outcome::from(err), &now);
    assert_eq!(st.state, MetricState::Unknown);
    let c = st.conditions.iter().find(|c| c.type_ == "ExpressionValid").unwrap();
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "CostLimitExceeded"));
    assert!(c.message.contains("after 0 of 600 objects"), "{}", c.message);
    // A generous budget evaluates everything.
    let pass = Pass::with_budget(chrono::Utc::now(), std::time::Duration::from_secs(60));
    assert_eq!(k.evaluate_all(&pass, &idx, &Visibility::Cluster).unwrap().len(), 600);
}

#[test]
fn group_evaluation_equals_one_by_one() {
    let sources = [
        json!({"resource": {"apiVersion": "v1", "kind": "Pod"}, "passes": NON_ROOT}),
        json!({"resource": {"apiVersion": "v1", "kind": "Pod"}, "passes": NON_ROOT,
               "namespaceSelector": {"matchLabels": {"secmetrics.io/tenant": "team-a"}}}),
        json!({"resource": {"apiVersion": "v1", "kind": "Pod"}, "aggregate": "Sum",
               "value": "object.spec.containers[0].resources.requests.cpuMillis", "selector": {"matchLabels": {"app": "p4"}}}),
        json!({"resource": {"apiVersion": "v1", "kind": "Pod"}, "aggregate": "NamespaceCoverage", "passes": NON_ROOT}),
        json!({"resource": {"apiVersion": "v1", "kind": "Pod"}, "passes": "object.spec.securityContext.runAsNonRoot"}),
        // A shared `passes` that reads `tenant`: shared only between metrics with the same
        // tenant label (the last one has another).
        json!({"resource": {"apiVersion": "v1", "kind": "Pod"}, "passes": "tenant == 'team-a'"}),
        json!({"resource": {"apiVersion": "v1", "kind": "Pod"}, "passes": "tenant == 'team-a'", "where": "true"}),
        json!({"resource": {"apiVersion": "v1", "kind": "Pod"}, "passes": "tenant == 'team-a'"}),
    ];
    let last = sources.len() - 1;
    let compiled: Vec<_> = sources
        .iter()
        .enumerate()
        .map(|(i, src)| {
            let mut spec = spec(src.clone(), json!({"operator": ">=", "target": 1}), true);
            if i == last {
                spec.tenancy =
                    Some(crate::api::security_metric::Tenancy { tenant_label: "unused-label".into() });
            }
            let CompiledSource::Kubernetes(k) = compile(&spec).unwrap() else { panic!() };
            k
        })
        .collect();
    let group: Vec<&CompiledKubernetes> = compiled.iter().map(|k| &**k).collect();
    let idx = cluster();
    for vis in [Visibility::Cluster, Visibility::Namespace("b1".into())] {
        let pass = Pass::new(chrono::Utc::now());
        let grouped = CompiledKubernetes::evaluate_group(&group, &pass, &idx, &vis);
        let mut tallies = Vec::new();
        for (k, g) in group.iter().zip(grouped) {
            let g = g.unwrap();
            assert_eq!(g, k.evaluate_all(&pass, &idx, &vis).unwrap(), "{vis:?}");
            tallies.push(g);
        }
        if vis == Visibility::Cluster {
            // Same expression, other tenant label: another answer (no namespace is named team-a).
            assert_ne!(tallies[last - 1], tallies[last]);
        }
    }
    // Out of budget together: each metric is then evaluated (and stopped) on its own.
    let mut objs = vec![ns("n", None)];
    objs.extend((0..600).map(|i| pod("n", &format!("p{i:03}"), Some(true), 1)));
    let big = index(objs);
    let pass = Pass::with_budget(chrono::Utc::now(), std::time::Duration::ZERO);
    let grouped = CompiledKubernetes::evaluate_group(&group, &pass, &big, &Visibility::Cluster);
    assert!(grouped.iter().all(|r| matches!(r, Err(EvaluationError::TimeBudgetExceeded { .. }))));
}

#[test]
fn namespace_object_and_tenant_come_from_the_objects_namespace() {
    // team-a holds a1 (p1, p2) and a2 (p3); the fast evaluator and the interpreter (the
    // `matches` call is outside the fast subset) see the same variables.
    for where_ in [
        "namespaceObject.labels['secmetrics.io/tenant'] == 'team-a' && tenant == 'team-a'",
        "namespaceObject.name.matches('^a[0-9]$') && tenant.matches('^team-a$')",
    ] {
        let s = spec(
            json!({"resource": {"apiVersion": "v1", "kind": "Pod"}, "where": where_, "aggregate": "Count"}),
            json!({"operator": ">=", "target": 0}),
            false,
        );
        let st = evaluate(&s, &cluster(), Visibility::Cluster);
        assert_eq!((st.value, st.evaluation_errors), (Some(3.0), None), "{where_}");
    }
}

#[test]
fn namespace_only_expressions_are_recognised() {
    use super::expression::Expression;
    let only = |src: &str| Expression::compile("where", src).unwrap().namespace_only();
    assert!(only("object.metadata.namespace != 'kube-system'"));
    assert!(only("!(object.metadata.namespace in ['a', 'b']) && tenant != 'x'"));
    assert!(only("namespaceObject.metadata.labels.env == 'prod'"));
    assert!(only("object.metadata.namespace.startsWith('team-')"));
    assert!(!only("object.metadata.name != 'x'"));
    assert!(!only("has(object.metadata.namespace)"), "conservative: a select on object itself");
    assert!(!only("object.metadata.namespace != 'a' && object.spec.nodeName == 'n'"));
    assert!(!only("object.spec.containers.all(c, c.name != object.metadata.namespace)"));
    assert!(!only("lookup('v1', 'Namespace', '', object.metadata.namespace) != null"));
    assert!(!only("now > timestamp('2020-01-01T00:00:00Z')"), "outside the fast subset: not analysed");
}

#[test]
fn a_namespace_only_where_evaluated_once_per_namespace_gives_the_same_tally() {
    // The second `where` means the same but reads the object elsewhere, so it is evaluated for
    // every object; the first is evaluated once per namespace run.
    let tally = |where_: &str| {
        let src =
            json!({"resource": {"apiVersion": "v1", "kind": "Pod"}, "passes": NON_ROOT, "where": where_});
        let CompiledSource::Kubernetes(k) =
            compile(&spec(src, json!({"operator": ">=", "target": 1}), true)).unwrap()
        else {
            panic!()
        };
        k.evaluate_all(&Pass::new(chrono::Utc::now()), &cluster(), &Visibility::Cluster).unwrap()
    };
    for ns in ["a1", "b1", "nowhere"] {
        let once = tally(&format!("object.metadata.namespace != '{ns}' && tenant != 'team-b'"));
        let each = tally(&format!(
            "object.metadata.namespace != '{ns}' && tenant != 'team-b' && object.metadata.name == object.metadata.name"
        ));
        assert_eq!(once, each, "{ns}");
    }
}

#[test]
fn a_metric_on_any_spelling_of_v1_secrets_never_sees_their_data() {
    let secret = |api_version: &str| {
        json!({"apiVersion": api_version, "kind": "Secret", "metadata": {"name": "s", "namespace": "a1"},
            "type": "Opaque", "data": {"password": "aHVudGVyMg=="}, "stringData": {"k": "v"}})
    };
    for spelling in ["/v1", "v1/", " v1", "core/v1", "V1", "v1"] {
        // The dump spells it one way, the metric another: both are the one core kind.
        let mut idx = index(vec![ns("a1", None)]);
        idx.ensure_kind(&Kind::new(spelling, "Secret"));
        idx.apply(&Kind::new("/v1", "Secret"), secret(spelling));
        for passes in [
            "has(object.data) || has(object.stringData)",
            "lookup('/v1', 'Secret', 'a1', 's') != null && has(lookup('core/v1', 'Secret', 'a1', 's').data)",
        ] {
            let m = spec(
                json!({"resource": {"apiVersion": spelling, "kind": "Secret"}, "passes": passes}),
                json!({"operator": ">=", "target": 100}),
                false,
            );
            let s = evaluate(&m, &idx, Visibility::Cluster);
            assert_eq!((s.population, s.passing), (Some(1), Some(0)), "{spelling:?} {passes}: {s:?}");
        }
    }
}

#[test]
fn a_value_that_is_not_finite_is_unknown_and_not_ready() {
    let ready = |s: &SecurityMetricStatus| s.conditions.iter().find(|c| c.type_ == "Ready").cloned().unwrap();
    // Sum overflows to ±inf (per-object non-finite values are already no value), and so does
    // the Average of an overflowed sum.
    for (aggregate, value, shown) in [
        ("Sum", "1.7976931348623157e308", "inf"),
        ("Sum", "-1.7976931348623157e308", "-inf"),
        ("Average", "1.7976931348623157e308", "inf"),
    ] {
        let m = spec(
            json!({"resource": {"apiVersion": "v1", "kind": "Pod"}, "aggregate": aggregate, "value": value}),
            json!({"operator": ">=", "target": 0}),
            true,
        );
        let s = evaluate(&m, &cluster(), Visibility::Cluster);
        let r = ready(&s);
        assert_eq!((s.value, s.state), (None, MetricState::Unknown), "{aggregate} {value}: {s:?}");
        assert_eq!(
            (r.status.as_str(), r.reason.as_str()),
            ("False", "NonFiniteValue"),
            "{aggregate} {value}"
        );
        assert!(
            r.message.contains(&format!("aggregate {aggregate} over"))
                && r.message.contains(&format!("is {shown}, not a finite number")),
            "{}",
            r.message
        );
        assert!(s.tenants.iter().all(|t| t.value.is_none_or(f64::is_finite)), "{:?}", s.tenants);
    }
    // A finite value too large for four decimals keeps its value.
    let m = spec(
        json!({"resource": {"apiVersion": "v1", "kind": "Pod"}, "aggregate": "Max", "value": "1e305"}),
        json!({"operator": ">=", "target": 0}),
        false,
    );
    let s = evaluate(&m, &cluster(), Visibility::Cluster);
    assert_eq!((s.value, s.state, ready(&s).status.as_str()), (Some(1e305), MetricState::Compliant, "True"));
}
