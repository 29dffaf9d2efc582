//! Runtime cost accounting for CEL, as Kubernetes does for its own CEL (a per-evaluation limit
//! on a cost that grows with what the evaluation reads, builds and iterates), on top of the
//! static checks (node count, nesting).
//!
//! One cost model serves both evaluators, so that they agree on which evaluations exceed the
//! limit: the fast evaluator charges as it goes; the `cel` interpreter evaluates an
//! instrumented copy of the AST ([`instrument`]) whose `@sm.*` functions charge the same
//! amounts to a per-thread meter. What is charged:
//! - a comprehension (`all`, `exists`, `map`, `filter`, ...): the size of its range times the
//!   number of AST nodes of its loop body, when the range is evaluated;
//! - reading an operand of an operator or function (`==`, `<`, `in`, `size`, `contains`, any
//!   call of the standard library or the strings extension), and each element of a list or
//!   map literal: strings one unit per [`BYTES_PER_UNIT`] bytes, lists and maps one unit per
//!   element (the traversal cost);
//! - building a string or list with `+`: the size of the result.
//!
//! Functions whose result can be much larger than their inputs are refused before they
//! allocate: `+`, `replace`, `join` and `format` may not build a string over
//! [`MAX_STRING_BYTES`], nor `+` a list over [`MAX_LIST_ITEMS`]; `split` refuses a string
//! over [`MAX_LIST_ITEMS`] bytes. Regular expressions compile once per thread and pattern,
//! within a size limit.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue, operators};
use cel::common::types::{CelBool, CelBytes, CelInt, CelList, CelString};
use cel::common::value::{CowVal, Val};
use cel::{ExecutionError, Value};

/// Most cost one evaluation of one expression may spend (Kubernetes' per-call limit).
pub const COST_LIMIT: u64 = 1_000_000;
/// Bytes of a string read for one unit of cost.
pub const BYTES_PER_UNIT: usize = 10;
/// Longest string an evaluation may build.
pub const MAX_STRING_BYTES: usize = 2 << 20;
/// Longest list an evaluation may build.
pub const MAX_LIST_ITEMS: usize = 100_000;
/// Most compiled regular expressions kept per thread.
const REGEX_CACHE: usize = 64;
/// Largest compiled form of one regular expression.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// The error an evaluation over its cost limit ends with.
pub const EXCEEDED: &str = "exceeded the cost limit";

/// Cost of reading a string of `bytes` bytes.
pub fn string_cost(bytes: usize) -> u64 {
    (bytes / BYTES_PER_UNIT) as u64
}

/// Cost of reading a list or map of `len` elements.
pub fn container_cost(len: usize) -> u64 {
    len as u64
}

/// Cost of one comprehension: its range's size times its body's node count.
pub fn range_cost(len: usize, body_nodes: u64) -> u64 {
    (len as u64).saturating_mul(body_nodes)
}

/// The number of AST nodes of a comprehension's loop body (condition and step): the cost of
/// one iteration.
pub fn body_nodes(c: &cel::common::ast::ComprehensionExpr) -> u64 {
    (count_nodes(&c.loop_cond) + count_nodes(&c.loop_step)) as u64
}

fn count_nodes(e: &IdedExpr) -> usize {
    let entries = |entries: &[cel::common::ast::IdedEntryExpr]| -> usize {
        entries
            .iter()
            .map(|e| match &e.expr {
                EntryExpr::MapEntry(me) => count_nodes(&me.key) + count_nodes(&me.value),
                EntryExpr::StructField(f) => count_nodes(&f.value),
            })
            .sum()
    };
    1 + match &e.expr {
        Expr::Call(c) => {
            c.target.as_deref().map_or(0, count_nodes) + c.args.iter().map(count_nodes).sum::<usize>()
        }
        Expr::Select(s) => count_nodes(&s.operand),
        Expr::List(l) => l.elements.iter().map(count_nodes).sum(),
        Expr::Map(m) => entries(&m.entries),
        Expr::Struct(s) => entries(&s.entries),
        Expr::Comprehension(c) => [&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result]
            .into_iter()
            .map(count_nodes)
            .sum(),
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => 0,
    }
}

