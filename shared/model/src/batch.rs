//! Ragged ("varlen") batched inference forward for continuous batching.
//!
//! [`Model::forward`] keeps one [`crate::KvCache`] whose rows must all have the same
//! length, which does not fit a serving engine where sequences join and leave between
//! decode steps with different prompt lengths. This module provides:
//!
//! * [`SeqKv`]: a per-sequence KV cache made of zero or more *shared, frozen* prefix
//!   segments ([`KvPrefix`], reference counted, so `n` samples of one prompt or many
//!   requests with the same long tools system prompt keep one copy) followed by a private
//!   growable buffer for the sequence's own positions;
//! * [`forward_ragged`]: one forward over many sequences, each appending any number of
//!   tokens (a prefill chunk or one decode token). All tokens are packed into one row,
//!   so every projection, the MLP and the lm_head run as single batched matmuls; only
//!   attention is done per sequence (over its own segments, with no padding), which is
//!   where the ragged lengths live;
//! * [`KvMemory`]: byte accounting of every KV buffer alive (decremented on drop), so an
//!   engine can cap memory and observe that freed sequences return their bytes, and the
//!   type the buffers store: the model's own, or f16 ([`KvMemory::storing`]), which halves
//!   the cache and what each decode step reads from it (llama.cpp's default cache type).
//!
//! The math is the inference path of [`Model::forward`] (same RoPE tables, fused RMSNorm,
//! GQA folding, un-merged LoRA on the rank-r intermediate); a test checks the logits agree
//! with per-sequence [`Model::forward`] within 1e-4.

use crate::error::{ModelError, Result};
use crate::lora::LoraAdapter;
use crate::model::{Model, Proj};
use crate::ops::{plain_linear, rms_norm_fused};
use rayon::prelude::*;
use candle_core::{DType, Device, Tensor};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Positions by which a private buffer grows at least (bounded by its limit).
const OWN_CHUNK: usize = 64;

/// Shared counter of bytes held by KV buffers created with it, and the value type those
/// buffers store. Cloning shares the counter.
#[derive(Debug, Clone, Default)]
pub struct KvMemory {
    bytes: Arc<AtomicUsize>,
    /// `None`: the model's dtype.
    store: Option<DType>,
}

impl KvMemory {
    /// Buffers in the model's dtype.
    pub fn new() -> Self {
        Self::default()
    }
    /// Buffers that store `dtype` (keys and values are converted as they are appended and
    /// read back in the model's dtype; on CPU the decode kernels read f16 directly).
    pub fn storing(dtype: DType) -> Self {
        KvMemory { bytes: Arc::default(), store: Some(dtype) }
    }
    /// Bytes currently allocated by live buffers.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
    /// The type buffers hold for `model`.
    pub fn dtype(&self, model: &Model) -> DType {
        self.store.unwrap_or(model.dtype())
    }
    /// KV bytes one position costs in `model` with these buffers.
    pub fn bytes_per_position(&self, model: &Model) -> usize {
        let c = &model.config;
        c.num_hidden_layers * 2 * c.num_key_value_heads * c.head_dim * self.dtype(model).size_in_bytes()
    }
    fn store_dtype(&self, appended: DType) -> DType {
        self.store.unwrap_or(appended)
    }
}

/// `t` as `dtype`: on CPU, f32 <-> f16 through `half`'s slice conversion (F16C where the
/// CPU has it; candle converts one value at a time), otherwise candle's `to_dtype`.
fn kv_as(t: &Tensor, dtype: DType) -> Result<Tensor> {
    use half::slice::HalfFloatSliceExt;
    if t.dtype() == dtype {
        return Ok(t.clone());
    }
    if !t.device().is_cpu() {
        return Ok(t.to_dtype(dtype)?);
    }
    let shape = t.shape().clone();
    match (t.dtype(), dtype) {
        (DType::F32, DType::F16) => {
            let x = t.flatten_all()?.to_vec1::<f32>()?;
            let mut h = vec![half::f16::ZERO; x.len()];
            h.convert_from_f32_slice(&x);
            Ok(Tensor::from_vec(h, shape, t.device())?)
        }
        (DType::F16, DType::F32) => {
            let h = t.flatten_all()?.to_vec1::<half::f16>()?;
            let mut x = vec![0f32; h.len()];
            h.convert_to_f32_slice(&mut x);
            Ok(Tensor::from_vec(x, shape, t.device())?)
        }
        _ => Ok(t.to_dtype(dtype)?),
    }
}

/// KV bytes one position costs in `model` (all layers, keys and values) when the cache
/// stores the model's dtype; [`KvMemory::bytes_per_position`] for the type a cache holds.
pub fn kv_bytes_per_position(model: &Model) -> usize {
    KvMemory::new().bytes_per_position(model)
}

/// Per-layer `[1, Hkv, cap, D]` key/value buffers whose bytes are registered in a
/// [`KvMemory`] and released on drop.
#[derive(Debug)]
struct KvBuf {
    layers: Vec<Option<(Tensor, Tensor)>>,
    bytes: usize,
    mem: KvMemory,
}

impl Drop for KvBuf {
    fn drop(&mut self) {
        self.mem.bytes.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl KvBuf {
    fn new(num_layers: usize, mem: KvMemory) -> Self {
        KvBuf {
            layers: vec![None; num_layers],
            bytes: 0,
            mem,
        }
    }

    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|(k, _)| k.dims().get(2).copied().unwrap_or(0))
            .min()
            .unwrap_or(0)
    }

