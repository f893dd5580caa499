//! Hermes / Qwen3 tool-call format: parsing, streaming parsing and rendering.
//!
//! Qwen3 emits function calls as blocks inside its ordinary text:
//!
//! ```text
//! <think>
//! reasoning...
//! </think>
//!
//! Let me check.
//! <tool_call>
//! {"name": "get_weather", "arguments": {"city": "Paris"}}
//! </tool_call>
//! ```
//!
//! Every consumer of model output (the gateway, the reward scorer, the evaluator) must agree
//! on how such text is split into content, reasoning and calls, so the rules live here once:
//!
//! * several blocks are parallel calls, kept in order;
//! * a final block without `</tool_call>` is accepted (generation often stops at the eos
//!   token right before it); a `<tool_call>` inside an unclosed block closes the previous one;
//! * `<think>...</think>` is reasoning, and calls inside it are ignored; a `</think>` seen
//!   before any `<think>` or `<tool_call>` means the prompt opened the think block, so all
//!   text before it is reasoning; think tags are honoured only before the first call;
//! * a malformed block is reported in [`ParsedOutput::errors`] without discarding the
//!   valid ones (rewards give partial credit, the gateway can still answer);
//! * `arguments` may be an object, a JSON string holding an object, absent or null (`{}`);
//!   `parameters` is accepted as an alias, and OpenAI's `{"function": {...}}` nesting too.
//!
//! [`parse`] handles a complete output, [`StreamParser`] the same format delta by delta with
//! OpenAI streaming semantics, and [`render_calls`] produces the exact text the Qwen3 chat
//! template renders for an assistant turn's calls.

mod json;
mod scan;
mod stream;

pub use json::{python_float_repr, to_json_python, to_json_pythonic, PyJsonOptions};
pub use stream::{StreamEvent, StreamParser};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Opening tag of a tool-call block (a single added token in the Qwen3 vocabulary).
pub const TOOL_CALL_OPEN: &str = "<tool_call>";
/// Closing tag of a tool-call block.
pub const TOOL_CALL_CLOSE: &str = "</tool_call>";
/// Opening tag of the reasoning block.
pub const THINK_OPEN: &str = "<think>";
/// Closing tag of the reasoning block.
pub const THINK_CLOSE: &str = "</think>";

/// One function call requested by the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Function name, never empty.
    pub name: String,
    /// Arguments; always a JSON object (`{}` when the model gave none).
    pub arguments: Value,
}

impl ToolCall {
    /// Build a call; a non-object `arguments` is replaced by `{}` so the invariant holds.
    pub fn new(name: impl Into<String>, arguments: Value) -> Self {
        let arguments = if arguments.is_object() {
            arguments
        } else {
            Value::Object(Map::new())
        };
        ToolCall {
            name: name.into(),
            arguments,
        }
    }

    /// Compact JSON text of the arguments (`{}` when empty), as OpenAI's
    /// `function.arguments` string carries it.
    pub fn arguments_json(&self) -> String {
        if self.arguments.is_object() {
            serde_json::to_string(&self.arguments).unwrap_or_else(|_| "{}".to_string())
        } else {
            "{}".to_string()
        }
    }
}

/// A `<tool_call>` block whose body could not be turned into a [`ToolCall`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockError {
    /// 0-based number of the block among all blocks of the output (valid and malformed).
    pub index: usize,
    /// The block body as the model wrote it (between the tags).
    pub raw: String,
    /// Human-readable reason (the [`CallError`] message).
    pub reason: String,
}

/// Everything [`parse`] extracts from one model output.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ParsedOutput {
    /// Text outside tool-call blocks and outside the think block, trimmed.
    pub content: String,
    /// Text of the think block, trimmed; `None` when the output has no think block.
    pub reasoning: Option<String>,
    /// Valid calls in order.
    pub calls: Vec<ToolCall>,
    /// Malformed blocks.
    pub errors: Vec<BlockError>,
    /// Number of `<tool_call>` blocks seen (valid + malformed).
    pub blocks: usize,
}

