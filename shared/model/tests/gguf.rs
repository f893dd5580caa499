//! GGUF export + quantized inference: F32 round trip reproduces the safetensors
//! model's logits; Q8_0 / Q4 stay close; metadata and tensor names match llama.cpp's
//! `qwen3` layout.

mod common;

use candle_core::quantized::gguf_file::{Content, Value as GValue};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use common::max_abs_diff;
use fc_model::{export_gguf, init_tiny_with, GgufDType, Model, TinySpec};
use std::path::Path;

fn texts() -> Vec<String> {
    (0..200)
        .map(|i| {
            format!(
                "{{\"name\": \"get_weather\", \"arguments\": {{\"city\": \"Paris{i}\", \"unit\": \"celsius\"}}}} call number {i} of the tool"
            )
        })
        .collect()
}

/// A tiny Qwen3 dir (tokenizer + f32 safetensors) with weights large enough that the
/// logits spread over several units, so tolerances mean something.
fn tiny_dir(
    dir: &Path,
    hidden: usize,
    ffn: usize,
    head_dim: usize,
    tied: bool,
    seed: u64,
) -> Model {
    let spec = TinySpec {
        vocab_size: 400,
        hidden_size: hidden,
        intermediate_size: ffn,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim,
    };
    let mut m = init_tiny_with(&texts(), seed, dir, &spec).unwrap();
    for (li, l) in m.layers.iter_mut().enumerate() {
        for p in l.proj.iter_mut() {
            let w = p.dense_weight().unwrap();
            let fan_in = w.dim(1).unwrap() as f64;
            p.weight = fc_model::Weight::Dense(w.affine(1.0 / (0.02 * fan_in.sqrt()), 0.0).unwrap());
        }
        // Non-trivial norm weights so a swapped norm tensor would show.
        let ramp = |n: usize, k: f32| {
            let v: Vec<f32> = (0..n).map(|i| 0.5 + k * (i % 7) as f32 / 7.0).collect();
            Tensor::from_vec(v, n, &Device::Cpu).unwrap()
        };
        l.input_layernorm = ramp(hidden, 1.0 + li as f32 * 0.1);
        l.post_attention_layernorm = ramp(hidden, 0.7);
        l.q_norm = Some(ramp(head_dim, 0.9));
        l.k_norm = Some(ramp(head_dim, 0.4));
    }
    m.embed_tokens = m.embed_tokens.affine(50.0, 0.0).unwrap();
    if !tied {
        let w = m.embed_tokens.affine(0.5, 0.0).unwrap().flip_rows();
        m.lm_head = Some(w);
        m.config.tie_word_embeddings = false;
        if let serde_json::Value::Object(o) = &mut m.config.raw {
            o.insert("tie_word_embeddings".into(), false.into());
        }
    }
    m.save_hf(dir, DType::F32, None).unwrap();
    Model::load(dir, &Device::Cpu, DType::F32).unwrap()
}

trait FlipRows {
    fn flip_rows(&self) -> Tensor;
}
impl FlipRows for Tensor {
    /// Row-reversed copy (an lm_head that differs from the embedding).
    fn flip_rows(&self) -> Tensor {
        let n = self.dim(0).unwrap();
        let idx: Vec<u32> = (0..n as u32).rev().collect();
        self.index_select(&Tensor::new(idx.as_slice(), &Device::Cpu).unwrap(), 0)
            .unwrap()
    }
}

fn prompt(n: usize, vocab: usize) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i * 37 + 11) % (vocab as u32 - 30))
        .collect()
}