    /// Writes `k`, `v` (`[1, Hkv, t, D]`) at `offset` of layer `i`, growing the buffer
    /// to `min(max(need rounded to a chunk, 2 * cap), max(limit, need))` positions, and
    /// returns views of the first `offset + t` positions.
    fn append(
        &mut self,
        i: usize,
        k: &Tensor,
        v: &Tensor,
        offset: usize,
        limit: usize,
    ) -> Result<(Tensor, Tensor)> {
        let (_, h, t, d) = k.dims4()?;
        let store = self.mem.store_dtype(k.dtype());
        let (k, v) = (&kv_as(k, store)?, &kv_as(v, store)?);
        let need = offset + t;
        let slot = self
            .layers
            .get_mut(i)
            .ok_or_else(|| ModelError::Input("KV buffer has too few layers".into()))?;
        let cap = match slot {
            Some((ck, _)) => ck.dim(2)?,
            None => 0,
        };
        if cap < need {
            let new_cap = need
                .div_ceil(OWN_CHUNK)
                .saturating_mul(OWN_CHUNK)
                .max(2 * cap)
                .min(limit.max(need));
            let nk = Tensor::zeros((1, h, new_cap, d), store, k.device())?;
            let nv = Tensor::zeros((1, h, new_cap, d), store, v.device())?;
            if let Some((ok, ov)) = slot.as_ref() {
                if offset > 0 {
                    nk.slice_set(&ok.narrow(2, 0, offset)?.contiguous()?, 2, 0)?;
                    nv.slice_set(&ov.narrow(2, 0, offset)?.contiguous()?, 2, 0)?;
                }
            }
            let per_pos = 2 * h * d * store.size_in_bytes();
            let added = (new_cap - cap) * per_pos;
            self.bytes += added;
            self.mem.bytes.fetch_add(added, Ordering::Relaxed);
            *slot = Some((nk, nv));
        }
        let (ck, cv) = slot
            .as_ref()
            .ok_or_else(|| ModelError::Input("KV buffer slot".into()))?;
        ck.slice_set(&k.contiguous()?, 2, offset)?;
        cv.slice_set(&v.contiguous()?, 2, offset)?;
        Ok((ck.narrow(2, 0, need)?, cv.narrow(2, 0, need)?))
    }

    fn view(&self, i: usize, len: usize) -> Result<(Tensor, Tensor)> {
        match self.layers.get(i) {
            Some(Some((k, v))) => Ok((k.narrow(2, 0, len)?, v.narrow(2, 0, len)?)),
            _ => Err(ModelError::Input("KV segment missing a layer".into())),
        }
    }

    /// Deep copy of the first `len` positions (capacity `len`, rounded to a chunk).
    fn copy_prefix(&self, len: usize, limit: usize) -> Result<KvBuf> {
        let mut out = KvBuf::new(self.layers.len(), self.mem.clone());
        if len == 0 {
            return Ok(out);
        }
        for i in 0..self.layers.len() {
            let (k, v) = self.view(i, len)?;
            out.append(i, &k, &v, 0, limit)?;
        }
        Ok(out)
    }
}

/// A shareable, immutable KV prefix: a chain of frozen buffers (segments), each used up to some
/// length. Cloning is cheap (reference counts); the memory is released when the last
/// holder (a sequence or a prefix cache) drops it.
#[derive(Debug, Clone, Default)]
pub struct KvPrefix {
    segs: Vec<(Arc<KvBuf>, usize)>,
}

impl KvPrefix {
    /// Number of positions covered.
    pub fn len(&self) -> usize {
        self.segs.iter().map(|s| s.1).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Number of frozen segments (each costs one extra score/value matmul per layer).
    pub fn num_segments(&self) -> usize {
        self.segs.len()
    }
    /// The first `len` positions (causal attention makes any prefix of a cached prefix
    /// valid for any prompt starting with the same tokens).
    pub fn truncated(&self, len: usize) -> KvPrefix {
        let mut left = len;
        let mut segs = Vec::new();
        for (s, l) in &self.segs {
            if left == 0 {
                break;
            }
            let take = (*l).min(left);
            segs.push((s.clone(), take));
            left -= take;
        }
        KvPrefix { segs }
    }
}

/// KV cache of one sequence for [`forward_ragged`]: a shared prefix plus private positions.
#[derive(Debug)]
pub struct SeqKv {
    prefix: KvPrefix,
    own: KvBuf,
    own_len: usize,
    /// Private buffer never grows beyond this many positions (unless a forward needs more).
    own_limit: usize,
}

impl SeqKv {
    /// An empty cache for `model`, accounted in `mem`.
    pub fn new(model: &Model, mem: &KvMemory) -> Self {
        SeqKv {
            prefix: KvPrefix::default(),
            own: KvBuf::new(model.layers.len(), mem.clone()),
            own_len: 0,
            own_limit: usize::MAX,
        }
    }

    /// A cache that starts with the shared `prefix` (no copy).
    pub fn with_prefix(model: &Model, mem: &KvMemory, prefix: KvPrefix) -> Self {
        let mut s = Self::new(model, mem);
        s.prefix = prefix;
        s
    }

