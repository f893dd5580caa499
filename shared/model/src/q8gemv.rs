//! Q8_0 matmul on x86 CPUs: `y = x W^T` with `W` in GGUF Q8_0 blocks (32 int8 values and
//! an f16 scale per block), for decode batches and prompt chunks alike. Two kernels: one
//! for AVX-512 VNNI (described here), one for AVX2 CPUs without it ([`avx2`]: Zen 2/3,
//! Intel client cores, many cloud VMs); [`Kernel`] says which this CPU runs.
//!
//! Why our own kernel rather than candle's quantized matmul: candle's x86 path runs on
//! its own spinning thread pool beside the rayon pool the rest of the forward uses (on two
//! cores one pool spins while the other works), takes at most 4 activation rows per pass
//! over a weight tile, and quantizes activations with a scalar loop. Here:
//! * the weights are repacked once at load into tiles of 16 rows. Within a tile and block,
//!   the int8 values sit as `[4-value group][row][4]` bytes, offset by +128 to u8, so one
//!   64-byte load and one `vpdpbusd` against 4 broadcast activation bytes give 16 output
//!   rows' partial sums in the 16 lanes (no horizontal sums);
//! * up to 8 activation rows share each weight load (a whole decode batch of 8 in one
//!   pass, so the weights stream from memory once), and the stream is prefetched ahead;
//!   the full 8-row pass is hand-scheduled assembly ([`avx512::tile8`]), which on Intel
//!   cores prefetches the stream a second time, into L2; every pass writes its sums
//!   straight into the output;
//! * activations are quantized per 32-value block exactly as llama.cpp quantizes them for
//!   Q8_0 weights (scale = max |x| / 127, round to nearest), with vector code;
//! * tiles are split over the rayon pool.
//!
//! The +128 offset makes every weight byte unsigned, which `vpdpbusd` needs; the extra
//! `128 * sum(x)` per block is cancelled by starting the block's integer sum at
//! `-128 * sum(x)`. Integer sums are exact, so a row's result does not depend on the other
//! rows in the batch.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use half::f16;
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
mod avx2;

/// Values per Q8_0 block.
const QK: usize = 32;
/// Weight rows per tile of the VNNI kernel (the 16 lanes of a 512-bit register).
const TILE: usize = 16;
/// Bytes of one VNNI tile block: 16 f16 scales, then 16 x 32 quants.
const TILE_BLOCK_BYTES: usize = TILE * 2 + TILE * QK;
/// Weight rows per rayon task (4 VNNI tiles, 8 AVX2 ones).
const ROWS_PER_TASK: usize = 64;
/// Bytes of Q8_0 GGUF storage per block (f16 scale + 32 quants).
const GGUF_BLOCK_BYTES: usize = 2 + QK;

/// The two kernels, each with its own tile layout (chosen when a weight is packed).
///
/// Both compute each block's integer dot product exactly, then add `sum * (d_w * d_x)`
/// into an f32 accumulator block by block, in the same order: so they give the same bits,
/// and a row's result never depends on the other rows of the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// AVX-512 F/BW, VNNI and F16C: tiles of 16 rows, each 4-value group's 64 bytes one
    /// `vpdpbusd` operand (weights offset by +128 to u8).
    Vnni,
    /// AVX2, FMA and F16C: tiles of 8 rows, each 4-value group's 32 bytes one
    /// `vpmaddubsw` operand after the sign trick (weights as stored, signed).
    Avx2,
}

impl Kernel {
    /// The kernel this CPU runs, checked once: VNNI where present, else AVX2.
    /// `FC_Q8_KERNEL=avx2` takes the AVX2 kernel on a VNNI CPU too (for comparisons).
    pub fn detect() -> Option<Kernel> {
        use std::sync::OnceLock;
        static KERNEL: OnceLock<Option<Kernel>> = OnceLock::new();
        *KERNEL.get_or_init(|| {
            let forced_avx2 = std::env::var("FC_Q8_KERNEL").is_ok_and(|v| v == "avx2");
            Kernel::supported().iter().copied().find(|&k| !(forced_avx2 && k == Kernel::Vnni))
        })
    }

    /// Every kernel this CPU can run, fastest first (checked once).
    pub fn supported() -> &'static [Kernel] {
        use std::sync::OnceLock;
        static ALL: OnceLock<Vec<Kernel>> = OnceLock::new();
        ALL.get_or_init(|| {
            let mut all = Vec::new();
            #[cfg(target_arch = "x86_64")]
            {
                let has = |f: bool| f && is_x86_feature_detected!("f16c");
                if has(is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni"))
                {
                    all.push(Kernel::Vnni);
                }
                if has(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
                    all.push(Kernel::Avx2);
                }
            }
            all
        })
    }

    /// Weight rows per tile.
    fn tile(self) -> usize {
        match self {
            Kernel::Vnni => TILE,
            Kernel::Avx2 => 8,
        }
    }

    /// What is added to each stored weight (`vpdpbusd` takes its weights unsigned).
    fn offset(self) -> i16 {
        match self {
            Kernel::Vnni => 128,
            Kernel::Avx2 => 0,
        }
    }

    /// Bytes of one tile block: the tile's f16 scales, then its quants.
    fn block_bytes(self) -> usize {
        self.tile() * (2 + QK)
    }

    /// Where value `v` of row `row` sits among a tile block's quants: groups of 4 values,
    /// all the tile's rows side by side within each group.
    fn quant_index(self, row: usize, v: usize) -> usize {
        ((v / 4) * self.tile() + row) * 4 + v % 4
    }
}

/// Whether this CPU runs one of the kernels (checked once).
pub fn available() -> bool {
    Kernel::detect().is_some()
}

/// A `[n, k]` Q8_0 matrix in a kernel's tile layout.
pub struct PackedQ8 {
    n: usize,
    k: usize,
    kernel: Kernel,
    /// `n / tile` tiles, each `k / 32` blocks of `kernel.block_bytes()`.
    data: Vec<u8>,
}

impl std::fmt::Debug for PackedQ8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedQ8 {{ n: {}, k: {}, kernel: {:?} }}", self.n, self.k, self.kernel)
    }
}

impl PackedQ8 {
    /// Repacks a CPU Q8_0 tensor `[n, k]` for this CPU's kernel; `None` when it cannot
    /// take it (another type, another device, `n` not a multiple of 16 or `k` of 32, or a
    /// CPU with neither kernel).
    pub fn from_qtensor(q: &QTensor) -> Option<PackedQ8> {
        let kernel = Kernel::detect()?;
        if q.dtype() != GgmlDType::Q8_0 || !matches!(q.device(), Device::Cpu) {
            return None;
        }
        let (n, k) = q.shape().dims2().ok()?;
        // 16 rows for either kernel, so a model packs the same way on both.
        if n == 0 || k == 0 || n % TILE != 0 || k % QK != 0 {
            return None;
        }
        let raw = q.data().ok()?;
        Self::from_gguf_bytes(&raw, n, k, kernel)
    }

