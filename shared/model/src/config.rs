//! Model configuration parsed from a Hugging Face `config.json`.
//!
//! Only the fields that change the math are interpreted; the whole JSON is
//! kept in [`ModelConfig::raw`] so that saving a merged model writes back a
//! config that transformers / vLLM still understand (architectures, token ids,
//! and fields we do not use survive the round trip).

use crate::error::{ModelError, Result};
use serde_json::{json, Value};
use std::path::Path;

/// Architecture family. They differ only in attention details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Qwen3: per-head RMSNorm on q and k, optional attention bias.
    Qwen3,
    /// Qwen2 / Qwen2.5: bias on q, k, v (not o), no q/k norm.
    Qwen2,
    /// Llama / Mistral-style: no q/k norm, optional attention bias.
    Llama,
}

/// Hyper-parameters of a decoder-only transformer.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Bias on q_proj/k_proj/v_proj.
    pub qkv_bias: bool,
    /// Bias on o_proj.
    pub o_bias: bool,
    /// Per-head RMSNorm on q and k (Qwen3).
    pub qk_norm: bool,
    pub bos_token_id: Option<u32>,
    /// All end-of-sequence ids (HF allows an int or a list).
    pub eos_token_ids: Vec<u32>,
    /// `torch_dtype` (transformers 4.x) or `dtype` (5.x), e.g. "bfloat16".
    pub torch_dtype: Option<String>,
    /// The full original JSON, re-emitted on save.
    pub raw: Value,
}

fn get_usize(v: &Value, key: &str) -> Result<usize> {
    v.get(key)
        .and_then(Value::as_u64)
        .map(|x| x as usize)
        .ok_or_else(|| ModelError::Config(format!("missing or non-integer field `{key}`")))
}

fn opt_usize(v: &Value, key: &str) -> Option<usize> {
    v.get(key).and_then(Value::as_u64).map(|x| x as usize)
}

fn token_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|x| x as u32)
            .collect(),
        _ => vec![],
    }
}

