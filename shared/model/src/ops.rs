//! Differentiable building blocks and memory-saving custom ops.
//!
//! Why custom ops: candle's backprop computes the gradient of *both* matmul
//! operands and keeps every gradient it computed in the `GradStore`, even for
//! tensors that are not `Var`s. For LoRA that means a full-size gradient for
//! every frozen weight (measured: 12 GB RSS for one Qwen3-0.6B step on 128
//! tokens). [`frozen_linear`] records only the activation as its graph input,
//! so the backward pass produces `dX` and nothing for the weight.
//! [`token_logprobs`] does the same for the lm_head + log-softmax and also
//! recomputes the logits chunk by chunk in the backward pass, so a
//! `[tokens, vocab]` tensor is never kept alive by the autograd graph.

use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CudaStorage, CustomOp1, DType, Layout, Shape, Storage, Tensor, D,
};
use std::sync::Mutex;

/// `x @ w^T` on raw storages; shared by the CPU and CUDA entry points.
fn matmul_wt<S: BackendStorage>(
    x: &S,
    xl: &Layout,
    w: &S,
    wl: &Layout,
) -> candle_core::Result<(S, Shape)> {
    if !xl.is_contiguous() {
        bail!("frozen_linear: input must be contiguous");
    }
    let dims = xl.dims();
    let (n, k) = match wl.dims() {
        [n, k] => (*n, *k),
        d => bail!("frozen_linear: weight must be 2D, got {d:?}"),
    };
    let Some((&xk, rest)) = dims.split_last() else {
        bail!("frozen_linear: input must have rank >= 1");
    };
    if xk != k {
        bail!("frozen_linear: input last dim {xk} != weight in-features {k}");
    }
    let m: usize = rest.iter().product();
    let lhs = Layout::contiguous_with_offset((m, k), xl.start_offset());
    let rhs = wl.transpose(0, 1)?;
    let out = x.matmul(w, (1, m, n, k), &lhs, &rhs)?;
    let mut out_dims = rest.to_vec();
    out_dims.push(n);
    Ok((out, Shape::from(out_dims)))
}

/// Custom op computing `x @ W^T` whose backward returns only `dX`.
struct FrozenMatmul {
    w: Tensor,
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (ws, wl) = self.w.storage_and_layout();
        match &*ws {
            Storage::Cpu(w) => matmul_wt(s, l, w, wl),
            _ => bail!("frozen_linear: weight and input on different devices"),
        }
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let (ws, wl) = self.w.storage_and_layout();
        match &*ws {
            Storage::Cuda(w) => matmul_wt(s, l, w, wl),
            _ => bail!("frozen_linear: weight and input on different devices"),
        }
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let n = grad.dim(D::Minus1)?;
        let m = grad.elem_count() / n.max(1);
        let dx = grad.reshape((m, n))?.matmul(&self.w)?;
        Ok(Some(dx.reshape(arg.shape())?))
    }
}

/// `x @ w^T` for a frozen weight `w` (`[out, in]`), differentiable w.r.t. `x` only.
///
/// When `x` does not take part in a gradient computation this is a plain matmul.
pub fn frozen_linear(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    if x.track_op() {
        x.contiguous()?.apply_op1(FrozenMatmul { w: w.clone() })
    } else {
        plain_linear(x, w)
    }
}

/// `x @ w^T` with no gradient bookkeeping concerns (inference).
pub fn plain_linear(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let dims = x.dims();
    let k = x.dim(D::Minus1)?;
    let m = x.elem_count() / k.max(1);
    let y = x.reshape((m, k))?.matmul(&w.t()?)?;
    let mut out_dims = dims[..dims.len() - 1].to_vec();
    out_dims.push(w.dim(0)?);
    y.reshape(out_dims)
}

/// Inference `x W^T` (no autograd): decode-sized inputs take the skinny kernel of
/// [`crate::gemv`], everything else [`plain_linear`].
pub fn infer_linear(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    match crate::gemv::skinny_linear(x, w)? {
        Some(y) => Ok(y),
        None => plain_linear(x, w),
    }
}

/// Numerically stable softmax over the last dim built from differentiable ops.
pub fn softmax_diff(x: &Tensor) -> candle_core::Result<Tensor> {
    // The max shift does not change the value and its gradient is zero, so it is detached.
    let max = x.detach().max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&s)
}

/// RMSNorm (`x / sqrt(mean(x^2) + eps) * w`) built from differentiable ops.
pub fn rms_norm_diff(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (ms + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&inv)?.broadcast_mul(w)
}

/// RMSNorm through candle's fused kernel (no backward); falls back to the
/// differentiable version for dtypes the kernel does not cover.
pub fn rms_norm_fused(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    match x.dtype() {
        DType::F32 | DType::F16 | DType::BF16 => {
            candle_nn::ops::rms_norm(&x.contiguous()?, w, eps as f32)
        }
        _ => rms_norm_diff(x, w, eps),
    }
}

/// HF `rotate_half` RoPE: `x * cos + rotate_half(x) * sin`, differentiable.
///
/// `x`: `[B, H, T, D]`; `cos`/`sin`: `[B, 1, T, D]` (halves duplicated).
pub fn rope_diff(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)?.add(&rot.broadcast_mul(sin)?)
}

/// Repeats each key/value head `n_rep` times (`[B, Hkv, T, D]` -> `[B, Hkv*n_rep, T, D]`)
/// with `cat`, which is differentiable.
pub fn repeat_kv(x: &Tensor, n_rep: usize) -> candle_core::Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, h, t, d) = x.dims4()?;
    let x = x.unsqueeze(2)?;
    let parts: Vec<&Tensor> = std::iter::repeat_n(&x, n_rep).collect();
    Tensor::cat(&parts, 2)?.reshape((b, h * n_rep, t, d))
}

