//! Fused causal attention for the CPU (f32), forward and backward, flash-attention style.
//!
//! Why: attention through candle tensors materialises `[B, H, T, L]` scores several times
//! per layer (scale, mask add, softmax, and in the backward the recomputed probabilities,
//! `dP`, `dP * P`, ...), each a fresh allocation and a full pass, and it computes the masked
//! upper triangle too. Here each (batch, KV head) pair is one task: row blocks of the query
//! heads sharing that KV head are multiplied against only the keys they may see (`gemm`
//! on sub-matrices), softmax runs in place on a block-sized scratch buffer, and only the
//! per-row log-sum-exp is kept for the backward, which recomputes the probabilities block
//! by block. GQA needs no repeated K/V. Tasks run on rayon.
//!
//! Masking: query row `i` (absolute position `offset + i`) sees key `j` when
//! `j <= offset + i` and, if given, `key_valid[b * L + j] != 0` (padding). A row that sees no
//! key outputs zeros.

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Query rows per block: big enough for gemm to run near peak, small enough that a
/// `[BLOCK, L]` score block stays in cache.
const BLOCK: usize = 64;

/// The masking rule shared by forward and backward.
#[derive(Debug, Clone, Default)]
pub struct AttnMask {
    /// Absolute position of query row 0 (the KV cache length before this chunk).
    pub offset: usize,
    /// `[B * L]`, non-zero where the key is a real token; `None`: all keys are real.
    pub key_valid: Option<Vec<u8>>,
}

/// How `q`/`o` (`[.., Hq, T, D]` heads) and `k`/`v` (`Hkv` heads, `L` rows) lie in memory.
///
/// `Bhtd` is candle's usual `[B, H, T, D]`; `Bthd` is `[B, T, H, D]`, what a projection's
/// output is after a reshape, so the training path needs no transposed copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttnLayout {
    Bhtd,
    Bthd,
}

#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    hq: usize,
    hkv: usize,
    t: usize,
    l: usize,
    d: usize,
    layout: AttnLayout,
}

impl Dims {
    fn n_rep(&self) -> usize {
        self.hq / self.hkv
    }
    /// Offset of row 0 of query head `h` in batch row `bi`, and the row stride.
    fn q_at(&self, bi: usize, h: usize) -> (usize, usize) {
        match self.layout {
            AttnLayout::Bhtd => ((bi * self.hq + h) * self.t * self.d, self.d),
            AttnLayout::Bthd => (bi * self.t * self.hq * self.d + h * self.d, self.hq * self.d),
        }
    }
    /// Offset of row 0 of KV head `g` in batch row `bi`, and the row stride.
    fn kv_at(&self, bi: usize, g: usize) -> (usize, usize) {
        match self.layout {
            AttnLayout::Bhtd => ((bi * self.hkv + g) * self.l * self.d, self.d),
            AttnLayout::Bthd => (bi * self.l * self.hkv * self.d + g * self.d, self.hkv * self.d),
        }
    }
    /// Copies task-ordered query-shaped blocks (`[B, Hkv, n_rep, T, D]`) into the layout.
    fn scatter_q(&self, blocks: &[Vec<f32>]) -> Vec<f32> {
        let mut out = vec![0f32; self.b * self.hq * self.t * self.d];
        let n_rep = self.n_rep();
        for (task, blk) in blocks.iter().enumerate() {
            let (bi, g) = (task / self.hkv, task % self.hkv);
            for r in 0..n_rep {
                let (off, rs) = self.q_at(bi, g * n_rep + r);
                for i in 0..self.t {
                    let src = &blk[(r * self.t + i) * self.d..(r * self.t + i + 1) * self.d];
                    out[off + i * rs..off + i * rs + self.d].copy_from_slice(src);
                }
            }
        }
        out
    }
    /// Copies task-ordered KV-shaped blocks (`[B, Hkv, L, D]`) into the layout.
    fn scatter_kv(&self, blocks: &[Vec<f32>]) -> Vec<f32> {
        let mut out = vec![0f32; self.b * self.hkv * self.l * self.d];
        for (task, blk) in blocks.iter().enumerate() {
            let (off, rs) = self.kv_at(task / self.hkv, task % self.hkv);
            for j in 0..self.l {
                out[off + j * rs..off + j * rs + self.d].copy_from_slice(&blk[j * self.d..(j + 1) * self.d]);
            }
        }
        out
    }
}