/// Why a block body is not a valid call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("empty tool call block")]
    Empty,
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    #[error("unexpected text after the JSON object")]
    TrailingText,
    #[error("tool call is not a JSON object")]
    NotAnObject,
    #[error("missing \"name\"")]
    MissingName,
    #[error("\"name\" must be a non-empty string")]
    BadName,
    #[error("\"arguments\" must be a JSON object (or a string holding one)")]
    ArgumentsNotObject,
    #[error("\"arguments\" string is not valid JSON: {0}")]
    ArgumentsInvalidJson(String),
}

/// Parse one block body (`{"name": ..., "arguments": {...}}`) into a call.
///
/// The top-level object is read field by field ([`head::Top`]) instead of into a
/// `serde_json::Value`: building and then dismantling that outer map (hashing its keys,
/// `remove`) was a measurable share of reward scoring, which parses every block of every
/// completion. Behaviour, including which error is reported, is that of the
/// `Value`-based version (kept in the tests as the reference).
pub fn parse_call_json(body: &str) -> Result<ToolCall, CallError> {
    let trimmed = body.trim();
    if trimmed.is_empty() {
        return Err(CallError::Empty);
    }
    let mut de = serde_json::Deserializer::from_str(trimmed);
    let top = head::Top::deserialize(&mut de).map_err(|e| CallError::InvalidJson(e.to_string()))?;
    de.end().map_err(|_| CallError::TrailingText)?;
    let head::Top::Object(mut f) = top else {
        return Err(CallError::NotAnObject);
    };
    // OpenAI-shaped `{"type": "function", "function": {"name": ..., "arguments": ...}}`.
    if f.name.is_none() {
        if let Some(Value::Object(mut inner)) = f.function.take() {
            f.name = inner.remove("name");
            f.arguments = inner.remove("arguments");
            f.parameters = inner.remove("parameters");
        }
    }
    let name = match f.name {
        None => return Err(CallError::MissingName),
        Some(Value::String(s)) if !s.trim().is_empty() => s,
        Some(_) => return Err(CallError::BadName),
    };
    let raw_args = match f.arguments {
        Some(v) => Some(v),
        None => f.parameters,
    };
    let arguments = match raw_args {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v,
        Some(Value::String(s)) => {
            if s.trim().is_empty() {
                Value::Object(Map::new())
            } else {
                match serde_json::from_str::<Value>(&s) {
                    Ok(v @ Value::Object(_)) => v,
                    Ok(_) => return Err(CallError::ArgumentsNotObject),
                    Err(e) => return Err(CallError::ArgumentsInvalidJson(e.to_string())),
                }
            }
        }
        Some(_) => return Err(CallError::ArgumentsNotObject),
    };
    Ok(ToolCall { name, arguments })
}

/// Field-wise reading of a block's top-level JSON value.
mod head {
    use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
    use serde::{Deserialize, Deserializer};
    use serde_json::Value;
    use std::fmt;

    /// The fields a call can use; other members are parsed (so invalid JSON is still an
    /// error, exactly as with a full `Value`) and dropped. A repeated key keeps its last
    /// value, as a `Value` map does.
    #[derive(Default)]
    pub(crate) struct Fields {
        pub name: Option<Value>,
        pub arguments: Option<Value>,
        pub parameters: Option<Value>,
        pub function: Option<Value>,
    }

    // Built once per block and moved straight into `parse_call_json`: boxing the big
    // variant would only add an allocation.
    #[allow(clippy::large_enum_variant)]
    pub(crate) enum Top {
        Object(Fields),
        /// Valid JSON that is not an object.
        Other,
    }

    enum Key {
        Name,
        Arguments,
        Parameters,
        Function,
        Other,
    }

    struct KeySeed;

