//! Data commands: `fcmesh gen-data`, `fcmesh ingest`, `fcmesh init-model`, `fcmesh replay rescore`.

use std::path::Path;
use std::str::FromStr;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use fc_bus::{Bus, DeliverPolicy};
use fc_chat::ChatTemplate;
use fc_events::{subjects, RolloutGenerated};
use fc_rewards::Scorer;
use fc_runtime::Publisher;
use futures::StreamExt;
use serde::Serialize;

/// Writes `n` generated xLAM records (or the held-out tool split) to `out` (`-`: stdout).
pub fn gen_data(n: usize, seed: u64, heldout: bool, out: &Path) -> anyhow::Result<()> {
    let records = if heldout { fc_data::generate_heldout(n, seed) } else { fc_data::generate(n, seed) };
    if out == Path::new("-") {
        let stdout = std::io::stdout();
        fc_data::write_xlam_json(&records, std::io::BufWriter::new(stdout.lock()))?;
        return Ok(());
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let f = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    fc_data::write_xlam_json(&records, std::io::BufWriter::new(f))?;
    eprintln!("fcmesh gen-data: wrote {} records to {}", records.len(), out.display());
    Ok(())
}

/// `fcmesh init-model --preset tiny`: a random Qwen3 with a BPE tokenizer trained on the
/// rendered conversations of `data` (any supported format).
pub fn init_model(preset: &str, data: &Path, format: &str, out: &Path, seed: u64) -> anyhow::Result<serde_json::Value> {
    if preset != "tiny" {
        bail!("unknown preset {preset:?}; presets: tiny");
    }
    let format = fc_data::Format::from_str(format).map_err(anyhow::Error::msg)?;
    let f = std::fs::File::open(data).with_context(|| format!("opening {}", data.display()))?;
    let template = ChatTemplate::new(fc_model::tiny::QWEN3_CHAT_TEMPLATE)?;
    let mut texts = Vec::new();
    let mut skipped = 0u64;
    for item in fc_data::load(f, format, None) {
        let loaded = item?;
        match loaded.result {
            Ok(sample) => texts.push(template.render(&fc_chat::sample::training_request(&sample))?),
            Err(_) => skipped += 1,
        }
    }
    if texts.is_empty() {
        bail!("{} has no valid records to train the tokenizer on ({skipped} rejected)", data.display());
    }
    let model = fc_model::init_tiny(&texts, seed, out)?;
    let cfg = &model.config;
    Ok(serde_json::json!({
        "out": out,
        "preset": preset,
        "seed": seed,
        "texts": texts.len(),
        "rejected_records": skipped,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "layers": cfg.num_hidden_layers,
    }))
}

/// Where a replay starts or stops: a stream sequence or a time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Position {
    Seq(u64),
    Time(DateTime<Utc>),
}

impl FromStr for Position {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(n) = s.parse::<u64>() {
            return Ok(Position::Seq(n));
        }
        DateTime::parse_from_rfc3339(s)
            .map(|t| Position::Time(t.with_timezone(&Utc)))
            .map_err(|_| format!("{s:?} is neither a stream sequence nor an RFC 3339 time"))
    }
}

#[derive(Debug, Default, Serialize)]
pub struct RescoreSummary {
    pub reward_version: String,
    pub rollouts: u64,
    pub completions: u64,
    pub published: u64,
    pub duplicates: u64,
    pub skipped: u64,
    pub mean_total: f64,
    pub first_sequence: Option<u64>,
    pub last_sequence: Option<u64>,
}

/// Re-scores rollouts from FC_ROLLOUTS with a new reward config; the new version's scores
/// sit beside the old ones under `fc.reward.<run>.<new version>`.
pub async fn replay_rescore(
    bus: &Bus,
    store: &fc_artifacts::ArtifactStore,
    scorer: &Scorer,
    from: Position,
    to: Option<Position>,
    run: Option<&str>,
) -> anyhow::Result<RescoreSummary> {
    let filter = match run {
        Some(r) => subjects::rollout(r),
        None => "fc.rollout.>".to_string(),
    };
    let start = match from {
        Position::Seq(n) => DeliverPolicy::FromSequence(n),
        Position::Time(t) => DeliverPolicy::FromTime(t),
    };
    let publisher = Publisher::new(bus.clone(), "fcmesh-replay");
    let datasets = reward_scorer::DatasetCache::default();
    let mut s = bus.replay(subjects::STREAM_ROLLOUTS, &filter, start).await?;
    let mut sum = RescoreSummary { reward_version: scorer.version().to_string(), ..Default::default() };
    let mut total = 0.0;
    while let Some(d) = s.next().await {
        let d = d?;
        let past_end = match to {
            Some(Position::Seq(n)) => d.stream_sequence > n,
            Some(Position::Time(t)) => d.published > t,
            None => false,
        };
        if past_end {
            break;
        }
        let decoded = d.envelope().ok().and_then(|env| env.decode::<RolloutGenerated>().ok().map(|r| (env, r)));
        let Some((env, rollout)) = decoded else {
            sum.skipped += 1;
            continue;
        };
        let samples = datasets.get(store, &rollout.dataset).await.map_err(anyhow::Error::msg)?;
        let Some(sample) = samples.get(rollout.sample_index as usize) else {
            sum.skipped += 1;
            continue;
        };
        let scored = reward_scorer::score_rollout(scorer, sample, &rollout, &env);
        sum.first_sequence.get_or_insert(d.stream_sequence);
        sum.last_sequence = Some(d.stream_sequence);
        sum.rollouts += 1;
        sum.completions += scored.scores.len() as u64;
        total += scored.scores.iter().map(|s| s.total).sum::<f64>();
        let (_, ack) = publisher.emit(&env.run_id, Some(&env), &scored, reward_scorer::score_msg_id(&env, scorer.version())).await?;
        if ack.duplicate {
            sum.duplicates += 1;
        } else {
            sum.published += 1;
        }
    }
    if sum.completions > 0 {
        sum.mean_total = total / sum.completions as f64;
    }
    Ok(sum)
}