/// Prefill + 6 decode steps on both models; returns (max |Δlogit|, logit std,
/// fraction of equal greedy tokens along the reference's greedy path).
fn compare(model: &Model, q: &Model, batch: usize) -> (f32, f32, f32) {
    let vocab = model.config.vocab_size;
    let p: Vec<u32> = (0..batch)
        .flat_map(|b| prompt(12 + b, vocab)[b..].to_vec())
        .collect();
    let ids = Tensor::from_vec(p, (batch, 12), &Device::Cpu).unwrap();
    let mut c1 = model.new_cache();
    let mut c2 = q.new_cache();
    let a = model.forward(&ids, &mut c1, None).unwrap();
    let b = q.forward(&ids, &mut c2, None).unwrap();
    let mut maxd = max_abs_diff(&a, &b);
    let std = a
        .flatten_all()
        .unwrap()
        .var_keepdim(0)
        .unwrap()
        .sqrt()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()[0];
    let (mut same, mut total) = (0usize, 0usize);
    let mut last = a.narrow(1, 11, 1).unwrap().squeeze(1).unwrap();
    let mut last_q = b.narrow(1, 11, 1).unwrap().squeeze(1).unwrap();
    for _ in 0..6 {
        let next = last.argmax(1).unwrap().to_dtype(DType::U32).unwrap();
        let next_q = last_q.argmax(1).unwrap().to_dtype(DType::U32).unwrap();
        let (n1, n2) = (
            next.to_vec1::<u32>().unwrap(),
            next_q.to_vec1::<u32>().unwrap(),
        );
        same += n1.iter().zip(&n2).filter(|(x, y)| x == y).count();
        total += n1.len();
        // Teacher-force the reference's token into both so the paths stay comparable.
        let x = next.reshape((batch, 1)).unwrap();
        last = model.forward_last(&x, &mut c1, None).unwrap();
        last_q = q.forward_last(&x, &mut c2, None).unwrap();
        maxd = maxd.max(max_abs_diff(&last, &last_q));
    }
    (maxd, std, same as f32 / total as f32)
}

#[test]
fn f32_round_trip_matches_safetensors_model() {
    for tied in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let model = tiny_dir(dir.path(), 64, 128, 16, tied, 3);
        let out = dir.path().join("model-f32.gguf");
        let ex = export_gguf(&model, dir.path(), &out, GgufDType::F32).unwrap();
        assert!(ex.fallbacks.is_empty(), "{:?}", ex.fallbacks);
        let q = Model::load_gguf(&out, &Device::Cpu).unwrap();
        assert_eq!(q.config.tie_word_embeddings, tied);
        for batch in [1, 2] {
            let (d, std, same) = compare(&model, &q, batch);
            println!("f32 tied={tied} batch={batch}: max diff {d:.2e} (logit std {std:.2}), greedy agree {same}");
            assert!(std > 0.5, "logits too flat for a meaningful check: {std}");
            assert!(d < 1e-4, "f32 gguf logits differ by {d}");
            assert_eq!(same, 1.0);
        }
    }
}

#[test]
fn quantized_gguf_stays_close() {
    let dir = tempfile::tempdir().unwrap();
    // Rows of 256 (hidden, 4 heads x 64, ffn) so Q4_K applies without fallback.
    let model = tiny_dir(dir.path(), 256, 512, 64, true, 5);
    for (dt, max_rel, min_agree) in [
        (GgufDType::Q8_0, 0.1, 0.8),
        (GgufDType::Q4_0, 0.6, 0.5),
        (GgufDType::Q4K, 0.6, 0.5),
    ] {
        let out = dir.path().join(format!("model-{dt:?}.gguf"));
        let ex = export_gguf(&model, dir.path(), &out, dt).unwrap();
        assert!(ex.fallbacks.is_empty(), "{:?}", ex.fallbacks);
        let q = Model::load_gguf(&out, &Device::Cpu).unwrap();
        if dt == GgufDType::Q8_0 && fc_model::q8gemv::available() {
            assert_eq!(q.embed_tokens.dims()[0], 0, "a tied Q8_0 table lives only in the head");
        }
        // Embedding rows are the table's rows, wherever the table lives.
        let table = q.embedding_table().unwrap();
        let ids = [0u32, 7, q.config.vocab_size as u32 - 1];
        let rows = q.embed_rows(&ids).unwrap();
        let want = table.index_select(&Tensor::new(&ids, &Device::Cpu).unwrap(), 0).unwrap();
        assert_eq!(max_abs_diff(&rows, &want), 0.0, "{dt:?}");
        let (d, std, same) = compare(&model, &q, 1);
        println!(
            "{dt:?}: {} bytes, max diff {d:.3} (logit std {std:.2}, rel {:.3}), greedy agree {same}",
            ex.file_bytes,
            d / std
        );
        assert!(d / std < max_rel, "{dt:?}: max diff {d} vs logit std {std}");
        assert!(same >= min_agree, "{dt:?}: greedy agreement {same}");
        // In-memory quantization takes the same path as the file.
        let qm = model.quantize(dt).unwrap();
        let ids = Tensor::new(&[[3u32, 9, 27, 81]], &Device::Cpu).unwrap();
        let a = q.forward(&ids, &mut q.new_cache(), None).unwrap();
        let b = qm.forward(&ids, &mut qm.new_cache(), None).unwrap();
        assert!(max_abs_diff(&a, &b) < 1e-5);
        // Quantized weights are inference-only: training says so instead of running.
        let batch = fc_model::TokenBatch::right_padded(&[vec![3, 9, 27, 81]], 0).unwrap();
        let err = qm.train_logprobs(&batch, None, None, 64).unwrap_err();
        assert!(err.to_string().contains("inference-only"), "{err}");
        // Saved as HF, the quantized model is its dequantized weights.
        let hf = dir.path().join(format!("hf-{dt:?}"));
        qm.save_hf(&hf, DType::F32, Some(dir.path())).unwrap();
        let back = Model::load(&hf, &Device::Cpu, DType::F32).unwrap();
        let c = back.forward(&ids, &mut back.new_cache(), None).unwrap();
        assert!(max_abs_diff(&b, &c) < 0.05 * std, "{dt:?}: dequantized save differs");
    }
}

