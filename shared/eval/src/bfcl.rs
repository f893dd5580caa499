//! BFCL AST checker, re-implemented from the rules of BFCL's own
//! `bfcl_eval/eval_checker/ast_eval/ast_checker.py` (Python language).
//!
//! Published BFCL numbers are computed by that checker, so ours must give the same verdict
//! on every input, quirks included, or our `ast_accuracy` would not be comparable:
//!
//! * values are judged with Python semantics: `type(x) == T` (so `bool` is not `int`), and
//!   `==`/`in` where `1 == 1.0 == True`;
//! * the exact function name is required; required parameters must be present; a
//!   parameter must be both declared and in the ground truth; a ground-truth parameter may
//!   be omitted only when its allowed list contains `""`;
//! * an `int` is accepted for a `float` parameter (converted), a `float` for an `int` is not;
//! * strings (also inside lists and dicts) are compared after removing spaces and
//!   `,./-_*^`, lower-casing and turning `'` into `"`;
//! * lists are compared in order; dicts key by key (one level, then Python `==`);
//! * a value whose type is that of the allowed values rather than the declared type is a
//!   "variable" and is compared with plain `in`;
//! * parallel categories match each ground-truth call, in order, to the first unmatched
//!   predicted call that passes (greedy, as BFCL does), with equal counts; `multiple`
//!   checks the single call against the single answer; `simple` uses the first function.
//!
//! Where BFCL's Python would raise (malformed ground truth), the call is judged invalid.
//! Java/JavaScript categories (string-encoded values) are not supported.

use fc_data::{BfclCall, Sample, ToolDef};
use fc_toolcall::ToolCall;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

/// The four single-turn AST categories BFCL reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BfclCategory {
    Simple,
    Multiple,
    Parallel,
    ParallelMultiple,
}

impl BfclCategory {
    /// All categories, in report order.
    pub const ALL: [BfclCategory; 4] = [
        BfclCategory::Simple,
        BfclCategory::Multiple,
        BfclCategory::Parallel,
        BfclCategory::ParallelMultiple,
    ];

    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            BfclCategory::Simple => "simple",
            BfclCategory::Multiple => "multiple",
            BfclCategory::Parallel => "parallel",
            BfclCategory::ParallelMultiple => "parallel_multiple",
        }
    }

    /// Category of a BFCL test id (`simple_python_3`, `live_parallel_multiple_2-1-0`, ...):
    /// BFCL dispatches on the substrings `parallel` and `multiple` of the test category, so
    /// `live_simple` is simple and `parallel_multiple` uses the parallel (unordered) checker.
    pub fn from_id(id: &str) -> BfclCategory {
        let parallel = id.contains("parallel");
        let multiple = id.contains("multiple");
        match (parallel, multiple) {
            (true, true) => BfclCategory::ParallelMultiple,
            (true, false) => BfclCategory::Parallel,
            (false, true) => BfclCategory::Multiple,
            (false, false) => BfclCategory::Simple,
        }
    }
}

/// Result of checking one prediction. `error_type` uses BFCL's own strings
/// (`simple_function_checker:missing_required`, `type_error:simple`, ...), so verdicts can be
/// compared with BFCL's output one to one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AstVerdict {
    pub valid: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl AstVerdict {
    fn ok() -> Self {
        AstVerdict {
            valid: true,
            error_type: None,
            error: None,
        }
    }
}

#[derive(Debug, Clone)]
struct Fail {
    kind: &'static str,
    msg: String,
}

fn fail<T>(kind: &'static str, msg: impl Into<String>) -> Result<T, Fail> {
    Err(Fail {
        kind,
        msg: msg.into(),
    })
}

type Check = Result<(), Fail>;

/// Python type of a JSON value (`type(x)` after `json.loads`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PyType {
    None,
    Bool,
    Int,
    Float,
    Str,
    List,
    Dict,
}

fn py_type(v: &Value) -> PyType {
    match v {
        Value::Null => PyType::None,
        Value::Bool(_) => PyType::Bool,
        Value::Number(n) if n.is_f64() => PyType::Float,
        Value::Number(_) => PyType::Int,
        Value::String(_) => PyType::Str,
        Value::Array(_) => PyType::List,
        Value::Object(_) => PyType::Dict,
    }
}

