//! Inference speed of the engine on a Qwen3-0.6B-shaped random model: 512-token prefill,
//! batch-1 decode and aggregate decode of 8 concurrent sequences, dense f32 and GGUF
//! Q8_0, with decode as a fraction of the memory roofline measured in the same run.
//!
//! ```text
//! bench-engine --write DIR [--tokenizer ../shared/qwen3-tokenizer] [--layers 28]
//!     writes DIR (HF safetensors, f32, with the tokenizer files) and DIR/model-f32.gguf
//! bench-engine --bench DIR [--q8 FILE.gguf [--skip-f32 1]] [--prompt 512] [--decode 32] [--ways 8]
//!     [--device cpu|cuda|cuda:N]
//!     prints the markdown table (header + one row per weight type; Q8_0 twice, with an
//!     f32 and an f16 KV cache, llama.cpp's default)
//! ```
//!
//! Batch-1 and N-way decode alternate for 5 rounds: the tokens/s columns are the best
//! round of each, and `N-way / b1` is the median of the 5 rounds' own ratios.
//!
//! `--device` defaults to `FC_DEVICE` (the CPU when unset); a CUDA run needs a binary
//! built with `--features cuda` and prints no roofline (the read bandwidth measured here
//! is the CPU's).
//!
//! Everything runs through [`fc_engine::Engine`] (the scheduler the gateway uses), with
//! the prefix cache off so every prefill is computed. `scripts/bench/engine_peers.py`
//! measures PyTorch transformers and llama.cpp on the same files the same way.

use std::path::{Path, PathBuf};
use std::time::Instant;

use fc_engine::{Engine, EngineConfig, Event, Request, SamplingParams};
use fc_model::packed::PackedF32;
use fc_model::{DType, Device, GgufDType, Model, ModelConfig};

/// The services run on mimalloc (fc-runtime); measure the engine the same way.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(feature = "mimalloc")]
extern "C" {
    fn mi_option_set(option: std::os::raw::c_int, value: std::os::raw::c_long);
}

/// Same setting as the services (`fc_runtime::tune_allocator`): freed memory stays mapped.
/// Without it mimalloc hands freed pages back after 10 ms and the kernel zeroes them again
/// on the next step: on a 2-core Xeon VM, ~900 page faults per 8-way Q8_0 decode step and
/// `clear_page_erms` at 9-13% of the run's samples.
fn tune_allocator() {
    #[cfg(feature = "mimalloc")]
    // SAFETY: scalar C call; 15 is `mi_option_purge_delay` in mimalloc v2 and v3.
    unsafe {
        mi_option_set(15, -1);
    }
}

