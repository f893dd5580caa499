//! Fused training blocks: a decoder layer's MLP half as one autograd node with a
//! hand-written backward (CPU f32, LoRA training over a frozen base).
//!
//! Why: composed from per-op nodes, the MLP half keeps five tensors per layer on the tape
//! (the normalised input, gate, up, the SwiGLU output and the down projection's output,
//! 44 MiB per layer for a Qwen3-0.6B step at seq 512, batch 2). The backward only needs
//! gate and up: the normalised input and the SwiGLU output are cheap elementwise
//! recomputes, and the residual add needs nothing. So this node keeps its input (which the
//! residual stream holds anyway), gate and up, and the adapter's dropout masks as bits:
//! 24 MiB per layer, and no matmul is repeated.
//!
//! LoRA weights enter as one packed tensor (`cat` of the flattened A and B of each adapted
//! projection), so candle's autograd routes their gradients back to the adapter's `Var`s.

use crate::error::Result;
use crate::lora::{LoraAdapter, LoraPair};
use crate::model::{Ctx, Model, Proj};
use crate::ops::{lora_backward, lora_linear, norm_rope_thd, rms_norm_bwd, rms_norm_fused, swiglu, swiglu_backward, DropMask, Precomputed};
use candle_core::{CpuStorage, CudaStorage, CustomOp2, Layout, Shape, Tensor};

/// A projection inside a fused block: frozen weight, optional LoRA slot in the packed tensor.
struct BlockProj {
    w: Tensor,
    bias: Option<Tensor>,
    /// `(offset in packed, A shape, B shape)`
    lora: Option<(usize, Shape, Shape)>,
    mask: Option<DropMask>,
}

impl BlockProj {
    fn lora_ab(&self, packed: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
        let Some((off, sa, sb)) = &self.lora else {
            return Ok(None);
        };
        let (na, nb) = (sa.elem_count(), sb.elem_count());
        let a = packed.narrow(0, *off, na)?.reshape(sa.clone())?;
        let b = packed.narrow(0, off + na, nb)?.reshape(sb.clone())?;
        Ok(Some((a, b)))
    }

    /// `(dx, Some(flattened [dA, dB]))` given the output gradient `g`.
    fn backward(&self, x: &Tensor, g: &Tensor, packed: &Tensor, scale: f64) -> Result<(Tensor, Option<Tensor>)> {
        match self.lora_ab(packed)? {
            Some((a, b)) => {
                let (dx, da, db) = lora_backward(x, &self.w, &a, &b, scale, self.mask.as_ref(), g)?;
                Ok((dx, Some(Tensor::cat(&[da.flatten_all()?, db.flatten_all()?], 0)?)))
            }
            None => {
                let (k, n) = (x.dim(candle_core::D::Minus1)?, g.dim(candle_core::D::Minus1)?);
                let m = x.elem_count() / k.max(1);
                let dx = g.detach().contiguous()?.reshape((m, n))?.matmul(&self.w)?;
                Ok((dx.reshape(x.shape())?, None))
            }
        }
    }
}

impl BlockProj {
    /// The projection's forward outside autograd; draws (and keeps) its dropout mask.
    fn forward(&mut self, input: &Tensor, packed: &Tensor, model: &Model, ad: &LoraAdapter, ctx: &mut Ctx) -> Result<Tensor> {
        match self.lora_ab(packed)? {
            Some((a, b)) => {
                self.mask = model.lora_mask(input.shape(), ad, ctx);
                Ok(lora_linear(input, &self.w, self.bias.as_ref(), &a, &b, ad.scale(), self.mask.as_ref())?)
            }
            None => {
                let y = crate::ops::plain_linear(input, &self.w)?;
                Ok(match &self.bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                })
            }
        }
    }
}

