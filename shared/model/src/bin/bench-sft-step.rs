//! Speed / memory benchmark of one LoRA SFT step on a Qwen3-0.6B-shaped random model
//! (hidden 1024, 28 layers, 16/8 heads, head_dim 128, intermediate 3072, vocab 151936,
//! tied embeddings), f32 on CPU.
//!
//! Why: it is the number to compare with PyTorch + PEFT
//! (`scripts/bench/sft_step_torch.py`, same shapes and step) when deciding how big a
//! fine-tune the CPU services can take, and it guards the memory savings of
//! `fc_model::ops` against regressions.
//!
//! ```text
//! cargo run --release -p fc-model --bin bench-sft-step -- [--seq 512] [--batch 2]
//!     [--steps 3] [--layers 28] [--rank 32] [--decode 0]
//! cargo run --release -p fc-model --features mimalloc --bin bench-sft-step -- ...
//! ```
//!
//! tokens/s counts `batch * seq` per step over the steps after the first (the first one
//! pays for allocator / page-fault warm-up and is reported separately). Peak RSS is the
//! process high-water mark (`VmHWM`), weights included, like `ru_maxrss` in the Python
//! script.

use candle_core::{Device, Tensor};
use fc_model::{DType, LoraAdapter, LoraConfig, Model, ModelConfig, TokenBatch};
use std::time::Instant;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(feature = "mimalloc")]
extern "C" {
    fn mi_option_set(option: std::os::raw::c_int, value: std::os::raw::c_long);
}

/// Same setting as the services (`fc_runtime::tune_allocator`): freed memory stays mapped.
fn tune_allocator() {
    #[cfg(feature = "mimalloc")]
    // SAFETY: scalar C call; 15 is `mi_option_purge_delay` in mimalloc v2 and v3.
    unsafe {
        mi_option_set(15, -1);
    }
}

const ALLOCATOR: &str = if cfg!(feature = "mimalloc") {
    "mimalloc"
} else {
    "system"
};

/// A `/proc/self/status` field in MiB (0 where unavailable, e.g. not Linux).
fn status_mib(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

struct Args {
    seq: usize,
    batch: usize,
    steps: usize,
    layers: usize,
    rank: usize,
    decode: usize,
    /// The tiny preset's shape (hidden 128, 4 layers, 4/2 heads x 32, inter 384, vocab 3000).
    tiny: bool,
    /// Full fine-tuning (every weight trainable) instead of LoRA.
    full: bool,
    /// Decoder layers recomputed in the backward (gradient checkpointing, LoRA only).
    recompute: usize,
    /// Print the autograd tape's tensors (after the first forward) grouped by shape.
    census: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        seq: 512,
        batch: 2,
        steps: 3,
        layers: 28,
        rank: 32,
        decode: 0,
        tiny: false,
        full: false,
        census: false,
        recompute: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        if flag == "--full" {
            a.full = true;
            continue;
        }
        if flag == "--census" {
            a.census = true;
            continue;
        }
        if flag == "--tiny" {
            a.tiny = true;
            a.layers = 4;
            continue;
        }
        let val = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?
            .parse::<usize>()
            .map_err(|e| format!("{flag}: {e}"))?;
        match flag.as_str() {
            "--seq" => a.seq = val,
            "--batch" => a.batch = val,
            "--steps" => a.steps = val,
            "--layers" => a.layers = val,
            "--rank" => a.rank = val,
            "--decode" => a.decode = val,
            "--recompute" => a.recompute = val,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.seq < 2 || a.batch == 0 || a.steps == 0 || a.layers == 0 || a.rank == 0 {
        return Err("sizes must be positive (seq >= 2)".into());
    }
    Ok(a)
}

/// Bytes held by the tape: every tracked node's storage, counted once, grouped by shape.
/// This is what a training step keeps alive from its forward until its backward ends.
fn tape_census(loss: &candle_core::Tensor) {
    use std::collections::{BTreeMap, HashSet};
    let mut seen = HashSet::new();
    let mut by_shape: BTreeMap<Vec<usize>, (usize, usize)> = BTreeMap::new();
    let mut total = 0usize;
    for node in loss.sorted_nodes() {
        let (st, _) = node.storage_and_layout();
        let key = &*st as *const candle_core::Storage as usize;
        if !seen.insert(key) {
            continue;
        }
        let bytes = node.elem_count() * node.dtype().size_in_bytes();
        total += bytes;
        let e = by_shape.entry(node.dims().to_vec()).or_default();
        e.0 += 1;
        e.1 += bytes;
    }
    let mut rows: Vec<_> = by_shape.into_iter().collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1 .1));
    eprintln!("tape: {:.0} MiB in {} storages", total as f64 / 1048576.0, seen.len());
    for (shape, (n, bytes)) in rows.iter().take(20) {
        eprintln!("  {shape:?} x{n}: {:.0} MiB", *bytes as f64 / 1048576.0);
    }
}