struct Args {
    write: Option<PathBuf>,
    bench: Option<PathBuf>,
    q8: Option<PathBuf>,
    tokenizer: PathBuf,
    layers: usize,
    prompt: usize,
    decode: usize,
    ways: usize,
    /// `--skip-f32 1`: only the `--q8` row (quicker A/B runs of the quantized path).
    skip_f32: bool,
    device: fc_model::device::DeviceSpec,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        write: None,
        bench: None,
        q8: None,
        tokenizer: PathBuf::from("../shared/qwen3-tokenizer"),
        layers: 28,
        prompt: 512,
        decode: 32,
        ways: 8,
        skip_f32: false,
        device: fc_model::device::DeviceSpec::from_env().map_err(|e| e.to_string())?,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let val = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = || val.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--write" => a.write = Some(val.into()),
            "--bench" => a.bench = Some(val.into()),
            "--q8" => a.q8 = Some(val.into()),
            "--tokenizer" => a.tokenizer = val.into(),
            "--layers" => a.layers = num()?,
            "--prompt" => a.prompt = num()?,
            "--decode" => a.decode = num()?,
            "--ways" => a.ways = num()?,
            "--skip-f32" => a.skip_f32 = num()? != 0,
            "--device" => a.device = val.parse().map_err(|e| format!("--device: {e}"))?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.write.is_none() && a.bench.is_none() {
        return Err("one of --write or --bench is required".into());
    }
    if a.prompt == 0 || a.decode < 2 || a.ways == 0 {
        return Err("--prompt, --ways > 0 and --decode >= 2".into());
    }
    Ok(a)
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
                "usage: bench-engine --write DIR [--tokenizer DIR] [--layers 28] | --bench DIR [--q8 FILE [--skip-f32 1]] [--prompt 512] [--decode 32] [--ways 8] [--device cpu|cuda|cuda:N]"
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

type BoxError = Box<dyn std::error::Error>;

fn run(a: &Args) -> Result<(), BoxError> {
    if std::env::var("FC_BENCH_KERNEL").is_ok() {
        kernel_probe();
        return Ok(());
    }
    if let (Ok(_), Some(dir)) = (std::env::var("FC_BENCH_RAGGED"), &a.bench) {
        return ragged_probe(dir, a.q8.as_deref(), a.ways);
    }
    if let Some(dir) = &a.write {
        write_model(dir, &a.tokenizer, a.layers)?;
    }
    if let Some(dir) = &a.bench {
        let device = a.device.open()?;
        // The roofline is the CPU's: on a GPU the column reads n/a.
        let bw = device.is_cpu().then(read_bandwidth);
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        match bw {
            Some(bw) => println!("read bandwidth {:.1} GB/s ({threads} threads, 1 GiB, best of 5)", bw / 1e9),
            None => println!("device {}", a.device),
        }
        println!("| impl | weights | threads | prefill {} tok/s | decode b1 tok/s | decode {}-way tok/s | {}-way / b1 | weight MiB read per token | b1 / roofline |", a.prompt, a.ways, a.ways);
        println!("|---|---|---|---|---|---|---|---|---|");
        let tok = fc_chat::Tokenizer::from_dir(dir)?;
        let impl_name = if device.is_cpu() { "fcmesh engine".to_string() } else { format!("fcmesh engine ({})", a.device) };
        let print = |weights: &str, row: &Row| print_row(&impl_name, weights, threads, bw, row);
        if !(a.skip_f32 && a.q8.is_some()) {
            let dense = Model::load(dir, &device, DType::F32)?;
            let row = measure(dense, tok.clone(), a, None)?;
            print("f32", &row);
        }
        if let Some(q8) = &a.q8 {
            let q = Model::load_gguf(q8, &device)?;
            let row = measure(q, tok.clone(), a, None)?;
            print("Q8_0 (GGUF)", &row);
            // llama.cpp's default cache type: its rows read an f16 cache too.
            let q = Model::load_gguf(q8, &device)?;
            let row = measure(q, tok, a, Some(fc_engine::KvDtype::F16))?;
            print("Q8_0 (GGUF), f16 KV", &row);
        }
    }
    Ok(())
}

fn write_model(dir: &Path, tokenizer: &Path, layers: usize) -> Result<(), BoxError> {
    let cfg = ModelConfig::qwen3(151_936, 1024, 3072, layers, 16, 8, 128, true, 151_643, 151_645)?;
    let t0 = Instant::now();
    let model = Model::random(cfg, 0, &Device::Cpu, DType::F32)?;
    model.save_hf(dir, DType::F32, Some(tokenizer))?;
    drop(model);
    let out = dir.join("model-f32.gguf");
    fc_model::export_gguf_dir(dir, &out, GgufDType::F32)?;
    eprintln!("wrote {} and {} in {:.1}s", dir.display(), out.display(), t0.elapsed().as_secs_f64());
    Ok(())
}

struct Row {
    prefill: f64,
    decode1: f64,
    decode_n: f64,
    /// Median over the rounds of N-way / batch 1, each round's pair taken back to back.
    ratio: f64,
    bytes_per_token: usize,
}

fn print_row(impl_name: &str, weights: &str, threads: usize, bw: Option<f64>, r: &Row) {
    let roofline = match bw {
        Some(bw) => format!("{:.2}", r.decode1 / (bw / r.bytes_per_token as f64)),
        None => "n/a".into(),
    };
    println!(
        "| {impl_name} | {weights} | {threads} | {:.1} | {:.2} | {:.2} | {:.1}x | {:.0} | {roofline} |",
        r.prefill,
        r.decode1,
        r.decode_n,
        r.ratio,
        r.bytes_per_token as f64 / (1 << 20) as f64,
    );
}

/// Pseudo-random ids below Qwen3's first special token.
fn prompt(len: usize, seed: u64) -> Vec<u32> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 33) % 151_643) as u32
        })
        .collect()
}

