//! The small per-row steps of the inference forward ([`crate::batch`]) on CPU f32, fused
//! into single passes: Qwen3's per-head q/k RMS norm with RoPE and the move to head-major
//! layout, `silu(gate) * up`, and the residual adds.
//!
//! Why not candle's ops: they split any tensor of more than 32 rows (rms_norm) or more than
//! one position (rope) over the thread pool, and a decode batch of 8 sequences has 128
//! query-head rows of 128 values, so each call paid a pool fork and join for a few
//! microseconds of arithmetic; `silu` calls libm's scalar `expf` per value. Measured on a
//! 2-core Xeon VM, Qwen3-0.6B-shaped Q8_0 model, 8 sequences per decode step: q/k norm
//! with RoPE 0.3 ms at batch 1 but 3.2 ms at 8, `silu * up` 0.5 and 3.1 ms, of a ~55 ms
//! step. These versions do the same arithmetic in the same order as candle's norm and
//! RoPE (same bits), and SiLU through the vectorized `exp` of [`crate::attn`].

use candle_core::{DType, Device, Tensor};

/// `f` on the values of a contiguous CPU f32 tensor; `None` for any other tensor.
pub(crate) fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    if t.dtype() != DType::F32 {
        return None;
    }
    let (st, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*st else {
        return None;
    };
    let data = cpu.as_slice::<f32>().ok()?;
    let (a, b) = layout.contiguous_offsets()?;
    Some(f(data.get(a..b)?))
}

/// RoPE tables of a forward: `[n, d / 2]` cosines and sines, row `i` for row `i`'s position.
pub(crate) struct Rope<'a> {
    pub cos: &'a [f32],
    pub sin: &'a [f32],
}

/// One projection of the ragged batch, `x`: `[1, n, heads * hd]`, as head-major
/// `[1, heads, n, hd]` (the layout attention reads), each head row RMS-normed with
/// `norm = (weight [hd], eps)` when given, then rotated by `rope` when given. `None` when
/// `x` or the weight is not a contiguous CPU f32 tensor (the caller takes candle's ops).
///
/// Norm: `x / sqrt(sum(x^2) / hd + eps) * w`, the sum a left fold in f32; RoPE: the
/// rotate-half form `(x1 c - x2 s, x1 s + x2 c)`. Both as candle computes them.
pub(crate) fn heads_major(
    x: &Tensor,
    heads: usize,
    hd: usize,
    norm: Option<(&Tensor, f32)>,
    rope: Option<&Rope<'_>>,
) -> Option<Tensor> {
    let weight: Option<(Vec<f32>, f32)> = match norm {
        Some((w, eps)) => Some((with_cpu_f32(w, |w| w.to_vec())?, eps)),
        None => None,
    };
    if weight.as_ref().is_some_and(|(w, _)| w.len() != hd) || !hd.is_multiple_of(2) {
        return None;
    }
    let out = with_cpu_f32(x, |xs| {
        let n = xs.len() / (heads * hd);
        if n * heads * hd != xs.len() || rope.is_some_and(|r| r.cos.len() < n * hd / 2 || r.sin.len() < n * hd / 2) {
            return None;
        }
        let mut out = vec![0f32; xs.len()];
        let mut row = vec![0f32; hd];
        for t in 0..n {
            for h in 0..heads {
                let src = &xs[(t * heads + h) * hd..][..hd];
                match &weight {
                    Some((w, eps)) => {
                        let sum2: f32 = src.iter().map(|&v| v * v).sum();
                        let m = (sum2 / hd as f32 + eps).sqrt();
                        for ((d, &s), &a) in row.iter_mut().zip(src).zip(w) {
                            *d = s / m * a;
                        }
                    }
                    None => row.copy_from_slice(src),
                }
                let dst = &mut out[(h * n + t) * hd..][..hd];
                match rope {
                    Some(r) => {
                        let half = hd / 2;
                        let (cos, sin) = (&r.cos[t * half..][..half], &r.sin[t * half..][..half]);
                        let (x1, x2) = row.split_at(half);
                        let (d1, d2) = dst.split_at_mut(half);
                        for i in 0..half {
                            d1[i] = x1[i] * cos[i] - x2[i] * sin[i];
                            d2[i] = x1[i] * sin[i] + x2[i] * cos[i];
                        }
                    }
                    None => dst.copy_from_slice(&row),
                }
            }
        }
        Some((out, n))
    })??;
    let (out, n) = out;
    Tensor::from_vec(out, (1, heads, n, hd), &Device::Cpu).ok()
}