    /// Total positions (the position of the next token).
    pub fn len(&self) -> usize {
        self.prefix.len() + self.own_len
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Positions held in shared frozen segments.
    pub fn shared_len(&self) -> usize {
        self.prefix.len()
    }
    /// Positions in the private buffer.
    pub fn own_len(&self) -> usize {
        self.own_len
    }
    /// Bytes of the private buffer (shared segments are accounted once, by [`KvMemory`]).
    pub fn own_bytes(&self) -> usize {
        self.own.bytes
    }
    /// Caps the private buffer's growth at `positions` (so a sequence whose maximum
    /// length is known never over-allocates); a forward that needs more still succeeds.
    pub fn set_own_limit(&mut self, positions: usize) {
        self.own_limit = positions;
    }

    /// Freezes everything cached so far into a shareable prefix (no copy): this cache
    /// continues with an empty private buffer on top of the returned prefix.
    pub fn freeze(&mut self) -> KvPrefix {
        if self.own_len > 0 {
            let mem = self.own.mem.clone();
            let n = self.own.layers.len();
            let buf = std::mem::replace(&mut self.own, KvBuf::new(n, mem));
            self.prefix.segs.push((Arc::new(buf), self.own_len));
            self.own_len = 0;
        }
        self.prefix.clone()
    }

    /// Independent copy: shares the prefix, deep-copies the private positions.
    pub fn fork(&self) -> Result<SeqKv> {
        Ok(SeqKv {
            prefix: self.prefix.clone(),
            own: self.own.copy_prefix(self.own_len, self.own_limit)?,
            own_len: self.own_len,
            own_limit: self.own_limit,
        })
    }
}

/// One sequence of a ragged batch: `tokens` are appended after what `cache` holds.
#[derive(Debug)]
pub struct RaggedInput<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut SeqKv,
}

/// Additive mask value, as in the model's own inference path.
fn mask_value(dtype: DType) -> f32 {
    if dtype == DType::F16 {
        -3.0e4
    } else {
        -1.0e9
    }
}

fn rope_tables(model: &Model, positions: &[u32]) -> Result<(Tensor, Tensor)> {
    let c = &model.config;
    let d = c.head_dim;
    let base = c.rope_theta as f32;
    let inv: Vec<f32> = (0..d / 2)
        .map(|i| 1.0f32 / base.powf((2 * i) as f32 / d as f32))
        .collect();
    let mut cos = Vec::with_capacity(positions.len() * inv.len());
    let mut sin = Vec::with_capacity(positions.len() * inv.len());
    for &p in positions {
        for &f in &inv {
            let a = p as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    let dev: &Device = model.device();
    let n = positions.len();
    let cos = Tensor::from_vec(cos, (n, inv.len()), dev)?.to_dtype(model.dtype())?;
    let sin = Tensor::from_vec(sin, (n, inv.len()), dev)?.to_dtype(model.dtype())?;
    Ok((cos, sin))
}

/// Two independent projections of the same input at once (`rayon::join`): on CPU each
/// is a split matmul whose last tasks leave a core idle, and running the pair together
/// fills that gap and halves the join points per layer.
fn both<A: Send, B: Send>(a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B + Send) -> (A, B) {
    rayon::join(a, b)
}

fn linear(
    model: &Model,
    x: &Tensor,
    layer: usize,
    p: Proj,
    lora: Option<&LoraAdapter>,
) -> Result<Tensor> {
    let mut y = model.layers[layer].proj[p as usize].forward(x)?;
    if let Some(ad) = lora {
        if let Some(pair) = ad.pair(layer, p) {
            let xa = plain_linear(x, &pair.a.as_tensor().detach())?.affine(ad.scale(), 0.0)?;
            y = (y + plain_linear(&xa, &pair.b.as_tensor().detach())?)?;
        }
    }
    Ok(y)
}

/// The projections `projs` of one input `x` (`[1, n, hidden]`): a layer's q, k, v, or its
/// gate and up. When all are Q8_0 weights in our kernel, without biases or LoRA pairs,
/// and `x` is CPU f32, they share one quantization of `x` and one parallel loop
/// ([`crate::q8gemv::matmul_group`]); otherwise each runs on its own, concurrently.
fn linear_group(model: &Model, x: &Tensor, layer: usize, projs: &[Proj], lora: Option<&LoraAdapter>) -> Result<Vec<Tensor>> {
    use crate::model::Weight;
    use crate::quantized::QWeight;
    let lin = &model.layers[layer].proj;
    let packed: Option<Vec<&crate::q8gemv::PackedQ8>> = projs
        .iter()
        .map(|&p| match (&lin[p as usize], lora.and_then(|ad| ad.pair(layer, p))) {
            (crate::Linear { weight: Weight::Quantized(QWeight::Q8(w)), bias: None }, None) => Some(&**w),
            _ => None,
        })
        .collect();
    if let Some(ws) = packed {
        let k = ws[0].cols();
        // Rows of `x`; a width other than `k` gives empty results, and the general path.
        let grouped = crate::rowops::with_cpu_f32(x, |xs| (xs.len() / k, crate::q8gemv::matmul_group(&ws, xs, xs.len() / k)));
        if let Some((_, ys)) = grouped.filter(|(n, ys)| *n > 0 && ys.iter().zip(&ws).all(|(y, w)| y.len() == n * w.rows())) {
            let lead = &x.dims()[..x.rank().saturating_sub(1)];
            return ys
                .into_iter()
                .zip(&ws)
                .map(|(y, w)| Ok(Tensor::from_vec(y, [lead, &[w.rows()]].concat(), x.device())?))
                .collect();
        }
    }
    Ok(match projs {
        [a, b, c] => {
            let (ya, (yb, yc)) = both(|| linear(model, x, layer, *a, lora), || both(|| linear(model, x, layer, *b, lora), || linear(model, x, layer, *c, lora)));
            vec![ya?, yb?, yc?]
        }
        [a, b] => {
            let (ya, yb) = both(|| linear(model, x, layer, *a, lora), || linear(model, x, layer, *b, lora));
            vec![ya?, yb?]
        }
        _ => projs.iter().map(|&p| linear(model, x, layer, p, lora)).collect::<Result<_>>()?,
    })
}

/// A hidden-size RMS norm of the forward: [`crate::rowops::rms_norm`] on CPU f32, candle's
/// otherwise.
fn norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    match crate::rowops::rms_norm(x, w, eps as f32) {
        Some(t) => Ok(t),
        None => Ok(rms_norm_fused(x, w, eps)?),
    }
}

/// `x + y`: [`crate::rowops::add`] on CPU f32, candle's add otherwise.
fn residual(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    match crate::rowops::add(x, y) {
        Some(t) => Ok(t),
        None => Ok((x + y)?),
    }
}

/// A rank-4 `[1, H, L, D]` CPU tensor of `T` (possibly a narrowed view) as its backing
/// slice, start offset and head / position strides; `None` for anything else.
fn kv_slices<T: candle_core::WithDType, R>(t: &Tensor, f: impl FnOnce(&[T], usize, usize, usize) -> R) -> Result<Option<R>> {
    let (st, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*st else {
        return Ok(None);
    };
    let Ok(data) = cpu.as_slice::<T>() else {
        return Ok(None);
    };
    let strides = layout.stride();
    if strides.len() != 4 || strides[3] != 1 {
        return Ok(None);
    }
    Ok(Some(f(data, layout.start_offset(), strides[1], strides[2])))
}

/// Runs `f(data, offset, head_stride, position_stride, base, len)` on each KV segment in
/// order, `base` being the segment's first position in the concatenated sequence; `false`
/// when a segment is not a CPU view of `T` (nothing more is visited).
fn over_segments<'a, T: candle_core::WithDType>(
    segs: impl Iterator<Item = &'a Tensor>,
    mut f: impl FnMut(&[T], usize, usize, usize, usize, usize),
) -> Result<bool> {
    let mut base = 0;
    for t in segs {
        let len = t.dim(2)?;
        if kv_slices(t, |data, off, sh, sp| f(data, off, sh, sp, base, len))?.is_none() {
            return Ok(false);
        }
        base += len;
    }
    Ok(true)
}

/// Attention of one new token (a decode step) on CPU f32, straight over the KV segments
/// (f32 or f16): dot products against every cached key, a softmax per query head, then the
/// weighted sum of values. At one query row per head the general matmul's per-call setup
/// costs more than the arithmetic, so this path skips it. Returns `[1, 1, Hq * D]`, or
/// `None` when the tensors are not that (the caller falls back to the matmul path).
fn decode_attention(
    q: &Query<'_>,
    prefix: &[(Arc<KvBuf>, usize)],
    layer: usize,
    own: (&Tensor, &Tensor),
    n_rep: usize,
    scale: f64,
) -> Result<Option<Tensor>> {
    match own.0.dtype() {
        DType::F32 => decode_attention_in::<f32>(q, prefix, layer, own, n_rep, scale),
        DType::F16 => decode_attention_in::<half::f16>(q, prefix, layer, own, n_rep, scale),
        _ => Ok(None),
    }
}

/// One position's query: `[heads * hd]` values, head by head.
struct Query<'a> {
    values: &'a [f32],
    heads: usize,
    hd: usize,
}

/// [`decode_attention`] over segments that hold `T`.
fn decode_attention_in<T: candle_core::WithDType + crate::decode_attn::KvElem>(
    q: &Query<'_>,
    prefix: &[(Arc<KvBuf>, usize)],
    layer: usize,
    own: (&Tensor, &Tensor),
    n_rep: usize,
    scale: f64,
) -> Result<Option<Tensor>> {
    let (qv, hq, d) = (q.values, q.heads, q.hd);
    let mut segs: Vec<(Tensor, Tensor)> = Vec::with_capacity(prefix.len() + 1);
    for (seg, used) in prefix {
        segs.push(seg.view(layer, *used)?);
    }
    segs.push((own.0.clone(), own.1.clone()));
    let total: usize = segs.iter().map(|(k, _)| k.dim(2)).sum::<candle_core::Result<usize>>()?;
    // scores[h * total + p]
    let mut scores = vec![0f32; hq * total];
    // Query heads `g * n_rep..(g + 1) * n_rep` share KV head `g`.
    let keys_done = over_segments::<T>(segs.iter().map(|(k, _)| k), |data, off, sh, sp, base, len| {
        for g in 0..hq / n_rep {
            let rows = g * n_rep..(g + 1) * n_rep;
            crate::decode_attn::scores(
                &qv[rows.start * d..rows.end * d],
                n_rep,
                d,
                &data[off + g * sh..],
                sp,
                len,
                scale as f32,
                &mut scores[rows.start * total + base..],
                total,
            );
        }
    })?;
    if !keys_done {
        return Ok(None);
    }
    for row in scores.chunks_mut(total) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum = crate::attn::exp_sub_sum(row, max);
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|x| *x *= inv);
    }
    let mut out = vec![0f32; hq * d];
    let values_done = over_segments::<T>(segs.iter().map(|(_, v)| v), |data, off, sh, sp, base, len| {
        for g in 0..hq / n_rep {
            let rows = g * n_rep..(g + 1) * n_rep;
            crate::decode_attn::weighted_values(
                &scores[rows.start * total + base..],
                total,
                n_rep,
                d,
                &data[off + g * sh..],
                sp,
                len,
                &mut out[rows.start * d..rows.end * d],
            );
        }
    })?;
    if !values_done {
        return Ok(None);
    }
    Ok(Some(Tensor::from_vec(out, (1, 1, hq * d), &Device::Cpu)?))
}

