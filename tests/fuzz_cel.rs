//! Property-based fuzzing of the CEL engine (issue 12: hostile tenants), on stable Rust with
//! proptest (cargo-fuzz needs a nightly toolchain).
//!
//! Every `where`, `passes` and `value` is hostile input evaluated inside the one operator
//! process. An integration test, not a unit test module: it reaches the engine through its
//! public API only, and it owns its binary, which it needs for a global allocator that counts
//! bytes per thread and for forked children that may die of a stack overflow.
//!
//! Generators: CEL over the whole language the `cel` crate accepts (`cel`: literals of every
//! type, selections, indexes, every operator, the macros, the standard library, timestamps and
//! durations, regexes, the strings extension, `sum()`, optionals, the variables, `lookup`),
//! well-typed expressions of the fast evaluator's subset (`fast_subset`), hostile shapes
//! (`hostile`), and Kubernetes-like objects (`k8s_object`). Properties:
//!
//! - `Expression::compile` never panics or aborts; every expression that compiles evaluates
//!   (`interpret`, `eval_bool`, `eval_number`, the fast evaluator) without panicking, within
//!   [`TIMEOUT`], and within [`MEMORY_CAP`] bytes held at once by the evaluating thread (over
//!   the cap the allocation fails and the process aborts). Each case runs on a thread with the
//!   operator's stack ([`STACK`]); a stack overflow or an abort kills the process, and
//!   proptest's fork mode turns that into a failed, shrunk case instead of a dead test binary.
//! - whenever the fast evaluator answers, the interpreter gives the same value, on each of one
//!   or two objects in a row (position hints carry over); the public `eval_bool` and
//!   `eval_number` agree with the interpreter.
//! - durations and label selectors never panic.
//!
//! Every finding stays in a regression test (`regression*`, plain tables of sources), run
//! with the suite: long chains that overflowed the parser's stack, exponential strings,
//! nested and chained comprehensions, large sources, map iteration order.
//!
//! Run: `cargo test --test fuzz_cel` (1,000 cases per property, 100 hostile: 40 s in debug
//! on two cores).
//! Long run, 100,000 cases per property (10,000 hostile):
//! `SECMETRICS_FUZZ_CASES=100000 cargo test --release --test fuzz_cel` (160 s for the
//! fast-subset property at 620 cases/s in release; the full-language one stops today at its
//! first case over 5 s). Reproduce one case: see [`one_case`]. Knobs:
//! `SECMETRICS_FUZZ_STACK` (bytes), `SECMETRICS_FUZZ_TIMEOUT_MS`, `SECMETRICS_FUZZ_MEMORY`
//! (bytes), and proptest's `PROPTEST_RNG_SEED` to replay a seed. The
//! case being run is also written to `$CARGO_TARGET_TMPDIR/fuzz_cel-<property>.txt`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cel::Value;
use proptest::prelude::*;
use proptest::strategy::Union;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value as Json, json};

use secmetrics::engine::expression::{Expression, Inputs, root_context, timestamp_val};
use secmetrics::engine::fast;
use secmetrics::engine::lookup::{LookupScope, with_scope};
use secmetrics::engine::node::Node;
use secmetrics::engine::{Kind, ObjectIndex, ObjectKey};

// ---------------------------------------------------------------------------------------------
// Limits and knobs

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Cases per property (`SECMETRICS_FUZZ_CASES`); properties with costlier cases run a share.
static CASES: LazyLock<usize> = LazyLock::new(|| env_usize("SECMETRICS_FUZZ_CASES", 1000));
/// The stack an evaluation runs on: tokio's worker threads' 2 MiB, where the operator
/// evaluates (a release build). Unoptimised frames are far larger (the `cel` parser's: about
/// 170 KB per nested parenthesis, against under 20 KB in release), so a debug build gets
/// 16 MiB: the least with which it accepts every nesting the release build accepts. The
/// release run (`cargo test --release --test fuzz_cel`) is the one that speaks for the
/// operator's stack.
static STACK: LazyLock<usize> = LazyLock::new(|| {
    let operator = 2 << 20;
    env_usize("SECMETRICS_FUZZ_STACK", if cfg!(debug_assertions) { 8 * operator } else { operator })
});
/// Longest a case (compile plus every evaluation) may take.
static TIMEOUT: LazyLock<Duration> =
    LazyLock::new(|| Duration::from_millis(env_usize("SECMETRICS_FUZZ_TIMEOUT_MS", 5000) as u64));
/// Most bytes the evaluating thread may hold at once.
static MEMORY_CAP: LazyLock<usize> = LazyLock::new(|| env_usize("SECMETRICS_FUZZ_MEMORY", 256 << 20));

// ---------------------------------------------------------------------------------------------
// A counting allocator: bytes live per thread, its peak, and a cap for evaluation threads.

struct Counting;

#[derive(Clone, Copy)]
struct Account {
    live: isize,
    peak: isize,
    /// 0: no cap.
    cap: isize,
}

thread_local! {
    static ACCOUNT: Cell<Account> = const { Cell::new(Account { live: 0, peak: 0, cap: 0 }) };
}

