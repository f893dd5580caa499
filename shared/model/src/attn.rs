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

#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    hq: usize,
    hkv: usize,
    t: usize,
    l: usize,
    d: usize,
}

impl Dims {
    fn n_rep(&self) -> usize {
        self.hq / self.hkv
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
    if m == 0 || n == 0 {
        return;
    }
    debug_assert!(dst.len() >= (m - 1) * dst_rs + n);
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * dst_rs..r * dst_rs + n].fill(0.0);
            }
        }
        return;
    }
    debug_assert!(a.len() > (m - 1) * a_rs + (k - 1) * a_cs);
    debug_assert!(b.len() > (k - 1) * b_rs + (n - 1) * b_cs);
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
            gemm::Parallelism::None,
        );
    }
}

/// Keys row `i` of the chunk may see: `0..visible(i)` before the padding test.
fn visible(mask: &AttnMask, i: usize, l: usize) -> usize {
    (mask.offset + i + 1).min(l)
}

/// Scores of rows `i0..i0+rows` against keys `0..jmax` into `s` (`[rows x jmax]`), masked
/// entries set to -inf.
#[allow(clippy::too_many_arguments)]
fn scores(
    s: &mut [f32],
    q: &[f32],
    k: &[f32],
    dims: Dims,
    mask: &AttnMask,
    bi: usize,
    i0: usize,
    rows: usize,
    jmax: usize,
    scale: f32,
) {
    let d = dims.d;
    mm(rows, jmax, d, s, jmax, false, &q[i0 * d..], d, 1, k, 1, d);
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

/// Forward: `o [B,Hq,T,D]` and per-row log-sum-exp `lse [B,Hq,T]` (+inf for rows with no key).
fn forward(q: &[f32], k: &[f32], v: &[f32], dims: Dims, mask: &AttnMask, scale: f32) -> (Vec<f32>, Vec<f32>) {
    let Dims { hkv, t, l, d, .. } = dims;
    let n_rep = dims.n_rep();
    let mut o = vec![0f32; dims.b * dims.hq * t * d];
    let mut lse = vec![0f32; dims.b * dims.hq * t];
    o.par_chunks_mut(n_rep * t * d).zip(lse.par_chunks_mut(n_rep * t)).enumerate().for_each(|(task, (o, lse))| {
        let (bi, g) = (task / hkv, task % hkv);
        let kv_off = (bi * hkv + g) * l * d;
        let (kg, vg) = (&k[kv_off..kv_off + l * d], &v[kv_off..kv_off + l * d]);
        let mut s = vec![0f32; BLOCK * l];
        for r in 0..n_rep {
            let h = g * n_rep + r;
            let qh = &q[(bi * dims.hq + h) * t * d..(bi * dims.hq + h + 1) * t * d];
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
                    let mut sum = 0f32;
                    for x in row.iter_mut() {
                        *x = (*x - m).exp();
                        sum += *x;
                    }
                    let inv = 1.0 / sum;
                    row.iter_mut().for_each(|x| *x *= inv);
                    lh[i0 + r] = m + sum.ln();
                }
                mm(rows, d, jmax, &mut oh[i0 * d..], d, false, s, jmax, 1, vg, d, 1);
            }
        }
    });
    (o, lse)
}

/// Backward: `(dq, dk, dv)` from the upstream gradient `go` and the forward's `o`, `lse`.
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
    let mut dq = vec![0f32; q.len()];
    let mut dk = vec![0f32; k.len()];
    let mut dv = vec![0f32; v.len()];
    dq.par_chunks_mut(n_rep * t * d)
        .zip(dk.par_chunks_mut(l * d).zip(dv.par_chunks_mut(l * d)))
        .enumerate()
        .for_each(|(task, (dq, (dk, dv)))| {
            let (bi, g) = (task / hkv, task % hkv);
            let kv_off = (bi * hkv + g) * l * d;
            let (kg, vg) = (&k[kv_off..kv_off + l * d], &v[kv_off..kv_off + l * d]);
            let mut p = vec![0f32; BLOCK * l];
            let mut dp = vec![0f32; BLOCK * l];
            let mut delta = [0f32; BLOCK];
            for r in 0..n_rep {
                let h = g * n_rep + r;
                let base = (bi * dims.hq + h) * t;
                let qh = &q[base * d..(base + t) * d];
                let oh = &o[base * d..(base + t) * d];
                let gh = &go[base * d..(base + t) * d];
                let lh = &lse[base..base + t];
                let dqh = &mut dq[r * t * d..(r + 1) * t * d];
                for i0 in (0..t).step_by(BLOCK) {
                    let rows = BLOCK.min(t - i0);
                    let jmax = visible(mask, i0 + rows - 1, l);
                    let (p, dp) = (&mut p[..rows * jmax], &mut dp[..rows * jmax]);
                    scores(p, qh, kg, dims, mask, bi, i0, rows, jmax, scale);
                    for r in 0..rows {
                        let lse_r = lh[i0 + r];
                        p[r * jmax..(r + 1) * jmax].iter_mut().for_each(|x| *x = (*x - lse_r).exp());
                        let (gr, or) = (&gh[(i0 + r) * d..(i0 + r + 1) * d], &oh[(i0 + r) * d..(i0 + r + 1) * d]);
                        delta[r] = gr.iter().zip(or).map(|(a, b)| a * b).sum();
                    }
                    // dV += P^T dO
                    mm(jmax, d, rows, dv, d, true, p, 1, jmax, &gh[i0 * d..], d, 1);
                    // dP = dO V^T
                    mm(rows, jmax, d, dp, jmax, false, &gh[i0 * d..], d, 1, vg, 1, d);
                    // dS = P * (dP - delta) * scale, in place in dp
                    for r in 0..rows {
                        let (pr, dpr) = (&p[r * jmax..(r + 1) * jmax], &mut dp[r * jmax..(r + 1) * jmax]);
                        for (x, &pv) in dpr.iter_mut().zip(pr) {
                            *x = pv * (*x - delta[r]) * scale;
                        }
                    }
                    // dQ = dS K ; dK += dS^T Q
                    mm(rows, d, jmax, &mut dqh[i0 * d..], d, false, dp, jmax, 1, kg, d, 1);
                    mm(jmax, d, rows, dk, d, true, dp, 1, jmax, &qh[i0 * d..], d, 1);
                }
            }
        });
    (dq, dk, dv)
}

