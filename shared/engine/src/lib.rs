//! `fc-engine`: the generation engine shared by the gateway, the GRPO rollout-generator
//! and the evaluator (what vLLM does for the Python stack).
//!
//! ```no_run
//! # async fn demo(model: fc_model::Model, tok: fc_chat::Tokenizer) -> Result<(), fc_engine::EngineError> {
//! use fc_engine::*;
//! let engine = Engine::start(model, tok, EngineConfig::default())?;
//! let params = SamplingParams { temperature: 1.0, seed: Some(7), max_tokens: 128, ..Default::default() };
//! // A GRPO group: 8 samples sharing one prefill.
//! let outs = engine.generate(Request::new(vec![1, 2, 3], params).with_n(8)).await?;
//! // Streaming (gateway): dropping `rx` cancels.
//! let mut rx = engine.submit(Request::new(vec![1, 2, 3], SamplingParams::greedy(64)))?;
//! while let Some(ev) = rx.recv().await { if let Event::Token { text_delta, .. } = ev { print!("{text_delta}"); } }
//! engine.swap_adapter(None)?; // between decode steps; running sequences continue
//! # Ok(()) }
//! ```
//!
//! * Continuous batching on a dedicated thread ([`engine`]); one ragged forward per decode
//!   step over all active sequences ([`fc_model::batch::forward_ragged`]).
//! * KV memory accounting with a byte cap; requests queue until their worst case fits.
//! * Prompt KV shared by a request's `n` samples, plus an LRU of prompt prefixes
//!   ([`prefix`]) so the repeated tools system prompt is prefilled once.
//! * Sampling ([`sampler`]): greedy / temperature / top-k / top-p / min-p, per-request
//!   seeds independent of batching, token-mask hook ([`TokenMask`]); both the raw model
//!   log-prob and the sampling log-prob of every token.
//! * Streaming text through fc-chat's `IncrementalDecoder`, stop strings cut on decoded
//!   text ([`stop`]).

pub mod engine;
pub mod error;
pub mod params;
pub mod prefix;
pub mod sampler;
pub mod stop;

pub use engine::{Engine, EngineConfig, EngineHandle, EngineStats, KvDtype};
pub use error::EngineError;
pub use params::{
    Allowed, Event, FinishReason, Output, Request, SamplingParams, StopMatch, TokenMask, Usage,
};

/// The handle is shared across tokio tasks (e.g. axum state) and threads.
#[allow(dead_code)]
fn _assert_handle_send_sync() {
    fn f<T: Send + Sync + Clone>() {}
    f::<EngineHandle>();
}
