//! The small per-row steps of the inference forward ([`crate::batch`]) on CPU f32, fused
//! into single passes: Qwen3's per-head q/k RMS norm with RoPE and the move to head-major
//! layout, the hidden-size RMS norms, `silu(gate) * up`, and the residual adds.
//!
//! Why not candle's ops: they split any tensor of more than 32 rows (rms_norm) or more than
//! one position (rope) over the thread pool, and a decode batch of 8 sequences has 128
//! query-head rows of 128 values, so each call paid a pool fork and join for a few
//! microseconds of arithmetic; `silu` calls libm's scalar `expf` per value. Measured on a
//! 2-core Xeon VM, Qwen3-0.6B-shaped Q8_0 model, 8 sequences per decode step: q/k norm
//! with RoPE 0.3 ms at batch 1 but 3.2 ms at 8, `silu * up` 0.5 and 3.1 ms, of a ~55 ms
//! step. These versions do candle's norm and RoPE arithmetic (the norm's sum of squares
//! in vector-wide partial sums, so not candle's bits), and SiLU through the vectorized
//! `exp` of [`crate::attn`].

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
/// Norm: `x * (1 / sqrt(sum(x^2) / hd + eps)) * w`, the sum in 16 partial sums (candle
/// folds it left to right, one dependent add per value: at 8 sequences a decode step has
/// ~5k head rows, and that chain was ~1 ms of a ~40 ms step); RoPE: the rotate-half form
/// `(x1 c - x2 s, x1 s + x2 c)`, as candle computes it.
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
        let w = weight.as_ref().map(|(w, eps)| (w.as_slice(), *eps));
        heads_major_rows(xs, &mut out, (n, heads, hd), w, rope);
        Some((out, n))
    })??;
    let (out, n) = out;
    Tensor::from_vec(out, (1, heads, n, hd), &Device::Cpu).ok()
}

/// The rows of [`heads_major`]: `xs` (`[n, heads, hd]`) into `out` (`[heads, n, hd]`), with
/// 512-bit vectors where the CPU has them.
fn heads_major_rows(xs: &[f32], out: &mut [f32], dims: (usize, usize, usize), norm: Option<(&[f32], f32)>, rope: Option<&Rope<'_>>) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512 F is present.
        unsafe { heads_major_avx512(xs, out, dims, norm, rope) };
        return;
    }
    heads_major_body(xs, out, dims, norm, rope)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn heads_major_avx512(xs: &[f32], out: &mut [f32], dims: (usize, usize, usize), norm: Option<(&[f32], f32)>, rope: Option<&Rope<'_>>) {
    heads_major_body(xs, out, dims, norm, rope)
}

