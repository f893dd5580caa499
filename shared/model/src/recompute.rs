//! Gradient checkpointing for LoRA training: a whole decoder layer as one autograd node.
//!
//! Why: a Qwen3-0.6B-shaped LoRA step (seq 512, batch 2) keeps about 96 MiB of activations
//! per layer on the tape from the forward until the backward reaches that layer; with 28
//! layers that is most of the step's peak memory. A recomputed layer keeps only its input
//! (4 MiB here) and its LoRA weights (packed into one flat tensor, so candle's autograd
//! routes their gradients back to the adapter's `Var`s through `cat`). In the backward the
//! layer runs again with a tape of its own, from a copy of the input, and the inner
//! backward's gradients are handed to the outer one.
//!
//! Invariant: the recompute is bit-identical to the first forward. Both run the same code
//! on the same inputs, and the LoRA dropout masks drawn in the first forward are recorded
//! and replayed rather than drawn again (the RNG has moved on by then).

use crate::attn::AttnMask;
use crate::blocks::{assemble, PackedGrads, PackedNode, Segs};
use crate::error::Result;
use crate::lora::{LoraAdapter, LoraConfig, LoraPair};
use crate::model::{Ctx, Masks, Model};
use crate::ops::{DropMask, Precomputed};
use candle_core::{Shape, Tensor, Var};

struct RecomputeLayer {
    model: Model,
    layer: usize,
    cos: Tensor,
    sin: Tensor,
    mask: Option<Tensor>,
    fused_mask: Option<AttnMask>,
    config: LoraConfig,
    /// The adapted projections (`Proj as usize`), in packing order.
    projs: Vec<usize>,
    /// Shapes of the packed segments: A then B of each projection in `projs`.
    shapes: Vec<Shape>,
    masks: Vec<DropMask>,
    result: Precomputed,
}

impl RecomputeLayer {
    /// The layer's input gradient and its packed LoRA gradients, by running the layer
    /// again with a tape.
    fn grads(&self, x: &Tensor, packed: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
        let xv = Var::from_tensor(&x.detach())?;
        let packed = packed.detach();
        let mut slots = vec![None; 7];
        let mut vars = Vec::with_capacity(self.shapes.len());
        let mut off = 0;
        for shape in &self.shapes {
            let n = shape.elem_count();
            vars.push(Var::from_tensor(&packed.narrow(0, off, n)?.reshape(shape.clone())?)?);
            off += n;
        }
        for (k, &proj) in self.projs.iter().enumerate() {
            let (a, b) = (vars[2 * k].clone(), vars[2 * k + 1].clone());
            slots[proj] = Some(LoraPair { a, b });
        }
        let mut layers = vec![vec![None; 7]; self.model.layers.len()];
        layers[self.layer] = slots;
        let adapter = LoraAdapter {
            config: self.config.clone(),
            layers,
        };
        let mut ctx = Ctx {
            train: true,
            lora: Some(&adapter),
            rng: None,
            fused_mask: self.fused_mask.clone(),
            masks: Masks::Replay(self.masks.clone().into()),
            lora_frozen: false,
        };
        let y = self.model.layer(
            self.layer,
            xv.as_tensor(),
            &self.cos,
            &self.sin,
            self.mask.as_ref(),
            None,
            &mut ctx,
        )?;
        let g = y.mul(&grad.detach())?.sum_all()?.backward()?;
        let dx = match g.get(xv.as_tensor()) {
            Some(d) => d.clone(),
            None => x.zeros_like()?,
        };
        let grads = vars.iter().map(|v| g.get(v.as_tensor()).cloned()).collect();
        Ok((dx, assemble(&self.shapes, grads, &packed)?))
    }
}

impl PackedGrads for RecomputeLayer {
    const NAME: &'static str = "recompute-layer";
    fn result(&self) -> &Precomputed {
        &self.result
    }
    fn grads(&self, x: &Tensor, packed: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        self.grads(x, packed, dy)
    }
}

/// Decoder layer `i` on the training path with its activations recomputed in the
/// backward (see the module docs). Falls back to the plain layer when the layer has no
/// adapter.
pub(crate) fn layer(
    model: &Model,
    i: usize,
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    mask: Option<&Tensor>,
    ctx: &mut Ctx,
) -> Result<Tensor> {
    let Some(ad) = ctx.lora else {
        return model.layer(i, x, cos, sin, mask, None, ctx);
    };
    let pairs: Vec<(usize, &LoraPair)> = ad
        .layers
        .get(i)
        .map(|l| l.iter().enumerate().filter_map(|(p, s)| s.as_ref().map(|s| (p, s))).collect())
        .unwrap_or_default();
    if pairs.is_empty() {
        return model.layer(i, x, cos, sin, mask, None, ctx);
    }
    // The first forward: no tape (input and adapter treated as constants), masks recorded.
    let outer = std::mem::replace(&mut ctx.masks, Masks::Record(Vec::new()));
    ctx.lora_frozen = true;
    let y = model.layer(i, &x.detach(), cos, sin, mask, None, ctx);
    ctx.lora_frozen = false;
    let masks = match std::mem::replace(&mut ctx.masks, outer) {
        Masks::Record(m) => m,
        _ => Vec::new(),
    };
    let y = y?;
    let mut segs = Segs::default();
    for (_, pair) in &pairs {
        for v in [&pair.a, &pair.b] {
            segs.add_if_trainable(v.as_tensor())?;
        }
    }
    let Some(packed) = segs.packed()? else {
        return Ok(y);
    };
    if !(x.track_op() || packed.track_op()) {
        return Ok(y);
    }
    Ok(x.apply_op2(
        &packed,
        PackedNode(RecomputeLayer {
            model: model.clone(),
            layer: i,
            cos: cos.clone(),
            sin: sin.clone(),
            mask: mask.cloned(),
            fused_mask: ctx.fused_mask.clone(),
            config: ad.config.clone(),
            projs: pairs.iter().map(|(p, _)| *p).collect(),
            shapes: segs.shapes,
            masks,
            result: Precomputed::new(y)?,
        }),
    )?)
}
