//! evaluator: evaluates merged models (Parse Rate, Schema Hit, Func Accuracy, Exec Rate)
//! and publishes EvalCompleted; its promoter applies the run's promotion rule.
//!
//! On ModelMerged it projects the run's state from the event log (the PipelineRequested for
//! the eval settings, the DatasetIngested for the validation split), generates greedily
//! with the engine, scores with fc-eval, stores the reports as an artifact and publishes
//! EvalCompleted. On EvalCompleted the promoter compares the metrics with the run's
//! thresholds and with the currently promoted model (KV `fc-pointers/promoted`), swaps the
//! pointer by compare-and-swap and publishes ModelPromoted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use fc_artifacts::{ArtifactKind, ArtifactStore};
use fc_bus::{Bus, BusConfig, BusError, ConsumerConfig, Delivery};
use fc_data::Sample;
use fc_eval::{Evaluator, Predictions, RunReport, Summary};
use fc_events::{
    subjects, DatasetIngested, EvalCompleted, EvalMetrics, EventPayload, ModelMerged, ModelPromoted,
    PipelineRequested, Stage,
};
use fc_model::device::DeviceSpec;
use fc_runtime::config::{CommonConfig, ConfigError, ConfigSource, VarSpec, FC_DEVICE};
use fc_runtime::{service, HandlerError, Publisher, ServiceError, Shutdown, Worker};
use serde::{Deserialize, Serialize};

pub const NAME: &str = "evaluator";
pub const ABOUT: &str =
    "evaluates merged models (Parse Rate, Schema Hit, Func Accuracy, Exec Rate), publishes EvalCompleted and promotes";
/// Fixed per service so all eight can run side by side (`fcmesh run --all`).
pub const DEFAULT_HTTP: &str = "0.0.0.0:9107";

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// Where the evaluated models run.
    pub device: DeviceSpec,
}

impl Config {
    pub fn vars() -> Vec<VarSpec> {
        let mut v = CommonConfig::vars(DEFAULT_HTTP);
        v.push(FC_DEVICE);
        v
    }

    pub fn from_source(src: &ConfigSource) -> Result<Self, ConfigError> {
        let mut r = src.reader(NAME);
        let common = CommonConfig::read(&mut r, NAME, DEFAULT_HTTP);
        let device = r.get(&FC_DEVICE);
        r.finish()?;
        Ok(Self { common, device })
    }

    pub fn bus_config(&self) -> BusConfig {
        self.common.bus_config()
    }
}

/// The durable consumers: evaluation (long jobs) and promotion.
pub fn consumers() -> (ConsumerConfig, ConsumerConfig) {
    (
        ConsumerConfig::new(subjects::STREAM_RUNS, "evaluator", &subjects::run_event_filter(ModelMerged::TYPE))
            .ack_wait(Duration::from_secs(120)),
        ConsumerConfig::new(subjects::STREAM_RUNS, "promoter", &subjects::run_event_filter(EvalCompleted::TYPE)),
    )
}

/// The `[eval]` section of a pipeline file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct EvalSettings {
    pub max_samples: usize,
    pub max_tokens: usize,
}

impl Default for EvalSettings {
    fn default() -> Self {
        Self { max_samples: 300, max_tokens: 256 }
    }
}

/// The `[promote]` section: a model is promoted when every threshold holds and its
/// func_accuracy is at least the promoted model's.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PromoteRule {
    pub min_parse_rate: f64,
    pub min_schema_hit: f64,
    pub min_func_accuracy: f64,
    pub min_exec_rate: f64,
}

/// The value stored under the `promoted` KV key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromotedPointer {
    pub run_id: String,
    pub stage: Stage,
    pub model: fc_events::ArtifactRef,
    pub metrics: EvalMetrics,
}

