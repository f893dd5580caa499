//! Quantized Qwen3 inference from GGUF weights (`QMatMul` projections, KV cache).
//!
//! Why a separate model type: [`crate::Model`] keeps dense weights because the
//! training path needs them; serving only needs `x @ W^T`, which candle's
//! quantized kernels compute straight from Q8_0 / Q4 blocks at a fraction of the
//! memory. The math mirrors [`crate::Model::forward`] (same RoPE tables, RMSNorm,
//! GQA folding, mask), so an F32 GGUF reproduces its logits to float rounding.
//!
//! Load a file with [`QuantizedModel::load_gguf`] (written by
//! [`crate::gguf::export_gguf`] or llama.cpp's converter), or quantize an in-memory
//! model with [`QuantizedModel::from_model`].

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::gguf::{gguf_proj_name, quantize_model, GgufDType};
use crate::model::{KvCache, Model, Proj};
use candle_core::quantized::gguf_file::{self, Value as GValue};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Additive mask value for future positions (activations are f32 here).
const MASK: f32 = -1.0e9;
/// Token embedding table: dense (F32/F16 files) or still in its quantized blocks
/// (rows are dequantized on lookup, so a Q8_0 table costs ~1/4 of f32 memory).
#[derive(Debug, Clone)]
enum Embedding {
    Dense(Tensor),
    Quant(Arc<QTensor>),
}

#[derive(Debug, Clone)]
struct QLayer {
    attn_norm: Tensor,
    ffn_norm: Tensor,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    /// Indexed by `Proj as usize`.
    proj: Vec<QMatMul>,
}

/// KV cache of a [`QuantizedModel`]: the dense model's [`KvCache`] (same layout, same
/// in-place buffers), under the name the quantized API has always used.
pub type QKvCache = KvCache;

/// A Qwen3 decoder with quantized projections, for inference only.
#[derive(Debug, Clone)]
pub struct QuantizedModel {
    /// Hyper-parameters (rebuilt from GGUF metadata when loaded from a file).
    pub config: ModelConfig,
    embed: Embedding,
    layers: Vec<QLayer>,
    norm: Tensor,
    output: QMatMul,
    inv_freq: Vec<f32>,
    device: Device,
}

fn md<'a>(m: &'a HashMap<String, GValue>, key: &str) -> Result<&'a GValue> {
    m.get(key)
        .ok_or_else(|| ModelError::Config(format!("GGUF metadata `{key}` missing")))
}

fn md_usize(m: &HashMap<String, GValue>, key: &str) -> Result<usize> {
    let v = md(m, key)?;
    v.to_u64()
        .or_else(|_| v.to_u32().map(u64::from))
        .or_else(|_| v.to_i32().map(|x| x.max(0) as u64))
        .map(|x| x as usize)
        .map_err(|_| ModelError::Config(format!("GGUF metadata `{key}` is not an integer")))
}

fn md_f64(m: &HashMap<String, GValue>, key: &str) -> Result<f64> {
    let v = md(m, key)?;
    v.to_f32()
        .map(f64::from)
        .or_else(|_| v.to_f64())
        .map_err(|_| ModelError::Config(format!("GGUF metadata `{key}` is not a float")))
}

fn md_u32_opt(m: &HashMap<String, GValue>, key: &str) -> Option<u32> {
    m.get(key).and_then(|v| v.to_u32().ok())
}

