//! GGUF export of a (merged) Qwen3 model, in the layout llama.cpp expects.
//!
//! Why: llama.cpp / ollama-style runtimes and our own quantized serving path
//! ([`crate::Model::load_gguf`]) read GGUF, so a merged fine-tune is
//! exported once here instead of going through Python's `convert_hf_to_gguf.py`.
//!
//! What is written mirrors `convert_hf_to_gguf.py` for `Qwen3ForCausalLM`:
//!
//! * metadata `general.*`, `qwen3.*` hyper-parameters and the byte-level BPE
//!   tokenizer (`tokenizer.ggml.model = "gpt2"`, `pre = "qwen2"`, tokens padded
//!   to the embedding rows with `[PAD{i}]`, token types, merges, special ids,
//!   chat template) taken from the model dir's `tokenizer.json` /
//!   `tokenizer_config.json` / `config.json`;
//! * tensors `token_embd`, `blk.N.{attn_norm, attn_q, attn_k, attn_v,
//!   attn_q_norm, attn_k_norm, attn_output, ffn_norm, ffn_gate, ffn_up,
//!   ffn_down}`, `output_norm` and `output` (untied models only). No q/k
//!   permutation: llama.cpp runs Qwen3 with NEOX (rotate-half) RoPE, the HF layout.
//!
//! Norm weights always stay F32 (they are tiny and llama.cpp expects F32). Matrices
//! whose row length is not a multiple of the quantization block fall back to Q8_0
//! (block 32) or F32, reported in [`GgufExport::fallbacks`].

use crate::config::{Arch, ModelConfig};
use crate::error::{ModelError, Result};
use crate::io;
use crate::model::{Model, Proj};
use candle_core::quantized::gguf_file::{self, Value as GValue};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Weight encodings supported by [`export_gguf`] and [`crate::Model::load_gguf`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufDType {
    /// Lossless (for f32 checkpoints); for parity checks.
    F32,
    F16,
    /// 8-bit blocks of 32 with an f16 scale; near-lossless, half of F16's size.
    Q8_0,
    /// 4-bit blocks of 32. Embedding / output stay Q8_0 (see [`GgufDType::embedding_dtype`]).
    Q4_0,
    /// 4-bit k-quant super-blocks of 256. Embedding / output stay Q8_0.
    Q4K,
}

impl GgufDType {
    /// Parses `f32`, `f16`, `q8_0`, `q4_0`, `q4_k` (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Some(Self::F32),
            "f16" => Some(Self::F16),
            "q8_0" | "q8" => Some(Self::Q8_0),
            "q4_0" => Some(Self::Q4_0),
            "q4_k" | "q4k" | "q4_k_s" => Some(Self::Q4K),
            _ => None,
        }
    }

    /// Block type of the projection matrices.
    pub fn ggml(self) -> GgmlDType {
        match self {
            Self::F32 => GgmlDType::F32,
            Self::F16 => GgmlDType::F16,
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q4_0 => GgmlDType::Q4_0,
            Self::Q4K => GgmlDType::Q4K,
        }
    }

    /// Block type of `token_embd` / `output`. The 4-bit modes keep them at Q8_0: with
    /// tied embeddings the same matrix is the output projection, whose error goes
    /// straight into the logits (llama.cpp likewise keeps `output` at higher precision).
    pub fn embedding_dtype(self) -> GgmlDType {
        match self {
            Self::Q4_0 | Self::Q4K => GgmlDType::Q8_0,
            other => other.ggml(),
        }
    }

    /// llama.cpp's `general.file_type` (`llama_ftype`).
    pub fn file_type(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q8_0 => 7,
            Self::Q4K => 14, // MOSTLY_Q4_K_S
        }
    }
}

/// What [`export_gguf`] wrote.
#[derive(Debug, Clone)]
pub struct GgufExport {
    pub path: PathBuf,
    pub n_tensors: usize,
    pub file_bytes: u64,
    /// Tensors stored in another type than requested (row length not a block multiple).
    pub fallbacks: Vec<String>,
}

