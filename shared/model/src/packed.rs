//! f32 weights packed into 32-column panels for CPU inference: `y = x W^T` for decode
//! batches, prompt chunks and whole prompts alike.
//!
//! Why a second layout beside candle's `[out, in]` rows: a decode step is bound by
//! reading every weight once, and a batch of 8 must cost little more than a batch of 1.
//! With row-major weights each output is a dot product, so 8 rows of `x` need 8 vector
//! loads of `x` per weight vector, a horizontal sum per output, and the weight rows are
//! 4 KiB apart, so the stream hops a page per row. Measured on a 2-core Zen 5 VM on the
//! 151936 x 1024 head streamed from DRAM, the row kernel's 8-row pass took 18-20 ms
//! against 11-15 ms for one row: the multiply and the memory stream barely overlapped.
//! In panels the same 8-row pass took 11 ms, as fast as one row, and on an L3-resident
//! weight the panel tile computed at ~240 GMAC/s against the row tile's ~140 (it is a
//! GEMM micro-kernel: no horizontal sums, one broadcast per input element). So the
//! engine packs its f32 projections once when it takes a model ([`crate::Model::pack_for_inference`])
//! and every matmul of inference, prefill included, runs here.
//!
//! Layout: panel `p` holds output columns `32p .. 32p + 32`; for each `i` of the input
//! dim its 32 weights `W[32p + j][i]` are contiguous, so a panel is one sequential
//! stream of `32 * k` floats (the last panel is padded with zeros). A tile keeps
//! `32 x R` accumulators (`R <= 8` rows of `x`), and each step loads the 32 weights once
//! and broadcasts one input element per row.
//!
//! Each output adds its products in input order, in blocks of [`K_SUM_BLOCK`] folded into
//! the output in order (shorter chains than one long sum). The order depends on nothing
//! but `k`, so a row's result is the same bits whatever else is in the batch.

// The SIMD tiles index their register arrays by (vector, row) on purpose.
#![allow(clippy::needless_range_loop)]

use candle_core::{Device, Tensor};
use rayon::prelude::*;

/// Output columns per panel (two 16-lane vectors).
pub const PANEL: usize = 32;

/// Input elements summed in one chain before the partial sum is folded into the output.
const K_SUM_BLOCK: usize = 256;

/// Weight floats per rayon task (256 KiB): a task's panels stay in L2 while every
/// 8-row block of a tall input passes over them, so the weight is read from memory once.
const TASK_FLOATS: usize = 64 * 1024;

/// Rows of `x` per tile.
const MAX_R: usize = 8;

/// A `[n, k]` f32 weight in panel layout (inference only).
pub struct PackedF32 {
    n: usize,
    k: usize,
    data: Vec<f32>,
}

impl std::fmt::Debug for PackedF32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedF32 [{}, {}]", self.n, self.k)
    }
}

impl PackedF32 {
    /// Packs row-major `w [n, k]` (`w.len() >= n * k`).
    pub fn pack(w: &[f32], n: usize, k: usize) -> PackedF32 {
        assert!(
            w.len() >= n * k,
            "weight holds {} floats, not {n} x {k}",
            w.len()
        );
        let panels = n.div_ceil(PANEL);
        let mut data = vec![0f32; panels * PANEL * k];
        if k > 0 {
            data.par_chunks_mut(PANEL * k)
                .enumerate()
                .for_each(|(p, dst)| {
                    for j in 0..PANEL.min(n - p * PANEL) {
                        let col = p * PANEL + j;
                        for (i, &v) in w[col * k..(col + 1) * k].iter().enumerate() {
                            dst[i * PANEL + j] = v;
                        }
                    }
                });
        }
        PackedF32 { n, k, data }
    }

    /// Packs a contiguous 2-D f32 CPU tensor; `None` for anything else.
    pub fn from_tensor(w: &Tensor) -> candle_core::Result<Option<PackedF32>> {
        if w.dtype() != candle_core::DType::F32
            || !w.is_contiguous()
            || !matches!(w.device(), Device::Cpu)
        {
            return Ok(None);
        }
        let Ok((n, k)) = w.dims2() else {
            return Ok(None);
        };
        let (ws, wl) = w.storage_and_layout();
        let candle_core::Storage::Cpu(wc) = &*ws else {
            return Ok(None);
        };
        let wv = &wc.as_slice::<f32>()?[wl.start_offset()..wl.start_offset() + n * k];
        Ok(Some(PackedF32::pack(wv, n, k)))
    }