/// Declared parameter type mapped the way BFCL's `PYTHON_TYPE_MAPPING` does
/// (`any` -> `str`, `tuple` -> `list`, `dict` -> `dict`, `float` -> `float`).
/// `None` for types BFCL has no mapping for.
fn declared_type(schema: &Value) -> Option<PyType> {
    match schema.get("type") {
        // fc-data drops BFCL's `any` when normalizing to JSON Schema.
        None => Some(PyType::Str),
        Some(Value::String(t)) => match t.as_str() {
            "string" | "any" => Some(PyType::Str),
            "integer" => Some(PyType::Int),
            "number" | "float" => Some(PyType::Float),
            "boolean" => Some(PyType::Bool),
            "array" | "tuple" => Some(PyType::List),
            "object" | "dict" => Some(PyType::Dict),
            _ => None,
        },
        Some(_) => None,
    }
}

/// One parameter of a function description.
#[derive(Debug, Clone)]
struct ParamDoc {
    ty: Option<PyType>,
    /// Item type of array parameters (BFCL checks one nesting level).
    nested: Option<PyType>,
}

/// A function description as the checker needs it.
#[derive(Debug, Clone)]
pub struct FuncDoc {
    pub name: String,
    params: Map<String, Value>,
    required: Vec<String>,
}

impl FuncDoc {
    /// From an offered tool (parameters as normalized by fc-data's BFCL loader).
    pub fn from_tool(tool: &ToolDef) -> FuncDoc {
        let params = tool
            .parameters
            .get("properties")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let required = tool
            .parameters
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        FuncDoc {
            name: tool.name.clone(),
            params,
            required,
        }
    }

    fn param(&self, name: &str) -> Option<ParamDoc> {
        let schema = self.params.get(name)?;
        let ty = declared_type(schema);
        let nested = if ty == Some(PyType::List) {
            schema.get("items").and_then(declared_type)
        } else {
            None
        };
        Some(ParamDoc { ty, nested })
    }
}

// ---------------------------------------------------------------------------
// Python value semantics
// ---------------------------------------------------------------------------

/// Numeric view for Python's cross-type `==` (`True == 1 == 1.0`).
enum Num {
    I(i128),
    F(f64),
}

fn as_num(v: &Value) -> Option<Num> {
    match v {
        Value::Bool(b) => Some(Num::I(i128::from(*b))),
        Value::Number(n) => Some(num(n)),
        _ => None,
    }
}

fn num(n: &Number) -> Num {
    if let Some(i) = n.as_i64() {
        Num::I(i128::from(i))
    } else if let Some(u) = n.as_u64() {
        Num::I(i128::from(u))
    } else {
        Num::F(n.as_f64().unwrap_or(f64::NAN))
    }
}

/// Python's exact int/float comparison (no rounding of the int).
fn int_eq_float(i: i128, f: f64) -> bool {
    f.is_finite() && f.fract() == 0.0 && f.abs() < 1.7e38 && (f as i128) == i
}

/// Python `a == b` for JSON-decoded values.
fn py_eq(a: &Value, b: &Value) -> bool {
    if let (Some(x), Some(y)) = (as_num(a), as_num(b)) {
        return match (x, y) {
            (Num::I(i), Num::I(j)) => i == j,
            (Num::F(p), Num::F(q)) => p == q,
            (Num::I(i), Num::F(f)) | (Num::F(f), Num::I(i)) => int_eq_float(i, f),
        };
    }
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| py_eq(p, q)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| py_eq(v, w)))
        }
        _ => false,
    }
}

fn py_in(v: &Value, list: &[Value]) -> bool {
    list.iter().any(|x| py_eq(v, x))
}

fn is_empty_str(v: &Value) -> bool {
    matches!(v, Value::String(s) if s.is_empty())
}

/// The allowed-value list of a ground-truth parameter (BFCL always writes a list).
fn allowed_list(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) => a,
        other => std::slice::from_ref(other),
    }
}

/// Python `"" in x` for the container kinds ground truth can hold.
fn contains_empty(v: &Value) -> bool {
    match v {
        Value::Array(a) => a.iter().any(is_empty_str),
        // `"" in "abc"` is a substring test: always true.
        Value::String(_) => true,
        _ => false,
    }
}

/// BFCL's `standardize_string`: drop ` ,./-_*^`, lower-case, `'` -> `"`.
pub fn standardize_string(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, ' ' | ',' | '.' | '/' | '-' | '_' | '*' | '^'))
        .collect::<String>()
        .to_lowercase()
        .replace('\'', "\"")
}

fn standardize_value(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(standardize_string(s)),
        other => other.clone(),
    }
}

