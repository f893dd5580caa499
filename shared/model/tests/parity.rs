//! Parity with transformers / PEFT on the fixtures made by
//! scripts/model/gen_parity_fixtures.py.

mod common;
use candle_core::{DType, Device, IndexOp, Tensor};
use common::*;
use fc_model::{generate, GenerateParams, LoraAdapter, Model, TokenBatch};

const TOL: f32 = 1e-4;
const FIXTURES: &[&str] = &["qwen3_tied", "qwen3_untied", "qwen2_bias", "llama"];

fn prefill(model: &Model, ids: &[u32], lora: Option<&LoraAdapter>) -> Tensor {
    let mut cache = model.new_cache();
    let x = Tensor::from_slice(ids, (1, ids.len()), &Device::Cpu).unwrap();
    model
        .forward(&x, &mut cache, lora)
        .unwrap()
        .squeeze(0)
        .unwrap()
}

fn train_logits(model: &Model, ids: &[u32], lora: Option<&LoraAdapter>) -> Tensor {
    let b = TokenBatch {
        batch: 1,
        seq_len: ids.len(),
        input_ids: ids.to_vec(),
        attention_mask: vec![1; ids.len()],
        targets: ids.to_vec(),
    };
    model.train_logits(&b, lora).unwrap().squeeze(0).unwrap()
}

#[test]
fn prefill_and_train_logits_match_transformers() {
    for name in FIXTURES {
        let model = Model::load(&fixture(name), &Device::Cpu, DType::F32).unwrap();
        let exp = expected(name);
        for i in 0..3 {
            let ids = ids(&exp[&format!("p{i}.ids")]);
            let want = &exp[&format!("p{i}.prefill")];
            let d_inf = max_abs_diff(&prefill(&model, &ids, None), want);
            let d_train = max_abs_diff(&train_logits(&model, &ids, None), want);
            println!("{name} p{i}: prefill diff {d_inf:.2e}, train-path diff {d_train:.2e}");
            assert!(d_inf < TOL, "{name} p{i} prefill diff {d_inf}");
            assert!(d_train < TOL, "{name} p{i} train diff {d_train}");
        }
    }
}

#[test]
fn cached_greedy_decode_matches_transformers() {
    for name in FIXTURES {
        let model = Model::load(&fixture(name), &Device::Cpu, DType::F32).unwrap();
        let exp = expected(name);
        for i in 0..3 {
            let prompt = ids(&exp[&format!("p{i}.ids")]);
            let want_ids = ids(&exp[&format!("p{i}.greedy_ids")]);
            let want_logits = &exp[&format!("p{i}.greedy_logits")];
            let mut cache = model.new_cache();
            let mut input = Tensor::from_slice(&prompt, (1, prompt.len()), &Device::Cpu).unwrap();
            let mut worst = 0f32;
            for (step, &want) in want_ids.iter().enumerate() {
                let logits = model
                    .forward_last(&input, &mut cache, None)
                    .unwrap()
                    .squeeze(0)
                    .unwrap();
                let d = max_abs_diff(&logits, &want_logits.i(step).unwrap());
                worst = worst.max(d);
                assert!(d < TOL, "{name} p{i} step {step}: logits diff {d}");
                let tok = logits.argmax(0).unwrap().to_scalar::<u32>().unwrap();
                assert_eq!(tok, want, "{name} p{i} step {step}");
                input = Tensor::from_slice(&[tok], (1, 1), &Device::Cpu).unwrap();
            }
            assert_eq!(cache.seq_len(), prompt.len() + want_ids.len() - 1);
            println!("{name} p{i}: 20 cached decode steps, max logits diff {worst:.2e}");
        }
    }
}

#[test]
fn generate_greedy_reproduces_transformers_ids() {
    let name = "qwen3_tied";
    let model = Model::load(&fixture(name), &Device::Cpu, DType::F32).unwrap();
    let exp = expected(name);
    let params = GenerateParams {
        max_tokens: 20,
        stop_token_ids: Some(vec![]),
        ..Default::default()
    };
    for i in 0..3 {
        let prompt = ids(&exp[&format!("p{i}.ids")]);
        let got = generate(&model, &prompt, &params).unwrap();
        assert_eq!(got, ids(&exp[&format!("p{i}.greedy_ids")]), "prompt {i}");
    }
}

#[test]
fn peft_adapters_and_merge_match() {
    let name = "qwen3_tied";
    let model = Model::load(&fixture(name), &Device::Cpu, DType::F32).unwrap();
    let exp = expected(name);
    for ad in ["lora_all", "lora_rs_qv"] {
        let adapter = LoraAdapter::load_peft(&fixture(name).join(ad), &model).unwrap();
        let merged = model.merge_lora(&adapter).unwrap();
        for i in 0..3 {
            let ids = ids(&exp[&format!("p{i}.ids")]);
            let want = &exp[&format!("{ad}.p{i}.lora")];
            let d_inf = max_abs_diff(&prefill(&model, &ids, Some(&adapter)), want);
            let d_train = max_abs_diff(&train_logits(&model, &ids, Some(&adapter)), want);
            let d_merge = max_abs_diff(
                &prefill(&merged, &ids, None),
                &exp[&format!("{ad}.p{i}.merged")],
            );
            // Switching the adapter off per call gives the base model back.
            let d_off = max_abs_diff(&prefill(&model, &ids, None), &exp[&format!("p{i}.prefill")]);
            println!("{ad} p{i}: lora {d_inf:.2e} train {d_train:.2e} merged {d_merge:.2e} off {d_off:.2e}");
            assert!(d_inf < TOL && d_train < TOL && d_merge < TOL && d_off < TOL);
        }
    }
}