/// Tokenizer data in GGUF form (see [`GgufTokenizer::from_dir`]).
#[derive(Debug, Clone, Default)]
pub struct GgufTokenizer {
    /// Byte-level token strings, one per embedding row (`[PAD{i}]` for unused rows).
    pub tokens: Vec<String>,
    /// llama.cpp token types: 1 normal, 3 control, 4 user-defined, 5 unused.
    pub token_types: Vec<i32>,
    /// `"left right"` merge rules in priority order.
    pub merges: Vec<String>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub chat_template: Option<String>,
}

const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;
const TOKEN_UNUSED: i32 = 5;

/// convert_hf_to_gguf's `does_token_look_special`: added tokens such as `<|fim_pad|>`
/// are CONTROL even when not flagged special, so llama.cpp never prints them.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<start_of_") && t.ends_with('>'))
        || (t.starts_with("<end_of_") && t.ends_with('>'))
}

fn tok_config_err(path: &Path, msg: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(format!("{}: {msg}", path.display()))
}

impl GgufTokenizer {
    /// Reads `tokenizer.json` (required; byte-level BPE), `tokenizer_config.json` and
    /// `config.json` (optional) from `dir`. `vocab_size` is the number of embedding
    /// rows: llama.cpp requires exactly one token per row.
    ///
    /// Special ids follow gguf-py's `SpecialVocab`: `tokenizer_config.json`'s
    /// `bos_token` / `eos_token` / `pad_token` first, then `config.json`'s `*_token_id`.
    pub fn from_dir(dir: &Path, vocab_size: usize) -> Result<Self> {
        let tpath = dir.join("tokenizer.json");
        let tj = io::read_json(&tpath)?;
        let model = tj
            .get("model")
            .ok_or_else(|| tok_config_err(&tpath, "no `model`"))?;
        if model.get("type").and_then(Value::as_str) != Some("BPE") {
            return Err(tok_config_err(
                &tpath,
                "only BPE tokenizers can be exported",
            ));
        }
        let pre = tj
            .get("pre_tokenizer")
            .map(Value::to_string)
            .unwrap_or_default();
        if !pre.contains("ByteLevel") {
            return Err(tok_config_err(
                &tpath,
                "only byte-level BPE (GPT-2 style) tokenizers can be exported",
            ));
        }
        let mut by_id: Vec<Option<String>> = vec![None; vocab_size];
        let mut types = vec![TOKEN_UNUSED; vocab_size];
        let mut vocab: HashMap<String, u32> = HashMap::new();
        let mut put = |id: u64, tok: &str, ty: i32| -> Result<()> {
            let i = usize::try_from(id)
                .ok()
                .filter(|&i| i < vocab_size)
                .ok_or_else(|| {
                    tok_config_err(
                        &tpath,
                        format!("token `{tok}` has id {id} >= embedding rows {vocab_size}"),
                    )
                })?;
            by_id[i] = Some(tok.to_string());
            types[i] = ty;
            vocab.insert(tok.to_string(), i as u32);
            Ok(())
        };
        let v = model
            .get("vocab")
            .and_then(Value::as_object)
            .ok_or_else(|| tok_config_err(&tpath, "no `model.vocab` object"))?;
        for (tok, id) in v {
            let id = id
                .as_u64()
                .ok_or_else(|| tok_config_err(&tpath, format!("bad id for `{tok}`")))?;
            put(id, tok, TOKEN_NORMAL)?;
        }
        for at in tj
            .get("added_tokens")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let (Some(id), Some(content)) = (
                at.get("id").and_then(Value::as_u64),
                at.get("content").and_then(Value::as_str),
            ) else {
                return Err(tok_config_err(&tpath, "added token without id/content"));
            };
            let special = at.get("special").and_then(Value::as_bool).unwrap_or(false);
            let ty = if special || looks_special(content) {
                TOKEN_CONTROL
            } else {
                TOKEN_USER_DEFINED
            };
            put(id, content, ty)?;
        }
        let tokens = by_id
            .into_iter()
            .enumerate()
            .map(|(i, t)| t.unwrap_or_else(|| format!("[PAD{i}]")))
            .collect();
        let mut merges = Vec::new();
        for m in model
            .get("merges")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            // tokenizers < 0.20 writes "a b"; newer versions write ["a", "b"].
            let s = match m {
                Value::String(s) => s.clone(),
                Value::Array(p) => match p.as_slice() {
                    [Value::String(a), Value::String(b)] => format!("{a} {b}"),
                    _ => return Err(tok_config_err(&tpath, "malformed merge pair")),
                },
                _ => return Err(tok_config_err(&tpath, "malformed merge")),
            };
            merges.push(s);
        }

        let tc_path = dir.join("tokenizer_config.json");
        let tc = if tc_path.is_file() {
            Some(io::read_json(&tc_path)?)
        } else {
            None
        };
        let cfg_path = dir.join("config.json");
        let cfg = if cfg_path.is_file() {
            Some(io::read_json(&cfg_path)?)
        } else {
            None
        };
        let special = |key: &str| -> Option<u32> {
            let from_tc = tc
                .as_ref()
                .and_then(|tc| tc.get(format!("{key}_token")))
                .and_then(|v| match v {
                    Value::String(s) => Some(s.as_str()),
                    Value::Object(o) => o.get("content").and_then(Value::as_str),
                    _ => None,
                });
            if let Some(id) = from_tc.and_then(|s| vocab.get(s)) {
                return Some(*id);
            }
            match cfg.as_ref()?.get(format!("{key}_token_id"))? {
                Value::Number(n) => n.as_u64().map(|x| x as u32),
                Value::Array(a) => a.first().and_then(Value::as_u64).map(|x| x as u32),
                _ => None,
            }
        };
        let chat_template = match tc.as_ref().and_then(|tc| tc.get("chat_template")) {
            Some(Value::String(s)) => Some(s.clone()),
            // Named templates: [{"name": "default", "template": "..."}, ...].
            Some(Value::Array(list)) => list
                .iter()
                .find(|e| e.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|e| e.get("template").and_then(Value::as_str))
                .map(str::to_string),
            _ => {
                let p = dir.join("chat_template.jinja");
                if p.is_file() {
                    Some(std::fs::read_to_string(&p).map_err(|e| ModelError::io(&p, e))?)
                } else {
                    None
                }
            }
        };
        Ok(GgufTokenizer {
            tokens,
            token_types: types,
            merges,
            bos_id: special("bos"),
            eos_id: special("eos"),
            pad_id: special("pad"),
            chat_template,
        })
    }

    /// The `tokenizer.*` metadata entries.
    fn metadata(&self) -> Vec<(String, GValue)> {
        let mut md = vec![
            ("tokenizer.ggml.model".into(), GValue::String("gpt2".into())),
            // llama.cpp picks the pre-tokenizer regex by this name; Qwen3 uses Qwen2's.
            ("tokenizer.ggml.pre".into(), GValue::String("qwen2".into())),
            (
                "tokenizer.ggml.tokens".into(),
                GValue::Array(self.tokens.iter().cloned().map(GValue::String).collect()),
            ),
            (
                "tokenizer.ggml.token_type".into(),
                GValue::Array(self.token_types.iter().copied().map(GValue::I32).collect()),
            ),
            (
                "tokenizer.ggml.merges".into(),
                GValue::Array(self.merges.iter().cloned().map(GValue::String).collect()),
            ),
        ];
        for (key, id) in [
            ("bos_token_id", self.bos_id),
            ("eos_token_id", self.eos_id),
            ("padding_token_id", self.pad_id),
        ] {
            if let Some(id) = id {
                md.push((format!("tokenizer.ggml.{key}"), GValue::U32(id)));
            }
        }
        md.push(("tokenizer.ggml.add_bos_token".into(), GValue::Bool(false)));
        if let Some(t) = &self.chat_template {
            md.push(("tokenizer.chat_template".into(), GValue::String(t.clone())));
        }
        md
    }
}