/// Per-row `log_softmax(h @ w^T)[target]` computed `chunk` rows at a time. With
/// `jacobian`, also each row's gradient `d logp_i / d h_i = W[t_i] - p_i @ W` (`[N, H]`).
fn logprobs_chunked(
    h: &Tensor,
    w: &Tensor,
    targets: &Tensor,
    chunk: usize,
    jacobian: bool,
) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    if let Some(r) = logprobs_chunked_cpu(h, w, targets, chunk, jacobian)? {
        return Ok(r);
    }
    let n = h.dim(0)?;
    let mut outs = Vec::new();
    let mut jacs = Vec::new();
    let mut s = 0;
    while s < n {
        let len = chunk.min(n - s);
        let tg = targets.narrow(0, s, len)?;
        let logits = plain_linear(&h.narrow(0, s, len)?, w)?;
        let max = logits.max_keepdim(1)?;
        let e = logits.broadcast_sub(&max)?.exp()?;
        let sum = e.sum_keepdim(1)?;
        let lse = sum.log()?.add(&max)?;
        let tgt = logits.gather(&tg.unsqueeze(1)?, 1)?;
        drop(logits);
        outs.push(tgt.sub(&lse)?.squeeze(1)?);
        if jacobian {
            let p = e.broadcast_div(&sum)?;
            drop(e);
            jacs.push(w.index_select(&tg, 0)?.sub(&p.matmul(w)?)?);
        }
        s += len;
    }
    if outs.is_empty() {
        let z = Tensor::zeros(0, h.dtype(), h.device())?;
        let j = if jacobian { Some(h.zeros_like()?) } else { None };
        return Ok((z, j));
    }
    let j = if jacobian { Some(Tensor::cat(&jacs, 0)?) } else { None };
    Ok((Tensor::cat(&outs, 0)?, j))
}

/// CPU f32 version of [`logprobs_chunked`] with one reusable `[chunk, V]` buffer: logits
/// are written by gemm, then max, exp, sum and (for the Jacobian) the softmax run in place.
/// Candle ops would allocate a fresh `[chunk, V]` tensor per step (three alive at the peak,
/// about 450 MiB at chunk 256 and Qwen3's 151936-token vocabulary), on top of the whole
/// tape. `None` when the inputs are not CPU f32.
fn logprobs_chunked_cpu(
    h: &Tensor,
    w: &Tensor,
    targets: &Tensor,
    chunk: usize,
    jacobian: bool,
) -> candle_core::Result<Option<(Tensor, Option<Tensor>)>> {
    use rayon::prelude::*;
    if !(h.device().is_cpu() && h.dtype() == DType::F32 && w.dtype() == DType::F32) {
        return Ok(None);
    }
    let (n, hd) = h.dims2()?;
    let (v, whd) = w.dims2()?;
    if whd != hd {
        bail!("token_logprobs: hidden {hd} but lm_head {:?}", w.dims());
    }
    let tg: Vec<u32> = targets.to_dtype(DType::U32)?.to_vec1()?;
    if tg.len() != n {
        bail!("token_logprobs: {n} rows but {} targets", tg.len());
    }
    if let Some(bad) = tg.iter().find(|&&t| t as usize >= v) {
        bail!("token_logprobs: target {bad} outside the vocabulary of {v}");
    }
    let hv: Vec<f32> = h.flatten_all()?.to_vec1()?;
    let wc = w.contiguous()?;
    let (ws, wl) = wc.storage_and_layout();
    let wv: &[f32] = match &*ws {
        Storage::Cpu(CpuStorage::F32(d)) => &d[wl.start_offset()..wl.start_offset() + v * hd],
        _ => return Ok(None),
    };
    let chunk = chunk.max(1).min(n.max(1));
    let mut out = vec![0f32; n];
    let mut jac = if jacobian { vec![0f32; n * hd] } else { Vec::new() };
    let mut buf = vec![0f32; chunk * v];
    let threads = gemm::Parallelism::Rayon(0);
    for s0 in (0..n).step_by(chunk) {
        let len = chunk.min(n - s0);
        let lg = &mut buf[..len * v];
        // logits[len x V] = h[s0..s0+len] @ W^T
        crate::attn::gemm_f32(len, v, hd, lg, v, false, &hv[s0 * hd..], hd, 1, wv, 1, hd, threads);
        lg.par_chunks_mut(v)
            .zip(out[s0..s0 + len].par_iter_mut())
            .zip(tg[s0..s0 + len].par_iter())
            .for_each(|((row, o), &t)| {
                let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let target = row[t as usize];
                let sum = crate::attn::exp_sub_sum(row, m);
                *o = target - (m + sum.ln());
                if jacobian {
                    let inv = 1.0 / sum;
                    row.iter_mut().for_each(|x| *x *= inv);
                }
            });
        if jacobian {
            // J[len x H] = W[t] - p @ W
            let jc = &mut jac[s0 * hd..(s0 + len) * hd];
            crate::attn::gemm_f32(len, hd, v, jc, hd, false, lg, v, 1, wv, hd, 1, threads);
            for (r, &t) in tg[s0..s0 + len].iter().enumerate() {
                let wr = &wv[t as usize * hd..(t as usize + 1) * hd];
                for (x, &wt) in jc[r * hd..(r + 1) * hd].iter_mut().zip(wr) {
                    *x = wt - *x;
                }
            }
        }
    }
    drop(ws);
    let dev = h.device();
    let y = Tensor::from_vec(out, n, dev)?;
    let j = if jacobian { Some(Tensor::from_vec(jac, (n, hd), dev)?) } else { None };
    Ok(Some((y, j)))
}

