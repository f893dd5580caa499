//! One decode token's attention over the cached positions of one KV head, for the query
//! heads that share it (grouped-query attention): the scores `scale * q·k` of every
//! position, and after the softmax the weighted sum of the values.
//!
//! Why its own kernel: at a decode step each query head is one row, so the work is
//! `heads x positions` dot products of `head_dim` floats. Done one dot call at a time,
//! and with the output row loaded and stored at every position, attention over a
//! 32-96 token context took ~24% of the 0.6B model's 8-way Q8_0 step (2-core Zen 5),
//! as much as a third of the matmuls. Here (AVX-512) the query rows stay in registers
//! while the keys stream past, and the output rows of both query heads of a KV head stay
//! in registers while the values stream past, so each key and value is read once. AVX2
//! CPUs take [`avx2`] (fewer, narrower registers: the loops are turned around); other
//! CPUs and head sizes take plain loops.
//!
//! The cache may hold f32 or f16 values ([`KvElem`]); f16 rows are widened to f32 as they
//! are loaded (one `vcvtph2ps` per 16 values with AVX-512, per 8 with AVX2), so the arithmetic is f32 either way and
//! only the bytes read halve.

// The SIMD tiles index their register arrays by (row, vector) on purpose.
#![allow(clippy::needless_range_loop)]

use half::f16;

/// A value type the KV cache stores: f32, or f16 (half the bytes a decode step reads).
pub(crate) trait KvElem: Copy + Send + Sync + 'static {
    /// Whether the type is f16 (the vector kernels widen it on load).
    const HALF: bool;
    fn to_f32(self) -> f32;
    /// `dot(q, k)` where the vector kernels do not run.
    fn dot(q: &[f32], k: &[Self]) -> f32;
}

impl KvElem for f32 {
    const HALF: bool = false;
    fn to_f32(self) -> f32 {
        self
    }
    fn dot(q: &[f32], k: &[f32]) -> f32 {
        crate::gemv::dot(q, k)
    }
}

impl KvElem for f16 {
    const HALF: bool = true;
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn dot(q: &[f32], k: &[f16]) -> f32 {
        q.iter().zip(k).map(|(&a, &b)| a * b.to_f32()).sum()
    }
}

