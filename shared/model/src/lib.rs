//! `fc-model`: the Qwen3-family decoder used by fcmesh for LoRA SFT, GRPO and serving.
//!
//! * [`ModelConfig`] / [`Model::load`] / [`Model::save_hf`]: HF checkpoints.
//! * [`Model::train_logprobs`]: differentiable padded-batch forward (LoRA training).
//! * [`Model::forward`] + [`KvCache`]: cached inference.
//! * [`LoraAdapter`]: PEFT-compatible adapters, merge, AdamW.
//! * [`generate()`]: greedy / temperature + top-p decoding.

pub mod attn;
pub mod batch;
mod blocks;
pub mod config;
mod cpu;
mod decode_attn;
pub mod device;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod io;
pub mod lora;
pub mod model;
pub mod ops;
pub mod packed;
pub mod optim;
pub mod quantized;
pub mod gemv;
pub mod q8gemv;
mod recompute;
mod rowops;
pub mod tiny;

pub use config::{Arch, ModelConfig};
pub use error::{ModelError, Result};
pub use gguf::{export_gguf, export_gguf_dir, GgufDType, GgufExport};
pub use generate::{generate, generate_with, FinishReason, GenerateParams, Generation};
pub use lora::{clip_grad_norm, LoraAdapter, LoraConfig, LoraPair};
pub use optim::{AdamW, AdamWParams};
pub use model::{DecoderLayer, KvCache, Linear, Model, Proj, TokenBatch, Weight};

pub use candle_core::{DType, Device, Tensor, Var};

/// Largest absolute difference between two weight dirs (adapter or model): every tensor
/// of their `*.safetensors` files, which must hold the same names and shapes. For tools
/// and tests that check two trainings or a merge produced the same weights.
pub fn max_weight_diff(a: &std::path::Path, b: &std::path::Path) -> Result<f32> {
    let load = |d: &std::path::Path| -> Result<std::collections::BTreeMap<String, Tensor>> {
        let mut all = std::collections::BTreeMap::new();
        for e in std::fs::read_dir(d).map_err(|e| ModelError::io(d, e))? {
            let p = e.map_err(|e| ModelError::io(d, e))?.path();
            if p.extension().is_some_and(|x| x == "safetensors") {
                let t = candle_core::safetensors::load(&p, &Device::Cpu)
                    .map_err(|e| ModelError::Weight(format!("{}: {e}", p.display())))?;
                all.extend(t);
            }
        }
        Ok(all)
    };
    let (x, y) = (load(a)?, load(b)?);
    if x.is_empty() || x.keys().ne(y.keys()) {
        return Err(ModelError::Weight(format!("{} and {} hold different tensors", a.display(), b.display())));
    }
    let mut max = 0f32;
    for (k, t) in &x {
        let d = (t - &y[k])?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        max = max.max(d);
    }
    Ok(max)
}
pub use tiny::{init_tiny, init_tiny_with, TinySpec};
