//! Autoregressive decoding on top of [`Model::forward_last`] with a KV cache:
//! greedy (temperature <= 0) or temperature + top-p sampling from a seeded
//! ChaCha8 RNG, so a (model, prompt, params) triple always gives the same ids.

use crate::error::{ModelError, Result};
use crate::lora::LoraAdapter;
use crate::model::Model;
use candle_core::{DType, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Decoding parameters.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    pub max_tokens: usize,
    /// <= 0 means greedy.
    pub temperature: f64,
    /// Nucleus mass in (0, 1]; 1 disables top-p.
    pub top_p: f64,
    pub seed: u64,
    /// Stop ids; `None` uses the model config's eos ids. The stop token is included
    /// in the output (as transformers' `generate` does).
    pub stop_token_ids: Option<Vec<u32>>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_tokens: 256,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop_token_ids: None,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
}

/// Generated tokens with their log-probs under the untempered model distribution
/// (what GRPO needs as the behaviour-policy log-prob at temperature 1).
#[derive(Debug, Clone)]
pub struct Generation {
    pub token_ids: Vec<u32>,
    pub logprobs: Vec<f32>,
    pub finish_reason: FinishReason,
}

/// Greedy / sampled continuation of `prompt_ids` (returns only the new tokens).
pub fn generate(model: &Model, prompt_ids: &[u32], params: &GenerateParams) -> Result<Vec<u32>> {
    Ok(generate_with(model, None, prompt_ids, params)?.token_ids)
}

/// [`generate`] with an optional un-merged LoRA adapter and per-token log-probs.
pub fn generate_with(
    model: &Model,
    lora: Option<&LoraAdapter>,
    prompt_ids: &[u32],
    params: &GenerateParams,
) -> Result<Generation> {
    if prompt_ids.is_empty() {
        return Err(ModelError::Input("empty prompt".into()));
    }
    if !(params.top_p > 0.0 && params.top_p <= 1.0) {
        return Err(ModelError::Input(format!(
            "top_p {} not in (0, 1]",
            params.top_p
        )));
    }
    let stops = params
        .stop_token_ids
        .clone()
        .unwrap_or_else(|| model.config.eos_token_ids.clone());
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
    let mut cache = model.new_cache();
    let dev = model.device();
    let mut out = Generation {
        token_ids: vec![],
        logprobs: vec![],
        finish_reason: FinishReason::Length,
    };
    let mut input = Tensor::from_slice(prompt_ids, (1, prompt_ids.len()), dev)?;
    for _ in 0..params.max_tokens {
        let logits: Vec<f32> = model
            .forward_last(&input, &mut cache, lora)?
            .squeeze(0)?
            .to_dtype(DType::F32)?
            .to_vec1()?;
        let tok = sample(&logits, params.temperature, params.top_p, &mut rng);
        out.token_ids.push(tok);
        out.logprobs.push(log_softmax_at(&logits, tok as usize));
        if stops.contains(&tok) {
            out.finish_reason = FinishReason::Stop;
            break;
        }
        input = Tensor::from_slice(&[tok], (1, 1), dev)?;
    }
    Ok(out)
}

fn log_softmax_at(logits: &[f32], i: usize) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = logits
        .iter()
        .map(|&x| ((x - max) as f64).exp())
        .sum::<f64>()
        .ln() as f32
        + max;
    logits.get(i).map(|&x| x - lse).unwrap_or(f32::NEG_INFINITY)
}

/// Picks the next token from `logits`: argmax (first maximum, like torch) when
/// `temperature <= 0`, else a draw from softmax(logits / T) restricted to the top-p nucleus.
pub fn sample(logits: &[f32], temperature: f64, top_p: f64, rng: &mut ChaCha8Rng) -> u32 {
    let argmax = || {
        let mut best = 0usize;
        for (i, &x) in logits.iter().enumerate() {
            if x > logits[best] {
                best = i;
            }
        }
        best as u32
    };
    if temperature <= 0.0 || logits.is_empty() {
        return argmax();
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| (i, ((x as f64 - max) / temperature).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    if !(total.is_finite() && total > 0.0) {
        return argmax();
    }
    probs.iter_mut().for_each(|p| p.1 /= total);
    if top_p < 1.0 {
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut cum = 0.0;
        let mut keep = probs.len();
        for (k, p) in probs.iter().enumerate() {
            cum += p.1;
            if cum >= top_p {
                keep = k + 1;
                break;
            }
        }
        probs.truncate(keep.max(1));
    }
    let mass: f64 = probs.iter().map(|p| p.1).sum();
    let mut u = rng.random::<f64>() * mass;
    for &(i, p) in &probs {
        if u < p {
            return i as u32;
        }
        u -= p;
    }
    probs.last().map(|p| p.0 as u32).unwrap_or_else(argmax)
}
