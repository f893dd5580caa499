//! The Q8_0 kernel for AVX2 CPUs without AVX-512 VNNI ([`super::Kernel::Avx2`]).
//!
//! Without `vpdpbusd`, int8 products take `vpmaddubsw` (u8 by i8 into saturating 16-bit
//! pair sums) and `vpmaddwd` by ones (pairs of those into 32-bit sums). The sign trick
//! keeps the pair sums exact, as llama.cpp does: the unsigned operand is `|w|` and the
//! signed one `x` with `w`'s sign (`vpsignb`), so each product is `|w| * |x|` at most
//! `128 * 127` and a pair fits in 16 bits. `|w|` is taken once per weight load and serves
//! every activation row of the pass.
//!
//! Widening the weights to `i16` for `vpmaddwd` alone (no sign step) takes as many
//! arithmetic ops per product but twice the activation broadcasts, and on a Zen 3 VM a loop of 8 rows' `vpbroadcastd`, `vpmaddwd`,
//! `vpaddd` took 8.2 cycles per 128 products with the widening, against 13.5 cycles per
//! 256 for the sign trick's 8 rows of `vpbroadcastd`, `vpsignb`, `vpmaddubsw`, `vpmaddwd`,
//! `vpaddd`: 15.6 against 19 products a cycle.
//!
//! Layout: tiles of 8 weight rows (the 8 lanes of a 256-bit register). A tile block holds
//! the 8 rows' f16 scales (16 bytes), then the quants as `[4-value group][row][4]` (256
//! bytes): group `g`'s 32 bytes are one register whose lane `j` holds row `j`'s four
//! values, so one product sequence against 4 broadcast activation bytes gives all 8 rows'
//! partial sums in their lanes, with no horizontal sums.

// The register arrays are indexed by row on purpose.
#![allow(clippy::needless_range_loop)]

use super::{Acts, OCT_BLOCK_BYTES, QK};
use std::arch::asm;
use std::arch::x86_64::*;

/// Weight rows per tile.
const TILE: usize = 8;
/// Bytes of one tile block: 8 f16 scales, then 8 x 32 quants.
const BLOCK_BYTES: usize = TILE * 2 + TILE * QK;
/// Bytes ahead of the read position that the weight stream is prefetched.
const PF_BYTES: usize = 8 * BLOCK_BYTES;

/// [`super::quantize_span`] compiled for AVX2: the scalar code (written to vectorize) with
/// 256-bit registers, so the same bits.
///
/// # Safety
/// AVX2 and FMA present.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn quantize_span(q: &mut [i8], d: &mut [f32], s: &mut [i32], x: &[f32]) {
    super::quantize_span_scalar(q, d, s, x)
}

/// One tile against `rows` (1..=8) activation rows from `r0`: `out[r * stride + j]`
/// becomes `dot(x[r0 + r], w[j])` for the tile's 8 weight rows `j`. Full groups of 8 rows
/// take [`tile8`] where the activations have their interleaved copy (always, in
/// [`super::task`]); the compiled 8-row arm here is its reference in the tests.
///
/// # Safety
/// AVX2, FMA and F16C present; `w` is a whole tile of `k / 32` blocks; `acts` holds rows
/// `r0..r0 + rows`; `out + r * stride` has 8 writable floats for each of the rows.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tile(w: &[u8], acts: &Acts, k: usize, r0: usize, rows: usize, out: *mut f32, stride: usize) {
    debug_assert!(w.len() >= k / QK * BLOCK_BYTES && acts.q.len() >= (r0 + rows) * k);
    match rows {
        1 => walk::<1, 2>(w, acts, k, r0, out, stride),
        2 => walk::<2, 2>(w, acts, k, r0, out, stride),
        3 => walk::<3, 1>(w, acts, k, r0, out, stride),
        4 => walk::<4, 1>(w, acts, k, r0, out, stride),
        5 => walk::<5, 1>(w, acts, k, r0, out, stride),
        6 => walk::<6, 1>(w, acts, k, r0, out, stride),
        7 => walk::<7, 1>(w, acts, k, r0, out, stride),
        _ => walk::<8, 1>(w, acts, k, r0, out, stride),
    }
}

