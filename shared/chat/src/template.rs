//! Rendering a model's own Jinja chat template exactly like transformers.
//!
//! transformers compiles chat templates in an `ImmutableSandboxedEnvironment` with
//! `trim_blocks=True`, `lstrip_blocks=True` and the `loopcontrols` extension, adds the
//! globals `raise_exception` and `strftime_now`, and overrides `tojson` with
//! `json.dumps(x, ensure_ascii=False, ...)`. MiniJinja plus minijinja-contrib's Python
//! string/dict methods reproduce that; `tojson` goes through
//! [`fc_toolcall::to_json_python`] so separators, float formatting and key order match
//! Python byte for byte (MiniJinja's own `tojson` escapes HTML characters and differs).

use crate::error::describe;
use crate::{ChatError, ChatRequest};
use fc_toolcall::PyJsonOptions;
use minijinja::value::{Kwargs, Serde};
use minijinja::{Environment, Error, ErrorKind, Value};
use serde_json::{Map, Value as Json};
use std::path::Path;

const TEMPLATE_NAME: &str = "chat_template";

/// A compiled chat template, cheap to share between threads (`Send + Sync`).
pub struct ChatTemplate {
    env: Environment<'static>,
    /// `bos_token`, `eos_token`, ... as transformers passes `special_tokens_map` to templates.
    special_tokens: Map<String, Json>,
    source: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("len", &self.source.len())
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compile a template source. Fails on syntax errors, never on content.
    pub fn new(source: &str) -> Result<Self, ChatError> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| ChatError::TemplateSyntax(describe(&e)))?;
        env.set_syntax(syntax);
        // Jinja2 drops one trailing newline of the source, MiniJinja does by default too.
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.set_recursion_limit(256);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| ChatError::TemplateSyntax(describe(&e)))?;
        Ok(ChatTemplate {
            env,
            special_tokens: Map::new(),
            source: source.to_string(),
        })
    }

    /// Load the template from a model directory: `chat_template.jinja` (newer transformers
    /// layout) or the `chat_template` entry of `tokenizer_config.json`; special tokens for
    /// the template context come from the latter.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, ChatError> {
        let dir = dir.as_ref();
        let config_path = dir.join("tokenizer_config.json");
        let config = match std::fs::read_to_string(&config_path) {
            Ok(text) => {
                Some(
                    serde_json::from_str::<Json>(&text).map_err(|source| ChatError::Json {
                        path: config_path.clone(),
                        source,
                    })?,
                )
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(ChatError::io(&config_path, e)),
        };
        let jinja_path = dir.join("chat_template.jinja");
        let source = match std::fs::read_to_string(&jinja_path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => config
                .as_ref()
                .and_then(template_from_config)
                .ok_or_else(|| ChatError::NoChatTemplate(config_path.clone()))?,
            Err(e) => return Err(ChatError::io(&jinja_path, e)),
        };
        let mut t = Self::new(&source)?;
        if let Some(cfg) = &config {
            t.special_tokens = special_tokens_map(cfg);
        }
        Ok(t)
    }

    /// Template source as loaded.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Render a request like `tokenizer.apply_chat_template(messages, tools=tools,
    /// add_generation_prompt=..., enable_thinking=..., tokenize=False)` after vLLM's message
    /// normalization (null content -> `""`, string tool arguments parsed).
    pub fn render(&self, req: &ChatRequest) -> Result<String, ChatError> {
        let mut ctx = Map::new();
        let mut messages = Vec::with_capacity(req.messages.len());
        for m in &req.messages {
            messages.push(m.to_template_value()?);
        }
        ctx.insert("messages".into(), Json::Array(messages));
        if let Some(tools) = &req.tools {
            ctx.insert(
                "tools".into(),
                Json::Array(tools.iter().map(|t| t.0.clone()).collect()),
            );
        }
        if let Some(kwargs) = &req.chat_template_kwargs {
            for (k, v) in kwargs {
                ctx.insert(k.clone(), v.clone());
            }
        }
        ctx.insert(
            "add_generation_prompt".into(),
            Json::Bool(req.add_generation_prompt()),
        );
        if let Some(t) = req.enable_thinking {
            ctx.insert("enable_thinking".into(), Json::Bool(t));
        }
        self.render_context(ctx)
    }

    /// Split a conversation that ends with an assistant turn into `(prompt, completion)` for
    /// SFT loss masking: `prompt` is the rendering of the earlier messages with the
    /// generation prompt (exactly what inference will feed the model), `completion` the rest
    /// of the full rendering (the assistant turn through `<|im_end|>\n`). Fails when the
    /// template renders the earlier turns differently once the reply is appended, since
    /// training on such a split would teach a prompt the model never sees at inference.
    pub fn render_prompt_completion(
        &self,
        req: &ChatRequest,
    ) -> Result<(String, String), ChatError> {
        if req.messages.last().map(|m| m.role.as_str()) != Some("assistant") {
            return Err(ChatError::InvalidRequest(
                "the last message must be an assistant turn".into(),
            ));
        }
        let mut prompt_req = req.clone();
        prompt_req.messages.pop();
        prompt_req.add_generation_prompt = Some(true);
        let mut full_req = req.clone();
        full_req.add_generation_prompt = Some(false);
        let prompt = self.render(&prompt_req)?;
        let full = self.render(&full_req)?;
        match full.strip_prefix(prompt.as_str()) {
            Some(completion) => Ok((prompt.clone(), completion.to_string())),
            None => Err(ChatError::InvalidRequest(
                "the rendered conversation does not start with the generation prompt \
                 (e.g. reasoning_content with enable_thinking=false); cannot split"
                    .into(),
            )),
        }
    }

    /// Render with a raw context (`messages`, `tools`, any template variable). Special tokens
    /// are added unless the context sets them.
    pub fn render_context(&self, mut ctx: Map<String, Json>) -> Result<String, ChatError> {
        for (k, v) in &self.special_tokens {
            if !ctx.contains_key(k) {
                ctx.insert(k.clone(), v.clone());
            }
        }
        if !ctx.contains_key("messages") {
            return Err(ChatError::InvalidRequest("no messages".into()));
        }
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ChatError::Template(describe(&e)))?;
        tmpl.render(Value::from(Serde(Json::Object(ctx))))
            .map_err(|e| ChatError::Template(describe(&e)))
    }
}

