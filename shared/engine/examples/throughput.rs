//! Decode throughput probe: batch 1 vs aggregate over 8 concurrent requests on a
//! mid-size random Qwen3 (not a test).
//!
//! `cargo run --profile test -p fc-engine --example throughput` (reuses the test build).
//! Sizes via env: `HIDDEN` (512), `LAYERS` (8), `VOCAB` (32768), `TOKENS` (64), `BATCH` (8).

use fc_chat::Tokenizer;
use fc_engine::{Engine, EngineConfig, Request, SamplingParams};
use fc_model::{DType, Device, Model, ModelConfig};
use std::time::Instant;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let hidden = env("HIDDEN", 512);
    let layers = env("LAYERS", 8);
    let vocab = env("VOCAB", 32768);
    let tokens = env("TOKENS", 64);
    let batch = env("BATCH", 8);
    let heads = (hidden / 64).max(1);
    let kv = (heads / 2).max(1);
    let cfg = ModelConfig::qwen3(vocab, hidden, 3 * hidden, layers, heads, kv, 64, true, 0, 1)?;
    let model = Model::random(cfg, 1, &Device::Cpu, DType::F32)?;
    let texts: Vec<String> = (0..20)
        .map(|i| format!("probe text {i} tool call"))
        .collect();
    let tok = Tokenizer::from_parts(fc_model::tiny::train_tokenizer(&texts, 320)?, None, None);
    // Baseline: fc-model's own single-sequence decode loop.
    let t0 = Instant::now();
    let g = fc_model::generate_with(
        &model,
        None,
        &(0..32).map(|j| (j * 7 % 300) as u32).collect::<Vec<_>>(),
        &fc_model::GenerateParams {
            max_tokens: tokens,
            stop_token_ids: Some(vec![]),
            ..Default::default()
        },
    )?;
    let base = g.token_ids.len() as f64 / t0.elapsed().as_secs_f64();
    let engine = Engine::start(model, tok, EngineConfig::default())?;
    let params = SamplingParams {
        max_tokens: tokens,
        stop_at_eos: false,
        ..Default::default()
    };
    let prompt =
        |i: usize| -> Vec<u32> { (0..32).map(|j| ((i * 31 + j * 7) % 300) as u32).collect() };
    // Warm-up.
    engine.generate_blocking(Request::new(prompt(99), SamplingParams::greedy(4)))?;

    let measure = |b: usize| -> Result<(f64, f64), Box<dyn std::error::Error>> {
        let s0 = engine.stats();
        let t0 = Instant::now();
        let prompts: Vec<Vec<u32>> = (0..b).map(prompt).collect();
        let outs = engine.generate_batch(&prompts, &params)?;
        let dt = t0.elapsed().as_secs_f64();
        let s1 = engine.stats();
        let n: usize = outs.iter().map(|o| o.token_ids.len()).sum();
        let steps = (s1.decode_steps - s0.decode_steps) as f64;
        Ok((n as f64 / dt, steps))
    };
    let (one, steps1) = measure(1)?;
    let (many, steps_b) = measure(batch)?;
    println!(
        "model hidden={hidden} layers={layers} vocab={vocab}; {tokens} new tokens per request, 32-token prompts"
    );
    println!("fc_model::generate_with (no engine): {base:.1} tok/s");
    println!("batch 1: {one:.1} tok/s ({steps1} decode steps)");
    println!(
        "batch {batch}: {many:.1} tok/s aggregate ({steps_b} decode steps), x{:.2}",
        many / one
    );
    Ok(())
}
