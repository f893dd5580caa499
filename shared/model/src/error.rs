//! Error type of the model crate.
//!
//! Everything that reads external input (config files, safetensors, adapter
//! configs, token ids supplied by callers) reports problems through
//! [`ModelError`] instead of panicking, because the crate runs inside
//! long-lived services where one bad artifact must not take the process down.

use std::path::PathBuf;

/// Errors produced by `fc-model`.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A tensor operation failed (shape mismatch, unsupported dtype, device error).
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// Reading or writing a file failed.
    #[error("io error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSON file could not be parsed or serialized.
    #[error("json error in {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A safetensors file could not be read or written.
    #[error("safetensors error in {path}: {msg}")]
    Safetensors { path: PathBuf, msg: String },
    /// The model / adapter configuration is invalid or unsupported.
    #[error("invalid config: {0}")]
    Config(String),
    /// A weight is missing from the checkpoint or has the wrong shape.
    #[error("weight error: {0}")]
    Weight(String),
    /// The caller passed inconsistent arguments (bad token id, shape mismatch, ...).
    #[error("invalid input: {0}")]
    Input(String),
    /// Tokenizer training / loading failed.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
}

/// Crate-wide result alias.
pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn json(path: impl Into<PathBuf>, source: serde_json::Error) -> Self {
        ModelError::Json {
            path: path.into(),
            source,
        }
    }
}