/// GGUF tensor name of a projection in layer `i`.
pub fn gguf_proj_name(i: usize, p: Proj) -> String {
    let s = match p {
        Proj::Q => "attn_q",
        Proj::K => "attn_k",
        Proj::V => "attn_v",
        Proj::O => "attn_output",
        Proj::Gate => "ffn_gate",
        Proj::Up => "ffn_up",
        Proj::Down => "ffn_down",
    };
    format!("blk.{i}.{s}.weight")
}

/// Refuses configurations llama.cpp's `qwen3` graph cannot run.
pub(crate) fn check_exportable(c: &ModelConfig) -> Result<()> {
    if c.arch != Arch::Qwen3 {
        return Err(ModelError::Config(format!(
            "GGUF export supports Qwen3 only, got {:?}",
            c.arch
        )));
    }
    if c.qkv_bias || c.o_bias {
        return Err(ModelError::Config(
            "GGUF export: attention bias is not part of llama.cpp's qwen3 graph".into(),
        ));
    }
    Ok(())
}

/// Quantizes one matrix to `want`, falling back to Q8_0 / F32 when its rows are not a
/// block multiple. Returns the tensor and, on fallback, a note.
fn quantize_matrix(name: &str, t: &Tensor, want: GgmlDType) -> Result<(QTensor, Option<String>)> {
    let t = t.to_device(&Device::Cpu)?;
    let row = t.dim(candle_core::D::Minus1)?;
    let mut chosen = want;
    if row % want.block_size() != 0 {
        chosen = if row % GgmlDType::Q8_0.block_size() == 0 && want != GgmlDType::F16 {
            GgmlDType::Q8_0
        } else {
            GgmlDType::F32
        };
    }
    let q = QTensor::quantize(&t, chosen)?;
    let note = (chosen != want).then(|| format!("{name}: {want:?} -> {chosen:?} (row {row})"));
    Ok((q, note))
}