/// `scores[r * stride + p] = scale * dot(q[r], key p)` for the `rows` query rows of `q`
/// (`rows x d`) and positions `p < len`, key `p` being `keys[p * sp..][..d]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn scores<T: KvElem>(q: &[f32], rows: usize, d: usize, keys: &[T], sp: usize, len: usize, scale: f32, out: &mut [f32], stride: usize) {
    if len == 0 || rows == 0 {
        return;
    }
    assert!(q.len() >= rows * d && keys.len() >= (len - 1) * sp + d && out.len() >= (rows - 1) * stride + len);
    #[cfg(target_arch = "x86_64")]
    if let Some(v) = avx512::vectors(d) {
        let mut r = 0;
        while r < rows {
            let n = (rows - r).min(2);
            // SAFETY: AVX-512F is present and `d == 16 * v` (`vectors`); the bounds are
            // checked above.
            unsafe { avx512::scores(v, n, q[r * d..].as_ptr(), d, keys.as_ptr(), sp, len, scale, out[r * stride..].as_mut_ptr(), stride) };
            r += n;
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if avx2::takes(d) {
        // SAFETY: AVX2, FMA and F16C are present and `d` a multiple of 32 (`takes`); the
        // bounds are checked above.
        unsafe { avx2::scores(q, rows, d, keys, sp, len, scale, out, stride) };
        return;
    }
    for r in 0..rows {
        let qr = &q[r * d..(r + 1) * d];
        for p in 0..len {
            out[r * stride + p] = T::dot(qr, &keys[p * sp..p * sp + d]) * scale;
        }
    }
}

/// `out[r * d..][..d] += sum over p < len of w[r * stride + p] * value p` for the `rows`
/// output rows, value `p` being `values[p * sp..][..d]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn weighted_values<T: KvElem>(w: &[f32], stride: usize, rows: usize, d: usize, values: &[T], sp: usize, len: usize, out: &mut [f32]) {
    if len == 0 || rows == 0 {
        return;
    }
    assert!(w.len() >= (rows - 1) * stride + len && values.len() >= (len - 1) * sp + d && out.len() >= rows * d);
    #[cfg(target_arch = "x86_64")]
    if let Some(v) = avx512::vectors(d) {
        let mut r = 0;
        while r < rows {
            let n = (rows - r).min(2);
            // SAFETY: AVX-512F is present and `d == 16 * v` (`vectors`); the bounds are
            // checked above.
            unsafe { avx512::values(v, n, w[r * stride..].as_ptr(), stride, values.as_ptr(), sp, len, out[r * d..].as_mut_ptr(), d) };
            r += n;
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if avx2::takes(d) {
        // SAFETY: as in `scores`.
        unsafe { avx2::values(w, stride, rows, d, values, sp, len, out) };
        return;
    }
    for r in 0..rows {
        let o = &mut out[r * d..(r + 1) * d];
        for p in 0..len {
            let wp = w[r * stride + p];
            o.iter_mut().zip(&values[p * sp..p * sp + d]).for_each(|(o, x)| *o += wp * x.to_f32());
        }
    }
}

/// Positions ahead of the read that the vector kernels prefetch a key or value row. A
/// sequence's rows of one KV head are a run of a few tens of KiB that the hardware
/// prefetcher meets cold at every head and layer.
#[cfg(target_arch = "x86_64")]
const PF_POSITIONS: usize = 8;

/// Prefetches into L1 the cache lines of one cached row of `d` values.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_row<T: KvElem>(row: *const T, d: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    let per_line = 64 / std::mem::size_of::<T>();
    let mut v = 0;
    while v < d {
        // SAFETY: a prefetch never faults; `wrapping_add` keeps the address arithmetic
        // defined even past the row.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(v) as *const i8) };
        v += per_line;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{prefetch_row, KvElem, PF_POSITIONS};
    use std::arch::x86_64::*;

    /// `d / 16` when the kernels take this head size on this CPU (`d` a multiple of 16, at
    /// most 128: two rows of accumulators fit the registers).
    pub(super) fn vectors(d: usize) -> Option<usize> {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        let has = *HAS.get_or_init(|| is_x86_feature_detected!("avx512f"));
        (has && d.is_multiple_of(16) && (16..=128).contains(&d)).then_some(d / 16)
    }

    macro_rules! by_shape {
        ($f:ident, $v:expr, $r:expr, ($($arg:expr),*)) => {
            match ($v, $r) {
                (1, 1) => $f::<T, 1, 1>($($arg),*), (1, _) => $f::<T, 1, 2>($($arg),*),
                (2, 1) => $f::<T, 2, 1>($($arg),*), (2, _) => $f::<T, 2, 2>($($arg),*),
                (3, 1) => $f::<T, 3, 1>($($arg),*), (3, _) => $f::<T, 3, 2>($($arg),*),
                (4, 1) => $f::<T, 4, 1>($($arg),*), (4, _) => $f::<T, 4, 2>($($arg),*),
                (5, 1) => $f::<T, 5, 1>($($arg),*), (5, _) => $f::<T, 5, 2>($($arg),*),
                (6, 1) => $f::<T, 6, 1>($($arg),*), (6, _) => $f::<T, 6, 2>($($arg),*),
                (7, 1) => $f::<T, 7, 1>($($arg),*), (7, _) => $f::<T, 7, 2>($($arg),*),
                (_, 1) => $f::<T, 8, 1>($($arg),*), (_, _) => $f::<T, 8, 2>($($arg),*),
            }
        };
    }

    /// # Safety
    /// AVX-512F present, `d == 16 * v` with `v` in 1..=8, `rows` in 1..=2, and the
    /// pointers cover what [`super::scores`] checks.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn scores<T: KvElem>(v: usize, rows: usize, q: *const f32, d: usize, keys: *const T, sp: usize, len: usize, scale: f32, out: *mut f32, stride: usize) {
        by_shape!(scores_tile, v, rows, (q, d, keys, sp, len, scale, out, stride))
    }

    /// # Safety
    /// As [`scores`], for [`super::weighted_values`].
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn values<T: KvElem>(v: usize, rows: usize, w: *const f32, stride: usize, values: *const T, sp: usize, len: usize, out: *mut f32, d: usize) {
        by_shape!(values_tile, v, rows, (w, stride, values, sp, len, out, d))
    }

    /// 16 values of a cached row as f32.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16<T: KvElem>(p: *const T) -> __m512 {
        if T::HALF {
            _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
        } else {
            _mm512_loadu_ps(p as *const f32)
        }
    }

    /// `R` query rows of `V` vectors held in registers against each key in turn.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn scores_tile<T: KvElem, const V: usize, const R: usize>(q: *const f32, d: usize, keys: *const T, sp: usize, len: usize, scale: f32, out: *mut f32, stride: usize) {
        let mut qv = [[_mm512_setzero_ps(); V]; R];
        for r in 0..R {
            for v in 0..V {
                qv[r][v] = _mm512_loadu_ps(q.add(r * d + v * 16));
            }
        }
        for p in 0..len {
            let kp = keys.add(p * sp);
            if p + PF_POSITIONS < len {
                prefetch_row(kp.add(PF_POSITIONS * sp), 16 * V);
            }
            let mut acc = [_mm512_setzero_ps(); R];
            for v in 0..V {
                let k = load16(kp.add(v * 16));
                for r in 0..R {
                    acc[r] = _mm512_fmadd_ps(qv[r][v], k, acc[r]);
                }
            }
            for r in 0..R {
                *out.add(r * stride + p) = _mm512_reduce_add_ps(acc[r]) * scale;
            }
        }
    }

    /// `R` output rows of `V` vectors held in registers while the values stream past.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn values_tile<T: KvElem, const V: usize, const R: usize>(w: *const f32, stride: usize, values: *const T, sp: usize, len: usize, out: *mut f32, d: usize) {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        for r in 0..R {
            for v in 0..V {
                acc[r][v] = _mm512_loadu_ps(out.add(r * d + v * 16));
            }
        }
        for p in 0..len {
            let vp = values.add(p * sp);
            if p + PF_POSITIONS < len {
                prefetch_row(vp.add(PF_POSITIONS * sp), 16 * V);
            }
            let mut wr = [_mm512_setzero_ps(); R];
            for r in 0..R {
                wr[r] = _mm512_set1_ps(*w.add(r * stride + p));
            }
            for v in 0..V {
                let x = load16(vp.add(v * 16));
                for r in 0..R {
                    acc[r][v] = _mm512_fmadd_ps(wr[r], x, acc[r][v]);
                }
            }
        }
        for r in 0..R {
            for v in 0..V {
                _mm512_storeu_ps(out.add(r * d + v * 16), acc[r][v]);
            }
        }
    }
}