/// Charges `delta` bytes to this thread; false when that breaks the thread's cap (the cap is
/// then lifted so that the abort that follows can allocate its message).
fn charge(delta: isize) -> bool {
    ACCOUNT
        .try_with(|a| {
            let mut acc = a.get();
            acc.live += delta;
            if acc.cap > 0 && acc.live > acc.cap {
                acc.cap = 0;
                a.set(acc);
                return false;
            }
            acc.peak = acc.peak.max(acc.live);
            a.set(acc);
            true
        })
        .unwrap_or(true)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !charge(layout.size() as isize) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !charge(layout.size() as isize) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        charge(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !charge(new_size as isize - layout.size() as isize) {
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Starts measuring this thread's peak from now, capped at `cap` more bytes.
fn start_measuring(cap: usize) -> isize {
    ACCOUNT.with(|a| {
        let mut acc = a.get();
        acc.peak = acc.live;
        acc.cap = acc.live + cap as isize;
        a.set(acc);
        acc.live
    })
}

/// Peak bytes above `base` since [`start_measuring`]; lifts the cap.
fn stop_measuring(base: isize) -> usize {
    ACCOUNT.with(|a| {
        let mut acc = a.get();
        acc.cap = 0;
        a.set(acc);
        (acc.peak - base).max(0) as usize
    })
}

// ---------------------------------------------------------------------------------------------
// Running one case

/// The data every case sees besides its object.
struct World {
    namespace: Node,
    index: ObjectIndex,
}

static WORLD: LazyLock<World> = LazyLock::new(|| {
    let mut index = ObjectIndex::default();
    let cm = Kind::new("v1", "ConfigMap");
    index.apply(&cm, json!({"metadata": {"name": "cm", "namespace": "ns"}, "data": {"k": "v"}}));
    index.apply(
        &Kind::new("rbac.authorization.k8s.io/v1", "Role"),
        json!({"metadata": {"name": "admin", "namespace": "ns"}, "rules": [{"verbs": ["*"], "resources": ["*"]}]}),
    );
    let ns = json!({"metadata": {"name": "ns", "labels": {"team": "a", "tier": "ü"}}});
    index.apply(&Kind::new("v1", "Namespace"), ns.clone());
    World { namespace: Node::from(&json!({"name": "ns", "labels": {"team": "a"}, "annotations": {}})), index }
});

struct IndexLookup<'a>(&'a ObjectIndex);

impl fast::Lookup for IndexLookup<'_> {
    fn lookup(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<&Node> {
        let key = ObjectKey { namespace: namespace.into(), name: name.into() };
        self.0.get(&Kind::new(api_version, kind), &key).map(|o| &o.node)
    }
}

/// What a case did, for the statistics.
#[derive(Default)]
struct Outcome {
    compiled: bool,
    fast_answered: bool,
    peak: usize,
}

/// Statistics over the cases of one process.
struct Stats {
    cases: AtomicUsize,
    compiled: AtomicUsize,
    fast: AtomicUsize,
    peak: AtomicUsize,
    slowest_us: AtomicU64,
}

static STATS: Stats = Stats {
    cases: AtomicUsize::new(0),
    compiled: AtomicUsize::new(0),
    fast: AtomicUsize::new(0),
    peak: AtomicUsize::new(0),
    slowest_us: AtomicU64::new(0),
};

/// Compiles and evaluates `src` on `obj` on a thread with the operator's stack, and checks
/// the properties. Err: a property failed (panic, time, disagreement).
fn run_case(property: &str, src: &str, objs: &[Json]) -> Result<Outcome, String> {
    let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fuzz_cel-{property}.txt"));
    let obj = Json::from(objs.to_vec());
    let _ = std::fs::write(&log, format!("{src}\n\n{obj}\n"));
    let (tx, rx) = std::sync::mpsc::channel();
    let (src_owned, objs_owned) = (src.to_string(), objs.to_vec());
    let started = Instant::now();
    let spawned = std::thread::Builder::new().name("fuzz-case".into()).stack_size(*STACK).spawn(move || {
        let result = std::panic::catch_unwind(|| evaluate(&src_owned, &objs_owned));
        let _ = tx.send(result.map_err(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        }));
    });
    spawned.map_err(|e| format!("spawn: {e}"))?;
    let outcome = match rx.recv_timeout(*TIMEOUT) {
        Ok(Ok(result)) => result?,
        Ok(Err(panic)) => return Err(format!("panicked: {panic}\nsource: {src}\nobject: {obj}")),
        Err(_) => {
            // The evaluation cannot be stopped: end the process (in fork mode proptest records
            // the case as failed and goes on in a new child) rather than leave it running.
            let message = format!("fuzz_cel: took more than {:?}\nsource: {src}\nobject: {obj}\n", *TIMEOUT);
            let _ = std::io::Write::write_all(&mut std::io::stderr(), message.as_bytes());
            std::process::abort();
        }
    };
    let micros = started.elapsed().as_micros() as u64;
    STATS.cases.fetch_add(1, Ordering::Relaxed);
    STATS.compiled.fetch_add(outcome.compiled as usize, Ordering::Relaxed);
    STATS.fast.fetch_add(outcome.fast_answered as usize, Ordering::Relaxed);
    STATS.peak.fetch_max(outcome.peak, Ordering::Relaxed);
    STATS.slowest_us.fetch_max(micros, Ordering::Relaxed);
    Ok(outcome)
}

fn evaluate(src: &str, objs: &[Json]) -> Result<Outcome, String> {
    let mut outcome = Outcome::default();
    let Ok(expr) = Expression::compile("passes", src) else { return Ok(outcome) };
    outcome.compiled = true;
    // The fast evaluator's compilation of the same AST (the expression's own is private).
    let op = cel::Program::compile(src).ok().and_then(|p| fast::compile(p.expression()));
    // One compiled expression over several objects, as in a pass: the fields' position hints
    // carry over from one object to the next.
    for obj in objs {
        let (fast_answered, peak) = evaluate_on(src, &expr, op.as_ref(), obj)?;
        outcome.fast_answered |= fast_answered;
        outcome.peak = outcome.peak.max(peak);
    }
    Ok(outcome)
}

/// Evaluates on one object; (whether the fast evaluator answered, peak bytes).
fn evaluate_on(
    src: &str,
    expr: &Expression,
    op: Option<&fast::Op>,
    obj: &Json,
) -> Result<(bool, usize), String> {
    let world = &*WORLD;
    let node = Node::from(obj);
    let root = root_context();
    let now = timestamp_val(chrono::DateTime::from_timestamp(1_780_000_000, 123_000_000).expect("valid"));
    let lookup = IndexLookup(&world.index);
    let inputs = Inputs {
        env: fast::Env {
            object: &node,
            namespace: Some(&world.namespace),
            tenant: Some("team-a"),
            lookup: &lookup,
        },
        now: now.as_ref(),
    };
    let base = start_measuring(*MEMORY_CAP);
    let checked = with_scope(LookupScope::new(&world.index, None), || {
        let reference = expr.interpret(&root, &inputs);
        let as_bool = expr.eval_bool(&root, &inputs);
        let as_number = expr.eval_number(&root, &inputs);
        let fast =
            op.map(|op| (fast::eval(op, &inputs.env).map(|v| v.to_cel()), fast::eval_bool(op, &inputs.env)));
        (reference, as_bool, as_number, fast)
    });
    let peak = stop_measuring(base);
    let mut fast_answered = false;
    let (reference, as_bool, as_number, fast) = checked;
    let fail =
        |what: String| Err(format!("{what}\nsource: {src}\nobject: {obj}\ninterpreter: {reference:?}"));
    // The public entry points answer exactly what the interpreter answers.
    match (&as_bool, &reference) {
        (Ok(b), Ok(Value::Bool(r))) if b == r => {}
        (Err(_), Ok(v)) if !matches!(v, Value::Bool(_)) => {}
        (Err(_), Err(_)) => {}
        _ => return fail(format!("eval_bool disagrees: {as_bool:?}")),
    }
    let number = match &reference {
        Ok(Value::Int(i)) => Some(*i as f64),
        Ok(Value::UInt(u)) => Some(*u as f64),
        Ok(Value::Float(f)) if f.is_finite() => Some(*f),
        _ => None,
    };
    match (&as_number, number) {
        (Ok(a), Some(b)) if a.to_bits() == b.to_bits() => {}
        (Err(_), None) => {}
        _ => return fail(format!("eval_number disagrees: {as_number:?}")),
    }
    // Whenever the fast evaluator answers, it answers the interpreter's value.
    if let Some((value, as_bool)) = fast {
        if let Ok(v) = &value {
            fast_answered = true;
            match (v, &reference) {
                (Some(v), Ok(r)) if same(v, r) => {}
                _ => return fail(format!("fast evaluator disagrees: {v:?}")),
            }
        }
        match (as_bool, &value) {
            (Ok(b), _) if matches!(&reference, Ok(Value::Bool(r)) if *r == b) => {}
            (Ok(b), _) => return fail(format!("fast eval_bool disagrees: {b}")),
            (Err(_), Ok(Some(Value::Bool(_)))) => return fail("fast eval_bool bailed, eval did not".into()),
            (Err(_), _) => {}
        }
    }
    Ok((fast_answered, peak))
}

/// Equality of results: doubles by bits (NaN is NaN, -0.0 is not 0.0), containers deeply.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
        (Value::List(x), Value::List(y)) => {
            x.len() == y.len() && x.iter().zip(y.iter()).all(|(x, y)| same(x, y))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.map.len() == y.map.len() && x.map.iter().all(|(k, v)| y.map.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

// ---------------------------------------------------------------------------------------------
// Generators: CEL over the full accepted language

type S = BoxedStrategy<String>;

/// `template` with each `{}` replaced by the next part's value.
fn t(template: &'static str, parts: Vec<S>) -> S {
    parts
        .prop_map(move |values| {
            let mut out = String::new();
            let mut values = values.into_iter();
            let mut rest = template;
            while let Some(i) = rest.find("{}") {
                out.push_str(&rest[..i]);
                out.push_str(&values.next().expect("one part per {}"));
                rest = &rest[i + 2..];
            }
            out.push_str(rest);
            out
        })
        .boxed()
}

fn one_of(items: &[&'static str]) -> S {
    proptest::sample::select(items.to_vec()).prop_map(String::from).boxed()
}

fn weighted(arms: Vec<(u32, S)>) -> S {
    Union::new_weighted(arms).boxed()
}

/// `s` as a CEL string literal (single quotes, escapes for what needs them).
fn cel_str(s: &str) -> String {
    let mut out = String::from("'");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// One generated expression per type, and one of any type.
#[derive(Clone)]
struct Pools {
    num: S,
    str: S,
    bool: S,
    list: S,
    map: S,
    bytes: S,
    time: S,
    any: S,
}

fn field() -> S {
    one_of(&[
        "metadata",
        "spec",
        "name",
        "namespace",
        "labels",
        "annotations",
        "containers",
        "image",
        "replicas",
        "ratio",
        "missing",
        "status",
        "app",
        "tags",
        "long",
        "deep",
        "a",
        "ü",
        "data",
        "flag",
        "s",
        "ports",
    ])
}

fn regex() -> S {
    let fragment = one_of(&[
        "^a",
        "[a-z]+",
        "(a|b)*c",
        "\\d{2,3}",
        ".*",
        "(",
        "a{1000}",
        "\\p{L}",
        "(?i)ABC",
        "^$",
        "[",
        "x**",
        "(a+)+$",
        "ü.",
        "\\bnginx\\b",
        ":latest$",
        "^[^:]+$",
        "a{2,1}",
        "\\",
    ]);
    prop_oneof![
        3 => fragment.clone().prop_map(|r| cel_str(&r)),
        1 => (fragment.clone(), fragment).prop_map(|(a, b)| cel_str(&format!("{a}{b}"))),
        1 => "[a-z.*+?()|\\[\\]^$\\\\{}0-9,]{0,10}".prop_map(|r| cel_str(&r)),
    ]
    .boxed()
}

fn leaves() -> Pools {
    let int_lit = any::<i64>().prop_map(|i| i.to_string()).boxed();
    let num = weighted(vec![
        (
            6,
            one_of(&[
                "0",
                "1",
                "-1",
                "42",
                "9223372036854775807",
                "-9223372036854775808",
                "0x7fffffffffffffff",
                "0x10",
                "1u",
                "0u",
                "18446744073709551615u",
                "0xFFu",
                "1.5",
                "-0.0",
                "0.0",
                "1e308",
                "-1e308",
                "1e-320",
                "2.5e-3",
                "0.1",
                "3.0",
            ]),
        ),
        (2, int_lit),
        (1, any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:?}")).boxed()),
        (
            6,
            one_of(&[
                "object.spec.replicas",
                "object.spec.ratio",
                "object.spec.big",
                "object.spec.neg",
                "size(object.spec.containers)",
                "object.spec.long[0]",
                "x",
                "y",
                "object.spec.containers[0].ports[0]",
            ]),
        ),
    ]);
    let str = weighted(vec![
        (
            5,
            one_of(&[
                "''",
                "'a'",
                "\"héllo\"",
                "'ü🙂'",
                "'\\n\\t\\a\\b\\f\\v\\r'",
                "'\\x41'",
                "'\\u00e9'",
                "'\\U0001F600'",
                "'\\101'",
                "r'raw\\d'",
                "R\"\\x\"",
                "'''tri'ple\nline'''",
                "\"\"\"x\"\"\"",
                "'nginx:latest'",
                "'500m'",
                "'1.5'",
                "'-3'",
                "'true'",
                "'2024-01-01T00:00:00Z'",
                "'1h30m'",
                "'%s-%d'",
                "',' ",
                "' '",
                "'\\uD800'",
                "'\\U00110000'",
                "'\\z'",
                "'a\\'b'",
            ]),
        ),
        (2, "\\PC{0,8}".prop_map(|s| cel_str(&s)).boxed()),
        (
            6,
            one_of(&[
                "object.metadata.name",
                "object.metadata.namespace",
                "tenant",
                "object.spec.containers[0].image",
                "object.metadata.labels.app",
                "object.spec.s",
                "x",
                "y",
                "object.spec.tags[0]",
            ]),
        ),
    ]);
    let bool = weighted(vec![
        (2, one_of(&["true", "false"])),
        (
            2,
            one_of(&[
                "has(object.metadata.labels)",
                "has(object.spec.missing)",
                "object.spec.flag",
                "x",
                "has(x.name)",
                "has(object.metadata.labels.app)",
            ]),
        ),
    ]);
    let list = weighted(vec![
        (
            2,
            one_of(&[
                "[]",
                "[1, 2, 3]",
                "['a', 'b']",
                "[1, 'a', null, 2.0, [1], {}]",
                "[1u, 2u]",
                "[0.5, 1.5]",
            ]),
        ),
        (
            3,
            one_of(&[
                "object.spec.containers",
                "object.spec.tags",
                "object.spec.empty",
                "object.spec.long",
                "object.spec.containers[0].ports",
                "object.spec.mixed",
                "x",
                "namespaceObject.labels.all_keys",
            ]),
        ),
    ]);
    let map = weighted(vec![
        (2, one_of(&["{}", "{'a': 1}", "{1: 'a', true: 2, 2u: 3}", "{'x': {'y': [1]}}"])),
        (
            3,
            one_of(&[
                "object.metadata.labels",
                "object.spec",
                "object",
                "namespaceObject",
                "namespaceObject.labels",
                "lookup('v1', 'ConfigMap', 'ns', 'cm')",
                "lookup('v1', 'ConfigMap', tenant, 'x')",
                "lookup('rbac.authorization.k8s.io/v1', 'Role', object.metadata.namespace, 'admin')",
                "object.spec.containers[0]",
                "object.spec.deep",
                "x",
            ]),
        ),
    ]);
    let bytes = one_of(&["b'abc'", "b''", "b'\\xff\\x00'", "B\"\\377\"", "b'\\u00e9'", "bytes('ü')"]);
    let time = one_of(&[
        "now",
        "timestamp('2024-01-01T00:00:00Z')",
        "timestamp('bad')",
        "duration('1h30m')",
        "duration('-5s')",
        "duration('999999999999h')",
        "timestamp('9999-12-31T23:59:59Z')",
        "timestamp('0001-01-01T00:00:00Z')",
        "duration('0.000000001s')",
        "timestamp(0)",
        "timestamp(253402300800)",
    ]);
    let any = weighted(vec![
        (
            1,
            one_of(&[
                "null",
                "object.nope",
                "object.spec.missing.deeper",
                "object['metadata']",
                "object.metadata.labels['app']",
                "int",
                "type(1)",
                "dyn(1)",
                "namespaceObject.name",
                "k",
            ]),
        ),
        (2, num.clone()),
        (2, str.clone()),
        (1, bool.clone()),
        (1, list.clone()),
        (1, map.clone()),
        (1, bytes.clone()),
        (1, time.clone()),
    ]);
    Pools { num, str, bool, list, map, bytes, time, any }
}

/// One level of composition over `p` (sub-expressions) and `l` (leaves).
fn level(p: &Pools, l: &Pools) -> Pools {
    let (n, s, b, li, m, y, tm, a) = (
        || p.num.clone(),
        || p.str.clone(),
        || p.bool.clone(),
        || p.list.clone(),
        || p.map.clone(),
        || p.bytes.clone(),
        || p.time.clone(),
        || p.any.clone(),
    );
    let var = || one_of(&["x", "y"]);
    let arith = || one_of(&["+", "-", "*", "/", "%"]);
    let cmp = || one_of(&["==", "!=", "<", "<=", ">", ">="]);
    let macro_bool = || one_of(&["all", "exists", "exists_one"]);
    let num = weighted(vec![
        (12, l.num.clone()),
        (4, t("{} {} {}", vec![n(), arith(), n()])),
        (1, t("-{}", vec![n()])),
        (1, t("({})", vec![n()])),
        (1, t("size({})", vec![a()])),
        (1, t("{}.size()", vec![li()])),
        (1, t("int({})", vec![a()])),
        (1, t("uint({})", vec![a()])),
        (1, t("double({})", vec![a()])),
        (1, t("{}.indexOf({})", vec![s(), s()])),
        (1, t("{}.indexOf({}, {})", vec![s(), s(), n()])),
        (1, t("{}.lastIndexOf({}, {})", vec![s(), s(), n()])),
        (1, t("{}.sum()", vec![li()])),
        (1, t("{}.map({}, {}).sum()", vec![li(), var(), n()])),
        (
            1,
            t(
                "{}.{}()",
                vec![
                    tm(),
                    one_of(&[
                        "getFullYear",
                        "getMonth",
                        "getDayOfYear",
                        "getDayOfMonth",
                        "getDate",
                        "getDayOfWeek",
                        "getHours",
                        "getMinutes",
                        "getSeconds",
                        "getMilliseconds",
                    ]),
                ],
            ),
        ),
        (
            1,
            t(
                "{}.getHours({})",
                vec![tm(), one_of(&["'America/New_York'", "'+05:30'", "'Nowhere/Bad'", "''"])],
            ),
        ),
        (1, t("({} ? {} : {})", vec![b(), n(), n()])),
        (1, t("{}[{}]", vec![li(), n()])),
    ]);
    let str = weighted(vec![
        (12, l.str.clone()),
        (2, t("{} + {}", vec![s(), s()])),
        (1, t("{}.replace({}, {})", vec![s(), s(), s()])),
        (1, t("{}.replace({}, {}, {})", vec![s(), s(), s(), n()])),
        (1, t("{}.substring({})", vec![s(), n()])),
        (1, t("{}.substring({}, {})", vec![s(), n(), n()])),
        (1, t("{}.charAt({})", vec![s(), n()])),
        (1, t("{}.{}()", vec![s(), one_of(&["lowerAscii", "upperAscii", "trim", "reverse"])])),
        (
            1,
            t(
                "{}.format({})",
                vec![
                    prop_oneof![
                        one_of(&[
                            "'%s'", "'%d'", "'%.3f'", "'%e'", "'%x'", "'%X'", "'%o'", "'%b'", "'%s %s'",
                            "'%%'", "'%'", "'%q'", "'%.f'"
                        ]),
                        s()
                    ]
                    .boxed(),
                    li(),
                ],
            ),
        ),
        (1, t("strings.quote({})", vec![s()])),
        (1, t("{}.join()", vec![li()])),
        (1, t("{}.join({})", vec![li(), s()])),
        (1, t("string({})", vec![a()])),
        (1, t("{}[{}]", vec![m(), s()])),
        (1, t("({} ? {} : {})", vec![b(), s(), s()])),
    ]);
    let bool = weighted(vec![
        (8, l.bool.clone()),
        (3, t("{} {} {}", vec![a(), cmp(), a()])),
        (2, t("{} {} {}", vec![n(), cmp(), n()])),
        (1, t("{} {} {}", vec![s(), cmp(), s()])),
        (1, t("{} {} {}", vec![tm(), cmp(), tm()])),
        (1, t("{} in {}", vec![a(), li()])),
        (1, t("{} in {}", vec![s(), m()])),
        (2, t("{} && {}", vec![b(), b()])),
        (2, t("{} || {}", vec![b(), b()])),
        (1, t("!{}", vec![b()])),
        (1, t("({})", vec![b()])),
        (1, t("{}.{}({})", vec![s(), one_of(&["startsWith", "endsWith", "contains"]), s()])),
        (1, t("{}.matches({})", vec![s(), regex()])),
        (1, t("matches({}, {})", vec![s(), regex()])),
        (1, t("has({}.{})", vec![m(), field()])),
        (2, t("{}.{}({}, {})", vec![li(), macro_bool(), var(), b()])),
        (1, t("{}.{}({}, {})", vec![m(), macro_bool(), one_of(&["k", "x"]), b()])),
        (1, t("bool({})", vec![s()])),
        (1, t("({} ? {} : {})", vec![b(), b(), b()])),
    ]);
    let list = weighted(vec![
        (8, l.list.clone()),
        (1, t("{} + {}", vec![li(), li()])),
        (1, t("[{}, {}]", vec![a(), a()])),
        (2, t("{}.map({}, {})", vec![li(), var(), a()])),
        (1, t("{}.map({}, {}, {})", vec![li(), var(), b(), a()])),
        (1, t("{}.filter({}, {})", vec![li(), var(), b()])),
        (1, t("{}.map(k, k)", vec![m()])),
        (1, t("{}.split({})", vec![s(), s()])),
        (1, t("{}.split({}, {})", vec![s(), s(), n()])),
        (1, t("[?{}]", vec![a()])),
    ]);
    let map = weighted(vec![
        (8, l.map.clone()),
        (1, t("{{}: {}, {}: {}}", vec![s(), a(), n(), a()])),
        (1, t("{}.{}", vec![m(), field()])),
        (1, t("{{?{}: optional.of({})}}", vec![s(), a()])),
    ]);
    let bytes = weighted(vec![
        (4, l.bytes.clone()),
        (1, t("bytes({})", vec![s()])),
        (1, t("{} + {}", vec![y(), y()])),
    ]);
    let time = weighted(vec![
        (4, l.time.clone()),
        (1, t("{} + {}", vec![tm(), tm()])),
        (1, t("{} - {}", vec![tm(), tm()])),
        (1, t("timestamp({})", vec![s()])),
        (1, t("duration({})", vec![s()])),
        (1, t("timestamp({})", vec![n()])),
    ]);
    let any = weighted(vec![
        (3, l.any.clone()),
        (2, num.clone()),
        (2, str.clone()),
        (2, bool.clone()),
        (1, list.clone()),
        (1, map.clone()),
        (1, bytes.clone()),
        (1, time.clone()),
        (1, t("{}.{}", vec![a(), field()])),
        (1, t("{}.?{}", vec![m(), field()])),
        (1, t("{}.?{}.orValue({})", vec![m(), field(), a()])),
        (1, t("{}[{}]", vec![a(), a()])),
        (1, t("({} ? {} : {})", vec![b(), a(), a()])),
        (1, t("{}({})", vec![one_of(&["dyn", "type", "size", "string", "int", "optional.of", "f"]), a()])),
        (1, t("string({}) + {}", vec![y(), s()])),
    ]);
    Pools { num, str, bool, list, map, bytes, time, any }
}

/// CEL over the full accepted language (and just outside it), nested up to `depth` levels.
fn cel(depth: usize) -> S {
    let leaf = leaves();
    let mut p = leaf.clone();
    for _ in 0..depth {
        p = level(&p, &leaf);
    }
    weighted(vec![(3, p.bool.clone()), (2, p.num.clone()), (1, p.any.clone()), (1, p.str.clone())])
}

/// Well-typed expressions in (and at the edges of) the fast evaluator's subset: paths of the
/// generated objects, literals of their types, predicates and macros over their lists and
/// maps, so that both evaluators answer often and are compared on real values.
fn fast_subset() -> S {
    let path = one_of(&[
        "object.spec.replicas",
        "object.spec.ratio",
        "object.spec.big",
        "object.spec.neg",
        "object.metadata.name",
        "object.metadata.namespace",
        "object.metadata.labels.app",
        "object.spec.s",
        "object.spec.flag",
        "object.spec.containers[0].image",
        "object.spec.containers[0].name",
        "object.spec.tags[0]",
        "object.spec.long[1]",
        "namespaceObject.labels.team",
        "tenant",
        "object.spec.missing",
        "object.spec['replicas']",
        "object.metadata.labels['app']",
        "object.spec.deep.a.a",
    ]);
    let lit = one_of(&[
        "0",
        "1",
        "-1",
        "3",
        "1u",
        "0.5",
        "-0.0",
        "2.0",
        "'a'",
        "''",
        "'x'",
        "'nginx:latest'",
        "'kube-system'",
        "true",
        "false",
        "null",
        "9223372036854775807",
        "18446744073709551615u",
    ]);
    let list = one_of(&[
        "object.spec.containers",
        "object.spec.tags",
        "object.spec.long",
        "object.spec.empty",
        "object.spec.mixed",
        "object.spec.containers[0].ports",
        "[1, 2, 3]",
        "['a', 'ü']",
        "object.metadata.labels.map(k, k)",
        "object.spec.containers.map(c, c.name)",
    ]);
    let map = one_of(&[
        "object.metadata.labels",
        "object.metadata.annotations",
        "object.spec",
        "namespaceObject.labels",
        "object.spec.containers[0].resources.limits",
        "object.spec.emptyMap",
        "{'a': 1, 'b': 2}",
    ]);
    let cmp = one_of(&["==", "!=", "<", "<=", ">", ">="]);
    let arith = one_of(&["+", "-", "*", "/", "%"]);
    let value = weighted(vec![
        (3, path.clone()),
        (2, lit.clone()),
        (1, t("{} {} {}", vec![path.clone(), arith.clone(), lit.clone()])),
        (1, t("size({})", vec![list.clone()])),
        (1, t("size({})", vec![map.clone()])),
        (1, t("-{}", vec![path.clone()])),
    ]);
    let elem_pred = weighted(vec![
        (2, t("x {} {}", vec![cmp.clone(), lit.clone()])),
        (1, t("has(x.{})", vec![field()])),
        (1, t("x.{}.{}({})", vec![field(), one_of(&["startsWith", "endsWith", "contains"]), lit.clone()])),
        (1, t("x.{} {} {}", vec![field(), cmp.clone(), lit.clone()])),
        (1, t("'{}' in x", vec![field()])),
        (1, t("x in {}", vec![list.clone()])),
    ]);
    let leaf = weighted(vec![
        (4, t("{} {} {}", vec![value.clone(), cmp.clone(), value.clone()])),
        (1, t("has({}.{})", vec![map.clone(), field()])),
        (1, t("'{}' in {}", vec![field(), map.clone()])),
        (1, t("{} in {}", vec![value.clone(), list.clone()])),
        (1, t("{}.{}({})", vec![path.clone(), one_of(&["startsWith", "endsWith", "contains"]), lit.clone()])),
        (
            2,
            t(
                "{}.{}(x, {})",
                vec![list.clone(), one_of(&["all", "exists", "exists_one"]), elem_pred.clone()],
            ),
        ),
        (1, t("{}.{}(x, {})", vec![map.clone(), one_of(&["all", "exists", "exists_one"]), elem_pred])),
        (1, t("{}.filter(x, x {} {})", vec![list.clone(), cmp.clone(), lit.clone()])),
        (1, t("{}.map(x, x)", vec![map])),
        (1, t("{}.map(x, {})", vec![list, value.clone()])),
        (1, value),
    ]);
    leaf.prop_recursive(3, 12, 3, |inner| {
        weighted(vec![
            (2, t("{} && {}", vec![inner.clone().boxed(), inner.clone().boxed()])),
            (2, t("{} || {}", vec![inner.clone().boxed(), inner.clone().boxed()])),
            (1, t("!({})", vec![inner.clone().boxed()])),
            (1, t("({} ? {} : {})", vec![inner.clone().boxed(), inner.clone().boxed(), inner.boxed()])),
        ])
    })
    .boxed()
}

/// What a hostile tenant writes: deep nesting, long chains, huge literals, exponential
/// strings, comprehensions over the largest lists.
fn hostile() -> S {
    let shape = (0usize..34, 1usize..12_000, cel(2));
    shape
        .prop_map(|(kind, n, inner)| {
            let r = |s: &str, k: usize| s.repeat(k);
            let small = n % 24 + 1;
            match kind {
                0 => format!("{}1{}", r("(", n), r(")", n)),
                1 => format!("{}{}", r("[", n), r("]", n)),
                2 => format!("{}1{}", r("{'a': ", n), r("}", n)),
                3 => format!("{}true", r("!", n)),
                4 => format!("{}1", r("-", n)),
                5 => format!("1{}", r(" + 1", n)),
                6 => format!("false{}", r(" || false", n)),
                7 => format!("object{}", r(".a", n)),
                8 => format!("object.spec.tags{}", r("[0]", n)),
                9 => format!("{}'a'{}", r("size(", n), r(")", n)),
                10 => format!("{}1{}", r("true ? ", n), r(" : 2", n)),
                11 => format!("'ab'{}", r(".replace('', 'aaaa')", small)),
                12 => format!("'ab'{}.size() > 0", r(".replace('', 'aaaa')", small)),
                13 => format!("{}{}", r("(", n), inner),
                14 => format!("{}{}{}", r("(", n % 200), inner, r(")", n % 200)),
                15 => format!("[{}1]", r("1, ", n)),
                16 => r("9", n),
                17 => format!("{}.0", r("1", n)),
                18 => format!("'{}'.size()", r("a", n * 10)),
                19 => "object.spec.long.map(x, object.spec.long.map(y, x * y)).size()".into(),
                20 => "object.spec.long.all(x, object.spec.long.exists(y, x == y + 1))".into(),
                21 => format!("object.spec.long{}.size()", r(".map(x, x)", small)),
                22 => format!("[{}].map(x, [{}].map(y, x + y)).size()", r("1, ", n % 400), r("1, ", n % 400)),
                23 => format!("'%.{}f'.format([1.0])", n * 1000),
                24 => format!("'%{}s'.format(['a'])", n * 1000),
                25 => format!("'{}'.matches('(a+)+$')", r("a", n)),
                26 => format!("'a'.matches('{}a{}')", r("(", n), r(")", n)),
                27 => format!("'a'.matches('a{{{}}}{{{}}}')", n, n),
                28 => format!(
                    "object.spec.long.map(x, string(x)).join(){}",
                    r(" + object.spec.long.map(x, string(x)).join()", small)
                ),
                29 => format!("{}1{}", r("[1, ", n), r("]", n)),
                30 => format!("{}1", r("-(", n)) + &r(")", n),
                31 => format!("object.spec.long.map(x, {}x{}).size()", r("[", n % 300), r("]", n % 300)),
                32 => {
                    format!("{}true{}", r("object.spec.long.all(x, ", small % 5 + 1), r(")", small % 5 + 1))
                }
                _ => format!("strings.quote('{}').size()", r("\\u0000", n)),
            }
        })
        .boxed()
}

// ---------------------------------------------------------------------------------------------
// Generators: Kubernetes-like objects

fn json_scalar() -> BoxedStrategy<Json> {
    prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::from),
        any::<i64>().prop_map(Json::from),
        ((i64::MAX as u64 + 1)..=u64::MAX).prop_map(Json::from),
        any::<f64>().prop_filter("JSON numbers are finite", |f| f.is_finite()).prop_map(Json::from),
        "\\PC{0,10}".prop_map(Json::from),
    ]
    .boxed()
}

fn json_any() -> BoxedStrategy<Json> {
    json_scalar()
        .prop_recursive(4, 24, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Json::from),
                prop::collection::btree_map("[a-zü]{1,6}", inner, 0..5)
                    .prop_map(|m| Json::Object(m.into_iter().collect())),
            ]
        })
        .boxed()
}

