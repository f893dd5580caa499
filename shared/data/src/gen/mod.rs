//! Deterministic synthetic xLAM-style data (`gen-data`).
//!
//! [`generate`] produces records in the exact shape of the published
//! `xlam_function_calling_60k.json` (`tools`/`answers` are JSON-encoded
//! strings with Python `json.dumps` separators and ASCII escaping), using
//! only the main (non-held-out) catalogue tools; [`generate_heldout`] uses
//! only the held-out tools. Everything derives from a ChaCha8 stream seeded
//! by `seed`, so the same `(n, seed)` always yields byte-identical output.
//!
//! Argument values are always spelled out in the query (city, number,
//! date, ...) so a model can learn to copy them.

pub mod catalogue;
pub mod world;

use std::io::Write;

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

use catalogue::{is_heldout, Gen, Tool, CATALOGUE, NO_TOOL_QUERIES};

/// One record in the published xLAM format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct XlamRecord {
    pub id: u64,
    pub query: String,
    /// JSON-encoded list of `{name, arguments}`; `"[]"` when no tool fits.
    pub answers: String,
    /// JSON-encoded list of `{name, description, parameters}` (flat xLAM
    /// parameter format).
    pub tools: String,
}

/// Which tool pool a generation run draws from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pool {
    Main,
    Heldout,
}

fn pool(p: Pool) -> Vec<&'static Tool> {
    (0..CATALOGUE.len())
        .filter(|&i| is_heldout(i) == (p == Pool::Heldout))
        .map(|i| &CATALOGUE[i])
        .collect()
}

/// `n` records from the main tool pool (held-out tools never appear).
pub fn generate(n: usize, seed: u64) -> Vec<XlamRecord> {
    generate_from(Pool::Main, n, seed)
}

/// `n` records that use only the held-out tools (calls and distractors).
pub fn generate_heldout(n: usize, seed: u64) -> Vec<XlamRecord> {
    generate_from(Pool::Heldout, n, seed ^ 0x4845_4c44_4f55_5421)
}

fn generate_from(p: Pool, n: usize, seed: u64) -> Vec<XlamRecord> {
    let tools = pool(p);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|i| gen_record(&mut rng, &tools, i as u64)).collect()
}

/// Serializes records as the published file does: a JSON array, one record
/// object per element, keys in the order `id, query, answers, tools`.
pub fn write_xlam_json<W: Write>(records: &[XlamRecord], mut out: W) -> std::io::Result<()> {
    out.write_all(b"[\n")?;
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            out.write_all(b",\n")?;
        }
        out.write_all(b"  ")?;
        serde_json::to_writer(&mut out, r).map_err(std::io::Error::other)?;
    }
    out.write_all(b"\n]\n")?;
    out.flush()
}

// ---------------------------------------------------------------------------
// Python-compatible JSON (json.dumps defaults: ", " / ": ", ensure_ascii)
// ---------------------------------------------------------------------------

/// Serializes like Python's `json.dumps(v)` with default arguments.
pub fn py_json(v: &Value) -> String {
    let mut s = String::new();
    py_write(v, &mut s);
    s
}

fn py_write(v: &Value, s: &mut String) {
    match v {
        Value::Null => s.push_str("null"),
        Value::Bool(b) => s.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => s.push_str(&n.to_string()),
        Value::String(t) => py_str(t, s),
        Value::Array(a) => {
            s.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                py_write(x, s);
            }
            s.push(']');
        }
        Value::Object(o) => {
            s.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                py_str(k, s);
                s.push_str(": ");
                py_write(x, s);
            }
            s.push('}');
        }
    }
}

fn py_str(t: &str, s: &mut String) {
    s.push('"');
    for ch in t.chars() {
        match ch {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            '\u{08}' => s.push_str("\\b"),
            '\u{0c}' => s.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for u in c.encode_utf16(&mut buf) {
                    s.push_str(&format!("\\u{:04x}", u));
                }
            }
            c => s.push(c),
        }
    }
    s.push('"');
}

// ---------------------------------------------------------------------------
// Record generation
// ---------------------------------------------------------------------------