/// Cost of comparing an interpreter value in depth (`==`, `!=`, `in`): strings by their
/// bytes, every element and entry of lists and maps at every level. Stops counting past the
/// limit (the charge fails there anyway).
fn deep_traversal(v: &dyn Val) -> u64 {
    fn walk(v: &dyn Val, total: &mut u64) {
        if *total > COST_LIMIT {
            return;
        }
        if v.as_sizer().is_none()
            || v.downcast_ref::<CelString>().is_some()
            || v.downcast_ref::<CelBytes>().is_some()
        {
            *total += traversal(v);
            return;
        }
        let Some(items) = v.as_iterable() else { return };
        let is_map = v.get_type().kind() == cel::common::types::Kind::Map;
        let mut iter = items.iter();
        while let Some(item) = iter.next() {
            *total += 1;
            if is_map {
                *total += traversal(item);
                if let Some(indexer) = v.as_indexer()
                    && let Ok(value) = indexer.get(item)
                {
                    walk(value.as_ref(), total);
                }
            } else {
                walk(item, total);
            }
            if *total > COST_LIMIT {
                return;
            }
        }
    }
    let mut total = 0;
    walk(v, &mut total);
    total
}

/// Cost of reading an interpreter value (see the module documentation).
fn traversal(v: &dyn Val) -> u64 {
    if let Some(s) = v.downcast_ref::<CelString>() {
        string_cost(s.inner().len())
    } else if let Some(b) = v.downcast_ref::<CelBytes>() {
        string_cost(b.inner().len())
    } else if let Some(s) = v.as_sizer() {
        container_cost(usize::try_from(*s.size().inner()).unwrap_or(0))
    } else {
        0
    }
}

thread_local! {
    /// Cost spent by the interpreter evaluation running on this thread.
    static SPENT: Cell<u64> = const { Cell::new(0) };
    static REGEXES: RefCell<HashMap<String, Result<regex::Regex, String>>> = RefCell::new(HashMap::new());
}

/// Runs `f` (one interpreter evaluation) with a fresh meter; returns its result and the cost
/// it spent.
pub fn metered<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = SPENT.with(|s| s.replace(0));
    let out = f();
    let spent = SPENT.with(|s| s.replace(before));
    (out, spent)
}

fn charge(function: &str, cost: u64) -> Result<(), ExecutionError> {
    let spent = SPENT.with(|s| {
        let spent = s.get().saturating_add(cost);
        s.set(spent);
        spent
    });
    if spent > COST_LIMIT {
        Err(ExecutionError::function_error(function, format!("{EXCEEDED} of {COST_LIMIT}")))
    } else {
        Ok(())
    }
}

/// The error of a function refused before it builds a value over the limits: `what` is
/// `string` (counted in bytes) or `list` (in items).
fn too_large(function: &str, what: &str, size: usize, max: usize) -> ExecutionError {
    let unit = if what == "list" { "items" } else { "bytes" };
    ExecutionError::function_error(function, format!("the {what} would have {size} {unit}, more than {max}"))
}

fn string_arg<'a>(function: &str, v: &'a dyn Val) -> Result<&'a str, ExecutionError> {
    v.downcast_ref::<CelString>()
        .map(|s| s.inner())
        .ok_or_else(|| ExecutionError::function_error(function, "expected a string argument"))
}

type Args<'b, 'v> = Vec<CowVal<'b, 'v>>;
type Ret<'b, 'v> = Result<CowVal<'b, 'v>, ExecutionError>;

/// `@sm.t(x)`: charges the traversal of `x`, returns it.
fn traverse<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    let [x]: [CowVal<'b, 'v>; 1] =
        args.try_into().map_err(|a: Vec<_>| ExecutionError::invalid_argument_count(1, a.len()))?;
    charge("cost", traversal(x.as_ref()))?;
    Ok(x)
}

