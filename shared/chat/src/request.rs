//! OpenAI-style chat request types.
//!
//! They accept what OpenAI clients send (unknown fields such as `model` or `temperature`
//! are ignored, `content` may be null, a string or a list of text parts, tool-call
//! `arguments` may be a JSON string or an object) and normalize it into exactly the message
//! dicts vLLM hands to `apply_chat_template`, so that our prompts match other engines'.

use crate::ChatError;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// A chat completion request (the subset that shapes the prompt).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<ToolSpec>>,
    /// Append the assistant header for generation (default `true`; `false` for training
    /// examples that end with the assistant turn).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_generation_prompt: Option<bool>,
    /// Qwen3's thinking switch; `false` pre-fills an empty think block. Absent means the
    /// template's default (the variable stays undefined, as in transformers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_thinking: Option<bool>,
    /// vLLM-style extra template variables (`{"enable_thinking": false}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template_kwargs: Option<Map<String, Value>>,
}

impl ChatRequest {
    pub fn new(messages: Vec<ChatMessage>) -> Self {
        ChatRequest {
            messages,
            ..Default::default()
        }
    }

    pub fn with_tools(mut self, tools: Vec<ToolSpec>) -> Self {
        self.tools = Some(tools);
        self
    }

    pub fn add_generation_prompt(&self) -> bool {
        self.add_generation_prompt.unwrap_or(true)
    }

    /// The effective thinking flag: the explicit field wins over `chat_template_kwargs`.
    pub fn enable_thinking(&self) -> Option<bool> {
        self.enable_thinking.or_else(|| {
            self.chat_template_kwargs
                .as_ref()
                .and_then(|k| k.get("enable_thinking"))
                .and_then(Value::as_bool)
        })
    }
}

/// One message. `role` is kept as a string: templates decide what roles mean.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<MessageContent>,
    /// Reasoning of an earlier assistant turn (`reasoning` is accepted as an alias).
    #[serde(default, alias = "reasoning", skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ChatToolCall>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: Some(MessageContent::Text(content.into())),
            ..Default::default()
        }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }

    /// An assistant turn that calls tools; ids are `call_<n>` unless set afterwards.
    pub fn assistant_calls(content: Option<String>, calls: &[fc_toolcall::ToolCall]) -> Self {
        ChatMessage {
            role: "assistant".into(),
            content: content.map(MessageContent::Text),
            tool_calls: Some(
                calls
                    .iter()
                    .enumerate()
                    .map(|(i, c)| ChatToolCall {
                        id: Some(format!("call_{i}")),
                        kind: Some("function".into()),
                        function: FunctionCall {
                            name: c.name.clone(),
                            arguments: Some(c.arguments.clone()),
                        },
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    /// A tool result answering `tool_call_id`.
    pub fn tool(tool_call_id: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            tool_call_id: Some(tool_call_id.into()),
            ..Self::new("tool", content)
        }
    }

    /// The content as one string, the way vLLM flattens it for string-content templates:
    /// null becomes `""`, text parts are joined with `"\n"`.
    pub fn text(&self) -> Result<String, ChatError> {
        match &self.content {
            None => Ok(String::new()),
            Some(MessageContent::Text(s)) => Ok(s.clone()),
            Some(MessageContent::Parts(parts)) => {
                let mut texts = Vec::with_capacity(parts.len());
                for p in parts {
                    match (p.kind.as_str(), &p.text) {
                        ("text" | "input_text" | "output_text", Some(t)) => texts.push(t.as_str()),
                        (kind, _) => {
                            return Err(ChatError::InvalidRequest(format!(
                                "unsupported content part type {kind:?} in a {} message",
                                self.role
                            )))
                        }
                    }
                }
                Ok(texts.join("\n"))
            }
        }
    }

    /// The message as the template sees it (see [`ChatRequest`] docs).
    pub(crate) fn to_template_value(&self) -> Result<Value, ChatError> {
        let mut m = Map::new();
        m.insert("role".into(), Value::String(self.role.clone()));
        m.insert("content".into(), Value::String(self.text()?));
        if let Some(r) = &self.reasoning_content {
            m.insert("reasoning_content".into(), Value::String(r.clone()));
        }
        if let Some(calls) = &self.tool_calls {
            let mut out = Vec::with_capacity(calls.len());
            for (i, c) in calls.iter().enumerate() {
                out.push(c.to_template_value(i)?);
            }
            m.insert("tool_calls".into(), Value::Array(out));
        }
        if let Some(id) = &self.tool_call_id {
            m.insert("tool_call_id".into(), Value::String(id.clone()));
        }
        if let Some(name) = &self.name {
            m.insert("name".into(), Value::String(name.clone()));
        }
        Ok(Value::Object(m))
    }
}

/// `content`: a string or a list of typed parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// An entry of an assistant message's `tool_calls`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatToolCall {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    /// OpenAI sends a JSON string; objects are accepted too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<Value>,
}

impl ChatToolCall {
    /// Like vLLM: string arguments are parsed so the template's `tojson` re-serializes them
    /// in the training format; empty/absent arguments become `{}`.
    fn to_template_value(&self, i: usize) -> Result<Value, ChatError> {
        let args = match &self.function.arguments {
            None | Some(Value::Null) => json!({}),
            Some(Value::String(s)) if s.trim().is_empty() => json!({}),
            Some(Value::String(s)) => serde_json::from_str::<Value>(s).map_err(|e| {
                ChatError::InvalidRequest(format!(
                    "tool call {i} ({}) arguments are not valid JSON: {e}",
                    self.function.name
                ))
            })?,
            Some(v) => v.clone(),
        };
        let mut m = Map::new();
        if let Some(id) = &self.id {
            m.insert("id".into(), Value::String(id.clone()));
        }
        m.insert(
            "type".into(),
            Value::String(self.kind.clone().unwrap_or_else(|| "function".into())),
        );
        m.insert(
            "function".into(),
            json!({"name": self.function.name, "arguments": args}),
        );
        Ok(Value::Object(m))
    }
}

/// A tool definition, kept as the exact JSON the client sent: the template prints it with
/// `tojson`, so re-serializing through a struct would change key order or add fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ToolSpec(pub Value);

impl ToolSpec {
    /// `{"type": "function", "function": {"name", "description", "parameters"}}`.
    pub fn function(name: &str, description: &str, parameters: Value) -> Self {
        ToolSpec(json!({
            "type": "function",
            "function": {"name": name, "description": description, "parameters": parameters}
        }))
    }

    fn function_obj(&self) -> &Value {
        self.0.get("function").unwrap_or(&self.0)
    }

    pub fn name(&self) -> Option<&str> {
        self.function_obj().get("name").and_then(Value::as_str)
    }

    pub fn description(&self) -> Option<&str> {
        self.function_obj()
            .get("description")
            .and_then(Value::as_str)
    }

    /// The JSON schema of the parameters, if any.
    pub fn parameters(&self) -> Option<&Value> {
        self.function_obj().get("parameters")
    }
}
