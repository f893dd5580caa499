//! fc-data: function-calling dataset handling for fcmesh.
//!
//! - [`sample`]: the internal [`Sample`] type (one processed JSONL line).
//! - [`loaders`]: streaming parsers for xLAM-60k, BFCL v3/v4, OpenAI
//!   messages+tools and LLaMA-Factory ShareGPT records.
//! - [`schema`]: xLAM/BFCL parameter conversion to JSON Schema and the
//!   compiled-validator cache shared with `fc-rewards`.
//! - [`validate`]: per-sample validation with stable reject codes.
//! - [`ingest`]: the ingest driver (train/val split, dead letters, report).
//! - [`gen`]: the deterministic synthetic xLAM-style data generator and its
//!   tool catalogue.

pub mod error;
pub mod gen;
pub mod ingest;
pub mod loaders;
pub mod sample;
pub mod schema;
pub mod stream;
pub mod validate;

pub use error::{DataError, Reject, RejectReason};
pub use gen::{generate, generate_heldout, write_xlam_json, XlamRecord};
pub use ingest::{ingest, ingest_file, is_val, IngestOptions, IngestPaths, IngestProgress, IngestReport, IngestSinks};
pub use loaders::{load, parse_record, read_samples, BfclAnswers, Loaded, Loader};
pub use sample::{BfclCall, Call, Expected, Format, Message, Role, Sample, Source, ToolDef};
pub use schema::{SchemaCache, CompiledSchema};
pub use validate::{validate, validate_with};
