//! File helpers: safetensors discovery/loading, writing safetensors with the
//! `{"format": "pt"}` metadata transformers requires, JSON, tokenizer copies.

use crate::error::{ModelError, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::Tensor;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Files copied next to a saved model so it can be served / tokenized as-is.
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
];

pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::json(path, e))
}

pub(crate) fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| ModelError::json(path, e))?;
    std::fs::write(path, text + "\n").map_err(|e| ModelError::io(path, e))
}

/// Lists the safetensors files of a HF model dir: the shards named in
/// `model.safetensors.index.json`, else `model.safetensors`.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let v = read_json(&index)?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| ModelError::Config(format!("{}: no weight_map", index.display())))?;
        let files: BTreeSet<&str> = map.values().filter_map(Value::as_str).collect();
        let mut out = Vec::new();
        for f in files {
            // Shard names come from the file; refuse anything that escapes the dir.
            if f.contains('/') || f.contains('\\') || f.contains("..") {
                return Err(ModelError::Config(format!("suspicious shard name `{f}`")));
            }
            out.push(dir.join(f));
        }
        return Ok(out);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(ModelError::Weight(format!(
        "no model.safetensors(.index.json) in {}",
        dir.display()
    )))
}

/// Memory-maps a set of safetensors files.
pub(crate) fn mmap_files(files: &[PathBuf]) -> Result<MmapedSafetensors> {
    for f in files {
        if !f.exists() {
            return Err(ModelError::Weight(format!("missing shard {}", f.display())));
        }
    }
    // SAFETY: the files are mapped read-only; the usual mmap caveat applies (another
    // process truncating the file while we read it). Mapping avoids holding a second
    // full copy of a multi-GB checkpoint in memory during the dtype conversion.
    unsafe { MmapedSafetensors::multi(files) }.map_err(|e| ModelError::Safetensors {
        path: files.first().cloned().unwrap_or_default(),
        msg: e.to_string(),
    })
}

/// Writes tensors as safetensors with `{"format": "pt"}` metadata (transformers refuses
/// files without it). Tensors are made contiguous and written in their current dtype.
pub fn write_safetensors(path: &Path, tensors: Vec<(String, Tensor)>) -> Result<()> {
    let mut data = Vec::with_capacity(tensors.len());
    for (k, t) in tensors {
        data.push((k, t.contiguous()?));
    }
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::serialize_to_file(data, Some(meta), path).map_err(|e| ModelError::Safetensors {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

/// Copies the known tokenizer files present in `src` into `dst`.
pub fn copy_tokenizer_files(src: &Path, dst: &Path) -> Result<()> {
    for name in TOKENIZER_FILES {
        let from = src.join(name);
        if from.is_file() {
            std::fs::copy(&from, dst.join(name)).map_err(|e| ModelError::io(&from, e))?;
        }
    }
    Ok(())
}

/// Loads `tokenizer.json` from a model dir.
pub fn load_tokenizer(dir: &Path) -> Result<tokenizers::Tokenizer> {
    let path = dir.join("tokenizer.json");
    tokenizers::Tokenizer::from_file(&path)
        .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))
}