/// `@sm.deep(x)`: charges the comparison of `x` in depth, returns it.
fn deep<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    let [x]: [CowVal<'b, 'v>; 1] =
        args.try_into().map_err(|a: Vec<_>| ExecutionError::invalid_argument_count(1, a.len()))?;
    charge("cost", deep_traversal(x.as_ref()))?;
    Ok(x)
}

/// `@sm.range(range, bodyNodes)`: charges a comprehension, returns its range.
fn range<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    let [range, nodes]: [CowVal<'b, 'v>; 2] =
        args.try_into().map_err(|a: Vec<_>| ExecutionError::invalid_argument_count(2, a.len()))?;
    let nodes = nodes.downcast_ref::<CelInt>().map(|i| *i.inner()).unwrap_or(1).max(1) as u64;
    let len = range.as_sizer().map(|s| usize::try_from(*s.size().inner()).unwrap_or(0)).unwrap_or(0);
    charge("comprehension", range_cost(len, nodes))?;
    Ok(range)
}

/// `@sm.keys(range, bodyNodes)`: [`range`] for a one-variable comprehension, whose map range
/// iterates its keys: those come as a sorted list, so that what a comprehension builds from a
/// map (`map`, `filter`) does not depend on a hash order that changes from one process to the
/// next (and matches the fast evaluator, which reads maps in key order). A two-variable
/// comprehension (key and value) keeps its map.
fn keys<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    let range = self::range(args)?;
    if range.get_type().kind() != cel::common::types::Kind::Map {
        return Ok(range);
    }
    match Value::try_from(range.as_ref()) {
        Ok(Value::Map(m)) => {
            let mut keys: Vec<&cel::objects::Key> = m.map.keys().collect();
            keys.sort();
            let keys = keys
                .into_iter()
                .map(|k| Box::<dyn Val>::try_from(Value::from(k.clone())))
                .collect::<Result<Vec<Box<dyn Val>>, ExecutionError>>()?;
            Ok(CowVal::owned(CelList::from(keys)))
        }
        _ => Ok(range),
    }
}

/// `@sm.add(a, b)`: `a + b`, refused before it builds a string or list over the limits.
fn add<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    let [lhs, rhs]: [CowVal<'b, 'v>; 2] =
        args.try_into().map_err(|a: Vec<_>| ExecutionError::invalid_argument_count(2, a.len()))?;
    let (l, r) = (lhs.as_ref(), rhs.as_ref());
    if let (Some(a), Some(b)) = (l.downcast_ref::<CelString>(), r.downcast_ref::<CelString>()) {
        let size = a.inner().len() + b.inner().len();
        if size > MAX_STRING_BYTES {
            return Err(too_large("add", "string", size, MAX_STRING_BYTES));
        }
        charge("add", string_cost(size))?;
    } else if let (Some(a), Some(b)) = (l.as_sizer(), r.as_sizer()) {
        let len = |s: &dyn cel::common::traits::Sizer| usize::try_from(*s.size().inner()).unwrap_or(0);
        let size = len(a) + len(b);
        if size > MAX_LIST_ITEMS {
            return Err(too_large("add", "list", size, MAX_LIST_ITEMS));
        }
        charge("add", container_cost(size))?;
    } else if let (Some(a), Some(b)) = (l.downcast_ref::<CelBytes>(), r.downcast_ref::<CelBytes>()) {
        let size = a.inner().len() + b.inner().len();
        if size > MAX_STRING_BYTES {
            return Err(too_large("add", "string", size, MAX_STRING_BYTES));
        }
        charge("add", string_cost(size))?;
    }
    let adder = l.as_adder().ok_or_else(|| {
        ExecutionError::UnsupportedBinaryOperator(
            "add",
            Value::try_from(l).unwrap_or(Value::Null),
            Value::try_from(r).unwrap_or(Value::Null),
        )
    })?;
    Ok(CowVal::Owned(adder.add(r)?.into_owned()))
}