/// `silu(gate) * up` for same-shaped contiguous CPU f32 tensors; `None` otherwise.
pub(crate) fn silu_mul(gate: &Tensor, up: &Tensor) -> Option<Tensor> {
    if gate.shape() != up.shape() {
        return None;
    }
    let out = with_cpu_f32(gate, |g| {
        with_cpu_f32(up, |u| {
            let mut out = vec![0f32; g.len()];
            silu_mul_slices(g, u, &mut out);
            out
        })
    })??;
    Tensor::from_vec(out, gate.shape(), &Device::Cpu).ok()
}

/// `a + b` for two contiguous CPU f32 tensors of one shape (the residual adds); `None`
/// otherwise. Candle's add sends tensors of 64 Ki values or more to its own spinning
/// thread pool, which on two cores then competes with the rayon workers that run every
/// matmul (a prompt chunk's residual is 512 x 1024 values); this splits large ones over
/// rayon instead. Each value is one f32 add, so the bits are candle's.
pub(crate) fn add(a: &Tensor, b: &Tensor) -> Option<Tensor> {
    use rayon::prelude::*;
    /// Values per task of a split add.
    const CHUNK: usize = 16 * 1024;
    if a.shape() != b.shape() {
        return None;
    }
    let out = with_cpu_f32(a, |x| {
        with_cpu_f32(b, |y| {
            let mut out = vec![0f32; x.len()];
            let body = |(o, (x, y)): (&mut [f32], (&[f32], &[f32]))| {
                o.iter_mut().zip(x.iter().zip(y)).for_each(|(o, (x, y))| *o = x + y);
            };
            if x.len() >= 4 * CHUNK {
                out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK).zip(y.par_chunks(CHUNK))).for_each(body);
            } else {
                body((&mut out, (x, y)));
            }
            out
        })
    })??;
    Tensor::from_vec(out, a.shape(), &Device::Cpu).ok()
}

