//! Fused training blocks: each half of a decoder layer as one autograd node with a
//! hand-written backward (CPU f32; LoRA over a frozen base, or a full fine-tune).
//!
//! Why: composed from per-op nodes, the MLP half keeps five tensors per layer on the tape
//! (the normalised input, gate, up, the SwiGLU output and the down projection's output,
//! 44 MiB per layer for a Qwen3-0.6B step at seq 512, batch 2). The backward only needs
//! gate and up: the normalised input and the SwiGLU output are cheap elementwise
//! recomputes, and the residual add needs nothing. So this node keeps its input (which the
//! residual stream holds anyway), gate and up, and the adapter's dropout masks as bits:
//! 24 MiB per layer, and no matmul is repeated.
//!
//! The trainable tensors of the half (LoRA A and B, or for a full fine-tune the weights and
//! norm weights) enter as one packed tensor (`cat` of their flattened values), so candle's
//! autograd routes their gradients back to their `Var`s; the node keeps their values
//! detached for its own arithmetic.

use crate::error::Result;
use crate::lora::{LoraAdapter, LoraPair};
use crate::model::{Ctx, Model, Proj};
use crate::ops::{lora_backward, lora_linear, norm_rope_thd, rms_norm_fused, swiglu, swiglu_backward, DropMask, Precomputed};
use candle_core::{CpuStorage, CudaStorage, CustomOp2, Layout, Shape, Tensor};

/// A node over `(x, packed trainables)` whose forward was computed outside the graph
/// ([`Precomputed`]) and whose backward is [`PackedGrads::grads`]: the fused blocks and
/// the recomputed layer.
pub(crate) trait PackedGrads: Send + Sync {
    const NAME: &'static str;
    fn result(&self) -> &Precomputed;
    /// `(dx, d packed)` given the output gradient.
    fn grads(&self, x: &Tensor, packed: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)>;
}

/// The candle op of a [`PackedGrads`] node.
pub(crate) struct PackedNode<T>(pub(crate) T);

impl<T: PackedGrads> CustomOp2 for PackedNode<T> {
    fn name(&self) -> &'static str {
        T::NAME
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.0.result().cpu()
    }
    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout, _: &CudaStorage, _: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        self.0.result().cuda()
    }
    fn bwd(
        &self,
        x: &Tensor,
        packed: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dp) = self.0.grads(x, packed, grad).map_err(candle_core::Error::wrap)?;
        Ok((Some(dx), Some(dp)))
    }
}

/// The trainable tensors of a block, in packing order.
#[derive(Default)]
pub(crate) struct Segs {
    flat: Vec<Tensor>,
    pub(crate) shapes: Vec<Shape>,
}

impl Segs {
    /// Adds `t` if it is a `Var` (or any tracked tensor); returns its segment index.
    pub(crate) fn add_if_trainable(&mut self, t: &Tensor) -> Result<Option<usize>> {
        if !t.is_variable() {
            return Ok(None);
        }
        self.flat.push(t.flatten_all()?);
        self.shapes.push(t.shape().clone());
        Ok(Some(self.shapes.len() - 1))
    }

    /// The packed input of the node; `None` when nothing in the block is trainable.
    pub(crate) fn packed(&self) -> Result<Option<Tensor>> {
        if self.flat.is_empty() {
            return Ok(None);
        }
        Ok(Some(Tensor::cat(&self.flat, 0)?))
    }
}

