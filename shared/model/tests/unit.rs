//! Config parsing, tokenizer preset, sampling.

mod common;
use candle_core::{DType, Device};
use fc_model::{Arch, GenerateParams, LoraConfig, Model, ModelConfig};
use serde_json::json;

fn base() -> serde_json::Value {
    json!({"model_type": "qwen3", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "rope_theta": 5000.0, "eos_token_id": [1, 2], "bos_token_id": 0,
           "torch_dtype": "bfloat16", "tie_word_embeddings": true})
}

#[test]
fn config_variants() {
    let c = ModelConfig::from_json(base()).unwrap();
    assert_eq!(
        (c.arch, c.head_dim, c.n_rep(), c.rope_theta),
        (Arch::Qwen3, 16, 2, 5000.0)
    );
    assert!(c.qk_norm && !c.qkv_bias && c.tie_word_embeddings);
    assert_eq!(c.eos_token_ids, vec![1, 2]);
    assert_eq!(c.torch_dtype.as_deref(), Some("bfloat16"));

    // transformers 5.x layout
    let mut v = base();
    v.as_object_mut().unwrap().remove("rope_theta");
    v["rope_parameters"] = json!({"rope_theta": 1e6, "rope_type": "default"});
    v["head_dim"] = json!(32);
    assert_eq!(ModelConfig::from_json(v.clone()).unwrap().rope_theta, 1e6);
    assert_eq!(ModelConfig::from_json(v).unwrap().head_dim, 32);

    let mut v = base();
    v["model_type"] = json!("qwen2");
    let c = ModelConfig::from_json(v).unwrap();
    assert!(c.qkv_bias && !c.o_bias && !c.qk_norm);

    let mut v = base();
    v["model_type"] = json!("llama");
    let c = ModelConfig::from_json(v).unwrap();
    assert!(!c.qkv_bias && !c.qk_norm);

    for (k, val) in [
        ("model_type", json!("gpt2")),
        ("num_key_value_heads", json!(3)),
        ("rope_scaling", json!({"rope_type": "yarn", "factor": 4.0})),
        ("hidden_act", json!("gelu")),
        ("use_sliding_window", json!(true)),
        ("vocab_size", json!("x")),
    ] {
        let mut v = base();
        v[k] = val;
        assert!(ModelConfig::from_json(v).is_err(), "{k} should be rejected");
    }
}

#[test]
fn peft_config_rejects_unsupported() {
    let ok = LoraConfig::default().to_peft_json();
    assert_eq!(
        LoraConfig::from_peft_json(&ok).unwrap(),
        LoraConfig::default()
    );
    for (k, val) in [
        ("use_dora", json!(true)),
        ("bias", json!("all")),
        ("target_modules", json!(".*proj")),
        ("rank_pattern", json!({"q_proj": 4})),
        ("modules_to_save", json!(["lm_head"])),
        ("r", json!(0)),
    ] {
        let mut v = ok.clone();
        v[k] = val;
        assert!(
            LoraConfig::from_peft_json(&v).is_err(),
            "{k} should be rejected"
        );
    }
}

#[test]
fn missing_files_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(Model::load(tmp.path(), &Device::Cpu, DType::F32).is_err());
    std::fs::write(tmp.path().join("config.json"), "{not json").unwrap();
    assert!(Model::load(tmp.path(), &Device::Cpu, DType::F32).is_err());
    std::fs::write(tmp.path().join("config.json"), base().to_string()).unwrap();
    std::fs::write(tmp.path().join("model.safetensors"), b"garbage").unwrap();
    assert!(Model::load(tmp.path(), &Device::Cpu, DType::F32).is_err());
}

#[test]
fn sampling_is_seeded_and_respects_top_p() {
    let model = common::tiny_model(DType::F32, 3);
    // The test model is very peaked; a high temperature makes the draws matter.
    let p = GenerateParams {
        max_tokens: 12,
        temperature: 20.0,
        top_p: 0.95,
        seed: 42,
        stop_token_ids: Some(vec![]),
    };
    let a = fc_model::generate(&model, &[1, 2, 3], &p).unwrap();
    let b = fc_model::generate(&model, &[1, 2, 3], &p).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.len(), 12);
    let c = fc_model::generate(
        &model,
        &[1, 2, 3],
        &GenerateParams {
            seed: 43,
            ..p.clone()
        },
    )
    .unwrap();
    assert_ne!(a, c);
    // top_p tiny => always the argmax token == greedy.
    let g = fc_model::generate(
        &model,
        &[1, 2, 3],
        &GenerateParams {
            temperature: 0.0,
            ..p.clone()
        },
    )
    .unwrap();
    let t = fc_model::generate(
        &model,
        &[1, 2, 3],
        &GenerateParams {
            top_p: 1e-9,
            ..p.clone()
        },
    )
    .unwrap();
    assert_eq!(g, t);
    let g = fc_model::generate_with(&model, None, &[1, 2, 3], &p).unwrap();
    assert_eq!(g.token_ids, a);
    assert!(g.logprobs.iter().all(|&l| l.is_finite() && l <= 0.0));
    // Stops at (and includes) a stop token.
    let stop = GenerateParams {
        stop_token_ids: Some(vec![a[2]]),
        ..p.clone()
    };
    let s = fc_model::generate_with(&model, None, &[1, 2, 3], &stop).unwrap();
    assert_eq!(s.finish_reason, fc_model::generate::FinishReason::Stop);
    assert_eq!(*s.token_ids.last().unwrap(), a[2]);
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    assert_eq!(
        fc_model::generate::sample(&[0.0, 5.0, 1.0], 0.0, 1.0, &mut rng),
        1
    );
}

