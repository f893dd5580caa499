//! Per-call cost of the Q8_0 kernel: the same 384 MiB of weights walked as calls of
//! different sizes (k = 1024), at 1 and 8 activation rows. `GB/s` falls as calls shrink;
//! the gap is what each call costs beyond streaming its bytes.
//!
//! `cargo run --release -p fc-engine --features mimalloc --example q8_calls`

use candle_core::quantized::{GgmlDType, QTensor};
use fc_model::q8gemv::PackedQ8;
use fc_model::{Device, Tensor};
use std::time::Instant;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let k = 1024usize;
    let total = 384usize << 20;
    for n in [1024usize, 2048, 4096, 16384, 65536] {
        let copies = (total / (n * k)).max(1);
        let base = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).expect("randn");
        let q = QTensor::quantize(&base, GgmlDType::Q8_0).expect("quantize");
        let ws: Vec<PackedQ8> = (0..copies).map(|_| PackedQ8::from_qtensor(&q).expect("kernel")).collect();
        for m in [1usize, 8] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t = Instant::now();
                for w in &ws {
                    std::hint::black_box(w.matmul(&x, m));
                }
                best = best.min(t.elapsed().as_secs_f64() / copies as f64);
            }
            let bytes = ws[0].storage_bytes() as f64;
            println!("n {n:6} k {k} m {m}: {:8.1} us/call, {:5.1} GB/s", best * 1e6, bytes / best / 1e9);
        }
    }
}