/// Gradients per segment (zeros where a segment got none) as one packed tensor.
pub(crate) fn assemble(shapes: &[Shape], grads: Vec<Option<Tensor>>, like: &Tensor) -> Result<Tensor> {
    let mut parts = Vec::with_capacity(shapes.len());
    for (shape, g) in shapes.iter().zip(grads) {
        parts.push(match g {
            Some(g) => g.flatten_all()?,
            None => Tensor::zeros(shape.elem_count(), like.dtype(), like.device())?,
        });
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// A projection inside a fused block: detached weights, and where its trainable tensors
/// sit in the packed input.
struct BlockProj {
    w: Tensor,
    w_seg: Option<usize>,
    bias: Option<Tensor>,
    bias_seg: Option<usize>,
    /// LoRA `(A, B)` values and their segments.
    lora: Option<(Tensor, Tensor, usize, usize)>,
    mask: Option<DropMask>,
}

impl BlockProj {
    fn new(lin: &crate::model::Linear, pair: Option<&LoraPair>, segs: &mut Segs) -> Result<Self> {
        let lora = match pair {
            Some(p) => {
                let (Some(sa), Some(sb)) = (segs.add_if_trainable(p.a.as_tensor())?, segs.add_if_trainable(p.b.as_tensor())?) else {
                    return Err(crate::error::ModelError::Input("LoRA weights must be Vars".into()));
                };
                Some((p.a.as_tensor().detach(), p.b.as_tensor().detach(), sa, sb))
            }
            None => None,
        };
        Ok(BlockProj {
            w: lin.dense_weight()?.detach(),
            w_seg: segs.add_if_trainable(lin.dense_weight()?)?,
            bias: lin.bias.as_ref().map(Tensor::detach),
            bias_seg: match &lin.bias {
                Some(b) => segs.add_if_trainable(b)?,
                None => None,
            },
            lora,
            mask: None,
        })
    }

    /// The projection's forward outside autograd; draws (and keeps) its dropout mask.
    fn forward(&mut self, input: &Tensor, model: &Model, ad: Option<&LoraAdapter>, ctx: &mut Ctx) -> Result<Tensor> {
        match (&self.lora, ad) {
            (Some((a, b, _, _)), Some(ad)) => {
                self.mask = model.lora_mask(input.shape(), ad, ctx);
                Ok(lora_linear(input, &self.w, self.bias.as_ref(), a, b, ad.scale(), self.mask.as_ref())?)
            }
            _ => {
                let y = crate::ops::plain_linear(input, &self.w)?;
                Ok(match &self.bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                })
            }
        }
    }

    /// `dx` given the output gradient `g`; the projection's parameter gradients go into
    /// `grads` at their segments.
    fn backward(&self, x: &Tensor, g: &Tensor, scale: f64, grads: &mut [Option<Tensor>]) -> Result<Tensor> {
        if let Some((a, b, sa, sb)) = &self.lora {
            let (dx, da, db) = lora_backward(x, &self.w, a, b, scale, self.mask.as_ref(), g)?;
            grads[*sa] = Some(da);
            grads[*sb] = Some(db);
            return Ok(dx);
        }
        let (k, n) = (x.dim(candle_core::D::Minus1)?, g.dim(candle_core::D::Minus1)?);
        let m = x.elem_count() / k.max(1);
        let g2 = g.detach().contiguous()?.reshape((m, n))?;
        if let Some(s) = self.w_seg {
            let x2 = x.detach().contiguous()?.reshape((m, k))?;
            grads[s] = Some(g2.t()?.matmul(&x2)?);
        }
        if let Some(s) = self.bias_seg {
            grads[s] = Some(g2.sum(0)?);
        }
        Ok(g2.matmul(&self.w)?.reshape(x.shape())?)
    }
}

/// A frozen or trainable RMSNorm weight inside a block.
struct BlockNorm {
    w: Tensor,
    seg: Option<usize>,
}

impl BlockNorm {
    fn new(w: &Tensor, segs: &mut Segs) -> Result<Self> {
        Ok(BlockNorm { w: w.detach(), seg: segs.add_if_trainable(w)? })
    }

    /// `dx` of `rms_norm(x, w)`; the weight gradient (`sum(g * x * r)` over all rows)
    /// goes into `grads` when the weight is trainable.
    fn backward(&self, x: &Tensor, g: &Tensor, eps: f64, grads: &mut [Option<Tensor>]) -> Result<Tensor> {
        let Some((dx, dw)) = crate::ops::rms_norm_bwd_cpu(x, g, &self.w, eps, self.seg.is_some())? else {
            return Err(crate::error::ModelError::Input("fused blocks run on CPU f32 only".into()));
        };
        if let (Some(s), Some(dw)) = (self.seg, dw) {
            grads[s] = Some(dw);
        }
        Ok(dx)
    }
}

struct MlpBlock {
    norm: BlockNorm,
    eps: f64,
    scale: f64,
    gate_p: BlockProj,
    up_p: BlockProj,
    down_p: BlockProj,
    gate: Tensor,
    up: Tensor,
    shapes: Vec<Shape>,
    result: Precomputed,
}

impl MlpBlock {
    fn grads(&self, x: &Tensor, packed: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        let (x, dy) = (x.detach(), dy.detach().contiguous()?);
        let mut grads = vec![None; self.shapes.len()];
        let act = swiglu(&self.gate, &self.up)?;
        let d_act = self.down_p.backward(&act, &dy, self.scale, &mut grads)?;
        drop(act);
        let (d_gate, d_up) = swiglu_backward(&self.gate, &self.up, &d_act)?;
        drop(d_act);
        let h = rms_norm_fused(&x, &self.norm.w, self.eps)?;
        let dh = self.gate_p.backward(&h, &d_gate, self.scale, &mut grads)?;
        let dh = dh.add(&self.up_p.backward(&h, &d_up, self.scale, &mut grads)?)?;
        let dx = dy.add(&self.norm.backward(&x, &dh, self.eps, &mut grads)?)?;
        Ok((dx, assemble(&self.shapes, grads, packed)?))
    }
}

impl PackedGrads for MlpBlock {
    const NAME: &'static str = "mlp-block";
    fn result(&self) -> &Precomputed {
        &self.result
    }
    fn grads(&self, x: &Tensor, packed: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        self.grads(x, packed, dy)
    }
}

/// `x + down(swiglu(gate(norm(x)), up(norm(x))))` for decoder layer `i` as one node (see
/// the module docs). `None` when nothing in the MLP half is trainable; the caller then
/// composes the ops itself.
pub(crate) fn mlp(model: &Model, i: usize, x: &Tensor, ctx: &mut Ctx) -> Result<Option<Tensor>> {
    let ad = ctx.lora;
    let l = &model.layers[i];
    let mut segs = Segs::default();
    let norm = BlockNorm::new(&l.post_attention_layernorm, &mut segs)?;
    let mut proj = |p: Proj| BlockProj::new(&l.proj[p as usize], ad.and_then(|ad| ad.pair(i, p)), &mut segs);
    let (mut gate_p, mut up_p, mut down_p) = (proj(Proj::Gate)?, proj(Proj::Up)?, proj(Proj::Down)?);
    let Some(packed) = segs.packed()? else {
        return Ok(None);
    };
    let eps = model.config.rms_norm_eps;
    let x = x.contiguous()?;
    let xd = x.detach();
    // Masks are drawn in the composed path's order: gate, up, down.
    let h = rms_norm_fused(&xd, &norm.w, eps)?;
    let gate = gate_p.forward(&h, model, ad, ctx)?;
    let up = up_p.forward(&h, model, ad, ctx)?;
    drop(h);
    let act = swiglu(&gate, &up)?;
    let down = down_p.forward(&act, model, ad, ctx)?;
    drop(act);
    let y = xd.add(&down)?;
    if !(x.track_op() || (packed.track_op() && !ctx.lora_frozen)) {
        return Ok(Some(y));
    }
    Ok(Some(x.apply_op2(
        &packed,
        PackedNode(MlpBlock {
            norm,
            eps,
            scale: ad.map_or(1.0, LoraAdapter::scale),
            gate_p,
            up_p,
            down_p,
            gate,
            up,
            shapes: segs.shapes,
            result: Precomputed::new(y)?,
        }),
    )?))
}

/// The attention half: `x + o(attn(rope(q_norm(q(h))), rope(k_norm(k(h))), v(h)))` with
/// `h = norm(x)`. Keeps q and k before their norm, v, the attention output and its per-row
/// log-sum-exp; `h` and the rotated q/k are recomputed in the backward (elementwise).
struct AttnBlock {
    norm: BlockNorm,
    qk_norm: Option<(BlockNorm, BlockNorm)>,
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
    shapes: Vec<Shape>,
    result: Precomputed,
}

impl AttnBlock {
    fn grads(&self, x: &Tensor, packed: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        use crate::attn::{backward_tensors, AttnLayout};
        let (x, dy) = (x.detach(), dy.detach().contiguous()?);
        let mut grads = vec![None; self.shapes.len()];
        let (b, t, hq, hd) = self.attn.dims4()?;
        let d_attn = self.o_p.backward(&self.attn.reshape((b, t, hq * hd))?, &dy, self.scale, &mut grads)?;
        let d_attn = d_attn.reshape((b, t, hq, hd))?;
        let (qn, kn) = match &self.qk_norm {
            Some((q, k)) => (Some(&q.w), Some(&k.w)),
            None => (None, None),
        };
        let q_r = norm_rope_thd(&self.q, qn, self.eps, &self.cos, &self.sin)?;
        let k_r = norm_rope_thd(&self.k, kn, self.eps, &self.cos, &self.sin)?;
        let (dq_r, dk_r, dv) =
            backward_tensors(&q_r, &k_r, &self.v, &self.attn, &d_attn, &self.lse, &self.mask, self.attn_scale, AttnLayout::Bthd)?;
        drop((q_r, k_r, d_attn));
        // RoPE is a rotation: its transpose is the same kernel with -sin.
        let neg_sin = self.sin.neg()?;
        let unrotate = |g: &Tensor| candle_nn::rotary_emb::rope_thd(&g.contiguous()?, &self.cos, &neg_sin);
        let (mut dq, mut dk) = (unrotate(&dq_r)?, unrotate(&dk_r)?);
        if let Some((q_norm, k_norm)) = &self.qk_norm {
            dq = q_norm.backward(&self.q, &dq, self.eps, &mut grads)?;
            dk = k_norm.backward(&self.k, &dk, self.eps, &mut grads)?;
        }
        let (dq, dk, dv) = (dq.reshape((b, t, ()))?, dk.reshape((b, t, ()))?, dv.reshape((b, t, ()))?);
        let h = rms_norm_fused(&x, &self.norm.w, self.eps)?;
        let dh = self.q_p.backward(&h, &dq, self.scale, &mut grads)?;
        let dh = dh.add(&self.k_p.backward(&h, &dk, self.scale, &mut grads)?)?;
        let dh = dh.add(&self.v_p.backward(&h, &dv, self.scale, &mut grads)?)?;
        let dx = dy.add(&self.norm.backward(&x, &dh, self.eps, &mut grads)?)?;
        Ok((dx, assemble(&self.shapes, grads, packed)?))
    }
}

impl PackedGrads for AttnBlock {
    const NAME: &'static str = "attention-block";
    fn result(&self) -> &Precomputed {
        &self.result
    }
    fn grads(&self, x: &Tensor, packed: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        self.grads(x, packed, dy)
    }
}

/// The attention half of decoder layer `i` as one node (see [`AttnBlock`]); `None` when it
/// does not apply (no fused CPU attention, or nothing trainable in this half).
pub(crate) fn attention(model: &Model, i: usize, x: &Tensor, cos: &Tensor, sin: &Tensor, ctx: &mut Ctx) -> Result<Option<Tensor>> {
    let Some(mask) = ctx.fused_mask.clone() else {
        return Ok(None);
    };
    let ad = ctx.lora;
    let c = &model.config;
    let l = &model.layers[i];
    let mut segs = Segs::default();
    let norm = BlockNorm::new(&l.input_layernorm, &mut segs)?;
    let qk_norm = match (&l.q_norm, &l.k_norm) {
        (Some(qn), Some(kn)) => Some((BlockNorm::new(qn, &mut segs)?, BlockNorm::new(kn, &mut segs)?)),
        _ => None,
    };
    let mut proj = |p: Proj| BlockProj::new(&l.proj[p as usize], ad.and_then(|ad| ad.pair(i, p)), &mut segs);
    let (mut q_p, mut k_p, mut v_p, mut o_p) = (proj(Proj::Q)?, proj(Proj::K)?, proj(Proj::V)?, proj(Proj::O)?);
    let Some(packed) = segs.packed()? else {
        return Ok(None);
    };
    let (b, t, _) = x.dims3()?;
    let (hq, hkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
    let eps = c.rms_norm_eps;
    let attn_scale = (1.0 / (hd as f64).sqrt()) as f32;
    let x = x.contiguous()?;
    let xd = x.detach();
    let h = rms_norm_fused(&xd, &norm.w, eps)?;
    let q = q_p.forward(&h, model, ad, ctx)?.reshape((b, t, hq, hd))?;
    let k = k_p.forward(&h, model, ad, ctx)?.reshape((b, t, hkv, hd))?;
    let v = v_p.forward(&h, model, ad, ctx)?.reshape((b, t, hkv, hd))?;
    drop(h);
    let (qn, kn) = match &qk_norm {
        Some((q, k)) => (Some(&q.w), Some(&k.w)),
        None => (None, None),
    };
    let q_r = norm_rope_thd(&q, qn, eps, cos, sin)?;
    let k_r = norm_rope_thd(&k, kn, eps, cos, sin)?;
    let (attn, lse) = crate::attn::forward_tensors(&q_r, &k_r, &v, &mask, attn_scale, crate::attn::AttnLayout::Bthd)?;
    drop((q_r, k_r));
    let o = o_p.forward(&attn.reshape((b, t, hq * hd))?, model, ad, ctx)?;
    let y = xd.add(&o)?;
    if !(x.track_op() || (packed.track_op() && !ctx.lora_frozen)) {
        return Ok(Some(y));
    }
    Ok(Some(x.apply_op2(
        &packed,
        PackedNode(AttnBlock {
            norm,
            qk_norm,
            eps,
            scale: ad.map_or(1.0, LoraAdapter::scale),
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
            shapes: segs.shapes,
            result: Precomputed::new(y)?,
        }),
    )?))
}