/// The adapted projections' A and B, flattened and concatenated in `projs` order (the
/// packed tensor the block's node takes as input), and each projection's record.
fn pack(model: &Model, i: usize, projs: &[Proj], pairs: &[Option<&LoraPair>]) -> Result<(Tensor, Vec<BlockProj>)> {
    let l = &model.layers[i];
    let mut flat = Vec::new();
    let mut off = 0;
    let mut recs = Vec::with_capacity(projs.len());
    for (&p, pair) in projs.iter().zip(pairs) {
        let lin = &l.proj[p as usize];
        let lora = match pair {
            Some(pair) => {
                let (sa, sb) = (pair.a.shape().clone(), pair.b.shape().clone());
                flat.push(pair.a.as_tensor().flatten_all()?);
                flat.push(pair.b.as_tensor().flatten_all()?);
                let slot = (off, sa.clone(), sb.clone());
                off += sa.elem_count() + sb.elem_count();
                Some(slot)
            }
            None => None,
        };
        recs.push(BlockProj { w: lin.weight.clone(), bias: lin.bias.clone(), lora, mask: None });
    }
    Ok((Tensor::cat(&flat, 0)?, recs))
}

struct MlpBlock {
    norm_w: Tensor,
    eps: f64,
    scale: f64,
    gate_p: BlockProj,
    up_p: BlockProj,
    down_p: BlockProj,
    gate: Tensor,
    up: Tensor,
    result: Precomputed,
}

impl MlpBlock {
    fn grads(&self, x: &Tensor, packed: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        let (x, packed, dy) = (x.detach(), packed.detach(), dy.detach().contiguous()?);
        let act = swiglu(&self.gate, &self.up)?;
        let (d_act, g_down) = self.down_p.backward(&act, &dy, &packed, self.scale)?;
        drop(act);
        let (d_gate, d_up) = swiglu_backward(&self.gate, &self.up, &d_act)?;
        drop(d_act);
        let h = rms_norm_fused(&x, &self.norm_w, self.eps)?;
        let (dh_g, g_gate) = self.gate_p.backward(&h, &d_gate, &packed, self.scale)?;
        let (dh_u, g_up) = self.up_p.backward(&h, &d_up, &packed, self.scale)?;
        let dx = dy.add(&rms_norm_bwd(&x, &dh_g.add(&dh_u)?, &self.norm_w, self.eps)?)?;
        let parts: Vec<Tensor> = [g_gate, g_up, g_down].into_iter().flatten().collect();
        Ok((dx, Tensor::cat(&parts, 0)?))
    }
}

impl CustomOp2 for MlpBlock {
    fn name(&self) -> &'static str {
        "mlp-block"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.result.cpu()
    }
    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout, _: &CudaStorage, _: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        self.result.cuda()
    }
    fn bwd(
        &self,
        x: &Tensor,
        packed: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dp) = self.grads(x, packed, grad).map_err(candle_core::Error::wrap)?;
        Ok((Some(dx), Some(dp)))
    }
}

/// `x + down(swiglu(gate(norm(x)), up(norm(x))))` for decoder layer `i` as one node (see
/// the module docs). `None` when the block does not apply (no adapter on any MLP
/// projection); the caller then composes the ops itself.
pub(crate) fn mlp(model: &Model, i: usize, x: &Tensor, ctx: &mut Ctx) -> Result<Option<Tensor>> {
    let Some(ad) = ctx.lora else {
        return Ok(None);
    };
    let projs = [Proj::Gate, Proj::Up, Proj::Down];
    let pairs: Vec<Option<&LoraPair>> = projs.iter().map(|&p| ad.pair(i, p)).collect();
    if pairs.iter().all(Option::is_none) {
        return Ok(None);
    }
    let l = &model.layers[i];
    let eps = model.config.rms_norm_eps;
    let scale = ad.scale();
    let x = x.contiguous()?;
    let xd = x.detach();
    let h = rms_norm_fused(&xd, &l.post_attention_layernorm, eps)?;
    let (packed, recs) = pack(model, i, &projs, &pairs)?;
    let packed_d = packed.detach();
    let run = |rec: &mut BlockProj, input: &Tensor, ctx: &mut Ctx| rec.forward(input, &packed_d, model, ad, ctx);
    let mut recs = recs.into_iter();
    let (Some(mut gate_p), Some(mut up_p), Some(mut down_p)) = (recs.next(), recs.next(), recs.next()) else {
        return Ok(None);
    };
    let gate = run(&mut gate_p, &h, ctx)?;
    let up = run(&mut up_p, &h, ctx)?;
    drop(h);
    let act = swiglu(&gate, &up)?;
    let down = run(&mut down_p, &act, ctx)?;
    drop(act);
    let y = xd.add(&down)?;
    if !(x.track_op() || (packed.track_op() && !ctx.lora_frozen)) {
        return Ok(Some(y));
    }
    Ok(Some(x.apply_op2(
        &packed,
        MlpBlock {
            norm_w: l.post_attention_layernorm.clone(),
            eps,
            scale,
            gate_p,
            up_p,
            down_p,
            gate,
            up,
            result: Precomputed::new(y)?,
        },
    )?))
}

