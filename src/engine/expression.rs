//! CEL expressions: compiled once per spec generation, checked for undeclared references and
//! cost before they ever run, evaluated against objects converted once per object version.

use std::sync::{Arc, LazyLock};

use cel::common::ast::{Expr, IdedExpr};
use cel::common::types::{CelNull, CelString};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::{Context, Env, ExecutionError, Value};

use super::cost;
use super::fast;
use super::node::Node;

/// Variables every expression may use.
pub const VARIABLES: [&str; 4] = ["object", "namespaceObject", "tenant", "now"];

/// Most AST nodes an expression may have (bounds evaluation cost).
const MAX_NODES: usize = 1000;
/// Deepest nesting of brackets and conditionals in an expression's source, checked before
/// parsing: the parser recurses once per level, so this bounds its stack.
pub const MAX_NESTING: usize = 32;
/// Deepest AST an expression may have (long chains of `+` nest too): bounds the stack of
/// every recursive walk over it, the evaluators' included.
pub const MAX_DEPTH: usize = 64;
/// Longest expression, in bytes (the CRD's limit).
pub const MAX_LENGTH: usize = 4096;
/// The stack of a thread that compiles or evaluates expressions (the operator's workers,
/// `secmetrics evaluate`'s threads): the limits above keep every recursion far within it.
pub const EVALUATION_STACK: usize = 16 << 20;
/// Deepest nesting of comprehensions (`all`, `exists`, `map`, `filter`, ...). Each level
/// multiplies evaluation cost by the size of a list in an object, so two levels is the most
/// that stays bounded by object size.
pub(super) const MAX_COMPREHENSION_DEPTH: usize = 2;

/// A CEL expression that compiled and passed the static checks.
pub struct Expression {
    field: &'static str,
    source: String,
    /// The parsed expression with the cost model's charges, for the interpreter.
    instrumented: IdedExpr,
    /// The same expression for the fast evaluator, unless its root is outside its subset.
    fast: Option<fast::Op>,
    /// Depends on the object only through its namespace (see [`fast::reads_only_namespace`]).
    namespace_only: bool,
    lookups: Vec<super::objects::Kind>,
}

impl std::fmt::Debug for Expression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expression({}: {:?})", self.field, self.source)
    }
}

/// Why an evaluation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// The expression failed on this object (a missing field, a wrong type, ...).
    #[error("{0}")]
    Failed(String),
    /// The evaluation spent more than [`cost::COST_LIMIT`]: the metric is too expensive.
    #[error("{field}: {}", cost::EXCEEDED)]
    CostLimitExceeded { field: &'static str },
}

impl EvalError {
    /// The message, for an object's result.
    pub fn message(&self) -> String {
        match self {
            EvalError::Failed(m) => m.clone(),
            EvalError::CostLimitExceeded { field } => {
                format!("{field}: {} of {} on one object", cost::EXCEEDED, cost::COST_LIMIT)
            }
        }
    }
}

/// Why an expression was rejected, with its position (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}{}", position.map(|(l, c)| format!(" at {l}:{c}")).unwrap_or_default())]
pub struct CompileError {
    /// The spec field holding the expression, e.g. `where`.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
    /// Line and column, when known.
    pub position: Option<(usize, usize)>,
}

/// The standard library, plus what Kubernetes' own CEL environment offers that metrics need:
/// the strings extension (`replace`, `substring`, `split`, `indexOf`, `lowerAscii`, ...: e.g.
/// reading the quantity `500m`) and the Kubernetes list function `sum()` (e.g. CPU requests
/// over a pod's containers).
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = Env::stdlib();
    cel::extensions::strings(&mut env).expect("the strings extension is declared once");
    cost::declare(&mut env).expect("the cost functions are declared once");
    env.add_member_overload("sum", "list_sum", cel::common::types::LIST_TYPE, vec![], list_sum)
        .expect("sum is declared once");
    Arc::new(env)
});

