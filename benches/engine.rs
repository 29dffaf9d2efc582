//! Engine benchmarks (SPEC targets): 100 metrics over 50,000 pods in 5,000 namespaces.
//! - full evaluation of all 100 metrics (one core), as the catalog-like set (10 checks at 10
//!   thresholds) and as 100 metrics that share no expression;
//! - re-evaluation of all 100 metrics after one pod changes (incremental).
//!
//! Figures and the machine go to BENCHMARKS.md.

use criterion::{Criterion, criterion_group, criterion_main};
use secmetrics::api::SecurityMetricSpec;
use secmetrics::engine::{self, CompiledSource, Kind, ObjectIndex, ObjectKey, Pass, Visibility, aggregate};

#[path = "synthetic.rs"]
mod synthetic;

const NAMESPACES: usize = 5_000;
const PODS: usize = 50_000;
const METRICS: usize = 100;

fn compile_all(spec: fn(usize) -> serde_json::Value) -> Vec<engine::CompiledKubernetes> {
    (0..METRICS)
        .map(|i| {
            let spec: SecurityMetricSpec = serde_json::from_value(spec(i)).unwrap();
            match engine::compile(&spec).unwrap() {
                CompiledSource::Kubernetes(k) => *k,
                _ => unreachable!("synthetic metrics are Kubernetes metrics"),
            }
        })
        .collect()
}

fn full_evaluation(metrics: &[engine::CompiledKubernetes], index: &ObjectIndex) {
    let pass = Pass::new(chrono::Utc::now());
    let group: Vec<_> = metrics.iter().collect();
    let tallies = engine::CompiledKubernetes::evaluate_group(&group, &pass, index, &Visibility::Cluster);
    for (m, results) in metrics.iter().zip(tallies) {
        std::hint::black_box(aggregate::measure(m, &results.unwrap(), engine::MAX_OFFENDERS));
    }
}

fn setup() -> (ObjectIndex, Vec<engine::CompiledKubernetes>) {
    let mut index = ObjectIndex::default();
    let ns_kind = Kind::new("v1", "Namespace");
    let pod_kind = Kind::new("v1", "Pod");
    index.reset(&ns_kind, (0..NAMESPACES).map(synthetic::namespace));
    index.reset(&pod_kind, (0..PODS).map(|i| synthetic::pod(i, NAMESPACES)));
    (index, compile_all(synthetic::metric_spec))
}

fn bench(c: &mut Criterion) {
    let (mut index, metrics) = setup();
    let vis = Visibility::Cluster;
    let mut group = c.benchmark_group("engine");
    group.sample_size(10);

    group.bench_function("full_evaluation_100_metrics_50k_pods", |b| {
        b.iter(|| full_evaluation(&metrics, &index))
    });
    let distinct = compile_all(synthetic::distinct_metric_spec);
    group.bench_function("full_evaluation_100_distinct_metrics_50k_pods", |b| {
        b.iter(|| full_evaluation(&distinct, &index))
    });

    let pass = Pass::new(chrono::Utc::now());
    let mut results: Vec<_> = metrics.iter().map(|m| m.evaluate_all(&pass, &index, &vis).unwrap()).collect();
    let pod_kind = Kind::new("v1", "Pod");
    let mut flip = 0usize;
    group.bench_function("reevaluate_100_metrics_after_one_pod_change", |b| {
        b.iter(|| {
            flip += 1;
            let i = 12_345;
            let mut pod = synthetic::pod(i + (flip % 2) * 3, NAMESPACES);
            pod["metadata"]["name"] = serde_json::json!(format!("pod-{i:06}"));
            pod["metadata"]["namespace"] = serde_json::json!(format!("ns-{:05}", i % NAMESPACES));
            index.apply(&pod_kind, pod);
            let key = ObjectKey {
                namespace: format!("ns-{:05}", i % NAMESPACES).into(),
                name: format!("pod-{i:06}").into(),
            };
            for (m, r) in metrics.iter().zip(results.iter_mut()) {
                m.evaluate_changed(&pass, &index, &vis, std::slice::from_ref(&key), r)
                    .expect("within the cost limit");
                std::hint::black_box(aggregate::measure(m, r, engine::MAX_OFFENDERS));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