    /// Repacks row-major GGUF Q8_0 blocks of an `[n, k]` matrix for `kernel`.
    fn from_gguf_bytes(raw: &[u8], n: usize, k: usize, kernel: Kernel) -> Option<PackedQ8> {
        let (kb, tile, block) = (k / QK, kernel.tile(), kernel.block_bytes());
        if raw.len() != n * kb * GGUF_BLOCK_BYTES || !n.is_multiple_of(tile) || !k.is_multiple_of(QK) {
            return None;
        }
        let mut data = vec![0u8; n / tile * kb * block];
        data.par_chunks_mut(kb * block).enumerate().for_each(|(t, dst_tile)| {
            for (b, dst) in dst_tile.chunks_exact_mut(block).enumerate() {
                let (scales, quants) = dst.split_at_mut(tile * 2);
                for row in 0..tile {
                    let src = &raw[((t * tile + row) * kb + b) * GGUF_BLOCK_BYTES..][..GGUF_BLOCK_BYTES];
                    scales[row * 2..row * 2 + 2].copy_from_slice(&src[..2]);
                    for (v, &q) in src[2..].iter().enumerate() {
                        quants[kernel.quant_index(row, v)] = (q as i8 as i16 + kernel.offset()) as u8;
                    }
                }
            }
        });
        Some(PackedQ8 { n, k, kernel, data })
    }

    /// The kernel this weight was packed for.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Output features (rows of `W`).
    pub fn rows(&self) -> usize {
        self.n
    }

    /// Input features (columns of `W`).
    pub fn cols(&self) -> usize {
        self.k
    }

    /// Bytes a matmul streams: the same as the GGUF Q8_0 storage.
    pub fn storage_bytes(&self) -> usize {
        self.data.len()
    }

    /// The weight as a dense f32 `[n, k]` tensor.
    pub fn dequantize(&self, device: &Device) -> candle_core::Result<Tensor> {
        let (n, k) = (self.n, self.k);
        let mut out = vec![0f32; n * k];
        for (r, row) in out.chunks_exact_mut(k).enumerate() {
            self.dequantize_row(r, row);
        }
        Tensor::from_vec(out, (n, k), device)
    }

    /// Rows `ids` dequantized, row-major `[ids.len(), k]` (each value `d * q` as GGUF
    /// defines it): the embedding lookup of a tied Q8_0 table kept only in this form.
    /// `None` when an id is `>= n`.
    pub fn gather_rows(&self, ids: &[u32]) -> Option<Vec<f32>> {
        let mut out = vec![0f32; ids.len() * self.k];
        for (&id, row) in ids.iter().zip(out.chunks_exact_mut(self.k)) {
            if id as usize >= self.n {
                return None;
            }
            self.dequantize_row(id as usize, row);
        }
        Some(out)
    }

    /// Row `r` (`< n`) into `out` (`k` values).
    fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let (kb, kernel) = (self.k / QK, self.kernel);
        let (tile, block) = (kernel.tile(), kernel.block_bytes());
        let (t, lane) = (r / tile, r % tile);
        let tile_bytes = &self.data[t * kb * block..(t + 1) * kb * block];
        for (blk, dst) in tile_bytes.chunks_exact(block).zip(out.chunks_exact_mut(QK)) {
            let d = f16::from_le_bytes([blk[lane * 2], blk[lane * 2 + 1]]).to_f32();
            for (v, o) in dst.iter_mut().enumerate() {
                // Modulo 256, the offset comes off and the byte is the stored int8 again.
                let q = blk[tile * 2 + kernel.quant_index(lane, v)].wrapping_sub(kernel.offset() as u8) as i8;
                *o = d * q as f32;
            }
        }
    }

    /// `x [.., k] W^T` for a CPU f32 `x`; `None` when `x` is not that.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Option<Tensor>> {
        crate::gemv::map_cpu_rows(x, self.k, self.n, |xv, m| self.matmul(xv, m))
    }

    /// `y[m, n] = x[m, k] W^T` (`x` holds `m * k` values).
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        matmul_group(&[self], x, m).into_iter().next().unwrap_or_default()
    }
}

/// `x W_i^T` for several weights that read the same input `x [m, k]` (a layer's q, k and
/// v; its gate and up): the activations are quantized once, and the tiles of all the
/// weights are one parallel loop, so the group costs one fork and join rather than one
/// per weight (at 8 decode rows the quantizing alone was ~1.7% of a step, three of every
/// seven times for an input already quantized). Every weight must take `k` inputs and `x`
/// hold `m * k` values; the result is empty for a weight that does not.
pub fn matmul_group(ws: &[&PackedQ8], x: &[f32], m: usize) -> Vec<Vec<f32>> {
    let Some((k, kernel)) = ws.first().map(|w| (w.k, w.kernel)) else {
        return Vec::new();
    };
    if m == 0 || x.len() != m * k || ws.iter().any(|w| w.k != k || w.kernel != kernel) {
        return ws.iter().map(|_| Vec::new()).collect();
    }
    let acts = quantize_rows(x, m, k);
    let task_bytes = ROWS_PER_TASK / kernel.tile() * (k / QK * kernel.block_bytes());
    // Not zeroed first: the tasks write every value. At an 8-row decode batch the zeroing
    // was ~2% of the step (the head's output alone is 4.9 MB).
    let mut ys: Vec<Vec<f32>> = ws.iter().map(|w| Vec::with_capacity(m * w.n)).collect();
    let outs: Vec<OutPtr> = ys.iter_mut().map(|y| OutPtr(y.as_mut_ptr())).collect();
    // (weight, task): 64 weight rows each, weight by weight.
    let tasks: Vec<(usize, usize)> = ws
        .iter()
        .enumerate()
        .flat_map(|(i, w)| (0..w.data.len().div_ceil(task_bytes)).map(move |t| (i, t)))
        .collect();
    tasks.par_iter().for_each(|&(i, t)| {
        let w = ws[i];
        let tiles = &w.data[t * task_bytes..((t + 1) * task_bytes).min(w.data.len())];
        // SAFETY: task `t` of weight `i` writes only columns `t * 64..` (its own tiles) of
        // each row of `ys[i]`, whose buffer outlives the loop; no two tasks share a column
        // of one output. The weight was packed for `kernel`, which this CPU runs.
        unsafe { task(kernel, tiles, &acts, k, m, w.n, t * ROWS_PER_TASK, outs[i]) }
    });
    for (y, w) in ys.iter_mut().zip(ws) {
        // SAFETY: the tasks cover all tiles of each weight, and each wrote rows `0..m` of
        // its tiles' columns (`task`), so all `m * n` values are initialized.
        unsafe { y.set_len(m * w.n) };
    }
    ys
}