    /// `(n, k)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Bytes one matmul streams (padding of the last panel included).
    pub fn storage_bytes(&self) -> usize {
        self.data.len() * 4
    }

    /// The weight back in row-major `[n, k]`.
    pub fn unpack(&self) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        let mut w = vec![0f32; n * k];
        for (col, row) in w.chunks_mut(k.max(1)).enumerate().take(n) {
            let panel = &self.data[col / PANEL * PANEL * k..];
            for (i, v) in row.iter_mut().enumerate() {
                *v = panel[i * PANEL + col % PANEL];
            }
        }
        w
    }

    /// Rows `ids` of the weight, row-major `[ids.len(), k]`: the embedding lookup of a
    /// tied head whose row-major table was dropped. `None` when an id is `>= n`.
    pub fn gather_rows(&self, ids: &[u32]) -> Option<Vec<f32>> {
        let k = self.k;
        let mut out = Vec::with_capacity(ids.len() * k);
        for &id in ids {
            let col = id as usize;
            if col >= self.n {
                return None;
            }
            let panel = &self.data[col / PANEL * PANEL * k..][..PANEL * k];
            out.extend(panel.iter().skip(col % PANEL).step_by(PANEL));
        }
        Some(out)
    }

    /// The weight as a row-major `[n, k]` tensor on `device`.
    pub fn to_tensor(&self, device: &Device) -> candle_core::Result<Tensor> {
        Tensor::from_vec(self.unpack(), (self.n, self.k), device)
    }

    /// `x [.., k] W^T` for a CPU f32 `x`; `None` when `x` is not one.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Option<Tensor>> {
        crate::gemv::map_cpu_rows(x, self.k, self.n, |xv, m| self.matmul(xv, m))
    }

    /// `y[m, n] = x[m, k] W^T` (`x.len() >= m * k`).
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        assert!(
            x.len() >= m * k,
            "input holds {} floats, not {m} x {k}",
            x.len()
        );
        let mut y = vec![0f32; m * n];
        if m == 0 || n == 0 || k == 0 {
            return y;
        }
        let panels = n.div_ceil(PANEL);
        let per_task = (TASK_FLOATS / (PANEL * k)).max(1);
        let out = OutPtr(y.as_mut_ptr());
        let isa = Isa::get();
        (0..panels.div_ceil(per_task))
            .into_par_iter()
            .for_each(|t| {
                for p in t * per_task..((t + 1) * per_task).min(panels) {
                    let w = &self.data[p * PANEL * k..(p + 1) * PANEL * k];
                    let cols = PANEL.min(n - p * PANEL);
                    // SAFETY: `w` is one panel of `PANEL * k` floats, `x` holds `m` rows of
                    // `k`, and `out` points at `m` rows of `n` floats of which this panel
                    // writes only columns `p * PANEL .. p * PANEL + cols`, which no other
                    // task touches.
                    unsafe { panel(isa, w, x, m, k, out.at(p * PANEL), n, cols) };
                }
            });
        y
    }
}

/// The output pointer shared by the tasks, each writing its own columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint columns of the output (see `PackedF32::matmul`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// `self + offset` (a method, so closures capture the whole `Sync` wrapper rather
    /// than its raw-pointer field).
    ///
    /// # Safety
    /// `offset` stays within the output.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        self.0.add(offset)
    }
}

/// The instruction set the tiles use, chosen once at run time so the binary stays
/// portable. Every row of every batch uses the same one, so the bits agree.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Isa {
    Avx512,
    Avx2,
    Portable,
}

impl Isa {
    fn get() -> Isa {
        use std::sync::OnceLock;
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                if is_x86_feature_detected!("avx512f") {
                    return Isa::Avx512;
                }
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    return Isa::Avx2;
                }
            }
            Isa::Portable
        })
    }
}

