//! The decoder (Qwen3 / Qwen2 / Llama) with two forwards:
//!
//! * [`Model::train_logprobs`]: padded batch, differentiable w.r.t. LoRA
//!   parameters, built only from ops whose backward candle implements
//!   (manual RMSNorm / RoPE / softmax, additive mask, `cat`-based GQA), plus the
//!   memory-saving custom ops of [`crate::ops`].
//! * [`Model::forward`]: KV-cached inference (prefill + incremental decode)
//!   using candle's fused kernels where available.
//!
//! Both share one layer implementation switched by a flag, and a test checks
//! they produce the same logits.

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::io;
use crate::lora::LoraAdapter;
use crate::ops::DropMask;
use crate::ops::{
    attention, frozen_linear, lora_linear, plain_linear, repeat_kv, rms_norm_fused, rms_norm_train,
    rope_train, token_logprobs,
};
use crate::packed::PackedF32;
use crate::quantized::QWeight;
use std::sync::Arc;
use candle_core::{DType, Device, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use std::path::Path;

/// Additive mask value for disallowed attention entries. Finite (not -inf) so that a
/// fully-masked row (left padding) yields a uniform distribution instead of NaN; f16
/// gets a value that stays finite in its range (max 65504).
fn mask_value(dtype: DType) -> f32 {
    if dtype == DType::F16 {
        -3.0e4
    } else {
        -1.0e9
    }
}

/// The seven linear projections of a decoder layer (the LoRA targets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proj {
    Q = 0,
    K = 1,
    V = 2,
    O = 3,
    Gate = 4,
    Up = 5,
    Down = 6,
}

impl Proj {
    pub const ALL: [Proj; 7] = [
        Proj::Q,
        Proj::K,
        Proj::V,
        Proj::O,
        Proj::Gate,
        Proj::Up,
        Proj::Down,
    ];

    /// HF module name (`q_proj`, ..., `down_proj`), as used in PEFT `target_modules`.
    pub fn hf_name(self) -> &'static str {
        match self {
            Proj::Q => "q_proj",
            Proj::K => "k_proj",
            Proj::V => "v_proj",
            Proj::O => "o_proj",
            Proj::Gate => "gate_proj",
            Proj::Up => "up_proj",
            Proj::Down => "down_proj",
        }
    }

    /// Path inside a decoder layer (`self_attn.q_proj`, `mlp.gate_proj`, ...).
    pub fn module_path(self) -> &'static str {
        match self {
            Proj::Q => "self_attn.q_proj",
            Proj::K => "self_attn.k_proj",
            Proj::V => "self_attn.v_proj",
            Proj::O => "self_attn.o_proj",
            Proj::Gate => "mlp.gate_proj",
            Proj::Up => "mlp.up_proj",
            Proj::Down => "mlp.down_proj",
        }
    }

    pub fn from_hf_name(s: &str) -> Option<Proj> {
        Proj::ALL.into_iter().find(|p| p.hf_name() == s)
    }

    /// `(out_features, in_features)` for this projection.
    pub fn shape(self, c: &ModelConfig) -> (usize, usize) {
        let h = c.hidden_size;
        match self {
            Proj::Q => (c.num_attention_heads * c.head_dim, h),
            Proj::K | Proj::V => (c.num_key_value_heads * c.head_dim, h),
            Proj::O => (h, c.num_attention_heads * c.head_dim),
            Proj::Gate | Proj::Up => (c.intermediate_size, h),
            Proj::Down => (h, c.intermediate_size),
        }
    }

    fn has_bias(self, c: &ModelConfig) -> bool {
        match self {
            Proj::Q | Proj::K | Proj::V => c.qkv_bias,
            Proj::O => c.o_bias,
            _ => false,
        }
    }
}

/// The weight of a linear layer, `[out, in]`.
#[derive(Debug, Clone)]
pub enum Weight {
    /// A dense tensor in the model's dtype: trainable, mergeable, saved as is.
    Dense(Tensor),
    /// A GGUF block-quantized matrix (Q8_0, Q4_K, ...): Q8_0 on AVX-512 VNNI or AVX2 CPUs
    /// runs our kernels ([`crate::q8gemv`]), everything else candle's quantized matmul. Both
    /// quantize the activations per block as llama.cpp does. Inference only: training,
    /// merging and quantizing again refuse it with an error.
    Quantized(QWeight),
    /// A dense f32 weight packed for the CPU inference kernel ([`crate::packed`]) by
    /// [`Model::pack_for_inference`]. Inference only, like `Quantized`; [`Linear::to_dense`]
    /// unpacks it.
    Packed(Arc<PackedF32>),
}

impl Weight {
    /// Inference `x W^T` (no autograd).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Weight::Dense(w) => crate::ops::infer_linear(x, w)?,
            Weight::Quantized(q) => q.forward(x)?,
            Weight::Packed(p) => p
                .forward(x)?
                .ok_or_else(|| ModelError::Input("packed f32 weight: input is not a CPU f32 tensor".into()))?,
        })
    }

    /// Bytes of weight storage (what a decode step streams from memory).
    pub fn storage_bytes(&self) -> usize {
        match self {
            Weight::Dense(t) => tensor_bytes(t),
            Weight::Quantized(q) => q.storage_bytes(),
            Weight::Packed(p) => p.storage_bytes(),
        }
    }

    /// The weight as a dense tensor on `device` (quantized ones dequantized to f32,
    /// packed ones unpacked).
    pub fn to_dense(&self, device: &Device) -> Result<Tensor> {
        match self {
            Weight::Dense(t) => Ok(t.clone()),
            Weight::Quantized(q) => q.dequantize(device),
            Weight::Packed(p) => Ok(p.to_tensor(device)?),
        }
    }

    /// Rows `ids` as an f32 `[ids.len(), in]` tensor, read straight from a packed or our
    /// Q8_0 layout (the embedding lookup of a tied head that holds the only copy of the
    /// table); `None` for other kinds.
    fn gather_rows(&self, ids: &[u32], device: &Device) -> Result<Option<Tensor>> {
        let (rows, k) = match self {
            Weight::Packed(p) => (p.gather_rows(ids), p.dims().1),
            Weight::Quantized(QWeight::Q8(p)) => (p.gather_rows(ids), p.cols()),
            _ => return Ok(None),
        };
        let rows = rows.ok_or_else(|| ModelError::Input("token id past the embedding table".into()))?;
        Ok(Some(Tensor::from_vec(rows, (ids.len(), k), device)?))
    }
}

