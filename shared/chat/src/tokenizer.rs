//! The model directory's tokenizer, with the metadata transformers keeps beside it.

use crate::{ChatError, ChatRequest, ChatTemplate, IncrementalDecoder};
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;

/// Ids of the special and tool-format tokens the pipeline cares about; `None` when the
/// vocabulary lacks one (e.g. a tiny test tokenizer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub im_start: Option<u32>,
    pub im_end: Option<u32>,
    pub endoftext: Option<u32>,
    pub tool_call_open: Option<u32>,
    pub tool_call_close: Option<u32>,
    pub think_open: Option<u32>,
    pub think_close: Option<u32>,
    /// The pad token from `tokenizer_config.json` (Qwen3: `<|endoftext|>`).
    pub pad: Option<u32>,
}

/// A loaded tokenizer. Cloning is cheap (the vocabulary is shared).
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<tokenizers::Tokenizer>,
    special: SpecialTokens,
    eos_ids: Vec<u32>,
    eos_token: Option<String>,
    template: Option<Arc<ChatTemplate>>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("eos_ids", &self.eos_ids)
            .field("has_chat_template", &self.template.is_some())
            .finish_non_exhaustive()
    }
}

fn read_json_opt(path: &Path) -> Result<Option<Value>, ChatError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| ChatError::Json {
                path: path.to_path_buf(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ChatError::io(path, e)),
    }
}

fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