/// One panel against all `m` rows of `x`, in blocks of up to [`MAX_R`] rows (AVX2: 2).
/// The first block prefetches the panel from memory; later ones find it in L2. On Intel
/// cores every block prefetches it, from L2 into L1: on a 2-core Emerald Rapids VM that
/// took 512-token f32 prefill from 150.9 / 162.3 / 181.0 to 156.9 / 186.2 / 241.3
/// tokens/s (runs alternating with the first-block-only code), and 512-row matmuls of the
/// 0.6B model's MLP shapes from a median of 88 to 90 GMAC/s (12 alternating pairs: 10
/// faster, 1 the same, 1 slower). Zen cores, where it has not been measured, keep the
/// first-block-only prefetch they were tuned with.
///
/// # Safety
/// `w` holds `PANEL * k` floats, `x` holds `m` rows of `k`, and `out` (row stride `ldo`)
/// has `m` rows with room for `cols` floats each.
#[allow(clippy::too_many_arguments)]
unsafe fn panel(
    isa: Isa,
    w: &[f32],
    x: &[f32],
    m: usize,
    k: usize,
    out: *mut f32,
    ldo: usize,
    cols: usize,
) {
    let every_block = crate::cpu::is_intel();
    let mut r0 = 0;
    while r0 < m {
        let rows = m - r0;
        let (xr, o) = (&x[r0 * k..], out.add(r0 * ldo));
        let prefetch = r0 == 0 || every_block;
        let step = match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                let w = w.as_ptr();
                let x = xr.as_ptr();
                match (rows.min(MAX_R), prefetch) {
                    (1, true) => avx512::tile::<1, true>(w, x, k, o, ldo, cols),
                    (1, false) => avx512::tile::<1, false>(w, x, k, o, ldo, cols),
                    (2, true) => avx512::tile::<2, true>(w, x, k, o, ldo, cols),
                    (2, false) => avx512::tile::<2, false>(w, x, k, o, ldo, cols),
                    (3, true) => avx512::tile::<3, true>(w, x, k, o, ldo, cols),
                    (3, false) => avx512::tile::<3, false>(w, x, k, o, ldo, cols),
                    (4, true) => avx512::tile::<4, true>(w, x, k, o, ldo, cols),
                    (4, false) => avx512::tile::<4, false>(w, x, k, o, ldo, cols),
                    (5, true) => avx512::tile::<5, true>(w, x, k, o, ldo, cols),
                    (5, false) => avx512::tile::<5, false>(w, x, k, o, ldo, cols),
                    (6, true) => avx512::tile::<6, true>(w, x, k, o, ldo, cols),
                    (6, false) => avx512::tile::<6, false>(w, x, k, o, ldo, cols),
                    (7, true) => avx512::tile::<7, true>(w, x, k, o, ldo, cols),
                    (7, false) => avx512::tile::<7, false>(w, x, k, o, ldo, cols),
                    (_, true) => avx512::tile::<MAX_R, true>(w, x, k, o, ldo, cols),
                    (_, false) => avx512::tile::<MAX_R, false>(w, x, k, o, ldo, cols),
                }
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                let w = w.as_ptr();
                let x = xr.as_ptr();
                if rows >= 2 {
                    avx2::tile::<2>(w, x, k, o, ldo, cols)
                } else {
                    avx2::tile::<1>(w, x, k, o, ldo, cols)
                }
            }
            _ => match rows.min(4) {
                1 => portable_tile::<1>(w, xr, k, o, ldo, cols),
                2 => portable_tile::<2>(w, xr, k, o, ldo, cols),
                3 => portable_tile::<3>(w, xr, k, o, ldo, cols),
                _ => portable_tile::<4>(w, xr, k, o, ldo, cols),
            },
        };
        r0 += step;
    }
}

/// The spans `kb..ke` of the input dim that each sum in one chain, in order.
fn k_blocks(k: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..k).step_by(K_SUM_BLOCK).map(move |kb| (kb, (kb + K_SUM_BLOCK).min(k)))
}

/// Adds a block's partial sums `acc[r][..cols]` into output row `r` (or stores them, for
/// the first block).
///
/// # Safety
/// `out` (row stride `ldo`) has `R` rows with room for `cols` floats each.
unsafe fn fold<const R: usize>(
    acc: &[[f32; PANEL]; R],
    first: bool,
    out: *mut f32,
    ldo: usize,
    cols: usize,
) {
    for (r, a) in acc.iter().enumerate() {
        let dst = std::slice::from_raw_parts_mut(out.add(r * ldo), cols);
        if first {
            dst.copy_from_slice(&a[..cols]);
        } else {
            for (d, v) in dst.iter_mut().zip(a) {
                *d += v;
            }
        }
    }
}

