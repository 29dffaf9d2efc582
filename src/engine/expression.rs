//! CEL expressions: compiled once per spec generation, checked for undeclared references and
//! cost before they ever run, evaluated against objects converted once per object version.

use std::sync::{Arc, LazyLock};

use cel::common::ast::{Expr, IdedExpr};
use cel::common::types::{CelNull, CelString};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::{Context, Env, ExecutionError, Program, Value};

use super::fast;
use super::node::Node;

/// Variables every expression may use.
pub const VARIABLES: [&str; 4] = ["object", "namespaceObject", "tenant", "now"];

/// Most AST nodes an expression may have (bounds evaluation cost).
const MAX_NODES: usize = 1000;
/// Deepest nesting of comprehensions (`all`, `exists`, `map`, `filter`, ...). Each level
/// multiplies evaluation cost by the size of a list in an object, so two levels is the most
/// that stays bounded by object size.
pub(super) const MAX_COMPREHENSION_DEPTH: usize = 2;

/// A CEL expression that compiled and passed the static checks.
pub struct Expression {
    field: &'static str,
    source: String,
    program: Program,
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
        let program = ENV.compile(source).map_err(|errs| {
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
        check.walk(program.expression(), program.source_info(), 0);
        if let Some(e) = check.error {
            return Err(e);
        }
        let fast = fast::compile(program.expression());
        let namespace_only = fast.as_ref().is_some_and(fast::reads_only_namespace);
        Ok(Expression {
            field,
            source: source.to_string(),
            program,
            fast,
            namespace_only,
            lookups: check.lookups,
        })
    }

    /// The kinds this expression reads with `lookup()`: watched like the observed kind.
    pub fn lookups(&self) -> &[super::objects::Kind] {
        &self.lookups
    }

    /// Evaluates with `cel`'s interpreter (the reference semantics).
    pub fn interpret(&self, root: &Context<'_, '_>, inputs: &Inputs<'_>) -> Result<Value, ExecutionError> {
        let env = &inputs.env;
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
        self.program.execute(&ctx)
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
    pub fn eval_bool(&self, root: &Context<'_, '_>, inputs: &Inputs<'_>) -> Result<bool, String> {
        if let Some(op) = &self.fast
            && let Ok(b) = fast::eval_bool(op, &inputs.env)
        {
            return Ok(b);
        }
        match self.interpret(root, inputs) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!("{} must be a bool, got {}", self.field, type_name(&other))),
            Err(e) => Err(format!("{}: {e}", self.field)),
        }
    }

    /// Evaluates to a number (int, uint or double).
    pub fn eval_number(&self, root: &Context<'_, '_>, inputs: &Inputs<'_>) -> Result<f64, String> {
        if let Some(op) = &self.fast {
            match fast::eval(op, &inputs.env) {
                Ok(fast::V::Int(i)) => return Ok(i as f64),
                Ok(fast::V::UInt(u)) => return Ok(u as f64),
                Ok(fast::V::Double(f)) if f.is_finite() => return Ok(f),
                _ => {}
            }
        }
        match self.interpret(root, inputs) {
            Ok(Value::Int(i)) => Ok(i as f64),
            Ok(Value::UInt(u)) => Ok(u as f64),
            Ok(Value::Float(f)) if f.is_finite() => Ok(f),
            Ok(Value::Float(f)) => Err(format!("{} is not a finite number: {f}", self.field)),
            Ok(other) => Err(format!("{} must be a number, got {}", self.field, type_name(&other))),
            Err(e) => Err(format!("{}: {e}", self.field)),
        }
    }
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

    fn walk(&mut self, e: &IdedExpr, info: &cel::common::ast::SourceInfo, depth: usize) {
        if self.error.is_some() {
            return;
        }
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            self.fail(info, e.id, format!("expression is too large (more than {MAX_NODES} nodes)"));
            return;
        }
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
            Expr::Select(s) => self.walk(&s.operand, info, depth),
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
                    self.walk(t, info, depth);
                }
                for a in &c.args {
                    self.walk(a, info, depth);
                }
            }
            Expr::List(l) => {
                for el in &l.elements {
                    self.walk(el, info, depth);
                }
            }
            Expr::Map(m) => {
                for entry in &m.entries {
                    if let cel::common::ast::EntryExpr::MapEntry(me) = &entry.expr {
                        self.walk(&me.key, info, depth);
                        self.walk(&me.value, info, depth);
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
                self.walk(&c.iter_range, info, depth);
                let mut vars = vec![c.iter_var.clone(), c.accu_var.clone()];
                vars.extend(c.iter_var2.clone());
                self.scopes.push(vars);
                self.walk(&c.accu_init, info, depth + 1);
                self.walk(&c.loop_cond, info, depth + 1);
                self.walk(&c.loop_step, info, depth + 1);
                self.walk(&c.result, info, depth + 1);
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

    fn eval(src: &str, object: serde_json::Value) -> Result<Value, ExecutionError> {
        let e = Expression::compile("passes", src).unwrap();
        let (o, now) = (Node::from(&object), timestamp_val(chrono::Utc::now()));
        let inputs = Inputs {
            env: fast::Env { object: &o, namespace: None, tenant: Some("t1"), lookup: &fast::NoObjects },
            now: now.as_ref(),
        };
        e.interpret(&root_context(), &inputs)
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
}