/// Custom op attaching the chunked log-prob computation to the graph. Row `i`'s log-prob
/// depends on `h_i` alone, so its gradient is `g_i * J_i` with `J = W[t] - softmax(hW^T) W`
/// computed in the forward pass: the backward is a row scaling, with no second pass over
/// the `[N, vocab]` logits (PyTorch's cost: one logits matmul and one `p @ W`).
struct TokenLogprobOp {
    jacobian: Tensor,
    result: Precomputed,
}

fn take_result(m: &Mutex<Option<Tensor>>) -> candle_core::Result<Tensor> {
    let mut g = m
        .lock()
        .map_err(|_| candle_core::Error::Msg("poisoned lock".into()))?;
    g.take()
        .ok_or_else(|| candle_core::Error::Msg("token_logprobs: forward ran twice".into()))
}

impl CustomOp1 for TokenLogprobOp {
    fn name(&self) -> &'static str {
        "token-logprobs"
    }

    fn cpu_fwd(&self, _s: &CpuStorage, _l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.result.cpu()
    }

    fn cuda_fwd(&self, _s: &CudaStorage, _l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        self.result.cuda()
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let g = grad.detach().unsqueeze(1)?;
        Ok(Some(self.jacobian.broadcast_mul(&g)?))
    }
}

/// `log_softmax(h @ w^T)` evaluated at `targets`, for `h: [N, H]`, `w: [V, H]`,
/// `targets: [N]` (u32). Returns `[N]`. Differentiable w.r.t. `h` only; at most a
/// `[chunk, V]` logits block is alive at any time, and the graph keeps only `[N, H]`.
pub fn token_logprobs(
    h: &Tensor,
    w: &Tensor,
    targets: &Tensor,
    chunk: usize,
) -> candle_core::Result<Tensor> {
    let chunk = chunk.max(1);
    let track = h.track_op();
    let (y, jac) = logprobs_chunked(&h.detach(), w, targets, chunk, track)?;
    let y = y.contiguous()?;
    let Some(jacobian) = jac else {
        return Ok(y);
    };
    h.apply_op1(TokenLogprobOp {
        jacobian,
        result: Precomputed::new(y)?,
    })
}

/// [`token_logprobs`] differentiable w.r.t. both `h` and `w` (full fine-tuning), through
/// candle's autograd; the `[chunk, V]` logits of every chunk stay on the tape.
pub fn token_logprobs_trainable(
    h: &Tensor,
    w: &Tensor,
    targets: &Tensor,
    chunk: usize,
) -> candle_core::Result<Tensor> {
    if h.device().is_cpu() && h.dtype() == DType::F32 && w.dtype() == DType::F32 {
        // One node; the backward recomputes each chunk's logits (see `LogprobFullOp`).
        let chunk = chunk.max(1);
        let (y, _) = logprobs_chunked(&h.detach(), &w.detach(), targets, chunk, false)?;
        let tg: Vec<u32> = targets.to_dtype(DType::U32)?.to_vec1()?;
        return h.apply_op2(w, LogprobFullOp { targets: tg, chunk, result: Precomputed::new(y)? });
    }
    let n = h.dim(0)?;
    let chunk = chunk.max(1);
    let mut outs = Vec::new();
    let mut s = 0;
    while s < n {
        let len = chunk.min(n - s);
        let logits = h.narrow(0, s, len)?.matmul(&w.t()?)?;
        let lsm = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        outs.push(lsm.gather(&targets.narrow(0, s, len)?.unsqueeze(1)?, 1)?.squeeze(1)?);
        s += len;
    }
    if outs.is_empty() {
        return Tensor::zeros(0, h.dtype(), h.device());
    }
    Tensor::cat(&outs, 0)
}

/// `log_softmax(h W^T)[targets]` as one node differentiable w.r.t. `h` and `W` (CPU f32).
/// The backward recomputes a chunk's logits into one reusable buffer, turns them into
/// `d logits = g * (onehot(t) - softmax)` in place, and takes `dh = d logits @ W` and
/// `dW += d logits^T @ h` with gemm: no `[N, V]` tensor is ever stored.
struct LogprobFullOp {
    targets: Vec<u32>,
    chunk: usize,
    result: Precomputed,
}

impl candle_core::CustomOp2 for LogprobFullOp {
    fn name(&self) -> &'static str {
        "token-logprobs-full"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.result.cpu()
    }
    fn bwd(&self, h: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        use rayon::prelude::*;
        let (n, hd) = h.dims2()?;
        let (v, _) = w.dims2()?;
        let (Some(hv), Some(wv), Some(gv)) = (cpu_f32(h), cpu_f32(&w.contiguous()?), cpu_f32(&grad.contiguous()?)) else {
            bail!("token_logprobs_trainable: backward needs f32 CPU tensors");
        };
        let chunk = self.chunk.min(n.max(1));
        let mut dh = vec![0f32; n * hd];
        let mut dw = vec![0f32; v * hd];
        let mut buf = vec![0f32; chunk * v];
        let threads = gemm::Parallelism::Rayon(0);
        for s0 in (0..n).step_by(chunk) {
            let len = chunk.min(n - s0);
            let lg = &mut buf[..len * v];
            crate::attn::gemm_f32(len, v, hd, lg, v, false, &hv[s0 * hd..], hd, 1, &wv, 1, hd, threads);
            lg.par_chunks_mut(v)
                .zip(gv[s0..s0 + len].par_iter())
                .zip(self.targets[s0..s0 + len].par_iter())
                .for_each(|((row, &g), &t)| {
                    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let sum = crate::attn::exp_sub_sum(row, m);
                    let k = -g / sum;
                    row.iter_mut().for_each(|x| *x *= k);
                    if let Some(x) = row.get_mut(t as usize) {
                        *x += g;
                    }
                });
            // dh[len x H] = dlogits @ W ; dW[V x H] += dlogits^T @ h
            crate::attn::gemm_f32(len, hd, v, &mut dh[s0 * hd..], hd, false, lg, v, 1, &wv, hd, 1, threads);
            crate::attn::gemm_f32(v, hd, len, &mut dw, hd, true, lg, 1, v, &hv[s0 * hd..], hd, 1, threads);
        }
        Ok((
            Some(Tensor::from_vec(dh, (n, hd), h.device())?),
            Some(Tensor::from_vec(dw, (v, hd), w.device())?),
        ))
    }
}

