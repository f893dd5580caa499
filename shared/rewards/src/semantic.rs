//! Semantic comparison of predicted and expected calls.

use fc_data::{BfclCall, Call, Sample};
use fc_toolcall::ToolCall;
use serde_json::{Map, Value};

pub(crate) struct EqOptions {
    pub case_insensitive: bool,
    pub tolerance: f64,
}

/// Normalized JSON equality used by the semantic reward: numbers compare
/// by value with a relative `tolerance` (so `3 == 3.0`), strings are
/// trimmed (and compared case-insensitively when asked), arrays in order,
/// objects by key set (a `null` member equals an absent one).
pub fn values_equal(a: &Value, b: &Value, case_insensitive: bool, tolerance: f64) -> bool {
    eq(
        a,
        b,
        &EqOptions {
            case_insensitive,
            tolerance,
        },
        0,
    )
}

fn str_eq(a: &str, b: &str, ci: bool) -> bool {
    let (a, b) = (a.trim(), b.trim());
    if a == b {
        return true;
    }
    if !ci {
        return false;
    }
    if a.is_ascii() && b.is_ascii() {
        return a.eq_ignore_ascii_case(b);
    }
    a.to_lowercase() == b.to_lowercase()
}

fn eq(a: &Value, b: &Value, o: &EqOptions, depth: usize) -> bool {
    if depth > 64 {
        return false;
    }
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(i), Some(j)) = (x.as_i64(), y.as_i64()) {
                return i == j;
            }
            match (x.as_f64(), y.as_f64()) {
                (Some(p), Some(q)) => (p - q).abs() <= o.tolerance * 1f64.max(p.abs()).max(q.abs()),
                _ => false,
            }
        }
        (Value::String(x), Value::String(y)) => str_eq(x, y, o.case_insensitive),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| eq(p, q, o, depth + 1)),
        (Value::Object(x), Value::Object(y)) => obj_eq(x, y, &|| None, o, depth + 1),
        _ => false,
    }
}

/// Object equality; with `props` (the tool's JSON Schema properties, looked
/// up only when needed), a member present on one side only still matches
/// when it equals the parameter's declared default.
fn obj_eq<'p>(
    x: &Map<String, Value>,
    y: &Map<String, Value>,
    props: &dyn Fn() -> Option<&'p Map<String, Value>>,
    o: &EqOptions,
    depth: usize,
) -> bool {
    let equals_default = |k: &str, v: &Value| -> bool {
        props()
            .and_then(|p| p.get(k))
            .and_then(|s| s.get("default"))
            .is_some_and(|d| eq(v, d, o, depth + 1))
    };
    // Members of `x`, looked up in `y`; when both list their keys in the
    // same order (the usual case) the lookup is a plain key comparison.
    let mut ys = y.iter();
    let mut found = 0usize;
    for (k, a) in x {
        let b = match ys.next() {
            Some((yk, yv)) if yk == k => Some(yv),
            _ => crate::exec::get(y, k),
        };
        found += b.is_some() as usize;
        let ok = match (Some(a).filter(|v| !v.is_null()), b.filter(|v| !v.is_null())) {
            (Some(a), Some(b)) => eq(a, b, o, depth),
            (None, None) => true,
            (Some(v), None) | (None, Some(v)) => equals_default(k, v),
        };
        if !ok {
            return false;
        }
    }
    // Members only in `y` (none when every key of `y` was found above).
    found == y.len() || y.iter().filter(|(k, _)| crate::exec::get(x, k).is_none()).all(|(k, v)| v.is_null() || equals_default(k, v))
}

fn call_eq(p: &ToolCall, e: &Call, sample: &Sample, o: &EqOptions) -> bool {
    if p.name != e.name {
        return false;
    }
    let props = || {
        sample
            .tool(&e.name)
            .and_then(|t| t.parameters.get("properties"))
            .and_then(|p| p.as_object())
    };
    match (&p.arguments, &e.arguments) {
        (Value::Object(a), Value::Object(b)) => obj_eq(a, b, &props, o, 0),
        (a, b) => eq(a, b, o, 0),
    }
}

fn bfcl_ok(p: &ToolCall, g: &BfclCall, o: &EqOptions) -> bool {
    if p.name != g.name {
        return false;
    }
    let args = match &p.arguments {
        Value::Object(a) => a,
        _ => return false,
    };
    // Every predicted argument must be a ground-truth parameter.
    if args.iter().any(|(k, v)| !v.is_null() && !g.allowed.contains_key(k)) {
        return false;
    }
    g.allowed.iter().all(|(k, allowed)| {
        let list = allowed.as_array().map(|a| a.as_slice()).unwrap_or(&[]);
        match args.get(k) {
            None | Some(Value::Null) => list.iter().any(|v| v.as_str() == Some("")),
            Some(v) => list.iter().any(|a| allowed_eq(v, a, o, 0)),
        }
    })
}