/// Greedy completions of `samples` by the model in `model_dir`, batched by the engine on
/// `device`. Blocking: call it off the async runtime.
pub fn generate_predictions(model_dir: &Path, samples: &[Sample], max_tokens: usize, device: DeviceSpec) -> Result<Predictions, String> {
    let tok = fc_chat::Tokenizer::from_dir(model_dir).map_err(|e| format!("tokenizer in {}: {e}", model_dir.display()))?;
    let mut prompts = Vec::with_capacity(samples.len());
    for s in samples {
        let (_, ids) = tok.apply_chat_template(&fc_chat::sample::prompt_request(s)).map_err(|e| e.to_string())?;
        prompts.push(ids);
    }
    let device = device.open().map_err(|e| e.to_string())?;
    let model = fc_model::Model::load(model_dir, &device, fc_model::DType::F32)
        .map_err(|e| format!("model in {}: {e}", model_dir.display()))?;
    let engine = fc_engine::Engine::start(model, tok, fc_engine::EngineConfig::default()).map_err(|e| e.to_string())?;
    let params = fc_engine::SamplingParams {
        temperature: 0.0,
        max_tokens,
        skip_special_tokens: true,
        stop_at_eos: true,
        ..Default::default()
    };
    let outs = engine.generate_batch(&prompts, &params).map_err(|e| e.to_string());
    engine.shutdown();
    let mut preds = Predictions::new();
    for (s, o) in samples.iter().zip(outs?) {
        preds.insert(s.id.clone(), o.text);
    }
    Ok(preds)
}

/// Scores predictions and writes `report.json`, `report.md` and `chart.png` into `out`.
pub fn score_and_report(
    name: &str,
    samples: &[Sample],
    preds: &Predictions,
    split: Option<&str>,
    out: &Path,
) -> Result<Summary, String> {
    let verdicts = Evaluator::new().evaluate(samples, preds, split);
    let summary = fc_eval::summarize(&verdicts);
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let report = RunReport::new(name.to_string(), summary.clone(), verdicts);
    std::fs::write(out.join("report.json"), report.to_json().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let runs = [report];
    std::fs::write(out.join("report.md"), fc_eval::markdown_table(&runs)).map_err(|e| e.to_string())?;
    fc_eval::render_chart(&runs, &out.join("chart.png")).map_err(|e| e.to_string())?;
    Ok(summary)
}

/// The event metrics of a summary.
pub fn event_metrics(s: &Summary) -> EvalMetrics {
    let m = &s.overall;
    EvalMetrics {
        count: m.count,
        parse_rate: m.parse_rate,
        schema_hit: m.schema_hit,
        func_accuracy: m.func_accuracy,
        exec_rate: m.exec_rate,
        args_match: Some(m.args_match),
        args_exact: Some(m.args_exact),
        no_call_accuracy: m.no_call_accuracy,
        extra: s.extra(),
    }
}

pub use fc_runtime::history::first_run_event;

/// Runs blocking work on a plain thread (the engine refuses runtime threads).
async fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> Result<T, String> + Send + 'static) -> Result<T, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.await.map_err(|_| "evaluation thread panicked".to_string())?
}

fn stage_name(s: Stage) -> &'static str {
    match s {
        Stage::Base => "base",
        Stage::Sft => "sft",
        Stage::Grpo => "grpo",
    }
}

