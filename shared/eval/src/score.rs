//! Per-sample verdicts and aggregate metrics for a set of predictions.
//!
//! Every metric is the fraction of samples (0..1) for which one boolean verdict holds, so
//! per-category and per-split breakdowns are plain sub-averages:
//!
//! * **parse_rate**: every `<tool_call>` block is well-formed, and when calls are expected
//!   at least one block is present;
//! * **schema_hit**: every call names an offered tool and its arguments validate against
//!   the tool's JSON Schema (for a plain-text answer: no call);
//! * **func_accuracy**: the right functions are called: every block parses and the called
//!   names equal the expected names as a multiset (arguments are judged by the two metrics
//!   below, so a model that picks the right tool but invents its arguments shows a high
//!   func_accuracy next to a low args_match instead of hiding either); for a plain-text
//!   answer: no call and non-empty text;
//! * **exec_rate**: the mock executor runs every call without error;
//! * **args_match**: the calls equal the expected ones as a multiset, names plus
//!   normalized arguments (trimmed, case-insensitive strings, numbers by value, schema
//!   defaults), i.e. fc-rewards' binary semantic reward;
//! * **args_exact**: like args_match but every argument value must be exactly equal
//!   (case, whitespace, no extra or defaulted keys). The gap between the two shows values
//!   the lenient comparison forgave; hallucinated arguments (not declared by the tool) are
//!   listed per sample in [`Verdict::hallucinated_args`] and counted in
//!   `hallucination_rate`;
//! * **no_call_accuracy**: among samples whose right answer is plain text, the fraction
//!   answered without a call (`None` when there are none).
//!
//! Samples without a prediction count as failures on every metric and are reported in
//! `missing`. Samples with BFCL ground truth are also judged by the BFCL AST checker
//! ([`crate::bfcl`]) into `ast_accuracy` per BFCL category.

use std::collections::{BTreeMap, HashSet};

use fc_data::{Expected, Sample};
use fc_rewards::{RewardConfig, Scorer, SemanticMode};
use fc_toolcall::ToolCall;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::bfcl::{self, AstVerdict, BfclCategory};
use crate::predictions::Predictions;
use crate::EvalError;

/// Shape of the expected answer, for the per-category breakdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Exactly one expected call.
    Single,
    /// Several expected calls, all of the same function.
    Parallel,
    /// Several expected calls of at least two different functions.
    Multiple,
    /// The right answer is plain text.
    NoTool,
}

impl Category {
    /// All categories in report order.
    pub const ALL: [Category; 4] = [Category::Single, Category::Parallel, Category::Multiple, Category::NoTool];

    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Single => "single",
            Category::Parallel => "parallel",
            Category::Multiple => "multiple",
            Category::NoTool => "no_tool",
        }
    }

    /// Category of a sample from its expected answer.
    pub fn of(expected: &Expected) -> Category {
        let names: Vec<&str> = match expected {
            Expected::Text(_) => return Category::NoTool,
            Expected::Calls(c) => c.iter().map(|c| c.name.as_str()).collect(),
            Expected::Bfcl(c) => c.iter().map(|c| c.name.as_str()).collect(),
        };
        match names.len() {
            0 => Category::NoTool,
            1 => Category::Single,
            _ if names.iter().all(|n| *n == names[0]) => Category::Parallel,
            _ => Category::Multiple,
        }
    }
}

/// BFCL AST result of one sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BfclResult {
    pub category: BfclCategory,
    #[serde(flatten)]
    pub verdict: AstVerdict,
}

/// Everything judged about one sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub id: String,
    pub category: Category,
    /// Caller-supplied split tag (e.g. `heldout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
    /// No prediction for this id (every check below is then false).
    pub missing: bool,
    pub parse_ok: bool,
    pub schema_ok: bool,
    pub func_ok: bool,
    pub exec_ok: bool,
    /// Names and normalized arguments match (the binary semantic reward).
    #[serde(default)]
    pub args_ok: bool,
    pub args_exact: bool,
    pub expected_calls: usize,
    /// Calls that parsed.
    pub predicted_calls: usize,
    /// `<tool_call>` blocks, well-formed or not.
    pub blocks: usize,
    /// `tool.arg` for every predicted argument the tool does not declare.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hallucinated_args: Vec<String>,
    /// First problems found (parse, schema, exec), one line each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfcl: Option<BfclResult>,
}