impl Tokenizer {
    /// Load `tokenizer.json` (required), `tokenizer_config.json` and `generation_config.json`
    /// (optional) from a Hugging Face model directory. A missing chat template is not an
    /// error here (base models have none); [`Tokenizer::apply_chat_template`] reports it.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, ChatError> {
        let dir = dir.as_ref();
        let tok_path = dir.join("tokenizer.json");
        let bytes = std::fs::read(&tok_path).map_err(|e| ChatError::io(&tok_path, e))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| ChatError::Tokenizer(format!("{}: {e}", tok_path.display())))?;
        let config = read_json_opt(&dir.join("tokenizer_config.json"))?;
        let gen_config = read_json_opt(&dir.join("generation_config.json"))?;

        let template = match ChatTemplate::from_dir(dir) {
            Ok(t) => Some(Arc::new(t)),
            Err(ChatError::NoChatTemplate(_)) => None,
            Err(e) => return Err(e),
        };
        let mut tok = Self::from_parts(inner, config.as_ref(), gen_config.as_ref());
        tok.template = template;
        Ok(tok)
    }

    /// Build from an already loaded `tokenizers::Tokenizer` plus the parsed config files.
    pub fn from_parts(
        inner: tokenizers::Tokenizer,
        tokenizer_config: Option<&Value>,
        generation_config: Option<&Value>,
    ) -> Self {
        let id = |t: &str| inner.token_to_id(t);
        let eos_token = token_string(tokenizer_config.and_then(|c| c.get("eos_token")));
        let pad_token = token_string(tokenizer_config.and_then(|c| c.get("pad_token")));
        let special = SpecialTokens {
            im_start: id("<|im_start|>"),
            im_end: id("<|im_end|>"),
            endoftext: id("<|endoftext|>"),
            tool_call_open: id(fc_toolcall::TOOL_CALL_OPEN),
            tool_call_close: id(fc_toolcall::TOOL_CALL_CLOSE),
            think_open: id(fc_toolcall::THINK_OPEN),
            think_close: id(fc_toolcall::THINK_CLOSE),
            pad: pad_token.as_deref().and_then(id),
        };
        // Generation stops at the tokenizer's eos and at every id generation_config lists
        // (Qwen3 lists both <|im_end|> and <|endoftext|>).
        let mut eos_ids = Vec::new();
        if let Some(e) = eos_token.as_deref().and_then(id) {
            eos_ids.push(e);
        }
        match generation_config.and_then(|g| g.get("eos_token_id")) {
            Some(Value::Number(n)) => {
                eos_ids.extend(n.as_u64().and_then(|v| u32::try_from(v).ok()))
            }
            Some(Value::Array(a)) => eos_ids.extend(
                a.iter()
                    .filter_map(Value::as_u64)
                    .filter_map(|v| u32::try_from(v).ok()),
            ),
            _ => {}
        }
        let mut seen = std::collections::HashSet::new();
        eos_ids.retain(|i| seen.insert(*i));
        Tokenizer {
            inner: Arc::new(inner),
            special,
            eos_ids,
            eos_token,
            template: None,
        }
    }

    /// Attach (or replace) the chat template.
    pub fn with_chat_template(mut self, template: ChatTemplate) -> Self {
        self.template = Some(Arc::new(template));
        self
    }

    /// Encode like transformers' `tokenizer(text)["input_ids"]`: special-token text in the
    /// input is recognised, and the post-processor's special tokens are added (Qwen3 adds
    /// none, so this equals [`Tokenizer::encode_raw`] there).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ChatError> {
        self.encode_with(text, true)
    }

    /// Encode without post-processor additions, as `apply_chat_template(tokenize=True)`
    /// does for rendered prompts.
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>, ChatError> {
        self.encode_with(text, false)
    }

    pub fn encode_with(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, ChatError> {
        self.inner
            .encode_fast(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(ChatError::tokenizer)
    }

    /// Decode ids; `skip_special_tokens` drops tokens marked special (`<|im_end|>`), but
    /// keeps non-special added tokens such as `<tool_call>` and `<think>`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, ChatError> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(ChatError::tokenizer)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn special_tokens(&self) -> SpecialTokens {
        self.special
    }

    /// Ids that end generation, tokenizer eos first.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_ids.contains(&id)
    }

    /// Vocabulary size including added tokens (the embedding matrix may be larger).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.template.as_deref()
    }

    /// Render the prompt and tokenize it: `(text, ids)` equal to transformers'
    /// `apply_chat_template(..., tokenize=False)` and its tokenization.
    pub fn apply_chat_template(&self, req: &ChatRequest) -> Result<(String, Vec<u32>), ChatError> {
        let template = self
            .template
            .as_deref()
            .ok_or_else(|| ChatError::NoChatTemplate("tokenizer_config.json".into()))?;
        let text = template.render(req)?;
        let ids = self.encode_raw(&text)?;
        Ok((text, ids))
    }

    /// [`ChatTemplate::render_prompt_completion`] plus tokenization:
    /// `(prompt_text, prompt_ids, completion_text, completion_ids)`, where
    /// `prompt_ids ++ completion_ids` equals the tokenization of the whole conversation
    /// (checked: an error is returned if the boundary would fall inside a token).
    pub fn apply_chat_template_split(
        &self,
        req: &ChatRequest,
    ) -> Result<(String, Vec<u32>, String, Vec<u32>), ChatError> {
        let template = self
            .template
            .as_deref()
            .ok_or_else(|| ChatError::NoChatTemplate("tokenizer_config.json".into()))?;
        let (prompt, completion) = template.render_prompt_completion(req)?;
        let prompt_ids = self.encode_raw(&prompt)?;
        let mut full_text = prompt.clone();
        full_text.push_str(&completion);
        let full_ids = self.encode_raw(&full_text)?;
        match full_ids.strip_prefix(prompt_ids.as_slice()) {
            Some(rest) => {
                let completion_ids = rest.to_vec();
                Ok((prompt, prompt_ids, completion, completion_ids))
            }
            None => Err(ChatError::InvalidRequest(
                "prompt/completion boundary falls inside a token".into(),
            )),
        }
    }

    /// A streaming detokenizer sharing this vocabulary.
    pub fn incremental_decoder(&self, skip_special_tokens: bool) -> IncrementalDecoder {
        IncrementalDecoder::new(self.inner.clone(), skip_special_tokens)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}
