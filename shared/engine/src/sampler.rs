//! Next-token selection from one row of logits.
//!
//! Two log-probs come out of every pick (see [`crate::Output`]): the raw model
//! log-softmax (what the GRPO learner recomputes) and the log-prob under the processed
//! sampling distribution. Processing follows Hugging Face's warper order: mask,
//! temperature, top-k, top-p, min-p.

use crate::params::{Allowed, SamplingParams};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// The chosen token and its two log-probs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pick {
    pub id: u32,
    pub logprob: f32,
    pub sampling_logprob: f32,
}

/// `log(sum(exp(x)))` of a logits row: the vectorized exponential of the attention code
/// ([`fc_model::attn::sum_exp_sub`], within 1e-6 of an all-f64 sum), since a decode step
/// takes one per sequence over the whole vocabulary.
fn logsumexp(xs: &[f32]) -> f64 {
    let max = max_of(xs);
    if !max.is_finite() {
        return max as f64;
    }
    fc_model::attn::sum_exp_sub(xs, max).ln() + max as f64
}

/// The row's maximum as `fold(NEG_INFINITY, f32::max)` gives it (NaNs ignored), in 16
/// lanes so it vectorizes (the order of `max` does not change its result).
fn max_of(xs: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512 F is present.
        return unsafe { max_of_avx512(xs) };
    }
    max_of_body(xs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn max_of_avx512(xs: &[f32]) -> f32 {
    max_of_body(xs)
}

#[inline(always)]
fn max_of_body(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut it = xs.chunks_exact(16);
    for c in &mut it {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l = l.max(x);
        }
    }
    it.remainder().iter().chain(&lanes).copied().fold(f32::NEG_INFINITY, f32::max)
}

/// The first index of the largest finite value (`None` when there is none): what a
/// scan keeping the first strict maximum gives, in 16 lanes (each keeps its own first
/// maximum; the smallest index among the lanes' equal maxima wins). A greedy decode
/// step takes one per sequence over the whole vocabulary; the plain scan was ~0.2 ms of
/// a 151,936-entry row on a 2-core Xeon VM.
fn argmax_finite(xs: &[f32]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512 F is present.
        return unsafe { argmax_finite_avx512(xs) };
    }
    argmax_finite_body(xs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn argmax_finite_avx512(xs: &[f32]) -> Option<usize> {
    argmax_finite_body(xs)
}

#[inline(always)]
fn argmax_finite_body(xs: &[f32]) -> Option<usize> {
    // Indices fit in u32 (vocabularies are far smaller), which keeps 16 lanes in a register.
    if xs.len() >= u32::MAX as usize {
        return argmax_scan(xs);
    }
    let mut val = [f32::NEG_INFINITY; 16];
    let mut idx = [u32::MAX; 16];
    let mut it = xs.chunks_exact(16);
    for (c, chunk) in (&mut it).enumerate() {
        let base = (c * 16) as u32;
        for j in 0..16 {
            let x = chunk[j];
            // Finite and larger: NaN and infinities never win, ties keep the earlier.
            let take = x.abs() < f32::INFINITY && x > val[j];
            val[j] = if take { x } else { val[j] };
            idx[j] = if take { base + j as u32 } else { idx[j] };
        }
    }
    let tail = xs.len() - it.remainder().len();
    let mut best: Option<(f32, usize)> = argmax_scan(it.remainder()).map(|i| (it.remainder()[i], tail + i));
    for (&v, &i) in val.iter().zip(&idx) {
        if i == u32::MAX {
            continue;
        }
        let i = i as usize;
        best = match best {
            Some((bv, bi)) if bv > v || (bv == v && bi < i) => Some((bv, bi)),
            _ => Some((v, i)),
        };
    }
    best.map(|(_, i)| i)
}

/// The plain scan: first strict maximum among finite values.
fn argmax_scan(xs: &[f32]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, &x) in xs.iter().enumerate() {
        if x.is_finite() && best.is_none_or(|b| x > xs[b]) {
            best = Some(i);
        }
    }
    best
}

