//! The pipeline's choreography across processes on a real nats-server: `fcmesh pipeline
//! start` publishes PipelineRequested and the data-ingest, sft-trainer, merger and
//! evaluator binaries (each with its own data dir: artifacts travel through the JetStream
//! object store) take it from there to ModelPromoted. Midway the trainer is killed with
//! SIGKILL; a fresh trainer process resumes from the newest SftCheckpoint and its adapter
//! equals an uninterrupted in-process run's.
//!
//! The binaries must be built first (`cargo build --workspace --bins`; `make test` does).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fc_artifacts::ArtifactStore;
use fc_bus::{Bus, BusConfig};
use fc_events::{
    DatasetIngested, EvalCompleted, ModelMerged, ModelPromoted, SftCheckpoint, SftCompleted, SftStarted, SftStep, Stage,
};
use fc_integration_tests::{free_port, workspace_bin, NatsServer};
use fc_runtime::history::{last_run_event, run_events};

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_service(name: &str, nats: &str, data_dir: &Path, extra: &[(&str, &str)]) -> Proc {
    let log = std::fs::File::create(data_dir.with_extension("log")).expect("log file");
    let mut cmd = Command::new(workspace_bin(name));
    cmd.env("FC_NATS_URL", nats)
        .env("FC_DATA_DIR", data_dir)
        .env("FC_HTTP_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    Proc(cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}")))
}

fn tiny_model(dir: &Path, input: &Path) {
    let out = Command::new(workspace_bin("fcmesh"))
        .args(["init-model", "--preset", "tiny", "--data"])
        .arg(input)
        .arg("--out")
        .arg(dir)
        .output()
        .expect("fcmesh init-model");
    assert!(out.status.success(), "init-model: {}", String::from_utf8_lossy(&out.stderr));
}