fn template_from_config(cfg: &Json) -> Option<String> {
    match cfg.get("chat_template")? {
        Json::String(s) => Some(s.clone()),
        // Named templates: [{"name": "default", "template": "..."}, {"name": "tool_use", ...}]
        Json::Array(items) => {
            let pick = |name: &str| {
                items
                    .iter()
                    .find(|i| i.get("name").and_then(Json::as_str) == Some(name))
            };
            pick("default")
                .or_else(|| items.first())
                .and_then(|i| i.get("template"))
                .and_then(Json::as_str)
                .map(str::to_string)
        }
        _ => None,
    }
}

/// transformers' `special_tokens_map`: token strings (or `{"content": ...}` objects).
fn special_tokens_map(cfg: &Json) -> Map<String, Json> {
    let mut out = Map::new();
    for key in [
        "bos_token",
        "eos_token",
        "unk_token",
        "sep_token",
        "pad_token",
        "cls_token",
        "mask_token",
    ] {
        let tok = match cfg.get(key) {
            Some(Json::String(s)) => Some(s.clone()),
            Some(Json::Object(o)) => o.get("content").and_then(Json::as_str).map(str::to_string),
            _ => None,
        };
        if let Some(t) = tok {
            out.insert(key.to_string(), Json::String(t));
        }
    }
    if let Some(Json::Array(extra)) = cfg.get("additional_special_tokens") {
        out.insert(
            "additional_special_tokens".into(),
            Json::Array(extra.clone()),
        );
    }
    out
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)`, output not HTML-escaped.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => Some(usize::try_from(v).map_err(|_| {
            Error::new(
                ErrorKind::InvalidOperation,
                "tojson: indent must be a non-negative integer",
            )
        })?),
    };
    let json = serde_json::to_value(value).map_err(|e| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: cannot serialize: {e}"),
        )
    })?;
    let opts = PyJsonOptions {
        indent,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    Ok(Value::from_safe_string(fc_toolcall::to_json_python(
        &json, &opts,
    )))
}

/// transformers' `raise_exception(message)` global: templates use it to reject requests.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}
