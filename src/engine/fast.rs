//! A fast evaluator for the subset of CEL that metrics mostly use, over [`Node`]s.
//!
//! `cel`'s interpreter needs the object as its own value tree (18 KB per pod, built by deep
//! copy) and dispatches every operation through trait objects: 1–10 µs per evaluation. This
//! module compiles the parsed AST once into an [`Op`] tree and walks the cached [`Node`]s
//! directly, borrowing everything.
//!
//! It never decides anything the interpreter would decide differently: on any error, any
//! type combination it does not handle exactly like the interpreter (mixed numeric types,
//! container equality, overflow) and any construct outside the subset (timestamps, regexes,
//! macros over maps with two variables, ...) it gives up with [`Bail`] and the caller runs the
//! interpreter on the same data. A differential test holds the two to the same results.

use std::cmp::Ordering;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering as AtomicOrdering};

use cel::common::ast::{Expr, IdedExpr, LiteralValue, operators};

use super::node::{self, Key, Node, map_get};

/// The fast evaluator cannot decide: run the interpreter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bail;

/// A compiled expression.
#[derive(Debug)]
pub enum Op {
    /// A literal, held as the same node an object would hold.
    Const(Node),
    Object,
    Namespace,
    Tenant,
    /// A comprehension variable (iteration variable or accumulator) by slot.
    Local(usize),
    Select(Box<Op>, Field),
    /// A chain of two or more selections (`object.metadata.namespace`), walked over the
    /// nodes without a value per step.
    Path(Box<Op>, Box<[Field]>),
    Has(Box<Op>, Field),
    Index(Box<Op>, Box<Op>),
    Not(Box<Op>),
    Neg(Box<Op>),
    And(Box<Op>, Box<Op>),
    Or(Box<Op>, Box<Op>),
    Cond(Box<[Op; 3]>),
    Cmp(CmpOp, Box<Op>, Box<Op>),
    Arith(ArithOp, Box<Op>, Box<Op>),
    In(Box<Op>, Box<Op>),
    /// `'literal' in container`: on a map, the key is found by pointer like a field.
    InLiteral(Field, Box<Op>),
    Size(Box<Op>),
    Str(StrFn, Box<Op>, Box<Op>),
    List(Vec<Op>),
    NotStrictlyFalse(Box<Op>),
    Lookup(Box<[Op; 4]>),
    /// A macro's `accumulator + [items]` (`map`, `filter`): appended in place, as the
    /// interpreter does, instead of copying the accumulator on every step.
    Append(usize, Vec<Op>),
    Comprehension(Box<Comprehension>),
    /// `range.all(x, pred)` and `range.exists(x, pred)`: the macros' comprehensions without
    /// their accumulator (the loop stops at the first answer that decides).
    All(Box<Quantifier>),
    Exists(Box<Quantifier>),
    /// Outside the subset.
    Unsupported,
}

/// A field name with the position it was last found at: objects of one kind mostly share
/// their shape, so the next object usually holds the field at the same position and the
/// lookup is one pointer comparison.
#[derive(Debug)]
pub struct Field {
    key: Key,
    hint: AtomicU32,
}

impl Field {
    fn new(name: &str) -> Self {
        Field { key: node::key(name), hint: AtomicU32::new(0) }
    }

    fn find<'a>(&self, entries: &'a [(Key, Node)]) -> Option<&'a Node> {
        let hint = self.hint.load(AtomicOrdering::Relaxed) as usize;
        if let Some((k, v)) = entries.get(hint)
            && Arc::ptr_eq(k, &self.key)
        {
            return Some(v);
        }
        let found = entries.iter().position(|(k, _)| Arc::ptr_eq(k, &self.key));
        match found {
            Some(i) => {
                self.hint.store(i as u32, AtomicOrdering::Relaxed);
                Some(&entries[i].1)
            }
            None => node::map_get_unshared(entries, &self.key),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy)]
pub enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

#[derive(Debug, Clone, Copy)]
pub enum StrFn {
    StartsWith,
    EndsWith,
    Contains,
}

#[derive(Debug)]
pub struct Comprehension {
    range: Op,
    /// The cost of one iteration (see [`super::cost`]).
    body: u64,
    iter_slot: usize,
    accu_slot: usize,
    init: Op,
    cond: Op,
    step: Op,
    result: Op,
}

/// The loop of `all` and `exists`: one predicate per element, no accumulator.
#[derive(Debug)]
pub struct Quantifier {
    range: Op,
    body: u64,
    iter_slot: usize,
    pred: Op,
}

impl Comprehension {
    /// The parser expands `all` to (init `true`, condition `@not_strictly_false(accu)`, step
    /// `accu && pred`, result `accu`) and `exists` to (`false`, `@not_strictly_false(!accu)`,
    /// `accu || pred`, `accu`). Recognised exactly; anything else stays a comprehension.
    fn into_op(self) -> Op {
        let a = self.accu_slot;
        let is_accu = |o: &Op| matches!(o, Op::Local(s) if *s == a);
        let shape = match (&self.init, &self.cond, &self.step) {
            (Op::Const(Node::Bool(true)), Op::NotStrictlyFalse(c), Op::And(l, _))
                if is_accu(c) && is_accu(l) =>
            {
                Some(true)
            }
            (Op::Const(Node::Bool(false)), Op::NotStrictlyFalse(c), Op::Or(l, _))
                if matches!(&**c, Op::Not(n) if is_accu(n)) && is_accu(l) =>
            {
                Some(false)
            }
            _ => None,
        };
        match (shape, is_accu(&self.result)) {
            (Some(all), true) => {
                let (Op::And(_, pred) | Op::Or(_, pred)) = self.step else { unreachable!("matched above") };
                let q = Box::new(Quantifier {
                    range: self.range,
                    body: self.body,
                    iter_slot: self.iter_slot,
                    pred: *pred,
                });
                if all { Op::All(q) } else { Op::Exists(q) }
            }
            _ => Op::Comprehension(Box::new(self)),
        }
    }
}

