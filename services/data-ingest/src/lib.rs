//! data-ingest: validates and splits training data (xLAM, BFCL, OpenAI, ShareGPT) into
//! content-addressed datasets.
//!
//! On PipelineRequested it reads the run's dataset (a local path, or `artifact:<sha256>`),
//! validates every record, writes accepted samples to train/val JSONL (seeded split by id)
//! and every reject to a dead-letter JSONL with its reason and position, stores the three
//! files as artifacts and publishes DatasetIngested with the counts. [`ingest_dataset`] is
//! the same logic without the bus, used by `fcmesh ingest`.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use fc_artifacts::{ArtifactKind, ArtifactStore};
use fc_bus::{Bus, BusConfig, ConsumerConfig, Delivery};
use fc_data::{Format, IngestOptions, IngestReport};
use fc_events::{subjects, DatasetIngested, DatasetSpec, EventPayload, PipelineRequested};
use fc_runtime::config::{CommonConfig, ConfigError, ConfigSource, VarSpec};
use fc_runtime::publish::run_msg_id;
use fc_runtime::{service, HandlerError, Publisher, ServiceError, Shutdown, Worker};

pub const NAME: &str = "data-ingest";
pub const ABOUT: &str =
    "validates and splits training data (xLAM, BFCL, OpenAI, ShareGPT) into content-addressed datasets";
/// Fixed per service so all eight can run side by side (`fcmesh run --all`).
pub const DEFAULT_HTTP: &str = "0.0.0.0:9101";

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
}

impl Config {
    pub fn vars() -> Vec<VarSpec> {
        CommonConfig::vars(DEFAULT_HTTP)
    }

    pub fn from_source(src: &ConfigSource) -> Result<Self, ConfigError> {
        let mut r = src.reader(NAME);
        let common = CommonConfig::read(&mut r, NAME, DEFAULT_HTTP);
        r.finish()?;
        Ok(Self { common })
    }

    pub fn bus_config(&self) -> BusConfig {
        self.common.bus_config()
    }
}

/// The durable consumers this service reads through (one filter each: nats-server 2.9).
pub fn consumers() -> Vec<ConsumerConfig> {
    vec![ConsumerConfig::new(subjects::STREAM_RUNS, "data-ingest", &subjects::run_event_filter(PipelineRequested::TYPE))
        .ack_wait(Duration::from_secs(120))]
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("dataset format: {0}")]
    Format(String),
    #[error(transparent)]
    Data(#[from] fc_data::DataError),
    #[error(transparent)]
    Artifact(#[from] fc_artifacts::ArtifactError),
    #[error("{0}")]
    Io(String),
}

impl IngestError {
    /// Bad input never gets better by retrying; storage trouble may.
    fn into_handler_error(self) -> HandlerError {
        match self {
            IngestError::Artifact(e) => HandlerError::retry(e.to_string()),
            other => HandlerError::permanent(other.to_string()),
        }
    }
}

/// The JSON `fcmesh ingest` prints.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IngestSummary {
    pub read: u64,
    pub accepted: u64,
    pub rejected: std::collections::BTreeMap<String, u64>,
    pub train: u64,
    pub val: u64,
    pub train_file: PathBuf,
    pub val_file: PathBuf,
    pub rejects_file: PathBuf,
    pub seconds: f64,
}

/// Ingests `input` into `out_dir` (train.jsonl, val.jsonl, rejects.jsonl).
pub fn ingest_dataset(
    input: &Path,
    format: &str,
    answers: Option<&Path>,
    out_dir: &Path,
    val_fraction: f64,
    seed: u64,
    progress: Option<&mut dyn FnMut(fc_data::IngestProgress)>,
) -> Result<IngestSummary, IngestError> {
    let format = Format::from_str(format).map_err(IngestError::Format)?;
    let opts = IngestOptions { val_fraction, seed, ..IngestOptions::default() };
    let started = std::time::Instant::now();
    let (report, paths) = fc_data::ingest_file(input, format, answers, out_dir, &opts, progress)?;
    Ok(summary(&report, paths, started.elapsed().as_secs_f64()))
}

fn summary(r: &IngestReport, paths: fc_data::IngestPaths, seconds: f64) -> IngestSummary {
    IngestSummary {
        read: r.read,
        accepted: r.accepted,
        rejected: r.rejected.iter().map(|(k, v)| (k.code().to_string(), *v)).collect(),
        train: r.train,
        val: r.val,
        train_file: paths.train,
        val_file: paths.val,
        rejects_file: paths.rejects,
        seconds,
    }
}

