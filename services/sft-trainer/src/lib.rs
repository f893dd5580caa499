//! sft-trainer: LoRA supervised fine-tuning driven by DatasetIngested events, with checkpoints and exact resume.
//!
//! A library with [`run`] (used by the `sft-trainer` binary and by `fcmesh run`) and a
//! thin `main.rs`. Configuration: [`Config`], from `FC_*` variables (see `sft-trainer --help`).
//!
//! On DatasetIngested it reads the run's PipelineRequested (base model path, `[sft]`
//! section), stores the base model as a content-addressed artifact, trains ([`train`]),
//! and publishes SftStarted, SftStep every few steps, SftCheckpoint (adapter + optimizer
//! moments + data position, one directory artifact) and SftCompleted. Its state lives in
//! the event log, not in the process: a trainer that is killed has its message redelivered
//! after the ack wait, and whichever trainer gets it resumes from the run's newest
//! SftCheckpoint with the same data order. A run that already has SftCompleted is skipped.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fc_artifacts::{ArtifactKind, ArtifactRef, ArtifactStore};
use fc_bus::{Bus, BusConfig, ConsumerConfig, Delivery};
use fc_events::{
    subjects, DatasetIngested, Envelope, EventPayload, PipelineRequested, SftCheckpoint, SftCompleted, SftStarted, SftStep,
};
use fc_model::device::DeviceSpec;
use fc_runtime::config::{CommonConfig, ConfigError, ConfigSource, VarSpec, FC_DEVICE};
use fc_runtime::history::{first_run_event, last_run_event};
use fc_runtime::{service, HandlerError, Publisher, ServiceError, Shutdown, Worker};

pub mod train;

use train::{Observer, Outcome, RunInfo, SftConfig, StepInfo, TrainOptions, TrainerState};

pub const NAME: &str = "sft-trainer";
pub const ABOUT: &str = "LoRA supervised fine-tuning driven by DatasetIngested events, with checkpoints and exact resume";
/// Fixed per service so all eight can run side by side (`fcmesh run --all`).
pub const DEFAULT_HTTP: &str = "0.0.0.0:9102";

pub const FC_SFT_CHECKPOINT_EVERY: VarSpec = VarSpec {
    name: "FC_SFT_CHECKPOINT_EVERY",
    default: "50",
    help: "optimizer steps between checkpoints (SftCheckpoint events); 0: only on shutdown",
};
pub const FC_SFT_STEP_EVERY: VarSpec =
    VarSpec { name: "FC_SFT_STEP_EVERY", default: "10", help: "publish SftStep every N optimizer steps (and the first, last and validation steps)" };
pub const FC_SFT_ACK_WAIT_SECONDS: VarSpec = VarSpec {
    name: "FC_SFT_ACK_WAIT_SECONDS",
    default: "30",
    help: "how long a crashed trainer's run waits before another trainer resumes it",
};

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    pub checkpoint_every: usize,
    pub step_every: usize,
    pub ack_wait: Duration,
    /// Where the model trains.
    pub device: DeviceSpec,
}

impl Config {
    pub fn vars() -> Vec<VarSpec> {
        let mut v = CommonConfig::vars(DEFAULT_HTTP);
        v.extend([FC_SFT_CHECKPOINT_EVERY, FC_SFT_STEP_EVERY, FC_SFT_ACK_WAIT_SECONDS, FC_DEVICE]);
        v
    }

    pub fn from_source(src: &ConfigSource) -> Result<Self, ConfigError> {
        let mut r = src.reader(NAME);
        let common = CommonConfig::read(&mut r, NAME, DEFAULT_HTTP);
        let checkpoint_every: usize = r.get(&FC_SFT_CHECKPOINT_EVERY);
        let step_every: usize = r.get(&FC_SFT_STEP_EVERY);
        let ack: u64 = r.get(&FC_SFT_ACK_WAIT_SECONDS);
        let device = r.get(&FC_DEVICE);
        if ack == 0 {
            r.problem("FC_SFT_ACK_WAIT_SECONDS must be > 0");
        }
        r.finish()?;
        Ok(Self { common, checkpoint_every, step_every: step_every.max(1), ack_wait: Duration::from_secs(ack.max(1)), device })
    }

    pub fn bus_config(&self) -> BusConfig {
        self.common.bus_config()
    }
}