/// `list.sum()` as in Kubernetes' CEL list library: the sum of a list of ints, uints or
/// doubles (all of one type), `0` for an empty list. Integer overflow is an error.
fn list_sum<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    use cel::common::types::{CelDouble, CelInt, CelUInt};
    let [list]: [CowVal<'b, 'v>; 1] =
        args.try_into().map_err(|a: Vec<_>| ExecutionError::invalid_argument_count(1, a.len()))?;
    let fail = |m: &str| ExecutionError::function_error("sum", m);
    let items = list.as_ref().as_iterable().ok_or_else(|| fail("sum() applies to a list"))?;
    let mut iter = items.iter();
    enum Acc {
        Empty,
        Int(i64),
        UInt(u64),
        Double(f64),
    }
    let mut acc = Acc::Empty;
    while let Some(item) = iter.next() {
        acc = match (
            acc,
            item.downcast_ref::<CelInt>(),
            item.downcast_ref::<CelUInt>(),
            item.downcast_ref::<CelDouble>(),
        ) {
            (Acc::Empty, Some(i), _, _) => Acc::Int(*i.inner()),
            (Acc::Empty, _, Some(u), _) => Acc::UInt(*u.inner()),
            (Acc::Empty, _, _, Some(d)) => Acc::Double(*d.inner()),
            (Acc::Int(a), Some(i), _, _) => {
                Acc::Int(a.checked_add(*i.inner()).ok_or_else(|| fail("integer overflow"))?)
            }
            (Acc::UInt(a), _, Some(u), _) => {
                Acc::UInt(a.checked_add(*u.inner()).ok_or_else(|| fail("unsigned integer overflow"))?)
            }
            (Acc::Double(a), _, _, Some(d)) => Acc::Double(a + d.inner()),
            _ => return Err(fail("sum() needs a list of numbers of one type (int, uint or double)")),
        };
    }
    Ok(match acc {
        Acc::Empty => CowVal::owned(CelInt::from(0i64)),
        Acc::Int(i) => CowVal::owned(CelInt::from(i)),
        Acc::UInt(u) => CowVal::owned(CelUInt::from(u)),
        Acc::Double(d) => CowVal::owned(CelDouble::from(d)),
    })
}

