//! Golden files pin the wire form of every event type: a change to a payload's JSON
//! fails here. Run with `FC_UPDATE_GOLDEN=1` to rewrite the files after an intended,
//! append-only change (and say so in the commit).

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{TimeZone, Utc};
use fc_events::*;
use uuid::Uuid;

fn artifact(kind: ArtifactKind, name: &str) -> ArtifactRef {
    ArtifactRef { sha256: format!("{:0>64}", name.len()), kind, bytes: 1234, name: name.into() }
}

fn envelope<P: EventPayload>(p: &P) -> Envelope {
    Envelope {
        id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001),
        event_type: P::TYPE.into(),
        schema_version: P::VERSION,
        occurred_at: Utc.with_ymd_and_hms(2026, 11, 29, 12, 0, 0).single().expect("valid time"),
        run_id: "run-1".into(),
        causation_id: Some(Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000)),
        correlation_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000),
        producer: "golden/test".into(),
        payload: serde_json::to_value(p).expect("serializable"),
    }
}

fn metrics() -> EvalMetrics {
    EvalMetrics {
        count: 300,
        parse_rate: 0.97,
        schema_hit: 0.9,
        func_accuracy: 0.91,
        exec_rate: 0.85,
        // Added later with skip-if-none: an event without it keeps its v1 wire form.
        args_match: None,
        args_exact: Some(0.5),
        no_call_accuracy: Some(0.75),
        extra: BTreeMap::from([("heldout.parse_rate".to_string(), 0.95)]),
    }
}