/// Ingests a run's dataset and stores the outputs as artifacts.
pub async fn ingest_to_artifacts(
    spec: &DatasetSpec,
    store: &ArtifactStore,
    work_dir: &Path,
) -> Result<DatasetIngested, IngestError> {
    let input = match spec.source.strip_prefix("artifact:") {
        Some(sha) => store.fetch_hash(sha).await?,
        None => PathBuf::from(&spec.source),
    };
    if !input.is_file() {
        return Err(IngestError::Io(format!("dataset source {} is not a readable file", input.display())));
    }
    let answers = spec.answers.as_ref().map(PathBuf::from);
    let (format, frac, seed, out) = (spec.format.clone(), spec.val_fraction, spec.split_seed, work_dir.to_path_buf());
    let s = tokio::task::spawn_blocking(move || {
        ingest_dataset(&input, &format, answers.as_deref(), &out, frac, seed, None)
    })
    .await
    .map_err(|e| IngestError::Io(format!("ingest task: {e}")))??;
    let train = store.put_file(&s.train_file, ArtifactKind::Dataset, "train.jsonl").await?;
    let val = store.put_file(&s.val_file, ArtifactKind::Dataset, "val.jsonl").await?;
    let rejects = store.put_file(&s.rejects_file, ArtifactKind::DeadLetters, "rejects.jsonl").await?;
    Ok(DatasetIngested {
        train,
        val,
        dead_letters: Some(rejects),
        format: spec.format.clone(),
        read: s.read,
        accepted: s.accepted,
        rejected: s.rejected,
        train_count: s.train,
        val_count: s.val,
    })
}

/// True when the run asked for this stage (an empty list means every stage).
pub fn wants_stage(req: &PipelineRequested, stage: &str) -> bool {
    req.stages.is_empty() || req.stages.iter().any(|s| s == stage)
}

async fn handle(d: Delivery, store: ArtifactStore, publisher: Publisher, data_dir: PathBuf) -> Result<(), HandlerError> {
    let env = d.envelope().map_err(|e| HandlerError::permanent(format!("not an event envelope: {e}")))?;
    let req: PipelineRequested = env.decode().map_err(|e| HandlerError::permanent(e.to_string()))?;
    if !wants_stage(&req, "ingest") {
        tracing::info!(run = %env.run_id, "run skips ingest");
        return Ok(());
    }
    let work = data_dir.join("work").join(NAME).join(&env.run_id);
    let started = std::time::Instant::now();
    let ingested = ingest_to_artifacts(&req.dataset, &store, &work).await.map_err(IngestError::into_handler_error)?;
    let _ = std::fs::remove_dir_all(&work);
    metrics::counter!("fc_ingest_records_total", "outcome" => "accepted").increment(ingested.accepted);
    metrics::counter!("fc_ingest_records_total", "outcome" => "rejected").increment(ingested.read - ingested.accepted);
    metrics::histogram!("fc_ingest_duration_seconds").record(started.elapsed().as_secs_f64());
    tracing::info!(run = %env.run_id, read = ingested.read, accepted = ingested.accepted, train = ingested.train_count,
        val = ingested.val_count, "dataset ingested");
    publisher
        .emit(&env.run_id, Some(&env), &ingested, run_msg_id::<DatasetIngested>(&env.run_id, 0))
        .await
        .map_err(|e| HandlerError::retry(e.to_string()))?;
    Ok(())
}

/// Runs the service until `shutdown`.
pub async fn run(config: Config, bus: Bus, shutdown: Shutdown) -> Result<(), ServiceError> {
    let _svc = service::start(NAME, config.common.http_addr, &bus, None, &shutdown).await?;
    let store = ArtifactStore::for_bus(&bus, &config.common.data_dir);
    let publisher = Publisher::new(bus.clone(), NAME);
    let mut workers = Vec::new();
    for c in consumers() {
        let consumer = bus.consumer(c).await?;
        let (store, publisher, sd) = (store.clone(), publisher.clone(), shutdown.clone());
        let data_dir = config.common.data_dir.clone();
        workers.push(tokio::spawn(async move {
            Worker::new(NAME, &consumer)
                .run(consumer, sd, move |d| handle(d, store.clone(), publisher.clone(), data_dir.clone()))
                .await
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    Ok(())
}