impl Expression {
    /// Compiles `source`, found in spec field `field`, and checks that it only refers to the
    /// declared variables and stays within the cost limits.
    pub fn compile(field: &'static str, source: &str) -> Result<Self, CompileError> {
        let fail = |message: String, position| CompileError { field, message, position };
        if source.len() > MAX_LENGTH {
            return Err(fail(
                format!("expression is too long ({} bytes, at most {MAX_LENGTH})", source.len()),
                None,
            ));
        }
        if let Some(offset) = too_deep(source) {
            return Err(fail(
                format!("expression nests brackets or conditionals deeper than {MAX_NESTING} levels"),
                Some(line_col(source, offset)),
            ));
        }
        // The parser recurses deeply per nesting level (over 100 KiB a level in a debug
        // build): it runs on a thread with a stack known to hold the deepest source the checks
        // above let through, whatever thread compiles. Nothing in it should panic; if anything
        // does, it is this expression's error and never the process's end.
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("cel-compile".into())
                .stack_size(EVALUATION_STACK)
                .spawn_scoped(s, || Self::compile_checked(field, source))
                .map_err(|e| fail(format!("cannot start the compiler thread: {e}"), None))?
                .join()
                .unwrap_or_else(|panic| {
                    Err(fail(format!("internal error while compiling: {}", panic_message(&*panic)), None))
                })
        })
    }

    fn compile_checked(field: &'static str, source: &str) -> Result<Self, CompileError> {
        let (expression, info) = ENV
            .parser()
            .max_recursion_depth(PARSER_RECURSION)
            .parse_with_source_info(source)
            .map_err(|errs| {
                let first = errs.errors.first();
                let message = first.map(|e| e.msg.clone()).unwrap_or_else(|| "syntax error".into());
                let message = if message.ends_with("reserved identifier: namespace") {
                    format!("{message} (`namespace` is a reserved word in CEL: the namespace variable is namespaceObject)")
                } else {
                    message
                };
                CompileError {
                    field,
                    message,
                    position: first.map(|e| (e.pos.0.max(1) as usize, e.pos.1.max(0) as usize + 1)),
                }
            })?;
        let mut check =
            Checker { field, source, scopes: Vec::new(), nodes: 0, lookups: Vec::new(), error: None };
        check.walk(&expression, &info, 0, 0);
        if let Some(e) = check.error {
            return Err(e);
        }
        let fast = fast::compile(&expression);
        let namespace_only = fast.as_ref().is_some_and(fast::reads_only_namespace);
        Ok(Expression {
            field,
            source: source.to_string(),
            instrumented: cost::instrument(&expression),
            fast,
            namespace_only,
            lookups: check.lookups,
        })
    }

    /// The kinds this expression reads with `lookup()`: watched like the observed kind.
    pub fn lookups(&self) -> &[super::objects::Kind] {
        &self.lookups
    }

    /// Evaluates with `cel`'s interpreter (the reference semantics), within the cost limit.
    pub fn interpret(&self, root: &Context<'_, '_>, inputs: &Inputs<'_>) -> Result<Value, EvalError> {
        let env = &inputs.env;
        let (result, spent) = cost::metered(|| {
            let object = env.object.to_val();
            let namespace = env.namespace.map(Node::to_val).unwrap_or_else(null_val);
            let tenant = env.tenant.map(string_val).unwrap_or_else(null_val);
            let vars = Variables {
                object: object.as_ref(),
                namespace: namespace.as_ref(),
                tenant: tenant.as_ref(),
                now: inputs.now,
            };
            let mut ctx = root.new_inner_scope();
            ctx.set_variable_resolver(&vars);
            Value::resolve(&self.instrumented, &ctx)
        });
        // Over the limit is over the limit, even where `||` or `&&` absorbed the error.
        if spent > cost::COST_LIMIT {
            return Err(EvalError::CostLimitExceeded { field: self.field });
        }
        result.map_err(|e: ExecutionError| EvalError::Failed(format!("{}: {e}", self.field)))
    }

    /// Whether the expression has one value per namespace (it reads the object only through
    /// `object.metadata.namespace`).
    pub fn namespace_only(&self) -> bool {
        self.namespace_only
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates to a bool; any other type is an error naming the type. The fast evaluator
    /// answers when it can; otherwise (errors included) the interpreter does.
    pub fn eval_bool(&self, root: &Context<'_, '_>, inputs: &Inputs<'_>) -> Result<bool, EvalError> {
        if let Some(op) = &self.fast {
            match fast::answer_bool(op, &inputs.env) {
                fast::Answer::Value(b) => return Ok(b),
                fast::Answer::OverCost => return Err(EvalError::CostLimitExceeded { field: self.field }),
                fast::Answer::Bail => {}
            }
        }
        match self.interpret(root, inputs)? {
            Value::Bool(b) => Ok(b),
            other => {
                Err(EvalError::Failed(format!("{} must be a bool, got {}", self.field, type_name(&other))))
            }
        }
    }

    /// Evaluates to a number (int, uint or double).
    pub fn eval_number(&self, root: &Context<'_, '_>, inputs: &Inputs<'_>) -> Result<f64, EvalError> {
        if let Some(op) = &self.fast {
            match fast::answer(op, &inputs.env) {
                fast::Answer::Value(fast::V::Int(i)) => return Ok(i as f64),
                fast::Answer::Value(fast::V::UInt(u)) => return Ok(u as f64),
                fast::Answer::Value(fast::V::Double(f)) if f.is_finite() => return Ok(f),
                fast::Answer::OverCost => return Err(EvalError::CostLimitExceeded { field: self.field }),
                _ => {}
            }
        }
        match self.interpret(root, inputs)? {
            Value::Int(i) => Ok(i as f64),
            Value::UInt(u) => Ok(u as f64),
            Value::Float(f) if f.is_finite() => Ok(f),
            Value::Float(f) => Err(EvalError::Failed(format!("{} is not a finite number: {f}", self.field))),
            other => {
                Err(EvalError::Failed(format!("{} must be a number, got {}", self.field, type_name(&other))))
            }
        }
    }
}

/// The parser's own recursion limit (it counts grammar rules, several per nesting level);
/// [`MAX_NESTING`] is the limit a user meets first.
const PARSER_RECURSION: u16 = 1000;

/// The text of a caught panic.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// The character offset where `source` first nests brackets and conditionals deeper than
/// [`MAX_NESTING`], skipping string literals.
fn too_deep(source: &str) -> Option<usize> {
    let chars: Vec<char> = source.chars().collect();
    // Per open bracket, the conditionals opened inside it (they close with the bracket).
    let mut open: Vec<usize> = vec![0];
    let mut depth = 0usize;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\'' | '"' => {
                let prefix: String = chars[..i]
                    .iter()
                    .rev()
                    .take_while(|c| c.is_alphanumeric() || **c == '_')
                    .collect::<String>()
                    .to_lowercase();
                let raw = matches!(prefix.as_str(), "r" | "rb" | "br");
                let triple = chars.get(i + 1) == Some(&c) && chars.get(i + 2) == Some(&c);
                i += if triple { 3 } else { 1 };
                while i < chars.len() {
                    if !raw && chars[i] == '\\' {
                        i += 2;
                        continue;
                    }
                    if chars[i] == c
                        && (!triple || (chars.get(i + 1) == Some(&c) && chars.get(i + 2) == Some(&c)))
                    {
                        i += if triple { 3 } else { 1 };
                        break;
                    }
                    i += 1;
                }
                continue;
            }
            '(' | '[' | '{' => {
                open.push(0);
                depth += 1;
            }
            ')' | ']' | '}' if open.len() > 1 => depth -= 1 + open.pop().unwrap_or(0),
            '?' => {
                if let Some(top) = open.last_mut() {
                    *top += 1;
                }
                depth += 1;
            }
            _ => {}
        }
        if depth > MAX_NESTING {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Everything an expression may read in one evaluation.
pub struct Inputs<'a> {
    /// `object`, `namespaceObject`, `tenant` and `lookup()`'s view of the cache.
    pub env: fast::Env<'a>,
    /// `now`, as the interpreter's timestamp.
    pub now: &'a dyn Val,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "bool",
        Value::Int(_) => "int",
        Value::UInt(_) => "uint",
        Value::Float(_) => "double",
        Value::String(_) => "string",
        Value::Bytes(_) => "bytes",
        Value::List(_) => "list",
        Value::Map(_) => "map",
        Value::Null => "null",
        _ => "another type",
    }
}