/// Does `v` equal the BFCL allowed value `a` (normalized equality)? In BFCL
/// ground truth, dict values are themselves maps of allowed lists
/// (`{"adults": [2], "note": ["", "x"]}`), also inside lists of dicts; such a
/// dict matches when every member is one of its allowed values (a missing or
/// `null` member matches when `""` is allowed) and it has no other members.
fn allowed_eq(v: &Value, a: &Value, o: &EqOptions, depth: usize) -> bool {
    if depth > 64 {
        return false;
    }
    if eq(v, a, o, depth) {
        return true;
    }
    match (v, a) {
        (Value::Object(vm), Value::Object(am)) if am.values().all(Value::is_array) => {
            vm.iter().all(|(k, x)| x.is_null() || am.contains_key(k))
                && am.iter().all(|(k, allowed)| {
                    let list = allowed.as_array().map(Vec::as_slice).unwrap_or(&[]);
                    match vm.get(k) {
                        None | Some(Value::Null) => list.iter().any(|x| x.as_str() == Some("")),
                        Some(x) => list.iter().any(|y| allowed_eq(x, y, o, depth + 1)),
                    }
                })
        }
        (Value::Array(vs), Value::Array(items)) => {
            vs.len() == items.len() && vs.iter().zip(items).all(|(x, y)| allowed_eq(x, y, o, depth + 1))
        }
        _ => false,
    }
}

/// Maximum bipartite matching (Kuhn) between predictions and expectations.
fn max_matching(n_pred: usize, n_exp: usize, edge: impl Fn(usize, usize) -> bool) -> usize {
    let adj: Vec<Vec<usize>> = (0..n_pred).map(|i| (0..n_exp).filter(|&j| edge(i, j)).collect()).collect();
    let mut owner: Vec<Option<usize>> = vec![None; n_exp];
    fn try_kuhn(i: usize, adj: &[Vec<usize>], seen: &mut [bool], owner: &mut [Option<usize>]) -> bool {
        for &j in &adj[i] {
            if seen[j] {
                continue;
            }
            seen[j] = true;
            let free = match owner[j] {
                None => true,
                Some(k) => try_kuhn(k, adj, seen, owner),
            };
            if free {
                owner[j] = Some(i);
                return true;
            }
        }
        false
    }
    let mut count = 0;
    for i in 0..n_pred {
        if adj[i].is_empty() {
            continue;
        }
        let mut seen = vec![false; n_exp];
        if try_kuhn(i, &adj, &mut seen, &mut owner) {
            count += 1;
            if count == n_exp {
                break;
            }
        }
    }
    count
}

pub(crate) fn match_calls(pred: &[ToolCall], exp: &[Call], sample: &Sample, o: &EqOptions) -> usize {
    max_matching(pred.len(), exp.len(), |i, j| call_eq(&pred[i], &exp[j], sample, o))
}

pub(crate) fn match_bfcl(pred: &[ToolCall], gt: &[BfclCall], o: &EqOptions) -> usize {
    max_matching(pred.len(), gt.len(), |i, j| bfcl_ok(&pred[i], &gt[j], o))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn normalized_equality() {
        assert!(values_equal(&json!(3), &json!(3.0), true, 1e-6));
        assert!(values_equal(&json!(" Paris "), &json!("paris"), true, 1e-6));
        assert!(!values_equal(&json!("Paris"), &json!("paris"), false, 1e-6));
        assert!(!values_equal(&json!("3"), &json!(3), true, 1e-6));
        assert!(values_equal(&json!({"a": [1, 2], "b": null}), &json!({"a": [1.0, 2]}), true, 1e-6));
        assert!(!values_equal(&json!([1, 2]), &json!([2, 1]), true, 1e-6));
        assert!(values_equal(&json!(0.1 + 0.2), &json!(0.3), true, 1e-6));
    }

    #[test]
    fn bfcl_nested_allowed_lists() {
        let o = EqOptions {
            case_insensitive: true,
            tolerance: 1e-6,
        };
        let g = BfclCall {
            name: "book".into(),
            allowed: serde_json::from_value(json!({
                "guests": [{"adults": [2], "note": ["", "window"]}],
                "rooms": [[{"kind": ["double", "Double"], "n": [1]}]],
            }))
            .unwrap(),
        };
        let call = |args: Value| ToolCall::new("book".to_string(), args);
        assert!(bfcl_ok(&call(json!({"guests": {"adults": 2}, "rooms": [{"kind": "double", "n": 1.0}]})), &g, &o));
        assert!(bfcl_ok(&call(json!({"guests": {"adults": 2, "note": " Window"}, "rooms": [{"kind": "DOUBLE", "n": 1}]})), &g, &o));
        assert!(!bfcl_ok(&call(json!({"guests": {"adults": 3}, "rooms": [{"kind": "double", "n": 1}]})), &g, &o));
        assert!(!bfcl_ok(&call(json!({"guests": {"adults": 2, "pets": 1}, "rooms": [{"kind": "double", "n": 1}]})), &g, &o));
        assert!(!bfcl_ok(&call(json!({"guests": {"note": "window"}, "rooms": [{"kind": "double", "n": 1}]})), &g, &o));
        assert!(!bfcl_ok(&call(json!({"guests": {"adults": 2}, "rooms": []})), &g, &o));
    }

    #[test]
    fn matching_is_maximum() {
        // pred0 matches e0 and e1, pred1 only e0: greedy would find 1.
        let m = max_matching(2, 2, |i, j| (i == 0) || (i == 1 && j == 0));
        assert_eq!(m, 2);
    }
}