fn number() -> BoxedStrategy<Json> {
    prop_oneof![
        (-5i64..10).prop_map(Json::from),
        any::<i64>().prop_map(Json::from),
        Just(Json::from(u64::MAX)),
        (-10.0f64..10.0).prop_map(Json::from),
        Just(Json::from(-0.0)),
        Just(Json::from("3")),
        Just(Json::Null),
    ]
    .boxed()
}

fn k8s_object() -> BoxedStrategy<Json> {
    let name = "[a-z0-9-]{0,12}|ü[a-z]{0,4}";
    let labels = prop::option::of(prop::collection::btree_map(
        "[a-z./]{1,10}|app",
        prop_oneof![4 => "[a-zA-Z0-9ü🙂]{0,8}".prop_map(Json::from), 1 => Just(Json::Null), 1 => any::<i64>().prop_map(Json::from)],
        0..5,
    ));
    let ports = prop::collection::vec(
        prop_oneof![(0i64..70000).prop_map(Json::from), Just(Json::from("http"))],
        0..4,
    );
    let container = (
        prop::option::of("[a-z0-9ü]{0,6}"),
        prop::option::of(prop_oneof!["nginx(:latest)?", "[a-z./:]{0,30}"]),
        ports,
        prop::option::of(("[0-9]{1,4}m?", "[0-9]{1,3}(Mi|Gi)?")),
        prop::option::of(any::<bool>()),
    )
        .prop_map(|(name, image, ports, limits, ro)| {
            let mut c = json!({"ports": ports});
            if let Some(n) = name {
                c["name"] = json!(n);
            }
            if let Some(i) = image {
                c["image"] = json!(i);
            }
            if let Some((cpu, mem)) = limits {
                c["resources"] = json!({"limits": {"cpu": cpu, "memory": mem}});
            }
            if let Some(ro) = ro {
                c["securityContext"] = json!({"readOnlyRootFilesystem": ro});
            }
            c
        });
    let long = prop_oneof![
        4 => prop::collection::vec(-3i64..3, 0..20),
        1 => prop::collection::vec(-3i64..3, 200..400),
        1 => (0usize..2).prop_map(|_| vec![1; 2000]),
    ];
    let deep = (0usize..100, json_scalar()).prop_map(|(depth, leaf)| {
        let mut v = leaf;
        for _ in 0..depth {
            v = json!({ "a": v });
        }
        v
    });
    let metadata = (name, prop::option::of("kube-system|shop|ns|[a-z]{0,5}"), labels.clone(), labels)
        .prop_map(|(name, ns, labels, annotations)| {
            let mut m = json!({"name": name});
            if let Some(ns) = ns {
                m["namespace"] = json!(ns);
            }
            if let Some(l) = labels {
                m["labels"] = Json::Object(l.into_iter().collect());
            }
            if let Some(a) = annotations {
                m["annotations"] = Json::Object(a.into_iter().collect());
            }
            m
        });
    let spec = (
        (number(), number(), number(), number()),
        prop::collection::vec(container, 0..4),
        prop::collection::vec("\\PC{0,6}", 0..4),
        long,
        deep,
        prop::collection::vec(json_any(), 0..4),
        (any::<bool>(), "\\PC{0,12}"),
    )
        .prop_map(|((replicas, ratio, big, neg), containers, tags, long, deep, mixed, (flag, s))| {
            json!({"replicas": replicas, "ratio": ratio, "big": big, "neg": neg, "containers": containers,
                   "tags": tags, "empty": [], "emptyMap": {}, "long": long, "deep": deep, "mixed": mixed,
                   "flag": flag, "s": s})
        });
    prop_oneof![
        8 => (metadata, spec).prop_map(|(metadata, spec)| json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})),
        1 => json_any(),
        1 => Just(json!({"metadata": {"name": "c", "namespace": "ml", "labels": {}}, "spec": null})),
    ]
    .boxed()
}