/// `@sm.replace(s, old, new[, n])`: the strings extension's `replace`, refused before it builds
/// a string over the limit.
fn replace<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    const F: &str = "replace";
    if !(3..=4).contains(&args.len()) {
        return Err(ExecutionError::invalid_argument_count(3, args.len()));
    }
    let s = string_arg(F, args[0].as_ref())?;
    let old = string_arg(F, args[1].as_ref())?;
    let new = string_arg(F, args[2].as_ref())?;
    // As the strings extension: a negative count replaces every occurrence.
    let n = match args.get(3) {
        None => None,
        Some(n) => {
            let n = *n
                .downcast_ref::<CelInt>()
                .ok_or_else(|| ExecutionError::function_error(F, "expected an int count"))?
                .inner();
            usize::try_from(n).ok()
        }
    };
    charge(F, string_cost(s.len() + old.len() + new.len()))?;
    let occurrences = if old.is_empty() { s.chars().count() + 1 } else { s.matches(old).count() };
    let replaced = n.map_or(occurrences, |n| n.min(occurrences));
    let size = (s.len() - replaced * old.len()).saturating_add(replaced.saturating_mul(new.len()));
    if size > MAX_STRING_BYTES {
        return Err(too_large(F, "string", size, MAX_STRING_BYTES));
    }
    charge(F, string_cost(size))?;
    let out = match n {
        Some(n) => s.replacen(old, new, n),
        None => s.replace(old, new),
    };
    Ok(CowVal::owned(CelString::from(out)))
}

/// `@sm.join(list[, sep])`: the strings extension's `join`, refused before it builds a string
/// over the limit.
fn join<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    const F: &str = "join";
    if !(1..=2).contains(&args.len()) {
        return Err(ExecutionError::invalid_argument_count(1, args.len()));
    }
    let sep = match args.get(1) {
        Some(s) => string_arg(F, s.as_ref())?,
        None => "",
    };
    let list = args[0].as_ref();
    let items = list.as_iterable().ok_or_else(|| ExecutionError::function_error(F, "expected a list"))?;
    let mut parts: Vec<&str> = Vec::new();
    let mut size = 0usize;
    let mut iter = items.iter();
    while let Some(item) = iter.next() {
        let s = string_arg(F, item)?;
        size = size.saturating_add(s.len()).saturating_add(if parts.is_empty() { 0 } else { sep.len() });
        if size > MAX_STRING_BYTES {
            return Err(too_large(F, "string", size, MAX_STRING_BYTES));
        }
        parts.push(s);
    }
    charge(F, string_cost(size) + container_cost(parts.len()))?;
    Ok(CowVal::owned(CelString::from(parts.join(sep))))
}

/// `@sm.formatArgs(list)`: the arguments of `format`, refused when their text could build a
/// string over the limit (the template is a string, itself within the limit).
fn format_args<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    let [list]: [CowVal<'b, 'v>; 1] =
        args.try_into().map_err(|a: Vec<_>| ExecutionError::invalid_argument_count(1, a.len()))?;
    let size = deep_size(list.as_ref());
    if size > MAX_STRING_BYTES / 4 {
        return Err(too_large("format", "string", size, MAX_STRING_BYTES / 4));
    }
    charge("format", string_cost(size))?;
    Ok(list)
}

/// An upper bound of the bytes `v` takes as text (32 for a scalar).
fn deep_size(v: &dyn Val) -> usize {
    fn size(v: &Value) -> usize {
        match v {
            Value::String(s) => s.len() + 2,
            Value::Bytes(b) => b.len() * 4 + 3,
            Value::List(items) => items.iter().map(|i| size(i) + 2).fold(2, usize::saturating_add),
            Value::Map(m) => m.map.values().map(|i| size(i) + 34).fold(2, usize::saturating_add),
            _ => 32,
        }
    }
    Value::try_from(v).map(|v| size(&v)).unwrap_or(MAX_STRING_BYTES)
}