/// A frozen linear layer (`y = x W^T + b`).
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Weight,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn dense(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear { weight: Weight::Dense(weight), bias }
    }

    pub fn is_quantized(&self) -> bool {
        matches!(self.weight, Weight::Quantized(_))
    }

    /// The dense weight; an error for a quantized or packed layer (inference only).
    pub fn dense_weight(&self) -> Result<&Tensor> {
        match &self.weight {
            Weight::Dense(t) => Ok(t),
            Weight::Quantized(_) => Err(quantized_only()),
            Weight::Packed(_) => Err(packed_only()),
        }
    }

    /// Mutable dense weight (full fine-tuning, LoRA merge); an error when quantized or
    /// packed.
    pub fn dense_weight_mut(&mut self) -> Result<&mut Tensor> {
        match &mut self.weight {
            Weight::Dense(t) => Ok(t),
            Weight::Quantized(_) => Err(quantized_only()),
            Weight::Packed(_) => Err(packed_only()),
        }
    }

    /// The weight as a dense tensor on `device` (quantized ones dequantized to f32,
    /// packed ones unpacked).
    pub fn to_dense(&self, device: &Device) -> Result<Tensor> {
        self.weight.to_dense(device)
    }

    /// Inference `x W^T + b` for any kind of weight (no autograd through it).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.weight.forward(x)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// Bytes of weight storage (what a decode step streams from memory).
    pub fn weight_bytes(&self) -> usize {
        self.weight.storage_bytes()
    }
}

fn tensor_bytes(t: &Tensor) -> usize {
    t.elem_count() * t.dtype().size_in_bytes()
}

fn packed_only() -> ModelError {
    ModelError::Input(
        "this model's weights are packed for CPU inference: train or merge on a model loaded without packing".into(),
    )
}

fn quantized_only() -> ModelError {
    ModelError::Input(
        "this model has quantized (GGUF) weights, which are inference-only: train or merge on the dense HF model".into(),
    )
}

/// Weights of one decoder layer.
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    pub input_layernorm: Tensor,
    pub post_attention_layernorm: Tensor,
    pub q_norm: Option<Tensor>,
    pub k_norm: Option<Tensor>,
    /// Indexed by `Proj as usize`.
    pub proj: Vec<Linear>,
}

/// Per-sequence KV cache for [`Model::forward`]; owned by the caller (the engine).
///
/// Keys/values live in preallocated `[B, Hkv, capacity, D]` buffers written in place,
/// so a decode step costs O(1) copies instead of re-concatenating the whole history.
/// Buffers grow geometrically. Every sequence in the batch shares the same length (no
/// padding in the cached path). `Clone` deep-copies, so a cached prompt prefix can be
/// forked into several continuations.
#[derive(Debug)]
pub struct KvCache {
    pub(crate) layers: Vec<Option<(Tensor, Tensor)>>,
    pub(crate) seq_len: usize,
}

/// Allocation granularity of the KV buffers (positions).
const KV_CHUNK: usize = 256;

impl Clone for KvCache {
    fn clone(&self) -> Self {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                l.as_ref().and_then(|(k, v)| {
                    // A failed copy (out of memory) degrades to an empty cache slot,
                    // which `forward` reports as an inconsistent cache.
                    Some((k.copy().ok()?, v.copy().ok()?))
                })
            })
            .collect();
        KvCache {
            layers,
            seq_len: self.seq_len,
        }
    }
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        KvCache {
            layers: vec![None; num_layers],
            seq_len: 0,
        }
    }
    /// Number of positions already cached (the position offset of the next token).
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }
    pub fn reset(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
        self.seq_len = 0;
    }
    /// Forgets cached positions beyond `len` (e.g. to reuse a shared prompt prefix).
    pub fn truncate(&mut self, len: usize) {
        self.seq_len = self.seq_len.min(len);
    }

    /// A deep copy that reports allocation failure (`clone` degrades to empty slots).
    pub fn fork(&self) -> Result<Self> {
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            layers.push(match l {
                Some((k, v)) => Some((k.copy()?, v.copy()?)),
                None => None,
            });
        }
        Ok(KvCache { layers, seq_len: self.seq_len })
    }

    /// Writes `k`, `v` (`[B, Hkv, t, D]`) at position `offset` of layer `i` and returns
    /// views of the first `offset + t` positions.
    pub(crate) fn append(
        &mut self,
        i: usize,
        k: &Tensor,
        v: &Tensor,
        offset: usize,
    ) -> Result<(Tensor, Tensor)> {
        let (b, h, t, d) = k.dims4()?;
        let need = offset + t;
        let slot = self
            .layers
            .get_mut(i)
            .ok_or_else(|| ModelError::Input("KV cache has too few layers".into()))?;
        let grow = match slot {
            Some((ck, _)) => {
                let (cb, ch, cap, cd) = ck.dims4()?;
                if (cb, ch, cd) != (b, h, d) {
                    return Err(ModelError::Input(format!(
                        "KV cache holds batch {cb}, not {b}; reset it between batches"
                    )));
                }
                cap < need
            }
            None => true,
        };
        if grow {
            let cap = slot
                .as_ref()
                .map(|(ck, _)| ck.dim(2))
                .transpose()?
                .unwrap_or(0);
            let new_cap = need.div_ceil(KV_CHUNK).max(1) * KV_CHUNK;
            let new_cap = new_cap.max(2 * cap);
            let nk = Tensor::zeros((b, h, new_cap, d), k.dtype(), k.device())?;
            let nv = Tensor::zeros((b, h, new_cap, d), v.dtype(), v.device())?;
            if let Some((ok, ov)) = slot.as_ref() {
                if offset > 0 {
                    nk.slice_set(&ok.narrow(2, 0, offset)?.contiguous()?, 2, 0)?;
                    nv.slice_set(&ov.narrow(2, 0, offset)?.contiguous()?, 2, 0)?;
                }
            }
            *slot = Some((nk, nv));
        }
        let (ck, cv) = slot
            .as_ref()
            .ok_or_else(|| ModelError::Input("KV cache slot".into()))?;
        ck.slice_set(&k.contiguous()?, 2, offset)?;
        cv.slice_set(&v.contiguous()?, 2, offset)?;
        Ok((ck.narrow(2, 0, need)?, cv.narrow(2, 0, need)?))
    }
}

