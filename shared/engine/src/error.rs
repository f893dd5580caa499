//! Errors of the engine API. Request-shaped problems ([`EngineError::InvalidRequest`],
//! [`EngineError::QueueFull`], [`EngineError::TooLarge`]) are the caller's to handle (HTTP
//! 400 / 429 in the gateway); the others mean the engine is gone.

/// Errors returned by [`crate::EngineHandle`].
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("engine queue full ({0} waiting requests)")]
    QueueFull(usize),
    #[error("request can never fit: {0}")]
    TooLarge(String),
    /// The engine thread stopped (shutdown, or it failed to start).
    #[error("engine is not running")]
    Closed,
    /// The request failed inside the engine.
    #[error("request failed: {0}")]
    Failed(String),
    /// A blocking call was made from inside a tokio runtime, where it would stall a worker
    /// (and tokio's `blocking_recv` would panic).
    #[error("blocking engine call from inside an async runtime; use the async API")]
    BlockingInAsync,
    #[error("model incompatible with the running engine: {0}")]
    IncompatibleModel(String),
    #[error(transparent)]
    Model(#[from] fc_model::ModelError),
    #[error("failed to start engine thread: {0}")]
    Spawn(#[from] std::io::Error),
}