/// The tile's blocks in order against `R` rows, each row's integer sum kept as `S`
/// chains (for one or two rows a single chain would leave the loads waiting).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn walk<const R: usize, const S: usize>(w: &[u8], acts: &Acts, k: usize, r0: usize, out: *mut f32, stride: usize) {
    let kb = k / QK;
    let wp = w.as_ptr();
    let xq = acts.q.as_ptr().add(r0 * k);
    let xd = acts.d.as_ptr().add(r0 * kb);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..kb {
        let blk = wp.add(b * BLOCK_BYTES);
        let mut isum = [[_mm256_setzero_si256(); R]; S];
        for g in 0..QK / 4 {
            if g % 2 == 0 {
                // Each 64 bytes of the block ahead, and at the end its last line (blocks
                // are 272 bytes). A hint never faults, so it may run past the tile.
                let ahead = blk.wrapping_add(PF_BYTES);
                prefetch::<R>(ahead.wrapping_add(g * 32));
                if g == QK / 4 - 2 {
                    prefetch::<R>(ahead.wrapping_add(BLOCK_BYTES - 1));
                }
            }
            let wv = _mm256_loadu_si256(blk.add(TILE * 2 + g * 32) as *const __m256i);
            let aw = _mm256_abs_epi8(wv);
            for r in 0..R {
                let xv = _mm256_set1_epi32((xq.add(r * k + b * QK + g * 4) as *const i32).read_unaligned());
                let pairs = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(xv, wv));
                isum[g % S][r] = _mm256_add_epi32(isum[g % S][r], _mm256_madd_epi16(pairs, ones));
            }
        }
        let wd = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
        for r in 0..R {
            let mut sum = isum[0][r];
            for part in 1..S {
                sum = _mm256_add_epi32(sum, isum[part][r]);
            }
            let s = _mm256_mul_ps(wd, _mm256_set1_ps(*xd.add(r * kb + b)));
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), s, acc[r]);
        }
    }
    for r in 0..R {
        _mm256_storeu_ps(out.add(r * stride), acc[r]);
    }
}

/// A prefetch of the weight stream: into L1 when many rows share each load (the loop is
/// then long enough per byte to wait on L2), into L2 for one or two.
#[inline(always)]
unsafe fn prefetch<const R: usize>(p: *const u8) {
    if R <= 2 {
        _mm_prefetch::<_MM_HINT_T2>(p as *const i8);
    } else {
        _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
    }
}

/// One row `$r` of group `$g`: its 4 activation bytes broadcast (`ymm$t`), given the
/// weights' signs, multiplied by `|w|` (`ymm9`) into pair sums, those summed by pairs
/// (`ymm12` holds 16-bit ones) and added into the row's integer sum (`ymm$r`).
macro_rules! row8 {
    ($g:literal, $r:literal, $t:literal) => {
        concat!(
            "vpbroadcastd ymm", $t, ", dword ptr [{x} + 32*", $g, " + 4*", $r, "]\n",
            "vpsignb ymm", $t, ", ymm", $t, ", ymm8\n",
            "vpmaddubsw ymm", $t, ", ymm9, ymm", $t, "\n",
            "vpmaddwd ymm", $t, ", ymm", $t, ", ymm12\n",
            "vpaddd ymm", $r, ", ymm", $r, ", ymm", $t, "\n",
        )
    };
}

/// Group `$g` of a block against the 8 rows: its 32 weight bytes (`ymm8`), their absolute
/// values (`ymm9`), `$pf` (a prefetch line or nothing), then [`row8`] for each row.
macro_rules! group8 {
    ($g:literal, $pf:expr) => {
        concat!(
            "vmovdqu ymm8, ymmword ptr [{w} + 16 + 32*", $g, "]\n",
            "vpabsb ymm9, ymm8\n",
            $pf,
            row8!($g, 0, 10),
            row8!($g, 1, 11),
            row8!($g, 2, 10),
            row8!($g, 3, 11),
            row8!($g, 4, 10),
            row8!($g, 5, 11),
            row8!($g, 6, 10),
            row8!($g, 7, 11),
        )
    };
}