/// A layer's q, k, v projections (`[1, n, heads * hd]`) as head-major `[1, H, n, hd]`, q and
/// k normed per head (Qwen3) and rotated, in one pass each ([`crate::rowops`]); `None`
/// when a tensor is not CPU f32 (the caller takes candle's ops).
fn heads_major_qkv(
    l: &crate::model::DecoderLayer,
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    (hq, hkv, hd): (usize, usize, usize),
    eps: f64,
    rope: Option<&crate::rowops::Rope<'_>>,
) -> Option<(Tensor, Tensor, Tensor)> {
    use crate::rowops::heads_major;
    let rope = rope?;
    let eps = eps as f32;
    let (qn, kn) = match (&l.q_norm, &l.k_norm) {
        (Some(qn), Some(kn)) => (Some((qn, eps)), Some((kn, eps))),
        _ => (None, None),
    };
    Some((
        heads_major(q, hq, hd, qn, Some(rope))?,
        heads_major(k, hkv, hd, kn, Some(rope))?,
        heads_major(v, hkv, hd, None, None)?,
    ))
}

/// Position `a` of a head-major `[1, H, N, D]` contiguous CPU f32 tensor: `[H * D]` values,
/// head by head; `None` for any other tensor.
fn position_rows(t: &Tensor, a: usize) -> Option<Vec<f32>> {
    let (_, h, n, d) = t.dims4().ok()?;
    if a >= n {
        return None;
    }
    crate::rowops::with_cpu_f32(t, |xs| {
        let mut out = Vec::with_capacity(h * d);
        for head in 0..h {
            out.extend_from_slice(xs.get((head * n + a) * d..(head * n + a + 1) * d)?);
        }
        Some(out)
    })?
}