/// A padded token batch for the training forward. All vectors are row-major `[batch, seq_len]`.
#[derive(Debug, Clone)]
pub struct TokenBatch {
    pub batch: usize,
    pub seq_len: usize,
    pub input_ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding (left or right padding both work).
    pub attention_mask: Vec<u32>,
    /// Token whose log-prob is returned at each position (usually `input_ids` shifted left);
    /// any valid id at positions the caller will mask out.
    pub targets: Vec<u32>,
}

impl TokenBatch {
    /// Right-pads `seqs` with `pad_id` into one batch for next-token training:
    /// `targets[t] = seq[t + 1]` (`pad_id` past the end). Callers build their own loss
    /// mask (e.g. completion tokens only) over positions `t` whose target is real.
    pub fn right_padded(seqs: &[Vec<u32>], pad_id: u32) -> Result<Self> {
        let t = seqs.iter().map(Vec::len).max().unwrap_or(0);
        if seqs.is_empty() || t == 0 {
            return Err(ModelError::Input("empty batch".into()));
        }
        let n = seqs.len() * t;
        let (mut input_ids, mut attention_mask, mut targets) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for s in seqs {
            for j in 0..t {
                input_ids.push(s.get(j).copied().unwrap_or(pad_id));
                attention_mask.push(u32::from(j < s.len()));
                targets.push(s.get(j + 1).copied().unwrap_or(pad_id));
            }
        }
        Ok(TokenBatch {
            batch: seqs.len(),
            seq_len: t,
            input_ids,
            attention_mask,
            targets,
        })
    }

    fn validate(&self, vocab: usize) -> Result<()> {
        let n = self.batch * self.seq_len;
        if n == 0 {
            return Err(ModelError::Input("empty batch".into()));
        }
        if self.input_ids.len() != n || self.attention_mask.len() != n || self.targets.len() != n {
            return Err(ModelError::Input(format!(
                "batch {}x{}: input_ids {}, attention_mask {}, targets {}",
                self.batch,
                self.seq_len,
                self.input_ids.len(),
                self.attention_mask.len(),
                self.targets.len()
            )));
        }
        check_ids(&self.input_ids, vocab)?;
        check_ids(&self.targets, vocab)
    }
}

fn check_ids(ids: &[u32], vocab: usize) -> Result<()> {
    if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
        return Err(ModelError::Input(format!(
            "token id {bad} >= vocab size {vocab}"
        )));
    }
    Ok(())
}

/// Forward-pass options shared by both paths.
pub(crate) struct Ctx<'a> {
    pub(crate) train: bool,
    pub(crate) lora: Option<&'a LoraAdapter>,
    pub(crate) rng: Option<&'a mut ChaCha8Rng>,
    /// Set when the uncached attention may use the fused CPU kernel (`crate::attn`).
    pub(crate) fused_mask: Option<crate::attn::AttnMask>,
    /// How LoRA dropout masks are drawn (see [`Masks`]).
    pub(crate) masks: Masks,
    /// Treat the adapter as constants (no tape): a recomputed layer's first forward.
    pub(crate) lora_frozen: bool,
}

/// Where LoRA dropout masks come from. A layer whose activations are recomputed in the
/// backward must see the same masks twice, so its first forward records them and the
/// recompute replays them instead of drawing from the RNG.
#[derive(Default)]
pub(crate) enum Masks {
    #[default]
    Draw,
    Record(Vec<DropMask>),
    Replay(std::collections::VecDeque<DropMask>),
}

/// The decoder with frozen base weights held in the compute dtype.
#[derive(Debug, Clone)]
pub struct Model {
    pub config: ModelConfig,
    /// The embedding table `[vocab, hidden]`; empty (`[0, hidden]`) when a tied head holds
    /// the only copy (a packed or Q8_0 head): read rows with [`Model::embed_rows`] and
    /// the whole table with [`Model::embedding_table`].
    pub embed_tokens: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub norm: Tensor,
    /// `None` when tied to `embed_tokens`.
    pub lm_head: Option<Tensor>,
    /// The output projection inference uses for logits when it is not the dense
    /// `lm_head_weight()`: a GGUF model's quantized head (tied or not) or the packed head
    /// of [`Model::pack_for_inference`]. When tied, our Q8_0 and packed heads also serve
    /// the embedding lookup and the row-major table is dropped; other quantized heads
    /// keep a dequantized table for the lookup.
    pub(crate) infer_head: Option<Weight>,
    device: Device,
    dtype: DType,
    /// RoPE inverse frequencies, computed in f32 like transformers does.
    inv_freq: Vec<f32>,
    /// LoRA training: how many decoder layers keep only their input on the tape and are
    /// recomputed in the backward (gradient checkpointing); see [`Model::set_recompute_layers`].
    recompute_layers: usize,
}

fn inv_freq(c: &ModelConfig) -> Vec<f32> {
    let d = c.head_dim;
    let base = c.rope_theta as f32;
    (0..d / 2)
        .map(|i| 1.0f32 / base.powf((2 * i) as f32 / d as f32))
        .collect()
}

/// Standard normal samples via Box-Muller (keeps us off rand_distr).
fn randn(rng: &mut ChaCha8Rng, n: usize, std: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = rng.random::<f64>().max(1e-300);
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        out.push((r * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32);
        out.push((r * (2.0 * std::f64::consts::PI * u2).sin() * std) as f32);
    }
    out.truncate(n);
    out
}

impl Model {
    /// Gradient checkpointing for LoRA training: the first `n` decoder layers keep only
    /// their input on the autograd tape and run their forward again in the backward. Each
    /// such layer trades one extra layer forward (about 1% of a Qwen3-0.6B step per layer)
    /// for its activations (about 120 MiB at seq 512, batch 2). Results are unchanged.
    pub fn set_recompute_layers(&mut self, n: usize) {
        self.recompute_layers = n;
    }