/// The output `[m, n]` shared by the tasks, each writing its own columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint columns (see `task`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Activations quantized per 32-value block: the int8 values, each block's scale and its
/// `-128 * sum(q)` (the start of its integer sum, cancelling the VNNI weights' +128
/// offset).
struct Acts {
    q: Vec<i8>,
    d: Vec<f32>,
    start: Vec<i32>,
    /// Each whole group of 8 rows again, block-major for the 8-row passes
    /// ([`interleave_octets`]); empty where they do not run.
    oct: Vec<u8>,
}

/// Bytes of one block of an 8-row group in [`Acts::oct`]: the quants as
/// `[4-value group][row][4]` (256), then the 8 rows' scales (32) and sums' starts (32).
const OCT_BLOCK_BYTES: usize = 8 * QK + 8 * 4 + 8 * 4;

fn quantize_rows(x: &[f32], m: usize, k: usize) -> Acts {
    let blocks = m * k / QK;
    let mut a = Acts { q: vec![0i8; m * k], d: vec![0f32; blocks], start: vec![0i32; blocks], oct: Vec::new() };
    // A decode batch is a few thousand values: quicker on this thread than split.
    let per_task = 256;
    if blocks <= per_task {
        quantize_span(&mut a.q, &mut a.d, &mut a.start, x);
    } else {
        a.q.par_chunks_mut(per_task * QK)
            .zip(a.d.par_chunks_mut(per_task))
            .zip(a.start.par_chunks_mut(per_task))
            .zip(x.par_chunks(per_task * QK))
            .for_each(|(((q, d), s), x)| quantize_span(q, d, s, x));
    }
    // Both kernels' 8-row passes read the same interleaved copy.
    if m >= 8 {
        a.oct = interleave_octets(&a, m, k);
    }
    a
}

/// The whole 8-row groups of `a` laid out for the 8-row pass: group by group, block by
/// block, [`OCT_BLOCK_BYTES`] each. With every row's 4-value group `g` side by side, one
/// address register walks all 8 rows (each broadcast is an offset from it), and a block's
/// scales and starts sit next to its quants. A copy of `m * k` bytes, against the
/// `m * k * n` multiply-adds it serves.
fn interleave_octets(a: &Acts, m: usize, k: usize) -> Vec<u8> {
    let kb = k / QK;
    let mut oct = vec![0u8; m / 8 * kb * OCT_BLOCK_BYTES];
    // A prompt chunk's groups split over the pool; a decode batch is one group.
    oct.par_chunks_mut(kb * OCT_BLOCK_BYTES).enumerate().for_each(|(grp, group)| {
        for (b, dst) in group.chunks_exact_mut(OCT_BLOCK_BYTES).enumerate() {
            for r in 0..8 {
                let row = grp * 8 + r;
                let src = &a.q[row * k + b * QK..][..QK];
                for g in 0..QK / 4 {
                    let v = [src[g * 4], src[g * 4 + 1], src[g * 4 + 2], src[g * 4 + 3]];
                    dst[g * 32 + r * 4..][..4].copy_from_slice(&v.map(|q| q as u8));
                }
                dst[8 * QK + r * 4..][..4].copy_from_slice(&a.d[row * kb + b].to_le_bytes());
                dst[8 * QK + 32 + r * 4..][..4].copy_from_slice(&a.start[row * kb + b].to_le_bytes());
            }
        }
    });
    oct
}

/// Quantizes consecutive blocks of `x` into `q`, their scales `d` and sums' starts `s`.
fn quantize_span(q: &mut [i8], d: &mut [f32], s: &mut [i32], x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        let all = Kernel::supported();
        if all.contains(&Kernel::Vnni) {
            // SAFETY: the VNNI kernel's features include AVX-512 F/BW.
            unsafe { avx512::quantize_span(q, d, s, x) };
            return;
        }
        if all.contains(&Kernel::Avx2) {
            // SAFETY: the AVX2 kernel's features include AVX2.
            unsafe { avx2::quantize_span(q, d, s, x) };
            return;
        }
    }
    quantize_span_scalar(q, d, s, x)
}

/// [`quantize_span`] one block at a time with [`quantize_block`]. The vector versions give
/// the same bits (a test holds them together); at 8 activation rows it took a quarter of a
/// small projection's time here, since without target features this loop compiles to SSE2.
#[inline(always)]
fn quantize_span_scalar(q: &mut [i8], d: &mut [f32], s: &mut [i32], x: &[f32]) {
    for (((q, d), s), x) in q.chunks_exact_mut(QK).zip(d).zip(s).zip(x.chunks_exact(QK)) {
        if let (Ok(x), Ok(q)) = (x.try_into(), q.try_into()) {
            (*d, *s) = quantize_block(x, q);
        }
    }
}

/// One block: its int8 values (`q = round(x / d)`, ties to even as llama.cpp's x86
/// quantizer rounds), scale `d = max |x| / 127`, and `-128 * sum(q)`. Written so the
/// compiler vectorizes it: the rounding adds and subtracts 1.5 * 2^23, which leaves the
/// nearest integer (ties to even) of any |v| <= 127.
// Not `clamp`: it keeps a NaN, and the unchecked cast needs every value finite.
#[allow(clippy::manual_clamp)]
#[inline(always)]
fn quantize_block(x: &[f32; QK], q: &mut [i8; QK]) -> (f32, i32) {
    const MAGIC: f32 = 12_582_912.0;
    let mut amax = 0f32;
    for &v in x {
        amax = amax.max(v.abs());
    }
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut r = [0f32; QK];
    for (r, &v) in r.iter_mut().zip(x) {
        // `max` first: it turns a NaN into -127, so `r` is always a whole number in
        // -127..=127 (what makes the unchecked cast below sound).
        *r = (((v * inv).max(-127.0)).min(127.0) + MAGIC) - MAGIC;
    }
    let mut sum = 0i32;
    for (q, &r) in q.iter_mut().zip(&r) {
        // SAFETY: `r` is finite and within i32 (see above). The checked `as` cast would
        // add saturation code that keeps this loop from vectorizing.
        let i: i32 = unsafe { r.to_int_unchecked() };
        *q = i as i8;
        sum += i;
    }
    (d, -128 * sum)
}