/// A ground-truth container standardized element-wise, as BFCL iterates it: a list gives
/// its elements, a string its characters (BFCL indexes strings too); anything else cannot
/// be iterated (BFCL raises) and yields `None`.
fn standardized_items(v: &Value) -> Option<Vec<Value>> {
    match v {
        Value::Array(a) => Some(a.iter().map(standardize_value).collect()),
        Value::String(s) => Some(
            s.chars()
                .map(|c| Value::String(standardize_string(&c.to_string())))
                .collect(),
        ),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Checkers
// ---------------------------------------------------------------------------

/// Returns whether the value is a "variable" (typed like the ground truth, not like the
/// declaration).
fn type_check(param: &str, value: &Value, allowed: &[Value], expected: Option<PyType>, nested: Option<PyType>) -> Result<bool, Fail> {
    let answer_type = allowed.iter().find(|a| !is_empty_str(a)).map(py_type);
    let is_variable = answer_type.is_some() && answer_type != expected;
    let vt = py_type(value);
    if Some(vt) == expected {
        let Some(inner) = nested else {
            return Ok(is_variable);
        };
        for item in allowed {
            let mut ok = true;
            if let (Value::Array(item_allowed), Value::Array(values)) = (item, value) {
                for v in values {
                    if type_check(param, v, item_allowed, Some(inner), None).is_err() {
                        ok = false;
                        break;
                    }
                }
            }
            if ok {
                return Ok(is_variable);
            }
        }
        // BFCL falls through with the nested error already recorded.
        let kind = if answer_type == Some(vt) {
            "type_error:nested"
        } else {
            "type_error:simple"
        };
        return fail(kind, format!("nested type checking failed for parameter {param:?}"));
    }
    if answer_type.is_some() && answer_type == Some(vt) {
        return Ok(true);
    }
    fail(
        "type_error:simple",
        format!("incorrect type for parameter {param:?}: expected {expected:?}, got {vt:?}"),
    )
}

fn string_check(param: &str, value: &str, allowed: &[Value]) -> Check {
    let v = standardize_string(value);
    let ok = allowed.iter().any(|a| matches!(a, Value::String(s) if standardize_string(s) == v));
    if ok {
        Ok(())
    } else {
        fail(
            "value_error:string",
            format!("invalid value for parameter {param:?}: {value:?} (case-insensitive)"),
        )
    }
}

fn list_check(param: &str, value: &[Value], allowed: &[Value]) -> Check {
    let model = Value::Array(value.iter().map(standardize_value).collect());
    let ok = allowed
        .iter()
        .filter_map(standardized_items)
        .any(|a| py_eq(&model, &Value::Array(a)));
    if ok {
        Ok(())
    } else {
        fail("value_error:list/tuple", format!("invalid value for parameter {param:?}: {}", Value::Array(value.to_vec())))
    }
}

fn dict_check(value: &Value, options: &[Value]) -> Check {
    let mut result: Check = fail("dict_checker:unclear", "no usable ground-truth dict");
    let Value::Object(model) = value else {
        return fail("dict_checker:unclear", "value is not a dict");
    };
    for option in options {
        if is_empty_str(option) {
            continue;
        }
        let Value::Object(answer) = option else {
            result = fail("dict_checker:unclear", "ground-truth option is not a dict");
            continue;
        };
        result = Ok(());
        for (key, v) in model {
            let Some(allowed) = answer.get(key) else {
                result = fail("value_error:dict_key", format!("unexpected dict key parameter: {key:?}"));
                break;
            };
            let sv = standardize_value(v);
            let ok = standardized_items(allowed).is_some_and(|a| py_in(&sv, &a));
            if !ok {
                result = fail("value_error:dict_value", format!("invalid value for dict key {key:?}: {v}"));
                break;
            }
        }
        // BFCL runs the missing-key pass even after a value error, overwriting it.
        for (key, allowed) in answer {
            if !model.contains_key(key) && !contains_empty(allowed) {
                result = fail("value_error:dict_key", format!("missing dict key parameter: {key:?}"));
                break;
            }
        }
        if result.is_ok() {
            return Ok(());
        }
    }
    result
}

/// Python `len(x)` of a ground-truth option (`None`: BFCL would raise).
fn py_len(v: &Value) -> Option<usize> {
    match v {
        Value::Array(a) => Some(a.len()),
        Value::String(s) => Some(s.chars().count()),
        Value::Object(o) => Some(o.len()),
        _ => None,
    }
}

fn list_dict_check(value: &[Value], options: &[Value]) -> Check {
    let mut result: Check = fail("list_dict_checker:unclear", "no ground-truth option");
    for option in options {
        if py_len(option) != Some(value.len()) {
            result = fail("value_error:list_dict_count", "wrong number of dictionaries in the list");
            continue;
        }
        let mut ok = true;
        for (i, item) in value.iter().enumerate() {
            let answer = match option {
                Value::Array(a) => a.get(i).cloned(),
                Value::String(s) => s.chars().nth(i).map(|c| Value::String(c.to_string())),
                _ => None,
            };
            result = match answer {
                Some(a) => dict_check(item, std::slice::from_ref(&a)),
                None => fail("list_dict_checker:unclear", "ground-truth option is not a list"),
            };
            if result.is_err() {
                ok = false;
                break;
            }
        }
        if ok {
            return Ok(());
        }
    }
    result
}

/// BFCL's `simple_function_checker` for one predicted call against one ground-truth call.
fn check_call(doc: &FuncDoc, call: &ToolCall, answer: &BfclCall) -> Check {
    if call.name != doc.name {
        return fail(
            "simple_function_checker:wrong_func_name",
            format!("function name {:?} not found in model output", doc.name),
        );
    }
    let empty = Map::new();
    let args = call.arguments.as_object().unwrap_or(&empty);
    for p in &doc.required {
        if !args.contains_key(p) {
            return fail("simple_function_checker:missing_required", format!("missing required parameter: {p:?}"));
        }
    }
    for (param, value) in args {
        let (Some(pd), Some(allowed)) = (doc.param(param), answer.allowed.get(param)) else {
            return fail("simple_function_checker:unexpected_param", format!("unexpected parameter: {param:?}"));
        };
        let allowed = allowed_list(allowed);
        // Python's int -> float auto conversion (bool is not an int here: type() is exact).
        let value = match value {
            Value::Number(n) if pd.ty == Some(PyType::Float) && !n.is_f64() => {
                Number::from_f64(n.as_f64().unwrap_or(f64::NAN)).map(Value::Number).unwrap_or(Value::Null)
            }
            v => v.clone(),
        };
        let is_variable = type_check(param, &value, allowed, pd.ty, pd.nested)?;
        if !is_variable {
            match (pd.ty, &value) {
                (Some(PyType::Dict), _) => {
                    dict_check(&value, allowed)?;
                    continue;
                }
                (Some(PyType::List), Value::Array(items)) if pd.nested == Some(PyType::Dict) => {
                    list_dict_check(items, allowed)?;
                    continue;
                }
                (Some(PyType::Str), Value::String(s)) => {
                    string_check(param, s, allowed)?;
                    continue;
                }
                (Some(PyType::List), Value::Array(items)) => {
                    list_check(param, items, allowed)?;
                    continue;
                }
                _ => {}
            }
        }
        if !py_in(&value, allowed) {
            return fail("value_error:others", format!("invalid value for parameter {param:?}: {value}"));
        }
    }
    for (param, allowed) in &answer.allowed {
        if !args.contains_key(param) && !allowed_list(allowed).iter().any(is_empty_str) {
            return fail(
                "simple_function_checker:missing_optional",
                format!("optional parameter {param:?} not provided and not marked as optional"),
            );
        }
    }
    Ok(())
}

fn find_doc<'a>(docs: &'a [FuncDoc], name: &str) -> Result<&'a FuncDoc, Fail> {
    match docs.iter().find(|d| d.name == name) {
        Some(d) => Ok(d),
        None => fail("ast_checker:missing_function_doc", format!("ground-truth function {name:?} is not among the offered functions")),
    }
}