async fn wait_until<T>(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn logs(dir: &Path) -> String {
    let mut s = String::new();
    for name in ["ingest", "sft-a", "sft-b", "merger", "evaluator"] {
        let p = dir.join(name).with_extension("log");
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        s.push_str(&format!("--- {name} (last lines)\n{}\n", tail.into_iter().rev().collect::<Vec<_>>().join("\n")));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_runs_across_processes_and_sft_resumes_after_kill_9() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let input = d.join("train.json");
    let out = Command::new(workspace_bin("fcmesh"))
        .args(["gen-data", "--n", "160", "--seed", "4", "--out"])
        .arg(&input)
        .output()
        .expect("gen-data");
    assert!(out.status.success());
    let model_dir = d.join("tiny");
    tiny_model(&model_dir, &input);

    let pipeline = d.join("pipeline.toml");
    std::fs::write(
        &pipeline,
        format!(
            r#"run_id = "run-chor"
base_model = "{}"
[dataset]
source = "{}"
format = "xlam"
val_fraction = 0.1
[sft]
max_steps = 30
batch_size = 4
cutoff_len = 96
lora_r = 8
lora_alpha = 16.0
lora_dropout = 0.1
eval_each_epoch = false
max_val_samples = 8
[eval]
max_samples = 6
max_tokens = 24
[promote]
min_parse_rate = 0.0
min_func_accuracy = 0.0
"#,
            model_dir.display(),
            input.display()
        ),
    )
    .expect("pipeline file");

    let url = nats.url();
    let trainer_env: &[(&str, &str)] =
        &[("FC_SFT_CHECKPOINT_EVERY", "3"), ("FC_SFT_STEP_EVERY", "1"), ("FC_SFT_ACK_WAIT_SECONDS", "3")];
    let _ingest = spawn_service("data-ingest", &url, &d.join("ingest"), &[]);
    let mut trainer_a = spawn_service("sft-trainer", &url, &d.join("sft-a"), trainer_env);
    let _merger = spawn_service("merger", &url, &d.join("merger"), &[]);
    let _evaluator = spawn_service("evaluator", &url, &d.join("evaluator"), &[]);

    let start = Command::new(workspace_bin("fcmesh"))
        .args(["pipeline", "start", "--config"])
        .arg(&pipeline)
        .env("FC_NATS_URL", &url)
        .env("FC_DATA_DIR", d.join("cli"))
        .output()
        .expect("fcmesh pipeline start");
    assert!(start.status.success(), "pipeline start: {}", String::from_utf8_lossy(&start.stderr));
    let run = String::from_utf8_lossy(&start.stdout).trim().to_string();
    assert_eq!(run, "run-chor");

    let bus = Bus::connect(&BusConfig { nats_url: Some(url.clone()), data_dir: d.join("test") }).await.expect("bus");
    let run_s = run.clone();
    // Kill the trainer -9 once it has published a checkpoint and moved past it.
    let ck = wait_until("a checkpoint", Duration::from_secs(120), async || {
        let ck = last_run_event::<SftCheckpoint>(&bus, &run_s).await.ok()??;
        let step = last_run_event::<SftStep>(&bus, &run_s).await.ok()??;
        (step.step > ck.step).then_some(ck)
    })
    .await;
    assert!(
        last_run_event::<SftCompleted>(&bus, &run).await.expect("bus").is_none(),
        "the trainer finished before it could be killed; make the run longer\n{}",
        logs(d)
    );
    Command::new("kill").args(["-9", &trainer_a.0.id().to_string()]).status().expect("kill -9");
    let status = trainer_a.0.wait().expect("wait");
    assert!(!status.success(), "killed");
    let killed_at = last_run_event::<SftStep>(&bus, &run).await.expect("bus").map(|s| s.step).unwrap_or(0);
    eprintln!("killed the trainer at step {killed_at} (checkpoint at {})", ck.step);

    let _trainer_b = spawn_service("sft-trainer", &url, &d.join("sft-b"), trainer_env);
    let promoted = wait_until("ModelPromoted", Duration::from_secs(300), async || {
        last_run_event::<ModelPromoted>(&bus, &run_s).await.ok().flatten()
    })
    .await;

    // The log tells the story: two starts, the second resumed from a checkpoint.
    let starts = run_events::<SftStarted>(&bus, &run).await.expect("bus");
    assert_eq!(starts.len(), 2, "{:?}\n{}", starts.iter().map(|s| &s.1).collect::<Vec<_>>(), logs(d));
    let resumed = starts[1].1.resumed_from_step.expect("the second start resumes");
    assert!(resumed >= ck.step && resumed <= killed_at, "resumed at {resumed}, checkpoint {}, killed at {killed_at}", ck.step);
    assert!(starts[0].1.resumed_from_step.is_none());
    let done = last_run_event::<SftCompleted>(&bus, &run).await.expect("bus").expect("SftCompleted");
    assert_eq!(done.steps, 30);
    // The tiny preset's recipe trains every weight: the "adapter" is the model, merged as is.
    assert_eq!(done.model.as_ref(), Some(&done.adapter));
    let merged = last_run_event::<ModelMerged>(&bus, &run).await.expect("bus").expect("ModelMerged");
    assert_eq!((merged.stage, &merged.adapter), (Stage::Sft, &done.adapter));
    let eval = last_run_event::<EvalCompleted>(&bus, &run).await.expect("bus").expect("EvalCompleted");
    assert_eq!((eval.stage, &eval.model), (Stage::Sft, &merged.model));
    assert_eq!(promoted.model, merged.model);

    // `fcmesh status` shows the timeline from the log.
    let st = Command::new(workspace_bin("fcmesh"))
        .args(["status", &run])
        .env("FC_NATS_URL", &url)
        .env("FC_DATA_DIR", d.join("cli"))
        .output()
        .expect("fcmesh status");
    let text = String::from_utf8_lossy(&st.stdout);
    for e in ["pipeline_requested", "dataset_ingested", "sft_started", "sft_checkpoint", "sft_completed", "model_merged", "eval_completed", "model_promoted"] {
        assert!(text.contains(e), "status lacks {e}:\n{text}");
    }

    // The resumed adapter equals an uninterrupted run on the same data and config.
    let store = ArtifactStore::for_bus(&bus, &d.join("test"));
    let ingested = last_run_event::<DatasetIngested>(&bus, &run).await.expect("bus").expect("ingested");
    let train = store.fetch(&ingested.train).await.expect("train artifact");
    let val = store.fetch(&ingested.val).await.expect("val artifact");
    let adapter_dir = store.fetch(&done.adapter).await.expect("adapter artifact");
    let cfg: sft_trainer::train::SftConfig = serde_json::from_value(starts[0].1.config.clone()).expect("config");
    let (md, refdir) = (model_dir.clone(), d.join("reference"));
    let reference = tokio::task::spawn_blocking(move || {
        sft_trainer::train::train(&cfg, &md, &train, Some(&val), &refdir, &mut |_| {}).expect("reference run")
    })
    .await
    .expect("join");
    let max = fc_model::max_weight_diff(&adapter_dir, &reference.adapter).expect("weights");
    eprintln!("resumed-after-kill weights vs uninterrupted: max abs diff {max:e}");
    assert!(max < 1e-4, "weights differ by {max}");
    assert!((reference.train_loss_last - done.train_loss_last).abs() < 1e-3);
    let _: PathBuf = adapter_dir;
}
