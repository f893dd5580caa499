//! GGUF models (Q8_0, Q4_0, Q4_K, f16, f32) as an ordinary [`Model`] for inference.
//!
//! A quantized model is the same [`Model`] the engine already runs: its projections hold
//! [`Weight::Quantized`] matrices (candle's quantized matmul computes `x W^T` straight
//! from the blocks), its output head is quantized too, and everything else (norms, RoPE,
//! attention, the ragged batch forward, KV cache, LoRA on top) is shared with the dense
//! path. So serving Q8_0 needs no second forward, and an F32 GGUF reproduces the dense
//! model's logits to float rounding. The token embedding table is dequantized to f32 for
//! the lookup; training and merging refuse quantized weights with an error.
//!
//! Load a file with [`Model::load_gguf`] (written by [`crate::gguf::export_gguf`] or by
//! llama.cpp's converter and quantizer), or quantize an in-memory model with
//! [`Model::quantize`].

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::gguf::{gguf_proj_name, quantize_model, GgufDType};
use crate::model::{DecoderLayer, Linear, Model, Proj, Weight};
use crate::q8gemv::PackedQ8;
use candle_core::quantized::gguf_file::{self, Value as GValue};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

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

/// A block-quantized weight `[out, in]` as the forward reads it.
#[derive(Debug, Clone)]
pub enum QWeight {
    /// Candle's quantized matmul: any GGUF type, any device.
    Candle(QMatMul),
    /// Q8_0 repacked for [`crate::q8gemv`] (a CPU with AVX-512 VNNI or AVX2). The GGUF
    /// blocks are not kept beside it, so the weight costs its Q8_0 size once.
    Q8(Arc<PackedQ8>),
}

/// `FC_Q8_KERNEL=candle` keeps Q8_0 weights on candle's matmul (for comparisons); the
/// default is our kernel wherever the CPU has it.
fn own_q8_kernel() -> bool {
    std::env::var("FC_Q8_KERNEL").map(|v| v != "candle").unwrap_or(true)
}

impl QWeight {
    /// Wraps a loaded GGUF tensor: Q8_0 on a capable CPU is repacked for our kernel.
    pub fn new(q: QTensor) -> QWeight {
        if own_q8_kernel() {
            if let Some(p) = PackedQ8::from_qtensor(&q) {
                return QWeight::Q8(Arc::new(p));
            }
        }
        QWeight::Candle(QMatMul::QTensor(Arc::new(q)))
    }

    /// `x W^T` (no autograd).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            QWeight::Candle(q) => q.forward(x)?,
            QWeight::Q8(p) => match p.forward(x)? {
                Some(y) => y,
                // Another dtype: the kernel computes in f32.
                None => {
                    let y = p
                        .forward(&x.to_dtype(DType::F32)?)?
                        .ok_or_else(|| ModelError::Input("Q8_0 kernel: input is not a CPU tensor".into()))?;
                    y.to_dtype(x.dtype())?
                }
            },
        })
    }

    /// The weight as a dense f32 tensor on `device`.
    pub fn dequantize(&self, device: &Device) -> Result<Tensor> {
        Ok(match self {
            QWeight::Candle(QMatMul::QTensor(q)) => q.dequantize(device)?,
            QWeight::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => t.to_dtype(DType::F32)?.to_device(device)?,
            QWeight::Q8(p) => p.dequantize(device)?,
        })
    }

    /// Bytes of weight storage (what one matmul streams).
    pub fn storage_bytes(&self) -> usize {
        match self {
            QWeight::Candle(QMatMul::QTensor(q)) => q.storage_size_in_bytes(),
            QWeight::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => t.elem_count() * t.dtype().size_in_bytes(),
            QWeight::Q8(p) => p.storage_bytes(),
        }
    }
}

impl Model {
    /// Reads a `qwen3` GGUF file (ours or llama.cpp's) as an inference model. Shapes are
    /// checked against the metadata, so a truncated or mismatched file is an error, not
    /// a panic.
    pub fn load_gguf(path: &Path, device: &Device) -> Result<Model> {
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
        from_qtensors(config, tensors, device)
    }