fn check_inner(category: BfclCategory, docs: &[FuncDoc], calls: &[ToolCall], answers: &[BfclCall]) -> Check {
    match category {
        BfclCategory::Parallel | BfclCategory::ParallelMultiple => {
            if calls.len() != answers.len() {
                return fail("parallel_function_checker_no_order:wrong_count", "wrong number of functions");
            }
            let mut matched = vec![false; calls.len()];
            for (i, answer) in answers.iter().enumerate() {
                let doc = find_doc(docs, &answer.name)?;
                let found = (0..calls.len()).find(|&j| !matched[j] && check_call(doc, &calls[j], answer).is_ok());
                match found {
                    Some(j) => matched[j] = true,
                    None => {
                        return fail(
                            "parallel_function_checker_no_order:cannot_find_match",
                            format!("could not find a matching function for index {i} of possible answers"),
                        )
                    }
                }
            }
            Ok(())
        }
        BfclCategory::Multiple => {
            if calls.len() != answers.len() {
                return fail("multiple_function_checker:wrong_count", "wrong number of functions");
            }
            match (calls.first(), answers.first()) {
                (Some(call), Some(answer)) => check_call(find_doc(docs, &answer.name)?, call, answer),
                _ => Ok(()),
            }
        }
        BfclCategory::Simple => {
            if calls.len() != 1 {
                return fail("simple_function_checker:wrong_count", "wrong number of functions");
            }
            match (docs.first(), answers.first()) {
                (Some(doc), Some(answer)) => check_call(doc, &calls[0], answer),
                _ => fail("ast_checker:missing_function_doc", "no function description or ground truth"),
            }
        }
    }
}

