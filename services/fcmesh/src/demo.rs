//! `fcmesh demo` (what `make demo` runs): the whole pipeline in one process on the embedded
//! bus. Generated data and a fresh tiny model, then one PipelineRequested; every stage is a
//! service reacting to the previous stage's event (ingest -> SFT -> merge -> eval ->
//! promote). The demo only watches the event log and prints a metrics table: the untrained
//! base model beside the SFT model, on the validation split and on held-out tools.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use fc_bus::{Bus, BusConfig, DeliverPolicy};
use fc_events::{subjects, DatasetIngested, EvalCompleted, EventPayload, ModelMerged, ModelPromoted, SftCompleted, SftStep};
use fc_runtime::{Publisher, Shutdown};
use futures::StreamExt;

use crate::{eval_cmd, off_runtime, pipeline, run_services, status, ALL_SERVICES};

/// Fails the wait when the run has a dead-lettered message (a stage gave up on it).
async fn dead_letter_of(bus: &Bus, run: &str) -> anyhow::Result<Option<String>> {
    let mut dlq = bus.replay(subjects::STREAM_DLQ, "fc.dlq.>", DeliverPolicy::All).await?;
    while let Some(d) = dlq.next().await {
        if let Ok(env) = d?.envelope() {
            if env.run_id == run {
                if let Ok(dl) = env.decode::<fc_events::DeadLettered>() {
                    return Ok(Some(format!("{} ({})", dl.reason, dl.consumer)));
                }
            }
        }
    }
    Ok(None)
}

/// The first event of type `P` in `run`, waiting up to `timeout`; `progress` is called on
/// every poll (the demo prints SFT steps while it waits).
pub async fn wait_for_event<P: EventPayload>(
    bus: &Bus,
    run: &str,
    timeout: Duration,
    mut progress: impl FnMut(&Bus) -> futures::future::BoxFuture<'static, ()>,
) -> anyhow::Result<P> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(p) = fc_runtime::history::first_run_event::<P>(bus, run).await? {
            return Ok(p);
        }
        if let Some(reason) = dead_letter_of(bus, run).await? {
            bail!("run {run} failed: {reason}");
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("no {} for run {run} within {timeout:?}", P::TYPE);
        }
        progress(bus).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn no_progress(_: &Bus) -> futures::future::BoxFuture<'static, ()> {
    Box::pin(async {})
}

fn metric(v: &serde_json::Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(0.0)
}

/// Scores `model` on `data` with the evaluator's code path (for the rows the pipeline's
/// evaluator does not produce: the untrained base, and held-out tools).
#[allow(clippy::too_many_arguments)]
async fn eval_row(model: PathBuf, data: PathBuf, format: &str, split: Option<&str>, out: PathBuf, name: &str, max_samples: usize, max_tokens: usize) -> anyhow::Result<serde_json::Value> {
    let args = eval_cmd::EvalArgs {
        model: Some(model),
        data,
        format: format.into(),
        answers: None,
        predictions: None,
        out,
        split: split.map(str::to_string),
        max_samples: Some(max_samples),
        max_tokens,
        name: name.into(),
    };
    off_runtime(move || eval_cmd::eval(&args)).await
}