/// The objects of one case: one, or two of different shapes after one another.
fn objects() -> BoxedStrategy<Vec<Json>> {
    prop::collection::vec(k8s_object(), 1..3).boxed()
}

// ---------------------------------------------------------------------------------------------
// Properties

/// A runner: `cases` cases, each case in a forked child so that a stack overflow or an abort
/// fails (and shrinks) one case instead of killing the test binary.
fn runner(test_name: &'static str, cases: usize) -> TestRunner {
    TestRunner::new(Config {
        cases: cases as u32,
        failure_persistence: None,
        fork: true,
        test_name: Some(test_name),
        timeout: (TIMEOUT.as_millis() as u32) * 2,
        max_shrink_iters: 64,
        max_shrink_time: 60_000,
        ..Config::default()
    })
}

fn report_stats(name: &str, started: Instant) {
    let cases = STATS.cases.load(Ordering::Relaxed);
    if cases > 0 {
        // Not through eprintln!: libtest captures that in the forked child.
        let line = format!(
            "{name}: {cases} cases in {:.1?} ({:.0}/s), {} compiled, {} answered fast, peak {} KiB, slowest {} ms",
            started.elapsed(),
            cases as f64 / started.elapsed().as_secs_f64(),
            STATS.compiled.load(Ordering::Relaxed),
            STATS.fast.load(Ordering::Relaxed),
            STATS.peak.load(Ordering::Relaxed) >> 10,
            STATS.slowest_us.load(Ordering::Relaxed) / 1000,
        );
        let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("{line}\n").as_bytes());
    }
}

