//! `fcmesh pipeline start`: turn a pipeline TOML file into a PipelineRequested command.

use std::path::Path;

use anyhow::{bail, Context};
use fc_events::{DatasetSpec, PipelineRequested};
use fc_runtime::publish::run_msg_id;
use fc_runtime::Publisher;
use serde::Deserialize;

/// The pipeline file (deploy/config/pipeline.toml). Stage sections are passed through as
/// JSON; each stage validates its own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    #[serde(default)]
    pub run_id: Option<String>,
    pub base_model: String,
    pub dataset: DatasetSpec,
    #[serde(default)]
    pub stages: Vec<String>,
    #[serde(default)]
    pub sft: Option<toml::Table>,
    #[serde(default)]
    pub grpo: Option<toml::Table>,
    #[serde(default)]
    pub eval: Option<toml::Table>,
    #[serde(default)]
    pub promote: Option<toml::Table>,
}

fn section(t: &Option<toml::Table>) -> anyhow::Result<serde_json::Value> {
    match t {
        Some(t) => Ok(serde_json::to_value(t)?),
        None => Ok(serde_json::Value::Object(Default::default())),
    }
}

/// Parses and checks a pipeline file: a clear error for every problem found.
pub fn load(path: &Path) -> anyhow::Result<(String, PipelineRequested)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: PipelineFile = toml::from_str(&text).with_context(|| format!("{} is not a valid pipeline file", path.display()))?;
    let run_id = file.run_id.clone().unwrap_or_else(new_run_id);
    if !fc_events::subjects::valid_token(&run_id) {
        bail!("run_id {run_id:?} must be 1-128 characters of A-Z a-z 0-9 - _");
    }
    const FORMATS: &[&str] = &["xlam", "bfcl", "openai", "sharegpt"];
    if !FORMATS.contains(&file.dataset.format.as_str()) {
        bail!("dataset.format {:?} is not one of {FORMATS:?}", file.dataset.format);
    }
    if !(0.0..1.0).contains(&file.dataset.val_fraction) {
        bail!("dataset.val_fraction must be in [0, 1), got {}", file.dataset.val_fraction);
    }
    const STAGES: &[&str] = &["ingest", "sft", "merge", "eval", "grpo", "promote"];
    for s in &file.stages {
        if !STAGES.contains(&s.as_str()) {
            bail!("unknown stage {s:?}; stages are {STAGES:?}");
        }
    }
    let req = PipelineRequested {
        dataset: file.dataset.clone(),
        base_model: file.base_model.clone(),
        sft: section(&file.sft)?,
        grpo: section(&file.grpo)?,
        eval: section(&file.eval)?,
        promote: section(&file.promote)?,
        stages: file.stages.clone(),
    };
    Ok((run_id, req))
}

/// A fresh, time-ordered run id.
pub fn new_run_id() -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("run-{}", &id[..16])
}

/// Publishes the command; returns the run id.
pub async fn start(publisher: &Publisher, run_id: &str, req: &PipelineRequested) -> anyhow::Result<()> {
    publisher.emit(run_id, None, req, run_msg_id::<PipelineRequested>(run_id, 0)).await?;
    Ok(())
}