/// `dst[m x n] (row stride dst_rs) (+)= a @ b`, `a: [m x k]`, `b: [k x n]`, each given by
/// (row stride, column stride). Single-threaded: parallelism is across attention tasks.
#[allow(clippy::too_many_arguments)]
fn mm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
) {
    gemm_f32(m, n, k, dst, dst_rs, accumulate, a, a_rs, a_cs, b, b_rs, b_cs, gemm::Parallelism::None)
}

/// [`mm`] with a choice of parallelism (bounds-checked, so safe to call).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
    par: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst.len() >= (m - 1) * dst_rs + n);
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * dst_rs..r * dst_rs + n].fill(0.0);
            }
        }
        return;
    }
    assert!(a.len() > (m - 1) * a_rs + (k - 1) * a_cs);
    assert!(b.len() > (k - 1) * b_rs + (n - 1) * b_cs);
    // SAFETY: the asserts above bound every index gemm touches within the slices, and
    // `dst` does not alias `a` or `b` (distinct borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// `e^x` for `x <= 0` (what softmax feeds it), in a form the compiler vectorizes: Cephes'
/// range reduction and polynomial (relative error ~2e-7), exact `0` below -87 (so masked
/// `-inf` scores give `0`). libm's scalar `expf` was a tenth of a tiny-preset training
/// step.
#[inline(always)]
pub(crate) fn exp_nonpos(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let xc = x.max(-87.0);
    let big = xc * LOG2E + MAGIC;
    let n = big - MAGIC;
    let ni = (big.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let v = y * f32::from_bits(((ni + 127) << 23) as u32);
    if x < -87.0 {
        0.0
    } else {
        v
    }
}

/// `row[i] = exp(row[i] - m)` for a row whose maximum is `m`; returns the row's new sum.
pub(crate) fn exp_sub_sum(row: &mut [f32], m: f32) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = row.chunks_exact_mut(16);
    for c in &mut chunks {
        for (a, x) in acc.iter_mut().zip(c.iter_mut()) {
            *x = exp_nonpos(*x - m);
            *a += *x;
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for x in chunks.into_remainder() {
        *x = exp_nonpos(*x - m);
        sum += *x;
    }
    sum
}

/// `sum(exp(xs[i] - m))` for `m >= max(xs)`, without writing: 16 f32 lanes over chunks of
/// 1024, the chunk sums in f64 (a 151,936-token logits row sums to within 1e-6 of f64
/// `exp`s, at vector speed; the engine's sampler takes a row's log-softmax each step).
pub fn sum_exp_sub(xs: &[f32], m: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512 F is present.
        return unsafe { sum_exp_sub_avx512(xs, m) };
    }
    sum_exp_sub_body(xs, m)
}

/// Sampling weights of a logits row: `w[i] = exp((xs[i] - m) * s)` for `m >= max(xs)` and
/// `s > 0` (the inverse of a temperature), with the vectorized exp, and into `chunk_sums`
/// (cleared first) the sum of each run of 1024 weights, in f64 as [`sum_exp_sub`] adds
/// them. A sampler draws from these with one pass over the chunk sums and one over a
/// chunk, where an f64 `exp` per vocabulary entry took milliseconds a row.
pub fn exp_weights(xs: &[f32], m: f32, s: f32, w: &mut [f32], chunk_sums: &mut Vec<f64>) {
    chunk_sums.clear();
    let n = xs.len().min(w.len());
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512 F is present.
        unsafe { exp_weights_avx512(&xs[..n], m, s, &mut w[..n], chunk_sums) };
        return;
    }
    exp_weights_body(&xs[..n], m, s, &mut w[..n], chunk_sums)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_weights_avx512(xs: &[f32], m: f32, s: f32, w: &mut [f32], chunk_sums: &mut Vec<f64>) {
    exp_weights_body(xs, m, s, w, chunk_sums)
}

#[inline(always)]
fn exp_weights_body(xs: &[f32], m: f32, s: f32, w: &mut [f32], chunk_sums: &mut Vec<f64>) {
    for (xc, wc) in xs.chunks(1024).zip(w.chunks_mut(1024)) {
        let mut acc = [0f32; 16];
        let mut it = xc.chunks_exact(16).zip(wc.chunks_exact_mut(16));
        for (x, o) in &mut it {
            for j in 0..16 {
                let e = exp_nonpos((x[j] - m) * s);
                o[j] = e;
                acc[j] += e;
            }
        }
        let done = xc.len() / 16 * 16;
        let mut sum: f32 = acc.iter().sum();
        for (x, o) in xc[done..].iter().zip(&mut wc[done..]) {
            *o = exp_nonpos((x - m) * s);
            sum += *o;
        }
        chunk_sums.push(sum as f64);
    }
}

/// [`sum_exp_sub`] compiled for 512-bit registers: the same operations lane by lane (the
/// 16 accumulators are explicit), so the same bits as the baseline build.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sum_exp_sub_avx512(xs: &[f32], m: f32) -> f64 {
    sum_exp_sub_body(xs, m)
}