/// The xLAM flat tool definition of a catalogue tool.
pub fn tool_json(t: &Tool) -> Value {
    let mut params = Map::new();
    for p in t.params {
        let mut spec = Map::new();
        spec.insert("description".into(), Value::String(p.description.into()));
        spec.insert("type".into(), Value::String(p.ty.into()));
        if let Some(d) = p.default {
            spec.insert(
                "default".into(),
                serde_json::from_str(d).unwrap_or_else(|_| Value::String(d.into())),
            );
        }
        params.insert(p.name.into(), Value::Object(spec));
    }
    let mut m = Map::new();
    m.insert("name".into(), Value::String(t.name.into()));
    m.insert("description".into(), Value::String(t.description.into()));
    m.insert("parameters".into(), Value::Object(params));
    Value::Object(m)
}

fn num(x: f64) -> Value {
    Number::from_f64(x).map(Value::Number).unwrap_or(Value::Null)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn pick<'a>(rng: &mut ChaCha8Rng, xs: &'a [&'a str]) -> &'a str {
    xs.choose(rng).copied().unwrap_or("")
}

fn gen_value(rng: &mut ChaCha8Rng, g: Gen, args: &Map<String, Value>) -> Value {
    let date = |rng: &mut ChaCha8Rng| {
        let base = world::days_from_civil(2025, 1, 1);
        world::format_date(base + rng.random_range(0..730))
    };
    match g {
        Gen::City => Value::String(world::CITIES[rng.random_range(0..world::CITIES.len())].name.into()),
        Gen::CityOther(other) => {
            let avoid = args.get(other).and_then(|v| v.as_str()).unwrap_or("");
            loop {
                let c = world::CITIES[rng.random_range(0..world::CITIES.len())].name;
                if c != avoid {
                    return Value::String(c.into());
                }
            }
        }
        Gen::Date => Value::String(date(rng)),
        Gen::DateAfter(other, lo, hi) => {
            let base = args
                .get(other)
                .and_then(|v| v.as_str())
                .and_then(world::parse_date)
                .unwrap_or_else(|| world::days_from_civil(2025, 6, 1));
            Value::String(world::format_date(base + rng.random_range(lo..=hi)))
        }
        Gen::Time => {
            let h = rng.random_range(7..=20);
            let m = [0, 15, 30, 45][rng.random_range(0..4)];
            Value::String(format!("{h:02}:{m:02}"))
        }
        Gen::Int(lo, hi) => Value::from(rng.random_range(lo..=hi)),
        Gen::IntNonZero(lo, hi) => loop {
            let x = rng.random_range(lo..=hi);
            if x != 0 {
                return Value::from(x);
            }
        },
        Gen::IntChoice(xs) => Value::from(xs[rng.random_range(0..xs.len().max(1)).min(xs.len().saturating_sub(1))]),
        Gen::Float(lo, hi) => {
            // Mix of whole numbers and 1-2 decimals, like real queries.
            let x = rng.random_range(lo..hi);
            match rng.random_range(0..3) {
                0 => num(x.round().max(lo.ceil())),
                1 => num((x * 10.0).round() / 10.0),
                _ => num(round2(x)),
            }
        }
        Gen::Pick(xs) => Value::String(pick(rng, xs).into()),
        Gen::PickOther(xs, other) => {
            let avoid = args.get(other).and_then(|v| v.as_str()).unwrap_or("");
            let choices: Vec<&str> = xs.iter().copied().filter(|x| *x != avoid).collect();
            Value::String(pick(rng, &choices).into())
        }
        Gen::Email => {
            let p = pick(rng, world::PEOPLE);
            let d = pick(rng, world::EMAIL_DOMAINS);
            Value::String(format!("{p}@{d}"))
        }
        Gen::Phone => Value::String(format!(
            "+1-555-{:03}-{:04}",
            rng.random_range(100..1000),
            rng.random_range(0..10000)
        )),
        Gen::Sku => Value::String(format!("SKU-{:05}", rng.random_range(10000..100000))),
        Gen::OrderId => Value::String(format!("ORD-{:06}", rng.random_range(100000..1000000))),
        Gen::FlightNo => {
            let air = ["LH", "BA", "AF", "UA", "DL", "AA", "JL", "EK", "IB", "KL"];
            Value::String(format!("{}{}", air[rng.random_range(0..air.len())], rng.random_range(100..10000)))
        }
        Gen::IntList(lo, hi) => {
            let n = rng.random_range(3..=8);
            Value::Array((0..n).map(|_| Value::from(rng.random_range(lo..=hi))).collect())
        }
        Gen::FloatList(lo, hi) => {
            let n = rng.random_range(3..=8);
            Value::Array(
                (0..n)
                    .map(|_| {
                        let x = rng.random_range(lo..hi);
                        if rng.random_bool(0.5) {
                            num(x.round())
                        } else {
                            num((x * 10.0).round() / 10.0)
                        }
                    })
                    .collect(),
            )
        }
        Gen::StrList(xs) => {
            let n = rng.random_range(2..=4).min(xs.len());
            let mut v: Vec<&str> = xs.to_vec();
            v.shuffle(rng);
            Value::Array(v[..n].iter().map(|s| Value::String((*s).into())).collect())
        }
        Gen::TempFor(scale) => {
            let (lo, hi): (f64, f64) = match args.get(scale).and_then(|v| v.as_str()) {
                Some("kelvin") => (233.0, 318.0),
                Some("fahrenheit") => (-40.0, 115.0),
                _ => (-40.0, 45.0),
            };
            let x = rng.random_range(lo..hi);
            if rng.random_bool(0.5) {
                num(x.round())
            } else {
                num((x * 10.0).round() / 10.0)
            }
        }
        Gen::OrderItems => {
            let n = rng.random_range(1..=3);
            Value::Array(
                (0..n)
                    .map(|_| {
                        let mut m = Map::new();
                        m.insert(
                            "product_id".into(),
                            Value::String(format!("SKU-{:05}", rng.random_range(10000..100000))),
                        );
                        m.insert("quantity".into(), Value::from(rng.random_range(1..=5)));
                        Value::Object(m)
                    })
                    .collect(),
            )
        }
    }
}

/// How an argument value is spelled in a query.
pub fn render_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        Value::Array(a) => {
            let parts: Vec<String> = a
                .iter()
                .map(|x| match x {
                    Value::Object(o) => format!(
                        "{} x {}",
                        o.get("quantity").map(render_value).unwrap_or_default(),
                        o.get("product_id").map(render_value).unwrap_or_default()
                    ),
                    other => render_value(other),
                })
                .collect();
            if a.iter().any(|x| x.is_object()) {
                parts.join(" and ")
            } else {
                parts.join(", ")
            }
        }
        Value::Object(_) => v.to_string(),
    }
}