impl ModelConfig {
    /// Reads and parses `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| ModelError::json(path, e))?;
        Self::from_json(v)
    }

    /// Parses an already-loaded `config.json` value.
    pub fn from_json(v: Value) -> Result<Self> {
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("");
        let arch = match model_type {
            "qwen3" => Arch::Qwen3,
            "qwen2" => Arch::Qwen2,
            "llama" | "mistral" => Arch::Llama,
            other => {
                return Err(ModelError::Config(format!(
                    "unsupported model_type `{other}` (expected qwen3, qwen2, llama, mistral)"
                )))
            }
        };
        if let Some(act) = v.get("hidden_act").and_then(Value::as_str) {
            if act != "silu" {
                return Err(ModelError::Config(format!(
                    "unsupported hidden_act `{act}`"
                )));
            }
        }
        // transformers 5.x moved rope_theta into `rope_parameters`; 4.x keeps it top level.
        let rope_params = v.get("rope_parameters").filter(|x| x.is_object());
        let rope_theta = v
            .get("rope_theta")
            .and_then(Value::as_f64)
            .or_else(|| {
                rope_params
                    .and_then(|p| p.get("rope_theta"))
                    .and_then(Value::as_f64)
            })
            .unwrap_or(10_000.0);
        // Scaled RoPE variants (yarn, llama3, linear, ...) change the frequencies; refuse them
        // rather than silently produce wrong logits.
        for scaling in [v.get("rope_scaling"), rope_params] {
            if let Some(s) = scaling.filter(|x| !x.is_null()) {
                let ty = s
                    .get("rope_type")
                    .or_else(|| s.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                if ty != "default" {
                    return Err(ModelError::Config(format!(
                        "unsupported rope scaling `{ty}`"
                    )));
                }
            }
        }
        // Sliding-window attention (Qwen2/3 option, off in released checkpoints) changes
        // the mask; refuse it rather than compute full attention silently.
        if v.get("use_sliding_window").and_then(Value::as_bool) == Some(true) {
            return Err(ModelError::Config(
                "use_sliding_window = true is not supported".into(),
            ));
        }
        let hidden_size = get_usize(&v, "hidden_size")?;
        let num_attention_heads = get_usize(&v, "num_attention_heads")?;
        if num_attention_heads == 0 {
            return Err(ModelError::Config("num_attention_heads is 0".into()));
        }
        let num_key_value_heads =
            opt_usize(&v, "num_key_value_heads").unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(ModelError::Config(format!(
                "num_attention_heads {num_attention_heads} not a multiple of num_key_value_heads {num_key_value_heads}"
            )));
        }
        let head_dim = match v.get("head_dim") {
            Some(Value::Number(n)) => n
                .as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| ModelError::Config("head_dim not an integer".into()))?,
            _ => hidden_size / num_attention_heads,
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(ModelError::Config(format!(
                "head_dim {head_dim} must be even and > 0"
            )));
        }
        let attention_bias = v
            .get("attention_bias")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let (qkv_bias, o_bias, qk_norm) = match arch {
            Arch::Qwen3 => (attention_bias, attention_bias, true),
            Arch::Qwen2 => (true, false, false),
            Arch::Llama => (attention_bias, attention_bias, false),
        };
        let torch_dtype = v
            .get("torch_dtype")
            .or_else(|| v.get("dtype"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let cfg = ModelConfig {
            arch,
            vocab_size: get_usize(&v, "vocab_size")?,
            hidden_size,
            intermediate_size: get_usize(&v, "intermediate_size")?,
            num_hidden_layers: get_usize(&v, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: v
                .get("rms_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-6),
            rope_theta,
            max_position_embeddings: opt_usize(&v, "max_position_embeddings").unwrap_or(32768),
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            qkv_bias,
            o_bias,
            qk_norm,
            bos_token_id: v
                .get("bos_token_id")
                .and_then(Value::as_u64)
                .map(|x| x as u32),
            eos_token_ids: token_ids(v.get("eos_token_id")),
            torch_dtype,
            raw: v,
        };
        if cfg.vocab_size == 0 || cfg.hidden_size == 0 || cfg.intermediate_size == 0 {
            return Err(ModelError::Config("zero-sized dimension".into()));
        }
        Ok(cfg)
    }

    /// Builds a Qwen3 config from explicit sizes (used for the tiny preset and tests).
    #[allow(clippy::too_many_arguments)]
    pub fn qwen3(
        vocab_size: usize,
        hidden_size: usize,
        intermediate_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        num_key_value_heads: usize,
        head_dim: usize,
        tie_word_embeddings: bool,
        bos_token_id: u32,
        eos_token_id: u32,
    ) -> Result<Self> {
        Self::from_json(json!({
            "architectures": ["Qwen3ForCausalLM"],
            "model_type": "qwen3",
            "attention_bias": false,
            "attention_dropout": 0.0,
            "bos_token_id": bos_token_id,
            "eos_token_id": eos_token_id,
            "head_dim": head_dim,
            "hidden_act": "silu",
            "hidden_size": hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": intermediate_size,
            "max_position_embeddings": 4096,
            "max_window_layers": num_hidden_layers,
            "num_attention_heads": num_attention_heads,
            "num_hidden_layers": num_hidden_layers,
            "num_key_value_heads": num_key_value_heads,
            "rms_norm_eps": 1e-6,
            "rope_scaling": null,
            "rope_theta": 1000000.0,
            "sliding_window": null,
            "tie_word_embeddings": tie_word_embeddings,
            "torch_dtype": "float32",
            "use_cache": true,
            "use_sliding_window": false,
            "vocab_size": vocab_size
        }))
    }

    /// The JSON to write as `config.json`: the original fields with the on-disk dtype updated.
    pub fn to_json(&self, saved_dtype: &str) -> Value {
        let mut v = self.raw.clone();
        if let Value::Object(m) = &mut v {
            if m.contains_key("dtype") && !m.contains_key("torch_dtype") {
                m.insert("dtype".into(), Value::String(saved_dtype.into()));
            } else {
                m.insert("torch_dtype".into(), Value::String(saved_dtype.into()));
            }
        }
        v
    }

    /// Number of query heads per key/value head (GQA group size).
    pub fn n_rep(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }
}
