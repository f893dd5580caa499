//! The operator CLI's logic; `main.rs` only parses arguments.
//!
//! `fcmesh run` links every service library and runs the chosen ones in one process on one
//! bus (embedded by default, NATS when `FC_NATS_URL` is set). `fcmesh pipeline start`
//! publishes a PipelineRequested command; `fcmesh status` projects a run's timeline from the
//! FC_RUNS stream. Human progress goes to stderr; stdout carries only documented output.

pub mod data_cmds;
pub mod eval_cmd;
pub mod model_cmds;
pub mod pipeline;
pub mod services;
pub mod status;

pub use services::{run_services, ServiceName, ALL_SERVICES};