/// Holds a forward value computed outside the graph; the custom op's forward just
/// hands it over. This lets a custom op reuse candle's tensor kernels for its forward
/// while recording only the inputs the backward needs.
pub(crate) struct Precomputed(Mutex<Option<Tensor>>);

impl Precomputed {
    pub(crate) fn new(t: Tensor) -> candle_core::Result<Self> {
        Ok(Precomputed(Mutex::new(Some(t.contiguous()?))))
    }
    pub(crate) fn cpu(&self) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = take_result(&self.0)?;
        let (st, l) = y.storage_and_layout();
        match &*st {
            Storage::Cpu(s) if l.start_offset() == 0 && l.is_contiguous() => {
                Ok((s.try_clone(l)?, y.shape().clone()))
            }
            _ => bail!("precomputed op: unexpected storage"),
        }
    }
    pub(crate) fn cuda(&self) -> candle_core::Result<(CudaStorage, Shape)> {
        let y = take_result(&self.0)?;
        let (st, l) = y.storage_and_layout();
        match &*st {
            Storage::Cuda(s) if l.start_offset() == 0 && l.is_contiguous() => {
                Ok((s.try_clone(l)?, y.shape().clone()))
            }
            _ => bail!("precomputed op: unexpected storage"),
        }
    }
}

fn softmax_any(x: &Tensor) -> candle_core::Result<Tensor> {
    match x.dtype() {
        DType::F32 | DType::F64 | DType::F16 | DType::BF16 => {
            candle_nn::ops::softmax_last_dim(&x.contiguous()?)
        }
        _ => softmax_diff(x),
    }
}

fn attention_probs(
    q: &Tensor,
    k: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let mut s = q.matmul(&k.t()?)?.affine(scale, 0.0)?;
    if let Some(m) = mask {
        s = s.broadcast_add(m)?;
    }
    softmax_any(&s)
}

/// Attention `softmax(q k^T * scale + mask) v` whose graph keeps only q, k, v; the
/// `[B, H, T, L]` probabilities are recomputed in the backward pass. Without this the
/// tape holds ~6 score-sized tensors per layer, which dominates memory (T^2) at
/// training sequence lengths.
struct AttentionOp {
    mask: Option<Tensor>,
    scale: f64,
    result: Precomputed,
}

impl candle_core::CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "recompute-attention"
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.result.cpu()
    }
    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        self.result.cuda()
    }
    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (q, k, v, g) = (q.detach(), k.detach(), v.detach(), grad.detach());
        let p = attention_probs(&q, &k, self.mask.as_ref(), self.scale)?;
        let dv = p.t()?.matmul(&g)?;
        let dp = g.matmul(&v.t()?)?;
        let row = dp.mul(&p)?.sum_keepdim(D::Minus1)?;
        let ds = dp.broadcast_sub(&row)?.mul(&p)?;
        drop((dp, p));
        let dq = ds.matmul(&k)?.affine(self.scale, 0.0)?;
        let dk = ds.t()?.matmul(&q)?.affine(self.scale, 0.0)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// `softmax(q k^T * scale + mask) v` for `q: [B,H,T,D]`, `k, v: [B,H,L,D]` (heads already
/// repeated), `mask` broadcastable to `[B,H,T,L]`. Differentiable w.r.t. q, k, v with
/// recomputation (see [`AttentionOp`]).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let p = attention_probs(&q.detach(), &k.detach(), mask, scale)?;
    let o = p.matmul(&v.detach())?;
    drop(p);
    if !(q.track_op() || k.track_op() || v.track_op()) {
        return Ok(o);
    }
    q.apply_op3(
        &k,
        &v,
        AttentionOp {
            mask: mask.cloned(),
            scale,
            result: Precomputed::new(o)?,
        },
    )
}

/// RoPE through candle's fused kernel with a backward: RoPE is a rotation, so the
/// input gradient is the same kernel with `-sin`.
struct RopeOp {
    cos: Tensor,
    neg_sin: Tensor,
    result: Precomputed,
}

impl CustomOp1 for RopeOp {
    fn name(&self) -> &'static str {
        "rope-with-bwd"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.result.cpu()
    }
    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        self.result.cuda()
    }
    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(candle_nn::rotary_emb::rope(
            &grad.detach().contiguous()?,
            &self.cos,
            &self.neg_sin,
        )?))
    }
}

