//! Skinny f32 matmul for decoding: `y = x W^T` where `x` has a few rows (one per
//! sequence of a decode batch, plus any short prompt chunk in the same step) and `W` is
//! a large `[out, in]` weight.
//!
//! Why not the general GEMM: a decode step is bound by reading every weight once, and a
//! general GEMM tuned for square blocks packs the weight before multiplying, which
//! costs more than the multiply at one row. Here each weight row is streamed once and
//! dotted with all rows of `x` while it sits in L1, so a batch of 8 costs little more
//! memory traffic than a batch of 1. Output columns are split across the rayon pool.
//! The dot products use AVX2+FMA when the CPU has them (checked at run time, so the
//! binary stays portable) and a plain loop the compiler vectorizes otherwise. Each row's
//! result does not depend on which other rows are in the batch.
//!
//! The engine does not come here: it packs its model's weights into panels
//! ([`crate::packed`]), whose kernel overlaps the multiply with the weight stream far
//! better at 8 rows. This kernel serves dense models that are not packed (generation
//! inside training, tests), and [`dot`] the attention's scores.

// The SIMD tiles index their register arrays by (column, row) on purpose.
#![allow(clippy::needless_range_loop)]

use candle_core::{DType, Device, Storage, Tensor};
use rayon::prelude::*;

/// Most rows of `x` this path takes; taller inputs (long prefill chunks) go to the GEMM.
///
/// A step that mixes a decode batch with a short prompt chunk, or a short prompt, has a
/// few dozen rows, and there the general GEMM packs the whole weight for little work:
/// on the 0.6B model (2 cores, Zen 4) a 24-token prefill ran at 25 tok/s through it and
/// at 96 tok/s here; 64 tokens 54 vs 114, 128 tokens 85 vs 112; at 192 they were even
/// and at 512 the GEMM led (135-144 vs 110). Each task runs all its 8-row passes over
/// its `COLS_PER_TASK` weight rows while they sit in L2, so the weights still come
/// from memory once.
pub const MAX_ROWS: usize = 128;

/// Output columns per rayon task (64 weight rows: 256 KiB at in = 1024).
const COLS_PER_TASK: usize = 64;

/// `x [.., k] · w[n, k]^T` by the skinny kernel when it applies (CPU, f32, contiguous
/// weight, at most [`MAX_ROWS`] rows); `None` otherwise.
pub fn skinny_linear(x: &Tensor, w: &Tensor) -> candle_core::Result<Option<Tensor>> {
    if w.dtype() != DType::F32 || !w.is_contiguous() || !matches!(w.device(), Device::Cpu) {
        return Ok(None);
    }
    let (n, k) = w.dims2()?;
    let m = x.elem_count() / k.max(1);
    if m == 0 || m > MAX_ROWS {
        return Ok(None);
    }
    let (ws, wl) = w.storage_and_layout();
    let Storage::Cpu(wc) = &*ws else {
        return Ok(None);
    };
    let wv = &wc.as_slice::<f32>()?[wl.start_offset()..wl.start_offset() + n * k];
    map_cpu_rows(x, k, n, |xv, m| matmul_rows(xv, m, wv, n, k))
}

/// Runs `f(rows, m)` on the `m` rows of a CPU f32 `x [.., k]` and shapes its `[m, n]`
/// result as `[.., n]`; `None` when `x` is not a CPU f32 tensor whose last dim is `k`.
/// The tensor plumbing of the CPU matmul kernels (this one and [`crate::q8gemv`]).
pub(crate) fn map_cpu_rows(
    x: &Tensor,
    k: usize,
    n: usize,
    f: impl FnOnce(&[f32], usize) -> Vec<f32>,
) -> candle_core::Result<Option<Tensor>> {
    let dims = x.dims();
    if !matches!(x.device(), Device::Cpu) || x.dtype() != DType::F32 || dims.last() != Some(&k) {
        return Ok(None);
    }
    let m = x.elem_count() / k.max(1);
    let x = x.contiguous()?;
    let (xs, xl) = x.storage_and_layout();
    let Storage::Cpu(xc) = &*xs else {
        return Ok(None);
    };
    let y = f(&xc.as_slice::<f32>()?[xl.start_offset()..xl.start_offset() + m * k], m);
    drop(xs);
    let mut out_dims = dims[..dims.len() - 1].to_vec();
    out_dims.push(n);
    Tensor::from_vec(y, out_dims, &Device::Cpu).map(Some)
}

