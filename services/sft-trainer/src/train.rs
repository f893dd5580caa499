//! The SFT training loop as a library: LoRA supervised fine-tuning of an fc-model
//! checkpoint on processed-sample JSONL files (`fc_data::read_samples`).
//!
//! Pipeline: tokenize once ([`tokenize_samples`]: chat-template split, assistant-only
//! loss mask unless `train_on_prompt`, truncation at `cutoff_len`), group into
//! length-sorted batches inside a seeded shuffle window ([`epoch_batches`], a pure
//! function of `(lengths, seed, epoch)` so the data order is reproducible for resume),
//! then AdamW with cosine/linear/constant schedule + warmup, gradient accumulation and
//! global-norm clipping ([`train`]). The PEFT adapter goes to `out_dir/adapter`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::Optimizer;
use fc_chat::Tokenizer;
use fc_data::Sample;
use fc_model::{clip_grad_norm, LoraAdapter, LoraConfig, Model, Proj, TokenBatch};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum SftError {
    #[error("model: {0}")]
    Model(#[from] fc_model::ModelError),
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("chat template/tokenizer: {0}")]
    Chat(#[from] fc_chat::ChatError),
    #[error("data: {0}")]
    Data(#[from] fc_data::DataError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("config: {0}")]
    Config(String),
}

pub type Result<T, E = SftError> = std::result::Result<T, E>;

/// Learning-rate schedule after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    Cosine,
    Linear,
    Constant,
}

/// SFT hyper-parameters. Defaults are the seed's LLaMA-Factory recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SftConfig {
    pub lora_r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    /// HF projection names (`q_proj` ... `down_proj`).
    pub lora_targets: Vec<String>,
    pub use_rslora: bool,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub learning_rate: f64,
    pub lr_schedule: LrSchedule,
    pub warmup_ratio: f64,
    pub epochs: usize,
    /// Max tokens per example (longer ones are truncated).
    pub cutoff_len: usize,
    pub weight_decay: f64,
    /// Global gradient-norm clip (<= 0: off).
    pub max_grad_norm: f64,
    pub seed: u64,
    /// Loss on all tokens (true) or only on the assistant completion (false).
    pub train_on_prompt: bool,
    /// Overrides `epochs` when set (epochs repeat as needed).
    pub max_steps: Option<usize>,
    /// Validation loss every N optimizer steps (besides each epoch end and the end).
    pub eval_every: Option<usize>,
    /// Validation loss at each epoch end.
    pub eval_each_epoch: bool,
    /// Log (tracing) every N steps.
    pub log_every: usize,
    /// Shuffle window in batches: examples are shuffled, then sorted by length inside
    /// windows of `batch_size * shuffle_window` examples (0 or 1: no length grouping).
    pub shuffle_window: usize,
    /// Rows of the lm_head/log-softmax computed at a time.
    pub logprob_chunk: usize,
    /// Cap on validation examples used (first N of the file).
    pub max_val_samples: Option<usize>,
}

impl Default for SftConfig {
    fn default() -> Self {
        SftConfig {
            lora_r: 32,
            lora_alpha: 64.0,
            lora_dropout: 0.05,
            lora_targets: Proj::ALL.iter().map(|p| p.hf_name().to_string()).collect(),
            use_rslora: false,
            batch_size: 2,
            grad_accum: 1,
            learning_rate: 2e-4,
            lr_schedule: LrSchedule::Cosine,
            warmup_ratio: 0.03,
            epochs: 3,
            cutoff_len: 2048,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            seed: 0,
            train_on_prompt: false,
            max_steps: None,
            eval_every: None,
            eval_each_epoch: true,
            log_every: 10,
            shuffle_window: 64,
            logprob_chunk: 256,
            max_val_samples: None,
        }
    }
}

impl SftConfig {
    /// Recipe for the fresh (random-init) tiny preset: loss on all tokens (the model must
    /// learn the language of the prompts too), a much higher learning rate, bigger batches.
    pub fn tiny_from_scratch() -> Self {
        SftConfig {
            lora_r: 64,
            lora_alpha: 128.0,
            lora_dropout: 0.0,
            batch_size: 8,
            learning_rate: 3e-3,
            train_on_prompt: true,
            ..Default::default()
        }
    }