/// The attention half: `x + o(attn(rope(q_norm(q(h))), rope(k_norm(k(h))), v(h)))` with
/// `h = norm(x)`. Keeps q and k before their norm, v, the attention output and its per-row
/// log-sum-exp; `h` and the rotated q/k are recomputed in the backward (elementwise).
struct AttnBlock {
    norm_w: Tensor,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    eps: f64,
    scale: f64,
    cos: Tensor,
    sin: Tensor,
    mask: crate::attn::AttnMask,
    attn_scale: f32,
    q_p: BlockProj,
    k_p: BlockProj,
    v_p: BlockProj,
    o_p: BlockProj,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn: Tensor,
    lse: Vec<f32>,
    result: Precomputed,
}

impl AttnBlock {
    fn grads(&self, x: &Tensor, packed: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        use crate::attn::{backward_tensors, AttnLayout};
        let (x, packed, dy) = (x.detach(), packed.detach(), dy.detach().contiguous()?);
        let (b, t, hq, hd) = self.attn.dims4()?;
        let (d_attn, g_o) = self.o_p.backward(&self.attn.reshape((b, t, hq * hd))?, &dy, &packed, self.scale)?;
        let d_attn = d_attn.reshape((b, t, hq, hd))?;
        let q_r = norm_rope_thd(&self.q, self.q_norm.as_ref(), self.eps, &self.cos, &self.sin)?;
        let k_r = norm_rope_thd(&self.k, self.k_norm.as_ref(), self.eps, &self.cos, &self.sin)?;
        let (dq_r, dk_r, dv) =
            backward_tensors(&q_r, &k_r, &self.v, &self.attn, &d_attn, &self.lse, &self.mask, self.attn_scale, AttnLayout::Bthd)?;
        drop((q_r, k_r, d_attn));
        // RoPE is a rotation: its transpose is the same kernel with -sin.
        let neg_sin = self.sin.neg()?;
        let unrotate = |g: &Tensor, pre: &Tensor, w: Option<&Tensor>| -> Result<Tensor> {
            let g = candle_nn::rotary_emb::rope_thd(&g.contiguous()?, &self.cos, &neg_sin)?;
            Ok(match w {
                Some(w) => rms_norm_bwd(pre, &g, w, self.eps)?,
                None => g,
            })
        };
        let dq = unrotate(&dq_r, &self.q, self.q_norm.as_ref())?.reshape((b, t, ()))?;
        let dk = unrotate(&dk_r, &self.k, self.k_norm.as_ref())?.reshape((b, t, ()))?;
        let dv = dv.reshape((b, t, ()))?;
        let h = rms_norm_fused(&x, &self.norm_w, self.eps)?;
        let (dh_q, g_q) = self.q_p.backward(&h, &dq, &packed, self.scale)?;
        let (dh_k, g_k) = self.k_p.backward(&h, &dk, &packed, self.scale)?;
        let (dh_v, g_v) = self.v_p.backward(&h, &dv, &packed, self.scale)?;
        let dh = dh_q.add(&dh_k)?.add(&dh_v)?;
        let dx = dy.add(&rms_norm_bwd(&x, &dh, &self.norm_w, self.eps)?)?;
        let parts: Vec<Tensor> = [g_q, g_k, g_v, g_o].into_iter().flatten().collect();
        Ok((dx, Tensor::cat(&parts, 0)?))
    }
}

