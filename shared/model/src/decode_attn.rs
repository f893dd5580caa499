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
//! in registers while the values stream past, so each key and value is read once.
//! Other CPUs and head sizes take plain loops.

// The SIMD tiles index their register arrays by (row, vector) on purpose.
#![allow(clippy::needless_range_loop)]

/// `scores[r * stride + p] = scale * dot(q[r], key p)` for the `rows` query rows of `q`
/// (`rows x d`) and positions `p < len`, key `p` being `keys[p * sp..][..d]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn scores(q: &[f32], rows: usize, d: usize, keys: &[f32], sp: usize, len: usize, scale: f32, out: &mut [f32], stride: usize) {
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
    for r in 0..rows {
        let qr = &q[r * d..(r + 1) * d];
        for p in 0..len {
            out[r * stride + p] = crate::gemv::dot(qr, &keys[p * sp..p * sp + d]) * scale;
        }
    }
}

/// `out[r * d..][..d] += sum over p < len of w[r * stride + p] * value p` for the `rows`
/// output rows, value `p` being `values[p * sp..][..d]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn weighted_values(w: &[f32], stride: usize, rows: usize, d: usize, values: &[f32], sp: usize, len: usize, out: &mut [f32]) {
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
    for r in 0..rows {
        let o = &mut out[r * d..(r + 1) * d];
        for p in 0..len {
            let wp = w[r * stride + p];
            o.iter_mut().zip(&values[p * sp..p * sp + d]).for_each(|(o, x)| *o += wp * x);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
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
                (1, 1) => $f::<1, 1>($($arg),*), (1, _) => $f::<1, 2>($($arg),*),
                (2, 1) => $f::<2, 1>($($arg),*), (2, _) => $f::<2, 2>($($arg),*),
                (3, 1) => $f::<3, 1>($($arg),*), (3, _) => $f::<3, 2>($($arg),*),
                (4, 1) => $f::<4, 1>($($arg),*), (4, _) => $f::<4, 2>($($arg),*),
                (5, 1) => $f::<5, 1>($($arg),*), (5, _) => $f::<5, 2>($($arg),*),
                (6, 1) => $f::<6, 1>($($arg),*), (6, _) => $f::<6, 2>($($arg),*),
                (7, 1) => $f::<7, 1>($($arg),*), (7, _) => $f::<7, 2>($($arg),*),
                (_, 1) => $f::<8, 1>($($arg),*), (_, _) => $f::<8, 2>($($arg),*),
            }
        };
    }

    /// # Safety
    /// AVX-512F present, `d == 16 * v` with `v` in 1..=8, `rows` in 1..=2, and the
    /// pointers cover what [`super::scores`] checks.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn scores(v: usize, rows: usize, q: *const f32, d: usize, keys: *const f32, sp: usize, len: usize, scale: f32, out: *mut f32, stride: usize) {
        by_shape!(scores_tile, v, rows, (q, d, keys, sp, len, scale, out, stride))
    }

    /// # Safety
    /// As [`scores`], for [`super::weighted_values`].
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn values(v: usize, rows: usize, w: *const f32, stride: usize, values: *const f32, sp: usize, len: usize, out: *mut f32, d: usize) {
        by_shape!(values_tile, v, rows, (w, stride, values, sp, len, out, d))
    }

    /// `R` query rows of `V` vectors held in registers against each key in turn.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn scores_tile<const V: usize, const R: usize>(q: *const f32, d: usize, keys: *const f32, sp: usize, len: usize, scale: f32, out: *mut f32, stride: usize) {
        let mut qv = [[_mm512_setzero_ps(); V]; R];
        for r in 0..R {
            for v in 0..V {
                qv[r][v] = _mm512_loadu_ps(q.add(r * d + v * 16));
            }
        }
        for p in 0..len {
            let kp = keys.add(p * sp);
            let mut acc = [_mm512_setzero_ps(); R];
            for v in 0..V {
                let k = _mm512_loadu_ps(kp.add(v * 16));
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
    unsafe fn values_tile<const V: usize, const R: usize>(w: *const f32, stride: usize, values: *const f32, sp: usize, len: usize, out: *mut f32, d: usize) {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        for r in 0..R {
            for v in 0..V {
                acc[r][v] = _mm512_loadu_ps(out.add(r * d + v * 16));
            }
        }
        for p in 0..len {
            let vp = values.add(p * sp);
            let mut wr = [_mm512_setzero_ps(); R];
            for r in 0..R {
                wr[r] = _mm512_set1_ps(*w.add(r * stride + p));
            }
            for v in 0..V {
                let x = _mm512_loadu_ps(vp.add(v * 16));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every head size the kernels take (and one they do not), odd row counts, strided
    /// keys: against plain f64 sums.
    #[test]
    fn scores_and_values_match_plain_sums() {
        for (d, rows, len, sp) in [(128, 2, 37, 128), (64, 3, 5, 80), (16, 1, 1, 16), (48, 4, 19, 48), (24, 2, 7, 24)] {
            let q: Vec<f32> = (0..rows * d).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
            let kv: Vec<f32> = (0..len * sp).map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0).collect();
            let (stride, scale) = (len + 3, 0.125f32);
            let mut s = vec![0f32; rows * stride];
            scores(&q, rows, d, &kv, sp, len, scale, &mut s, stride);
            for r in 0..rows {
                for p in 0..len {
                    let want: f64 = (0..d).map(|i| q[r * d + i] as f64 * kv[p * sp + i] as f64).sum::<f64>() * scale as f64;
                    assert!((s[r * stride + p] as f64 - want).abs() < 1e-4, "d={d} r={r} p={p}");
                }
            }
            let mut out = vec![0.5f32; rows * d];
            weighted_values(&s, stride, rows, d, &kv, sp, len, &mut out);
            for r in 0..rows {
                for i in 0..d {
                    let want: f64 = 0.5 + (0..len).map(|p| s[r * stride + p] as f64 * kv[p * sp + i] as f64).sum::<f64>();
                    assert!((out[r * d + i] as f64 - want).abs() < 1e-4, "d={d} r={r} i={i}");
                }
            }
        }
    }
}