/// The kernels for AVX2 CPUs (no AVX-512): 16 registers of 8 floats cannot hold a query
/// row or an output row of 128 values, so the loops are turned around. Scores take 4
/// positions at a time, each query vector loaded once for the 4 keys, with one
/// accumulator per (row, position) and the 4 sums reduced together. Values take the
/// output in chunks of 32 values (2 rows x 4 vectors of accumulators) with the values
/// streaming past once per chunk (the head's values stay in L1 or L2 between chunks).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{prefetch_row, KvElem, PF_POSITIONS};
    use std::arch::x86_64::*;

    /// Values of the output chunk [`values`] keeps in registers per row.
    const CHUNK: usize = 32;

    /// Whether the kernels take head size `d` on this CPU (AVX2, FMA and F16C; `d` a
    /// multiple of 32).
    pub(super) fn takes(d: usize) -> bool {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        let has = *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c"));
        has && d > 0 && d.is_multiple_of(CHUNK)
    }

    /// 8 values of a cached row as f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8<T: KvElem>(p: *const T) -> __m256 {
        if T::HALF {
            _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
        } else {
            _mm256_loadu_ps(p as *const f32)
        }
    }

    /// The sums of 4 accumulators' lanes, in lanes 0..4. A single sum is `hsum4(a, a, a,
    /// a)`'s lane 0: the same operations, so the same bits whichever group of 4 a
    /// position falls in.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum4(a: __m256, b: __m256, c: __m256, d: __m256) -> __m128 {
        let h = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
        _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h))
    }

    /// [`super::scores`] for every row, rows in pairs (a KV head's query heads share each
    /// key load).
    ///
    /// # Safety
    /// AVX2, FMA and F16C present, `d` a multiple of 32, and the slices cover what
    /// [`super::scores`] checks.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn scores<T: KvElem>(q: &[f32], rows: usize, d: usize, keys: &[T], sp: usize, len: usize, scale: f32, out: &mut [f32], stride: usize) {
        let mut r = 0;
        while r < rows {
            let (qp, op) = (q.as_ptr().add(r * d), out.as_mut_ptr().add(r * stride));
            if rows - r >= 2 {
                scores_rows::<T, 2>(qp, d, keys.as_ptr(), sp, len, scale, op, stride);
                r += 2;
            } else {
                scores_rows::<T, 1>(qp, d, keys.as_ptr(), sp, len, scale, op, stride);
                r += 1;
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scores_rows<T: KvElem, const R: usize>(q: *const f32, d: usize, keys: *const T, sp: usize, len: usize, scale: f32, out: *mut f32, stride: usize) {
        let scale4 = _mm_set1_ps(scale);
        let mut p = 0;
        while p + 4 <= len {
            for j in 0..4 {
                if p + j + PF_POSITIONS < len {
                    prefetch_row(keys.add((p + j + PF_POSITIONS) * sp), d);
                }
            }
            let mut acc = [[_mm256_setzero_ps(); 4]; R];
            for v in (0..d).step_by(8) {
                let k = [0, 1, 2, 3].map(|j| load8(keys.add((p + j) * sp + v)));
                for r in 0..R {
                    let qv = _mm256_loadu_ps(q.add(r * d + v));
                    for j in 0..4 {
                        acc[r][j] = _mm256_fmadd_ps(qv, k[j], acc[r][j]);
                    }
                }
            }
            for r in 0..R {
                let s = _mm_mul_ps(hsum4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]), scale4);
                _mm_storeu_ps(out.add(r * stride + p), s);
            }
            p += 4;
        }
        while p < len {
            let mut acc = [_mm256_setzero_ps(); R];
            for v in (0..d).step_by(8) {
                let k = load8(keys.add(p * sp + v));
                for r in 0..R {
                    acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(r * d + v)), k, acc[r]);
                }
            }
            for r in 0..R {
                let s = _mm_mul_ps(hsum4(acc[r], acc[r], acc[r], acc[r]), scale4);
                *out.add(r * stride + p) = _mm_cvtss_f32(s);
            }
            p += 1;
        }
    }

    /// [`super::weighted_values`] for every row, rows in pairs.
    ///
    /// # Safety
    /// As [`scores`], for [`super::weighted_values`].
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn values<T: KvElem>(w: &[f32], stride: usize, rows: usize, d: usize, values: &[T], sp: usize, len: usize, out: &mut [f32]) {
        let mut r = 0;
        while r < rows {
            let n = (rows - r).min(2);
            let (wp, op) = (w.as_ptr().add(r * stride), out.as_mut_ptr().add(r * d));
            for c in (0..d).step_by(CHUNK) {
                // The first chunk's pass prefetches the rows for the rest.
                if n == 2 {
                    values_chunk::<T, 2>(wp, stride, values.as_ptr().add(c), sp, len, op.add(c), d, c == 0);
                } else {
                    values_chunk::<T, 1>(wp, stride, values.as_ptr().add(c), sp, len, op.add(c), d, c == 0);
                }
            }
            r += n;
        }
    }

    /// Values `c..c + 32` of `R` output rows (`out` at `c`, rows `d` apart), over every
    /// position (`values` at value `c` of position 0).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn values_chunk<T: KvElem, const R: usize>(w: *const f32, stride: usize, values: *const T, sp: usize, len: usize, out: *mut f32, d: usize, prefetch: bool) {
        let mut acc = [[_mm256_setzero_ps(); 4]; R];
        for r in 0..R {
            for v in 0..4 {
                acc[r][v] = _mm256_loadu_ps(out.add(r * d + v * 8));
            }
        }
        for p in 0..len {
            let vp = values.add(p * sp);
            if prefetch && p + PF_POSITIONS < len {
                prefetch_row(vp.add(PF_POSITIONS * sp), d);
            }
            let wr = [0, 1].map(|r| _mm256_set1_ps(*w.add(r.min(R - 1) * stride + p)));
            for v in 0..4 {
                let x = load8(vp.add(v * 8));
                for r in 0..R {
                    acc[r][v] = _mm256_fmadd_ps(wr[r], x, acc[r][v]);
                }
            }
        }
        for r in 0..R {
            for v in 0..4 {
                _mm256_storeu_ps(out.add(r * d + v * 8), acc[r][v]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every head size the kernels take (and one they do not), odd row counts, strided
    /// keys: against plain f64 sums.
    #[test]
    fn scores_and_values_match_plain_sums() {
        check_against_plain_sums(|x| x, Path::Dispatched);
    }

    /// The AVX2 kernels directly (a CPU with AVX-512 dispatches to those instead), for
    /// both cache types.
    #[test]
    fn avx2_kernels_match_plain_sums() {
        #[cfg(target_arch = "x86_64")]
        if avx2::takes(32) {
            check_against_plain_sums(|x| x, Path::Avx2);
            check_against_plain_sums(f16::from_f32, Path::Avx2);
        }
    }

    #[derive(Clone, Copy, PartialEq)]
    enum Path {
        Dispatched,
        Avx2,
    }

    /// The same over an f16 cache: the kernels widen each value exactly, so they match
    /// f64 sums of the stored (rounded) values.
    #[test]
    fn f16_cache_matches_plain_sums() {
        check_against_plain_sums(f16::from_f32, Path::Dispatched);
    }

    fn check_against_plain_sums<T: KvElem>(store: impl Fn(f32) -> T, path: Path) {
        for (d, rows, len, sp) in [(128, 2, 37, 128), (64, 3, 5, 80), (16, 1, 1, 16), (48, 4, 19, 48), (24, 2, 7, 24), (128, 1, 12, 256), (96, 5, 3, 100)] {
            if path == Path::Avx2 && d % 32 != 0 {
                continue;
            }
            let q: Vec<f32> = (0..rows * d).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
            let kv: Vec<T> = (0..len * sp).map(|i| store(((i * 53 % 97) as f32 - 48.0) / 48.0)).collect();
            let (stride, scale) = (len + 3, 0.125f32);
            let mut s = vec![0f32; rows * stride];
            match path {
                Path::Dispatched => scores(&q, rows, d, &kv, sp, len, scale, &mut s, stride),
                // SAFETY: `takes(32)` held, `d` is a multiple of 32, the sizes are as
                // `scores` checks.
                #[cfg(target_arch = "x86_64")]
                Path::Avx2 => unsafe { avx2::scores(&q, rows, d, &kv, sp, len, scale, &mut s, stride) },
                #[cfg(not(target_arch = "x86_64"))]
                Path::Avx2 => unreachable!(),
            }
            for r in 0..rows {
                for p in 0..len {
                    let want: f64 = (0..d).map(|i| q[r * d + i] as f64 * kv[p * sp + i].to_f32() as f64).sum::<f64>() * scale as f64;
                    assert!((s[r * stride + p] as f64 - want).abs() < 1e-4, "d={d} r={r} p={p}");
                }
            }
            let mut out = vec![0.5f32; rows * d];
            match path {
                Path::Dispatched => weighted_values(&s, stride, rows, d, &kv, sp, len, &mut out),
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                Path::Avx2 => unsafe { avx2::values(&s, stride, rows, d, &kv, sp, len, &mut out) },
                #[cfg(not(target_arch = "x86_64"))]
                Path::Avx2 => unreachable!(),
            }
            for r in 0..rows {
                for i in 0..d {
                    let want: f64 = 0.5 + (0..len).map(|p| s[r * stride + p] as f64 * kv[p * sp + i].to_f32() as f64).sum::<f64>();
                    assert!((out[r * d + i] as f64 - want).abs() < 1e-4, "d={d} r={r} i={i}");
                }
            }
        }
    }
}