async fn evaluate(
    d: Delivery,
    bus: Bus,
    store: ArtifactStore,
    publisher: Publisher,
    work: PathBuf,
    device: DeviceSpec,
) -> Result<(), HandlerError> {
    let env = d.envelope().map_err(|e| HandlerError::permanent(format!("not an event envelope: {e}")))?;
    let merged: ModelMerged = env.decode().map_err(|e| HandlerError::permanent(e.to_string()))?;
    let run = env.run_id.clone();
    let req = first_run_event::<PipelineRequested>(&bus, &run).await.map_err(|e| HandlerError::retry(e.to_string()))?;
    if let Some(r) = &req {
        if !(r.stages.is_empty() || r.stages.iter().any(|s| s == "eval")) {
            return Ok(());
        }
    }
    let settings: EvalSettings = req
        .as_ref()
        .map(|r| serde_json::from_value(r.eval.clone()).unwrap_or_default())
        .unwrap_or_default();
    let ingested = first_run_event::<DatasetIngested>(&bus, &run)
        .await
        .map_err(|e| HandlerError::retry(e.to_string()))?
        .ok_or_else(|| HandlerError::permanent(format!("run {run} has no DatasetIngested to evaluate on")))?;
    let model_dir = store.fetch(&merged.model).await.map_err(|e| HandlerError::retry(e.to_string()))?;
    let val_path = store.fetch(&ingested.val).await.map_err(|e| HandlerError::retry(e.to_string()))?;
    let stage = stage_name(merged.stage);
    let out = work.join(&run).join(stage);
    let name = format!("{run}/{stage}");
    let summary = off_runtime(move || {
        let mut samples = fc_data::read_samples(&val_path).map_err(|e| e.to_string())?;
        samples.truncate(settings.max_samples.max(1));
        let preds = generate_predictions(&model_dir, &samples, settings.max_tokens, device)?;
        score_and_report(&name, &samples, &preds, None, &out)
    })
    .await
    .map_err(HandlerError::permanent)?;
    let report = store
        .put_dir(&work.join(&run).join(stage), ArtifactKind::Report, &format!("eval-{stage}"))
        .await
        .map_err(|e| HandlerError::retry(e.to_string()))?;
    let metrics = event_metrics(&summary);
    tracing::info!(%run, stage, parse = metrics.parse_rate, func = metrics.func_accuracy, "model evaluated");
    metrics::gauge!("fc_eval_func_accuracy_ratio", "stage" => stage).set(metrics.func_accuracy);
    let done = EvalCompleted { stage: merged.stage, model: merged.model, dataset: ingested.val, metrics, report: Some(report) };
    publisher
        .emit(&run, Some(&env), &done, format!("{run}:{}:{stage}", EvalCompleted::TYPE))
        .await
        .map_err(|e| HandlerError::retry(e.to_string()))?;
    Ok(())
}

/// Why a model is (not) promoted; `Ok` carries the reason text.
pub fn promotion_decision(m: &EvalMetrics, rule: &PromoteRule, current: Option<&EvalMetrics>) -> Result<String, String> {
    let checks = [
        ("parse_rate", m.parse_rate, rule.min_parse_rate),
        ("schema_hit", m.schema_hit, rule.min_schema_hit),
        ("func_accuracy", m.func_accuracy, rule.min_func_accuracy),
        ("exec_rate", m.exec_rate, rule.min_exec_rate),
    ];
    for (name, v, min) in checks {
        if v < min {
            return Err(format!("{name} {v:.3} < {min:.3}"));
        }
    }
    match current {
        Some(c) if m.func_accuracy < c.func_accuracy => {
            Err(format!("func_accuracy {:.3} below the promoted model's {:.3}", m.func_accuracy, c.func_accuracy))
        }
        Some(c) => Ok(format!("meets thresholds; func_accuracy {:.3} >= promoted {:.3}", m.func_accuracy, c.func_accuracy)),
        None => Ok("meets thresholds; no model promoted yet".into()),
    }
}