/// `y[m, n] = x[m, k] · w[n, k]^T`.
pub fn matmul_rows(x: &[f32], m: usize, w: &[f32], n: usize, k: usize) -> Vec<f32> {
    // Column-major result (`yt[j * m + r]`) so each task writes one contiguous run.
    let mut yt = vec![0f32; n * m];
    yt.par_chunks_mut(COLS_PER_TASK * m).enumerate().for_each(|(t, out)| {
        let j0 = t * COLS_PER_TASK;
        let cols = out.len() / m;
        col_dots(&w[j0 * k..(j0 + cols) * k], x, k, m, out);
    });
    if m == 1 {
        return yt;
    }
    let mut y = vec![0f32; m * n];
    for j in 0..n {
        for r in 0..m {
            y[r * n + j] = yt[j * m + r];
        }
    }
    y
}

/// `out[c * m + r] = dot(x[r], w[c])` for the weight rows `w` (`cols x k`) and every row
/// `r` of `x`.
fn col_dots(w: &[f32], x: &[f32], k: usize, m: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if m > 1 && has_avx512() {
        // SAFETY: the CPU supports AVX-512F, AVX2 and FMA (checked above); `w` holds
        // `out.len() / m` rows of `k` and `x` holds `m` rows of `k`.
        unsafe { avx512::col_dots(w, x, k, m, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above); `w` holds
        // `out.len() / m` rows of `k` and `x` holds `m` rows of `k`.
        unsafe { avx2::col_dots(w, x, k, m, out) };
        return;
    }
    for (c, dst) in out.chunks_mut(m).enumerate() {
        for (r, d) in dst.iter_mut().enumerate() {
            *d = dot_portable(&x[r * k..(r + 1) * k], &w[c * k..(c + 1) * k]);
        }
    }
}

/// `dot(a, b)` over the shorter length, with the same kernels.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let k = a.len().min(b.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: AVX2 and FMA are present; both slices hold at least `k` floats.
        return unsafe { avx2::dot(a.as_ptr(), b.as_ptr(), k) };
    }
    dot_portable(&a[..k], &b[..k])
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| has_avx2_fma() && is_x86_feature_detected!("avx512f"))
}