/// `out[i] = silu(g[i]) * u[i]`, with 512-bit vectors where the CPU has them.
fn silu_mul_slices(g: &[f32], u: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512 F is present.
        unsafe { silu_mul_avx512(g, u, out) };
        return;
    }
    silu_mul_body(g, u, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn silu_mul_avx512(g: &[f32], u: &[f32], out: &mut [f32]) {
    silu_mul_body(g, u, out)
}

/// `silu(x) = x * sigmoid(x)`, with `sigmoid` from `e = exp(-|x|) <= 1` (never overflows):
/// `1 / (1 + e)` for `x >= 0`, `e / (1 + e)` below. Written so the compiler vectorizes it.
#[inline(always)]
fn silu_mul_body(g: &[f32], u: &[f32], out: &mut [f32]) {
    for ((o, &x), &v) in out.iter_mut().zip(g).zip(u) {
        let e = crate::attn::exp_nonpos(-x.abs());
        let num = if x >= 0.0 { 1.0 } else { e };
        *o = x * (num / (1.0 + e)) * v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_major_gives_candles_bits() {
        let (n, heads, hd) = (3usize, 4usize, 8usize);
        let dev = Device::Cpu;
        let x: Vec<f32> = (0..n * heads * hd).map(|i| ((i * 37 % 29) as f32 - 14.0) / 7.0).collect();
        let x = Tensor::from_vec(x, (1, n, heads * hd), &dev).unwrap();
        let w = Tensor::from_vec((0..hd).map(|i| 0.5 + i as f32 / 8.0).collect::<Vec<f32>>(), hd, &dev).unwrap();
        let cos: Vec<f32> = (0..n * hd / 2).map(|i| (i as f32 * 0.3).cos()).collect();
        let sin: Vec<f32> = (0..n * hd / 2).map(|i| (i as f32 * 0.3).sin()).collect();
        let ct = Tensor::from_vec(cos.clone(), (n, hd / 2), &dev).unwrap();
        let st = Tensor::from_vec(sin.clone(), (n, hd / 2), &dev).unwrap();
        let rope = Rope { cos: &cos, sin: &sin };
        let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();

        let want = crate::ops::rms_norm_fused(&x.reshape((1, n, heads, hd)).unwrap(), &w, 1e-6).unwrap();
        let want = want.transpose(1, 2).unwrap().contiguous().unwrap();
        let want = candle_nn::rotary_emb::rope(&want, &ct, &st).unwrap();
        let got = heads_major(&x, heads, hd, Some((&w, 1e-6)), Some(&rope)).unwrap();
        assert_eq!(got.dims(), &[1, heads, n, hd]);
        assert_eq!(bits(&got), bits(&want));

        let plain = x.reshape((1, n, heads, hd)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
        assert_eq!(bits(&heads_major(&x, heads, hd, None, None).unwrap()), bits(&plain));
        // Shapes it cannot take fall back.
        assert!(heads_major(&x, heads, hd + 2, None, None).is_none(), "rows do not split into heads");
        assert!(heads_major(&x, heads * 8, 1, None, None).is_none(), "odd head size");
        assert!(heads_major(&x, heads, hd, Some((&w.narrow(0, 0, 4).unwrap(), 1e-6)), None).is_none(), "norm weight size");
        assert!(heads_major(&x, heads, hd, None, Some(&Rope { cos: &cos[..4], sin: &sin[..4] })).is_none(), "short tables");
        assert!(heads_major(&x.to_dtype(DType::F64).unwrap(), heads, hd, None, None).is_none());
    }

    #[test]
    fn silu_mul_matches_the_definition() {
        let dev = Device::Cpu;
        let mut g: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) / 20.0).collect();
        g.extend([0.0, -0.0, 100.0, -100.0, 1e-30, f32::MIN_POSITIVE]);
        let u: Vec<f32> = (0..g.len()).map(|i| 1.0 + (i % 7) as f32 / 3.0).collect();
        let gt = Tensor::from_vec(g.clone(), (2, g.len() / 2), &dev).unwrap();
        let ut = Tensor::from_vec(u.clone(), (2, g.len() / 2), &dev).unwrap();
        let got = silu_mul(&gt, &ut).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for i in 0..g.len() {
            let x = g[i] as f64;
            let want = x / (1.0 + (-x).exp()) * u[i] as f64;
            assert!((got[i] as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()), "{x}: {} vs {want}", got[i]);
        }
        // Not the same shape: the caller's fallback.
        assert!(silu_mul(&gt, &ut.reshape(g.len()).unwrap()).is_none());
    }

    /// Small (one pass) and large (split over the pool) adds give candle's bits; other
    /// tensors fall back.
    #[test]
    fn add_gives_candles_bits() {
        let dev = Device::Cpu;
        for n in [7usize, 100_003] {
            let a = Tensor::from_vec((0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect::<Vec<f32>>(), (1, n), &dev).unwrap();
            let b = Tensor::from_vec((0..n).map(|i| ((i * 53 % 97) as f32 - 48.0) / 3.0).collect::<Vec<f32>>(), (1, n), &dev).unwrap();
            let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&add(&a, &b).unwrap()), bits(&(&a + &b).unwrap()), "{n} values");
        }
        let a = Tensor::ones((2, 3), DType::F32, &dev).unwrap();
        assert!(add(&a, &a.t().unwrap()).is_none(), "shapes differ");
        assert!(add(&a.t().unwrap(), &a.t().unwrap()).is_none(), "not contiguous");
        assert!(add(&a.to_dtype(DType::F64).unwrap(), &a.to_dtype(DType::F64).unwrap()).is_none());
    }
}