fn samples() -> Vec<Envelope> {
    let sampling = SamplingParams { temperature: 1.0, top_p: 0.95, top_k: 0, min_p: 0.0, max_new_tokens: 256, seed: 7 };
    vec![
        envelope(&PipelineRequested {
            dataset: DatasetSpec {
                source: "data/xlam.json".into(),
                format: "xlam".into(),
                answers: None,
                val_fraction: 0.1,
                split_seed: 0,
            },
            base_model: "models/tiny".into(),
            sft: serde_json::json!({"max_steps": 100}),
            grpo: serde_json::json!({"group_size": 8}),
            eval: serde_json::json!({}),
            promote: serde_json::json!({"min_func_accuracy": 0.5}),
            stages: vec![],
        }),
        envelope(&DatasetIngested {
            train: artifact(ArtifactKind::Dataset, "train.jsonl"),
            val: artifact(ArtifactKind::Dataset, "val.jsonl"),
            dead_letters: Some(artifact(ArtifactKind::DeadLetters, "rejects.jsonl")),
            format: "xlam".into(),
            read: 100,
            accepted: 97,
            rejected: BTreeMap::from([("invalid_json".to_string(), 2), ("unknown_tool".to_string(), 1)]),
            train_count: 87,
            val_count: 10,
        }),
        envelope(&SftStarted {
            base_model: artifact(ArtifactKind::Model, "tiny"),
            dataset: artifact(ArtifactKind::Dataset, "train.jsonl"),
            total_steps: 300,
            train_examples: 87,
            config: serde_json::json!({"lora_r": 32, "lora_alpha": 64}),
            resumed_from_step: None,
        }),
        envelope(&SftStep {
            step: 10,
            total_steps: 300,
            epoch: 0.25,
            loss: 2.5,
            learning_rate: 0.0002,
            grad_norm: 1.5,
            tokens_per_second: 9000.0,
            val_loss: None,
        }),
        envelope(&SftCheckpoint {
            step: 100,
            epoch: 1.0,
            checkpoint: artifact(ArtifactKind::Checkpoint, "ckpt-100"),
            data_position: 100,
        }),
        envelope(&SftCompleted {
            adapter: artifact(ArtifactKind::Adapter, "adapter"),
            base_model: artifact(ArtifactKind::Model, "tiny"),
            steps: 300,
            train_loss_first: 7.5,
            train_loss_last: 0.5,
            val_loss: Some(0.6),
            tokens_per_second: 9500.0,
            model: None,
        }),
        envelope(&ModelMerged {
            stage: Stage::Sft,
            model: artifact(ArtifactKind::Model, "merged"),
            base_model: artifact(ArtifactKind::Model, "tiny"),
            adapter: artifact(ArtifactKind::Adapter, "adapter"),
            gguf: None,
        }),
        envelope(&RolloutRequested {
            prompt_id: "p-17".into(),
            group_id: "run-1:p-17:3".into(),
            policy_version: 3,
            adapter: Some(artifact(ArtifactKind::Adapter, "policy-3")),
            model: artifact(ArtifactKind::Model, "merged"),
            dataset: artifact(ArtifactKind::Dataset, "train.jsonl"),
            sample_index: 17,
            group_size: 2,
            sampling: sampling.clone(),
        }),
        envelope(&RolloutGenerated {
            prompt_id: "p-17".into(),
            group_id: "run-1:p-17:3".into(),
            policy_version: 3,
            dataset: artifact(ArtifactKind::Dataset, "train.jsonl"),
            sample_index: 17,
            prompt_token_ids: vec![1, 2, 3],
            completions: vec![
                Completion {
                    index: 0,
                    token_ids: vec![5, 6],
                    text: "<tool_call>".into(),
                    logprobs: vec![-0.5, -0.25],
                    finish_reason: FinishReason::Stop,
                },
                Completion {
                    index: 1,
                    token_ids: vec![7],
                    text: "hi".into(),
                    logprobs: vec![-1.0],
                    finish_reason: FinishReason::Length,
                },
            ],
            generator: "rollout-generator/0".into(),
            elapsed_ms: 120,
        }),
        envelope(&RewardScored {
            rollout_event_id: Uuid::from_u128(42),
            prompt_id: "p-17".into(),
            group_id: "run-1:p-17:3".into(),
            policy_version: 3,
            reward_version: "r-0123abcd".into(),
            scores: vec![CompletionScore {
                index: 0,
                total: 0.75,
                components: BTreeMap::from([
                    ("exec".to_string(), 1.0),
                    ("parse".to_string(), 1.0),
                    ("schema".to_string(), 1.0),
                    ("semantic".to_string(), 0.0),
                ]),
            }],
        }),
        envelope(&GrpoStep {
            step: 4,
            total_steps: 50,
            policy_version: 4,
            reward_mean: 0.6,
            reward_std: 0.2,
            loss: 0.01,
            kl: 0.002,
            clip_fraction: 0.1,
            learning_rate: 1e-5,
            groups: 8,
            tokens_per_second: 300.0,
            components: BTreeMap::from([("parse".to_string(), 0.9)]),
        }),
        envelope(&PolicyUpdated { version: 4, adapter: artifact(ArtifactKind::Adapter, "policy-4"), step: 4 }),
        envelope(&GrpoCompleted {
            adapter: artifact(ArtifactKind::Adapter, "policy-50"),
            base_model: artifact(ArtifactKind::Model, "merged"),
            steps: 50,
            reward_mean_first: 0.4,
            reward_mean_last: 0.8,
        }),
        envelope(&EvalCompleted {
            stage: Stage::Grpo,
            model: artifact(ArtifactKind::Model, "merged-grpo"),
            dataset: artifact(ArtifactKind::Dataset, "val.jsonl"),
            metrics: metrics(),
            report: Some(artifact(ArtifactKind::Report, "report")),
        }),
        envelope(&ModelPromoted {
            stage: Stage::Grpo,
            model: artifact(ArtifactKind::Model, "merged-grpo"),
            version: 2,
            metrics: metrics(),
            reason: "func_accuracy 0.91 >= 0.90 and better than promoted 0.88".into(),
        }),
        envelope(&DeadLettered {
            stream: "FC_RUNS".into(),
            subject: "fc.run.run-1.sft_completed".into(),
            consumer: "merger".into(),
            stream_sequence: 12,
            deliveries: 5,
            reason: "max deliveries (5) exceeded; last error: adapter not found".into(),
            original: "{}".into(),
        }),
    ]
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[test]
fn every_event_type_has_a_golden_sample() {
    let types: Vec<String> = samples().iter().map(|e| e.event_type.clone()).collect();
    for t in EVENT_TYPES {
        assert!(types.iter().any(|x| x == t), "no golden sample for {t}");
    }
    assert_eq!(types.len(), EVENT_TYPES.len());
}

#[test]
fn wire_form_matches_golden_files() {
    let update = std::env::var("FC_UPDATE_GOLDEN").is_ok();
    for env in samples() {
        let path = golden_dir().join(format!("{}.json", env.event_type));
        let text = serde_json::to_string_pretty(&env).expect("serializable") + "\n";
        if update {
            std::fs::write(&path, &text).expect("write golden");
            continue;
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("missing golden file {}: {e} (FC_UPDATE_GOLDEN=1 writes it)", path.display()));
        assert_eq!(text, expected, "wire form of {} changed; events are append-only", env.event_type);
        // And the golden file decodes back to the same envelope.
        let back: Envelope = serde_json::from_str(&expected).expect("golden decodes");
        assert_eq!(back, env);
    }
}

#[test]
fn typed_decode_roundtrips() {
    let env = &samples()[1];
    let p: DatasetIngested = env.decode().expect("decodes");
    assert_eq!(p.read, 100);
    assert!(matches!(env.decode::<SftStep>(), Err(EventError::WrongType { .. })));
}

#[test]
fn unknown_newer_fields_are_tolerated() {
    let env = &samples()[3];
    let mut v = serde_json::to_value(env).expect("value");
    v["new_envelope_field"] = serde_json::json!("from the future");
    v["payload"]["new_payload_field"] = serde_json::json!({"x": 1});
    let back: Envelope = serde_json::from_value(v).expect("tolerates unknown envelope fields");
    let step: SftStep = back.decode().expect("tolerates unknown payload fields");
    assert_eq!(step.step, 10);
}

#[test]
fn newer_schema_version_is_refused_clearly() {
    let mut env = samples()[3].clone();
    env.schema_version = 99;
    let err = env.decode::<SftStep>().expect_err("refuses");
    assert!(err.to_string().contains("schema version 99"), "{err}");
}

#[test]
fn causation_links_events() {
    let first = Envelope::new("r1", "cli", &PolicyUpdated {
        version: 1,
        adapter: artifact(ArtifactKind::Adapter, "a"),
        step: 1,
    })
    .expect("envelope");
    let second = Envelope::caused_by(&first, "svc", &PolicyUpdated {
        version: 2,
        adapter: artifact(ArtifactKind::Adapter, "b"),
        step: 2,
    })
    .expect("envelope");
    assert_eq!(second.causation_id, Some(first.id));
    assert_eq!(second.correlation_id, first.correlation_id);
    assert_eq!(second.run_id, "r1");
    assert_eq!(second.id.get_version_num(), 7);
    assert!(second.id > first.id, "UUIDv7 ids are time ordered");
}