#[inline(always)]
fn sum_exp_sub_body(xs: &[f32], m: f32) -> f64 {
    let mut total = 0f64;
    for chunk in xs.chunks(1024) {
        let mut acc = [0f32; 16];
        let mut it = chunk.chunks_exact(16);
        for c in &mut it {
            for (a, &x) in acc.iter_mut().zip(c) {
                *a += exp_nonpos(x - m);
            }
        }
        let mut s: f32 = acc.iter().sum();
        for &x in it.remainder() {
            s += exp_nonpos(x - m);
        }
        total += s as f64;
    }
    total
}

/// `row[i] = exp(row[i] - m)` (no sum).
pub(crate) fn exp_sub(row: &mut [f32], m: f32) {
    for x in row.iter_mut() {
        *x = exp_nonpos(*x - m);
    }
}

/// Keys row `i` of the chunk may see: `0..visible(i)` before the padding test.
fn visible(mask: &AttnMask, i: usize, l: usize) -> usize {
    (mask.offset + i + 1).min(l)
}

/// A head's rows: the slice starting at row 0 and the row stride.
#[derive(Clone, Copy)]
struct Rows<'a> {
    data: &'a [f32],
    rs: usize,
}

impl<'a> Rows<'a> {
    fn at(data: &'a [f32], (off, rs): (usize, usize)) -> Self {
        Rows { data: &data[off..], rs }
    }
    /// Rows from `i` on.
    fn from(self, i: usize) -> &'a [f32] {
        &self.data[i * self.rs..]
    }
    fn row(self, i: usize, d: usize) -> &'a [f32] {
        &self.data[i * self.rs..i * self.rs + d]
    }
}

/// Scores of rows `i0..i0+rows` against keys `0..jmax` into `s` (`[rows x jmax]`), masked
/// entries set to -inf.
#[allow(clippy::too_many_arguments)]
fn scores(
    s: &mut [f32],
    q: Rows,
    k: Rows,
    dims: Dims,
    mask: &AttnMask,
    bi: usize,
    i0: usize,
    rows: usize,
    jmax: usize,
    scale: f32,
) {
    let d = dims.d;
    mm(rows, jmax, d, s, jmax, false, q.from(i0), q.rs, 1, k.data, 1, k.rs);
    let valid = mask.key_valid.as_ref().map(|v| &v[bi * dims.l..(bi + 1) * dims.l]);
    for r in 0..rows {
        let vis = visible(mask, i0 + r, dims.l);
        let row = &mut s[r * jmax..(r + 1) * jmax];
        for (j, x) in row.iter_mut().enumerate() {
            let ok = j < vis && valid.is_none_or(|v| v[j] != 0);
            *x = if ok { *x * scale } else { f32::NEG_INFINITY };
        }
    }
}

