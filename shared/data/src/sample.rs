//! The internal sample type: one processed JSONL line per [`Sample`].
//!
//! Every loader (xLAM, BFCL, OpenAI, ShareGPT) converts its records into this
//! one shape so that the trainers, the reward scorer and the evaluator only
//! ever deal with a single format. Tool parameters are always standard JSON
//! Schema objects (xLAM's flat Python-typed parameters and BFCL's `dict` /
//! `float` types are converted on load).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One function-calling example: a prompt (messages), the offered tools and
/// the expected answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Stable identifier (the source's id when it has one, else derived
    /// from the record position). Used for the deterministic train/val split.
    pub id: String,
    /// Prompt messages (optional system message, user turns, and for
    /// multi-turn sources earlier assistant/tool turns). Never contains the
    /// expected answer.
    pub messages: Vec<Message>,
    /// Tools offered to the model, parameters as JSON Schema.
    pub tools: Vec<ToolDef>,
    /// What a correct answer looks like.
    pub expected: Expected,
    /// Provenance (input format and record position).
    pub source: Source,
}

impl Sample {
    /// Content of the last user message (the query), if any.
    pub fn query(&self) -> Option<&str> {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.content.as_str())
    }

    /// The offered tool named `name`.
    pub fn tool(&self, name: &str) -> Option<&ToolDef> {
        self.tools.iter().find(|t| t.name == name)
    }
}

/// Chat role of a prompt message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    /// The role as written in chat templates.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// One prompt message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    #[serde(default)]
    pub content: String,
    /// Tool calls made by an earlier assistant turn (multi-turn sources only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<Call>,
    /// Tool name for `tool` (observation) messages, when the source gives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Message {
    /// A plain message without tool calls.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            name: None,
        }
    }
}

/// A tool offered to the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDef {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// JSON Schema of the arguments object (`{"type": "object", ...}`).
    pub parameters: Value,
}

/// A function call: tool name plus arguments object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    pub name: String,
    /// Arguments; always a JSON object in validated samples.
    #[serde(default = "empty_object")]
    pub arguments: Value,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// One BFCL ground-truth call: for every argument the list of accepted
/// values (BFCL's AST checker semantics: `""` in the list means the argument
/// may be omitted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BfclCall {
    pub name: String,
    /// argument name -> array of allowed values.
    pub allowed: Map<String, Value>,
}

/// The expected answer of a sample.
///
/// Serialized externally tagged: `{"calls": [...]}`, `{"text": null}`,
/// `{"bfcl": [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expected {
    /// One or more tool calls (parallel calls in any order are equivalent).
    Calls(Vec<Call>),
    /// No offered tool fits: the answer is plain text (reference text when
    /// the source has one).
    Text(Option<String>),
    /// BFCL ground truth with allowed-value lists (used for AST scoring).
    Bfcl(Vec<BfclCall>),
}

impl Expected {
    /// Expected calls for `Calls`; `None` for the other variants.
    pub fn calls(&self) -> Option<&[Call]> {
        match self {
            Expected::Calls(c) => Some(c),
            _ => None,
        }
    }

    /// True when the right answer is plain text (no tool call).
    pub fn is_text(&self) -> bool {
        matches!(self, Expected::Text(_))
    }

    /// Number of expected calls (0 for text answers).
    pub fn call_count(&self) -> usize {
        match self {
            Expected::Calls(c) => c.len(),
            Expected::Bfcl(c) => c.len(),
            Expected::Text(_) => 0,
        }
    }

    /// A representative call list: the calls themselves, or for BFCL the
    /// first allowed value of every argument (omitting args whose first
    /// allowed value is `""`, BFCL's "may be omitted" marker). Used to build
    /// SFT targets from BFCL data.
    pub fn representative_calls(&self) -> Vec<Call> {
        match self {
            Expected::Calls(c) => c.clone(),
            Expected::Text(_) => Vec::new(),
            Expected::Bfcl(gt) => gt
                .iter()
                .map(|b| {
                    let mut args = Map::new();
                    for (k, v) in &b.allowed {
                        let first = v.as_array().and_then(|a| a.first());
                        match first {
                            Some(Value::String(s)) if s.is_empty() => {}
                            Some(x) => {
                                args.insert(k.clone(), x.clone());
                            }
                            None => {}
                        }
                    }
                    Call {
                        name: b.name.clone(),
                        arguments: Value::Object(args),
                    }
                })
                .collect(),
        }
    }
}

/// Input format of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Salesforce xLAM function-calling-60k (JSON array or JSONL).
    Xlam,
    /// Berkeley Function Calling Leaderboard v3/v4 question JSONL.
    Bfcl,
    /// OpenAI chat `{"messages", "tools"}` JSONL.
    Openai,
    /// LLaMA-Factory ShareGPT `{"conversations", "tools", "system"}`.
    Sharegpt,
    /// Already-processed [`Sample`] JSONL (this crate's own output).
    Processed,
}

impl Format {
    /// Stable lowercase name (CLI flag value).
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Xlam => "xlam",
            Format::Bfcl => "bfcl",
            Format::Openai => "openai",
            Format::Sharegpt => "sharegpt",
            Format::Processed => "processed",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "xlam" => Ok(Format::Xlam),
            "bfcl" => Ok(Format::Bfcl),
            "openai" => Ok(Format::Openai),
            "sharegpt" | "llamafactory" | "llama-factory" => Ok(Format::Sharegpt),
            "processed" | "sample" | "samples" => Ok(Format::Processed),
            other => Err(format!(
                "unknown format {other:?} (expected xlam, bfcl, openai, sharegpt, processed)"
            )),
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Provenance of a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub format: Format,
    /// 0-based index of the record in its input (array element or
    /// non-blank JSONL line).
    pub position: u64,
}