/// HF rotate-half RoPE for `x: [B,H,T,D]` with per-row tables `cos, sin: [B,T,D/2]`
/// (or `[T, D/2]`), differentiable w.r.t. `x` while keeping only `x` on the tape.
pub fn rope_train(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let x = x.contiguous()?;
    let y = candle_nn::rotary_emb::rope(&x.detach(), cos, sin)?;
    if !x.track_op() {
        return Ok(y);
    }
    x.apply_op1(RopeOp {
        cos: cos.clone(),
        neg_sin: sin.neg()?,
        result: Precomputed::new(y)?,
    })
}

/// RMSNorm with a frozen weight: forward through the fused kernel, backward
/// `dx = r (g w) - x r^3 mean(g w x)` with `r = 1/sqrt(mean(x^2) + eps)`; no weight grad.
struct RmsNormOp {
    w: Tensor,
    eps: f64,
    result: Precomputed,
}

impl CustomOp1 for RmsNormOp {
    fn name(&self) -> &'static str {
        "rms-norm-frozen"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.result.cpu()
    }
    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        self.result.cuda()
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(rms_norm_bwd(x, grad, &self.w, self.eps)?))
    }
}

/// Input gradient of RMSNorm with a frozen weight `w` (see [`RmsNormOp`]).
pub(crate) fn rms_norm_bwd(x: &Tensor, grad: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    if let Some((dx, _)) = rms_norm_bwd_cpu(x, grad, w, eps, false)? {
        return Ok(dx);
    }
    let (x, g) = (x.detach(), grad.detach());
    let r = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    let gw = g.broadcast_mul(w)?;
    let m = gw.mul(&x)?.mean_keepdim(D::Minus1)?;
    let r3m = r.powf(3.0)?.mul(&m)?;
    gw.broadcast_mul(&r)?.sub(&x.broadcast_mul(&r3m)?)
}

/// One pass per row on CPU f32: `dx` of RMSNorm and, with `weight_grad`, `dw = sum over
/// rows of g * x * r` (reduced across threads). `None` when the inputs are not CPU f32.
/// The composed version is eight tensor ops, each a full pass and an allocation.
pub(crate) fn rms_norm_bwd_cpu(
    x: &Tensor,
    grad: &Tensor,
    w: &Tensor,
    eps: f64,
    weight_grad: bool,
) -> candle_core::Result<Option<(Tensor, Option<Tensor>)>> {
    use rayon::prelude::*;
    if !(x.device().is_cpu() && x.dtype() == DType::F32 && grad.dtype() == DType::F32 && w.dtype() == DType::F32) {
        return Ok(None);
    }
    let h = x.dim(D::Minus1)?;
    if grad.shape() != x.shape() || w.elem_count() != h || h == 0 {
        bail!("rms_norm backward: x {:?}, grad {:?}, w {:?}", x.dims(), grad.dims(), w.dims());
    }
    let (Some(xv), Some(gv), Some(wv)) = (cpu_f32(x), cpu_f32(&grad.contiguous()?), cpu_f32(&w.contiguous()?)) else {
        return Ok(None);
    };
    let eps = eps as f32;
    let inv_h = 1.0 / h as f32;
    let mut dx = vec![0f32; xv.len()];
    let rows_per_task = (16384 / h).max(1);
    let dw = dx
        .par_chunks_mut(rows_per_task * h)
        .zip(xv.par_chunks(rows_per_task * h).zip(gv.par_chunks(rows_per_task * h)))
        .map(|(dxc, (xc, gc))| {
            let mut dw = if weight_grad { vec![0f32; h] } else { Vec::new() };
            for ((d, x), g) in dxc.chunks_mut(h).zip(xc.chunks(h)).zip(gc.chunks(h)) {
                let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() * inv_h;
                let r = 1.0 / (ss + eps).sqrt();
                let m: f32 = g.iter().zip(&wv).zip(x).map(|((g, w), x)| g * w * x).sum::<f32>() * inv_h;
                let r3m = r * r * r * m;
                for i in 0..h {
                    d[i] = r * g[i] * wv[i] - x[i] * r3m;
                }
                if weight_grad {
                    for i in 0..h {
                        dw[i] += g[i] * x[i] * r;
                    }
                }
            }
            dw
        })
        .reduce(Vec::new, |a, b| {
            if a.is_empty() {
                return b;
            }
            if b.is_empty() {
                return a;
            }
            a.iter().zip(&b).map(|(a, b)| a + b).collect()
        });
    let dev = x.device();
    let dw = if weight_grad {
        let dw = if dw.is_empty() { vec![0f32; h] } else { dw };
        Some(Tensor::from_vec(dw, w.shape(), dev)?)
    } else {
        None
    };
    Ok(Some((Tensor::from_vec(dx, x.shape(), dev)?, dw)))
}

/// Per-head RMSNorm (optional, Qwen3's q/k norm) then RoPE, on `[B, T, H, D]`: one autograd
/// node that keeps only its input. The normalised tensor is recomputed in the backward, and
/// the layout is the projection's own, so no transposed copy exists at all.
struct NormRopeOp {
    w: Option<Tensor>,
    eps: f64,
    cos: Tensor,
    neg_sin: Tensor,
    result: Precomputed,
}

impl CustomOp1 for NormRopeOp {
    fn name(&self) -> &'static str {
        "norm-rope-thd"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.result.cpu()
    }
    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        self.result.cuda()
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // RoPE is a rotation: its transpose is the same kernel with -sin.
        let g = candle_nn::rotary_emb::rope_thd(&grad.detach().contiguous()?, &self.cos, &self.neg_sin)?;
        Ok(Some(match &self.w {
            Some(w) => rms_norm_bwd(x, &g, w, self.eps)?,
            None => g,
        }))
    }
}

