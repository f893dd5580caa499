//! Per-format record parsers and the streaming [`Loader`].
//!
//! Each parser turns one raw record into a [`Sample`] or a [`Reject`]; it
//! never panics on malformed input (all shapes are checked, nothing is
//! indexed blindly). Loaders only *convert*; [`crate::validate`] checks
//! answers against schemas.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{DataError, Reject, RejectReason};
use crate::sample::{BfclCall, Call, Expected, Format, Message, Role, Sample, Source, ToolDef};
use crate::schema::{normalize_json_schema, xlam_params_to_schema};
use crate::stream::RecordReader;

type R<T> = Result<T, Reject>;

fn rej(reason: RejectReason, detail: impl Into<String>, pos: u64) -> Reject {
    Reject::new(reason, detail, pos)
}

fn parse_json(raw: &str, pos: u64) -> R<Map<String, Value>> {
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(rej(RejectReason::InvalidJson, "record is not a JSON object", pos)),
        Err(e) => Err(rej(RejectReason::InvalidJson, e.to_string(), pos)),
    }
}

/// A string field, or a JSON value that is itself JSON-encoded in a string
/// (xLAM `tools`/`answers`, ShareGPT `tools`): both shapes are accepted.
fn embedded_json(v: &Value, what: RejectReason, field: &str, pos: u64) -> R<Value> {
    match v {
        Value::String(s) => {
            let t = s.trim();
            if t.is_empty() {
                return Ok(Value::Array(Vec::new()));
            }
            serde_json::from_str(t)
                .map_err(|e| rej(what, format!("{field}: embedded JSON does not parse: {e}"), pos))
        }
        other => Ok(other.clone()),
    }
}

fn id_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Parses a tool list. `xlam_flat` selects xLAM's flat parameter format;
/// otherwise parameters are JSON Schema (BFCL/OpenAI style, normalized).
/// Accepts OpenAI's `{"type": "function", "function": {...}}` wrapper.
fn parse_tools(v: &Value, xlam_flat: bool, pos: u64) -> R<Vec<ToolDef>> {
    let arr = match v {
        Value::Array(a) => a,
        Value::Object(_) => std::slice::from_ref(v),
        Value::Null => return Ok(Vec::new()),
        _ => return Err(rej(RejectReason::BadTools, "tools is not a list", pos)),
    };
    let mut out: Vec<ToolDef> = Vec::with_capacity(arr.len());
    for (i, t) in arr.iter().enumerate() {
        let t = match t {
            Value::Object(o) => match o.get("function") {
                Some(Value::Object(f)) => f,
                _ => o,
            },
            _ => return Err(rej(RejectReason::BadTools, format!("tool {i} is not an object"), pos)),
        };
        let name = match t.get("name") {
            Some(Value::String(n)) if !n.trim().is_empty() => n.trim().to_string(),
            _ => return Err(rej(RejectReason::BadTools, format!("tool {i} has no name"), pos)),
        };
        if out.iter().any(|x| x.name == name) {
            return Err(rej(RejectReason::BadTools, format!("duplicate tool name {name:?}"), pos));
        }
        let description = match t.get("description") {
            Some(Value::String(d)) => d.clone(),
            _ => String::new(),
        };
        let params = t.get("parameters").unwrap_or(&Value::Null);
        let parameters = if xlam_flat {
            xlam_params_to_schema(params)
        } else {
            normalize_json_schema(params)
        }
        .map_err(|e| rej(RejectReason::BadTools, format!("tool {name:?}: {e}"), pos))?;
        out.push(ToolDef {
            name,
            description,
            parameters,
        });
    }
    Ok(out)
}