/// Runs `cases` cases of `strategy` in a forked child; `at_end` checks the statistics once
/// the cases (not the shrinking) are done, in the child (panicking fails the test).
fn check(
    property: &'static str,
    cases: usize,
    strategy: impl Strategy<Value = (String, Vec<Json>)>,
    at_end: impl Fn(&Stats),
) {
    let started = Instant::now();
    let short = property.rsplit("::").next().unwrap_or(property);
    let result = runner(property, cases).run(&strategy, |(src, objs)| {
        let result = run_case(short, &src, &objs).map(|_| ()).map_err(TestCaseError::fail);
        // The child exits right after its last case: report from here.
        if STATS.cases.load(Ordering::Relaxed) == cases {
            report_stats(short, started);
            at_end(&STATS);
        }
        result
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The full language on Kubernetes-like objects: no panic, bounded time and memory, and the
/// fast evaluator agrees with the interpreter.
#[test]
fn full_language_evaluates_safely_and_consistently() {
    check(
        concat!(module_path!(), "::full_language_evaluates_safely_and_consistently"),
        *CASES,
        (cel(4), objects()),
        |_| {},
    );
}

/// Expressions in the fast evaluator's subset more often (shallower, predicates), so the
/// differential property is exercised on many answers.
#[test]
fn fast_evaluator_agrees_with_the_interpreter() {
    check(
        concat!(module_path!(), "::fast_evaluator_agrees_with_the_interpreter"),
        *CASES,
        (prop_oneof![1 => cel(2), 2 => fast_subset()], objects()),
        |stats| {
            // Not vacuous: the fast evaluator answers a fair share of the cases.
            let (fast, cases) = (stats.fast.load(Ordering::Relaxed), stats.cases.load(Ordering::Relaxed));
            assert!(fast * 10 >= cases, "only {fast} of {cases} cases answered by the fast evaluator");
        },
    );
}

/// Hostile shapes: rejected at compile time or evaluated within the limits.
#[test]
fn hostile_shapes_are_rejected_or_bounded() {
    check(
        concat!(module_path!(), "::hostile_shapes_are_rejected_or_bounded"),
        (*CASES / 10).max(50),
        (hostile(), objects()),
        |_| {},
    );
}

/// Durations and label selectors never panic on any input.
#[test]
fn durations_and_selectors_never_panic() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
    use secmetrics::api::duration::Duration as GoDuration;
    use secmetrics::engine::selector::Selector;
    let mut runner =
        TestRunner::new(Config { cases: *CASES as u32, failure_persistence: None, ..Config::default() });
    let text = prop_oneof!["\\PC{0,12}", "([0-9]{0,25}(\\.[0-9]{0,5})?(ns|us|µs|ms|s|m|h|x|)){0,4}"];
    runner
        .run(&text, |s| {
            let _ = GoDuration::parse(&s);
            Ok(())
        })
        .unwrap();
    let key = prop_oneof!["[a-z./-]{0,8}", "\\PC{0,4}"];
    let requirement = (
        key.clone(),
        "In|NotIn|Exists|DoesNotExist|Gt|\\PC{0,3}",
        prop::option::of(prop::collection::vec("\\PC{0,4}", 0..3)),
    )
        .prop_map(|(key, operator, values)| LabelSelectorRequirement { key, operator, values });
    let selector = (
        prop::option::of(prop::collection::btree_map(key.clone(), "\\PC{0,4}", 0..3)),
        prop::option::of(prop::collection::vec(requirement, 0..4)),
        prop::collection::btree_map(key, "\\PC{0,4}", 0..4),
    );
    runner
        .run(&selector, |(match_labels, match_expressions, labels)| {
            let s = LabelSelector { match_labels, match_expressions };
            if let Ok(sel) = Selector::new("selector", &s) {
                let _ = sel.matches(&labels);
                let node = Node::from(&serde_json::to_value(&labels).expect("labels serialize"));
                prop_assert_eq!(sel.matches(&labels), sel.matches_node(Some(&node)));
            }
            Ok(())
        })
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Regressions: every finding, kept forever.

/// The object findings were made on.
fn finding_object() -> Json {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "a", "namespace": "ns", "labels": {"app": "x"}},
           "spec": {"replicas": 3, "ratio": 0.5, "tags": ["a"], "long": vec![1; 2000],
                    "containers": [{"name": "c", "image": "nginx:latest", "ports": [80]}]}})
}

