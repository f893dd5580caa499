#![allow(dead_code)]

use fc_chat::Tokenizer;
use fc_engine::{Engine, EngineConfig, EngineHandle};
use fc_model::{DType, Device, LoraAdapter, LoraConfig, Model, ModelConfig, Tensor};

/// A tiny byte-level BPE tokenizer (multi-byte UTF-8 texts, so some tokens are partial
/// characters) and a random Qwen3 whose vocabulary has padding rows past the tokenizer's.
pub fn tokenizer() -> Tokenizer {
    let texts: Vec<String> = (0..40)
        .map(|i| {
            format!(
                "Call the weather tool for city {i}: résumé naïve 東京 {} 🙂 ok <tool_call>{{\"name\": \"f{i}\"}}</tool_call>",
                i * 7
            )
        })
        .collect();
    let inner = fc_model::tiny::train_tokenizer(&texts, 400).expect("tokenizer");
    Tokenizer::from_parts(inner, None, None)
}

pub fn model(tok: &Tokenizer) -> Model {
    model_in(tok, DType::F32)
}

/// [`model`] with weights of `dtype`.
pub fn model_in(tok: &Tokenizer, dtype: DType) -> Model {
    let vocab = tok.vocab_size().div_ceil(64) * 64;
    let eos = tok.token_to_id("<|im_end|>").unwrap_or(0);
    let cfg = ModelConfig::qwen3(vocab, 64, 128, 2, 4, 2, 16, true, 0, eos).unwrap();
    Model::random(cfg, 11, &device(), dtype).unwrap()
}

/// The device the suite runs on: `FC_DEVICE` (the CPU when unset), so that
/// `FC_DEVICE=cuda cargo test -p fc-engine --features cuda` checks a CUDA build on a GPU.
pub fn device() -> Device {
    fc_model::device::from_env().expect("FC_DEVICE")
}

/// An adapter with non-zero B so it changes the output.
pub fn adapter(m: &Model, seed: u64) -> LoraAdapter {
    let ad = LoraAdapter::new(m, LoraConfig::default(), seed).unwrap();
    for p in ad.layers.iter().flatten().flatten() {
        let (o, r) = p.b.as_tensor().dims2().unwrap();
        p.b.set(&Tensor::randn(0f32, 0.2, (o, r), m.device()).unwrap())
            .unwrap();
    }
    ad
}

pub struct Setup {
    pub engine: EngineHandle,
    pub model: Model,
    pub tok: Tokenizer,
}

pub fn setup(config: EngineConfig) -> Setup {
    let tok = tokenizer();
    let model = model(&tok);
    let engine = Engine::start(model.clone(), tok.clone(), config).unwrap();
    Setup { engine, model, tok }
}

/// Deterministic pseudo-random prompt of `len` ids below the tokenizer vocabulary.
pub fn prompt(len: usize, salt: u32, vocab: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(salt * 97 + 13) >> 7) % vocab as u32)
        .collect()
}

/// Raw log-softmax of the full (non-cached, fresh) forward at each completion position.
pub fn reference_logprobs(
    m: &Model,
    lora: Option<&LoraAdapter>,
    prompt: &[u32],
    completion: &[u32],
) -> Vec<f32> {
    let mut ids = prompt.to_vec();
    ids.extend_from_slice(completion);
    let t = Tensor::from_slice(&ids, (1, ids.len()), m.device()).unwrap();
    let mut cache = m.new_cache();
    let logits = m.forward(&t, &mut cache, lora).unwrap().squeeze(0).unwrap();
    let logits = logits.to_dtype(DType::F32).unwrap();
    let lsm = candle_nn_log_softmax(&logits);
    completion
        .iter()
        .enumerate()
        .map(|(j, &tok)| lsm[prompt.len() - 1 + j][tok as usize])
        .collect()
}

fn candle_nn_log_softmax(logits: &Tensor) -> Vec<Vec<f32>> {
    let rows: Vec<Vec<f32>> = logits.to_vec2().unwrap();
    rows.into_iter()
        .map(|r| {
            let max = r.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = r.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln() + max;
            r.iter().map(|&x| (x as f64 - lse) as f32).collect()
        })
        .collect()
}