/// `rope(rms_norm(x, w))` (or `rope(x)` without `w`) for `x: [B, T, H, D]` and per-row
/// tables `cos, sin: [B, T, D/2]`, differentiable w.r.t. `x` (see [`NormRopeOp`]).
pub fn norm_rope_thd(
    x: &Tensor,
    w: Option<&Tensor>,
    eps: f64,
    cos: &Tensor,
    sin: &Tensor,
) -> candle_core::Result<Tensor> {
    let x = x.contiguous()?;
    let normed = match w {
        Some(w) => rms_norm_fused(&x.detach(), w, eps)?,
        None => x.detach(),
    };
    let y = candle_nn::rotary_emb::rope_thd(&normed, cos, sin)?;
    if !x.track_op() {
        return Ok(y);
    }
    x.apply_op1(NormRopeOp {
        w: w.map(Tensor::detach),
        eps,
        cos: cos.clone(),
        neg_sin: sin.neg()?,
        result: Precomputed::new(y)?,
    })
}

/// RMSNorm with a frozen weight for the training path (see [`RmsNormOp`]).
pub fn rms_norm_train(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let x = x.contiguous()?;
    let y = rms_norm_fused(&x.detach(), w, eps)?;
    if !x.track_op() {
        return Ok(y);
    }
    x.apply_op1(RmsNormOp {
        w: w.detach(),
        eps,
        result: Precomputed::new(y)?,
    })
}

/// An inverted-dropout mask stored as bits: element `i` is `scale` (kept) or `0`.
///
/// Why bits: the backward needs the mask again, and an f32 mask shaped like the input is as
/// big as the input itself; with LoRA on all seven projections that was about 1.2 GB of the
/// Qwen3-0.6B step's tape (seq 512, batch 2). Here it is 1 bit per element.
#[derive(Debug, Clone)]
pub struct DropMask {
    bits: std::sync::Arc<Vec<u64>>,
    shape: Shape,
    scale: f64,
}

impl DropMask {
    /// Keeps each element with probability `1 - p` (one `f64` draw per element, in order,
    /// so a seeded run is reproducible); kept elements are scaled by `1 / (1 - p)`.
    pub fn sample(shape: &Shape, p: f64, rng: &mut rand_chacha::ChaCha8Rng) -> Self {
        use rand::Rng;
        let keep = 1.0 - p;
        Self::from_keep(shape, 1.0 / keep, (0..shape.elem_count()).map(|_| rng.random::<f64>() < keep))
    }

    /// A mask from explicit keep flags (row-major over `shape`).
    pub fn from_keep(shape: &Shape, scale: f64, keep: impl IntoIterator<Item = bool>) -> Self {
        let mut bits = vec![0u64; shape.elem_count().div_ceil(64)];
        for (i, k) in keep.into_iter().take(shape.elem_count()).enumerate() {
            if k {
                bits[i / 64] |= 1 << (i % 64);
            }
        }
        DropMask { bits: std::sync::Arc::new(bits), shape: shape.clone(), scale }
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The mask as a tensor of `0` / `scale` values.
    pub fn to_tensor(&self, device: &candle_core::Device, dtype: DType) -> candle_core::Result<Tensor> {
        let scale = self.scale as f32;
        let v: Vec<f32> = (0..self.shape.elem_count())
            .map(|i| if self.bits[i / 64] >> (i % 64) & 1 == 1 { scale } else { 0.0 })
            .collect();
        Tensor::from_vec(v, self.shape.clone(), device)?.to_dtype(dtype)
    }
}

/// A frozen linear layer plus its LoRA branch as one autograd node:
/// `y = x W^T + bias + scale * ((x * mask) A^T) B^T`. The tape keeps only `x`, `A`,
/// `B` (and the dropout mask); the rank-r intermediate is recomputed in the backward.
/// Compared with composing matmuls this drops three `[tokens, out]` tensors per
/// adapted projection from the tape and never computes a gradient for `W`.
struct LoraLinearOp {
    w: Tensor,
    mask: Option<DropMask>,
    scale: f64,
    result: Precomputed,
}

impl candle_core::CustomOp3 for LoraLinearOp {
    fn name(&self) -> &'static str {
        "lora-linear"
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.result.cpu()
    }
    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        self.result.cuda()
    }
    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, da, db) = lora_backward(x, &self.w, a, b, self.scale, self.mask.as_ref(), grad)?;
        Ok((Some(dx), Some(da), Some(db)))
    }
}

/// Gradients of `y = x W^T + scale * ((x * mask) A^T) B^T` given `grad = dL/dy`:
/// `(dx, dA, dB)`, with `dx` shaped like `x`. The rank-r intermediate is recomputed.
pub(crate) fn lora_backward(
    x: &Tensor,
    w: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    mask: Option<&DropMask>,
    grad: &Tensor,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let (a, b) = (a.detach(), b.detach());
    let k = x.dim(D::Minus1)?;
    let n = grad.dim(D::Minus1)?;
    let m = x.elem_count() / k.max(1);
    let x2 = x.detach().contiguous()?.reshape((m, k))?;
    let g2 = grad.detach().contiguous()?.reshape((m, n))?;
    let mask2 = match mask {
        Some(mk) => Some(mk.to_tensor(x.device(), x.dtype())?.reshape((m, k))?),
        None => None,
    };
    let xd = match &mask2 {
        Some(mk) => x2.mul(mk)?,
        None => x2,
    };
    let xa = xd.matmul(&a.t()?)?; // [m, r]
    let gb = g2.matmul(&b)?; // [m, r]
    let db = g2.t()?.matmul(&xa)?.affine(scale, 0.0)?;
    let da = gb.t()?.matmul(&xd)?.affine(scale, 0.0)?;
    let mut dxd = gb.matmul(&a)?.affine(scale, 0.0)?;
    if let Some(mk) = &mask2 {
        dxd = dxd.mul(mk)?;
    }
    let dx = g2.matmul(w)?.add(&dxd)?;
    Ok((dx.reshape(x.shape())?, da, db))
}