fn regression(sources: &[&str]) {
    let (obj, started) = (finding_object(), Instant::now());
    for src in sources {
        if let Err(e) = run_case("regressions", src, std::slice::from_ref(&obj)) {
            panic!("{e}");
        }
    }
    report_stats("regressions", started);
}

/// Edge cases of the language that pass today: overflow, bounds, conversions, formats,
/// optionals, lookups. Any future panic, slowness or disagreement on them fails here.
#[test]
fn regressions() {
    regression(&[
        "object.spec.replicas > 1",
        "-9223372036854775808 / -1",
        "-9223372036854775808 % -1",
        "-(-9223372036854775808)",
        "9223372036854775807 + 1",
        "0u - 1u",
        "1 / 0",
        "1 % 0",
        "1.0 / 0.0",
        "int(1e300)",
        "uint(-1)",
        "int(double('NaN'))",
        "duration('999999999999999h')",
        "timestamp('9999-12-31T23:59:59Z') + duration('1s')",
        "timestamp('0001-01-01T00:00:00Z') - duration('1s')",
        "duration('-9223372036s') - duration('10s')",
        "timestamp(9223372036854775807)",
        "timestamp(-9223372036854775808)",
        "now.getHours('+99:99')",
        "now.getHours('America/New_York')",
        "'abc'.substring(-1)",
        "'abc'.substring(2, 1)",
        "'abc'.charAt(-1)",
        "'abc'.charAt(4)",
        "'abc'.indexOf('', 99)",
        "'abc'.lastIndexOf('c', -5)",
        "'abc'.split('', -5)",
        "'a,b'.split(',', 9223372036854775807)",
        "'abc'.replace('', 'x', -1)",
        "'abc'.replace('', 'x', 9223372036854775807)",
        "'%d'.format([9223372036854775807])",
        "'%x'.format([-1])",
        "'%e'.format([1e308])",
        "'%.3f'.format([double('inf')])",
        "'%.100000000f'.format([1.0])",
        "'%100000000s'.format(['a'])",
        "'%s'.format([object])",
        "'%s'.format([now])",
        "strings.quote('\\u0000\\x7f\\U0010FFFF')",
        "'\\U0010FFFF'.reverse()",
        "'üü'.upperAscii()",
        "[9223372036854775807, 1].sum()",
        "[1e308, 1e308].sum()",
        "object.?spec.?replicas.orValue(0)",
        "object.spec[?'replicas']",
        "[?optional.none(), 1]",
        "dyn(object).spec.replicas",
        "type(object) == map",
        "lookup('v1', 'ConfigMap', 'ns', 'cm').data.k == 'v'",
        "lookup('v1', 'ConfigMap', object.metadata.namespace, object.metadata.name)",
        "{'a': 1, 'a': 2}",
        "{[1]: 2}",
        "{1.5: 2}",
        "'a'.matches('a{1000}{1000}')",
        "'a'.matches('(a+)+$')",
        "object.spec.long.map(x, object.spec.long).size()",
        "object.spec.long.all(x, object.spec.long.exists(y, x == y + 1))",
        "object.spec.long.map(x, x).map(x, x).size()",
        "1e99999",
        "99999999999999999999999999999",
    ]);
}