/// `@sm.indexOf(s, sub[, offset])` and `@sm.lastIndexOf(...)`: the strings extension's
/// functions (code-point indexes, the same offset rules), charged for their search: every
/// position of `s` compared with `sub`, up to `len(s) x len(sub)` characters.
fn index_of<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    search(args, "indexOf", false)
}

fn last_index_of<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    search(args, "lastIndexOf", true)
}

fn search<'b, 'v>(args: Args<'b, 'v>, f: &str, last: bool) -> Ret<'b, 'v> {
    if !(2..=3).contains(&args.len()) {
        return Err(ExecutionError::invalid_argument_count(2, args.len()));
    }
    let s = string_arg(f, args[0].as_ref())?;
    let sub = string_arg(f, args[1].as_ref())?;
    let offset = match args.get(2) {
        None => None,
        Some(o) => Some(
            *o.downcast_ref::<CelInt>()
                .ok_or_else(|| ExecutionError::function_error(f, "expected an int offset"))?
                .inner(),
        ),
    };
    let runes: Vec<char> = s.chars().collect();
    let needle: Vec<char> = sub.chars().collect();
    let positions = (runes.len() + 1).saturating_sub(needle.len()).max(1);
    charge(f, string_cost(s.len()) + string_cost(positions.saturating_mul(needle.len())))?;
    let out_of_range = |i: i64| ExecutionError::function_error(f, format!("index out of range: {i}"));
    let found = match offset {
        None if last => rfind_runes(&runes, &needle, runes.len()),
        None => find_runes(&runes, &needle, 0),
        Some(o) if o < 0 => return Err(out_of_range(o)),
        Some(o) if needle.is_empty() => return Ok(CowVal::owned(CelInt::from(o.min(runes.len() as i64)))),
        Some(o) if o >= runes.len() as i64 => return Err(out_of_range(o)),
        Some(o) if last => rfind_runes(&runes, &needle, o as usize),
        Some(o) => find_runes(&runes, &needle, o as usize),
    };
    Ok(CowVal::owned(CelInt::from(found.map_or(-1, |i| i as i64))))
}

/// The code-point index of the first occurrence of `needle` at or after `offset`.
fn find_runes(runes: &[char], needle: &[char], offset: usize) -> Option<usize> {
    if needle.is_empty() {
        return Some(offset);
    }
    runes[offset..].windows(needle.len()).position(|w| w == needle).map(|i| i + offset)
}

/// The code-point index of the last occurrence of `needle` starting at or before `offset`.
fn rfind_runes(runes: &[char], needle: &[char], offset: usize) -> Option<usize> {
    if needle.len() > runes.len() {
        return None;
    }
    let last = offset.min(runes.len() - needle.len());
    (0..=last).rev().find(|&i| runes[i..i + needle.len()] == *needle)
}

/// `@sm.splittable(s)`: the target of `split`, refused when it could produce more than
/// [`MAX_LIST_ITEMS`] parts.
fn splittable<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    let [s]: [CowVal<'b, 'v>; 1] =
        args.try_into().map_err(|a: Vec<_>| ExecutionError::invalid_argument_count(1, a.len()))?;
    if let Some(text) = s.downcast_ref::<CelString>() {
        let len = text.inner().len();
        if len > MAX_LIST_ITEMS {
            return Err(too_large("split", "list", len + 1, MAX_LIST_ITEMS));
        }
        charge("split", container_cost(len))?;
    }
    Ok(s)
}