/// The durable consumers this service reads through (one filter each: nats-server 2.9).
pub fn consumers(ack_wait: Duration) -> Vec<ConsumerConfig> {
    vec![ConsumerConfig::new(subjects::STREAM_RUNS, "sft-trainer", &subjects::run_event_filter(DatasetIngested::TYPE))
        .ack_wait(ack_wait)]
}

/// The recipe a base model gets when the pipeline's `[sft]` section does not say: the
/// seed's LLaMA-Factory defaults, or the from-scratch recipe for a fresh tiny preset.
pub fn default_recipe(model_dir: &Path) -> SftConfig {
    if is_tiny_preset(model_dir) {
        SftConfig::tiny_from_scratch()
    } else {
        SftConfig::default()
    }
}

/// A small model (hidden <= 256, <= 8 layers): the tiny preset, trained from scratch.
pub fn is_tiny_preset(model_dir: &Path) -> bool {
    fc_model::ModelConfig::from_file(&model_dir.join("config.json"))
        .map(|c| c.hidden_size <= 256 && c.num_hidden_layers <= 8)
        .unwrap_or(false)
}

/// `section` (keys of [`SftConfig`]) laid over `base`; unknown keys and bad values are
/// errors that name them.
pub fn overlay_config(base: &SftConfig, section: &serde_json::Value) -> Result<SftConfig, String> {
    let mut v = serde_json::to_value(base).map_err(|e| e.to_string())?;
    match section {
        serde_json::Value::Null => {}
        serde_json::Value::Object(m) => {
            let obj = v.as_object_mut().ok_or("config is not an object")?;
            for (k, x) in m {
                if !obj.contains_key(k) {
                    let mut known: Vec<&String> = obj.keys().collect();
                    known.sort();
                    return Err(format!("unknown [sft] key {k:?}; known keys: {known:?}"));
                }
                obj.insert(k.clone(), x.clone());
            }
        }
        other => return Err(format!("[sft] must be a table, got {other}")),
    }
    serde_json::from_value(v).map_err(|e| format!("[sft]: {e}"))
}

enum Msg {
    Started(RunInfo),
    Step(StepInfo),
    Checkpoint { dir: PathBuf, state: Box<TrainerState>, reply: std::sync::mpsc::SyncSender<Result<(), String>> },
}

/// The training thread's view of the bus: every callback becomes a message to the async
/// side; a checkpoint waits until its event is published (so a crash right after never
/// loses a checkpoint the log does not know about, and vice versa).
struct Relay {
    tx: tokio::sync::mpsc::UnboundedSender<Msg>,
    shutdown: Shutdown,
}

impl Observer for Relay {
    fn started(&mut self, info: &RunInfo) -> train::Result<()> {
        let _ = self.tx.send(Msg::Started(info.clone()));
        Ok(())
    }
    fn step(&mut self, info: &StepInfo) {
        let _ = self.tx.send(Msg::Step(info.clone()));
    }
    fn checkpoint(&mut self, dir: &Path, state: &TrainerState) -> train::Result<()> {
        let (reply, rx) = std::sync::mpsc::sync_channel(1);
        self.tx
            .send(Msg::Checkpoint { dir: dir.to_path_buf(), state: Box::new(state.clone()), reply })
            .map_err(|_| train::SftError::Aborted("service stopped".into()))?;
        match rx.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(train::SftError::Aborted(format!("publishing checkpoint: {e}"))),
            Err(_) => Err(train::SftError::Aborted("service stopped".into())),
        }
    }
    fn should_stop(&self) -> bool {
        self.shutdown.is_triggered()
    }
}

#[derive(Clone)]
struct Ctx {
    bus: Bus,
    store: ArtifactStore,
    publisher: Publisher,
    work: PathBuf,
    config: Config,
    shutdown: Shutdown,
}

fn retry(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::retry(e.to_string())
}

async fn emit<P: EventPayload>(ctx: &Ctx, env: &Envelope, p: &P, id: String) -> Result<(), HandlerError> {
    ctx.publisher.emit(&env.run_id, Some(env), p, id).await.map(|_| ()).map_err(retry)
}