/// Eight independent partial sums, which the compiler turns into vector lanes.
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += x * y;
    }
    s
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// A `C` weight rows x `R` input rows tile: every load of a weight chunk feeds `R`
    /// FMAs and every load of an input chunk feeds `C`. Each output sums in two chains
    /// over 16-float steps, exactly like [`single`], so a sequence's result is the same
    /// bits whatever else is in the batch.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const C: usize, const R: usize>(w: *const f32, x: *const f32, k: usize, m: usize, out: *mut f32) {
        let mut a0 = [[_mm256_setzero_ps(); R]; C];
        let mut a1 = [[_mm256_setzero_ps(); R]; C];
        let mut i = 0;
        while i + 16 <= k {
            let mut w0 = [_mm256_setzero_ps(); C];
            let mut w1 = [_mm256_setzero_ps(); C];
            for c in 0..C {
                w0[c] = _mm256_loadu_ps(w.add(c * k + i));
                w1[c] = _mm256_loadu_ps(w.add(c * k + i + 8));
            }
            for r in 0..R {
                let x0 = _mm256_loadu_ps(x.add(r * k + i));
                let x1 = _mm256_loadu_ps(x.add(r * k + i + 8));
                for c in 0..C {
                    a0[c][r] = _mm256_fmadd_ps(x0, w0[c], a0[c][r]);
                    a1[c][r] = _mm256_fmadd_ps(x1, w1[c], a1[c][r]);
                }
            }
            i += 16;
        }
        for c in 0..C {
            for r in 0..R {
                *out.add(c * m + r) = finish(a0[c][r], a1[c][r], x.add(r * k), w.add(c * k), i, k);
            }
        }
    }

    /// Sum of the two chains plus the scalar tail `i..k`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn finish(a0: __m256, a1: __m256, x: *const f32, w: *const f32, mut i: usize, k: usize) -> f32 {
        let mut a0 = a0;
        if i + 8 <= k {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(i)), _mm256_loadu_ps(w.add(i)), a0);
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(a0, a1));
        for t in i..k {
            s += *x.add(t) * *w.add(t);
        }
        s
    }

    /// One input row against one weight row: the `C = R = 1` tile.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn single(w: *const f32, x: *const f32, k: usize) -> f32 {
        let mut out = 0f32;
        tile::<1, 1>(w, x, k, 1, &mut out);
        out
    }

    /// # Safety
    /// AVX2 and FMA present; `a` and `b` hold `k` floats.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(a: *const f32, b: *const f32, k: usize) -> f32 {
        single(a, b, k)
    }

    /// Rows of `x` in pairs against weight rows `c0..c0 + C` (a 2 x 2 tile keeps its
    /// 8 accumulators and 4 weight chunks in the 16 AVX2 registers).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows<const C: usize>(w: *const f32, x: *const f32, k: usize, m: usize, out: *mut f32) {
        let mut r0 = 0;
        while r0 < m {
            let (xr, o) = (x.add(r0 * k), out.add(r0));
            if m - r0 >= 2 {
                tile::<C, 2>(w, xr, k, m, o);
            } else {
                tile::<C, 1>(w, xr, k, m, o);
            }
            r0 += 2;
        }
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA; `w` holds `out.len() / m` rows of `k` floats
    /// and `x` holds `m` rows of `k`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn col_dots(w: &[f32], x: &[f32], k: usize, m: usize, out: &mut [f32]) {
        let cols = out.len() / m;
        debug_assert!(w.len() >= cols * k && x.len() >= m * k);
        let (wp, xp, op) = (w.as_ptr(), x.as_ptr(), out.as_mut_ptr());
        if m == 1 {
            for c in 0..cols {
                *op.add(c) = single(wp.add(c * k), xp, k);
            }
            return;
        }
        let mut c0 = 0;
        while c0 < cols {
            let (wc, oc) = (wp.add(c0 * k), op.add(c0 * m));
            if cols - c0 >= 2 {
                rows::<2>(wc, xp, k, m, oc);
            } else {
                rows::<1>(wc, xp, k, m, oc);
            }
            c0 += 2;
        }
    }
}