/// Whether `op` depends on the object only through `object.metadata.namespace` (and otherwise
/// on `namespaceObject`, `tenant` and literals): then it has one value per namespace, and a
/// pass can evaluate it once per run of objects of one namespace ("exclude system
/// namespaces" filters). Anything the analysis cannot see into answers false.
pub fn reads_only_namespace(op: &Op) -> bool {
    let all = |ops: &[&Op]| ops.iter().all(|o| reads_only_namespace(o));
    match op {
        Op::Const(_) | Op::Namespace | Op::Tenant | Op::Local(_) => true,
        Op::Object | Op::Unsupported | Op::Lookup(_) => false,
        Op::Path(root, fields) => match **root {
            Op::Object => {
                fields.len() == 2 && &*fields[0].key == "metadata" && &*fields[1].key == "namespace"
            }
            _ => reads_only_namespace(root),
        },
        Op::Select(root, _) | Op::Has(root, _) => !matches!(**root, Op::Object) && reads_only_namespace(root),
        Op::Index(a, b)
        | Op::And(a, b)
        | Op::Or(a, b)
        | Op::Cmp(_, a, b)
        | Op::Arith(_, a, b)
        | Op::In(a, b) => all(&[a, b]),
        Op::Str(_, a, b) => all(&[a, b]),
        Op::Not(a) | Op::Neg(a) | Op::Size(a) | Op::NotStrictlyFalse(a) | Op::InLiteral(_, a) => {
            reads_only_namespace(a)
        }
        Op::Cond(parts) => parts.iter().all(reads_only_namespace),
        Op::List(items) | Op::Append(_, items) => items.iter().all(reads_only_namespace),
        Op::Comprehension(c) => all(&[&c.range, &c.init, &c.cond, &c.step, &c.result]),
        Op::All(q) | Op::Exists(q) => all(&[&q.range, &q.pred]),
    }
}

/// The accumulator of the parser's macro expansions.
const ACCUMULATOR: &str = "@result";

/// Comprehension variables live in fixed slots: two per nesting level, as deep as an
/// expression may nest (every evaluation initialises and drops all of them).
const SLOTS: usize = 2 * super::expression::MAX_COMPREHENSION_DEPTH;

/// Compiles a checked AST. Returns None when the root itself is outside the subset, so the
/// caller does not even try.
pub fn compile(e: &IdedExpr) -> Option<Op> {
    let op = Compiler { scopes: Vec::new() }.op(e);
    (!matches!(op, Op::Unsupported)).then_some(op)
}

struct Compiler {
    /// Bound comprehension variables, innermost last.
    scopes: Vec<(String, usize)>,
}

impl Compiler {
    fn op(&mut self, e: &IdedExpr) -> Op {
        let b = |o| Box::new(o);
        match &e.expr {
            Expr::Literal(l) => match l {
                LiteralValue::Null => Op::Const(Node::Null),
                LiteralValue::Boolean(v) => Op::Const(Node::Bool(*v.inner())),
                LiteralValue::Int(v) => Op::Const(Node::Int(*v.inner())),
                LiteralValue::UInt(v) => Op::Const(Node::UInt(*v.inner())),
                LiteralValue::Double(v) => Op::Const(Node::Double(*v.inner())),
                // Not inline like object strings: a literal is read on every evaluation, and
                // the boxed form needs no UTF-8 check to be read.
                LiteralValue::String(v) => Op::Const(Node::Str(Box::from(v.inner()))),
                LiteralValue::Bytes(_) => Op::Unsupported,
            },
            Expr::Ident(name) => {
                if let Some((_, slot)) = self.scopes.iter().rev().find(|(n, _)| n == name) {
                    return Op::Local(*slot);
                }
                match name.as_str() {
                    "object" => Op::Object,
                    "namespaceObject" => Op::Namespace,
                    "tenant" => Op::Tenant,
                    _ => Op::Unsupported,
                }
            }
            Expr::Select(s) => {
                let operand = b(self.op(&s.operand));
                let field = Field::new(&s.field);
                if s.test {
                    return Op::Has(operand, field);
                }
                match *operand {
                    Op::Select(inner, first) => Op::Path(inner, Box::new([first, field])),
                    Op::Path(inner, fields) => {
                        let mut fields = fields.into_vec();
                        fields.push(field);
                        Op::Path(inner, fields.into_boxed_slice())
                    }
                    operand => Op::Select(Box::new(operand), field),
                }
            }
            Expr::List(l) => Op::List(l.elements.iter().map(|el| self.op(el)).collect()),
            Expr::Comprehension(c) if c.iter_var2.is_none() => {
                let iter_slot = self.scopes.len();
                let accu_slot = iter_slot + 1;
                if accu_slot >= SLOTS {
                    return Op::Unsupported;
                }
                let range = self.op(&c.iter_range);
                // The variables are in scope in the condition, the step and (the accumulator
                // only) the result.
                let init = self.op(&c.accu_init);
                self.scopes.push((c.iter_var.clone(), iter_slot));
                self.scopes.push((c.accu_var.clone(), accu_slot));
                let cond = self.op(&c.loop_cond);
                let step = self.op(&c.loop_step);
                // The iteration variable is out of scope in the result.
                self.scopes[iter_slot].0 = String::from("\0");
                let result = self.op(&c.result);
                self.scopes.truncate(iter_slot);
                let body = super::cost::body_nodes(c);
                Comprehension { range, body, iter_slot, accu_slot, init, cond, step, result }.into_op()
            }
            Expr::Call(c) => self.call(&c.func_name, c.target.as_deref(), &c.args),
            Expr::Comprehension(_) | Expr::Map(_) | Expr::Struct(_) | Expr::Unspecified => Op::Unsupported,
        }
    }

