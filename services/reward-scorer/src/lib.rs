//! reward-scorer: scores rollouts on CPU (parse, schema, mock execution, semantic match) and
//! publishes RewardScored.
//!
//! Each reward config version has its own durable consumer (`reward-scorer-<version>`) on
//! FC_ROLLOUTS, so scorers of different versions read the same rollouts independently and
//! several instances of one version split the work. Scores go to
//! `fc.reward.<run>.<version>` with message id `<rollout event id>:<version>`: a redelivered
//! rollout or a replay never yields a second score. [`score_rollout`] is shared with
//! `fcmesh replay rescore`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fc_artifacts::{ArtifactRef, ArtifactStore};
use fc_bus::{Bus, BusConfig, ConsumerConfig, Delivery};
use fc_data::Sample;
use fc_events::{subjects, CompletionScore, Envelope, RewardScored, RolloutGenerated};
use fc_rewards::{RewardConfig, Scorer};
use fc_runtime::config::{CommonConfig, ConfigError, ConfigSource, VarSpec};
use fc_runtime::{service, HandlerError, Publisher, ServiceError, Shutdown, Worker};

pub const NAME: &str = "reward-scorer";
pub const ABOUT: &str =
    "scores rollouts on CPU (parse, schema, mock execution, semantic match) and publishes RewardScored";
/// Fixed per service so all eight can run side by side (`fcmesh run --all`).
pub const DEFAULT_HTTP: &str = "0.0.0.0:9105";

pub const FC_REWARD_CONFIG: VarSpec = VarSpec {
    name: "FC_REWARD_CONFIG",
    default: "",
    help: "reward config TOML (weights, semantic_mode, ...); unset: 0.25 each, partial semantic credit",
};
pub const FC_REWARD_WORKERS: VarSpec =
    VarSpec { name: "FC_REWARD_WORKERS", default: "2", help: "concurrent scoring workers in this process" };

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    pub reward: RewardConfig,
    pub workers: usize,
}

impl Config {
    pub fn vars() -> Vec<VarSpec> {
        let mut v = CommonConfig::vars(DEFAULT_HTTP);
        v.extend([FC_REWARD_CONFIG, FC_REWARD_WORKERS]);
        v
    }

    pub fn from_source(src: &ConfigSource) -> Result<Self, ConfigError> {
        let mut r = src.reader(NAME);
        let common = CommonConfig::read(&mut r, NAME, DEFAULT_HTTP);
        let workers: usize = r.get(&FC_REWARD_WORKERS);
        if workers == 0 {
            r.problem("FC_REWARD_WORKERS must be at least 1");
        }
        let path: Option<String> = r.opt(&FC_REWARD_CONFIG);
        let reward = match path {
            None => RewardConfig::default(),
            Some(p) => match load_reward_config(std::path::Path::new(&p)) {
                Ok(c) => c,
                Err(e) => {
                    r.problem(format!("FC_REWARD_CONFIG={p}: {e}"));
                    RewardConfig::default()
                }
            },
        };
        r.finish()?;
        Ok(Self { common, reward, workers })
    }

    pub fn bus_config(&self) -> BusConfig {
        self.common.bus_config()
    }
}

/// Reads and checks a reward config TOML file.
pub fn load_reward_config(path: &std::path::Path) -> Result<RewardConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let cfg = RewardConfig::from_toml_str(&text).map_err(|e| e.to_string())?;
    cfg.check().map_err(|e| e.to_string())?;
    Ok(cfg)
}

/// The durable consumer of one reward version.
pub fn consumer_for(version: &str) -> ConsumerConfig {
    ConsumerConfig::new(subjects::STREAM_ROLLOUTS, &format!("{NAME}-{version}"), "fc.rollout.>")
        .ack_wait(Duration::from_secs(60))
}

/// Datasets by artifact hash, parsed once. Rollouts of one run all point at one dataset.
#[derive(Clone, Default)]
pub struct DatasetCache {
    inner: Arc<Mutex<HashMap<String, Arc<Vec<Sample>>>>>,
}

impl DatasetCache {
    /// The samples of a dataset artifact (fetched and hash-verified on first use).
    pub async fn get(&self, store: &ArtifactStore, r: &ArtifactRef) -> Result<Arc<Vec<Sample>>, String> {
        if let Some(s) = self.inner.lock().ok().and_then(|m| m.get(&r.sha256).cloned()) {
            return Ok(s);
        }
        let path = store.fetch(r).await.map_err(|e| e.to_string())?;
        let samples = tokio::task::spawn_blocking(move || fc_data::read_samples(&path))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let samples = Arc::new(samples);
        if let Ok(mut m) = self.inner.lock() {
            // A few datasets at most are live at once; drop all when that grows.
            if m.len() >= 8 {
                m.clear();
            }
            m.insert(r.sha256.clone(), samples.clone());
        }
        Ok(samples)
    }
}