fn sft_step_event(s: &StepInfo) -> SftStep {
    SftStep {
        step: s.step as u64,
        total_steps: s.total_steps as u64,
        epoch: s.epoch,
        loss: s.loss,
        learning_rate: s.learning_rate,
        grad_norm: s.grad_norm,
        tokens_per_second: s.tokens_per_second,
        val_loss: s.val_loss,
    }
}

fn record_step_metrics(s: &StepInfo) {
    metrics::counter!("fc_sft_steps_total").increment(1);
    metrics::gauge!("fc_sft_loss").set(s.loss);
    metrics::gauge!("fc_sft_learning_rate").set(s.learning_rate);
    metrics::gauge!("fc_sft_grad_norm").set(s.grad_norm);
    metrics::gauge!("fc_sft_tokens_per_second").set(s.tokens_per_second);
    metrics::gauge!("fc_sft_progress_ratio").set(s.step as f64 / s.total_steps.max(1) as f64);
    if let Some(v) = s.val_loss {
        metrics::gauge!("fc_sft_val_loss").set(v);
    }
}

async fn handle(d: Delivery, ctx: Ctx) -> Result<(), HandlerError> {
    let env = d.envelope().map_err(|e| HandlerError::permanent(format!("not an event envelope: {e}")))?;
    let ingested: DatasetIngested = env.decode().map_err(|e| HandlerError::permanent(e.to_string()))?;
    let run = env.run_id.clone();
    if last_run_event::<SftCompleted>(&ctx.bus, &run).await.map_err(retry)?.is_some() {
        tracing::info!(%run, "SFT already completed; nothing to do");
        return Ok(());
    }
    let req = first_run_event::<PipelineRequested>(&ctx.bus, &run)
        .await
        .map_err(retry)?
        .ok_or_else(|| HandlerError::permanent(format!("run {run} has no PipelineRequested")))?;
    if !req.stages.is_empty() && !req.stages.iter().any(|s| s == "sft") {
        tracing::info!(%run, "the run's stages exclude sft");
        return Ok(());
    }
    let base_path = PathBuf::from(&req.base_model);
    if !base_path.join("config.json").is_file() {
        return Err(HandlerError::permanent(format!(
            "base_model {:?} is not an HF model dir (no config.json) on this trainer",
            req.base_model
        )));
    }
    let cfg = overlay_config(&default_recipe(&base_path), &req.sft).map_err(HandlerError::permanent)?;
    let base = ctx.store.put_dir(&base_path, ArtifactKind::Model, "base").await.map_err(retry)?;
    let train_file = ctx.store.fetch(&ingested.train).await.map_err(retry)?;
    let val_file = if ingested.val_count > 0 { Some(ctx.store.fetch(&ingested.val).await.map_err(retry)?) } else { None };

    let out = ctx.work.join(&run);
    let resume_from = match last_run_event::<SftCheckpoint>(&ctx.bus, &run).await.map_err(retry)? {
        Some(ck) => Some(ctx.store.fetch(&ck.checkpoint).await.map_err(retry)?),
        None => None,
    };
    let opts = TrainOptions {
        checkpoint_every: ctx.config.checkpoint_every,
        checkpoint_root: Some(out.join("checkpoints")),
        keep_checkpoints: 1,
        resume_from,
    };

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    let relay = Relay { tx, shutdown: ctx.shutdown.clone() };
    {
        let (cfg, base_path, out, val_file) = (cfg.clone(), base_path.clone(), out.clone(), val_file.clone());
        let device = ctx.config.device;
        std::thread::Builder::new()
            .name(format!("sft-{run}"))
            .spawn(move || {
                let mut relay = relay;
                let r = device.open().map_err(train::SftError::from).and_then(|device| {
                    train::train_with(
                        &cfg,
                        &base_path,
                        &train_file,
                        val_file.as_deref(),
                        &out,
                        &opts,
                        &mut relay,
                        &device,
                        fc_model::DType::F32,
                    )
                });
                let _ = done_tx.send(r);
            })
            .map_err(retry)?;
    }

    let config_json = serde_json::to_value(&cfg).map_err(retry)?;
    let step_every = ctx.config.step_every;
    let outcome = loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(Msg::Started(info)) => {
                    let started = SftStarted {
                        base_model: base.clone(),
                        dataset: ingested.train.clone(),
                        total_steps: info.total_steps as u64,
                        train_examples: info.train_examples as u64,
                        config: config_json.clone(),
                        resumed_from_step: info.resumed_from_step.map(|s| s as u64),
                    };
                    let from = info.resumed_from_step.unwrap_or(0);
                    tracing::info!(%run, total = info.total_steps, from, "SFT started");
                    emit(&ctx, &env, &started, format!("{run}:{}:{from}", SftStarted::TYPE)).await?;
                }
                Some(Msg::Step(s)) => {
                    record_step_metrics(&s);
                    if s.step == 1 || s.step == s.total_steps || s.step % step_every == 0 || s.val_loss.is_some() {
                        emit(&ctx, &env, &sft_step_event(&s), format!("{run}:{}:{}", SftStep::TYPE, s.step)).await?;
                    }
                }
                Some(Msg::Checkpoint { dir, state, reply }) => {
                    let r = async {
                        let name = format!("sft-checkpoint-step-{}", state.step);
                        let checkpoint = ctx.store.put_dir(&dir, ArtifactKind::Checkpoint, &name).await.map_err(retry)?;
                        let ev = SftCheckpoint {
                            step: state.step as u64,
                            epoch: state.epoch,
                            checkpoint,
                            data_position: state.data_position.batches_consumed as u64,
                        };
                        emit(&ctx, &env, &ev, format!("{run}:{}:{}", SftCheckpoint::TYPE, state.step)).await
                    }
                    .await;
                    metrics::counter!("fc_sft_checkpoints_total").increment(1);
                    let _ = reply.send(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                    r?;
                }
                None => {}
            },
            r = &mut done_rx => break r.map_err(|_| retry("training thread panicked"))?,
        }
    };
    // Drain what the thread sent just before it finished.
    while let Ok(Msg::Step(s)) = rx.try_recv() {
        record_step_metrics(&s);
    }
    match outcome {
        Ok(Outcome::Completed(report)) => {
            let full = report.finetuning_type == train::FinetuningType::Full;
            let (kind, name) = if full { (ArtifactKind::Model, "sft-model") } else { (ArtifactKind::Adapter, "sft-adapter") };
            let adapter: ArtifactRef = ctx.store.put_dir(&report.adapter, kind, name).await.map_err(retry)?;
            let done = SftCompleted {
                adapter: adapter.clone(),
                base_model: base,
                steps: report.steps as u64,
                train_loss_first: report.train_loss_first,
                train_loss_last: report.train_loss_last,
                val_loss: report.val_loss,
                tokens_per_second: report.tokens_per_second,
                model: full.then(|| adapter.clone()),
            };
            emit(&ctx, &env, &done, format!("{run}:{}", SftCompleted::TYPE)).await?;
            tracing::info!(%run, steps = report.steps, val_loss = ?report.val_loss, "SFT completed");
            let _ = std::fs::remove_dir_all(&out);
            Ok(())
        }
        Ok(Outcome::Stopped { step, .. }) => {
            // Hand the run back: the next trainer resumes from the checkpoint just published.
            Err(HandlerError::Retry { reason: format!("stopped at step {step} for shutdown; checkpoint saved"), delay: Duration::ZERO })
        }
        Err(e @ (train::SftError::Config(_) | train::SftError::Data(_) | train::SftError::Chat(_))) => {
            Err(HandlerError::permanent(e.to_string()))
        }
        Err(e) => Err(retry(e)),
    }
}

/// Runs the service until `shutdown`.
pub async fn run(config: Config, bus: Bus, shutdown: Shutdown) -> Result<(), ServiceError> {
    let _svc = service::start(NAME, config.common.http_addr, &bus, None, &shutdown).await?;
    let ctx = Ctx {
        store: ArtifactStore::for_bus(&bus, &config.common.data_dir),
        publisher: Publisher::new(bus.clone(), NAME),
        work: config.common.data_dir.join("work").join(NAME),
        bus: bus.clone(),
        shutdown: shutdown.clone(),
        config: config.clone(),
    };
    let mut workers = Vec::new();
    for c in consumers(config.ack_wait) {
        let consumer = bus.consumer(c).await?;
        let (ctx, sd) = (ctx.clone(), shutdown.clone());
        workers.push(tokio::spawn(async move {
            Worker::new(NAME, &consumer).run(consumer, sd, move |d| handle(d, ctx.clone())).await
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    Ok(())
}