/// GGUF tensor names with their quantized data, in file order.
pub type NamedQTensors = Vec<(String, QTensor)>;

/// The model's weights as GGUF-named `QTensor`s (CPU), plus fallback notes.
/// Used by [`export_gguf`] and by [`crate::Model::quantize`].
pub fn quantize_model(model: &Model, dtype: GgufDType) -> Result<(NamedQTensors, Vec<String>)> {
    check_exportable(&model.config)?;
    let mut out = Vec::new();
    let mut notes = Vec::new();
    let vec1 = |t: &Tensor| -> Result<QTensor> {
        Ok(QTensor::quantize(
            &t.to_device(&Device::Cpu)?,
            GgmlDType::F32,
        )?)
    };
    let mut mat = |name: String, t: &Tensor, want: GgmlDType| -> Result<(String, QTensor)> {
        let (q, note) = quantize_matrix(&name, t, want)?;
        notes.extend(note);
        Ok((name, q))
    };
    out.push(mat(
        "token_embd.weight".into(),
        &model.embedding_table()?,
        dtype.embedding_dtype(),
    )?);
    for (i, l) in model.layers.iter().enumerate() {
        out.push((
            format!("blk.{i}.attn_norm.weight"),
            vec1(&l.input_layernorm)?,
        ));
        for p in [Proj::Q, Proj::K, Proj::V] {
            out.push(mat(
                gguf_proj_name(i, p),
                l.proj[p as usize].dense_weight()?,
                dtype.ggml(),
            )?);
        }
        if let Some(t) = &l.q_norm {
            out.push((format!("blk.{i}.attn_q_norm.weight"), vec1(t)?));
        }
        if let Some(t) = &l.k_norm {
            out.push((format!("blk.{i}.attn_k_norm.weight"), vec1(t)?));
        }
        out.push(mat(
            gguf_proj_name(i, Proj::O),
            l.proj[Proj::O as usize].dense_weight()?,
            dtype.ggml(),
        )?);
        out.push((
            format!("blk.{i}.ffn_norm.weight"),
            vec1(&l.post_attention_layernorm)?,
        ));
        for p in [Proj::Gate, Proj::Up, Proj::Down] {
            out.push(mat(
                gguf_proj_name(i, p),
                l.proj[p as usize].dense_weight()?,
                dtype.ggml(),
            )?);
        }
    }
    out.push(("output_norm.weight".into(), vec1(&model.norm)?));
    if let Some(h) = &model.lm_head {
        out.push(mat("output.weight".into(), h, dtype.embedding_dtype())?);
    }
    Ok((out, notes))
}

fn u32_md(x: usize, what: &str) -> Result<GValue> {
    u32::try_from(x)
        .map(GValue::U32)
        .map_err(|_| ModelError::Config(format!("{what} {x} does not fit in u32")))
}