    pub fn recompute_layers(&self) -> usize {
        self.recompute_layers
    }

    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Whether any weight is block-quantized (GGUF): such a model only runs inference.
    pub fn is_quantized(&self) -> bool {
        matches!(self.infer_head, Some(Weight::Quantized(_))) || self.layers.iter().any(|l| l.proj.iter().any(Linear::is_quantized))
    }

    /// Weight bytes one decode step reads: every projection plus the output head (the
    /// embedding lookup reads one row and is left out).
    pub fn decode_weight_bytes(&self) -> usize {
        let proj: usize = self.layers.iter().flat_map(|l| l.proj.iter()).map(Linear::weight_bytes).sum();
        let head = match &self.infer_head {
            Some(w) => w.storage_bytes(),
            None => tensor_bytes(self.lm_head_weight()),
        };
        proj + head
    }

    /// The lm_head weight (`embed_tokens` when tied).
    pub fn lm_head_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// Repacks the dense f32 projections and the output head for the CPU inference
    /// kernel ([`crate::packed`]); returns how many matrices it packed. A no-op off the
    /// CPU, for other dtypes and for trainable (variable) weights.
    ///
    /// Afterwards the model runs inference only: training and merging refuse the packed
    /// projections with an error. Each projection's row-major tensor is dropped once
    /// packed (unless another clone of the model still holds it); so is a tied
    /// embedding table, whose rows the lookup then reads from the packed head
    /// ([`Model::embed_rows`]).
    pub fn pack_for_inference(&mut self) -> Result<usize> {
        if !matches!(self.device, Device::Cpu) || self.dtype != DType::F32 {
            return Ok(0);
        }
        let pack = |t: &Tensor| -> Result<Option<Weight>> {
            if t.is_variable() {
                return Ok(None);
            }
            Ok(PackedF32::from_tensor(t)?.map(|p| Weight::Packed(Arc::new(p))))
        };
        let mut packed = 0;
        for lin in self.layers.iter_mut().flat_map(|l| l.proj.iter_mut()) {
            if let Weight::Dense(t) = &lin.weight {
                if let Some(w) = pack(t)? {
                    lin.weight = w;
                    packed += 1;
                }
            }
        }
        if self.infer_head.is_none() {
            self.infer_head = pack(self.lm_head_weight())?;
            if self.infer_head.is_some() {
                packed += 1;
                if self.lm_head.is_none() {
                    self.embed_tokens = Tensor::zeros((0, self.config.hidden_size), self.dtype, &self.device)?;
                }
            }
        }
        Ok(packed)
    }

    /// Whether the embedding rows live only in the inference head (tied weights packed for
    /// inference, or a tied Q8_0 GGUF table): `embed_tokens` is then empty.
    fn table_in_head(&self) -> bool {
        self.embed_tokens.dims().first() == Some(&0)
    }

    /// Embedding rows of `ids`, `[ids.len(), hidden]` (ids already checked against the
    /// vocabulary).
    pub fn embed_rows(&self, ids: &[u32]) -> Result<Tensor> {
        if self.table_in_head() {
            if let Some(w) = &self.infer_head {
                if let Some(rows) = w.gather_rows(ids, &self.device)? {
                    return Ok(rows);
                }
            }
            return Err(ModelError::Weight("the embedding table is missing".into()));
        }
        let t = Tensor::from_slice(ids, ids.len(), &self.device)?;
        Ok(self.embed_tokens.index_select(&t, 0)?)
    }

    /// The embedding table as a dense tensor (rebuilt from the head when only the head
    /// holds it).
    pub fn embedding_table(&self) -> Result<Tensor> {
        match &self.infer_head {
            Some(w) if self.table_in_head() => w.to_dense(&self.device),
            _ => Ok(self.embed_tokens.clone()),
        }
    }

