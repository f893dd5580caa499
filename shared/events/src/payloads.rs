//! Payloads of every pipeline event. Append-only: add fields with `#[serde(default)]`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{subjects, EventPayload};

/// A content-addressed artifact (file or directory) named by the sha256 of its content
/// (for a directory: of its manifest). Services only read each other's files through these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRef {
    pub sha256: String,
    pub kind: ArtifactKind,
    /// Total bytes (all files for a directory).
    pub bytes: u64,
    /// Human hint, e.g. `train.jsonl`; not part of identity.
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactKind {
    Dataset,
    Model,
    Adapter,
    Checkpoint,
    Gguf,
    Report,
    DeadLetters,
    Other,
}

/// Which training stage produced a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Base,
    Sft,
    Grpo,
}

/// Where the pipeline's input data comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetSpec {
    /// A local path readable by data-ingest, or `artifact:<sha256>`.
    pub source: String,
    /// `xlam`, `bfcl`, `openai` or `sharegpt`.
    #[serde(default = "default_format")]
    pub format: String,
    #[serde(default)]
    pub answers: Option<String>,
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
    #[serde(default)]
    pub split_seed: u64,
}

fn default_format() -> String {
    "xlam".into()
}
fn default_val_fraction() -> f64 {
    0.1
}

/// A user asked for a pipeline run. The stage sections are owned by the stages that read
/// them; they stay JSON here so a new knob never needs an event schema change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineRequested {
    pub dataset: DatasetSpec,
    /// Base model: a local HF model dir or `artifact:<sha256>`.
    pub base_model: String,
    #[serde(default)]
    pub sft: serde_json::Value,
    #[serde(default)]
    pub grpo: serde_json::Value,
    #[serde(default)]
    pub eval: serde_json::Value,
    #[serde(default)]
    pub promote: serde_json::Value,
    /// Stages to run, in order; empty means all.
    #[serde(default)]
    pub stages: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetIngested {
    pub train: ArtifactRef,
    pub val: ArtifactRef,
    #[serde(default)]
    pub dead_letters: Option<ArtifactRef>,
    pub format: String,
    pub read: u64,
    pub accepted: u64,
    /// Reason code -> count.
    pub rejected: BTreeMap<String, u64>,
    pub train_count: u64,
    pub val_count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftStarted {
    pub base_model: ArtifactRef,
    pub dataset: ArtifactRef,
    pub total_steps: u64,
    pub train_examples: u64,
    /// The resolved training config (after defaults).
    pub config: serde_json::Value,
    /// Set when this start resumes from a checkpoint.
    #[serde(default)]
    pub resumed_from_step: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftStep {
    pub step: u64,
    pub total_steps: u64,
    pub epoch: f64,
    pub loss: f64,
    pub learning_rate: f64,
    pub grad_norm: f64,
    pub tokens_per_second: f64,
    #[serde(default)]
    pub val_loss: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftCheckpoint {
    pub step: u64,
    pub epoch: f64,
    /// Adapter, optimizer state and data position, as one directory artifact.
    pub checkpoint: ArtifactRef,
    /// Index of the next batch in the (seeded) data order.
    pub data_position: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftCompleted {
    /// The trained weights: a PEFT adapter dir, or (full fine-tuning) the model dir.
    pub adapter: ArtifactRef,
    pub base_model: ArtifactRef,
    pub steps: u64,
    pub train_loss_first: f64,
    pub train_loss_last: f64,
    #[serde(default)]
    pub val_loss: Option<f64>,
    pub tokens_per_second: f64,
    /// Set when every weight was trained (`finetuning_type = "full"`): the complete HF model
    /// dir, which needs no merge. Added in schema 1 without a version bump (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ArtifactRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMerged {
    pub stage: Stage,
    pub model: ArtifactRef,
    pub base_model: ArtifactRef,
    pub adapter: ArtifactRef,
    #[serde(default)]
    pub gguf: Option<ArtifactRef>,
}

/// Sampling parameters carried by rollout jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    pub temperature: f64,
    #[serde(default = "one")]
    pub top_p: f64,
    #[serde(default)]
    pub top_k: u32,
    #[serde(default)]
    pub min_p: f64,
    pub max_new_tokens: u32,
    pub seed: u64,
}

fn one() -> f64 {
    1.0
}

/// One prompt to sample a GRPO group for. Published on the work-queue stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutRequested {
    pub prompt_id: String,
    pub group_id: String,
    pub policy_version: u64,
    /// The policy's adapter; `None` for the merged SFT model itself (version 0).
    #[serde(default)]
    pub adapter: Option<ArtifactRef>,
    pub model: ArtifactRef,
    /// The dataset artifact and the sample's line in it.
    pub dataset: ArtifactRef,
    pub sample_index: u64,
    pub group_size: u32,
    pub sampling: SamplingParams,
}

impl EventPayload for RolloutRequested {
    const TYPE: &'static str = "rollout_requested";
    const VERSION: u32 = 1;
    fn subject(&self, run_id: &str) -> String {
        subjects::rollout_job(run_id)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
    Cancelled,
}

/// One sampled completion with the log-probs it was sampled with (GRPO's old policy).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub index: u32,
    pub token_ids: Vec<u32>,
    pub text: String,
    /// Log-prob of each sampled token under the sampling policy, same length as token_ids.
    pub logprobs: Vec<f32>,
    pub finish_reason: FinishReason,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutGenerated {
    pub prompt_id: String,
    pub group_id: String,
    pub policy_version: u64,
    pub dataset: ArtifactRef,
    pub sample_index: u64,
    pub prompt_token_ids: Vec<u32>,
    pub completions: Vec<Completion>,
    pub generator: String,
    pub elapsed_ms: u64,
}

impl EventPayload for RolloutGenerated {
    const TYPE: &'static str = "rollout_generated";
    const VERSION: u32 = 1;
    fn subject(&self, run_id: &str) -> String {
        subjects::rollout(run_id)
    }
}

/// Score of one completion: total and per-component breakdown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionScore {
    pub index: u32,
    pub total: f64,
    /// Component name (parse, schema, exec, semantic, ...) -> score in [0, 1].
    pub components: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardScored {
    /// The RolloutGenerated event these scores are for.
    pub rollout_event_id: Uuid,
    pub prompt_id: String,
    pub group_id: String,
    pub policy_version: u64,
    /// Hash of the reward config plus the reward code version.
    pub reward_version: String,
    pub scores: Vec<CompletionScore>,
}

impl EventPayload for RewardScored {
    const TYPE: &'static str = "reward_scored";
    const VERSION: u32 = 1;
    fn subject(&self, run_id: &str) -> String {
        subjects::reward(run_id, &self.reward_version)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrpoStep {
    pub step: u64,
    pub total_steps: u64,
    pub policy_version: u64,
    pub reward_mean: f64,
    pub reward_std: f64,
    pub loss: f64,
    pub kl: f64,
    pub clip_fraction: f64,
    pub learning_rate: f64,
    pub groups: u32,
    pub tokens_per_second: f64,
    /// Mean of each reward component over the step's completions.
    #[serde(default)]
    pub components: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyUpdated {
    pub version: u64,
    pub adapter: ArtifactRef,
    pub step: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrpoCompleted {
    pub adapter: ArtifactRef,
    pub base_model: ArtifactRef,
    pub steps: u64,
    pub reward_mean_first: f64,
    pub reward_mean_last: f64,
}

/// The scoreboard. Rates are fractions in [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct EvalMetrics {
    pub count: u64,
    pub parse_rate: f64,
    pub schema_hit: f64,
    pub func_accuracy: f64,
    pub exec_rate: f64,
    /// Calls equal to the expected ones, names plus normalized arguments (`func_accuracy`
    /// judges names only). Added after v1; absent in older events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args_match: Option<f64>,
    #[serde(default)]
    pub args_exact: Option<f64>,
    #[serde(default)]
    pub no_call_accuracy: Option<f64>,
    /// Further metrics by name (per category, per split).
    #[serde(default)]
    pub extra: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalCompleted {
    pub stage: Stage,
    pub model: ArtifactRef,
    pub dataset: ArtifactRef,
    pub metrics: EvalMetrics,
    #[serde(default)]
    pub report: Option<ArtifactRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelPromoted {
    pub stage: Stage,
    pub model: ArtifactRef,
    /// Monotonic promotion counter (the KV pointer's revision).
    pub version: u64,
    pub metrics: EvalMetrics,
    pub reason: String,
}

/// A message that could not be processed: kept with its reason, never dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLettered {
    pub stream: String,
    pub subject: String,
    pub consumer: String,
    pub stream_sequence: u64,
    pub deliveries: u64,
    pub reason: String,
    /// The original message body (lossy UTF-8; events are JSON so this is exact for them).
    pub original: String,
}

impl EventPayload for DeadLettered {
    const TYPE: &'static str = "dead_lettered";
    const VERSION: u32 = 1;
    fn subject(&self, _run_id: &str) -> String {
        subjects::dlq(&self.stream)
    }
}

macro_rules! run_events {
    ($($t:ident => $name:literal),* $(,)?) => {
        $(impl EventPayload for $t {
            const TYPE: &'static str = $name;
            const VERSION: u32 = 1;
        })*
    };
}

run_events! {
    PipelineRequested => "pipeline_requested",
    DatasetIngested => "dataset_ingested",
    SftStarted => "sft_started",
    SftStep => "sft_step",
    SftCheckpoint => "sft_checkpoint",
    SftCompleted => "sft_completed",
    ModelMerged => "model_merged",
    GrpoStep => "grpo_step",
    PolicyUpdated => "policy_updated",
    GrpoCompleted => "grpo_completed",
    EvalCompleted => "eval_completed",
    ModelPromoted => "model_promoted",
}