/// Written so the compiler vectorizes it (the caller checked the slices' sizes).
#[inline(always)]
fn heads_major_body(xs: &[f32], out: &mut [f32], (n, heads, hd): (usize, usize, usize), norm: Option<(&[f32], f32)>, rope: Option<&Rope<'_>>) {
    let mut row = vec![0f32; hd];
    for t in 0..n {
        for h in 0..heads {
            let src = &xs[(t * heads + h) * hd..][..hd];
            match norm {
                Some((w, eps)) => {
                    let inv = 1.0 / (sum_squares(src) / hd as f32 + eps).sqrt();
                    for ((d, &s), &a) in row.iter_mut().zip(src).zip(w) {
                        *d = s * inv * a;
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
}

/// `sum(v^2)` in 16 independent partial sums (one vector), then halved pairwise.
#[inline(always)]
fn sum_squares(v: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = v.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|&x| x * x).sum();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x * x;
        }
    }
    for w in [8, 4, 2, 1] {
        for i in 0..w {
            acc[i] += acc[i + w];
        }
    }
    acc[0] + tail
}

/// RMS norm over the last dim of a contiguous CPU f32 tensor with weight `w` (as many
/// values as that dim): the layer norms and the final norm of the inference forward. The
/// same arithmetic as the per-head norm in [`heads_major`] (16 partial sums of squares,
/// then `x * (1 / rms) * w`); `None` for any other tensor (the caller takes candle's).
///
/// Why: candle's norm folds the 1024 squares of a hidden row left to right (one dependent
/// add per value) and divides every value, ~2.5 us a row. At 8 decode rows its two norms
/// per layer took ~1 ms of a ~28 ms Q8_0 step (Zen 4 VM), one thread working while the
/// other waited. With the two norms alternating step by step in one process, 8-way steps
/// took 28.53 / 28.22 / 29.32 ms (medians of 20) against 29.78 / 28.78 / 30.22 with
/// candle's. A prompt chunk's rows (64 and more) are split over the pool.
pub(crate) fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Option<Tensor> {
    use rayon::prelude::*;
    /// Rows per task of a split norm.
    const ROWS: usize = 32;
    let d = *x.dims().last()?;
    let out = with_cpu_f32(w, |weight| {
        if d == 0 || weight.len() != d {
            return None;
        }
        with_cpu_f32(x, |xs| {
            let mut out = vec![0f32; xs.len()];
            if xs.len() >= 2 * ROWS * d {
                out.par_chunks_mut(ROWS * d)
                    .zip(xs.par_chunks(ROWS * d))
                    .for_each(|(o, x)| rms_norm_rows(x, weight, eps, o));
            } else {
                rms_norm_rows(xs, weight, eps, &mut out);
            }
            out
        })
    })??;
    Tensor::from_vec(out, x.shape(), &Device::Cpu).ok()
}

/// The rows of [`rms_norm`], with 512-bit vectors where the CPU has them.
fn rms_norm_rows(xs: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512 F is present.
        unsafe { rms_norm_avx512(xs, w, eps, out) };
        return;
    }
    rms_norm_body(xs, w, eps, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn rms_norm_avx512(xs: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    rms_norm_body(xs, w, eps, out)
}

/// Written so the compiler vectorizes it.
#[inline(always)]
fn rms_norm_body(xs: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (src, dst) in xs.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let inv = 1.0 / (sum_squares(src) / d as f32 + eps).sqrt();
        for ((o, &v), &a) in dst.iter_mut().zip(src).zip(w) {
            *o = v * inv * a;
        }
    }
}

/// `silu(gate) * up` for same-shaped contiguous CPU f32 tensors; `None` otherwise. A
/// decode batch's (8 x 3072 values and more) is split over the pool.
pub(crate) fn silu_mul(gate: &Tensor, up: &Tensor) -> Option<Tensor> {
    if gate.shape() != up.shape() {
        return None;
    }
    let out = with_cpu_f32(gate, |g| {
        with_cpu_f32(up, |u| {
            use rayon::prelude::*;
            /// Values per task of a split product.
            const CHUNK: usize = 8 * 1024;
            let mut out = vec![0f32; g.len()];
            if g.len() >= 2 * CHUNK {
                out.par_chunks_mut(CHUNK)
                    .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
                    .for_each(|(o, (g, u))| silu_mul_slices(g, u, o));
            } else {
                silu_mul_slices(g, u, &mut out);
            }
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

    /// Candle's norm and RoPE, up to the order of the sum of squares (1e-6 relative);
    /// without them the move itself is exact.
    #[test]
    fn heads_major_matches_candles_ops() {
        // 40 values per head: two 16-wide chunks and a tail.
        let (n, heads, hd) = (3usize, 4usize, 40usize);
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
        let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (g, w) in values(&got).iter().zip(values(&want)) {
            assert!((g - w).abs() <= 1e-6 * (1.0 + w.abs()), "{g} vs {w}");
        }

        let plain = x.reshape((1, n, heads, hd)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
        assert_eq!(bits(&heads_major(&x, heads, hd, None, None).unwrap()), bits(&plain));
        // Shapes it cannot take fall back.
        assert!(heads_major(&x, heads, hd + 2, None, None).is_none(), "rows do not split into heads");
        assert!(heads_major(&x, heads * 8, 1, None, None).is_none(), "odd head size");
        assert!(heads_major(&x, heads, hd, Some((&w.narrow(0, 0, 4).unwrap(), 1e-6)), None).is_none(), "norm weight size");
        assert!(heads_major(&x, heads, hd, None, Some(&Rope { cos: &cos[..4], sin: &sin[..4] })).is_none(), "short tables");
        assert!(heads_major(&x.to_dtype(DType::F64).unwrap(), heads, hd, None, None).is_none());
    }

    /// Candle's norm up to the order of the sum of squares (1e-6 relative), for a few
    /// rows in one pass and a prompt chunk's split over the pool (same bits per row either
    /// way); other tensors fall back.
    #[test]
    fn rms_norm_matches_candles() {
        let dev = Device::Cpu;
        for (rows, d) in [(1usize, 40usize), (8, 1024), (130, 72)] {
            let x: Vec<f32> = (0..rows * d).map(|i| ((i * 37 % 29) as f32 - 14.0) / (3.0 + (i % 5) as f32)).collect();
            let x = Tensor::from_vec(x, (1, rows, d), &dev).unwrap();
            let w = Tensor::from_vec((0..d).map(|i| 0.5 + (i % 9) as f32 / 8.0).collect::<Vec<f32>>(), d, &dev).unwrap();
            let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let got = values(&rms_norm(&x, &w, 1e-6).unwrap());
            let want = values(&crate::ops::rms_norm_fused(&x, &w, 1e-6).unwrap());
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-6 * (1.0 + w.abs()), "{rows}x{d}: {g} vs {w}");
            }
            let last = values(&rms_norm(&x.narrow(1, rows - 1, 1).unwrap(), &w, 1e-6).unwrap());
            assert_eq!(&got[(rows - 1) * d..], &last[..], "{rows}x{d}: a row alone");
        }
        let x = Tensor::ones((2, 8), DType::F32, &dev).unwrap();
        assert!(rms_norm(&x, &Tensor::ones(4, DType::F32, &dev).unwrap(), 1e-6).is_none(), "weight size");
        assert!(rms_norm(&x.to_dtype(DType::F64).unwrap(), &Tensor::ones(8, DType::F64, &dev).unwrap(), 1e-6).is_none());
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
        // A decode batch's worth is split over the pool, with the same values.
        let big: Vec<f32> = (0..40_000).map(|i| ((i * 37 % 1001) as f32 - 500.0) / 50.0).collect();
        let (bg, bu) = (Tensor::from_vec(big.clone(), (8, 5000), &dev).unwrap(), Tensor::from_vec(big.iter().map(|v| v * 0.5).collect::<Vec<f32>>(), (8, 5000), &dev).unwrap());
        let whole = silu_mul(&bg, &bu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for r in 0..8 {
            let row = silu_mul(&bg.narrow(0, r, 1).unwrap(), &bu.narrow(0, r, 1).unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(&whole[r * 5000..(r + 1) * 5000], &row[..], "row {r}");
        }
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
