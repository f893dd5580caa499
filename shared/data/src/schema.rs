//! Tool-parameter schema conversion (xLAM flat Python types, BFCL types) to
//! standard JSON Schema, and a cache of compiled validators.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{json, Map, Value};

/// Converts xLAM's flat parameter map
/// (`{"p": {"description": .., "type": "str, optional", "default": ..}}`)
/// to a JSON Schema object.
///
/// Python type strings are parsed (`List[Dict[str, Any]]`, `Optional[int]`,
/// `Union[int, float]`, `int | None`, `Tuple[int, int]`, `Literal["a"]`);
/// unknown type names become `{}` (anything) rather than a reject, because
/// xLAM contains many ad-hoc names and an over-strict schema would punish
/// correct answers. A `, optional` suffix (or `Optional[..]`) marks the
/// parameter as not required. `default` is kept as an annotation but never
/// validated (it is often of the wrong type in the source data).
///
/// Parameters that already look like a JSON Schema object
/// (`{"type": "object", "properties": ..}`) are normalized instead.
pub fn xlam_params_to_schema(params: &Value) -> Result<Value, String> {
    let obj = match params {
        Value::Null => return Ok(json!({"type": "object", "properties": {}})),
        Value::Object(o) => o,
        other => return Err(format!("parameters must be an object, got {}", kind(other))),
    };
    if looks_like_json_schema(obj) {
        return normalize_json_schema(params);
    }
    let mut props = Map::new();
    let mut required = Vec::new();
    for (pname, spec) in obj {
        if pname.is_empty() {
            return Err("empty parameter name".into());
        }
        let spec = match spec {
            Value::Object(s) => s,
            other => {
                return Err(format!(
                    "parameter {pname:?} spec must be an object, got {}",
                    kind(other)
                ))
            }
        };
        let (mut schema, optional) = match spec.get("type") {
            None | Some(Value::Null) => (Map::new(), false),
            Some(Value::String(t)) => {
                let (s, opt) = python_type_to_schema(t);
                match s {
                    Value::Object(m) => (m, opt),
                    _ => (Map::new(), opt),
                }
            }
            // Some records already carry a JSON-Schema-ish type.
            Some(other) => match normalize_json_schema(&json!({ "type": other }))? {
                Value::Object(m) => (m, false),
                _ => (Map::new(), false),
            },
        };
        if let Some(Value::String(d)) = spec.get("description") {
            schema.insert("description".into(), Value::String(d.clone()));
        }
        if let Some(e @ Value::Array(_)) = spec.get("enum") {
            schema.insert("enum".into(), e.clone());
        }
        if let Some(d) = spec.get("default") {
            schema.insert("default".into(), d.clone());
        }
        let explicit_optional = matches!(spec.get("required"), Some(Value::Bool(false)))
            || matches!(spec.get("optional"), Some(Value::Bool(true)));
        if !(optional || explicit_optional) {
            required.push(Value::String(pname.clone()));
        }
        props.insert(pname.clone(), Value::Object(schema));
    }
    let mut out = Map::new();
    out.insert("type".into(), Value::String("object".into()));
    out.insert("properties".into(), Value::Object(props));
    if !required.is_empty() {
        out.insert("required".into(), Value::Array(required));
    }
    Ok(Value::Object(out))
}

fn looks_like_json_schema(obj: &Map<String, Value>) -> bool {
    let typed_object = matches!(obj.get("type"), Some(Value::String(t)) if t == "object" || t == "dict");
    let only_keywords = matches!(obj.get("properties"), Some(Value::Object(_)))
        && obj.keys().all(|k| {
            matches!(
                k.as_str(),
                "type" | "properties" | "required" | "additionalProperties" | "$schema"
            )
        });
    typed_object || only_keywords
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

// ---------------------------------------------------------------------------
// Python type-string parser
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Open,
    Close,
    Comma,
    Pipe,
    Ellipsis,
    Other,
}