/// Check decoded calls against BFCL ground truth. `docs` are the offered functions in
/// order (simple uses the first, as BFCL does).
pub fn check_calls(category: BfclCategory, docs: &[FuncDoc], calls: &[ToolCall], answers: &[BfclCall]) -> AstVerdict {
    match check_inner(category, docs, calls, answers) {
        Ok(()) => AstVerdict::ok(),
        Err(f) => AstVerdict {
            valid: false,
            error_type: Some(f.kind.to_string()),
            error: Some(f.msg),
        },
    }
}

/// Check a raw completion for a BFCL sample (category from the id). Malformed blocks are
/// dropped, as BFCL's Qwen function-calling handler drops blocks `json.loads` rejects.
/// `None` when the sample carries no BFCL ground truth.
pub fn check_sample(sample: &Sample, completion: &str) -> Option<(BfclCategory, AstVerdict)> {
    let fc_data::Expected::Bfcl(answers) = &sample.expected else {
        return None;
    };
    let category = BfclCategory::from_id(&sample.id);
    let docs: Vec<FuncDoc> = sample.tools.iter().map(FuncDoc::from_tool).collect();
    let calls = fc_toolcall::parse(completion).calls;
    Some((category, check_calls(category, &docs, &calls, answers)))
}

/// The ground truth as one concrete answer: for every parameter its first allowed value,
/// omitting parameters that may be omitted (allowed list contains `""`) unless required.
/// Dict values in BFCL ground truth are themselves maps of allowed lists (also inside
/// lists of dicts) and are reduced the same way. Rendered with
/// [`fc_toolcall::render_calls`] it must score 100% (the oracle test).
pub fn reference_calls(sample: &Sample) -> Vec<ToolCall> {
    let fc_data::Expected::Bfcl(answers) = &sample.expected else {
        return sample
            .expected
            .representative_calls()
            .into_iter()
            .map(|c| ToolCall::new(c.name, c.arguments))
            .collect();
    };
    answers
        .iter()
        .map(|a| {
            let doc = sample.tool(&a.name).map(FuncDoc::from_tool);
            let required: &[String] = doc.as_ref().map(|d| d.required.as_slice()).unwrap_or(&[]);
            let mut args = Map::new();
            for (k, v) in &a.allowed {
                let pd = doc.as_ref().and_then(|d| d.param(k));
                let (ty, nested) = pd.map(|p| (p.ty, p.nested)).unwrap_or((None, None));
                if let Some(x) = pick(v, required.contains(k), ty, nested) {
                    args.insert(k.clone(), x);
                }
            }
            ToolCall::new(a.name.clone(), Value::Object(args))
        })
        .collect()
}

/// First acceptable value of an allowed list (`None`: omit the parameter).
fn pick(allowed: &Value, required: bool, ty: Option<PyType>, nested: Option<PyType>) -> Option<Value> {
    let list = allowed_list(allowed);
    if list.iter().any(is_empty_str) && !required {
        return None;
    }
    let first = list.iter().find(|x| !is_empty_str(x))?;
    Some(match (ty, nested, first) {
        (Some(PyType::Dict), _, Value::Object(m)) => concrete_dict(m),
        (Some(PyType::List), Some(PyType::Dict), Value::Array(items)) => Value::Array(
            items
                .iter()
                .map(|it| match it {
                    Value::Object(m) => concrete_dict(m),
                    other => other.clone(),
                })
                .collect(),
        ),
        _ => first.clone(),
    })
}