/// The `general.*` and `qwen3.*` metadata entries for `c`.
pub fn model_metadata(
    c: &ModelConfig,
    dtype: GgufDType,
    name: &str,
) -> Result<Vec<(String, GValue)>> {
    let a = "qwen3";
    Ok(vec![
        ("general.architecture".into(), GValue::String(a.into())),
        ("general.name".into(), GValue::String(name.into())),
        ("general.file_type".into(), GValue::U32(dtype.file_type())),
        ("general.quantization_version".into(), GValue::U32(2)),
        (
            format!("{a}.context_length"),
            u32_md(c.max_position_embeddings, "context_length")?,
        ),
        (
            format!("{a}.embedding_length"),
            u32_md(c.hidden_size, "hidden_size")?,
        ),
        (
            format!("{a}.block_count"),
            u32_md(c.num_hidden_layers, "num_hidden_layers")?,
        ),
        (
            format!("{a}.feed_forward_length"),
            u32_md(c.intermediate_size, "intermediate_size")?,
        ),
        (
            format!("{a}.attention.head_count"),
            u32_md(c.num_attention_heads, "heads")?,
        ),
        (
            format!("{a}.attention.head_count_kv"),
            u32_md(c.num_key_value_heads, "kv heads")?,
        ),
        (
            format!("{a}.attention.key_length"),
            u32_md(c.head_dim, "head_dim")?,
        ),
        (
            format!("{a}.attention.value_length"),
            u32_md(c.head_dim, "head_dim")?,
        ),
        (
            format!("{a}.rope.dimension_count"),
            u32_md(c.head_dim, "head_dim")?,
        ),
        (
            format!("{a}.rope.freq_base"),
            GValue::F32(c.rope_theta as f32),
        ),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            GValue::F32(c.rms_norm_eps as f32),
        ),
    ])
}

/// Writes `model` as a GGUF file at `out` (via a temporary file renamed into place, so
/// a crash never leaves a truncated `.gguf` that a server would pick up). The tokenizer
/// comes from `tokenizer_dir` (usually the base or merged model dir).
pub fn export_gguf(
    model: &Model,
    tokenizer_dir: &Path,
    out: &Path,
    dtype: GgufDType,
) -> Result<GgufExport> {
    check_exportable(&model.config)?;
    let tok = GgufTokenizer::from_dir(tokenizer_dir, model.config.vocab_size)?;
    let name = model
        .config
        .raw
        .get("_name_or_path")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| {
            tokenizer_dir
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "fcmesh-qwen3".into());
    let mut md = model_metadata(&model.config, dtype, &name)?;
    md.extend(tok.metadata());
    let (tensors, fallbacks) = quantize_model(model, dtype)?;
    write_gguf(out, &md, &tensors)?;
    let file_bytes = std::fs::metadata(out)
        .map_err(|e| ModelError::io(out, e))?
        .len();
    Ok(GgufExport {
        path: out.to_path_buf(),
        n_tensors: tensors.len(),
        file_bytes,
        fallbacks,
    })
}

/// Loads a HF model dir (f32) and exports it with its own tokenizer files.
pub fn export_gguf_dir(model_dir: &Path, out: &Path, dtype: GgufDType) -> Result<GgufExport> {
    let model = Model::load(model_dir, &Device::Cpu, candle_core::DType::F32)?;
    export_gguf(&model, model_dir, out, dtype)
}

/// Writes metadata + tensors to `out` atomically (tmp file + rename).
pub fn write_gguf(
    out: &Path,
    md: &[(String, GValue)],
    tensors: &[(String, QTensor)],
) -> Result<()> {
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| ModelError::io(parent, e))?;
    }
    let mut tmp = out.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let file = std::fs::File::create(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let md_refs: Vec<(&str, &GValue)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let res = gguf_file::write(&mut w, &md_refs, &t_refs)
        .map_err(ModelError::from)
        .and_then(|_| {
            use std::io::Write;
            w.flush().map_err(|e| ModelError::io(&tmp, e))
        });
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    drop(w);
    std::fs::rename(&tmp, out).map_err(|e| ModelError::io(out, e))
}