fn tokenize(s: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    // Bound the work: type strings are short; anything huge is garbage.
    let limit = b.len().min(4096);
    while i < limit {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'[' | b'(' => {
                out.push(Tok::Open);
                i += 1
            }
            b']' | b')' => {
                out.push(Tok::Close);
                i += 1
            }
            b',' => {
                out.push(Tok::Comma);
                i += 1
            }
            b'|' => {
                out.push(Tok::Pipe);
                i += 1
            }
            b'.' if b[i..limit].starts_with(b"...") => {
                out.push(Tok::Ellipsis);
                i += 3
            }
            b'"' | b'\'' => {
                let q = c;
                let start = i + 1;
                let mut j = start;
                while j < limit && b[j] != q {
                    j += 1;
                }
                out.push(Tok::Str(s.get(start..j).unwrap_or("").to_string()));
                i = j + 1;
            }
            c if c.is_ascii_alphanumeric() || c == b'_' || c == b'.' => {
                let start = i;
                while i < limit && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
                    i += 1;
                }
                out.push(Tok::Ident(s.get(start..i).unwrap_or("").to_string()));
            }
            _ => {
                out.push(Tok::Other);
                // Skip one UTF-8 char.
                i += 1;
                while i < limit && (b[i] & 0xC0) == 0x80 {
                    i += 1;
                }
            }
        }
    }
    out
}

struct TypeParser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
}

/// Parsed Python type.
enum PyType {
    Named(String, Vec<PyType>),
    Literal(Value),
    Union(Vec<PyType>),
    Ellipsis,
}

impl TypeParser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn union(&mut self) -> Option<PyType> {
        let first = self.term()?;
        let mut alts = vec![first];
        while self.peek() == Some(&Tok::Pipe) {
            self.pos += 1;
            match self.term() {
                Some(t) => alts.push(t),
                None => break,
            }
        }
        if alts.len() == 1 {
            alts.pop()
        } else {
            Some(PyType::Union(alts))
        }
    }

    fn term(&mut self) -> Option<PyType> {
        if self.depth > 32 {
            return None;
        }
        match self.toks.get(self.pos).cloned()? {
            Tok::Ident(name) => {
                self.pos += 1;
                let mut args = Vec::new();
                if self.peek() == Some(&Tok::Open) {
                    self.pos += 1;
                    self.depth += 1;
                    loop {
                        match self.peek() {
                            None => break,
                            Some(Tok::Close) => {
                                self.pos += 1;
                                break;
                            }
                            Some(Tok::Comma) => {
                                self.pos += 1;
                            }
                            Some(Tok::Open) => {
                                // Nested bracket list, e.g. Callable[[int], str].
                                self.pos += 1;
                                self.depth += 1;
                                while let Some(t) = self.peek() {
                                    if *t == Tok::Close {
                                        break;
                                    }
                                    let _ = self.union();
                                    // Skip a separator (or an unparsable token).
                                    if self.peek() != Some(&Tok::Close) {
                                        self.pos += 1;
                                    }
                                }
                                self.pos += 1;
                                self.depth -= 1;
                                args.push(PyType::Named("any".into(), vec![]));
                            }
                            Some(_) => match self.union() {
                                Some(t) => args.push(t),
                                None => self.pos += 1,
                            },
                        }
                    }
                    self.depth -= 1;
                }
                Some(PyType::Named(name, args))
            }
            Tok::Str(s) => {
                self.pos += 1;
                Some(PyType::Literal(Value::String(s)))
            }
            Tok::Ellipsis => {
                self.pos += 1;
                Some(PyType::Ellipsis)
            }
            _ => None,
        }
    }
}

/// Parses one Python-style type string. Returns the JSON Schema and whether
/// the parameter is optional (`, optional` / `, default=..` suffix or
/// `Optional[..]`). Never fails: unknown types map to `{}`.
pub fn python_type_to_schema(type_str: &str) -> (Value, bool) {
    let toks = tokenize(type_str);
    let mut p = TypeParser {
        toks,
        pos: 0,
        depth: 0,
    };
    let parsed = p.union();
    // Anything after the main type: look for "optional"/"default".
    let mut optional = p.toks[p.pos.min(p.toks.len())..].iter().any(|t| {
        matches!(t, Tok::Ident(s) if s.eq_ignore_ascii_case("optional") || s.eq_ignore_ascii_case("default"))
    });
    let schema = match parsed {
        None => json!({}),
        Some(t) => {
            if let PyType::Named(n, _) = &t {
                if n.eq_ignore_ascii_case("optional") {
                    optional = true;
                }
            }
            to_schema(&t, 0)
        }
    };
    (schema, optional)
}