/// Parsed template: text pieces, placeholders and fixed arguments.
pub struct Template {
    /// Placeholder names in order of appearance.
    pub placeholders: Vec<String>,
    /// `[name=json]` fixed arguments.
    pub fixed: Vec<(String, Value)>,
}

/// Parses a template's placeholders and fixed arguments.
pub fn parse_template(t: &str) -> Template {
    let mut placeholders = Vec::new();
    let mut fixed = Vec::new();
    let mut rest = t;
    while let Some(i) = rest.find(['{', '[']) {
        let open = rest.as_bytes()[i];
        let close = if open == b'{' { '}' } else { ']' };
        let after = &rest[i + 1..];
        match after.find(close) {
            Some(j) => {
                let inner = &after[..j];
                if open == b'{' {
                    placeholders.push(inner.to_string());
                } else if let Some((k, v)) = inner.split_once('=') {
                    let val = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
                    fixed.push((k.to_string(), val));
                }
                rest = &after[j + 1..];
            }
            None => break,
        }
    }
    Template { placeholders, fixed }
}

/// Renders one query for `tool` with a random template; returns the query
/// and the call arguments (exactly the params mentioned in the query plus
/// fixed ones).
fn gen_call(rng: &mut ChaCha8Rng, tool: &Tool, intl: bool) -> (String, Map<String, Value>) {
    let templates = if intl && !tool.intl.is_empty() { tool.intl } else { tool.templates };
    let tpl = templates[rng.random_range(0..templates.len())];
    let parsed = parse_template(tpl);
    // Independent parameters first, then those that depend on another
    // (CityOther, DateAfter, PickOther, TempFor); then restore the
    // declaration order so arguments read naturally.
    let mut gen = Map::new();
    for dependent in [false, true] {
        for p in tool.params {
            let needed = !p.optional || parsed.placeholders.iter().any(|n| n == p.name);
            if needed && p.gen.depends_on().is_some() == dependent {
                let v = gen_value(rng, p.gen, &gen);
                gen.insert(p.name.into(), v);
            }
        }
    }
    let mut all = Map::new();
    for p in tool.params {
        if let Some(v) = gen.remove(p.name) {
            all.insert(p.name.into(), v);
        }
    }
    for (k, v) in parsed.fixed {
        all.insert(k, v);
    }
    // Render.
    let mut q = String::with_capacity(tpl.len() + 32);
    let mut rest = tpl;
    while let Some(i) = rest.find(['{', '[']) {
        q.push_str(&rest[..i]);
        let open = rest.as_bytes()[i];
        let close = if open == b'{' { '}' } else { ']' };
        let after = &rest[i + 1..];
        match after.find(close) {
            Some(j) => {
                if open == b'{' {
                    q.push_str(&all.get(&after[..j]).map(render_value).unwrap_or_default());
                }
                rest = &after[j + 1..];
            }
            None => {
                q.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    q.push_str(rest);
    (q.trim().to_string(), all)
}

const CONNECTORS: &[&str] = &["Also, ", "Additionally, ", "And ", "Then ", "After that, ", "Plus, ", "Next, "];

fn join_queries(rng: &mut ChaCha8Rng, parts: &[String]) -> String {
    let mut out = String::new();
    for (i, p) in parts.iter().enumerate() {
        if i == 0 {
            out.push_str(p);
            continue;
        }
        out.push(' ');
        out.push_str(pick(rng, CONNECTORS));
        // Lower-case the first letter unless it starts an acronym/name.
        let mut chars = p.chars();
        match (chars.next(), chars.next()) {
            (Some(a), Some(b)) if a.is_ascii_uppercase() && b.is_ascii_lowercase() && a != 'I' => {
                out.push(a.to_ascii_lowercase());
                out.push_str(&p[1..]);
            }
            _ => out.push_str(p),
        }
    }
    out
}

fn call_json(name: &str, args: Map<String, Value>) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), Value::String(name.into()));
    m.insert("arguments".into(), Value::Object(args));
    Value::Object(m)
}