    fn call(&mut self, func: &str, target: Option<&IdedExpr>, args: &[IdedExpr]) -> Op {
        // The macros' `@result + [items]` (no expression can name `@result`).
        if let (operators::ADD, None, [accu, items]) = (func, target, args)
            && let Expr::Ident(name) = &accu.expr
            && name == ACCUMULATOR
            && let Expr::List(items) = &items.expr
            && let Some((_, slot)) = self.scopes.iter().rev().find(|(n, _)| n == name)
        {
            let slot = *slot;
            return Op::Append(slot, items.elements.iter().map(|x| self.op(x)).collect());
        }
        let mut a: Vec<Op> = args.iter().map(|x| self.op(x)).collect();
        let t = target.map(|t| self.op(t));
        let two = |a: &mut Vec<Op>| {
            let r = a.pop().expect("two args");
            (Box::new(a.pop().expect("two args")), Box::new(r))
        };
        match (func, t, a.len()) {
            (operators::LOGICAL_AND, None, 2) => {
                let (l, r) = two(&mut a);
                Op::And(l, r)
            }
            (operators::LOGICAL_OR, None, 2) => {
                let (l, r) = two(&mut a);
                Op::Or(l, r)
            }
            (operators::LOGICAL_NOT, None, 1) => Op::Not(Box::new(a.remove(0))),
            (operators::NEGATE, None, 1) => Op::Neg(Box::new(a.remove(0))),
            (operators::NOT_STRICTLY_FALSE, None, 1) => Op::NotStrictlyFalse(Box::new(a.remove(0))),
            (operators::CONDITIONAL, None, 3) => {
                let f = a.pop().expect("3");
                let t = a.pop().expect("3");
                let c = a.pop().expect("3");
                Op::Cond(Box::new([c, t, f]))
            }
            (operators::INDEX, None, 2) => {
                let (l, r) = two(&mut a);
                Op::Index(l, r)
            }
            (operators::IN, None, 2) => {
                let (l, r) = two(&mut a);
                match *l {
                    Op::Const(Node::Str(k)) => Op::InLiteral(Field::new(&k), r),
                    l => Op::In(Box::new(l), r),
                }
            }
            (f, None, 2) if cmp_op(f).is_some() => {
                let (l, r) = two(&mut a);
                Op::Cmp(cmp_op(f).expect("checked"), l, r)
            }
            (f, None, 2) if arith_op(f).is_some() => {
                let (l, r) = two(&mut a);
                Op::Arith(arith_op(f).expect("checked"), l, r)
            }
            ("size", None, 1) => Op::Size(Box::new(a.remove(0))),
            ("size", Some(t), 0) => Op::Size(Box::new(t)),
            ("startsWith" | "endsWith" | "contains", Some(t), 1) => {
                let f = match func {
                    "startsWith" => StrFn::StartsWith,
                    "endsWith" => StrFn::EndsWith,
                    _ => StrFn::Contains,
                };
                Op::Str(f, Box::new(t), Box::new(a.remove(0)))
            }
            ("lookup", None, 4) => {
                let name = a.pop().expect("4");
                let ns = a.pop().expect("4");
                let kind = a.pop().expect("4");
                let api = a.pop().expect("4");
                Op::Lookup(Box::new([api, kind, ns, name]))
            }
            _ => Op::Unsupported,
        }
    }
}

fn cmp_op(f: &str) -> Option<CmpOp> {
    Some(match f {
        operators::EQUALS => CmpOp::Eq,
        operators::NOT_EQUALS => CmpOp::Ne,
        operators::LESS => CmpOp::Lt,
        operators::LESS_EQUALS => CmpOp::Le,
        operators::GREATER => CmpOp::Gt,
        operators::GREATER_EQUALS => CmpOp::Ge,
        _ => return None,
    })
}

fn arith_op(f: &str) -> Option<ArithOp> {
    Some(match f {
        operators::ADD => ArithOp::Add,
        operators::SUBSTRACT => ArithOp::Sub,
        operators::MULTIPLY => ArithOp::Mul,
        operators::DIVIDE => ArithOp::Div,
        operators::MODULO => ArithOp::Rem,
        _ => return None,
    })
}

