//! Incremental detokenization for streaming responses.
//!
//! Byte-level BPE tokens are byte sequences: one token may end in the middle of a UTF-8
//! character (emoji, CJK) that the next token completes. Decoding each token alone would
//! emit U+FFFD garbage, so, as vLLM and transformers' `DecodeStream` do, we decode a small
//! window of recent ids and emit only the new text once it no longer ends in an incomplete
//! character.

use crate::ChatError;
use std::sync::Arc;

/// Turns a stream of generated ids into text deltas whose concatenation equals decoding all
/// ids at once (for complete UTF-8 output).
pub struct IncrementalDecoder {
    tokenizer: Arc<tokenizers::Tokenizer>,
    skip_special_tokens: bool,
    ids: Vec<u32>,
    /// Start of the window whose text has already been emitted up to `read_offset`.
    prefix_offset: usize,
    /// Ids before this index are fully emitted.
    read_offset: usize,
}

impl IncrementalDecoder {
    pub(crate) fn new(tokenizer: Arc<tokenizers::Tokenizer>, skip_special_tokens: bool) -> Self {
        IncrementalDecoder {
            tokenizer,
            skip_special_tokens,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }

    /// All ids fed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Feed one id; returns the text it completes (possibly empty).
    pub fn step(&mut self, id: u32) -> Result<String, ChatError> {
        self.ids.push(id);
        self.emit(false)
    }

    /// Feed several ids at once.
    pub fn extend(&mut self, ids: &[u32]) -> Result<String, ChatError> {
        self.ids.extend_from_slice(ids);
        self.emit(false)
    }

    /// Emit whatever is still held back (an incomplete character at the very end of
    /// generation is emitted as U+FFFD, like a full decode would).
    pub fn flush(&mut self) -> Result<String, ChatError> {
        self.emit(true)
    }

    fn decode(&self, ids: &[u32]) -> Result<String, ChatError> {
        self.tokenizer
            .decode(ids, self.skip_special_tokens)
            .map_err(ChatError::tokenizer)
    }

    fn emit(&mut self, force: bool) -> Result<String, ChatError> {
        if self.read_offset >= self.ids.len() {
            return Ok(String::new());
        }
        let prefix = self.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = self.decode(&self.ids[self.prefix_offset..])?;
        if !force && full.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        // The window's text normally extends the prefix; if a decoder ever rewrites earlier
        // text we cannot retract it, so emit the part after the common prefix.
        let delta = match full.strip_prefix(prefix.as_str()) {
            Some(d) => d.to_string(),
            None => {
                let common = common_prefix_len(&prefix, &full);
                full[common..].to_string()
            }
        };
        if delta.is_empty() && !force {
            // Nothing visible yet (e.g. a skipped special token): keep waiting.
            return Ok(delta);
        }
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(delta)
    }
}

fn common_prefix_len(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, ca), cb)| ca != cb)
        .map(|((i, _), _)| i)
        .unwrap_or_else(|| a.len().min(b.len()))
}
