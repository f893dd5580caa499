//! Request, sampling parameters, streaming events and outputs.

use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// How the next token is chosen. Applied in Hugging Face's order: token mask, temperature,
/// top-k, top-p, min-p; then a draw from the renormalised distribution (or argmax).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// `<= 0` means greedy (argmax, first maximum on ties).
    pub temperature: f64,
    /// Keep only the `k` most likely tokens; `0` disables.
    pub top_k: usize,
    /// Nucleus mass in `(0, 1]`; `1` disables.
    pub top_p: f64,
    /// Drop tokens whose probability is below `min_p * p_max`; `0` disables.
    pub min_p: f64,
    /// Per-request seed; sample `i` of the request draws from ChaCha8(seed, stream i), so
    /// the same seed gives the same samples whatever else is batched alongside. `None`
    /// draws a fresh seed.
    pub seed: Option<u64>,
    /// Maximum number of generated tokens (the stop token counts).
    pub max_tokens: usize,
    /// Extra ids that end a sequence (kept in `token_ids`, their text is not emitted).
    pub stop_token_ids: Vec<u32>,
    /// Also stop at the tokenizer's / model's eos ids.
    pub stop_at_eos: bool,
    /// Strings that end a sequence when they appear in the decoded text; the returned
    /// text stops right before the match (OpenAI / vLLM semantics) and the token that
    /// completed it is kept in `token_ids`.
    pub stop: Vec<String>,
    /// Drop special tokens (`<|im_end|>`, ...) from the decoded text; non-special added
    /// tokens such as `<tool_call>` are always kept.
    pub skip_special_tokens: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: None,
            max_tokens: 256,
            stop_token_ids: vec![],
            stop_at_eos: true,
            stop: vec![],
            skip_special_tokens: true,
        }
    }
}

impl SamplingParams {
    pub fn greedy(max_tokens: usize) -> Self {
        SamplingParams {
            max_tokens,
            ..Default::default()
        }
    }

    /// Checks ranges; the engine refuses invalid requests up front.
    pub fn validate(&self) -> Result<(), String> {
        if !self.temperature.is_finite() {
            return Err("temperature must be finite".into());
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p {} not in (0, 1]", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(format!("min_p {} not in [0, 1]", self.min_p));
        }
        if self.max_tokens == 0 {
            return Err("max_tokens must be > 0".into());
        }
        if self.stop.iter().any(String::is_empty) {
            return Err("empty stop string".into());
        }
        Ok(())
    }
}

/// What a [`TokenMask`] allows at one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    /// No constraint.
    All,
    /// Only these ids.
    Only(Vec<u32>),
    /// `mask[id]` says whether `id` is allowed (ids past the end are not).
    Mask(Vec<bool>),
}

/// Per-sequence decoding constraint (e.g. the gateway's JSON / tool-call grammar). Called
/// before every sampled token with the ids generated so far for sample `seq_index`; runs
/// on the engine thread, so it must be cheap. When nothing is allowed the sequence ends
/// with [`FinishReason::Error`].
pub trait TokenMask: Send + Sync {
    fn allowed(&self, seq_index: usize, generated: &[u32]) -> Allowed;
}

impl<F> TokenMask for F
where
    F: Fn(usize, &[u32]) -> Allowed + Send + Sync,
{
    fn allowed(&self, seq_index: usize, generated: &[u32]) -> Allowed {
        self(seq_index, generated)
    }
}

/// A generation request: `n` samples continuing `prompt_ids`, which share one prefill.
#[derive(Clone)]
pub struct Request {
    pub prompt_ids: Vec<u32>,
    pub params: SamplingParams,
    /// Number of samples (a GRPO group); all share the prompt's KV cache.
    pub n: usize,
    pub mask: Option<Arc<dyn TokenMask>>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("prompt_len", &self.prompt_ids.len())
            .field("params", &self.params)
            .field("n", &self.n)
            .field("mask", &self.mask.is_some())
            .finish()
    }
}

impl Request {
    pub fn new(prompt_ids: Vec<u32>, params: SamplingParams) -> Self {
        Request {
            prompt_ids,
            params,
            n: 1,
            mask: None,
        }
    }
    pub fn with_n(mut self, n: usize) -> Self {
        self.n = n;
        self
    }
    pub fn with_mask(mut self, mask: Arc<dyn TokenMask>) -> Self {
        self.mask = Some(mask);
        self
    }
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop token id or stop string.
    Stop,
    /// `max_tokens` reached (or the model's context is full).
    Length,
    /// The caller went away or the engine shut down.
    Cancelled,
    /// A token mask allowed nothing, or the forward failed.
    Error,
}

/// What stopped a sequence with [`FinishReason::Stop`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopMatch {
    TokenId(u32),
    String(String),
}

/// Token counts of one sample.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache (not recomputed).
    pub cached_prompt_tokens: usize,
}

/// A finished sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Output {
    pub seq_index: usize,
    pub token_ids: Vec<u32>,
    /// Raw model log-prob of each token: `log_softmax(logits)[id]` of the model (with the
    /// adapter active at that step) at temperature 1, before masks and truncation. This is
    /// what a GRPO learner recomputes with `Model::train_logprobs`, so use it for the
    /// old-policy log-prob / importance ratios.
    pub logprobs: Vec<f32>,
    /// Log-prob of each token under the distribution it was actually drawn from (after
    /// mask, temperature, top-k/p, min-p); `0` for greedy picks.
    pub sampling_logprobs: Vec<f32>,
    /// Decoded text (stop string excluded).
    pub text: String,
    pub finish_reason: FinishReason,
    pub stop: Option<StopMatch>,
    pub usage: Usage,
    /// Adapter/model version in force for the first and last generated token (differ
    /// when a swap happened mid-generation).
    pub versions: (u64, u64),
    /// Set with [`FinishReason::Error`].
    pub error: Option<String>,
}

/// Streaming event of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// One generated token of sample `seq_index`.
    Token {
        seq_index: usize,
        id: u32,
        /// Text that became final with this token (may be empty: an incomplete UTF-8
        /// character, text held back because it may start a stop string, or a stop token).
        text_delta: String,
        /// See [`Output::logprobs`].
        logprob: f32,
        /// See [`Output::sampling_logprobs`].
        sampling_logprob: f32,
        /// Adapter/model version that produced the token.
        version: u64,
    },
    /// Sample `seq_index` ended; carries the whole sample.
    Finished { seq_index: usize, output: Output },
    /// The request as a whole failed (nothing else follows).
    Error { message: String },
}