/// A value during fast evaluation, borrowed from the objects and the program.
#[derive(Clone, Debug, Default)]
pub enum V<'a> {
    #[default]
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    Str(&'a str),
    List(&'a [Node]),
    Map(&'a [(Key, Node)]),
    /// A list built during evaluation (`map`, `filter`, list literals).
    Values(Rc<Vec<V<'a>>>),
}

impl V<'_> {
    /// The same value as the interpreter's (differential tests); None when not representable.
    pub fn to_cel(&self) -> Option<cel::Value> {
        use cel::Value;
        fn node(n: &Node) -> Value {
            match n {
                Node::Null => Value::Null,
                Node::Bool(b) => Value::Bool(*b),
                Node::Int(i) => Value::Int(*i),
                Node::UInt(u) => Value::UInt(*u),
                Node::Double(d) => Value::Float(*d),
                Node::Str(_) | Node::Short(..) => {
                    Value::String(n.as_str().unwrap_or_default().to_string().into())
                }
                Node::List(l) => Value::List(l.iter().map(node).collect::<Vec<_>>().into()),
                Node::Map(m) => map(m),
            }
        }
        fn map(m: &[(Key, Node)]) -> Value {
            Value::Map(
                m.iter()
                    .map(|(k, v)| (k.to_string(), node(v)))
                    .collect::<std::collections::HashMap<_, _>>()
                    .into(),
            )
        }
        Some(match self {
            V::Null => Value::Null,
            V::Bool(b) => Value::Bool(*b),
            V::Int(i) => Value::Int(*i),
            V::UInt(u) => Value::UInt(*u),
            V::Double(d) => Value::Float(*d),
            V::Str(s) => Value::String(s.to_string().into()),
            V::List(l) => Value::List(l.iter().map(node).collect::<Vec<_>>().into()),
            V::Values(l) => Value::List(l.iter().map(V::to_cel).collect::<Option<Vec<_>>>()?.into()),
            V::Map(m) => map(m),
        })
    }
}

impl<'a> From<&'a Node> for V<'a> {
    fn from(n: &'a Node) -> Self {
        match n {
            Node::Null => V::Null,
            Node::Bool(b) => V::Bool(*b),
            Node::Int(i) => V::Int(*i),
            Node::UInt(u) => V::UInt(*u),
            Node::Double(d) => V::Double(*d),
            Node::Str(s) => V::Str(s),
            Node::Short(..) => V::Str(n.as_str().unwrap_or_default()),
            Node::List(l) => V::List(l),
            Node::Map(m) => V::Map(m),
        }
    }
}

/// Finds an object for `lookup(apiVersion, kind, namespace, name)`, confined like the metric.
pub trait Lookup {
    fn lookup(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<&Node>;
}

/// No object is visible (evaluation outside any cache).
pub struct NoObjects;

impl Lookup for NoObjects {
    fn lookup(&self, _: &str, _: &str, _: &str, _: &str) -> Option<&Node> {
        None
    }
}

/// The variables of one evaluation.
pub struct Env<'a> {
    pub object: &'a Node,
    pub namespace: Option<&'a Node>,
    pub tenant: Option<&'a str>,
    pub lookup: &'a dyn Lookup,
}

/// What the fast evaluator concluded.
#[derive(Debug)]
pub enum Answer<T> {
    Value(T),
    /// Over the cost limit. The interpreter charges the same model along the same path (and
    /// the fast evaluator stops at the first error), so it would stop too: no need to ask it.
    OverCost,
    /// Outside the subset or an error: the interpreter decides.
    Bail,
}

impl<T> Answer<T> {
    fn of(result: Result<T, Bail>, cost: u64) -> Self {
        match result {
            Ok(v) => Answer::Value(v),
            Err(Bail) if cost > super::cost::COST_LIMIT => Answer::OverCost,
            Err(Bail) => Answer::Bail,
        }
    }
}

/// Evaluates `op`.
pub fn answer<'a>(op: &'a Op, env: &Env<'a>) -> Answer<V<'a>> {
    let mut locals: [V<'a>; SLOTS] = Default::default();
    let mut eval = Eval { env, locals: &mut locals, cost: 0 };
    let result = eval.op(op);
    Answer::of(result, eval.cost)
}

/// [`answer`] for a predicate: a value only for a boolean answer.
pub fn answer_bool<'a>(op: &'a Op, env: &Env<'a>) -> Answer<bool> {
    let mut locals: [V<'a>; SLOTS] = Default::default();
    let mut eval = Eval { env, locals: &mut locals, cost: 0 };
    let result = eval.bool(op);
    Answer::of(result, eval.cost)
}

/// Evaluates `op`: Err when [`answer`] has no value.
pub fn eval<'a>(op: &'a Op, env: &Env<'a>) -> Result<V<'a>, Bail> {
    match answer(op, env) {
        Answer::Value(v) => Ok(v),
        Answer::OverCost | Answer::Bail => Err(Bail),
    }
}

/// [`eval`] for a predicate: Ok only for a boolean answer.
pub fn eval_bool<'a>(op: &'a Op, env: &Env<'a>) -> Result<bool, Bail> {
    match answer_bool(op, env) {
        Answer::Value(b) => Ok(b),
        Answer::OverCost | Answer::Bail => Err(Bail),
    }
}

struct Eval<'e, 'a> {
    env: &'e Env<'a>,
    locals: &'e mut [V<'a>; SLOTS],
    /// Spent so far, by the interpreter's cost model: over the limit, the interpreter takes
    /// over (and reports the limit).
    cost: u64,
}

/// What reading `v` costs (see [`super::cost`]).
fn traversal(v: &V<'_>) -> u64 {
    match v {
        V::Str(s) => super::cost::string_cost(s.len()),
        V::List(l) => super::cost::container_cost(l.len()),
        V::Values(l) => super::cost::container_cost(l.len()),
        V::Map(m) => super::cost::container_cost(m.len()),
        V::Null | V::Bool(_) | V::Int(_) | V::UInt(_) | V::Double(_) => 0,
    }
}

/// What comparing `v` in depth costs (`==`, `!=`, `in`; see [`super::cost`]): strings by
/// their bytes, every element and entry at every level. Stops counting past the limit.
fn deep_traversal(v: &V<'_>) -> u64 {
    const LIMIT: u64 = super::cost::COST_LIMIT;
    fn items(items: &[Node], total: &mut u64) {
        for i in items {
            *total += 1;
            node(i, total);
            if *total > LIMIT {
                return;
            }
        }
    }
    fn entries(entries: &[(Key, Node)], total: &mut u64) {
        for (k, v) in entries {
            *total += 1 + super::cost::string_cost(k.len());
            node(v, total);
            if *total > LIMIT {
                return;
            }
        }
    }
    fn node(n: &Node, total: &mut u64) {
        match n {
            Node::List(l) => items(l, total),
            Node::Map(m) => entries(m, total),
            other => *total += traversal(&V::from(other)),
        }
    }
    let mut total = 0;
    match v {
        V::List(l) => items(l, &mut total),
        V::Map(m) => entries(m, &mut total),
        V::Values(vs) => {
            for v in vs.iter() {
                total += 1 + deep_traversal(v);
                if total > LIMIT {
                    break;
                }
            }
        }
        other => total = traversal(other),
    }
    total
}

fn len(v: &V<'_>) -> Option<usize> {
    match v {
        V::List(l) => Some(l.len()),
        V::Values(l) => Some(l.len()),
        V::Map(m) => Some(m.len()),
        _ => None,
    }
}

