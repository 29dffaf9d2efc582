//! Confines a tenant's PromQL to its own namespace, the way prom-label-proxy does.
//!
//! [`enforce_label`] parses the query, sets `<label>="<value>"` on every vector and matrix
//! selector (subqueries, function arguments, aggregation parameters and both sides of every
//! binary operation included) and prints the query back. A matcher the tenant wrote on that
//! label is replaced, whatever it said (prom-label-proxy's default; its `-error-on-replace`
//! mode refuses instead): `x{namespace=~".+"}` becomes `x{namespace="team-a"}`.
//!
//! Whatever cannot be confined with certainty is refused, never sent as written: input longer
//! or deeper than the bounds below (checked before parsing, so no input can exhaust the stack),
//! PromQL the parser does not accept, selectors with `or` inside the braces, and `info()`
//! (it joins `target_info` series that no selector in the query names). The printed query is
//! parsed again and every selector checked, so a printing mistake cannot widen the query.

use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{self, Expr, VectorSelector};

/// Longest query accepted (the CRD's maximum).
pub const MAX_QUERY_BYTES: usize = 8192;
/// Deepest nesting of brackets (`(`, `[`, `{`) accepted.
pub const MAX_NESTING: usize = 32;
/// Most operators (and operator keywords, and ranges/subqueries `[...]`) accepted: with
/// [`MAX_NESTING`] this bounds the syntax tree's depth, hence the recursion of parsing,
/// rewriting and printing.
pub const MAX_OPERATORS: usize = 128;

/// Why a query was refused (the message a metric's condition carries).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

fn refused(message: impl Into<String>) -> Refused {
    Refused(message.into())
}

/// Whether `name` is a label name Prometheus accepts unquoted (`[a-zA-Z_][a-zA-Z0-9_]*`).
pub fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `query` with `label="value"` enforced on every selector, printed back as PromQL.
pub fn enforce_label(query: &str, label: &str, value: &str) -> Result<String, Refused> {
    if !is_label_name(label) || label == "__name__" {
        return Err(refused(format!("{label:?} cannot be the enforced label")));
    }
    check_bounds(query)?;
    let mut expr = parser::parse(query).map_err(|e| refused(format!("the query does not parse: {e}")))?;
    rewrite(&mut expr, label, value)?;
    let printed = expr.to_string();
    // The query Prometheus will run is the printed one: parse it again and check it.
    check_bounds(&printed)?;
    let reparsed = parser::parse(&printed)
        .map_err(|e| refused(format!("the rewritten query does not parse ({e}): {printed}")))?;
    check_enforced(&reparsed, label, value)?;
    if reparsed.to_string() != printed {
        return Err(refused(format!("the rewritten query does not print back the same: {printed}")));
    }
    Ok(printed)
}

/// Bounds on length, bracket nesting and operator count, on the raw text (string literals
/// skipped), before any parsing.
fn check_bounds(query: &str) -> Result<(), Refused> {
    if query.len() > MAX_QUERY_BYTES {
        return Err(refused(format!("the query is longer than {MAX_QUERY_BYTES} bytes")));
    }
    let bytes = query.as_bytes();
    let (mut depth, mut braces, mut operators, mut i) = (0usize, 0usize, 0usize, 0usize);
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'"' | b'\'' | b'`' => {
                // Skip the string; an unterminated one is the parser's to report.
                i += 1;
                while i < bytes.len() && bytes[i] != b {
                    if bytes[i] == b'\\' && b != b'`' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'#' => {
                // A comment runs to the end of the line.
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                // A subquery (`[range:step]`) nests without a bracket staying open.
                operators += usize::from(b == b'[');
                braces += usize::from(b == b'{');
                if depth > MAX_NESTING {
                    return Err(refused(format!("the query nests deeper than {MAX_NESTING} brackets")));
                }
            }
            b')' | b']' | b'}' => {
                depth = depth.saturating_sub(1);
                braces = braces.saturating_sub(usize::from(b == b'}'));
            }
            // Inside braces `=`, `!=`, `=~` are label matchers, not operators.
            b'+' | b'-' | b'*' | b'/' | b'%' | b'^' | b'=' | b'!' | b'<' | b'>' if braces == 0 => {
                operators += 1
            }
            b if b.is_ascii_alphabetic() || b == b'_' => {
                let start = i;
                while i + 1 < bytes.len() && (bytes[i + 1].is_ascii_alphanumeric() || bytes[i + 1] == b'_') {
                    i += 1;
                }
                let word = &query[start..=i];
                if ["and", "or", "unless", "atan2"].iter().any(|k| word.eq_ignore_ascii_case(k)) {
                    operators += 1;
                }
            }
            _ => {}
        }
        if operators > MAX_OPERATORS {
            return Err(refused(format!("the query has more than {MAX_OPERATORS} operators")));
        }
        i += 1;
    }
    Ok(())
}