/// `@sm.matches(s, re)`: `matches`, with the pattern compiled once per thread (and within a
/// size limit) instead of once per call.
fn matches<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    const F: &str = "matches";
    let [s, re]: [CowVal<'b, 'v>; 2] =
        args.try_into().map_err(|a: Vec<_>| ExecutionError::invalid_argument_count(2, a.len()))?;
    let text = string_arg(F, s.as_ref())?;
    let pattern = string_arg(F, re.as_ref())?;
    // Compiling is charged on every call (the cache must not make the cost depend on what
    // ran before), matching by text x weight: a pattern's states are what the matcher may
    // track at each position of the text.
    let weight = regex_weight(pattern);
    charge(
        F,
        string_cost(text.len())
            + string_cost(pattern.len())
            + weight
            + (text.len() as u64).saturating_mul(weight) / 100,
    )?;
    let found = REGEXES.with(|cache| {
        let mut cache = cache.borrow_mut();
        if !cache.contains_key(pattern) {
            if cache.len() >= REGEX_CACHE {
                cache.clear();
            }
            let compiled = regex::RegexBuilder::new(pattern)
                .size_limit(REGEX_SIZE_LIMIT)
                .dfa_size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|err| format!("'{pattern}' not a valid regex:\n{err}"));
            cache.insert(pattern.to_string(), compiled);
        }
        match &cache[pattern] {
            Ok(re) => Ok(re.is_match(text)),
            Err(message) => Err(ExecutionError::function_error(F, message)),
        }
    })?;
    Ok(CowVal::owned(CelBool::from(found)))
}

/// The size of a regular expression with its repetitions expanded (`[ab]{8000}` weighs
/// 8,000, `^[a-z0-9-]+$` a handful); an unparsable pattern weighs its length (compiling it
/// fails anyway).
pub fn regex_weight(pattern: &str) -> u64 {
    use regex_syntax::hir::{Hir, HirKind};
    fn weight(h: &Hir) -> u64 {
        match h.kind() {
            HirKind::Empty | HirKind::Look(_) | HirKind::Class(_) => 1,
            HirKind::Literal(l) => l.0.len() as u64,
            HirKind::Repetition(r) => {
                let times = u64::from(r.max.unwrap_or(r.min).max(r.min)) + 1;
                weight(&r.sub).saturating_mul(times)
            }
            HirKind::Capture(c) => weight(&c.sub),
            HirKind::Concat(hs) | HirKind::Alternation(hs) => {
                hs.iter().map(weight).fold(0, u64::saturating_add)
            }
        }
    }
    match regex_syntax::ParserBuilder::new().nest_limit(64).build().parse(pattern) {
        Ok(hir) => weight(&hir).max(1),
        Err(_) => pattern.len() as u64,
    }
}

/// Declares the `@sm.*` functions in `env`.
pub fn declare(env: &mut cel::Env) -> Result<(), cel::DeclarationError> {
    use cel::common::types::{DYN_TYPE, INT_TYPE, LIST_TYPE, STRING_TYPE};
    env.add_overload(TRAVERSE, "sm_traverse", vec![DYN_TYPE], traverse)?;
    env.add_overload(DEEP, "sm_deep", vec![DYN_TYPE], deep)?;
    env.add_overload(INDEX_OF, "sm_index_of2", vec![DYN_TYPE, DYN_TYPE], index_of)?;
    env.add_overload(INDEX_OF, "sm_index_of3", vec![DYN_TYPE, DYN_TYPE, DYN_TYPE], index_of)?;
    env.add_overload(LAST_INDEX_OF, "sm_last_index_of2", vec![DYN_TYPE, DYN_TYPE], last_index_of)?;
    env.add_overload(LAST_INDEX_OF, "sm_last_index_of3", vec![DYN_TYPE, DYN_TYPE, DYN_TYPE], last_index_of)?;
    env.add_overload(RANGE, "sm_range", vec![DYN_TYPE, INT_TYPE], range)?;
    env.add_overload(KEYS, "sm_keys", vec![DYN_TYPE, INT_TYPE], keys)?;
    env.add_overload(ADD, "sm_add", vec![DYN_TYPE, DYN_TYPE], add)?;
    env.add_overload(REPLACE, "sm_replace3", vec![DYN_TYPE, DYN_TYPE, DYN_TYPE], replace)?;
    env.add_overload(REPLACE, "sm_replace4", vec![DYN_TYPE, DYN_TYPE, DYN_TYPE, DYN_TYPE], replace)?;
    env.add_overload(JOIN, "sm_join1", vec![DYN_TYPE], join)?;
    env.add_overload(JOIN, "sm_join2", vec![DYN_TYPE, DYN_TYPE], join)?;
    env.add_overload(FORMAT_ARGS, "sm_format_args", vec![LIST_TYPE], format_args)?;
    env.add_overload(SPLITTABLE, "sm_splittable", vec![DYN_TYPE], splittable)?;
    env.add_overload(MATCHES, "sm_matches", vec![STRING_TYPE, STRING_TYPE], matches)?;
    Ok(())
}