impl<'a> Eval<'_, 'a> {
    fn charge(&mut self, cost: u64) -> Result<(), Bail> {
        self.cost = self.cost.saturating_add(cost);
        if self.cost > super::cost::COST_LIMIT { Err(Bail) } else { Ok(()) }
    }

    /// Predicates answer here without a value in between (metrics are mostly predicates);
    /// `op` forwards them here.
    fn bool(&mut self, op: &'a Op) -> Result<bool, Bail> {
        match op {
            // Left to right with short circuit; an error on either side goes to the
            // interpreter, which implements CEL's commutative error absorption.
            Op::And(l, r) => Ok(self.bool(l)? && self.bool(r)?),
            Op::Or(l, r) => Ok(self.bool(l)? || self.bool(r)?),
            Op::Not(x) => Ok(!self.bool(x)?),
            Op::Has(operand, field) => match self.op(operand)? {
                V::Map(m) => Ok(field.find(m).is_some()),
                _ => Err(Bail),
            },
            Op::Cmp(cmp, l, r) => {
                let l = self.op(l)?;
                let r = self.op(r)?;
                // As the interpreter: equality compares in depth, ordering only scalars.
                self.charge(match cmp {
                    CmpOp::Eq | CmpOp::Ne => deep_traversal(&l) + deep_traversal(&r),
                    _ => traversal(&l) + traversal(&r),
                })?;
                Ok(match cmp {
                    CmpOp::Eq => equal(&l, &r)?,
                    CmpOp::Ne => !equal(&l, &r)?,
                    CmpOp::Lt => order(&l, &r)? == Ordering::Less,
                    CmpOp::Le => order(&l, &r)? != Ordering::Greater,
                    CmpOp::Gt => order(&l, &r)? == Ordering::Greater,
                    CmpOp::Ge => order(&l, &r)? != Ordering::Less,
                })
            }
            Op::All(q) => self.quantify(q, false),
            Op::Exists(q) => Ok(!self.quantify(q, true)?),
            _ => match self.op(op)? {
                V::Bool(b) => Ok(b),
                _ => Err(Bail),
            },
        }
    }

    fn str(&mut self, op: &'a Op) -> Result<&'a str, Bail> {
        match self.op(op)? {
            V::Str(s) => Ok(s),
            _ => Err(Bail),
        }
    }

    fn op(&mut self, op: &'a Op) -> Result<V<'a>, Bail> {
        Ok(match op {
            Op::Const(c) => V::from(c),
            Op::Object => V::from(self.env.object),
            Op::Namespace => self.env.namespace.map(V::from).unwrap_or(V::Null),
            Op::Tenant => self.env.tenant.map(V::Str).unwrap_or(V::Null),
            Op::Local(slot) => self.locals[*slot].clone(),
            Op::Select(operand, field) => match self.op(operand)? {
                V::Map(m) => V::from(field.find(m).ok_or(Bail)?),
                _ => return Err(Bail),
            },
            Op::Path(root, fields) => {
                let root = match &**root {
                    Op::Object => V::from(self.env.object),
                    other => self.op(other)?,
                };
                let V::Map(mut entries) = root else { return Err(Bail) };
                let (last, init) = fields.split_last().ok_or(Bail)?;
                for f in init {
                    match f.find(entries).ok_or(Bail)? {
                        Node::Map(e) => entries = e,
                        _ => return Err(Bail),
                    }
                }
                V::from(last.find(entries).ok_or(Bail)?)
            }
            Op::Has(..)
            | Op::Not(_)
            | Op::And(..)
            | Op::Or(..)
            | Op::Cmp(..)
            | Op::All(_)
            | Op::Exists(_) => V::Bool(self.bool(op)?),
            Op::Index(container, index) => {
                let c = self.op(container)?;
                let i = self.op(index)?;
                match (c, i) {
                    (V::List(l), V::Int(i)) => {
                        V::from(l.get(usize::try_from(i).map_err(|_| Bail)?).ok_or(Bail)?)
                    }
                    (V::Values(l), V::Int(i)) => {
                        l.get(usize::try_from(i).map_err(|_| Bail)?).cloned().ok_or(Bail)?
                    }
                    (V::Map(m), V::Str(k)) => V::from(map_get(m, k).ok_or(Bail)?),
                    _ => return Err(Bail),
                }
            }
            Op::Neg(x) => match self.op(x)? {
                V::Int(i) => V::Int(i.checked_neg().ok_or(Bail)?),
                V::Double(d) => V::Double(-d),
                _ => return Err(Bail),
            },
            Op::Cond(parts) => {
                let [c, t, f] = &**parts;
                if self.bool(c)? { self.op(t)? } else { self.op(f)? }
            }
            Op::NotStrictlyFalse(x) => V::Bool(!matches!(self.op(x)?, V::Bool(false))),
            Op::Arith(a, l, r) => {
                let l = self.op(l)?;
                let r = self.op(r)?;
                // As `@sm.add` (lists) and the traversal of other operators' operands.
                let cost = match (a, len(&l), len(&r)) {
                    (ArithOp::Add, Some(x), Some(y)) if x + y > super::cost::MAX_LIST_ITEMS => {
                        return Err(Bail);
                    }
                    (ArithOp::Add, Some(x), Some(y)) => super::cost::container_cost(x + y),
                    (ArithOp::Add, _, _) => 0,
                    _ => traversal(&l) + traversal(&r),
                };
                self.charge(cost)?;
                arith(*a, l, r)?
            }
            Op::In(item, container) => {
                let item = self.op(item)?;
                let container = self.op(container)?;
                self.charge(deep_traversal(&item) + deep_traversal(&container))?;
                V::Bool(contains(&item, container)?)
            }
            Op::InLiteral(key, container) => {
                let container = self.op(container)?;
                self.charge(super::cost::string_cost(key.key.len()) + deep_traversal(&container))?;
                V::Bool(match container {
                    V::Map(m) => key.find(m).is_some(),
                    other => contains(&V::Str(&key.key), other)?,
                })
            }
            Op::Size(x) => match self.op(x)? {
                v if self.charge(traversal(&v)).is_err() => return Err(Bail),
                V::Str(s) => V::Int(s.chars().count() as i64),
                V::List(l) => V::Int(l.len() as i64),
                V::Map(m) => V::Int(m.len() as i64),
                V::Values(l) => V::Int(l.len() as i64),
                _ => return Err(Bail),
            },
            Op::Str(f, target, arg) => {
                let s = self.str(target)?;
                let a = self.str(arg)?;
                self.charge(super::cost::string_cost(s.len()) + super::cost::string_cost(a.len()))?;
                V::Bool(match f {
                    StrFn::StartsWith => s.starts_with(a),
                    StrFn::EndsWith => s.ends_with(a),
                    StrFn::Contains => s.contains(a),
                })
            }
            Op::List(items) => {
                let mut out = Vec::with_capacity(items.len());
                for i in items {
                    let v = self.op(i)?;
                    self.charge(traversal(&v))?;
                    out.push(v);
                }
                V::Values(Rc::new(out))
            }
            Op::Append(slot, items) => {
                let mut out = match std::mem::take(&mut self.locals[*slot]) {
                    V::Values(rc) => Rc::try_unwrap(rc).unwrap_or_else(|rc| (*rc).clone()),
                    V::List(l) => l.iter().map(V::from).collect(),
                    _ => return Err(Bail),
                };
                for i in items {
                    let v = self.op(i)?;
                    self.charge(traversal(&v))?;
                    out.push(v);
                }
                V::Values(Rc::new(out))
            }
            Op::Lookup(args) => {
                let [api, kind, ns, name] = &**args;
                let (api, kind, ns, name) = (self.str(api)?, self.str(kind)?, self.str(ns)?, self.str(name)?);
                self.charge([api, kind, ns, name].iter().map(|s| super::cost::string_cost(s.len())).sum())?;
                // The interpreter copies the object it finds: charged in depth, as there.
                let found = self.env.lookup.lookup(api, kind, ns, name).map(V::from).unwrap_or(V::Null);
                self.charge(deep_traversal(&found))?;
                found
            }
            Op::Comprehension(c) => self.comprehension(c)?,
            Op::Unsupported => return Err(Bail),
        })
    }

    fn comprehension(&mut self, c: &'a Comprehension) -> Result<V<'a>, Bail> {
        let range = self.op(&c.range)?;
        self.charge(super::cost::range_cost(len(&range).unwrap_or(0), c.body))?;
        let init = self.op(&c.init)?;
        self.locals[c.accu_slot] = init;
        match range {
            V::List(items) => {
                for item in items.iter() {
                    if !self.iteration(c, V::from(item))? {
                        break;
                    }
                }
            }
            V::Values(items) => {
                for item in items.iter() {
                    if !self.iteration(c, item.clone())? {
                        break;
                    }
                }
            }
            V::Map(entries) => {
                for (k, _) in entries.iter() {
                    if !self.iteration(c, V::Str(k))? {
                        break;
                    }
                }
            }
            _ => return Err(Bail),
        }
        let result = self.op(&c.result)?;
        self.locals[c.accu_slot] = V::Null;
        self.locals[c.iter_slot] = V::Null;
        Ok(result)
    }

    /// Whether no element's predicate is `decides` (`all`: no false one; `exists`: no true
    /// one). A non-boolean or failing predicate bails, as in the comprehension it replaces.
    fn quantify(&mut self, q: &'a Quantifier, decides: bool) -> Result<bool, Bail> {
        let mut undecided = true;
        let range = self.op(&q.range)?;
        self.charge(super::cost::range_cost(len(&range).unwrap_or(0), q.body))?;
        match range {
            V::List(items) => {
                for item in items.iter() {
                    self.locals[q.iter_slot] = V::from(item);
                    if self.bool(&q.pred)? == decides {
                        undecided = false;
                        break;
                    }
                }
            }
            V::Values(items) => {
                for item in items.iter() {
                    self.locals[q.iter_slot] = item.clone();
                    if self.bool(&q.pred)? == decides {
                        undecided = false;
                        break;
                    }
                }
            }
            V::Map(entries) => {
                for (k, _) in entries.iter() {
                    self.locals[q.iter_slot] = V::Str(k);
                    if self.bool(&q.pred)? == decides {
                        undecided = false;
                        break;
                    }
                }
            }
            _ => return Err(Bail),
        }
        self.locals[q.iter_slot] = V::Null;
        Ok(undecided)
    }

    /// One step; false when the loop condition stops the loop.
    fn iteration(&mut self, c: &'a Comprehension, item: V<'a>) -> Result<bool, Bail> {
        self.locals[c.iter_slot] = item;
        if !self.bool(&c.cond)? {
            return Ok(false);
        }
        self.locals[c.accu_slot] = self.op(&c.step)?;
        Ok(true)
    }
}

/// CEL `in`: list membership by equality, map membership by key.
fn contains(item: &V<'_>, container: V<'_>) -> Result<bool, Bail> {
    Ok(match container {
        V::List(l) => {
            for el in l.iter() {
                if equal(item, &V::from(el))? {
                    return Ok(true);
                }
            }
            false
        }
        V::Values(l) => {
            for el in l.iter() {
                if equal(item, el)? {
                    return Ok(true);
                }
            }
            false
        }
        V::Map(m) => match item {
            V::Str(k) => map_get(m, k).is_some(),
            _ => return Err(Bail),
        },
        _ => return Err(Bail),
    })
}

/// CEL equality for the combinations handled exactly like the interpreter.
fn equal(l: &V<'_>, r: &V<'_>) -> Result<bool, Bail> {
    Ok(match (l, r) {
        (V::Null, V::Null) => true,
        (V::Bool(a), V::Bool(b)) => a == b,
        (V::Int(a), V::Int(b)) => a == b,
        (V::UInt(a), V::UInt(b)) => a == b,
        (V::Double(a), V::Double(b)) => a == b,
        (V::Str(a), V::Str(b)) => a == b,
        // Null against any non-null value, and values of different kinds (not numbers):
        // never equal.
        (V::Null, _) | (_, V::Null) => false,
        (V::Bool(_) | V::Str(_), V::Int(_) | V::UInt(_) | V::Double(_) | V::Bool(_) | V::Str(_))
        | (V::Int(_) | V::UInt(_) | V::Double(_), V::Bool(_) | V::Str(_)) => false,
        _ => return Err(Bail),
    })
}

/// CEL ordering for same-kind scalars.
fn order(l: &V<'_>, r: &V<'_>) -> Result<Ordering, Bail> {
    match (l, r) {
        (V::Int(a), V::Int(b)) => Ok(a.cmp(b)),
        (V::UInt(a), V::UInt(b)) => Ok(a.cmp(b)),
        (V::Double(a), V::Double(b)) => a.partial_cmp(b).ok_or(Bail),
        (V::Str(a), V::Str(b)) => Ok(a.cmp(b)),
        (V::Bool(a), V::Bool(b)) => Ok(a.cmp(b)),
        _ => Err(Bail),
    }
}

/// Integer arithmetic as CEL defines it: overflow and division by zero are errors (here:
/// the interpreter decides).
macro_rules! checked {
    ($op:expr, $a:expr, $b:expr) => {
        match $op {
            ArithOp::Add => $a.checked_add($b),
            ArithOp::Sub => $a.checked_sub($b),
            ArithOp::Mul => $a.checked_mul($b),
            ArithOp::Div => $a.checked_div($b),
            ArithOp::Rem => $a.checked_rem($b),
        }
        .ok_or(Bail)?
    };
}

fn arith<'a>(op: ArithOp, l: V<'a>, r: V<'a>) -> Result<V<'a>, Bail> {
    Ok(match (l, r) {
        (V::Int(a), V::Int(b)) => V::Int(checked!(op, a, b)),
        (V::UInt(a), V::UInt(b)) => V::UInt(checked!(op, a, b)),
        (V::Double(a), V::Double(b)) => V::Double(match op {
            ArithOp::Add => a + b,
            ArithOp::Sub => a - b,
            ArithOp::Mul => a * b,
            ArithOp::Div => a / b,
            ArithOp::Rem => return Err(Bail),
        }),
        // List concatenation: how `map` and `filter` accumulate.
        (l @ (V::List(_) | V::Values(_)), r @ (V::List(_) | V::Values(_))) if matches!(op, ArithOp::Add) => {
            let mut out = Vec::new();
            for side in [l, r] {
                match side {
                    V::List(items) => out.extend(items.iter().map(V::from)),
                    V::Values(items) => out.extend(items.iter().cloned()),
                    _ => unreachable!("matched above"),
                }
            }
            V::Values(Rc::new(out))
        }
        _ => return Err(Bail),
    })
}

#[cfg(test)]
mod tests {
    use super::super::expression::{Expression, Inputs, root_context, timestamp_val};
    use super::*;
    use cel::Value;
    use serde_json::json;

    /// Objects with the shapes and the oddities expressions meet: missing fields, nulls,
    /// mixed numeric types, empty containers, non-ASCII strings.
    fn objects() -> Vec<serde_json::Value> {
        vec![
            json!({"metadata": {"name": "a", "namespace": "kube-system", "labels": {"app": "x", "owner": null}},
                   "spec": {"replicas": 3, "ratio": 0.5, "big": 18446744073709551615u64, "neg": -4,
                            "containers": [{"name": "c1", "image": "nginx:latest", "ports": [80, 443],
                                            "resources": {"limits": {"cpu": "1", "memory": "1Gi"}},
                                            "securityContext": {"readOnlyRootFilesystem": true}},
                                           {"name": "c2", "image": "registry.example.com/app:1.2"}],
                            "tags": ["a", "b", "ü"], "empty": [], "emptyMap": {}, "flag": false, "s": "héllo"}}),
            json!({"metadata": {"name": "b", "namespace": "shop"},
                   "spec": {"replicas": 0, "ratio": 2, "containers": [], "tags": [], "s": "", "flag": true}}),
            json!({"metadata": {"name": "c", "namespace": "ml", "labels": {}}, "spec": null}),
            json!({"kind": "RoleBinding", "roleRef": {"name": "cluster-admin"},
                   "subjects": [{"name": "system:masters"}, {"name": "alice"}]}),
        ]
    }

    const EXPRESSIONS: &[&str] = &[
        "object.metadata.namespace in ['kube-system', 'kube-public']",
        "!(object.metadata.namespace in ['kube-system'])",
        "has(object.metadata.labels.owner)",
        "has(object.metadata.labels) && object.metadata.labels.app == 'x'",
        "object.metadata.labels.owner == null",
        "object.metadata.labels == null",
        "null == object.spec",
        "object.spec.replicas > 1",
        "object.spec.replicas >= 1.0",
        "object.spec.replicas == 3.0",
        "object.spec.replicas == 3u",
        "object.spec.ratio < 1",
        "object.spec.ratio * 2.0",
        "object.spec.replicas * 2 + 1 - object.spec.neg",
        "object.spec.replicas / 0",
        "object.spec.replicas % 2 == 1",
        "object.spec.big + 1u",
        "object.spec.big > 1u",
        "-object.spec.neg",
        "size(object.spec.containers)",
        "object.spec.containers.size() == 2",
        "size(object.spec.s) == 5",
        "size(object.spec.emptyMap) == 0",
        "object.spec.containers.all(c, !c.image.endsWith(':latest'))",
        "object.spec.containers.exists(c, c.image.startsWith('registry.example.com/'))",
        "object.spec.containers.exists_one(c, c.name.contains('1'))",
        "object.spec.containers.all(c, has(c.resources) && has(c.resources.limits) && 'cpu' in c.resources.limits)",
        "object.spec.containers.all(c, c.securityContext.readOnlyRootFilesystem)",
        "object.spec.containers.exists(c, c.securityContext.readOnlyRootFilesystem)",
        "object.spec.containers.map(c, c.name)",
        "size(object.spec.containers.filter(c, c.image.endsWith(':latest'))) > 0",
        "object.spec.containers.map(c, size(c.ports)).exists(n, n > 1)",
        "object.spec.containers.all(c, c.ports.all(p, p > 0))",
        "object.spec.containers[0].name == 'c1'",
        "object.spec.containers[5].name == 'c1'",
        "object.spec['replicas'] == 3",
        "object.spec.tags[2] == 'ü'",
        "'ü' in object.spec.tags",
        "'app' in object.metadata.labels && !('zz' in object.metadata.labels)",
        "'c1' in object.spec.containers",
        "'memory' in object.spec.containers[0].resources.limits",
        "'x' in object.metadata.labels.app",
        "3 in [1, 2, 3]",
        "object.spec.replicas in [1, 2, 3]",
        "object.spec.replicas in [1.0, 3.0]",
        "object.spec.flag ? object.spec.replicas : 0",
        "object.spec.flag || object.spec.missing",
        "object.spec.missing || true",
        "object.spec.missing && false",
        "false && object.spec.missing",
        "object.spec.flag == 'false'",
        "object.spec.s < 'z' && 'a' <= object.spec.s",
        "object.spec.flag < true",
        "object.spec.containers == []",
        "object.spec.emptyMap == {}",
        "tenant == 't1' && namespaceObject.name == 'ns'",
        "namespaceObject.labels.team == 'a'",
        "object.roleRef.name == 'cluster-admin' && object.subjects.all(s, s.name.startsWith('system:'))",
        "object.spec.emptyMap.all(k, k == 'x')",
        "object.metadata.labels.all(k, k != 'zz')",
        "object.spec.s.matches('^h')",
        "string(object.spec.replicas) == '3'",
        "int(object.spec.ratio) == 0",
        "[object.spec.replicas, 1][0] == 3",
        "object.spec.tags + ['z']",
        "lookup('v1', 'ConfigMap', 'ns', 'n') == null",
        "object.spec.replicas == object.spec.ratio",
        "object.spec.neg * 9223372036854775807 > 0",
        "'a' + 'b' == 'ab'",
    ];

    /// Whenever the fast evaluator answers, the interpreter gives the same answer.
    #[test]
    fn fast_evaluator_agrees_with_the_interpreter() {
        let root = root_context();
        let now = timestamp_val(chrono::Utc::now());
        let ns = Node::from(&json!({"name": "ns", "labels": {"team": "a"}, "annotations": {}}));
        let mut answered = 0;
        for src in EXPRESSIONS {
            let e = Expression::compile("passes", src).unwrap_or_else(|err| panic!("{src}: {err}"));
            let program = cel::Program::compile(src).unwrap();
            let op = compile(program.expression());
            for obj in objects() {
                let node = Node::from(&obj);
                let inputs = Inputs {
                    env: Env { object: &node, namespace: Some(&ns), tenant: Some("t1"), lookup: &NoObjects },
                    now: now.as_ref(),
                };
                let reference = e.interpret(&root, &inputs);
                let Some(op) = &op else { continue };
                if let Ok(v) = eval(op, &inputs.env) {
                    answered += 1;
                    let fast = v.to_cel().expect("comparable");
                    assert_eq!(Ok(fast), reference, "{src} on {obj}");
                }
                // The predicate entry answers exactly when the value is a boolean, the same one.
                match (eval_bool(op, &inputs.env), eval(op, &inputs.env)) {
                    (Ok(b), v) => assert_eq!(Ok(Value::Bool(b)), reference, "{src} on {obj}: {v:?}"),
                    (Err(Bail), Ok(V::Bool(_))) => panic!("{src} on {obj}: eval_bool bailed, eval did not"),
                    (Err(Bail), _) => {}
                }
            }
        }
        // The subset is broad: every pair above that the interpreter answers without an error
        // is answered fast, except mixed numeric types, container equality, `+` on strings,
        // conversions and errors absorbed by `||`/`&&` (29 pairs).
        assert!(answered >= 95, "only {answered} answered by the fast evaluator");
    }

    #[test]
    fn common_metric_expressions_are_answered_without_the_interpreter() {
        let obj = &objects()[0];
        let node = Node::from(obj);
        for src in [
            "!(object.metadata.namespace in ['kube-system', 'kube-public', 'kube-node-lease'])",
            "object.spec.containers.all(c, has(c.resources) && has(c.resources.limits) && 'cpu' in c.resources.limits)",
            "object.spec.containers.all(c, c.image.contains(':') && !c.image.endsWith(':latest'))",
            "size(object.spec.containers) > 0 && has(object.metadata.labels.owner)",
            "object.spec.containers.map(c, c.name).exists(n, n == 'c2')",
        ] {
            let program = cel::Program::compile(src).unwrap();
            let op = compile(program.expression()).expect("in the subset");
            let env = Env { object: &node, namespace: None, tenant: None, lookup: &NoObjects };
            assert!(eval(&op, &env).is_ok(), "{src} bailed");
        }
    }

    #[test]
    fn all_and_exists_run_without_their_accumulator() {
        let op =
            |src: &str| compile(cel::Program::compile(src).unwrap().expression()).expect("in the subset");
        assert!(matches!(op("object.spec.containers.all(c, has(c.name))"), Op::All(_)));
        assert!(matches!(op("object.spec.containers.exists(c, has(c.name))"), Op::Exists(_)));
        // Nested: the inner macro's accumulator is another slot; both are recognised.
        let Op::All(outer) = op("object.spec.containers.all(c, c.ports.exists(p, p > 0))") else {
            panic!("outer all")
        };
        assert!(matches!(outer.pred, Op::Exists(_)));
        // Other macros keep the general loop.
        assert!(matches!(op("object.spec.containers.exists_one(c, has(c.name))"), Op::Comprehension(_)));
        assert!(matches!(op("object.spec.containers.map(c, c.name)"), Op::Comprehension(_)));
    }
}