/// `[h * d]` values as a `[1, h, 1, d]` CPU tensor of `dtype` (the cache's).
fn row_tensor(values: &[f32], h: usize, d: usize, dtype: DType) -> Result<Tensor> {
    use half::slice::HalfFloatSliceExt;
    Ok(match dtype {
        DType::F32 => Tensor::from_slice(values, (1, h, 1, d), &Device::Cpu)?,
        DType::F16 => {
            let mut hv = vec![half::f16::ZERO; values.len()];
            hv.convert_from_f32_slice(values);
            Tensor::from_vec(hv, (1, h, 1, d), &Device::Cpu)?
        }
        _ => kv_as(&Tensor::from_slice(values, (1, h, 1, d), &Device::Cpu)?, dtype)?,
    })
}

/// What one sequence's attention reads in a layer: the projected `q`, `k`, `v` of the
/// whole ragged batch (`[1, H, N, D]`), the layer, and the head layout.
struct LayerQkv<'a> {
    q: &'a Tensor,
    k: &'a Tensor,
    v: &'a Tensor,
    layer: usize,
    /// Query heads, KV heads, head dim, query heads per KV head.
    heads: (usize, usize, usize, usize),
    scale: f64,
}

/// Appends one sequence's new keys and values (batch rows `a..a + t`) to its cache and
/// returns its attention output `[1, t, Hq * D]`.
fn attend_one(cache: &mut SeqKv, (a, t): (usize, usize), mask: &Option<Tensor>, l: &LayerQkv<'_>) -> Result<Tensor> {
    let (q, k, v, i, scale) = (l.q, l.k, l.v, l.layer, l.scale);
    let (hq, hkv, hd, n_rep) = l.heads;
    // A decode token's rows, read straight from the projections (CPU f32): the general
    // path's strided copies, dtype conversions and tensors were ~3% of an 8-sequence step.
    let rows = match t {
        1 => position_rows(q, a).zip(position_rows(k, a)).zip(position_rows(v, a)),
        _ => None,
    };
    let (k_own, v_own) = match &rows {
        Some(((_, kr), vr)) => {
            let store = cache.own.mem.store_dtype(DType::F32);
            let (kt, vt) = (row_tensor(kr, hkv, hd, store)?, row_tensor(vr, hkv, hd, store)?);
            cache.own.append(i, &kt, &vt, cache.own_len, cache.own_limit)?
        }
        None => cache.own.append(i, &k.narrow(2, a, t)?, &v.narrow(2, a, t)?, cache.own_len, cache.own_limit)?,
    };
    if let Some(((qv, _), _)) = &rows {
        let q1 = Query { values: qv, heads: hq, hd };
        if let Some(out) = decode_attention(&q1, &cache.prefix.segs, i, (&k_own, &v_own), n_rep, scale)? {
            return Ok(out);
        }
    } else if t > 1 && cache.prefix.segs.is_empty() && crate::attn::supported(q) {
        // A prompt chunk over the sequence's own positions only: the fused causal
        // CPU attention of the training path (blocked, skips masked blocks, no
        // repeated KV heads, no score matrix per head).
        let qs = q.narrow(2, a, t)?.contiguous()?;
        let mask = crate::attn::AttnMask { offset: cache.own_len, key_valid: None };
        let (k_own, v_own) = (kv_as(&k_own, qs.dtype())?, kv_as(&v_own, qs.dtype())?);
        let (o, _) =
            crate::attn::forward_tensors(&qs, &k_own, &v_own, &mask, scale as f32, crate::attn::AttnLayout::Bhtd)?;
        return Ok(o.transpose(1, 2)?.reshape((1, t, hq * hd))?);
    }
    let qs = q
        .narrow(2, a, t)?
        .contiguous()?
        .reshape((1, hkv, n_rep * t, hd))?;
    // Scores against each shared segment (fully visible: all earlier positions),
    // then against the private positions with the causal mask.
    let mut parts: Vec<(Tensor, Tensor)> = Vec::new();
    let mut scores: Vec<Tensor> = Vec::new();
    for (seg, used) in &cache.prefix.segs {
        let (kk, vv) = seg.view(i, *used)?;
        let (kk, vv) = (kv_as(&kk, qs.dtype())?, kv_as(&vv, qs.dtype())?);
        scores.push(qs.matmul(&kk.t()?)?);
        parts.push((kk, vv));
    }
    let (k_own, v_own) = (kv_as(&k_own, qs.dtype())?, kv_as(&v_own, qs.dtype())?);
    let l_own = k_own.dim(2)?;
    let mut so = qs.matmul(&k_own.t()?)?;
    if let Some(m) = mask {
        so = so
            .reshape((1, hkv, n_rep, t, l_own))?
            .broadcast_add(m)?
            .reshape((1, hkv, n_rep * t, l_own))?;
    }
    scores.push(so);
    parts.push((k_own, v_own));
    let sc = if scores.len() == 1 {
        scores
            .pop()
            .ok_or_else(|| ModelError::Input("scores".into()))?
    } else {
        Tensor::cat(&scores, 3)?
    };
    let p = candle_nn::ops::softmax_last_dim(&sc.affine(scale, 0.0)?)?;
    let out = if parts.len() == 1 {
        p.matmul(&parts[0].1)?
    } else {
        let mut acc: Option<Tensor> = None;
        let mut off = 0;
        for (kk, vv) in &parts {
            let len = kk.dim(2)?;
            let o = p.narrow(3, off, len)?.contiguous()?.matmul(vv)?;
            off += len;
            acc = Some(match acc {
                Some(a) => (a + o)?,
                None => o,
            });
        }
        acc.ok_or_else(|| ModelError::Input("attention parts".into()))?
    };
    Ok(out
        .reshape((1, hq, t, hd))?
        .transpose(1, 2)?
        .reshape((1, t, hq * hd))?)
}