fn dims_of(q: &Layout, k: &Layout, v: &Layout) -> candle_core::Result<Dims> {
    let (qd, kd, vd) = (q.dims(), k.dims(), v.dims());
    let ([b, hq, t, d], [kb, hkv, l, kd_], true) = (
        <[usize; 4]>::try_from(qd).unwrap_or_default(),
        <[usize; 4]>::try_from(kd).unwrap_or_default(),
        kd == vd,
    ) else {
        bail!("fused attention: q [B,Hq,T,D], k and v [B,Hkv,L,D] of equal shape expected, got {qd:?} {kd:?} {vd:?}");
    };
    if kb != b || kd_ != d || hkv == 0 || hq % hkv != 0 {
        bail!("fused attention: incompatible shapes q {qd:?}, k {kd:?}");
    }
    if !(q.is_contiguous() && k.is_contiguous() && v.is_contiguous()) {
        bail!("fused attention: inputs must be contiguous");
    }
    Ok(Dims { b, hq, hkv, t, l, d })
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
        let dims = dims_of(ql, kl, vl)?;
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
        let flat = |t: &Tensor| -> candle_core::Result<Vec<f32>> { t.detach().flatten_all()?.to_vec1::<f32>() };
        let (qv, kv, vv, ov, gv) = (flat(q)?, flat(k)?, flat(v)?, flat(res)?, flat(&grad.contiguous()?)?);
        let (qd, kd) = (q.dims(), k.dims());
        let dims = Dims { b: qd[0], hq: qd[1], hkv: kd[1], t: qd[2], l: kd[2], d: qd[3] };
        let (dq, dk, dv) = backward(&qv, &kv, &vv, &ov, &lse, &gv, dims, &self.mask, self.scale);
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dv, v.shape(), dev)?),
        ))
    }
}

/// Whether [`fused_attention`] can run on these inputs (CPU, f32).
pub fn supported(q: &Tensor) -> bool {
    q.device().is_cpu() && q.dtype() == candle_core::DType::F32
}

/// `softmax(q k^T * scale + causal/padding mask) v` for `q: [B,Hq,T,D]`, `k, v: [B,Hkv,L,D]`
/// (`Hq` a multiple of `Hkv`; no repeated heads needed), CPU f32. Differentiable w.r.t. q,
/// k and v.
pub fn fused_attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: AttnMask, scale: f64) -> candle_core::Result<Tensor> {
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    // Recorded on the tape only when an input is (apply_op3 checks track_op).
    q.apply_op3(&k, &v, FusedAttention { mask, scale: scale as f32, lse: Default::default() })
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
            let ours = fused_attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), mask.clone(), 0.25).unwrap();
            let theirs = reference(q.as_tensor(), k.as_tensor(), v.as_tensor(), &mask, 0.25);
            assert!(max_diff(&ours, &theirs) < 1e-5, "forward t={t}: {}", max_diff(&ours, &theirs));
            let ga = ours.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = theirs.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, x) in [("q", &q), ("k", &k), ("v", &v)] {
                let (a, b) = (ga.get(x.as_tensor()).unwrap(), gb.get(x.as_tensor()).unwrap());
                assert!(max_diff(a, b) < 1e-4, "d{name} t={t}: {}", max_diff(a, b));
            }
        }
    }
}