/// Parses one call object `{name, arguments}` (also accepts OpenAI's
/// `{"function": {"name", "arguments": "<json string>"}}` and `parameters`
/// as an alias of `arguments`).
fn parse_call(v: &Value, pos: u64) -> R<Call> {
    let o = match v {
        Value::Object(o) => match o.get("function") {
            Some(Value::Object(f)) => f,
            _ => o,
        },
        _ => return Err(rej(RejectReason::BadAnswers, "call is not an object", pos)),
    };
    let name = match o.get("name") {
        Some(Value::String(n)) if !n.trim().is_empty() => n.trim().to_string(),
        _ => return Err(rej(RejectReason::BadAnswers, "call has no name", pos)),
    };
    let args = o.get("arguments").or_else(|| o.get("parameters"));
    let arguments = match args {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(Value::String(s)) => {
            if s.trim().is_empty() {
                Value::Object(Map::new())
            } else {
                serde_json::from_str(s).map_err(|e| {
                    rej(RejectReason::BadAnswers, format!("call {name:?}: arguments string does not parse: {e}"), pos)
                })?
            }
        }
        Some(v) => v.clone(),
    };
    if !arguments.is_object() {
        return Err(rej(RejectReason::BadAnswers, format!("call {name:?}: arguments is not an object"), pos));
    }
    Ok(Call { name, arguments })
}

fn parse_calls(v: &Value, pos: u64) -> R<Vec<Call>> {
    match v {
        Value::Array(a) => a.iter().map(|c| parse_call(c, pos)).collect(),
        Value::Object(_) => Ok(vec![parse_call(v, pos)?]),
        Value::Null => Ok(Vec::new()),
        _ => Err(rej(RejectReason::BadAnswers, "answers is not a list", pos)),
    }
}

fn calls_or_text(calls: Vec<Call>, text: Option<String>) -> Expected {
    if calls.is_empty() {
        Expected::Text(text.filter(|t| !t.trim().is_empty()))
    } else {
        Expected::Calls(calls)
    }
}

fn require_query(messages: &[Message], pos: u64) -> R<()> {
    let has = messages
        .iter()
        .any(|m| m.role == Role::User && !m.content.trim().is_empty());
    if has {
        Ok(())
    } else {
        Err(rej(RejectReason::EmptyQuery, "no non-empty user message", pos))
    }
}

// ---------------------------------------------------------------------------
// xLAM
// ---------------------------------------------------------------------------

/// Parses one xLAM-60k record (`id`, `query`, `tools`, `answers`; `tools`
/// and `answers` are JSON-encoded strings in the published file, plain
/// arrays are accepted too). `answers == "[]"` means no tool fits.
pub fn parse_xlam(raw: &str, pos: u64) -> R<Sample> {
    let m = parse_json(raw, pos)?;
    let id = id_of(m.get("id"));
    let with_id = |r: Reject| match &id {
        Some(i) => r.with_id(i.clone()),
        None => r,
    };
    let query = match m.get("query") {
        Some(Value::String(q)) => q,
        Some(_) => return Err(with_id(rej(RejectReason::MissingField, "query is not a string", pos))),
        None => return Err(with_id(rej(RejectReason::MissingField, "missing field query", pos))),
    };
    let tools_v = m
        .get("tools")
        .ok_or_else(|| with_id(rej(RejectReason::MissingField, "missing field tools", pos)))?;
    let answers_v = m
        .get("answers")
        .ok_or_else(|| with_id(rej(RejectReason::MissingField, "missing field answers", pos)))?;
    if query.trim().is_empty() {
        return Err(with_id(rej(RejectReason::EmptyQuery, "query is empty", pos)));
    }
    let tools_j = embedded_json(tools_v, RejectReason::BadTools, "tools", pos).map_err(with_id)?;
    let tools = parse_tools(&tools_j, true, pos).map_err(with_id)?;
    let answers_j = embedded_json(answers_v, RejectReason::BadAnswers, "answers", pos).map_err(with_id)?;
    let calls = parse_calls(&answers_j, pos).map_err(with_id)?;
    Ok(Sample {
        id: id.unwrap_or_else(|| format!("xlam-{pos}")),
        messages: vec![Message::new(Role::User, query.clone())],
        tools,
        expected: calls_or_text(calls, None),
        source: Source {
            format: Format::Xlam,
            position: pos,
        },
    })
}

// ---------------------------------------------------------------------------
// OpenAI messages + tools
// ---------------------------------------------------------------------------