    pub fn lora_config(&self) -> Result<LoraConfig> {
        let targets = self
            .lora_targets
            .iter()
            .map(|n| Proj::from_hf_name(n).ok_or_else(|| SftError::Config(format!("unknown LoRA target {n:?}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(LoraConfig {
            r: self.lora_r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            targets,
            use_rslora: self.use_rslora,
            base_model_name_or_path: None,
        })
    }

    fn validate(&self) -> Result<()> {
        if self.batch_size == 0 || self.grad_accum == 0 || self.cutoff_len < 2 || self.logprob_chunk == 0 {
            return Err(SftError::Config("batch_size, grad_accum, logprob_chunk must be > 0 and cutoff_len >= 2".into()));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(SftError::Config("learning_rate must be > 0".into()));
        }
        if self.max_steps.is_none() && self.epochs == 0 {
            return Err(SftError::Config("epochs = 0 and no max_steps".into()));
        }
        Ok(())
    }

    /// Learning rate for optimizer step `step` (0-based) of `total` (HF
    /// `get_*_schedule_with_warmup` semantics, warmup = ceil(warmup_ratio * total)).
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        let warmup = (self.warmup_ratio * total as f64).ceil() as usize;
        if step < warmup {
            return self.learning_rate * step as f64 / warmup.max(1) as f64;
        }
        let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
        let f = match self.lr_schedule {
            LrSchedule::Constant => 1.0,
            LrSchedule::Linear => (1.0 - progress).max(0.0),
            LrSchedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        };
        self.learning_rate * f.max(0.0)
    }
}

/// One tokenized training example.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub ids: Vec<u32>,
    /// `label[i]`: token `i` is a loss target (predicted from positions `< i`).
    pub labels: Vec<bool>,
}

impl Example {
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    /// Number of loss targets.
    pub fn num_targets(&self) -> usize {
        self.labels.iter().skip(1).filter(|&&l| l).count()
    }
}

/// Tokenizes one sample: prompt ids + completion ids from the chat template split;
/// labels cover the completion (or everything but the first token with
/// `train_on_prompt`); truncated to `cutoff_len`. `None` when the sample has no
/// expected assistant turn (nothing to learn).
pub fn tokenize_sample(tok: &Tokenizer, s: &Sample, cutoff_len: usize, train_on_prompt: bool) -> Result<Option<Example>> {
    let req = fc_chat::sample::training_request(s);
    if req.messages.last().map(|m| m.role.as_str()) != Some("assistant") {
        return Ok(None);
    }
    let (_, prompt_ids, _, completion_ids) = tok.apply_chat_template_split(&req)?;
    let mut ids = prompt_ids.clone();
    ids.extend_from_slice(&completion_ids);
    let mut labels: Vec<bool> = (0..ids.len()).map(|i| if train_on_prompt { i > 0 } else { i >= prompt_ids.len() }).collect();
    ids.truncate(cutoff_len);
    labels.truncate(cutoff_len);
    Ok(Some(Example { ids, labels }))
}

/// [`tokenize_sample`] over many samples, dropping those left with no loss target
/// or with no assistant turn (returned count = dropped).
pub fn tokenize_samples(tok: &Tokenizer, samples: &[Sample], cutoff_len: usize, train_on_prompt: bool) -> Result<(Vec<Example>, usize)> {
    let mut out = Vec::with_capacity(samples.len());
    let mut dropped = 0;
    for s in samples {
        match tokenize_sample(tok, s, cutoff_len, train_on_prompt)? {
            Some(e) if e.len() >= 2 && e.num_targets() > 0 => out.push(e),
            _ => dropped += 1,
        }
    }
    Ok((out, dropped))
}

/// Batches (example indices) of `epoch`, a pure function of its inputs: examples are
/// shuffled with a seed derived from `(seed, epoch)`, sorted by length inside windows of
/// `batch_size * window` examples, cut into batches, and the batch order shuffled again.
pub fn epoch_batches(lengths: &[usize], batch_size: usize, window: usize, seed: u64, epoch: usize) -> Vec<Vec<usize>> {
    let bs = batch_size.max(1);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut idx: Vec<usize> = (0..lengths.len()).collect();
    idx.shuffle(&mut rng);
    let win = bs * window.max(1);
    let mut batches: Vec<Vec<usize>> = Vec::with_capacity(lengths.len().div_ceil(bs));
    for w in idx.chunks(win) {
        let mut w = w.to_vec();
        if window > 1 {
            w.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        }
        batches.extend(w.chunks(bs).map(<[usize]>::to_vec));
    }
    batches.shuffle(&mut rng);
    batches
}

/// Optimizer steps per epoch for `n_examples`.
pub fn steps_per_epoch(n_examples: usize, cfg: &SftConfig) -> usize {
    n_examples.div_ceil(cfg.batch_size.max(1)).div_ceil(cfg.grad_accum.max(1))
}