    /// A fresh KV cache sized for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// A model from loaded parts (the GGUF loader); the dtype is the embedding's.
    pub(crate) fn from_parts(
        config: ModelConfig,
        embed_tokens: Tensor,
        layers: Vec<DecoderLayer>,
        norm: Tensor,
        lm_head: Option<Tensor>,
        quant_head: Option<QWeight>,
        device: &Device,
    ) -> Model {
        Model {
            inv_freq: inv_freq(&config),
            dtype: embed_tokens.dtype(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            infer_head: quant_head.map(Weight::Quantized),
            device: device.clone(),
            recompute_layers: 0,
            config,
        }
    }

    /// Random weights (normal, std 0.02; norms at 1) — deterministic in `seed`.
    pub fn random(config: ModelConfig, seed: u64, device: &Device, dtype: DType) -> Result<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let c = &config;
        let mut randt = |shape: (usize, usize)| -> Result<Tensor> {
            let v = randn(&mut rng, shape.0 * shape.1, 0.02);
            Ok(Tensor::from_vec(v, shape, device)?.to_dtype(dtype)?)
        };
        let embed_tokens = randt((c.vocab_size, c.hidden_size))?;
        let ones = |n: usize| Tensor::ones(n, dtype, device);
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for _ in 0..c.num_hidden_layers {
            let mut proj = Vec::with_capacity(7);
            for p in Proj::ALL {
                let (o, i) = p.shape(c);
                let bias = if p.has_bias(c) {
                    Some(Tensor::zeros(o, dtype, device)?)
                } else {
                    None
                };
                proj.push(Linear::dense(randt((o, i))?, bias));
            }
            layers.push(DecoderLayer {
                input_layernorm: ones(c.hidden_size)?,
                post_attention_layernorm: ones(c.hidden_size)?,
                q_norm: if c.qk_norm {
                    Some(ones(c.head_dim)?)
                } else {
                    None
                },
                k_norm: if c.qk_norm {
                    Some(ones(c.head_dim)?)
                } else {
                    None
                },
                proj,
            });
        }
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(randt((c.vocab_size, c.hidden_size))?)
        };
        Ok(Model {
            infer_head: None,
            recompute_layers: 0,
            inv_freq: inv_freq(c),
            embed_tokens,
            layers,
            norm: ones(c.hidden_size)?,
            lm_head,
            device: device.clone(),
            dtype,
            config,
        })
    }

    /// Loads a HF model directory (`config.json` + single or sharded safetensors).
    /// Weights stored as f32/bf16/f16 are converted to `dtype` (f32 recommended on CPU).
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let files = io::safetensors_files(dir)?;
        let st = io::mmap_files(&files)?;
        let c = &config;
        let get = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let t = st
                .load(name, device)
                .map_err(|e| ModelError::Weight(format!("`{name}`: {e}")))?;
            if t.dims() != shape {
                return Err(ModelError::Weight(format!(
                    "`{name}` has shape {:?}, expected {shape:?}",
                    t.dims()
                )));
            }
            Ok(t.to_dtype(dtype)?)
        };
        let embed_tokens = get("model.embed_tokens.weight", &[c.vocab_size, c.hidden_size])?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let pre = format!("model.layers.{i}");
            let mut proj = Vec::with_capacity(7);
            for p in Proj::ALL {
                let (o, inp) = p.shape(c);
                let base = format!("{pre}.{}", p.module_path());
                let weight = get(&format!("{base}.weight"), &[o, inp])?;
                let bias = if p.has_bias(c) {
                    Some(get(&format!("{base}.bias"), &[o])?)
                } else {
                    None
                };
                proj.push(Linear::dense(weight, bias));
            }
            let (q_norm, k_norm) = if c.qk_norm {
                (
                    Some(get(
                        &format!("{pre}.self_attn.q_norm.weight"),
                        &[c.head_dim],
                    )?),
                    Some(get(
                        &format!("{pre}.self_attn.k_norm.weight"),
                        &[c.head_dim],
                    )?),
                )
            } else {
                (None, None)
            };
            layers.push(DecoderLayer {
                input_layernorm: get(&format!("{pre}.input_layernorm.weight"), &[c.hidden_size])?,
                post_attention_layernorm: get(
                    &format!("{pre}.post_attention_layernorm.weight"),
                    &[c.hidden_size],
                )?,
                q_norm,
                k_norm,
                proj,
            });
        }
        let norm = get("model.norm.weight", &[c.hidden_size])?;
        // Some tied checkpoints still carry an lm_head copy; honour the config flag.
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(get("lm_head.weight", &[c.vocab_size, c.hidden_size])?)
        };
        Ok(Model {
            infer_head: None,
            recompute_layers: 0,
            inv_freq: inv_freq(c),
            embed_tokens,
            layers,
            norm,
            lm_head,
            device: device.clone(),
            dtype,
            config,
        })
    }

    /// HF tensor names and tensors of this model (lm_head omitted when tied); quantized
    /// weights are dequantized, so a GGUF model saves as an ordinary HF dir.
    pub fn named_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            self.embedding_table()?,
        )];
        for (i, l) in self.layers.iter().enumerate() {
            let pre = format!("model.layers.{i}");
            out.push((
                format!("{pre}.input_layernorm.weight"),
                l.input_layernorm.clone(),
            ));
            out.push((
                format!("{pre}.post_attention_layernorm.weight"),
                l.post_attention_layernorm.clone(),
            ));
            if let Some(t) = &l.q_norm {
                out.push((format!("{pre}.self_attn.q_norm.weight"), t.clone()));
            }
            if let Some(t) = &l.k_norm {
                out.push((format!("{pre}.self_attn.k_norm.weight"), t.clone()));
            }
            for p in Proj::ALL {
                let lin = &l.proj[p as usize];
                out.push((format!("{pre}.{}.weight", p.module_path()), lin.to_dense(&self.device)?));
                if let Some(b) = &lin.bias {
                    out.push((format!("{pre}.{}.bias", p.module_path()), b.clone()));
                }
            }
        }
        out.push(("model.norm.weight".to_string(), self.norm.clone()));
        if let Some(h) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), h.clone()));
        }
        Ok(out)
    }

    /// Turns every weight into a trainable [`Var`] (full fine-tuning), in the order and
    /// with the names of [`Model::named_tensors`]. The training forward then computes weight
    /// gradients (it checks `is_variable()`: plain matmuls, differentiable norms and
    /// lm_head); optimizer updates land in this model's tensors, so `save_hf` saves them.
    pub fn make_trainable(&mut self) -> Result<Vec<(String, Var)>> {
        let mut out = Vec::new();
        let mut conv = |name: String, t: &mut Tensor| -> Result<()> {
            let v = Var::from_tensor(t)?;
            *t = v.as_tensor().clone();
            out.push((name, v));
            Ok(())
        };
        conv("model.embed_tokens.weight".into(), &mut self.embed_tokens)?;
        for (i, l) in self.layers.iter_mut().enumerate() {
            let pre = format!("model.layers.{i}");
            conv(format!("{pre}.input_layernorm.weight"), &mut l.input_layernorm)?;
            conv(format!("{pre}.post_attention_layernorm.weight"), &mut l.post_attention_layernorm)?;
            if let Some(t) = &mut l.q_norm {
                conv(format!("{pre}.self_attn.q_norm.weight"), t)?;
            }
            if let Some(t) = &mut l.k_norm {
                conv(format!("{pre}.self_attn.k_norm.weight"), t)?;
            }
            for p in Proj::ALL {
                let lin = &mut l.proj[p as usize];
                conv(format!("{pre}.{}.weight", p.module_path()), lin.dense_weight_mut()?)?;
                if let Some(b) = &mut lin.bias {
                    conv(format!("{pre}.{}.bias", p.module_path()), b)?;
                }
            }
        }
        conv("model.norm.weight".into(), &mut self.norm)?;
        if let Some(h) = &mut self.lm_head {
            conv("lm_head.weight".into(), h)?;
        }
        Ok(out)
    }

    /// Saves a HF model dir: `config.json`, `model.safetensors` (in `save_dtype`:
    /// F32, BF16 or F16), `generation_config.json`, and the tokenizer files found in
    /// `tokenizer_src` (typically the base model dir). An existing
    /// `generation_config.json` in `tokenizer_src` is copied rather than regenerated.
    pub fn save_hf(
        &self,
        dir: &Path,
        save_dtype: DType,
        tokenizer_src: Option<&Path>,
    ) -> Result<()> {
        let dtype_name = match save_dtype {
            DType::F32 => "float32",
            DType::BF16 => "bfloat16",
            DType::F16 => "float16",
            other => {
                return Err(ModelError::Input(format!(
                    "cannot save weights as {other:?}"
                )))
            }
        };
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let mut tensors = Vec::new();
        for (k, t) in self.named_tensors()? {
            tensors.push((k, t.to_dtype(save_dtype)?));
        }
        io::write_safetensors(&dir.join("model.safetensors"), tensors)?;
        io::write_json(&dir.join("config.json"), &self.config.to_json(dtype_name))?;
        let gen_src = tokenizer_src.map(|s| s.join("generation_config.json"));
        match gen_src.filter(|p| p.is_file()) {
            Some(p) => {
                std::fs::copy(&p, dir.join("generation_config.json"))
                    .map_err(|e| ModelError::io(&p, e))?;
            }
            None => {
                let eos = match self.config.eos_token_ids.as_slice() {
                    [one] => json!(one),
                    many => json!(many),
                };
                io::write_json(
                    &dir.join("generation_config.json"),
                    &json!({"bos_token_id": self.config.bos_token_id, "eos_token_id": eos}),
                )?;
            }
        }
        if let Some(src) = tokenizer_src {
            io::copy_tokenizer_files(src, dir)?;
        }
        Ok(())
    }

    /// cos/sin tables `[N, D/2]` for `positions`.
    fn rope_tables(&self, positions: &[u32]) -> Result<(Tensor, Tensor)> {
        let w = self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * w);
        let mut sin = Vec::with_capacity(positions.len() * w);
        for &p in positions {
            for &f in &self.inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let n = positions.len();
        let cos = Tensor::from_vec(cos, (n, w), &self.device)?.to_dtype(self.dtype)?;
        let sin = Tensor::from_vec(sin, (n, w), &self.device)?.to_dtype(self.dtype)?;
        Ok((cos, sin))
    }

    fn norm(&self, x: &Tensor, w: &Tensor, train: bool) -> Result<Tensor> {
        let eps = self.config.rms_norm_eps;
        Ok(if train && w.is_variable() {
            crate::ops::rms_norm_diff(x, w, eps)?
        } else if train {
            rms_norm_train(x, w, eps)?
        } else {
            rms_norm_fused(x, w, eps)?
        })
    }

    /// The LoRA dropout mask for the next adapted projection's input (in call order):
    /// drawn from the context's RNG, recorded or replayed as `ctx.masks` says.
    pub(crate) fn lora_mask(&self, shape: &candle_core::Shape, ad: &LoraAdapter, ctx: &mut Ctx) -> Option<DropMask> {
        let p_drop = ad.config.dropout;
        match &mut ctx.masks {
            Masks::Replay(q) => q.pop_front(),
            masks => match (p_drop > 0.0, ctx.rng.as_deref_mut()) {
                (true, Some(rng)) => {
                    let m = DropMask::sample(shape, p_drop, rng);
                    if let Masks::Record(log) = masks {
                        log.push(m.clone());
                    }
                    Some(m)
                }
                _ => None,
            },
        }
    }

    /// Per-head norm (when the model has one) and RoPE for `x: [B, T, H, D]` on the training
    /// path. A trainable norm weight (full fine-tuning) goes through the differentiable norm
    /// first, so it gets its gradient.
    fn norm_rope_thd(&self, x: &Tensor, w: Option<&Tensor>, cos: &Tensor, sin: &Tensor, train: bool) -> Result<Tensor> {
        let eps = self.config.rms_norm_eps;
        Ok(match w {
            Some(w) if w.is_variable() => {
                let x = self.norm(x, w, train)?;
                crate::ops::norm_rope_thd(&x, None, eps, cos, sin)?
            }
            w => crate::ops::norm_rope_thd(x, w, eps, cos, sin)?,
        })
    }

    fn linear(&self, x: &Tensor, layer: usize, p: Proj, ctx: &mut Ctx) -> Result<Tensor> {
        let lin = &self.layers[layer].proj[p as usize];
        let pair = ctx
            .lora
            .and_then(|ad| ad.pair(layer, p).map(|pair| (ad, pair)));
        match (ctx.train, pair) {
            (true, Some((ad, pair))) => {
                let mask = self.lora_mask(x.shape(), ad, ctx);
                let (a, b) = if ctx.lora_frozen {
                    (pair.a.as_tensor().detach(), pair.b.as_tensor().detach())
                } else {
                    (pair.a.as_tensor().clone(), pair.b.as_tensor().clone())
                };
                Ok(lora_linear(x, lin.dense_weight()?, lin.bias.as_ref(), &a, &b, ad.scale(), mask.as_ref())?)
            }
            (train, pair) => {
                let mut y = if train {
                    let w = lin.dense_weight()?;
                    let y = if w.is_variable() {
                        plain_linear(x, w)? // full fine-tuning: dW too
                    } else {
                        frozen_linear(x, w)?
                    };
                    match &lin.bias {
                        Some(b) => y.broadcast_add(b)?,
                        None => y,
                    }
                } else {
                    lin.forward(x)?
                };
                if let Some((ad, pair)) = pair {
                    // Inference: detached adapter weights, so no graph is built through
                    // the KV cache; the scale is applied to the rank-r intermediate.
                    let xa =
                        plain_linear(x, &pair.a.as_tensor().detach())?.affine(ad.scale(), 0.0)?;
                    y = (y + plain_linear(&xa, &pair.b.as_tensor().detach())?)?;
                }
                Ok(y)
            }
        }
    }

    /// One decoder layer. `cos`/`sin`: `[B,T,D/2]` in train mode (per-row positions), `[T,D/2]` otherwise.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn layer(
        &self,
        i: usize,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<(&mut KvCache, usize)>,
        ctx: &mut Ctx,
    ) -> Result<Tensor> {
        let c = &self.config;
        let l = &self.layers[i];
        let (b, t, _) = x.dims3()?;
        let (hq, hkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let train = ctx.train;
        // CPU f32 training: each half of the layer is one fused node with a hand-written
        // backward (`crate::blocks`), for LoRA and for a full fine-tune.
        let fused_blocks = train && ctx.fused_mask.is_some();
        let attn_half = if fused_blocks {
            crate::blocks::attention(self, i, x, cos, sin, ctx)?
        } else {
            None
        };
        let x = match attn_half {
            Some(y) => y,
            None => {
                let h = self.norm(x, &l.input_layernorm, train)?;
                let q = self.linear(&h, i, Proj::Q, ctx)?.reshape((b, t, hq, hd))?;
                let k = self.linear(&h, i, Proj::K, ctx)?.reshape((b, t, hkv, hd))?;
                let v = self.linear(&h, i, Proj::V, ctx)?.reshape((b, t, hkv, hd))?;
                let scale = 1.0 / (hd as f64).sqrt();
                let attn = match (&ctx.fused_mask, cache) {
                    // Training on CPU f32: everything stays in the projections' [B, T, H, D]
                    // layout, and q/k norm + RoPE is one node that keeps only its input, so the
                    // tape holds no normalised, rotated or transposed copies.
                    (Some(m), None) => {
                        let q = self.norm_rope_thd(&q, l.q_norm.as_ref(), cos, sin, train)?;
                        let k = self.norm_rope_thd(&k, l.k_norm.as_ref(), cos, sin, train)?;
                        crate::attn::fused_attention(&q, &k, &v, m.clone(), scale, crate::attn::AttnLayout::Bthd)?
                            .reshape((b, t, hq * hd))?
                    }
                    (_, cache) => {
                        let (mut q, mut k) = (q, k);
                        if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
                            q = self.norm(&q, qn, train)?;
                            k = self.norm(&k, kn, train)?;
                        }
                        let q = q.transpose(1, 2)?.contiguous()?;
                        let k = k.transpose(1, 2)?.contiguous()?;
                        let v = v.transpose(1, 2)?.contiguous()?;
                        let (q, k) = if train {
                            (rope_train(&q, cos, sin)?, rope_train(&k, cos, sin)?)
                        } else {
                            (
                                candle_nn::rotary_emb::rope(&q, cos, sin)?,
                                candle_nn::rotary_emb::rope(&k, cos, sin)?,
                            )
                        };
                        let attn = match cache {
                            // Cached inference: GQA without materialising repeated heads — the query
                            // heads sharing a KV head are folded into the row dimension.
                            Some((cache, offset)) => {
                                let (k_all, v_all) = cache.append(i, &k, &v, offset)?;
                                let l_all = k_all.dim(2)?;
                                let n_rep = c.n_rep();
                                let q = q.reshape((b, hkv, n_rep * t, hd))?;
                                let mut s = q.matmul(&k_all.t()?)?.affine(scale, 0.0)?;
                                if let Some(m) = mask {
                                    s = s
                                        .reshape((b, hkv, n_rep, t, l_all))?
                                        .broadcast_add(m)?
                                        .reshape((b, hkv, n_rep * t, l_all))?;
                                }
                                let p = candle_nn::ops::softmax_last_dim(&s)?;
                                p.matmul(&v_all)?.reshape((b, hq, t, hd))?
                            }
                            None => {
                                let k = repeat_kv(&k, c.n_rep())?;
                                let v = repeat_kv(&v, c.n_rep())?;
                                attention(&q, &k, &v, mask, scale)?
                            }
                        };
                        attn.transpose(1, 2)?.contiguous()?.reshape((b, t, hq * hd))?
                    }
                };
                (x + self.linear(&attn, i, Proj::O, ctx)?)?
            }
        };
        if fused_blocks {
            if let Some(y) = crate::blocks::mlp(self, i, &x, ctx)? {
                return Ok(y);
            }
        }
        let h = self.norm(&x, &l.post_attention_layernorm, train)?;
        let gate = self.linear(&h, i, Proj::Gate, ctx)?;
        let up = self.linear(&h, i, Proj::Up, ctx)?;
        let act = crate::ops::swiglu(&gate, &up)?;
        let down = self.linear(&act, i, Proj::Down, ctx)?;
        Ok((x + down)?)
    }

    fn embed(&self, ids: &[u32], b: usize, t: usize) -> Result<Tensor> {
        check_ids(ids, self.config.vocab_size)?;
        Ok(self.embed_rows(ids)?.reshape((b, t, self.config.hidden_size))?)
    }

    /// Final hidden states `[B, T, H]` (after the final norm) of the training path.
    pub fn train_hidden(
        &self,
        batch: &TokenBatch,
        lora: Option<&LoraAdapter>,
        rng: Option<&mut ChaCha8Rng>,
    ) -> Result<Tensor> {
        batch.validate(self.config.vocab_size)?;
        let (b, t) = (batch.batch, batch.seq_len);
        // Positions count real tokens only, so left padding gets the same RoPE phases
        // as an unpadded sequence (what transformers' generate does via position_ids).
        let mut positions = Vec::with_capacity(b * t);
        for r in 0..b {
            let row = &batch.attention_mask[r * t..(r + 1) * t];
            let mut seen = 0u32;
            for &m in row {
                if m != 0 {
                    positions.push(seen);
                    seen += 1;
                } else {
                    positions.push(seen.saturating_sub(1));
                }
            }
        }
        // CPU f32: the fused kernel applies the causal + padding rule itself, so the
        // [B, 1, T, T] additive mask is never built.
        let fused = self.device.is_cpu() && self.dtype == DType::F32;
        let fused_mask = fused.then(|| crate::attn::AttnMask {
            offset: 0,
            key_valid: batch
                .attention_mask
                .contains(&0)
                .then(|| batch.attention_mask.iter().map(|&m| u8::from(m != 0)).collect()),
        });
        let mask = if fused {
            None
        } else {
            let neg = mask_value(self.dtype);
            let mut mask = vec![0f32; b * t * t];
            for r in 0..b {
                let row = &batch.attention_mask[r * t..(r + 1) * t];
                for i in 0..t {
                    for j in 0..t {
                        if j > i || row[j] == 0 {
                            mask[(r * t + i) * t + j] = neg;
                        }
                    }
                }
            }
            Some(Tensor::from_vec(mask, (b, 1, t, t), &self.device)?.to_dtype(self.dtype)?)
        };
        let (cos, sin) = self.rope_tables(&positions)?;
        let half = self.config.head_dim / 2;
        let cos = cos.reshape((b, t, half))?;
        let sin = sin.reshape((b, t, half))?;
        let mut ctx = Ctx {
            train: true,
            lora,
            rng,
            fused_mask,
            masks: Masks::Draw,
            lora_frozen: false,
        };
        let mut x = self.embed(&batch.input_ids, b, t)?;
        // Recompute applies to LoRA training only: a full fine-tune's layer weights are
        // Vars of their own, which the recompute node does not carry.
        let n = self.layers.len();
        let recompute = if lora.is_some() && !self.embed_tokens.is_variable() {
            self.recompute_layers.min(n)
        } else {
            0
        };
        for i in 0..n {
            x = if i < recompute {
                crate::recompute::layer(self, i, &x, &cos, &sin, mask.as_ref(), &mut ctx)?
            } else {
                self.layer(i, &x, &cos, &sin, mask.as_ref(), None, &mut ctx)?
            };
        }
        self.norm(&x, &self.norm, true)
    }

    /// Per-token log-probs `[B, T]` of `batch.targets` (training path, differentiable
    /// w.r.t. the adapter's `Var`s). The log-softmax runs `chunk` tokens at a time and
    /// the backward recomputes logits, so `[B*T, vocab]` is never materialised.
    /// `rng` enables LoRA dropout (pass `None` for evaluation / reference policies).
    pub fn train_logprobs(
        &self,
        batch: &TokenBatch,
        lora: Option<&LoraAdapter>,
        rng: Option<&mut ChaCha8Rng>,
        chunk: usize,
    ) -> Result<Tensor> {
        let h = self.train_hidden(batch, lora, rng)?;
        let (b, t, hs) = h.dims3()?;
        let targets = Tensor::from_slice(&batch.targets, b * t, &self.device)?;
        if self.lm_head_weight().is_variable() {
            // Full fine-tuning: the lm_head weight needs its gradient, so the logits go
            // through candle's autograd (fine for small vocabularies like the tiny preset's).
            let lp = crate::ops::token_logprobs_trainable(&h.reshape((b * t, hs))?, self.lm_head_weight(), &targets, chunk)?;
            return Ok(lp.reshape((b, t))?);
        }
        let lp = token_logprobs(
            &h.reshape((b * t, hs))?,
            self.lm_head_weight(),
            &targets,
            chunk,
        )?;
        Ok(lp.reshape((b, t))?)
    }

    /// [`Model::train_logprobs`] with no gradient: for validation loss and reference
    /// log-probs (no per-row lm_head Jacobian is computed).
    pub fn eval_logprobs(&self, batch: &TokenBatch, lora: Option<&LoraAdapter>, chunk: usize) -> Result<Tensor> {
        let h = self.train_hidden(batch, lora, None)?.detach();
        let (b, t, hs) = h.dims3()?;
        let targets = Tensor::from_slice(&batch.targets, b * t, &self.device)?;
        let lp = token_logprobs(&h.reshape((b * t, hs))?, self.lm_head_weight(), &targets, chunk)?;
        Ok(lp.reshape((b, t))?)
    }

    /// Full logits `[B, T, vocab]` from the training path (for tests / small vocabularies).
    pub fn train_logits(&self, batch: &TokenBatch, lora: Option<&LoraAdapter>) -> Result<Tensor> {
        let h = self.train_hidden(batch, lora, None)?;
        Ok(frozen_linear(&h, self.lm_head_weight())?)
    }

    fn infer_hidden(
        &self,
        input_ids: &Tensor,
        cache: &mut KvCache,
        lora: Option<&LoraAdapter>,
    ) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        if t == 0 {
            return Err(ModelError::Input("empty input".into()));
        }
        if cache.layers.len() != self.layers.len() {
            return Err(ModelError::Input(
                "KV cache built for a different model".into(),
            ));
        }
        let ids: Vec<u32> = input_ids.to_dtype(DType::U32)?.flatten_all()?.to_vec1()?;
        let off = cache.seq_len;
        let positions: Vec<u32> = (off..off + t).map(|p| p as u32).collect();
        let (cos, sin) = self.rope_tables(&positions)?;
        let neg = mask_value(self.dtype);
        let mask = if t > 1 {
            let l = off + t;
            let m: Vec<f32> = (0..t)
                .flat_map(|i| (0..l).map(move |j| if j > off + i { neg } else { 0.0 }))
                .collect();
            Some(Tensor::from_vec(m, (t, l), &self.device)?.to_dtype(self.dtype)?)
        } else {
            None
        };
        let mut ctx = Ctx {
            train: false,
            lora,
            rng: None,
            fused_mask: None,
            masks: Masks::Draw,
            lora_frozen: false,
        };
        let mut x = self.embed(&ids, b, t)?;
        for i in 0..self.layers.len() {
            x = self.layer(
                i,
                &x,
                &cos,
                &sin,
                mask.as_ref(),
                Some((&mut *cache, off)),
                &mut ctx,
            )?;
        }
        cache.seq_len += t;
        self.norm(&x, &self.norm, false)
    }

    /// Inference forward: appends `input_ids` (`[B, T]`, u32) to `cache` and returns
    /// logits `[B, T, vocab]`. Prefill with the prompt, then call with `[B, 1]` per step.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        cache: &mut KvCache,
        lora: Option<&LoraAdapter>,
    ) -> Result<Tensor> {
        let h = self.infer_hidden(input_ids, cache, lora)?;
        self.logits(&h)
    }

    /// Like [`Model::forward`] but only computes the last position's logits: `[B, vocab]`.
    pub fn forward_last(
        &self,
        input_ids: &Tensor,
        cache: &mut KvCache,
        lora: Option<&LoraAdapter>,
    ) -> Result<Tensor> {
        let h = self.infer_hidden(input_ids, cache, lora)?;
        let t = h.dim(1)?;
        let last = h.narrow(1, t - 1, 1)?.squeeze(1)?;
        self.logits(&last)
    }

    /// Inference logits of final hidden states `[.., hidden]` (quantized head if any).
    pub(crate) fn logits(&self, h: &Tensor) -> Result<Tensor> {
        match &self.infer_head {
            Some(w) => w.forward(h),
            None => Ok(crate::ops::infer_linear(h, self.lm_head_weight())?),
        }
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn f<T: Send + Sync>() {}
    f::<Model>();
    let _ = D::Minus1;
}
