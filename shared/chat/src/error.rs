use std::path::PathBuf;

/// Everything that can go wrong loading a model's tokenizer files or rendering a prompt.
/// Request-dependent failures ([`ChatError::InvalidRequest`], [`ChatError::Template`]) are
/// the client's fault and map to HTTP 400 in the gateway; the others are deployment errors.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid JSON in {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    #[error("no chat_template in {0}")]
    NoChatTemplate(PathBuf),
    #[error("invalid chat template: {0}")]
    TemplateSyntax(String),
    #[error("chat template rendering failed: {0}")]
    Template(String),
    #[error("invalid chat request: {0}")]
    InvalidRequest(String),
}

impl ChatError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ChatError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn tokenizer(e: impl std::fmt::Display) -> Self {
        ChatError::Tokenizer(e.to_string())
    }

    /// True when the request (not the deployment) is at fault.
    pub fn is_client_error(&self) -> bool {
        matches!(self, ChatError::InvalidRequest(_) | ChatError::Template(_))
    }
}

/// MiniJinja's `Display` omits the detail line; `{:#}` includes it and the template
/// location, which is what an operator needs to see.
pub(crate) fn describe(e: &minijinja::Error) -> String {
    let mut msg = e.to_string();
    if let Some(detail) = e.detail() {
        if !msg.contains(detail) {
            msg.push_str(": ");
            msg.push_str(detail);
        }
    }
    msg
}
