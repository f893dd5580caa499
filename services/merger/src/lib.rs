//! merger: merges LoRA adapters into their base model and stores the HF model dir (and
//! optionally a GGUF file) as an artifact.
//!
//! On SftCompleted (and GrpoCompleted) it fetches the base model and the adapter by hash,
//! merges (W += scale * B @ A), saves an HF model dir with the base's tokenizer files, and
//! publishes ModelMerged. [`merge`] is the same logic without the bus (`fcmesh merge`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use fc_artifacts::{ArtifactKind, ArtifactRef, ArtifactStore};
use fc_bus::{Bus, BusConfig, ConsumerConfig, Delivery};
use fc_events::{subjects, EventPayload, GrpoCompleted, ModelMerged, SftCompleted, Stage};
use fc_model::{DType, Device, GgufDType, LoraAdapter, Model};
use fc_runtime::config::{CommonConfig, ConfigError, ConfigSource, VarSpec};
use fc_runtime::{service, HandlerError, Publisher, ServiceError, Shutdown, Worker};
use serde::Serialize;

pub const NAME: &str = "merger";
pub const ABOUT: &str = "merges LoRA adapters into their base model and stores the HF model dir (and GGUF) as an artifact";
/// Fixed per service so all eight can run side by side (`fcmesh run --all`).
pub const DEFAULT_HTTP: &str = "0.0.0.0:9103";

pub const FC_MERGE_GGUF: VarSpec =
    VarSpec { name: "FC_MERGE_GGUF", default: "", help: "also export GGUF: q8_0, q4_0, q4_k, f16 or f32; unset: none" };

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    pub gguf: Option<GgufDType>,
}

/// Parses a GGUF type name as the CLI and config spell it.
pub fn parse_gguf(s: &str) -> Result<GgufDType, String> {
    match s.to_ascii_lowercase().as_str() {
        "f32" => Ok(GgufDType::F32),
        "f16" => Ok(GgufDType::F16),
        "q8_0" => Ok(GgufDType::Q8_0),
        "q4_0" => Ok(GgufDType::Q4_0),
        "q4_k" => Ok(GgufDType::Q4K),
        other => Err(format!("unknown GGUF type {other:?} (f32, f16, q8_0, q4_0, q4_k)")),
    }
}

impl Config {
    pub fn vars() -> Vec<VarSpec> {
        let mut v = CommonConfig::vars(DEFAULT_HTTP);
        v.push(FC_MERGE_GGUF);
        v
    }

    pub fn from_source(src: &ConfigSource) -> Result<Self, ConfigError> {
        let mut r = src.reader(NAME);
        let common = CommonConfig::read(&mut r, NAME, DEFAULT_HTTP);
        let gguf = match r.opt::<String>(&FC_MERGE_GGUF) {
            None => None,
            Some(s) => match parse_gguf(&s) {
                Ok(d) => Some(d),
                Err(e) => {
                    r.problem(format!("FC_MERGE_GGUF: {e}"));
                    None
                }
            },
        };
        r.finish()?;
        Ok(Self { common, gguf })
    }

    pub fn bus_config(&self) -> BusConfig {
        self.common.bus_config()
    }
}

/// The durable consumers this service reads through (one filter each: nats-server 2.9).
pub fn consumers() -> Vec<ConsumerConfig> {
    [SftCompleted::TYPE, GrpoCompleted::TYPE]
        .into_iter()
        .map(|t| {
            ConsumerConfig::new(subjects::STREAM_RUNS, &format!("merger-{}", t.trim_end_matches("_completed")), &subjects::run_event_filter(t))
                .ack_wait(Duration::from_secs(120))
        })
        .collect()
}

/// What `fcmesh merge` prints.
#[derive(Debug, Clone, Serialize)]
pub struct MergeSummary {
    pub out: PathBuf,
    pub lora_r: usize,
    pub lora_alpha: f64,
    pub gguf: Option<PathBuf>,
    pub gguf_bytes: Option<u64>,
}

/// Merges the PEFT adapter in `adapter_dir` into the model in `model_dir` and saves an HF
/// model dir (f32, with the base's tokenizer files) to `out`, plus `out/model-<type>.gguf`.
pub fn merge(model_dir: &Path, adapter_dir: &Path, out: &Path, gguf: Option<GgufDType>) -> Result<MergeSummary, String> {
    if adapter_dir.join("config.json").is_file() && !adapter_dir.join("adapter_config.json").is_file() {
        return Err(format!(
            "{} is a full model dir (a full fine-tune), not a LoRA adapter: it needs no merge",
            adapter_dir.display()
        ));
    }
    let base = Model::load(model_dir, &Device::Cpu, DType::F32).map_err(|e| format!("base model {}: {e}", model_dir.display()))?;
    let adapter = LoraAdapter::load_peft(adapter_dir, &base).map_err(|e| format!("adapter {}: {e}", adapter_dir.display()))?;
    let merged = base.merge_lora(&adapter).map_err(|e| format!("merge: {e}"))?;
    merged.save_hf(out, DType::F32, Some(model_dir)).map_err(|e| format!("save {}: {e}", out.display()))?;
    let (mut gguf_path, mut gguf_bytes) = (None, None);
    if let Some(dt) = gguf {
        let name = format!("model-{}.gguf", format!("{dt:?}").to_ascii_lowercase());
        let exp = fc_model::export_gguf(&merged, model_dir, &out.join(name), dt).map_err(|e| format!("gguf: {e}"))?;
        gguf_path = Some(exp.path);
        gguf_bytes = Some(exp.file_bytes);
    }
    Ok(MergeSummary { out: out.to_path_buf(), lora_r: adapter.config.r, lora_alpha: adapter.config.alpha, gguf: gguf_path, gguf_bytes })
}