/// Aggregate metrics over a set of verdicts; rates are fractions in 0..1.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub count: u64,
    /// Samples without a prediction (included in `count`, failed everywhere).
    pub missing: u64,
    pub parse_rate: f64,
    pub schema_hit: f64,
    pub func_accuracy: f64,
    pub exec_rate: f64,
    #[serde(default)]
    pub args_match: f64,
    pub args_exact: f64,
    /// Among plain-text samples; `None` when there are none.
    pub no_call_accuracy: Option<f64>,
    /// Fraction of samples with at least one hallucinated argument.
    pub hallucination_rate: f64,
    /// BFCL AST accuracy among samples with BFCL ground truth; `None` when there are none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ast_accuracy: Option<f64>,
}

impl Metrics {
    /// Metrics of `verdicts` (all zero for an empty set).
    pub fn of<'a>(verdicts: impl IntoIterator<Item = &'a Verdict>) -> Metrics {
        let vs: Vec<&Verdict> = verdicts.into_iter().collect();
        let n = vs.len();
        let frac = |f: &dyn Fn(&Verdict) -> bool| -> f64 {
            if n == 0 {
                0.0
            } else {
                vs.iter().filter(|v| f(v)).count() as f64 / n as f64
            }
        };
        let sub_rate = |sel: &dyn Fn(&Verdict) -> bool, ok: &dyn Fn(&Verdict) -> bool| -> Option<f64> {
            let sub: Vec<&&Verdict> = vs.iter().filter(|v| sel(v)).collect();
            (!sub.is_empty()).then(|| sub.iter().filter(|v| ok(v)).count() as f64 / sub.len() as f64)
        };
        Metrics {
            count: n as u64,
            missing: vs.iter().filter(|v| v.missing).count() as u64,
            parse_rate: frac(&|v| v.parse_ok),
            schema_hit: frac(&|v| v.schema_ok),
            func_accuracy: frac(&|v| v.func_ok),
            exec_rate: frac(&|v| v.exec_ok),
            args_match: frac(&|v| v.args_ok),
            args_exact: frac(&|v| v.args_exact),
            no_call_accuracy: sub_rate(&|v| v.category == Category::NoTool, &|v| v.func_ok),
            hallucination_rate: frac(&|v| !v.hallucinated_args.is_empty()),
            ast_accuracy: sub_rate(&|v| v.bfcl.is_some(), &|v| v.bfcl.as_ref().is_some_and(|b| b.verdict.valid)),
        }
    }

    /// `(name, value)` of every rate, in report order (`None` rates omitted).
    pub fn rates(&self) -> Vec<(&'static str, f64)> {
        let mut out = vec![
            ("parse_rate", self.parse_rate),
            ("schema_hit", self.schema_hit),
            ("func_accuracy", self.func_accuracy),
            ("exec_rate", self.exec_rate),
            ("args_match", self.args_match),
            ("args_exact", self.args_exact),
        ];
        if let Some(x) = self.no_call_accuracy {
            out.push(("no_call_accuracy", x));
        }
        out.push(("hallucination_rate", self.hallucination_rate));
        if let Some(x) = self.ast_accuracy {
            out.push(("ast_accuracy", x));
        }
        out
    }
}

/// Overall metrics plus breakdowns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub overall: Metrics,
    /// By [`Category`] name; only categories that occur.
    pub by_category: BTreeMap<String, Metrics>,
    /// By split tag; only tagged samples.
    pub by_split: BTreeMap<String, Metrics>,
    /// BFCL AST accuracy by BFCL category (`simple`, `multiple`, `parallel`,
    /// `parallel_multiple`) plus `overall`; empty without BFCL samples.
    pub bfcl: BTreeMap<String, BfclAccuracy>,
}

/// AST accuracy of one BFCL category.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct BfclAccuracy {
    pub count: u64,
    pub correct: u64,
    pub ast_accuracy: f64,
}