/// Row `$r`'s end of a block: its integer sum to floats, times the weight scales (`ymm13`)
/// times the row's scale, added into its accumulator in `acc` (16 registers hold the 8
/// integer sums and the pass's operands, so the 8 float sums live in memory).
macro_rules! finish8 {
    ($r:literal) => {
        concat!(
            "vbroadcastss ymm14, dword ptr [{x} + 256 + 4*", $r, "]\n",
            "vmulps ymm14, ymm13, ymm14\n",
            "vcvtdq2ps ymm", $r, ", ymm", $r, "\n",
            "vfmadd213ps ymm", $r, ", ymm14, ymmword ptr [{acc} + 32*", $r, "]\n",
            "vmovaps ymmword ptr [{acc} + 32*", $r, "], ymm", $r, "\n",
            "vpxor ymm", $r, ", ymm", $r, ", ymm", $r, "\n",
        )
    };
}

/// [`tile`] for exactly 8 rows, from their interleaved copy `oct` (`kb` blocks of
/// [`OCT_BLOCK_BYTES`], the same copy the VNNI pass reads): the same operations in the
/// same order per row, so the same bits, but scheduled by hand with every broadcast at a
/// fixed offset from one address (the compiled loop walked 8 row addresses as a chain of
/// adds, and was not unrolled).
///
/// # Safety
/// AVX2, FMA and F16C present; `kb >= 1`; `w` is a whole tile of `kb` blocks, `oct` holds
/// `kb` blocks, and `out + r * stride` has 8 writable floats for each row `r` of the 8.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tile8(w: &[u8], oct: &[u8], kb: usize, out: *mut f32, stride: usize) {
    assert!(kb >= 1 && w.len() >= kb * BLOCK_BYTES && oct.len() >= kb * OCT_BLOCK_BYTES);
    let mut acc = [_mm256_setzero_ps(); 8];
    asm!(
        "vpxor ymm0, ymm0, ymm0",
        "vpxor ymm1, ymm1, ymm1",
        "vpxor ymm2, ymm2, ymm2",
        "vpxor ymm3, ymm3, ymm3",
        "vpxor ymm4, ymm4, ymm4",
        "vpxor ymm5, ymm5, ymm5",
        "vpxor ymm6, ymm6, ymm6",
        "vpxor ymm7, ymm7, ymm7",
        "vpcmpeqw ymm12, ymm12, ymm12",
        "vpsrlw ymm12, ymm12, 15",
        "2:",
        group8!(0, "prefetcht0 byte ptr [{w} + {pf}]\n"),
        group8!(1, ""),
        group8!(2, "prefetcht0 byte ptr [{w} + {pf} + 64]\n"),
        group8!(3, ""),
        group8!(4, "prefetcht0 byte ptr [{w} + {pf} + 128]\n"),
        group8!(5, ""),
        group8!(6, "prefetcht0 byte ptr [{w} + {pf} + 192]\n"),
        group8!(7, "prefetcht0 byte ptr [{w} + {pf} + 271]\n"),
        "vcvtph2ps ymm13, xmmword ptr [{w}]",
        finish8!(0),
        finish8!(1),
        finish8!(2),
        finish8!(3),
        finish8!(4),
        finish8!(5),
        finish8!(6),
        finish8!(7),
        "add {w}, {wstep}",
        "add {x}, {oct}",
        "dec {n}",
        "jnz 2b",
        w = inout(reg) w.as_ptr() => _,
        x = inout(reg) oct.as_ptr() => _,
        n = inout(reg) kb => _,
        acc = in(reg) acc.as_mut_ptr(),
        pf = const PF_BYTES,
        wstep = const BLOCK_BYTES,
        oct = const OCT_BLOCK_BYTES,
        out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
        out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
        out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
        out("ymm12") _, out("ymm13") _, out("ymm14") _,
        options(nostack),
    );
    for (r, a) in acc.iter().enumerate() {
        _mm256_storeu_ps(out.add(r * stride), *a);
    }
}