/// Forward: `o` (in `dims.layout`) and per-row log-sum-exp `lse [B,Hq,T]` (+inf for rows
/// with no key).
fn forward(q: &[f32], k: &[f32], v: &[f32], dims: Dims, mask: &AttnMask, scale: f32) -> (Vec<f32>, Vec<f32>) {
    let Dims { hkv, t, l, d, .. } = dims;
    let n_rep = dims.n_rep();
    let mut lse = vec![0f32; dims.b * dims.hq * t];
    // One task per (batch row, KV head); each writes its query heads into a
    // task-ordered block, scattered into the layout afterwards.
    let blocks: Vec<Vec<f32>> = lse
        .par_chunks_mut(n_rep * t)
        .enumerate()
        .map(|(task, lse)| {
            let (bi, g) = (task / hkv, task % hkv);
            let (kg, vg) = (Rows::at(k, dims.kv_at(bi, g)), Rows::at(v, dims.kv_at(bi, g)));
            let mut o = vec![0f32; n_rep * t * d];
            let mut s = vec![0f32; BLOCK * l];
            for r in 0..n_rep {
                let qh = Rows::at(q, dims.q_at(bi, g * n_rep + r));
                let oh = &mut o[r * t * d..(r + 1) * t * d];
                let lh = &mut lse[r * t..(r + 1) * t];
                for i0 in (0..t).step_by(BLOCK) {
                    let rows = BLOCK.min(t - i0);
                    let jmax = visible(mask, i0 + rows - 1, l);
                    let s = &mut s[..rows * jmax];
                    scores(s, qh, kg, dims, mask, bi, i0, rows, jmax, scale);
                    for r in 0..rows {
                        let row = &mut s[r * jmax..(r + 1) * jmax];
                        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        if m == f32::NEG_INFINITY {
                            row.fill(0.0);
                            lh[i0 + r] = f32::INFINITY;
                            continue;
                        }
                        let sum = exp_sub_sum(row, m);
                        let inv = 1.0 / sum;
                        row.iter_mut().for_each(|x| *x *= inv);
                        lh[i0 + r] = m + sum.ln();
                    }
                    mm(rows, d, jmax, &mut oh[i0 * d..], d, false, s, jmax, 1, vg.data, vg.rs, 1);
                }
            }
            o
        })
        .collect();
    (dims.scatter_q(&blocks), lse)
}