impl Summary {
    /// Flat `group.metric -> value` map (`single.func_accuracy`, `heldout.parse_rate`,
    /// `bfcl.parallel.ast_accuracy`), the shape of `EvalMetrics::extra` in fc-events.
    pub fn extra(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (group, m) in self.by_category.iter().chain(&self.by_split) {
            for (k, v) in m.rates() {
                out.insert(format!("{group}.{k}"), v);
            }
            out.insert(format!("{group}.count"), m.count as f64);
        }
        for (cat, b) in &self.bfcl {
            out.insert(format!("bfcl.{cat}.ast_accuracy"), b.ast_accuracy);
            out.insert(format!("bfcl.{cat}.count"), b.count as f64);
        }
        out.insert("missing".into(), self.overall.missing as f64);
        out.insert("hallucination_rate".into(), self.overall.hallucination_rate);
        out
    }
}

/// Summarize verdicts into overall metrics and breakdowns.
pub fn summarize(verdicts: &[Verdict]) -> Summary {
    let mut by_category = BTreeMap::new();
    for c in Category::ALL {
        let sub: Vec<&Verdict> = verdicts.iter().filter(|v| v.category == c).collect();
        if !sub.is_empty() {
            by_category.insert(c.as_str().to_string(), Metrics::of(sub));
        }
    }
    let splits: std::collections::BTreeSet<&str> = verdicts.iter().filter_map(|v| v.split.as_deref()).collect();
    let by_split = splits
        .into_iter()
        .map(|s| (s.to_string(), Metrics::of(verdicts.iter().filter(|v| v.split.as_deref() == Some(s)))))
        .collect();
    let mut bfcl = BTreeMap::new();
    let acc = |it: &mut dyn Iterator<Item = &BfclResult>| {
        let (mut count, mut correct) = (0u64, 0u64);
        for b in it {
            count += 1;
            correct += u64::from(b.verdict.valid);
        }
        BfclAccuracy {
            count,
            correct,
            ast_accuracy: if count == 0 { 0.0 } else { correct as f64 / count as f64 },
        }
    };
    for c in BfclCategory::ALL {
        let a = acc(&mut verdicts.iter().filter_map(|v| v.bfcl.as_ref()).filter(|b| b.category == c));
        if a.count > 0 {
            bfcl.insert(c.as_str().to_string(), a);
        }
    }
    if !bfcl.is_empty() {
        bfcl.insert("overall".into(), acc(&mut verdicts.iter().filter_map(|v| v.bfcl.as_ref())));
    }
    Summary {
        overall: Metrics::of(verdicts),
        by_category,
        by_split,
        bfcl,
    }
}

/// Judges completions. Holds the reward scorer used for the schema / exec / lenient
/// matching checks, so evaluation and RL rewards can never disagree on those.
pub struct Evaluator {
    scorer: Scorer,
}

impl Default for Evaluator {
    fn default() -> Self {
        Self::new()
    }
}

impl Evaluator {
    /// The default evaluator: fc-rewards' default normalization (case-insensitive trimmed
    /// strings, numbers by value) with binary (all-or-nothing) call matching.
    pub fn new() -> Self {
        let config = RewardConfig {
            semantic_mode: SemanticMode::Binary,
            ..RewardConfig::default()
        };
        match Scorer::new(config) {
            Ok(scorer) => Evaluator { scorer },
            // The default config always passes its checks; stay total regardless.
            Err(_) => Evaluator { scorer: Scorer::default() },
        }
    }

    /// An evaluator with a custom matching config (its semantic mode is forced to binary:
    /// func_accuracy is a per-sample yes/no).
    pub fn with_config(mut config: RewardConfig) -> Result<Self, EvalError> {
        config.semantic_mode = SemanticMode::Binary;
        let scorer = Scorer::new(config).map_err(|e| EvalError::Config(e.to_string()))?;
        Ok(Evaluator { scorer })
    }

