//! Tokenizer, streaming detokenizer and chat-template rendering for the Qwen3 family.
//!
//! Training (SFT, GRPO), evaluation and serving must all feed the model byte-identical
//! prompts, and those prompts must be the ones Hugging Face `transformers` produces with
//! `apply_chat_template`, because that is what the base model was trained on and what other
//! engines (vLLM) serve. This crate is the single place where that happens in Rust:
//!
//! * [`Tokenizer`] wraps the `tokenizers` crate with the model directory's
//!   `tokenizer_config.json` (special tokens, eos, chat template) and
//!   `generation_config.json` (extra eos ids);
//! * [`IncrementalDecoder`] turns generated ids into text deltas without ever splitting a
//!   UTF-8 character;
//! * [`ChatTemplate`] renders the model's own Jinja template with MiniJinja, configured like
//!   transformers' Jinja environment, from OpenAI-style [`ChatRequest`]s.
//!
//! Golden fixtures rendered by transformers (`tests/fixtures/chat/`, produced by
//! `scripts/gen_chat_fixtures.py`) pin the exact text and token ids.

mod detok;
mod error;
mod request;
mod template;
mod tokenizer;

pub mod sample;
pub use detok::IncrementalDecoder;
pub use error::ChatError;
pub use request::{
    ChatMessage, ChatRequest, ChatToolCall, ContentPart, FunctionCall, MessageContent, ToolSpec,
};
pub use template::ChatTemplate;
pub use tokenizer::{SpecialTokens, Tokenizer};

/// Re-exported so callers can render and parse tool calls without another dependency line.
pub use fc_toolcall;