/// Picks a token. `vocab_limit` excludes ids at or above it (embedding rows beyond the
/// tokenizer's vocabulary). Returns `None` when the mask allows nothing.
pub fn pick(
    logits: &[f32],
    params: &SamplingParams,
    allowed: &Allowed,
    vocab_limit: usize,
    rng: &mut ChaCha8Rng,
) -> Option<Pick> {
    let v = logits.len().min(vocab_limit);
    let ok = |i: usize| -> bool {
        i < v
            && match allowed {
                Allowed::All => true,
                Allowed::Mask(m) => m.get(i).copied().unwrap_or(false),
                Allowed::Only(_) => true,
            }
    };
    // Greedy over the whole vocabulary (the common case): no candidate list.
    if params.temperature <= 0.0 && matches!(allowed, Allowed::All) {
        let best = argmax_finite(&logits[..v])?;
        return Some(Pick {
            id: best as u32,
            logprob: (logits[best] as f64 - logsumexp(logits)) as f32,
            sampling_logprob: 0.0,
        });
    }
    // Plain temperature sampling over the whole vocabulary (GRPO's rollouts): no
    // candidate list.
    if params.temperature > 0.0
        && matches!(allowed, Allowed::All)
        && params.top_k == 0
        && params.top_p >= 1.0
        && params.min_p <= 0.0
    {
        if let Some(p) = sample_whole_row(logits, v, params.temperature, rng) {
            return Some(p);
        }
    }
    // Top-k, top-p or min-p over the whole vocabulary (the gateway's usual request):
    // only the entries that can survive the filters become candidates.
    if params.temperature > 0.0 && matches!(allowed, Allowed::All) {
        if let Some(p) = sample_filtered(logits, v, params, rng) {
            return Some(p);
        }
    }
    // Candidate ids (allowed and finite), kept sparse when the mask is a list.
    let cands: Vec<usize> = match allowed {
        Allowed::Only(ids) => {
            let mut c: Vec<usize> = ids
                .iter()
                .map(|&i| i as usize)
                .filter(|&i| i < v && logits[i].is_finite())
                .collect();
            c.sort_unstable();
            c.dedup();
            c
        }
        _ => (0..v).filter(|&i| ok(i) && logits[i].is_finite()).collect(),
    };
    if cands.is_empty() {
        return None;
    }
    let raw_lse = logsumexp(logits);
    let raw = |i: usize| (logits[i] as f64 - raw_lse) as f32;
    if params.temperature <= 0.0 {
        let mut best = cands[0];
        for &i in &cands {
            if logits[i] > logits[best] {
                best = i;
            }
        }
        return Some(Pick {
            id: best as u32,
            logprob: raw(best),
            sampling_logprob: 0.0,
        });
    }
    let t = params.temperature;
    let max = cands
        .iter()
        .map(|&i| logits[i])
        .fold(f32::NEG_INFINITY, f32::max) as f64;
    // (id, unnormalised prob)
    let probs: Vec<(usize, f64)> = cands
        .iter()
        .map(|&i| (i, ((logits[i] as f64 - max) / t).exp()))
        .collect();
    filter_and_draw(probs, 0.0, params, &raw, rng)
}