/// Long chains of left-associative operators, selections and indexes: the parser nests one
/// parse-tree level per link and `cel`'s parse-tree visitor recurses over them
/// (`visit_calc`, src/parser/parser.rs:846), past the 2 MiB stack from about 5,200 `+ 1`
/// (10 KB of source), 4,350 `.a` or 5,000 `[0]` in release; the parser's recursion limit
/// (96) does not count them. 12,000 links overflow a debug build's 16 MiB as well.
#[test]
fn regression_long_chains() {
    regression(&[
        &format!("1{}", " + 1".repeat(12_000)),
        &format!("object{}", ".a".repeat(12_000)),
        &format!("object.spec.tags{}", "[0]".repeat(12_000)),
    ]);
}

/// Exponential strings: each `replace('', 'aaaa')` multiplies the length by five, so a few
/// dozen bytes of source ask for gigabytes (ten: 20 million characters, 10 s in debug;
/// eleven: over the memory cap).
#[test]
fn regression_exponential_strings() {
    regression(&[&format!("'ab'{}.size() > 0", ".replace('', 'aaaa')".repeat(11))]);
}

/// Nested comprehensions over the largest list of an object (2000 items): millions of
/// steps, each allocating (`map` accumulates by list concatenation).
#[test]
fn regression_comprehension_cost() {
    regression(&[
        "object.spec.long.map(x, object.spec.long.map(y, x * y)).size()",
        "object.spec.long.map(x, object.spec.long.map(y, [x, y])).size()",
        "object.spec.long.exists_one(x, object.spec.long.exists_one(y, x != y))",
        "object.spec.long.map(x, object.spec.long.map(y, string(y)).join(',')).size()",
        // Found by full_language_evaluates_safely_and_consistently (100,000 cases, release):
        // over 5 s in release.
        "object.spec.long.map(x, object.spec.long.map(y, has(object.metadata.labels.app)).size()).sum()",
        // Out of the fast evaluator's reach (int against double), so the interpreter runs it.
        "object.spec.long.all(x, object.spec.long.all(y, y != 1.5))",
    ]);
}