fn main() {
    tune_allocator();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}");
            }
            eprintln!(
                "usage: bench-sft-step [--tiny] [--full] [--census] [--recompute 0] [--seq 512] [--batch 2] [--steps 3] [--layers 28] [--rank 32] [--decode 0]"
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(a: &Args) -> fc_model::Result<()> {
    let dev = Device::Cpu;
    let cfg = if a.tiny {
        ModelConfig::qwen3(3000, 128, 384, a.layers, 4, 2, 32, true, 0, 1)?
    } else {
        ModelConfig::qwen3(
            151_936, 1024, 3072, a.layers, 16, 8, 128, true, 151_643, 151_645,
        )?
    };
    let vocab = cfg.vocab_size as u32;
    let t0 = Instant::now();
    let mut model = Model::random(cfg, 0, &dev, DType::F32)?;
    let full_vars: Vec<fc_model::Var> = if a.full { model.make_trainable()?.into_iter().map(|(_, v)| v).collect() } else { Vec::new() };
    model.set_recompute_layers(a.recompute);
    let model = model;
    let ad = LoraAdapter::new(
        &model,
        LoraConfig {
            r: a.rank,
            alpha: 2.0 * a.rank as f64,
            dropout: 0.0,
            ..Default::default()
        },
        1,
    )?;
    let init_s = t0.elapsed().as_secs_f64();
    let rss_init = status_mib("VmRSS:");
    eprintln!(
        "init {init_s:.1}s, lora params {}, RSS after init {rss_init:.0} MiB, allocator {ALLOCATOR}, threads {}",
        ad.num_params(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    let n = a.batch * a.seq;
    let ids: Vec<u32> = (0..n as u32).map(|i| (i * 7919 + 13) % (vocab - 10)).collect();
    let targets: Vec<u32> = (0..n as u32)
        .map(|i| (i * 7919 + 13 + 7919) % (vocab - 10))
        .collect();
    let batch = TokenBatch {
        batch: a.batch,
        seq_len: a.seq,
        input_ids: ids,
        attention_mask: vec![1; n],
        targets,
    };
    let mut opt = if a.full {
        fc_model::AdamW::new(full_vars.clone(), fc_model::AdamWParams { lr: 1e-4, weight_decay: 0.0, ..Default::default() })?
    } else {
        ad.adamw(1e-4, 0.0)?
    };
    let adapter = if a.full { None } else { Some(&ad) };
    let mut times = Vec::with_capacity(a.steps);
    for step in 0..a.steps {
        let t = Instant::now();
        let lp = model.train_logprobs(&batch, adapter, None, 256)?;
        let loss = lp.mean_all()?.neg()?;
        let tf = t.elapsed().as_secs_f64();
        let rss_fwd = status_mib("VmRSS:");
        if a.census && step == 0 {
            tape_census(&loss);
        }
        let grads = loss.backward()?;
        let tb = t.elapsed().as_secs_f64() - tf;
        opt.step(&grads)?;
        drop(grads);
        let dt = t.elapsed().as_secs_f64();
        times.push(dt);
        eprintln!(
            "step {step}: loss {:.4} fwd {tf:.2}s bwd {tb:.2}s total {dt:.2}s, RSS after forward {rss_fwd:.0} MiB, VmHWM {:.0} MiB",
            loss.to_scalar::<f32>()?,
            status_mib("VmHWM:")
        );
    }
    let measured = if times.len() > 1 {
        &times[1..]
    } else {
        &times[..]
    };
    let mean = measured.iter().sum::<f64>() / measured.len() as f64;
    let peak = status_mib("VmHWM:");
    println!("| impl | alloc | shape | train | layers | seq | batch | r | steps | s/step | tokens/s | first step s | peak RSS MiB | RSS after init MiB |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| fc-model (candle) | {ALLOCATOR} | {} | {} | {} | {} | {} | {} | {} | {mean:.2} | {:.1} | {:.2} | {peak:.0} | {rss_init:.0} |",
        if a.tiny { "tiny" } else { "qwen3-0.6b" },
        match (a.full, a.recompute) {
            (true, _) => "full".to_string(),
            (false, 0) => format!("lora r{}", a.rank),
            (false, n) => format!("lora r{}, {n} layers recomputed", a.rank),
        },
        a.layers,
        a.seq,
        a.batch,
        a.rank,
        a.steps,
        n as f64 / mean,
        times[0],
    );
    if a.decode > 0 {
        decode_bench(&model, &ad, a.decode)?;
    }
    Ok(())
}

/// Cached decode speed: dense f32 with the unmerged adapter, and Q8_0 (merged).
fn decode_bench(model: &Model, ad: &LoraAdapter, steps: usize) -> fc_model::Result<()> {
    let dev = Device::Cpu;
    let prompt: Vec<u32> = (0..32u32).map(|i| i * 31 + 5).collect();
    let p = Tensor::from_slice(&prompt, (1, prompt.len()), &dev)?;
    let mut cache = model.new_cache();
    model.forward_last(&p, &mut cache, Some(ad))?;
    let t = Instant::now();
    for i in 0..steps as u32 {
        let x = Tensor::from_slice(&[i + 10], (1, 1), &dev)?;
        model.forward_last(&x, &mut cache, Some(ad))?;
    }
    let dense = steps as f64 / t.elapsed().as_secs_f64();
    let merged = model.merge_lora(ad)?;
    let q = merged.quantize(fc_model::GgufDType::Q8_0)?;
    drop(merged);
    let mut qc = q.new_cache();
    q.forward_last(&p, &mut qc, None)?;
    let t = Instant::now();
    for i in 0..steps as u32 {
        let x = Tensor::from_slice(&[i + 10], (1, 1), &dev)?;
        q.forward_last(&x, &mut qc, None)?;
    }
    let q8 = steps as f64 / t.elapsed().as_secs_f64();
    println!("decode (batch 1, after a 32-token prompt): dense f32 + LoRA {dense:.1} tok/s, Q8_0 merged {q8:.1} tok/s");
    Ok(())
}