    /// Judge one sample; `completion` is `None` when the prediction is missing.
    pub fn verdict(&self, sample: &Sample, completion: Option<&str>, split: Option<&str>) -> Verdict {
        let mut v = Verdict {
            id: sample.id.clone(),
            category: Category::of(&sample.expected),
            split: split.map(str::to_string),
            missing: completion.is_none(),
            parse_ok: false,
            schema_ok: false,
            func_ok: false,
            exec_ok: false,
            args_ok: false,
            args_exact: false,
            expected_calls: sample.expected.call_count(),
            predicted_calls: 0,
            blocks: 0,
            hallucinated_args: Vec::new(),
            errors: Vec::new(),
            bfcl: None,
        };
        let Some(text) = completion else {
            v.errors.push("no prediction for this id".into());
            if let Expected::Bfcl(_) = &sample.expected {
                v.bfcl = Some(BfclResult {
                    category: BfclCategory::from_id(&sample.id),
                    verdict: AstVerdict {
                        valid: false,
                        error_type: Some("missing_prediction".into()),
                        error: None,
                    },
                });
            }
            return v;
        };
        let parsed = fc_toolcall::parse(text);
        let score = self.scorer.score(sample, text);
        let c = score.components;
        let expects_text = sample.expected.is_text();
        v.blocks = parsed.blocks;
        v.predicted_calls = parsed.calls.len();
        v.parse_ok = parsed.errors.is_empty() && (expects_text || parsed.blocks > 0);
        v.schema_ok = c.schema >= 1.0;
        v.exec_ok = c.exec >= 1.0;
        v.args_ok = c.semantic >= 1.0;
        v.func_ok = if expects_text {
            v.args_ok
        } else {
            parsed.errors.is_empty() && same_names(&parsed.calls, &sample.expected)
        };
        v.args_exact = if expects_text {
            v.args_ok
        } else {
            parsed.errors.is_empty() && exact_match(&parsed.calls, &sample.expected)
        };
        v.hallucinated_args = hallucinated(sample, &parsed.calls);
        v.errors = score.details.errors;
        if let Some((category, verdict)) = bfcl::check_sample(sample, text) {
            v.bfcl = Some(BfclResult { category, verdict });
        }
        v
    }

    /// Judge every sample against its prediction (looked up by id), using all cores.
    pub fn evaluate(&self, samples: &[Sample], predictions: &Predictions, split: Option<&str>) -> Vec<Verdict> {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(16);
        let chunk = samples.len().div_ceil(threads).max(64);
        std::thread::scope(|s| {
            let handles: Vec<_> = samples
                .chunks(chunk)
                .map(|part| {
                    s.spawn(move || {
                        part.iter()
                            .map(|x| self.verdict(x, predictions.get(&x.id), split))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            let mut out = Vec::with_capacity(samples.len());
            for (h, part) in handles.into_iter().zip(samples.chunks(chunk)) {
                match h.join() {
                    Ok(vs) => out.extend(vs),
                    // A panic inside scoring is a bug; judge that chunk on this thread
                    // instead of losing it.
                    Err(_) => out.extend(part.iter().map(|x| self.verdict(x, predictions.get(&x.id), split))),
                }
            }
            out
        })
    }
}

/// The predicted calls name the expected functions, as a multiset (order and arguments
/// aside).
fn same_names(calls: &[ToolCall], expected: &Expected) -> bool {
    let mut want: Vec<&str> = match expected {
        Expected::Text(_) => Vec::new(),
        Expected::Calls(c) => c.iter().map(|c| c.name.as_str()).collect(),
        Expected::Bfcl(c) => c.iter().map(|c| c.name.as_str()).collect(),
    };
    let mut got: Vec<&str> = calls.iter().map(|c| c.name.as_str()).collect();
    want.sort_unstable();
    got.sort_unstable();
    want == got
}

/// Predicted arguments the offered tool does not declare (`tool.arg`); tools without
/// declared properties accept anything and report nothing.
fn hallucinated(sample: &Sample, calls: &[ToolCall]) -> Vec<String> {
    let mut out = Vec::new();
    for c in calls {
        let Some(tool) = sample.tool(&c.name) else {
            continue;
        };
        let Some(props) = tool.parameters.get("properties").and_then(Value::as_object) else {
            continue;
        };
        if props.is_empty() {
            continue;
        }
        if let Some(args) = c.arguments.as_object() {
            for k in args.keys() {
                if !props.contains_key(k) {
                    out.push(format!("{}.{}", c.name, k));
                }
            }
        }
    }
    out
}

/// Strict JSON equality: same types (numbers by value, so `3 == 3.0`), strings byte-equal,
/// arrays in order, objects with the same key set.
pub fn exact_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => x.as_f64() == y.as_f64() && x.as_f64().is_some(),
        },
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| exact_eq(p, q)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| exact_eq(v, w)))
        }
        _ => a == b,
    }
}