fn simple(t: &str) -> Value {
    json!({ "type": t })
}

fn to_schema(t: &PyType, depth: usize) -> Value {
    if depth > 16 {
        return json!({});
    }
    match t {
        PyType::Ellipsis => json!({}),
        PyType::Literal(v) => json!({ "const": v }),
        PyType::Union(alts) => union_schema(alts, depth),
        PyType::Named(name, args) => {
            let lname = name.to_ascii_lowercase();
            let base = lname.rsplit('.').next().unwrap_or(&lname);
            match base {
                "str" | "string" | "text" | "char" | "uuid" | "path" | "email" | "url" | "date"
                | "datetime" | "time" | "timedelta" | "bytes" => simple("string"),
                "int" | "integer" | "long" | "int32" | "int64" | "short" => simple("integer"),
                "float" | "double" | "number" | "decimal" | "numeric" | "real" | "float32"
                | "float64" => simple("number"),
                "bool" | "boolean" => simple("boolean"),
                "none" | "nonetype" | "null" => simple("null"),
                "list" | "array" | "sequence" | "iterable" | "set" | "frozenset" | "collection"
                | "deque" | "ndarray" => {
                    let mut m = Map::new();
                    m.insert("type".into(), "array".into());
                    if let Some(a) = args.first() {
                        let s = to_schema(a, depth + 1);
                        if s.as_object().is_some_and(|o| !o.is_empty()) {
                            m.insert("items".into(), s);
                        }
                    }
                    Value::Object(m)
                }
                "tuple" => {
                    let mut m = Map::new();
                    m.insert("type".into(), "array".into());
                    let variadic = args.iter().any(|a| matches!(a, PyType::Ellipsis));
                    if variadic || args.len() == 1 {
                        if let Some(a) = args.first() {
                            let s = to_schema(a, depth + 1);
                            if s.as_object().is_some_and(|o| !o.is_empty()) {
                                m.insert("items".into(), s);
                            }
                        }
                    } else if !args.is_empty() {
                        let items: Vec<Value> = args.iter().map(|a| to_schema(a, depth + 1)).collect();
                        m.insert("prefixItems".into(), Value::Array(items));
                    }
                    Value::Object(m)
                }
                "dict" | "mapping" | "object" | "map" | "hashmap" | "json" | "typeddict"
                | "mutablemapping" => {
                    let mut m = Map::new();
                    m.insert("type".into(), "object".into());
                    if let Some(v) = args.get(1) {
                        let s = to_schema(v, depth + 1);
                        if s.as_object().is_some_and(|o| !o.is_empty()) {
                            m.insert("additionalProperties".into(), s);
                        }
                    }
                    Value::Object(m)
                }
                "optional" => match args.first() {
                    Some(a) => union_schema_refs(&[to_schema(a, depth + 1), simple("null")]),
                    None => json!({}),
                },
                "union" => union_schema(args, depth),
                "literal" => {
                    let vals: Vec<Value> = args
                        .iter()
                        .filter_map(|a| match a {
                            PyType::Literal(v) => Some(v.clone()),
                            PyType::Named(n, _) => literal_ident(n),
                            _ => None,
                        })
                        .collect();
                    if vals.is_empty() {
                        json!({})
                    } else {
                        json!({ "enum": vals })
                    }
                }
                // Any, Callable, unknown names: accept anything.
                _ => json!({}),
            }
        }
    }
}

fn literal_ident(n: &str) -> Option<Value> {
    if let Ok(i) = n.parse::<i64>() {
        return Some(Value::from(i));
    }
    match n {
        "True" | "true" => Some(Value::Bool(true)),
        "False" | "false" => Some(Value::Bool(false)),
        "None" => Some(Value::Null),
        _ => Some(Value::String(n.to_string())),
    }
}