/// The root context all evaluations share: the standard library plus `lookup`.
pub fn root_context() -> Context<'static, 'static> {
    let mut ctx = Context::with_env(ENV.clone());
    ctx.add_function("lookup", super::lookup::lookup_function()).expect("lookup is not a builtin");
    ctx
}

/// Walks the AST for undeclared identifiers and comprehension nesting.
struct Checker<'a> {
    field: &'static str,
    source: &'a str,
    scopes: Vec<Vec<String>>,
    nodes: usize,
    lookups: Vec<super::objects::Kind>,
    error: Option<CompileError>,
}

impl Checker<'_> {
    fn fail(&mut self, info: &cel::common::ast::SourceInfo, id: u64, message: String) {
        if self.error.is_none() {
            let position = info.offset_for(id).map(|(start, _)| line_col(self.source, start as usize));
            self.error = Some(CompileError { field: self.field, message, position });
        }
    }

    /// `depth` counts comprehensions, `level` AST levels.
    fn walk(&mut self, e: &IdedExpr, info: &cel::common::ast::SourceInfo, depth: usize, level: usize) {
        if self.error.is_some() {
            return;
        }
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            self.fail(info, e.id, format!("expression is too large (more than {MAX_NODES} nodes)"));
            return;
        }
        if level > MAX_DEPTH {
            self.fail(info, e.id, format!("expression nests deeper than {MAX_DEPTH} levels"));
            return;
        }
        let level = level + 1;
        match &e.expr {
            Expr::Ident(name) => {
                let bound = self.scopes.iter().any(|s| s.iter().any(|v| v == name));
                if !bound && !VARIABLES.contains(&name.as_str()) && !is_type_name(name) {
                    self.fail(
                        info,
                        e.id,
                        format!("undeclared reference to '{name}' (variables: {})", VARIABLES.join(", ")),
                    );
                }
            }
            Expr::Select(s) => self.walk(&s.operand, info, depth, level),
            Expr::Call(c) => {
                if c.func_name == "lookup" && c.target.is_none() {
                    let literal = |i: usize| match c.args.get(i).map(|a| &a.expr) {
                        Some(Expr::Literal(cel::common::ast::LiteralValue::String(s))) => {
                            Some(s.inner().to_string())
                        }
                        _ => None,
                    };
                    match (c.args.len(), literal(0), literal(1)) {
                        (4, Some(api_version), Some(kind)) => {
                            let k = super::objects::Kind::new(api_version, kind);
                            if !self.lookups.contains(&k) {
                                self.lookups.push(k);
                            }
                        }
                        _ => self.fail(
                            info,
                            e.id,
                            "lookup takes (apiVersion, kind, namespace, name) with apiVersion and kind as string literals, so the operator knows which kind to watch".into(),
                        ),
                    }
                }
                if let Some(t) = &c.target {
                    self.walk(t, info, depth, level);
                }
                for a in &c.args {
                    self.walk(a, info, depth, level);
                }
            }
            Expr::List(l) => {
                for el in &l.elements {
                    self.walk(el, info, depth, level);
                }
            }
            Expr::Map(m) => {
                for entry in &m.entries {
                    if let cel::common::ast::EntryExpr::MapEntry(me) = &entry.expr {
                        self.walk(&me.key, info, depth, level);
                        self.walk(&me.value, info, depth, level);
                    }
                }
            }
            Expr::Comprehension(c) => {
                if depth + 1 > MAX_COMPREHENSION_DEPTH {
                    self.fail(
                        info,
                        e.id,
                        format!(
                            "comprehensions nested deeper than {MAX_COMPREHENSION_DEPTH} levels are not allowed (evaluation cost)"
                        ),
                    );
                    return;
                }
                self.walk(&c.iter_range, info, depth, level);
                let mut vars = vec![c.iter_var.clone(), c.accu_var.clone()];
                vars.extend(c.iter_var2.clone());
                self.scopes.push(vars);
                self.walk(&c.accu_init, info, depth + 1, level);
                self.walk(&c.loop_cond, info, depth + 1, level);
                self.walk(&c.loop_step, info, depth + 1, level);
                self.walk(&c.result, info, depth + 1, level);
                self.scopes.pop();
            }
            Expr::Literal(_) | Expr::Struct(_) | Expr::Unspecified => {}
        }
    }
}