/// Total optimizer steps of a run.
pub fn total_steps(n_examples: usize, cfg: &SftConfig) -> usize {
    cfg.max_steps.unwrap_or(cfg.epochs * steps_per_epoch(n_examples, cfg))
}

/// A padded batch and its `[B, T]` loss mask (1 where `targets[t]` is a label).
fn make_batch(examples: &[&Example], pad_id: u32, device: &Device) -> Result<(TokenBatch, Tensor, usize)> {
    let seqs: Vec<Vec<u32>> = examples.iter().map(|e| e.ids.clone()).collect();
    let b = TokenBatch::right_padded(&seqs, pad_id)?;
    let t = b.seq_len;
    let mut mask = vec![0f32; b.batch * t];
    let mut n = 0;
    for (r, e) in examples.iter().enumerate() {
        for p in 0..e.len().saturating_sub(1) {
            if e.labels[p + 1] {
                mask[r * t + p] = 1.0;
                n += 1;
            }
        }
    }
    let mask = Tensor::from_vec(mask, (b.batch, t), device)?;
    Ok((b, mask, n))
}

fn real_tokens(b: &TokenBatch) -> usize {
    b.attention_mask.iter().filter(|&&m| m == 1).count()
}

/// Mean token NLL of `examples` under `model` (+ `adapter`, no dropout).
pub fn eval_loss(model: &Model, adapter: Option<&LoraAdapter>, examples: &[Example], batch_size: usize, chunk: usize, pad_id: u32) -> Result<f64> {
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| examples[i].len());
    let (mut sum, mut n) = (0f64, 0usize);
    for c in order.chunks(batch_size.max(1)) {
        let ex: Vec<&Example> = c.iter().map(|&i| &examples[i]).collect();
        let (b, mask, k) = make_batch(&ex, pad_id, model.device())?;
        let lp = model.train_logprobs(&b, adapter, None, chunk)?.detach();
        let s = lp.to_dtype(DType::F32)?.mul(&mask)?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        sum -= s;
        n += k;
    }
    if n == 0 {
        return Err(SftError::Config("no validation targets".into()));
    }
    Ok(sum / n as f64)
}

/// Progress of one optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepInfo {
    /// 1-based.
    pub step: usize,
    pub total_steps: usize,
    /// Fractional epoch after this step.
    pub epoch: f64,
    /// Mean token NLL of this step's batches (before the update).
    pub loss: f64,
    pub learning_rate: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Real (non-pad) tokens per second over this step.
    pub tokens_per_second: f64,
    /// Validation loss, when computed after this step.
    pub val_loss: Option<f64>,
}

/// Result of [`train`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftReport {
    pub steps: usize,
    /// Mean loss of the first `k` steps, `k = clamp(steps / 10, 1, 5)`.
    pub train_loss_first: f64,
    /// Mean loss of the last `k` steps.
    pub train_loss_last: f64,
    /// Final validation loss (mean token NLL), if a val file was given.
    pub val_loss: Option<f64>,
    /// Real tokens per second over the whole training loop (excluding evaluation).
    pub tokens_per_second: f64,
    pub train_examples: usize,
    /// Examples dropped for having no loss target after truncation.
    pub dropped_examples: usize,
    pub adapter: PathBuf,
}

fn pad_id(tok: &Tokenizer) -> u32 {
    let sp = tok.special_tokens();
    sp.pad.or(sp.endoftext).or(sp.im_end).unwrap_or(0)
}

/// Trains a LoRA adapter on `train_file` (processed-sample JSONL) over the model in
/// `model_dir` (HF layout with tokenizer files), on the CPU in f32. Writes the PEFT
/// adapter to `out_dir/adapter`. `on_step` is called after every optimizer step.
pub fn train(
    cfg: &SftConfig,
    model_dir: &Path,
    train_file: &Path,
    val_file: Option<&Path>,
    out_dir: &Path,
    on_step: &mut dyn FnMut(StepInfo),
) -> Result<SftReport> {
    train_on(cfg, model_dir, train_file, val_file, out_dir, &Device::Cpu, DType::F32, on_step)
}