async fn handle(d: Delivery, store: ArtifactStore, publisher: Publisher, work: PathBuf, gguf: Option<GgufDType>) -> Result<(), HandlerError> {
    let env = d.envelope().map_err(|e| HandlerError::permanent(format!("not an event envelope: {e}")))?;
    let (stage, adapter, base): (Stage, ArtifactRef, ArtifactRef) = if env.is::<SftCompleted>() {
        let e: SftCompleted = env.decode().map_err(|e| HandlerError::permanent(e.to_string()))?;
        if let Some(model) = e.model {
            // A full fine-tune: the trained dir is already the model; nothing to merge.
            return pass_through(&env, &store, &publisher, &work, gguf, model, e.base_model, e.adapter).await;
        }
        (Stage::Sft, e.adapter, e.base_model)
    } else {
        let e: GrpoCompleted = env.decode().map_err(|e| HandlerError::permanent(e.to_string()))?;
        (Stage::Grpo, e.adapter, e.base_model)
    };
    let base_dir = store.fetch(&base).await.map_err(|e| HandlerError::retry(e.to_string()))?;
    let adapter_dir = store.fetch(&adapter).await.map_err(|e| HandlerError::retry(e.to_string()))?;
    let stage_name = if stage == Stage::Sft { "sft" } else { "grpo" };
    let out = work.join(&env.run_id).join(stage_name);
    let _ = std::fs::remove_dir_all(&out);
    let o = out.clone();
    let summary = tokio::task::spawn_blocking(move || merge(&base_dir, &adapter_dir, &o, gguf))
        .await
        .map_err(|e| HandlerError::retry(format!("merge task: {e}")))?
        .map_err(HandlerError::permanent)?;
    // The GGUF file is its own artifact; the model dir artifact holds the HF files only.
    let gguf_ref = match &summary.gguf {
        Some(p) => {
            let r = store.put_file(p, ArtifactKind::Gguf, "model.gguf").await.map_err(|e| HandlerError::retry(e.to_string()))?;
            let _ = std::fs::remove_file(p);
            Some(r)
        }
        None => None,
    };
    let model = store.put_dir(&out, ArtifactKind::Model, &format!("merged-{stage_name}")).await.map_err(|e| HandlerError::retry(e.to_string()))?;
    let merged = ModelMerged { stage, model, base_model: base, adapter, gguf: gguf_ref };
    publisher
        .emit(&env.run_id, Some(&env), &merged, format!("{}:{}:{stage_name}", env.run_id, ModelMerged::TYPE))
        .await
        .map_err(|e| HandlerError::retry(e.to_string()))?;
    let _ = std::fs::remove_dir_all(&out);
    Ok(())
}

/// ModelMerged for a fully fine-tuned model: the same model artifact (plus GGUF if asked).
#[allow(clippy::too_many_arguments)]
async fn pass_through(
    env: &fc_events::Envelope,
    store: &ArtifactStore,
    publisher: &Publisher,
    work: &Path,
    gguf: Option<GgufDType>,
    model: ArtifactRef,
    base: ArtifactRef,
    adapter: ArtifactRef,
) -> Result<(), HandlerError> {
    let gguf_ref = match gguf {
        Some(dt) => {
            let dir = store.fetch(&model).await.map_err(|e| HandlerError::retry(e.to_string()))?;
            let out = work.join(&env.run_id).join("sft-full.gguf");
            if let Some(p) = out.parent() {
                std::fs::create_dir_all(p).map_err(|e| HandlerError::retry(e.to_string()))?;
            }
            let o = out.clone();
            tokio::task::spawn_blocking(move || -> Result<(), String> {
                let m = Model::load(&dir, &Device::Cpu, DType::F32).map_err(|e| e.to_string())?;
                fc_model::export_gguf(&m, &dir, &o, dt).map(|_| ()).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| HandlerError::retry(format!("gguf task: {e}")))?
            .map_err(HandlerError::permanent)?;
            let r = store.put_file(&out, ArtifactKind::Gguf, "model.gguf").await.map_err(|e| HandlerError::retry(e.to_string()))?;
            let _ = std::fs::remove_file(&out);
            Some(r)
        }
        None => None,
    };
    let merged = ModelMerged { stage: Stage::Sft, model, base_model: base, adapter, gguf: gguf_ref };
    publisher
        .emit(&env.run_id, Some(env), &merged, format!("{}:{}:sft", env.run_id, ModelMerged::TYPE))
        .await
        .map_err(|e| HandlerError::retry(e.to_string()))?;
    Ok(())
}

/// Runs the service until `shutdown`.
pub async fn run(config: Config, bus: Bus, shutdown: Shutdown) -> Result<(), ServiceError> {
    let _svc = service::start(NAME, config.common.http_addr, &bus, None, &shutdown).await?;
    let store = ArtifactStore::for_bus(&bus, &config.common.data_dir);
    let publisher = Publisher::new(bus.clone(), NAME);
    let work = config.common.data_dir.join("work").join(NAME);
    let mut workers = Vec::new();
    for c in consumers() {
        let consumer = bus.consumer(c).await?;
        let (s, p, w, sd, g) = (store.clone(), publisher.clone(), work.clone(), shutdown.clone(), config.gguf);
        workers.push(tokio::spawn(async move {
            Worker::new(NAME, &consumer).run(consumer, sd, move |d| handle(d, s.clone(), p.clone(), w.clone(), g)).await
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    Ok(())
}