/// Runs the demo with the pipeline file `config` (its dataset source and base model are
/// replaced by the demo's generated data and fresh tiny model).
pub async fn demo(config: &Path) -> anyhow::Result<()> {
    if std::env::var("FC_NATS_URL").map(|v| !v.is_empty()).unwrap_or(false) {
        eprintln!("fcmesh demo: ignoring FC_NATS_URL; the demo runs on the embedded bus");
    }
    let (run_id, mut req) = pipeline::load(config)?;
    let data_dir = PathBuf::from(std::env::var("FC_DATA_DIR").unwrap_or_else(|_| ".fcmesh".into()));
    let demo_dir = data_dir.join("demo");
    let train_file = demo_dir.join("train.json");
    let heldout_file = demo_dir.join("heldout.json");
    let model_dir = demo_dir.join("models/tiny");
    eprintln!("fcmesh demo: [1/6] generating data in {}", demo_dir.display());
    crate::data_cmds::gen_data(2000, 0, false, &train_file)?;
    crate::data_cmds::gen_data(200, 1, true, &heldout_file)?;
    eprintln!("fcmesh demo: [2/6] initialising the tiny model");
    let (tf, md) = (train_file.clone(), model_dir.clone());
    off_runtime(move || crate::data_cmds::init_model("tiny", &tf, "xlam", &md, 0)).await?;

    eprintln!("fcmesh demo: [3/6] starting the eight services on the embedded bus");
    let bus = Bus::connect(&BusConfig { nats_url: None, data_dir: data_dir.clone() }).await?;
    let shutdown = Shutdown::on_signals();
    let runner = tokio::spawn(run_services(ALL_SERVICES, bus.clone(), None, shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    if runner.is_finished() {
        match runner.await {
            Ok(Err(e)) => return Err(e.context("starting the services (is another fcmesh using the ports?)")),
            _ => bail!("services stopped during start-up"),
        }
    }
    req.dataset.source = train_file.display().to_string();
    req.base_model = model_dir.display().to_string();
    let eval_settings: evaluator::EvalSettings = serde_json::from_value(req.eval.clone()).unwrap_or_default();
    pipeline::start(&Publisher::new(bus.clone(), "fcmesh-demo"), &run_id, &req).await?;
    eprintln!("fcmesh demo: [4/6] run {run_id}: PipelineRequested published; the services take it from here");
    let result = watch(&bus, &run_id, &demo_dir, &model_dir, &heldout_file, &eval_settings).await;
    shutdown.trigger();
    let _ = runner.await;
    result
}

async fn watch(
    bus: &Bus,
    run_id: &str,
    demo_dir: &Path,
    model_dir: &Path,
    heldout_file: &Path,
    settings: &evaluator::EvalSettings,
) -> anyhow::Result<()> {
    let ingested = wait_for_event::<DatasetIngested>(bus, run_id, Duration::from_secs(120), no_progress).await?;
    eprintln!("fcmesh demo: data-ingest: {} accepted ({} train, {} val), {} rejected", ingested.accepted, ingested.train_count, ingested.val_count, ingested.read - ingested.accepted);

    eprintln!("fcmesh demo: [5/6] sft-trainer -> merger -> evaluator -> promoter");
    let last_step = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let run = run_id.to_string();
    let sft = wait_for_event::<SftCompleted>(bus, run_id, Duration::from_secs(3600), |b| {
        let (b, run, last) = (b.clone(), run.clone(), last_step.clone());
        Box::pin(async move {
            if let Ok(Some(s)) = fc_runtime::history::last_run_event::<SftStep>(&b, &run).await {
                if last.swap(s.step, std::sync::atomic::Ordering::Relaxed) != s.step {
                    let val = s.val_loss.map(|v| format!(" val_loss {v:.3}")).unwrap_or_default();
                    eprintln!(
                        "fcmesh demo:   sft step {}/{} loss {:.3}{val} lr {:.2e} {:.0} tok/s",
                        s.step, s.total_steps, s.loss, s.learning_rate, s.tokens_per_second
                    );
                }
            }
        })
    })
    .await?;
    eprintln!(
        "fcmesh demo: SFT done: {} steps, train loss {:.3} -> {:.3}, val loss {}",
        sft.steps,
        sft.train_loss_first,
        sft.train_loss_last,
        sft.val_loss.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into())
    );
    let merged = wait_for_event::<ModelMerged>(bus, run_id, Duration::from_secs(600), no_progress).await?;
    let eval = wait_for_event::<EvalCompleted>(bus, run_id, Duration::from_secs(1800), no_progress).await?;
    let promoted = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(Some(p)) = fc_runtime::history::first_run_event::<ModelPromoted>(bus, run_id).await {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await
    .ok();
    status::print_timeline(bus, run_id, false).await?;

    eprintln!("fcmesh demo: [6/6] scoring the untrained base model and held-out tools for comparison");
    let store = fc_artifacts::ArtifactStore::local(&data_dir_of(demo_dir));
    let val = store.fetch(&ingested.val).await?;
    let merged_dir = store.fetch(&merged.model).await?;
    let (n, t) = (settings.max_samples, settings.max_tokens);
    let eval_dir = demo_dir.join("eval");
    let base_val = eval_row(model_dir.into(), val, "processed", None, eval_dir.join("base-val"), "base/val", n, t).await?;
    let base_held =
        eval_row(model_dir.into(), heldout_file.into(), "xlam", Some("heldout"), eval_dir.join("base-heldout"), "base/heldout", n, t).await?;
    let sft_held =
        eval_row(merged_dir, heldout_file.into(), "xlam", Some("heldout"), eval_dir.join("sft-heldout"), "sft/heldout", n, t).await?;
    let m = &eval.metrics;
    let sft_val = serde_json::json!({
        "count": m.count, "parse_rate": m.parse_rate, "schema_hit": m.schema_hit, "func_accuracy": m.func_accuracy,
        "exec_rate": m.exec_rate, "args_match": m.args_match.unwrap_or(0.0), "args_exact": m.args_exact.unwrap_or(0.0),
    });

    println!();
    println!(
        "{:<14} {:>6} {:>11} {:>11} {:>14} {:>10} {:>11} {:>11}",
        "model/split", "count", "parse_rate", "schema_hit", "func_accuracy", "exec_rate", "args_match", "args_exact"
    );
    for (name, v) in [("base/val", &base_val), ("sft/val", &sft_val), ("base/heldout", &base_held), ("sft/heldout", &sft_held)] {
        println!(
            "{:<14} {:>6} {:>11.3} {:>11.3} {:>14.3} {:>10.3} {:>11.3} {:>11.3}",
            name,
            v["count"],
            metric(v, "parse_rate"),
            metric(v, "schema_hit"),
            metric(v, "func_accuracy"),
            metric(v, "exec_rate"),
            metric(v, "args_match"),
            metric(v, "args_exact")
        );
    }
    println!("(seed targets: parse 0.95, schema 0.88, func 0.90, exec 0.80; sft/val is the evaluator service's EvalCompleted)");
    println!(
        "SFT: {} steps, train loss {:.3} -> {:.3}, {:.0} tokens/s; promoted: {}",
        sft.steps,
        sft.train_loss_first,
        sft.train_loss_last,
        sft.tokens_per_second,
        match promoted {
            Some(p) => format!("yes ({:?}, model sha256:{})", p.stage, &p.model.sha256[..12]),
            None => "no (below the [promote] thresholds)".into(),
        }
    );
    println!();
    println!("{:<20} {:<10} note", "stage", "state");
    for (stage, state, note) in [
        ("ingest", "done", "data-ingest: DatasetIngested with train/val/rejects artifacts"),
        ("sft", "done", "sft-trainer: full fine-tune of the tiny preset (LoRA for real bases), checkpoints, SftStep/SftCheckpoint/SftCompleted"),
        ("merge", "done", "merger: ModelMerged (a full fine-tune passes through; adapters are merged)"),
        ("eval + promote", "done", "evaluator: EvalCompleted; promoter: ModelPromoted when thresholds pass"),
        ("grpo", "pending", "rollout-generator and grpo-learner: GRPO issue (reward-scorer is live)"),
        ("serve", "pending", "the gateway chat API: gateway issue"),
    ] {
        println!("{stage:<20} {state:<10} {note}");
    }
    Ok(())
}

/// `demo_dir` is `<FC_DATA_DIR>/demo`.
fn data_dir_of(demo_dir: &Path) -> PathBuf {
    demo_dir.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".fcmesh"))
}