/// Every child expression of `expr`.
fn children(expr: &mut Expr) -> Result<Vec<&mut Expr>, Refused> {
    Ok(match expr {
        Expr::Aggregate(a) => {
            let mut v = vec![&mut *a.expr];
            if let Some(p) = &mut a.param {
                v.push(&mut **p);
            }
            v
        }
        Expr::Unary(u) => vec![&mut *u.expr],
        Expr::Binary(b) => vec![&mut *b.lhs, &mut *b.rhs],
        Expr::Paren(p) => vec![&mut *p.expr],
        Expr::Subquery(s) => vec![&mut *s.expr],
        Expr::Call(c) => {
            if c.func.name == "info" {
                return Err(refused(
                    "info() is not allowed: it joins target_info series outside the query's selectors",
                ));
            }
            c.args.args.iter_mut().map(|a| &mut **a).collect()
        }
        Expr::NumberLiteral(_)
        | Expr::StringLiteral(_)
        | Expr::VectorSelector(_)
        | Expr::MatrixSelector(_) => Vec::new(),
        Expr::Extension(_) => return Err(refused("extension expressions are not allowed")),
    })
}

fn rewrite(expr: &mut Expr, label: &str, value: &str) -> Result<(), Refused> {
    match expr {
        Expr::VectorSelector(vs) => enforce_on(vs, label, value),
        Expr::MatrixSelector(ms) => enforce_on(&mut ms.vs, label, value),
        _ => children(expr)?.into_iter().try_for_each(|c| rewrite(c, label, value)),
    }
}

fn enforce_on(vs: &mut VectorSelector, label: &str, value: &str) -> Result<(), Refused> {
    if !vs.matchers.or_matchers.is_empty() {
        return Err(refused("`or` inside a selector's braces is not allowed"));
    }
    vs.matchers.matchers.retain(|m| m.name != label);
    vs.matchers.matchers.push(Matcher::new(MatchOp::Equal, label, value));
    Ok(())
}

/// Every selector of `expr` carries exactly one matcher on `label`: `label="value"`.
fn check_enforced(expr: &Expr, label: &str, value: &str) -> Result<(), Refused> {
    let mut expr = expr.clone();
    let mut count = 0usize;
    check_walk(&mut expr, label, value, &mut count)
}

fn check_walk(expr: &mut Expr, label: &str, value: &str, count: &mut usize) -> Result<(), Refused> {
    let vs = match expr {
        Expr::VectorSelector(vs) => vs,
        Expr::MatrixSelector(ms) => &mut ms.vs,
        _ => return children(expr)?.into_iter().try_for_each(|c| check_walk(c, label, value, count)),
    };
    *count += 1;
    let on_label: Vec<&Matcher> = vs.matchers.matchers.iter().filter(|m| m.name == label).collect();
    let ok = vs.matchers.or_matchers.is_empty()
        && matches!(on_label.as_slice(), [m] if m.op == MatchOp::Equal && m.value == value);
    if ok { Ok(()) } else { Err(refused(format!("a rewritten selector lost the {label} matcher: {vs}"))) }
}