#[test]
fn save_hf_roundtrip_f32_bf16_and_sharded() {
    let src = fixture("qwen3_untied");
    let model = Model::load(&src, &Device::Cpu, DType::F32).unwrap();
    let ids = [3u32, 14, 15, 92, 65];
    let base = prefill(&model, &ids, None);
    let tmp = tempfile::tempdir().unwrap();

    let d32 = tmp.path().join("f32");
    model.save_hf(&d32, DType::F32, Some(&src)).unwrap();
    assert!(d32.join("generation_config.json").exists());
    let re = Model::load(&d32, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(max_abs_diff(&prefill(&re, &ids, None), &base), 0.0);
    assert_eq!(re.config.rope_theta, model.config.rope_theta);

    let d16 = tmp.path().join("bf16");
    model.save_hf(&d16, DType::BF16, None).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d16.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["dtype"], "bfloat16");
    let re = Model::load(&d16, &Device::Cpu, DType::F32).unwrap();
    let d = max_abs_diff(&prefill(&re, &ids, None), &base);
    assert!(d > 0.0 && d < 0.5, "bf16 diff {d}");

    // Sharded layout: two files + index.
    let ds = tmp.path().join("sharded");
    std::fs::create_dir_all(&ds).unwrap();
    std::fs::copy(src.join("config.json"), ds.join("config.json")).unwrap();
    let named = model.named_tensors().unwrap();
    let (a, b) = named.split_at(named.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ] {
        fc_model::io::write_safetensors(&ds.join(file), part.to_vec()).unwrap();
        for (k, _) in part {
            map.insert(k.clone(), serde_json::json!(file));
        }
    }
    std::fs::write(
        ds.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    let re = Model::load(&ds, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(max_abs_diff(&prefill(&re, &ids, None), &base), 0.0);
}

#[test]
fn adapter_save_load_roundtrip() {
    let name = "qwen3_tied";
    let model = Model::load(&fixture(name), &Device::Cpu, DType::F32).unwrap();
    let adapter = LoraAdapter::load_peft(&fixture(name).join("lora_rs_qv"), &model).unwrap();
    assert!(adapter.config.use_rslora);
    assert_eq!(adapter.config.r, 8);
    let tmp = tempfile::tempdir().unwrap();
    adapter.save_peft(tmp.path()).unwrap();
    let re = LoraAdapter::load_peft(tmp.path(), &model).unwrap();
    assert_eq!(re.config, adapter.config);
    let ids = [5u32, 6, 7, 8];
    let d = max_abs_diff(
        &prefill(&model, &ids, Some(&adapter)),
        &prefill(&model, &ids, Some(&re)),
    );
    assert_eq!(d, 0.0);
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["lora_alpha"], 16);
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!(["q_proj", "v_proj"])
    );
}

/// Writes an adapter trained/initialised by us plus our logits, for
/// `scripts/model/check_our_adapter.py`. Run with
/// `FC_MODEL_EXPORT=/tmp/x cargo test -p fc-model --test parity export`. Without the
/// variable it exports to a temporary dir, so the export path itself is always exercised.
#[test]
fn export_adapter_for_python_check() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::env::var("FC_MODEL_EXPORT").map(std::path::PathBuf::from).unwrap_or_else(|_| tmp.path().to_path_buf());
    let name = "qwen3_tied";
    let model = Model::load(&fixture(name), &Device::Cpu, DType::F32).unwrap();
    let cfg = fc_model::LoraConfig {
        r: 4,
        alpha: 12.0,
        dropout: 0.0,
        use_rslora: true,
        ..Default::default()
    };
    let adapter = LoraAdapter::new(&model, cfg, 7).unwrap();
    // Non-zero B so the adapter changes the logits.
    for (k, v) in adapter.vars().iter().enumerate() {
        let noise = Tensor::randn(0f32, 0.3, v.shape(), &Device::Cpu).unwrap();
        if k % 2 == 1 {
            v.set(&noise).unwrap();
        }
    }
    adapter.save_peft(&out.join("adapter")).unwrap();
    let ids = [1u32, 17, 42, 255, 3, 99, 7, 150];
    let lora = prefill(&model, &ids, Some(&adapter));
    let lora_copy = lora.clone();
    let merged_model = model.merge_lora(&adapter).unwrap();
    merged_model
        .save_hf(&out.join("merged"), DType::F32, Some(&fixture(name)))
        .unwrap();
    let merged = prefill(&merged_model, &ids, None);
    // Tiny preset, to check transformers can load our model + tokenizer files.
    let texts: Vec<String> = (0..100)
        .map(|i| format!("<|im_start|>user\nCall tool {i} please<|im_end|>\n<|im_start|>assistant\n<tool_call>\n{{\"name\": \"t{i}\"}}\n</tool_call><|im_end|>"))
        .collect();
    let spec = fc_model::TinySpec {
        vocab_size: 500,
        ..Default::default()
    };
    let tiny = fc_model::init_tiny_with(&texts, 3, &out.join("tiny"), &spec).unwrap();
    let tiny_logits = prefill(&tiny, &ids[..4], None);
    let t_ids = Tensor::new(&ids.map(|x| x as i64), &Device::Cpu).unwrap();
    fc_model::io::write_safetensors(
        &out.join("ours.safetensors"),
        vec![
            ("ids".into(), t_ids),
            ("lora".into(), lora),
            ("merged".into(), merged),
            ("tiny".into(), tiny_logits),
        ],
    )
    .unwrap();
    // The saved adapter and merged dir load back with the same logits.
    let back = LoraAdapter::load_peft(&out.join("adapter"), &model).unwrap();
    let again = prefill(&model, &ids, Some(&back));
    let diff = (again - lora_copy).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-5, "adapter round trip diff {diff}");
    println!("exported to {}", out.display());
}