/// `x W^T + bias + scale * ((x * mask) A^T) B^T` for frozen `W: [out, in]` and LoRA
/// `A: [r, in]`, `B: [out, r]`; differentiable w.r.t. `x`, `A`, `B` (see [`LoraLinearOp`]).
/// `mask` is an optional inverted-dropout mask shaped like `x`, applied to the LoRA input only.
pub fn lora_linear(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    mask: Option<&DropMask>,
) -> candle_core::Result<Tensor> {
    let x = x.contiguous()?;
    let xd = x.detach();
    if let Some(mk) = mask {
        if mk.shape() != x.shape() {
            bail!("lora_linear: dropout mask {:?} for input {:?}", mk.shape(), x.shape());
        }
    }
    let xin = match mask {
        Some(mk) => xd.mul(&mk.to_tensor(x.device(), x.dtype())?)?,
        None => xd.clone(),
    };
    let mut y = plain_linear(&xd, w)?;
    if let Some(bias) = bias {
        y = y.broadcast_add(bias)?;
    }
    let xa = plain_linear(&xin, &a.detach())?.affine(scale, 0.0)?;
    let y = y.add(&plain_linear(&xa, &b.detach())?)?;
    if !(x.track_op() || a.track_op() || b.track_op()) {
        return Ok(y);
    }
    x.apply_op3(
        a,
        b,
        LoraLinearOp {
            w: w.clone(),
            mask: mask.cloned(),
            scale,
            result: Precomputed::new(y)?,
        },
    )
}

/// Contiguous f32 CPU data of a tensor, if it has that form.
fn cpu_f32(t: &Tensor) -> Option<Vec<f32>> {
    let (st, l) = t.storage_and_layout();
    match (&*st, l.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => Some(v[a..b].to_vec()),
        _ => None,
    }
}

/// `silu(gate) * up` in one pass; the graph keeps only `gate` and `up` (not the SiLU
/// output, which candle's two ops would keep as a third `[tokens, intermediate]` tensor
/// per layer), and the backward is one pass too.
struct SwiGlu;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl candle_core::CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(&self, g: &CpuStorage, gl: &Layout, u: &CpuStorage, ul: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (Some((g0, g1)), Some((u0, u1))) = (gl.contiguous_offsets(), ul.contiguous_offsets()) else {
            bail!("swiglu: inputs must be contiguous");
        };
        let (CpuStorage::F32(g), CpuStorage::F32(u)) = (g, u) else {
            bail!("swiglu: f32 only");
        };
        let (g, u) = (&g[g0..g1], &u[u0..u1]);
        if g.len() != u.len() {
            bail!("swiglu: gate and up differ in size");
        }
        let mut out = vec![0f32; g.len()];
        use rayon::prelude::*;
        out.par_chunks_mut(16384).zip(g.par_chunks(16384).zip(u.par_chunks(16384))).for_each(|(o, (g, u))| {
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = g * sigmoid(g) * u;
            }
        });
        Ok((CpuStorage::F32(out), gl.shape().clone()))
    }

    fn bwd(&self, g: &Tensor, u: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dg, du) = swiglu_backward(g, u, grad)?;
        Ok((Some(dg), Some(du)))
    }
}

/// `(d gate, d up)` of `silu(gate) * up` given its output gradient (CPU f32, contiguous).
pub(crate) fn swiglu_backward(g: &Tensor, u: &Tensor, grad: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let (Some(gv), Some(uv), Some(dv)) = (cpu_f32(g), cpu_f32(u), cpu_f32(&grad.contiguous()?)) else {
        bail!("swiglu: backward needs contiguous f32 CPU tensors");
    };
    let mut dg = vec![0f32; gv.len()];
    let mut du = vec![0f32; gv.len()];
    use rayon::prelude::*;
    dg.par_chunks_mut(16384)
        .zip(du.par_chunks_mut(16384))
        .zip(gv.par_chunks(16384).zip(uv.par_chunks(16384)).zip(dv.par_chunks(16384)))
        .for_each(|((dg, du), ((g, u), d))| {
            for i in 0..g.len() {
                let s = sigmoid(g[i]);
                du[i] = d[i] * g[i] * s;
                dg[i] = d[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
            }
        });
    Ok((Tensor::from_vec(dg, g.shape(), g.device())?, Tensor::from_vec(du, u.shape(), u.device())?))
}

/// `silu(gate) * up` (the Qwen3 MLP activation): one fused CPU f32 op with a one-pass
/// backward; candle's ops elsewhere.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    if gate.device().is_cpu() && gate.dtype() == DType::F32 && up.dtype() == DType::F32 && gate.shape() == up.shape() {
        gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
    } else {
        gate.silu()?.mul(up)
    }
}