fn parse_role(s: &str) -> Option<Role> {
    Some(match s {
        "system" | "developer" => Role::System,
        "user" | "human" => Role::User,
        "assistant" | "gpt" => Role::Assistant,
        "tool" | "function" | "observation" | "ipython" => Role::Tool,
        _ => return None,
    })
}

fn content_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        // Content-part arrays: concatenate the text parts.
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| match p {
                Value::String(s) => Some(s.as_str()),
                Value::Object(o) => o.get("text").and_then(|t| t.as_str()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// Parses one OpenAI-style record `{"messages": [...], "tools": [...]}`.
/// The last assistant message is the expected answer (its `tool_calls`, or
/// its text when it has none); everything before it is the prompt.
pub fn parse_openai(raw: &str, pos: u64) -> R<Sample> {
    let m = parse_json(raw, pos)?;
    let id = id_of(m.get("id"));
    let with_id = |r: Reject| match &id {
        Some(i) => r.with_id(i.clone()),
        None => r,
    };
    let msgs = match m.get("messages") {
        Some(Value::Array(a)) => a,
        _ => return Err(with_id(rej(RejectReason::MissingField, "missing messages list", pos))),
    };
    let tools = parse_tools(m.get("tools").unwrap_or(&Value::Null), false, pos).map_err(with_id)?;
    let mut parsed = Vec::with_capacity(msgs.len());
    for (i, mv) in msgs.iter().enumerate() {
        let mo = match mv {
            Value::Object(o) => o,
            _ => return Err(with_id(rej(RejectReason::BadMessages, format!("message {i} is not an object"), pos))),
        };
        let role = mo
            .get("role")
            .and_then(|r| r.as_str())
            .and_then(parse_role)
            .ok_or_else(|| with_id(rej(RejectReason::BadMessages, format!("message {i} has no valid role"), pos)))?;
        let tool_calls = match mo.get("tool_calls") {
            Some(tc @ Value::Array(_)) => parse_calls(tc, pos).map_err(with_id)?,
            _ => Vec::new(),
        };
        let name = mo.get("name").and_then(|n| n.as_str()).map(str::to_string);
        parsed.push(Message {
            role,
            content: content_text(mo.get("content")),
            tool_calls,
            name,
        });
    }
    let last_asst = parsed
        .iter()
        .rposition(|m| m.role == Role::Assistant)
        .ok_or_else(|| with_id(rej(RejectReason::MissingField, "no assistant message (expected answer)", pos)))?;
    let answer = parsed.swap_remove(last_asst);
    parsed.truncate(last_asst);
    require_query(&parsed, pos).map_err(with_id)?;
    let expected = calls_or_text(answer.tool_calls, Some(answer.content));
    Ok(Sample {
        id: id.unwrap_or_else(|| format!("openai-{pos}")),
        messages: parsed,
        tools,
        expected,
        source: Source {
            format: Format::Openai,
            position: pos,
        },
    })
}

// ---------------------------------------------------------------------------
// LLaMA-Factory ShareGPT
// ---------------------------------------------------------------------------

/// Parses one LLaMA-Factory ShareGPT record
/// (`{"conversations": [{"from", "value"}], "tools": "<json>", "system"}`).
/// The last turn is the answer: `function_call` (a JSON `{name, arguments}`
/// or a list of them) or `gpt` (plain text).
pub fn parse_sharegpt(raw: &str, pos: u64) -> R<Sample> {
    let m = parse_json(raw, pos)?;
    let id = id_of(m.get("id"));
    let with_id = |r: Reject| match &id {
        Some(i) => r.with_id(i.clone()),
        None => r,
    };
    let conv = match m.get("conversations") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        _ => return Err(with_id(rej(RejectReason::MissingField, "missing conversations list", pos))),
    };
    let tools = match m.get("tools") {
        Some(v) => {
            let j = embedded_json(v, RejectReason::BadTools, "tools", pos).map_err(with_id)?;
            parse_tools(&j, false, pos).map_err(with_id)?
        }
        None => Vec::new(),
    };
    let mut messages = Vec::with_capacity(conv.len() + 1);
    if let Some(Value::String(s)) = m.get("system") {
        if !s.trim().is_empty() {
            messages.push(Message::new(Role::System, s.clone()));
        }
    }
    let mut turns = Vec::with_capacity(conv.len());
    for (i, t) in conv.iter().enumerate() {
        let o = match t {
            Value::Object(o) => o,
            _ => return Err(with_id(rej(RejectReason::BadMessages, format!("turn {i} is not an object"), pos))),
        };
        let from = o
            .get("from")
            .or_else(|| o.get("role"))
            .and_then(|v| v.as_str())
            .ok_or_else(|| with_id(rej(RejectReason::BadMessages, format!("turn {i} has no 'from'"), pos)))?;
        let value = content_text(o.get("value").or_else(|| o.get("content")));
        turns.push((from.to_string(), value));
    }
    let (last_from, last_value) = match turns.pop() {
        Some(t) => t,
        None => return Err(with_id(rej(RejectReason::BadMessages, "empty conversation", pos))),
    };
    for (i, (from, value)) in turns.into_iter().enumerate() {
        let msg = match from.as_str() {
            "system" => Message::new(Role::System, value),
            "human" | "user" => Message::new(Role::User, value),
            "gpt" | "assistant" => Message::new(Role::Assistant, value),
            "observation" | "tool" => Message::new(Role::Tool, value),
            "function_call" => {
                let j = embedded_json(&Value::String(value), RejectReason::BadMessages, "function_call", pos)
                    .map_err(with_id)?;
                let calls = parse_calls(&j, pos).map_err(|r| with_id(Reject { reason: RejectReason::BadMessages, ..r }))?;
                Message {
                    role: Role::Assistant,
                    content: String::new(),
                    tool_calls: calls,
                    name: None,
                }
            }
            other => {
                return Err(with_id(rej(RejectReason::BadMessages, format!("turn {i}: unknown 'from' {other:?}"), pos)))
            }
        };
        messages.push(msg);
    }
    let expected = match last_from.as_str() {
        "function_call" => {
            let j = embedded_json(&Value::String(last_value), RejectReason::BadAnswers, "function_call", pos)
                .map_err(with_id)?;
            let calls = parse_calls(&j, pos).map_err(with_id)?;
            if calls.is_empty() {
                return Err(with_id(rej(RejectReason::BadAnswers, "function_call turn has no call", pos)));
            }
            Expected::Calls(calls)
        }
        "gpt" | "assistant" => Expected::Text(Some(last_value).filter(|t| !t.trim().is_empty())),
        other => {
            return Err(with_id(rej(
                RejectReason::MissingField,
                format!("last turn is {other:?}, expected gpt or function_call"),
                pos,
            )))
        }
    };
    require_query(&messages, pos).map_err(with_id)?;
    Ok(Sample {
        id: id.unwrap_or_else(|| format!("sharegpt-{pos}")),
        messages,
        tools,
        expected,
        source: Source {
            format: Format::Sharegpt,
            position: pos,
        },
    })
}

// ---------------------------------------------------------------------------
// BFCL
// ---------------------------------------------------------------------------

/// BFCL possible-answer ground truth, keyed by question id. Answer files are
/// small (hundreds of lines), so they are loaded fully.
#[derive(Debug, Clone, Default)]
pub struct BfclAnswers {
    map: HashMap<String, Vec<BfclCall>>,
}

impl BfclAnswers {
    /// Reads a possible_answer JSONL stream
    /// (`{"id", "ground_truth": [{"func": {"arg": [allowed...]}}]}`).
    /// Malformed lines are a fatal error: a broken answer file would
    /// silently mis-score an entire benchmark category.
    pub fn from_reader<Rd: Read>(input: Rd) -> Result<Self, DataError> {
        let mut map = HashMap::new();
        for rec in RecordReader::new(input) {
            let rec = rec?;
            let text = rec
                .text
                .map_err(|r| DataError::Answers(format!("line {}: {}", rec.position, r.detail)))?;
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| DataError::Answers(format!("line {}: {e}", rec.position)))?;
            let id = id_of(v.get("id"))
                .ok_or_else(|| DataError::Answers(format!("line {}: missing id", rec.position)))?;
            let gt = match v.get("ground_truth") {
                Some(Value::Array(a)) => a,
                Some(o @ Value::Object(_)) => std::slice::from_ref(o),
                _ => return Err(DataError::Answers(format!("line {}: missing ground_truth list", rec.position))),
            };
            let mut calls = Vec::with_capacity(gt.len());
            for g in gt {
                let o = g
                    .as_object()
                    .ok_or_else(|| DataError::Answers(format!("line {}: ground_truth entry is not an object", rec.position)))?;
                for (fname, args) in o {
                    let allowed = match args {
                        Value::Object(a) => a.clone(),
                        _ => {
                            return Err(DataError::Answers(format!(
                                "line {}: arguments of {fname} are not an object",
                                rec.position
                            )))
                        }
                    };
                    calls.push(BfclCall {
                        name: fname.clone(),
                        allowed,
                    });
                }
            }
            map.insert(id, calls);
        }
        Ok(BfclAnswers { map })
    }

    /// Reads a possible_answer file.
    pub fn from_path(path: &Path) -> Result<Self, DataError> {
        let f = std::fs::File::open(path).map_err(|source| DataError::IoPath {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_reader(f)
    }

    /// Where BFCL keeps the answers of `question_file`:
    /// `<dir>/possible_answer/<same file name>`, if that file exists.
    pub fn locate(question_file: &Path) -> Option<PathBuf> {
        let name = question_file.file_name()?;
        let dir = question_file.parent().unwrap_or_else(|| Path::new("."));
        let p = dir.join("possible_answer").join(name);
        p.is_file().then_some(p)
    }

    /// Ground truth for `id`.
    pub fn get(&self, id: &str) -> Option<&[BfclCall]> {
        self.map.get(id).map(|v| v.as_slice())
    }

    /// Number of answered ids.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Parses one BFCL question record. Single-turn only (multi-turn
/// categories are rejected as `unsupported`). Questions of the
/// irrelevance categories have no ground truth: the right answer is text.
pub fn parse_bfcl(raw: &str, pos: u64, answers: Option<&BfclAnswers>) -> R<Sample> {
    let m = parse_json(raw, pos)?;
    let id = id_of(m.get("id")).ok_or_else(|| rej(RejectReason::MissingField, "missing id", pos))?;
    let with_id = |r: Reject| r.with_id(id.clone());
    let turns = match m.get("question") {
        Some(Value::Array(t)) => t,
        Some(Value::String(s)) => {
            // Very old BFCL versions: a plain question string.
            let msgs = vec![Message::new(Role::User, s.clone())];
            return finish_bfcl(&m, id.clone(), msgs, pos, answers);
        }
        _ => return Err(with_id(rej(RejectReason::MissingField, "missing question list", pos))),
    };
    if turns.len() != 1 || id.starts_with("multi_turn") {
        return Err(with_id(rej(
            RejectReason::Unsupported,
            format!("multi-turn BFCL question ({} turns)", turns.len()),
            pos,
        )));
    }
    let turn = match &turns[0] {
        Value::Array(t) => t.as_slice(),
        o @ Value::Object(_) => std::slice::from_ref(o),
        _ => return Err(with_id(rej(RejectReason::BadMessages, "question turn is not a list", pos))),
    };
    let mut msgs = Vec::with_capacity(turn.len());
    for (i, mv) in turn.iter().enumerate() {
        let role = mv
            .get("role")
            .and_then(|r| r.as_str())
            .and_then(parse_role)
            .ok_or_else(|| with_id(rej(RejectReason::BadMessages, format!("message {i} has no valid role"), pos)))?;
        msgs.push(Message::new(role, content_text(mv.get("content"))));
    }
    finish_bfcl(&m, id, msgs, pos, answers)
}

fn finish_bfcl(
    m: &Map<String, Value>,
    id: String,
    msgs: Vec<Message>,
    pos: u64,
    answers: Option<&BfclAnswers>,
) -> R<Sample> {
    let with_id = |r: Reject| r.with_id(id.clone());
    require_query(&msgs, pos).map_err(with_id)?;
    let tools = parse_tools(m.get("function").unwrap_or(&Value::Null), false, pos).map_err(with_id)?;
    let expected = match answers.and_then(|a| a.get(&id)) {
        Some(gt) if !gt.is_empty() => Expected::Bfcl(gt.to_vec()),
        _ if id.contains("irrelevance") => Expected::Text(None),
        Some(_) => Expected::Text(None),
        None => {
            return Err(with_id(rej(
                RejectReason::MissingAnswer,
                "no possible_answer entry for this id",
                pos,
            )))
        }
    };
    Ok(Sample {
        id,
        messages: msgs,
        tools,
        expected,
        source: Source {
            format: Format::Bfcl,
            position: pos,
        },
    })
}

/// Parses one already-processed [`Sample`] line.
pub fn parse_processed(raw: &str, pos: u64) -> R<Sample> {
    serde_json::from_str::<Sample>(raw).map_err(|e| {
        let reason = if e.is_syntax() || e.is_eof() {
            RejectReason::InvalidJson
        } else {
            RejectReason::MissingField
        };
        rej(reason, e.to_string(), pos)
    })
}

/// Parses one raw record of `format`.
pub fn parse_record(format: Format, raw: &str, pos: u64, answers: Option<&BfclAnswers>) -> R<Sample> {
    match format {
        Format::Xlam => parse_xlam(raw, pos),
        Format::Bfcl => parse_bfcl(raw, pos, answers),
        Format::Openai => parse_openai(raw, pos),
        Format::Sharegpt => parse_sharegpt(raw, pos),
        Format::Processed => parse_processed(raw, pos),
    }
}

// ---------------------------------------------------------------------------
// Streaming loader
// ---------------------------------------------------------------------------

/// One loaded record: position, raw text (for dead-lettering) and the
/// conversion result.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub position: u64,
    pub raw: String,
    pub result: Result<Sample, Reject>,
}

/// Streams records of one format from a reader in constant memory.
/// Yields `Err` only for fatal I/O errors.
pub struct Loader<Rd: Read> {
    records: RecordReader<Rd>,
    format: Format,
    answers: Option<BfclAnswers>,
}

impl<Rd: Read> Loader<Rd> {
    /// A loader for `format`; `answers` is only used for BFCL.
    pub fn new(input: Rd, format: Format, answers: Option<BfclAnswers>) -> Self {
        Loader {
            records: RecordReader::new(input),
            format,
            answers,
        }
    }

    /// Bytes consumed so far.
    pub fn bytes_read(&self) -> u64 {
        self.records.bytes_read()
    }
}

impl<Rd: Read> Iterator for Loader<Rd> {
    type Item = Result<Loaded, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rec = match self.records.next()? {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        let position = rec.position;
        Some(Ok(match rec.text {
            Ok(raw) => {
                let result = parse_record(self.format, &raw, position, self.answers.as_ref());
                Loaded { position, raw, result }
            }
            Err(rj) => Loaded {
                position,
                raw: String::new(),
                result: Err(rj),
            },
        }))
    }
}

/// Streams [`Sample`]s from a reader (convenience over [`Loader`]).
pub fn load<Rd: Read>(input: Rd, format: Format, answers: Option<BfclAnswers>) -> Loader<Rd> {
    Loader::new(input, format, answers)
}

/// Reads a processed-sample JSONL file fully (train/val files written by
/// [`crate::ingest`]). Fails on the first bad line: processed files are
/// our own output, so a bad line means corruption.
pub fn read_samples(path: &Path) -> Result<Vec<Sample>, DataError> {
    let f = std::fs::File::open(path).map_err(|source| DataError::IoPath {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for item in Loader::new(f, Format::Processed, None) {
        let l = item?;
        match l.result {
            Ok(s) => out.push(s),
            Err(r) => return Err(DataError::Corrupt(format!("{}: {r}", path.display()))),
        }
    }
    Ok(out)
}