/// `R` rows against a panel in plain Rust (the compiler vectorizes the 32 columns);
/// returns `R`.
///
/// # Safety
/// As [`panel`], for `R` rows.
unsafe fn portable_tile<const R: usize>(
    w: &[f32],
    x: &[f32],
    k: usize,
    out: *mut f32,
    ldo: usize,
    cols: usize,
) -> usize {
    for (kb, ke) in k_blocks(k) {
        let mut acc = [[0f32; PANEL]; R];
        for i in kb..ke {
            let wi = &w[i * PANEL..(i + 1) * PANEL];
            for r in 0..R {
                let xv = x[r * k + i];
                for j in 0..PANEL {
                    acc[r][j] += xv * wi[j];
                }
            }
        }
        fold(&acc, kb == 0, out, ldo, cols);
    }
    R
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{k_blocks, PANEL};
    use std::arch::x86_64::*;

    /// How far ahead of the step being read the panel is prefetched (bytes): 32 steps.
    /// One row (batch-1 decode, bound by the stream) prefetches into L2 (`T2`), more rows
    /// into L1, as the Q8_0 kernel does: on a Zen 4 VM, with the two hints alternating
    /// step by step in one process, batch-1 f32 steps of the 0.6B model took 47.51 /
    /// 49.16 / 46.99 ms (medians of 20) against 47.93 / 50.44 / 47.89 ms with `T0`.
    const PF_BYTES: usize = 4096;

    /// `R` rows of `x` against a panel: 2 x `R` accumulators, two weight loads and `R`
    /// broadcasts per input element. Returns `R`.
    ///
    /// # Safety
    /// AVX-512F present; `w` holds `PANEL * k` floats, `x` holds `R` rows of `k`, and
    /// `out` (row stride `ldo`) has `R` rows with room for `cols <= PANEL` floats each.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile<const R: usize, const PF: bool>(
        w: *const f32,
        x: *const f32,
        k: usize,
        out: *mut f32,
        ldo: usize,
        cols: usize,
    ) -> usize {
        let lanes = |c: usize| -> __mmask16 {
            if c >= 16 {
                0xffff
            } else {
                ((1u32 << c) - 1) as __mmask16
            }
        };
        let masks = [lanes(cols), lanes(cols.saturating_sub(16))];
        for (kb, ke) in k_blocks(k) {
            let mut a = [[_mm512_setzero_ps(); R]; 2];
            for i in kb..ke {
                let wp = w.add(i * PANEL);
                if PF {
                    // Only a hint: an address past the panel (or the allocation) is
                    // harmless, and `wrapping_add` keeps the arithmetic defined.
                    let pf = (wp as *const i8).wrapping_add(PF_BYTES);
                    if R == 1 {
                        _mm_prefetch::<_MM_HINT_T2>(pf);
                        _mm_prefetch::<_MM_HINT_T2>(pf.wrapping_add(64));
                    } else {
                        _mm_prefetch::<_MM_HINT_T0>(pf);
                        _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(64));
                    }
                }
                let w0 = _mm512_loadu_ps(wp);
                let w1 = _mm512_loadu_ps(wp.add(16));
                for r in 0..R {
                    let xb = _mm512_set1_ps(*x.add(r * k + i));
                    a[0][r] = _mm512_fmadd_ps(xb, w0, a[0][r]);
                    a[1][r] = _mm512_fmadd_ps(xb, w1, a[1][r]);
                }
            }
            for r in 0..R {
                for v in 0..2 {
                    let dst = out.add(r * ldo + v * 16);
                    let sum = if kb == 0 {
                        a[v][r]
                    } else {
                        _mm512_add_ps(_mm512_maskz_loadu_ps(masks[v], dst), a[v][r])
                    };
                    _mm512_mask_storeu_ps(dst, masks[v], sum);
                }
            }
        }
        R
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{fold, k_blocks, PANEL};
    use std::arch::x86_64::*;

    /// `R <= 2` rows of `x` against a panel: 4 x `R` accumulators in the 16 AVX2
    /// registers. Returns `R`.
    ///
    /// # Safety
    /// AVX2 and FMA present; as [`super::avx512::tile`] otherwise.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile<const R: usize>(
        w: *const f32,
        x: *const f32,
        k: usize,
        out: *mut f32,
        ldo: usize,
        cols: usize,
    ) -> usize {
        for (kb, ke) in k_blocks(k) {
            let mut a = [[_mm256_setzero_ps(); R]; 4];
            for i in kb..ke {
                let wp = w.add(i * PANEL);
                let wv = [
                    _mm256_loadu_ps(wp),
                    _mm256_loadu_ps(wp.add(8)),
                    _mm256_loadu_ps(wp.add(16)),
                    _mm256_loadu_ps(wp.add(24)),
                ];
                for r in 0..R {
                    let xb = _mm256_set1_ps(*x.add(r * k + i));
                    for v in 0..4 {
                        a[v][r] = _mm256_fmadd_ps(xb, wv[v], a[v][r]);
                    }
                }
            }
            let mut acc = [[0f32; PANEL]; R];
            for r in 0..R {
                for v in 0..4 {
                    _mm256_storeu_ps(acc[r].as_mut_ptr().add(v * 8), a[v][r]);
                }
            }
            fold(&acc, kb == 0, out, ldo, cols);
        }
        R
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::gemv::tests::reference;

    #[test]
    fn matches_a_plain_matmul_for_every_row_count_and_odd_sizes() {
        for (m, n, k) in [
            (1, 130, 37),
            (2, 64, 64),
            (3, 65, 100),
            (5, 200, 1024),
            (8, 129, 48),
            (9, 31, 300),
            (16, 70, 33),
            (8, 67, 3000),
            (11, 19, 2100),
            (4, 9, 4100),
            (37, 150, 200),
            (130, 65, 64),
        ] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
                .collect();
            let p = PackedF32::pack(&w, n, k);
            assert_eq!(p.unpack(), w, "round trip n={n} k={k}");
            let got = p.matmul(&x, m);
            let want = reference(&x, m, &w, n, k);
            for (a, b) in got.iter().zip(&want) {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "m={m} n={n} k={k}: {a} vs {b}"
                );
            }
            // A row's result does not depend on the rest of the batch (same bits).
            for r in [0, m / 2, m - 1] {
                let alone = p.matmul(&x[r * k..(r + 1) * k], 1);
                assert_eq!(&got[r * n..(r + 1) * n], &alone[..], "m={m} row {r}");
            }
        }
    }

    /// Every instruction set this CPU has, not only the one `matmul` picks: each agrees
    /// with the reference, and its rows do not depend on the batch.
    #[test]
    fn every_available_tile_agrees_with_the_reference() {
        let mut isas = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                isas.push(Isa::Avx2);
            }
            if is_x86_feature_detected!("avx512f") {
                isas.push(Isa::Avx512);
            }
        }
        let run = |isa: Isa, p: &PackedF32, x: &[f32], m: usize| {
            let (n, k) = p.dims();
            let mut y = vec![0f32; m * n];
            for pi in 0..n.div_ceil(PANEL) {
                let cols = PANEL.min(n - pi * PANEL);
                // SAFETY: as in `matmul` (one panel, its own columns), on one thread; the
                // instruction set is one this CPU has (checked above).
                unsafe { panel(isa, &p.data[pi * PANEL * k..(pi + 1) * PANEL * k], x, m, k, y.as_mut_ptr().add(pi * PANEL), n, cols) };
            }
            y
        };
        for (m, n, k) in [(1, 40, 600), (3, 33, 17), (10, 70, 300)] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0).collect();
            let p = PackedF32::pack(&w, n, k);
            let want = reference(&x, m, &w, n, k);
            for &isa in &isas {
                let got = run(isa, &p, &x, m);
                for (a, b) in got.iter().zip(&want) {
                    assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{isa:?} m={m} n={n} k={k}: {a} vs {b}");
                }
                let last = run(isa, &p, &x[(m - 1) * k..], 1);
                assert_eq!(&got[(m - 1) * n..], &last[..], "{isa:?} m={m}: last row alone");
            }
        }
    }

    #[test]
    fn tensor_entry_point() {
        let dev = Device::Cpu;
        let w = Tensor::arange(0f32, 12.0, &dev)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        let p = PackedF32::from_tensor(&w).unwrap().expect("packed");
        let x = Tensor::ones((1, 2, 4), candle_core::DType::F32, &dev).unwrap();
        let y = p.forward(&x).unwrap().expect("taken");
        assert_eq!(y.dims(), &[1, 2, 3]);
        assert_eq!(y.to_vec3::<f32>().unwrap()[0][1], vec![6.0, 22.0, 38.0]);
        assert_eq!(
            p.to_tensor(&dev).unwrap().to_vec2::<f32>().unwrap(),
            w.to_vec2::<f32>().unwrap()
        );
        assert!(
            PackedF32::from_tensor(&w.t().unwrap()).unwrap().is_none(),
            "transposed weight"
        );
    }
}
