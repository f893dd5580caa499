//! In-cache throughput of the Q8_0 kernel: a weight small enough to stay in L2 (`N`
//! rows of 1024, default 512), walked again and again at 1, 2, 4 and 8 activation rows;
//! prints multiply-adds per second, whole calls included (quantizing the activations,
//! the parallel split). With one thread this is the kernel's compute bound per core: on
//! a Zen 4 VM, ~165 GMAC/s at 8 rows for N = 1024, where the 8-row loop alone needs 80
//! cycles per 4096 multiply-adds.
//!
//! `RAYON_NUM_THREADS=1 cargo run --release -p fc-engine --features mimalloc --example q8_incache`

use candle_core::quantized::{GgmlDType, QTensor};
use fc_model::q8gemv::PackedQ8;
use fc_model::{Device, Tensor};
use std::time::Instant;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // Calls come from a pool thread, as in the model's forward: from outside, each
    // parallel call would also pay a cross-thread wake-up.
    rayon::join(run, || ());
}

fn run() {
    let k = 1024usize;
    let n: usize = std::env::var("N").ok().and_then(|v| v.parse().ok()).unwrap_or(512);
    let base = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).expect("randn");
    let q = QTensor::quantize(&base, GgmlDType::Q8_0).expect("quantize");
    let w = PackedQ8::from_qtensor(&q).expect("kernel");
    for m in [1usize, 2, 4, 8] {
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
        let reps = 4000 / m;
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..reps {
                std::hint::black_box(w.matmul(&x, m));
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        let macs = (reps * m * n * k) as f64;
        println!("rows {m}: {:.1} GMAC/s ({:.2} us/call)", macs / best / 1e9, best / reps as f64 * 1e6);
    }
}