/// One task: its tiles (`w`, packed for `kernel`) against every activation row, in
/// passes of up to 8 rows, into columns `col0..` of the `[m, n]` output.
///
/// # Safety
/// This CPU runs `kernel` ([`Kernel::supported`]); `acts` was quantized for it with `m`
/// rows of `k` values; `out` points at `m * n` floats; the task's tiles cover columns
/// `col0..col0 + tile * tiles` (within `n`), which no other task writes.
#[allow(clippy::too_many_arguments)]
unsafe fn task(kernel: Kernel, w: &[u8], acts: &Acts, k: usize, m: usize, n: usize, col0: usize, out: OutPtr) {
    let kb = k / QK;
    let tile_bytes = kb * kernel.block_bytes();
    let tiles = w.len() / tile_bytes;
    // Intel cores take the VNNI 8-row pass with the second prefetch ([`avx512::tile8_l2`]).
    let l2 = crate::cpu::is_intel();
    for t in 0..tiles {
        let tw = &w[t * tile_bytes..(t + 1) * tile_bytes];
        let mut r0 = 0;
        while r0 < m {
            let rows = (m - r0).min(8);
            let dst = out.0.add(r0 * n + col0 + t * kernel.tile());
            // The 8-row passes read group `r0 / 8` of `oct`: whole, since `r0` is a
            // multiple of 8 (every earlier pass took 8 rows).
            let oct = (rows == 8 && !acts.oct.is_empty()).then(|| &acts.oct[r0 / 8 * kb * OCT_BLOCK_BYTES..][..kb * OCT_BLOCK_BYTES]);
            // SAFETY (all): the CPU has the kernel's features (AVX-512 F/BW, VNNI and F16C;
            // or AVX2, FMA and F16C); `tw` is one whole tile of `k / 32` blocks, the
            // activations hold rows `r0..r0 + rows` of `k` values and `k / 32` blocks,
            // and `dst` starts this tile's columns of row `r0` in the `[m, n]` output.
            #[cfg(target_arch = "x86_64")]
            match (kernel, oct) {
                (Kernel::Vnni, Some(oct)) if l2 => avx512::tile8_l2(tw, oct, kb, dst, n),
                (Kernel::Vnni, Some(oct)) => avx512::tile8(tw, oct, kb, dst, n),
                (Kernel::Vnni, None) => avx512::tile(tw, acts, k, r0, rows, dst, n),
                (Kernel::Avx2, Some(oct)) => avx2::tile8(tw, oct, kb, dst, n),
                (Kernel::Avx2, None) => avx2::tile(tw, acts, k, r0, rows, dst, n),
            }
            r0 += rows;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    // The register arrays are indexed by (block, row) on purpose.
    #![allow(clippy::needless_range_loop)]
    use super::{Acts, OCT_BLOCK_BYTES, QK, TILE, TILE_BLOCK_BYTES};
    use std::arch::asm;
    use std::arch::x86_64::*;

    /// [`super::quantize_span`] with 512-bit registers: a block is two registers. Same
    /// bits as [`super::quantize_block`]: `max` takes its second operand where the first
    /// is NaN (so NaNs drop out of the block's max and quantize to -127, as `f32::max`
    /// does there), and the conversion rounds to nearest even like the scalar trick.
    ///
    /// # Safety
    /// AVX-512 F/BW present.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantize_span(q: &mut [i8], d: &mut [f32], s: &mut [i32], x: &[f32]) {
        let blocks = d.len().min(s.len()).min(x.len() / QK).min(q.len() / QK);
        let abs = _mm512_set1_epi32(0x7fff_ffff);
        let (lo, hi) = (_mm512_set1_ps(-127.0), _mm512_set1_ps(127.0));
        for b in 0..blocks {
            let p = x.as_ptr().add(b * QK);
            let (x0, x1) = (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)));
            let a0 = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x0), abs));
            let a1 = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x1), abs));
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(a0, _mm512_max_ps(a1, _mm512_setzero_ps())));
            let scale = amax / 127.0;
            let inv = _mm512_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
            let r0 = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(x0, inv), lo), hi);
            let r1 = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(x1, inv), lo), hi);
            let i0 = _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(r0);
            let i1 = _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(r1);
            let out = q.as_mut_ptr().add(b * QK);
            _mm_storeu_si128(out as *mut __m128i, _mm512_cvtepi32_epi8(i0));
            _mm_storeu_si128(out.add(16) as *mut __m128i, _mm512_cvtepi32_epi8(i1));
            *d.get_unchecked_mut(b) = scale;
            *s.get_unchecked_mut(b) = -128 * _mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1));
        }
    }

    /// Bytes ahead of the read position that the weight stream is prefetched (past the
    /// tile's end too: tiles of a task are contiguous). With one or two activation rows
    /// the prefetch goes to L2, with more to L1. On a Zen 4 with a 32 KiB L1, the L2 hint
    /// took the 0.6B model's batch-1 step from 30-35 to 25.5-27 ms (five runs each,
    /// alternating binaries), while the 8-row step was 37-42 ms with the L1 hint, 42-47
    /// with the L2 one. The L2 hint is `T2`: Intel cores treat `T1` and `T2` alike, and on
    /// a Zen 4 VM `T2` gave batch-1 steps of 17.3 / 18.0 / 22.9 ms against 18.9 / 18.4 /
    /// 25.6 with `T1` (alternating binaries, medians of 48 steps; no prefetch at all: 26 ms
    /// whatever the bandwidth).
    const PF_BYTES: usize = 8 * TILE_BLOCK_BYTES;

    /// One 4-value group `g` of a block against the 8 rows: the group's 64 weight bytes
    /// into `zmm$v`, a prefetch of the stream ahead, and one `vpdpbusd` per row into that
    /// row's integer sum (`zmm8`..`zmm15`), each row's 4 bytes broadcast from the
    /// interleaved activations.
    macro_rules! group8 {
        ($g:literal, $v:literal) => {
            concat!(
                "vmovdqu64 zmm", $v, ", zmmword ptr [{w} + 32 + 64*", $g, "]\n",
                "prefetcht0 byte ptr [{w} + {pf} + 64*", $g, "]\n",
                "vpdpbusd zmm8, zmm", $v, ", dword ptr [{x} + 32*", $g, "]{{1to16}}\n",
                "vpdpbusd zmm9, zmm", $v, ", dword ptr [{x} + 32*", $g, " + 4]{{1to16}}\n",
                "vpdpbusd zmm10, zmm", $v, ", dword ptr [{x} + 32*", $g, " + 8]{{1to16}}\n",
                "vpdpbusd zmm11, zmm", $v, ", dword ptr [{x} + 32*", $g, " + 12]{{1to16}}\n",
                "vpdpbusd zmm12, zmm", $v, ", dword ptr [{x} + 32*", $g, " + 16]{{1to16}}\n",
                "vpdpbusd zmm13, zmm", $v, ", dword ptr [{x} + 32*", $g, " + 20]{{1to16}}\n",
                "vpdpbusd zmm14, zmm", $v, ", dword ptr [{x} + 32*", $g, " + 24]{{1to16}}\n",
                "vpdpbusd zmm15, zmm", $v, ", dword ptr [{x} + 32*", $g, " + 28]{{1to16}}\n",
            )
        };
    }

    /// [`group8`] with a second prefetch of the stream, [`L2_PF_BYTES`] ahead into L2.
    macro_rules! group8_l2 {
        ($g:literal, $v:literal) => {
            concat!("prefetcht2 byte ptr [{w} + {pf2} + 64*", $g, "]\n", group8!($g, $v))
        };
    }

    /// How far ahead [`tile8_l2`] prefetches into L2 as well: 16 to 64 blocks measured
    /// the same in a standalone loop on an Emerald Rapids VM (115-119 cycles a block).
    const L2_PF_BYTES: usize = 24 * TILE_BLOCK_BYTES;

    /// Row `$r`'s end of a block: its integer sum (`zmm$s`) to floats, times the weight
    /// scales (`zmm24`) times the row's scale, added into its accumulator (`zmm$r`).
    macro_rules! finish8 {
        ($r:literal, $s:literal) => {
            concat!(
                "vmulps zmm25, zmm24, dword ptr [{x} + 256 + 4*", $r, "]{{1to16}}\n",
                "vcvtdq2ps zmm", $s, ", zmm", $s, "\n",
                "vfmadd231ps zmm", $r, ", zmm", $s, ", zmm25\n",
            )
        };
    }

    /// The 8-row pass, with one prefetch of the weight stream per 64 bytes (`$group` is
    /// [`group8`]) or two ([`group8_l2`]); `$tail` is the ninth line's second prefetch
    /// (or a comment that names `{pf2}`, which `asm!` requires every operand to be).
    macro_rules! tile8_fn {
        ($(#[$doc:meta])* $name:ident, $group:ident, $tail:expr) => {
            $(#[$doc])*
            #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
            pub(super) unsafe fn $name(w: &[u8], oct: &[u8], kb: usize, out: *mut f32, stride: usize) {
                assert!(kb >= 1 && w.len() >= kb * TILE_BLOCK_BYTES && oct.len() >= kb * OCT_BLOCK_BYTES);
                asm!(
                    "vpxord zmm0, zmm0, zmm0",
                    "vpxord zmm1, zmm1, zmm1",
                    "vpxord zmm2, zmm2, zmm2",
                    "vpxord zmm3, zmm3, zmm3",
                    "vpxord zmm4, zmm4, zmm4",
                    "vpxord zmm5, zmm5, zmm5",
                    "vpxord zmm6, zmm6, zmm6",
                    "vpxord zmm7, zmm7, zmm7",
                    "2:",
                    // Each row's integer sum starts at its `-128 * sum(x)` for the block.
                    "vpbroadcastd zmm8, dword ptr [{x} + 288]",
                    "vpbroadcastd zmm9, dword ptr [{x} + 292]",
                    "vpbroadcastd zmm10, dword ptr [{x} + 296]",
                    "vpbroadcastd zmm11, dword ptr [{x} + 300]",
                    "vpbroadcastd zmm12, dword ptr [{x} + 304]",
                    "vpbroadcastd zmm13, dword ptr [{x} + 308]",
                    "vpbroadcastd zmm14, dword ptr [{x} + 312]",
                    "vpbroadcastd zmm15, dword ptr [{x} + 316]",
                    $group!(0, 16),
                    $group!(1, 17),
                    $group!(2, 18),
                    $group!(3, 19),
                    $group!(4, 20),
                    $group!(5, 21),
                    $group!(6, 22),
                    $group!(7, 23),
                    $tail,
                    "vcvtph2ps zmm24, ymmword ptr [{w}]",
                    finish8!(0, 8),
                    finish8!(1, 9),
                    finish8!(2, 10),
                    finish8!(3, 11),
                    finish8!(4, 12),
                    finish8!(5, 13),
                    finish8!(6, 14),
                    finish8!(7, 15),
                    "add {w}, {wstep}",
                    "add {x}, {oct}",
                    "dec {n}",
                    "jnz 2b",
                    "vmovups zmmword ptr [{out}], zmm0",
                    "add {out}, {stride}",
                    "vmovups zmmword ptr [{out}], zmm1",
                    "add {out}, {stride}",
                    "vmovups zmmword ptr [{out}], zmm2",
                    "add {out}, {stride}",
                    "vmovups zmmword ptr [{out}], zmm3",
                    "add {out}, {stride}",
                    "vmovups zmmword ptr [{out}], zmm4",
                    "add {out}, {stride}",
                    "vmovups zmmword ptr [{out}], zmm5",
                    "add {out}, {stride}",
                    "vmovups zmmword ptr [{out}], zmm6",
                    "add {out}, {stride}",
                    "vmovups zmmword ptr [{out}], zmm7",
                    w = inout(reg) w.as_ptr() => _,
                    x = inout(reg) oct.as_ptr() => _,
                    n = inout(reg) kb => _,
                    out = inout(reg) out => _,
                    stride = in(reg) stride * 4,
                    pf = const PF_BYTES,
                    pf2 = const L2_PF_BYTES,
                    wstep = const TILE_BLOCK_BYTES,
                    oct = const OCT_BLOCK_BYTES,
                    out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _,
                    out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
                    out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _,
                    out("zmm12") _, out("zmm13") _, out("zmm14") _, out("zmm15") _,
                    out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _,
                    out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _,
                    out("zmm24") _, out("zmm25") _,
                    options(nostack),
                );
            }
        };
    }

    tile8_fn!(
        /// [`tile`] for exactly 8 rows, from their interleaved copy `oct` (`kb` blocks of
        /// [`OCT_BLOCK_BYTES`]): the same operations in the same order per row, so the same
        /// bits, but scheduled by hand, each group's 8 `vpdpbusd` going to 8 different rows.
        /// On Zen 4, `vpdpbusd`, `vmulps` and `vfmadd` share one 512-bit op a cycle, while
        /// `vcvtdq2ps` and broadcast loads run beside them (measured with loops of the bare
        /// instructions), so a block costs at least 64 + 8 + 8 = 80 cycles. This loop takes
        /// 80-83 cycles a block with its data in cache, and 110-135 when the weights stream
        /// from memory (a 2-core Zen 4 VM). In cache the compiled [`rows_n`] ran the same,
        /// but in the model's 8-way decode step (where the weights stream) this pass raised
        /// Q8_0 throughput from 236-263 to 255-283 tokens/s (alternating binaries).
        ///
        /// Row `r`'s 16 sums go to `out + r * stride`, straight from the registers: through a
        /// 16-value buffer on the stack, the copy's 16-byte reads of each 64-byte store cost
        /// an 8-way step 47.7 / 59.1 / 49.7 ms against 41.8 / 49.3 / 46.3 written in place
        /// (Emerald Rapids VM, alternating step by step in one process).
        ///
        /// # Safety
        /// AVX-512 F/BW, VNNI and F16C present; `kb >= 1`; `w` is a whole tile of `kb` blocks,
        /// `oct` holds `kb` blocks, and `out + r * stride` has 16 writable floats for each
        /// row `r` of the 8.
        tile8,
        group8,
        "/* {pf2} */"
    );

    tile8_fn!(
        /// [`tile8`] with a second prefetch of the weight stream, further ahead and into
        /// L2; the same bits. Taken on Intel cores: on a 2-core Emerald Rapids VM it took
        /// the 8-row loop streaming from memory from 130-138 to 115-119 cycles a block
        /// (one core; a loop that only reads the stream: 107-119), and the 0.6B model's
        /// 8-way Q8_0 step from 50.1 / 52.7 / 46.4 to 46.0 / 48.7 / 44.5 ms (the two
        /// passes alternating step by step in one process, medians of 20). Zen cores,
        /// where it has not been measured, keep [`tile8`], which the pass was tuned as.
        ///
        /// # Safety
        /// As for [`tile8`].
        tile8_l2,
        group8_l2,
        "prefetcht2 byte ptr [{w} + {pf2} + 512]"
    );

    /// One tile against `rows` (1..=8) activation rows from `r0`: `out[r * stride + j]`
    /// becomes `dot(x[r0 + r], w[j])`. Full groups of 8 rows take [`tile8`] when the activations
    /// have their interleaved copy (always, where this kernel runs); the compiled 8-row
    /// arm here is its reference in the tests.
    ///
    /// # Safety
    /// AVX-512 F/BW, VNNI and F16C present; `w` is a whole tile of `k / 32` blocks; `acts`
    /// holds rows `r0..r0 + rows`; `out + r * stride` has 16 writable floats for each of
    /// the rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    pub(super) unsafe fn tile(w: &[u8], acts: &Acts, k: usize, r0: usize, rows: usize, out: *mut f32, stride: usize) {
        match rows {
            1 => rows_n::<1>(w, acts, k, r0, out, stride),
            2 => rows_n::<2>(w, acts, k, r0, out, stride),
            3 => rows_n::<3>(w, acts, k, r0, out, stride),
            4 => rows_n::<4>(w, acts, k, r0, out, stride),
            5 => rows_n::<5>(w, acts, k, r0, out, stride),
            6 => rows_n::<6>(w, acts, k, r0, out, stride),
            7 => rows_n::<7>(w, acts, k, r0, out, stride),
            _ => rows_n::<8>(w, acts, k, r0, out, stride),
        }
    }

    /// Up to 4 rows: pairs of blocks, each block with its own integer sums, and for one
    /// or two rows the even and odd 4-value groups apart too: `vpdpbusd` has a latency of
    /// several cycles, and a single chain of them would leave the load stream waiting.
    /// More rows are chains enough by themselves, and pairs there ran out of registers
    /// (8-way decode step 26.3 -> 24.4 ms with single blocks). On a Zen 5 VM the 8-row
    /// pass is bound by `vpdpbusd` throughput (about one a cycle per core: the 0.6B head at
    /// 8 rows takes 2.9 ms against 2.5 for one row): there even/odd sums for 8 rows
    /// measured the same, pairs of blocks 21.3 -> 23.4 ms a step, and 8 rows as two passes
    /// of 4 -> 24.9 ms.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    unsafe fn rows_n<const R: usize>(w: &[u8], acts: &Acts, k: usize, r0: usize, out: *mut f32, stride: usize) {
        if R <= 2 {
            walk::<R, 2>(w, acts, k, r0, out, stride)
        } else {
            walk::<R, 1>(w, acts, k, r0, out, stride)
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    unsafe fn walk<const R: usize, const S: usize>(w: &[u8], acts: &Acts, k: usize, r0: usize, out: *mut f32, stride: usize) {
        let kb = k / QK;
        let mut acc = [_mm512_setzero_ps(); R];
        let mut b = 0;
        if R <= 4 {
            while b + 2 <= kb {
                blocks::<R, 2, S>(w, acts, k, r0, b, &mut acc);
                b += 2;
            }
        }
        while b < kb {
            blocks::<R, 1, S>(w, acts, k, r0, b, &mut acc);
            b += 1;
        }
        for r in 0..R {
            _mm512_storeu_ps(out.add(r * stride), acc[r]);
        }
    }

    /// Blocks `b..b + H` of the tile against rows `r0..r0 + R`, into `acc`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    unsafe fn blocks<const R: usize, const H: usize, const S: usize>(
        w: &[u8],
        acts: &Acts,
        k: usize,
        r0: usize,
        b: usize,
        acc: &mut [__m512; R],
    ) {
        let kb = k / QK;
        let wp = w.as_ptr();
        let xq = acts.q.as_ptr().add(r0 * k);
        let xd = acts.d.as_ptr().add(r0 * kb);
        let xs = acts.start.as_ptr().add(r0 * kb);
        let mut isum = [[[_mm512_setzero_si512(); R]; S]; H];
        for h in 0..H {
            for r in 0..R {
                isum[h][0][r] = _mm512_set1_epi32(*xs.add(r * kb + b + h));
            }
        }
        for g in 0..QK / 4 {
            for h in 0..H {
                let blk = wp.add((b + h) * TILE_BLOCK_BYTES);
                let wv = _mm512_loadu_si512(blk.add(TILE * 2 + g * TILE * 4) as *const _);
                // A hint never faults, so it may run past the tile (into the next one).
                let pf = blk.wrapping_add(PF_BYTES + g * 64) as *const i8;
                if R <= 2 {
                    _mm_prefetch::<_MM_HINT_T2>(pf);
                } else {
                    _mm_prefetch::<_MM_HINT_T0>(pf);
                }
                for r in 0..R {
                    let xv = _mm512_set1_epi32((xq.add(r * k + (b + h) * QK + g * 4) as *const i32).read_unaligned());
                    isum[h][g % S][r] = _mm512_dpbusd_epi32(isum[h][g % S][r], wv, xv);
                }
            }
        }
        for h in 0..H {
            let blk = wp.add((b + h) * TILE_BLOCK_BYTES);
            let wd = _mm512_cvtph_ps(_mm256_loadu_si256(blk as *const __m256i));
            for r in 0..R {
                let mut sum = isum[h][0][r];
                for part in 1..S {
                    sum = _mm512_add_epi32(sum, isum[h][part][r]);
                }
                let s = _mm512_mul_ps(wd, _mm512_set1_ps(*xd.add(r * kb + b + h)));
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), s, acc[r]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q8_bytes(w: &[f32], n: usize, k: usize) -> Vec<u8> {
        let mut raw = Vec::with_capacity(n * k / QK * GGUF_BLOCK_BYTES);
        for blk in w.chunks_exact(QK) {
            let amax = blk.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            raw.extend_from_slice(&f16::from_f32(d).to_le_bytes());
            raw.extend(blk.iter().map(|v| ((v * inv).round() as i8) as u8));
        }
        raw
    }

    /// Packing keeps every weight (the dequantized tiles equal the GGUF blocks' values) for
    /// both layouts, and each kernel this CPU runs matches f64 sums of the same quantized
    /// weights and activations. (On a CPU with neither, weights stay on candle's matmul,
    /// which `from_qtensor` refusing them ensures.)
    #[test]
    fn packs_losslessly_and_matches_the_quantized_dot_products() {
        let shapes = [(1, 16, 32), (2, 48, 64), (3, 80, 96), (5, 16, 64), (7, 32, 128), (8, 64, 1024), (9, 32, 3072), (17, 16, 160)];
        for kernel in [Kernel::Vnni, Kernel::Avx2] {
            for (m, n, k) in shapes {
                let w: Vec<f32> = (0..n * k).map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0).collect();
                let x: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
                let mut raw = q8_bytes(&w, n, k);
                // GGUF allows -128, which llama.cpp's quantizer never writes.
                raw[2] = 0x80;
                let p = PackedQ8::from_gguf_bytes(&raw, n, k, kernel).expect("packs");
                assert_eq!(p.storage_bytes(), raw.len());
                let wd = p.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                for (i, &got) in wd.iter().enumerate() {
                    let blk = &raw[(i / QK) * GGUF_BLOCK_BYTES..][..GGUF_BLOCK_BYTES];
                    let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                    assert_eq!(got, d * (blk[2 + i % QK] as i8) as f32, "{kernel:?}: weight {i}");
                }
                if !Kernel::supported().contains(&kernel) {
                    continue;
                }
                let acts = quantize_rows(&x, m, k);
                let y = p.matmul(&x, m);
                for r in 0..m {
                    for j in 0..n {
                        let mut want = 0f64;
                        for b in 0..k / QK {
                            let mut s = 0f64;
                            for v in 0..QK {
                                s += wd[j * k + b * QK + v] as f64 * acts.q[r * k + b * QK + v] as f64;
                            }
                            want += s * acts.d[r * k / QK + b] as f64;
                        }
                        let got = y[r * n + j] as f64;
                        assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "{kernel:?} m={m} n={n} k={k} r={r} j={j}: {got} vs {want}");
                        if (j, r) == (0, 0) {
                            // The -128 weight: no float reference below.
                            continue;
                        }
                        // Close to the float product too: each factor is off by at most half a
                        // step (1/254 of its block's max), so each product by < 1%.
                        let exact: f64 = (0..k).map(|t| x[r * k + t] as f64 * w[j * k + t] as f64).sum();
                        let mass: f64 = (0..k).map(|t| (x[r * k + t] as f64 * w[j * k + t] as f64).abs()).sum();
                        assert!((got - exact).abs() <= 0.01 * mass + 1e-3, "{got} vs float {exact}");
                    }
                }
                // A row's result does not depend on the rest of the batch.
                let last = p.matmul(&x[(m - 1) * k..], 1);
                assert_eq!(&y[(m - 1) * n..], &last[..], "{kernel:?} m={m}");
            }
        }
        let w = Tensor::from_vec(vec![0.25f32; 16 * 32], (16, 32), &Device::Cpu).unwrap();
        let packed = PackedQ8::from_qtensor(&QTensor::quantize(&w, GgmlDType::Q8_0).unwrap());
        assert_eq!(packed.map(|p| p.kernel()), Kernel::detect());
    }

    /// Both kernels give the same bits for every row count (where this CPU runs both).
    #[test]
    fn the_two_kernels_give_the_same_bits() {
        if Kernel::supported().len() < 2 {
            return;
        }
        let (n, k) = (48, 320);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 59 % 83) as f32 - 41.0) / 13.0).collect();
        let mut raw = q8_bytes(&w, n, k);
        // A -128 weight: the one value where the sign trick and the +128 offset differ.
        raw[2] = 0x80;
        let [vnni, avx2] = [Kernel::Vnni, Kernel::Avx2].map(|kernel| PackedQ8::from_gguf_bytes(&raw, n, k, kernel).expect("packs"));
        for m in 1..=19 {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / (3.0 + (i % 5) as f32)).collect();
            let bits = |p: &PackedQ8| p.matmul(&x, m).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&vnni), bits(&avx2), "m={m}");
        }
    }

    /// A group gives each weight's own matmul bits; mismatched widths give empty results.
    #[test]
    fn a_group_equals_its_weights_one_by_one() {
        for &kernel in Kernel::supported() {
            a_group_equals_its_weights_one_by_one_on(kernel);
        }
    }

    fn a_group_equals_its_weights_one_by_one_on(kernel: Kernel) {
        let k = 256;
        let weights: Vec<PackedQ8> = [48usize, 16, 80]
            .iter()
            .enumerate()
            .map(|(s, &n)| {
                let w: Vec<f32> = (0..n * k).map(|i| ((i * (53 + s) % 97) as f32 - 48.0) / 48.0).collect();
                PackedQ8::from_gguf_bytes(&q8_bytes(&w, n, k), n, k, kernel).expect("packs")
            })
            .collect();
        let refs: Vec<&PackedQ8> = weights.iter().collect();
        for m in [1usize, 8, 11] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
            let ys = matmul_group(&refs, &x, m);
            assert_eq!(ys.len(), 3);
            for (w, y) in weights.iter().zip(&ys) {
                assert_eq!(y, &w.matmul(&x, m), "m={m} n={}", w.rows());
            }
        }
        let narrow = PackedQ8::from_gguf_bytes(&q8_bytes(&vec![0.5; 16 * 32], 16, 32), 16, 32, kernel).expect("packs");
        let x = vec![1.0; 2 * k];
        assert!(matmul_group(&[&weights[0], &narrow], &x, 2).iter().all(|y| y.is_empty()), "widths differ");
        // Packing needs no CPU features, so the other layout can be made anywhere.
        let other = if kernel == Kernel::Vnni { Kernel::Avx2 } else { Kernel::Vnni };
        let w: Vec<f32> = (0..16 * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 6.0).collect();
        let foreign = PackedQ8::from_gguf_bytes(&q8_bytes(&w, 16, k), 16, k, other).expect("packs");
        assert!(matmul_group(&[&weights[0], &foreign], &x, 2).iter().all(|y| y.is_empty()), "layouts differ");
        assert!(matmul_group(&refs, &x[..k + 1], 2).iter().all(|y| y.is_empty()), "short input");
    }

    /// Each kernel's hand-scheduled 8-row pass gives its compiled 8-row pass's bits, and
    /// every row the bits of that row alone (the compiled 1-row pass), for one and several
    /// groups of 8, a remainder of rows after them, and a single block per row.
    #[test]
    fn the_eight_row_pass_gives_each_row_its_own_bits() {
        for &kernel in Kernel::supported() {
            the_eight_row_pass_gives_each_row_its_own_bits_on(kernel);
        }
    }

    fn the_eight_row_pass_gives_each_row_its_own_bits_on(kernel: Kernel) {
        type Pass = unsafe fn(&[u8], &[u8], usize, *mut f32, usize);
        let passes: &[Pass] = match kernel {
            Kernel::Vnni => &[avx512::tile8, avx512::tile8_l2],
            Kernel::Avx2 => &[avx2::tile8],
        };
        let tile = kernel.tile();
        for (m, n, k) in [(8, 32, 32), (8, 48, 1024), (16, 16, 96), (19, 64, 256)] {
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 61 % 89) as f32 - 44.0) / 30.0).collect();
            let p = PackedQ8::from_gguf_bytes(&q8_bytes(&w, n, k), n, k, kernel).expect("packs");
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / (3.0 + (i % 7) as f32)).collect();
            let acts = quantize_rows(&x, m, k);
            assert_eq!(acts.oct.len(), m / 8 * k / QK * OCT_BLOCK_BYTES, "m={m}");
            // Without the interleaved copy, full groups take the compiled 8-row pass:
            // the same bits.
            let run = |acts: &Acts| {
                let mut y = vec![0f32; m * n];
                // SAFETY: the CPU runs `kernel`; `p.data` is all of the weight's tiles
                // (columns 0..n), and `y` holds `m * n` values.
                unsafe { task(kernel, &p.data, acts, k, m, n, 0, OutPtr(y.as_mut_ptr())) };
                y.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            };
            let compiled = Acts { q: acts.q.clone(), d: acts.d.clone(), start: acts.start.clone(), oct: Vec::new() };
            assert_eq!(run(&acts), run(&compiled), "{kernel:?} m={m} n={n} k={k}: assembly and compiled 8-row passes");
            // Every variant of the pass, whichever this CPU's `task` takes, on the first
            // tile and group, written with the output's row stride.
            let kb = k / QK;
            let (tw, oct) = (&p.data[..kb * kernel.block_bytes()], &acts.oct[..kb * OCT_BLOCK_BYTES]);
            let whole = run(&acts);
            for pass in passes {
                let mut y = vec![f32::NAN; 8 * n];
                // SAFETY: the CPU runs `kernel`; `tw` is the first whole tile, `oct` the
                // first group's `kb` blocks, and rows of `n >= 16` floats hold each row's
                // `tile`.
                unsafe { pass(tw, oct, kb, y.as_mut_ptr(), n) };
                for r in 0..8 {
                    let got: Vec<u32> = y[r * n..r * n + tile].iter().map(|v| v.to_bits()).collect();
                    assert_eq!(got, whole[r * n..r * n + tile], "{kernel:?} m={m} n={n} k={k} row {r}");
                    assert!(y[r * n + tile..(r + 1) * n].iter().all(|v| v.is_nan()), "wrote past its {tile} columns");
                }
            }
            let y = p.matmul(&x, m);
            for r in 0..m {
                let alone = p.matmul(&x[r * k..(r + 1) * k], 1);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&y[r * n..(r + 1) * n]), bits(&alone), "{kernel:?} m={m} n={n} k={k} row {r}");
            }
        }
    }

    #[test]
    fn quantizing_odd_values_stays_in_range() {
        let mut x = [0.5f32; QK];
        x[0] = f32::NAN;
        x[1] = f32::INFINITY;
        x[2] = -3.0;
        let mut q = [0i8; QK];
        let (d, start) = quantize_block(&x, &mut q);
        assert!(q.iter().all(|&v| (-127..=127).contains(&v)));
        assert_eq!(start, -128 * q.iter().map(|&v| v as i32).sum::<i32>());
        let _ = d;
        // Ties round to even, as llama.cpp's x86 quantizer does: 2.5 -> 2, 3.5 -> 4.
        let mut x = [0f32; QK];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = 3.5;
        x[3] = -2.5;
        let (d, _) = quantize_block(&x, &mut q);
        assert_eq!(d, 1.0);
        assert_eq!(&q[..4], &[127, 2, 4, -2]);
        let (d, start) = quantize_block(&[0.0; QK], &mut q);
        assert_eq!((d, start), (0.0, 0));
        assert!(q.iter().all(|&v| v == 0));
    }

    /// The vector quantizer gives the scalar one's bits, odd values included.
    #[test]
    fn vector_quantizing_matches_the_scalar_blocks() {
        let blocks = 64;
        let mut x: Vec<f32> = (0..blocks * QK).map(|i| ((i * 7919 % 1009) as f32 - 504.0) / (1.0 + (i % 37) as f32)).collect();
        // Ties, zeros, NaN, infinities, denormals, one huge value.
        x[..QK].copy_from_slice(&[0.0; QK]);
        for (i, v) in [127.0, 2.5, 3.5, -2.5, 0.5, -0.5, 1.5].into_iter().enumerate() {
            x[QK + i] = v;
        }
        x[2 * QK] = f32::NAN;
        x[2 * QK + 1] = f32::INFINITY;
        x[3 * QK + 3] = f32::NEG_INFINITY;
        x[4 * QK + 5] = 1e-40;
        x[5 * QK + 9] = 3e38;
        type Quantizer = fn(&mut [i8], &mut [f32], &mut [i32], &[f32]);
        let run = |f: Quantizer| {
            let (mut q, mut d, mut s) = (vec![0i8; x.len()], vec![0f32; blocks], vec![0i32; blocks]);
            f(&mut q, &mut d, &mut s, &x);
            (q, d.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), s)
        };
        assert_eq!(run(quantize_span), run(quantize_span_scalar));
        #[cfg(target_arch = "x86_64")]
        if Kernel::supported().contains(&Kernel::Avx2) {
            // SAFETY: AVX2 is present.
            assert_eq!(run(|q, d, s, x| unsafe { avx2::quantize_span(q, d, s, x) }), run(quantize_span_scalar));
        }
    }

    #[test]
    fn refuses_what_it_cannot_take() {
        let raw = vec![0u8; 16 * GGUF_BLOCK_BYTES];
        assert!(PackedQ8::from_gguf_bytes(&raw, 16, 64, Kernel::Avx2).is_none(), "wrong byte count");
        assert!(PackedQ8::from_gguf_bytes(&raw[..12 * GGUF_BLOCK_BYTES], 12, 32, Kernel::Avx2).is_none(), "12 rows");
        let t = Tensor::zeros((15, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, GgmlDType::Q8_0).unwrap();
        assert!(PackedQ8::from_qtensor(&q).is_none(), "15 rows is not whole tiles");
        let q = QTensor::quantize(&Tensor::zeros((16, 32), candle_core::DType::F32, &Device::Cpu).unwrap(), GgmlDType::Q4_0).unwrap();
        assert!(PackedQ8::from_qtensor(&q).is_none(), "Q4_0");
    }
}