/// Do the predicted calls equal the expected ones exactly, as a multiset?
fn exact_match(pred: &[ToolCall], expected: &Expected) -> bool {
    match expected {
        Expected::Text(_) => pred.is_empty(),
        Expected::Calls(exp) => {
            pred.len() == exp.len()
                && perfect_matching(pred.len(), |i, j| {
                    pred[i].name == exp[j].name && exact_eq(&pred[i].arguments, &exp[j].arguments)
                })
        }
        Expected::Bfcl(gt) => {
            pred.len() == gt.len()
                && perfect_matching(pred.len(), |i, j| {
                    let (p, g) = (&pred[i], &gt[j]);
                    let Some(args) = p.arguments.as_object() else {
                        return false;
                    };
                    p.name == g.name
                        && args.keys().all(|k| g.allowed.contains_key(k))
                        && g.allowed.iter().all(|(k, allowed)| {
                            let list = allowed.as_array().map(Vec::as_slice).unwrap_or(&[]);
                            match args.get(k) {
                                None => list.iter().any(|x| x.as_str() == Some("")),
                                Some(v) => list.iter().any(|x| exact_allowed(v, x)),
                            }
                        })
                })
        }
    }
}

/// Is `v` exactly one BFCL allowed value `a`? Dict values in BFCL ground truth are maps
/// of allowed lists (`{"adults": [2], "note": ["", "x"]}`), also inside lists of dicts.
fn exact_allowed(v: &Value, a: &Value) -> bool {
    if exact_eq(v, a) {
        return true;
    }
    match (v, a) {
        (Value::Object(vm), Value::Object(am)) if am.values().all(Value::is_array) => {
            vm.keys().all(|k| am.contains_key(k))
                && am.iter().all(|(k, allowed)| {
                    let list = allowed.as_array().map(Vec::as_slice).unwrap_or(&[]);
                    match vm.get(k) {
                        None => list.iter().any(|x| x.as_str() == Some("")),
                        Some(x) => list.iter().any(|y| exact_allowed(x, y)),
                    }
                })
        }
        (Value::Array(vs), Value::Array(items)) => {
            vs.len() == items.len() && vs.iter().zip(items).all(|(x, y)| exact_allowed(x, y))
        }
        _ => false,
    }
}

/// Is there a perfect matching in the n x n bipartite graph `edge`? (Kuhn's algorithm;
/// call lists are short.)
fn perfect_matching(n: usize, edge: impl Fn(usize, usize) -> bool) -> bool {
    fn augment(i: usize, adj: &[Vec<usize>], seen: &mut [bool], owner: &mut [Option<usize>]) -> bool {
        for &j in &adj[i] {
            if seen[j] {
                continue;
            }
            seen[j] = true;
            if owner[j].is_none_or(|k| augment(k, adj, seen, owner)) {
                owner[j] = Some(i);
                return true;
            }
        }
        false
    }
    let adj: Vec<Vec<usize>> = (0..n).map(|i| (0..n).filter(|&j| edge(i, j)).collect()).collect();
    let mut owner = vec![None; n];
    (0..n).all(|i| augment(i, &adj, &mut vec![false; n], &mut owner))
}

/// Ids of predictions that match no sample (typos, wrong dataset): reported, not scored.
pub fn unmatched_predictions(samples: &[Sample], predictions: &Predictions) -> Vec<String> {
    let ids: HashSet<&str> = samples.iter().map(|s| s.id.as_str()).collect();
    let mut out: Vec<String> = predictions.ids().filter(|id| !ids.contains(id)).map(str::to_string).collect();
    out.sort();
    out
}