/// Model config from `qwen3.*` metadata. `vocab` and `tied` come from the tensors.
fn config_from_metadata(
    m: &HashMap<String, GValue>,
    vocab: usize,
    tied: bool,
) -> Result<ModelConfig> {
    let arch = md(m, "general.architecture")?
        .to_string()
        .map_err(|_| ModelError::Config("general.architecture is not a string".into()))?;
    if arch != "qwen3" {
        return Err(ModelError::Config(format!(
            "GGUF architecture `{arch}` is not supported (qwen3 only)"
        )));
    }
    let hidden = md_usize(m, "qwen3.embedding_length")?;
    let heads = md_usize(m, "qwen3.attention.head_count")?;
    let head_dim = match m.get("qwen3.attention.key_length") {
        Some(_) => md_usize(m, "qwen3.attention.key_length")?,
        None => hidden / heads.max(1),
    };
    let kv = match m.get("qwen3.attention.head_count_kv") {
        Some(_) => md_usize(m, "qwen3.attention.head_count_kv")?,
        None => heads,
    };
    let bos = md_u32_opt(m, "tokenizer.ggml.bos_token_id").unwrap_or(0);
    let eos = md_u32_opt(m, "tokenizer.ggml.eos_token_id").unwrap_or(bos);
    let mut c = ModelConfig::qwen3(
        vocab,
        hidden,
        md_usize(m, "qwen3.feed_forward_length")?,
        md_usize(m, "qwen3.block_count")?,
        heads,
        kv,
        head_dim,
        tied,
        bos,
        eos,
    )?;
    c.rope_theta = md_f64(m, "qwen3.rope.freq_base").unwrap_or(1_000_000.0);
    c.rms_norm_eps = md_f64(m, "qwen3.attention.layer_norm_rms_epsilon")?;
    if let Ok(ctx) = md_usize(m, "qwen3.context_length") {
        c.max_position_embeddings = ctx;
    }
    if let serde_json::Value::Object(o) = &mut c.raw {
        o.insert("rope_theta".into(), c.rope_theta.into());
        o.insert("rms_norm_eps".into(), c.rms_norm_eps.into());
        o.insert(
            "max_position_embeddings".into(),
            c.max_position_embeddings.into(),
        );
    }
    Ok(c)
}