fn concrete_dict(m: &Map<String, Value>) -> Value {
    Value::Object(
        m.iter()
            .filter_map(|(k, v)| pick(v, false, None, None).map(|x| (k.clone(), x)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(params: Value, required: &[&str]) -> FuncDoc {
        FuncDoc::from_tool(&ToolDef {
            name: "f".into(),
            description: String::new(),
            parameters: json!({"type": "object", "properties": params, "required": required}),
        })
    }

    fn gt(allowed: Value) -> BfclCall {
        BfclCall {
            name: "f".into(),
            allowed: allowed.as_object().cloned().unwrap_or_default(),
        }
    }

    fn ok(d: &FuncDoc, args: Value, a: &BfclCall) -> bool {
        check_call(d, &ToolCall::new("f", args), a).is_ok()
    }

    #[test]
    fn python_equality_rules() {
        assert!(py_eq(&json!(1), &json!(1.0)));
        assert!(py_eq(&json!(true), &json!(1)));
        assert!(!py_eq(&json!("1"), &json!(1)));
        assert!(py_eq(&json!({"a": [1, 2.0]}), &json!({"a": [1.0, 2]})));
        assert!(!py_eq(&json!([1, 2]), &json!([2, 1])));
        assert!(!py_eq(&json!(9007199254740993i64), &json!(9007199254740992.0)));
        assert_eq!(standardize_string("April 1, 2024"), "april12024");
        assert_eq!(standardize_string("It's_A-b.c/d*e^f"), "it\"sabcdef");
    }

    #[test]
    fn types_follow_bfcl() {
        let d = doc(json!({"n": {"type": "integer"}, "x": {"type": "number"}, "b": {"type": "boolean"}}), &[]);
        let a = gt(json!({"n": [5, ""], "x": [2.0, ""], "b": [true, ""]}));
        assert!(ok(&d, json!({"n": 5}), &a));
        assert!(!ok(&d, json!({"n": 5.0}), &a), "float for int");
        assert!(ok(&d, json!({"x": 2}), &a), "int for float");
        assert!(!ok(&d, json!({"b": 1}), &a), "int for bool");
        assert!(!ok(&d, json!({"n": true}), &a), "bool for int");
        assert!(ok(&d, json!({}), &a), "all optional");
    }

    #[test]
    fn strings_lists_dicts() {
        let d = doc(
            json!({"s": {"type": "string"}, "l": {"type": "array", "items": {"type": "string"}},
                   "d": {"type": "object"}}),
            &["s"],
        );
        let a = gt(json!({"s": ["New York, NY"], "l": [["a b", "C"], ""], "d": [{"k": ["V", 1]}, ""]}));
        assert!(ok(&d, json!({"s": "new york ny"}), &a));
        assert!(!ok(&d, json!({"s": "new york city"}), &a));
        assert!(ok(&d, json!({"s": "NewYork,NY", "l": ["AB", "c"]}), &a));
        assert!(!ok(&d, json!({"s": "NY", "l": ["c", "ab"]}), &a));
        assert!(!ok(&d, json!({"s": "New York, NY", "l": ["c", "ab"]}), &a), "list order");
        assert!(ok(&d, json!({"s": "New York, NY", "d": {"k": "v"}}), &a));
        assert!(!ok(&d, json!({"s": "New York, NY", "d": {"k": "v", "z": 1}}), &a));
        assert!(!ok(&d, json!({}), &a), "missing required");
        assert!(!ok(&d, json!({"s": "New York, NY", "q": 1}), &a), "unknown param");
    }

    #[test]
    fn parallel_is_unordered_with_equal_count() {
        let docs = vec![doc(json!({"c": {"type": "string"}}), &["c"])];
        let ans = vec![gt(json!({"c": ["Paris"]})), gt(json!({"c": ["Rome"]}))];
        let call = |c: &str| ToolCall::new("f", json!({"c": c}));
        let v = check_calls(BfclCategory::Parallel, &docs, &[call("rome"), call("paris")], &ans);
        assert!(v.valid, "{v:?}");
        let v = check_calls(BfclCategory::Parallel, &docs, &[call("rome")], &ans);
        assert_eq!(v.error_type.as_deref(), Some("parallel_function_checker_no_order:wrong_count"));
        let v = check_calls(BfclCategory::Simple, &docs, &[call("Paris")], &ans[..1]);
        assert!(v.valid);
    }

    #[test]
    fn category_from_id() {
        assert_eq!(BfclCategory::from_id("simple_python_3"), BfclCategory::Simple);
        assert_eq!(BfclCategory::from_id("live_multiple_1-2-3"), BfclCategory::Multiple);
        assert_eq!(BfclCategory::from_id("parallel_4"), BfclCategory::Parallel);
        assert_eq!(BfclCategory::from_id("parallel_multiple_0"), BfclCategory::ParallelMultiple);
    }
}