fn is_type_name(name: &str) -> bool {
    matches!(
        name,
        "int" | "uint" | "double" | "bool" | "string" | "bytes" | "list" | "map" | "null_type" | "type"
    )
}

fn line_col(source: &str, char_offset: usize) -> (usize, usize) {
    let mut line = 1;
    let mut col = 1;
    for ch in source.chars().take(char_offset) {
        if ch == '\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    (line, col)
}

/// The variables of one interpreter evaluation.
struct Variables<'a> {
    pub object: &'a dyn Val,
    pub namespace: &'a dyn Val,
    pub tenant: &'a dyn Val,
    pub now: &'a dyn Val,
}

impl VariableResolver for Variables<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        match variable {
            "object" => Some(CowVal::Borrowed(self.object)),
            "namespaceObject" => Some(CowVal::Borrowed(self.namespace)),
            "tenant" => Some(CowVal::Borrowed(self.tenant)),
            "now" => Some(CowVal::Borrowed(self.now)),
            _ => None,
        }
    }
}

/// A CEL string value.
pub fn string_val(s: &str) -> Box<dyn Val> {
    Box::new(CelString::from(s.to_string()))
}

/// A CEL timestamp value.
pub fn timestamp_val(t: chrono::DateTime<chrono::Utc>) -> Box<dyn Val> {
    Box::new(cel::common::types::CelTimestamp::from(t.fixed_offset()))
}