/// Scores every completion of a rollout group against its sample.
pub fn score_rollout(scorer: &Scorer, sample: &Sample, rollout: &RolloutGenerated, rollout_event: &Envelope) -> RewardScored {
    let prepared = scorer.prepare(sample);
    let scores = rollout
        .completions
        .iter()
        .map(|c| {
            let s = scorer.score_prepared(&prepared, &c.text);
            CompletionScore {
                index: c.index,
                total: s.total,
                components: BTreeMap::from([
                    ("exec".to_string(), s.components.exec),
                    ("parse".to_string(), s.components.parse),
                    ("schema".to_string(), s.components.schema),
                    ("semantic".to_string(), s.components.semantic),
                ]),
            }
        })
        .collect();
    RewardScored {
        rollout_event_id: rollout_event.id,
        prompt_id: rollout.prompt_id.clone(),
        group_id: rollout.group_id.clone(),
        policy_version: rollout.policy_version,
        reward_version: scorer.version().to_string(),
        scores,
    }
}

/// Message id of a score: one per (rollout, reward version).
pub fn score_msg_id(rollout_event: &Envelope, version: &str) -> String {
    format!("{}:{version}", rollout_event.id)
}

/// Decodes, scores and publishes one rollout delivery.
pub async fn handle(
    d: Delivery,
    scorer: Arc<Scorer>,
    store: ArtifactStore,
    datasets: DatasetCache,
    publisher: Publisher,
) -> Result<(), HandlerError> {
    let env = d.envelope().map_err(|e| HandlerError::permanent(format!("not an event envelope: {e}")))?;
    let rollout: RolloutGenerated = env.decode().map_err(|e| HandlerError::permanent(e.to_string()))?;
    let samples = datasets
        .get(&store, &rollout.dataset)
        .await
        .map_err(|e| HandlerError::retry(format!("dataset {}: {e}", rollout.dataset.sha256)))?;
    let sample = samples.get(rollout.sample_index as usize).ok_or_else(|| {
        HandlerError::permanent(format!("sample_index {} out of range ({} samples)", rollout.sample_index, samples.len()))
    })?;
    let started = std::time::Instant::now();
    let scored = {
        let (scorer, sample, env2, rollout) = (scorer.clone(), sample.clone(), env.clone(), rollout.clone());
        tokio::task::spawn_blocking(move || score_rollout(&scorer, &sample, &rollout, &env2))
            .await
            .map_err(|e| HandlerError::retry(format!("scoring task: {e}")))?
    };
    let elapsed = started.elapsed().as_secs_f64();
    metrics::histogram!("fc_reward_score_duration_seconds").record(elapsed);
    metrics::counter!("fc_reward_completions_scored_total", "version" => scored.reward_version.clone())
        .increment(scored.scores.len() as u64);
    for s in &scored.scores {
        metrics::histogram!("fc_reward_total_ratio", "version" => scored.reward_version.clone()).record(s.total);
    }
    let msg_id = score_msg_id(&env, &scored.reward_version);
    publisher.emit(&env.run_id, Some(&env), &scored, msg_id).await.map_err(|e| HandlerError::retry(e.to_string()))?;
    Ok(())
}

/// Runs the service until `shutdown`.
pub async fn run(config: Config, bus: Bus, shutdown: Shutdown) -> Result<(), ServiceError> {
    let _svc = service::start(NAME, config.common.http_addr, &bus, None, &shutdown).await?;
    let scorer = Arc::new(Scorer::new(config.reward.clone()).map_err(|e| ServiceError::Other(e.to_string()))?);
    let version = scorer.version().to_string();
    tracing::info!(%version, "reward config loaded");
    let store = ArtifactStore::for_bus(&bus, &config.common.data_dir);
    let datasets = DatasetCache::default();
    let publisher = Publisher::new(bus.clone(), NAME);
    let mut workers = Vec::new();
    for i in 0..config.workers {
        let consumer = bus.consumer(consumer_for(&version)).await?;
        let (scorer, store, datasets, publisher, sd) =
            (scorer.clone(), store.clone(), datasets.clone(), publisher.clone(), shutdown.clone());
        workers.push(tokio::spawn(async move {
            Worker::new(&format!("{NAME}-{i}"), &consumer)
                .batch(4)
                .run(consumer, sd, move |d| handle(d, scorer.clone(), store.clone(), datasets.clone(), publisher.clone()))
                .await
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    Ok(())
}