/// Runs all `seqs` through the model in one forward, appending their tokens to their
/// caches, and returns the logits of each sequence's last token, `[S, vocab]`.
///
/// Any mix of prefill chunks and single decode tokens is allowed. On error the caches'
/// lengths are unchanged but their buffers may hold garbage past the end (harmless:
/// positions beyond `len` are never read).
///
/// Called from outside the rayon pool (the engine's thread), the whole forward moves onto
/// a pool worker first. A decode step makes ~200 parallel matmul calls of a few hundred
/// microseconds each; from outside the pool each one is a cross-thread injection and a
/// sleep/wake of the caller (tens of microseconds on a VM), from inside it is a push on
/// the worker's own deque that an awake sibling steals.
pub fn forward_ragged(
    model: &Model,
    lora: Option<&LoraAdapter>,
    seqs: &mut [RaggedInput<'_>],
) -> Result<Tensor> {
    if rayon::current_thread_index().is_none() && model.device().is_cpu() {
        return rayon::join(|| forward_ragged_in_pool(model, lora, seqs), || ()).0;
    }
    forward_ragged_in_pool(model, lora, seqs)
}

fn forward_ragged_in_pool(
    model: &Model,
    lora: Option<&LoraAdapter>,
    seqs: &mut [RaggedInput<'_>],
) -> Result<Tensor> {
    let c = &model.config;
    if seqs.is_empty() || seqs.iter().any(|s| s.tokens.is_empty()) {
        return Err(ModelError::Input("empty ragged batch or sequence".into()));
    }
    let nl = model.layers.len();
    for s in seqs.iter() {
        if s.cache.own.layers.len() != nl {
            return Err(ModelError::Input(
                "KV cache built for a different model".into(),
            ));
        }
    }
    let (hq, hkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
    let n_rep = c.n_rep();
    let mut ids = Vec::new();
    let mut positions = Vec::new();
    let mut ranges = Vec::with_capacity(seqs.len());
    for s in seqs.iter() {
        let start = ids.len();
        let off = s.cache.len();
        ids.extend_from_slice(s.tokens);
        positions.extend((off..off + s.tokens.len()).map(|p| p as u32));
        ranges.push((start, s.tokens.len()));
    }
    if let Some(bad) = ids.iter().find(|&&t| t as usize >= c.vocab_size) {
        return Err(ModelError::Input(format!(
            "token id {bad} >= vocab size {}",
            c.vocab_size
        )));
    }
    let n = ids.len();
    let dev = model.device();
    let mut x = model.embed_rows(&ids)?.reshape((1, n, c.hidden_size))?;
    let (cos, sin) = rope_tables(model, &positions)?;
    // The same tables as slices, for the fused q/k path on CPU f32.
    let rope_vecs = match (model.dtype(), dev.is_cpu()) {
        (DType::F32, true) => Some((cos.flatten_all()?.to_vec1::<f32>()?, sin.flatten_all()?.to_vec1::<f32>()?)),
        _ => None,
    };
    let rope_cpu = rope_vecs.as_ref().map(|(c, s)| crate::rowops::Rope { cos: c, sin: s });
    let scale = 1.0 / (hd as f64).sqrt();
    let neg = mask_value(model.dtype());
    // Causal masks for multi-token chunks, `[t, own_len + t]`, built once per sequence.
    let mut masks = Vec::with_capacity(seqs.len());
    for (s, &(_, t)) in seqs.iter().zip(&ranges) {
        masks.push(if t > 1 {
            let off = s.cache.own_len;
            let l = off + t;
            let m: Vec<f32> = (0..t)
                .flat_map(|i| (0..l).map(move |j| if j > off + i { neg } else { 0.0 }))
                .collect();
            Some(Tensor::from_vec(m, (t, l), dev)?.to_dtype(model.dtype())?)
        } else {
            None
        });
    }
    let eps = c.rms_norm_eps;
    for i in 0..nl {
        let l = &model.layers[i];
        let h = norm(&x, &l.input_layernorm, eps)?;
        let [q, k, v]: [Tensor; 3] = linear_group(model, &h, i, &[Proj::Q, Proj::K, Proj::V], lora)?
            .try_into()
            .map_err(|_| ModelError::Input("q, k, v projections".into()))?;
        let (q, k, v) = match heads_major_qkv(l, (&q, &k, &v), (hq, hkv, hd), eps, rope_cpu.as_ref()) {
            Some(qkv) => qkv,
            None => {
                let mut q = q.reshape((1, n, hq, hd))?;
                let mut k = k.reshape((1, n, hkv, hd))?;
                let v = v.reshape((1, n, hkv, hd))?;
                if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
                    q = rms_norm_fused(&q, qn, eps)?;
                    k = rms_norm_fused(&k, kn, eps)?;
                }
                let q = q.transpose(1, 2)?.contiguous()?;
                let k = k.transpose(1, 2)?.contiguous()?;
                let v = v.transpose(1, 2)?.contiguous()?;
                let q = candle_nn::rotary_emb::rope(&q, &cos, &sin)?;
                let k = candle_nn::rotary_emb::rope(&k, &cos, &sin)?;
                (q, k, v)
            }
        };
        let qkv = LayerQkv { q: &q, k: &k, v: &v, layer: i, heads: (hq, hkv, hd, n_rep), scale };
        // Sequences attend independently (each to its own cache), so a batch of them
        // spreads over the pool instead of running one after another on this thread.
        let mut outs: Vec<Tensor> = if seqs.len() > 1 && dev.is_cpu() {
            seqs.par_iter_mut()
                .zip(ranges.par_iter())
                .zip(masks.par_iter())
                .map(|((s, &r), mask)| attend_one(s.cache, r, mask, &qkv))
                .collect::<Result<_>>()?
        } else {
            seqs.iter_mut()
                .zip(&ranges)
                .zip(&masks)
                .map(|((s, &r), mask)| attend_one(s.cache, r, mask, &qkv))
                .collect::<Result<_>>()?
        };
        let attn = if outs.len() == 1 {
            outs.pop().ok_or_else(|| ModelError::Input("outs".into()))?
        } else {
            Tensor::cat(&outs, 1)?
        };
        x = residual(&x, &linear(model, &attn, i, Proj::O, lora)?)?;
        let h = norm(&x, &l.post_attention_layernorm, eps)?;
        let [gate, up]: [Tensor; 2] = linear_group(model, &h, i, &[Proj::Gate, Proj::Up], lora)?
            .try_into()
            .map_err(|_| ModelError::Input("gate and up projections".into()))?;
        let gu = match crate::rowops::silu_mul(&gate, &up) {
            Some(gu) => gu,
            None => (gate.silu()? * up)?,
        };
        let down = linear(model, &gu, i, Proj::Down, lora)?;
        x = residual(&x, &down)?;
    }
    for (s, &(_, t)) in seqs.iter_mut().zip(&ranges) {
        s.cache.own_len += t;
    }
    let last: Vec<u32> = ranges.iter().map(|&(a, t)| (a + t - 1) as u32).collect();
    let last = Tensor::from_vec(last, ranges.len(), dev)?;
    let h = x.squeeze(0)?.index_select(&last, 0)?;
    let h = norm(&h, &model.norm, eps)?;
    model.logits(&h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LoraConfig, ModelConfig};

    fn model(qwen2: bool) -> Model {
        let cfg = if qwen2 {
            ModelConfig::from_json(serde_json::json!({"model_type": "qwen2", "vocab_size": 97,
                "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "eos_token_id": 1,
                "tie_word_embeddings": false}))
            .unwrap()
        } else {
            ModelConfig::qwen3(97, 64, 96, 2, 4, 2, 16, true, 0, 1).unwrap()
        };
        Model::random(cfg, 7, &Device::Cpu, DType::F32).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    fn reference(m: &Model, lora: Option<&LoraAdapter>, ids: &[u32]) -> Tensor {
        let mut c = m.new_cache();
        let t = Tensor::from_slice(ids, (1, ids.len()), m.device()).unwrap();
        m.forward_last(&t, &mut c, lora)
            .unwrap()
            .squeeze(0)
            .unwrap()
    }

    /// Ragged decode over sequences of different lengths (some with a shared frozen
    /// prefix, some forked) equals per-sequence cached forwards.
    fn check(qwen2: bool, with_lora: bool) {
        check_in(qwen2, with_lora, KvMemory::new(), 1e-4);
    }

    /// [`check`] with buffers from `mem`, logits within `tol` of the f32 forwards.
    fn check_in(qwen2: bool, with_lora: bool, mem: KvMemory, tol: f32) {
        let m = model(qwen2);
        let lora = with_lora.then(|| {
            let ad = LoraAdapter::new(&m, LoraConfig::default(), 3).unwrap();
            for p in ad.layers.iter().flatten().flatten() {
                let (o, r) = p.b.as_tensor().dims2().unwrap();
                let b = Tensor::randn(0f32, 0.05, (o, r), m.device()).unwrap();
                p.b.set(&b).unwrap();
            }
            ad
        });
        let lora = lora.as_ref();
        let prompts: Vec<Vec<u32>> = vec![
            (0..9).map(|i| (i * 7 + 3) % 97).collect(),
            (0..3).map(|i| (i * 5 + 11) % 97).collect(),
            (0..17).map(|i| (i * 13 + 2) % 97).collect(),
        ];
        let mut hist = prompts.clone();
        let mut caches: Vec<SeqKv> = Vec::new();
        for (j, p) in prompts.iter().enumerate() {
            let mut c = SeqKv::new(&m, &mem);
            if j == 2 {
                // Prefill in two chunks with the first frozen in between.
                forward_ragged(
                    &m,
                    lora,
                    &mut [RaggedInput {
                        tokens: &p[..10],
                        cache: &mut c,
                    }],
                )
                .unwrap();
                c.freeze();
                let lg = forward_ragged(
                    &m,
                    lora,
                    &mut [RaggedInput {
                        tokens: &p[10..],
                        cache: &mut c,
                    }],
                )
                .unwrap();
                assert!(max_diff(&lg.squeeze(0).unwrap(), &reference(&m, lora, p)) < tol);
            } else {
                let lg = forward_ragged(
                    &m,
                    lora,
                    &mut [RaggedInput {
                        tokens: p,
                        cache: &mut c,
                    }],
                )
                .unwrap();
                assert!(max_diff(&lg.squeeze(0).unwrap(), &reference(&m, lora, p)) < tol);
            }
            caches.push(c);
        }
        // A fork of sequence 0 (shares nothing mutable) continues differently.
        caches.push(caches[0].fork().unwrap());
        hist.push(hist[0].clone());
        // A sequence sharing sequence 2's frozen 10-token prefix, then its own suffix.
        let pre = caches[2].prefix.truncated(6);
        let mut c = SeqKv::with_prefix(&m, &mem, pre);
        let mut p4: Vec<u32> = prompts[2][..6].to_vec();
        p4.extend([5, 6, 7]);
        forward_ragged(
            &m,
            lora,
            &mut [RaggedInput {
                tokens: &p4[6..],
                cache: &mut c,
            }],
        )
        .unwrap();
        caches.push(c);
        hist.push(p4);
        for step in 0..6u32 {
            let next: Vec<u32> = (0..caches.len() as u32)
                .map(|j| (step * 31 + j * 17 + 1) % 97)
                .collect();
            let toks: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
            let mut inputs: Vec<RaggedInput> = caches
                .iter_mut()
                .zip(&toks)
                .map(|(c, t)| RaggedInput {
                    tokens: t,
                    cache: c,
                })
                .collect();
            let lg = forward_ragged(&m, lora, &mut inputs).unwrap();
            for (j, &t) in next.iter().enumerate() {
                hist[j].push(t);
                let d = max_diff(&lg.get(j).unwrap(), &reference(&m, lora, &hist[j]));
                assert!(d < tol, "seq {j} step {step}: {d}");
                assert_eq!(caches[j].len(), hist[j].len());
            }
        }
        assert!(mem.bytes() > 0);
        drop(caches);
        assert_eq!(mem.bytes(), 0);
    }

    #[test]
    fn ragged_matches_per_sequence_forward() {
        check(false, false);
        check(false, true);
        check(true, false);
    }

    /// An f16 cache: every path (prefill chunks over a frozen prefix, forks, shared
    /// prefixes, batched decode) runs on it and stays near the f32 forwards (the keys and
    /// values carry f16 rounding), and it holds half the bytes.
    #[test]
    fn f16_cache_tracks_the_f32_forward() {
        check_in(false, false, KvMemory::storing(DType::F16), 1e-3);
        let m = model(false);
        let mem = KvMemory::storing(DType::F16);
        assert_eq!(2 * mem.bytes_per_position(&m), kv_bytes_per_position(&m));
        let mut c = SeqKv::new(&m, &mem);
        c.set_own_limit(5);
        forward_ragged(&m, None, &mut [RaggedInput { tokens: &[1, 2, 3], cache: &mut c }]).unwrap();
        assert_eq!(mem.bytes(), 5 * mem.bytes_per_position(&m));
    }

    /// A bf16 cache has no decode kernel: every read widens it to f32 (the general path).
    #[test]
    fn bf16_cache_runs_the_general_path() {
        check_in(false, false, KvMemory::storing(DType::BF16), 5e-2);
    }

    #[test]
    fn own_limit_bounds_allocation() {
        let m = model(false);
        let mem = KvMemory::new();
        let mut c = SeqKv::new(&m, &mem);
        c.set_own_limit(5);
        forward_ragged(
            &m,
            None,
            &mut [RaggedInput {
                tokens: &[1, 2, 3],
                cache: &mut c,
            }],
        )
        .unwrap();
        assert_eq!(c.own.capacity(), 5);
        assert_eq!(mem.bytes(), 5 * kv_bytes_per_position(&m));
        forward_ragged(
            &m,
            None,
            &mut [RaggedInput {
                tokens: &[1, 2, 3],
                cache: &mut c,
            }],
        )
        .unwrap();
        assert_eq!(c.own.capacity(), 6);
    }
}