    /// This model with its weights in GGUF encoding `dtype` (the tensor choices of
    /// [`crate::gguf::export_gguf`]), for inference; what loading its export would give.
    pub fn quantize(&self, dtype: GgufDType) -> Result<Model> {
        let (list, _) = quantize_model(self, dtype)?;
        let device = self.device().clone();
        let mut tensors = HashMap::new();
        for (name, q) in list {
            let q = if device.is_cpu() {
                q
            } else {
                let t = q.dequantize(&Device::Cpu)?;
                QTensor::quantize_onto(&t, q.dtype(), &device)?
            };
            tensors.insert(name, q);
        }
        let mut config = self.config.clone();
        config.tie_word_embeddings = self.lm_head.is_none();
        from_qtensors(config, tensors, &device)
    }
}

fn is_float(q: &QTensor) -> bool {
    matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

/// Builds the model from GGUF-named tensors: float tensors become dense f32 weights,
/// block-quantized ones stay quantized.
fn from_qtensors(config: ModelConfig, mut t: HashMap<String, QTensor>, device: &Device) -> Result<Model> {
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
    let dense = |q: &QTensor| -> Result<Tensor> { Ok(q.dequantize(device)?.to_dtype(DType::F32)?) };
    let weight = |q: QTensor| -> Result<Weight> {
        Ok(if is_float(&q) {
            Weight::Dense(dense(&q)?)
        } else {
            Weight::Quantized(QWeight::new(q))
        })
    };
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for i in 0..c.num_hidden_layers {
        let mut proj = Vec::with_capacity(7);
        for p in Proj::ALL {
            let (o, inp) = p.shape(c);
            proj.push(Linear {
                weight: weight(take(&gguf_proj_name(i, p), &[o, inp])?)?,
                bias: None,
            });
        }
        let (q_norm, k_norm) = if c.qk_norm {
            (
                Some(dense(&take(&format!("blk.{i}.attn_q_norm.weight"), &[c.head_dim])?)?),
                Some(dense(&take(&format!("blk.{i}.attn_k_norm.weight"), &[c.head_dim])?)?),
            )
        } else {
            (None, None)
        };
        layers.push(DecoderLayer {
            input_layernorm: dense(&take(&format!("blk.{i}.attn_norm.weight"), &[c.hidden_size])?)?,
            post_attention_layernorm: dense(&take(&format!("blk.{i}.ffn_norm.weight"), &[c.hidden_size])?)?,
            q_norm,
            k_norm,
            proj,
        });
    }
    let norm = dense(&take("output_norm.weight", &[c.hidden_size])?)?;
    let embd = take("token_embd.weight", &[c.vocab_size, c.hidden_size])?;
    let output = t.remove("output.weight");
    if let Some(q) = &output {
        if q.shape().dims() != [c.vocab_size, c.hidden_size] {
            return Err(ModelError::Weight(format!("GGUF tensor `output.weight` has shape {:?}", q.shape().dims())));
        }
    }
    // The head: a separate `output.weight` or the (tied) embedding table; a quantized
    // one is read in its blocks, a float one is the dense weight.
    // A tied Q8_0 table repacked for our kernel is the only copy: the embedding lookup
    // dequantizes its rows (`Model::embed_rows`), so no f32 table (4x its size) is kept.
    let (embed_tokens, lm_head, quant_head) = match output {
        Some(q) if is_float(&q) => (dense(&embd)?, Some(dense(&q)?), None),
        Some(q) => (dense(&embd)?, Some(dense(&q)?), Some(QWeight::new(q))),
        None if is_float(&embd) => (dense(&embd)?, None, None),
        None => {
            let head = QWeight::new(embd);
            let table = match head {
                QWeight::Q8(_) => Tensor::zeros((0, c.hidden_size), DType::F32, device)?,
                QWeight::Candle(_) => head.dequantize(device)?,
            };
            (table, None, Some(head))
        }
    };
    Ok(Model::from_parts(config, embed_tokens, layers, norm, lm_head, quant_head, device))
}