async fn promote(d: Delivery, bus: Bus, publisher: Publisher) -> Result<(), HandlerError> {
    let env = d.envelope().map_err(|e| HandlerError::permanent(format!("not an event envelope: {e}")))?;
    let done: EvalCompleted = env.decode().map_err(|e| HandlerError::permanent(e.to_string()))?;
    let run = env.run_id.clone();
    let req = first_run_event::<PipelineRequested>(&bus, &run).await.map_err(|e| HandlerError::retry(e.to_string()))?;
    let rule: PromoteRule = req.map(|r| serde_json::from_value(r.promote).unwrap_or_default()).unwrap_or_default();
    // Compare-and-swap loop: two promoters racing cannot both win with stale data.
    loop {
        let current = bus
            .kv_get(subjects::KV_POINTERS, subjects::KEY_PROMOTED)
            .await
            .map_err(|e| HandlerError::retry(e.to_string()))?;
        let current_ptr: Option<PromotedPointer> = current.as_ref().and_then(|e| serde_json::from_slice(&e.value).ok());
        if current_ptr.as_ref().is_some_and(|p| p.model.sha256 == done.model.sha256) {
            return Ok(()); // already promoted (redelivery)
        }
        let reason = match promotion_decision(&done.metrics, &rule, current_ptr.as_ref().map(|p| &p.metrics)) {
            Ok(r) => r,
            Err(why) => {
                tracing::info!(%run, %why, "model not promoted");
                return Ok(());
            }
        };
        let ptr = PromotedPointer { run_id: run.clone(), stage: done.stage, model: done.model.clone(), metrics: done.metrics.clone() };
        let value = Bytes::from(serde_json::to_vec(&ptr).map_err(|e| HandlerError::permanent(e.to_string()))?);
        match bus.kv_cas(subjects::KV_POINTERS, subjects::KEY_PROMOTED, value, current.map(|e| e.revision)).await {
            Ok(version) => {
                let promoted =
                    ModelPromoted { stage: done.stage, model: done.model.clone(), version, metrics: done.metrics.clone(), reason };
                publisher
                    .emit(&run, Some(&env), &promoted, format!("{run}:{}:{}", ModelPromoted::TYPE, done.model.sha256))
                    .await
                    .map_err(|e| HandlerError::retry(e.to_string()))?;
                return Ok(());
            }
            Err(BusError::CasConflict { .. }) => continue,
            Err(e) => return Err(HandlerError::retry(e.to_string())),
        }
    }
}

/// Runs the service until `shutdown`.
pub async fn run(config: Config, bus: Bus, shutdown: Shutdown) -> Result<(), ServiceError> {
    let _svc = service::start(NAME, config.common.http_addr, &bus, None, &shutdown).await?;
    let store = ArtifactStore::for_bus(&bus, &config.common.data_dir);
    let publisher = Publisher::new(bus.clone(), NAME);
    let work = config.common.data_dir.join("work").join(NAME);
    let device = config.device;
    let (eval_cfg, promote_cfg) = consumers();
    let eval_consumer = bus.consumer(eval_cfg).await?;
    let promote_consumer = bus.consumer(promote_cfg).await?;
    let (b, s, p, sd) = (bus.clone(), store.clone(), publisher.clone(), shutdown.clone());
    let evaluating = tokio::spawn(async move {
        Worker::new(NAME, &eval_consumer)
            .run(eval_consumer, sd, move |d| evaluate(d, b.clone(), s.clone(), p.clone(), work.clone(), device))
            .await
    });
    let (b, p, sd) = (bus.clone(), publisher.clone(), shutdown.clone());
    let promoting = tokio::spawn(async move {
        Worker::new("promoter", &promote_consumer).run(promote_consumer, sd, move |d| promote(d, b.clone(), p.clone())).await
    });
    let _ = evaluating.await;
    let _ = promoting.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(parse: f64, func: f64) -> EvalMetrics {
        EvalMetrics { count: 10, parse_rate: parse, schema_hit: parse, func_accuracy: func, exec_rate: parse, ..Default::default() }
    }

    #[test]
    fn promotion_rule() {
        let rule = PromoteRule { min_parse_rate: 0.9, min_func_accuracy: 0.5, ..Default::default() };
        assert!(promotion_decision(&m(0.95, 0.6), &rule, None).is_ok());
        assert!(promotion_decision(&m(0.85, 0.6), &rule, None).expect_err("parse too low").contains("parse_rate"));
        assert!(promotion_decision(&m(0.95, 0.6), &rule, Some(&m(0.99, 0.7))).is_err(), "worse than promoted");
        assert!(promotion_decision(&m(0.95, 0.7), &rule, Some(&m(0.99, 0.7))).is_ok(), "ties promote the newer model");
    }
}