    impl<'de> DeserializeSeed<'de> for KeySeed {
        type Value = Key;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
            d.deserialize_str(self)
        }
    }

    impl<'de> Visitor<'de> for KeySeed {
        type Value = Key;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string key")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
            Ok(match v {
                "name" => Key::Name,
                "arguments" => Key::Arguments,
                "parameters" => Key::Parameters,
                "function" => Key::Function,
                _ => Key::Other,
            })
        }
    }

    impl<'de> Deserialize<'de> for Top {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Top, D::Error> {
            d.deserialize_any(TopVisitor)
        }
    }

    struct TopVisitor;

    impl<'de> Visitor<'de> for TopVisitor {
        type Value = Top;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top, A::Error> {
            let mut f = Fields::default();
            while let Some(key) = map.next_key_seed(KeySeed)? {
                let v: Value = map.next_value()?;
                match key {
                    Key::Name => f.name = Some(v),
                    Key::Arguments => f.arguments = Some(v),
                    Key::Parameters => f.parameters = Some(v),
                    Key::Function => f.function = Some(v),
                    Key::Other => {}
                }
            }
            Ok(Top::Object(f))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Top, A::Error> {
            while seq.next_element::<Value>()?.is_some() {}
            Ok(Top::Other)
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Top, E> {
            Ok(Top::Other)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Top, E> {
            Ok(Top::Other)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Top, E> {
            Ok(Top::Other)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Top, E> {
            Ok(Top::Other)
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Top, E> {
            Ok(Top::Other)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Top, E> {
            Ok(Top::Other)
        }
        fn visit_none<E: de::Error>(self) -> Result<Top, E> {
            Ok(Top::Other)
        }
    }
}

/// Parse a complete model output. Never panics, whatever the input.
pub fn parse(text: &str) -> ParsedOutput {
    use scan::{Mode, Seg, Segmenter};

    // With the whole text at hand we can tell up front whether a stray `</think>` makes the
    // beginning reasoning; the streaming parser cannot and has an explicit constructor.
    let start = if scan::starts_in_reasoning(text) {
        Mode::Reasoning
    } else {
        Mode::Content
    };
    let mut seg = Segmenter::new(start);
    let mut out = ParsedOutput::default();
    let mut content = String::new();
    let mut reasoning: Option<String> = None;
    // A block body is one contiguous slice of `text`: borrow it, copy only on error.
    let mut block: Option<std::borrow::Cow<'_, str>> = None;
    if start == Mode::Reasoning {
        reasoning = Some(String::new());
    }
    seg.scan_all(text, &mut |s| match s {
        Seg::Text(Mode::Content, t) => content.push_str(t),
        Seg::Text(Mode::Reasoning, t) => reasoning.get_or_insert_with(String::new).push_str(t),
        Seg::Text(Mode::Call, t) => match block.as_mut() {
            Some(b) if !b.is_empty() => b.to_mut().push_str(t),
            _ => block = Some(std::borrow::Cow::Borrowed(t)),
        },
        Seg::ThinkOpen => {
            reasoning.get_or_insert_with(String::new);
        }
        Seg::ThinkClose | Seg::StrayThinkClose => {}
        Seg::CallOpen => block = Some(std::borrow::Cow::Borrowed("")),
        Seg::CallClose => {
            let raw = block.take().unwrap_or_default();
            let index = out.blocks;
            out.blocks += 1;
            match parse_call_json(&raw) {
                Ok(call) => out.calls.push(call),
                Err(e) => out.errors.push(BlockError {
                    index,
                    raw: raw.into_owned(),
                    reason: e.to_string(),
                }),
            }
        }
    });
    out.content = content.trim().to_string();
    out.reasoning = reasoning.map(|r| r.trim().to_string());
    out
}

/// Render calls exactly as the Qwen3 chat template renders an assistant turn's `tool_calls`:
/// `<tool_call>\n{"name": "<name>", "arguments": <tojson args>}\n</tool_call>`, joined by
/// `"\n"`. The name is inserted verbatim (the template does not escape it) and the arguments
/// use Python `json.dumps` formatting, so SFT targets match what inference prompts contain.
pub fn render_calls(calls: &[ToolCall]) -> String {
    let mut out = String::new();
    for (i, call) in calls.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str("<tool_call>\n{\"name\": \"");
        out.push_str(&call.name);
        out.push_str("\", \"arguments\": ");
        out.push_str(&to_json_pythonic(&call.arguments));
        out.push_str("}\n</tool_call>");
    }
    out
}

#[cfg(test)]
mod tests;