impl CustomOp2 for AttnBlock {
    fn name(&self) -> &'static str {
        "attention-block"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.result.cpu()
    }
    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout, _: &CudaStorage, _: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        self.result.cuda()
    }
    fn bwd(
        &self,
        x: &Tensor,
        packed: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dp) = self.grads(x, packed, grad).map_err(candle_core::Error::wrap)?;
        Ok((Some(dx), Some(dp)))
    }
}

/// The attention half of decoder layer `i` as one node (see [`AttnBlock`]); `None` when it
/// does not apply (no fused CPU attention, or no adapter on q, k, v or o).
pub(crate) fn attention(model: &Model, i: usize, x: &Tensor, cos: &Tensor, sin: &Tensor, ctx: &mut Ctx) -> Result<Option<Tensor>> {
    let (Some(mask), Some(ad)) = (ctx.fused_mask.clone(), ctx.lora) else {
        return Ok(None);
    };
    let projs = [Proj::Q, Proj::K, Proj::V, Proj::O];
    let pairs: Vec<Option<&LoraPair>> = projs.iter().map(|&p| ad.pair(i, p)).collect();
    if pairs.iter().all(Option::is_none) {
        return Ok(None);
    }
    let c = &model.config;
    let l = &model.layers[i];
    let (b, t, _) = x.dims3()?;
    let (hq, hkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
    let eps = c.rms_norm_eps;
    let attn_scale = (1.0 / (hd as f64).sqrt()) as f32;
    let x = x.contiguous()?;
    let xd = x.detach();
    let (packed, recs) = pack(model, i, &projs, &pairs)?;
    let packed_d = packed.detach();
    let mut recs = recs.into_iter();
    let (Some(mut q_p), Some(mut k_p), Some(mut v_p), Some(mut o_p)) = (recs.next(), recs.next(), recs.next(), recs.next()) else {
        return Ok(None);
    };
    let h = rms_norm_fused(&xd, &l.input_layernorm, eps)?;
    let q = q_p.forward(&h, &packed_d, model, ad, ctx)?.reshape((b, t, hq, hd))?;
    let k = k_p.forward(&h, &packed_d, model, ad, ctx)?.reshape((b, t, hkv, hd))?;
    let v = v_p.forward(&h, &packed_d, model, ad, ctx)?.reshape((b, t, hkv, hd))?;
    drop(h);
    let (q_norm, k_norm) = match (&l.q_norm, &l.k_norm) {
        (Some(qn), Some(kn)) => (Some(qn.clone()), Some(kn.clone())),
        _ => (None, None),
    };
    let q_r = norm_rope_thd(&q, q_norm.as_ref(), eps, cos, sin)?;
    let k_r = norm_rope_thd(&k, k_norm.as_ref(), eps, cos, sin)?;
    let (attn, lse) = crate::attn::forward_tensors(&q_r, &k_r, &v, &mask, attn_scale, crate::attn::AttnLayout::Bthd)?;
    drop((q_r, k_r));
    let o = o_p.forward(&attn.reshape((b, t, hq * hd))?, &packed_d, model, ad, ctx)?;
    let y = xd.add(&o)?;
    if !(x.track_op() || (packed.track_op() && !ctx.lora_frozen)) {
        return Ok(Some(y));
    }
    Ok(Some(x.apply_op2(
        &packed,
        AttnBlock {
            norm_w: l.input_layernorm.clone(),
            q_norm,
            k_norm,
            eps,
            scale: ad.scale(),
            cos: cos.clone(),
            sin: sin.clone(),
            mask,
            attn_scale,
            q_p,
            k_p,
            v_p,
            o_p,
            q,
            k,
            v,
            attn,
            lse,
            result: Precomputed::new(y)?,
        },
    )?))
}