/// Top-k, top-p and min-p (in that order) over `probs`, the candidates' ids and
/// unnormalised probabilities (`exp((logit - max) / t)`, so the largest is 1), then the
/// draw. `rest` is the mass of the row's other candidates, each smaller than every one in
/// `probs` (0 when `probs` holds them all): top-p's total counts it unless top-k cut the
/// list. `raw` gives an id's model log-prob.
fn filter_and_draw(
    mut probs: Vec<(usize, f64)>,
    mut rest: f64,
    params: &SamplingParams,
    raw: &dyn Fn(usize) -> f32,
    rng: &mut ChaCha8Rng,
) -> Option<Pick> {
    let by_prob = |a: &(usize, f64), b: &(usize, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if params.top_k > 0 && (params.top_k < probs.len() || rest > 0.0) {
        if params.top_k < probs.len() {
            probs.select_nth_unstable_by(params.top_k - 1, by_prob);
            probs.truncate(params.top_k);
        }
        rest = 0.0;
    }
    if params.top_p < 1.0 {
        let total: f64 = probs.iter().map(|p| p.1).sum::<f64>() + rest;
        let target = params.top_p * total;
        // Partial sorts of growing prefixes: exact, without sorting the whole vocabulary.
        let mut k = 64.min(probs.len());
        loop {
            if k < probs.len() {
                probs.select_nth_unstable_by(k - 1, by_prob);
            }
            probs[..k].sort_by(by_prob);
            let mut cum = 0.0;
            let mut keep = None;
            for (j, p) in probs[..k].iter().enumerate() {
                cum += p.1;
                if cum >= target {
                    keep = Some(j + 1);
                    break;
                }
            }
            match keep {
                Some(n) => {
                    probs.truncate(n);
                    break;
                }
                None if k == probs.len() => break,
                None => k = (k * 4).min(probs.len()),
            }
        }
    }
    if params.min_p > 0.0 {
        let pmax = probs.iter().map(|p| p.1).fold(0.0, f64::max);
        let thr = params.min_p * pmax;
        probs.retain(|p| p.1 >= thr);
    }
    // Deterministic order for the draw (independent of the partial sorts above).
    probs.sort_by_key(|p| p.0);
    let mass: f64 = probs.iter().map(|p| p.1).sum();
    if !(mass.is_finite() && mass > 0.0) {
        return None;
    }
    let mut u = rng.random::<f64>() * mass;
    let mut chosen = probs[probs.len() - 1];
    for &p in &probs {
        if u < p.1 {
            chosen = p;
            break;
        }
        u -= p.1;
    }
    Some(Pick {
        id: chosen.0 as u32,
        logprob: raw(chosen.0),
        sampling_logprob: (chosen.1 / mass).ln() as f32,
    })
}

/// Top-k, top-p or min-p sampling over a whole row (no mask): the general path's
/// result without its f64 `exp` and candidate entry per vocabulary id (~2 ms a pick on a
/// 151,936-entry row). The vectorized f32 weights ([`fc_model::attn::exp_weights`])
/// find the entries that can survive the filters: those of weight at least a threshold
/// (the power of two where, counting down the weights' binary exponents, the top-k list
/// fits or the mass reaches top-p's share of the row; just under `min_p` for min-p alone),
/// halved while the exact f64 check disagrees. Only those get the
/// general path's f64 probabilities; the rest of the row enters as its summed f32 mass
/// (so a top-p cut can differ from the general path's only where the running sum lands
/// within ~1e-6 of the target). `None`, before any draw, when the row has a non-finite
/// value or `1 / t` overflows (the general path handles those).
fn sample_filtered(logits: &[f32], v: usize, params: &SamplingParams, rng: &mut ChaCha8Rng) -> Option<Pick> {
    let t = params.temperature;
    let RowWeights { max, w, total, .. } = row_weights(&logits[..v], t)?;
    // With min-p alone, just under `min_p` (f32 weights round differently from the f64
    // probabilities, which make the exact cut); for top-k and top-p, where the weights'
    // binary exponents say the list or the mass first fits.
    let mut thr = if params.top_k > 0 {
        weight_threshold(&w, params.top_k, 0.0, total)
    } else if params.top_p < 1.0 {
        weight_threshold(&w, 0, params.top_p, total)
    } else {
        params.min_p as f32 * 0.999
    };
    let (probs, rest) = loop {
        let mut probs = Vec::new();
        let mut kept = 0f64;
        for (i, &wi) in w.iter().enumerate() {
            if wi >= thr {
                probs.push((i, ((logits[i] as f64 - max as f64) / t).exp()));
                kept += wi as f64;
            }
        }
        let rest = if probs.len() == v { 0.0 } else { (total - kept).max(0.0) };
        let mass: f64 = probs.iter().map(|p| p.1).sum();
        let enough = if params.top_k > 0 {
            probs.len() >= params.top_k
        } else if params.top_p < 1.0 {
            mass >= params.top_p * (mass + rest)
        } else {
            true
        };
        if enough || rest == 0.0 {
            break (probs, rest);
        }
        thr = if thr > 1e-30 { thr * 0.5 } else { 0.0 };
    };
    let raw_lse = logsumexp(logits);
    let raw = |i: usize| (logits[i] as f64 - raw_lse) as f32;
    filter_and_draw(probs, rest, params, &raw, rng)
}

/// The largest power of two `thr` such that the weights (in `[0, 1]`) of at least `thr`
/// number at least `k` and hold at least `share` of `total`, from counts and sums per
/// binary exponent; 0 when only all of them do.
fn weight_threshold(w: &[f32], k: usize, share: f64, total: f64) -> f32 {
    let mut count = [0usize; 256];
    let mut mass = [0f32; 256];
    for &x in w {
        let e = (x.to_bits() >> 23) as usize & 0xff;
        count[e] += 1;
        mass[e] += x;
    }
    let (mut c, mut m) = (0usize, 0f64);
    for e in (1..256).rev() {
        c += count[e];
        m += mass[e] as f64;
        if c >= k && m >= share * total {
            return f32::from_bits((e as u32) << 23);
        }
    }
    0.0
}

/// A row's sampling weights at temperature `t`.
struct RowWeights {
    /// The row's maximum.
    max: f32,
    /// `exp((logit - max) / t)` per entry, in f32.
    w: Vec<f32>,
    /// Sums of each run of [`WEIGHT_CHUNK`] weights, and their total.
    sums: Vec<f64>,
    total: f64,
}

/// [`RowWeights`] of `row` ([`fc_model::attn::exp_weights`]); `None` when the row is empty
/// or has a non-finite value, `1 / t` overflows, or the total is not positive and finite.
fn row_weights(row: &[f32], t: f64) -> Option<RowWeights> {
    let max = max_of(row);
    let s = (1.0 / t) as f32;
    if row.is_empty() || !max.is_finite() || !s.is_finite() || !all_finite(row) {
        return None;
    }
    let mut w = vec![0f32; row.len()];
    let mut sums = Vec::with_capacity(row.len().div_ceil(WEIGHT_CHUNK));
    fc_model::attn::exp_weights(row, max, s, &mut w, &mut sums);
    let total: f64 = sums.iter().sum();
    (total.is_finite() && total > 0.0).then_some(RowWeights { max, w, sums, total })
}

/// Weights per chunk of [`fc_model::attn::exp_weights`].
const WEIGHT_CHUNK: usize = 1024;

/// Samples from `softmax(logits[..v] / t)` with f32 weights from the vectorized exp (within
/// ~1e-6 relative of the f64 ones the general path computes) and a draw that walks the
/// chunk sums, then one chunk. On a 151,936-entry row the general path spent ~2 ms a pick
/// on an f64 `exp` per entry and a 151,936-entry candidate list. `None`, before any draw,
/// when the row has a non-finite value or `1 / t` overflows (the general path handles
/// those).
fn sample_whole_row(logits: &[f32], v: usize, t: f64, rng: &mut ChaCha8Rng) -> Option<Pick> {
    let row = &logits[..v];
    let RowWeights { w, sums, total: mass, .. } = row_weights(row, t)?;
    let mut u = rng.random::<f64>() * mass;
    let mut chosen = None;
    for (c, &cs) in sums.iter().enumerate() {
        if u >= cs && c + 1 < sums.len() {
            u -= cs;
            continue;
        }
        // In this chunk; the last positive weight when rounding leaves `u` past its end.
        let base = c * WEIGHT_CHUNK;
        for (j, &p) in w[base..(base + WEIGHT_CHUNK).min(v)].iter().enumerate() {
            if p > 0.0 {
                chosen = Some(base + j);
            }
            if u < p as f64 {
                break;
            }
            u -= p as f64;
        }
        break;
    }
    // The maximum's weight is exp(0) = 1, so some chunk has a positive weight.
    let id = chosen.or_else(|| argmax_finite(row))?;
    Some(Pick {
        id: id as u32,
        logprob: (logits[id] as f64 - logsumexp(logits)) as f32,
        sampling_logprob: (w[id] as f64 / mass).ln() as f32,
    })
}

/// Whether every value is finite: `x * 0` is 0 for finite `x` and NaN otherwise, summed
/// in 16 lanes so the check vectorizes.
fn all_finite(xs: &[f32]) -> bool {
    let mut acc = [0f32; 16];
    let mut it = xs.chunks_exact(16);
    for c in &mut it {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x * 0.0;
        }
    }
    let rest: f32 = it.remainder().iter().map(|&x| x * 0.0).sum();
    acc.iter().sum::<f32>() + rest == 0.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(1)
    }

    #[test]
    fn logsumexp_of_a_vocabulary_row_matches_f64() {
        let l: Vec<f32> = (0..151_936).map(|i| ((i as f32 * 0.618).sin() * 20.0) - 5.0).collect();
        let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let want = l.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln() + max;
        assert!((logsumexp(&l) - want).abs() < 1e-6, "{} vs {want}", logsumexp(&l));
        assert_eq!(logsumexp(&[f32::NEG_INFINITY; 3]), f64::NEG_INFINITY);
    }

    /// The lane versions agree with the plain scans, ties, NaNs, infinities and tails included.
    #[test]
    fn lane_argmax_and_max_match_the_scans() {
        let mut rows: Vec<Vec<f32>> = Vec::new();
        for len in [0usize, 1, 15, 16, 17, 33, 1000, 151_936] {
            rows.push((0..len).map(|i| ((i * 7919 % 1013) as f32 * 0.37).sin() * 9.0).collect());
        }
        let mut odd: Vec<f32> = (0..100).map(|i| (i % 5) as f32).collect();
        odd[3] = f32::NAN;
        odd[10] = f32::INFINITY;
        odd[50] = 4.0; // ties with earlier 4.0s: the first (index 4) wins
        odd[97] = f32::NEG_INFINITY;
        rows.push(odd);
        rows.push(vec![f32::NAN; 40]);
        rows.push(vec![f32::NEG_INFINITY; 40]);
        let mut late = vec![1.0f32; 70];
        late[69] = 2.0; // the maximum in the tail
        rows.push(late);
        let mut lane_tie = vec![0.0f32; 64];
        lane_tie[37] = 5.0;
        lane_tie[5] = 5.0; // equal maxima in different lanes: the smaller index wins
        rows.push(lane_tie);
        for r in &rows {
            assert_eq!(argmax_finite(r), argmax_scan(r), "{:?}", &r[..r.len().min(8)]);
            let want = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            // Equal as numbers (the sign of a zero maximum may differ with the order).
            assert_eq!(max_of(r), want);
        }
    }

    /// The whole-row sampler draws from softmax(l / t): empirical frequencies, and both
    /// log-probs against f64.
    #[test]
    fn whole_row_sampling_follows_the_softmax() {
        let l = [0.0f32, 1.0, 2.0, -1.0, 0.5, 2.0, -30.0];
        let t = 0.8;
        let p = SamplingParams { temperature: t, ..Default::default() };
        let z: Vec<f64> = l.iter().map(|&x| (x as f64 / t).exp()).collect();
        let zs: f64 = z.iter().sum();
        let lse = l.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
        let mut counts = [0usize; 7];
        let mut r = rng();
        let draws = 40_000;
        for _ in 0..draws {
            let x = pick(&l, &p, &Allowed::All, 7, &mut r).unwrap();
            let i = x.id as usize;
            counts[i] += 1;
            assert!((x.sampling_logprob as f64 - (z[i] / zs).ln()).abs() < 1e-5);
            assert!((x.logprob as f64 - (l[i] as f64 - lse)).abs() < 1e-5);
        }
        for i in 0..7 {
            let f = counts[i] as f64 / draws as f64;
            assert!((f - z[i] / zs).abs() < 0.01, "id {i}: {f} vs {}", z[i] / zs);
        }
    }

    /// On a vocabulary-sized row the whole-row sampler picks what the general path
    /// (reached here through an all-true mask) picks from the same draw, and rows it
    /// cannot take (non-finite values) go to the general path unchanged.
    #[test]
    fn whole_row_sampling_agrees_with_the_general_path() {
        let v = 151_936;
        let l: Vec<f32> = (0..v).map(|i| ((i as f32 * 0.618).sin() * 6.0) - 2.0).collect();
        let all = Allowed::Mask(vec![true; v]);
        let p = SamplingParams { temperature: 1.0, ..Default::default() };
        let mut same = 0;
        for seed in 0..200u64 {
            let fast = pick(&l, &p, &Allowed::All, v, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
            let slow = pick(&l, &p, &all, v, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
            if fast.id == slow.id {
                same += 1;
                assert!((fast.sampling_logprob - slow.sampling_logprob).abs() < 1e-4);
                assert!((fast.logprob - slow.logprob).abs() < 1e-5);
            }
        }
        assert!(same >= 198, "{same} of 200 draws agree");
        let mut odd = l[..100].to_vec();
        odd[7] = f32::NEG_INFINITY;
        odd[9] = f32::NAN;
        let all = Allowed::Mask(vec![true; 100]);
        for seed in 0..20u64 {
            let a = pick(&odd, &p, &Allowed::All, 100, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
            let b = pick(&odd, &p, &all, 100, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
            assert_eq!(a, b);
        }
        assert!(all_finite(&l) && !all_finite(&odd) && all_finite(&[]));
        assert!(!all_finite(&[1.0, f32::INFINITY]));
    }

    /// Top-k, top-p and min-p over a whole row draw what the general path (the same row
    /// behind an all-true mask) draws, for peaked and flat rows alike (a flat row makes
    /// the threshold drop to zero).
    #[test]
    fn filtered_sampling_agrees_with_the_general_path() {
        let v = 151_936;
        let peaked: Vec<f32> = (0..v).map(|i| ((i as f32 * 0.618).sin() * 6.0) - 2.0 + if i % 9973 == 5 { 9.0 } else { 0.0 }).collect();
        let flat: Vec<f32> = (0..v).map(|i| (i as f32 * 0.37).sin() * 0.01).collect();
        let all = Allowed::Mask(vec![true; v]);
        let params = [
            SamplingParams { temperature: 0.7, top_p: 0.8, top_k: 20, ..Default::default() },
            SamplingParams { temperature: 0.6, top_p: 0.95, ..Default::default() },
            SamplingParams { temperature: 1.0, top_k: 50, ..Default::default() },
            SamplingParams { temperature: 1.0, min_p: 0.05, ..Default::default() },
            SamplingParams { temperature: 1.3, top_p: 0.9, min_p: 0.01, ..Default::default() },
            SamplingParams { temperature: 1.0, top_k: 200_000, ..Default::default() },
        ];
        for (r, row) in [&peaked, &flat].into_iter().enumerate() {
            for p in &params {
                let mut same = 0;
                for seed in 0..24u64 {
                    let fast = pick(row, p, &Allowed::All, v, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
                    let slow = pick(row, p, &all, v, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
                    if fast.id == slow.id {
                        same += 1;
                        assert!((fast.sampling_logprob - slow.sampling_logprob).abs() < 1e-5, "{p:?}");
                        assert!((fast.logprob - slow.logprob).abs() < 1e-5, "{p:?}");
                    }
                }
                assert!(same >= 23, "row {r}, {p:?}: {same} of 24 draws agree");
            }
        }
    }

    #[test]
    fn greedy_and_masks() {
        let l = [0.0f32, 3.0, 1.0, 3.0, -1.0];
        let p = SamplingParams::default();
        let r = pick(&l, &p, &Allowed::All, 5, &mut rng()).unwrap();
        assert_eq!(r.id, 1);
        let lse = l.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
        assert!((r.logprob as f64 - (3.0 - lse)).abs() < 1e-6);
        assert_eq!(
            pick(&l, &p, &Allowed::Only(vec![2, 4]), 5, &mut rng())
                .unwrap()
                .id,
            2
        );
        let m = Allowed::Mask(vec![true, false, false, false, true]);
        assert_eq!(pick(&l, &p, &m, 5, &mut rng()).unwrap().id, 0);
        assert_eq!(pick(&l, &p, &Allowed::All, 3, &mut rng()).unwrap().id, 1);
        assert!(pick(&l, &p, &Allowed::Only(vec![9]), 5, &mut rng()).is_none());
    }

    #[test]
    fn truncation_and_sampling_logprob() {
        let l: Vec<f32> = (0..200).map(|i| (i as f32 * 0.37).sin() * 4.0).collect();
        let mut top = l.clone();
        top.sort_by(|a, b| b.total_cmp(a));
        let p = SamplingParams {
            temperature: 0.7,
            top_k: 5,
            ..Default::default()
        };
        let mut r = rng();
        for _ in 0..50 {
            let x = pick(&l, &p, &Allowed::All, 200, &mut r).unwrap();
            assert!(l[x.id as usize] >= top[4]);
            assert!(x.sampling_logprob <= 0.0 && x.sampling_logprob > -20.0);
        }
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 1e-9,
            ..Default::default()
        };
        let x = pick(&l, &p, &Allowed::All, 200, &mut rng()).unwrap();
        assert_eq!(l[x.id as usize], top[0]);
        assert!(x.sampling_logprob.abs() < 1e-6);
        let p = SamplingParams {
            temperature: 1.0,
            min_p: 0.999,
            ..Default::default()
        };
        let x = pick(&l, &p, &Allowed::All, 200, &mut rng()).unwrap();
        // Kept: p >= 0.999 p_max, i.e. logit >= max + ln(0.999).
        assert!(l[x.id as usize] >= top[0] + 0.999f32.ln());
        // top_p = 0.9: the kept set is the smallest prefix reaching 0.9 of the mass.
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 0.9,
            ..Default::default()
        };
        let mut r = rng();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..500 {
            seen.insert(pick(&l, &p, &Allowed::All, 200, &mut r).unwrap().id);
        }
        let mut probs: Vec<f64> = l.iter().map(|&x| (x as f64).exp()).collect();
        let tot: f64 = probs.iter().sum();
        probs.sort_by(|a, b| b.total_cmp(a));
        let mut cum = 0.0;
        let mut need = 0;
        for p in &probs {
            cum += p / tot;
            need += 1;
            if cum >= 0.9 {
                break;
            }
        }
        assert!(seen.len() <= need);
    }
}