/// Backward: `(dq, dk, dv)` (in `dims.layout`) from the upstream gradient `go` and the
/// forward's `o`, `lse`.
#[allow(clippy::too_many_arguments)]
fn backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    lse: &[f32],
    go: &[f32],
    dims: Dims,
    mask: &AttnMask,
    scale: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let Dims { hkv, t, l, d, .. } = dims;
    let n_rep = dims.n_rep();
    let tasks = dims.b * hkv;
    type Grads = (Vec<f32>, Vec<f32>, Vec<f32>);
    let blocks: Vec<Grads> = (0..tasks)
        .into_par_iter()
        .map(|task| {
            let (bi, g) = (task / hkv, task % hkv);
            let (kg, vg) = (Rows::at(k, dims.kv_at(bi, g)), Rows::at(v, dims.kv_at(bi, g)));
            let mut dq = vec![0f32; n_rep * t * d];
            let mut dk = vec![0f32; l * d];
            let mut dv = vec![0f32; l * d];
            let mut p = vec![0f32; BLOCK * l];
            let mut dp = vec![0f32; BLOCK * l];
            let mut delta = [0f32; BLOCK];
            for r in 0..n_rep {
                let h = g * n_rep + r;
                let at = dims.q_at(bi, h);
                let (qh, oh, gh) = (Rows::at(q, at), Rows::at(o, at), Rows::at(go, at));
                let lh = &lse[(bi * dims.hq + h) * t..(bi * dims.hq + h + 1) * t];
                let dqh = &mut dq[r * t * d..(r + 1) * t * d];
                for i0 in (0..t).step_by(BLOCK) {
                    let rows = BLOCK.min(t - i0);
                    let jmax = visible(mask, i0 + rows - 1, l);
                    let (p, dp) = (&mut p[..rows * jmax], &mut dp[..rows * jmax]);
                    scores(p, qh, kg, dims, mask, bi, i0, rows, jmax, scale);
                    for r in 0..rows {
                        let lse_r = lh[i0 + r];
                        exp_sub(&mut p[r * jmax..(r + 1) * jmax], lse_r);
                        let (gr, or) = (gh.row(i0 + r, d), oh.row(i0 + r, d));
                        delta[r] = gr.iter().zip(or).map(|(a, b)| a * b).sum();
                    }
                    // dV += P^T dO
                    mm(jmax, d, rows, &mut dv, d, true, p, 1, jmax, gh.from(i0), gh.rs, 1);
                    // dP = dO V^T
                    mm(rows, jmax, d, dp, jmax, false, gh.from(i0), gh.rs, 1, vg.data, 1, vg.rs);
                    // dS = P * (dP - delta) * scale, in place in dp
                    for r in 0..rows {
                        let (pr, dpr) = (&p[r * jmax..(r + 1) * jmax], &mut dp[r * jmax..(r + 1) * jmax]);
                        for (x, &pv) in dpr.iter_mut().zip(pr) {
                            *x = pv * (*x - delta[r]) * scale;
                        }
                    }
                    // dQ = dS K ; dK += dS^T Q
                    mm(rows, d, jmax, &mut dqh[i0 * d..], d, false, dp, jmax, 1, kg.data, kg.rs, 1);
                    mm(jmax, d, rows, &mut dk, d, true, dp, 1, jmax, qh.from(i0), qh.rs, 1);
                }
            }
            (dq, dk, dv)
        })
        .collect();
    let mut dqs = Vec::with_capacity(tasks);
    let mut dks = Vec::with_capacity(tasks);
    let mut dvs = Vec::with_capacity(tasks);
    for (dq, dk, dv) in blocks {
        dqs.push(dq);
        dks.push(dk);
        dvs.push(dv);
    }
    (dims.scatter_q(&dqs), dims.scatter_kv(&dks), dims.scatter_kv(&dvs))
}

/// Dims from 4-d shapes `s` read in `layout` (`[B,H,T,D]` or `[B,T,H,D]`).
fn dims_from(qd: &[usize], kd: &[usize], vd: &[usize], layout: AttnLayout) -> candle_core::Result<Dims> {
    let ([b, q1, q2, d], [kb, k1, k2, kd_], true) = (
        <[usize; 4]>::try_from(qd).unwrap_or_default(),
        <[usize; 4]>::try_from(kd).unwrap_or_default(),
        kd == vd,
    ) else {
        bail!("fused attention: 4-d q, and k and v of equal shape expected, got {qd:?} {kd:?} {vd:?}");
    };
    let (hq, t, hkv, l) = match layout {
        AttnLayout::Bhtd => (q1, q2, k1, k2),
        AttnLayout::Bthd => (q2, q1, k2, k1),
    };
    if kb != b || kd_ != d || hkv == 0 || hq % hkv != 0 {
        bail!("fused attention: incompatible shapes q {qd:?}, k {kd:?} ({layout:?})");
    }
    Ok(Dims { b, hq, hkv, t, l, d, layout })
}

fn dims_of(q: &Layout, k: &Layout, v: &Layout, layout: AttnLayout) -> candle_core::Result<Dims> {
    if !(q.is_contiguous() && k.is_contiguous() && v.is_contiguous()) {
        bail!("fused attention: inputs must be contiguous");
    }
    dims_from(q.dims(), k.dims(), v.dims(), layout)
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    match s {
        CpuStorage::F32(v) => Ok(&v[l.start_offset()..l.start_offset() + l.shape().elem_count()]),
        _ => bail!("fused attention: f32 only"),
    }
}