fn gen_record(rng: &mut ChaCha8Rng, pool: &[&'static Tool], id: u64) -> XlamRecord {
    let kind = rng.random_range(0.0..1.0);
    let mut used: Vec<&'static Tool> = Vec::new();
    let mut calls: Vec<Value> = Vec::new();
    let query;
    if kind < 0.08 {
        // No tool fits: offer only tools unrelated to general knowledge.
        query = pick(rng, NO_TOOL_QUERIES).to_string();
    } else {
        let r = rng.random_range(0.0..1.0);
        let first = pool[rng.random_range(0..pool.len())];
        if r < 0.55 {
            let intl = rng.random_bool(0.15);
            let (q, args) = gen_call(rng, first, intl);
            used.push(first);
            calls.push(call_json(first.name, args));
            query = q;
        } else if r < 0.80 {
            // Parallel calls of one function with different arguments.
            let k = if rng.random_bool(0.7) { 2 } else { 3 };
            let mut parts = Vec::new();
            let mut seen: Vec<Map<String, Value>> = Vec::new();
            for _ in 0..k {
                for _attempt in 0..6 {
                    let (q, args) = gen_call(rng, first, false);
                    if !seen.contains(&args) {
                        seen.push(args.clone());
                        parts.push(q);
                        calls.push(call_json(first.name, args));
                        break;
                    }
                }
            }
            used.push(first);
            query = join_queries(rng, &parts);
        } else {
            // Several different functions.
            let k = if rng.random_bool(0.7) { 2 } else { 3 };
            let mut picked = vec![first];
            let same_cat = rng.random_bool(0.4);
            let mut guard = 0;
            while picked.len() < k && guard < 100 {
                guard += 1;
                let t = pool[rng.random_range(0..pool.len())];
                if picked.iter().any(|p| p.name == t.name) {
                    continue;
                }
                if same_cat && t.category != first.category && guard < 30 {
                    continue;
                }
                picked.push(t);
            }
            let mut parts = Vec::new();
            for t in &picked {
                let (q, args) = gen_call(rng, t, false);
                parts.push(q);
                calls.push(call_json(t.name, args));
            }
            used = picked;
            query = join_queries(rng, &parts);
        }
    }
    // Distractors: 1-5 tools not called; for no-tool records never a search
    // tool (a web search can answer almost anything).
    let n_distract = rng.random_range(1..=5);
    let mut offered: Vec<&'static Tool> = used.clone();
    let mut guard = 0;
    let target = (used.len() + n_distract).min(pool.len());
    while offered.len() < target && guard < 200 {
        guard += 1;
        let t = pool[rng.random_range(0..pool.len())];
        if offered.iter().any(|o| o.name == t.name) {
            continue;
        }
        if calls.is_empty() && t.category == "search" {
            continue;
        }
        offered.push(t);
    }
    if offered.is_empty() {
        if let Some(t) = pool.iter().find(|t| t.category != "search").or(pool.first()) {
            offered.push(t);
        }
    }
    offered.shuffle(rng);
    let tools = Value::Array(offered.iter().map(|t| tool_json(t)).collect());
    XlamRecord {
        id,
        query,
        answers: py_json(&Value::Array(calls)),
        tools: py_json(&tools),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn py_json_matches_python() {
        let v: Value = serde_json::from_str(r#"{"a": [1, 2.5, "é\n"], "b": {"c": null, "d": true}}"#)
            .unwrap_or(Value::Null);
        assert_eq!(py_json(&v), r#"{"a": [1, 2.5, "\u00e9\n"], "b": {"c": null, "d": true}}"#);
        assert_eq!(py_json(&Value::String("中".into())), r#""\u4e2d""#);
        assert_eq!(py_json(&Value::String("😀".into())), r#""\ud83d\ude00""#);
    }

    #[test]
    fn templates_are_consistent() {
        for t in CATALOGUE {
            for tpl in t.templates.iter().chain(t.intl.iter()) {
                let p = parse_template(tpl);
                for name in &p.placeholders {
                    let param = t.params.iter().find(|x| x.name == name);
                    assert!(param.is_some(), "{}: unknown placeholder {name} in {tpl:?}", t.name);
                    if let Some(param) = param {
                        assert!(
                            !matches!(param.gen, Gen::Pick(xs) if xs.is_empty()),
                            "{}: placeholder {name} has no generator",
                            t.name
                        );
                    }
                }
                for req in t.params.iter().filter(|p| !p.optional) {
                    assert!(
                        p.placeholders.iter().any(|n| n == req.name),
                        "{}: template {tpl:?} misses required {}",
                        t.name,
                        req.name
                    );
                }
                for (k, _) in &p.fixed {
                    assert!(t.params.iter().any(|x| x.name == k), "{}: fixed {k}", t.name);
                }
            }
        }
    }

    #[test]
    fn catalogue_shape() {
        assert!(CATALOGUE.len() >= 60);
        assert!(catalogue::categories().len() >= 12);
        let held = catalogue::heldout_names();
        assert_eq!(held.len(), catalogue::categories().len());
        let mut names: Vec<_> = CATALOGUE.iter().map(|t| t.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), CATALOGUE.len(), "duplicate tool names");
    }

    #[test]
    fn deterministic() {
        assert_eq!(generate(50, 7), generate(50, 7));
        assert_ne!(generate(50, 7), generate(50, 8));
        assert_eq!(generate(20, 1).len(), 20);
    }
}