#[cfg(test)]
mod tests {
    //! The memory-saving custom ops must match the plain differentiable
    //! reference implementations in value and gradient.
    use super::*;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n)
            .map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f64 / 500.0) - 1.0)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        a.sub(b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    /// Checks value and input-gradient of `f` against `reference` for a weighted sum loss.
    fn check(x: &Var, f: impl Fn(&Tensor) -> Tensor, reference: impl Fn(&Tensor) -> Tensor) {
        let (a, b) = (f(x.as_tensor()), reference(x.as_tensor()));
        assert!(max_diff(&a, &b) < 1e-10, "value diff {}", max_diff(&a, &b));
        let w = rand(a.dims(), 5);
        let ga = a.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = b.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
        let (ga, gb) = (
            ga.get(x.as_tensor()).unwrap(),
            gb.get(x.as_tensor()).unwrap(),
        );
        assert!(max_diff(ga, gb) < 1e-10, "grad diff {}", max_diff(ga, gb));
    }

    #[test]
    fn swiglu_matches_silu_times_up() {
        // f32: the fused CPU path (f64 falls back to candle's ops).
        let f32r = |seed| rand(&[3, 5, 7], seed).affine(4.0, 0.0).unwrap().to_dtype(DType::F32).unwrap();
        let g = Var::from_tensor(&f32r(1)).unwrap();
        let u = Var::from_tensor(&f32r(2)).unwrap();
        let w = f32r(3);
        let f64d = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let a = swiglu(g.as_tensor(), u.as_tensor()).unwrap();
        let b = g.as_tensor().silu().unwrap().mul(u.as_tensor()).unwrap();
        assert!(max_diff(&f64d(&a), &f64d(&b)) < 1e-5);
        let ga = a.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = b.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
        for x in [&g, &u] {
            let d = max_diff(&f64d(ga.get(x.as_tensor()).unwrap()), &f64d(gb.get(x.as_tensor()).unwrap()));
            assert!(d < 1e-4, "grad diff {d}");
        }
    }

    #[test]
    fn custom_ops_match_reference() {
        let x = Var::from_tensor(&rand(&[2, 3, 5, 8], 1)).unwrap();
        // RoPE: per-row tables [B, T, D/2] vs. duplicated [B, 1, T, D].
        let cos = rand(&[2, 5, 4], 2).cos().unwrap();
        let sin = rand(&[2, 5, 4], 3).sin().unwrap();
        let full = |t: &Tensor| Tensor::cat(&[t, t], 2).unwrap().unsqueeze(1).unwrap();
        check(
            &x,
            |t| rope_train(&t.affine(1.0, 0.0).unwrap(), &cos, &sin).unwrap(),
            |t| rope_diff(t, &full(&cos), &full(&sin)).unwrap(),
        );
        let w = rand(&[8], 4);
        check(
            &x,
            |t| rms_norm_train(&t.affine(1.0, 0.0).unwrap(), &w, 1e-6).unwrap(),
            |t| rms_norm_diff(t, &w, 1e-6).unwrap(),
        );
        let k = Var::from_tensor(&rand(&[2, 3, 7, 8], 6)).unwrap();
        let v = rand(&[2, 3, 7, 8], 7);
        let mask = rand(&[2, 1, 5, 7], 8);
        let reference = |q: &Tensor, k: &Tensor| {
            let s = q
                .matmul(&k.t().unwrap())
                .unwrap()
                .affine(0.3, 0.0)
                .unwrap()
                .broadcast_add(&mask)
                .unwrap();
            softmax_diff(&s).unwrap().matmul(&v).unwrap()
        };
        check(
            &x,
            |q| attention(q, k.as_tensor(), &v, Some(&mask), 0.3).unwrap(),
            |q| reference(q, k.as_tensor()),
        );
        check(
            &k,
            |kk| attention(x.as_tensor(), kk, &v, Some(&mask), 0.3).unwrap(),
            |kk| reference(x.as_tensor(), kk),
        );
        let (a, bm) = (
            Var::from_tensor(&rand(&[3, 8], 10)).unwrap(),
            Var::from_tensor(&rand(&[6, 3], 11)).unwrap(),
        );
        let keep: Vec<bool> = rand(&[2, 3, 5, 8], 14)
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
            .iter()
            .map(|v| *v >= 0.0)
            .collect();
        let bits = DropMask::from_keep(&Shape::from((2, 3, 5, 8)), 1.25, keep);
        let (w3, bias, dmask) = (rand(&[6, 8], 12), rand(&[6], 13), bits.to_tensor(&Device::Cpu, DType::F64).unwrap());
        let reference = |x: &Tensor, a: &Tensor, bm: &Tensor| {
            let base = x
                .broadcast_matmul(&w3.t().unwrap())
                .unwrap()
                .broadcast_add(&bias)
                .unwrap();
            let l = x
                .mul(&dmask)
                .unwrap()
                .broadcast_matmul(&a.t().unwrap())
                .unwrap()
                .broadcast_matmul(&bm.t().unwrap())
                .unwrap();
            base.add(&l.affine(1.7, 0.0).unwrap()).unwrap()
        };
        let ours = |x: &Tensor, a: &Tensor, bm: &Tensor| {
            lora_linear(x, &w3, Some(&bias), a, bm, 1.7, Some(&bits)).unwrap()
        };
        check(
            &x,
            |t| ours(t, a.as_tensor(), bm.as_tensor()),
            |t| reference(t, a.as_tensor(), bm.as_tensor()),
        );
        check(
            &a,
            |t| ours(x.as_tensor(), t, bm.as_tensor()),
            |t| reference(x.as_tensor(), t, bm.as_tensor()),
        );
        check(
            &bm,
            |t| ours(x.as_tensor(), a.as_tensor(), t),
            |t| reference(x.as_tensor(), a.as_tensor(), t),
        );
        let w2 = rand(&[6, 8], 9);
        check(
            &x,
            |t| frozen_linear(t, &w2).unwrap(),
            |t| t.broadcast_matmul(&w2.t().unwrap()).unwrap(),
        );
    }
}