impl QuantizedModel {
    /// Reads a `qwen3` GGUF file (ours or llama.cpp's). Shapes are checked against the
    /// metadata, so a truncated or mismatched file is an error, not a panic.
    pub fn load_gguf(path: &Path, device: &Device) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
        let mut r = std::io::BufReader::new(file);
        let content = gguf_file::Content::read(&mut r)
            .map_err(|e| ModelError::Weight(format!("{}: {e}", path.display())))?;
        let mut tensors = HashMap::new();
        for name in content.tensor_infos.keys() {
            let t = content
                .tensor(&mut r, name, device)
                .map_err(|e| ModelError::Weight(format!("{}: `{name}`: {e}", path.display())))?;
            tensors.insert(name.clone(), t);
        }
        let embd = tensors
            .get("token_embd.weight")
            .ok_or_else(|| ModelError::Weight("GGUF has no token_embd.weight".into()))?;
        let (vocab, _) = embd.shape().dims2()?;
        let tied = !tensors.contains_key("output.weight");
        let config = config_from_metadata(&content.metadata, vocab, tied)?;
        Self::from_qtensors(config, tensors, device)
    }

    /// Quantizes an in-memory model (same tensor choices as [`crate::gguf::export_gguf`]).
    pub fn from_model(model: &Model, dtype: GgufDType, device: &Device) -> Result<Self> {
        let (list, _) = quantize_model(model, dtype)?;
        let mut tensors = HashMap::new();
        for (name, q) in list {
            let q = if device.is_cpu() {
                q
            } else {
                let t = q.dequantize(&Device::Cpu)?;
                QTensor::quantize_onto(&t, q.dtype(), device)?
            };
            tensors.insert(name, q);
        }
        let mut config = model.config.clone();
        config.tie_word_embeddings = model.lm_head.is_none();
        Self::from_qtensors(config, tensors, device)
    }

    /// Builds the model from GGUF-named tensors.
    pub fn from_qtensors(
        config: ModelConfig,
        mut t: HashMap<String, QTensor>,
        device: &Device,
    ) -> Result<Self> {
        let c = &config;
        let mut take = |name: &str, shape: &[usize]| -> Result<QTensor> {
            let q = t
                .remove(name)
                .ok_or_else(|| ModelError::Weight(format!("GGUF tensor `{name}` missing")))?;
            if q.shape().dims() != shape {
                return Err(ModelError::Weight(format!(
                    "GGUF tensor `{name}` has shape {:?}, expected {shape:?}",
                    q.shape().dims()
                )));
            }
            Ok(q)
        };
        let dense =
            |q: QTensor| -> Result<Tensor> { Ok(q.dequantize(device)?.to_dtype(DType::F32)?) };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let mut proj = Vec::with_capacity(7);
            for p in Proj::ALL {
                let (o, inp) = p.shape(c);
                proj.push(QMatMul::from_qtensor(take(
                    &gguf_proj_name(i, p),
                    &[o, inp],
                )?)?);
            }
            let (q_norm, k_norm) = if c.qk_norm {
                (
                    Some(dense(take(
                        &format!("blk.{i}.attn_q_norm.weight"),
                        &[c.head_dim],
                    )?)?),
                    Some(dense(take(
                        &format!("blk.{i}.attn_k_norm.weight"),
                        &[c.head_dim],
                    )?)?),
                )
            } else {
                (None, None)
            };
            layers.push(QLayer {
                attn_norm: dense(take(
                    &format!("blk.{i}.attn_norm.weight"),
                    &[c.hidden_size],
                )?)?,
                ffn_norm: dense(take(&format!("blk.{i}.ffn_norm.weight"), &[c.hidden_size])?)?,
                q_norm,
                k_norm,
                proj,
            });
        }
        let norm = dense(take("output_norm.weight", &[c.hidden_size])?)?;
        let embd = take("token_embd.weight", &[c.vocab_size, c.hidden_size])?;
        // Dense tables are shared by the lookup and a tied output projection; quantized
        // ones are shared through the Arc, so the tied matrix is held once either way.
        let embed = match embd.dtype() {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => Embedding::Dense(dense(embd)?),
            _ => Embedding::Quant(Arc::new(embd)),
        };
        let output = match t.remove("output.weight") {
            Some(q) => {
                if q.shape().dims() != [c.vocab_size, c.hidden_size] {
                    return Err(ModelError::Weight(format!(
                        "GGUF tensor `output.weight` has shape {:?}",
                        q.shape().dims()
                    )));
                }
                QMatMul::from_qtensor(q)?
            }
            None => match &embed {
                Embedding::Dense(w) => QMatMul::Tensor(w.clone()),
                Embedding::Quant(q) => QMatMul::from_arc(q.clone())?,
            },
        };
        let base = c.rope_theta as f32;
        let d = c.head_dim;
        let inv_freq = (0..d / 2)
            .map(|i| 1.0f32 / base.powf((2 * i) as f32 / d as f32))
            .collect();
        Ok(QuantizedModel {
            embed,
            layers,
            norm,
            output,
            inv_freq,
            device: device.clone(),
            config,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A fresh KV cache sized for this model.
    pub fn new_cache(&self) -> QKvCache {
        QKvCache::new(self.layers.len())
    }

    fn rope_tables(&self, offset: usize, t: usize) -> Result<(Tensor, Tensor)> {
        let w = self.inv_freq.len();
        let mut cos = Vec::with_capacity(t * w);
        let mut sin = Vec::with_capacity(t * w);
        for p in offset..offset + t {
            for &f in &self.inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok((
            Tensor::from_vec(cos, (t, w), &self.device)?,
            Tensor::from_vec(sin, (t, w), &self.device)?,
        ))
    }

    fn embed(&self, ids: &[u32], b: usize, t: usize) -> Result<Tensor> {
        let vocab = self.config.vocab_size;
        if let Some(bad) = ids.iter().find(|&&x| x as usize >= vocab) {
            return Err(ModelError::Input(format!(
                "token id {bad} >= vocab size {vocab}"
            )));
        }
        let idt = Tensor::from_slice(ids, b * t, &self.device)?;
        let x = match &self.embed {
            Embedding::Dense(w) => w.index_select(&idt, 0)?,
            Embedding::Quant(q) => q.embedding(&idt)?,
        };
        Ok(x.to_dtype(DType::F32)?
            .reshape((b, t, self.config.hidden_size))?)
    }

    fn rms(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(
            &x.contiguous()?,
            w,
            self.config.rms_norm_eps as f32,
        )?)
    }

    #[allow(clippy::too_many_arguments)]
    fn layer(
        &self,
        i: usize,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut QKvCache,
        offset: usize,
    ) -> Result<Tensor> {
        let c = &self.config;
        let l = &self.layers[i];
        let (b, t, _) = x.dims3()?;
        let (hq, hkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let h = self.rms(x, &l.attn_norm)?;
        let lin = |p: Proj, x: &Tensor| -> Result<Tensor> { Ok(l.proj[p as usize].forward(x)?) };
        let mut q = lin(Proj::Q, &h)?.reshape((b, t, hq, hd))?;
        let mut k = lin(Proj::K, &h)?.reshape((b, t, hkv, hd))?;
        let v = lin(Proj::V, &h)?.reshape((b, t, hkv, hd))?;
        if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
            q = self.rms(&q, qn)?;
            k = self.rms(&k, kn)?;
        }
        let q = candle_nn::rotary_emb::rope(&q.transpose(1, 2)?.contiguous()?, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&k.transpose(1, 2)?.contiguous()?, cos, sin)?;
        let v = v.transpose(1, 2)?.contiguous()?;
        let (k_all, v_all) = cache.append(i, &k, &v, offset)?;
        let l_all = k_all.dim(2)?;
        let n_rep = c.n_rep();
        // GQA without repeating K/V: query heads of one KV head become extra rows.
        let q = q.reshape((b, hkv, n_rep * t, hd))?;
        let mut s = q
            .matmul(&k_all.t()?)?
            .affine(1.0 / (hd as f64).sqrt(), 0.0)?;
        if let Some(m) = mask {
            s = s
                .reshape((b, hkv, n_rep, t, l_all))?
                .broadcast_add(m)?
                .reshape((b, hkv, n_rep * t, l_all))?;
        }
        let p = candle_nn::ops::softmax_last_dim(&s)?;
        let attn = p
            .matmul(&v_all)?
            .reshape((b, hq, t, hd))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, hq * hd))?;
        let x = (x + lin(Proj::O, &attn)?)?;
        let h = self.rms(&x, &l.ffn_norm)?;
        let act = crate::ops::swiglu(&lin(Proj::Gate, &h)?, &lin(Proj::Up, &h)?)?;
        Ok((x + lin(Proj::Down, &act)?)?)
    }

    fn hidden(&self, input_ids: &Tensor, cache: &mut QKvCache) -> Result<Tensor> {
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
        let (cos, sin) = self.rope_tables(off, t)?;
        let mask = if t > 1 {
            let l = off + t;
            let m: Vec<f32> = (0..t)
                .flat_map(|i| (0..l).map(move |j| if j > off + i { MASK } else { 0.0 }))
                .collect();
            Some(Tensor::from_vec(m, (t, l), &self.device)?)
        } else {
            None
        };
        let mut x = self.embed(&ids, b, t)?;
        for i in 0..self.layers.len() {
            x = self.layer(i, &x, &cos, &sin, mask.as_ref(), cache, off)?;
        }
        cache.seq_len += t;
        self.rms(&x, &self.norm)
    }

    /// Appends `input_ids` (`[B, T]`) to `cache` and returns f32 logits `[B, T, vocab]`,
    /// like [`crate::Model::forward`] without an adapter (merge adapters before export).
    pub fn forward(&self, input_ids: &Tensor, cache: &mut QKvCache) -> Result<Tensor> {
        let h = self.hidden(input_ids, cache)?;
        Ok(self.output.forward(&h)?)
    }

    /// Like [`QuantizedModel::forward`] but only the last position: `[B, vocab]`.
    pub fn forward_last(&self, input_ids: &Tensor, cache: &mut QKvCache) -> Result<Tensor> {
        let h = self.hidden(input_ids, cache)?;
        let t = h.dim(1)?;
        let last = h.narrow(1, t - 1, 1)?.contiguous()?;
        Ok(self.output.forward(&last)?.squeeze(1)?)
    }
}