fn union_schema(alts: &[PyType], depth: usize) -> Value {
    let schemas: Vec<Value> = alts.iter().map(|a| to_schema(a, depth + 1)).collect();
    union_schema_refs(&schemas)
}

fn union_schema_refs(schemas: &[Value]) -> Value {
    if schemas.is_empty() {
        return json!({});
    }
    // Any member that accepts everything makes the union accept everything.
    if schemas.iter().any(|s| s.as_object().is_some_and(|o| o.is_empty())) {
        return json!({});
    }
    // All plain {"type": T}: merge into a type list.
    let mut types = Vec::new();
    let all_simple = schemas.iter().all(|s| {
        s.as_object().is_some_and(|o| {
            o.len() == 1
                && match o.get("type") {
                    Some(Value::String(t)) => {
                        if !types.contains(t) {
                            types.push(t.clone());
                        }
                        true
                    }
                    _ => false,
                }
        })
    });
    if all_simple {
        if types.len() == 1 {
            return simple(&types[0]);
        }
        return json!({ "type": types });
    }
    json!({ "anyOf": schemas })
}

// ---------------------------------------------------------------------------
// JSON Schema normalization (BFCL, OpenAI, ShareGPT tools)
// ---------------------------------------------------------------------------

/// Normalizes a JSON-Schema-like parameters object: BFCL type names
/// (`dict`, `float`, `tuple`, `any`, Java/JS names like `String`, `HashMap`)
/// become standard JSON Schema types; unknown type names are dropped (accept
/// anything). A missing top-level `type` becomes `object`.
pub fn normalize_json_schema(schema: &Value) -> Result<Value, String> {
    match schema {
        Value::Null => Ok(json!({"type": "object", "properties": {}})),
        Value::Object(_) => {
            let mut out = normalize_node(schema, 0);
            if let Value::Object(m) = &mut out {
                if !m.contains_key("type") {
                    m.insert("type".into(), "object".into());
                }
                match m.get("type") {
                    Some(Value::String(t)) if t == "object" => {}
                    _ => return Err("parameters schema must have type object".into()),
                }
                match m.get("required") {
                    None | Some(Value::Array(_)) => {}
                    Some(_) => {
                        m.remove("required");
                    }
                }
            }
            Ok(out)
        }
        other => Err(format!("parameters must be an object, got {}", kind(other))),
    }
}

fn map_type_name(t: &str) -> Option<&'static str> {
    Some(match t.to_ascii_lowercase().as_str() {
        "dict" | "object" | "hashmap" | "map" => "object",
        "float" | "number" | "double" | "decimal" => "number",
        "integer" | "int" | "long" | "short" => "integer",
        "string" | "str" | "char" => "string",
        "boolean" | "bool" => "boolean",
        "array" | "list" | "tuple" | "arraylist" | "set" => "array",
        "null" | "none" => "null",
        _ => return None,
    })
}

