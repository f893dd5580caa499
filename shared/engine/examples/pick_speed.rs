//! Sampler speed probe (not a test): milliseconds per pick on a 151,936-entry logits row
//! (Qwen3's vocabulary) for greedy, plain temperature, and top-k / top-p / min-p
//! sampling, through the whole-row paths (`Allowed::All`) against the general
//! candidate-list path (the same row behind an all-true mask, which draws the same
//! tokens).
//!
//! `cargo run --release -p fc-engine --example pick_speed`
//!
//! The row is peaked like a trained model's: a smooth background and a few dozen
//! standouts. A decode step of 8 sequences makes 8 picks, spread over the pool.

use fc_engine::params::{Allowed, SamplingParams};
use fc_engine::sampler::pick;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

fn main() {
    let v = 151_936;
    let row: Vec<f32> = (0..v)
        .map(|i| ((i as f32 * 0.618).sin() * 6.0) - 2.0 + if i % 4999 == 5 { 9.0 } else { 0.0 })
        .collect();
    let mask = Allowed::Mask(vec![true; v]);
    let cases = [
        ("greedy", SamplingParams { temperature: 0.0, ..Default::default() }),
        ("temperature 1.0", SamplingParams { temperature: 1.0, ..Default::default() }),
        ("t 0.7, top-p 0.8, top-k 20", SamplingParams { temperature: 0.7, top_p: 0.8, top_k: 20, ..Default::default() }),
        ("t 0.6, top-p 0.95", SamplingParams { temperature: 0.6, top_p: 0.95, ..Default::default() }),
        ("t 1.0, min-p 0.05", SamplingParams { temperature: 1.0, min_p: 0.05, ..Default::default() }),
    ];
    println!("| sampling | whole row ms/pick | general path ms/pick | speedup |");
    println!("|---|---|---|---|");
    for (name, p) in cases {
        let time = |allowed: &Allowed| {
            let n = 40;
            let t = Instant::now();
            for seed in 0..n {
                std::hint::black_box(pick(&row, &p, allowed, v, &mut ChaCha8Rng::seed_from_u64(seed)));
            }
            t.elapsed().as_secs_f64() * 1e3 / n as f64
        };
        let (fast, general) = (time(&Allowed::All), time(&mask));
        println!("| {name} | {fast:.3} | {general:.3} | {:.1}x |", general / fast);
    }
}