#[test]
fn metadata_and_tensor_names_follow_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_dir(dir.path(), 64, 128, 16, false, 7);
    let out = dir.path().join("m.gguf");
    export_gguf(&model, dir.path(), &out, GgufDType::Q8_0).unwrap();
    // `FC_GGUF_EXPORT=/tmp/g cargo test -p fc-model --test gguf metadata` keeps the file
    // and its HF dir for `scripts/model/check_gguf.py`.
    if let Ok(keep) = std::env::var("FC_GGUF_EXPORT") {
        let keep = Path::new(&keep);
        model
            .save_hf(&keep.join("hf"), DType::F32, Some(dir.path()))
            .unwrap();
        std::fs::copy(&out, keep.join("tiny-q8_0.gguf")).unwrap();
        export_gguf(
            &model,
            dir.path(),
            &keep.join("tiny-q4_0.gguf"),
            GgufDType::Q4_0,
        )
        .unwrap();
        export_gguf(
            &model,
            dir.path(),
            &keep.join("tiny-f32.gguf"),
            GgufDType::F32,
        )
        .unwrap();
    }
    let mut f = std::fs::File::open(&out).unwrap();
    let ct = Content::read(&mut f).unwrap();
    let md = &ct.metadata;
    let s = |k: &str| {
        md.get(k)
            .unwrap_or_else(|| panic!("missing {k}"))
            .to_string()
            .unwrap()
            .clone()
    };
    let u = |k: &str| {
        md.get(k)
            .unwrap_or_else(|| panic!("missing {k}"))
            .to_u32()
            .unwrap()
    };
    let f32v = |k: &str| {
        md.get(k)
            .unwrap_or_else(|| panic!("missing {k}"))
            .to_f32()
            .unwrap()
    };
    let c = &model.config;
    assert_eq!(s("general.architecture"), "qwen3");
    assert_eq!(
        u("qwen3.context_length") as usize,
        c.max_position_embeddings
    );
    assert_eq!(u("qwen3.embedding_length"), 64);
    assert_eq!(u("qwen3.block_count"), 2);
    assert_eq!(u("qwen3.feed_forward_length"), 128);
    assert_eq!(u("qwen3.attention.head_count"), 4);
    assert_eq!(u("qwen3.attention.head_count_kv"), 2);
    assert_eq!(u("qwen3.attention.key_length"), 16);
    assert_eq!(u("qwen3.attention.value_length"), 16);
    assert_eq!(f32v("qwen3.rope.freq_base"), 1.0e6);
    assert_eq!(f32v("qwen3.attention.layer_norm_rms_epsilon"), 1.0e-6);
    assert_eq!(u("general.file_type"), 7);
    assert_eq!(s("tokenizer.ggml.model"), "gpt2");
    assert_eq!(s("tokenizer.ggml.pre"), "qwen2");
    assert!(s("tokenizer.chat_template").contains("<|im_start|>"));
    let tok = fc_model::io::load_tokenizer(dir.path()).unwrap();
    let id = |t: &str| tok.token_to_id(t).unwrap();
    assert_eq!(u("tokenizer.ggml.eos_token_id"), id("<|im_end|>"));
    assert_eq!(u("tokenizer.ggml.padding_token_id"), id("<|endoftext|>"));
    assert_eq!(u("tokenizer.ggml.bos_token_id"), id("<|endoftext|>"));
    let tokens = md["tokenizer.ggml.tokens"].to_vec().unwrap();
    let types = md["tokenizer.ggml.token_type"].to_vec().unwrap();
    assert_eq!(tokens.len(), c.vocab_size);
    assert_eq!(types.len(), c.vocab_size);
    let tok_at = |i: u32| tokens[i as usize].to_string().unwrap().clone();
    let ty_at = |i: u32| types[i as usize].to_i32().unwrap();
    assert_eq!(tok_at(id("<|im_end|>")), "<|im_end|>");
    assert_eq!(ty_at(id("<|im_end|>")), 3); // control
    assert_eq!(ty_at(id("<|fim_pad|>")), 3); // looks special
    assert_eq!(ty_at(id("<tool_call>")), 4); // user-defined
    assert_eq!(ty_at(id("Ġthe").min(id("a"))), 1);
    let n_real = tok.get_vocab_size(true);
    if n_real < c.vocab_size {
        assert_eq!(tok_at(n_real as u32), format!("[PAD{n_real}]"));
        assert_eq!(ty_at(n_real as u32), 5);
    }
    let merges = md["tokenizer.ggml.merges"].to_vec().unwrap();
    assert!(!merges.is_empty());
    assert!(merges
        .iter()
        .all(|m| m.to_string().unwrap().split(' ').count() == 2));
    // Tensor names / shapes / types.
    let mut names: Vec<&String> = ct.tensor_infos.keys().collect();
    names.sort();
    let expect_per_layer = [
        "attn_norm",
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "attn_q_norm",
        "attn_k_norm",
        "ffn_norm",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
    ];
    assert_eq!(names.len(), 3 + 2 * expect_per_layer.len());
    for i in 0..2 {
        for n in expect_per_layer {
            let key = format!("blk.{i}.{n}.weight");
            let ti = ct
                .tensor_infos
                .get(&key)
                .unwrap_or_else(|| panic!("missing {key}"));
            if n.ends_with("norm") {
                assert_eq!(ti.ggml_dtype, GgmlDType::F32, "{key}");
            } else {
                assert_eq!(ti.ggml_dtype, GgmlDType::Q8_0, "{key}");
            }
        }
    }
    let q = &ct.tensor_infos["blk.0.attn_q.weight"];
    assert_eq!(q.shape.dims(), &[64, 64]); // [n_head*head_dim, hidden] in candle order
    let k = &ct.tensor_infos["blk.0.attn_k.weight"];
    assert_eq!(k.shape.dims(), &[32, 64]);
    assert_eq!(
        ct.tensor_infos["token_embd.weight"].shape.dims(),
        &[c.vocab_size, 64]
    );
    assert!(ct.tensor_infos.contains_key("output.weight"));
    assert!(ct.tensor_infos.contains_key("output_norm.weight"));
    let _ = GValue::U32(0);
}

#[test]
fn bad_inputs_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    // Not a GGUF file.
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"definitely not gguf").unwrap();
    assert!(Model::load_gguf(&junk, &Device::Cpu).is_err());
    assert!(Model::load_gguf(&dir.path().join("missing.gguf"), &Device::Cpu).is_err());
    // Truncated file.
    let model = tiny_dir(dir.path(), 64, 128, 16, true, 9);
    let out = dir.path().join("t.gguf");
    export_gguf(&model, dir.path(), &out, GgufDType::F32).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 1000]).unwrap();
    assert!(Model::load_gguf(&cut, &Device::Cpu).is_err());
    // Missing tokenizer.json.
    let empty = tempfile::tempdir().unwrap();
    assert!(export_gguf(
        &model,
        empty.path(),
        &dir.path().join("x.gguf"),
        GgufDType::F32
    )
    .is_err());
    // Out-of-range token id.
    let q = Model::load_gguf(&out, &Device::Cpu).unwrap();
    let ids = Tensor::new(&[[100_000u32]], &Device::Cpu).unwrap();
    assert!(q.forward(&ids, &mut q.new_cache(), None).is_err());
}
