//! Stage services on the embedded bus, in-process: data-ingest turns a PipelineRequested
//! into a DatasetIngested with artifacts; reward-scorer scores RolloutGenerated groups;
//! `replay rescore` adds a second reward version beside the first.

use std::time::Duration;

use fc_artifacts::ArtifactStore;
use fc_bus::{Bus, BusConfig, ConsumerConfig, DeliverPolicy};
use fc_events::{
    subjects, Completion, DatasetIngested, DatasetSpec, FinishReason, PipelineRequested, RewardScored, RolloutGenerated,
};
use fc_runtime::config::ConfigSource;
use fc_runtime::{Publisher, Shutdown};
use futures::StreamExt;

fn source(data_dir: &std::path::Path) -> ConfigSource {
    ConfigSource::from_parts(
        "test",
        [
            ("FC_DATA_DIR".to_string(), data_dir.display().to_string()),
            ("FC_HTTP_ADDR".to_string(), "127.0.0.1:0".to_string()),
        ]
        .into(),
    )
    .expect("config source")
}

async fn wait_for<P: fc_events::EventPayload>(bus: &Bus, stream: &str, filter: &str) -> (fc_events::Envelope, P) {
    let c = bus.consumer(ConsumerConfig::new(stream, &format!("wait-{}", P::TYPE), filter)).await.expect("consumer");
    let got = c.fetch(1, Duration::from_secs(60)).await.expect("fetch");
    let d = got.into_iter().next().unwrap_or_else(|| panic!("no {} within 60 s", P::TYPE));
    let env = d.envelope().expect("envelope");
    let p = env.decode::<P>().expect("payload");
    d.ack().await.expect("ack");
    (env, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_then_score_then_rescore() {
    let dir = tempfile::tempdir().expect("tmp");
    let data_dir = dir.path().to_path_buf();
    // A generated dataset with a few broken records appended.
    let records = fc_data::generate(60, 7);
    let mut buf = Vec::new();
    fc_data::write_xlam_json(&records, &mut buf).expect("write");
    let mut text = String::from_utf8(buf).expect("utf8");
    let tail = text.rfind(']').expect("array end");
    text.replace_range(
        tail..,
        ",\n{\"id\": 9001, \"query\": \"x\", \"tools\": \"not json\", \"answers\": \"[]\"},\n{\"id\": 9002}\n]",
    );
    let input = dir.path().join("in.json");
    std::fs::write(&input, text).expect("write input");

    let bus = Bus::connect(&BusConfig { nats_url: None, data_dir: data_dir.clone() }).await.expect("bus");
    let shutdown = Shutdown::new();
    let src = source(&data_dir);
    let ingest_cfg = data_ingest::Config::from_source(&src).expect("config");
    let scorer_cfg = reward_scorer::Config::from_source(&src).expect("config");
    let version = fc_rewards::Scorer::new(scorer_cfg.reward.clone()).expect("scorer").version().to_string();
    let t1 = tokio::spawn(data_ingest::run(ingest_cfg, bus.clone(), shutdown.clone()));
    let t2 = tokio::spawn(reward_scorer::run(scorer_cfg, bus.clone(), shutdown.clone()));

    let publisher = Publisher::new(bus.clone(), "test");
    let req = PipelineRequested {
        dataset: DatasetSpec {
            source: input.display().to_string(),
            format: "xlam".into(),
            answers: None,
            val_fraction: 0.2,
            split_seed: 1,
        },
        base_model: "unused".into(),
        sft: serde_json::json!({}),
        grpo: serde_json::json!({}),
        eval: serde_json::json!({}),
        promote: serde_json::json!({}),
        stages: vec![],
    };
    publisher.emit("run-a", None, &req, "run-a:pipeline_requested:0".into()).await.expect("publish");
    let (env, ingested): (_, DatasetIngested) =
        wait_for(&bus, subjects::STREAM_RUNS, &subjects::run_event_filter("dataset_ingested")).await;
    assert_eq!(env.run_id, "run-a");
    assert_eq!(ingested.read, 62);
    assert_eq!(ingested.accepted, 60);
    assert_eq!(ingested.rejected.values().sum::<u64>(), 2, "{:?}", ingested.rejected);
    assert_eq!(ingested.train_count + ingested.val_count, 60);
    let store = ArtifactStore::local(&data_dir);
    let train_path = store.fetch(&ingested.train).await.expect("train artifact");
    let samples = fc_data::read_samples(&train_path).expect("samples");
    assert_eq!(samples.len() as u64, ingested.train_count);
    let rejects = std::fs::read_to_string(store.fetch(ingested.dead_letters.as_ref().expect("rejects")).await.expect("fetch"))
        .expect("read");
    assert_eq!(rejects.lines().count(), 2, "each reject is a dead-letter record:\n{rejects}");

    // A rollout group for a sample that expects calls: one perfect completion, one broken.
    let (idx, sample) = samples
        .iter()
        .enumerate()
        .find(|(_, s)| matches!(&s.expected, fc_data::Expected::Calls(c) if !c.is_empty()))
        .expect("a sample with calls");
    let fc_data::Expected::Calls(calls) = &sample.expected else { unreachable!("matched above") };
    let good = fc_toolcall::render_calls(
        &calls.iter().map(|c| fc_toolcall::ToolCall::new(&c.name, c.arguments.clone())).collect::<Vec<_>>(),
    );
    let rollout = RolloutGenerated {
        prompt_id: sample.id.clone(),
        group_id: "g1".into(),
        policy_version: 0,
        dataset: ingested.train.clone(),
        sample_index: idx as u64,
        prompt_token_ids: vec![1, 2],
        completions: vec![
            Completion { index: 0, token_ids: vec![1], text: good, logprobs: vec![-0.1], finish_reason: FinishReason::Stop },
            Completion {
                index: 1,
                token_ids: vec![2],
                text: "<tool_call>\n{\"name\": oops".into(),
                logprobs: vec![-2.0],
                finish_reason: FinishReason::Length,
            },
        ],
        generator: "test".into(),
        elapsed_ms: 1,
    };
    let (rollout_env, _) = publisher.emit("run-a", None, &rollout, "run-a:g1:0".into()).await.expect("publish rollout");
    let (scored_env, scored): (_, RewardScored) =
        wait_for(&bus, subjects::STREAM_REWARDS, &format!("fc.reward.run-a.{version}")).await;
    assert_eq!(scored_env.causation_id, Some(rollout_env.id));
    assert_eq!(scored.reward_version, version);
    assert_eq!(scored.scores.len(), 2);
    assert!((scored.scores[0].total - 1.0).abs() < 1e-9, "{:?}", scored.scores[0]);
    assert!(scored.scores[1].total < 0.5, "{:?}", scored.scores[1]);
    assert_eq!(scored.scores[1].components.get("parse").copied(), Some(0.0));

    // Replay with another config: a second version beside the first.
    let mut cfg = fc_rewards::RewardConfig::default();
    cfg.weights.parse = 0.7;
    cfg.weights.schema = 0.1;
    cfg.weights.exec = 0.1;
    cfg.weights.semantic = 0.1;
    let scorer2 = fc_rewards::Scorer::new(cfg).expect("scorer");
    assert_ne!(scorer2.version(), version);
    let sum = fcmesh::data_cmds::replay_rescore(&bus, &store, &scorer2, fcmesh::data_cmds::Position::Seq(1), None, None)
        .await
        .expect("rescore");
    assert_eq!(sum.rollouts, 1);
    assert_eq!(sum.published, 1);
    let again = fcmesh::data_cmds::replay_rescore(&bus, &store, &scorer2, fcmesh::data_cmds::Position::Seq(1), None, None)
        .await
        .expect("rescore again");
    assert_eq!(again.duplicates, 1, "replaying twice publishes nothing new");
    let versions: Vec<String> = bus
        .replay(subjects::STREAM_REWARDS, "fc.reward.run-a.>", DeliverPolicy::All)
        .await
        .expect("replay")
        .map(|d| d.expect("ok").subject)
        .collect()
        .await;
    assert_eq!(versions.len(), 2, "{versions:?}");
    assert!(versions.iter().any(|s| s.ends_with(&version)) && versions.iter().any(|s| s.ends_with(scorer2.version())));

    shutdown.trigger();
    let _ = t1.await;
    let _ = t2.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_dataset_is_dead_lettered_with_its_reason() {
    let dir = tempfile::tempdir().expect("tmp");
    let bus = Bus::connect(&BusConfig { nats_url: None, data_dir: dir.path().to_path_buf() }).await.expect("bus");
    let shutdown = Shutdown::new();
    let cfg = data_ingest::Config::from_source(&source(dir.path())).expect("config");
    let task = tokio::spawn(data_ingest::run(cfg, bus.clone(), shutdown.clone()));
    let req = PipelineRequested {
        dataset: DatasetSpec {
            source: "/definitely/not/here.json".into(),
            format: "xlam".into(),
            answers: None,
            val_fraction: 0.1,
            split_seed: 0,
        },
        base_model: "unused".into(),
        sft: serde_json::json!({}),
        grpo: serde_json::json!({}),
        eval: serde_json::json!({}),
        promote: serde_json::json!({}),
        stages: vec![],
    };
    Publisher::new(bus.clone(), "test").emit("run-b", None, &req, "run-b:pipeline_requested:0".into()).await.expect("publish");
    let (_, dl): (_, fc_events::DeadLettered) = wait_for(&bus, subjects::STREAM_DLQ, "fc.dlq.>").await;
    assert!(dl.reason.contains("not a readable file"), "{}", dl.reason);
    assert_eq!(dl.consumer, "data-ingest");
    shutdown.trigger();
    let _ = task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluate_a_merged_model_then_promote_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let data_dir = dir.path().to_path_buf();
    let bus = Bus::connect(&BusConfig { nats_url: None, data_dir: data_dir.clone() }).await.expect("bus");
    let store = ArtifactStore::local(&data_dir);
    let publisher = Publisher::new(bus.clone(), "test");

    // The run's history: its request (eval and promote settings) and its datasets.
    let records = fc_data::generate(80, 5);
    let input = dir.path().join("in.json");
    let mut buf = Vec::new();
    fc_data::write_xlam_json(&records, &mut buf).expect("write");
    std::fs::write(&input, &buf).expect("write");
    let spec = DatasetSpec { source: input.display().to_string(), format: "xlam".into(), answers: None, val_fraction: 0.2, split_seed: 0 };
    let req = PipelineRequested {
        dataset: spec.clone(),
        base_model: "unused".into(),
        sft: serde_json::json!({}),
        grpo: serde_json::json!({}),
        eval: serde_json::json!({"max_samples": 5, "max_tokens": 8}),
        promote: serde_json::json!({"min_parse_rate": 0.0}),
        stages: vec![],
    };
    publisher.emit("run-e", None, &req, "run-e:pipeline_requested:0".into()).await.expect("publish");
    let ingested = data_ingest::ingest_to_artifacts(&spec, &store, &dir.path().join("work")).await.expect("ingest");
    publisher.emit("run-e", None, &ingested, "run-e:dataset_ingested:0".into()).await.expect("publish");

    // A "merged" model: the tiny preset, stored as a model artifact.
    let template = fc_chat::ChatTemplate::new(fc_model::tiny::QWEN3_CHAT_TEMPLATE).expect("template");
    let mut texts = Vec::new();
    for item in fc_data::load(buf.as_slice(), fc_data::Format::Xlam, None) {
        let s = item.expect("read").result.expect("valid");
        texts.push(template.render(&fc_chat::sample::training_request(&s)).expect("render"));
    }
    let model_dir = dir.path().join("tiny");
    fc_model::init_tiny(&texts, 1, &model_dir).expect("tiny model");
    let model = store.put_dir(&model_dir, fc_events::ArtifactKind::Model, "tiny").await.expect("model artifact");
    let merged = fc_events::ModelMerged {
        stage: fc_events::Stage::Sft,
        model: model.clone(),
        base_model: model.clone(),
        adapter: model.clone(),
        gguf: None,
    };

    let shutdown = Shutdown::new();
    let cfg = evaluator::Config::from_source(&source(&data_dir)).expect("config");
    let task = tokio::spawn(evaluator::run(cfg, bus.clone(), shutdown.clone()));
    publisher.emit("run-e", None, &merged, "run-e:model_merged:sft".into()).await.expect("publish");
    let (_, done): (_, fc_events::EvalCompleted) =
        wait_for(&bus, subjects::STREAM_RUNS, &subjects::run_event_filter("eval_completed")).await;
    assert_eq!(done.metrics.count, 5);
    assert_eq!(done.model, model);
    assert_eq!(done.dataset, ingested.val);
    let report_dir = store.fetch(done.report.as_ref().expect("report")).await.expect("report artifact");
    assert!(report_dir.join("report.md").exists() && report_dir.join("chart.png").exists());
    let (_, promoted): (_, fc_events::ModelPromoted) =
        wait_for(&bus, subjects::STREAM_RUNS, &subjects::run_event_filter("model_promoted")).await;
    assert_eq!(promoted.model, model);
    let ptr = bus.kv_get(subjects::KV_POINTERS, subjects::KEY_PROMOTED).await.expect("kv").expect("promoted pointer");
    let ptr: evaluator::PromotedPointer = serde_json::from_slice(&ptr.value).expect("pointer json");
    assert_eq!(ptr.model.sha256, model.sha256);
    assert_eq!(ptr.run_id, "run-e");
    shutdown.trigger();
    let _ = task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merger_turns_sft_completed_into_an_equivalent_merged_model() {
    use fc_model::{Device, LoraAdapter, LoraConfig, Model, Tensor};
    let dir = tempfile::tempdir().expect("tmp");
    let data_dir = dir.path().to_path_buf();
    let bus = Bus::connect(&BusConfig { nats_url: None, data_dir: data_dir.clone() }).await.expect("bus");
    let store = ArtifactStore::local(&data_dir);
    let texts: Vec<String> = (0..60).map(|i| format!("<|im_start|>user\nweather in city {i}<|im_end|>\n")).collect();
    let base_dir = dir.path().join("base");
    let base = fc_model::init_tiny(&texts, 2, &base_dir).expect("tiny");
    let adapter = LoraAdapter::new(&base, LoraConfig { r: 4, alpha: 8.0, dropout: 0.0, ..Default::default() }, 1).expect("adapter");
    for (k, v) in adapter.vars().iter().enumerate() {
        if k % 2 == 1 {
            v.set(&Tensor::randn(0f32, 0.3, v.shape(), &Device::Cpu).expect("randn")).expect("set"); // non-zero B
        }
    }
    let adapter_dir = dir.path().join("adapter");
    adapter.save_peft(&adapter_dir).expect("save adapter");
    let base_ref = store.put_dir(&base_dir, fc_events::ArtifactKind::Model, "base").await.expect("put");
    let adapter_ref = store.put_dir(&adapter_dir, fc_events::ArtifactKind::Adapter, "adapter").await.expect("put");

    let shutdown = Shutdown::new();
    let cfg = merger::Config::from_source(&source(&data_dir)).expect("config");
    let task = tokio::spawn(merger::run(cfg, bus.clone(), shutdown.clone()));
    let done = fc_events::SftCompleted {
        adapter: adapter_ref.clone(),
        base_model: base_ref.clone(),
        steps: 1,
        train_loss_first: 1.0,
        train_loss_last: 0.5,
        val_loss: None,
        tokens_per_second: 1.0,
        model: None,
    };
    Publisher::new(bus.clone(), "test").emit("run-m", None, &done, "run-m:sft_completed:0".into()).await.expect("publish");
    let (_, merged): (_, fc_events::ModelMerged) =
        wait_for(&bus, subjects::STREAM_RUNS, &subjects::run_event_filter("model_merged")).await;
    assert_eq!(merged.stage, fc_events::Stage::Sft);
    assert_eq!((merged.adapter, merged.base_model), (adapter_ref, base_ref));
    let merged_dir = store.fetch(&merged.model).await.expect("merged artifact");
    assert!(merged_dir.join("tokenizer.json").exists(), "tokenizer files travel with the merged model");
    let merged_model = Model::load(&merged_dir, &Device::Cpu, fc_model::DType::F32).expect("load merged");
    let ids = Tensor::new(&[[1u32, 7, 42, 9, 3]], &Device::Cpu).expect("ids");
    let a = merged_model.forward(&ids, &mut merged_model.new_cache(), None).expect("merged forward");
    let b = base.forward(&ids, &mut base.new_cache(), Some(&adapter)).expect("adapter forward");
    let diff = (a - b).and_then(|d| d.abs()).and_then(|d| d.max_all()).and_then(|d| d.to_scalar::<f32>()).expect("diff");
    assert!(diff < 1e-4, "merged logits equal the adapter-on logits: max diff {diff}");
    shutdown.trigger();
    let _ = task.await;
}
