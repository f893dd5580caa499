//! Per-record rejections and fatal data errors.

use serde::{Deserialize, Serialize};

/// Why a record was rejected. Serialized as stable snake_case codes that
/// dashboards and dead-letter files rely on: never rename a variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// The record (or an embedded JSON string) is not valid JSON / UTF-8.
    InvalidJson,
    /// A required field is absent or has the wrong JSON type.
    MissingField,
    /// The tool list is malformed (not a list, missing names, duplicates,
    /// parameters not convertible to a valid JSON Schema).
    BadTools,
    /// The expected answer is malformed (not a list of {name, arguments}).
    BadAnswers,
    /// The conversation/messages are malformed.
    BadMessages,
    /// An expected call names a tool that is not offered.
    UnknownTool,
    /// Expected call arguments do not validate against the tool's schema.
    SchemaViolation,
    /// No user query, or only whitespace.
    EmptyQuery,
    /// BFCL question without a ground-truth answer.
    MissingAnswer,
    /// A record shape this loader does not support (e.g. BFCL multi-turn).
    Unsupported,
    /// The record exceeds the maximum record size.
    TooLarge,
}

impl RejectReason {
    /// The stable snake_case code.
    pub fn code(self) -> &'static str {
        match self {
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::MissingField => "missing_field",
            RejectReason::BadTools => "bad_tools",
            RejectReason::BadAnswers => "bad_answers",
            RejectReason::BadMessages => "bad_messages",
            RejectReason::UnknownTool => "unknown_tool",
            RejectReason::SchemaViolation => "schema_violation",
            RejectReason::EmptyQuery => "empty_query",
            RejectReason::MissingAnswer => "missing_answer",
            RejectReason::Unsupported => "unsupported",
            RejectReason::TooLarge => "too_large",
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// A rejected record: reason code, human-readable detail, position in the
/// input and the record id when it could be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("record {position}{}: {reason}: {detail}", id.as_ref().map(|i| format!(" (id {i})")).unwrap_or_default())]
pub struct Reject {
    pub reason: RejectReason,
    pub detail: String,
    pub position: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl Reject {
    /// New rejection without id.
    pub fn new(reason: RejectReason, detail: impl Into<String>, position: u64) -> Self {
        Reject {
            reason,
            detail: detail.into(),
            position,
            id: None,
        }
    }

    /// Attach the record id.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }
}

/// Fatal errors that stop a whole load/ingest (as opposed to [`Reject`],
/// which only drops one record).
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("i/o error on {path}: {source}")]
    IoPath {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("json error: {0}")]
    Json(#[from] serde_json::Error),
    #[error("bad answers file: {0}")]
    Answers(String),
    #[error("corrupt processed file: {0}")]
    Corrupt(String),
    #[error("invalid option: {0}")]
    Options(String),
}
