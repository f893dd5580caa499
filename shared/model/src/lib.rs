//! `fc-model`: the Qwen3-family decoder used by fcmesh for LoRA SFT, GRPO and serving.
//!
//! * [`ModelConfig`] / [`Model::load`] / [`Model::save_hf`]: HF checkpoints.
//! * [`Model::train_logprobs`]: differentiable padded-batch forward (LoRA training).
//! * [`Model::forward`] + [`KvCache`]: cached inference.
//! * [`LoraAdapter`]: PEFT-compatible adapters, merge, AdamW.
//! * [`generate()`]: greedy / temperature + top-p decoding.

pub mod attn;
pub mod batch;
pub mod config;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod io;
pub mod lora;
pub mod model;
pub mod ops;
pub mod optim;
pub mod quantized;
pub mod tiny;

pub use config::{Arch, ModelConfig};
pub use error::{ModelError, Result};
pub use gguf::{export_gguf, export_gguf_dir, GgufDType, GgufExport};
pub use generate::{generate, generate_with, FinishReason, GenerateParams, Generation};
pub use lora::{clip_grad_norm, LoraAdapter, LoraConfig, LoraPair};
pub use optim::{AdamW, AdamWParams};
pub use model::{DecoderLayer, KvCache, Linear, Model, Proj, TokenBatch};
pub use quantized::{QKvCache, QuantizedModel};

pub use candle_core::{DType, Device, Tensor, Var};

/// Every tensor of a safetensors file, on the CPU (for tools and tests comparing weights).
pub fn candle_safetensors_load(path: &std::path::Path) -> Result<std::collections::HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| ModelError::Weight(format!("{}: {e}", path.display())))
}
pub use tiny::{init_tiny, init_tiny_with, TinySpec};