fn measure(model: Model, tok: fc_chat::Tokenizer, a: &Args, kv: Option<fc_engine::KvDtype>) -> Result<Row, BoxError> {
    let bytes_per_token = model.decode_weight_bytes();
    let config = EngineConfig {
        max_batch: a.ways.max(8),
        prefix_cache_entries: 0,
        max_prefill_tokens_per_step: a.prompt,
        kv_cache_dtype: kv,
        ..Default::default()
    };
    let engine = Engine::start(model, tok, config)?;
    // `FC_BENCH_TEMP=T`: sampled at temperature T (seeded) instead of greedy, with
    // `FC_BENCH_TOP_P` / `FC_BENCH_TOP_K` (Qwen3's suggested 0.8 / 20, say) when set.
    let env = |k: &str| std::env::var(k).ok();
    let temperature: f64 = env("FC_BENCH_TEMP").and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let top_p: f64 = env("FC_BENCH_TOP_P").and_then(|v| v.parse().ok()).unwrap_or(1.0);
    let top_k: usize = env("FC_BENCH_TOP_K").and_then(|v| v.parse().ok()).unwrap_or(0);
    let params = |max_tokens| SamplingParams {
        max_tokens,
        stop_at_eos: false,
        temperature,
        top_p,
        top_k,
        seed: Some(7),
        ..SamplingParams::greedy(max_tokens)
    };
    // Prefill: time to the first (only) token of a fresh prompt, best of 2.
    let mut prefill = 0.0f64;
    for i in 0..2 {
        let t = Instant::now();
        engine.generate_blocking(Request::new(prompt(a.prompt, 100 + i), params(1)))?;
        prefill = prefill.max(a.prompt as f64 / t.elapsed().as_secs_f64());
    }
    // This VM's memory bandwidth drifts by tens of percent within a minute, so batch 1
    // and N-way alternate. The rates are the best of the rounds (as the peers report
    // theirs); the ratio is the median of each round's own ratio. Batch 1 streams the
    // weights and speeds up in a bandwidth spike, while the N-way step is largely
    // compute-bound and does not, so a ratio of the two bests set a spike's batch 1
    // against ordinary N-way rounds.
    let (mut decode1, mut decode_n, mut ratios) = (0.0f64, 0.0f64, Vec::with_capacity(ROUNDS));
    for _ in 0..ROUNDS {
        let one = decode_rate(&engine, 1, a.decode, &params(a.decode + 1))?;
        let many = decode_rate(&engine, a.ways, a.decode, &params(a.decode + 1))?;
        decode1 = decode1.max(one);
        decode_n = decode_n.max(many);
        ratios.push(many / one);
    }
    engine.shutdown();
    ratios.sort_by(f64::total_cmp);
    Ok(Row { prefill, decode1, decode_n, ratio: ratios[ratios.len() / 2], bytes_per_token })
}

/// Rounds of batch 1 then N-way decode (odd: the ratio is a median).
const ROUNDS: usize = 5;