/// The op: forward computes `o` (and stashes `lse`); backward uses `o` (its result).
struct FusedAttention {
    mask: AttnMask,
    layout: AttnLayout,
    scale: f32,
    lse: std::sync::Mutex<Option<Vec<f32>>>,
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-causal-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = dims_of(ql, kl, vl, self.layout)?;
        if let Some(kv) = &self.mask.key_valid {
            if kv.len() != dims.b * dims.l {
                bail!("fused attention: key mask has {} entries, expected {}", kv.len(), dims.b * dims.l);
            }
        }
        let (o, lse) = forward(f32_slice(qs, ql)?, f32_slice(ks, kl)?, f32_slice(vs, vl)?, dims, &self.mask, self.scale);
        if let Ok(mut g) = self.lse.lock() {
            *g = Some(lse);
        }
        Ok((CpuStorage::F32(o), ql.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let lse = self
            .lse
            .lock()
            .ok()
            .and_then(|g| g.clone())
            .ok_or_else(|| candle_core::Error::Msg("fused attention: backward before forward".into()))?;
        let (dq, dk, dv) = backward_tensors(q, k, v, res, grad, &lse, &self.mask, self.scale, self.layout)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

fn flat_f32(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.detach().flatten_all()?.to_vec1::<f32>()
}

/// The forward outside autograd: `(o, lse)` for callers that keep `lse` themselves.
pub(crate) fn forward_tensors(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &AttnMask,
    scale: f32,
    layout: AttnLayout,
) -> candle_core::Result<(Tensor, Vec<f32>)> {
    let dims = dims_from(q.dims(), k.dims(), v.dims(), layout)?;
    if let Some(kv) = &mask.key_valid {
        if kv.len() != dims.b * dims.l {
            bail!("fused attention: key mask has {} entries, expected {}", kv.len(), dims.b * dims.l);
        }
    }
    let (o, lse) = forward(&flat_f32(q)?, &flat_f32(k)?, &flat_f32(v)?, dims, mask, scale);
    Ok((Tensor::from_vec(o, q.shape(), q.device())?, lse))
}

/// The backward outside autograd: `(dq, dk, dv)` from the forward's output `o`, its `lse`
/// and the output gradient `go`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_tensors(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    go: &Tensor,
    lse: &[f32],
    mask: &AttnMask,
    scale: f32,
    layout: AttnLayout,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let dims = dims_from(q.dims(), k.dims(), v.dims(), layout)?;
    if lse.len() != dims.b * dims.hq * dims.t || o.dims() != q.dims() || go.dims() != q.dims() {
        bail!("fused attention backward: inconsistent shapes");
    }
    let (dq, dk, dv) = backward(
        &flat_f32(q)?,
        &flat_f32(k)?,
        &flat_f32(v)?,
        &flat_f32(o)?,
        lse,
        &flat_f32(&go.contiguous()?)?,
        dims,
        mask,
        scale,
    );
    let dev = q.device();
    Ok((
        Tensor::from_vec(dq, q.shape(), dev)?,
        Tensor::from_vec(dk, k.shape(), dev)?,
        Tensor::from_vec(dv, v.shape(), dev)?,
    ))
}

/// Whether [`fused_attention`] can run on these inputs (CPU, f32).
pub fn supported(q: &Tensor) -> bool {
    q.device().is_cpu() && q.dtype() == candle_core::DType::F32
}

/// `softmax(q k^T * scale + causal/padding mask) v` for `q: [B,Hq,T,D]`, `k, v: [B,Hkv,L,D]`
/// (`Hq` a multiple of `Hkv`; no repeated heads needed), CPU f32. Differentiable w.r.t. q,
/// k and v. With [`AttnLayout::Bthd`] every tensor (and the output) is `[B, T, H, D]`.
pub fn fused_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: AttnMask,
    scale: f64,
    layout: AttnLayout,
) -> candle_core::Result<Tensor> {
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    // Recorded on the tape only when an input is (apply_op3 checks track_op).
    q.apply_op3(&k, &v, FusedAttention { mask, layout, scale: scale as f32, lse: Default::default() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttnMask, scale: f64) -> Tensor {
        let (b, hq, t, d) = q.dims4().unwrap();
        let (_, hkv, l, _) = k.dims4().unwrap();
        let rep = hq / hkv;
        let k = k.unsqueeze(2).unwrap().repeat((1, 1, rep, 1, 1)).unwrap().reshape((b, hq, l, d)).unwrap();
        let v = v.unsqueeze(2).unwrap().repeat((1, 1, rep, 1, 1)).unwrap().reshape((b, hq, l, d)).unwrap();
        let mut m = vec![0f32; b * t * l];
        for bi in 0..b {
            for i in 0..t {
                for j in 0..l {
                    let ok = j <= mask.offset + i && mask.key_valid.as_ref().is_none_or(|kv| kv[bi * l + j] != 0);
                    m[(bi * t + i) * l + j] = if ok { 0.0 } else { -1e9 };
                }
            }
        }
        let m = Tensor::from_vec(m, (b, 1, t, l), q.device()).unwrap();
        let s = q.matmul(&k.t().unwrap()).unwrap().affine(scale, 0.0).unwrap().broadcast_add(&m).unwrap();
        let mx = s.max_keepdim(D::Minus1).unwrap().detach();
        let e = s.broadcast_sub(&mx).unwrap().exp().unwrap();
        let p = e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap();
        p.matmul(&v).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn vectorizable_exp_matches_std() {
        let mut worst = 0f32;
        for i in 0..=200_000 {
            let x = -90.0 * i as f32 / 200_000.0;
            let (ours, std) = (exp_nonpos(x), x.exp());
            if x < -87.0 {
                assert_eq!(ours, 0.0);
                continue;
            }
            worst = worst.max((ours - std).abs() / std);
        }
        assert!(worst < 5e-7, "relative error {worst}");
        assert_eq!(exp_nonpos(f32::NEG_INFINITY), 0.0);
        let mut row: Vec<f32> = (0..37).map(|i| -(i as f32) * 0.3).collect();
        let want: f32 = row.iter().map(|x| (x - 0.5).exp()).sum();
        let got = exp_sub_sum(&mut row, 0.5);
        assert!((got - want).abs() < 1e-5 * want);
    }

    #[test]
    fn matches_the_reference_forward_and_backward() {
        let dev = Device::Cpu;
        // T not a multiple of the block, GQA 3:1, padding in batch row 1, and a chunk
        // with an offset (prefill after a cached prefix).
        for (t, l, offset, pad) in [(70, 70, 0, true), (5, 9, 4, false), (130, 130, 0, false)] {
            let (b, hq, hkv, d) = (2, 6, 2, 16);
            let q = Var::randn(0f32, 1.0, (b, hq, t, d), &dev).unwrap();
            let k = Var::randn(0f32, 1.0, (b, hkv, l, d), &dev).unwrap();
            let v = Var::randn(0f32, 1.0, (b, hkv, l, d), &dev).unwrap();
            let key_valid = pad.then(|| (0..b * l).map(|i| u8::from(!(i >= l && i % l >= l - 7))).collect::<Vec<u8>>());
            let mask = AttnMask { offset, key_valid };
            let w = Tensor::randn(0f32, 1.0, (b, hq, t, d), &dev).unwrap();
            let theirs = reference(q.as_tensor(), k.as_tensor(), v.as_tensor(), &mask, 0.25);
            let gb = theirs.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
            for layout in [AttnLayout::Bhtd, AttnLayout::Bthd] {
                // The [B,T,H,D] run gets transposed views of the same Vars, so the
                // gradients land on the same tensors.
                let tr = |x: &Tensor| match layout {
                    AttnLayout::Bhtd => x.clone(),
                    AttnLayout::Bthd => x.transpose(1, 2).unwrap().contiguous().unwrap(),
                };
                let ours = fused_attention(&tr(q.as_tensor()), &tr(k.as_tensor()), &tr(v.as_tensor()), mask.clone(), 0.25, layout).unwrap();
                let ours = tr(&ours);
                assert!(max_diff(&ours, &theirs) < 1e-5, "forward t={t} {layout:?}: {}", max_diff(&ours, &theirs));
                let ga = ours.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
                for (name, x) in [("q", &q), ("k", &k), ("v", &v)] {
                    let (a, b) = (ga.get(x.as_tensor()).unwrap(), gb.get(x.as_tensor()).unwrap());
                    assert!(max_diff(a, b) < 1e-4, "d{name} t={t} {layout:?}: {}", max_diff(a, b));
                }
            }
        }
    }
}