#[test]
fn tiny_preset_is_deterministic_and_loadable() {
    let texts: Vec<String> = (0..200)
        .map(|i| format!("<|im_start|>user\nWhat is the weather in city {i}?<|im_end|>\n<|im_start|>assistant\n<tool_call>\n{{\"name\": \"get_weather\", \"arguments\": {{\"city\": \"c{i}\"}}}}\n</tool_call><|im_end|>"))
        .collect();
    let spec = fc_model::TinySpec {
        vocab_size: 400,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        head_dim: 16,
    };
    let tmp = tempfile::tempdir().unwrap();
    let (d1, d2) = (tmp.path().join("a"), tmp.path().join("b"));
    fc_model::init_tiny_with(&texts, 5, &d1, &spec).unwrap();
    fc_model::init_tiny_with(&texts, 5, &d2, &spec).unwrap();
    for f in [
        "tokenizer.json",
        "model.safetensors",
        "config.json",
        "tokenizer_config.json",
    ] {
        assert_eq!(
            std::fs::read(d1.join(f)).unwrap(),
            std::fs::read(d2.join(f)).unwrap(),
            "{f} differs"
        );
    }
    let tok = tokenizers::Tokenizer::from_file(d1.join("tokenizer.json")).unwrap();
    let enc = tok.encode(texts[3].as_str(), false).unwrap();
    let im_start = tok.token_to_id("<|im_start|>").unwrap();
    let tool_call = tok.token_to_id("<tool_call>").unwrap();
    assert_eq!(enc.get_ids()[0], im_start);
    assert!(enc.get_ids().contains(&tool_call));
    assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), texts[3]);
    assert!(tok.get_vocab_size(true) <= 400);
    let model = Model::load(&d1, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(
        model.config.eos_token_ids,
        vec![tok.token_to_id("<|im_end|>").unwrap()]
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d1.join("tokenizer_config.json")).unwrap())
            .unwrap();
    assert!(cfg["chat_template"]
        .as_str()
        .unwrap()
        .contains("<tool_call>"));
    let out = fc_model::generate(
        &model,
        enc.get_ids(),
        &GenerateParams {
            max_tokens: 3,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!out.is_empty());
}

#[test]
fn right_padded_batch() {
    let b = fc_model::TokenBatch::right_padded(&[vec![5, 6, 7], vec![8]], 0).unwrap();
    assert_eq!((b.batch, b.seq_len), (2, 3));
    assert_eq!(b.input_ids, vec![5, 6, 7, 8, 0, 0]);
    assert_eq!(b.attention_mask, vec![1, 1, 1, 1, 0, 0]);
    assert_eq!(b.targets, vec![6, 7, 0, 0, 0, 0]);
    assert!(fc_model::TokenBatch::right_padded(&[], 0).is_err());
}

#[test]
fn a_packed_model_infers_like_the_dense_one_and_refuses_training() {
    let dense = common::tiny_model(DType::F32, 3);
    let mut packed = dense.clone();
    let projections: usize = dense.layers.iter().map(|l| l.proj.len()).sum();
    assert_eq!(
        packed.pack_for_inference().unwrap(),
        projections + 1,
        "every projection and the head"
    );
    assert_eq!(
        packed.pack_for_inference().unwrap(),
        0,
        "packing twice packs nothing more"
    );
    assert!(!packed.is_quantized());
    assert_eq!(packed.embed_tokens.dims()[0], 0, "the tied table lives in the packed head");
    let ids = [0u32, 5, 60];
    assert_eq!(common::max_abs_diff(&packed.embed_rows(&ids).unwrap(), &dense.embed_rows(&ids).unwrap()), 0.0);

    // Prefill, then one decode step: the logits agree with the dense model's.
    let (mut ca, mut cb) = (dense.new_cache(), packed.new_cache());
    for ids in [vec![5u32, 9, 2, 11, 40, 7], vec![13]] {
        let t = candle_core::Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let a = dense.forward(&t, &mut ca, None).unwrap();
        let b = packed.forward(&t, &mut cb, None).unwrap();
        let scale = a
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let diff = common::max_abs_diff(&a, &b);
        assert!(
            diff <= 1e-5 * (1.0 + scale),
            "{ids:?}: diff {diff}, scale {scale}"
        );
    }

    // The weights it would save are the dense ones, bit for bit.
    let (na, nb) = (
        dense.named_tensors().unwrap(),
        packed.named_tensors().unwrap(),
    );
    assert_eq!(na.len(), nb.len());
    for ((ka, ta), (kb, tb)) in na.iter().zip(&nb) {
        assert_eq!(ka, kb);
        assert_eq!(common::max_abs_diff(ta, tb), 0.0, "{ka}");
    }

    // Training needs the dense layout: a clear error, not a panic.
    let batch = fc_model::TokenBatch::right_padded(&[vec![5, 6, 7]], 0).unwrap();
    let err = packed
        .train_logprobs(&batch, None, None, 16)
        .unwrap_err()
        .to_string();
    assert!(err.contains("packed for CPU inference"), "{err}");

    // Other dtypes are left as they are.
    let mut bf = common::tiny_model(DType::BF16, 3);
    assert_eq!(bf.pack_for_inference().unwrap(), 0);
}