/// Aggregate tokens/s of `ways` sequences (32-token prompts) decoding together, counted
/// from the moment the last one has its first token (all prefills done) to the end.
fn decode_rate(engine: &fc_engine::EngineHandle, ways: usize, decode: usize, params: &SamplingParams) -> Result<f64, BoxError> {
    let mut rxs = Vec::with_capacity(ways);
    for i in 0..ways {
        rxs.push(engine.submit(Request::new(prompt(32, 1000 + i as u64), params.clone()))?);
    }
    let stamps: Vec<Vec<Instant>> = std::thread::scope(|s| {
        let hs: Vec<_> = rxs
            .into_iter()
            .map(|mut rx| {
                s.spawn(move || {
                    let mut ts = Vec::with_capacity(decode + 1);
                    while let Some(ev) = rx.blocking_recv() {
                        match ev {
                            Event::Token { .. } => ts.push(Instant::now()),
                            Event::Finished { .. } | Event::Error { .. } => break,
                        }
                    }
                    ts
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    let start = stamps.iter().filter_map(|t| t.first()).max().ok_or("no tokens")?;
    let end = stamps.iter().filter_map(|t| t.last()).max().ok_or("no tokens")?;
    let tokens = stamps.iter().flatten().filter(|t| *t > start).count();
    let secs = end.duration_since(*start).as_secs_f64();
    if tokens == 0 || secs <= 0.0 {
        return Err("decode produced no timed tokens".into());
    }
    Ok(tokens as f64 / secs)
}

/// Bytes/s the cores can stream from memory: every thread reads its part of a 1 GiB
/// buffer with the decode kernel's vector loads (a dot product of the part with itself:
/// one read stream), best of 5.
fn read_bandwidth() -> f64 {
    let n = (1usize << 30) / 4;
    let buf: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 * 1e-3).collect();
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let chunk = n.div_ceil(threads);
    let mut best = 0.0f64;
    for _ in 0..5 {
        let t = Instant::now();
        let total: f32 = std::thread::scope(|s| {
            let hs: Vec<_> = buf.chunks(chunk).map(|c| s.spawn(move || fc_model::gemv::dot(c, c))).collect();
            hs.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
        });
        std::hint::black_box(total);
        best = best.max((n * 4) as f64 / t.elapsed().as_secs_f64());
    }
    best
}

/// `FC_BENCH_KERNEL=1`: GB/s of the packed f32 kernel ([`fc_model::packed`]) alone on the decode shapes, each
/// streamed from memory as in a decode step (a ~512 MiB run of copies, walked in turn).
/// First, the kernel on one 8 MiB weight that stays in L3, which bounds what the
/// streamed runs can reach from compute alone; `FC_BENCH_KERNEL=cached` stops there.
fn kernel_probe() {
    {
        let (n, k) = (2048usize, 1024usize);
        let w: Vec<f32> = (0..n * k).map(|i| (i % 13) as f32 * 0.01).collect();
        let w = PackedF32::pack(&w, n, k);
        for m in [1usize, 8, 64] {
            let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
            let reps = 2000;
            let t = Instant::now();
            for _ in 0..reps {
                std::hint::black_box(w.matmul(&x, m));
            }
            let s = t.elapsed().as_secs_f64() / reps as f64;
            eprintln!("cached n {n} k {k} m {m}: {:.1} us, {:.1} GMAC/s", s * 1e6, (m * n * k) as f64 / s / 1e9);
        }
    }
    {
        // The same for our Q8_0 kernel (2 MiB of weights: L2 or L3).
        use candle_core::quantized::{GgmlDType, QTensor};
        use fc_model::quantized::QWeight;
        let (n, k) = (2048usize, 1024usize);
        let t = fc_model::Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).and_then(|t| QTensor::quantize(&t, GgmlDType::Q8_0)).expect("quantize");
        let w = QWeight::new(t);
        for m in [1usize, 8, 64] {
            let x = fc_model::Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).expect("x");
            let reps = 2000;
            let t = Instant::now();
            for _ in 0..reps {
                std::hint::black_box(w.forward(&x).expect("forward"));
            }
            let s = t.elapsed().as_secs_f64() / reps as f64;
            eprintln!("cached Q8_0 n {n} k {k} m {m}: {:.1} us, {:.1} GMAC/s", s * 1e6, (m * n * k) as f64 / s / 1e9);
        }
    }
    if std::env::var("FC_BENCH_KERNEL").as_deref() == Ok("cached") {
        return;
    }
    for (n, k) in [(151_936usize, 1024usize), (2048, 1024), (1024, 1024), (1024, 2048), (3072, 1024), (1024, 3072)] {
        let copies = ((512usize << 20) / (n * k * 4)).max(1);
        let w: Vec<PackedF32> = (0..copies)
            .map(|c| PackedF32::pack(&(0..n * k).map(|i| ((i + c) % 13) as f32 * 0.01).collect::<Vec<_>>(), n, k))
            .collect();
        for m in [1usize, 8] {
            let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
            let reps = 3;
            let t = Instant::now();
            for _ in 0..reps {
                for c in &w {
                    std::hint::black_box(c.matmul(&x, m));
                }
            }
            let s = t.elapsed().as_secs_f64() / (reps * copies) as f64;
            eprintln!("n {n} k {k} m {m}: {:.3} ms, {:.1} GB/s", s * 1e3, (n * k * 4) as f64 / s / 1e9);
        }
        drop(w);
        q8_kernel_probe(n, k);
    }
}

/// The same shapes in Q8_0, through our kernel and candle's quantized matmul.
fn q8_kernel_probe(n: usize, k: usize) {
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use fc_model::quantized::QWeight;
    let copies = ((256usize << 20) / (n * k)).max(1);
    let make = |own: bool| -> Vec<QWeight> {
        (0..copies)
            .map(|_| {
                let t = fc_model::Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).and_then(|t| QTensor::quantize(&t, GgmlDType::Q8_0)).expect("quantize");
                if own { QWeight::new(t) } else { QWeight::Candle(QMatMul::QTensor(std::sync::Arc::new(t))) }
            })
            .collect()
    };
    for own in [true, false] {
        let ws = make(own);
        for m in [1usize, 8] {
            let x = fc_model::Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).expect("x");
            let _ = ws[0].forward(&x);
            let reps = 3;
            let t = Instant::now();
            for _ in 0..reps {
                for w in &ws {
                    std::hint::black_box(w.forward(&x).expect("forward"));
                }
            }
            let s = t.elapsed().as_secs_f64() / (reps * copies) as f64;
            let bytes = ws[0].storage_bytes();
            eprintln!("  Q8_0 {} m {m}: {:.3} ms, {:.1} GB/s", if own { "fcmesh" } else { "candle" }, s * 1e3, bytes as f64 / s / 1e9);
        }
    }
}

/// `FC_BENCH_RAGGED=1`: the model's ragged forward alone (no engine), batch 1 against `ways`
/// sequences, `FC_BENCH_STEPS` decode steps each (16); the `--q8` file's model when one is
/// given, else the dense one.
fn ragged_probe(dir: &Path, q8: Option<&Path>, ways: usize) -> Result<(), BoxError> {
    use fc_model::batch::{forward_ragged, KvMemory, RaggedInput, SeqKv};
    let started = Instant::now();
    let mut model = match q8 {
        Some(f) => Model::load_gguf(f, &Device::Cpu)?,
        None => Model::load(dir, &Device::Cpu, DType::F32)?,
    };
    // As the engine runs it.
    model.pack_for_inference()?;

    // Batch 1 and `ways` sequences step in turn (this VM's speed drifts within seconds,
    // so the ratio compares steps taken moments apart); medians of each.
    // `FC_BENCH_KV=f16`: an f16 cache.
    let mem = match std::env::var("FC_BENCH_KV").as_deref() {
        Ok("f16") => KvMemory::storing(DType::F16),
        _ => KvMemory::new(),
    };
    // `FC_BENCH_ONLY=1`: the `ways` steps alone (for a profile of them).
    let sizes: Vec<usize> = if std::env::var("FC_BENCH_ONLY").is_ok() { vec![ways] } else { vec![1, ways] };
    let mut caches: Vec<Vec<SeqKv>> = sizes.iter().map(|&n| (0..n).map(|_| SeqKv::new(&model, &mem)).collect()).collect();
    for c in caches.iter_mut() {
        let prompts: Vec<Vec<u32>> = (0..c.len()).map(|i| prompt(32, 1000 + i as u64)).collect();
        let mut inputs: Vec<RaggedInput> = c.iter_mut().zip(&prompts).map(|(c, p)| RaggedInput { tokens: p, cache: c }).collect();
        forward_ragged(&model, None, &mut inputs)?;
    }
    let steps = std::env::var("FC_BENCH_STEPS").ok().and_then(|v| v.parse().ok()).unwrap_or(16).max(1);
    // When the timed steps start, for `perf record -D`.
    eprintln!("decode steps from {} ms", started.elapsed().as_millis());
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(steps); sizes.len()];
    for s in 0..steps {
        for (c, t) in caches.iter_mut().zip(times.iter_mut()) {
            let toks: Vec<[u32; 1]> = (0..c.len()).map(|i| [(s * 31 + i * 7 + 5) as u32]).collect();
            let mut inputs: Vec<RaggedInput> = c.iter_mut().zip(&toks).map(|(c, p)| RaggedInput { tokens: p, cache: c }).collect();
            let t0 = Instant::now();
            forward_ragged(&model, None, &mut inputs)?;
            t.push(t0.elapsed().as_secs_f64());
        }
    }
    let mut medians = Vec::new();
    for (n, t) in sizes.iter().zip(times.iter_mut()) {
        t.sort_by(f64::total_cmp);
        let med = t[t.len() / 2];
        medians.push(*n as f64 / med);
        eprintln!("ragged forward, {n} sequences: {:.1} ms/step median ({:.1}-{:.1}), {:.1} tok/s", med * 1e3, t[0] * 1e3, t[t.len() - 1] * 1e3, *n as f64 / med);
    }
    if let [b1, many] = medians[..] {
        eprintln!("{ways}-way / batch 1: {:.2}x", many / b1);
    }
    if let Some(mib) = resident_mib() {
        eprintln!("resident memory: {mib:.0} MiB");
    }
    Ok(())
}

/// This process's resident memory (Linux `/proc/self/statm`, 4 KiB pages).
fn resident_mib() -> Option<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096.0 / (1 << 20) as f64)
}