/// The selectors of `query` (for tests): each one's matchers on `label`, as printed.
#[cfg(test)]
fn selectors(query: &str, label: &str) -> Vec<Vec<String>> {
    fn walk(expr: &mut Expr, label: &str, out: &mut Vec<Vec<String>>) {
        let vs = match expr {
            Expr::VectorSelector(vs) => vs,
            Expr::MatrixSelector(ms) => &mut ms.vs,
            _ => {
                for c in children(expr).unwrap() {
                    walk(c, label, out);
                }
                return;
            }
        };
        out.push(vs.matchers.matchers.iter().filter(|m| m.name == label).map(|m| m.to_string()).collect());
    }
    let mut expr = parser::parse(query).unwrap();
    let mut out = Vec::new();
    walk(&mut expr, label, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NS: &str = "team-a";

    fn enforce(q: &str) -> String {
        enforce_label(q, "namespace", NS).unwrap_or_else(|e| panic!("{q}: {e}"))
    }

    fn refuse(q: &str) -> String {
        match enforce_label(q, "namespace", NS) {
            Ok(out) => panic!("{q} was accepted as {out}"),
            Err(Refused(m)) => m,
        }
    }

    /// Every selector of `out` has exactly the tenant's matcher, and there are `n` of them.
    fn confined(out: &str, n: usize) {
        let s = selectors(out, "namespace");
        assert_eq!(s.len(), n, "{out}");
        for matchers in s {
            assert_eq!(matchers, [r#"namespace="team-a""#], "{out}");
        }
    }

    #[test]
    fn a_bare_selector_gets_the_namespace() {
        assert_eq!(enforce("up"), r#"up{namespace="team-a"}"#);
        assert_eq!(enforce(r#"{__name__=~".+"}"#), r#"{__name__=~".+",namespace="team-a"}"#);
        confined(&enforce(r#"{__name__=~".+"}"#), 1);
    }

    #[test]
    fn the_tenants_own_namespace_matchers_are_replaced() {
        for q in [
            r#"x{namespace="other"}"#,
            r#"x{namespace=~".+"}"#,
            r#"x{namespace=~"team-a|other"}"#,
            r#"x{namespace!="team-a"}"#,
            r#"x{namespace!~"team-a"}"#,
            r#"x{namespace="team-a",namespace=~"o.*"}"#,
            r#"x{"namespace"="other"}"#,
        ] {
            let out = enforce(q);
            assert_eq!(out, r#"x{namespace="team-a"}"#, "{q}");
        }
        // Other labels stay as written.
        assert_eq!(enforce(r#"x{code=~"4..",job!="a"}"#), r#"x{code=~"4..",job!="a",namespace="team-a"}"#);
    }

    #[test]
    fn every_selector_in_nested_expressions_is_confined() {
        for (q, n) in [
            ("sum(rate(x[5m]))", 1),
            ("sum by (namespace) (x)", 1),
            ("sum without (pod) (rate(x[5m])) / on (namespace) group_left count(y)", 2),
            ("x or y", 2),
            ("x unless on (job) y", 2),
            ("x and y or z", 3),
            ("topk(3, x) + bottomk(scalar(y), z)", 3),
            ("quantile(scalar(q), x)", 2),
            (r#"count_values("namespace", x)"#, 1),
            ("max_over_time(rate(x[5m])[1h:1m])", 1),
            ("max_over_time((x - y)[30m:] offset 1h)", 2),
            ("x offset 5m", 1),
            ("x offset -5m", 1),
            ("x @ 1700000000", 1),
            ("rate(x[5m] @ end() offset 1m)", 1),
            ("x @ start()", 1),
            ("-x", 1),
            ("histogram_quantile(0.9, sum by (le) (rate(h_bucket[5m])))", 1),
            ("absent(nothing)", 1),
            ("vector(1) + x > bool 3", 1),
            ("time() - x", 1),
            ("1 + 2", 0),
            (r#"label_replace(x, "namespace", "other", "", "")"#, 1),
            (r#"label_join(x, "dst", ",", "namespace", "pod")"#, 1),
            (r#"sort_by_label(x, "namespace")"#, 1),
        ] {
            confined(&enforce(q), n);
        }
    }

    #[test]
    fn string_literals_that_look_like_selectors_stay_strings() {
        let q = r#"label_replace(x, "dst", "\"} or y{namespace=\"other\"", "src", "(.*)")"#;
        let out = enforce(q);
        confined(&out, 1);
        assert!(out.contains(r#"\"} or y{namespace=\"other\""#), "{out}");
        let q = r#"label_replace(x, "dst", `{namespace="other"}`, "src", "(.*)")"#;
        confined(&enforce(q), 1);
        // A label value with quotes and backslashes is escaped, not able to close the matcher.
        let out = enforce(r#"x{job="a\"b\\"}"#);
        confined(&out, 1);
        assert!(out.contains(r#"job="a\"b\\""#), "{out}");
    }

    #[test]
    fn what_cannot_be_confined_is_refused() {
        assert!(refuse("sum(x").contains("does not parse"));
        assert!(refuse("").contains("does not parse"));
        assert!(refuse("x{").contains("does not parse"));
        assert!(refuse(r#"x{namespace="a" or job="b"}"#).contains("or"));
        assert!(refuse(r#"info(x, {k8s_cluster_name=~".+"})"#).contains("info()"));
        assert!(refuse(r#"x{job=~"("}"#).contains("does not parse"));
        // The enforced label must be a plain label name.
        assert!(enforce_label("x", "name space", NS).is_err());
        assert!(enforce_label("x", "__name__", NS).is_err());
    }

    #[test]
    fn huge_or_deep_queries_are_refused_before_parsing() {
        // None of these may overflow the (2 MiB) test thread's stack.
        let long = format!("x{}", " + x".repeat(3000));
        assert!(refuse(&long).contains("longer than"));
        let many = format!("x{}", "+x".repeat(200));
        assert!(refuse(&many).contains("operators"));
        let nested = format!("{}x{}", "(".repeat(4000), ")".repeat(4000));
        assert!(refuse(&nested).contains("deeper"));
        let calls = format!("{}x{}", "abs(".repeat(1500), ")".repeat(1500));
        assert!(refuse(&calls).contains("deeper"));
        let unary = format!("{}x", "-".repeat(4000));
        assert!(refuse(&unary).contains("operators"));
        let keywords = format!("x{}", " or x".repeat(200));
        assert!(refuse(&keywords).contains("operators"));
        // Chains that nest without brackets staying open or operators: refused or bounded.
        for chain in [
            format!("x{}", "[5m:]".repeat(1600)),
            format!("x{}", " offset 1m".repeat(800)),
            format!("x{}", " @ 1".repeat(2000)),
            format!("rate(x[5m]){}", "[5m:1m]".repeat(1000)),
        ] {
            assert!(enforce_label(&chain, "namespace", NS).is_err(), "{}...", &chain[..40]);
        }
        // Brackets inside strings do not count; at the bounds the query still works.
        let deep = format!("{}x{}", "(".repeat(MAX_NESTING - 1), ")".repeat(MAX_NESTING - 1));
        confined(&enforce(&deep), 1);
        let wide = format!("x{}", "+x".repeat(MAX_OPERATORS / 2));
        confined(&enforce(&wide), MAX_OPERATORS / 2 + 1);
        let strings = format!(r#"label_replace(x, "d", "{}", "s", "")"#, "(((".repeat(100));
        confined(&enforce(&strings), 1);
    }

    #[test]
    fn the_rewritten_query_parses_to_the_same_tree() {
        for q in ["sum(rate(x[5m])) by (code) > 0.5", "x % 2 ^ 3 == bool 1", "-(x) * -1"] {
            let out = enforce(q);
            assert_eq!(parser::parse(&out).unwrap().to_string(), out);
        }
    }

    /// Random expressions built from the grammar's pieces, with hostile matchers.
    fn arb_selector() -> impl Strategy<Value = String> {
        let matcher = prop_oneof![
            Just(String::new()),
            Just(r#"namespace="other""#.to_string()),
            Just(r#"namespace=~".+""#.to_string()),
            Just(r#"namespace!="team-a""#.to_string()),
            Just(r#"job="a",namespace=~"team-.*""#.to_string()),
            "[a-z]{1,3}=\"[a-z\\\\\"{}]{0,4}\"".prop_map(|m| m),
        ];
        let name = prop_oneof![Just(String::new()), "[a-z_]{1,6}"];
        (name, matcher, any::<bool>(), any::<bool>()).prop_map(|(name, m, range, offset)| {
            let m = if name.is_empty() && m.is_empty() { r#"__name__=~".+""#.to_string() } else { m };
            let mut s = format!("{name}{{{m}}}");
            if range {
                s.push_str("[5m]");
            }
            if offset {
                s.push_str(" offset 1m");
            }
            if range { format!("rate({s})") } else { s }
        })
    }

    fn arb_expr() -> impl Strategy<Value = String> {
        arb_selector().prop_recursive(4, 24, 3, |inner| {
            prop_oneof![
                (
                    inner.clone(),
                    inner.clone(),
                    prop::sample::select(vec!["+", "-", "*", "/", "or", "and", "unless", "> bool"])
                )
                    .prop_map(|(a, b, op)| format!("({a}) {op} ({b})")),
                (
                    prop::sample::select(vec!["sum", "max", "count", "avg"]),
                    prop::sample::select(vec!["", " by (namespace)", " without (job)"]),
                    inner.clone(),
                )
                    .prop_map(|(agg, m, e)| format!("{agg}{m} ({e})")),
                inner.clone().prop_map(|e| format!("max_over_time(({e})[10m:1m])")),
                inner.clone().prop_map(|e| format!("abs({e})")),
                (inner.clone(), inner).prop_map(|(a, b)| format!("topk(scalar({a}), {b})")),
            ]
        })
    }

    proptest! {
        #[test]
        fn every_selector_carries_exactly_the_tenant_matcher(q in arb_expr()) {
            // Queries the parser accepts must come back confined; the others are refused.
            if let Ok(out) = enforce_label(&q, "namespace", NS) {
                for matchers in selectors(&out, "namespace") {
                    prop_assert_eq!(matchers, vec![r#"namespace="team-a""#.to_string()], "{} -> {}", q, out);
                }
            } else {
                prop_assert!(parser::parse(&q).is_err() || q.len() > MAX_QUERY_BYTES
                    || check_bounds(&q).is_err(), "{} refused but parses", q);
            }
        }

        #[test]
        fn arbitrary_input_never_panics(q in "\\PC{0,200}") {
            let _ = enforce_label(&q, "namespace", NS);
        }
    }
}