/// [`train`] on an explicit device and dtype.
#[allow(clippy::too_many_arguments)]
pub fn train_on(
    cfg: &SftConfig,
    model_dir: &Path,
    train_file: &Path,
    val_file: Option<&Path>,
    out_dir: &Path,
    device: &Device,
    dtype: DType,
    on_step: &mut dyn FnMut(StepInfo),
) -> Result<SftReport> {
    cfg.validate()?;
    let tok = Tokenizer::from_dir(model_dir)?;
    let pad = pad_id(&tok);
    let model = Model::load(model_dir, device, dtype)?;
    let train_samples = fc_data::read_samples(train_file)?;
    let (train_ex, dropped) = tokenize_samples(&tok, &train_samples, cfg.cutoff_len, cfg.train_on_prompt)?;
    if train_ex.is_empty() {
        return Err(SftError::Config(format!("no usable training examples in {}", train_file.display())));
    }
    let val_ex = match val_file {
        Some(p) => {
            let mut s = fc_data::read_samples(p)?;
            if let Some(m) = cfg.max_val_samples {
                s.truncate(m);
            }
            let (v, _) = tokenize_samples(&tok, &s, cfg.cutoff_len, cfg.train_on_prompt)?;
            Some(v).filter(|v| !v.is_empty())
        }
        None => None,
    };

    let mut lcfg = cfg.lora_config()?;
    lcfg.base_model_name_or_path = Some(model_dir.display().to_string());
    let adapter = LoraAdapter::new(&model, lcfg, cfg.seed)?;
    let vars = adapter.vars();
    let mut opt = adapter.adamw(cfg.learning_rate, cfg.weight_decay)?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_add(0x5f7));

    let lengths: Vec<usize> = train_ex.iter().map(Example::len).collect();
    let total = total_steps(train_ex.len(), cfg);
    let n_batches = train_ex.len().div_ceil(cfg.batch_size);
    let eval = |ad: &LoraAdapter| -> Result<Option<f64>> {
        match &val_ex {
            Some(v) => Ok(Some(eval_loss(&model, Some(ad), v, cfg.batch_size, cfg.logprob_chunk, pad)?)),
            None => Ok(None),
        }
    };

    let mut losses = Vec::with_capacity(total);
    let mut last_val = None;
    let (mut train_tokens, mut train_secs) = (0usize, 0f64);
    let mut step = 0usize;
    let mut epoch = 0usize;
    'outer: while step < total {
        let batches = epoch_batches(&lengths, cfg.batch_size, cfg.shuffle_window, cfg.seed, epoch);
        let groups: Vec<&[Vec<usize>]> = batches.chunks(cfg.grad_accum).collect();
        for (gi, group) in groups.iter().enumerate() {
            if step >= total {
                break 'outer;
            }
            let t0 = Instant::now();
            let lr = cfg.lr_at(step, total);
            opt.set_learning_rate(lr);
            let built: Vec<(TokenBatch, Tensor, usize)> = group
                .iter()
                .map(|b| make_batch(&b.iter().map(|&i| &train_ex[i]).collect::<Vec<_>>(), pad, device))
                .collect::<Result<_>>()?;
            let n_targets: usize = built.iter().map(|x| x.2).sum::<usize>().max(1);
            let mut acc: Option<(candle_core::backprop::GradStore, Vec<Option<Tensor>>)> = None;
            let mut step_loss = 0f64;
            let mut step_tokens = 0usize;
            for (b, mask, _) in &built {
                step_tokens += real_tokens(b);
                let lp = model.train_logprobs(b, Some(&adapter), Some(&mut rng), cfg.logprob_chunk)?;
                let loss = lp.mul(&mask.to_dtype(lp.dtype())?)?.sum_all()?.neg()?.affine(1.0 / n_targets as f64, 0.0)?;
                step_loss += loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                let grads = loss.backward()?;
                acc = Some(match acc.take() {
                    None => {
                        let g: Vec<Option<Tensor>> = vars.iter().map(|v| grads.get(v.as_tensor()).cloned()).collect();
                        (grads, g)
                    }
                    Some((store, mut g)) => {
                        for (slot, v) in g.iter_mut().zip(&vars) {
                            if let Some(ng) = grads.get(v.as_tensor()) {
                                *slot = Some(match slot.take() {
                                    Some(o) => o.add(ng)?,
                                    None => ng.clone(),
                                });
                            }
                        }
                        (store, g)
                    }
                });
            }
            let (mut store, g) = acc.expect("non-empty group");
            for (slot, v) in g.into_iter().zip(&vars) {
                if let Some(t) = slot {
                    store.insert(v.as_tensor(), t);
                }
            }
            let grad_norm = if cfg.max_grad_norm > 0.0 {
                clip_grad_norm(&mut store, &vars, cfg.max_grad_norm)?
            } else {
                clip_grad_norm(&mut store, &vars, f64::INFINITY)?
            };
            opt.step(&store)?;
            let secs = t0.elapsed().as_secs_f64();
            train_tokens += step_tokens;
            train_secs += secs;
            step += 1;
            losses.push(step_loss);

            let epoch_end = gi + 1 == groups.len();
            let want_eval = step == total
                || (cfg.eval_each_epoch && epoch_end)
                || cfg.eval_every.is_some_and(|n| n > 0 && step % n == 0);
            let val = if want_eval { eval(&adapter)? } else { None };
            if val.is_some() {
                last_val = val;
            }
            let info = StepInfo {
                step,
                total_steps: total,
                epoch: epoch as f64 + ((gi + 1) * cfg.grad_accum).min(n_batches) as f64 / n_batches as f64,
                loss: step_loss,
                learning_rate: lr,
                grad_norm,
                tokens_per_second: step_tokens as f64 / secs.max(1e-9),
                val_loss: val,
            };
            if cfg.log_every > 0 && (step % cfg.log_every == 0 || step == 1 || step == total) {
                tracing::info!(step, total, loss = info.loss, lr, grad_norm, tok_s = info.tokens_per_second, val_loss = ?val, "sft step");
            }
            on_step(info);
        }
        epoch += 1;
    }

    let adapter_dir = out_dir.join("adapter");
    std::fs::create_dir_all(&adapter_dir)?;
    adapter.save_peft(&adapter_dir)?;
    let k = (losses.len() / 10).clamp(1, 5).min(losses.len().max(1));
    let mean = |s: &[f64]| if s.is_empty() { f64::NAN } else { s.iter().sum::<f64>() / s.len() as f64 };
    Ok(SftReport {
        steps: step,
        train_loss_first: mean(&losses[..k.min(losses.len())]),
        train_loss_last: mean(&losses[losses.len().saturating_sub(k)..]),
        val_loss: last_val,
        tokens_per_second: train_tokens as f64 / train_secs.max(1e-9),
        train_examples: train_ex.len(),
        dropped_examples: dropped,
        adapter: adapter_dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_order_is_deterministic_and_complete() {
        let lengths: Vec<usize> = (0..103).map(|i| (i * 37) % 200 + 5).collect();
        let a = epoch_batches(&lengths, 4, 8, 7, 0);
        assert_eq!(a, epoch_batches(&lengths, 4, 8, 7, 0));
        assert_ne!(a, epoch_batches(&lengths, 4, 8, 7, 1));
        assert_ne!(a, epoch_batches(&lengths, 4, 8, 8, 0));
        let mut all: Vec<usize> = a.iter().flatten().copied().collect();
        all.sort();
        assert_eq!(all, (0..103).collect::<Vec<_>>());
        assert_eq!(a.len(), 103usize.div_ceil(4)); // windows are whole batches: one short batch
    }

    #[test]
    fn length_grouping_reduces_padding() {
        let lengths: Vec<usize> = (0..256).map(|i| (i * 7919) % 500 + 10).collect();
        let pad = |bs: &[Vec<usize>]| -> usize {
            bs.iter().map(|b| { let m = b.iter().map(|&i| lengths[i]).max().unwrap(); b.iter().map(|&i| m - lengths[i]).sum::<usize>() }).sum()
        };
        let grouped = pad(&epoch_batches(&lengths, 8, 16, 1, 0));
        let plain = pad(&epoch_batches(&lengths, 8, 1, 1, 0));
        assert!(grouped * 3 < plain, "grouped {grouped} plain {plain}");
    }

    #[test]
    fn cosine_schedule_with_warmup() {
        let c = SftConfig { warmup_ratio: 0.1, learning_rate: 1.0, ..Default::default() };
        assert_eq!(c.lr_at(0, 100), 0.0);
        assert!((c.lr_at(5, 100) - 0.5).abs() < 1e-12);
        assert!((c.lr_at(10, 100) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(55, 100) - 0.5).abs() < 1e-12);
        assert!(c.lr_at(99, 100) < 0.01);
    }

    #[test]
    fn config_serde_defaults() {
        let c: SftConfig = serde_json::from_str(r#"{"epochs": 1}"#).unwrap();
        assert_eq!(c.epochs, 1);
        assert_eq!(c.lora_r, 32);
        assert_eq!(c.lora_targets.len(), 7);
        assert_eq!(c.lora_config().unwrap().targets.len(), 7);
        let back: SftConfig = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
}