/// Batches of two or more rows on AVX-512 CPUs: a 16-lane accumulator is exactly the AVX2
/// pair of 8-lane chains side by side (lane `j` sums elements `j mod 16`), and the end
/// reduction is the AVX2 one, so results are the same bits as [`avx2`]'s. The 32 wider
/// registers let a 2 x 8 tile cover a whole decode batch of 8 in one pass over the weight
/// rows (16 accumulators; 10 loads feed 16 FMAs), so each weight row is read from memory
/// once and never again from cache.
///
/// Two things keep the 8-row pass fed (measured on the 0.6B shapes, weights streamed from
/// a 66 GB/s DRAM):
/// * At 8 rows the multiply no longer hides the memory stream, and the hardware prefetcher
///   alone kept about half the bandwidth busy (151936 x 1024 head: 24 ms, 26 GB/s). The
///   tile prefetches the weight rows two tiles ahead at the offset it is reading: 12.3 ms.
///   The prefetch goes to L2, not L1: on a 32 KiB L1 (Zen 4) prefetched rows evicted the
///   inputs, and the 8-row pass ran at 16 GB/s against 21-24 GB/s with the L2 hint (the
///   0.6B model's 8-way ragged step 137-151 -> 116-122 ms). On a 48 KiB L1 (Zen 5) an
///   earlier trial of the L2 hint had measured no better.
/// * The inputs must stay in L1 while the weight rows stream past. 8 rows of `k = 3072`
///   (the MLP's down projection) are 96 KiB, twice L1, and that shape ran at half the
///   speed of `k = 1024`. Wide inputs are therefore walked in [`K_BLOCK`] slices: a group
///   of tiles accumulates one slice of `k` (32 KiB of inputs), parks its accumulators, and
///   moves on. The lanes still add their elements in the same order, so the bits do not
///   change.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Rows of `x` per pass: 2 x 8 accumulators fill half the register file.
    const MAX_R: usize = 8;

    /// How many tiles ahead the weight rows are prefetched: the next tile's rows are
    /// often already requested by the hardware prefetcher by the time the loop gets there.
    const PF_TILES: usize = 2;

    /// Inputs (floats, all rows of a pass) that stay in a 48 KiB L1 beside the weight rows
    /// streaming through it. (On a 32 KiB L1, halving this and [`K_BLOCK`] measured slower
    /// on the `k = 1024` shapes: parking accumulators costs more than the L2 re-reads.)
    const L1_INPUT_FLOATS: usize = 8 * 1024;

    /// Slice of `k` (floats) for wide inputs: 8 rows of it are 32 KiB.
    const K_BLOCK: usize = 1024;

    /// Tiles that share one walk over the slices of `k` (their accumulators park in
    /// memory between slices: 64 vectors, 4 KiB).
    const GROUP_TILES: usize = 4;

    /// Adds `x[r][i0..i1] * w[c][i0..i1]` into `acc[c][r]` (`i0`, `i1` multiples of 16),
    /// prefetching `pf + c * k + i` for every 16-float step `i`.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn accumulate<const C: usize, const R: usize>(
        w: *const f32,
        x: *const f32,
        k: usize,
        (i0, i1): (usize, usize),
        acc: &mut [[__m512; R]; C],
        pf: *const f32,
    ) {
        let mut a = *acc;
        let mut i = i0;
        while i < i1 {
            let mut wv = [_mm512_setzero_ps(); C];
            for c in 0..C {
                wv[c] = _mm512_loadu_ps(w.add(c * k + i));
                // Only a hint, so an address past the end is harmless (`wrapping_add`
                // keeps the pointer arithmetic defined).
                _mm_prefetch::<_MM_HINT_T1>(pf.wrapping_add(c * k + i) as *const i8);
            }
            for r in 0..R {
                let xv = _mm512_loadu_ps(x.add(r * k + i));
                for c in 0..C {
                    a[c][r] = _mm512_fmadd_ps(xv, wv[c], a[c][r]);
                }
            }
            i += 16;
        }
        *acc = a;
    }

    /// Writes `out[c * m + r]` from the accumulators plus the tail `k16..k`.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn store<const C: usize, const R: usize>(
        acc: &[[__m512; R]; C],
        w: *const f32,
        x: *const f32,
        (k16, k): (usize, usize),
        m: usize,
        out: *mut f32,
    ) {
        for c in 0..C {
            for r in 0..R {
                let a = acc[c][r];
                let lo = _mm512_castps512_ps256(a);
                let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a)));
                *out.add(c * m + r) = super::avx2::finish(lo, hi, x.add(r * k), w.add(c * k), k16, k);
            }
        }
    }

    /// `tiles` consecutive tiles of `C` weight rows against `R` rows of `x`. Narrow inputs
    /// take each tile over the whole of `k`; wide ones walk `k` in slices across the group.
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn group<const C: usize, const R: usize>(w: *const f32, x: *const f32, k: usize, m: usize, out: *mut f32, tiles: usize) {
        let k16 = k / 16 * 16;
        let tile_w = |t: usize| w.wrapping_add(t * C * k);
        if R * k <= L1_INPUT_FLOATS {
            for t in 0..tiles {
                let mut acc = [[_mm512_setzero_ps(); R]; C];
                accumulate::<C, R>(tile_w(t), x, k, (0, k16), &mut acc, tile_w(t + PF_TILES));
                store::<C, R>(&acc, tile_w(t), x, (k16, k), m, out.add(t * C * m));
            }
            return;
        }
        let mut acc = [[[_mm512_setzero_ps(); R]; C]; GROUP_TILES];
        let mut i0 = 0;
        while i0 < k16 {
            let i1 = (i0 + K_BLOCK).min(k16);
            for t in 0..tiles {
                // The data read PF_TILES tiles later: this slice of a later tile, or the
                // next slice of an earlier one.
                let ahead = t + PF_TILES;
                let pf = if ahead < tiles { tile_w(ahead) } else { tile_w(ahead - tiles).wrapping_add(i1 - i0) };
                accumulate::<C, R>(tile_w(t), x, k, (i0, i1), &mut acc[t], pf);
            }
            i0 = i1;
        }
        for t in 0..tiles {
            store::<C, R>(&acc[t], tile_w(t), x, (k16, k), m, out.add(t * C * m));
        }
    }

    /// All weight rows of the task against `R` rows of `x`: groups of 2-row tiles, then a
    /// last single row.
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn pass<const R: usize>(w: *const f32, x: *const f32, k: usize, m: usize, out: *mut f32, cols: usize) {
        let mut c0 = 0;
        while cols - c0 >= 2 {
            let tiles = ((cols - c0) / 2).min(GROUP_TILES);
            group::<2, R>(w.add(c0 * k), x, k, m, out.add(c0 * m), tiles);
            c0 += 2 * tiles;
        }
        if c0 < cols {
            group::<1, R>(w.add(c0 * k), x, k, m, out.add(c0 * m), 1);
        }
    }

    /// # Safety
    /// The CPU must support AVX-512F, AVX2 and FMA; `w` holds `out.len() / m` rows of `k`
    /// floats and `x` holds `m` rows of `k`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn col_dots(w: &[f32], x: &[f32], k: usize, m: usize, out: &mut [f32]) {
        let cols = out.len() / m;
        debug_assert!(w.len() >= cols * k && x.len() >= m * k);
        let (wp, xp, op) = (w.as_ptr(), x.as_ptr(), out.as_mut_ptr());
        let mut r0 = 0;
        while r0 < m {
            let (xr, o) = (xp.add(r0 * k), op.add(r0));
            match m - r0 {
                1 => pass::<1>(wp, xr, k, m, o, cols),
                2 => pass::<2>(wp, xr, k, m, o, cols),
                3 => pass::<3>(wp, xr, k, m, o, cols),
                4 => pass::<4>(wp, xr, k, m, o, cols),
                5 => pass::<5>(wp, xr, k, m, o, cols),
                6 => pass::<6>(wp, xr, k, m, o, cols),
                7 => pass::<7>(wp, xr, k, m, o, cols),
                _ => pass::<MAX_R>(wp, xr, k, m, o, cols),
            }
            r0 += MAX_R;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `x [m, k] w[n, k]^T` summed in f64 (for the kernels' tests).
    pub(crate) fn reference(x: &[f32], m: usize, w: &[f32], n: usize, k: usize) -> Vec<f32> {
        let mut y = vec![0f32; m * n];
        for r in 0..m {
            for j in 0..n {
                y[r * n + j] = (0..k).map(|t| x[r * k + t] as f64 * w[j * k + t] as f64).sum::<f64>() as f32;
            }
        }
        y
    }

    #[test]
    fn matches_a_plain_matmul_for_every_row_count_and_odd_sizes() {
        for (m, n, k) in [(1, 130, 37), (2, 64, 64), (3, 65, 100), (5, 200, 1024), (8, 129, 48), (16, 70, 33), (8, 67, 3000), (11, 19, 2100), (4, 9, 4100), (37, 150, 200), (MAX_ROWS, 65, 64)] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0).collect();
            let got = matmul_rows(&x, m, &w, n, k);
            let want = reference(&x, m, &w, n, k);
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "m={m} n={n} k={k}: {a} vs {b}");
            }
            // A row's result does not depend on the rest of the batch (same bits).
            for r in [0, m / 2, m - 1] {
                let alone = matmul_rows(&x[r * k..(r + 1) * k], 1, &w, n, k);
                assert_eq!(&got[r * n..(r + 1) * n], &alone[..], "m={m} row {r}");
            }
            for (j, &y) in got[..n].iter().enumerate() {
                assert_eq!(y, dot(&x[..k], &w[j * k..(j + 1) * k]), "dot agrees, column {j}");
            }
        }
    }

    #[test]
    fn tensor_entry_point_checks_what_it_takes() {
        let dev = Device::Cpu;
        let w = Tensor::arange(0f32, 12.0, &dev).unwrap().reshape((3, 4)).unwrap();
        let x = Tensor::ones((1, 2, 4), DType::F32, &dev).unwrap();
        let y = skinny_linear(&x, &w).unwrap().expect("taken");
        assert_eq!(y.dims(), &[1, 2, 3]);
        assert_eq!(y.to_vec3::<f32>().unwrap()[0][1], vec![6.0, 22.0, 38.0]);
        let tall = Tensor::ones((MAX_ROWS + 1, 4), DType::F32, &dev).unwrap();
        assert!(skinny_linear(&tall, &w).unwrap().is_none());
        assert!(skinny_linear(&x, &w.t().unwrap()).unwrap().is_none(), "transposed weight");
    }
}