const TRAVERSE: &str = "@sm.t";
const DEEP: &str = "@sm.deep";
const INDEX_OF: &str = "@sm.indexOf";
const LAST_INDEX_OF: &str = "@sm.lastIndexOf";
const RANGE: &str = "@sm.range";
const KEYS: &str = "@sm.keys";
const ADD: &str = "@sm.add";
const REPLACE: &str = "@sm.replace";
const JOIN: &str = "@sm.join";
const FORMAT_ARGS: &str = "@sm.formatArgs";
const SPLITTABLE: &str = "@sm.splittable";
const MATCHES: &str = "@sm.matches";

/// Calls whose operands are not charged: logic and selection (their cost is the AST's),
/// and the macros' own bookkeeping.
fn free(function: &str) -> bool {
    matches!(
        function,
        operators::LOGICAL_AND
            | operators::LOGICAL_OR
            | operators::LOGICAL_NOT
            | operators::NEGATE
            | operators::CONDITIONAL
            | operators::INDEX
            | operators::OPT_INDEX
            | operators::NOT_STRICTLY_FALSE
    )
}

/// The accumulator of the parser's macro expansions: no expression can name it.
const ACCUMULATOR: &str = "@result";

/// The AST the interpreter evaluates: `e` with the charges of the cost model.
pub fn instrument(e: &IdedExpr) -> IdedExpr {
    let call = |name: &str, args: Vec<IdedExpr>| IdedExpr {
        id: e.id,
        expr: Expr::Call(cel::common::ast::CallExpr { func_name: name.to_string(), target: None, args }),
    };
    let t = |x: IdedExpr| call(TRAVERSE, vec![x]);
    match &e.expr {
        Expr::Call(c) => {
            let target = c.target.as_deref().map(instrument);
            let args: Vec<IdedExpr> = c.args.iter().map(instrument).collect();
            let is_accumulator = |x: &IdedExpr| matches!(&x.expr, Expr::Ident(n) if n == ACCUMULATOR);
            match (c.func_name.as_str(), target, args.len()) {
                // The macros' appends run in place in the interpreter: keep their shape.
                (operators::ADD, None, 2) if is_accumulator(&c.args[0]) => IdedExpr {
                    id: e.id,
                    expr: Expr::Call(cel::common::ast::CallExpr {
                        func_name: c.func_name.clone(),
                        target: None,
                        args,
                    }),
                },
                (operators::ADD, None, 2) => call(ADD, args),
                ("replace", Some(s), 2 | 3) => call(REPLACE, std::iter::once(s).chain(args).collect()),
                ("join", Some(l), 0 | 1) => call(JOIN, std::iter::once(l).chain(args).collect()),
                ("matches", Some(s), 1) => call(MATCHES, std::iter::once(s).chain(args).collect()),
                ("matches", None, 2) => call(MATCHES, args),
                ("indexOf", Some(s), 1 | 2) => call(INDEX_OF, std::iter::once(s).chain(args).collect()),
                ("lastIndexOf", Some(s), 1 | 2) => {
                    call(LAST_INDEX_OF, std::iter::once(s).chain(args).collect())
                }
                // Equality and membership compare in depth; a looked-up object is copied.
                (operators::EQUALS | operators::NOT_EQUALS | operators::IN, None, 2) => IdedExpr {
                    id: e.id,
                    expr: Expr::Call(cel::common::ast::CallExpr {
                        func_name: c.func_name.clone(),
                        target: None,
                        args: args.into_iter().map(|a| call(DEEP, vec![a])).collect(),
                    }),
                },
                ("lookup", None, 4) => call(
                    DEEP,
                    vec![IdedExpr {
                        id: e.id,
                        expr: Expr::Call(cel::common::ast::CallExpr {
                            func_name: c.func_name.clone(),
                            target: None,
                            args: args.into_iter().map(t).collect(),
                        }),
                    }],
                ),
                ("format", Some(s), 1) => IdedExpr {
                    id: e.id,
                    expr: Expr::Call(cel::common::ast::CallExpr {
                        func_name: c.func_name.clone(),
                        target: Some(Box::new(t(s))),
                        args: args.into_iter().map(|a| call(FORMAT_ARGS, vec![a])).collect(),
                    }),
                },
                ("split", Some(s), 1 | 2) => IdedExpr {
                    id: e.id,
                    expr: Expr::Call(cel::common::ast::CallExpr {
                        func_name: c.func_name.clone(),
                        target: Some(Box::new(call(SPLITTABLE, vec![s]))),
                        args: args.into_iter().map(t).collect(),
                    }),
                },
                (f, target, _) if free(f) => IdedExpr {
                    id: e.id,
                    expr: Expr::Call(cel::common::ast::CallExpr {
                        func_name: c.func_name.clone(),
                        target: target.map(Box::new),
                        args,
                    }),
                },
                (_, target, _) => IdedExpr {
                    id: e.id,
                    expr: Expr::Call(cel::common::ast::CallExpr {
                        func_name: c.func_name.clone(),
                        target: target.map(|x| Box::new(t(x))),
                        args: args.into_iter().map(t).collect(),
                    }),
                },
            }
        }
        Expr::Select(s) => IdedExpr {
            id: e.id,
            expr: Expr::Select(cel::common::ast::SelectExpr {
                operand: Box::new(instrument(&s.operand)),
                field: s.field.clone(),
                test: s.test,
            }),
        },
        Expr::List(l) => IdedExpr {
            id: e.id,
            expr: Expr::List(cel::common::ast::ListExpr {
                elements: l.elements.iter().map(|x| t(instrument(x))).collect(),
                ..l.clone()
            }),
        },
        Expr::Map(m) => IdedExpr {
            id: e.id,
            expr: Expr::Map(cel::common::ast::MapExpr {
                entries: m
                    .entries
                    .iter()
                    .map(|entry| match &entry.expr {
                        EntryExpr::MapEntry(me) => cel::common::ast::IdedEntryExpr {
                            id: entry.id,
                            expr: EntryExpr::MapEntry(cel::common::ast::MapEntryExpr {
                                key: t(instrument(&me.key)),
                                value: t(instrument(&me.value)),
                                ..me.clone()
                            }),
                        },
                        other => cel::common::ast::IdedEntryExpr { id: entry.id, expr: other.clone() },
                    })
                    .collect(),
            }),
        },
        Expr::Comprehension(c) => {
            let nodes = IdedExpr {
                id: e.id,
                expr: Expr::Literal(LiteralValue::Int(CelInt::from(body_nodes(c) as i64))),
            };
            IdedExpr {
                id: e.id,
                expr: Expr::Comprehension(Box::new(cel::common::ast::ComprehensionExpr {
                    iter_range: call(
                        if c.iter_var2.is_none() { KEYS } else { RANGE },
                        vec![instrument(&c.iter_range), nodes],
                    ),
                    iter_var: c.iter_var.clone(),
                    iter_var2: c.iter_var2.clone(),
                    accu_var: c.accu_var.clone(),
                    accu_init: instrument(&c.accu_init),
                    loop_cond: instrument(&c.loop_cond),
                    loop_step: instrument(&c.loop_step),
                    result: instrument(&c.result),
                })),
            }
        }
        Expr::Ident(_) | Expr::Literal(_) | Expr::Struct(_) | Expr::Unspecified => e.clone(),
    }
}