/// CEL null.
pub fn null_val() -> Box<dyn Val> {
    Box::new(CelNull)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Compiles and interprets `src` on an evaluation thread (as the operator does).
    fn eval(src: &str, object: serde_json::Value) -> Result<Value, EvalError> {
        let src = src.to_string();
        on_stack(EVALUATION_STACK, move || {
            let e = Expression::compile("passes", &src).unwrap();
            let (o, now) = (Node::from(&object), timestamp_val(chrono::Utc::now()));
            let inputs = Inputs {
                env: fast::Env { object: &o, namespace: None, tenant: Some("t1"), lookup: &fast::NoObjects },
                now: now.as_ref(),
            };
            e.interpret(&root_context(), &inputs)
        })
    }

    #[test]
    fn evaluates_fields_has_and_comprehensions() {
        let pod = json!({"spec": {"containers": [{"name": "a", "image": "x:1"}, {"name": "b", "image": "y:latest"}]}});
        assert_eq!(
            eval("object.spec.containers.all(c, !c.image.endsWith(':latest'))", pod.clone()),
            Ok(false.into())
        );
        assert_eq!(eval("has(object.spec.securityContext)", pod.clone()), Ok(false.into()));
        assert_eq!(eval("size(object.spec.containers) == 2 && tenant == 't1'", pod.clone()), Ok(true.into()));
        assert!(eval("object.spec.securityContext.runAsNonRoot", pod).is_err(), "missing field is an error");
    }

    #[test]
    fn undeclared_reference_is_located() {
        let err = Expression::compile("where", "objetc.spec").unwrap_err();
        assert_eq!(
            err.to_string(),
            "where: undeclared reference to 'objetc' (variables: object, namespaceObject, tenant, now) at 1:1"
        );
        let err = Expression::compile("passes", "object.a &&\n  foo == 1").unwrap_err();
        assert_eq!(err.position, Some((2, 3)));
        // Comprehension variables are declared within their comprehension only.
        assert!(Expression::compile("passes", "object.items.all(x, x > 1)").is_ok());
        assert!(Expression::compile("passes", "object.items.all(x, x > 1) && x > 1").is_err());
    }

    #[test]
    fn lookup_kinds_are_collected_and_must_be_literals() {
        let e = Expression::compile("passes", "lookup('v1', 'ConfigMap', 'ns', 'n') == null").unwrap();
        assert_eq!(e.lookups(), &[super::super::objects::Kind::new("v1", "ConfigMap")]);
        let err = Expression::compile("passes", "lookup(object.apiVersion, 'ConfigMap', 'ns', 'n') == null")
            .unwrap_err();
        assert!(err.message.contains("string literals"), "{err}");
    }

    #[test]
    fn the_reserved_word_namespace_gets_a_hint() {
        let err = Expression::compile("where", "namespace.labels.team == 'a'").unwrap_err();
        assert!(err.message.contains("the namespace variable is namespaceObject"), "{err}");
        assert!(Expression::compile("where", "namespaceObject.labels.team == 'a'").is_ok());
    }

    #[test]
    fn strings_extension_and_list_sum_read_quantities() {
        let pod = json!({"spec": {"containers": [
            {"resources": {"requests": {"cpu": "250m"}}},
            {"resources": {"requests": {"cpu": "1.5"}}},
            {"resources": {}}]}});
        let cores = "object.spec.containers.map(c, has(c.resources.requests) && 'cpu' in c.resources.requests \
            ? (c.resources.requests.cpu.endsWith('m') \
               ? double(c.resources.requests.cpu.replace('m', '')) / 1000.0 \
               : double(c.resources.requests.cpu)) \
            : 0.0).sum()";
        assert_eq!(eval(cores, pod.clone()), Ok(Value::Float(1.75)));
        assert_eq!(
            eval("'500m'.substring(0, 3) == '500' && 'a,b'.split(',').size() == 2", json!({})),
            Ok(true.into())
        );
        assert_eq!(eval("[1, 2, 3].sum()", json!({})), Ok(Value::Int(6)));
        assert_eq!(eval("[2u, 3u].sum()", json!({})), Ok(Value::UInt(5)));
        assert_eq!(eval("[].sum()", json!({})), Ok(Value::Int(0)));
        assert!(eval("[1, 2.0].sum()", json!({})).is_err(), "mixed types");
        assert!(eval("['a'].sum()", json!({})).is_err(), "not numbers");
        assert!(eval("[9223372036854775807, 1].sum()", json!({})).is_err(), "overflow");
        // On the cached object's own lists, too.
        assert_eq!(eval("object.spec.n.sum()", json!({"spec": {"n": [1, 2]}})), Ok(Value::Int(3)));
    }

    #[test]
    fn syntax_errors_are_located() {
        let err = Expression::compile("passes", "object.spec ==").unwrap_err();
        assert_eq!(err.field, "passes");
        assert!(err.position.is_some(), "{err}");
    }

    #[test]
    fn cost_limits_reject_pathological_expressions() {
        let nested = "object.a.all(x, object.a.all(y, object.a.all(z, x == y && y == z)))";
        let err = Expression::compile("passes", nested).unwrap_err();
        assert!(err.message.contains("nested deeper than 2"), "{err}");
        let huge = vec!["object.a == 1"; 600].join(" || ");
        assert!(Expression::compile("passes", &huge).is_err());
    }

    /// Evaluates on a thread with the given stack, as the operator's workers and the CLI do.
    fn on_stack<T: Send + 'static>(stack: usize, f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new().stack_size(stack).spawn(f).unwrap().join().unwrap()
    }

    #[test]
    fn nesting_is_refused_before_parsing_with_its_position() {
        for (open, close) in [("[", "]"), ("(", ")"), ("{1:", "}")] {
            let deep = format!("{}1{}", open.repeat(1000), close.repeat(1000));
            // A small stack: the check runs before any recursion.
            let err = on_stack(256 << 10, move || Expression::compile("passes", &deep).unwrap_err());
            assert!(err.message.contains("deeper than 32"), "{err}");
            assert_eq!(err.position.map(|p| p.0), Some(1));
        }
        let ternaries = "object.a ? 1 : ".repeat(40) + "2";
        assert!(Expression::compile("value", &ternaries).unwrap_err().message.contains("deeper than 32"));
        // Brackets inside string literals are text.
        let quoted = format!(
            r#"object.a == '{}' && object.b == "{}" && object.c == r'\(' && object.d == '''{}'''"#,
            "[".repeat(100),
            "(".repeat(100),
            "{".repeat(100)
        );
        Expression::compile("passes", &quoted).unwrap();
        // Up to the limits, the deepest shapes compile (on the compiler's own thread, from a
        // small one) and evaluate on the evaluation threads' stack (measured: under 4 MiB in
        // a debug build).
        let deepest = [
            format!("{}object.a{} == 1", "(".repeat(32), ")".repeat(32)),
            format!("{}[object.a]{}.size() > 0", "[object.a, ".repeat(31), "]".repeat(31)),
            format!("object.a{} > 0", " + object.a".repeat(62)),
            format!("object{}.size() > 0", ".a".repeat(60)),
        ];
        for src in deepest {
            let e = on_stack(256 << 10, move || Expression::compile("passes", &src));
            let e = e.unwrap_or_else(|err| panic!("{err}"));
            on_stack(EVALUATION_STACK, move || {
                let (o, now) = (Node::from(&json!({"a": 1})), timestamp_val(chrono::Utc::now()));
                let inputs = Inputs {
                    env: fast::Env { object: &o, namespace: None, tenant: None, lookup: &fast::NoObjects },
                    now: now.as_ref(),
                };
                let _ = e.interpret(&root_context(), &inputs);
            });
        }
    }

    #[test]
    fn deep_asts_are_refused() {
        let chain = vec!["object.a"; 200].join(" + ");
        let err = Expression::compile("value", &chain).unwrap_err();
        assert!(err.message.contains("deeper than 64"), "{err}");
        let too_long = format!("object.a == '{}'", "x".repeat(5000));
        assert!(Expression::compile("passes", &too_long).unwrap_err().message.contains("too long"));
    }

    #[test]
    fn string_growth_is_refused_before_it_allocates() {
        let started = std::time::Instant::now();
        let bomb = format!("'aaaaaaaaaa'{}.size() > 0", ".replace('', 'aaaaaaaaaa')".repeat(9));
        let err = eval(&bomb, json!({})).unwrap_err();
        assert!(err.message().contains("more than 2097152") || err.message().contains("cost limit"), "{err}");
        // Doubling by chained comprehensions, and by join, format and split.
        // 10 levels of doubling (20 of nesting) from a 64 KiB string: 64 MiB, refused at 2 MiB.
        let mut doubling = "object.s".to_string();
        for _ in 0..10 {
            doubling = format!("[{doubling}].map(s, s + s)[0]");
        }
        let err = eval(&format!("{doubling}.size() > 0"), json!({"s": "z".repeat(64 << 10)})).unwrap_err();
        assert!(err.message().contains("more than 2097152") || err.message().contains("cost limit"), "{err}");
        let big = "x".repeat(1 << 20);
        let joined = "[object.s, object.s, object.s, object.s].join(object.s).size() > 0";
        assert!(eval(joined, json!({"s": big.clone()})).is_err());
        let formatted = "'%s%s%s%s'.format([object.s, object.s, object.s, object.s]).size() > 0";
        assert!(eval(formatted, json!({"s": big})).is_err());
        let split = "object.s.split('').size() > 0";
        assert!(eval(split, json!({"s": "y".repeat(200_000)})).is_err());
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
        // Within the limits the functions answer as the strings extension does.
        assert_eq!(eval("'a.b.c'.replace('.', '/') == 'a/b/c'", json!({})), Ok(Value::Bool(true)));
        assert_eq!(eval("'a.b.c'.replace('.', '/', 1) == 'a/b.c'", json!({})), Ok(Value::Bool(true)));
        assert_eq!(eval("'ab'.replace('', '-') == '-a-b-'", json!({})), Ok(Value::Bool(true)));
        assert_eq!(
            eval("['a', 'b'].join('-') == 'a-b' && ['a'].join() == 'a'", json!({})),
            Ok(Value::Bool(true))
        );
        assert!(eval("['a', 1].join() == ''", json!({})).is_err());
        assert_eq!(eval("'%s-%d'.format(['a', 1]) == 'a-1'", json!({})), Ok(Value::Bool(true)));
        assert_eq!(eval("'a' + 'b' == 'ab' && [1] + [2] == [1, 2]", json!({})), Ok(Value::Bool(true)));
    }

    #[test]
    fn iterations_are_charged_within_one_object() {
        let items: Vec<i64> = (0..3000).collect();
        let object = json!({"items": items});
        let started = std::time::Instant::now();
        let nested = "object.items.all(x, object.items.all(y, x != y || true))";
        let (o, now) = (Node::from(&object), timestamp_val(chrono::Utc::now()));
        let inputs = Inputs {
            env: fast::Env { object: &o, namespace: None, tenant: None, lookup: &fast::NoObjects },
            now: now.as_ref(),
        };
        let e = Expression::compile("passes", nested).unwrap();
        assert_eq!(
            e.eval_bool(&root_context(), &inputs),
            Err(EvalError::CostLimitExceeded { field: "passes" })
        );
        // The fast evaluator stops there on its own; the interpreter, charging the same
        // model, agrees.
        assert!(matches!(fast::answer_bool(e.fast.as_ref().unwrap(), &inputs.env), fast::Answer::OverCost));
        assert_eq!(
            e.interpret(&root_context(), &inputs),
            Err(EvalError::CostLimitExceeded { field: "passes" })
        );
        // Errors absorbed by `||` do not hide the overrun.
        let absorbed = Expression::compile("passes", &format!("{nested} || true")).unwrap();
        assert_eq!(
            absorbed.eval_bool(&root_context(), &inputs),
            Err(EvalError::CostLimitExceeded { field: "passes" })
        );
        // One level over the same list is cheap, `map` included (appended in place).
        let single = Expression::compile("passes", "object.items.map(x, x * 2).size() == 3000").unwrap();
        assert_eq!(single.eval_bool(&root_context(), &inputs), Ok(true));
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
    }

    #[test]
    fn regexes_compile_once_and_within_a_size_limit() {
        assert_eq!(
            eval("'abc'.matches('^a.c$') && matches('x1', '[0-9]')", json!({})),
            Ok(Value::Bool(true))
        );
        let err = eval("'a'.matches('(')", json!({})).unwrap_err();
        assert!(err.message().contains("not a valid regex"), "{err}");
        // A million states: refused by its weight before it is compiled.
        let err = eval("'a'.matches('(a{1000}){1000}')", json!({})).unwrap_err();
        assert!(matches!(err, EvalError::CostLimitExceeded { .. }), "{err}");
        // Light but over the compiled-size limit: refused by the compiler.
        let err = eval("'a'.matches('\\\\w{500}')", json!({})).unwrap_err();
        assert!(err.message().contains("not a valid regex"), "{err}");
    }

    #[test]
    fn comprehensions_over_maps_iterate_in_key_order() {
        // The interpreter's maps are hash maps: without a fixed order, what `map` builds from
        // one would change from one process to the next (found by tests/fuzz_cel.rs).
        let labels = json!({"metadata": {"labels": {"d": "1", "a": "2", "c": "3", "b": "4"}}});
        for _ in 0..5 {
            assert_eq!(
                eval("object.metadata.labels.map(k, k) == ['a', 'b', 'c', 'd']", labels.clone()),
                Ok(Value::Bool(true))
            );
            assert_eq!(eval("{'z': 1, 'y': 2}.filter(k, true)[0] == 'y'", json!({})), Ok(Value::Bool(true)));
        }
    }

    /// Operations whose work grows faster than their operands' sizes are charged for that
    /// work (found by a hostile review: each of these took 10 s to minutes in a release build
    /// while charged a fraction of the limit).
    #[test]
    fn superlinear_work_is_charged_for_what_it_does() {
        let started = std::time::Instant::now();
        let over = |src: &str, object: serde_json::Value| {
            let err = eval(src, object).unwrap_err();
            assert!(matches!(err, EvalError::CostLimitExceeded { .. }), "{src}: {err}");
        };
        // indexOf / lastIndexOf compare every position with the needle.
        let haystack = json!({"s": "a".repeat(200_000), "t": format!("{}b", "a".repeat(20_000))});
        over("object.s.indexOf(object.t) == -1", haystack.clone());
        over("object.s.lastIndexOf(object.t) == -1", haystack);
        assert_eq!(
            eval("'abcabc'.indexOf('c', 3) == 5 && 'abcabc'.lastIndexOf('a') == 3", json!({})),
            Ok(Value::Bool(true))
        );
        assert!(eval("'abc'.indexOf('a', 7) == 0", json!({})).is_err(), "offset out of range");
        // A regular expression is charged by its weight (repetitions expanded) on every call,
        // and its matching by text x weight.
        over("object.s.matches('[ab]*a[ab]{8000}c')", json!({"s": "ab".repeat(80_000)}));
        let items: Vec<i64> = (0..200).collect();
        over("object.items.all(i, !'a'.matches('[a-z]{10000}' + string(i)))", json!({"items": items}));
        assert_eq!(
            eval("'registry.example.com/app'.matches('^[a-z0-9.-]+/[a-z]+$')", json!({})),
            Ok(Value::Bool(true))
        );
        // Equality and membership compare in depth.
        let env: Vec<serde_json::Value> =
            (0..5000).map(|i| json!({"name": format!("E{i}"), "value": "v"})).collect();
        let twins = json!({"items": items, "a": {"env": env.clone()}, "b": {"env": env}});
        over("object.items.all(i, object.a == object.b)", twins.clone());
        over("object.items.all(i, object.a in [object.b])", twins);
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
        assert_eq!(super::cost::regex_weight("[ab]{8000}"), 8001);
    }
}