/// A chain of `map`s, each quadratic in the list's length (the accumulator is copied on
/// every step).
#[test]
fn regression_quadratic_map() {
    regression(&[
        &format!("object.spec.long{}.size()", ".map(x, x)".repeat(20)),
        &format!("object.spec.long{}.size()", ".filter(x, true)".repeat(20)),
    ]);
}

/// Parsing a large source before any limit applies: a list literal of 30,000 items (120 KB)
/// takes seconds to be rejected for its size.
#[test]
fn regression_large_source() {
    regression(&[&format!("[{}1].size()", "1, ".repeat(30_000))]);
}

/// Runs one case from the environment, to reproduce or classify a finding:
/// `SECMETRICS_FUZZ_SOURCE='...' [SECMETRICS_FUZZ_OBJECT='{...}'] cargo test --test fuzz_cel
/// -- --ignored one_case --nocapture` (the object defaults to the findings' object; long
/// sources in a file named by `SECMETRICS_FUZZ_SOURCE_FILE`).
#[test]
#[ignore = "runs the case in SECMETRICS_FUZZ_SOURCE"]
fn one_case() {
    let src = match std::env::var("SECMETRICS_FUZZ_SOURCE_FILE") {
        Ok(path) => std::fs::read_to_string(path).expect("SECMETRICS_FUZZ_SOURCE_FILE is readable"),
        Err(_) => std::env::var("SECMETRICS_FUZZ_SOURCE").expect("SECMETRICS_FUZZ_SOURCE"),
    };
    let obj = std::env::var("SECMETRICS_FUZZ_OBJECT")
        .map(|o| serde_json::from_str(&o).expect("SECMETRICS_FUZZ_OBJECT is JSON"))
        .unwrap_or_else(|_| finding_object());
    let started = Instant::now();
    let result = run_case("one_case", &src, std::slice::from_ref(&obj));
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!(
            "one_case: {:?} in {:.1?}\n",
            result.as_ref().map(|o| (o.compiled, o.fast_answered, o.peak)),
            started.elapsed()
        )
        .as_bytes(),
    );
    result.unwrap();
}

/// Prints generated expressions and objects, to see what the generators write:
/// `cargo test --test fuzz_cel -- --ignored samples --nocapture`.
#[test]
#[ignore = "prints samples"]
fn samples() {
    use proptest::strategy::ValueTree;
    let mut runner = TestRunner::default();
    let mut out = String::new();
    for (name, s) in [("cel(4)", cel(4)), ("cel(2)", cel(2)), ("hostile", hostile())] {
        for _ in 0..12 {
            let src = s.new_tree(&mut runner).expect("generates").current();
            out.push_str(&format!("{name}: {}\n", src.chars().take(300).collect::<String>()));
        }
    }
    for _ in 0..2 {
        out.push_str(&format!(
            "object: {}\n",
            k8s_object().new_tree(&mut runner).expect("generates").current()
        ));
    }
    let _ = std::io::Write::write_all(&mut std::io::stderr(), out.as_bytes());
}

/// Iteration over a map: the fast evaluator goes in key order, the interpreter in its
/// `HashMap`'s order, which changes from one process to the next (std's random hash seed).
/// So `labels.map(k, k)[0]` or `labels.map(k, k).join(',')` answer differently depending on
/// the evaluator and, through the interpreter, on the operator's restart: a metric's value is
/// not a function of the cluster. Fails (does not crash) on today's code.
#[test]
fn regression_map_iteration_order() {
    let labels: serde_json::Map<String, Json> = (0..12).map(|i| (format!("k{i:02}"), json!("v"))).collect();
    let obj = json!({"metadata": {"labels": labels}});
    for src in [
        "object.metadata.labels.map(k, k)",
        "object.metadata.labels.filter(k, k != 'k00')",
        "object.metadata.labels.map(k, k)[0] == 'k00'",
    ] {
        if let Err(e) = run_case("regressions", src, std::slice::from_ref(&obj)) {
            panic!("{e}");
        }
    }
}
