//! fc-eval: the evaluator's logic, shared by the `evaluator` service and `fcmesh eval`.
//!
//! * [`score`]: per-sample [`Verdict`]s for raw completions and aggregate [`Metrics`]
//!   (Parse Rate, Schema Hit, Func Accuracy, Exec Rate, exact-argument match, no-call
//!   accuracy), broken down by [`Category`] and by a caller-supplied split tag;
//! * [`bfcl`]: a re-implementation of BFCL's AST checker, verified against BFCL's own
//!   Python checker (fixture test) and its published ground truth (oracle test);
//! * [`report`]: JSON report, Markdown comparison table and PNG bar chart over several
//!   runs (e.g. base vs SFT vs GRPO);
//! * [`predictions`]: the `--predictions` JSONL format.
//!
//! Typical use:
//!
//! ```no_run
//! # fn main() -> Result<(), fc_eval::EvalError> {
//! use fc_eval::{summarize, Evaluator, Predictions, RunReport};
//! let samples = fc_data::read_samples("val.jsonl".as_ref()).map_err(|e| fc_eval::EvalError::Data(e.to_string()))?;
//! let preds = Predictions::from_path("preds.jsonl".as_ref())?;
//! let verdicts = Evaluator::new().evaluate(&samples, &preds, None);
//! let run = RunReport::new("sft", summarize(&verdicts), verdicts);
//! std::fs::write("report.json", run.to_json()?).map_err(|e| fc_eval::EvalError::io("report.json", e))?;
//! # Ok(()) }
//! ```

pub mod bfcl;
pub mod predictions;
pub mod report;
pub mod score;

use std::path::{Path, PathBuf};

pub use bfcl::{check_calls, check_sample, reference_calls, AstVerdict, BfclCategory, FuncDoc};
pub use predictions::Predictions;
pub use report::{markdown_table, render_chart, RunReport};
pub use score::{summarize, unmatched_predictions, BfclAccuracy, BfclResult, Category, Evaluator, Metrics, Summary, Verdict};

/// Errors of the evaluator library.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("predictions line {line}: {msg}")]
    Predictions { line: usize, msg: String },
    #[error("invalid evaluator config: {0}")]
    Config(String),
    #[error("dataset: {0}")]
    Data(String),
    #[error("cannot serialize report: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot render chart: {0}")]
    Chart(String),
}

impl EvalError {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        EvalError::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
}