fn normalize_node(node: &Value, depth: usize) -> Value {
    let obj = match node {
        Value::Object(o) if depth < 32 => o,
        Value::Object(_) => return json!({}),
        // Non-object subschemas (e.g. `true`) are kept as they are valid
        // JSON Schema; anything else becomes "anything".
        Value::Bool(b) => return Value::Bool(*b),
        _ => return json!({}),
    };
    let mut out = Map::new();
    for (k, v) in obj {
        match k.as_str() {
            "type" => match v {
                Value::String(t) => {
                    if let Some(mt) = map_type_name(t) {
                        out.insert("type".into(), mt.into());
                    }
                }
                Value::Array(ts) => {
                    let mapped: Vec<Value> = ts
                        .iter()
                        .filter_map(|t| t.as_str().and_then(map_type_name))
                        .map(Value::from)
                        .collect();
                    if mapped.len() == ts.len() && !mapped.is_empty() {
                        out.insert("type".into(), Value::Array(mapped));
                    }
                }
                _ => {}
            },
            "properties" | "patternProperties" | "$defs" | "definitions" => {
                if let Value::Object(ps) = v {
                    let mut np = Map::new();
                    for (pk, pv) in ps {
                        np.insert(pk.clone(), normalize_node(pv, depth + 1));
                    }
                    out.insert(k.clone(), Value::Object(np));
                }
            }
            "items" | "additionalProperties" | "not" | "contains" | "additionalItems" => match v {
                Value::Array(a) if k == "items" => {
                    // Draft-4 style tuple items -> prefixItems.
                    out.insert(
                        "prefixItems".into(),
                        Value::Array(a.iter().map(|x| normalize_node(x, depth + 1)).collect()),
                    );
                }
                Value::Object(_) | Value::Bool(_) => {
                    out.insert(k.clone(), normalize_node(v, depth + 1));
                }
                _ => {}
            },
            "anyOf" | "oneOf" | "allOf" | "prefixItems" => {
                if let Value::Array(a) = v {
                    if !a.is_empty() {
                        out.insert(
                            k.clone(),
                            Value::Array(a.iter().map(|x| normalize_node(x, depth + 1)).collect()),
                        );
                    }
                }
            }
            "required" => {
                if let Value::Array(a) = v {
                    let names: Vec<Value> = a.iter().filter(|x| x.is_string()).cloned().collect();
                    out.insert("required".into(), Value::Array(names));
                }
            }
            "enum" => {
                if let Value::Array(a) = v {
                    if !a.is_empty() {
                        out.insert("enum".into(), v.clone());
                    }
                }
            }
            // Validation keywords whose values must be numbers/strings of a
            // specific shape: keep only well-typed ones so that a sloppy
            // source schema cannot make the whole tool uncompilable.
            "minimum" | "maximum" | "exclusiveMinimum" | "exclusiveMaximum" | "multipleOf" => {
                if v.is_number() {
                    out.insert(k.clone(), v.clone());
                }
            }
            "minLength" | "maxLength" | "minItems" | "maxItems" | "minProperties"
            | "maxProperties" => {
                if v.as_u64().is_some() {
                    out.insert(k.clone(), v.clone());
                }
            }
            "pattern" => {
                if v.is_string() {
                    out.insert(k.clone(), v.clone());
                }
            }
            "$schema" | "$ref" | "$id" => {}
            // Annotations and anything else (description, default, format,
            // title, examples, x-*): keep as-is; they never affect validity.
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(out)
}

// ---------------------------------------------------------------------------
// Compiled-validator cache
// ---------------------------------------------------------------------------

/// Compiled JSON Schema validator, shared between threads.
pub type CompiledSchema = Arc<jsonschema::Validator>;

/// Cache of compiled validators keyed by a 128-bit structural hash of the
/// schema (SipHash-1-3 and FNV-1a over the same canonical byte stream, so a
/// collision needs both to collide at once), so every distinct tool schema
/// is compiled once per process no matter how many records or completions
/// use it. Compilation is ~100x more expensive than validation, and hashing
/// walks the value without serializing it, so lookups stay cheap enough to
/// do per completion.
///
/// Bounded: when it holds more than `capacity` schemas it is cleared (cheap
/// and good enough for datasets whose tools repeat heavily).
pub struct SchemaCache {
    map: Mutex<HashMap<u128, Result<CompiledSchema, String>>>,
    capacity: usize,
}

impl Default for SchemaCache {
    fn default() -> Self {
        Self::new()
    }
}

/// Two independent 64-bit multiply-rotate lanes over 8-byte words (fast;
/// schemas come from datasets, not from an adversary).
struct DualHasher {
    a: u64,
    b: u64,
}

impl DualHasher {
    #[inline]
    fn word(&mut self, w: u64) {
        self.a = (self.a.rotate_left(5) ^ w).wrapping_mul(0x517c_c1b7_2722_0a95);
        self.b = (self.b ^ w.rotate_left(23)).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(31);
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.word(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        self.word(u64::from_le_bytes(w) ^ ((bytes.len() as u64) << 56));
    }

    fn finish(&self) -> u128 {
        fn fmix(mut k: u64) -> u64 {
            k ^= k >> 33;
            k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
            k ^= k >> 33;
            k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
            k ^ (k >> 33)
        }
        ((fmix(self.a) as u128) << 64) | fmix(self.b) as u128
    }
}

fn hash_node(v: &Value, h: &mut DualHasher, depth: usize) {
    if depth > 128 {
        h.word(0x7e);
        return;
    }
    match v {
        Value::Null => h.word(0x6e),
        Value::Bool(b) => h.word(if *b { 0x74 } else { 0x66 }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                h.word(0x23);
                h.word(i as u64);
            } else if let Some(u) = n.as_u64() {
                h.word(0x24);
                h.word(u);
            } else {
                h.word(0x25);
                h.word(n.as_f64().unwrap_or(0.0).to_bits());
            }
        }
        Value::String(s) => {
            h.word(0x73);
            h.write(s.as_bytes());
        }
        Value::Array(a) => {
            h.word(0x5b00 | (a.len() as u64) << 16);
            for x in a {
                hash_node(x, h, depth + 1);
            }
        }
        Value::Object(o) => {
            h.word(0x7b00 | (o.len() as u64) << 16);
            for (k, x) in o {
                h.write(k.as_bytes());
                hash_node(x, h, depth + 1);
            }
        }
    }
}

/// 128-bit structural hash of a schema (key order matters, as it does for
/// the serialized form).
pub fn schema_hash(schema: &Value) -> u128 {
    let mut h = DualHasher {
        a: 0x243f_6a88_85a3_08d3,
        b: 0x1319_8a2e_0370_7344,
    };
    hash_node(schema, &mut h, 0);
    h.finish()
}

impl SchemaCache {
    /// A cache holding at most 65,536 schemas.
    pub fn new() -> Self {
        Self::with_capacity(65_536)
    }

    /// A cache holding at most `capacity` schemas.
    pub fn with_capacity(capacity: usize) -> Self {
        SchemaCache {
            map: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// The process-wide cache.
    pub fn global() -> &'static SchemaCache {
        static G: OnceLock<SchemaCache> = OnceLock::new();
        G.get_or_init(SchemaCache::new)
    }

    /// Number of cached schemas.
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The compiled validator for `schema` (compiling it on first use).
    /// Errors carry the compile error text (invalid schema).
    pub fn get(&self, schema: &Value) -> Result<CompiledSchema, String> {
        let key = schema_hash(schema);
        if let Ok(m) = self.map.lock() {
            if let Some(r) = m.get(&key) {
                return r.clone();
            }
        }
        // Compile outside the lock so other threads are not blocked.
        let compiled = jsonschema::validator_for(schema)
            .map(Arc::new)
            .map_err(|e| format!("invalid JSON Schema: {e}"));
        if let Ok(mut m) = self.map.lock() {
            if m.len() >= self.capacity {
                m.clear();
            }
            m.insert(key, compiled.clone());
        }
        compiled
    }
}

/// Validates `instance` with a compiled schema; on failure returns the
/// first error as `"<instance path>: <message>"`.
pub fn check(validator: &jsonschema::Validator, instance: &Value) -> Result<(), String> {
    if validator.is_valid(instance) {
        return Ok(());
    }
    match validator.validate(instance) {
        Ok(()) => Ok(()),
        Err(e) => {
            let path = e.instance_path().to_string();
            let path = if path.is_empty() { "/".to_string() } else { path };
            let mut msg = e.to_string();
            if msg.len() > 300 {
                let mut cut = 300;
                while !msg.is_char_boundary(cut) {
                    cut -= 1;
                }
                msg.truncate(cut);
                msg.push('…');
            }
            Err(format!("{path}: {msg}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> (Value, bool) {
        python_type_to_schema(s)
    }

    #[test]
    fn basic_types() {
        assert_eq!(t("str"), (json!({"type": "string"}), false));
        assert_eq!(t("int, optional"), (json!({"type": "integer"}), true));
        assert_eq!(t("float"), (json!({"type": "number"}), false));
        assert_eq!(t("bool, optional"), (json!({"type": "boolean"}), true));
        assert_eq!(t("Any"), (json!({}), false));
        assert_eq!(t("SomethingWeird"), (json!({}), false));
        assert_eq!(t(""), (json!({}), false));
    }

    #[test]
    fn containers() {
        assert_eq!(t("List[int]").0, json!({"type": "array", "items": {"type": "integer"}}));
        assert_eq!(t("List").0, json!({"type": "array"}));
        assert_eq!(
            t("List[Dict[str, Any]]").0,
            json!({"type": "array", "items": {"type": "object"}})
        );
        assert_eq!(
            t("Dict[str, int]").0,
            json!({"type": "object", "additionalProperties": {"type": "integer"}})
        );
        assert_eq!(
            t("Tuple[int, float]").0,
            json!({"type": "array", "prefixItems": [{"type": "integer"}, {"type": "number"}]})
        );
        assert_eq!(
            t("List[Tuple[int, int]]").0,
            json!({"type": "array", "items": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "integer"}]}})
        );
        assert_eq!(
            t("Tuple[int, ...]").0,
            json!({"type": "array", "items": {"type": "integer"}})
        );
    }

    #[test]
    fn unions() {
        assert_eq!(t("Union[int, float]").0, json!({"type": ["integer", "number"]}));
        assert_eq!(t("Optional[str]"), (json!({"type": ["string", "null"]}), true));
        assert_eq!(t("int | None").0, json!({"type": ["integer", "null"]}));
        assert_eq!(
            t("List[Union[int, float]]").0,
            json!({"type": "array", "items": {"type": ["integer", "number"]}})
        );
        assert_eq!(t("Union[int, Any]").0, json!({}));
        assert_eq!(t("Literal['a', 'b']").0, json!({"enum": ["a", "b"]}));
        assert!(t("str, default='x'").1);
    }

    #[test]
    fn garbage_never_panics() {
        for s in ["[[[", "]]]", "List[", "Dict[str,", "|||", "...", "'unterminated", "ü[ñ]", "Callable[[int], str]"] {
            let _ = t(s);
        }
        let deep = "List[".repeat(200);
        let _ = t(&deep);
    }

    #[test]
    fn xlam_params() {
        let p = json!({
            "type": {"description": "The type.", "type": "str", "default": "game"},
            "limit": {"description": "Max.", "type": "int, optional", "default": "10"}
        });
        let s = xlam_params_to_schema(&p).unwrap_or_default();
        assert_eq!(s["type"], "object");
        assert_eq!(s["properties"]["type"]["type"], "string");
        assert_eq!(s["properties"]["limit"]["default"], "10");
        assert_eq!(s["required"], json!(["type"]));
        let v = jsonschema::validator_for(&s);
        assert!(v.is_ok());
        assert!(xlam_params_to_schema(&json!([1])).is_err());
        assert!(xlam_params_to_schema(&json!({"a": 3})).is_err());
    }

    #[test]
    fn bfcl_normalize() {
        let p = json!({"type": "dict", "properties": {
            "x": {"type": "float"}, "t": {"type": "tuple", "items": {"type": "integer"}},
            "a": {"type": "any"}, "d": {"type": "dict", "properties": {"q": {"type": "String"}}}
        }, "required": ["x"]});
        let s = normalize_json_schema(&p).unwrap_or_default();
        assert_eq!(s["type"], "object");
        assert_eq!(s["properties"]["x"]["type"], "number");
        assert_eq!(s["properties"]["t"]["type"], "array");
        assert!(s["properties"]["a"].get("type").is_none());
        assert_eq!(s["properties"]["d"]["properties"]["q"]["type"], "string");
        assert!(jsonschema::validator_for(&s).is_ok());
    }

    #[test]
    fn cache_compiles_once() {
        let c = SchemaCache::new();
        let s = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let a = c.get(&s).ok();
        let b = c.get(&s).ok();
        assert!(a.is_some());
        assert!(Arc::ptr_eq(a.as_ref().unwrap_or_else(|| unreachable!()), b.as_ref().unwrap_or_else(|| unreachable!())));
        assert_eq!(c.len(), 1);
        let bad = json!({"type": 12});
        assert!(c.get(&bad).is_err());
        assert_ne!(schema_hash(&json!({"a": "bc"})), schema_hash(&json!({"ab": "c"})));
        assert_ne!(schema_hash(&json!([1, [2]])), schema_hash(&json!([[1], 2])));
        assert_eq!(schema_hash(&s), schema_hash(&s.clone()));
    }
}
