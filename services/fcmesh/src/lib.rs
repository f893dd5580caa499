//! The operator CLI's logic; `main.rs` only parses arguments.
//!
//! `fcmesh run` links every service library and runs the chosen ones in one process on one
//! bus (embedded by default, NATS when `FC_NATS_URL` is set). `fcmesh pipeline start`
//! publishes a PipelineRequested command; `fcmesh status` projects a run's timeline from the
//! FC_RUNS stream. Human progress goes to stderr; stdout carries only documented output.

pub mod data_cmds;
pub mod demo;
pub mod eval_cmd;
pub mod model_cmds;
pub mod pipeline;
pub mod services;
pub mod status;

pub use services::{run_services, ServiceName, ALL_SERVICES};

/// Runs blocking work on a plain thread: the engine's blocking API refuses to run on a
/// runtime thread (spawn_blocking threads count), where it could starve the executor.
pub async fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> anyhow::Result<T> + Send + 'static) -> anyhow::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.await.map_err(|_| anyhow::anyhow!("worker thread panicked"))?
}
